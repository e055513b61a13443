// The shared fixture of the tests that run the built `fieldlog-device` as a process.
import FieldlogCore
import Foundation
import Log
import Processes
import TestSupport
import XCTest

/// A `fieldlog-device run` process against a private mosquitto and Redis (both may be
/// stopped and restarted), with the helpers its tests share.
class DeviceProcessTestCase: XCTestCase {
    var dir: TemporaryDirectory!
    var broker: PrivateMosquitto!
    var redis: PrivateRedis!
    var device: ManagedProcess!
    var deviceID: DeviceID!
    var statusPort = 0

    override func setUp() async throws {
        _ = try Stack.available()  // with FIELDLOG_REQUIRE_SERVICES=1, fail when services cannot run
        dir = try TemporaryDirectory("device-it")
        deviceID = try DeviceID(Stack.uniqueName("dev"))
        broker = try PrivateMosquitto()
        try broker.addUser("fieldlog-backend", password: "backend-pw")
        try broker.addUser(deviceID.rawValue, password: "device-pw")
        try broker.start()
        redis = try PrivateRedis()
        try redis.start()
        statusPort = Ports.free()
        let env: [String: String] = [
            "PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin",
            "FIELDLOG_DEVICE_ID": deviceID.rawValue,
            "LOG_PATH": dir.file("device.sqlite3"),
            "INTERVAL_SECONDS": "0.1",
            "SYNC_INTERVAL_SECONDS": "0.2",
            "SYNC_RESEND_SECONDS": "1",
            "SYNC_BATCH_MAX_RECORDS": "50",
            "MQTT_HOST": "127.0.0.1", "MQTT_PORT": String(broker.port), "MQTT_PASSWORD": "device-pw",
            "MQTT_KEEPALIVE_SECONDS": "5",
            "REDIS_HOST": "127.0.0.1", "REDIS_PORT": String(redis.port),
            "STATUS_HTTP_PORT": String(statusPort),
            "LOG_LEVEL": "info",
        ]
        environment = env
        device = ManagedProcess(executable: try Binaries.path("fieldlog-device"), arguments: ["run"],
                                logPath: dir.file("device.log"), environment: env)
    }

    /// The device's environment (before `overriding`).
    var environment: [String: String] = [:]

    /// Replaces the (not yet started) device process by one with these settings changed.
    func overriding(_ settings: [String: String]) throws {
        environment.merge(settings) { _, new in new }
        device = ManagedProcess(executable: try Binaries.path("fieldlog-device"), arguments: ["run"],
                                logPath: dir.file("device.log"), environment: environment)
    }

    override func tearDown() async throws {
        device?.stop(grace: .seconds(5))
        if let dir, testRun?.failureCount ?? 0 > 0 {
            print("---- device log ----\n" + (device?.log().suffix(6000) ?? ""))
            _ = dir
        }
        broker?.stop()
        redis?.stop()
        dir?.remove()
    }

    func logState() async throws -> (head: SequenceNumber, acked: SequenceNumber) {
        let log = try await DeviceLog.open(path: dir.file("device.sqlite3"), device: nil)
        do {
            let state = (try await log.head(), try await log.ackedThrough())
            await log.close()
            return state
        } catch {
            await log.close()
            throw error
        }
    }

    func eventually(_ what: String, timeout: Duration = .seconds(30), _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if (try? await condition()) == true { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        XCTFail("timed out waiting for \(what)")
        throw TimedOut(what: what)
    }

    func httpGet(_ path: String) throws -> String {
        try Shell.run("curl", ["-sf", "--max-time", "5", "http://127.0.0.1:\(statusPort)\(path)"])
    }
}

struct TimedOut: Error, CustomStringConvertible {
    let what: String
    var description: String { "timed out waiting for \(what)" }
}

/// A test's own setup went wrong (not a finding about the device).
struct SetupFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
