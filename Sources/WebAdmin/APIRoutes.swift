// The JSON API (docs/openapi.yaml; WebRouteTests checks the two agree): fleet, device, series,
// readings and commands. The route table is in Routes.swift.
import Audit
import BackendStore
import FieldlogCore
import Foundation
import Hummingbird

extension WebRoutes {
    package func apiFleet(_ request: Request) async throws -> Response {
        let q = try fleetQuery(request, defaultPageSize: 100)
        let snapshot = try await store.fleetSnapshot()
        let (page, total) = q.apply(snapshot.devices)
        struct Body: Encodable { var devices: [FleetDevice]; var total: Int; var page: Int; var pageSize: Int; var counts: FleetCounts }
        return try json(Body(devices: page, total: total, page: q.page, pageSize: q.pageSize, counts: snapshot.counts))
    }
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
}
