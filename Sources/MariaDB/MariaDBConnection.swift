// An async MariaDB connection whose blocking Connector/C calls run on a thread of its own.
//
// Theory of operation: one `MariaDBConnection` = one `OwnerThread` + one `MariaDBSession`
// (the MYSQL* owner) confined to it (docs/concurrency.md). Each async method queues a job on
// the thread and suspends until the job is done, so the cooperative pool never blocks on the
// network. Every blocking call is bounded by the configuration's connect, read and write
// timeouts: that bound is how long a cancelled task or a shutdown may wait for a job.
// Jobs run one at a time in submission order; `withSession`/`transaction` run a whole block
// of synchronous calls as one job, so nothing of another caller interleaves with it.
// A lost connection (see `MariaDBError.isConnectionLost`) closes the handle; the caller
// decides when to `reconnect()` (never silently, which would drop an open transaction).
import FieldlogCore
import Foundation
import Logging
import Synchronization
import Threading

/// One connection to a MariaDB server, usable from any task.
public final class MariaDBConnection: Sendable {
    private let session: ThreadConfined<MariaDBSession>
    /// The configuration it was created with.
    public let configuration: MariaDBConfiguration

    /// Creates the connection's owner thread; call `connect()` to open the connection.
    public init(configuration: MariaDBConfiguration, logger: Logger = Logger(label: "fieldlog.mariadb")) {
        self.configuration = configuration
        let thread = OwnerThread(name: "mariadb \(configuration.endpointDescription)",
                                 setUp: MariaDBSession.threadSetUp, tearDown: MariaDBSession.threadTearDown)
        session = ThreadConfined(MariaDBSession(configuration: configuration, thread: thread, logger: logger), on: thread)
    }

    /// Creates a connection and connects it.
    public static func connect(configuration: MariaDBConfiguration,
                               logger: Logger = Logger(label: "fieldlog.mariadb")) async throws -> MariaDBConnection {
        let connection = MariaDBConnection(configuration: configuration, logger: logger)
        try await connection.connect()
        return connection
    }

    deinit {
        guard !isShutDown.load(ordering: .acquiring) else { return }
        session.submit { $0.close() }
        session.thread.stop()
    }

    /// Set by `shutdown()`: the owner thread has ended.
    private let isShutDown = Atomic<Bool>(false)

    /// Closes the connection and ends its owner thread, waiting until the thread is gone (its
    /// thread-local cleanup included). Call it last, before a process exits: `deinit` only
    /// asks the thread to stop, and a thread still ending while `exit` runs the libraries'
    /// exit handlers (OpenSSL's, under Connector/C) crashed `fieldlog-backend audit` (SIGABRT,
    /// "malloc_consolidate(): invalid chunk size", or SIGSEGV in libcrypto). The connection
    /// cannot be used afterwards.
    public func shutdown() async {
        await close()
        guard !isShutDown.exchange(true, ordering: .acquiringAndReleasing) else { return }
        session.thread.stopAndWait()
    }

    /// Opens the connection (no-op when open). Throws a `MariaDBError` naming the endpoint.
    public func connect() async throws {
        try await session.run { try $0.connect() }
    }

    /// Drops the current connection, dead or alive, and opens a new one. Prepared statements
    /// and session state (open transaction, variables) are gone afterwards.
    public func reconnect() async throws {
        try await session.run { try $0.reconnect() }
    }

    /// Closes the connection for good; later calls throw.
    public func close() async {
        _ = try? await session.run { $0.close() }
    }

    /// Runs `body` with synchronous access to the connection, on its owner thread, as one job:
    /// no other call on this connection runs in between.
    @discardableResult
    public func withSession<T: Sendable>(_ body: @escaping @Sendable (MariaDBSession) throws -> T) async throws -> T {
        try await session.run(body)
    }

    /// Runs `body` inside a transaction: commits when it returns, rolls back when it throws
    /// (and rethrows its error). A deadlock (`isDeadlock`) means the whole block may be retried.
    @discardableResult
    public func transaction<T: Sendable>(_ body: @escaping @Sendable (MariaDBSession) throws -> T) async throws -> T {
        try await withSession { session in
            try session.begin()
            do {
                let value = try body(session)
                try session.commit()
                return value
            } catch {
                if session.isOpen { try? session.rollback() }
                throw error
            }
        }
    }

    /// Runs one SQL statement without parameters (text protocol).
    @discardableResult
    public func query(_ sql: String) async throws -> MariaDBResult {
        try await withSession { try $0.query(sql) }
    }

    /// Runs a prepared statement (cached by its SQL text) with typed values for its `?` markers.
    @discardableResult
    public func execute(_ sql: String, _ binds: [MariaDBValue] = []) async throws -> MariaDBResult {
        try await withSession { try $0.execute(sql, binds) }
    }

    /// Multi-row insert: see `MariaDBSession.insertRows(_:rows:suffix:maxRowsPerStatement:)`.
    @discardableResult
    public func insertRows(_ insertPrefix: String, rows: [[MariaDBValue]], suffix: String = "",
                           maxRowsPerStatement: Int = 500) async throws -> UInt64 {
        try await withSession {
            try $0.insertRows(insertPrefix, rows: rows, suffix: suffix, maxRowsPerStatement: maxRowsPerStatement)
        }
    }

    /// Array-bound insert: see `MariaDBSession.insertBulk(_:rows:rowsPerExecute:)`.
    @discardableResult
    public func insertBulk(_ insertPrefix: String, rows: [[MariaDBValue]], rowsPerExecute: Int = 1000) async throws -> UInt64 {
        try await withSession { try $0.insertBulk(insertPrefix, rows: rows, rowsPerExecute: rowsPerExecute) }
    }

    /// The server's id for this connection (for `KILL CONNECTION` and the process list).
    public func connectionID() async throws -> UInt64 {
        try await withSession { try $0.connectionID() }
    }

    /// Checks that the server still answers.
    public func ping() async throws {
        try await withSession { try $0.ping() }
    }
}
