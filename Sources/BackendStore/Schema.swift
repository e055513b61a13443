// The MariaDB schema of the backend and its versioned migrations.
//
// Theory of operation: `schema_migrations` holds one row per applied migration. `migrate`
// reads the highest applied version; a version above `Schema.migrations.last` means the
// database was upgraded by a newer program, and this one refuses to touch it. Missing
// migrations are applied in order, each followed by its version row. DDL in MariaDB commits
// implicitly, so every statement is written to be re-runnable (IF NOT EXISTS, OR REPLACE):
// a migration interrupted half-way is finished by the next `migrate`.
//
// Write-path design for Galera (issue 11): no row is updated by every batch. A batch inserts
// its readings, its loss markers and one immutable `batch_ranges` row in one transaction;
// progress (stored-through, highest seen, gaps) is derived from `batch_ranges`, never kept in
// a counter. See Coverage.swift and docs/backend.md.
import FieldlogCore
import Foundation
import Logging
import MariaDB

/// One schema change, applied once per database.
package struct Migration: Sendable {
    package var version: Int
    package var name: String
    package var statements: [String]
    /// Work on the data between `statements` and `finally` (may take long; repeatable).
    package var data: (@Sendable (MariaDBConnection, Logger) async throws -> Void)? = nil
    /// The short switch-over after the data step (run by `migrate`, never by `migrate --prepare`).
    package var switchOver: (@Sendable (MariaDBConnection, Logger) async throws -> Void)? = nil
    /// Whether `migrate --prepare` may run `statements` and `data` ahead of the switch-over,
    /// while ingest processes of the previous version keep writing.
    package var preparable: Bool { data != nil }
}

