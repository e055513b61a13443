// ThreadConfined: how every C handle is held (docs/concurrency.md).
//
// The owner of a handle (`SQLiteConnection`, `MariaDBSession`, the hiredis context) is a plain,
// non-Sendable class: the compiler keeps it from crossing threads. `ThreadConfined` is the one
// Sendable reference to it: tasks go through `run` (a job on the owner thread, or inline when
// already there), code on the thread through `withValue`, and both check that they run on the
// thread. So a handle is only ever touched by the thread that owns it, and a mistake stops
// the process at the wrong call instead of corrupting the handle.

/// A non-Sendable owner of a C handle, confined to one `OwnerThread`.
// `init` takes the value as `sending`, so its creator keeps no other reference to use.
// @unchecked: `value` is only used on `thread`, and every access checks it (`withValue`).
public final class ThreadConfined<Value: AnyObject>: @unchecked Sendable {
    /// The thread that owns the value.
    public let thread: OwnerThread
    private let value: Value

    /// Confines `value` to `thread`. It may be made on another thread, but must not be used
    /// there afterwards (`sending`).
    public init(_ value: sending Value, on thread: OwnerThread) {
        self.value = value
        self.thread = thread
    }

    /// On the owner thread: `body` with the value. Stops the process when called elsewhere.
    public func withValue<R>(file: StaticString = #fileID, line: UInt = #line, _ body: (Value) throws -> R) rethrows -> R {
        thread.preconditionCurrent("\(Value.self)", file: file, line: line)
        return try body(value)
    }

    /// From any task: runs `body` with the value on the owner thread (inline when already
    /// there) and returns its result. Throws `OwnerThreadStopped` when the thread was stopped.
    public func run<R: Sendable>(_ body: @escaping @Sendable (Value) throws -> R) async throws -> R {
        try await thread.run { try self.withValue(body) }
    }

    /// Queues `body` with the value on the owner thread without waiting (closing in a deinit).
    public func submit(_ body: @escaping @Sendable (Value) -> Void) {
        thread.submit { self.withValue(body) }
    }
}
