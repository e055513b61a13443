import FieldlogCore
@testable import Sync
import XCTest

/// Transcripts of the device's sync session (spec §4.4): the connected rule, subscriptions,
/// status publishing and replay resolution.
final class DeviceSyncStateMachineTests: XCTestCase {
    typealias Session = DeviceSyncStateMachine<VirtualInstant>
    let dev = try! DeviceID("dev-1")
    let epoch = Epoch(7)
    let t0 = VirtualInstant.zero

    func s(_ n: UInt64) -> SequenceNumber { SequenceNumber(n) }
    func r(_ a: UInt64, _ b: UInt64) -> SequenceRange { SequenceRange(checked: s(a), s(b)) }
    func at(_ ms: Int64) -> VirtualInstant { VirtualInstant(nanoseconds: ms * 1_000_000) }
    func records(_ a: UInt64, _ b: UInt64) -> [LogRecord] {
        (a...b).map { LogRecord(sequence: s($0), timestamp: DeviceTimestamp(unixMilliseconds: Int64($0)), values: try! SensorValues(["t": .number(1)])) }
    }

    func session(head: UInt64 = 0, acked: UInt64 = 0, enabled: Bool = true) -> Session {
        var c = DeviceSyncConfiguration()
        c.sender.windowBatches = 2
        c.sender.maxRecordsPerBatch = 5
        c.sender.resendDelayInitial = .seconds(1)
        c.statusInterval = .seconds(10)
        c.subscribeRetryInitial = .seconds(1)
        c.subscribeRetryMax = .seconds(4)
        return Session(device: dev, epoch: epoch, head: s(head), acked: s(acked), senderEnabled: enabled, configuration: c)
    }

    func status(_ head: UInt64, _ acked: UInt64, measuring: Bool? = nil, at ms: Int64) -> Session.Action {
        .publishStatus(Status(device: dev, state: .online, epoch: epoch, head: s(head), acked: s(acked), atUnixMilliseconds: ms, measuring: measuring))
    }

    func testSendsOnlyWhileConnectedSubscribedAndEnabled() {
        var m = session(head: 3)
        XCTAssertEqual(m.brokerConnected(now: t0, wallMilliseconds: 5), [.subscribe(connection: 1), status(3, 0, at: 5)])
        XCTAssertFalse(m.isSending, "not subscribed yet")
        XCTAssertEqual(m.headObserved(s(4), measuring: true, now: t0, wallMilliseconds: 6), [], "nothing loads before the SUBACK")
        XCTAssertEqual(m.subscribed(connection: 1, now: t0), [.loadRecords(from: s(1), through: s(4), limit: 5)])
        XCTAssertTrue(m.isSending)
        let built = m.recordsLoaded(from: s(1), records: records(1, 4), losses: [], retainedFrom: s(1), nowUnixMilliseconds: 0, now: t0)
        XCTAssertTrue(built.contains { if case .publishBatch(let b) = $0 { return b.batch.range == r(1, 4) } else { return false } }, "\(built)")
        XCTAssertTrue(built.contains(.armTimer(.resend, at: at(1000))))
        // The switch pauses exactly like an outage: the resend timer stops, the window stays.
        XCTAssertEqual(m.senderSwitched(enabled: false, now: at(10)), [.cancelTimer(.resend)])
        XCTAssertEqual(m.senderSwitched(enabled: false, now: at(10)), [], "repeats are harmless")
        XCTAssertEqual(m.timerFired(.resend, now: at(5000)), [])
        // On again: what is unacked goes out at once.
        let on = m.senderSwitched(enabled: true, now: at(6000))
        XCTAssertTrue(on.contains { if case .publishBatch(let b) = $0 { return b.batch.range == r(1, 4) && b.resendCount == 1 } else { return false } }, "\(on)")
        // A broken connection stops it again; the next CONNACK subscribes again (connection 2).
        XCTAssertEqual(m.brokerDisconnected(now: at(7000)), [.cancelTimer(.resend)])
        XCTAssertEqual(m.brokerConnected(now: at(8000), wallMilliseconds: 9), [.subscribe(connection: 2), status(4, 0, measuring: true, at: 9)])
    }

