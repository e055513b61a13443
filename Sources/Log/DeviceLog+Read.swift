// DeviceLog: reads (head, acked pointer, records, loss markers, entries, status), each one
// job on the log's thread (`read`, DeviceLog.swift).
import FieldlogCore
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

extension DeviceLog {
    // MARK: Read

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

    static func readRecords(_ c: SQLiteConnection, path: String, from: SequenceNumber, through: SequenceNumber,
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

    static func readMarkers(_ c: SQLiteConnection, path: String, overlapping range: SequenceRange?) throws -> [LossMarker] {
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
}
