import FieldlogCore
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
/// Built by `DeviceConfiguration(source:hostName:)` from the merged raw settings; tests build
/// a `ConfigurationSource` in memory. Every field has the default documented in `Settings`.
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
    public var logLevel: String
    /// The raw values, for `config check`.
    public var source: ConfigurationSource

    /// Validates every setting; throws one error listing every problem.
    public init(source: ConfigurationSource, hostName: String = ProcessInfo.processInfo.hostName) throws(ConfigurationError) {
        var r = Reader(source: source)

        // Identity
        let idRaw: RawSetting
        if let v = source.values["FIELDLOG_DEVICE_ID"], !v.value.isEmpty { idRaw = v }
        else if let v = source.values["BALENA_DEVICE_UUID"], !v.value.isEmpty { idRaw = v }
        else { idRaw = RawSetting(value: hostName, source: .builtIn) }
        var deviceID = try! DeviceID("unset")
        do { deviceID = try DeviceID(idRaw.value) } catch {
            r.problems.append(.init(setting: source.values["FIELDLOG_DEVICE_ID"] != nil ? "FIELDLOG_DEVICE_ID" : (source.values["BALENA_DEVICE_UUID"] != nil ? "BALENA_DEVICE_UUID" : "FIELDLOG_DEVICE_ID (from host name)"),
                                    value: idRaw.value, source: idRaw.source, allowed: "1…64 characters from A-Z a-z 0-9 . _ -"))
        }
        identity = Identity(deviceID: deviceID, deviceType: r.string("BALENA_DEVICE_TYPE"),
                            appID: r.string("BALENA_APP_ID"), appName: r.string("BALENA_APP_NAME"))

        sampling = Sampling(
            interval: r.seconds("INTERVAL_SECONDS", 0.01...86400),
            enabled: r.bool("MEASUREMENT_ENABLED"),
            sensors: r.sensors("SENSORS"),
            sensorTimeout: r.seconds("SENSOR_TIMEOUT_SECONDS", 0.1...60))

        log = LogSettings(
            path: r.nonEmpty("LOG_PATH"),
            durability: r.choice("LOG_DURABILITY", LogDurabilitySetting.self),
            retentionSeconds: r.integer("LOG_RETENTION_SECONDS", 0...315_360_000),
            retentionRecords: r.integer("LOG_RETENTION_RECORDS", 0...1_000_000_000),
            maxBytes: r.bytes("LOG_MAX_BYTES", 0...(1 << 50)),
            quotaPolicy: r.choice("LOG_QUOTA_POLICY", QuotaPolicySetting.self))
        if log.maxBytes != 0 && log.maxBytes < 65536 {
            r.problems.append(.init(setting: "LOG_MAX_BYTES", value: source.values["LOG_MAX_BYTES"]?.value ?? "",
                                    source: source.values["LOG_MAX_BYTES"]?.source ?? .builtIn,
                                    allowed: "0 (no quota) or at least 64k: a smaller file cannot hold the log's own pages"))
        }

        redis = RedisSettings(
            enabled: r.bool("REDIS_ENABLE"), host: r.nonEmpty("REDIS_HOST"),
            port: Int(r.integer("REDIS_PORT", 1...65535)), database: Int(r.integer("REDIS_DB", 0...15)),
            streamMaxLength: Int(r.integer("REDIS_STREAM_MAXLEN", 100...10_000_000)))

        // Topics: the protocol's templates and environment names (Sync.TopicTemplates), so the
        // device and the backend read the same settings the same way.
        var topicEnv: [String: String] = [:]
        for (k, v) in source.values where k.hasPrefix("FIELDLOG_TOPIC_") || k.hasPrefix("MQTT_TOPIC_") { topicEnv[k] = v.value }
        var templates = TopicTemplates.defaults
        do { templates = try TopicTemplates.fromEnvironment(topicEnv) } catch {
            let name = error.description.split(separator: ":").first.map(String.init) ?? "FIELDLOG_TOPIC_*"
            let raw = source.values[name]
            r.problems.append(.init(setting: name, value: raw?.value ?? "", source: raw?.source ?? .builtIn, allowed: error.description))
        }
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
            port: Int(r.integer("MQTT_PORT", 1...65535)),
            keepAliveSeconds: Int(r.integer("MQTT_KEEPALIVE_SECONDS", 5...65535)),
            clientID: r.optional("MQTT_CLIENT_ID") ?? deviceID.rawValue,
            username: r.optional("MQTT_USERNAME") ?? deviceID.rawValue,
            password: r.optional("MQTT_PASSWORD"),
            tlsEnabled: tls, tlsInsecure: r.bool("MQTT_TLS_INSECURE"),
            tlsCACerts: r.readableFile("MQTT_TLS_CA_CERTS", needed: tls),
            tlsCertFile: r.readableFile("MQTT_TLS_CERTFILE", needed: tls),
            tlsKeyFile: r.readableFile("MQTT_TLS_KEYFILE", needed: tls),
            topics: topics)
        if tls && (mqtt.tlsCertFile == nil) != (mqtt.tlsKeyFile == nil) {
            r.problems.append(.init(setting: "MQTT_TLS_CERTFILE/MQTT_TLS_KEYFILE", value: mqtt.tlsCertFile ?? mqtt.tlsKeyFile ?? "",
                                    source: .environment, allowed: "set both (client certificate and its key) or neither"))
        }

        sync = SyncSettings(
            enabled: r.bool("SYNC_ENABLED"), interval: r.seconds("SYNC_INTERVAL_SECONDS", 0.05...3600),
            batchMaxRecords: Int(r.integer("SYNC_BATCH_MAX_RECORDS", 1...1000)),
            batchMaxBytes: Int(r.bytes("SYNC_BATCH_MAX_BYTES", 32768...262_144)),
            window: Int(r.integer("SYNC_WINDOW", 1...64)),
            resendTimeout: r.seconds("SYNC_RESEND_SECONDS", 0.5...3600),
            encoding: r.choice("SYNC_ENCODING", BatchEncoding.self))

        button = ButtonSettings(
            enabled: r.bool("BUTTON_ENABLE"), chip: r.nonEmpty("BUTTON_CHIP"),
            line: Int(r.integer("BUTTON_PIN", 0...1023)),
            bias: r.choice("BUTTON_PULL_UP_DOWN", ButtonBias.self, uppercase: true),
            edge: r.choice("BUTTON_EVENT", ButtonEdge.self, uppercase: true),
            bounce: .milliseconds(r.integer("BUTTON_BOUNCE_MILLIS", 0...10000)))

        commands = CommandSettings(
            rebootCommand: r.commandLine("COMMAND_REBOOT", allowEmpty: true),
            seenIDsMax: Int(r.integer("COMMAND_SEEN_IDS_MAX", 100...1_000_000)))

        status = StatusSettings(host: r.nonEmpty("STATUS_HTTP_HOST"), port: Int(r.integer("STATUS_HTTP_PORT", 0...65535)))
        logLevel = r.oneOf("LOG_LEVEL", ["trace", "debug", "info", "notice", "warning", "error", "critical"])
        self.source = source

        let all = source.problems + r.problems
        if !all.isEmpty { throw ConfigurationError(problems: all) }
    }

    /// The effective configuration as `KEY=value  # source` lines, secrets masked.
    public func effectiveDescription() -> String {
        var out: [String] = []
        var group = ""
        for s in Settings.all {
            if s.group != group {
                group = s.group
                out.append("# [\(group)]")
            }
            let raw = source.values[s.name]
            var value = raw?.value ?? ""
            if s.secret && !value.isEmpty { value = "********" }
            var derived = ""
            switch s.name {
            case "FIELDLOG_DEVICE_ID": derived = " (effective: \(identity.deviceID))"
            case "MQTT_CLIENT_ID": derived = raw == nil ? " (effective: \(mqtt.clientID))" : ""
            case "MQTT_USERNAME": derived = raw == nil ? " (effective: \(mqtt.username))" : ""
            case "FIELDLOG_TOPIC_BATCH": derived = " (effective: \(mqtt.topics.values))"
            case "FIELDLOG_TOPIC_ACK": derived = " (effective: \(mqtt.topics.ack))"
            case "FIELDLOG_TOPIC_STATUS": derived = " (effective: \(mqtt.topics.status))"
            case "FIELDLOG_TOPIC_REQUEST": derived = " (effective: \(mqtt.topics.request))"
            case "FIELDLOG_TOPIC_RESPONSE": derived = " (effective: \(mqtt.topics.response))"
            case "FIELDLOG_TOPIC_BROADCAST": derived = " (effective: \(mqtt.topics.broadcast))"
            default: break
            }
            out.append("\(s.name)=\(value)  # \(raw?.source.description ?? "unset")\(derived)")
        }
        return out.joined(separator: "\n")
    }
}

