import FieldlogCore
@testable import Sync
import XCTest

/// Transcripts of the receiver (spec §5.6) and the ack rule (§5.5).
final class ReceiverStateMachineTests: XCTestCase {
    let dev = try! DeviceID("dev-1")
    let epoch = Epoch(7)
    func s(_ n: UInt64) -> SequenceNumber { SequenceNumber(n) }
    func r(_ a: UInt64, _ b: UInt64) -> SequenceRange { SequenceRange(checked: s(a), s(b)) }

    func batch(_ a: UInt64, _ b: UInt64) -> [UInt8] {
        SyncCodec.encode(Batch(device: dev, epoch: epoch, range: r(a, b), records: (a...b).map {
            LogRecord(sequence: s($0), timestamp: DeviceTimestamp(unixMilliseconds: 0), values: try! SensorValues(["t": .number(1)]))
        }))
    }

    func testValidBatchIsStoredAndAckedOnlyAfterCommit() throws {
        var m = ReceiverStateMachine()
        let actions = m.messageReceived(topic: "fieldlog/v1/devices/dev-1/batch", payload: batch(4, 6))
        guard case .store(let token, let req)? = actions.first, actions.count == 1 else { return XCTFail("\(actions)") }
        XCTAssertEqual(req.range, r(4, 6))
        XCTAssertEqual(req.records.count, 3)
        XCTAssertEqual(m.pendingStores, 1)
        let acked = m.storeCommitted(token, outcome: StoreOutcome(storedThrough: s(3), missing: []))
        guard case .publishAck(let topic, let payload, let ack)? = acked.first else { return XCTFail("\(acked)") }
        XCTAssertEqual(topic, "fieldlog/v1/devices/dev-1/ack")
        XCTAssertEqual(ack, Ack(device: dev, epoch: epoch, through: s(3), stored: r(4, 6)))
        XCTAssertEqual(try SyncCodec.decodeAck(payload), ack)
        XCTAssertEqual(m.pendingStores, 0)
        XCTAssertEqual(m.counters.acksSent, 1)
    }

    func testFailedStoreSendsNothing() {
        var m = ReceiverStateMachine()
        guard case .store(let token, _)? = m.messageReceived(topic: "fieldlog/v1/devices/dev-1/batch", payload: batch(1, 1)).first else { return XCTFail() }
        XCTAssertEqual(m.storeFailed(token), [])
        XCTAssertEqual(m.counters.storesFailed, 1)
    }

