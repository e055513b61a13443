// Audit: what is stored, what is missing and why, per device and epoch.
//
// Theory of operation: the audit reads the same immutable `batch_ranges` rows that acks are
// derived from (the ledger), plus declared losses, rejected records, status heads and seed
// (legacy) readings, and builds an `AuditReport` (a value; printing it as text or JSON is
// separate). A *gap* is a range of sequence numbers below the highest stored one that is not
// accounted for in the ledger. An *ended* epoch is one the device has left (it reported a
// later epoch); if its reported head is above what is stored, the records in between are
// missing for good unless a replay finds them. Records above the highest stored number of the
// current epoch are backlog, not gaps: the device still holds them.
// The ledger is not taken on its word: `RowCheck` then checks the data behind it. Every number
// in a ledger range must have a `readings` row, a declared loss or a rejected record; the
// numbers that have none are *rows missing* (acked, but the rows are gone: deleted behind the
// ingest's back, or never written by a faulty server), a gap with its own reason. The ledger
// is read before the data: a batch commits its rows and its range together, so a range the
// audit saw has its rows in every later read unless they really are gone.
import BackendStore
import FieldlogCore
import Foundation
import MariaDB

/// The audit of one (device, epoch).
package struct EpochAudit: Codable, Sendable, Hashable {
    package struct Range: Codable, Sendable, Hashable {
        package var first: UInt64
        package var last: UInt64
        package init(_ r: SequenceRange) { first = r.first.rawValue; last = r.last.rawValue }
        package var sequenceRange: SequenceRange { SequenceRange(checked: SequenceNumber(first), SequenceNumber(last)) }
    }
    package struct Loss: Codable, Sendable, Hashable {
        package var first: UInt64
        package var last: UInt64
        package var reason: String
        package var detail: String
    }
    package var epoch: String
    /// Ranges the ledger (`batch_ranges`) accounts for that have no readings row, no declared
    /// loss and no rejected record: acked, but not in the database.
    package var rowsMissing: [Range] = []
    package var storedThrough: UInt64
    /// Highest sequence number seen: stored, or reported by the device's status.
    package var highestSeen: UInt64
    package var highestStored: UInt64
    package var gaps: [Range]
    package var losses: [Loss]
    package var rejectedRecords: Int
    /// True when the device has moved to a later epoch.
    package var ended: Bool
    /// For an ended epoch: reported head above stored-through (records that will never arrive unless replayed).
    package var unstoredAtEnd: Range?
    package var lastStoredAt: String?

    package var missingCount: UInt64 {
        (gaps + rowsMissing).reduce(0) { $0 + ($1.last - $1.first + 1) } + (unstoredAtEnd.map { $0.last - $0.first + 1 } ?? 0)
    }
}

/// The audit of one device.
package struct DeviceAudit: Codable, Sendable, Hashable {
    package var device: String
    package var protocolName: String
    package var epochs: [EpochAudit]
    /// Seed devices: number of readings stored (no sequence numbers, so no gap detection).
    package var legacyReadings: Int?
    package var note: String?
    package var lastSeenAt: String?
    package var silent: Bool

    package enum CodingKeys: String, CodingKey {
        case device, protocolName = "protocol", epochs, legacyReadings, note, lastSeenAt, silent
    }
}

