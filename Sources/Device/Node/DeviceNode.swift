// The device node: builds the components from the configuration and runs them as one
// ServiceGroup.
//
// Theory of operation: `DeviceNode.services(for:)` opens the log first (everything else
// reads or appends it), then makes the services in dependency order: the log keeper (closes
// the log last on shutdown), the switch poller and the mirror (Redis), the status server,
// the sync agent (MQTT, commands), the button, and the sampler last. swift-service-lifecycle
// starts them in that order and shuts them down in reverse on SIGTERM/SIGINT: the sampler
// stops first, so no append is cut off, and the log is closed after everyone else.
//
// Only the log may stop measuring: a log that cannot be opened ends the process with the
// reason, and a full disk under quota `stop` makes the sampler refuse appends (logged,
// counted, shown) while it keeps trying. Every other component runs under a
// `SupervisedService` (Supervision.swift): when it fails — a status port someone else holds,
// a broker or Redis that is down, a missing GPIO line, an unreadable command-id file — it
// says what is wrong (log, /status `components`, /metrics `component_up`) and is retried
// with backoff, and it can never end the ServiceGroup (which ends when any service ends).
// `fieldlog-device sample`, `button` and `sync` run a subset, as the seed's separate
// containers did; several such processes may share one log file.
import FieldlogCore
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import Log
import Logging
import MQTT
import Redis
import ServiceLifecycle
import Sync

/// Which components to run.
public struct ComponentSet: OptionSet, Sendable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    public static let sampler = ComponentSet(rawValue: 1)
    public static let button = ComponentSet(rawValue: 2)
    public static let sync = ComponentSet(rawValue: 4)
    public static let status = ComponentSet(rawValue: 8)
    public static let all: ComponentSet = [.sampler, .button, .sync, .status]
}

/// Keeps the log open while the group runs; closes it when the group shuts down (last).
struct LogKeeper: Service {
    let log: DeviceLog
    let logger: Logger
    func run() async throws {
        try? await gracefulShutdown()
        await log.close()
        logger.info("log closed", metadata: ["path": "\(log.path)"])
    }
}

/// Runs the log's Redis mirror (stream `measurement:values`) until shutdown.
struct MirrorService: Service {
    let mirror: HotStateMirror
    func run() async throws {
        await cancelWhenGracefulShutdown { await mirror.run() }
    }
}

/// The node's shared state, seen by commands and the status server.
public final class NodeEnvironment: CommandEnvironment, StatusProvider, @unchecked Sendable {
    // @unchecked: `agent` is set once before the group starts; everything else is immutable.
    public let configuration: DeviceConfiguration
    public let log: DeviceLog
    public let settings: RuntimeSettings
    public let metrics: DeviceMetrics
    public let recent: RecentReadings
    public let components: ComponentSet
    /// How each supervised component is doing.
    public let health: ComponentHealth
    var agent: SyncAgent?
    let startedAt = WallClock.now()

    init(configuration: DeviceConfiguration, log: DeviceLog, settings: RuntimeSettings, metrics: DeviceMetrics,
         recent: RecentReadings, components: ComponentSet, health: ComponentHealth) {
        self.configuration = configuration
        self.log = log
        self.settings = settings
        self.metrics = metrics
        self.recent = recent
        self.components = components
        self.health = health
    }

    public var rebootCommand: [String] { configuration.commands.rebootCommand }

    public func logFacts() async throws -> LogFacts {
        let head = try await log.head()
        let acked = try await log.ackedThrough()
        return LogFacts(deviceID: log.deviceID, epoch: log.epoch, head: head, ackedThrough: acked)
    }

    public func replay(_ request: ReplayQuery) async throws -> ReplayOutcome {
        guard let agent else { throw CommandFailure(code: .failed, message: "the sync agent does not run in this process") }
        return try await agent.replay(request)
    }

    public func currentStatus() async throws -> Status {
        let facts = try await logFacts()
        return Status(device: facts.deviceID, state: .online, epoch: facts.epoch, head: facts.head, acked: facts.ackedThrough,
                      atUnixMilliseconds: WallClock.now().unixMilliseconds, measuring: await settings.switches.measurementEnabled,
                      dataUsage: agent == nil ? nil : metrics.dataBudget.today())
    }

