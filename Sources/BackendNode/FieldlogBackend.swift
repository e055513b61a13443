// `fieldlog-backend`: the command line. Thin: parse, load configuration, bootstrap logging,
// hand over to the services and functions of the other files.
import ArgumentParser
import Audit
import BackendStore
import FieldlogCore
import Threading
import Foundation
import Ingest
import Logging
import MariaDB
import ServiceLifecycle
import Settings
import WebAdmin

/// `fieldlog-backend`: ingest, audit and replay into MariaDB.
@main
struct FieldlogBackend: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fieldlog-backend",
        abstract: "Fieldlog backend: ingest device logs into MariaDB exactly once.",
        subcommands: [Migrate.self, Ingest.self, Audit.self, Replay.self, Web.self, Run.self, User.self, Config.self])
}

/// Options every subcommand shares; each sets its setting over the environment and the file.
struct CommonOptions: ParsableArguments {
    @Option(help: "Configuration file of KEY=value lines with the environment's names (the environment overrides it). Default: $FIELDLOG_CONFIG, else none.")
    var config: String?
    @Option(name: .customLong("set"), help: ArgumentHelp("Set any setting for this run, over the environment and the file (repeatable; docs/backend-configuration.md).", valueName: "KEY=value"))
    var set: [String] = []
    @Option(name: .customLong("mariadb"), help: "MariaDB servers host[:port],… in failover order (FIELDLOG_MARIADB_ADDRESSES, else FIELDLOG_MARIADB_HOST/PORT).")
    var mariadb: String?
    @Option(help: "Database name (FIELDLOG_MARIADB_DATABASE, default fieldlog).")
    var database: String?
    @Option(help: "MQTT broker host (FIELDLOG_MQTT_HOST / MQTT_HOST, default 127.0.0.1).")
    var mqttHost: String?
    @Option(help: "MQTT broker port (FIELDLOG_MQTT_PORT / MQTT_PORT, default 1883).")
    var mqttPort: Int?
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical (FIELDLOG_LOG_LEVEL, default info).")
    var logLevel: String?

    /// The settings: these options and a command's own (`more`, by setting name), `--set`, the
    /// environment, the configuration file, the defaults.
    func values(_ more: [String: String?] = [:]) throws(ConfigurationError) -> SettingValues {
        var given = try set.map { (text) throws(ConfigurationError) in try CommandLineSetting.parse(set: text) }
        let options: [String: String?] = [
            "FIELDLOG_MARIADB_ADDRESSES": mariadb, "FIELDLOG_MARIADB_DATABASE": database, "FIELDLOG_MQTT_HOST": mqttHost,
            "FIELDLOG_MQTT_PORT": mqttPort.map(String.init), "FIELDLOG_LOG_LEVEL": logLevel,
        ].merging(more) { a, _ in a }
        for (name, value) in options.sorted(by: { $0.key < $1.key }) {
            guard let value, let option = BackendSettings.table[name]?.option else { continue }
            given.append(CommandLineSetting(name: name, value: value, option: option))
        }
        return try BackendConfiguration.values(commandLine: given, configOption: config)
    }

    /// Reads and checks every setting the command needs (`extra`: besides the log level, the
    /// database, the broker, the topics and ingest), reporting every problem at once.
    func read<Extra>(_ more: [String: String?] = [:], reading extra: (inout SettingsReader) -> Extra)
        throws(ConfigurationError) -> (values: SettingValues, level: Logger.Level, config: BackendConfiguration, extra: Extra) {
        let values = try values(more)
        var r = SettingsReader(values)
        let level = BackendConfiguration.logLevel(reading: &r)
        let config = BackendConfiguration(reading: &r)
        let other = extra(&r)
        try r.finish()
        return (values, level, config, other)
    }

