// WebStore: the reads and writes of the web admin, on the backend's MariaDB schema.
//
// Theory of operation: one `DatabaseClient` (one connection, reconnecting with failover) is
// shared by all requests; each call takes the current Store and runs its statements. A lost
// connection is dropped so the next request reconnects, and the request gets a 503 that says
// the database is not answering (never a 500). Progress and gaps come from the backend's own
// `Auditor` (the same numbers `fieldlog-backend audit` prints), so the pages never disagree
// with the command line.
import Audit
import BackendStore
import FieldlogCore
import Foundation
import Hummingbird
import Logging
import MariaDB
import Sync

/// A command as the pages and the API show it.
package struct CommandRow: Codable, Sendable {
    package var requestId: String
    package var device: String
    package var command: String
    package var payload: String
    package var sentBy: String?
    package var sentAt: String?
    package var responseAt: String?
    package var outcome: String?
    package var response: String?
    /// "waiting", "answered", "failed", "timed-out" or "not-sent".
    package var state: String
}

/// One reading with its values (table, API).
package struct ReadingRow: Codable, Sendable {
    package var epoch: String
    package var seq: UInt64
    package var time: String?
    package var receivedAt: String?
    package var clockUnsynchronized: Bool
    package var values: [String: ReadingValue]
}

/// A sensor value: a number or a text.
package enum ReadingValue: Codable, Sendable, Hashable {
    case number(Double)
    case text(String)

    package func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .number(let d): try c.encode(d)
        case .text(let s): try c.encode(s)
        }
    }

    package init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let d = try? c.decode(Double.self) { self = .number(d) } else { self = .text(try c.decode(String.self)) }
    }

    package var display: String {
        switch self {
        case .number(let d): return formatNumber(d)
        case .text(let s): return s
        }
    }
}

/// A numeric point of a sensor's series.
package struct SeriesPoint: Sendable, Hashable {
    package var ms: Int64
    package var value: Double
    package var epoch: UInt64
    package var seq: UInt64
}

