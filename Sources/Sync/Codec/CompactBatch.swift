// CompactBatchCodec: the compact encoding of a batch, format version 1 (spec/protocol.md §3.7).
//
// Theory of operation. A batch of readings from one device is highly regular: sequence
// numbers go up by one, timestamps by about the sampling interval, every record names the
// same sensors, and a sensor's value changes little from one reading to the next. JSON
// repeats all of that in every record (~70 bytes for a one-sensor reading); this encoding
// writes it once:
//
//   payload = "FLC" · version (1) · method (0 stored, 1 zlib) · body length (varint) · data
//   body    = device · epoch · first · last · record count · loss count · replay
//             · sensor dictionary (sorted names) · columns · loss markers
//   columns = seq (gap to the previous record, usually 0) · ts (delta of delta, usually ≈ 0)
//             · flags (unsync, has missing) · one column per sensor (presence bitmap unless
//             every record has it; numbers as deltas of decimal mantissas at a per-column
//             scale, or the raw IEEE bits when no scale represents them exactly; texts as
//             length + UTF-8) · missing lists (dictionary indexes)
//
// then deflate (zlib) over the body. Every value round-trips bit for bit: a number is coded as
// mantissa m at scale s only if `Double(m) / 10^s` gives back its exact bits, which is the
// very expression the decoder evaluates.
//
// Decoding is strict and total, in three steps, each with its own dead-letter class:
// the envelope (magic, version: `unknown-version`; method and declared length, which must
// not exceed the message limit: `oversize`; the inflated size must equal the declared one,
// so a decompression bomb costs at most the limit), the structure (`malformed-compact`:
// truncation, non-canonical varints, bits where none may be, invalid UTF-8, duplicate
// dictionary names, trailing bytes), then the same §3.1 rules the JSON decoder applies, in
// the same order and with the same classes (`invalid-message`, `device-mismatch`,
// `sequence-regression`, `range-mismatch`, records rejected one by one). To make "the same
// rules" checkable, the body's every integer carries any Int64 (wrapping arithmetic for
// deltas), so anything JSON can say wrongly the compact form can say too; the shared table
// in Tests/SyncTests/EncodingLimitTests.swift runs every case through both decoders.

import FieldlogCore

/// Encoder and decoder of compact batches (spec §3.7).
public enum CompactBatchCodec {
    /// MQTT v5 content type of a compact batch (the payload's magic and version are authoritative).
    public static let contentType = "application/vnd.fieldlog.v1+compact"
    /// The first bytes of every compact batch: "FLC" (no JSON text starts with them).
    static let magic: [UInt8] = [0x46, 0x4C, 0x43]
    /// The format version this code writes and reads (the byte after the magic).
    public static let formatVersion: UInt8 = 1
    /// Largest decimal scale of a number column: 10^22 is the largest power of ten a Double holds exactly.
    static let maxScale = 22
    static let powersOfTen: [Double] = (0...maxScale).map { k in (0..<k).reduce(1.0) { a, _ in a * 10 } }
    /// zlib level: 6 (zlib's default) is within 1 % of 9 on batches, at less CPU on the device.
    static let zlibLevel: Int32 = 6

    enum Method: UInt8 {
        case stored = 0
        case zlib = 1
    }

    /// Whether `bytes` start like a compact batch (any version).
    static func isCompact(_ bytes: [UInt8]) -> Bool {
        bytes.count >= magic.count && bytes[0] == magic[0] && bytes[1] == magic[1] && bytes[2] == magic[2]
    }

    // MARK: Encoding

    /// The compact encoding of `b` (deterministic: equal batches give equal bytes).
    public static func encode(_ b: Batch) -> [UInt8] { encode(Content(b)) }

    /// The payload for `content`; zlib unless that would not be smaller (then stored).
    static func encode(_ content: Content, compress: Bool = true) -> [UInt8] {
        let body = content.body()
        var method = Method.stored
        var data = body
        if compress, let z = Zlib.compress(body, level: zlibLevel), z.count < body.count {
            method = .zlib
            data = z
        }
        var w = CompactWriter(reservingCapacity: data.count + 16)
        for b in magic { w.byte(b) }
        w.byte(formatVersion)
        w.byte(method.rawValue)
        w.unsigned(body.count)
        var out = w.bytes
        out.append(contentsOf: data)
        return out
    }

