// The checker and the schedule are pure: transcripts "given these rows, this verdict".
import OutageLab
import XCTest

final class CheckerTests: XCTestCase {
    func snapshot(head: UInt64, acked: UInt64, records: ClosedRange<UInt64>?, markers: [DeclaredLoss] = []) -> DeviceLogSnapshot {
        var r: [UInt64: Int64] = [:]
        if let records { for s in records { r[s] = Int64(s) * 10 } }
        return DeviceLogSnapshot(path: "/x", deviceID: "d1", epoch: 7, head: head, acked: acked, records: r, lossMarkers: markers)
    }

    func view(_ seqs: [UInt64], losses: [DeclaredLoss] = [], epoch: UInt64 = 7) -> DatabaseDeviceView {
        var v = DatabaseDeviceView()
        for s in seqs { v.readings[epoch, default: [:]][s] = (1, Int64(s) * 10) }
        v.losses[epoch] = losses
        return v
    }

    func testEverythingStoredIsClean() {
        let v = Checker.check(log: snapshot(head: 10, acked: 10, records: 1...10), markersSeen: [], database: view(Array(1...10)))
        XCTAssertTrue(v.isClean)
        XCTAssertEqual(v.stored, 10)
        XCTAssertEqual(v.unexplainedCount, 0)
    }

    func testMissingAckedRecordIsUnexplainedAndAckedButMissing() {
        let v = Checker.check(log: snapshot(head: 10, acked: 8, records: 1...10), markersSeen: [], database: view([1, 2, 3, 6, 7, 8]))
        XCTAssertFalse(v.isClean)
        XCTAssertEqual(v.unexplainedCount, 4)
        XCTAssertEqual(v.unexplained, [4...5, 9...10])
        XCTAssertEqual(v.ackedButMissing, 2)
    }

    func testDeclaredLossExplainsMissingRecords() {
        let loss = DeclaredLoss(first: 4, last: 6, reason: "disk-quota")
        // The marker was trimmed from the log; the watcher saw it, and the backend recorded it.
        let v = Checker.check(log: snapshot(head: 10, acked: 10, records: nil), markersSeen: [loss],
                              database: view([1, 2, 3, 7, 8, 9, 10], losses: [loss]))
        XCTAssertTrue(v.isClean)
        XCTAssertEqual(v.declaredLost, 3)
        XCTAssertEqual(v.lossReasons, ["disk-quota": 3])
        XCTAssertEqual(v.lossesNotInDatabase, 0)
    }

    func testPhantomAndConflictingRowsAreCaught() {
        var db = view(Array(1...12))
        db.readings[7]![5] = (1, 999)          // a different reading under seq 5
        let v = Checker.check(log: snapshot(head: 10, acked: 10, records: 1...10), markersSeen: [], database: db)
        XCTAssertEqual(v.phantoms, 2)
        XCTAssertEqual(v.conflicts, 1)
        XCTAssertFalse(v.isClean)
    }

    func testRowsOfAnotherEpochDoNotCount() {
        let v = Checker.check(log: snapshot(head: 3, acked: 3, records: 1...3), markersSeen: [], database: view([1, 2, 3], epoch: 8))
        XCTAssertEqual(v.unexplainedCount, 3)
        XCTAssertEqual(v.otherEpochsInDatabase, 1)
    }

    func testDuplicatesAreCounted() {
        var db = view([1, 2, 3])
        db.readings[7]![2] = (2, 20)
        let v = Checker.check(log: snapshot(head: 3, acked: 3, records: 1...3), markersSeen: [], database: db)
        XCTAssertEqual(v.duplicates, 1)
        XCTAssertFalse(v.isClean)
    }

    func testScheduleIsDeterministicPerSeedAndRespectsTargets() throws {
        for s in Scenario.all {
            let a = FaultSchedule.make(scenario: s, seed: 1234, durationSeconds: 300)
            let b = FaultSchedule.make(scenario: s, seed: 1234, durationSeconds: 300)
            let c = FaultSchedule.make(scenario: s, seed: 1235, durationSeconds: 300)
            XCTAssertEqual(a.map(\.description), b.map(\.description), "scenario \(s.name): same seed, same schedule")
            XCTAssertNotEqual(a.map(\.description), c.map(\.description), "scenario \(s.name): another seed, another schedule")
            XCTAssertGreaterThan(a.count, 10, "scenario \(s.name) injects faults")
            for f in a {
                XCTAssertTrue(s.faults.contains(f.kind))
                XCTAssertLessThanOrEqual(f.atSeconds + f.durationSeconds, 300 * 0.9 + 0.001, "every fault heals inside the phase")
            }
            // No two faults on one target overlap.
            var byTarget: [FaultTarget: [ScheduledFault]] = [:]
            for f in a { byTarget[f.target, default: []].append(f) }
            for (target, list) in byTarget {
                for (x, y) in zip(list, list.dropFirst()) {
                    XCTAssertLessThanOrEqual(x.atSeconds + x.durationSeconds, y.atSeconds, "\(s.name): overlapping faults on \(target)")
                }
            }
        }
    }
}
