// DeviceSync: the device's MQTT transport around SenderStateMachine (spec/protocol.md §4).
//
// Theory of operation. One owner loop (`run()`) is the only code that touches the state
// machine. Every source of events — MQTT connection events, MQTT messages (acks, commands),
// appends announced by the log, the resend timer, publish completions — yields an `Input`
// into one AsyncStream; the loop takes them one at a time, feeds the machine and executes
// its actions. Log reads and acked-pointer writes are awaited inline (the log does its
// blocking work on its own thread); publishes run in child tasks, because a QoS 1 publish
// waits for the PUBACK and the window needs several in flight. Reconnecting (with backoff
// and jitter) is the MQTT client's; an optional drain-rate limit spaces batch publishes so a
// fleet coming back from an outage does not swamp the backend. Commands other than
// `replay`/`send_measurements`/`status` are handed to the device node (`commands`), which
// answers through `respond(_:)`.

import FieldlogCore
#if canImport(Glibc)
import Glibc
#endif
import Logging
import MQTT
import Synchronization

/// What the sender needs from the device's log.
public protocol SenderLog: Sendable {
    /// Records and loss markers of `from...through` in ascending order (at most `limit`
    /// items), and the lowest sequence number the log still retains.
    func loadForSync(from: SequenceNumber, through: SequenceNumber, limit: Int) async throws -> SenderLogSlice
    /// Durably remember that everything through `through` is acknowledged.
    func persistAcked(through: SequenceNumber) async throws
}

/// A read of the log for one batch.
public struct SenderLogSlice: Sendable {
    public var records: [LogRecord]
    public var losses: [LossMarker]
    public var retainedFrom: SequenceNumber
    public init(records: [LogRecord], losses: [LossMarker], retainedFrom: SequenceNumber) {
        self.records = records
        self.losses = losses
        self.retainedFrom = retainedFrom
    }
}

/// Configuration of the device transport.
public struct DeviceSyncConfiguration: Sendable {
    public var device: DeviceID
    public var epoch: Epoch
    public var topics: TopicTemplates = .defaults
    public var identity = DeviceIdentity()
    public var sender = SenderConfiguration()
    /// How often an `online` status is published while connected. Default 60 s.
    public var statusInterval: Duration = .seconds(60)
    /// Most batches published per second (nil: no limit). Spreads a fleet's backlog drain.
    public var drainBatchesPerSecond: Double?
    /// Backoff with jitter for the first connect (later reconnects are the MQTT client's own).
    public var initialConnect = MQTTReconnectPolicy(minDelay: .seconds(1), maxDelay: .seconds(60), jitter: 0.5)

    public init(device: DeviceID, epoch: Epoch) {
        self.device = device
        self.epoch = epoch
    }

    /// The MQTT last will to configure on the client: an `offline` status, QoS 1, retained.
    public var will: MQTTConfiguration.Will {
        MQTTConfiguration.Will(topic: topics.status.topic(device: device, identity: identity),
                               payload: SyncCodec.encode(Status.lastWill(device: device)), qos: .atLeastOnce, retain: true,
                               properties: MQTTMessageProperties(contentType: SyncCodec.contentType))
    }
}

/// A command for the device node to carry out, with what it needs to answer.
public struct IncomingCommand: Sendable {
    /// The decoded command, or why it could not be decoded (answer with `error.response`).
    public var command: Result<Command, CommandDecodingError>
    public var topic: String
}

/// The device's sync service; see the theory of operation at the top of the file.
public final class DeviceSync: Sendable {
    typealias Machine = SenderStateMachine<ContinuousClock.Instant>

    enum Input: Sendable {
        case connection(MQTTConnectionEvent)
        case message(MQTTMessage)
        case appended(SequenceNumber)
        case timer(ContinuousClock.Instant)
        case published(SequenceRange)
        case statusTick
        case finish
    }

    public let configuration: DeviceSyncConfiguration
    private let client: MQTTClient
    private let log: SenderLog
    private let logger: Logger
    private let initialHead: SequenceNumber
    private let initialAcked: SequenceNumber
    private let inputs: AsyncStream<Input>
    private let input: AsyncStream<Input>.Continuation
    /// Commands for the device node (everything but replay/send_measurements/status).
    public let commands: AsyncStream<IncomingCommand>
    private let commandSink: AsyncStream<IncomingCommand>.Continuation
    /// Measuring state reported in status messages; set by the device node.
    private let measuring = Mutex<Bool?>(nil)
    /// Replay commands waiting for `.replayFinished`, by request id.
    private let replayCommands = Mutex<[String: Command]>([:])
    /// Recent request ids and their replies (nil while being carried out), so that a QoS 1
    /// duplicate of a command is answered again without acting twice (spec §3.5).
    private let recentCommands = Mutex(RecentCommands())

