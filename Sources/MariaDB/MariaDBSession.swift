// The owner of one MYSQL* handle and its prepared statements; synchronous, owner-thread only.
//
// Theory of operation: `MariaDBConnection` creates one session and one `OwnerThread`, confines
// the session to it (`ThreadConfined`, docs/concurrency.md) and runs every call of the session
// on that thread (checked on each call: the session is also handed to the caller's closures). The session opens
// the handle in `connect()`, keeps prepared statements in a small LRU cache keyed by their
// SQL text (so a multi-row insert of N rows prepares its statement once per N), and frees
// statements and handle exactly once in `close()`. C strings are copied out at once; C
// return codes become `MariaDBError`s that name the operation, the error number and SQLSTATE.
// Inside a transaction (`begin()` until `commit()`/`rollback()`) every statement and the
// COMMIT first check that the server still has the transaction open (the status flags of the
// last OK packet): a server that ended it without an error must not get the rest of the
// transaction run in autocommit mode (`MariaDBError.transactionEndedByServer`).
import FieldlogCore
import CMariaDB
import Foundation
import Logging
import Threading

/// Synchronous access to one MariaDB connection, handed to closures run by
/// `MariaDBConnection.withSession(_:)` and `transaction(_:)`. Valid only inside that closure
/// (on the connection's owner thread): every call checks it. Not Sendable: it never leaves
/// that thread.
public final class MariaDBSession {
    private let configuration: MariaDBConfiguration
    private let thread: OwnerThread
    private let logger: Logger
    private var handle: UnsafeMutablePointer<MYSQL>?
    private var statements: [String: CachedStatement] = [:]
    private var useCounter: UInt64 = 0
    private var closedForGood = false
    /// Between `begin()` and `commit()`/`rollback()`: the server must report the transaction open.
    private var transactionOpen = false

    private struct CachedStatement {
        var statement: UnsafeMutablePointer<MYSQL_STMT>
        var lastUse: UInt64
    }

    /// Connector/C must be initialised once per process before any thread uses it.
    private static let libraryInitialised: Bool = fieldlog_mysql_library_init() == 0

    init(configuration: MariaDBConfiguration, thread: OwnerThread, logger: Logger) {
        precondition(configuration.statementCacheSize >= 1, "statementCacheSize must be at least 1")
        self.configuration = configuration
        self.thread = thread
        self.logger = logger
    }

    static func threadSetUp() {
        precondition(libraryInitialised, "mysql_library_init failed")
        _ = mysql_thread_init()
    }

    static func threadTearDown() { mysql_thread_end() }

    private func enter(file: StaticString = #fileID, line: UInt = #line) {
        thread.preconditionCurrent("MariaDBSession", file: file, line: line)
    }

    // MARK: connection

    /// True when a handle is open (it may still have lost its server: see `ping()`).
    public var isOpen: Bool {
        enter()
        return handle != nil
    }

    func connect() throws {
        enter()
        guard !closedForGood else { throw MariaDBError.usage("connect", "the connection was closed") }
        guard handle == nil else { return }
        let operation = "connect to \(configuration.endpointDescription)"
        guard let mysql = mysql_init(nil) else {
            throw MariaDBError.usage(operation, "mysql_init failed (out of memory)")
        }
        do {
            try setOptions(mysql, operation: operation)
            let port = UInt32(clamping: configuration.port)
            let connected = configuration.host.withCString { host in
                configuration.user.withCString { user in
                    configuration.password.withCString { password in
                        withOptionalCString(configuration.database) { database in
                            withOptionalCString(configuration.unixSocket) { socket in
                                mysql_real_connect(mysql, configuration.unixSocket == nil ? host : nil, user, password,
                                                   database, port, socket, 0)
                            }
                        }
                    }
                }
            }
            guard connected != nil else { throw Self.error(of: mysql, operation) }
            // Connector/C 3.3 silently connects in plain text to a server without TLS even with
            // MYSQL_OPT_SSL_ENFORCE set; check that TLS is really on.
            if configuration.tls != nil && mysql_get_ssl_cipher(mysql) == nil {
                throw MariaDBError(operation: operation, code: 2026, sqlState: "HY000",
                                   message: "TLS was required but the server did not set it up (is TLS enabled on the server?)")
            }
        } catch {
            mysql_close(mysql)
            throw error
        }
        handle = mysql
        logger.debug("connected to MariaDB", metadata: [
            "endpoint": "\(configuration.endpointDescription)", "thread-id": "\(mysql_thread_id(mysql))",
        ])
    }

