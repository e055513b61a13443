// The device page: summary (live), charts, controls with the recent commands (live), the
// readings table and the device's audit. Controls are shown to operators and admins only;
// viewers see what was sent and answered.
import Audit
import BackendStore
import FieldlogCore
import Foundation
import Sync

extension Page {
    package struct ChartView {
        package var sensor: String
        package var chart: HTML
        package var latest: SeriesPoint?
        package var count: Int
    }

    package struct DeviceView {
        package var device: FleetDevice
        package var audit: DeviceAudit?
        package var rangeKey: String
        package var fromMs: Int64
        package var toMs: Int64
        package var charts: [ChartView]
        package var truncated: Bool
        package var readings: [ReadingRow]
        package var readingsTotal: Int
        package var page: Int
        package var pageSize: Int
        package var commands: [CommandRow]
        package var configKeys: [String]
        /// The device's last answer to a reboot, when it refused it.
        package var rebootRefusal: (message: String, at: String?)?
        package var canOperate: Bool
        package var message: String?
    }

    package static let ranges: [(key: String, title: String, ms: Int64)] = [
        ("fit", "Latest data", 0), ("15m", "15 min", 900_000), ("1h", "1 h", 3_600_000), ("6h", "6 h", 21_600_000), ("24h", "24 h", 86_400_000),
        ("7d", "7 days", 604_800_000), ("30d", "30 days", 2_592_000_000),
    ]

    package static func device(_ v: DeviceView, session: WebSession) -> HTML {
        let d = v.device
        let base = "/devices/\(d.device)"
        let rangeQuery: [(String, String?)] = v.rangeKey == "custom" ? [("from", String(v.fromMs)), ("to", String(v.toMs))] : [("range", v.rangeKey)]
        let rangeLinks = ranges.map { r -> HTML in
            "<a class=\"chip\(r.key == v.rangeKey ? " on" : "")\" href=\"\(PageLink(base, [("range", r.key)]).text)\">\(r.title)</a>"
        }
        var charts = v.charts.map { c -> HTML in
            let latest: HTML = c.latest.map { p -> HTML in
                "<span class=\"latest\">\(formatNumber(p.value))</span> <span class=\"muted small\">latest, \(time(WebTime.iso(milliseconds: p.ms)))</span>"
            } ?? "<span class=\"muted small\">no readings in range</span>"
            return "<figure class=\"card chartcard\"><figcaption><h3>\(c.sensor)</h3>\(latest)</figcaption>\(c.chart)<p class=\"muted small\">\(plural(c.count, "reading"))</p></figure>"
        }.joined()
        if v.charts.isEmpty { charts = "<p class=\"card empty\">This device has sent no numeric readings yet.</p>" }
        let csv = PageLink(base + "/readings.csv", [("from", String(v.fromMs)), ("to", String(v.toMs))]).text
        let truncated: HTML = v.truncated ? " · <strong>too many readings: the newest 50,000 are drawn; pick a shorter range for all</strong>" : .empty

        return layout(title: d.device, session: session, live: base + "/live", body: """
        <div class="pagehead"><h1><a class="muted" href="/">Fleet</a> / \(d.device)</h1></div>
        \(v.message.map { m -> HTML in "<p class=\"alert info\" role=\"status\">\(m)</p>" })
        <section id="summary" class="card facts" aria-live="polite">\(summary(d))</section>

        <section class="card" id="charts-section">
        <div class="sectionhead"><h2>Readings</h2>
        <div class="ranges">\(rangeLinks)</div></div>
        <form class="custom-range" method="get" action="\(base)">
        <label>From <input type="datetime-local" name="fromLocal" step="1" data-ms="\(v.fromMs)"></label>
        <label>To <input type="datetime-local" name="toLocal" step="1" data-ms="\(v.toMs)"></label>
        <input type="hidden" name="from" value="\(v.fromMs)"><input type="hidden" name="to" value="\(v.toMs)">
        <button class="btn small" type="submit">Show</button>
        <a class="btn small ghost" href="\(csv)" download>⬇ CSV of this range</a>
        </form>
        <p class="muted small">Showing \(time(WebTime.iso(milliseconds: v.fromMs))) to \(time(WebTime.iso(milliseconds: v.toMs)))\(truncated). Drag across a chart to zoom in; hover for values.</p>
        <ul class="legend"><li><span class="sw line"></span>reading</li><li><span class="sw nodata"></span>no readings (stopped, offline or powered off)</li><li><span class="sw missing"></span>records missing (gap)</li><li><span class="sw lost"></span>declared lost</li><li><span class="sw offline"></span>offline now</li></ul>
        <div class="charts">\(charts)</div>
        </section>

        \(control(v, session: session))

        \(readingsTable(v, base: base, rangeQuery: rangeQuery))

        \(auditSection(v.audit, device: d.device, session: session))
        """)
    }

