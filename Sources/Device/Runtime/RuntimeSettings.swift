// Runtime switches: the seed's Redis keys that pause and pace the sampler and the sender.
//
// Theory of operation: the switches live in Redis (other programs and dashboards flip them
// there), but Redis is never on the critical path. `RuntimeSettings` holds the last known
// value of each switch, starting from the configured defaults. The hot-state poller copies
// Redis' values in when Redis answers; commands and the button change them here first and the
// poller writes them to Redis when it can (a change made while Redis is down is kept and
// written when it is back, unless Redis got a newer value in the meantime, which wins as the
// seed's programs would see it). While Redis is down, everyone keeps the last known values.
//
// Waiting for a change (`waitForChange`) is structured: the waiting task suspends on a
// continuation kept in `waiters` (a mutex, so the timer and a cancellation can end the wait
// without hopping onto the actor), and its timer is a child task that ends with the wait.
import FieldlogCore
import Synchronization
import Threading
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The names of the runtime switches, as the seed's programs use them in Redis.
public enum SwitchKey: String, Sendable, CaseIterable {
    case measurementEnabled = "measurement:enabled"
    case measurementInterval = "measurement:interval"
    case senderEnabled = "mqtt_sender:enabled"
    case senderInterval = "mqtt_sender:interval"

    /// Allowed interval range in seconds.
    static let intervalRange: ClosedRange<Double> = 0.01...86400

    /// Parses a value as it may come from Redis or a command; throws naming the key and what is allowed.
    public func parse(_ text: String) throws(DomainError) -> SwitchValue {
        let t = text.trimmed(.spaces)
        switch self {
        case .measurementEnabled, .senderEnabled:
            // The seed: "0" means off, anything else on. We accept the usual words too.
            switch t.lowercased() {
            case "0", "false", "off", "no": return .enabled(false)
            case "": throw DomainError("\(rawValue) must not be empty; allowed: 0 (off) or 1 (on)")
            default: return .enabled(true)
            }
        case .measurementInterval, .senderInterval:
            guard let d = Double(t), d.isFinite, Self.intervalRange.contains(d) else {
                throw DomainError("\(rawValue) must be a number of seconds in \(Self.intervalRange.lowerBound)…\(Self.intervalRange.upperBound), got \(text.debugDescription)")
            }
            return .interval(.milliseconds(Int64((d * 1000).rounded())))
        }
    }
}

/// A parsed switch value.
public enum SwitchValue: Hashable, Sendable {
    case enabled(Bool)
    case interval(Duration)

    /// The text stored in Redis (the seed's format: "0"/"1", seconds as a decimal).
    var redisText: String {
        switch self {
        case .enabled(let b): return b ? "1" : "0"
        case .interval(let d): return formatSeconds(d)
        }
    }
}

func formatSeconds(_ d: Duration) -> String {
    let ms = d.inMilliseconds
    if ms % 1000 == 0 { return String(ms / 1000) }
    return String(Double(ms) / 1000)
}

/// The current value of every switch.
public struct DeviceSwitches: Hashable, Sendable {
    public var measurementEnabled: Bool
    public var measurementInterval: Duration
    public var senderEnabled: Bool
    public var senderInterval: Duration

    public init(measurementEnabled: Bool, measurementInterval: Duration, senderEnabled: Bool, senderInterval: Duration) {
        self.measurementEnabled = measurementEnabled
        self.measurementInterval = measurementInterval
        self.senderEnabled = senderEnabled
        self.senderInterval = senderInterval
    }

    public subscript(key: SwitchKey) -> SwitchValue {
        get {
            switch key {
            case .measurementEnabled: return .enabled(measurementEnabled)
            case .measurementInterval: return .interval(measurementInterval)
            case .senderEnabled: return .enabled(senderEnabled)
            case .senderInterval: return .interval(senderInterval)
            }
        }
        set {
            switch (key, newValue) {
            case (.measurementEnabled, .enabled(let b)): measurementEnabled = b
            case (.senderEnabled, .enabled(let b)): senderEnabled = b
            case (.measurementInterval, .interval(let d)): measurementInterval = d
            case (.senderInterval, .interval(let d)): senderInterval = d
            default: preconditionFailure("switch \(key.rawValue) cannot take \(newValue)")
            }
        }
    }
}

