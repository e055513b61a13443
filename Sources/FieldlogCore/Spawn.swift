// Child processes by posix_spawn, for the device's command sensors and its reboot command
// (Foundation's Process is not in FoundationEssentials; see Threads.swift for why that matters).
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A program could not be started, or waited for (the message names it and the reason).
public struct SpawnError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Starting programs without a shell.
public enum Spawn {
    /// Starts `argv` (`argv[0]` a path, or a name that `/usr/bin/env` looks up in PATH) with the
    /// parent's environment and standard input on /dev/null. Standard output goes to `stdout`
    /// (nil: the parent's), standard error to the parent's or, with `discardingErrors`, to
    /// /dev/null. Descriptors opened with close-on-exec stay out of the child.
    public static func start(_ argv: [String], stdout: Int32? = nil, discardingErrors: Bool = false) throws(SpawnError) -> pid_t {
        precondition(!argv.isEmpty, "a program to start")
        let arguments = argv[0].hasPrefix("/") ? argv : ["/usr/bin/env"] + argv
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        if let stdout { posix_spawn_file_actions_adddup2(&actions, stdout, 1) }
        if discardingErrors { posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0) }
        var cArguments: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for p in cArguments { free(p) } }
        var pid = pid_t()
        let rc = posix_spawn(&pid, arguments[0], &actions, nil, &cArguments, environ)
        guard rc == 0 else { throw SpawnError("cannot start \(argv[0]): \(String(cString: strerror(rc)))") }
        return pid
    }

    /// The exit status of `pid` once it ended (128 + signal when killed), or nil while it runs.
    public static func exitStatus(_ pid: pid_t, block: Bool) throws(SpawnError) -> Int32? {
        var status: Int32 = 0
        while true {
            let r = waitpid(pid, &status, block ? 0 : WNOHANG)
            if r == pid { break }
            if r == 0 { return nil }
            if errno == EINTR { continue }
            throw SpawnError("cannot wait for process \(pid): \(String(cString: strerror(errno)))")
        }
        // WIFEXITED / WEXITSTATUS / WTERMSIG are macros Swift does not import.
        let signal = status & 0x7f
        return signal == 0 ? (status >> 8) & 0xff : 128 + signal
    }
}
