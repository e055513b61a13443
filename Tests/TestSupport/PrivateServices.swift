// Private service instances for tests that stop, restart or reconfigure a service.
// Each starts from the same files under deploy/ that `scripts/stack` and a real installation use.
import Foundation
import Processes

/// A mosquitto of a test's own: the deploy/ configuration (auth, ACL) on a free port,
/// optionally with extra listener lines (TLS). Users are added with `addUser`.
public final class PrivateMosquitto: @unchecked Sendable {
    // @unchecked: all stored properties are immutable after init; `process` is thread-safe.
    public let port: Int
    public let directory: TemporaryDirectory
    public let process: ManagedProcess
    let passwordFile: String

    /// - Parameter extraConfig: lines appended to the configuration (e.g. a TLS listener).
    public init(port: Int = Ports.free(), extraConfig: String = "", persistence: Bool = true) throws {
        self.port = port
        directory = try TemporaryDirectory("mosquitto")
        passwordFile = directory.file("fieldlog.passwd")
        let root = Stack.packageRoot
        var conf = try String(contentsOfFile: root + "/deploy/mosquitto/mosquitto.conf", encoding: .utf8)
        conf = conf.replacingOccurrences(of: "/etc/mosquitto/", with: directory.path + "/")
        conf = conf.replacingOccurrences(of: "persistence_location /var/lib/mosquitto/", with: "persistence_location \(directory.path)/")
        conf = conf.replacingOccurrences(of: "listener 1883 127.0.0.1", with: "listener \(port) 127.0.0.1")
        if !persistence { conf = conf.replacingOccurrences(of: "persistence true", with: "persistence false") }
        if getuid() == 0 { conf += "\nuser root\n" }
        conf += "\n" + extraConfig + "\n"
        try conf.write(toFile: directory.file("mosquitto.conf"), atomically: true, encoding: .utf8)
        try FileManager.default.copyItem(atPath: root + "/deploy/mosquitto/fieldlog.acl", toPath: directory.file("fieldlog.acl"))
        FileManager.default.createFile(atPath: passwordFile, contents: nil, attributes: [.posixPermissions: 0o600])
        process = ManagedProcess(executable: "mosquitto", arguments: ["-c", directory.file("mosquitto.conf")],
                                 logPath: directory.file("mosquitto.log"))
    }

    public func addUser(_ name: String, password: String) throws {
        try Shell.run("mosquitto_passwd", ["-b", passwordFile, name, password])
        if let pid = process.pid {
            kill(pid, SIGHUP)
            Thread.sleep(forTimeInterval: 0.3)
        }
    }

    public func start() throws {
        try process.start()
        try Ports.waitListening(port, what: "mosquitto (log: \(process.logPath))")
    }

    public func stop() { process.stop() }
    public func kill9() { process.kill9() }

    deinit {
        process.stop(grace: .seconds(2))
        directory.remove()
    }
}

/// A redis-server of a test's own, from deploy/redis/redis.conf, on a free port.
public final class PrivateRedis: @unchecked Sendable {
    // @unchecked: all stored properties are immutable after init; `process` is thread-safe.
    public let port: Int
    public let directory: TemporaryDirectory
    public let process: ManagedProcess

    public init(port: Int = Ports.free()) throws {
        self.port = port
        directory = try TemporaryDirectory("redis")
        var conf = try String(contentsOfFile: Stack.packageRoot + "/deploy/redis/redis.conf", encoding: .utf8)
        conf = conf.replacingOccurrences(of: "port 6379", with: "port \(port)")
        conf = conf.replacingOccurrences(of: "dir /var/lib/redis", with: "dir \(directory.path)")
        conf = conf.replacingOccurrences(of: "bind 127.0.0.1 -::1", with: "bind 127.0.0.1")
        try conf.write(toFile: directory.file("redis.conf"), atomically: true, encoding: .utf8)
        process = ManagedProcess(executable: "redis-server", arguments: [directory.file("redis.conf")],
                                 logPath: directory.file("redis.log"))
    }

