// DeviceSyncStateMachine: the device's whole side of a sync session (spec/protocol.md §4.4),
// around the `SenderStateMachine`.
//
// Theory of operation. The sender publishes only while three things hold: the MQTT session
// is up (CONNACK), the device is subscribed to its ack, request and broadcast topics on that
// connection, and the `mqtt_sender:enabled` switch is on. This machine owns that rule and
// turns its changes into the sender's `connected`/`disconnected` events; turning the switch
// off pauses publishing exactly like an outage. On every CONNACK it asks for the
// subscriptions (`.subscribe(connection:)`; answers for an older connection are ignored) and
// a retained status; a failed SUBSCRIBE is retried with backoff on its own timer instead of
// waiting for the next reconnect, so a device is never connected but silent. It publishes
// the retained status when head, acked or the measuring switch changed, at most every
// `statusInterval`. It resolves a `replay` command (`from`/`to`/`count`, each optional) to
// a range of the log, names requests that came without an id, refuses a second replay with
// an id that is still running, and answers each request exactly once (finished, refused, or
// refused at shutdown). Acks arrive as payloads and are decoded here; an undecodable one is
// an anomaly, never a crash.
//
// Like the sender it has no clock and does no IO: events carry `now` (and the wall time in
// milliseconds where a status is built), timers are actions (`.armTimer(_:at:)` replaces
// that timer's earlier deadline).

import FieldlogCore

/// Configuration of the device's sync session (spec §4.1).
public struct DeviceSyncConfiguration: Sendable, Hashable {
    /// The sender's window, batch limits and resend delays.
    public var sender = SenderConfiguration()
    /// Least time between two retained status publications while something changes. Default 10 s.
    public var statusInterval: Duration = .seconds(10)
    /// First delay before a failed SUBSCRIBE is tried again; doubles up to `subscribeRetryMax`.
    public var subscribeRetryInitial: Duration = .seconds(1)
    /// Default 10 s.
    public var subscribeRetryMax: Duration = .seconds(10)

    public init() {}
}

/// A `replay` command's range as the backend (or the seed's `send_measurements`) gave it:
/// every bound optional (spec §3.5).
public struct ReplayQuery: Sendable, Hashable {
    public var requestID: String?
    /// First sequence number; default the oldest the log retains.
    public var from: SequenceNumber?
    /// Last sequence number; default the head.
    public var to: SequenceNumber?
    /// At most this many positions from `from` (values below 1 are ignored).
    public var count: Int64?

    public init(requestID: String?, from: SequenceNumber?, to: SequenceNumber?, count: Int64?) {
        self.requestID = requestID
        self.from = from
        self.to = to
        self.count = count
    }
}

/// The device side of a sync session; see the theory of operation at the top of the file.
public struct DeviceSyncStateMachine<Instant: InstantProtocol>: Sendable where Instant.Duration == Duration {
    public typealias Sender = SenderStateMachine<Instant>

    /// The machine's timers; each has at most one deadline.
    public enum Timer: Hashable, Sendable {
        /// The sender's resend timer.
        case resend
        /// Subscribing again after a failed SUBSCRIBE.
        case subscribeRetry
    }

    /// The driver's handle for one replay command, chosen by the driver.
    public typealias ReplayTicket = UInt64

    /// How a replay command ends.
    public enum ReplayAnswer: Hashable, Sendable {
        /// Resent as replay batches (`resent` nil: nothing of the range exists yet).
        case finished(resent: SequenceRange?, notRetained: [SequenceRange])
        /// Not done; the reason goes into the command's error response.
        case refused(String)
    }

