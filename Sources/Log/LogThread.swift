// LogThread: the one OS thread of a `DeviceLog`. Every SQLite call of that log runs on it, it
// owns the log's group commit, and it is a `TaskExecutor`, so tasks that append in a loop can
// run on it and hand their appends over without waking another thread.
//
// Theory of operation
// - One lock guards everything handed to the thread: jobs (closures from `run`/`submit`, and
//   the jobs of tasks that prefer this executor), queued appends, and the stop flags. The loop
//   runs every queued job first, then commits one batch of queued appends through the owner's
//   `commit` callback, then looks again; it sleeps only when there is nothing to do.
// - Jobs before the batch: a task that prefers this executor and was resumed by the last
//   commit is a job on this thread, so it runs (and appends again) before the next batch is
//   taken. The batch then holds every such appender with no timed wait, and an append costs no
//   thread switch at all (the cost the log paid twice per append before: a futex wake of this
//   thread and one of a pool thread for the caller, ~15 µs of CPU on the 2-core VM).
// - Appenders on other threads (Swift's pool, other executors) are resumed on their own
//   executors and come back one by one. When fewer appends are queued than the previous batch
//   carried, the loop waits for them, at most a quarter of the previous commit's duration
//   (≤ 2 ms), so batches keep the size of the group. A lone appender never waits. A job
//   arriving during that wait is run first; the wait's deadline stays.
// - Timers: a task on this executor sleeps with `sleep(until:)` (`executorSleep`); the loop
//   resumes it when the deadline passed, and waits on its condition no longer than the earliest
//   deadline. No dispatch timer, so no other thread is woken for it.
// - After `stop()` the loop finishes the queued jobs and exits; a task job enqueued later
//   (a task that still prefers this executor) runs on the global concurrent executor instead,
//   and sleeps go to `Task.sleep`. Tasks retain the executor they prefer, so this object
//   outlives them.
import FieldlogCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One append waiting for its group commit.
struct PendingAppend {
    var timestampMs: Int64
    var unsynced: Bool
    var body: [UInt8]
    var continuation: UnsafeContinuation<SequenceNumber, Error>
}

/// The dedicated thread of one `DeviceLog` (see the theory of operation above).
final class LogThread: TimedTaskExecutor, @unchecked Sendable {
    // @unchecked: every mutable property is only touched with `condition` locked, except
    // `commit` and `threadID`, which are written once before they are read (see their docs).
    private let condition = ConditionLock()
    private var jobs: [Job] = []
    private var appends: [PendingAppend] = []
    private var appendsClosed = false
    private var stopped = false
    private var exited = false
    /// The group-commit wait in progress (appenders on other threads), if any.
    private var groupDeadline: ContinuousClock.Instant?
    private var lastBatchCount = 0
    private var lastCommitNanoseconds: Int64 = 0
    private let maxBatchSize: Int
    /// Set once by the owner before the first append is queued; called on the thread.
    private var commit: (([PendingAppend]) -> Void)?
    /// Set by the thread itself before it runs anything.
    private let threadID = ThreadIdentity()
    /// Sleeping tasks by id (few: one per sleeping service), and ids cancelled before they slept.
    private var timers: [UInt64: Timer] = [:]
    private var cancelledTimers: Set<UInt64> = []
    private var nextTimerID: UInt64 = 0

    private struct Timer {
        var deadline: ContinuousClock.Instant
        var continuation: UnsafeContinuation<Void, Error>
    }

    private enum Job {
        case closure(() -> Void)
        case task(UnownedJob)
    }

    init(name: String, maxBatchSize: Int) {
        self.maxBatchSize = max(1, maxBatchSize)
        // The thread holds `self` until `stop()`; its owner (DeviceLog) stops it on close/deinit.
        OSThread.start(name: name, stackSize: 1 << 20) { self.loop() }
    }

    /// The owner's group commit: takes one batch (in queue order) and resumes its callers.
    func setCommit(_ commit: @escaping ([PendingAppend]) -> Void) {
        condition.withLock { self.commit = commit }
    }

    /// True when called on this thread (a job or a task running on it).
    var isCurrent: Bool { threadID.isCurrent }

    // MARK: The loop

    private func loop() {
        threadID.set()
        condition.lock()
        while true {
            if !timers.isEmpty, fireDueTimers() { continue }
            if !jobs.isEmpty {
                let batch = jobs
                jobs.removeAll(keepingCapacity: true)
                condition.unlock()
                for job in batch {
                    switch job {
                    case .closure(let body): body()
                    case .task(let job): job.runSynchronously(on: asUnownedTaskExecutor())
                    }
                }
                condition.lock()
                continue
            }
            if !appends.isEmpty, let commit {
                if appends.count < lastBatchCount && !appendsClosed {
                    let deadline = groupDeadline ?? ContinuousClock.now + .nanoseconds(min(lastCommitNanoseconds / 4, 2_000_000))
                    groupDeadline = deadline
                    // Woken (an append, a job or a timer): look again, jobs first, same deadline.
                    if let timer = earliestTimerDate(), timer < deadline {
                        _ = condition.wait(until: timer)
                        continue
                    }
                    if condition.wait(until: deadline) { continue }
                }
                groupDeadline = nil
                let batch = takeBatch()
                condition.unlock()
                let started = ContinuousClock.now
                commit(batch)
                let elapsed = ContinuousClock.now - started
                condition.lock()
                lastBatchCount = batch.count
                lastCommitNanoseconds = elapsed.inNanoseconds
                continue
            }
            if stopped {
                exited = true
                let sleepers = timers.values
                timers.removeAll()
                condition.unlock()
                // Nothing runs here any more: wake the sleepers early (they see no cancellation).
                for t in sleepers { t.continuation.resume() }
                return
            }
            if let timer = earliestTimerDate() { _ = condition.wait(until: timer) } else { condition.wait() }
        }
    }

