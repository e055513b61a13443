// FaultProxy: a small fault-injecting TCP proxy on loopback.
//
// Theory of operation
// - One dedicated thread (never the cooperative pool) runs a `poll(2)` loop over the
//   listening socket, a wake-up pipe and every connection pair (client side, upstream side).
//   All sockets are non-blocking; the upstream connect is non-blocking too.
// - Bytes read from one side are queued for the other side with a delivery time
//   (now + delay). The writer drains a queue only when its head is due and the direction's
//   token bucket (throttle) has tokens. A queue holds at most `queueBytesMax`; beyond it the
//   proxy stops reading that side, so the kernel's flow control slows the sender down.
// - Faults are commands that take effect on the loop thread at its next iteration:
//   `cut` resets every connection and refuses new ones (accept + immediate reset) until
//   `heal`; `stall` keeps connections open but moves no bytes and does not connect new ones
//   upstream (a silent partition: only keepalives notice); `delay`, `throttle` and
//   `dropProbability` (each chunk read resets its connection with that probability: a lossy
//   link as TCP sees it) change the link. `heal` restores a clean link.
// - Randomness comes from a seeded generator so a run is driven by its seed.
import FieldlogCore
import Foundation
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// The link conditions a `FaultProxy` applies. `clean` is a plain forwarder.
public struct LinkConditions: Sendable, Equatable, CustomStringConvertible {
    /// Reset existing connections and refuse new ones.
    public var cut = false
    /// Keep connections open but forward nothing (silent partition).
    public var stalled = false
    /// Added to every chunk, each direction.
    public var delayMs = 0
    /// Bytes per second per direction; nil: unlimited.
    public var throttleBytesPerSecond: Int? = nil
    /// Probability (0…1) that a chunk read resets its connection.
    public var dropProbability = 0.0

    public init(cut: Bool = false, stalled: Bool = false, delayMs: Int = 0, throttleBytesPerSecond: Int? = nil, dropProbability: Double = 0) {
        self.cut = cut
        self.stalled = stalled
        self.delayMs = delayMs
        self.throttleBytesPerSecond = throttleBytesPerSecond
        self.dropProbability = dropProbability
    }

    public static let clean = LinkConditions()

    public var description: String {
        if cut { return "cut" }
        if stalled { return "stalled" }
        var parts: [String] = []
        if delayMs > 0 { parts.append("delay \(delayMs) ms") }
        if let t = throttleBytesPerSecond { parts.append("throttle \(t) B/s") }
        if dropProbability > 0 { parts.append("drop p=\(dropProbability)") }
        return parts.isEmpty ? "clean" : parts.joined(separator: ", ")
    }
}

/// Counters of a proxy, for reports and tests.
public struct ProxyStatistics: Sendable, Equatable {
    public var accepted = 0
    public var refused = 0
    public var resets = 0
    var bytesForwarded = 0
    public var open = 0
}

/// A fault-injecting TCP proxy: listens on 127.0.0.1 (a free port unless given) and forwards
/// each connection to `targetHost:targetPort`, applying the current `LinkConditions`.
public final class FaultProxy: @unchecked Sendable {
    // @unchecked: the sockets and pairs are only touched on `thread`; `conditions`,
    // `statistics` and `stopping` are guarded by `lock`.

    public let name: String
    let targetHost: String
    public let targetPort: Int
    /// The port the proxy listens on (127.0.0.1).
    public let port: Int

    /// Most bytes queued per direction before the proxy stops reading that side.
    static let queueBytesMax = 1 << 20
    static let chunkBytesMax = 16 * 1024

    private let listenFD: Int32
    private let wakeRead: Int32
    private let wakeWrite: Int32
    private let logger: Logger
    private let lock = NSLock()
    private var conditions = LinkConditions.clean
    private var stats = ProxyStatistics()
    private var stopping = false
    private var resetAllRequested = false
    private var thread: Thread?
    private let done = DispatchSemaphore(value: 0)
    private var random: SplitMix64

