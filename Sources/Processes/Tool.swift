// Running a program to completion and reading what it printed.
import Foundation

/// Runs command-line tools (scripts/stack, mariadb, redis-cli, mosquitto_passwd, ss …).
public enum Tool {
    /// The result of a finished tool.
    public struct Outcome: Sendable {
        /// Exit status, or 128 + signal.
        public var status: Int32
        public var stdout: String
        public var stderr: String
    }

    /// Runs `tool` (a path or a name in PATH) to completion and returns its status and output.
    /// Output goes through temporary files, not pipes: a daemon started by the tool
    /// (scripts/stack up) may inherit the descriptors and would keep a pipe open forever.
    /// `input`, when given, is its standard input. Kills it and throws after `timeoutSeconds`.
    public static func status(_ tool: String, _ arguments: [String], environment: [String: String]? = nil,
                              input: String? = nil, timeoutSeconds: Double = 120) throws -> Outcome {
        let base = FileManager.default.temporaryDirectory.path + "/fieldlog-tool-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        let outPath = base + ".out", errPath = base + ".err", inPath = base + ".in"
        defer { for p in [outPath, errPath, inPath] { try? FileManager.default.removeItem(atPath: p) } }
        if let input {
            guard FileManager.default.createFile(atPath: inPath, contents: Data(input.utf8)) else {
                throw ProcessError("cannot write the input of \(tool) to \(inPath)")
            }
        }
        var env = environment ?? ProcessInfo.processInfo.environment
        if env["PATH"] == nil { env["PATH"] = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin" }
        let child = try ChildProcess.spawn(tool, arguments, environment: env, stdinPath: input == nil ? "/dev/null" : inPath,
                                           stdoutPath: outPath, stderrPath: errPath)
        guard child.wait(timeoutSeconds: timeoutSeconds) else {
            child.signal(SIGKILL)
            child.wait()
            throw ProcessError("\(tool) did not finish within \(Int(timeoutSeconds)) s")
        }
        let stdout = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
        let stderr = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
        return Outcome(status: child.exitCode ?? -1, stdout: stdout, stderr: stderr)
    }

    /// Runs `tool` to completion and returns its standard output; throws with (the end of) its
    /// standard error when the exit status is not in `allowedExitCodes`. Password arguments
    /// (`-pSECRET`) are masked in the message.
    @discardableResult
    public static func run(_ tool: String, _ arguments: [String], environment: [String: String]? = nil, input: String? = nil,
                           timeoutSeconds: Double = 120, allowedExitCodes: Set<Int32> = [0]) throws -> String {
        let r = try status(tool, arguments, environment: environment, input: input, timeoutSeconds: timeoutSeconds)
        guard allowedExitCodes.contains(r.status) else {
            let shown = arguments.map { $0.hasPrefix("-p") && $0.count > 2 ? "-p***" : $0 }.joined(separator: " ")
            throw ProcessError("\(tool) \(shown) exited \(r.status): \(r.stderr.suffix(2000))")
        }
        return r.stdout
    }

    /// The path of `tool` in PATH, or nil.
    public static func which(_ tool: String) -> String? {
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            let p = "\(dir)/\(tool)"
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        return nil
    }
}
