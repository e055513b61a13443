// The checker's eyes, independent of the code under test.
//
// - `DeviceLogSnapshot.read(path:)` opens a device's SQLite log file READ-ONLY with
//   libsqlite3 directly (not through the Log module) and reads the tables with plain SQL:
//   `meta` (device_id, epoch as hex), `state` (head, acked), `records` (seq, ts_ms) and
//   `loss_markers` (first, last, reason).
// - `DatabaseReader` runs plain SQL through the `mariadb` command-line client (MariaDB's own
//   tool, not Fieldlog's wrapper) and parses its tab-separated output.
// So a bug in Fieldlog's Log, Sync, MariaDB wrapper or BackendNode cannot hide itself from
// the checker.
import CSQLite
import Foundation
import Processes

/// A device's declared loss range, as read from its log or from the database.
public struct DeclaredLoss: Hashable, Sendable {
    public var first: UInt64
    public var last: UInt64
    public var reason: String
    public init(first: UInt64, last: UInt64, reason: String) {
        self.first = first
        self.last = last
        self.reason = reason
    }
    public func contains(_ seq: UInt64) -> Bool { first <= seq && seq <= last }
}

/// What one device log file holds at one moment.
public struct DeviceLogSnapshot: Sendable {
    public var path: String
    public var deviceID: String
    public var epoch: UInt64
    public var head: UInt64
    public var acked: UInt64
    /// seq → device time (ms) of every record still in the file.
    public var records: [UInt64: Int64]
    public var lossMarkers: [DeclaredLoss]

    public init(path: String, deviceID: String, epoch: UInt64, head: UInt64, acked: UInt64, records: [UInt64: Int64], lossMarkers: [DeclaredLoss]) {
        self.path = path
        self.deviceID = deviceID
        self.epoch = epoch
        self.head = head
        self.acked = acked
        self.records = records
        self.lossMarkers = lossMarkers
    }

    /// Reads the file read-only; retries briefly when a writer holds a lock.
    public static func read(path: String) throws -> DeviceLogSnapshot {
        var db: OpaquePointer?
        let flags = SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX
        let rc = sqlite3_open_v2(path, &db, flags, nil)
        defer { sqlite3_close_v2(db) }
        guard rc == SQLITE_OK, let db else {
            throw LabError.command("checker: cannot open device log \(path) read-only: \(String(cString: sqlite3_errstr(rc)))")
        }
        sqlite3_busy_timeout(db, 5000)
        // One read transaction, so head, acked and records are one consistent picture.
        try exec(db, "BEGIN", path)
        defer { _ = try? exec(db, "COMMIT", path) }
        var meta: [String: String] = [:]
        try query(db, "SELECT key, value FROM meta", path) { stmt in
            meta[text(stmt, 0)] = text(stmt, 1)
        }
        guard let device = meta["device_id"], let epochHex = meta["epoch"], let epoch = UInt64(epochHex, radix: 16) else {
            throw LabError.command("checker: \(path) has no device_id/epoch in meta: \(meta)")
        }
        var head: UInt64 = 0, acked: UInt64 = 0
        // The head is max(state.head, highest record): appends insert records only (docs/log.md).
        try query(db, "SELECT max(head, coalesce((SELECT max(seq) FROM records), 0)), acked FROM state WHERE id = 1", path) { stmt in
            head = UInt64(sqlite3_column_int64(stmt, 0))
            acked = UInt64(sqlite3_column_int64(stmt, 1))
        }
        var records: [UInt64: Int64] = [:]
        try query(db, "SELECT seq, ts_ms FROM records", path) { stmt in
            records[UInt64(sqlite3_column_int64(stmt, 0))] = sqlite3_column_int64(stmt, 1)
        }
        var markers: [DeclaredLoss] = []
        try query(db, "SELECT first, last, reason FROM loss_markers", path) { stmt in
            markers.append(DeclaredLoss(first: UInt64(sqlite3_column_int64(stmt, 0)), last: UInt64(sqlite3_column_int64(stmt, 1)),
                                        reason: text(stmt, 2)))
        }
        return DeviceLogSnapshot(path: path, deviceID: device, epoch: epoch, head: head, acked: acked, records: records, lossMarkers: markers)
    }

