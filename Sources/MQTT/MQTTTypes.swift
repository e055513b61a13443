// MQTT: a thin, safe wrapper over libmosquitto 2.0 (MQTT v5). Public value types.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Quality of service of a publish or subscription.
public enum MQTTQoS: Int32, Sendable, Hashable, Comparable {
    case atMostOnce = 0
    case atLeastOnce = 1
    case exactlyOnce = 2

    public static func < (a: MQTTQoS, b: MQTTQoS) -> Bool { a.rawValue < b.rawValue }
}

/// An MQTT v5 reason code (CONNACK, PUBACK, SUBACK, DISCONNECT). Codes ≥ 0x80 are failures.
public struct MQTTReasonCode: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let success = MQTTReasonCode(rawValue: 0x00)
    static let disconnectWithWill = MQTTReasonCode(rawValue: 0x04)
    public static let noMatchingSubscribers = MQTTReasonCode(rawValue: 0x10)
    static let unspecifiedError = MQTTReasonCode(rawValue: 0x80)
    public static let badUserNameOrPassword = MQTTReasonCode(rawValue: 0x86)
    public static let notAuthorized = MQTTReasonCode(rawValue: 0x87)
    static let topicNameInvalid = MQTTReasonCode(rawValue: 0x90)
    public static let quotaExceeded = MQTTReasonCode(rawValue: 0x97)

    public var isFailure: Bool { rawValue >= 0x80 }

    /// The reason's name as the MQTT v5 specification gives it, with its code, e.g. "Not authorized (0x87)".
    public var description: String {
        "\(reasonName(rawValue)) (0x\(String(rawValue, radix: 16, uppercase: false).leftPadded(to: 2)))"
    }
}

extension String {
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}

/// MQTT v5 properties of a published message (or a will) that Fieldlog uses.
public struct MQTTMessageProperties: Sendable, Hashable {
    /// MIME type of the payload, e.g. "application/json".
    public var contentType: String?
    /// Application key/value pairs, in order (names may repeat).
    public var userProperties: [MQTTUserProperty]
    /// Seconds after which the broker drops the message if undelivered.
    var messageExpiryInterval: UInt32?
    /// Topic a responder should answer on (request/response).
    var responseTopic: String?
    /// Opaque data copied into the response.
    var correlationData: [UInt8]?

    public init(contentType: String? = nil, userProperties: [MQTTUserProperty] = [], messageExpiryInterval: UInt32? = nil,
                responseTopic: String? = nil, correlationData: [UInt8]? = nil) {
        self.contentType = contentType
        self.userProperties = userProperties
        self.messageExpiryInterval = messageExpiryInterval
        self.responseTopic = responseTopic
        self.correlationData = correlationData
    }

    var isEmpty: Bool {
        contentType == nil && userProperties.isEmpty && messageExpiryInterval == nil && responseTopic == nil && correlationData == nil
    }
}

/// One MQTT v5 user property (a name/value pair).
public struct MQTTUserProperty: Sendable, Hashable {
    public var name: String
    public var value: String
    public init(_ name: String, _ value: String) {
        self.name = name
        self.value = value
    }
}

/// A message received on a subscription.
public struct MQTTMessage: Sendable, Hashable {
    public var topic: String
    public var payload: [UInt8]
    public var qos: MQTTQoS
    /// True when the broker delivered a stored retained message (on subscribe).
    public var retain: Bool
    public var properties: MQTTMessageProperties

    public init(topic: String, payload: [UInt8], qos: MQTTQoS, retain: Bool, properties: MQTTMessageProperties = .init()) {
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties
    }

    /// The payload as UTF-8 text (lossy).
    public var payloadString: String { String(decoding: payload, as: UTF8.self) }
}

/// The broker's CONNACK for a successful connection.
public struct MQTTConnAck: Sendable, Hashable {
    /// True when the broker resumed a stored session (subscriptions and queued messages kept).
    public var sessionPresent: Bool
}

