// ReceiverStateMachine: the backend side of the sync protocol (spec/protocol.md §5).
//
// Theory of operation. One instance runs in each ingest process; several processes share
// the devices' batch topics through an MQTT v5 shared subscription, so any process may get
// any batch of any device, in any order, any number of times. The machine therefore keeps
// no per-device progress of its own: correctness rests on the store.
//
//   message received ─┬─ topic unknown / payload invalid ──▶ .deadLetter (never stored, never acked)
//                     ├─ status / last will ──────────────▶ .recordStatus
//                     ├─ command response ────────────────▶ .recordResponse
//                     ├─ seed value list ─────────────────▶ .storeLegacy
//                     └─ batch ───────────────────────────▶ .store(token, request)
//   store committed(token, outcome) ─────────────────────▶ .publishAck (QoS 1, retained)
//   store failed(token) ─────────────────────────────────▶ nothing (the device resends)
//
// The store inserts a batch idempotently, keyed by (device, epoch, seq), with its loss
// markers and rejected records, and its range in a per-batch row, all in one transaction.
// After the commit it computes `storedThrough`: the end of the contiguous prefix 1...n of
// the epoch covered by committed rows (records, loss markers, rejected records), never a
// counter that the batch advances by itself (§5.5 argues why this is safe with concurrent
// receivers and cheap on Galera). The ack goes out only after that commit; a receiver
// that crashes in between sends nothing, and the device's resend is absorbed as a duplicate.

import FieldlogCore

/// Configuration of a receiver (spec §5.1).
public struct ReceiverConfiguration: Sendable, Hashable {
    public var topics: TopicTemplates = .defaults
    /// Largest payload accepted (checked before parsing). Default `ProtocolLimits.maxMessageBytes`.
    public var maxMessageBytes: Int = ProtocolLimits.maxMessageBytes
    /// Stores in progress at once; a batch beyond that is dropped unacked (the device resends),
    /// so a slow database cannot make the process grow without bound. Default 256.
    public var maxPendingStores: Int = 256
    /// Whether seed value lists on `topics.legacyValues` are taken (`.storeLegacy`).
    public var acceptLegacyValues: Bool = true

    public init() {}
}

/// An opaque handle tying a `.store` action to its `storeCommitted`/`storeFailed` event.
public struct StoreToken: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64
    public var description: String { "store#\(rawValue)" }
}

/// What to insert, idempotently, in one transaction (spec §5.3).
public struct StoreRequest: Hashable, Sendable {
    public var device: DeviceID
    public var epoch: Epoch
    /// The batch's range; record it (e.g. as a row per batch) so that `storedThrough` can be
    /// derived from committed ranges.
    public var range: SequenceRange
    public var records: [LogRecord]
    public var losses: [LossMarker]
    /// Records to keep aside (dead-letter table) and count as accounted for.
    public var rejected: [RejectedRecord]
    /// Request id when the batch answers a replay.
    public var replayRequestID: String?
    public var topic: String
}

/// The store's answer after committing a `StoreRequest`.
public struct StoreOutcome: Hashable, Sendable {
    /// End of the contiguous prefix of the epoch covered by committed rows, read after the
    /// commit. A lower value than the truth is safe (a later ack corrects it); a higher one is not.
    public var storedThrough: SequenceNumber
    /// Known gaps above `storedThrough` (for the ack's `missing`), if computed.
    public var missing: [SequenceRange]

    public init(storedThrough: SequenceNumber, missing: [SequenceRange] = []) {
        self.storedThrough = storedThrough
        self.missing = missing
    }
}

/// A message kept aside, never stored as data (spec §5.2).
public struct DeadLetter: Hashable, Sendable {
    public var topic: String
    public var reason: DeadLetterReason
    public var message: String
    /// The device named by the topic, when the topic names one.
    public var topicDevice: DeviceID?
    /// The first `DeadLetter.excerptBytes` of the payload.
    public var payloadExcerpt: [UInt8]
    public var payloadBytes: Int

    public static let excerptBytes = 1_024
}

