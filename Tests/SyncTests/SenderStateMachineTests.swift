import FieldlogCore
@testable import Sync
import XCTest

/// Transcripts: "given this state, this event gives these actions" (spec §4.3).
final class SenderStateMachineTests: XCTestCase {
    typealias Sender = SenderStateMachine<VirtualInstant>
    let dev = try! DeviceID("dev-1")
    let epoch = Epoch(7)
    let t0 = VirtualInstant.zero

    func s(_ n: UInt64) -> SequenceNumber { SequenceNumber(n) }
    func r(_ a: UInt64, _ b: UInt64) -> SequenceRange { SequenceRange(checked: s(a), s(b)) }
    func at(_ ms: Int64) -> VirtualInstant { VirtualInstant(nanoseconds: ms * 1_000_000) }
    func record(_ n: UInt64) -> LogRecord {
        LogRecord(sequence: s(n), timestamp: DeviceTimestamp(unixMilliseconds: Int64(n)), values: try! SensorValues(["t": .number(Double(n))]))
    }
    func records(_ a: UInt64, _ b: UInt64) -> [LogRecord] { (a...b).map(record) }

    func config(window: Int = 2, perBatch: Int = 3) -> SenderConfiguration {
        var c = SenderConfiguration()
        c.windowBatches = window
        c.maxRecordsPerBatch = perBatch
        c.resendDelayInitial = .seconds(1)
        c.resendDelayMax = .seconds(4)
        return c
    }

    /// The batches published by `actions`, as ranges.
    func published(_ actions: [Sender.Action]) -> [SequenceRange] {
        actions.compactMap { if case .publish(let o) = $0 { return o.batch.range } else { return nil } }
    }

    func ack(_ through: UInt64, stored: SequenceRange? = nil, epoch: Epoch? = nil) -> Ack {
        Ack(device: dev, epoch: epoch ?? self.epoch, through: s(through), stored: stored)
    }

    func testLoadsOnlyWhenConnectedAndPublishesBatchesWithinTheWindow() {
        var m = Sender(device: dev, epoch: epoch, head: .zero, acked: .zero, configuration: config())
        XCTAssertEqual(m.appended(through: s(7), now: t0), [], "disconnected: no load")
        XCTAssertEqual(m.connected(now: t0), [.loadRecords(from: s(1), through: s(7), limit: 3)])
        let a1 = m.recordsLoaded(from: s(1), records: records(1, 3), losses: [], retainedFrom: s(1), nowUnixMilliseconds: 0, now: t0)
        XCTAssertEqual(published(a1), [r(1, 3)])
        XCTAssertTrue(a1.contains(.loadRecords(from: s(4), through: s(7), limit: 3)))
        XCTAssertTrue(a1.contains(.armTimer(at: at(1000))))
        let a2 = m.recordsLoaded(from: s(4), records: records(4, 6), losses: [], retainedFrom: s(1), nowUnixMilliseconds: 0, now: t0)
        XCTAssertEqual(published(a2), [r(4, 6)])
        XCTAssertFalse(a2.contains { if case .loadRecords = $0 { return true } else { return false } }, "window of 2 is full")
        XCTAssertEqual(m.inFlightRanges, [r(1, 3), r(4, 6)])
    }

    func testAckAdvancesPersistsAndOpensTheWindow() {
        var m = Sender(device: dev, epoch: epoch, head: s(7), acked: .zero, configuration: config())
        _ = m.connected(now: t0)
        _ = m.recordsLoaded(from: s(1), records: records(1, 3), losses: [], retainedFrom: s(1), nowUnixMilliseconds: 0, now: t0)
        _ = m.recordsLoaded(from: s(4), records: records(4, 6), losses: [], retainedFrom: s(1), nowUnixMilliseconds: 0, now: t0)
        let a = m.ackReceived(ack(3, stored: r(1, 3)), now: at(10))
        XCTAssertEqual(a, [.persistAcked(through: s(3)), .loadRecords(from: s(7), through: s(7), limit: 3)])
        XCTAssertEqual(m.acked, s(3))
        XCTAssertEqual(m.inFlightRanges, [r(4, 6)])
    }

