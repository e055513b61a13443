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
// - Appends are group-committed by the log's own thread (`LogThread`): `append` validates and
//   queues the reading, then waits. The thread takes everything queued (up to `maxBatchSize`)
//   into one `BEGIN IMMEDIATE … COMMIT` and resumes the callers after COMMIT returned, i.e.
//   after the fsync under `.full`. Appends that arrive during that fsync form the next batch,
//   so the fsync cost is shared. Tasks that prefer the log's `executor` append without a thread
//   switch (LogThread.swift).
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
import CSQLite
import FieldlogCore
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import Logging

/// A device's durable, sequence-numbered log in one SQLite file.
///
/// Safe to use from any task. Several `DeviceLog`s (in one or several processes) may open
/// the same file: one appends while another reads and acknowledges.
public final class DeviceLog: @unchecked Sendable {
    // @unchecked: `connection` and `cachedHead` are only used on `thread`; the appends queue is
    // the thread's; observers, flags and counters are guarded by `lock`.

    /// Schema version this build writes and reads (it also opens version 1 files, see above).
    public static let schemaVersion: Int64 = 2
    /// `PRAGMA application_id` of Fieldlog device logs ("FLOG").
    static let applicationID: Int32 = 0x464C_4F47
    static let formatName = "fieldlog-device-log"

    public let path: String
    public let deviceID: DeviceID
    public let epoch: Epoch
    public let configuration: LogConfiguration

    private let thread: LogThread
    private let connection: SQLiteConnection
    private let logger: Logger

    /// The head this connection's last append transaction committed, and `PRAGMA data_version`
    /// in it (unchanged until another connection commits). nil: read it in the next one.
    private var cachedHead: (head: SequenceNumber, dataVersion: Int64)?

    /// Guards the flags, observers and counters below.
    private let lock = Lock()
    private var isClosed = false
    private var observers: [UInt64: AsyncStream<SequenceNumber>.Continuation] = [:]
    private var nextObserverID: UInt64 = 0
    private var stats = LogStatistics()

    private init(path: String, deviceID: DeviceID, epoch: Epoch, configuration: LogConfiguration,
                 thread: LogThread, connection: SQLiteConnection, logger: Logger) {
        self.path = path
        self.deviceID = deviceID
        self.epoch = epoch
        self.configuration = configuration
        self.thread = thread
        self.connection = connection
        self.logger = logger
        thread.setCommit { [weak self] batch in self?.commit(batch) }
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
        let connection = self.connection
        thread.submit { connection.close() }
        thread.stop()
    }

    // MARK: Open

    /// Opens the log at `path`, creating it for `device` when the file does not exist.
    ///
    /// - Parameter device: the device this log belongs to. Required to create a log; when
    ///   given for an existing log it must match (`LogError.wrongDevice`). nil opens an
    ///   existing log of any device (readers, CLI).
    /// - Throws: `LogError.missing`, `.notAFieldlogLog`, `.unsupportedSchema`, `.corrupt`,
    ///   `.wrongDevice`, `.sqlite`. A file that is not ours is never modified.
    public static func open(path: String, device: DeviceID?, configuration: LogConfiguration = LogConfiguration(),
                            logger: Logger = Logger(label: "fieldlog.log")) async throws -> DeviceLog {
        let thread = LogThread(name: "fieldlog-sqlite", maxBatchSize: configuration.maxBatchSize)
        do {
            let opened = try await thread.run { try openOnThread(path: path, device: device, configuration: configuration) }
            logger.debug("opened log", metadata: ["path": "\(path)", "device": "\(opened.device)", "epoch": "\(opened.epoch)"])
            return DeviceLog(path: path, deviceID: opened.device, epoch: opened.epoch, configuration: configuration,
                             thread: thread, connection: opened.connection, logger: logger)
        } catch {
            thread.stop()
            throw error
        }
    }

    private struct Opened: @unchecked Sendable {
        // @unchecked: the connection is handed from the log's thread to the log, which only uses it there.
        var connection: SQLiteConnection
        var device: DeviceID
        var epoch: Epoch
    }

    /// Opens (and if need be creates) the log, retrying an open that SQLite refused as busy.
    ///
    /// SQLite answers `SQLITE_BUSY` without calling the busy handler where waiting could
    /// deadlock. Two processes that create the same log at once both switch it to WAL, each
    /// upgrading a read lock it holds, and one of them gets that answer at once. Everything an
    /// open does is idempotent (the schema is created only if it is still missing, inside a
    /// write transaction), so a busy open starts again, until the busy timeout.
    private static func openOnThread(path: String, device: DeviceID?, configuration: LogConfiguration) throws -> Opened {
        let deadline = ContinuousClock.now + configuration.busyTimeout
        var pause = Duration.milliseconds(1)
        while true {
            do {
                return try openOnce(path: path, device: device, configuration: configuration)
            } catch LogError.sqlite(let error) where error.isBusy && ContinuousClock.now < deadline {
                OSThread.sleep(pause + .microseconds(Int64.random(in: 0...1000)))
                pause = min(pause * 2, .milliseconds(50))
            }
        }
    }