    /// What the machine asks its driver to do.
    public enum Action: Hashable, Sendable {
        /// Subscribe (QoS 1) to the device's ack, request and broadcast topics; answer with
        /// `subscribed(connection:now:)` or `subscribeFailed(connection:now:)`.
        case subscribe(connection: Int)
        /// Read the log (see `SenderStateMachine.Action.loadRecords`); answer with `recordsLoaded`.
        case loadRecords(from: SequenceNumber, through: SequenceNumber, limit: Int)
        /// Publish this batch (QoS 1, not retained) on the device's batch topic.
        case publishBatch(OutgoingBatch)
        /// Make the log durably remember the acked pointer.
        case persistAcked(through: SequenceNumber)
        /// Publish this status (QoS 1, retained) on the device's status topic.
        case publishStatus(Status)
        /// Call `timerFired(_:now:)` for this timer at `at` (replaces its earlier deadline).
        case armTimer(Timer, at: Instant)
        /// This timer is no longer needed.
        case cancelTimer(Timer)
        /// Answer the replay command the driver knows by this ticket.
        case answerReplay(ReplayTicket, ReplayAnswer)
        /// A peer broke the protocol (an undecodable ack, one beyond head...). Log it; nothing changed.
        case reportAnomaly(String)
    }

    public let configuration: DeviceSyncConfiguration
    /// The protocol's sender, for status and tests; changed only through this machine.
    public private(set) var sender: Sender
    /// The MQTT session is up.
    private(set) var isBrokerConnected = false
    /// Subscribed on the current connection.
    public private(set) var isSubscribed = false
    /// `mqtt_sender:enabled`.
    public private(set) var isSenderEnabled: Bool
    /// Numbers the broker connections; a subscribe answer for an older one is stale.
    public private(set) var connection = 0
    /// The connected rule: the sender publishes only while this holds.
    public var isSending: Bool { isBrokerConnected && isSubscribed && isSenderEnabled }

    private var subscribeFailures = 0
    private var subscribeRetryArmed = false

    private struct StatusKey: Hashable {
        var head: SequenceNumber
        var acked: SequenceNumber
        var measuring: Bool?
    }
    private var lastStatus: StatusKey?
    private var lastStatusAt: Instant?
    /// The measuring switch as last observed (nil: not known yet).
    private var lastMeasuring: Bool?

    /// Running replays: request id → the driver's ticket.
    private var replays: [String: ReplayTicket] = [:]
    private var unnamedReplays = 0

    /// A session for the log `(device, epoch)` whose durable state is `head` and `acked`.
    /// Starts with the broker down.
    public init(device: DeviceID, epoch: Epoch, head: SequenceNumber, acked: SequenceNumber, senderEnabled: Bool,
                configuration: DeviceSyncConfiguration = DeviceSyncConfiguration()) {
        precondition(configuration.statusInterval >= .zero, "statusInterval must not be negative")
        precondition(configuration.subscribeRetryInitial > .zero && configuration.subscribeRetryMax >= configuration.subscribeRetryInitial,
                     "subscribe retry delays must satisfy 0 < initial ≤ max")
        self.configuration = configuration
        self.sender = Sender(device: device, epoch: epoch, head: head, acked: acked, configuration: configuration.sender)
        self.isSenderEnabled = senderEnabled
    }

    // MARK: Connection

    /// CONNACK: subscribe, and say that the device is online.
    public mutating func brokerConnected(now: Instant, wallMilliseconds: Int64) -> [Action] {
        connection += 1
        isBrokerConnected = true
        isSubscribed = false
        subscribeFailures = 0
        var actions: [Action] = [.subscribe(connection: connection)]
        if subscribeRetryArmed {
            subscribeRetryArmed = false
            actions.append(.cancelTimer(.subscribeRetry))
        }
        publishStatus(now: now, wallMilliseconds: wallMilliseconds, force: true, &actions)
        return actions
    }

    /// The session is gone (broken, refused, or closed by us).
    public mutating func brokerDisconnected(now: Instant) -> [Action] {
        isBrokerConnected = false
        isSubscribed = false
        var actions: [Action] = []
        if subscribeRetryArmed {
            subscribeRetryArmed = false
            actions.append(.cancelTimer(.subscribeRetry))
        }
        applyConnectionRule(now: now, &actions)
        return actions
    }

