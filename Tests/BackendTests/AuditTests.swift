// The audit checks the data behind the ledger (issue 15): rows deleted behind the ingest's back
// are named as "rows missing", declared losses and rejected records are not, and
// `audit --repair` gets the device to resend them through a real ingest process.
import FieldlogCore
import Foundation
import Logging
import MariaDB
import MQTT
import Sync
import TestSupport
import XCTest
@testable import BackendStore
@testable import Ingest
@testable import Audit
@testable import WebAdmin

final class AuditRowCheckTests: XCTestCase {
    private func r(_ a: UInt64, _ b: UInt64) -> SequenceRange { SequenceRange(checked: SequenceNumber(a), SequenceNumber(b)) }

    func testCoverageSubtractingKeepsExactlyWhatTheOtherDoesNotCover() {
        let ledger = Coverage([r(1, 10), r(20, 30), r(40, 40)])
        XCTAssertEqual(ledger.subtracting(Coverage()), [r(1, 10), r(20, 30), r(40, 40)])
        XCTAssertEqual(ledger.subtracting(ledger), [])
        XCTAssertEqual(ledger.subtracting(Coverage([r(1, 100)])), [])
        XCTAssertEqual(ledger.subtracting(Coverage([r(3, 4), r(8, 22), r(25, 25), r(30, 39)])), [r(1, 2), r(5, 7), r(23, 24), r(26, 29), r(40, 40)])
        XCTAssertEqual(ledger.subtracting(Coverage([r(11, 19), r(41, 50)])), [r(1, 10), r(20, 30), r(40, 40)])
        XCTAssertEqual(Coverage([r(1, 1)]).subtracting(Coverage([r(2, 2)])), [r(1, 1)])
        // Against a brute-force model on small random sets.
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<300 {
            func random() -> (Coverage, Set<UInt64>) {
                var c = Coverage(), set = Set<UInt64>()
                for _ in 0..<Int.random(in: 0...5, using: &rng) {
                    let a = UInt64.random(in: 1...40, using: &rng), b = a + UInt64.random(in: 0...6, using: &rng)
                    c.insert(r(a, b))
                    set.formUnion(a...b)
                }
                return (c, set)
            }
            let (a, sa) = random(), (b, sb) = random()
            let expected = sa.subtracting(sb)
            let got = a.subtracting(b)
            XCTAssertEqual(Set(got.flatMap { $0.first.rawValue...$0.last.rawValue }), expected, "\(a.ranges) − \(b.ranges)")
            XCTAssertEqual(got.map(\.count).reduce(0, +), UInt64(expected.count), "no number twice")
        }
    }

    func testRowsDeletedBehindTheIngestsBackAreMissingButLossesAndRejectedRecordsAreNot() async throws {
        let db = try TestDatabase("rowcheck")
        defer { db.drop() }
        let c = try await db.migrated()
        let store = Store(connection: c)
        try await store.prepareSession()
        let device = Fixtures.device(), epoch = Epoch(7), other = Epoch(8)
        // 1…10 records; 11…20: records 11…15 and 20, loss 16…18, 19 rejected; 21…30 records.
        var b = Fixtures.batch(device, epoch, 11, 20)
        b.records = b.records.filter { !(16...18).contains($0.sequence.rawValue) }
        b.losses = [LossMarker(range: r(16, 18), reason: .diskQuota, recordedAtUnixMilliseconds: 1_764_000_000_000, detail: "")]
        var withRejected = Fixtures.request(b)
        withRejected.records.removeAll { $0.sequence == SequenceNumber(19) }
        withRejected.rejected = [RejectedRecord(sequence: SequenceNumber(19), reason: "value out of range", excerpt: "{}")]
        _ = try await store.storeBatches([Fixtures.request(Fixtures.batch(device, epoch, 1, 10)), withRejected,
                                          Fixtures.request(Fixtures.batch(device, epoch, 21, 30)), Fixtures.request(Fixtures.batch(device, other, 1, 5))],
                                         newDevices: [device], newEpochs: [(device, epoch), (device, other)])
        var report = try await Auditor(connection: c).run()
        XCTAssertFalse(report.hasGaps, report.text())
        XCTAssertEqual(report.devices.first?.epochs.map(\.rowsMissing), [[], []])

        // Behind the ingest's back: 3…5 and 12 of the first epoch, everything of the second.
        try await c.query("DELETE FROM readings WHERE device_id = '\(device)' AND epoch = 7 AND seq IN (3, 4, 5, 12)")
        try await c.query("DELETE FROM readings WHERE device_id = '\(device)' AND epoch = 8")
        report = try await Auditor(connection: c).run(device: device)
        XCTAssertTrue(report.hasGaps)
        let epochs = try XCTUnwrap(report.devices.first?.epochs)
        let first = try XCTUnwrap(epochs.first { $0.epoch == epoch.hex }), second = try XCTUnwrap(epochs.first { $0.epoch == other.hex })
        XCTAssertEqual(first.rowsMissing, [EpochAudit.Range(r(3, 5)), EpochAudit.Range(r(12, 12))])
        XCTAssertEqual(first.gaps, [], "the ledger itself has no gap")
        XCTAssertEqual(first.storedThrough, 30, "the ledger's word, which the rows now contradict")
        XCTAssertEqual(second.rowsMissing, [EpochAudit.Range(r(1, 5))])
        XCTAssertEqual(first.missingCount + second.missingCount, 9)
        XCTAssertTrue(report.text().contains("ROWS MISSING 3…5 (3 records"), report.text())
        XCTAssertTrue(report.text().contains("ROWS MISSING 12…12"), report.text())
        XCTAssertEqual(Set(report.repairRequests.map { "\($0.epoch.hex) \($0.range)" }), ["\(epoch.hex) 3…5", "\(epoch.hex) 12", "\(other.hex) 1…5"])
        let json = try JSONDecoder().decode(AuditReport.self, from: Data(try report.json().utf8))
        XCTAssertEqual(json, report)

        // What a replay brings back closes the gap (the resend is mostly duplicates, proven by count).
        _ = try await store.storeBatches([Fixtures.request(Fixtures.batch(device, epoch, 1, 10))], newDevices: [], newEpochs: [])
        report = try await Auditor(connection: c).run(device: device)
        XCTAssertEqual(report.devices.first?.epochs.first { $0.epoch == epoch.hex }?.rowsMissing, [EpochAudit.Range(r(12, 12))])
        await c.close()
    }

