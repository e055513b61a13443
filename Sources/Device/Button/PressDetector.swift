// Start/stop button logic, sans IO: edge events in, presses out.
//
// Theory of operation: a mechanical button bounces, giving a burst of edges for one press.
// Like the seed's RPi.GPIO `bouncetime`, an edge of the configured kind counts as a press
// only when at least `bounce` has passed since the last edge of any kind: an edge inside a
// burst restarts the quiet period, so a burst gives exactly one press, however long it
// bounces. Edges of the other kind are part of bursts too but never presses themselves. Times
// are the kernel's event timestamps (monotonic), passed in, so tests run on made-up time.
// Each press toggles `measurement:enabled`.

/// A GPIO edge, as the kernel reports it.
public enum EdgeKind: Hashable, Sendable { case rising, falling }

/// One edge event with its monotonic timestamp.
public struct EdgeEvent: Hashable, Sendable {
    public var kind: EdgeKind
    /// Monotonic time of the edge, in nanoseconds.
    public var timestampNanoseconds: UInt64
    public init(kind: EdgeKind, timestampNanoseconds: UInt64) {
        self.kind = kind
        self.timestampNanoseconds = timestampNanoseconds
    }
}

/// Turns a stream of bouncy edges into presses.
public struct PressDetector: Sendable {
    public let pressEdge: EdgeKind
    public let bounceNanoseconds: UInt64
    private var lastEdgeNanoseconds: UInt64?

    public init(pressEdge: EdgeKind, bounce: Duration) {
        let c = bounce.components
        precondition(c.seconds >= 0, "bounce must not be negative")
        self.pressEdge = pressEdge
        bounceNanoseconds = UInt64(c.seconds) * 1_000_000_000 + UInt64(c.attoseconds / 1_000_000_000)
    }

    /// Feeds one edge; returns true when it is a press.
    public mutating func edge(_ e: EdgeEvent) -> Bool {
        defer { lastEdgeNanoseconds = e.timestampNanoseconds }
        if let last = lastEdgeNanoseconds {
            // Out-of-order timestamps (should not happen) are treated as inside the burst.
            guard e.timestampNanoseconds >= last, e.timestampNanoseconds - last >= bounceNanoseconds else { return false }
        }
        return e.kind == pressEdge
    }
}

/// The button's whole behaviour: presses toggle a boolean that starts from the current switch.
public struct ButtonToggle: Sendable {
    public private(set) var detector: PressDetector
    public private(set) var presses = 0

    public init(detector: PressDetector) { self.detector = detector }

    /// Feeds an edge; returns `.toggle` when it is a press.
    public mutating func edge(_ e: EdgeEvent) -> ButtonAction {
        guard detector.edge(e) else { return .none }
        presses += 1
        return .toggle
    }
}

public enum ButtonAction: Hashable, Sendable { case none, toggle }
