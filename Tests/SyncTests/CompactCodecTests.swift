import FieldlogCore
@testable import Sync
import TestSupport
import XCTest

/// The compact batch encoding (spec §3.7): exact round trips, every malformed class refused
/// with its reason, truncated and bit-flipped payloads, a decompression bomb, and the
/// content-type check of §2.3.
final class CompactCodecTests: XCTestCase {
    let dev = try! DeviceID("dev-1")
    let epoch = Epoch(0x1234_5678_9abc_def0)

    func record(_ s: UInt64, _ values: [String: SensorValue], ts: Int64? = nil, unsync: Bool = false, missing: [String] = []) -> LogRecord {
        LogRecord(sequence: SequenceNumber(s), timestamp: DeviceTimestamp(unixMilliseconds: ts ?? 1_700_000_000_000 + Int64(s) * 2000,
                                                                          clockUnsynchronized: unsync),
                  values: try! SensorValues(values), missingSensors: missing)
    }

    /// Everything a batch can hold: gaps covered by loss markers, a replay id, unsync clocks,
    /// missing sensors, texts, a sensor some records lack, a sensor both number and text.
    func richBatch() -> Batch {
        let records = [
            record(10, ["temp": .number(21.37), "hum": .number(48), "state": .text("on \"ok\"\n")]),
            record(11, ["temp": .number(21.4), "state": .number(1)], unsync: true, missing: ["hum"]),
            record(14, ["temp": .number(-0.0), "hum": .number(1e-7), "note": .text("é 💥 \u{0}")], ts: 0),
            record(15, [:], ts: 9_007_199_254_740_992, missing: ["hum", "temp", "hum"]),
        ]
        return Batch(device: dev, epoch: epoch, range: SequenceRange(checked: SequenceNumber(10), SequenceNumber(17)), records: records,
                     losses: [LossMarker(range: SequenceRange(checked: SequenceNumber(12), SequenceNumber(13)), reason: .diskQuota,
                                         recordedAtUnixMilliseconds: 42, detail: "quota 10 MiB"),
                              LossMarker(range: SequenceRange(checked: SequenceNumber(16), SequenceNumber(17)), reason: .notRetained,
                                         recordedAtUnixMilliseconds: 1_700_000_000_000)],
                     replayRequestID: "r-42")
    }

    func assertRefused(_ payload: [UInt8], _ reason: DeadLetterReason, contains: String? = nil, contentType: String? = nil,
                       file: StaticString = #filePath, line: UInt = #line) {
        do {
            let b = try SyncCodec.decodeAnyBatch(payload, contentType: contentType, expectedDevice: dev)
            XCTFail("accepted: \(b)", file: file, line: line)
        } catch {
            XCTAssertEqual(error.reason, reason, "\(error)", file: file, line: line)
            if let contains { XCTAssertTrue(error.message.contains(contains), error.message, file: file, line: line) }
        }
    }

    // MARK: round trips

    func testRoundTripEqualsTheJSONPathsBatch() throws {
        let b = richBatch()
        let compact = CompactBatchCodec.encode(b)
        XCTAssertEqual(Array(compact.prefix(4)), [0x46, 0x4C, 0x43, 1], "magic FLC and version 1")
        let viaCompact = try SyncCodec.decodeAnyBatch(compact, contentType: CompactBatchCodec.contentType, expectedDevice: dev)
        let viaJSON = try SyncCodec.decodeAnyBatch(SyncCodec.encode(b), contentType: SyncCodec.contentType, expectedDevice: dev)
        XCTAssertEqual(viaCompact, b)
        XCTAssertEqual(viaCompact, viaJSON)
        XCTAssertEqual(CompactBatchCodec.encode(viaCompact), compact, "deterministic")
        // -0.0 keeps its sign bit (JSON writes it as 0.0, which compares equal).
        guard case .number(let zero)? = viaCompact.records[2].values["temp"] else { return XCTFail("temp is not a number") }
        XCTAssertEqual(zero.sign, .minus)
        // The same content stored (uncompressed) decodes the same.
        XCTAssertEqual(try CompactBatchCodec.decode(CompactBatchCodec.encode(CompactBatchCodec.Content(b), compress: false)), b)
    }

