// One misbehaving device must not stall, crash or slow the ingest for the others (issue 15
// item 7). A device with valid credentials sends ≥ 10,000 hostile payloads on its own topics
// (HostilePayloads: random bytes, truncated and garbled messages, boundary numbers, NaN,
// deep nesting, 300 KB, non-ASCII / NUL / spaces in ids and names, duplicate keys, tiling
// violations, another device's id, unknown epochs, SQL and HTML text, and issues D1–D3) to two
// ingest processes, while an honest device syncs 10 batches a second. Checked: the ingest
// processes never exit (same PIDs) and never stall (the honest device's acks move on), the
// honest device loses nothing, every refused message is a dead letter with its reason (the
// same reasons the pure classifier gives, message for message), no row exists other than
// those the spec defines for what was sent, and memory stays bounded. Figures are printed.
import FieldlogCore
import Foundation
import Logging
import MQTT
import Processes
import Sync
import TestSupport
import XCTest
@testable import BackendStore
@testable import Ingest
@testable import Audit
@testable import WebAdmin

final class HostileTrafficTests: XCTestCase {
    func testTenThousandHostilePayloadsNeitherStallNorCrashNorCorruptWhileAnHonestDeviceSyncs() async throws {
        let db = try TestDatabase("hostile")
        defer { db.drop() }
        let setup = try await db.migrated()
        let dir = try TemporaryDirectory("ingest-hostile")
        defer { if testRun?.hasSucceeded == true { dir.remove() } else { print("ingest logs kept in \(dir.path)") } }
        let (broker, user, password) = try privateBroker()
        var env = db.environment
        env["FIELDLOG_MQTT_HOST"] = "127.0.0.1"
        env["FIELDLOG_MQTT_PORT"] = String(broker.port)
        env["FIELDLOG_MQTT_BACKEND_USER"] = user
        env["FIELDLOG_MQTT_BACKEND_PASSWORD"] = password
        // The default queue and device share: what the attack does to a real installation.
        var ingests: [ManagedProcess] = []
        var metricsPorts: [Int] = []
        for k in 0..<2 {
            var e = env
            metricsPorts.append(Ports.free())
            e["FIELDLOG_METRICS_PORT"] = String(metricsPorts[k])
            ingests.append(try BackendProcess.ingest("ingest-\(k)", environment: e, directory: dir))
        }
        defer { for p in ingests { p.stop() } }
        for p in ingests { try BackendProcess.waitRunning(p) }
        let pids = ingests.map(\.pid)

        // The honest device: 10 batches of 10 records a second, latency from publish to ack.
        let honest = try await SimDevice.connect(broker: broker, records: 100_000)
        let clock = HonestClock()
        let honestTask = Task {
            var i: UInt64 = 0
            while !Task.isCancelled {
                clock.sent(batch: i, lastRecord: min((i + 1) * honest.batchSize, honest.records), at: .now)
                try? await honest.publish(i..<(i + 1))
                i += 1
                try? await Task.sleep(for: .milliseconds(100))
            }
            return i
        }
        let watcher = Task {
            while !Task.isCancelled {
                clock.acked(through: honest.acked.rawValue, at: .now)
                try? await Task.sleep(for: .milliseconds(20))
            }
        }
        let processes = ingests
        func rss() -> [Int] { Self.rss(processes) }

        // 1. Baseline: the honest device alone.
        try await Task.sleep(for: .seconds(6))
        let baseline = clock.latencies()
        let rssBefore = rss()

        // 2. The attack, from four connections of the hostile device at once.
        let evil = Fixtures.device("evil")
        let evilPassword = Stack.uniqueName("pw")
        try broker.addUser(evil.rawValue, password: evilPassword)
        var g = SystemRandomNumberGenerator()
        var messages: [(kind: HostilePayloads.Kind, topic: String, payload: [UInt8])] = []
        while messages.count < 10_000 { messages.append(HostilePayloads.any(device: evil, using: &g)) }
        for m in HostilePayloads.d2Pair(device: evil) { messages.append((.d2Overflow, m.topic, m.payload)) }
        let attackStart = ContinuousClock.now
        let peakRSS = RSSPeak()
        let sampler = Self.sample(processes, into: peakRSS)
        var lanes: [(MQTTClient, [(kind: HostilePayloads.Kind, topic: String, payload: [UInt8])])] = []
        for lane in 0..<4 {
            let client = try await Self.connect(broker: broker, user: evil.rawValue, password: evilPassword, clientID: "\(evil)-\(lane)")
            lanes.append((client, stride(from: lane, to: messages.count, by: 4).map { messages[$0] }))
        }
        let sendLanes = lanes
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (client, mine) in sendLanes {
                group.addTask {
                    for m in mine { try await client.publish(m.topic, payload: m.payload, qos: .atLeastOnce) }
                    await client.disconnect()
                }
            }
            try await group.waitForAll()
        }
        let sentSeconds = (ContinuousClock.now - attackStart).inSeconds
        // Until the ingest has taken it all (every message classified and written).
        let expected = Expectation(messages: messages.map { ($0.topic, $0.payload) }, device: evil)
        let deadline = ContinuousClock.now + .seconds(180)
        // (Settled when the dead letters stop growing: a message dropped over the device's share is never written.)
        var previous = "", settledSince = ContinuousClock.now
        while ContinuousClock.now < deadline {
            let n = try db.scalar("SELECT COUNT(*) FROM dead_letters WHERE device_id = '\(evil)' AND seq IS NULL")
            if n == String(expected.deadLetters.count) { break }
            if n != previous { previous = n; settledSince = .now } else if ContinuousClock.now - settledSince > .seconds(5) { break }
            try await Task.sleep(for: .milliseconds(250))
        }
        let attackSeconds = (ContinuousClock.now - attackStart).inSeconds
        sampler.cancel()
        let underAttack = clock.latencies(since: attackStart)
        let longestStall = clock.longestStall(since: attackStart)
        honestTask.cancel()
        _ = await honestTask.value
        let through = try await honest.syncSent(clock.lastSentRecord, timeout: .seconds(60))
        watcher.cancel()