    // MARK: Decoding

    /// Decodes a compact batch. `expectedDevice` (from the topic) is compared with the batch's
    /// device. Records with invalid content but a readable sequence number are returned in
    /// `Batch.rejected` (spec §5.3), exactly where the JSON decoder rejects them.
    public static func decode(_ bytes: [UInt8], expectedDevice: DeviceID? = nil,
                              maxBytes: Int = ProtocolLimits.maxMessageBytes) throws(SyncDecodingError) -> Batch {
        let body = try unwrap(bytes, maxBytes: maxBytes)
        let content: Content
        do { content = try Content(body: body) } catch {
            throw SyncDecodingError(.malformedCompact, "compact batch body, byte \(error.offset): \(error.message)")
        }
        return try content.validated(expectedDevice: expectedDevice)
    }

    /// Checks the envelope and returns the body (inflated when compressed).
    static func unwrap(_ bytes: [UInt8], maxBytes: Int) throws(SyncDecodingError) -> [UInt8] {
        func malformed(_ e: CompactFormatError) -> SyncDecodingError {
            SyncDecodingError(.malformedCompact, "compact batch, byte \(e.offset): \(e.message)")
        }
        guard bytes.count <= maxBytes else {
            throw SyncDecodingError(.oversize, "message is \(bytes.count) bytes; at most \(maxBytes) allowed")
        }
        guard isCompact(bytes) else {
            throw SyncDecodingError(.malformedCompact, "a compact batch starts with \"FLC\"; this payload does not")
        }
        guard bytes.count > magic.count else { throw SyncDecodingError(.malformedCompact, "truncated: the format version is missing") }
        let version = bytes[magic.count]
        guard version == formatVersion else {
            throw SyncDecodingError(.unknownVersion, "compact batch format version \(version) is not supported; this receiver speaks \(formatVersion)")
        }
        var r = CompactReader(bytes, offset: magic.count + 1)
        let method: Method
        let size: UInt64
        do throws(CompactFormatError) {
            let m = try r.byte("the compression method")
            guard let known = Method(rawValue: m) else { throw r.error("compression method \(m) is not 0 (stored) or 1 (zlib)") }
            method = known
            size = try r.unsigned("the body length")
        } catch { throw malformed(error) }
        guard size <= UInt64(maxBytes) else {
            throw SyncDecodingError(.oversize, "the body is \(size) bytes (declared); at most \(maxBytes) allowed")
        }
        let data = bytes[r.offset...]
        switch method {
        case .stored:
            guard data.count == Int(size) else {
                throw SyncDecodingError(.malformedCompact, "the stored body is \(data.count) bytes, not the \(size) its header declares")
            }
            return Array(data)
        case .zlib:
            do { return try Zlib.decompress(data, size: Int(size)) } catch { throw malformed(error) }
        }
    }
}

// MARK: - Content

extension CompactBatchCodec {
    /// A compact batch's content before validation: every integer as any Int64 and every
    /// string as any UTF-8, so tests can write what the decoder must refuse (what JSON can
    /// say wrongly, this can say too). `Content(batch)` is what an encoder sends.
    struct Content: Hashable, Sendable {
        struct Value: Hashable, Sendable {
            var name: String
            var value: SensorValue
        }
        struct Record: Hashable, Sendable {
            var seq: Int64
            var ts: Int64
            var unsync = false
            /// Names are unique within a record (a column holds one value per record).
            var values: [Value] = []
            var missing: [String] = []
        }
        struct Loss: Hashable, Sendable {
            var first: Int64
            var last: Int64
            var reason: String
            var at: Int64
            var detail: String = ""
        }

        var device: String
        var epoch: UInt64
        var first: Int64
        var last: Int64
        var replay: String?
        var records: [Record]
        var losses: [Loss]

        init(device: String, epoch: UInt64, first: Int64, last: Int64, replay: String? = nil, records: [Record], losses: [Loss] = []) {
            self.device = device
            self.epoch = epoch
            self.first = first
            self.last = last
            self.replay = replay
            self.records = records
            self.losses = losses
        }

