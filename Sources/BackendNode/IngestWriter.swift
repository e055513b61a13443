// IngestWriter: from received MQTT messages to committed rows and acks.
//
// Theory of operation: the MQTT side puts every message into a bounded `InboundQueue` and
// returns at once. One writer loop takes everything queued (up to the group limit), so when
// messages arrive faster than a commit takes, the next transaction simply carries more of
// them (group commit). For each group it:
//   1. feeds the messages to Sync's `ReceiverStateMachine` (sans-IO: validation, dead-letter
//      classes, store tokens, ack encoding; spec/protocol.md §5),
//   2. stores all `.store` requests in ONE transaction (readings, values, losses, rejected
//      records and one immutable batch_ranges row each; Store.swift),
//   3. only after COMMIT returned, reads each touched (device, epoch)'s committed ranges,
//      derives `storedThrough` with Sync's `AckRule`, and reports `storeCommitted`, whose
//      `.publishAck` actions it publishes (QoS 1, retained),
//   4. stores statuses, responses, seed readings and dead letters.
// A failed transaction is retried (RetryPolicy) until it commits; nothing is acked before.
// When the queue is full (database down for long), new messages are dropped unacked and
// counted: the devices still hold them and resend.
import FieldlogCore
import Foundation
import Logging
import MariaDB
import Sync

/// A message as received from the broker.
struct InboundMessage: Sendable {
    var topic: String
    var payload: [UInt8]
}

/// A bounded FIFO between the MQTT callback side and the writer loop; `take` hands out
/// everything queued (up to a limit) at once.
final class InboundQueue: @unchecked Sendable {
    // @unchecked: `items`, `waiter` and `finished` are only touched under `lock`.
    private let lock = NSLock()
    private var items: [InboundMessage] = []
    private var head = 0
    private var waiter: CheckedContinuation<Void, Never>?
    private var finished = false
    let capacity: Int

    init(capacity: Int) {
        precondition(capacity >= 1)
        self.capacity = capacity
    }

    /// Queues a message; false when the queue is full (the message is dropped unacked).
    func offer(_ message: InboundMessage) -> Bool {
        var accepted = false
        let w: CheckedContinuation<Void, Never>? = lock.withLock {
            guard items.count - head < capacity, !finished else { return nil }
            accepted = true
            items.append(message)
            defer { waiter = nil }
            return waiter
        }
        w?.resume()
        return accepted
    }

    var count: Int { lock.withLock { items.count - head } }

    /// Stops `take` from waiting (shutdown).
    func finish() {
        let w: CheckedContinuation<Void, Never>? = lock.withLock {
            finished = true
            defer { waiter = nil }
            return waiter
        }
        w?.resume()
    }

    /// Waits until something is queued, then returns up to `max` messages in arrival order;
    /// empty when finished.
    func take(max: Int) async -> [InboundMessage] {
        while true {
            let result: [InboundMessage]? = lock.withLock {
                let n = items.count - head
                if n > 0 {
                    let end = head + Swift.min(n, max)
                    let out = Array(items[head..<end])
                    head = end
                    if head > 1024 && head * 2 > items.count {
                        items.removeFirst(head)
                        head = 0
                    }
                    return out
                }
                return finished ? [] : nil
            }
            if let result { return result }
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let resumeNow = lock.withLock { () -> Bool in
                    if items.count - head > 0 || finished { return true }
                    precondition(waiter == nil, "InboundQueue has one consumer")
                    waiter = c
                    return false
                }
                if resumeNow { c.resume() }
            }
        }
    }
}

/// Publishes acks; the MQTT shell provides it (QoS 1, retained).
typealias AckPublisher = @Sendable (_ topic: String, _ payload: [UInt8]) async throws -> Void

/// The writer loop. Owned by one task; its state is only touched there.
final class IngestWriter: @unchecked Sendable {
    // @unchecked: the machine and the caches are only used by `run`/`process`, which run on one task.
    let database: DatabaseClient
    let settings: IngestSettings
    let metrics: BackendMetrics
    let logger: Logger
    let publishAck: AckPublisher
    private let retry: RetryPolicy
    private var machine: ReceiverStateMachine

    private struct Key: Hashable { var device: DeviceID; var epoch: Epoch }
    /// Per (device, epoch): 1…through is known to be covered (committed ranges only grow, so
    /// this can only be too small, never too large). The `checkpoint` of AckRule.
    private var knownThrough: [Key: SequenceNumber] = [:]
    private var batchesSinceCompaction: [Key: Int] = [:]
    private var knownDevices: Set<DeviceID> = []
    private var knownEpochs: Set<Key> = []

