// MQTTClient: one libmosquitto client (struct mosquitto*), MQTT v5, with its own network thread.
//
// Theory of operation:
// - `MQTTConnectionCore` owns the handle and frees it exactly once, in its deinit, which can
//   only run after the network thread ended (the thread holds the core) and the client let go.
// - Threads (docs/concurrency.md): libmosquitto is used in threaded mode, so publish,
//   subscribe and disconnect may be called from any thread (the library queues the packet and
//   we wake the loop); everything else — connect, reconnect, the loop's reads and writes — runs
//   on the network thread only, which checks it (`networkThread`).
// - The network thread (NetworkThread.swift) connects (a blocking connect happens there, never
//   on the cooperative pool), then runs the loop until the connection breaks; then it waits an
//   exponential backoff with jitter and reconnects. What to do when is decided by a sans-IO
//   `ConnectionStateMachine`; the thread only does it.
//   We do not use `mosquitto_loop_start`: its built-in reconnect has whole-second delays, no
//   jitter, and its thread quits for good on TLS or protocol errors.
// - The loop is poll(2) over the socket and an eventfd (`LoopWaker`), then the library's
//   external-loop calls (`mosquitto_loop_read`/`_write`/`_misc`), not `mosquitto_loop`: that one
//   uses select(2) and returns MOSQ_ERR_INVAL for any socket numbered FD_SETSIZE (1024) or above,
//   so a process with many open files (a backend with many HTTP or database connections, a
//   fleet simulation with a log per device) could never get its connection going: every
//   CONNECT went unsent and the broker logged "Client <unknown> closed its connection".
//   During a TLS handshake (TLS 1.3 finishes it on the first reads; see `loopOnce`)
//   `mosquitto_loop` is still used while the descriptors fit, which libmosquitto handles itself.
// - libmosquitto's callbacks run on the network thread and only hand events over: they reach
//   a `CallbackBox` (the C context pointer, via Unmanaged), which resumes the continuation
//   waiting for that packet id (`PendingAnswers`), or yields to the `messages`/`events` streams.
// - A PUBACK can arrive before `mosquitto_publish_v5` has returned the packet id to the
//   publishing thread; the box keeps such early acks until the publisher registers.
// - Cancellation: every wait for the broker (CONNACK, PUBACK, SUBACK, UNSUBACK) ends at once
//   with `CancellationError` when its task is cancelled. What was sent stays sent: a cancelled
//   QoS 1 publish may still reach the broker (libmosquitto keeps and resends it); a cancelled
//   `connect()` ends the network thread's attempt, so `connect()` may be called again.
// - QoS 1 publishes survive reconnects (libmosquitto resends them); QoS 0 publishes and
//   SUBSCRIBEs in flight when the connection drops fail with `.notConnected`. When a
//   reconnect finds no session on the broker, the client subscribes again to what it had.
// - Shutdown: `disconnect()` sends DISCONNECT, fails what still waits with `.closed`, and
//   returns when the network thread ended (at most about 2 s after it was asked to).
import CMosquitto
import FieldlogCore
import Logging
import Synchronization
import Threading
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An MQTT v5 client. Thread-safe; every method may be called from any task.
public final class MQTTClient: Sendable {
    private let core: MQTTConnectionCore

    /// Messages received on the client's subscriptions, in arrival order. Single consumer.
    /// Unbounded: the consumer must keep up (the broker's inflight limit bounds QoS 1 only).
    public let messages: AsyncStream<MQTTMessage>
    /// Connection events (connected, disconnected, reconnecting, connect failures), in order.
    public let events: AsyncStream<MQTTConnectionEvent>

    /// Creates the client and applies the configuration; nothing touches the network until
    /// `connect()`. Throws for bad configuration (e.g. unreadable CA file, keep-alive < 5 s).
    public init(configuration: MQTTConfiguration, logger: Logger = Logger(label: "fieldlog.mqtt")) throws {
        let (messages, messageContinuation) = AsyncStream.makeStream(of: MQTTMessage.self)
        let (events, eventContinuation) = AsyncStream.makeStream(of: MQTTConnectionEvent.self)
        self.messages = messages
        self.events = events
        core = try MQTTConnectionCore(configuration: configuration, logger: logger,
                                      messages: messageContinuation, events: eventContinuation)
    }

    deinit {
        core.requestStop(reason: .success)
    }

    /// Connects and waits for the broker's CONNACK. Throws when the network, TLS or the broker
    /// (e.g. bad user name or password) refuses; afterwards the connection is kept up with
    /// automatic reconnects until `disconnect()`. A cancelled task gets `CancellationError` at
    /// once and the attempt is given up; `connect()` may be called again.
    @discardableResult
    public func connect() async throws -> MQTTConnAck {
        try await core.connect()
    }

