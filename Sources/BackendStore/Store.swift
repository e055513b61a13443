// Store: every write the backend makes to MariaDB, and the reads that derive progress.
//
// Theory of operation: `storeBatches` writes a group of validated batches in ONE transaction:
// readings and their values (INSERT IGNORE, so a resent record is absorbed as a duplicate;
// array-bound, `insertBulk`, one prepared single-row statement executed with arrays: a fifth
// less server CPU per reading than a multi-row VALUES list), loss markers, rejected records (dead letters keyed by device/epoch/seq) and
// one immutable `batch_ranges` row per batch. Every INSERT is checked (`CheckedTable`,
// MariaDB's `insertIgnoringDuplicates`): rows inserted + rows proven to be duplicates must be
// the rows sent, else `MariaDBRowsNotWritten` rolls the transaction back, so a row INSERT
// IGNORE dropped silently can never be acked; and the session refuses to go on in a
// transaction the server ended without an error (`MariaDBError.transactionEndedByServer`:
// Galera ends a transaction it aborts under an array-bound INSERT that way, docs/benchmarks.md;
// the guard makes it a retry, GaleraTests). Nothing in that
// transaction updates a row that another batch also writes, so concurrent ingest processes
// (and Galera nodes) seldom conflict; when they do (1213), the caller retries the whole
// transaction. After the commit, `coverage(...)` reads the committed ranges; the ack is their
// contiguous prefix (Coverage.swift).
import FieldlogCore
import Foundation
import Logging
import MariaDB
import Sync

/// What storing one batch did.
package struct BatchStoreResult: Sendable, Hashable {
    package var device: DeviceID
    package var epoch: Epoch
    package var range: SequenceRange
    package var recordsInserted: Int
    package var duplicates: Int
}

/// Formats times for DATETIME(3) columns in UTC (the session's time zone is set to +00:00).
package enum SQLTime {
    /// "YYYY-MM-DD hh:mm:ss.fff" for ms since 1970, nil outside the DATETIME range (year 1000…9999).
    package static func datetime(unixMilliseconds ms: Int64) -> String? { SQLDateTime.format(unixMilliseconds: ms) }

    package static func now() -> String {
        datetime(unixMilliseconds: WallClock.unixMilliseconds())!
    }
}

