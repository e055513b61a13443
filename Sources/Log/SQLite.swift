// SQLite: one small owning class per C handle (connection, statement).
//
// Theory of operation: `SQLiteConnection` owns one `sqlite3*` and closes it exactly once.
// It is not thread-safe by itself, and not Sendable: every `DeviceLog` owns one connection,
// confined to the log's `OwnerThread` (`ThreadConfined<LogStore>`, docs/concurrency.md), which
// checks on every access that it runs on that thread. Blocking calls (fsync inside COMMIT,
// busy waits on other processes' locks) therefore never block Swift's cooperative pool. C return codes become `SQLiteError`s that name
// the file, the operation and SQLite's own message.
import CSQLite
import FieldlogCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A failed SQLite call: which file, what we were doing, SQLite's (extended) code and message.
public struct SQLiteError: Error, CustomStringConvertible, Sendable {
    /// Primary result code (`SQLITE_BUSY`, `SQLITE_IOERR`, …).
    public let code: Int32
    /// Extended result code (e.g. `SQLITE_IOERR_FSYNC`).
    let extendedCode: Int32
    public let path: String
    public let operation: String
    public let message: String

    public var description: String {
        "\(path): \(operation) failed: \(message) (sqlite code \(extendedCode))"
    }

    /// The database is locked by another connection beyond the busy timeout.
    var isBusy: Bool { code == SQLITE_BUSY || code == SQLITE_LOCKED }
    /// The file is not a database or is damaged.
    var isCorrupt: Bool { code == SQLITE_CORRUPT || code == SQLITE_NOTADB }
}

/// A value bound to or read from a statement.
enum SQLiteValue: Equatable {
    case integer(Int64)
    case real(Double)
    case text(String)
    case blob([UInt8])
    case null
}

/// One open `sqlite3*`, used only on its log's `OwnerThread` (see above).
final class SQLiteConnection {
    let path: String
    private var handle: OpaquePointer?
    private var statementCache: [String: SQLiteStatement] = [:]

    /// Opens (or creates, when `create`) the database at `path`, through the VFS named `vfs` (nil: default).
    init(path: String, create: Bool, readOnly: Bool = false, vfs: String? = nil) throws(SQLiteError) {
        self.path = path
        var flags = readOnly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE
        if create && !readOnly { flags |= SQLITE_OPEN_CREATE }
        // One connection per thread of ours; SQLite's own mutexes are not needed.
        flags |= SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE
        var db: OpaquePointer?
        let rc = sqlite3_open_v2(path, &db, flags, vfs)
        guard rc == SQLITE_OK, let db else {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? String(cString: sqlite3_errstr(rc))
            if let db { sqlite3_close_v2(db) }
            throw SQLiteError(code: rc & 0xFF, extendedCode: rc, path: path, operation: "open", message: message)
        }
        handle = db
        _ = fieldlog_sqlite_db_config_defensive(db, 1)
    }

    deinit { close() }

    var isOpen: Bool { handle != nil }

    /// Finalizes cached statements and closes the handle. Safe to call twice.
    func close() {
        for statement in statementCache.values { statement.finalize() }
        statementCache.removeAll()
        if let handle {
            sqlite3_close_v2(handle)
            self.handle = nil
        }
    }

    private func db(_ operation: String) throws(SQLiteError) -> OpaquePointer {
        guard let handle else {
            throw SQLiteError(code: SQLITE_MISUSE, extendedCode: SQLITE_MISUSE, path: path, operation: operation, message: "connection is closed")
        }
        return handle
    }

    func error(_ rc: Int32, _ operation: String) -> SQLiteError {
        let message = handle.map { String(cString: sqlite3_errmsg($0)) } ?? String(cString: sqlite3_errstr(rc))
        return SQLiteError(code: rc & 0xFF, extendedCode: rc, path: path, operation: operation, message: message)
    }

