// ReceiverService: the backend's MQTT transport around ReceiverStateMachine (spec §5).
//
// Theory of operation. One owner loop feeds broker messages and store completions into the
// state machine and executes its actions. Stores run in child tasks (so a `SyncStore` can
// group concurrent batches into larger transactions); their completions come back into the
// loop as inputs, and only then is the ack published (QoS 1, retained): nothing is acked
// before its commit. The subscription is an MQTT v5 shared subscription
// (`$share/<group>/...`), so any number of processes can run this service side by side;
// the ack rule (spec §5.5) keeps them correct without coordination. Reconnecting is the MQTT
// client's (backoff with jitter; it re-subscribes after a reconnect without session).

import FieldlogCore
import Logging
import MQTT

/// What the receiver needs from the backend's storage (MariaDB in `fieldlog-backend`).
public protocol SyncStore: Sendable {
    /// Inserts the request idempotently in one transaction, commits, then computes the
    /// outcome with `AckRule` from committed rows. Throws when nothing was committed.
    func store(_ request: StoreRequest) async throws -> StoreOutcome
    /// Keeps a rejected message aside (it is never stored as data).
    func deadLetter(_ letter: DeadLetter) async
    func recordStatus(_ status: Status, topic: String) async
    func recordResponse(device: DeviceID, _ response: CommandResponse) async
    /// A seed device's value list (no delivery guarantee; de-duplicated by `_id`).
    func storeLegacy(device: DeviceID, payload: [UInt8], topic: String) async
}

/// The backend's sync service; see the theory of operation at the top of the file.
public final class ReceiverService: Sendable {
    enum Input: Sendable {
        case message(MQTTMessage)
        case committed(StoreToken, StoreOutcome)
        case failed(StoreToken, String)
        case connection(MQTTConnectionEvent)
    }

    public let configuration: ReceiverConfiguration
    /// Shared subscription group; all ingest processes of one deployment use the same.
    public let shareGroup: String
    private let client: MQTTClient
    private let store: SyncStore
    private let logger: Logger

    /// Backoff with jitter for the first connect (later reconnects are the MQTT client's own).
    public let initialConnect: MQTTReconnectPolicy

    public init(configuration: ReceiverConfiguration = ReceiverConfiguration(), shareGroup: String = "fieldlog-ingest",
                client: MQTTClient, store: SyncStore, logger: Logger,
                initialConnect: MQTTReconnectPolicy = MQTTReconnectPolicy(minDelay: .seconds(1), maxDelay: .seconds(30), jitter: 0.5)) {
        self.initialConnect = initialConnect
        self.configuration = configuration
        self.shareGroup = shareGroup
        self.client = client
        self.store = store
        self.logger = logger
    }

    /// Connects (retrying while the broker is unreachable), subscribes with the shared
    /// subscription and runs until cancelled. Returns the machine's counters.
    @discardableResult
    public func run() async throws -> ReceiverCounters {
        var machine = ReceiverStateMachine(configuration: configuration)
        let (inputs, input) = AsyncStream.makeStream(of: Input.self)
        let forward = Task { [client] in
            await withTaskGroup(of: Void.self) { g in
                g.addTask { for await e in client.events { input.yield(.connection(e)) } }
                g.addTask { for await m in client.messages { input.yield(.message(m)) } }
            }
            input.finish()
        }
        defer { forward.cancel() }
        try await client.connectRetrying(policy: initialConnect, logger: logger)
        for filter in machine.subscriptionFilters {
            try await client.subscribe("$share/\(shareGroup)/\(filter)", qos: .atLeastOnce)
        }
        await withTaskCancellationHandler {
            // A discarding group: finished stores and ack publishes leave no results behind.
            await withDiscardingTaskGroup { group in
                for await event in inputs {
                    if Task.isCancelled { break }
                    let actions: [ReceiverStateMachine.Action]
                    switch event {
                    case .message(let m): actions = machine.messageReceived(topic: m.topic, payload: m.payload)
                    case .committed(let token, let outcome): actions = machine.storeCommitted(token, outcome: outcome)
                    case .failed(let token, let reason):
                        logger.warning("sync store failed; the device will resend", metadata: ["token": "\(token)", "error": "\(reason)"])
                        actions = machine.storeFailed(token)
                    case .connection(let e):
                        logger.info("sync receiver connection", metadata: ["event": "\(e)"])
                        actions = []
                    }
                    for action in actions {
                        logger.trace("sync receiver action", metadata: ["action": "\(action)"])
                        switch action {
                        case .store(let token, let request):
                            group.addTask { [store] in
                                do { input.yield(.committed(token, try await store.store(request))) } catch {
                                    input.yield(.failed(token, "\(error)"))
                                }
                            }
                        case .publishAck(let topic, let payload, _):
                            group.addTask { [client, logger] in
                                do {
                                    try await client.publish(topic, payload: payload, qos: .atLeastOnce, retain: true,
                                                             properties: MQTTMessageProperties(contentType: SyncCodec.contentType))
                                } catch {
                                    logger.warning("sync ack not published; the device will resend", metadata: ["topic": "\(topic)", "error": "\(error)"])
                                }
                            }
                        case .deadLetter(let letter):
                            logger.info("sync dead letter", metadata: ["topic": "\(letter.topic)", "reason": "\(letter.reason.rawValue)", "detail": "\(letter.message)"])
                            await store.deadLetter(letter)
                        case .recordStatus(let status, let topic): await store.recordStatus(status, topic: topic)
                        case .recordResponse(let device, let response): await store.recordResponse(device: device, response)
                        case .storeLegacy(let device, let payload, let topic): await store.storeLegacy(device: device, payload: payload, topic: topic)
                        case .droppedOverloaded(let device, let range):
                            logger.warning("sync receiver overloaded; batch dropped unacked", metadata: ["device": "\(device)", "range": "\(range)"])
                        }
                    }
                }
                group.cancelAll()
            }
        } onCancel: {
            input.finish()
        }
        return machine.counters
    }
}