/// The backend's MariaDB access on one connection.
package final class Store: Sendable {
    package let connection: MariaDBConnection

    package init(connection: MariaDBConnection) { self.connection = connection }

    /// Session settings every backend connection needs; run after each (re)connect.
    /// `wsrep_sync_wait=1` makes reads on a Galera node wait until the node has applied every
    /// write set committed cluster-wide before the read (so an ack computed there sees other
    /// nodes' commits); on a server without Galera the variable is absent or ignored.
    /// READ COMMITTED: no gap locks, so concurrent INSERT IGNOREs of different batches (and a
    /// compaction) do not block or deadlock each other on a single server; nothing here needs
    /// repeatable reads (every read that matters happens after a commit).
    package func prepareSession() async throws {
        try await connection.query("SET time_zone = '+00:00'")
        try await connection.query("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        _ = try? await connection.query("SET SESSION wsrep_sync_wait = 1")
    }

    // MARK: writes

    /// Writes one ingest transaction's rows (Sync's `StoreRows`) in ONE database transaction and
    /// returns what the inserts did. Throws `MariaDBError` (the ingest classifies it: connection,
    /// conflict, refused, unknown); nothing is acked unless this returned.
    /// `fence`: on a shard, the cached map version; the transaction then starts with
    /// `CALL fl_fence(version)` (SQLSTATE FL001 when the shard's map is newer: `isShardMapChanged`).
    package func write(_ rows: StoreRows, fence: ShardMapVersion? = nil) async throws -> WriteResult {
        let now = MariaDBValue.string(SQLTime.now())
        @Sendable func text(_ s: String?) -> MariaDBValue { s.map(MariaDBValue.string) ?? .null }
        @Sendable func time(_ s: String?) -> MariaDBValue { s.map(MariaDBValue.string) ?? .null }
        @Sendable func number(_ d: Double?) -> MariaDBValue { d.map(MariaDBValue.double) ?? .null }
        let devices = rows.devices.map { d -> [MariaDBValue] in
            [.string(d.device), .string(d.legacy ? "legacy" : "fieldlog"), now, text(d.deviceType), text(d.appID), text(d.appName)]
        }
        let epochs = rows.epochs.map { [.string($0.device), .uint($0.epoch), now] as [MariaDBValue] }
        let readings = rows.readings.map { r -> [MariaDBValue] in
            [.string(r.device), .uint(r.epoch), .uint(r.seq), .int(r.deviceMs), time(r.deviceTime), .int(r.unsynchronized ? 1 : 0), now,
             text(r.missingSensors), .string(r.vals), text(r.texts)]
        }
        let sensors = rows.sensors.map { [.string($0.device), .string($0.sensor)] as [MariaDBValue] }
        let losses = rows.losses.map { l -> [MariaDBValue] in
            [.string(l.device), .uint(l.epoch), .uint(l.first), .uint(l.last), .string(l.reason), .string(l.detail), .int(l.recordedMs), now]
        }
        let deadLetters = rows.deadLetters.map { d -> [MariaDBValue] in
            [now, .string(d.topic), .string(d.reason.rawValue), .string(d.detail), text(d.device), d.epoch.map(MariaDBValue.uint) ?? .null,
             d.seq.map(MariaDBValue.uint) ?? .null, .uint(d.payloadBytes), .bytes(d.payloadHead), d.dedupKey.map(MariaDBValue.bytes) ?? .null]
        }
        let ranges = rows.ranges.map { [.string($0.device), .uint($0.epoch), .uint($0.first), .uint($0.last), now] as [MariaDBValue] }
        let legacyReadings = rows.legacyReadings.map { r -> [MariaDBValue] in
            [.string(r.device), .string(r.streamID), .int(r.deviceMs), time(r.deviceTime), now]
        }
        let legacyValues = rows.legacyValues.map { v -> [MariaDBValue] in
            [.string(v.device), .string(v.streamID), .string(v.sensor), time(v.deviceTime), number(v.number), text(v.text)]
        }
        let statuses = rows.statuses
        let responses = rows.responses
        // Checked inserts (CheckedTable): a row INSERT IGNORE dropped for another reason than a
        // duplicate key fails the whole transaction (MariaDBRowsNotWritten), so it is never acked.
        let plainLetters = zip(rows.deadLetters, deadLetters).filter { $0.0.dedupKey == nil }.map(\.1)
        let seedLetters = zip(rows.deadLetters, deadLetters).filter { $0.0.dedupKey != nil }.map(\.1)
        let statusDevices = Array(Set(statuses.map(\.device))).sorted().map { [.string($0), .string("fieldlog"), now, .null, .null, .null] as [MariaDBValue] }
        return try await connection.transaction { s in
            if let fence { try s.query("CALL fl_fence(\(fence.rawValue))") }
            if !devices.isEmpty || !statusDevices.isEmpty { try s.insert(.devices, devices + statusDevices) }
            if !epochs.isEmpty { try s.insert(.epochs, epochs) }
            let inserted = try s.insert(.readings, readings).inserted
            try s.insert(.deviceSensors, sensors)
            try s.insert(.lossRanges, losses)
            try s.insert(.deadLetters, plainLetters)
            try s.insert(.seedDeadLetters, seedLetters)
            try s.insert(.batchRanges, ranges)
            let legacyInserted = try s.insert(.legacyReadings, legacyReadings).inserted
            try s.insert(.legacyValues, legacyValues)
            for st in statuses {
                let d = MariaDBValue.string(st.device)
                try s.execute("""
                    UPDATE devices SET protocol = 'fieldlog', status_state = ?, status_epoch = ?, status_head = ?, status_acked = ?,
                           status_measuring = ?, status_device_ms = ?, status_received_at = ? WHERE device_id = ?
                    """, [.string(st.state), st.epoch.map(MariaDBValue.uint) ?? .null, st.head.map(MariaDBValue.uint) ?? .null,
                          st.acked.map(MariaDBValue.uint) ?? .null, st.measuring.map { .int($0 ? 1 : 0) } ?? .null,
                          st.deviceMs.map(MariaDBValue.int) ?? .null, now, d])
                if let epoch = st.epoch, let head = st.head {
                    try s.execute("""
                        INSERT INTO epochs (device_id, epoch, first_seen_at, reported_head, reported_at) VALUES (?, ?, ?, ?, ?)
                        ON DUPLICATE KEY UPDATE reported_head = GREATEST(reported_head, VALUES(reported_head)), reported_at = VALUES(reported_at)
                        """, [d, .uint(epoch), now, .uint(head), now])
                }
                if let u = st.dataUsage {
                    try s.execute("""
                        INSERT INTO device_data_usage (device_id, day, sent_bytes, received_bytes, updated_at) VALUES (?, ?, ?, ?, ?)
                        ON DUPLICATE KEY UPDATE sent_bytes = GREATEST(sent_bytes, VALUES(sent_bytes)),
                          received_bytes = GREATEST(received_bytes, VALUES(received_bytes)), updated_at = VALUES(updated_at)
                        """, [d, .string(u.dayText), .int(u.sentBytes), .int(u.receivedBytes), now])
                }
            }
            for r in responses {
                try Self.requireOneRow(s.execute("INSERT INTO command_responses (device_id, request_id, command, ok, received_at, payload) VALUES (?, ?, ?, ?, ?, ?)",
                                                 [.string(r.device), text(r.requestID), .string(r.command), .int(r.ok ? 1 : 0), now, .string(r.payload)]),
                                       table: "command_responses")
                if let id = r.requestID {
                    try s.execute("UPDATE commands SET response_at = ?, outcome = ?, response = ? WHERE request_id = ? AND device_id = ?",
                                  [now, .string(r.outcome), .string(r.payload), .string(id), .string(r.device)])
                }
            }
            return WriteResult(readingsInserted: inserted, legacyInserted: legacyInserted)
        }
    }

    /// Stores `batches` in one transaction (the ingest's rows for them); returns what each did.
    package func storeBatches(_ batches: [StoreRequest], newDevices: [DeviceID], newEpochs: [(DeviceID, Epoch)]) async throws -> [BatchStoreResult] {
        guard !batches.isEmpty else { return [] }
        var tx = IngestTransaction()
        tx.batches = batches
        tx.newDevices = newDevices
        tx.newEpochs = newEpochs.map { EpochKey(device: $0.0, epoch: $0.1) }
        let result = try await write(StoreRows(tx))
        // Attribute inserted rows to batches: exact for one batch; for a group, duplicates are
        // counted in total (the per-batch split is not needed by anyone).
        var remaining = result.readingsInserted
        return batches.map { b in
            let ins = min(b.records.count, remaining)
            remaining -= ins
            return BatchStoreResult(device: b.device, epoch: b.epoch, range: b.range, recordsInserted: ins, duplicates: b.records.count - ins)
        }
    }

    /// `committedRanges(device:epoch:above:)` for many (device, epoch) at once: one statement
    /// per 64 keys instead of one round trip per device (an ingest group of a large fleet
    /// touches as many devices as it holds batches). The result is in the order of `keys`.
    package func committedRanges(of keys: [(device: DeviceID, epoch: Epoch, above: SequenceNumber)]) async throws -> [[SequenceRange]] {
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
                // Rows the ingest writes are valid by construction; one that is not (written by
                // someone else) is left out: a missing range can only make an ack lower, never higher.
                guard let d = row[0].string, let e = row[1].uint64, let range = Self.validRange(row[2].uint64, row[3].uint64) else { continue }
                byKey[Key(device: d, epoch: e), default: [:]][range.first.rawValue] = range
            }
        }
        return keys.map { k in
            (byKey[Key(device: k.device.rawValue, epoch: k.epoch.rawValue)] ?? [:]).values.filter { $0.last > k.above }.sorted { $0.first < $1.first }
        }
    }

    /// The committed batch ranges of (device, epoch) that end above `hint`.
    package func committedRanges(device: DeviceID, epoch: Epoch, above hint: SequenceNumber = .zero) async throws -> [SequenceRange] {
        let result = try await connection.execute(
            "SELECT first_seq, last_seq FROM batch_ranges WHERE device_id = ? AND epoch = ? AND last_seq > ? ORDER BY first_seq",
            [.string(device.rawValue), .uint(epoch.rawValue), .uint(hint.rawValue)])
        return result.rows.compactMap { Self.validRange($0[0].uint64, $0[1].uint64) }
    }

    /// A range read back from `batch_ranges`, nil when the row breaks the protocol's limits.
    package static func validRange(_ first: UInt64?, _ last: UInt64?) -> SequenceRange? {
        guard let first, let last, first >= 1, first <= last, last <= SequenceNumber.max.rawValue else { return nil }
        return SequenceRange(checked: SequenceNumber(first), SequenceNumber(last))
    }

    /// The committed coverage of (device, epoch) above `hint` (1…hint is known to be covered).
    package func coverage(device: DeviceID, epoch: Epoch, after hint: SequenceNumber = .zero) async throws -> Coverage {
        var coverage = Coverage()
        if hint > .zero { coverage.insert(SequenceRange(checked: SequenceNumber(1), hint)) }
        for range in try await committedRanges(device: device, epoch: epoch, above: hint) { coverage.insert(range) }
        return coverage
    }

    /// Replaces the ranges of (device, epoch) that lie inside 1…through by one row 1…through.
    /// The union of ranges is unchanged, so acks computed before, during or after stay correct.
    /// Returns the number of rows it replaced.
    @discardableResult
    package func compactRanges(device: DeviceID, epoch: Epoch, through: SequenceNumber) async throws -> Int {
        guard through > .zero else { return 0 }
        let now = SQLTime.now()
        let key: [MariaDBValue] = [.string(device.rawValue), .uint(epoch.rawValue), .uint(through.rawValue)]
        return try await connection.transaction { s in
            // Check that 1…through is covered before replacing anything. Whatever the DELETE below
            // finds (rows ending at or below `through`) is covered by the row inserted here, in the
            // same transaction; two compactions of one epoch may conflict (1213) and one is skipped.
            let rows = try s.execute("SELECT first_seq, last_seq FROM batch_ranges WHERE device_id = ? AND epoch = ? AND first_seq <= ? ORDER BY first_seq", key)
            var c = Coverage()
            for r in rows.rows { if let range = Self.validRange(r[0].uint64, r[1].uint64) { c.insert(range) } }
            guard c.contiguousThrough >= through else { return 0 }
            let deleted = try s.execute("DELETE FROM batch_ranges WHERE device_id = ? AND epoch = ? AND last_seq <= ?", key).affectedRows
            // Checked: the rows just deleted must be replaced, or the ledger would shrink.
            try s.insert(.compactedRange, [[key[0], key[1], .uint(1), key[2], .string(now), .int(1)]])
            return Int(deleted)
        }
    }

    // MARK: status, dead letters, commands

    /// Records a device's status on its device row (and the epoch's reported head).
    package func recordStatus(_ status: Status) async throws {
        try await recordStatuses([status])
    }

    /// Records statuses in arrival order, in one transaction.
    package func recordStatuses(_ statuses: [Status]) async throws {
        var tx = IngestTransaction()
        tx.statuses = statuses
        _ = try await write(StoreRows(tx))
    }


    /// Records a command sent to a device.
    package func recordCommand(requestID: String, device: DeviceID, command: String, epoch: Epoch?, range: SequenceRange?, payload: String) async throws {
        let result = try await connection.execute("""
            INSERT INTO commands (request_id, device_id, command, epoch, first_seq, last_seq, payload, sent_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
            """, [.string(requestID), .string(device.rawValue), .string(command), epoch.map { .uint($0.rawValue) } ?? .null,
                  range.map { .uint($0.first.rawValue) } ?? .null, range.map { .uint($0.last.rawValue) } ?? .null,
                  .string(payload), .string(SQLTime.now())])
        try Self.requireOneRow(result, table: "commands")
    }

    /// A plain INSERT of one row either fails or inserts it; anything else is a server fault.
    package static func requireOneRow(_ result: MariaDBResult, table: String) throws {
        guard result.affectedRows == 1 else {
            throw MariaDBRowsNotWritten(table: table, sent: 1, inserted: Int(result.affectedRows), missing: result.affectedRows == 0 ? 1 : 0)
        }
    }

    /// Records a device's answer to a command, and its outcome on the command's row when the
    /// request id is known.
    package func recordResponse(device: DeviceID, _ response: CommandResponse) async throws {
        var tx = IngestTransaction()
        tx.responses = [ResponseRecord(device: device, response: response)]
        _ = try await write(StoreRows(tx))
    }
}

