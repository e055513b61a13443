// DeviceLog: appending readings, and the commit of a batch of appends on the log's thread
// (the theory of operation is in DeviceLog.swift and GroupCommit.swift).
import FieldlogCore
import Threading

extension DeviceLog {
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
            let queued = groupCommit.enqueue(PendingAppend(timestampMs: ts.unixMilliseconds, unsynced: ts.clockUnsynchronized,
                                                            body: body, continuation: continuation))
            if !queued { continuation.resume(throwing: LogError.closed(path: path)) }
        }
    }

    /// On the log thread: commits one batch of queued appends in one transaction and answers
    /// its callers (see GroupCommit.swift for how batches form).
    func commit(_ batch: [PendingAppend]) {
        let result: Result<SequenceNumber, Error> = store.withValue { store in
            do {
                return .success(try store.connection.writeTransaction { try store.insertBatch(batch) })
            } catch let error as SQLiteError {
                return .failure(LogError.sqlite(error))
            } catch {
                return .failure(error)
            }
        }
        switch result {
        case .success(let last):
            state.withLock { s in
                s.statistics.commits += 1
                s.statistics.appendsCommitted += UInt64(batch.count)
                s.statistics.largestBatch = max(s.statistics.largestBatch, batch.count)
            }
            var seq = SequenceNumber(last.rawValue - UInt64(batch.count))
            for item in batch {
                seq = seq.next
                item.continuation.resume(returning: seq)
            }
            notifyObservers(last)
        case .failure(let error):
            // In doubt or refused: the next transaction reads the head afresh.
            store.withValue { $0.cachedHead = nil }
            state.withLock { s in
                s.statistics.failedCommits += 1
                s.statistics.appendsFailed += UInt64(batch.count)
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
}

extension LogStore {
    /// Inside BEGIN IMMEDIATE: finds the head (see the theory of operation), applies the
    /// quota, inserts the batch. Sets `cachedHead` for the next transaction, to be kept only
    /// if COMMIT succeeds (`commit` clears it otherwise).
    func insertBatch(_ batch: [PendingAppend]) throws -> SequenceNumber {
        let dataVersion = try connection.scalarInt("PRAGMA data_version") ?? -1
        let head: SequenceNumber
        var acked: SequenceNumber?
        if let cached = cachedHead, cached.dataVersion == dataVersion {
            head = cached.head
        } else {
            let state = try DeviceLog.readState(connection, path: path)
            (head, acked) = (state.head, state.acked)
        }
        cachedHead = nil
        if let maxBytes = configuration.maxBytes {
            let incoming = batch.reduce(Int64(0)) { $0 + Int64($1.body.count) + LogStore.rowOverheadBytes }
            let ackedNow = try acked ?? DeviceLog.readState(connection, path: path).acked
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
}
