// `fieldlog-backend ingest` as real processes, through the real broker (shared subscription)
// into the real MariaDB: end to end, one of two processes killed with SIGKILL mid-stream, a
// MariaDB outage on a private server, audit exit codes and a gap made on purpose.
import FieldlogCore
import Foundation
import Logging
import MariaDB
import Sync
import TestSupport
import XCTest
@testable import BackendStore
@testable import Ingest
@testable import Audit
@testable import WebAdmin

final class IngestProcessTests: XCTestCase {
    func testTwoIngestProcessesOneKilledMidStreamStoreEverythingExactlyOnceAndAuditFindsAGapMadeOnPurpose() async throws {
        let db = try TestDatabase("e2e")
        defer { db.drop() }
        let setup = try await db.migrated()
        let dir = try TemporaryDirectory("ingest-e2e")
        defer { if testRun?.hasSucceeded == true { dir.remove() } else { print("ingest logs kept in \(dir.path)") } }
        let (broker, user, password) = try privateBroker()
        var env = db.environment
        env["FIELDLOG_MQTT_HOST"] = "127.0.0.1"
        env["FIELDLOG_MQTT_PORT"] = String(broker.port)
        env["FIELDLOG_MQTT_BACKEND_USER"] = user
        env["FIELDLOG_MQTT_BACKEND_PASSWORD"] = password
        let a = try BackendProcess.ingest("a", environment: env, directory: dir)
        let metricsPort = Ports.free()
        var envB = env
        envB["FIELDLOG_METRICS_PORT"] = String(metricsPort)
        let b = try BackendProcess.ingest("b", environment: envB, directory: dir)
        defer { a.stop(); b.stop() }
        try BackendProcess.waitRunning(a)
        try BackendProcess.waitRunning(b)

        var devices: [SimDevice] = []
        for _ in 0..<3 { devices.append(try await SimDevice.connect(broker: broker, records: 400)) }
        // First half of every device's batches, then SIGKILL one process while they are in flight.
        for d in devices { try await d.publish(0..<20) }
        a.kill9()
        for d in devices { try await d.publish(20..<d.batchCount) }
        for d in devices {
            let through = try await d.sync(timeout: .seconds(40))
            XCTAssertEqual(through, SequenceNumber(400), "device \(d.id) fully acked")
        }
        for d in devices {
            XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM readings WHERE device_id = '\(d.id)'"), "400")
            XCTAssertEqual(try db.scalar("SELECT CONCAT(MIN(seq), ' ', MAX(seq)) FROM readings WHERE device_id = '\(d.id)'"), "1 400")
            XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM reading_values WHERE device_id = '\(d.id)'"), "800", "two values per reading, through the view")
        }
        let metrics = try Shell.run("curl", ["-sf", "http://127.0.0.1:\(metricsPort)/metrics"])
        for name in ["fieldlog_rows_inserted_total", "fieldlog_acks_sent_total", "fieldlog_commit_seconds_bucket",
                     "fieldlog_messages_received_total{kind=\"batch\"}", "fieldlog_device_lag_records{device=\"\(devices[0].id)\"}"] {
            XCTAssertTrue(metrics.contains(name), "\(name) in /metrics: \(metrics)")
        }
        var audit = try BackendProcess.run(["audit"], environment: env)
        XCTAssertEqual(audit.status, 0, audit.output)
        XCTAssertTrue(audit.output.contains("RESULT: nothing missing"), audit.output)

        // A gap on purpose: the first device skips 401…410 and sends 411…420.
        let d = devices[0]
        try await d.publish(Fixtures.batch(d.id, d.epoch, 411, 420))
        try await d.waitAcked(400, timeout: .seconds(5))
        let deadline = ContinuousClock.now + .seconds(10)
        while try db.scalar("SELECT COUNT(*) FROM readings WHERE device_id = '\(d.id)'") != "410", ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        try await Task.sleep(for: .milliseconds(300))
        XCTAssertEqual(d.acked, SequenceNumber(400), "the ack stops before the gap")
        XCTAssertTrue(d.acks.contains { $0.missing == [SequenceRange(checked: SequenceNumber(401), SequenceNumber(410))] }, "\(d.acks.suffix(3))")
        audit = try BackendProcess.run(["audit", "--device", d.id.rawValue, "--json"], environment: env)
        XCTAssertEqual(audit.status, 1, audit.output)
        let report = try JSONDecoder().decode(AuditReport.self, from: Data(audit.output.utf8))
        XCTAssertEqual(report.devices.first?.epochs.first?.gaps, [EpochAudit.Range(SequenceRange(checked: SequenceNumber(401), SequenceNumber(410)))])
        XCTAssertEqual(report.devices.first?.epochs.first?.storedThrough, 400)
        for d in devices { await d.close() }
        await setup.close()
    }

