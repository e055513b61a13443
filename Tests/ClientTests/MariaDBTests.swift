// MariaDB wrapper against the shared stack's real MariaDB (each test in a fresh database).
import Foundation
import MariaDB
import TestSupport
import XCTest

final class MariaDBTests: XCTestCase {
    private var stack: Stack!
    private var database: String!

    override func setUpWithError() throws {
        guard let stack = try Stack.available() else { throw XCTSkip("no service stack (run scripts/stack up)") }
        self.stack = stack
        database = try stack.createDatabase("clients")
    }

    override func tearDownWithError() throws {
        if let database { try stack.dropDatabase(database) }
    }

    private func configuration(port: Int? = nil, socket: Bool = false) -> MariaDBConfiguration {
        MariaDBConfiguration(host: stack.mariaDBHost, port: port ?? stack.mariaDBPort,
                             unixSocket: socket ? stack.mariaDBSocket : nil,
                             user: stack.mariaDBUser, password: stack.mariaDBPassword, database: database,
                             connectTimeout: .seconds(2), readTimeout: .seconds(10), writeTimeout: .seconds(10))
    }

    private func connect() async throws -> MariaDBConnection {
        try await MariaDBConnection.connect(configuration: configuration())
    }

    func testCreateReadUpdateDelete() async throws {
        let db = try await connect()
        try await db.query("CREATE TABLE items (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(50) NOT NULL, qty INT UNSIGNED)")
        let inserted = try await db.execute("INSERT INTO items (name, qty) VALUES (?, ?)", [.string("bolt"), .uint(5)])
        XCTAssertEqual(inserted.affectedRows, 1)
        XCTAssertEqual(inserted.lastInsertID, 1)
        try await db.execute("INSERT INTO items (name, qty) VALUES (?, ?)", [.string("nut"), .uint(7)])

        let read = try await db.query("SELECT id, name, qty FROM items ORDER BY id")
        XCTAssertEqual(read.columns, ["id", "name", "qty"])
        XCTAssertEqual(read.rows, [[.int(1), .string("bolt"), .uint(5)], [.int(2), .string("nut"), .uint(7)]])

        let updated = try await db.execute("UPDATE items SET qty = qty + ? WHERE name = ?", [.int(10), .string("nut")])
        XCTAssertEqual(updated.affectedRows, 1)
        let qty = try await db.execute("SELECT qty FROM items WHERE name = ?", [.string("nut")])
        XCTAssertEqual(qty.rows, [[.uint(17)]])

        let deleted = try await db.execute("DELETE FROM items WHERE id = ?", [.int(1)])
        XCTAssertEqual(deleted.affectedRows, 1)
        let left = try await db.query("SELECT COUNT(*) AS n FROM items")
        XCTAssertEqual(left.value(row: 0, column: "n"), .int(1))
    }

    func testPreparedBindsOfEveryTypeRoundTrip() async throws {
        let db = try await connect()
        try await db.query("""
            CREATE TABLE v (k INT PRIMARY KEY, i BIGINT NULL, u BIGINT UNSIGNED NULL, d DOUBLE NULL,
                            s VARCHAR(200) NULL, b VARBINARY(200) NULL, t TEXT NULL, big LONGBLOB NULL)
            """)
        let unicode = "Grüße, 温度 🌡️ ∑"
        let binary: [UInt8] = [0, 1, 0, 255, 0x7f, 0]
        let big = [UInt8]((0..<100_000).map { UInt8($0 % 251) })
        try await db.execute("INSERT INTO v VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             [.int(1), .int(Int64.min), .uint(UInt64.max), .double(-1.5e-300), .string(unicode),
                              .bytes(binary), .string(""), .bytes(big)])
        try await db.execute("INSERT INTO v VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             [.int(2), .null, .null, .null, .null, .null, .null, .null])

        // Binary protocol (prepared) and text protocol must read the same values.
        let prepared = try await db.execute("SELECT i, u, d, s, b, t, big FROM v WHERE k = ?", [.int(1)])
        let text = try await db.query("SELECT i, u, d, s, b, t, big FROM v WHERE k = 1")
        for result in [prepared, text] {
            XCTAssertEqual(result.rows.count, 1)
            let row = result.rows[0]
            XCTAssertEqual(row[0], .int(Int64.min))
            XCTAssertEqual(row[1], .uint(UInt64.max))
            XCTAssertEqual(row[2], .double(-1.5e-300))
            XCTAssertEqual(row[3], .string(unicode))
            XCTAssertEqual(row[4], .bytes(binary))
            XCTAssertEqual(row[5], .string(""))
            XCTAssertEqual(row[6], .bytes(big))
        }
        let nulls = try await db.execute("SELECT i, u, d, s, b, t, big FROM v WHERE k = ?", [.int(2)])
        XCTAssertEqual(nulls.rows, [Array(repeating: .null, count: 7)])
        // NULL bound as a parameter compares as NULL (no row matches `= NULL`).
        let none = try await db.execute("SELECT k FROM v WHERE i = ?", [.null])
        XCTAssertEqual(none.rows.count, 0)
        let decimal = try await db.execute("SELECT CAST(? AS DECIMAL(10,3)) AS x, NOW() IS NOT NULL AS y", [.string("3.14159")])
        XCTAssertEqual(decimal.rows, [[.string("3.142"), .int(1)]])
    }