        // The processes never exited, never stalled.
        XCTAssertEqual(ingests.map(\.pid), pids, "an ingest process exited or restarted")
        XCTAssertTrue(ingests.allSatisfy(\.isRunning))
        XCTAssertLessThan(longestStall, 5.0, "the honest device's acks stood still for \(longestStall) s while it had unacked batches")
        // The honest device lost nothing: every record it published is stored once and acked.
        XCTAssertEqual(through, clock.lastSentRecord)
        XCTAssertEqual(try db.scalar("SELECT CONCAT(COUNT(*), ' ', COUNT(DISTINCT seq), ' ', MAX(seq)) FROM readings WHERE device_id = '\(honest.id)'"),
                       "\(clock.lastSentRecord) \(clock.lastSentRecord) \(clock.lastSentRecord)")
        // Messages over the device's share were dropped unacked (counted); every other one the
        // classifier refuses is a dead letter with its reason.
        var dropped = 0
        for port in metricsPorts {
            let text = try Shell.run("curl", ["-sf", "http://127.0.0.1:\(port)/metrics"])
            for line in text.split(separator: "\n") where line.hasPrefix("fieldlog_messages_dropped_unacked_total") {
                dropped += Int(Double(line.split(separator: " ").last ?? "0") ?? 0)
            }
        }
        let reasons = try db.scalar("SELECT reason, COUNT(*) FROM dead_letters WHERE device_id = '\(evil)' AND seq IS NULL GROUP BY reason ORDER BY reason")
        var stored: [String: Int] = [:]
        for line in reasons.split(separator: "\n") {
            let parts = line.split(separator: "\t")
            stored[String(parts[0])] = Int(parts[1]) ?? 0
        }
        let expectedReasons = expected.deadLetters.reduce(into: [String: Int]()) { $0[$1.rawValue, default: 0] += 1 }
        XCTAssertTrue(Set(stored.keys).isSubset(of: Set(expectedReasons.keys)), "reasons \(stored) beyond the classifier's \(expectedReasons)")
        for (reason, n) in expectedReasons {
            XCTAssertLessThanOrEqual(stored[reason] ?? 0, n, reason)
        }
        XCTAssertGreaterThanOrEqual(stored.values.reduce(0, +) + dropped, expected.deadLetters.count,
                                    "every refused message not dropped over its share is a dead letter")
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM dead_letters WHERE device_id = '\(evil)' AND (detail = '' OR reason = '')"), "0")
        // No rows but those the spec defines: the valid batches' records, ranges and losses, the
        // seed readings, the statuses; nothing under any other device id.
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM readings WHERE device_id NOT IN ('\(honest.id)', '\(evil)')"), "0")
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM devices WHERE device_id NOT IN ('\(honest.id)', '\(evil)')"), "0")
        func rows(_ sql: String) throws -> Set<String> { Set(try db.scalar(sql).split(separator: "\n").map(String.init)) }
        XCTAssertTrue(try rows("SELECT CONCAT(epoch, ':', seq) FROM readings WHERE device_id = '\(evil)'").isSubset(of: expected.readingKeys))
        XCTAssertTrue(try rows("SELECT CONCAT(epoch, ':', first_seq, '-', last_seq) FROM batch_ranges WHERE device_id = '\(evil)'").isSubset(of: expected.rangeKeys))
        XCTAssertTrue(try rows("SELECT CONCAT(epoch, ':', first_seq, '-', last_seq) FROM loss_ranges WHERE device_id = '\(evil)'").isSubset(of: expected.lossKeys))
        XCTAssertTrue(try rows("SELECT stream_id FROM legacy_readings WHERE device_id = '\(evil)'").isSubset(of: expected.legacyKeys))
        XCTAssertTrue(try rows("SELECT CONCAT(epoch, ':', seq) FROM dead_letters WHERE device_id = '\(evil)' AND seq IS NOT NULL").isSubset(of: expected.rejectedKeys),
                      "rejected records are those the classifier rejects")
        // Memory stayed bounded.
        let peak = peakRSS.peak
        XCTAssertLessThan(peak.max() ?? 0, 700 * 1024, "ingest RSS stays bounded (KiB): \(peak)")

