// LabRun: one scenario run, start to verdict.
//
// Theory of operation (VOPR-style: one seed drives the run, a safety phase then a liveness
// phase, the failing seed is printed):
//  1. Setup (LabFleet): the stack (own or existing), a fresh database migrated by
//     `fieldlog-backend migrate`, one MQTT user per device, one fault proxy per device
//     (device ↔ broker), per ingest (ingest ↔ broker) and per ingest (ingest ↔ MariaDB), 2
//     ingest processes and the device fleet, each device with its own log file, identity and
//     Redis database index. From here until the fleet has drained, the watcher
//     (FleetWatcher) reads every device log four times a second (read-only) and keeps the
//     highest head and every loss marker it saw, since retention may trim them.
//  2. Fault phase (FaultPlayer): the seeded schedule (Scenario.swift) is played against the
//     clock, each target on a lane of its own.
//  3. Heal: every open fault is ended, every proxy healed, every process resumed and every
//     killed process and service restarted. Sampling is switched off through the devices'
//     own Redis switch (`measurement:enabled` = 0; a restart with MEASUREMENT_ENABLED=false if
//     heads keep moving), then the lab waits until every device's acked pointer reaches its
//     head (liveness): the time that takes is "time to drain".
//  4. Check: the independent checker (Checker.swift) over the log files and the database,
//     `fieldlog-backend audit --json`, and the liveness of every process the lab did not kill.
//  The watcher also feeds the recovery and continuity figures (RecoveryFigures.swift): time
//  from healed to drained, the longest frozen acked pointer while the path was healthy, and
//  the longest gap between two appends per device.
// The run is one task with structured children (the watcher, the fault lanes); every
// blocking step (tools, processes, SQLite, the database client) runs on a thread of its own.
// Cancelling the task interrupts the run: it tears down what it started and `run()` throws.
import Foundation
import Logging
import Processes

/// One scenario run (see the theory of operation above).
public struct LabRun: Sendable {
    public let options: LabOptions
    private let logger: Logger
    private let progress: @Sendable (String) -> Void

    public init(options: LabOptions, logger: Logger, progress: @escaping @Sendable (String) -> Void) {
        self.options = options
        self.logger = logger
        self.progress = progress
    }

    /// Runs the scenario and returns its report. Throws only when the lab itself cannot run
    /// (a missing binary, a stack that does not start) or the run was interrupted; findings
    /// are in the report.
    public func run() async throws -> LabReport {
        let workDir = options.workDirectory ?? "/tmp/fieldlog-lab-\(options.scenario.name)-\(options.seed)"
        try? FileManager.default.removeItem(atPath: workDir + "/devices")
        try FileManager.default.createDirectory(atPath: workDir + "/devices", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: workDir + "/logs", withIntermediateDirectories: true)
        let schedule = FaultSchedule.make(scenario: options.scenario, seed: options.seed, durationSeconds: options.durationSeconds)
        try schedule.map(\.description).joined(separator: "\n").write(toFile: workDir + "/schedule.txt", atomically: true, encoding: .utf8)
        progress("lab: scenario \(options.scenario.name), seed \(options.seed), \(schedule.count) faults over \(Int(options.durationSeconds)) s; work directory \(workDir)")

        let runStart = monotonicSeconds()
        let (options, logger, progress) = (self.options, self.logger, self.progress)
        let fleet = try await runBlocking("lab setup") {
            try LabFleet.setUp(options: options, workDirectory: workDir, logger: logger, progress: progress)
        }
        do {
            let report = try await run(fleet, schedule: schedule, runStart: runStart)
            await runBlocking("lab teardown") { fleet.tearDown() }
            return report
        } catch {
            await runBlocking("lab teardown") { fleet.tearDown() }
            if error is CancellationError { throw LabError.command("the run was interrupted") }
            throw error
        }
    }

    /// What the phases up to the drain found.
    private struct Phases: Sendable {
        var faultErrors: [String]
        var drained: Bool
        var timeToDrainSeconds: Double
        var cpuPressure: Double?
        var ioPressure: Double?
    }

