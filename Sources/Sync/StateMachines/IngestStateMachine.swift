// IngestStateMachine: the backend side of the sync protocol (spec/protocol.md §5), sans-IO.
//
// Theory of operation. One instance runs in each ingest process; several processes share the
// devices' topics through an MQTT v5 shared subscription, so any process may get any message of
// any device, in any order, any number of times. Correctness rests on the store (§5.5): the
// machine keeps no per-device progress of its own beyond a cache of values the ack rule gave.
//
//   messageReceived ──▶ per-device queue (bounded in bytes) ──▶ .pauseReading above the mark
//        │ a device over its share / the queue over its hard cap ──▶ .dropped (unacked: resent)
//        ▼
//   group: round robin over devices (each device's share of a transaction, so no device can
//   crowd out another), each message validated (IngestItem.classify: stored or dead letter)
//        ▼
//   part 1: batches, seed values, dead letters ──▶ .write ──▶ transactionCommitted
//        ──▶ .readProgress (committed ranges above the cached checkpoint) ──▶ progressRead
//        ──▶ AckRule.storedThrough per (device, epoch); our own commit must be visible
//        ──▶ .publishAcks (only now: rule A), .compact when due, .committed (metrics)
//   part 2: statuses, command responses ──▶ .write ──▶ transactionCommitted
//
// One transaction is outstanding at a time; the next group forms while the acks go out. A
// failed transaction is classified by the shell (`StoreFailure`):
//   connection ──▶ .reconnectDatabase, back off (doubling), retry; for as long as it takes
//                  (the queue fills and reading pauses: backpressure, nothing dropped)
//   conflict   ──▶ retry with a short backoff, `conflictRetries` times, then as unknown
//   unknown    ──▶ retry `unknownErrorAttempts` times, then as refused
//   refused    ──▶ isolate: split the part in halves until the message at fault is alone;
//                  a batch is then stored with all its records rejected (kept aside with the
//                  database's reason, its range accounted for, acked: the device moves on);
//                  any other message becomes a `store-refused` dead letter; a dead letter the
//                  database refuses becomes a minimal one; if even that fails it is reported
//                  `.abandoned`. Nothing is retried for ever, nothing blocks another device.
// Every queue and cache is bounded. Nothing here traps on any input (fuzzed: scripts/fuzz-ingest).

import FieldlogCore

/// Configuration of an ingest process (spec §5.1). Defaults are documented in docs/backend.md.
public struct IngestConfiguration: Sendable, Hashable {
    public var topics: TopicTemplates = .defaults
    /// Largest payload accepted (checked before parsing).
    public var maxMessageBytes: Int = ProtocolLimits.maxMessageBytes
    /// Whether seed value lists on `topics.legacyValues` are taken.
    public var acceptLegacyValues: Bool = true
    /// Bytes queued (payloads and topics) above which the machine asks to stop reading from the
    /// broker; it asks to resume below half of it. Twice this is a hard cap: beyond it new
    /// messages are dropped unacked (what the broker delivers while reading pauses).
    public var maxQueuedBytes: Int = 32 << 20
    /// One device's share of the queue: its messages beyond it are dropped unacked (the device
    /// resends its batches), so one device cannot take the queue from the others.
    public var maxQueuedBytesPerDevice: Int = 4 << 20
    /// Most messages in one transaction.
    public var maxMessagesPerTransaction: Int = 512
    /// Most payload bytes in one transaction.
    var maxBytesPerTransaction: Int = 8 << 20
    /// Most payload bytes of one device in one transaction (at least one message is always
    /// taken): a device sending a flood gets this share of each transaction, so the others'
    /// messages wait for a short transaction, never for a long one full of the flood.
    var maxBytesPerDevicePerTransaction: Int = 1 << 20
    /// Backoff after a connection-level failure: first, doubling up to max.
    public var reconnectBackoffFirst: Duration = .milliseconds(200)
    public var reconnectBackoffMax: Duration = .seconds(5)
    /// Retries of a transaction after deadlocks / certification conflicts, before treating it as unknown.
    public var conflictRetries: Int = 10
    /// Attempts of a transaction that failed for an unknown reason, before treating it as refused.
    public var unknownErrorAttempts: Int = 3
    /// Compact a (device, epoch)'s range rows after this many batches.
    public var compactEveryBatches: Int = 256
    /// Most (device, epoch) checkpoints and known devices kept (cleared when exceeded: a cache).
    var maxCachedEpochs: Int = 100_000

    public init() {}

