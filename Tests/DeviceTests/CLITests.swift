import Foundation
import Processes
import TestSupport
import XCTest

/// `fieldlog-device config check` as an operator runs it.
final class CLITests: XCTestCase {
    func run(_ args: [String], env: [String: String]) throws -> (status: Int32, out: String, err: String) {
        let r = try Tool.status(try Binaries.path("fieldlog-device"), args, environment: env)
        return (r.status, r.stdout, r.stderr)
    }

    func testConfigCheckPrintsEffectiveConfigurationWithSecretsMasked() throws {
        let dir = try TemporaryDirectory("cli")
        defer { dir.remove() }
        try "# test\nINTERVAL_SECONDS=5\nMQTT_PASSWORD=s3cret\n".write(toFile: dir.file("device.env"), atomically: true, encoding: .utf8)
        let r = try run(["config", "check", "--config", dir.file("device.env")], env: ["FIELDLOG_DEVICE_ID": "cli-1", "REDIS_PORT": "6380"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("INTERVAL_SECONDS=5  # \(dir.file("device.env")):2"), r.out)
        XCTAssertTrue(r.out.contains("REDIS_PORT=6380  # environment"), r.out)
        XCTAssertTrue(r.out.contains("MQTT_PASSWORD=********"), r.out)
        XCTAssertFalse(r.out.contains("s3cret"))
    }

    func testBadValueFailsAtStartNamingSettingValueAndAllowed() throws {
        let r = try run(["config", "check"], env: ["FIELDLOG_DEVICE_ID": "cli-1", "LOG_DURABILITY": "sometimes", "BUTTON_EVENT": "BOTH"])
        XCTAssertEqual(r.status, 78, "EX_CONFIG")
        XCTAssertTrue(r.err.contains(#"LOG_DURABILITY="sometimes" (from environment): one of full, normal"#), r.err)
        XCTAssertTrue(r.err.contains(#"BUTTON_EVENT="BOTH""#), r.err)
        // `run` refuses to start with the same message, before touching anything.
        let dir = try TemporaryDirectory("cli")
        defer { dir.remove() }
        let r2 = try run(["run"], env: ["FIELDLOG_DEVICE_ID": "cli-1", "LOG_DURABILITY": "sometimes", "LOG_PATH": dir.file("x.sqlite3")])
        XCTAssertEqual(r2.status, 78)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.file("x.sqlite3")), "no log was created")
    }

    func testExampleFileIsAValidConfiguration() throws {
        let dir = try TemporaryDirectory("cli")
        defer { dir.remove() }
        let example = try run(["config", "example"], env: [:])
        XCTAssertEqual(example.status, 0)
        // Uncomment every KEY=default line: the defaults must all be valid.
        let uncommented = example.out.split(separator: "\n").map { line -> String in
            line.hasPrefix("#") && line.dropFirst().first.map { $0.isUppercase } == true && line.contains("=") ? String(line.dropFirst()) : String(line)
        }.filter { !$0.hasSuffix("=") }.joined(separator: "\n")
        try uncommented.write(toFile: dir.file("device.env"), atomically: true, encoding: .utf8)
        let r = try run(["config", "check", "--config", dir.file("device.env")], env: ["FIELDLOG_DEVICE_ID": "cli-2"])
        XCTAssertEqual(r.status, 0, r.err)
    }
}
