// MQTTClient: one libmosquitto client (struct mosquitto*), MQTT v5, with its own network thread.
//
// Theory of operation:
// - `MQTTConnectionCore` owns the handle and frees it exactly once, in its deinit, which can
//   only run after the network thread ended (the thread holds the core) and the client let go.
// - The network thread connects (blocking connect happens there, never on the cooperative
//   pool), then runs the loop until the connection breaks; then it waits an exponential
//   backoff with jitter (`ReconnectBackoff`) and calls `mosquitto_reconnect`.
//   We do not use `mosquitto_loop_start`: its built-in reconnect has whole-second delays, no
//   jitter, and its thread quits for good on TLS or protocol errors.
//   `mosquitto_threaded_set(true)` makes publish/subscribe from other threads safe: the library
//   queues the packet; we then wake the loop through our own eventfd (`LoopWaker`).
// - The loop is poll(2) over the socket and the eventfd, then the library's external-loop
//   calls (`mosquitto_loop_read`/`_write`/`_misc`), not `mosquitto_loop`: that one uses
//   select(2) and returns MOSQ_ERR_INVAL for any socket numbered FD_SETSIZE (1024) or above,
//   so a process with many open files (a backend with many HTTP or database connections, a
//   fleet simulation with a log per device) could never get its connection going: every
//   CONNECT went unsent and the broker logged "Client <unknown> closed its connection".
//   During a TLS handshake (TLS 1.3 finishes it on the first reads; see `loopOnce`)
//   `mosquitto_loop` is still used while the descriptors fit, which libmosquitto handles itself.
// - libmosquitto's callbacks run on the network thread and only hand events over: they reach
//   a `CallbackBox` (the C context pointer, via Unmanaged), which resumes the continuation
//   waiting for that packet id, or yields to the `messages`/`events` AsyncStreams.
// - A PUBACK can arrive before `mosquitto_publish_v5` has returned the packet id to the
//   publishing thread; the box keeps such early acks until the publisher registers.
// - QoS 1 publishes survive reconnects (libmosquitto resends them); QoS 0 publishes and
//   SUBSCRIBEs in flight when the connection drops fail with `.notConnected`. When a
//   reconnect finds no session on the broker, the client subscribes again to what it had.
import CMosquitto
import FieldlogCore
import Logging
import Synchronization
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
    /// automatic reconnects until `disconnect()`.
    @discardableResult
    public func connect() async throws -> MQTTConnAck {
        try await core.connect()
    }

    /// Publishes `payload` on `topic`. Returns when the broker acknowledged it (QoS 1: PUBACK)
    /// or, for QoS 0, when it was written to the socket. Throws `.publishRefused` with the
    /// broker's reason when the PUBACK says so (e.g. "Not authorized (0x87)").
    /// A QoS 1 publish made while disconnected is queued and completes after reconnecting.
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
    /// broker granted, or throws `.subscribeRefused` with its reason.
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

final class MQTTConnectionCore: @unchecked Sendable {
    // @unchecked: `handle` is safe to use from any thread in threaded mode and lives until
    // deinit; thread control state is only touched under `control`; the rest is immutable.
    private let handle: OpaquePointer
    private let box: CallbackBox
    private let configuration: MQTTConfiguration
    private let logger: Logger
    private let backoff: ReconnectBackoff
    private let waker: LoopWaker
    private let control = ConditionLock()
    private var threadRunning = false
    private var stopRequested = false
    private var stopRequestedAt: ContinuousClock.Instant?
    private var threadExitWaiters: [CheckedContinuation<Void, Never>] = []
    /// Backpressure (`pauseReading`); read by the network thread on every turn.
    private let readingPaused = Atomic<Bool>(false)
    /// When the network thread last polled the socket for input (network thread only).
    private var lastReadAt = ContinuousClock.now

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

    // MARK: connect and the network thread

