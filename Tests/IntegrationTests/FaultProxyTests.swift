// FaultProxy against a real echo server on loopback: every fault must be observable from
// the client side (cut → reset and refused, heal → works again, delay → round trips take
// longer, throttle → bytes arrive at about the rate, stall → nothing moves, drop → resets).
import Foundation
import Logging
import OutageLab
import XCTest

/// A blocking echo server on a thread of its own.
final class EchoServer: @unchecked Sendable {
    // @unchecked: `port` and `fd` are immutable; `stopped` is only touched under `lock`.
    let port: Int
    private let fd: Int32
    private let lock = NSLock()
    private var stopped = false

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.fd = fd
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        guard ok, listen(fd, 16) == 0 else { throw LabError.system("echo bind", errno) }
        port = Int(UInt16(bigEndian: addr.sin_port))
        let t = Thread { [unowned self] in
            while true {
                let c = accept(self.fd, nil, nil)
                if c < 0 { return }
                Thread.detachNewThread {
                    var buf = [UInt8](repeating: 0, count: 65536)
                    while true {
                        let n = read(c, &buf, buf.count)
                        if n <= 0 { break }
                        var off = 0
                        while off < n {
                            let w = buf.withUnsafeBufferPointer { send(c, $0.baseAddress! + off, n - off, Int32(MSG_NOSIGNAL)) }
                            if w <= 0 { break }
                            off += w
                        }
                    }
                    close(c)
                }
            }
        }
        t.start()
    }

    func stop() { shutdown(fd, Int32(SHUT_RDWR)); close(fd) }
}

/// A blocking client with a receive timeout.
final class Client {
    let fd: Int32
    init?(port: Int, timeoutSeconds: Double = 2) {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var tv = timeval(tv_sec: Int(timeoutSeconds), tv_usec: Int((timeoutSeconds - Double(Int(timeoutSeconds))) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = UInt16(port).bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if r != 0 { close(fd); return nil }
    }
    deinit { close(fd) }

    func send(_ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let w = bytes.withUnsafeBufferPointer { Glibc.send(fd, $0.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL)) }
            if w <= 0 { return false }
            off += w
        }
        return true
    }

    /// Reads exactly `count` bytes; nil on EOF, reset or timeout.
    func receive(_ count: Int) -> [UInt8]? {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while out.count < count {
            let n = read(fd, &buf, min(buf.count, count - out.count))
            if n <= 0 { return nil }
            out += buf[0..<n]
        }
        return out
    }

    /// One echo round trip; nil when it failed.
    func roundTrip(_ text: String) -> String? {
        let b = Array(text.utf8)
        guard send(b), let r = receive(b.count) else { return nil }
        return String(decoding: r, as: UTF8.self)
    }
}

final class FaultProxyTests: XCTestCase {
    var echo: EchoServer!
    var proxy: FaultProxy!

    override func setUpWithError() throws {
        echo = try EchoServer()
        proxy = try FaultProxy(name: "test", targetPort: echo.port, seed: 42, logger: Logger(label: "test"))
    }

    override func tearDown() {
        proxy.stop()
        echo.stop()
    }

    func testForwardsBothWays() throws {
        let c = try XCTUnwrap(Client(port: proxy.port))
        XCTAssertEqual(c.roundTrip("hello"), "hello")
        let big = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        XCTAssertTrue(c.send(big))
        XCTAssertEqual(c.receive(big.count), big)
        XCTAssertEqual(proxy.statistics.accepted, 1)
    }

    func testCutResetsAndRefusesUntilHealed() throws {
        let c = try XCTUnwrap(Client(port: proxy.port))
        XCTAssertEqual(c.roundTrip("before"), "before")
        proxy.cut()
        Thread.sleep(forTimeInterval: 0.2)
        XCTAssertNil(c.roundTrip("during"), "an open connection is reset by a cut")
        // New connections are accepted by the kernel but reset at once: no echo.
        let d = try XCTUnwrap(Client(port: proxy.port))
        XCTAssertNil(d.roundTrip("refused"))
        XCTAssertGreaterThanOrEqual(proxy.statistics.refused, 1)
        proxy.heal()
        Thread.sleep(forTimeInterval: 0.1)
        let e = try XCTUnwrap(Client(port: proxy.port))
        XCTAssertEqual(e.roundTrip("after"), "after")
    }

    func testDelayAddsLatencyEachWay() throws {
        let c = try XCTUnwrap(Client(port: proxy.port))
        XCTAssertEqual(c.roundTrip("warm"), "warm")
        var t = monotonicSeconds()
        XCTAssertEqual(c.roundTrip("fast"), "fast")
        let clean = monotonicSeconds() - t
        proxy.apply(LinkConditions(delayMs: 150))
        t = monotonicSeconds()
        XCTAssertEqual(c.roundTrip("slow"), "slow")
        let delayed = monotonicSeconds() - t
        // 150 ms each direction: at least 300 ms per round trip.
        XCTAssertGreaterThanOrEqual(delayed, 0.3, "round trip took \(delayed) s with 150 ms delay each way (clean: \(clean) s)")
    }

    func testThrottleLimitsRate() throws {
        proxy.apply(LinkConditions(throttleBytesPerSecond: 20_000))
        let c = try XCTUnwrap(Client(port: proxy.port, timeoutSeconds: 10))
        let data = [UInt8](repeating: 7, count: 30_000)
        let t = monotonicSeconds()
        XCTAssertTrue(c.send(data))
        XCTAssertEqual(c.receive(data.count), data)
        let elapsed = monotonicSeconds() - t
        // 30 kB through two 20 kB/s buckets (each with a quarter second of burst): well over 1 s.
        XCTAssertGreaterThan(elapsed, 1.0, "30 kB at 20 kB/s took only \(elapsed) s")
    }

    func testStallMovesNothingThenDelivers() throws {
        let c = try XCTUnwrap(Client(port: proxy.port, timeoutSeconds: 0.5))
        XCTAssertEqual(c.roundTrip("one"), "one")
        proxy.stall()
        Thread.sleep(forTimeInterval: 0.1)
        XCTAssertTrue(c.send(Array("two".utf8)))
        XCTAssertNil(c.receive(3), "nothing moves while stalled")
        proxy.heal()
        // The stalled bytes were held by the kernel; after healing they are forwarded.
        let d = try XCTUnwrap(Client(port: proxy.port, timeoutSeconds: 2))
        XCTAssertEqual(d.roundTrip("three"), "three")
    }

    func testDropProbabilityResetsConnections() throws {
        proxy.apply(LinkConditions(dropProbability: 1.0))
        let c = try XCTUnwrap(Client(port: proxy.port))
        XCTAssertNil(c.roundTrip("lost"))
        XCTAssertGreaterThanOrEqual(proxy.statistics.resets, 1)
        proxy.heal()
        let d = try XCTUnwrap(Client(port: proxy.port))
        XCTAssertEqual(d.roundTrip("ok"), "ok")
    }
}
