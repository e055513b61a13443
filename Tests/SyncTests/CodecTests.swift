import FieldlogCore
@testable import Sync
import XCTest

/// Round trips and every rejection class of spec/protocol.md §5.2.
final class CodecTests: XCTestCase {
    let dev = try! DeviceID("dev-1")
    let epoch = Epoch(0xab)

    func record(_ s: UInt64, _ v: Double = 1.5) -> LogRecord {
        LogRecord(sequence: SequenceNumber(s), timestamp: DeviceTimestamp(unixMilliseconds: 1_700_000_000_000 + Int64(s)),
                  values: try! SensorValues(["temp": .number(v), "state": .text("on \"ok\"\n")]))
    }

    func sampleBatch() -> Batch {
        Batch(device: dev, epoch: epoch, range: SequenceRange(checked: SequenceNumber(1), SequenceNumber(5)),
              records: [record(1), record(2), record(5)],
              losses: [LossMarker(range: SequenceRange(checked: SequenceNumber(3), SequenceNumber(4)), reason: .diskQuota,
                                  recordedAtUnixMilliseconds: 42, detail: "quota 10 MiB")])
    }

    func text(_ b: [UInt8]) -> String { String(decoding: b, as: UTF8.self) }
    func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

    func assertRejected(_ json: String, _ reason: DeadLetterReason, contains: String? = nil,
                        file: StaticString = #filePath, line: UInt = #line) {
        do {
            let b = try SyncCodec.decodeBatch(bytes(json), expectedDevice: dev)
            XCTFail("accepted \(json): \(b)", file: file, line: line)
        } catch {
            XCTAssertEqual(error.reason, reason, "\(error)", file: file, line: line)
            if let contains { XCTAssertTrue(error.message.contains(contains), "\(error.message)", file: file, line: line) }
        }
    }

    // MARK: round trips

