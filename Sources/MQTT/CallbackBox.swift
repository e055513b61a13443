// The C context of a libmosquitto handle: receives its callbacks (on the network thread) and
// hands each event to whoever waits for it. Never calls back into the owner.
import CMosquitto
import FieldlogCore
import Logging
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

final class CallbackBox: @unchecked Sendable {
    // @unchecked: every mutable member is only touched under `lock`; the continuations of the
    // streams are thread-safe; callbacks run on the network thread and take the lock briefly,
    // never while calling into libmosquitto (except re-subscribing, outside the lock).
    struct Subscription: Sendable {
        var filter: String
        var qos: MQTTQoS
        var options: Int32
    }

    private struct PendingPublish {
        var topic: String
        var qos: MQTTQoS
        var continuation: CheckedContinuation<MQTTPublishAck, Error>
    }

    private struct PendingSubscribe {
        var subscription: Subscription
        var continuation: CheckedContinuation<MQTTQoS, Error>
    }

    private let lock = Lock()
    /// Bytes of PUBLISH/PUBACK packets, for a data budget (MQTTTraffic.swift).
    let traffic = TrafficTally()
    private let logger: Logger
    private let messages: AsyncStream<MQTTMessage>.Continuation
    private let events: AsyncStream<MQTTConnectionEvent>.Continuation
    private var connectWaiter: CheckedContinuation<MQTTConnAck, Error>?
    private var refusal: MQTTError?
    private var connected = false
    private var connectedSinceLastCheck = false
    private var closed = false
    private var streamsFinished = false
    private var lastLogError: String?
    private var pendingPublishes: [Int32: PendingPublish] = [:]
    private var earlyPublishAcks: [Int32: Int32] = [:]
    private var pendingSubscribes: [Int32: PendingSubscribe] = [:]
    private var earlySubacks: [Int32: Int32] = [:]
    private var pendingUnsubscribes: [Int32: (filter: String, continuation: CheckedContinuation<Void, Error>)] = [:]
    private var earlyUnsubacks: Set<Int32> = []
    private var resubscribeMids: [Int32: Subscription] = [:]
    private var subscriptions: [Subscription] = []

    init(logger: Logger, messages: AsyncStream<MQTTMessage>.Continuation, events: AsyncStream<MQTTConnectionEvent>.Continuation) {
        self.logger = logger
        self.messages = messages
        self.events = events
    }

    // MARK: installing the C callbacks

    private static func from(_ context: UnsafeMutableRawPointer?) -> CallbackBox {
        Unmanaged<CallbackBox>.fromOpaque(context!).takeUnretainedValue()
    }

    static func install(on mosq: OpaquePointer) {
        mosquitto_connect_v5_callback_set(mosq) { mosq, context, rc, flags, _ in
            CallbackBox.from(context).onConnect(mosq, rc: rc, flags: flags)
        }
        mosquitto_publish_v5_callback_set(mosq) { _, context, mid, rc, _ in
            CallbackBox.from(context).onPublish(mid: mid, reasonCode: rc)
        }
        mosquitto_subscribe_v5_callback_set(mosq) { _, context, mid, count, granted, _ in
            let first = (count > 0 && granted != nil) ? granted![0] : Int32(MQTTReasonCode.unspecifiedError.rawValue)
            CallbackBox.from(context).onSubscribe(mid: mid, granted: first)
        }
        mosquitto_unsubscribe_v5_callback_set(mosq) { _, context, mid, _ in
            CallbackBox.from(context).onUnsubscribe(mid: mid)
        }
        mosquitto_message_v5_callback_set(mosq) { _, context, message, properties in
            guard let message else { return }
            CallbackBox.from(context).onMessage(message.pointee, properties: properties)
        }
        mosquitto_log_callback_set(mosq) { _, context, level, text in
            guard let text else { return }
            CallbackBox.from(context).onLog(level: level, text: String(cString: text))
        }
    }

    // MARK: callbacks (network thread)