/// The schema this program knows.
package enum Schema {
    /// Device ids are ASCII (DeviceID allows A–Z a–z 0–9 . _ -) and compared byte for byte.
    package static let deviceColumn = "VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL"
    package static let sensorColumn = "VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL"

    package static let migrations: [Migration] = [
        Migration(version: 1, name: "tables: devices, epochs, readings, values, ranges, losses, dead letters, legacy, commands", statements: [
            """
            CREATE TABLE IF NOT EXISTS devices (
              device_id \(deviceColumn) PRIMARY KEY,
              protocol ENUM('fieldlog','legacy') NOT NULL,
              first_seen_at DATETIME(3) NOT NULL,
              device_type VARCHAR(128) NULL,
              app_id VARCHAR(128) NULL,
              app_name VARCHAR(128) NULL,
              status_state VARCHAR(16) NULL,
              status_epoch BIGINT UNSIGNED NULL,
              status_head BIGINT UNSIGNED NULL,
              status_acked BIGINT UNSIGNED NULL,
              status_measuring TINYINT(1) NULL,
              status_device_ms BIGINT NULL,
              status_received_at DATETIME(3) NULL
            ) ENGINE=InnoDB
            """,
            """
            CREATE TABLE IF NOT EXISTS epochs (
              device_id \(deviceColumn),
              epoch BIGINT UNSIGNED NOT NULL,
              first_seen_at DATETIME(3) NOT NULL,
              reported_head BIGINT UNSIGNED NOT NULL DEFAULT 0,
              reported_at DATETIME(3) NULL,
              PRIMARY KEY (device_id, epoch)
            ) ENGINE=InnoDB
            """,
            """
            CREATE TABLE IF NOT EXISTS readings (
              device_id \(deviceColumn),
              epoch BIGINT UNSIGNED NOT NULL,
              seq BIGINT UNSIGNED NOT NULL,
              device_ms BIGINT NOT NULL,
              device_time DATETIME(3) NULL,
              clock_unsynchronized TINYINT(1) NOT NULL,
              received_at DATETIME(3) NOT NULL,
              missing_sensors VARCHAR(4200) CHARACTER SET ascii NULL,
              PRIMARY KEY (device_id, epoch, seq),
              KEY readings_by_time (device_id, device_time)
            ) ENGINE=InnoDB
            """,
            """
            CREATE TABLE IF NOT EXISTS reading_values (
              device_id \(deviceColumn),
              epoch BIGINT UNSIGNED NOT NULL,
              seq BIGINT UNSIGNED NOT NULL,
              sensor \(sensorColumn),
              device_time DATETIME(3) NULL,
              num_value DOUBLE NULL,
              text_value VARCHAR(256) NULL,
              PRIMARY KEY (device_id, epoch, seq, sensor),
              KEY values_by_sensor_time (device_id, sensor, device_time)
            ) ENGINE=InnoDB
            """,
            """
            CREATE TABLE IF NOT EXISTS batch_ranges (
              device_id \(deviceColumn),
              epoch BIGINT UNSIGNED NOT NULL,
              first_seq BIGINT UNSIGNED NOT NULL,
              last_seq BIGINT UNSIGNED NOT NULL,
              stored_at DATETIME(3) NOT NULL,
              compacted TINYINT(1) NOT NULL DEFAULT 0,
              PRIMARY KEY (device_id, epoch, first_seq, last_seq),
              KEY ranges_by_last (device_id, epoch, last_seq)
            ) ENGINE=InnoDB
            """,
            """
            CREATE TABLE IF NOT EXISTS loss_ranges (
              device_id \(deviceColumn),
              epoch BIGINT UNSIGNED NOT NULL,
              first_seq BIGINT UNSIGNED NOT NULL,
              last_seq BIGINT UNSIGNED NOT NULL,
              reason VARCHAR(32) CHARACTER SET ascii NOT NULL,
              detail VARCHAR(1024) NOT NULL,
              device_recorded_ms BIGINT NOT NULL,
              received_at DATETIME(3) NOT NULL,
              PRIMARY KEY (device_id, epoch, first_seq, last_seq)
            ) ENGINE=InnoDB
            """,
            """
            CREATE TABLE IF NOT EXISTS dead_letters (
              id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
              received_at DATETIME(3) NOT NULL,
              topic VARCHAR(512) NOT NULL,
              reason VARCHAR(32) CHARACTER SET ascii NOT NULL,
              detail VARCHAR(1024) NOT NULL,
              device_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,
              epoch BIGINT UNSIGNED NULL,
              seq BIGINT UNSIGNED NULL,
              payload_bytes INT UNSIGNED NOT NULL,
              payload_head VARBINARY(1024) NOT NULL,
              UNIQUE KEY dead_letters_rejected_record (device_id, epoch, seq),
              KEY dead_letters_by_reason (reason, received_at)
            ) ENGINE=InnoDB
            """,
            """
            CREATE TABLE IF NOT EXISTS legacy_readings (
              device_id \(deviceColumn),
              stream_id VARCHAR(41) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
              device_ms BIGINT NOT NULL,
              device_time DATETIME(3) NULL,
              received_at DATETIME(3) NOT NULL,
              PRIMARY KEY (device_id, stream_id),
              KEY legacy_by_time (device_id, device_time)
            ) ENGINE=InnoDB
            """,
            """
            CREATE TABLE IF NOT EXISTS legacy_values (
              device_id \(deviceColumn),
              stream_id VARCHAR(41) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
              sensor \(sensorColumn),
              device_time DATETIME(3) NULL,
              num_value DOUBLE NULL,
              text_value VARCHAR(256) NULL,
              PRIMARY KEY (device_id, stream_id, sensor),
              KEY legacy_values_by_sensor_time (device_id, sensor, device_time)
            ) ENGINE=InnoDB
            """,
            """
            CREATE TABLE IF NOT EXISTS commands (
              request_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
              device_id \(deviceColumn),
              command VARCHAR(32) CHARACTER SET ascii NOT NULL,
              epoch BIGINT UNSIGNED NULL,
              first_seq BIGINT UNSIGNED NULL,
              last_seq BIGINT UNSIGNED NULL,
              payload TEXT NOT NULL,
              sent_at DATETIME(3) NOT NULL,
              response_at DATETIME(3) NULL,
              outcome VARCHAR(32) NULL,
              response TEXT NULL,
              KEY commands_by_device (device_id, sent_at)
            ) ENGINE=InnoDB
            """,
            """
            CREATE TABLE IF NOT EXISTS command_responses (
              id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
              device_id \(deviceColumn),
              request_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,
              command VARCHAR(64) NOT NULL,
              ok TINYINT(1) NOT NULL,
              received_at DATETIME(3) NOT NULL,
              payload TEXT NOT NULL,
              KEY responses_by_device (device_id, received_at),
              KEY responses_by_request (request_id)
            ) ENGINE=InnoDB
            """,
        ]),
        Migration(version: 2, name: "views: sensor_values (one row per device, time, sensor, value) and epoch_progress", statements: [
            """
            CREATE OR REPLACE VIEW sensor_values AS
              SELECT v.device_id, v.device_time AS time, v.sensor, v.num_value, v.text_value,
                     'fieldlog' AS source, v.epoch, v.seq
                FROM reading_values v
              UNION ALL
              SELECT l.device_id, l.device_time AS time, l.sensor, l.num_value, l.text_value,
                     'legacy' AS source, NULL AS epoch, NULL AS seq
                FROM legacy_values l
            """,
            // Gaps and islands over batch_ranges: a range starts a gap when its first number is
            // above 1 + the highest last number of the ranges before it (ordered by first).
            """
            CREATE OR REPLACE VIEW epoch_progress AS
              SELECT device_id, epoch,
                     COALESCE(MIN(CASE WHEN first_seq > covered_before + 1 THEN covered_before END), MAX(last_seq)) AS stored_through,
                     MAX(last_seq) AS highest_seen,
                     MAX(stored_at) AS last_stored_at,
                     COUNT(*) AS range_rows
                FROM (SELECT device_id, epoch, first_seq, last_seq, stored_at,
                             COALESCE(MAX(last_seq) OVER (PARTITION BY device_id, epoch ORDER BY first_seq, last_seq
                                                         ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS covered_before
                        FROM batch_ranges) r
               GROUP BY device_id, epoch
            """,
        ]),
        // Web admin (Web/): its users, their server-side sessions, and who sent each command.
        Migration(version: 3, name: "web admin: users, sessions, commands.sent_by", statements: [
            """
            CREATE TABLE IF NOT EXISTS web_users (
              user_name VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
              password_hash VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
              created_at DATETIME(3) NOT NULL,
              updated_at DATETIME(3) NOT NULL
            ) ENGINE=InnoDB
            """,
            """
            CREATE TABLE IF NOT EXISTS web_sessions (
              token CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
              user_name VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
              csrf_token CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
              created_at DATETIME(3) NOT NULL,
              expires_at DATETIME(3) NOT NULL,
              KEY web_sessions_by_user (user_name),
              KEY web_sessions_by_expiry (expires_at)
            ) ENGINE=InnoDB
            """,
            "ALTER TABLE commands ADD COLUMN IF NOT EXISTS sent_by VARCHAR(64) NULL",
        ]),
        // Web admin roles (viewer reads, operator also sends commands, admin also manages users),
        // disabled users, and the activity trail: who sent which command, who changed which user.
        // Users from version 3 become operators: exactly what they could do before.
        Migration(version: 4, name: "web admin: user roles, disabled users, activity trail", statements: [
            "ALTER TABLE web_users ADD COLUMN IF NOT EXISTS role ENUM('viewer','operator','admin') NOT NULL DEFAULT 'operator'",
            "ALTER TABLE web_users ADD COLUMN IF NOT EXISTS disabled_at DATETIME(3) NULL",
            """
            CREATE TABLE IF NOT EXISTS web_activity (
              id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
              at DATETIME(3) NOT NULL,
              actor VARCHAR(80) NOT NULL,
              action VARCHAR(32) CHARACTER SET ascii NOT NULL,
              target VARCHAR(128) NOT NULL,
              detail VARCHAR(1024) NOT NULL,
              request_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,
              KEY web_activity_by_time (at),
              KEY web_activity_by_target (target, at)
            ) ENGINE=InnoDB
            """,
        ]),
        // Ingest hardening: every ingest process takes every seed message (a persistent,
        // non-shared subscription); a dead letter they all write is kept once (spec §6.3).
        Migration(version: 5, name: "dead_letters.dedup_key: one dead letter for a message every ingest process receives", statements: [
            "ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS dedup_key BINARY(16) NULL",
            "CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_dedup ON dead_letters (dedup_key)",
        ]),
        // Data budget (issue 19): each device's MQTT bytes per UTC day, from its status messages
        // (spec §3.4). A device's count starts again at 0 after a restart, so a day keeps the
        // larger figure of each direction.
        Migration(version: 6, name: "device_data_usage: MQTT bytes per device and day", statements: [
            """
            CREATE TABLE IF NOT EXISTS device_data_usage (
              device_id \(deviceColumn),
              day DATE NOT NULL,
              sent_bytes BIGINT UNSIGNED NOT NULL,
              received_bytes BIGINT UNSIGNED NOT NULL,
              updated_at DATETIME(3) NOT NULL,
              PRIMARY KEY (device_id, day)
            ) ENGINE=InnoDB
            """,
        ]),
        // Issue 17: one row per reading. A reading's values move into `readings.vals` (a JSON
        // array); `reading_values` becomes a view over it with the same columns, so queries keep
        // working; `device_sensors` lists each device's sensors without scanning its readings.
        // Upgrading a database with data: `migrate --prepare` (ingest keeps running) adds the
        // column and fills it; `migrate` (ingest stopped) fills what was written since and
        // switches the table for the view (docs/operating-backend.md, "Upgrading to schema 7").
        Migration(version: 7, name: "readings.vals: one row per reading; reading_values a view; device_sensors", statements: [
            "ALTER TABLE readings ADD COLUMN IF NOT EXISTS vals MEDIUMTEXT NULL",
            // Schema 8's column, here too: schema 7's data step writes schema 8's form.
            "ALTER TABLE readings ADD COLUMN IF NOT EXISTS texts MEDIUMTEXT NULL",
            """
            CREATE TABLE IF NOT EXISTS device_sensors (
              device_id \(deviceColumn),
              sensor \(sensorColumn),
              PRIMARY KEY (device_id, sensor)
            ) ENGINE=InnoDB
            """,
        ], data: { connection, logger in try await ReadingValuesMove(connection: connection, logger: logger).run() },
        switchOver: { connection, logger in try await ReadingValuesMove(connection: connection, logger: logger).switchOver() }),
        // Issue 17: `readings.vals` becomes a JSON object from sensor name to number
        // (`{"hum":40.1,"temp":21.5}`) and texts move to `readings.texts` (`{"state":"on"}`, NULL
        // when none), so one sensor is `JSON_VALUE(vals, '$.temp')` and an average needs no type
        // test — about half the cost of `reading_values`' JSON_TABLE over schema 7's array, which
        // made the queries of Grafana and the web admin slower than schema 6's table
        // (docs/benchmarks.md, "Queries"). Upgrading:
        // `migrate --prepare` (ingest of schema 7 keeps writing arrays) puts a view over both forms
        // in place and rewrites the arrays; `migrate` (ingest stopped) rewrites the rest and
        // installs the view over objects (docs/operating-backend.md, "Upgrading to schema 8").
        Migration(version: 8, name: "readings.vals: numbers keyed by sensor; readings.texts", statements: [
            "ALTER TABLE readings ADD COLUMN IF NOT EXISTS texts MEDIUMTEXT NULL",
        ],
                  data: { connection, logger in try await ValsToObjects(connection: connection, logger: logger).run() },
                  switchOver: { connection, logger in try await ValsToObjects(connection: connection, logger: logger).switchOver() }),
        // Issue 17: `readings.vals` a VARCHAR of ASCII instead of MEDIUMTEXT: the server reads it
        // in the row instead of through a blob buffer per row (the 24-hour query of one sensor
        // ~15 % less server time). `migrate --prepare` copies into a new column beside ingest of
        // schema 8; `migrate` swaps the columns (instant) (ValsColumn.swift,
        // docs/operating-backend.md, "Upgrading to schema 9").
        Migration(version: 9, name: "readings.vals: VARCHAR(6000) of ASCII", statements: [ValsToVarchar.addColumn],
                  data: { connection, logger in try await ValsToVarchar(connection: connection, logger: logger).run() },
                  switchOver: { connection, logger in try await ValsToVarchar(connection: connection, logger: logger).switchOver() }),
    ]

    package static var latestVersion: Int { migrations.last!.version }
}

