// Scenarios and their seeded fault schedules.
//
// Theory of operation: a scenario is a fleet shape plus the set of fault kinds it may
// inject. `FaultSchedule.make(scenario:fleet:seed:duration:)` turns one seed into the whole
// list of timed faults (what, on which target, when, for how long) before the run starts —
// pure, no IO — so the same seed gives the same schedule, the schedule is printed with the
// report, and a failing run is replayed with `--seed`. Faults on one target never overlap;
// at most one stack service is faulted at a time (two at once is a different scenario).
import FieldlogCore
import Foundation

/// A kind of fault the lab can inject.
public enum FaultKind: String, Sendable, CaseIterable, Codable {
    case deviceKill = "device-kill"            // SIGKILL a device node, restart after the fault's duration
    case devicePause = "device-pause"          // SIGSTOP … SIGCONT a device node
    case powerCut = "power-cut"                // SIGKILL of a `durability normal` device (stand-in, see docs)
    case ingestKill = "ingest-kill"            // SIGKILL an ingest process, restart later
    case ingestPause = "ingest-pause"          // SIGSTOP … SIGCONT an ingest process
    case serviceKill = "service-kill"          // SIGKILL redis-server / mosquitto / mariadbd, restart later
    case servicePause = "service-pause"        // SIGSTOP … SIGCONT of a service
    case deviceCut = "device-partition"        // device ↔ broker: connections reset, new ones refused
    case deviceStall = "device-stall"          // device ↔ broker: silent partition (nothing moves)
    case backendCut = "backend-partition"      // broker ↔ ingest: connections reset, refused
    case backendStall = "backend-stall"        // broker ↔ ingest: silent partition
    case databaseCut = "database-partition"    // ingest ↔ MariaDB: connections reset, refused
    case slowLink = "slow-lossy-link"          // device ↔ broker: delay, throttle, random resets
    case clockJump = "clock-jump"              // a device's wall clock jumps backwards or forwards
    case galeraKill = "galera-node-kill"       // SIGKILL a Galera node, restart (IST) later
}

/// What a fault acts on.
public enum FaultTarget: Hashable, Sendable, CustomStringConvertible {
    case device(Int)
    case ingest(Int)
    case service(ServiceName)

    public var description: String {
        switch self {
        case .device(let i): return "device \(i)"
        case .ingest(let i): return "ingest \(i)"
        case .service(let s): return s.description
        }
    }
}

/// One timed fault of a schedule.
public struct ScheduledFault: Sendable, CustomStringConvertible {
    public var atSeconds: Double
    public var durationSeconds: Double
    public var kind: FaultKind
    public var target: FaultTarget
    /// Clock jumps: the offset in seconds (negative = backwards).
    var clockOffsetSeconds: Int = 0

    public var description: String {
        let extra = kind == .clockJump ? " by \(clockOffsetSeconds > 0 ? "+" : "")\(clockOffsetSeconds) s" : ""
        return String(format: "t=%6.1fs  %-18@ %-16@ for %5.1fs", atSeconds, kind.rawValue as NSString, target.description as NSString, durationSeconds) + extra
    }
}

/// The shape of a fleet: how many devices, which are special.
public struct FleetShape: Sendable {
    public var devices = 5
    public var ingests = 2
    /// Devices whose log uses `durability normal` (power-cut stand-ins).
    var normalDurabilityDevices: Set<Int> = []
    /// Devices with a tiny disk quota, and their policy ("stop" / "drop-oldest").
    var quotaDevices: [Int: String] = [:]
    /// Devices whose wall clock the lab can move (LabClockShift, preloaded, reads FIELDLOG_LAB_CLOCK_OFFSET_FILE).
    var clockDevices: Set<Int> = []
    /// Galera nodes (0: a single MariaDB).
    public var galeraNodes = 0
    /// Seconds between readings per device.
    public var intervalSeconds = 0.05
    public init() {}
}

