// SenderStateMachine: the device side of the sync protocol (spec/protocol.md §4).
//
// Theory of operation. The device's log holds records 1...head of one epoch; `acked` is the
// durable pointer through which the backend has confirmed every record (stored, declared
// lost, or rejected and kept aside). The sender keeps a window of at most
// `windowBatches` batches in flight, each a contiguous run of the log, built from records
// the driver loads on request (`.loadRecords`). Each in-flight batch keeps its encoded bytes,
// so a resend needs no reload. A batch leaves the window when an ack's contiguous
// `through` covers it; an ack's `stored` range (a selective ack) marks one batch as stored
// so it is not resent, while `through` may still lag (several receivers commit
// concurrently and each computes `through` from what it can see). Resends are selective:
// on its own timer (exponential backoff per batch) a batch that is not selectively acked is
// published again. The oldest normal batch is the *probe*: it is resent when due even when
// selectively acked (its ack makes a receiver recompute a lagging `through`), and its
// backoff is capped low (`probeDelayMax`), so a device whose backend was down notices within
// seconds that it is back. Other selectively acked batches need no deadline. Backoff resets:
// on reconnect every batch not yet selectively acked is published at once (the broker session
// may have lost it) with the initial delay, and any ack progress (a `through` that advances,
// or a batch newly marked stored) brings every deadline back to at most the initial delay
// after its last publish: the backend answers again, so what it has not confirmed is
// probably lost. Acks are monotone: an older one is ignored, one for another epoch is
// ignored, one beyond `head` is reported as an anomaly and ignored. Advancing `acked`
// emits `.persistAcked`; persisting is allowed to lag (after a crash the sender restarts
// from the persisted pointer and resends, and the backend absorbs the duplicates).
//
// The machine has no clock: every event that needs time takes `now`, and the timer is an
// action (`.armTimer(at:)` replaces any earlier deadline, `.cancelTimer` removes it).

import FieldlogCore

/// Configuration of the sender (spec §4.1). Defaults are the protocol's recommendations.
public struct SenderConfiguration: Sendable, Hashable {
    /// Batches in flight at once (not yet covered by an ack). Default 4.
    public var windowBatches: Int = 4
    /// Records plus loss markers per batch. Default 500, at most `ProtocolLimits.maxRecordsPerBatch`.
    public var maxRecordsPerBatch: Int = 500
    /// Encoded size of one batch. Default 64 KiB, within 32 KiB…`ProtocolLimits.maxMessageBytes`
    /// (32 KiB fits the largest record the limits of `SensorValues` allow).
    public var maxBatchBytes: Int = 65_536
    /// First resend delay of a batch; doubles on every resend up to `resendDelayMax`, and
    /// comes back to this value on reconnect and on any ack progress.
    public var resendDelayInitial: Duration = .seconds(5)
    public var resendDelayMax: Duration = .seconds(300)
    /// How batches are encoded (spec §3.7). Default JSON. Batches are cut by their JSON size
    /// either way, so a compact batch always fits `maxBatchBytes` (or is sent as JSON).
    public var encoding: BatchEncoding = .json
    /// Largest resend delay of the probe, the oldest normal batch in the window (at least
    /// `resendDelayInitial` is used). It bounds how long a device keeps quiet after its
    /// backend came back; one batch per this delay is what a long backend outage costs.
    public var probeDelayMax: Duration = .seconds(4)

    public init() {}

    func validated() -> SenderConfiguration {
        precondition(windowBatches >= 1 && windowBatches <= 64, "windowBatches must be 1…64, got \(windowBatches)")
        precondition(maxRecordsPerBatch >= 1 && maxRecordsPerBatch <= ProtocolLimits.maxRecordsPerBatch,
                     "maxRecordsPerBatch must be 1…\(ProtocolLimits.maxRecordsPerBatch), got \(maxRecordsPerBatch)")
        precondition(maxBatchBytes >= 32_768 && maxBatchBytes <= ProtocolLimits.maxMessageBytes,
                     "maxBatchBytes must be 32768…\(ProtocolLimits.maxMessageBytes), got \(maxBatchBytes)")
        precondition(resendDelayInitial > .zero && resendDelayMax >= resendDelayInitial, "resend delays must satisfy 0 < initial ≤ max")
        precondition(probeDelayMax > .zero, "probeDelayMax must be positive")
        return self
    }
}

