// Configuration of `fieldlog-backend`: every setting, its default, its limits, and where it
// comes from (command line first, then environment, then the default).
//
// Environment names follow the stack (`FIELDLOG_MARIADB_*`, `FIELDLOG_MQTT_*`) and accept the
// seed's names (`MQTT_HOST`, `MQTT_PORT`, `MQTT_USERNAME`, `MQTT_PASSWORD`,
// `MQTT_KEEPALIVE_SECONDS`, `MQTT_TOPIC_VALUES`) where the seed had one.
import FieldlogCore
import Foundation
import Logging
import MariaDB
import Sync

/// A setting with a value that is not allowed; says which setting, what value, what is allowed.
package struct ConfigurationError: Error, CustomStringConvertible {
    package var setting: String
    package var value: String
    package var allowed: String
    package var description: String { "invalid setting \(setting)=\(value.debugDescription): allowed is \(allowed)" }

    package init(setting: String, value: String, allowed: String) {
        self.setting = setting
        self.value = value
        self.allowed = allowed
    }
}

/// One MariaDB server to try (ingest fails over along the list).
package struct DatabaseAddress: Hashable, Sendable, CustomStringConvertible {
    package var host: String
    package var port: Int
    package var description: String { "\(host):\(port)" }

    package init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses "host", "host:port" or "[v6]:port".
    package static func parse(_ text: String, setting: String) throws(ConfigurationError) -> DatabaseAddress {
        let allowed = "a comma-separated list of host[:port] (port 1…65535, default 3306)"
        let t = text.trimmingCharacters(in: .whitespaces)
        guard !t.isEmpty else { throw ConfigurationError(setting: setting, value: text, allowed: allowed) }
        var host = t, port = 3306
        if let colon = t.lastIndex(of: ":"), !t.hasSuffix("]") {
            host = String(t[..<colon])
            guard let p = Int(t[t.index(after: colon)...]), (1...65535).contains(p), !host.isEmpty else {
                throw ConfigurationError(setting: setting, value: text, allowed: allowed)
            }
            port = p
        }
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return DatabaseAddress(host: host, port: port)
    }
}

