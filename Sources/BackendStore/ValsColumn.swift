// Schema 9: `readings.vals` from MEDIUMTEXT to VARCHAR(6000) CHARACTER SET ascii.
//
// Why: MariaDB hands a TEXT column to the query through a blob buffer of its own per row, a
// VARCHAR in the row buffer. For a day of one device's readings (86,400 rows) reading `vals`
// cost ~100 ms of server time as MEDIUMTEXT and ~70 ms as VARCHAR; the 24-hour query of one
// sensor went from ~145 to ~122 ms on the server (docs/benchmarks.md, "Queries").
//
// Why it fits: `vals` holds the numbers only (texts are in `readings.texts`), with ASCII sensor
// names, at most 5,889 bytes within the spec's limits (`StoreRows.maxValsBytes`, which the
// ingest's row check enforces for every reading it writes).
//
// How, without stopping ingest for longer than the switch-over: `migrate --prepare` (ingest of
// schema 8 keeps writing `vals`) adds `vals_v9` (an instant ADD COLUMN, no table rebuild) and
// copies `vals` into it window by window (where the copy is missing or differs); `migrate` (ingest stopped) copies what was written
// since, checks every row, and swaps the columns with one instant ALTER (DROP, RENAME: metadata
// only). The old column's bytes stay in the rows until they are rewritten; `ALTER TABLE
// readings FORCE` rebuilds the table online later (docs/operating-backend.md). On 10 million
// readings: --prepare 93 s, the switch-over (the downtime) 14.8 s, the rebuild 20 s.
import Logging
import MariaDB
import Sync

package struct ValsToVarchar {
    package var connection: MariaDBConnection
    package var logger: Logger
    package var window: UInt64 = 20_000

    /// The column's type from schema 9 on: as long as the ingest's row check allows
    /// (`StoreRows.maxValsBytes`, the longest `vals` within the spec's limits).
    package static let columnType = "VARCHAR(\(StoreRows.maxValsBytes)) CHARACTER SET ascii COLLATE ascii_bin NULL"

    package static let addColumn = "ALTER TABLE readings ADD COLUMN IF NOT EXISTS vals_v9 \(columnType)"

    /// Rows whose `vals` cannot move as it is (longer than the column, or not ASCII): the
    /// migration stops before changing anything and names the first of them. Only rows not yet
    /// copied equal are converted (a row copied equal fits), so the switch-over's pass converts
    /// only what was written since `--prepare`.
    static let unfit = """
        SELECT device_id, epoch, seq, LENGTH(vals) FROM readings
         WHERE NOT (vals_v9 <=> vals) AND (LENGTH(vals) > \(StoreRows.maxValsBytes) OR vals <> CONVERT(vals USING ascii))
         LIMIT 1
        """

    static let copy = """
        UPDATE readings SET vals_v9 = vals
         WHERE device_id = ? AND epoch = ? AND seq BETWEEN ? AND ? AND NOT (vals_v9 <=> vals)
        """

    /// Has the swap already happened (a `migrate` that stopped after it)?
    func swapped() async throws -> Bool {
        let columns = try await connection.query("""
            SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'readings' AND COLUMN_NAME IN ('vals', 'vals_v9')
            """).rows
        return !columns.contains { $0[0].string == "vals_v9" } && columns.contains { $0[0].string == "vals" && $0[1].string == "varchar" }
    }

    /// The repeatable copy (also run by `migrate --prepare` beside ingest of schema 8).
    package func run() async throws {
        guard try await !swapped() else { return }
        // From schema 7, `migrate --prepare` gets here before schema 8 rewrote the arrays (that
        // happens in `migrate`): the copy waits for it, or it would copy arrays.
        let version = try await connection.query("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").rows.first?.first?.int64 ?? 0
        guard version >= 8 else {
            logger.info("schema 9: the copy of vals waits for schema 8's switch-over (`fieldlog-backend migrate`)")
            return
        }
        if let row = try await connection.query(Self.unfit).rows.first {
            throw SchemaError(description: """
                schema 9: readings.vals of \(row[0].string ?? "?") epoch \(row[1].uint64 ?? 0) seq \(row[2].uint64 ?? 0) \
                (\(row[3].int64 ?? 0) bytes) does not fit VARCHAR(\(StoreRows.maxValsBytes)) of ASCII; nothing was changed
                """)
        }
        let start = ContinuousClock.now
        let copied = try await updateInWindows(connection, logsQuery: """
            SELECT device_id, epoch, MIN(seq), MAX(seq) FROM readings WHERE NOT (vals_v9 <=> vals) GROUP BY device_id, epoch
            """, window: window, update: Self.copy)
        logger.info("schema 9: \(copied) readings' vals copied to VARCHAR in \(ContinuousClock.now - start)")
    }

    /// With ingest stopped, after `run` copied what was written since `--prepare`: every row's
    /// copy equal to its original, then the columns swapped and the views made again.
    package func switchOver() async throws {
        if try await !swapped() {
            let differing = try await connection.query("SELECT COUNT(*) FROM readings WHERE NOT (vals <=> vals_v9)").rows.first?.first?.int64 ?? 0
            guard differing == 0 else {
                throw SchemaError(description: "schema 9: \(differing) readings' vals differ from their copy; run `fieldlog-backend migrate` again")
            }
            try await connection.query("ALTER TABLE readings DROP COLUMN vals, RENAME COLUMN vals_v9 TO vals, ALGORITHM=INSTANT")
            logger.notice(Logger.Message(stringLiteral: "schema 9: vals is a VARCHAR now. The old column's bytes stay in the rows until they are rewritten: "
                          + "with ingest running, `ALTER TABLE readings FORCE, ALGORITHM=INPLACE, LOCK=NONE` rebuilds the table online "
                          + "and gives the space back (docs/operating-backend.md, \"Upgrading to schema 9\")"))
        }
        // The views read `vals` by name: made again over the new column.
        try await ValsToObjects.installViews(connection)
    }
}