    /// A prepared statement formats DATETIME and TIMESTAMP itself (from `MYSQL_TIME`): it must
    /// read exactly what the text protocol reads, as the server prints it.
    func testDateTimesReadTheSameThroughBothProtocols() async throws {
        let db = try await connect()
        try await db.query("SET time_zone = '+00:00'")
        try await db.query("""
            CREATE TABLE t (k INT PRIMARY KEY, d0 DATETIME NULL, d3 DATETIME(3) NULL, d6 DATETIME(6) NULL,
                            ts TIMESTAMP(3) NULL, d DATE NULL, tm TIME(2) NULL, s VARCHAR(300) NULL)
            """)
        let long = String(repeating: "x", count: 250)
        try await db.query("""
            INSERT INTO t VALUES
              (1, '2026-12-05 09:08:11', '2026-12-05 09:08:11.007', '2026-12-05 09:08:11.000042', '2026-12-05 09:08:11.999', '2026-12-05', '-12:34:56.78', 'short'),
              (2, '0000-00-00 00:00:00', '1000-01-01 00:00:00.000', '9999-12-31 23:59:59.999999', '1970-01-01 00:00:01.000', '0001-01-01', '838:59:59', '\(long)'),
              (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
            """)
        let columns = "d0, d3, d6, ts, d, tm, s, MAX(d3) OVER () AS m, d3 + INTERVAL 1 SECOND AS e, CAST(d6 AS DATETIME(2)) AS c"
        let text = try await db.query("SELECT \(columns) FROM t ORDER BY k")
        let prepared = try await db.execute("SELECT \(columns) FROM t WHERE k > ? ORDER BY k", [.int(0)])
        XCTAssertEqual(prepared.rows, text.rows)
        XCTAssertEqual(prepared.rows[0][0], .string("2026-12-05 09:08:11"))
        XCTAssertEqual(prepared.rows[0][1], .string("2026-12-05 09:08:11.007"))
        XCTAssertEqual(prepared.rows[0][2], .string("2026-12-05 09:08:11.000042"))
        XCTAssertEqual(prepared.rows[1][0], .string("0000-00-00 00:00:00"))
        XCTAssertEqual(prepared.rows[1][2], .string("9999-12-31 23:59:59.999999"))
        XCTAssertEqual(prepared.rows[1][6], .string(long))
        XCTAssertEqual(Array(prepared.rows[2].prefix(7)), Array(repeating: .null, count: 7))
    }

    func testWrongNumberOfBindsSaysSo() async throws {
        let db = try await connect()
        do {
            try await db.execute("SELECT ? + ?", [.int(1)])
            XCTFail("expected an error")
        } catch let error as MariaDBError {
            XCTAssertTrue(error.description.contains("2 parameter(s) but 1 value(s)"), error.description)
        }
    }