    /// Publishes `payload` on `topic`. Returns when the broker acknowledged it (QoS 1: PUBACK)
    /// or, for QoS 0, when it was written to the socket. Throws `.publishRefused` with the
    /// broker's reason when the PUBACK says so (e.g. "Not authorized (0x87)").
    /// A QoS 1 publish made while disconnected is queued and completes after reconnecting.
    /// A cancelled task gets `CancellationError` at once; the message may still be delivered.
    @discardableResult
    public func publish(_ topic: String, payload: [UInt8], qos: MQTTQoS = .atLeastOnce, retain: Bool = false,
                        properties: MQTTMessageProperties = .init()) async throws -> MQTTPublishAck {
        try await core.publish(topic: topic, payload: payload, qos: qos, retain: retain, properties: properties)
    }

    /// Tells `observer` the size of every PUBLISH/PUBACK from now on (see MQTTTraffic.swift).
    public func observeTraffic(_ observer: any MQTTTrafficObserver) {
        core.observeTraffic(observer)
    }

    /// Subscribes to `filter` (wildcards and `$share/group/filter` allowed); returns the QoS the
    /// broker granted, or throws `.subscribeRefused` with its reason. A cancelled task gets
    /// `CancellationError` at once (a subscription the broker grants later is still kept).
    @discardableResult
    public func subscribe(_ filter: String, qos: MQTTQoS = .atLeastOnce, noLocal: Bool = false) async throws -> MQTTQoS {
        try await core.subscribe(filter: filter, qos: qos, noLocal: noLocal)
    }

    /// Removes a subscription.
    public func unsubscribe(_ filter: String) async throws {
        try await core.unsubscribe(filter: filter)
    }

    /// Disconnects for good: sends DISCONNECT (reason 0x04 asks the broker to publish the will
    /// anyway when `sendWill`), stops reconnecting, fails pending operations with `.closed`
    /// and finishes both streams. Waits until the network thread ended.
    public func disconnect(sendWill: Bool = false) async {
        await core.disconnect(reason: sendWill ? .disconnectWithWill : .success)
    }

    /// Stops reading from the broker (backpressure): the socket is no longer polled for input,
    /// so the kernel's receive buffer fills and TCP flow control makes the broker hold further
    /// messages (it queues them for this session). Writes (acks, publishes) go on. While paused
    /// the client still reads once every half keep-alive interval, so the broker's PINGRESP
    /// arrives and the connection stays up; messages read then are delivered as usual, so a
    /// consumer must tolerate a small overshoot. Idempotent.
    public func pauseReading() { core.setReadingPaused(true) }

    /// Resumes reading after `pauseReading()`. Idempotent.
    public func resumeReading() { core.setReadingPaused(false) }

    /// Breaks the TCP connection without DISCONNECT, as a network failure would (the broker
    /// publishes the will; the client reconnects). For tests of failure handling.
    @_spi(Testing) public func simulateConnectionLoss() {
        core.simulateConnectionLoss()
    }
}

// MARK: - core

// Other threads use `handle` only through libmosquitto's thread-safe calls (publish,
// subscribe, unsubscribe, disconnect: threaded mode); every other use is on the network
// thread, which `networkThread` checks. The thread-control variables are only touched with
// `control` locked, `lastReadAt` only on the network thread; the rest is immutable or Sendable.
// @unchecked: the handle is used per libmosquitto's threaded mode and the rest is locked (above).
final class MQTTConnectionCore: @unchecked Sendable {
    let handle: OpaquePointer
    let box: CallbackBox
    let configuration: MQTTConfiguration
    let logger: Logger
    let backoff: ReconnectBackoff
    let waker: LoopWaker
    /// Guards the thread-control variables below; the backoff waits on it.
    let control = ConditionLock()
    var threadRunning = false
    var stopRequested = false
    /// The network thread has told its state machine about `stopRequested`.
    var stopSeen = false
    /// The waiting `connect()` was cancelled; the network thread takes it on its next turn.
    var abandonRequested = false
    /// The running network thread is ending because its `connect()` was cancelled; stays set
    /// after the thread has taken the request (`abandonRequested`), until the thread ends, so a
    /// new `connect()` waits for it instead of finding a thread still running.
    var abandoning = false
    var threadExitWaiters: [CheckedContinuation<Void, Never>] = []
    /// The network thread, while it runs: the calls only it may make check it.
    let networkThread = ThreadIdentity()
    /// Backpressure (`pauseReading`); read by the network thread on every turn.
    let readingPaused = Atomic<Bool>(false)
    /// When the network thread last polled the socket for input (network thread only).
    var lastReadAt = ContinuousClock.now