        init(_ b: Batch) {
            self.init(device: b.device.rawValue, epoch: b.epoch.rawValue, first: Int64(b.range.first.rawValue), last: Int64(b.range.last.rawValue),
                      replay: b.replayRequestID,
                      records: b.records.map { r in
                          Record(seq: Int64(r.sequence.rawValue), ts: r.timestamp.unixMilliseconds, unsync: r.timestamp.clockUnsynchronized,
                                 values: r.values.sorted.map { Value(name: $0.name, value: $0.value) }, missing: r.missingSensors)
                      },
                      losses: b.losses.map { l in
                          Loss(first: Int64(l.range.first.rawValue), last: Int64(l.range.last.rawValue), reason: l.reason.rawValue,
                               at: l.recordedAtUnixMilliseconds, detail: l.detail)
                      })
        }

        /// The same content as a JSON batch (what the JSON decoder is given in the shared tests).
        var json: JSONValue {
            var m: [(String, JSONValue)] = [
                ("v", .integer(syncProtocolVersion)), ("type", .string("batch")), ("device", .string(device)),
                ("epoch", .string(Epoch(epoch).hex)), ("first", .integer(first)), ("last", .integer(last)),
                ("records", .array(records.map(\.json))),
            ]
            if !losses.isEmpty {
                m.append(("losses", .array(losses.map { l in
                    var o: [(String, JSONValue)] = [("first", .integer(l.first)), ("last", .integer(l.last)),
                                                    ("reason", .string(l.reason)), ("at", .integer(l.at))]
                    if !l.detail.isEmpty { o.append(("detail", .string(l.detail))) }
                    return .object(o)
                })))
            }
            if let replay { m.append(("replay", .string(replay))) }
            return .object(m)
        }
    }
}

extension CompactBatchCodec.Content.Record {
    /// The record as JSON (a non-finite number, which JSON cannot hold, as its text): the
    /// excerpt kept with a rejected record.
    var json: JSONValue {
        var m: [(String, JSONValue)] = [("seq", .integer(seq)), ("ts", .integer(ts))]
        if unsync { m.append(("unsync", .bool(true))) }
        m.append(("values", .object(values.map { v in
            switch v.value {
            case .number(let d): return (v.name, d.isFinite ? .double(d) : .string(String(d)))
            case .text(let s): return (v.name, .string(s))
            }
        })))
        if !missing.isEmpty { m.append(("missing", .array(missing.map { .string($0) }))) }
        return .object(m)
    }
}

// MARK: - Body: writing

extension CompactBatchCodec.Content {
    /// Flag bits of a record.
    static let flagUnsync: UInt8 = 1
    static let flagMissing: UInt8 = 2
    /// Shape bits of a column.
    static let shapePresenceBitmap: UInt8 = 1
    static let kindNumbers: UInt8 = 0, kindTexts: UInt8 = 1, kindMixed: UInt8 = 2
    /// A number value coded as the raw IEEE bits (the odd varint 1, then 8 bytes).
    static let rawNumberTag: UInt64 = 1

    /// The uncompressed body (the layout is at the top of the file and in spec §3.7).
    func body() -> [UInt8] {
        var w = CompactWriter(reservingCapacity: 64 + records.count * 8)
        w.string(device)
        w.fixed64(epoch)
        w.signed(first)
        w.signed(last)
        w.unsigned(records.count)
        w.unsigned(losses.count)
        if let replay { w.byte(1); w.string(replay) } else { w.byte(0) }

        // Dictionary: every sensor name of the batch (values and missing lists), sorted.
        var index: [String: Int] = [:]
        for r in records {
            for v in r.values where index[v.name] == nil { index[v.name] = 0 }
            for m in r.missing where index[m] == nil { index[m] = 0 }
        }
        let names = index.keys.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
        for (k, n) in names.enumerated() { index[n] = k }
        w.unsigned(names.count)
        for n in names { w.string(n) }

        // seq: seq_i = seq_{i-1} + 1 + gap_i, starting from first − 1 (wrapping).
        var previous = first &- 1
        for r in records {
            w.signed(r.seq &- previous &- 1)
            previous = r.seq
        }
        // ts: delta of delta, starting from 0 and 0 (wrapping).
        var previousTs: Int64 = 0, previousDelta: Int64 = 0
        for r in records {
            let delta = r.ts &- previousTs
            w.signed(delta &- previousDelta)
            previousTs = r.ts
            previousDelta = delta
        }
        for r in records {
            w.byte((r.unsync ? Self.flagUnsync : 0) | (r.missing.isEmpty ? 0 : Self.flagMissing))
        }

        // One column per name: (record index, value) in record order.
        var columns = [[(record: Int, value: SensorValue)]](repeating: [], count: names.count)
        for (k, r) in records.enumerated() {
            for v in r.values {
                let j = index[v.name]!
                precondition(columns[j].last?.record != k, "sensor \(v.name) twice in one record")
                columns[j].append((k, v.value))
            }
        }
        for column in columns { Self.write(column, records: records.count, &w) }

        for r in records where !r.missing.isEmpty {
            w.unsigned(r.missing.count)
            for m in r.missing { w.unsigned(index[m]!) }
        }
        for l in losses {
            w.signed(l.first)
            w.signed(l.last)
            w.string(l.reason)
            w.signed(l.at)
            w.string(l.detail)
        }
        return w.bytes
    }

