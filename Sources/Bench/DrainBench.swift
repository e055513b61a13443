// drain: a device log holding a large unacknowledged backlog, drained into MariaDB through
// mosquitto by the real programs, next to the ceilings measured in the same run.
import ArgumentParser
import FieldlogCore
import Threading
import Foundation
import Processes
@_spi(Testing) import Log
import Logging
import MariaDB
import Sync

struct DrainBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drain",
        abstract: "Backlog drain: `fieldlog-device sync` → mosquitto → `fieldlog-backend ingest` → MariaDB, next to the MariaDB and mosquitto ceilings.")

    @OptionGroup var stackOptions: StackOptions

    @Option(help: "Unacknowledged readings in the device log before the drain starts.")
    var readings: Int = 1_000_000

    @Option(help: "Sensors per reading (the device's default configuration has one).")
    var sensors: Int = 1

    @Option(help: "Batches in flight (SYNC_WINDOW of the device; its default).")
    var window: Int = 16

    @Option(help: "Records per batch (SYNC_BATCH_MAX_RECORDS of the device).")
    var batchRecords: Int = 500

    @Option(help: "Batch encoding of the device (SYNC_ENCODING): json or compact.")
    var encoding: String = "json"

    @Option(help: "Readings inserted directly for the MariaDB ceiling.")
    var ceilingReadings: Int = 200_000

    @Option(help: "Messages published for the mosquitto ceiling.")
    var ceilingMessages: Int = 20_000

    @Option(help: "Give up when the drain takes longer than this many seconds.")
    var timeout: Double = 400

    func validate() throws {
        guard (1...100_000_000).contains(readings) else { throw ValidationError("--readings must be 1…100000000") }
        guard (1...64).contains(sensors) else { throw ValidationError("--sensors must be 1…64") }
        guard (1...64).contains(window) else { throw ValidationError("--window must be 1…64") }
        guard (1...1000).contains(batchRecords) else { throw ValidationError("--batch-records must be 1…1000") }
        guard BatchEncoding(rawValue: encoding) != nil else { throw ValidationError("--encoding must be json or compact") }
        guard ceilingReadings >= batchRecords, ceilingMessages >= 100 else { throw ValidationError("ceilings need ≥ one batch / ≥ 100 messages") }
    }

    func run() async throws {
        let reporter = Reporter(json: stackOptions.json)
        let dir = try BenchDirectory(stackOptions.dir, name: "drain")
        defer { dir.remove() }
        let stack = try await BenchStack.start(stackOptions, dir: dir.path, reporter: reporter)
        defer { stack.stop() }
        reporter.emit(try await Self.measure(stack: stack, dir: dir.path, readings: readings, sensors: sensors, window: window,
                                             batchRecords: batchRecords, encoding: BatchEncoding(rawValue: encoding)!, ceilingReadings: ceilingReadings,
                                             ceilingMessages: ceilingMessages, timeout: timeout, reporter: reporter))
    }

    /// Fills a log with `readings` appends: `DeviceLog.append` from 256 concurrent tasks with
    /// `normal` durability, so group commit puts hundreds of records in each transaction.
    static func fill(path: String, device: DeviceID, readings: Int, sensors: Int) async throws -> Double {
        let log = try await DeviceLog.open(path: path, device: device, configuration: LogConfiguration(durability: .normal),
                                           logger: quietLogger("bench.log"))
        let tasks = 256
        let start = ContinuousClock.now
        let base = Int64(Date().timeIntervalSince1970 * 1000) - Int64(readings) * 10
        try await withThrowingTaskGroup(of: Void.self) { group in
            for t in 0..<tasks {
                group.addTask {
                    var i = t
                    while i < readings {
                        // A fresh reading each time (a repeating set would flatter the compact encoding's zlib).
                        _ = try await log.append(benchReading(sensors: sensors, seed: i), timestamp: DeviceTimestamp(unixMilliseconds: base + Int64(i) * 10))
                        i += tasks
                    }
                }
            }
            try await group.waitForAll()
        }
        let rate = Double(readings) / secondsSince(start)
        let head = try await log.head()
        await log.close()
        guard head.rawValue == UInt64(readings) else { throw BenchError("fill: head \(head) after \(readings) appends") }
        return rate
    }

    static func measure(stack: BenchStack, dir: String, readings: Int, sensors: Int, window: Int, batchRecords: Int,
                        encoding: BatchEncoding = .json, ceilingReadings: Int, ceilingMessages: Int, timeout: Double, reporter: Reporter) async throws -> [String: Any] {
        let tag = "\(getpid())"
        let database = "bench_drain_\(tag)"
        let ceilingDatabase = "bench_ceiling_\(tag)"
        let deviceName = "bench-drain-\(tag)"
        let device = try DeviceID(deviceName)
        let password = "pw-\(UInt64.random(in: 0...UInt64.max))"
        try stack.addMQTTUsers([(deviceName, password)])
        try await stack.freshDatabase(database)
        try await stack.freshDatabase(ceilingDatabase)
        return try await withCleanups { cleanups in
            cleanups.add { await stack.dropDatabase(database); await stack.dropDatabase(ceilingDatabase) }

            // Ceilings first (same services, same run).
            let payloadBytes = batchPayloadBytes(records: batchRecords, sensors: sensors, encoding: encoding)
            reporter.note("drain: ceilings (MariaDB \(ceilingReadings) readings direct, mosquitto \(ceilingMessages) × \(payloadBytes) B)")
            let dbCeiling = try await Ceilings.mariaDBInsert(stack: stack, database: ceilingDatabase, readings: ceilingReadings,
                                                             sensors: sensors, batch: batchRecords, perTransaction: window * batchRecords)
            let mqttMessages = try await Ceilings.mqttPublish(stack: stack, payloadBytes: payloadBytes, messages: ceilingMessages, inFlight: 1000)
            let mqttReadings = mqttMessages * Double(batchRecords)

            // The backlog.
            let logPath = dir + "/drain-device.sqlite3"
            reporter.note("drain: filling \(readings) readings into \(logPath)")
            let fillRate = try await fill(path: logPath, device: device, readings: readings, sensors: sensors)

            // The real programs.
            let ingest = try stack.startBackend(database: database, dir: dir)
            cleanups.add { await ingest.stop() }
            try await Task.sleep(for: .seconds(1))
            guard ingest.isRunning else { throw BenchError("ingest exited: \(ingest.tail())") }
            let env = stack.deviceEnvironment(device: deviceName, password: password, logPath: logPath, extra: [
                "LOG_DURABILITY": "normal", "SYNC_WINDOW": String(window), "SYNC_BATCH_MAX_RECORDS": String(batchRecords),
                "SYNC_BATCH_MAX_BYTES": "256k", "SYNC_INTERVAL_SECONDS": "0.2", "SYNC_ENCODING": encoding.rawValue,
                // Keep every acknowledged record: trimming is not what this measures.
                "LOG_RETENTION_RECORDS": String(readings), "LOG_RETENTION_SECONDS": "315360000"])
            reporter.note("drain: starting fieldlog-device sync (window \(window), \(batchRecords) records per batch)")
            // The services' CPU over the drain (owned stacks only: their PID files are ours to read).
            let (mosquittoPID, mariadbPID) = stack.servicePIDs
            func serviceCPU() -> (broker: Double, db: Double) { (mosquittoPID.map(FleetBench.cpu) ?? 0, mariadbPID.map(FleetBench.cpu) ?? 0) }
            let servicesBefore = serviceCPU()
            let start = ContinuousClock.now
            let agent = try stack.startDevice(["sync"], environment: env, logPath: dir + "/drain-device.log")
            cleanups.add { await agent.stop() }
            var acked: UInt64 = 0
            var firstAckAt: Double?
            var lastReport = ContinuousClock.now
            var bytes = SocketBytes()
            while acked < UInt64(readings) {
                try await Task.sleep(for: .milliseconds(100))
                guard agent.isRunning else { throw BenchError("fieldlog-device exited: \(agent.tail())") }
                guard ingest.isRunning else { throw BenchError("fieldlog-backend exited: \(ingest.tail())") }
                acked = try readLogPointers(logPath).acked
                if acked > 0 && firstAckAt == nil { firstAckAt = secondsSince(start) }
                if let b = SocketBytes.read(pid: agent.pid, port: stack.mqttPort) { bytes = b }
                if ContinuousClock.now - lastReport > .seconds(10) {
                    reporter.note("drain: \(acked) of \(readings) acked after \(String(format: "%.1f", secondsSince(start))) s")
                    lastReport = ContinuousClock.now
                }
                if secondsSince(start) > timeout { throw BenchError("drain: only \(acked) of \(readings) acked after \(timeout) s") }
            }
            let elapsed = secondsSince(start)
            let deviceCPU = (try? ProcSample.read(pid: agent.pid))?.cpuSeconds ?? 0
            let ingestCPU = (try? ProcSample.read(pid: ingest.pid))?.cpuSeconds ?? 0
            let deviceRSS = (try? ProcSample.read(pid: agent.pid))?.rssKiB ?? 0
            let servicesAfter = serviceCPU()
            let mosquittoCPU = servicesAfter.broker - servicesBefore.broker, mariadbCPU = servicesAfter.db - servicesBefore.db
            await agent.stop()
            await ingest.stop()

            // Nothing lost, nothing twice.
            let c = try await MariaDBConnection.connect(configuration: stack.mariaDB(database: database), logger: quietLogger("bench.sql"))
            let row = try await c.query("SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM readings WHERE device_id = '\(deviceName)'").rows[0]
            await c.close()
            let stored = row[0].int64 ?? -1
            guard stored == Int64(readings), row[1].int64 == Int64(readings), row[2].int64 == 1, row[3].int64 == Int64(readings) else {
                throw BenchError("drain: MariaDB holds \(row) readings of \(deviceName), expected \(readings) distinct 1…\(readings)")
            }
            let rate = Double(readings) / elapsed
            let ceiling = min(dbCeiling, mqttReadings)
            // The bare reference pipeline on the same services, same readings, same window (issue 17).
            let reference = try await ReferencePipeline.measure(stack: stack, dir: dir, readings: readings, sensors: sensors, window: window,
                                                                batchRecords: batchRecords, reporter: reporter)
            return [
                "benchmark": encoding == .json ? "drain" : "drain-\(encoding.rawValue)", "encoding": encoding.rawValue,
                "readings": readings, "sensors_per_reading": sensors, "window_batches": window,
                "records_per_batch": batchRecords, "batch_payload_bytes": payloadBytes, "ceiling_readings_per_transaction": window * batchRecords,
                "fill_readings_per_s": fillRate, "fill_method": "DeviceLog.append, 256 concurrent appenders, durability normal",
                "readings_per_s": rate, "time_to_empty_s": elapsed, "first_ack_s": firstAckAt ?? 0,
                "wire_bytes_sent_per_reading": Double(bytes.sent) / Double(readings),
                "wire_bytes_received_per_reading": Double(bytes.received) / Double(readings),
                "device_cpu_s": deviceCPU, "ingest_cpu_s": ingestCPU, "device_rss_kib": deviceRSS,
                "mosquitto_cpu_s": mosquittoCPU, "mariadb_cpu_s": mariadbCPU,
                "cpu_us_per_reading": (deviceCPU + ingestCPU + mosquittoCPU + mariadbCPU) / Double(readings) * 1e6,
                "stored_readings": stored,
                "ceiling_mariadb_direct_readings_per_s": dbCeiling,
                "ceiling_mosquitto_messages_per_s": mqttMessages, "ceiling_mosquitto_readings_per_s": mqttReadings,
                "ceiling_readings_per_s": ceiling, "ceiling_source": dbCeiling <= mqttReadings ? "mariadb" : "mosquitto",
                "ratio_to_ceiling": rate / ceiling,
                "reference_readings_per_s": reference.readingsPerSecond, "ratio_to_reference": rate / reference.readingsPerSecond,
                "reference_cpu_us_per_reading": reference.cpuMicrosecondsPerReading,
                "reference_cpu_s": reference.cpu,
            ]
        }
    }
}

/// TCP payload bytes of a process's connection to the broker, from `ss -tinp` (kernel counters).
struct SocketBytes {
    var sent: UInt64 = 0
    var received: UInt64 = 0

    static func read(pid: Int32, port: Int) -> SocketBytes? {
        guard let ss = Tool.which("ss"), let out = try? Tool.run(ss, ["-tinpH", "dst", "127.0.0.1:\(port)"]) else { return nil }
        // Each socket: a line with users:((…pid=N…)) followed by a line of counters.
        let lines = out.split(separator: "\n")
        var result: SocketBytes?
        for (i, line) in lines.enumerated() where line.contains("pid=\(pid),") && i + 1 < lines.count {
            let info = lines[i + 1]
            func counter(_ name: String) -> UInt64 {
                guard let r = info.range(of: name + ":") else { return 0 }
                return UInt64(info[r.upperBound...].prefix { $0.isNumber }) ?? 0
            }
            var b = result ?? SocketBytes()
            b.sent += counter("bytes_sent")
            b.received += counter("bytes_received")
            result = b
        }
        return result
    }
}
