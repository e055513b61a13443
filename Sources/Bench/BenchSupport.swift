// What the stack benchmarks share: a private service stack (or a given one), child processes
// of the real programs, the MariaDB/MQTT helpers and the JSON/table output.
//
// Theory of operation: a benchmark that needs services calls `BenchStack.start(options)`. With
// `--stack-env FILE` it uses that stack (it only creates its own databases and MQTT users in
// it); otherwise it picks free loopback ports, runs `scripts/stack up --dir <bench dir>/stack`
// and `scripts/stack down` at the end, so a run never touches anyone else's services. The real
// programs (`fieldlog-device`, `fieldlog-backend`) are started from the directory the bench
// binary lives in (one `swift build -c release` builds all three), with their output in the
// bench directory, and stopped by PID with SIGTERM (SIGKILL after a grace period).
import ArgumentParser
import FieldlogCore
import Foundation
import Logging
import MariaDB
import MQTT
import Processes
import Threading

/// Options every stack benchmark takes.
struct StackOptions: ParsableArguments {
    @Option(help: "Use the stack described by this stack.env (from `scripts/stack up`) instead of starting a private one.")
    var stackEnv: String?

    @Option(help: "Directory for the benchmark's files (default: a new temporary directory, removed at the end).")
    var dir: String?

    @Option(help: "Repository root (for scripts/stack); default: found from the bench binary or the current directory.")
    var repo: String?

    @Flag(help: "Print one JSON object per benchmark instead of a table.")
    var json = false

    @Option(help: "Run `fieldlog-backend ingest` under this command (profiling), e.g. \"valgrind --tool=callgrind\".")
    var ingestWrapper: String?

    @Option(help: "Run `fieldlog-device` under this command (profiling), e.g. \"valgrind --tool=callgrind\".")
    var deviceWrapper: String?
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// Seconds since `start` as a Double.
func secondsSince(_ start: ContinuousClock.Instant) -> Double {
    (ContinuousClock.now - start).inSeconds
}

func quietLogger(_ label: String) -> Logger {
    var l = Logger(label: label)
    l.logLevel = .error
    return l
}

/// Prints a result row: JSON (one object per line) or a readable line.
struct Reporter: Sendable {
    let json: Bool

    func emit(_ row: [String: Any]) {
        if json {
            let data = try! JSONSerialization.data(withJSONObject: row, options: [.sortedKeys])
            out(String(decoding: data, as: UTF8.self))
        } else {
            let name = row["benchmark"] as? String ?? "?"
            let rest = row.keys.filter { $0 != "benchmark" }.sorted().map { k -> String in
                switch row[k] {
                case let d as Double: return "\(k)=\(d.rounded() == d || abs(d) >= 1000 ? String(format: "%.0f", d) : String(format: "%.3f", d))"
                case let v?: return "\(k)=\(v)"
                case nil: return k
                }
            }
            out(([name] + rest.map { "    " + $0 }).joined(separator: "\n"))
        }
    }

    /// Writes a line to stdout at once (no buffering: progress shows while a run goes on).
    private func out(_ line: String) { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }

    func note(_ text: String) {
        if json { FileHandle.standardError.write(Data("[bench] \(text)\n".utf8)) } else { out("[bench] \(text)") }
    }
}

/// A directory for one run; removed at the end unless the user named it.
struct BenchDirectory {
    let path: String
    let keep: Bool

    init(_ given: String?, name: String) throws {
        if let given {
            path = (given as NSString).standardizingPath
            keep = true
        } else {
            path = NSTemporaryDirectory() + "/fieldlog-bench-\(name)-\(getpid())"
            keep = false
        }
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    func remove() { if !keep { try? FileManager.default.removeItem(atPath: path) } }
}

/// /proc figures of a process: resident memory and CPU time.
struct ProcSample {
    var rssKiB: Int
    var cpuSeconds: Double

    static let ticksPerSecond = Double(sysconf(Int32(_SC_CLK_TCK)))

    static func read(pid: Int32) throws -> ProcSample {
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kib = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") else {
            throw BenchError("no VmRSS in /proc/\(pid)/status")
        }
        let stat = try String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        guard let close = stat.lastIndex(of: ")") else { throw BenchError("cannot parse /proc/\(pid)/stat") }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let ut = Double(fields[11]), let st = Double(fields[12]) else {
            throw BenchError("cannot parse /proc/\(pid)/stat")
        }
        return ProcSample(rssKiB: kib, cpuSeconds: (ut + st) / ticksPerSecond)
    }
}

/// The services a benchmark runs against, and the paths of our programs.
final class BenchStack: @unchecked Sendable {
    // @unchecked: immutable after `start`, except `usersAdded` which only the owning task touches.
    let environment: [String: String]
    let stackDir: String
    let repo: String
    let owned: Bool
    let binDir: String
    let reporter: Reporter
    var ingestWrapper: [String] = []
    var deviceWrapper: [String] = []

