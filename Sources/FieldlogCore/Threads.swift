// Locks, a condition variable and OS threads over pthreads, for the device-side modules.
//
// Why not Foundation's NSLock, NSCondition and Thread: the device program links
// FoundationEssentials only (docs/device.md, "Binary size"); full Foundation and the ICU data it
// brings are most of a statically linked binary. These are the few pieces of it the modules
// used, with the same shapes, so call sites stay as they were.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A mutual-exclusion lock (pthread mutex), like NSLock.
public final class Lock: @unchecked Sendable {
    // @unchecked: the mutex is the synchronisation; it lives at a stable heap address.
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

/// A lock with a condition variable (a `Lock` and a pthread cond on the monotonic clock), like
/// NSCondition: `wait` releases the lock while waiting and holds it again on return.
public final class ConditionLock: @unchecked Sendable {
    // @unchecked: the lock is the synchronisation; the cond lives at a stable heap address.
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
        let (seconds, attoseconds) = remaining.components
        var nanoseconds = Int(ts.tv_nsec) + Int(attoseconds / 1_000_000_000)
        ts.tv_sec += Int(seconds) + nanoseconds / 1_000_000_000
        nanoseconds %= 1_000_000_000
        ts.tv_nsec = nanoseconds
        return pthread_cond_timedwait(cond, base.mutex, &ts) == 0
    }

    public func signal() { pthread_cond_signal(cond) }
    public func broadcast() { pthread_cond_broadcast(cond) }
}

/// Detached OS threads (pthreads), like Foundation's Thread, for loops that block in C calls.
public enum OSThread {
    private final class Start {
        let name: String
        let body: () -> Void
        init(name: String, body: @escaping () -> Void) {
            self.name = name
            self.body = body
        }
    }

    /// Starts `body` on a new detached thread named `name` (the first 15 bytes show in `top -H`),
    /// with a stack of `stackSize` bytes (nil: the system's default).
    public static func start(name: String, stackSize: Int? = nil, _ body: @escaping @Sendable () -> Void) {
        let start = Unmanaged.passRetained(Start(name: name, body: body)).toOpaque()
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
        if let stackSize { pthread_attr_setstacksize(&attributes, stackSize) }
        defer { pthread_attr_destroy(&attributes) }
        #if canImport(Darwin)
        var thread: pthread_t?
        #else
        var thread = pthread_t()
        #endif
        let rc = pthread_create(&thread, &attributes, { context in
            let start = Unmanaged<Start>.fromOpaque(context!).takeRetainedValue()
            OSThread.setCurrentThreadName(start.name)
            start.body()
            return nil
        }, start)
        // Out of threads is out of a resource the process cannot run without.
        precondition(rc == 0, "pthread_create failed for \(name): \(String(cString: strerror(rc)))")
    }

    /// Names the calling thread (glibc's pthread_setname_np is not visible to Swift without
    /// _GNU_SOURCE; the kernel takes the name through /proc as well). Best effort.
    fileprivate static func setCurrentThreadName(_ name: String) {
        #if canImport(Darwin)
        pthread_setname_np(name)
        #else
        let fd = open("/proc/thread-self/comm", O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        let bytes = Array(name.utf8.prefix(15))
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        #endif
    }

    /// Blocks the calling OS thread for `duration` (never call it on the cooperative pool).
    public static func sleep(_ duration: Duration) {
        guard duration > .zero else { return }
        var request = duration.timespecValue
        var remaining = timespec()
        while nanosleep(&request, &remaining) == -1 && errno == EINTR { request = remaining }
    }
}
