// The array-bound insert loss under Galera, reproduced (docs/benchmarks.md, "Galera: why
// array-bound inserts lost rows"). A transaction on node 1 holds a key; while it runs an
// array-bound INSERT (COM_STMT_BULK_EXECUTE, what the removed `insertBulk` sent), node 2
// commits the same key, and node 1's applier aborts the transaction (a certification
// conflict). MariaDB 10.11 rolls the rows back but answers the INSERT with OK, every row
// counted, and the session out of its transaction; the statements after it would run and
// commit one by one in autocommit mode. That is how a `batch_ranges` row got committed (and
// acked) without its readings. The session's transaction guard must refuse the next statement
// (1213, `endedTransactionSilently`), so nothing of the transaction is committed. The same
// abort during a multi-row INSERT (what the ingest sends) is reported by the server itself.
// Runs on the class's cluster (GaleraClusterTests.cluster()); a few seconds once it is up.
import CMariaDB
import FieldlogCore
import Foundation
import Logging
import TestSupport
import XCTest
@testable import MariaDB
import Synchronization

extension GaleraClusterTests {
    func testAnArrayBoundInsertAbortedByACertificationConflictIsCaughtNotCommittedWithoutItsRows() async throws {
        let g = try Self.cluster()
        let name = Stack.uniqueName("bulkabort").replacingOccurrences(of: "-", with: "_")
        try g.sql("CREATE DATABASE `\(name)`")
        defer { try? g.sql("DROP DATABASE `\(name)`") }
        try g.sql("CREATE TABLE held (k INT PRIMARY KEY); CREATE TABLE r (id INT PRIMARY KEY, v INT); CREATE TABLE ranges (id INT PRIMARY KEY)",
                  database: name)
        func connect(_ node: Int) async throws -> MariaDBConnection {
            try await MariaDBConnection.connect(configuration: MariaDBConfiguration(
                port: g.port(node), user: g.user, password: g.password, database: name,
                connectTimeout: .seconds(5), readTimeout: .seconds(30), writeTimeout: .seconds(30)))
        }
        let a = try await connect(1), b = try await connect(2), checker = try await connect(3)
        try await checker.query("SET SESSION wsrep_sync_wait = 1")
        let rowsPerInsert = 20_000

        /// One round: A holds `k`, inserts `rowsPerInsert` rows (array-bound or multi-row) while
        /// B commits `k` on node 2, then A inserts its "batch range" and commits.
        func round(_ k: Int32, arrayBound: Bool) async throws -> (outcome: String, bulkOK: Bool) {
            let base = k * 100_000
            let bulkOK = LockedBox(false), holding = LockedBox(false)
            let conflict = Task {
                // Once A holds the key (and its INSERT is under way), commit the same key on node 2.
                while !holding.value { try await Task.sleep(for: .milliseconds(1)) }
                try await Task.sleep(for: .milliseconds(10))
                try await b.execute("INSERT INTO held VALUES (?)", [.int(Int64(k))])
            }
            defer { conflict.cancel() }
            var outcome = "committed"
            do {
                try await a.transaction { s in
                    try s.execute("INSERT INTO held VALUES (?)", [.int(Int64(k))])
                    holding.value = true
                    if arrayBound {
                        let (rc, affected) = try s.withUnsafeHandle { Self.arrayBoundInsert($0, first: base, count: Int32(rowsPerInsert)) }
                        // The server's word: OK and every row, whatever happened to the transaction.
                        bulkOK.value = rc == 0 && affected == UInt64(rowsPerInsert)
                    } else {
                        try s.insertRows("INSERT INTO r (id, v)", rows: (0..<Int64(rowsPerInsert)).map { [.int(Int64(base) + $0), .int($0)] })
                    }
                    try s.execute("INSERT INTO ranges VALUES (?)", [.int(Int64(base))])
                }
            } catch let e as MariaDBError where e.isDeadlock {
                outcome = e.endedTransactionSilently ? "refused by the session guard" : "1213 from the server"
            }
            if !holding.value { conflict.cancel() } // A failed before holding the key
            _ = try? await conflict.value
            // Never a range without its rows, on any node.
            let rows = try await checker.execute("SELECT COUNT(*) FROM r WHERE id BETWEEN ? AND ?", [.int(Int64(base)), .int(Int64(base) + Int64(rowsPerInsert) - 1)])
            let ranges = try await checker.execute("SELECT COUNT(*) FROM ranges WHERE id = ?", [.int(Int64(base))])
            let stored = (rows.rows[0][0].int64 ?? -1, ranges.rows[0][0].int64 ?? -1)
            XCTAssertTrue(stored == (0, 0) || stored == (Int64(rowsPerInsert), 1),
                          "round \(k) (\(arrayBound ? "array-bound" : "multi-row"), \(outcome)): \(stored.0) rows and \(stored.1) range row on node 3")
            return (outcome, bulkOK.value)
        }

        var outcomes: [String: Int] = [:]
        var k: Int32 = 1
        // Array-bound: until the silent case has shown up three times (on this machine it is
        // nearly every round; when the abort comes after the INSERT, the server reports it).
        var silent = 0
        while silent < 3 && k <= 10 {
            let (outcome, bulkOK) = try await round(k, arrayBound: true)
            outcomes["array-bound: \(outcome)\(bulkOK ? " (the INSERT said OK, all rows)" : "")", default: 0] += 1
            if outcome == "refused by the session guard" && bulkOK { silent += 1 }
            k += 1
        }
        for _ in 0..<3 {
            let (outcome, _) = try await round(k, arrayBound: false)
            outcomes["multi-row: \(outcome)", default: 0] += 1
            k += 1
        }
        print("galera: array-bound vs multi-row INSERT aborted by a certification conflict: \(outcomes.sorted { $0.key < $1.key })")
        XCTAssertGreaterThanOrEqual(silent, 1, "MariaDB answered an aborted array-bound INSERT with OK and the session guard caught it: \(outcomes)")
        XCTAssertNil(outcomes["multi-row: committed"], "a multi-row INSERT under the same conflict is reported by the server: \(outcomes)")
        await a.close(); await b.close(); await checker.close()
    }