/// Reads typed values from the raw settings, collecting problems instead of stopping at the first.
struct Reader {
    let source: ConfigurationSource
    var problems: [ConfigurationProblem] = []

    init(source: ConfigurationSource) { self.source = source }

    private func raw(_ name: String) -> RawSetting {
        precondition(Settings.byName[name] != nil, "setting \(name) is not in the table")
        return source.values[name] ?? RawSetting(value: "", source: .builtIn)
    }

    private mutating func problem(_ name: String, _ allowed: String) {
        let r = raw(name)
        problems.append(.init(setting: name, value: r.value, source: r.source, allowed: allowed))
    }

    mutating func string(_ name: String) -> String { raw(name).value }

    mutating func optional(_ name: String) -> String? {
        let v = raw(name).value
        return v.isEmpty ? nil : v
    }

    mutating func nonEmpty(_ name: String) -> String {
        let v = raw(name).value.trimmed(.spaces)
        if v.isEmpty { problem(name, "must not be empty") }
        return v
    }

    mutating func bool(_ name: String) -> Bool {
        switch raw(name).value.trimmed(.spaces).lowercased() {
        case "1", "true", "yes", "on": return true
        case "0", "false", "no", "off": return false
        default:
            problem(name, "a boolean: true/false, 1/0, yes/no or on/off")
            return false
        }
    }

