// Seed devices never resend: what the broker accepted from them must reach MariaDB through
// ingest restarts and broker restarts (issue 15 item 8). A seed-format publisher (QoS 1, the
// seed's message shape and stream ids) publishes a list every 50 ms while the test restarts
// the ingest process twice and the broker twice; every reading the broker acknowledged must
// be stored once. And `fieldlog-backend ingest` exits 0 on SIGTERM, with or without /metrics.
import FieldlogCore
import Foundation
import Logging
import MQTT
import Sync
import TestSupport
import XCTest
@testable import BackendStore
@testable import Ingest
@testable import Audit
@testable import WebAdmin
import Synchronization

final class SeedIngestTests: XCTestCase {
    func testSeedReadingsSurviveIngestAndBrokerRestarts() async throws {
        let db = try TestDatabase("seed-restarts")
        defer { db.drop() }
        let setup = try await db.migrated()
        let (broker, user, password) = try privateBroker()
        let dir = try TemporaryDirectory("ingest-seed")
        defer { if testRun?.hasSucceeded == true { dir.remove() } else { print("logs kept in \(dir.path)") } }
        var env = db.environment
        env["FIELDLOG_MQTT_HOST"] = "127.0.0.1"
        env["FIELDLOG_MQTT_PORT"] = String(broker.port)
        env["FIELDLOG_MQTT_BACKEND_USER"] = user
        env["FIELDLOG_MQTT_BACKEND_PASSWORD"] = password
        env["FIELDLOG_METRICS_PORT"] = "0"
        // One stable client id for every start of "the" ingest process: its persistent session.
        env["FIELDLOG_INGEST_CLIENT_ID"] = Stack.uniqueName("ingest-seed")
        var ingest = try BackendProcess.ingest("ingest-0", environment: env, directory: dir)
        defer { ingest.stop() }
        try BackendProcess.waitRunning(ingest)

        let device = Fixtures.device("seed")
        let devicePassword = Stack.uniqueName("pw")
        try broker.addUser(device.rawValue, password: devicePassword)
        let seed = try MQTTClient(configuration: MQTTConfiguration(
            host: "127.0.0.1", port: broker.port, clientID: device.rawValue, username: device.rawValue, password: devicePassword,
            reconnect: MQTTReconnectPolicy(minDelay: .milliseconds(100), maxDelay: .milliseconds(500))), logger: Logger(label: "seed"))
        var connectDeadline = ContinuousClock.now + .seconds(10)
        while true {
            do { try await seed.connect(); break } catch {
                guard ContinuousClock.now < connectDeadline else { throw error }
                try await Task.sleep(for: .milliseconds(200))
            }
        }
        let topic = TopicTemplates.defaults.legacyValues.topic(device: device)
        let acknowledged = ReadingCounter()
        // The seed handler: every interval, the stream entries since its last id as one list, QoS 1.
        // Stopped between two publishes, not by cancelling one: a cancelled publish may still
        // reach the broker (and be stored) without being counted as acknowledged here.
        let stopPublishing = StopSignal()
        let publisher = Task {
            var n = 0
            while !stopPublishing.isSet {
                let ids = (n..<(n + 3)).map { "\(1_764_000_000_000 + $0)-0" }
                let items = ids.map { #"{"_id":"\#($0)","_device_uuid":"\#(device)","_device_type":"raspberrypi4-64","_app_id":"1","_app_name":"iot","random":"0.\#(n)"}"# }
                n += 3
                do {
                    // Returns when the broker acknowledged it (after reconnecting, if it was down).
                    try await seed.publish(topic, payload: Array("[\(items.joined(separator: ","))]".utf8), qos: .atLeastOnce)
                    acknowledged.add(ids)
                } catch {
                    if stopPublishing.isSet { break }
                }
                try? await Task.sleep(for: .milliseconds(50))
            }
        }
        func pause() async throws { try await Task.sleep(for: .milliseconds(1_500)) }
        try await pause()
        // 1. The ingest process restarts (graceful), twice; the seed keeps publishing meanwhile.
        for k in 1...2 {
            ingest.stop()
            try await Task.sleep(for: .milliseconds(700))
            ingest = try BackendProcess.ingest("ingest-\(k)", environment: env, directory: dir)
            try BackendProcess.waitRunning(ingest)
            try await pause()
        }
        // 2. The broker restarts (graceful, with persistence), twice.
        for _ in 1...2 {
            broker.stop()
            try await Task.sleep(for: .milliseconds(700))
            try broker.start()
            try await pause()
        }
        stopPublishing.set()
        _ = await publisher.value
        let sent = acknowledged.all
        XCTAssertGreaterThan(sent.count, 100, "the seed published throughout")
        // Everything the broker acknowledged is stored, once.
        var stored = ""
        connectDeadline = ContinuousClock.now + .seconds(30)
        repeat {
            stored = try db.scalar("SELECT COUNT(*) FROM legacy_readings WHERE device_id = '\(device)'")
            if stored == String(sent.count) { break }
            try await Task.sleep(for: .milliseconds(200))
        } while ContinuousClock.now < connectDeadline
        let ids = Set(try db.scalar("SELECT GROUP_CONCAT(stream_id) FROM legacy_readings WHERE device_id = '\(device)'").split(separator: ",").map(String.init))
        let lost = sent.filter { !ids.contains($0) }
        print("seed restarts: \(sent.count) readings acknowledged by the broker, \(ids.count) stored, \(lost.count) lost")
        XCTAssertEqual(lost, [], "readings the broker acknowledged but ingest never stored")
        XCTAssertEqual(stored, String(sent.count))
        await seed.disconnect()
        await setup.close()
    }

    func testIngestExitsZeroOnSIGTERMWithAndWithoutMetrics() throws {
        let db = try TestDatabase("sigterm")
        defer { db.drop() }
        guard let stack = try Stack.available() else { throw XCTSkip("no service stack") }
        let migrate = try BackendProcess.run(["migrate"], environment: db.environment)
        XCTAssertEqual(migrate.status, 0, migrate.output)
        let dir = try TemporaryDirectory("ingest-sigterm")
        defer { dir.remove() }
        _ = stack
        // The /metrics server once ran a signal-catching group of its own and raced the ingest's
        // shutdown (exit 1 about one time in three): several rounds, SIGTERM at different moments.
        for round in 0..<6 {
            var env = db.environment
            env["FIELDLOG_METRICS_PORT"] = round % 2 == 0 ? String(Ports.free()) : "0"
            let p = try BackendProcess.ingest("ingest-\(round)", environment: env, directory: dir)
            if round % 3 != 0 { try BackendProcess.waitRunning(p) } else { Thread.sleep(forTimeInterval: 0.3) }
            p.stop()
            XCTAssertEqual(p.waitForExit(timeout: .seconds(20)), 0, "round \(round) (metrics \(env["FIELDLOG_METRICS_PORT"]!)): \(p.log().suffix(2_000))")
        }
    }
}

/// Set once, read from any task.
final class StopSignal: Sendable {
    private let flag = Atomic<Bool>(false)
    func set() { flag.store(true, ordering: .releasing) }
    var isSet: Bool { flag.load(ordering: .acquiring) }
}

/// Stream ids the broker acknowledged, in order.
final class ReadingCounter: Sendable {
    private let ids = Mutex<[String]>([])
    func add(_ more: [String]) { ids.withLock { $0 += more } }
    var all: [String] { ids.withLock { $0 } }
}