/// The outcome of a publish: for QoS 1 the broker's PUBACK reason (success, or e.g.
/// "No matching subscribers"); for QoS 0 `.success` once the message was written to the socket.
public struct MQTTPublishAck: Sendable, Hashable {
    public var reasonCode: MQTTReasonCode
}

/// What happened to the connection; delivered in order on `MQTTClient.events`.
public enum MQTTConnectionEvent: Sendable, Hashable {
    /// CONNACK received with success.
    case connected(sessionPresent: Bool)
    /// The connection ended; nil error for a disconnect the client asked for.
    case disconnected(MQTTError?)
    /// A connection attempt failed (network, TLS, or the broker refused the CONNECT).
    case connectFailed(MQTTError)
    /// The client waits `delay` before reconnect attempt number `attempt` (1-based).
    case reconnecting(attempt: Int, delay: Duration)
}

/// A failure of the MQTT client: what was being done, what kind of failure, the broker's
/// reason code when it gave one, and a message that says what went wrong.
public struct MQTTError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable {
        /// The network connection could not be made or broke (refused, reset, DNS, timeout).
        case connection
        /// TLS set-up or handshake failed (e.g. the server certificate is not trusted).
        case tls
        /// The broker refused the CONNECT (reason code set, e.g. bad user name or password).
        case connectRefused
        /// The broker refused a publish (PUBACK reason ≥ 0x80, e.g. not authorized).
        case publishRefused
        /// The broker refused a subscription (SUBACK reason ≥ 0x80).
        case subscribeRefused
        /// The client is not connected (QoS 0 publish, subscribe) or the connection was lost
        /// before the broker answered.
        case notConnected
        /// The client was disconnected for good (`disconnect()` or deinit).
        case closed
        /// Bad argument or configuration (named in the message).
        case usage
        /// Any other libmosquitto failure.
        case library
    }

    public let operation: String
    public let kind: Kind
    public let reasonCode: MQTTReasonCode?
    public let message: String

    public init(operation: String, kind: Kind, reasonCode: MQTTReasonCode? = nil, message: String) {
        self.operation = operation
        self.kind = kind
        self.reasonCode = reasonCode
        self.message = message
    }

    public var description: String {
        "MQTT: \(operation) failed (\(kind)): \(message)"
    }
}

/// How the client reconnects after losing its connection: exponential backoff with jitter.
public struct MQTTReconnectPolicy: Sendable, Hashable {
    /// Delay before the first retry. Default 0.5 s.
    public var minDelay: Duration
    /// Largest delay between retries. Default 30 s.
    public var maxDelay: Duration
    /// Fraction (0...1) of each delay that is randomised away, so a fleet that lost the broker
    /// together does not come back in lock step. Default 0.5: a delay lies in [base/2, base].
    public var jitter: Double

    public init(minDelay: Duration = .milliseconds(500), maxDelay: Duration = .seconds(30), jitter: Double = 0.5) {
        self.minDelay = minDelay
        self.maxDelay = maxDelay
        self.jitter = jitter
    }
}

/// The sans-IO part of reconnecting: the delay before attempt `n`, from the policy and a random number.
public struct ReconnectBackoff: Sendable, Hashable {
    public let policy: MQTTReconnectPolicy

    public init(policy: MQTTReconnectPolicy) {
        precondition(policy.minDelay > .zero && policy.maxDelay >= policy.minDelay, "reconnect delays must satisfy 0 < min <= max")
        precondition((0...1).contains(policy.jitter), "jitter must be within 0...1")
        self.policy = policy
    }

