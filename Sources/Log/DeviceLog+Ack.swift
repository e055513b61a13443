// DeviceLog: acknowledgements and retention (what the backend confirmed may be trimmed).
import FieldlogCore

extension DeviceLog {
    // MARK: Acknowledge and trim

    /// Moves the acknowledged-through pointer forward to `through` (an older ack is ignored)
    /// and trims acknowledged records beyond the retention. Returns the pointer after the call.
    ///
    /// Not fsynced on its own, even under `full`: the pointer may lag or be lost in a power
    /// cut (spec §4.2 rule 7: the sender resends from the persisted pointer, the store absorbs
    /// the duplicates), and the next append's fsynced commit makes it durable with its own
    /// frames (a crash keeps a prefix of the WAL's commits). Saves one fsync per ack: at 100
    /// readings/s about one in five of the device's fsyncs (docs/log.md, "Guarantees").
    ///
    /// - Throws: `LogError.ackBeyondHead` when `through` > head (nothing is changed).
    @discardableResult
    public func markAcked(through: SequenceNumber, now: DeviceTimestamp? = nil) async throws -> SequenceNumber {
        let path = self.path, configuration = self.configuration
        let nowMs = now?.unixMilliseconds ?? Self.currentTimeMs()
        let full = configuration.durability == .full && !configuration.synchronousOff
        return try await read { c in
            try c.withoutOwnSync(on: full) { try c.writeTransaction {
                let state = try Self.readState(c, path: path)
                guard through <= state.head else { throw LogError.ackBeyondHead(path: path, ack: through, head: state.head) }
                let acked = max(state.acked, through)
                precondition(acked <= state.head)
                if acked > state.acked {
                    try c.run("UPDATE state SET head = max(head, ?), acked = ? WHERE id = 1",
                              [.integer(Int64(state.head.rawValue)), .integer(Int64(acked.rawValue))])
                }
                try Self.applyRetention(c, configuration: configuration, head: state.head, acked: acked, nowMs: nowMs)
                return acked
            } }
        }
    }

    /// Applies the retention now (also done by every `markAcked`). Returns records trimmed.
    @discardableResult
    public func trim(now: DeviceTimestamp? = nil) async throws -> Int {
        let path = self.path, configuration = self.configuration
        let nowMs = now?.unixMilliseconds ?? Self.currentTimeMs()
        return try await read { c in
            try c.writeTransaction {
                let state = try Self.readState(c, path: path)
                return try Self.applyRetention(c, configuration: configuration, head: state.head, acked: state.acked, nowMs: nowMs)
            }
        }
    }

    /// Deletes acknowledged records beyond `retentionMaxCount` or older than
    /// `retentionMaxAge`; never a record above `acked`. Drops loss markers that lie wholly
    /// below both the acked pointer and the oldest retained record.
    @discardableResult
    private static func applyRetention(_ c: SQLiteConnection, configuration: LogConfiguration, head: SequenceNumber, acked: SequenceNumber,
                                       nowMs: Int64) throws -> Int {
        let ackedValue = Int64(acked.rawValue)
        let countLimit = configuration.retentionMaxCount.map { ackedValue - Int64($0) } ?? -1
        let ageLimit: Int64 = configuration.retentionMaxAge.map { nowMs - $0.components.seconds * 1000 } ?? Int64.min
        // Both limits become one sequence-number bound, so the DELETE is a primary-key range that
        // touches only the rows it removes. (A condition on ts_ms made every ack scan every
        // acknowledged record kept: draining a large backlog was quadratic, ~0.4 s per ack at
        // 500,000 kept records.) Age trims from the oldest record up to the first one young
        // enough to keep; after a clock step back, older-stamped records behind it are kept
        // until it expires (kept longer, never trimmed early).
        var bound = min(ackedValue, countLimit)
        if ageLimit != Int64.min {
            let firstYoung = try c.scalarInt("SELECT seq FROM records WHERE seq <= ? AND ts_ms >= ? ORDER BY seq LIMIT 1",
                                             [.integer(ackedValue), .integer(ageLimit)])
            bound = max(bound, min(ackedValue, (firstYoung ?? ackedValue + 1) - 1))
        }
        var trimmed = 0
        if bound >= 1 {
            try persistHead(c, head)
            trimmed = try c.run("DELETE FROM records WHERE seq <= ?", [.integer(bound)])
        }
        try c.run("DELETE FROM loss_markers WHERE last <= ? AND last < (SELECT coalesce(min(seq), ? + 1) FROM records)",
                  [.integer(ackedValue), .integer(ackedValue)])
        return trimmed
    }

    /// Raises state.head to `head` (before records are deleted, so the head survives them).
    static func persistHead(_ c: SQLiteConnection, _ head: SequenceNumber) throws {
        try c.run("UPDATE state SET head = ? WHERE id = 1 AND head < ?", [.integer(Int64(head.rawValue)), .integer(Int64(head.rawValue))])
    }
}