/// The process-wide holder of the runtime switches (see the theory of operation above).
public actor RuntimeSettings {
    public private(set) var switches: DeviceSwitches
    /// Local changes not yet written to Redis.
    public private(set) var pendingWrites: [SwitchKey: SwitchValue] = [:]
    /// Whether the last attempt to reach Redis worked (for /status and /metrics).
    public private(set) var redisAvailable: Bool = false
    /// The tasks waiting in `waitForChange`.
    private nonisolated let waiters = Mutex(SwitchWaiters())

    public init(defaults: DeviceSwitches) {
        switches = defaults
    }

    /// Sets a switch locally (command, button) and queues it for Redis.
    public func set(_ key: SwitchKey, _ value: SwitchValue) {
        switches[key] = value
        pendingWrites[key] = value
        wakeWaiters()
    }

    /// Parses and sets; throws a message naming the key and what is allowed.
    public func set(_ key: SwitchKey, text: String) throws(DomainError) -> SwitchValue {
        let v = try key.parse(text)
        set(key, v)
        return v
    }

    /// Flips `measurement:enabled` (the button) and returns the new value.
    public func toggleMeasurement() -> Bool {
        let now = !switches.measurementEnabled
        set(.measurementEnabled, .enabled(now))
        return now
    }

    /// Values read from Redis: a present, valid value wins; an absent key keeps the last known
    /// value (the seed's fallback); an invalid one is returned as a problem and ignored.
    @discardableResult
    public func applyRemote(_ values: [SwitchKey: String?]) -> [DomainError] {
        var problems: [DomainError] = []
        let before = switches
        for (key, text) in values {
            guard pendingWrites[key] == nil else { continue }  // our newer local change is written first
            guard let text else { continue }
            do throws(DomainError) { switches[key] = try key.parse(text) } catch { problems.append(error) }
        }
        redisAvailable = true
        if switches != before { wakeWaiters() }
        return problems
    }

    /// The poller wrote these pending values to Redis.
    public func writesDone(_ written: [SwitchKey: SwitchValue]) {
        for (k, v) in written where pendingWrites[k] == v { pendingWrites[k] = nil }
    }

    func setRedisAvailable(_ available: Bool) { redisAvailable = available }

    /// Waits until a switch changes or `timeout` passes (the sampler and sender sleep here,
    /// so a switch flipped from 1 h to 1 s takes effect at once). With `orAppend`, a record
    /// appended in this process (`appended()`) ends the wait too: the sender publishes a new
    /// reading at once instead of up to one sender interval later. Ends at once when the task
    /// is cancelled.
    nonisolated func waitForChange(timeout: Duration, orAppend: Bool = false) async {
        let id = waiters.withLock { $0.newID() }
        await withTaskGroup(of: Void.self) { group in
            // The timer: a child task on the waiter's executor (the log's thread in fieldlog-device).
            group.addTask { [self] in
                do { try await executorSleep(for: timeout) } catch { return }
                self.waiters.withLock { $0.wake(id) }?.resume()
            }
            await withTaskCancellationHandler {
                await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                    let now = waiters.withLock { $0.wait(id, c, wakeOnAppend: orAppend) }
                    if now { c.resume() }
                }
            } onCancel: { [self] in
                self.waiters.withLock { $0.wake(id) }?.resume()
            }
            group.cancelAll()
        }
        // The timer has ended too (a group waits for its children): no wake-up for `id` comes later.
        waiters.withLock { $0.forget(id) }
    }

    /// The sampler of this process appended a record durably: wakes the waits that asked for it.
    public func appended() {
        for c in waiters.withLock({ $0.wakeAll(onlyOnAppend: true) }) { c.resume() }
    }

    private func wakeWaiters() {
        for c in waiters.withLock({ $0.wakeAll(onlyOnAppend: false) }) { c.resume() }
    }
}

/// The tasks waiting in `RuntimeSettings.waitForChange`, by id. A wake-up may come before the
/// waiter registered (a zero timeout, a cancellation): it is remembered until it does.
struct SwitchWaiters {
    private struct Waiter {
        var continuation: CheckedContinuation<Void, Never>
        var wakeOnAppend: Bool
    }

    private var waiting: [UInt64: Waiter] = [:]
    private var wokenEarly: Set<UInt64> = []
    private var nextID: UInt64 = 0

    mutating func newID() -> UInt64 {
        nextID += 1
        return nextID
    }

    /// Registers the waiter; true when it was woken already (the caller resumes it).
    mutating func wait(_ id: UInt64, _ continuation: CheckedContinuation<Void, Never>, wakeOnAppend: Bool) -> Bool {
        if wokenEarly.remove(id) != nil { return true }
        waiting[id] = Waiter(continuation: continuation, wakeOnAppend: wakeOnAppend)
        return false
    }

    /// The continuation to resume, or nil when the waiter has not registered yet (remembered).
    mutating func wake(_ id: UInt64) -> CheckedContinuation<Void, Never>? {
        if let w = waiting.removeValue(forKey: id) { return w.continuation }
        wokenEarly.insert(id)
        return nil
    }

    /// The wait ended: a wake-up that came after it is not kept.
    mutating func forget(_ id: UInt64) {
        wokenEarly.remove(id)
    }

    /// Removes and returns the waiters to resume (all, or those that asked to wake on appends).
    mutating func wakeAll(onlyOnAppend: Bool) -> [CheckedContinuation<Void, Never>] {
        let woken = waiting.filter { !onlyOnAppend || $0.value.wakeOnAppend }
        for id in woken.keys { waiting[id] = nil }
        return woken.values.map(\.continuation)
    }
}