    func testMultiRowInsertOfAThousandRowsAndInsertIgnore() async throws {
        let db = try await connect()
        try await db.query("CREATE TABLE r (device VARCHAR(40), seq BIGINT UNSIGNED, value DOUBLE, PRIMARY KEY (device, seq))")
        let rows: [[MariaDBValue]] = (1...1000).map { [.string("dev-1"), .uint(UInt64($0)), .double(Double($0) / 10)] }
        let affected = try await db.insertRows("INSERT INTO r (device, seq, value)", rows: rows, maxRowsPerStatement: 300)
        XCTAssertEqual(affected, 1000)
        let stats = try await db.query("SELECT COUNT(*), MIN(seq), MAX(seq), SUM(value) FROM r")
        XCTAssertEqual(stats.rows[0][0], .int(1000))
        XCTAssertEqual(stats.rows[0][1].uint64, 1)
        XCTAssertEqual(stats.rows[0][2].uint64, 1000)
        XCTAssertEqual(stats.rows[0][3].double ?? 0, 50050, accuracy: 1e-6)
        // 300+300+300+100: two distinct statements prepared (row counts 300 and 100).
        let cached = try await db.withSession { $0.cachedStatementCount }
        XCTAssertEqual(cached, 2)

        // Re-sending overlapping rows with INSERT IGNORE inserts only the new ones.
        let again: [[MariaDBValue]] = (990...1010).map { [.string("dev-1"), .uint(UInt64($0)), .double(0)] }
        let added = try await db.insertRows("INSERT IGNORE INTO r (device, seq, value)", rows: again)
        XCTAssertEqual(added, 10)
        let total = try await db.query("SELECT COUNT(*) FROM r")
        XCTAssertEqual(total.rows[0][0], .int(1010))

        do {
            try await db.insertRows("INSERT INTO r (device, seq, value)",
                                    rows: [[.string("a"), .uint(1), .double(1)], [.string("a"), .uint(2)]])
            XCTFail("expected an error")
        } catch let error as MariaDBError {
            XCTAssertTrue(error.description.contains("row 1 has 2 values"), error.description)
        }
        let value1 = try await db.query("SELECT COUNT(*) FROM r").rows[0][0]
        XCTAssertEqual(value1, .int(1010))
    }

    func testInsertBulkStoresEveryKindOfValueAndCountsOnlyNewRows() async throws {
        let db = try await connect()
        try await db.query("""
            CREATE TABLE b (device VARCHAR(40) NOT NULL, seq BIGINT UNSIGNED NOT NULL, delta BIGINT NULL, value DOUBLE NULL,
                            note VARCHAR(40) NULL, raw VARBINARY(16) NULL, always_null VARCHAR(8) NULL, PRIMARY KEY (device, seq))
            """)
        // 2,500 rows in executes of 1,000: NULLs mixed into every column, text of varying length
        // (empty and multi-byte), binary with a zero byte, negative and unsigned 64-bit integers.
        func bulkRow(_ i: Int) -> [MariaDBValue] {
            let device: MariaDBValue = .string("dev-\(i % 3)")
            let seq: MariaDBValue = .uint(UInt64.max - UInt64(i))
            let delta: MariaDBValue = i % 7 == 0 ? .null : .int(-Int64(i) * 1_000_000_007)
            let value: MariaDBValue = i % 5 == 0 ? .null : .double(Double(i) / 8)
            let note: MariaDBValue = i % 11 == 0 ? .null : .string(i % 2 == 0 ? "" : "ä-\(i)")
            let raw: MariaDBValue = i % 13 == 0 ? .null : .bytes([0, UInt8(i % 256), 255])
            return [device, seq, delta, value, note, raw, .null]
        }
        let rows: [[MariaDBValue]] = (1...2500).map(bulkRow)
        let affected = try await db.insertBulk("INSERT IGNORE INTO b (device, seq, delta, value, note, raw, always_null)", rows: rows)
        XCTAssertEqual(affected, 2500)
        let stored = try await db.query("SELECT device, seq, delta, value, note, raw, always_null FROM b ORDER BY seq DESC")
        XCTAssertEqual(stored.rows.count, 2500)
        for (i, row) in stored.rows.enumerated() {
            let expected = rows[i]
            XCTAssertEqual(row[0], expected[0], "row \(i)")
            XCTAssertEqual(row[1].uint64, expected[1].uint64, "row \(i)")
            XCTAssertEqual(row[2].int64, expected[2].int64, "row \(i)")
            XCTAssertEqual(row[3].double, expected[3].double, "row \(i)")
            XCTAssertEqual(row[4], expected[4], "row \(i)")
            XCTAssertEqual(row[5].bytes, expected[5].bytes, "row \(i)")
            XCTAssertEqual(row[6], .null, "row \(i)")
        }
        // A resend overlapping what is stored: only the new rows count, the old ones are unchanged.
        let again: [[MariaDBValue]] = (2490...2510).map { i in
            [.string("dev-\(i % 3)"), .uint(UInt64.max - UInt64(i)), .int(0), .double(0), .string("resent"), .null, .null]
        }
        let added = try await db.insertBulk("INSERT IGNORE INTO b (device, seq, delta, value, note, raw, always_null)", rows: again, rowsPerExecute: 7)
        XCTAssertEqual(added, 10)
        let resent = try await db.query("SELECT COUNT(*) FROM b WHERE note = 'resent'").rows[0][0]
        XCTAssertEqual(resent, .int(10))
        // The same cached statement still runs single-row executions afterwards.
        let single = try await db.execute("INSERT IGNORE INTO b (device, seq, delta, value, note, raw, always_null) VALUES (?,?,?,?,?,?,?)",
                                          [.string("one"), .uint(1), .null, .null, .null, .null, .null])
        XCTAssertEqual(single.affectedRows, 1)
        // A column mixing kinds (int and text) falls back to multi-row VALUES, same result.
        let mixed: [[MariaDBValue]] = [[.string("m"), .uint(1), .int(5), .null, .string("x"), .null, .null],
                                       [.string("m"), .uint(2), .string("6"), .null, .int(7), .null, .null]]
        let mixedAdded = try await db.insertBulk("INSERT IGNORE INTO b (device, seq, delta, value, note, raw, always_null)", rows: mixed)
        XCTAssertEqual(mixedAdded, 2)
        let m = try await db.query("SELECT delta, note FROM b WHERE device = 'm' ORDER BY seq").rows
        XCTAssertEqual(m.map { $0[0].int64 }, [5, 6])
        XCTAssertEqual(m.map { $0[1].string }, ["x", "7"])
        // Rows of different widths are refused before anything is sent.
        do {
            try await db.insertBulk("INSERT INTO b (device, seq)", rows: [[.string("a"), .uint(1)], [.string("a")]])
            XCTFail("expected an error")
        } catch let error as MariaDBError {
            XCTAssertTrue(error.description.contains("row 1 has 1 values"), error.description)
        }
        let total = try await db.query("SELECT COUNT(*) FROM b").rows[0][0]
        XCTAssertEqual(total, .int(2513))
    }

