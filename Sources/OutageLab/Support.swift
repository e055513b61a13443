// Small shared pieces of the lab: its error type, a seeded random generator, time helpers.
import Foundation

/// An error of the lab itself (not a finding of the checker): says what failed.
public enum LabError: Error, CustomStringConvertible, Sendable {
    case system(String, Int32)
    case command(String)
    case configuration(String)
    case timeout(String)

    public var description: String {
        switch self {
        case .system(let what, let e): return "\(what) failed: \(String(cString: strerror(e))) (errno \(e))"
        case .command(let s): return s
        case .configuration(let s): return "configuration: \(s)"
        case .timeout(let s): return "timeout: \(s)"
        }
    }
}

/// SplitMix64: a tiny, fast, seedable generator. One seed drives a whole lab run
/// (schedule, targets, proxy drops), so a failing run is replayed with `--seed`.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    public mutating func nextDouble() -> Double { Double(next() >> 11) / Double(1 << 53) }
    /// A child generator for an independent stream (e.g. one per proxy).
    public mutating func fork() -> SplitMix64 { SplitMix64(seed: next()) }
}

/// Monotonic seconds since an arbitrary start, for progress and deadlines.
public func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// Wall-clock milliseconds since 1970 (what device timestamps are).
public func wallMilliseconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Double(ts.tv_sec) * 1000 + Double(ts.tv_nsec) / 1e6
}

/// Parses "90", "90s", "10m", "1h", "500ms" into seconds.
public func parseDurationSeconds(_ text: String) throws -> Double {
    let t = text.trimmingCharacters(in: .whitespaces).lowercased()
    let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]
    for (suffix, factor) in units where t.hasSuffix(suffix) {
        if let v = Double(t.dropLast(suffix.count)), v > 0, v.isFinite { return v * factor }
    }
    if let v = Double(t), v > 0, v.isFinite { return v }
    throw LabError.configuration("duration \(text.debugDescription) is not a positive number with an optional unit ms, s, m or h (e.g. 90s, 10m)")
}
