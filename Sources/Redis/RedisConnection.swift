// One Redis connection: the owner of a hiredis redisContext*, confined to a thread of its own.
//
// Theory of operation: `RedisConnection` is the Sendable face; the context and everything that
// touches it live in `RedisContextOwner`, confined to the connection's `OwnerThread`
// (`ThreadConfined`, docs/concurrency.md): every async call is one job there, checked to run
// there. The context is created on first use (or by `connect`) and freed exactly once, either
// when a command fails with a connection error (so the next command connects anew: this is how
// a Redis restart is survived) or when the connection is closed or deinited. Before sending,
// an idle connection is checked for a peer that already hung up (a restarted server): then it
// reconnects before sending, so nothing is sent twice. A command that breaks mid-way is never
// retried here: the caller knows whether it is idempotent. Every call is bounded by the
// connect and command timeouts: that bound is how long a cancelled task may wait for a job.
import FieldlogCore
import CHiredis
import Synchronization
import Threading
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging

/// A connection to Redis, usable from any task; every call runs on the connection's own thread.
public final class RedisConnection: Sendable {
    public let configuration: RedisConfiguration
    private let owner: ThreadConfined<RedisContextOwner>
    /// Set by `close()` at once, so calls made after it fail even before the queued close ran.
    private let closed = Atomic<Bool>(false)
    /// Mirrors whether the owner holds a context (for `isConnected`).
    private let connected = Atomic<Bool>(false)

    /// Creates the connection; it connects on first use (or `connect()`).
    public init(configuration: RedisConfiguration, logger: Logger = Logger(label: "fieldlog.redis")) {
        self.configuration = configuration
        let thread = OwnerThread(name: "redis \(configuration.endpointDescription)")
        owner = ThreadConfined(RedisContextOwner(configuration: configuration, logger: logger), on: thread)
    }

    deinit {
        owner.submit { $0.close() }
        owner.thread.stop()
    }

    /// Closes the connection for good (later calls throw); the context is freed on the
    /// connection's thread after the calls queued before.
    public func close() {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        connected.store(false, ordering: .relaxed)
        owner.submit { $0.close() }
    }

    /// True while a context is open (it is dropped on connection errors).
    public var isConnected: Bool { connected.load(ordering: .relaxed) }

    /// Connects now if not connected.
    public func connect() async throws {
        try await call { try $0.connect() }
    }

    /// Sends one command given as an argument vector of byte strings and returns the reply.
    /// Error replies come back as `.error`, not thrown; connection failures throw.
    public func command(_ arguments: [[UInt8]]) async throws -> RedisReply {
        try await call { try $0.command(arguments) }
    }

    /// Sends one command (string arguments, UTF-8).
    public func command(_ arguments: [String]) async throws -> RedisReply {
        try await command(arguments.map { Array($0.utf8) })
    }

    /// Sends one command (string arguments, UTF-8).
    public func command(_ arguments: String...) async throws -> RedisReply {
        try await command(arguments)
    }

    /// Sends several commands in one round trip (pipelining) and returns their replies in order.
    /// Not a transaction: wrap in MULTI/EXEC for that.
    public func pipeline(_ commands: [[[UInt8]]]) async throws -> [RedisReply] {
        try await call { try $0.pipeline(commands) }
    }

    private func call<T: Sendable>(_ body: @escaping @Sendable (RedisContextOwner) throws -> T) async throws -> T {
        guard !closed.load(ordering: .acquiring) else { throw RedisContextOwner.closedError }
        do {
            return try await owner.run { [self] owner in
                defer { connected.store(owner.isConnected, ordering: .relaxed) }
                return try body(owner)
            }
        } catch is OwnerThreadStopped {
            throw RedisContextOwner.closedError
        }
    }
}

/// The owner of one `redisContext*`: not Sendable, used only on its connection's thread.
final class RedisContextOwner {
    let configuration: RedisConfiguration
    private let logger: Logger
    private var context: UnsafeMutablePointer<redisContext>?
    private var closed = false

    static let closedError = RedisError(operation: "use connection", kind: .usage, message: "the connection was closed")

