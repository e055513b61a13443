// End-to-end tests of the built `fieldlog-device run` on real services: a private mosquitto
// (stopped and restarted), a private Redis (stopped and restarted), and a minimal receiver
// that stores batches idempotently and acks per the protocol (spec/protocol.md).
import FieldlogCore
import Foundation
import Log
import MQTT
import Sync
import TestSupport
import XCTest

/// A minimal backend: stores records by sequence number (idempotent), acks `through` (the
/// contiguous prefix stored or declared lost) and `stored` (the batch's range), retained.
actor TestReceiver {
    let device: DeviceID
    let client: MQTTClient
    private(set) var stored: [UInt64: LogRecord] = [:]
    private(set) var lost: Set<UInt64> = []
    private(set) var deliveries: [(range: SequenceRange, replay: String?, at: ContinuousClock.Instant)] = []
    private(set) var duplicates = 0
    private(set) var epoch: Epoch?
    private(set) var statuses: [Status] = []
    private(set) var responses: [CommandResponse] = []
    var acking = true

    init(device: DeviceID, port: Int) throws {
        self.device = device
        client = try MQTTClient(configuration: MQTTConfiguration(
            host: "127.0.0.1", port: port, clientID: Stack.uniqueName("receiver"), cleanStart: false,
            username: "fieldlog-backend", password: "backend-pw", keepAlive: .seconds(5), sessionExpiry: .seconds(600),
            reconnect: .init(minDelay: .milliseconds(100), maxDelay: .seconds(1), jitter: 0.5)))
    }

    func start() async throws {
        let messages = client.messages
        Task { for await m in messages { await self.handle(m) } }
        try await client.connect()
        let t = TopicTemplates.defaults
        try await client.subscribe(t.batch.topic(device: device), qos: .atLeastOnce)
        try await client.subscribe(t.status.topic(device: device), qos: .atLeastOnce)
        try await client.subscribe(t.response.topic(device: device), qos: .atLeastOnce)
    }

    func setAcking(_ on: Bool) { acking = on }

    func handle(_ m: MQTTMessage) async {
        let t = TopicTemplates.defaults
        if m.topic == t.batch.topic(device: device) {
            guard let batch = try? SyncCodec.decodeBatch(m.payload, expectedDevice: device) else { return XCTFail("undecodable batch") }
            if epoch == nil { epoch = batch.epoch }
            XCTAssertEqual(batch.epoch, epoch, "one log, one epoch")
            deliveries.append((batch.range, batch.replayRequestID, ContinuousClock.now))
            for r in batch.records {
                if stored[r.sequence.rawValue] != nil { duplicates += 1 } else { stored[r.sequence.rawValue] = r }
            }
            for l in batch.losses { for s in l.range.first.rawValue...l.range.last.rawValue { lost.insert(s) } }
            guard acking else { return }
            var through: UInt64 = 0
            while stored[through + 1] != nil || lost.contains(through + 1) { through += 1 }
            let ack = Ack(device: device, epoch: batch.epoch, through: SequenceNumber(through), stored: batch.range)
            _ = try? await client.publish(t.ack.topic(device: device), payload: SyncCodec.encode(ack), qos: .atLeastOnce, retain: true)
        } else if m.topic == t.status.topic(device: device) {
            if let s = try? SyncCodec.decodeStatus(m.payload, expectedDevice: device) { statuses.append(s) }
        } else if m.topic == t.response.topic(device: device) {
            if let r = try? SyncCodec.decodeCommandResponse(m.payload) { responses.append(r) } else { XCTFail("undecodable response \(m.payloadString)") }
        }
    }

    /// Highest n such that 1...n are all stored.
    var contiguous: UInt64 {
        var n: UInt64 = 0
        while stored[n + 1] != nil { n += 1 }
        return n
    }

    func send(_ json: String) async throws {
        try await client.publish(TopicTemplates.defaults.request.topic(device: device), payload: Array(json.utf8), qos: .atLeastOnce)
    }

    func clearResponses() { responses = [] }
    func stop() async { await client.disconnect() }
}

