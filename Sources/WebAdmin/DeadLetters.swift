// Dead letters as the web admin lists them: messages and records the ingest refused, with the
// reason, the device, the time and the head of the stored payload.
//
// Theory of operation: `DeadLetterQuery` is parsed from the request (reason, device, from/to,
// `before` for the next page) and checked like every other parameter (a 400 that names it).
// The list is newest first and paged by id (keyset: `before` = the last id shown), so paging
// stays fast however many there are; the reason filter uses `dead_letters_by_reason`, the
// device filter the unique key that starts with the device.
import Audit
import BackendStore
import FieldlogCore
import Foundation
import Hummingbird
import MariaDB
import Sync

/// One stored dead letter, as the page and the API show it.
package struct StoredDeadLetter: Codable, Sendable, Hashable {
    package var id: UInt64
    package var receivedAt: String?
    package var topic: String
    package var reason: String
    package var detail: String
    package var device: String?
    package var epoch: String?
    package var seq: UInt64?
    package var payloadBytes: Int
    /// The stored start of the payload: as text when it is printable UTF-8, else nil (see payloadHeadHex).
    package var payloadHead: String?
    /// The stored start of the payload in hex, when it is not UTF-8 text.
    package var payloadHeadHex: String?
}

/// Filters and paging of the dead letters (`?reason=&device=&from=&to=&before=&limit=`).
package struct DeadLetterQuery: Sendable, Hashable {
    package var reason: DeadLetterReason?
    package var device: DeviceID?
    package var fromMs: Int64?
    package var toMs: Int64?
    package var before: UInt64?
    package var limit = 50

    package init(parameters p: (String) -> String?, now: Int64 = WebTime.nowMilliseconds()) throws {
        if let r = p("reason") {
            guard let known = DeadLetterReason(rawValue: r) else {
                throw HTTPError(.badRequest, message: "reason must be one of \(DeadLetterReason.allCases.map(\.rawValue).joined(separator: ", ")), got \"\(r)\"")
            }
            reason = known
        }
        if let d = p("device") {
            do { device = try DeviceID(d) } catch { throw HTTPError(.badRequest, message: "device: invalid device id: \(error.description)") }
        }
        if let r = try WebTime.range(from: p("from"), to: p("to"), now: now) { (fromMs, toMs) = (r.from, r.to) }
        if let b = p("before") {
            guard let v = UInt64(b) else { throw HTTPError(.badRequest, message: "before must be a dead letter id (a whole number), got \"\(b)\"") }
            before = v
        }
        limit = try FleetQuery.int(p("limit"), "limit", default: 50, range: 1...500)
    }

    /// The parameters given, for links.
    package var parameters: [(String, String?)] {
        [("reason", reason?.rawValue), ("device", device?.rawValue), ("from", fromMs.map(String.init)), ("to", toMs.map(String.init)),
         ("limit", limit == 50 ? nil : String(limit))]
    }
}

extension WebStore {
    package func deadLetters(_ q: DeadLetterQuery) async throws -> [StoredDeadLetter] {
        var conditions: [String] = []
        var binds: [MariaDBValue] = []
        if let r = q.reason { conditions.append("reason = ?"); binds.append(.string(r.rawValue)) }
        if let d = q.device { conditions.append("device_id = ?"); binds.append(.string(d.rawValue)) }
        if let f = q.fromMs { conditions.append("received_at >= ?"); binds.append(.string(SQLTime.datetime(unixMilliseconds: f)!)) }
        if let t = q.toMs { conditions.append("received_at < ?"); binds.append(.string(SQLTime.datetime(unixMilliseconds: t)!)) }
        if let b = q.before { conditions.append("id < ?"); binds.append(.uint(b)) }
        let whereClause = conditions.isEmpty ? "" : " WHERE " + conditions.joined(separator: " AND ")
        let finalBinds = binds
        let rows = try await run("read dead letters") { s in
            try await s.connection.execute("""
                SELECT id, received_at, topic, reason, detail, device_id, epoch, seq, payload_bytes, payload_head
                  FROM dead_letters\(whereClause) ORDER BY id DESC LIMIT \(q.limit)
                """, finalBinds).rows
        }
        return rows.map { r in
            let head = r[9].bytes ?? []
            // The head is cut at 1 KiB, maybe inside a character: text when it is UTF-8 but for
            // that, and has no control characters but TAB, LF and CR (else it is binary: hex).
            let printable = !head.contains { ($0 < 0x20 && $0 != 0x09 && $0 != 0x0A && $0 != 0x0D) || $0 == 0x7F }
            let text = printable ? (0...min(3, head.count)).lazy.compactMap { String(validating: head.dropLast($0), as: UTF8.self) }.first : nil
            return StoredDeadLetter(id: r[0].uint64 ?? 0, receivedAt: WebTime.iso(sql: r[1].string), topic: r[2].string ?? "", reason: r[3].string ?? "",
                              detail: r[4].string ?? "", device: r[5].string, epoch: r[6].uint64.map { Epoch($0).hex }, seq: r[7].uint64,
                              payloadBytes: Int(r[8].int64 ?? 0), payloadHead: text,
                              payloadHeadHex: text == nil ? head.map { String($0, radix: 16).leftPadded(to: 2) }.joined() : nil)
        }
    }
}