    func testAFailedSubscribeIsRetriedWithBackoffAndStaleAnswersAreIgnored() {
        var m = session(head: 2)
        _ = m.brokerConnected(now: t0, wallMilliseconds: 0)
        XCTAssertEqual(m.subscribeFailed(connection: 1, now: t0), [.armTimer(.subscribeRetry, at: at(1000))])
        XCTAssertEqual(m.timerFired(.subscribeRetry, now: at(1000)), [.subscribe(connection: 1)])
        XCTAssertEqual(m.subscribeFailed(connection: 1, now: at(1000)), [.armTimer(.subscribeRetry, at: at(3000))])
        XCTAssertEqual(m.timerFired(.subscribeRetry, now: at(3000)), [.subscribe(connection: 1)])
        XCTAssertEqual(m.subscribeFailed(connection: 1, now: at(3000)), [.armTimer(.subscribeRetry, at: at(7000))])
        XCTAssertEqual(m.timerFired(.subscribeRetry, now: at(7000)), [.subscribe(connection: 1)])
        XCTAssertEqual(m.subscribeFailed(connection: 1, now: at(7000)), [.armTimer(.subscribeRetry, at: at(11_000))], "capped at 4 s")
        // The connection drops and comes back before the retry: the old retry and answers are void.
        XCTAssertEqual(m.brokerDisconnected(now: at(8000)), [.cancelTimer(.subscribeRetry)])
        XCTAssertEqual(m.timerFired(.subscribeRetry, now: at(11_000)), [])
        XCTAssertEqual(m.brokerConnected(now: at(12_000), wallMilliseconds: 0).first, .subscribe(connection: 2))
        XCTAssertEqual(m.subscribed(connection: 1, now: at(12_100)), [], "an answer for connection 1 is stale")
        XCTAssertFalse(m.isSending)
        XCTAssertEqual(m.subscribed(connection: 2, now: at(12_200)), [.loadRecords(from: s(1), through: s(2), limit: 5)])
    }

    func testStatusIsPublishedOnChangeAtMostEveryInterval() {
        var m = session(head: 1)
        XCTAssertEqual(m.headObserved(s(1), measuring: nil, now: t0, wallMilliseconds: 1), [], "offline: no status")
        XCTAssertEqual(m.brokerConnected(now: t0, wallMilliseconds: 1), [.subscribe(connection: 1), status(1, 0, at: 1)])
        XCTAssertEqual(m.headObserved(s(1), measuring: true, now: at(20_000), wallMilliseconds: 2), [status(1, 0, measuring: true, at: 2)],
                       "measuring became known")
        XCTAssertEqual(m.headObserved(s(1), measuring: true, now: at(24_000), wallMilliseconds: 3), [], "nothing changed")
        XCTAssertEqual(m.headObserved(s(2), measuring: true, now: at(25_000), wallMilliseconds: 4), [], "changed, but within 10 s")
        XCTAssertEqual(m.headObserved(s(2), measuring: true, now: at(31_000), wallMilliseconds: 5), [status(2, 0, measuring: true, at: 5)])
        XCTAssertEqual(m.headObserved(s(2), measuring: false, now: at(35_000), wallMilliseconds: 6), [])
        XCTAssertEqual(m.headObserved(s(2), measuring: false, now: at(41_000), wallMilliseconds: 7), [status(2, 0, measuring: false, at: 7)])
    }

    func testUndecodableAndForeignAcksAreAnomaliesNotCrashes() {
        var m = session(head: 2)
        guard case .reportAnomaly(let text)? = m.ackPayloadReceived(Array("{\"v\":1".utf8), now: t0).first else { return XCTFail() }
        XCTAssertTrue(text.contains("undecodable ack"), text)
        let other = Ack(device: try! DeviceID("dev-2"), epoch: epoch, through: s(1))
        guard case .reportAnomaly? = m.ackPayloadReceived(SyncCodec.encode(other), now: t0).first else { return XCTFail() }
        XCTAssertEqual(m.ackPayloadReceived(SyncCodec.encode(Ack(device: dev, epoch: epoch, through: s(2))), now: t0),
                       [.persistAcked(through: s(2))])
    }

