// GPIO: a thin, safe wrapper over libgpiod v1.6 for one edge-event input line.
/// Software debounce for edge events (sans-IO): an event is accepted when at least `interval`
/// passed since the last accepted one; the bounces of a mechanical button in between are
/// dropped. Timestamps come from the caller (the kernel's event time), so tests use synthetic ones.
public struct Debouncer: Sendable, Hashable {
    /// Minimum time between two accepted events (the seed's BUTTON_BOUNCE_MILLIS, default 20 ms).
    public let interval: Duration
    private var lastAccepted: Duration?

    public init(interval: Duration = .milliseconds(20)) {
        precondition(interval >= .zero, "debounce interval must not be negative")
        self.interval = interval
    }

    /// True when the event at `timestamp` counts; false when it is a bounce of the last one.
    /// Timestamps must not go backwards (the kernel's monotonic clock does not).
    public mutating func accept(at timestamp: Duration) -> Bool {
        if let last = lastAccepted {
            precondition(timestamp >= last, "event timestamps went backwards (\(timestamp) < \(last))")
            guard timestamp - last >= interval else { return false }
        }
        lastAccepted = timestamp
        return true
    }

    /// Forgets the last accepted event (e.g. after the line was re-requested).
    public mutating func reset() { lastAccepted = nil }
}
