// Child processes without Foundation's `Process`: posix_spawn, output appended to files, and a
// thread of its own per child blocked in waitpid(2), so how and when a child ended is known
// exactly. (Foundation's `Process` needs the main run loop to notice an exit: from an async
// `main` or an async test it never noticed, so every stop waited its whole grace period.)
//
// Used by the outage lab, the benchmarks and the tests: every program Fieldlog starts for
// itself (brokers, databases, device and backend processes, tools) goes through here.
import Foundation

/// What went wrong starting or running a child process.
struct ProcessError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A child process started with posix_spawn, owned by PID (never looked up by name).
public final class ChildProcess: @unchecked Sendable {
    // @unchecked: `waitStatus` and `onExit` are only touched under `lock`; the rest is immutable.
    public let pid: pid_t
    /// The file standard output is appended to.
    public let stdoutPath: String
    private let lock = NSLock()
    private var waitStatus: Int32?
    private let ended = DispatchSemaphore(value: 0)
    private var onExit: (@Sendable (ChildProcess) -> Void)?

    private init(pid: pid_t, stdoutPath: String, onExit: (@Sendable (ChildProcess) -> Void)?) {
        self.pid = pid
        self.stdoutPath = stdoutPath
        self.onExit = onExit
    }

    /// Starts `executable` (a path, or a name looked up in PATH) with stdin from `stdinPath`
    /// (/dev/null unless given) and stdout/stderr appended to the given files (the same file for
    /// both when the paths are equal). `environment` nil means this process's environment. `onExit` runs once, on the
    /// child's wait thread, when it has ended.
    public static func spawn(_ executable: String, _ arguments: [String], environment: [String: String]? = nil,
                             stdinPath: String = "/dev/null", stdoutPath: String, stderrPath: String,
                             onExit: (@Sendable (ChildProcess) -> Void)? = nil) throws -> ChildProcess {
        var fa = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&fa)
        defer { posix_spawn_file_actions_destroy(&fa) }
        posix_spawn_file_actions_addopen(&fa, 0, stdinPath, O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&fa, 1, stdoutPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        if stderrPath == stdoutPath {
            posix_spawn_file_actions_adddup2(&fa, 1, 2)
        } else {
            posix_spawn_file_actions_addopen(&fa, 2, stderrPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        }
        // A child inherits the signal mask of the thread that spawns it, and Swift concurrency /
        // Dispatch worker threads block most signals: a broker started from an async context
        // would then ignore SIGHUP (no password reload) and SIGTERM (no clean stop). Start every
        // child with no blocked signals and default handlers.
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attr, &none)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for s in [SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGCHLD, SIGUSR1, SIGUSR2] { sigaddset(&defaults, s) }
        posix_spawnattr_setsigdefault(&attr, &defaults)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let env = environment ?? ProcessInfo.processInfo.environment
        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for p in argv + envp { free(p) } }
        var pid: pid_t = 0
        let rc = executable.contains("/")
            ? posix_spawn(&pid, executable, &fa, &attr, argv, envp)
            : posix_spawnp(&pid, executable, &fa, &attr, argv, envp)
        guard rc == 0 else { throw ProcessError("cannot start \(executable): \(String(cString: strerror(rc)))") }
        let child = ChildProcess(pid: pid, stdoutPath: stdoutPath, onExit: onExit)
        let t = Thread {
            var st: Int32 = 0
            while waitpid(child.pid, &st, 0) < 0 && errno == EINTR {}
            let handler = child.lock.withLock { () -> (@Sendable (ChildProcess) -> Void)? in
                child.waitStatus = st
                defer { child.onExit = nil }
                return child.onExit
            }
            child.ended.signal()
            handler?(child)
        }
        t.name = "wait \(pid)"
        t.start()
        return child
    }

    public var isRunning: Bool { lock.withLock { waitStatus == nil } }

    /// "exit N" or "signal N" once ended.
    public var ending: String? {
        lock.withLock {
            guard let st = waitStatus else { return nil }
            return st & 0x7f == 0 ? "exit \((st >> 8) & 0xff)" : "signal \(st & 0x7f)"
        }
    }

    /// The exit status (or 128 + signal) once ended.
    var exitCode: Int32? {
        lock.withLock {
            guard let st = waitStatus else { return nil }
            return st & 0x7f == 0 ? (st >> 8) & 0xff : 128 + (st & 0x7f)
        }
    }

    /// Waits until the child ended; false when `timeoutSeconds` passed first. Blocks the thread:
    /// from async code use `stop(grace:)` or poll `isRunning`.
    @discardableResult
    public func wait(timeoutSeconds: Double = .infinity) -> Bool {
        if !isRunning { return true }
        if timeoutSeconds.isInfinite { ended.wait(); ended.signal(); return true }
        let ok = ended.wait(timeout: .now() + timeoutSeconds) == .success
        if ok { ended.signal() }
        return ok
    }

    /// Sends `s` while the child runs (never to a reaped, possibly reused PID).
    public func signal(_ s: Int32) { lock.withLock { if waitStatus == nil { kill(pid, s) } } }

    /// SIGCONT + SIGTERM, then SIGKILL after `graceSeconds`; returns when it has ended.
    func terminate(graceSeconds: Double = 10) {
        guard isRunning else { return }
        signal(SIGCONT)
        signal(SIGTERM)
        if !wait(timeoutSeconds: graceSeconds) { signal(SIGKILL); wait() }
    }

    /// `terminate` for async callers: polls instead of blocking a cooperative thread.
    public func stop(grace: Duration = .seconds(10)) async {
        guard isRunning else { return }
        signal(SIGCONT)
        signal(SIGTERM)
        let start = ContinuousClock.now
        while isRunning && ContinuousClock.now - start < grace { try? await Task.sleep(for: .milliseconds(20)) }
        if isRunning {
            signal(SIGKILL)
            while isRunning { try? await Task.sleep(for: .milliseconds(20)) }
        }
    }

    /// The last `lines` lines of the standard-output file, for failure messages.
    public func tail(_ lines: Int = 20) -> String {
        let text = (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? ""
        return text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n")
    }
}
