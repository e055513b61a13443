// CSV export of a device's readings: one row per reading, one column per sensor, streamed.
import FieldlogCore
import Foundation
import Hummingbird
import NIOCore

extension WebRoutes {
    /// CSV of a range: one row per reading, one column per sensor (wide), streamed in chunks.
    package func csv(_ request: Request, _ context: WebContext) async throws -> Response {
        let d = try await knownDevice(context)
        let range = try await timeRange(request, device: d)
        let sensors = try await store.sensors(device: d)
        let store = self.store
        let header = (["time_utc", "epoch", "seq"] + sensors).map(csvField).joined(separator: ",") + "\r\n"
        let body = ResponseBody { writer in
            try await writer.write(ByteBuffer(string: header))
            var after: (time: String, epoch: UInt64, seq: UInt64)?
            while true {
                let rows = try await store.readingsChunk(device: d, fromMs: range.from, toMs: range.to, after: after, limit: 2000)
                if rows.isEmpty { break }
                var out = ""
                var current: (time: String, epoch: UInt64, seq: UInt64)?
                var values: [String: String] = [:]
                func flushRow() {
                    guard let c = current else { return }
                    out += ([WebTime.iso(sql: c.time) ?? c.time, Epoch(c.epoch).hex, String(c.seq)] + sensors.map { values[$0] ?? "" }).map(csvField).joined(separator: ",") + "\r\n"
                    values = [:]
                }
                for r in rows {
                    if current == nil || current!.time != r.time || current!.epoch != r.epoch || current!.seq != r.seq {
                        flushRow()
                        current = (r.time, r.epoch, r.seq)
                    }
                    if let s = r.sensor, let v = r.value { values[s] = v }
                }
                flushRow()
                after = current
                try await writer.write(ByteBuffer(string: out))
                if Set(rows.map { "\($0.epoch)/\($0.seq)" }).count < 2000 { break }
            }
            try await writer.finish(nil)
        }
        let name = "\(d.rawValue)-\(WebTime.iso(milliseconds: range.from).prefix(16))-\(WebTime.iso(milliseconds: range.to).prefix(16)).csv".replacingOccurrences(of: ":", with: "")
        return Response(status: .ok, headers: [.contentType: "text/csv; charset=utf-8", .contentDisposition: "attachment; filename=\"\(name)\"",
                                               .cacheControl: "no-store"], body: body)
    }
}

/// CSV quoting (RFC 4180), and a leading quote for cells a spreadsheet would run as a
/// formula: those starting with = + - @, or with TAB / CR (which spreadsheets skip before
/// reading the rest as a formula). Plain numbers stay numbers.
package func csvField(_ s: String) -> String {
    var v = s
    if let f = v.unicodeScalars.first, "=+-@\t\r".unicodeScalars.contains(f), Double(v) == nil { v = "'" + v }
    if v.contains(",") || v.contains("\"") || v.contains("\n") || v.contains("\r") {
        return "\"" + v.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }
    return v
}
