// Store: every write the backend makes to MariaDB, and the reads that derive progress.
//
// Theory of operation: `storeBatches` writes a group of validated batches in ONE transaction:
// readings and their values (multi-row prepared INSERT IGNORE, `insertRows`, so a resent record
// is absorbed as a duplicate; an array-bound bulk execute was tried and lost or double-counted
// rows when Galera aborted the transaction under it — docs/benchmarks.md), loss markers, rejected records (dead letters keyed by device/epoch/seq) and
// one immutable `batch_ranges` row per batch. Nothing in that transaction updates a row that
// another batch also writes, so concurrent ingest processes (and Galera nodes) seldom conflict;
// when they do (1213), the caller retries the whole transaction. After the commit,
// `coverage(...)` reads the committed ranges; the ack is their contiguous prefix (Coverage.swift).
import FieldlogCore
import Foundation
import Logging
import MariaDB
import Sync

/// What storing one batch did.
struct BatchStoreResult: Sendable, Hashable {
    var device: DeviceID
    var epoch: Epoch
    var range: SequenceRange
    var recordsInserted: Int
    var duplicates: Int
}

/// A rejected message or record, stored in `dead_letters`.
struct DeadLetterRow: Sendable, Hashable {
    var topic: String
    var reason: DeadLetterCause
    var detail: String
    var device: DeviceID?
    var epoch: Epoch?
    var sequence: SequenceNumber?
    var payloadBytes: Int
    /// The start of the payload (at most `DeadLetterRow.headBytes`).
    var payloadHead: [UInt8]

    static let headBytes = 1024
    static let detailBytes = 1024

    init(topic: String, reason: DeadLetterCause, detail: String, device: DeviceID? = nil, epoch: Epoch? = nil,
         sequence: SequenceNumber? = nil, payload: [UInt8], payloadBytes: Int? = nil) {
        self.topic = String(decoding: topic.utf8.prefix(512), as: UTF8.self)
        self.reason = reason
        self.detail = detail.utf8.count <= Self.detailBytes ? detail : String(decoding: detail.utf8.prefix(Self.detailBytes - 3), as: UTF8.self) + "..."
        self.device = device
        self.epoch = epoch
        self.sequence = sequence
        self.payloadBytes = payloadBytes ?? payload.count
        self.payloadHead = Array(payload.prefix(Self.headBytes))
    }
}

/// Why a message or record went to the dead-letter table (the `reason` column and the
/// `reason` label of `fieldlog_dead_letters_total`). The protocol's classes (spec §5.2, Sync's
/// `DeadLetterReason`) keep their names; the backend adds its own below them.
enum DeadLetterCause: String, Sendable, Hashable, CaseIterable {
    case oversize = "oversize"
    case malformedJSON = "malformed-json"
    case unknownVersion = "unknown-version"
    case invalidMessage = "invalid-message"
    case deviceMismatch = "device-mismatch"
    case sequenceRegression = "sequence-regression"
    case rangeMismatch = "range-mismatch"
    case unknownTopic = "unknown-topic"
    /// One record of an otherwise valid batch that the receiver could not accept (spec §5.4).
    case rejectedRecord = "rejected-record"
    /// A seed-format (legacy) value list that could not be read.
    case legacyMalformed = "legacy-malformed"

    init(_ reason: Sync.DeadLetterReason) {
        guard let cause = DeadLetterCause(rawValue: reason.rawValue) else {
            preconditionFailure("Sync's dead-letter reason \(reason.rawValue) has no backend counterpart")
        }
        self = cause
    }
}

