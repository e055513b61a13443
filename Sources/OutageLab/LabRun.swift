// LabRun: one scenario run, start to verdict.
//
// Theory of operation (VOPR-style: one seed drives the run, a safety phase then a liveness
// phase, the failing seed is printed):
//  1. Setup: the stack (own or existing), a fresh database migrated by `fieldlog-backend
//     migrate`, one MQTT user per device, one fault proxy per device (device ↔ broker), per
//     ingest (ingest ↔ broker) and per ingest (ingest ↔ MariaDB), 2 ingest processes and the
//     device fleet, each device with its own log file, identity and Redis database index.
//  2. Fault phase: the seeded schedule (Scenario.swift) is played against wall time. Each
//     target has its own serial queue, so a slow restart (mariadbd recovery) never delays
//     faults on other targets. A watcher reads every device log once a second (read-only)
//     and keeps the highest head and every loss marker it saw, since retention may trim them.
//  3. Heal: every open fault is ended, every proxy healed, every process resumed and every
//     killed process and service restarted. Sampling is switched off through the devices'
//     own Redis switch (`measurement:enabled` = 0; a restart with MEASUREMENT_ENABLED=false if
//     heads keep moving), then the lab waits until every device's acked pointer reaches its
//     head (liveness): the time that takes is "time to drain".
//  4. Check: the independent checker (Checker.swift) over the log files and the database,
//     `fieldlog-backend audit --json`, and the liveness of every process the lab did not kill.
//  Throughout, the watcher (4 polls a second) also feeds the recovery and continuity
//  figures (RecoveryFigures.swift): time from healed to drained, the longest frozen acked
//  pointer while the path was healthy, and the longest gap between two appends per device.
import Foundation
import Logging
import Processes

/// Everything a run needs to know.
public struct LabOptions: Sendable {
    public var scenario: Scenario
    public var seed: UInt64
    public var durationSeconds: Double
    /// A running stack to use (its directory with stack.env); nil: the lab starts its own.
    public var existingStackDirectory: String?
    /// Where logs, device log files and (own) stack live. Default /tmp/fieldlog-lab-<scenario>-<seed>.
    public var workDirectory: String?
    public var deviceBinary: String
    public var backendBinary: String
    public var stackScript: String
    /// Longest wait for the fleet to drain after healing.
    public var drainTimeoutSeconds: Double = 300
    /// Extra environment for ingest processes (test-only fault switches).
    public var extraIngestEnvironment: [String: String] = [:]
    /// Extra environment for device processes (test-only fault switches).
    public var extraDeviceEnvironment: [String: String] = [:]
    /// Seconds between progress lines.
    public var progressEverySeconds: Double = 5
    /// Keep the work directory (and an own stack's data) after a passing run.
    public var keep = false

    public init(scenario: Scenario, seed: UInt64, durationSeconds: Double, deviceBinary: String, backendBinary: String, stackScript: String) {
        self.scenario = scenario
        self.seed = seed
        self.durationSeconds = durationSeconds
        self.deviceBinary = deviceBinary
        self.backendBinary = backendBinary
        self.stackScript = stackScript
    }
}

/// The result of a run.
public struct LabReport: Sendable {
    public var scenario: String
    public var seed: UInt64
    public var durationSeconds: Double
    public var devices: Int
    public var ingests: Int
    public var database: String
    public var verdict: Verdict
    public var faults: [ScheduledFault]
    public var faultErrors: [String]
    public var drained: Bool
    public var timeToDrainSeconds: Double
    public var notes: [String]
    public var workDirectory: String
    /// Recovery and continuity (issue 21); reported, not part of the verdict.
    public var figures: RecoveryFigures

    public var passed: Bool { verdict.passed && drained && faultErrors.isEmpty }

    public var text: String {
        var byKind: [String: Int] = [:]
        for f in faults { byKind[f.kind.rawValue, default: 0] += 1 }
        let kinds = byKind.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        var reasons: [String: Int] = [:]
        for d in verdict.devices { for (r, n) in d.lossReasons { reasons[r, default: 0] += n } }
        let reasonText = reasons.isEmpty ? "" : " (" + reasons.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ") + ")"
        var lines = [
            "fieldlog-lab report: scenario \(scenario), seed \(seed), fault phase \(Int(durationSeconds)) s",
            "  replay:             fieldlog-lab run \(scenario) --seed \(seed) --duration \(Int(durationSeconds))s",
            "  fleet:              \(devices) devices, \(ingests) ingest processes, \(database)",
            "  readings appended:  \(verdict.appended)",
            "  stored:             \(verdict.stored)",
            "  duplicates:         \(verdict.duplicates)",
            "  declared losses:    \(verdict.declaredLost)\(reasonText)",
            "  unexplained losses: \(verdict.unexplained)",
            "  acked but missing:  \(verdict.ackedButMissing)",
            "  faults injected:    \(faults.count)\(kinds.isEmpty ? "" : " (\(kinds))")",
            "  time to drain:      \(drained ? String(format: "%.1f s", timeToDrainSeconds) : "did not drain within \(Int(timeToDrainSeconds)) s")",
        ] + figures.lines + [
            "  audit:              \(verdict.auditExitStatus.map { "exit \($0)" } ?? "not run")\(verdict.auditExitStatus == 0 ? "" : ": " + verdict.auditSummary.prefix(400))",
            "  processes:          \(verdict.processProblems.isEmpty ? "every process the lab did not kill kept running" : "\(verdict.processProblems.count) problem(s)")",
        ]
        for d in verdict.devices {
            lines.append(String(format: "    %@ epoch %@: head %llu acked %llu stored %d lost %d unexplained %d",
                                d.device as NSString, String(d.epoch, radix: 16) as NSString, d.head, d.acked, d.stored, d.declaredLost,
                                d.unexplainedCount + d.phantoms + d.conflicts))
            if let f = figures.devices.first(where: { $0.id == d.device }) { lines.append(figures.deviceLine(f)) }
        }
        for n in notes { lines.append("  note: \(n)") }
        for e in faultErrors.prefix(20) { lines.append("  fault error: \(e)") }
        for f in verdict.failures { lines.append("  FAIL: \(f)") }
        if !drained { lines.append("  FAIL: the fleet did not drain after healing") }
        lines.append("  work directory:     \(workDirectory)")
        lines.append("  verdict:            \(passed ? "PASS" : "FAIL (seed \(seed))")")
        return lines.joined(separator: "\n")
    }
}