final class DeviceIntegrationTests: DeviceProcessTestCase {
    /// Readings flow and are acked; a broker outage, a SIGKILL of the device and a Redis outage
    /// lose nothing, and after the kill only unacked records are resent.
    func testReadingsSurviveBrokerOutageDeviceKillAndRedisOutage() async throws {
        let receiver = try TestReceiver(device: deviceID, port: broker.port)
        try await receiver.start()
        try device.start()

        // 1. Flow.
        try await eventually("30 readings stored and acked") {
            let s = try await logState()
            return await receiver.contiguous >= 30 && s.acked >= SequenceNumber(30)
        }
        let status = try httpGet("/status")
        XCTAssertTrue(status.contains("\"mqtt_connected\":true"), status)
        let metrics = try httpGet("/metrics")
        XCTAssertTrue(metrics.contains("fieldlog_device_appends_total"), metrics)
        XCTAssertTrue(try httpGet("/").contains("<svg"))
        let online = await receiver.statuses.last
        XCTAssertEqual(online?.state, .online)

        // 2. Broker down for a while: sampling goes on; after the restart everything arrives.
        broker.stop()
        let headAtStop = try await logState().head
        try await Task.sleep(for: .seconds(3))
        let headWhileDown = try await logState().head
        XCTAssertGreaterThan(headWhileDown.rawValue, headAtStop.rawValue + 10, "sampling goes on while the broker is down")
        try broker.start()
        try await eventually("everything sampled during the outage stored and acked") {
            let s = try await logState()
            return await receiver.contiguous >= headWhileDown.rawValue && s.acked >= headWhileDown
        }

        // 3. Device killed: restart loses nothing and resends only what was unacked.
        await receiver.setAcking(false)  // build up an unacked backlog first
        try await Task.sleep(for: .seconds(1))
        device.kill9()
        let atKill = try await logState()
        XCTAssertGreaterThan(atKill.head, atKill.acked, "there is an unacked backlog at the kill")
        let deliveriesBefore = await receiver.deliveries.count
        await receiver.setAcking(true)
        try device.start()
        try await eventually("the backlog after the restart stored and acked") {
            let s = try await logState()
            return await receiver.contiguous >= atKill.head.rawValue && s.acked >= atKill.head
        }
        let after = await receiver.deliveries.dropFirst(deliveriesBefore)
        XCTAssertFalse(after.isEmpty)
        for d in after where d.replay == nil {
            XCTAssertGreaterThan(d.range.first, atKill.acked, "after a restart only unacked records are resent (got \(d.range), acked was \(atKill.acked))")
        }

        // 4. Redis down and back: appends go on, nothing lost.
        redis.stop()
        let headAtRedisStop = try await logState().head
        try await Task.sleep(for: .seconds(2))
        try await eventually("sampling while Redis is down") { try await logState().head.rawValue > headAtRedisStop.rawValue + 10 }
        XCTAssertTrue(try httpGet("/status").contains("\"redis_available\":false"))
        try redis.start()
        try await eventually("Redis seen again") { (try? httpGet("/status").contains("\"redis_available\":true")) ?? false }
        // Pause sampling (as a dashboard would, through Redis) so the log stops growing.
        _ = try Shell.run("redis-cli", ["-p", String(redis.port), "SET", "measurement:enabled", "0"])
        try await eventually("sampling paused") {
            let a = try await logState().head
            try await Task.sleep(for: .milliseconds(500))
            return try await logState().head == a
        }
        let finalHead = try await logState().head
        try await eventually("everything stored and acked") {
            let s = try await logState()
            return await receiver.contiguous >= finalHead.rawValue && s.acked >= finalHead
        }
        // The Redis mirror caught up after the outage: the stream ends with the last record.
        try await eventually("the stream measurement:values caught up") {
            let last = try Shell.run("redis-cli", ["-p", String(redis.port), "XREVRANGE", "measurement:values", "+", "-", "COUNT", "1"])
            return last.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.contains(String(finalHead.rawValue))
        }

        // Graceful stop: exit 0, retained offline status, a sound log.
        device.stop(grace: .seconds(10))
        XCTAssertEqual(device.exitStatus, 0, device.log().suffix(2000).description)
        try await eventually("offline status") { await receiver.statuses.last?.state == .offline }
        let check = try Shell.run(try Binaries.path("fieldlog-device"), ["log", "check", "--db", dir.file("device.sqlite3")])
        _ = check
        let stored = await receiver.stored
        let head = try await logState().head
        XCTAssertEqual(UInt64(stored.count), head.rawValue, "every record stored exactly once by the idempotent receiver")
        let contiguous = await receiver.contiguous
        XCTAssertEqual(contiguous, head.rawValue, "no gap")
        await receiver.stop()
    }