    /// A description of the first setting out of its limits, nil when all are fine.
    var invalidSetting: String? {
        if maxMessageBytes < 1_024 || maxMessageBytes > ProtocolLimits.maxMessageBytes { return "maxMessageBytes must be 1024…\(ProtocolLimits.maxMessageBytes)" }
        if maxQueuedBytes < 2 * maxMessageBytes { return "maxQueuedBytes must hold at least two messages (\(2 * maxMessageBytes) bytes)" }
        if maxQueuedBytesPerDevice < maxMessageBytes || maxQueuedBytesPerDevice > maxQueuedBytes { return "maxQueuedBytesPerDevice must be maxMessageBytes…maxQueuedBytes" }
        if maxMessagesPerTransaction < 1 || maxBytesPerTransaction < 1 || maxBytesPerDevicePerTransaction < 1 {
            return "maxMessagesPerTransaction, maxBytesPerTransaction and maxBytesPerDevicePerTransaction must be at least 1"
        }
        if reconnectBackoffFirst <= .zero || reconnectBackoffMax < reconnectBackoffFirst { return "reconnect backoff must satisfy 0 < first ≤ max" }
        if conflictRetries < 0 || unknownErrorAttempts < 1 || compactEveryBatches < 1 || maxCachedEpochs < 1 { return "retry counts and cache sizes out of range" }
        return nil
    }
}

/// Why a write or read failed, as the database shell classifies it.
public enum StoreFailure: Hashable, Sendable, CustomStringConvertible {
    /// The connection is gone or never came up (server down, network, node not ready).
    case connection(String)
    /// A deadlock or Galera certification conflict, or a lock wait timeout: nothing committed.
    case conflict(String)
    /// The database refused these values for good (a data or constraint error).
    case refused(String)
    /// Anything else.
    case unknown(String)

    public var description: String {
        switch self {
        case .connection(let m): return "connection: \(m)"
        case .conflict(let m): return "conflict: \(m)"
        case .refused(let m): return "refused: \(m)"
        case .unknown(let m): return "unknown: \(m)"
        }
    }
    var message: String {
        switch self { case .connection(let m), .conflict(let m), .refused(let m), .unknown(let m): return m }
    }
}

/// Identifies one `.write` and its outcome events.
public struct TransactionID: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public var description: String { "tx#\(rawValue)" }
}

/// A device's log: the unit of progress.
public struct EpochKey: Hashable, Sendable, CustomStringConvertible {
    public var device: DeviceID
    public var epoch: Epoch
    public init(device: DeviceID, epoch: Epoch) { self.device = device; self.epoch = epoch }
    public var description: String { "\(device) epoch \(epoch)" }
}

/// What one transaction writes (one database transaction: all or nothing).
public struct IngestTransaction: Hashable, Sendable {
    public let id: TransactionID
    public var batches: [StoreRequest] = []
    public var statuses: [Status] = []
    public var responses: [ResponseRecord] = []
    public var legacy: [LegacyValues] = []
    public var deadLetters: [DeadLetter] = []
    /// Devices and epochs not known to be in the store yet (INSERT IGNORE).
    public var newDevices: [DeviceID] = []
    public var newEpochs: [EpochKey] = []

    public init(id: TransactionID = TransactionID(rawValue: 0)) { self.id = id }

    /// Readings the transaction carries (what `WriteResult.readingsInserted` can be at most).
    public var recordCount: Int { batches.reduce(0) { $0 + $1.records.count } }
    public var legacyReadingCount: Int { legacy.reduce(0) { $0 + $1.readings.count } }
}

/// What a committed transaction did (from the statements' affected-row counts).
public struct WriteResult: Hashable, Sendable {
    public var readingsInserted: Int
    public var legacyInserted: Int
    public init(readingsInserted: Int, legacyInserted: Int) {
        self.readingsInserted = readingsInserted
        self.legacyInserted = legacyInserted
    }
}

/// One ack to publish (QoS 1, retained) on its device's topic.
public struct AckMessage: Hashable, Sendable {
    public var topic: String
    public var payload: [UInt8]
    public var ack: Ack
    public init(topic: String, payload: [UInt8], ack: Ack) {
        self.topic = topic
        self.payload = payload
        self.ack = ack
    }
}

/// What a committed transaction did, for metrics and logs.
public struct CommitReport: Hashable, Sendable {
    public struct Lag: Hashable, Sendable {
        public var device: DeviceID
        /// Committed numbers above the contiguous prefix.
        public var recordsAbovePrefix: UInt64
        /// Now minus the newest device time in the transaction (ms; saturating), if any.
        public var delayMilliseconds: Int64?
    }
    public var transaction: TransactionID
    public var batches = 0, records = 0, readingsInserted = 0, rejectedRecords = 0
    public var legacyReadings = 0, legacyInserted = 0
    public var statuses = 0, responses = 0
    public var deadLetters: [DeadLetter] = []
    public var lags: [Lag] = []
    var acksPublished = 0
    /// Messages in the transaction, by what they were.
    public var received: [String: Int] = [:]
}

/// Why a message was not taken.
public enum DropReason: String, Hashable, Sendable {
    /// The device already has `maxQueuedBytesPerDevice` queued.
    case deviceShare = "device-share"
    /// The whole queue is at its hard cap (twice `maxQueuedBytes`).
    case queueFull = "queue-full"
    /// Sharded: the device is being moved to another shard (docs/sharding.md).
    case deviceMoving = "device-moving"
    /// Sharded: the device has no override and its bucket is being reassigned.
    case bucketFrozen = "bucket-frozen"
    /// Sharded: the map places the device on a shard not written here (retired, or added
    /// since the process started).
    case shardUnavailable = "shard-unavailable"
    /// Sharded: held seed values beyond the hold's bound.
    case holdFull = "hold-full"
}