    init(configuration: RedisConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    deinit {
        if let context { redisFree(context) }
    }

    var isConnected: Bool { context != nil }

    func connect() throws {
        _ = try liveContext()
    }

    func command(_ arguments: [[UInt8]]) throws -> RedisReply {
        guard let name = arguments.first, !name.isEmpty else {
            throw RedisError(operation: "command", kind: .usage, message: "empty command")
        }
        let operation = String(decoding: name, as: UTF8.self).uppercased()
        let c = try liveContext()
        let raw = withArgv(arguments) { argc, argv, lengths in redisCommandArgv(c, argc, argv, lengths) }
        guard let raw else { throw dropContext(operation) }
        defer { freeReplyObject(raw) }
        return Self.convert(raw.assumingMemoryBound(to: redisReply.self))
    }

    func pipeline(_ commands: [[[UInt8]]]) throws -> [RedisReply] {
        if commands.isEmpty { return [] }
        for command in commands where command.first?.isEmpty ?? true {
            throw RedisError(operation: "pipeline", kind: .usage, message: "empty command in pipeline")
        }
        let c = try liveContext()
        for command in commands {
            let rc = withArgv(command) { argc, argv, lengths in redisAppendCommandArgv(c, argc, argv, lengths) }
            guard rc == REDIS_OK else { throw dropContext("pipeline") }
        }
        var replies: [RedisReply] = []
        replies.reserveCapacity(commands.count)
        for _ in commands {
            var raw: UnsafeMutableRawPointer?
            guard redisGetReply(c, &raw) == REDIS_OK, let raw else { throw dropContext("pipeline") }
            replies.append(Self.convert(raw.assumingMemoryBound(to: redisReply.self)))
            freeReplyObject(raw)
        }
        return replies
    }

    /// Frees the context; later calls throw.
    func close() {
        closed = true
        if let context {
            redisFree(context)
            self.context = nil
        }
    }

    // MARK: context management

    private func liveContext() throws -> UnsafeMutablePointer<redisContext> {
        guard !closed else { throw Self.closedError }
        if let context {
            if Self.peerHungUp(context.pointee.fd) {
                logger.info("redis closed the connection while idle; reconnecting",
                            metadata: ["endpoint": "\(configuration.endpointDescription)"])
                redisFree(context)
                self.context = nil
            } else {
                return context
            }
        }
        let c = try open()
        context = c
        return c
    }

    private func open() throws -> UnsafeMutablePointer<redisContext> {
        let operation = "connect to \(configuration.endpointDescription)"
        let connectTimeout = try Self.timeval(configuration.connectTimeout, name: "connectTimeout", operation)
        let commandTimeout = try Self.timeval(configuration.commandTimeout, name: "commandTimeout", operation)
        let made: UnsafeMutablePointer<redisContext>?
        if let path = configuration.unixSocket {
            made = redisConnectUnixWithTimeout(path, connectTimeout)
        } else {
            made = redisConnectWithTimeout(configuration.host, Int32(clamping: configuration.port), connectTimeout)
        }
        guard let c = made else {
            throw RedisError(operation: operation, kind: .connect, message: "out of memory")
        }
        if c.pointee.err != 0 {
            let message = String(cString: fieldlog_redis_errstr(c))
            redisFree(c)
            throw RedisError(operation: operation, kind: .connect,
                             message: message + (message.contains("timed out") ? "" : " (connect timeout \(configuration.connectTimeout))"))
        }
        guard redisSetTimeout(c, commandTimeout) == REDIS_OK else {
            let message = String(cString: fieldlog_redis_errstr(c))
            redisFree(c)
            throw RedisError(operation: operation, kind: .connect, message: "setting the command timeout: \(message)")
        }
        do {
            var setUp: [[String]] = []
            if let password = configuration.password {
                setUp.append(["AUTH"] + (configuration.username.map { [$0] } ?? []) + [password])
            }
            if configuration.database != 0 { setUp.append(["SELECT", String(configuration.database)]) }
            for command in setUp {
                let bytes = command.map { Array($0.utf8) }
                guard let raw = withArgv(bytes, { redisCommandArgv(c, $0, $1, $2) }) else {
                    throw RedisError(operation: operation + " (\(command[0]))", kind: .connect,
                                     message: String(cString: fieldlog_redis_errstr(c)))
                }
                let reply = Self.convert(raw.assumingMemoryBound(to: redisReply.self))
                freeReplyObject(raw)
                _ = try reply.throwingServerError(command: operation + " (\(command[0]))")
            }
            try waitWhileLoading(c, operation: operation)
        } catch {
            redisFree(c)
            throw error
        }
        logger.debug("connected to redis", metadata: ["endpoint": "\(configuration.endpointDescription)"])
        return c
    }

    /// A freshly (re)started Redis accepts connections while it still loads its AOF/RDB and
    /// answers every data command with "-LOADING Redis is loading the dataset in memory".
    /// Handing such a connection out would fail the caller's first command after a restart, so
    /// probe with PING (refused while loading; AUTH and SELECT are allowed then) and wait until
    /// the dataset is loaded, bounded by `commandTimeout`.
    private func waitWhileLoading(_ c: UnsafeMutablePointer<redisContext>, operation: String) throws {
        let deadline = ContinuousClock.now + configuration.commandTimeout
        while true {
            guard let raw = withArgv([Array("PING".utf8)], { redisCommandArgv(c, $0, $1, $2) }) else {
                throw RedisError(operation: operation + " (PING)", kind: .connect, message: String(cString: fieldlog_redis_errstr(c)))
            }
            let reply = Self.convert(raw.assumingMemoryBound(to: redisReply.self))
            freeReplyObject(raw)
            guard case .error(let message) = reply, message.hasPrefix("LOADING") else {
                _ = try reply.throwingServerError(command: operation + " (PING)")
                return
            }
            guard ContinuousClock.now < deadline else {
                throw RedisError(operation: operation, kind: .connect,
                                 message: "the server was still loading its dataset after \(configuration.commandTimeout): \(message)")
            }
            logger.debug("redis is loading its dataset; waiting", metadata: ["endpoint": "\(configuration.endpointDescription)"])
            OSThread.sleep(.milliseconds(50))
        }
    }

    /// Frees the broken context and returns the error that broke it.
    private func dropContext(_ operation: String) -> RedisError {
        guard let c = context else {
            return RedisError(operation: operation, kind: .io, message: "not connected")
        }
        let err = c.pointee.err
        var message = String(cString: fieldlog_redis_errstr(c))
        if err == REDIS_ERR_IO && (message.contains("Resource temporarily unavailable") || message.contains("timed out")) {
            message = "no reply within the command timeout \(configuration.commandTimeout) (\(message))"
        }
        redisFree(c)
        context = nil
        logger.info("redis connection dropped", metadata: ["operation": "\(operation)", "error": "\(message)"])
        return RedisError(operation: operation, kind: err == REDIS_ERR_PROTOCOL ? .protocolError : .io,
                          message: message + " (the next command reconnects)")
    }

    /// True when the socket is readable with EOF or an error pending: the server hung up.
    private static func peerHungUp(_ fd: Int32) -> Bool {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&pfd, 1, 0) == 1 else { return false }
        if pfd.revents & Int16(POLLERR | POLLHUP | POLLNVAL) != 0 { return true }
        var byte: UInt8 = 0
        let n = recv(fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
        // 0: orderly shutdown by the server. Unsolicited data on an idle connection is also
        // a broken state (replies would be misattributed), so reconnect then too.
        return n == 0 || n > 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
    }

    private static func timeval(_ d: Duration, name: String, _ operation: String) throws -> Glibc.timeval {
        guard d > .zero else {
            throw RedisError(operation: operation, kind: .usage, message: "\(name) must be positive, not \(d)")
        }
        let (seconds, attoseconds) = d.components
        return Glibc.timeval(tv_sec: Int(seconds), tv_usec: Int(attoseconds / 1_000_000_000_000))
    }

    private static func convert(_ reply: UnsafeMutablePointer<redisReply>) -> RedisReply {
        let r = reply.pointee
        switch r.type {
        case REDIS_REPLY_STATUS: return .status(String(decoding: bytes(r), as: UTF8.self))
        case REDIS_REPLY_ERROR: return .error(String(decoding: bytes(r), as: UTF8.self))
        case REDIS_REPLY_INTEGER: return .integer(Int64(r.integer))
        case REDIS_REPLY_STRING: return .bulk(bytes(r))
        case REDIS_REPLY_NIL: return .null
        case REDIS_REPLY_ARRAY:
            guard let elements = r.element else { return .array([]) }
            return .array((0..<r.elements).map { i in elements[i].map(convert) ?? .null })
        default: return .error("unknown hiredis reply type \(r.type)")
        }
    }

    private static func bytes(_ r: redisReply) -> [UInt8] {
        guard let str = r.str, r.len > 0 else { return [] }
        return Array(UnsafeRawBufferPointer(start: str, count: Int(r.len)))
    }
}

/// Calls `body` with argc/argv/argvlen for hiredis; the pointers live only during the call.
private func withArgv<R>(_ arguments: [[UInt8]],
                         _ body: (Int32, UnsafeMutablePointer<UnsafePointer<CChar>?>, UnsafePointer<Int>) -> R) -> R {
    let count = arguments.count
    var total = 0
    for a in arguments { total += a.count }
    // One block holds every argument back to back; argv points into it.
    let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: max(total, 1), alignment: 1)
    defer { storage.deallocate() }
    let argv = UnsafeMutablePointer<UnsafePointer<CChar>?>.allocate(capacity: max(count, 1))
    defer { argv.deallocate() }
    let lengths = UnsafeMutablePointer<Int>.allocate(capacity: max(count, 1))
    defer { lengths.deallocate() }
    var offset = 0
    for (i, a) in arguments.enumerated() {
        let start = storage.baseAddress! + offset
        a.withUnsafeBytes { if let base = $0.baseAddress { start.copyMemory(from: base, byteCount: $0.count) } }
        argv[i] = UnsafePointer(start.assumingMemoryBound(to: CChar.self))
        lengths[i] = a.count
        offset += a.count
    }
    return body(Int32(count), argv, lengths)
}
