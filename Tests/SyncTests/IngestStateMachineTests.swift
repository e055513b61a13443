import FieldlogCore
@testable import Sync
import TestSupport
import XCTest

/// Transcripts of the ingest state machine (spec §5): given this state, this event gives these actions.
final class IngestStateMachineTests: XCTestCase {
    typealias Machine = IngestStateMachine<VirtualInstant>
    let dev = try! DeviceID("dev-1")
    let epoch = Epoch(7)
    let t0 = VirtualInstant.zero
    func s(_ n: UInt64) -> SequenceNumber { SequenceNumber(n) }
    func r(_ a: UInt64, _ b: UInt64) -> SequenceRange { SequenceRange(checked: s(a), s(b)) }
    var batchTopic: String { TopicTemplates.defaults.batch.topic(device: dev) }

    func batch(_ a: UInt64, _ b: UInt64, device: DeviceID? = nil, text: String? = nil) -> [UInt8] {
        let d = device ?? dev
        return SyncCodec.encode(Batch(device: d, epoch: epoch, range: r(a, b), records: (a...b).map {
            LogRecord(sequence: s($0), timestamp: DeviceTimestamp(unixMilliseconds: 1_700_000_000_000),
                      values: try! SensorValues(text.map { ["t": .text($0)] } ?? ["t": .number(1)]))
        }))
    }

    func writes(_ actions: [Machine.Action]) -> [IngestTransaction] {
        actions.compactMap { if case .write(let tx) = $0 { return tx } else { return nil } }
    }
    func acks(_ actions: [Machine.Action]) -> [Ack] {
        actions.flatMap { a -> [Ack] in if case .publishAcks(let list) = a { return list.map(\.ack) } else { return [] } }
    }
    func committed(_ m: inout Machine, _ tx: IngestTransaction, ranges: [[SequenceRange]]) -> [Machine.Action] {
        let read = m.transactionCommitted(tx.id, result: WriteResult(readingsInserted: tx.recordCount, legacyInserted: 0), now: t0)
        guard case .readProgress(let id, _)? = read.first else {
            return read
        }
        return m.progressRead(id, ranges: ranges, nowUnixMilliseconds: 1_700_000_001_000, now: t0)
    }

    func testValidBatchIsWrittenThenAckedOnlyAfterCommitAndProgressRead() throws {
        var m = Machine()
        let a = m.messageReceived(topic: batchTopic, payload: batch(4, 6), now: t0)
        let tx = try XCTUnwrap(writes(a).first)
        XCTAssertEqual(tx.batches.map(\.range), [r(4, 6)])
        XCTAssertEqual(tx.newDevices, [dev])
        XCTAssertEqual(tx.newEpochs, [EpochKey(device: dev, epoch: epoch)])
        XCTAssertEqual(acks(a), [], "nothing is acked before the commit")
        let read = m.transactionCommitted(tx.id, result: WriteResult(readingsInserted: 3, legacyInserted: 0), now: t0)
        guard case .readProgress(let id, let queries)? = read.first else { return XCTFail("\(read)") }
        XCTAssertEqual(queries.map(\.above), [.zero])
        XCTAssertEqual(acks(read), [], "nor before the progress read")
        let done = m.progressRead(id, ranges: [[r(1, 3), r(4, 6)]], nowUnixMilliseconds: 1_700_000_001_000, now: t0)
        XCTAssertEqual(acks(done), [Ack(device: dev, epoch: epoch, through: s(6), stored: r(4, 6))])
        guard case .committed(let report)? = done.last else { return XCTFail("\(done)") }
        XCTAssertEqual(report.lags.first?.delayMilliseconds, 1_000)
        XCTAssertTrue(m.isIdle)
        // The next batch continues the cached prefix: acked at once, no read (our commit is in the store).
        let next = try XCTUnwrap(writes(m.messageReceived(topic: batchTopic, payload: batch(7, 7), now: t0)).first)
        XCTAssertEqual(next.newDevices, [], "known devices are not inserted again")
        let contiguous = m.transactionCommitted(next.id, result: WriteResult(readingsInserted: 1, legacyInserted: 0), now: t0)
        XCTAssertFalse(contiguous.contains { if case .readProgress = $0 { true } else { false } })
        XCTAssertEqual(acks(contiguous), [Ack(device: dev, epoch: epoch, through: s(7), stored: r(7, 7))])
        // One after a hole reads, and only above the checkpoint.
        let after = try XCTUnwrap(writes(m.messageReceived(topic: batchTopic, payload: batch(9, 9), now: t0)).first)
        guard case .readProgress(_, let q2)? = m.transactionCommitted(after.id, result: WriteResult(readingsInserted: 1, legacyInserted: 0), now: t0).first else { return XCTFail() }
        XCTAssertEqual(q2.map(\.above), [s(7)])
    }

