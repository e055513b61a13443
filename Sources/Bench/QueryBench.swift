// queries: how fast the product's read queries answer on a large database (issue 17: "queries
// stay fast" across a storage-layout change). The database is filled through the real ingest
// (devices' batches over MQTT, acked after commit), so it holds whatever layout the code under
// test writes, and the same benchmark measures any two versions. Then, each repeated:
//   - one sensor of one device over 24 h (the query docs/backend.md gives for it);
//   - the web admin's device page (an HTTP GET, signed in, as a browser loads it);
//   - every panel and variable query of the Grafana dashboard (deploy/grafana), macros expanded
//     for a 24 h range and one device, as Grafana's MySQL data source does;
//   - `fieldlog-backend audit` over the whole database.
import ArgumentParser
import FieldlogCore
import Threading
import Foundation
import Logging
import MariaDB
import MQTT
import Processes
import Sync
import Synchronization

struct QueryBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "queries",
        abstract: "Read queries (sensor over 24 h, device page, Grafana panels, audit) on a database filled through the ingest.")

    @OptionGroup var stackOptions: StackOptions

    @Option(help: "Devices.") var devices = 100
    @Option(help: "Readings per device (one a second, ending now).") var readingsPerDevice = 100_000
    @Option(help: "Sensors per reading.") var sensors = 2
    @Option(help: "Repetitions of each query.") var requests = 20
    @Option(help: "Reuse this database if it is already filled (skips the fill).") var database: String?

    func run() async throws {
        let reporter = Reporter(json: stackOptions.json)
        let dir = try BenchDirectory(stackOptions.dir, name: "queries")
        defer { dir.remove() }
        let stack = try await BenchStack.start(stackOptions, dir: dir.path, reporter: reporter)
        defer { stack.stop() }
        for row in try await Self.measure(stack: stack, dir: dir.path, devices: devices, perDevice: readingsPerDevice, sensors: sensors,
                                          requests: requests, reuse: database, reporter: reporter) {
            reporter.emit(row)
        }
    }

    static func measure(stack: BenchStack, dir: String, devices: Int, perDevice: Int, sensors: Int, requests: Int, reuse: String?,
                        reporter: Reporter) async throws -> [[String: Any]] {
        let database = reuse ?? "bench_queries_\(getpid())"
        let endMs = Int64(Date().timeIntervalSince1970 * 1000) / 1000 * 1000
        let c = try await MariaDBConnection.connect(configuration: stack.mariaDB(database: nil), logger: quietLogger("bench.sql"))
        let exists = try await c.query("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '\(database)'").rows.first?.first?.int64 == 1
        await c.close()
        var rows: [[String: Any]] = []
        if !(reuse != nil && exists) {
            try await stack.freshDatabase(database)
            try Tool.run(stack.binDir + "/fieldlog-backend", ["migrate"], environment: stack.backendEnvironment(database: database))
            let start = ContinuousClock.now
            try await fill(stack: stack, dir: dir, database: database, devices: devices, perDevice: perDevice, sensors: sensors,
                           endMs: endMs, reporter: reporter)
            let seconds = secondsSince(start)
            rows.append(["benchmark": "queries-fill", "readings": devices * perDevice, "seconds": seconds,
                         "readings_per_s": Double(devices * perDevice) / seconds])
        }
        let db = try await MariaDBConnection.connect(configuration: stack.mariaDB(database: database), logger: quietLogger("bench.sql"))
        return try await withCleanups { cleanups in
            cleanups.add { await db.close() }
            try await db.query("SET time_zone = '+00:00'")
            let stored = try await db.query("SELECT COUNT(*) FROM readings").rows.first?.first?.int64 ?? 0
            let last = try await db.query("SELECT MAX(device_time) FROM readings").rows.first?.first?.string ?? ""
            reporter.note("queries: \(stored) readings in \(database), newest \(last)")
            let lastMs = try await db.query("SELECT CAST(UNIX_TIMESTAMP(MAX(device_time)) * 1000 AS SIGNED) FROM readings").rows.first?.first?.int64 ?? endMs
            let fromMs = lastMs - 86_400_000
            let device = "bench-q-\(devices / 2)"
            func sqlTime(_ ms: Int64) -> String { SQLDateTime.format(unixMilliseconds: ms)! }

            // 1. One sensor of one device over 24 h, as docs/backend.md writes it: the value as
            // MariaDB returns it (text), and as a DOUBLE (what Grafana's MySQL data source needs).
            for (name, value) in [("queries-sensor-24h", "JSON_VALUE(vals, '$.temp')"),
                                  ("queries-sensor-24h-double", "CAST(JSON_VALUE(vals, '$.temp') AS DOUBLE)")] {
                var samples: [Int64] = []
                var count = 0
                for k in 0..<requests {
                    let d = "bench-q-\(k % devices)"
                    let t = ContinuousClock.now
                    let r = try await db.execute("""
                        SELECT device_time, \(value) AS temp FROM readings
                         WHERE device_id = ? AND device_time BETWEEN ? AND ? ORDER BY device_time
                        """, [.string(d), .string(sqlTime(fromMs)), .string(sqlTime(lastMs))])
                    samples.append(nanoseconds(ContinuousClock.now - t))
                    count = r.rows.count
                }
                let s = LatencyStats(samples)
                rows.append(["benchmark": name, "rows": count, "p50_ms": s.percentile(0.5), "p90_ms": s.percentile(0.9), "readings": stored])
            }

            // 2. Grafana: every panel and variable query, one device, 24 h.
            for (title, sql) in try grafanaQueries(repo: stack.repo, device: device, fromSeconds: fromMs / 1000, toSeconds: lastMs / 1000) {
                var g: [Int64] = []
                var n = 0
                for _ in 0..<max(3, requests / 4) {
                    let t = ContinuousClock.now
                    n = try await db.query(sql).rows.count
                    g.append(nanoseconds(ContinuousClock.now - t))
                }
                let gs = LatencyStats(g)
                rows.append(["benchmark": "queries-grafana", "panel": title, "rows": n, "p50_ms": gs.percentile(0.5), "p90_ms": gs.percentile(0.9)])
            }

            // 3. The web admin's device page.
            rows.append(try await devicePage(stack: stack, dir: dir, database: database, device: device, requests: requests))

            // 4. The audit.
            var a: [Int64] = []
            for _ in 0..<3 {
                let t = ContinuousClock.now
                _ = try? Tool.run(stack.binDir + "/fieldlog-backend", ["audit"], environment: stack.backendEnvironment(database: database))
                a.append(nanoseconds(ContinuousClock.now - t))
            }
            let aus = LatencyStats(a)
            rows.append(["benchmark": "queries-audit", "p50_ms": aus.percentile(0.5), "max_ms": aus.maxMs, "readings": stored])
            return rows
        }
    }

    static func nanoseconds(_ d: Duration) -> Int64 { d.inNanoseconds }

    /// Publishes every device's readings through the broker to a running ingest, a window of
    /// batches per device, and waits for their acks.
    static func fill(stack: BenchStack, dir: String, database: String, devices: Int, perDevice: Int, sensors: Int, endMs: Int64,
                     reporter: Reporter) async throws {
        let names = (0..<devices).map { "bench-q-\($0)" }
        let password = "pw-\(UInt64.random(in: 0...UInt64.max))"
        try stack.addMQTTUsers(names.map { ($0, password) })
        let ingest = try stack.startBackend(database: database, dir: dir)
        try await withCleanups { cleanups in
            cleanups.add { await ingest.stop() }
            try await Task.sleep(for: .seconds(1))
            let batch = 500, window = 8
            reporter.note("queries: filling \(devices) × \(perDevice) readings through the ingest")
            let progress = Counter()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for name in names {
                    group.addTask {
                        let device = try DeviceID(name)
                        let epoch = Epoch.random()
                        let client = try MQTTClient(configuration: MQTTConfiguration(host: "127.0.0.1", port: stack.mqttPort, clientID: name,
                                                                                     username: name, password: password), logger: quietLogger("bench.mqtt"))
                        try await client.connect()
                        try await withCleanups { cleanups in
                            cleanups.add { await client.disconnect() }
                            let topics = TopicTemplates.defaults
                            try await client.subscribe(topics.ack.topic(device: device), qos: .atLeastOnce)
                            let acks = client.messages
                            var next: UInt64 = 1, acked: UInt64 = 0, inFlight = 0
                            var iterator = acks.makeAsyncIterator()
                            let total = UInt64(perDevice)
                            let startMs = endMs - Int64(perDevice) * 1000
                            while acked < total {
                                while inFlight < window && next <= total {
                                    let last = min(total, next + UInt64(batch) - 1)
                                    let records = (next...last).map { s in
                                        LogRecord(sequence: SequenceNumber(s), timestamp: DeviceTimestamp(unixMilliseconds: startMs + Int64(s) * 1000),
                                                  values: benchQueryReading(sensors: sensors, seq: s))
                                    }
                                    let b = Batch(device: device, epoch: epoch, range: SequenceRange(checked: SequenceNumber(next), SequenceNumber(last)), records: records)
                                    try await client.publish(topics.batch.topic(device: device), payload: SyncCodec.encode(b), qos: .atLeastOnce)
                                    next = last + 1
                                    inFlight += 1
                                }
                                guard let m = await iterator.next() else { throw BenchError("\(name): the broker connection ended") }
                                guard let ack = try? SyncCodec.decodeAck(m.payload), ack.epoch == epoch else { continue }
                                if ack.stored != nil { inFlight = max(0, inFlight - 1) }
                                if ack.through.rawValue > acked {
                                    progress.add(Int(ack.through.rawValue - acked))
                                    acked = ack.through.rawValue
                                }
                            }
                        }
                    }
                }
                // Progress every 15 s while the fill runs: a child task, cancelled when the fill ended.
                try await withThrowingTaskGroup(of: Void.self) { progressGroup in
                    progressGroup.addTask {
                        while true {
                            try await Task.sleep(for: .seconds(15))
                            reporter.note("queries: \(progress.value) of \(devices * perDevice) stored")
                        }
                    }
                    try await group.waitForAll()
                    progressGroup.cancelAll()
                }
            }
        }
    }

    /// The Grafana dashboard's queries, macros and variables expanded (the data source's rules).
    static func grafanaQueries(repo: String, device: String, fromSeconds: Int64, toSeconds: Int64) throws -> [(String, String)] {
        let url = URL(fileURLWithPath: repo + "/deploy/grafana/dashboards/fieldlog-readings.json")
        guard let json = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any],
              let panels = json["panels"] as? [[String: Any]] else { throw BenchError("cannot read the Grafana dashboard") }
        var out: [(String, String)] = []
        let interval = max(60, (toSeconds - fromSeconds) / 1000)
        func expand(_ sql: String) throws -> String {
            var s = sql.replacingOccurrences(of: "$__interval", with: "'\(interval)s'")
            let group = try NSRegularExpression(pattern: #"\$__timeGroupAlias\(([^,()]+),\s*'(\d+)s'\)"#)
            s = group.stringByReplacingMatches(in: s, range: NSRange(s.startIndex..., in: s),
                                               withTemplate: #"cast(cast(UNIX_TIMESTAMP($1)/($2) as signed)*$2 as signed) AS "time""#)
            let filter = try NSRegularExpression(pattern: #"\$__timeFilter\(([^()]+)\)"#)
            s = filter.stringByReplacingMatches(in: s, range: NSRange(s.startIndex..., in: s),
                                                withTemplate: "$1 BETWEEN FROM_UNIXTIME(\(fromSeconds)) AND FROM_UNIXTIME(\(toSeconds))")
            s = s.replacingOccurrences(of: "$device", with: "'\(device)'").replacingOccurrences(of: "$sensor", with: "'temp'")
            return s
        }
        for p in panels {
            guard let sql = (p["targets"] as? [[String: Any]])?.first?["rawSql"] as? String else { continue }
            out.append((p["title"] as? String ?? "?", try expand(sql)))
        }
        if let list = (json["templating"] as? [String: Any])?["list"] as? [[String: Any]] {
            for v in list { if let q = v["query"] as? String, q.uppercased().hasPrefix("SELECT") { out.append(("variable " + (v["name"] as? String ?? "?"), try expand(q))) } }
        }
        return out
    }

    static func devicePage(stack: BenchStack, dir: String, database: String, device: String, requests: Int) async throws -> [String: Any] {
        var env = stack.backendEnvironment(database: database)
        env["FIELDLOG_WEB_BCRYPT_COST"] = "4"
        let password = "bench password \(UInt32.random(in: 0...UInt32.max))"
        _ = try? Tool.run(stack.binDir + "/fieldlog-backend", ["user", "add", "queries", "--role", "viewer"], environment: env, input: password + "\n")
        _ = try? Tool.run(stack.binDir + "/fieldlog-backend", ["user", "passwd", "queries"], environment: env, input: password + "\n")
        return try await withCleanups { cleanups in
            let web = try await SignedInWeb.start(binDir: stack.binDir, environment: env, log: "\(dir)/web-queries.log",
                                                  user: "queries", password: password, cleanups: cleanups)
            let (client, cookie) = (web.client, web.cookie)
            let path = "/devices/\(device)"
            _ = try client.request("GET", path, headers: ["Cookie": cookie])
            var complete: [Int64] = []
            var bytes = 0
            for _ in 0..<requests {
                let r = try client.request("GET", path, headers: ["Cookie": cookie])
                guard r.status == 200 else { throw BenchError("\(path): \(r.status) \(r.body.prefix(300))") }
                complete.append(r.completeNs)
                bytes = r.body.utf8.count
            }
            let s = LatencyStats(complete)
            return ["benchmark": "queries-device-page", "p50_ms": s.percentile(0.5), "p90_ms": s.percentile(0.9), "page_bytes": bytes]
        }
    }
}

/// A bench reading for the query benchmark: `temp` and `hum` (and more sensors), smooth values.
func benchQueryReading(sensors: Int, seq: UInt64) -> SensorValues {
    var values: [String: SensorValue] = ["temp": .number(20 + Double(seq % 600) / 60)]
    if sensors > 1 { values["hum"] = .number(40 + Double(seq % 300) / 30) }
    for i in 2..<max(2, sensors) { values["s\(i)"] = .number(Double(i) + Double(seq % 97)) }
    return try! SensorValues(values)
}

/// A counter shared by the publishing tasks.
final class Counter: Sendable {
    private let count = Atomic<Int>(0)
    func add(_ n: Int) { count.add(n, ordering: .relaxed) }
    var value: Int { count.load(ordering: .relaxed) }
}
