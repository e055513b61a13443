// Metrics of the backend and the `GET /metrics` endpoint (Prometheus text format).
//
// Every metric is made with an explicit factory over the instance's own registry (not the
// process-wide MetricsSystem), so each ingest service, and each test, counts on its own.
// That factory (`DocumentedMetricsFactory`) gives every family its `# HELP` line from
// `BackendMetrics.help`: `promtool check metrics` finds nothing to complain about, and a
// metric name without a help text is a programming error caught by the first test that
// makes it.
import BackendStore
import CoreMetrics
import FieldlogCore
import Foundation
import Hummingbird
import Logging
import Metrics
import Prometheus
import Sync

/// The counters, gauges and timers of ingest. Names are the Prometheus names.
package final class BackendMetrics: Sendable {
    package let registry: PrometheusCollectorRegistry
    private let factory: DocumentedMetricsFactory

    /// The `# HELP` text of every family; `DocumentedMetricsFactory` refuses a name not here.
    package static let help: [String: String] = [
        "fieldlog_rows_inserted_total": "Readings inserted into MariaDB (new rows, duplicates not counted).",
        "fieldlog_duplicates_absorbed_total": "Readings received again and absorbed by the idempotent insert.",
        "fieldlog_acks_sent_total": "Acks published to devices after COMMIT.",
        "fieldlog_ack_publish_failures_total": "Acks that could not be published (the device resends; the duplicate is absorbed).",
        "fieldlog_deadlock_retries_total": "Transactions retried after a deadlock or Galera certification conflict.",
        "fieldlog_database_reconnects_total": "Connections to MariaDB made again after a failure.",
        "fieldlog_messages_dropped_unacked_total": "Messages not taken, unacknowledged, by reason (device-share, queue-full); the device resends them.",
        "fieldlog_legacy_rows_inserted_total": "Seed-format readings inserted (legacy values topic).",
        "fieldlog_legacy_duplicates_absorbed_total": "Seed-format readings received again and absorbed.",
        "fieldlog_commit_seconds": "Time to commit one transaction of batches.",
        "fieldlog_batches_per_transaction": "Batches committed per transaction.",
        "fieldlog_ingest_queue_depth": "Messages waiting in the ingest queue.",
        "fieldlog_ingest_queue_bytes": "Bytes of the messages waiting in the ingest queue.",
        "fieldlog_ingest_reading_paused": "1 while the process stops reading from the broker because its queue is full (backpressure).",
        "fieldlog_transaction_retries_total": "Transactions tried again after a database error that may pass (see docs/backend.md).",
        "fieldlog_transactions_isolated_total": "Transactions split until the message the database refused was alone.",
        "fieldlog_messages_abandoned_total": "Messages that could be neither stored nor kept as a dead letter (logged).",
        "fieldlog_messages_received_total": "Messages received, by kind (batch, status, response, legacy, invalid).",
        "fieldlog_dead_letters_total": "Messages or records kept aside instead of stored, by reason.",
        "fieldlog_device_lag_records": "Highest sequence number received from the device minus its acked-through pointer.",
        "fieldlog_device_delay_seconds": "Receive time minus the device time of the newest record received.",
    ]

    package let rowsInserted: Metrics.Counter
    package let duplicates: Metrics.Counter
    package let acksSent: Metrics.Counter
    package let ackPublishFailures: Metrics.Counter
    package let deadlockRetries: Metrics.Counter
    package let databaseReconnects: Metrics.Counter
    package let legacyInserted: Metrics.Counter
    package let legacyDuplicates: Metrics.Counter
    package let commitLatency: Metrics.Timer
    package let batchesPerTransaction: Metrics.Recorder
    package let queueDepth: Metrics.Gauge
    package let queueBytes: Metrics.Gauge
    package let readingPaused: Metrics.Gauge
    package let transactionRetries: Metrics.Counter
    package let isolations: Metrics.Counter
    package let abandoned: Metrics.Counter

    package init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        var f = DocumentedMetricsFactory(registry: registry, help: Self.help)
        f.durationHistogramBuckets["fieldlog_commit_seconds"] = [
            .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
            .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(5),
        ]
        f.valueHistogramBuckets["fieldlog_batches_per_transaction"] = [1, 2, 4, 8, 16, 32, 64, 128, 256]
        factory = f
        rowsInserted = Metrics.Counter(label: "fieldlog_rows_inserted_total", factory: f)
        duplicates = Metrics.Counter(label: "fieldlog_duplicates_absorbed_total", factory: f)
        acksSent = Metrics.Counter(label: "fieldlog_acks_sent_total", factory: f)
        ackPublishFailures = Metrics.Counter(label: "fieldlog_ack_publish_failures_total", factory: f)
        deadlockRetries = Metrics.Counter(label: "fieldlog_deadlock_retries_total", factory: f)
        databaseReconnects = Metrics.Counter(label: "fieldlog_database_reconnects_total", factory: f)
        legacyInserted = Metrics.Counter(label: "fieldlog_legacy_rows_inserted_total", factory: f)
        legacyDuplicates = Metrics.Counter(label: "fieldlog_legacy_duplicates_absorbed_total", factory: f)
        commitLatency = Metrics.Timer(label: "fieldlog_commit_seconds", preferredDisplayUnit: .seconds, factory: f)
        batchesPerTransaction = Metrics.Recorder(label: "fieldlog_batches_per_transaction", aggregate: true, factory: f)
        queueDepth = Metrics.Gauge(label: "fieldlog_ingest_queue_depth", factory: f)
        queueBytes = Metrics.Gauge(label: "fieldlog_ingest_queue_bytes", factory: f)
        readingPaused = Metrics.Gauge(label: "fieldlog_ingest_reading_paused", factory: f)
        transactionRetries = Metrics.Counter(label: "fieldlog_transaction_retries_total", factory: f)
        isolations = Metrics.Counter(label: "fieldlog_transactions_isolated_total", factory: f)
        abandoned = Metrics.Counter(label: "fieldlog_messages_abandoned_total", factory: f)
    }

    /// `fieldlog_messages_received_total{kind}`; kind is batch, status, response, legacy or invalid.
    package func received(_ kind: String, count: Int = 1) {
        Metrics.Counter(label: "fieldlog_messages_received_total", dimensions: [("kind", kind)], factory: factory).increment(by: count)
    }

    /// `fieldlog_messages_dropped_unacked_total{reason}`: messages not taken (device-share, queue-full).
    package func dropped(_ reason: DropReason) {
        Metrics.Counter(label: "fieldlog_messages_dropped_unacked_total", dimensions: [("reason", reason.rawValue)], factory: factory).increment()
    }

    /// `fieldlog_dead_letters_total{reason}`: the reason is Sync's `DeadLetterReason`, the one
    /// enum that is also stored in the `reason` column.
    package func deadLetter(_ reason: DeadLetterReason, count: Int = 1) {
        Metrics.Counter(label: "fieldlog_dead_letters_total", dimensions: [("reason", reason.rawValue)], factory: factory).increment(by: count)
    }

    /// `fieldlog_device_lag_records{device}`: highest sequence number received minus acked-through,
    /// and `fieldlog_device_delay_seconds{device}`: receive time minus the newest record's device time.
    package func deviceLag(_ device: DeviceID, records: UInt64, delaySeconds: Double?) {
        Metrics.Gauge(label: "fieldlog_device_lag_records", dimensions: [("device", device.rawValue)], factory: factory).record(Double(records))
        if let delaySeconds {
            Metrics.Gauge(label: "fieldlog_device_delay_seconds", dimensions: [("device", device.rawValue)], factory: factory).record(delaySeconds)
        }
    }

    package func text() -> String { registry.emitToString() }
}