    init(database: DatabaseClient, topics: TopicTemplates, settings: IngestSettings, metrics: BackendMetrics,
         logger: Logger, publishAck: @escaping AckPublisher) {
        self.database = database
        self.settings = settings
        self.metrics = metrics
        self.logger = logger
        self.publishAck = publishAck
        self.retry = RetryPolicy(settings)
        var rc = ReceiverConfiguration()
        rc.topics = topics
        rc.maxPendingStores = settings.maxBatchesPerTransaction
        machine = ReceiverStateMachine(configuration: rc)
    }

    /// The filters to subscribe to (each wrapped in the shared-subscription group by the caller).
    var subscriptionFilters: [String] { machine.subscriptionFilters }

    /// Takes groups from `queue` until it is finished or the task is cancelled.
    func run(queue: InboundQueue) async {
        while !Task.isCancelled {
            let group = await queue.take(max: settings.maxBatchesPerTransaction)
            if group.isEmpty { return }
            metrics.queueDepth.record(queue.count)
            do {
                try await process(group)
            } catch {
                // Only cancellation gets here; what was not committed is not acked, the devices resend.
                logger.info("ingest stopping; the current group is not acked")
                return
            }
        }
    }

    /// Stores one group and acks its batches. Throws only on cancellation.
    func process(_ group: [InboundMessage]) async throws {
        var stores: [(StoreToken, StoreRequest)] = []
        var statuses: [Status] = []
        var responses: [(DeviceID, CommandResponse)] = []
        var legacy: [LegacyMessage] = []
        var dead: [DeadLetterRow] = []
        for m in group {
            for action in machine.messageReceived(topic: m.topic, payload: m.payload) {
                switch action {
                case .store(let token, let request):
                    stores.append((token, request)); metrics.received("batch")
                case .recordStatus(let status, _):
                    statuses.append(status); metrics.received("status")
                case .recordResponse(let device, let response):
                    responses.append((device, response)); metrics.received("response")
                case .storeLegacy(let device, let payload, let topic):
                    metrics.received("legacy")
                    do throws(LegacyParseError) {
                        legacy.append(try LegacyParser.parse(payload, device: device))
                    } catch {
                        dead.append(DeadLetterRow(topic: topic, reason: error.reason, detail: error.description, device: device, payload: payload))
                    }
                case .deadLetter(let d):
                    metrics.received("invalid")
                    dead.append(DeadLetterRow(topic: d.topic, reason: DeadLetterCause(d.reason), detail: d.message, device: d.topicDevice,
                                              payload: d.payloadExcerpt, payloadBytes: d.payloadBytes))
                case .droppedOverloaded(let device, let range):
                    metrics.droppedUnacked.increment()
                    logger.warning("batch \(range) of \(device) dropped unacked: too many stores pending")
                case .publishAck:
                    preconditionFailure("the receiver acks only after storeCommitted")
                }
            }
        }
        if !stores.isEmpty { try await storeAndAck(stores) }
        if !statuses.isEmpty {
            // One transaction (one commit) for the group's statuses, in arrival order.
            let all = statuses
            try await retry.run("store \(all.count) status(es)", database: database, metrics: metrics, logger: logger) { try await $0.recordStatuses(all) }
        }
        for (device, r) in responses {
            let outcome = Self.outcome(of: r)
            let payload = String(decoding: SyncCodec.encode(r), as: UTF8.self)
            try await retry.run("store command response", database: database, metrics: metrics, logger: logger) {
                try await $0.recordResponse(device: device, requestID: r.requestID, command: r.command, ok: r.ok, outcome: outcome, payload: payload)
            }
        }
        for l in legacy {
            let (ins, dup) = try await retry.run("store seed readings", database: database, metrics: metrics, logger: logger) {
                try await $0.storeLegacy(l)
            }
            metrics.legacyInserted.increment(by: ins)
            metrics.legacyDuplicates.increment(by: dup)
        }
        if !dead.isEmpty {
            let letters = dead
            try await retry.run("store dead letters", database: database, metrics: metrics, logger: logger) { try await $0.recordDeadLetters(letters) }
            for d in dead {
                metrics.deadLetter(d.reason)
                logger.notice("dead letter", metadata: ["reason": "\(d.reason.rawValue)", "topic": "\(d.topic)", "detail": "\(d.detail)"])
            }
        }
    }