package final class WebStore: Sendable {
    package let database: DatabaseClient
    package let settings: WebSettings
    package let logger: Logger
    package let fleetCache = FleetCache()
    /// A second connection, for reading the whole fleet (Fleet.swift).
    package let fleetDatabase: DatabaseClient

    package init(database: DatabaseClient, settings: WebSettings, logger: Logger) {
        self.database = database
        self.settings = settings
        self.logger = logger
        fleetDatabase = DatabaseClient(settings: database.settings, logger: logger)
    }

    package func close() async {
        await database.close()
        await fleetDatabase.close()
    }

    /// Runs `body` on the current connection; a lost connection becomes a 503 and is dropped.
    package func run<T: Sendable>(_ what: String, on client: DatabaseClient? = nil, _ body: @Sendable (Store) async throws -> T) async throws -> T {
        let database = client ?? self.database
        let store: Store
        do {
            store = try await database.store()
        } catch {
            logger.warning("web: database not answering (\(what)): \(error)")
            throw HTTPError(.serviceUnavailable, message: "The database is not answering; try again in a moment.")
        }
        do {
            return try await body(store)
        } catch let error as MariaDBError {
            logger.error("web: \(what) failed: \(error)")
            if error.isConnectionLost { await database.failed() }
            throw HTTPError(.serviceUnavailable, message: "The database did not answer (\(what)); try again in a moment.")
        }
    }

    // MARK: audit

    /// The audit; `checkingRows: false` reads only the ledger (no pass over the readings).
    package func audit(device: DeviceID? = nil, checkingRows: Bool = true) async throws -> AuditReport {
        let silentAfter = settings.silentAfter
        return try await run("audit") { s in
            try await Auditor(connection: s.connection, silentAfter: silentAfter, checksRows: checkingRows).run(device: device)
        }
    }

    package func deviceExists(_ device: DeviceID) async throws -> Bool {
        try await run("find device") { s in
            !(try await s.connection.execute("SELECT 1 FROM devices WHERE device_id = ?", [.string(device.rawValue)]).rows.isEmpty)
        }
    }

    // MARK: readings

    /// Names of the device's sensors that have numeric values in the range (or at all, when none there).
    package func sensors(device: DeviceID) async throws -> [String] {
        try await run("list sensors") { s in
            try await s.connection.execute("""
                SELECT sensor FROM device_sensors WHERE device_id = ?
                UNION SELECT DISTINCT sensor FROM legacy_values WHERE device_id = ? ORDER BY 1
                """, [.string(device.rawValue), .string(device.rawValue)]).rows.compactMap { $0[0].string }
        }
    }

    /// Numeric points of every sensor (or one) in [from, to), at most `limit` points (newest kept
    /// when over). Reads `readings.vals` (the numbers) and decodes it here: MariaDB's JSON functions per row
    /// cost more than the whole query otherwise (docs/benchmarks.md, "Queries").
    package func series(device: DeviceID, fromMs: Int64, toMs: Int64, sensor: String? = nil, limit: Int = 50_000) async throws -> (points: [String: [SeriesPoint]], truncated: Bool) {
        let from = SQLTime.datetime(unixMilliseconds: fromMs)!, to = SQLTime.datetime(unixMilliseconds: toMs)!
        let rows = try await run("read series") { s in
            try await s.connection.execute("""
                SELECT device_time, epoch, seq, vals FROM readings
                 WHERE device_id = ? AND device_time >= ? AND device_time < ?
                 ORDER BY device_time DESC LIMIT \(limit + 1)
                """, [.string(device.rawValue), .string(from), .string(to)]).rows
        }
        var newestFirst: [(String, SeriesPoint)] = []
        var truncated = rows.count > limit
        readings: for r in rows.prefix(limit) {
            guard let t = r[0].string.flatMap(WebTime.milliseconds(sql:)), let values = r[3].string.flatMap({ StoreRows.values(vals: $0, texts: nil) }) else { continue }
            for (name, value) in values.sorted where sensor == nil || sensor == name {
                guard case .number(let v) = value else { continue }
                if newestFirst.count == limit { truncated = true; break readings }
                newestFirst.append((name, SeriesPoint(ms: t, value: v, epoch: r[1].uint64 ?? 0, seq: r[2].uint64 ?? 0)))
            }
        }
        var out: [String: [SeriesPoint]] = [:]
        for (name, point) in newestFirst.reversed() { out[name, default: []].append(point) }
        return (out, truncated)
    }

    /// Device times of the first and last reading since `sinceMs`, nil when there is none.
    package func readingExtent(device: DeviceID, sinceMs: Int64) async throws -> (first: Int64, last: Int64)? {
        let since = SQLTime.datetime(unixMilliseconds: sinceMs)!
        let row = try await run("read extent") { s in
            try await s.connection.execute("SELECT MIN(device_time), MAX(device_time) FROM readings WHERE device_id = ? AND device_time >= ?",
                                           [.string(device.rawValue), .string(since)]).rows.first
        }
        guard let row, let a = row[0].string.flatMap(WebTime.milliseconds(sql:)), let b = row[1].string.flatMap(WebTime.milliseconds(sql:)) else { return nil }
        return (a, b)
    }

    /// One page of readings in [from, to), newest first, with their values; and the total count.
    package func readings(device: DeviceID, fromMs: Int64, toMs: Int64, page: Int, pageSize: Int) async throws -> (rows: [ReadingRow], total: Int) {
        let from = SQLTime.datetime(unixMilliseconds: fromMs)!, to = SQLTime.datetime(unixMilliseconds: toMs)!
        let d = MariaDBValue.string(device.rawValue)
        return try await run("read readings") { s in
            let total = try await s.connection.execute(
                "SELECT COUNT(*) FROM readings WHERE device_id = ? AND device_time >= ? AND device_time < ?",
                [d, .string(from), .string(to)]).rows.first?[0].int64 ?? 0
            let rows = try await s.connection.execute("""
                SELECT epoch, seq, device_time, received_at, clock_unsynchronized, vals, texts FROM readings
                 WHERE device_id = ? AND device_time >= ? AND device_time < ?
                 ORDER BY device_time DESC, epoch DESC, seq DESC LIMIT \(pageSize) OFFSET \(page * pageSize)
                """, [d, .string(from), .string(to)]).rows
            let result: [ReadingRow] = rows.map { r in
                var values: [String: ReadingValue] = [:]
                for (name, value) in r[5].string.flatMap({ StoreRows.values(vals: $0, texts: r[6].string) })?.sorted ?? [] {
                    switch value {
                    case .number(let n): values[name] = .number(n)
                    case .text(let t): values[name] = .text(t)
                    }
                }
                return ReadingRow(epoch: Epoch(r[0].uint64 ?? 0).hex, seq: r[1].uint64 ?? 0, time: WebTime.iso(sql: r[2].string),
                                  receivedAt: WebTime.iso(sql: r[3].string), clockUnsynchronized: (r[4].int64 ?? 0) != 0, values: values)
            }
            return (result, Int(total))
        }
    }

    /// Readings after the keyset position (time, epoch, seq), oldest first, for the CSV export.
    package func readingsChunk(device: DeviceID, fromMs: Int64, toMs: Int64, after: (time: String, epoch: UInt64, seq: UInt64)?, limit: Int) async throws -> [(time: String, epoch: UInt64, seq: UInt64, sensor: String?, value: String?)] {
        let from = SQLTime.datetime(unixMilliseconds: fromMs)!, to = SQLTime.datetime(unixMilliseconds: toMs)!
        var binds: [MariaDBValue] = [.string(device.rawValue), .string(from), .string(to)]
        var keyset = ""
        if let after {
            keyset = " AND (r.device_time, r.epoch, r.seq) > (?, ?, ?)"
            binds += [.string(after.time), .uint(after.epoch), .uint(after.seq)]
        }
        let finalBinds = binds
        let keysetClause = keyset
        let rows = try await run("export readings") { s in
            try await s.connection.execute("""
                SELECT r.device_time, r.epoch, r.seq, r.vals, r.texts FROM readings r
                 WHERE r.device_id = ? AND r.device_time >= ? AND r.device_time < ?\(keysetClause)
                 ORDER BY r.device_time, r.epoch, r.seq LIMIT \(limit)
                """, finalBinds).rows
        }
        var out: [(time: String, epoch: UInt64, seq: UInt64, sensor: String?, value: String?)] = []
        for r in rows {
            let (time, epoch, seq) = (r[0].string ?? "", r[1].uint64 ?? 0, r[2].uint64 ?? 0)
            let values = r[3].string.flatMap({ StoreRows.values(vals: $0, texts: r[4].string) })?.sorted ?? []
            if values.isEmpty { out.append((time, epoch, seq, nil, nil)) }
            for (name, value) in values {
                switch value {
                case .number(let n): out.append((time, epoch, seq, name, formatNumber(n)))
                case .text(let t): out.append((time, epoch, seq, name, t))
                }
            }
        }
        return out
    }

    /// For each gap, the device times of the stored readings just before and just after it.
    package func gapTimes(device: DeviceID, gaps: [(epoch: UInt64, first: UInt64, last: UInt64)]) async throws -> [(from: Int64?, to: Int64?)] {
        guard !gaps.isEmpty else { return [] }
        var keys: [String] = []
        for g in gaps {
            if g.first > 1 { keys.append("(\(g.epoch),\(g.first - 1))") }
            keys.append("(\(g.epoch),\(g.last + 1))")
        }
        let keyList = keys.joined(separator: ",")
        let rows = try await run("read gap edges") { s in
            try await s.connection.execute(
                "SELECT epoch, seq, device_time FROM readings WHERE device_id = ? AND (epoch, seq) IN (\(keyList))",
                [.string(device.rawValue)]).rows
        }
        var times: [String: Int64] = [:]
        for r in rows { if let t = r[2].string.flatMap(WebTime.milliseconds(sql:)) { times["\(r[0].uint64 ?? 0)/\(r[1].uint64 ?? 0)"] = t } }
        return gaps.map { g in (g.first > 1 ? times["\(g.epoch)/\(g.first - 1)"] : nil, times["\(g.epoch)/\(g.last + 1)"]) }
    }

    // MARK: commands

    package func insertCommand(requestID: String, device: DeviceID, command: Command, payload: String, sentBy: String) async throws {
        var epoch: Epoch?
        var range: SequenceRange?
        if case .replay(let e, let r) = command.kind { epoch = e; range = r }
        let binds: [MariaDBValue] = [.string(requestID), .string(device.rawValue), .string(command.name), epoch.map { .uint($0.rawValue) } ?? .null,
                                     range.map { .uint($0.first.rawValue) } ?? .null, range.map { .uint($0.last.rawValue) } ?? .null,
                                     .string(payload), .string(SQLTime.now()), .string(sentBy)]
        let detail = command.name + (Page.commandArguments(payload).map { " " + $0 } ?? "")
        try await run("record command") { s in
            try await s.connection.transaction { t in
                try t.execute("""
                    INSERT INTO commands (request_id, device_id, command, epoch, first_seq, last_seq, payload, sent_at, sent_by)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """, binds)
                try UserDirectory.record(t, actor: sentBy, action: .command, target: device.rawValue, detail: detail, requestID: requestID)
            }
        }
    }

    /// Marks a command that could not be published (broker down); it will never be answered.
    package func markNotSent(requestID: String, reason: String) async throws {
        try await run("record publish failure") { s in
            try await s.connection.execute(
                "UPDATE commands SET outcome = 'not-sent', response = ?, response_at = ? WHERE request_id = ? AND response_at IS NULL",
                [.string(String(reason.prefix(1000))), .string(SQLTime.now()), .string(requestID)])
        }
    }

    /// The command's columns, and whether the device's answer said ok: the `ok` column of its
    /// latest `command_responses` row (ingest records the answer there and on the command).
    package static let commandColumns = """
        c.request_id, c.device_id, c.command, c.payload, c.sent_by, c.sent_at, c.response_at, c.outcome, c.response,
        (SELECT r.ok FROM command_responses r WHERE r.request_id = c.request_id AND r.device_id = c.device_id ORDER BY r.id DESC LIMIT 1)
        """

    package func commandRow(_ r: [MariaDBValue], nowMs: Int64) -> CommandRow {
        let sentAt = r[5].string
        let responseAt = r[6].string
        let outcome = r[7].string
        let state = CommandRow.state(answeredOK: r[9].int64.map { $0 != 0 }, responseAt: responseAt, outcome: outcome,
                                     sentAtMs: sentAt.flatMap(WebTime.milliseconds(sql:)), nowMs: nowMs,
                                     timeoutMs: settings.commandTimeout.inMilliseconds)
        return CommandRow(requestId: r[0].string ?? "", device: r[1].string ?? "", command: r[2].string ?? "", payload: r[3].string ?? "",
                          sentBy: r[4].string, sentAt: WebTime.iso(sql: sentAt), responseAt: WebTime.iso(sql: responseAt),
                          outcome: outcome, response: r[8].string, state: state)
    }

    package func commands(device: DeviceID?, limit: Int = 50) async throws -> [CommandRow] {
        let filter = device == nil ? "" : " WHERE c.device_id = ?"
        let rows = try await run("read commands") { s in
            try await s.connection.execute("SELECT \(Self.commandColumns) FROM commands c\(filter) ORDER BY c.sent_at DESC LIMIT \(limit)",
                                           device.map { [.string($0.rawValue)] } ?? []).rows
        }
        let now = WebTime.nowMilliseconds()
        return rows.map { commandRow($0, nowMs: now) }
    }

    package func command(requestID: String) async throws -> CommandRow? {
        let rows = try await run("read command") { s in
            try await s.connection.execute("SELECT \(Self.commandColumns) FROM commands c WHERE c.request_id = ?", [.string(requestID)]).rows
        }
        return rows.first.map { commandRow($0, nowMs: WebTime.nowMilliseconds()) }
    }

    /// The device's latest answer to a reboot when it refused it (reboot disabled on the
    /// device, or a device that does not know the command); nil when it never refused or
    /// rebooted since.
    package func rebootRefusal(device: DeviceID) async throws -> (message: String, at: String?)? {
        let row = try await run("read reboot answers") { s in
            try await s.connection.execute("""
                SELECT ok, payload, received_at FROM command_responses WHERE device_id = ? AND command = 'reboot' ORDER BY id DESC LIMIT 1
                """, [.string(device.rawValue)]).rows.first
        }
        guard let row, row[0].int64 == 0, let payload = row[1].string,
              let response = try? SyncCodec.decodeCommandResponse(Array(payload.utf8)),
              response.error == .notAllowed || response.error == .unknownCommand else { return nil }
        return (response.message ?? response.error?.rawValue ?? "refused", WebTime.iso(sql: row[2].string))
    }
}