    /// Runs one or more statements without results (pragmas, DDL, BEGIN/COMMIT).
    func execute(_ sql: String) throws(SQLiteError) {
        let db = try db(sql)
        var errorMessage: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(db, sql, nil, nil, &errorMessage)
        if rc != SQLITE_OK {
            let message = errorMessage.map { String(cString: $0) } ?? String(cString: sqlite3_errstr(rc))
            sqlite3_free(errorMessage)
            throw SQLiteError(code: rc & 0xFF, extendedCode: sqlite3_extended_errcode(db), path: path, operation: sql, message: message)
        }
    }

    func setBusyTimeout(milliseconds: Int32) throws(SQLiteError) {
        let rc = sqlite3_busy_timeout(try db("busy_timeout"), milliseconds)
        if rc != SQLITE_OK { throw error(rc, "busy_timeout") }
    }

    /// A prepared statement, cached per SQL text (reset before it is handed out again).
    func prepare(_ sql: String) throws(SQLiteError) -> SQLiteStatement {
        if let cached = statementCache[sql] {
            cached.reset()
            return cached
        }
        let db = try db("prepare \(sql)")
        var stmt: OpaquePointer?
        let rc = sqlite3_prepare_v3(db, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &stmt, nil)
        guard rc == SQLITE_OK, let stmt else { throw error(rc, "prepare \(sql)") }
        let statement = SQLiteStatement(connection: self, handle: stmt, sql: sql)
        statementCache[sql] = statement
        return statement
    }

    /// Runs `sql` with `binds` and returns all rows.
    func query(_ sql: String, _ binds: [SQLiteValue] = []) throws(SQLiteError) -> [[SQLiteValue]] {
        let statement = try prepare(sql)
        defer { statement.reset() }
        try statement.bind(binds)
        var rows: [[SQLiteValue]] = []
        while try statement.step() {
            rows.append((0..<statement.columnCount).map { statement.value(at: $0) })
        }
        return rows
    }

    /// Runs `sql` with `binds`, expecting no rows; returns the number of changed rows.
    @discardableResult
    func run(_ sql: String, _ binds: [SQLiteValue] = []) throws(SQLiteError) -> Int {
        let statement = try prepare(sql)
        defer { statement.reset() }
        try statement.bind(binds)
        while try statement.step() {}
        return Int(sqlite3_changes(try db("changes")))
    }

    /// The first column of the first row as an integer (nil when no row or NULL).
    func scalarInt(_ sql: String, _ binds: [SQLiteValue] = []) throws(SQLiteError) -> Int64? {
        let statement = try prepare(sql)
        defer { statement.reset() }
        try statement.bind(binds)
        guard try statement.step() else { return nil }
        if case .integer(let v) = statement.value(at: 0) { return v }
        return nil
    }

    var isAutocommit: Bool { handle.map { sqlite3_get_autocommit($0) != 0 } ?? true }

    /// Runs `body` in `BEGIN IMMEDIATE … COMMIT` (takes the write lock up front, so the reads
    /// inside see the latest committed state of every process). Rolls back when `body` or
    /// COMMIT throws; the error is rethrown.
    func writeTransaction<T>(_ body: () throws -> T) throws -> T {
        // Prepared once and reused: these run for every group commit.
        try run("BEGIN IMMEDIATE")
        do {
            let result = try body()
            try run("COMMIT")
            return result
        } catch {
            if !isAutocommit { _ = try? run("ROLLBACK") }
            throw error
        }
    }

    /// Runs `body` with `PRAGMA synchronous=NORMAL` on a connection set to `FULL`, then sets
    /// `FULL` again: its commits are not fsynced on their own, the connection's next `FULL`
    /// commit makes them durable (the WAL is synced as a whole, and a crash keeps a prefix of
    /// its commits). Only for writes that may be lost in a power cut. `full == false`: runs
    /// `body` as it is. A failure to set `FULL` again is thrown, and the connection is left
    /// closed, so no later append can return without its fsync.
    func withoutOwnSync<T>(on full: Bool, _ body: () throws -> T) throws -> T {
        guard full else { return try body() }
        try execute("PRAGMA synchronous=NORMAL")
        let result = Result { try body() }
        do {
            try execute("PRAGMA synchronous=FULL")
        } catch {
            close()
            throw error
        }
        return try result.get()
    }

