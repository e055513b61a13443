// The device never stops measuring (issue 21): a failing auxiliary component — here the
// status server on a port another program holds, Redis and the broker down for a minute —
// says what is wrong and is retried, while sampling and syncing go on.
import FieldlogCore
import Foundation
import TestSupport
import XCTest

final class ResilienceTests: DeviceProcessTestCase {
    /// /status as JSON.
    func statusJSON() throws -> [String: Any] {
        let text = try httpGet("/status")
        guard let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
            throw SetupFailure("/status is not a JSON object: \(text)")
        }
        return object
    }

    /// The state of one supervised component on /status.
    func component(_ name: String, in status: [String: Any]) -> [String: Any]? {
        (status["components"] as? [String: Any])?[name] as? [String: Any]
    }

    func testAStatusPortTakenByAnotherProgramStopsNothingAndIsServedOnceFree() async throws {
        let squatter = try PortSquatter(port: statusPort)
        let receiver = try TestReceiver(device: deviceID, port: broker.port)
        try await receiver.start()
        try device.start()

        try await eventually("30 readings stored and acked while the status port is taken") {
            let s = try await logState()
            return await receiver.contiguous >= 30 && s.acked >= SequenceNumber(30)
        }
        XCTAssertTrue(device.isRunning, "a taken status port must not end the device")
        let log = device.log()
        XCTAssertTrue(log.contains("status_server") && log.contains("in use"), "the log says which component failed and why:\n\(log.suffix(3000))")

        squatter.close()
        try await eventually("the status page served once the port is free", timeout: .seconds(60)) {
            (try? self.httpGet("/status")) != nil
        }
        let status = try statusJSON()
        let server = try XCTUnwrap(component("status_server", in: status), "\(status)")
        XCTAssertEqual(server["state"] as? String, "running")
        XCTAssertGreaterThanOrEqual(server["failures"] as? Int ?? 0, 1, "\(server)")
        XCTAssertTrue(try httpGet("/").contains("<svg"))
        let metrics = try httpGet("/metrics")
        XCTAssertTrue(metrics.contains(#"fieldlog_device_component_up{component="status_server"} 1"#), metrics)
        XCTAssertTrue(metrics.contains(#"fieldlog_device_component_failures_total{component="status_server"}"#), metrics)
        // Sampling and syncing never stopped.
        let head = try await logState().head
        try await eventually("sampling and syncing go on") {
            let s = try await logState()
            return s.head.rawValue > head.rawValue + 10 && s.acked >= head
        }
        await receiver.stop()
    }

    func testSamplingKeepsItsIntervalWhileRedisAndTheBrokerAreDownForAMinute() async throws {
        let receiver = try TestReceiver(device: deviceID, port: broker.port)
        try await receiver.start()
        try device.start()
        try await eventually("20 readings stored and acked") {
            let s = try await logState()
            return await receiver.contiguous >= 20 && s.acked >= SequenceNumber(20)
        }

        broker.stop()
        redis.stop()
        let start = ContinuousClock.now
        let headAtStop = try await logState().head
        try await Task.sleep(for: .seconds(60))
        let headAfter = try await logState().head
        let intervals = (ContinuousClock.now - start) / .milliseconds(100)
        let appended = Double(headAfter.rawValue - headAtStop.rawValue)
        // A fixed 100 ms grid; a loaded machine may skip a few ticks, never stop.
        XCTAssertGreaterThanOrEqual(appended, intervals * 0.85, "appended \(appended) readings in \(intervals) intervals")
        XCTAssertTrue(device.isRunning)

        let status = try statusJSON()
        XCTAssertEqual(status["mqtt_connected"] as? Bool, false)
        XCTAssertEqual(status["redis_available"] as? Bool, false)
        XCTAssertEqual(component("mqtt", in: status)?["state"] as? String, "degraded", "\(status)")
        XCTAssertEqual(component("redis_switches", in: status)?["state"] as? String, "degraded", "\(status)")
        // The device's own figure of continuity: the longest time between two appends.
        let gap = try XCTUnwrap(status["append_gap_max_seconds"] as? Double, "\(status)")
        XCTAssertLessThan(gap, 1.0, "longest append gap \(gap) s at a 0.1 s interval")
        XCTAssertTrue(try httpGet("/metrics").contains("fieldlog_device_append_gap_max_seconds"))

        // Both back: everything sampled during the outage arrives, and the components say so.
        try broker.start()
        try redis.start()
        let restarted = ContinuousClock.now
        try await eventually("everything sampled during the outage stored and acked", timeout: .seconds(60)) {
            let s = try await logState()
            return await receiver.contiguous >= headAfter.rawValue && s.acked >= headAfter
        }
        // A figure, not an assertion: how long the minute's backlog took to drain.
        print("resilience: \(headAfter.rawValue - headAtStop.rawValue) readings sampled while Redis and the broker were down "
              + "drained \(ContinuousClock.now - restarted) after the broker was back; longest append gap \(gap) s")
        try await eventually("MQTT and Redis seen again") {
            let s = try self.statusJSON()
            return self.component("mqtt", in: s)?["state"] as? String == "running"
                && self.component("redis_switches", in: s)?["state"] as? String == "running"
        }
        await receiver.stop()
    }
}

/// Holds a TCP port on 127.0.0.1 (bound and listening), as another program on the device would.
final class PortSquatter {
    private var fd: Int32

    init(port: Int) throws {
        // Close-on-exec: a device started later must not inherit (and so keep holding) the port.
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SetupFailure("socket() failed (errno \(errno))") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 4) == 0 else {
            let e = errno
            Glibc.close(fd)
            throw SetupFailure("cannot hold 127.0.0.1:\(port) (errno \(e))")
        }
    }

    func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    deinit { close() }
}