/// The backend's ingest state machine; see the theory of operation at the top of the file.
public struct IngestStateMachine<Instant: InstantProtocol>: Sendable where Instant.Duration == Duration {
    public enum Action: Hashable, Sendable {
        /// Stop reading from the broker (backpressure); `.resumeReading` ends it.
        case pauseReading
        case resumeReading
        /// Write this in ONE database transaction; then report `transactionCommitted` or `transactionFailed`.
        case write(IngestTransaction)
        /// Read the committed ranges of these logs above each checkpoint (after the commit of the
        /// transaction); then report `progressRead` (in the same order) or `progressReadFailed`.
        case readProgress(TransactionID, [ProgressQuery])
        /// Publish these acks (QoS 1, retained), in order per topic; topics may go in parallel.
        case publishAcks([AckMessage])
        /// Housekeeping: replace the range rows of the log inside 1…through by one (failures are harmless).
        case compact(EpochKey, through: SequenceNumber)
        /// Drop the database connection and use the next address for the next attempt.
        case reconnectDatabase
        /// Call `timerFired(now:)` at this instant (a backoff); replaces any earlier timer.
        case armTimer(at: Instant)
        /// A message was not taken (not stored, not acked): its device resends batches.
        case dropped(topic: String, device: DeviceID?, bytes: Int, reason: DropReason)
        /// A transaction committed (and its acks, if any, went out in `.publishAcks`).
        case committed(CommitReport)
        /// A transaction failed and is tried again after `delay`.
        case retrying(TransactionID, StoreFailure, attempt: Int, delay: Duration)
        /// A transaction the database refused is split to find the message at fault.
        case isolating(TransactionID, StoreFailure, messages: Int)
        /// The progress read did not show our own commit (a lagging read): no ack for this log
        /// now; the device's resend is absorbed and acked.
        case notAcked(EpochKey, reason: String)
        /// Even a minimal dead letter was refused: the message is reported here and nothing else.
        case abandoned(topic: String, device: DeviceID?, reason: String)
    }

    /// One log's progress query: committed ranges ending above `above`.
    public struct ProgressQuery: Hashable, Sendable {
        public var key: EpochKey
        public var above: SequenceNumber
    }

    public let configuration: IngestConfiguration

    // Queue: one FIFO per device (nil: messages whose topic names none), served round robin.
    // A message is validated when it arrives (so decoding overlaps the transaction in flight);
    // the queue counts its payload's bytes (`Work.cost`).
    private struct Bucket: Sendable {
        var items: [Work] = []
        var head = 0
        var bytes = 0
        var count: Int { items.count - head }
        mutating func pop() -> Work {
            let q = items[head]
            items[head] = Work(item: .deadLetter(DeadLetter(topic: "", reason: .unknownTopic, message: "", topicDevice: nil, payload: [])),
                               topic: "", payloadHead: [], payloadBytes: 0, cost: 0)
            head += 1
            if head > 64 && head * 2 > items.count { items.removeFirst(head); head = 0 }
            return q
        }
    }
    private var buckets: [DeviceID?: Bucket] = [:]
    private var rotation: [DeviceID?] = []
    private var cursor = 0
    public private(set) var queuedBytes = 0
    public private(set) var queuedMessages = 0
    public private(set) var readingPaused = false

    // Work: one part outstanding; the rest wait here (isolation pushes halves to the front).
    fileprivate enum Stage: Hashable, Sendable { case original, recordsRejected, deadLettered, minimal }
    fileprivate struct Work: Hashable, Sendable {
        var item: IngestItem
        var topic: String
        var payloadHead: [UInt8]
        var payloadBytes: Int
        /// What it counts against the queues' bounds, fixed when it arrived (kept when a shard
        /// hands it back and another machine queues it again).
        var cost: Int
        var stage: Stage = .original
    }
    private struct Part: Sendable {
        var work: [Work]
        var attempts = 0
        var conflicts = 0
        var backoff: Duration
        var isolated = false
    }
    private enum Phase: Sendable {
        case idle
        case writing(Part, IngestTransaction)
        case waitingToWrite(Part, until: Instant)
        case reading(Part, IngestTransaction, WriteResult, [ProgressQuery])
        case waitingToRead(Part, IngestTransaction, WriteResult, [ProgressQuery], until: Instant)
    }
    private var phase: Phase = .idle
    private var parts: [Part] = []
    private var nextTransaction: UInt64 = 1

    // Caches (bounded; a miss only costs a longer read or an INSERT IGNORE).
    private var checkpoints: [EpochKey: SequenceNumber] = [:]
    /// The transaction in hand's logs whose prefix needed no read (see `transactionCommitted`).
    private var localOutcomes: [EpochKey: SequenceNumber] = [:]
    private var batchesSinceCompaction: [EpochKey: Int] = [:]
    private var knownDevices: Set<DeviceID> = []
    private var knownEpochs: Set<EpochKey> = []

