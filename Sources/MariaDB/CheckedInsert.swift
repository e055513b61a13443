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
    let keyColumns: [String]
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
                                         maxRowsPerStatement: Int = 500, arrayBound: Bool = false) throws -> InsertCounts {
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
        let n = Int(arrayBound ? try insertBulk(prefix, rows: keyed)
                               : try insertRows(prefix, rows: keyed, maxRowsPerStatement: maxRowsPerStatement))
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
        for lookup in Self.keyLookups(key, keys) {
            present += Int(try execute("SELECT COUNT(*) FROM \(table) WHERE " + lookup.condition, lookup.binds).rows.first?.first?.int64 ?? 0)
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
        for lookup in Self.keyLookups(key, keys) {
            let sql = "SELECT \(key.joined(separator: ", ")) FROM \(table) WHERE " + lookup.condition
            for row in try execute(sql, lookup.binds).rows { found.insert(row.map(canonical)) }
        }
        return Array(keys.lazy.filter { !found.contains($0.map(canonical)) }.prefix(limit))
    }

    /// The server's warnings for the last statement, as "Level Code: Message" (at most 10).
    private func warnings() -> [String] {
        guard let rows = try? query("SHOW WARNINGS LIMIT 10").rows else { return [] }
        return rows.map { r in "\(r[0].string ?? "") \(r[1].string ?? ""): \(r[2].string ?? "")" }
    }

    /// WHERE conditions that find `keys` (distinct, each in the order of `key`), as statements
    /// the optimizer plans cheaply: the keys grouped by every column but one, the one with the
    /// most distinct values, which goes in an IN list: `(a = ? AND b = ? AND c IN (?, …)) OR …`,
    /// at most 500 values and 64 groups per statement. (500 keys as `(a = ? AND b = ? AND c = ?)
    /// OR …` took MariaDB about 0.1 s to plan; `c IN (…)` with the rest equal, about 4 ms.)
    static func keyLookups(_ key: [String], _ keys: [[MariaDBValue]]) -> [(condition: String, binds: [MariaDBValue])] {
        guard !keys.isEmpty else { return [] }
        let distinctPerColumn = key.indices.map { c in Set(keys.map { $0[c] }).count }
        let listColumn = key.indices.max { distinctPerColumn[$0] < distinctPerColumn[$1] }!
        let equalColumns = key.indices.filter { $0 != listColumn }
        var order: [[MariaDBValue]] = [], lists: [[MariaDBValue]: [MariaDBValue]] = [:]
        for k in keys {
            let group = equalColumns.map { k[$0] }
            if lists[group] == nil { order.append(group) }
            lists[group, default: []].append(k[listColumn])
        }
        var out: [(condition: String, binds: [MariaDBValue])] = []
        var parts: [String] = [], binds: [MariaDBValue] = [], values = 0
        func flush() {
            if !parts.isEmpty { out.append((parts.joined(separator: " OR "), binds)) }
            parts = []; binds = []; values = 0
        }
        for group in order {
            var rest = lists[group]![...]
            while !rest.isEmpty {
                if parts.count == 64 || values == 500 { flush() }
                let chunk = rest.prefix(500 - values)
                rest = rest.dropFirst(chunk.count)
                let equal = equalColumns.map { "\(key[$0]) = ?" }
                let list = "\(key[listColumn]) IN (" + Array(repeating: "?", count: chunk.count).joined(separator: ",") + ")"
                parts.append("(" + (equal + [list]).joined(separator: " AND ") + ")")
                binds += group + chunk
                values += chunk.count
            }
        }
        flush()
        return out
    }
}