    /// What the removed `insertBulk` sent: one single-row prepared INSERT executed with arrays
    /// of parameters (STMT_ATTR_ARRAY_SIZE, COM_STMT_BULK_EXECUTE). Returns the execute's
    /// return code and `mysql_stmt_affected_rows`.
    static func arrayBoundInsert(_ mysql: UnsafeMutablePointer<MYSQL>, first: Int32, count: Int32) -> (Int32, UInt64) {
        guard let stmt = mysql_stmt_init(mysql) else { return (-1, 0) }
        defer { mysql_stmt_close(stmt) }
        let sql = "INSERT IGNORE INTO r (id, v) VALUES (?, ?)"
        guard mysql_stmt_prepare(stmt, sql, UInt(sql.utf8.count)) == 0 else { return (-1, 0) }
        var ids = (0..<count).map { first + $0 }, values = Array(0..<count)
        var size = UInt32(count)
        _ = mysql_stmt_attr_set(stmt, STMT_ATTR_ARRAY_SIZE, &size)
        return ids.withUnsafeMutableBufferPointer { idp in
            values.withUnsafeMutableBufferPointer { vp in
                var binds = [MYSQL_BIND](repeating: MYSQL_BIND(), count: 2)
                binds[0].buffer_type = MYSQL_TYPE_LONG
                binds[0].buffer = UnsafeMutableRawPointer(idp.baseAddress)
                binds[1].buffer_type = MYSQL_TYPE_LONG
                binds[1].buffer = UnsafeMutableRawPointer(vp.baseAddress)
                guard mysql_stmt_bind_param(stmt, &binds) == 0 else { return (-1, 0) }
                let rc = mysql_stmt_execute(stmt)
                return (rc, rc == 0 ? mysql_stmt_affected_rows(stmt) : 0)
            }
        }
    }
}

/// A value shared with a closure that runs on another thread.
final class LockedBox<T: Sendable>: Sendable {
    private let stored: Mutex<T>
    init(_ value: T) { stored = Mutex(value) }
    var value: T {
        get { stored.withLock { $0 } }
        set { stored.withLock { $0 = newValue } }
    }
}
