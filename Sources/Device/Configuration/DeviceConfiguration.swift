import FieldlogCore
import Logging
import Settings
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Sync

/// How durable an append is (mirrors the log's setting; parsed here so a typo fails at start).
public enum LogDurabilitySetting: String, Sendable, CaseIterable {
    case full, normal
}

/// What happens when the log reaches its disk quota.
public enum QuotaPolicySetting: String, Sendable, CaseIterable {
    case stop
    case dropOldest = "drop-oldest"
}

/// One configured sensor.
public struct SensorSpec: Hashable, Sendable {
    public enum Kind: Hashable, Sendable {
        /// A seeded random walk (runs anywhere).
        case simulated(seed: UInt64)
        /// A Linux IIO channel file (`in_*_input` / `in_*_raw`) or a device directory (all channels).
        case iio(path: String)
        /// A DS18B20 on 1-Wire: a device id under /sys/bus/w1/devices, or a path to its directory.
        case oneWire(path: String)
        /// An external program (argument vector, no shell) printing one JSON object.
        case command(arguments: [String])
    }

    public var name: String
    public var kind: Kind

    public init(name: String, kind: Kind) {
        self.name = name
        self.kind = kind
    }
}

/// The button's electrical setup.
public enum ButtonBias: String, Sendable, CaseIterable { case up = "UP", down = "DOWN", none = "NONE" }
/// The edge that counts as a press.
public enum ButtonEdge: String, Sendable, CaseIterable { case rising = "RISING", falling = "FALLING" }

/// The whole, validated configuration of `fieldlog-device`.
///
/// Built by `DeviceConfiguration(values:hostName:)` from the resolved settings of
/// `DeviceSettings.table`; tests resolve them from dictionaries in memory. Every field has the
/// default and the limits of its row in the table.
public struct DeviceConfiguration: Sendable {
    public struct Identity: Sendable {
        public var deviceID: DeviceID
        public var deviceType: String
        public var appID: String
        public var appName: String
    }

    public struct Sampling: Sendable {
        public var interval: Duration
        public var enabled: Bool
        public var sensors: [SensorSpec]
        var sensorTimeout: Duration
    }

    public struct LogSettings: Sendable {
        public var path: String
        public var durability: LogDurabilitySetting
        public var retentionSeconds: Int64
        var retentionRecords: Int64
        /// 0 = no quota.
        public var maxBytes: Int64
        public var quotaPolicy: QuotaPolicySetting
    }

    public struct RedisSettings: Sendable {
        public var enabled: Bool
        public var host: String
        public var port: Int
        public var database: Int
        var streamMaxLength: Int
    }

    public struct Topics: Sendable {
        public var broadcast: String
        public var request: String
        public var response: String
        public var values: String
        public var ack: String
        public var status: String
    }

    public struct MQTTSettings: Sendable {
        public var enabled: Bool
        public var host: String
        public var port: Int
        public var keepAliveSeconds: Int
        public var clientID: String
        public var username: String
        public var password: String?
        var tlsEnabled: Bool
        var tlsInsecure: Bool
        var tlsCACerts: String?
        var tlsCertFile: String?
        var tlsKeyFile: String?
        public var topics: Topics
    }

    public struct SyncSettings: Sendable {
        public var enabled: Bool
        public var interval: Duration
        var batchMaxRecords: Int
        public var batchMaxBytes: Int
        public var window: Int
        var resendTimeout: Duration
        /// How batches are encoded (`SYNC_ENCODING`, spec §3.7).
        public var encoding: BatchEncoding
    }

    public struct ButtonSettings: Sendable {
        public var enabled: Bool
        public var chip: String
        public var line: Int
        public var bias: ButtonBias
        public var edge: ButtonEdge
        public var bounce: Duration
    }

    public struct CommandSettings: Sendable {
        /// Argument vector of the reboot command; empty = disabled.
        public var rebootCommand: [String]
        var seenIDsMax: Int
    }

    public struct StatusSettings: Sendable {
        public var host: String
        /// 0 = off.
        public var port: Int
    }

