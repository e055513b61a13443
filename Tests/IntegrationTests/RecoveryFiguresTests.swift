// The lab's recovery and continuity figures are pure: transcripts "given these polls, these figures".
import OutageLab
import XCTest

final class RecoveryFiguresTests: XCTestCase {
    func testDrainSamplesStartWhenThePathHealsAndAreInterruptedByANewFault() {
        var r = RecoveryTracker()
        r.observe(device: 0, at: 0, head: 10, acked: 9, healthy: true)
        r.observe(device: 0, at: 1, head: 30, acked: 9, healthy: false)   // partitioned
        r.observe(device: 0, at: 2, head: 50, acked: 9, healthy: true)    // healed: drain to 50
        r.observe(device: 0, at: 3, head: 70, acked: 40, healthy: true)
        r.observe(device: 0, at: 4.5, head: 90, acked: 60, healthy: true) // 60 ≥ 50: drained in 2.5 s
        r.observe(device: 0, at: 5, head: 95, acked: 60, healthy: false)
        r.observe(device: 0, at: 6, head: 99, acked: 60, healthy: true)   // drain to 99 …
        r.observe(device: 0, at: 7, head: 120, acked: 70, healthy: false) // … interrupted
        r.healed(device: 0, at: 8, head: 130)                             // the final heal
        r.observe(device: 0, at: 9, head: 130, acked: 130, healthy: true)
        let f = r.figures(device: 0)
        XCTAssertEqual(f.drains, [2.5, 1])
        XCTAssertEqual(f.interrupted, 1)
        XCTAssertEqual(f.undrained, 0)
    }

    func testFrozenCountsOnlyHealthyTimeWithABacklog() {
        var r = RecoveryTracker()
        r.observe(device: 1, at: 0, head: 10, acked: 5, healthy: true)
        r.observe(device: 1, at: 3, head: 12, acked: 5, healthy: true)    // frozen 3 s so far
        r.observe(device: 1, at: 4, head: 12, acked: 5, healthy: false)   // the backend went away: not counted
        r.observe(device: 1, at: 20, head: 40, acked: 5, healthy: false)
        r.observe(device: 1, at: 21, head: 41, acked: 5, healthy: true)   // healed at 21
        r.observe(device: 1, at: 25, head: 45, acked: 5, healthy: true)   // frozen 4 s since the heal
        r.observe(device: 1, at: 26, head: 46, acked: 45, healthy: true)  // moved
        r.observe(device: 1, at: 30, head: 46, acked: 46, healthy: true)  // nothing to ack
        r.observe(device: 1, at: 40, head: 46, acked: 46, healthy: true)
        let f = r.figures(device: 1)
        XCTAssertEqual(f.frozenMaxSeconds, 4)
        XCTAssertEqual(f.frozenMaxEndedAt, 25)
        XCTAssertEqual(f.drains, [5])
    }

    func testGapsAreSplitIntoContinuityRestartsAndExemptDevices() {
        var c = ContinuityTracker()
        c.exemptDevices = [2]
        // Every 50 ms, one slow append (130 ms), then a kill from 1000 to 3000 ms and a restart.
        var records: [(seq: UInt64, tsMs: Int64)] = (1...10).map { (UInt64($0), Int64($0) * 50) }
        records.append((11, 630))
        c.records(device: 0, records, windowStartMs: 0, windowEndMs: 700)
        c.outageBegan(device: 0, atMs: 1000)
        c.outageEnded(device: 0, atMs: 3000)
        c.records(device: 0, [(12, 3800), (13, 3850)], windowStartMs: 700, windowEndMs: 3900)
        var f = c.figures(device: 0)
        XCTAssertEqual(f.gapMaxMs, 130)
        XCTAssertEqual(f.outageGapMaxMs, 3170)
        XCTAssertEqual(f.restartMaxMs, 1170, "the gap minus the 2 s the process was down")
        XCTAssertEqual(f.pairs, 12)
        // The exempt device's long gap is kept apart.
        c.records(device: 2, [(1, 0), (2, 5000)], windowStartMs: 0, windowEndMs: 5100)
        XCTAssertEqual(c.figures(device: 2).exemptGapMaxMs, 5000)
        XCTAssertEqual(c.figures(device: 2).gapMaxMs, 0)
        // After the lab stopped measurement, gaps do not count.
        c.stoppedAtMs = 4000
        c.records(device: 0, [(14, 9000)], windowStartMs: 3900, windowEndMs: 9100)
        f = c.figures(device: 0)
        XCTAssertEqual(f.gapMaxMs, 130)
    }