    public func recentReadings() async -> [RecentReadings.Entry] { await recent.snapshot() }

    public func statusJSON() async -> JSONValue {
        var m: [(String, JSONValue)] = [
            ("device", .string(log.deviceID.rawValue)),
            ("epoch", .string(log.epoch.hex)),
        ]
        do {
            let s = try await log.status()
            m += [("head", .integer(Int64(s.head.rawValue))), ("acked", .integer(Int64(s.ackedThrough.rawValue))),
                  ("backlog", .integer(Int64(s.backlog))), ("retained", .integer(Int64(s.retained))),
                  ("oldest_retained", s.oldestRetained.map { .integer(Int64($0.rawValue)) } ?? .null),
                  ("log_bytes", .integer(s.fileBytes + s.walBytes)),
                  ("loss_markers", .array(s.lossMarkers.map { l in
                      .object([("first", .integer(Int64(l.range.first.rawValue))), ("last", .integer(Int64(l.range.last.rawValue))),
                               ("reason", .string(l.reason.rawValue)), ("detail", .string(l.detail))])
                  }))]
            metrics.backlog.set(Double(s.backlog))
        } catch {
            m.append(("log_error", .string("\(error)")))
        }
        let sw = await settings.switches
        m += [("measuring", .bool(sw.measurementEnabled)), ("interval_seconds", .string(formatSeconds(sw.measurementInterval))),
              ("sender_enabled", .bool(sw.senderEnabled)), ("sender_interval_seconds", .string(formatSeconds(sw.senderInterval))),
              ("redis_available", .bool(await settings.redisAvailable))]
        if let agent {
            let a = agent.snapshot
            m += [("mqtt_connected", .bool(a.connected)), ("mqtt_subscribed", .bool(a.subscribed)), ("mqtt_connects", .integer(Int64(a.connects))),
                  ("in_flight", .array(a.inFlight.map { .array([.integer(Int64($0.first.rawValue)), .integer(Int64($0.last.rawValue))]) })),
                  ("mqtt_last_error", a.lastError.map { .string($0) } ?? .null)]
            let u = metrics.dataBudget.today()
            m += [("data_day", .string(u.dayText)), ("data_sent_bytes", .integer(u.sentBytes)),
                  ("data_received_bytes", .integer(u.receivedBytes))]
        }
        if let e = await recent.lastError { m.append(("last_sampling_problem", .string(e))) }
        if let gap = await recent.appendGapMax { m.append(("append_gap_max_seconds", .double(gap.inSeconds))) }
        m.append(("components", health.json()))
        m.append(("clock_synchronized", .bool(WallClock.isSynchronized())))
        return .object(m)
    }
}

public enum DeviceNode {
    /// The log settings from the device configuration.
    static func logConfiguration(_ c: DeviceConfiguration) -> LogConfiguration {
        var l = LogConfiguration(durability: c.log.durability == .full ? .full : .normal)
        l.retentionMaxAge = c.log.retentionSeconds == 0 ? .zero : .seconds(c.log.retentionSeconds)
        l.retentionMaxCount = Int(c.log.retentionRecords)
        l.maxBytes = c.log.maxBytes == 0 ? nil : c.log.maxBytes
        l.quotaPolicy = c.log.quotaPolicy == .stop ? .stop : .dropOldest
        return l
    }

