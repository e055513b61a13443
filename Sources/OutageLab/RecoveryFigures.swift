// Recovery and continuity figures of a lab run (issue 21), computed only from what the lab
// itself sees: the device log files (read-only, as the checker reads them) and its own
// timeline of faults. Pure: the runner feeds the trackers; tests feed them by hand.
//
// - Which devices a fault cuts off from the backend (`ScheduledFault.pathImpact`): a fault
//   of the device itself (kill, power cut, pause, partition, stall, slow link) cuts that
//   device off; a fault of an ingest process, the broker or the database cuts every device
//   off (the backend is not healthy); a clock jump or a Redis fault cuts nobody off (sync
//   does not need them). A device's path is healthy while no such fault is active.
// - `RecoveryTracker`, fed at every watcher poll with (time, head, acked, path healthy):
//   * time from healed to drained: when a device's path becomes healthy again (a killed
//     device restarted, a partition healed, a service back), its head is noted; the sample
//     is the time until its acked pointer reaches that head. A new fault on its path before
//     then interrupts the sample (counted, not measured). The final heal of the run starts
//     a sample for every device.
//   * acked frozen: the longest time the acked pointer did not move while the path was
//     healthy and there was something to acknowledge (head > acked).
// - `ContinuityTracker`, fed the records each poll newly found in a device's log: the
//   longest interval between two consecutive appends, in real time. Record timestamps are
//   the device's wall clock; on devices whose clock the lab moves, a record's real time is
//   its timestamp minus the offset in force when it was taken. Of the offsets in force
//   around the poll, the one that places the record inside the poll's window wins (the
//   lab's offsets differ by at least 90 s, the window is about a second). A gap that spans a
//   kill, power cut or pause of that device is an outage (its figure is the restart time:
//   the gap minus the time the process was down); gaps of a device with the `stop` quota
//   policy are exempt (a full log refuses appends by design); the rest are continuity gaps,
//   whose goal is at most 2 intervals. Pairs after the lab stopped measurement are ignored.
//   A continuity gap during which no other running device of the fleet kept its pace (each
//   had a gap of more than 2 intervals inside it too) is a stall of the whole machine
//   (every device is a separate process; on a shared 2-core machine the scheduler or the
//   disk stops them all at once), reported apart from the longest gap in which the device
//   stalled alone — while another device kept appending every interval or two — the one its
//   own code answers for.
import Foundation

/// Which devices a fault cuts off from the backend.
enum PathImpact: Sendable, Equatable {
    case none
    case device(Int)
    case allDevices
}

extension ScheduledFault {
    var pathImpact: PathImpact {
        switch (kind, target) {
        case (.clockJump, _): return .none
        case (_, .device(let i)): return .device(i)
        case (_, .ingest): return .allDevices
        case (_, .service(.redis)): return .none
        case (_, .service): return .allDevices
        }
    }

    /// A fault during which the device's process does not run (it cannot sample).
    var stopsDeviceProcess: Bool { kind == .deviceKill || kind == .powerCut || kind == .devicePause }
}

/// Time from healed to drained, and the longest frozen acked pointer (see the top of the file).
public struct RecoveryTracker: Sendable {
    /// One device's recovery figures.
    public struct DeviceFigures: Sendable, Equatable {
        /// Seconds from healed to drained, one per completed sample.
        public var drains: [Double] = []
        /// Samples cut short by a new fault on the path.
        public var interrupted = 0
        /// Samples still open when the run ended.
        public var undrained = 0
        /// Longest time the acked pointer stayed frozen with a healthy path and a backlog.
        public var frozenMaxSeconds = 0.0
        /// When that stretch ended (seconds of the run).
        public var frozenMaxEndedAt = 0.0
    }

    private struct Track: Sendable {
        var healthy: Bool?
        var acked: UInt64 = 0
        var frozenSince: Double?
        var drain: (since: Double, head: UInt64)?
        var figures = DeviceFigures()
    }
    private var tracks: [Int: Track] = [:]

    public init() {}

