// The settings `fieldlog-device` understands: one table, used to parse, to validate, to
// print the effective configuration (`config check`) and to document (docs/device.md).
//
// Theory of operation: configuration comes from three layers, later ones winning:
// built-in defaults, a config file of `KEY=value` lines (the same names as the environment
// variables, so one file serves systemd's EnvironmentFile=, docker's env_file and this
// program), and the process environment. Every value is checked when the program starts;
// a bad value stops it with a message naming the setting, the value, where it came from and
// what is allowed. Nothing is read from the environment after start.

/// Where a setting's value came from.
public enum SettingSource: Hashable, Sendable, CustomStringConvertible {
    case builtIn
    case file(path: String, line: Int)
    case environment

    public var description: String {
        switch self {
        case .builtIn: return "default"
        case .file(let path, let line): return "\(path):\(line)"
        case .environment: return "environment"
        }
    }
}

/// One setting the device understands.
public struct SettingDefinition: Sendable {
    /// The environment variable / config file key, e.g. `MQTT_HOST`.
    public let name: String
    /// The value used when neither the file nor the environment sets it (nil: unset).
    public let defaultValue: String?
    /// What the setting does and what it allows, for `config check` and the docs.
    public let help: String
    /// Masked when printed (passwords).
    public let secret: Bool
    /// A group heading for printing.
    public let group: String

    init(_ name: String, _ defaultValue: String?, group: String, secret: Bool = false, _ help: String) {
        self.name = name
        self.defaultValue = defaultValue
        self.help = help
        self.secret = secret
        self.group = group
    }
}

