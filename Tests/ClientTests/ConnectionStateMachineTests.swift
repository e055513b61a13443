// The MQTT client's reconnect rules (ConnectionStateMachine), without a broker: each test is a
// transcript "given this state, this event gives this action", on virtual time (instants made
// from one fixed start, never a sleep) and with the jitter passed in.
@testable import MQTT
import XCTest

final class ConnectionStateMachineTests: XCTestCase {
    private typealias Machine = ConnectionStateMachine
    private let t0 = ContinuousClock.now
    private let operation = "connect to dev-1@broker:1883"
    /// 1 s doubling to 8 s, at most half of it taken off by the jitter.
    private let backoff = ReconnectBackoff(policy: MQTTReconnectPolicy(minDelay: .seconds(1), maxDelay: .seconds(8), jitter: 0.5))

    private func machine(connectTimeout: Duration = .seconds(5)) -> Machine {
        Machine(connectTimeout: connectTimeout, backoff: backoff, operation: operation)
    }

    private func lost(_ message: String) -> MQTTError {
        MQTTError(operation: operation, kind: .connection, message: message)
    }

    /// A machine that connected and got its first CONNACK at t0.
    private func connected() -> Machine {
        var m = machine()
        _ = m.start()
        _ = m.connectReturned(nil, now: t0, randomUnit: 0)
        XCTAssertEqual(m.polled(connAckReceived: true, now: t0), .poll(timeout: Machine.idlePoll, awaitingConnAck: false))
        return m
    }

    // MARK: the first connect (a connect() call waits)

    func testFirstConnectWaitsForTheConnAckThenPollsIdle() {
        var m = machine()
        XCTAssertEqual(m.start(), .connect(first: true))
        XCTAssertEqual(m.state, .connecting(attempt: 0))
        XCTAssertEqual(m.connectReturned(nil, now: t0, randomUnit: 0), .poll(timeout: .seconds(1), awaitingConnAck: true))
        XCTAssertEqual(m.polled(connAckReceived: false, now: t0 + .seconds(1)), .poll(timeout: .seconds(1), awaitingConnAck: true))
        XCTAssertEqual(m.polled(connAckReceived: true, now: t0 + .seconds(2)), .poll(timeout: .seconds(1), awaitingConnAck: false))
        XCTAssertEqual(m.state, .connected)
        XCTAssertEqual(m.polled(connAckReceived: false, now: t0 + .seconds(60)), .poll(timeout: .seconds(1), awaitingConnAck: false),
                       "connected: no deadline applies any more")
    }

    func testPollsWhileAwaitingTheConnAckEndJustAfterItsDeadline() {
        var m = machine(connectTimeout: .seconds(5))
        _ = m.start()
        _ = m.connectReturned(nil, now: t0, randomUnit: 0)
        XCTAssertEqual(m.polled(connAckReceived: false, now: t0 + .milliseconds(4_500)),
                       .poll(timeout: .milliseconds(501), awaitingConnAck: true))
        XCTAssertEqual(m.polled(connAckReceived: false, now: t0 + .seconds(5)), .poll(timeout: .milliseconds(1), awaitingConnAck: true),
                       "at the deadline, not yet past it")
    }

    func testAFailedFirstConnectCallFailsTheWaitingConnect() {
        var m = machine()
        _ = m.start()
        let refused = lost("Connection refused")
        XCTAssertEqual(m.connectReturned(refused, now: t0, randomUnit: 0), .end(failingConnect: refused, disconnecting: false))
        XCTAssertEqual(m.state, .ended)
    }

    func testARefusedConnAckFailsTheWaitingConnectWithTheRefusal() {
        var m = machine()
        _ = m.start()
        _ = m.connectReturned(nil, now: t0, randomUnit: 0)
        let refusal = MQTTError(operation: operation, kind: .connectRefused, reasonCode: .notAuthorized, message: "refused")
        XCTAssertEqual(m.connectionEnded(refusal: refusal, libraryError: lost("The connection was lost."), now: t0, randomUnit: 0),
                       .end(failingConnect: refusal, disconnecting: false))
    }

