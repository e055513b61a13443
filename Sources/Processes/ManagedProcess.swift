// ManagedProcess: a program Fieldlog runs for itself over and over — a service of a test, a
// device or ingest process of the outage lab — started, stopped, killed, paused, resumed and
// started again by PID (never by name), its output in a log file.
//
// Theory of operation: each start spawns a `ChildProcess` (posix_spawn plus a waitpid thread),
// so how and when each run ended is known exactly. The owner says which stops it caused
// (`stop`, `kill9`); an exit it did not cause is kept in `problems` (the lab reports it as a
// finding). The log file is either started afresh on each start (a test reads what this run
// printed) or appended to after a banner line (the lab keeps every run of a process in one
// file). All mutable state is under one lock; blocking waits happen outside it.
import FieldlogCore
import Foundation

/// A restartable child process (see the theory of operation above).
public final class ManagedProcess: @unchecked Sendable {
    // @unchecked: `environment`, `child`, `stoppedByOwner`, `unexpectedExits` and `startCount`
    // are only touched under `lock`; the rest is immutable.

    /// What happens to the log file when the program starts (again).
    public enum LogFile: Sendable {
        /// Emptied: `log()` shows this run only.
        case fresh
        /// Appended to, after a line `---- start #N at <date>`.
        case appendWithBanner
    }

    /// The name in messages (default: the executable's file name).
    public let name: String
    public let executable: String
    public let arguments: [String]
    public let logPath: String
    public let logFile: LogFile
    private let lock = NSLock()
    private var environment: [String: String]?
    private var child: ChildProcess?
    private var stoppedByOwner = true
    private var unexpectedExits: [String] = []
    private var startCount = 0

    /// `environment` nil: this process's environment.
    public init(name: String? = nil, executable: String, arguments: [String], logPath: String,
                environment: [String: String]? = nil, logFile: LogFile = .fresh) {
        self.name = name ?? (executable as NSString).lastPathComponent
        self.executable = executable
        self.arguments = arguments
        self.logPath = logPath
        self.environment = environment
        self.logFile = logFile
    }

    deinit { child?.terminate(graceSeconds: 2) }

    private var current: ChildProcess? { lock.withLock { child } }

    /// Sets (or, with nil, removes) a variable of the environment the next start uses.
    public func setEnvironment(_ key: String, _ value: String?) {
        lock.withLock {
            var env = environment ?? ProcessInfo.processInfo.environment
            env[key] = value
            environment = env
        }
    }

    /// The PID while the program runs.
    public var pid: Int32? { current.flatMap { $0.isRunning ? $0.pid : nil } }
    public var isRunning: Bool { current?.isRunning ?? false }
    /// Exit status once the last run ended: its exit code, or 128 + signal number.
    public var exitStatus: Int32? { current?.exitCode }
    /// Runs that ended without `stop` or `kill9` (name, PID, how, where the log is).
    public var problems: [String] { lock.withLock { unexpectedExits } }
    /// How often the program was started.
    public var starts: Int { lock.withLock { startCount } }

    /// Starts the program, unless it is running already.
    public func start() throws {
        try lock.withLock {
            if let c = child, c.isRunning { return }
            switch logFile {
            case .fresh:
                FileManager.default.createFile(atPath: logPath, contents: nil)
            case .appendWithBanner:
                let banner = Data("---- start #\(startCount + 1) at \(Date())\n".utf8)
                if let h = FileHandle(forWritingAtPath: logPath) {
                    h.seekToEndOfFile()
                    h.write(banner)
                    try? h.close()
                } else {
                    FileManager.default.createFile(atPath: logPath, contents: banner)
                }
            }
            child = try ChildProcess.spawn(executable, arguments, environment: environment, stdoutPath: logPath,
                                           stderrPath: logPath) { [weak self] c in self?.exited(c) }
            stoppedByOwner = false
            startCount += 1
        }
    }

    private func exited(_ c: ChildProcess) {
        lock.withLock {
            guard child === c, !stoppedByOwner else { return }
            unexpectedExits.append("\(name) (pid \(c.pid)) exited on its own: \(c.ending ?? "?"); see \(logPath)")
        }
    }

    /// Marks the coming end as the owner's and returns the running child, if any.
    private func stopping() -> ChildProcess? {
        lock.withLock {
            stoppedByOwner = true
            return child.flatMap { $0.isRunning ? $0 : nil }
        }
    }

    /// SIGCONT + SIGTERM, then SIGKILL after `grace`; returns when it has ended. Blocks the thread.
    public func stop(grace: Duration = .seconds(10)) {
        stopping()?.terminate(graceSeconds: grace.inSeconds)
    }

    /// SIGKILL: a crash or power cut, as far as the program can tell. Waits for it to be gone.
    public func kill9() {
        guard let c = stopping() else { return }
        c.signal(SIGKILL)
        c.wait()
    }

    /// SIGSTOP: a hung process.
    public func pause() { current?.signal(SIGSTOP) }

    /// SIGCONT.
    public func resume() { current?.signal(SIGCONT) }

    /// Waits until the program exits by itself, up to `timeout`; returns its status or nil.
    public func waitForExit(timeout: Duration) -> Int32? {
        guard let c = current else { return nil }
        c.wait(timeoutSeconds: timeout.inSeconds)
        return c.exitCode
    }

    /// The whole log file.
    public func log() -> String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// The last `bytes` of the log file, for failure messages.
    public func tail(_ bytes: Int = 3000) -> String {
        guard let d = FileManager.default.contents(atPath: logPath) else { return "" }
        return String(decoding: d.suffix(bytes), as: UTF8.self)
    }
}