    /// The facts at the top of the device page (replaced live).
    package static func summary(_ d: FleetDevice) -> HTML {
        let gaps: HTML = d.missingRecords > 0
            ? "<a class=\"badge bad\" href=\"#audit\">\(groupDigits(String(d.missingRecords))) records missing</a>" : "<span class=\"badge ok soft\">none</span>"
        let dead: HTML = d.deadLetters > 0
            ? "<a href=\"\(PageLink("/dead-letters", [("device", d.device)]).text)\">\(d.deadLetters)</a>" : "0"
        return """
        <div class="fact"><span class="label">Status</span><span>\(stateBadge(d)) \(measuringBadge(d.measuring))</span></div>\
        <div class="fact"><span class="label">Last seen</span>\(time(d.lastSeenAt, relative: true))</div>\
        <div class="fact"><span class="label">Epoch</span><code>\(d.epoch ?? "—")</code></div>\
        <div class="fact"><span class="label">Stored through</span><span class="n">\(num(d.storedThrough))</span></div>\
        <div class="fact"><span class="label">Backlog on device</span><span><span class="n" id="backlog">\(num(d.backlog))</span> <span class="muted small">records</span></span></div>\
        <div class="fact"><span class="label">Gaps</span>\(gaps)</div>\
        <div class="fact"><span class="label">Dead letters</span>\(dead)</div>\
        <div class="fact"><span class="label">MQTT data\(d.dataUsage.map { " " + $0.day } ?? "")</span>\(dataUsage(d.dataUsage))</div>
        """
    }

    /// "48 kB ↑ 1.8 kB ↓": a device's reported MQTT traffic of one day (its data budget).
    package static func dataUsage(_ u: DataUsageRow?) -> HTML {
        guard let u else { return "<span class=\"muted\">—</span>" }
        return "<span title=\"MQTT bytes sent / received on \(u.day) (UTC), as the device counts them\">\(bytes(u.sentBytes)) ↑ \(bytes(u.receivedBytes)) ↓</span>"
    }

    /// Bytes in decimal units (kB, MB, GB), as operators' data plans count them.
    package static func bytes(_ n: UInt64) -> String {
        if n < 1000 { return "\(n) B" }
        let units = ["kB", "MB", "GB", "TB"]
        var v = Double(n) / 1000, i = 0
        while v >= 1000 && i < units.count - 1 { v /= 1000; i += 1 }
        return (v < 10 ? String((v * 10).rounded() / 10) : String(Int(v.rounded()))) + " " + units[i]
    }

