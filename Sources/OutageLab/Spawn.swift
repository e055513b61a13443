// Child processes without Foundation's Process: posix_spawn, output appended to files, and a
// thread of its own per child blocked in waitpid(2), so how and when a child ended is known
// exactly (Foundation's Process did not notice its children exit in the command-line tool).
import Foundation

/// A child process started with posix_spawn.
public final class Child: @unchecked Sendable {
    // @unchecked: `waitStatus` is only touched under `lock`; `pid` is immutable.
    public let pid: pid_t
    private let lock = NSLock()
    private var waitStatus: Int32?
    private let ended = DispatchSemaphore(value: 0)
    private var onExit: (@Sendable (Child) -> Void)?

    private init(pid: pid_t, onExit: (@Sendable (Child) -> Void)?) {
        self.pid = pid
        self.onExit = onExit
    }

    /// Starts `executable` (a path, or a name looked up in PATH) with stdin from /dev/null and
    /// stdout/stderr appended to the given files.
    public static func spawn(_ executable: String, _ arguments: [String], environment: [String: String],
                             stdoutPath: String, stderrPath: String, onExit: (@Sendable (Child) -> Void)? = nil) throws -> Child {
        var fa = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&fa)
        defer { posix_spawn_file_actions_destroy(&fa) }
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&fa, 1, stdoutPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        if stderrPath == stdoutPath {
            posix_spawn_file_actions_adddup2(&fa, 1, 2)
        } else {
            posix_spawn_file_actions_addopen(&fa, 2, stderrPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        }
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attr, &none)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for s in [SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGCHLD] { sigaddset(&defaults, s) }
        posix_spawnattr_setsigdefault(&attr, &defaults)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for p in argv + envp { free(p) } }
        var pid: pid_t = 0
        let rc = executable.contains("/")
            ? posix_spawn(&pid, executable, &fa, &attr, argv, envp)
            : posix_spawnp(&pid, executable, &fa, &attr, argv, envp)
        guard rc == 0 else { throw LabError.system("posix_spawn \(executable)", rc) }
        let child = Child(pid: pid, onExit: onExit)
        let t = Thread {
            var st: Int32 = 0
            while waitpid(child.pid, &st, 0) < 0 && errno == EINTR {}
            let handler = child.lock.withLock { () -> (@Sendable (Child) -> Void)? in
                child.waitStatus = st
                let h = child.onExit
                child.onExit = nil
                return h
            }
            child.ended.signal()
            handler?(child)
        }
        t.name = "fieldlog-lab wait \(pid)"
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
    public var exitCode: Int32? {
        lock.withLock {
            guard let st = waitStatus else { return nil }
            return st & 0x7f == 0 ? (st >> 8) & 0xff : 128 + (st & 0x7f)
        }
    }

    /// Waits until the child ended; false when `timeoutSeconds` passed first.
    @discardableResult
    public func wait(timeoutSeconds: Double = .infinity) -> Bool {
        if !isRunning { return true }
        if timeoutSeconds.isInfinite { ended.wait(); ended.signal(); return true }
        let ok = ended.wait(timeout: .now() + timeoutSeconds) == .success
        if ok { ended.signal() }
        return ok
    }

    public func signal(_ s: Int32) { if isRunning { kill(pid, s) } }
}