    struct RecentCommands {
        static let capacity = 64
        var order: [String] = []
        var replies: [String: CommandResponse?] = [:]

        /// Records `id` as in progress; false when it was seen before.
        mutating func begin(_ id: String) -> Bool {
            guard replies[id] == nil else { return false }
            replies[id] = .some(nil)
            order.append(id)
            if order.count > Self.capacity { replies[order.removeFirst()] = nil }
            return true
        }
        mutating func finish(_ r: CommandResponse) {
            guard let id = r.requestID, replies[id] != nil else { return }
            replies[id] = .some(r)
        }
    }

    /// `head`/`acked` are the log's durable state at start-up. The client must be configured
    /// with `configuration.will`; `run()` connects it.
    public init(configuration: DeviceSyncConfiguration, client: MQTTClient, log: SenderLog,
                head: SequenceNumber, acked: SequenceNumber, logger: Logger) {
        self.configuration = configuration
        self.client = client
        self.log = log
        self.logger = logger
        self.initialHead = head
        self.initialAcked = acked
        (inputs, input) = AsyncStream.makeStream(of: Input.self)
        (commands, commandSink) = AsyncStream.makeStream(of: IncomingCommand.self)
    }

    /// The log durably appended records through `through`. Safe from any thread.
    public func appended(through: SequenceNumber) { input.yield(.appended(through)) }

    /// Whether measuring is on, for status messages.
    public func setMeasuring(_ on: Bool?) { measuring.withLock { $0 = on } }

    /// Publishes a command response (QoS 1) on the device's response topic.
    public func respond(_ response: CommandResponse) async throws {
        recentCommands.withLock { $0.finish(response) }
        let t = configuration.topics.response.topic(device: configuration.device, identity: configuration.identity)
        try await client.publish(t, payload: SyncCodec.encode(response), qos: .atLeastOnce,
                                 properties: MQTTMessageProperties(contentType: SyncCodec.contentType))
    }

    /// Stops `run()` after the current input; publishes an `offline` status first when connected.
    public func shutdown() { input.yield(.finish) }

    // MARK: Owner loop

    private struct LoopState {
        var machine: Machine
        var timerTask: Task<Void, Never>?
        var statusTask: Task<Void, Never>?
        var nextPublishSlot = ContinuousClock.now
        var connected = false
    }

    /// Connects (retrying with backoff and jitter while the broker is unreachable), subscribes
    /// to the ack, request and broadcast topics, and runs until `shutdown()` or cancellation.
    /// Throws when a subscription is refused (an ACL that does not fit the topics).
    public func run() async throws {
        let c = configuration
        var state = LoopState(machine: Machine(device: c.device, epoch: c.epoch, head: initialHead, acked: initialAcked,
                                               configuration: c.sender))
        let forward = Task { [client, input] in
            await withTaskGroup(of: Void.self) { g in
                g.addTask { for await e in client.events { input.yield(.connection(e)) } }
                g.addTask { for await m in client.messages { input.yield(.message(m)) } }
            }
        }
        defer {
            forward.cancel()
            state.timerTask?.cancel()
            state.statusTask?.cancel()
            commandSink.finish()
        }
        try await client.connectRetrying(policy: c.initialConnect, logger: logger)
        for filter in [c.topics.ack.topic(device: c.device, identity: c.identity),
                       c.topics.request.topic(device: c.device, identity: c.identity),
                       c.topics.broadcast.topic(device: c.device, identity: c.identity)] {
            try await client.subscribe(filter, qos: .atLeastOnce)
        }
        await withTaskCancellationHandler {
            for await event in inputs {
                if case .finish = event {
                    if state.connected { await publishStatus(state.machine, state: .offline) }
                    break
                }
                await handle(event, &state)
            }
        } onCancel: { [input] in input.yield(.finish) }
    }

