// The pieces of the concurrency model (docs/concurrency.md): owner threads, thread-confined
// owners, structured cleanups and timeouts. No services needed.
import Synchronization
import Threading
import XCTest

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