    /// Binds the listening socket at once (so `port` is valid) and starts the loop thread.
    public init(name: String, targetHost: String = "127.0.0.1", targetPort: Int, listenPort: Int = 0,
                seed: UInt64, logger: Logger) throws {
        self.name = name
        self.targetHost = targetHost
        self.targetPort = targetPort
        self.logger = logger
        self.random = SplitMix64(seed: seed)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw LabError.system("proxy \(name): socket()", errno) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = UInt16(listenPort).bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        guard bound, listen(fd, 128) == 0 else {
            let e = errno
            close(fd)
            throw LabError.system("proxy \(name): bind/listen on 127.0.0.1:\(listenPort)", e)
        }
        Self.setNonBlocking(fd)
        listenFD = fd
        port = Int(UInt16(bigEndian: addr.sin_port))
        var pipeFDs: [Int32] = [0, 0]
        // Every descriptor of the proxy is close-on-exec: a child the lab starts (a device, a
        // restarted mosquitto) must not inherit a proxied connection, or closing it here would
        // not close it (found by the lab: a MariaDB transaction stayed open behind a cut).
        guard pipe(&pipeFDs) == 0 else { close(fd); throw LabError.system("proxy \(name): pipe()", errno) }
        Self.setCloseOnExec(pipeFDs[0])
        Self.setCloseOnExec(pipeFDs[1])
        wakeRead = pipeFDs[0]
        wakeWrite = pipeFDs[1]
        Self.setNonBlocking(wakeRead)
        Self.setNonBlocking(wakeWrite)
        let t = Thread { [unowned self] in self.loop() }
        t.name = "fieldlog-lab proxy \(name)"
        thread = t
        t.start()
    }

    deinit {
        stop()
    }

    // MARK: commands

    /// The current link conditions.
    public var current: LinkConditions { lock.withLock { conditions } }

    /// Counters so far.
    public var statistics: ProxyStatistics { lock.withLock { stats } }

    /// Applies new link conditions (from the next loop iteration on).
    public func apply(_ new: LinkConditions) {
        precondition((0...1).contains(new.dropProbability), "drop probability \(new.dropProbability) is not in 0…1")
        precondition(new.delayMs >= 0 && new.delayMs <= 600_000, "delay \(new.delayMs) ms is not in 0…600000")
        precondition(new.throttleBytesPerSecond.map { $0 > 0 } ?? true, "throttle must be positive")
        lock.withLock { conditions = new }
        logger.debug("proxy conditions", metadata: ["proxy": "\(name)", "conditions": "\(new)"])
        wake()
    }

    /// Resets every connection and refuses new ones until `heal()`.
    public func cut() { apply(LinkConditions(cut: true)) }
    /// Keeps connections open but forwards nothing until `heal()`.
    public func stall() { apply(LinkConditions(stalled: true)) }
    /// A clean link again.
    public func heal() { apply(.clean) }
    /// Resets every open connection once (new connections are accepted as usual).
    func resetAll() {
        lock.withLock { resetAllRequested = true }
        wake()
    }

    /// Stops the loop, closes every socket. Idempotent.
    public func stop() {
        let wasStopping = lock.withLock { () -> Bool in
            let w = stopping
            stopping = true
            return w
        }
        guard !wasStopping else { return }
        wake()
        if thread != nil { done.wait() }
        close(listenFD)
        close(wakeRead)
        close(wakeWrite)
    }

    private func wake() {
        var b: UInt8 = 1
        _ = write(wakeWrite, &b, 1)
    }

    // MARK: the loop (on `thread` only)

    private final class Direction {
        var queue: [(dueNs: UInt64, bytes: [UInt8])] = []
        var queued = 0
        var offset = 0          // bytes of queue[0] already written
        var tokens = 0.0
        var lastRefillNs: UInt64 = 0
        var readClosed = false  // source sent EOF
        var shutdownSent = false
    }

    private final class Pair {
        let client: Int32
        var upstream: Int32 = -1
        var connecting = true
        let toUpstream = Direction()
        let toClient = Direction()
        init(client: Int32) { self.client = client }
    }

    private var pairs: [Pair] = []