    /// End to end: an ingest process stores a device's readings; rows are deleted behind its
    /// back; `audit` exits 1 and names them; `audit --repair` sends a replay command, the device
    /// resends, the ingest stores the rows again, and `audit` exits 0.
    func testAuditNamesRowsDeletedBehindTheIngestsBackAndRepairGetsThemResent() async throws {
        let db = try TestDatabase("repair")
        defer { db.drop() }
        let setup = try await db.migrated()
        let dir = try TemporaryDirectory("audit-repair")
        defer { if testRun?.hasSucceeded == true { dir.remove() } else { print("ingest logs kept in \(dir.path)") } }
        let (broker, user, password) = try privateBroker()
        var env = db.environment
        env["FIELDLOG_MQTT_HOST"] = "127.0.0.1"
        env["FIELDLOG_MQTT_PORT"] = String(broker.port)
        env["FIELDLOG_MQTT_BACKEND_USER"] = user
        env["FIELDLOG_MQTT_BACKEND_PASSWORD"] = password
        let ingest = try BackendProcess.ingest("ingest", environment: env, directory: dir)
        defer { ingest.stop() }
        try BackendProcess.waitRunning(ingest)

        let device = try await SimDevice.connect(broker: broker, records: 60)
        try await device.client.subscribe(TopicTemplates.defaults.request.topic(device: device.id), qos: .atLeastOnce)
        let through = try await device.sync(timeout: .seconds(30))
        XCTAssertEqual(through, SequenceNumber(60))
        var audit = try BackendProcess.run(["audit"], environment: env)
        XCTAssertEqual(audit.status, 0, audit.output)

        try await setup.query("DELETE FROM readings WHERE device_id = '\(device.id)' AND seq BETWEEN 23 AND 27")
        audit = try BackendProcess.run(["audit"], environment: env)
        XCTAssertEqual(audit.status, 1, audit.output)
        XCTAssertTrue(audit.output.contains("ROWS MISSING 23…27 (5 records"), audit.output)

        // The device answers replays from its "log": the requested range, as one batch.
        let replays = Task { () -> [SequenceRange] in
            var asked: [SequenceRange] = []
            for await m in device.otherMessages where m.topic.hasSuffix("/request") {
                guard let command = try? SyncCodec.decodeCommand(m.payload), case .replay(_, let range) = command.kind else { continue }
                asked.append(range)
                try? await device.publish(Fixtures.batch(device.id, device.epoch, range.first.rawValue, range.last.rawValue))
                let answer = CommandResponse(requestID: command.requestID, command: command.name, resent: range)
                try? await device.client.publish(TopicTemplates.defaults.response.topic(device: device.id), payload: SyncCodec.encode(answer), qos: .atLeastOnce)
            }
            return asked
        }
        let repair = try BackendProcess.run(["audit", "--repair"], environment: env)
        XCTAssertEqual(repair.status, 1, "still missing when it asks: \(repair.output)")
        XCTAssertTrue(repair.output.contains("ROWS MISSING 23…27"), repair.output)
        // The resent rows and the device's answer (recorded by the ingest) arrive shortly after.
        let command = "SELECT CONCAT(command, ' ', first_seq, ' ', last_seq, ' ', COALESCE(outcome, '-')) FROM commands WHERE device_id = '\(device.id)'"
        let deadline = ContinuousClock.now + .seconds(20)
        while try db.scalar("SELECT COUNT(*) FROM readings WHERE device_id = '\(device.id)'") != "60" || db.scalar(command) == "replay 23 27 -",
              ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(100))
        }
        audit = try BackendProcess.run(["audit"], environment: env)
        XCTAssertEqual(audit.status, 0, audit.output)
        XCTAssertTrue(audit.output.contains("RESULT: nothing missing"), audit.output)
        XCTAssertEqual(try db.scalar(command), "replay 23 27 resent 23…27")
        replays.cancel()
        await device.close()
        let asked = await replays.value
        XCTAssertEqual(asked, [r(23, 27)])
        await setup.close()
    }
}