    mutating func integer(_ name: String, _ range: ClosedRange<Int64>) -> Int64 {
        let v = raw(name).value.trimmed(.spaces)
        guard let n = Int64(v), range.contains(n) else {
            problem(name, "a whole number in \(range.lowerBound)…\(range.upperBound)")
            return range.lowerBound
        }
        return n
    }

    /// Bytes with an optional k/M/G suffix (powers of 1024).
    mutating func bytes(_ name: String, _ range: ClosedRange<Int64>) -> Int64 {
        var v = raw(name).value.trimmed(.spaces)
        var factor: Int64 = 1
        switch v.last {
        case "k", "K": factor = 1024
        case "m", "M": factor = 1024 * 1024
        case "g", "G": factor = 1024 * 1024 * 1024
        default: break
        }
        if factor != 1 { v.removeLast() }
        guard let n = Int64(v), n >= 0, n <= Int64.max / factor, range.contains(n * factor) else {
            problem(name, "a size in bytes in \(range.lowerBound)…\(range.upperBound), optionally with suffix k, M or G")
            return range.lowerBound
        }
        return n * factor
    }

    mutating func seconds(_ name: String, _ range: ClosedRange<Double>) -> Duration {
        let v = raw(name).value.trimmed(.spaces)
        guard let d = Double(v), d.isFinite, range.contains(d) else {
            problem(name, "a number of seconds in \(range.lowerBound)…\(range.upperBound) (decimals allowed)")
            return .seconds(range.lowerBound)
        }
        return .milliseconds(Int64((d * 1000).rounded()))
    }

    mutating func choice<T: RawRepresentable & CaseIterable>(_ name: String, _: T.Type, uppercase: Bool = false) -> T where T.RawValue == String {
        var v = raw(name).value.trimmed(.spaces)
        v = uppercase ? v.uppercased() : v.lowercased()
        guard let c = T(rawValue: v) else {
            problem(name, "one of " + T.allCases.map(\.rawValue).joined(separator: ", ") + (uppercase ? " (case does not matter)" : ""))
            return T.allCases.first!
        }
        return c
    }

    mutating func oneOf(_ name: String, _ allowed: [String]) -> String {
        let v = raw(name).value.trimmed(.spaces).lowercased()
        guard allowed.contains(v) else {
            problem(name, "one of " + allowed.joined(separator: ", "))
            return allowed[0]
        }
        return v
    }

    mutating func readableFile(_ name: String, needed: Bool) -> String? {
        guard let v = optional(name) else { return nil }
        if needed && !FileManager.default.isReadableFile(atPath: v) {
            problem(name, "a readable file (it does not exist or cannot be read)")
        }
        return v
    }

    mutating func commandLine(_ name: String, allowEmpty: Bool) -> [String] {
        let v = raw(name).value
        do {
            let args = try CommandLineSplitter.split(v)
            if args.isEmpty && !allowEmpty { problem(name, "a command line") }
            return args
        } catch {
            problem(name, "a command line: \(error)")
            return []
        }
    }

    mutating func sensors(_ name: String) -> [SensorSpec] {
        let v = raw(name).value
        do { return try SensorSpec.parseList(v) } catch {
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
