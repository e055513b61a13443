// Log: the device's durable, sequence-numbered log (SQLite).
//
// Theory of operation
// - One SQLite file (WAL) per device: `meta` (format, device id, epoch), `state` (a floor
//   of the head, and acked-through, in one row), `records` (seq, device time, unsynced flag,
//   compact body, CRC-32), `loss_markers` (ranges dropped under the disk quota).
//   `application_id` and `user_version` mark the file as ours and carry the schema version.
// - The head is max(state.head, max(records.seq)). An append transaction only inserts its
//   records (one B-tree page dirtied, one WAL frame, like a bare INSERT); a transaction that
//   deletes records (retention, quota, acks) first raises state.head to the head, so the head
//   survives trimming every record. Schema version 2; version 1 files (state.head updated by
//   every append) are valid version 2 files and are marked as such when opened.
// - Threads: the connection lives on the log's own `OwnerThread`, inside a `ThreadConfined`
//   `LogStore` (docs/concurrency.md); every SQLite call runs there, never on Swift's pool.
// - Appends are group-committed by that thread (GroupCommit.swift): `append` validates and
//   queues the reading, then waits. The thread takes everything queued (up to `maxBatchSize`)
//   into one `BEGIN IMMEDIATE … COMMIT` and resumes the callers after COMMIT returned, i.e.
//   after the fsync under `.full`. Appends that arrive during that fsync form the next batch,
//   so the fsync cost is shared. Tasks that prefer the log's `executor` append without a thread
//   switch.
// - Every append transaction knows the head inside BEGIN IMMEDIATE: it re-reads it unless
//   `PRAGMA data_version` says no other connection committed since this connection's last
//   append transaction, which then fixed the head it holds. Other processes may append or ack
//   in between, and a commit that failed is in doubt (its WAL frames may reappear after
//   recovery), so after a failure the head is always re-read: a sequence number is never
//   handed out twice in one history.
// - Opening is idempotent, so processes may create one file at once: the file is identified
//   in one read transaction, the schema is created only if still missing (inside BEGIN
//   IMMEDIATE), and an open that SQLite refuses as busy without waiting starts again.
// - Invariants (preconditions, durable data): a new record's seq is head + 1; acked ≤ head.
//   Bad input from callers and damage found on disk become thrown `LogError`s.
//
// The files: this one (the type, close, notifications), DeviceLog+Open (open, schema),
// DeviceLog+Append (append, commit), DeviceLog+Quota (the disk quota), DeviceLog+Read (reads),
// DeviceLog+Ack (acks and retention), DeviceLog+Check (fsck), GroupCommit, LogTypes.
import CSQLite
import FieldlogCore
import Logging
import Synchronization
import Threading
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A device's durable, sequence-numbered log in one SQLite file.
///
/// Safe to use from any task. Several `DeviceLog`s (in one or several processes) may open
/// the same file: one appends while another reads and acknowledges.
public final class DeviceLog: Sendable {
    /// Schema version this build writes and reads (it also opens version 1 files, see above).
    public static let schemaVersion: Int64 = 2
    /// `PRAGMA application_id` of Fieldlog device logs ("FLOG").
    static let applicationID: Int32 = 0x464C_4F47
    static let formatName = "fieldlog-device-log"

    public let path: String
    public let deviceID: DeviceID
    public let epoch: Epoch
    public let configuration: LogConfiguration

    let thread: OwnerThread
    /// The connection and what goes with it, on `thread` only.
    let store: ThreadConfined<LogStore>
    let groupCommit: GroupCommit
    let logger: Logger
    /// The closed flag, observers and counters.
    let state = Mutex(SharedState())

    struct SharedState {
        var isClosed = false
        var observers: [UInt64: AsyncStream<SequenceNumber>.Continuation] = [:]
        var nextObserverID: UInt64 = 0
        var statistics = LogStatistics()
    }