/// Formats times for DATETIME(3) columns in UTC (the session's time zone is set to +00:00).
enum SQLTime {
    /// "YYYY-MM-DD hh:mm:ss.fff" for ms since 1970, nil outside the DATETIME range (year 1000…9999).
    static func datetime(unixMilliseconds ms: Int64) -> String? {
        guard ms >= -30_610_224_000_000, ms < 253_402_300_800_000 else { return nil }
        let days = ms >= 0 ? ms / 86_400_000 : (ms - 86_399_999) / 86_400_000
        let msOfDay = ms - days * 86_400_000
        // Civil from days (Howard Hinnant's algorithm).
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        var y = yoe + era * 400
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        if m <= 2 { y += 1 }
        guard (1000...9999).contains(y) else { return nil }
        let h = msOfDay / 3_600_000, mi = (msOfDay / 60_000) % 60, s = (msOfDay / 1000) % 60, f = msOfDay % 1000
        // Written digit by digit into one buffer: the ingest formats one per stored reading, and
        // string interpolation of the parts cost several allocations each (drain profile).
        return String(unsafeUninitializedCapacity: 23) { out in
            func put(_ v: Int64, _ digits: Int, at i: Int) {
                var v = v
                for k in stride(from: i + digits - 1, through: i, by: -1) {
                    out[k] = UInt8(ascii: "0") + UInt8(v % 10)
                    v /= 10
                }
            }
            put(y, 4, at: 0); out[4] = UInt8(ascii: "-"); put(m, 2, at: 5); out[7] = UInt8(ascii: "-"); put(d, 2, at: 8)
            out[10] = UInt8(ascii: " "); put(h, 2, at: 11); out[13] = UInt8(ascii: ":"); put(mi, 2, at: 14); out[16] = UInt8(ascii: ":")
            put(s, 2, at: 17); out[19] = UInt8(ascii: "."); put(f, 3, at: 20)
            return 23
        }
    }

    static func now() -> String {
        datetime(unixMilliseconds: Int64((Date().timeIntervalSince1970 * 1000).rounded(.down)))!
    }
}

/// The backend's MariaDB access on one connection.
final class Store: Sendable {
    let connection: MariaDBConnection

    init(connection: MariaDBConnection) { self.connection = connection }

