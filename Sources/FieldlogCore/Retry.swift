// Retrying: the one loop that runs an operation until it works, waiting longer after each
// failure. Used where a program waits for a service it cannot do without (the broker, the
// database) and for the device's first broker connection.

/// Runs an operation until it succeeds, waiting `delay(failures)` after each failure.
public struct Retrying: Sendable {
    /// The wait after the n-th failure in a row (n ≥ 1).
    public var delay: @Sendable (_ failures: Int) -> Duration

    public init(delay: @escaping @Sendable (_ failures: Int) -> Duration) { self.delay = delay }

    /// `first` after the first failure, doubling after each further one, at most `max`.
    public init(first: Duration = .milliseconds(200), max: Duration = .seconds(5)) {
        precondition(first > .zero && max >= first, "retry delays must satisfy 0 < first ≤ max")
        delay = { failures in
            var d = first, doublings = failures - 1
            while doublings > 0 && d < max {
                d = d * 2
                doublings -= 1
            }
            return Swift.min(d, max)
        }
    }

    /// Runs `operation` until it returns. After a failure that `retryable` accepts (every one,
    /// unless given), calls `failed(error, failures, wait)` and waits; any other error ends it
    /// and is thrown, and so is `CancellationError` when the task is cancelled while waiting.
    @discardableResult
    public func run<T>(if retryable: (any Error) -> Bool = { _ in true },
                       failed: (_ error: any Error, _ failures: Int, _ wait: Duration) -> Void = { _, _, _ in },
                       _ operation: () async throws -> T) async throws -> T {
        var failures = 0
        while true {
            do {
                return try await operation()
            } catch where retryable(error) {
                failures += 1
                let wait = delay(failures)
                failed(error, failures, wait)
                try await Task.sleep(for: wait)
            }
        }
    }
}