    func testEveryNumberKeepsItsExactBits() throws {
        let numbers: [Double] = [0, -0.0, 1, -1.25, 21.0, 21.37, 0.1, 0.30000000000000004, 1e-7, 123456789.125, 1e300, -4e15, 9e15,
                                 9_007_199_254_740_994, Double.leastNonzeroMagnitude, Double.leastNormalMagnitude,
                                 Double.greatestFiniteMagnitude, -Double.greatestFiniteMagnitude, Double.ulpOfOne, 1e22, 1e-22, 1e23, .pi]
        // One column holding them all (mixed scales, raw values), and each alone.
        let all = numbers.enumerated().map { record(UInt64($0.offset + 1), ["x": .number($0.element)]) }
        var columns = [all]
        columns += numbers.map { [record(1, ["x": .number($0)])] }
        for recs in columns {
            let b = Batch(device: dev, epoch: epoch, range: SequenceRange(checked: SequenceNumber(1), recs.last!.sequence), records: recs)
            let back = try CompactBatchCodec.decode(CompactBatchCodec.encode(b))
            for (r, s) in zip(recs, back.records) {
                guard case .number(let x)? = r.values["x"], case .number(let y)? = s.values["x"] else { return XCTFail("not numbers") }
                XCTAssertEqual(x.bitPattern, y.bitPattern, "\(x) came back as \(y)")
            }
        }
    }

    /// Seeded random valid batches: both encodings give back the batch exactly.
    func testRandomBatchesRoundTripInBothEncodings() throws {
        var g = SplitMix64(seed: 0xC0FFEE)
        for round in 0..<300 {
            let b = randomBatch(&g)
            XCTAssertEqual(try CompactBatchCodec.decode(CompactBatchCodec.encode(b), expectedDevice: dev), b, "round \(round)")
            XCTAssertEqual(try SyncCodec.decodeBatch(SyncCodec.encode(b), expectedDevice: dev), b, "round \(round)")
        }
    }

    func randomBatch(_ g: inout SplitMix64) -> Batch {
        let first = UInt64(1 + g.below(1_000_000))
        var records: [LogRecord] = [], losses: [LossMarker] = []
        var s = first
        let n = 1 + g.below(60)
        let sensors = ["a", "temp", "hum", "x.y", "s-1", "state"]
        var ts = Int64(g.below(1 << 40))
        for _ in 0..<n {
            if g.below(8) == 0 {
                let len = UInt64(1 + g.below(3))
                losses.append(LossMarker(range: SequenceRange(checked: SequenceNumber(s), SequenceNumber(s + len - 1)),
                                         reason: LossReason.allCases[g.below(4)], recordedAtUnixMilliseconds: ts, detail: g.below(2) == 0 ? "" : "d\(s)"))
                s += len
                continue
            }
            var values: [String: SensorValue] = [:]
            for name in sensors where g.below(3) != 0 {
                switch g.below(5) {
                case 0: values[name] = .text(String(repeating: "t", count: g.below(20)))
                case 1: values[name] = .number(Double(bitPattern: g.next() & 0x7FEF_FFFF_FFFF_FFFF))
                default: values[name] = .number(Double(Int(g.below(20_000)) - 10_000) / 100)
                }
            }
            ts += Int64(g.below(4000)) - 100
            records.append(record(s, values, ts: max(0, ts), unsync: g.below(10) == 0, missing: g.below(5) == 0 ? ["gone"] : []))
            s += 1
        }
        return Batch(device: dev, epoch: epoch, range: SequenceRange(checked: SequenceNumber(first), SequenceNumber(s - 1)),
                     records: records, losses: losses, replayRequestID: g.below(4) == 0 ? "replay-\(first)" : nil)
    }

    /// The sender's guarantee: a compact batch never exceeds the byte limit; when it would,
    /// the batch goes as JSON (which the sender sized to fit).
    func testEncodingForTheSenderFallsBackToJSONWhenCompactWouldNotFit() {
        let b = richBatch()
        let size = CompactBatchCodec.encode(b).count
        let fits = BatchEncoding.compact.encode(b, maxBytes: size)
        XCTAssertEqual(fits.encoding, .compact)
        XCTAssertEqual(fits.payload.count, size)
        let tooBig = BatchEncoding.compact.encode(b, maxBytes: size - 1)
        XCTAssertEqual(tooBig.encoding, .json)
        XCTAssertEqual(tooBig.payload, SyncCodec.encode(b))
        XCTAssertEqual(BatchEncoding.json.encode(b, maxBytes: 1 << 20).payload, SyncCodec.encode(b))
    }