    private func loop() {
        defer {
            for p in pairs { closePair(p, reset: true) }
            pairs.removeAll()
            done.signal()
        }
        while true {
            var (c, stop, resetAll) = lock.withLock { () -> (LinkConditions, Bool, Bool) in
                let r = resetAllRequested
                resetAllRequested = false
                return (conditions, stopping, r)
            }
            if stop { return }
            if c.cut || resetAll {
                for p in pairs { closePair(p, reset: true) }
                if !pairs.isEmpty { lock.withLock { stats.resets += pairs.count; stats.open = 0 } }
                pairs.removeAll()
            }
            var fds: [pollfd] = [pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0),
                                 pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
            let now = Self.nowNs()
            var timeoutMs: Int32 = 200
            for p in pairs {
                var ce: Int16 = 0, ue: Int16 = 0
                if !c.stalled {
                    if p.connecting {
                        ue |= Int16(POLLOUT)
                    } else {
                        if !p.toUpstream.readClosed && p.toUpstream.queued < Self.queueBytesMax { ce |= Int16(POLLIN) }
                        if !p.toClient.readClosed && p.toClient.queued < Self.queueBytesMax { ue |= Int16(POLLIN) }
                        if let due = p.toUpstream.queue.first?.dueNs {
                            if due <= now && hasTokens(p.toUpstream, c, now) { ue |= Int16(POLLOUT) } else { timeoutMs = min(timeoutMs, 5) }
                        }
                        if let due = p.toClient.queue.first?.dueNs {
                            if due <= now && hasTokens(p.toClient, c, now) { ce |= Int16(POLLOUT) } else { timeoutMs = min(timeoutMs, 5) }
                        }
                    }
                }
                // While stalled, the pair's sockets are left out of the poll set (fd -1), so a
                // peer's hang-up cannot spin the loop; it is noticed after the stall.
                fds.append(pollfd(fd: c.stalled ? -1 : p.client, events: ce, revents: 0))
                fds.append(pollfd(fd: c.stalled ? -1 : p.upstream, events: ue, revents: 0))
            }
            let n = poll(&fds, nfds_t(fds.count), timeoutMs)
            if n < 0 && errno != EINTR {
                logger.error("proxy poll failed", metadata: ["proxy": "\(name)", "errno": "\(errno)"])
                return
            }
            if fds[1].revents != 0 {
                var buf = [UInt8](repeating: 0, count: 64)
                while read(wakeRead, &buf, buf.count) > 0 {}
                // A command may have woken us: bytes read from here on get the new conditions.
                // (A cut or stall takes effect at the top of the next iteration.)
                let fresh = lock.withLock { conditions }
                if fresh.cut != c.cut || fresh.stalled != c.stalled { continue }
                c = fresh
            }
            // Existing pairs first (their indexes match `fds` from 2 on).
            var dead: Set<ObjectIdentifier> = []
            for (i, p) in pairs.enumerated() {
                let cf = fds[2 + 2 * i], uf = fds[3 + 2 * i]
                if c.stalled { continue }
                if !service(p, clientEvents: cf.revents, upstreamEvents: uf.revents, conditions: c) {
                    dead.insert(ObjectIdentifier(p))
                }
            }
            if !dead.isEmpty {
                pairs.removeAll { dead.contains(ObjectIdentifier($0)) }
                lock.withLock { stats.open = pairs.count }
            }
            if fds[0].revents & Int16(POLLIN) != 0 { acceptAll(c) }
        }
    }

    private func acceptAll(_ c: LinkConditions) {
        while true {
            let fd = accept(listenFD, nil, nil)
            if fd < 0 { return }
            Self.setCloseOnExec(fd)
            Self.setNonBlocking(fd)
            if c.cut {
                lock.withLock { stats.refused += 1 }
                Self.reset(fd)
                continue
            }
            let p = Pair(client: fd)
            guard let up = connectUpstream() else {
                lock.withLock { stats.refused += 1 }
                Self.reset(fd)
                continue
            }
            p.upstream = up
            pairs.append(p)
            lock.withLock { stats.accepted += 1; stats.open = pairs.count }
        }
    }