    public init(configuration: IngestConfiguration = IngestConfiguration()) {
        precondition(configuration.invalidSetting == nil, configuration.invalidSetting ?? "")
        self.configuration = configuration
    }

    /// Subscription filters for the device topics (wrap in `$share/<group>/` for a shared subscription).
    public var subscriptionFilters: [String] {
        let t = configuration.topics
        var f = [t.batch.filter, t.status.filter, t.response.filter]
        if configuration.acceptLegacyValues { f.append(t.legacyValues.filter) }
        return f
    }

    /// Whether nothing is queued or in progress.
    public var isIdle: Bool {
        if case .idle = phase { return parts.isEmpty && queuedMessages == 0 }
        return false
    }

    // MARK: Events

    /// A message arrived from the broker, with the MQTT content type its publisher set, if any.
    public mutating func messageReceived(topic: String, payload: [UInt8], contentType: String? = nil, now: Instant) -> [Action] {
        let device = IngestItem.device(ofTopic: topic, configuration: configuration)
        let cost = payload.count + topic.utf8.count + (contentType?.utf8.count ?? 0) + 64
        let bucketBytes = buckets[device]?.bytes ?? 0
        if bucketBytes > 0 && bucketBytes + cost > configuration.maxQueuedBytesPerDevice {
            return [.dropped(topic: topic, device: device, bytes: payload.count, reason: .deviceShare)]
        }
        if queuedBytes > 0 && queuedBytes + cost > 2 * configuration.maxQueuedBytes {
            return [.dropped(topic: topic, device: device, bytes: payload.count, reason: .queueFull)]
        }
        let item = IngestItem.classify(topic: topic, payload: payload, contentType: contentType, configuration: configuration)
        enqueue(Work(item: item, topic: topic, payloadHead: Array(payload.prefix(DeadLetter.excerptBytes)), payloadBytes: payload.count, cost: cost),
                device: device)
        return pauseIfOverBound() + startNext(now: now)
    }

    /// Behind the device's queued messages; counted against the bounds.
    private mutating func enqueue(_ work: Work, device: DeviceID?) {
        if buckets[device] == nil { buckets[device] = Bucket(); rotation.append(device) }
        buckets[device]!.items.append(work)
        buckets[device]!.bytes += work.cost
        queuedBytes += work.cost
        queuedMessages += 1
    }

    /// Reading from the broker pauses once the queues hold more than their bound.
    private mutating func pauseIfOverBound() -> [Action] {
        guard !readingPaused && queuedBytes > configuration.maxQueuedBytes else { return [] }
        readingPaused = true
        return [.pauseReading]
    }

    /// The transaction committed; `result` holds its affected-row counts.
    /// `nowUnixMilliseconds` (wall clock) is only for the device-delay figure of the report.
    public mutating func transactionCommitted(_ id: TransactionID, result: WriteResult, nowUnixMilliseconds: Int64? = nil, now: Instant) -> [Action] {
        guard case .writing(let part, let tx) = phase, tx.id == id else { return [] }
        knownDevices.formUnion(tx.newDevices)
        knownEpochs.formUnion(tx.newEpochs)
        for l in tx.legacy { knownDevices.insert(l.device) }
        trimCaches()
        if tx.batches.isEmpty {
            phase = .idle
            var actions: [Action] = [.committed(report(tx, result: result, lags: [], acks: 0))]
            actions += startNext(now: now)
            return actions
        }
        // A log whose batches here continue its cached prefix without a hole needs no read: our
        // own commit's rows are committed, so the prefix reaches at least their end (rule B; a
        // concurrent commit beyond it is picked up by a later ack). Only the others are read.
        let highest = highestPerKey(tx)
        var local: [EpochKey: SequenceNumber] = [:]
        var queries: [ProgressQuery] = []
        for key in progressKeys(tx) {
            let checkpoint = checkpoints[key] ?? .zero
            let own = tx.batches.filter { $0.device == key.device && $0.epoch == key.epoch }.map(\.range)
            let through = AckRule.storedThrough(checkpoint: checkpoint, ranges: own)
            if through >= highest[key] ?? .zero { local[key] = through } else { queries.append(ProgressQuery(key: key, above: checkpoint)) }
        }
        localOutcomes = local
        if queries.isEmpty {
            return complete(tx, result: result, read: [], nowUnixMilliseconds: nowUnixMilliseconds, now: now)
        }
        phase = .reading(part, tx, result, queries)
        return [.readProgress(id, queries)]
    }