    private func onConnect(_ mosq: OpaquePointer?, rc: Int32, flags: Int32) {
        if rc == 0 {
            let sessionPresent = flags & 1 != 0
            let (waiter, toRestore): (CheckedContinuation<MQTTConnAck, Error>?, [Subscription]) = lock.withLock {
                connected = true
                connectedSinceLastCheck = true
                refusal = nil
                let waiter = connectWaiter
                connectWaiter = nil
                return (waiter, sessionPresent ? [] : subscriptions)
            }
            events.yield(.connected(sessionPresent: sessionPresent))
            // No session on the broker: subscribe again to what we had (SUBACKs are checked in onSubscribe).
            for subscription in toRestore {
                var mid: Int32 = 0
                let result = mosquitto_subscribe_v5(mosq, &mid, subscription.filter, subscription.qos.rawValue, subscription.options, nil)
                if result == MOSQ_ERR_SUCCESS.rawValue {
                    lock.withLock { resubscribeMids[mid] = subscription }
                } else {
                    logger.warning("mqtt could not restore a subscription",
                                   metadata: ["filter": "\(subscription.filter)", "error": "\(String(cString: mosquitto_strerror(result)))"])
                }
            }
            waiter?.resume(returning: MQTTConnAck(sessionPresent: sessionPresent))
        } else {
            let reason = MQTTReasonCode(rawValue: UInt8(clamping: rc))
            let error = MQTTError(operation: "connect", kind: .connectRefused, reasonCode: reason,
                                  message: "the broker refused the connection: \(reason)")
            let hasWaiter = lock.withLock {
                refusal = error
                return connectWaiter != nil
            }
            if !hasWaiter { events.yield(.connectFailed(error)) }
        }
    }

    private func onPublish(mid: Int32, reasonCode: Int32) {
        let pending: PendingPublish? = lock.withLock {
            if let pending = pendingPublishes.removeValue(forKey: mid) { return pending }
            earlyPublishAcks[mid] = reasonCode
            return nil
        }
        if let pending { Self.complete(pending, reasonCode: reasonCode) }
    }

    private func onSubscribe(mid: Int32, granted: Int32) {
        enum Outcome { case restored(Subscription), pending(PendingSubscribe), early }
        let outcome: Outcome = lock.withLock {
            if let restored = resubscribeMids.removeValue(forKey: mid) { return .restored(restored) }
            if let pending = pendingSubscribes.removeValue(forKey: mid) {
                if granted < 0x80 { record(pending.subscription) }
                return .pending(pending)
            }
            earlySubacks[mid] = granted
            return .early
        }
        switch outcome {
        case .restored(let subscription):
            if granted >= 0x80 {
                logger.warning("mqtt broker refused a restored subscription",
                               metadata: ["filter": "\(subscription.filter)", "reason": "\(MQTTReasonCode(rawValue: UInt8(clamping: granted)))"])
            } else {
                logger.debug("mqtt subscription restored", metadata: ["filter": "\(subscription.filter)"])
            }
        case .pending(let pending): Self.complete(pending, granted: granted)
        case .early: break
        }
    }

    private func onUnsubscribe(mid: Int32) {
        let pending = lock.withLock {
            if let pending = pendingUnsubscribes.removeValue(forKey: mid) {
                subscriptions.removeAll { $0.filter == pending.filter }
                return Optional(pending)
            }
            earlyUnsubacks.insert(mid)
            return nil
        }
        pending?.continuation.resume()
    }

    private func onMessage(_ message: mosquitto_message, properties: OpaquePointer?) {
        let topic = String(cString: message.topic)
        let payload = message.payloadlen > 0 && message.payload != nil
            ? Array(UnsafeRawBufferPointer(start: message.payload, count: Int(message.payloadlen))) : []
        let m = MQTTMessage(topic: topic, payload: payload, qos: MQTTQoS(rawValue: message.qos) ?? .atMostOnce,
                            retain: message.retain, properties: PropertyList.read(properties))
        traffic.delivered(m)
        messages.yield(m)
    }

    private func onLog(level: Int32, text: String) {
        if level & (MOSQ_LOG_ERR | MOSQ_LOG_WARNING) != 0 {
            lock.withLock { lastLogError = text }
        }
        logger.trace("libmosquitto: \(text)")
    }

    // MARK: registration (caller threads)