    func testBatchRoundTripIsExactAndDeterministic() throws {
        let b = sampleBatch()
        let encoded = SyncCodec.encode(b)
        XCTAssertEqual(text(encoded), #"{"v":1,"type":"batch","device":"dev-1","epoch":"00000000000000ab","first":1,"last":5,"records":[{"seq":1,"ts":1700000000001,"values":{"state":"on \"ok\"\n","temp":1.5}},{"seq":2,"ts":1700000000002,"values":{"state":"on \"ok\"\n","temp":1.5}},{"seq":5,"ts":1700000000005,"values":{"state":"on \"ok\"\n","temp":1.5}}],"losses":[{"first":3,"last":4,"reason":"disk-quota","at":42,"detail":"quota 10 MiB"}]}"#)
        XCTAssertEqual(try SyncCodec.decodeBatch(encoded, expectedDevice: dev), b)
        XCTAssertEqual(SyncCodec.encode(try SyncCodec.decodeBatch(encoded)), encoded)
    }

    func testNumbersKeepTheirValue() throws {
        for v in [0.0, -1.25, 21.0, 1e-7, 123456789.125, 1e300, -4e15, Double.leastNonzeroMagnitude] {
            var b = sampleBatch()
            b.records[0] = record(1, v)
            XCTAssertEqual(try SyncCodec.decodeBatch(SyncCodec.encode(b)).records[0].values["temp"], .number(v), "\(v)")
        }
    }

    func testAckStatusCommandResponseRoundTrip() throws {
        let ack = Ack(device: dev, epoch: epoch, through: SequenceNumber(9), stored: SequenceRange(checked: SequenceNumber(5), SequenceNumber(9)),
                      rejected: [SequenceNumber(7)], missing: [SequenceRange(checked: SequenceNumber(12), SequenceNumber(15))])
        XCTAssertEqual(text(SyncCodec.encode(ack)), #"{"v":1,"type":"ack","device":"dev-1","epoch":"00000000000000ab","through":9,"stored":[5,9],"rejected":[7],"missing":[[12,15]]}"#)
        XCTAssertEqual(try SyncCodec.decodeAck(SyncCodec.encode(ack), expectedDevice: dev), ack)
        let zero = Ack(device: dev, epoch: epoch, through: .zero)
        XCTAssertEqual(try SyncCodec.decodeAck(SyncCodec.encode(zero)), zero)

        let status = Status(device: dev, state: .online, epoch: epoch, head: SequenceNumber(20), acked: SequenceNumber(9),
                            atUnixMilliseconds: 5, measuring: true)
        XCTAssertTrue(text(SyncCodec.encode(status)).contains(#""backlog":11"#))
        XCTAssertEqual(try SyncCodec.decodeStatus(SyncCodec.encode(status)), status)
        var counted = status
        counted.dataUsage = DataUsage(day: DataUsage.day(fromText: "2026-12-05")!, sentBytes: 123_456, receivedBytes: 789)
        XCTAssertTrue(text(SyncCodec.encode(counted)).hasSuffix(#""measuring":true,"data_day":"2026-12-05","data_sent":123456,"data_received":789}"#))
        XCTAssertEqual(try SyncCodec.decodeStatus(SyncCodec.encode(counted)), counted)
        for bad in [#""data_day":"2026-02-30","data_sent":1,"data_received":1"#, #""data_day":"2026-12-05","data_sent":1"#,
                    #""data_day":"2026-12-05","data_sent":-1,"data_received":1"#] {
            XCTAssertThrowsError(try SyncCodec.decodeStatus(bytes(#"{"v":1,"type":"status","device":"dev-1","state":"online","# + bad + "}")), bad)
        }
        let will = Status.lastWill(device: dev)
        XCTAssertEqual(text(SyncCodec.encode(will)), #"{"v":1,"type":"status","device":"dev-1","state":"offline"}"#)
        XCTAssertEqual(try SyncCodec.decodeStatus(SyncCodec.encode(will)), will)

        let commands: [Command] = [
            Command(kind: .reboot), Command(requestID: "r1", kind: .getConfig(key: "measurement:interval")),
            Command(requestID: "r2", kind: .setConfig(key: "measurement:enabled", value: "0")),
            Command(requestID: "r3", kind: .sendMeasurements(min: nil, max: nil, count: 10)),
            Command(requestID: "r4", kind: .sendMeasurements(min: .sequence(SequenceNumber(3)), max: .sequence(SequenceNumber(9)), count: nil)),
            Command(kind: .sendMeasurements(min: .streamID(RedisStreamID(milliseconds: 1_700_000_000_000)),
                                            max: .streamID(RedisStreamID(milliseconds: 1_700_000_100_000, exclusive: true)), count: 2)),
            Command(kind: .setConfig(key: "mqtt_sender:interval", value: .integer(30))),
            Command(kind: .setConfig(key: "mqtt_sender:interval", value: .double(0.5))),
            Command(requestID: "r5", kind: .replay(epoch: epoch, range: SequenceRange(checked: SequenceNumber(1), SequenceNumber(100)))),
            Command(requestID: "r6", kind: .replay(epoch: nil, range: SequenceRange(checked: SequenceNumber(7), SequenceNumber(7)))),
            Command(requestID: "r7", kind: .status), Command(kind: .start), Command(kind: .stop),
            Command(requestID: "r8", kind: .setInterval(milliseconds: 2000)), Command(kind: .setInterval(milliseconds: 250)),
        ]
        for c in commands { XCTAssertEqual(try SyncCodec.decodeCommand(SyncCodec.encode(c)), c) }

        let responses: [CommandResponse] = [
            CommandResponse(requestID: "r1", command: "get_config", key: "k", value: "v"),
            CommandResponse(requestID: nil, command: "set_config", key: "k", value: .integer(30)),
            CommandResponse(requestID: nil, command: "set_config", key: "k", value: .double(2.5)),
            CommandResponse(requestID: nil, command: "frobnicate", error: .unknownCommand, message: "unknown command"),
            CommandResponse(requestID: "r5", command: "replay", resent: SequenceRange(checked: SequenceNumber(1), SequenceNumber(100)),
                            notRetained: [SequenceRange(checked: SequenceNumber(1), SequenceNumber(40))]),
            CommandResponse(requestID: "r7", command: "status", status: status),
        ]
        for r in responses { XCTAssertEqual(try SyncCodec.decodeCommandResponse(SyncCodec.encode(r)), r) }
    }

    // MARK: seed compatibility

    func testSeedStyleCommandsAreAccepted() throws {
        XCTAssertEqual(try SyncCodec.decodeCommand(bytes(#"{"command": "REBOOT"}"#)), Command(kind: .reboot))
        XCTAssertEqual(try SyncCodec.decodeCommand(bytes(#"{"command": "get_config", "key": "measurement:interval"}"#)),
                       Command(kind: .getConfig(key: "measurement:interval")))
        XCTAssertEqual(try SyncCodec.decodeCommand(bytes(#"{"command": "set_config", "key": "measurement:interval", "value": 5}"#)),
                       Command(kind: .setConfig(key: "measurement:interval", value: .integer(5))))
        XCTAssertEqual(try SyncCodec.decodeCommand(bytes(#"{"command": "send_measurements", "min_id": "-", "max_id": "+", "count": 3}"#)),
                       Command(kind: .sendMeasurements(min: nil, max: nil, count: 3)))
        XCTAssertEqual(try SyncCodec.decodeCommand(bytes(#"{"command": "send_measurements", "min_id": "4", "max_id": 8}"#)),
                       Command(kind: .sendMeasurements(min: .sequence(SequenceNumber(4)), max: .sequence(SequenceNumber(8)), count: nil)))
        // The seed calls int() on count, so a string of digits is a count.
        XCTAssertEqual(try SyncCodec.decodeCommand(bytes(#"{"command": "send_measurements", "count": "3"}"#)),
                       Command(kind: .sendMeasurements(min: nil, max: nil, count: 3)))
        XCTAssertEqual(try SyncCodec.decodeCommand(bytes(#"{"command": "send_measurements", "count": " +12 "}"#)),
                       Command(kind: .sendMeasurements(min: nil, max: nil, count: 12)))
        // Redis stream ids, as seed tooling sends them: full, milliseconds only, exclusive.
        XCTAssertEqual(try SyncCodec.decodeCommand(bytes(#"{"command": "send_measurements", "min_id": "1700000000000-0", "max_id": "(1700000005000"}"#)),
                       Command(kind: .sendMeasurements(min: .streamID(RedisStreamID(milliseconds: 1_700_000_000_000)),
                                                       max: .streamID(RedisStreamID(milliseconds: 1_700_000_005_000, exclusive: true)), count: nil)))
        // A number is echoed as a number (the seed echoes what it got).
        XCTAssertEqual(text(SyncCodec.encode(CommandResponse(requestID: nil, command: "set_config", key: "mqtt_sender:interval", value: .integer(30)))),
                       #"{"v":1,"command":"set_config","ok":true,"key":"mqtt_sender:interval","value":30}"#)
    }

    func testRedisStreamIDsParseOnlyTheirOwnForm() {
        XCTAssertEqual(RedisStreamID("1700000000000-7"), RedisStreamID(milliseconds: 1_700_000_000_000))
        XCTAssertEqual(RedisStreamID("(5"), RedisStreamID(milliseconds: 5, exclusive: true))
        XCTAssertEqual(RedisStreamID("(1700000000000-3")?.description, "(1700000000000-0")
        for bad in ["", "-", "(", "5", "1-", "-1", "1-2-3", "a-0", "1 -0", "99999999999999999999999-0", "+1"] {
            XCTAssertNil(RedisStreamID(bad), bad)
        }
    }

    func testCommandErrorsCarryTheRequestIDAndAClearCode() {
        func expect(_ json: String, _ code: CommandErrorCode, id: String?, file: StaticString = #filePath, line: UInt = #line) {
            do {
                let c = try SyncCodec.decodeCommand(bytes(json))
                XCTFail("accepted \(c)", file: file, line: line)
            } catch {
                XCTAssertEqual(error.code, code, "\(error)", file: file, line: line)
                XCTAssertEqual(error.requestID, id, file: file, line: line)
                XCTAssertEqual(error.response.error, code, file: file, line: line)
                XCTAssertFalse(error.message.isEmpty, file: file, line: line)
            }
        }
        expect("not json", .malformed, id: nil)
        expect("[1]", .malformed, id: nil)
        expect(#"{"id":"a1"}"#, .malformed, id: "a1")
        expect(#"{"id":"a2","command":"self_destruct"}"#, .unknownCommand, id: "a2")
        expect(#"{"id":"a3","command":"get_config"}"#, .invalidArgument, id: "a3")
        expect(#"{"id":"a4","command":"replay","from":9,"to":3}"#, .invalidArgument, id: "a4")
        expect(#"{"id":"a5","command":"replay","from":0,"to":3}"#, .invalidArgument, id: "a5")
        expect(#"{"id":"a6","command":"set_interval","seconds":-1}"#, .invalidArgument, id: "a6")
        expect(#"{"id":"a7","command":"reboot","now":true}"#, .invalidArgument, id: "a7")
        expect(#"{"id":"a8","v":2,"command":"reboot"}"#, .unsupportedVersion, id: "a8")
        expect(#"{"id":"","command":"reboot"}"#, .malformed, id: nil)
        expect(#"{"command":"set_config","key":"k","value":{"x":1}}"#, .invalidArgument, id: nil)
        expect(#"{"command":"send_measurements","min_id":"9","max_id":"3"}"#, .invalidArgument, id: nil)
        expect(#"{"command":"send_measurements","min_id":"1700000000001-0","max_id":"1700000000000-0"}"#, .invalidArgument, id: nil)
        expect(#"{"command":"send_measurements","min_id":"yesterday"}"#, .invalidArgument, id: nil)
        // What the seed crashed on stays refused: a boolean config value, a count that int() cannot read.
        expect(#"{"id":"b1","command":"set_config","key":"measurement:enabled","value":true}"#, .invalidArgument, id: "b1")
        expect(#"{"command":"send_measurements","count":"abc"}"#, .invalidArgument, id: nil)
        expect(#"{"command":"send_measurements","count":"3.5"}"#, .invalidArgument, id: nil)
        expect(#"{"command":"send_measurements","count":"0"}"#, .invalidArgument, id: nil)
        expect(#"{"command":"send_measurements","count":true}"#, .invalidArgument, id: nil)
    }

    // MARK: dead-letter classes (spec §5.2)

    func testOversizeIsRejectedBeforeParsing() {
        // Not even JSON: the size check must come first.
        let big = [UInt8](repeating: UInt8(ascii: "x"), count: ProtocolLimits.maxMessageBytes + 1)
        XCTAssertThrowsError(try SyncCodec.decodeBatch(big)) { XCTAssertEqual(($0 as! SyncDecodingError).reason, .oversize) }
        XCTAssertThrowsError(try SyncCodec.decodeBatch(SyncCodec.encode(sampleBatch()), maxBytes: 100)) {
            XCTAssertEqual(($0 as! SyncDecodingError).reason, .oversize)
        }
    }

    func testMalformedJSON() {
        for json in ["", "   ", "{", "{\"v\":1", "nul", "{\"v\":1,}", "{\"v\":01}", "{\"v\":1} x", "[1,2]", "\"s\"",
                     "{\"a\":1,\"a\":2}", "{\"a\":\"\\x\"}", "{\"a\":\"\\ud800\"}", "{\"a\":\"tab\there\"}",
                     "{\"a\":1.}", "{\"a\":-}", "{\"a\":1e}", "{\"a\":1e999}", "{'a':1}",
                     String(repeating: "[", count: 40) + String(repeating: "]", count: 40)] {
            assertRejected(json, .malformedJSON)
        }
        // Invalid UTF-8 (overlong, lone continuation, surrogate).
        for bad: [UInt8] in [[0xC0, 0xAF], [0x80], [0xED, 0xA0, 0x80], [0xF5, 0x80, 0x80, 0x80]] {
            let payload = Array("{\"v\":1,\"type\":\"".utf8) + bad + Array("\"}".utf8)
            XCTAssertThrowsError(try SyncCodec.decodeBatch(payload)) { XCTAssertEqual(($0 as! SyncDecodingError).reason, .malformedJSON) }
        }
    }

    func testUnknownVersion() {
        assertRejected(#"{"type":"batch"}"#, .unknownVersion, contains: "missing")
        assertRejected(#"{"v":2,"type":"batch"}"#, .unknownVersion, contains: "2")
        assertRejected(#"{"v":"1","type":"batch"}"#, .unknownVersion)
        assertRejected(#"{"v":1.0,"type":"batch"}"#, .unknownVersion)
    }

    func testDeviceMismatch() {
        let json = text(SyncCodec.encode(sampleBatch())).replacingOccurrences(of: "\"dev-1\"", with: "\"dev-2\"")
        assertRejected(json, .deviceMismatch, contains: "dev-2")
    }

    func testSequenceRegression() {
        assertRejected(#"{"v":1,"type":"batch","device":"dev-1","epoch":"00000000000000ab","first":2,"last":1,"records":[]}"#, .sequenceRegression)
        assertRejected(#"{"v":1,"type":"batch","device":"dev-1","epoch":"00000000000000ab","first":1,"last":2,"records":[{"seq":2,"ts":0,"values":{}},{"seq":1,"ts":0,"values":{}}]}"#, .sequenceRegression)
        assertRejected(#"{"v":1,"type":"batch","device":"dev-1","epoch":"00000000000000ab","first":1,"last":2,"records":[{"seq":1,"ts":0,"values":{}},{"seq":1,"ts":0,"values":{}}]}"#, .sequenceRegression)
        assertRejected(#"{"v":1,"type":"batch","device":"dev-1","epoch":"00000000000000ab","first":1,"last":9,"records":[],"losses":[{"first":5,"last":9,"reason":"disk-quota","at":0},{"first":1,"last":4,"reason":"disk-quota","at":0}]}"#, .sequenceRegression)
    }

    func testRangeMismatch() {
        // gap
        assertRejected(#"{"v":1,"type":"batch","device":"dev-1","epoch":"00000000000000ab","first":1,"last":3,"records":[{"seq":1,"ts":0,"values":{}},{"seq":3,"ts":0,"values":{}}]}"#, .rangeMismatch, contains: "2")
        // record outside range
        assertRejected(#"{"v":1,"type":"batch","device":"dev-1","epoch":"00000000000000ab","first":1,"last":1,"records":[{"seq":1,"ts":0,"values":{}},{"seq":2,"ts":0,"values":{}}]}"#, .rangeMismatch, contains: "outside")
        // record and loss marker overlap
        assertRejected(#"{"v":1,"type":"batch","device":"dev-1","epoch":"00000000000000ab","first":1,"last":2,"records":[{"seq":1,"ts":0,"values":{}},{"seq":2,"ts":0,"values":{}}],"losses":[{"first":2,"last":2,"reason":"not-retained","at":0}]}"#, .rangeMismatch, contains: "twice")
        // missing tail
        assertRejected(#"{"v":1,"type":"batch","device":"dev-1","epoch":"00000000000000ab","first":1,"last":3,"records":[{"seq":1,"ts":0,"values":{}}]}"#, .rangeMismatch, contains: "2…3")
    }

    func testInvalidMessage() {
        let head = #"{"v":1,"type":"batch","device":"dev-1","epoch":"00000000000000ab","first":1,"last":1,"#
        for (json, needle) in [
            (#"{"v":1,"type":"ack","device":"dev-1"}"#, "type"),
            (#"{"v":1,"type":"batch","device":"dev/1","epoch":"00000000000000ab","first":1,"last":1,"records":[]}"#, "device"),
            (#"{"v":1,"type":"batch","device":"dev-1","epoch":"AB","first":1,"last":1,"records":[]}"#, "epoch"),
            (#"{"v":1,"type":"batch","device":"dev-1","epoch":"0000000000000000","first":1,"last":1,"records":[]}"#, "epoch"),
            (#"{"v":1,"type":"batch","device":"dev-1","epoch":"00000000000000ab","first":0,"last":1,"records":[]}"#, "first"),
            (#"{"v":1,"type":"batch","device":"dev-1","epoch":"00000000000000ab","first":1,"last":9007199254740993,"records":[]}"#, "last"),
            (#"{"v":1,"type":"batch","device":"dev-1","epoch":"00000000000000ab","first":1.5,"last":1,"records":[]}"#, "first"),
            (head + #""records":{}}"#, "records"),
            (head + #""records":[1]}"#, "records[0]"),
            (head + #""records":[{"ts":0,"values":{}}]}"#, "seq"),
            (head + #""records":[{"seq":1,"ts":0,"values":{}}],"extra":1}"#, "extra"),
            (head + #""records":[],"losses":[{"first":1,"last":1,"reason":"eaten","at":0}]}"#, "reason"),
            (head + #""records":[],"replay":""# + String(repeating: "x", count: 65) + "\"}", "replay"),
        ] {
            assertRejected(json, .invalidMessage, contains: needle)
        }
        let tooMany = head.replacingOccurrences(of: #""last":1"#, with: #""last":1001"#) + #""records":["#
            + (1...1001).map { #"{"seq":\#($0),"ts":0,"values":{}}"# }.joined(separator: ",") + "]}"
        assertRejected(tooMany, .invalidMessage, contains: "at most 1000")
    }

    func testOneBadRecordIsRejectedAloneAndTheRestIsKept() throws {
        let json = #"{"v":1,"type":"batch","device":"dev-1","epoch":"00000000000000ab","first":1,"last":4,"records":["#
            + #"{"seq":1,"ts":0,"values":{"t":1}},"#
            + #"{"seq":2,"ts":0,"values":{"bad name":1}},"#
            + #"{"seq":3,"ts":"noon","values":{}},"#
            + #"{"seq":4,"ts":0,"values":{"t":[1]}}]}"#
        let b = try SyncCodec.decodeBatch(bytes(json), expectedDevice: dev)
        XCTAssertEqual(b.records.map(\.sequence), [SequenceNumber(1)])
        XCTAssertEqual(b.rejected.map(\.sequence), [SequenceNumber(2), SequenceNumber(3), SequenceNumber(4)])
        XCTAssertTrue(b.rejected[0].reason.contains("sensor name"), b.rejected[0].reason)
        XCTAssertTrue(b.rejected[1].reason.contains("ts"), b.rejected[1].reason)
        XCTAssertTrue(b.rejected[2].excerpt.contains("[1]"), b.rejected[2].excerpt)
    }

    func testAckAndStatusRejections() {
        XCTAssertThrowsError(try SyncCodec.decodeAck(bytes(#"{"v":1,"type":"ack","device":"dev-2","epoch":"00000000000000ab","through":1}"#), expectedDevice: dev)) {
            XCTAssertEqual(($0 as! SyncDecodingError).reason, .deviceMismatch)
        }
        XCTAssertThrowsError(try SyncCodec.decodeAck(bytes(#"{"v":1,"type":"ack","device":"dev-1","epoch":"00000000000000ab","through":-1}"#))) {
            XCTAssertEqual(($0 as! SyncDecodingError).reason, .invalidMessage)
        }
        XCTAssertThrowsError(try SyncCodec.decodeAck(bytes(#"{"v":1,"type":"ack","device":"dev-1","epoch":"00000000000000ab","through":3,"stored":[4,2]}"#))) {
            XCTAssertEqual(($0 as! SyncDecodingError).reason, .invalidMessage)
        }
        XCTAssertThrowsError(try SyncCodec.decodeStatus(bytes(#"{"v":1,"type":"status","device":"dev-1","state":"asleep"}"#))) {
            XCTAssertEqual(($0 as! SyncDecodingError).reason, .invalidMessage)
        }
        XCTAssertThrowsError(try SyncCodec.decodeStatus(bytes(#"{"v":1,"type":"status","device":"dev-1","state":"online","head":3,"acked":4}"#))) {
            XCTAssertEqual(($0 as! SyncDecodingError).reason, .invalidMessage)
        }
    }

    /// Decoding must never trap: every prefix and many single-byte corruptions of valid
    /// messages either decode or throw (a cheap, deterministic cousin of scripts/fuzz-codec).
    func testCorruptionsNeverCrash() {
        let samples = [SyncCodec.encode(sampleBatch()),
                       SyncCodec.encode(Ack(device: dev, epoch: epoch, through: SequenceNumber(3), stored: SequenceRange(checked: SequenceNumber(1), SequenceNumber(3)))),
                       SyncCodec.encode(Command(requestID: "x", kind: .replay(epoch: epoch, range: SequenceRange(checked: SequenceNumber(1), SequenceNumber(2)))))]
        var g = SplitMix64(seed: 7)
        for s in samples {
            for n in 0...s.count { SyncFuzzEntry.decodeAll(Array(s.prefix(n))) }
            for _ in 0..<2000 {
                var m = s
                m[Int(g.next() % UInt64(m.count))] = UInt8(truncatingIfNeeded: g.next())
                SyncFuzzEntry.decodeAll(m)
            }
        }
    }

    func testDataUsageDaysAreCalendarDates() {
        XCTAssertEqual(DataUsage.day(fromText: "1970-01-01"), 0)
        XCTAssertEqual(DataUsage.day(ofUnixMilliseconds: 1_700_000_000_000), 19_675)  // 2023-11-14T22:13:20Z
        XCTAssertEqual(DataUsage(day: 19_675, sentBytes: 0, receivedBytes: 0).dayText, "2023-11-14")
        XCTAssertEqual(DataUsage(day: DataUsage.day(fromText: "2024-02-29")!, sentBytes: 0, receivedBytes: 0).dayText, "2024-02-29")
        for day in stride(from: Int64(0), to: 80_000, by: 97) {
            XCTAssertEqual(DataUsage.day(fromText: DataUsage(day: day, sentBytes: 0, receivedBytes: 0).dayText), day)
        }
        for bad in ["2023-02-29", "2023-13-01", "2023-1-01", "1969-12-31", "20231114", "2023-11-14 "] {
            XCTAssertNil(DataUsage.day(fromText: bad), bad)
        }
    }
}

/// Every value from outside is checked against spec §3.1 where it is decoded (issue D1, D3).
final class CodecLimitTests: XCTestCase {
    func reason(_ json: String, _ decode: ([UInt8]) throws(SyncDecodingError) -> Void) -> DeadLetterReason? {
        do throws(SyncDecodingError) { try decode(Array(json.utf8)); return nil } catch { return error.reason }
    }

    func testRequestIDsAreOneTo64PrintableASCIIWithoutSpace() {
        let response: ([UInt8]) throws(SyncDecodingError) -> Void = { b throws(SyncDecodingError) in _ = try SyncCodec.decodeCommandResponse(b) }
        for bad in [#""""#, #""a b""#, #""\u00e9""#, #""\u0000""#, #""\#(String(repeating: "x", count: 65))""#, "7"] {
            XCTAssertEqual(reason(#"{"v":1,"command":"reboot","id":\#(bad),"ok":true}"#, response), .invalidMessage, bad)
        }
        XCTAssertNil(reason(#"{"v":1,"command":"reboot","id":"r-1_~!","ok":true}"#, response))
        let batch: ([UInt8]) throws(SyncDecodingError) -> Void = { b throws(SyncDecodingError) in _ = try SyncCodec.decodeBatch(b) }
        XCTAssertEqual(reason(#"{"v":1,"type":"batch","device":"d","epoch":"0000000000000007","first":1,"last":1,"records":[{"seq":1,"ts":1,"values":{}}],"replay":"a b"}"#, batch),
                       .invalidMessage)
        XCTAssertEqual(reason(#"{"v":1,"command":"\#(String(repeating: "c", count: 65))","ok":true}"#, response), .invalidMessage, "command name at most 64 bytes")
    }

    func testTimestampsAreWithinZeroAnd2Pow53() throws {
        func batch(ts: String, at: String = "1") -> [UInt8] {
            Array(#"{"v":1,"type":"batch","device":"d","epoch":"0000000000000007","first":1,"last":2,"records":[{"seq":1,"ts":\#(ts),"values":{}}],"losses":[{"first":2,"last":2,"reason":"disk-quota","at":\#(at)}]}"#.utf8)
        }
        for bad in ["-1", "-9223372036854775808", "9007199254740993", "9223372036854775807"] {
            let b = try SyncCodec.decodeBatch(batch(ts: bad))
            XCTAssertEqual(b.records, [], "a record with ts \(bad) is rejected, not stored")
            XCTAssertEqual(b.rejected.map(\.sequence), [SequenceNumber(1)])
            XCTAssertThrowsError(try SyncCodec.decodeBatch(batch(ts: "1", at: bad)), "a loss marker's at \(bad) invalidates the batch")
        }
        XCTAssertEqual(try SyncCodec.decodeBatch(batch(ts: "0")).records.count, 1)
        XCTAssertEqual(try SyncCodec.decodeBatch(batch(ts: "9007199254740992")).records.count, 1)
        XCTAssertThrowsError(try SyncCodec.decodeStatus(Array(#"{"v":1,"type":"status","device":"d","state":"online","at":-5}"#.utf8)))
    }
}
