// The executor preference of the running task, for unstructured tasks that should run where
// their creator runs (`Task {}` does not inherit it; child tasks do).
//
// Why: `fieldlog-device` runs its services on the log's own thread (DeviceNode.run). A timer or
// publish task created with plain `Task {}` lands on Swift's pool instead, and every such task
// costs a wake-up of a pool thread and another of the log's thread when it is done.

/// The task executor the current task prefers, if any.
public func currentTaskExecutorPreference() -> (any TaskExecutor)? {
    withUnsafeCurrentTask { $0?.unownedTaskExecutor?.asTaskExecutor() }
}