/// A batch ready to publish (QoS 1, not retained, on the device's batch topic).
public struct OutgoingBatch: Hashable, Sendable {
    public var batch: Batch
    /// `batch` in `encoding`, at most `SenderConfiguration.maxBatchBytes`.
    public var payload: [UInt8]
    /// How many times this batch was published before (0 for the first time).
    public var resendCount: Int
    /// The encoding of `payload` (publish it with `encoding.contentType`).
    public var encoding: BatchEncoding = .json
}

/// The device-side sync state machine; see the theory of operation at the top of the file.
public struct SenderStateMachine<Instant: InstantProtocol>: Sendable where Instant.Duration == Duration {
    /// What the sender asks its driver to do.
    public enum Action: Hashable, Sendable {
        /// Read from the log: records and loss markers of `from...through`, at most `limit`
        /// items, and answer with `recordsLoaded`.
        case loadRecords(from: SequenceNumber, through: SequenceNumber, limit: Int)
        /// Publish this batch (QoS 1) on the device's batch topic.
        case publish(OutgoingBatch)
        /// Make the log durably remember that everything through `through` is acknowledged
        /// (it may then trim those records, subject to its retention policy).
        case persistAcked(through: SequenceNumber)
        /// Call `timerFired(now:)` at `at` (replaces any earlier deadline).
        case armTimer(at: Instant)
        /// No timer is needed any more.
        case cancelTimer
        /// A `replay` request is fully answered: reply to the command.
        case replayFinished(requestID: String, resent: SequenceRange?, notRetained: [SequenceRange])
        /// A peer broke the protocol (an ack beyond head, for another device...). Log it; nothing changed.
        case reportAnomaly(String)
    }

    public let device: DeviceID
    public let epoch: Epoch
    public let configuration: SenderConfiguration

    /// Highest durably appended sequence number.
    public private(set) var head: SequenceNumber
    /// Everything through here is acknowledged by the backend.
    public private(set) var acked: SequenceNumber
    /// Lowest sequence number not yet put in a normal batch.
    private(set) var nextToSend: SequenceNumber
    public private(set) var isConnected = false

    struct InFlight: Sendable {
        var outgoing: OutgoingBatch
        var range: SequenceRange { outgoing.batch.range }
        var isReplay: Bool { outgoing.batch.replayRequestID != nil }
        var selectivelyAcked = false
        var published = false
        /// When it was last published.
        var publishedAt: Instant?
        /// Resends since the last reconnect or ack progress: the backoff exponent.
        var backoffLevel = 0
        /// When to resend it; nil while disconnected, before the first publish, and for a
        /// selectively acked batch that is not the probe.
        var due: Instant?
    }

    /// Ordered: normal batches by range, then replay batches in the order built.
    private(set) var inFlight: [InFlight] = []

    enum PendingLoad: Sendable, Equatable {
        case normal(from: SequenceNumber)
        case replay(from: SequenceNumber)
    }
    private var pendingLoad: PendingLoad?
    /// A load whose answer must be dropped (an ack moved past it).
    private var pendingLoadIsStale = false

    struct Replay: Sendable {
        var requestID: String
        var range: SequenceRange
        var next: SequenceNumber
        var notRetained: [SequenceRange] = []
    }
    private var replays: [Replay] = []
    /// Most replays queued at once; more are refused by `replayRequested`.
    public static var maxQueuedReplays: Int { 16 }

    private var timerDeadline: Instant?

    /// A sender for the log `(device, epoch)` whose durable state is `head` and `acked`
    /// (as read from the log at start-up). Starts disconnected.
    public init(device: DeviceID, epoch: Epoch, head: SequenceNumber, acked: SequenceNumber,
                configuration: SenderConfiguration = SenderConfiguration()) {
        precondition(acked <= head, "acked \(acked) is after head \(head): the log's state is corrupt")
        self.device = device
        self.epoch = epoch
        self.head = head
        self.acked = acked
        self.nextToSend = acked.next
        self.configuration = configuration.validated()
    }

    /// Batches in flight (not yet covered by `acked`), for status and tests.
    public var inFlightRanges: [SequenceRange] { inFlight.map(\.range) }
    /// Records appended but not acknowledged.
    public var backlog: UInt64 { head.rawValue - acked.rawValue }

    /// The status message describing this sender.
    public func status(atUnixMilliseconds: Int64?, measuring: Bool?) -> Status {
        Status(device: device, state: .online, epoch: epoch, head: head, acked: acked,
               atUnixMilliseconds: atUnixMilliseconds, measuring: measuring)
    }

    // MARK: Events

