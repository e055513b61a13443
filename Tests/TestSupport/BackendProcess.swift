// `fieldlog-backend` as a child process of a test, on a database of the test stack.
import Foundation
import Processes

extension Stack {
    /// Environment for a spawned `fieldlog-backend` that uses `database` on this stack (metrics
    /// endpoint off unless the test sets FIELDLOG_METRICS_PORT).
    public func backendEnvironment(database: String) -> [String: String] {
        var env = ProcessInfo.processInfo.environment
        env["FIELDLOG_MARIADB_ADDRESSES"] = "\(mariaDBHost):\(mariaDBPort)"
        env["FIELDLOG_MARIADB_USER"] = mariaDBUser
        env["FIELDLOG_MARIADB_PASSWORD"] = mariaDBPassword
        env["FIELDLOG_MARIADB_DATABASE"] = database
        env["FIELDLOG_MQTT_HOST"] = mqttHost
        env["FIELDLOG_MQTT_PORT"] = String(mqttPort)
        env["FIELDLOG_MQTT_BACKEND_USER"] = mqttBackendUser
        env["FIELDLOG_MQTT_BACKEND_PASSWORD"] = mqttBackendPassword
        env["FIELDLOG_METRICS_PORT"] = "0"
        return env
    }
}

struct IngestDidNotStart: Error, CustomStringConvertible { public var description: String }

/// `fieldlog-backend` (the built binary) as a child process.
public enum BackendProcess {
    /// The value of an unlabelled counter in Prometheus text, 0 when absent.
    public static func counter(_ name: String, in text: String) -> Double {
        for line in text.split(separator: "\n") where line.hasPrefix(name + " ") {
            return Double(line.split(separator: " ").last ?? "") ?? 0
        }
        return 0
    }

    /// Starts `fieldlog-backend ingest`, its output in `<directory>/<name>.log`. Unless the
    /// environment names one, the process gets an MQTT client id of its own (its persistent
    /// session), so the ingest processes of one test, and of tests before it, never share one.
    public static func ingest(_ name: String, environment: [String: String], directory: TemporaryDirectory) throws -> ManagedProcess {
        var environment = environment
        if environment["FIELDLOG_INGEST_CLIENT_ID"] == nil { environment["FIELDLOG_INGEST_CLIENT_ID"] = Stack.uniqueName("ingest-\(name)") }
        let p = ManagedProcess(executable: try Binaries.path("fieldlog-backend"), arguments: ["ingest"],
                               logPath: directory.file("\(name).log"), environment: environment)
        try p.start()
        return p
    }

    /// Waits until the process logged that it is subscribed and running.
    public static func waitRunning(_ p: ManagedProcess, timeout: Duration = .seconds(30)) throws {
        let deadline = ContinuousClock.now + timeout
        while !p.log().contains("ingest running") {
            guard p.isRunning, ContinuousClock.now < deadline else {
                throw IngestDidNotStart(description: "ingest did not start: \(p.log())")
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
    }

    /// Runs a one-shot command (`migrate`, `audit --json`, …); returns its exit status and
    /// standard output.
    public static func run(_ arguments: [String], environment: [String: String]) throws -> (status: Int32, output: String) {
        let r = try Tool.status(try Binaries.path("fieldlog-backend"), arguments, environment: environment, timeoutSeconds: 300)
        return (r.status, r.stdout)
    }
}
