// What the client is subscribed to, so a reconnect that finds no session on the broker can
// subscribe again (MQTTClient.swift, theory of operation). Plain values, kept under
// `CallbackBox`'s mutex.

/// One subscription as it was asked for.
struct Subscription: Sendable, Equatable {
    var filter: String
    var qos: MQTTQoS
    var options: Int32
}

/// The granted subscriptions, and the re-subscriptions of a reconnect in flight.
struct Subscriptions {
    /// Granted by the broker and not unsubscribed, in the order they were granted.
    private(set) var granted: [Subscription] = []
    /// SUBSCRIBEs sent again after a reconnect without a session, by mid.
    private var restoring: [Int32: Subscription] = [:]

    /// The broker granted `subscription` (a later grant of one filter replaces the earlier).
    mutating func grant(_ subscription: Subscription) {
        granted.removeAll { $0.filter == subscription.filter }
        granted.append(subscription)
    }

    /// The broker confirmed an unsubscription.
    mutating func remove(filter: String) {
        granted.removeAll { $0.filter == filter }
    }

    /// What to subscribe to again after a CONNACK (nothing when the broker kept the session).
    func toRestore(sessionPresent: Bool) -> [Subscription] {
        sessionPresent ? [] : granted
    }

    mutating func restoring(_ subscription: Subscription, mid: Int32) { restoring[mid] = subscription }

    /// The re-subscription a SUBACK answers, if it answers one.
    mutating func takeRestoring(mid: Int32) -> Subscription? { restoring.removeValue(forKey: mid) }

    /// The connection ended: re-subscriptions in flight get no answer.
    mutating func connectionLost() { restoring.removeAll() }
}