/// A swift-metrics factory over one Prometheus registry that gives every family its help text
/// (swift-prometheus' own `PrometheusMetricsFactory` registers families without one).
package struct DocumentedMetricsFactory: CoreMetrics.MetricsFactory {
    package let registry: PrometheusCollectorRegistry
    package let help: [String: String]
    package var durationHistogramBuckets: [String: [Duration]] = [:]
    package var valueHistogramBuckets: [String: [Double]] = [:]

    package init(registry: PrometheusCollectorRegistry, help: [String: String]) {
        self.registry = registry
        self.help = help
    }

    private func d(_ name: String) -> MetricNameDescriptor {
        guard let h = help[name] else { preconditionFailure("metric \(name) has no help text in BackendMetrics.help") }
        return MetricNameDescriptor(metricName: name, unitName: "", helpText: h)
    }

    package func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        registry.makeCounter(descriptor: d(label), labels: dimensions)
    }

    package func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler {
        registry.makeCounter(descriptor: d(label), labels: dimensions)
    }

    package func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        guard aggregate else { return registry.makeGauge(descriptor: d(label), labels: dimensions) }
        guard let buckets = valueHistogramBuckets[label] else { preconditionFailure("histogram \(label) has no buckets") }
        return registry.makeValueHistogram(descriptor: d(label), labels: dimensions, buckets: buckets)
    }

    package func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler {
        registry.makeGauge(descriptor: d(label), labels: dimensions)
    }

    package func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
        guard let buckets = durationHistogramBuckets[label] else { preconditionFailure("timer \(label) has no buckets") }
        return registry.makeDurationHistogram(descriptor: d(label), labels: dimensions, buckets: buckets)
    }

    package func destroyCounter(_ handler: any CounterHandler) {
        if let c = handler as? Prometheus.Counter { registry.unregisterCounter(c) }
    }

    package func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) {
        if let c = handler as? Prometheus.Counter { registry.unregisterCounter(c) }
    }

    package func destroyRecorder(_ handler: any RecorderHandler) {
        if let g = handler as? Prometheus.Gauge { registry.unregisterGauge(g) }
        if let h = handler as? ValueHistogram { registry.unregisterValueHistogram(h) }
    }

    package func destroyMeter(_ handler: any MeterHandler) {
        if let g = handler as? Prometheus.Gauge { registry.unregisterGauge(g) }
    }

    package func destroyTimer(_ handler: any TimerHandler) {
        if let h = handler as? DurationHistogram { registry.unregisterDurationHistogram(h) }
    }
}

/// The HTTP endpoint: `GET /metrics` (Prometheus text), `GET /health` ("ok").
package enum MetricsEndpoint {
    package static func buildRouter(metrics: BackendMetrics) -> Router<BasicRequestContext> {
        let router = Router()
        router.get("/metrics") { _, _ -> Response in
            let body = metrics.text()
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                            body: .init(byteBuffer: ByteBuffer(string: body)))
        }
        router.get("/health") { _, _ in "ok\n" }
        return router
    }

    package static func buildApplication(metrics: BackendMetrics, host: String, port: Int, logger: Logger) -> some ApplicationProtocol {
        Application(router: buildRouter(metrics: metrics),
                    configuration: .init(address: .hostname(host, port: port), serverName: "fieldlog-backend"),
                    logger: logger)
    }
}
