// What the ingest makes of one message from the broker (spec/protocol.md §5.2, §5.3, §6.3).
//
// `IngestItem.classify` is the receiver's validation: the topic says what the message should
// be and for which device; the strict decoder checks every value against the limits of §3.1.
// The result is a value whose every field fits the column it is stored in (`StoreRows`), or a
// dead letter with a reason. Nothing here can trap on any input (fuzzed: scripts/fuzz-ingest).

import FieldlogCore

/// What to insert, idempotently, for one batch (spec §5.4).
public struct StoreRequest: Hashable, Sendable {
    public var device: DeviceID
    public var epoch: Epoch
    /// The batch's range; recorded as a row per batch, so `storedThrough` can be derived from
    /// committed ranges (§5.5).
    public var range: SequenceRange
    public var records: [LogRecord]
    public var losses: [LossMarker]
    /// Records to keep aside (dead-letter table) and count as accounted for (§5.3).
    public var rejected: [RejectedRecord]
    /// Request id when the batch answers a replay.
    public var replayRequestID: String?
    public var topic: String

    public init(device: DeviceID, epoch: Epoch, range: SequenceRange, records: [LogRecord], losses: [LossMarker],
                rejected: [RejectedRecord], replayRequestID: String?, topic: String) {
        self.device = device
        self.epoch = epoch
        self.range = range
        self.records = records
        self.losses = losses
        self.rejected = rejected
        self.replayRequestID = replayRequestID
        self.topic = topic
    }

    public init(_ batch: Batch, topic: String) {
        self.init(device: batch.device, epoch: batch.epoch, range: batch.range, records: batch.records, losses: batch.losses,
                  rejected: batch.rejected, replayRequestID: batch.replayRequestID, topic: topic)
    }

    /// The same batch with every record kept aside as rejected for `reason` (loss markers keep
    /// their range and reason, without detail): what the ingest stores when the database
    /// refused the batch as it was, so the range is still accounted for and the device moves on.
    func rejectingAllRecords(reason: String) -> StoreRequest {
        var r = self
        r.rejected = (rejected + records.map { RejectedRecord(sequence: $0.sequence, reason: reason, excerpt: SyncCodec.excerpt(of: $0)) })
            .sorted { $0.sequence < $1.sequence }
        r.records = []
        r.losses = losses.map { LossMarker(range: $0.range, reason: $0.reason, recordedAtUnixMilliseconds: $0.recordedAtUnixMilliseconds) }
        return r
    }
}

/// A message kept aside, never stored as data (spec §5.2).
public struct DeadLetter: Hashable, Sendable {
    public var topic: String
    public var reason: DeadLetterReason
    public var message: String
    /// The device named by the topic, when the topic names one.
    public var topicDevice: DeviceID?
    /// For a rejected record: its epoch and sequence number.
    public var epoch: Epoch?
    public var sequence: SequenceNumber?
    /// The first `DeadLetter.excerptBytes` of the payload.
    public var payloadExcerpt: [UInt8]
    public var payloadBytes: Int
    /// For a message every ingest process receives (seed values, §6.3): a digest of topic and
    /// payload, stored under a unique key, so N processes keep ONE dead letter of it.
    public var dedupKey: [UInt8]?

    public static let excerptBytes = 1_024

    public init(topic: String, reason: DeadLetterReason, message: String, topicDevice: DeviceID?,
                epoch: Epoch? = nil, sequence: SequenceNumber? = nil, payload: [UInt8], payloadBytes: Int? = nil, dedupKey: [UInt8]? = nil) {
        self.topic = topic
        self.reason = reason
        self.message = message
        self.topicDevice = topicDevice
        self.epoch = epoch
        self.sequence = sequence
        self.payloadExcerpt = Array(payload.prefix(Self.excerptBytes))
        self.payloadBytes = payloadBytes ?? payload.count
        self.dedupKey = dedupKey
    }

    /// 16 bytes identifying (topic, payload): two 64-bit FNV-1a hashes with different offsets.
    /// Not cryptographic: it only tells repeats of one device's own message apart from others.
    public static func dedupKey(topic: String, payload: [UInt8]) -> [UInt8] {
        var a: UInt64 = 0xcbf2_9ce4_8422_2325, b: UInt64 = 0x6c62_272e_07bb_0142
        func mix(_ byte: UInt8) {
            a = (a ^ UInt64(byte)) &* 0x0000_0100_0000_01b3
            b = (b ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 ^ (b >> 29)
        }
        for byte in topic.utf8 { mix(byte) }
        mix(0)
        for byte in payload { mix(byte) }
        return (0..<8).map { UInt8(truncatingIfNeeded: a >> (8 * $0)) } + (0..<8).map { UInt8(truncatingIfNeeded: b >> (8 * $0)) }
    }
}

/// A device's answer to a command, as the ingest records it.
public struct ResponseRecord: Hashable, Sendable {
    public var device: DeviceID
    public var response: CommandResponse
    /// A short description for the command's row: "ok", "resent 5…9", "not-retained 1…4", or
    /// the error code. Success or failure is `response.ok`, never this text.
    public var outcome: String
    /// The response as stored (re-encoded, so it is valid JSON whatever the device sent).
    public var payload: String

