// Configuration of `fieldlog-backend`: the typed values of BackendSettings' table (database,
// broker, topics, ingest; the web admin's are WebAdmin's WebSettings), checked as they are
// read, every problem named with its setting, value, source and what is allowed (Settings'
// `ConfigurationError`). Sources, highest first: command line, environment (through
// swift-configuration's `EnvironmentVariablesProvider`), configuration file, default.
import Configuration
import FieldlogCore
import Foundation
import Logging
import MariaDB
import Settings
import Sync

/// One MariaDB server to try (ingest fails over along the list).
package struct DatabaseAddress: Hashable, Sendable, CustomStringConvertible {
    package var host: String
    package var port: Int
    package var description: String { "\(host):\(port)" }

    package init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses "host", "host:port" or "[v6]:port"; nil when it is none of them.
    package static func parse(_ text: String) -> DatabaseAddress? {
        let t = text.trimmingCharacters(in: .whitespaces)
        guard !t.isEmpty else { return nil }
        var host = t, port = 3306
        if let colon = t.lastIndex(of: ":"), !t.hasSuffix("]") {
            host = String(t[..<colon])
            guard let p = Int(t[t.index(after: colon)...]), (1...65535).contains(p), !host.isEmpty else { return nil }
            port = p
        }
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return DatabaseAddress(host: host, port: port)
    }
}

/// Everything the backend's commands need to reach MariaDB (FIELDLOG_MARIADB_*: defaults and
/// limits in BackendSettings' table; the timeouts are not settings).
package struct DatabaseSettings: Sendable, CustomStringConvertible {
    /// Servers in order of preference; on connection loss ingest moves to the next one.
    package var addresses: [DatabaseAddress]
    package var user: String
    package var password: String
    package var database: String
    /// Default 5 s.
    package var connectTimeout: Duration = .seconds(5)
    /// Default 30 s.
    package var readTimeout: Duration = .seconds(30)

    /// For logs: never the password.
    package init(addresses: [DatabaseAddress], user: String, password: String, database: String,
                 connectTimeout: Duration = .seconds(5), readTimeout: Duration = .seconds(30)) {
        self.addresses = addresses
        self.user = user
        self.password = password
        self.database = database
        self.connectTimeout = connectTimeout
        self.readTimeout = readTimeout
    }

    package var description: String { "\(user)@\(addresses.map(\.description).joined(separator: ","))/\(database)" }

    package func configuration(for address: DatabaseAddress) -> MariaDBConfiguration {
        MariaDBConfiguration(host: address.host, port: address.port, user: user, password: password, database: database,
                             connectTimeout: connectTimeout, readTimeout: readTimeout, writeTimeout: readTimeout)
    }
}

/// How to reach the broker (FIELDLOG_MQTT_*: defaults and limits in BackendSettings' table).
package struct BrokerSettings: Sendable, CustomStringConvertible {
    package var host: String
    package var port: Int
    package var user: String
    package var password: String
    package var keepAliveSeconds: Int
    /// MQTT client id prefix; a random suffix keeps two processes apart.
    package var clientIDPrefix: String
    package static let defaultClientIDPrefix = "fieldlog-backend"

    /// For logs: never the password.
    package init(host: String, port: Int, user: String, password: String, keepAliveSeconds: Int = 30,
                 clientIDPrefix: String = defaultClientIDPrefix) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.keepAliveSeconds = keepAliveSeconds
        self.clientIDPrefix = clientIDPrefix
    }

    package var description: String { "\(user)@\(host):\(port)" }
}

/// Topic layout: the protocol's templates (spec/protocol.md §2, Sync's `TopicTemplates`) and
/// the shared-subscription group of the ingest processes (default "fieldlog-ingest").
package struct TopicSettings: Sendable {
    package var templates: TopicTemplates = .defaults
    package var shareGroup: String = BackendSettings.table["FIELDLOG_INGEST_GROUP"]!.defaultValue!

    /// `$share/<group>/<filter>`: the broker hands each message to one member of the group.
    package func shared(_ filter: String) -> String { "$share/\(shareGroup)/\(filter)" }
}