/// Counters a receiver keeps for /metrics.
public struct ReceiverCounters: Hashable, Sendable {
    public var messagesReceived: UInt64 = 0
    public var batchesAccepted: UInt64 = 0
    public var recordsRejected: UInt64 = 0
    public var deadLetters: [DeadLetterReason: UInt64] = [:]
    public var storesCommitted: UInt64 = 0
    public var storesFailed: UInt64 = 0
    public var droppedOverloaded: UInt64 = 0
    public var acksSent: UInt64 = 0
}

/// The backend-side sync state machine; see the theory of operation at the top of the file.
public struct ReceiverStateMachine: Sendable {
    /// What the receiver asks its driver to do.
    public enum Action: Hashable, Sendable {
        /// Insert idempotently in one transaction, then call `storeCommitted` or `storeFailed`.
        case store(StoreToken, StoreRequest)
        /// Keep this message aside (dead-letter table) and count it.
        case deadLetter(DeadLetter)
        /// Remember the device's last status (the last will is an `offline` status).
        case recordStatus(Status, topic: String)
        /// Record a command response.
        case recordResponse(device: DeviceID, CommandResponse)
        /// A seed device's value list (spec §6.3); parsing and de-duplication by `_id` is the store's.
        case storeLegacy(device: DeviceID, payload: [UInt8], topic: String)
        /// Publish this ack (QoS 1, retained) on `topic`.
        case publishAck(topic: String, payload: [UInt8], ack: Ack)
        /// A batch was not taken because too many stores are pending; the device will resend.
        case droppedOverloaded(device: DeviceID, range: SequenceRange)
    }

    public let configuration: ReceiverConfiguration
    public private(set) var counters = ReceiverCounters()

    private struct Pending: Sendable {
        var device: DeviceID
        var epoch: Epoch
        var range: SequenceRange
        var rejected: [SequenceNumber]
    }
    private var pending: [StoreToken: Pending] = [:]
    private var nextToken: UInt64 = 1

    public init(configuration: ReceiverConfiguration = ReceiverConfiguration()) {
        precondition(configuration.maxPendingStores >= 1, "maxPendingStores must be at least 1")
        precondition(configuration.maxMessageBytes >= 1024 && configuration.maxMessageBytes <= ProtocolLimits.maxMessageBytes,
                     "maxMessageBytes must be 1024…\(ProtocolLimits.maxMessageBytes)")
        self.configuration = configuration
    }

    /// Stores in progress.
    public var pendingStores: Int { pending.count }

    /// Subscription filters for the device topics (wrap in `$share/<group>/` for a shared subscription).
    public var subscriptionFilters: [String] {
        let t = configuration.topics
        var f = [t.batch.filter, t.status.filter, t.response.filter]
        if configuration.acceptLegacyValues { f.append(t.legacyValues.filter) }
        return f
    }

    // MARK: Events

    /// A message arrived from the broker.
    public mutating func messageReceived(topic: String, payload: [UInt8]) -> [Action] {
        counters.messagesReceived += 1
        let t = configuration.topics
        if let device = t.batch.device(inTopic: topic) {
            do {
                let batch = try SyncCodec.decodeBatch(payload, expectedDevice: device, maxBytes: configuration.maxMessageBytes)
                return [accept(batch, topic: topic)]
            } catch {
                return [deadLetter(topic: topic, device: device, payload: payload, error)]
            }
        }
        if let device = t.status.device(inTopic: topic) {
            do {
                return [.recordStatus(try SyncCodec.decodeStatus(payload, expectedDevice: device, maxBytes: min(configuration.maxMessageBytes, 16_384)), topic: topic)]
            } catch {
                return [deadLetter(topic: topic, device: device, payload: payload, error)]
            }
        }
        if let device = t.response.device(inTopic: topic) {
            do {
                return [.recordResponse(device: device, try SyncCodec.decodeCommandResponse(payload, maxBytes: min(configuration.maxMessageBytes, 65_536)))]
            } catch {
                return [deadLetter(topic: topic, device: device, payload: payload, error)]
            }
        }
        if configuration.acceptLegacyValues, let device = t.legacyValues.device(inTopic: topic) {
            guard payload.count <= configuration.maxMessageBytes else {
                return [deadLetter(topic: topic, device: device, payload: payload,
                                   SyncDecodingError(.oversize, "message is \(payload.count) bytes; at most \(configuration.maxMessageBytes) allowed"))]
            }
            return [.storeLegacy(device: device, payload: payload, topic: topic)]
        }
        return [deadLetter(topic: topic, device: nil, payload: payload,
                           SyncDecodingError(.unknownTopic, "topic \(String(topic.prefix(200)).debugDescription) matches no subscribed template"))]
    }

