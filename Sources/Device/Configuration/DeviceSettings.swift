// The settings `fieldlog-device` understands: one table (the schema of Settings' `SettingsTable`),
// used to resolve, to check, to print the effective configuration (`config check`) and to
// generate docs/device-configuration.md (`config reference`) and deploy/device/device.env.example
// (`config example`). DeviceConfiguration.swift reads it into typed values.
//
// The names are the seed's where it had the setting (MQTT_HOST, INTERVAL_SECONDS, …), so a
// seed device's environment keeps working; its topic names are aliases of the new ones.
import Logging
import Settings
import Sync

/// fieldlog-device's settings table.
public enum DeviceSettings {
    public static let table = SettingsTable(
        program: "fieldlog-device",
        referencePath: "docs/device-configuration.md",
        sourcePath: "Sources/Device/Configuration/DeviceSettings.swift",
        referenceIntro: """
        Every setting is a line `KEY=value` in the configuration file (`--config FILE` or
        `$FIELDLOG_CONFIG`), an environment variable of the same name, or `--set KEY=value` on the
        command line; the command line wins over the environment, the environment over the file,
        the file over the default. A setting's other names (the seed's) count when its own name is
        set nowhere. Every value is checked when the program starts; a bad one stops it with exit
        status 78 and a message naming the setting, the value, where it came from and what is
        allowed. `fieldlog-device config check` prints the effective configuration (secrets
        masked); `fieldlog-device config example` prints a commented file with every default
        (deploy/device/device.env.example). Operating a device: docs/device.md.
        """,
        emptyMeansUnset: false,
        settings: identity + sampling + log + redis + mqtt + sync + button + commands + status + process)

    static let identity: [Setting] = [
        Setting("FIELDLOG_DEVICE_ID", nil, group: "identity",
                "Device id (1…64 of A-Z a-z 0-9 . _ -); also the MQTT user name. Default: BALENA_DEVICE_UUID, else the host name."),
        Setting("BALENA_DEVICE_UUID", nil, group: "identity", "balena device UUID; the device id when FIELDLOG_DEVICE_ID is unset."),
        Setting("BALENA_DEVICE_TYPE", "", group: "identity", "balena device type (topic placeholder %(device_type)s)."),
        Setting("BALENA_APP_ID", "", group: "identity", "balena application id (topic placeholder %(app_id)s)."),
        Setting("BALENA_APP_NAME", "", group: "identity", "balena application name (topic placeholder %(app_name)s)."),
    ]

    static let sampling: [Setting] = [
        Setting("INTERVAL_SECONDS", "2", .seconds(0.01...86400), group: "sampling",
                "Seconds between readings; Redis key measurement:interval overrides it at runtime."),
        Setting("MEASUREMENT_ENABLED", "true", .bool, group: "sampling",
                "Whether sampling starts enabled; Redis key measurement:enabled overrides it at runtime."),
        Setting("SENSORS", "random=simulated", group: "sampling",
                "Sensors, `;`-separated `name=kind[:argument]`; kinds: simulated[:seed], iio:PATH (channel file or device dir), w1:ID-or-PATH, command:COMMAND LINE."),
        Setting("SENSOR_TIMEOUT_SECONDS", "5", .seconds(0.1...60), group: "sampling", "Longest a single sensor read (or command) may take."),
    ]

    static let log: [Setting] = [
        Setting("LOG_PATH", "/var/lib/fieldlog/device.sqlite3", .nonEmpty, group: "log", "The SQLite log file (put it on a persistent volume)."),
        Setting("LOG_DURABILITY", "full", .choice(LogDurabilitySetting.allCases.map(\.rawValue)), group: "log",
                "full (fsync before an append returns) or normal (may lose the last appends on power loss, never corrupts)."),
        Setting("LOG_RETENTION_SECONDS", "604800", .integer(0...315_360_000), group: "log",
                "Keep acknowledged records this long for replays, then trim."),
        Setting("LOG_RETENTION_RECORDS", "100000", .integer(0...1_000_000_000), group: "log", "Keep at most this many acknowledged records."),
        Setting("LOG_MAX_BYTES", "0", .bytes(0...(1 << 50)), group: "log",
                "Disk quota for the log file in bytes, 0 = none, else at least 64k."),
        Setting("LOG_QUOTA_POLICY", "stop", .choice(QuotaPolicySetting.allCases.map(\.rawValue)), group: "log",
                "At the quota: stop (appends fail, sampler pauses and says why) or drop-oldest (oldest unacked records dropped, loss marker kept)."),
    ]

    static let redis: [Setting] = [
        Setting("REDIS_ENABLE", "true", .bool, group: "redis", "Mirror readings and read runtime switches from Redis (never on the durability path)."),
        Setting("REDIS_HOST", "localhost", .nonEmpty, group: "redis", "Redis host."),
        Setting("REDIS_PORT", "6379", .integer(1...65535), group: "redis", "Redis port."),
        Setting("REDIS_DB", "0", .integer(0...15), group: "redis", "Redis database index."),
        Setting("REDIS_STREAM_MAXLEN", "10000", .integer(100...10_000_000), group: "redis", "Approximate cap of the stream measurement:values."),
    ]