/// The whole audit; `hasGaps` decides the exit status.
package struct AuditReport: Codable, Sendable, Hashable {
    package var generatedAt: String
    package var silentAfterSeconds: Int
    /// Whether the rows behind the ledger were checked (`rowsMissing`); false for a ledger-only
    /// report (`Auditor.checksRows`).
    package var rowsChecked: Bool
    package var devices: [DeviceAudit]

    package var hasGaps: Bool { devices.contains { $0.epochs.contains { $0.missingCount > 0 } } }

    /// Every range a repair asks devices to resend.
    package var repairRequests: [(device: DeviceID, epoch: Epoch, range: SequenceRange)] {
        var out: [(DeviceID, Epoch, SequenceRange)] = []
        for d in devices {
            guard let id = try? DeviceID(d.device) else { continue }
            for e in d.epochs {
                guard let epoch = try? Epoch(hex: e.epoch) else { continue }
                for g in (e.gaps + e.rowsMissing).sorted(by: { $0.first < $1.first }) { out.append((id, epoch, g.sequenceRange)) }
                if let u = e.unstoredAtEnd { out.append((id, epoch, u.sequenceRange)) }
            }
        }
        return out.map { (device: $0.0, epoch: $0.1, range: $0.2) }
    }

    package func text() -> String {
        var lines: [String] = []
        for d in devices {
            var head = "device \(d.device) (\(d.protocolName))"
            if let seen = d.lastSeenAt { head += ", last seen \(seen) UTC" }
            if d.silent { head += ", SILENT for more than \(silentAfterSeconds) s" }
            lines.append(head)
            if let n = d.legacyReadings { lines.append("  \(n) seed readings stored") }
            if let note = d.note { lines.append("  note: \(note)") }
            for e in d.epochs {
                var l = "  epoch \(e.epoch)\(e.ended ? " (ended)" : ""): stored through \(e.storedThrough), highest seen \(e.highestSeen)"
                if e.rejectedRecords > 0 { l += ", \(e.rejectedRecords) rejected records in dead_letters" }
                lines.append(l)
                for g in e.gaps { lines.append("    GAP \(g.first)…\(g.last) (\(g.last - g.first + 1) records)") }
                for g in e.rowsMissing {
                    lines.append("    ROWS MISSING \(g.first)…\(g.last) (\(g.last - g.first + 1) records in batch_ranges, so acked, but not in readings, loss_ranges or dead_letters)")
                }
                if let u = e.unstoredAtEnd { lines.append("    ENDED WITH UNSTORED \(u.first)…\(u.last)") }
                for loss in e.losses { lines.append("    declared lost \(loss.first)…\(loss.last): \(loss.reason)\(loss.detail.isEmpty ? "" : " (\(loss.detail))")") }
            }
        }
        lines.append(hasGaps ? "RESULT: records are missing" : "RESULT: nothing missing")
        return lines.joined(separator: "\n")
    }

    package func json() throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return String(decoding: try encoder.encode(self), as: UTF8.self)
    }
}

