// Private service instances for tests that stop, restart or reconfigure a service.
// Each starts from the same files under deploy/ that `scripts/stack` and a real installation use.
import Foundation

/// A mosquitto of a test's own: the deploy/ configuration (auth, ACL) on a free port,
/// optionally with extra listener lines (TLS). Users are added with `addUser`.
public final class PrivateMosquitto: @unchecked Sendable {
    // @unchecked: all stored properties are immutable after init; `process` is thread-safe.
    public let port: Int
    public let directory: TemporaryDirectory
    public let process: ManagedProcess
    public let passwordFile: String

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
