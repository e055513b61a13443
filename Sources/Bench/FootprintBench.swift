// footprint: the size of the `fieldlog-device` binary (as built, and stripped), then resident
// memory and CPU of `fieldlog-device run` (sampler, sync agent, commands, Redis mirror; the
// status page off) idle, at 1 and 100 readings/s, and while draining a backlog.
import ArgumentParser
import FieldlogCore
import Threading
import Foundation
import Processes

struct FootprintBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "footprint",
        abstract: "Binary size of fieldlog-device (stripped), then RSS (VmRSS, VmHWM) and CPU (utime+stime) of `fieldlog-device run`: idle, 1/s, 100/s, draining a backlog.")

    @OptionGroup var stackOptions: StackOptions

    @Option(help: "Seconds measured per phase (after a warm-up of 3 s).")
    var seconds: Double = 15

    @Option(help: "Backlog (readings) for the draining phase.")
    var backlog: Int = 200_000

    @Flag(help: "Only the binary's size (no stack, no processes).")
    var binaryOnly = false

    func validate() throws {
        guard seconds >= 1, seconds <= 600 else { throw ValidationError("--seconds must be 1…600") }
        guard backlog >= 1000 else { throw ValidationError("--backlog must be ≥ 1000") }
    }

    func run() async throws {
        let reporter = Reporter(json: stackOptions.json)
        let dir = try BenchDirectory(stackOptions.dir, name: "footprint")
        defer { dir.remove() }
        if binaryOnly {
            let binDir = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent().path
            reporter.emit(try Self.binarySize(path: BenchStack.deviceBinary(binDir: binDir), dir: dir.path))
            return
        }
        let stack = try await BenchStack.start(stackOptions, dir: dir.path, reporter: reporter)
        defer { stack.stop() }
        for row in try await Self.measure(stack: stack, dir: dir.path, seconds: seconds, backlog: backlog, reporter: reporter) {
            reporter.emit(row)
        }
    }

    struct Phase {
        var name: String
        var readingsPerSecond: Double
        var backlog: Int
    }

    /// The device binary's size as given and stripped (a copy is stripped: `strip -o`), how it
    /// links the Swift runtime (ldd) and whether ICU's data is in it, the mark of full
    /// Foundation (its name `icudt…` stays in a stripped binary too).
    static func binarySize(path: String, dir: String) throws -> [String: Any] {
        let stripped = "\(dir)/fieldlog-device.stripped"
        defer { try? FileManager.default.removeItem(atPath: stripped) }
        let strip = try Tool.status("strip", ["-o", stripped, path])
        guard strip.status == 0 else { throw BenchError("strip -o \(stripped) \(path) failed: \(strip.stderr)") }
        func bytes(_ p: String) throws -> Int {
            guard let n = try FileManager.default.attributesOfItem(atPath: p)[.size] as? Int else { throw BenchError("no size for \(p)") }
            return n
        }
        let strippedBytes = try bytes(stripped)
        let ldd = try Tool.status("ldd", [path]).stdout
        let icu = try Tool.status("grep", ["-c", "-a", "-m", "1", "icudt[0-9][0-9]", path]).stdout
        let target = 25_000_000  // issue 19: at most 25 MB stripped (scripts/build-device checks the same)
        return [
            "benchmark": "footprint-binary", "path": path, "bytes": try bytes(path), "stripped_bytes": strippedBytes,
            "swift_runtime": ldd.contains("libswiftCore") ? "dynamic" : "static",
            "icu_data_linked": (Int(icu.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0) > 0,
            "target_stripped_bytes": target, "ratio_stripped_to_target": Double(strippedBytes) / Double(target),
        ]
    }

    static func measure(stack: BenchStack, dir: String, seconds window: Double, backlog: Int, reporter: Reporter) async throws -> [[String: Any]] {
        var rows: [[String: Any]] = [try binarySize(path: stack.deviceBinary, dir: dir)]
        let tag = "\(getpid())"
        let database = "bench_footprint_\(tag)"
        try await stack.freshDatabase(database)
        return try await withCleanups { cleanups in
            cleanups.add { await stack.dropDatabase(database) }
            let ingest = try stack.startBackend(database: database, dir: dir, index: 9)
            cleanups.add { await ingest.stop() }
            let phases = [Phase(name: "idle", readingsPerSecond: 0, backlog: 0),
                          Phase(name: "1-per-s", readingsPerSecond: 1, backlog: 0),
                          Phase(name: "100-per-s", readingsPerSecond: 100, backlog: 0),
                          Phase(name: "draining", readingsPerSecond: 0, backlog: backlog)]
            var users: [(String, String)] = []
            for i in phases.indices { users.append(("bench-fp\(i)-\(tag)", "pw-\(UInt64.random(in: 0...UInt64.max))")) }
            try stack.addMQTTUsers(users)
            for (i, phase) in phases.enumerated() {
                let (name, password) = users[i]
                let logPath = "\(dir)/footprint-\(phase.name).sqlite3"
                if phase.backlog > 0 {
                    reporter.note("footprint: filling a backlog of \(phase.backlog)")
                    _ = try await DrainBench.fill(path: logPath, device: try DeviceID(name), readings: phase.backlog, sensors: 1)
                }
                let env = stack.deviceEnvironment(device: name, password: password, logPath: logPath, extra: [
                    "REDIS_ENABLE": "true", "REDIS_DB": String(i + 1),
                    "MEASUREMENT_ENABLED": phase.readingsPerSecond > 0 ? "true" : "false",
                    "INTERVAL_SECONDS": phase.readingsPerSecond > 0 ? String(1 / phase.readingsPerSecond) : "2",
                    "LOG_DURABILITY": "full"])
                reporter.note("footprint: \(phase.name) for \(window) s")
                let device = try stack.startDevice(["run"], environment: env, logPath: "\(dir)/footprint-\(phase.name).log")
                try await Task.sleep(for: .seconds(3))
                guard device.isRunning else { throw BenchError("fieldlog-device run exited: \(device.tail())") }
                let before = try ProcSample.read(pid: device.pid)
                let pointersBefore = try readLogPointers(logPath)
                let start = ContinuousClock.now
                var maxRSS = before.rssKiB
                var drainedAt: Double?
                while secondsSince(start) < window {
                    try await Task.sleep(for: .milliseconds(250))
                    guard device.isRunning else { throw BenchError("fieldlog-device run exited: \(device.tail())") }
                    maxRSS = max(maxRSS, try ProcSample.read(pid: device.pid).rssKiB)
                    if phase.backlog > 0 && drainedAt == nil {
                        let p = try readLogPointers(logPath)
                        if p.acked >= p.head { drainedAt = secondsSince(start); break }
                    }
                }
                let elapsed = secondsSince(start)
                let after = try ProcSample.read(pid: device.pid)
                let hwm = (try? String(contentsOfFile: "/proc/\(device.pid)/status", encoding: .utf8))?
                    .split(separator: "\n").first { $0.hasPrefix("VmHWM:") }
                    .flatMap { Int($0.split(separator: " ").dropFirst().first ?? "") } ?? 0
                let pointersAfter = try readLogPointers(logPath)
                await device.stop()
                var row: [String: Any] = [
                    "benchmark": "footprint-\(phase.name)", "seconds": elapsed,
                    "rss_kib": after.rssKiB, "rss_max_sampled_kib": maxRSS, "rss_peak_vmhwm_kib": hwm,
                    "cpu_percent": (after.cpuSeconds - before.cpuSeconds) / elapsed * 100,
                    "readings_appended": pointersAfter.head - pointersBefore.head,
                    "readings_acked": pointersAfter.acked - pointersBefore.acked,
                    "target_rss_kib": 30 * 1024, "ratio_rss_to_target": Double(after.rssKiB) / Double(30 * 1024),
                ]
                if phase.name == "idle" { row["target_cpu_percent"] = 1.0 }
                if phase.backlog > 0 { row["backlog"] = phase.backlog; row["drained"] = drainedAt != nil }
                rows.append(row)
            }
            await ingest.stop()
            return rows
        }
    }
}