    func testDuplicateKeyIsError1062AndInsertIgnoreSkipsIt() async throws {
        let db = try await connect()
        try await db.query("CREATE TABLE k (id INT PRIMARY KEY, note VARCHAR(10))")
        try await db.execute("INSERT INTO k VALUES (?, ?)", [.int(1), .string("first")])
        do {
            try await db.execute("INSERT INTO k VALUES (?, ?)", [.int(1), .string("second")])
            XCTFail("expected a duplicate key error")
        } catch let error as MariaDBError {
            XCTAssertEqual(error.code, 1062)
            XCTAssertEqual(error.sqlState, "23000")
            XCTAssertTrue(error.isDuplicateKey)
            XCTAssertFalse(error.isConnectionLost)
            XCTAssertTrue(error.description.contains("execute `INSERT INTO k"), error.description)
        }
        let ignored = try await db.execute("INSERT IGNORE INTO k VALUES (?, ?)", [.int(1), .string("third")])
        XCTAssertEqual(ignored.affectedRows, 0)
        let note = try await db.query("SELECT note FROM k")
        XCTAssertEqual(note.rows, [[.string("first")]])
    }

    func testTransactionRollsBackWhenItsBodyThrows() async throws {
        let db = try await connect()
        try await db.query("CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB")
        struct Abort: Error {}
        do {
            try await db.transaction { s in
                try s.execute("INSERT INTO t VALUES (?)", [.int(1)])
                try s.execute("INSERT INTO t VALUES (?)", [.int(2)])
                throw Abort()
            }
            XCTFail("expected the body's error")
        } catch is Abort {}
        let value2 = try await db.query("SELECT COUNT(*) FROM t").rows[0][0]
        XCTAssertEqual(value2, .int(0))

        try await db.transaction { s in
            try s.execute("INSERT INTO t VALUES (?)", [.int(3)])
        }
        // Explicit begin/rollback through a session.
        try await db.withSession { s in
            try s.begin()
            try s.execute("INSERT INTO t VALUES (?)", [.int(4)])
            try s.rollback()
        }
        let value3 = try await db.query("SELECT id FROM t").rows
        XCTAssertEqual(value3, [[.int(3)]])
    }