    private static func openOnce(path: String, device: DeviceID?, configuration: LogConfiguration) throws -> Opened {
        var st = stat()
        let exists = stat(path, &st) == 0
        if exists && (st.st_mode & S_IFMT) == S_IFDIR { throw LogError.notAFieldlogLog(path: path, reason: "it is a directory") }
        if !exists && device == nil { throw LogError.missing(path: path) }

        let connection: SQLiteConnection
        do {
            connection = try SQLiteConnection(path: path, create: device != nil, vfs: configuration.vfsName)
        } catch {
            throw LogError.sqlite(error)
        }
        do {
            let busyMs = configuration.busyTimeout.inMilliseconds
            try connection.setBusyTimeout(milliseconds: Int32(clamping: busyMs))
            // Per connection, before anything is written (the schema's creation included).
            let synchronous = configuration.synchronousOff ? "OFF" : (configuration.durability == .full ? "FULL" : "NORMAL")
            try connection.execute("PRAGMA synchronous=\(synchronous)")
            let expected: Int64 = configuration.synchronousOff ? 0 : (configuration.durability == .full ? 2 : 1)
            guard try connection.scalarInt("PRAGMA synchronous") == expected else {
                throw LogError.corrupt(path: path, detail: "could not set synchronous=\(synchronous)")
            }
            // Identify the file before writing anything to it.
            var (appID, tables) = try connection.readTransaction { try identify(connection, path: path) }
            if appID == 0 && tables == 0 {
                guard let device else { throw LogError.notAFieldlogLog(path: path, reason: "the database is empty") }
                // The log's creation (and its epoch) is always made durable, whatever the
                // durability of appends: a log must never silently come back with a new epoch.
                try connection.execute("PRAGMA synchronous=FULL")
                try connection.execute("PRAGMA journal_mode=WAL")
                try connection.writeTransaction {
                    // Another process may have created it since we looked.
                    (appID, tables) = try identify(connection, path: path)
                    guard appID == 0 && tables == 0 else { return }
                    try createSchema(connection, device: device)
                }
                (appID, tables) = try connection.readTransaction { try identify(connection, path: path) }
                try connection.execute("PRAGMA synchronous=\(synchronous)")
            }
            guard appID == applicationID else {
                throw LogError.notAFieldlogLog(path: path, reason: appID == 0
                    ? "it is an SQLite database of another application (\(tables) schema objects, no Fieldlog application id)"
                    : "application id is \(hex8(appID)), Fieldlog logs have \(hex8(applicationID))")
            }
            var version = try connection.scalarInt("PRAGMA user_version") ?? 0
            guard version == schemaVersion || version == 1 else {
                throw LogError.unsupportedSchema(path: path, found: version, supported: schemaVersion)
            }
            if version == 1 {
                // A version 1 file is a valid version 2 file (its state.head equals the head);
                // marking it keeps builds that would read state.head alone from opening it.
                try connection.writeTransaction {
                    version = try connection.scalarInt("PRAGMA user_version") ?? 0
                    if version == 1 { try connection.execute("PRAGMA user_version = \(schemaVersion)") }
                }
            }
            let meta = try readMeta(connection, path: path)
            if let device, device != meta.device {
                throw LogError.wrongDevice(path: path, expected: device, found: meta.device.rawValue)
            }
            let mode = try connection.query("PRAGMA journal_mode").first?.first
            if mode != .text("wal") { try connection.execute("PRAGMA journal_mode=WAL") }
            try connection.execute("PRAGMA wal_autocheckpoint=\(max(0, configuration.walAutocheckpointPages))")
            // Check the state row once at open.
            _ = try readState(connection, path: path)
            return Opened(connection: connection, device: meta.device, epoch: meta.epoch)
        } catch let error as SQLiteError {
            connection.close()
            if error.isCorrupt { throw LogError.notAFieldlogLog(path: path, reason: error.message) }
            throw LogError.sqlite(error)
        } catch {
            connection.close()
            throw error
        }
    }

    /// The application id and the number of schema objects. Read both in one transaction: a
    /// process creating the log at the same moment must not be seen half done (no id yet,
    /// tables already there), which would look like another application's database.
    private static func identify(_ c: SQLiteConnection, path: String) throws -> (Int32, Int64) {
        let appID = Int32(truncatingIfNeeded: try c.scalarInt("PRAGMA application_id") ?? 0)
        let tables = try c.scalarInt("SELECT count(*) FROM sqlite_master") ?? 0
        return (appID, tables)
    }

