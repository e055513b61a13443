// The status page: the device's state and its latest readings as one HTML page, with an
// inline SVG chart per numeric sensor rendered on the server (no script, no CDN; it reloads
// itself every few seconds). StatusServer.swift serves it at `GET /`.
import FieldlogCore
import Sync
#if canImport(Glibc)
import Glibc
#endif

/// The HTML page with an inline SVG chart per numeric sensor.
enum StatusPage {
    static func escape(_ s: String) -> String {
        s.replacing("&", with: "&amp;").replacing("<", with: "&lt;")
            .replacing(">", with: "&gt;").replacing("\"", with: "&quot;")
    }

    static func render(status: JSONValue, readings: [RecentReadings.Entry]) -> String {
        var html = """
        <!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>fieldlog-device</title>
        <style>body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}
        td,th{padding:2px 10px;text-align:left;border-bottom:1px solid #ddd}svg{background:#fafafa;border:1px solid #ddd}
        .bad{color:#b00}.good{color:#070}h2{margin-top:1.2em}</style></head><body>
        <h1>fieldlog-device</h1>
        """
        html += "<h2>State</h2><table>"
        if case .object(let fields) = status {
            for (k, v) in fields {
                html += "<tr><th>\(escape(k))</th><td>\(escape(pretty(v)))</td></tr>"
            }
        }
        html += "</table>"
        html += "<h2>Latest readings</h2>"
        // Series per numeric value name.
        var series: [String: [(Int64, Double)]] = [:]
        for e in readings {
            for (name, v) in e.values {
                if case .number(let d) = v { series[name, default: []].append((e.timestamp.unixMilliseconds, d)) }
            }
        }
        if series.isEmpty { html += "<p>No readings yet.</p>" }
        for name in series.keys.sorted().prefix(12) {
            html += chart(name: name, points: series[name]!)
        }
        if let last = readings.last {
            html += "<p>Last: seq \(last.sequence) at \(iso(last.timestamp.unixMilliseconds))"
            if last.timestamp.clockUnsynchronized { html += " <span class=bad>(clock not synchronised)</span>" }
            if !last.missing.isEmpty { html += " <span class=bad>missing: \(escape(last.missing.joined(separator: ", ")))</span>" }
            html += "</p>"
        }
        html += "<p><a href=\"/status\">/status</a> · <a href=\"/metrics\">/metrics</a></p></body></html>\n"
        return html
    }

    static func chart(name: String, points: [(Int64, Double)]) -> String {
        let w = 600.0, h = 120.0, pad = 4.0
        let values = points.map(\.1)
        let lo = values.min() ?? 0, hi = values.max() ?? 1
        let span = hi - lo == 0 ? 1 : hi - lo
        let t0 = Double(points.first?.0 ?? 0), t1 = Double(points.last?.0 ?? 1)
        let tspan = t1 - t0 == 0 ? 1 : t1 - t0
        let coords = points.map { p -> String in
            let x = pad + (Double(p.0) - t0) / tspan * (w - 2 * pad)
            let y = h - pad - (p.1 - lo) / span * (h - 2 * pad)
            return "\((x * 10).rounded() / 10),\((y * 10).rounded() / 10)"
        }.joined(separator: " ")
        let last = values.last.map { String($0) } ?? "-"
        return """
        <h3>\(escape(name)) <small>now \(escape(last)), min \(lo), max \(hi), \(points.count) points</small></h3>
        <svg width="\(Int(w))" height="\(Int(h))" viewBox="0 0 \(Int(w)) \(Int(h))" role="img" aria-label="\(escape(name))">
        <polyline fill="none" stroke="#1f6feb" stroke-width="1.5" points="\(coords)"/></svg>
        """
    }

    static func pretty(_ v: JSONValue) -> String {
        switch v {
        case .string(let s): return s
        default: return String(decoding: JSONWriter.encode(v), as: UTF8.self)
        }
    }

    /// UTC ISO 8601 without Foundation's formatters (they load ICU: megabytes of memory).
    static func iso(_ ms: Int64) -> String {
        var t = time_t(ms / 1000)
        var tm = tm()
        gmtime_r(&t, &tm)
        func pad(_ v: Int32, _ n: Int) -> String { let s = String(v); return String(repeating: "0", count: max(0, n - s.count)) + s }
        return "\(pad(tm.tm_year + 1900, 4))-\(pad(tm.tm_mon + 1, 2))-\(pad(tm.tm_mday, 2))T\(pad(tm.tm_hour, 2)):\(pad(tm.tm_min, 2)):\(pad(tm.tm_sec, 2)).\(pad(Int32(ms % 1000), 3))Z"
    }
}
