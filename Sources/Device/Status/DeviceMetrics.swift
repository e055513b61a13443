import FieldlogCore
import Prometheus
import Synchronization

/// The device's Prometheus metrics, served at `GET /metrics`.
///
/// Made from one `PrometheusCollectorRegistry` that the program owns (no global state, so
/// tests can make as many as they like). `main` may also bootstrap swift-metrics with the same
/// registry so the libraries' own metrics show up next to these.
public final class DeviceMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry

    public let appends: Counter
    let appendFailures: Counter
    let appendLatency: DurationHistogram
    let appendGapMax: Gauge
    let readingsSkipped: Counter
    let batchesSent: Counter
    public let resends: Counter
    public let acks: Counter
    public let backlog: Gauge
    public let head: Gauge
    public let ackedThrough: Gauge
    public let reconnects: Counter
    let mqttConnected: Gauge
    public let redisAvailable: Gauge
    public let commands: Counter
    let commandErrors: Counter
    let buttonPresses: Counter
    /// MQTT bytes sent and received, in all and today (the sync agent's client reports them).
    public let dataBudget: DataBudget
    private let sensorErrorCounters = Mutex<[String: Counter]>([:])

    /// - Parameter now: the wall clock in ms since 1970, for the data budget's day (tests turn it).
    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry(),
                now: @escaping @Sendable () -> Int64 = { WallClock.now().unixMilliseconds }) {
        self.registry = registry
        appends = registry.makeCounter(descriptor: Self.d("appends_total", "Readings appended durably to the log."))
        appendFailures = registry.makeCounter(descriptor: Self.d("append_failures_total", "Appends that failed (disk, quota)."))
        appendLatency = registry.makeDurationHistogram(
            descriptor: Self.d("append_latency_seconds", "Time from reading to durable append."),
            buckets: [.microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10),
                      .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .seconds(1)])
        appendGapMax = registry.makeGauge(descriptor: Self.d("append_gap_max_seconds",
                                                             "Longest time between two consecutive appends since start (pauses of measurement excluded)."))
        readingsSkipped = registry.makeCounter(descriptor: Self.d("readings_skipped_total", "Sampling ticks skipped because the previous reading was still running."))
        batchesSent = registry.makeCounter(descriptor: Self.d("batches_sent_total", "Batches published (first sends and resends)."))
        resends = registry.makeCounter(descriptor: Self.d("resends_total", "Batches published again (timeout, reconnect, replay)."))
        acks = registry.makeCounter(descriptor: Self.d("acks_total", "Acks received that moved the acked pointer."))
        backlog = registry.makeGauge(descriptor: Self.d("backlog_records", "Records appended but not yet acknowledged."))
        head = registry.makeGauge(descriptor: Self.d("head_sequence", "Sequence number of the newest record."))
        ackedThrough = registry.makeGauge(descriptor: Self.d("acked_sequence", "Acked-through pointer."))
        reconnects = registry.makeCounter(descriptor: Self.d("mqtt_reconnects_total", "MQTT connections made after the first."))
        mqttConnected = registry.makeGauge(descriptor: Self.d("mqtt_connected", "1 while connected to the broker."))
        redisAvailable = registry.makeGauge(descriptor: Self.d("redis_available", "1 while Redis answers."))
        commands = registry.makeCounter(descriptor: Self.d("commands_total", "Commands executed."))
        commandErrors = registry.makeCounter(descriptor: Self.d("command_errors_total", "Commands answered with an error (malformed, unknown, rejected)."))
        buttonPresses = registry.makeCounter(descriptor: Self.d("button_presses_total", "Debounced start/stop button presses."))
        dataBudget = DataBudget(registry: registry, name: Self.d, now: now)
    }

    /// Counts a failed read of one sensor (labelled by sensor name).
    func sensorError(_ sensor: String) {
        sensorErrorCounters.withLock { counters in
            if let c = counters[sensor] { return c }
            let c = registry.makeCounter(descriptor: Self.d("sensor_errors_total", "Failed sensor reads."), labels: [("sensor", sensor)])
            counters[sensor] = c
            return c
        }.increment()
    }

    /// `fieldlog_device_<name>`; the unit is already part of `name`.
    private static func d(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "fieldlog", subsystem: "device", metricName: name, unitName: "", helpText: help)
    }

    /// The Prometheus text exposition.
    public func render() -> String {
        dataBudget.today()  // a new day shows 0 even before the first packet of the day
        return registry.emitToString()
    }
}
