// Pages of the fleet audit, the dead letters, the users (admins), the account and the
// activity trail.
import Audit
import BackendStore
import FieldlogCore
import Foundation
import Sync

extension Page {
    // MARK: audit

    package static func audit(_ report: AuditReport, session: WebSession) -> HTML {
        var rows = HTML.empty
        var problems = 0
        for d in report.devices {
            for e in d.epochs {
                for g in e.gaps {
                    problems += 1
                    rows += auditRow(d.device, e.epoch, kind: "<span class=\"badge bad\">gap</span>", what: "\(g.first)…\(g.last)", count: g.last - g.first + 1,
                                     action: replayButton(device: d.device, epoch: e.epoch, first: g.first, last: g.last, session: session))
                }
                for g in e.rowsMissing {
                    problems += 1
                    rows += auditRow(d.device, e.epoch, kind: "<span class=\"badge bad\" title=\"acked and in batch_ranges, but no readings row, declared loss or rejected record\">rows missing</span>",
                                     what: "\(g.first)…\(g.last)", count: g.last - g.first + 1,
                                     action: replayButton(device: d.device, epoch: e.epoch, first: g.first, last: g.last, session: session))
                }
                if let u = e.unstoredAtEnd {
                    problems += 1
                    rows += auditRow(d.device, e.epoch, kind: "<span class=\"badge bad\">epoch ended unstored</span>", what: "\(u.first)…\(u.last)", count: u.last - u.first + 1,
                                     action: replayButton(device: d.device, epoch: e.epoch, first: u.first, last: u.last, session: session))
                }
                for l in e.losses {
                    rows += auditRow(d.device, e.epoch, kind: "<span class=\"badge warn\">declared lost: \(l.reason)</span>",
                                     what: "\(l.first)…\(l.last)\(l.detail.isEmpty ? "" : " — \(l.detail)")", count: l.last - l.first + 1, action: .empty)
                }
            }
            let link = "/devices/\(d.device)"
            if d.silent {
                rows += "<tr><td data-label=\"Device\"><a href=\"\(link)\">\(d.device)</a></td><td data-label=\"Epoch\">—</td><td data-label=\"Problem\"><span class=\"badge warn\">silent</span></td><td data-label=\"Records\" colspan=\"3\"><div class=\"cell\">nothing received since \(time(WebTime.iso(sql: d.lastSeenAt)))</div></td></tr>"
            }
            if d.legacyReadings != nil {
                rows += "<tr><td data-label=\"Device\"><a href=\"\(link)\">\(d.device)</a></td><td data-label=\"Epoch\">—</td><td data-label=\"Problem\"><span class=\"badge info\">seed device</span></td><td data-label=\"Note\" colspan=\"3\">\(d.note ?? "")</td></tr>"
            }
        }
        let summary: HTML = problems == 0 ? "<p class=\"alert good\">Nothing is missing: every record the devices reported is stored or accounted for.</p>"
            : "<p class=\"alert bad\">\(problems) range\(problems == 1 ? "" : "s") of records are missing. \(session.role >= .operator ? "Ask the device to resend them with “Request replay”; its answer shows on the device page." : "An operator can ask the device to resend them.")</p>"
        if rows.isEmpty { rows = "<tr><td colspan=\"6\" class=\"empty\">No gaps, losses or silent devices.</td></tr>" }
        return layout(title: "Audit", session: session, active: "audit", body: """
        <div class="pagehead"><h1>Audit</h1><span class="muted small">Gaps and losses across the fleet · \(plural(report.devices.count, "device"))</span></div>
        \(summary)
        <div class="scroll-x"><table class="grid auditlist"><thead><tr><th>Device</th><th>Epoch</th><th>Problem</th><th>Sequence numbers</th><th>Records</th><th></th></tr></thead><tbody>\(rows)</tbody></table></div>
        """)
    }

