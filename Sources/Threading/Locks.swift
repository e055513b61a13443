// The two locks of the concurrency model (docs/concurrency.md) that `Synchronization` does not
// have, over pthreads.
//
// Small shared state is a `Mutex` (or an `Atomic`) from Synchronization: the state lives inside
// the lock and cannot be reached without it. What is left here:
// - `ConditionLock`, a mutex with a condition variable on the monotonic clock, for the loops
//   of our own OS threads that wait for work or for a deadline (`OwnerThread`, the MQTT
//   network thread). Nothing else waits on a lock.
// - `Lock`, a mutex as a class, for the few classes whose guarded state is spread over several
//   stored properties (docs/concurrency.md lists them). New code keeps such state in one
//   `Mutex<State>` instead.
//
// Why not Foundation's NSLock and NSCondition: the device program links FoundationEssentials
// only (docs/device.md, "Binary size"); full Foundation and its ICU data are most of a
// statically linked binary.
import FieldlogCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A mutual-exclusion lock (pthread mutex) as a class. Prefer `Mutex<State>`; see the top of this file.
// @unchecked: the pthread mutex is the synchronisation, and it lives at a stable heap address.
public final class Lock: @unchecked Sendable {
    fileprivate let mutex: UnsafeMutablePointer<pthread_mutex_t>

    public init() {
        mutex = .allocate(capacity: 1)
        let rc = pthread_mutex_init(mutex, nil)
        precondition(rc == 0, "pthread_mutex_init failed: \(rc)")
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    public func lock() { pthread_mutex_lock(mutex) }
    public func unlock() { pthread_mutex_unlock(mutex) }

    @discardableResult
    public func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock()
        defer { unlock() }
        return try body()
    }
}

/// A lock with a condition variable (a `Lock` and a pthread cond on the monotonic clock), for
/// the loop of an OS thread of ours: `wait` releases the lock while waiting and holds it again
/// on return.
// @unchecked: the mutex is the synchronisation; the cond lives at a stable heap address.
public final class ConditionLock: @unchecked Sendable {
    private let base = Lock()
    private let cond: UnsafeMutablePointer<pthread_cond_t>

    public init() {
        cond = .allocate(capacity: 1)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        #if !canImport(Darwin)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)  // deadlines immune to wall-clock steps
        #endif
        let rc = pthread_cond_init(cond, &attributes)
        pthread_condattr_destroy(&attributes)
        precondition(rc == 0, "pthread_cond_init failed: \(rc)")
    }

    deinit {
        pthread_cond_destroy(cond)
        cond.deallocate()
    }

    public func lock() { base.lock() }
    public func unlock() { base.unlock() }

    @discardableResult
    public func withLock<T>(_ body: () throws -> T) rethrows -> T { try base.withLock(body) }

    /// Waits for a signal (spurious wake-ups happen: wait in a loop over the condition).
    public func wait() { pthread_cond_wait(cond, base.mutex) }

    /// Waits for a signal until `deadline`; false when the deadline passed.
    @discardableResult
    public func wait(until deadline: ContinuousClock.Instant) -> Bool {
        let remaining = deadline - .now
        guard remaining > .zero else { return false }
        var ts = timespec()
        #if canImport(Darwin)
        clock_gettime(CLOCK_REALTIME, &ts)
        #else
        clock_gettime(CLOCK_MONOTONIC, &ts)
        #endif
        let wait = remaining.timespecValue
        var nanoseconds = ts.tv_nsec + wait.tv_nsec
        ts.tv_sec += wait.tv_sec + nanoseconds / 1_000_000_000
        nanoseconds %= 1_000_000_000
        ts.tv_nsec = nanoseconds
        return pthread_cond_timedwait(cond, base.mutex, &ts) == 0
    }

    public func signal() { pthread_cond_signal(cond) }
    public func broadcast() { pthread_cond_broadcast(cond) }
}