    public var identity: Identity
    public var sampling: Sampling
    public var log: LogSettings
    public var redis: RedisSettings
    public var mqtt: MQTTSettings
    public var sync: SyncSettings
    public var button: ButtonSettings
    public var commands: CommandSettings
    public var status: StatusSettings
    public var logLevel: Logger.Level
    /// The resolved values with their sources, for `config check`.
    public var values: SettingValues

    /// What `fieldlog-device` reads at start: `--set` values, the environment, the file named by
    /// `--config` or `$FIELDLOG_CONFIG`; validated.
    public static func load(configOption: String?, commandLine: [CommandLineSetting], environment: [String: String]) throws(ConfigurationError) -> DeviceConfiguration {
        let values = try SettingValues.load(table: DeviceSettings.table, commandLine: commandLine,
                                            environment: EnvironmentLayer(environment), configOption: configOption)
        return try DeviceConfiguration(values: values)
    }

    /// Validates every setting; throws one error listing every problem.
    public init(values: SettingValues, hostName: String = ProcessInfo.processInfo.hostName) throws(ConfigurationError) {
        precondition(values.table.program == DeviceSettings.table.program, "values of another program's table")
        var r = SettingsReader(values)

        // Identity: FIELDLOG_DEVICE_ID, else BALENA_DEVICE_UUID, else the host name.
        let idName = r.optional("FIELDLOG_DEVICE_ID") != nil ? "FIELDLOG_DEVICE_ID" : (r.optional("BALENA_DEVICE_UUID") != nil ? "BALENA_DEVICE_UUID" : nil)
        let idRaw = idName.map { r.raw($0) } ?? RawSetting(value: hostName, source: .builtIn, name: "FIELDLOG_DEVICE_ID (from host name)")
        var deviceID = try! DeviceID("unset")
        do { deviceID = try DeviceID(idRaw.value) } catch {
            r.problem(ConfigurationProblem(setting: idRaw.name, value: idRaw.value, source: idRaw.source, allowed: "1…64 characters from A-Z a-z 0-9 . _ -"))
        }
        identity = Identity(deviceID: deviceID, deviceType: r.string("BALENA_DEVICE_TYPE"),
                            appID: r.string("BALENA_APP_ID"), appName: r.string("BALENA_APP_NAME"))

        sampling = Sampling(
            interval: r.seconds("INTERVAL_SECONDS"),
            enabled: r.bool("MEASUREMENT_ENABLED"),
            sensors: r.sensors("SENSORS"),
            sensorTimeout: r.seconds("SENSOR_TIMEOUT_SECONDS"))

        log = LogSettings(
            path: r.nonEmpty("LOG_PATH"),
            durability: r.choice("LOG_DURABILITY", LogDurabilitySetting.self),
            retentionSeconds: r.integer("LOG_RETENTION_SECONDS"),
            retentionRecords: r.integer("LOG_RETENTION_RECORDS"),
            maxBytes: r.bytes("LOG_MAX_BYTES"),
            quotaPolicy: r.choice("LOG_QUOTA_POLICY", QuotaPolicySetting.self))
        if log.maxBytes != 0 && log.maxBytes < 65536 {
            r.problem("LOG_MAX_BYTES", "0 (no quota) or at least 64k: a smaller file cannot hold the log's own pages")
        }

        redis = RedisSettings(
            enabled: r.bool("REDIS_ENABLE"), host: r.nonEmpty("REDIS_HOST"),
            port: r.int("REDIS_PORT"), database: r.int("REDIS_DB"),
            streamMaxLength: r.int("REDIS_STREAM_MAXLEN"))

        // Topics: the protocol's templates (Sync.TopicTemplates), read the same way as the backend reads them.
        let templates = r.topicTemplates()
        let ident = DeviceIdentity(deviceType: identity.deviceType.isEmpty ? "unknown" : identity.deviceType,
                                   appID: identity.appID.isEmpty ? "0" : identity.appID,
                                   appName: identity.appName.isEmpty ? "fieldlog" : identity.appName)
        let topics = Topics(
            broadcast: templates.broadcast.topic(device: deviceID, identity: ident),
            request: templates.request.topic(device: deviceID, identity: ident),
            response: templates.response.topic(device: deviceID, identity: ident),
            values: templates.batch.topic(device: deviceID, identity: ident),
            ack: templates.ack.topic(device: deviceID, identity: ident),
            status: templates.status.topic(device: deviceID, identity: ident))
        let tls = r.bool("MQTT_TLS_ENABLE")
        mqtt = MQTTSettings(
            enabled: r.bool("MQTT_ENABLE"), host: r.nonEmpty("MQTT_HOST"),
            port: r.int("MQTT_PORT"),
            keepAliveSeconds: r.int("MQTT_KEEPALIVE_SECONDS"),
            clientID: r.optional("MQTT_CLIENT_ID") ?? deviceID.rawValue,
            username: r.optional("MQTT_USERNAME") ?? deviceID.rawValue,
            password: r.optional("MQTT_PASSWORD"),
            tlsEnabled: tls, tlsInsecure: r.bool("MQTT_TLS_INSECURE"),
            tlsCACerts: r.readableFile("MQTT_TLS_CA_CERTS", needed: tls),
            tlsCertFile: r.readableFile("MQTT_TLS_CERTFILE", needed: tls),
            tlsKeyFile: r.readableFile("MQTT_TLS_KEYFILE", needed: tls),
            topics: topics)
        if tls && (mqtt.tlsCertFile == nil) != (mqtt.tlsKeyFile == nil) {
            r.problem(mqtt.tlsCertFile == nil ? "MQTT_TLS_KEYFILE" : "MQTT_TLS_CERTFILE",
                      "set both MQTT_TLS_CERTFILE and MQTT_TLS_KEYFILE (client certificate and its key) or neither")
        }

        sync = SyncSettings(
            enabled: r.bool("SYNC_ENABLED"), interval: r.seconds("SYNC_INTERVAL_SECONDS"),
            batchMaxRecords: r.int("SYNC_BATCH_MAX_RECORDS"),
            batchMaxBytes: Int(r.bytes("SYNC_BATCH_MAX_BYTES")),
            window: r.int("SYNC_WINDOW"),
            resendTimeout: r.seconds("SYNC_RESEND_SECONDS"),
            encoding: r.choice("SYNC_ENCODING", BatchEncoding.self))

        button = ButtonSettings(
            enabled: r.bool("BUTTON_ENABLE"), chip: r.nonEmpty("BUTTON_CHIP"),
            line: r.int("BUTTON_PIN"),
            bias: r.choice("BUTTON_PULL_UP_DOWN", ButtonBias.self),
            edge: r.choice("BUTTON_EVENT", ButtonEdge.self),
            bounce: .milliseconds(r.integer("BUTTON_BOUNCE_MILLIS")))

        commands = CommandSettings(
            rebootCommand: r.commandLine("COMMAND_REBOOT"),
            seenIDsMax: r.int("COMMAND_SEEN_IDS_MAX"))

        status = StatusSettings(host: r.nonEmpty("STATUS_HTTP_HOST"), port: r.int("STATUS_HTTP_PORT"))
        logLevel = r.choice("LOG_LEVEL", Logger.Level.self)
        self.values = values
        try r.finish()
    }

