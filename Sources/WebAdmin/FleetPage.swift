// The fleet page: tiles that count and filter, a search by device id, a sortable table, pages.
// Its parts carry ids (`fleet-tiles`, `fleet-rows`, `fleet-pager`) that the live stream
// (Live.swift) replaces when they change.
import Audit
import BackendStore
import FieldlogCore
import Foundation

extension Page {
    package struct FleetView {
        package var query: FleetQuery
        package var counts: FleetCounts
        package var devices: [FleetDevice]
        package var total: Int
        /// When the snapshot was read (wall clock).
        package var loadedAtMs: Int64

        package init(query: FleetQuery, snapshot: FleetSnapshot) {
            self.query = query
            counts = snapshot.counts
            loadedAtMs = snapshot.loadedAtMs
            (devices, total) = query.apply(snapshot.devices)
        }

        package func link(_ change: (inout FleetQuery) -> Void) -> String {
            var q = query
            change(&q)
            return PageLink("/", q.parameters).text
        }

        package var liveURL: String { PageLink("/live/fleet", query.parameters).text }
    }

    package static let fleetColumns: [(key: FleetQuery.FleetSort, title: String)] = [
        (.device, "Device"), (.state, "Status"), (.lastSeen, "Last seen"), (.epoch, "Epoch"), (.storedThrough, "Stored through"),
        (.backlog, "Backlog"), (.gaps, "Gaps"), (.deadLetters, "Dead letters"),
    ]

    package static func fleet(_ v: FleetView, session: WebSession) -> HTML {
        var head = HTML.empty
        for c in fleetColumns {
            let on = c.key == v.query.sort
            let descending = on && !v.query.descending
            let href = v.link { $0.sort = c.key; $0.descending = descending; $0.page = 0 }
            let arrow = on ? (v.query.descending ? " ▼" : " ▲") : ""
            let sortAttribute: HTML = on ? " aria-sort=\"\(v.query.descending ? "descending" : "ascending")\"" : .empty
            head += "<th\(sortAttribute)><a href=\"\(href)\">\(c.title)\(arrow)</a></th>"
        }
        let filterOptions = [("", "all devices")] + FleetFilter.allCases.map { ($0.rawValue, $0.title) }
        return layout(title: "Fleet", session: session, active: "fleet", live: v.liveURL, body: """
        <div class="pagehead"><h1>Fleet</h1><span class="muted small">Live · as of <span id="fleet-updated">\(time(WebTime.iso(milliseconds: v.loadedAtMs)))</span></span></div>
        <div class="tiles" id="fleet-tiles">\(fleetTiles(v))</div>
        <form class="search card" method="get" action="/" role="search">
        <label class="grow">Device id contains <input name="q" value="\(v.query.search)" placeholder="e.g. press-12" maxlength="64" autocomplete="off"></label>
        \(select(name: "filter", filterOptions, selected: v.query.filter?.rawValue, label: "Show"))
        \(v.query.sort == .device ? HTML.empty : "<input type=\"hidden\" name=\"sort\" value=\"\(v.query.sort.rawValue)\">")\
        \(v.query.descending ? "<input type=\"hidden\" name=\"dir\" value=\"desc\">" : HTML.empty)
        <button class="btn" type="submit">Search</button>
        \(v.query.search != nil || v.query.filter != nil ? "<a class=\"btn ghost\" href=\"/\">Clear</a>" : HTML.empty)
        </form>
        <div class="scroll-x"><table class="grid fleet"><thead><tr>\(head)</tr></thead><tbody id="fleet-rows">\(fleetRows(v))</tbody></table></div>
        <div id="fleet-pager">\(fleetPager(v))</div>
        """)
    }

