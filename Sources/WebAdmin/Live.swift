// Live pages: server-sent events that carry the parts of a page that changed.
//
// Theory of operation: a live page names its stream in `<body data-live="…">` and the script
// opens it with `EventSource` (which reconnects by itself). The stream renders the page's
// live parts (device page: the summary with status and backlog, and the recent commands with
// the devices' answers; fleet page: tiles, rows and pager of the page's own search, filter,
// sort and page) every `WebSettings.liveInterval`, and sends a part — `event: part`, data
// `{"id": element id, "html": its new inner HTML}` — only when it differs from what it sent
// last, so a quiet page costs a few small queries a second and no traffic. The parts are the
// same `Page` functions that render the full page, so a reload and a live update agree.
// Every tick checks that the session is still valid: signing out, a password change, a
// disabled or removed user ends the stream (`event: signedout`, the page then reloads into the
// sign-in page). Streams are bounded: at most `liveMaxStreams` at once (more get 503), each
// lives at most `liveMaxDuration` (then the browser reconnects), and all end at shutdown.
// A comment line every 15 s keeps proxies from closing a quiet stream.
import Audit
import BackendStore
import FieldlogCore
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import ServiceLifecycle
import Synchronization

/// One replaced part of a live page.
package struct LivePart: Encodable, Sendable, Hashable {
    package var id: String
    package var html: String
}

/// Counts the open live streams against their limit.
package final class LiveStreams: Sendable {
    package let limit: Int
    private let open = Mutex(0)

    package init(limit: Int) {
        precondition(limit >= 1)
        self.limit = limit
    }

    package var count: Int { open.withLock { $0 } }

    /// Takes a place; false when all are taken.
    package func enter() -> Bool {
        open.withLock { n in
            guard n < limit else { return false }
            n += 1
            return true
        }
    }

    package func leave() { open.withLock { $0 -= 1 } }
}

extension WebRoutes {
    package func registerLive(_ router: Router<WebContext>) {
        router.get("/devices/:device/live") { _, context in
            let d = try await knownDevice(context)
            let store = self.store
            return try liveStream(context) {
                guard let summary = try await store.fleet(device: d).first else { return [] }
                let commands = try await store.commands(device: d, limit: 10)
                return [LivePart(id: "summary", html: Page.summary(summary).text),
                        LivePart(id: "commands", html: Page.commandsInner(commands).text)]
            }
        }
        router.get("/live/fleet") { request, context in
            let q = try fleetQuery(request)
            let store = self.store
            return try liveStream(context) {
                let v = Page.FleetView(query: q, snapshot: try await store.fleetSnapshot())
                return [LivePart(id: "fleet-tiles", html: Page.fleetTiles(v).text), LivePart(id: "fleet-rows", html: Page.fleetRows(v).text),
                        LivePart(id: "fleet-pager", html: Page.fleetPager(v).text),
                        LivePart(id: "fleet-updated", html: Page.time(WebTime.iso(milliseconds: v.loadedAtMs)).text)]
            }
        }
    }

    /// A text/event-stream response that sends the parts that changed; see the theory of operation.
    package func liveStream(_ context: WebContext, parts: @escaping @Sendable () async throws -> [LivePart]) throws -> Response {
        let live = deps.live
        guard live.enter() else {
            throw HTTPError(.serviceUnavailable, message: "Too many live pages are open (\(live.limit)); this page still works, reload it to update.")
        }
        let token = context.signedIn.token
        let (store, settings, logger) = (self.store, deps.settings, deps.logger)
        let body = ResponseBody { writer in
            do {
                let encoder = JSONEncoder()
                var sent: [String: String] = [:]
                let start = ContinuousClock.now
                var lastWrite = start
                try await writer.write(ByteBuffer(string: "retry: 3000\n\n"))
                while ContinuousClock.now - start < settings.liveMaxDuration, !Task.isCancelled, !Task.isShuttingDownGracefully {
                    var out = ""
                    do {
                        guard try await store.session(token: token) != nil else {
                            try await writer.write(ByteBuffer(string: "event: signedout\ndata: {}\n\n"))
                            break
                        }
                        for p in try await parts() where sent[p.id] != p.html {
                            sent[p.id] = p.html
                            out += "event: part\ndata: " + String(decoding: try encoder.encode(p), as: UTF8.self) + "\n\n"
                        }
                    } catch let e as HTTPError {
                        // The database is away for a moment: keep the stream, try again next tick.
                        logger.debug("web: live update skipped: \(e.body ?? "\(e.status)")")
                    }
                    if out.isEmpty, ContinuousClock.now - lastWrite >= .seconds(15) { out = ": keep-alive\n\n" }
                    if !out.isEmpty {
                        try await writer.write(ByteBuffer(string: out))
                        lastWrite = .now
                    }
                    try await Task.sleep(for: settings.liveInterval)
                }
                try await writer.finish(nil)
            } catch {
                live.leave()
                throw error
            }
            live.leave()
        }
        return Response(status: .ok, headers: [.contentType: "text/event-stream; charset=utf-8", .cacheControl: "no-store",
                                               HTTPField.Name("X-Accel-Buffering")!: "no"], body: body)
    }
}