    public init(device: DeviceID, response: CommandResponse) {
        self.device = device
        self.response = response
        self.outcome = Self.outcome(of: response)
        self.payload = String(decoding: SyncCodec.encode(response), as: UTF8.self)
    }

    /// Longest outcome text (the column holds 32 characters).
    static let maxOutcomeBytes = 32

    /// "ok", "resent 5…9", "not-retained 1…4", or the error code; at most 32 bytes.
    public static func outcome(of r: CommandResponse) -> String {
        if let e = r.error { return e.rawValue }
        var parts: [String] = []
        if let resent = r.resent { parts.append("resent \(resent)") }
        if !r.notRetained.isEmpty { parts.append("not-retained " + r.notRetained.map(\.description).joined(separator: ",")) }
        return parts.isEmpty ? "ok" : TextLimit.prefix(parts.joined(separator: "; "), maxBytes: maxOutcomeBytes)
    }
}

/// One message, validated: what the ingest stores for it.
public enum IngestItem: Hashable, Sendable {
    case batch(StoreRequest)
    case status(Status)
    case response(ResponseRecord)
    case legacy(LegacyValues)
    case deadLetter(DeadLetter)

    /// The device the item belongs to (for fairness and for the dead-letter row).
    public var device: DeviceID? {
        switch self {
        case .batch(let b): return b.device
        case .status(let s): return s.device
        case .response(let r): return r.device
        case .legacy(let l): return l.device
        case .deadLetter(let d): return d.topicDevice
        }
    }

    /// Validates one message from the broker (spec §5.2, checked in the order given there).
    /// A batch may come in either encoding (§2.3, §3.7): its payload decides, and the MQTT
    /// content type, when the publisher set one (`contentType`), must agree with it.
    public static func classify(topic: String, payload: [UInt8], contentType: String? = nil, configuration: IngestConfiguration) -> IngestItem {
        let t = configuration.topics
        let maxBytes = configuration.maxMessageBytes
        func dead(_ device: DeviceID?, _ error: SyncDecodingError) -> IngestItem {
            .deadLetter(DeadLetter(topic: topic, reason: error.reason, message: error.message, topicDevice: device, payload: payload))
        }
        if let device = t.batch.device(inTopic: topic) {
            do {
                return .batch(StoreRequest(try SyncCodec.decodeAnyBatch(payload, contentType: contentType, expectedDevice: device,
                                                                        maxBytes: maxBytes), topic: topic))
            } catch { return dead(device, error) }
        }
        if let device = t.status.device(inTopic: topic) {
            do {
                return .status(try SyncCodec.decodeStatus(payload, expectedDevice: device, maxBytes: min(maxBytes, 16_384)))
            } catch { return dead(device, error) }
        }
        if let device = t.response.device(inTopic: topic) {
            do {
                return .response(ResponseRecord(device: device, response: try SyncCodec.decodeCommandResponse(payload, maxBytes: min(maxBytes, 65_536))))
            } catch { return dead(device, error) }
        }
        if configuration.acceptLegacyValues, let device = t.legacyValues.device(inTopic: topic) {
            do {
                return .legacy(try LegacyValues.decode(payload, device: device, maxBytes: maxBytes))
            } catch {
                // Every ingest process takes every seed message: one dead letter for all of them.
                return .deadLetter(DeadLetter(topic: topic, reason: error.reason, message: error.message, topicDevice: device, payload: payload,
                                              dedupKey: DeadLetter.dedupKey(topic: topic, payload: payload)))
            }
        }
        return dead(nil, SyncDecodingError(.unknownTopic, "topic \(TextLimit.prefix(topic, maxBytes: 200).debugDescription) matches no subscribed template"))
    }

    /// The device a topic belongs to, without decoding the payload (for the per-device queues).
    public static func device(ofTopic topic: String, configuration: IngestConfiguration) -> DeviceID? {
        let t = configuration.topics
        return t.batch.device(inTopic: topic) ?? t.status.device(inTopic: topic) ?? t.response.device(inTopic: topic)
            ?? (configuration.acceptLegacyValues ? t.legacyValues.device(inTopic: topic) : nil)
    }
}

/// Cutting text to a byte limit without splitting a character.
enum TextLimit {
    /// The longest prefix of `s` of at most `maxBytes` UTF-8 bytes that ends on a character boundary.
    public static func prefix(_ s: String, maxBytes: Int) -> String {
        guard s.utf8.count > maxBytes else { return s }
        var end = s.startIndex
        var bytes = 0
        for i in s.unicodeScalars.indices {
            let n = s.unicodeScalars[i].utf8.count
            if bytes + n > maxBytes { break }
            bytes += n
            end = s.unicodeScalars.index(after: i)
        }
        return String(s.unicodeScalars[s.unicodeScalars.startIndex..<end])
    }

    /// Like `prefix`, with "…" appended when something was cut (the result stays within `maxBytes`).
    static func clip(_ s: String, maxBytes: Int) -> String {
        guard s.utf8.count > maxBytes else { return s }
        return prefix(s, maxBytes: maxBytes - 3) + "…"
    }
}