    /// Session settings every backend connection needs; run after each (re)connect.
    /// `wsrep_sync_wait=1` makes reads on a Galera node wait until the node has applied every
    /// write set committed cluster-wide before the read (so an ack computed there sees other
    /// nodes' commits); on a server without Galera the variable is absent or ignored.
    /// READ COMMITTED: no gap locks, so concurrent INSERT IGNOREs of different batches (and a
    /// compaction) do not block or deadlock each other on a single server; nothing here needs
    /// repeatable reads (every read that matters happens after a commit).
    func prepareSession() async throws {
        try await connection.query("SET time_zone = '+00:00'")
        try await connection.query("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        _ = try? await connection.query("SET SESSION wsrep_sync_wait = 1")
    }

    // MARK: batches

    /// Stores `batches` in one transaction; returns what each did. Throws `MariaDBError`
    /// (the caller retries deadlocks and reconnects on connection loss; nothing is acked then).
    func storeBatches(_ batches: [StoreRequest], newDevices: [DeviceID], newEpochs: [(DeviceID, Epoch)]) async throws -> [BatchStoreResult] {
        guard !batches.isEmpty else { return [] }
        let now = SQLTime.now()
        var readingRows: [[MariaDBValue]] = []
        var valueRows: [[MariaDBValue]] = []
        var lossRows: [[MariaDBValue]] = []
        var rejectedRows: [[MariaDBValue]] = []
        var rangeRows: [[MariaDBValue]] = []
        var perBatchRecordCounts: [Int] = []
        for b in batches {
            let device = MariaDBValue.string(b.device.rawValue)
            let epoch = MariaDBValue.uint(b.epoch.rawValue)
            for r in b.records {
                precondition(b.range.contains(r.sequence), "record \(r.sequence) outside its batch \(b.range)")
                let time = SQLTime.datetime(unixMilliseconds: r.timestamp.unixMilliseconds).map(MariaDBValue.string) ?? .null
                readingRows.append([device, epoch, .uint(r.sequence.rawValue), .int(r.timestamp.unixMilliseconds), time,
                                    .int(r.timestamp.clockUnsynchronized ? 1 : 0), .string(now),
                                    r.missingSensors.isEmpty ? .null : .string(r.missingSensors.joined(separator: ","))])
                for (name, value) in r.values.sorted {
                    switch value {
                    case .number(let d):
                        valueRows.append([device, epoch, .uint(r.sequence.rawValue), .string(name), time, .double(d), .null])
                    case .text(let s):
                        valueRows.append([device, epoch, .uint(r.sequence.rawValue), .string(name), time, .null, .string(s)])
                    }
                }
            }
            for l in b.losses {
                lossRows.append([device, epoch, .uint(l.range.first.rawValue), .uint(l.range.last.rawValue),
                                 .string(l.reason.rawValue), .string(String(decoding: l.detail.utf8.prefix(1024), as: UTF8.self)),
                                 .int(l.recordedAtUnixMilliseconds), .string(now)])
            }
            for r in b.rejected {
                let dl = DeadLetterRow(topic: b.topic, reason: .rejectedRecord, detail: r.reason, device: b.device, epoch: b.epoch,
                                    sequence: r.sequence, payload: Array(r.excerpt.utf8))
                rejectedRows.append(Self.deadLetterRow(dl, now: now))
            }
            rangeRows.append([device, epoch, .uint(b.range.first.rawValue), .uint(b.range.last.rawValue), .string(now)])
            perBatchRecordCounts.append(b.records.count)
        }
        let deviceRows: [[MariaDBValue]] = newDevices.map { [.string($0.rawValue), .string("fieldlog"), .string(now)] }
        let epochRows: [[MariaDBValue]] = newEpochs.map { [.string($0.0.rawValue), .uint($0.1.rawValue), .string(now)] }
        let rows = (readingRows, valueRows, lossRows, rejectedRows, rangeRows)
        let inserted: UInt64 = try await connection.transaction { s in
            if !deviceRows.isEmpty {
                try s.insertRows("INSERT IGNORE INTO devices (device_id, protocol, first_seen_at)", rows: deviceRows)
            }
            if !epochRows.isEmpty {
                try s.insertRows("INSERT IGNORE INTO epochs (device_id, epoch, first_seen_at)", rows: epochRows)
            }
            let n = try s.insertRows("INSERT IGNORE INTO readings (device_id, epoch, seq, device_ms, device_time, clock_unsynchronized, received_at, missing_sensors)", rows: rows.0)
            try s.insertRows("INSERT IGNORE INTO reading_values (device_id, epoch, seq, sensor, device_time, num_value, text_value)", rows: rows.1)
            try s.insertRows("INSERT IGNORE INTO loss_ranges (device_id, epoch, first_seq, last_seq, reason, detail, device_recorded_ms, received_at)", rows: rows.2)
            try s.insertRows(Self.deadLetterInsert, rows: rows.3)
            try s.insertRows("INSERT IGNORE INTO batch_ranges (device_id, epoch, first_seq, last_seq, stored_at)", rows: rows.4)
            return n
        }
        // Attribute inserted rows to batches: exact when the group holds one batch; for a group,
        // duplicates are counted in total (the per-batch split is not needed by anyone).
        let totalRecords = perBatchRecordCounts.reduce(0, +)
        precondition(inserted <= UInt64(totalRecords), "inserted \(inserted) readings from \(totalRecords) records")
        var remainingInserted = Int(inserted)
        return zip(batches, perBatchRecordCounts).map { b, count in
            let ins = min(count, remainingInserted)
            remainingInserted -= ins
            return BatchStoreResult(device: b.device, epoch: b.epoch, range: b.range,
                                    recordsInserted: ins, duplicates: count - ins)
        }
    }

    /// `committedRanges(device:epoch:above:)` for many (device, epoch) at once: one statement
    /// per 64 keys instead of one round trip per device (an ingest group of a large fleet
    /// touches as many devices as it holds batches). The result is in the order of `keys`.
    func committedRanges(of keys: [(device: DeviceID, epoch: Epoch, above: SequenceNumber)]) async throws -> [[SequenceRange]] {
        // Rows by (device, epoch) and first_seq: a key asked twice (in two chunks) finds a row twice.
        struct Key: Hashable { var device: String, epoch: UInt64 }
        var byKey: [Key: [UInt64: SequenceRange]] = [:]
        var start = 0
        while start < keys.count {
            let chunk = keys[start..<min(start + 64, keys.count)]
            start += chunk.count
            var params: [MariaDBValue] = []
            for k in chunk { params += [.string(k.device.rawValue), .uint(k.epoch.rawValue), .uint(k.above.rawValue)] }
            let condition = Array(repeating: "(device_id = ? AND epoch = ? AND last_seq > ?)", count: chunk.count).joined(separator: " OR ")
            let result = try await connection.execute(
                "SELECT device_id, epoch, first_seq, last_seq FROM batch_ranges WHERE \(condition) ORDER BY device_id, epoch, first_seq", params)
            for row in result.rows {
                guard let d = row[0].string, let e = row[1].uint64, let f = row[2].uint64, let l = row[3].uint64, f >= 1, f <= l else {
                    throw SchemaError(description: "batch_ranges holds an invalid range \(row)")
                }
                byKey[Key(device: d, epoch: e), default: [:]][f] = SequenceRange(checked: SequenceNumber(f), SequenceNumber(l))
            }
        }
        return keys.map { k in
            (byKey[Key(device: k.device.rawValue, epoch: k.epoch.rawValue)] ?? [:]).values.filter { $0.last > k.above }.sorted { $0.first < $1.first }
        }
    }

    /// The committed batch ranges of (device, epoch) that end above `hint`.
    func committedRanges(device: DeviceID, epoch: Epoch, above hint: SequenceNumber = .zero) async throws -> [SequenceRange] {
        let result = try await connection.execute(
            "SELECT first_seq, last_seq FROM batch_ranges WHERE device_id = ? AND epoch = ? AND last_seq > ? ORDER BY first_seq",
            [.string(device.rawValue), .uint(epoch.rawValue), .uint(hint.rawValue)])
        return try result.rows.map { row in
            guard let f = row[0].uint64, let l = row[1].uint64, f >= 1, f <= l else {
                throw SchemaError(description: "batch_ranges holds an invalid range \(row) for \(device) epoch \(epoch)")
            }
            return SequenceRange(checked: SequenceNumber(f), SequenceNumber(l))
        }
    }

    /// The committed coverage of (device, epoch) above `hint` (1…hint is known to be covered).
    func coverage(device: DeviceID, epoch: Epoch, after hint: SequenceNumber = .zero) async throws -> Coverage {
        var coverage = Coverage()
        if hint > .zero { coverage.insert(SequenceRange(checked: SequenceNumber(1), hint)) }
        for range in try await committedRanges(device: device, epoch: epoch, above: hint) { coverage.insert(range) }
        return coverage
    }

    /// Replaces the ranges of (device, epoch) that lie inside 1…through by one row 1…through.
    /// The union of ranges is unchanged, so acks computed before, during or after stay correct.
    /// Returns the number of rows it replaced.
    @discardableResult
    func compactRanges(device: DeviceID, epoch: Epoch, through: SequenceNumber) async throws -> Int {
        guard through > .zero else { return 0 }
        let now = SQLTime.now()
        let key: [MariaDBValue] = [.string(device.rawValue), .uint(epoch.rawValue), .uint(through.rawValue)]
        return try await connection.transaction { s in
            // Check that 1…through is covered before replacing anything. Whatever the DELETE below
            // finds (rows ending at or below `through`) is covered by the row inserted here, in the
            // same transaction; two compactions of one epoch may conflict (1213) and one is skipped.
            let rows = try s.execute("SELECT first_seq, last_seq FROM batch_ranges WHERE device_id = ? AND epoch = ? AND first_seq <= ? ORDER BY first_seq", key)
            var c = Coverage()
            for r in rows.rows { c.insert(SequenceRange(checked: SequenceNumber(r[0].uint64!), SequenceNumber(r[1].uint64!))) }
            guard c.contiguousThrough >= through else { return 0 }
            let deleted = try s.execute("DELETE FROM batch_ranges WHERE device_id = ? AND epoch = ? AND last_seq <= ?", key).affectedRows
            try s.execute("INSERT IGNORE INTO batch_ranges (device_id, epoch, first_seq, last_seq, stored_at, compacted) VALUES (?, ?, 1, ?, ?, 1)",
                          key + [.string(now)])
            return Int(deleted)
        }
    }

    // MARK: status, dead letters, commands

    /// Records a device's status on its device row (and the epoch's reported head).
    func recordStatus(_ status: Status) async throws {
        try await recordStatuses([status])
    }

    /// Records statuses in arrival order, in one transaction (one commit for a whole ingest
    /// group: a fleet of 1,000 devices sends ~100 a second).
    func recordStatuses(_ statuses: [Status]) async throws {
        let now = SQLTime.now()
        try await connection.transaction { s in
            for status in statuses {
                let d = MariaDBValue.string(status.device.rawValue)
                try s.execute("INSERT IGNORE INTO devices (device_id, protocol, first_seen_at) VALUES (?, 'fieldlog', ?)", [d, .string(now)])
                try s.execute("""
                    UPDATE devices SET protocol = 'fieldlog', status_state = ?, status_epoch = ?, status_head = ?, status_acked = ?,
                           status_measuring = ?, status_device_ms = ?, status_received_at = ? WHERE device_id = ?
                    """, [.string(status.state.rawValue), status.epoch.map { .uint($0.rawValue) } ?? .null,
                          status.head.map { .uint($0.rawValue) } ?? .null, status.acked.map { .uint($0.rawValue) } ?? .null,
                          status.measuring.map { .int($0 ? 1 : 0) } ?? .null, status.atUnixMilliseconds.map { .int($0) } ?? .null,
                          .string(now), d])
                if let u = status.dataUsage {
                    try s.execute("""
                        INSERT INTO device_data_usage (device_id, day, sent_bytes, received_bytes, updated_at) VALUES (?, ?, ?, ?, ?)
                        ON DUPLICATE KEY UPDATE sent_bytes = GREATEST(sent_bytes, VALUES(sent_bytes)),
                          received_bytes = GREATEST(received_bytes, VALUES(received_bytes)), updated_at = VALUES(updated_at)
                        """, [d, .string(u.dayText), .int(u.sentBytes), .int(u.receivedBytes), .string(now)])
                }
                if let epoch = status.epoch, let head = status.head {
                    try s.execute("""
                        INSERT INTO epochs (device_id, epoch, first_seen_at, reported_head, reported_at) VALUES (?, ?, ?, ?, ?)
                        ON DUPLICATE KEY UPDATE reported_head = GREATEST(reported_head, VALUES(reported_head)), reported_at = VALUES(reported_at)
                        """, [d, .uint(epoch.rawValue), .string(now), .uint(head.rawValue), .string(now)])
                }
            }
        }
    }

    static let deadLetterInsert = "INSERT IGNORE INTO dead_letters (received_at, topic, reason, detail, device_id, epoch, seq, payload_bytes, payload_head)"

    static func deadLetterRow(_ d: DeadLetterRow, now: String) -> [MariaDBValue] {
        [.string(now), .string(d.topic), .string(d.reason.rawValue), .string(d.detail),
         d.device.map { .string($0.rawValue) } ?? .null, d.epoch.map { .uint($0.rawValue) } ?? .null,
         d.sequence.map { .uint($0.rawValue) } ?? .null, .uint(UInt64(d.payloadBytes)), .bytes(d.payloadHead)]
    }

    func recordDeadLetters(_ letters: [DeadLetterRow]) async throws {
        guard !letters.isEmpty else { return }
        let now = SQLTime.now()
        let rows = letters.map { Self.deadLetterRow($0, now: now) }
        try await connection.insertRows(Self.deadLetterInsert, rows: rows)
    }

    /// Records a command sent to a device.
    func recordCommand(requestID: String, device: DeviceID, command: String, epoch: Epoch?, range: SequenceRange?, payload: String) async throws {
        try await connection.execute("""
            INSERT INTO commands (request_id, device_id, command, epoch, first_seq, last_seq, payload, sent_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
            """, [.string(requestID), .string(device.rawValue), .string(command), epoch.map { .uint($0.rawValue) } ?? .null,
                  range.map { .uint($0.first.rawValue) } ?? .null, range.map { .uint($0.last.rawValue) } ?? .null,
                  .string(payload), .string(SQLTime.now())])
    }

    /// Records a device's answer to a command; updates the command's row when the request id is known.
    /// Returns whether a command row was updated.
    @discardableResult
    func recordResponse(device: DeviceID, requestID: String?, command: String, ok: Bool, outcome: String, payload: String) async throws -> Bool {
        let now = SQLTime.now()
        let p = String(decoding: payload.utf8.prefix(65_000), as: UTF8.self)
        return try await connection.transaction { s in
            try s.execute("INSERT INTO command_responses (device_id, request_id, command, ok, received_at, payload) VALUES (?, ?, ?, ?, ?, ?)",
                          [.string(device.rawValue), requestID.map(MariaDBValue.string) ?? .null, .string(String(command.prefix(64))),
                           .int(ok ? 1 : 0), .string(now), .string(p)])
            guard let requestID else { return false }
            let n = try s.execute("UPDATE commands SET response_at = ?, outcome = ?, response = ? WHERE request_id = ? AND device_id = ?",
                                  [.string(now), .string(outcome), .string(p), .string(requestID), .string(device.rawValue)]).affectedRows
            return n > 0
        }
    }
}
