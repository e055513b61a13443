// Time: the one wall clock, and Durations in the units C calls and wire formats want.
//
// Every program of Fieldlog reads the wall clock here (device timestamps, the log's own
// times, the backend's receive and session times), so there is one definition of "now".
// Tests and the outage lab change what it returns from outside the program: the lab starts
// a device with its clock shifted (the LabClockShift library, preloaded), not through a
// switch the program reads. Durations are converted by the properties below, never by hand
// from `components`.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The wall clock (CLOCK_REALTIME): what device timestamps and the backend's times are.
public enum WallClock {
    /// Milliseconds since 1970-01-01 UTC, rounded down.
    public static func unixMilliseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }
}

extension Duration {
    /// Whole milliseconds, truncated toward zero.
    public var inMilliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }

    /// Whole nanoseconds, truncated toward zero (±292 years fit).
    public var inNanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }

    /// Seconds with their fraction.
    public var inSeconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }

    /// The duration as a C `timespec` (nanoseconds truncated), for nanosleep, poll and friends.
    public var timespecValue: timespec {
        let (seconds, attoseconds) = components
        return timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
    }
}
