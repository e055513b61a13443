// A supervised component that fails is reported and started again; it never ends by itself.
@testable import Device
import Foundation
import Logging
import MQTT
import Sync
import XCTest

final class SupervisionTests: XCTestCase {
    /// Counts runs of the component under test.
    actor Runs {
        var count = 0
        func next() -> Int { count += 1; return count }
    }

    func testAFailingComponentIsReportedAndRestartedUntilItRuns() async throws {
        let metrics = DeviceMetrics()
        let health = ComponentHealth(metrics: metrics)
        let runs = Runs()
        let service = SupervisedService(health.reporter("flaky"), retry: MQTTReconnectPolicy(minDelay: .milliseconds(20), maxDelay: .milliseconds(40), jitter: 0),
                                        logger: Logger(label: "test")) { reporter in
            switch await runs.next() {
            case 1: throw SetupFailure("port 8080 in use")
            case 2: return  // ended by itself: as much a failure as an error
            default:
                reporter.running()
                try await Task.sleep(for: .seconds(3600))
            }
        }
        let task = Task { await service.run() }
        let deadline = ContinuousClock.now + .seconds(20)
        while health.snapshot.first?.entry.state != .running, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        let entry = try XCTUnwrap(health.snapshot.first { $0.component == "flaky" }?.entry)
        XCTAssertEqual(entry.state, .running)
        XCTAssertEqual(entry.failures, 2)
        XCTAssertNil(entry.problem)
        let rendered = metrics.render()
        XCTAssertTrue(rendered.contains(#"fieldlog_device_component_up{component="flaky"} 1"#), rendered)
        XCTAssertTrue(rendered.contains(#"fieldlog_device_component_failures_total{component="flaky"} 2"#), rendered)
        // Cancellation (shutdown) ends it without another restart.
        task.cancel()
        await task.value
        let count = await runs.count
        XCTAssertEqual(count, 3)
    }

    func testDegradedComponentsSayWhatIsWrongOnStatus() throws {
        let health = ComponentHealth(metrics: nil)
        let redis = health.reporter("redis_switches")
        _ = health.reporter("mqtt")
        redis.degraded("Redis 127.0.0.1:6379 does not answer")
        guard case .object(let members) = health.json() else { return XCTFail("\(health.json())") }
        XCTAssertEqual(members.map(\.0), ["redis_switches", "mqtt"], "registration order")
        guard case .object(let r) = members[0].1 else { return XCTFail() }
        XCTAssertEqual(r.first { $0.0 == "state" }?.1, .string("degraded"))
        XCTAssertEqual(r.first { $0.0 == "problem" }?.1, .string("Redis 127.0.0.1:6379 does not answer"))
        guard case .object(let m) = members[1].1 else { return XCTFail() }
        XCTAssertEqual(m.first { $0.0 == "state" }?.1, .string("starting"))
    }
}