    /// The device program the benchmarks run: `$FIELDLOG_DEVICE_BINARY` (scripts/bench sets it
    /// to the small binary of scripts/build-device, as deploy/device ships it), else the one
    /// next to fieldlog-bench.
    static func deviceBinary(binDir: String) -> String {
        ProcessInfo.processInfo.environment["FIELDLOG_DEVICE_BINARY"] ?? binDir + "/fieldlog-device"
    }
    var deviceBinary: String { Self.deviceBinary(binDir: binDir) }

    private init(environment: [String: String], stackDir: String, repo: String, owned: Bool, binDir: String, reporter: Reporter) {
        self.environment = environment
        self.stackDir = stackDir
        self.repo = repo
        self.owned = owned
        self.binDir = binDir
        self.reporter = reporter
    }

    static func findRepo(_ given: String?) throws -> String {
        var candidates: [String] = []
        if let given { candidates.append(given) }
        let exe = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        // <repo>/.build/<triple>/release/fieldlog-bench or <repo>/.build/release/fieldlog-bench
        var u = exe.deletingLastPathComponent()
        for _ in 0..<4 { u = u.deletingLastPathComponent(); candidates.append(u.path) }
        candidates.append(FileManager.default.currentDirectoryPath)
        for c in candidates where FileManager.default.isExecutableFile(atPath: c + "/scripts/stack") { return c }
        throw BenchError("cannot find the repository (scripts/stack); pass --repo")
    }

    static func parseEnv(_ text: String) -> [String: String] {
        var env: [String: String] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let eq = line.firstIndex(of: "=") else { continue }
            env[String(line[..<eq])] = String(line[line.index(after: eq)...])
        }
        return env
    }

    /// Starts a private stack under `dir/stack` (or loads `options.stackEnv`).
    static func start(_ options: StackOptions, dir: String, reporter: Reporter) async throws -> BenchStack {
        let repo = try findRepo(options.repo)
        let binDir = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent().path
        for path in [deviceBinary(binDir: binDir), "\(binDir)/fieldlog-backend"] where !FileManager.default.isExecutableFile(atPath: path) {
            throw BenchError("\(path) is missing: build it first (swift build -c release --product fieldlog-backend, scripts/build-device), or use scripts/bench")
        }
        func wrapped(_ s: BenchStack) throws -> BenchStack {
            for (text, keyPath) in [(options.ingestWrapper, \BenchStack.ingestWrapper), (options.deviceWrapper, \BenchStack.deviceWrapper)] {
                guard let text else { continue }
                var words = text.split(separator: " ").map(String.init)
                guard let tool = words.first, let path = tool.hasPrefix("/") ? tool : Tool.which(tool) else { throw BenchError("wrapper \(text.debugDescription) not found") }
                words[0] = path
                s[keyPath: keyPath] = words
            }
            return s
        }
        if let file = options.stackEnv {
            let env = parseEnv(try String(contentsOfFile: file, encoding: .utf8))
            guard let d = env["FIELDLOG_STACK_DIR"] else { throw BenchError("\(file) has no FIELDLOG_STACK_DIR") }
            return try wrapped(BenchStack(environment: env, stackDir: d, repo: repo, owned: false, binDir: binDir, reporter: reporter))
        }
        let stackDir = dir + "/stack"
        var env = ProcessInfo.processInfo.environment
        env["FIELDLOG_REDIS_PORT"] = String(try Loopback.freePort())
        env["FIELDLOG_MQTT_PORT"] = String(try Loopback.freePort())
        env["FIELDLOG_MARIADB_PORT"] = String(try Loopback.freePort())
        reporter.note("starting a private stack in \(stackDir) (redis \(env["FIELDLOG_REDIS_PORT"]!), mqtt \(env["FIELDLOG_MQTT_PORT"]!), mariadb \(env["FIELDLOG_MARIADB_PORT"]!))")
        do {
            try Tool.run(repo + "/scripts/stack", ["up", "--dir", stackDir], environment: env)
        } catch {
            _ = try? Tool.run(repo + "/scripts/stack", ["down", "--dir", stackDir], environment: env)
            throw error
        }
        let stackEnv = parseEnv(try String(contentsOfFile: stackDir + "/stack.env", encoding: .utf8))
        return try wrapped(BenchStack(environment: stackEnv, stackDir: stackDir, repo: repo, owned: true, binDir: binDir, reporter: reporter))
    }