    private func setOptions(_ mysql: UnsafeMutablePointer<MYSQL>, operation: String) throws {
        func seconds(_ d: Duration, _ name: String) throws -> UInt32 {
            let s = d.components.seconds + (d.components.attoseconds > 0 ? 1 : 0)
            guard s >= 1, s <= 86_400 else {
                throw MariaDBError.usage(operation, "\(name) must be between 1 s and 1 day, not \(d)")
            }
            return UInt32(s)
        }
        var connectTimeout = try seconds(configuration.connectTimeout, "connectTimeout")
        var readTimeout = try seconds(configuration.readTimeout, "readTimeout")
        var writeTimeout = try seconds(configuration.writeTimeout, "writeTimeout")
        var ok = mysql_options(mysql, MYSQL_OPT_CONNECT_TIMEOUT, &connectTimeout) == 0
        ok = ok && mysql_options(mysql, MYSQL_OPT_READ_TIMEOUT, &readTimeout) == 0
        ok = ok && mysql_options(mysql, MYSQL_OPT_WRITE_TIMEOUT, &writeTimeout) == 0
        // Never reconnect behind our back: a silent reconnect would drop an open transaction.
        var noReconnect: my_bool = 0
        ok = ok && mysql_options(mysql, MYSQL_OPT_RECONNECT, &noReconnect) == 0
        ok = ok && configuration.characterSet.withCString { mysql_options(mysql, MYSQL_SET_CHARSET_NAME, $0) } == 0
        if configuration.unixSocket != nil {
            var protocolSocket = UInt32(MYSQL_PROTOCOL_SOCKET.rawValue)
            ok = ok && mysql_options(mysql, MYSQL_OPT_PROTOCOL, &protocolSocket) == 0
        } else {
            var protocolTCP = UInt32(MYSQL_PROTOCOL_TCP.rawValue)
            ok = ok && mysql_options(mysql, MYSQL_OPT_PROTOCOL, &protocolTCP) == 0
        }
        if let tls = configuration.tls {
            _ = withOptionalCString(tls.keyFile) { key in
                withOptionalCString(tls.certificateFile) { cert in
                    withOptionalCString(tls.caFile) { ca in mysql_ssl_set(mysql, key, cert, ca, nil, nil) }
                }
            }
            var verify: my_bool = tls.verifyServerCertificate ? 1 : 0
            ok = ok && mysql_options(mysql, MYSQL_OPT_SSL_VERIFY_SERVER_CERT, &verify) == 0
            var enforce: my_bool = 1
            ok = ok && mysql_options(mysql, MYSQL_OPT_SSL_ENFORCE, &enforce) == 0
        }
        guard ok else { throw Self.error(of: mysql, operation + " (setting options)") }
    }

    /// Closes statements and handle (once); the session can connect again afterwards.
    func disconnect() {
        enter()
        transactionOpen = false
        for (_, cached) in statements { mysql_stmt_close(cached.statement) }
        statements.removeAll()
        if let handle {
            mysql_close(handle)
            self.handle = nil
        }
    }

    /// Closes for good: later calls throw.
    func close() {
        disconnect()
        closedForGood = true
    }

    /// Drops the current handle (dead or alive) and connects anew.
    func reconnect() throws {
        enter()
        disconnect()
        try connect()
    }

    private func open(_ operation: @autoclosure () -> String) throws -> UnsafeMutablePointer<MYSQL> {
        enter()
        guard let handle else {
            throw MariaDBError(operation: operation(), code: 2006, sqlState: "HY000",
                               message: closedForGood ? "the connection was closed" : "not connected (call connect() or reconnect())")
        }
        return handle
    }

    /// The server's id of this connection (what `KILL CONNECTION` takes).
    public func connectionID() throws -> UInt64 {
        UInt64(mysql_thread_id(try open("read connection id")))
    }

    /// Asks the server whether the connection still works; throws when it does not.
    public func ping() throws {
        let mysql = try open("ping")
        guard mysql_ping(mysql) == 0 else { throw Self.error(of: mysql, "ping") }
    }

    // MARK: text protocol

    /// Runs one SQL statement (no parameters) and returns its rows or counters.
    @discardableResult
    public func query(_ sql: String) throws -> MariaDBResult {
        let operation = "query \(Self.excerpt(sql))"
        let mysql = try open(operation)
        try requireOpenTransaction(mysql, operation)
        let rc = sql.withCString { mysql_real_query(mysql, $0, UInt(strlen($0))) }
        guard rc == 0 else { throw failure(of: mysql, operation) }
        guard let res = mysql_store_result(mysql) else {
            guard mysql_field_count(mysql) == 0 else { throw failure(of: mysql, operation + " (reading rows)") }
            return MariaDBResult(affectedRows: mysql_affected_rows(mysql), lastInsertID: mysql_insert_id(mysql))
        }
        defer { mysql_free_result(res) }
        let count = Int(mysql_num_fields(res))
        let fields = UnsafeBufferPointer(start: mysql_fetch_fields(res), count: count)
        let kinds = fields.map(ColumnKind.init)
        var result = MariaDBResult(columns: fields.map { String(cString: $0.name) })
        while let row = mysql_fetch_row(res) {
            guard let lengths = mysql_fetch_lengths(res) else { break }
            var values: [MariaDBValue] = []
            values.reserveCapacity(count)
            for i in 0..<count {
                guard let cell = row[i] else { values.append(.null); continue }
                let raw = UnsafeRawBufferPointer(start: cell, count: Int(lengths[i]))
                values.append(kinds[i].decodeText(raw))
            }
            result.rows.append(values)
        }
        guard mysql_errno(mysql) == 0 else { throw failure(of: mysql, operation + " (reading rows)") }
        result.affectedRows = UInt64(result.rows.count)
        return result
    }

