// LabFleet: what a lab run starts — the stack, a fresh database, the fault proxies, the ingest
// processes and the devices — how each fault acts on it, and how it is taken down.
//
// Theory of operation: `setUp` builds the fleet step by step (every step a blocking tool or
// process call, so it runs on a thread of its own); when a step fails, what was started so
// far is taken down before the error is thrown. The fleet is immutable once built: faults
// act on its processes, proxies and services, which are thread-safe objects of their own.
// Ingest processes talk to the broker (and, with a single MariaDB, to the database) through a
// fault proxy each; devices talk to the broker through a proxy each, with their own log file,
// identity, MQTT user and Redis database index. A clock-scenario device is started with the
// LabClockShift library preloaded, which moves its wall clock by the offset in a file the lab
// rewrites: the program under test has no switch for it.
import FieldlogCore
import Foundation
import Logging
import Processes

/// One device of the fleet.
struct LabDevice: Sendable {
    let index: Int
    let id: String
    let logPath: String
    let redisDB: Int
    let proxy: FaultProxy
    let process: ManagedProcess
    /// The clock offset file of a clock-scenario device.
    let clockFile: String?
}

/// One ingest process of the fleet, with its proxies.
struct LabIngest: Sendable {
    let index: Int
    let brokerProxy: FaultProxy
    let databaseProxy: FaultProxy?
    let process: ManagedProcess
}

/// The running fleet (see the theory of operation above).
struct LabFleet: Sendable {
    let options: LabOptions
    let workDirectory: String
    let stack: LabStack
    let databaseName: String
    let database: DatabaseAccess
    let devices: [LabDevice]
    let ingests: [LabIngest]
    let logger: Logger

    var processes: [ManagedProcess] { devices.map(\.process) + ingests.map(\.process) }

    /// What `setUp` started so far, to take down when a later step fails.
    private final class Started {
        var stack: LabStack?
        var proxies: [FaultProxy] = []
        var processes: [ManagedProcess] = []
    }