    package static func auditRow(_ device: String, _ epoch: String, kind: HTML, what: String, count: UInt64, action: HTML) -> HTML {
        "<tr><td data-label=\"Device\"><a href=\"/devices/\(device)#audit\">\(device)</a></td><td data-label=\"Epoch\"><code>\(epoch)</code></td><td data-label=\"Problem\">\(kind)</td><td data-label=\"Sequence numbers\">\(what)</td><td data-label=\"Records\" class=\"n\">\(groupDigits(String(count)))</td><td>\(action)</td></tr>"
    }

    // MARK: dead letters

    package static func deadLetters(_ rows: [StoredDeadLetter], query q: DeadLetterQuery, session: WebSession) -> HTML {
        let reasons = [("", "any reason")] + DeadLetterReason.allCases.map { ($0.rawValue, $0.rawValue) }
        let body = rows.map { d -> HTML in
            let device: HTML = d.device.map { id -> HTML in "<a href=\"/devices/\(id)\">\(id)</a>" } ?? dash
            let record: HTML = d.epoch.map { e -> HTML in "<code>\(e)</code>\(d.seq.map { " / \($0)" } ?? "")" } ?? dash
            let head: HTML = d.payloadHead.map { t -> HTML in "<pre class=\"payload\">\(t)</pre>" }
                ?? "<pre class=\"payload hex\" title=\"not text: the bytes in hex\">hex \(d.payloadHeadHex ?? "")</pre>"
            let size = d.payloadBytes > 1024 ? "first 1 KiB of \(groupDigits(String(d.payloadBytes))) bytes" : plural(d.payloadBytes, "byte")
            return """
            <tr><td data-label="Received">\(time(d.receivedAt))</td>\
            <td data-label="Reason"><span class="badge warn">\(d.reason)</span></td>\
            <td data-label="Device">\(device)</td><td data-label="Epoch / seq">\(record)</td>\
            <td data-label="Detail" class="detail"><div class="cell">\(d.detail)<div class="muted small">topic <code>\(d.topic)</code></div></div></td>\
            <td data-label="Payload" class="payloadcell"><details><summary>\(size)</summary>\(head)</details></td></tr>
            """
        }.joined()
        let empty: HTML = "<tr><td colspan=\"6\" class=\"empty\">No dead letters\(q.reason != nil || q.device != nil || q.fromMs != nil ? " match these filters" : ""). The ingest keeps here what it could not store: malformed messages and rejected records.</td></tr>"
        var pager = HTML.empty
        if q.before != nil { pager += "<a class=\"btn small\" href=\"\(PageLink("/dead-letters", q.parameters).text)\">« Newest</a>" }
        if rows.count == q.limit, let last = rows.last {
            pager += "<a class=\"btn small\" href=\"\(PageLink("/dead-letters", q.parameters + [("before", String(last.id))]).text)\" rel=\"next\">Older →</a>"
        }
        let from = q.fromMs.map { WebTime.iso(milliseconds: $0) }, to = q.toMs.map { WebTime.iso(milliseconds: $0) }
        return layout(title: "Dead letters", session: session, active: "dead-letters", body: """
        <div class="pagehead"><h1>Dead letters</h1><span class="muted small">What the ingest refused, newest first, with the start of each stored payload</span></div>
        <form class="search card" method="get" action="/dead-letters">
        \(select(name: "reason", reasons, selected: q.reason?.rawValue, label: "Reason"))
        <label>Device <input name="device" value="\(q.device?.rawValue)" placeholder="any" maxlength="64"></label>
        <label>From <input name="from" value="\(from)" placeholder="2026-11-29T08:00:00Z"></label>
        <label>To <input name="to" value="\(to)" placeholder="now"></label>
        <button class="btn" type="submit">Filter</button><a class="btn ghost" href="/dead-letters">Clear</a>
        </form>
        <div class="scroll-x"><table class="grid deadletters"><thead><tr><th>Received</th><th>Reason</th><th>Device</th><th>Epoch / seq</th><th>Detail</th><th>Payload</th></tr></thead>\
        <tbody>\(rows.isEmpty ? empty : body)</tbody></table></div>
        <nav class="pager">\(pager)</nav>
        """)
    }