    // MARK: prepared statements

    /// Runs `sql` as a prepared statement (cached by its text) with `binds` for its `?` markers.
    @discardableResult
    public func execute(_ sql: String, _ binds: [MariaDBValue] = []) throws -> MariaDBResult {
        let operation = "execute \(Self.excerpt(sql))"
        try requireOpenTransaction(try open(operation), operation)
        let stmt = try statement(for: sql)
        let paramCount = Int(mysql_stmt_param_count(stmt))
        guard paramCount == binds.count else {
            throw MariaDBError.usage(operation, "the statement has \(paramCount) parameter(s) but \(binds.count) value(s) were bound")
        }
        let parameters = BindBuffers(values: binds)
        defer { parameters.deallocate() }
        if paramCount > 0 {
            guard mysql_stmt_bind_param(stmt, parameters.binds) == 0 else { throw statementFailure(stmt, sql, operation + " (binding)") }
        }
        guard mysql_stmt_execute(stmt) == 0 else { throw statementFailure(stmt, sql, operation) }
        guard let meta = mysql_stmt_result_metadata(stmt) else {
            return MariaDBResult(affectedRows: mysql_stmt_affected_rows(stmt), lastInsertID: mysql_stmt_insert_id(stmt))
        }
        defer {
            mysql_free_result(meta)
            mysql_stmt_free_result(stmt)
        }
        return try fetchRows(stmt, meta: meta, sql: sql, operation: operation)
    }

    private func fetchRows(_ stmt: UnsafeMutablePointer<MYSQL_STMT>, meta: UnsafeMutablePointer<MYSQL_RES>,
                           sql: String, operation: String) throws -> MariaDBResult {
        var updateMaxLength: my_bool = 1
        _ = mysql_stmt_attr_set(stmt, STMT_ATTR_UPDATE_MAX_LENGTH, &updateMaxLength)
        guard mysql_stmt_store_result(stmt) == 0 else { throw statementFailure(stmt, sql, operation + " (reading rows)") }
        let count = Int(mysql_num_fields(meta))
        let fields = UnsafeBufferPointer(start: mysql_fetch_fields(meta), count: count)
        let kinds = fields.map(ColumnKind.init)
        let output = ResultBuffers(kinds: kinds, maxLengths: fields.map { Int($0.max_length) })
        defer { output.deallocate() }
        guard mysql_stmt_bind_result(stmt, output.binds) == 0 else { throw statementFailure(stmt, sql, operation + " (binding result)") }
        var result = MariaDBResult(columns: fields.map { String(cString: $0.name) })
        while true {
            let rc = mysql_stmt_fetch(stmt)
            if rc == MYSQL_NO_DATA { break }
            guard rc == 0 || rc == MYSQL_DATA_TRUNCATED else { throw statementFailure(stmt, sql, operation + " (fetching a row)") }
            var values: [MariaDBValue] = []
            values.reserveCapacity(count)
            for i in 0..<count {
                values.append(try output.value(at: i, stmt: stmt, operation: operation))
            }
            result.rows.append(values)
        }
        result.affectedRows = UInt64(result.rows.count)
        return result
    }

    private func statement(for sql: String) throws -> UnsafeMutablePointer<MYSQL_STMT> {
        let mysql = try open("prepare \(Self.excerpt(sql))")
        useCounter += 1
        if let cached = statements[sql] {
            statements[sql]?.lastUse = useCounter
            return cached.statement
        }
        let operation = "prepare \(Self.excerpt(sql))"
        guard let stmt = mysql_stmt_init(mysql) else { throw failure(of: mysql, operation) }
        let rc = sql.withCString { mysql_stmt_prepare(stmt, $0, UInt(strlen($0))) }
        guard rc == 0 else {
            let error = Self.error(of: stmt, operation)
            mysql_stmt_close(stmt)
            if error.isConnectionLost { disconnect() }
            throw error
        }
        if statements.count >= configuration.statementCacheSize,
           let oldest = statements.min(by: { $0.value.lastUse < $1.value.lastUse }) {
            mysql_stmt_close(oldest.value.statement)
            statements[oldest.key] = nil
        }
        statements[sql] = CachedStatement(statement: stmt, lastUse: useCounter)
        return stmt
    }

    /// Runs `body` with the open MYSQL handle, for tests that drive Connector/C directly
    /// (GaleraTests reproduces a server fault with array binding, which this wrapper does not
    /// offer). Whatever `body` does is not checked; the next statement here is.
    func withUnsafeHandle<T>(_ body: (UnsafeMutablePointer<MYSQL>) throws -> T) throws -> T {
        try body(try open("use the handle"))
    }

    /// Number of prepared statements currently cached (for tests and diagnostics).
    public var cachedStatementCount: Int {
        enter()
        return statements.count
    }

    // MARK: multi-row insert