/// The table of every setting, in the order `config check` prints them.
public enum Settings {
    public static let all: [SettingDefinition] = [
        // Identity
        .init("FIELDLOG_DEVICE_ID", nil, group: "identity",
              "Device id (1…64 of A-Z a-z 0-9 . _ -); also the MQTT user name. Default: BALENA_DEVICE_UUID, else the host name."),
        .init("BALENA_DEVICE_UUID", nil, group: "identity", "balena device UUID; the device id when FIELDLOG_DEVICE_ID is unset."),
        .init("BALENA_DEVICE_TYPE", "", group: "identity", "balena device type (topic placeholder %(device_type)s)."),
        .init("BALENA_APP_ID", "", group: "identity", "balena application id (topic placeholder %(app_id)s)."),
        .init("BALENA_APP_NAME", "", group: "identity", "balena application name (topic placeholder %(app_name)s)."),

        // Sampling
        .init("INTERVAL_SECONDS", "2", group: "sampling",
              "Seconds between readings (0.01…86400); Redis key measurement:interval overrides it at runtime."),
        .init("MEASUREMENT_ENABLED", "true", group: "sampling",
              "Whether sampling starts enabled; Redis key measurement:enabled overrides it at runtime."),
        .init("SENSORS", "random=simulated", group: "sampling",
              "Sensors, `;`-separated `name=kind[:argument]`; kinds: simulated[:seed], iio:PATH (channel file or device dir), w1:ID-or-PATH, command:COMMAND LINE."),
        .init("SENSOR_TIMEOUT_SECONDS", "5", group: "sampling", "Longest a single sensor read (or command) may take (0.1…60)."),

        // Log
        .init("LOG_PATH", "/var/lib/fieldlog/device.sqlite3", group: "log", "The SQLite log file (put it on a persistent volume)."),
        .init("LOG_DURABILITY", "full", group: "log", "full (fsync before an append returns) or normal (may lose the last appends on power loss, never corrupts)."),
        .init("LOG_RETENTION_SECONDS", "604800", group: "log", "Keep acknowledged records this long for replays (0…315360000), then trim."),
        .init("LOG_RETENTION_RECORDS", "100000", group: "log", "Keep at most this many acknowledged records (0…1000000000)."),
        .init("LOG_MAX_BYTES", "0", group: "log", "Disk quota for the log file in bytes, 0 = none. Suffixes k, M, G allowed."),
        .init("LOG_QUOTA_POLICY", "stop", group: "log", "At the quota: stop (appends fail, sampler pauses and says why) or drop-oldest (oldest unacked records dropped, loss marker kept)."),

        // Redis hot state
        .init("REDIS_ENABLE", "true", group: "redis", "Mirror readings and read runtime switches from Redis (never on the durability path)."),
        .init("REDIS_HOST", "localhost", group: "redis", "Redis host."),
        .init("REDIS_PORT", "6379", group: "redis", "Redis port (1…65535)."),
        .init("REDIS_DB", "0", group: "redis", "Redis database index (0…15)."),
        .init("REDIS_STREAM_MAXLEN", "10000", group: "redis", "Approximate cap of the stream measurement:values (100…10000000)."),

        // MQTT
        .init("MQTT_ENABLE", "true", group: "mqtt", "Run the sync agent and command handler over MQTT."),
        .init("MQTT_HOST", "localhost", group: "mqtt", "Broker host (the seed's public broker is deliberately not the default)."),
        .init("MQTT_PORT", "1883", group: "mqtt", "Broker port (1…65535)."),
        .init("MQTT_KEEPALIVE_SECONDS", "60", group: "mqtt", "MQTT keepalive (5…65535)."),
        .init("MQTT_CLIENT_ID", nil, group: "mqtt", "MQTT client id; default: the device id (the persistent session is bound to it)."),
        .init("MQTT_USERNAME", nil, group: "mqtt", "MQTT user name; default: the device id (the broker ACL expects that)."),
        .init("MQTT_PASSWORD", nil, group: "mqtt", secret: true, "MQTT password."),
        .init("MQTT_TLS_ENABLE", "false", group: "mqtt", "Use TLS."),
        .init("MQTT_TLS_INSECURE", "false", group: "mqtt", "Skip the broker host name check (testing only)."),
        .init("MQTT_TLS_CA_CERTS", nil, group: "mqtt", "CA certificate file (PEM) for TLS."),
        .init("MQTT_TLS_CERTFILE", nil, group: "mqtt", "Client certificate (PEM) for TLS client auth."),
        .init("MQTT_TLS_KEYFILE", nil, group: "mqtt", "Client key (PEM) for TLS client auth."),
        .init("FIELDLOG_TOPIC_BATCH", nil, group: "mqtt", "Batch topic template (default fieldlog/v1/devices/{device}/batch); placeholders {device} {device_type} {app_id} {app_name} or the seed's %(device_uuid)s forms, each a whole topic level."),
        .init("FIELDLOG_TOPIC_ACK", nil, group: "mqtt", "Ack topic template (default fieldlog/v1/devices/{device}/ack; retained, from the backend)."),
        .init("FIELDLOG_TOPIC_STATUS", nil, group: "mqtt", "Status topic template (default fieldlog/v1/devices/{device}/status; retained, with last will)."),
        .init("FIELDLOG_TOPIC_REQUEST", nil, group: "mqtt", "Command topic template (default fieldlog/v1/devices/{device}/request); MQTT_TOPIC_REQUEST also works."),
        .init("FIELDLOG_TOPIC_RESPONSE", nil, group: "mqtt", "Command response topic template (default fieldlog/v1/devices/{device}/response); MQTT_TOPIC_RESPONSE also works."),
        .init("FIELDLOG_TOPIC_BROADCAST", nil, group: "mqtt", "Broadcast command topic (default fieldlog/v1/broadcast/control); MQTT_TOPIC_BROADCAST also works."),
        .init("MQTT_TOPIC_REQUEST", nil, group: "mqtt", "The seed's name for FIELDLOG_TOPIC_REQUEST (e.g. iot-projekt/device/%(device_uuid)s/request)."),
        .init("MQTT_TOPIC_RESPONSE", nil, group: "mqtt", "The seed's name for FIELDLOG_TOPIC_RESPONSE."),
        .init("MQTT_TOPIC_BROADCAST", nil, group: "mqtt", "The seed's name for FIELDLOG_TOPIC_BROADCAST (e.g. iot-projekt/device/broadcast/control)."),
        .init("MQTT_TOPIC_VALUES", nil, group: "mqtt", "The seed's value-list topic: read by the backend from legacy seed devices; a Fieldlog device publishes numbered batches on FIELDLOG_TOPIC_BATCH instead (protocol §2.2)."),

        // Sync
        .init("SYNC_ENABLED", "true", group: "sync", "Whether the sender starts enabled; Redis key mqtt_sender:enabled overrides it at runtime."),
        .init("SYNC_INTERVAL_SECONDS", "1", group: "sync", "Seconds between send rounds (0.05…3600); Redis key mqtt_sender:interval overrides it."),
        .init("SYNC_BATCH_MAX_RECORDS", "500", group: "sync", "Records per batch (1…1000)."),
        .init("SYNC_BATCH_MAX_BYTES", "64k", group: "sync", "Bytes per batch (32k…256k, the protocol's limits). Suffixes k, M allowed."),
        .init("SYNC_WINDOW", "16", group: "sync", "Batches in flight before waiting for an ack (1…64)."),
        .init("SYNC_RESEND_SECONDS", "5", group: "sync", "First resend timeout for an unacked batch (0.5…3600); doubles per resend up to 300 s, and is back to this value after a reconnect or any ack progress. The oldest batch (the probe) is resent at least every max(this, 4 s) while unacked."),
        .init("SYNC_ENCODING", "json", group: "sync",
              "How batches are encoded: json (readable, what every tool speaks) or compact (spec §3.7: columnar, delta-coded, zlib; about 2 bytes per one-sensor reading of a slowly changing sensor and 9 of a full-precision one, instead of 58–73; for metered links). Every Fieldlog ingest reads both; acks, replays and loss markers work the same; batches are cut by their JSON size either way. When to use which: docs/migrating-from-seed.md."),

        // Button
        .init("BUTTON_ENABLE", "false", group: "button", "Watch a GPIO start/stop button (needs /dev/gpiochipN)."),
        .init("BUTTON_CHIP", "gpiochip0", group: "button", "GPIO chip name or path."),
        .init("BUTTON_PIN", "2", group: "button", "GPIO line offset (BCM numbering on a Raspberry Pi; 0…1023)."),
        .init("BUTTON_PULL_UP_DOWN", "UP", group: "button", "UP, DOWN or NONE (bias; needs kernel ≥ 5.5)."),
        .init("BUTTON_EVENT", "FALLING", group: "button", "RISING or FALLING: the edge that counts as a press."),
        .init("BUTTON_BOUNCE_MILLIS", "20", group: "button", "Debounce time in milliseconds (0…10000)."),

        // Commands
        .init("COMMAND_REBOOT", "", group: "commands", "Command line run by the `reboot` command; empty = reboot disabled (the default)."),
        .init("COMMAND_SEEN_IDS_MAX", "10000", group: "commands", "How many executed command ids are remembered for at-most-once (100…1000000)."),

        // Status server
        .init("STATUS_HTTP_HOST", "127.0.0.1", group: "status", "Address of the local status page (loopback by default)."),
        .init("STATUS_HTTP_PORT", "8080", group: "status", "Port of the local status page, /status and /metrics; 0 = off."),

        // Process
        .init("LOG_LEVEL", "info", group: "process", "trace, debug, info, notice, warning, error or critical."),
    ]

