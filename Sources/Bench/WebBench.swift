// web: the fleet page of the web admin with a large fleet in the database.
//
// A run: a fresh database (`fieldlog-backend migrate`) filled with N devices as the ingest
// leaves them — a status row each (a quarter offline, a tenth silent), an epoch, its
// `batch_ranges` (a compacted prefix, a fifth with a gap in it, then 0…127 rows of batches not
// yet compacted: ~64 per device) and dead letters for some — and a
// viewer made with `fieldlog-backend user add`. Then the real `fieldlog-backend web`, signed in
// over its JSON API, and a plain HTTP/1.1 client that measures the time to the first byte of
// the answer (and to its last) for the fleet page: the first page, a filter, a search, a sort
// and a deep page. Twice: with the fleet snapshot shared for its default 10 s (what users get:
// a background read every 10 s while someone looks, every request filters a snapshot in
// memory), and with
// FIELDLOG_WEB_FLEET_CACHE_SECONDS=0 (every request reads the whole fleet from MariaDB: the
// cost of that read, which the first request after a quiet spell pays).
import ArgumentParser
import FieldlogCore
import Threading
import Foundation
import Logging
import MariaDB
import Processes

struct WebBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "web",
        abstract: "Time to first byte of the web admin's fleet page with N devices in the database (real fieldlog-backend web).")

    @OptionGroup var stackOptions: StackOptions

    @Option(help: "Devices in the database.")
    var devices: Int = 10_000

    @Option(help: "Requests measured per page and configuration.")
    var requests: Int = 30

    func validate() throws {
        guard (1...200_000).contains(devices) else { throw ValidationError("--devices must be 1…200000") }
        guard (1...10_000).contains(requests) else { throw ValidationError("--requests must be 1…10000") }
    }

    func run() async throws {
        let reporter = Reporter(json: stackOptions.json)
        let dir = try BenchDirectory(stackOptions.dir, name: "web")
        defer { dir.remove() }
        let stack = try await BenchStack.start(stackOptions, dir: dir.path, reporter: reporter)
        defer { stack.stop() }
        for row in try await Self.measure(stack: stack, dir: dir.path, devices: devices, requests: requests, reporter: reporter) {
            reporter.emit(row)
        }
    }

    static let pages: [(name: String, path: String)] = [
        ("first-page", "/"), ("filter-offline", "/?filter=offline"), ("search", "/?q=0042"),
        ("sort-backlog-desc", "/?sort=backlog&dir=desc"), ("page-100", "/?page=100"),
    ]

    static func measure(stack: BenchStack, dir: String, devices: Int, requests: Int, reporter: Reporter) async throws -> [[String: Any]] {
        let database = "bench_web_\(getpid())"
        try await stack.freshDatabase(database)
        return try await withCleanups { cleanups in
            cleanups.add { await stack.dropDatabase(database) }
            let fillStart = ContinuousClock.now
            try await fill(stack: stack, database: database, devices: devices)
            reporter.note("web: \(devices) devices (\(try await rangeRows(stack: stack, database: database)) batch_ranges rows) written in \(String(format: "%.1f", secondsSince(fillStart))) s")
            var env = stack.backendEnvironment(database: database)
            env["FIELDLOG_WEB_BCRYPT_COST"] = "4"
            let password = "bench password \(UInt32.random(in: 0...UInt32.max))"
            try Tool.run(stack.binDir + "/fieldlog-backend", ["user", "add", "bench", "--role", "viewer"], environment: env, input: password + "\n")

            var rows: [[String: Any]] = []
            for cacheSeconds in [10, 0] {
                var webEnv = env
                webEnv["FIELDLOG_WEB_FLEET_CACHE_SECONDS"] = String(cacheSeconds)
                let signedIn = try await SignedInWeb.start(binDir: stack.binDir, environment: webEnv, log: "\(dir)/web-\(cacheSeconds).log",
                                                           user: "bench", password: password, cleanups: cleanups)
                let (web, client, cookie) = (signedIn.process, signedIn.client, signedIn.cookie)
                // One unmeasured request: connections, prepared statements, the first snapshot.
                let warm = try client.request("GET", "/", headers: ["Cookie": cookie])
                guard warm.status == 200, warm.body.contains("devices") else { throw BenchError("the fleet page failed: \(warm.status) \(warm.body.prefix(300))") }
                let cpuBefore = (try? ProcSample.read(pid: web.pid))?.cpuSeconds ?? 0
                for page in pages {
                    var firstByte: [Int64] = [], complete: [Int64] = []
                    var bytes = 0
                    for _ in 0..<requests {
                        let r = try client.request("GET", page.path, headers: ["Cookie": cookie])
                        guard r.status == 200 else { throw BenchError("\(page.path): \(r.status) \(r.body.prefix(300))") }
                        firstByte.append(r.firstByteNs)
                        complete.append(r.completeNs)
                        bytes = r.body.utf8.count
                    }
                    let ttfb = LatencyStats(firstByte), total = LatencyStats(complete)
                    rows.append(["benchmark": "web-fleet-\(page.name)-cache-\(cacheSeconds)s", "devices": devices, "requests": requests,
                                 "fleet_cache_seconds": cacheSeconds, "ttfb_p50_ms": ttfb.percentile(0.5), "ttfb_p90_ms": ttfb.percentile(0.9),
                                 "ttfb_max_ms": ttfb.maxMs, "complete_p50_ms": total.percentile(0.5), "page_bytes": bytes])
                }
                let cpu = ((try? ProcSample.read(pid: web.pid))?.cpuSeconds ?? 0) - cpuBefore
                reporter.note("web: fleet cache \(cacheSeconds) s: \(String(format: "%.1f", cpu)) s CPU of fieldlog-backend web for \(pages.count * requests) pages")
                await web.stop()
            }
            return rows
        }
    }

    static func rangeRows(stack: BenchStack, database: String) async throws -> Int64 {
        let c = try await MariaDBConnection.connect(configuration: stack.mariaDB(database: database), logger: quietLogger("bench.sql"))
        return try await withCleanups { cleanups in
            cleanups.add { await c.close() }
            return try await c.query("SELECT COUNT(*) FROM batch_ranges").rows.first?.first?.int64 ?? 0
        }
    }

    /// Writes the fleet with multi-row inserts (what the ingest would have left).
    static func fill(stack: BenchStack, database: String, devices: Int) async throws {
        let c = try await MariaDBConnection.connect(configuration: stack.mariaDB(database: database), logger: quietLogger("bench.sql"))
        try await withCleanups { cleanups in
            cleanups.add { await c.close() }
            let nowMs = Int64(Date().timeIntervalSince1970 * 1000)
            func time(_ ms: Int64) -> MariaDBValue {
                let d = Date(timeIntervalSince1970: Double(ms) / 1000)
                let f = DateFormatter()
                f.locale = Locale(identifier: "en_US_POSIX")
                f.timeZone = TimeZone(identifier: "UTC")
                f.dateFormat = "yyyy-MM-dd HH:mm:ss.SSS"
                return .string(f.string(from: d))
            }
            let now = time(nowMs), old = time(nowMs - 3_600_000)
            var deviceRows: [[MariaDBValue]] = [], epochRows: [[MariaDBValue]] = [], rangeRows: [[MariaDBValue]] = [], deadRows: [[MariaDBValue]] = []
            for i in 0..<devices {
                let id = MariaDBValue.string("press-" + String(format: "%05d", i))
                let offline = i % 4 == 0, silent = i % 10 == 0
                let head = UInt64(5_000 + i % 300), acked = UInt64(5_000 - (i % 13 == 0 ? 40 : 0))
                let seen = silent ? old : now
                deviceRows.append([id, .string("fieldlog"), seen, .string(offline ? "offline" : "online"), .uint(UInt64(i + 1)), .uint(head), .uint(acked),
                                   .int(i % 6 == 0 ? 0 : 1), seen])
                epochRows.append([id, .uint(UInt64(i + 1)), seen, .uint(head)])
                // The ingest compacts an epoch's rows every 256 batches: between two compactions a
                // device has 0…255 rows of single batches after its compacted prefix (here 0…127 of
                // 5 records each, about 64 on average); a fifth have a gap of 10 in the prefix.
                let loose = UInt64((i * 37) % 128)
                let prefix = acked - loose * 5
                if i % 5 == 0 {
                    rangeRows.append([id, .uint(UInt64(i + 1)), .uint(1), .uint(prefix - 1_000), seen, .int(1)])
                    rangeRows.append([id, .uint(UInt64(i + 1)), .uint(prefix - 989), .uint(prefix), seen, .int(0)])
                } else {
                    rangeRows.append([id, .uint(UInt64(i + 1)), .uint(1), .uint(prefix), seen, .int(1)])
                }
                for k in 0..<loose { rangeRows.append([id, .uint(UInt64(i + 1)), .uint(prefix + 1 + k * 5), .uint(prefix + 5 + k * 5), seen, .int(0)]) }
                if i % 20 == 0 {
                    deadRows.append([now, .string("fieldlog/v1/devices/x/batch"), .string("malformed-json"), .string("unexpected end of input"), id,
                                     .uint(3), .bytes(Array("{\"v\":1,".utf8))])
                }
            }
            let (d, e, r, l) = (deviceRows, epochRows, rangeRows, deadRows)
            try await c.withSession { s in
                try s.insertRows("""
                    INSERT INTO devices (device_id, protocol, first_seen_at, status_state, status_epoch, status_head, status_acked, status_measuring, status_received_at)
                    """, rows: d)
                try s.insertRows("INSERT INTO epochs (device_id, epoch, first_seen_at, reported_head)", rows: e)
                try s.insertRows("INSERT INTO batch_ranges (device_id, epoch, first_seq, last_seq, stored_at, compacted)", rows: r)
                try s.insertRows("INSERT INTO dead_letters (received_at, topic, reason, detail, device_id, payload_bytes, payload_head)", rows: l)
            }
        }
    }
}