    /// One poll of one device at `t` seconds.
    public mutating func observe(device: Int, at t: Double, head: UInt64, acked: UInt64, healthy: Bool) {
        var tr = tracks[device] ?? Track()
        if !healthy {
            if tr.drain != nil { tr.figures.interrupted += 1; tr.drain = nil }
            tr.frozenSince = nil
        } else {
            if tr.healthy == false {
                tr.drain = (t, head)
                tr.frozenSince = t
            } else if tr.healthy == nil || acked != tr.acked || head <= acked {
                tr.frozenSince = t  // first look, progress, or nothing to acknowledge
            }
            if let since = tr.frozenSince, t - since > tr.figures.frozenMaxSeconds {
                tr.figures.frozenMaxSeconds = t - since
                tr.figures.frozenMaxEndedAt = t
            }
            if let d = tr.drain, acked >= d.head {
                tr.figures.drains.append(t - d.since)
                tr.drain = nil
            }
        }
        tr.acked = acked
        tr.healthy = healthy
        tracks[device] = tr
    }

    /// Everything was healed at `t` (the end of the fault phase): a sample starts for the
    /// device unless one is already running.
    public mutating func healed(device: Int, at t: Double, head: UInt64) {
        var tr = tracks[device] ?? Track()
        if tr.drain == nil { tr.drain = (t, head) }
        tr.healthy = true
        tracks[device] = tr
    }

    /// The figures of one device (an open sample counts as undrained).
    public func figures(device: Int) -> DeviceFigures {
        guard let tr = tracks[device] else { return DeviceFigures() }
        var f = tr.figures
        if tr.drain != nil { f.undrained += 1 }
        return f
    }
}

/// The longest interval between consecutive appends (see the top of the file).
public struct ContinuityTracker: Sendable {
    /// One device's continuity figures (milliseconds).
    public struct DeviceFigures: Sendable, Equatable {
        /// Longest gap not spanning an outage of the process.
        public var gapMaxMs = 0.0
        /// Wall time (ms) of the record that ended it.
        var gapMaxAtMs = 0.0
        /// Longest such gap while another device kept its pace (goal: ≤ 2 intervals).
        public var ownGapMaxMs = 0.0
        /// Longest such gap while every other running device stalled too (the machine stalled).
        public var sharedGapMaxMs = 0.0
        /// Longest restart: a gap across a kill or pause minus the time the process was down.
        public var restartMaxMs = 0.0
        /// Longest gap across a kill or pause, whole.
        public var outageGapMaxMs = 0.0
        /// Longest gap of a device that is exempt (quota policy `stop`).
        public var exemptGapMaxMs = 0.0
        /// Consecutive pairs measured.
        public var pairs = 0
    }

    private struct Track: Sendable {
        var lastSeq: UInt64?
        var lastRealMs: Double?
        /// Real time of every append seen, ascending (for the shared-stall test).
        var appendsMs: [Double] = []
        /// Continuity gaps longer than 1.5 intervals: (start, end), real ms.
        var longGaps: [(startMs: Double, endMs: Double)] = []
        var offsets: [(atMs: Double, offsetMs: Double)] = []
        var outages: [(startMs: Double, endMs: Double?)] = []
        var figures = DeviceFigures()
    }
    private var tracks: [Int: Track] = [:]
    /// Devices whose gaps are exempt.
    public var exemptDevices: Set<Int> = []
    /// Wall time (ms) from which measurement was stopped by the lab.
    public var stoppedAtMs: Double?
    /// The sampling interval of the fleet (ms).
    public var intervalMs = 50.0

    public init() {}

    /// The lab set the device's clock offset to `offsetSeconds` at wall time `atMs`.
    public mutating func clockOffset(device: Int, atMs: Double, offsetSeconds: Int) {
        tracks[device, default: Track()].offsets.append((atMs, Double(offsetSeconds) * 1000))
    }

    /// The device's process stopped (killed, paused) at `atMs`.
    public mutating func outageBegan(device: Int, atMs: Double) {
        tracks[device, default: Track()].outages.append((atMs, nil))
    }

    /// The device's process runs again (restarted, resumed) at `atMs`.
    public mutating func outageEnded(device: Int, atMs: Double) {
        guard let k = tracks[device]?.outages.lastIndex(where: { $0.endMs == nil }) else { return }
        tracks[device]!.outages[k].endMs = atMs
    }