    private static func createSchema(_ c: SQLiteConnection, device: DeviceID) throws {
        try c.execute("""
            CREATE TABLE meta(key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID;
            CREATE TABLE state(id INTEGER PRIMARY KEY CHECK (id = 1),
                               head INTEGER NOT NULL CHECK (head >= 0),
                               acked INTEGER NOT NULL CHECK (acked >= 0 AND acked <= head));
            CREATE TABLE records(seq INTEGER PRIMARY KEY CHECK (seq >= 1),
                                 ts_ms INTEGER NOT NULL,
                                 unsynced INTEGER NOT NULL,
                                 body BLOB NOT NULL,
                                 crc INTEGER NOT NULL);
            CREATE TABLE loss_markers(first INTEGER PRIMARY KEY CHECK (first >= 1),
                                      last INTEGER NOT NULL CHECK (last >= first),
                                      reason TEXT NOT NULL,
                                      recorded_ms INTEGER NOT NULL,
                                      detail TEXT NOT NULL);
            INSERT INTO state(id, head, acked) VALUES (1, 0, 0);
            PRAGMA application_id = \(applicationID);
            PRAGMA user_version = \(schemaVersion);
            """)
        let epoch = Epoch.random()
        for (key, value) in [("format", formatName), ("device_id", device.rawValue), ("epoch", epoch.hex),
                             ("created_ms", String(currentTimeMs()))] {
            try c.run("INSERT INTO meta(key, value) VALUES (?, ?)", [.text(key), .text(value)])
        }
    }

    private static func readMeta(_ c: SQLiteConnection, path: String) throws -> (device: DeviceID, epoch: Epoch) {
        var meta: [String: String] = [:]
        for row in try c.query("SELECT key, value FROM meta") {
            if case .text(let k) = row[0], case .text(let v) = row[1] { meta[k] = v }
        }
        guard meta["format"] == formatName else {
            throw LogError.corrupt(path: path, detail: "meta format is \(meta["format"].debugDescription), expected \(formatName)")
        }
        guard let deviceText = meta["device_id"], let device = try? DeviceID(deviceText) else {
            throw LogError.corrupt(path: path, detail: "meta device_id \(meta["device_id"].debugDescription) is not a valid device id")
        }
        guard let epochText = meta["epoch"], let epoch = try? Epoch(hex: epochText), epoch.rawValue != 0 else {
            throw LogError.corrupt(path: path, detail: "meta epoch \(meta["epoch"].debugDescription) is not a valid epoch")
        }
        return (device, epoch)
    }

    /// The head (max of state.head and the highest record) and the acked pointer.
    private static func readState(_ c: SQLiteConnection, path: String) throws -> (head: SequenceNumber, acked: SequenceNumber) {
        let rows = try c.query("SELECT max(head, coalesce((SELECT max(seq) FROM records), 0)), acked FROM state WHERE id = 1")
        guard rows.count == 1, case .integer(let head) = rows[0][0], case .integer(let acked) = rows[0][1],
              head >= 0, acked >= 0, acked <= head, UInt64(head) <= SequenceNumber.max.rawValue else {
            throw LogError.corrupt(path: path, detail: "state row is missing or invalid: \(rows)")
        }
        return (SequenceNumber(UInt64(head)), SequenceNumber(UInt64(acked)))
    }

    // MARK: Close

    /// Waits for queued appends, then closes the file. Further calls throw `LogError.closed`.
    public func close() async {
        let alreadyClosed = lock.withLock { () -> Bool in
            defer { isClosed = true }
            return isClosed
        }
        if alreadyClosed || !thread.closeAppends() { return }
        // Appends queued before the close are committed (and answered) first.
        _ = try? await thread.run { [self] in
            var rest = thread.drainAppends()[...]
            while !rest.isEmpty {
                let n = min(rest.count, max(1, configuration.maxBatchSize))
                commit(Array(rest.prefix(n)))
                rest = rest.dropFirst(n)
            }
            connection.close()
        }
        finishObservers()
    }

    // MARK: Append

    /// Appends one reading and returns its sequence number once the record is durable under
    /// the configured durability (after COMMIT, i.e. after the fsync under `.full`).
    ///
    /// Concurrent appends share one transaction (group commit). A thrown error means the
    /// record is **in doubt**: it was not acknowledged and may or may not reappear after a
    /// crash; it never shares a sequence number with another record.
    ///
    /// - Parameters:
    ///   - timestamp: device time of the reading; nil: now (from the system clock).
    ///   - missing: sensors that were configured but could not be read.
    /// - Throws: `LogError.quotaExceeded` (policy stop), `.invalidInput`, `.closed`, `.sqlite`.
    public func append(_ values: SensorValues, timestamp: DeviceTimestamp? = nil, missing: [String] = []) async throws -> SequenceNumber {
        for name in missing {
            do { try SensorValues.validate(name: name) } catch {
                throw LogError.invalidInput(path: path, reason: "missing sensor: \(error)")
            }
        }
        guard missing.count <= 4096 else { throw LogError.invalidInput(path: path, reason: "\(missing.count) missing sensors; at most 4096") }
        let ts = timestamp ?? DeviceTimestamp(unixMilliseconds: Self.currentTimeMs())
        let body = RecordCodec.encode(values, missing: missing)
        // Unsafe (not checked): resumed exactly once, by the commit that takes it or here; the
        // checked variant's extra allocation was measurable at 64 appenders.
        return try await withUnsafeThrowingContinuation { continuation in
            let queued = thread.enqueueAppend(PendingAppend(timestampMs: ts.unixMilliseconds, unsynced: ts.clockUnsynchronized,
                                                            body: body, continuation: continuation))
            if !queued { continuation.resume(throwing: LogError.closed(path: path)) }
        }
    }

