// A child process of the lab (a device node, an ingest process): started, killed, paused,
// resumed and restarted by PID — never by name — with its output appended to a log file.
// The lab remembers which stops it caused, so a process that dies on its own is reported.
import Foundation
import Processes

/// A process the lab owns.
public final class LabProcess: @unchecked Sendable {
    // @unchecked: mutable state is only touched under `lock`.
    public let name: String
    public let executable: String
    public let arguments: [String]
    public let logPath: String
    private let lock = NSLock()
    private var environment: [String: String]
    private var process: ChildProcess?
    private var stoppedByLab = true
    private var paused = false
    private var unexpectedExits: [String] = []
    public private(set) var starts = 0

    public init(name: String, executable: String, arguments: [String], environment: [String: String], logPath: String) {
        self.name = name
        self.executable = executable
        self.arguments = arguments
        self.environment = environment
        self.logPath = logPath
    }

    /// The environment the next start uses.
    public func setEnvironment(_ key: String, _ value: String?) { lock.withLock { environment[key] = value } }
    public var currentEnvironment: [String: String] { lock.withLock { environment } }

    public var pid: Int32? { lock.withLock { process.flatMap { $0.isRunning ? $0.pid : nil } } }
    public var isRunning: Bool { lock.withLock { process?.isRunning ?? false } }
    public var isPaused: Bool { lock.withLock { paused } }
    /// Exits the lab did not cause (name, status, reason).
    public var problems: [String] { lock.withLock { unexpectedExits } }

    public func start() throws {
        try lock.withLock {
            if let p = process, p.isRunning { return }
            let banner = "---- lab: start #\(starts + 1) at \(Date())\n"
            if let h = FileHandle(forWritingAtPath: logPath) {
                h.seekToEndOfFile(); h.write(Data(banner.utf8)); try? h.close()
            } else {
                try banner.write(toFile: logPath, atomically: false, encoding: .utf8)
            }
            let p = try ChildProcess.spawn(executable, arguments, environment: environment, stdoutPath: logPath, stderrPath: logPath) { [weak self] c in
                self?.exited(c)
            }
            process = p
            stoppedByLab = false
            paused = false
            starts += 1
        }
    }

    private func exited(_ c: ChildProcess) {
        lock.withLock {
            guard process === c, !stoppedByLab else { return }
            unexpectedExits.append("\(name) (pid \(c.pid)) exited on its own: \(c.ending ?? "?"); see \(logPath)")
        }
    }

    /// SIGKILL: a crash or power cut as far as the process can tell. Waits for it to be gone.
    public func kill9() {
        guard let p = lock.withLock({ () -> ChildProcess? in stoppedByLab = true; paused = false; return process }), p.isRunning else { return }
        p.signal(SIGKILL)
        p.wait()
    }

    /// SIGTERM (graceful), SIGKILL after `graceSeconds`.
    public func stop(graceSeconds: Double = 10) {
        guard let p = lock.withLock({ () -> ChildProcess? in stoppedByLab = true; paused = false; return process }), p.isRunning else { return }
        p.terminate(graceSeconds: graceSeconds)
    }

    /// SIGSTOP: a hung process.
    public func pause() {
        lock.withLock {
            guard let p = process, p.isRunning else { return }
            p.signal(SIGSTOP)
            paused = true
        }
    }

    /// SIGCONT.
    public func resume() {
        lock.withLock {
            guard let p = process, p.isRunning else { return }
            p.signal(SIGCONT)
            paused = false
        }
    }

    /// The last `bytes` of the log, for failure messages.
    public func tail(_ bytes: Int = 3000) -> String {
        guard let d = FileManager.default.contents(atPath: logPath) else { return "" }
        return String(decoding: d.suffix(bytes), as: UTF8.self)
    }
}
