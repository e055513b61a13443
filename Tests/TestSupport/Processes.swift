// Processes, ports and directories for tests that need services of their own.
import Foundation
import Processes

public struct CommandFailed: Error, CustomStringConvertible {
    public let description: String
    public init(description: String) { self.description = description }
}

public enum Shell {
    /// Runs a command (a path or a name in PATH) to completion and returns its standard output;
    /// throws with its standard error when it exits non-zero.
    @discardableResult
    public static func run(_ tool: String, _ arguments: [String], environment: [String: String]? = nil,
                           input: String? = nil) throws -> String {
        let r = try Tool.status(tool, arguments, environment: environment, input: input, timeoutSeconds: 600)
        guard r.status == 0 else {
            throw CommandFailed(description: "\(tool) \(arguments.joined(separator: " ")) exited \(r.status): \(r.stderr)")
        }
        return r.stdout
    }
}

public enum Ports {
    /// A TCP port on 127.0.0.1 that nothing listens on right now (the kernel picks it).
    public static func free() -> Int {
        do { return try Loopback.freePort() } catch { preconditionFailure("\(error)") }
    }

    /// True when something accepts TCP connections on 127.0.0.1:port.
    public static func isListening(_ port: Int) -> Bool { Loopback.isListening(port) }

    /// Waits until the port accepts connections; throws after `timeout`.
    public static func waitListening(_ port: Int, timeout: Duration = .seconds(20), what: String) throws {
        let deadline = ContinuousClock.now + timeout
        while !isListening(port) {
            if ContinuousClock.now > deadline {
                throw StackUnavailable(description: "\(what) did not listen on 127.0.0.1:\(port) within \(timeout)")
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
    }
}

/// A fresh directory under the system temp dir, removed by `remove()`.
public struct TemporaryDirectory: Sendable {
    public let path: String
    public init(_ prefix: String = "fieldlog-test") throws {
        let base = FileManager.default.temporaryDirectory.path
        path = base + "/" + Stack.uniqueName(prefix)
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    public func file(_ name: String) -> String { path + "/" + name }
    public func remove() { try? FileManager.default.removeItem(atPath: path) }
}

/// A child process owned by a test: started with arguments, its output in a log file,
/// stopped, killed, paused and resumed by PID (never by name), and started again.
public final class ManagedProcess: @unchecked Sendable {
    // @unchecked: `child` is only touched under `lock`.
    public let executable: String
    public let arguments: [String]
    public let logPath: String
    public let environment: [String: String]?
    private let lock = NSLock()
    private var child: ChildProcess?

    public init(executable: String, arguments: [String], logPath: String, environment: [String: String]? = nil) {
        self.executable = executable
        self.arguments = arguments
        self.logPath = logPath
        self.environment = environment
    }

    private var current: ChildProcess? { lock.withLock { child } }

    /// The PID while the child runs.
    public var pid: Int32? { current.flatMap { $0.isRunning ? $0.pid : nil } }
    public var isRunning: Bool { current?.isRunning ?? false }

    /// Exit status once the child has ended: its exit code, or 128 + signal number.
    public var exitStatus: Int32? { current?.exitCode }

    /// Starts the program (again), with a fresh log file.
    public func start() throws {
        try lock.withLock {
            precondition(child?.isRunning != true, "\(executable) is already running")
            FileManager.default.createFile(atPath: logPath, contents: nil)
            child = try ChildProcess.spawn(executable, arguments, environment: environment, stdoutPath: logPath, stderrPath: logPath)
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    public func stop(grace: Duration = .seconds(10)) {
        current?.terminate(graceSeconds: grace / .seconds(1))
    }

    /// SIGKILL: a crash, as far as the process can tell.
    public func kill9() {
        guard let c = current else { return }
        c.signal(SIGKILL)
        c.wait()
    }

    /// SIGSTOP / SIGCONT: a hung process.
    public func pause() { current?.signal(SIGSTOP) }
    public func resume() { current?.signal(SIGCONT) }

    /// Waits until the child exits by itself, up to `timeout`; returns its status or nil.
    public func waitForExit(timeout: Duration) -> Int32? {
        guard let c = current else { return nil }
        c.wait(timeoutSeconds: timeout / .seconds(1))
        return c.exitCode
    }

    public func log() -> String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    deinit { child?.terminate(graceSeconds: 2) }
}