    /// On the log thread: commits one batch of queued appends in one transaction and answers
    /// its callers (see `LogThread` for how batches form).
    private func commit(_ batch: [PendingAppend]) {
        let result: Result<SequenceNumber, Error>
        do {
            result = .success(try connection.writeTransaction { try insertBatch(batch) })
        } catch let error as SQLiteError {
            result = .failure(LogError.sqlite(error))
        } catch {
            result = .failure(error)
        }
        switch result {
        case .success(let last):
            lock.withLock {
                stats.commits += 1
                stats.appendsCommitted += UInt64(batch.count)
                stats.largestBatch = max(stats.largestBatch, batch.count)
            }
            var seq = SequenceNumber(last.rawValue - UInt64(batch.count))
            for item in batch {
                seq = seq.next
                item.continuation.resume(returning: seq)
            }
            notifyObservers(last)
        case .failure(let error):
            // In doubt or refused: the next transaction reads the head afresh.
            cachedHead = nil
            lock.withLock {
                stats.failedCommits += 1
                stats.appendsFailed += UInt64(batch.count)
            }
            if case LogError.quotaExceeded = error {
                // Rolled back before COMMIT: refused, not in doubt.
                logger.warning("appends refused: disk quota", metadata: ["path": "\(path)", "count": "\(batch.count)", "error": "\(error)"])
            } else {
                logger.warning("append batch failed; its records are in doubt", metadata: ["path": "\(path)", "count": "\(batch.count)", "error": "\(error)"])
            }
            for item in batch { item.continuation.resume(throwing: error) }
        }
    }

    /// Inside BEGIN IMMEDIATE: finds the head (see the theory of operation), applies the
    /// quota, inserts the batch. Sets `cachedHead` for the next transaction, to be kept only
    /// if COMMIT succeeds (`commit` clears it otherwise).
    private func insertBatch(_ batch: [PendingAppend]) throws -> SequenceNumber {
        let dataVersion = try connection.scalarInt("PRAGMA data_version") ?? -1
        let head: SequenceNumber
        var acked: SequenceNumber?
        if let cached = cachedHead, cached.dataVersion == dataVersion {
            head = cached.head
        } else {
            let state = try Self.readState(connection, path: path)
            (head, acked) = (state.head, state.acked)
        }
        cachedHead = nil
        if let maxBytes = configuration.maxBytes {
            let incoming = batch.reduce(Int64(0)) { $0 + Int64($1.body.count) + Self.rowOverheadBytes }
            let ackedNow = try acked ?? Self.readState(connection, path: path).acked
            try enforceQuota(maxBytes: maxBytes, incomingBytes: incoming, batchCount: batch.count, head: head, acked: ackedNow)
        }
        let insert = try connection.prepare("INSERT INTO records(seq, ts_ms, unsynced, body, crc) VALUES (?, ?, ?, ?, ?)")
        var seq = head
        for item in batch {
            let next = seq.next
            precondition(next.rawValue == seq.rawValue + 1)
            seq = next
            let seqValue = Int64(seq.rawValue)
            let crc = RecordCodec.checksum(seq: seqValue, timestampMs: item.timestampMs, unsynced: item.unsynced, body: item.body)
            insert.reset()
            try insert.bind(seqValue, at: 1)
            try insert.bind(item.timestampMs, at: 2)
            try insert.bind(item.unsynced ? 1 : 0, at: 3)
            try insert.bind(.blob(item.body), at: 4)
            try insert.bind(Int64(crc), at: 5)
            _ = try insert.step()
        }
        insert.reset()
        precondition(seq.rawValue == head.rawValue + UInt64(batch.count))
        cachedHead = (seq, dataVersion)
        return seq
    }

    /// Raises state.head to `head` (before records are deleted, so the head survives them).
    private static func persistHead(_ c: SQLiteConnection, _ head: SequenceNumber) throws {
        try c.run("UPDATE state SET head = ? WHERE id = 1 AND head < ?", [.integer(Int64(head.rawValue)), .integer(Int64(head.rawValue))])
    }

    static let rowOverheadBytes: Int64 = 40

    /// Bytes of live pages in the database file (pages in use × page size).
    private func usedBytes() throws -> Int64 {
        let pages = try connection.scalarInt("PRAGMA page_count") ?? 0
        let free = try connection.scalarInt("PRAGMA freelist_count") ?? 0
        let size = try connection.scalarInt("PRAGMA page_size") ?? 4096
        return (pages - free) * size
    }

