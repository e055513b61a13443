// The sync agent: the protocol's sender state machine driven over MQTT, plus commands.
//
// Theory of operation: one owner loop consumes one event stream and is the only code that
// touches the `SenderStateMachine`. Events come from small forwarding tasks: the MQTT
// client's connection events and messages (acks, commands), a tick every
// `mqtt_sender:interval` and right after each append of this process's sampler, which reads
// the log's head (so records appended by another process sharing the log file are picked up
// too, within an interval), the resend timer, and replay requests from the
// command handler. The loop feeds each event to the state machine and performs the actions
// it returns: load records from the log, publish a batch (QoS 1; the PUBACK only counts a
// metric, it proves nothing about storage), persist the acked pointer in the log (which
// trims by retention), arm or cancel the timer, answer a finished replay.
//
// The sender is "connected" only while the MQTT session is up, subscribed, and
// `mqtt_sender:enabled` is on; turning the switch off pauses publishing exactly like a
// network outage, and turning it on resends what is unacked. The MQTT session is persistent
// (clean start false, a session expiry), so commands sent while the device is offline are
// delivered when it is back; a retained status says online, and the last will (retained
// `offline`) says when the device vanished. Sampling never waits for any of this: the agent
// only reads the log.
import FieldlogCore
import Log
import Logging
import MQTT
import ServiceLifecycle
import Sync

/// What the sync agent needs from the configuration.
public struct SyncAgentConfiguration: Sendable {
    public var device: DeviceID
    public var identity: DeviceIdentity
    public var mqtt: MQTTConfiguration
    public var topics: DeviceConfiguration.Topics
    public var sender: SenderConfiguration
    /// How often a retained status is refreshed while something changes.
    public var statusInterval: Duration = .seconds(10)
    /// A batch goes out at most this often when the sender is woken by appends (the readings
    /// of that time go in one batch). Default 50 ms: the latency it adds is far below the
    /// sender interval, and at 100 readings/s it sends ~20 batches/s instead of 100.
    public var appendCoalescing: Duration = .milliseconds(50)

    public init(device: DeviceID, identity: DeviceIdentity, mqtt: MQTTConfiguration, topics: DeviceConfiguration.Topics, sender: SenderConfiguration) {
        self.device = device
        self.identity = identity
        self.mqtt = mqtt
        self.topics = topics
        self.sender = sender
    }
}

/// A snapshot of the agent's state for /status.
public struct SyncSnapshot: Sendable {
    public var connected = false
    public var senderEnabled = true
    public var head = SequenceNumber.zero
    public var acked = SequenceNumber.zero
    public var inFlight: [SequenceRange] = []
    public var lastError: String?
    public var connects = 0
}

/// The sync agent service (see the theory of operation above).
public final class SyncAgent: Service, @unchecked Sendable {
    // @unchecked: `snapshotValue` and `replayWaiters` are guarded by `lock`; the rest is immutable
    // or owned by the run loop.
    public let configuration: SyncAgentConfiguration
    let log: DeviceLog
    let settings: RuntimeSettings
    let metrics: DeviceMetrics
    let logger: Logger
    /// Set after init (the handler's environment refers back to this agent).
    private var commandHandlerValue: CommandHandler?
    private let lock = Lock()
    private var snapshotValue = SyncSnapshot()
    private let events: AsyncStream<Event>
    private let eventSink: AsyncStream<Event>.Continuation
    private var replayWaiters: [String: CheckedContinuation<ReplayOutcome, any Error>] = [:]
    /// Command messages, handled serially by one task of `run()`.
    private let commandMessages: AsyncStream<MQTTMessage>
    let commandSink: AsyncStream<MQTTMessage>.Continuation
    private var replayCounter = 0

    enum Event: Sendable {
        case mqtt(MQTTConnectionEvent)
        case message(MQTTMessage)
        case tick
        case timer(ContinuousClock.Instant)
        case replay(requestID: String, range: SequenceRange)
        case published(OutgoingBatch, Result<Void, MQTTError>)
        case shutdown
    }

    public init(configuration: SyncAgentConfiguration, log: DeviceLog, settings: RuntimeSettings, metrics: DeviceMetrics, logger: Logger) {
        self.configuration = configuration
        self.log = log
        self.settings = settings
        self.metrics = metrics
        self.logger = logger
        (events, eventSink) = AsyncStream.makeStream(of: Event.self, bufferingPolicy: .unbounded)
        // Bounded: a flood of commands must not grow memory without limit (QoS 1 redelivers).
        (commandMessages, commandSink) = AsyncStream.makeStream(of: MQTTMessage.self, bufferingPolicy: .bufferingOldest(256))
    }