/// Why `migrate` (or a command that needs the schema) cannot go on.
package struct SchemaError: Error, CustomStringConvertible {
    package var description: String
    package init(description: String) { self.description = description }
}

/// Applies the migrations.
package struct Migrator {
    package var connection: MariaDBConnection
    package var logger: Logger = Logger(label: "fieldlog.migrate")

    package init(connection: MariaDBConnection, logger: Logger = Logger(label: "fieldlog.migrate")) {
        self.connection = connection
        self.logger = logger
    }

    package static let createVersionTable = """
        CREATE TABLE IF NOT EXISTS schema_migrations (
          version INT NOT NULL PRIMARY KEY,
          name VARCHAR(255) NOT NULL,
          applied_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)
        ) ENGINE=InnoDB
        """

    /// The highest applied version, 0 for an empty database.
    package func currentVersion() async throws -> Int {
        try await connection.query(Self.createVersionTable)
        let result = try await connection.query("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        return Int(result.rows.first?.first?.int64 ?? 0)
    }

    /// Applies what is missing; returns the versions applied (empty when up to date).
    @discardableResult
    package func migrate() async throws -> [Int] {
        let current = try await currentVersion()
        guard current <= Schema.latestVersion else {
            throw SchemaError(description: "the database schema is at version \(current), newer than this fieldlog-backend knows (\(Schema.latestVersion)); upgrade fieldlog-backend, it will not touch a newer schema")
        }
        var applied: [Int] = []
        for migration in Schema.migrations where migration.version > current {
            for statement in migration.statements {
                try await connection.query(statement)
            }
            try await migration.data?(connection, logger)
            try await migration.switchOver?(connection, logger)
            try await connection.execute("INSERT IGNORE INTO schema_migrations (version, name) VALUES (?, ?)",
                                         [.int(Int64(migration.version)), .string(migration.name)])
            applied.append(migration.version)
        }
        return applied
    }

    /// `migrate --prepare`: the long, repeatable part of the next pending migrations that allow
    /// it (their statements and data steps, not their switch-over and not their version row),
    /// while ingest processes of the previous version keep running. Applies the migrations
    /// before them as `migrate` would. Returns what it prepared.
    @discardableResult
    package func prepare() async throws -> [Int] {
        let current = try await currentVersion()
        guard current <= Schema.latestVersion else {
            throw SchemaError(description: "the database schema is at version \(current), newer than this fieldlog-backend knows (\(Schema.latestVersion))")
        }
        var prepared: [Int] = []
        for migration in Schema.migrations where migration.version > current {
            guard migration.preparable else {
                guard prepared.isEmpty else { break }
                try await Migrator(connection: connection, logger: logger).migrate(upTo: migration.version)
                continue
            }
            for statement in migration.statements { try await connection.query(statement) }
            try await migration.data?(connection, logger)
            prepared.append(migration.version)
        }
        return prepared
    }

    /// Applies the pending migrations up to `version` (tests that build an older schema).
    @discardableResult
    package func migrate(upTo version: Int) async throws -> [Int] {
        let current = try await currentVersion()
        var applied: [Int] = []
        for migration in Schema.migrations where migration.version > current && migration.version <= version {
            for statement in migration.statements { try await connection.query(statement) }
            try await migration.data?(connection, logger)
            try await migration.switchOver?(connection, logger)
            try await connection.execute("INSERT IGNORE INTO schema_migrations (version, name) VALUES (?, ?)",
                                         [.int(Int64(migration.version)), .string(migration.name)])
            applied.append(migration.version)
        }
        return applied
    }

    /// Throws unless the schema is exactly the one this program knows (ingest, audit, replay).
    package func requireCurrent() async throws {
        let current = try await currentVersion()
        if current < Schema.latestVersion {
            throw SchemaError(description: "the database schema is at version \(current), this fieldlog-backend needs \(Schema.latestVersion): run `fieldlog-backend migrate`")
        }
        if current > Schema.latestVersion {
            throw SchemaError(description: "the database schema is at version \(current), newer than this fieldlog-backend knows (\(Schema.latestVersion)); upgrade fieldlog-backend")
        }
    }
}

/// A data step's walk: for each (device, epoch) that `logsQuery` returns with its lowest and
/// highest sequence number, one `update` per window of `window` sequence numbers (binds: device,
/// epoch, first, last). One short statement each: no long lock, no long transaction, so ingest
/// of the previous version keeps writing meanwhile. Returns the rows changed.
func updateInWindows(_ connection: MariaDBConnection, logsQuery: String, window: UInt64, update: String) async throws -> UInt64 {
    var changed: UInt64 = 0
    for log in try await connection.query(logsQuery).rows {
        guard let device = log[0].string, let epoch = log[1].uint64, let low = log[2].uint64, let high = log[3].uint64 else { continue }
        var first = low
        while first <= high {
            let last = min(high, first + window - 1)
            changed += try await connection.execute(update, [.string(device), .uint(epoch), .uint(first), .uint(last)]).affectedRows
            if last == high { break }
            first = last + 1
        }
    }
    return changed
}

/// Schema 7's data step: every reading's values from the `reading_values` table into
/// `readings.vals` (written in schema 8's form, an object, so an upgrade from 6 rewrites once), and every device's sensors into `device_sensors`. Walks each (device,
/// epoch) in windows of sequence numbers, one short statement per window (no long lock, no
/// long transaction: ingest processes of the previous version keep writing meanwhile), and
/// only fills rows still without `vals`, so running it again finishes what was written since.
package struct ReadingValuesMove {
    package var connection: MariaDBConnection
    package var logger: Logger
    package var window: UInt64 = 20_000

    package func run() async throws {
        // Nothing to move when `reading_values` is already the view (a fresh database made by
        // this version has the view from the start: no base table to read from).
        let kind = try await connection.query("""
            SELECT TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'reading_values'
            """).rows.first?.first?.string
        guard kind == "BASE TABLE" else { return }
        try await connection.query("INSERT IGNORE INTO device_sensors (device_id, sensor) SELECT DISTINCT device_id, sensor FROM reading_values")
        let start = ContinuousClock.now
        let filled = try await updateInWindows(connection, logsQuery: "SELECT device_id, epoch, MIN(seq), MAX(seq) FROM readings GROUP BY device_id, epoch",
                                               window: window, update: """
            UPDATE readings r SET
              r.vals = (SELECT CONCAT('{', COALESCE(GROUP_CONCAT(\(ValsToObjects.member("v.sensor", "v.num_value")) ORDER BY v.sensor SEPARATOR ','), ''), '}')
                          FROM reading_values v WHERE v.device_id = r.device_id AND v.epoch = r.epoch AND v.seq = r.seq AND v.num_value IS NOT NULL),
              r.texts = (SELECT CONCAT('{', GROUP_CONCAT(\(ValsToObjects.member("v.sensor", "v.text_value")) ORDER BY v.sensor SEPARATOR ','), '}')
                           FROM reading_values v WHERE v.device_id = r.device_id AND v.epoch = r.epoch AND v.seq = r.seq AND v.num_value IS NULL)
             WHERE r.device_id = ? AND r.epoch = ? AND r.seq BETWEEN ? AND ? AND r.vals IS NULL
            """)
        logger.info("schema 7: \(filled) readings got their values in \(ContinuousClock.now - start)")
    }

    /// With ingest stopped, after `run` filled what was written since `--prepare` (or
    /// everything): check nothing is missing, then put the view in the table's place. The table is kept as `reading_values_v6` when it held rows (drop it
    /// once satisfied: docs/operating-backend.md); an empty one (a new database) is dropped.
    package func switchOver() async throws {
        let start = ContinuousClock.now
        let kind = try await connection.query("""
            SELECT TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'reading_values'
            """).rows.first?.first?.string
        if kind == "BASE TABLE" {
            // Every reading has its values now: a row of the old table without its JSON item would be a loss.
            let missing = try await connection.query("SELECT COUNT(*) FROM readings WHERE vals IS NULL").rows.first?.first?.int64 ?? 0
            guard missing == 0 else { throw SchemaError(description: "schema 7: \(missing) readings still have no values; run `fieldlog-backend migrate` again") }
            let old = try await connection.query("SELECT COUNT(*) FROM reading_values").rows.first?.first?.int64 ?? 0
            let moved = try await connection.query("SELECT COALESCE(SUM(JSON_LENGTH(vals) + COALESCE(JSON_LENGTH(texts), 0)), 0) FROM readings").rows.first?.first?.int64 ?? 0
            guard old == moved else { throw SchemaError(description: "schema 7: reading_values holds \(old) values, readings.vals \(moved); nothing switched") }
            try await connection.query(old == 0 ? "DROP TABLE reading_values" : "RENAME TABLE reading_values TO reading_values_v6")
        }
        try await ValsToObjects.installViews(connection)
        logger.info("schema 7: switched to one row per reading in \(ContinuousClock.now - start)")
    }
}

/// Schema 8: `readings.vals` from schema 7's array (`[{"s":"temp","n":21.5},{"s":"state","t":"on"}]`)
/// to an object of the numbers (`{"temp":21.5}`) and `readings.texts` (`{"state":"on"}`), in
/// place, window by window like schema 7's step (only rows still holding an array, so running it
/// again finishes what ingest of schema 7 wrote since).
package struct ValsToObjects {
    package var connection: MariaDBConnection
    package var logger: Logger
    package var window: UInt64 = 20_000

    /// One member `"name":value` of an object from a name and a value column: MariaDB's
    /// JSON_OBJECT writes a number as JSON (and escapes a text); its braces are cut off (a member
    /// starts with a quote and ends with a digit or a quote, never with a brace).
    package static func member(_ name: String, _ value: String) -> String {
        "TRIM(LEADING '{' FROM TRIM(TRAILING '}' FROM JSON_OBJECT(\(name), \(value))))"
    }

    /// The path of one sensor in `vals` or `texts`. Sensor names hold no quotes or backslashes (§2.2).
    static let path = "CONCAT('$.\"', k.sensor, '\"')"

    static func numbers(where condition: String) -> String {
        """
        SELECT r.device_id, r.epoch, r.seq, k.sensor, r.device_time,
                 CAST(JSON_VALUE(r.vals, \(path)) AS DOUBLE) AS num_value, CAST(NULL AS VARCHAR(256)) AS text_value
            FROM readings r, JSON_TABLE(JSON_KEYS(r.vals), '$[*]' COLUMNS (sensor VARCHAR(64) PATH '$')) k
           WHERE \(condition)
        """
    }

    static let texts = """
        SELECT r.device_id, r.epoch, r.seq, k.sensor, r.device_time,
                 NULL, CAST(JSON_VALUE(r.texts, \(path)) AS VARCHAR(256))
            FROM readings r, JSON_TABLE(JSON_KEYS(r.texts), '$[*]' COLUMNS (sensor VARCHAR(64) PATH '$')) k
           WHERE r.texts IS NOT NULL
        """

    /// `reading_values` over the objects: one row per reading and sensor, the columns of schema
    /// 6's table. A general view (a JSON_TABLE per reading, and a second pass for texts); a query
    /// for one sensor is about twice as fast with `JSON_VALUE(vals, '$.temp')` on `readings`
    /// (docs/backend.md).
    package static let view = """
        CREATE OR REPLACE VIEW reading_values AS
          \(numbers(where: "TRUE"))
          UNION ALL
          \(texts)
        """

    /// `reading_values` over `readings.vals` and `texts`, and `sensor_values` (schema 2) again
    /// over it (it names `reading_values`): what every switch-over that touches `vals` ends with.
    package static func installViews(_ connection: MariaDBConnection) async throws {
        try await connection.query(view)
        try await connection.query(Schema.migrations.first { $0.version == 2 }!.statements[0])
    }

    /// While `migrate --prepare` rewrites the arrays: both forms, so readers miss no value.
    package static let transitionView = """
        CREATE OR REPLACE VIEW reading_values AS
          SELECT r.device_id, r.epoch, r.seq, j.sensor, r.device_time, j.num_value, j.text_value
            FROM readings r,
                 JSON_TABLE(r.vals, '$[*]' COLUMNS (sensor VARCHAR(64) PATH '$.s',
                                                    num_value DOUBLE PATH '$.n',
                                                    text_value VARCHAR(256) PATH '$.t')) j
           WHERE r.vals LIKE '[%'
          UNION ALL
          \(numbers(where: "r.vals LIKE '{%'"))
          UNION ALL
          \(texts)
        """

    package func run() async throws {
        // Readers see both forms while arrays are left (schema 7's view reads only arrays). From
        // schema 6, `reading_values` is still a table here and no array exists (schema 7's step
        // writes objects): nothing to do.
        let kind = try await connection.query("""
            SELECT TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'reading_values'
            """).rows.first?.first?.string
        guard kind == "VIEW" else { return }
        try await connection.query(Self.transitionView)
        let start = ContinuousClock.now
        // The JSON columns keep each number's and text's JSON as written (a text with its
        // quotes). `texts` first: assignments run left to right and it reads the array.
        let rewritten = try await updateInWindows(connection, logsQuery: "SELECT device_id, epoch, MIN(seq), MAX(seq) FROM readings WHERE vals LIKE '[%' GROUP BY device_id, epoch",
                                                  window: window, update: """
            UPDATE readings r SET
              r.texts = (SELECT CONCAT('{', GROUP_CONCAT(CONCAT(JSON_QUOTE(j.s), ':', j.t) ORDER BY j.s SEPARATOR ','), '}')
                           FROM JSON_TABLE(r.vals, '$[*]' COLUMNS (s VARCHAR(64) PATH '$.s', t JSON PATH '$.t')) j WHERE j.t IS NOT NULL),
              r.vals = (SELECT CONCAT('{', COALESCE(GROUP_CONCAT(CONCAT(JSON_QUOTE(j.s), ':', j.n) ORDER BY j.s SEPARATOR ','), ''), '}')
                          FROM JSON_TABLE(r.vals, '$[*]' COLUMNS (s VARCHAR(64) PATH '$.s', n JSON PATH '$.n')) j WHERE j.n IS NOT NULL)
             WHERE r.device_id = ? AND r.epoch = ? AND r.seq BETWEEN ? AND ? AND r.vals LIKE '[%'
            """)
        logger.info("schema 8: \(rewritten) readings rewritten as objects in \(ContinuousClock.now - start)")
    }

    /// With ingest stopped, after `run` rewrote what was written since `--prepare`: check no
    /// array is left, then install the view over objects.
    package func switchOver() async throws {
        let left = try await connection.query("SELECT COUNT(*) FROM readings WHERE vals LIKE '[%'").rows.first?.first?.int64 ?? 0
        guard left == 0 else { throw SchemaError(description: "schema 8: \(left) readings still hold an array; run `fieldlog-backend migrate` again") }
        try await Self.installViews(connection)
    }
}