/// Builds the audit from the database.
package struct Auditor {
    package var connection: MariaDBConnection
    package var silentAfter: Duration = .seconds(3600)
    /// Check the readings rows behind the ledger (`RowCheck`): one pass over the readings
    /// primary key (about 0.5 s per million rows here). Off only for views that need the
    /// ledger's figures often and fast (the web admin's fleet overview).
    package var checksRows = true

    package init(connection: MariaDBConnection, silentAfter: Duration = .seconds(3600), checksRows: Bool = true) {
        self.connection = connection
        self.silentAfter = silentAfter
        self.checksRows = checksRows
    }

    package func run(device: DeviceID? = nil, now: Date = Date()) async throws -> AuditReport {
        let filter = device == nil ? "" : " WHERE device_id = ?"
        let binds: [MariaDBValue] = device.map { [.string($0.rawValue)] } ?? []
        let devices = try await connection.execute(
            "SELECT device_id, protocol, status_epoch, status_received_at FROM devices\(filter) ORDER BY device_id", binds)
        let epochs = try await connection.execute(
            "SELECT device_id, epoch, reported_head, first_seen_at FROM epochs\(filter) ORDER BY device_id, first_seen_at, epoch", binds)
        let ranges = try await connection.execute(
            "SELECT device_id, epoch, first_seq, last_seq, stored_at FROM batch_ranges\(filter) ORDER BY device_id, epoch, first_seq", binds)
        let losses = try await connection.execute(
            "SELECT device_id, epoch, first_seq, last_seq, reason, detail FROM loss_ranges\(filter) ORDER BY device_id, epoch, first_seq", binds)
        let rejected = try await connection.execute(
            "SELECT device_id, epoch, COUNT(*) FROM dead_letters WHERE seq IS NOT NULL\(device == nil ? "" : " AND device_id = ?") GROUP BY device_id, epoch", binds)
        let legacy = try await connection.execute(
            "SELECT device_id, COUNT(*), MAX(received_at) FROM legacy_readings\(filter) GROUP BY device_id", binds)

        typealias Key = AuditKey
        var coverage: [Key: Coverage] = [:]
        var lastStored: [Key: String] = [:]
        for r in ranges.rows {
            let k = Key(device: r[0].string!, epoch: r[1].uint64!)
            coverage[k, default: Coverage()].insert(SequenceRange(checked: SequenceNumber(r[2].uint64!), SequenceNumber(r[3].uint64!)))
            if let t = r[4].string, t > (lastStored[k] ?? "") { lastStored[k] = t }
        }
        var lossMap: [Key: [EpochAudit.Loss]] = [:]
        for r in losses.rows {
            lossMap[Key(device: r[0].string!, epoch: r[1].uint64!), default: []].append(
                EpochAudit.Loss(first: r[2].uint64!, last: r[3].uint64!, reason: r[4].string ?? "", detail: r[5].string ?? ""))
        }
        // The data behind the ledger (read after it: see the theory of operation).
        let rowsMissing = checksRows ? try await RowCheck(connection: connection).missing(ledger: coverage, losses: lossMap, device: device) : [:]
        var rejectedMap: [Key: Int] = [:]
        for r in rejected.rows { rejectedMap[Key(device: r[0].string!, epoch: r[1].uint64!)] = Int(r[2].int64 ?? 0) }
        var epochOrder: [String: [(epoch: UInt64, reportedHead: UInt64)]] = [:]
        for r in epochs.rows { epochOrder[r[0].string!, default: []].append((r[1].uint64!, r[2].uint64 ?? 0)) }
        var legacyMap: [String: (Int, String?)] = [:]
        for r in legacy.rows { legacyMap[r[0].string!] = (Int(r[1].int64 ?? 0), r[2].string) }

        let nowText = SQLTime.datetime(unixMilliseconds: Int64(now.timeIntervalSince1970 * 1000))!
        let silentBefore = SQLTime.datetime(unixMilliseconds: Int64(now.timeIntervalSince1970 * 1000) - silentAfter.inMilliseconds)!
        var report = AuditReport(generatedAt: nowText, silentAfterSeconds: Int(silentAfter.components.seconds), rowsChecked: checksRows, devices: [])
        for row in devices.rows {
            let id = row[0].string!
            let proto = row[1].string ?? "fieldlog"
            let statusEpoch = row[2].uint64
            var lastSeen = row[3].string
            var audits: [EpochAudit] = []
            let known = epochOrder[id] ?? []
            // The current epoch: the one in the last status, else the one first seen last.
            let current = statusEpoch ?? known.last?.epoch
            for (epoch, reportedHead) in known {
                let k = Key(device: id, epoch: epoch)
                let c = coverage[k] ?? Coverage()
                let through = c.contiguousThrough
                let ended = current != nil && current != epoch
                var unstored: EpochAudit.Range?
                let endHead = max(reportedHead, c.highest.rawValue)
                if ended, endHead > c.highest.rawValue {
                    unstored = EpochAudit.Range(SequenceRange(checked: SequenceNumber(c.highest.rawValue + 1), SequenceNumber(endHead)))
                }
                if let t = lastStored[k], t > (lastSeen ?? "") { lastSeen = t }
                audits.append(EpochAudit(
                    epoch: Epoch(epoch).hex, rowsMissing: (rowsMissing[k] ?? []).map(EpochAudit.Range.init), storedThrough: through.rawValue, highestSeen: max(reportedHead, c.highest.rawValue),
                    highestStored: c.highest.rawValue, gaps: c.gaps().map(EpochAudit.Range.init), losses: lossMap[k] ?? [],
                    rejectedRecords: rejectedMap[k] ?? 0, ended: ended, unstoredAtEnd: unstored, lastStoredAt: lastStored[k]))
            }
            var d = DeviceAudit(device: id, protocolName: proto, epochs: audits, legacyReadings: nil, note: nil, lastSeenAt: nil, silent: false)
            if let (n, t) = legacyMap[id] {
                d.legacyReadings = n
                d.note = "seed (legacy) device: no sequence numbers and no acks, so there is no delivery guarantee and gaps cannot be detected"
                if let t, t > (lastSeen ?? "") { lastSeen = t }
            }
            d.lastSeenAt = lastSeen
            d.silent = (lastSeen ?? "") < silentBefore
            report.devices.append(d)
        }
        return report
    }
}