    /// Every subscription of `connection` was granted.
    public mutating func subscribed(connection: Int, now: Instant) -> [Action] {
        guard connection == self.connection, isBrokerConnected else { return [] }
        isSubscribed = true
        subscribeFailures = 0
        var actions: [Action] = []
        applyConnectionRule(now: now, &actions)
        return actions
    }

    /// A subscription of `connection` failed (refused, timed out): try again after a backoff.
    public mutating func subscribeFailed(connection: Int, now: Instant) -> [Action] {
        guard connection == self.connection, isBrokerConnected else { return [] }
        subscribeFailures += 1
        var delay = configuration.subscribeRetryInitial
        for _ in 1..<min(subscribeFailures, 32) where delay < configuration.subscribeRetryMax { delay = delay * 2 }
        subscribeRetryArmed = true
        return [.armTimer(.subscribeRetry, at: now.advanced(by: min(delay, configuration.subscribeRetryMax)))]
    }

    /// `mqtt_sender:enabled` has this value (called on every change; repeats are harmless).
    public mutating func senderSwitched(enabled: Bool, now: Instant) -> [Action] {
        guard enabled != isSenderEnabled else { return [] }
        isSenderEnabled = enabled
        var actions: [Action] = []
        applyConnectionRule(now: now, &actions)
        return actions
    }

    // MARK: Log, acks, timers

    /// The log's head as read now, and whether measuring is on (for the status). Records
    /// appended by another process sharing the log are picked up this way too.
    public mutating func headObserved(_ head: SequenceNumber, measuring: Bool?, now: Instant, wallMilliseconds: Int64) -> [Action] {
        var actions: [Action] = []
        if head > sender.head { forward(sender.appended(through: head, now: now), &actions) }
        if let measuring { lastMeasuring = measuring }
        publishStatus(now: now, wallMilliseconds: wallMilliseconds, force: false, &actions)
        return actions
    }

    /// A message arrived on the ack topic.
    public mutating func ackPayloadReceived(_ payload: [UInt8], now: Instant) -> [Action] {
        let ack: Ack
        do { ack = try SyncCodec.decodeAck(payload, expectedDevice: sender.device) } catch {
            return [.reportAnomaly("ignoring an undecodable ack: \(error)")]
        }
        var actions: [Action] = []
        forward(sender.ackReceived(ack, now: now), &actions)
        return actions
    }

    /// A timer fired. Calls for a timer that was cancelled or re-armed later are harmless.
    public mutating func timerFired(_ timer: Timer, now: Instant) -> [Action] {
        var actions: [Action] = []
        switch timer {
        case .resend:
            forward(sender.timerFired(now: now), &actions)
        case .subscribeRetry:
            guard subscribeRetryArmed else { return [] }
            subscribeRetryArmed = false
            if isBrokerConnected && !isSubscribed { actions.append(.subscribe(connection: connection)) }
        }
        return actions
    }

    /// The driver's answer to `.loadRecords` (see `SenderStateMachine.recordsLoaded`).
    public mutating func recordsLoaded(from: SequenceNumber, records: [LogRecord], losses: [LossMarker],
                                       retainedFrom: SequenceNumber, nowUnixMilliseconds: Int64, now: Instant) -> [Action] {
        var actions: [Action] = []
        forward(sender.recordsLoaded(from: from, records: records, losses: losses, retainedFrom: retainedFrom,
                                     nowUnixMilliseconds: nowUnixMilliseconds, now: now), &actions)
        return actions
    }

    /// The broker confirmed a batch publish (PUBACK): informational, never moves `acked`.
    public mutating func publishConfirmed(_ range: SequenceRange) -> [Action] {
        var actions: [Action] = []
        forward(sender.publishConfirmed(range), &actions)
        return actions
    }

    // MARK: Replay