    func testAnOverdueConnAckBreaksTheConnectionAndFailsTheConnectWithNoConnAck() {
        var m = machine(connectTimeout: .seconds(5))
        _ = m.start()
        _ = m.connectReturned(nil, now: t0, randomUnit: 0)
        XCTAssertEqual(m.polled(connAckReceived: false, now: t0 + .milliseconds(5_001)), .breakConnectionAndPoll(timeout: .seconds(1)))
        XCTAssertEqual(m.polled(connAckReceived: false, now: t0 + .seconds(6)), .poll(timeout: .seconds(1), awaitingConnAck: true),
                       "the connection is broken once, then the loop waits for the library to report the end")
        let action = m.connectionEnded(refusal: nil, libraryError: lost("The connection was lost."), now: t0 + .seconds(6), randomUnit: 0)
        guard case .end(failingConnect: let error?, disconnecting: false) = action else { return XCTFail("\(action)") }
        XCTAssertEqual(error.kind, .connection)
        XCTAssertTrue(error.message.contains("no CONNACK from the broker within 5"), error.message)
    }

    func testALibraryErrorBeforeTheConnAckFailsTheConnectWithIt() {
        var m = machine()
        _ = m.start()
        _ = m.connectReturned(nil, now: t0, randomUnit: 0)
        let tls = MQTTError(operation: operation, kind: .tls, message: "certificate verify failed")
        XCTAssertEqual(m.connectionEnded(refusal: nil, libraryError: tls, now: t0, randomUnit: 0),
                       .end(failingConnect: tls, disconnecting: false))
    }

    // MARK: reconnecting (after the first CONNACK)

    func testALostConnectionBacksOffDoublingPerFailedAttemptAndStartsOverAfterAConnAck() {
        var m = connected()
        let broken = lost("The connection was lost.")
        XCTAssertEqual(m.connectionEnded(refusal: nil, libraryError: broken, now: t0 + .seconds(10), randomUnit: 0),
                       .backOff(.connectionLost(broken), attempt: 1, delay: .seconds(1)))
        XCTAssertEqual(m.backoffElapsed(), .connect(first: false))
        let down = lost("Connection refused")
        XCTAssertEqual(m.connectReturned(down, now: t0 + .seconds(11), randomUnit: 0), .backOff(.connectFailed(down), attempt: 2, delay: .seconds(2)))
        XCTAssertEqual(m.backoffElapsed(), .connect(first: false))
        XCTAssertEqual(m.connectReturned(down, now: t0 + .seconds(13), randomUnit: 0.5), .backOff(.connectFailed(down), attempt: 3, delay: .seconds(3)),
                       "4 s less a quarter (jitter 0.5 × 0.5)")
        XCTAssertEqual(m.backoffElapsed(), .connect(first: false))
        XCTAssertEqual(m.connectReturned(down, now: t0 + .seconds(16), randomUnit: 0), .backOff(.connectFailed(down), attempt: 4, delay: .seconds(8)))
        XCTAssertEqual(m.backoffElapsed(), .connect(first: false))
        XCTAssertEqual(m.connectReturned(down, now: t0 + .seconds(24), randomUnit: 0), .backOff(.connectFailed(down), attempt: 5, delay: .seconds(8)),
                       "capped at the maximum")
        XCTAssertEqual(m.backoffElapsed(), .connect(first: false))
        XCTAssertEqual(m.connectReturned(nil, now: t0 + .seconds(32), randomUnit: 0), .poll(timeout: .seconds(1), awaitingConnAck: true))
        XCTAssertEqual(m.state, .awaitingConnAck(since: t0 + .seconds(32), attempt: 5, timedOut: false))
        XCTAssertEqual(m.polled(connAckReceived: true, now: t0 + .seconds(32)), .poll(timeout: .seconds(1), awaitingConnAck: false))
        XCTAssertEqual(m.connectionEnded(refusal: nil, libraryError: broken, now: t0 + .seconds(40), randomUnit: 0),
                       .backOff(.connectionLost(broken), attempt: 1, delay: .seconds(1)), "a CONNACK resets the attempts")
    }

