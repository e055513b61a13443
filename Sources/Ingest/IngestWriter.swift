// IngestWriter: the IO shell around Sync's `IngestStateMachine` (spec/protocol.md §5, §7).
//
// Theory of operation: every decision (queueing and fairness, backpressure, grouping, what a
// database error means and what to do about it, the ack rule, the visibility guard, what to
// ack) is the machine's. This shell owns the machine on one task and only carries out its
// actions: it writes a transaction's rows (`StoreRows`) through `Store.write`, reads progress,
// publishes acks, sleeps for backoffs, pauses and resumes reading from the broker, and turns
// the machine's reports into metrics and log lines. Inputs (broker messages, database results,
// timers) arrive on one stream, so the machine sees them one at a time, in order. The only
// policy left here is the mapping of a MariaDB error to a `StoreFailure` class
// (`MariaDBError.storeFailure`) and the jitter added to a backoff. How a transaction reaches
// the database is a `TransactionWrite` (`.committing`: success only after COMMIT); the outage
// lab's deliberately broken ingest (Tests/BrokenIngest) injects another, to show the lab
// catches an ingest that acks what it did not commit.
import BackendStore
import FieldlogCore
import Foundation
import Logging
import MariaDB
import Sync

/// Publishes acks; the MQTT shell provides it (QoS 1, retained).
package typealias AckPublisher = @Sendable (_ topic: String, _ payload: [UInt8]) async throws -> Void

/// A message as received from the broker.
package struct InboundMessage: Sendable {
    package var topic: String
    package var payload: [UInt8]
    /// The MQTT content type the publisher set, if any (the batch decoder checks it, spec §2.3).
    package var contentType: String? = nil
}

/// Backpressure towards the broker; the MQTT shell provides it.
package struct ReadControl: Sendable {
    package var pause: @Sendable () -> Void
    package var resume: @Sendable () -> Void
    package static let none = ReadControl(pause: {}, resume: {})
}

/// How the writer carries out the machine's `.write` of a transaction: the machine acks what
/// this reports as committed (and only that), so only `.committing` is right for production.
package struct TransactionWrite: Sendable {
    /// What a write may use.
    package struct Context: Sendable {
        package var database: DatabaseClient
        package var configuration: IngestConfiguration
        package var logger: Logger
        /// Publishes acks now, outside the machine's order (for nothing but the broken build).
        package var publishAcks: @Sendable ([AckMessage]) async -> Void
    }

    /// What became of one write.
    package enum Outcome: Sendable {
        /// Committed: the machine may ack it.
        case committed(WriteResult)
        /// Not committed, for this class of reason.
        case failed(StoreFailure)
    }

    /// Writes the transaction; `.committed` only when it is committed.
    package var perform: @Sendable (_ transaction: IngestTransaction, _ context: Context) async -> Outcome

    package init(perform: @escaping @Sendable (_ transaction: IngestTransaction, _ context: Context) async -> Outcome) {
        self.perform = perform
    }

    /// One transaction of rows through `Store.write`: its result once committed, or the class of
    /// the database's error (`IngestWriter.classify`).
    package static let committing = TransactionWrite { transaction, context in
        do {
            let rows = StoreRows(transaction)
            let store = try await context.database.store()
            return .committed(try await store.write(rows))
        } catch {
            return .failed(IngestWriter.classify(error))
        }
    }
}

