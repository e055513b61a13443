// The local status server: a glance at one device (replaces the seed's Grafana container).
//
// Theory of operation: a plain SwiftNIO HTTP/1.1 server on one event-loop thread (a device
// has little memory to spare), bound to loopback by default. `GET /` is the HTML page
// (StatusPage.swift), `GET /status` the same data as JSON, `GET /metrics` the Prometheus text
// exposition; HEAD answers each with its headers alone. It was a Hummingbird application:
// the plain server took 2.96 MB off the device binary (docs/device.md, "Binary size").
//
// Each connection's pipeline is NIO's HTTP/1 server pipeline — the decoder with small header
// limits, the encoder, and pipelining assistance (one request at a time; requests a client
// pipelines are held back until the one before is answered) — and one `StatusHTTPHandler`.
// The handler decides what a request gets from its head alone (`StatusRoute`, no IO), makes
// the response's body in a task (the provider is async; the page is rendered off the event
// loop) and writes the response back on the channel's event loop. The server only reads
// snapshots from the other components; nothing here can block sampling or syncing.
//
// Bounds: the request line and headers (`headerBytesMax`, else 431), no request bodies (413),
// `connectionsMax` connections (more are closed at once), `idleTimeout` for a connection
// between requests. Responses always carry Content-Length; keep-alive follows the request
// (HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`). An
// error response (400, 413, 431) closes the connection gently: our side first, then after
// `lingerTime` at most, so the client reads the answer instead of a reset.
//
// `run()` binds, calls `onServerRunning` with the bound port, and serves until graceful
// shutdown or cancellation; then the listening socket closes, idle connections close at once,
// one with a response in flight after that response, and every connection within
// `shutdownGrace`. It returns once all of them are closed.
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import Synchronization
import Sync

/// What the status server shows; the device node provides it.
public protocol StatusProvider: Sendable {
    func statusJSON() async -> JSONValue
    func recentReadings() async -> [RecentReadings.Entry]
    var metrics: DeviceMetrics { get }
}

/// Where the status server listens and its limits.
struct StatusServerConfiguration: Sendable {
    /// The address to bind (STATUS_HTTP_HOST; loopback by default).
    var host: String
    /// The port (STATUS_HTTP_PORT; 0 here: the kernel picks one, `onServerRunning` gets it).
    var port: Int
    /// The request line and headers of one request, bytes; larger: 431 and close.
    var headerBytesMax = 8 * 1024
    /// Header fields of one request; more: 431 and close.
    var headerFieldsMax = 64
    /// Open connections; one more is closed as soon as it is accepted.
    var connectionsMax = 32
    /// A connection with no request for this long is closed.
    var idleTimeout: Duration = .seconds(30)
    /// After an error response, how long the client has to read it before the connection closes.
    var lingerTime: Duration = .seconds(1)
    /// At shutdown, how long a response in flight may take before its connection is closed.
    var shutdownGrace: Duration = .seconds(1)

    init(host: String, port: Int) {
        precondition((0...65535).contains(port), "port \(port)")
        self.host = host
        self.port = port
    }

    /// The request decoder's limits: the request line and headers count together
    /// (NIO counts the URI with the headers).
    var decoderLimits: NIOHTTPDecoderLimitConfiguration {
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderFieldSize = headerBytesMax
        limits.maxHeaderListSize = headerBytesMax
        limits.maxHeaderFieldCount = headerFieldsMax
        return limits
    }
}

/// The status server failed to start or stopped by itself.
struct StatusServerError: Error, CustomStringConvertible {
    let description: String
}

/// The local status server (a `Service`; see the theory of operation above).
struct StatusServer: Service {
    let provider: any StatusProvider
    let configuration: StatusServerConfiguration
    let logger: Logger
    /// Called once the port is bound, with the bound port.
    let onServerRunning: @Sendable (_ port: Int) async -> Void

    init(_ provider: any StatusProvider, configuration: StatusServerConfiguration, logger: Logger,
         onServerRunning: @escaping @Sendable (_ port: Int) async -> Void = { _ in }) {
        self.provider = provider
        self.configuration = configuration
        self.logger = logger
        self.onServerRunning = onServerRunning
    }