    /// The log was replaced (a new epoch): sequence numbers start again.
    public mutating func restart(device: Int) {
        tracks[device]?.lastSeq = nil
        tracks[device]?.lastRealMs = nil
    }

    /// Records (ascending) a poll found in the device's log, appended after `windowStartMs`
    /// and read at `windowEndMs` (wall time).
    public mutating func records(device: Int, _ records: [(seq: UInt64, tsMs: Int64)], windowStartMs: Double, windowEndMs: Double) {
        var tr = tracks[device] ?? Track()
        let candidates = offsetsInForce(tr.offsets, from: windowStartMs - 1000, to: windowEndMs)
        for r in records {
            if let last = tr.lastSeq, r.seq <= last { continue }  // seen by an overlapping poll
            // The offset that puts the record inside the poll's window (with slack for the
            // device re-reading its offset file every 250 ms and for the poll's own length).
            let lo = windowStartMs - 1500, hi = windowEndMs + 500
            let real = candidates.map { Double(r.tsMs) - $0 }.min { distance($0, lo, hi) < distance($1, lo, hi) } ?? Double(r.tsMs)
            defer {
                tr.lastSeq = r.seq
                tr.lastRealMs = real
                if tr.appendsMs.last.map({ real >= $0 }) ?? true { tr.appendsMs.append(real) }
            }
            guard let lastSeq = tr.lastSeq, lastSeq + 1 == r.seq, let lastReal = tr.lastRealMs else { continue }
            if let stop = stoppedAtMs, real > stop { continue }
            let gap = max(0, real - lastReal)
            tr.figures.pairs += 1
            if exemptDevices.contains(device) {
                tr.figures.exemptGapMaxMs = max(tr.figures.exemptGapMaxMs, gap)
                continue
            }
            let down = tr.outages.reduce(0.0) { sum, o in
                let overlap = min(real, o.endMs ?? real) - max(lastReal, o.startMs)
                return sum + max(0, overlap)
            }
            if down > 0 {
                tr.figures.outageGapMaxMs = max(tr.figures.outageGapMaxMs, gap)
                tr.figures.restartMaxMs = max(tr.figures.restartMaxMs, gap - down)
            } else {
                if gap > tr.figures.gapMaxMs {
                    tr.figures.gapMaxMs = gap
                    tr.figures.gapMaxAtMs = real
                }
                if gap > 1.5 * intervalMs { tr.longGaps.append((lastReal, real)) } else { tr.figures.ownGapMaxMs = max(tr.figures.ownGapMaxMs, gap) }
            }
        }
        tracks[device] = tr
    }

    /// The figures of one device; its long gaps are told apart by the other devices' appends.
    public func figures(device: Int) -> DeviceFigures {
        guard let tr = tracks[device] else { return DeviceFigures() }
        var f = tr.figures
        let others = tracks.filter { $0.key != device }.map(\.value.appendsMs)
        for g in tr.longGaps {
            // Another device ran through the gap (appended before and after it); it kept its
            // pace if no two of its appends inside the gap (with the gap's ends) are more than
            // 2 intervals apart.
            var running = 0, steady = 0
            for times in others {
                let first = Self.firstIndex(in: times, notBelow: g.startMs)
                guard first > 0, let last = times.last, last >= g.endMs else { continue }
                running += 1
                var previous = g.startMs, widest = 0.0, k = first
                while k < times.count, times[k] < g.endMs {
                    widest = max(widest, times[k] - previous)
                    previous = times[k]
                    k += 1
                }
                widest = max(widest, g.endMs - previous)
                if widest <= 2 * intervalMs { steady += 1 }
            }
            let gap = g.endMs - g.startMs
            // Without another running device there is no evidence of a machine stall.
            if steady > 0 || running == 0 { f.ownGapMaxMs = max(f.ownGapMaxMs, gap) } else { f.sharedGapMaxMs = max(f.sharedGapMaxMs, gap) }
        }
        return f
    }