/// A table the backend writes with a checked INSERT IGNORE (MariaDB's `insertIgnoringDuplicates`):
/// its columns in the order the rows are built, and the unique key that makes a row a duplicate.
package struct CheckedTable: Sendable {
    package var name: String
    package var columns: [String]
    package var key: [String]
    /// Inserted with array binding (`insertBulk`): for the one table with a row per reading.
    package var arrayBound = false

    package static let devices = CheckedTable(name: "devices", columns: ["device_id", "protocol", "first_seen_at", "device_type", "app_id", "app_name"],
                                      key: ["device_id"])
    package static let epochs = CheckedTable(name: "epochs", columns: ["device_id", "epoch", "first_seen_at"], key: ["device_id", "epoch"])
    package static let readings = CheckedTable(name: "readings", columns: ["device_id", "epoch", "seq", "device_ms", "device_time", "clock_unsynchronized",
                                                                   "received_at", "missing_sensors", "vals", "texts"], key: ["device_id", "epoch", "seq"],
                                               arrayBound: true)
    package static let deviceSensors = CheckedTable(name: "device_sensors", columns: ["device_id", "sensor"], key: ["device_id", "sensor"])
    package static let lossRanges = CheckedTable(name: "loss_ranges", columns: ["device_id", "epoch", "first_seq", "last_seq", "reason", "detail",
                                                                        "device_recorded_ms", "received_at"], key: ["device_id", "epoch", "first_seq", "last_seq"])
    /// Rejected records are unique per (device, epoch, seq); other dead letters (NULL seq) all go in.
    package static let deadLetters = CheckedTable(name: "dead_letters", columns: ["received_at", "topic", "reason", "detail", "device_id", "epoch", "seq",
                                                                          "payload_bytes", "payload_head", "dedup_key"], key: ["device_id", "epoch", "seq"])
    /// Dead letters of messages every ingest process receives (seed values): unique per `dedup_key`.
    package static let seedDeadLetters = CheckedTable(name: "dead_letters", columns: deadLetters.columns, key: ["dedup_key"])
    package static let batchRanges = CheckedTable(name: "batch_ranges", columns: ["device_id", "epoch", "first_seq", "last_seq", "stored_at"],
                                          key: ["device_id", "epoch", "first_seq", "last_seq"])
    package static let compactedRange = CheckedTable(name: "batch_ranges", columns: ["device_id", "epoch", "first_seq", "last_seq", "stored_at", "compacted"],
                                             key: ["device_id", "epoch", "first_seq", "last_seq"])
    package static let legacyReadings = CheckedTable(name: "legacy_readings", columns: ["device_id", "stream_id", "device_ms", "device_time", "received_at"],
                                             key: ["device_id", "stream_id"])
    package static let legacyValues = CheckedTable(name: "legacy_values", columns: ["device_id", "stream_id", "sensor", "device_time", "num_value", "text_value"],
                                           key: ["device_id", "stream_id", "sensor"])
}

extension MariaDBSession {
    /// Checked INSERT IGNORE of `rows` into `table`; throws `MariaDBRowsNotWritten` when a row
    /// was neither inserted nor already there.
    @discardableResult
    package func insert(_ table: CheckedTable, _ rows: [[MariaDBValue]]) throws -> InsertCounts {
        try insertIgnoringDuplicates(into: table.name, columns: table.columns, key: table.key, rows: rows, arrayBound: table.arrayBound)
    }
}
