// The compact batch encoding end to end (spec §3.7): the real `fieldlog-device` configured with
// SYNC_ENCODING=compact samples three simulated sensors and syncs through a private mosquitto into
// MariaDB with a real `fieldlog-backend ingest`; every reading is stored exactly once with the
// values the device logged, nothing is dead-lettered, what travels is compact (seen by a witness
// subscriber), and a replay is answered in the compact encoding and absorbed as duplicates.
import FieldlogCore
import Foundation
import Logging
import MQTT
import Processes
import Sync
import TestSupport
import XCTest

final class CompactEncodingEndToEndTests: XCTestCase {
    /// Messages a witness saw on a device's batch and response topics.
    final class Witness: @unchecked Sendable {
        // @unchecked: `seen` is only touched under `lock`.
        private let lock = NSLock()
        private var seen: [MQTTMessage] = []
        func add(_ m: MQTTMessage) { lock.withLock { seen.append(m) } }
        var messages: [MQTTMessage] { lock.withLock { seen } }
    }

    func logStatus(_ logPath: String) throws -> (head: UInt64, acked: UInt64) {
        let out = try Shell.run(try Binaries.path("fieldlog-device"), ["log", "status", "--json", "--db", logPath])
        let o = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any], out)
        return (try XCTUnwrap((o["head"] as? NSNumber)?.uint64Value), try XCTUnwrap((o["acked_through"] as? NSNumber)?.uint64Value))
    }

    func poll(_ what: String, timeout: Duration, _ done: () throws -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while try !done() {
            guard ContinuousClock.now < deadline else { throw TimedOut(what: what) }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    struct TimedOut: Error, CustomStringConvertible {
        var what: String
        var description: String { "timed out waiting for \(what)" }
    }

    func testADeviceOnTheCompactEncodingIsStoredExactlyOnceAndAnswersAReplay() async throws {
        let db = try TestDatabase("compact")
        defer { db.drop() }
        let setup = try await db.migrated()
        await setup.close()
        let dir = try TemporaryDirectory("compact-e2e")
        defer { if (testRun?.failureCount ?? 0) == 0 { dir.remove() } else { print("logs kept in \(dir.path)") } }
        let (broker, user, password) = try privateBroker()
        defer { broker.stop() }
        let device = Fixtures.device("compact")
        try broker.addUser(device.rawValue, password: "device-pw")

        var env = db.environment
        env["FIELDLOG_MQTT_HOST"] = "127.0.0.1"
        env["FIELDLOG_MQTT_PORT"] = String(broker.port)
        env["FIELDLOG_MQTT_BACKEND_USER"] = user
        env["FIELDLOG_MQTT_BACKEND_PASSWORD"] = password
        let metricsPort = Ports.free()
        env["FIELDLOG_METRICS_PORT"] = String(metricsPort)
        let ingest = try BackendProcess.ingest("ingest", environment: env, directory: dir)
        defer { ingest.stop() }
        try BackendProcess.waitRunning(ingest)

        let topics = TopicTemplates.defaults
        let witness = Witness()
        let client = try MQTTClient(configuration: MQTTConfiguration(
            host: "127.0.0.1", port: broker.port, clientID: Stack.uniqueName("witness"), username: user, password: password,
            reconnect: MQTTReconnectPolicy(minDelay: .milliseconds(100), maxDelay: .seconds(1))), logger: Logger(label: "witness"))
        let messages = client.messages
        let listener = Task { for await m in messages { witness.add(m) } }
        defer { listener.cancel() }
        try await client.connect()
        try await client.subscribe(topics.batch.topic(device: device), qos: .atLeastOnce)
        try await client.subscribe(topics.response.topic(device: device), qos: .atLeastOnce)

        // Sample three simulated sensors at 50/s while syncing, compact.
        let logPath = dir.file("device.sqlite3")
        let deviceEnv = [
            "PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin",
            "FIELDLOG_DEVICE_ID": device.rawValue, "LOG_PATH": logPath,
            "INTERVAL_SECONDS": "0.02", "SENSORS": "random=simulated;temperature=simulated;humidity=simulated",
            "SYNC_ENCODING": "compact", "SYNC_INTERVAL_SECONDS": "0.2", "SYNC_BATCH_MAX_RECORDS": "100", "SYNC_RESEND_SECONDS": "2",
            "MQTT_HOST": "127.0.0.1", "MQTT_PORT": String(broker.port), "MQTT_PASSWORD": "device-pw", "MQTT_KEEPALIVE_SECONDS": "5",
            "REDIS_ENABLE": "false", "STATUS_HTTP_PORT": "0", "LOG_LEVEL": "info",
        ]
        let sampling = ManagedProcess(executable: try Binaries.path("fieldlog-device"), arguments: ["run"],
                                      logPath: dir.file("device-run.log"), environment: deviceEnv)
        try sampling.start()
        defer { sampling.stop() }
        try await poll("300 readings in the device's log", timeout: .seconds(60)) {
            guard sampling.isRunning else { throw TimedOut(what: "fieldlog-device run exited: \(sampling.log().suffix(2000))") }
            return (try? logStatus(logPath).head) ?? 0 >= 300
        }
        // Stop sampling; the sync-only program sends what is left (the log is the device's state).
        sampling.stop()
        let syncing = ManagedProcess(executable: try Binaries.path("fieldlog-device"), arguments: ["sync"],
                                     logPath: dir.file("device-sync.log"), environment: deviceEnv)
        try syncing.start()
        defer { syncing.stop() }
        var state = try logStatus(logPath)
        try await poll("the device's log to be acked through its head", timeout: .seconds(60)) {
            state = try logStatus(logPath)
            return state.acked == state.head
        }
        let head = state.head
        XCTAssertGreaterThanOrEqual(head, 300)

        // Exactly once, with the values the device logged.
        XCTAssertEqual(try db.scalar("SELECT CONCAT(COUNT(*), ' ', COUNT(DISTINCT seq), ' ', MIN(seq), ' ', MAX(seq)) FROM readings WHERE device_id = '\(device)'"),
                       "\(head) \(head) 1 \(head)")
        let dump = try Shell.run(try Binaries.path("fieldlog-device"), ["log", "dump", "--db", logPath])
        var logged: [String: Double] = [:]
        for line in dump.split(separator: "\n") {
            let o = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            let seq = try XCTUnwrap((o["seq"] as? NSNumber)?.uint64Value)
            for (name, value) in try XCTUnwrap(o["values"] as? [String: Any]) {
                logged["\(seq) \(name)"] = try XCTUnwrap((value as? NSNumber)?.doubleValue)
            }
        }
        XCTAssertEqual(logged.count, Int(head) * 3)
        var stored: [String: Double] = [:]
        for row in try db.stack.sql("SELECT seq, sensor, num_value FROM reading_values WHERE device_id = '\(device)'", database: db.name)
            .split(separator: "\n") {
            let cells = row.split(separator: "\t")
            guard cells.count == 3, let value = Double(cells[2]) else { continue }
            stored["\(cells[0]) \(cells[1])"] = value
        }
        XCTAssertEqual(stored, logged, "every value as the device logged it")
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM dead_letters"), "0")

        // What travelled was compact, announced as such.
        let batches = witness.messages.filter { $0.topic == topics.batch.topic(device: device) }
        XCTAssertFalse(batches.isEmpty)
        for m in batches {
            XCTAssertEqual(Array(m.payload.prefix(3)), Array("FLC".utf8))
            XCTAssertEqual(m.properties.contentType, CompactBatchCodec.contentType)
        }

        // A replay is answered in the compact encoding; the ingest absorbs it as duplicates.
        func duplicatesAbsorbed() throws -> Double {
            let metrics = try Shell.run("curl", ["-sf", "http://127.0.0.1:\(metricsPort)/metrics"])
            let line = metrics.split(separator: "\n").first { $0.hasPrefix("fieldlog_duplicates_absorbed_total ") }
            return line.flatMap { Double($0.split(separator: " ").last ?? "") } ?? 0
        }
        let before = try duplicatesAbsorbed()
        try await client.publish(topics.request.topic(device: device),
                                 payload: Array(#"{"v":1,"command":"replay","id":"r-compact","from":1,"to":50}"#.utf8), qos: .atLeastOnce)
        try await poll("the replay's response", timeout: .seconds(30)) {
            witness.messages.contains { $0.topic == topics.response.topic(device: device) && $0.payloadString.contains("r-compact") }
        }
        let response = try XCTUnwrap(witness.messages.last { $0.topic == topics.response.topic(device: device) })
        let answer = try SyncCodec.decodeCommandResponse(response.payload)
        XCTAssertTrue(answer.ok, "\(answer)")
        XCTAssertEqual(answer.resent, SequenceRange(checked: SequenceNumber(1), SequenceNumber(50)))
        let replayed = try witness.messages.filter { $0.topic == topics.batch.topic(device: device) }
            .map { try SyncCodec.decodeAnyBatch($0.payload, contentType: $0.properties.contentType, expectedDevice: device) }
            .filter { $0.replayRequestID == "r-compact" }
        XCTAssertEqual(replayed.map(\.range), [SequenceRange(checked: SequenceNumber(1), SequenceNumber(50))])
        try await poll("50 duplicates absorbed", timeout: .seconds(30)) { try duplicatesAbsorbed() >= before + 50 }
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM readings WHERE device_id = '\(device)'"), "\(head)", "still exactly once")
        await client.disconnect()
    }
}
