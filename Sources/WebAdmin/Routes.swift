// The web admin's application: `buildRouter` (pages, JSON API, assets) and `buildApplication`.
//
// Theory of operation: one Hummingbird router with three middlewares, outermost first: the
// security headers middleware (so every answer carries them, errors included),
// `ErrorPageMiddleware` (turns every error into a clear answer: HTML for pages, JSON for /api;
// anything that is not an HTTPError is logged with a reference and becomes a 500 that gives
// only the reference), then `SessionMiddleware` (auth, roles + CSRF, see Auth.swift).
// Handlers parse and check their parameters first (a 400 that names the parameter), then read
// through `WebStore` and render a `Page` (HTML that escapes by default) or encode JSON. Pages
// of the fleet, devices, dead letters and the audit live here; users, the account and the
// activity trail in AdminRoutes.swift; the live streams in Live.swift. Tests call
// `buildRouter` with a real database and `app.test(.router)`; `fieldlog-backend web`/`run`
// call `buildApplication`.
import Audit
import BackendStore
import FieldlogCore
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
import Sync

/// What the routes need.
package struct WebDependencies: Sendable {
    package var store: WebStore
    package var commands: CommandDispatcher
    package var settings: WebSettings
    package var logger: Logger
    package var signInThrottle = SignInThrottle()
    package var signInGate: SignInGate
    package var live: LiveStreams

    package init(store: WebStore, commands: CommandDispatcher, settings: WebSettings, logger: Logger) {
        self.store = store
        self.commands = commands
        self.settings = settings
        self.logger = logger
        signInGate = SignInGate(limit: settings.signInConcurrency)
        live = LiveStreams(limit: settings.liveMaxStreams)
    }
}

/// Builds the router with every page, API call and asset.
package func buildRouter(_ deps: WebDependencies) -> Router<WebContext> {
    let router = Router(context: WebContext.self)
    router.add(middleware: SecurityHeadersMiddleware())
    router.add(middleware: ErrorPageMiddleware(logger: deps.logger))
    router.add(middleware: SessionMiddleware(store: deps.store))
    let web = WebRoutes(deps: deps)
    web.register(router)
    web.registerAdmin(router)
    web.registerLive(router)
    return router
}

/// The application served by `fieldlog-backend web` and `run`.
package func buildApplication(_ deps: WebDependencies, services: [any Service] = []) -> some ApplicationProtocol {
    Application(router: buildRouter(deps),
                configuration: ApplicationConfiguration(address: .hostname(deps.settings.host, port: deps.settings.port),
                                                        serverName: "fieldlog-web"),
                services: services, logger: deps.logger)
}