    // MARK: envelope and structure: every malformed class

    func body(_ content: CompactBatchCodec.Content) -> [UInt8] { content.body() }
    func sample() -> CompactBatchCodec.Content { CompactBatchCodec.Content(richBatch()) }

    func testEnvelopeFailuresHaveTheirReasons() {
        let good = CompactBatchCodec.encode(richBatch())
        var v2 = good; v2[3] = 2
        assertRefused(v2, .unknownVersion, contains: "version 2")
        var method = good; method[4] = 7
        assertRefused(method, .malformedCompact, contains: "compression method 7")
        assertRefused(Array(good.prefix(3)), .malformedCompact, contains: "format version is missing")
        assertRefused(Array(good.prefix(4)), .malformedCompact, contains: "compression method")
        assertRefused(Array(good.prefix(5)), .malformedCompact, contains: "body length")
        assertRefused(good + [0], .malformedCompact, contains: "after the end of the zlib stream")
        assertRefused(good + [UInt8](repeating: 0, count: ProtocolLimits.maxMessageBytes), .oversize)
        let stored = CompactBatchCodec.encode(sample(), compress: false)
        XCTAssertEqual(stored[4], 0)
        assertRefused(stored + [0], .malformedCompact, contains: "not the")
        assertRefused(Array(stored.dropLast()), .malformedCompact, contains: "not the")
        // A declared body beyond the message limit is refused before anything is inflated.
        var w = CompactWriter(reservingCapacity: 16)
        for b in [0x46, 0x4C, 0x43, 1, 1] as [UInt8] { w.byte(b) }
        w.unsigned(ProtocolLimits.maxMessageBytes + 1)
        assertRefused(w.bytes + [0x78, 0x9C], .oversize, contains: "declared")
    }

    func testStructureFailuresAreMalformedCompact() {
        func refusedBody(_ body: [UInt8], _ contains: String, line: UInt = #line) {
            assertRefused(CompactBatchCodec.storedPayload(body: body), .malformedCompact, contains: contains, line: line)
        }
        let good = body(sample())
        refusedBody(good + [0], "after the end of the body")
        refusedBody(Array(good.dropLast()), "truncated")
        // Non-canonical varint: the device length 5 written as 0x85 0x00.
        refusedBody([0x85, 0x00] + Array(good.dropFirst()), "not canonical")
        // A varint of 11 bytes.
        refusedBody([UInt8](repeating: 0xFF, count: 10) + [0x01], "longer than 64 bits")
        // Invalid UTF-8 in the device name.
        var c = sample(); c.device = "dev-é"
        var bad = body(c)
        let e = bad.firstIndex(of: 0xC3)!; bad[e] = 0xFF
        refusedBody(bad, "not valid UTF-8")
        // A replay flag other than 0/1.
        c = sample(); c.replay = nil
        var noReplay = body(c)
        let flag = 1 + 5 + 8 + 1 + 1 + 1 + 1  // device len+bytes, epoch, first, last, counts
        XCTAssertEqual(noReplay[flag], 0)
        noReplay[flag] = 2
        refusedBody(noReplay, "replay flag is 2")
        // Counts beyond what the bytes can hold.
        var hugeCount = CompactWriter(reservingCapacity: 32)
        hugeCount.string("dev-1"); hugeCount.fixed64(1); hugeCount.signed(1); hugeCount.signed(1); hugeCount.unsigned(UInt64(1) << 40)
        refusedBody(hugeCount.bytes, "record count")
    }

