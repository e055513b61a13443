// Test support: how integration tests reach real services.
//
// Theory of operation: `scripts/test` brings up one private stack (`scripts/stack up`) and
// exports its environment (FIELDLOG_STACK_DIR and friends, also written to
// `<stack dir>/stack.env`). Each suite then takes its own slice of that shared stack: its own
// MariaDB database, its own MQTT users (device ids with a random suffix, so topics never
// clash), its own Redis database index. Tests that must stop and restart a service (a broker
// outage, a TLS listener) start a private instance of their own on a free port with
// `PrivateService`, so they never disturb other suites.
//
// When a service is missing, `Stack.available()` returns nil so a developer without the
// stack sees skips; with FIELDLOG_REQUIRE_SERVICES=1 (as `scripts/test` sets) it throws
// instead, so CI never passes by skipping.
import Foundation

struct StackUnavailable: Error, CustomStringConvertible {
    public let description: String
}

/// Connection facts of the private stack started by `scripts/stack up`.
public struct Stack: Sendable {
    public var directory: String
    public var redisHost: String
    public var redisPort: Int
    public var mqttHost: String
    public var mqttPort: Int
    public var mqttBackendUser: String
    public var mqttBackendPassword: String
    var mqttPasswordFile: String
    var mqttPIDFile: String
    public var mariaDBHost: String
    public var mariaDBPort: Int
    public var mariaDBSocket: String
    public var mariaDBUser: String
    public var mariaDBPassword: String

    /// True when FIELDLOG_REQUIRE_SERVICES=1: a missing service is a failure, not a skip.
    public static var servicesRequired: Bool {
        ProcessInfo.processInfo.environment["FIELDLOG_REQUIRE_SERVICES"] == "1"
    }

    /// The stack, or nil when there is none and services are not required.
    /// Throws `StackUnavailable` when services are required but the stack cannot be reached.
    public static func available() throws -> Stack? {
        do {
            let stack = try load()
            try stack.checkReachable()
            return stack
        } catch let error as StackUnavailable {
            if servicesRequired { throw error }
            return nil
        }
    }

    /// The stack; throws when it is not there (for tests that cannot run without it).
    public static func required() throws -> Stack {
        let stack = try load()
        try stack.checkReachable()
        return stack
    }

    static func load() throws -> Stack {
        var values = ProcessInfo.processInfo.environment
        let candidates = [
            values["FIELDLOG_STACK_DIR"].map { $0 + "/stack.env" },
            packageRoot + "/.run/stack.env",
        ].compactMap { $0 }
        if values["FIELDLOG_MQTT_PORT"] == nil {
            guard let file = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }),
                  let text = try? String(contentsOfFile: file, encoding: .utf8)
            else {
                throw StackUnavailable(description: "no service stack: run `scripts/stack up` (looked for \(candidates.joined(separator: ", ")))")
            }
            for line in text.split(separator: "\n") where !line.hasPrefix("#") {
                let parts = line.split(separator: "=", maxSplits: 1).map(String.init)
                if parts.count == 2 { values[parts[0]] = parts[1] }
            }
        }
        func value(_ key: String) throws -> String {
            guard let v = values[key], !v.isEmpty else { throw StackUnavailable(description: "stack environment lacks \(key)") }
            return v
        }
        func port(_ key: String) throws -> Int {
            guard let p = Int(try value(key)) else { throw StackUnavailable(description: "\(key) is not a port number") }
            return p
        }
        return Stack(
            directory: try value("FIELDLOG_STACK_DIR"),
            redisHost: try value("FIELDLOG_REDIS_HOST"), redisPort: try port("FIELDLOG_REDIS_PORT"),
            mqttHost: try value("FIELDLOG_MQTT_HOST"), mqttPort: try port("FIELDLOG_MQTT_PORT"),
            mqttBackendUser: try value("FIELDLOG_MQTT_BACKEND_USER"),
            mqttBackendPassword: try value("FIELDLOG_MQTT_BACKEND_PASSWORD"),
            mqttPasswordFile: try value("FIELDLOG_MQTT_PASSWORD_FILE"),
            mqttPIDFile: try value("FIELDLOG_MQTT_PID_FILE"),
            mariaDBHost: try value("FIELDLOG_MARIADB_HOST"), mariaDBPort: try port("FIELDLOG_MARIADB_PORT"),
            mariaDBSocket: try value("FIELDLOG_MARIADB_SOCKET"),
            mariaDBUser: try value("FIELDLOG_MARIADB_USER"), mariaDBPassword: try value("FIELDLOG_MARIADB_PASSWORD"))
    }

    func checkReachable() throws {
        for (name, port) in [("redis", redisPort), ("mosquitto", mqttPort), ("mariadb", mariaDBPort)] {
            guard Ports.isListening(port) else {
                throw StackUnavailable(description: "\(name) is not answering on 127.0.0.1:\(port): run `scripts/stack up`")
            }
        }
    }

    /// The package's root directory (where Package.swift is).
    public static let packageRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    // MARK: slices of the shared stack

    /// A unique name for this run: `prefix-<random>`, usable as device id, database name or topic part.
    public static func uniqueName(_ prefix: String) -> String {
        let suffix = String(UInt64.random(in: 0...UInt64.max), radix: 36)
        return "\(prefix)-\(suffix)"
    }

    /// Adds (or updates) an MQTT user on the shared broker and waits until the broker reloaded it.
    public func addMQTTUser(_ name: String, password: String) throws {
        try Shell.run("mosquitto_passwd", ["-b", mqttPasswordFile, name, password])
        let pidText = try String(contentsOfFile: mqttPIDFile, encoding: .utf8)
        guard let pid = Int32(pidText.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw StackUnavailable(description: "bad mosquitto pid file \(mqttPIDFile)")
        }
        kill(pid, SIGHUP)
        // mosquitto reloads on its next loop iteration; a short pause is enough and cheap.
        Thread.sleep(forTimeInterval: 0.3)
    }

    /// Creates a fresh database on the shared MariaDB and returns its name.
    public func createDatabase(_ prefix: String = "test") throws -> String {
        let name = Stack.uniqueName(prefix).replacingOccurrences(of: "-", with: "_")
        try sql("CREATE DATABASE `\(name)` CHARACTER SET utf8mb4")
        return name
    }

    public func dropDatabase(_ name: String) throws {
        try sql("DROP DATABASE IF EXISTS `\(name)`")
    }

    /// Runs SQL with the `mariadb` client and returns its tab-separated output.
    @discardableResult
    public func sql(_ statement: String, database: String? = nil) throws -> String {
        var args = ["--no-defaults", "-h", mariaDBHost, "-P", String(mariaDBPort), "-u", mariaDBUser,
                    "-p" + mariaDBPassword, "--batch", "--skip-column-names", "-e", statement]
        if let database { args.append(database) }
        return try Shell.run("mariadb", args)
    }
}
