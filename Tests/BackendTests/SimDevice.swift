// A minimal device for the ingest tests: publishes encoded batches as its own MQTT user,
// takes acks (the highest `through` wins, as the device rule says) and resends whatever is
// not acknowledged. Not a model of the real device's sender; just enough protocol to drive ingest.
import FieldlogCore
import Foundation
import Logging
import MQTT
import Sync
import TestSupport
@testable import BackendStore
@testable import Ingest
@testable import Audit
@testable import WebAdmin

final class SimDevice: @unchecked Sendable {
    // @unchecked: `acked` and `acks` are only touched under `lock`; the rest is immutable.
    let id: DeviceID
    let epoch: Epoch
    let records: UInt64
    let batchSize: UInt64
    let client: MQTTClient
    private let lock = NSLock()
    private var ackedThrough = SequenceNumber.zero
    private var ackLog: [Ack] = []
    private var listener: Task<Void, Never>?
    /// Messages other than acks (commands on the request topic), for tests that answer them.
    let otherMessages: AsyncStream<MQTTMessage>
    private let otherContinuation: AsyncStream<MQTTMessage>.Continuation

    var acked: SequenceNumber { lock.withLock { ackedThrough } }
    var acks: [Ack] { lock.withLock { ackLog } }

    private init(id: DeviceID, epoch: Epoch, records: UInt64, batchSize: UInt64, client: MQTTClient) {
        self.id = id
        self.epoch = epoch
        self.records = records
        self.batchSize = batchSize
        self.client = client
        (otherMessages, otherContinuation) = AsyncStream.makeStream(of: MQTTMessage.self)
    }

    /// A device on the shared stack's broker.
    static func connect(stack: Stack, records: UInt64, batchSize: UInt64 = 10) async throws -> SimDevice {
        try await connect(host: stack.mqttHost, port: stack.mqttPort, addUser: stack.addMQTTUser, records: records, batchSize: batchSize)
    }

    /// A device on a private broker.
    static func connect(broker: PrivateMosquitto, records: UInt64, batchSize: UInt64 = 10) async throws -> SimDevice {
        try await connect(host: "127.0.0.1", port: broker.port, addUser: broker.addUser, records: records, batchSize: batchSize)
    }

    static func connect(host: String, port: Int, addUser: (String, String) throws -> Void, records: UInt64, batchSize: UInt64) async throws -> SimDevice {
        let id = Fixtures.device("sim")
        let password = Stack.uniqueName("pw")
        try addUser(id.rawValue, password)
        // The broker reloads its password file on SIGHUP, at its next loop turn: retry a refusal
        // briefly, with a fresh client each time.
        var attempt = 0
        var connected: MQTTClient?
        while connected == nil {
            let client = try MQTTClient(configuration: MQTTConfiguration(
                host: host, port: port, clientID: id.rawValue, username: id.rawValue, password: password,
                reconnect: MQTTReconnectPolicy(minDelay: .milliseconds(100), maxDelay: .seconds(1))), logger: Logger(label: "sim"))
            do {
                try await client.connect()
                connected = client
            } catch let e as MQTTError where e.kind == .connectRefused && attempt < 20 {
                await client.disconnect()
                attempt += 1
                try await Task.sleep(for: .milliseconds(250))
            }
        }
        let client = connected!
        let device = SimDevice(id: id, epoch: Epoch.random(), records: records, batchSize: batchSize, client: client)
        try await client.subscribe(TopicTemplates.defaults.ack.topic(device: id), qos: .atLeastOnce)
        device.listen()
        return device
    }

    private func listen() {
        let messages = client.messages
        let other = otherContinuation
        listener = Task { [weak self] in
            for await m in messages {
                guard m.topic.hasSuffix("/ack") else {
                    other.yield(m)
                    continue
                }
                guard let self, let ack = try? SyncCodec.decodeAck(m.payload, expectedDevice: self.id), ack.epoch == self.epoch else { continue }
                self.lock.withLock {
                    self.ackLog.append(ack)
                    if ack.through > self.ackedThrough { self.ackedThrough = ack.through }
                }
            }
        }
    }

    func batch(_ index: UInt64) -> Batch {
        let first = index * batchSize + 1
        return Fixtures.batch(id, epoch, first, min(first + batchSize - 1, records))
    }

    var batchCount: UInt64 { (records + batchSize - 1) / batchSize }

    /// Publishes batches `indices` (QoS 1; returns after the broker's PUBACKs).
    func publish(_ indices: Range<UInt64>) async throws {
        let topic = TopicTemplates.defaults.batch.topic(device: id)
        for i in indices { try await client.publish(topic, payload: SyncCodec.encode(batch(i)), qos: .atLeastOnce) }
    }

    /// Publishes one arbitrary batch.
    func publish(_ b: Batch) async throws {
        try await client.publish(TopicTemplates.defaults.batch.topic(device: id), payload: SyncCodec.encode(b), qos: .atLeastOnce)
    }

    /// Waits until everything is acked, resending what is not every `resendEvery`; returns the acked-through.
    @discardableResult
    func sync(timeout: Duration, resendEvery: Duration = .seconds(1)) async throws -> SequenceNumber {
        let deadline = ContinuousClock.now + timeout
        var lastSend = ContinuousClock.now
        while acked.rawValue < records && ContinuousClock.now < deadline {
            if ContinuousClock.now - lastSend >= resendEvery {
                try await publish(acked.rawValue / batchSize..<batchCount)
                lastSend = ContinuousClock.now
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        return acked
    }

    /// Waits until acked-through reaches `target` (no resends), or the timeout passes.
    func waitAcked(_ target: UInt64, timeout: Duration) async throws {
        let deadline = ContinuousClock.now + timeout
        while acked.rawValue < target && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
    }

    func close() async {
        listener?.cancel()
        otherContinuation.finish()
        await client.disconnect()
    }
}


/// A broker of the test's own (deploy/ configuration: auth + ACL) with the backend's user.
/// Used where the test counts acks: on the shared broker, any other receiver subscribed to
/// every device's batch topic (another suite's ingest, in another share group) gets a copy of
/// each batch too and acks it from its own store, which would make "acked" meaningless here.
func privateBroker() throws -> (broker: PrivateMosquitto, user: String, password: String) {
    let broker = try PrivateMosquitto()
    let password = Stack.uniqueName("pw")
    try broker.addUser("fieldlog-backend", password: password)
    try broker.start()
    return (broker, "fieldlog-backend", password)
}

