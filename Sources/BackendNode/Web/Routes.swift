// The web admin's application: `buildRouter` (pages, JSON API, assets) and `buildApplication`.
//
// Theory of operation: one Hummingbird router with three middlewares, outermost first:
// `ErrorPageMiddleware` turns every error into a clear answer (HTML for pages, JSON for /api;
// anything that is not an HTTPError is logged and becomes a 500 that says so), the security
// headers middleware, then `SessionMiddleware` (auth + CSRF, see Auth.swift). Handlers parse
// and check their parameters first (a 400 that names the parameter), then read through
// `WebStore` and render with `Page` or encode JSON. Tests call `buildRouter` with a real
// database and `app.test(.router)`; `fieldlog-backend web`/`run` call `buildApplication`.
import FieldlogCore
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
import Sync

/// What the routes need.
struct WebDependencies: Sendable {
    var store: WebStore
    var commands: CommandDispatcher
    var settings: WebSettings
    var logger: Logger
    var signInThrottle = SignInThrottle()
}

/// Builds the router with every page, API call and asset.
func buildRouter(_ deps: WebDependencies) -> Router<WebContext> {
    let router = Router(context: WebContext.self)
    router.add(middleware: ErrorPageMiddleware(logger: deps.logger))
    router.add(middleware: SecurityHeadersMiddleware())
    router.add(middleware: SessionMiddleware(store: deps.store))
    let web = WebRoutes(deps: deps)
    web.register(router)
    return router
}

/// The application served by `fieldlog-backend web` and `run`.
func buildApplication(_ deps: WebDependencies, services: [any Service] = []) -> some ApplicationProtocol {
    Application(router: buildRouter(deps),
                configuration: ApplicationConfiguration(address: .hostname(deps.settings.host, port: deps.settings.port),
                                                        serverName: "fieldlog-web"),
                services: services, logger: deps.logger)
}

struct WebRoutes: Sendable {
    let deps: WebDependencies
    var store: WebStore { deps.store }

    func register(_ router: Router<WebContext>) {
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
            return htmlResponse(Page.commandsTable(try await store.commands(device: d, limit: 10), device: d.rawValue))
        }
        router.get("/audit") { request, context in try await auditPage(request, context) }