    private static let libraryInitialised: Bool = mosquitto_lib_init() == MOSQ_ERR_SUCCESS.rawValue

    init(configuration: MQTTConfiguration, logger: Logger,
         messages: AsyncStream<MQTTMessage>.Continuation, events: AsyncStream<MQTTConnectionEvent>.Continuation) throws {
        precondition(Self.libraryInitialised, "mosquitto_lib_init failed")
        let operation = "configure client \(configuration.endpointDescription)"
        guard !configuration.clientID.isEmpty else {
            throw MQTTError(operation: operation, kind: .usage, message: "the client id must not be empty")
        }
        let keepAliveSeconds = configuration.keepAlive.components.seconds
        guard keepAliveSeconds >= 5, keepAliveSeconds <= 65_535 else {
            throw MQTTError(operation: operation, kind: .usage, message: "keepAlive must be 5...65535 s, not \(configuration.keepAlive)")
        }
        guard (1...65_535).contains(configuration.port) else {
            throw MQTTError(operation: operation, kind: .usage, message: "port \(configuration.port) is out of range")
        }
        guard configuration.connectTimeout > .zero else {
            throw MQTTError(operation: operation, kind: .usage, message: "connectTimeout must be positive")
        }
        let policy = configuration.reconnect
        guard policy.minDelay > .zero, policy.maxDelay >= policy.minDelay, (0...1).contains(policy.jitter) else {
            throw MQTTError(operation: operation, kind: .usage, message: "reconnect policy needs 0 < minDelay <= maxDelay and jitter in 0...1")
        }
        self.configuration = configuration
        self.logger = logger
        backoff = ReconnectBackoff(policy: policy)
        waker = try LoopWaker(operation: operation)
        box = CallbackBox(logger: logger, messages: messages, events: events)
        let context = Unmanaged.passUnretained(box).toOpaque()
        guard let mosq = mosquitto_new(configuration.clientID, configuration.cleanStart, context) else {
            throw MQTTError(operation: operation, kind: .library, message: "mosquitto_new failed: \(String(cString: strerror(errno)))")
        }
        // Configure before storing `handle`: once every stored property is set, the object is
        // fully initialised and a later `throw` runs `deinit`, which destroys `handle`. Destroying
        // it here as well (as we once did) freed the mosquitto struct twice on every bad
        // configuration (e.g. an unreadable TLS file): glibc heap corruption that surfaced later
        // in unrelated, allocation-heavy code ("corrupted size vs. prev_size"). Now the handle is
        // destroyed exactly once: here when configuring fails, otherwise in `deinit`.
        do {
            try Self.configure(mosq, configuration, operation)
        } catch {
            mosquitto_destroy(mosq)
            throw error
        }
        CallbackBox.install(on: mosq)
        handle = mosq
    }

    deinit {
        // Only reached when the network thread ended (it holds the core) and no client holds it.
        mosquitto_destroy(handle)
        box.finishStreams()
    }

    private static func configure(_ mosq: OpaquePointer, _ c: MQTTConfiguration, _ operation: String) throws {
        func check(_ rc: Int32, _ what: String) throws {
            guard rc == MOSQ_ERR_SUCCESS.rawValue else {
                throw MQTTError(operation: operation, kind: rc == MOSQ_ERR_INVAL.rawValue ? .usage : .library,
                                message: "\(what): \(String(cString: mosquitto_strerror(rc)))")
            }
        }
        try check(mosquitto_int_option(mosq, MOSQ_OPT_PROTOCOL_VERSION, Int32(MQTT_PROTOCOL_V5)), "set MQTT v5")
        try check(mosquitto_threaded_set(mosq, true), "set threaded mode")
        if c.username != nil || c.password != nil {
            try check(mosquitto_username_pw_set(mosq, c.username, c.password), "set user name and password")
        }
        if let tls = c.tls {
            for file in [tls.caFile, tls.certificateFile, tls.keyFile].compactMap({ $0 }) where access(file, R_OK) != 0 {
                throw MQTTError(operation: operation, kind: .usage, message: "TLS file \(file) is missing or unreadable")
            }
            guard (tls.certificateFile == nil) == (tls.keyFile == nil) else {
                throw MQTTError(operation: operation, kind: .usage, message: "a TLS client certificate needs its key file, and a key its certificate")
            }
            try check(mosquitto_tls_set(mosq, tls.caFile, nil, tls.certificateFile, tls.keyFile, nil), "set TLS files")
            try check(mosquitto_tls_insecure_set(mosq, tls.insecureSkipHostnameCheck), "set TLS host name check")
        }
        if let will = c.will {
            var properties = try PropertyList(will.properties, operation: operation + " (will properties)")
            let rc = will.payload.withUnsafeBytes { bytes in
                mosquitto_will_set_v5(mosq, will.topic, Int32(bytes.count), bytes.baseAddress, will.qos.rawValue, will.retain,
                                      properties.pointer)
            }
            if rc == MOSQ_ERR_SUCCESS.rawValue {
                properties.releaseOwnership() // libmosquitto owns the list now
            } else {
                properties.free()
            }
            try check(rc, "set the will on \(will.topic)")
        }
    }

