// The device node: builds the components from the configuration and runs them as one
// ServiceGroup.
//
// Theory of operation: `DeviceNode.services(for:)` opens the log first (everything else
// reads or appends it), then makes the services in dependency order: the log keeper (closes
// the log last on shutdown), the switch poller (Redis), the status server, the sync agent
// (MQTT, commands), the button, and the sampler last. swift-service-lifecycle starts them in
// that order and shuts them down in reverse on SIGTERM/SIGINT: the sampler stops first, so
// no append is cut off, and the log is closed after everyone else. `fieldlog-device sample`,
// `button` and `sync` run a subset, as the seed's separate containers did; several such
// processes may share one log file.
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
    var agent: SyncAgent?
    let startedAt = WallClock.now()

    init(configuration: DeviceConfiguration, log: DeviceLog, settings: RuntimeSettings, metrics: DeviceMetrics,
         recent: RecentReadings, components: ComponentSet) {
        self.configuration = configuration
        self.log = log
        self.settings = settings
        self.metrics = metrics
        self.recent = recent
        self.components = components
    }

    public var rebootCommand: [String] { configuration.commands.rebootCommand }

    public func logFacts() async throws -> LogFacts {
        let head = try await log.head()
        let acked = try await log.ackedThrough()
        return LogFacts(deviceID: log.deviceID, epoch: log.epoch, head: head, ackedThrough: acked)
    }

    public func replay(_ request: ReplayRequest) async throws -> ReplayOutcome {
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
            m += [("mqtt_connected", .bool(a.connected)), ("mqtt_connects", .integer(Int64(a.connects))),
                  ("in_flight", .array(a.inFlight.map { .array([.integer(Int64($0.first.rawValue)), .integer(Int64($0.last.rawValue))]) })),
                  ("mqtt_last_error", a.lastError.map { .string($0) } ?? .null)]
            let u = metrics.dataBudget.today()
            m += [("data_day", .string(u.dayText)), ("data_sent_bytes", .integer(u.sentBytes)),
                  ("data_received_bytes", .integer(u.receivedBytes))]
        }
        if let e = await recent.lastError { m.append(("last_sampling_problem", .string(e))) }
        m.append(("clock_synchronized", .bool(WallClock.isSynchronized())))
        return .object(m)
    }
}

public enum DeviceNode {
    /// The log settings from the device configuration.
    public static func logConfiguration(_ c: DeviceConfiguration) -> LogConfiguration {
        var l = LogConfiguration(durability: c.log.durability == .full ? .full : .normal)
        l.retentionMaxAge = c.log.retentionSeconds == 0 ? .zero : .seconds(c.log.retentionSeconds)
        l.retentionMaxCount = Int(c.log.retentionRecords)
        l.maxBytes = c.log.maxBytes == 0 ? nil : c.log.maxBytes
        l.quotaPolicy = c.log.quotaPolicy == .stop ? .stop : .dropOldest
        return l
    }

    /// The MQTT client settings: persistent session (clean start false, 7 days' expiry) so
    /// commands reach an offline device, the retained `offline` status as last will.
    public static func mqttConfiguration(_ c: DeviceConfiguration) -> MQTTConfiguration {
        let will = MQTTConfiguration.Will(topic: c.mqtt.topics.status, payload: SyncCodec.encode(Status.lastWill(device: c.identity.deviceID)),
                                          qos: .atLeastOnce, retain: true, properties: .init(contentType: SyncCodec.contentType))
        var tls: MQTTConfiguration.TLS? = nil
        if c.mqtt.tlsEnabled {
            tls = .init(caFile: c.mqtt.tlsCACerts ?? "/etc/ssl/certs/ca-certificates.crt", certificateFile: c.mqtt.tlsCertFile,
                        keyFile: c.mqtt.tlsKeyFile, insecureSkipHostnameCheck: c.mqtt.tlsInsecure)
        }
        return MQTTConfiguration(host: c.mqtt.host, port: c.mqtt.port, clientID: c.mqtt.clientID, cleanStart: false,
                                 username: c.mqtt.username, password: c.mqtt.password, keepAlive: .seconds(c.mqtt.keepAliveSeconds),
                                 tls: tls, will: will, sessionExpiry: .seconds(7 * 24 * 3600),
                                 reconnect: MQTTReconnectPolicy(minDelay: .milliseconds(500), maxDelay: .seconds(30), jitter: 0.5))
    }

    public static func senderConfiguration(_ c: DeviceConfiguration) -> SenderConfiguration {
        var s = SenderConfiguration()
        s.windowBatches = c.sync.window
        s.maxRecordsPerBatch = min(c.sync.batchMaxRecords, ProtocolLimits.maxRecordsPerBatch)
        s.maxBatchBytes = c.sync.batchMaxBytes
        s.resendDelayInitial = c.sync.resendTimeout
        s.resendDelayMax = max(c.sync.resendTimeout, .seconds(300))
        s.encoding = c.sync.encoding
        return s
    }

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
        let env = NodeEnvironment(configuration: c, log: log, settings: settings, metrics: metrics, recent: recent, components: components)

        var services: [any Service] = [LogKeeper(log: log, logger: logger)]
        if c.redis.enabled {
            let rc = RedisConfiguration(host: c.redis.host, port: c.redis.port, connectTimeout: .seconds(1), commandTimeout: .seconds(2),
                                        database: c.redis.database)
            services.append(SwitchPoller(redis: rc, settings: settings, metrics: metrics, logger: logger))
            if components.contains(.sampler) {
                // The process that samples also mirrors its log into the stream measurement:values.
                var hc = HotStateConfiguration(redis: rc)
                hc.streamMaxLength = c.redis.streamMaxLength
                services.append(MirrorService(mirror: HotStateMirror(log: log, configuration: hc, logger: logger)))
            }
        }
        if components.contains(.status) && c.status.port != 0 {
            services.append(StatusServer.buildApplication(env, host: c.status.host, port: c.status.port, logger: logger))
        }
        if components.contains(.sync) && c.mqtt.enabled {
            let agent = SyncAgent(
                configuration: SyncAgentConfiguration(
                    device: c.identity.deviceID,
                    identity: DeviceIdentity(deviceType: c.identity.deviceType, appID: c.identity.appID, appName: c.identity.appName),
                    mqtt: mqttConfiguration(c), topics: c.mqtt.topics, sender: senderConfiguration(c)),
                log: log, settings: settings, metrics: metrics, logger: logger)
            let seen = try SeenCommands(path: c.log.path + ".commands", capacity: c.commands.seenIDsMax)
            agent.setCommandHandler(CommandHandler(environment: env, seen: seen, metrics: metrics, logger: logger))
            env.agent = agent
            services.append(agent)
        }
        if components.contains(.button) && c.button.enabled {
            services.append(ButtonService(settings: c.button, runtime: settings, metrics: metrics, logger: logger))
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
        let group = ServiceGroup(configuration: .init(
            services: services.map { .init(service: $0) },
            gracefulShutdownSignals: [.sigterm, .sigint],
            cancellationSignals: [],
            logger: logger))
        try await withTaskExecutorPreference(environment.log.executor) {
            try await group.run()
        }
    }
}

extension DeviceLog: ReadingLog {
    public func append(_ values: SensorValues, timestamp: DeviceTimestamp, missingSensors: [String]) async throws -> SequenceNumber {
        try await append(values, timestamp: timestamp, missing: missingSensors)
    }
}