    /// A `replay` command: resolves `query` against the log (`oldestRetained`, `logHead` as
    /// read now) and queues it. The answer comes as `.answerReplay(ticket, _)`, exactly once.
    public mutating func replayRequested(_ query: ReplayQuery, ticket: ReplayTicket, oldestRetained: SequenceNumber?,
                                         logHead: SequenceNumber, now: Instant) -> [Action] {
        var actions: [Action] = []
        if logHead > sender.head { forward(sender.appended(through: logHead, now: now), &actions) }
        let head = sender.head
        let from = query.from ?? oldestRetained ?? head.next
        var to = query.to ?? head
        if let count = query.count, count >= 1 {
            // Saturating: both come from outside.
            let (sum, overflow) = from.rawValue.addingReportingOverflow(UInt64(count) - 1)
            if !overflow, sum < to.rawValue { to = SequenceNumber(sum) }
        }
        guard from <= to, from.rawValue >= 1 else {
            actions.append(.answerReplay(ticket, .finished(resent: nil, notRetained: [])))
            return actions
        }
        let id: String
        if let given = query.requestID {
            id = given
        } else {
            // Replays need an id on the wire; seed commands have none, so make one up.
            unnamedReplays += 1
            id = "local-\(unnamedReplays)"
        }
        guard replays[id] == nil else {
            actions.append(.answerReplay(ticket, .refused("a replay with id \(id) is already running")))
            return actions
        }
        guard let queued = sender.replayRequested(requestID: id, range: SequenceRange(checked: from, to), now: now) else {
            actions.append(.answerReplay(ticket, .refused("too many replays queued; ask again later")))
            return actions
        }
        replays[id] = ticket
        forward(queued, &actions)
        return actions
    }

    /// The driver is stopping: every running replay is refused, and an offline status is
    /// published when the broker is there to take it.
    public mutating func shuttingDown(wallMilliseconds: Int64) -> [Action] {
        var actions: [Action] = replays.values.sorted().map { .answerReplay($0, .refused("the device is shutting down")) }
        replays = [:]
        if isBrokerConnected {
            actions.append(.publishStatus(Status(device: sender.device, state: .offline, epoch: sender.epoch, head: sender.head,
                                                 acked: sender.acked, atUnixMilliseconds: wallMilliseconds)))
        }
        return actions
    }

    // MARK: Internals

    private mutating func applyConnectionRule(now: Instant, _ actions: inout [Action]) {
        guard isSending != sender.isConnected else { return }
        forward(isSending ? sender.connected(now: now) : sender.disconnected(), &actions)
    }

    /// Publishes the retained status: on `force`, else when head, acked or measuring changed
    /// and `statusInterval` passed since the last one.
    private mutating func publishStatus(now: Instant, wallMilliseconds: Int64, force: Bool, _ actions: inout [Action]) {
        guard isBrokerConnected else { return }
        let key = StatusKey(head: sender.head, acked: sender.acked, measuring: lastMeasuring)
        if !force {
            if key == lastStatus { return }
            if let at = lastStatusAt, at.duration(to: now) < configuration.statusInterval { return }
        }
        lastStatus = key
        lastStatusAt = now
        actions.append(.publishStatus(sender.status(atUnixMilliseconds: wallMilliseconds, measuring: lastMeasuring)))
    }

    /// The sender's actions in this machine's terms.
    private mutating func forward(_ senderActions: [Sender.Action], _ actions: inout [Action]) {
        for a in senderActions {
            switch a {
            case .loadRecords(let from, let through, let limit): actions.append(.loadRecords(from: from, through: through, limit: limit))
            case .publish(let batch): actions.append(.publishBatch(batch))
            case .persistAcked(let through): actions.append(.persistAcked(through: through))
            case .armTimer(let at): actions.append(.armTimer(.resend, at: at))
            case .cancelTimer: actions.append(.cancelTimer(.resend))
            case .reportAnomaly(let text): actions.append(.reportAnomaly(text))
            case .replayFinished(let id, let resent, let notRetained):
                guard let ticket = replays.removeValue(forKey: id) else { continue }
                actions.append(.answerReplay(ticket, .finished(resent: resent, notRetained: notRetained)))
            }
        }
    }
}