package struct WebRoutes: Sendable {
    package let deps: WebDependencies
    package var store: WebStore { deps.store }
    package var users: UserDirectory { UserDirectory(store: deps.store) }

    package func register(_ router: Router<WebContext>) {
        // Assets and health.
        router.get("/static/:name") { _, context in try Assets.response(name: context.parameters.get("name") ?? "") }
        router.get("/favicon.ico") { _, _ in try Assets.response(name: "icon.svg") }
        router.get("/healthz") { _, _ in Response(status: .ok, headers: [.contentType: "text/plain"], body: .init(byteBuffer: ByteBuffer(string: "ok\n"))) }

        // Pages.
        router.get("/signin") { request, context in try await signInPage(request, context) }
        router.post("/signin") { request, context in try await signIn(request, context) }
        router.post("/signout") { request, context in try await signOut(request, context) }
        router.get("/") { request, context in try await fleetPage(request, context) }
        router.get("/devices/:device") { request, context in try await devicePage(request, context) }
        router.get("/devices/:device/readings.csv") { request, context in try await csv(request, context) }
        router.post("/devices/:device/commands") { request, context in try await commandForm(request, context) }
        router.get("/devices/:device/commands") { request, context in
            let d = try await knownDevice(context)
            return htmlResponse(Page.commandsTable(try await store.commands(device: d, limit: 10)))
        }
        router.get("/audit") { request, context in try await auditPage(request, context) }
        router.get("/dead-letters") { request, context in try await deadLettersPage(request, context) }

        // JSON API (docs/openapi.yaml; WebRouteTests checks the two agree).
        router.get("/api/session") { _, context in try sessionInfo(context) }
        router.post("/api/session") { request, context in try await apiSignIn(request, context) }
        router.delete("/api/session") { request, context in try await apiSignOut(request, context) }
        router.get("/api/devices") { request, _ in try await apiFleet(request) }
        router.get("/api/devices/:device") { request, context in try await apiDevice(request, context) }
        router.get("/api/devices/:device/series") { request, context in try await apiSeries(request, context) }
        router.get("/api/devices/:device/readings") { request, context in try await apiReadings(request, context) }
        router.get("/api/devices/:device/readings.csv") { request, context in try await csv(request, context) }
        router.get("/api/devices/:device/commands") { request, context in
            let d = try device(context)
            return try json(["commands": try await store.commands(device: d)])
        }
        router.post("/api/devices/:device/commands") { request, context in try await apiCommand(request, context) }
        router.get("/api/commands/:requestId") { _, context in
            let id = context.parameters.get("requestId") ?? ""
            guard let c = try await store.command(requestID: id) else { throw HTTPError(.notFound, message: "no command with request id \"\(id)\"") }
            return try json(c)
        }
        router.get("/api/audit") { _, _ in try json(WebTime.isoTimes(try await store.audit())) }
        router.get("/api/dead-letters") { request, _ in
            let (rows, query) = try await deadLetters(request)
            struct Body: Encodable { var deadLetters: [StoredDeadLetter]; var next: String? }
            return try json(Body(deadLetters: rows, next: rows.count == query.limit ? rows.last.map { String($0.id) } : nil))
        }
    }

    // MARK: parameters

    package func device(_ context: WebContext) throws -> DeviceID {
        let text = context.parameters.get("device") ?? ""
        do { return try DeviceID(text) } catch { throw HTTPError(.badRequest, message: "invalid device id: \(error.description)") }
    }

    package func knownDevice(_ context: WebContext) async throws -> DeviceID {
        let d = try device(context)
        guard try await store.deviceExists(d) else { throw HTTPError(.notFound, message: "no device \"\(d)\" has been seen") }
        return d
    }

    /// A query parameter as Hummingbird decoded it (once), nil when absent or empty.
    package func query(_ request: Request, _ name: String) -> String? {
        request.uri.queryParameters[Substring(name)].map(String.init).flatMap { $0.isEmpty ? nil : $0 }
    }

    /// The time range of a request: `range=fit|15m|1h|6h|24h|7d|30d` (ending now) or `from`/`to`
    /// (ISO 8601 with zone, or ms since 1970). Default `fit`: the device's readings of the last
    /// 24 h, so a device that just started fills the chart instead of a sliver at its edge.
    package func timeRange(_ request: Request, device: DeviceID) async throws -> (key: String, from: Int64, to: Int64) {
        let now = WebTime.nowMilliseconds()
        if let r = try WebTime.range(from: query(request, "from"), to: query(request, "to"), now: now) { return ("custom", r.from, r.to) }
        let key = query(request, "range") ?? "fit"
        guard let r = Page.ranges.first(where: { $0.key == key }) else {
            throw HTTPError(.badRequest, message: "range must be one of \(Page.ranges.map(\.key).joined(separator: ", ")), got \"\(key)\"")
        }
        if key == "fit" {
            guard let extent = try await store.readingExtent(device: device, sinceMs: now - 86_400_000) else { return (key, now - 3_600_000, now) }
            let span = max(60_000, extent.last - extent.first)
            let from = extent.first - max(5_000, span / 40)
            return (key, from, min(now, max(extent.last + span / 10, from + 60_000)) + 1)
        }
        return (key, now - r.ms, now)
    }

    package func intParameter(_ request: Request, _ name: String, default value: Int, range: ClosedRange<Int>) throws -> Int {
        try FleetQuery.int(query(request, name), name, default: value, range: range)
    }

    // MARK: sign-in

    package func signInPage(_ request: Request, _ context: WebContext, next: String? = nil, message: String? = nil,
                    status: HTTPResponse.Status = .ok) async throws -> Response {
        if context.session != nil, message == nil { return .redirect(to: "/", type: .found) }
        let token = randomToken()
        var r = htmlResponse(Page.signIn(token: token, next: safeNext(next ?? query(request, "next")), message: message), status: status)
        r.setCookie(deps.settings.signInCookie(token))
        return r
    }

    /// Only paths of this site, so a sign-in link cannot send the user elsewhere: it must start
    /// with one "/" and hold nothing a browser would read as another host (a second "/" or "\\"
    /// at its start, after dropping the TAB/CR/LF browsers ignore) or treat specially (control
    /// characters, spaces).
    package func safeNext(_ next: String?) -> String {
        guard let next, next.utf8.count <= 2048, next.hasPrefix("/"),
              next.utf8.allSatisfy({ $0 > 0x20 && $0 != 0x7F && $0 != 0x5C }) else { return "/" }
        let second = next.utf8.dropFirst().first
        guard second != 0x2F else { return "/" }
        return next
    }

    package func signIn(_ request: Request, _ context: WebContext) async throws -> Response {
        var request = request
        let form = parseForm(String(buffer: try await request.collectBody(upTo: context.maxUploadSize)))
        guard let cookie = request.cookies[WebSettings.signInCookie]?.value, let given = form["csrf"], constantTimeEqual(cookie, given) else {
            throw HTTPError(.forbidden, message: "The sign-in form is stale or was not sent from this site. Reload the sign-in page and try again.")
        }
        let user = form["user"] ?? "", password = form["password"] ?? ""
        let session: WebSession?
        do {
            session = try await authenticate(user: user, password: password, client: context.client(request, trustedProxies: deps.settings.trustedProxies))
        } catch let e as HTTPError where e.status == .tooManyRequests {
            return try await signInPage(request, context, next: form["next"], message: e.body ?? "Too many sign-ins; wait a moment.", status: .tooManyRequests)
        }
        guard let session else {
            return try await signInPage(request, context, next: form["next"], message: "Wrong user name or password.", status: .unauthorized)
        }
        var r = Response.redirect(to: safeNext(form["next"]), type: .found)
        r.setCookie(deps.settings.sessionCookie(session))
        r.setCookie(deps.settings.expiredCookie(WebSettings.signInCookie))
        return r
    }

    /// Checks the password (throttled, see SignInThrottle/SignInGate); a session when right.
    package func authenticate(user: String, password: String, client: String) async throws -> WebSession? {
        guard Passwords.checkUserName(user) == nil, !password.isEmpty, password.utf8.count <= 72 else { return nil }
        if let wait = deps.signInThrottle.refusal(client: client, user: user, now: .now) {
            deps.logger.notice("web: sign-in for \(user.debugDescription) from \(client) refused: too many failures")
            throw HTTPError(.tooManyRequests, message: "Too many failed sign-ins from here. Try again in \(wait.components.seconds + 1) s.")
        }
        let checked: Bool? = try await deps.signInGate.run {
            let hash = try await store.passwordHash(user: user)
            return await Passwords.verify(password, hash: hash, cost: deps.settings.bcryptCost)
        }
        guard let ok = checked else {
            throw HTTPError(.tooManyRequests, message: "Too many sign-ins at once. Try again in a few seconds.")
        }
        guard ok, let session = try await store.createSession(user: user) else {
            deps.signInThrottle.failed(client: client, user: user, now: .now)
            deps.logger.notice("web: failed sign-in for \(user.debugDescription) from \(client)")
            return nil
        }
        deps.signInThrottle.succeeded(client: client, user: user)
        deps.logger.info("web: \(user) signed in from \(client)")
        return session
    }

    package func signOut(_ request: Request, _ context: WebContext) async throws -> Response {
        try await store.deleteSession(token: context.signedIn.token)
        var r = Response.redirect(to: "/signin", type: .found)
        r.setCookie(deps.settings.expiredCookie(WebSettings.sessionCookie))
        return r
    }

    package struct SessionInfo: Codable { var user: String; var role: Role; var csrfToken: String; var expiresAt: String }

    package func sessionInfo(_ context: WebContext) throws -> Response {
        guard let s = context.session else { throw HTTPError(.unauthorized, message: "Not signed in: POST /api/session with user and password first.") }
        return try json(SessionInfo(user: s.user, role: s.role, csrfToken: s.csrfToken, expiresAt: WebTime.iso(milliseconds: s.expiresAtMs)))
    }

    package struct Credentials: Decodable { var user: String; var password: String }

    package func apiSignIn(_ request: Request, _ context: WebContext) async throws -> Response {
        let c: Credentials = try await decodeJSON(request, context)
        guard let session = try await authenticate(user: c.user, password: c.password, client: context.client(request, trustedProxies: deps.settings.trustedProxies)) else {
            throw HTTPError(.unauthorized, message: "wrong user name or password")
        }
        var r = try json(SessionInfo(user: session.user, role: session.role, csrfToken: session.csrfToken,
                                     expiresAt: WebTime.iso(milliseconds: session.expiresAtMs)), status: .created)
        r.setCookie(deps.settings.sessionCookie(session))
        return r
    }

    package func apiSignOut(_ request: Request, _ context: WebContext) async throws -> Response {
        guard let s = context.session else { throw HTTPError(.unauthorized, message: "Not signed in.") }
        // /api/session is public (for signing in), so SessionMiddleware did not check the token.
        guard let given = request.headers[HTTPField.Name("X-CSRF-Token")!], constantTimeEqual(given, s.csrfToken) else {
            throw HTTPError(.forbidden, message: "missing or wrong X-CSRF-Token header")
        }
        try await store.deleteSession(token: s.token)
        var r = Response(status: .noContent)
        r.setCookie(deps.settings.expiredCookie(WebSettings.sessionCookie))
        return r
    }

    // MARK: fleet

    package func fleetQuery(_ request: Request, defaultPageSize: Int = 50) throws -> FleetQuery {
        try FleetQuery(parameters: { query(request, $0) }, defaultPageSize: defaultPageSize)
    }

    package func fleetPage(_ request: Request, _ context: WebContext) async throws -> Response {
        let q = try fleetQuery(request)
        let snapshot = try await store.fleetSnapshot()
        return htmlResponse(Page.fleet(Page.FleetView(query: q, snapshot: snapshot), session: context.signedIn))
    }

    package func apiFleet(_ request: Request) async throws -> Response {
        let q = try fleetQuery(request, defaultPageSize: 100)
        let snapshot = try await store.fleetSnapshot()
        let (page, total) = q.apply(snapshot.devices)
        struct Body: Encodable { var devices: [FleetDevice]; var total: Int; var page: Int; var pageSize: Int; var counts: FleetCounts }
        return try json(Body(devices: page, total: total, page: q.page, pageSize: q.pageSize, counts: snapshot.counts))
    }

    // MARK: device

    package func deviceView(_ request: Request, device: DeviceID, session: WebSession, message: String? = nil) async throws -> Page.DeviceView {
        let range = try await timeRange(request, device: device)
        let page = try intParameter(request, "page", default: 0, range: 0...100_000)
        let pageSize = try intParameter(request, "pageSize", default: 25, range: 1...500)
        guard let summary = try await store.fleet(device: device).first else { throw HTTPError(.notFound, message: "no device \"\(device)\" has been seen") }
        let audit = try await store.audit(device: device).devices.first
        let (series, truncated) = try await store.series(device: device, fromMs: range.from, toMs: range.to)
        let marks = try await chartMarks(device: device, summary: summary, audit: audit, from: range.from, to: range.to)
        var names = Set(series.keys)
        if names.isEmpty { names.formUnion(try await store.sensors(device: device)) }
        let charts = names.sorted().map { name in
            let points = series[name] ?? []
            let chart = SensorChart(sensor: name, points: points, fromMs: range.from, toMs: range.to, bands: marks.bands, cuts: marks.cuts)
            return Page.ChartView(sensor: name, chart: chart.html(), latest: points.last, count: points.count)
        }
        let (readings, total) = try await store.readings(device: device, fromMs: range.from, toMs: range.to, page: page, pageSize: pageSize)
        return Page.DeviceView(device: summary, audit: audit, rangeKey: range.key, fromMs: range.from, toMs: range.to, charts: charts,
                               truncated: truncated, readings: readings, readingsTotal: total, page: page, pageSize: pageSize,
                               commands: try await store.commands(device: device, limit: 10), configKeys: deps.settings.configKeys,
                               rebootRefusal: try await store.rebootRefusal(device: device), canOperate: session.role >= .operator,
                               message: message)
    }

    /// What the charts mark: missing records (gaps, placed between the neighbouring stored
    /// readings), declared losses, "offline now"; and the sequence ranges the line must not
    /// be drawn across.
    package func chartMarks(device: DeviceID, summary: FleetDevice, audit: DeviceAudit?, from: Int64, to: Int64) async throws -> (bands: [ChartBand], cuts: [ChartCut]) {
        var holes: [(kind: ChartBand.Kind, epoch: UInt64, first: UInt64, last: UInt64, label: String)] = []
        for e in audit?.epochs ?? [] {
            guard let epoch = try? Epoch(hex: e.epoch) else { continue }
            for g in e.gaps { holes.append((.missing, epoch.rawValue, g.first, g.last, "records \(g.first)…\(g.last) missing")) }
            for g in e.rowsMissing { holes.append((.missing, epoch.rawValue, g.first, g.last, "records \(g.first)…\(g.last) acked but their rows are missing")) }
            if let u = e.unstoredAtEnd { holes.append((.missing, epoch.rawValue, u.first, u.last, "records \(u.first)…\(u.last) never arrived")) }
            for l in e.losses { holes.append((.lost, epoch.rawValue, l.first, l.last, "records \(l.first)…\(l.last) declared lost: \(l.reason)")) }
        }
        holes = Array(holes.suffix(200))
        var bands: [ChartBand] = []
        let times = try await store.gapTimes(device: device, gaps: holes.map { ($0.epoch, $0.first, $0.last) })
        for (h, t) in zip(holes, times) {
            bands.append(ChartBand(kind: h.kind, fromMs: t.from ?? from, toMs: t.to ?? to, label: h.label))
        }
        if summary.state == "offline", let seen = summary.lastSeenAt.flatMap(WebTime.parse) {
            bands.append(ChartBand(kind: .offline, fromMs: seen, toMs: to, label: "offline since last seen"))
        }
        return (bands, holes.map { ChartCut(epoch: $0.epoch, first: $0.first, last: $0.last) })
    }

    package func devicePage(_ request: Request, _ context: WebContext) async throws -> Response {
        let d = try device(context)
        let message = query(request, "sent").map { "Command sent (request \($0)). The answer appears under Recent commands." }
        return htmlResponse(Page.device(try await deviceView(request, device: d, session: context.signedIn, message: message), session: context.signedIn))
    }

    package func auditPage(_ request: Request, _ context: WebContext) async throws -> Response {
        htmlResponse(Page.audit(try await store.audit(), session: context.signedIn))
    }

    package func commandForm(_ request: Request, _ context: WebContext) async throws -> Response {
        let d = try await knownDevice(context)
        let input = CommandInput(form: context.form)
        if input.needsConfirmation {
            return htmlResponse(Page.confirmReboot(device: d.rawValue, session: context.signedIn))
        }
        let command = try input.command(requestID: CommandDispatcher.newRequestID(), configKeys: deps.settings.configKeys)
        let row = try await deps.commands.send(command, to: d, by: context.signedIn.user)
        let back = context.form["back"] == "audit" ? "/audit" : "/devices/\(d.rawValue)?sent=\(row.requestId)#control"
        return .redirect(to: back, type: .normal)
    }

    // MARK: dead letters

    package func deadLetters(_ request: Request) async throws -> ([StoredDeadLetter], DeadLetterQuery) {
        let q = try DeadLetterQuery(parameters: { query(request, $0) })
        return (try await store.deadLetters(q), q)
    }

    package func deadLettersPage(_ request: Request, _ context: WebContext) async throws -> Response {
        let (rows, q) = try await deadLetters(request)
        return htmlResponse(Page.deadLetters(rows, query: q, session: context.signedIn))
    }

    // MARK: API

    package func apiDevice(_ request: Request, _ context: WebContext) async throws -> Response {
        let d = try device(context)
        guard let summary = try await store.fleet(device: d).first else { throw HTTPError(.notFound, message: "no device \"\(d)\" has been seen") }
        struct Body: Encodable { var device: FleetDevice; var audit: DeviceAudit?; var sensors: [String] }
        return try json(Body(device: summary, audit: WebTime.isoTimes(try await store.audit(device: d)).devices.first, sensors: try await store.sensors(device: d)))
    }

    package func apiSeries(_ request: Request, _ context: WebContext) async throws -> Response {
        let d = try await knownDevice(context)
        let range = try await timeRange(request, device: d)
        let sensor = query(request, "sensor")
        let (series, truncated) = try await store.series(device: d, fromMs: range.from, toMs: range.to, sensor: sensor)
        struct Point: Encodable { var time: String; var value: Double; var epoch: String; var seq: UInt64 }
        struct Body: Encodable { var device: String; var from: String; var to: String; var truncated: Bool; var series: [String: [Point]] }
        return try json(Body(device: d.rawValue, from: WebTime.iso(milliseconds: range.from), to: WebTime.iso(milliseconds: range.to), truncated: truncated,
                             series: series.mapValues { $0.map { Point(time: WebTime.iso(milliseconds: $0.ms), value: $0.value, epoch: Epoch($0.epoch).hex, seq: $0.seq) } }))
    }

    package func apiReadings(_ request: Request, _ context: WebContext) async throws -> Response {
        let d = try await knownDevice(context)
        let range = try await timeRange(request, device: d)
        let page = try intParameter(request, "page", default: 0, range: 0...100_000)
        let pageSize = try intParameter(request, "pageSize", default: 50, range: 1...500)
        let (rows, total) = try await store.readings(device: d, fromMs: range.from, toMs: range.to, page: page, pageSize: pageSize)
        struct Body: Encodable { var device: String; var from: String; var to: String; var page: Int; var pageSize: Int; var total: Int; var readings: [ReadingRow] }
        return try json(Body(device: d.rawValue, from: WebTime.iso(milliseconds: range.from), to: WebTime.iso(milliseconds: range.to),
                             page: page, pageSize: pageSize, total: total, readings: rows))
    }

    package func apiCommand(_ request: Request, _ context: WebContext) async throws -> Response {
        let d = try await knownDevice(context)
        let input: CommandInput = try await decodeJSON(request, context)
        let command = try input.command(requestID: CommandDispatcher.newRequestID(), configKeys: deps.settings.configKeys)
        let row = try await deps.commands.send(command, to: d, by: context.signedIn.user)
        var r = try json(row, status: .accepted)
        r.headers[.location] = "/api/commands/\(row.requestId)"
        return r
    }

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

package func htmlResponse(_ page: HTML, status: HTTPResponse.Status = .ok) -> Response {
    Response(status: status, headers: [.contentType: "text/html; charset=utf-8", .cacheControl: "no-store"],
             body: .init(byteBuffer: ByteBuffer(string: page.text)))
}

package func json(_ value: some Encodable, status: HTTPResponse.Status = .ok) throws -> Response {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    let data = try encoder.encode(value)
    return Response(status: status, headers: [.contentType: "application/json; charset=utf-8", .cacheControl: "no-store"],
                    body: .init(byteBuffer: ByteBuffer(bytes: data)))
}

package func decodeJSON<T: Decodable>(_ request: Request, _ context: WebContext) async throws -> T {
    var request = request
    guard request.headers[.contentType]?.hasPrefix("application/json") == true else {
        throw HTTPError(.badRequest, message: "send a JSON body with Content-Type: application/json")
    }
    let body = try await request.collectBody(upTo: context.maxUploadSize)
    do {
        return try JSONDecoder().decode(T.self, from: Data(buffer: body))
    } catch let e as HTTPError {
        throw e
    } catch let DecodingError.keyNotFound(key, _) {
        throw HTTPError(.badRequest, message: "the JSON body lacks \"\(key.stringValue)\"")
    } catch let DecodingError.typeMismatch(_, c) {
        throw HTTPError(.badRequest, message: "wrong type at \(c.codingPath.map(\.stringValue).joined(separator: ".")): \(c.debugDescription)")
    } catch {
        throw HTTPError(.badRequest, message: "the body is not valid JSON for this call")
    }
}

/// Turns errors into clear answers: HTML for pages, JSON for /api; never a bare 500.
package struct ErrorPageMiddleware: RouterMiddleware {
    package typealias Context = WebContext
    package let logger: Logger

    package func handle(_ request: Request, context: WebContext, next: (Request, WebContext) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch {
            let status: HTTPResponse.Status
            let message: String
            if let e = error as? HTTPError {
                status = e.status
                message = e.body ?? e.status.reasonPhrase
            } else if let e = error as? any HTTPResponseError {
                status = e.status
                message = "\(e.status.reasonPhrase)"
            } else if let e = error as? UserChangeError {
                status = e.httpError.status
                message = e.description
            } else {
                // The details stay in the log: they may name internals a visitor has no business seeing.
                let reference = String(randomToken().prefix(12))
                logger.error("web: \(request.method) \(request.uri.path) failed (reference \(reference)): \(error)")
                status = .internalServerError
                message = "An unexpected error happened. It was logged with reference \(reference)."
            }
            if SessionMiddleware.isAPI(request.uri.path) {
                struct Body: Encodable { struct E: Encodable { var status: Int; var message: String }; var error: E }
                var r = try json(Body(error: .init(status: status.code, message: message)), status: status)
                if status == .unauthorized { r.headers[.wwwAuthenticate] = "Cookie realm=\"fieldlog\"" }
                return r
            }
            return htmlResponse(Page.error(status: status.code, message: message, session: context.session), status: status)
        }
    }
}

/// Headers that keep the pages from being framed, sniffed or made to run foreign scripts.
package struct SecurityHeadersMiddleware: RouterMiddleware {
    package typealias Context = WebContext
    package func handle(_ request: Request, context: WebContext, next: (Request, WebContext) async throws -> Response) async throws -> Response {
        var r = try await next(request, context)
        r.headers[.contentSecurityPolicy] = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
        r.headers[.xContentTypeOptions] = "nosniff"
        r.headers[HTTPField.Name("Referrer-Policy")!] = "same-origin"
        r.headers[HTTPField.Name("X-Frame-Options")!] = "DENY"
        return r
    }
}