    private static func write(_ column: [(record: Int, value: SensorValue)], records n: Int, _ w: inout CompactWriter) {
        let allPresent = column.count == n
        var texts = 0
        for e in column { if case .text = e.value { texts += 1 } }
        let kind = texts == 0 ? kindNumbers : texts == column.count ? kindTexts : kindMixed
        w.byte((allPresent ? 0 : shapePresenceBitmap) | kind << 1)
        if !allPresent {
            var present = [Bool](repeating: false, count: n)
            for e in column { present[e.record] = true }
            w.bitmap(present)
        }
        if kind == kindMixed {
            w.bitmap(column.map { if case .text = $0.value { return true } else { return false } })
        }
        var numbers: [Double] = []
        if kind != kindTexts {
            numbers = column.compactMap { if case .number(let d) = $0.value { return d } else { return nil } }
        }
        let scale = kind == kindTexts ? 0 : bestScale(numbers)
        if kind != kindTexts { w.byte(UInt8(scale)) }
        var previous: Int64 = 0
        for e in column {
            switch e.value {
            case .text(let s): w.string(s)
            case .number(let d):
                if let m = mantissa(d, scale: scale) {
                    w.unsigned(CompactWriter.zigzag(m - previous) << 1)
                    previous = m
                } else {
                    w.unsigned(rawNumberTag)
                    w.fixed64(d.bitPattern)
                }
            }
        }
    }

    /// m with `Double(m) / 10^scale` bit-identical to `d` and |m| ≤ 2^53, if there is one.
    static func mantissa(_ d: Double, scale: Int) -> Int64? {
        let x = (d * CompactBatchCodec.powersOfTen[scale]).rounded()
        guard x.isFinite, abs(x) <= 9_007_199_254_740_992 else { return nil }
        let m = Int64(x)
        guard (Double(m) / CompactBatchCodec.powersOfTen[scale]).bitPattern == d.bitPattern else { return nil }
        return m
    }

    /// The scale that codes `numbers` in the fewest bytes: the smallest scale of each value is
    /// a candidate (most sensors give one or two); values no candidate represents go raw.
    static func bestScale(_ numbers: [Double]) -> Int {
        var candidates: Set<Int> = []
        for d in numbers {
            if let k = (0...CompactBatchCodec.maxScale).first(where: { mantissa(d, scale: $0) != nil }) { candidates.insert(k) }
        }
        guard candidates.count > 1 else { return candidates.first ?? 0 }
        func cost(_ s: Int) -> Int {
            var total = 0, previous: Int64 = 0
            for d in numbers {
                if let m = mantissa(d, scale: s) {
                    total += CompactWriter.unsignedSize(CompactWriter.zigzag(m - previous) << 1)
                    previous = m
                } else {
                    total += 9
                }
            }
            return total
        }
        return candidates.sorted().min { cost($0) < cost($1) }!
    }
}

// MARK: - Body: reading