    func testReplayBoundsAreResolvedAgainstTheLog() {
        var m = session(head: 25, acked: 25)
        _ = m.brokerConnected(now: t0, wallMilliseconds: 0)
        _ = m.subscribed(connection: 1, now: t0)
        // No bounds: the oldest retained record through the head, capped by count.
        let a = m.replayRequested(ReplayQuery(requestID: nil, from: nil, to: nil, count: 3), ticket: 1, oldestRetained: s(11), logHead: s(25), now: t0)
        XCTAssertEqual(a, [.loadRecords(from: s(11), through: s(13), limit: 5)])
        // A head read for the command that is newer than the session's is taken in.
        var behind = session(head: 2)
        _ = behind.replayRequested(ReplayQuery(requestID: "h", from: s(1), to: nil, count: nil), ticket: 8, oldestRetained: s(1), logHead: s(9), now: t0)
        XCTAssertEqual(behind.sender.head, s(9))
        // A bare `to` below the oldest retained: from comes first and passes to: nothing to resend.
        XCTAssertEqual(m.replayRequested(ReplayQuery(requestID: "x", from: nil, to: s(5), count: nil), ticket: 2, oldestRetained: s(11),
                                         logHead: s(25), now: t0),
                       [.answerReplay(2, .finished(resent: nil, notRetained: []))])
        // An empty log: from defaults to head + 1.
        var empty = session()
        XCTAssertEqual(empty.replayRequested(ReplayQuery(requestID: "e", from: nil, to: nil, count: nil), ticket: 9, oldestRetained: nil,
                                             logHead: .zero, now: t0),
                       [.answerReplay(9, .finished(resent: nil, notRetained: []))])
        // A huge count saturates instead of wrapping.
        XCTAssertEqual(m.replayRequested(ReplayQuery(requestID: "big", from: s(24), to: nil, count: Int64.max), ticket: 3, oldestRetained: s(11),
                                         logHead: s(25), now: t0), [])
        // The same id while it runs is refused; unnamed requests get ids of their own.
        XCTAssertEqual(m.replayRequested(ReplayQuery(requestID: "big", from: s(1), to: s(2), count: nil), ticket: 4, oldestRetained: s(11),
                                         logHead: s(25), now: t0),
                       [.answerReplay(4, .refused("a replay with id big is already running"))])
        // The first replay's batch is built and it is answered exactly once, by its ticket.
        let built = m.recordsLoaded(from: s(11), records: records(11, 13), losses: [], retainedFrom: s(11), nowUnixMilliseconds: 0, now: t0)
        XCTAssertTrue(built.contains(.answerReplay(1, .finished(resent: r(11, 13), notRetained: []))), "\(built)")
        guard case .publishBatch(let batch)? = built.first else { return XCTFail("\(built)") }
        XCTAssertEqual(batch.batch.replayRequestID, "local-1")
        // Shutdown refuses what still runs and says offline.
        let stop = m.shuttingDown(wallMilliseconds: 77)
        XCTAssertEqual(stop, [.answerReplay(3, .refused("the device is shutting down")),
                              .publishStatus(Status(device: dev, state: .offline, epoch: epoch, head: s(25), acked: s(25), atUnixMilliseconds: 77))])
    }

    func testTooManyQueuedReplaysAreRefused() {
        var m = session(head: 100, acked: 100)
        for k in 0..<SenderStateMachine<VirtualInstant>.maxQueuedReplays {
            _ = m.replayRequested(ReplayQuery(requestID: "q\(k)", from: s(1), to: s(2), count: nil), ticket: UInt64(k), oldestRetained: s(1),
                                  logHead: s(100), now: t0)
        }
        XCTAssertEqual(m.replayRequested(ReplayQuery(requestID: "one-more", from: s(1), to: s(2), count: nil), ticket: 99, oldestRetained: s(1),
                                         logHead: s(100), now: t0),
                       [.answerReplay(99, .refused("too many replays queued; ask again later"))])
    }
}