    func testStaleOtherEpochAndTooNewAcksChangeNothing() {
        var m = Sender(device: dev, epoch: epoch, head: s(5), acked: s(3), configuration: config())
        _ = m.connected(now: t0)
        XCTAssertEqual(m.ackReceived(ack(2), now: t0), [], "older ack")
        XCTAssertEqual(m.ackReceived(ack(5, epoch: Epoch(99)), now: t0), [], "another epoch's retained ack")
        let tooNew = m.ackReceived(ack(6), now: t0)
        XCTAssertEqual(tooNew.count, 1)
        guard case .reportAnomaly(let text)? = tooNew.first else { return XCTFail("\(tooNew)") }
        XCTAssertTrue(text.contains("beyond head 5"), text)
        let other = m.ackReceived(Ack(device: try! DeviceID("dev-2"), epoch: epoch, through: s(4)), now: t0)
        guard case .reportAnomaly? = other.first else { return XCTFail("\(other)") }
        XCTAssertEqual(m.acked, s(3))
    }

    func testAfterRestartANewerRetainedAckSkipsWhatWasAlreadyStored() {
        // Crashed after sending 1…10 but before persisting the ack: restarts from acked 2.
        var m = Sender(device: dev, epoch: epoch, head: s(10), acked: s(2), configuration: config())
        XCTAssertEqual(m.connected(now: t0), [.loadRecords(from: s(3), through: s(10), limit: 3)])
        // The retained ack arrives before the load's answer.
        XCTAssertEqual(m.ackReceived(ack(9), now: t0), [.persistAcked(through: s(9))])
        // The now stale load answer is dropped and a new load asked.
        let a = m.recordsLoaded(from: s(3), records: records(3, 5), losses: [], retainedFrom: s(1), nowUnixMilliseconds: 0, now: t0)
        XCTAssertEqual(a, [.loadRecords(from: s(10), through: s(10), limit: 3)])
    }

    func testSelectiveResendWithBackoffAndProbe() {
        var m = Sender(device: dev, epoch: epoch, head: s(6), acked: .zero, configuration: config())
        _ = m.connected(now: t0)
        _ = m.recordsLoaded(from: s(1), records: records(1, 3), losses: [], retainedFrom: s(1), nowUnixMilliseconds: 0, now: t0)
        _ = m.recordsLoaded(from: s(4), records: records(4, 6), losses: [], retainedFrom: s(1), nowUnixMilliseconds: 0, now: t0)
        // Batch 4…6 stored by a receiver that could not see 1…3: selective ack only.
        XCTAssertEqual(m.ackReceived(ack(0, stored: r(4, 6)), now: at(100)), [])
        XCTAssertEqual(m.timerFired(now: at(999)), [], "before the deadline")
        // At 1 s only 1…3 is resent (next in 2 s); 4…6 is stored and not the oldest: no deadline.
        let a = m.timerFired(now: at(1000))
        XCTAssertEqual(published(a), [r(1, 3)])
        XCTAssertTrue(a.contains(.armTimer(at: at(3000))), "\(a)")
        // 1…3 gets stored too, but by a receiver that misses 4…6: through 3 and it is marked.
        // Progress: 4…6 is now the oldest, the probe; stored, it gives the receivers the initial delay.
        XCTAssertEqual(m.ackReceived(ack(3, stored: r(1, 3)), now: at(1500)), [.persistAcked(through: s(3)), .armTimer(at: at(2500))])
        XCTAssertEqual(m.inFlightRanges, [r(4, 6)])
        // It is resent as a probe when due, with backoff 2 s next.
        let p = m.timerFired(now: at(2500))
        XCTAssertEqual(published(p), [r(4, 6)])
        XCTAssertTrue(p.contains(.armTimer(at: at(4500))), "\(p)")
        guard case .publish(let out)? = p.first(where: { if case .publish = $0 { return true } else { return false } }) else { return XCTFail() }
        XCTAssertEqual(out.resendCount, 1)
        XCTAssertEqual(m.ackReceived(ack(6, stored: r(4, 6)), now: at(2100)), [.persistAcked(through: s(6)), .cancelTimer])
    }

