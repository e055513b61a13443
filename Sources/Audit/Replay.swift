// Replay: ask a device to resend a range of its log, and record the command and the answer.
//
// The command (spec §3.5 `replay`, with a fresh request id) goes on the device's request topic
// (QoS 1, not retained) after its row is in `commands`, so an answer can always be matched.
// The resent batches arrive on the batch topic like any other and are stored by whichever
// ingest process gets them (duplicates absorbed). The answer on the response topic is
// recorded by the ingest processes; `awaitResponse` also listens for it itself so that
// `fieldlog-backend replay` can print it and record it even when no ingest runs.
import BackendStore
import FieldlogCore
import Foundation
import Logging
import MQTT
import Sync

package final class Replayer: Sendable {
    package let client: MQTTClient
    package let store: Store
    package let topics: TopicTemplates
    package let logger: Logger

    private init(client: MQTTClient, store: Store, topics: TopicTemplates, logger: Logger) {
        self.client = client
        self.store = store
        self.topics = topics
        self.logger = logger
    }

    package static func connect(config: BackendConfiguration, store: Store, logger: Logger) async throws -> Replayer {
        let b = config.broker
        let client = try MQTTClient(configuration: MQTTConfiguration(
            host: b.host, port: b.port, clientID: "\(b.clientIDPrefix)-replay-\(String(UInt64.random(in: 0...UInt64.max), radix: 36))",
            username: b.user, password: b.password, keepAlive: .seconds(b.keepAliveSeconds)), logger: logger)
        try await client.connect()
        return Replayer(client: client, store: store, topics: config.topics.templates, logger: logger)
    }

    package struct Sent: Sendable { package var requestID: String }

    /// Records and publishes a replay command.
    package func send(device: DeviceID, epoch: Epoch?, range: SequenceRange) async throws -> Sent {
        let requestID = "replay-" + String(UInt64.random(in: 0...UInt64.max), radix: 36)
        let command = Command(requestID: requestID, kind: .replay(epoch: epoch, range: range))
        let payload = SyncCodec.encode(command)
        try await client.subscribe(topics.response.topic(device: device), qos: .atLeastOnce)
        try await store.recordCommand(requestID: requestID, device: device, command: command.name, epoch: epoch, range: range,
                                      payload: String(decoding: payload, as: UTF8.self))
        try await client.publish(topics.request.topic(device: device), payload: payload, qos: .atLeastOnce, retain: false,
                                 properties: MQTTMessageProperties(contentType: SyncCodec.contentType))
        return Sent(requestID: requestID)
    }

    /// Waits up to `timeout` for the device's answer to `requestID`; records it and returns a summary.
    package func awaitResponse(requestID: String, device: DeviceID, timeout: Duration) async throws -> String? {
        let messages = client.messages
        let topics = self.topics
        return try await withThrowingTaskGroup(of: String?.self) { group in
            group.addTask {
                for await m in messages {
                    guard topics.response.device(inTopic: m.topic) == device,
                          let r = try? SyncCodec.decodeCommandResponse(m.payload), r.requestID == requestID else { continue }
                    let outcome = ResponseRecord.outcome(of: r)
                    try await self.store.recordResponse(device: device, r)
                    return r.ok ? outcome : "\(outcome): \(r.message ?? "")"
                }
                return nil
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            let first = try await group.next() ?? nil
            group.cancelAll()
            return first
        }
    }

    package func close() async { await client.disconnect() }
}