extension CompactBatchCodec.Content {
    /// Reads a body; throws for anything that is not a well-formed body (§3.7), before any of
    /// the §3.1 rules (those are `validated`'s).
    init(body: [UInt8]) throws(CompactFormatError) {
        var r = CompactReader(body)
        device = try r.string("device")
        epoch = try r.fixed64("epoch")
        first = try r.signed("first")
        last = try r.signed("last")
        // Counts are bounded by what the bytes can describe (the §3.1 limits are validated's):
        // a record takes at least 3 bytes (seq, ts, flags), a loss marker at least 5.
        let n = try r.count("the record count", max: Int.max >> 8, minBytesEach: 3)
        let lossCount = try r.count("the loss marker count", max: Int.max >> 8, minBytesEach: 5)
        switch try r.byte("the replay flag") {
        case 0: replay = nil
        case 1: replay = try r.string("replay")
        case let b: throw r.error("the replay flag is \(b), not 0 or 1")
        }

        let nameCount = try r.count("the dictionary size", max: Int.max >> 8, minBytesEach: 2)
        var names: [String] = []
        names.reserveCapacity(nameCount)
        var seen: Set<String> = []
        for k in 0..<nameCount {
            let name = try r.string("dictionary[\(k)]")
            guard seen.insert(name).inserted else { throw r.error("dictionary[\(k)] \(name.debugDescription) is a duplicate") }
            names.append(name)
        }

        var records: [Record] = []
        records.reserveCapacity(n)
        var previous = first &- 1
        for k in 0..<n {
            let seq = previous &+ 1 &+ (try r.signed("records[\(k)].seq"))
            records.append(Record(seq: seq, ts: 0))
            previous = seq
        }
        var previousTs: Int64 = 0, previousDelta: Int64 = 0
        for k in 0..<n {
            previousDelta = previousDelta &+ (try r.signed("records[\(k)].ts"))
            previousTs = previousTs &+ previousDelta
            records[k].ts = previousTs
        }
        var hasMissing = [Bool](repeating: false, count: n)
        for k in 0..<n {
            let flags = try r.byte("records[\(k)] flags")
            guard flags & ~(Self.flagUnsync | Self.flagMissing) == 0 else { throw r.error("records[\(k)] has unknown flag bits \(flags)") }
            records[k].unsync = flags & Self.flagUnsync != 0
            hasMissing[k] = flags & Self.flagMissing != 0
        }
        for (j, name) in names.enumerated() {
            try Self.readColumn(j, name: name, columnsLeft: names.count - j, into: &records, &r)
        }
        for k in 0..<n where hasMissing[k] {
            let count = try r.count("records[\(k)].missing count", max: Int.max >> 8, minBytesEach: 1)
            guard count > 0 else { throw r.error("records[\(k)] is flagged with missing sensors but lists none") }
            records[k].missing.reserveCapacity(count)
            for i in 0..<count {
                let j = try r.unsigned("records[\(k)].missing[\(i)]")
                guard j < UInt64(names.count) else { throw r.error("records[\(k)].missing[\(i)] is name \(j) of a dictionary of \(names.count)") }
                records[k].missing.append(names[Int(j)])
            }
        }
        self.records = records

        var losses: [Loss] = []
        losses.reserveCapacity(lossCount)
        for k in 0..<lossCount {
            losses.append(Loss(first: try r.signed("losses[\(k)].first"), last: try r.signed("losses[\(k)].last"),
                               reason: try r.string("losses[\(k)].reason"), at: try r.signed("losses[\(k)].at"),
                               detail: try r.string("losses[\(k)].detail")))
        }
        self.losses = losses
        guard r.isAtEnd else { throw r.error("\(r.remaining) bytes after the end of the body") }
    }