extension CommandRow {
    /// The state of a command. The device's answer decides answered / failed by its `ok`
    /// member (the `ok` column); the ingest's outcome text ("ok", "resent 1…3",
    /// "not-retained …", or an error code) only describes it. Without an answer row (a
    /// command the broker did not take, or rows from before answers were kept) the outcome
    /// is read as failed only when it is one of the protocol's error codes.
    package static func state(answeredOK: Bool?, responseAt: String?, outcome: String?, sentAtMs: Int64?, nowMs: Int64, timeoutMs: Int64) -> String {
        if let ok = answeredOK { return ok ? "answered" : "failed" }
        if responseAt != nil {
            if outcome == "not-sent" { return "not-sent" }
            if let o = outcome, CommandErrorCode(rawValue: o) != nil { return "failed" }
            return "answered"
        }
        if let t = sentAtMs, nowMs - t > timeoutMs { return "timed-out" }
        return "waiting"
    }
}

/// 32 random bytes as 64 hex digits (SystemRandomNumberGenerator is the OS's CSPRNG).
package func randomToken() -> String {
    var g = SystemRandomNumberGenerator()
    var s = ""
    s.reserveCapacity(64)
    for _ in 0..<4 {
        let v = g.next() as UInt64
        let h = String(v, radix: 16)
        s += String(repeating: "0", count: 16 - h.count) + h
    }
    return s
}

package func isHexDigit(_ b: UInt8) -> Bool { (b >= 0x30 && b <= 0x39) || (b >= 0x61 && b <= 0x66) }

/// Numbers as people read them: up to 4 decimals, no trailing zeros.
package func formatNumber(_ d: Double) -> String {
    guard d.isFinite else { return String(d) }
    if d == d.rounded(), abs(d) < 1e15 { return String(Int64(d)) }
    var s = String(format: "%.4f", d)
    while s.hasSuffix("0") { s.removeLast() }
    if s.hasSuffix(".") { s.removeLast() }
    return s
}