        // JSON API (docs/openapi.yaml).
        router.get("/api/session") { _, context in try sessionInfo(context) }
        router.post("/api/session") { request, context in try await apiSignIn(request, context) }
        router.delete("/api/session") { request, context in try await apiSignOut(request, context) }
        router.get("/api/devices") { _, _ in try json(["devices": try await store.fleet()]) }
        router.get("/api/devices/:device") { request, context in try await apiDevice(request, context) }
        router.get("/api/devices/:device/series") { request, context in try await apiSeries(request, context) }
        router.get("/api/devices/:device/readings") { request, context in try await apiReadings(request, context) }
        router.get("/api/devices/:device/readings.csv") { request, context in try await csv(request, context) }
        router.get("/api/devices/:device/commands") { request, context in
            let d = try device(context)
            return try json(["commands": try await store.commands(device: d)])
        }
        router.post("/api/devices/:device/commands") { request, context in try await apiCommand(request, context) }
        router.get("/api/commands/:request") { _, context in
            let id = context.parameters.get("request") ?? ""
            guard let c = try await store.command(requestID: id) else { throw HTTPError(.notFound, message: "no command with request id \"\(id)\"") }
            return try json(c)
        }
        router.get("/api/audit") { _, _ in try json(try await store.audit()) }
    }

    // MARK: parameters

    func device(_ context: WebContext) throws -> DeviceID {
        let text = context.parameters.get("device") ?? ""
        do { return try DeviceID(text) } catch { throw HTTPError(.badRequest, message: "invalid device id: \(error.description)") }
    }

    func knownDevice(_ context: WebContext) async throws -> DeviceID {
        let d = try device(context)
        guard try await store.deviceExists(d) else { throw HTTPError(.notFound, message: "no device \"\(d)\" has been seen") }
        return d
    }

    func query(_ request: Request, _ name: String) -> String? {
        request.uri.queryParameters[Substring(name)].map { String($0).removingPercentEncoding ?? String($0) }.flatMap { $0.isEmpty ? nil : $0 }
    }

    /// The time range of a request: `range=fit|15m|1h|6h|24h|7d|30d` (ending now) or `from`/`to`
    /// (ISO 8601 with zone, or ms since 1970). Default `fit`: the device's readings of the last
    /// 24 h, so a device that just started fills the chart instead of a sliver at its edge.
    func timeRange(_ request: Request, device: DeviceID) async throws -> (key: String, from: Int64, to: Int64) {
        let now = WebTime.nowMilliseconds()
        let fromText = query(request, "from"), toText = query(request, "to")
        if fromText != nil || toText != nil {
            guard let f = fromText, let from = WebTime.parse(f) else {
                throw HTTPError(.badRequest, message: "from must be a time like 2026-11-29T08:00:00Z (or ms since 1970), got \(fromText.map { "\"\($0)\"" } ?? "nothing")")
            }
            let to: Int64
            if let t = toText {
                guard let v = WebTime.parse(t) else { throw HTTPError(.badRequest, message: "to must be a time like 2026-11-29T20:00:00Z (or ms since 1970), got \"\(t)\"") }
                to = v
            } else {
                to = now
            }
            guard to > from else { throw HTTPError(.badRequest, message: "to must be after from") }
            guard to - from <= 366 * 86_400_000 else { throw HTTPError(.badRequest, message: "a time range can span at most 366 days") }
            return ("custom", from, to)
        }
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

    func intParameter(_ request: Request, _ name: String, default value: Int, range: ClosedRange<Int>) throws -> Int {
        guard let t = query(request, name) else { return value }
        guard let v = Int(t), range.contains(v) else {
            throw HTTPError(.badRequest, message: "\(name) must be a whole number \(range.lowerBound)…\(range.upperBound), got \"\(t)\"")
        }
        return v
    }

    // MARK: sign-in

    func signInPage(_ request: Request, _ context: WebContext, message: String? = nil, status: HTTPResponse.Status = .ok) async throws -> Response {
        if context.session != nil, message == nil { return .redirect(to: "/", type: .found) }
        let token = randomToken()
        var r = htmlResponse(Page.signIn(token: token, next: safeNext(query(request, "next")), message: message), status: status)
        r.setCookie(deps.settings.signInCookie(token))
        return r
    }

    /// Only local paths, so a sign-in link cannot send the user elsewhere.
    func safeNext(_ next: String?) -> String {
        guard let next, next.hasPrefix("/"), !next.hasPrefix("//"), !next.contains("\\") else { return "/" }
        return next
    }

    func signIn(_ request: Request, _ context: WebContext) async throws -> Response {
        var request = request
        let form = parseForm(String(buffer: try await request.collectBody(upTo: context.maxUploadSize)))
        guard let cookie = request.cookies[WebSettings.signInCookie]?.value, let given = form["csrf"], constantTimeEqual(cookie, given) else {
            throw HTTPError(.forbidden, message: "The sign-in form is stale or was not sent from this site. Reload the sign-in page and try again.")
        }
        let user = form["user"] ?? "", password = form["password"] ?? ""
        guard let session = try await authenticate(user: user, password: password) else {
            deps.logger.notice("web: failed sign-in for \(user.debugDescription)")
            return try await signInPage(request, context, message: "Wrong user name or password.", status: .unauthorized)
        }
        var r = Response.redirect(to: safeNext(form["next"]), type: .found)
        r.setCookie(deps.settings.sessionCookie(session))
        r.setCookie(deps.settings.expiredCookie(WebSettings.signInCookie))
        return r
    }

    func authenticate(user: String, password: String) async throws -> WebSession? {
        guard Passwords.checkUserName(user) == nil, !password.isEmpty, password.utf8.count <= 72 else { return nil }
        if let wait = deps.signInThrottle.refusal(user: user, now: .now) {
            deps.logger.notice("web: sign-in for \(user.debugDescription) refused: too many failures")
            throw HTTPError(.tooManyRequests, message: "Too many failed sign-ins for this user name. Try again in \(wait.components.seconds + 1) s.")
        }
        let hash = try await store.passwordHash(user: user)
        let ok = await Passwords.verify(password, hash: hash ?? Passwords.dummyHash)
        guard ok, hash != nil else {
            deps.signInThrottle.failed(user: user, now: .now)
            return nil
        }
        deps.signInThrottle.succeeded(user: user)
        deps.logger.info("web: \(user) signed in")
        return try await store.createSession(user: user)
    }

    func signOut(_ request: Request, _ context: WebContext) async throws -> Response {
        try await store.deleteSession(token: context.signedIn.token)
        var r = Response.redirect(to: "/signin", type: .found)
        r.setCookie(deps.settings.expiredCookie(WebSettings.sessionCookie))
        return r
    }

    struct SessionInfo: Codable { var user: String; var csrfToken: String; var expiresAt: String }

    func sessionInfo(_ context: WebContext) throws -> Response {
        guard let s = context.session else { throw HTTPError(.unauthorized, message: "Not signed in: POST /api/session with user and password first.") }
        return try json(SessionInfo(user: s.user, csrfToken: s.csrfToken, expiresAt: WebTime.iso(milliseconds: s.expiresAtMs)))
    }

    struct Credentials: Decodable { var user: String; var password: String }

    func apiSignIn(_ request: Request, _ context: WebContext) async throws -> Response {
        let c: Credentials = try await decodeJSON(request, context)
        guard let session = try await authenticate(user: c.user, password: c.password) else {
            throw HTTPError(.unauthorized, message: "wrong user name or password")
        }
        var r = try json(SessionInfo(user: session.user, csrfToken: session.csrfToken, expiresAt: WebTime.iso(milliseconds: session.expiresAtMs)), status: .created)
        r.setCookie(deps.settings.sessionCookie(session))
        return r
    }

    func apiSignOut(_ request: Request, _ context: WebContext) async throws -> Response {
        guard let s = context.session else { throw HTTPError(.unauthorized, message: "Not signed in.") }
        guard let given = request.headers[HTTPField.Name("X-CSRF-Token")!], constantTimeEqual(given, s.csrfToken) else {
            throw HTTPError(.forbidden, message: "missing or wrong X-CSRF-Token header")
        }
        try await store.deleteSession(token: s.token)
        var r = Response(status: .noContent)
        r.setCookie(deps.settings.expiredCookie(WebSettings.sessionCookie))
        return r
    }

    // MARK: pages

    func fleetPage(_ request: Request, _ context: WebContext) async throws -> Response {
        let sort = query(request, "sort") ?? "device"
        guard Page.fleetColumns.contains(where: { $0.key == sort }) else {
            throw HTTPError(.badRequest, message: "sort must be one of \(Page.fleetColumns.map(\.key).joined(separator: ", ")), got \"\(sort)\"")
        }
        let dir = query(request, "dir") ?? "asc"
        guard dir == "asc" || dir == "desc" else { throw HTTPError(.badRequest, message: "dir must be asc or desc, got \"\(dir)\"") }
        return htmlResponse(Page.fleet(try await store.fleet(), sort: sort, descending: dir == "desc", session: context.signedIn))
    }

    func deviceView(_ request: Request, device: DeviceID, message: String? = nil) async throws -> Page.DeviceView {
        let range = try await timeRange(request, device: device)
        let page = try intParameter(request, "page", default: 0, range: 0...100_000)
        let pageSize = try intParameter(request, "pageSize", default: 25, range: 1...500)
        guard let summary = try await store.fleet(device: device).first else { throw HTTPError(.notFound, message: "no device \"\(device)\" has been seen") }
        let audit = try await store.audit(device: device).devices.first
        let (series, truncated) = try await store.series(device: device, fromMs: range.from, toMs: range.to)
        let bands = try await chartBands(device: device, summary: summary, audit: audit, from: range.from, to: range.to)
        var names = Set(series.keys)
        if names.isEmpty { names.formUnion(try await store.sensors(device: device)) }
        let charts = names.sorted().map { name in
            let points = series[name] ?? []
            let chart = SensorChart(sensor: name, points: points, fromMs: range.from, toMs: range.to, bands: bands)
            return (sensor: name, svg: chart.svg(), latest: points.last, count: points.count)
        }
        let (readings, total) = try await store.readings(device: device, fromMs: range.from, toMs: range.to, page: page, pageSize: pageSize)
        return Page.DeviceView(device: summary, audit: audit, rangeKey: range.key, fromMs: range.from, toMs: range.to, charts: charts,
                               truncated: truncated, readings: readings, readingsTotal: total, page: page, pageSize: pageSize,
                               commands: try await store.commands(device: device, limit: 10), configKeys: deps.settings.configKeys, message: message)
    }

    /// Missing records (gaps, placed between the neighbouring stored readings) and "offline now".
    func chartBands(device: DeviceID, summary: FleetDevice, audit: DeviceAudit?, from: Int64, to: Int64) async throws -> [ChartBand] {
        var bands: [ChartBand] = []
        var gaps: [(epoch: UInt64, first: UInt64, last: UInt64)] = []
        for e in audit?.epochs ?? [] {
            guard let epoch = try? Epoch(hex: e.epoch) else { continue }
            for g in e.gaps { gaps.append((epoch.rawValue, g.first, g.last)) }
        }
        if !gaps.isEmpty {
            let times = try await store.gapTimes(device: device, gaps: Array(gaps.prefix(200)))
            for (g, t) in zip(gaps, times) {
                bands.append(ChartBand(kind: .missing, fromMs: t.from ?? from, toMs: t.to ?? to, label: "records \(g.first)…\(g.last) missing"))
            }
        }
        if summary.state == "offline", let seen = summary.lastSeenAt.flatMap(WebTime.parse) {
            bands.append(ChartBand(kind: .offline, fromMs: seen, toMs: to, label: "offline since last seen"))
        }
        return bands
    }

    func devicePage(_ request: Request, _ context: WebContext) async throws -> Response {
        let d = try device(context)
        let message = query(request, "sent").map { "Command sent (request \($0)). The answer appears under Recent commands." }
        return htmlResponse(Page.device(try await deviceView(request, device: d, message: message), session: context.signedIn))
    }

    func auditPage(_ request: Request, _ context: WebContext) async throws -> Response {
        htmlResponse(Page.audit(try await store.audit(), session: context.signedIn))
    }

    func commandForm(_ request: Request, _ context: WebContext) async throws -> Response {
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

    // MARK: API

    func apiDevice(_ request: Request, _ context: WebContext) async throws -> Response {
        let d = try device(context)
        guard let summary = try await store.fleet(device: d).first else { throw HTTPError(.notFound, message: "no device \"\(d)\" has been seen") }
        struct Body: Encodable { var device: FleetDevice; var audit: DeviceAudit?; var sensors: [String] }
        return try json(Body(device: summary, audit: try await store.audit(device: d).devices.first, sensors: try await store.sensors(device: d)))
    }

    func apiSeries(_ request: Request, _ context: WebContext) async throws -> Response {
        let d = try await knownDevice(context)
        let range = try await timeRange(request, device: d)
        let sensor = query(request, "sensor")
        let (series, truncated) = try await store.series(device: d, fromMs: range.from, toMs: range.to, sensor: sensor)
        struct Point: Encodable { var time: String; var value: Double; var epoch: String; var seq: UInt64 }
        struct Body: Encodable { var device: String; var from: String; var to: String; var truncated: Bool; var series: [String: [Point]] }
        return try json(Body(device: d.rawValue, from: WebTime.iso(milliseconds: range.from), to: WebTime.iso(milliseconds: range.to), truncated: truncated,
                             series: series.mapValues { $0.map { Point(time: WebTime.iso(milliseconds: $0.ms), value: $0.value, epoch: Epoch($0.epoch).hex, seq: $0.seq) } }))
    }

    func apiReadings(_ request: Request, _ context: WebContext) async throws -> Response {
        let d = try await knownDevice(context)
        let range = try await timeRange(request, device: d)
        let page = try intParameter(request, "page", default: 0, range: 0...100_000)
        let pageSize = try intParameter(request, "pageSize", default: 50, range: 1...500)
        let (rows, total) = try await store.readings(device: d, fromMs: range.from, toMs: range.to, page: page, pageSize: pageSize)
        struct Body: Encodable { var device: String; var from: String; var to: String; var page: Int; var pageSize: Int; var total: Int; var readings: [ReadingRow] }
        return try json(Body(device: d.rawValue, from: WebTime.iso(milliseconds: range.from), to: WebTime.iso(milliseconds: range.to),
                             page: page, pageSize: pageSize, total: total, readings: rows))
    }

    func apiCommand(_ request: Request, _ context: WebContext) async throws -> Response {
        let d = try await knownDevice(context)
        let input: CommandInput = try await decodeJSON(request, context)
        let command = try input.command(requestID: CommandDispatcher.newRequestID(), configKeys: deps.settings.configKeys)
        let row = try await deps.commands.send(command, to: d, by: context.signedIn.user)
        var r = try json(row, status: .accepted)
        r.headers[.location] = "/api/commands/\(row.requestId)"
        return r
    }

    /// CSV of a range: one row per reading, one column per sensor (wide), streamed in chunks.
    func csv(_ request: Request, _ context: WebContext) async throws -> Response {
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
        return Response(status: .ok, headers: [.contentType: "text/csv; charset=utf-8", .contentDisposition: "attachment; filename=\"\(name)\""], body: body)
    }
}

