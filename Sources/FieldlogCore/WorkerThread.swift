// A dedicated OS thread that runs submitted jobs one at a time, in order.
//
// Why: C client calls block (network round trips, connect timeouts). Swift's cooperative
// pool has one thread per core; a blocked call there stalls unrelated tasks. Every async
// Connector/C and hiredis call of a connection runs on that connection's worker (the MariaDB
// one also did mysql_thread_init there).
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public final class WorkerThread: @unchecked Sendable {
    // @unchecked: `jobs` and `stopping` are only touched under `condition`; the thread itself
    // is the only reader of the job closures after they are dequeued.
    private let condition = ConditionLock()
    private var jobs: [@Sendable () -> Void] = []
    private var stopping = false
    private let threadIDBox = ThreadIDBox()

    /// - Parameters:
    ///   - setUp: runs first on the new thread (e.g. mysql_thread_init).
    ///   - tearDown: runs last on the thread, after every queued job ran.
    public init(name: String, setUp: @escaping @Sendable () -> Void = {}, tearDown: @escaping @Sendable () -> Void = {}) {
        OSThread.start(name: name) { [condition, threadIDBox] in
            threadIDBox.set(pthread_self())
            setUp()
            while true {
                condition.lock()
                while self.jobs.isEmpty && !self.stopping { condition.wait() }
                if self.jobs.isEmpty && self.stopping {
                    condition.unlock()
                    break
                }
                let batch = self.jobs
                self.jobs.removeAll(keepingCapacity: true)
                condition.unlock()
                for job in batch { job() }
            }
            tearDown()
        }
    }

    /// Queues `job`; it runs on the worker thread after every job queued before it.
    public func submit(_ job: @escaping @Sendable () -> Void) {
        condition.lock()
        precondition(!stopping, "job submitted to a stopped worker thread")
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    /// Lets the thread finish the queued jobs, run `tearDown` and exit. Does not wait.
    public func stop() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }

    /// Runs `body` on the worker thread and returns its result to the awaiting task.
    public func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, Error>) in
            submit { continuation.resume(with: Result { try body() }) }
        }
    }

    /// True when called on the worker thread itself.
    public var isCurrent: Bool { threadIDBox.isCurrent }
}

/// The pthread id of the worker, published once it started.
private final class ThreadIDBox: @unchecked Sendable {
    // @unchecked: `id` is only touched under `lock`.
    private let lock = Lock()
    private var id: pthread_t?
    func set(_ value: pthread_t) { lock.withLock { id = value } }
    var isCurrent: Bool {
        lock.withLock { id.map { pthread_equal($0, pthread_self()) != 0 } ?? false }
    }
}
