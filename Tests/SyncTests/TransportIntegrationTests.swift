import FieldlogCore
import Logging
@_spi(Testing) import MQTT
@testable import Sync
import Synchronization
import TestSupport
import XCTest

/// The MQTT transport on the real broker of the stack: one device, two receivers sharing
/// the batch stream, an in-memory idempotent store (a real `SyncStore`, not a mock of a
/// service: MariaDB is the backend's store and is tested there).
final class TransportIntegrationTests: XCTestCase {
    /// A device log in memory: records 1...head, an acked pointer.
    final class MemoryLog: SenderLog, Sendable {
        let state = Mutex<(records: [LogRecord], acked: SequenceNumber)>(([], .zero))
        func append(_ n: Int) -> SequenceNumber {
            state.withLock { s in
                for _ in 0..<n {
                    let seq = SequenceNumber(UInt64(s.records.count + 1))
                    s.records.append(LogRecord(sequence: seq, timestamp: DeviceTimestamp(unixMilliseconds: Int64(seq.rawValue)),
                                               values: try! SensorValues(["t": .number(Double(seq.rawValue))])))
                }
                return SequenceNumber(UInt64(s.records.count))
            }
        }
        var acked: SequenceNumber { state.withLock { $0.acked } }
        func loadForSync(from: SequenceNumber, through: SequenceNumber, limit: Int) async throws -> SenderLogSlice {
            state.withLock { s in
                let lo = Int(from.rawValue) - 1, hi = min(Int(through.rawValue), s.records.count, lo + limit)
                return SenderLogSlice(records: Array(s.records[lo..<hi]), losses: [], retainedFrom: SequenceNumber(1))
            }
        }
        func persistAcked(through: SequenceNumber) async throws {
            state.withLock { $0.acked = max($0.acked, through) }
        }
    }

    /// Idempotent store keyed by (device, epoch, seq), ack rule over committed ranges. Only
    /// `device` is kept: the broker is shared with other tests whose batches arrive too.
    final class MemoryStore: SyncStore, Sendable {
        struct State {
            var rows: [SequenceNumber: LogRecord] = [:]
            var duplicates = 0
            var ranges: [SequenceRange] = []
            var deadLetters: [DeadLetter] = []
            var statuses: [Status] = []
            var responses: [CommandResponse] = []
            var storesByReceiver: [String: Int] = [:]
        }
        let state = Mutex(State())
        let name: String
        let device: DeviceID
        let shared: MemoryStore?
        init(name: String, device: DeviceID, sharing: MemoryStore? = nil) { self.name = name; self.device = device; shared = sharing }
        var target: MemoryStore { shared ?? self }

        struct OtherDevice: Error {}

        func store(_ request: StoreRequest) async throws -> StoreOutcome {
            guard request.device == device else { throw OtherDevice() }
            return target.state.withLock { s in
                for r in request.records {
                    if s.rows[r.sequence] == nil { s.rows[r.sequence] = r } else { s.duplicates += 1 }
                }
                s.ranges.append(request.range)
                s.storesByReceiver[name, default: 0] += 1
                return StoreOutcome(storedThrough: AckRule.storedThrough(checkpoint: .zero, ranges: s.ranges))
            }
        }
        func deadLetter(_ letter: DeadLetter) async {
            guard letter.topicDevice == device else { return }
            target.state.withLock { $0.deadLetters.append(letter) }
        }
        func recordStatus(_ status: Status, topic: String) async {
            guard status.device == device else { return }
            target.state.withLock { $0.statuses.append(status) }
        }
        func recordResponse(device: DeviceID, _ response: CommandResponse) async {
            guard device == self.device else { return }
            target.state.withLock { $0.responses.append(response) }
        }
        func storeLegacy(device: DeviceID, payload: [UInt8], topic: String) async {}
    }

