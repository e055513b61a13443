// The pieces of the concurrency model (docs/concurrency.md): owner threads, thread-confined
// owners, structured cleanups and timeouts. No services needed.
#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import Threading
import XCTest

/// Thread-local destructors of the test below that have finished.
private let destructorsFinished = Atomic<Int>(0)

final class ThreadingTests: XCTestCase {
    /// A stand-in for the owner of a C handle: not Sendable, counts its uses.
    final class Owner {
        var uses = 0
    }

    func testJobsRunOnTheOwnerThreadInOrderAndThrowAfterStop() async throws {
        let thread = OwnerThread(name: "test-owner")
        XCTAssertFalse(thread.isCurrent)
        let onThread = try await thread.run { thread.isCurrent }
        XCTAssertTrue(onThread, "a job runs on the owner thread")
        let order = Mutex<[Int]>([])
        for i in 0..<100 { thread.submit { order.withLock { $0.append(i) } } }
        _ = try await thread.run { 0 }  // after the 100 jobs
        XCTAssertEqual(order.withLock { $0 }, Array(0..<100))
        thread.stop()
        do {
            _ = try await thread.run { 1 }
            XCTFail("a stopped owner thread runs nothing")
        } catch let error as OwnerThreadStopped {
            XCTAssertEqual(error.thread, "test-owner")
        }
    }

    /// `stopAndWait` returns only when the thread has ended, its thread-local destructors
    /// included (a C library's per-thread cleanup must not race the process's exit); `stop`
    /// does not wait, and a later `stopAndWait` then returns at once.
    func testStopAndWaitReturnsAfterTheThreadsLocalDestructorsRan() async throws {
        #if canImport(Glibc)
        var key = pthread_key_t()
        XCTAssertEqual(pthread_key_create(&key) { _ in
            usleep(200_000)
            destructorsFinished.add(1, ordering: .sequentiallyConsistent)
        }, 0)
        let k = key
        let setUp: @Sendable () -> Void = { _ = pthread_setspecific(k, UnsafeRawPointer(bitPattern: 1)) }
        let waited = OwnerThread(name: "test-wait", setUp: setUp)
        _ = try await waited.run { 0 }
        waited.stopAndWait()
        XCTAssertEqual(destructorsFinished.load(ordering: .sequentiallyConsistent), 1, "stopAndWait returned before the thread had ended")
        let detached = OwnerThread(name: "test-detach", setUp: setUp)
        _ = try await detached.run { 0 }
        detached.stop()
        detached.stopAndWait()
        XCTAssertEqual(destructorsFinished.load(ordering: .sequentiallyConsistent), 1, "after stop, stopAndWait does not wait")
        try await Task.sleep(for: .milliseconds(600))
        XCTAssertEqual(destructorsFinished.load(ordering: .sequentiallyConsistent), 2)
        #endif
    }

    func testAConfinedOwnerIsReachedOnItsThreadOnly() async throws {
        let thread = OwnerThread(name: "test-confined")
        defer { thread.stop() }
        let confined = ThreadConfined(Owner(), on: thread)
        let uses = try await confined.run { owner in
            owner.uses += 1
            // Already on the thread: withValue works there (and would stop the process elsewhere).
            return confined.withValue { $0.uses }
        }
        XCTAssertEqual(uses, 1)
    }

    func testATaskThatPrefersTheOwnerThreadRunsAndSleepsOnIt() async throws {
        let thread = OwnerThread(name: "test-executor")
        defer { thread.stop() }
        let (before, after, inline) = await withTaskExecutorPreference(thread) {
            let before = thread.isCurrent
            try? await executorSleep(for: .milliseconds(10))  // on the thread's own timers
            let after = thread.isCurrent
            let inline = (try? await thread.run { thread.isCurrent }) ?? false
            return (before, after, inline)
        }
        XCTAssertTrue(before)
        XCTAssertTrue(after, "woken by the owner thread's timer, on the owner thread")
        XCTAssertTrue(inline)
    }

    func testWithTimeoutCancelsABodyThatTakesTooLong() async throws {
        let started = ContinuousClock.now
        do {
            try await withTimeout(.milliseconds(50)) { try await Task.sleep(for: .seconds(30)) }
            XCTFail("the body cannot finish in time")
        } catch let error as TimeoutError {
            XCTAssertEqual(error.timeout, .milliseconds(50))
        }
        XCTAssertLessThan(ContinuousClock.now - started, .seconds(5), "the sleeping body was cancelled, not awaited to its end")
        let value = try await withTimeout(.seconds(30)) { 42 }
        XCTAssertEqual(value, 42, "a body that finishes in time returns its value")
    }

    func testCleanupsRunLastFirstAndAreAwaitedWhenTheBodyThrows() async {
        struct Failed: Error {}
        let ran = Mutex<[String]>([])
        do {
            try await withCleanups { cleanups in
                cleanups.add {
                    try? await Task.sleep(for: .milliseconds(20))
                    ran.withLock { $0.append("first registered") }
                }
                cleanups.add { ran.withLock { $0.append("last registered") } }
                throw Failed()
            }
            XCTFail("the body's error passes through")
        } catch {
            XCTAssertTrue(error is Failed)
        }
        XCTAssertEqual(ran.withLock { $0 }, ["last registered", "first registered"], "both ran, last first, before withCleanups returned")
    }
}