/// One device of the fleet.
final class LabDevice: @unchecked Sendable {
    let index: Int
    let id: String
    let logPath: String
    let redisDB: Int
    let proxy: FaultProxy
    let process: LabProcess
    let clockFile: String?
    // Watcher state (only touched by the watcher under the run's lock).
    var headMax: UInt64 = 0
    var acked: UInt64 = 0
    var markersSeen: Set<DeclaredLoss> = []
    var epoch: UInt64 = 0
    /// The highest record the watcher has read, and when it last read (wall ms).
    var lastSeqSeen: UInt64 = 0
    var lastPollWallMs = wallMilliseconds()

    init(index: Int, id: String, logPath: String, redisDB: Int, proxy: FaultProxy, process: LabProcess, clockFile: String?) {
        self.index = index
        self.id = id
        self.logPath = logPath
        self.redisDB = redisDB
        self.proxy = proxy
        self.process = process
        self.clockFile = clockFile
    }
}

final class LabIngest: @unchecked Sendable {
    let index: Int
    let brokerProxy: FaultProxy
    let databaseProxy: FaultProxy?
    let process: LabProcess
    init(index: Int, brokerProxy: FaultProxy, databaseProxy: FaultProxy?, process: LabProcess) {
        self.index = index
        self.brokerProxy = brokerProxy
        self.databaseProxy = databaseProxy
        self.process = process
    }
}

public final class LabRun: @unchecked Sendable {
    // @unchecked: the fleet arrays are built in `setUp` before any other thread runs;
    // watcher state and counters are guarded by `lock`.
    public let options: LabOptions
    private let logger: Logger
    private let progress: @Sendable (String) -> Void
    private let lock = NSLock()
    private var stack: LabStack!
    private var devices: [LabDevice] = []
    private var ingests: [LabIngest] = []
    private var databaseName = ""
    private var dbAccess: DatabaseAccess!
    private var workDir = ""
    private var faultErrors: [String] = []
    private var notes: [String] = []
    private var activeFaults: [Int: ScheduledFault] = [:]
    private var startedFaults = 0
    private var watcherStop = false
    private var queues: [FaultTarget: DispatchQueue] = [:]
    private var cancelled = false
    /// Faults that cut a path to the backend, from their start until their end took effect.
    private var pathFaults: [Int: ScheduledFault] = [:]
    private var recovery = RecoveryTracker()
    private var continuity = ContinuityTracker()
    /// Start of the run (monotonic seconds): the time base of the recovery figures.
    private var runStart = monotonicSeconds()
    /// Serialises watcher polls (the watcher thread and the drain loop both poll).
    private let pollLock = NSLock()
    /// Stack services under a fault of the schedule, from its start until its end took effect.
    private var servicesFaulted: Set<ServiceName> = []
    /// Stack services that died without a fault (reported once each time).
    private var servicesSeenDead: Set<ServiceName> = []
    private var serviceDeaths: [String] = []
    /// Sharded: per shard-kill fault, the devices' shards and acked pointers once the shard was down.
    private var shardKillWatch: [Int: (shard: Int, homes: [String: Int], acked: [Int: UInt64], deviceFaults: [Int: Int], since: Double)] = [:]
    /// Device faults begun so far, per device (a device faulted during a shard's outage is not expected to progress).
    private var deviceFaultsBegun: [Int: Int] = [:]

    /// Stops the run at its next step (SIGINT/SIGTERM of the tool): it tears down what it
    /// started and `run()` throws.
    public func cancel() { lock.withLock { cancelled = true } }
    private func checkCancelled() throws {
        if lock.withLock({ cancelled }) { throw LabError.command("the run was interrupted") }
    }

    public init(options: LabOptions, logger: Logger, progress: @escaping @Sendable (String) -> Void) {
        self.options = options
        self.logger = logger
        self.progress = progress
    }