    /// Bytes written by hand for the rules no encoder breaks: a duplicate dictionary name,
    /// unknown shape and flag bits, padding bits in a bitmap, a missing index beyond the
    /// dictionary, an odd number tag, a scale beyond 22, a mantissa beyond 2^53.
    func testHandWrittenBodiesBreakingEachStructuralRule() {
        func header(records: Int, names: [String]) -> CompactWriter {
            var w = CompactWriter(reservingCapacity: 64)
            w.string("dev-1"); w.fixed64(0xab); w.signed(1); w.signed(Int64(max(records, 1)))
            w.unsigned(records); w.unsigned(0); w.byte(0)
            w.unsigned(names.count)
            for n in names { w.string(n) }
            for _ in 0..<records { w.signed(0) }   // seq 1, 2, …
            for _ in 0..<records { w.signed(0) }   // ts 0, 0, …
            return w
        }
        func expect(_ w: CompactWriter, _ contains: String, line: UInt = #line) {
            assertRefused(CompactBatchCodec.storedPayload(body: w.bytes), .malformedCompact, contains: contains, line: line)
        }
        var w = header(records: 1, names: ["a", "a"])
        expect(w, "duplicate")
        w = header(records: 1, names: ["a"]); w.byte(4); w.byte(0x08)
        expect(w, "unknown flag bits")
        w = header(records: 1, names: ["a"]); w.byte(0); w.byte(0x08)
        expect(w, "shape 8")
        w = header(records: 1, names: ["a"]); w.byte(0); w.byte(1); w.byte(0b11)
        expect(w, "bits set beyond")
        w = header(records: 1, names: ["a"]); w.byte(2); w.byte(0); w.byte(0); w.unsigned(0); w.unsigned(1); w.unsigned(5)
        expect(w, "missing[0] is name 5")
        w = header(records: 1, names: ["a"]); w.byte(2); w.byte(0); w.byte(0); w.unsigned(0); w.unsigned(0)
        expect(w, "lists none")
        w = header(records: 1, names: ["a"]); w.byte(0); w.byte(0); w.byte(0); w.unsigned(3)
        expect(w, "odd tag 3")
        w = header(records: 1, names: ["a"]); w.byte(0); w.byte(0); w.byte(23)
        expect(w, "scale 23")
        w = header(records: 1, names: ["a"]); w.byte(0); w.byte(0); w.byte(0); w.unsigned(CompactWriter.zigzag((1 << 53) + 1) << 1)
        expect(w, "beyond ±2^53")
        // The same bodies without the fault are accepted (so each failure above is the fault's).
        w = header(records: 1, names: ["a"]); w.byte(0); w.byte(0); w.byte(0); w.unsigned(CompactWriter.zigzag(1 << 53) << 1)
        XCTAssertEqual(try CompactBatchCodec.decode(CompactBatchCodec.storedPayload(body: w.bytes)).records.first?.values["a"], .number(0x1p53))
        w = header(records: 1, names: ["a"]); w.byte(2); w.byte(1); w.byte(0); w.byte(0); w.unsigned(1); w.unsigned(0)
        XCTAssertEqual(try CompactBatchCodec.decode(CompactBatchCodec.storedPayload(body: w.bytes)).records.first?.missingSensors, ["a"])
    }

    /// Every prefix of a payload is refused (never a trap), as a compact batch.
    func testEveryTruncationIsRefused() {
        for payload in [CompactBatchCodec.encode(richBatch()), CompactBatchCodec.encode(sample(), compress: false)] {
            for n in 0..<payload.count {
                let cut = Array(payload.prefix(n))
                XCTAssertThrowsError(try CompactBatchCodec.decode(cut), "prefix \(n)") { error in
                    XCTAssertEqual((error as? SyncDecodingError)?.reason, .malformedCompact, "prefix \(n): \(error)")
                }
                SyncFuzzEntry.decodeAll(cut)
            }
        }
    }

    /// A single bit flip in a zlib payload never gives another batch: the header checks, the
    /// zlib header's check bits and Adler-32 refuse it, except in the unused bits that pad the
    /// deflate stream's last byte, which change nothing. In a stored payload no flip traps, and
    /// whatever a flipped body decodes to passes the fuzzer's checks (round trip, same outcome
    /// as JSON).
    func testEveryBitFlipIsRefusedOrConsistent() {
        let b = richBatch()
        let z = CompactBatchCodec.encode(b)
        var harmless = 0
        for bit in 0..<(z.count * 8) {
            var f = z
            f[bit / 8] ^= 1 << UInt8(bit % 8)
            if let other = try? CompactBatchCodec.decode(f) {
                XCTAssertEqual(other, b, "bit \(bit) gave another batch")
                harmless += 1
            }
        }
        XCTAssertLessThan(harmless, 8, "only padding bits of the last deflate byte")
        let stored = CompactBatchCodec.encode(sample(), compress: false)
        var accepted = 0
        for bit in 0..<(stored.count * 8) {
            var f = stored
            f[bit / 8] ^= 1 << UInt8(bit % 8)
            if (try? CompactBatchCodec.decode(f)) != nil { accepted += 1 }
            SyncFuzzEntry.decodeAll(f)
            SyncFuzzEntry.decodeAll(Array(f.dropFirst(6)))  // as a body of its own
        }
        XCTAssertLessThan(accepted, stored.count * 8)
    }

