// LabStack: the services a lab run uses — Redis, Mosquitto and MariaDB (or a Galera
// cluster) — and the faults the lab injects into them.
//
// Theory of operation: the lab drives `scripts/stack` (the same script developers and CI use)
// with a directory and ports of its own (`--dir`, FIELDLOG_*_PORT), so a lab run never
// touches another stack. Service processes are found by the PID files the script writes;
// SIGKILL/SIGSTOP/SIGCONT go to those PIDs, and a killed service is brought back by running
// `scripts/stack up` again (it starts only what is not running). With `existing:` the lab
// uses a stack that is already up (its stack.env) and never takes it down.
import Foundation
import Logging
import Processes

/// A service of the stack the lab can fault.
public enum ServiceName: Hashable, Sendable, CustomStringConvertible {
    case redis, mosquitto, mariadb
    case galera(Int)

    public var description: String {
        switch self {
        case .redis: return "redis-server"
        case .mosquitto: return "mosquitto"
        case .mariadb: return "mariadbd"
        case .galera(let i): return "galera node \(i)"
        }
    }
}

final class LabStack: @unchecked Sendable {
    // @unchecked: `env` is written once in init/up; service operations are serialised by `lock`.
    public let directory: String
    public let script: String
    public let galeraNodes: Int
    let ownsStack: Bool
    private let ports: [String: String]
    private let logger: Logger
    private let lock = NSLock()
    public private(set) var env: [String: String] = [:]

    /// A new stack of the lab's own under `directory`, on free ports.
    public init(directory: String, script: String, galeraNodes: Int = 0, logger: Logger) throws {
        self.directory = directory
        self.script = script
        self.galeraNodes = galeraNodes
        self.ownsStack = true
        self.logger = logger
        var p: [String: String] = [
            "FIELDLOG_REDIS_PORT": String(try Loopback.freePort()), "FIELDLOG_MQTT_PORT": String(try Loopback.freePort()),
            "FIELDLOG_MARIADB_PORT": String(try Loopback.freePort()),
        ]
        // Galera uses port, port+1, … and +1000…+1200 offsets for its cluster traffic.
        if galeraNodes > 0 { p["FIELDLOG_GALERA_PORT"] = String(20_000 + Int.random(in: 0..<8_000)) }
        ports = p
    }

    /// An existing stack (directory with stack.env, as written by `scripts/stack up`).
    public init(existing directory: String, script: String, logger: Logger) throws {
        self.directory = directory
        self.script = script
        self.ownsStack = false
        self.logger = logger
        let e = try Self.readEnv(directory + "/stack.env")
        env = e
        galeraNodes = Int(e["FIELDLOG_GALERA_NODES"] ?? "0") ?? 0
        var p: [String: String] = [:]
        for k in ["FIELDLOG_REDIS_PORT", "FIELDLOG_MQTT_PORT", "FIELDLOG_MARIADB_PORT", "FIELDLOG_GALERA_PORT"] { p[k] = e[k] }
        ports = p
    }

    static func readEnv(_ path: String) throws -> [String: String] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw LabError.configuration("no stack environment at \(path) (run `scripts/stack up --dir …` first)")
        }
        var values: [String: String] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            let parts = line.split(separator: "=", maxSplits: 1).map(String.init)
            if parts.count == 2 { values[parts[0]] = parts[1] }
        }
        return values
    }

    private func runScript(_ args: [String], timeoutSeconds: Double = 180) throws {
        var e = ProcessInfo.processInfo.environment
        for (k, v) in ports { e[k] = v }
        var full = args + ["--dir", directory]
        if galeraNodes > 0 && args.first == "up" { full += ["--galera", String(galeraNodes)] }
        let r = try Tool.status(script, full, environment: e, timeoutSeconds: timeoutSeconds)
        guard r.status == 0 else {
            throw LabError.command("scripts/stack \(full.joined(separator: " ")) exited \(r.status): \(r.stderr.suffix(1500)) \(r.stdout.suffix(500))")
        }
    }

    /// Starts whatever is not running and reloads the environment.
    public func up() throws {
        try lock.withLock {
            try runScript(["up"])
            env = try Self.readEnv(directory + "/stack.env")
        }
    }

    /// Stops the stack (only one the lab started).
    public func down() {
        guard ownsStack else { return }
        lock.withLock { _ = try? runScript(["down"], timeoutSeconds: 120) }
    }

    /// Adds an MQTT user and reloads the broker (password file + SIGHUP).
    public func addMQTTUser(_ name: String, password: String) throws {
        try lock.withLock { try runScript(["adduser", name, password]) }
    }

    public var services: [ServiceName] {
        galeraNodes > 0 ? [.redis, .mosquitto] + (1...galeraNodes).map { ServiceName.galera($0) } : [.redis, .mosquitto, .mariadb]
    }

    func pidFile(_ s: ServiceName) -> String {
        switch s {
        case .redis: return directory + "/redis/redis.pid"
        case .mosquitto: return directory + "/mosquitto/mosquitto.pid"
        case .mariadb: return directory + "/mariadb/mariadb.pid"
        case .galera(let i): return directory + "/galera/node\(i)/mariadb.pid"
        }
    }

    public func pid(_ s: ServiceName) -> Int32? {
        guard let t = try? String(contentsOfFile: pidFile(s), encoding: .utf8),
              let p = Int32(t.trimmingCharacters(in: .whitespacesAndNewlines)), p > 0, kill(p, 0) == 0 else { return nil }
        return p
    }

    /// SIGKILL the service and wait until it is gone.
    public func kill9(_ s: ServiceName) throws {
        try lock.withLock {
            if case .galera(let i) = s {
                let old = pid(s)
                try runScript(["galera-kill", String(i)])
                // The script returns right after the signal; the node's listening socket closes
                // only when the process is gone, and a restart before that finds the port busy.
                if let old { waitGone(old) }
                return
            }
            guard let p = pid(s) else { logger.warning("lab: \(s) was not running"); return }
            kill(p, SIGCONT)
            kill(p, SIGKILL)
            waitGone(p)
        }
    }

    /// Waits (up to 60 s) until a killed process no longer exists.
    private func waitGone(_ p: Int32) {
        let deadline = monotonicSeconds() + 60
        while kill(p, 0) == 0 && monotonicSeconds() < deadline { Thread.sleep(forTimeInterval: 0.05) }
    }

    public func pause(_ s: ServiceName) { if let p = pid(s) { kill(p, SIGSTOP) } }
    public func resume(_ s: ServiceName) { if let p = pid(s) { kill(p, SIGCONT) } }

    /// Brings a killed service back (the stack script starts only what is down).
    public func restart(_ s: ServiceName) throws {
        try lock.withLock {
            if case .galera(let i) = s {
                if pid(s) == nil { try runScript(["galera-start", String(i)]) }
                return
            }
            try runScript(["up"])
        }
    }

    /// Resumes every service and starts any that are down.
    func healAll() throws {
        for s in services { resume(s) }
        for s in services where pid(s) == nil { try restart(s) }
    }

    // Environment accessors.
    public func value(_ key: String) throws -> String {
        guard let v = env[key], !v.isEmpty else { throw LabError.configuration("stack environment lacks \(key)") }
        return v
    }
    public func port(_ key: String) throws -> Int {
        guard let p = Int(try value(key)) else { throw LabError.configuration("\(key) is not a port") }
        return p
    }
}