    /// The transaction did not commit.
    public mutating func transactionFailed(_ id: TransactionID, failure: StoreFailure, now: Instant) -> [Action] {
        guard case .writing(var part, let tx) = phase, tx.id == id else { return [] }
        part.attempts += 1
        switch failure {
        case .connection:
            return retry(id, part, failure, delay: part.backoff, reconnect: true, growBackoff: true, now: now)
        case .conflict where part.conflicts < configuration.conflictRetries:
            part.conflicts += 1
            // 5 ms, 10 ms, … up to 640 ms (the shell adds jitter so two losers do not collide again).
            return retry(id, part, failure, delay: .milliseconds(5 << min(part.conflicts - 1, 7)), reconnect: false, growBackoff: false, now: now)
        case .conflict, .unknown:
            let unknownAttempts = part.attempts - part.conflicts
            if unknownAttempts < configuration.unknownErrorAttempts {
                return retry(id, part, failure, delay: part.backoff, reconnect: true, growBackoff: true, now: now)
            }
            return isolate(id, part, failure, now: now)
        case .refused:
            return isolate(id, part, failure, now: now)
        }
    }

    /// The committed ranges for the queries of `.readProgress`, in the same order.
    public mutating func progressRead(_ id: TransactionID, ranges: [[SequenceRange]], nowUnixMilliseconds: Int64, now: Instant) -> [Action] {
        guard case .reading(_, let tx, let result, let queries) = phase, tx.id == id else { return [] }
        let read = queries.enumerated().map { (k, q) in (q, k < ranges.count ? ranges[k] : []) }
        return complete(tx, result: result, read: read, nowUnixMilliseconds: nowUnixMilliseconds, now: now)
    }

    /// After the commit (and the read, for the logs that needed one): the acks, housekeeping
    /// and the report; then the next transaction.
    private mutating func complete(_ tx: IngestTransaction, result: WriteResult, read: [(ProgressQuery, [SequenceRange])],
                                   nowUnixMilliseconds: Int64?, now: Instant) -> [Action] {
        var actions: [Action] = []
        var outcomes: [EpochKey: (through: SequenceNumber, missing: [SequenceRange])] = [:]
        var lags: [CommitReport.Lag] = []
        let highest = highestPerKey(tx)
        let newest = newestDeviceTime(tx)
        func delay(_ key: EpochKey) -> Int64? {
            guard let nowUnixMilliseconds, let ms = newest[key] else { return nil }
            let (d, overflow) = nowUnixMilliseconds.subtractingReportingOverflow(ms)
            return overflow ? nil : d
        }
        for (key, through) in localOutcomes {
            checkpoints[key] = max(checkpoints[key] ?? .zero, through)
            outcomes[key] = (through, [])
            lags.append(CommitReport.Lag(device: key.device, recordsAbovePrefix: 0, delayMilliseconds: delay(key)))
        }
        localOutcomes = [:]
        for (q, ranges) in read {
            let checkpoint = q.above
            let through = AckRule.storedThrough(checkpoint: checkpoint, ranges: ranges)
            let top = highest[q.key] ?? .zero
            // Our own commit must be in what we read. If it is not (a Galera node read without
            // wsrep_sync_wait, say), ack nothing for this log now: the device resends.
            guard through >= top || ranges.contains(where: { $0.contains(top) }) else {
                actions.append(.notAcked(q.key, reason: "the progress read does not show the committed batch ending at \(top)"))
                continue
            }
            checkpoints[q.key] = max(checkpoints[q.key] ?? .zero, through)
            outcomes[q.key] = (through, AckRule.missing(after: through, ranges: ranges))
            let highestCommitted = max(through, ranges.map(\.last).max() ?? .zero)
            lags.append(CommitReport.Lag(device: q.key.device, recordsAbovePrefix: highestCommitted.rawValue - through.rawValue,
                                         delayMilliseconds: delay(q.key)))
        }
        var acks: [AckMessage] = []
        // One ack per log for the batches `through` already covers (§5.5 rule C): the one of the
        // highest such batch says all the others say. A batch above `through`, or with rejected
        // numbers to report, keeps its own.
        var coveringBatch: [EpochKey: SequenceNumber] = [:]
        for b in tx.batches where b.rejected.isEmpty {
            let key = EpochKey(device: b.device, epoch: b.epoch)
            guard let outcome = outcomes[key], b.range.last <= outcome.through else { continue }
            coveringBatch[key] = max(coveringBatch[key] ?? .zero, b.range.last)
        }
        for b in tx.batches {
            let key = EpochKey(device: b.device, epoch: b.epoch)
            guard let outcome = outcomes[key] else { continue }
            // Below the covering batch (which is ≤ `through`), and nothing rejected to report.
            if b.rejected.isEmpty, let covering = coveringBatch[key], b.range.last < covering { continue }
            let ack = Ack(device: b.device, epoch: b.epoch, through: outcome.through, stored: b.range,
                          rejected: Array(b.rejected.prefix(ProtocolLimits.maxAckListEntries).map(\.sequence)),
                          missing: Array(outcome.missing.prefix(ProtocolLimits.maxAckListEntries)))
            acks.append(AckMessage(topic: configuration.topics.ack.topic(device: b.device), payload: SyncCodec.encode(ack), ack: ack))
        }
        if !acks.isEmpty { actions.append(.publishAcks(acks)) }
        for b in tx.batches {
            let key = EpochKey(device: b.device, epoch: b.epoch)
            batchesSinceCompaction[key, default: 0] += 1
        }
        for key in progressKeys(tx) {
            guard let n = batchesSinceCompaction[key], n >= configuration.compactEveryBatches, let t = checkpoints[key], t > .zero else { continue }
            batchesSinceCompaction[key] = 0
            actions.append(.compact(key, through: t))
        }
        actions.append(.committed(report(tx, result: result, lags: lags, acks: acks.count)))
        phase = .idle
        actions += startNext(now: now)
        return actions
    }