/// Everything the backend's commands need to reach MariaDB.
package struct DatabaseSettings: Sendable, CustomStringConvertible {
    /// Servers in order of preference; on connection loss ingest moves to the next one.
    package var addresses: [DatabaseAddress]
    package var user: String
    package var password: String
    /// Default "fieldlog".
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

/// How to reach the broker.
package struct BrokerSettings: Sendable, CustomStringConvertible {
    /// Default "127.0.0.1".
    package var host: String
    /// Default 1883.
    package var port: Int
    /// Default "fieldlog-backend".
    package var user: String
    package var password: String
    /// Default 30 s, 5…3600.
    package var keepAliveSeconds: Int = 30
    /// MQTT client id prefix; a random suffix keeps two processes apart.
    package var clientIDPrefix: String = "fieldlog-backend"

    /// For logs: never the password.
    package init(host: String, port: Int, user: String, password: String, keepAliveSeconds: Int = 30, clientIDPrefix: String = "fieldlog-backend") {
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
    package var shareGroup: String = "fieldlog-ingest"

    /// `$share/<group>/<filter>`: the broker hands each message to one member of the group.
    package func shared(_ filter: String) -> String { "$share/\(shareGroup)/\(filter)" }
}

/// Ingest limits and timing.
package struct IngestSettings: Sendable {
    /// Most batches committed in one transaction. Default 512, 1…1000: a fleet of many
    /// devices sends many small batches, and each group pays one commit and a few round trips
    /// (64 held 1,000 devices at 1 reading/s to ~730 stored/s; docs/benchmarks.md).
    package var maxBatchesPerTransaction: Int = 512
    /// Bytes of messages held in memory waiting for the database; above it the ingest stops
    /// reading from the broker until half of it is written (backpressure: the broker keeps the
    /// rest in this process's session). Default 32 MiB, 1 MiB…4 GiB.
    package var maxQueuedBytes: Int = 32 << 20
    /// One device's share of that queue; its messages beyond it are dropped unacked (the device
    /// resends), so one device cannot take the queue from the others. Default 4 MiB.
    package var maxQueuedBytesPerDevice: Int = 4 << 20
    /// Attempts at a transaction that fails for an unknown reason before the message at fault
    /// is isolated and kept aside as a dead letter. Default 3, 1…100.
    package var unknownErrorAttempts: Int = 3
    /// The MQTT client id of the seed-values subscription: stable per process, so its persistent
    /// session (and the seed messages the broker keeps for it) survives restarts.
    /// Default "<prefix>-ingest-<host>-<instance>".
    package var clientID: String = "fieldlog-backend-ingest-localhost-1"
    /// How long the broker keeps this process's session (and its messages) while it is away.
    /// Default 300 s, 10…86 400 s.
    package var sessionExpiry: Duration = .seconds(300)
    /// First and longest wait between database reconnect attempts. Default 0.2 s and 5 s.
    package var reconnectBackoffFirst: Duration = .milliseconds(200)
    package var reconnectBackoffMax: Duration = .seconds(5)
    /// Retries of a transaction that hits deadlocks / certification conflicts (1213) before
    /// it counts as an unknown failure. Default 20.
    package var deadlockRetries: Int = 20
    /// Compacts a (device, epoch)'s batch_ranges after this many batches. Default 256.
    package var compactEveryBatches: Int = 256
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

    /// Port of `GET /metrics`; 0 turns it off. Default 9464.
    package var metricsPort: Int = 9464
    /// Address the metrics endpoint binds to. Default "127.0.0.1".
    package var metricsHost: String = "127.0.0.1"
}

/// Reads settings from an environment dictionary, with checks that name setting, value and what is allowed.
package struct EnvironmentReader {
    package var environment: [String: String]

    package init(_ environment: [String: String] = ProcessInfo.processInfo.environment) { self.environment = environment }

    /// The first of `names` that is set (and not empty), with the name it came from.
    package func string(_ names: [String]) -> (name: String, value: String)? {
        for n in names { if let v = environment[n], !v.isEmpty { return (n, v) } }
        return nil
    }

    package func int(_ names: [String], default value: Int, range: ClosedRange<Int>) throws(ConfigurationError) -> Int {
        guard let (name, text) = string(names) else { return value }
        return try Self.checkedInt(text, setting: name, range: range)
    }

    package static func checkedInt(_ text: String, setting: String, range: ClosedRange<Int>) throws(ConfigurationError) -> Int {
        guard let v = Int(text.trimmingCharacters(in: .whitespaces)), range.contains(v) else {
            throw ConfigurationError(setting: setting, value: text, allowed: "an integer \(range.lowerBound)…\(range.upperBound)")
        }
        return v
    }
}

/// Command-line values that override the environment (nil = not given).
package struct SettingOverrides: Sendable {
    package var mariadb: String?
    package var database: String?
    package var mqttHost: String?
    package var mqttPort: Int?
    package var metricsPort: Int?

    package init(mariadb: String? = nil, database: String? = nil, mqttHost: String? = nil, mqttPort: Int? = nil, metricsPort: Int? = nil) {
        self.mariadb = mariadb
        self.database = database
        self.mqttHost = mqttHost
        self.mqttPort = mqttPort
        self.metricsPort = metricsPort
    }
}

extension BackendConfiguration {
    /// The log level: `--log-level`, else FIELDLOG_LOG_LEVEL, else info.
    package static func logLevel(option: String?, environment: [String: String] = ProcessInfo.processInfo.environment) throws(ConfigurationError) -> Logger.Level {
        let text = option ?? environment["FIELDLOG_LOG_LEVEL"] ?? "info"
        guard let level = Logger.Level(rawValue: text) else {
            throw ConfigurationError(setting: option != nil ? "--log-level" : "FIELDLOG_LOG_LEVEL", value: text,
                                     allowed: Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))
        }
        return level
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

    /// Builds the configuration from the environment, then the command-line overrides.
    package static func load(environment env: EnvironmentReader = EnvironmentReader(),
                     overrides: SettingOverrides = SettingOverrides()) throws(ConfigurationError) -> BackendConfiguration {
        // MariaDB: a list (FIELDLOG_MARIADB_ADDRESSES / --mariadb) or one host and port.
        var addresses: [DatabaseAddress]
        if let list = overrides.mariadb.map({ ("--mariadb", $0) }) ?? env.string(["FIELDLOG_MARIADB_ADDRESSES"]) {
            addresses = []
            for part in list.1.split(separator: ",") {
                addresses.append(try DatabaseAddress.parse(String(part), setting: list.0))
            }
            guard !addresses.isEmpty else {
                throw ConfigurationError(setting: list.0, value: list.1, allowed: "a comma-separated list of host[:port]")
            }
        } else {
            let host = env.string(["FIELDLOG_MARIADB_HOST"])?.value ?? "127.0.0.1"
            let port = try env.int(["FIELDLOG_MARIADB_PORT"], default: 3306, range: 1...65535)
            addresses = [DatabaseAddress(host: host, port: port)]
        }
        let dbName = overrides.database ?? env.string(["FIELDLOG_MARIADB_DATABASE"])?.value ?? "fieldlog"
        guard !dbName.isEmpty, dbName.utf8.count <= 64, dbName.utf8.allSatisfy({ b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x5F || b == 0x24
        }) else {
            throw ConfigurationError(setting: overrides.database != nil ? "--database" : "FIELDLOG_MARIADB_DATABASE",
                                     value: dbName, allowed: "1…64 characters A–Z a–z 0–9 _ $")
        }
        let database = DatabaseSettings(
            addresses: addresses,
            user: env.string(["FIELDLOG_MARIADB_USER"])?.value ?? "fieldlog",
            password: env.string(["FIELDLOG_MARIADB_PASSWORD"])?.value ?? "",
            database: dbName)

        let mqttPort: Int
        if let p = overrides.mqttPort {
            mqttPort = try EnvironmentReader.checkedInt(String(p), setting: "--mqtt-port", range: 1...65535)
        } else {
            mqttPort = try env.int(["FIELDLOG_MQTT_PORT", "MQTT_PORT"], default: 1883, range: 1...65535)
        }
        var broker = BrokerSettings(
            host: overrides.mqttHost ?? env.string(["FIELDLOG_MQTT_HOST", "MQTT_HOST"])?.value ?? "127.0.0.1",
            port: mqttPort,
            user: env.string(["FIELDLOG_MQTT_BACKEND_USER", "MQTT_USERNAME"])?.value ?? "fieldlog-backend",
            password: env.string(["FIELDLOG_MQTT_BACKEND_PASSWORD", "MQTT_PASSWORD"])?.value ?? "")
        broker.keepAliveSeconds = try env.int(["FIELDLOG_MQTT_KEEPALIVE_SECONDS", "MQTT_KEEPALIVE_SECONDS"], default: 30, range: 5...3600)

        var topics = TopicSettings()
        do {
            topics.templates = try TopicTemplates.fromEnvironment(env.environment)
        } catch {
            throw ConfigurationError(setting: "FIELDLOG_TOPIC_*", value: error.description,
                                     allowed: "topic templates with whole-level placeholders ({device} or %(device_uuid)s) and no wildcards")
        }
        if let (name, group) = env.string(["FIELDLOG_INGEST_GROUP"]) {
            guard !group.contains("/"), !group.contains("+"), !group.contains("#") else {
                throw ConfigurationError(setting: name, value: group, allowed: "a share name without / + #")
            }
            topics.shareGroup = group
        }

        var ingest = IngestSettings()
        ingest.maxBatchesPerTransaction = try env.int(["FIELDLOG_INGEST_MAX_BATCHES_PER_TRANSACTION"], default: 512, range: 1...1000)
        ingest.maxQueuedBytes = try env.int(["FIELDLOG_INGEST_MAX_QUEUED_BYTES"], default: 32 << 20, range: (1 << 20)...(4 << 30))
        ingest.maxQueuedBytesPerDevice = try env.int(["FIELDLOG_INGEST_MAX_QUEUED_BYTES_PER_DEVICE"], default: 4 << 20,
                                                     range: ProtocolLimits.maxMessageBytes...(4 << 30))
        ingest.unknownErrorAttempts = try env.int(["FIELDLOG_INGEST_UNKNOWN_ERROR_ATTEMPTS"], default: 3, range: 1...100)
        ingest.sessionExpiry = .seconds(try env.int(["FIELDLOG_INGEST_SESSION_EXPIRY_SECONDS"], default: 300, range: 10...86_400))
        if let (name, id) = env.string(["FIELDLOG_INGEST_CLIENT_ID"]) {
            guard id.utf8.count <= 128, !id.contains("/"), !id.contains("+"), !id.contains("#") else {
                throw ConfigurationError(setting: name, value: id, allowed: "an MQTT client id of at most 128 bytes without / + #")
            }
            ingest.clientID = id
        } else {
            let instance = env.string(["FIELDLOG_INGEST_INSTANCE"])?.value ?? "1"
            guard instance.utf8.count <= 32, instance.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != 0x2F && $0 != 0x2B && $0 != 0x23 }) else {
                throw ConfigurationError(setting: "FIELDLOG_INGEST_INSTANCE", value: instance, allowed: "1…32 printable ASCII characters without / + #")
            }
            ingest.clientID = "\(broker.clientIDPrefix)-ingest-\(Self.hostName())-\(instance)"
        }
        if let p = overrides.metricsPort {
            ingest.metricsPort = try EnvironmentReader.checkedInt(String(p), setting: "--metrics-port", range: 0...65535)
        } else {
            ingest.metricsPort = try env.int(["FIELDLOG_METRICS_PORT"], default: 9464, range: 0...65535)
        }
        if let (_, host) = env.string(["FIELDLOG_METRICS_HOST"]) { ingest.metricsHost = host }
        return BackendConfiguration(database: database, broker: broker, topics: topics, ingest: ingest)
    }
}
