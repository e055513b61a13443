// Operations sent to the broker that wait for its answer (PUBACK, SUBACK, UNSUBACK), keyed by
// libmosquitto's packet id ("mid"), and the link between one waiting call and its task's
// cancellation. Plain values: `CallbackBox` keeps them under its mutex.
import Synchronization

/// The waiting operations of one kind (publishes, subscribes or unsubscribes).
///
/// Three orders of events are possible and all are handled:
/// - register, then answer: the usual case.
/// - answer, then register: libmosquitto calls back on the network thread before its
///   `mosquitto_…_v5` call returned the mid to the sending thread; the answer is kept until
///   the sender registers.
/// - register, cancel, then answer: the waiting task was cancelled; it was resumed with
///   `CancellationError` at once, and the late answer is reported as `.abandoned` (so a
///   granted subscription is still recorded) instead of being kept as an early answer.
struct PendingAnswers<Request, Answer, Success: Sendable> {
    struct Waiter {
        var request: Request
        var continuation: CheckedContinuation<Success, Error>
    }

    /// What an answer from the broker finds.
    enum Arrival {
        /// The waiting call: resume it.
        case waiter(Waiter)
        /// A call whose task was cancelled: only its bookkeeping is left to do.
        case abandoned(Request)
        /// No call yet: kept until the sender registers.
        case early
    }

    private var waiting: [Int32: Waiter] = [:]
    private var early: [Int32: Answer] = [:]
    private var abandoned: [Int32: Request] = [:]

    /// The sender registers its call once libmosquitto returned the mid; returns the answer
    /// when it came first (the caller then completes the call itself).
    mutating func register(_ mid: Int32, _ request: Request, _ continuation: CheckedContinuation<Success, Error>) -> Answer? {
        if let answer = early.removeValue(forKey: mid) { return answer }
        waiting[mid] = Waiter(request: request, continuation: continuation)
        return nil
    }

    /// The broker answered `mid`.
    mutating func answer(_ mid: Int32, _ answer: Answer) -> Arrival {
        if let waiter = waiting.removeValue(forKey: mid) { return .waiter(waiter) }
        if let request = abandoned.removeValue(forKey: mid) { return .abandoned(request) }
        early[mid] = answer
        return .early
    }

    /// The task waiting for `mid` was cancelled: its waiter, to resume with `CancellationError`
    /// (nil when the answer came first and resumed it already).
    mutating func cancel(_ mid: Int32) -> Waiter? {
        guard let waiter = waiting.removeValue(forKey: mid) else { return nil }
        abandoned[mid] = waiter.request
        return waiter
    }

    /// Removes the waiting calls whose request matches (their answers will not come: the
    /// connection was lost or closed) and forgets the matching abandoned ones.
    mutating func removeAll(where matches: (Request) -> Bool) -> [Waiter] {
        let removed = waiting.filter { matches($0.value.request) }
        for mid in removed.keys { waiting[mid] = nil }
        abandoned = abandoned.filter { !matches($0.value) }
        return Array(removed.values)
    }
}

/// Links one waiting call to its task's cancellation handler, which may run before the call
/// sent its packet, between sending and registering the mid, or after.
final class CancellationTicket: Sendable {
    private enum State {
        case sending
        case registered(Int32)
        case cancelled
    }

    private let state = Mutex(State.sending)

    /// Before sending: false when the task was cancelled already (then send nothing).
    func shouldSend() -> Bool {
        state.withLock { if case .cancelled = $0 { return false }; return true }
    }

    /// After registering `mid`: false when the task was cancelled meanwhile (the caller then
    /// cancels `mid` itself).
    func registered(_ mid: Int32) -> Bool {
        state.withLock { s in
            if case .cancelled = s { return false }
            s = .registered(mid)
            return true
        }
    }

    /// From the cancellation handler: the mid to cancel, when the call registered one.
    func cancel() -> Int32? {
        state.withLock { s in
            defer { s = .cancelled }
            if case .registered(let mid) = s { return mid }
            return nil
        }
    }
}

extension PendingAnswers.Waiter: Sendable where Request: Sendable {}