    // MARK: operations

    func publish(topic: String, payload: [UInt8], qos: MQTTQoS, retain: Bool,
                 properties: MQTTMessageProperties) async throws -> MQTTPublishAck {
        let operation = "publish to \(topic)"
        try box.checkOpen(operation)
        var list = try PropertyList(properties, operation: operation)
        defer { list.free() }
        let propertyPointer = list.pointer
        let handle = self.handle
        let box = self.box
        return try await awaitAnswer(operation, allowQueued: qos != .atMostOnce) {
            var mid: Int32 = 0
            let rc = payload.withUnsafeBytes { bytes in
                mosquitto_publish_v5(handle, &mid, topic, Int32(bytes.count), bytes.baseAddress, qos.rawValue, retain, propertyPointer)
            }
            return (rc, mid)
        } register: { mid, continuation in
            box.traffic.published(topic: topic, payloadBytes: payload.count, qos: qos, properties: properties)
            box.registerPublish(mid: mid, .init(topic: topic, qos: qos), continuation)
        } cancel: { mid in
            box.cancelPublish(mid: mid)
        }
    }

    func observeTraffic(_ observer: any MQTTTrafficObserver) { box.traffic.observe(observer) }

    func subscribe(filter: String, qos: MQTTQoS, noLocal: Bool) async throws -> MQTTQoS {
        let operation = "subscribe to \(filter)"
        try box.checkOpen(operation)
        let options = noLocal ? Int32(MQTT_SUB_OPT_NO_LOCAL.rawValue) : 0
        let handle = self.handle
        let box = self.box
        return try await awaitAnswer(operation) {
            var mid: Int32 = 0
            let rc = mosquitto_subscribe_v5(handle, &mid, filter, qos.rawValue, options, nil)
            return (rc, mid)
        } register: { mid, continuation in
            box.registerSubscribe(mid: mid, Subscription(filter: filter, qos: qos, options: options), continuation)
        } cancel: { mid in
            box.cancelSubscribe(mid: mid)
        }
    }

    func unsubscribe(filter: String) async throws {
        let operation = "unsubscribe from \(filter)"
        try box.checkOpen(operation)
        let handle = self.handle
        let box = self.box
        try await awaitAnswer(operation) {
            var mid: Int32 = 0
            let rc = mosquitto_unsubscribe_v5(handle, &mid, filter, nil)
            return (rc, mid)
        } register: { mid, continuation in
            box.registerUnsubscribe(mid: mid, filter: filter, continuation)
        } cancel: { mid in
            box.cancelUnsubscribe(mid: mid)
        }
    }

    /// Sends one packet and waits for the broker's answer to it, or for the task's cancellation
    /// (then `CancellationError` at once; a packet already sent stays sent).
    /// - Parameters:
    ///   - allowQueued: a QoS 1 publish while disconnected: libmosquitto keeps the message and
    ///     sends it after reconnecting, so `MOSQ_ERR_NO_CONN` is not a failure.
    ///   - send: the libmosquitto call; returns its result code and the packet id.
    ///   - register: hands the continuation to the box under the packet id.
    ///   - cancel: takes the continuation back out of the box and resumes it.
    private func awaitAnswer<Success: Sendable>(
        _ operation: String, allowQueued: Bool = false,
        send: () -> (rc: Int32, mid: Int32),
        register: (Int32, CheckedContinuation<Success, Error>) -> Void,
        cancel: @escaping @Sendable (Int32) -> Void
    ) async throws -> Success {
        let ticket = CancellationTicket()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Success, Error>) in
                guard ticket.shouldSend() else {
                    continuation.resume(throwing: CancellationError())
                    return
                }
                let (rc, mid) = send()
                let queued = allowQueued && rc == MOSQ_ERR_NO_CONN.rawValue
                guard rc == MOSQ_ERR_SUCCESS.rawValue || queued else {
                    continuation.resume(throwing: box.error(forLibraryCode: rc, operation: operation))
                    return
                }
                register(mid, continuation)
                if !ticket.registered(mid) { cancel(mid) }
                waker.signal()
            }
        } onCancel: {
            if let mid = ticket.cancel() { cancel(mid) }
        }
    }
}

/// The reason's name from libmosquitto (e.g. "Not authorized").
func reasonName(_ code: UInt8) -> String {
    String(cString: mosquitto_reason_string(Int32(code)))
}

