// The settings `fieldlog-backend` understands: one table (Settings' `SettingsTable`), the
// schema its configuration is read, checked and documented by (docs/backend-configuration.md is
// generated from it by `fieldlog-backend config reference`). Configuration.swift (database,
// broker, topics, ingest) and WebAdmin's WebSettings.swift read it into typed values.
//
// Names follow the stack (`FIELDLOG_MARIADB_*`, `FIELDLOG_MQTT_*`) and read the seed's names
// (`MQTT_HOST`, `MQTT_PORT`, `MQTT_USERNAME`, `MQTT_PASSWORD`, `MQTT_KEEPALIVE_SECONDS`,
// `MQTT_TOPIC_*`) as aliases where the seed had the setting.
import Logging
import Settings
import Sync

/// fieldlog-backend's settings table.
package enum BackendSettings {
    package static let table = SettingsTable(
        program: "fieldlog-backend",
        referencePath: "docs/backend-configuration.md",
        sourcePath: "Sources/BackendStore/BackendSettings.swift",
        referenceIntro: """
        Every setting is an environment variable (systemd's `EnvironmentFile=`, docker's `env_file`:
        deploy/backend/backend.env.example), a line `KEY=value` of a configuration file (`--config
        FILE` or `$FIELDLOG_CONFIG`, the same names), or given on the command line (its option, or
        `--set KEY=value` for any); the command line wins over the environment, the environment over
        the file, the file over the default. A setting's other names (the seed's) count when its own
        name is set nowhere. An empty value counts as not set. Every value is checked before a
        command starts; a bad one stops it with a message naming the setting, the value, where it
        came from and what is allowed. `fieldlog-backend config check` prints the effective
        configuration (secrets masked). Operating the backend: docs/operating-backend.md.
        """,
        emptyMeansUnset: true,
        settings: mariadb + broker + Setting.topicTemplates(group: "topics") + ingest + web + process)

    static let mariadb: [Setting] = [
        Setting("FIELDLOG_MARIADB_ADDRESSES", nil, group: "mariadb", option: "--mariadb",
                "MariaDB servers in failover order, a comma-separated list of host[:port] (port default 3306); ingest moves to the next on connection loss. Unset: FIELDLOG_MARIADB_HOST and FIELDLOG_MARIADB_PORT."),
        Setting("FIELDLOG_MARIADB_HOST", "127.0.0.1", group: "mariadb", "The MariaDB server when FIELDLOG_MARIADB_ADDRESSES is unset."),
        Setting("FIELDLOG_MARIADB_PORT", "3306", .integer(1...65535), group: "mariadb", "Its port."),
        Setting("FIELDLOG_MARIADB_USER", "fieldlog", group: "mariadb", "MariaDB user."),
        Setting("FIELDLOG_MARIADB_PASSWORD", "", group: "mariadb", secret: true, "MariaDB password."),
        Setting("FIELDLOG_MARIADB_DATABASE", "fieldlog", group: "mariadb", option: "--database",
                "Database name: 1…64 characters A–Z a–z 0–9 _ $."),
    ]

    static let broker: [Setting] = [
        Setting("FIELDLOG_MQTT_HOST", "127.0.0.1", group: "broker", aliases: ["MQTT_HOST"], option: "--mqtt-host", "Broker host."),
        Setting("FIELDLOG_MQTT_PORT", "1883", .integer(1...65535), group: "broker", aliases: ["MQTT_PORT"], option: "--mqtt-port", "Broker port."),
        Setting("FIELDLOG_MQTT_BACKEND_USER", "fieldlog-backend", group: "broker", aliases: ["MQTT_USERNAME"],
                "The backend's MQTT user name (the broker's ACL gives it the backend's topics)."),
        Setting("FIELDLOG_MQTT_BACKEND_PASSWORD", "", group: "broker", aliases: ["MQTT_PASSWORD"], secret: true, "The backend's MQTT password."),
        Setting("FIELDLOG_MQTT_KEEPALIVE_SECONDS", "30", .integer(5...3600), group: "broker", aliases: ["MQTT_KEEPALIVE_SECONDS"],
                "MQTT keepalive in seconds."),
    ]

    static let ingest: [Setting] = [
        Setting("FIELDLOG_INGEST_GROUP", "fieldlog-ingest", group: "ingest",
                "Shared-subscription group: the broker splits the devices' messages over the ingest processes of one group (every process of an installation uses the same). A share name without / + #."),
        Setting("FIELDLOG_INGEST_MAX_BATCHES_PER_TRANSACTION", "512", .integer(1...1000), group: "ingest",
                "Most batches committed in one transaction (group commit: a fleet of many devices sends many small batches, and each group pays one commit; docs/benchmarks.md)."),
        Setting("FIELDLOG_INGEST_MAX_QUEUED_BYTES", "33554432", .bytes((1 << 20)...(4 << 30)), group: "ingest",
                "Bytes of messages held waiting for the database; above it reading from the broker pauses until half is written (backpressure: the broker keeps the rest in this process's session)."),
        Setting("FIELDLOG_INGEST_MAX_QUEUED_BYTES_PER_DEVICE", "4194304", .bytes(Int64(ProtocolLimits.maxMessageBytes)...(4 << 30)), group: "ingest",
                "One device's share of that queue; its messages beyond it are dropped unacked (the device resends), so one device cannot take the queue from the others."),
        Setting("FIELDLOG_INGEST_UNKNOWN_ERROR_ATTEMPTS", "3", .integer(1...100), group: "ingest",
                "Attempts at a transaction failing for an unknown reason before the message at fault is isolated and kept aside as a dead letter."),
        Setting("FIELDLOG_INGEST_SESSION_EXPIRY_SECONDS", "300", .integer(10...86_400), group: "ingest",
                "How long the broker keeps the seed-values session (and its messages) while the process is away."),
        Setting("FIELDLOG_INGEST_CLIENT_ID", nil, group: "ingest",
                "MQTT client id of the seed-values subscription (stable per process: its persistent session keeps seed messages across restarts; every process needs its own); at most 128 bytes without / + #. Unset: fieldlog-backend-ingest-<host>-<FIELDLOG_INGEST_INSTANCE>."),
        Setting("FIELDLOG_INGEST_INSTANCE", "1", group: "ingest",
                "This process's instance in the default client id (the systemd units set it from their instance name); 1…32 printable ASCII characters without / + #."),
        Setting("FIELDLOG_METRICS_PORT", "9464", .integer(0...65535), group: "ingest", option: "--metrics-port",
                "Port of GET /metrics (Prometheus text) and /health; 0 = off."),
        Setting("FIELDLOG_METRICS_HOST", "127.0.0.1", group: "ingest", "Address the metrics endpoint binds to."),
    ]

    static let web: [Setting] = [
        Setting("FIELDLOG_WEB_HOST", "127.0.0.1", group: "web", option: "--web-host",
                "Address the web admin serves on (put a TLS proxy in front for remote use)."),
        Setting("FIELDLOG_WEB_PORT", "8080", .integer(1...65535), group: "web", option: "--web-port", "Port the web admin serves on."),
        Setting("FIELDLOG_WEB_INSECURE_COOKIES", "0", .bool, group: "web", option: "--insecure-cookies",
                "Session cookies without Secure (sent over plain http too): only for plain http on loopback."),
        Setting("FIELDLOG_WEB_SESSION_SECONDS", "43200", .integer(300...2_592_000), group: "web", "How long a session lives after sign-in."),
        Setting("FIELDLOG_WEB_COMMAND_TIMEOUT_SECONDS", "30", .integer(1...3600), group: "web",
                "How long the pages wait for a device's answer to a command before showing it as timed out."),
        Setting("FIELDLOG_WEB_SILENT_AFTER_SECONDS", "600", .integer(10...2_592_000), group: "web",
                "A device is shown as silent when nothing arrived for this long."),
        Setting("FIELDLOG_WEB_BCRYPT_COST", "12", .integer(4...16), group: "web", "bcrypt cost of new password hashes."),
        Setting("FIELDLOG_WEB_FLEET_CACHE_SECONDS", "10", .integer(0...300), group: "web",
                "How old the fleet overview's snapshot may be before a request reads the fleet anew (0: every request; docs/web-admin.md, \"A large fleet\")."),
        Setting("FIELDLOG_WEB_LIVE_MAX_STREAMS", "200", .integer(1...10_000), group: "web",
                "Live pages served at once by one web process; more get 503 (the page still works, without live updates)."),
        Setting("FIELDLOG_WEB_SIGNIN_CONCURRENCY", "4", .integer(1...64), group: "web",
                "Password checks at once (bcrypt is CPU-bound by design); more get 429."),
        Setting("FIELDLOG_WEB_TRUSTED_PROXIES", nil, group: "web",
                "Comma-separated IP addresses of TLS proxies whose X-Forwarded-For names the client. Unset: none."),
        Setting("FIELDLOG_WEB_CONFIG_KEYS", "measurement:interval,measurement:enabled,mqtt_sender:interval,mqtt_sender:enabled", group: "web",
                "Comma-separated device config keys the pages offer for get/set (the device enforces its own allow-list too); each at most 128 bytes."),
    ]

    static let process: [Setting] = [
        Setting("FIELDLOG_LOG_LEVEL", "info", .choice(Logger.Level.allCases.map(\.rawValue)), group: "process", option: "--log-level",
                "How much the program logs (to standard error)."),
    ]
}
