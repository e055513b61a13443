// The sync agent: the IO shell around the protocol's `DeviceSyncStateMachine`, over MQTT,
// plus commands.
//
// Theory of operation: one owner loop consumes one event stream and is the only code that
// touches the state machine; every decision — when the sender may publish (the connected
// rule: session up, subscribed, `mqtt_sender:enabled` on), what to resend when, when to
// publish the retained status, how a replay command's bounds resolve — is the machine's.
// Events come from small forwarding tasks: the MQTT client's connection events and messages
// (acks, commands), a tick every `mqtt_sender:interval` and right after each append of this
// process's sampler (it reads the log's head and the switches, so records appended by
// another process sharing the log file are picked up too), the machine's timers, the
// answers to SUBSCRIBE and publish, and replay requests from the command handler. The loop
// feeds each event to the machine and performs the actions it returns: load records from
// the log, publish a batch (QoS 1; the PUBACK only counts a metric, it proves nothing about
// storage), persist the acked pointer in the log (which trims by retention), subscribe,
// publish a status, arm or cancel a timer, answer a replay.
//
// The MQTT session is persistent (clean start false, a session expiry), so commands sent
// while the device is offline are delivered when it is back; a retained status says online,
// and the last will (retained `offline`) says when the device vanished. Reconnects are
// quick (at most 2 s apart) so a healed network is noticed at once. Sampling never waits
// for any of this: the agent only reads the log. The agent runs under a `SupervisedService`:
// if it fails (a configuration the MQTT library refuses, say) it reports why and is started
// again; the command handler's durable id file is opened on first use and, while it cannot
// be, commands are answered with an error saying so.
import FieldlogCore
import Threading
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
    /// The session's rules: sender window and resends, status interval, subscribe retries.
    public var sync: DeviceSyncConfiguration
    /// A batch goes out at most this often when the sender is woken by appends (the readings
    /// of that time go in one batch). Default 50 ms: the latency it adds is far below the
    /// sender interval, and at 100 readings/s it sends ~20 batches/s instead of 100.
    public var appendCoalescing: Duration = .milliseconds(50)

    public init(device: DeviceID, identity: DeviceIdentity, mqtt: MQTTConfiguration, topics: DeviceConfiguration.Topics, sync: DeviceSyncConfiguration) {
        self.device = device
        self.identity = identity
        self.mqtt = mqtt
        self.topics = topics
        self.sync = sync
    }
}

/// A snapshot of the agent's state for /status.
public struct SyncSnapshot: Sendable {
    public var connected = false
    public var subscribed = false
    public var senderEnabled = true
    public var head = SequenceNumber.zero
    public var acked = SequenceNumber.zero
    public var inFlight: [SequenceRange] = []
    public var lastError: String?
    public var connects = 0
}

/// The sync agent service (see the theory of operation above).
public final class SyncAgent: Service, @unchecked Sendable {
    // @unchecked: `snapshotValue`, `eventSink` and `commandHandler` are guarded by `lock`; the
    // rest is immutable or owned by the run loop.
    public let configuration: SyncAgentConfiguration
    let log: DeviceLog
    let settings: RuntimeSettings
    let metrics: DeviceMetrics
    let logger: Logger
    let mqttHealth: ComponentHealth.Reporter?
    let commandsHealth: ComponentHealth.Reporter?
    /// Opens the command handler (its durable id file); called until it works.
    private let makeCommandHandler: @Sendable () throws -> CommandHandler
    private let lock = Lock()
    private var snapshotValue = SyncSnapshot()
    /// The running loop's event sink; nil while the agent does not run.
    private var eventSink: AsyncStream<Event>.Continuation?
    private var commandHandler: CommandHandler?

    typealias Machine = DeviceSyncStateMachine<ContinuousClock.Instant>

    enum Event: Sendable {
        case mqtt(MQTTConnectionEvent)
        case message(MQTTMessage)
        case tick
        case timer(Machine.Timer, ContinuousClock.Instant)
        case subscribeAnswered(connection: Int, error: (any Error)?)
        case replay(ReplayQuery, CheckedContinuation<ReplayOutcome, any Error>)
        case published(OutgoingBatch, Result<Void, MQTTError>)
        case shutdown
    }

