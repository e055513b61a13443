// Bounding how long a task waits, structurally: the body and a timer are two child tasks of
// one group, and whichever ends first cancels the other. The group returns only when both
// ended, so the body must end promptly when cancelled (every wait of our clients does:
// docs/concurrency.md), or the timeout cannot take effect.

/// `withTimeout` gave up: the body did not finish within `timeout`.
public struct TimeoutError: Error, CustomStringConvertible, Sendable {
    public let timeout: Duration
    public var description: String { "no result within \(timeout)" }
}

/// Runs `body`; when it has not finished after `timeout`, cancels it and throws `TimeoutError`.
/// The body's own errors (its `CancellationError` when the caller was cancelled) pass through.
public func withTimeout<T: Sendable>(_ timeout: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await executorSleep(for: timeout)
            throw TimeoutError(timeout: timeout)
        }
        defer { group.cancelAll() }
        return try await group.next()!
    }
}