    /// `read`, then bootstraps logging at the configured level.
    func start<Extra>(_ more: [String: String?] = [:], reading extra: (inout SettingsReader) -> Extra) throws -> (BackendConfiguration, Extra, Logger) {
        let settings = try read(more, reading: extra)
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = settings.level
            return h
        }
        return (settings.config, settings.extra, Logger(label: "fieldlog.backend"))
    }

    func start(_ more: [String: String?] = [:]) throws -> (BackendConfiguration, Logger) {
        let (config, _, logger) = try start(more) { _ in () }
        return (config, logger)
    }
}

extension FieldlogBackend {
    struct Migrate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create or upgrade the MariaDB schema (re-running is a no-op).")
        @OptionGroup var common: CommonOptions
        @Flag(help: "Do the long part of the next upgrade (moving data) while ingest of the previous version keeps running; then stop ingest and run `migrate`.")
        var prepare = false

        func run() async throws {
            let (config, logger) = try common.start()
            var settings = config.database
            // Moving data (schema 7) runs statements over whole tables: far longer than the
            // ingest's 30 s read timeout allows.
            settings.readTimeout = .seconds(3_600)
            let connection = try await connectFirst(settings, logger: logger)
            try await withCleanups { cleanups in
                cleanups.add { await connection.shutdown() }
                if prepare {
                    let prepared = try await Migrator(connection: connection, logger: logger).prepare()
                    print(prepared.isEmpty ? "nothing to prepare (schema \(try await Migrator(connection: connection).currentVersion()))"
                                           : "prepared migration(s) \(prepared.map(String.init).joined(separator: ", ")); stop ingest, then run `fieldlog-backend migrate`")
                    return
                }
                let applied = try await Migrator(connection: connection, logger: logger).migrate()
                if applied.isEmpty {
                    print("schema is up to date (version \(Schema.latestVersion))")
                } else {
                    print("applied migration(s) \(applied.map(String.init).joined(separator: ", ")); schema is at version \(Schema.latestVersion)")
                }
            }
        }
    }

    struct Ingest: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Take device batches from MQTT (shared subscription), store them exactly once, ack after commit.")
        @OptionGroup var common: CommonOptions
        @Option(help: "Port of GET /metrics (FIELDLOG_METRICS_PORT, default 9464; 0 turns it off).") var metricsPort: Int?

        func run() async throws {
            let (config, logger) = try common.start(["FIELDLOG_METRICS_PORT": metricsPort.map(String.init)])
            let metrics = BackendMetrics()
            var services: [any Service] = []
            if config.ingest.metricsPort != 0 {
                services.append(MetricsService(metrics: metrics, host: config.ingest.metricsHost, port: config.ingest.metricsPort, logger: logger))
            }
            services.append(IngestService(configuration: config, metrics: metrics, logger: logger))
            // A writer retrying against a database that is down does not finish on its own:
            // the deadline cancels it (nothing uncommitted is acked either way).
            try await runServices(services, logger: logger)
        }
    }

    struct Audit: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Report per device and epoch what is stored and what is missing; exit 0 when nothing is missing, 1 when records are missing.")
        @OptionGroup var common: CommonOptions
        @Option(help: "Only this device.") var device: String?
        @Flag(help: "Print JSON instead of text.") var json = false
        @Option(help: "Seconds without data after which a device is reported silent (default 3600).") var silentAfter: Int = 3600
        @Flag(help: "Ask devices to resend every missing range (replay commands).") var repair = false

        func run() async throws {
            let (config, logger) = try common.start()
            let id = try device.map { try parseDevice($0, setting: "--device") }
            guard silentAfter >= 1 else { throw ConfigurationError(option: "--silent-after", value: String(silentAfter), allowed: "seconds ≥ 1") }
            let connection = try await connectFirst(config.database, logger: logger)
            try await Migrator(connection: connection).requireCurrent()
            let report = try await Auditor(connection: connection, silentAfter: .seconds(silentAfter)).run(device: id)
            print(json ? try report.json() : report.text())
            if repair {
                let requests = report.repairRequests
                if !requests.isEmpty {
                    let replayer = try await Replayer.connect(config: config, store: Store(connection: connection), logger: logger)
                    for r in requests {
                        let sent = try await replayer.send(device: r.device, epoch: r.epoch, range: r.range)
                        FileHandle.standardError.write(Data("repair: asked \(r.device) to resend \(r.range) of epoch \(r.epoch) (request \(sent.requestID))\n".utf8))
                    }
                    await replayer.close()
                }
            }
            await connection.shutdown()
            if report.hasGaps { throw ExitCode(1) }
        }
    }
    struct Replay: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Ask a device to resend a range of its log; records the command and the device's answer.")
        @OptionGroup var common: CommonOptions
        @Option(help: "Device id.") var device: String
        @Option(help: "Epoch (16 hex digits); default: the device's current epoch.") var epoch: String?
        @Option(help: "First sequence number.") var from: UInt64
        @Option(help: "Last sequence number.") var to: UInt64
        @Option(help: "Seconds to wait for the device's answer (0: do not wait). Default 10.") var wait: Int = 10

        func run() async throws {
            let (config, logger) = try common.start()
            let id = try parseDevice(device, setting: "--device")
            let ep = try epoch.map { try parseEpoch($0, setting: "--epoch") }
            let range: SequenceRange
            do { range = try SequenceRange(SequenceNumber(from), SequenceNumber(to)) } catch {
                throw ConfigurationError(option: "--from/--to", value: "\(from)…\(to)", allowed: error.description)
            }
            guard (0...3600).contains(wait) else { throw ConfigurationError(option: "--wait", value: String(wait), allowed: "seconds 0…3600") }
            let connection = try await connectFirst(config.database, logger: logger)
            try await Migrator(connection: connection).requireCurrent()
            let replayer = try await Replayer.connect(config: config, store: Store(connection: connection), logger: logger)
            let sent = try await replayer.send(device: id, epoch: ep, range: range)
            print("asked \(id) to resend \(range)\(ep.map { " of epoch \($0)" } ?? ""); request id \(sent.requestID)")
            if wait > 0 {
                if let answer = try await replayer.awaitResponse(requestID: sent.requestID, device: id, timeout: .seconds(wait)) {
                    print("answer: \(answer)")
                } else {
                    print("no answer within \(wait) s (an ingest process records it when it comes)")
                }
            }
            await replayer.close()
            await connection.shutdown()
        }
    }
}