    /// Runs `body` in a read transaction (one consistent snapshot).
    func readTransaction<T>(_ body: () throws -> T) throws -> T {
        try execute("BEGIN")
        defer { if !isAutocommit { try? execute("COMMIT") } }
        return try body()
    }
}

/// One prepared `sqlite3_stmt*`, owned by its connection's cache.
final class SQLiteStatement {
    private unowned let connection: SQLiteConnection
    private var handle: OpaquePointer?
    let sql: String

    init(connection: SQLiteConnection, handle: OpaquePointer, sql: String) {
        self.connection = connection
        self.handle = handle
        self.sql = sql
    }

    deinit { finalize() }

    func finalize() {
        if let handle { sqlite3_finalize(handle) }
        handle = nil
    }

    private func stmt() throws(SQLiteError) -> OpaquePointer {
        guard let handle else {
            throw SQLiteError(code: SQLITE_MISUSE, extendedCode: SQLITE_MISUSE, path: connection.path, operation: sql, message: "statement is finalized")
        }
        return handle
    }

    func reset() {
        if let handle {
            sqlite3_reset(handle)
            sqlite3_clear_bindings(handle)
        }
    }

    func bind(_ values: [SQLiteValue]) throws(SQLiteError) {
        for (i, value) in values.enumerated() { try bind(value, at: Int32(i + 1)) }
    }

    func bind(_ value: SQLiteValue, at index: Int32) throws(SQLiteError) {
        let s = try stmt()
        let rc: Int32
        switch value {
        case .integer(let v): rc = sqlite3_bind_int64(s, index, v)
        case .real(let v): rc = sqlite3_bind_double(s, index, v)
        case .text(let v): rc = sqlite3_bind_text(s, index, v, -1, fieldlog_sqlite_transient())
        case .blob(let v):
            rc = v.withUnsafeBytes { sqlite3_bind_blob(s, index, $0.baseAddress ?? UnsafeRawPointer(bitPattern: 1), Int32($0.count), fieldlog_sqlite_transient()) }
        case .null: rc = sqlite3_bind_null(s, index)
        }
        if rc != SQLITE_OK { throw connection.error(rc, "bind parameter \(index) of \(sql)") }
    }

    func bind(_ value: Int64, at index: Int32) throws(SQLiteError) {
        let rc = sqlite3_bind_int64(try stmt(), index, value)
        if rc != SQLITE_OK { throw connection.error(rc, "bind parameter \(index) of \(sql)") }
    }

    /// Steps once: true when a row is available, false when done.
    func step() throws(SQLiteError) -> Bool {
        let rc = sqlite3_step(try stmt())
        switch rc {
        case SQLITE_ROW: return true
        case SQLITE_DONE: return false
        default: throw connection.error(rc, sql)
        }
    }

    var columnCount: Int32 { handle.map { sqlite3_column_count($0) } ?? 0 }

    func int64(at column: Int32) -> Int64 { sqlite3_column_int64(handle, column) }

    func bytes(at column: Int32) -> [UInt8] {
        let count = Int(sqlite3_column_bytes(handle, column))
        guard count > 0, let p = sqlite3_column_blob(handle, column) else { return [] }
        return Array(UnsafeRawBufferPointer(start: p, count: count))
    }

    func value(at column: Int32) -> SQLiteValue {
        guard let handle else { return .null }
        switch sqlite3_column_type(handle, column) {
        case SQLITE_INTEGER: return .integer(sqlite3_column_int64(handle, column))
        case SQLITE_FLOAT: return .real(sqlite3_column_double(handle, column))
        case SQLITE_TEXT: return .text(String(cString: sqlite3_column_text(handle, column)))
        case SQLITE_BLOB: return .blob(bytes(at: column))
        default: return .null
        }
    }
}
