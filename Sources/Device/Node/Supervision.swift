// Supervision: every component but the log fails on its own.
//
// Theory of operation. The device's promise is that it never stops measuring: only the log
// (it cannot be opened, or the disk is full under quota `stop`) may stop the sampler. Every
// other component — the Redis switch poller and mirror, the status and metrics server, the
// sync agent (MQTT) with its command handler, the button — runs inside a
// `SupervisedService`. When it throws, or returns before shutdown, the supervisor records
// what went wrong in `ComponentHealth`, waits a backoff with jitter and starts it again; a
// component that ran for a minute before failing starts again from the first delay. A
// component that runs but cannot reach what it needs (Redis down, broker unreachable) says
// so through its `ComponentHealth.Reporter` and retries by itself. So nothing a component
// does can end the ServiceGroup (swift-service-lifecycle ends the whole group when any
// service ends), and nothing it does can pause sampling. Graceful shutdown ends a backoff
// wait at once.
//
// What is wrong is said three ways: the log (the first failure, a changed error, and every
// tenth retry at warning; the rest at debug), `/status` (`components`: state, error,
// failures, since when) and `/metrics` (`fieldlog_device_component_up{component=…}`,
// `fieldlog_device_component_failures_total{component=…}`).
import FieldlogCore
import Threading
import Logging
import MQTT
import Prometheus
import ServiceLifecycle
import Sync

/// The state of each supervised component, for /status, /metrics and the log.
public final class ComponentHealth: @unchecked Sendable {
    // @unchecked: `entries` and `order` are only touched under `lock`; the metrics are thread-safe.

    /// What a component is doing.
    public enum State: String, Sendable {
        /// Started, not yet known to work.
        case starting
        /// Works.
        case running
        /// Runs, but what it needs is unavailable (broker, Redis); it retries by itself.
        case degraded
        /// Stopped with an error; the supervisor starts it again after a backoff.
        case failed
    }

    /// One component's entry.
    public struct Entry: Sendable, Equatable {
        public var state: State
        /// What is wrong (nil while running).
        public var problem: String?
        /// How often the component failed (stopped with an error) since start.
        public var failures: Int
        /// Wall time of the last change of state.
        var sinceUnixMilliseconds: Int64
    }

    /// A component's handle to say how it is doing.
    public struct Reporter: Sendable {
        public let component: String
        let health: ComponentHealth
        /// It works.
        public func running() { health.set(component, .running, problem: nil) }
        /// It runs but cannot do its job; it retries by itself.
        public func degraded(_ problem: String) { health.set(component, .degraded, problem: problem) }
    }

    private let lock = Lock()
    private var entries: [String: Entry] = [:]
    private var order: [String] = []
    private let registry: PrometheusCollectorRegistry?
    private var up: [String: Gauge] = [:]
    private var failureCounters: [String: Counter] = [:]

    /// - Parameter metrics: where the component gauges and counters go (nil: nowhere).
    public init(metrics: DeviceMetrics?) {
        registry = metrics?.registry
    }

    /// The reporter for `component`; registers it as starting.
    public func reporter(_ component: String) -> Reporter {
        lock.withLock {
            if entries[component] == nil {
                order.append(component)
                entries[component] = Entry(state: .starting, problem: nil, failures: 0, sinceUnixMilliseconds: WallClock.now().unixMilliseconds)
                if let registry {
                    let labels = [("component", component)]
                    up[component] = registry.makeGauge(
                        descriptor: Self.descriptor("component_up", "1 while the component works (0: starting, degraded or failed; see /status)."),
                        labels: labels)
                    failureCounters[component] = registry.makeCounter(
                        descriptor: Self.descriptor("component_failures_total", "Times the component stopped with an error and was started again."),
                        labels: labels)
                }
            }
        }
        return Reporter(component: component, health: self)
    }

    /// The component stopped with `problem`; it is started again after a backoff.
    func failed(_ component: String, problem: String) {
        set(component, .failed, problem: problem)
        lock.withLock {
            entries[component]?.failures += 1
            failureCounters[component]?.increment()
        }
    }

    func set(_ component: String, _ state: State, problem: String?) {
        lock.withLock {
            guard var e = entries[component] else { return }
            if e.state != state { e.sinceUnixMilliseconds = WallClock.now().unixMilliseconds }
            e.state = state
            e.problem = problem
            entries[component] = e
            up[component]?.set(Double(state == .running ? 1 : 0))
        }
    }

    /// The entries in registration order.
    public var snapshot: [(component: String, entry: Entry)] {
        lock.withLock { order.compactMap { name in entries[name].map { (name, $0) } } }
    }

    /// The entries as the `components` member of /status.
    public func json() -> JSONValue {
        .object(snapshot.map { c in
            (c.component, .object([("state", .string(c.entry.state.rawValue)),
                                   ("problem", c.entry.problem.map { .string($0) } ?? .null),
                                   ("failures", .integer(Int64(c.entry.failures))),
                                   ("since_unix_ms", .integer(c.entry.sinceUnixMilliseconds))]))
        })
    }

    private static func descriptor(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "fieldlog", subsystem: "device", metricName: name, unitName: "", helpText: help)
    }
}

/// Runs a component and starts it again when it fails (see the theory of operation above).
public struct SupervisedService: Service {
    public let reporter: ComponentHealth.Reporter
    public let retry: MQTTReconnectPolicy
    public let logger: Logger
    let body: @Sendable (ComponentHealth.Reporter) async throws -> Void

    /// A run that lasted this long before failing starts the backoff from the beginning.
    static let stableAfter: Duration = .seconds(60)

    /// - Parameters:
    ///   - retry: delays between starts (exponential with jitter; the same rule as MQTT reconnects).
    ///   - body: one run of the component; it returns (or throws) at graceful shutdown.
    public init(_ reporter: ComponentHealth.Reporter, retry: MQTTReconnectPolicy, logger: Logger,
                body: @escaping @Sendable (ComponentHealth.Reporter) async throws -> Void) {
        self.reporter = reporter
        self.retry = retry
        self.logger = logger
        self.body = body
    }

    public func run() async {
        let backoff = ReconnectBackoff(policy: retry)
        let component = reporter.component
        var attempt = 0
        var lastProblem: String?
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            let started = ContinuousClock.now
            let problem: String
            do {
                try await body(reporter)
                if Task.isCancelled || Task.isShuttingDownGracefully { break }
                problem = "stopped unexpectedly"
            } catch {
                if Task.isCancelled || Task.isShuttingDownGracefully { break }
                problem = "\(error)"
            }
            if ContinuousClock.now - started >= Self.stableAfter { attempt = 0 }
            attempt += 1
            let delay = backoff.delay(attempt: attempt, randomUnit: Double.random(in: 0..<1))
            reporter.health.failed(component, problem: problem)
            let metadata: Logger.Metadata = ["component": "\(component)", "problem": "\(problem)", "attempt": "\(attempt)",
                                             "retry_in": "\(delay)"]
            if attempt == 1 || problem != lastProblem || attempt % 10 == 0 {
                logger.warning("component failed; sampling goes on, it is started again after a backoff", metadata: metadata)
            } else {
                logger.debug("component failed again", metadata: metadata)
            }
            lastProblem = problem
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: delay) }
        }
    }
}
