// CallbackBox: the C context of a libmosquitto handle. Its callbacks run on the network thread
// and only hand events over: to the call waiting for that packet (`PendingAnswers`), to the
// `messages`/`events` streams, or to the network thread's next turn (CONNACK seen, refusal).
// Never calls back into the owner. All its state is one `Mutex<State>`; continuations are
// resumed after the lock is released.
import CMosquitto
import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

final class CallbackBox: Sendable {
    struct PublishRequest: Sendable {
        var topic: String
        var qos: MQTTQoS
    }

    private struct State {
        var connectWaiter: CheckedContinuation<MQTTConnAck, Error>?
        var refusal: MQTTError?
        var connected = false
        var connectedSinceLastCheck = false
        var closed = false
        var streamsFinished = false
        var lastLogError: String?
        var publishes = PendingAnswers<PublishRequest, Int32, MQTTPublishAck>()
        var subscribes = PendingAnswers<Subscription, Int32, MQTTQoS>()
        var unsubscribes = PendingAnswers<String, Void, Void>()
        var subscriptions = Subscriptions()
    }

    private let state = Mutex(State())
    /// Bytes of PUBLISH/PUBACK packets, for a data budget (MQTTTraffic.swift).
    let traffic = TrafficTally()
    private let logger: Logger
    private let messages: AsyncStream<MQTTMessage>.Continuation
    private let events: AsyncStream<MQTTConnectionEvent>.Continuation

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
        guard rc == 0 else {
            let reason = MQTTReasonCode(rawValue: UInt8(clamping: rc))
            let error = MQTTError(operation: "connect", kind: .connectRefused, reasonCode: reason,
                                  message: "the broker refused the connection: \(reason)")
            let hasWaiter = state.withLock { s in
                s.refusal = error
                return s.connectWaiter != nil
            }
            if !hasWaiter { events.yield(.connectFailed(error)) }
            return
        }
        let sessionPresent = flags & 1 != 0
        let (waiter, toRestore) = state.withLock { s in
            s.connected = true
            s.connectedSinceLastCheck = true
            s.refusal = nil
            defer { s.connectWaiter = nil }
            return (s.connectWaiter, s.subscriptions.toRestore(sessionPresent: sessionPresent))
        }
        events.yield(.connected(sessionPresent: sessionPresent))
        // No session on the broker: subscribe again to what we had (SUBACKs are checked in onSubscribe).
        for subscription in toRestore {
            var mid: Int32 = 0
            let result = mosquitto_subscribe_v5(mosq, &mid, subscription.filter, subscription.qos.rawValue, subscription.options, nil)
            if result == MOSQ_ERR_SUCCESS.rawValue {
                state.withLock { $0.subscriptions.restoring(subscription, mid: mid) }
            } else {
                logger.warning("mqtt could not restore a subscription",
                               metadata: ["filter": "\(subscription.filter)", "error": "\(String(cString: mosquitto_strerror(result)))"])
            }
        }
        waiter?.resume(returning: MQTTConnAck(sessionPresent: sessionPresent))
    }

    private func onPublish(mid: Int32, reasonCode: Int32) {
        if case .waiter(let w) = state.withLock({ $0.publishes.answer(mid, reasonCode) }) {
            w.continuation.resume(with: Self.publishOutcome(w.request, reasonCode))
        }
    }

    private func onSubscribe(mid: Int32, granted: Int32) {
        enum Outcome { case restored(Subscription), waiter(PendingAnswers<Subscription, Int32, MQTTQoS>.Waiter), none }
        let outcome: Outcome = state.withLock { s in
            if let restored = s.subscriptions.takeRestoring(mid: mid) { return .restored(restored) }
            switch s.subscribes.answer(mid, granted) {
            case .waiter(let w):
                if granted < 0x80 { s.subscriptions.grant(w.request) }
                return .waiter(w)
            case .abandoned(let subscription):
                // Its caller gave up waiting, but the broker has the subscription: keep it.
                if granted < 0x80 { s.subscriptions.grant(subscription) }
                return .none
            case .early:
                return .none
            }
        }
        switch outcome {
        case .restored(let subscription):
            if granted >= 0x80 {
                logger.warning("mqtt broker refused a restored subscription",
                               metadata: ["filter": "\(subscription.filter)", "reason": "\(MQTTReasonCode(rawValue: UInt8(clamping: granted)))"])
            } else {
                logger.debug("mqtt subscription restored", metadata: ["filter": "\(subscription.filter)"])
            }
        case .waiter(let w): w.continuation.resume(with: Self.subscribeOutcome(w.request, granted))
        case .none: break
        }
    }

    private func onUnsubscribe(mid: Int32) {
        let waiter: PendingAnswers<String, Void, Void>.Waiter? = state.withLock { s in
            switch s.unsubscribes.answer(mid, ()) {
            case .waiter(let w):
                s.subscriptions.remove(filter: w.request)
                return w
            case .abandoned(let filter):
                s.subscriptions.remove(filter: filter)
                return nil
            case .early:
                return nil
            }
        }
        waiter?.continuation.resume()
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
            state.withLock { $0.lastLogError = text }
        }
        logger.trace("libmosquitto: \(text)")
    }

    // MARK: waiting calls (caller threads)

    func setConnectWaiter(_ continuation: CheckedContinuation<MQTTConnAck, Error>) {
        state.withLock { s in
            precondition(s.connectWaiter == nil, "two connect() calls waiting")
            s.connectWaiter = continuation
        }
    }

    /// Fails the waiting `connect()`; false when none waits (its CONNACK came first).
    @discardableResult
    func failConnectWaiter(_ error: any Error) -> Bool {
        let waiter = state.withLock { s in
            defer { s.connectWaiter = nil }
            return s.connectWaiter
        }
        waiter?.resume(throwing: error)
        return waiter != nil
    }

    func registerPublish(mid: Int32, _ request: PublishRequest, _ continuation: CheckedContinuation<MQTTPublishAck, Error>) {
        if let early = state.withLock({ $0.publishes.register(mid, request, continuation) }) {
            continuation.resume(with: Self.publishOutcome(request, early))
        }
    }

    func registerSubscribe(mid: Int32, _ subscription: Subscription, _ continuation: CheckedContinuation<MQTTQoS, Error>) {
        let early: Int32? = state.withLock { s in
            guard let granted = s.subscribes.register(mid, subscription, continuation) else { return nil }
            if granted < 0x80 { s.subscriptions.grant(subscription) }
            return granted
        }
        if let early { continuation.resume(with: Self.subscribeOutcome(subscription, early)) }
    }

    func registerUnsubscribe(mid: Int32, filter: String, _ continuation: CheckedContinuation<Void, Error>) {
        let early: Bool = state.withLock { s in
            guard s.unsubscribes.register(mid, filter, continuation) != nil else { return false }
            s.subscriptions.remove(filter: filter)
            return true
        }
        if early { continuation.resume() }
    }

    /// The task waiting for publish `mid` was cancelled.
    func cancelPublish(mid: Int32) {
        state.withLock { $0.publishes.cancel(mid) }?.continuation.resume(throwing: CancellationError())
    }

    /// The task waiting for subscribe `mid` was cancelled.
    func cancelSubscribe(mid: Int32) {
        state.withLock { $0.subscribes.cancel(mid) }?.continuation.resume(throwing: CancellationError())
    }

    /// The task waiting for unsubscribe `mid` was cancelled.
    func cancelUnsubscribe(mid: Int32) {
        state.withLock { $0.unsubscribes.cancel(mid) }?.continuation.resume(throwing: CancellationError())
    }

    private static func publishOutcome(_ request: PublishRequest, _ reasonCode: Int32) -> Result<MQTTPublishAck, Error> {
        let reason = MQTTReasonCode(rawValue: UInt8(clamping: reasonCode))
        guard reason.isFailure else { return .success(MQTTPublishAck(reasonCode: reason)) }
        return .failure(MQTTError(operation: "publish to \(request.topic)", kind: .publishRefused, reasonCode: reason,
                                  message: "the broker refused the message: \(reason)"))
    }

    private static func subscribeOutcome(_ subscription: Subscription, _ granted: Int32) -> Result<MQTTQoS, Error> {
        guard granted >= 0x80 else { return .success(MQTTQoS(rawValue: granted) ?? .atMostOnce) }
        let reason = MQTTReasonCode(rawValue: UInt8(clamping: granted))
        return .failure(MQTTError(operation: "subscribe to \(subscription.filter)", kind: .subscribeRefused, reasonCode: reason,
                                  message: "the broker refused the subscription: \(reason)"))
    }

    // MARK: connection state (network thread)

    /// True once after each CONNACK that accepted the connection.
    func takeConnectedSinceLastCheck() -> Bool {
        state.withLock { s in
            defer { s.connectedSinceLastCheck = false }
            return s.connectedSinceLastCheck
        }
    }

    /// The broker's refusal of the last CONNECT, if it refused.
    func takeRefusal() -> MQTTError? {
        state.withLock { s in
            defer { s.refusal = nil }
            return s.refusal
        }
    }

    func clearLastLogError() { state.withLock { $0.lastLogError = nil } }

    /// The connection ended unexpectedly: report it, fail what cannot survive a reconnect
    /// (QoS 0 publishes, subscribes, unsubscribes; libmosquitto resends QoS 1 publishes).
    func connectionEnded(_ error: MQTTError) {
        let (wasConnected, publishes, subscribes, unsubscribes) = state.withLock { s in
            defer { s.connected = false }
            s.subscriptions.connectionLost()
            return (s.connected, s.publishes.removeAll { $0.qos == .atMostOnce },
                    s.subscribes.removeAll { _ in true }, s.unsubscribes.removeAll { _ in true })
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
        for p in publishes { p.continuation.resume(throwing: lost("publish to \(p.request.topic)")) }
        for s in subscribes { s.continuation.resume(throwing: lost("subscribe to \(s.request.filter)")) }
        for u in unsubscribes { u.continuation.resume(throwing: lost("unsubscribe from \(u.request)")) }
    }

    /// The network thread is gone; when closing for good, fail everything still waiting.
    func networkThreadEnded(closing: Bool) {
        guard closing else { return }
        let (publishes, subscribes, unsubscribes) = state.withLock { s in
            s.connected = false
            return (s.publishes.removeAll { _ in true }, s.subscribes.removeAll { _ in true }, s.unsubscribes.removeAll { _ in true })
        }
        events.yield(.disconnected(nil))
        let closedError = { (operation: String) in
            MQTTError(operation: operation, kind: .closed, message: "the client was disconnected before the broker answered")
        }
        for p in publishes { p.continuation.resume(throwing: closedError("publish to \(p.request.topic)")) }
        for s in subscribes { s.continuation.resume(throwing: closedError("subscribe to \(s.request.filter)")) }
        for u in unsubscribes { u.continuation.resume(throwing: closedError("unsubscribe from \(u.request)")) }
    }

    func markClosed() { state.withLock { $0.closed = true } }

    func checkOpen(_ operation: String) throws {
        if state.withLock({ $0.closed }) {
            throw MQTTError(operation: operation, kind: .closed, message: "the client was disconnected")
        }
    }

    func emit(_ event: MQTTConnectionEvent) { events.yield(event) }

    func finishStreams() {
        let first = state.withLock { s in
            defer { s.streamsFinished = true }
            return !s.streamsFinished
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
        let logged = state.withLock { $0.lastLogError }
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
