// OwnerThread: the one kind of thread that owns C handles (docs/concurrency.md).
//
// Why: libsqlite3, Connector/C and hiredis block (fsync, network round trips, lock waits,
// connect timeouts). Swift's cooperative pool has one thread per core; a call blocked there
// stalls unrelated tasks. So each handle lives on an `OwnerThread` of its own, inside a
// `ThreadConfined` (ThreadConfined.swift) that checks on every access that it runs there, and
// tasks reach it with `run`, which suspends them (not a pool thread) until the job is done.
//
// Theory of operation
// - One lock (`condition`) guards everything handed to the thread: jobs (closures from
//   `run`/`submit`, and the jobs of tasks that prefer this executor), sleeping tasks, the stop
//   flags, and the state of the owner's batch source (`Batches`, the log's group commit).
// - The loop resumes the sleepers whose deadline passed, then runs every queued job, then asks
//   the batch source for a batch (which may ask it to wait, at most until a deadline, for more
//   to arrive); it sleeps only when there is nothing to do, until a job, a wake-up or the
//   earliest deadline. Jobs before batches: a task that prefers this executor and was resumed
//   by the last batch is a job here, so it runs (and queues again) before the next batch forms.
// - It is a `TaskExecutor`: a task that prefers it runs on it, and its calls to `run` run
//   inline, without a thread switch. It is a `TimedTaskExecutor`: such a task sleeps on the
//   loop's own timers (`executorSleep`), so no other thread is woken for it.
// - `stop()` lets the loop finish the queued jobs and batches, wake the sleepers early, run
//   `tearDown` and exit. A task job enqueued later (a task that still prefers this executor)
//   runs on the global concurrent executor instead and sleeps go to `Task.sleep`; `run` throws
//   `OwnerThreadStopped`. Tasks retain the executor they prefer, so this object outlives them.
// - Cancellation: a job, once queued, runs to completion, and `run` waits for it (a job that
//   changed something must not be reported as not done). Every blocking call of a handle is
//   bounded by a timeout of its library, so a cancelled task is released within that bound;
//   sleeps end at once with `CancellationError`.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// `OwnerThread.run` after `stop()`: the owner of the handle is gone.
public struct OwnerThreadStopped: Error, CustomStringConvertible, Sendable {
    public let thread: String
    public var description: String { "the thread \(thread) was stopped (its handle is closed)" }
}

/// What an owner thread's batch source wants next (see `OwnerThread.Batches`).
public enum OwnerThreadBatch {
    /// Nothing queued.
    case none
    /// Something is queued, but wait for more until the deadline (or a wake-up).
    case wait(until: ContinuousClock.Instant)
    /// Run this batch now (on the thread, without the lock).
    case run(() -> Void)
}

/// A dedicated OS thread that runs jobs one at a time, in order, and owns the C handles
/// confined to it (see the theory of operation above).
// `identity` is atomic and `name` immutable.
// @unchecked: every mutable property is only touched with `condition` locked.
public final class OwnerThread: TimedTaskExecutor, @unchecked Sendable {
    /// Work an owner thread takes in batches after its jobs (the log's group commit). Its
    /// state is guarded by the thread's lock: the thread calls `nextBatch` with the lock held,
    /// and producers change the state inside `OwnerThread.withLock`.
    public protocol Batches: AnyObject {
        /// With the thread's lock held, on the thread: what to do now. Must not block.
        func nextBatch(now: ContinuousClock.Instant) -> OwnerThreadBatch
    }

    /// The name the thread shows in `top -H` (first 15 bytes) and in error messages.
    public let name: String
    private let condition = ConditionLock()
    private let identity = ThreadIdentity()
    private var jobs: [Job] = []
    private var batches: (any Batches)?
    private var stopped = false
    private var exited = false
    /// The pthread, until it is joined (`stopAndWait`) or detached (`stop`).
    private var handle: OSThread.Joinable?
    /// Sleeping tasks by id (few: one per sleeping service), and ids cancelled before they slept.
    private var timers: [UInt64: Timer] = [:]
    private var cancelledTimers: Set<UInt64> = []
    private var nextTimerID: UInt64 = 0

    private struct Timer {
        var deadline: ContinuousClock.Instant
        var continuation: UnsafeContinuation<Void, Error>
    }

    private enum Job {
        case closure(@Sendable () -> Void)
        case task(UnownedJob)
    }