    /// Frees room for `incomingBytes` under `maxBytes`: first trims acknowledged records,
    /// then, under `.dropOldest`, deletes the oldest unacknowledged records and records a
    /// loss marker for each contiguous run deleted. Throws `quotaExceeded` otherwise.
    private func enforceQuota(maxBytes: Int64, incomingBytes: Int64, batchCount: Int, head: SequenceNumber, acked: SequenceNumber) throws {
        var used = try usedBytes()
        if used + incomingBytes <= maxBytes { return }
        try Self.persistHead(connection, head)
        // Free a little more than needed, so a full log does not churn on every append.
        let target = maxBytes - maxBytes / 20 - incomingBytes
        let perRecord = max(Self.rowOverheadBytes, incomingBytes / Int64(max(1, batchCount)))
        for _ in 0..<64 where used > target {
            let count = max(Int64(batchCount), (used - target) / perRecord + 1)
            let trimmed = try connection.run(
                "DELETE FROM records WHERE seq IN (SELECT seq FROM records WHERE seq <= ? ORDER BY seq LIMIT ?)",
                [.integer(Int64(acked.rawValue)), .integer(count)])
            used = try usedBytes()
            if trimmed == 0 { break }
        }
        if used + incomingBytes <= maxBytes { return }
        guard configuration.quotaPolicy == .dropOldest else {
            throw LogError.quotaExceeded(path: path, usedBytes: used, maxBytes: maxBytes)
        }
        let now = Self.currentTimeMs()
        var dropped: [Int64] = []
        for _ in 0..<64 where used > target {
            let count = max(Int64(batchCount), (used - target) / perRecord + 1)
            let seqs = try connection.query("SELECT seq FROM records WHERE seq > ? ORDER BY seq LIMIT ?",
                                            [.integer(Int64(acked.rawValue)), .integer(count)])
                .compactMap { row -> Int64? in if case .integer(let s) = row[0] { return s }; return nil }
            if seqs.isEmpty { break }
            try connection.run("DELETE FROM records WHERE seq > ? AND seq <= ?", [.integer(Int64(acked.rawValue)), .integer(seqs.last!)])
            dropped += seqs
            used = try usedBytes()
        }
        // One marker per contiguous run dropped in this transaction (earlier losses
        // already have their markers, which are never changed once written).
        if let firstDropped = dropped.first {
            var runStart = firstDropped
            var previous = firstDropped
            for s in dropped.dropFirst() + [Int64.max] {
                if s != previous + 1 {
                    try connection.run("INSERT INTO loss_markers(first, last, reason, recorded_ms, detail) VALUES (?, ?, ?, ?, ?)",
                                       [.integer(runStart), .integer(previous), .text(LossReason.diskQuota.rawValue), .integer(now),
                                        .text("disk quota of \(maxBytes) bytes reached (policy drop-oldest)")])
                    logger.warning("disk quota reached: dropped unacknowledged records", metadata: ["path": "\(path)", "first": "\(runStart)", "last": "\(previous)"])
                    runStart = s
                }
                previous = s
            }
        }
        if used + incomingBytes > maxBytes {
            throw LogError.quotaExceeded(path: path, usedBytes: used, maxBytes: maxBytes)
        }
    }

    /// Counters of this `DeviceLog`'s group commits since it was opened.
    public var statistics: LogStatistics { lock.withLock { stats } }

    // MARK: Read

    private func read<T: Sendable>(_ body: @escaping (SQLiteConnection) throws -> T) async throws -> T {
        if lock.withLock({ isClosed }) { throw LogError.closed(path: path) }
        let connection = self.connection
        let path = self.path
        do {
            return try await thread.run { try body(connection) }
        } catch let error as SQLiteError {
            if error.isCorrupt { throw LogError.corrupt(path: path, detail: error.description) }
            throw LogError.sqlite(error)
        }
    }

    /// Highest sequence number appended (0 when empty), as committed by any process.
    public func head() async throws -> SequenceNumber {
        let path = self.path
        return try await read { try Self.readState($0, path: path).head }
    }

    /// Highest sequence number the backend confirmed (0 before the first ack).
    public func ackedThrough() async throws -> SequenceNumber {
        let path = self.path
        return try await read { try Self.readState($0, path: path).acked }
    }

    /// The oldest sequence number still held (head + 1 when nothing is): what a sender may
    /// still load. Two index lookups, unlike `status()`, which counts every record (a sender
    /// asking per batch made draining a large backlog quadratic).
    public func retainedFrom() async throws -> SequenceNumber {
        let path = self.path
        return try await read { c in
            try c.readTransaction {
                let head = try Self.readState(c, path: path).head
                return try c.scalarInt("SELECT min(seq) FROM records").map { SequenceNumber(UInt64($0)) } ?? head.next
            }
        }
    }

    /// Records with seq ≥ `from`, in order: at most `limit` records and, after the first,
    /// at most `maxBytes` of encoded bodies. Gaps (loss markers, trimmed records) are skipped.
    public func records(from: SequenceNumber, limit: Int, maxBytes: Int = .max) async throws -> [LogRecord] {
        precondition(limit >= 0 && maxBytes >= 0)
        let path = self.path
        return try await read { c in
            try Self.readRecords(c, path: path, from: from, through: .max, limit: limit, maxBytes: maxBytes)
        }
    }