    public init(configuration: SyncAgentConfiguration, log: DeviceLog, settings: RuntimeSettings, metrics: DeviceMetrics, logger: Logger,
                health: ComponentHealth? = nil, makeCommandHandler: @escaping @Sendable () throws -> CommandHandler) {
        self.configuration = configuration
        self.log = log
        self.settings = settings
        self.metrics = metrics
        self.logger = logger
        self.mqttHealth = health?.reporter("mqtt")
        self.commandsHealth = health?.reporter("commands")
        self.makeCommandHandler = makeCommandHandler
    }

    public var snapshot: SyncSnapshot { lock.withLock { snapshotValue } }

    /// Closes the running loop's event stream: later `replay` calls are refused at once.
    private func endEvents() {
        let sink = lock.withLock { () -> AsyncStream<Event>.Continuation? in
            defer { eventSink = nil }
            return eventSink
        }
        sink?.finish()
    }

    var brokerAddress: String { "\(configuration.mqtt.host):\(configuration.mqtt.port)" }

    private func updateSnapshot(_ body: (inout SyncSnapshot) -> Void) {
        lock.withLock { body(&snapshotValue) }
    }

    // MARK: replay (called by the command handler)

    /// Republishes the requested range as replay batches and waits until the session has built
    /// them all (or refused the request).
    public func replay(_ request: ReplayRequest) async throws -> ReplayOutcome {
        let query = ReplayQuery(requestID: request.requestID, from: request.from, to: request.to, count: request.count)
        return try await withCheckedThrowingContinuation { c in
            let sink = lock.withLock { eventSink }
            guard let sink, case .enqueued = sink.yield(.replay(query, c)) else {
                c.resume(throwing: CommandFailure(code: .failed, message: "the sync agent is not running; ask again later"))
                return
            }
        }
    }

    // MARK: commands

    /// The command handler, opened on first use; nil (and reported) while it cannot be.
    private func openCommandHandler() -> Result<CommandHandler, any Error> {
        if let h = lock.withLock({ commandHandler }) { return .success(h) }
        do {
            let h = try makeCommandHandler()
            lock.withLock { commandHandler = h }
            commandsHealth?.running()
            return .success(h)
        } catch {
            commandsHealth?.degraded("cannot open the command-id file: \(error); commands are answered with an error")
            logger.error("commands unavailable: cannot open the command-id file; answering commands with an error", metadata: ["error": "\(error)"])
            return .failure(error)
        }
    }

    /// Answers one command message: executes it, or says why commands cannot run now.
    private func handleCommand(_ m: MQTTMessage, mqtt: MQTTClient) async {
        var payload: [UInt8]
        var after: (@Sendable () async -> Void)?
        switch openCommandHandler() {
        case .success(let handler):
            let result = await handler.handle(m.payload)
            if let status = result.response?.status {
                // spec §3.5: `status` publishes a fresh status and replies with it.
                _ = try? await mqtt.publish(configuration.topics.status, payload: SyncCodec.encode(status), qos: .atLeastOnce,
                                            retain: true, properties: .init(contentType: SyncCodec.contentType))
            }
            payload = result.payload
            after = result.afterResponse
        case .failure(let error):
            metrics.commandErrors.increment()
            let command = try? SyncCodec.decodeCommand(m.payload)
            payload = SyncCodec.encode(CommandResponse(
                requestID: command?.requestID, command: command?.name ?? "unknown", error: .failed,
                message: "the device cannot record command ids durably (\(error)); not executed, ask again later"))
        }
        do {
            try await mqtt.publish(configuration.topics.response, payload: payload, qos: .atLeastOnce, retain: false,
                                   properties: .init(contentType: SyncCodec.contentType))
        } catch {
            logger.warning("cannot publish command response", metadata: ["error": "\(error)"])
        }
        await after?()
    }

    // MARK: run