    func setConnectWaiter(_ continuation: CheckedContinuation<MQTTConnAck, Error>) {
        lock.withLock {
            precondition(connectWaiter == nil, "two connect() calls waiting")
            connectWaiter = continuation
        }
    }

    var hasConnectWaiter: Bool { lock.withLock { connectWaiter != nil } }

    func failConnectWaiter(_ error: MQTTError) {
        let waiter = lock.withLock {
            let waiter = connectWaiter
            connectWaiter = nil
            return waiter
        }
        waiter?.resume(throwing: error)
    }

    func registerPublish(mid: Int32, topic: String, qos: MQTTQoS, continuation: CheckedContinuation<MQTTPublishAck, Error>) {
        let pending = PendingPublish(topic: topic, qos: qos, continuation: continuation)
        let early: Int32? = lock.withLock {
            if let rc = earlyPublishAcks.removeValue(forKey: mid) { return rc }
            pendingPublishes[mid] = pending
            return nil
        }
        if let early { Self.complete(pending, reasonCode: early) }
    }

    func registerSubscribe(mid: Int32, subscription: Subscription, continuation: CheckedContinuation<MQTTQoS, Error>) {
        let pending = PendingSubscribe(subscription: subscription, continuation: continuation)
        let early: Int32? = lock.withLock {
            if let granted = earlySubacks.removeValue(forKey: mid) {
                if granted < 0x80 { record(subscription) }
                return granted
            }
            pendingSubscribes[mid] = pending
            return nil
        }
        if let early { Self.complete(pending, granted: early) }
    }

    func registerUnsubscribe(mid: Int32, filter: String, continuation: CheckedContinuation<Void, Error>) {
        let early: Bool = lock.withLock {
            if earlyUnsubacks.remove(mid) != nil {
                subscriptions.removeAll { $0.filter == filter }
                return true
            }
            pendingUnsubscribes[mid] = (filter, continuation)
            return false
        }
        if early { continuation.resume() }
    }

    /// Under `lock`.
    private func record(_ subscription: Subscription) {
        subscriptions.removeAll { $0.filter == subscription.filter }
        subscriptions.append(subscription)
    }

    private static func complete(_ pending: PendingPublish, reasonCode: Int32) {
        let reason = MQTTReasonCode(rawValue: UInt8(clamping: reasonCode))
        if reason.isFailure {
            pending.continuation.resume(throwing: MQTTError(
                operation: "publish to \(pending.topic)", kind: .publishRefused, reasonCode: reason,
                message: "the broker refused the message: \(reason)"))
        } else {
            pending.continuation.resume(returning: MQTTPublishAck(reasonCode: reason))
        }
    }

    private static func complete(_ pending: PendingSubscribe, granted: Int32) {
        if granted >= 0x80 {
            let reason = MQTTReasonCode(rawValue: UInt8(clamping: granted))
            pending.continuation.resume(throwing: MQTTError(
                operation: "subscribe to \(pending.subscription.filter)", kind: .subscribeRefused, reasonCode: reason,
                message: "the broker refused the subscription: \(reason)"))
        } else {
            pending.continuation.resume(returning: MQTTQoS(rawValue: granted) ?? .atMostOnce)
        }
    }

    // MARK: connection state (network thread)

    func takeConnectedSinceLastCheck() -> Bool {
        lock.withLock {
            defer { connectedSinceLastCheck = false }
            return connectedSinceLastCheck
        }
    }

    func takeRefusal() -> MQTTError? {
        lock.withLock {
            defer { refusal = nil }
            return refusal
        }
    }

    func clearLastLogError() { lock.withLock { lastLogError = nil } }