    /// Binary search: the first index whose time is ≥ `value`.
    private static func firstIndex(in times: [Double], notBelow value: Double) -> Int {
        var lo = 0, hi = times.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if times[mid] < value { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    /// The offsets (ms) in force at some time in `from...to`; 0 before the first change.
    private func offsetsInForce(_ changes: [(atMs: Double, offsetMs: Double)], from: Double, to: Double) -> [Double] {
        var out: Set<Double> = [changes.last { $0.atMs <= from }?.offsetMs ?? 0]
        for c in changes where c.atMs > from && c.atMs <= to { out.insert(c.offsetMs) }
        return Array(out)
    }

    private func distance(_ x: Double, _ lo: Double, _ hi: Double) -> Double {
        x < lo ? lo - x : (x > hi ? x - hi : 0)
    }
}

/// The figures of a whole run, with the goals of issue 21.
public struct RecoveryFigures: Sendable {
    public struct Device: Sendable {
        public var id: String
        public var intervalSeconds: Double
        public var exempt: Bool
        public var recovery: RecoveryTracker.DeviceFigures
        public var continuity: ContinuityTracker.DeviceFigures

        public init(id: String, intervalSeconds: Double, exempt: Bool, recovery: RecoveryTracker.DeviceFigures,
                    continuity: ContinuityTracker.DeviceFigures) {
            self.id = id
            self.intervalSeconds = intervalSeconds
            self.exempt = exempt
            self.recovery = recovery
            self.continuity = continuity
        }
    }
    public var devices: [Device]
    /// Share of the fault phase during which some task of the machine waited for a CPU, and
    /// for IO (Linux pressure stall information), when the kernel reports it: context for the
    /// gap figures on a shared machine.
    var cpuPressure: Double?
    var ioPressure: Double?

    static let drainGoalSeconds = 10.0
    static let frozenGoalSeconds = 10.0
    static let gapGoalIntervals = 2.0

    public init(devices: [Device]) { self.devices = devices }

    public var drainSamples: [Double] { devices.flatMap(\.recovery.drains).sorted() }
    /// The p-th percentile (0…100) of the drain samples, nearest rank.
    public func drainPercentile(_ p: Double) -> Double? {
        let s = drainSamples
        guard !s.isEmpty else { return nil }
        let rank = Int((p / 100 * Double(s.count)).rounded(.up))
        return s[min(s.count, max(1, rank)) - 1]
    }
    var frozenMax: (seconds: Double, device: String)? {
        devices.max { $0.recovery.frozenMaxSeconds < $1.recovery.frozenMaxSeconds }.map { ($0.recovery.frozenMaxSeconds, $0.id) }
    }
    /// The longest continuity gap in intervals, over devices that are not exempt.
    var gapMax: (intervals: Double, seconds: Double, device: String)? { longest(\.gapMaxMs) }
    /// The longest gap in which a device stalled alone (other devices kept appending).
    var ownGapMax: (intervals: Double, seconds: Double, device: String)? { longest(\.ownGapMaxMs) }
    /// The longest gap in which the whole fleet stalled.
    var sharedGapMax: (intervals: Double, seconds: Double, device: String)? { longest(\.sharedGapMaxMs) }

    private func longest(_ ms: KeyPath<ContinuityTracker.DeviceFigures, Double>) -> (intervals: Double, seconds: Double, device: String)? {
        devices.filter { !$0.exempt }.map { d in (d.continuity[keyPath: ms] / 1000 / d.intervalSeconds, d.continuity[keyPath: ms] / 1000, d.id) }
            .max { $0.0 < $1.0 }
    }
    var restartMax: (seconds: Double, device: String)? {
        devices.filter { !$0.exempt && $0.continuity.restartMaxMs > 0 }.max { $0.continuity.restartMaxMs < $1.continuity.restartMaxMs }
            .map { ($0.continuity.restartMaxMs / 1000, $0.id) }
    }

    /// The report's lines.
    public var lines: [String] {
        func verdict(_ ok: Bool) -> String { ok ? "met" : "MISSED" }
        var out: [String] = []
        let samples = drainSamples
        let interrupted = devices.reduce(0) { $0 + $1.recovery.interrupted }
        let undrained = devices.reduce(0) { $0 + $1.recovery.undrained }
        if let p99 = drainPercentile(99), let p50 = drainPercentile(50) {
            out.append(String(format: "  healed → drained:   p99 %.1f s, p50 %.1f s, max %.1f s over %d heals (%d interrupted by a new fault, %d undrained) — goal p99 ≤ %.0f s: %@",
                              p99, p50, samples.last ?? 0, samples.count, interrupted, undrained, Self.drainGoalSeconds,
                              verdict(p99 <= Self.drainGoalSeconds && undrained == 0) as NSString))
        } else {
            out.append("  healed → drained:   no sample (\(interrupted) interrupted, \(undrained) undrained)")
        }
        if let f = frozenMax {
            out.append(String(format: "  acked frozen:       longest %.1f s while the path was healthy (%@) — goal ≤ %.0f s: %@",
                              f.seconds, f.device as NSString, Self.frozenGoalSeconds, verdict(f.seconds <= Self.frozenGoalSeconds) as NSString))
        }
        if let g = gapMax, let own = ownGapMax {
            // The sampler keeps a fixed grid, so a gap is a whole number of ticks plus the
            // timer's wake-up jitter (a few ms): the goal is judged on whole ticks, on the gaps
            // a device had alone (a stall of the whole machine is not the device's doing).
            out.append(String(format: "  append gap:         longest %.3f s = %.2f intervals (%@); alone (other devices kept appending) %.3f s = %.2f intervals (%@) — goal ≤ %.0f intervals (whole ticks): %@",
                              g.seconds, g.intervals, g.device as NSString, own.seconds, own.intervals, own.device as NSString,
                              Self.gapGoalIntervals, verdict(own.intervals.rounded() <= Self.gapGoalIntervals) as NSString))
            if let shared = sharedGapMax, shared.seconds > 0 {
                out.append(String(format: "                      the whole fleet stalled at once for up to %.3f s = %.2f intervals (%@): the machine, not one device",
                                  shared.seconds, shared.intervals, shared.device as NSString))
            }
        }
        if let r = restartMax {
            out.append(String(format: "  restart:            longest %.1f s from a killed or paused process back to its next append (%@)", r.seconds, r.device as NSString))
        }
        if let cpu = cpuPressure, let io = ioPressure {
            out.append(String(format: "  machine:            some task waited for a CPU %.0f %% and for IO %.0f %% of the fault phase (Linux PSI)",
                              cpu * 100, io * 100))
        }
        let exempt = devices.filter(\.exempt)
        if !exempt.isEmpty {
            out.append("  exempt from the gap goal: \(exempt.map(\.id).joined(separator: ", ")) (quota policy stop)")
        }
        return out
    }


    /// One line per device.
    func deviceLine(_ d: Device) -> String {
        let utc = ISO8601DateFormatter()
        utc.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        let at = d.continuity.gapMaxMs > 0 ? " at " + utc.string(from: Date(timeIntervalSince1970: d.continuity.gapMaxAtMs / 1000)) : ""
        return String(format: "      recovery: drains %d (max %.1f s), frozen max %.1f s; gap max %.3f s (%.2f intervals%@, alone %.3f s, fleet-wide %.3f s)%@%@",
               d.recovery.drains.count, d.recovery.drains.max() ?? 0, d.recovery.frozenMaxSeconds,
               d.continuity.gapMaxMs / 1000, d.continuity.gapMaxMs / 1000 / d.intervalSeconds, at as NSString,
               d.continuity.ownGapMaxMs / 1000, d.continuity.sharedGapMaxMs / 1000,
               d.continuity.restartMaxMs > 0 ? String(format: ", restart max %.1f s", d.continuity.restartMaxMs / 1000) as NSString : "",
               d.exempt ? String(format: ", exempt gap max %.1f s", d.continuity.exemptGapMaxMs / 1000) as NSString : "")
    }
}

/// Linux pressure stall information: the total microseconds during which some task waited
/// for `resource` ("cpu", "io"); nil where the kernel does not report it.
func pressureStallMicroseconds(_ resource: String) -> Double? {
    guard let text = try? String(contentsOfFile: "/proc/pressure/\(resource)", encoding: .utf8),
          let line = text.split(separator: "\n").first(where: { $0.hasPrefix("some") }),
          let total = line.split(separator: " ").first(where: { $0.hasPrefix("total=") }) else { return nil }
    return Double(total.dropFirst("total=".count))
}