    private static func readColumn(_ j: Int, name: String, columnsLeft: Int, into records: inout [Record],
                                   _ r: inout CompactReader) throws(CompactFormatError) {
        let n = records.count
        let shape = try r.byte("column \(j) shape")
        let kind = shape >> 1
        guard shape & ~(shapePresenceBitmap | 6) == 0, kind <= kindMixed else {
            throw r.error("column \(j) (\(name)) has shape \(shape): unknown bits or kind")
        }
        var present: [Bool]?
        var count = n
        if shape & shapePresenceBitmap != 0 {
            let bits = try r.bitmap("column \(j) presence", bits: n)
            count = bits.reduce(0) { $0 + ($1 ? 1 : 0) }
            present = bits
        }
        var isText: [Bool]?
        if kind == kindMixed { isText = try r.bitmap("column \(j) kinds", bits: count) }
        var scale = 0
        if kind != kindTexts {
            let s = try r.byte("column \(j) scale")
            guard s <= CompactBatchCodec.maxScale else { throw r.error("column \(j) (\(name)) has scale \(s); at most \(CompactBatchCodec.maxScale)") }
            scale = Int(s)
        }
        let divisor = CompactBatchCodec.powersOfTen[scale]
        var previous: Int64 = 0
        var i = 0  // index among the column's values
        for k in 0..<n where present?[k] ?? true {
            let text = isText?[i] ?? (kind == kindTexts)
            let value: SensorValue
            if text {
                value = .text(try r.string("column \(j) value \(i)"))
            } else {
                let v = try r.unsigned("column \(j) value \(i)")
                if v == rawNumberTag {
                    value = .number(Double(bitPattern: try r.fixed64("column \(j) value \(i) (raw)")))
                } else {
                    guard v & 1 == 0 else { throw r.error("column \(j) value \(i) has the odd tag \(v); only 1 (raw) is defined") }
                    let delta = Int64(bitPattern: (v >> 1) >> 1) ^ -Int64(bitPattern: (v >> 1) & 1)
                    let (m, overflow) = previous.addingReportingOverflow(delta)
                    guard !overflow, m.magnitude <= 1 << 53 else {
                        throw r.error("column \(j) value \(i): mantissa beyond ±2^53")
                    }
                    previous = m
                    value = .number(Double(m) / divisor)
                }
            }
            if records[k].values.isEmpty { records[k].values.reserveCapacity(min(columnsLeft, SensorValues.maxSensors + 1)) }
            records[k].values.append(Value(name: name, value: value))
            i += 1
        }
    }
}

// MARK: - Validation (spec §3.1, as the JSON decoder applies it)

extension CompactBatchCodec.Content {
    /// The batch, checked against every rule of §3.1 in the JSON decoder's order and with its
    /// classes; records with invalid content are rejected one by one, as JSON rejects them.
    func validated(expectedDevice: DeviceID?) throws(SyncDecodingError) -> Batch {
        func invalid(_ m: String) -> SyncDecodingError { SyncDecodingError(.invalidMessage, m) }
        guard device.utf8.count <= 256 else { throw invalid("device is \(device.utf8.count) bytes; at most 256 allowed") }
        let deviceID: DeviceID
        do { deviceID = try DeviceID(device) } catch { throw invalid("device: \(error.description)") }
        if let expectedDevice, expectedDevice != deviceID {
            throw SyncDecodingError(.deviceMismatch, "batch names device \"\(deviceID)\" but was published on the topic of \"\(expectedDevice)\"")
        }
        guard epoch != 0 else { throw invalid("epoch must not be 0") }
        let first = try Self.sequence(self.first, "first")
        let last = try Self.sequence(self.last, "last")
        guard first <= last else { throw SyncDecodingError(.sequenceRegression, "batch range first \(first) is after last \(last)") }
        let range = SequenceRange(checked: first, last)
        guard records.count <= ProtocolLimits.maxRecordsPerBatch else {
            throw invalid("records holds \(records.count) entries; at most \(ProtocolLimits.maxRecordsPerBatch) allowed")
        }
        guard losses.count <= ProtocolLimits.maxLossesPerBatch else {
            throw invalid("losses holds \(losses.count) entries; at most \(ProtocolLimits.maxLossesPerBatch) allowed")
        }
        if let replay, !ProtocolLimits.isValidRequestID(replay) {
            throw invalid("replay must be 1…\(ProtocolLimits.maxRequestIDBytes) printable ASCII characters without space, got \(replay.debugDescription)")
        }

        var out: [LogRecord] = []
        var rejected: [RejectedRecord] = []
        out.reserveCapacity(records.count)
        var spans: [(SequenceNumber, SequenceNumber)] = []
        spans.reserveCapacity(records.count + losses.count)
        var previous = SequenceNumber.zero
        for (k, r) in records.enumerated() {
            let s = try Self.sequence(r.seq, "records[\(k)].seq")
            guard s > previous else {
                throw SyncDecodingError(.sequenceRegression, "records[\(k)].seq \(s) is not after the previous record's \(previous)")
            }
            previous = s
            spans.append((s, s))
            do {
                out.append(try r.logRecord(sequence: s, path: "records[\(k)]."))
            } catch {
                rejected.append(RejectedRecord(sequence: s, reason: error.message, excerpt: SyncCodec.truncate(SyncCodec.describeFull(r.json))))
            }
        }
        var lossMarkers: [LossMarker] = []
        var previousLoss = SequenceNumber.zero
        for (k, l) in losses.enumerated() {
            let lo = try Self.sequence(l.first, "losses[\(k)].first")
            let hi = try Self.sequence(l.last, "losses[\(k)].last")
            guard lo <= hi, lo > previousLoss else {
                throw SyncDecodingError(.sequenceRegression, "losses[\(k)] range \(lo)…\(hi) is empty or not after the previous loss marker")
            }
            previousLoss = hi
            guard l.reason.utf8.count <= 32 else { throw invalid("losses[\(k)].reason is \(l.reason.utf8.count) bytes; at most 32 allowed") }
            guard let reason = LossReason(rawValue: l.reason) else {
                throw invalid("losses[\(k)].reason \(l.reason.debugDescription) is not one of \(LossReason.allCases.map(\.rawValue))")
            }
            let at = try Self.timestamp(l.at, "losses[\(k)].at")
            guard l.detail.utf8.count <= ProtocolLimits.maxTextBytes else {
                throw invalid("losses[\(k)].detail is \(l.detail.utf8.count) bytes; at most \(ProtocolLimits.maxTextBytes) allowed")
            }
            lossMarkers.append(LossMarker(range: SequenceRange(checked: lo, hi), reason: reason, recordedAtUnixMilliseconds: at, detail: l.detail))
            spans.append((lo, hi))
        }
        try BatchTiling.check(range: range, spans: &spans)
        return Batch(device: deviceID, epoch: Epoch(epoch), range: range, records: out, losses: lossMarkers,
                     replayRequestID: replay, rejected: rejected)
    }

