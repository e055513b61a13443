// Pages: the HTML of the web admin, built from values (no IO here).
//
// Every page is plain server-rendered HTML that works without JavaScript; /static/app.js
// only adds conveniences: times in the viewer's zone, periodic refresh of marked parts,
// custom time ranges in local time. Everything user-supplied is escaped with `html(_:)`.
import FieldlogCore
import Foundation

enum Page {
    /// The common frame: header with navigation and sign-out, the content, the footer.
    static func layout(title: String, session: WebSession?, active: String = "", body: String) -> String {
        var nav = ""
        if let session {
            nav = """
            <nav class="nav">\
            <a href="/"\(active == "fleet" ? " class=\"on\"" : "")>Fleet</a>\
            <a href="/audit"\(active == "audit" ? " class=\"on\"" : "")>Audit</a>\
            </nav>\
            <form class="signout" method="post" action="/signout">\(csrfField(session))\
            <span class="user" title="signed in">\(html(session.user))</span><button type="submit" class="btn small ghost">Sign out</button></form>
            """
        }
        return """
        <!doctype html>
        <html lang="en"><head><meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>\(html(title)) · Fieldlog</title>
        <link rel="stylesheet" href="/static/app.css">
        <link rel="icon" href="/static/icon.svg" type="image/svg+xml">
        <script src="/static/app.js" defer></script>
        </head><body>
        <header class="top"><a class="brand" href="/"><img src="/static/icon.svg" alt="" width="22" height="22">Fieldlog</a>\(nav)</header>
        <main>
        \(body)
        </main>
        <footer>Times are shown in <span class="tzname">UTC</span>. Fieldlog web admin.</footer>
        </body></html>
        """
    }

    static func csrfField(_ s: WebSession) -> String { "<input type=\"hidden\" name=\"csrf\" value=\"\(html(s.csrfToken))\">" }

    /// A time the script shows in the viewer's zone; "—" when unknown.
    static func time(_ iso: String?, relative: Bool = false) -> String {
        guard let iso else { return "<span class=\"muted\">—</span>" }
        return "<time datetime=\"\(html(iso))\"\(relative ? " data-relative" : "")>\(html(iso.replacingOccurrences(of: "T", with: " ").replacingOccurrences(of: "Z", with: " UTC")))</time>"
    }

    static func stateBadge(_ d: FleetDevice) -> String {
        switch d.state {
        case "online": return "<span class=\"badge ok\">● Online</span>"
        case "offline": return "<span class=\"badge off\">○ Offline</span>"
        default: return d.protocolName == "legacy" ? "<span class=\"badge off\">Seed device</span>" : "<span class=\"badge off\">No status yet</span>"
        }
    }

    static func measuringBadge(_ m: Bool?) -> String {
        switch m {
        case true?: return "<span class=\"badge ok soft\">Measuring</span>"
        case false?: return "<span class=\"badge warn soft\">Stopped</span>"
        case nil: return ""
        }
    }

    static func num(_ v: UInt64?) -> String { v.map { groupDigits(String($0)) } ?? "<span class=\"muted\">—</span>" }

    static func groupDigits(_ s: String) -> String {
        guard s.count > 4, s.allSatisfy(\.isNumber) else { return s }
        var out = ""
        for (i, c) in s.reversed().enumerated() { if i > 0, i % 3 == 0 { out.append("\u{202F}") }; out.append(c) }
        return String(out.reversed())
    }

    // MARK: sign-in

    static func signIn(token: String, next: String, message: String?) -> String {
        layout(title: "Sign in", session: nil, body: """
        <section class="signin card">
        <h1>Sign in</h1>
        <p class="muted">Fieldlog web admin: your fleet's data and controls.</p>
        \(message.map { "<p class=\"alert bad\" role=\"alert\">\(html($0))</p>" } ?? "")
        <form method="post" action="/signin">
        <input type="hidden" name="csrf" value="\(html(token))">
        <input type="hidden" name="next" value="\(html(next))">
        <label>User <input name="user" autocomplete="username" required autofocus></label>
        <label>Password <input name="password" type="password" autocomplete="current-password" required></label>
        <button type="submit" class="btn primary wide">Sign in</button>
        </form>
        </section>
        """)
    }