    private static func readRecords(_ c: SQLiteConnection, path: String, from: SequenceNumber, through: SequenceNumber,
                                    limit: Int, maxBytes: Int) throws -> [LogRecord] {
        let statement = try c.prepare("SELECT seq, ts_ms, unsynced, body, crc FROM records WHERE seq >= ? AND seq <= ? ORDER BY seq LIMIT ?")
        defer { statement.reset() }
        try statement.bind([.integer(Int64(from.rawValue)), .integer(Int64(through.rawValue)), .integer(Int64(limit))])
        var result: [LogRecord] = []
        var bytes = 0
        var previous: Int64 = 0
        while try statement.step() {
            let seq = statement.int64(at: 0)
            let ts = statement.int64(at: 1)
            let unsynced = statement.int64(at: 2) != 0
            let body = statement.bytes(at: 3)
            let crc = statement.int64(at: 4)
            guard seq > previous, seq >= 1 else { throw LogError.corrupt(path: path, detail: "records out of order at seq \(seq)") }
            previous = seq
            guard RecordCodec.checksum(seq: seq, timestampMs: ts, unsynced: unsynced, body: body) == UInt32(truncatingIfNeeded: crc) else {
                throw LogError.corrupt(path: path, detail: "checksum mismatch in record \(seq)")
            }
            if !result.isEmpty && bytes + body.count > maxBytes { break }
            bytes += body.count
            let decoded: (SensorValues, [String])
            do { decoded = try RecordCodec.decode(body) } catch {
                throw LogError.corrupt(path: path, detail: "record \(seq): \(error)")
            }
            result.append(LogRecord(sequence: SequenceNumber(UInt64(seq)),
                                    timestamp: DeviceTimestamp(unixMilliseconds: ts, clockUnsynchronized: unsynced),
                                    values: decoded.0, missingSensors: decoded.1))
        }
        return result
    }

    /// All loss markers, in sequence order.
    public func lossMarkers() async throws -> [LossMarker] {
        let path = self.path
        return try await read { try Self.readMarkers($0, path: path, overlapping: nil) }
    }

    private static func readMarkers(_ c: SQLiteConnection, path: String, overlapping range: SequenceRange?) throws -> [LossMarker] {
        let lo = Int64(range?.first.rawValue ?? 0), hi = Int64(range?.last.rawValue ?? SequenceNumber.max.rawValue)
        return try c.query("SELECT first, last, reason, recorded_ms, detail FROM loss_markers WHERE last >= ? AND first <= ? ORDER BY first",
                           [.integer(lo), .integer(hi)]).map { row in
            guard case .integer(let first) = row[0], case .integer(let last) = row[1], case .text(let reasonText) = row[2],
                  case .integer(let at) = row[3], case .text(let detail) = row[4],
                  first >= 1, last >= first, let reason = LossReason(rawValue: reasonText) else {
                throw LogError.corrupt(path: path, detail: "invalid loss marker row \(row)")
            }
            return LossMarker(range: SequenceRange(checked: SequenceNumber(UInt64(first)), SequenceNumber(UInt64(last))),
                              reason: reason, recordedAtUnixMilliseconds: at, detail: detail)
        }
    }

    /// What the log holds for a range, in order: records and the loss markers that overlap
    /// it (a marker comes at the position of its first sequence number). At most `limit` records.
    public func entries(in range: SequenceRange, limit: Int = .max) async throws -> [LogEntry] {
        let path = self.path
        return try await read { c in
            try c.readTransaction {
                let records = try Self.readRecords(c, path: path, from: range.first, through: range.last, limit: limit, maxBytes: .max)
                let markers = try Self.readMarkers(c, path: path, overlapping: range)
                var entries: [LogEntry] = []
                var m = markers[...]
                for record in records {
                    while let marker = m.first, marker.range.first < record.sequence { entries.append(.loss(marker)); m = m.dropFirst() }
                    entries.append(.record(record))
                }
                let end = records.count == limit ? records.last?.sequence ?? range.last : range.last
                while let marker = m.first, marker.range.first <= end { entries.append(.loss(marker)); m = m.dropFirst() }
                return entries
            }
        }
    }