    /// The command handler that answers messages on the request and broadcast topics.
    public func setCommandHandler(_ handler: CommandHandler) {
        lock.withLock { commandHandlerValue = handler }
    }

    public var snapshot: SyncSnapshot { lock.withLock { snapshotValue } }

    private func updateSnapshot(_ body: (inout SyncSnapshot) -> Void) {
        lock.withLock { body(&snapshotValue) }
    }

    // MARK: replay (called by the command handler)

    /// Republishes `range` as replay batches and waits until the sender has built them all.
    public func replay(_ request: ReplayRequest) async throws -> ReplayOutcome {
        let status = try await log.status()
        let from = request.from ?? status.oldestRetained ?? status.head.next
        var to = request.to ?? status.head
        if let count = request.count, count >= 1 {
            let capped = from.rawValue &+ UInt64(count) &- 1
            if capped < to.rawValue { to = SequenceNumber(capped) }
        }
        guard from <= to, from.rawValue >= 1 else { return ReplayOutcome(resent: nil, notRetained: []) }
        let range = SequenceRange(checked: from, to)
        let id: String = lock.withLock {
            replayCounter += 1
            // Replays need an id on the wire; seed commands have none, so make one up.
            return request.requestID ?? "local-\(replayCounter)"
        }
        return try await withCheckedThrowingContinuation { c in
            let duplicate = lock.withLock { () -> Bool in
                if replayWaiters[id] != nil { return true }
                replayWaiters[id] = c
                return false
            }
            if duplicate {
                c.resume(throwing: CommandFailure(code: .failed, message: "a replay with id \(id) is already running"))
                return
            }
            eventSink.yield(.replay(requestID: id, range: range))
        }
    }

    private func finishReplay(_ id: String, _ result: Result<ReplayOutcome, any Error>) {
        let c = lock.withLock { replayWaiters.removeValue(forKey: id) }
        c?.resume(with: result)
    }

    // MARK: run