    /// One thread is plenty for a loopback status page and keeps memory down. It lives as long
    /// as the process: a restarted server (Supervision.swift) binds on the same thread.
    static let eventLoopGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    func run() async throws {
        let connections = StatusConnections(max: configuration.connectionsMax)
        let server = try await bind(connections)
        let port = server.localAddress?.port ?? configuration.port
        logger.info("status server listening", metadata: ["host": "\(configuration.host)", "port": "\(port)"])
        await onServerRunning(port)
        try? await withTaskCancellationOrGracefulShutdownHandler {
            try await server.closeFuture.get()
        } onCancelOrGracefulShutdown: {
            server.close(promise: nil)
        }
        // Closing an already closed channel fails harmlessly; this covers the unexpected end.
        try? await server.close()
        await connections.closeAll(grace: TimeAmount(configuration.shutdownGrace))
        logger.debug("status server closed", metadata: ["port": "\(port)"])
        if !Task.isCancelled && !Task.isShuttingDownGracefully {
            throw StatusServerError(description: "the status server's socket on \(configuration.host):\(port) closed unexpectedly")
        }
    }

    private func bind(_ connections: StatusConnections) async throws -> any Channel {
        let c = configuration
        let limits = c.decoderLimits
        let provider = provider, logger = logger
        let idle = TimeAmount(c.idleTimeout), linger = TimeAmount(c.lingerTime)
        let bootstrap = ServerBootstrap(group: Self.eventLoopGroup)
            .serverChannelOption(.backlog, value: 32)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            // A client that half-closes after its request still gets the answer.
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    guard connections.admit(channel) else {
                        logger.debug("status server: connection refused, too many open", metadata: ["max": "\(c.connectionsMax)"])
                        channel.close(promise: nil)
                        return
                    }
                    let pipeline = channel.pipeline.syncOperations
                    try pipeline.addHandler(IdleStateHandler(readTimeout: idle))
                    try pipeline.configureHTTPServerPipeline(withErrorHandling: false, withEncoderConfiguration: .init(),
                                                             withDecoderLimitConfiguration: limits)
                    try pipeline.addHandler(StatusHTTPHandler(provider: provider, lingerTime: linger, logger: logger))
                }
            }
        do {
            return try await bootstrap.bind(host: c.host, port: c.port).get()
        } catch {
            // The supervisor logs and shows this ("… in use" when another program holds the port).
            throw StatusServerError(description: "status server cannot listen on \(c.host):\(c.port): \(error)")
        }
    }
}

/// The server's open connections: bounded, and closed at shutdown.
final class StatusConnections: Sendable {
    private struct State {
        var open: [ObjectIdentifier: any Channel] = [:]
        var closing = false
    }

    private let state = Mutex(State())
    let max: Int

    init(max: Int) {
        precondition(max > 0)
        self.max = max
    }

    /// Whether `channel` may be served; it is tracked until it closes.
    func admit(_ channel: any Channel) -> Bool {
        let id = ObjectIdentifier(channel)
        let admitted = state.withLock { s -> Bool in
            guard !s.closing, s.open.count < max else { return false }
            s.open[id] = channel
            return true
        }
        if admitted {
            channel.closeFuture.whenComplete { _ in _ = self.state.withLock { $0.open.removeValue(forKey: id) } }
        }
        return admitted
    }

    /// Asks each connection to finish (idle ones close at once, one with a request in flight
    /// after its response), closes what is still open after `grace`, and waits for all.
    func closeAll(grace: TimeAmount) async {
        let open = state.withLock { s in
            s.closing = true
            return Array(s.open.values)
        }
        for channel in open {
            channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
            channel.eventLoop.scheduleTask(in: grace) { channel.close(promise: nil) }
        }
        for channel in open {
            try? await channel.closeFuture.get()
        }
    }
}

/// What a request gets, decided from its head alone.
enum StatusRoute: Equatable, Sendable {
    /// `/`: the HTML page.
    case page
    /// `/status`: the JSON.
    case status
    /// `/metrics`: the Prometheus text.
    case metrics
    /// 404: no such path.
    case notFound
    /// 405: a known path, a method other than GET and HEAD.
    case methodNotAllowed
    /// 413: the request has a body (none of the routes takes one); the connection closes.
    case bodyRefused

