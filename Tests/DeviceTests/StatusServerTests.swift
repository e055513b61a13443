// The device's status server over a real loopback socket: routes, HEAD, errors, limits,
// keep-alive and shutdown. The client below writes requests byte for byte and reads the
// responses as they come off the socket, so what is checked is what a client sees.
@testable import Device
import Foundation
import Logging
import Processes
import ServiceLifecycle
import Sync
import XCTest

final class StatusServerTests: XCTestCase {
    /// A provider with fixed data.
    struct FixedStatus: StatusProvider {
        let metrics = DeviceMetrics()
        func statusJSON() async -> JSONValue { .object([("device", .string("dev-7")), ("head", .integer(42))]) }
        func recentReadings() async -> [RecentReadings.Entry] { [] }
    }

    /// A provider whose /status takes 300 ms (a response in flight at shutdown).
    struct SlowStatus: StatusProvider {
        let metrics = DeviceMetrics()
        func statusJSON() async -> JSONValue {
            try? await Task.sleep(for: .milliseconds(300))
            return .object([("slow", .bool(true))])
        }
        func recentReadings() async -> [RecentReadings.Entry] { [] }
    }

    let logger = Logger(label: "status-server-test")

    /// Runs a status server on an ephemeral loopback port for `body`, then cancels it and
    /// checks that it ended without an error.
    func withServer(configure: (inout StatusServerConfiguration) -> Void = { _ in },
                    _ body: (_ port: Int) async throws -> Void) async throws {
        var configuration = StatusServerConfiguration(host: "127.0.0.1", port: 0)
        configure(&configuration)
        let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
        let server = StatusServer(FixedStatus(), configuration: configuration, logger: logger,
                                  onServerRunning: { continuation.yield($0) })
        let task = Task {
            defer { continuation.finish() }
            try await server.run()
        }
        guard let port = await ports.first(where: { _ in true }) else {
            try await task.value
            return XCTFail("the server ended before it listened")
        }
        do {
            try await body(port)
        } catch {
            task.cancel()
            _ = try? await task.value
            throw error
        }
        task.cancel()
        try await task.value
    }