    public func run() async throws {
        let mqtt = try MQTTClient(configuration: configuration.mqtt, logger: logger)
        mqtt.observeTraffic(metrics.dataBudget)
        logger.info("sync agent starting", metadata: [
            "broker": "\(configuration.mqtt.host):\(configuration.mqtt.port)", "client": "\(configuration.mqtt.clientID)",
            "batch_topic": "\(configuration.topics.values)"])
        let status = try await log.status()
        let machine0 = SenderStateMachine<ContinuousClock.Instant>(
            device: configuration.device, epoch: log.epoch, head: status.head, acked: status.ackedThrough,
            configuration: configuration.sender)
        updateSnapshot { $0.head = status.head; $0.acked = status.ackedThrough }
        metrics.head.set(Double(status.head.rawValue))
        metrics.ackedThrough.set(Double(status.ackedThrough.rawValue))
        metrics.backlog.set(Double(status.backlog))

        let sink = eventSink
        let settings = self.settings
        let loop = OwnerLoop(agent: self, mqtt: mqtt)

        // Child tasks return true only for the owner loop: the group ends when the loop does.
        await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                for await e in mqtt.events { sink.yield(.mqtt(e)) }
                return false
            }
            group.addTask {
                for await m in mqtt.messages { sink.yield(.message(m)) }
                return false
            }
            group.addTask {
                // The sender's pace: `mqtt_sender:interval`, woken early when a switch changes
                // or the sampler of this process appended (then the reading goes out within
                // `appendCoalescing`; the interval still picks up records appended by another
                // process).
                while !Task.isCancelled {
                    sink.yield(.tick)
                    let interval = await settings.switches.senderInterval
                    let started = ContinuousClock.now
                    await settings.waitForChange(timeout: interval, orAppend: true)
                    // Readings appended close together go out as one batch: one publish, one
                    // ack, one persisted ack for them all (one each per reading cost most of
                    // the device's CPU at 100 readings/s).
                    let gather = min(self.configuration.appendCoalescing, interval) - (ContinuousClock.now - started)
                    if gather > .zero { try? await executorSleep(for: gather) }
                }
                return false
            }
            group.addTask {
                // The first connect, retried with backoff and jitter until it works (the client
                // reconnects by itself only after a first success); sampling goes on meanwhile.
                let backoff = ReconnectBackoff(policy: self.configuration.mqtt.reconnect)
                var attempt = 0
                while !Task.isCancelled {
                    do {
                        try await mqtt.connect()
                        break
                    } catch let e as MQTTError where e.kind == .closed {
                        break
                    } catch {
                        attempt += 1
                        if attempt == 1 || attempt % 10 == 0 {
                            self.logger.warning("MQTT connect failed; retrying", metadata: ["error": "\(error)", "attempt": "\(attempt)"])
                        }
                        self.updateSnapshot { $0.lastError = "\(error)" }
                        try? await Task.sleep(for: backoff.delay(attempt: attempt, randomUnit: Double.random(in: 0..<1)))
                    }
                }
                return false
            }
            group.addTask {
                for await m in self.commandMessages {
                    guard let handler = self.lock.withLock({ self.commandHandlerValue }) else { continue }
                    let result = await handler.handle(m.payload)
                    if let status = result.response?.status {
                        // spec §3.5: `status` publishes a fresh status and replies with it.
                        _ = try? await mqtt.publish(self.configuration.topics.status, payload: SyncCodec.encode(status), qos: .atLeastOnce,
                                                    retain: true, properties: .init(contentType: SyncCodec.contentType))
                    }
                    do {
                        try await mqtt.publish(self.configuration.topics.response, payload: result.payload, qos: .atLeastOnce, retain: false,
                                               properties: .init(contentType: SyncCodec.contentType))
                    } catch {
                        self.logger.warning("cannot publish command response", metadata: ["error": "\(error)"])
                    }
                    await result.afterResponse?()
                }
                return false
            }
            group.addTask {
                var machine = machine0
                await loop.run(&machine)
                return true
            }
            // Graceful shutdown: stop the loop, then publish the offline status and disconnect.
            await withGracefulShutdownHandler {
                while let isLoop = await group.next() {
                    if isLoop { break }
                }
            } onGracefulShutdown: {
                sink.yield(.shutdown)
            }
            group.cancelAll()
        }
        let offline = Status(device: configuration.device, state: .offline, epoch: log.epoch,
                             head: snapshot.head, acked: snapshot.acked, atUnixMilliseconds: WallClock.now().unixMilliseconds)
        if snapshot.connected {
            _ = try? await withTimeout(.seconds(2)) {
                try await mqtt.publish(self.configuration.topics.status, payload: SyncCodec.encode(offline), qos: .atLeastOnce, retain: true,
                                       properties: .init(contentType: SyncCodec.contentType))
            }
        }
        await mqtt.disconnect()
        lock.withLock {
            for (_, c) in replayWaiters { c.resume(throwing: CommandFailure(code: .failed, message: "the device is shutting down")) }
            replayWaiters = [:]
        }
        logger.info("sync agent stopped")
    }

    /// The owner loop: the only code that touches the state machine.
    final class OwnerLoop: @unchecked Sendable {
        // @unchecked: used by exactly one task (the loop).
        let agent: SyncAgent
        let mqtt: MQTTClient
        var mqttUp = false
        var subscribed = false
        var senderEnabled = true
        var machineConnected = false
        var timerTask: Task<Void, Never>?
        var lastStatusAt: ContinuousClock.Instant?
        var lastStatusState: (SequenceNumber, SequenceNumber, Bool)?

        init(agent: SyncAgent, mqtt: MQTTClient) {
            self.agent = agent
            self.mqtt = mqtt
        }

        var logger: Logger { agent.logger }
        var topics: DeviceConfiguration.Topics { agent.configuration.topics }

        func run(_ machine: inout SenderStateMachine<ContinuousClock.Instant>) async {
            for await event in agent.events {
                let now = ContinuousClock.now
                switch event {
                case .shutdown:
                    timerTask?.cancel()
                    return
                case .mqtt(let e):
                    await handleConnection(e, &machine, now: now)
                case .message(let m):
                    await handleMessage(m, &machine, now: now)
                case .tick:
                    let switches = await agent.settings.switches
                    if switches.senderEnabled != senderEnabled {
                        senderEnabled = switches.senderEnabled
                        logger.info(senderEnabled ? "sender enabled (mqtt_sender:enabled)" : "sender paused (mqtt_sender:enabled is 0)")
                        agent.updateSnapshot { $0.senderEnabled = self.senderEnabled }
                        await syncConnectedState(&machine, now: now)
                    }
                    do {
                        let head = try await agent.log.head()
                        if head > machine.head {
                            await perform(machine.appended(through: head, now: now), &machine)
                        }
                    } catch {
                        logger.error("cannot read the log head", metadata: ["error": "\(error)"])
                    }
                    await maybePublishStatus(&machine, now: now, force: false)
                case .timer(let at):
                    await perform(machine.timerFired(now: max(now, at)), &machine)
                case .replay(let id, let range):
                    if let actions = machine.replayRequested(requestID: id, range: range, now: now) {
                        await perform(actions, &machine)
                    } else {
                        agent.finishReplay(id, .failure(CommandFailure(code: .failed, message: "too many replays queued; ask again later")))
                    }
                case .published(let batch, let result):
                    switch result {
                    case .success:
                        agent.metrics.batchesSent.increment()
                        if batch.resendCount > 0 { agent.metrics.resends.increment() }
                        await perform(machine.publishConfirmed(batch.batch.range), &machine)
                    case .failure(let error):
                        // The sender resends on its timer or on reconnect; nothing to do here.
                        logger.debug("batch publish not confirmed", metadata: ["range": "\(batch.batch.range)", "error": "\(error)"])
                    }
                }
                agent.updateSnapshot {
                    $0.head = machine.head
                    $0.acked = machine.acked
                    $0.inFlight = machine.inFlightRanges
                }
                agent.metrics.backlog.set(Double(machine.backlog))
                agent.metrics.head.set(Double(machine.head.rawValue))
            }
        }

        func syncConnectedState(_ machine: inout SenderStateMachine<ContinuousClock.Instant>, now: ContinuousClock.Instant) async {
            let want = mqttUp && subscribed && senderEnabled
            guard want != machineConnected else { return }
            machineConnected = want
            await perform(want ? machine.connected(now: now) : machine.disconnected(), &machine)
        }

        func handleConnection(_ e: MQTTConnectionEvent, _ machine: inout SenderStateMachine<ContinuousClock.Instant>, now: ContinuousClock.Instant) async {
            switch e {
            case .connected(let sessionPresent):
                mqttUp = true
                let n = agent.snapshot.connects
                if n > 0 { agent.metrics.reconnects.increment() }
                agent.metrics.mqttConnected.set(Double(1))
                logger.info("MQTT connected", metadata: ["session_present": "\(sessionPresent)", "connects": "\(n + 1)"])
                agent.updateSnapshot { $0.connected = true; $0.connects += 1; $0.lastError = nil }
                do {
                    for filter in [topics.ack, topics.request, topics.broadcast] {
                        try await mqtt.subscribe(filter, qos: .atLeastOnce)
                    }
                    subscribed = true
                } catch {
                    logger.warning("subscribe failed; will retry on the next connection", metadata: ["error": "\(error)"])
                    subscribed = false
                }
                await syncConnectedState(&machine, now: now)
                await maybePublishStatus(&machine, now: now, force: true)
            case .disconnected(let error):
                mqttUp = false
                subscribed = false
                agent.metrics.mqttConnected.set(Double(0))
                agent.updateSnapshot { $0.connected = false; $0.lastError = error.map { "\($0)" } }
                logger.warning("MQTT disconnected; sampling goes on, unacked records are resent after reconnect",
                               metadata: ["error": "\(error.map { "\($0)" } ?? "-")"])
                await syncConnectedState(&machine, now: now)
            case .connectFailed(let error):
                agent.updateSnapshot { $0.lastError = "\(error)" }
                logger.debug("MQTT connect attempt failed", metadata: ["error": "\(error)"])
            case .reconnecting(let attempt, let delay):
                logger.debug("MQTT reconnecting", metadata: ["attempt": "\(attempt)", "delay": "\(delay)"])
            }
        }

        func handleMessage(_ m: MQTTMessage, _ machine: inout SenderStateMachine<ContinuousClock.Instant>, now: ContinuousClock.Instant) async {
            if m.topic == topics.ack {
                do {
                    let ack = try SyncCodec.decodeAck(m.payload, expectedDevice: agent.configuration.device)
                    await perform(machine.ackReceived(ack, now: now), &machine)
                } catch {
                    logger.warning("ignoring an undecodable ack", metadata: ["error": "\(error)"])
                }
            } else if m.topic == topics.request || m.topic == topics.broadcast {
                // Commands are answered one at a time, in arrival order, by their own task:
                // a replay waits for this loop to build its batches.
                agent.commandSink.yield(m)
            }
        }

        func perform(_ actions: [SenderStateMachine<ContinuousClock.Instant>.Action], _ machine: inout SenderStateMachine<ContinuousClock.Instant>) async {
            var queue = actions[...]
            while let action = queue.popFirst() {
                logger.trace("sender action", metadata: ["action": "\(action)"])
                switch action {
                case .loadRecords(let from, let through, let limit):
                    do {
                        let entries = try await agent.log.entries(in: SequenceRange(checked: from, through), limit: limit)
                        var records: [LogRecord] = []
                        var losses: [LossMarker] = []
                        for e in entries {
                            switch e {
                            case .record(let r): records.append(r)
                            case .loss(let l): losses.append(l)
                            }
                        }
                        let retainedFrom = try await agent.log.retainedFrom()
                        queue.append(contentsOf: machine.recordsLoaded(
                            from: from, records: records, losses: losses, retainedFrom: retainedFrom,
                            nowUnixMilliseconds: WallClock.now().unixMilliseconds, now: ContinuousClock.now))
                    } catch {
                        logger.error("cannot read records for a batch", metadata: ["error": "\(error)"])
                    }
                case .publish(let outgoing):
                    let mqtt = self.mqtt, topic = topics.values, sink = agent.eventSink
                    Task(executorPreference: currentTaskExecutorPreference()) {
                        do {
                            try await mqtt.publish(topic, payload: outgoing.payload, qos: .atLeastOnce, retain: false,
                                                   properties: .init(contentType: outgoing.encoding.contentType))
                            sink.yield(.published(outgoing, .success(())))
                        } catch let e as MQTTError {
                            sink.yield(.published(outgoing, .failure(e)))
                        } catch {
                            sink.yield(.published(outgoing, .failure(MQTTError(operation: "publish", kind: .library, message: "\(error)"))))
                        }
                    }
                case .persistAcked(let through):
                    do {
                        let before = agent.snapshot.acked
                        let acked = try await agent.log.markAcked(through: through)
                        agent.metrics.acks.increment()
                        agent.metrics.ackedThrough.set(Double(acked.rawValue))
                        logger.debug("acked", metadata: ["through": "\(acked)", "from": "\(before)"])
                    } catch {
                        // Persisting may lag: after a restart the sender resends from the older
                        // pointer and the backend absorbs the duplicates.
                        logger.error("cannot persist the acked pointer", metadata: ["error": "\(error)"])
                    }
                case .armTimer(let at):
                    timerTask?.cancel()
                    let sink = agent.eventSink
                    timerTask = Task(executorPreference: currentTaskExecutorPreference()) {
                        try? await executorSleep(until: at)
                        if !Task.isCancelled { sink.yield(.timer(at)) }
                    }
                case .cancelTimer:
                    timerTask?.cancel()
                    timerTask = nil
                case .replayFinished(let id, let resent, let notRetained):
                    agent.finishReplay(id, .success(ReplayOutcome(resent: resent, notRetained: notRetained)))
                case .reportAnomaly(let text):
                    logger.warning("sync anomaly", metadata: ["detail": "\(text)"])
                }
            }
        }

        /// Publishes the retained status on connect, and when head/acked/measuring changed,
        /// at most every `statusInterval`.
        func maybePublishStatus(_ machine: inout SenderStateMachine<ContinuousClock.Instant>, now: ContinuousClock.Instant, force: Bool) async {
            guard mqttUp else { return }
            let measuring = await agent.settings.switches.measurementEnabled
            let state = (machine.head, machine.acked, measuring)
            if !force {
                if let last = lastStatusState, last == state { return }
                if let at = lastStatusAt, now - at < agent.configuration.statusInterval { return }
            }
            lastStatusAt = now
            lastStatusState = state
            var status = machine.status(atUnixMilliseconds: WallClock.now().unixMilliseconds, measuring: measuring)
            status.dataUsage = agent.metrics.dataBudget.today()
            let mqtt = self.mqtt, topic = topics.status, logger = self.logger
            Task {
                do {
                    try await mqtt.publish(topic, payload: SyncCodec.encode(status), qos: .atLeastOnce, retain: true,
                                           properties: .init(contentType: SyncCodec.contentType))
                } catch {
                    logger.debug("status publish failed", metadata: ["error": "\(error)"])
                }
            }
        }
    }
}

/// Runs `body`, giving up after `timeout`.
func withTimeout<T: Sendable>(_ timeout: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: timeout)
            throw CancellationError()
        }
        defer { group.cancelAll() }
        return try await group.next()!
    }
}