/// The ingest shell. `run` owns the machine; nothing else touches it.
package final class IngestWriter: Sendable {
    package typealias Machine = IngestStateMachine<ContinuousClock.Instant>

    package let database: DatabaseClient
    package let configuration: IngestConfiguration
    package let metrics: BackendMetrics
    package let logger: Logger
    package let publishAck: AckPublisher
    package let readControl: ReadControl
    package let write: TransactionWrite

    package enum Input: Sendable {
        case message(topic: String, payload: [UInt8], contentType: String?)
        case written(TransactionID, Result<WriteResult, StoreFailureBox>, seconds: Double)
        case progress(TransactionID, Result<[[SequenceRange]], StoreFailureBox>)
        case timer
        /// No more messages (the broker stream ended, or shutdown): finish what is queued, then return.
        case finish
    }

    /// `StoreFailure` as an Error, for `Result`.
    package struct StoreFailureBox: Error { var failure: StoreFailure }

    private let inputs: AsyncStream<Input>
    private let continuation: AsyncStream<Input>.Continuation

    package init(database: DatabaseClient, configuration: IngestConfiguration, metrics: BackendMetrics, logger: Logger,
         readControl: ReadControl = .none, write: TransactionWrite = .committing, publishAck: @escaping AckPublisher) {
        self.database = database
        self.configuration = configuration
        self.metrics = metrics
        self.logger = logger
        self.readControl = readControl
        self.write = write
        self.publishAck = publishAck
        (inputs, continuation) = AsyncStream.makeStream(of: Input.self)
    }

    /// The filters to subscribe to (each wrapped in the shared-subscription group by the caller).
    package var subscriptionFilters: [String] { Machine(configuration: configuration).subscriptionFilters }

    /// Hands a message from the broker to the writer (any thread; never blocks).
    package func offer(topic: String, payload: [UInt8], contentType: String? = nil) {
        continuation.yield(.message(topic: topic, payload: payload, contentType: contentType))
    }

    /// Asks `run` to finish: queued messages are still stored and acked (up to the shutdown deadline).
    package func finish() { continuation.yield(.finish) }

    /// Runs the machine until `finish()` and an empty queue, or cancellation. What is not committed is not acked.
    /// Call once per writer.
    package func run() async {
        await drive(inputs, continuation)
    }

    /// Stores and acks `messages` with a machine of their own, then returns (tests, tools).
    package func process(_ messages: [InboundMessage]) async {
        let (stream, continuation) = AsyncStream.makeStream(of: Input.self)
        for m in messages { continuation.yield(.message(topic: m.topic, payload: m.payload, contentType: m.contentType)) }
        continuation.yield(.finish)
        await drive(stream, continuation)
    }

    private func drive(_ inputs: AsyncStream<Input>, _ continuation: AsyncStream<Input>.Continuation) async {
        var machine = Machine(configuration: configuration)
        var finishing = false
        // Acks go out on a task of their own, in commit order, so the next transaction never waits
        // for the broker's PUBACKs (a broker busy with a flood answers slowly).
        let (ackStream, acks) = AsyncStream.makeStream(of: [AckMessage].self)
        await withDiscardingTaskGroup { publisher in
        publisher.addTask { for await batch in ackStream { await self.publish(batch) } }
        await withDiscardingTaskGroup { tasks in
            for await input in inputs {
                if Task.isCancelled { break }
                let now = ContinuousClock.now
                let actions: [Machine.Action]
                switch input {
                case .message(let topic, let payload, let contentType):
                    actions = machine.messageReceived(topic: topic, payload: payload, contentType: contentType, now: now)
                case .written(let id, .success(let result), let seconds):
                    metrics.commitLatency.recordNanoseconds(Int64(seconds * 1e9))
                    actions = machine.transactionCommitted(id, result: result, nowUnixMilliseconds: WallClock.unixMilliseconds(), now: now)
                case .written(let id, .failure(let box), _):
                    actions = machine.transactionFailed(id, failure: box.failure, now: now)
                case .progress(let id, .success(let ranges)):
                    actions = machine.progressRead(id, ranges: ranges, nowUnixMilliseconds: WallClock.unixMilliseconds(), now: now)
                case .progress(let id, .failure(let box)):
                    actions = machine.progressReadFailed(id, failure: box.failure, now: now)
                case .timer:
                    actions = machine.timerFired(now: now)
                case .finish:
                    finishing = true
                    actions = []
                }
                for action in actions {
                    await perform(action, tasks: &tasks, continuation: continuation, acks: acks)
                }
                metrics.queueDepth.record(machine.queuedMessages)
                metrics.queueBytes.record(machine.queuedBytes)
                if finishing && machine.isIdle { break }
            }
            tasks.cancelAll()
        }
        // The acks of what committed still go out (the publisher ends when they have).
        acks.finish()
        }
    }

    private func perform(_ action: Machine.Action, tasks: inout DiscardingTaskGroup, continuation: AsyncStream<Input>.Continuation,
                         acks: AsyncStream<[AckMessage]>.Continuation) async {
        switch action {
        case .pauseReading:
            metrics.readingPaused.record(1)
            logger.notice("ingest queue above \(configuration.maxQueuedBytes) bytes: reading from the broker paused")
            readControl.pause()
        case .resumeReading:
            metrics.readingPaused.record(0)
            logger.notice("ingest queue drained below half: reading from the broker resumed")
            readControl.resume()
        case .write(let tx):
            let write = self.write
            let context = TransactionWrite.Context(database: database, configuration: configuration, logger: logger,
                                                   publishAcks: { await self.publish($0) })
            tasks.addTask {
                let start = ContinuousClock.now
                switch await write.perform(tx, context) {
                case .committed(let result):
                    continuation.yield(.written(tx.id, .success(result), seconds: (ContinuousClock.now - start).inSeconds))
                case .failed(let failure):
                    continuation.yield(.written(tx.id, .failure(StoreFailureBox(failure: failure)), seconds: 0))
                }
            }
        case .readProgress(let id, let queries):
            let database = self.database
            tasks.addTask {
                do {
                    let store = try await database.store()
                    let ranges = try await store.committedRanges(of: queries.map { (device: $0.key.device, epoch: $0.key.epoch, above: $0.above) })
                    continuation.yield(.progress(id, .success(ranges)))
                } catch {
                    continuation.yield(.progress(id, .failure(StoreFailureBox(failure: Self.classify(error)))))
                }
            }
        case .publishAcks(let list):
            acks.yield(list)
        case .compact(let key, let through):
            let (database, logger) = (self.database, self.logger)
            tasks.addTask {
                do {
                    let replaced = try await database.store().compactRanges(device: key.device, epoch: key.epoch, through: through)
                    logger.debug("compacted \(replaced) range rows of \(key) into 1…\(through)")
                } catch {
                    // Housekeeping only: another process may be compacting the same rows (1213).
                    logger.debug("compaction of \(key) skipped: \(error)")
                }
            }
        case .reconnectDatabase:
            await database.failed()
        case .armTimer(let at):
            // Jitter (up to a quarter of the wait), so two processes that failed together do not retry together.
            let wait = at - ContinuousClock.now
            let jitter = wait > .zero ? wait * Double.random(in: 0...0.25) : .zero
            tasks.addTask {
                try? await Task.sleep(until: at + jitter, clock: .continuous)
                continuation.yield(.timer)
            }
        case .dropped(let topic, let device, let bytes, let reason):
            metrics.dropped(reason)
            logger.warning("message of \(bytes) bytes on \(topic.prefix(200)) dropped unacked (\(reason.rawValue)); \(device.map { "\($0) resends its batches" } ?? "")")
        case .committed(let report):
            record(report)
        case .retrying(let id, let failure, let attempt, let delay):
            switch failure {
            case .conflict: metrics.deadlockRetries.increment()
            case .connection: metrics.databaseReconnects.increment()
            case .refused, .unknown: metrics.transactionRetries.increment()
            }
            switch failure {
            case .conflict: logger.debug("\(id) failed (attempt \(attempt)), nothing of it is acked; retrying in \(delay): \(failure)")
            case .connection: logger.error("\(id) failed (attempt \(attempt)), nothing of it is acked; reconnecting, retrying in \(delay): \(failure)")
            case .refused, .unknown: logger.error("\(id) failed (attempt \(attempt)), nothing of it is acked; retrying in \(delay): \(failure)")
            }
        case .isolating(let id, let failure, let messages):
            metrics.isolations.increment()
            logger.error("\(id) of \(messages) messages refused by the database; splitting it to find the message at fault: \(failure)")
        case .notAcked(let key, let reason):
            logger.error("not acking \(key) now: \(reason); the device resends")
        case .abandoned(let topic, let device, let reason):
            metrics.abandoned.increment()
            logger.critical("message on \(topic.prefix(200)) of \(device.map(\.rawValue) ?? "no device") could not be stored even as a dead letter: \(reason)")
        }
    }

    private func record(_ r: CommitReport) {
        for (kind, n) in r.received { metrics.received(kind, count: n) }
        metrics.rowsInserted.increment(by: r.readingsInserted)
        metrics.duplicates.increment(by: max(0, r.records - r.readingsInserted))
        metrics.legacyInserted.increment(by: r.legacyInserted)
        metrics.legacyDuplicates.increment(by: max(0, r.legacyReadings - r.legacyInserted))
        if r.batches > 0 { metrics.batchesPerTransaction.record(r.batches) }
        if r.rejectedRecords > 0 { metrics.deadLetter(.rejectedRecord, count: r.rejectedRecords) }
        for d in r.deadLetters {
            metrics.deadLetter(d.reason)
            logger.notice("dead letter", metadata: ["reason": "\(d.reason.rawValue)", "topic": "\(d.topic.prefix(200))", "detail": "\(d.message.prefix(300))"])
        }
        for lag in r.lags {
            metrics.deviceLag(lag.device, records: lag.recordsAbovePrefix, delaySeconds: lag.delayMilliseconds.map { Double($0) / 1000 })
        }
    }

    /// The acks of different devices go out concurrently (one broker round trip for the group,
    /// not one per batch: waiting for each PUBACK in turn capped a 1,000-device fleet at ~150
    /// batches/s); one device's acks keep their order on its topic.
    private func publish(_ acks: [AckMessage]) async {
        var order: [String] = []
        var byTopic: [String: [AckMessage]] = [:]
        for a in acks {
            if byTopic[a.topic] == nil { order.append(a.topic) }
            byTopic[a.topic, default: []].append(a)
        }
        let (publish, metrics, logger) = (publishAck, self.metrics, self.logger)
        await withTaskGroup(of: Void.self) { group in
            for topic in order {
                let list = byTopic[topic]!
                group.addTask {
                    for a in list {
                        do {
                            try await publish(topic, a.payload)
                            metrics.acksSent.increment()
                        } catch {
                            // The rows are committed; the device resends and the resend is acked.
                            metrics.ackPublishFailures.increment()
                            logger.warning("could not publish ack \(a.ack.device) through \(a.ack.through): \(error)")
                        }
                    }
                }
            }
        }
    }

    /// The ingest's one piece of database knowledge: what a MariaDB error means for a transaction.
    package static func classify(_ error: any Error) -> StoreFailure {
        guard let e = error as? MariaDBError else {
            if error is CancellationError { return .connection("cancelled") }
            return .unknown(String(describing: error))
        }
        return e.storeFailure
    }

}

