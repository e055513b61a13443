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
///
/// Built on posix_spawn and waitpid rather than Foundation's `Process`, whose exit
/// notification needs the main run loop: from an async test off the main actor it never
/// noticed the child had exited, so every stop waited its whole grace period.
public final class ManagedProcess: @unchecked Sendable {
    // @unchecked: `pid` and `status` are only touched under `lock`.
    public let executable: String
    public let arguments: [String]
    public let logPath: String
    public let environment: [String: String]?
    private let lock = NSLock()
    private var child: pid_t?
    private var status: Int32?

    public init(executable: String, arguments: [String], logPath: String, environment: [String: String]? = nil) {
        self.executable = executable
        self.arguments = arguments
        self.logPath = logPath
        self.environment = environment
    }

    /// The PID while the child runs.
    public var pid: Int32? { lock.withLock { reapLocked() ? child : nil } }
    public var isRunning: Bool { lock.withLock { reapLocked() } }

    /// Exit status once the child has ended: its exit code, or 128 + signal number.
    public var exitStatus: Int32? { lock.withLock { reapLocked() ? nil : status } }

    /// True while the child runs; records its status once it has ended. Caller holds `lock`.
    private func reapLocked(block: Bool = false) -> Bool {
        guard let child, status == nil else { return false }
        var raw: Int32 = 0
        let r = waitpid(child, &raw, block ? 0 : WNOHANG)
        if r == 0 { return true }
        if r == child {
            let signal = raw & 0x7f
            status = signal == 0 ? (raw >> 8) & 0xff : 128 + signal
        } else {
            status = -1 // not our child any more (already reaped)
        }
        return false
    }

    public func start() throws {
        try lock.withLock {
            precondition(child == nil || status != nil, "\(executable) is already running")
            FileManager.default.createFile(atPath: logPath, contents: nil)
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            defer { posix_spawn_file_actions_destroy(&actions) }
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
            posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_APPEND | O_CREAT, 0o644)
            posix_spawn_file_actions_adddup2(&actions, 1, 2)
            let argv = [executable] + arguments
            var env = ProcessInfo.processInfo.environment
            if let environment { env = environment }
            let envStrings = env.map { "\($0.key)=\($0.value)" }
            var cArgs = argv.map { strdup($0) } + [nil]
            var cEnv = envStrings.map { strdup($0) } + [nil]
            defer { cArgs.forEach { free($0) }; cEnv.forEach { free($0) } }
            // A child inherits the signal mask of the thread that spawns it, and Swift
            // concurrency / Dispatch worker threads block most signals: a broker started from an
            // async test would then ignore SIGHUP (no password reload) and SIGTERM (no clean
            // stop). Start every child with no blocked signals.
            var attributes = posix_spawnattr_t()
            posix_spawnattr_init(&attributes)
            defer { posix_spawnattr_destroy(&attributes) }
            var emptyMask = sigset_t()
            sigemptyset(&emptyMask)
            posix_spawnattr_setsigmask(&attributes, &emptyMask)
            posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK))
            var newPID: pid_t = 0
            let rc = posix_spawnp(&newPID, executable, &actions, &attributes, &cArgs, &cEnv)
            guard rc == 0 else {
                throw CommandFailed(description: "could not start \(executable): \(String(cString: strerror(rc)))")
            }
            child = newPID
            status = nil
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    public func stop(grace: Duration = .seconds(10)) {
        guard let pid else { return }
        kill(pid, SIGCONT)
        kill(pid, SIGTERM)
        let deadline = ContinuousClock.now + grace
        while isRunning && ContinuousClock.now < deadline { usleep(10_000) }
        if isRunning { kill(pid, SIGKILL) }
        lock.withLock { _ = reapLocked(block: true) }
    }

    /// SIGKILL: a crash, as far as the process can tell.
    public func kill9() {
        guard let pid else { return }
        kill(pid, SIGKILL)
        lock.withLock { _ = reapLocked(block: true) }
    }

    /// SIGSTOP / SIGCONT: a hung process.
    public func pause() { if let pid { kill(pid, SIGSTOP) } }
    public func resume() { if let pid { kill(pid, SIGCONT) } }

    /// Waits until the child exits by itself, up to `timeout`; returns its status or nil.
    public func waitForExit(timeout: Duration) -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while isRunning && ContinuousClock.now < deadline { usleep(10_000) }
        return exitStatus
    }

    public func log() -> String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    deinit { stop(grace: .seconds(2)) }
}
