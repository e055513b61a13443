// The network thread of an MQTT client: the IO shell around `ConnectionStateMachine`.
//
// Theory of operation: `connect()` starts the thread; the thread asks the state machine what
// to do, does it (connect, one turn of the loop, break a connection whose CONNACK is overdue,
// report and wait before reconnecting, end) and tells it what happened. Requests from other
// threads — `disconnect()` and the cancellation of a waiting `connect()` — are set under
// `control` and reach the machine between two actions; the eventfd (`LoopWaker`) and the
// condition wake the thread for them at once. Only this thread calls libmosquitto's
// connect, reconnect and loop functions (checked: `networkThread`).
import CMosquitto
import Logging
import Threading
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension MQTTConnectionCore {
    // MARK: connect and disconnect (any thread)

    func connect() async throws -> MQTTConnAck {
        let operation = "connect to \(configuration.endpointDescription)"
        // A thread still ending an abandoned attempt (a cancelled connect()) goes first.
        if control.withLock({ threadRunning && abandoning }) { await networkThreadEnded() }
        let ticket = CancellationTicket()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<MQTTConnAck, Error>) in
                guard ticket.shouldSend() else {
                    continuation.resume(throwing: CancellationError())
                    return
                }
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
                abandonRequested = false
                abandoning = false
                control.unlock()
                box.setConnectWaiter(continuation)
                OSThread.start(name: "mqtt \(configuration.clientID)") { self.runNetworkThread() }
                if !ticket.registered(0) { abandonConnect() }
            }
        } onCancel: {
            if ticket.cancel() != nil { abandonConnect() }
        }
    }

    /// The task waiting in `connect()` was cancelled: resume it now, and let the network thread
    /// end its attempt (nothing to do when the CONNACK came first).
    private func abandonConnect() {
        guard box.failConnectWaiter(CancellationError()) else { return }
        control.withLock {
            abandonRequested = true
            abandoning = true
            control.broadcast()
        }
        waker.signal()
    }

    func requestStop(reason: MQTTReasonCode) {
        control.lock()
        let first = !stopRequested
        stopRequested = true
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
        await networkThreadEnded()
        box.finishStreams()
    }

    /// Returns when no network thread runs.
    private func networkThreadEnded() async {
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
    }

    func setReadingPaused(_ paused: Bool) {
        readingPaused.store(paused, ordering: .relaxed)
        waker.signal()
    }

    /// Test support: breaks the TCP connection as a network failure would.
    func simulateConnectionLoss() {
        let fd = mosquitto_socket(handle)
        if fd >= 0 { shutdown(fd, Int32(SHUT_RDWR)) }
    }

    // MARK: the network thread

    private func runNetworkThread() {
        networkThread.setToCurrentThread()
        let operation = "connect to \(configuration.endpointDescription)"
        var machine = ConnectionStateMachine(connectTimeout: configuration.connectTimeout, backoff: backoff, operation: operation)
        var action = machine.start()
        var exitError: MQTTError?
        loop: while true {
            let (stop, abandon) = takeRequests()
            if stop, let replaced = machine.stopRequested(now: .now) { action = replaced }
            if abandon {
                if let replaced = machine.connectAbandoned() {
                    action = replaced
                } else {
                    // The attempt was already over (connected, or stopping): the thread does
                    // not end for it, so a new connect() must not wait for that.
                    control.withLock { abandoning = false }
                }
            }
            switch action {
            case .connect(let first):
                box.clearLastLogError()
                let rc = first ? connectV5() : reconnect()
                let error = rc == MOSQ_ERR_SUCCESS.rawValue ? nil : box.error(forLibraryCode: rc, operation: operation)
                action = machine.connectReturned(error, now: .now, randomUnit: Double.random(in: 0..<1))
            case .poll(let timeout, let awaitingConnAck):
                action = turn(&machine, timeout: timeout, awaitingConnAck: awaitingConnAck, operation: operation)
            case .breakConnectionAndPoll(let timeout):
                let fd = mosquitto_socket(handle)
                if fd >= 0 { shutdown(fd, Int32(SHUT_RDWR)) }
                action = turn(&machine, timeout: timeout, awaitingConnAck: true, operation: operation)
            case .backOff(let report, let attempt, let delay):
                switch report {
                case .connectFailed(let error): box.emit(.connectFailed(error))
                case .connectionLost(let error): box.connectionEnded(error)
                }
                box.emit(.reconnecting(attempt: attempt, delay: delay))
                logger.info("mqtt reconnecting", metadata: ["client": "\(configuration.clientID)", "attempt": "\(attempt)", "delay": "\(delay)"])
                waitForRequests(until: .now + delay)
                action = machine.backoffElapsed()
            case .end(let failing, let disconnecting):
                if disconnecting, mosquitto_socket(handle) >= 0 {
                    _ = mosquitto_disconnect_v5(handle, Int32(MQTTReasonCode.success.rawValue), nil)
                    _ = mosquitto_loop_write(handle, 1)
                }
                exitError = failing
                break loop
            }
        }
        let closing = control.withLock { stopRequested }
        box.networkThreadEnded(closing: closing)
        networkThread.clear()
        control.lock()
        threadRunning = false
        stopSeen = false
        abandonRequested = false
        abandoning = false
        let waiters = threadExitWaiters
        threadExitWaiters.removeAll()
        control.unlock()
        if let exitError {
            box.failConnectWaiter(exitError)
        } else if closing {
            // disconnect() while connect() waited for the first CONNACK.
            box.failConnectWaiter(MQTTError(operation: operation, kind: .closed, message: "the client was disconnected"))
        }
        for waiter in waiters { waiter.resume() }
        logger.debug("mqtt network thread ended", metadata: ["client": "\(configuration.clientID)"])
    }

    /// One turn of the loop, and what the machine makes of its outcome.
    private func turn(_ machine: inout ConnectionStateMachine, timeout: Duration, awaitingConnAck: Bool,
                      operation: String) -> ConnectionStateMachine.Action {
        let milliseconds = Int32(clamping: Int64((timeout / .milliseconds(1)).rounded(.up)))
        let rc = loopOnce(timeoutMilliseconds: max(1, milliseconds), awaitingConnAck: awaitingConnAck)
        if rc == MOSQ_ERR_SUCCESS.rawValue {
            return machine.polled(connAckReceived: box.takeConnectedSinceLastCheck(), now: .now)
        }
        return machine.connectionEnded(refusal: box.takeRefusal(), libraryError: box.error(forLibraryCode: rc, operation: operation),
                                       now: .now, randomUnit: Double.random(in: 0..<1))
    }

    /// The requests of other threads not yet told to the machine: a stop (once) and the
    /// cancellation of the waiting `connect()`.
    private func takeRequests() -> (stop: Bool, abandon: Bool) {
        control.withLock {
            let stop = stopRequested && !stopSeen
            if stop { stopSeen = true }
            defer { abandonRequested = false }
            return (stop, abandonRequested)
        }
    }

    /// Waits until `deadline`, or until a stop or an abandoned connect is asked for.
    private func waitForRequests(until deadline: ContinuousClock.Instant) {
        control.lock()
        defer { control.unlock() }
        while !stopRequested && !abandonRequested {
            if !control.wait(until: deadline) { break }
        }
    }

    private func loopOnce(timeoutMilliseconds: Int32, awaitingConnAck: Bool) -> Int32 {
        networkThread.preconditionCurrent()
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
        networkThread.preconditionCurrent()
        var properties: OpaquePointer?
        if let expiry = configuration.sessionExpiry, expiry > .zero {
            let seconds = UInt32(clamping: expiry.components.seconds)
            _ = mosquitto_property_add_int32(&properties, Int32(MQTT_PROP_SESSION_EXPIRY_INTERVAL.rawValue), seconds)
        }
        defer { mosquitto_property_free_all(&properties) }
        return mosquitto_connect_bind_v5(handle, configuration.host, Int32(configuration.port),
                                         Int32(configuration.keepAlive.components.seconds), nil, properties)
    }

    private func reconnect() -> Int32 {
        networkThread.preconditionCurrent()
        return mosquitto_reconnect(handle)
    }
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