    func testALostConnectionIsRetriedAfterBackoffAndNothingIsAcked() throws {
        var m = Machine()
        let tx = try XCTUnwrap(writes(m.messageReceived(topic: batchTopic, payload: batch(1, 2), now: t0)).first)
        let failed = m.transactionFailed(tx.id, failure: .connection("2013"), now: t0)
        XCTAssertTrue(failed.contains(.reconnectDatabase))
        guard case .armTimer(let at)? = failed.last else { return XCTFail("\(failed)") }
        XCTAssertEqual(m.timerFired(now: t0), [], "not before the backoff")
        let again = try XCTUnwrap(writes(m.timerFired(now: at)).first)
        XCTAssertEqual(again.batches, tx.batches, "the same messages, in a new transaction")
        XCTAssertNotEqual(again.id, tx.id)
        // Many more lost connections: still retried (a database outage is waited out, never dropped).
        var current = again, now = at
        for _ in 0..<50 {
            let f = m.transactionFailed(current.id, failure: .connection("2013"), now: now)
            guard case .armTimer(let next)? = f.last else { return XCTFail("\(f)") }
            XCTAssertLessThanOrEqual(now.duration(to: next), .seconds(5), "backoff is capped")
            now = next
            current = try XCTUnwrap(writes(m.timerFired(now: now)).first)
        }
        XCTAssertEqual(acks(committed(&m, current, ranges: [[r(1, 2)]])).map(\.through), [s(2)])
    }

    func testConflictsAreRetriedABoundedNumberOfTimesThenTheMessageIsIsolated() throws {
        var c = IngestConfiguration()
        c.conflictRetries = 2
        c.unknownErrorAttempts = 1
        var m = Machine(configuration: c)
        var tx = try XCTUnwrap(writes(m.messageReceived(topic: batchTopic, payload: batch(1, 1), now: t0)).first)
        for _ in 0..<2 {
            let f = m.transactionFailed(tx.id, failure: .conflict("1213"), now: t0)
            XCTAssertFalse(f.contains(.reconnectDatabase), "a conflict keeps the connection")
            guard case .armTimer(let at)? = f.last else { return XCTFail("\(f)") }
            tx = try XCTUnwrap(writes(m.timerFired(now: at)).first)
        }
        // Conflicts exhausted, and no unknown attempts left: the lone batch is stored with its records kept aside.
        let isolated = m.transactionFailed(tx.id, failure: .conflict("1213"), now: t0)
        let weaker = try XCTUnwrap(writes(isolated).first)
        XCTAssertEqual(weaker.batches.first?.records, [])
        XCTAssertEqual(weaker.batches.first?.rejected.map(\.sequence), [s(1)])
        XCTAssertEqual(acks(committed(&m, weaker, ranges: [[r(1, 1)]])), [Ack(device: dev, epoch: epoch, through: s(1), stored: r(1, 1), rejected: [s(1)])])
    }

    /// Issue D1's class: a value the database refuses for good never stalls the others.
    func testARefusedMessageIsIsolatedAndKeptAsideWhileTheRestIsStored() throws {
        var m = Machine()
        let other = try DeviceID("dev-2")
        // Queue three messages before the first write completes: the first group holds one, the next two.
        let first = try XCTUnwrap(writes(m.messageReceived(topic: batchTopic, payload: batch(1, 1), now: t0)).first)
        XCTAssertEqual(writes(m.messageReceived(topic: batchTopic, payload: batch(2, 3, text: "poison"), now: t0)), [])
        XCTAssertEqual(writes(m.messageReceived(topic: TopicTemplates.defaults.batch.topic(device: other), payload: batch(1, 2, device: other), now: t0)), [])
        var next = committed(&m, first, ranges: [[r(1, 1)]])
        var tx = try XCTUnwrap(writes(next).first)
        XCTAssertEqual(tx.batches.count, 2)
        var stored: [StoreRequest] = []
        var isolations = 0
        // The store refuses any transaction holding the poison record, as MariaDB refuses 1366.
        for _ in 0..<10 {
            if tx.batches.contains(where: { $0.records.contains { $0.values["t"] == .text("poison") } }) {
                next = m.transactionFailed(tx.id, failure: .refused("1366 incorrect string value"), now: t0)
                isolations += next.filter { if case .isolating = $0 { true } else { false } }.count
            } else {
                stored += tx.batches
                next = committed(&m, tx, ranges: tx.batches.map { [SequenceRange(checked: s(1), $0.range.last)] })
            }
            guard let n = writes(next).first else { break }
            tx = n
        }
        XCTAssertEqual(isolations, 1, "split once: two messages")
        XCTAssertEqual(Set(stored.map(\.device)), [dev, other])
        let poison = try XCTUnwrap(stored.first { $0.device == dev })
        XCTAssertEqual(poison.records, [])
        XCTAssertEqual(poison.rejected.map(\.sequence), [s(2), s(3)])
        XCTAssertTrue(poison.rejected[0].reason.contains("1366"), poison.rejected[0].reason)
        XCTAssertTrue(m.isIdle)
    }