    /// TEST ONLY, a deliberately broken build for the outage lab (docs/outage-lab.md):
    /// FIELDLOG_FAULT_ACK_BEFORE_COMMIT=1 acks every batch on receipt, through its last record,
    /// then makes one attempt to store it and forgets it when that fails. The lab must catch it.
    static let faultAckBeforeCommit = ProcessInfo.processInfo.environment["FIELDLOG_FAULT_ACK_BEFORE_COMMIT"] == "1"

    private func storeAndAckBroken(_ stores: [(StoreToken, StoreRequest)], newDevices: [DeviceID], newEpochs: [(DeviceID, Epoch)]) async throws {
        for (token, r) in stores {
            for action in machine.storeCommitted(token, outcome: StoreOutcome(storedThrough: r.range.last, missing: [])) {
                if case .publishAck(let topic, let payload, _) = action { try? await publishAck(topic, payload) }
            }
        }
        do {
            _ = try await database.store().storeBatches(stores.map(\.1), newDevices: newDevices, newEpochs: newEpochs)
            knownDevices.formUnion(newDevices)
            knownEpochs.formUnion(newEpochs.map { Key(device: $0.0, epoch: $0.1) })
        } catch {
            await database.failed()
            logger.error("FIELDLOG_FAULT_ACK_BEFORE_COMMIT: store failed after the ack; \(stores.count) batch(es) lost: \(error)")
        }
    }

    /// A short outcome for the commands table: "ok", "resent 5…9", "not-retained 1…4", or the error code.
    static func outcome(of r: CommandResponse) -> String {
        if let e = r.error { return e.rawValue }
        var parts: [String] = []
        if let resent = r.resent { parts.append("resent \(resent)") }
        if !r.notRetained.isEmpty { parts.append("not-retained " + r.notRetained.map(\.description).joined(separator: ",")) }
        return parts.isEmpty ? "ok" : String(parts.joined(separator: "; ").prefix(32))
    }

