// A fleet of simulated devices for the Galera tests: each streams real protocol batches (QoS 1)
// as its own MQTT user with a bounded window of unacked batches, keeps the highest `through` of
// the acks it gets (the device rule), resends from its acked point when acks stop coming, and
// records when each ack arrived, so a test can measure how long ingest stood still.
// Not a model of the real device's sender (that is `fieldlog-device`); enough protocol to drive
// ingest continuously through a database node failure.
import FieldlogCore
import Foundation
import Logging
import MQTT
import Sync
import TestSupport

/// One simulated device streaming `records` records in batches of `batchSize`.
final class StreamingDevice: @unchecked Sendable {
    // @unchecked: mutable state only under `lock`; the rest is immutable.
    let id: DeviceID
    let epoch = Epoch.random()
    let records: UInt64
    let batchSize: UInt64
    let client: MQTTClient
    private let lock = NSLock()
    private var ackedThrough: UInt64 = 0
    private var ackTimes: [ContinuousClock.Instant] = []
    private var resends = 0
    private var listener: Task<Void, Never>?

    var acked: UInt64 { lock.withLock { ackedThrough } }
    /// Arrival time of every ack that moved `through` forward.
    var progressTimes: [ContinuousClock.Instant] { lock.withLock { ackTimes } }
    var resendCount: Int { lock.withLock { resends } }
    var batchCount: UInt64 { (records + batchSize - 1) / batchSize }

    private init(id: DeviceID, records: UInt64, batchSize: UInt64, client: MQTTClient) {
        self.id = id
        self.records = records
        self.batchSize = batchSize
        self.client = client
    }

    /// Connects as a new MQTT user of the broker on `port` (`addUser` registers it).
    static func connect(port: Int, addUser: (String, String) throws -> Void, records: UInt64, batchSize: UInt64 = 10) async throws -> StreamingDevice {
        let id = try DeviceID(Stack.uniqueName("gal"))
        let password = Stack.uniqueName("pw")
        try addUser(id.rawValue, password)
        var attempt = 0
        while true {
            let client = try MQTTClient(configuration: MQTTConfiguration(
                host: "127.0.0.1", port: port, clientID: id.rawValue, username: id.rawValue, password: password,
                reconnect: MQTTReconnectPolicy(minDelay: .milliseconds(100), maxDelay: .seconds(1))), logger: Logger(label: "sim"))
            do {
                try await client.connect()
                let device = StreamingDevice(id: id, records: records, batchSize: batchSize, client: client)
                try await client.subscribe(TopicTemplates.defaults.ack.topic(device: id), qos: .atLeastOnce)
                device.listen()
                return device
            } catch let e as MQTTError where e.kind == .connectRefused && attempt < 20 {
                // The broker reloads its password file on SIGHUP at its next loop turn.
                await client.disconnect()
                attempt += 1
                try await Task.sleep(for: .milliseconds(250))
            }
        }
    }

    private func listen() {
        let messages = client.messages
        listener = Task { [weak self] in
            for await m in messages {
                guard let self, let ack = try? SyncCodec.decodeAck(m.payload, expectedDevice: self.id), ack.epoch == self.epoch else { continue }
                let now = ContinuousClock.now
                self.lock.withLock {
                    if ack.through.rawValue > self.ackedThrough {
                        self.ackedThrough = ack.through.rawValue
                        self.ackTimes.append(now)
                    }
                }
            }
        }
    }

    func batch(_ index: UInt64) -> Batch {
        let first = index * batchSize + 1
        let last = min(first + batchSize - 1, records)
        let records = (first...last).map { seq in
            LogRecord(sequence: SequenceNumber(seq),
                      timestamp: DeviceTimestamp(unixMilliseconds: 1_764_000_000_000 + Int64(seq) * 100),
                      values: try! SensorValues(["temp": .number(Double(seq) / 10), "state": .text("ok")]))
        }
        return Batch(device: id, epoch: epoch, range: SequenceRange(checked: SequenceNumber(first), SequenceNumber(last)), records: records)
    }

    private func publish(_ index: UInt64) async throws {
        try await client.publish(TopicTemplates.defaults.batch.topic(device: id), payload: SyncCodec.encode(batch(index)), qos: .atLeastOnce)
    }

    /// Streams every batch: at most `window` batches unacked, one batch per `interval`; when no
    /// ack moved for `resendAfter`, resends everything from the acked point. Returns when all is
    /// acked; throws after `timeout`.
    func stream(interval: Duration, window: UInt64 = 8, resendAfter: Duration = .seconds(1), timeout: Duration) async throws {
        let deadline = ContinuousClock.now + timeout
        var next: UInt64 = 0
        var lastAcked: UInt64 = 0
        var lastProgress = ContinuousClock.now
        while acked < records {
            guard ContinuousClock.now < deadline else {
                throw FleetError(description: "device \(id): acked through \(acked) of \(records) after \(timeout)")
            }
            let a = acked
            if a != lastAcked { lastAcked = a; lastProgress = .now }
            let ackedBatches = a / batchSize
            if next < batchCount && next < ackedBatches + window {
                try await publish(next)
                next += 1
            } else if ContinuousClock.now - lastProgress >= resendAfter {
                // No ack moved: resend what is outstanding (the device keeps everything until acked).
                lock.withLock { resends += 1 }
                for i in ackedBatches..<next { try await publish(i) }
                lastProgress = .now
            }
            try await Task.sleep(for: interval)
        }
    }

    func close() async {
        listener?.cancel()
        await client.disconnect()
    }
}

/// A fleet of streaming devices.
struct Fleet: Sendable {
    let devices: [StreamingDevice]

    static func connect(count: Int, port: Int, addUser: @escaping (String, String) throws -> Void, records: UInt64) async throws -> Fleet {
        var devices: [StreamingDevice] = []
        for _ in 0..<count { devices.append(try await StreamingDevice.connect(port: port, addUser: addUser, records: records)) }
        return Fleet(devices: devices)
    }

    var totalRecords: UInt64 { devices.reduce(0) { $0 + $1.records } }
    var acked: UInt64 { devices.reduce(0) { $0 + $1.acked } }

    /// Streams every device concurrently until all is acked.
    func stream(interval: Duration, window: UInt64 = 8, timeout: Duration) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for d in devices { group.addTask { try await d.stream(interval: interval, window: window, timeout: timeout) } }
            try await group.waitForAll()
        }
    }

    /// The longest time between two consecutive ack progress events of the whole fleet
    /// (any device), from the first to the last: how long ingest as a whole stood still.
    var longestStall: Duration {
        let times = devices.flatMap(\.progressTimes).sorted()
        guard times.count >= 2 else { return .zero }
        return zip(times, times.dropFirst()).map { $1 - $0 }.max() ?? .zero
    }

    func close() async { for d in devices { await d.close() } }
}

struct FleetError: Error, CustomStringConvertible { var description: String }

extension BackendProcess {
    /// GET /metrics of an ingest process.
    static func metrics(port: Int) throws -> String {
        try Shell.run("curl", ["-sf", "http://127.0.0.1:\(port)/metrics"])
    }
}
