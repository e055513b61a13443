// Shared helpers of the backend tests: a fresh migrated database on the stack, batches, writers.
import FieldlogCore
import Foundation
import Logging
import MariaDB
import Sync
import TestSupport
import XCTest
@testable import BackendStore
@testable import Ingest
@testable import Audit
@testable import WebAdmin
import Synchronization

enum Fixtures {
    static func device(_ prefix: String = "dev") -> DeviceID { try! DeviceID(Stack.uniqueName(prefix)) }

    static func record(_ seq: UInt64, value: Double? = nil) -> LogRecord {
        LogRecord(sequence: SequenceNumber(seq),
                  timestamp: DeviceTimestamp(unixMilliseconds: 1_764_000_000_000 + Int64(seq) * 1000),
                  values: try! SensorValues(["temp": .number(value ?? Double(seq) / 10), "state": .text("ok")]))
    }

    /// A batch first…last of records only.
    static func batch(_ device: DeviceID, _ epoch: Epoch, _ first: UInt64, _ last: UInt64) -> Batch {
        Batch(device: device, epoch: epoch, range: SequenceRange(checked: SequenceNumber(first), SequenceNumber(last)),
              records: (first...last).map { record($0) })
    }

    /// The store request the ingest makes of a batch.
    static func request(_ b: Batch) -> StoreRequest {
        StoreRequest(b, topic: TopicTemplates.defaults.batch.topic(device: b.device))
    }

    static func message(_ b: Batch) -> InboundMessage {
        InboundMessage(topic: TopicTemplates.defaults.batch.topic(device: b.device), payload: SyncCodec.encode(b))
    }

    static func fastSettings() -> IngestSettings {
        var s = IngestSettings()
        s.reconnectBackoffFirst = .milliseconds(50)
        s.reconnectBackoffMax = .milliseconds(500)
        s.metricsPort = 0
        return s
    }
}

/// Acks a test writer published, in order.
final class AckRecorder: Sendable {
    private let acks = Mutex<[Ack]>([])
    var all: [Ack] { acks.withLock { $0 } }
    func append(_ a: Ack) { acks.withLock { $0.append(a) } }
}
