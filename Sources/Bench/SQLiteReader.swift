import CSQLite

/// A read-only SQLite connection for looking at a log another process owns (WAL lets it read
/// while the owner writes). Only the bench uses it; the log's own code never does.
final class ReadOnlySQLite {
    private var db: OpaquePointer?

    init(path: String) throws {
        guard sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, nil) == SQLITE_OK else {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            sqlite3_close(db)
            throw BenchError("cannot open \(path) read-only: \(message)")
        }
        sqlite3_busy_timeout(db, 5000)
    }

    deinit { sqlite3_close(db) }

    /// The first column of the first row of `sql`, as an integer.
    func scalar(_ sql: String) throws -> Int64 {
        var stmt: OpaquePointer?
        guard sqlite3_prepare_v2(db, sql, -1, &stmt, nil) == SQLITE_OK else {
            throw BenchError("\(sql): \(String(cString: sqlite3_errmsg(db)))")
        }
        defer { sqlite3_finalize(stmt) }
        guard sqlite3_step(stmt) == SQLITE_ROW else { throw BenchError("\(sql): no row (\(String(cString: sqlite3_errmsg(db))))") }
        return sqlite3_column_int64(stmt, 0)
    }
}