    /// Starts the thread.
    /// - Parameters:
    ///   - stackSize: bytes of stack (nil: the system's default).
    ///   - setUp: runs first on the new thread (e.g. mysql_thread_init).
    ///   - tearDown: runs last on the thread, after every queued job ran.
    public init(name: String, stackSize: Int? = nil,
                setUp: @escaping @Sendable () -> Void = {}, tearDown: @escaping @Sendable () -> Void = {}) {
        self.name = name
        // The thread holds `self` until it exits (after `stop()`); its owner stops it on close or deinit.
        handle = OSThread.startJoinable(name: name, stackSize: stackSize) {
            self.identity.setToCurrentThread()
            setUp()
            self.loop()
            tearDown()
            self.identity.clear()
        }
    }

    /// True when called on this thread (a job, a batch, or a task running on it).
    public var isCurrent: Bool { identity.isCurrent }

    /// Stops the process when not called on this thread: a handle used off the thread that
    /// owns it is a bug of ours, and continuing could corrupt the handle.
    public func preconditionCurrent(_ what: @autoclosure () -> String, file: StaticString = #fileID, line: UInt = #line) {
        precondition(isCurrent, "\(what()) used off its owner thread \(name)", file: file, line: line)
    }

    /// Sets the batch source (once, before anything is queued for it).
    public func setBatches(_ source: any Batches) {
        condition.withLock {
            precondition(batches == nil, "an owner thread has one batch source")
            batches = source
        }
    }

    /// Runs `body` with the thread's lock held, then wakes the thread: for the batch source's
    /// producers. `body` must not block.
    public func withLock<T>(_ body: () throws -> T) rethrows -> T {
        condition.lock()
        defer {
            condition.signal()
            condition.unlock()
        }
        return try body()
    }

    // MARK: Jobs

    /// Queues `job`; it runs on the thread after the jobs queued before it. A job submitted
    /// after `stop()` is a bug of ours (a handle used after its owner closed it).
    public func submit(_ job: @escaping @Sendable () -> Void) {
        condition.lock()
        precondition(!stopped, "job submitted to the stopped owner thread \(name)")
        jobs.append(.closure(job))
        condition.signal()
        condition.unlock()
    }

    /// Runs `body` on the thread and returns its result to the awaiting task; inline when the
    /// caller already runs on the thread (a task that prefers this executor, or a job).
    /// Throws `OwnerThreadStopped` after `stop()`.
    public func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        if isCurrent { return try body() }
        return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, Error>) in
            condition.lock()
            if stopped {
                condition.unlock()
                continuation.resume(throwing: OwnerThreadStopped(thread: name))
                return
            }
            jobs.append(.closure { continuation.resume(with: Result { try body() }) })
            condition.signal()
            condition.unlock()
        }
    }

    /// Lets the thread finish the queued jobs and batches, run `tearDown` and exit. Does not wait.
    public func stop() {
        markStopped()?.detach()
    }

    /// `stop()`, then waits until the thread has ended, thread-local destructors included (not
    /// on the thread itself). Before a process exits: a C library's per-thread cleanup (OpenSSL's,
    /// under Connector/C) racing the process's exit handlers crashed `fieldlog-backend audit`.
    /// Returns at once when the thread was already stopped with `stop()` (it was detached).
    public func stopAndWait() {
        precondition(!isCurrent, "the owner thread \(name) cannot wait for itself")
        markStopped()?.join()
    }

    /// Stops the loop and hands out the pthread handle, to the first caller only.
    private func markStopped() -> OSThread.Joinable? {
        condition.lock()
        defer {
            condition.signal()
            condition.unlock()
        }
        stopped = true
        let unjoined = handle
        handle = nil
        return unjoined
    }

    // MARK: The loop

    private func loop() {
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
            let timerDeadline = earliestTimer()
            if let batches {
                switch batches.nextBatch(now: .now) {
                case .none:
                    break
                case .run(let body):
                    condition.unlock()
                    body()
                    condition.lock()
                    continue
                case .wait(let deadline):
                    // Woken (a job, a wake-up, a timer) or the deadline passed: look again, jobs first.
                    _ = condition.wait(until: min(deadline, timerDeadline ?? deadline))
                    continue
                }
            }
            if stopped {
                exited = true
                let sleepers = timers.values
                timers.removeAll()
                batches = nil
                condition.unlock()
                // Nothing runs here any more: wake the sleepers early (they see no cancellation).
                for t in sleepers { t.continuation.resume() }
                return
            }
            if let deadline = timerDeadline {
                _ = condition.wait(until: deadline)
            } else {
                condition.wait()
            }
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
    private func earliestTimer() -> ContinuousClock.Instant? {
        timers.values.map(\.deadline).min()
    }

    // MARK: TimedTaskExecutor

    public func sleep(until deadline: ContinuousClock.Instant) async throws {
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

    public func enqueue(_ job: consuming ExecutorJob) {
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
