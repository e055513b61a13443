// `fieldlog-device log …` run as a real process against real files.
import FieldlogCore
import Foundation
@testable import Log
import Processes
import TestSupport
import XCTest

final class LogCLITests: XCTestCase {
    func deviceExecutable() throws -> String { try Binaries.path("fieldlog-device") }

    /// Runs the CLI; returns (status, stdout, stderr).
    func cli(_ arguments: [String]) throws -> (Int32, String, String) {
        let r = try Tool.status(try deviceExecutable(), arguments)
        return (r.status, r.stdout, r.stderr)
    }

    func testAppendStatusDumpCheck() async throws {
        let dir = try TemporaryDirectory("fieldlog-cli")
        defer { dir.remove() }
        let db = dir.file("log.db")

        var r = try cli(["log", "append", "--db", db, "--device", "cli-dev", "temp=21.5", "site=roof"])
        XCTAssertEqual(r.0, 0, r.2)
        XCTAssertEqual(r.1, "1\n")
        r = try cli(["log", "append", "--db", db, "--missing", "hum", "temp=22"])
        XCTAssertEqual(r.1, "2\n", r.2)

        r = try cli(["log", "status", "--db", db, "--json"])
        XCTAssertEqual(r.0, 0, r.2)
        let status = try JSONSerialization.jsonObject(with: Data(r.1.utf8)) as? [String: Any]
        XCTAssertEqual(status?["device_id"] as? String, "cli-dev")
        XCTAssertEqual(status?["head"] as? Int, 2)
        XCTAssertEqual(status?["acked_through"] as? Int, 0)
        XCTAssertEqual(status?["backlog"] as? Int, 2)
        XCTAssertEqual((status?["epoch"] as? String)?.count, 16)
        r = try cli(["log", "status", "--db", db])
        XCTAssertTrue(r.1.contains("head           2"), r.1)

        r = try cli(["log", "dump", "--db", db, "--from", "2"])
        let lines = r.1.split(separator: "\n")
        XCTAssertEqual(lines.count, 1, r.1)
        let record = try JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as? [String: Any]
        XCTAssertEqual(record?["seq"] as? Int, 2)
        XCTAssertEqual((record?["values"] as? [String: Any])?["temp"] as? Double, 22)
        XCTAssertEqual(record?["missing"] as? [String], ["hum"])

        r = try cli(["log", "check", "--db", db])
        XCTAssertEqual(r.0, 0, r.1 + r.2)
        XCTAssertTrue(r.1.hasPrefix("ok:"), r.1)

        // Damage: check lists the problem and fails.
        try rawSQL(db, "DELETE FROM records WHERE seq = 1")
        r = try cli(["log", "check", "--db", db])
        XCTAssertEqual(r.0, 1)
        XCTAssertTrue(r.1.contains("records 1…1 are missing with no loss marker"), r.1)

        // Bad input: clear errors, nothing written.
        r = try cli(["log", "append", "--db", db, "temp"])
        XCTAssertNotEqual(r.0, 0)
        XCTAssertTrue(r.2.contains("expected name=value"), r.2)
        r = try cli(["log", "append", "--db", db, "--device", "other-dev", "a=1"])
        XCTAssertNotEqual(r.0, 0)
        XCTAssertTrue(r.2.contains("belongs to device"), r.2)
        r = try cli(["log", "status", "--db", dir.file("missing.db")])
        XCTAssertNotEqual(r.0, 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.file("missing.db")))
        try Data("not a database at all, just text".utf8).write(to: URL(fileURLWithPath: dir.file("junk.db")))
        r = try cli(["log", "check", "--db", dir.file("junk.db")])
        XCTAssertEqual(r.0, 2)
        XCTAssertTrue(r.2.contains("junk.db") && r.2.contains("not a Fieldlog device log"), r.2)
        let log = try await DeviceLog.open(path: db, device: nil)
        let head = try await log.head()
        XCTAssertEqual(head, SequenceNumber(2))
        await log.close()
    }
}