    func eventually(_ what: String, timeout: Duration = .seconds(20), _ condition: () -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while !condition() {
            guard ContinuousClock.now < deadline else { return XCTFail("timed out waiting for \(what)") }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    func testDeviceToTwoSharedReceiversExactlyOnceWithDeadLettersAndReplay() async throws {
        guard let stack = try Stack.available() else { throw XCTSkip("service stack not running") }
        let deviceName = Stack.uniqueName("syncdev")
        let password = Stack.uniqueName("pw")
        try stack.addMQTTUser(deviceName, password: password)
        let device = try DeviceID(deviceName)
        let fast = MQTTReconnectPolicy(minDelay: .milliseconds(100), maxDelay: .seconds(1), jitter: 0.5)
        var logger = Logger(label: "sync-test")
        logger.logLevel = .critical

        var config = DeviceSyncConfiguration(device: device, epoch: Epoch.random())
        config.sender.maxRecordsPerBatch = 17
        config.sender.resendDelayInitial = .milliseconds(500)
        config.sender.resendDelayMax = .seconds(2)
        let deviceClient = try MQTTClient(configuration: MQTTConfiguration(
            host: "127.0.0.1", port: stack.mqttPort, clientID: Stack.uniqueName("d"), username: deviceName, password: password,
            keepAlive: .seconds(10), will: config.will, reconnect: fast), logger: logger)
        let log = MemoryLog()
        let head = log.append(120)
        let sync = DeviceSync(configuration: config, client: deviceClient, log: log, head: head, acked: .zero, logger: logger)

        let store = MemoryStore(name: "r1", device: device)
        let store2 = MemoryStore(name: "r2", device: device, sharing: store)
        let group = Stack.uniqueName("ingest")
        var receivers: [Task<ReceiverCounters, Error>] = []
        for s in [store, store2] {
            let c = try MQTTClient(configuration: MQTTConfiguration(
                host: "127.0.0.1", port: stack.mqttPort, clientID: Stack.uniqueName("b"), username: stack.mqttBackendUser,
                password: stack.mqttBackendPassword, keepAlive: .seconds(10), reconnect: fast), logger: logger)
            let service = ReceiverService(shareGroup: group, client: c, store: s, logger: logger)
            receivers.append(Task { try await service.run() })
        }
        defer { receivers.forEach { $0.cancel() } }
        try await Task.sleep(for: .milliseconds(500))  // receivers subscribed
        let deviceTask = Task { try await sync.run() }
        defer { deviceTask.cancel() }

        try await eventually("first 120 acked") { log.acked == head }
        // One receiver dies and the device's connection breaks; appends go on meanwhile.
        receivers[1].cancel()
        deviceClient.simulateConnectionLoss()
        let head2 = log.append(80)
        sync.appended(through: head2)
        try await eventually("all 200 acked after reconnect, by the surviving receiver") { log.acked == head2 }
        let snapshot = store.state.withLock { $0 }
        XCTAssertEqual(snapshot.rows.count, 200)
        XCTAssertEqual(Set(snapshot.rows.keys), Set((1...200).map { SequenceNumber(UInt64($0)) }))
        XCTAssertEqual(snapshot.storesByReceiver.count, 2, "both receivers took part: \(snapshot.storesByReceiver)")
        XCTAssertTrue(snapshot.statuses.contains { $0.device == device && $0.state == .online })

        // A hostile payload on the device's batch topic is dead-lettered; traffic goes on.
        try await deviceClient.publish("fieldlog/v1/devices/\(deviceName)/batch", payload: Array(#"{"v":1,"type":"batch","device":"someone-else"}"#.utf8))
        try await eventually("dead letter") { store.state.withLock { !$0.deadLetters.isEmpty } }
        XCTAssertEqual(store.state.withLock { $0.deadLetters.first?.reason }, .deviceMismatch)

        // A replay command from the backend: resent as batches (duplicates absorbed) and answered.
        let backend = try MQTTClient(configuration: MQTTConfiguration(
            host: "127.0.0.1", port: stack.mqttPort, clientID: Stack.uniqueName("cmd"), username: stack.mqttBackendUser,
            password: stack.mqttBackendPassword, keepAlive: .seconds(10), reconnect: fast), logger: logger)
        try await backend.connect()
        let replay = Command(requestID: "rp-1", kind: .replay(epoch: nil, range: SequenceRange(checked: SequenceNumber(10), SequenceNumber(40))))
        try await backend.publish("fieldlog/v1/devices/\(deviceName)/request", payload: SyncCodec.encode(replay))
        try await eventually("replay response") { store.state.withLock { $0.responses.contains { $0.requestID == "rp-1" } } }
        let response = store.state.withLock { $0.responses.first { $0.requestID == "rp-1" } }
        XCTAssertEqual(response?.resent, SequenceRange(checked: SequenceNumber(10), SequenceNumber(40)))
        XCTAssertEqual(response?.ok, true)
        try await eventually("replay duplicates absorbed") { store.state.withLock { $0.duplicates >= 31 } }
        XCTAssertEqual(store.state.withLock { $0.rows.count }, 200, "replayed records are not stored twice")
        await backend.disconnect()

        sync.shutdown()
        _ = try await deviceTask.value
        await deviceClient.disconnect()
    }

    /// The device boots while the broker is down, then the broker comes up, then it is
    /// killed (SIGKILL) and restarted mid-stream: everything is acked, nothing stored twice.
    func testBrokerDownAtStartAndKilledMidStream() async throws {
        guard (try Stack.available()) != nil else { throw XCTSkip("service stack not running") }
        let broker = try PrivateMosquitto()
        let deviceName = Stack.uniqueName("syncdev")
        let password = Stack.uniqueName("pw")
        try broker.addUser(deviceName, password: password)
        try broker.addUser("fieldlog-backend", password: "backend-pw")
        let device = try DeviceID(deviceName)
        let fast = MQTTReconnectPolicy(minDelay: .milliseconds(100), maxDelay: .milliseconds(500), jitter: 0.5)
        var logger = Logger(label: "sync-test")
        logger.logLevel = .critical

        var config = DeviceSyncConfiguration(device: device, epoch: Epoch.random())
        config.sender.maxRecordsPerBatch = 9
        config.sender.resendDelayInitial = .milliseconds(300)
        config.sender.resendDelayMax = .seconds(1)
        config.initialConnect = fast
        config.drainBatchesPerSecond = 200
        let deviceClient = try MQTTClient(configuration: MQTTConfiguration(
            host: "127.0.0.1", port: broker.port, clientID: Stack.uniqueName("d"), username: deviceName, password: password,
            keepAlive: .seconds(5), connectTimeout: .seconds(2), will: config.will, reconnect: fast), logger: logger)
        let log = MemoryLog()
        let head = log.append(50)
        let sync = DeviceSync(configuration: config, client: deviceClient, log: log, head: head, acked: .zero, logger: logger)
        let deviceTask = Task { try await sync.run() }
        defer { deviceTask.cancel() }

        let store = MemoryStore(name: "r1", device: device)
        let backendClient = try MQTTClient(configuration: MQTTConfiguration(
            host: "127.0.0.1", port: broker.port, clientID: Stack.uniqueName("b"), username: "fieldlog-backend",
            password: "backend-pw", keepAlive: .seconds(5), connectTimeout: .seconds(2), reconnect: fast), logger: logger)
        let service = ReceiverService(client: backendClient, store: store, logger: logger, initialConnect: fast)
        let receiverTask = Task { try await service.run() }
        defer { receiverTask.cancel() }

        try await Task.sleep(for: .milliseconds(700))
        XCTAssertEqual(log.acked, .zero, "nothing can be acked without a broker")
        try broker.start()
        try await eventually("50 acked once the broker is up") { log.acked == head }

        broker.kill9()
        let head2 = log.append(60)
        sync.appended(through: head2)
        try await Task.sleep(for: .milliseconds(300))
        try broker.start()
        try await eventually("110 acked after the broker restart", timeout: .seconds(30)) { log.acked == head2 }
        let rows = store.state.withLock { $0.rows }
        XCTAssertEqual(Set(rows.keys), Set((1...110).map { SequenceNumber(UInt64($0)) }))
        sync.shutdown()
        _ = try? await deviceTask.value
        await deviceClient.disconnect()
        receiverTask.cancel()
        _ = try? await receiverTask.value
        await backendClient.disconnect()
    }
}