    func testMariaDBOutageStopsAcksAndLosesNothingAcrossARestart() async throws {
        guard try Stack.available() != nil else { throw XCTSkip("no service stack (run scripts/stack up)") }
        let (broker, user, password) = try privateBroker()
        let maria = try PrivateMariaDB()
        try maria.start()
        try maria.sql("CREATE DATABASE fieldlog CHARACTER SET utf8mb4")
        let dir = try TemporaryDirectory("ingest-outage")
        defer { dir.remove() }
        var env = ProcessInfo.processInfo.environment
        // The first address has no server: ingest fails over to the second.
        env["FIELDLOG_MARIADB_ADDRESSES"] = "127.0.0.1:\(Ports.free()),127.0.0.1:\(maria.port)"
        env["FIELDLOG_MARIADB_USER"] = maria.user
        env["FIELDLOG_MARIADB_PASSWORD"] = maria.password
        env["FIELDLOG_MARIADB_DATABASE"] = "fieldlog"
        env["FIELDLOG_MQTT_HOST"] = "127.0.0.1"
        env["FIELDLOG_MQTT_PORT"] = String(broker.port)
        env["FIELDLOG_MQTT_BACKEND_USER"] = user
        env["FIELDLOG_MQTT_BACKEND_PASSWORD"] = password
        env["FIELDLOG_METRICS_PORT"] = "0"
        let migrate = try BackendProcess.run(["migrate"], environment: env)
        XCTAssertEqual(migrate.status, 0, migrate.output)
        let ingest = try BackendProcess.ingest("ingest", environment: env, directory: dir)
        defer { ingest.stop() }
        try BackendProcess.waitRunning(ingest)

        let device = try await SimDevice.connect(broker: broker, records: 300)
        try await device.publish(0..<10)
        try await device.waitAcked(100, timeout: .seconds(10))
        XCTAssertEqual(device.acked, SequenceNumber(100))

        maria.kill9()
        try await device.publish(10..<20)
        try await Task.sleep(for: .seconds(2))
        XCTAssertEqual(device.acked, SequenceNumber(100), "nothing is acked while the database is down")
        XCTAssertTrue(ingest.isRunning, "ingest does not exit when the database is down")

        try maria.start()
        try await device.publish(20..<device.batchCount)
        let through = try await device.sync(timeout: .seconds(40))
        XCTAssertEqual(through, SequenceNumber(300))
        XCTAssertEqual(try maria.sql("SELECT COUNT(*), COUNT(DISTINCT seq), MIN(seq), MAX(seq) FROM readings", database: "fieldlog")
                        .trimmingCharacters(in: .whitespacesAndNewlines), "300\t300\t1\t300")
        let audit = try BackendProcess.run(["audit"], environment: env)
        XCTAssertEqual(audit.status, 0, audit.output)
        XCTAssertTrue(ingest.log().contains("reconnecting"), "the outage was noticed")
        await device.close()
    }
}

final class IngestBrokerTests: XCTestCase {
    /// On a broker of its own: an ingest process on the shared broker would also receive (and ack
    /// from its own test database) every other suite's device batches, breaking their tests.
    func testEndToEndThroughTheBrokerWithASharedSubscription() async throws {
        let db = try TestDatabase("shared")
        defer { db.drop() }
        let setup = try await db.migrated()
        let (broker, user, password) = try privateBroker()
        let dir = try TemporaryDirectory("ingest-shared")
        defer { dir.remove() }
        var env = db.environment
        env["FIELDLOG_MQTT_HOST"] = "127.0.0.1"
        env["FIELDLOG_MQTT_PORT"] = String(broker.port)
        env["FIELDLOG_MQTT_BACKEND_USER"] = user
        env["FIELDLOG_MQTT_BACKEND_PASSWORD"] = password
        env["FIELDLOG_INGEST_GROUP"] = Stack.uniqueName("ingest")
        let metricsPort = Ports.free()
        env["FIELDLOG_METRICS_PORT"] = String(metricsPort)
        let ingest = try BackendProcess.ingest("ingest", environment: env, directory: dir)
        defer { ingest.stop() }
        try BackendProcess.waitRunning(ingest)
        let device = try await SimDevice.connect(broker: broker, records: 50)
        try await device.publish(0..<device.batchCount)
        let deadline = ContinuousClock.now + .seconds(20)
        while try db.scalar("SELECT COUNT(*) FROM readings WHERE device_id = '\(device.id)'") != "50", ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM readings WHERE device_id = '\(device.id)'"), "50")
        try await device.waitAcked(50, timeout: .seconds(5))
        XCTAssertEqual(device.acked, SequenceNumber(50))
        // The counters move right after the commit and the ack; poll briefly.
        var metrics = ""
        let metricsDeadline = ContinuousClock.now + .seconds(5)
        repeat {
            metrics = try Shell.run("curl", ["-sf", "http://127.0.0.1:\(metricsPort)/metrics"])
            if BackendProcess.counter("fieldlog_acks_sent_total", in: metrics) >= 1 && metrics.contains("fieldlog_rows_inserted_total 50\n") { break }
            try await Task.sleep(for: .milliseconds(100))
        } while ContinuousClock.now < metricsDeadline
        // 5 batches: one ack each, or fewer when one commit's `through` covers several (spec §5.5 rule C).
        XCTAssertTrue((1...5).contains(BackendProcess.counter("fieldlog_acks_sent_total", in: metrics)), metrics)
        XCTAssertTrue(metrics.contains("fieldlog_rows_inserted_total 50\n"), metrics)
        await device.close()
        await setup.close()
    }