    private func run(_ fleet: LabFleet, schedule: [ScheduledFault], runStart: Double) async throws -> LabReport {
        let watcher = FleetWatcher(fleet: fleet, runStart: runStart)
        let phases = try await withThrowingTaskGroup(of: Void.self) { group -> Phases in
            group.addTask { await watcher.run() }
            defer { group.cancelAll() }
            // Warm-up: every device appends and the pipeline acks something before faults start.
            try await waitUntil("every device appended and got a first ack", timeoutSeconds: 90, fleet) { await watcher.warmedUp }
            return try await faultsHealAndDrain(fleet, watcher, schedule: schedule)
        }
        try? await Task.sleep(for: .seconds(1))
        try Task.checkCancellation()

        progress("lab: checking \(fleet.devices.count) device logs against the database")
        let verdict = try await check(fleet, watcher)
        var figures = await watcher.figures()
        figures.cpuPressure = phases.cpuPressure
        figures.ioPressure = phases.ioPressure
        let shape = options.scenario.shape
        return LabReport(scenario: options.scenario.name, seed: options.seed, durationSeconds: options.durationSeconds,
                         devices: fleet.devices.count, ingests: fleet.ingests.count,
                         database: shape.galeraNodes > 0 ? "Galera cluster of \(shape.galeraNodes) nodes" : "single MariaDB",
                         verdict: verdict, faults: schedule, faultErrors: phases.faultErrors, drained: phases.drained,
                         timeToDrainSeconds: phases.timeToDrainSeconds, notes: await watcher.notes, workDirectory: fleet.workDirectory,
                         figures: figures)
    }

    /// The fault phase, the heal and the drain.
    private func faultsHealAndDrain(_ fleet: LabFleet, _ watcher: FleetWatcher, schedule: [ScheduledFault]) async throws -> Phases {
        let t0 = monotonicSeconds()
        let pressureAtStart = (cpu: pressureStallMicroseconds("cpu"), io: pressureStallMicroseconds("io"))
        let player = FaultPlayer(fleet: fleet, watcher: watcher, logger: logger)
        let played = try await player.play(schedule, seconds: options.durationSeconds, progressEvery: options.progressEverySeconds) {
            elapsed, active, started in
            self.progress(await self.progressLine(fleet, watcher, elapsed: elapsed, phase: "faults", active: active, started: started))
        }
        let phaseMicroseconds = (monotonicSeconds() - t0) * 1e6
        func share(_ start: Double?, _ resource: String) -> Double? {
            guard let start, let end = pressureStallMicroseconds(resource) else { return nil }
            return (end - start) / phaseMicroseconds
        }

        // Heal.
        progress("lab: healing: proxies clean, processes resumed, killed processes and services restarted")
        let healStart = monotonicSeconds()
        let healErrors = await runBlocking("lab heal") { fleet.heal() }
        let healedAt = monotonicSeconds() - watcher.runStart, healedWallMs = wallMilliseconds()
        let heads = await runBlocking("lab heads") { fleet.devices.map { try? DeviceLogSnapshot.readState(path: $0.logPath).head } }
        await watcher.healed(at: healedAt, wallMs: healedWallMs, heads: heads)
        // Stop sampling, then wait for the fleet to drain.
        await watcher.samplingStopped()
        try await stopSampling(fleet, watcher)
        let drained = try await waitForDrain(fleet, watcher, deadline: healStart + options.drainTimeoutSeconds, started: played.started)
        return Phases(faultErrors: played.errors + healErrors, drained: drained, timeToDrainSeconds: monotonicSeconds() - healStart,
                      cpuPressure: share(pressureAtStart.cpu, "cpu"), ioPressure: share(pressureAtStart.io, "io"))
    }

    // MARK: waiting

    /// Switches sampling off and waits until the heads stop moving (3 s); devices that keep
    /// sampling for 20 s are restarted with MEASUREMENT_ENABLED=false.
    private func stopSampling(_ fleet: LabFleet, _ watcher: FleetWatcher) async throws {
        await runBlocking("lab sampling off") { fleet.switchSamplingOff() }
        var last: [UInt64] = []
        var stableSince = monotonicSeconds()
        let start = monotonicSeconds()
        while monotonicSeconds() - start < 20 {
            let heads = await watcher.heads
            if heads != last { last = heads; stableSince = monotonicSeconds() }
            if monotonicSeconds() - stableSince >= 3 { return }
            try await Task.sleep(for: .milliseconds(500))
        }
        await watcher.note("heads kept moving 20 s after measurement:enabled=0; devices restarted with MEASUREMENT_ENABLED=false")
        await runBlocking("lab restart devices") { fleet.restartDevicesWithoutSampling() }
    }

    /// Waits until every device's acked pointer reached its head; false when `deadline`
    /// (monotonic seconds) passed first.
    private func waitForDrain(_ fleet: LabFleet, _ watcher: FleetWatcher, deadline: Double, started: Int) async throws -> Bool {
        var lastLine = monotonicSeconds()
        while monotonicSeconds() < deadline {
            let drained = await runBlocking("lab drain") {
                fleet.devices.allSatisfy { d in (try? DeviceLogSnapshot.readState(path: d.logPath)).map { $0.acked >= $0.head } ?? false }
            }
            if drained { return true }
            if monotonicSeconds() - lastLine >= options.progressEverySeconds {
                lastLine = monotonicSeconds()
                progress(await progressLine(fleet, watcher, elapsed: options.durationSeconds, phase: "draining", active: [], started: started))
            }
            try await Task.sleep(for: .milliseconds(250))
        }
        return false
    }