    func testReconnectRepublishesEverythingNotStoredAndTimerStopsWhileDown() {
        var m = Sender(device: dev, epoch: epoch, head: s(6), acked: .zero, configuration: config())
        _ = m.connected(now: t0)
        _ = m.recordsLoaded(from: s(1), records: records(1, 3), losses: [], retainedFrom: s(1), nowUnixMilliseconds: 0, now: t0)
        _ = m.recordsLoaded(from: s(4), records: records(4, 6), losses: [], retainedFrom: s(1), nowUnixMilliseconds: 0, now: t0)
        _ = m.ackReceived(ack(0, stored: r(1, 3)), now: t0)
        XCTAssertEqual(m.disconnected(), [.cancelTimer])
        XCTAssertEqual(m.timerFired(now: at(60_000)), [])
        let a = m.connected(now: at(60_000))
        XCTAssertEqual(published(a), [r(4, 6)], "1…3 is known stored")
    }

    func testLossMarkersAndNotRetainedPositionsTileTheBatch() {
        var m = Sender(device: dev, epoch: epoch, head: s(9), acked: .zero, configuration: config(perBatch: 10))
        _ = m.connected(now: t0)
        // The log keeps 4…9; 6…7 were dropped under the disk quota; 1…3 are gone without a marker.
        let quota = LossMarker(range: r(6, 7), reason: .diskQuota, recordedAtUnixMilliseconds: 5)
        let a = m.recordsLoaded(from: s(1), records: records(4, 5) + records(8, 9), losses: [quota], retainedFrom: s(4),
                                nowUnixMilliseconds: 77, now: t0)
        guard case .publish(let out)? = a.first(where: { if case .publish = $0 { return true } else { return false } }) else { return XCTFail("\(a)") }
        XCTAssertEqual(out.batch.range, r(1, 9))
        XCTAssertEqual(out.batch.records.map(\.sequence), [s(4), s(5), s(8), s(9)])
        XCTAssertEqual(out.batch.losses.map(\.range), [r(1, 3), r(6, 7)])
        XCTAssertEqual(out.batch.losses.map(\.reason), [.notRetained, .diskQuota])
        // What the sender publishes, a receiver accepts.
        XCTAssertEqual(try SyncCodec.decodeBatch(out.payload, expectedDevice: dev), out.batch)
    }

    func testBatchByteLimitCutsTheBatch() {
        var c = config(perBatch: 1000)
        c.maxBatchBytes = 32_768
        var m = Sender(device: dev, epoch: epoch, head: s(400), acked: .zero, configuration: c)
        _ = m.connected(now: t0)
        let big = (1...400).map { n in
            LogRecord(sequence: s(UInt64(n)), timestamp: DeviceTimestamp(unixMilliseconds: 0),
                      values: try! SensorValues(["text": .text(String(repeating: "x", count: 200))]))
        }
        let a = m.recordsLoaded(from: s(1), records: big, losses: [], retainedFrom: s(1), nowUnixMilliseconds: 0, now: t0)
        guard case .publish(let out)? = a.first(where: { if case .publish = $0 { return true } else { return false } }) else { return XCTFail("\(a)") }
        XCTAssertLessThanOrEqual(out.payload.count, 32_768)
        XCTAssertGreaterThan(out.payload.count, 30_000, "the batch is filled close to the limit")
        XCTAssertLessThan(out.batch.range.last, s(400))
        XCTAssertTrue(a.contains(.loadRecords(from: out.batch.range.last.next, through: s(400), limit: 1000)))
    }