    /// The connection ended unexpectedly: report it, fail what cannot survive a reconnect.
    func connectionEnded(_ error: MQTTError) {
        let (wasConnected, publishes, subscribes, unsubscribes) = lock.withLock {
            let wasConnected = connected
            connected = false
            let publishes = pendingPublishes.filter { $0.value.qos == .atMostOnce }
            for mid in publishes.keys { pendingPublishes[mid] = nil }
            let subscribes = pendingSubscribes
            let unsubscribes = pendingUnsubscribes
            pendingSubscribes.removeAll()
            pendingUnsubscribes.removeAll()
            resubscribeMids.removeAll()
            return (wasConnected, Array(publishes.values), Array(subscribes.values), Array(unsubscribes.values))
        }
        if wasConnected {
            events.yield(.disconnected(error))
        } else if error.kind != .connectRefused {
            events.yield(.connectFailed(error))
        }
        let lost = { (operation: String) in
            MQTTError(operation: operation, kind: .notConnected,
                      message: "the connection was lost before the broker answered (\(error.message))")
        }
        for p in publishes { p.continuation.resume(throwing: lost("publish to \(p.topic)")) }
        for s in subscribes { s.continuation.resume(throwing: lost("subscribe to \(s.subscription.filter)")) }
        for u in unsubscribes { u.continuation.resume(throwing: lost("unsubscribe from \(u.filter)")) }
    }

    /// The network thread is gone; when closing for good, fail everything still waiting.
    func networkThreadEnded(closing: Bool) {
        guard closing else { return }
        let (publishes, subscribes, unsubscribes) = lock.withLock {
            connected = false
            defer {
                pendingPublishes.removeAll()
                pendingSubscribes.removeAll()
                pendingUnsubscribes.removeAll()
            }
            return (Array(pendingPublishes.values), Array(pendingSubscribes.values), Array(pendingUnsubscribes.values))
        }
        events.yield(.disconnected(nil))
        let closedError = { (operation: String) in
            MQTTError(operation: operation, kind: .closed, message: "the client was disconnected before the broker answered")
        }
        for p in publishes { p.continuation.resume(throwing: closedError("publish to \(p.topic)")) }
        for s in subscribes { s.continuation.resume(throwing: closedError("subscribe to \(s.subscription.filter)")) }
        for u in unsubscribes { u.continuation.resume(throwing: closedError("unsubscribe from \(u.filter)")) }
    }

    func markClosed() { lock.withLock { closed = true } }

    func checkOpen(_ operation: String) throws {
        if lock.withLock({ closed }) {
            throw MQTTError(operation: operation, kind: .closed, message: "the client was disconnected")
        }
    }

    func emit(_ event: MQTTConnectionEvent) { events.yield(event) }

    func finishStreams() {
        let first = lock.withLock {
            defer { streamsFinished = true }
            return !streamsFinished
        }
        if first {
            messages.finish()
            events.finish()
        }
    }

    /// A Swift error for a libmosquitto return code, with the library's last logged error.
    func error(forLibraryCode rc: Int32, operation: String) -> MQTTError {
        let savedErrno = errno
        var message = rc == MOSQ_ERR_ERRNO.rawValue ? String(cString: strerror(savedErrno)) : String(cString: mosquitto_strerror(rc))
        let logged = lock.withLock { lastLogError }
        if let logged { message += " (libmosquitto: \(logged))" }
        let kind: MQTTError.Kind
        switch rc {
        case MOSQ_ERR_TLS.rawValue, MOSQ_ERR_TLS_HANDSHAKE.rawValue: kind = .tls
        case MOSQ_ERR_NO_CONN.rawValue: kind = .notConnected
        case MOSQ_ERR_ERRNO.rawValue, MOSQ_ERR_CONN_LOST.rawValue, MOSQ_ERR_EAI.rawValue, MOSQ_ERR_KEEPALIVE.rawValue:
            kind = (logged?.contains("OpenSSL") ?? false) || (logged?.contains("certificate") ?? false) ? .tls : .connection
        case MOSQ_ERR_INVAL.rawValue, MOSQ_ERR_MALFORMED_UTF8.rawValue, MOSQ_ERR_PAYLOAD_SIZE.rawValue,
             MOSQ_ERR_OVERSIZE_PACKET.rawValue, MOSQ_ERR_QOS_NOT_SUPPORTED.rawValue, MOSQ_ERR_NOT_SUPPORTED.rawValue:
            kind = .usage
        default: kind = .library
        }
        return MQTTError(operation: operation, kind: kind, message: message)
    }
}

/// An owned mosquitto_property list built from `MQTTMessageProperties`, and the reverse.
struct PropertyList {
    private(set) var pointer: OpaquePointer?