        print("""
            hostile traffic: \(messages.count) payloads (\(messages.reduce(0) { $0 + $1.payload.count } / 1024) KiB) sent in \(String(format: "%.1f", sentSeconds)) s, \
            all written in \(String(format: "%.1f", attackSeconds)) s; ingest exits 0, restarts 0; dropped \(dropped)
            dead letters by reason: \(reasons.replacingOccurrences(of: "\n", with: ", ").replacingOccurrences(of: "\t", with: " "))
            honest device: \(clock.lastSentRecord) records, lost 0; publish→ack p50/p99 without attack \(baseline.p50) / \(baseline.p99) ms, \
            under attack \(underAttack.p50) / \(underAttack.p99) ms; longest stall \(String(format: "%.2f", longestStall)) s
            ingest RSS KiB before \(rssBefore), peak during the attack \(peak)
            """)
        await honest.close()
        await setup.close()
    }

    static func connect(broker: PrivateMosquitto, user: String, password: String, clientID: String) async throws -> MQTTClient {
        let deadline = ContinuousClock.now + .seconds(10)
        while true {
            let c = try MQTTClient(configuration: MQTTConfiguration(host: "127.0.0.1", port: broker.port, clientID: clientID,
                                                                    username: user, password: password), logger: Logger(label: "evil"))
            do { try await c.connect(); return c } catch {
                await c.disconnect()
                guard ContinuousClock.now < deadline else { throw error }
                try await Task.sleep(for: .milliseconds(200))
            }
        }
    }

    static func rss(_ processes: [ManagedProcess]) -> [Int] { processes.map { p in p.pid.map(residentKiB) ?? 0 } }

    static func sample(_ processes: [ManagedProcess], into peak: RSSPeak) -> Task<Void, Never> {
        Task { while !Task.isCancelled { peak.note(rss(processes)); try? await Task.sleep(for: .milliseconds(250)) } }
    }

    static func residentKiB(_ pid: Int32) -> Int {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }) else { return 0 }
        return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
    }
}

/// What the spec says the ingest stores for the hostile messages: the pure classifier's verdicts.
struct Expectation {
    var deadLetters: [DeadLetterReason] = []
    var readingKeys: Set<String> = [], rangeKeys: Set<String> = [], lossKeys: Set<String> = []
    var legacyKeys: Set<String> = [], rejectedKeys: Set<String> = []