    /// A transaction the server ends while every statement returns OK (here a DDL statement's
    /// implicit commit; under Galera an aborted array-bound INSERT, GaleraTests) must not go on
    /// in autocommit mode: the next statement and the COMMIT refuse with a 1213-class error.
    func testAStatementAfterTheServerEndedTheTransactionIsRefusedNotRunInAutocommit() async throws {
        let db = try await connect()
        try await db.query("CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB")
        for last in [false, true] {
            do {
                try await db.transaction { s in
                    try s.execute("INSERT INTO t VALUES (?)", [.int(1)])
                    XCTAssertTrue(s.isInTransaction)
                    try s.query("CREATE TABLE IF NOT EXISTS u (id INT)") // commits implicitly, returns OK
                    XCTAssertFalse(s.isInTransaction)
                    if !last { try s.execute("INSERT INTO t VALUES (?)", [.int(2)]) }
                }
                XCTFail("expected the transaction to be refused")
            } catch let e as MariaDBError {
                XCTAssertTrue(e.endedTransactionSilently && e.isDeadlock, "\(e)")
                XCTAssertTrue(e.operation.contains(last ? "commit" : "INSERT INTO t"), e.operation)
            }
            let rows = try await db.query("SELECT id FROM t ORDER BY id").rows
            XCTAssertEqual(rows, [[.int(1)]], "what ran before the implicit commit is committed; nothing ran after it")
            try await db.query("DELETE FROM t")
        }
        // The connection is fine afterwards; an ordinary transaction commits.
        try await db.transaction { s in try s.execute("INSERT INTO t VALUES (?)", [.int(3)]) }
        let value = try await db.query("SELECT id FROM t").rows
        XCTAssertEqual(value, [[.int(3)]])
    }

    func testCheckedInsertCountsDuplicatesByLookingAndRefusesRowsItCannotFind() async throws {
        let db = try await connect()
        try await db.query("CREATE TABLE k (a VARCHAR(10) CHARACTER SET ascii COLLATE ascii_bin NOT NULL, b BIGINT UNSIGNED NULL, note VARCHAR(10), UNIQUE KEY (a, b), CHECK (note <> 'drop')) ENGINE=InnoDB")
        let columns = ["a", "b", "note"]
        let first = try await db.transaction { s in
            try s.insertIgnoringDuplicates(into: "k", columns: columns, key: ["a", "b"], rows: (1...700).map { [.string("x"), .uint(UInt64($0)), .string("n")] })
        }
        XCTAssertEqual(first, InsertCounts(inserted: 700, duplicates: 0))
        // A single-row INSERT IGNORE that fails a CHECK constraint is an error (a multi-row one only warns).
        do {
            try await db.transaction { s in try s.insertIgnoringDuplicates(into: "k", columns: columns, key: ["a", "b"], rows: [[.string("x"), .null, .string("drop")]]) }
            XCTFail("expected error 4025")
        } catch let e as MariaDBError {
            XCTAssertEqual(e.code, 4025, e.description)
        }
        // 690 already there (over two statements of 500), 10 new, one twice in the same call; NULL keys are never duplicates.
        let rows: [[MariaDBValue]] = (11...710).map { [.string("x"), .uint(UInt64($0)), .string("m")] } + [[.string("x"), .uint(705), .string("m")]]
            + [[.string("x"), .null, .string("n")], [.string("x"), .null, .string("n")]]
        let again = try await db.transaction { s in try s.insertIgnoringDuplicates(into: "k", columns: columns, key: ["a", "b"], rows: rows) }
        XCTAssertEqual(again, InsertCounts(inserted: 12, duplicates: 691))
        for bad in [[[MariaDBValue.string("x"), .uint(2000), .string("drop")], [.string("x"), .uint(1), .string("n")]],
                    [[MariaDBValue.string("x"), .null, .string("n")], [.string("x"), .null, .string("drop")]]] {
            do {
                try await db.transaction { s in try s.insertIgnoringDuplicates(into: "k", columns: columns, key: ["a", "b"], rows: bad) }
                XCTFail("a row the CHECK constraint drops must be refused")
            } catch let e as MariaDBRowsNotWritten {
                XCTAssertEqual(e.missing, 1, "\(e)")
                if bad[0][1] != .null { XCTAssertEqual(e.missingKeys, [[.string("x"), .uint(2000)]]) }
                XCTAssertTrue(e.description.contains("silently dropped"), e.description)
            }
        }
        let count = try await db.query("SELECT COUNT(*) FROM k").rows[0][0]
        XCTAssertEqual(count, .int(712))
        do {
            try await db.withSession { s in try s.insertIgnoringDuplicates(into: "k", columns: columns, key: ["c"], rows: [[.string("x"), .uint(1), .null]]) }
            XCTFail("an unknown key column must be refused")
        } catch let e as MariaDBError {
            XCTAssertTrue(e.message.contains("key column c"), e.description)
        }
    }

