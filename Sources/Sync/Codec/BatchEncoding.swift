// BatchEncoding: the two ways a batch travels — JSON v1 (spec/protocol.md §3.2, readable, the
// default and the tools' format) and the compact encoding (§3.7) — and the receiver's dispatch
// between them (§2.3).
//
// The receiver decides by the payload, never by the MQTT content type alone: a compact batch
// starts with the magic "FLC", which no JSON text can, and anything else is read as JSON. A
// content type, when the publisher set one, must agree with the payload: naming the other
// encoding is `invalid-message`, naming a Fieldlog encoding this receiver does not speak is
// `unknown-version`. Without one (an MQTT 3.1.1 client, a tool) the payload alone decides;
// other content types (`application/octet-stream`…) say nothing about Fieldlog and are ignored.

import FieldlogCore

/// How a device encodes its batches (device setting `SYNC_ENCODING`, `SenderConfiguration.encoding`).
public enum BatchEncoding: String, Hashable, Sendable, CaseIterable {
    /// JSON v1 (spec §3.2): readable, what every tool speaks. The default.
    case json
    /// Columnar, delta-coded, zlib-compressed (spec §3.7): a few bytes per reading instead of ~70.
    case compact

    /// The MQTT v5 content type announcing this encoding.
    public var contentType: String {
        switch self {
        case .json: return SyncCodec.contentType
        case .compact: return CompactBatchCodec.contentType
        }
    }

    /// What `payload` is, by its bytes alone: compact when it starts with the compact magic.
    public static func of(payload: [UInt8]) -> BatchEncoding {
        CompactBatchCodec.isCompact(payload) ? .compact : .json
    }

    /// The encoding a content type announces: nil when it says nothing about Fieldlog's
    /// encodings (absent or generic); `unknown-version` for a Fieldlog type this receiver does
    /// not speak. Compared without case and parameters (`; charset=…`), as MIME types are.
    static func announced(by contentType: String?) throws(SyncDecodingError) -> BatchEncoding? {
        guard let contentType else { return nil }
        let type = String(contentType.prefix { $0 != ";" }).trimmingSpaces.lowercased()
        if type.isEmpty { return nil }
        if type == SyncCodec.contentType || type == "application/json" { return .json }
        if type == CompactBatchCodec.contentType { return .compact }
        if type.hasPrefix("application/vnd.fieldlog.") {
            throw SyncDecodingError(.unknownVersion, "content type \(String(contentType.prefix(80)).debugDescription) is not an encoding this receiver speaks (\(allCases.map(\.contentType).joined(separator: ", ")))")
        }
        return nil
    }

    /// The payload of `batch` in this encoding, and the encoding it is in. A compact batch is
    /// never larger than `maxBytes`: in the rare case its compact form would be (texts and
    /// full-precision numbers that neither columns nor zlib can shrink), the batch goes as
    /// JSON, which the sender has already sized to fit (a device chooses per batch).
    public func encode(_ batch: Batch, maxBytes: Int) -> (payload: [UInt8], encoding: BatchEncoding) {
        if self == .compact {
            let payload = CompactBatchCodec.encode(batch)
            if payload.count <= maxBytes { return (payload, .compact) }
        }
        return (SyncCodec.encode(batch), .json)
    }
}

extension SyncCodec {
    /// Decodes a batch in either encoding (§2.3): the payload decides, the content type (if
    /// any) must agree. The size limit is checked first, on the bytes as received.
    public static func decodeAnyBatch(_ bytes: [UInt8], contentType: String? = nil, expectedDevice: DeviceID? = nil,
                                      maxBytes: Int = ProtocolLimits.maxMessageBytes) throws(SyncDecodingError) -> Batch {
        guard bytes.count <= maxBytes else {
            throw SyncDecodingError(.oversize, "message is \(bytes.count) bytes; at most \(maxBytes) allowed")
        }
        let encoding = BatchEncoding.of(payload: bytes)
        if let announced = try BatchEncoding.announced(by: contentType), announced != encoding {
            throw SyncDecodingError(.invalidMessage, "content type \(String((contentType ?? "").prefix(80)).debugDescription) announces a \(announced.rawValue) batch but the payload is \(encoding == .compact ? "a compact batch (it starts with \"FLC\")" : "not a compact batch (read as JSON)")")
        }
        switch encoding {
        case .json: return try decodeBatch(bytes, expectedDevice: expectedDevice, maxBytes: maxBytes)
        case .compact: return try CompactBatchCodec.decode(bytes, expectedDevice: expectedDevice, maxBytes: maxBytes)
        }
    }
}

/// The tiling rule of §3.2, shared by both decoders: records and loss markers together cover
/// every number of the batch's range exactly once.
enum BatchTiling {
    /// `spans` are the (first, last) of every record and loss marker, in any order (sorted here).
    static func check(range: SequenceRange, spans: inout [(SequenceNumber, SequenceNumber)]) throws(SyncDecodingError) {
        spans.sort { $0.0 < $1.0 }
        var expected = range.first.rawValue  // the lowest sequence number not yet covered
        for (lo, hi) in spans {
            guard lo >= range.first, hi <= range.last else {
                throw SyncDecodingError(.rangeMismatch, "sequence \(lo == hi ? "\(lo)" : "\(lo)…\(hi)") is outside the batch range \(range)")
            }
            guard lo.rawValue >= expected else {
                throw SyncDecodingError(.rangeMismatch, "sequence \(lo) is covered twice (by a record and a loss marker)")
            }
            guard lo.rawValue == expected else {
                throw SyncDecodingError(.rangeMismatch, "sequence \(expected)…\(lo.rawValue - 1) of the batch range \(range) has neither a record nor a loss marker")
            }
            expected = hi.rawValue + 1
        }
        guard expected == range.last.rawValue + 1 else {
            throw SyncDecodingError(.rangeMismatch, "sequence \(expected)…\(range.last) of the batch range \(range) has neither a record nor a loss marker")
        }
    }
}

extension String {
    /// Without leading and trailing spaces and tabs (no Foundation in Sync).
    var trimmingSpaces: String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        guard let start = firstIndex(where: { !isSpace($0) }), let end = lastIndex(where: { !isSpace($0) }) else { return "" }
        return String(self[start...end])
    }
}