    /// Inserts `rows` with as few round trips as possible: `insertPrefix VALUES (?,…),(?,…)… suffix`,
    /// at most `maxRowsPerStatement` rows (and 65 535 parameters) per statement. Statements are
    /// cached per row count, so a steady batch size prepares once. Several statements are not
    /// atomic by themselves: call it inside `MariaDBConnection.transaction` for all-or-nothing.
    ///
    /// - Parameters:
    ///   - insertPrefix: e.g. "INSERT IGNORE INTO readings (device, epoch, seq, value)".
    ///   - suffix: e.g. "ON DUPLICATE KEY UPDATE value = VALUES(value)"; empty for none.
    /// - Returns: the affected-row count summed over the statements.
    @discardableResult
    public func insertRows(_ insertPrefix: String, rows: [[MariaDBValue]], suffix: String = "",
                           maxRowsPerStatement: Int = 500) throws -> UInt64 {
        guard let width = rows.first?.count else { return 0 }
        let operation = "insert rows with \(Self.excerpt(insertPrefix))"
        guard width > 0 else { throw MariaDBError.usage(operation, "rows have no values") }
        guard maxRowsPerStatement >= 1 else { throw MariaDBError.usage(operation, "maxRowsPerStatement must be at least 1") }
        if let bad = rows.firstIndex(where: { $0.count != width }) {
            throw MariaDBError.usage(operation, "row \(bad) has \(rows[bad].count) values, row 0 has \(width)")
        }
        let chunk = min(maxRowsPerStatement, 65_535 / width)
        guard chunk >= 1 else { throw MariaDBError.usage(operation, "a row of \(width) values exceeds 65 535 parameters") }
        let tuple = "(" + Array(repeating: "?", count: width).joined(separator: ",") + ")"
        var affected: UInt64 = 0
        var start = 0
        while start < rows.count {
            let end = min(start + chunk, rows.count)
            let n = end - start
            var sql = insertPrefix + " VALUES " + Array(repeating: tuple, count: n).joined(separator: ",")
            if !suffix.isEmpty { sql += " " + suffix }
            var binds: [MariaDBValue] = []
            binds.reserveCapacity(n * width)
            for row in rows[start..<end] { binds.append(contentsOf: row) }
            affected += try execute(sql, binds).affectedRows
            start = end
        }
        return affected
    }

    // MARK: bulk insert (array binding)
    //
    // History (docs/benchmarks.md, "Galera: why array-bound inserts lost rows"): when Galera
    // aborts a transaction while an array-bound INSERT of it runs, MariaDB answers the INSERT
    // with OK and ends the transaction silently. `requireOpenTransaction` (before every
    // statement and the COMMIT of a transaction begun here) turns that into
    // `transactionEndedByServer`, so a caller inside `MariaDBConnection.transaction` never
    // commits what follows without the rows; GaleraTests reproduce the fault and the guard.

    /// Inserts `rows` through ONE single-row prepared statement (`insertPrefix VALUES (?,…)`)
    /// executed with arrays of parameters (MariaDB's COM_STMT_BULK_EXECUTE, at most
    /// `rowsPerExecute` rows per round trip). The server then runs the same statement once per
    /// row instead of building and cleaning up an item tree of `rows × width` parameters for a
    /// multi-row VALUES list: in the drain benchmark's profile this took about a fifth off
    /// mariadbd's CPU per row (docs/benchmarks.md). The values of a column are copied into one
    /// buffer per column (no allocation per value). Same result as `insertRows` (the affected
    /// rows summed); falls back to it when the server has no bulk support (MySQL) or a column
    /// mixes kinds of values (e.g. `.int` and `.string`; NULLs mix with anything). Not atomic
    /// by itself: call it inside `MariaDBConnection.transaction`.
    @discardableResult
    public func insertBulk(_ insertPrefix: String, rows: [[MariaDBValue]], rowsPerExecute: Int = 1000) throws -> UInt64 {
        guard let width = rows.first?.count else { return 0 }
        let operation = "bulk insert with \(Self.excerpt(insertPrefix))"
        guard width > 0 else { throw MariaDBError.usage(operation, "rows have no values") }
        if let bad = rows.firstIndex(where: { $0.count != width }) {
            throw MariaDBError.usage(operation, "row \(bad) has \(rows[bad].count) values, row 0 has \(width)")
        }
        guard rowsPerExecute >= 1 else { throw MariaDBError.usage(operation, "rowsPerExecute must be at least 1") }
        let mysql = try open(operation)
        guard fieldlog_mariadb_bulk_supported(mysql) != 0, let kinds = BulkBuffers.columnKinds(rows, width: width) else {
            return try insertRows(insertPrefix, rows: rows, maxRowsPerStatement: rowsPerExecute)
        }
        let sql = insertPrefix + " VALUES (" + Array(repeating: "?", count: width).joined(separator: ",") + ")"
        let stmt = try statement(for: sql)
        let paramCount = Int(mysql_stmt_param_count(stmt))
        guard paramCount == width else {
            throw MariaDBError.usage(operation, "the statement has \(paramCount) parameter(s) but rows have \(width) value(s)")
        }
        var affected: UInt64 = 0
        var start = 0
        while start < rows.count {
            let end = min(start + rowsPerExecute, rows.count)
            let buffers = BulkBuffers(rows: rows[start..<end], kinds: kinds)
            defer { buffers.deallocate() }
            // Back to single-row execution afterwards (`execute` may run the same cached
            // statement), unless a failure closed the statement (a lost connection, 2014, 2057).
            defer {
                if statements[sql]?.statement == stmt {
                    var single: UInt32 = 0
                    _ = mysql_stmt_attr_set(stmt, STMT_ATTR_ARRAY_SIZE, &single)
                }
            }
            // The guard before every statement: a transaction the server ended under the last
            // execute (Galera, see above) is refused here, not run on in autocommit.
            try requireOpenTransaction(mysql, operation)
            var size = UInt32(end - start)
            guard mysql_stmt_attr_set(stmt, STMT_ATTR_ARRAY_SIZE, &size) == 0 else { throw statementFailure(stmt, sql, operation + " (array size)") }
            guard mysql_stmt_bind_param(stmt, buffers.binds) == 0 else { throw statementFailure(stmt, sql, operation + " (binding)") }
            guard mysql_stmt_execute(stmt) == 0 else { throw statementFailure(stmt, sql, operation) }
            affected += mysql_stmt_affected_rows(stmt)
            start = end
        }
        return affected
    }

