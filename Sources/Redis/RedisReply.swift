// Redis: a thin, safe wrapper over hiredis 0.14 (binary-safe commands by argument vector).

/// A reply from Redis, copied out of hiredis' reply object.
public enum RedisReply: Sendable, Hashable, CustomStringConvertible {
    /// A simple status such as "OK" or "PONG".
    case status(String)
    /// An error reply such as "WRONGTYPE ..." or "ERR unknown command": the server refused the command.
    case error(String)
    case integer(Int64)
    /// A bulk string, binary-safe.
    case bulk([UInt8])
    /// The nil bulk string or nil array (missing key, timed-out blocking read).
    case null
    case array([RedisReply])

    /// Bulk or status text as UTF-8 (lossy for binary data); nil for other replies.
    public var string: String? {
        switch self {
        case .bulk(let b): String(decoding: b, as: UTF8.self)
        case .status(let s): s
        default: nil
        }
    }

    /// Bulk bytes; nil for other replies.
    public var bytes: [UInt8]? {
        if case .bulk(let b) = self { return b }
        return nil
    }

    /// The integer of an integer reply, or of a bulk string holding a decimal integer.
    public var integer: Int64? {
        switch self {
        case .integer(let v): v
        case .bulk(let b): Int64(String(decoding: b, as: UTF8.self))
        default: nil
        }
    }

    /// The elements of an array reply; nil for other replies.
    public var array: [RedisReply]? {
        if case .array(let a) = self { return a }
        return nil
    }

    public var isNull: Bool { self == .null }

    /// The reply itself, or a thrown `RedisError` when the server answered with an error reply.
    /// - Parameter command: what was sent, for the message (e.g. "XADD").
    public func throwingServerError(command: String) throws -> RedisReply {
        if case .error(let message) = self {
            throw RedisError(operation: command, kind: .serverError, message: message)
        }
        return self
    }

    public var description: String {
        switch self {
        case .status(let s): "+\(s)"
        case .error(let s): "-\(s)"
        case .integer(let v): ":\(v)"
        case .bulk(let b): "$\(String(decoding: b, as: UTF8.self).debugDescription)"
        case .null: "(nil)"
        case .array(let a): "[" + a.map(\.description).joined(separator: ", ") + "]"
        }
    }
}

/// A failure talking to Redis: what was being done, what kind of failure, and the message.
public struct RedisError: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable, Hashable {
        /// Could not connect (refused, unreachable, timed out).
        case connect
        /// The connection broke or timed out during a command; the connection is dropped
        /// and the next command connects anew. Whether the command took effect is unknown.
        case io
        /// The server sent something hiredis could not parse.
        case protocolError
        /// The server answered with an error reply (only from `throwingServerError` and the
        /// connection set-up: AUTH, SELECT).
        case serverError
        /// The caller passed something unusable (empty command, bad configuration).
        case usage
    }

    /// What was being done, e.g. "connect to 127.0.0.1:6379" or "XADD".
    public let operation: String
    public let kind: Kind
    public let message: String

    public init(operation: String, kind: Kind, message: String) {
        self.operation = operation
        self.kind = kind
        self.message = message
    }

    /// True when the connection was lost or could not be made (worth retrying later).
    public var isConnectionError: Bool { kind == .connect || kind == .io }

    public var description: String { "Redis: \(operation) failed (\(kind)): \(message)" }
}

/// Where and how to connect to Redis.
public struct RedisConfiguration: Sendable {
    /// Host name or address. Default "127.0.0.1". Ignored when `unixSocket` is set.
    public var host: String
    /// TCP port. Default 6379.
    public var port: Int
    /// Path of a unix socket to use instead of TCP.
    public var unixSocket: String?
    /// Time allowed to connect. Default 2 s.
    public var connectTimeout: Duration
    /// Time allowed for one command's write and reply. Default 5 s. Blocking commands
    /// (XREAD BLOCK, BLPOP) must block for less than this.
    public var commandTimeout: Duration
    /// AUTH user name (Redis 6 ACL); nil for the default user.
    public var username: String?
    /// AUTH password; nil when the server needs none.
    public var password: String?
    /// Database index selected after connecting (REDIS_DB of the seed). Default 0.
    public var database: Int

    public init(host: String = "127.0.0.1", port: Int = 6379, unixSocket: String? = nil,
                connectTimeout: Duration = .seconds(2), commandTimeout: Duration = .seconds(5),
                username: String? = nil, password: String? = nil, database: Int = 0) {
        self.host = host
        self.port = port
        self.unixSocket = unixSocket
        self.connectTimeout = connectTimeout
        self.commandTimeout = commandTimeout
        self.username = username
        self.password = password
        self.database = database
    }

    /// "host:port/db" or "unix:path/db", for messages.
    public var endpointDescription: String {
        (unixSocket.map { "unix:\($0)" } ?? "\(host):\(port)") + "/\(database)"
    }
}
