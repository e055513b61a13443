// DatabaseClient: one live connection to the first answering server of a list, with failover.
//
// Theory of operation: `store()` returns the current connection's Store, connecting first if
// there is none: it tries the addresses in order starting at the current one, each once, and
// throws the last error when none answers. `failed()` drops the connection and moves to the
// next address, so after a node dies the next attempt goes elsewhere (a Galera cluster: any
// node takes writes; a commit there is certified cluster-wide before it returns).
// `withRetry` is the ingest policy on top: deadlocks / certification conflicts (1213) are
// retried with a short backoff on the same connection; any other failure drops the connection
// and retries with exponential backoff, forever, until the task is cancelled. The caller acks
// only what `withRetry` returned from, i.e. what committed.
import FieldlogCore
import Foundation
import Logging
import MariaDB

actor DatabaseClient {
    let settings: DatabaseSettings
    let logger: Logger
    private var index = 0
    private var current: Store?

    init(settings: DatabaseSettings, logger: Logger) {
        precondition(!settings.addresses.isEmpty, "no database address")
        self.settings = settings
        self.logger = logger
    }

    /// The address in use (or tried next).
    var address: DatabaseAddress { settings.addresses[index] }

    /// The connected store; connects (with failover along the list) when there is none.
    func store() async throws -> Store {
        if let current { return current }
        var lastError: Error?
        for attempt in 0..<settings.addresses.count {
            let i = (index + attempt) % settings.addresses.count
            let address = settings.addresses[i]
            let connection = MariaDBConnection(configuration: settings.configuration(for: address), logger: logger)
            do {
                try await connection.connect()
                let store = Store(connection: connection)
                try await store.prepareSession()
                index = i
                current = store
                logger.info("connected to MariaDB", metadata: ["address": "\(address)"])
                return store
            } catch {
                await connection.close()
                logger.warning("MariaDB at \(address) is not answering: \(error)")
                lastError = error
            }
        }
        throw lastError!
    }

    /// Drops the connection (after a failure) and moves to the next address.
    func failed() async {
        if let current { await current.connection.close() }
        current = nil
        index = (index + 1) % settings.addresses.count
    }

    func close() async {
        if let current { await current.connection.close() }
        current = nil
    }
}

/// The retry policy of the write path.
struct RetryPolicy: Sendable {
    var backoffFirst: Duration
    var backoffMax: Duration
    var deadlockRetries: Int

    init(_ s: IngestSettings) {
        backoffFirst = s.reconnectBackoffFirst
        backoffMax = s.reconnectBackoffMax
        deadlockRetries = s.deadlockRetries
    }

    /// Runs `body` until it succeeds; see the theory of operation above. Throws only
    /// `CancellationError` (shutdown), so a caller never acks on a failure path.
    func run<T: Sendable>(_ what: String, database: DatabaseClient, metrics: BackendMetrics, logger: Logger,
                          _ body: @Sendable (Store) async throws -> T) async throws -> T {
        var backoff = backoffFirst
        var deadlocks = 0
        while true {
            try Task.checkCancellation()
            do {
                let store = try await database.store()
                return try await body(store)
            } catch let error as MariaDBError where error.isDeadlock && deadlocks < deadlockRetries {
                deadlocks += 1
                metrics.deadlockRetries.increment()
                logger.debug("\(what): deadlock or certification conflict, retry \(deadlocks)", metadata: ["error": "\(error)"])
                // 5 ms, 10 ms, 20 ms, … up to 640 ms, with jitter so two losers do not collide again.
                let baseMs = 5 << min(deadlocks - 1, 7)
                try await Task.sleep(for: .milliseconds(Int.random(in: baseMs / 2...baseMs)))
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                deadlocks = 0
                metrics.databaseReconnects.increment()
                logger.error("\(what) failed; nothing of it is acked; reconnecting in \(backoff)", metadata: ["error": "\(error)"])
                await database.failed()
                try await Task.sleep(for: backoff)
                backoff = min(backoff * 2, backoffMax)
            }
        }
    }
}
