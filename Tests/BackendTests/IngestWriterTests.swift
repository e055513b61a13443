// The write path (IngestWriter + IngestStateMachine + Store) against the real MariaDB.
// Messages are handed to the writer as the MQTT shell would; acks go to a recorder that checks,
// at the moment each ack is published, that everything it acknowledges is already stored.
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

final class IngestWriterTests: XCTestCase {
    private func writer(_ db: TestDatabase, metrics: BackendMetrics = BackendMetrics(), publish: @escaping AckPublisher) -> IngestWriter {
        IngestWriter(database: DatabaseClient(settings: db.settings, logger: Logger(label: "test")),
                     configuration: Fixtures.fastSettings().machine(topics: .defaults), metrics: metrics, logger: Logger(label: "test"), publishAck: publish)
    }

    func testTwoConcurrentWritersOfAdjacentBatchesOfOneDeviceNeverAckAheadOfStored() async throws {
        let db = try TestDatabase("adjacent")
        defer { db.drop() }
        let setup = try await db.migrated()
        let checker = try await db.connect()
        let device = Fixtures.device(), epoch = Epoch.random()
        let acks = AckRecorder()
        let violations = AckRecorder()
        let publish: AckPublisher = { _, payload in
            let ack = try SyncCodec.decodeAck(payload)
            // Checked when the ack is published: all of 1…through must be stored right now.
            let stored = try await checker.execute("SELECT COUNT(*) FROM readings WHERE device_id = ? AND epoch = ? AND seq <= ?",
                                                   [.string(ack.device.rawValue), .uint(ack.epoch.rawValue), .uint(ack.through.rawValue)])
            if stored.rows[0][0].uint64 != ack.through.rawValue { violations.append(ack) }
            acks.append(ack)
        }
        let a = writer(db, publish: publish), b = writer(db, publish: publish)
        // 60 batches of 10; even ones to writer a, odd ones to writer b, concurrently, each in
        // small groups, so adjacent batches of the one device commit in parallel on two connections.
        var batches: [InboundMessage] = []
        for i in 0..<60 {
            let first = UInt64(i) * 10 + 1
            batches.append(Fixtures.message(Fixtures.batch(device, epoch, first, first + 9)))
        }
        let all = batches
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (w, start) in [(a, 0), (b, 1)] {
                group.addTask {
                    for i in stride(from: start, to: 60, by: 4) { await w.process([all[i], all[i + 2]]) }
                }
            }
            try await group.waitForAll()
        }
        XCTAssertEqual(violations.all, [], "an ack passed what was stored")
        // Every batch is acked: selectively (`stored`), or by its transaction's ack whose
        // `through` covers it (spec §5.5 rule C).
        for i in 0..<60 {
            let last = UInt64(i) * 10 + 10
            XCTAssertTrue(acks.all.contains { $0.stored?.last.rawValue == last || $0.through.rawValue >= last }, "batch \(i) (…\(last)) not acked")
        }
        XCTAssertLessThanOrEqual(acks.all.count, 60, "at most one ack per batch")
        // Each writer acks what it knows: a writer whose own batches continue its prefix does not
        // read the other's commits (spec §5.5), so the last acks may stop short of 600 until the
        // device's resend (below, or its probe) brings a commit that sees everything.
        XCTAssertGreaterThanOrEqual(acks.all.map(\.through).max() ?? .zero, SequenceNumber(580))
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM readings"), "600")
        // The duplicate resend of everything (a device that missed its acks) stores nothing new.
        let metrics = BackendMetrics()
        let c = writer(db, metrics: metrics, publish: publish)
        for i in stride(from: 0, to: 60, by: 20) { await c.process(Array(batches[i..<i + 20])) }
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM readings"), "600")
        XCTAssertTrue(metrics.text().contains("fieldlog_duplicates_absorbed_total 600"), metrics.text())
        XCTAssertEqual(acks.all.last?.through, SequenceNumber(600))
        XCTAssertEqual(violations.all, [])
        await setup.close()
        await checker.close()
    }

    func testBadMessagesGoToDeadLettersWithTheirReasonWhileValidTrafficContinues() async throws {
        let db = try TestDatabase("deadletters")
        defer { db.drop() }
        let setup = try await db.migrated()
        let acks = AckRecorder()
        let metrics = BackendMetrics()
        let w = writer(db, metrics: metrics) { _, payload in acks.append(try SyncCodec.decodeAck(payload)) }
        let device = Fixtures.device(), other = Fixtures.device("other"), epoch = Epoch.random()
        let topic = TopicTemplates.defaults.batch.topic(device: device)
        let valid = Fixtures.batch(device, epoch, 1, 3)
        var versionTwo = String(decoding: SyncCodec.encode(Fixtures.batch(device, epoch, 4, 4)), as: UTF8.self)
        versionTwo = versionTwo.replacingOccurrences(of: "\"v\":1", with: "\"v\":2")
        XCTAssertTrue(versionTwo.contains("\"v\":2"), "fixture must change the version: \(versionTwo)")
        let group: [InboundMessage] = [
            InboundMessage(topic: topic, payload: Array("{not json".utf8)),
            InboundMessage(topic: topic, payload: Array(repeating: 0x20, count: ProtocolLimits.maxMessageBytes + 1)),
            InboundMessage(topic: topic, payload: SyncCodec.encode(Fixtures.batch(other, epoch, 1, 2))),
            InboundMessage(topic: topic, payload: Array(versionTwo.utf8)),
            InboundMessage(topic: "fieldlog/v1/devices/bad+id/batch", payload: SyncCodec.encode(valid)),
            Fixtures.message(valid),
        ]
        await w.process(group)
        let reasons = try db.scalar("SELECT GROUP_CONCAT(reason ORDER BY reason) FROM dead_letters")
        XCTAssertEqual(reasons, "device-mismatch,malformed-json,oversize,unknown-topic,unknown-version")
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM readings WHERE device_id = '\(device)'"), "3", "the valid batch is stored")
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM readings WHERE device_id = '\(other)'"), "0", "never stored under another device")
        XCTAssertEqual(try db.scalar("SELECT payload_bytes FROM dead_letters WHERE reason = 'oversize'"), String(ProtocolLimits.maxMessageBytes + 1))
        XCTAssertEqual(try db.scalar("SELECT LENGTH(payload_head) FROM dead_letters WHERE reason = 'oversize'"), String(DeadLetter.excerptBytes))
        XCTAssertEqual(acks.all.map(\.through), [SequenceNumber(3)])
        let text = metrics.text()
        for r in ["malformed-json", "oversize", "device-mismatch", "unknown-version", "unknown-topic"] {
            XCTAssertTrue(text.contains("fieldlog_dead_letters_total{reason=\"\(r)\"} 1"), "\(r) counted: \(text)")
        }
        await setup.close()
    }

    func testSeedFormatListsAreStoredOnceEach() async throws {
        let db = try TestDatabase("legacy")
        defer { db.drop() }
        let setup = try await db.migrated()
        let w = writer(db) { _, _ in XCTFail("seed devices get no acks") }
        let device = Fixtures.device("seed")
        let topic = TopicTemplates.defaults.legacyValues.topic(device: device)
        func list(_ ids: ClosedRange<Int>) -> InboundMessage {
            let items = ids.map { #"{"_id":"16211227969\#($0 + 10)-0","_device_uuid":"\#(device)","_device_type":"rpi","_app_id":"1","_app_name":"iot","random":"0.\#($0)"}"# }
            return InboundMessage(topic: topic, payload: Array("[\(items.joined(separator: ","))]".utf8))
        }
        // The seed resends overlapping lists (its last_id is saved late or not at all): 1…5, 3…8, 1…8 again.
        await w.process([list(1...5), list(3...8)])
        await w.process([list(1...8)])
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM legacy_readings WHERE device_id = '\(device)'"), "8")
        XCTAssertEqual(try db.scalar("SELECT COUNT(DISTINCT stream_id) FROM legacy_values WHERE device_id = '\(device)'"), "8")
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM sensor_values WHERE device_id = '\(device)' AND source = 'legacy' AND sensor = 'random'"), "8")
        XCTAssertEqual(try db.scalar("SELECT protocol FROM devices WHERE device_id = '\(device)'"), "legacy")
        let report = try await Auditor(connection: setup).run(device: device)
        XCTAssertEqual(report.devices.first?.legacyReadings, 8)
        XCTAssertTrue(report.devices.first?.note?.contains("no delivery guarantee") == true)
        XCTAssertFalse(report.hasGaps)
        // The device is migrated to Fieldlog (docs/migrating-from-seed.md): its first status says so.
        let status = Status(device: device, state: .online, epoch: Epoch(3), head: SequenceNumber(0), acked: SequenceNumber(0),
                            atUnixMilliseconds: 1_764_000_000_000, measuring: true)
        await w.process([InboundMessage(topic: TopicTemplates.defaults.status.topic(device: device), payload: SyncCodec.encode(status))])
        XCTAssertEqual(try db.scalar("SELECT protocol FROM devices WHERE device_id = '\(device)'"), "fieldlog")
        await setup.close()
    }

    func testStatusAndCommandResponsesAreRecorded() async throws {
        let db = try TestDatabase("status")
        defer { db.drop() }
        let setup = try await db.migrated()
        let w = writer(db) { _, _ in }
        let device = Fixtures.device(), epoch = Epoch(7)
        try await Store(connection: setup).recordCommand(requestID: "r-1", device: device, command: "replay", epoch: epoch,
                                                         range: SequenceRange(checked: SequenceNumber(1), SequenceNumber(4)), payload: "{}")
        let status = Status(device: device, state: .online, epoch: epoch, head: SequenceNumber(9), acked: SequenceNumber(4),
                            atUnixMilliseconds: 1_764_000_000_000, measuring: true)
        let response = CommandResponse(requestID: "r-1", command: "replay", resent: SequenceRange(checked: SequenceNumber(3), SequenceNumber(4)),
                                       notRetained: [SequenceRange(checked: SequenceNumber(1), SequenceNumber(2))])
        await w.process([
            InboundMessage(topic: TopicTemplates.defaults.status.topic(device: device), payload: SyncCodec.encode(status)),
            InboundMessage(topic: TopicTemplates.defaults.response.topic(device: device), payload: SyncCodec.encode(response)),
        ])
        XCTAssertEqual(try db.scalar("SELECT CONCAT(status_state, ' ', status_head, ' ', status_acked) FROM devices WHERE device_id = '\(device)'"), "online 9 4")
        XCTAssertEqual(try db.scalar("SELECT reported_head FROM epochs WHERE device_id = '\(device)'"), "9")
        XCTAssertEqual(try db.scalar("SELECT outcome FROM commands WHERE request_id = 'r-1'"), "resent 3…4; not-retained 1…2")
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM command_responses WHERE request_id = 'r-1'"), "1")
        await setup.close()
    }

    func testADeadlockIsRetriedCountedAndTheBatchStillStoredAndAcked() async throws {
        let db = try TestDatabase("deadlock")
        defer { db.drop() }
        let setup = try await db.migrated()
        let device = Fixtures.device(), epoch = Epoch.random()
        let other = try await db.connect()
        // Another transaction holds seq 2 of the device (and many other rows, so InnoDB picks
        // the writer, the smaller transaction, as the deadlock victim).
        let row = "(?, ?, ?, 0, NULL, 0, '2025-01-01 00:00:00', NULL)"
        try await other.query("START TRANSACTION")
        try await other.insertRows("INSERT INTO readings (device_id, epoch, seq, device_ms, device_time, clock_unsynchronized, received_at, missing_sensors)",
                                   rows: (1...200).map { [.string("bulk"), .uint(1), .uint(UInt64($0)), .int(0), .null, .int(0), .string("2025-01-01 00:00:00"), .null] })
        try await other.execute("INSERT INTO readings (device_id, epoch, seq, device_ms, device_time, clock_unsynchronized, received_at, missing_sensors) VALUES \(row)",
                                [.string(device.rawValue), .uint(epoch.rawValue), .uint(2)])
        let metrics = BackendMetrics()
        let acks = AckRecorder()
        let w = writer(db, metrics: metrics) { _, payload in acks.append(try SyncCodec.decodeAck(payload)) }
        let stored = Task { await w.process([Fixtures.message(Fixtures.batch(device, epoch, 1, 3))]) }
        // Wait until the writer is blocked on seq 2 (it inserted seq 1 first).
        let deadline = ContinuousClock.now + .seconds(20)
        let waiting = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = DATABASE() AND INFO LIKE 'INSERT IGNORE INTO readings%'"
        while (try await setup.query(waiting).rows.first?.first?.int64 ?? 0) < 1 {
            guard ContinuousClock.now < deadline else { return XCTFail("the writer never waited for the lock on seq 2") }
            try await Task.sleep(for: .milliseconds(20))
        }
        // Taking seq 1, which the writer holds, closes the cycle: InnoDB rolls the writer back (1213).
        try await other.execute("INSERT INTO readings (device_id, epoch, seq, device_ms, device_time, clock_unsynchronized, received_at, missing_sensors) VALUES \(row)",
                                [.string(device.rawValue), .uint(epoch.rawValue), .uint(1)])
        try await other.query("COMMIT")
        await stored.value
        XCTAssertTrue(metrics.text().contains("fieldlog_deadlock_retries_total 1"), metrics.text())
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM readings WHERE device_id = '\(device)'"), "3")
        XCTAssertEqual(acks.all.map(\.through), [SequenceNumber(3)])
        await other.close()
        await setup.close()
    }

    func testMessagesQueuedFasterThanACommitShareOneTransaction() async throws {
        let db = try TestDatabase("group")
        defer { db.drop() }
        let setup = try await db.migrated()
        let metrics = BackendMetrics()
        let acks = AckRecorder()
        let w = writer(db, metrics: metrics) { _, payload in acks.append(try SyncCodec.decodeAck(payload)) }
        let device = Fixtures.device(), epoch = Epoch.random()
        var messages: [InboundMessage] = []
        for i in 0..<20 {
            let first = UInt64(i) * 5 + 1
            messages.append(Fixtures.message(Fixtures.batch(device, epoch, first, first + 4)))
        }
        await w.process(messages)
        let text = metrics.text()
        // The first message starts a commit at once; the 19 that arrive meanwhile share the next one.
        XCTAssertTrue(text.contains("fieldlog_batches_per_transaction_count 2\n"), text)
        XCTAssertTrue(text.contains("fieldlog_batches_per_transaction_sum 20"), text)
        // The group's `through` (read after its commit) covers all 19 batches: one ack says it
        // for them all (spec §5.5 rule C).
        XCTAssertEqual(acks.all.map(\.through), [SequenceNumber(5), SequenceNumber(100)])
        XCTAssertEqual(acks.all.last?.stored, SequenceRange(checked: SequenceNumber(96), SequenceNumber(100)), "the highest batch's ack")
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM readings"), "100")
        await setup.close()
    }
}