    func testAStallOfTheWholeFleetIsToldApartFromADeviceStallingAlone() {
        var c = ContinuityTracker()
        // Device 0: a 400 ms gap at 1000…1400 while device 1 went on; then both stall, staggered.
        let zero: [(seq: UInt64, tsMs: Int64)] = [(1, 950), (2, 1000), (3, 1400), (4, 1450), (5, 2000), (6, 2600), (7, 2650)]
        let one: [(seq: UInt64, tsMs: Int64)] = [(1, 960), (2, 1010), (3, 1060), (4, 1110), (5, 1160), (6, 1210), (7, 1260),
                                                 (8, 1310), (9, 1360), (10, 2010), (11, 2610)]
        c.records(device: 0, zero, windowStartMs: 900, windowEndMs: 2700)
        c.records(device: 1, one, windowStartMs: 900, windowEndMs: 2700)
        let f0 = c.figures(device: 0), f1 = c.figures(device: 1)
        XCTAssertEqual(f0.gapMaxMs, 600)
        XCTAssertEqual(f0.ownGapMaxMs, 400, "device 1 kept its 50 ms pace meanwhile")
        XCTAssertEqual(f0.sharedGapMaxMs, 600)
        XCTAssertEqual(f1.gapMaxMs, 650)
        XCTAssertEqual(f1.ownGapMaxMs, 50)
        XCTAssertEqual(f1.sharedGapMaxMs, 650, "device 0 stalled 1450…2000, inside 1360…2010, too")
    }

    func testClockJumpsAreTakenOutOfTheDeviceTimestamps() {
        var c = ContinuityTracker()
        let t0 = 1_700_000_000_000.0
        c.records(device: 0, [(1, Int64(t0)), (2, Int64(t0) + 50)], windowStartMs: t0 - 100, windowEndMs: t0 + 100)
        // At t0+100 the clock jumps 400 days back; records carry the moved time.
        c.clockOffset(device: 0, atMs: t0 + 100, offsetSeconds: -86_400 * 400)
        let back = Int64(t0) - 86_400 * 400 * 1000
        c.records(device: 0, [(3, back + 100), (4, back + 150)], windowStartMs: t0 + 100, windowEndMs: t0 + 200)
        // And forward again to +90 s, then back to 0: an offset that would fit another window must not win.
        c.clockOffset(device: 0, atMs: t0 + 200, offsetSeconds: 90)
        c.records(device: 0, [(5, Int64(t0) + 90_000 + 200)], windowStartMs: t0 + 200, windowEndMs: t0 + 300)
        c.clockOffset(device: 0, atMs: t0 + 300, offsetSeconds: 0)
        c.records(device: 0, [(6, Int64(t0) + 250)], windowStartMs: t0 + 300, windowEndMs: t0 + 400)
        let f = c.figures(device: 0)
        XCTAssertEqual(f.pairs, 5)
        XCTAssertEqual(f.gapMaxMs, 50, "every gap is 50 ms in real time")
    }

    func testTheReportGivesPercentilesAndGoals() {
        var r = RecoveryTracker()
        for k in 0..<100 {
            let t = Double(k) * 100
            r.observe(device: 0, at: t, head: 1, acked: 0, healthy: false)
            r.observe(device: 0, at: t + 1, head: 2, acked: 0, healthy: true)
            r.observe(device: 0, at: t + 1 + Double(k % 10) + 1, head: 3, acked: 2, healthy: true)  // drains in 1…10 s
        }
        let figures = RecoveryFigures(devices: [
            .init(id: "d0", intervalSeconds: 0.05, exempt: false, recovery: r.figures(device: 0), continuity: ContinuityTracker().figures(device: 0)),
        ])
        XCTAssertEqual(figures.drainSamples.count, 100)
        XCTAssertEqual(figures.drainPercentile(99), 10)
        XCTAssertEqual(figures.drainPercentile(50), 5)
        let text = figures.lines.joined(separator: "\n")
        XCTAssertTrue(text.contains("p99 10.0 s") && text.contains("goal p99 ≤ 10 s: met"), text)
    }
}