    public func start() throws {
        try process.start()
        try Ports.waitListening(port, what: "redis (log: \(process.logPath))")
    }

    public func stop() { process.stop() }
    public func kill9() { process.kill9() }

    deinit {
        process.stop(grace: .seconds(2))
        directory.remove()
    }
}

/// A mariadbd of a test's own, from deploy/mariadb/my.cnf, on a free port in a temporary
/// directory: for tests that stop, kill or restart the database. The stack's credentials are
/// not involved: `root` with `password`, over TCP on 127.0.0.1.
public final class PrivateMariaDB: @unchecked Sendable {
    // @unchecked: all stored properties are immutable after init; `process` is thread-safe.
    public let port: Int
    public let directory: TemporaryDirectory
    public let process: ManagedProcess
    public let user = "root"
    public let password: String

    /// Creates the data directory (mariadb-install-db, a few seconds); `start()` runs the server.
    public init(port: Int = Ports.free()) throws {
        self.port = port
        password = Stack.uniqueName("pw")
        directory = try TemporaryDirectory("mariadb")
        var conf = try String(contentsOfFile: Stack.packageRoot + "/deploy/mariadb/my.cnf", encoding: .utf8)
        conf = conf.replacingOccurrences(of: "port = 3306", with: "port = \(port)")
        conf = conf.replacingOccurrences(of: "innodb_buffer_pool_size = 256M", with: "innodb_buffer_pool_size = 32M")
        conf = conf.replacingOccurrences(of: "innodb_log_file_size = 128M", with: "innodb_log_file_size = 16M")
        try conf.write(toFile: directory.file("my.cnf"), atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: directory.file("tmp"), withIntermediateDirectories: true)
        let user = getuid() == 0 ? "root" : (ProcessInfo.processInfo.environment["USER"] ?? "root")
        try Shell.run("mariadb-install-db", ["--no-defaults", "--user=\(user)", "--datadir=\(directory.file("data"))",
                                             "--tmpdir=\(directory.file("tmp"))", "--auth-root-authentication-method=normal",
                                             "--skip-test-db"])
        process = ManagedProcess(executable: "mariadbd", arguments: [
            "--defaults-file=\(directory.file("my.cnf"))", "--user=\(user)", "--datadir=\(directory.file("data"))",
            "--tmpdir=\(directory.file("tmp"))", "--socket=\(directory.file("mariadb.sock"))",
            "--pid-file=\(directory.file("mariadbd.pid"))", "--port=\(port)", "--bind-address=127.0.0.1",
        ], logPath: directory.file("mariadb.log"))
    }

    /// Starts the server and waits until it answers; the first start also sets root's password.
    public func start() throws {
        try process.start()
        try Ports.waitListening(port, timeout: .seconds(60), what: "mariadbd (log: \(process.logPath))")
        if !FileManager.default.fileExists(atPath: directory.file("password-set")) {
            try Shell.run("mariadb", ["--no-defaults", "-uroot", "-S", directory.file("mariadb.sock"), "-e",
                                      "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'; ALTER USER 'root'@'127.0.0.1' IDENTIFIED BY '\(password)'; GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION; ALTER USER 'root'@'localhost' IDENTIFIED BY '\(password)';"])
            FileManager.default.createFile(atPath: directory.file("password-set"), contents: nil)
        }
    }

    /// Runs SQL as root over TCP and returns the tab-separated output.
    @discardableResult
    public func sql(_ statement: String, database: String? = nil) throws -> String {
        var args = ["--no-defaults", "-h", "127.0.0.1", "-P", String(port), "-u", user, "-p" + password, "--batch",
                    "--skip-column-names", "-e", statement]
        if let database { args.append(database) }
        return try Shell.run("mariadb", args)
    }

    /// SIGTERM and wait (a clean shutdown).
    public func stop() { process.stop(grace: .seconds(30)) }
    /// SIGKILL: a crash of the database server.
    public func kill9() { process.kill9() }

    deinit {
        process.stop(grace: .seconds(5))
        directory.remove()
    }
}