    /// A snapshot of the log's state, for status displays and checks.
    public func status() async throws -> LogStatus {
        let path = self.path, device = deviceID, epoch = self.epoch
        return try await read { c in
            try c.readTransaction {
                let state = try Self.readState(c, path: path)
                let retained = try c.scalarInt("SELECT count(*) FROM records") ?? 0
                let backlog = try c.scalarInt("SELECT count(*) FROM records WHERE seq > ?", [.integer(Int64(state.acked.rawValue))]) ?? 0
                let oldest = try c.scalarInt("SELECT min(seq) FROM records").map { SequenceNumber(UInt64($0)) }
                let markers = try Self.readMarkers(c, path: path, overlapping: nil)
                let pages = try c.scalarInt("PRAGMA page_count") ?? 0
                let pageSize = try c.scalarInt("PRAGMA page_size") ?? 0
                let fileBytes = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int64) ?? pages * pageSize
                let walBytes = (try? FileManager.default.attributesOfItem(atPath: path + "-wal")[.size] as? Int64) ?? 0
                return LogStatus(path: path, deviceID: device, epoch: epoch, head: state.head, ackedThrough: state.acked,
                                 backlog: Int(backlog), retained: Int(retained), oldestRetained: oldest,
                                 fileBytes: fileBytes, walBytes: walBytes, lossMarkers: markers)
            }
        }
    }

    // MARK: Acknowledge and trim

    /// Moves the acknowledged-through pointer forward to `through` (an older ack is ignored)
    /// and trims acknowledged records beyond the retention. Durable under the configured
    /// durability when it returns. Returns the pointer after the call.
    ///
    /// - Throws: `LogError.ackBeyondHead` when `through` > head (nothing is changed).
    @discardableResult
    public func markAcked(through: SequenceNumber, now: DeviceTimestamp? = nil) async throws -> SequenceNumber {
        let path = self.path, configuration = self.configuration
        let nowMs = now?.unixMilliseconds ?? Self.currentTimeMs()
        return try await read { c in
            try c.writeTransaction {
                let state = try Self.readState(c, path: path)
                guard through <= state.head else { throw LogError.ackBeyondHead(path: path, ack: through, head: state.head) }
                let acked = max(state.acked, through)
                precondition(acked <= state.head)
                if acked > state.acked {
                    try c.run("UPDATE state SET head = max(head, ?), acked = ? WHERE id = 1",
                              [.integer(Int64(state.head.rawValue)), .integer(Int64(acked.rawValue))])
                }
                try Self.applyRetention(c, configuration: configuration, head: state.head, acked: acked, nowMs: nowMs)
                return acked
            }
        }
    }

    /// Applies the retention now (also done by every `markAcked`). Returns records trimmed.
    @discardableResult
    public func trim(now: DeviceTimestamp? = nil) async throws -> Int {
        let path = self.path, configuration = self.configuration
        let nowMs = now?.unixMilliseconds ?? Self.currentTimeMs()
        return try await read { c in
            try c.writeTransaction {
                let state = try Self.readState(c, path: path)
                return try Self.applyRetention(c, configuration: configuration, head: state.head, acked: state.acked, nowMs: nowMs)
            }
        }
    }

    /// Deletes acknowledged records beyond `retentionMaxCount` or older than
    /// `retentionMaxAge`; never a record above `acked`. Drops loss markers that lie wholly
    /// below both the acked pointer and the oldest retained record.
    @discardableResult
    private static func applyRetention(_ c: SQLiteConnection, configuration: LogConfiguration, head: SequenceNumber, acked: SequenceNumber,
                                       nowMs: Int64) throws -> Int {
        let ackedValue = Int64(acked.rawValue)
        let countLimit = configuration.retentionMaxCount.map { ackedValue - Int64($0) } ?? -1
        let ageLimit: Int64 = configuration.retentionMaxAge.map { nowMs - $0.components.seconds * 1000 } ?? Int64.min
        // Both limits become one sequence-number bound, so the DELETE is a primary-key range that
        // touches only the rows it removes. (A condition on ts_ms made every ack scan every
        // acknowledged record kept: draining a large backlog was quadratic, ~0.4 s per ack at
        // 500,000 kept records.) Age trims from the oldest record up to the first one young
        // enough to keep; after a clock step back, older-stamped records behind it are kept
        // until it expires (kept longer, never trimmed early).
        var bound = min(ackedValue, countLimit)
        if ageLimit != Int64.min {
            let firstYoung = try c.scalarInt("SELECT seq FROM records WHERE seq <= ? AND ts_ms >= ? ORDER BY seq LIMIT 1",
                                             [.integer(ackedValue), .integer(ageLimit)])
            bound = max(bound, min(ackedValue, (firstYoung ?? ackedValue + 1) - 1))
        }
        var trimmed = 0
        if bound >= 1 {
            try persistHead(c, head)
            trimmed = try c.run("DELETE FROM records WHERE seq <= ?", [.integer(bound)])
        }
        try c.run("DELETE FROM loss_markers WHERE last <= ? AND last < (SELECT coalesce(min(seq), ? + 1) FROM records)",
                  [.integer(ackedValue), .integer(ackedValue)])
        return trimmed
    }

    // MARK: Notifications

    /// A stream of the head after each successful append of this `DeviceLog` (newest only;
    /// a slow reader sees the latest head). Finishes when the log is closed.
    public func appendNotifications() -> AsyncStream<SequenceNumber> {
        let (stream, continuation) = AsyncStream<SequenceNumber>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let id: UInt64? = lock.withLock {
            if isClosed { return nil }
            nextObserverID += 1
            observers[nextObserverID] = continuation
            return nextObserverID
        }
        guard let id else { continuation.finish(); return stream }
        continuation.onTermination = { [weak self] _ in
            guard let self else { return }
            _ = self.lock.withLock { self.observers.removeValue(forKey: id) }
        }
        return stream
    }

    private func notifyObservers(_ head: SequenceNumber) {
        let current = lock.withLock { observers.isEmpty ? [] : Array(observers.values) }
        for o in current { o.yield(head) }
    }

    private func finishObservers() {
        let current = lock.withLock { () -> [AsyncStream<SequenceNumber>.Continuation] in
            defer { observers.removeAll() }
            return Array(observers.values)
        }
        for o in current { o.finish() }
    }

    // MARK: Check

    /// Verifies the whole file like fsck: SQLite integrity, record checksums and bodies,
    /// head/acked consistency, loss markers inside the head and not overlapping records or
    /// each other, and no unexplained gap above the acked pointer. Returns the problems found
    /// (empty: the log is sound).
    public func check() async throws -> [String] {
        let path = self.path
        return try await read { c in
            try c.readTransaction {
                var problems: [String] = []
                let integrity = try c.query("PRAGMA integrity_check").compactMap { row -> String? in
                    if case .text(let t) = row[0] { return t }; return nil
                }
                if integrity != ["ok"] { problems.append(contentsOf: integrity.prefix(20).map { "sqlite integrity: \($0)" }) }
                let state: (head: SequenceNumber, acked: SequenceNumber)
                do { state = try Self.readState(c, path: path) } catch {
                    problems.append("\(error)")
                    return problems
                }
                let markers: [LossMarker]
                do { markers = try Self.readMarkers(c, path: path, overlapping: nil) } catch {
                    problems.append("\(error)")
                    markers = []
                }
                for m in markers where m.range.last > state.head {
                    problems.append("loss marker \(m.range) lies beyond the head \(state.head)")
                }
                // Walk all records: order, checksums, bodies. Above the acked pointer every
                // sequence number must be a record or lie under exactly one loss marker.
                let statement = try c.prepare("SELECT seq, ts_ms, unsynced, body, crc FROM records ORDER BY seq")
                defer { statement.reset() }
                let acked = Int64(state.acked.rawValue), head = Int64(state.head.rawValue)
                var spans: [(first: Int64, last: Int64, what: String)] = markers.map {
                    (Int64($0.range.first.rawValue), Int64($0.range.last.rawValue), "loss marker \($0.range)")
                }
                var last: Int64 = 0
                var runFirst: Int64? = nil
                while try statement.step() {
                    let seq = statement.int64(at: 0), ts = statement.int64(at: 1)
                    let unsynced = statement.int64(at: 2) != 0, body = statement.bytes(at: 3), crc = statement.int64(at: 4)
                    if RecordCodec.checksum(seq: seq, timestampMs: ts, unsynced: unsynced, body: body) != UInt32(truncatingIfNeeded: crc) {
                        problems.append("record \(seq): checksum mismatch")
                    } else if let e = Result(catching: { try RecordCodec.decode(body) }).failureValue {
                        problems.append("record \(seq): undecodable body: \(e)")
                    }
                    if seq > acked {
                        if let f = runFirst, seq != last + 1 { spans.append((f, last, "records \(f)…\(last)")); runFirst = seq }
                        if runFirst == nil { runFirst = seq }
                    }
                    last = seq
                    if problems.count > 100 { problems.append("…stopping after 100 problems"); return problems }
                }
                if let f = runFirst { spans.append((f, last, "records \(f)…\(last)")) }
                if last > head { problems.append("record \(last) lies beyond the head \(state.head)") }
                spans.sort { $0.first < $1.first }
                var cursor = acked + 1
                var previous = "the acked pointer \(state.acked)"
                for span in spans where span.last > acked {
                    if span.first > cursor {
                        problems.append("records \(cursor)…\(span.first - 1) are missing with no loss marker (acked \(state.acked), head \(state.head))")
                    } else if span.first < cursor && span.first > acked {
                        problems.append("\(span.what) overlaps \(previous)")
                    }
                    cursor = max(cursor, span.last + 1)
                    previous = span.what
                }
                if cursor <= head {
                    problems.append("records \(cursor)…\(head) are missing with no loss marker (acked \(state.acked), head \(state.head))")
                }
                return problems
            }
        }
    }

    static func currentTimeMs() -> Int64 { WallClock.unixMilliseconds() }
}