    // MARK: fleet

    static let fleetColumns: [(key: String, title: String)] = [
        ("device", "Device"), ("state", "Status"), ("lastSeen", "Last seen"), ("epoch", "Epoch"), ("storedThrough", "Stored through"),
        ("backlog", "Backlog"), ("gaps", "Gaps"), ("deadLetters", "Dead letters"), ("data", "Data (day)"),
    ]

    /// "12.3 kB ↑ 1.2 kB ↓" for a device's reported MQTT traffic of one day.
    static func dataUsage(_ u: DataUsageRow?) -> String {
        guard let u else { return "<span class=\"muted\">—</span>" }
        return "<span title=\"MQTT bytes sent / received on \(html(u.day)) (UTC), as the device counts them\">\(bytes(u.sentBytes)) ↑ \(bytes(u.receivedBytes)) ↓</span>"
    }

    /// Bytes in decimal units (kB, MB, GB), as operators' data plans count them.
    static func bytes(_ n: UInt64) -> String {
        if n < 1000 { return "\(n) B" }
        let units = ["kB", "MB", "GB", "TB"]
        var v = Double(n) / 1000, i = 0
        while v >= 1000 && i < units.count - 1 { v /= 1000; i += 1 }
        return (v < 10 ? String((v * 10).rounded() / 10) : String(Int(v.rounded()))) + " " + units[i]
    }

    static func sortFleet(_ devices: [FleetDevice], by key: String, descending: Bool) -> [FleetDevice] {
        func less(_ a: FleetDevice, _ b: FleetDevice) -> Bool {
            switch key {
            case "state": return (a.state ?? "~", a.device) < (b.state ?? "~", b.device)
            case "lastSeen": return (a.lastSeenAt ?? "", a.device) < (b.lastSeenAt ?? "", b.device)
            case "epoch": return (a.epoch ?? "", a.device) < (b.epoch ?? "", b.device)
            case "storedThrough": return (a.storedThrough ?? 0, a.device) < (b.storedThrough ?? 0, b.device)
            case "backlog": return (a.backlog ?? 0, a.device) < (b.backlog ?? 0, b.device)
            case "gaps": return (a.missingRecords, a.device) < (b.missingRecords, b.device)
            case "deadLetters": return (a.deadLetters, a.device) < (b.deadLetters, b.device)
            case "data": return (a.dataUsage?.sentBytes ?? 0, a.device) < (b.dataUsage?.sentBytes ?? 0, b.device)
            default: return a.device < b.device
            }
        }
        let sorted = devices.sorted(by: less)
        return descending ? sorted.reversed() : sorted
    }

