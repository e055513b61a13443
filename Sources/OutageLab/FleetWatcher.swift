// FleetWatcher: what the lab sees of the fleet while it runs.
//
// Theory of operation: one task (the watcher's `run`) reads every device log, read-only, four
// times a second, on a thread of its own (SQLite blocks), and folds what it read into the
// state it owns: per device the highest head, the acked pointer and every loss marker seen
// (retention may trim them before the check), and the recovery and continuity figures
// (RecoveryFigures.swift). Once a second it looks at the stack's services: one that is gone
// while no fault of the schedule acts on it died on its own, a finding. Fault steps tell it
// which paths to the backend are cut, which services are faulted and when a device's process
// stopped or its clock moved. Only `run` polls, so no two reads of one log overlap; the
// orchestrator asks it questions (warmed up? heads still moving?) between polls.
import FieldlogCore
import Foundation
import Processes

actor FleetWatcher {
    /// What the watcher knows of one device.
    struct DeviceWatch: Sendable {
        var headMax: UInt64 = 0
        var acked: UInt64 = 0
        var markersSeen: Set<DeclaredLoss> = []
        var epoch: UInt64 = 0
        /// The highest record read so far, and when the last poll ended (wall ms).
        var lastSeqSeen: UInt64 = 0
        var lastPollWallMs: Double
    }

    /// One device log as one poll read it.
    private struct Read: Sendable {
        var at: Double
        var wallMs: Double
        var state: (epoch: UInt64, head: UInt64, acked: UInt64, markers: [DeclaredLoss], records: [(seq: UInt64, tsMs: Int64)])
    }

    private let fleet: LabFleet
    /// Start of the run (monotonic seconds): the time base of the recovery figures.
    let runStart: Double
    private var devices: [DeviceWatch]
    private var recovery = RecoveryTracker()
    private var continuity = ContinuityTracker()
    /// Faults that cut a path to the backend, from their start until their end took effect.
    private var pathFaults: [Int: ScheduledFault] = [:]
    /// Stack services under a fault of the schedule, from its start until its end took effect.
    private var servicesFaulted: Set<ServiceName> = []
    /// Stack services that died without a fault (reported once each time).
    private var servicesSeenDead: Set<ServiceName> = []
    private(set) var serviceDeaths: [String] = []
    private(set) var notes: [String] = []

    init(fleet: LabFleet, runStart: Double) {
        self.fleet = fleet
        self.runStart = runStart
        let shape = fleet.options.scenario.shape
        continuity.exemptDevices = Set(shape.quotaDevices.filter { $0.value == "stop" }.keys)
        continuity.intervalMs = shape.intervalSeconds * 1000
        devices = Array(repeating: DeviceWatch(lastPollWallMs: wallMilliseconds()), count: fleet.devices.count)
    }

    /// Polls until cancelled: the device logs every 250 ms, the services every fourth time.
    func run() async {
        var polls = 0
        while !Task.isCancelled {
            await poll()
            polls += 1
            if polls % 4 == 0 { await watchServices() }
            try? await Task.sleep(for: .milliseconds(250))
        }
    }

    /// Reads every device log once and folds in what it found.
    private func poll() async {
        let after = devices.map(\.lastSeqSeen)
        let (logs, runStart) = (fleet.devices.map(\.logPath), self.runStart)
        let reads: [Read?] = await runBlocking("lab watcher") {
            zip(logs, after).map { path, after -> Read? in
                let t = monotonicSeconds() - runStart
                guard FileManager.default.fileExists(atPath: path),
                      let s = try? DeviceLogSnapshot.readState(path: path, recordsAfter: after) else { return nil }
                return Read(at: t, wallMs: wallMilliseconds(), state: s)
            }
        }
        for (i, read) in reads.enumerated() {
            guard let read else { continue }
            let s = read.state
            var d = devices[i]
            if d.epoch != 0 && s.epoch != d.epoch {
                notes.append("device \(fleet.devices[i].id) changed epoch \(String(d.epoch, radix: 16)) → \(String(s.epoch, radix: 16))")
                d.headMax = 0
                d.lastSeqSeen = 0
                continuity.restart(device: i)
            }
            d.epoch = s.epoch
            d.headMax = max(d.headMax, s.head)
            d.acked = s.acked
            d.markersSeen.formUnion(s.markers)
            continuity.records(device: i, s.records, windowStartMs: d.lastPollWallMs, windowEndMs: read.wallMs)
            d.lastPollWallMs = read.wallMs
            if let last = s.records.last { d.lastSeqSeen = max(d.lastSeqSeen, last.seq) }
            devices[i] = d
            recovery.observe(device: i, at: read.at, head: s.head, acked: s.acked, healthy: pathHealthy(i))
        }
    }

    /// A stack service that is gone while no fault of the schedule acts on it died on its own
    /// (a crash of the broker, say): that is a finding, reported like a process that exited.
    private func watchServices() async {
        let stack = fleet.stack
        let alive = await runBlocking("lab services") { stack.services.map { ($0, stack.pid($0) != nil) } }
        for (service, isAlive) in alive where !servicesFaulted.contains(service) {
            if isAlive {
                servicesSeenDead.remove(service)
            } else if servicesSeenDead.insert(service).inserted {
                let at = String(format: "%.1f", monotonicSeconds() - runStart)
                serviceDeaths.append("\(service) died without a fault of the schedule (t=\(at) s of the run); see its log in the stack directory \(stack.directory)")
            }
        }
    }

    /// No fault cuts device `index` off from the backend.
    private func pathHealthy(_ index: Int) -> Bool {
        !pathFaults.values.contains { f in
            switch f.pathImpact {
            case .none: return false
            case .allDevices: return true
            case .device(let i): return i == index
            }
        }
    }

    // MARK: what the fault player and the orchestrator tell it

    /// A fault of the schedule begins (before it takes effect).
    func faultBegins(_ f: ScheduledFault, index: Int) {
        if f.pathImpact != .none { pathFaults[index] = f }
        if case .service(let service) = f.target { servicesFaulted.insert(service) }
    }

    /// A fault's beginning or end took effect (or failed to).
    func faultTookEffect(_ f: ScheduledFault, index: Int, begin: Bool) {
        let now = wallMilliseconds()
        if case .device(let i) = f.target {
            if f.stopsDeviceProcess {
                if begin { continuity.outageBegan(device: i, atMs: now) } else { continuity.outageEnded(device: i, atMs: now) }
            }
            if f.kind == .clockJump { continuity.clockOffset(device: i, atMs: now, offsetSeconds: begin ? f.clockOffsetSeconds : 0) }
        }
        if !begin {
            pathFaults.removeValue(forKey: index)
            if case .service(let service) = f.target { servicesFaulted.remove(service) }
        }
    }

    /// Everything was healed at `at` (seconds of the run) and `wallMs`; the devices' heads
    /// then (nil: unreadable, counted as 0).
    func healed(at: Double, wallMs: Double, heads: [UInt64?]) {
        pathFaults.removeAll()
        for (i, head) in heads.enumerated() {
            continuity.outageEnded(device: i, atMs: wallMs)
            recovery.healed(device: i, at: at, head: head ?? 0)
        }
    }

    /// Sampling is being switched off: appends after now are not continuity gaps.
    func samplingStopped() { continuity.stoppedAtMs = wallMilliseconds() }

    func note(_ text: String) { notes.append(text) }

    // MARK: what it answers

    /// Every device appended and got a first ack.
    var warmedUp: Bool { devices.allSatisfy { $0.headMax > 0 && $0.acked > 0 } }

    /// The highest head seen per device.
    var heads: [UInt64] { devices.map(\.headMax) }

    /// Records appended and acked over the fleet, for progress lines.
    var totals: (appended: UInt64, acked: UInt64) { (devices.reduce(0) { $0 + $1.headMax }, devices.reduce(0) { $0 + $1.acked }) }

    /// What the checker needs of device `index` beyond its log file.
    func seen(_ index: Int) -> DeviceWatch { devices[index] }

    /// The recovery and continuity figures so far.
    func figures() -> RecoveryFigures {
        let shape = fleet.options.scenario.shape
        return RecoveryFigures(devices: fleet.devices.map { d in
            RecoveryFigures.Device(id: d.id, intervalSeconds: shape.intervalSeconds, exempt: continuity.exemptDevices.contains(d.index),
                                   recovery: recovery.figures(device: d.index), continuity: continuity.figures(device: d.index))
        })
    }
}