    func testEveryInvalidClassIsDeadLetteredWithItsReason() {
        var m = ReceiverStateMachine()
        let cases: [(String, [UInt8], DeadLetterReason)] = [
            ("fieldlog/v1/devices/dev-2/batch", batch(1, 2), .deviceMismatch),
            ("fieldlog/v1/devices/dev-1/batch", Array("{not json".utf8), .malformedJSON),
            ("fieldlog/v1/devices/dev-1/batch", Array(#"{"v":9,"type":"batch"}"#.utf8), .unknownVersion),
            ("fieldlog/v1/devices/dev-1/batch", [UInt8](repeating: 0x20, count: ProtocolLimits.maxMessageBytes + 1), .oversize),
            ("fieldlog/v1/devices/dev-1/batch", Array(#"{"v":1,"type":"batch","device":"dev-1","epoch":"0000000000000007","first":3,"last":2,"records":[]}"#.utf8), .sequenceRegression),
            ("fieldlog/v1/devices/dev-1/batch", Array(#"{"v":1,"type":"batch","device":"dev-1","epoch":"0000000000000007","first":1,"last":2,"records":[]}"#.utf8), .rangeMismatch),
            ("fieldlog/v1/devices/dev-1/batch", Array(#"{"v":1,"type":"status","device":"dev-1","state":"online"}"#.utf8), .invalidMessage),
            ("fieldlog/v1/devices/dev-1/status", Array(#"{"v":1,"type":"status","device":"dev-9","state":"online"}"#.utf8), .deviceMismatch),
            ("fieldlog/v1/devices/bad+id/batch", batch(1, 1), .unknownTopic),
            ("somewhere/else", batch(1, 1), .unknownTopic),
        ]
        for (topic, payload, reason) in cases {
            let a = m.messageReceived(topic: topic, payload: payload)
            guard case .deadLetter(let d)? = a.first, a.count == 1 else { XCTFail("\(topic): \(a)"); continue }
            XCTAssertEqual(d.reason, reason, "\(topic): \(d.message)")
            XCTAssertEqual(d.topic, topic)
            XCTAssertLessThanOrEqual(d.payloadExcerpt.count, DeadLetter.excerptBytes)
            XCTAssertEqual(d.payloadBytes, payload.count)
            XCTAssertFalse(d.message.isEmpty)
        }
        XCTAssertEqual(m.pendingStores, 0, "nothing invalid is ever stored")
        XCTAssertEqual(m.counters.deadLetters.values.reduce(0, +), UInt64(cases.count))
    }

    func testRejectedRecordsAreStoredAsideAndAcked() {
        var m = ReceiverStateMachine()
        let json = #"{"v":1,"type":"batch","device":"dev-1","epoch":"0000000000000007","first":1,"last":2,"records":[{"seq":1,"ts":0,"values":{"t":1}},{"seq":2,"ts":0,"values":{"t":true}}]}"#
        guard case .store(let token, let req)? = m.messageReceived(topic: "fieldlog/v1/devices/dev-1/batch", payload: Array(json.utf8)).first else { return XCTFail() }
        XCTAssertEqual(req.records.map(\.sequence), [s(1)])
        XCTAssertEqual(req.rejected.map(\.sequence), [s(2)])
        guard case .publishAck(_, _, let ack)? = m.storeCommitted(token, outcome: StoreOutcome(storedThrough: s(2))).first else { return XCTFail() }
        XCTAssertEqual(ack.rejected, [s(2)])
        XCTAssertEqual(ack.through, s(2))
    }

    func testStatusResponsesAndLegacyValuesAreRouted() {
        var m = ReceiverStateMachine()
        let will = SyncCodec.encode(Status.lastWill(device: dev))
        XCTAssertEqual(m.messageReceived(topic: "fieldlog/v1/devices/dev-1/status", payload: will),
                       [.recordStatus(Status.lastWill(device: dev), topic: "fieldlog/v1/devices/dev-1/status")])
        let resp = CommandResponse(requestID: "x", command: "reboot")
        XCTAssertEqual(m.messageReceived(topic: "fieldlog/v1/devices/dev-1/response", payload: SyncCodec.encode(resp)),
                       [.recordResponse(device: dev, resp)])
        let legacy = Array(#"[{"_id":"1621122796939-0","random":"0.5"}]"#.utf8)
        XCTAssertEqual(m.messageReceived(topic: "iot-projekt/device/dev-1/values", payload: legacy),
                       [.storeLegacy(device: dev, payload: legacy, topic: "iot-projekt/device/dev-1/values")])
        XCTAssertEqual(m.subscriptionFilters, ["fieldlog/v1/devices/+/batch", "fieldlog/v1/devices/+/status",
                                               "fieldlog/v1/devices/+/response", "iot-projekt/device/+/values"])
    }

    func testOverloadDropsWithoutAck() {
        var c = ReceiverConfiguration()
        c.maxPendingStores = 1
        var m = ReceiverStateMachine(configuration: c)
        guard case .store? = m.messageReceived(topic: "fieldlog/v1/devices/dev-1/batch", payload: batch(1, 1)).first else { return XCTFail() }
        XCTAssertEqual(m.messageReceived(topic: "fieldlog/v1/devices/dev-1/batch", payload: batch(2, 2)),
                       [.droppedOverloaded(device: dev, range: r(2, 2))])
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
}
