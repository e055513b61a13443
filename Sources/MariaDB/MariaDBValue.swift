import Foundation

/// A value bound to a statement parameter or read from a result column.
public enum MariaDBValue: Sendable, Hashable, CustomStringConvertible {
    case null
    case int(Int64)
    case uint(UInt64)
    case double(Double)
    /// Text (sent and read as UTF-8 in the session's utf8mb4 character set).
    case string(String)
    /// Binary data (BLOB, BINARY, VARBINARY columns).
    case bytes([UInt8])

    public var isNull: Bool { self == .null }

    /// The value as Int64 when it is an integer that fits, or decimal text of one.
    public var int64: Int64? {
        switch self {
        case .int(let v): v
        case .uint(let v): Int64(exactly: v)
        case .string(let s): Int64(s)
        default: nil
        }
    }

    /// The value as UInt64 when it is a non-negative integer that fits, or decimal text of one.
    public var uint64: UInt64? {
        switch self {
        case .int(let v): UInt64(exactly: v)
        case .uint(let v): v
        case .string(let s): UInt64(s)
        default: nil
        }
    }

    public var double: Double? {
        switch self {
        case .double(let v): v
        case .int(let v): Double(v)
        case .uint(let v): Double(v)
        case .string(let s): Double(s)
        default: nil
        }
    }

    /// The value as text: strings as they are, binary data when it is valid UTF-8, numbers printed.
    public var string: String? {
        switch self {
        case .string(let s): s
        case .bytes(let b): String(validating: b, as: UTF8.self)
        case .int(let v): String(v)
        case .uint(let v): String(v)
        case .double(let v): String(v)
        case .null: nil
        }
    }

    public var bytes: [UInt8]? {
        switch self {
        case .bytes(let b): b
        case .string(let s): Array(s.utf8)
        default: nil
        }
    }

    public var description: String {
        switch self {
        case .null: "NULL"
        case .int(let v): String(v)
        case .uint(let v): String(v)
        case .double(let v): String(v)
        case .string(let s): "'\(s)'"
        case .bytes(let b): "x'\(b.map { String(format: "%02x", $0) }.joined())'"
        }
    }
}

/// The outcome of one statement: its rows (if it returned a result set) and counters.
public struct MariaDBResult: Sendable {
    /// Column names (labels) of the result set; empty for statements without one.
    public var columns: [String]
    /// Rows of the result set, each with one value per column.
    public var rows: [[MariaDBValue]]
    /// Rows changed, inserted or deleted (for INSERT IGNORE: rows actually inserted).
    public var affectedRows: UInt64
    /// The AUTO_INCREMENT value of the last inserted row, 0 if none.
    public var lastInsertID: UInt64

    public init(columns: [String] = [], rows: [[MariaDBValue]] = [], affectedRows: UInt64 = 0, lastInsertID: UInt64 = 0) {
        self.columns = columns
        self.rows = rows
        self.affectedRows = affectedRows
        self.lastInsertID = lastInsertID
    }

    /// The index of a column by name, nil if there is none.
    func columnIndex(_ name: String) -> Int? { columns.firstIndex(of: name) }

    /// The value of column `name` in row `row`; nil if there is no such column.
    public func value(row: Int, column name: String) -> MariaDBValue? {
        columnIndex(name).map { rows[row][$0] }
    }
}