    // MARK: transactions

    /// Starts a transaction; until `commit()` or `rollback()`, every statement first checks
    /// that the server still has it open.
    public func begin() throws {
        try query("START TRANSACTION")
        transactionOpen = true
    }

    /// Commits the open transaction. Throws `transactionEndedByServer` (and commits nothing)
    /// when the server no longer has it open.
    public func commit() throws {
        let mysql = try open("commit")
        try requireOpenTransaction(mysql, "commit")
        transactionOpen = false
        guard mysql_commit(mysql) == 0 else { throw failure(of: mysql, "commit") }
    }

    /// Rolls the open transaction back.
    public func rollback() throws {
        transactionOpen = false
        let mysql = try open("rollback")
        guard mysql_rollback(mysql) == 0 else { throw failure(of: mysql, "rollback") }
    }

    /// True while a transaction begun here is open and the server's last status says so.
    public var isInTransaction: Bool {
        enter()
        guard transactionOpen, let handle else { return false }
        return fieldlog_mysql_server_status(handle) & UInt32(SERVER_STATUS_IN_TRANS) != 0
    }

    /// Throws when a transaction begun here is no longer open on the server although no
    /// statement reported an error (the status flags come from the last OK or EOF packet; an
    /// error packet carries none, and an error is reported anyway).
    private func requireOpenTransaction(_ mysql: UnsafeMutablePointer<MYSQL>, _ operation: @autoclosure () -> String) throws {
        guard transactionOpen, fieldlog_mysql_server_status(mysql) & UInt32(SERVER_STATUS_IN_TRANS) == 0 else { return }
        transactionOpen = false
        let error = MariaDBError.transactionEndedByServer(operation())
        logger.warning("\(error)")
        throw error
    }

    // MARK: errors

    /// The error of the handle; a lost connection also drops the handle so that
    /// nothing uses a dead connection until `reconnect()`.
    private func failure(of mysql: UnsafeMutablePointer<MYSQL>, _ operation: String) -> MariaDBError {
        let error = Self.error(of: mysql, operation)
        if error.isConnectionLost { disconnect() }
        return error
    }

    private func statementFailure(_ stmt: UnsafeMutablePointer<MYSQL_STMT>, _ sql: String, _ operation: String) -> MariaDBError {
        let error = Self.error(of: stmt, operation)
        if error.isConnectionLost {
            disconnect()
        } else if mysql_stmt_errno(stmt) == 2014 || error.code == 2057 {
            // Out of sync or invalidated: do not reuse this statement.
            if let cached = statements.removeValue(forKey: sql) { mysql_stmt_close(cached.statement) }
        }
        return error
    }

    static func error(of mysql: UnsafeMutablePointer<MYSQL>, _ operation: String) -> MariaDBError {
        MariaDBError(operation: operation, code: mysql_errno(mysql),
                     sqlState: String(cString: mysql_sqlstate(mysql)), message: String(cString: mysql_error(mysql)))
    }

    static func error(of stmt: UnsafeMutablePointer<MYSQL_STMT>, _ operation: String) -> MariaDBError {
        MariaDBError(operation: operation, code: mysql_stmt_errno(stmt),
                     sqlState: String(cString: mysql_stmt_sqlstate(stmt)), message: String(cString: mysql_stmt_error(stmt)))
    }

    /// The statement's first 120 characters on one line, for error messages. Built for every
    /// statement (the operation's name), so it only looks at the start: a multi-row INSERT is
    /// hundreds of kilobytes, and splitting all of it cost a tenth of the ingest's CPU.
    static func excerpt(_ sql: String) -> String {
        let head = Substring(sql.unicodeScalars.prefix(121))
        let oneLine = head.split(whereSeparator: \.isNewline).joined(separator: " ")
        return "`" + (head.unicodeScalars.count > 120 || oneLine.count > 120 ? oneLine.prefix(120) + "…" : oneLine) + "`"
    }
}

private func withOptionalCString<R>(_ s: String?, _ body: (UnsafePointer<CChar>?) -> R) -> R {
    guard let s else { return body(nil) }
    return s.withCString { body($0) }
}