    /// The effective configuration as `KEY=value  # source` lines, secrets masked, with what
    /// the program made of the settings it derives values from.
    public func effectiveDescription() -> String {
        var effective = [
            "FIELDLOG_DEVICE_ID": identity.deviceID.rawValue,
            "FIELDLOG_TOPIC_BATCH": mqtt.topics.values, "FIELDLOG_TOPIC_ACK": mqtt.topics.ack,
            "FIELDLOG_TOPIC_STATUS": mqtt.topics.status, "FIELDLOG_TOPIC_REQUEST": mqtt.topics.request,
            "FIELDLOG_TOPIC_RESPONSE": mqtt.topics.response, "FIELDLOG_TOPIC_BROADCAST": mqtt.topics.broadcast,
        ]
        if values["MQTT_CLIENT_ID"] == nil { effective["MQTT_CLIENT_ID"] = mqtt.clientID }
        if values["MQTT_USERNAME"] == nil { effective["MQTT_USERNAME"] = mqtt.username }
        return values.effectiveDescription(effective: effective)
    }
}

/// The device's own kinds of value: a command line, a sensor list.
extension SettingsReader {
    mutating func commandLine(_ name: String) -> [String] {
        do { return try CommandLineSplitter.split(string(name)) } catch {
            problem(name, "a command line: \(error)")
            return []
        }
    }