    /// The progress read failed. The data is committed; only the acks wait.
    public mutating func progressReadFailed(_ id: TransactionID, failure: StoreFailure, now: Instant) -> [Action] {
        guard case .reading(var part, let tx, let result, let queries) = phase, tx.id == id else { return [] }
        part.attempts += 1
        if case .connection = failure {
            let delay = part.backoff
            part.backoff = min(part.backoff * 2, configuration.reconnectBackoffMax)
            let until = now.advanced(by: delay)
            phase = .waitingToRead(part, tx, result, queries, until: until)
            return [.reconnectDatabase, .retrying(tx.id, failure, attempt: part.attempts, delay: delay), .armTimer(at: until)]
        }
        if part.attempts < configuration.unknownErrorAttempts + configuration.conflictRetries {
            let until = now.advanced(by: .milliseconds(50))
            phase = .waitingToRead(part, tx, result, queries, until: until)
            return [.retrying(tx.id, failure, attempt: part.attempts, delay: .milliseconds(50)), .armTimer(at: until)]
        }
        // Give up on the acks that needed the read: the devices resend, the duplicates are
        // absorbed and acked then. (Logs that needed no read are still acked.)
        let actions: [Action] = queries.map { .notAcked($0.key, reason: "progress read failed: \(failure)") }
        return actions + complete(tx, result: result, read: [], nowUnixMilliseconds: nil, now: now)
    }

    /// A timer armed with `.armTimer` fired (early or stale calls are ignored).
    public mutating func timerFired(now: Instant) -> [Action] {
        switch phase {
        case .waitingToWrite(let part, let until) where until <= now:
            return write(part)
        case .waitingToRead(let part, let tx, let result, let queries, let until) where until <= now:
            phase = .reading(part, tx, result, queries)
            return [.readProgress(tx.id, queries)]
        default:
            return []
        }
    }

    // MARK: Internals

    private mutating func retry(_ id: TransactionID, _ part: Part, _ failure: StoreFailure, delay: Duration, reconnect: Bool, growBackoff: Bool, now: Instant) -> [Action] {
        var part = part
        if growBackoff { part.backoff = min(part.backoff * 2, configuration.reconnectBackoffMax) }
        let until = now.advanced(by: delay)
        phase = .waitingToWrite(part, until: until)
        var actions: [Action] = reconnect ? [.reconnectDatabase] : []
        actions += [.retrying(id, failure, attempt: part.attempts, delay: delay), .armTimer(at: until)]
        return actions
    }

    /// The database refused `part` (or kept failing): split it until the message at fault is
    /// alone, then store that message in a weaker form (see the theory of operation).
    private mutating func isolate(_ id: TransactionID, _ part: Part, _ failure: StoreFailure, now: Instant) -> [Action] {
        var actions: [Action] = []
        if part.work.count > 1 {
            let mid = part.work.count / 2
            actions.append(.isolating(id, failure, messages: part.work.count))
            parts.insert(contentsOf: [Part(work: Array(part.work[..<mid]), backoff: configuration.reconnectBackoffFirst, isolated: true),
                                      Part(work: Array(part.work[mid...]), backoff: configuration.reconnectBackoffFirst, isolated: true)], at: 0)
        } else if let w = part.work.first {
            if let weaker = weaken(w, failure) {
                parts.insert(Part(work: [weaker], backoff: configuration.reconnectBackoffFirst, isolated: true), at: 0)
            } else {
                actions.append(.abandoned(topic: w.topic, device: w.item.device, reason: failure.description))
            }
        }
        phase = .idle
        actions += startNext(now: now)
        return actions
    }

    private func weaken(_ w: Work, _ failure: StoreFailure) -> Work? {
        let reason = "the database refused it: \(failure.message)"
        var next = w
        switch (w.stage, w.item) {
        case (.original, .batch(let b)) where !b.records.isEmpty || b.losses.contains(where: { !$0.detail.isEmpty }):
            next.item = .batch(b.rejectingAllRecords(reason: TextLimit.clip(reason, maxBytes: ProtocolLimits.maxTextBytes)))
            next.stage = .recordsRejected
        case (.original, _), (.recordsRejected, _):
            var key: [UInt8]?
            // Every process refuses the same seed message: the same key (topic, size and head) in each.
            if case .legacy = w.item { key = DeadLetter.dedupKey(topic: "\(w.topic) \(w.payloadBytes)", payload: w.payloadHead) }
            if case .deadLetter(let d) = w.item { key = d.dedupKey }
            next.item = .deadLetter(DeadLetter(topic: w.topic, reason: .storeRefused, message: reason, topicDevice: w.item.device,
                                               payload: w.payloadHead, payloadBytes: w.payloadBytes, dedupKey: key))
            next.stage = .deadLettered
        case (.deadLettered, _):
            // A minimal dead letter: nothing of the message's text, only what we wrote ourselves.
            var key: [UInt8]?
            if case .deadLetter(let d) = w.item { key = d.dedupKey }
            next.item = .deadLetter(DeadLetter(topic: "", reason: .storeRefused, message: "a dead letter for this device was refused too",
                                               topicDevice: w.item.device, payload: [], payloadBytes: w.payloadBytes, dedupKey: key))
            next.stage = .minimal
        case (.minimal, _):
            return nil
        }
        return next
    }

