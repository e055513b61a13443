// ConnectionStateMachine: the reconnect rules of an MQTT client's network thread, sans-IO.
//
// Theory of operation: the network thread (NetworkThread.swift) is a loop that asks this
// machine what to do, does it, and tells the machine what happened. The machine does no IO,
// reads no clock and draws no random numbers: the time (`now`) and the jitter (`randomUnit`)
// come in with the events, so tests run it on virtual time without a broker.
//
//   start                        → connect(first: true)
//   connectReturned(ok)          → poll (awaiting CONNACK, at most until connectTimeout)
//   connectReturned(error)       → end, failing the waiting connect() — or, after a first
//                                  success, backOff(connectFailed, attempt + 1, delay)
//   polled(CONNACK)              → poll (connected; attempt back to 0)
//   polled(no CONNACK, overdue)  → breakConnectionAndPoll (the loop then reports the end)
//   connectionEnded(error)       → end, failing the waiting connect() (refusal first, then
//                                  "no CONNACK", then the library's error) — or
//                                  backOff(connectionLost, attempt + 1, delay)
//   backoffElapsed               → connect(first: false)
//   stopRequested                → end, when nothing is connected; else poll every 100 ms
//                                  while the DISCONNECT goes out, and end when the library
//                                  closed the connection or after 2 s
//   connectAbandoned             → the waiting connect() was cancelled: end (disconnecting
//                                  when a connection is up or on its way)
//
// The delay of attempt n is `ReconnectBackoff.delay(attempt: n, randomUnit:)`: the policy's
// minimum doubled per attempt up to its maximum, minus up to `jitter` of it.

/// The network thread's rules (see the theory of operation above).
struct ConnectionStateMachine {
    enum State: Equatable {
        case idle
        /// `attempt` failures since the last CONNACK; a connect call is due.
        case connecting(attempt: Int)
        /// Connected at the TCP (and TLS) level; the CONNACK is due by `since + connectTimeout`.
        case awaitingConnAck(since: ContinuousClock.Instant, attempt: Int, timedOut: Bool)
        case connected
        /// Waiting before attempt `attempt`.
        case backingOff(attempt: Int)
        /// `disconnect()` was asked for at `since`; the DISCONNECT is going out.
        case stopping(since: ContinuousClock.Instant)
        case ended
    }

    /// What the thread reports before it waits.
    enum Report: Equatable {
        /// A connect call failed (there was no connection).
        case connectFailed(MQTTError)
        /// A connection (or a connection on its way to a CONNACK) ended.
        case connectionLost(MQTTError)
    }

    enum Action: Equatable {
        /// Call `mosquitto_connect_bind_v5` (first) or `mosquitto_reconnect`.
        case connect(first: Bool)
        /// One turn of the loop: poll the socket at most `timeout`, then read, write, keep alive.
        case poll(timeout: Duration, awaitingConnAck: Bool)
        /// No CONNACK in time: shut the socket down, then poll (the end is reported as usual).
        case breakConnectionAndPoll(timeout: Duration)
        /// Report, then wait `delay` before attempt `attempt` (a stop ends the wait).
        case backOff(Report, attempt: Int, delay: Duration)
        /// Leave the loop; fail the waiting `connect()` with the error, if one; send a
        /// DISCONNECT first when `disconnecting`.
        case end(failingConnect: MQTTError?, disconnecting: Bool)
    }

    static let idlePoll: Duration = .seconds(1)
    static let stoppingPoll: Duration = .milliseconds(100)
    /// How long a DISCONNECT may take to go out before the thread ends anyway.
    static let stopGrace: Duration = .seconds(2)

    private(set) var state: State = .idle
    private let connectTimeout: Duration
    private let backoff: ReconnectBackoff
    /// The operation named in errors: "connect to <client>@<host>:<port>".
    private let operation: String
    /// No connect call has succeeded yet.
    private var firstConnect = true
    /// A `connect()` call waits for the first CONNACK: failures end the thread instead of
    /// backing off (its caller decides whether to try again).
    private var connectAwaited = false

    init(connectTimeout: Duration, backoff: ReconnectBackoff, operation: String) {
        self.connectTimeout = connectTimeout
        self.backoff = backoff
        self.operation = operation
    }

    /// `connect()` started the thread.
    mutating func start() -> Action {
        precondition(state == .idle, "the network thread starts once")
        connectAwaited = true
        state = .connecting(attempt: 0)
        return .connect(first: true)
    }

    /// The connect call returned: nil, or why it failed.
    mutating func connectReturned(_ error: MQTTError?, now: ContinuousClock.Instant, randomUnit: Double) -> Action {
        guard case .connecting(let attempt) = state else { preconditionFailure("connect returned in \(state)") }
        if let error {
            if connectAwaited { return end(failingConnect: error) }
            return backOff(.connectFailed(error), attempt: attempt + 1, randomUnit: randomUnit)
        }
        firstConnect = false
        state = .awaitingConnAck(since: now, attempt: attempt, timedOut: false)
        return .poll(timeout: connAckPoll(since: now, now: now), awaitingConnAck: true)
    }