    package static func control(_ v: DeviceView, session: WebSession) -> HTML {
        guard v.canOperate else {
            return """
            <section class="card" id="control">
            <div class="sectionhead"><h2>Control</h2><span class="muted small">Your role (\(session.role.rawValue)) reads only; operators send commands.</span></div>
            \(commandsTable(v.commands))
            </section>
            """
        }
        let action = "/devices/\(v.device.device)/commands"
        func form(_ command: String, _ inner: HTML, cls: String? = nil) -> HTML {
            "<form method=\"post\" action=\"\(action)\"\(cls.map { c -> HTML in " class=\"\(c)\"" })>\(csrfField(session))<input type=\"hidden\" name=\"command\" value=\"\(command)\">\(inner)</form>"
        }
        let reboot: HTML
        if let refusal = v.rebootRefusal {
            reboot = "<p class=\"push muted small reboot-off\" title=\"\(refusal.message)\">Reboot is off on this device: it refused the last reboot\(refusal.at.map { t -> HTML in " (\(time(t)))" }). \(refusal.message)</p>"
        } else {
            reboot = form("reboot", "<button class=\"btn danger big\" type=\"submit\">Reboot…</button>", cls: "push")
        }
        let settings = v.configKeys.map { key -> HTML in
            let input: HTML
            switch ConfigValueKind(key: key) {
            case .onOff: input = "<select name=\"value\" aria-label=\"new value of \(key)\"><option value=\"1\">on</option><option value=\"0\">off</option></select>"
            case .seconds: input = "<input name=\"value\" type=\"number\" min=\"0.01\" max=\"86400\" step=\"0.01\" required placeholder=\"seconds\" aria-label=\"new value of \(key) in seconds\">"
            case .text: input = "<input name=\"value\" required aria-label=\"new value of \(key)\">"
            }
            let write = form("set_config", "<input type=\"hidden\" name=\"key\" value=\"\(key)\">\(input)<button class=\"btn small\" type=\"submit\">Write</button>", cls: "setting-write")
            let read = form("get_config", "<input type=\"hidden\" name=\"key\" value=\"\(key)\"><button class=\"btn small ghost\" type=\"submit\">Read</button>")
            return "<div class=\"setting\"><code>\(key)</code>\(write)\(read)</div>"
        }.joined()
        let interval = form("set_interval", """
            <h4>Measuring interval</h4>
            <div class="fields"><label>Seconds between readings <input name="intervalSeconds" type="number" min="0.1" max="86400" step="0.1" required placeholder="e.g. 2"></label></div>
            <button class="btn" type="submit">Set interval</button>
            """, cls: "ctl")
        let replay = form("replay", """
            <h4>Resend records (replay)</h4>
            <div class="fields"><label class="wide">Epoch <input name="epoch" value="\(v.device.epoch ?? "")" placeholder="current" maxlength="16"></label>
            <label>From seq <input name="from" type="number" min="1" required></label><label>To seq <input name="to" type="number" min="1" required></label></div>
            <button class="btn" type="submit">Request replay</button>
            """, cls: "ctl")
        return """
        <section class="card" id="control">
        <div class="sectionhead"><h2>Control</h2><span class="muted small">Commands go to the device over MQTT; its answer appears below as it arrives.</span></div>
        <div class="ctl-row">
        \(form("start", "<button class=\"btn primary big\" type=\"submit\">▶ Start measuring</button>"))
        \(form("stop", "<button class=\"btn stop big\" type=\"submit\" id=\"stop-button\">■ Stop measuring</button>"))
        \(form("status", "<button class=\"btn big\" type=\"submit\">↻ Ask for status</button>"))
        \(reboot)
        </div>
        <div class="ctl-grid">
        \(interval)
        <div class="ctl"><h4>Settings</h4><div class="settings">\(settings)</div></div>
        \(replay)
        </div>
        \(commandsTable(v.commands))
        </section>
        """
    }

    /// The recent commands with their answers (replaced live).
    package static func commandsTable(_ commands: [CommandRow]) -> HTML {
        "<div id=\"commands\" aria-live=\"polite\">\(commandsInner(commands))</div>"
    }

    package static func commandsInner(_ commands: [CommandRow]) -> HTML {
        "<h3>Recent commands</h3><div class=\"scroll-x\"><table class=\"grid commands\"><thead><tr><th>Sent</th><th>Command</th><th>By</th><th>Result</th><th>Answer</th></tr></thead><tbody>\(commandRows(commands))</tbody></table></div>"
    }

    package static func commandRows(_ commands: [CommandRow]) -> HTML {
        guard !commands.isEmpty else { return "<tr><td colspan=\"5\" class=\"empty\">No commands sent to this device yet.</td></tr>" }
        return commands.map { c -> HTML in
            """
            <tr class="cmd-\(c.state)" data-request="\(c.requestId)"><td data-label="Sent">\(time(c.sentAt))</td>\
            <td data-label="Command"><div class="cell"><strong>\(c.command)</strong> \(commandArguments(c.payload).map { a -> HTML in "<span class=\"muted small\">\(a)</span>" })</div></td>\
            <td data-label="By">\(c.sentBy ?? "command line")</td>\
            <td data-label="Result">\(commandState(c))</td>\
            <td data-label="Answer" class="answer"><div class="cell">\(responseSummary(c))</div></td></tr>
            """
        }.joined()
    }

    package static func commandState(_ c: CommandRow) -> HTML {
        switch c.state {
        case "answered":
            let detail = c.outcome.flatMap { $0 == "ok" ? nil : $0 }
            return "<span class=\"badge ok\">✓ answered\(detail.map { " · " + $0 } ?? "")</span>"
        case "failed": return "<span class=\"badge bad\">✗ \(c.outcome ?? "failed")</span>"
        case "timed-out": return "<span class=\"badge warn\">no answer (timed out)</span>"
        case "not-sent": return "<span class=\"badge bad\">not sent</span>"
        default: return "<span class=\"badge info pulse\">waiting for device…</span>"
        }
    }

    /// The arguments of a command message, as "key=value …"; nil when it has none.
    package static func commandArguments(_ payload: String) -> String? {
        guard let command = try? SyncCodec.decodeCommand(Array(payload.utf8)) else { return nil }
        switch command.kind {
        case .getConfig(let key): return "key=\(key)"
        case .setConfig(let key, let value): return "key=\(key) value=\(value)"
        case .setInterval(let ms): return "interval=\(formatNumber(Double(ms) / 1000)) s"
        case .replay(let epoch, let range): return "\(epoch.map { "epoch=\($0.hex) " } ?? "")records \(range)"
        case .sendMeasurements(let min, let max, let count):
            return [min.map { "min=\($0)" }, max.map { "max=\($0)" }, count.map { "count=\($0)" }].compactMap { $0 }.joined(separator: " ")
        case .reboot, .status, .start, .stop: return nil
        }
    }

    package static func responseSummary(_ c: CommandRow) -> HTML {
        guard let r = c.response else { return c.responseAt == nil ? .empty : "—" }
        guard let o = try? SyncCodec.decodeCommandResponse(Array(r.utf8)) else { return "<code>\(String(r.prefix(300)))</code>" }
        var parts: [String] = []
        if let e = o.error { parts.append("error \(e.rawValue)") }
        if let m = o.message { parts.append(m) }
        if let k = o.key, let v = o.value { parts.append("\(k) = \(v)") }
        if let rs = o.resent { parts.append("resent \(rs)") }
        if !o.notRetained.isEmpty { parts.append("no longer on the device: " + o.notRetained.map(\.description).joined(separator: ", ")) }
        if let s = o.status { parts.append("\(s.state.rawValue)\(s.backlog.map { ", backlog \($0)" } ?? "")") }
        let summary = parts.isEmpty ? "OK" : parts.joined(separator: " · ")
        return "\(summary) <details><summary>raw</summary><code>\(String(r.prefix(2000)))</code></details>\(c.responseAt.map { t -> HTML in " <span class=\"muted small\">\(time(t))</span>" })"
    }

    package static func readingsTable(_ v: DeviceView, base: String, rangeQuery: [(String, String?)]) -> HTML {
        let sensors = Array(Set(v.readings.flatMap { $0.values.keys })).sorted()
        let head: HTML = "<th>Time</th><th>Epoch / seq</th>" + sensors.map { s -> HTML in "<th>\(s)</th>" }.joined()
        var rows = v.readings.map { r -> HTML in
            let clock: HTML = r.clockUnsynchronized ? " <span class=\"badge warn\" title=\"the device clock was not synchronised\">clock?</span>" : .empty
            let cells = sensors.map { s -> HTML in "<td data-label=\"\(s)\" class=\"n\">\(r.values[s]?.display ?? "—")</td>" }.joined()
            return "<tr><td data-label=\"Time\"><div class=\"cell\">\(time(r.time))\(clock)</div></td><td data-label=\"Epoch / seq\"><code>\(r.epoch)</code> / \(r.seq)</td>\(cells)</tr>"
        }.joined()
        if v.readings.isEmpty { rows = "<tr><td colspan=\"\(2 + sensors.count)\" class=\"empty\">No readings in this time range.</td></tr>" }
        let pages = max(1, (v.readingsTotal + v.pageSize - 1) / v.pageSize)
        func page(_ n: Int) -> String { PageLink(base, rangeQuery + [("page", String(n))]).text + "#readings" }
        var pager: HTML = "<nav class=\"pager\">"
        if v.page > 0 { pager += "<a class=\"btn small\" href=\"\(page(v.page - 1))\">← Newer</a>" }
        pager += "<span class=\"muted small\">Page \(v.page + 1) of \(pages) · \(plural(v.readingsTotal, "reading"))</span>"
        if v.page + 1 < pages { pager += "<a class=\"btn small\" href=\"\(page(v.page + 1))\">Older →</a>" }
        pager += "</nav>"
        return "<section class=\"card\" id=\"readings\"><div class=\"sectionhead\"><h2>Readings table</h2>\(pager)</div><div class=\"scroll-x\"><table class=\"grid readings\"><thead><tr>\(head)</tr></thead><tbody>\(rows)</tbody></table></div></section>"
    }

    /// A replay button for operators; nothing for viewers.
    package static func replayButton(device: String, epoch: String, first: UInt64, last: UInt64, session: WebSession) -> HTML {
        guard session.role >= .operator else { return .empty }
        return """
        <form method="post" action="/devices/\(device)/commands" class="inline-form">\(csrfField(session))\
        <input type="hidden" name="command" value="replay"><input type="hidden" name="epoch" value="\(epoch)">\
        <input type="hidden" name="from" value="\(first)"><input type="hidden" name="to" value="\(last)">\
        <input type="hidden" name="back" value="audit">\
        <button class="btn small" type="submit">Request replay</button></form>
        """
    }

    package static func auditSection(_ a: DeviceAudit?, device: String, session: WebSession) -> HTML {
        guard let a else { return .empty }
        var rows = a.epochs.reversed().map { e -> HTML in
            var issues = HTML.empty
            for g in e.gaps {
                issues += "<li><span class=\"badge bad\">gap</span> \(g.first)…\(g.last) (\(plural(Int(g.last - g.first + 1), "record"))) \(replayButton(device: device, epoch: e.epoch, first: g.first, last: g.last, session: session))</li>"
            }
            for g in e.rowsMissing {
                issues += "<li><span class=\"badge bad\" title=\"acked and in batch_ranges, but no readings row, declared loss or rejected record\">rows missing</span> \(g.first)…\(g.last) (\(plural(Int(g.last - g.first + 1), "record"))) \(replayButton(device: device, epoch: e.epoch, first: g.first, last: g.last, session: session))</li>"
            }
            if let u = e.unstoredAtEnd {
                issues += "<li><span class=\"badge bad\">ended unstored</span> \(u.first)…\(u.last) \(replayButton(device: device, epoch: e.epoch, first: u.first, last: u.last, session: session))</li>"
            }
            for l in e.losses {
                issues += "<li><span class=\"badge warn\">declared lost</span> \(l.first)…\(l.last): \(l.reason)\(l.detail.isEmpty ? "" : " — \(l.detail)")</li>"
            }
            if e.rejectedRecords > 0 {
                issues += "<li><span class=\"badge warn\">rejected</span> <a href=\"\(PageLink("/dead-letters", [("device", device)]).text)\">\(plural(e.rejectedRecords, "record")) kept in dead letters</a></li>"
            }
            let state: HTML = e.ended ? " <span class=\"muted small\">ended</span>" : " <span class=\"badge info soft\">current</span>"
            let problems: HTML = issues.isEmpty ? "<span class=\"badge ok soft\">complete</span>" : "<ul class=\"issues\">\(issues)</ul>"
            return "<tr><td data-label=\"Epoch\"><code>\(e.epoch)</code>\(state)</td><td data-label=\"Stored through\" class=\"n\">\(num(e.storedThrough))</td><td data-label=\"Highest seen\" class=\"n\">\(num(e.highestSeen))</td><td data-label=\"Problems\">\(problems)</td></tr>"
        }.joined()
        if a.epochs.isEmpty { rows = "<tr><td colspan=\"4\" class=\"empty\">No epochs recorded.</td></tr>" }
        return """
        <section class="card" id="audit"><div class="sectionhead"><h2>Audit</h2><span class="muted small">What is stored, what is missing and why, per epoch.</span></div>
        \(a.note.map { n -> HTML in "<p class=\"alert info\">\(n)</p>" })
        <div class="scroll-x"><table class="grid audit"><thead><tr><th>Epoch</th><th>Stored through</th><th>Highest seen</th><th>Problems</th></tr></thead><tbody>\(rows)</tbody></table></div></section>
        """
    }
}