    /// PIDs of the stack's mosquitto and mariadbd, from the PID files `scripts/stack` writes
    /// (nil when not found, e.g. for a stack given by --stack-env elsewhere).
    var servicePIDs: (mosquitto: Int32?, mariadb: Int32?) {
        func pid(_ file: String) -> Int32? {
            (try? String(contentsOfFile: stackDir + "/" + file, encoding: .utf8)).flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        }
        return (pid("mosquitto/mosquitto.pid"), pid("mariadb/mariadbd.pid") ?? pid("mariadb/mariadb.pid"))
    }

    func stop() {
        guard owned else { return }
        _ = try? Tool.run(repo + "/scripts/stack", ["down", "--dir", stackDir], environment: ProcessInfo.processInfo.environment)
    }

    var mqttHost: String { environment["FIELDLOG_MQTT_HOST"] ?? "127.0.0.1" }
    var mqttPort: Int { Int(environment["FIELDLOG_MQTT_PORT"] ?? "") ?? 1883 }
    var backendUser: String { environment["FIELDLOG_MQTT_BACKEND_USER"] ?? "fieldlog-backend" }
    var backendPassword: String { environment["FIELDLOG_MQTT_BACKEND_PASSWORD"] ?? "" }

    func mariaDB(database: String?) -> MariaDBConfiguration {
        MariaDBConfiguration(host: environment["FIELDLOG_MARIADB_HOST"] ?? "127.0.0.1",
                             port: Int(environment["FIELDLOG_MARIADB_PORT"] ?? "") ?? 3306,
                             user: environment["FIELDLOG_MARIADB_USER"] ?? "fieldlog",
                             password: environment["FIELDLOG_MARIADB_PASSWORD"] ?? "", database: database,
                             connectTimeout: .seconds(10), readTimeout: .seconds(120), writeTimeout: .seconds(120))
    }

    /// Creates a fresh database and migrates it with `fieldlog-backend migrate`.
    func freshDatabase(_ name: String) async throws {
        let c = try await MariaDBConnection.connect(configuration: mariaDB(database: nil), logger: quietLogger("bench.sql"))
        try await c.query("DROP DATABASE IF EXISTS `\(name)`")
        try await c.query("CREATE DATABASE `\(name)` CHARACTER SET utf8mb4")
        await c.close()
        try Tool.run(binDir + "/fieldlog-backend", ["migrate"], environment: backendEnvironment(database: name))
    }

    func dropDatabase(_ name: String) async {
        guard let c = try? await MariaDBConnection.connect(configuration: mariaDB(database: nil), logger: quietLogger("bench.sql")) else { return }
        _ = try? await c.query("DROP DATABASE IF EXISTS `\(name)`")
        await c.close()
    }