    /// The log durably appended records through `through`.
    public mutating func appended(through: SequenceNumber, now: Instant) -> [Action] {
        precondition(through >= head, "appended(through: \(through)) goes back from head \(head)")
        head = through
        var actions: [Action] = []
        requestLoadIfNeeded(&actions)
        return actions
    }

    /// The MQTT session is up (and subscribed to the ack topic).
    public mutating func connected(now: Instant) -> [Action] {
        isConnected = true
        var actions: [Action] = []
        let probe = probeIndex
        for k in inFlight.indices {
            inFlight[k].backoffLevel = 0
            if !inFlight[k].selectivelyAcked {
                publish(k, now: now, &actions)
            } else {
                inFlight[k].due = k == probe ? now.advanced(by: configuration.resendDelayInitial) : nil
            }
        }
        requestLoadIfNeeded(&actions)
        rearm(&actions)
        return actions
    }

    /// The MQTT session is gone. In-flight batches are kept and resent on reconnect.
    public mutating func disconnected() -> [Action] {
        isConnected = false
        var actions: [Action] = []
        rearm(&actions)
        return actions
    }

    /// The broker confirmed a publish (PUBACK). Informational only: it proves nothing
    /// about storage, so it never moves `acked`.
    public mutating func publishConfirmed(_ range: SequenceRange) -> [Action] { [] }

    /// An ack arrived on the ack topic (already decoded with this device as expected device).
    public mutating func ackReceived(_ ack: Ack, now: Instant) -> [Action] {
        guard ack.device == device else {
            return [.reportAnomaly("ack for device \(ack.device) received by \(device); ignored")]
        }
        guard ack.epoch == epoch else {
            // A retained ack of an earlier log: nothing to do with this epoch.
            return []
        }
        guard ack.through <= head else {
            return [.reportAnomaly("ack through \(ack.through) is beyond head \(head) of epoch \(epoch); ignored")]
        }
        var actions: [Action] = []
        var progress = false
        if let stored = ack.stored, stored.last <= head {
            for k in inFlight.indices where inFlight[k].range == stored && !inFlight[k].selectivelyAcked {
                inFlight[k].selectivelyAcked = true
                progress = true
            }
            inFlight.removeAll { $0.isReplay && $0.selectivelyAcked }
        }
        if ack.through > acked {
            acked = ack.through
            progress = true
            actions.append(.persistAcked(through: acked))
            inFlight.removeAll { $0.range.last <= acked }
            if nextToSend <= acked { nextToSend = acked.next }
            if case .normal(let from)? = pendingLoad, from <= acked { pendingLoadIsStale = true }
        }
        if progress { resetBackoff(now: now) }
        requestLoadIfNeeded(&actions)
        rearm(&actions)
        return actions
    }

    /// The resend timer fired. Calls at other times (an old timer) are harmless.
    public mutating func timerFired(now: Instant) -> [Action] {
        var actions: [Action] = []
        guard isConnected, let deadline = timerDeadline, deadline <= now else { return actions }
        timerDeadline = nil
        let probe = probeIndex
        for k in inFlight.indices {
            guard let due = inFlight[k].due, due <= now else { continue }
            if !inFlight[k].selectivelyAcked || k == probe {
                inFlight[k].backoffLevel += 1
                publish(k, now: now, &actions)
            } else {
                // Stored but not yet covered by `through`, and not the probe: the probe's
                // ack will move `through` past it.
                inFlight[k].due = nil
            }
        }
        rearm(&actions)
        return actions
    }

    /// The driver's answer to `.loadRecords(from:through:limit:)`: the log's records and loss
    /// markers in that range (ascending), and the lowest sequence number it still retains.
    /// Positions below `retainedFrom` with neither are answered with `not-retained` loss markers.
    public mutating func recordsLoaded(from: SequenceNumber, records: [LogRecord], losses: [LossMarker],
                                       retainedFrom: SequenceNumber, nowUnixMilliseconds: Int64, now: Instant) -> [Action] {
        var actions: [Action] = []
        guard let load = pendingLoad else { return actions }
        pendingLoad = nil
        let stale = pendingLoadIsStale
        pendingLoadIsStale = false
        switch load {
        case .normal(let start):
            guard start == from, !stale else { break }
            let batch = buildBatch(from: from, through: head, records: records, losses: losses, retainedFrom: retainedFrom,
                                   nowUnixMilliseconds: nowUnixMilliseconds, replayRequestID: nil)
            nextToSend = batch.batch.range.last.next
            append(batch, now: now, &actions)
        case .replay(let start):
            guard start == from, var replay = replays.first, replay.next == from else { break }
            let built = buildBatch(from: from, through: replay.range.last, records: records, losses: losses, retainedFrom: retainedFrom,
                                   nowUnixMilliseconds: nowUnixMilliseconds, replayRequestID: replay.requestID)
            for l in built.batch.losses where l.reason == .notRetained { replay.notRetained.append(l.range) }
            append(built, now: now, &actions)
            if built.batch.range.last >= replay.range.last {
                replays.removeFirst()
                actions.append(.replayFinished(requestID: replay.requestID, resent: replay.range, notRetained: replay.notRetained))
            } else {
                replay.next = built.batch.range.last.next
                replays[0] = replay
            }
        }
        requestLoadIfNeeded(&actions)
        rearm(&actions)
        return actions
    }