    // MARK: users

    package static func users(_ users: [WebUser], session: WebSession, message: String?) -> HTML {
        let roleOptions = Role.allCases.map { ($0.rawValue, "\($0.rawValue): \($0.summary)") }
        let rows = users.map { u -> HTML in
            let action = "/users/\(u.name)"
            func form(_ what: String, _ inner: HTML, cls: String = "inline-form") -> HTML {
                "<form method=\"post\" action=\"\(action)\" class=\"\(cls)\">\(csrfField(session))<input type=\"hidden\" name=\"action\" value=\"\(what)\">\(inner)</form>"
            }
            let isSelf = u.name == session.user
            let roleSelect = Role.allCases.map { r -> HTML in "<option value=\"\(r.rawValue)\"\(r == u.role ? HTML(" selected") : .empty)>\(r.rawValue)</option>" }
            let role = isSelf ? HTML("<span class=\"badge info soft\">\(u.role.rawValue)</span>")
                : form("role", "<select name=\"role\" aria-label=\"role of \(u.name)\">\(roleSelect)</select><button class=\"btn small\" type=\"submit\">Set</button>")
            let state: HTML = u.disabled ? "<span class=\"badge bad\">disabled</span>" : "<span class=\"badge ok soft\">enabled</span>"
            var actions = form("passwd", "<input name=\"password\" type=\"password\" autocomplete=\"new-password\" minlength=\"10\" maxlength=\"72\" required placeholder=\"new password\" aria-label=\"new password for \(u.name)\"><button class=\"btn small\" type=\"submit\">Set password</button>")
            actions += form("signout", "<button class=\"btn small ghost\" type=\"submit\"\(u.sessions == 0 ? HTML(" disabled") : .empty)>Sign out everywhere</button>")
            if !isSelf {
                actions += u.disabled ? form("enable", "<button class=\"btn small\" type=\"submit\">Enable</button>")
                    : form("disable", "<button class=\"btn small danger\" type=\"submit\">Disable</button>")
                actions += form("remove", "<label class=\"check\"><input type=\"checkbox\" name=\"confirm\" value=\"yes\" required> sure</label><button class=\"btn small danger\" type=\"submit\">Remove</button>")
            }
            return """
            <tr data-user="\(u.name)"><td data-label="User"><strong>\(u.name)</strong>\(isSelf ? HTML(" <span class=\"muted small\">(you)</span>") : .empty)</td>\
            <td data-label="Role">\(role)</td><td data-label="State">\(state)</td>\
            <td data-label="Sessions" class="n">\(u.sessions)</td><td data-label="Changed">\(time(u.updatedAt))</td>\
            <td data-label="Actions" class="actions">\(actions)</td></tr>
            """
        }.joined()
        return layout(title: "Users", session: session, active: "users", body: """
        <div class="pagehead"><h1>Users</h1><span class="muted small">Every change ends that user's sessions and is kept in the <a href="/activity">activity trail</a>.</span></div>
        \(message.map { m -> HTML in "<p class=\"alert info\" role=\"status\">\(m)</p>" })
        <div class="scroll-x"><table class="grid users"><thead><tr><th>User</th><th>Role</th><th>State</th><th>Sessions</th><th>Changed</th><th>Actions</th></tr></thead><tbody>\(rows)</tbody></table></div>
        <section class="card" id="add-user"><h2>Add a user</h2>
        <form method="post" action="/users" class="addform">\(csrfField(session))
        <label>User name <input name="name" required maxlength="64" pattern="[A-Za-z0-9._@-]+" autocomplete="off"></label>
        \(select(name: "role", roleOptions, selected: Role.operator.rawValue, label: "Role"))
        <label>Password <input name="password" type="password" autocomplete="new-password" minlength="10" maxlength="72" required></label>
        <button class="btn primary" type="submit">Add user</button>
        </form></section>
        """)
    }

    // MARK: account