    init(_ p: MQTTMessageProperties, operation: String) throws {
        pointer = nil
        if p.isEmpty { return }
        var list: OpaquePointer?
        var rc = MOSQ_ERR_SUCCESS.rawValue
        func add(_ result: Int32) { if rc == MOSQ_ERR_SUCCESS.rawValue { rc = result } }
        if let contentType = p.contentType {
            add(mosquitto_property_add_string(&list, Int32(MQTT_PROP_CONTENT_TYPE.rawValue), contentType))
        }
        for user in p.userProperties {
            add(mosquitto_property_add_string_pair(&list, Int32(MQTT_PROP_USER_PROPERTY.rawValue), user.name, user.value))
        }
        if let expiry = p.messageExpiryInterval {
            add(mosquitto_property_add_int32(&list, Int32(MQTT_PROP_MESSAGE_EXPIRY_INTERVAL.rawValue), expiry))
        }
        if let topic = p.responseTopic {
            add(mosquitto_property_add_string(&list, Int32(MQTT_PROP_RESPONSE_TOPIC.rawValue), topic))
        }
        if let data = p.correlationData {
            guard data.count <= 65_535 else {
                mosquitto_property_free_all(&list)
                throw MQTTError(operation: operation, kind: .usage, message: "correlation data longer than 65535 bytes")
            }
            add(data.withUnsafeBytes { mosquitto_property_add_binary(&list, Int32(MQTT_PROP_CORRELATION_DATA.rawValue), $0.baseAddress, UInt16(data.count)) })
        }
        guard rc == MOSQ_ERR_SUCCESS.rawValue else {
            mosquitto_property_free_all(&list)
            throw MQTTError(operation: operation, kind: .usage, message: "bad MQTT properties: \(String(cString: mosquitto_strerror(rc)))")
        }
        pointer = list
    }

    mutating func free() {
        if pointer != nil { mosquitto_property_free_all(&pointer) }
        pointer = nil
    }

    /// After the library took ownership (a successful will_set_v5).
    mutating func releaseOwnership() { pointer = nil }

    static func read(_ list: OpaquePointer?) -> MQTTMessageProperties {
        var result = MQTTMessageProperties()
        guard let list else { return result }
        var text: UnsafeMutablePointer<CChar>?
        if mosquitto_property_read_string(list, Int32(MQTT_PROP_CONTENT_TYPE.rawValue), &text, false) != nil, let text {
            result.contentType = String(cString: text)
            cFree(text)
        }
        text = nil
        if mosquitto_property_read_string(list, Int32(MQTT_PROP_RESPONSE_TOPIC.rawValue), &text, false) != nil, let text {
            result.responseTopic = String(cString: text)
            cFree(text)
        }
        var expiry: UInt32 = 0
        if mosquitto_property_read_int32(list, Int32(MQTT_PROP_MESSAGE_EXPIRY_INTERVAL.rawValue), &expiry, false) != nil {
            result.messageExpiryInterval = expiry
        }
        var binary: UnsafeMutableRawPointer?
        var length: UInt16 = 0
        if mosquitto_property_read_binary(list, Int32(MQTT_PROP_CORRELATION_DATA.rawValue), &binary, &length, false) != nil {
            result.correlationData = binary.map { Array(UnsafeRawBufferPointer(start: $0, count: Int(length))) } ?? []
            cFree(binary)
        }
        var current: OpaquePointer? = list
        var skipFirst = false
        while true {
            var name: UnsafeMutablePointer<CChar>?
            var value: UnsafeMutablePointer<CChar>?
            guard let found = mosquitto_property_read_string_pair(current, Int32(MQTT_PROP_USER_PROPERTY.rawValue), &name, &value, skipFirst) else { break }
            if let name, let value { result.userProperties.append(MQTTUserProperty(String(cString: name), String(cString: value))) }
            cFree(name)
            cFree(value)
            current = found
            skipFirst = true
        }
        return result
    }
}

/// free(3), under a name no member hides.
private func cFree(_ pointer: UnsafeMutableRawPointer?) { free(pointer) }