    /// The MQTT client settings: persistent session (clean start false, 7 days' expiry) so
    /// commands reach an offline device, the retained `offline` status as last will.
    static func mqttConfiguration(_ c: DeviceConfiguration) -> MQTTConfiguration {
        let will = MQTTConfiguration.Will(topic: c.mqtt.topics.status, payload: SyncCodec.encode(Status.lastWill(device: c.identity.deviceID)),
                                          qos: .atLeastOnce, retain: true, properties: .init(contentType: SyncCodec.contentType))
        var tls: MQTTConfiguration.TLS? = nil
        if c.mqtt.tlsEnabled {
            tls = .init(caFile: c.mqtt.tlsCACerts ?? "/etc/ssl/certs/ca-certificates.crt", certificateFile: c.mqtt.tlsCertFile,
                        keyFile: c.mqtt.tlsKeyFile, insecureSkipHostnameCheck: c.mqtt.tlsInsecure)
        }
        // Reconnects at most 2 s apart (1–2 s with the jitter): a healed network or a restarted
        // broker is noticed within seconds, and a refused TCP connect costs the broker little.
        return MQTTConfiguration(host: c.mqtt.host, port: c.mqtt.port, clientID: c.mqtt.clientID, cleanStart: false,
                                 username: c.mqtt.username, password: c.mqtt.password, keepAlive: .seconds(c.mqtt.keepAliveSeconds),
                                 connectTimeout: .seconds(5), tls: tls, will: will, sessionExpiry: .seconds(7 * 24 * 3600),
                                 reconnect: MQTTReconnectPolicy(minDelay: .milliseconds(250), maxDelay: .seconds(2), jitter: 0.5))
    }

    /// The sync session's rules from the configuration (spec §4.1).
    public static func syncConfiguration(_ c: DeviceConfiguration) -> DeviceSyncConfiguration {
        var s = DeviceSyncConfiguration()
        s.sender.windowBatches = c.sync.window
        s.sender.maxRecordsPerBatch = min(c.sync.batchMaxRecords, ProtocolLimits.maxRecordsPerBatch)
        s.sender.maxBatchBytes = c.sync.batchMaxBytes
        s.sender.resendDelayInitial = c.sync.resendTimeout
        s.sender.resendDelayMax = max(c.sync.resendTimeout, .seconds(300))
        // The probe: one batch at most every 4 s (or the resend timeout, if longer) while the
        // backend does not answer, so its return is noticed within seconds.
        s.sender.probeDelayMax = max(c.sync.resendTimeout, .seconds(4))
        s.sender.encoding = c.sync.encoding
        return s
    }

    /// Delays between restarts of a failed component: 1 s doubling to 15 s, with jitter.
    static let componentRetry = MQTTReconnectPolicy(minDelay: .seconds(1), maxDelay: .seconds(15), jitter: 0.3)