// MARK: column decoding

enum ColumnKind: Equatable {
    case signed, unsigned, floating, text, binary
    /// DATETIME or TIMESTAMP with 0…6 fractional digits. Text as the server prints it
    /// (`2026-12-05 09:08:11.000`); a prepared statement receives the binary `MYSQL_TIME` and
    /// formats it here (Connector/C's conversion to a string goes through `snprintf`: half
    /// of the client's CPU for a day of one device's readings, docs/benchmarks.md "Queries").
    case dateTime(fractionDigits: Int)

    init(_ field: MYSQL_FIELD) {
        let unsigned = field.flags & UInt32(UNSIGNED_FLAG) != 0
        switch field.type {
        case MYSQL_TYPE_DATETIME, MYSQL_TYPE_TIMESTAMP, MYSQL_TYPE_DATETIME2, MYSQL_TYPE_TIMESTAMP2:
            // decimals is 0…6 for a column; an expression may say 39 ("not fixed"): as text.
            self = field.decimals <= 6 ? .dateTime(fractionDigits: Int(field.decimals)) : .text
        case MYSQL_TYPE_TINY, MYSQL_TYPE_SHORT, MYSQL_TYPE_LONG, MYSQL_TYPE_LONGLONG, MYSQL_TYPE_INT24, MYSQL_TYPE_YEAR:
            self = unsigned ? .unsigned : .signed
        case MYSQL_TYPE_FLOAT, MYSQL_TYPE_DOUBLE:
            self = .floating
        case MYSQL_TYPE_BIT, MYSQL_TYPE_GEOMETRY:
            self = .binary
        case MYSQL_TYPE_TINY_BLOB, MYSQL_TYPE_MEDIUM_BLOB, MYSQL_TYPE_LONG_BLOB, MYSQL_TYPE_BLOB,
             MYSQL_TYPE_VAR_STRING, MYSQL_TYPE_STRING, MYSQL_TYPE_VARCHAR:
            self = field.charsetnr == 63 ? .binary : .text // 63: the "binary" character set
        default:
            self = .text // DECIMAL, dates and times, JSON, ENUM, SET: as the server prints them
        }
    }

    func decodeText(_ raw: UnsafeRawBufferPointer) -> MariaDBValue {
        let text = { String(decoding: raw, as: UTF8.self) }
        switch self {
        case .signed: return Int64(text()).map(MariaDBValue.int) ?? .string(text())
        case .unsigned: return UInt64(text()).map(MariaDBValue.uint) ?? .string(text())
        case .floating: return Double(text()).map(MariaDBValue.double) ?? .string(text())
        case .text, .dateTime: return .string(text())
        case .binary: return .bytes(Array(raw))
        }
    }
}

/// MYSQL_BIND array and value buffers for statement parameters; freed by `deallocate()`.
private struct BindBuffers {
    let binds: UnsafeMutablePointer<MYSQL_BIND>
    let count: Int
    private var buffers: [UnsafeMutableRawPointer] = []

    init(values: [MariaDBValue]) {
        count = values.count
        binds = .allocate(capacity: max(count, 1))
        binds.initialize(repeating: MYSQL_BIND(), count: max(count, 1))
        for (i, value) in values.enumerated() {
            switch value {
            case .null:
                binds[i].buffer_type = MYSQL_TYPE_NULL
            case .int(let v):
                binds[i].buffer_type = MYSQL_TYPE_LONGLONG
                binds[i].buffer = store(v)
            case .uint(let v):
                binds[i].buffer_type = MYSQL_TYPE_LONGLONG
                binds[i].buffer = store(v)
                binds[i].is_unsigned = 1
            case .double(let v):
                binds[i].buffer_type = MYSQL_TYPE_DOUBLE
                binds[i].buffer = store(v)
            case .string(let s):
                binds[i].buffer_type = MYSQL_TYPE_STRING
                let bytes = Array(s.utf8)
                binds[i].buffer = store(bytes)
                binds[i].buffer_length = UInt(bytes.count)
            case .bytes(let b):
                binds[i].buffer_type = MYSQL_TYPE_BLOB
                binds[i].buffer = store(b)
                binds[i].buffer_length = UInt(b.count)
            }
        }
    }

    private mutating func store<T>(_ value: T) -> UnsafeMutableRawPointer {
        let p = UnsafeMutableRawPointer.allocate(byteCount: MemoryLayout<T>.size, alignment: MemoryLayout<T>.alignment)
        p.storeBytes(of: value, as: T.self)
        buffers.append(p)
        return p
    }

    private mutating func store(_ bytes: [UInt8]) -> UnsafeMutableRawPointer {
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(bytes.count, 1), alignment: 1)
        bytes.withUnsafeBytes { if let base = $0.baseAddress { p.copyMemory(from: base, byteCount: $0.count) } }
        buffers.append(p)
        return p
    }

    func deallocate() {
        for p in buffers { p.deallocate() }
        binds.deinitialize(count: max(count, 1))
        binds.deallocate()
    }
}

