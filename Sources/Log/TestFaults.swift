// Test-only fault switches for the outage lab (docs/outage-lab.md). Off unless their
// environment variable is set; never set them on a real device.
import Dispatch
import FieldlogCore
import Threading
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Faults the outage lab injects into a real device process through the environment.
public enum TestFaults {
    /// `FIELDLOG_FAULT_CLOCK_OFFSET_FILE`: path of a file holding a signed offset in seconds
    /// (e.g. `-3600`) that is added to the device's wall clock, so the lab can make the clock
    /// jump backwards and forwards while the process runs. Re-read at most every 250 ms.
    public static func wallClockOffsetMs() -> Int64 {
        guard let path = clockOffsetFile else { return 0 }
        return state.withLock { s in
            let now = DispatchTime.now().uptimeNanoseconds
            if now &- s.readAtNs > 250_000_000 || s.readAtNs == 0 {
                s.readAtNs = now
                if let text = try? String(contentsOfFile: path, encoding: .utf8),
                   let seconds = Int64(text.trimmed().filter { $0 != "+" }) {
                    s.offsetMs = seconds * 1000
                }
            }
            return s.offsetMs
        }
    }

    private static let clockOffsetFile: String? = ProcessInfo.processInfo.environment["FIELDLOG_FAULT_CLOCK_OFFSET_FILE"]

    private struct ClockState { var readAtNs: UInt64 = 0; var offsetMs: Int64 = 0 }
    private static let state = LockedClockState()

    private final class LockedClockState: @unchecked Sendable {
        // @unchecked: `value` is only touched under `lock`.
        private let lock = Lock()
        private var value = ClockState()
        func withLock<T>(_ body: (inout ClockState) -> T) -> T { lock.withLock { body(&value) } }
    }
}
