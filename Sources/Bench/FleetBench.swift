// fleet: many simulated devices against one or two ingest processes.
//
// Each simulated device is the real device code, in this process: `DeviceNode.services(for:
// components: [.sampler, .sync])` builds its own SQLite log, sampler (simulated sensor) and
// sync agent with its own MQTT connection and persistent session, exactly as
// `fieldlog-device run` does (without button, Redis and status page). Running 1,000 of them
// as processes would measure process start-up and memory, not the pipeline. The ingest
// processes are the real `fieldlog-backend ingest` in one shared-subscription group.
//
// A run: start everything, warm up, measure a window (readings stored per second by
// `received_at`, append→store latency = `received_at` − the reading's device timestamp, CPU
// of every process), then switch measurement off on every device (the runtime switch), wait
// until every log is fully acknowledged, and check that MariaDB holds exactly each log's
// records 1…head.
import ArgumentParser
import Device
import FieldlogCore
import Threading
import Foundation
import Log
import Logging
import MariaDB
import Processes
import ServiceLifecycle
import Settings

struct FleetBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fleet",
        abstract: "N in-process devices (real log + sampler + sync agent + MQTT connection each) against 1 and 2 `fieldlog-backend ingest`.")

    @OptionGroup var stackOptions: StackOptions

    @Option(parsing: .upToNextOption, help: "Scenarios DEVICESxRATE (readings/s per device), e.g. 1000x1 100x100.")
    var scenarios: [String] = ["1000x1", "100x100"]

    @Option(parsing: .upToNextOption, help: "Ingest process counts to run each scenario against.")
    var ingests: [Int] = [1, 2]

    @Option(help: "Seconds measured per run (after the warm-up).")
    var seconds: Double = 15

    @Option(help: "Warm-up seconds before measuring.")
    var warmup: Double = 5

    @Option(help: "Log durability of the simulated devices (full is the device default).")
    var durability: String = "full"

    @Option(help: "Sender interval of the devices in seconds (SYNC_INTERVAL_SECONDS; device default 1; the sender also wakes on each append).")
    var senderInterval: Double = 1

    func validate() throws {
        for s in scenarios where Scenario(s) == nil { throw ValidationError("scenario \(s.debugDescription) is not DEVICESxRATE (1…5000 devices, rate 0.01…100/s)") }
        guard ingests.allSatisfy({ (1...8).contains($0) }) else { throw ValidationError("--ingests values must be 1…8") }
        guard seconds >= 2, warmup >= 0 else { throw ValidationError("--seconds must be ≥ 2, --warmup ≥ 0") }
        guard ["full", "normal"].contains(durability) else { throw ValidationError("--durability must be full or normal") }
        guard (0.05...3600).contains(senderInterval) else { throw ValidationError("--sender-interval must be 0.05…3600") }
    }

    struct Scenario {
        var devices: Int
        var rate: Double
        init?(_ text: String) {
            let parts = text.lowercased().split(separator: "x")
            guard parts.count == 2, let d = Int(parts[0]), let r = Double(parts[1]), (1...5000).contains(d), (0.01...100).contains(r) else { return nil }
            devices = d
            rate = r
        }
    }

    func run() async throws {
        let reporter = Reporter(json: stackOptions.json)
        let dir = try BenchDirectory(stackOptions.dir, name: "fleet")
        defer { dir.remove() }
        let stack = try await BenchStack.start(stackOptions, dir: dir.path, reporter: reporter)
        defer { stack.stop() }
        for s in scenarios.compactMap(Scenario.init) {
            for n in ingests {
                reporter.emit(try await Self.measure(stack: stack, dir: dir.path, scenario: s, ingests: n, seconds: seconds, warmup: warmup,
                                                     durability: durability, senderInterval: senderInterval, reporter: reporter))
            }
        }
    }

    /// CPU seconds of a process (0 when it is gone).
    static func cpu(_ pid: Int32) -> Double { (try? ProcSample.read(pid: pid))?.cpuSeconds ?? 0 }

    static func measure(stack: BenchStack, dir: String, scenario: Scenario, ingests: Int, seconds window: Double, warmup: Double,
                        durability: String, senderInterval: Double, reporter: Reporter) async throws -> [String: Any] {
        let tag = "\(getpid())-\(scenario.devices)x\(Int(scenario.rate))-\(ingests)"
        let database = "bench_fleet_\(tag.replacingOccurrences(of: "-", with: "_"))"
        let runDir = "\(dir)/fleet-\(tag)"
        try FileManager.default.createDirectory(atPath: runDir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: runDir) }
        try await stack.freshDatabase(database)
        return try await withCleanups { cleanups in
            cleanups.add { await stack.dropDatabase(database) }
            let names = (0..<scenario.devices).map { "bf-\(tag)-\($0)" }
            let users = names.map { ($0, "pw-\($0.hashValue & 0xFFFFFF)-\(UInt32.random(in: 0...UInt32.max))") }
            try stack.addMQTTUsers(users)

            var processes: [ChildProcess] = []
            for i in 0..<ingests { processes.append(try stack.startBackend(database: database, dir: runDir, index: i)) }
            cleanups.add { [processes] in for c in processes { await c.stop() } }
            try await Task.sleep(for: .seconds(1))
            for p in processes where !p.isRunning { throw BenchError("ingest exited: \(p.tail())") }

            reporter.note("fleet: \(scenario.devices) devices × \(scenario.rate)/s against \(ingests) ingest process(es)")
            var logger = Logger(label: "bench.fleet")
            logger.logLevel = .error
            // Open the logs (each creates its schema with fsyncs) a few at a time, not one by one.
            let openStart = ContinuousClock.now
            var built: [Int: ([any Service], NodeEnvironment)] = [:]
            let config = { (name: String, password: String) throws -> DeviceConfiguration in
                let settings = ["FIELDLOG_DEVICE_ID": name, "LOG_PATH": "\(runDir)/\(name).sqlite3", "LOG_DURABILITY": durability,
                                "MQTT_HOST": stack.mqttHost, "MQTT_PORT": String(stack.mqttPort), "MQTT_PASSWORD": password,
                                "REDIS_ENABLE": "false", "STATUS_HTTP_PORT": "0", "INTERVAL_SECONDS": String(1 / scenario.rate),
                                "SYNC_INTERVAL_SECONDS": String(senderInterval), "MEASUREMENT_ENABLED": "false"]
                return try DeviceConfiguration(values: SettingValues(table: DeviceSettings.table, environment: settings))
            }
            let configurations = try users.map { try config($0.0, $0.1) }
            let deviceLogger = logger
            try await withThrowingTaskGroup(of: (Int, [any Service], NodeEnvironment).self) { group in
                var next = 0
                func add() {
                    let i = next, c = configurations[i]
                    next += 1
                    group.addTask {
                        let (s, env) = try await DeviceNode.services(for: c, components: [.sampler, .sync], logger: deviceLogger)
                        return (i, s, env)
                    }
                }
                while next < min(16, configurations.count) { add() }
                while let (i, s, env) = try await group.next() {
                    built[i] = (s, env)
                    if next < configurations.count { add() }
                }
            }
            let services = (0..<users.count).flatMap { built[$0]!.0 }
            let nodes = (0..<users.count).map { built[$0]!.1 }
            let openSeconds = secondsSince(openStart)
            let group = ServiceGroup(configuration: .init(services: services.map { .init(service: $0) }, logger: logger))
            let running = Task { try await group.run() }
            cleanups.add { running.cancel(); _ = try? await running.value }

            // Wait until every device is online (its retained status, stored by the ingest), then
            // start sampling everywhere at once.
            let sql = try await MariaDBConnection.connect(configuration: stack.mariaDB(database: database), logger: quietLogger("bench.sql"))
            cleanups.add { await sql.close() }
            try await sql.query("SET time_zone = '+00:00'")
            let connectStart = ContinuousClock.now
            var lastNote = connectStart
            while true {
                let online = try await sql.query("SELECT count(*) FROM devices WHERE status_state = 'online'").rows[0][0].int64 ?? 0
                if online >= Int64(scenario.devices) { break }
                if ContinuousClock.now - lastNote > .seconds(10) {
                    lastNote = .now
                    reporter.note("fleet: \(online) of \(scenario.devices) devices online after \(Int(secondsSince(connectStart))) s")
                }
                if secondsSince(connectStart) > 180 { throw BenchError("fleet: only \(online) of \(scenario.devices) devices online after 180 s") }
                try await Task.sleep(for: .milliseconds(250))
            }
            let connectSeconds = secondsSince(connectStart)
            for n in nodes { await n.settings.set(.measurementEnabled, .enabled(true)) }
            try await Task.sleep(for: .seconds(warmup))

            // Measure.
            let (mosquitto, mariadb) = stack.servicePIDs
            // CPU and the window's bounds are sampled back to back (reading 1,000 log heads here
            // took seconds under load and skewed every rate): the window is [t0, t1) on MariaDB's
            // clock, offered = readings whose device timestamp falls in it (counted after the drain,
            // when every reading is stored), stored = readings whose received_at falls in it.
            func sample() -> (bench: Double, ingest: [Double], broker: Double, db: Double) {
                (bench: cpu(getpid()), ingest: processes.map { cpu($0.pid) }, broker: mosquitto.map(cpu) ?? 0, db: mariadb.map(cpu) ?? 0)
            }
            let clockQuery = "SELECT DATE_FORMAT(UTC_TIMESTAMP(3), '%Y-%m-%d %H:%i:%s.%f'), CAST(ROUND(UNIX_TIMESTAMP(UTC_TIMESTAMP(3)) * 1000) AS SIGNED)"
            let cpuBefore = sample()
            let cpuStart = ContinuousClock.now
            let r0 = try await sql.query(clockQuery).rows[0]
            let (t0, t0ms) = (r0[0].string ?? "", r0[1].int64 ?? 0)
            try await Task.sleep(for: .seconds(window))
            let r1 = try await sql.query(clockQuery).rows[0]
            let (t1, t1ms) = (r1[0].string ?? "", r1[1].int64 ?? 0)
            let cpuAfter = sample()
            let cpuSeconds = secondsSince(cpuStart)
            let elapsed = Double(t1ms - t0ms) / 1000

            // Stop sampling, let every log drain, then check nothing was lost.
            for n in nodes { await n.settings.set(.measurementEnabled, .enabled(false)) }
            let drainStart = ContinuousClock.now
            var unacked: UInt64 = 1
            while unacked > 0 {
                unacked = 0
                for n in nodes {
                    let head = try await n.log.head(), acked = try await n.log.ackedThrough()
                    unacked += head.rawValue - acked.rawValue
                }
                if unacked == 0 { break }
                if secondsSince(drainStart) > 120 { throw BenchError("fleet: \(unacked) readings still unacked 120 s after sampling stopped") }
                try await Task.sleep(for: .seconds(1))
            }
            let drainSeconds = secondsSince(drainStart)
            var heads: [String: UInt64] = [:]
            for n in nodes { heads[n.log.deviceID.rawValue] = (try await n.log.head()).rawValue }

            // Window figures from MariaDB: stored per second and latency, by the ingest's receive time.
            let rows = try await sql.query("""
                SELECT CAST(ROUND(UNIX_TIMESTAMP(received_at) * 1000) - device_ms AS SIGNED) FROM readings
                WHERE received_at >= '\(t0)' AND received_at < '\(t1)'
                """).rows
            let latencies = LatencyStats(rows.compactMap { $0[0].int64.map { $0 * 1_000_000 } })
            let stored = rows.count
            let perDevice = try await sql.query("SELECT device_id, count(*), count(DISTINCT seq), min(seq), max(seq) FROM readings GROUP BY device_id").rows
            var lost: UInt64 = 0, duplicates: UInt64 = 0, checked = 0
            var seen: [String: UInt64] = [:]
            for r in perDevice {
                guard let d = r[0].string, let count = r[1].uint64, let distinct = r[2].uint64 else { continue }
                seen[d] = distinct
                duplicates += count - distinct
                if let h = heads[d] {
                    checked += 1
                    if distinct != h || (h > 0 && (r[3].uint64 != 1 || r[4].uint64 != h)) { lost += h > distinct ? h - distinct : 0 }
                }
            }
            for (d, h) in heads where seen[d] == nil { lost += h }
            let totalAppended = heads.values.reduce(0, +)
            let offeredInWindow = try await sql.query("SELECT count(*) FROM readings WHERE device_ms >= \(t0ms) AND device_ms < \(t1ms)").rows[0][0].int64 ?? 0

            await group.triggerGracefulShutdown()
            _ = try? await running.value
            for p in processes { await p.stop() }

            let offered = Double(offeredInWindow) / elapsed
            let storedRate = Double(stored) / elapsed
            let cpuShare: [String: Double] = [
                "devices_in_bench_process": (cpuAfter.bench - cpuBefore.bench) / cpuSeconds * 100,
                "ingest": zip(cpuAfter.ingest, cpuBefore.ingest).map { $0 - $1 }.reduce(0, +) / cpuSeconds * 100,
                "mosquitto": (cpuAfter.broker - cpuBefore.broker) / cpuSeconds * 100,
                "mariadb": (cpuAfter.db - cpuBefore.db) / cpuSeconds * 100,
            ]
            let total = cpuShare.values.reduce(0, +)
            let busiest = cpuShare.max { $0.value < $1.value }!
            let cores = Double(ProcessInfo.processInfo.activeProcessorCount)
            let bottleneck: String
            if total >= cores * 100 * 0.85 {
                bottleneck = "CPU: the machine's \(Int(cores)) cores are \(Int(total / cores))% busy with the pipeline; largest share \(busiest.key) (\(Int(busiest.value))%)"
            } else if busiest.value >= 90 {
                bottleneck = "CPU of one thread-bound process: \(busiest.key) at \(Int(busiest.value))%"
            } else {
                bottleneck = "none saturated (total \(Int(total))% of \(Int(cores * 100))%); latency is the sender interval + group commit"
            }
            return [
                "benchmark": "fleet-\(scenario.devices)x\(scenario.rate == scenario.rate.rounded() ? String(Int(scenario.rate)) : String(scenario.rate))-ingest\(ingests)",
                "devices": scenario.devices, "readings_per_s_per_device": scenario.rate, "ingest_processes": ingests,
                "durability": durability, "sender_interval_s": senderInterval, "simulation": "in-process: DeviceNode.services([.sampler, .sync]) per device",
                "seconds": elapsed, "open_logs_s": openSeconds, "connect_all_s": connectSeconds,
                "offered_readings_per_s": offered, "stored_readings_per_s": storedRate, "ratio_stored_to_offered": storedRate / max(offered, 1),
                "latency_p50_ms": latencies.percentile(0.5), "latency_p99_ms": latencies.percentile(0.99), "latency_max_ms": latencies.maxMs,
                "latency_definition": "readings.received_at (ingest, in the storing transaction) − device timestamp of the reading",
                "appended_total": totalAppended, "lost": lost, "duplicate_rows": duplicates, "devices_checked": checked,
                "drain_after_stop_s": drainSeconds,
                "cpu_percent": cpuShare, "cpu_percent_total": total, "bottleneck": bottleneck,
                "target_p99_ms": 1000, "ratio_p99_to_target": latencies.percentile(0.99) / 1000,
            ]
        }
    }
}