    private mutating func startNext(now: Instant) -> [Action] {
        guard case .idle = phase else { return [] }
        var actions: [Action] = []
        if parts.isEmpty { actions += formGroup() }
        guard !parts.isEmpty else { return actions }
        let part = parts.removeFirst()
        return actions + write(part)
    }

    private mutating func write(_ part: Part) -> [Action] {
        let id = TransactionID(rawValue: nextTransaction)
        nextTransaction += 1
        var tx = IngestTransaction(id: id)
        var seenDevices: Set<DeviceID> = [], seenEpochs: Set<EpochKey> = []
        func note(_ device: DeviceID) {
            if !knownDevices.contains(device), seenDevices.insert(device).inserted { tx.newDevices.append(device) }
        }
        for w in part.work {
            switch w.item {
            case .batch(let b):
                tx.batches.append(b)
                note(b.device)
                let k = EpochKey(device: b.device, epoch: b.epoch)
                if !knownEpochs.contains(k), seenEpochs.insert(k).inserted { tx.newEpochs.append(k) }
            case .status(let s): tx.statuses.append(s)
            case .response(let r): tx.responses.append(r)
            case .legacy(let l): tx.legacy.append(l)
            case .deadLetter(let d): tx.deadLetters.append(d)
            }
        }
        phase = .writing(part, tx)
        return [.write(tx)]
    }

    /// Takes the next group from the queues (round robin over devices) and splits it into parts.
    private mutating func formGroup() -> [Action] {
        var taken: [Work] = []
        var bytes = 0
        var perDevice: [DeviceID?: Int] = [:]
        var skipped = 0  // devices in a row that have had their share of this transaction
        while taken.count < configuration.maxMessagesPerTransaction, bytes < configuration.maxBytesPerTransaction,
              !rotation.isEmpty, skipped < rotation.count {
            if cursor >= rotation.count { cursor = 0 }
            let key = rotation[cursor]
            if (perDevice[key] ?? 0) >= configuration.maxBytesPerDevicePerTransaction {
                skipped += 1
                cursor += 1
                continue
            }
            skipped = 0
            let w = buckets[key]!.pop()
            perDevice[key, default: 0] += w.payloadBytes
            buckets[key]!.bytes -= w.cost
            queuedBytes -= w.cost
            queuedMessages -= 1
            taken.append(w)
            bytes += w.payloadBytes
            if buckets[key]!.count == 0 {
                buckets[key] = nil
                rotation.remove(at: cursor)
            } else {
                cursor += 1
            }
        }
        var actions: [Action] = []
        if readingPaused && queuedBytes <= configuration.maxQueuedBytes / 2 {
            readingPaused = false
            actions.append(.resumeReading)
        }
        guard !taken.isEmpty else { return actions }
        var data: [Work] = [], state: [Work] = []
        for w in taken {
            switch w.item {
            case .batch, .legacy, .deadLetter: data.append(w)
            case .status, .response: state.append(w)
            }
        }
        // Batches, seed values and dead letters only insert rows no other transaction writes;
        // statuses update the device's row (a hot row on Galera): a conflict there must not
        // roll back (and delay) the readings, so they commit on their own.
        if !data.isEmpty { parts.append(Part(work: data, backoff: configuration.reconnectBackoffFirst)) }
        if !state.isEmpty { parts.append(Part(work: state, backoff: configuration.reconnectBackoffFirst)) }
        return actions
    }

    private func progressKeys(_ tx: IngestTransaction) -> [EpochKey] {
        var seen: Set<EpochKey> = [], order: [EpochKey] = []
        for b in tx.batches {
            let k = EpochKey(device: b.device, epoch: b.epoch)
            if seen.insert(k).inserted { order.append(k) }
        }
        return order
    }

    private func highestPerKey(_ tx: IngestTransaction) -> [EpochKey: SequenceNumber] {
        var h: [EpochKey: SequenceNumber] = [:]
        for b in tx.batches {
            let k = EpochKey(device: b.device, epoch: b.epoch)
            h[k] = max(h[k] ?? .zero, b.range.last)
        }
        return h
    }

    private func newestDeviceTime(_ tx: IngestTransaction) -> [EpochKey: Int64] {
        var n: [EpochKey: Int64] = [:]
        for b in tx.batches {
            guard let ms = b.records.map(\.timestamp.unixMilliseconds).max() else { continue }
            let k = EpochKey(device: b.device, epoch: b.epoch)
            n[k] = max(n[k] ?? .min, ms)
        }
        return n
    }