    func testAStatusTheDatabaseRefusesBecomesADeadLetterAndThenAMinimalOne() throws {
        var m = Machine()
        let status = SyncCodec.encode(Status(device: dev, state: .online))
        var tx = try XCTUnwrap(writes(m.messageReceived(topic: TopicTemplates.defaults.status.topic(device: dev), payload: status, now: t0)).first)
        XCTAssertEqual(tx.statuses.count, 1)
        var seen: [String] = []
        for _ in 0..<5 {
            let a = m.transactionFailed(tx.id, failure: .refused("4025 check constraint"), now: t0)
            guard let n = writes(a).first else {
                XCTAssertTrue(a.contains { if case .abandoned = $0 { true } else { false } }, "\(a)")
                break
            }
            tx = n
            seen.append(tx.deadLetters.map { "\($0.reason.rawValue):\($0.topic.isEmpty ? "minimal" : "full")" }.joined())
        }
        XCTAssertEqual(seen, ["store-refused:full", "store-refused:minimal"], "never retried for ever")
        XCTAssertTrue(m.isIdle)
    }

    func testEveryInvalidClassIsADeadLetterWithItsReasonInTheTransaction() throws {
        var m = Machine()
        let cases: [(String, [UInt8], DeadLetterReason)] = [
            ("fieldlog/v1/devices/dev-2/batch", batch(1, 2), .deviceMismatch),
            ("fieldlog/v1/devices/dev-1/batch", Array("{not json".utf8), .malformedJSON),
            ("fieldlog/v1/devices/dev-1/batch", Array(#"{"v":9,"type":"batch"}"#.utf8), .unknownVersion),
            ("fieldlog/v1/devices/dev-1/batch", [UInt8](repeating: 0x20, count: ProtocolLimits.maxMessageBytes + 1), .oversize),
            ("fieldlog/v1/devices/dev-1/batch", Array(#"{"v":1,"type":"batch","device":"dev-1","epoch":"0000000000000007","first":3,"last":2,"records":[]}"#.utf8), .sequenceRegression),
            ("fieldlog/v1/devices/dev-1/batch", Array(#"{"v":1,"type":"batch","device":"dev-1","epoch":"0000000000000007","first":1,"last":2,"records":[]}"#.utf8), .rangeMismatch),
            ("fieldlog/v1/devices/dev-1/batch", Array(#"{"v":1,"type":"status","device":"dev-1","state":"online"}"#.utf8), .invalidMessage),
            ("fieldlog/v1/devices/dev-1/status", Array(#"{"v":1,"type":"status","device":"dev-9","state":"online"}"#.utf8), .deviceMismatch),
            ("fieldlog/v1/devices/dev-1/response", Array(#"{"v":1,"command":"get_config","id":"\u00e9","ok":true}"#.utf8), .invalidMessage),
            ("fieldlog/v1/devices/dev-1/response", Array(#"{"v":1,"command":"get_config","id":"","ok":true}"#.utf8), .invalidMessage),
            ("fieldlog/v1/devices/dev-1/response", Array(#"{"v":1,"command":"get_config","id":"a b","ok":true}"#.utf8), .invalidMessage),
            ("iot-projekt/device/dev-1/values", Array(#"[{"_id":"x"}]"#.utf8), .legacyMalformed),
            ("fieldlog/v1/devices/bad+id/batch", batch(1, 1), .unknownTopic),
            ("somewhere/else", batch(1, 1), .unknownTopic),
        ]
        var letters: [DeadLetter] = []
        var pending = try XCTUnwrap(writes(m.messageReceived(topic: cases[0].0, payload: cases[0].1, now: t0)).first)
        for (topic, payload, _) in cases.dropFirst() { XCTAssertEqual(writes(m.messageReceived(topic: topic, payload: payload, now: t0)), []) }
        while true {
            letters += pending.deadLetters
            XCTAssertEqual(pending.batches, [], "nothing invalid is ever stored")
            XCTAssertEqual(StoreRows(pending).violations(), [])
            guard let n = writes(committed(&m, pending, ranges: [])).first else { break }
            pending = n
        }
        // Served round robin by device, so in another order; each with its own reason.
        func key(_ topic: String, _ bytes: Int, _ reason: DeadLetterReason) -> String { "\(topic) \(bytes) \(reason.rawValue)" }
        XCTAssertEqual(letters.map { key($0.topic, $0.payloadBytes, $0.reason) }.sorted(), cases.map { key($0.0, $0.1.count, $0.2) }.sorted())
        for d in letters {
            XCTAssertLessThanOrEqual(d.payloadExcerpt.count, DeadLetter.excerptBytes)
            XCTAssertFalse(d.message.isEmpty)
        }
    }

    /// Issue D2: a declared range up to 2^53 and a batch inside it; the ack rule must not trap.
    /// §5.5 rule C: the batches of one log that a commit's `through` covers get one ack, the
    /// highest one's; a batch above a hole, or one with rejected numbers, keeps its own.
    func testBatchesThroughCoversGetOneAckPerLogAndTheOthersKeepTheirs() throws {
        var m = Machine()
        let other = try DeviceID("dev-2")
        // The first transaction (1…2) establishes the prefix; 3…4, 5…6 and 7…8 queue behind it,
        // then 10…11 (above a hole at 9), and another device's 1…1 (its one record rejected)
        // and 2…2.
        let first = try XCTUnwrap(writes(m.messageReceived(topic: batchTopic, payload: batch(1, 2), now: t0)).first)
        for (a, b) in [(3, 4), (5, 6), (7, 8), (10, 11)] as [(UInt64, UInt64)] {
            XCTAssertEqual(writes(m.messageReceived(topic: batchTopic, payload: batch(a, b), now: t0)), [])
        }
        let otherTopic = TopicTemplates.defaults.batch.topic(device: other)
        let rejected = #"{"v":1,"type":"batch","device":"dev-2","epoch":"0000000000000007","first":1,"last":1,"records":[{"seq":1,"ts":-9223372036854775808,"values":{"t":1}}]}"#
        _ = m.messageReceived(topic: otherTopic, payload: Array(rejected.utf8), now: t0)
        _ = m.messageReceived(topic: otherTopic, payload: batch(2, 2, device: other), now: t0)
        let afterFirst = committed(&m, first, ranges: [[r(1, 2)]])
        XCTAssertEqual(acks(afterFirst).map(\.through), [s(2)])
        let group = try XCTUnwrap(writes(afterFirst).first)
        XCTAssertEqual(Set(group.batches.map(\.range)), [r(3, 4), r(5, 6), r(7, 8), r(10, 11), r(1, 1), r(2, 2)])
        let done = committed(&m, group, ranges: [[r(3, 4), r(5, 6), r(7, 8), r(10, 11)], [r(1, 1), r(2, 2)]])
        let sent = acks(done)
        XCTAssertEqual(sent.filter { $0.device == dev }.map { [$0.through.rawValue, $0.stored!.first.rawValue, $0.stored!.last.rawValue] },
                       [[8, 7, 8], [8, 10, 11]], "one ack covers 3…8; 10…11, above the hole at 9, is acked selectively")
        XCTAssertEqual(sent.first { $0.device == dev }?.missing, [r(9, 9)])
        XCTAssertEqual(sent.filter { $0.device == other }.map { [$0.through.rawValue, $0.stored!.last.rawValue] }, [[2, 1], [2, 2]],
                       "the batch with a rejected number keeps its ack, to report it")
        XCTAssertEqual(sent.first { $0.device == other }?.rejected, [s(1)])
        guard case .committed(let report)? = done.last(where: { if case .committed = $0 { true } else { false } }) else { return XCTFail("\(done)") }
        XCTAssertEqual(report.batches, 6)
    }

    func testRangesUpToTheProtocolMaximumAreAckedWithoutTrapping() throws {
        var m = Machine()
        let pair = HostilePayloads.d2Pair(device: dev)
        let tx = try XCTUnwrap(writes(m.messageReceived(topic: pair[0].topic, payload: pair[0].payload, now: t0)).first)
        _ = m.messageReceived(topic: pair[1].topic, payload: pair[1].payload, now: t0)
        let after = committed(&m, tx, ranges: [[r(5, 5)]])
        let second = try XCTUnwrap(writes(after).first)
        XCTAssertEqual(second.batches.first?.range, SequenceRange(checked: s(1), .max))
        let done = committed(&m, second, ranges: [[SequenceRange(checked: s(1), .max), r(5, 5)]])
        XCTAssertEqual(acks(done).map(\.through), [.max])
        XCTAssertEqual(AckRule.storedThrough(checkpoint: .max, ranges: [r(5, 5), SequenceRange(checked: s(1), .max)]), .max)
        XCTAssertEqual(AckRule.missing(after: .max, ranges: [r(5, 5)]), [])
        XCTAssertEqual(AckRule.storedThrough(checkpoint: SequenceNumber(UInt64.max), ranges: [r(1, 2)]), SequenceNumber(UInt64.max), "total even beyond the protocol")
    }

    /// Issue D3: a timestamp outside §3.1 rejects that record only, and nothing overflows.
    func testATimestampOutsideTheLimitsRejectsTheRecordOnly() throws {
        var m = Machine()
        let json = #"{"v":1,"type":"batch","device":"dev-1","epoch":"0000000000000007","first":1,"last":2,"records":[{"seq":1,"ts":-9223372036854775808,"values":{"t":1}},{"seq":2,"ts":1700000000000,"values":{"t":1}}]}"#
        let tx = try XCTUnwrap(writes(m.messageReceived(topic: batchTopic, payload: Array(json.utf8), now: t0)).first)
        XCTAssertEqual(tx.batches.first?.records.map(\.sequence), [s(2)])
        XCTAssertEqual(tx.batches.first?.rejected.map(\.sequence), [s(1)])
        let done = committed(&m, tx, ranges: [[r(1, 2)]])
        XCTAssertEqual(acks(done).first?.rejected, [s(1)])
    }

    func testAProgressReadThatMissesOurOwnCommitAcksNothing() throws {
        var m = Machine()
        // 4…6 does not continue a known prefix, so the prefix is read; the read misses our commit.
        let tx = try XCTUnwrap(writes(m.messageReceived(topic: batchTopic, payload: batch(4, 6), now: t0)).first)
        let done = committed(&m, tx, ranges: [[]])
        XCTAssertEqual(acks(done), [])
        XCTAssertTrue(done.contains { if case .notAcked = $0 { true } else { false } })
    }

    func testBackpressurePausesAboveTheMarkAndResumesBelowHalf() throws {
        var c = IngestConfiguration()
        c.maxQueuedBytes = 2 * ProtocolLimits.maxMessageBytes
        c.maxQueuedBytesPerDevice = c.maxQueuedBytes
        c.maxMessagesPerTransaction = 1
        var m = Machine(configuration: c)
        let big = [UInt8](repeating: 0x20, count: 200_000)
        let first = try XCTUnwrap(writes(m.messageReceived(topic: batchTopic, payload: big, now: t0)).first)
        var paused = false
        for k in 0..<3 {
            let a = m.messageReceived(topic: TopicTemplates.defaults.batch.topic(device: try DeviceID("d\(k)")), payload: big, now: t0)
            if a.contains(.pauseReading) { paused = true }
        }
        XCTAssertTrue(paused && m.readingPaused)
        // Beyond twice the mark (what arrives while reading pauses): dropped, counted, unacked.
        var dropped = false
        for k in 3..<6 {
            let a = m.messageReceived(topic: TopicTemplates.defaults.batch.topic(device: try DeviceID("d\(k)")), payload: big, now: t0)
            if a.contains(where: { if case .dropped(_, _, _, .queueFull) = $0 { true } else { false } }) { dropped = true }
        }
        XCTAssertTrue(dropped)
        var next = committed(&m, first, ranges: [])
        var resumed = next.contains(.resumeReading)
        while let tx = writes(next).first {
            next = committed(&m, tx, ranges: [])
            if next.contains(.resumeReading) { resumed = true }
        }
        XCTAssertTrue(resumed && !m.readingPaused)
        XCTAssertEqual(m.queuedBytes, 0)
    }

    func testOneDeviceCannotTakeTheQueueNorTheTransactionsFromAnother() throws {
        var c = IngestConfiguration()
        c.maxQueuedBytesPerDevice = ProtocolLimits.maxMessageBytes
        c.maxMessagesPerTransaction = 4
        var m = Machine(configuration: c)
        let evil = try DeviceID("evil")
        let evilTopic = TopicTemplates.defaults.batch.topic(device: evil)
        let first = try XCTUnwrap(writes(m.messageReceived(topic: evilTopic, payload: Array("junk".utf8), now: t0)).first)
        var droppedShare = 0
        for _ in 0..<100 {
            let a = m.messageReceived(topic: evilTopic, payload: [UInt8](repeating: 0x41, count: 10_000), now: t0)
            droppedShare += a.filter { if case .dropped(_, _, _, .deviceShare) = $0 { true } else { false } }.count
        }
        XCTAssertGreaterThan(droppedShare, 70, "the evil device is held to its share")
        _ = m.messageReceived(topic: batchTopic, payload: batch(1, 1), now: t0)
        let next = try XCTUnwrap(writes(committed(&m, first, ranges: [])).first)
        XCTAssertEqual(next.batches.map(\.device), [dev], "the honest device's batch is in the very next transaction")
        XCTAssertEqual(next.deadLetters.count, 3)
    }

    func testStatusesAndResponsesCommitApartFromReadings() throws {
        var m = Machine()
        let first = try XCTUnwrap(writes(m.messageReceived(topic: batchTopic, payload: batch(1, 1), now: t0)).first)
        _ = m.messageReceived(topic: TopicTemplates.defaults.status.topic(device: dev), payload: SyncCodec.encode(Status(device: dev, state: .online)), now: t0)
        _ = m.messageReceived(topic: batchTopic, payload: batch(2, 2), now: t0)
        let resp = CommandResponse(requestID: "r-1", command: "replay", resent: r(1, 3))
        _ = m.messageReceived(topic: TopicTemplates.defaults.response.topic(device: dev), payload: SyncCodec.encode(resp), now: t0)
        let data = try XCTUnwrap(writes(committed(&m, first, ranges: [[r(1, 1)]])).first)
        XCTAssertEqual(data.batches.map(\.range), [r(2, 2)])
        XCTAssertEqual(data.statuses, [])
        let state = try XCTUnwrap(writes(committed(&m, data, ranges: [[r(1, 2)]])).first)
        XCTAssertEqual(state.statuses.map(\.state), [.online])
        XCTAssertEqual(state.responses.map(\.outcome), ["resent 1…3"])
        XCTAssertTrue(state.responses[0].response.ok, "success is the response's ok, whatever the outcome text says")
        XCTAssertEqual(m.subscriptionFilters, ["fieldlog/v1/devices/+/batch", "fieldlog/v1/devices/+/status",
                                               "fieldlog/v1/devices/+/response", "iot-projekt/device/+/values"])
    }

    func testRowsOfValidTransactionsFitTheirColumnsAndBrokenRowsAreFound() {
        var tx = IngestTransaction()
        tx.batches = [StoreRequest(try! SyncCodec.decodeBatch(batch(1, 3)), topic: batchTopic)]
        tx.deadLetters = [DeadLetter(topic: String(repeating: "é", count: 2_000), reason: .malformedJSON, message: String(repeating: "💥", count: 5_000),
                                     topicDevice: nil, payload: [UInt8](repeating: 0, count: 5_000))]
        tx.responses = [ResponseRecord(device: dev, response: CommandResponse(requestID: "r", command: "x", message: String(repeating: "\u{0}", count: 1_024)))]
        XCTAssertEqual(StoreRows(tx).violations(), [], "clipped to the columns")
        var broken = StoreRows(tx)
        broken.readings[0].seq = SequenceNumber.max.rawValue + 1
        broken.responses[0].requestID = "é"
        XCTAssertEqual(broken.violations().count, 2, "\(broken.violations())")
    }

    func testValsAndTextsAreTheDeterministicJSONOfTheValuesInNameOrder() throws {
        let v = try SensorValues(["temp": .number(21.5), "count": .number(3), "state": .text("on \"x\"\n"), "tiny": .number(1e-7)])
        let vals = StoreRows.vals(v), texts = StoreRows.texts(v)
        XCTAssertEqual(vals, #"{"count":3.0,"temp":21.5,"tiny":1e-07}"#)
        XCTAssertEqual(texts, #"{"state":"on \"x\"\n"}"#)
        XCTAssertEqual(Array(vals.utf8), JSONWriter.encode(.object(v.sorted.compactMap { name, value in
            if case .number(let d) = value { return (name, .double(d)) } else { return nil }
        })), "the same bytes as the protocol's writer")
        XCTAssertTrue(Columns.vals(vals))
        XCTAssertTrue(Columns.texts(try XCTUnwrap(texts)))
        XCTAssertEqual(StoreRows.values(vals: vals, texts: texts), v, "read back as written")
        XCTAssertEqual(StoreRows.vals(try SensorValues([:])), "{}")
        XCTAssertNil(StoreRows.texts(try SensorValues(["temp": .number(1)])), "no texts, no object")
        XCTAssertTrue(Columns.vals("{}"))
        for bad in [#"[{"s":"temp","n":1}]"#, #"{"a b":1}"#, #"{"temp":null}"#, #"{"temp":[1]}"#, #"{"state":"on"}"#, "{"] {
            XCTAssertFalse(Columns.vals(bad), bad)
        }
        for bad in ["{}", #"{"temp":1}"#, #"{"a b":"x"}"#] { XCTAssertFalse(Columns.texts(bad), bad) }
        XCTAssertNil(StoreRows.values(vals: #"{"state":1}"#, texts: #"{"state":"on"}"#), "one sensor, one value")
        // The longest reading the spec allows fits the VARCHAR column (schema 9).
        var longest: [String: SensorValue] = [:]
        for k in 0..<64 { longest[String(repeating: "n", count: 62) + (k < 10 ? "0" : "") + String(k)] = .number(k % 2 == 0 ? -2.2250738585072014e-308 : -1.7976931348623157e308) }
        let widest = StoreRows.vals(try SensorValues(longest))
        XCTAssertLessThanOrEqual(widest.utf8.count, StoreRows.maxValsBytes, "\(widest.utf8.count) bytes")
        XCTAssertTrue(Columns.ascii(widest, StoreRows.maxValsBytes) && Columns.vals(widest))
    }

    func testAckRuleIsTheContiguousPrefixOfCommittedRanges() {
        XCTAssertEqual(AckRule.storedThrough(checkpoint: .zero, ranges: []), .zero)
        XCTAssertEqual(AckRule.storedThrough(checkpoint: .zero, ranges: [r(4, 6), r(1, 3)]), s(6))
        XCTAssertEqual(AckRule.storedThrough(checkpoint: .zero, ranges: [r(4, 6), r(2, 3)]), .zero, "1 is missing")
        XCTAssertEqual(AckRule.storedThrough(checkpoint: s(10), ranges: [r(11, 12), r(5, 15), r(17, 20)]), s(15), "overlaps extend")
        XCTAssertEqual(AckRule.missing(after: s(3), ranges: [r(1, 3), r(6, 8), r(12, 12)]), [r(4, 5), r(9, 11)])
    }

    func testTopicTemplatesIncludingSeedNamesAndEnvironment() throws {
        let seed = TopicTemplates.seedCompatible
        XCTAssertEqual(seed.request.topic(device: dev), "iot-projekt/device/dev-1/request")
        XCTAssertEqual(seed.request.filter, "iot-projekt/device/+/request")
        XCTAssertEqual(seed.request.device(inTopic: "iot-projekt/device/dev-1/request"), dev)
        XCTAssertNil(seed.request.device(inTopic: "iot-projekt/device/dev-1/response"))
        let t = try TopicTemplates.fromEnvironment(["MQTT_TOPIC_REQUEST": "x/%(app_name)s/%(device_uuid)s/req",
                                                    "FIELDLOG_TOPIC_BATCH": "y/{device}/b"])
        XCTAssertEqual(t.request.topic(device: dev, identity: DeviceIdentity(appName: "app")), "x/app/dev-1/req")
        XCTAssertEqual(t.request.device(inTopic: "x/app/dev-1/req"), dev)
        XCTAssertEqual(t.batch.topic(device: dev), "y/dev-1/b")
        XCTAssertEqual(try TopicTemplates.fromEnvironment(["FIELDLOG_TOPIC_ACK": "", "MQTT_TOPIC_REQUEST": ""]), TopicTemplates.defaults,
                       "an empty value means unset, as for every other setting")
        XCTAssertThrowsError(try TopicTemplates.fromEnvironment(["FIELDLOG_TOPIC_ACK": "fixed/ack"])) {
            XCTAssertTrue("\($0)".contains("FIELDLOG_TOPIC_ACK"), "\($0)")
        }
        XCTAssertThrowsError(try TopicTemplate("a/{devices}/b"))
        XCTAssertThrowsError(try TopicTemplate("a/+/b"))
        XCTAssertThrowsError(try TopicTemplate("a/{device}/{device}"))
    }

    /// Thousands of hostile messages through the machine: every one ends in a write (as data or
    /// a dead letter with a reason), every row fits, nothing traps, the honest device is acked.
    func testHostileTrafficEndsAsDeadLettersOrDataAndTheHonestDeviceIsAcked() throws {
        var g = SystemRandomNumberGenerator()
        var m = Machine()
        let evil = try DeviceID("evil")
        var pending: IngestTransaction?
        var letters = 0, honestAcked = SequenceNumber.zero
        var store: [EpochKey: [SequenceRange]] = [:]
        func run(_ actions: [Machine.Action]) {
            for a in actions { if case .write(let tx) = a { XCTAssertNil(pending); pending = tx } }
            honestAcked = max(honestAcked, acks(actions).filter { $0.device == dev }.map(\.through).max() ?? .zero)
        }
        for k in 0..<3_000 {
            let h = HostilePayloads.any(device: evil, using: &g)
            run(m.messageReceived(topic: h.topic, payload: h.payload, now: t0))
            if k % 30 == 0 { run(m.messageReceived(topic: batchTopic, payload: batch(UInt64(k / 30 + 1), UInt64(k / 30 + 1)), now: t0)) }
            if k % 7 == 0, let tx = pending {
                pending = nil
                XCTAssertEqual(StoreRows(tx).violations(), [])
                letters += tx.deadLetters.count
                for b in tx.batches { store[EpochKey(device: b.device, epoch: b.epoch), default: []].append(b.range) }
                let read = m.transactionCommitted(tx.id, result: WriteResult(readingsInserted: tx.recordCount, legacyInserted: 0), now: t0)
                run(read)
                if case .readProgress(let id, let queries)? = read.first {
                    run(m.progressRead(id, ranges: queries.map { store[$0.key] ?? [] }, nowUnixMilliseconds: 0, now: t0))
                }
            }
        }
        while let tx = pending {
            pending = nil
            letters += tx.deadLetters.count
            for b in tx.batches { store[EpochKey(device: b.device, epoch: b.epoch), default: []].append(b.range) }
            let read = m.transactionCommitted(tx.id, result: WriteResult(readingsInserted: tx.recordCount, legacyInserted: 0), now: t0)
            run(read)
            if case .readProgress(let id, let queries)? = read.first {
                run(m.progressRead(id, ranges: queries.map { store[$0.key] ?? [] }, nowUnixMilliseconds: 0, now: t0))
            }
        }
        XCTAssertTrue(m.isIdle)
        XCTAssertGreaterThan(letters, 2_000)
        XCTAssertEqual(honestAcked, s(100), "every honest batch stored and acked")
    }
}

final class LegacyValuesTests: XCTestCase {
    let device = try! DeviceID("seed-1")

    func testSeedListIsParsedWithNumbersAndText() throws {
        let json = #"[{"_id":"1621122796939-0","_device_uuid":"seed-1","_device_type":"raspberrypi4-64","_app_id":"1","_app_name":"iot","random":"0.25","label":"warm"},{"_id":"1621122798941-0","_device_uuid":"seed-1","random":"0.5"}]"#
        let m = try LegacyValues.decode(Array(json.utf8), device: device)
        XCTAssertEqual(m.readings.count, 2)
        XCTAssertEqual(m.readings[0].streamMilliseconds, 1_621_122_796_939)
        XCTAssertEqual(m.readings[0].values.sorted.map(\.0), ["label", "random"])
        XCTAssertEqual(m.readings[0].values["random"], .number(0.25))
        XCTAssertEqual(m.readings[0].values["label"], .text("warm"))
        XCTAssertEqual(m.deviceType, "raspberrypi4-64")
        XCTAssertEqual(m.appID, "1")
    }

    func testBadSeedMessagesGiveReasons() {
        func reason(_ json: String) -> DeadLetterReason? {
            do { _ = try LegacyValues.decode(Array(json.utf8), device: device); return nil } catch { return error.reason }
        }
        XCTAssertEqual(reason("not json"), .legacyMalformed)
        XCTAssertEqual(reason(#"{"_id":"1-0"}"#), .legacyMalformed)
        XCTAssertEqual(reason(#"[{"random":"1"}]"#), .legacyMalformed, "no _id")
        XCTAssertEqual(reason(#"[{"_id":"1-0","_device_uuid":"other","random":"1"}]"#), .deviceMismatch)
        XCTAssertEqual(reason(#"[{"_id":"1-0","bad name":"1"}]"#), .legacyMalformed)
        XCTAssertEqual(reason(#"[{"_id":"99999999999999999999-0","t":"1"}]"#), .legacyMalformed, "time beyond the protocol's range")
        XCTAssertEqual(reason(#"[{"_id":"+5-0","t":"1"}]"#), .legacyMalformed, "digits only")
        XCTAssertEqual(reason(#"[{"_id":"1-0","t":true}]"#), .legacyMalformed)
        XCTAssertEqual(reason(#"[{"_id":"1-0","t":"1","t":"2"}]"#), .legacyMalformed, "duplicate members")
    }
}