    func testABrokerRestartLosesNothing() async throws {
        let db = try TestDatabase("broker")
        defer { db.drop() }
        let setup = try await db.migrated()
        let (broker, user, password) = try privateBroker()
        let dir = try TemporaryDirectory("ingest-broker")
        defer { dir.remove() }
        var env = db.environment
        env["FIELDLOG_MQTT_HOST"] = "127.0.0.1"
        env["FIELDLOG_MQTT_PORT"] = String(broker.port)
        env["FIELDLOG_MQTT_BACKEND_USER"] = user
        env["FIELDLOG_MQTT_BACKEND_PASSWORD"] = password
        let ingest = try BackendProcess.ingest("ingest", environment: env, directory: dir)
        defer { ingest.stop() }
        try BackendProcess.waitRunning(ingest)
        let device = try await SimDevice.connect(broker: broker, records: 200)
        try await device.publish(0..<10)
        try await device.waitAcked(100, timeout: .seconds(10))
        broker.kill9()
        try await Task.sleep(for: .milliseconds(500))
        XCTAssertTrue(ingest.isRunning, "ingest does not exit when the broker is gone")
        try broker.start()
        try await device.publish(10..<device.batchCount)
        let through = try await device.sync(timeout: .seconds(30))
        XCTAssertEqual(through, SequenceNumber(200))
        XCTAssertEqual(try db.scalar("SELECT CONCAT(COUNT(*), ' ', MIN(seq), ' ', MAX(seq)) FROM readings WHERE device_id = '\(device.id)'"), "200 1 200")
        await device.close()
        await setup.close()
    }
}

final class ReplayCommandTests: XCTestCase {
    func testReplayPublishesTheCommandRecordsItAndRecordsTheDevicesAnswer() async throws {
        let db = try TestDatabase("replay")
        defer { db.drop() }
        let setup = try await db.migrated()
        let device = try await SimDevice.connect(stack: db.stack, records: 10)
        try await device.client.subscribe(TopicTemplates.defaults.request.topic(device: device.id), qos: .atLeastOnce)
        // The device answers the replay: 3…5 resent, 1…2 no longer retained.
        let answered = Task {
            for await m in device.otherMessages where m.topic.hasSuffix("/request") {
                guard let c = try? SyncCodec.decodeCommand(m.payload), case .replay(_, let range) = c.kind else { continue }
                XCTAssertEqual(range, SequenceRange(checked: SequenceNumber(1), SequenceNumber(5)))
                let r = CommandResponse(requestID: c.requestID, command: c.name, resent: SequenceRange(checked: SequenceNumber(3), SequenceNumber(5)),
                                        notRetained: [SequenceRange(checked: SequenceNumber(1), SequenceNumber(2))])
                try? await device.client.publish(TopicTemplates.defaults.response.topic(device: device.id), payload: SyncCodec.encode(r), qos: .atLeastOnce)
                return c.requestID
            }
            return nil
        }
        let result = try BackendProcess.run(["replay", "--device", device.id.rawValue, "--epoch", device.epoch.hex, "--from", "1", "--to", "5", "--wait", "10"],
                                     environment: db.environment)
        answered.cancel()
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("answer: resent 3…5; not-retained 1…2"), result.output)
        let answeredID = await answered.value
        let requestID = try XCTUnwrap(answeredID)
        XCTAssertEqual(try db.scalar("SELECT CONCAT(command, ' ', first_seq, ' ', last_seq, ' ', outcome) FROM commands WHERE request_id = '\(requestID)'"),
                       "replay 1 5 resent 3…5; not-retained 1…2")
        let bad = try BackendProcess.run(["replay", "--device", "no/such", "--from", "1", "--to", "5"], environment: db.environment)
        XCTAssertNotEqual(bad.status, 0)
        await device.close()
        await setup.close()
    }
}