/// A (device, epoch) of the audit.
package struct AuditKey: Hashable, Sendable {
    package var device: String
    package var epoch: UInt64
}

/// Checks the rows behind the ledger: which numbers of each (device, epoch)'s `batch_ranges`
/// have no `readings` row, no declared loss and no rejected record.
///
/// Fast on millions of rows: one grouped count over the readings primary key gives each
/// epoch's count, lowest and highest number; an epoch whose count equals highest − lowest + 1
/// has every number in between (the key is unique), so it needs nothing more. Only the other
/// epochs (holes: declared losses, rejected records, or rows really missing) get an islands
/// query (`seq − ROW_NUMBER()` is constant along a run of consecutive numbers), and only the
/// numbers still unaccounted for after the declared losses are looked up among the rejected
/// records. docs/operating-backend.md has the timings.
package struct RowCheck {
    package var connection: MariaDBConnection

    package func missing(ledger: [AuditKey: Coverage], losses: [AuditKey: [EpochAudit.Loss]], device: DeviceID?) async throws -> [AuditKey: [SequenceRange]] {
        guard !ledger.isEmpty else { return [:] }
        let filter = device == nil ? "" : " WHERE device_id = ?"
        let binds: [MariaDBValue] = device.map { [.string($0.rawValue)] } ?? []
        let summary = try await connection.execute(
            "SELECT device_id, epoch, COUNT(*), MIN(seq), MAX(seq) FROM readings\(filter) GROUP BY device_id, epoch", binds)
        var stored: [AuditKey: (count: UInt64, range: SequenceRange)] = [:]
        for r in summary.rows {
            guard let d = r[0].string, let e = r[1].uint64, let n = r[2].uint64, let lo = r[3].uint64, let hi = r[4].uint64 else {
                throw SchemaError(description: "readings summary has an unexpected row \(r)")
            }
            stored[AuditKey(device: d, epoch: e)] = (n, try Self.range(lo, hi, "readings"))
        }
        var result: [AuditKey: [SequenceRange]] = [:]
        for (key, ranges) in ledger where !ranges.ranges.isEmpty {
            var data = Coverage()
            if let s = stored[key] {
                if s.count == s.range.count {
                    data.insert(s.range)
                } else {
                    for island in try await islands(table: "readings", key, within: s.range) { data.insert(island) }
                }
            }
            for loss in losses[key] ?? [] { data.insert(try Self.range(loss.first, loss.last, "loss_ranges")) }
            var unaccounted = ranges.subtracting(data)
            guard !unaccounted.isEmpty else { continue }
            for r in unaccounted {
                for island in try await islands(table: "dead_letters", key, within: r) { data.insert(island) }
            }
            unaccounted = ranges.subtracting(data)
            if !unaccounted.isEmpty { result[key] = unaccounted }
        }
        return result
    }

    /// Runs of consecutive `seq` of (device, epoch) in `table` within `range`, ascending.
    package func islands(table: String, _ key: AuditKey, within range: SequenceRange) async throws -> [SequenceRange] {
        let rows = try await connection.execute("""
            SELECT MIN(seq), MAX(seq) FROM (
              SELECT seq, seq - ROW_NUMBER() OVER (ORDER BY seq) AS island
                FROM \(table) WHERE device_id = ? AND epoch = ? AND seq BETWEEN ? AND ?) r
             GROUP BY island ORDER BY 1
            """, [.string(key.device), .uint(key.epoch), .uint(range.first.rawValue), .uint(range.last.rawValue)])
        return try rows.rows.map { r in
            guard let lo = r[0].uint64, let hi = r[1].uint64 else { throw SchemaError(description: "\(table) islands: unexpected row \(r)") }
            return try Self.range(lo, hi, table)
        }
    }

    package static func range(_ first: UInt64, _ last: UInt64, _ table: String) throws -> SequenceRange {
        guard first >= 1, first <= last, last <= SequenceNumber.max.rawValue else {
            throw SchemaError(description: "\(table) holds an invalid sequence range \(first)…\(last)")
        }
        return SequenceRange(checked: SequenceNumber(first), SequenceNumber(last))
    }
}
