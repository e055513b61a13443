// Task executors with timers of their own, and the preference of the running task.
//
// Why: `fieldlog-device` runs its services on the log's own thread (DeviceNode.run). A child
// task inherits that preference; `Task.sleep` does not use it: it goes through dispatch (its
// manager thread, then a pool thread, then the task's executor), three thread wake-ups per
// sleep, where `executorSleep` costs none (docs/concurrency.md).

/// The task executor the current task prefers, if any.
public func currentTaskExecutorPreference() -> (any TaskExecutor)? {
    withUnsafeCurrentTask { $0?.unownedTaskExecutor?.asTaskExecutor() }
}

/// A task executor with timers of its own: a task that prefers it can sleep and be woken by
/// the executor's thread itself. `Task.sleep` goes through dispatch instead: its manager
/// thread, then a pool thread, then the task's executor, three thread wake-ups per sleep (a
/// sampler at 100 readings/s sleeps 100 times a second).
public protocol TimedTaskExecutor: TaskExecutor {
    /// Suspends until `deadline`; throws `CancellationError` when the task is cancelled first.
    func sleep(until deadline: ContinuousClock.Instant) async throws
}

/// `Task.sleep(for:)`, on the preferred executor's own timers when it has them.
public func executorSleep(for duration: Duration) async throws {
    try await executorSleep(until: .now + duration)
}

/// `Task.sleep(until:clock: .continuous)`, on the preferred executor's own timers when it has them.
public func executorSleep(until deadline: ContinuousClock.Instant) async throws {
    if let timed = currentTaskExecutorPreference() as? any TimedTaskExecutor {
        try await timed.sleep(until: deadline)
    } else {
        try await Task.sleep(until: deadline, clock: .continuous)
    }
}