    static let byName: [String: SettingDefinition] = Dictionary(uniqueKeysWithValues: all.map { ($0.name, $0) })
}

extension Settings {
    /// A commented example configuration file: every setting with its help and default,
    /// commented out (deploy/device/device.env.example is made by `fieldlog-device config example`).
    public static func exampleFile() -> String {
        var out = """
        # fieldlog-device configuration: KEY=value lines, `#` comments.
        # Environment variables of the same names override this file (so systemd's
        # EnvironmentFile=, docker's env_file and balena's device variables all work).
        # Every value is checked at start; `fieldlog-device config check` prints the effective
        # configuration with secrets masked. Lines below are the built-in defaults, commented out.

        """
        var group = ""
        for s in all {
            if s.group != group {
                group = s.group
                out += "\n# ---- \(group) ----\n"
            }
            out += "# \(s.help)\n"
            out += "#\(s.name)=\(s.defaultValue ?? "")\n"
        }
        return out
    }
}

extension Settings {
    /// The configuration reference as Markdown: every setting with its default and help, by
    /// group (docs/device-configuration.md is made by `fieldlog-device config reference`, and
    /// DeviceTests.ConfigurationReferenceTests fails when the committed file differs).
    public static func referenceMarkdown() -> String {
        func cell(_ text: String) -> String {
            // A table cell: `|` would end the cell, a line break the row.
            text.replacing("|", with: "\\|").replacing("\n", with: " ")
        }
        var out = """
        # fieldlog-device configuration reference

        <!-- Generated by `fieldlog-device config reference` from Sources/Device/Configuration/Settings.swift.
             Do not edit by hand: Tests/DeviceTests/ConfigurationReferenceTests.swift fails when this file
             differs from what the code generates. -->

        Every setting is a line `KEY=value` in the configuration file (`--config FILE` or
        `$FIELDLOG_CONFIG`) or an environment variable of the same name; the environment wins over
        the file, the file over the default. Every value is checked when the program starts; a bad
        one stops it with exit status 78 and a message naming the setting, the value, where it came
        from and what is allowed. `fieldlog-device config check` prints the effective configuration
        (secrets masked); `fieldlog-device config example` prints a commented file with every
        default (deploy/device/device.env.example). Operating a device: docs/device.md.

        """
        var group = ""
        for s in all {
            if s.group != group {
                group = s.group
                out += "\n## \(group)\n\n| setting | default | what it does |\n|---|---|---|\n"
            }
            let value: String
            switch s.defaultValue {
            case nil: value = "(unset)"
            case ""?: value = "(empty)"
            case let v?: value = "`\(cell(v))`"
            }
            out += "| `\(s.name)` | \(value) | \(cell(s.help))\(s.secret ? " Secret: masked by `config check`." : "") |\n"
        }
        return out
    }
}
