// encoding: bytes per reading of the two batch encodings (JSON v1 and compact, spec §3.7) on the
// device's simulated sensors, and what each costs to encode on the device and to decode in the
// ingest (`IngestItem.classify`, the ingest's own validation of every message). No services:
// the readings come from the device's `SimulatedSensor`s (a random walk with two decimals),
// taken every `--interval-ms` with up to `--jitter-ms` of wake-up jitter, cut into batches of
// `--records` as the sender cuts them.
import ArgumentParser
import Device
import FieldlogCore
import Foundation
import Sync

struct EncodingBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "encoding",
        abstract: "Bytes per reading in JSON and in the compact encoding (1/4/8 simulated sensors), and encode/decode time per reading.")

    @Option(parsing: .upToNextOption, help: "Sensors per reading, one measurement each.")
    var sensors: [Int] = [1, 4, 8]

    @Option(help: "Records per batch (SYNC_BATCH_MAX_RECORDS; the sender's default).")
    var records: Int = 500

    @Option(help: "Batches per measurement (consecutive stretches of one device's readings).")
    var batches: Int = 20

    @Option(help: "Milliseconds between readings (INTERVAL_SECONDS of the device; default 2 s).")
    var intervalMs: Int = 2000

    @Option(help: "Largest wake-up jitter of a reading's timestamp, in milliseconds (uniform 0…this).")
    var jitterMs: Int = 5

    @Option(help: "Seconds each encode/decode timing runs (best of three rounds is reported).")
    var seconds: Double = 0.5

    @Option(help: "Write the first batch of each measurement here as <n>sensors.json and <n>sensors.flc (to look at, or to seed a fuzzer).")
    var samples: String?

    @Flag(help: "Print one JSON object per measurement instead of a table.")
    var json = false

    func validate() throws {
        guard !sensors.isEmpty, sensors.allSatisfy({ (1...64).contains($0) }) else { throw ValidationError("--sensors must be 1…64") }
        guard (1...ProtocolLimits.maxRecordsPerBatch).contains(records) else { throw ValidationError("--records must be 1…1000") }
        guard (1...10_000).contains(batches), intervalMs >= 10, jitterMs >= 0, seconds > 0, seconds <= 60 else {
            throw ValidationError("--batches 1…10000, --interval-ms ≥ 10, --jitter-ms ≥ 0, --seconds in (0, 60]")
        }
    }

    func run() async throws {
        let reporter = Reporter(json: json)
        for row in try Self.measure(sensors: sensors, records: records, batches: batches, intervalMs: intervalMs, jitterMs: jitterMs,
                                    seconds: seconds, samples: samples) {
            reporter.emit(row)
        }
    }

    /// A realistic device id (a balena UUID) and its batch topic: both travel in every message.
    static let device = try! DeviceID("7f3c9a2e5b1d4c6f8a0e2b4d6f8a1c3e")
    static let sensorNames = ["random", "temperature", "humidity", "pressure", "co2", "pm25", "voltage", "light"]

    /// One device's readings from `sensors` simulated sensors, cut into batches.
    static func batches(sensors: Int, records: Int, batches: Int, intervalMs: Int, jitterMs: Int) -> [Batch] {
        let sources = (0..<sensors).map { k in
            SimulatedSensor(name: k < sensorNames.count ? sensorNames[k] : "sensor\(k)", seed: UInt64(1000 + k))
        }
        var jitter = UInt64(0x5EED)
        func nextJitter() -> Int64 {
            jitter = jitter &* 6364136223846793005 &+ 1442695040888963407
            return Int64((jitter >> 33) % UInt64(jitterMs + 1))
        }
        let start: Int64 = 1_764_000_000_000
        var out: [Batch] = []
        var seq: UInt64 = 1
        for _ in 0..<batches {
            var recs: [LogRecord] = []
            recs.reserveCapacity(records)
            for _ in 0..<records {
                var values: [String: SensorValue] = [:]
                for s in sources { values.merge((try? s.read()) ?? [:]) { a, _ in a } }
                let ts = start + Int64(seq) * Int64(intervalMs) + nextJitter()
                recs.append(LogRecord(sequence: SequenceNumber(seq), timestamp: DeviceTimestamp(unixMilliseconds: ts), values: try! SensorValues(values)))
                seq += 1
            }
            out.append(Batch(device: device, epoch: Epoch(0x1234_5678_9ABC_DEF0),
                             range: SequenceRange(checked: recs.first!.sequence, recs.last!.sequence), records: recs))
        }
        return out
    }

    /// Bytes of the MQTT v5 PUBLISH (QoS 1) that carries `payload` on `topic` with a content type.
    static func publishBytes(topic: String, contentType: String, payload: Int) -> Int {
        func varintSize(_ n: Int) -> Int { n < 128 ? 1 : n < 16_384 ? 2 : n < 2_097_152 ? 3 : 4 }
        let properties = 1 + 2 + contentType.utf8.count            // content type (0x03), UTF-8 string
        let variableHeader = 2 + topic.utf8.count + 2 + varintSize(properties) + properties  // topic, packet id, properties
        let remaining = variableHeader + payload
        return 1 + varintSize(remaining) + remaining
    }

    /// Best (lowest) nanoseconds per reading over three rounds of `seconds` each.
    static func nanosecondsPerReading(_ readingsPerRound: Int, seconds: Double, _ body: () -> Void) -> Double {
        var best = Double.infinity
        for _ in 0..<3 {
            let start = ContinuousClock.now
            var rounds = 0
            repeat {
                body()
                rounds += 1
            } while secondsSince(start) < seconds
            best = min(best, secondsSince(start) * 1e9 / Double(rounds * readingsPerRound))
        }
        return best
    }

    static func measure(sensors: [Int], records: Int, batches: Int, intervalMs: Int, jitterMs: Int, seconds: Double,
                        samples: String?) throws -> [[String: Any]] {
        let topic = TopicTemplates.defaults.batch.topic(device: device)
        let ingest = IngestConfiguration()
        var rows: [[String: Any]] = []
        var oneSensorCompact: Double?
        for n in sensors {
            let data = Self.batches(sensors: n, records: records, batches: batches, intervalMs: intervalMs, jitterMs: jitterMs)
            let readings = data.reduce(0) { $0 + $1.records.count }
            var row: [String: Any] = ["benchmark": "encoding-\(n)-sensor\(n == 1 ? "" : "s")", "sensors_per_reading": n,
                                      "records_per_batch": records, "batches": batches, "interval_ms": intervalMs, "jitter_ms": jitterMs]
            for encoding in BatchEncoding.allCases {
                let payloads = data.map { encoding.encode($0, maxBytes: .max).payload }
                for (b, p) in zip(data, payloads) {
                    // What is measured must be what the ingest accepts, unchanged.
                    guard case .batch(let request) = IngestItem.classify(topic: topic, payload: p, contentType: encoding.contentType, configuration: ingest),
                          request == StoreRequest(b, topic: topic) else {
                        throw BenchError("the \(encoding) encoding of a batch does not come back unchanged through the ingest")
                    }
                }
                let bytes = payloads.reduce(0) { $0 + $1.count }
                let mqtt = payloads.reduce(0) { $0 + publishBytes(topic: topic, contentType: encoding.contentType, payload: $1.count) }
                let encodeNs = nanosecondsPerReading(readings, seconds: seconds) {
                    for b in data { _ = encoding.encode(b, maxBytes: .max) }
                }
                let decodeNs = nanosecondsPerReading(readings, seconds: seconds) {
                    for p in payloads { _ = IngestItem.classify(topic: topic, payload: p, contentType: encoding.contentType, configuration: ingest) }
                }
                let e = encoding.rawValue
                row["\(e)_payload_bytes_per_reading"] = Double(bytes) / Double(readings)
                row["\(e)_mqtt_publish_bytes_per_reading"] = Double(mqtt) / Double(readings)
                row["\(e)_batch_payload_bytes"] = Double(bytes) / Double(data.count)
                row["\(e)_encode_ns_per_reading"] = encodeNs
                row["\(e)_decode_ns_per_reading"] = decodeNs
                if let samples {
                    try FileManager.default.createDirectory(atPath: samples, withIntermediateDirectories: true)
                    try Data(payloads[0]).write(to: URL(fileURLWithPath: "\(samples)/\(n)sensor\(n == 1 ? "" : "s").\(encoding == .json ? "json" : "flc")"))
                }
            }
            let compact = row["compact_payload_bytes_per_reading"] as! Double
            row["compact_to_json_size"] = compact / (row["json_payload_bytes_per_reading"] as! Double)
            row["compact_to_json_decode_time"] = (row["compact_decode_ns_per_reading"] as! Double) / (row["json_decode_ns_per_reading"] as! Double)
            if n == 1 { oneSensorCompact = compact; row["goal_bytes_per_reading"] = 16.0 }
            if n > 1, let one = oneSensorCompact {
                row["compact_bytes_per_further_sensor"] = (compact - one) / Double(n - 1)
                row["goal_bytes_per_further_sensor"] = 6.0
            }
            rows.append(row)
        }
        return rows
    }
}