    /// The backend asked (command `replay`) to resend `range` of this epoch. Parts beyond
    /// `head` are not resent; the answer comes as `.replayFinished`. Returns nil when too
    /// many replays are queued (reply with an error and let the backend ask again).
    public mutating func replayRequested(requestID: String, range: SequenceRange, now: Instant) -> [Action]? {
        guard replays.count < Self.maxQueuedReplays else { return nil }
        guard range.first <= head else {
            return [.replayFinished(requestID: requestID, resent: nil, notRetained: [])]
        }
        let clipped = SequenceRange(checked: range.first, min(range.last, head))
        replays.append(Replay(requestID: requestID, range: clipped, next: clipped.first))
        var actions: [Action] = []
        requestLoadIfNeeded(&actions)
        return actions
    }

    // MARK: Internals

    /// The oldest normal batch: the probe (§4.2 rule 4).
    private var probeIndex: Int? { inFlight.firstIndex { !$0.isReplay } }

    /// `resendDelayInitial · 2^level`, capped at `resendDelayMax`, or for the probe at
    /// `probeDelayMax` (but never below the initial delay).
    private func delay(level: Int, probe: Bool) -> Duration {
        let cap = probe ? max(configuration.resendDelayInitial, min(configuration.probeDelayMax, configuration.resendDelayMax))
                        : configuration.resendDelayMax
        var d = configuration.resendDelayInitial
        for _ in 0..<min(level, 62) where d < cap { d = d * 2 }
        return min(d, cap)
    }

    /// Publishes batch `k` (a resend if it was published before) and sets its deadline from
    /// its backoff level.
    private mutating func publish(_ k: Int, now: Instant, _ actions: inout [Action]) {
        if inFlight[k].published { inFlight[k].outgoing.resendCount += 1 }
        inFlight[k].published = true
        inFlight[k].publishedAt = now
        inFlight[k].due = now.advanced(by: delay(level: inFlight[k].backoffLevel, probe: k == probeIndex))
        actions.append(.publish(inFlight[k].outgoing))
    }

    /// Ack progress: the backend answers, so every batch it has not confirmed is due again
    /// at most the initial delay after its last publish (at once if that has passed). A
    /// stored probe gives the receivers the initial delay from now to let `through` catch up.
    private mutating func resetBackoff(now: Instant) {
        guard isConnected else {
            for k in inFlight.indices { inFlight[k].backoffLevel = 0 }
            return
        }
        let probe = probeIndex
        for k in inFlight.indices {
            inFlight[k].backoffLevel = 0
            guard let at = inFlight[k].publishedAt, !inFlight[k].selectivelyAcked || k == probe else { continue }
            let soon = inFlight[k].selectivelyAcked ? now.advanced(by: configuration.resendDelayInitial)
                                                    : max(now, at.advanced(by: configuration.resendDelayInitial))
            inFlight[k].due = inFlight[k].due.map { min($0, soon) } ?? soon
        }
    }

    private mutating func append(_ outgoing: OutgoingBatch, now: Instant, _ actions: inout [Action]) {
        let entry = InFlight(outgoing: outgoing)
        let k = entry.isReplay ? inFlight.endIndex : (inFlight.firstIndex { $0.isReplay } ?? inFlight.endIndex)
        inFlight.insert(entry, at: k)
        if isConnected { publish(k, now: now, &actions) }
    }