    func backendEnvironment(database: String) -> [String: String] {
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("FIELDLOG_") && !$0.key.hasPrefix("MQTT_") }
        for (k, v) in environment { env[k] = v }
        env["FIELDLOG_MARIADB_DATABASE"] = database
        env["FIELDLOG_METRICS_PORT"] = "0"
        env["FIELDLOG_LOG_LEVEL"] = "warning"
        // The bench's own share group: a backend of someone else on a given broker never takes our batches.
        env["FIELDLOG_INGEST_GROUP"] = "fieldlog-bench-\(getpid())"
        return env
    }

    /// The environment of `fieldlog-device` for one device.
    func deviceEnvironment(device: String, password: String, logPath: String, extra: [String: String] = [:]) -> [String: String] {
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("FIELDLOG_") && !$0.key.hasPrefix("MQTT_") }
        env["FIELDLOG_DEVICE_ID"] = device
        env["LOG_PATH"] = logPath
        env["MQTT_HOST"] = mqttHost
        env["MQTT_PORT"] = String(mqttPort)
        env["MQTT_PASSWORD"] = password
        env["REDIS_HOST"] = environment["FIELDLOG_REDIS_HOST"] ?? "127.0.0.1"
        env["REDIS_PORT"] = environment["FIELDLOG_REDIS_PORT"] ?? "6379"
        env["REDIS_ENABLE"] = "false"
        env["STATUS_HTTP_PORT"] = "0"
        env["LOG_LEVEL"] = "warning"
        for (k, v) in extra { env[k] = v }
        return env
    }

    /// Adds MQTT users (device id = user name, as the broker's ACL expects) and reloads the broker once.
    func addMQTTUsers(_ users: [(String, String)]) throws {
        guard let passwd = environment["FIELDLOG_MQTT_PASSWORD_FILE"], let pidFile = environment["FIELDLOG_MQTT_PID_FILE"] else {
            throw BenchError("the stack env names no MQTT password file / pid file")
        }
        guard let tool = Tool.which("mosquitto_passwd") else { throw BenchError("mosquitto_passwd not found") }
        // Hash a plain file in one go (-U), then append it: one process for any number of users.
        let plain = stackDir + "/bench-users-\(getpid()).tmp"
        try users.map { "\($0.0):\($0.1)" }.joined(separator: "\n").appending("\n").write(toFile: plain, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: plain) }
        try Tool.run(tool, ["-U", plain])
        let hashed = try String(contentsOfFile: plain, encoding: .utf8)
        let names = Set(users.map(\.0))
        let kept = ((try? String(contentsOfFile: passwd, encoding: .utf8)) ?? "").split(separator: "\n")
            .filter { line in !names.contains(String(line.prefix { $0 != ":" })) }
        try (kept.joined(separator: "\n") + (kept.isEmpty ? "" : "\n") + hashed).write(toFile: passwd, atomically: false, encoding: .utf8)
        guard let pid = Int32((try String(contentsOfFile: pidFile, encoding: .utf8)).trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw BenchError("cannot read the broker pid from \(pidFile)")
        }
        kill(pid, SIGHUP)
        Thread.sleep(forTimeInterval: 0.3)
    }

    func startBackend(database: String, dir: String, index: Int = 0) throws -> ChildProcess {
        let argv = ingestWrapper + [binDir + "/fieldlog-backend", "ingest"]
        let log = "\(dir)/ingest-\(index).log"
        var environment = backendEnvironment(database: database)
        environment["FIELDLOG_INGEST_CLIENT_ID"] = "fieldlog-bench-\(getpid())-ingest-\(index)"
        return try ChildProcess.spawn(argv[0], Array(argv.dropFirst()), environment: environment,
                                      stdoutPath: log, stderrPath: log)
    }

    func startDevice(_ command: [String], environment: [String: String], logPath: String) throws -> ChildProcess {
        let argv = deviceWrapper + [deviceBinary] + command
        return try ChildProcess.spawn(argv[0], Array(argv.dropFirst()), environment: environment, stdoutPath: logPath, stderrPath: logPath)
    }

    /// An MQTT client logged in as the backend user (allowed to publish under fieldlog/v1/backend/#).
    func backendClient(_ id: String) throws -> MQTTClient {
        try MQTTClient(configuration: MQTTConfiguration(host: mqttHost, port: mqttPort, clientID: "\(id)-\(getpid())", cleanStart: true,
                                                        username: backendUser, password: backendPassword),
                       logger: quietLogger("bench.mqtt"))
    }
}

/// Reads a device log's durable pointers with plain SQLite, read-only (the log's owner is another process).
func readLogPointers(_ path: String) throws -> (head: UInt64, acked: UInt64) {
    let c = try ReadOnlySQLite(path: path)
    // The head is max(state.head, highest record): appends insert records only (docs/log.md).
    return (UInt64(try c.scalar("SELECT max(head, coalesce((SELECT max(seq) FROM records), 0)) FROM state WHERE id = 1")),
            UInt64(try c.scalar("SELECT acked FROM state WHERE id = 1")))
}

/// `fieldlog-backend web` started on a free loopback port (stopped by `cleanups`) and signed in
/// as `user`: the web benchmarks' common start.
struct SignedInWeb {
    let process: ChildProcess
    let client: PlainHTTPClient
    let cookie: String

    static func start(binDir: String, environment: [String: String], log: String, user: String, password: String,
                      cleanups: Cleanups) async throws -> SignedInWeb {
        let port = try Loopback.freePort()
        let web = try ChildProcess.spawn(binDir + "/fieldlog-backend", ["web", "--web-port", String(port), "--insecure-cookies"],
                                          environment: environment, stdoutPath: log, stderrPath: log)
        // Stopped at the end; on an error, by the cleanups (stop is idempotent).
        cleanups.add { await web.stop() }
        let deadline = ContinuousClock.now + .seconds(60)
        while !Loopback.isListening(port) {
            guard web.isRunning, ContinuousClock.now < deadline else { throw BenchError("fieldlog-backend web did not start: \(web.tail())") }
            try await Task.sleep(for: .milliseconds(100))
        }
        let client = PlainHTTPClient(port: port)
        let signIn = try client.request("POST", "/api/session", headers: ["Content-Type": "application/json"],
                                        body: #"{"user":"\#(user)","password":"\#(password)"}"#)
        guard signIn.status == 201, let cookie = signIn.header("set-cookie")?.split(separator: ";").first.map(String.init) else {
            throw BenchError("sign-in failed: \(signIn.status) \(signIn.body.prefix(200))")
        }
        return SignedInWeb(process: web, client: client, cookie: cookie)
    }
}