/// Ingest limits and timing. The settings' defaults and limits are their rows in
/// BackendSettings' table; `IngestSettings()` has the defaults (tests start from it).
package struct IngestSettings: Sendable {
    /// Most batches committed in one transaction (FIELDLOG_INGEST_MAX_BATCHES_PER_TRANSACTION):
    /// a fleet of many devices sends many small batches, and each group pays one commit and a
    /// few round trips (64 held 1,000 devices at 1 reading/s to ~730 stored/s; docs/benchmarks.md).
    package var maxBatchesPerTransaction: Int
    /// Bytes of messages held in memory waiting for the database (FIELDLOG_INGEST_MAX_QUEUED_BYTES);
    /// above it the ingest stops reading from the broker until half of it is written
    /// (backpressure: the broker keeps the rest in this process's session).
    package var maxQueuedBytes: Int
    /// One device's share of that queue (FIELDLOG_INGEST_MAX_QUEUED_BYTES_PER_DEVICE); its messages
    /// beyond it are dropped unacked (the device resends), so one device cannot take the queue.
    package var maxQueuedBytesPerDevice: Int
    /// Attempts at a transaction that fails for an unknown reason before the message at fault
    /// is isolated and kept aside as a dead letter (FIELDLOG_INGEST_UNKNOWN_ERROR_ATTEMPTS).
    package var unknownErrorAttempts: Int
    /// The MQTT client id of the seed-values subscription: stable per process, so its persistent
    /// session (and the seed messages the broker keeps for it) survives restarts
    /// (FIELDLOG_INGEST_CLIENT_ID, else "<prefix>-ingest-<host>-<FIELDLOG_INGEST_INSTANCE>").
    package var clientID: String
    /// How long the broker keeps this process's session (and its messages) while it is away
    /// (FIELDLOG_INGEST_SESSION_EXPIRY_SECONDS).
    package var sessionExpiry: Duration
    /// Port of `GET /metrics`; 0 turns it off (FIELDLOG_METRICS_PORT).
    package var metricsPort: Int
    /// Address the metrics endpoint binds to (FIELDLOG_METRICS_HOST).
    package var metricsHost: String
    /// First and longest wait between database reconnect attempts. Not settings: 0.2 s and 5 s.
    package var reconnectBackoffFirst: Duration = .milliseconds(200)
    package var reconnectBackoffMax: Duration = .seconds(5)
    /// Retries of a transaction that hits deadlocks / certification conflicts (1213) before
    /// it counts as an unknown failure. Not a setting: 20.
    package var deadlockRetries: Int = 20
    /// Compacts a (device, epoch)'s batch_ranges after this many batches. Not a setting: 256.
    package var compactEveryBatches: Int = 256

    /// The defaults of the table.
    package init() {
        self = BackendSettings.table.readingDefaults { r in IngestSettings(reading: &r, clientIDPrefix: BrokerSettings.defaultClientIDPrefix) }
    }

    /// Reads the settings, recording problems in `r`.
    package init(reading r: inout SettingsReader, clientIDPrefix: String) {
        maxBatchesPerTransaction = r.int("FIELDLOG_INGEST_MAX_BATCHES_PER_TRANSACTION")
        maxQueuedBytes = Int(r.bytes("FIELDLOG_INGEST_MAX_QUEUED_BYTES"))
        maxQueuedBytesPerDevice = Int(r.bytes("FIELDLOG_INGEST_MAX_QUEUED_BYTES_PER_DEVICE"))
        unknownErrorAttempts = r.int("FIELDLOG_INGEST_UNKNOWN_ERROR_ATTEMPTS")
        sessionExpiry = .seconds(r.integer("FIELDLOG_INGEST_SESSION_EXPIRY_SECONDS"))
        if let id = r.optional("FIELDLOG_INGEST_CLIENT_ID") {
            if id.utf8.count > 128 || id.contains("/") || id.contains("+") || id.contains("#") {
                r.problem("FIELDLOG_INGEST_CLIENT_ID", "an MQTT client id of at most 128 bytes without / + #")
            }
            clientID = id
        } else {
            let instance = r.string("FIELDLOG_INGEST_INSTANCE")
            if instance.utf8.count > 32 || !instance.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != 0x2F && $0 != 0x2B && $0 != 0x23 }) {
                r.problem("FIELDLOG_INGEST_INSTANCE", "1…32 printable ASCII characters without / + #")
            }
            clientID = "\(clientIDPrefix)-ingest-\(BackendConfiguration.hostName())-\(instance)"
        }
        metricsPort = r.int("FIELDLOG_METRICS_PORT")
        metricsHost = r.string("FIELDLOG_METRICS_HOST")
    }

    /// The ingest state machine's configuration from these settings.
    package func machine(topics: TopicTemplates) -> IngestConfiguration {
        var c = IngestConfiguration()
        c.topics = topics
        c.maxMessagesPerTransaction = maxBatchesPerTransaction
        c.maxQueuedBytes = maxQueuedBytes
        c.maxQueuedBytesPerDevice = min(maxQueuedBytesPerDevice, maxQueuedBytes)
        c.reconnectBackoffFirst = reconnectBackoffFirst
        c.reconnectBackoffMax = reconnectBackoffMax
        c.conflictRetries = deadlockRetries
        c.unknownErrorAttempts = unknownErrorAttempts
        c.compactEveryBatches = compactEveryBatches
        return c
    }
}