extension MariaDBError {
    /// The ingest's class of this error (spec §5.2; docs/backend.md "When the database says no").
    package var storeFailure: StoreFailure {
        if isConnectionLost || isTLSFailure || Self.unavailableCodes.contains(code) { return .connection(description) }
        if isDeadlock || isLockWaitTimeout || Self.conflictCodes.contains(code) { return .conflict(description) }
        if Self.refusedCodes.contains(code) || sqlState.hasPrefix("22") || sqlState.hasPrefix("23") { return .refused(description) }
        return .unknown(description)
    }

    /// The server is not there or not ready: too many connections, access denied (a password
    /// being rotated), a Galera node not synced (1047), server shutting down, read only.
    package static let unavailableCodes: Set<UInt32> = [1040, 1045, 1047, 1290, 2000, 2005, 2026]
    /// Retrying the same transaction can succeed: Galera's commit/rollback failures.
    package static let conflictCodes: Set<UInt32> = [1180, 1181, 1637]
    /// The values themselves: they will be refused again.
    package static let refusedCodes: Set<UInt32> = [
        1048, // column cannot be null
        1062, // duplicate entry (not possible with INSERT IGNORE; a constraint nonetheless)
        1136, // column count
        1264, // out of range value
        1265, // data truncated
        1292, // incorrect datetime / truncated incorrect value
        1300, // invalid character string
        1366, // incorrect string value (e.g. a character the column's character set cannot hold)
        1367, // illegal value
        1406, // data too long
        1451, 1452, // foreign key
        1644, // a trigger's SIGNAL
        1690, // BIGINT value out of range
        3819, 4025, // CHECK constraint
    ]
}