/// MYSQL_BIND array and buffers receiving one row of a prepared statement's result.
private struct ResultBuffers {
    let binds: UnsafeMutablePointer<MYSQL_BIND>
    let kinds: [ColumnKind]
    let buffers: [UnsafeMutableRawPointer]
    let bufferSizes: [Int]
    let lengths: UnsafeMutablePointer<UInt>
    let nulls: UnsafeMutablePointer<my_bool>
    let errors: UnsafeMutablePointer<my_bool>

    init(kinds: [ColumnKind], maxLengths: [Int]) {
        let n = max(kinds.count, 1)
        self.kinds = kinds
        binds = .allocate(capacity: n)
        binds.initialize(repeating: MYSQL_BIND(), count: n)
        lengths = .allocate(capacity: n)
        lengths.initialize(repeating: 0, count: n)
        nulls = .allocate(capacity: n)
        nulls.initialize(repeating: 0, count: n)
        errors = .allocate(capacity: n)
        errors.initialize(repeating: 0, count: n)
        var buffers: [UnsafeMutableRawPointer] = []
        var sizes: [Int] = []
        for (i, kind) in kinds.enumerated() {
            let size: Int
            switch kind {
            case .signed, .unsigned:
                binds[i].buffer_type = MYSQL_TYPE_LONGLONG
                binds[i].is_unsigned = kind == .unsigned ? 1 : 0
                size = 8
            case .floating:
                binds[i].buffer_type = MYSQL_TYPE_DOUBLE
                size = 8
            case .text:
                binds[i].buffer_type = MYSQL_TYPE_STRING
                size = max(maxLengths[i], 64)
            case .dateTime:
                binds[i].buffer_type = MYSQL_TYPE_DATETIME
                size = MemoryLayout<MYSQL_TIME>.size
            case .binary:
                binds[i].buffer_type = MYSQL_TYPE_BLOB
                size = max(maxLengths[i], 64)
            }
            let p = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
            buffers.append(p)
            sizes.append(size)
            binds[i].buffer = p
            binds[i].buffer_length = UInt(size)
            binds[i].length = lengths + i
            binds[i].is_null = nulls + i
            binds[i].error = errors + i
        }
        self.buffers = buffers
        self.bufferSizes = sizes
    }

    func value(at i: Int, stmt: UnsafeMutablePointer<MYSQL_STMT>, operation: String) throws -> MariaDBValue {
        if nulls[i] != 0 { return .null }
        switch kinds[i] {
        case .signed: return .int(buffers[i].load(as: Int64.self))
        case .unsigned: return .uint(buffers[i].load(as: UInt64.self))
        case .floating: return .double(buffers[i].load(as: Double.self))
        case .dateTime(let digits): return .string(Self.format(buffers[i].load(as: MYSQL_TIME.self), fractionDigits: digits))
        case .text, .binary:
            let length = Int(lengths[i])
            // Straight from the buffer: one copy (none for a text of up to 15 bytes).
            func value(_ raw: UnsafeRawBufferPointer) -> MariaDBValue {
                kinds[i] == .binary ? .bytes(Array(raw)) : .string(String(decoding: raw, as: UTF8.self))
            }
            if length <= bufferSizes[i] { return value(UnsafeRawBufferPointer(start: buffers[i], count: length)) }
            // Longer than the buffer (max_length was not known): fetch the column again, whole.
            var bytes = [UInt8](repeating: 0, count: length)
            var column = MYSQL_BIND()
            var columnLength: UInt = 0
            column.buffer_type = binds[i].buffer_type
            column.buffer_length = UInt(length)
            let rc = bytes.withUnsafeMutableBytes { raw -> Int32 in
                column.buffer = raw.baseAddress
                return withUnsafeMutablePointer(to: &columnLength) { lengthPointer in
                    column.length = lengthPointer
                    return mysql_stmt_fetch_column(stmt, &column, UInt32(i), 0)
                }
            }
            guard rc == 0 else { throw MariaDBSession.error(of: stmt, operation + " (fetching column \(i))") }
            return kinds[i] == .binary ? .bytes(bytes) : bytes.withUnsafeBytes(value)
        }
    }

    /// `YYYY-MM-DD hh:mm:ss[.f…]`, as the server prints a DATETIME with `fractionDigits` (0…6).
    static func format(_ t: MYSQL_TIME, fractionDigits: Int) -> String {
        let count = 19 + (fractionDigits > 0 ? 1 + fractionDigits : 0)
        return String(unsafeUninitializedCapacity: count) { out in
            var at = 0
            func put(_ value: UInt, digits: Int) {
                var v = value
                for k in stride(from: digits - 1, through: 0, by: -1) {
                    out[at + k] = UInt8(ascii: "0") + UInt8(v % 10)
                    v /= 10
                }
                at += digits
            }
            func put(_ byte: Character) { out[at] = byte.asciiValue!; at += 1 }
            put(UInt(t.year % 10_000), digits: 4); put("-"); put(UInt(t.month % 100), digits: 2); put("-")
            put(UInt(t.day % 100), digits: 2); put(" "); put(UInt(t.hour % 100), digits: 2); put(":")
            put(UInt(t.minute % 100), digits: 2); put(":"); put(UInt(t.second % 100), digits: 2)
            if fractionDigits > 0 {
                put(".")
                var fraction = UInt(t.second_part % 1_000_000)
                for _ in fractionDigits..<6 { fraction /= 10 }
                put(fraction, digits: fractionDigits)
            }
            return at
        }
    }