    func testAReconnectWithoutConnAckOrRefusedBacksOffInsteadOfEnding() {
        var m = connected()
        _ = m.connectionEnded(refusal: nil, libraryError: lost("reset"), now: t0, randomUnit: 0)
        _ = m.backoffElapsed()
        _ = m.connectReturned(nil, now: t0 + .seconds(1), randomUnit: 0)
        XCTAssertEqual(m.polled(connAckReceived: false, now: t0 + .seconds(7)), .breakConnectionAndPoll(timeout: .seconds(1)))
        let action = m.connectionEnded(refusal: nil, libraryError: lost("reset"), now: t0 + .seconds(7), randomUnit: 0)
        guard case .backOff(.connectionLost(let error), attempt: 2, delay: .seconds(2)) = action else { return XCTFail("\(action)") }
        XCTAssertTrue(error.message.contains("no CONNACK"), error.message)
        _ = m.backoffElapsed()
        _ = m.connectReturned(nil, now: t0 + .seconds(9), randomUnit: 0)
        let refusal = MQTTError(operation: operation, kind: .connectRefused, reasonCode: MQTTReasonCode(rawValue: 0x88), message: "refused")
        XCTAssertEqual(m.connectionEnded(refusal: refusal, libraryError: lost("closed"), now: t0 + .seconds(9), randomUnit: 0),
                       .backOff(.connectionLost(refusal), attempt: 3, delay: .seconds(4)))
    }

    // MARK: stopping

    func testAStopWhileConnectedPollsTheDisconnectOutAndEndsWhenTheLibraryClosed() {
        var m = connected()
        XCTAssertEqual(m.stopRequested(now: t0), .poll(timeout: .milliseconds(100), awaitingConnAck: false))
        XCTAssertNil(m.stopRequested(now: t0), "asked twice: carry on")
        XCTAssertEqual(m.polled(connAckReceived: false, now: t0 + .milliseconds(100)), .poll(timeout: .milliseconds(100), awaitingConnAck: false))
        XCTAssertEqual(m.connectionEnded(refusal: nil, libraryError: lost("closed"), now: t0 + .milliseconds(200), randomUnit: 0),
                       .end(failingConnect: nil, disconnecting: false))
    }

    func testAStopEndsAfterTheGraceWhenTheDisconnectDoesNotGoOut() {
        var m = connected()
        _ = m.stopRequested(now: t0)
        XCTAssertEqual(m.polled(connAckReceived: false, now: t0 + Machine.stopGrace), .poll(timeout: .milliseconds(100), awaitingConnAck: false))
        XCTAssertEqual(m.polled(connAckReceived: false, now: t0 + Machine.stopGrace + .milliseconds(1)), .end(failingConnect: nil, disconnecting: false))
    }

    func testAStopWithoutAConnectionEndsAtOnce() {
        var backingOff = connected()
        _ = backingOff.connectionEnded(refusal: nil, libraryError: lost("reset"), now: t0, randomUnit: 0)
        XCTAssertEqual(backingOff.stopRequested(now: t0), .end(failingConnect: nil, disconnecting: false))
        XCTAssertNil(backingOff.stopRequested(now: t0))

        var connecting = machine()
        _ = connecting.start()
        XCTAssertEqual(connecting.stopRequested(now: t0), .end(failingConnect: nil, disconnecting: false))
    }

    // MARK: a cancelled connect()

    func testAnAbandonedConnectEndsTheAttemptDisconnectingWhenAConnectionIsOnItsWay() {
        var connecting = machine()
        _ = connecting.start()
        XCTAssertEqual(connecting.connectAbandoned(), .end(failingConnect: nil, disconnecting: false))

        var awaiting = machine()
        _ = awaiting.start()
        _ = awaiting.connectReturned(nil, now: t0, randomUnit: 0)
        XCTAssertEqual(awaiting.connectAbandoned(), .end(failingConnect: nil, disconnecting: true))
        XCTAssertNil(awaiting.connectAbandoned(), "once")
    }

    func testACancellationAfterTheConnAckChangesNothing() {
        var m = connected()
        XCTAssertNil(m.connectAbandoned())
        XCTAssertEqual(m.state, .connected)
    }
}