    /// Waits until `condition` holds; throws when a process died on its way there (it will
    /// not come back: bad configuration, say) or after `timeoutSeconds`.
    private func waitUntil(_ what: String, timeoutSeconds: Double, _ fleet: LabFleet, _ condition: () async -> Bool) async throws {
        let deadline = monotonicSeconds() + timeoutSeconds
        while await !condition() {
            if let dead = fleet.processes.first(where: { !$0.problems.isEmpty }) {
                throw LabError.command("\(dead.problems[0]) while waiting until \(what):\n\(dead.tail(1500))")
            }
            if monotonicSeconds() > deadline {
                var detail = ""
                for p in fleet.devices.prefix(2).map(\.process) + fleet.ingests.map(\.process) {
                    detail += "\n---- \(p.name) (\(p.isRunning ? "running" : "not running")) \(p.logPath):\n\(p.tail(1500))"
                }
                throw LabError.timeout("\(what) did not happen within \(Int(timeoutSeconds)) s\(detail)")
            }
            try await Task.sleep(for: .milliseconds(250))
        }
    }

    private func progressLine(_ fleet: LabFleet, _ watcher: FleetWatcher, elapsed: Double, phase: String,
                              active: [ScheduledFault], started: Int) async -> String {
        let (appended, acked) = await watcher.totals
        let database = fleet.database
        let stored = await runBlocking("lab progress") {
            (try? database.rows("SELECT COUNT(*) FROM readings", timeoutSeconds: 3).first?.first).flatMap { $0 } ?? "?"
        }
        let activeText = active.prefix(4).map { "\($0.kind.rawValue) \($0.target)" }.joined(separator: "; ")
        return String(format: "lab %@ seed %llu [%@] t=%4.0f/%.0fs appended %llu acked %llu stored %@ faults %d, active %d%@",
                      options.scenario.name as NSString, options.seed, phase as NSString, elapsed, options.durationSeconds,
                      appended, acked, stored as NSString, started, active.count, active.isEmpty ? "" : " (\(activeText)\(active.count > 4 ? "; …" : ""))")
    }

    // MARK: check

    private func check(_ fleet: LabFleet, _ watcher: FleetWatcher) async throws -> Verdict {
        var seen: [FleetWatcher.DeviceWatch] = []
        for d in fleet.devices { seen.append(await watcher.seen(d.index)) }
        let serviceDeaths = await watcher.serviceDeaths
        return try await runBlocking("lab check") { [seen] in
            var verdicts: [DeviceVerdict] = []
            var problems: [String] = []
            for (d, watched) in zip(fleet.devices, seen) {
                do {
                    let snapshot = try DeviceLogSnapshot.read(path: d.logPath)
                    let view = try DatabaseDeviceView.read(fleet.database, device: d.id)
                    var checked = snapshot
                    if watched.headMax > snapshot.head && watched.epoch == snapshot.epoch {
                        // The watcher saw appends the file no longer has: they count as appended.
                        problems.append("device \(d.id): head went back from \(watched.headMax) to \(snapshot.head) (appended records vanished from the log)")
                        checked.head = watched.headMax
                    }
                    verdicts.append(Checker.check(log: checked, markersSeen: watched.markersSeen, database: view))
                } catch {
                    problems.append("device \(d.id): could not be checked: \(error)")
                }
            }
            // audit
            var auditStatus: Int32? = nil
            var auditSummary = ""
            do {
                let env = try fleet.backendEnvironment(mqttPort: try fleet.stack.port("FIELDLOG_MQTT_PORT"),
                                                       mariadb: try fleet.stack.value("FIELDLOG_MARIADB_ADDRESSES"))
                let r = try Tool.status(fleet.options.backendBinary, ["audit", "--json"], environment: env, timeoutSeconds: 120)
                auditStatus = r.status
                auditSummary = (r.stdout + r.stderr).trimmingCharacters(in: .whitespacesAndNewlines)
                try? auditSummary.write(toFile: fleet.workDirectory + "/audit.json", atomically: true, encoding: .utf8)
            } catch {
                auditSummary = "\(error)"
            }
            // liveness: every process the lab did not kill kept running, and all are up now
            for p in fleet.processes {
                problems.append(contentsOf: p.problems)
                if !p.isRunning { problems.append("\(p.name) is not running after healing; see \(p.logPath)") }
            }
            for s in fleet.stack.services where fleet.stack.pid(s) == nil { problems.append("\(s) is not running after healing") }
            problems.append(contentsOf: serviceDeaths)
            return Verdict(devices: verdicts, auditExitStatus: auditStatus, auditSummary: String(auditSummary.prefix(2000)), processProblems: problems)
        }
    }
}