    /// Head, acked, epoch and loss markers (cheap, for progress and drain detection), and the
    /// records after `recordsAfter` (seq and device time, ascending, at most 20,000) when asked.
    public static func readState(path: String, recordsAfter: UInt64? = nil)
        throws -> (epoch: UInt64, head: UInt64, acked: UInt64, markers: [DeclaredLoss], records: [(seq: UInt64, tsMs: Int64)]) {
        var db: OpaquePointer?
        let rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nil)
        defer { sqlite3_close_v2(db) }
        guard rc == SQLITE_OK, let db else {
            throw LabError.command("checker: cannot open device log \(path) read-only: \(String(cString: sqlite3_errstr(rc)))")
        }
        sqlite3_busy_timeout(db, 2000)
        try exec(db, "BEGIN", path)
        defer { _ = try? exec(db, "COMMIT", path) }
        var epoch: UInt64 = 0, head: UInt64 = 0, acked: UInt64 = 0
        try query(db, "SELECT value FROM meta WHERE key = 'epoch'", path) { epoch = UInt64(text($0, 0), radix: 16) ?? 0 }
        // The head is max(state.head, highest record): appends insert records only (docs/log.md).
        try query(db, "SELECT max(head, coalesce((SELECT max(seq) FROM records), 0)), acked FROM state WHERE id = 1", path) { stmt in
            head = UInt64(sqlite3_column_int64(stmt, 0))
            acked = UInt64(sqlite3_column_int64(stmt, 1))
        }
        var markers: [DeclaredLoss] = []
        try query(db, "SELECT first, last, reason FROM loss_markers", path) { stmt in
            markers.append(DeclaredLoss(first: UInt64(sqlite3_column_int64(stmt, 0)), last: UInt64(sqlite3_column_int64(stmt, 1)),
                                        reason: text(stmt, 2)))
        }
        var records: [(seq: UInt64, tsMs: Int64)] = []
        if let after = recordsAfter {
            try query(db, "SELECT seq, ts_ms FROM records WHERE seq > \(after) ORDER BY seq LIMIT 20000", path) { stmt in
                records.append((UInt64(sqlite3_column_int64(stmt, 0)), sqlite3_column_int64(stmt, 1)))
            }
        }
        return (epoch, head, acked, markers, records)
    }

    private static func exec(_ db: OpaquePointer, _ sql: String, _ path: String) throws {
        let rc = sqlite3_exec(db, sql, nil, nil, nil)
        guard rc == SQLITE_OK else {
            throw LabError.command("checker: \(sql) on \(path): \(String(cString: sqlite3_errmsg(db)))")
        }
    }

    private static func query(_ db: OpaquePointer, _ sql: String, _ path: String, _ row: (OpaquePointer) -> Void) throws {
        var stmt: OpaquePointer?
        guard sqlite3_prepare_v2(db, sql, -1, &stmt, nil) == SQLITE_OK, let stmt else {
            throw LabError.command("checker: prepare \(sql) on \(path): \(String(cString: sqlite3_errmsg(db)))")
        }
        defer { sqlite3_finalize(stmt) }
        while true {
            let rc = sqlite3_step(stmt)
            if rc == SQLITE_ROW { row(stmt); continue }
            if rc == SQLITE_DONE { return }
            throw LabError.command("checker: \(sql) on \(path): \(String(cString: sqlite3_errmsg(db)))")
        }
    }

    private static func text(_ stmt: OpaquePointer, _ column: Int32) -> String {
        guard let p = sqlite3_column_text(stmt, column) else { return "" }
        return String(cString: p)
    }
}

/// Where the lab's MariaDB is and how to log in (plain SQL through the `mariadb` client).
public struct DatabaseAccess: Sendable {
    public var host: String
    public var port: Int
    public var user: String
    public var password: String
    public var database: String

    public init(host: String, port: Int, user: String, password: String, database: String) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.database = database
    }

    /// Runs SQL and returns rows of tab-separated columns (NULL as "NULL").
    public func rows(_ sql: String, timeoutSeconds: Double = 120) throws -> [[String]] {
        // The password goes through MYSQL_PWD, not the command line (visible in process lists).
        var env = ProcessInfo.processInfo.environment
        env["MYSQL_PWD"] = password
        let out = try Tool.run("mariadb", ["--no-defaults", "-h", host, "-P", String(port), "-u", user,
                                          "--batch", "--skip-column-names", "--connect-timeout=5", database, "-e", sql],
                              environment: env, timeoutSeconds: timeoutSeconds)
        return out.split(separator: "\n", omittingEmptySubsequences: true).map { $0.split(separator: "\t", omittingEmptySubsequences: false).map(String.init) }
    }
}

/// What the database holds for one device.
public struct DatabaseDeviceView: Sendable {
    /// epoch → seq → (row count, device_ms)
    public var readings: [UInt64: [UInt64: (count: Int, deviceMs: Int64)]] = [:]
    /// epoch → declared loss ranges
    public var losses: [UInt64: [DeclaredLoss]] = [:]

    public init() {}

    public static func read(_ db: DatabaseAccess, device: String) throws -> DatabaseDeviceView {
        precondition(device.allSatisfy { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == "." }, "device id \(device) is not SQL-safe")
        var view = DatabaseDeviceView()
        // GROUP BY counts rows per key: with a primary key this is 1, but the checker does not
        // rely on the schema to rule out duplicates.
        for r in try db.rows("SELECT epoch, seq, COUNT(*), MIN(device_ms) FROM readings WHERE device_id = '\(device)' GROUP BY epoch, seq") {
            guard r.count == 4, let e = UInt64(r[0]), let s = UInt64(r[1]), let c = Int(r[2]), let ms = Int64(r[3]) else {
                throw LabError.command("checker: unexpected readings row \(r)")
            }
            view.readings[e, default: [:]][s] = (c, ms)
        }
        for r in try db.rows("SELECT epoch, first_seq, last_seq, reason FROM loss_ranges WHERE device_id = '\(device)'") {
            guard r.count == 4, let e = UInt64(r[0]), let f = UInt64(r[1]), let l = UInt64(r[2]) else {
                throw LabError.command("checker: unexpected loss_ranges row \(r)")
            }
            view.losses[e, default: []].append(DeclaredLoss(first: f, last: l, reason: r[3]))
        }
        return view
    }
}