    private func handle(_ event: Input, _ state: inout LoopState) async {
        let now = ContinuousClock.now
        switch event {
        case .connection(.connected):
            state.connected = true
            logger.info("sync connected", metadata: ["acked": "\(state.machine.acked)", "head": "\(state.machine.head)"])
            await publishStatus(state.machine, state: .online)
            state.statusTask?.cancel()
            state.statusTask = Task { [input, interval = configuration.statusInterval] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: interval)
                    if Task.isCancelled { break }
                    input.yield(.statusTick)
                }
            }
            await execute(state.machine.connected(now: now), &state)
        case .connection(.disconnected(let error)):
            state.connected = false
            state.statusTask?.cancel()
            logger.warning("sync disconnected", metadata: ["error": "\(error.map { "\($0)" } ?? "none")"])
            await execute(state.machine.disconnected(), &state)
        case .connection(.connectFailed(let error)):
            logger.warning("sync connect failed", metadata: ["error": "\(error)"])
        case .connection(.reconnecting(let attempt, let delay)):
            logger.debug("sync reconnecting", metadata: ["attempt": "\(attempt)", "delay": "\(delay)"])
        case .message(let m):
            await handleMessage(m, &state)
        case .appended(let through):
            guard through > state.machine.head else { return }
            await execute(state.machine.appended(through: through, now: now), &state)
        case .timer(let deadline):
            await execute(state.machine.timerFired(now: max(now, deadline)), &state)
        case .published(let range):
            await execute(state.machine.publishConfirmed(range), &state)
        case .statusTick:
            if state.connected { await publishStatus(state.machine, state: .online) }
        case .finish:
            break
        }
    }

    private func handleMessage(_ m: MQTTMessage, _ state: inout LoopState) async {
        let c = configuration
        let now = ContinuousClock.now
        if m.topic == c.topics.ack.topic(device: c.device, identity: c.identity) {
            do {
                let ack = try SyncCodec.decodeAck(m.payload, expectedDevice: c.device)
                await execute(state.machine.ackReceived(ack, now: now), &state)
            } catch {
                logger.warning("sync ignored an invalid ack", metadata: ["reason": "\(error)"])
            }
            return
        }
        let decoded: Result<Command, CommandDecodingError>
        do { decoded = .success(try SyncCodec.decodeCommand(m.payload)) } catch { decoded = .failure(error) }
        guard case .success(let command) = decoded else {
            commandSink.yield(IncomingCommand(command: decoded, topic: m.topic))
            return
        }
        if let id = command.requestID {
            let (fresh, cached) = recentCommands.withLock { r in (r.begin(id), r.replies[id] ?? nil) }
            guard fresh else {
                // A duplicate delivery: answer again if the first is done, never act twice.
                logger.debug("sync ignored a repeated command", metadata: ["id": "\(id)", "command": "\(command.name)"])
                if let cached { await reply(cached) }
                return
            }
        }
        switch command.kind {
        case .replay(let epoch, let range):
            if let epoch, epoch != c.epoch {
                await reply(CommandResponse(requestID: command.requestID, command: command.name, error: .invalidArgument,
                                            message: "epoch \(epoch) is not this device's current epoch \(c.epoch); its records are no longer retained"))
                return
            }
            await startReplay(command, range: range, &state)
        case .sendMeasurements(let lo, let hi, let count):
            let first = lo ?? SequenceNumber(1)
            var last = hi ?? state.machine.head
            if let count, count >= 1 { last = min(last, SequenceNumber(first.rawValue + UInt64(count) - 1)) }
            guard last >= first, last.rawValue >= 1 else {
                await reply(CommandResponse(requestID: command.requestID, command: command.name, message: "nothing to send"))
                return
            }
            await startReplay(command, range: SequenceRange(checked: first, last), &state)
        case .status:
            let s = await publishStatus(state.machine, state: .online)
            await reply(CommandResponse(requestID: command.requestID, command: command.name, status: s))
        default:
            commandSink.yield(IncomingCommand(command: decoded, topic: m.topic))
        }
    }

    private func startReplay(_ command: Command, range: SequenceRange, _ state: inout LoopState) async {
        // Replays without a request id get one, so the batches can be tied to the reply.
        let id = command.requestID ?? "replay-\(range.first)-\(range.last)"
        guard let actions = state.machine.replayRequested(requestID: id, range: range, now: ContinuousClock.now) else {
            await reply(CommandResponse(requestID: command.requestID, command: command.name, error: .failed,
                                        message: "too many replays queued; ask again later"))
            return
        }
        replayCommands.withLock { $0[id] = command }
        await execute(actions, &state)
    }

    private func reply(_ r: CommandResponse) async {
        do { try await respond(r) } catch { logger.warning("sync could not send a command response", metadata: ["error": "\(error)"]) }
    }

    @discardableResult
    private func publishStatus(_ machine: Machine, state: DeviceState) async -> Status {
        var s = machine.status(atUnixMilliseconds: Self.wallClockMilliseconds(), measuring: measuring.withLock { $0 })
        s.state = state
        let t = configuration.topics.status.topic(device: configuration.device, identity: configuration.identity)
        do {
            try await client.publish(t, payload: SyncCodec.encode(s), qos: .atLeastOnce, retain: true,
                                     properties: MQTTMessageProperties(contentType: SyncCodec.contentType))
        } catch {
            logger.debug("sync status not published", metadata: ["error": "\(error)"])
        }
        return s
    }

    private func execute(_ actions: [Machine.Action], _ state: inout LoopState) async {
        var queue = actions
        while !queue.isEmpty {
            let action = queue.removeFirst()
            logger.trace("sync action", metadata: ["action": "\(action)"])
            switch action {
            case .loadRecords(let from, let through, let limit):
                var delay = Duration.milliseconds(100)
                while true {
                    do {
                        let slice = try await log.loadForSync(from: from, through: through, limit: limit)
                        queue += state.machine.recordsLoaded(from: from, records: slice.records, losses: slice.losses,
                                                             retainedFrom: slice.retainedFrom,
                                                             nowUnixMilliseconds: Self.wallClockMilliseconds(), now: .now)
                        break
                    } catch {
                        // A log read failing is a disk problem; keep trying, slower and slower.
                        logger.error("sync could not read the log; retrying", metadata: ["from": "\(from)", "error": "\(error)"])
                        try? await Task.sleep(for: delay)
                        delay = min(delay * 2, .seconds(30))
                        if Task.isCancelled { return }
                    }
                }
            case .publish(let out):
                let slot = reservePublishSlot(&state)
                let topic = configuration.topics.batch.topic(device: configuration.device, identity: configuration.identity)
                Task { [client, input, logger] in
                    if slot > .now { try? await Task.sleep(until: slot, clock: .continuous) }
                    do {
                        try await client.publish(topic, payload: out.payload, qos: .atLeastOnce,
                                                 properties: MQTTMessageProperties(contentType: SyncCodec.contentType))
                        input.yield(.published(out.batch.range))
                    } catch {
                        // The resend timer brings it back.
                        logger.debug("sync publish failed", metadata: ["range": "\(out.batch.range)", "error": "\(error)"])
                    }
                }
            case .persistAcked(let through):
                do { try await log.persistAcked(through: through) } catch {
                    // Safe to lose: after a restart the sender resends from the older pointer.
                    logger.error("sync could not persist the acked pointer", metadata: ["through": "\(through)", "error": "\(error)"])
                }
            case .armTimer(let at):
                state.timerTask?.cancel()
                state.timerTask = Task { [input] in
                    try? await Task.sleep(until: at, clock: .continuous)
                    if !Task.isCancelled { input.yield(.timer(at)) }
                }
            case .cancelTimer:
                state.timerTask?.cancel()
                state.timerTask = nil
            case .replayFinished(let id, let resent, let notRetained):
                let command = replayCommands.withLock { $0.removeValue(forKey: id) }
                await reply(CommandResponse(requestID: command?.requestID, command: command?.name ?? "replay",
                                            message: resent == nil ? "nothing in that range has been appended yet" : nil,
                                            resent: resent, notRetained: Array(notRetained.prefix(ProtocolLimits.maxAckListEntries))))
            case .reportAnomaly(let text):
                logger.warning("sync protocol anomaly", metadata: ["detail": "\(text)"])
            }
        }
    }

    private func reservePublishSlot(_ state: inout LoopState) -> ContinuousClock.Instant {
        guard let rate = configuration.drainBatchesPerSecond, rate > 0 else { return .now }
        let slot = max(ContinuousClock.now, state.nextPublishSlot)
        state.nextPublishSlot = slot.advanced(by: .seconds(1.0 / rate))
        return slot
    }

    static func wallClockMilliseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }
}