    mutating func sensors(_ name: String) -> [SensorSpec] {
        do { return try SensorSpec.parseList(string(name)) } catch {
            problem(name, "\(error.description); format: `name=kind[:argument]` separated by `;`, kinds simulated[:seed], iio:PATH, w1:ID-or-PATH, command:COMMAND LINE")
            return []
        }
    }
}

extension SensorSpec {
    /// Parses `name=kind[:argument];…`.
    public static func parseList(_ text: String) throws(DomainError) -> [SensorSpec] {
        var specs: [SensorSpec] = []
        var names = Set<String>()
        for part in text.split(separator: ";") {
            let entry = part.trimmed(.spaces)
            if entry.isEmpty { continue }
            guard let eq = entry.firstIndex(of: "=") else { throw DomainError("sensor entry \(entry.debugDescription) lacks `=`") }
            let name = entry[..<eq].trimmed(.spaces)
            try SensorValues.validate(name: name)
            guard names.insert(name).inserted else { throw DomainError("sensor name \(name.debugDescription) is used twice") }
            let rest = entry[entry.index(after: eq)...].trimmed(.spaces)
            let kind: Substring, argument: String
            if let colon = rest.firstIndex(of: ":") {
                kind = rest[..<colon]
                argument = rest[rest.index(after: colon)...].trimmed(.spaces)
            } else {
                kind = Substring(rest)
                argument = ""
            }
            switch kind.lowercased() {
            case "simulated":
                if argument.isEmpty {
                    specs.append(.init(name: name, kind: .simulated(seed: stableSeed(name))))
                } else {
                    guard let seed = UInt64(argument) else { throw DomainError("simulated sensor \(name.debugDescription): seed \(argument.debugDescription) is not a whole number") }
                    specs.append(.init(name: name, kind: .simulated(seed: seed)))
                }
            case "iio":
                guard argument.hasPrefix("/") else { throw DomainError("iio sensor \(name.debugDescription) needs an absolute path, got \(argument.debugDescription)") }
                specs.append(.init(name: name, kind: .iio(path: argument)))
            case "w1", "1-wire", "onewire":
                guard !argument.isEmpty, !argument.contains("..") else { throw DomainError("w1 sensor \(name.debugDescription) needs a device id (28-…) or an absolute path") }
                let path = argument.hasPrefix("/") ? argument : "/sys/bus/w1/devices/" + argument
                specs.append(.init(name: name, kind: .oneWire(path: path)))
            case "command":
                let args = try CommandLineSplitter.split(argument)
                guard !args.isEmpty else { throw DomainError("command sensor \(name.debugDescription) needs a command line") }
                specs.append(.init(name: name, kind: .command(arguments: args)))
            default:
                throw DomainError("sensor \(name.debugDescription) has unknown kind \(String(kind).debugDescription)")
            }
        }
        if specs.isEmpty { throw DomainError("no sensors configured") }
        return specs
    }

    /// FNV-1a of the name: a fixed seed per sensor name, so a restart continues a similar walk.
    static func stableSeed(_ name: String) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in name.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return h
    }
}

/// Splits a command line into arguments: whitespace separates, single and double quotes group,
/// backslash escapes the next character outside single quotes. No shell is involved.
public enum CommandLineSplitter {
    public static func split(_ text: String) throws(DomainError) -> [String] {
        var args: [String] = []
        var current = ""
        var inArg = false
        var quote: Character? = nil
        var escape = false
        for c in text {
            if escape { current.append(c); escape = false; inArg = true; continue }
            if let q = quote {
                if c == q { quote = nil } else if c == "\\" && q == "\"" { escape = true } else { current.append(c) }
                continue
            }
            switch c {
            case "\\": escape = true
            case "\"", "'": quote = c; inArg = true
            case " ", "\t":
                if inArg { args.append(current); current = ""; inArg = false }
            default: current.append(c); inArg = true
            }
        }
        if quote != nil { throw DomainError("unterminated quote in \(text.debugDescription)") }
        if escape { throw DomainError("trailing backslash in \(text.debugDescription)") }
        if inArg { args.append(current) }
        return args
    }
}