    func connect() async throws -> MQTTConnAck {
        let operation = "connect to \(configuration.endpointDescription)"
        return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<MQTTConnAck, Error>) in
            control.lock()
            if stopRequested {
                control.unlock()
                continuation.resume(throwing: MQTTError(operation: operation, kind: .closed, message: "the client was disconnected"))
                return
            }
            if threadRunning {
                control.unlock()
                continuation.resume(throwing: MQTTError(operation: operation, kind: .usage, message: "connect() was already called"))
                return
            }
            threadRunning = true
            control.unlock()
            box.setConnectWaiter(continuation)
            OSThread.start(name: "mqtt \(configuration.clientID)") { self.runNetworkThread() }
        }
    }

    private func runNetworkThread() {
        var attempt = 0
        var needConnect = true
        var firstConnect = true
        var exitError: MQTTError?
        var awaitingConnAckSince: ContinuousClock.Instant?
        var connAckTimedOut = false
        let operation = "connect to \(configuration.endpointDescription)"
        while true {
            if shouldExit() { break }
            if needConnect {
                box.clearLastLogError()
                let rc = firstConnect ? connectV5() : mosquitto_reconnect(handle)
                if rc == MOSQ_ERR_SUCCESS.rawValue {
                    needConnect = false
                    firstConnect = false
                    awaitingConnAckSince = .now
                    connAckTimedOut = false
                } else {
                    let error = box.error(forLibraryCode: rc, operation: operation)
                    if box.hasConnectWaiter {
                        exitError = error
                        break
                    }
                    box.emit(.connectFailed(error))
                    attempt += 1
                    if waitBeforeReconnect(attempt: attempt) { break }
                    continue
                }
            }
            let rc = loopOnce(timeoutMilliseconds: loopTimeout(awaitingConnAckSince: connAckTimedOut ? nil : awaitingConnAckSince),
                              awaitingConnAck: awaitingConnAckSince != nil)
            if rc == MOSQ_ERR_SUCCESS.rawValue {
                if box.takeConnectedSinceLastCheck() {
                    attempt = 0
                    awaitingConnAckSince = nil
                } else if let since = awaitingConnAckSince, !connAckTimedOut,
                          ContinuousClock.now - since > configuration.connectTimeout {
                    // A broker that accepted TCP but does not answer: break the connection;
                    // the loop then reports it like any other broken connection.
                    connAckTimedOut = true
                    let fd = mosquitto_socket(handle)
                    if fd >= 0 { shutdown(fd, Int32(SHUT_RDWR)) }
                }
                continue
            }
            if isStopRequested() { break }
            // The connection ended: broken, refused CONNACK, no CONNACK in time, or failed TLS handshake.
            let error = box.takeRefusal()
                ?? (connAckTimedOut ? MQTTError(operation: operation, kind: .connection,
                                                message: "no CONNACK from the broker within \(configuration.connectTimeout)")
                                    : box.error(forLibraryCode: rc, operation: operation))
            if box.hasConnectWaiter {
                exitError = error
                break
            }
            box.connectionEnded(error)
            attempt += 1
            if waitBeforeReconnect(attempt: attempt) { break }
            needConnect = true
        }
        let closing = isStopRequested()
        box.networkThreadEnded(closing: closing)
        control.lock()
        threadRunning = false
        let waiters = threadExitWaiters
        threadExitWaiters.removeAll()
        control.unlock()
        if let exitError { box.failConnectWaiter(exitError) }
        for waiter in waiters { waiter.resume() }
        logger.debug("mqtt network thread ended", metadata: ["client": "\(configuration.clientID)"])
    }

    func setReadingPaused(_ paused: Bool) {
        readingPaused.store(paused, ordering: .relaxed)
        waker.signal()
    }

    /// How long one `loopOnce` may wait: up to 1 s (keep-alive is whole seconds and every
    /// queued packet wakes the loop at once), shorter while a CONNACK is due or a stop waits.
    private func loopTimeout(awaitingConnAckSince since: ContinuousClock.Instant?) -> Int32 {
        if isStopRequested() { return 100 }
        guard let since else { return 1000 }
        let left = configuration.connectTimeout - (ContinuousClock.now - since)
        return Int32(max(1, min(1000, left / .milliseconds(1) + 1)))
    }

    /// One turn of the network loop, with `mosquitto_loop`'s result codes: wait (poll) until
    /// the socket is readable, writable while the library has something to send, or the waker
    /// was signalled; then read, write and run the keep-alive. On a broken connection the
    /// library's read/write calls close the socket and report it (as `mosquitto_loop` does).
    private func loopOnce(timeoutMilliseconds: Int32, awaitingConnAck: Bool) -> Int32 {
        let sock = mosquitto_socket(handle)
        guard sock >= 0 else { return MOSQ_ERR_NO_CONN.rawValue }
        // A TLS handshake in progress (no CONNACK yet) is finished only inside mosquitto_loop;
        // use it while both its descriptors fit select(2). It returns MOSQ_ERR_INVAL otherwise,
        // and we go on with poll: TLS 1.3 (the default with OpenSSL 3) completes the handshake on
        // the first reads, which mosquitto_loop_read does.
        if configuration.tls != nil && awaitingConnAck && sock < selectLimit {
            let rc = mosquitto_loop(handle, min(timeoutMilliseconds, 100), 1)
            if rc != MOSQ_ERR_INVAL.rawValue { return rc }
        }
        // Paused (backpressure): no input, except once per half keep-alive for the PINGRESP.
        let now = ContinuousClock.now
        let read = !readingPaused.load(ordering: .relaxed) || now - lastReadAt >= configuration.keepAlive / 2
        if read { lastReadAt = now }
        var fds = [pollfd(fd: sock, events: (read ? Int16(POLLIN) : 0) | (mosquitto_want_write(handle) ? Int16(POLLOUT) : 0), revents: 0),
                   pollfd(fd: waker.descriptor, events: Int16(POLLIN), revents: 0)]
        let n = poll(&fds, 2, timeoutMilliseconds)
        if n < 0 { return errno == EINTR ? MOSQ_ERR_SUCCESS.rawValue : MOSQ_ERR_ERRNO.rawValue }
        if fds[1].revents != 0 { waker.drain() }
        if fds[0].revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
            let rc = mosquitto_loop_read(handle, 1)
            if rc != MOSQ_ERR_SUCCESS.rawValue || mosquitto_socket(handle) < 0 { return rc }
        }
        // Write whatever is queued: packets from other threads (they signalled the waker),
        // PUBACKs the read just queued, or the rest of a packet the socket took only partly.
        if mosquitto_want_write(handle) {
            let rc = mosquitto_loop_write(handle, 1)
            if rc != MOSQ_ERR_SUCCESS.rawValue || mosquitto_socket(handle) < 0 { return rc }
        }
        return mosquitto_loop_misc(handle)
    }

    private func connectV5() -> Int32 {
        var properties: OpaquePointer?
        if let expiry = configuration.sessionExpiry, expiry > .zero {
            let seconds = UInt32(clamping: expiry.components.seconds)
            _ = mosquitto_property_add_int32(&properties, Int32(MQTT_PROP_SESSION_EXPIRY_INTERVAL.rawValue), seconds)
        }
        defer { mosquitto_property_free_all(&properties) }
        return mosquitto_connect_bind_v5(handle, configuration.host, Int32(configuration.port),
                                         Int32(configuration.keepAlive.components.seconds), nil, properties)
    }

    /// Waits the backoff delay for `attempt`; true when a stop was requested meanwhile.
    private func waitBeforeReconnect(attempt: Int) -> Bool {
        let delay = backoff.delay(attempt: attempt, randomUnit: Double.random(in: 0..<1))
        box.emit(.reconnecting(attempt: attempt, delay: delay))
        logger.info("mqtt reconnecting", metadata: ["client": "\(configuration.clientID)", "attempt": "\(attempt)", "delay": "\(delay)"])
        let deadline = ContinuousClock.now + delay
        control.lock()
        defer { control.unlock() }
        while !stopRequested {
            if !control.wait(until: deadline) { break }
        }
        return stopRequested
    }

    private func isStopRequested() -> Bool {
        control.lock()
        defer { control.unlock() }
        return stopRequested
    }

    /// True when the thread should leave its loop: a stop was asked for and the DISCONNECT had
    /// up to 2 s to go out (the loop leaves earlier when the library closed the connection).
    private func shouldExit() -> Bool {
        control.lock()
        defer { control.unlock() }
        guard stopRequested, let at = stopRequestedAt else { return false }
        return ContinuousClock.now - at > .seconds(2)
    }

    func requestStop(reason: MQTTReasonCode) {
        control.lock()
        let first = !stopRequested
        stopRequested = true
        if first { stopRequestedAt = .now }
        let running = threadRunning
        control.broadcast()
        control.unlock()
        box.markClosed()
        if first && running {
            _ = mosquitto_disconnect_v5(handle, Int32(reason.rawValue), nil)
            waker.signal()
        }
        if !running { box.finishStreams() }
    }

    func disconnect(reason: MQTTReasonCode) async {
        requestStop(reason: reason)
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            control.lock()
            if threadRunning {
                threadExitWaiters.append(continuation)
                control.unlock()
            } else {
                control.unlock()
                continuation.resume()
            }
        }
        box.finishStreams()
    }

    func simulateConnectionLoss() {
        let fd = mosquitto_socket(handle)
        if fd >= 0 { shutdown(fd, Int32(SHUT_RDWR)) }
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
        return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<MQTTPublishAck, Error>) in
            var mid: Int32 = 0
            let rc = payload.withUnsafeBytes { bytes in
                mosquitto_publish_v5(handle, &mid, topic, Int32(bytes.count), bytes.baseAddress, qos.rawValue, retain, propertyPointer)
            }
            // QoS ≥ 1 while disconnected: libmosquitto keeps the message and sends it after reconnecting.
            let queued = rc == MOSQ_ERR_NO_CONN.rawValue && qos != .atMostOnce
            guard rc == MOSQ_ERR_SUCCESS.rawValue || queued else {
                continuation.resume(throwing: box.error(forLibraryCode: rc, operation: operation))
                return
            }
            box.traffic.published(topic: topic, payloadBytes: payload.count, qos: qos, properties: properties)
            box.registerPublish(mid: mid, topic: topic, qos: qos, continuation: continuation)
            waker.signal()
        }
    }

    func observeTraffic(_ observer: any MQTTTrafficObserver) { box.traffic.observe(observer) }

    func subscribe(filter: String, qos: MQTTQoS, noLocal: Bool) async throws -> MQTTQoS {
        let operation = "subscribe to \(filter)"
        try box.checkOpen(operation)
        let options = noLocal ? Int32(MQTT_SUB_OPT_NO_LOCAL.rawValue) : 0
        let handle = self.handle
        return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<MQTTQoS, Error>) in
            var mid: Int32 = 0
            let rc = mosquitto_subscribe_v5(handle, &mid, filter, qos.rawValue, options, nil)
            guard rc == MOSQ_ERR_SUCCESS.rawValue else {
                continuation.resume(throwing: box.error(forLibraryCode: rc, operation: operation))
                return
            }
            box.registerSubscribe(mid: mid, subscription: .init(filter: filter, qos: qos, options: options), continuation: continuation)
            waker.signal()
        }
    }

    func unsubscribe(filter: String) async throws {
        let operation = "unsubscribe from \(filter)"
        try box.checkOpen(operation)
        let handle = self.handle
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, Error>) in
            var mid: Int32 = 0
            let rc = mosquitto_unsubscribe_v5(handle, &mid, filter, nil)
            guard rc == MOSQ_ERR_SUCCESS.rawValue else {
                continuation.resume(throwing: box.error(forLibraryCode: rc, operation: operation))
                return
            }
            box.registerUnsubscribe(mid: mid, filter: filter, continuation: continuation)
            waker.signal()
        }
    }
}

/// The reason's name from libmosquitto (e.g. "Not authorized").
func reasonName(_ code: UInt8) -> String {
    String(cString: mosquitto_reason_string(Int32(code)))
}

/// FD_SETSIZE of glibc: `mosquitto_loop` (select) refuses descriptors from here up.
let selectLimit: Int32 = 1024

/// An eventfd that wakes the network thread's poll(2) when another thread queued a packet
/// (libmosquitto's own wake-up pipe is private to `mosquitto_loop`). Owns the descriptor.
final class LoopWaker: Sendable {
    let descriptor: Int32

    init(operation: String) throws {
        descriptor = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard descriptor >= 0 else {
            throw MQTTError(operation: operation, kind: .library, message: "eventfd failed: \(String(cString: strerror(errno)))")
        }
    }

    deinit { close(descriptor) }

    /// Wakes the loop (never blocks: the counter saturates long before it could).
    func signal() {
        var one: UInt64 = 1
        _ = write(descriptor, &one, 8)
    }

    /// Resets the counter after a wake-up.
    func drain() {
        var value: UInt64 = 0
        _ = read(descriptor, &value, 8)
    }
}
