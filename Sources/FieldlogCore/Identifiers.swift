// FieldlogCore: the domain types every part of Fieldlog speaks in.
//
// A device's log is identified by (DeviceID, Epoch); within an epoch, records are numbered
// by SequenceNumber starting at 1 and growing by exactly 1 per append. These are checked
// structs over fixed-width integers and validated strings, never bare integers.

/// A device's identity, also its MQTT user name and a topic level.
///
/// 1…64 characters from `A–Z a–z 0–9 . _ -`, so it is safe as an MQTT topic level
/// (no `/`, `+`, `#`), in file names and in SQL identifiers' values.
public struct DeviceID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let rawValue: String

    static let maxLength = 64

    public init(_ rawValue: String) throws(DomainError) {
        guard !rawValue.isEmpty, rawValue.utf8.count <= Self.maxLength else {
            throw DomainError("device id must be 1…\(Self.maxLength) characters, got \(rawValue.utf8.count): \(rawValue.debugDescription)")
        }
        for byte in rawValue.utf8 where !Self.allowed(byte) {
            throw DomainError("device id \(rawValue.debugDescription) contains \(String(UnicodeScalar(byte)).debugDescription); allowed are A–Z a–z 0–9 . _ -")
        }
        self.rawValue = rawValue
    }

    static func allowed(_ b: UInt8) -> Bool {
        (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x2E || b == 0x5F || b == 0x2D
    }

    public var description: String { rawValue }
    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
}

/// A random 64-bit id created with a log file. A wiped or replaced log gets a new epoch,
/// so the backend can tell a reset from a gap. Written as 16 lowercase hex digits.
public struct Epoch: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64

    public init(_ rawValue: UInt64) { self.rawValue = rawValue }

    /// A fresh random epoch (never 0, so 0 can mean "none" in storage).
    public static func random() -> Epoch {
        var g = SystemRandomNumberGenerator()
        return random(using: &g)
    }

    public static func random<G: RandomNumberGenerator>(using g: inout G) -> Epoch {
        Epoch(UInt64.random(in: 1...UInt64.max, using: &g))
    }

    /// Parses 1…16 hex digits.
    public init(hex: String) throws(DomainError) {
        guard (1...16).contains(hex.utf8.count), let v = UInt64(hex, radix: 16) else {
            throw DomainError("epoch must be 1…16 hex digits, got \(hex.debugDescription)")
        }
        rawValue = v
    }

    public var hex: String {
        let s = String(rawValue, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }

    public var description: String { hex }
}

/// A record's position in its epoch: 1, 2, 3, … `SequenceNumber.zero` means "nothing yet"
/// (an empty log's head, an acked pointer before the first ack).
public struct SequenceNumber: Hashable, Comparable, Sendable, CustomStringConvertible, Strideable {
    public let rawValue: UInt64

    public init(_ rawValue: UInt64) { self.rawValue = rawValue }

    public static let zero = SequenceNumber(0)
    /// Largest sequence number the protocol allows (fits a JSON number exactly and a signed 64-bit column).
    public static let max = SequenceNumber(1 << 53)

    public var next: SequenceNumber {
        precondition(self < .max, "sequence number overflow at \(rawValue)")
        return SequenceNumber(rawValue + 1)
    }

    public var previous: SequenceNumber {
        precondition(rawValue > 0, "no sequence number before 0")
        return SequenceNumber(rawValue - 1)
    }

    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    public func distance(to other: Self) -> Int64 { Int64(bitPattern: other.rawValue &- rawValue) }
    public func advanced(by n: Int64) -> Self { SequenceNumber(UInt64(Int64(bitPattern: rawValue) + n)) }
    public var description: String { String(rawValue) }
}

/// A non-empty closed range of sequence numbers, `first...last`.
public struct SequenceRange: Hashable, Sendable, CustomStringConvertible {
    public let first: SequenceNumber
    public let last: SequenceNumber

    public init(_ first: SequenceNumber, _ last: SequenceNumber) throws(DomainError) {
        guard first.rawValue >= 1, first <= last else {
            throw DomainError("sequence range must satisfy 1 ≤ first ≤ last, got \(first)…\(last)")
        }
        self.first = first
        self.last = last
    }

    /// For ranges the caller has already checked.
    public init(checked first: SequenceNumber, _ last: SequenceNumber) {
        precondition(first.rawValue >= 1 && first <= last, "invalid sequence range \(first)…\(last)")
        self.first = first
        self.last = last
    }

    public var count: UInt64 { last.rawValue - first.rawValue + 1 }
    public func contains(_ s: SequenceNumber) -> Bool { first <= s && s <= last }
    public var description: String { first == last ? "\(first)" : "\(first)…\(last)" }
}

/// A thrown error for a value from the outside world that breaks a domain rule.
public struct DomainError: Error, Hashable, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