    private func report(_ tx: IngestTransaction, result: WriteResult, lags: [CommitReport.Lag], acks: Int) -> CommitReport {
        var r = CommitReport(transaction: tx.id)
        r.batches = tx.batches.count
        r.records = tx.recordCount
        r.readingsInserted = result.readingsInserted
        r.rejectedRecords = tx.batches.reduce(0) { $0 + $1.rejected.count }
        r.legacyReadings = tx.legacyReadingCount
        r.legacyInserted = result.legacyInserted
        r.statuses = tx.statuses.count
        r.responses = tx.responses.count
        r.deadLetters = tx.deadLetters
        r.lags = lags
        r.acksPublished = acks
        if !tx.batches.isEmpty { r.received["batch"] = tx.batches.count }
        if !tx.statuses.isEmpty { r.received["status"] = tx.statuses.count }
        if !tx.responses.isEmpty { r.received["response"] = tx.responses.count }
        if !tx.legacy.isEmpty { r.received["legacy"] = tx.legacy.count }
        if !tx.deadLetters.isEmpty { r.received["invalid"] = tx.deadLetters.count }
        return r
    }

    private mutating func trimCaches() {
        let cap = configuration.maxCachedEpochs
        if checkpoints.count > cap { checkpoints.removeAll(keepingCapacity: false) }
        if batchesSinceCompaction.count > cap { batchesSinceCompaction.removeAll(keepingCapacity: false) }
        if knownEpochs.count > cap { knownEpochs.removeAll(keepingCapacity: false) }
        if knownDevices.count > cap { knownDevices.removeAll(keepingCapacity: false) }
    }
}

// MARK: Sharding (docs/sharding.md, "How ingest routes")

extension IngestStateMachine {
    /// A message taken back from a transaction the shard fenced off (FL001), to be routed again.
    /// Opaque: only another machine's `requeue` takes it.
    public struct Released: Hashable, Sendable {
        fileprivate let work: Work
        fileprivate init(_ work: Work) { self.work = work }
        /// The device it belongs to (nil: its topic names none).
        public var device: DeviceID? { work.item.device }
        public var topic: String { work.topic }
        public var payloadBytes: Int { work.payloadBytes }
        /// A seed value list (or a seed message's dead letter): never resent, so never dropped.
        public var isSeed: Bool {
            switch work.item {
            case .legacy: return true
            case .deadLetter(let d): return d.dedupKey != nil
            case .batch, .status, .response: return false
            }
        }
    }

    /// The shard refused the transaction because its map is newer than the one its messages
    /// were routed with (FL001, `fl_fence`): nothing of it committed. Its messages, and those of
    /// the parts waiting behind it (routed with the same map), are handed back, in order, for
    /// the caller to route again with the reloaded map; that is not a failure of the messages
    /// (no retry count, no isolation). The caller reloads the map before it reports this, so
    /// the next transaction carries the new version.
    public mutating func transactionFenced(_ id: TransactionID, now: Instant) -> (released: [Released], actions: [Action]) {
        guard case .writing(let part, let tx) = phase, tx.id == id else { return ([], []) }
        var released = part.work.map(Released.init)
        for p in parts { released += p.work.map(Released.init) }
        parts = []
        phase = .idle
        return (released, startNext(now: now))
    }

    /// The caller's map changed: every message taken but not in a transaction in flight (the
    /// queues, the parts waiting, a part waiting to be retried) was routed with an older map and
    /// is handed back, in order, to be routed again. The transaction in flight, if any, keeps
    /// the older version it was fenced with (the shard refuses it if its map moved on). After
    /// this, every message in the machine was routed with the new map, so the caller may fence
    /// the next transactions with the new version.
    public mutating func releaseAll(now: Instant) -> (released: [Released], actions: [Action]) {
        var released: [Released] = []
        if case .waitingToWrite(let part, _) = phase {
            released += part.work.map(Released.init)
            phase = .idle
        }
        for p in parts { released += p.work.map(Released.init) }
        parts = []
        for device in rotation {
            guard var b = buckets[device] else { continue }
            while b.count > 0 { released.append(Released(b.pop())) }
        }
        buckets = [:]
        rotation = []
        cursor = 0
        queuedBytes = 0
        queuedMessages = 0
        var actions: [Action] = []
        if readingPaused {
            readingPaused = false
            actions.append(.resumeReading)
        }
        return (released, actions + startNext(now: now))
    }

    /// Messages another shard's machine released (`transactionFenced`), routed here: queued as if
    /// just received, behind the device's queued messages. They are not dropped for the queue's
    /// bounds (they were taken once already; what is released is bounded by the other queue).
    public mutating func requeue(_ released: [Released], now: Instant) -> [Action] {
        for r in released { enqueue(r.work, device: r.device) }
        return pauseIfOverBound() + startNext(now: now)
    }
}