    /// With `condition` locked: resumes the sleepers whose deadline passed (unlocking while it
    /// does: a resumed task is enqueued here). True when it resumed any.
    private func fireDueTimers() -> Bool {
        let now = ContinuousClock.now
        let due = timers.filter { $0.value.deadline <= now }
        if due.isEmpty { return false }
        for id in due.keys { timers.removeValue(forKey: id) }
        condition.unlock()
        for t in due.values { t.continuation.resume() }
        condition.lock()
        return true
    }

    /// With `condition` locked: the earliest sleeper's deadline.
    private func earliestTimerDate() -> ContinuousClock.Instant? {
        timers.values.map(\.deadline).min()
    }

    /// With `condition` locked: the next batch, oldest first, at most `maxBatchSize`.
    private func takeBatch() -> [PendingAppend] {
        if appends.count <= maxBatchSize {
            defer { appends.removeAll(keepingCapacity: true) }
            return appends
        }
        defer { appends.removeFirst(maxBatchSize) }
        return Array(appends.prefix(maxBatchSize))
    }

    // MARK: Appends

    /// Queues an append for the next group commit. False when appends are closed (the
    /// caller answers `LogError.closed`).
    func enqueueAppend(_ append: PendingAppend) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        if appendsClosed { return false }
        appends.append(append)
        condition.signal()
        return true
    }

    /// Refuses further appends. Returns false when they were refused already.
    func closeAppends() -> Bool {
        condition.withLock {
            defer { appendsClosed = true }
            return !appendsClosed
        }
    }

    /// On the thread: every append still queued, for the owner to commit before it closes.
    func drainAppends() -> [PendingAppend] {
        precondition(isCurrent, "drainAppends off the log thread")
        return condition.withLock {
            defer { appends.removeAll() }
            return appends
        }
    }

    // MARK: Jobs

    /// Queues `job`; it runs on the thread after the jobs queued before it.
    func submit(_ job: @escaping () -> Void) {
        condition.lock()
        precondition(!stopped, "job submitted to a stopped log thread")
        jobs.append(.closure(job))
        condition.signal()
        condition.unlock()
    }

    /// Runs `body` on the thread and returns its result to the awaiting task; inline when the
    /// caller already runs on the thread (a task that prefers this executor).
    func run<T: Sendable>(_ body: @escaping () throws -> T) async throws -> T {
        if isCurrent { return try body() }
        return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, Error>) in
            submit {
                do { continuation.resume(returning: try body()) } catch { continuation.resume(throwing: error) }
            }
        }
    }

    /// Lets the thread finish queued jobs and exit.
    func stop() {
        condition.lock()
        stopped = true
        condition.signal()
        condition.unlock()
    }

    // MARK: TimedTaskExecutor

    func sleep(until deadline: ContinuousClock.Instant) async throws {
        let id: UInt64? = condition.withLock {
            if exited { return nil }
            nextTimerID += 1
            return nextTimerID
        }
        guard let id else { return try await Task.sleep(until: deadline, clock: .continuous) }
        // A cancellation that came after the timer fired left its id behind.
        defer { condition.withLock { _ = cancelledTimers.remove(id) } }
        try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Void, Error>) in
                condition.lock()
                if cancelledTimers.remove(id) != nil || exited {
                    condition.unlock()
                    continuation.resume(throwing: CancellationError())
                    return
                }
                timers[id] = Timer(deadline: deadline, continuation: continuation)
                condition.signal()
                condition.unlock()
            }
        } onCancel: {
            condition.lock()
            if let timer = timers.removeValue(forKey: id) {
                condition.unlock()
                timer.continuation.resume(throwing: CancellationError())
            } else {
                // Not registered yet (or already fired: then this entry is never looked at).
                cancelledTimers.insert(id)
                condition.unlock()
            }
        }
    }

    // MARK: TaskExecutor

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        condition.lock()
        if exited {
            condition.unlock()
            globalConcurrentExecutor.enqueue(job)
            return
        }
        jobs.append(.task(job))
        condition.signal()
        condition.unlock()
    }
}

/// The pthread id of a thread, published by the thread itself once it started.
private final class ThreadIdentity: @unchecked Sendable {
    // @unchecked: `id` is only touched under `lock`.
    private let lock = Lock()
    private var id: pthread_t?
    func set() { lock.withLock { id = pthread_self() } }
    var isCurrent: Bool {
        lock.withLock { id.map { pthread_equal($0, pthread_self()) != 0 } ?? false }
    }
}
