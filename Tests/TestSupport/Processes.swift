// Ports, directories and tools for tests that need services of their own (the process
// wrapper is Processes' ManagedProcess).
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
