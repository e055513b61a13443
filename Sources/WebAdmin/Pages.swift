// Pages: the HTML of the web admin, built from values (no IO here).
//
// Every page is plain server-rendered HTML that works without JavaScript; /static/app.js only
// adds conveniences: times in the viewer's zone, live updates (server-sent events, Live.swift),
// chart hover and drag-to-zoom, custom time ranges in local time. Pages are `HTML` values:
// everything interpolated into them is escaped unless it is itself `HTML` (HTML.swift).
// This file holds the frame and the small pieces; the pages are in FleetPage.swift,
// DevicePage.swift and AdminPages.swift.
import Audit
import BackendStore
import FieldlogCore
import Foundation

package enum Page {
    package static let navigation: [(key: String, title: String, path: String, role: Role)] = [
        ("fleet", "Fleet", "/", .viewer), ("audit", "Audit", "/audit", .viewer), ("dead-letters", "Dead letters", "/dead-letters", .viewer),
        ("activity", "Activity", "/activity", .viewer), ("users", "Users", "/users", .admin),
    ]

    /// The common frame: header with navigation and sign-out, the content, the footer.
    /// `live`: the URL of the page's event stream (Live.swift), if it has one.
    package static func layout(title: String, session: WebSession?, active: String = "", live: String? = nil, body: HTML) -> HTML {
        var nav = HTML.empty
        if let session {
            let links = navigation.filter { session.role >= $0.role }.map { n -> HTML in
                "<a href=\"\(n.path)\"\(n.key == active ? HTML(" class=\"on\" aria-current=\"page\"") : .empty)>\(n.title)</a>"
            }
            nav = """
            <nav class="nav">\(links)</nav>\
            <form class="signout" method="post" action="/signout">\(csrfField(session))\
            <a class="user" href="/account" title="your account">\(session.user) <span class="role">\(session.role.rawValue)</span></a>\
            <button type="submit" class="btn small ghost">Sign out</button></form>
            """
        }
        let liveAttribute: HTML = live.map { " data-live=\"\($0)\"" } ?? .empty
        return """
        <!doctype html>
        <html lang="en"><head><meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>\(title) · Fieldlog</title>
        <link rel="stylesheet" href="/static/app.css">
        <link rel="icon" href="/static/icon.svg" type="image/svg+xml">
        <script src="/static/app.js" defer></script>
        </head><body\(liveAttribute)>
        <header class="top"><a class="brand" href="/"><img src="/static/icon.svg" alt="" width="22" height="22">Fieldlog</a>\(nav)</header>
        <main>
        \(body)
        </main>
        <footer>Times are shown in <span class="tzname">UTC</span>. Fieldlog web admin.</footer>
        </body></html>
        """
    }

    package static func csrfField(_ s: WebSession) -> HTML { "<input type=\"hidden\" name=\"csrf\" value=\"\(s.csrfToken)\">" }

    package static let dash: HTML = "<span class=\"muted\">—</span>"

    /// A time the script shows in the viewer's zone; "—" when unknown.
    package static func time(_ iso: String?, relative: Bool = false) -> HTML {
        guard let iso else { return dash }
        let utc = iso.replacingOccurrences(of: "T", with: " ").replacingOccurrences(of: "Z", with: " UTC")
        return "<time datetime=\"\(iso)\"\(relative ? HTML(" data-relative") : .empty)>\(utc)</time>"
    }

    package static func stateBadge(_ d: FleetDevice) -> HTML {
        switch d.state {
        case "online": return "<span class=\"badge ok\">● Online</span>"
        case "offline": return "<span class=\"badge off\">○ Offline</span>"
        default: return d.protocolName == "legacy" ? "<span class=\"badge off\">Seed device</span>" : "<span class=\"badge off\">No status yet</span>"
        }
    }

    package static func measuringBadge(_ m: Bool?) -> HTML {
        switch m {
        case true?: return "<span class=\"badge ok soft\">Measuring</span>"
        case false?: return "<span class=\"badge warn soft\">Stopped</span>"
        case nil: return .empty
        }
    }

    package static func num(_ v: UInt64?) -> HTML { v.map { "\(groupDigits(String($0)))" } ?? dash }

    package static func groupDigits(_ s: String) -> String {
        guard s.count > 4, s.allSatisfy(\.isNumber) else { return s }
        var out = ""
        for (i, c) in s.reversed().enumerated() { if i > 0, i % 3 == 0 { out.append("\u{202F}") }; out.append(c) }
        return String(out.reversed())
    }

    package static func plural(_ n: Int, _ word: String) -> String { "\(groupDigits(String(n))) \(word)\(n == 1 ? "" : "s")" }

    /// A select whose option `selected` is chosen; options are (value, label).
    package static func select(name: String, _ options: [(String, String)], selected: String?, label: String) -> HTML {
        let opts = options.map { v, l -> HTML in "<option value=\"\(v)\"\(v == (selected ?? "") ? HTML(" selected") : .empty)>\(l)</option>" }
        return "<label>\(label) <select name=\"\(name)\">\(opts)</select></label>"
    }

    // MARK: sign-in

    package static func signIn(token: String, next: String, message: String?) -> HTML {
        layout(title: "Sign in", session: nil, body: """
        <section class="signin card">
        <h1>Sign in</h1>
        <p class="muted">Fieldlog web admin: your fleet's data and controls.</p>
        \(message.map { m -> HTML in "<p class=\"alert bad\" role=\"alert\">\(m)</p>" })
        <form method="post" action="/signin">
        <input type="hidden" name="csrf" value="\(token)">
        <input type="hidden" name="next" value="\(next)">
        <label>User <input name="user" autocomplete="username" required autofocus></label>
        <label>Password <input name="password" type="password" autocomplete="current-password" required></label>
        <button type="submit" class="btn primary wide">Sign in</button>
        </form>
        </section>
        """)
    }

    // MARK: confirmation and errors

    package static func confirmReboot(device: String, session: WebSession) -> HTML {
        layout(title: "Reboot \(device)?", session: session, body: """
        <section class="card confirm">
        <h1>Reboot \(device)?</h1>
        <p>The device restarts. It stops measuring until it is back up (usually under a minute). Readings already taken are kept on the device and sent afterwards.</p>
        <div class="row">
        <form method="post" action="/devices/\(device)/commands">\(csrfField(session))<input type="hidden" name="command" value="reboot"><input type="hidden" name="confirm" value="yes"><button class="btn danger" type="submit">Yes, reboot now</button></form>
        <a class="btn ghost" href="/devices/\(device)#control">Cancel</a>
        </div></section>
        """)
    }

    package static func error(status: Int, message: String, session: WebSession?) -> HTML {
        let title: String
        switch status {
        case 400: title = "That request was not right"
        case 403: title = "Not allowed"
        case 404: title = "Not found"
        case 409: title = "That is in the way"
        case 429: title = "Too many requests"
        case 503: title = "Temporarily unavailable"
        default: title = "Something went wrong"
        }
        return layout(title: title, session: session, body: """
        <section class="card confirm"><h1>\(title)</h1><p class="alert bad">\(message)</p>
        <p><a class="btn" href="/">Back to the fleet</a></p></section>
        """)
    }
}