/// A named scenario: a fleet shape and the fault kinds it injects.
public struct Scenario: Sendable {
    public var name: String
    public var summary: String
    public var shape: FleetShape
    public var faults: [FaultKind]
    /// Mean seconds between fault starts.
    var meanGapSeconds: Double
    /// Default duration of the fault phase (long form: `--duration`).
    public var defaultDurationSeconds: Double

    public static let all: [Scenario] = [
        Scenario(name: "crash", summary: "device nodes and ingest processes SIGKILLed and restarted many times, and hung (SIGSTOP/SIGCONT)",
                 shape: FleetShape(), faults: [.deviceKill, .deviceKill, .deviceKill, .devicePause, .ingestKill, .ingestPause],
                 meanGapSeconds: 1.5, defaultDurationSeconds: 60),
        Scenario(name: "services", summary: "mosquitto, mariadbd and redis-server SIGKILLed and restarted, and hung (SIGSTOP/SIGCONT)",
                 shape: FleetShape(), faults: [.serviceKill, .serviceKill, .servicePause, .deviceKill],
                 meanGapSeconds: 2, defaultDurationSeconds: 60),
        Scenario(name: "network", summary: "partitions device↔broker, broker↔ingest and ingest↔MariaDB (resets and silent stalls), slow lossy links",
                 shape: FleetShape(), faults: [.deviceCut, .deviceStall, .backendCut, .backendStall, .databaseCut, .slowLink, .slowLink],
                 meanGapSeconds: 2, defaultDurationSeconds: 60),
        Scenario(name: "disk", summary: "disk full on devices (64k quota, policy stop and drop-oldest) while partitioned, power-cut stand-in (SIGKILL with durability normal)",
                 shape: {
                     var s = FleetShape()
                     s.quotaDevices = [0: "stop", 1: "drop-oldest", 2: "drop-oldest"]
                     s.normalDurabilityDevices = [3, 4]
                     return s
                 }(), faults: [.deviceCut, .deviceCut, .powerCut, .powerCut, .deviceKill],
                 meanGapSeconds: 2, defaultDurationSeconds: 60),
        Scenario(name: "clock", summary: "device wall clocks jump backwards and forwards (test-only clock offset switch), with device restarts",
                 shape: {
                     var s = FleetShape()
                     s.clockDevices = [0, 1, 2, 3, 4]
                     return s
                 }(), faults: [.clockJump, .clockJump, .clockJump, .deviceKill],
                 meanGapSeconds: 2, defaultDurationSeconds: 60),
        Scenario(name: "combined", summary: "every fault kind above at once on one fleet",
                 shape: {
                     var s = FleetShape()
                     s.devices = 7
                     s.quotaDevices = [5: "drop-oldest", 6: "stop"]
                     s.normalDurabilityDevices = [3, 4]
                     s.clockDevices = [0, 1]
                     return s
                 }(), faults: [.deviceKill, .deviceKill, .devicePause, .powerCut, .ingestKill, .ingestPause, .serviceKill, .servicePause,
                               .deviceCut, .deviceStall, .backendCut, .backendStall, .databaseCut, .slowLink, .clockJump],
                 meanGapSeconds: 1.5, defaultDurationSeconds: 90),
        Scenario(name: "galera", summary: "a 3-node Galera cluster: nodes SIGKILLed and rejoined (IST) under load, ingest failover, ingest kills",
                 shape: {
                     var s = FleetShape()
                     s.galeraNodes = 3
                     return s
                 }(), faults: [.galeraKill, .galeraKill, .ingestKill, .deviceKill],
                 meanGapSeconds: 6, defaultDurationSeconds: 60),
    ]

    public static func named(_ name: String) -> Scenario? { all.first { $0.name == name } }
}

