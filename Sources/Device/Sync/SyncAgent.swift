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
//
// This file: the service (the event sources, started as child tasks of `run`). The owner loop
// is SyncOwnerLoop.swift, commands and replays SyncAgentCommands.swift.
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
    var appendCoalescing: Duration = .milliseconds(50)

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
final class SyncAgent: Service, @unchecked Sendable {
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
    let makeCommandHandler: @Sendable () throws -> CommandHandler
    let lock = Lock()
    var snapshotValue = SyncSnapshot()
    /// The running loop's event sink; nil while the agent does not run.
    var eventSink: AsyncStream<Event>.Continuation?
    var commandHandler: CommandHandler?

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
    func endEvents() {
        let sink = lock.withLock { () -> AsyncStream<Event>.Continuation? in
            defer { eventSink = nil }
            return eventSink
        }
        sink?.finish()
    }

    var brokerAddress: String { "\(configuration.mqtt.host):\(configuration.mqtt.port)" }

    func updateSnapshot(_ body: (inout SyncSnapshot) -> Void) {
        lock.withLock { body(&snapshotValue) }
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
                // Ends without error when the client was closed, or on cancellation.
                let backoff = ReconnectBackoff(policy: self.configuration.mqtt.reconnect)
                let retrying = Retrying { attempt in backoff.delay(attempt: attempt, randomUnit: Double.random(in: 0..<1)) }
                _ = try? await retrying.run(if: { ($0 as? MQTTError)?.kind != .closed }, failed: { error, attempt, _ in
                    if attempt == 1 || attempt % 30 == 0 {
                        self.logger.warning("MQTT connect failed; sampling goes on, retrying", metadata: ["error": "\(error)", "attempt": "\(attempt)"])
                    }
                    self.updateSnapshot { $0.lastError = "\(error)" }
                    self.mqttHealth?.degraded("cannot connect to \(self.brokerAddress): \(error)")
                }) { try await mqtt.connect() }
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
}
