// Both programs' /metrics endpoints against Prometheus' own tools: `promtool check metrics`
// (every family has HELP and TYPE, names and units follow the conventions) and a real
// Prometheus server, started here on loopback, that scrapes them (the format parses and the
// values can be queried). The device is `fieldlog-device run` and the backend
// `fieldlog-backend ingest`, both real processes on the test stack, with a reading stored so
// that the labelled families (messages by kind, lag by device) exist too. On the way, the
// device's data budget (issue 19) is checked end to end: counted, sent in its status, stored.
import FieldlogCore
import Foundation
import Processes
import TestSupport
import XCTest

final class MetricsLintTests: XCTestCase {
    func testBothEndpointsPassPromtoolAndAreScrapedByPrometheus() async throws {
        let db = try TestDatabase("metrics")
        defer { db.drop() }
        _ = try await db.migrated()
        let dir = try TemporaryDirectory("metrics-lint")
        defer { if (testRun?.totalFailureCount ?? 0) == 0 { dir.remove() } else { print("logs kept in \(dir.path)") } }
        let stack = db.stack

        var backendEnv = db.environment
        let backendPort = Ports.free()
        backendEnv["FIELDLOG_METRICS_PORT"] = String(backendPort)
        let backend = try BackendProcess.ingest("ingest", environment: backendEnv, directory: dir)
        defer { backend.stop() }
        try BackendProcess.waitRunning(backend)

        let device = Stack.uniqueName("metrics-dev")
        let password = Stack.uniqueName("pw")
        try stack.addMQTTUser(device, password: password)
        let devicePort = Ports.free()
        let deviceProcess = ManagedProcess(
            executable: try Binaries.path("fieldlog-device"), arguments: ["run"], logPath: dir.file("device.log"),
            environment: [
                "PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin",
                "FIELDLOG_DEVICE_ID": device, "LOG_PATH": dir.file("device.sqlite3"),
                "INTERVAL_SECONDS": "0.2", "SYNC_INTERVAL_SECONDS": "0.2",
                "MQTT_HOST": stack.mqttHost, "MQTT_PORT": String(stack.mqttPort), "MQTT_PASSWORD": password,
                "REDIS_ENABLE": "false", "STATUS_HTTP_PORT": String(devicePort),
            ])
        try deviceProcess.start()
        defer { deviceProcess.stop() }

        // A few readings stored and acked, so every family (and the labelled ones) has samples.
        let endpoints = ["device": "127.0.0.1:\(devicePort)", "backend": "127.0.0.1:\(backendPort)"]
        try await eventually("a reading stored and acked", timeout: .seconds(60)) {
            let text = try? Shell.run("curl", ["-sf", "--max-time", "5", "http://\(endpoints["device"]!)/metrics"])
            return text?.split(separator: "\n").contains { $0.hasPrefix("fieldlog_device_acks_total ") && !$0.hasSuffix(" 0") } == true
        }

        // The data budget went from the device's status messages into the backend's table.
        try await eventually("the device's data usage recorded", timeout: .seconds(60)) {
            let sent = try db.scalar("SELECT COALESCE(MAX(sent_bytes), 0) FROM device_data_usage WHERE device_id = '\(device)'")
            return (Int(sent) ?? 0) > 0
        }
        let status = try Shell.run("curl", ["-sf", "--max-time", "5", "http://\(endpoints["device"]!)/status"])
        XCTAssertTrue(status.contains("\"data_sent_bytes\":"), status)

        // promtool: no problem reported for either endpoint.
        for (name, address) in endpoints.sorted(by: { $0.key < $1.key }) {
            let text = try Shell.run("curl", ["-sf", "--max-time", "5", "http://\(address)/metrics"])
            // Exits non-zero, naming each problem on standard error, when it finds any.
            XCTAssertNoThrow(try Shell.run("promtool", ["check", "metrics"], input: text), "\(name)'s metrics:\n\(text)")
            for line in text.split(separator: "\n") where line.hasPrefix("# TYPE ") {
                let family = line.split(separator: " ")[2]
                XCTAssertTrue(text.contains("# HELP \(family) "), "\(name): \(family) has TYPE but no HELP")
            }
        }

        // A real Prometheus scrapes both and answers a query over what it scraped.
        let promPort = Ports.free()
        let config = """
            global:
              scrape_interval: 1s
              scrape_timeout: 1s
            scrape_configs:
              - job_name: device
                static_configs: [{targets: ["\(endpoints["device"]!)"]}]
              - job_name: backend
                static_configs: [{targets: ["\(endpoints["backend"]!)"]}]
            """
        try config.write(toFile: dir.file("prometheus.yml"), atomically: true, encoding: .utf8)
        let prometheus = ManagedProcess(
            executable: "/usr/bin/prometheus",
            arguments: ["--config.file=\(dir.file("prometheus.yml"))", "--storage.tsdb.path=\(dir.file("tsdb"))",
                        "--web.listen-address=127.0.0.1:\(promPort)", "--log.level=warn"],
            logPath: dir.file("prometheus.log"), environment: ["PATH": "/usr/bin:/bin"])
        try prometheus.start()
        defer { prometheus.stop() }
        try Ports.waitListening(promPort, timeout: .seconds(60), what: "prometheus")

        func query(_ q: String) throws -> String {
            try Shell.run("curl", ["-sf", "--max-time", "5", "--get", "--data-urlencode", "query=\(q)",
                                   "http://127.0.0.1:\(promPort)/api/v1/query"])
        }
        try await eventually("both targets scraped and up", timeout: .seconds(60)) {
            let up = try query("sum(up{job=~\"device|backend\"})")
            return up.contains("\"2\"]")
        }
        let targets = try Shell.run("curl", ["-sf", "--max-time", "5", "http://127.0.0.1:\(promPort)/api/v1/targets"])
        XCTAssertFalse(targets.contains("\"health\":\"down\""), targets)
        XCTAssertTrue(targets.contains("\"lastError\":\"\""), targets)
        try await eventually("the device's appends and the backend's inserts queried", timeout: .seconds(30)) {
            let appends = try query("fieldlog_device_appends_total")
            let inserted = try query("fieldlog_rows_inserted_total")
            return appends.contains("\"job\":\"device\"") && inserted.contains("\"job\":\"backend\"")
        }
    }

    func eventually(_ what: String, timeout: Duration, _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if (try? await condition()) == true { return }
            try await Task.sleep(for: .milliseconds(250))
        }
        XCTFail("timed out waiting for \(what)")
        throw CommandFailed(description: "timed out waiting for \(what)")
    }
}
