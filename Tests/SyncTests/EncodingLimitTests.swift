import FieldlogCore
@testable import Sync
import XCTest

/// The two batch decoders apply the same rules (spec §3.1, §5.2, §5.3): one table of contents,
/// each written as JSON and as a compact batch (stored and zlib), must give the same batch —
/// the same records rejected for the same reasons — or the same dead-letter class.
final class EncodingLimitTests: XCTestCase {
    typealias Content = CompactBatchCodec.Content
    static let dev = try! DeviceID("dev-1")
    static let max53: Int64 = 1 << 53

    enum Expected: Equatable, Sendable {
        /// Accepted, with these sequence numbers rejected one by one.
        case accepted(rejected: [UInt64])
        case refused(DeadLetterReason)
    }

    struct Case: Sendable {
        var name: String
        var expected: Expected
        var change: @Sendable (inout Content) -> Void
        init(_ name: String, _ expected: Expected, _ change: @escaping @Sendable (inout Content) -> Void) {
            self.name = name
            self.expected = expected
            self.change = change
        }
    }

    static func record(_ seq: Int64, _ values: [(String, SensorValue)] = [("temp", .number(21.5)), ("state", .text("on"))]) -> Content.Record {
        Content.Record(seq: seq, ts: 1_700_000_000_000 + seq * 1000, values: values.map { Content.Value(name: $0.0, value: $0.1) })
    }

    /// 1…6: records 1, 2, 3 and 6, loss marker 4…5.
    static func base() -> Content {
        Content(device: "dev-1", epoch: 0xab, first: 1, last: 6,
                records: [record(1), record(2), record(3), record(6)],
                losses: [Content.Loss(first: 4, last: 5, reason: "disk-quota", at: 1_700_000_000_009, detail: "quota")])
    }

    static let ok = Expected.accepted(rejected: [])
    static func rejects(_ seqs: UInt64...) -> Expected { .accepted(rejected: seqs) }
    static let invalid = Expected.refused(.invalidMessage)
    static let regression = Expected.refused(.sequenceRegression)
    static let tiling = Expected.refused(.rangeMismatch)

    static func names(_ n: Int) -> [(String, SensorValue)] { (0..<n).map { ("s\($0)", .number(Double($0))) } }

