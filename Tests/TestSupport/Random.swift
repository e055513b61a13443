// What randomised tests draw from FieldlogCore's SplitMix64 (one generator for the whole tree:
// a failing case replays from its seed).
import FieldlogCore

extension SplitMix64 {
    /// Uniform in 0..<n (n > 0).
    public mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    /// True with probability `perMille` / 1000.
    public mutating func chance(_ perMille: Int) -> Bool { below(1000) < perMille }
}