    /// Opens the log and builds the services for `components`, in start order.
    public static func services(for c: DeviceConfiguration, components: ComponentSet, logger: Logger) async throws -> (services: [any Service], environment: NodeEnvironment) {
        let dir = c.log.path.lastIndex(of: "/").map { String(c.log.path[..<$0]) } ?? ""
        if !dir.isEmpty && !FileManager.default.fileExists(atPath: dir) {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        }
        let log = try await DeviceLog.open(path: c.log.path, device: c.identity.deviceID, configuration: logConfiguration(c),
                                           logger: logger)
        logger.info("log open", metadata: ["path": "\(c.log.path)", "device": "\(log.deviceID)", "epoch": "\(log.epoch)",
                                           "durability": "\(c.log.durability.rawValue)"])
        let metrics = DeviceMetrics()
        let settings = RuntimeSettings(defaults: DeviceSwitches(
            measurementEnabled: c.sampling.enabled, measurementInterval: c.sampling.interval,
            senderEnabled: c.sync.enabled, senderInterval: c.sync.interval))
        let recent = RecentReadings()
        let health = ComponentHealth(metrics: metrics)
        let env = NodeEnvironment(configuration: c, log: log, settings: settings, metrics: metrics, recent: recent,
                                  components: components, health: health)
        func supervised(_ component: String, retry: MQTTReconnectPolicy = componentRetry,
                        _ body: @escaping @Sendable (ComponentHealth.Reporter) async throws -> Void) -> SupervisedService {
            SupervisedService(health.reporter(component), retry: retry, logger: logger, body: body)
        }

        var services: [any Service] = [LogKeeper(log: log, logger: logger)]
        if c.redis.enabled {
            let rc = RedisConfiguration(host: c.redis.host, port: c.redis.port, connectTimeout: .seconds(1), commandTimeout: .seconds(2),
                                        database: c.redis.database)
            services.append(supervised("redis_switches") { reporter in
                try await SwitchPoller(redis: rc, settings: settings, metrics: metrics, logger: logger, health: reporter).run()
            })
            if components.contains(.sampler) {
                // The process that samples also mirrors its log into the stream measurement:values.
                var mirrorConfiguration = HotStateConfiguration(redis: rc)
                mirrorConfiguration.streamMaxLength = c.redis.streamMaxLength
                let hc = mirrorConfiguration
                services.append(supervised("redis_mirror") { reporter in
                    reporter.running()
                    try await MirrorService(mirror: HotStateMirror(log: log, configuration: hc, logger: logger)).run()
                })
            }
        }
        if components.contains(.status) && c.status.port != 0 {
            let host = c.status.host, port = c.status.port
            services.append(supervised("status_server") { reporter in
                try await StatusServer(env, configuration: StatusServerConfiguration(host: host, port: port), logger: logger,
                                       onServerRunning: { _ in reporter.running() }).run()
            })
        }
        if components.contains(.sync) && c.mqtt.enabled {
            let seenPath = c.log.path + ".commands", seenCapacity = c.commands.seenIDsMax
            let agent = SyncAgent(
                configuration: SyncAgentConfiguration(
                    device: c.identity.deviceID,
                    identity: DeviceIdentity(deviceType: c.identity.deviceType, appID: c.identity.appID, appName: c.identity.appName),
                    mqtt: mqttConfiguration(c), topics: c.mqtt.topics, sync: syncConfiguration(c)),
                log: log, settings: settings, metrics: metrics, logger: logger, health: health,
                makeCommandHandler: {
                    CommandHandler(environment: env, seen: try SeenCommands(path: seenPath, capacity: seenCapacity), metrics: metrics, logger: logger)
                })
            env.agent = agent
            // The agent reports its own state under "mqtt" (and "commands"); the supervisor's
            // failures land on the same entry.
            services.append(supervised("mqtt") { _ in try await agent.run() })
        }
        if components.contains(.button) && c.button.enabled {
            // Without GPIO hardware this fails every time: retried at most once a minute.
            let retry = MQTTReconnectPolicy(minDelay: .seconds(5), maxDelay: .seconds(60), jitter: 0.3)
            services.append(supervised("button", retry: retry) { reporter in
                try await ButtonService(settings: c.button, runtime: settings, metrics: metrics, logger: logger).run(reporter: reporter)
            })
        }
        if components.contains(.sampler) {
            let panel = SensorPanel(specs: c.sampling.sensors, timeout: c.sampling.sensorTimeout)
            services.append(Sampler(panel: panel, log: log, settings: settings, metrics: metrics, recent: recent, logger: logger))
        }
        return (services, env)
    }

    /// Runs the components until SIGTERM or SIGINT.
    ///
    /// The services' tasks prefer the log's own thread as their executor (`DeviceLog.executor`):
    /// a reading's append, the sender's log reads and its acks then run there without a thread
    /// switch each (at 100 readings/s the switches between Swift's pool and the log's thread
    /// were most of the device's CPU, docs/benchmarks.md). A device does little besides its
    /// log; what waits for the log (an fsync, another process's lock) waits anyway.
    public static func run(_ c: DeviceConfiguration, components: ComponentSet, logger: Logger) async throws {
        let (services, environment) = try await services(for: c, components: components, logger: logger)
        var configuration = ServiceGroupConfiguration(
            services: services.map { .init(service: $0) },
            gracefulShutdownSignals: [.sigterm, .sigint],
            cancellationSignals: [],
            logger: logger)
        // The sync agent's offline status and DISCONNECT take at most 2 s each; anything stuck
        // past the deadline is cancelled, and the log keeper still closes the log.
        configuration.maximumGracefulShutdownDuration = gracefulShutdownDeadline
        let group = ServiceGroup(configuration: configuration)
        try await withTaskExecutorPreference(environment.log.executor) {
            try await group.run()
        }
    }

    /// How long the graceful shutdown (SIGTERM, SIGINT) may take before it is escalated to
    /// cancellation (docs/concurrency.md, "Shutdown").
    public static let gracefulShutdownDeadline: Duration = .seconds(10)
}

extension DeviceLog: ReadingLog {
    public func append(_ values: SensorValues, timestamp: DeviceTimestamp, missingSensors: [String]) async throws -> SequenceNumber {
        try await append(values, timestamp: timestamp, missing: missingSensors)
    }
}