    init(method: HTTPMethod, uri: String, hasBody: Bool) {
        if hasBody {
            self = .bodyRefused
            return
        }
        // The query string (and a fragment, which a client should not send) plays no part.
        let path = uri.prefix { $0 != "?" && $0 != "#" }
        let route: StatusRoute
        switch path {
        case "/": route = .page
        case "/status": route = .status
        case "/metrics": route = .metrics
        default:
            self = .notFound
            return
        }
        self = method == .GET || method == .HEAD ? route : .methodNotAllowed
    }

    /// Whether the head says a body follows (Content-Length above 0, or any Transfer-Encoding).
    static func hasBody(_ head: HTTPRequestHead) -> Bool {
        if head.headers.contains(name: "transfer-encoding") { return true }
        // A value that is not a number (the decoder rejects most) counts as a body too.
        return head.headers["content-length"].contains { Int($0.filter { $0 != " " && $0 != "\t" }) != 0 }
    }

    /// Whether the connection may serve another request after this one.
    var keepsConnection: Bool { self != .bodyRefused }
}

/// A response before it is written: status, content type and the whole body.
struct StatusResponse: Sendable {
    var status: HTTPResponseStatus
    var contentType: String
    var body: ByteBuffer
    /// The `Allow` header (405 only).
    var allow: String?

    static let allowed = "GET, HEAD"

    static func text(_ status: HTTPResponseStatus, _ text: String, allow: String? = nil) -> StatusResponse {
        StatusResponse(status: status, contentType: "text/plain; charset=utf-8", body: ByteBuffer(string: text + "\n"), allow: allow)
    }

    /// The response to `route`, without the provider for the routes that do not need it.
    static func fixed(_ route: StatusRoute) -> StatusResponse? {
        switch route {
        case .page, .status, .metrics: nil
        case .notFound: text(.notFound, "not found: the status server serves /, /status and /metrics")
        case .methodNotAllowed: text(.methodNotAllowed, "method not allowed: use GET or HEAD", allow: allowed)
        case .bodyRefused: text(.payloadTooLarge, "request bodies are not accepted")
        }
    }

    /// The response to `route`; asks the provider for the routes that show its data.
    static func make(_ route: StatusRoute, provider: any StatusProvider) async -> StatusResponse {
        switch route {
        case .status:
            let json = await provider.statusJSON()
            return StatusResponse(status: .ok, contentType: "application/json", body: ByteBuffer(bytes: JSONWriter.encode(json) + [0x0A]))
        case .metrics:
            return StatusResponse(status: .ok, contentType: "text/plain; version=0.0.4; charset=utf-8",
                                  body: ByteBuffer(string: provider.metrics.render()))
        case .page:
            let html = StatusPage.render(status: await provider.statusJSON(), readings: await provider.recentReadings())
            return StatusResponse(status: .ok, contentType: "text/html; charset=utf-8", body: ByteBuffer(string: html))
        case .notFound, .methodNotAllowed, .bodyRefused:
            return fixed(route)!
        }
    }
}