    /// Seed-format commands from a plain MQTT client get protocol responses; a command sent
    /// while the device is offline is executed when it is back, and at most once.
    func testSeedCommandsOverMQTT() async throws {
        let receiver = try TestReceiver(device: deviceID, port: broker.port)
        try await receiver.start()
        try device.start()
        try await eventually("the device online") { await receiver.statuses.last?.state == .online }
        try await eventually("a few readings") { try await logState().head >= SequenceNumber(10) }

        try await receiver.send(#"{"command": "get_config", "key": "measurement:interval"}"#)
        try await eventually("get_config response") { await !receiver.responses.isEmpty }
        var r = await receiver.responses[0]
        XCTAssertEqual(r.command, "get_config")
        XCTAssertEqual(r.key, "measurement:interval")
        XCTAssertEqual(r.value, "0.1")
        XCTAssertTrue(r.ok)

        await receiver.clearResponses()
        try await receiver.send(#"{"command": "SET_CONFIG", "key": "measurement:enabled", "value": "0", "id": "c-1"}"#)
        try await eventually("set_config response") { await !receiver.responses.isEmpty }
        r = await receiver.responses[0]
        XCTAssertEqual(r.requestID, "c-1")
        XCTAssertEqual(r.value, "0")
        // The switch reached Redis, as the seed's programs would see it.
        try await eventually("measurement:enabled=0 in Redis") {
            (try? Shell.run("redis-cli", ["-p", String(redis.port), "GET", "measurement:enabled"]).trimmingCharacters(in: .whitespacesAndNewlines)) == "0"
        }
        let pausedHead = try await logState().head
        try await Task.sleep(for: .seconds(1))
        let stillHead = try await logState().head
        XCTAssertLessThanOrEqual(stillHead.rawValue, pausedHead.rawValue + 1, "sampling paused")

        await receiver.clearResponses()
        try await receiver.send(#"{"command": "get_config", "key": "some:other:key"}"#)
        try await receiver.send(#"{"command": "format_disk", "id": "bad-1"}"#)
        try await receiver.send("this is not json")
        try await receiver.send(#"{"command": "reboot"}"#)
        try await eventually("four error responses") { await receiver.responses.count >= 4 }
        let errors = await receiver.responses
        XCTAssertEqual(errors.map(\.error), [.notAllowed, .unknownCommand, .malformed, .notAllowed])
        XCTAssertEqual(errors[1].requestID, "bad-1")

        // Replay (the seed's send_measurements): republished as batches marked with the id.
        await receiver.clearResponses()
        try await receiver.send(#"{"command": "send_measurements", "min_id": "1", "max_id": "5", "id": "rp-1"}"#)
        try await eventually("replay response") { await !receiver.responses.isEmpty }
        r = await receiver.responses[0]
        XCTAssertTrue(r.ok, r.message ?? "")
        XCTAssertEqual(r.resent, SequenceRange(checked: SequenceNumber(1), SequenceNumber(5)))
        let replayed = await receiver.deliveries.filter { $0.replay == "rp-1" }
        XCTAssertFalse(replayed.isEmpty)

        // Offline: a command sent while the device is down is executed when it is back; the
        // same id sent again is answered from the stored response, not executed again.
        device.stop(grace: .seconds(10))
        await receiver.clearResponses()
        try await receiver.send(#"{"command": "start", "id": "offline-1"}"#)
        try device.start()
        try await eventually("the queued command answered", timeout: .seconds(20)) { await !receiver.responses.isEmpty }
        r = await receiver.responses[0]
        XCTAssertEqual(r.requestID, "offline-1")
        XCTAssertTrue(r.ok)
        try await eventually("sampling resumed") { try await logState().head.rawValue > stillHead.rawValue + 5 }
        try await eventually("measurement:enabled=1 in Redis") {
            (try? Shell.run("redis-cli", ["-p", String(redis.port), "GET", "measurement:enabled"]).trimmingCharacters(in: .whitespacesAndNewlines)) == "1"
        }
        // Stop it by hand through Redis, then repeat the id: it must not start again.
        _ = try Shell.run("redis-cli", ["-p", String(redis.port), "SET", "measurement:enabled", "0"])
        try await Task.sleep(for: .seconds(1.5))
        await receiver.clearResponses()
        try await receiver.send(#"{"command": "start", "id": "offline-1"}"#)
        try await eventually("the repeated id answered") { await !receiver.responses.isEmpty }
        r = await receiver.responses[0]
        XCTAssertEqual(r.requestID, "offline-1")
        try await Task.sleep(for: .seconds(1.5))
        let v = try Shell.run("redis-cli", ["-p", String(redis.port), "GET", "measurement:enabled"]).trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertEqual(v, "0", "a repeated command id is not executed again")
        await receiver.stop()
    }
}
