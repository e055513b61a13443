// Checked INSERT IGNORE: after it, every row given is in the table, or it throws.
//
// Theory of operation: INSERT IGNORE turns more than duplicate keys into warnings. A failed
// CHECK constraint, a foreign key without its parent, a value no partition takes: the row is
// silently not written and the statement still succeeds. The affected-row count is the only
// trace (for INSERT IGNORE it counts the rows inserted), so `insertIgnoringDuplicates`
// compares it with the rows sent. Equal: every row was new and is written. Fewer: the
// difference may only be duplicates, and a follow-up count of the sent keys proves it (run on
// the same connection, so inside a transaction it sees the statement's own rows): every
// distinct key sent must be present. If one is not, the row was dropped:
// `MariaDBRowsNotWritten` is thrown and the caller's transaction rolls back. Rows with a NULL
// in their key cannot be duplicates (a unique key admits any number of NULLs): they go in a
// statement of their own and every one of them must be inserted. The follow-up count costs a
// round trip only when there were duplicates (a resend), never on the first write.
import CMariaDB

/// What a checked INSERT IGNORE wrote: `inserted + duplicates` is the number of rows sent.
public struct InsertCounts: Sendable, Hashable {
    /// Rows the statement inserted.
    public var inserted: Int
    /// Rows whose key was already in the table (verified by a follow-up count, not taken
    /// from the server's word).
    public var duplicates: Int

    public init(inserted: Int, duplicates: Int) {
        self.inserted = inserted
        self.duplicates = duplicates
    }
}

/// A statement that reported success wrote fewer rows than it was given, and the rows it did
/// not write were not in the table before either (they were silently dropped: INSERT IGNORE
/// turned an error into a warning, or the server misreported). Nothing of the statement's
/// transaction may be committed: the caller rolls it back. It is a property of the rows sent,
/// not of the connection: the same rows fail the same way again, so retrying as is does not help.
public struct MariaDBRowsNotWritten: Error, CustomStringConvertible, Sendable {
    /// The table written to.
    public let table: String
    /// Rows the statement was given.
    public let sent: Int
    /// Rows the server reported inserted (affected rows).
    public let inserted: Int
    /// Rows that are neither inserted nor already present.
    public let missing: Int
    /// Key values (in the order of `keyColumns`) of up to 10 missing rows, when they could be
    /// told apart; empty otherwise.
    public let missingKeys: [[MariaDBValue]]
    /// The key columns `missingKeys` are in.
    public let keyColumns: [String]
    /// Why the server dropped them, when it says: the warnings of inserting a few of the
    /// missing rows again (e.g. "Warning 4025: CONSTRAINT `c` failed for `db`.`t`"), up to 10.
    public let warnings: [String]

    public init(table: String, sent: Int, inserted: Int, missing: Int, missingKeys: [[MariaDBValue]] = [], keyColumns: [String] = [],
                warnings: [String] = []) {
        self.table = table
        self.sent = sent
        self.inserted = inserted
        self.missing = missing
        self.missingKeys = missingKeys
        self.keyColumns = keyColumns
        self.warnings = warnings
    }

    public var description: String {
        var text = inserted > sent
            ? "MariaDB: INSERT IGNORE INTO \(table) reported \(inserted) row(s) inserted for \(sent) sent"
            : "MariaDB: INSERT IGNORE INTO \(table) wrote \(inserted) of \(sent) row(s) and \(missing) of the others are not in the table either (silently dropped, not duplicates)"
        if !missingKeys.isEmpty {
            text += "; missing (\(keyColumns.joined(separator: ", "))): " + missingKeys.map { "(" + $0.map(\.description).joined(separator: ", ") + ")" }.joined(separator: " ")
        }
        if !warnings.isEmpty { text += "; server warnings: " + warnings.joined(separator: "; ") }
        return text
    }
}

