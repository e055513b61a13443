// Small shared pieces of the lab: its error type and time helpers. (Its seeded random
// generator is FieldlogCore's SplitMix64.)
import FieldlogCore
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

/// Monotonic seconds since an arbitrary start, for progress and deadlines.
public func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// Wall-clock milliseconds since 1970 (what device timestamps are), from FieldlogCore's WallClock.
func wallMilliseconds() -> Double { Double(WallClock.unixMilliseconds()) }

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