    private func storeAndAck(_ stores: [(StoreToken, StoreRequest)]) async throws {
        let requests = stores.map(\.1)
        var newDevices: [DeviceID] = []
        var newEpochs: [(DeviceID, Epoch)] = []
        var seenDevices = Set<DeviceID>(), seenEpochs = Set<Key>()
        for r in requests {
            let k = Key(device: r.device, epoch: r.epoch)
            if !knownDevices.contains(r.device), seenDevices.insert(r.device).inserted { newDevices.append(r.device) }
            if !knownEpochs.contains(k), seenEpochs.insert(k).inserted { newEpochs.append((r.device, r.epoch)) }
        }
        let (nd, ne) = (newDevices, newEpochs)
        if Self.faultAckBeforeCommit {
            try await storeAndAckBroken(stores, newDevices: nd, newEpochs: ne)
            return
        }
        let start = ContinuousClock.now
        let results: [BatchStoreResult]
        do {
            results = try await retry.run("store \(requests.count) batch(es)", database: database, metrics: metrics, logger: logger) { store in
                try await store.storeBatches(requests, newDevices: nd, newEpochs: ne)
            }
        } catch {
            for (token, _) in stores { _ = machine.storeFailed(token) }
            throw error
        }
        // COMMIT returned: everything in `requests` is durable (on Galera: certified cluster-wide).
        metrics.commitLatency.recordNanoseconds(Int64((ContinuousClock.now - start) / .nanoseconds(1)))
        metrics.batchesPerTransaction.record(requests.count)
        knownDevices.formUnion(seenDevices)
        knownEpochs.formUnion(seenEpochs)
        for r in results {
            metrics.rowsInserted.increment(by: r.recordsInserted)
            metrics.duplicates.increment(by: r.duplicates)
        }
        for r in requests where !r.rejected.isEmpty { metrics.deadLetter(.rejectedRecord, count: r.rejected.count) }

        // One progress read per (device, epoch) of the group, after the commit.
        var order: [Key] = []
        var highest: [Key: SequenceNumber] = [:]
        var newestDeviceMs: [Key: Int64] = [:]
        for r in requests {
            let k = Key(device: r.device, epoch: r.epoch)
            if highest[k] == nil { order.append(k) }
            highest[k] = max(highest[k] ?? .zero, r.range.last)
            if let ms = r.records.map(\.timestamp.unixMilliseconds).max() { newestDeviceMs[k] = max(newestDeviceMs[k] ?? .min, ms) }
        }
        var outcomes: [Key: StoreOutcome] = [:]
        // All the group's progress reads in one statement (per 64 keys), not one round trip each.
        let progressKeys = order.map { (device: $0.device, epoch: $0.epoch, above: knownThrough[$0] ?? .zero) }
        let allRanges: [[SequenceRange]]
        do {
            allRanges = try await retry.run("read progress of \(order.count) device(s)", database: database, metrics: metrics, logger: logger) { store in
                try await store.committedRanges(of: progressKeys)
            }
        } catch {
            for (token, _) in stores { _ = machine.storeFailed(token) }
            throw error
        }
        for (k, ranges) in zip(order, allRanges) {
            let checkpoint = knownThrough[k] ?? .zero
            let through = AckRule.storedThrough(checkpoint: checkpoint, ranges: ranges)
            // Our own commit must be in what we read. If it is not (a Galera node read without
            // wsrep_sync_wait, say), ack nothing for this key: the device resends.
            guard through >= highest[k]! || ranges.contains(where: { $0.contains(highest[k]!) }) else {
                logger.error("progress read of \(k.device) epoch \(k.epoch) does not show the committed batch ending at \(highest[k]!); not acking, the device resends")
                continue
            }
            knownThrough[k] = through
            outcomes[k] = StoreOutcome(storedThrough: through, missing: AckRule.missing(after: through, ranges: ranges))
            let highestCommitted = max(through, ranges.map(\.last).max() ?? .zero)
            let nowMs = Int64(Date().timeIntervalSince1970 * 1000)
            metrics.deviceLag(k.device, records: highestCommitted.rawValue - through.rawValue,
                              delaySeconds: newestDeviceMs[k].map { Double(nowMs - $0) / 1000 })
        }
        // Acks by topic (one per device), topics in the order first seen.
        var topicOrder: [String] = []
        var byTopic: [String: [(payload: [UInt8], what: String)]] = [:]
        for (token, r) in stores {
            guard let outcome = outcomes[Key(device: r.device, epoch: r.epoch)] else {
                _ = machine.storeFailed(token)
                continue
            }
            for action in machine.storeCommitted(token, outcome: outcome) {
                guard case .publishAck(let topic, let payload, let ack) = action else { continue }
                precondition(ack.through == outcome.storedThrough, "ack passes what was read as stored")
                if byTopic[topic] == nil { topicOrder.append(topic) }
                byTopic[topic, default: []].append((payload, "\(r.device) \(r.range)"))
            }
        }
        // The acks of different devices go out concurrently (one broker round trip for the
        // group, not one per batch: waiting for each PUBACK in turn capped a 1,000-device fleet
        // at ~150 batches/s); one device's acks keep their order on its topic.
        let (publish, metrics, logger) = (publishAck, self.metrics, self.logger)
        await withTaskGroup(of: Void.self) { group in
            for topic in topicOrder {
                let list = byTopic[topic]!
                group.addTask {
                    for a in list {
                        do {
                            try await publish(topic, a.payload)
                            metrics.acksSent.increment()
                        } catch {
                            // The rows are committed; the device resends and the resend is acked.
                            metrics.ackPublishFailures.increment()
                            logger.warning("could not publish ack for \(a.what): \(error)")
                        }
                    }
                }
            }
        }
        for k in order {
            await compactIfDue(k, batches: requests.filter { $0.device == k.device && $0.epoch == k.epoch }.count)
        }
    }

    private func compactIfDue(_ k: Key, batches: Int) async {
        let n = (batchesSinceCompaction[k] ?? 0) + batches
        guard n >= settings.compactEveryBatches, let t = knownThrough[k], t > .zero else {
            batchesSinceCompaction[k] = n
            return
        }
        batchesSinceCompaction[k] = 0
        do {
            let store = try await database.store()
            let replaced = try await store.compactRanges(device: k.device, epoch: k.epoch, through: t)
            logger.debug("compacted \(replaced) range rows of \(k.device) epoch \(k.epoch) into 1…\(t)")
        } catch {
            // Housekeeping only: another process may be compacting the same rows (1213).
            logger.debug("compaction of \(k.device) skipped: \(error)")
        }
    }
}