    private mutating func requestLoadIfNeeded(_ actions: inout [Action]) {
        guard isConnected, pendingLoad == nil, inFlight.count < configuration.windowBatches else { return }
        let limit = configuration.maxRecordsPerBatch
        if let replay = replays.first {
            pendingLoad = .replay(from: replay.next)
            actions.append(.loadRecords(from: replay.next, through: replay.range.last, limit: limit))
        } else if nextToSend <= head {
            pendingLoad = .normal(from: nextToSend)
            actions.append(.loadRecords(from: nextToSend, through: head, limit: limit))
        }
    }

    private mutating func rearm(_ actions: inout [Action]) {
        let next = isConnected ? inFlight.compactMap(\.due).min() : nil
        guard next != timerDeadline else { return }
        timerDeadline = next
        if let next { actions.append(.armTimer(at: next)) } else { actions.append(.cancelTimer) }
    }

    /// Builds the batch starting at `from`: records and loss markers in order, positions
    /// below `retainedFrom` without either as `not-retained` markers, until the count or
    /// byte limit or `through`.
    private func buildBatch(from: SequenceNumber, through: SequenceNumber, records: [LogRecord], losses: [LossMarker],
                            retainedFrom: SequenceNumber, nowUnixMilliseconds: Int64, replayRequestID: String?) -> OutgoingBatch {
        precondition(from <= through, "load from \(from) beyond \(through)")
        let countLimit = configuration.maxRecordsPerBatch
        let lossLimit = ProtocolLimits.maxLossesPerBatch
        // Envelope size, generous for the members around `records`/`losses`.
        var bytes = 400 + (replayRequestID?.utf8.count ?? 0)
        var outRecords: [LogRecord] = []
        var outLosses: [LossMarker] = []
        var pos = from
        var ri = records.startIndex
        var li = losses.startIndex
        func itemCount() -> Int { outRecords.count + outLosses.count }
        while pos <= through, itemCount() < countLimit {
            while ri < records.endIndex, records[ri].sequence < pos { ri += 1 }
            while li < losses.endIndex, losses[li].range.last < pos { li += 1 }
            if li < losses.endIndex, losses[li].range.first <= pos {
                guard outLosses.count < lossLimit else { break }
                let l = losses[li]
                var clipped = l
                clipped.range = SequenceRange(checked: pos, min(l.range.last, through))
                let size = JSONWriter.encode(SyncCodec.json(clipped)).count + 1
                guard bytes + size <= configuration.maxBatchBytes else { break }
                bytes += size
                outLosses.append(clipped)
                pos = clipped.range.last.next
            } else if ri < records.endIndex, records[ri].sequence == pos {
                let size = JSONWriter.encode(SyncCodec.json(records[ri])).count + 1
                guard bytes + size <= configuration.maxBatchBytes else { break }
                bytes += size
                outRecords.append(records[ri])
                pos = pos.next
            } else if pos < retainedFrom {
                guard outLosses.count < lossLimit else { break }
                // Not retained: up to the next thing the log has, or retainedFrom.
                var end = min(through, retainedFrom.previous)
                if ri < records.endIndex { end = min(end, records[ri].sequence.previous) }
                if li < losses.endIndex { end = min(end, losses[li].range.first.previous) }
                let marker = LossMarker(range: SequenceRange(checked: pos, end), reason: .notRetained,
                                        recordedAtUnixMilliseconds: nowUnixMilliseconds,
                                        detail: "the device no longer retains these records")
                let size = JSONWriter.encode(SyncCodec.json(marker)).count + 1
                guard bytes + size <= configuration.maxBatchBytes else { break }
                bytes += size
                outLosses.append(marker)
                pos = end.next
            } else {
                // Inside the retained range the log has a record or a loss marker for every
                // position through head; a hole is corrupt durable data. Running out of what
                // was loaded (the load's limit) just ends the batch.
                let moreLoaded = ri < records.endIndex || li < losses.endIndex
                precondition(!moreLoaded && itemCount() > 0,
                             "the log returned neither a record nor a loss marker for \(pos) (retained from \(retainedFrom), head \(head))")
                break
            }
        }
        precondition(pos > from, "batch from \(from) is empty")
        let batch = Batch(device: device, epoch: epoch, range: SequenceRange(checked: from, pos.previous),
                          records: outRecords, losses: outLosses, replayRequestID: replayRequestID)
        let (payload, encoding) = configuration.encoding.encode(batch, maxBytes: configuration.maxBatchBytes)
        precondition(payload.count <= configuration.maxBatchBytes, "batch of \(payload.count) bytes exceeds \(configuration.maxBatchBytes)")
        return OutgoingBatch(batch: batch, payload: payload, resendCount: 0, encoding: encoding)
    }
}
