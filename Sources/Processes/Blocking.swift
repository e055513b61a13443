// Blocking calls from async code, without blocking Swift's cooperative pool: the call runs on
// a thread of its own and the caller awaits its result. For the few slow, blocking steps of
// the lab, the benchmarks and the tests (a tool run to completion, a process waited for, a
// file database read); not for anything called thousands of times a second.
import Foundation

/// Runs `body` on a new thread and returns (or throws) what it did. Cancellation of the
/// awaiting task does not interrupt `body`; it runs to its end.
public func runBlocking<T: Sendable>(_ name: String = "blocking", _ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread { continuation.resume(with: Result { try body() }) }
        thread.name = name
        thread.start()
    }
}

/// `runBlocking` for a body that cannot fail.
public func runBlocking<T: Sendable>(_ name: String = "blocking", _ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        let thread = Thread { continuation.resume(returning: body()) }
        thread.name = name
        thread.start()
    }
}