    package static func fleetTiles(_ v: FleetView) -> HTML {
        func tile(_ f: FleetFilter?, _ label: String, tone: String) -> HTML {
            let n = v.counts.count(f)
            let on = v.query.filter == f
            let href = v.link { $0.filter = f; $0.page = 0 }
            let cls = ["tile", n > 0 ? tone : "", on ? "on" : ""].filter { !$0.isEmpty }.joined(separator: " ")
            return "<a class=\"\(cls)\" href=\"\(href)\" data-filter=\"\(f?.rawValue ?? "all")\"\(on ? HTML(" aria-current=\"true\"") : .empty)><span class=\"big\">\(groupDigits(String(n)))</span><span>\(label)</span></a>"
        }
        return [
            tile(nil, "devices", tone: ""), tile(.online, "online", tone: "ok"), tile(.offline, "offline", tone: "off"),
            tile(.silent, "silent", tone: "warn"), tile(.gaps, "with gaps", tone: "bad"), tile(.backlog, "with backlog", tone: "info"),
            tile(.deadLetters, "with dead letters", tone: "warn"),
            "<div class=\"tile\"><span class=\"big\">\(groupDigits(String(v.counts.recordsWaiting)))</span><span>records waiting on devices</span></div>",
        ].joined()
    }

    package static func fleetRows(_ v: FleetView) -> HTML {
        guard !v.devices.isEmpty else {
            let why: HTML = v.counts.all == 0 ? "No devices yet. Devices appear here when their first batch or status arrives."
                : "No device matches. <a href=\"/\">Show all \(groupDigits(String(v.counts.all)))</a>"
            return "<tr><td colspan=\"8\" class=\"empty\">\(why)</td></tr>"
        }
        return v.devices.map { d -> HTML in
            let link = "/devices/\(d.device)"
            let gaps: HTML = d.missingRecords > 0
                ? "<a class=\"badge bad\" href=\"\(link)#audit\">\(d.gapCount) (\(groupDigits(String(d.missingRecords))) missing)</a>"
                : "<span class=\"badge ok soft\">none</span>"
            let dead: HTML = d.deadLetters > 0
                ? "<a class=\"badge warn\" href=\"\(PageLink("/dead-letters", [("device", d.device)]).text)\">\(d.deadLetters)</a>" : "0"
            let silent: HTML = d.silent ? " <span class=\"badge warn\" title=\"nothing received for a while\">Silent</span>" : .empty
            return """
            <tr class="\(d.missingRecords > 0 ? "has-gaps" : "")" data-device="\(d.device)">\
            <td data-label="Device"><a class="devlink" href="\(link)">\(d.device)</a></td>\
            <td data-label="Status"><div class="cell">\(stateBadge(d)) \(measuringBadge(d.measuring))\(silent)</div></td>\
            <td data-label="Last seen">\(time(d.lastSeenAt, relative: true))</td>\
            <td data-label="Epoch"><code>\(d.epoch ?? "—")</code></td>\
            <td data-label="Stored through" class="n">\(num(d.storedThrough))</td>\
            <td data-label="Backlog" class="n" title="records on the device not yet acknowledged (head − acked)">\(num(d.backlog))</td>\
            <td data-label="Gaps" class="n">\(gaps)</td>\
            <td data-label="Dead letters" class="n">\(dead)</td>\
            </tr>
            """
        }.joined()
    }

    package static func fleetPager(_ v: FleetView) -> HTML {
        let q = v.query
        let pages = max(1, (v.total + q.pageSize - 1) / q.pageSize)
        let first = v.total == 0 ? 0 : q.page * q.pageSize + 1
        let last = min(v.total, (q.page + 1) * q.pageSize)
        var out: HTML = "<nav class=\"pager\" aria-label=\"pages\">"
        if q.page > 0 {
            out += "<a class=\"btn small\" href=\"\(v.link { $0.page = 0 })\" aria-label=\"first page\">«</a>"
            out += "<a class=\"btn small\" href=\"\(v.link { $0.page -= 1 })\" rel=\"prev\">← Previous</a>"
        }
        out += "<span class=\"muted small\">\(groupDigits(String(first)))–\(groupDigits(String(last))) of \(plural(v.total, "device")) · page \(q.page + 1) of \(groupDigits(String(pages)))</span>"
        if q.page + 1 < pages {
            out += "<a class=\"btn small\" href=\"\(v.link { $0.page += 1 })\" rel=\"next\">Next →</a>"
            out += "<a class=\"btn small\" href=\"\(v.link { $0.page = pages - 1 })\" aria-label=\"last page\">»</a>"
        }
        return out + "</nav>"
    }
}