    package static func account(session: WebSession, sessions: Int, message: String?) -> HTML {
        layout(title: "Your account", session: session, body: """
        <div class="pagehead"><h1>Your account</h1></div>
        \(message.map { m -> HTML in "<p class=\"alert info\" role=\"status\">\(m)</p>" })
        <section class="card facts">
        <div class="fact"><span class="label">User</span><strong>\(session.user)</strong></div>
        <div class="fact"><span class="label">Role</span><span>\(session.role.rawValue): \(session.role.summary)</span></div>
        <div class="fact"><span class="label">Signed in</span><span>\(plural(sessions, "session"))</span></div>
        <div class="fact"><span class="label">This session ends</span>\(time(WebTime.iso(milliseconds: session.expiresAtMs)))</div>
        </section>
        <section class="card"><h2>Change your password</h2>
        <p class="muted small">Your other sessions end; this one stays.</p>
        <form method="post" action="/account" class="addform">\(csrfField(session))<input type="hidden" name="action" value="passwd">
        <label>Current password <input name="current" type="password" autocomplete="current-password" required></label>
        <label>New password <input name="password" type="password" autocomplete="new-password" minlength="10" maxlength="72" required></label>
        <label>New password again <input name="again" type="password" autocomplete="new-password" minlength="10" maxlength="72" required></label>
        <button class="btn primary" type="submit">Change password</button>
        </form></section>
        <section class="card"><h2>Other sessions</h2>
        <form method="post" action="/account">\(csrfField(session))<input type="hidden" name="action" value="signout">
        <button class="btn" type="submit">Sign out everywhere else</button></form></section>
        """)
    }

    // MARK: activity

    package static let activityActions: [(String, String)] = [("", "anything")] + ActivityAction.allCases.map { ($0.rawValue, $0.rawValue) }

    package static func activity(_ entries: [ActivityEntry], target: String?, action: String?, before: UInt64?, limit: Int, session: WebSession) -> HTML {
        let rows = entries.map { e -> HTML in
            let target: HTML = e.action == ActivityAction.command.rawValue ? "<a href=\"/devices/\(e.target)\">\(e.target)</a>" : "\(e.target)"
            return """
            <tr><td data-label="When">\(time(e.at))</td><td data-label="Who"><strong>\(e.actor)</strong></td>\
            <td data-label="Did"><span class="badge info soft">\(e.action)</span></td><td data-label="To">\(target)</td>\
            <td data-label="What"><div class="cell">\(e.detail)\(e.requestId.map { r -> HTML in " <span class=\"muted small\">request <code>\(r)</code></span>" })</div></td></tr>
            """
        }.joined()
        let base: [(String, String?)] = [("target", target), ("action", action)]
        var pager = HTML.empty
        if before != nil { pager += "<a class=\"btn small\" href=\"\(PageLink("/activity", base).text)\">« Newest</a>" }
        if entries.count == limit, let last = entries.last {
            pager += "<a class=\"btn small\" href=\"\(PageLink("/activity", base + [("before", String(last.id))]).text)\" rel=\"next\">Older →</a>"
        }
        return layout(title: "Activity", session: session, active: "activity", body: """
        <div class="pagehead"><h1>Activity</h1><span class="muted small">Who sent which command and who changed which user, newest first</span></div>
        <form class="search card" method="get" action="/activity">
        <label>Device or user <input name="target" value="\(target)" maxlength="128" placeholder="any"></label>
        \(select(name: "action", activityActions, selected: action, label: "Action"))
        <button class="btn" type="submit">Filter</button><a class="btn ghost" href="/activity">Clear</a>
        </form>
        <div class="scroll-x"><table class="grid activity"><thead><tr><th>When</th><th>Who</th><th>Did</th><th>To</th><th>What</th></tr></thead>\
        <tbody>\(entries.isEmpty ? HTML("<tr><td colspan=\"5\" class=\"empty\">Nothing recorded yet.</td></tr>") : rows)</tbody></table></div>
        <nav class="pager">\(pager)</nav>
        """)
    }
}
