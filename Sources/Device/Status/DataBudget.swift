// The data budget: how many bytes the device's MQTT traffic took today, for metered links.
//
// Theory of operation: the sync agent's MQTT client reports the size of every PUBLISH and
// PUBACK it sends or receives (`MQTTTrafficObserver`; what is and is not counted is in the
// MQTT module's MQTTTraffic.swift). `DataBudget` adds them to two Prometheus counters (all
// time, so `increase(…[1d])` works across days) and to a tally for the current UTC day of the
// device's wall clock, which starts again at 0 when the day changes. The day's tally is shown
// on /status and /metrics and sent in the status message (spec §3.4), so the backend keeps it
// per device and day. It lives in memory: a restart starts the day's tally again at 0 (the
// backend keeps the larger figure of the day), so after a restart it is a lower bound.
import FieldlogCore
import MQTT
import Prometheus
import Synchronization
import Sync

/// Counts MQTT bytes per UTC day (see the theory of operation above).
public final class DataBudget: MQTTTrafficObserver {
    private let current: Mutex<DataUsage>
    private let now: @Sendable () -> Int64
    let sentTotal: Counter
    let receivedTotal: Counter
    let sentToday: Gauge
    let receivedToday: Gauge

    /// - Parameter now: the wall clock in ms since 1970 (a parameter so tests can turn days).
    init(registry: PrometheusCollectorRegistry, name: (String, String) -> MetricNameDescriptor,
         now: @escaping @Sendable () -> Int64 = { WallClock.now().unixMilliseconds }) {
        self.now = now
        current = Mutex(DataUsage(day: DataUsage.day(ofUnixMilliseconds: now()), sentBytes: 0, receivedBytes: 0))
        sentTotal = registry.makeCounter(descriptor: name("mqtt_sent_bytes_total", "Bytes of MQTT PUBLISH and PUBACK packets sent (headers included)."))
        receivedTotal = registry.makeCounter(descriptor: name("mqtt_received_bytes_total", "Bytes of MQTT PUBLISH and PUBACK packets received (headers included)."))
        sentToday = registry.makeGauge(descriptor: name("mqtt_sent_today_bytes", "MQTT bytes sent since midnight UTC (device clock)."))
        receivedToday = registry.makeGauge(descriptor: name("mqtt_received_today_bytes", "MQTT bytes received since midnight UTC (device clock)."))
    }

    public func mqttBytesSent(_ bytes: Int) {
        update { $0.sentBytes += Int64(bytes) }
        sentTotal.increment(by: Int64(bytes))
    }

    public func mqttBytesReceived(_ bytes: Int) {
        update { $0.receivedBytes += Int64(bytes) }
        receivedTotal.increment(by: Int64(bytes))
    }

    /// Today's figures (a new day starts at 0).
    @discardableResult
    public func today() -> DataUsage { update { _ in } }

    @discardableResult
    private func update(_ body: (inout DataUsage) -> Void) -> DataUsage {
        let day = DataUsage.day(ofUnixMilliseconds: now())
        return current.withLock { u in
            // A wall clock stepped back to yesterday keeps counting on today's tally.
            if day > u.day { u = DataUsage(day: day, sentBytes: 0, receivedBytes: 0) }
            body(&u)
            // Under the lock, so the gauges never go back to an older figure.
            sentToday.set(Double(u.sentBytes))
            receivedToday.set(Double(u.receivedBytes))
            return u
        }
    }
}
