// OS threads (pthreads), for the loops that block in C calls, and the identity of a thread,
// for the checks that a C handle is used on the thread that owns it (docs/concurrency.md).
import FieldlogCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

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
        _ = create(name: name, stackSize: stackSize, detached: true, body)
    }

    /// A thread that must be joined or detached (`Joinable.join()`, `Joinable.detach()`), once.
    struct Joinable: @unchecked Sendable {
        // @unchecked: a pthread handle; the owner (OwnerThread) calls join or detach once, under its lock.
        #if canImport(Darwin)
        fileprivate let thread: pthread_t?
        #else
        fileprivate let thread: pthread_t
        #endif
        /// Waits until the thread has ended, its thread-local destructors included.
        func join() {
            #if canImport(Darwin)
            if let thread { pthread_join(thread, nil) }
            #else
            pthread_join(thread, nil)
            #endif
        }
        /// Lets the thread end on its own.
        func detach() {
            #if canImport(Darwin)
            if let thread { pthread_detach(thread) }
            #else
            pthread_detach(thread)
            #endif
        }
    }

    /// Starts `body` on a new joinable thread, like `start`.
    static func startJoinable(name: String, stackSize: Int? = nil, _ body: @escaping @Sendable () -> Void) -> Joinable {
        Joinable(thread: create(name: name, stackSize: stackSize, detached: false, body))
    }

    #if canImport(Darwin)
    private typealias Handle = pthread_t?
    #else
    private typealias Handle = pthread_t
    #endif

    private static func create(name: String, stackSize: Int?, detached: Bool, _ body: @escaping @Sendable () -> Void) -> Handle {
        let start = Unmanaged.passRetained(Start(name: name, body: body)).toOpaque()
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        pthread_attr_setdetachstate(&attributes, Int32(detached ? PTHREAD_CREATE_DETACHED : PTHREAD_CREATE_JOINABLE))
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
        return thread
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

/// Which OS thread something belongs to: set by that thread, checked from any thread.
/// One atomic load and a compare, cheap enough for a check on every call of a C handle.
public final class ThreadIdentity: Sendable {
    /// The owning thread's pthread id as a number; 0 while no thread owns it.
    private let id = Atomic<UInt>(0)

    public init() {}

    /// Makes the calling thread the owner.
    public func setToCurrentThread() { id.store(Self.currentThread, ordering: .releasing) }

    /// No thread owns it any more (the thread ended).
    public func clear() { id.store(0, ordering: .releasing) }

    /// True when called on the owning thread.
    public var isCurrent: Bool {
        let owner = id.load(ordering: .acquiring)
        return owner != 0 && owner == Self.currentThread
    }

    /// Stops the process when not called on the owning thread (a call only that thread may
    /// make, made elsewhere, is a bug of ours that could corrupt a C handle).
    public func preconditionCurrent(_ what: @autoclosure () -> String = "a call of the owning thread",
                                    file: StaticString = #fileID, line: UInt = #line) {
        precondition(isCurrent, "\(what()) made off the thread that owns it", file: file, line: line)
    }

    /// The calling thread's pthread id as a number (pthread_t is an integer on glibc and a
    /// pointer on Darwin and musl; either way one machine word, never 0 for a live thread).
    private static var currentThread: UInt {
        #if canImport(Glibc)
        pthread_self()
        #else
        unsafeBitCast(pthread_self(), to: UInt.self)
        #endif
    }
}