    /// The encoding is a setting: the same batches (same ranges, same loss markers, same
    /// replay id), announced with the compact content type, which a receiver decodes to the
    /// very batch; cut by the same (JSON) byte limit, so switching changes no boundary.
    func testCompactEncodingPublishesTheSameBatchesCompactly() throws {
        var c = config(perBatch: 5)
        c.encoding = .compact
        var m = Sender(device: dev, epoch: epoch, head: s(9), acked: .zero, configuration: c)
        _ = m.connected(now: t0)
        let quota = LossMarker(range: r(6, 7), reason: .diskQuota, recordedAtUnixMilliseconds: 5)
        let a = m.recordsLoaded(from: s(1), records: records(4, 5) + records(8, 9), losses: [quota], retainedFrom: s(4),
                                nowUnixMilliseconds: 77, now: t0)
        guard case .publish(let out)? = a.first(where: { if case .publish = $0 { return true } else { return false } }) else { return XCTFail("\(a)") }
        XCTAssertEqual(out.encoding, .compact)
        XCTAssertEqual(out.encoding.contentType, CompactBatchCodec.contentType)
        XCTAssertEqual(out.batch.losses.map(\.range), [r(1, 3), r(6, 7)])
        XCTAssertEqual(try SyncCodec.decodeAnyBatch(out.payload, contentType: out.encoding.contentType, expectedDevice: dev), out.batch)

        // The byte limit cuts where JSON would: the compact payload is far below it.
        var big = config(perBatch: 1000)
        big.maxBatchBytes = 32_768
        let json = Sender(device: dev, epoch: epoch, head: s(400), acked: .zero, configuration: big)
        big.encoding = .compact
        let compact = Sender(device: dev, epoch: epoch, head: s(400), acked: .zero, configuration: big)
        let texts = (1...400).map { n in
            LogRecord(sequence: s(UInt64(n)), timestamp: DeviceTimestamp(unixMilliseconds: 0),
                      values: try! SensorValues(["text": .text(String(repeating: "x", count: 200))]))
        }
        var outs: [OutgoingBatch] = []
        for var sender in [json, compact] {
            _ = sender.connected(now: t0)
            let b = sender.recordsLoaded(from: s(1), records: texts, losses: [], retainedFrom: s(1), nowUnixMilliseconds: 0, now: t0)
            guard case .publish(let o)? = b.first(where: { if case .publish = $0 { return true } else { return false } }) else { return XCTFail("\(b)") }
            outs.append(o)
        }
        XCTAssertEqual(outs[0].batch, outs[1].batch)
        XCTAssertEqual(outs.map(\.encoding), [.json, .compact])
        XCTAssertLessThan(outs[1].payload.count, outs[0].payload.count / 10)
    }

    func testReplayAnswersWithNotRetainedMarkersAndFinishes() {
        var m = Sender(device: dev, epoch: epoch, head: s(10), acked: s(10), configuration: config(perBatch: 5))
        _ = m.connected(now: t0)
        XCTAssertEqual(m.replayRequested(requestID: "r1", range: r(2, 30), now: t0), [.loadRecords(from: s(2), through: s(10), limit: 5)])
        // The log trimmed everything below 6. One marker and four records fill the 5 items.
        let a = m.recordsLoaded(from: s(2), records: records(6, 10), losses: [], retainedFrom: s(6), nowUnixMilliseconds: 1, now: t0)
        guard case .publish(let out)? = a.first else { return XCTFail("\(a)") }
        XCTAssertEqual(out.batch.replayRequestID, "r1")
        XCTAssertEqual(out.batch.range, r(2, 9))
        XCTAssertEqual(out.batch.losses.map(\.range), [r(2, 5)])
        XCTAssertEqual(out.batch.losses.map(\.reason), [.notRetained])
        XCTAssertTrue(a.contains(.loadRecords(from: s(10), through: s(10), limit: 5)), "\(a)")
        let b = m.recordsLoaded(from: s(10), records: records(10, 10), losses: [], retainedFrom: s(6), nowUnixMilliseconds: 1, now: t0)
        XCTAssertEqual(published(b), [r(10, 10)])
        XCTAssertTrue(b.contains(.replayFinished(requestID: "r1", resent: r(2, 10), notRetained: [r(2, 5)])), "\(b)")
        // Selective acks retire replay batches (through is already past them).
        _ = m.ackReceived(ack(10, stored: r(2, 9)), now: t0)
        _ = m.ackReceived(ack(10, stored: r(10, 10)), now: t0)
        XCTAssertEqual(m.inFlightRanges, [])
        XCTAssertEqual(m.replayRequested(requestID: "r2", range: r(11, 12), now: t0), [.replayFinished(requestID: "r2", resent: nil, notRetained: [])])
    }

