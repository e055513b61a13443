// Processes, ports and directories for tests that need services of their own.
import Foundation

public struct CommandFailed: Error, CustomStringConvertible {
    public let description: String
}

public enum Shell {
    /// Runs a command to completion and returns its standard output; throws with its
    /// standard error when it exits non-zero.
    @discardableResult
    public static func run(_ tool: String, _ arguments: [String], input: String? = nil) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [tool] + arguments
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        let inPipe = Pipe()
        process.standardInput = input == nil ? FileHandle.nullDevice : inPipe
        try process.run()
        if let input {
            inPipe.fileHandleForWriting.write(Data(input.utf8))
            try? inPipe.fileHandleForWriting.close()
        }
        // Read both pipes before waiting, so a chatty tool cannot block on a full pipe.
        let group = DispatchGroup()
        nonisolated(unsafe) var errData = Data()
        group.enter()
        DispatchQueue.global().async { errData = err.fileHandleForReading.readDataToEndOfFile(); group.leave() }
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        process.waitUntilExit()
        let stdout = String(decoding: outData, as: UTF8.self)
        guard process.terminationStatus == 0 else {
            let stderr = String(decoding: errData, as: UTF8.self)
            throw CommandFailed(description: "\(tool) \(arguments.joined(separator: " ")) exited \(process.terminationStatus): \(stderr)")
        }
        return stdout
    }
}

public enum Ports {
    /// A TCP port on 127.0.0.1 that nothing listens on right now (the kernel picks it).
    public static func free() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        precondition(fd >= 0, "socket() failed")
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { ptr -> Bool in
                bind(fd, ptr, len) == 0 && getsockname(fd, ptr, &len) == 0
            }
        }
        precondition(ok, "could not bind an ephemeral port")
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    /// True when something accepts TCP connections on 127.0.0.1:port.
    public static func isListening(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = UInt16(port).bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
    }

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
/// stopped, killed, paused and resumed by PID (never by name).
public final class ManagedProcess: @unchecked Sendable {
    // @unchecked: `process` is only touched under `lock`.
    public let executable: String
    public let arguments: [String]
    public let logPath: String
    public let environment: [String: String]?
    private let lock = NSLock()
    private var process: Process?

    public init(executable: String, arguments: [String], logPath: String, environment: [String: String]? = nil) {
        self.executable = executable
        self.arguments = arguments
        self.logPath = logPath
        self.environment = environment
    }

    public var pid: Int32? { lock.withLock { process.flatMap { $0.isRunning ? $0.processIdentifier : nil } } }
    public var isRunning: Bool { lock.withLock { process?.isRunning ?? false } }

    public func start() throws {
        try lock.withLock {
            precondition(process?.isRunning != true, "\(executable) is already running")
            FileManager.default.createFile(atPath: logPath, contents: nil)
            let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
            log.seekToEndOfFile()
            let p = Process()
            p.executableURL = URL(fileURLWithPath: executable.hasPrefix("/") ? executable : "/usr/bin/env")
            p.arguments = executable.hasPrefix("/") ? arguments : [executable] + arguments
            if let environment { p.environment = environment }
            p.standardOutput = log
            p.standardError = log
            p.standardInput = FileHandle.nullDevice
            try Self.runWithDefaultSignalMask(p)
            process = p
        }
    }

    /// Starts `p` from a thread with no blocked signals. A child inherits the signal mask of
    /// the thread that spawns it, and Swift concurrency / Dispatch worker threads block most
    /// signals: a broker started from an async test would then ignore SIGHUP (no password
    /// reload) and SIGTERM (no clean stop).
    private static func runWithDefaultSignalMask(_ p: Process) throws {
        nonisolated(unsafe) var failure: Error?
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            var empty = sigset_t()
            sigemptyset(&empty)
            pthread_sigmask(SIG_SETMASK, &empty, nil)
            do { try p.run() } catch { failure = error }
            done.signal()
        }
        thread.start()
        done.wait()
        if let failure { throw failure }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    public func stop(grace: Duration = .seconds(10)) {
        guard let p = lock.withLock({ process }), p.isRunning else { return }
        kill(p.processIdentifier, SIGCONT)
        kill(p.processIdentifier, SIGTERM)
        let deadline = ContinuousClock.now + grace
        while p.isRunning && ContinuousClock.now < deadline { Thread.sleep(forTimeInterval: 0.02) }
        if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        p.waitUntilExit()
    }

    /// SIGKILL: a crash, as far as the process can tell.
    public func kill9() {
        guard let p = lock.withLock({ process }), p.isRunning else { return }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
    }

    /// SIGSTOP / SIGCONT: a hung process.
    public func pause() { if let pid { kill(pid, SIGSTOP) } }
    public func resume() { if let pid { kill(pid, SIGCONT) } }

    public var exitStatus: Int32? {
        lock.withLock { process.flatMap { $0.isRunning ? nil : $0.terminationStatus } }
    }

    public func log() -> String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    deinit { stop(grace: .seconds(2)) }
}
