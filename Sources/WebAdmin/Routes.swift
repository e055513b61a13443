// The web admin's application: `buildRouter` (pages, JSON API, assets) and `buildApplication`.
//
// Theory of operation: one Hummingbird router with three middlewares, outermost first: the
// security headers middleware (so every answer carries them, errors included),
// `ErrorPageMiddleware` (turns every error into a clear answer: HTML for pages, JSON for /api;
// anything that is not an HTTPError is logged with a reference and becomes a 500 that gives
// only the reference), then `SessionMiddleware` (auth, roles + CSRF, see Auth.swift).
// Handlers parse and check their parameters first (a 400 that names the parameter), then read
// through `WebStore` and render a `Page` (HTML that escapes by default) or encode JSON. This
// file: the route table and the parameters; the handlers by concern: PageRoutes.swift (fleet,
// devices, dead letters, audit), APIRoutes.swift (the JSON API), SignInRoutes.swift,
// CSVExport.swift, Responses.swift (HTML and JSON answers) and Middlewares.swift; users, the
// account and the activity trail in AdminRoutes.swift; the live streams in Live.swift. Tests
// call `buildRouter` with a real database and `app.test(.router)`; `fieldlog-backend
// web`/`run` call `buildApplication`.
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
}