    static func fleet(_ devices: [FleetDevice], sort: String, descending: Bool, session: WebSession) -> String {
        let online = devices.filter { $0.state == "online" }.count
        let withGaps = devices.filter { $0.missingRecords > 0 }.count
        let backlog = devices.compactMap(\.backlog).reduce(0, +)
        var head = ""
        for c in fleetColumns {
            let on = c.key == sort
            let dir = on && !descending ? "desc" : "asc"
            let arrow = on ? (descending ? " ▼" : " ▲") : ""
            head += "<th\(on ? " aria-sort=\"\(descending ? "descending" : "ascending")\"" : "")><a href=\"/?sort=\(c.key)&amp;dir=\(dir)\">\(c.title)\(arrow)</a></th>"
        }
        var rows = ""
        for d in sortFleet(devices, by: sort, descending: descending) {
            let link = "/devices/\(html(d.device))"
            rows += """
            <tr class="\(d.missingRecords > 0 ? "has-gaps" : "")">\
            <td data-label="Device"><a class="devlink" href="\(link)">\(html(d.device))</a> \(measuringBadge(d.measuring))</td>\
            <td data-label="Status">\(stateBadge(d))\(d.silent ? " <span class=\"badge warn\" title=\"nothing received for a while\">Silent</span>" : "")</td>\
            <td data-label="Last seen">\(time(d.lastSeenAt, relative: true))</td>\
            <td data-label="Epoch"><code>\(html(d.epoch ?? "—"))</code></td>\
            <td data-label="Stored through" class="n">\(num(d.storedThrough))</td>\
            <td data-label="Backlog" class="n" title="records on the device not yet acknowledged (head − acked)">\(num(d.backlog))</td>\
            <td data-label="Gaps" class="n">\(d.missingRecords > 0 ? "<a class=\"badge bad\" href=\"\(link)#audit\">\(d.gapCount) (\(groupDigits(String(d.missingRecords))) missing)</a>" : "<span class=\"badge ok soft\">none</span>")</td>\
            <td data-label="Dead letters" class="n">\(d.deadLetters > 0 ? "<span class=\"badge warn\">\(d.deadLetters)</span>" : "0")</td>\
            <td data-label="Data (day)" class="n">\(dataUsage(d.dataUsage))</td>\
            </tr>
            """
        }
        if devices.isEmpty {
            rows = "<tr><td colspan=\"9\" class=\"empty\">No devices yet. Devices appear here when their first batch or status arrives.</td></tr>"
        }
        return layout(title: "Fleet", session: session, active: "fleet", body: """
        <div id="fleet" data-refresh="10">
        <div class="pagehead"><h1>Fleet</h1><span class="muted small">Updates every 10 s · <span class="updated">\(time(WebTime.iso(milliseconds: WebTime.nowMilliseconds())))</span></span></div>
        <div class="tiles">
        <div class="tile"><span class="big">\(devices.count)</span><span>devices</span></div>
        <div class="tile \(online > 0 ? "ok" : "")"><span class="big">\(online)</span><span>online</span></div>
        <div class="tile \(withGaps > 0 ? "bad" : "ok")"><span class="big">\(withGaps)</span><span>with gaps</span></div>
        <div class="tile"><span class="big">\(groupDigits(String(backlog)))</span><span>records waiting on devices</span></div>
        </div>
        <table class="grid fleet"><thead><tr>\(head)</tr></thead><tbody>\(rows)</tbody></table>
        </div>
        """)
    }

    // MARK: device

    struct DeviceView {
        var device: FleetDevice
        var audit: DeviceAudit?
        var rangeKey: String
        var fromMs: Int64
        var toMs: Int64
        var charts: [(sensor: String, svg: String, latest: SeriesPoint?, count: Int)]
        var truncated: Bool
        var readings: [ReadingRow]
        var readingsTotal: Int
        var page: Int
        var pageSize: Int
        var commands: [CommandRow]
        var configKeys: [String]
        var message: String?
    }

    static let ranges: [(key: String, title: String, ms: Int64)] = [
        ("fit", "Latest data", 0), ("15m", "15 min", 900_000), ("1h", "1 h", 3_600_000), ("6h", "6 h", 21_600_000), ("24h", "24 h", 86_400_000),
        ("7d", "7 days", 604_800_000), ("30d", "30 days", 2_592_000_000),
    ]

    static func device(_ v: DeviceView, session: WebSession) -> String {
        let d = v.device
        let id = html(d.device)
        let base = "/devices/\(id)"
        let rangeQuery = v.rangeKey == "custom" ? "from=\(v.fromMs)&amp;to=\(v.toMs)" : "range=\(v.rangeKey)"
        var rangeLinks = ""
        for r in ranges {
            rangeLinks += "<a class=\"chip\(r.key == v.rangeKey ? " on" : "")\" href=\"\(base)?range=\(r.key)\">\(r.title)</a>"
        }
        var charts = ""
        for c in v.charts {
            let latest = c.latest.map { "<span class=\"latest\">\(formatNumber($0.value))</span> <span class=\"muted small\">latest, \(time(WebTime.iso(milliseconds: $0.ms)))</span>" } ?? "<span class=\"muted small\">no readings in range</span>"
            charts += "<figure class=\"card chartcard\"><figcaption><h3>\(html(c.sensor))</h3>\(latest)</figcaption>\(c.svg)<p class=\"muted small\">\(groupDigits(String(c.count))) readings</p></figure>"
        }
        if v.charts.isEmpty { charts = "<p class=\"card empty\">This device has sent no numeric readings yet.</p>" }

        return layout(title: d.device, session: session, body: """
        <div class="pagehead"><h1><a class="muted" href="/">Fleet</a> / \(id)</h1></div>
        \(v.message.map { "<p class=\"alert info\" role=\"status\">\(html($0))</p>" } ?? "")
        <section id="summary" data-refresh="10" class="card facts">
        <div class="fact"><span class="label">Status</span>\(stateBadge(d)) \(measuringBadge(d.measuring))</div>
        <div class="fact"><span class="label">Last seen</span>\(time(d.lastSeenAt, relative: true))</div>
        <div class="fact"><span class="label">Epoch</span><code>\(html(d.epoch ?? "—"))</code></div>
        <div class="fact"><span class="label">Stored through</span><span class="n">\(num(d.storedThrough))</span></div>
        <div class="fact"><span class="label">Backlog on device</span><span class="n">\(num(d.backlog))</span> <span class="muted small">records</span></div>
        <div class="fact"><span class="label">Gaps</span>\(d.missingRecords > 0 ? "<a class=\"badge bad\" href=\"#audit\">\(groupDigits(String(d.missingRecords))) records missing</a>" : "<span class=\"badge ok soft\">none</span>")</div>
        <div class="fact"><span class="label">Dead letters</span>\(d.deadLetters)</div>
        <div class="fact"><span class="label">MQTT data\(d.dataUsage.map { " " + html($0.day) } ?? "")</span>\(dataUsage(d.dataUsage))</div>
        </section>

        <section class="card" id="charts-section" data-refresh="20">
        <div class="sectionhead"><h2>Readings</h2>
        <div class="ranges">\(rangeLinks)</div></div>
        <form class="custom-range" method="get" action="\(base)">
        <label>From <input type="datetime-local" name="fromLocal" step="1" data-ms="\(v.fromMs)"></label>
        <label>To <input type="datetime-local" name="toLocal" step="1" data-ms="\(v.toMs)"></label>
        <input type="hidden" name="from" value="\(v.fromMs)"><input type="hidden" name="to" value="\(v.toMs)">
        <button class="btn small" type="submit">Show</button>
        <a class="btn small ghost" href="\(base)/readings.csv?from=\(v.fromMs)&amp;to=\(v.toMs)" download>⬇ CSV of this range</a>
        </form>
        <p class="muted small">Showing \(time(WebTime.iso(milliseconds: v.fromMs))) to \(time(WebTime.iso(milliseconds: v.toMs)))\(v.truncated ? " · <strong>too many readings: the newest 50,000 are drawn; pick a shorter range for all</strong>" : "")</p>
        <ul class="legend"><li><span class="sw line"></span>reading</li><li><span class="sw nodata"></span>no readings (stopped, offline or powered off)</li><li><span class="sw missing"></span>records missing (gap)</li><li><span class="sw offline"></span>offline now</li></ul>
        <div class="charts">\(charts)</div>
        </section>

        \(control(v, session: session))

        \(readingsTable(v, base: base, rangeQuery: rangeQuery))

        \(auditSection(v.audit, device: d.device, session: session))
        """)
    }

    static func control(_ v: DeviceView, session: WebSession) -> String {
        let id = html(v.device.device)
        let action = "/devices/\(id)/commands"
        let keys = v.configKeys.map { "<option>\(html($0))</option>" }.joined()
        return """
        <section class="card" id="control">
        <div class="sectionhead"><h2>Control</h2><span class="muted small">Commands go to the device over MQTT; its answer appears below.</span></div>
        <div class="ctl-row">
        <form method="post" action="\(action)">\(csrfField(session))<input type="hidden" name="command" value="start"><button class="btn primary big" type="submit">▶ Start measuring</button></form>
        <form method="post" action="\(action)">\(csrfField(session))<input type="hidden" name="command" value="stop"><button class="btn stop big" type="submit" id="stop-button">■ Stop measuring</button></form>
        <form method="post" action="\(action)">\(csrfField(session))<input type="hidden" name="command" value="status"><button class="btn big" type="submit">↻ Ask for status</button></form>
        <form method="post" action="\(action)" class="push">\(csrfField(session))<input type="hidden" name="command" value="reboot"><button class="btn danger big" type="submit">Reboot…</button></form>
        </div>
        <div class="ctl-grid">
        <form method="post" action="\(action)" class="ctl">\(csrfField(session))<input type="hidden" name="command" value="set_interval">
        <h4>Measuring interval</h4>
        <div class="fields"><label>Seconds between readings <input name="intervalSeconds" type="number" min="0.1" max="86400" step="0.1" required placeholder="e.g. 2"></label></div>
        <button class="btn" type="submit">Set interval</button></form>
        <form method="post" action="\(action)" class="ctl">\(csrfField(session))<input type="hidden" name="command" value="get_config">
        <h4>Read a setting</h4>
        <div class="fields"><label>Setting <select name="key">\(keys)</select></label></div>
        <button class="btn" type="submit">Read</button></form>
        <form method="post" action="\(action)" class="ctl">\(csrfField(session))<input type="hidden" name="command" value="set_config">
        <h4>Change a setting</h4>
        <div class="fields"><label>Setting <select name="key">\(keys)</select></label><label>New value <input name="value" required></label></div>
        <button class="btn" type="submit">Write</button></form>
        <form method="post" action="\(action)" class="ctl">\(csrfField(session))<input type="hidden" name="command" value="replay">
        <h4>Resend records (replay)</h4>
        <div class="fields"><label>Epoch <input name="epoch" value="\(html(v.device.epoch ?? ""))" placeholder="current"></label>
        <label>From seq <input name="from" type="number" min="1" required></label><label>To seq <input name="to" type="number" min="1" required></label></div>
        <button class="btn" type="submit">Request replay</button></form>
        </div>
        \(commandsTable(v.commands, device: v.device.device))
        </section>
        """
    }

    static func commandsTable(_ commands: [CommandRow], device: String) -> String {
        var rows = ""
        for c in commands {
            let stateBadge: String
            switch c.state {
            case "answered": stateBadge = "<span class=\"badge ok\">✓ answered</span>"
            case "failed": stateBadge = "<span class=\"badge bad\">✗ \(html(c.outcome ?? "failed"))</span>"
            case "timed-out": stateBadge = "<span class=\"badge warn\">no answer (timed out)</span>"
            case "not-sent": stateBadge = "<span class=\"badge bad\">not sent</span>"
            default: stateBadge = "<span class=\"badge info pulse\">waiting for device…</span>"
            }
            rows += """
            <tr class="cmd-\(html(c.state))" data-request="\(html(c.requestId))"><td data-label="Sent">\(time(c.sentAt))</td>\
            <td data-label="Command"><strong>\(html(c.command))</strong> \(commandArguments(c.payload))</td>\
            <td data-label="By">\(html(c.sentBy ?? "cli"))</td>\
            <td data-label="Result">\(stateBadge)</td>\
            <td data-label="Answer" class="answer">\(responseSummary(c))</td></tr>
            """
        }
        if commands.isEmpty { rows = "<tr><td colspan=\"5\" class=\"empty\">No commands sent to this device yet.</td></tr>" }
        return "<div id=\"commands\" data-refresh=\"2\" data-src=\"/devices/\(html(device))/commands\"><h3>Recent commands</h3><table class=\"grid commands\"><thead><tr><th>Sent</th><th>Command</th><th>By</th><th>Result</th><th>Answer</th></tr></thead><tbody>\(rows)</tbody></table></div>"
    }

    static func jsonObject(_ text: String?) -> [String: Any]? {
        guard let text, let data = text.data(using: .utf8) else { return nil }
        return (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
    }

    static func commandArguments(_ payload: String) -> String {
        guard let o = jsonObject(payload) else { return "" }
        var parts: [String] = []
        for k in ["key", "value", "interval_ms", "epoch", "from", "to"] {
            if let v = o[k] { parts.append("\(k)=\(v)") }
        }
        return parts.isEmpty ? "" : "<span class=\"muted small\">\(html(parts.joined(separator: " ")))</span>"
    }

    static func responseSummary(_ c: CommandRow) -> String {
        guard let r = c.response else { return c.responseAt == nil ? "" : "—" }
        guard let o = jsonObject(r) else { return "<code>\(html(String(r.prefix(300))))</code>" }
        var parts: [String] = []
        if let m = o["message"] { parts.append("\(m)") }
        if let k = o["key"], let v = o["value"] { parts.append("\(k) = \(v)") }
        if let e = o["error"] { parts.insert("error: \(e)", at: 0) }
        let summary = parts.isEmpty ? "OK" : parts.joined(separator: " · ")
        return "\(html(summary)) <details><summary>raw</summary><code>\(html(String(r.prefix(2000))))</code></details>\(c.responseAt.map { " <span class=\"muted small\">\(time($0))</span>" } ?? "")"
    }

    static func readingsTable(_ v: DeviceView, base: String, rangeQuery: String) -> String {
        let sensors = Array(Set(v.readings.flatMap { $0.values.keys })).sorted()
        var head = "<th>Time</th><th>Epoch / seq</th>"
        for s in sensors { head += "<th>\(html(s))</th>" }
        var rows = ""
        for r in v.readings {
            rows += "<tr><td data-label=\"Time\">\(time(r.time))\(r.clockUnsynchronized ? " <span class=\"badge warn\" title=\"the device clock was not synchronised\">clock?</span>" : "")</td><td data-label=\"Epoch / seq\"><code>\(html(r.epoch))</code> / \(r.seq)</td>"
            for s in sensors { rows += "<td data-label=\"\(html(s))\" class=\"n\">\(html(r.values[s]?.display ?? "—"))</td>" }
            rows += "</tr>"
        }
        if v.readings.isEmpty { rows = "<tr><td colspan=\"\(2 + sensors.count)\" class=\"empty\">No readings in this time range.</td></tr>" }
        let pages = max(1, (v.readingsTotal + v.pageSize - 1) / v.pageSize)
        var pager = "<nav class=\"pager\">"
        if v.page > 0 { pager += "<a class=\"btn small\" href=\"\(base)?\(rangeQuery)&amp;page=\(v.page - 1)#readings\">← Newer</a>" }
        pager += "<span class=\"muted small\">Page \(v.page + 1) of \(pages) · \(groupDigits(String(v.readingsTotal))) readings</span>"
        if v.page + 1 < pages { pager += "<a class=\"btn small\" href=\"\(base)?\(rangeQuery)&amp;page=\(v.page + 1)#readings\">Older →</a>" }
        pager += "</nav>"
        return "<section class=\"card\" id=\"readings\"><div class=\"sectionhead\"><h2>Readings table</h2>\(pager)</div><div class=\"scroll\"><table class=\"grid readings\"><thead><tr>\(head)</tr></thead><tbody>\(rows)</tbody></table></div></section>"
    }

    static func replayButton(device: String, epoch: String, first: UInt64, last: UInt64, session: WebSession) -> String {
        """
        <form method="post" action="/devices/\(html(device))/commands" class="inline-form">\(csrfField(session))\
        <input type="hidden" name="command" value="replay"><input type="hidden" name="epoch" value="\(html(epoch))">\
        <input type="hidden" name="from" value="\(first)"><input type="hidden" name="to" value="\(last)">\
        <input type="hidden" name="back" value="audit">\
        <button class="btn small" type="submit">Request replay</button></form>
        """
    }

    static func auditSection(_ a: DeviceAudit?, device: String, session: WebSession) -> String {
        guard let a else { return "" }
        var rows = ""
        for e in a.epochs.reversed() {
            var issues = ""
            for g in e.gaps {
                issues += "<li><span class=\"badge bad\">gap</span> \(g.first)…\(g.last) (\(g.last - g.first + 1) records) \(replayButton(device: device, epoch: e.epoch, first: g.first, last: g.last, session: session))</li>"
            }
            if let u = e.unstoredAtEnd {
                issues += "<li><span class=\"badge bad\">ended unstored</span> \(u.first)…\(u.last) \(replayButton(device: device, epoch: e.epoch, first: u.first, last: u.last, session: session))</li>"
            }
            for l in e.losses {
                issues += "<li><span class=\"badge warn\">declared lost</span> \(l.first)…\(l.last): \(html(l.reason))\(l.detail.isEmpty ? "" : " — \(html(l.detail))")</li>"
            }
            if e.rejectedRecords > 0 { issues += "<li><span class=\"badge warn\">rejected</span> \(e.rejectedRecords) records kept in dead letters</li>" }
            rows += "<tr><td data-label=\"Epoch\"><code>\(html(e.epoch))</code>\(e.ended ? " <span class=\"muted small\">ended</span>" : " <span class=\"badge info soft\">current</span>")</td><td data-label=\"Stored through\" class=\"n\">\(num(e.storedThrough))</td><td data-label=\"Highest seen\" class=\"n\">\(num(e.highestSeen))</td><td data-label=\"Problems\">\(issues.isEmpty ? "<span class=\"badge ok soft\">complete</span>" : "<ul class=\"issues\">\(issues)</ul>")</td></tr>"
        }
        if a.epochs.isEmpty { rows = "<tr><td colspan=\"4\" class=\"empty\">No epochs recorded.</td></tr>" }
        return """
        <section class="card" id="audit"><div class="sectionhead"><h2>Audit</h2><span class="muted small">What is stored, what is missing and why, per epoch.</span></div>
        \(a.note.map { "<p class=\"alert info\">\(html($0))</p>" } ?? "")
        <table class="grid audit"><thead><tr><th>Epoch</th><th>Stored through</th><th>Highest seen</th><th>Problems</th></tr></thead><tbody>\(rows)</tbody></table></section>
        """
    }

    // MARK: confirmation, audit, errors

    static func confirmReboot(device: String, session: WebSession) -> String {
        layout(title: "Reboot \(device)?", session: session, body: """
        <section class="card confirm">
        <h1>Reboot \(html(device))?</h1>
        <p>The device restarts. It stops measuring until it is back up (usually under a minute). Readings already taken are kept on the device and sent afterwards.</p>
        <div class="row">
        <form method="post" action="/devices/\(html(device))/commands">\(csrfField(session))<input type="hidden" name="command" value="reboot"><input type="hidden" name="confirm" value="yes"><button class="btn danger" type="submit">Yes, reboot now</button></form>
        <a class="btn ghost" href="/devices/\(html(device))#control">Cancel</a>
        </div></section>
        """)
    }

    static func audit(_ report: AuditReport, session: WebSession) -> String {
        var rows = ""
        var problems = 0
        for d in report.devices {
            for e in d.epochs {
                for g in e.gaps {
                    problems += 1
                    rows += auditRow(d.device, e.epoch, kind: "<span class=\"badge bad\">gap</span>", what: "\(g.first)…\(g.last)", count: g.last - g.first + 1,
                                     action: replayButton(device: d.device, epoch: e.epoch, first: g.first, last: g.last, session: session))
                }
                if let u = e.unstoredAtEnd {
                    problems += 1
                    rows += auditRow(d.device, e.epoch, kind: "<span class=\"badge bad\">epoch ended unstored</span>", what: "\(u.first)…\(u.last)", count: u.last - u.first + 1,
                                     action: replayButton(device: d.device, epoch: e.epoch, first: u.first, last: u.last, session: session))
                }
                for l in e.losses {
                    rows += auditRow(d.device, e.epoch, kind: "<span class=\"badge warn\">declared lost: \(html(l.reason))</span>", what: "\(l.first)…\(l.last)\(l.detail.isEmpty ? "" : " — \(html(l.detail))")", count: l.last - l.first + 1, action: "")
                }
            }
            if d.silent {
                rows += "<tr><td data-label=\"Device\"><a href=\"/devices/\(html(d.device))\">\(html(d.device))</a></td><td data-label=\"Epoch\">—</td><td data-label=\"Problem\"><span class=\"badge warn\">silent</span></td><td data-label=\"Records\">nothing received since \(time(WebTime.iso(sql: d.lastSeenAt)))</td><td class=\"n\">—</td><td></td></tr>"
            }
            if d.legacyReadings != nil {
                rows += "<tr><td data-label=\"Device\"><a href=\"/devices/\(html(d.device))\">\(html(d.device))</a></td><td>—</td><td data-label=\"Problem\"><span class=\"badge info\">seed device</span></td><td colspan=\"3\">\(html(d.note ?? ""))</td></tr>"
            }
        }
        let summary = problems == 0 ? "<p class=\"alert good\">Nothing is missing: every record the devices reported is stored or accounted for.</p>"
            : "<p class=\"alert bad\">\(problems) range\(problems == 1 ? "" : "s") of records are missing. Ask the device to resend them with “Request replay”; its answer shows on the device page.</p>"
        if rows.isEmpty { rows = "<tr><td colspan=\"6\" class=\"empty\">No gaps, losses or silent devices.</td></tr>" }
        return layout(title: "Audit", session: session, active: "audit", body: """
        <div id="auditpage" data-refresh="15">
        <div class="pagehead"><h1>Audit</h1><span class="muted small">Gaps and losses across the fleet · \(report.devices.count) devices</span></div>
        \(summary)
        <table class="grid auditlist"><thead><tr><th>Device</th><th>Epoch</th><th>Problem</th><th>Sequence numbers</th><th>Records</th><th></th></tr></thead><tbody>\(rows)</tbody></table>
        </div>
        """)
    }

    static func auditRow(_ device: String, _ epoch: String, kind: String, what: String, count: UInt64, action: String) -> String {
        "<tr><td data-label=\"Device\"><a href=\"/devices/\(html(device))#audit\">\(html(device))</a></td><td data-label=\"Epoch\"><code>\(html(epoch))</code></td><td data-label=\"Problem\">\(kind)</td><td data-label=\"Sequence numbers\">\(what)</td><td data-label=\"Records\" class=\"n\">\(groupDigits(String(count)))</td><td>\(action)</td></tr>"
    }

    static func error(status: Int, message: String, session: WebSession?) -> String {
        let title: String
        switch status {
        case 400: title = "That request was not right"
        case 403: title = "Not allowed"
        case 404: title = "Not found"
        case 503: title = "Temporarily unavailable"
        default: title = "Something went wrong"
        }
        return layout(title: title, session: session, body: """
        <section class="card confirm"><h1>\(title)</h1><p class="alert bad">\(html(message))</p>
        <p><a class="btn" href="/">Back to the fleet</a></p></section>
        """)
    }
}
