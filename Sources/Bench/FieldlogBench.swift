// fieldlog-bench: benchmarks (not tests). Build with `swift build -c release --product fieldlog-bench`.
// Each benchmark is a subcommand; others add theirs to `subcommands`.
import ArgumentParser
import CSQLite
import FieldlogCore
import Foundation
@_spi(Testing) import Log
import Logging

@main
struct FieldlogBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fieldlog-bench",
        abstract: "Fieldlog benchmarks. Run a release build on the target machine.",
        subcommands: [AppendBench.self, DrainBench.self, FleetBench.self, FootprintBench.self, EncodingBench.self, WebBench.self, QueryBench.self, AllBench.self,
                      ReferenceIngest.self, ReferencePublish.self])
}

/// Latency samples of one run, in nanoseconds.
struct LatencyStats {
    var samples: [Int64]
    init(_ samples: [Int64]) { self.samples = samples.sorted() }
    func percentile(_ p: Double) -> Double {
        guard !samples.isEmpty else { return 0 }
        let i = min(samples.count - 1, Int((Double(samples.count) * p).rounded(.up)) - 1)
        return Double(samples[max(0, i)]) / 1e6
    }
    var maxMs: Double { Double(samples.last ?? 0) / 1e6 }
}

struct AppendBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "append",
        abstract: "Durable appends/s and latency of DeviceLog (full, normal × 1/8/64 appenders) next to the raw SQLite ceiling.",
        discussion: """
            Appenders run as the device's sampler runs them, on the log's own executor (`append-<durability>-<n>`), and \
            as plain tasks on Swift's pool (`append-<durability>-<n>-pool`). CPU µs and context switches per append \
            (getrusage of the whole process over the window) are printed next to the raw ceiling's: unlike appends/s \
            they hardly move when other work shares the machine.
            """)

    @Option(help: "Seconds per measured configuration.")
    var seconds: Double = 2

    @Option(help: "Directory for the benchmark files (on the disk you care about; default: a new temporary directory).")
    var dir: String?

    @Option(parsing: .upToNextOption, help: "Numbers of concurrent appenders.")
    var concurrency: [Int] = [1, 8, 64]

    @Option(parsing: .upToNextOption, help: "Durabilities to measure (full, normal).")
    var durability: [String] = ["full", "normal"]

    @Option(parsing: .upToNextOption, help: "Where the appenders run: log (the log's executor, as the device does), pool (Swift's pool).")
    var appenders: [String] = ["log", "pool"]

    @Flag(help: "Print one JSON object per benchmark instead of a table.")
    var json = false

    func validate() throws {
        guard seconds > 0, seconds <= 600 else { throw ValidationError("--seconds must be in (0, 600]") }
        guard concurrency.allSatisfy({ (1...4096).contains($0) }) else { throw ValidationError("--concurrency values must be 1…4096") }
        for d in durability where Durability(rawValue: d) == nil { throw ValidationError("unknown durability \(d.debugDescription)") }
        for a in appenders where !["log", "pool"].contains(a) { throw ValidationError("--appenders takes log or pool, got \(a.debugDescription)") }
    }

    static let reading = try! SensorValues(["temperature": .number(21.375), "humidity": .number(48), "pressure": .number(1013.25), "random": .number(0.734)])

    func run() async throws {
        let base = dir ?? (NSTemporaryDirectory() + "/fieldlog-bench-\(getpid())")
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        defer { if dir == nil { try? FileManager.default.removeItem(atPath: base) } }
        var rows: [[String: Any]] = []
        if !json {
            print("fieldlog-bench append: \(seconds) s per configuration, files in \(base), body \(RecordEncoding.body(Self.reading).count) bytes")
            print(row(["benchmark", "appends/s", "p50 ms", "p99 ms", "max ms", "ceiling/s", "ratio", "cpu µs", "csw"]))
        }
        for d in durability.compactMap(Durability.init(rawValue:)) {
            let rawSingle = try rawCeiling(path: base + "/raw-\(d)-1.db", durability: d, batch: 1)
            emit(rawRow("raw-\(d)-1-per-commit", d, 1, rawSingle), &rows)
            for c in concurrency {
                // The disk's fsync time drifts (other work on the machine): measure the ceiling
                // right before and right after, and compare with their mean.
                let rawBefore = c == 1 ? rawSingle : try rawCeiling(path: base + "/raw-\(d)-\(c)-a.db", durability: d, batch: c)
                if c != 1 { emit(rawRow("raw-\(d)-batch-\(c)", d, c, rawBefore), &rows) }
                var measured: [(String, Measured)] = []
                for placement in appenders {
                    let m = try await measure(path: base + "/log-\(d)-\(c)-\(placement).db", durability: d, concurrency: c, onLogExecutor: placement == "log")
                    measured.append((placement, m))
                }
                let rawAfter = try rawCeiling(path: base + "/raw-\(d)-\(c)-b.db", durability: d, batch: c)
                emit(rawRow("raw-\(d)-batch-\(c)-after", d, c, rawAfter), &rows)
                let raw = (rawBefore.rate + rawAfter.rate) / 2
                let rawCPU = (rawBefore.cpuMicroseconds + rawAfter.cpuMicroseconds) / 2
                for (placement, m) in measured {
                    emit(["benchmark": "append-\(d)-\(c)" + (placement == "log" ? "" : "-pool"), "durability": d.rawValue, "concurrency": c,
                          "appenders": placement == "log" ? "log executor" : "swift pool", "appends_per_s": m.rate,
                          "p50_ms": m.latency.percentile(0.5), "p99_ms": m.latency.percentile(0.99), "max_ms": m.latency.maxMs,
                          "ceiling_per_s": raw, "ratio_to_ceiling": m.rate / raw, "appends_per_commit": m.appendsPerCommit,
                          "cpu_us_per_append": m.usage.cpuMicroseconds, "context_switches_per_append": m.usage.contextSwitches,
                          "ceiling_cpu_us_per_append": rawCPU, "cpu_ratio_ceiling_to_log": rawCPU / m.usage.cpuMicroseconds], &rows)
                }
            }
            let rawBig = try rawCeiling(path: base + "/raw-\(d)-1000.db", durability: d, batch: 1000)
            emit(rawRow("raw-\(d)-batch-1000", d, 1000, rawBig), &rows)
        }
    }

    func rawRow(_ name: String, _ d: Durability, _ batch: Int, _ raw: RawResult) -> [String: Any] {
        ["benchmark": name, "durability": d.rawValue, "batch": batch, "appends_per_s": raw.rate,
         "cpu_us_per_append": raw.cpuMicroseconds, "context_switches_per_append": raw.contextSwitches]
    }

    func row(_ cells: [String]) -> String {
        let widths = [26, 11, 9, 9, 9, 11, 7, 7, 6]
        return zip(cells, widths).enumerated().map { i, cw in
            let (cell, width) = cw
            let pad = String(repeating: " ", count: max(0, width - cell.count))
            return i == 0 ? cell + pad : pad + cell
        }.joined(separator: " ")
    }

    func emit(_ row: [String: Any], _ rows: inout [[String: Any]]) {
        rows.append(row)
        if json {
            let data = try! JSONSerialization.data(withJSONObject: row, options: [.sortedKeys])
            FileHandle.standardOutput.write(Data((String(decoding: data, as: UTF8.self) + "\n").utf8))
        } else {
            func f(_ k: String, _ fmt: String) -> String { (row[k] as? Double).map { String(format: fmt, $0) } ?? "" }
            print(self.row([row["benchmark"] as! String, f("appends_per_s", "%.0f"), f("p50_ms", "%.3f"), f("p99_ms", "%.3f"),
                            f("max_ms", "%.3f"), f("ceiling_per_s", "%.0f"), f("ratio_to_ceiling", "%.2f"),
                            f("cpu_us_per_append", "%.2f"), f("context_switches_per_append", "%.2f")])
                  + ((row["appends_per_commit"] as? Double).map { String(format: "  (%.1f appends/commit)", $0) } ?? ""))
        }
    }

    static func monotonicNs() -> Int64 {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Int64(t.tv_sec) * 1_000_000_000 + Int64(t.tv_nsec)
    }

    /// Every configuration starts from an empty file: a `--dir` used before still holds the
    /// last run's files (the raw ceiling's inserts would collide with its rows).
    static func removeLeftovers(_ path: String) throws {
        for file in [path, path + "-wal", path + "-shm"] where FileManager.default.fileExists(atPath: file) {
            try FileManager.default.removeItem(atPath: file)
        }
    }

    /// What one configuration measured.
    struct Measured {
        var rate: Double
        var latency: LatencyStats
        var appendsPerCommit: Double
        var usage: PerAppendUsage
    }

    /// CPU time and context switches of the whole process (every thread), per append.
    struct PerAppendUsage {
        var cpuMicroseconds: Double
        var contextSwitches: Double

        static func sample() -> (cpu: Double, switches: Double) {
            var u = rusage()
            getrusage(RUSAGE_SELF.rawValue, &u)
            let cpu = Double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1e6 + Double(u.ru_utime.tv_usec + u.ru_stime.tv_usec)
            return (cpu, Double(u.ru_nvcsw + u.ru_nivcsw))
        }

        init(from before: (cpu: Double, switches: Double), appends: Int) {
            let after = Self.sample()
            cpuMicroseconds = (after.cpu - before.cpu) / Double(max(1, appends))
            contextSwitches = (after.switches - before.switches) / Double(max(1, appends))
        }
    }

    struct RawResult {
        var rate: Double
        var cpuMicroseconds: Double
        var contextSwitches: Double
    }

    /// DeviceLog appends from `concurrency` tasks for `seconds`, on the log's executor or on Swift's pool.
    func measure(path: String, durability: Durability, concurrency: Int, onLogExecutor: Bool) async throws -> Measured {
        var logger = Logger(label: "bench")
        logger.logLevel = .error
        try Self.removeLeftovers(path)
        let log = try await DeviceLog.open(path: path, device: try DeviceID("bench"), configuration: LogConfiguration(durability: durability), logger: logger)
        // Warm up (file growth, caches).
        for _ in 0..<100 { _ = try await log.append(Self.reading) }
        let clock = ContinuousClock()
        let start = clock.now
        let commitsBefore = try await log.head()
        let statsBefore = log.statistics
        let usageBefore = PerAppendUsage.sample()
        let perTask = try await withThrowingTaskGroup(of: [Int64].self) { group in
            for _ in 0..<concurrency {
                group.addTask(executorPreference: onLogExecutor ? log.executor : nil) {
                    var latencies: [Int64] = []
                    latencies.reserveCapacity(1 << 16)
                    let ts = DeviceTimestamp(unixMilliseconds: 1_700_000_000_000)
                    // Nanoseconds straight from the clock: Duration arithmetic per append was
                    // measurable next to a 2 µs append (the raw ceiling measures no latency).
                    let endNs = Self.monotonicNs() + Int64(seconds * 1e9)
                    var t0 = Self.monotonicNs()
                    while t0 < endNs {
                        _ = try await log.append(Self.reading, timestamp: ts)
                        let t1 = Self.monotonicNs()
                        latencies.append(t1 - t0)
                        t0 = t1
                    }
                    return latencies
                }
            }
            var all: [[Int64]] = []
            for try await l in group { all.append(l) }
            return all
        }
        let elapsedS = (clock.now - start).inSeconds
        let samples = perTask.flatMap { $0 }
        let usage = PerAppendUsage(from: usageBefore, appends: samples.count)
        let head = try await log.head()
        precondition(head.rawValue - commitsBefore.rawValue == UInt64(samples.count), "every append accounted for")
        let commits = max(1, log.statistics.commits - statsBefore.commits)
        await log.close()
        return Measured(rate: Double(samples.count) / elapsedS, latency: LatencyStats(samples),
                        appendsPerCommit: Double(samples.count) / Double(commits), usage: usage)
    }

    /// Plain C API: the same rows (body + checksum) into the same table shape, WAL with the
    /// same synchronous setting, `batch` rows per transaction, for `seconds`.
    func rawCeiling(path: String, durability: Durability, batch: Int) throws -> RawResult {
        try Self.removeLeftovers(path)
        var db: OpaquePointer?
        guard sqlite3_open(path, &db) == SQLITE_OK else { throw ValidationError("cannot open \(path)") }
        defer { sqlite3_close(db) }
        func exec(_ sql: String) throws {
            guard sqlite3_exec(db, sql, nil, nil, nil) == SQLITE_OK else { throw ValidationError("\(sql): \(String(cString: sqlite3_errmsg(db)))") }
        }
        try exec("PRAGMA journal_mode=WAL")
        try exec("PRAGMA synchronous=\(durability == .full ? "FULL" : "NORMAL")")
        try exec("CREATE TABLE IF NOT EXISTS records(seq INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, unsynced INTEGER NOT NULL, body BLOB NOT NULL, crc INTEGER NOT NULL)")
        var stmt: OpaquePointer?
        guard sqlite3_prepare_v2(db, "INSERT INTO records(seq, ts_ms, unsynced, body, crc) VALUES (?, ?, 0, ?, ?)", -1, &stmt, nil) == SQLITE_OK else {
            throw ValidationError("prepare: \(String(cString: sqlite3_errmsg(db)))")
        }
        defer { sqlite3_finalize(stmt) }
        let body = RecordEncoding.body(Self.reading)
        let clock = ContinuousClock()
        let start = clock.now
        let end = start + .milliseconds(Int64(seconds * 1000))
        let usageBefore = PerAppendUsage.sample()
        var seq: Int64 = 0
        while clock.now < end {
            try exec("BEGIN IMMEDIATE")
            for _ in 0..<batch {
                seq += 1
                let crc = RecordEncoding.checksum(seq: seq, timestampMs: 1_700_000_000_000, unsynced: false, body: body)
                sqlite3_bind_int64(stmt, 1, seq)
                sqlite3_bind_int64(stmt, 2, 1_700_000_000_000)
                _ = body.withUnsafeBytes { sqlite3_bind_blob(stmt, 3, $0.baseAddress, Int32($0.count), fieldlog_sqlite_transient()) }
                sqlite3_bind_int64(stmt, 4, Int64(crc))
                guard sqlite3_step(stmt) == SQLITE_DONE else { throw ValidationError("insert: \(String(cString: sqlite3_errmsg(db)))") }
                sqlite3_reset(stmt)
            }
            try exec("COMMIT")
        }
        let elapsed = (clock.now - start).inSeconds
        let usage = PerAppendUsage(from: usageBefore, appends: Int(seq))
        return RawResult(rate: Double(seq) / elapsed,
                         cpuMicroseconds: usage.cpuMicroseconds, contextSwitches: usage.contextSwitches)
    }
}