/// CSV quoting (RFC 4180), and a leading quote for cells a spreadsheet would run as a formula.
func csvField(_ s: String) -> String {
    var v = s
    if let f = v.first, "=+-@".contains(f), Double(v) == nil { v = "'" + v }
    if v.contains(",") || v.contains("\"") || v.contains("\n") || v.contains("\r") {
        return "\"" + v.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }
    return v
}

func htmlResponse(_ text: String, status: HTTPResponse.Status = .ok) -> Response {
    Response(status: status, headers: [.contentType: "text/html; charset=utf-8", .cacheControl: "no-store"],
             body: .init(byteBuffer: ByteBuffer(string: text)))
}

func json(_ value: some Encodable, status: HTTPResponse.Status = .ok) throws -> Response {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    let data = try encoder.encode(value)
    return Response(status: status, headers: [.contentType: "application/json; charset=utf-8", .cacheControl: "no-store"],
                    body: .init(byteBuffer: ByteBuffer(bytes: data)))
}

func decodeJSON<T: Decodable>(_ request: Request, _ context: WebContext) async throws -> T {
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
struct ErrorPageMiddleware: RouterMiddleware {
    typealias Context = WebContext
    let logger: Logger

    func handle(_ request: Request, context: WebContext, next: (Request, WebContext) async throws -> Response) async throws -> Response {
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
            } else {
                logger.error("web: \(request.method) \(request.uri.path) failed: \(error)")
                status = .internalServerError
                message = "An unexpected error happened and was logged: \(error)"
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
struct SecurityHeadersMiddleware: RouterMiddleware {
    typealias Context = WebContext
    func handle(_ request: Request, context: WebContext, next: (Request, WebContext) async throws -> Response) async throws -> Response {
        var r = try await next(request, context)
        r.headers[.contentSecurityPolicy] = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
        r.headers[.xContentTypeOptions] = "nosniff"
        r.headers[HTTPField.Name("Referrer-Policy")!] = "same-origin"
        r.headers[HTTPField.Name("X-Frame-Options")!] = "DENY"
        return r
    }
}
