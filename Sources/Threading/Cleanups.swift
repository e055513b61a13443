// Async cleanup, structured: what `defer { Task { await x.close() } }` wanted to be.
//
// A `defer` cannot await, and a `Task {}` started in one is never awaited: the scope (and often
// the process) ends before the close ran. `withCleanups` runs its body, then every cleanup the
// body registered, last first, and awaits them, whether the body returned or threw.

/// The cleanups of one `withCleanups` scope, run last-in first-out when it ends.
public final class Cleanups {
    private var actions: [() async -> Void] = []

    fileprivate init() {}

    /// Registers `action` to run (and be awaited) when the scope ends.
    public func add(_ action: @escaping () async -> Void) {
        actions.append(action)
    }

    fileprivate func run() async {
        while let action = actions.popLast() { await action() }
    }
}

/// Runs `body`; when it returns or throws, runs and awaits the cleanups it registered, last first.
public func withCleanups<T>(isolation: isolated (any Actor)? = #isolation,
                            _ body: (Cleanups) async throws -> T) async rethrows -> T {
    let cleanups = Cleanups()
    do {
        let result = try await body(cleanups)
        await cleanups.run()
        return result
    } catch {
        await cleanups.run()
        throw error
    }
}