    func testTheThreeRoutesAnswerWithTheirContentTypesAndLengths() async throws {
        try await withServer { port in
            let c = try await TestHTTPClient.connect(port: port)
            defer { c.close() }

            let status = try await c.exchange("GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            XCTAssertEqual(status.code, 200)
            XCTAssertEqual(status["content-type"], "application/json")
            XCTAssertEqual(status.text, #"{"device":"dev-7","head":42}"# + "\n")

            let metrics = try await c.exchange("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            XCTAssertEqual(metrics.code, 200)
            XCTAssertEqual(metrics["content-type"], "text/plain; version=0.0.4; charset=utf-8")
            XCTAssertTrue(metrics.text.contains("fieldlog_device_appends_total"), metrics.text)

            let page = try await c.exchange("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            XCTAssertEqual(page.code, 200)
            XCTAssertEqual(page["content-type"], "text/html; charset=utf-8")
            XCTAssertTrue(page.text.contains("<h1>fieldlog-device</h1>") && page.text.contains("dev-7"), page.text)

            // The query string plays no part in routing.
            let query = try await c.exchange("GET /status?refresh=1&x=%2F HTTP/1.1\r\nHost: x\r\n\r\n")
            XCTAssertEqual(query.code, 200)
            XCTAssertEqual(query.text, status.text)

            for response in [status, metrics, page, query] {
                XCTAssertEqual(response["content-length"], String(response.body.count), "Content-Length always set and right")
                XCTAssertNil(response["transfer-encoding"])
            }
        }
    }

    func testHeadAnswersWithTheHeadersOfGetAndNoBody() async throws {
        try await withServer { port in
            let c = try await TestHTTPClient.connect(port: port)
            defer { c.close() }
            for path in ["/", "/status", "/metrics"] {
                let get = try await c.exchange("GET \(path) HTTP/1.1\r\nHost: x\r\n\r\n")
                let head = try await c.exchange("HEAD \(path) HTTP/1.1\r\nHost: x\r\n\r\n", bodyExpected: false)
                XCTAssertEqual(head.code, 200, path)
                XCTAssertEqual(head["content-type"], get["content-type"], path)
                // /metrics could change between the two (the histograms); the others are fixed.
                if path != "/metrics" { XCTAssertEqual(head["content-length"], get["content-length"], path) }
                XCTAssertNotNil(head["content-length"], path)
            }
            // Had HEAD sent a body, its bytes would come first here instead of this status line.
            let after = try await c.exchange("GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            XCTAssertEqual(after.code, 200)
            XCTAssertEqual(after["content-type"], "application/json")
        }
    }

    func testAnUnknownPathIs404AndAnotherMethod405WithAllowAndTheConnectionStaysOpen() async throws {
        try await withServer { port in
            let c = try await TestHTTPClient.connect(port: port)
            defer { c.close() }
            let missing = try await c.exchange("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
            XCTAssertEqual(missing.code, 404)
            XCTAssertEqual(missing["content-type"], "text/plain; charset=utf-8")
            XCTAssertFalse(missing.body.isEmpty)
            XCTAssertEqual(missing["content-length"], String(missing.body.count))

            for method in ["DELETE", "PUT", "OPTIONS", "POST"] {
                let refused = try await c.exchange("\(method) /status HTTP/1.1\r\nHost: x\r\n\r\n")
                XCTAssertEqual(refused.code, 405, method)
                XCTAssertEqual(refused["allow"], "GET, HEAD", method)
                XCTAssertEqual(refused["content-length"], String(refused.body.count), method)
            }
            // A 404 to HEAD has no body either.
            let headMissing = try await c.exchange("HEAD /nope HTTP/1.1\r\nHost: x\r\n\r\n", bodyExpected: false)
            XCTAssertEqual(headMissing.code, 404)

            let ok = try await c.exchange("GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            XCTAssertEqual(ok.code, 200, "errors that need no close keep the connection")
        }
    }

    func testOversizedHeadersAndRequestBodiesAreRefusedAndTheConnectionClosed() async throws {
        try await withServer(configure: { $0.headerBytesMax = 4096 }) { port in
            // A URI past the limit: 431, then the connection closes.
            let long = try await TestHTTPClient.connect(port: port)
            defer { long.close() }
            let uri = "/status?" + String(repeating: "a", count: 16 * 1024)
            let tooLong = try await long.exchange("GET \(uri) HTTP/1.1\r\nHost: x\r\n\r\n")
            XCTAssertEqual(tooLong.code, 431)
            XCTAssertEqual(tooLong["connection"], "close")
            let afterLong = try await long.readToEnd()
            XCTAssertTrue(afterLong.isEmpty, "nothing after the 431: \(afterLong.count) bytes")

            // Headers past the limit: the same.
            let big = try await TestHTTPClient.connect(port: port)
            defer { big.close() }
            let headers = (0..<100).map { "X-Filler-\($0): \(String(repeating: "b", count: 80))\r\n" }.joined()
            let tooBig = try await big.exchange("GET /status HTTP/1.1\r\nHost: x\r\n\(headers)\r\n")
            XCTAssertEqual(tooBig.code, 431)
            let bigRest = try await big.readToEnd()
            XCTAssertTrue(bigRest.isEmpty)

            // A body (announced by Content-Length, or chunked): 413 at once, unread, then close.
            let body = try await TestHTTPClient.connect(port: port)
            defer { body.close() }
            let refused = try await body.exchange("POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
                                                  + String(repeating: "c", count: 1000))
            XCTAssertEqual(refused.code, 413)
            XCTAssertEqual(refused["connection"], "close")
            let bodyRest = try await body.readToEnd()
            XCTAssertTrue(bodyRest.isEmpty)

            let chunked = try await TestHTTPClient.connect(port: port)
            defer { chunked.close() }
            let refusedChunked = try await chunked.exchange("GET /status HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            XCTAssertEqual(refusedChunked.code, 413)
            let chunkedRest = try await chunked.readToEnd()
            XCTAssertTrue(chunkedRest.isEmpty)

            // The server is none the worse.
            let fresh = try await TestHTTPClient.connect(port: port)
            defer { fresh.close() }
            let freshResponse = try await fresh.exchange("GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            XCTAssertEqual(freshResponse.code, 200)
        }
    }

    func testKeepAliveServesSeveralRequestsOnOneConnectionAndConnectionCloseEndsIt() async throws {
        try await withServer { port in
            let c = try await TestHTTPClient.connect(port: port)
            defer { c.close() }
            let first = try await c.exchange("GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            let second = try await c.exchange("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            XCTAssertEqual([first.code, second.code], [200, 200])
            XCTAssertNil(first["connection"])

            // Pipelined: both requests in one write, the answers in order.
            try await c.send("GET /status HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
            let p1 = try await c.readResponse(), p2 = try await c.readResponse()
            XCTAssertEqual([p1.code, p2.code], [200, 404])

            // Connection: close is honoured: the answer says so, then the server closes.
            let last = try await c.exchange("GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            XCTAssertEqual(last.code, 200)
            XCTAssertEqual(last["connection"], "close")
            let closedRest = try await c.readToEnd()
            XCTAssertTrue(closedRest.isEmpty)

            // HTTP/1.0 closes unless it asks for keep-alive.
            let old = try await TestHTTPClient.connect(port: port)
            defer { old.close() }
            let oldResponse = try await old.exchange("GET /status HTTP/1.0\r\n\r\n")
            XCTAssertEqual(oldResponse.code, 200)
            let oldRest = try await old.readToEnd()
            XCTAssertTrue(oldRest.isEmpty)
            let oldKeep = try await TestHTTPClient.connect(port: port)
            defer { oldKeep.close() }
            let k1 = try await oldKeep.exchange("GET /status HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            XCTAssertEqual(k1["connection"], "keep-alive")
            let k2 = try await oldKeep.exchange("GET /status HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            XCTAssertEqual(k2.code, 200)

            // A client that half-closes after its request still gets the answer.
            let half = try await TestHTTPClient.connect(port: port)
            defer { half.close() }
            try await half.send("GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            half.shutdownWrite()
            let halfResponse = try await half.readResponse()
            XCTAssertEqual(halfResponse.code, 200)
            let halfRest = try await half.readToEnd()
            XCTAssertTrue(halfRest.isEmpty)
        }
    }

    func testGracefulShutdownClosesThePortAndOpenConnections() async throws {
        let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
        let server = StatusServer(FixedStatus(), configuration: StatusServerConfiguration(host: "127.0.0.1", port: 0), logger: logger,
                                  onServerRunning: { continuation.yield($0) })
        let group = ServiceGroup(services: [server], logger: logger)
        let task = Task { try await group.run() }
        guard let port = await ports.first(where: { _ in true }) else { return XCTFail("no port") }
        let idle = try await TestHTTPClient.connect(port: port)
        defer { idle.close() }
        let before = try await idle.exchange("GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        XCTAssertEqual(before.code, 200)
        XCTAssertTrue(Loopback.isListening(port))

        await group.triggerGracefulShutdown()
        try await task.value
        XCTAssertFalse(Loopback.isListening(port), "the port is closed once run() returns")
        let idleRest = try await idle.readToEnd()
        XCTAssertTrue(idleRest.isEmpty, "an idle keep-alive connection is closed too")
    }

    func testAResponseInFlightAtShutdownIsWrittenThenItsConnectionClosed() async throws {
        let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
        let server = StatusServer(SlowStatus(), configuration: StatusServerConfiguration(host: "127.0.0.1", port: 0), logger: logger,
                                  onServerRunning: { continuation.yield($0) })
        let group = ServiceGroup(services: [server], logger: logger)
        let task = Task { try await group.run() }
        guard let port = await ports.first(where: { _ in true }) else { return XCTFail("no port") }
        let c = try await TestHTTPClient.connect(port: port)
        defer { c.close() }
        try await c.send("GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        try await Task.sleep(for: .milliseconds(50))  // the request reaches the server
        await group.triggerGracefulShutdown()
        let response = try await c.readResponse()
        XCTAssertEqual(response.code, 200)
        XCTAssertEqual(response["connection"], "close", "the last response says the connection closes")
        let rest = try await c.readToEnd()
        XCTAssertTrue(rest.isEmpty)
        try await task.value
        XCTAssertFalse(Loopback.isListening(port))
    }

    func testConnectionsOverTheLimitAreClosedAtOnce() async throws {
        try await withServer(configure: { $0.connectionsMax = 2 }) { port in
            let a = try await TestHTTPClient.connect(port: port), b = try await TestHTTPClient.connect(port: port)
            defer { a.close(); b.close() }
            let first = try await a.exchange("GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            let second = try await b.exchange("GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            XCTAssertEqual([first.code, second.code], [200, 200])
            let third = try await TestHTTPClient.connect(port: port)
            defer { third.close() }
            let refused = try await third.readToEnd()
            XCTAssertTrue(refused.isEmpty, "the third connection is closed without an answer")
            // Once one closes, a new one is served.
            a.close()
            var served = false
            for _ in 0..<50 where !served {
                let next = try await TestHTTPClient.connect(port: port)
                defer { next.close() }
                served = (try? await next.exchange("GET /status HTTP/1.1\r\nHost: x\r\n\r\n").code) == 200
                if !served { try await Task.sleep(for: .milliseconds(20)) }
            }
            XCTAssertTrue(served, "a slot is free again once a connection closes")
        }
    }

    func testCancellationEndsTheServerAndABindFailureNamesHostAndPort() async throws {
        try await withServer { port in
            // The same port again: a clear error, as the supervisor logs and shows it.
            let second = StatusServer(FixedStatus(), configuration: StatusServerConfiguration(host: "127.0.0.1", port: port), logger: logger)
            do {
                try await second.run()
                XCTFail("a second server on port \(port) started")
            } catch {
                let text = "\(error)"
                XCTAssertTrue(text.contains("127.0.0.1:\(port)") && text.contains("in use"), text)
            }
            XCTAssertTrue(Loopback.isListening(port))
        }
    }

    func testRoutesAreDecidedFromTheHeadAlone() {
        XCTAssertEqual(StatusRoute(method: .GET, uri: "/", hasBody: false), .page)
        XCTAssertEqual(StatusRoute(method: .HEAD, uri: "/metrics?x", hasBody: false), .metrics)
        XCTAssertEqual(StatusRoute(method: .GET, uri: "/status#top", hasBody: false), .status)
        XCTAssertEqual(StatusRoute(method: .GET, uri: "/status/", hasBody: false), .notFound)
        XCTAssertEqual(StatusRoute(method: .GET, uri: "http://host/status", hasBody: false), .notFound)
        XCTAssertEqual(StatusRoute(method: .POST, uri: "/status", hasBody: false), .methodNotAllowed)
        XCTAssertEqual(StatusRoute(method: .DELETE, uri: "/nope", hasBody: false), .notFound)
        XCTAssertEqual(StatusRoute(method: .GET, uri: "/status", hasBody: true), .bodyRefused)
    }
}

/// A blocking HTTP/1.1 client over one loopback TCP connection; every call runs off the
/// cooperative pool (`runBlocking`) and gives up after 5 s.
struct TestHTTPClient: Sendable {
    struct Response {
        var code: Int
        /// Lowercased names.
        var headers: [(String, String)]
        var body: [UInt8]
        var text: String { String(decoding: body, as: UTF8.self) }
        subscript(_ name: String) -> String? { headers.first { $0.0 == name }?.1 }
    }

    let fd: Int32

    static func connect(port: Int) async throws -> TestHTTPClient {
        try await runBlocking("http-client") {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw SetupFailure("socket(): errno \(errno)") }
            var timeout = timeval(tv_sec: 5, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard connected == 0 else {
                let e = errno
                Glibc.close(fd)
                throw SetupFailure("connect to 127.0.0.1:\(port): errno \(e)")
            }
            return TestHTTPClient(fd: fd)
        }
    }

    func send(_ text: String) async throws {
        let fd = fd
        try await runBlocking("http-client") {
            var bytes = Array(text.utf8)[...]
            while !bytes.isEmpty {
                let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                // The server may close while a refused request is still being sent: what was sent is enough.
                if n < 0 { if errno == EPIPE || errno == ECONNRESET { return }; throw SetupFailure("send: errno \(errno)") }
                bytes = bytes.dropFirst(n)
            }
        }
    }

    /// Sends `request` and reads one response (`bodyExpected: false` for HEAD: headers only).
    func exchange(_ request: String, bodyExpected: Bool = true) async throws -> Response {
        try await send(request)
        return try await readResponse(bodyExpected: bodyExpected)
    }

    /// Reads one response: the head byte by byte (so nothing of the next is consumed), then
    /// exactly Content-Length bytes.
    func readResponse(bodyExpected: Bool = true) async throws -> Response {
        let fd = fd
        return try await runBlocking("http-client") {
            var head: [UInt8] = []
            while !head.ends(with: [13, 10, 13, 10]) {
                guard head.count < 64 * 1024 else { throw SetupFailure("response head over 64 KiB") }
                var byte: UInt8 = 0
                let n = recv(fd, &byte, 1, 0)
                guard n == 1 else { throw SetupFailure("connection ended in a response head (\(n), errno \(errno)): \(String(decoding: head, as: UTF8.self))") }
                head.append(byte)
            }
            let lines = String(decoding: head, as: UTF8.self).split(separator: "\r\n")
            let statusLine = lines.first.map(String.init) ?? ""
            let parts = statusLine.split(separator: " ")
            guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let code = Int(parts[1]) else {
                throw SetupFailure("not a status line: \(statusLine)")
            }
            let headers = lines.dropFirst().map { line -> (String, String) in
                let colon = line.firstIndex(of: ":") ?? line.endIndex
                return (line[..<colon].lowercased(), line[colon...].dropFirst().trimmingCharacters(in: .whitespaces))
            }
            var response = Response(code: code, headers: headers, body: [])
            guard bodyExpected else { return response }
            guard let length = response["content-length"].flatMap({ Int($0) }) else { throw SetupFailure("no Content-Length: \(headers)") }
            response.body = [UInt8](repeating: 0, count: length)
            var got = 0
            while got < length {
                let n = response.body.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, length - got, 0) }
                guard n > 0 else { throw SetupFailure("connection ended in a body (\(got) of \(length) bytes)") }
                got += n
            }
            return response
        }
    }

    /// What comes until the server closes the connection (throws if it does not within 5 s).
    func readToEnd() async throws -> [UInt8] {
        let fd = fd
        return try await runBlocking("http-client") {
            var all: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if n == 0 { return all }
                if n < 0 {
                    if errno == ECONNRESET { return all }
                    throw SetupFailure("the server did not close the connection (errno \(errno))")
                }
                all += buffer[..<n]
            }
        }
    }

    func shutdownWrite() { shutdown(fd, Int32(SHUT_WR)) }

    func close() { Glibc.close(fd) }
}

private extension Array where Element == UInt8 {
    func ends(with suffix: [UInt8]) -> Bool { count >= suffix.count && Array(self[(count - suffix.count)...]) == suffix }
}

