// The ceilings the stack benchmarks are compared with, measured in the same run on the same
// services: what MariaDB takes over our connector when nothing else is in the way, and what
// mosquitto carries for messages of the same size.
import FieldlogCore
import Threading
import Foundation
import MariaDB
import MQTT
import Sync

/// The reading the benchmarks send: `sensors` simulated values (the device's default
/// configuration has one, `random`).
func benchReading(sensors: Int, seed: Int) -> SensorValues {
    var values: [String: SensorValue] = [:]
    var x = UInt64(truncatingIfNeeded: seed) &* 0x9E37_79B9_7F4A_7C15 | 1
    for i in 0..<sensors {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17
        values[i == 0 ? "random" : "sensor\(i)"] = .number(Double(x >> 11) / Double(1 << 53))
    }
    return try! SensorValues(values)
}

/// The encoded size of a full batch of such readings (what the sender publishes).
func batchPayloadBytes(records: Int, sensors: Int, encoding: BatchEncoding = .json) -> Int {
    let base = Int64(1_700_000_000_000)
    let recs = (1...records).map { i in
        LogRecord(sequence: SequenceNumber(UInt64(1_000_000 + i)), timestamp: DeviceTimestamp(unixMilliseconds: base + Int64(i) * 10),
                  values: benchReading(sensors: sensors, seed: i))
    }
    let b = Batch(device: try! DeviceID("bench-drain"), epoch: Epoch(0x1234_5678_9ABC_DEF0),
                  range: SequenceRange(checked: recs.first!.sequence, recs.last!.sequence), records: recs)
    return encoding.encode(b, maxBytes: .max).payload.count
}

enum Ceilings {
    /// The same rows the ingest writes for `readings` readings (a `readings` row with its
    /// values in `vals`, one `batch_ranges` row per batch), inserted by
    /// the same statements as the ingest (readings array-bound with `insertBulk`, ranges multi-row `insertRows`,
    /// Store.swift) over one connection, one `batch_ranges` row per `batch` readings and one
    /// transaction per `perTransaction` readings (the most the ingest commits at once in the
    /// same run: its window of batches). Rows are built before the clock starts. Returns readings/s.
    static func mariaDBInsert(stack: BenchStack, database: String, readings: Int, sensors: Int, batch: Int,
                              perTransaction: Int) async throws -> Double {
        let c = try await MariaDBConnection.connect(configuration: stack.mariaDB(database: database), logger: quietLogger("bench.sql"))
        return try await withCleanups { cleanups in
            cleanups.add { await c.close() }
            try await c.query("SET time_zone = '+00:00'")
            let device = MariaDBValue.string("bench-ceiling")
            let epoch = MariaDBValue.uint(1)
            let now = MariaDBValue.string("2026-01-01 00:00:00.000")
            try await c.execute("INSERT IGNORE INTO devices (device_id, protocol, first_seen_at) VALUES (?, 'fieldlog', ?)", [device, now])
            try await c.execute("INSERT IGNORE INTO epochs (device_id, epoch, first_seen_at) VALUES (?, ?, ?)", [device, epoch, now])
            var groups: [(readings: [[MariaDBValue]], range: [[MariaDBValue]])] = []
            var seq: UInt64 = 0
            let batchesPerTransaction = max(1, perTransaction / batch)
            while seq < UInt64(readings) {
                var r: [[MariaDBValue]] = [], ranges: [[MariaDBValue]] = []
                for _ in 0..<batchesPerTransaction where seq < UInt64(readings) {
                    let first = seq + 1
                    for _ in 0..<min(batch, readings - Int(seq)) {
                        seq += 1
                        let ms = 1_700_000_000_000 + Int64(seq) * 10
                        let time = MariaDBValue.string(SQLTimeText.datetime(ms))
                        r.append([device, epoch, .uint(seq), .int(ms), time, .int(0), now, .null,
                                  .string(StoreRows.vals(benchReading(sensors: sensors, seed: Int(seq))))])
                    }
                    ranges.append([device, epoch, .uint(first), .uint(seq), now])
                }
                groups.append((r, ranges))
            }
            let start = ContinuousClock.now
            for g in groups {
                try await c.transaction { s in
                    try s.insertBulk("INSERT IGNORE INTO readings (device_id, epoch, seq, device_ms, device_time, clock_unsynchronized, received_at, missing_sensors, vals)", rows: g.readings)
                    try s.insertRows("INSERT IGNORE INTO batch_ranges (device_id, epoch, first_seq, last_seq, stored_at)", rows: g.range)
                }
            }
            let elapsed = secondsSince(start)
            let stored = try await c.query("SELECT count(*) FROM readings WHERE device_id = 'bench-ceiling'").rows.first?.first?.int64 ?? 0
            guard stored == Int64(readings) else { throw BenchError("ceiling: \(stored) of \(readings) rows stored") }
            return Double(readings) / elapsed
        }
    }

    /// mosquitto's rate for `messages` QoS 1 messages of `payloadBytes`, `inFlight` publishes
    /// outstanding, counted at a QoS 1 subscriber (publish → broker → subscriber, like a batch
    /// on its way to the ingest). Returns messages/s.
    static func mqttPublish(stack: BenchStack, payloadBytes: Int, messages: Int, inFlight: Int) async throws -> Double {
        let topic = "fieldlog/v1/backend/bench-ceiling-\(getpid())"
        let sub = try stack.backendClient("bench-ceiling-sub")
        let pub = try stack.backendClient("bench-ceiling-pub")
        _ = try await sub.connect()
        _ = try await pub.connect()
        return try await withCleanups { cleanups in
            cleanups.add { await sub.disconnect(); await pub.disconnect() }
            _ = try await sub.subscribe(topic, qos: .atLeastOnce)
            let payload = [UInt8](repeating: UInt8(ascii: "x"), count: payloadBytes)
            let start = ContinuousClock.now
            try await withThrowingTaskGroup(of: Void.self) { group in
                var sent = 0
                for _ in 0..<min(inFlight, messages) {
                    group.addTask { try await pub.publish(topic, payload: payload, qos: .atLeastOnce) }
                    sent += 1
                }
                while try await group.next() != nil {
                    if sent < messages {
                        group.addTask { try await pub.publish(topic, payload: payload, qos: .atLeastOnce) }
                        sent += 1
                    }
                }
            }
            // The stream keeps what arrived meanwhile; at most 60 s more for the rest.
            let received = Counter()
            _ = try? await withTimeout(.seconds(60)) {
                for await m in sub.messages where m.topic == topic {
                    received.add(1)
                    if received.value == messages { break }
                }
            }
            let n = received.value
            let elapsed = secondsSince(start)
            guard n == messages else { throw BenchError("MQTT ceiling: \(n) of \(messages) messages arrived") }
            return Double(messages) / elapsed
        }
    }
}

/// DATETIME(3) text in UTC for ms since 1970 (same format the ingest writes).
enum SQLTimeText {
    static func datetime(_ ms: Int64) -> String {
        var t = time_t(ms / 1000)
        var parts = tm()
        gmtime_r(&t, &parts)
        return String(format: "%04d-%02d-%02d %02d:%02d:%02d.%03d", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1, Int(parts.tm_mday),
                      Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec), Int(ms % 1000))
    }
}