    public func run() async throws {
        let mqtt = try MQTTClient(configuration: configuration.mqtt, logger: logger)
        mqtt.observeTraffic(metrics.dataBudget)
        logger.info("sync agent starting", metadata: [
            "broker": "\(configuration.mqtt.host):\(configuration.mqtt.port)", "client": "\(configuration.mqtt.clientID)",
            "batch_topic": "\(configuration.topics.values)"])
        let status = try await log.status()
        let switches = await settings.switches
        let machine0 = Machine(device: configuration.device, epoch: log.epoch, head: status.head, acked: status.ackedThrough,
                               senderEnabled: switches.senderEnabled, configuration: configuration.sync)
        updateSnapshot {
            $0 = SyncSnapshot()
            $0.head = status.head
            $0.acked = status.ackedThrough
            $0.senderEnabled = switches.senderEnabled
        }
        metrics.head.set(Double(status.head.rawValue))
        metrics.ackedThrough.set(Double(status.ackedThrough.rawValue))
        metrics.backlog.set(Double(status.backlog))
        mqttHealth?.degraded("connecting to \(brokerAddress)")

        let (events, sink) = AsyncStream.makeStream(of: Event.self, bufferingPolicy: .unbounded)
        // Bounded: a flood of commands must not grow memory without limit (QoS 1 redelivers).
        let (commandMessages, commandSink) = AsyncStream.makeStream(of: MQTTMessage.self, bufferingPolicy: .bufferingOldest(256))
        lock.withLock { eventSink = sink }
        _ = openCommandHandler()  // says at once whether commands can run
        let settings = self.settings
        let loop = OwnerLoop(agent: self, mqtt: mqtt, sink: sink, commandSink: commandSink, machine: machine0)

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
                        if attempt == 1 || attempt % 30 == 0 {
                            self.logger.warning("MQTT connect failed; sampling goes on, retrying", metadata: ["error": "\(error)", "attempt": "\(attempt)"])
                        }
                        self.updateSnapshot { $0.lastError = "\(error)" }
                        self.mqttHealth?.degraded("cannot connect to \(self.brokerAddress): \(error)")
                        try? await Task.sleep(for: backoff.delay(attempt: attempt, randomUnit: Double.random(in: 0..<1)))
                    }
                }
                return false
            }
            group.addTask {
                // Commands are answered one at a time, in arrival order: a replay waits for the
                // loop to build its batches.
                for await m in commandMessages { await self.handleCommand(m, mqtt: mqtt) }
                return false
            }
            group.addTask {
                await loop.run(events)
                return true
            }
            // Graceful shutdown: the loop answers open replays, says offline, closes its event
            // stream and ends when the stream is drained.
            await withGracefulShutdownHandler {
                while let isLoop = await group.next() {
                    if isLoop { break }
                }
            } onGracefulShutdown: {
                sink.yield(.shutdown)
            }
            group.cancelAll()
        }
        endEvents()
        commandSink.finish()
        await mqtt.disconnect()
        updateSnapshot { $0.connected = false; $0.subscribed = false }
        metrics.mqttConnected.set(Double(0))
        logger.info("sync agent stopped")
    }

    /// The owner loop: the only code that touches the state machine.
    final class OwnerLoop: @unchecked Sendable {
        // @unchecked: used by exactly one task (the loop).
        let agent: SyncAgent
        let mqtt: MQTTClient
        let sink: AsyncStream<Event>.Continuation
        let commandSink: AsyncStream<MQTTMessage>.Continuation
        var machine: Machine
        var timers: [Machine.Timer: Task<Void, Never>] = [:]
        var replayWaiters: [Machine.ReplayTicket: CheckedContinuation<ReplayOutcome, any Error>] = [:]
        var nextTicket: Machine.ReplayTicket = 0
        var shuttingDown = false

        init(agent: SyncAgent, mqtt: MQTTClient, sink: AsyncStream<Event>.Continuation,
             commandSink: AsyncStream<MQTTMessage>.Continuation, machine: Machine) {
            self.agent = agent
            self.mqtt = mqtt
            self.sink = sink
            self.commandSink = commandSink
            self.machine = machine
        }

        var logger: Logger { agent.logger }
        var topics: DeviceConfiguration.Topics { agent.configuration.topics }
        var wallMs: Int64 { WallClock.now().unixMilliseconds }

        func run(_ events: AsyncStream<Event>) async {
            for await event in events {
                let now = ContinuousClock.now
                switch event {
                case .shutdown where !shuttingDown:
                    shuttingDown = true
                    await perform(machine.shuttingDown(wallMilliseconds: wallMs))
                    for t in timers.values { t.cancel() }
                    for (_, c) in replayWaiters { c.resume(throwing: CommandFailure(code: .failed, message: "the device is shutting down")) }
                    replayWaiters = [:]
                    // No new events; what is still buffered is drained below, so a replay that
                    // raced the shutdown is answered too (its command waits for it).
                    agent.endEvents()
                    continue
                case _ where shuttingDown:
                    if case .replay(_, let c) = event { c.resume(throwing: CommandFailure(code: .failed, message: "the device is shutting down")) }
                    continue
                case .shutdown:
                    continue
                case .mqtt(let e):
                    await handleConnection(e, now: now)
                case .message(let m):
                    if m.topic == topics.ack {
                        await perform(machine.ackPayloadReceived(m.payload, now: now))
                    } else if m.topic == topics.request || m.topic == topics.broadcast {
                        commandSink.yield(m)
                    }
                case .tick:
                    let switches = await agent.settings.switches
                    if switches.senderEnabled != machine.isSenderEnabled {
                        logger.info(switches.senderEnabled ? "sender enabled (mqtt_sender:enabled)" : "sender paused (mqtt_sender:enabled is 0)")
                        await perform(machine.senderSwitched(enabled: switches.senderEnabled, now: now))
                    }
                    do {
                        let head = try await agent.log.head()
                        await perform(machine.headObserved(head, measuring: switches.measurementEnabled, now: now, wallMilliseconds: wallMs))
                    } catch {
                        logger.error("cannot read the log head", metadata: ["error": "\(error)"])
                    }
                case .timer(let kind, let at):
                    await perform(machine.timerFired(kind, now: max(now, at)))
                case .subscribeAnswered(let connection, let error):
                    if let error {
                        logger.warning("subscribe failed; retrying", metadata: ["error": "\(error)"])
                        agent.mqttHealth?.degraded("subscribe failed: \(error)")
                        await perform(machine.subscribeFailed(connection: connection, now: now))
                    } else {
                        await perform(machine.subscribed(connection: connection, now: now))
                        if machine.isSubscribed { agent.mqttHealth?.running() }
                    }
                case .replay(let query, let continuation):
                    nextTicket += 1
                    replayWaiters[nextTicket] = continuation
                    do {
                        let status = try await agent.log.status()
                        await perform(machine.replayRequested(query, ticket: nextTicket, oldestRetained: status.oldestRetained,
                                                              logHead: status.head, now: now))
                    } catch {
                        replayWaiters.removeValue(forKey: nextTicket)?.resume(throwing: error)
                    }
                case .published(let batch, let result):
                    switch result {
                    case .success:
                        agent.metrics.batchesSent.increment()
                        if batch.resendCount > 0 { agent.metrics.resends.increment() }
                        await perform(machine.publishConfirmed(batch.batch.range))
                    case .failure(let error):
                        // The session resends on its timer or on reconnect; nothing to do here.
                        logger.debug("batch publish not confirmed", metadata: ["range": "\(batch.batch.range)", "error": "\(error)"])
                    }
                }
                let sender = machine.sender
                agent.updateSnapshot {
                    $0.head = sender.head
                    $0.acked = sender.acked
                    $0.inFlight = sender.inFlightRanges
                    $0.subscribed = self.machine.isSubscribed
                    $0.senderEnabled = self.machine.isSenderEnabled
                }
                agent.metrics.backlog.set(Double(sender.backlog))
                agent.metrics.head.set(Double(sender.head.rawValue))
            }
        }

        func handleConnection(_ e: MQTTConnectionEvent, now: ContinuousClock.Instant) async {
            switch e {
            case .connected(let sessionPresent):
                let n = agent.snapshot.connects
                if n > 0 { agent.metrics.reconnects.increment() }
                agent.metrics.mqttConnected.set(Double(1))
                logger.info("MQTT connected", metadata: ["session_present": "\(sessionPresent)", "connects": "\(n + 1)"])
                agent.updateSnapshot { $0.connected = true; $0.connects += 1; $0.lastError = nil }
                await perform(machine.brokerConnected(now: now, wallMilliseconds: wallMs))
            case .disconnected(let error):
                agent.metrics.mqttConnected.set(Double(0))
                agent.updateSnapshot { $0.connected = false; $0.lastError = error.map { "\($0)" } }
                agent.mqttHealth?.degraded("disconnected from the broker: \(error.map { "\($0)" } ?? "-"); reconnecting")
                logger.warning("MQTT disconnected; sampling goes on, unacked records are resent after reconnect",
                               metadata: ["error": "\(error.map { "\($0)" } ?? "-")"])
                await perform(machine.brokerDisconnected(now: now))
            case .connectFailed(let error):
                agent.updateSnapshot { $0.lastError = "\(error)" }
                agent.mqttHealth?.degraded("cannot connect to the broker: \(error); retrying")
                logger.debug("MQTT connect attempt failed", metadata: ["error": "\(error)"])
            case .reconnecting(let attempt, let delay):
                logger.debug("MQTT reconnecting", metadata: ["attempt": "\(attempt)", "delay": "\(delay)"])
            }
        }

        func perform(_ actions: [Machine.Action]) async {
            var queue = actions[...]
            while let action = queue.popFirst() {
                logger.trace("sync action", metadata: ["action": "\(action)"])
                switch action {
                case .subscribe(let connection):
                    let mqtt = self.mqtt, sink = self.sink, filters = [topics.ack, topics.request, topics.broadcast]
                    Task(executorPreference: currentTaskExecutorPreference()) {
                        do {
                            for filter in filters { try await mqtt.subscribe(filter, qos: .atLeastOnce) }
                            sink.yield(.subscribeAnswered(connection: connection, error: nil))
                        } catch {
                            sink.yield(.subscribeAnswered(connection: connection, error: error))
                        }
                    }
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
                            nowUnixMilliseconds: wallMs, now: ContinuousClock.now))
                    } catch {
                        logger.error("cannot read records for a batch", metadata: ["error": "\(error)"])
                    }
                case .publishBatch(let outgoing):
                    let mqtt = self.mqtt, topic = topics.values, sink = self.sink
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
                        let acked = try await agent.log.markAcked(through: through)
                        agent.metrics.acks.increment()
                        agent.metrics.ackedThrough.set(Double(acked.rawValue))
                        logger.debug("acked", metadata: ["through": "\(acked)"])
                    } catch {
                        // Persisting may lag: after a restart the sender resends from the older
                        // pointer and the backend absorbs the duplicates.
                        logger.error("cannot persist the acked pointer", metadata: ["error": "\(error)"])
                    }
                case .publishStatus(var built):
                    // The day's MQTT data goes with the online status (spec §3.4).
                    if built.state == .online { built.dataUsage = agent.metrics.dataBudget.today() }
                    let status = built, mqtt = self.mqtt, topic = topics.status, logger = self.logger
                    let publish: @Sendable () async throws -> Void = {
                        try await mqtt.publish(topic, payload: SyncCodec.encode(status), qos: .atLeastOnce, retain: true,
                                               properties: .init(contentType: SyncCodec.contentType))
                    }
                    if shuttingDown {
                        // The offline status goes out before the disconnect, but never holds shutdown up.
                        _ = try? await withTimeout(.seconds(2), publish)
                    } else {
                        Task(executorPreference: currentTaskExecutorPreference()) {
                            do { try await publish() } catch { logger.debug("status publish failed", metadata: ["error": "\(error)"]) }
                        }
                    }
                case .armTimer(let kind, let at):
                    timers[kind]?.cancel()
                    let sink = self.sink
                    timers[kind] = Task(executorPreference: currentTaskExecutorPreference()) {
                        try? await executorSleep(until: at)
                        if !Task.isCancelled { sink.yield(.timer(kind, at)) }
                    }
                case .cancelTimer(let kind):
                    timers.removeValue(forKey: kind)?.cancel()
                case .answerReplay(let ticket, let answer):
                    guard let c = replayWaiters.removeValue(forKey: ticket) else { continue }
                    switch answer {
                    case .finished(let resent, let notRetained): c.resume(returning: ReplayOutcome(resent: resent, notRetained: notRetained))
                    case .refused(let why): c.resume(throwing: CommandFailure(code: .failed, message: why))
                    }
                case .reportAnomaly(let text):
                    logger.warning("sync anomaly", metadata: ["detail": "\(text)"])
                }
            }
        }
    }
}
