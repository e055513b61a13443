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
    let c = (ContinuousClock.now - start).components
    return Double(c.seconds) + Double(c.attoseconds) / 1e18
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

/// A loopback TCP port that was free a moment ago.
func freePort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw BenchError("socket: errno \(errno)") }
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = 0
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    let rc = withUnsafeMutablePointer(to: &addr) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa -> Int32 in
            guard bind(fd, sa, len) == 0 else { return -1 }
            return getsockname(fd, sa, &len)
        }
    }
    guard rc == 0 else { throw BenchError("bind/getsockname: errno \(errno)") }
    return Int(UInt16(bigEndian: addr.sin_port))
}

/// Starts `executable` with stdin from /dev/null and stdout/stderr to files (posix_spawn:
/// Foundation's `Process` needs the main run loop to notice an exit, which an async `main`
/// does not run).
func spawn(_ executable: String, _ arguments: [String], environment: [String: String]?, stdout: String, stderr: String) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, stdout, O_WRONLY | O_APPEND | O_CREAT, 0o644)
    if stderr == stdout {
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
    } else {
        posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_APPEND | O_CREAT, 0o644)
    }
    let env = environment ?? ProcessInfo.processInfo.environment
    var cArgs = ([executable] + arguments).map { strdup($0) } + [nil]
    var cEnv = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { cArgs.forEach { free($0) }; cEnv.forEach { free($0) } }
    // The calling thread may block signals (the Swift runtime's threads do): give the child an
    // empty mask and default handlers, or daemons started by scripts/stack ignore SIGHUP/SIGTERM.
    var attr = posix_spawnattr_t()
    posix_spawnattr_init(&attr)
    defer { posix_spawnattr_destroy(&attr) }
    var empty = sigset_t()
    sigemptyset(&empty)
    posix_spawnattr_setsigmask(&attr, &empty)
    var defaults = sigset_t()
    sigemptyset(&defaults)
    for s in [SIGHUP, SIGTERM, SIGINT, SIGPIPE, SIGCHLD, SIGUSR1, SIGUSR2] { sigaddset(&defaults, s) }
    posix_spawnattr_setsigdefault(&attr, &defaults)
    posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, executable, &actions, &attr, &cArgs, &cEnv)
    guard rc == 0 else { throw BenchError("cannot start \(executable): \(String(cString: strerror(rc)))") }
    return pid
}

/// Exit code of a reaped status (128 + signal when killed).
func exitCode(_ raw: Int32) -> Int32 {
    let signal = raw & 0x7f
    return signal == 0 ? (raw >> 8) & 0xff : 128 + signal
}

/// Runs a program to completion; returns its standard output; throws with its stderr on failure.
/// Output goes through files, not pipes: `scripts/stack up` leaves daemons behind that would
/// hold a pipe open forever.
@discardableResult
func runTool(_ path: String, _ arguments: [String], environment: [String: String]? = nil) throws -> String {
    let base = NSTemporaryDirectory() + "/fieldlog-bench-tool-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    defer { try? FileManager.default.removeItem(atPath: base + ".out"); try? FileManager.default.removeItem(atPath: base + ".err") }
    let pid = try spawn(path, arguments, environment: environment, stdout: base + ".out", stderr: base + ".err")
    var raw: Int32 = 0
    while waitpid(pid, &raw, 0) < 0 && errno == EINTR {}
    let o = (try? String(contentsOfFile: base + ".out", encoding: .utf8)) ?? ""
    let e = (try? String(contentsOfFile: base + ".err", encoding: .utf8)) ?? ""
    guard exitCode(raw) == 0 else {
        throw BenchError("\(path) \(arguments.joined(separator: " ")) exited \(exitCode(raw)): \(e)")
    }
    return o
}

func which(_ tool: String) -> String? {
    for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
        let p = "\(dir)/\(tool)"
        if FileManager.default.isExecutableFile(atPath: p) { return p }
    }
    return nil
}

/// A child process of one of our programs, stopped by PID.
final class Child: @unchecked Sendable {
    // @unchecked: `exited` is only touched under `lock`.
    let name: String
    let pid: pid_t
    let logPath: String
    private let lock = NSLock()
    private var exited = false

    init(name: String, executable: String, arguments: [String], environment: [String: String], logPath: String) throws {
        self.name = name
        self.logPath = logPath
        pid = try spawn(executable, arguments, environment: environment, stdout: logPath, stderr: logPath)
    }

