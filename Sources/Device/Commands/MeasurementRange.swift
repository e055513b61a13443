// `send_measurements` bounds given as Redis stream ids, mapped onto the log's sequence numbers.
//
// Theory of operation: the seed's tooling names readings by Redis stream id, the time
// (ms since 1970) Redis appended them at. The log numbers readings 1, 2, 3, … and keeps each
// one's device wall-clock time (`ts_ms`, taken when the reading was appended). A stream id
// bound becomes the first (for `min_id`) or last (for `max_id`) retained record whose time is
// at/after (at/before) it. Records are appended in time order, so the search is a binary
// search over sequence numbers with one indexed log read per step (≤ 64 reads); a wall clock
// stepped back while appending makes the boundary approximate, never a crash or a record
// outside the log. The part of a stream id after `-` orders entries within one millisecond in
// Redis; the log keeps whole milliseconds, so it does not narrow the bound.
import FieldlogCore
import Sync

/// A retained record's number and the time it was appended (device wall clock, ms since 1970).
public struct RecordTime: Sendable, Equatable {
    public var sequence: SequenceNumber
    public var unixMilliseconds: Int64
    public init(sequence: SequenceNumber, unixMilliseconds: Int64) {
        self.sequence = sequence
        self.unixMilliseconds = unixMilliseconds
    }
}

enum MeasurementRange {
    /// The first retained record at or after a sequence number; nil when there is none.
    typealias Lookup = @Sendable (SequenceNumber) async throws -> RecordTime?

    /// The sequence number a `min_id` bound starts at: nil for "-" (oldest retained), or
    /// `.empty` when no retained record is at or after a stream id's time.
    static func lower(_ bound: MeasurementBound?, head: SequenceNumber, lookup: Lookup) async throws -> Resolved {
        switch bound {
        case nil: return .open
        case .sequence(let s)?: return .at(s)
        case .streamID(let id)?:
            let t = clamp(id.milliseconds)
            let first = try await firstRecord(head: head, lookup: lookup) { id.exclusive ? $0 > t : $0 >= t }
            return first.map { .at($0.sequence) } ?? .empty
        }
    }

    /// The sequence number a `max_id` bound ends at: nil for "+" (head), or `.empty` when no
    /// retained record is at or before a stream id's time.
    static func upper(_ bound: MeasurementBound?, head: SequenceNumber, lookup: Lookup) async throws -> Resolved {
        switch bound {
        case nil: return .open
        case .sequence(let s)?: return .at(s)
        case .streamID(let id)?:
            let t = clamp(id.milliseconds)
            // The first record past the bound; the range ends just before it.
            guard let past = try await firstRecord(head: head, lookup: lookup, where: { id.exclusive ? $0 >= t : $0 > t }) else {
                return head.rawValue >= 1 ? .at(head) : .empty
            }
            // No retained record before `past` means nothing is at or before the bound.
            guard let first = try await lookup(SequenceNumber(1)), first.sequence < past.sequence else { return .empty }
            return .at(SequenceNumber(past.sequence.rawValue - 1))
        }
    }

    enum Resolved: Equatable {
        /// "-" / "+": the oldest retained record / the head.
        case open
        case at(SequenceNumber)
        /// No record is within the bound: nothing to send.
        case empty

        var sequence: SequenceNumber? { if case .at(let s) = self { return s } else { return nil } }
    }

    /// The first retained record (at most `head`) whose time satisfies `reached`, assuming
    /// `reached` turns true at one point as time grows: binary search over 1…head+1.
    static func firstRecord(head: SequenceNumber, lookup: Lookup, where reached: (Int64) -> Bool) async throws -> RecordTime? {
        var lo: UInt64 = 1, hi = head.rawValue &+ 1  // answer in lo…hi; hi means "none"
        var steps = 0
        while lo < hi {
            steps += 1
            precondition(steps <= 65, "binary search over at most 2^64 numbers")
            let mid = lo + (hi - lo) / 2
            if let r = try await lookup(SequenceNumber(mid)), r.sequence <= head, !reached(r.unixMilliseconds) {
                lo = r.sequence.rawValue + 1  // everything up to r is before the bound
            } else {
                hi = mid
            }
        }
        guard lo <= head.rawValue, let r = try await lookup(SequenceNumber(lo)), r.sequence <= head, reached(r.unixMilliseconds) else {
            return nil
        }
        return r
    }

    static func clamp(_ ms: UInt64) -> Int64 { ms > UInt64(Int64.max) ? .max : Int64(ms) }
}

extension NodeEnvironment {
    public func firstRetainedRecord(atOrAfter sequence: SequenceNumber) async throws -> RecordTime? {
        try await log.records(from: sequence, limit: 1).first.map {
            RecordTime(sequence: $0.sequence, unixMilliseconds: $0.timestamp.unixMilliseconds)
        }
    }
}