    func deallocate() {
        for p in buffers { p.deallocate() }
        let n = max(kinds.count, 1)
        binds.deinitialize(count: n)
        binds.deallocate()
        lengths.deallocate()
        nulls.deallocate()
        errors.deallocate()
    }
}

/// buffer (fixed-size values side by side; for text and binary an array of pointers into one
/// byte arena plus an array of lengths) and, when the column has NULLs, an indicator array.
/// Freed by `deallocate()`.
private struct BulkBuffers {
    enum Kind: Equatable { case int, uint, double, text, bytes, null }

    let binds: UnsafeMutablePointer<MYSQL_BIND>
    let width: Int
    private var allocations: [UnsafeMutableRawPointer] = []

    /// The kind of each column, nil when a column mixes kinds (then the caller uses multi-row VALUES).
    static func columnKinds(_ rows: [[MariaDBValue]], width: Int) -> [Kind]? {
        var kinds = [Kind](repeating: .null, count: width)
        for row in rows {
            for (i, v) in row.enumerated() {
                let k: Kind
                switch v {
                case .null: continue
                case .int: k = .int
                case .uint: k = .uint
                case .double: k = .double
                case .string: k = .text
                case .bytes: k = .bytes
                }
                if kinds[i] == .null { kinds[i] = k } else if kinds[i] != k { return nil }
            }
        }
        return kinds
    }

    init(rows: ArraySlice<[MariaDBValue]>, kinds: [Kind]) {
        width = kinds.count
        let n = rows.count
        binds = .allocate(capacity: width)
        binds.initialize(repeating: MYSQL_BIND(), count: width)
        for (column, kind) in kinds.enumerated() {
            var hasNull = false
            for row in rows { if case .null = row[column] { hasNull = true; break } }
            if hasNull {
                let indicators = allocate(n, of: CChar.self)
                for (j, row) in rows.enumerated() {
                    if case .null = row[column] {
                        indicators[j] = CChar(STMT_INDICATOR_NULL.rawValue)
                    } else {
                        indicators[j] = CChar(STMT_INDICATOR_NONE.rawValue)
                    }
                }
                binds[column].u.indicator = indicators
            }
            switch kind {
            case .int, .uint:
                let values = allocate(n, of: Int64.self)
                for (j, row) in rows.enumerated() {
                    switch row[column] {
                    case .int(let v): values[j] = v
                    case .uint(let v): values[j] = Int64(bitPattern: v)
                    default: values[j] = 0
                    }
                }
                binds[column].buffer_type = MYSQL_TYPE_LONGLONG
                binds[column].is_unsigned = kind == .uint ? 1 : 0
                binds[column].buffer = UnsafeMutableRawPointer(values)
            case .double:
                let values = allocate(n, of: Double.self)
                for (j, row) in rows.enumerated() {
                    if case .double(let v) = row[column] { values[j] = v } else { values[j] = 0 }
                }
                binds[column].buffer_type = MYSQL_TYPE_DOUBLE
                binds[column].buffer = UnsafeMutableRawPointer(values)
            case .text, .bytes, .null:
                var total = 0
                for row in rows {
                    switch row[column] {
                    case .string(let s): total += s.utf8.count
                    case .bytes(let b): total += b.count
                    default: break
                    }
                }
                let arena = allocate(max(total, 1), of: UInt8.self)
                let pointers = allocate(n, of: UnsafeMutableRawPointer?.self)
                let lengths = allocate(n, of: UInt.self)
                var offset = 0
                for (j, row) in rows.enumerated() {
                    let start = arena + offset
                    switch row[column] {
                    case .string(let s):
                        var s = s
                        let count = s.withUTF8 { utf8 -> Int in
                            if let base = utf8.baseAddress { start.update(from: base, count: utf8.count) }
                            return utf8.count
                        }
                        offset += count
                        lengths[j] = UInt(count)
                    case .bytes(let b):
                        b.withUnsafeBufferPointer { if let base = $0.baseAddress { start.update(from: base, count: $0.count) } }
                        offset += b.count
                        lengths[j] = UInt(b.count)
                    default:
                        lengths[j] = 0
                    }
                    pointers[j] = UnsafeMutableRawPointer(start)
                }
                binds[column].buffer_type = kind == .bytes ? MYSQL_TYPE_BLOB : MYSQL_TYPE_STRING
                binds[column].buffer = UnsafeMutableRawPointer(pointers)
                binds[column].length = lengths
            }
        }
    }

    private mutating func allocate<T>(_ count: Int, of: T.Type) -> UnsafeMutablePointer<T> {
        let p = UnsafeMutablePointer<T>.allocate(capacity: max(count, 1))
        allocations.append(UnsafeMutableRawPointer(p))
        return p
    }

    func deallocate() {
        for p in allocations { p.deallocate() }
        binds.deinitialize(count: width)
        binds.deallocate()
    }
}