/// The complete configuration of a backend command.
package struct BackendConfiguration: Sendable {
    /// This machine's host name (for the default ingest client id), "localhost" when unknown.
    package static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let safe = name.filter { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "." || $0 == "_") }
        return safe.isEmpty ? "localhost" : String(safe.prefix(64))
    }

    package var database: DatabaseSettings
    package var broker: BrokerSettings
    package var topics = TopicSettings()
    package var ingest = IngestSettings()

    package init(database: DatabaseSettings, broker: BrokerSettings, topics: TopicSettings = TopicSettings(), ingest: IngestSettings = IngestSettings()) {
        self.database = database
        self.broker = broker
        self.topics = topics
        self.ingest = ingest
    }

    /// The settings `fieldlog-backend` reads at start: `commandLine` (its options), the process
    /// environment through swift-configuration's `EnvironmentVariablesProvider`, the file named by
    /// `--config` (`configOption`) or `$FIELDLOG_CONFIG`, the defaults.
    package static func values(commandLine: [CommandLineSetting] = [], environment: [String: String] = ProcessInfo.processInfo.environment,
                               configOption: String? = nil) throws(ConfigurationError) -> SettingValues {
        try SettingValues.load(table: BackendSettings.table, commandLine: commandLine,
                               environment: ConfigProviderLayer(environmentOf: BackendSettings.table, environment), configOption: configOption)
    }

    /// Checks and reads every setting of the database, the broker, the topics and ingest; throws
    /// one error listing every problem (the web admin's: `WebSettings(values:)`).
    package init(values: SettingValues) throws(ConfigurationError) {
        var r = SettingsReader(values)
        self.init(reading: &r)
        try r.finish()
    }

    /// Reads the settings, recording problems in `r`.
    package init(reading r: inout SettingsReader) {
        // MariaDB: a list (FIELDLOG_MARIADB_ADDRESSES / --mariadb) or one host and port.
        var addresses: [DatabaseAddress]
        if r.optional("FIELDLOG_MARIADB_ADDRESSES") != nil {
            let parts = r.string("FIELDLOG_MARIADB_ADDRESSES").split(separator: ",")
            addresses = parts.compactMap { DatabaseAddress.parse(String($0)) }
            if addresses.count != parts.count || addresses.isEmpty {
                r.problem("FIELDLOG_MARIADB_ADDRESSES", "a comma-separated list of host[:port] (port 1…65535, default 3306)")
            }
        } else {
            addresses = [DatabaseAddress(host: r.string("FIELDLOG_MARIADB_HOST"), port: r.int("FIELDLOG_MARIADB_PORT"))]
        }
        let dbName = r.string("FIELDLOG_MARIADB_DATABASE")
        if dbName.isEmpty || dbName.utf8.count > 64 || !dbName.utf8.allSatisfy({ b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x5F || b == 0x24
        }) {
            r.problem("FIELDLOG_MARIADB_DATABASE", "1…64 characters A–Z a–z 0–9 _ $")
        }
        database = DatabaseSettings(addresses: addresses, user: r.string("FIELDLOG_MARIADB_USER"),
                                    password: r.string("FIELDLOG_MARIADB_PASSWORD"), database: dbName)

        broker = BrokerSettings(host: r.string("FIELDLOG_MQTT_HOST"), port: r.int("FIELDLOG_MQTT_PORT"),
                                user: r.string("FIELDLOG_MQTT_BACKEND_USER"), password: r.string("FIELDLOG_MQTT_BACKEND_PASSWORD"),
                                keepAliveSeconds: r.int("FIELDLOG_MQTT_KEEPALIVE_SECONDS"))

        topics = TopicSettings(templates: r.topicTemplates())
        let group = r.string("FIELDLOG_INGEST_GROUP")
        if group.contains("/") || group.contains("+") || group.contains("#") {
            r.problem("FIELDLOG_INGEST_GROUP", "a share name without / + #")
        }
        topics.shareGroup = group

        ingest = IngestSettings(reading: &r, clientIDPrefix: broker.clientIDPrefix)
    }

    /// The log level (`--log-level`, FIELDLOG_LOG_LEVEL), recording a problem in `r`.
    package static func logLevel(reading r: inout SettingsReader) -> Logger.Level {
        r.choice("FIELDLOG_LOG_LEVEL", Logger.Level.self)
    }
}