    static func sequence(_ i: Int64, _ path: String) throws(SyncDecodingError) -> SequenceNumber {
        guard i >= 1, UInt64(i) <= SequenceNumber.max.rawValue else {
            throw SyncDecodingError(.invalidMessage, "\(path) must be an integer sequence number within 1…\(SequenceNumber.max), got \(i)")
        }
        return SequenceNumber(UInt64(i))
    }

    static func timestamp(_ i: Int64, _ path: String) throws(SyncDecodingError) -> Int64 {
        guard ProtocolLimits.timestampRange.contains(i) else {
            throw SyncDecodingError(.invalidMessage, "\(path) must be an integer timestamp in ms within \(ProtocolLimits.timestampRange.lowerBound)…\(ProtocolLimits.timestampRange.upperBound), got \(i)")
        }
        return i
    }
}

extension CompactBatchCodec.Content.Record {
    /// The record's content after its seq; an error here rejects only this record (§5.3).
    func logRecord(sequence: SequenceNumber, path: String) throws(SyncDecodingError) -> LogRecord {
        let ts = try CompactBatchCodec.Content.timestamp(ts, path + "ts")
        guard values.count <= SensorValues.maxSensors else {
            throw SyncDecodingError(.invalidMessage, "\(path)values holds \(values.count) sensors; at most \(SensorValues.maxSensors) allowed")
        }
        var dict: [String: SensorValue] = Dictionary(minimumCapacity: values.count)
        for v in values { dict[v.name] = v.value }
        let sensorValues: SensorValues
        do { sensorValues = try SensorValues(dict) } catch {
            throw SyncDecodingError(.invalidMessage, "\(path)values: \(error.description)")
        }
        guard missing.count <= ProtocolLimits.maxMissingSensors else {
            throw SyncDecodingError(.invalidMessage, "\(path)missing holds \(missing.count) entries; at most \(ProtocolLimits.maxMissingSensors) allowed")
        }
        for (k, name) in missing.enumerated() {
            do { try SensorValues.validate(name: name) } catch {
                throw SyncDecodingError(.invalidMessage, "\(path)missing[\(k)]: \(error.description)")
            }
        }
        return LogRecord(sequence: sequence, timestamp: DeviceTimestamp(unixMilliseconds: ts, clockUnsynchronized: unsync),
                         values: sensorValues, missingSensors: missing)
    }
}