    init(path: String, deviceID: DeviceID, epoch: Epoch, configuration: LogConfiguration,
         store: ThreadConfined<LogStore>, logger: Logger) {
        self.path = path
        self.deviceID = deviceID
        self.epoch = epoch
        self.configuration = configuration
        self.thread = store.thread
        self.store = store
        self.logger = logger
        groupCommit = GroupCommit(thread: store.thread, maxBatchSize: configuration.maxBatchSize)
        groupCommit.setCommit { [weak self] batch in self?.commit(batch) }
    }

    /// The log's own thread as a task executor. A task that appends in a loop (a sampler)
    /// can prefer it (`withTaskExecutorPreference(log.executor)`, or
    /// `TaskGroup.addTask(executorPreference:)`): its appends then reach the group commit and
    /// come back without a thread switch, its reads run inline, and `executorSleep` wakes it
    /// from the thread's own timers. Such a task shares the
    /// thread with the log's blocking calls (fsync, waits for another process's lock), so it
    /// must not need to run while the log waits.
    public var executor: any TaskExecutor { thread }

    deinit {
        store.submit { $0.connection.close() }
        thread.stop()
    }

    // MARK: Close

    /// Waits for queued appends, then closes the file. Further calls throw `LogError.closed`.
    public func close() async {
        let alreadyClosed = state.withLock { s in
            defer { s.isClosed = true }
            return s.isClosed
        }
        if alreadyClosed || !groupCommit.close() { return }
        // Appends queued before the close are committed (and answered) first.
        _ = try? await store.run { [self] store in
            var rest = groupCommit.drain()[...]
            while !rest.isEmpty {
                let n = min(rest.count, max(1, configuration.maxBatchSize))
                commit(Array(rest.prefix(n)))
                rest = rest.dropFirst(n)
            }
            store.connection.close()
        }
        finishObservers()
    }

    /// Counters of this `DeviceLog`'s group commits since it was opened.
    public var statistics: LogStatistics { state.withLock { $0.statistics } }

    /// Runs `body` with the connection on the log's thread; SQLite errors become `LogError`s.
    func read<T: Sendable>(_ body: @escaping @Sendable (SQLiteConnection) throws -> T) async throws -> T {
        if state.withLock({ $0.isClosed }) { throw LogError.closed(path: path) }
        let path = self.path
        do {
            return try await store.run { try body($0.connection) }
        } catch let error as SQLiteError {
            if error.isCorrupt { throw LogError.corrupt(path: path, detail: error.description) }
            throw LogError.sqlite(error)
        }
    }

    // MARK: Notifications

    /// A stream of the head after each successful append of this `DeviceLog` (newest only;
    /// a slow reader sees the latest head). Finishes when the log is closed.
    public func appendNotifications() -> AsyncStream<SequenceNumber> {
        let (stream, continuation) = AsyncStream<SequenceNumber>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let id: UInt64? = state.withLock { s in
            if s.isClosed { return nil }
            s.nextObserverID += 1
            s.observers[s.nextObserverID] = continuation
            return s.nextObserverID
        }
        guard let id else { continuation.finish(); return stream }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.observers.removeValue(forKey: id) }
        }
        return stream
    }

    func notifyObservers(_ head: SequenceNumber) {
        let current = state.withLock { $0.observers.isEmpty ? [] : Array($0.observers.values) }
        for o in current { o.yield(head) }
    }

    private func finishObservers() {
        let current = state.withLock { s in
            defer { s.observers.removeAll() }
            return Array(s.observers.values)
        }
        for o in current { o.finish() }
    }

    static func currentTimeMs() -> Int64 { WallClock.unixMilliseconds() }
}

/// What of a `DeviceLog` lives on its thread (inside `ThreadConfined`): the connection, and
/// the head its last append transaction committed.
final class LogStore {
    let connection: SQLiteConnection
    let path: String
    let configuration: LogConfiguration
    let logger: Logger
    /// The head this connection's last append transaction committed, and `PRAGMA data_version`
    /// in it (unchanged until another connection commits). nil: read it in the next one.
    var cachedHead: (head: SequenceNumber, dataVersion: Int64)?

    init(connection: SQLiteConnection, path: String, configuration: LogConfiguration, logger: Logger) {
        self.connection = connection
        self.path = path
        self.configuration = configuration
        self.logger = logger
    }
}