    func testBadSQLGivesErrorNumberAndSQLState() async throws {
        let db = try await connect()
        do {
            try await db.query("SELEKT 1")
            XCTFail("expected a syntax error")
        } catch let error as MariaDBError {
            XCTAssertEqual(error.code, 1064)
            XCTAssertEqual(error.sqlState, "42000")
            XCTAssertTrue(error.description.contains("query `SELEKT 1`"), error.description)
        }
        do {
            try await db.execute("SELECT * FROM no_such_table WHERE id = ?", [.int(1)])
            XCTFail("expected an error")
        } catch let error as MariaDBError {
            XCTAssertEqual(error.code, 1146)
            XCTAssertTrue(error.description.contains("prepare `SELECT * FROM no_such_table"), error.description)
        }
        // The connection is still usable after errors.
        let value4 = try await db.query("SELECT 1").rows
        XCTAssertEqual(value4, [[.int(1)]])
    }

    func testReconnectAfterTheServerKillsTheConnection() async throws {
        let db = try await connect()
        try await db.query("CREATE TABLE z (id INT PRIMARY KEY)")
        try await db.execute("INSERT INTO z VALUES (?)", [.int(1)])
        let id = try await db.connectionID()
        let killer = try await connect()
        try await killer.query("KILL CONNECTION \(id)")
        do {
            try await db.execute("SELECT id FROM z WHERE id = ?", [.int(1)])
            XCTFail("expected a lost connection")
        } catch let error as MariaDBError {
            XCTAssertTrue(error.isConnectionLost, "\(error) should count as a lost connection")
        }
        // Until reconnect(), calls fail fast as lost rather than touching a dead handle.
        do {
            try await db.query("SELECT 1")
            XCTFail("expected an error")
        } catch let error as MariaDBError {
            XCTAssertTrue(error.isConnectionLost, error.description)
        }
        try await db.reconnect()
        let value5 = try await db.connectionID()
        XCTAssertNotEqual(value5, id)
        let value6 = try await db.execute("SELECT id FROM z WHERE id = ?", [.int(1)]).rows
        XCTAssertEqual(value6, [[.int(1)]])
    }

    func testConnectToAClosedPortFailsClearly() async throws {
        let port = Ports.free()
        let started = ContinuousClock.now
        do {
            _ = try await MariaDBConnection.connect(configuration: configuration(port: port))
            XCTFail("expected a connect error")
        } catch let error as MariaDBError {
            XCTAssertTrue([2002, 2003].contains(error.code), error.description)
            XCTAssertTrue(error.isConnectionLost)
            XCTAssertTrue(error.description.contains("connect to \(stack.mariaDBUser)@127.0.0.1:\(port)"), error.description)
        }
        XCTAssertLessThan(ContinuousClock.now - started, .seconds(10))
    }

    func testWrongPasswordFailsWithAccessDenied() async throws {
        var config = configuration()
        config.password = "wrong"
        do {
            _ = try await MariaDBConnection.connect(configuration: config)
            XCTFail("expected access denied")
        } catch let error as MariaDBError {
            XCTAssertEqual(error.code, 1045, error.description)
        }
    }

    func testRequiredTLSAgainstAServerWithoutTLSFailsClearly() async throws {
        var config = configuration()
        config.tls = .init(verifyServerCertificate: false)
        do {
            let db = try await MariaDBConnection.connect(configuration: config)
            // A server with TLS on (not the test stack's) must then really use it.
            let cipher = try await db.query("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            XCTAssertNotEqual(cipher.rows.first?[1], .string(""))
        } catch let error as MariaDBError {
            XCTAssertTrue(error.isTLSFailure, error.description)
            XCTAssertFalse(error.isConnectionLost)
            XCTAssertTrue(error.description.contains("connect to"), error.description)
        }
    }

    func testUnixSocketConnection() async throws {
        let db = try await MariaDBConnection.connect(configuration: configuration(socket: true))
        let value7 = try await db.query("SELECT DATABASE()").rows
        XCTAssertEqual(value7, [[.string(database)]])
    }

    func testConcurrentCallersAreSerialised() async throws {
        let db = try await connect()
        try await db.query("CREATE TABLE c (id INT PRIMARY KEY)")
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<50 {
                group.addTask { try await db.execute("INSERT INTO c VALUES (?)", [.int(Int64(i))]) }
            }
            try await group.waitForAll()
        }
        let value8 = try await db.query("SELECT COUNT(*) FROM c").rows[0][0]
        XCTAssertEqual(value8, .int(50))
    }
}