/// A blocking HTTP/1.1 client over a loopback socket: one connection per request
/// (`Connection: close`), timing the first byte of the answer and its end.
struct PlainHTTPClient {
    let port: Int

    struct Answer {
        var status: Int
        var headers: [(String, String)]
        var body: String
        var firstByteNs: Int64
        var completeNs: Int64
        func header(_ name: String) -> String? { headers.first { $0.0.lowercased() == name }?.1 }
    }

    func request(_ method: String, _ path: String, headers: [String: String] = [:], body: String? = nil) throws -> Answer {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw BenchError("socket failed") }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 60, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard connected == 0 else { throw BenchError("cannot connect to 127.0.0.1:\(port)") }
        var head = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nConnection: close\r\n"
        for (k, v) in headers { head += "\(k): \(v)\r\n" }
        if let body { head += "Content-Length: \(body.utf8.count)\r\n" }
        let out = Array((head + "\r\n" + (body ?? "")).utf8)
        let start = ContinuousClock.now
        var sent = 0
        while sent < out.count {
            let n = out[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { throw BenchError("send failed") }
            sent += n
        }
        var response: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        var first: ContinuousClock.Instant?
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { break }
            if first == nil { first = .now }
            response.append(contentsOf: buffer[0..<n])
        }
        let end = ContinuousClock.now
        func ns(_ d: Duration) -> Int64 { d.inNanoseconds }
        let text = String(decoding: response, as: UTF8.self)
        guard let split = text.range(of: "\r\n\r\n") else { throw BenchError("no HTTP answer from \(path)") }
        let lines = text[..<split.lowerBound].split(separator: "\r\n")
        let status = lines.first.flatMap { Int($0.split(separator: " ").dropFirst().first ?? "") } ?? 0
        let fields = lines.dropFirst().compactMap { line -> (String, String)? in
            guard let colon = line.firstIndex(of: ":") else { return nil }
            return (String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces))
        }
        var bodyText = String(text[split.upperBound...])
        if fields.contains(where: { $0.0.lowercased() == "transfer-encoding" && $0.1.lowercased().contains("chunked") }) {
            var decoded = "", rest = Substring(bodyText)
            while let line = rest.range(of: "\r\n"), let size = Int(rest[..<line.lowerBound].trimmingCharacters(in: .whitespaces), radix: 16), size > 0 {
                let chunk = rest[line.upperBound...].utf8.prefix(size)
                decoded += String(decoding: chunk, as: UTF8.self)
                rest = Substring(String(decoding: rest[line.upperBound...].utf8.dropFirst(size + 2), as: UTF8.self))
            }
            bodyText = decoded
        }
        return Answer(status: status, headers: fields, body: bodyText, firstByteNs: ns((first ?? end) - start), completeNs: ns(end - start))
    }
}