/// A seeded schedule of faults.
public enum FaultSchedule {
    public static func make(scenario: Scenario, seed: UInt64, durationSeconds: Double) -> [ScheduledFault] {
        var rng = SplitMix64(seed: seed)
        let shape = scenario.shape
        var busyUntil: [FaultTarget: Double] = [:]
        var serviceBusyUntil = 0.0
        var out: [ScheduledFault] = []
        var t = 1.0 + rng.nextDouble() * scenario.meanGapSeconds
        // Leave the last tenth of the phase quiet, so every fault's heal happens inside it.
        let end = durationSeconds * 0.9
        var attempts = 0
        while t < end && attempts < 100_000 {
            attempts += 1
            let kind = scenario.faults[Int(rng.next() % UInt64(scenario.faults.count))]
            var f: ScheduledFault
            func pick(_ n: Int) -> Int { Int(rng.next() % UInt64(max(1, n))) }
            func between(_ a: Double, _ b: Double) -> Double { a + rng.nextDouble() * (b - a) }
            switch kind {
            case .deviceKill:
                f = ScheduledFault(atSeconds: t, durationSeconds: between(0.1, 3), kind: kind, target: .device(pick(shape.devices)))
            case .devicePause:
                f = ScheduledFault(atSeconds: t, durationSeconds: between(0.5, 8), kind: kind, target: .device(pick(shape.devices)))
            case .powerCut:
                let candidates = shape.normalDurabilityDevices.sorted()
                guard !candidates.isEmpty else { continue }
                f = ScheduledFault(atSeconds: t, durationSeconds: between(0.1, 2), kind: kind, target: .device(candidates[pick(candidates.count)]))
            case .ingestKill:
                f = ScheduledFault(atSeconds: t, durationSeconds: between(0.2, 5), kind: kind, target: .ingest(pick(shape.ingests)))
            case .ingestPause:
                f = ScheduledFault(atSeconds: t, durationSeconds: between(0.5, 8), kind: kind, target: .ingest(pick(shape.ingests)))
            case .serviceKill, .servicePause:
                let services: [ServiceName] = shape.galeraNodes > 0 ? [.redis, .mosquitto] : [.redis, .mosquitto, .mariadb]
                f = ScheduledFault(atSeconds: t, durationSeconds: between(1, 6), kind: kind, target: .service(services[pick(services.count)]))
            case .galeraKill:
                f = ScheduledFault(atSeconds: t, durationSeconds: between(3, 12), kind: kind, target: .service(.galera(1 + pick(max(1, shape.galeraNodes)))))
            case .deviceCut, .deviceStall:
                // Quota devices get long partitions so their log fills up.
                // Quota devices are partitioned twice as often as the others, so their logs fill up.
                let quota = shape.quotaDevices.keys.sorted()
                let d = !quota.isEmpty && pick(3) < 2 ? quota[pick(quota.count)] : pick(shape.devices)
                let long = shape.quotaDevices[d] != nil
                f = ScheduledFault(atSeconds: t, durationSeconds: long ? between(6, 20) : between(0.5, 10), kind: kind, target: .device(d))
            case .slowLink:
                f = ScheduledFault(atSeconds: t, durationSeconds: between(3, 15), kind: kind, target: .device(pick(shape.devices)))
            case .backendCut, .backendStall, .databaseCut:
                f = ScheduledFault(atSeconds: t, durationSeconds: between(0.5, 8), kind: kind, target: .ingest(pick(shape.ingests)))
            case .clockJump:
                let candidates = shape.clockDevices.sorted()
                guard !candidates.isEmpty else { continue }
                f = ScheduledFault(atSeconds: t, durationSeconds: between(2, 10), kind: kind, target: .device(candidates[pick(candidates.count)]))
                let magnitudes = [-86_400 * 400, -3600, -120, 90, 3600, 86_400 * 30]
                f.clockOffsetSeconds = magnitudes[pick(magnitudes.count)]
            }
            // Scheduling rules: one fault per target at a time; one service fault at a time.
            let isService: Bool = { if case .service = f.target { return true }; return false }()
            let free = isService ? serviceBusyUntil <= t : (busyUntil[f.target] ?? 0) <= t
            if free && end - t >= 0.3 {
                f.durationSeconds = min(f.durationSeconds, max(0.1, end - t))
                out.append(f)
                let until = t + f.durationSeconds + 0.5
                if isService { serviceBusyUntil = until + 1 } else { busyUntil[f.target] = until }
            }
            t += between(0.2, 2 * scenario.meanGapSeconds)
        }
        return out
    }
}