extension MariaDBSession {
    /// `INSERT IGNORE INTO table (columns) VALUES …` (multi-row, `insertRows`) that proves every
    /// row is in the table afterwards: inserted now, or already there with the same key (a
    /// duplicate). Throws `MariaDBRowsNotWritten` when a row was dropped for any other reason;
    /// call it inside `MariaDBConnection.transaction` so that the throw rolls everything back.
    ///
    /// - Parameters:
    ///   - key: the columns of the unique key that makes a row a duplicate (a subset of
    ///     `columns`). Its values must compare byte for byte (numbers, binary collations):
    ///     the follow-up count matches them with `=`.
    ///   - rows: values in the order of `columns`.
    /// - Returns: rows inserted and rows that were duplicates (their sum is `rows.count`).
    @discardableResult
    public func insertIgnoringDuplicates(into table: String, columns: [String], key: [String], rows: [[MariaDBValue]],
                                         maxRowsPerStatement: Int = 500) throws -> InsertCounts {
        let operation = "checked insert into \(table)"
        let keyIndices = try key.map { k in
            guard let i = columns.firstIndex(of: k) else { throw MariaDBError.usage(operation, "key column \(k) is not among the columns \(columns)") }
            return i
        }
        guard !keyIndices.isEmpty else { throw MariaDBError.usage(operation, "no key columns") }
        let prefix = "INSERT IGNORE INTO \(table) (\(columns.joined(separator: ", ")))"
        var keyed: [[MariaDBValue]] = [], unkeyed: [[MariaDBValue]] = []
        for row in rows {
            guard row.count == columns.count else {
                throw MariaDBError.usage(operation, "a row has \(row.count) values for \(columns.count) columns")
            }
            if keyIndices.contains(where: { row[$0].isNull }) { unkeyed.append(row) } else { keyed.append(row) }
        }
        var counts = InsertCounts(inserted: 0, duplicates: 0)
        if !unkeyed.isEmpty {
            let n = Int(try insertRows(prefix, rows: unkeyed, maxRowsPerStatement: maxRowsPerStatement))
            if n != unkeyed.count {
                throw MariaDBRowsNotWritten(table: table, sent: unkeyed.count, inserted: n, missing: max(unkeyed.count - n, 0),
                                            missingKeys: [], keyColumns: key, warnings: warnings())
            }
            counts.inserted += n
        }
        guard !keyed.isEmpty else { return counts }
        let n = Int(try insertRows(prefix, rows: keyed, maxRowsPerStatement: maxRowsPerStatement))
        guard n != keyed.count else {
            counts.inserted += n
            return counts
        }
        // Some were not inserted: each must be a duplicate, i.e. its key is in the table now.
        var distinct = Set<[MariaDBValue]>(), keys: [[MariaDBValue]] = []
        for row in keyed {
            let k = keyIndices.map { row[$0] }
            if distinct.insert(k).inserted { keys.append(k) }
        }
        let present = try countPresent(table: table, key: key, keys: keys)
        guard n <= keyed.count, present == keys.count else {
            // Name the rows, and ask the server why: insert a few of them again (the caller
            // rolls back anyway) and read that statement's warnings, or its error (MariaDB fails
            // a single-row INSERT IGNORE for a CHECK constraint that a multi-row one only warns of).
            let missingKeys = try missingKeysFor(table: table, key: key, keys: keys, limit: 10)
            let missingSet = Set(missingKeys)
            let sample = keyed.filter { row in missingSet.contains(keyIndices.map { row[$0] }) }
            var reasons: [String] = []
            if !sample.isEmpty {
                do {
                    try insertRows(prefix, rows: sample)
                    reasons = warnings()
                } catch let e as MariaDBError where !e.isConnectionLost && !e.isDeadlock {
                    reasons = ["Error \(e.code): \(e.message)"]
                }
            }
            throw MariaDBRowsNotWritten(table: table, sent: keyed.count, inserted: n, missing: max(keys.count - present, 0),
                                        missingKeys: missingKeys, keyColumns: key, warnings: reasons)
        }
        counts.inserted += n
        counts.duplicates += keyed.count - n
        return counts
    }

    /// How many of `keys` (distinct) are in `table`.
    private func countPresent(table: String, key: [String], keys: [[MariaDBValue]]) throws -> Int {
        var present = 0
        for chunk in Self.keyChunks(keys, width: key.count) {
            let sql = "SELECT COUNT(*) FROM \(table) WHERE " + Self.keyCondition(key, count: chunk.count)
            present += Int(try execute(sql, chunk.flatMap { $0 }).rows.first?.first?.int64 ?? 0)
        }
        return present
    }

    /// Up to `limit` of `keys` that are not in `table`, as given (compared byte for byte, with
    /// integers compared by value: for the error message).
    private func missingKeysFor(table: String, key: [String], keys: [[MariaDBValue]], limit: Int) throws -> [[MariaDBValue]] {
        func canonical(_ v: MariaDBValue) -> MariaDBValue {
            if case .int(let i) = v, i >= 0 { return .uint(UInt64(i)) }
            return v
        }
        var found = Set<[MariaDBValue]>()
        for chunk in Self.keyChunks(keys, width: key.count) {
            let sql = "SELECT \(key.joined(separator: ", ")) FROM \(table) WHERE " + Self.keyCondition(key, count: chunk.count)
            for row in try execute(sql, chunk.flatMap { $0 }).rows { found.insert(row.map(canonical)) }
        }
        return Array(keys.lazy.filter { !found.contains($0.map(canonical)) }.prefix(limit))
    }

    /// The server's warnings for the last statement, as "Level Code: Message" (at most 10).
    private func warnings() -> [String] {
        guard let rows = try? query("SHOW WARNINGS LIMIT 10").rows else { return [] }
        return rows.map { r in "\(r[0].string ?? "") \(r[1].string ?? ""): \(r[2].string ?? "")" }
    }

    /// `(a = ? AND b = ?) OR …`: point lookups the range optimizer turns into index dives.
    static func keyCondition(_ key: [String], count: Int) -> String {
        let one = "(" + key.map { "\($0) = ?" }.joined(separator: " AND ") + ")"
        return Array(repeating: one, count: count).joined(separator: " OR ")
    }

    /// Keys in chunks of at most 500 (and 65 535 parameters).
    static func keyChunks(_ keys: [[MariaDBValue]], width: Int) -> [ArraySlice<[MariaDBValue]>] {
        let size = max(1, min(500, 65_535 / max(width, 1)))
        return stride(from: 0, to: keys.count, by: size).map { keys[$0..<min($0 + size, keys.count)] }
    }
}
