// Start/stop button logic, sans IO: edge events in, presses out.
//
// Theory of operation: a mechanical button bounces, giving a burst of edges for one press.
// Like the seed's RPi.GPIO `bouncetime`, an edge of the configured kind counts as a press
// only when at least `bounce` has passed since the last edge of any kind: an edge inside a
// burst restarts the quiet period, so a burst gives exactly one press, however long it
// bounces. Edges of the other kind are part of bursts too but never presses themselves. Times
// are the kernel's event timestamps (monotonic, `GPIOEdgeEvent.timestamp`), passed in, so
// tests run on made-up time. Each press toggles `measurement:enabled`. This is the only
// debouncing of the button: the GPIO wrapper reports every edge.
import GPIO

/// Turns a stream of bouncy edges into presses.
public struct PressDetector: Sendable {
    public let pressEdge: GPIOEdgeEvent.Kind
    public let bounce: Duration
    private var lastEdge: Duration?

    public init(pressEdge: GPIOEdgeEvent.Kind, bounce: Duration) {
        precondition(bounce >= .zero, "bounce must not be negative")
        self.pressEdge = pressEdge
        self.bounce = bounce
    }

    /// Feeds one edge; returns true when it is a press.
    public mutating func edge(_ e: GPIOEdgeEvent) -> Bool {
        defer { lastEdge = e.timestamp }
        if let last = lastEdge {
            // Out-of-order timestamps (should not happen) are treated as inside the burst.
            guard e.timestamp >= last, e.timestamp - last >= bounce else { return false }
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
    public mutating func edge(_ e: GPIOEdgeEvent) -> ButtonAction {
        guard detector.edge(e) else { return .none }
        presses += 1
        return .toggle
    }
}

public enum ButtonAction: Hashable, Sendable { case none, toggle }