    func testPublishConfirmedNeverMovesAcked() {
        var m = Sender(device: dev, epoch: epoch, head: s(3), acked: .zero, configuration: config())
        _ = m.connected(now: t0)
        _ = m.recordsLoaded(from: s(1), records: records(1, 3), losses: [], retainedFrom: s(1), nowUnixMilliseconds: 0, now: t0)
        XCTAssertEqual(m.publishConfirmed(r(1, 3)), [])
        XCTAssertEqual(m.acked, .zero)
        XCTAssertEqual(m.status(atUnixMilliseconds: 5, measuring: true).backlog, 3)
    }

    /// Resends `k` times on the timer, returning the last deadline armed.
    func resendRounds(_ m: inout Sender, from start: Int64, rounds: Int) -> [VirtualInstant] {
        var deadlines: [VirtualInstant] = []
        var t = at(start)
        for _ in 0..<rounds {
            let a = m.timerFired(now: t)
            guard let next = a.compactMap({ if case .armTimer(let d) = $0 { return d } else { return nil } }).last else { break }
            deadlines.append(next)
            t = next
        }
        return deadlines
    }

    func testTheProbeBackoffIsCappedWhileOtherBatchesBackOffFurther() {
        var c = config()
        c.resendDelayMax = .seconds(16)
        c.probeDelayMax = .seconds(2)
        var m = Sender(device: dev, epoch: epoch, head: s(6), acked: .zero, configuration: c)
        _ = m.connected(now: t0)
        _ = m.recordsLoaded(from: s(1), records: records(1, 3), losses: [], retainedFrom: s(1), nowUnixMilliseconds: 0, now: t0)
        _ = m.recordsLoaded(from: s(4), records: records(4, 6), losses: [], retainedFrom: s(1), nowUnixMilliseconds: 0, now: t0)
        // Nothing answers. The probe (1…3) is resent every 1, 2, 2, 2… s; 4…6 every 1, 2, 4, 8, 16 s.
        var probeTimes: [Int64] = [], otherTimes: [Int64] = []
        var t = at(1000)
        while t <= at(40_000) {
            let a = m.timerFired(now: t)
            for range in published(a) {
                if range == r(1, 3) { probeTimes.append(t.nanoseconds / 1_000_000) } else { otherTimes.append(t.nanoseconds / 1_000_000) }
            }
            t = t.advanced(by: .milliseconds(500))
        }
        XCTAssertEqual(Array(probeTimes.prefix(5)), [1000, 3000, 5000, 7000, 9000])
        XCTAssertEqual(otherTimes, [1000, 3000, 7000, 15000, 31000])
    }

    func testReconnectAndAckProgressResetTheBackoff() {
        var c = config()
        c.resendDelayMax = .seconds(64)
        var m = Sender(device: dev, epoch: epoch, head: s(6), acked: .zero, configuration: c)
        _ = m.connected(now: t0)
        _ = m.recordsLoaded(from: s(1), records: records(1, 3), losses: [], retainedFrom: s(1), nowUnixMilliseconds: 0, now: t0)
        _ = m.recordsLoaded(from: s(4), records: records(4, 6), losses: [], retainedFrom: s(1), nowUnixMilliseconds: 0, now: t0)
        // Backed off: 4…6 was last published at 15 s and is next due at 31 s.
        var t = at(1000)
        while t < at(16_000) { _ = m.timerFired(now: t); t = t.advanced(by: .milliseconds(500)) }
        // A broken connection and a reconnect: both batches go out at once, next due 1 s later.
        _ = m.disconnected()
        let a = m.connected(now: at(20_000))
        XCTAssertEqual(published(a), [r(1, 3), r(4, 6)])
        XCTAssertTrue(a.contains(.armTimer(at: at(21_000))), "\(a)")
        // Back off again without answers, then a selective ack for 1…3 (progress): 4…6, last
        // published at 27 s and due at 35 s, is due 1 s after its last publish, i.e. at once.
        t = at(21_000)
        while t < at(29_000) { _ = m.timerFired(now: t); t = t.advanced(by: .milliseconds(500)) }
        let p = m.ackReceived(ack(0, stored: r(1, 3)), now: at(30_000))
        XCTAssertEqual(p, [.armTimer(at: at(30_000))])
        XCTAssertEqual(published(m.timerFired(now: at(30_000))), [r(4, 6)])
    }
}