/// How long the graceful shutdown (SIGTERM, SIGINT) of `ingest`, `web` and `run` may take
/// before it is escalated to cancellation (docs/concurrency.md, "Shutdown").
let gracefulShutdownDeadline: Duration = .seconds(10)

/// Runs `services` as one ServiceGroup until SIGTERM or SIGINT: started in order, shut down in
/// reverse, and cancelled when the graceful shutdown takes longer than `gracefulShutdownDeadline`.
func runServices(_ services: [any Service], logger: Logger) async throws {
    var configuration = ServiceGroupConfiguration(
        services: services.map { ServiceGroupConfiguration.ServiceConfiguration(service: $0) },
        gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
    configuration.maximumGracefulShutdownDuration = gracefulShutdownDeadline
    do {
        try await ServiceGroup(configuration: configuration).run()
    } catch is CancellationError {
        logger.info("cancelled after the graceful shutdown period of \(gracefulShutdownDeadline)")
    }
}

func parseDevice(_ text: String, setting: String) throws(ConfigurationError) -> DeviceID {
    do { return try DeviceID(text) } catch { throw ConfigurationError(option: setting, value: text, allowed: error.description) }
}

func parseEpoch(_ text: String, setting: String) throws(ConfigurationError) -> Epoch {
    do { return try Epoch(hex: text) } catch { throw ConfigurationError(option: setting, value: text, allowed: error.description) }
}