    init(messages: [(String, [UInt8])], device: DeviceID) {
        var seen: Set<[UInt8]> = []
        for (topic, payload) in messages {
            switch IngestItem.classify(topic: topic, payload: payload, configuration: IngestConfiguration()) {
            case .deadLetter(let d):
                // Seed messages reach every ingest process; their dead letter is kept once per message text.
                if let key = d.dedupKey, !seen.insert(key).inserted { continue }
                deadLetters.append(d.reason)
            case .batch(let b):
                for r in b.records { readingKeys.insert("\(b.epoch.rawValue):\(r.sequence)") }
                for r in b.rejected { rejectedKeys.insert("\(b.epoch.rawValue):\(r.sequence)") }
                for l in b.losses { lossKeys.insert("\(b.epoch.rawValue):\(l.range.first)-\(l.range.last)") }
                rangeKeys.insert("\(b.epoch.rawValue):\(b.range.first)-\(b.range.last)")
            case .legacy(let l): for r in l.readings { legacyKeys.insert(r.streamID) }
            case .status, .response: break
            }
        }
    }
}

/// The honest device's publish and ack times.
final class HonestClock: @unchecked Sendable {
    // @unchecked: everything under `lock`.
    private let lock = NSLock()
    private var sentAt: [(last: UInt64, at: ContinuousClock.Instant)] = []
    private var ackedAt: [UInt64: ContinuousClock.Instant] = [:]
    private var ackSamples: [(through: UInt64, at: ContinuousClock.Instant)] = []
    private var through: UInt64 = 0

    func sent(batch: UInt64, lastRecord: UInt64, at: ContinuousClock.Instant) { lock.withLock { sentAt.append((lastRecord, at)) } }
    var lastSentRecord: UInt64 { lock.withLock { sentAt.last?.last ?? 0 } }

    func acked(through t: UInt64, at: ContinuousClock.Instant) {
        lock.withLock {
            ackSamples.append((t, at))
            guard t > through else { return }
            for s in sentAt where s.last > through && s.last <= t { ackedAt[s.last] = at }
            through = t
        }
    }

    /// Publish → ack latencies (ms) of the batches sent since `since`.
    func latencies(since: ContinuousClock.Instant? = nil) -> (p50: Int, p99: Int) {
        lock.withLock {
            let ms = sentAt.filter { since == nil || $0.at >= since! }.compactMap { s in ackedAt[s.last].map { Int(($0 - s.at).inSeconds * 1000) } }.sorted()
            guard !ms.isEmpty else { return (0, 0) }
            return (ms[ms.count / 2], ms[min(ms.count - 1, ms.count * 99 / 100)])
        }
    }

    /// The longest time (s) the acked pointer stood still while a batch sent more than a second earlier was unacked.
    func longestStall(since: ContinuousClock.Instant) -> Double {
        lock.withLock {
            var longest = 0.0
            var last = ackSamples.first { $0.at >= since }
            for s in ackSamples where s.at >= since {
                guard let l = last else { continue }
                if s.through > l.through { last = s; continue }
                let waiting = sentAt.contains { $0.last > s.through && s.at - $0.at > .seconds(1) }
                if waiting { longest = max(longest, (s.at - l.at).inSeconds) } else { last = s }
            }
            return longest
        }
    }
}

final class RSSPeak: @unchecked Sendable {
    // @unchecked: `values` under `lock`.
    private let lock = NSLock()
    private var values: [Int] = []
    func note(_ v: [Int]) { lock.withLock { values = values.isEmpty ? v : zip(values, v).map { max($0, $1) } } }
    var peak: [Int] { lock.withLock { values } }
}

extension SimDevice {
    /// Resends what is unacked until everything through `last` is acked; returns the acked pointer.
    func syncSent(_ last: UInt64, timeout: Duration) async throws -> UInt64 {
        let deadline = ContinuousClock.now + timeout
        var lastSend = ContinuousClock.now
        while acked.rawValue < last && ContinuousClock.now < deadline {
            if ContinuousClock.now - lastSend >= .seconds(1) {
                try await publish(acked.rawValue / batchSize..<((last + batchSize - 1) / batchSize))
                lastSend = ContinuousClock.now
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        return acked.rawValue
    }
}
