// Coverage: which sequence numbers of one (device, epoch) the store accounts for.
//
// Theory of operation: every committed batch leaves one immutable row in `batch_ranges`
// (first…last of the batch; every number in it is stored, declared lost, or rejected and kept
// aside). Rows are only ever inserted, or replaced by a compacted row that covers exactly the
// same numbers, so the union of the rows only grows. The ack's `through` is the contiguous
// prefix of that union starting at 1: it can never pass a number that is not accounted for,
// whichever ingest process or database node committed the rows, and a stale read can only
// make it smaller (a device then resends and the duplicate is absorbed), never larger.
import FieldlogCore

/// The union of sequence ranges accounted for in one (device, epoch), merged and sorted.
package struct Coverage: Hashable, Sendable {
    /// Disjoint, non-adjacent ranges in ascending order.
    package private(set) var ranges: [SequenceRange] = []

    package init() {}

    package init<S: Sequence>(_ ranges: S) where S.Element == SequenceRange {
        for r in ranges { insert(r) }
    }

    /// Adds `range` to the union, merging with overlapping or adjacent ranges.
    package mutating func insert(_ range: SequenceRange) {
        var first = range.first, last = range.last
        var merged: [SequenceRange] = []
        merged.reserveCapacity(ranges.count + 1)
        var placed = false
        for r in ranges {
            if r.last.rawValue + 1 < first.rawValue {
                merged.append(r)
            } else if last.rawValue + 1 < r.first.rawValue {
                if !placed { merged.append(SequenceRange(checked: first, last)); placed = true }
                merged.append(r)
            } else {
                first = min(first, r.first)
                last = max(last, r.last)
            }
        }
        if !placed { merged.append(SequenceRange(checked: first, last)) }
        ranges = merged
        assertInvariant()
    }

    /// Everything in 1…through is covered; `.zero` when 1 is not covered.
    package var contiguousThrough: SequenceNumber {
        guard let head = ranges.first, head.first == SequenceNumber(1) else { return .zero }
        return head.last
    }

    /// The prefix as it follows from a known prefix `hint` (1…hint is covered) plus these ranges.
    package func contiguousThrough(after hint: SequenceNumber) -> SequenceNumber {
        var through = hint
        for r in ranges {
            if r.first.rawValue > through.rawValue + 1 { break }
            through = max(through, r.last)
        }
        return through
    }

    /// Highest number covered, `.zero` when nothing is.
    package var highest: SequenceNumber { ranges.last?.last ?? .zero }

    /// Ranges not covered between 1 (or `after` + 1) and `highest`.
    package func gaps(after hint: SequenceNumber = .zero) -> [SequenceRange] {
        var result: [SequenceRange] = []
        var next = hint.rawValue + 1
        for r in ranges {
            if r.last.rawValue < next { continue }
            if r.first.rawValue > next {
                result.append(SequenceRange(checked: SequenceNumber(next), SequenceNumber(r.first.rawValue - 1)))
            }
            next = r.last.rawValue + 1
        }
        return result
    }

    /// The parts of these ranges that `other` does not cover, in ascending order.
    package func subtracting(_ other: Coverage) -> [SequenceRange] {
        var result: [SequenceRange] = []
        var j = 0
        for r in ranges {
            var next = r.first.rawValue // the lowest number of `r` not yet decided
            while j < other.ranges.count, other.ranges[j].last.rawValue < next { j += 1 }
            var k = j
            while next <= r.last.rawValue {
                guard k < other.ranges.count, other.ranges[k].first.rawValue <= r.last.rawValue else {
                    result.append(SequenceRange(checked: SequenceNumber(next), r.last))
                    break
                }
                let o = other.ranges[k]
                if o.first.rawValue > next {
                    result.append(SequenceRange(checked: SequenceNumber(next), SequenceNumber(o.first.rawValue - 1)))
                }
                if o.last.rawValue >= r.last.rawValue { break }
                next = max(next, o.last.rawValue + 1)
                k += 1
            }
        }
        return result
    }

    package func contains(_ s: SequenceNumber) -> Bool {
        ranges.contains { $0.contains(s) }
    }

    private func assertInvariant() {
        for (a, b) in zip(ranges, ranges.dropFirst()) {
            assert(a.last.rawValue + 1 < b.first.rawValue, "coverage ranges must be disjoint and non-adjacent: \(a) \(b)")
        }
    }
}