    static let cases: [Case] = [
        Case("the base batch", ok) { _ in },
        Case("a replay id", ok) { $0.replay = "r-42" },
        Case("unsync and missing sensors", ok) { $0.records[1].unsync = true; $0.records[1].missing = ["hum", "hum", "wind"] },
        Case("a record without values", ok) { $0.records[0].values = [] },
        Case("a sensor only some records have", ok) { $0.records[2].values.append(Content.Value(name: "wind", value: .number(3))) },
        Case("a sensor that is a number here and a text there", ok) { $0.records[3].values[1].value = .number(1) },
        // Envelope: §3.1 limits of device, epoch, range, counts, replay.
        Case("device with a space", invalid) { $0.device = "dev 1" },
        Case("empty device", invalid) { $0.device = "" },
        Case("device of 65 characters", invalid) { $0.device = String(repeating: "d", count: 65) },
        Case("device of 300 bytes", invalid) { $0.device = String(repeating: "é", count: 150) },
        Case("another device than the topic's", .refused(.deviceMismatch)) { $0.device = "dev-2" },
        Case("epoch 0", invalid) { $0.epoch = 0 },
        Case("first 0", invalid) { $0.first = 0 },
        Case("first negative", invalid) { $0.first = -1 },
        Case("last beyond 2^53", invalid) { $0.last = max53 + 1 },
        Case("first after last", regression) { $0.first = 7 },
        Case("a batch at 2^53", ok) { c in
            c.first = max53; c.last = max53; c.losses = []; c.records = [record(max53)]; c.records[0].ts = 1_700_000_000_000
        },
        Case("1 000 records", ok) { c in
            c.first = 1; c.last = 1000; c.losses = []; c.records = (1...1000).map { record($0, [("t", .number(Double($0)))]) }
        },
        Case("1 001 records", invalid) { c in
            c.first = 1; c.last = 1001; c.losses = []; c.records = (1...1001).map { record($0, [("t", .number(1))]) }
        },
        Case("64 loss markers", ok) { c in
            c.first = 1; c.last = 64; c.records = []; c.losses = (1...64).map { Content.Loss(first: $0, last: $0, reason: "disk-quota", at: 0) }
        },
        Case("65 loss markers", invalid) { c in
            c.first = 1; c.last = 65; c.records = []; c.losses = (1...65).map { Content.Loss(first: $0, last: $0, reason: "disk-quota", at: 0) }
        },
        Case("empty replay id", invalid) { $0.replay = "" },
        Case("replay id with a space", invalid) { $0.replay = "r 1" },
        Case("replay id of 64 characters", ok) { $0.replay = String(repeating: "r", count: 64) },
        Case("replay id of 65 characters", invalid) { $0.replay = String(repeating: "r", count: 65) },
        Case("replay id outside ASCII", invalid) { $0.replay = "r-é" },
        // Records: a bad seq refuses the message, bad content rejects the record.
        Case("seq 0", invalid) { $0.records[0].seq = 0 },
        Case("seq negative", invalid) { $0.records[0].seq = -5 },
        Case("seq beyond 2^53", invalid) { $0.records[3].seq = max53 + 1 },
        Case("seq twice", regression) { $0.records[1].seq = 1 },
        Case("seq going down", regression) { $0.records.swapAt(1, 2) },
        Case("ts −1", rejects(2)) { $0.records[1].ts = -1 },
        Case("ts Int64.min", rejects(2)) { $0.records[1].ts = .min },
        Case("ts beyond 2^53", rejects(3)) { $0.records[2].ts = max53 + 1 },
        Case("ts 0 and 2^53", ok) { $0.records[0].ts = 0; $0.records[1].ts = max53 },
        Case("64 sensors", ok) { $0.records[0].values = names(64).map { Content.Value(name: $0.0, value: $0.1) } },
        Case("65 sensors", rejects(1)) { $0.records[0].values = names(65).map { Content.Value(name: $0.0, value: $0.1) } },
        Case("empty sensor name", rejects(2)) { $0.records[1].values.append(Content.Value(name: "", value: .number(1))) },
        Case("sensor name of 64 bytes", ok) { $0.records[1].values.append(Content.Value(name: String(repeating: "n", count: 64), value: .number(1))) },
        Case("sensor name of 65 bytes", rejects(2)) { $0.records[1].values.append(Content.Value(name: String(repeating: "n", count: 65), value: .number(1))) },
        Case("sensor name with a space", rejects(3)) { $0.records[2].values.append(Content.Value(name: "a b", value: .number(1))) },
        Case("sensor name with a quote", rejects(3)) { $0.records[2].values.append(Content.Value(name: "a\"b", value: .number(1))) },
        Case("sensor name outside ASCII", rejects(1, 6)) { c in
            c.records[0].values.append(Content.Value(name: "température", value: .number(1)))
            c.records[3].values.append(Content.Value(name: "température", value: .number(2)))
        },
        Case("text of 256 bytes", ok) { $0.records[0].values[1].value = .text(String(repeating: "x", count: 256)) },
        Case("text of 257 bytes", rejects(1)) { $0.records[0].values[1].value = .text(String(repeating: "x", count: 257)) },
        Case("text with control characters and quotes", ok) { $0.records[0].values[1].value = .text("a\u{0}\"\\\n\u{1F}é") },
        Case("64 missing sensors", ok) { $0.records[0].missing = (0..<64).map { "m\($0)" } },
        Case("65 missing sensors", rejects(1)) { $0.records[0].missing = (0..<65).map { "m\($0)" } },
        Case("a missing sensor with a bad name", rejects(6)) { $0.records[3].missing = ["ok", "not ok"] },
        Case("several rejected records", rejects(1, 3, 6)) { c in
            c.records[0].ts = -1; c.records[2].values[0].name = "x y"; c.records[3].missing = [""]
        },
        // Loss markers.
        Case("loss first 0", invalid) { $0.losses[0].first = 0 },
        Case("loss last before first", regression) { $0.losses[0].last = 3 },
        Case("loss markers out of order", regression) { c in
            c.losses = [Content.Loss(first: 5, last: 5, reason: "disk-quota", at: 0), Content.Loss(first: 4, last: 4, reason: "disk-quota", at: 0)]
        },
        Case("every loss reason", ok) { c in
            c.first = 1; c.last = 4; c.records = []
            c.losses = LossReason.allCases.enumerated().map { Content.Loss(first: Int64($0.offset + 1), last: Int64($0.offset + 1), reason: $0.element.rawValue, at: 1) }
        },
        Case("unknown loss reason", invalid) { $0.losses[0].reason = "flood" },
        Case("loss reason of 33 bytes", invalid) { $0.losses[0].reason = String(repeating: "r", count: 33) },
        Case("loss at −1", invalid) { $0.losses[0].at = -1 },
        Case("loss at beyond 2^53", invalid) { $0.losses[0].at = max53 + 1 },
        Case("loss detail of 1 024 bytes", ok) { $0.losses[0].detail = String(repeating: "d", count: 1024) },
        Case("loss detail of 1 025 bytes", invalid) { $0.losses[0].detail = String(repeating: "d", count: 1025) },
        // Tiling.
        Case("a gap", tiling) { $0.records.remove(at: 2) },
        Case("a gap at the end", tiling) { $0.last = 7 },
        Case("a record outside the range", tiling) { $0.last = 5; $0.losses[0].last = 4; $0.records[3].seq = 6 },
        Case("a record inside a loss marker", tiling) { $0.losses[0].first = 3 },
        Case("a loss marker beyond last", tiling) { $0.last = 6; $0.losses[0].last = 7; $0.records.removeLast() },
    ]

