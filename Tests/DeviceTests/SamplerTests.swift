@testable import Device
import FieldlogCore
import Log
import Logging
import TestSupport
import XCTest

/// The sampler against a real log file (SQLite in a temp dir).
final class SamplerTests: XCTestCase {
    var dir: TemporaryDirectory!
    override func setUpWithError() throws { dir = try TemporaryDirectory("sampler") }
    override func tearDown() { dir.remove() }

    func settings(enabled: Bool = true, interval: Duration = .milliseconds(50)) -> RuntimeSettings {
        RuntimeSettings(defaults: DeviceSwitches(measurementEnabled: enabled, measurementInterval: interval, senderEnabled: true, senderInterval: .seconds(1)))
    }

    func testAReadingRecordsMissingSensorsAndCountsTheirErrors() async throws {
        let log = try await DeviceLog.open(path: dir.file("d.sqlite3"), device: try DeviceID("s-1"))
        let metrics = DeviceMetrics()
        let sampler = Sampler(panel: SensorPanel(sources: [SimulatedSensor(name: "random", seed: 3), OneWireSensor(name: "w", path: dir.file("28-none"))]),
                              log: log, settings: settings(), metrics: metrics, recent: RecentReadings(), logger: Logger(label: "t"))
        await sampler.sampleOnce()
        await sampler.sampleOnce()
        let records = try await log.records(from: SequenceNumber(1), limit: 10)
        XCTAssertEqual(records.map(\.sequence), [SequenceNumber(1), SequenceNumber(2)])
        XCTAssertEqual(records[0].missingSensors, ["w"])
        XCTAssertNotNil(records[0].values["random"])
        XCTAssertTrue(metrics.render().contains(#"fieldlog_device_sensor_errors_total{sensor="w"} 2"#), metrics.render())
        await log.close()
    }

    func testAFullQuotaUnderStopIsReportedAndSamplingGoesOn() async throws {
        var lc = LogConfiguration()
        lc.maxBytes = 65536
        lc.quotaPolicy = .stop
        let log = try await DeviceLog.open(path: dir.file("q.sqlite3"), device: try DeviceID("s-2"), configuration: lc)
        let metrics = DeviceMetrics()
        let recent = RecentReadings()
        // Wide readings fill 64 KiB quickly.
        let sources: [any SensorSource] = (0..<40).map { SimulatedSensor(name: "s\($0)", seed: UInt64($0)) }
        let sampler = Sampler(panel: SensorPanel(sources: sources), log: log, settings: settings(), metrics: metrics, recent: recent, logger: Logger(label: "t"))
        for _ in 0..<400 { await sampler.sampleOnce() }
        let text = metrics.render()
        XCTAssertTrue(text.contains("fieldlog_device_append_failures_total"), text)
        XCTAssertFalse(text.contains("fieldlog_device_append_failures_total 0\n"), "the quota was reached")
        let lastError = await recent.lastError
        XCTAssertTrue(lastError?.contains("quota") ?? false, lastError ?? "-")
        let problems = try await log.check()
        XCTAssertEqual(problems, [], "nothing stored was damaged")
        await log.close()
    }

    func testSwitchesPauseResumeAndPaceSamplingAtRuntime() async throws {
        let log = try await DeviceLog.open(path: dir.file("r.sqlite3"), device: try DeviceID("s-3"))
        let st = settings(interval: .milliseconds(50))
        let sampler = Sampler(panel: SensorPanel(sources: [SimulatedSensor(name: "random", seed: 1)]), log: log, settings: st,
                              metrics: DeviceMetrics(), recent: RecentReadings(), logger: Logger(label: "t"))
        let task = Task { try await sampler.loop() }
        try await Task.sleep(for: .milliseconds(600))
        let h1 = try await log.head()
        XCTAssertGreaterThan(h1.rawValue, 3)
        await st.set(.measurementEnabled, .enabled(false))
        try await Task.sleep(for: .milliseconds(200))
        let h2 = try await log.head()
        try await Task.sleep(for: .milliseconds(500))
        let h3 = try await log.head()
        XCTAssertEqual(h2, h3, "paused")
        // An hour's interval, then back to 50 ms: the change takes effect at once, not in an hour.
        await st.set(.measurementInterval, .interval(.seconds(3600)))
        await st.set(.measurementEnabled, .enabled(true))
        try await Task.sleep(for: .milliseconds(300))
        let h4 = try await log.head()
        XCTAssertLessThanOrEqual(h4.rawValue, h3.rawValue + 1, "one reading, then an hour's wait")
        await st.set(.measurementInterval, .interval(.milliseconds(50)))
        try await Task.sleep(for: .milliseconds(600))
        let h5 = try await log.head()
        XCTAssertGreaterThan(h5.rawValue, h4.rawValue + 3, "the new pace took effect at once")
        task.cancel()
        _ = try? await task.value
        await log.close()
    }
}
