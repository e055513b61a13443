// The HTML pages: the fleet, a device (charts, readings, commands), the audit and the dead
// letters, and the command form.
import Audit
import BackendStore
import FieldlogCore
import Foundation
import Hummingbird

extension WebRoutes {
    package func fleetQuery(_ request: Request, defaultPageSize: Int = 50) throws -> FleetQuery {
        try FleetQuery(parameters: { query(request, $0) }, defaultPageSize: defaultPageSize)
    }

    package func fleetPage(_ request: Request, _ context: WebContext) async throws -> Response {
        let q = try fleetQuery(request)
        let snapshot = try await store.fleetSnapshot()
        return htmlResponse(Page.fleet(Page.FleetView(query: q, snapshot: snapshot), session: context.signedIn))
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
}
