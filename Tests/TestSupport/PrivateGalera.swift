// A MariaDB Galera cluster of a test's own, on loopback, started with `scripts/stack up --galera N`
// in a private directory with private ports (so the one source of truth for the node command
// lines stays scripts/stack; see ../shared/notes/GALERA.md). The stack also brings its own
// Redis and Mosquitto (deploy/ configuration: auth + ACL), which a test may use as its private
// broker. `down()` stops exactly the processes this stack started, by PID.
import Foundation
import Processes

/// A private Galera cluster (plus the private Redis and Mosquitto `scripts/stack` starts with it).
public final class PrivateGalera: @unchecked Sendable {
    // @unchecked: all stored properties are immutable after init; `down` is idempotent and locked.
    public let directory: TemporaryDirectory
    public let nodes: Int
    /// SQL port of node 1; node i listens on `basePort + i - 1`.
    let basePort: Int
    public let mqttPort: Int
    public let redisPort: Int
    /// Credentials from the stack's stack.env.
    public let user: String
    public let password: String
    public let mqttBackendUser: String
    public let mqttBackendPassword: String
    /// Failure detection of the cluster as configured by scripts/stack (evs.inactive_timeout):
    /// a SIGKILLed node is evicted from the cluster at the latest after this long.
    public static let failureDetection: Duration = .seconds(5)
    private let lock = NSLock()
    private var isDown = false

    /// Creates the directory and starts the cluster (about 15–30 s on a loaded 2-core machine).
    public init(nodes: Int = 3) throws {
        precondition(nodes >= 1)
        self.nodes = nodes
        directory = try TemporaryDirectory("galera")
        // The node directories are used by `mysql`: the path must be traversable.
        chmod(directory.path, 0o755)
        basePort = Self.freeBase(nodes: nodes)
        mqttPort = Ports.free()
        redisPort = Ports.free()
        do {
            try Self.stack(["up", "--galera", String(nodes)], directory: directory.path, environment: [
                "FIELDLOG_GALERA_PORT": String(basePort), "FIELDLOG_MQTT_PORT": String(mqttPort),
                "FIELDLOG_REDIS_PORT": String(redisPort),
            ])
            let env = try Self.readEnv(directory.file("stack.env"))
            func value(_ k: String) throws -> String {
                guard let v = env[k] else { throw CommandFailed(description: "stack.env lacks \(k)") }
                return v
            }
            user = try value("FIELDLOG_MARIADB_USER")
            password = try value("FIELDLOG_MARIADB_PASSWORD")
            mqttBackendUser = try value("FIELDLOG_MQTT_BACKEND_USER")
            mqttBackendPassword = try value("FIELDLOG_MQTT_BACKEND_PASSWORD")
        } catch {
            try? Self.stack(["down"], directory: directory.path)
            directory.remove()
            throw error
        }
    }

    /// SQL port of node `i` (1-based).
    public func port(_ i: Int) -> Int { basePort + i - 1 }

    /// `host:port,…` of every node, starting with node `first` (the preferred one) and going round.
    public func addresses(preferring first: Int = 1) -> String {
        (0..<nodes).map { "127.0.0.1:\(port((first - 1 + $0) % nodes + 1))" }.joined(separator: ",")
    }

    /// SIGKILL node `i` (a crash).
    public func kill(_ i: Int) throws { try Self.stack(["galera-kill", String(i)], directory: directory.path) }

    /// Restarts node `i` after a crash (recovers its position: incremental state transfer); returns when it is Synced.
    public func start(_ i: Int) throws { try Self.stack(["galera-start", String(i)], directory: directory.path) }

    /// The PID of node `i`'s mariadbd while it runs.
    public func pid(_ i: Int) -> Int32? {
        guard let text = try? String(contentsOfFile: directory.file("galera/node\(i)/mariadb.pid"), encoding: .utf8),
              let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), Foundation.kill(pid, 0) == 0 else { return nil }
        return pid
    }

    /// Runs SQL on node `i` as the stack's user over TCP; returns tab-separated output.
    @discardableResult
    public func sql(_ statement: String, node: Int = 1, database: String? = nil) throws -> String {
        var args = ["--no-defaults", "-h", "127.0.0.1", "-P", String(port(node)), "-u", user, "-p" + password,
                    "--batch", "--skip-column-names", "-e", statement]
        if let database { args.append(database) }
        return try Shell.run("mariadb", args)
    }

    /// A `wsrep_%` status value of node `i`.
    public func status(_ name: String, node: Int) throws -> String {
        let line = try sql("SHOW STATUS LIKE '\(name)'", node: node).trimmingCharacters(in: .whitespacesAndNewlines)
        return String(line.split(separator: "\t").last ?? "")
    }

    /// Adds an MQTT user to the stack's broker (and reloads it).
    public func addMQTTUser(_ name: String, password: String) throws {
        try Self.stack(["adduser", name, password], directory: directory.path)
        Thread.sleep(forTimeInterval: 0.3)
    }

    /// Stops every process of the stack (by PID) and removes the directory unless `keep`.
    public func down(keep: Bool = false) {
        let first: Bool = lock.withLock { defer { isDown = true }; return !isDown }
        guard first else { return }
        try? Self.stack(["down"], directory: directory.path)
        if !keep { directory.remove() }
    }

    deinit { down() }

    // MARK: helpers

    /// A base port whose 12 ports (SQL, gcomm, IST, SST of each node) are all free right now.
    static func freeBase(nodes: Int) -> Int {
        while true {
            // Below the ephemeral range (32768…): an outgoing connection must not take an IST or
            // SST port between the start of the cluster and a node's rejoin.
            let base = Int.random(in: 14_600...18_500)
            var ports: [Int] = []
            for i in 0..<nodes {
                let node: Int = base + i
                ports.append(node)
                ports.append(node + 1001)
                ports.append(node + 1101)
                ports.append(node + 1201)
            }
            if !ports.contains(where: { Ports.isListening($0) }) { return base }
        }
    }

    /// Runs `scripts/stack ARGS --dir DIRECTORY` to completion (through files, not pipes: the
    /// services it starts in the background would keep a pipe open; with no blocked signals, so
    /// the services obey SIGTERM at `down`).
    static func stack(_ arguments: [String], directory: String, environment: [String: String] = [:]) throws {
        let env = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let r = try Tool.status(Stack.packageRoot + "/scripts/stack", arguments + ["--dir", directory], environment: env, timeoutSeconds: 300)
        guard r.status == 0 else {
            throw CommandFailed(description: "scripts/stack \(arguments.joined(separator: " ")) --dir \(directory) exited \(r.status): \((r.stdout + r.stderr).suffix(3000))")
        }
    }

    static func readEnv(_ path: String) throws -> [String: String] {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        var values: [String: String] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            let parts = line.split(separator: "=", maxSplits: 1).map(String.init)
            if parts.count == 2 { values[parts[0]] = parts[1] }
        }
        return values
    }
}