    /// Starts the stack (own or existing), a migrated database of its own, the proxies, the
    /// ingest processes and the devices. Blocks; call it through `runBlocking`.
    static func setUp(options: LabOptions, workDirectory workDir: String, logger: Logger,
                      progress: @Sendable (String) -> Void) throws -> LabFleet {
        let shape = options.scenario.shape
        let ingestBinary = options.ingestBinary ?? options.backendBinary
        for b in [options.deviceBinary, options.backendBinary, ingestBinary] where !FileManager.default.isExecutableFile(atPath: b) {
            throw LabError.configuration("\(b) is not an executable (build with `swift build` or pass its path)")
        }
        // The preload library that moves a clock-scenario device's wall clock: built next to the device.
        let clockShift = (options.deviceBinary as NSString).deletingLastPathComponent + "/libLabClockShift.so"
        if !shape.clockDevices.isEmpty && !FileManager.default.fileExists(atPath: clockShift) {
            throw LabError.configuration("the clock scenario needs \(clockShift) (the LabClockShift library; `swift build` builds it)")
        }
        let started = Started()
        do {
            let stack: LabStack
            if let existing = options.existingStackDirectory {
                stack = try LabStack(existing: existing, script: options.stackScript, logger: logger)
                guard existing.isEmpty == false, (shape.galeraNodes > 0) == (stack.galeraNodes > 0) else {
                    throw LabError.configuration("scenario \(options.scenario.name) needs \(shape.galeraNodes > 0 ? "a Galera" : "a single-MariaDB") stack")
                }
            } else {
                stack = try LabStack(directory: workDir + "/stack", script: options.stackScript, galeraNodes: shape.galeraNodes, logger: logger)
                progress("lab: starting a stack of its own under \(workDir)/stack")
            }
            started.stack = stack
            try stack.up()
            // A fresh database for this run. Unique per run: device ids are MQTT topic levels,
            // and a reused stack keeps retained messages.
            let runID = String(options.seed % 1_000_000_007, radix: 36) + "x" + String(UInt32.random(in: 0...UInt32.max) % 46_656, radix: 36)
            let databaseName = "lab_\(options.scenario.name)_\(runID)_\(String(UInt32.random(in: 0...UInt32.max), radix: 36))"
            let addresses = try stack.value("FIELDLOG_MARIADB_ADDRESSES").split(separator: ",").map(String.init)
            let first = addresses[0].split(separator: ":")
            let admin = DatabaseAccess(host: String(first[0]), port: Int(first[1]) ?? 3306, user: try stack.value("FIELDLOG_MARIADB_USER"),
                                       password: try stack.value("FIELDLOG_MARIADB_PASSWORD"), database: "mysql")
            _ = try admin.rows("CREATE DATABASE `\(databaseName)` CHARACTER SET utf8mb4")
            let database = DatabaseAccess(host: admin.host, port: admin.port, user: admin.user, password: admin.password, database: databaseName)
            let environments = Environments(stack: stack, databaseName: databaseName)
            try Tool.run(options.backendBinary, ["migrate"], environment: environments.backend(mqttPort: try stack.port("FIELDLOG_MQTT_PORT"),
                                                                                               mariadb: addresses.joined(separator: ",")))
            var rng = SplitMix64(seed: options.seed ^ 0x5EED_F1E1_D106)
            let mqttPort = try stack.port("FIELDLOG_MQTT_PORT")
            let mariaPort = try stack.port("FIELDLOG_MARIADB_PORT")
            // Ingest processes, each behind its own broker proxy and (single MariaDB) database proxy.
            var ingests: [LabIngest] = []
            for i in 0..<shape.ingests {
                let bp = try FaultProxy(name: "ingest\(i)-broker", targetPort: mqttPort, seed: rng.next(), logger: logger)
                started.proxies.append(bp)
                var dp: FaultProxy? = nil
                var mariadb = addresses.joined(separator: ",")
                if shape.galeraNodes == 0 {
                    let proxy = try FaultProxy(name: "ingest\(i)-mariadb", targetPort: mariaPort, seed: rng.next(), logger: logger)
                    started.proxies.append(proxy)
                    mariadb = "127.0.0.1:\(proxy.port)"
                    dp = proxy
                } else {
                    // Each ingest prefers a different node, so a node kill hits one of them.
                    let rotated = Array(addresses[(i % addresses.count)...] + addresses[..<(i % addresses.count)])
                    mariadb = rotated.joined(separator: ",")
                }
                var env = try environments.backend(mqttPort: bp.port, mariadb: mariadb)
                // Its own MQTT session, kept across the lab's kills and restarts of this process.
                env["FIELDLOG_INGEST_CLIENT_ID"] = "lab-\((workDir as NSString).lastPathComponent)-ingest-\(i)"
                let p = ManagedProcess(name: "ingest \(i)", executable: ingestBinary, arguments: ["ingest"],
                                       logPath: workDir + "/logs/ingest\(i).log", environment: env, logFile: .appendWithBanner)
                ingests.append(LabIngest(index: i, brokerProxy: bp, databaseProxy: dp, process: p))
            }
            for g in ingests {
                started.processes.append(g.process)
                try g.process.start()
            }
            // Devices.
            let redisPort = try stack.port("FIELDLOG_REDIS_PORT")
            var devices: [LabDevice] = []
            for i in 0..<shape.devices {
                let id = "lab-\(runID)-d\(i)"
                let password = String(rng.next(), radix: 36) + String(rng.next(), radix: 36)
                try stack.addMQTTUser(id, password: password)
                let proxy = try FaultProxy(name: "device\(i)-broker", targetPort: mqttPort, seed: rng.next(), logger: logger)
                started.proxies.append(proxy)
                let logPath = workDir + "/devices/\(id).sqlite3"
                var env = Environments.base()
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
                    // The clock moves from outside the program (libfaketime was tried first: under
                    // it Swift programs lose their arguments; LabClockShift interposes clock_gettime only).
                    env["LD_PRELOAD"] = clockShift
                    env["FIELDLOG_LAB_CLOCK_OFFSET_FILE"] = f
                    clockFile = f
                }
                let p = ManagedProcess(name: "device \(i) (\(id))", executable: options.deviceBinary, arguments: ["run"],
                                       logPath: workDir + "/logs/\(id).log", environment: env, logFile: .appendWithBanner)
                devices.append(LabDevice(index: i, id: id, logPath: logPath, redisDB: i % 16, proxy: proxy, process: p, clockFile: clockFile))
                // Redis switches of an earlier run on a reused stack must not pause this one.
                _ = try? Tool.run("redis-cli", ["-h", "127.0.0.1", "-p", String(redisPort), "-n", String(i % 16), "DEL",
                                               "measurement:enabled", "measurement:interval", "mqtt_sender:enabled", "mqtt_sender:interval"])
            }
            for d in devices {
                started.processes.append(d.process)
                try d.process.start()
            }
            progress("lab: fleet up: \(devices.count) devices, \(ingests.count) ingest processes, database \(databaseName)")
            return LabFleet(options: options, workDirectory: workDir, stack: stack, databaseName: databaseName, database: database,
                            devices: devices, ingests: ingests, logger: logger)
        } catch {
            tearDown(processes: started.processes, proxies: started.proxies, stack: started.stack, keep: options.keep)
            throw error
        }
    }

    /// Stops every process and proxy; takes an own stack down (its data kept with `keep`),
    /// heals an existing one. Blocks.
    func tearDown() {
        Self.tearDown(processes: processes, proxies: devices.map(\.proxy) + ingests.flatMap { [$0.brokerProxy] + ($0.databaseProxy.map { [$0] } ?? []) },
                      stack: stack, keep: options.keep)
    }

    private static func tearDown(processes: [ManagedProcess], proxies: [FaultProxy], stack: LabStack?, keep: Bool) {
        for p in processes { p.stop(grace: .seconds(5)) }
        for p in proxies { p.stop() }
        if let stack {
            if stack.ownsStack { stack.down() } else { _ = try? stack.healAll() }
            if stack.ownsStack && !keep { try? FileManager.default.removeItem(atPath: stack.directory) }
        }
    }

    /// The environment of a backend program (migrate, ingest, audit) on this fleet's database.
    func backendEnvironment(mqttPort: Int, mariadb: String) throws -> [String: String] {
        try Environments(stack: stack, databaseName: databaseName).backend(mqttPort: mqttPort, mariadb: mariadb)
    }

    // MARK: faults

    /// Begins or ends one fault. Blocks (a service restart can take many seconds).
    func apply(_ f: ScheduledFault, index: Int, begin: Bool) throws {
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

    /// Ends every fault: proxies clean, clocks back, services up, processes resumed and the
    /// killed ones started again. Returns what could not be healed. Blocks.
    func heal() -> [String] {
        var errors: [String] = []
        for d in devices { d.proxy.heal() }
        for g in ingests { g.brokerProxy.heal(); g.databaseProxy?.heal() }
        for d in devices { if let f = d.clockFile { try? "+0\n".write(toFile: f, atomically: true, encoding: .utf8) } }
        do { try stack.healAll() } catch { errors.append("heal: restarting services: \(error)") }
        for p in processes {
            p.resume()
            if !p.isRunning {
                do { try p.start() } catch { errors.append("heal: restarting \(p.name): \(error)") }
            }
        }
        return errors
    }

    /// Switches sampling off through each device's own Redis switch (`measurement:enabled` = 0). Blocks.
    func switchSamplingOff() {
        guard let port = try? stack.port("FIELDLOG_REDIS_PORT") else { return }
        for d in devices {
            _ = try? Tool.run("redis-cli", ["-h", "127.0.0.1", "-p", String(port), "-n", String(d.redisDB), "SET", "measurement:enabled", "0"])
        }
    }

    /// Restarts every device with MEASUREMENT_ENABLED=false (for devices that keep sampling). Blocks.
    func restartDevicesWithoutSampling() {
        for d in devices {
            d.process.stop(grace: .seconds(10))
            d.process.setEnvironment("MEASUREMENT_ENABLED", "false")
            try? d.process.start()
        }
    }
}

/// The environments of the fleet's programs.
struct Environments {
    let stack: LabStack
    let databaseName: String

    /// What every program inherits from the lab: PATH, HOME, LANG, TMPDIR.
    static func base() -> [String: String] {
        var env: [String: String] = [:]
        for k in ["PATH", "HOME", "LANG", "TMPDIR"] { env[k] = ProcessInfo.processInfo.environment[k] }
        return env
    }

    func backend(mqttPort: Int, mariadb: String) throws -> [String: String] {
        var env = Self.base()
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
        return env
    }
}
