// The local status server: a glance at one device (replaces the seed's Grafana container).
//
// Theory of operation: a Hummingbird application on one event-loop thread (a device has
// little memory to spare), bound to loopback by default. `GET /` is a small HTML page that
// draws the latest readings as inline SVG rendered on the server (no script, no CDN; it
// reloads itself every few seconds) and shows the sync state; `GET /status` is the same data
// as JSON; `GET /metrics` is the Prometheus text exposition. The server only reads
// snapshots from the other components; nothing here can block sampling or syncing.
import FieldlogCore
import Hummingbird
import Logging
import NIOPosix
import Sync

/// What the status server shows; the device node provides it.
public protocol StatusProvider: Sendable {
    func statusJSON() async -> JSONValue
    func recentReadings() async -> [RecentReadings.Entry]
    var metrics: DeviceMetrics { get }
}

enum StatusServer {
    /// The router, also used by in-process tests.
    public static func buildRouter(_ provider: any StatusProvider) -> Router<BasicRequestContext> {
        let router = Router()
        router.get("/status") { _, _ -> Response in
            let json = await provider.statusJSON()
            return Response(status: .ok, headers: [.contentType: "application/json"],
                            body: .init(byteBuffer: ByteBuffer(bytes: JSONWriter.encode(json) + [0x0A])))
        }
        router.get("/metrics") { _, _ -> Response in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                     body: .init(byteBuffer: ByteBuffer(string: provider.metrics.render())))
        }
        router.get("/") { _, _ -> Response in
            let html = StatusPage.render(status: await provider.statusJSON(), readings: await provider.recentReadings())
            return Response(status: .ok, headers: [.contentType: "text/html; charset=utf-8"],
                            body: .init(byteBuffer: ByteBuffer(string: html)))
        }
        return router
    }

    /// The application (a `Service`), on an event-loop group of one thread. `onServerRunning`
    /// is called once the port is bound.
    public static func buildApplication(_ provider: any StatusProvider, host: String, port: Int, logger: Logger,
                                        onServerRunning: @escaping @Sendable () async -> Void = {}) -> some ApplicationProtocol {
        Application(
            router: buildRouter(provider),
            configuration: .init(address: .hostname(host, port: port), serverName: "fieldlog-device"),
            onServerRunning: { _ in await onServerRunning() },
            eventLoopGroupProvider: .shared(eventLoopGroup),
            logger: logger)
    }

    /// One thread is plenty for a loopback status page and keeps memory down.
    static let eventLoopGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
}
