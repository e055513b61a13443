// GroupCommit: how appends of many tasks become few transactions on the log's thread.
//
// Theory of operation
// - `DeviceLog.append` queues the reading here and suspends. The log's `OwnerThread` asks for a
//   batch after it ran its queued jobs (`nextBatch`), takes everything queued (up to
//   `maxBatchSize`) into one `BEGIN IMMEDIATE … COMMIT` through the log's `commit`, which
//   resumes the callers after COMMIT returned. Appends that arrive meanwhile form the next batch.
// - Jobs before the batch: a task that prefers the log's executor and was resumed by the last
//   commit is a job on the thread, so it runs (and appends again) before the next batch is
//   taken. The batch then holds every such appender with no timed wait, and an append costs no
//   thread switch at all (the cost the log paid twice per append before: a futex wake of the
//   thread and one of a pool thread for the caller, ~15 µs of CPU on the 2-core VM).
// - Appenders on other threads (Swift's pool, other executors) are resumed on their own
//   executors and come back one by one. When fewer appends are queued than the previous batch
//   carried, the batch waits for them, at most a quarter of the previous commit's duration
//   (≤ 2 ms), so batches keep the size of the group. A lone appender never waits. A job
//   arriving during that wait is run first; the wait's deadline stays.
// - All state here is guarded by the owner thread's lock (`OwnerThread.withLock`); the thread
//   calls `nextBatch` with it held.
import FieldlogCore
import Threading

/// One append waiting for its group commit.
struct PendingAppend {
    var timestampMs: Int64
    var unsynced: Bool
    var body: [UInt8]
    var continuation: UnsafeContinuation<SequenceNumber, Error>
}

/// The queue of appends of one `DeviceLog` and the rule that cuts it into batches (see above).
// Its state is touched inside `thread.withLock`, or in `nextBatch`, which the thread calls
// with the lock held.
// @unchecked: every mutable property is only touched with the owner thread's lock held.
final class GroupCommit: OwnerThread.Batches, @unchecked Sendable {
    /// The thread holds this object (its batch source) until it exits, and the log holds both.
    private unowned let thread: OwnerThread
    private let maxBatchSize: Int
    private var appends: [PendingAppend] = []
    private var closed = false
    /// The group-commit wait in progress (appenders on other threads), if any.
    private var groupDeadline: ContinuousClock.Instant?
    private var lastBatchCount = 0
    private var lastCommitNanoseconds: Int64 = 0
    /// The log's commit: takes one batch (in queue order) and resumes its callers. Set once
    /// before the first append is queued; called on the thread.
    private var commit: (([PendingAppend]) -> Void)?

    init(thread: OwnerThread, maxBatchSize: Int) {
        self.thread = thread
        self.maxBatchSize = max(1, maxBatchSize)
        thread.setBatches(self)
    }

    func setCommit(_ commit: @escaping ([PendingAppend]) -> Void) {
        thread.withLock { self.commit = commit }
    }

    /// Queues an append for the next batch. False when appends are closed (the caller
    /// answers `LogError.closed`).
    func enqueue(_ append: PendingAppend) -> Bool {
        thread.withLock {
            if closed { return false }
            appends.append(append)
            return true
        }
    }

    /// Refuses further appends. Returns false when they were refused already.
    func close() -> Bool {
        thread.withLock {
            defer { closed = true }
            return !closed
        }
    }

    /// On the thread: every append still queued, for the log to commit before it closes.
    func drain() -> [PendingAppend] {
        thread.preconditionCurrent("GroupCommit.drain")
        return thread.withLock {
            defer { appends.removeAll() }
            return appends
        }
    }

    // MARK: OwnerThread.Batches

    func nextBatch(now: ContinuousClock.Instant) -> OwnerThreadBatch {
        guard !appends.isEmpty, let commit else { return .none }
        if appends.count < lastBatchCount && !closed {
            let deadline = groupDeadline ?? now + .nanoseconds(min(lastCommitNanoseconds / 4, 2_000_000))
            groupDeadline = deadline
            if now < deadline { return .wait(until: deadline) }
        }
        groupDeadline = nil
        let batch = takeBatch()
        return .run { [self] in
            let started = ContinuousClock.now
            commit(batch)
            let elapsed = ContinuousClock.now - started
            thread.withLock {
                lastBatchCount = batch.count
                lastCommitNanoseconds = elapsed.inNanoseconds
            }
        }
    }

    /// With the lock held: the next batch, oldest first, at most `maxBatchSize`.
    private func takeBatch() -> [PendingAppend] {
        if appends.count <= maxBatchSize {
            defer { appends.removeAll(keepingCapacity: true) }
            return appends
        }
        defer { appends.removeFirst(maxBatchSize) }
        return Array(appends.prefix(maxBatchSize))
    }
}