    /// One turn of the loop went well; `connAckReceived` when a CONNACK accepted the connection in it.
    mutating func polled(connAckReceived: Bool, now: ContinuousClock.Instant) -> Action {
        switch state {
        case .awaitingConnAck(let since, let attempt, let timedOut):
            if connAckReceived {
                state = .connected
                connectAwaited = false
                return .poll(timeout: Self.idlePoll, awaitingConnAck: false)
            }
            if !timedOut && now - since > connectTimeout {
                // A broker that accepted TCP but does not answer: break the connection.
                state = .awaitingConnAck(since: since, attempt: attempt, timedOut: true)
                return .breakConnectionAndPoll(timeout: Self.idlePoll)
            }
            return .poll(timeout: timedOut ? Self.idlePoll : connAckPoll(since: since, now: now), awaitingConnAck: true)
        case .connected:
            return .poll(timeout: Self.idlePoll, awaitingConnAck: false)
        case .stopping(let since):
            if now - since > Self.stopGrace { return end(failingConnect: nil) }
            return .poll(timeout: Self.stoppingPoll, awaitingConnAck: false)
        case .idle, .connecting, .backingOff, .ended:
            preconditionFailure("polled in \(state)")
        }
    }

    /// The loop reported the connection ended: broken, refused in the CONNACK (`refusal`),
    /// broken for want of a CONNACK, or a failed TLS handshake (`libraryError`).
    mutating func connectionEnded(refusal: MQTTError?, libraryError: MQTTError, now: ContinuousClock.Instant, randomUnit: Double) -> Action {
        switch state {
        case .stopping:
            return end(failingConnect: nil)
        case .awaitingConnAck(_, let attempt, let timedOut):
            let noConnAck = MQTTError(operation: operation, kind: .connection, message: "no CONNACK from the broker within \(connectTimeout)")
            let error = refusal ?? (timedOut ? noConnAck : libraryError)
            if connectAwaited { return end(failingConnect: error) }
            return backOff(.connectionLost(error), attempt: attempt + 1, randomUnit: randomUnit)
        case .connected:
            return backOff(.connectionLost(refusal ?? libraryError), attempt: 1, randomUnit: randomUnit)
        case .idle, .connecting, .backingOff, .ended:
            preconditionFailure("connection ended in \(state)")
        }
    }

    /// The backoff delay passed.
    mutating func backoffElapsed() -> Action {
        guard case .backingOff(let attempt) = state else { preconditionFailure("backoff elapsed in \(state)") }
        state = .connecting(attempt: attempt)
        return .connect(first: firstConnect)
    }

    /// `disconnect()` (or the client's deinit) asked the thread to end. nil: carry on with
    /// the action at hand (the thread is ending already).
    mutating func stopRequested(now: ContinuousClock.Instant) -> Action? {
        switch state {
        case .idle, .connecting, .backingOff:
            return end(failingConnect: nil)
        case .awaitingConnAck, .connected:
            state = .stopping(since: now)
            return .poll(timeout: Self.stoppingPoll, awaitingConnAck: false)
        case .stopping, .ended:
            return nil
        }
    }

    /// The task waiting in `connect()` was cancelled (and resumed with `CancellationError`).
    /// nil: carry on (the CONNACK came first, or the thread is ending already).
    mutating func connectAbandoned() -> Action? {
        guard connectAwaited else { return nil }
        connectAwaited = false
        switch state {
        case .idle, .connecting, .backingOff:
            return end(failingConnect: nil)
        case .awaitingConnAck, .connected:
            return end(failingConnect: nil, disconnecting: true)
        case .stopping, .ended:
            return nil
        }
    }

    // MARK: helpers

    private mutating func end(failingConnect error: MQTTError?, disconnecting: Bool = false) -> Action {
        state = .ended
        return .end(failingConnect: error, disconnecting: disconnecting)
    }

    private mutating func backOff(_ report: Report, attempt: Int, randomUnit: Double) -> Action {
        state = .backingOff(attempt: attempt)
        return .backOff(report, attempt: attempt, delay: backoff.delay(attempt: attempt, randomUnit: randomUnit))
    }

    /// A poll while the CONNACK is due: up to 1 s, and no later than just after the deadline.
    private func connAckPoll(since: ContinuousClock.Instant, now: ContinuousClock.Instant) -> Duration {
        let leftMs = (connectTimeout - (now - since)) / .milliseconds(1)
        return .milliseconds(Int64(max(1, min(1000, leftMs.rounded(.towardZero) + 1))))
    }
}