    func outcome(_ body: () throws(SyncDecodingError) -> Batch) -> Result<Batch, SyncDecodingError> {
        Result { () throws(SyncDecodingError) in try body() }
    }

    func testEveryCaseGivesTheSameOutcomeInBothEncodings() throws {
        for c in Self.cases {
            var content = Self.base()
            c.change(&content)
            // JSON gets the content as the compact decoder reads it (values in dictionary
            // order), so even the excerpts of rejected records must be the same.
            let json = try XCTUnwrap(Content(body: content.body()).jsonIfExpressible, c.name)
            let viaJSON = outcome { () throws(SyncDecodingError) in try SyncCodec.decodeBatch(json, expectedDevice: Self.dev) }
            for compress in [false, true] {
                let payload = CompactBatchCodec.encode(content, compress: compress)
                let viaCompact = outcome { () throws(SyncDecodingError) in
                    try SyncCodec.decodeAnyBatch(payload, contentType: CompactBatchCodec.contentType, expectedDevice: Self.dev)
                }
                let label = "\(c.name) (\(compress ? "zlib" : "stored"))"
                switch (viaJSON, viaCompact) {
                case (.success(let a), .success(let b)):
                    XCTAssertEqual(a, b, label)
                    XCTAssertEqual(c.expected, .accepted(rejected: b.rejected.map(\.sequence.rawValue)), "\(label): \(b.rejected)")
                case (.failure(let a), .failure(let b)):
                    XCTAssertEqual(a.reason, b.reason, "\(label): JSON \(a), compact \(b)")
                    XCTAssertEqual(c.expected, .refused(b.reason), "\(label): \(b)")
                default:
                    XCTFail("\(label): JSON \(viaJSON), compact \(viaCompact)")
                }
            }
        }
    }

    /// What JSON cannot write, the compact decoder must still judge by the same rule.
    func testNonFiniteNumbersAreRejectedLikeAnyInvalidValue() throws {
        for bad in [Double.nan, .infinity, -.infinity, Double(bitPattern: 0x7FF0_0000_0000_0001)] {
            var content = Self.base()
            content.records[1].values[0].value = .number(bad)
            let b = try CompactBatchCodec.decode(CompactBatchCodec.encode(content), expectedDevice: Self.dev)
            XCTAssertEqual(b.rejected.map(\.sequence), [SequenceNumber(2)], "\(bad)")
            XCTAssertTrue(b.rejected[0].reason.contains("finite"), b.rejected[0].reason)
            XCTAssertTrue(b.rejected[0].excerpt.contains("\"seq\":2"), b.rejected[0].excerpt)
            XCTAssertEqual(b.records.map(\.sequence.rawValue), [1, 3, 6])
        }
    }

    /// The rejected record's reason and excerpt are the JSON decoder's, word for word.
    func testRejectedRecordsCarryTheSameReasonAndExcerpt() throws {
        var content = Self.base()
        content.records[1].ts = -1
        content.records[2].values.append(Content.Value(name: "a b", value: .text("x")))
        let a = try SyncCodec.decodeBatch(XCTUnwrap(Content(body: content.body()).jsonIfExpressible))
        let b = try CompactBatchCodec.decode(CompactBatchCodec.encode(content))
        XCTAssertEqual(a.rejected, b.rejected)
        XCTAssertEqual(b.rejected.count, 2)
        XCTAssertTrue(b.rejected[0].reason.contains("records[1].ts"), b.rejected[0].reason)
    }
}