    /// A tiny payload that inflates to megabytes is refused after at most the declared size,
    /// whatever it declares.
    func testDecompressionBombIsRefused() throws {
        let zeros = [UInt8](repeating: 0, count: 16 << 20)
        let bomb = try XCTUnwrap(Zlib.compress(zeros, level: 9))
        XCTAssertLessThan(bomb.count, 32_768)
        for declared in [100, 5_000, ProtocolLimits.maxMessageBytes] {
            var w = CompactWriter(reservingCapacity: bomb.count + 16)
            for b in [0x46, 0x4C, 0x43, 1, 1] as [UInt8] { w.byte(b) }
            w.unsigned(declared)
            assertRefused(w.bytes + bomb, .malformedCompact, contains: "inflates to more than the \(declared) bytes")
        }
        // Declaring the truth is refused before inflating anything.
        var w = CompactWriter(reservingCapacity: bomb.count + 16)
        for b in [0x46, 0x4C, 0x43, 1, 1] as [UInt8] { w.byte(b) }
        w.unsigned(zeros.count)
        assertRefused(w.bytes + bomb, .oversize, contains: "declared")
    }

    // MARK: content type (§2.3) and the ingest's classification

    func testTheContentTypeMustAgreeWithThePayload() throws {
        let compact = CompactBatchCodec.encode(richBatch())
        let json = SyncCodec.encode(richBatch())
        for ct in [nil, "", CompactBatchCodec.contentType, "Application/VND.fieldlog.v1+compact; q=1", "application/octet-stream"] {
            XCTAssertEqual(try SyncCodec.decodeAnyBatch(compact, contentType: ct, expectedDevice: dev), richBatch(), "\(String(describing: ct))")
        }
        for ct in [nil, SyncCodec.contentType, "application/json", "application/json; charset=utf-8", "text/plain"] {
            XCTAssertEqual(try SyncCodec.decodeAnyBatch(json, contentType: ct, expectedDevice: dev), richBatch(), "\(String(describing: ct))")
        }
        assertRefused(compact, .invalidMessage, contains: "announces a json batch", contentType: SyncCodec.contentType)
        assertRefused(json, .invalidMessage, contains: "announces a compact batch", contentType: CompactBatchCodec.contentType)
        assertRefused(json, .unknownVersion, contains: "not an encoding this receiver speaks", contentType: "application/vnd.fieldlog.v2+json")
        assertRefused(compact, .unknownVersion, contentType: "application/vnd.fieldlog.v1+cbor")
        // Not compact by its bytes: read as JSON, whatever it is.
        assertRefused(Array("FL".utf8), .malformedJSON)
    }

    func testIngestClassifiesBothEncodingsAndDeadLettersWithTheReason() {
        let topic = TopicTemplates.defaults.batch.topic(device: dev)
        let c = IngestConfiguration()
        let b = richBatch()
        let viaCompact = IngestItem.classify(topic: topic, payload: CompactBatchCodec.encode(b), contentType: CompactBatchCodec.contentType, configuration: c)
        let viaJSON = IngestItem.classify(topic: topic, payload: SyncCodec.encode(b), configuration: c)
        XCTAssertEqual(viaCompact, .batch(StoreRequest(b, topic: topic)))
        XCTAssertEqual(viaCompact, viaJSON)
        var truncated = CompactBatchCodec.encode(b)
        truncated.removeLast()
        guard case .deadLetter(let d) = IngestItem.classify(topic: topic, payload: truncated, contentType: CompactBatchCodec.contentType, configuration: c) else {
            return XCTFail("a truncated compact batch was not dead-lettered")
        }
        XCTAssertEqual(d.reason, .malformedCompact)
        XCTAssertEqual(d.topicDevice, dev)
        XCTAssertEqual(d.payloadExcerpt, Array(truncated.prefix(DeadLetter.excerptBytes)))
        guard case .deadLetter(let m) = IngestItem.classify(topic: topic, payload: SyncCodec.encode(b), contentType: CompactBatchCodec.contentType, configuration: c) else {
            return XCTFail("a content type mismatch was not dead-lettered")
        }
        XCTAssertEqual(m.reason, .invalidMessage)
    }
}