    /// The delay before reconnect attempt `attempt` (1-based): `min · 2^(attempt-1)`, capped at
    /// `max`, then reduced by up to `jitter` of itself according to `randomUnit` in 0..<1.
    public func delay(attempt: Int, randomUnit: Double) -> Duration {
        precondition(attempt >= 1, "attempts count from 1")
        precondition((0..<1).contains(randomUnit), "randomUnit must be within 0..<1")
        let doublings = min(attempt - 1, 62)
        let minSeconds = policy.minDelay / .seconds(1)
        let maxSeconds = policy.maxDelay / .seconds(1)
        let base = min(maxSeconds, minSeconds * pow(2, Double(doublings)))
        let jittered = base * (1 - policy.jitter * randomUnit)
        return .nanoseconds(Int64((jittered * 1e9).rounded()))
    }
}

/// Everything needed to connect: identity, credentials, TLS, will, session and reconnect policy.
public struct MQTTConfiguration: Sendable {
    /// TLS settings: trust anchors and an optional client certificate.
    public struct TLS: Sendable {
        /// PEM file of the CA(s) trusted to sign the broker's certificate.
        public var caFile: String
        /// Optional client certificate and key (PEM) for brokers that require them.
        public var certificateFile: String?
        public var keyFile: String?
        /// Skip the check that the certificate names the host (the chain is still verified).
        /// Only for tests and bootstrapping; default false.
        public var insecureSkipHostnameCheck: Bool

        public init(caFile: String, certificateFile: String? = nil, keyFile: String? = nil, insecureSkipHostnameCheck: Bool = false) {
            self.caFile = caFile
            self.certificateFile = certificateFile
            self.keyFile = keyFile
            self.insecureSkipHostnameCheck = insecureSkipHostnameCheck
        }
    }

    /// The message the broker publishes for this client when it vanishes without DISCONNECT.
    public struct Will: Sendable {
        public var topic: String
        public var payload: [UInt8]
        public var qos: MQTTQoS
        public var retain: Bool
        public var properties: MQTTMessageProperties

        public init(topic: String, payload: [UInt8], qos: MQTTQoS = .atLeastOnce, retain: Bool = false,
                    properties: MQTTMessageProperties = .init()) {
            self.topic = topic
            self.payload = payload
            self.qos = qos
            self.retain = retain
            self.properties = properties
        }
    }

    public var host: String
    /// Default 1883 (8883 is usual with TLS).
    public var port: Int
    /// Client identifier; must be unique on the broker (a second connection with the same id takes over).
    public var clientID: String
    /// MQTT v5 clean start: true discards any stored session on connect. Default true.
    public var cleanStart: Bool
    public var username: String?
    public var password: String?
    /// Keep-alive interval; 5 s or more (libmosquitto's minimum). Default 30 s.
    public var keepAlive: Duration
    /// Time allowed from starting a connection to the broker's CONNACK (the TCP connect itself
    /// is bounded by the operating system). Default 10 s.
    public var connectTimeout: Duration
    public var tls: TLS?
    public var will: Will?
    /// How long the broker keeps the session (subscriptions, queued QoS 1 messages) after the
    /// connection ends; nil or zero: it ends with the connection. Whole seconds.
    public var sessionExpiry: Duration?
    public var reconnect: MQTTReconnectPolicy

    public init(host: String = "127.0.0.1", port: Int = 1883, clientID: String, cleanStart: Bool = true,
                username: String? = nil, password: String? = nil, keepAlive: Duration = .seconds(30),
                connectTimeout: Duration = .seconds(10), tls: TLS? = nil, will: Will? = nil, sessionExpiry: Duration? = nil,
                reconnect: MQTTReconnectPolicy = .init()) {
        self.host = host
        self.port = port
        self.clientID = clientID
        self.cleanStart = cleanStart
        self.username = username
        self.password = password
        self.keepAlive = keepAlive
        self.connectTimeout = connectTimeout
        self.tls = tls
        self.will = will
        self.sessionExpiry = sessionExpiry
        self.reconnect = reconnect
    }

    var endpointDescription: String { "\(clientID)@\(host):\(port)\(tls == nil ? "" : " (TLS)")" }
}