    /// The store committed the request of `token`; `outcome` was read after the commit.
    public mutating func storeCommitted(_ token: StoreToken, outcome: StoreOutcome) -> [Action] {
        guard let p = pending.removeValue(forKey: token) else {
            preconditionFailure("storeCommitted for unknown or finished \(token)")
        }
        counters.storesCommitted += 1
        counters.acksSent += 1
        let ack = Ack(device: p.device, epoch: p.epoch, through: outcome.storedThrough, stored: p.range,
                      rejected: Array(p.rejected.prefix(ProtocolLimits.maxAckListEntries)),
                      missing: Array(outcome.missing.prefix(ProtocolLimits.maxAckListEntries)))
        return [.publishAck(topic: configuration.topics.ack.topic(device: p.device), payload: SyncCodec.encode(ack), ack: ack)]
    }

    /// The store could not commit (database down, deadlock retries exhausted...). Nothing is
    /// acked; the device's resend timer brings the batch back.
    public mutating func storeFailed(_ token: StoreToken) -> [Action] {
        guard pending.removeValue(forKey: token) != nil else {
            preconditionFailure("storeFailed for unknown or finished \(token)")
        }
        counters.storesFailed += 1
        return []
    }

    // MARK: Internals

    private mutating func accept(_ batch: Batch, topic: String) -> Action {
        guard pending.count < configuration.maxPendingStores else {
            counters.droppedOverloaded += 1
            return .droppedOverloaded(device: batch.device, range: batch.range)
        }
        counters.batchesAccepted += 1
        counters.recordsRejected += UInt64(batch.rejected.count)
        let token = StoreToken(rawValue: nextToken)
        nextToken += 1
        pending[token] = Pending(device: batch.device, epoch: batch.epoch, range: batch.range, rejected: batch.rejected.map(\.sequence))
        return .store(token, StoreRequest(device: batch.device, epoch: batch.epoch, range: batch.range, records: batch.records,
                                          losses: batch.losses, rejected: batch.rejected, replayRequestID: batch.replayRequestID, topic: topic))
    }

    private mutating func deadLetter(topic: String, device: DeviceID?, payload: [UInt8], _ error: SyncDecodingError) -> Action {
        counters.deadLetters[error.reason, default: 0] += 1
        return .deadLetter(DeadLetter(topic: topic, reason: error.reason, message: error.message, topicDevice: device,
                                      payloadExcerpt: Array(payload.prefix(DeadLetter.excerptBytes)), payloadBytes: payload.count))
    }
}

/// The ack rule of spec §5.5 as a pure function, for stores to use after their commit.
public enum AckRule {
    /// The end of the contiguous prefix: starting from `checkpoint` (a value this rule gave
    /// before, or `.zero`), extend through every committed range that starts at or below the
    /// next uncovered number. `ranges` are the committed batch ranges (records, loss markers
    /// and rejected records all count) above the checkpoint, in any order.
    public static func storedThrough(checkpoint: SequenceNumber, ranges: [SequenceRange]) -> SequenceNumber {
        var through = checkpoint
        for r in ranges.sorted(by: { $0.first < $1.first }) {
            if r.first > through.next { break }
            if r.last > through { through = r.last }
        }
        return through
    }

    /// Gaps between `through` and the highest committed number, at most `limit` of them.
    public static func missing(after through: SequenceNumber, ranges: [SequenceRange], limit: Int = ProtocolLimits.maxAckListEntries) -> [SequenceRange] {
        var gaps: [SequenceRange] = []
        var covered = through
        for r in ranges.sorted(by: { $0.first < $1.first }) where r.last > covered {
            if r.first > covered.next {
                gaps.append(SequenceRange(checked: covered.next, r.first.previous))
                if gaps.count == limit { break }
            }
            covered = r.last
        }
        return gaps
    }
}
