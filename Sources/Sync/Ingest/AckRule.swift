// The ack rule (spec/protocol.md §5.5): what an ack may say, derived from committed rows.
//
// Rule B: `through` is the end of the contiguous prefix of the epoch covered by committed
// rows, computed after the commit, never a counter a batch advances. Any value computed from
// committed rows is at most the truth, also with several receivers and on Galera (§5.5), so an
// ack never passes what is stored (invariant S3).

import FieldlogCore

/// The ack rule of spec §5.5 as a pure function, for stores to use after their commit.
///
/// Its inputs come from the outside world (ranges that devices declared, read back from the
/// store), so it is total: no input makes it trap. Ranges are at most `SequenceNumber.max`
/// (2^53) by the codec's limits, and the arithmetic below stays correct for any UInt64.
public enum AckRule {
    /// The end of the contiguous prefix: starting from `checkpoint` (a value this rule gave
    /// before, or `.zero`), extend through every committed range that starts at or below the
    /// next uncovered number. `ranges` are the committed batch ranges (records, loss markers
    /// and rejected records all count) above the checkpoint, in any order.
    public static func storedThrough(checkpoint: SequenceNumber, ranges: [SequenceRange]) -> SequenceNumber {
        var through = checkpoint
        for r in ranges.sorted(by: { $0.first < $1.first }) {
            // r.first > through + 1, written so that it cannot overflow (r.first ≥ 1).
            if r.first.rawValue - 1 > through.rawValue { break }
            if r.last > through { through = r.last }
        }
        return through
    }

    /// Gaps between `through` and the highest committed number, at most `limit` of them.
    public static func missing(after through: SequenceNumber, ranges: [SequenceRange], limit: Int = ProtocolLimits.maxAckListEntries) -> [SequenceRange] {
        var gaps: [SequenceRange] = []
        var covered = through
        for r in ranges.sorted(by: { $0.first < $1.first }) where r.last > covered {
            // A gap covered+1 … r.first−1 exists when r.first − 1 > covered; then covered + 1 cannot overflow.
            if r.first.rawValue - 1 > covered.rawValue {
                gaps.append(SequenceRange(checked: SequenceNumber(covered.rawValue + 1), SequenceNumber(r.first.rawValue - 1)))
                if gaps.count == limit { break }
            }
            covered = r.last
        }
        return gaps
    }
}