    /// Runs the scenario and returns its report. Throws only when the lab itself cannot run
    /// (a missing binary, a stack that does not start); findings are in the report.
    public func run() throws -> LabReport {
        let shape = options.scenario.shape
        workDir = options.workDirectory ?? "/tmp/fieldlog-lab-\(options.scenario.name)-\(options.seed)"
        try? FileManager.default.removeItem(atPath: workDir + "/devices")
        try FileManager.default.createDirectory(atPath: workDir + "/devices", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: workDir + "/logs", withIntermediateDirectories: true)
        let schedule = FaultSchedule.make(scenario: options.scenario, seed: options.seed, durationSeconds: options.durationSeconds)
        try schedule.map(\.description).joined(separator: "\n").write(toFile: workDir + "/schedule.txt", atomically: true, encoding: .utf8)
        progress("lab: scenario \(options.scenario.name), seed \(options.seed), \(schedule.count) faults over \(Int(options.durationSeconds)) s; work directory \(workDir)")

        defer { tearDown() }
        runStart = monotonicSeconds()
        continuity.exemptDevices = Set(shape.quotaDevices.filter { $0.value == "stop" }.keys)
        continuity.intervalMs = shape.intervalSeconds * 1000
        try setUp(shape)

        // Warm-up: every device appends and the pipeline acks something before faults start.
        try waitUntil("every device appended and got a first ack", timeoutSeconds: 90) {
            self.watchOnce()
            return self.lock.withLock { self.devices.allSatisfy { $0.headMax > 0 && $0.acked > 0 } }
        }

        // Fault phase.
        let watcher = Thread { [unowned self] in
            var polls = 0
            while !self.lock.withLock({ self.watcherStop }) {
                self.watchOnce()
                polls += 1
                if polls % 4 == 0 { self.watchServices() }
                Thread.sleep(forTimeInterval: 0.25)
            }
        }
        watcher.start()
        let t0 = monotonicSeconds()
        let pressureAtStart = (cpu: pressureStallMicroseconds("cpu"), io: pressureStallMicroseconds("io"))
        var events: [(at: Double, begin: Bool, index: Int)] = []
        for (i, f) in schedule.enumerated() {
            events.append((f.atSeconds, true, i))
            events.append((f.atSeconds + f.durationSeconds, false, i))
        }
        events.sort { $0.at < $1.at || ($0.at == $1.at && !$0.begin && $1.begin) }
        var next = 0
        var lastProgress = t0
        while true {
            let now = monotonicSeconds() - t0
            if now >= options.durationSeconds { break }
            try checkCancelled()
            while next < events.count && events[next].at <= now {
                let e = events[next]
                dispatch(schedule[e.index], index: e.index, begin: e.begin)
                next += 1
            }
            if monotonicSeconds() - lastProgress >= options.progressEverySeconds {
                lastProgress = monotonicSeconds()
                progress(progressLine(elapsed: now, phase: "faults"))
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
        // End every fault still open (in schedule order), then wait for every queue.
        while next < events.count {
            let e = events[next]
            if !e.begin { dispatch(schedule[e.index], index: e.index, begin: false) }
            next += 1
        }
        for q in lock.withLock({ Array(queues.values) }) { q.sync {} }

        let phaseMicroseconds = (monotonicSeconds() - t0) * 1e6
        func share(_ start: Double?, _ resource: String) -> Double? {
            guard let start, let end = pressureStallMicroseconds(resource) else { return nil }
            return (end - start) / phaseMicroseconds
        }
        let cpuPressure = share(pressureAtStart.cpu, "cpu"), ioPressure = share(pressureAtStart.io, "io")

        // Heal.
        progress("lab: healing: proxies clean, processes resumed, killed processes and services restarted")
        let healStart = monotonicSeconds()
        heal()
        let healedAt = monotonicSeconds() - runStart
        let healedWallMs = wallMilliseconds()
        lock.withLock { pathFaults.removeAll() }
        for d in devices {
            let head = (try? DeviceLogSnapshot.readState(path: d.logPath).head) ?? 0
            lock.withLock {
                continuity.outageEnded(device: d.index, atMs: healedWallMs)
                recovery.healed(device: d.index, at: healedAt, head: head)
            }
        }
        // Stop sampling, then wait for the fleet to drain.
        lock.withLock { continuity.stoppedAtMs = wallMilliseconds() }
        stopSampling()
        let drained = waitForDrain(deadline: healStart + options.drainTimeoutSeconds)
        let timeToDrain = monotonicSeconds() - healStart
        lock.withLock { watcherStop = true }
        while watcher.isExecuting { Thread.sleep(forTimeInterval: 0.05) }
        Thread.sleep(forTimeInterval: 1)

        // Check.
        progress("lab: checking \(devices.count) device logs against the database")
        let verdict = check()
        var figures = lock.withLock {
            RecoveryFigures(devices: devices.map { d in
                RecoveryFigures.Device(id: d.id, intervalSeconds: shape.intervalSeconds, exempt: continuity.exemptDevices.contains(d.index),
                                       recovery: recovery.figures(device: d.index), continuity: continuity.figures(device: d.index))
            })
        }
        figures.cpuPressure = cpuPressure
        figures.ioPressure = ioPressure
        return LabReport(scenario: options.scenario.name, seed: options.seed, durationSeconds: options.durationSeconds,
                         devices: devices.count, ingests: ingests.count,
                         database: shape.shards > 0 ? "\(shape.shards) shards (single MariaDB each) behind a Spider front end"
                             : shape.galeraNodes > 0 ? "Galera cluster of \(shape.galeraNodes) nodes" : "single MariaDB",
                         verdict: verdict, faults: schedule, faultErrors: lock.withLock { faultErrors }, drained: drained,
                         timeToDrainSeconds: timeToDrain, notes: lock.withLock { notes }, workDirectory: workDir, figures: figures)
    }

    // MARK: setup and teardown

    private func setUp(_ shape: FleetShape) throws {
        for b in [options.deviceBinary, options.backendBinary] where !FileManager.default.isExecutableFile(atPath: b) {
            throw LabError.configuration("\(b) is not an executable (build with `swift build` or pass its path)")
        }
        if let existing = options.existingStackDirectory {
            stack = try LabStack(existing: existing, script: options.stackScript, logger: logger)
            guard existing.isEmpty == false, (shape.galeraNodes > 0) == (stack.galeraNodes > 0), (shape.shards > 0) == (stack.shards > 0) else {
                throw LabError.configuration("scenario \(options.scenario.name) needs \(shape.shards > 0 ? "a sharded (--shards)" : shape.galeraNodes > 0 ? "a Galera" : "a single-MariaDB") stack")
            }
        } else {
            stack = try LabStack(directory: workDir + "/stack", script: options.stackScript, galeraNodes: shape.galeraNodes, shards: shape.shards, logger: logger)
            progress("lab: starting a stack of its own under \(workDir)/stack")
        }
        try stack.up()
        // A fresh database for this run.
        // Unique per run: device ids are MQTT topic levels, and a reused stack keeps retained messages.
        let runID = String(options.seed % 1_000_000_007, radix: 36) + "x" + String(UInt32.random(in: 0...UInt32.max) % 46_656, radix: 36)
        databaseName = "lab_\(options.scenario.name)_\(runID)_\(String(UInt32.random(in: 0...UInt32.max), radix: 36))"
        let addresses = try stack.value("FIELDLOG_MARIADB_ADDRESSES").split(separator: ",").map(String.init)
        let first = addresses[0].split(separator: ":")
        let admin = DatabaseAccess(host: String(first[0]), port: Int(first[1]) ?? 3306, user: try stack.value("FIELDLOG_MARIADB_USER"),
                                   password: try stack.value("FIELDLOG_MARIADB_PASSWORD"), database: "mysql")
        if stack.shards > 0 {
            // The shards' database, migrated and mapped by `scripts/shards init` (stack up);
            // the lab reads through the Spider front end (FIELDLOG_MARIADB_*), as readers do.
            // Device ids are unique per run, so a reused stack's rows do not mix with this run's.
            databaseName = stack.env["FIELDLOG_MARIADB_DATABASE"] ?? "fieldlog"
            dbAccess = DatabaseAccess(host: admin.host, port: admin.port, user: admin.user, password: admin.password, database: databaseName)
        } else {
            _ = try admin.rows("CREATE DATABASE `\(databaseName)` CHARACTER SET utf8mb4")
            dbAccess = DatabaseAccess(host: admin.host, port: admin.port, user: admin.user, password: admin.password, database: databaseName)
            try Tool.run(options.backendBinary, ["migrate"], environment: backendEnvironment(mqttPort: try stack.port("FIELDLOG_MQTT_PORT"),
                                                                                              mariadb: addresses.joined(separator: ",")))
        }
        var rng = SplitMix64(seed: options.seed ^ 0x5EED_F1E1_D106)
        let mqttPort = try stack.port("FIELDLOG_MQTT_PORT")
        let mariaPort = try stack.port("FIELDLOG_MARIADB_PORT")
        // Ingest processes, each behind its own broker proxy and (single MariaDB) database proxy.
        for i in 0..<shape.ingests {
            let bp = try FaultProxy(name: "ingest\(i)-broker", targetPort: mqttPort, seed: rng.next(), logger: logger)
            var dp: FaultProxy? = nil
            var mariadb = addresses.joined(separator: ",")
            if shape.galeraNodes == 0 && stack.shards == 0 {
                dp = try FaultProxy(name: "ingest\(i)-mariadb", targetPort: mariaPort, seed: rng.next(), logger: logger)
                mariadb = "127.0.0.1:\(dp!.port)"
            } else {
                // Each ingest prefers a different node, so a node kill hits one of them.
                let rotated = Array(addresses[(i % addresses.count)...] + addresses[..<(i % addresses.count)])
                mariadb = rotated.joined(separator: ",")
            }
            var env = try backendEnvironment(mqttPort: bp.port, mariadb: mariadb)
            // Its own MQTT session, kept across the lab's kills and restarts of this process.
            env["FIELDLOG_INGEST_CLIENT_ID"] = "lab-\((workDir as NSString).lastPathComponent)-ingest-\(i)"
            for (k, v) in options.extraIngestEnvironment { env[k] = v }
            let p = LabProcess(name: "ingest \(i)", executable: options.backendBinary, arguments: ["ingest"], environment: env,
                               logPath: workDir + "/logs/ingest\(i).log")
            ingests.append(LabIngest(index: i, brokerProxy: bp, databaseProxy: dp, process: p))
        }
        for g in ingests { try g.process.start() }
        // Devices.
        let redisPort = try stack.port("FIELDLOG_REDIS_PORT")
        var ids = (0..<shape.devices).map { "lab-\(runID)-d\($0)" }
        if stack.shards > 0 {
            // Spread evenly over the shards (the map decides: variants of each id are tried
            // until it lands on shard i mod N + 1), so every shard's outage has devices to watch
            // on the others.
            for i in 0..<shape.devices {
                let candidates = (0..<24).map { ids[i] + ($0 == 0 ? "" : "v\($0)") }
                let homes = try stack.shardsOf(candidates)
                if let pick = candidates.first(where: { homes[$0] == i % stack.shards + 1 }) { ids[i] = pick }
            }
        }
        for i in 0..<shape.devices {
            let id = ids[i]
            let password = String(rng.next(), radix: 36) + String(rng.next(), radix: 36)
            try stack.addMQTTUser(id, password: password)
            let proxy = try FaultProxy(name: "device\(i)-broker", targetPort: mqttPort, seed: rng.next(), logger: logger)
            let logPath = workDir + "/devices/\(id).sqlite3"
            var env = baseEnvironment()
            let settings: [String: String] = [
                "FIELDLOG_DEVICE_ID": id, "MQTT_HOST": "127.0.0.1", "MQTT_PORT": String(proxy.port), "MQTT_USERNAME": id,
                "MQTT_PASSWORD": password, "MQTT_KEEPALIVE_SECONDS": "5",
                "REDIS_HOST": "127.0.0.1", "REDIS_PORT": String(redisPort), "REDIS_DB": String(i % 16),
                "LOG_PATH": logPath, "LOG_DURABILITY": shape.normalDurabilityDevices.contains(i) ? "normal" : "full",
                // Long retention: the checker also reads what was appended from the file.
                "LOG_RETENTION_SECONDS": "315360000", "LOG_RETENTION_RECORDS": "1000000000",
                "INTERVAL_SECONDS": String(shape.intervalSeconds), "MEASUREMENT_ENABLED": "true",
                "SENSORS": "temperature=simulated:\(i + 1);humidity=simulated:\(i + 101)",
                "SYNC_INTERVAL_SECONDS": "0.2", "SYNC_RESEND_SECONDS": "2", "SYNC_WINDOW": "4",
                "STATUS_HTTP_PORT": "0", "BUTTON_ENABLE": "false", "LOG_LEVEL": "info",
            ]
            for (k, v) in settings { env[k] = v }
            if let policy = shape.quotaDevices[i] {
                // The smallest quota the device accepts (64k), wide readings (ten sensors) so a
                // partition of a few seconds fills it, and a short retention so acked records are
                // trimmed quickly and `stop` can resume.
                env["LOG_MAX_BYTES"] = "64k"
                env["LOG_QUOTA_POLICY"] = policy
                env["LOG_RETENTION_RECORDS"] = "20"
                env["SENSORS"] = (0..<10).map { "s\($0)=simulated:\(i * 100 + $0 + 1)" }.joined(separator: ";")
            }
            var clockFile: String? = nil
            if shape.clockDevices.contains(i) {
                let f = workDir + "/devices/\(id).clock"
                try "+0\n".write(toFile: f, atomically: true, encoding: .utf8)
                // Test-only switch of the device (Log's TestFaults): an offset added to its wall clock.
                // (libfaketime was tried first: under it Swift programs lose their arguments.)
                env["FIELDLOG_FAULT_CLOCK_OFFSET_FILE"] = f
                clockFile = f
            }
            for (k, v) in options.extraDeviceEnvironment { env[k] = v }
            let p = LabProcess(name: "device \(i) (\(id))", executable: options.deviceBinary, arguments: ["run"], environment: env,
                               logPath: workDir + "/logs/\(id).log")
            devices.append(LabDevice(index: i, id: id, logPath: logPath, redisDB: i % 16, proxy: proxy, process: p, clockFile: clockFile))
            // Redis switches of an earlier run on a reused stack must not pause this one.
            _ = try? Tool.run("redis-cli", ["-h", "127.0.0.1", "-p", String(redisPort), "-n", String(i % 16), "DEL",
                                           "measurement:enabled", "measurement:interval", "mqtt_sender:enabled", "mqtt_sender:interval"])
        }
        for d in devices { try d.process.start() }
        progress("lab: fleet up: \(devices.count) devices, \(ingests.count) ingest processes, database \(databaseName)")
    }

    private func baseEnvironment() -> [String: String] {
        var env: [String: String] = [:]
        for k in ["PATH", "HOME", "LANG", "TMPDIR"] { env[k] = ProcessInfo.processInfo.environment[k] }
        return env
    }

    private func backendEnvironment(mqttPort: Int, mariadb: String) throws -> [String: String] {
        var env = baseEnvironment()
        env["FIELDLOG_MARIADB_ADDRESSES"] = mariadb
        env["FIELDLOG_MARIADB_USER"] = try stack.value("FIELDLOG_MARIADB_USER")
        env["FIELDLOG_MARIADB_PASSWORD"] = try stack.value("FIELDLOG_MARIADB_PASSWORD")
        env["FIELDLOG_MARIADB_DATABASE"] = databaseName
        env["FIELDLOG_MQTT_HOST"] = "127.0.0.1"
        env["FIELDLOG_MQTT_PORT"] = String(mqttPort)
        env["FIELDLOG_MQTT_BACKEND_USER"] = try stack.value("FIELDLOG_MQTT_BACKEND_USER")
        env["FIELDLOG_MQTT_BACKEND_PASSWORD"] = try stack.value("FIELDLOG_MQTT_BACKEND_PASSWORD")
        env["FIELDLOG_MQTT_KEEPALIVE_SECONDS"] = "5"
        env["FIELDLOG_METRICS_PORT"] = "0"
        env["FIELDLOG_LOG_LEVEL"] = "info"
        if let stack, stack.shards > 0 {
            // Sharded ingest: the shards' addresses (the readers' address above is the front end).
            env["FIELDLOG_SHARDS"] = String(stack.shards)
            for k in 1...stack.shards { env["FIELDLOG_SHARD_\(k)_ADDRESSES"] = try stack.value("FIELDLOG_SHARD_\(k)_ADDRESSES") }
        }
        return env
    }

    private func tearDown() {
        for d in devices { d.process.stop(graceSeconds: 5) }
        for g in ingests { g.process.stop(graceSeconds: 5) }
        for d in devices { d.proxy.stop() }
        for g in ingests { g.brokerProxy.stop(); g.databaseProxy?.stop() }
        if let stack {
            if stack.ownsStack { stack.down() } else { _ = try? stack.healAll() }
            if stack.ownsStack && !options.keep { try? FileManager.default.removeItem(atPath: stack.directory) }
        }
    }

    // MARK: faults

    private func queue(for target: FaultTarget) -> DispatchQueue {
        // All stack services share one queue: a service fault starts only after the previous
        // one's restart finished (a Galera node is synced again), so two nodes are never down
        // at once because a rejoin took longer than the schedule assumed (quorum would be lost).
        // A device move is a map change, which needs every shard: it shares that queue too.
        let key: FaultTarget = { if case .service = target { return .service(.mariadb) }; return target }()
        return lock.withLock {
            if let q = queues[key] { return q }
            let q = DispatchQueue(label: "lab.fault.\(key)")
            queues[key] = q
            return q
        }
    }

    private func dispatch(_ f: ScheduledFault, index: Int, begin: Bool) {
        if begin {
            lock.withLock {
                activeFaults[index] = f
                startedFaults += 1
                if f.pathImpact != .none { pathFaults[index] = f }
                if case .service(let service) = f.target { servicesFaulted.insert(service) }
            }
        } else {
            guard lock.withLock({ activeFaults.removeValue(forKey: index) }) != nil else { return }
        }
        if begin, case .device(let i) = f.target, f.kind != .deviceMove { lock.withLock { deviceFaultsBegun[i, default: 0] += 1 } }
        queue(for: f.kind == .deviceMove ? .service(.mariadb) : f.target).async { [self] in
            // After an interrupt, queued faults are dropped: teardown must not wait behind them.
            if lock.withLock({ cancelled }) { return }
            do {
                try apply(f, index: index, begin: begin)
            } catch {
                let msg = "\(begin ? "begin" : "end") \(f.kind.rawValue) on \(f.target): \(error)"
                logger.warning("lab: fault action failed", metadata: ["fault": "\(msg)"])
                lock.withLock { faultErrors.append(msg) }
            }
            // The fault took effect (or ended): what the figures need to know.
            let now = wallMilliseconds()
            lock.withLock {
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
        }
    }

    /// A stack service that is gone while no fault of the schedule acts on it died on its own
    /// (a crash of the broker, say): that is a finding, reported like a process that exited.
    private func watchServices() {
        guard let stack else { return }
        for service in stack.services {
            let faulted = lock.withLock { servicesFaulted.contains(service) || cancelled }
            guard !faulted else { continue }
            let alive = stack.pid(service) != nil
            lock.withLock {
                if alive {
                    servicesSeenDead.remove(service)
                } else if servicesSeenDead.insert(service).inserted {
                    let at = String(format: "%.1f", monotonicSeconds() - runStart)
                    serviceDeaths.append("\(service) died without a fault of the schedule (t=\(at) s of the run); see its log in the stack directory \(stack.directory)")
                }
            }
        }
    }

    /// No fault cuts device `index` off from the backend (call under `lock`).
    private func pathHealthy(_ index: Int) -> Bool {
        !pathFaults.values.contains { f in
            switch f.pathImpact {
            case .none: return false
            case .allDevices: return true
            case .device(let i): return i == index
            }
        }
    }

    private func apply(_ f: ScheduledFault, index: Int, begin: Bool) throws {
        switch (f.kind, f.target) {
        case (.deviceKill, .device(let i)), (.powerCut, .device(let i)):
            if begin { devices[i].process.kill9() } else { try devices[i].process.start() }
        case (.devicePause, .device(let i)):
            if begin { devices[i].process.pause() } else { devices[i].process.resume() }
        case (.ingestKill, .ingest(let i)):
            if begin { ingests[i].process.kill9() } else { try ingests[i].process.start() }
        case (.ingestPause, .ingest(let i)):
            if begin { ingests[i].process.pause() } else { ingests[i].process.resume() }
        case (.serviceKill, .service(let s)), (.galeraKill, .service(let s)):
            if begin { try stack.kill9(s) } else { try stack.restart(s) }
        case (.shardKill, .service(.shard(let k))):
            if begin {
                let homes = try stack.shardsOf(devices.map(\.id))
                try stack.kill9(.shard(k))
                // What was in flight on the shard has been acked or never will be: the baseline.
                Thread.sleep(forTimeInterval: 1)
                watchOnce()
                lock.withLock {
                    shardKillWatch[index] = (k, homes, Dictionary(uniqueKeysWithValues: devices.map { ($0.index, $0.acked) }), deviceFaultsBegun,
                                             monotonicSeconds())
                }
            } else {
                if let w = lock.withLock({ shardKillWatch.removeValue(forKey: index) }) {
                    // The shard stays down for the fault's duration from when it really went
                    // down: a fault queued behind a slow one (a move) must not shrink the window.
                    let remaining = f.durationSeconds - 1 - (monotonicSeconds() - w.since)
                    if remaining > 0 { Thread.sleep(forTimeInterval: remaining) }
                    watchOnce()
                    var finding: (any Error)?
                    do { try checkOtherShardsAcked(w, index: index) } catch { finding = error }
                    try stack.restart(.shard(k))
                    if let finding { throw finding }
                    return
                }
                try stack.restart(.shard(k))
            }
        case (.deviceMove, .device(let i)):
            guard begin else { return }
            let id = devices[i].id
            guard let from = try stack.shardsOf([id])[id] else { throw LabError.command("no shard for \(id)") }
            let to = from % stack.shards + 1
            let t = monotonicSeconds()
            try stack.moveDevice(id, to: to)
            lock.withLock { notes.append(String(format: "device %@ moved from shard %d to shard %d mid-stream in %.1f s", id, from, to, monotonicSeconds() - t)) }
        case (.servicePause, .service(let s)):
            if begin { stack.pause(s) } else { stack.resume(s) }
        case (.deviceCut, .device(let i)):
            if begin { devices[i].proxy.cut() } else { devices[i].proxy.heal() }
        case (.deviceStall, .device(let i)):
            if begin { devices[i].proxy.stall() } else { devices[i].proxy.heal() }
        case (.slowLink, .device(let i)):
            if begin {
                var r = SplitMix64(seed: options.seed ^ UInt64(index) &* 0x9E37_79B9)
                let c = LinkConditions(delayMs: 20 + Int(r.next() % 400), throttleBytesPerSecond: 2_000 + Int(r.next() % 30_000),
                                       dropProbability: 0.005 + r.nextDouble() * 0.05)
                devices[i].proxy.apply(c)
            } else { devices[i].proxy.heal() }
        case (.backendCut, .ingest(let i)):
            if begin { ingests[i].brokerProxy.cut() } else { ingests[i].brokerProxy.heal() }
        case (.backendStall, .ingest(let i)):
            if begin { ingests[i].brokerProxy.stall() } else { ingests[i].brokerProxy.heal() }
        case (.databaseCut, .ingest(let i)):
            if begin { ingests[i].databaseProxy?.cut() } else { ingests[i].databaseProxy?.heal() }
        case (.clockJump, .device(let i)):
            guard let file = devices[i].clockFile else { return }
            let offset = begin ? f.clockOffsetSeconds : 0
            try "\(offset >= 0 ? "+" : "")\(offset)\n".write(toFile: file, atomically: true, encoding: .utf8)
        default:
            throw LabError.configuration("fault \(f.kind.rawValue) cannot act on \(f.target)")
        }
    }

    /// While shard `w.shard` was down, every device on another shard that no fault of its own
    /// stopped must have been acked further (a shard that is down stops only its devices).
    private func checkOtherShardsAcked(_ w: (shard: Int, homes: [String: Int], acked: [Int: UInt64], deviceFaults: [Int: Int], since: Double),
                                       index: Int) throws {
        let (now, faultsNow) = lock.withLock { (Dictionary(uniqueKeysWithValues: devices.map { ($0.index, $0.acked) }), deviceFaultsBegun) }
        var others: [String] = [], stalled: [String] = [], own: [String] = []
        for d in devices {
            guard let home = w.homes[d.id] else { continue }
            let before = w.acked[d.index] ?? 0, after = now[d.index] ?? 0
            if home == w.shard { own.append("\(d.id) +\(after - before)"); continue }
            // Faulted meanwhile (killed, paused, cut off): not expected to progress.
            let quiet = (faultsNow[d.index] ?? 0) == (w.deviceFaults[d.index] ?? 0)
                && !lock.withLock({ activeFaults.values.contains { $0.target == .device(d.index) } })
            guard quiet else { continue }
            others.append("\(d.id) +\(after - before)")
            if after <= before { stalled.append(d.id) }
        }
        lock.withLock {
            notes.append(String(format: "shard %d down: devices on other shards acked %@; its own %@ (over %.1f s)", w.shard,
                                others.joined(separator: ", "), own.joined(separator: ", "), monotonicSeconds() - w.since))
        }
        if others.isEmpty {
            throw LabError.command("shard \(w.shard) down: no device on another shard could be watched (all faulted)")
        }
        if !stalled.isEmpty {
            throw LabError.command("shard \(w.shard) down: devices on other shards were not acked meanwhile: \(stalled.joined(separator: ", "))")
        }
    }

    private func heal() {
        for d in devices { d.proxy.heal() }
        for g in ingests { g.brokerProxy.heal(); g.databaseProxy?.heal() }
        for d in devices { if let f = d.clockFile { try? "+0\n".write(toFile: f, atomically: true, encoding: .utf8) } }
        do { try stack.healAll() } catch { lock.withLock { faultErrors.append("heal: restarting services: \(error)") } }
        for p in devices.map(\.process) + ingests.map(\.process) {
            p.resume()
            if !p.isRunning {
                do { try p.start() } catch { lock.withLock { faultErrors.append("heal: restarting \(p.name): \(error)") } }
            }
        }
    }

    // MARK: watching, draining

    /// Reads every device log once (read-only): keeps the highest head, acked and markers,
    /// and feeds the recovery and continuity figures.
    private func watchOnce() {
        pollLock.lock()
        defer { pollLock.unlock() }
        for d in devices {
            let t = monotonicSeconds() - runStart
            guard FileManager.default.fileExists(atPath: d.logPath),
                  let s = try? DeviceLogSnapshot.readState(path: d.logPath, recordsAfter: d.lastSeqSeen) else { continue }
            let now = wallMilliseconds()
            lock.withLock {
                if d.epoch != 0 && s.epoch != d.epoch {
                    notes.append("device \(d.id) changed epoch \(String(d.epoch, radix: 16)) → \(String(s.epoch, radix: 16))")
                    d.headMax = 0
                    d.lastSeqSeen = 0
                    continuity.restart(device: d.index)
                }
                d.epoch = s.epoch
                d.headMax = max(d.headMax, s.head)
                d.acked = s.acked
                d.markersSeen.formUnion(s.markers)
                continuity.records(device: d.index, s.records, windowStartMs: d.lastPollWallMs, windowEndMs: now)
                d.lastPollWallMs = now
                if let last = s.records.last { d.lastSeqSeen = max(d.lastSeqSeen, last.seq) }
                recovery.observe(device: d.index, at: t, head: s.head, acked: s.acked, healthy: pathHealthy(d.index))
            }
        }
    }

    private func stopSampling() {
        guard let port = try? stack.port("FIELDLOG_REDIS_PORT") else { return }
        for d in devices {
            _ = try? Tool.run("redis-cli", ["-h", "127.0.0.1", "-p", String(port), "-n", String(d.redisDB), "SET", "measurement:enabled", "0"])
        }
        // Wait until heads stop moving; restart devices that keep sampling with MEASUREMENT_ENABLED=false.
        var last: [Int: UInt64] = [:]
        var stableSince = monotonicSeconds()
        let start = monotonicSeconds()
        while monotonicSeconds() - start < 20 {
            watchOnce()
            let heads = lock.withLock { Dictionary(uniqueKeysWithValues: devices.map { ($0.index, $0.headMax) }) }
            if heads != last { last = heads; stableSince = monotonicSeconds() }
            if monotonicSeconds() - stableSince >= 3 { return }
            Thread.sleep(forTimeInterval: 0.5)
        }
        lock.withLock { notes.append("heads kept moving 20 s after measurement:enabled=0; devices restarted with MEASUREMENT_ENABLED=false") }
        for d in devices {
            d.process.stop(graceSeconds: 10)
            d.process.setEnvironment("MEASUREMENT_ENABLED", "false")
            try? d.process.start()
        }
    }

    private func waitForDrain(deadline: Double) -> Bool {
        var lastLine = monotonicSeconds()
        while monotonicSeconds() < deadline {
            if lock.withLock({ cancelled }) { return false }
            watchOnce()
            var allDone = true
            for d in devices {
                guard let s = try? DeviceLogSnapshot.readState(path: d.logPath) else { allDone = false; continue }
                if s.acked < s.head { allDone = false }
            }
            if allDone { return true }
            if monotonicSeconds() - lastLine >= options.progressEverySeconds {
                lastLine = monotonicSeconds()
                progress(progressLine(elapsed: options.durationSeconds, phase: "draining"))
            }
            Thread.sleep(forTimeInterval: 0.25)
        }
        return false
    }

    private func progressLine(elapsed: Double, phase: String) -> String {
        let (appended, acked, active, started) = lock.withLock { () -> (UInt64, UInt64, [ScheduledFault], Int) in
            (devices.reduce(0) { $0 + $1.headMax }, devices.reduce(0) { $0 + $1.acked }, Array(activeFaults.values), startedFaults)
        }
        let stored = (try? dbAccess.rows("SELECT COUNT(*) FROM readings", timeoutSeconds: 3).first?.first).flatMap { $0 } ?? "?"
        let activeText = active.prefix(4).map { "\($0.kind.rawValue) \($0.target)" }.joined(separator: "; ")
        return String(format: "lab %@ seed %llu [%@] t=%4.0f/%.0fs appended %llu acked %llu stored %@ faults %d, active %d%@",
                      options.scenario.name as NSString, options.seed, phase as NSString, elapsed, options.durationSeconds,
                      appended, acked, stored as NSString, started, active.count, active.isEmpty ? "" : " (\(activeText)\(active.count > 4 ? "; …" : ""))")
    }

    private func waitUntil(_ what: String, timeoutSeconds: Double, _ condition: () -> Bool) throws {
        let deadline = monotonicSeconds() + timeoutSeconds
        while !condition() {
            try checkCancelled()
            // A process that already died (bad configuration, say) will not come back: say so now.
            if let dead = (devices.map(\.process) + ingests.map(\.process)).first(where: { !$0.problems.isEmpty }) {
                throw LabError.command("\(dead.problems[0]) while waiting until \(what):\n\(dead.tail(1500))")
            }
            if monotonicSeconds() > deadline {
                var detail = ""
                for p in devices.prefix(2).map(\.process) + ingests.map(\.process) {
                    detail += "\n---- \(p.name) (\(p.isRunning ? "running" : "not running")) \(p.logPath):\n\(p.tail(1500))"
                }
                throw LabError.timeout("\(what) did not happen within \(Int(timeoutSeconds)) s\(detail)")
            }
            Thread.sleep(forTimeInterval: 0.25)
        }
    }

    // MARK: check

    private func check() -> Verdict {
        var verdicts: [DeviceVerdict] = []
        var problems: [String] = []
        for d in devices {
            do {
                let snapshot = try DeviceLogSnapshot.read(path: d.logPath)
                let view = try DatabaseDeviceView.read(dbAccess, device: d.id)
                var checked = snapshot
                let (headMax, markers) = lock.withLock { (d.headMax, d.markersSeen) }
                if headMax > snapshot.head && d.epoch == snapshot.epoch {
                    // The watcher saw appends the file no longer has: they count as appended.
                    problems.append("device \(d.id): head went back from \(headMax) to \(snapshot.head) (appended records vanished from the log)")
                    checked.head = headMax
                }
                verdicts.append(Checker.check(log: checked, markersSeen: markers, database: view))
            } catch {
                problems.append("device \(d.id): could not be checked: \(error)")
            }
        }
        // audit
        var auditStatus: Int32? = nil
        var auditSummary = ""
        do {
            let env = try backendEnvironment(mqttPort: try stack.port("FIELDLOG_MQTT_PORT"),
                                             mariadb: try stack.value("FIELDLOG_MARIADB_ADDRESSES"))
            let r = try Tool.status(options.backendBinary, ["audit", "--json"], environment: env, timeoutSeconds: 120)
            auditStatus = r.status
            auditSummary = (r.stdout + r.stderr).trimmingCharacters(in: .whitespacesAndNewlines)
            try? auditSummary.write(toFile: workDir + "/audit.json", atomically: true, encoding: .utf8)
        } catch {
            auditSummary = "\(error)"
        }
        // liveness: every process the lab did not kill kept running, and all are up now
        for p in devices.map(\.process) + ingests.map(\.process) {
            problems.append(contentsOf: p.problems)
            if !p.isRunning { problems.append("\(p.name) is not running after healing; see \(p.logPath)") }
        }
        for s in stack.services where stack.pid(s) == nil { problems.append("\(s) is not running after healing") }
        problems.append(contentsOf: lock.withLock { serviceDeaths })
        return Verdict(devices: verdicts, auditExitStatus: auditStatus, auditSummary: String(auditSummary.prefix(2000)), processProblems: problems)
    }
}
