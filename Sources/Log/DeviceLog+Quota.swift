// DeviceLog: the disk quota, applied inside an append transaction (`LogStore.insertBatch`):
// trim acknowledged records first, then, under `.dropOldest`, drop the oldest unacknowledged
// ones behind loss markers; otherwise refuse the batch.
import FieldlogCore

extension LogStore {
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
    func enforceQuota(maxBytes: Int64, incomingBytes: Int64, batchCount: Int, head: SequenceNumber, acked: SequenceNumber) throws {
        var used = try usedBytes()
        if used + incomingBytes <= maxBytes { return }
        try DeviceLog.persistHead(connection, head)
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
        let now = DeviceLog.currentTimeMs()
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
}