    private func connectUpstream() -> Int32? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        Self.setNonBlocking(fd)
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = UInt16(targetPort).bigEndian
        addr.sin_addr.s_addr = inet_addr(targetHost)
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if r != 0 && errno != EINPROGRESS { close(fd); return nil }
        return fd
    }

    /// Moves bytes for one pair; false when the pair is finished (and closed).
    private func service(_ p: Pair, clientEvents: Int16, upstreamEvents: Int16, conditions c: LinkConditions) -> Bool {
        if p.connecting {
            guard upstreamEvents != 0 else { return true }
            var err: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(p.upstream, SOL_SOCKET, SO_ERROR, &err, &len)
            if err != 0 || upstreamEvents & Int16(POLLERR | POLLHUP) != 0 {
                closePair(p, reset: true)
                lock.withLock { stats.refused += 1 }
                return false
            }
            p.connecting = false
            return true
        }
        let errMask = Int16(POLLERR | POLLNVAL)
        if clientEvents & errMask != 0 || upstreamEvents & errMask != 0 {
            closePair(p, reset: true)
            return false
        }
        // A side that hung up completely after its EOF was read: nothing more can flow to it.
        if (clientEvents & Int16(POLLHUP) != 0 && p.toUpstream.readClosed) || (upstreamEvents & Int16(POLLHUP) != 0 && p.toClient.readClosed) {
            closePair(p, reset: false)
            return false
        }
        // Read.
        if clientEvents & Int16(POLLIN | POLLHUP) != 0, !p.toUpstream.readClosed {
            if !readInto(p.toUpstream, from: p.client, conditions: c) { countReset(); closePair(p, reset: true); return false }
        }
        if upstreamEvents & Int16(POLLIN | POLLHUP) != 0, !p.toClient.readClosed {
            if !readInto(p.toClient, from: p.upstream, conditions: c) { countReset(); closePair(p, reset: true); return false }
        }
        // Write.
        if !writeFrom(p.toUpstream, to: p.upstream, conditions: c) || !writeFrom(p.toClient, to: p.client, conditions: c) {
            closePair(p, reset: true)
            return false
        }
        // Half-close once a side's EOF has been forwarded; done when both are.
        if p.toUpstream.readClosed && p.toUpstream.queue.isEmpty && !p.toUpstream.shutdownSent {
            shutdown(p.upstream, Int32(SHUT_WR)); p.toUpstream.shutdownSent = true
        }
        if p.toClient.readClosed && p.toClient.queue.isEmpty && !p.toClient.shutdownSent {
            shutdown(p.client, Int32(SHUT_WR)); p.toClient.shutdownSent = true
        }
        if p.toUpstream.shutdownSent && p.toClient.shutdownSent {
            closePair(p, reset: false)
            return false
        }
        return true
    }

    private func countReset() { lock.withLock { stats.resets += 1 } }

    /// Reads one chunk; false when the connection must be reset (read error or a drop).
    private func readInto(_ d: Direction, from fd: Int32, conditions c: LinkConditions) -> Bool {
        var buf = [UInt8](repeating: 0, count: Self.chunkBytesMax)
        let n = read(fd, &buf, buf.count)
        if n < 0 { return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR }
        if n == 0 { d.readClosed = true; return true }
        if c.dropProbability > 0 && random.nextDouble() < c.dropProbability { return false }
        d.queue.append((Self.nowNs() + UInt64(c.delayMs) * 1_000_000, Array(buf[0..<n])))
        d.queued += n
        return true
    }

    private func hasTokens(_ d: Direction, _ c: LinkConditions, _ now: UInt64) -> Bool {
        guard let rate = c.throttleBytesPerSecond else { return true }
        refill(d, rate: rate, now: now)
        return d.tokens >= 1
    }

    private func refill(_ d: Direction, rate: Int, now: UInt64) {
        if d.lastRefillNs == 0 { d.lastRefillNs = now }
        let elapsed = Double(now - min(now, d.lastRefillNs)) / 1e9
        // At most a quarter second of burst.
        d.tokens = min(Double(rate) / 4 + 1, d.tokens + elapsed * Double(rate))
        d.lastRefillNs = now
    }

    /// Writes what is due; false on a write error.
    private func writeFrom(_ d: Direction, to fd: Int32, conditions c: LinkConditions) -> Bool {
        let now = Self.nowNs()
        while let head = d.queue.first, head.dueNs <= now {
            var allowed = head.bytes.count - d.offset
            if let rate = c.throttleBytesPerSecond {
                refill(d, rate: rate, now: now)
                allowed = min(allowed, Int(d.tokens))
                if allowed <= 0 { return true }
            }
            let n = head.bytes.withUnsafeBufferPointer { send(fd, $0.baseAddress! + d.offset, allowed, Int32(MSG_NOSIGNAL)) }
            if n < 0 { return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR }
            if c.throttleBytesPerSecond != nil { d.tokens -= Double(n) }
            d.offset += n
            lock.withLock { stats.bytesForwarded += n }
            if d.offset == head.bytes.count {
                d.queued -= head.bytes.count
                d.queue.removeFirst()
                d.offset = 0
            } else {
                return true
            }
        }
        return true
    }

    private func closePair(_ p: Pair, reset: Bool) {
        if reset { Self.reset(p.client); if p.upstream >= 0 { Self.reset(p.upstream) } } else {
            close(p.client); if p.upstream >= 0 { close(p.upstream) }
        }
    }

    /// Closes with SO_LINGER 0: the peer sees a connection reset, as after a crash or a middlebox drop.
    static func reset(_ fd: Int32) {
        var l = linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
        close(fd)
    }

    static func setCloseOnExec(_ fd: Int32) {
        _ = fcntl(fd, F_SETFD, fcntl(fd, F_GETFD) | FD_CLOEXEC)
    }

    static func setNonBlocking(_ fd: Int32) {
        let flags = fcntl(fd, F_GETFL, 0)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
    }

    static func nowNs() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}