    static let mqtt: [Setting] = [
        Setting("MQTT_ENABLE", "true", .bool, group: "mqtt", "Run the sync agent and command handler over MQTT."),
        Setting("MQTT_HOST", "localhost", .nonEmpty, group: "mqtt", "Broker host (the seed's public broker is deliberately not the default)."),
        Setting("MQTT_PORT", "1883", .integer(1...65535), group: "mqtt", "Broker port."),
        Setting("MQTT_KEEPALIVE_SECONDS", "60", .integer(5...65535), group: "mqtt", "MQTT keepalive in seconds."),
        Setting("MQTT_CLIENT_ID", nil, group: "mqtt", "MQTT client id; default: the device id (the persistent session is bound to it)."),
        Setting("MQTT_USERNAME", nil, group: "mqtt", "MQTT user name; default: the device id (the broker ACL expects that)."),
        Setting("MQTT_PASSWORD", nil, group: "mqtt", secret: true, "MQTT password."),
        Setting("MQTT_TLS_ENABLE", "false", .bool, group: "mqtt", "Use TLS."),
        Setting("MQTT_TLS_INSECURE", "false", .bool, group: "mqtt", "Skip the broker host name check (testing only)."),
        Setting("MQTT_TLS_CA_CERTS", nil, group: "mqtt", "CA certificate file (PEM) for TLS."),
        Setting("MQTT_TLS_CERTFILE", nil, group: "mqtt", "Client certificate (PEM) for TLS client auth."),
        Setting("MQTT_TLS_KEYFILE", nil, group: "mqtt", "Client key (PEM) for TLS client auth."),
    ] + Setting.topicTemplates(group: "mqtt")

    static let sync: [Setting] = [
        Setting("SYNC_ENABLED", "true", .bool, group: "sync", "Whether the sender starts enabled; Redis key mqtt_sender:enabled overrides it at runtime."),
        Setting("SYNC_INTERVAL_SECONDS", "1", .seconds(0.05...3600), group: "sync",
                "Seconds between send rounds; Redis key mqtt_sender:interval overrides it."),
        Setting("SYNC_BATCH_MAX_RECORDS", "500", .integer(1...1000), group: "sync", "Records per batch."),
        Setting("SYNC_BATCH_MAX_BYTES", "64k", .bytes(32768...262_144), group: "sync", "Bytes per batch (the protocol's limits: 32k…256k)."),
        Setting("SYNC_WINDOW", "16", .integer(1...64), group: "sync", "Batches in flight before waiting for an ack."),
        Setting("SYNC_RESEND_SECONDS", "5", .seconds(0.5...3600), group: "sync",
                "First resend timeout for an unacked batch; doubles per resend up to 300 s, and is back to this value after a reconnect or any ack progress. The oldest batch (the probe) is resent at least every max(this, 4 s) while unacked."),
        Setting("SYNC_ENCODING", "json", .choice(BatchEncoding.allCases.map(\.rawValue)), group: "sync",
                "How batches are encoded: json (readable, what every tool speaks) or compact (spec §3.7: columnar, delta-coded, zlib; about 2 bytes per one-sensor reading of a slowly changing sensor and 9 of a full-precision one, instead of 58–73; for metered links). Every Fieldlog ingest reads both; acks, replays and loss markers work the same; batches are cut by their JSON size either way. When to use which: docs/migrating-from-seed.md."),
    ]

    static let button: [Setting] = [
        Setting("BUTTON_ENABLE", "false", .bool, group: "button", "Watch a GPIO start/stop button (needs /dev/gpiochipN)."),
        Setting("BUTTON_CHIP", "gpiochip0", .nonEmpty, group: "button", "GPIO chip name or path."),
        Setting("BUTTON_PIN", "2", .integer(0...1023), group: "button", "GPIO line offset (BCM numbering on a Raspberry Pi)."),
        Setting("BUTTON_PULL_UP_DOWN", "UP", .choice(ButtonBias.allCases.map(\.rawValue)), group: "button", "Bias (needs kernel ≥ 5.5)."),
        Setting("BUTTON_EVENT", "FALLING", .choice(ButtonEdge.allCases.map(\.rawValue)), group: "button", "The edge that counts as a press."),
        Setting("BUTTON_BOUNCE_MILLIS", "20", .integer(0...10000), group: "button", "Debounce time in milliseconds."),
    ]

    static let commands: [Setting] = [
        Setting("COMMAND_REBOOT", "", group: "commands", "Command line run by the `reboot` command; empty = reboot disabled (the default)."),
        Setting("COMMAND_SEEN_IDS_MAX", "10000", .integer(100...1_000_000), group: "commands",
                "How many executed command ids are remembered for at-most-once."),
    ]

    static let status: [Setting] = [
        Setting("STATUS_HTTP_HOST", "127.0.0.1", .nonEmpty, group: "status", "Address of the local status page (loopback by default)."),
        Setting("STATUS_HTTP_PORT", "8080", .integer(0...65535), group: "status", "Port of the local status page, /status and /metrics; 0 = off."),
    ]

    static let process: [Setting] = [
        Setting("LOG_LEVEL", "info", .choice(Logger.Level.allCases.map(\.rawValue)), group: "process", "How much the program logs."),
    ]

    /// The example configuration file (deploy/device/device.env.example, `config example`):
    /// every setting with what it does and its default, commented out.
    public static func exampleFile() -> String {
        table.exampleFile(header: """
            # fieldlog-device configuration: KEY=value lines, `#` comments.
            # Environment variables of the same names override this file (so systemd's
            # EnvironmentFile=, docker's env_file and balena's device variables all work).
            # Every value is checked at start; `fieldlog-device config check` prints the effective
            # configuration with secrets masked. Lines below are the built-in defaults, commented out.

            """)
    }
}