    var isRunning: Bool {
        lock.withLock {
            if exited { return false }
            var raw: Int32 = 0
            if waitpid(pid, &raw, WNOHANG) == 0 { return true }
            exited = true
            return false
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    func stop(grace: Duration = .seconds(10)) async {
        guard isRunning else { return }
        kill(pid, SIGTERM)
        let start = ContinuousClock.now
        while isRunning && ContinuousClock.now - start < grace { try? await Task.sleep(for: .milliseconds(20)) }
        if isRunning {
            kill(pid, SIGKILL)
            while isRunning { try? await Task.sleep(for: .milliseconds(20)) }
        }
    }

    func tail(_ lines: Int = 20) -> String {
        let text = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
        return text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n")
    }
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
        for tool in ["fieldlog-device", "fieldlog-backend"] where !FileManager.default.isExecutableFile(atPath: "\(binDir)/\(tool)") {
            throw BenchError("\(binDir)/\(tool) is missing: build it first (swift build -c release --product \(tool)), or use scripts/bench")
        }
        func wrapped(_ s: BenchStack) throws -> BenchStack {
            for (text, keyPath) in [(options.ingestWrapper, \BenchStack.ingestWrapper), (options.deviceWrapper, \BenchStack.deviceWrapper)] {
                guard let text else { continue }
                var words = text.split(separator: " ").map(String.init)
                guard let tool = words.first, let path = tool.hasPrefix("/") ? tool : which(tool) else { throw BenchError("wrapper \(text.debugDescription) not found") }
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
        env["FIELDLOG_REDIS_PORT"] = String(try freePort())
        env["FIELDLOG_MQTT_PORT"] = String(try freePort())
        env["FIELDLOG_MARIADB_PORT"] = String(try freePort())
        reporter.note("starting a private stack in \(stackDir) (redis \(env["FIELDLOG_REDIS_PORT"]!), mqtt \(env["FIELDLOG_MQTT_PORT"]!), mariadb \(env["FIELDLOG_MARIADB_PORT"]!))")
        do {
            try runTool(repo + "/scripts/stack", ["up", "--dir", stackDir], environment: env)
        } catch {
            _ = try? runTool(repo + "/scripts/stack", ["down", "--dir", stackDir], environment: env)
            throw error
        }
        let stackEnv = parseEnv(try String(contentsOfFile: stackDir + "/stack.env", encoding: .utf8))
        return try wrapped(BenchStack(environment: stackEnv, stackDir: stackDir, repo: repo, owned: true, binDir: binDir, reporter: reporter))
    }

    func stop() {
        guard owned else { return }
        _ = try? runTool(repo + "/scripts/stack", ["down", "--dir", stackDir], environment: ProcessInfo.processInfo.environment)
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
        try runTool(binDir + "/fieldlog-backend", ["migrate"], environment: backendEnvironment(database: name))
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
        guard let tool = which("mosquitto_passwd") else { throw BenchError("mosquitto_passwd not found") }
        // Hash a plain file in one go (-U), then append it: one process for any number of users.
        let plain = stackDir + "/bench-users-\(getpid()).tmp"
        try users.map { "\($0.0):\($0.1)" }.joined(separator: "\n").appending("\n").write(toFile: plain, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: plain) }
        try runTool(tool, ["-U", plain])
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

    func startBackend(database: String, dir: String, index: Int = 0) throws -> Child {
        let argv = ingestWrapper + [binDir + "/fieldlog-backend", "ingest"]
        return try Child(name: "fieldlog-backend ingest", executable: argv[0], arguments: Array(argv.dropFirst()),
                  environment: backendEnvironment(database: database), logPath: "\(dir)/ingest-\(index).log")
    }

    func startDevice(_ command: [String], environment: [String: String], logPath: String) throws -> Child {
        let argv = deviceWrapper + [binDir + "/fieldlog-device"] + command
        return try Child(name: "fieldlog-device \(command.joined(separator: " "))", executable: argv[0], arguments: Array(argv.dropFirst()),
                  environment: environment, logPath: logPath)
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
    return (UInt64(try c.scalar("SELECT head FROM state WHERE id = 1")), UInt64(try c.scalar("SELECT acked FROM state WHERE id = 1")))
}