extension Result {
    fileprivate var failureValue: Failure? {
        if case .failure(let e) = self { return e }
        return nil
    }
}

/// One entry of a log range: a record, or a marker for records that were lost.
public enum LogEntry: Hashable, Sendable {
    case record(LogRecord)
    case loss(LossMarker)
}

/// Group-commit counters of one `DeviceLog` since it was opened.
public struct LogStatistics: Sendable, Hashable {
    /// Append transactions committed.
    public var commits: UInt64 = 0
    /// Appends returned to callers as durable.
    var appendsCommitted: UInt64 = 0
    /// Append transactions that failed (their appends are in doubt).
    var failedCommits: UInt64 = 0
    var appendsFailed: UInt64 = 0
    /// Most appends one commit carried.
    public var largestBatch: Int = 0
}

/// A snapshot of a log's state.
public struct LogStatus: Sendable {
    public var path: String
    public var deviceID: DeviceID
    public var epoch: Epoch
    /// Highest sequence number appended.
    public var head: SequenceNumber
    /// Highest sequence number the backend confirmed.
    public var ackedThrough: SequenceNumber
    /// Unacknowledged records present (head − acked − records lost under markers).
    public var backlog: Int
    /// Records present in the file (acknowledged ones kept for replay, plus the backlog).
    public var retained: Int
    /// Lowest sequence number still present.
    public var oldestRetained: SequenceNumber?
    public var fileBytes: Int64
    public var walBytes: Int64
    public var lossMarkers: [LossMarker]
}

/// `0x` and eight hex digits of the 32 bits (as `%08x` prints them).
private func hex8(_ v: Int32) -> String {
    let digits = String(UInt32(bitPattern: v), radix: 16)
    return "0x" + String(repeating: "0", count: 8 - digits.count) + digits
}