/// One connection: answers its requests one at a time (HTTPServerPipelineHandler, before this
/// handler, holds back pipelined ones until the response before them is written).
final class StatusHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private enum State {
        /// Waiting for a request head.
        case idle
        /// A request's head has come, its end not yet.
        case awaitingEnd(HTTPRequestHead, StatusRoute)
        /// A response is being made or written; `close`: the connection closes after it.
        case responding(close: Bool)
        /// The connection is closing; what still arrives is dropped.
        case closing
    }

    private let provider: any StatusProvider
    private let lingerTime: TimeAmount
    private let logger: Logger
    private var state = State.idle
    /// The client has closed its side: no request follows the one in flight.
    private var inputClosed = false
    /// Cleared when the channel goes inactive: a response made after that is dropped.
    private var active = true

    init(provider: any StatusProvider, lingerTime: TimeAmount, logger: Logger) {
        self.provider = provider
        self.lingerTime = lingerTime
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch (unwrapInboundIn(data), state) {
        case (.head(let head), .idle):
            let route = StatusRoute(method: head.method, uri: head.uri, hasBody: StatusRoute.hasBody(head))
            if route == .bodyRefused {
                // Answered now, not after a body we do not read.
                respond(context: context, head: head, route: route)
            } else {
                state = .awaitingEnd(head, route)
            }
        case (.end, .awaitingEnd(let head, let route)):
            respond(context: context, head: head, route: route)
        case (.body, _), (.end, _), (.head, .closing):
            // The body of a refused request, or what comes after it: the connection is closing.
            break
        case (.head, _):
            // HTTPServerPipelineHandler passes a request on only once the one before is answered.
            assertionFailure("a request head while \(state)")
            close(context: context)
        }
    }

    private func respond(context: ChannelHandlerContext, head: HTTPRequestHead, route: StatusRoute) {
        let close = !head.isKeepAlive || !route.keepsConnection || inputClosed
        state = .responding(close: close)
        if let response = StatusResponse.fixed(route) {
            write(response, to: head, context: context)
            return
        }
        let provider = provider
        let promise = context.eventLoop.makePromise(of: StatusResponse.self)
        promise.completeWithTask { await StatusResponse.make(route, provider: provider) }
        promise.futureResult.assumeIsolated().whenSuccess { response in
            self.write(response, to: head, context: context)
        }
    }

    private func write(_ response: StatusResponse, to request: HTTPRequestHead, context: ChannelHandlerContext) {
        guard active, case .responding(let closeAfter) = state else { return }
        // The client may have half-closed while the body was made.
        let close = closeAfter || inputClosed
        var headers = HTTPHeaders()
        headers.add(name: "server", value: "fieldlog-device")
        headers.add(name: "content-type", value: response.contentType)
        headers.add(name: "content-length", value: String(response.body.readableBytes))
        if let allow = response.allow { headers.add(name: "allow", value: allow) }
        if close {
            headers.add(name: "connection", value: "close")
        } else if request.version.major == 1 && request.version.minor == 0 {
            headers.add(name: "connection", value: "keep-alive")
        }
        let version: HTTPVersion = request.version.major == 1 && request.version.minor == 0 ? .http1_0 : .http1_1
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: version, status: response.status, headers: headers))), promise: nil)
        if request.method != .HEAD {
            context.write(wrapOutboundOut(.body(.byteBuffer(response.body))), promise: nil)
        }
        // Before the end goes out: writing it lets HTTPServerPipelineHandler pass on a request
        // the client pipelined, into `channelRead`, before `writeAndFlush` returns.
        state = close ? .closing : .idle
        let written = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !close { return }
        if response.status.code >= 400 {
            lingeringClose(context: context, after: written)
        } else {
            written.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        }
    }

    /// Closes our side once `written` is out, the whole connection after `lingerTime` (or when
    /// the client closes): a client still sending (a body, more headers) reads the error
    /// response instead of a reset.
    private func lingeringClose(context: ChannelHandlerContext, after written: EventLoopFuture<Void>) {
        let lingerTime = lingerTime
        written.assumeIsolated().whenComplete { _ in
            context.close(mode: .output, promise: nil)
            context.eventLoop.assumeIsolated().scheduleTask(in: lingerTime) { context.close(promise: nil) }
        }
    }

    private func close(context: ChannelHandlerContext) {
        state = .closing
        context.close(promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        switch (error as? HTTPParserError, state) {
        case (let parserError?, .idle), (let parserError?, .awaitingEnd):
            // A request that cannot be parsed (or is too large) ends the connection; it is told why.
            let status: HTTPResponseStatus = parserError == .headerOverflow ? .requestHeaderFieldsTooLarge : .badRequest
            logger.debug("status server: bad request", metadata: ["error": "\(parserError)", "status": "\(status.code)"])
            let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/", headers: ["connection": "close"])
            state = .responding(close: true)
            write(.text(status, status == .badRequest ? "bad request" : "request header fields too large"), to: head, context: context)
        case (_, .closing):
            // What the decoder says about bytes after the error, or about a refused body: dropped.
            break
        case (_, .responding):
            // The response in flight is written, then the connection closes.
            state = .responding(close: true)
            if !(error is HTTPParserError) { close(context: context) }
        case (nil, _):
            logger.debug("status server: connection error", metadata: ["error": "\(error)"])
            close(context: context)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case let idle as IdleStateHandler.IdleStateEvent where idle == .read:
            // Only between requests: a response being made is not cut off.
            if case .idle = state { close(context: context) }
        case let channelEvent as ChannelEvent where channelEvent == .inputClosed:
            inputClosed = true
            switch state {
            case .idle, .awaitingEnd: close(context: context)
            case .responding, .closing: break  // closes after the response
            }
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        active = false
        state = .closing
        context.fireChannelInactive()
    }
}
