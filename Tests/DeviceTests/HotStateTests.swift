// The Redis hot state against a private, real redis-server that the test stops and starts:
// the mirror of the log (HotStateMirror) and the runtime switches (SwitchPoller, one parser:
// SwitchKey.parse).
import Device
import FieldlogCore
import Foundation
import Log
import Logging
import Redis
import TestSupport
import XCTest

final class HotStateTests: XCTestCase {
    /// Seqs in the stream, in stream order.
    func streamSeqs(_ redis: RedisConnection, key: String = "measurement:values") async throws -> [UInt64] {
        let reply = try await redis.command(["XRANGE", key, "-", "+"])
        return (reply.array ?? []).compactMap { entry -> UInt64? in
            guard let fields = entry.array?.last?.array else { return nil }
            var i = 0
            while i + 1 < fields.count {
                if fields[i].string == "seq" { return fields[i + 1].string.flatMap(UInt64.init) }
                i += 2
            }
            return nil
        }
    }

    func eventually(_ what: String, timeout: Duration = .seconds(20), _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try await condition() { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        XCTFail("timed out waiting for \(what)")
    }

    func testMirrorCopiesAppendsAndCatchesUpAfterRedisRestart() async throws {
        let server = try PrivateRedis()
        try server.start()
        let dir = try TemporaryDirectory("fieldlog-hot")
        defer { dir.remove() }
        let log = try await DeviceLog.open(path: dir.file("log.db"), device: try DeviceID("hot-1"))
        var config = HotStateConfiguration(redis: RedisConfiguration(port: server.port, connectTimeout: .milliseconds(300), commandTimeout: .seconds(2)))
        config.retryDelay = .milliseconds(100)
        config.pollInterval = .milliseconds(100)
        var quiet = Logger(label: "hotstate-test")
        quiet.logLevel = .critical
        let mirror = HotStateMirror(log: log, configuration: config, logger: quiet)
        let runner = Task { await mirror.run() }
        let probe = RedisConnection(configuration: RedisConfiguration(port: server.port), logger: quiet)

        for i in 1...10 { _ = try await log.append(try SensorValues(["random": .number(Double(i)), "unit": .text("C")])) }
        try await eventually("10 records mirrored") { try await self.streamSeqs(probe) == Array(1...10) }
        // Fields: seq, epoch, ts_ms and the values as strings.
        let last = try await probe.command(["XREVRANGE", "measurement:values", "+", "-", "COUNT", "1"])
        let fields = (last.array?.first?.array?.last?.array ?? []).compactMap(\.string)
        XCTAssertTrue(fields.contains("epoch") && fields.contains(log.epoch.hex), "\(fields)")
        XCTAssertEqual(fields.firstIndex(of: "random").map { fields[$0 + 1] }, "10")
        XCTAssertEqual(fields.firstIndex(of: "unit").map { fields[$0 + 1] }, "C")

        // Redis down: appends go on, untouched by the outage.
        server.kill9()   // a crash; also much faster than a graceful stop
        for i in 11...30 { _ = try await log.append(try SensorValues(["random": .number(Double(i))])) }
        let head = try await log.head()
        XCTAssertEqual(head, SequenceNumber(30))
        XCTAssertEqual(mirror.lastMirrored, SequenceNumber(10))

        // Redis back (its AOF kept 1…10): the mirror catches up with 11…30, once each.
        try server.start()
        try await eventually("mirror caught up after restart") { mirror.lastMirrored == SequenceNumber(30) }
        let seqs = try await streamSeqs(probe)
        XCTAssertEqual(Array(seqs.drop { $0 < 11 }), Array(11...30), "every missed record mirrored once, in order: \(seqs)")
        XCTAssertEqual(Set(seqs).count, seqs.count, "no duplicates: \(seqs)")

        runner.cancel()
        await runner.value
        await log.close()
        probe.close()
    }

    func testANewMirrorResumesAfterTheStreamsLastEntryWithoutDuplicates() async throws {
        let server = try PrivateRedis()
        try server.start()
        let dir = try TemporaryDirectory("fieldlog-hot")
        defer { dir.remove() }
        let log = try await DeviceLog.open(path: dir.file("log.db"), device: try DeviceID("hot-3"))
        let config = HotStateConfiguration(redis: RedisConfiguration(port: server.port))
        for i in 1...5 { _ = try await log.append(try SensorValues(["random": .number(Double(i))])) }
        let first = HotStateMirror(log: log, configuration: config)
        let caughtUp = await first.catchUp()
        XCTAssertTrue(caughtUp)
        XCTAssertEqual(first.lastMirrored, SequenceNumber(5))
        // The program restarts: a new mirror (no memory) must continue after seq 5.
        for i in 6...8 { _ = try await log.append(try SensorValues(["random": .number(Double(i))])) }
        let second = HotStateMirror(log: log, configuration: config)
        let again = await second.catchUp()
        XCTAssertTrue(again)
        let probe = RedisConnection(configuration: RedisConfiguration(port: server.port))
        let seqs = try await streamSeqs(probe)
        XCTAssertEqual(seqs, Array(1...8))
        // A log with another epoch (a wiped device) does not resume from this stream's seqs.
        let other = try await DeviceLog.open(path: dir.file("other.db"), device: try DeviceID("hot-3"))
        _ = try await other.append(try SensorValues(["random": .number(100)]))
        let third = HotStateMirror(log: other, configuration: config)
        let ok = await third.catchUp()
        XCTAssertTrue(ok)
        let all = try await streamSeqs(probe)
        XCTAssertEqual(all, Array(1...8) + [1], "the new epoch's record 1 is mirrored, not skipped")
        await log.close()
        await other.close()
        probe.close()
    }

    func testSwitchesUseDefaultsWhenAbsentAndRedisValuesWhenSet() async throws {
        let server = try PrivateRedis()
        try server.start()
        var quiet = Logger(label: "switches-test")
        quiet.logLevel = .critical
        let defaults = DeviceSwitches(measurementEnabled: true, measurementInterval: .seconds(3), senderEnabled: true, senderInterval: .seconds(1))
        let settings = RuntimeSettings(defaults: defaults)
        let poller = SwitchPoller(redis: RedisConfiguration(port: server.port, connectTimeout: .milliseconds(300), commandTimeout: .seconds(2)),
                                  settings: settings, metrics: DeviceMetrics(), logger: quiet)
        let probe = RedisConnection(configuration: RedisConfiguration(port: server.port))

        // Absent keys give the configured defaults.
        var up = await poller.pollOnce()
        XCTAssertTrue(up)
        var s = await settings.switches
        XCTAssertEqual(s.measurementEnabled, true)
        XCTAssertEqual(s.measurementInterval, .seconds(3))
        XCTAssertEqual(s.senderInterval, .seconds(1))

        _ = try await probe.command("SET", "measurement:enabled", "0")
        _ = try await probe.command("SET", "measurement:interval", "0.5")
        _ = try await probe.command("SET", "mqtt_sender:enabled", "1")
        _ = try await probe.command("SET", "mqtt_sender:interval", "not-a-number")
        up = await poller.pollOnce()
        XCTAssertTrue(up)
        s = await settings.switches
        XCTAssertEqual(s.measurementEnabled, false)
        XCTAssertEqual(s.measurementInterval, .milliseconds(500))
        XCTAssertEqual(s.senderEnabled, true)
        XCTAssertEqual(s.senderInterval, .seconds(1), "an invalid value falls back to the default")

        // "false" is off, as everywhere on the device (the mirror's old copy of this parser read it as on).
        _ = try await probe.command("SET", "mqtt_sender:enabled", "false")
        _ = await poller.pollOnce()
        s = await settings.switches
        XCTAssertEqual(s.senderEnabled, false)

        // Redis gone: the last values read stay in force.
        server.kill9()   // a crash; also much faster than a graceful stop
        up = await poller.pollOnce()
        XCTAssertFalse(up)
        let down = await settings.switches
        XCTAssertEqual(down, s)
        let available = await settings.redisAvailable
        XCTAssertFalse(available)
        // A device that never reached Redis runs on the defaults.
        let fresh = RuntimeSettings(defaults: defaults)
        let unreachable = SwitchPoller(redis: RedisConfiguration(port: server.port, connectTimeout: .milliseconds(300)),
                                       settings: fresh, metrics: DeviceMetrics(), logger: quiet)
        let reached = await unreachable.pollOnce()
        XCTAssertFalse(reached)
        let whileDown = await fresh.switches
        XCTAssertEqual(whileDown, defaults)
        unreachable.redis.close()
        probe.close()
        poller.redis.close()
    }
}
