// The bare reference pipeline the drain is measured against (issue 17): the simplest code
// that moves the same readings, with application acks, from a publisher through mosquitto into
// MariaDB, written straight against libmosquitto and Connector/C (no Fieldlog code on the path).
//
//   reference-publish ── binary batch (QoS 1) ──▶ mosquitto ──▶ reference-ingest
//          ▲                                                        │ one transaction per group of
//          └──────────── ack (QoS 1) after COMMIT ◀─────────────────┘ messages: ONE multi-row
//                                                                     INSERT IGNORE, one row per
//                                                                     reading keyed by (device, epoch, seq)
//
// A batch is [epoch u64][first seq u64][count u32][sensors u16], then per reading [ts i64] and
// `sensors` doubles, little endian. A row is (device_id, epoch, seq, device_time, vals), vals
// the reading's doubles as bytes. The publisher keeps `window` batches in flight and sends the
// next when one is acked; the ingester commits up to `group` messages at a time (what it has),
// then publishes one ack per message. Both run as processes of their own, so their CPU is
// measured apart, as the drain measures the device and the ingest.
import ArgumentParser
import CMariaDB
import CMosquitto
import Foundation
import MariaDB
import Processes
import Sync
import Threading

/// State shared with libmosquitto's callbacks (its network thread) through the context pointer.
// @unchecked: `inbox`, `acked` and `connected` are only touched with `condition` locked.
final class ReferenceMQTT: @unchecked Sendable {
    let condition = ConditionLock()
    var inbox: [(topic: String, payload: [UInt8])] = []
    var acked = 0
    var connected = false
    let handle: OpaquePointer

    init(clientID: String, user: String, password: String, host: String, port: Int) throws {
        mosquitto_lib_init()
        guard let h = mosquitto_new(clientID, true, nil) else { throw BenchError("mosquitto_new failed") }
        handle = h
        mosquitto_user_data_set(h, Unmanaged.passUnretained(self).toOpaque())
        mosquitto_int_option(h, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5)
        mosquitto_int_option(h, MOSQ_OPT_RECEIVE_MAXIMUM, 1000)
        mosquitto_int_option(h, MOSQ_OPT_SEND_MAXIMUM, 1000)
        mosquitto_username_pw_set(h, user, password)
        mosquitto_connect_callback_set(h) { _, ctx, rc in
            let me = Unmanaged<ReferenceMQTT>.fromOpaque(ctx!).takeUnretainedValue()
            me.condition.withLock { me.connected = rc == 0; me.condition.broadcast() }
        }
        mosquitto_message_callback_set(h) { _, ctx, msg in
            guard let ctx, let msg else { return }
            let me = Unmanaged<ReferenceMQTT>.fromOpaque(ctx).takeUnretainedValue()
            let m = msg.pointee
            let payload = Array(UnsafeBufferPointer(start: m.payload?.assumingMemoryBound(to: UInt8.self), count: Int(m.payloadlen)))
            let topic = String(cString: m.topic)
            me.condition.withLock { me.inbox.append((topic, payload)); me.condition.broadcast() }
        }
        guard mosquitto_connect(h, host, Int32(port), 30) == MOSQ_ERR_SUCCESS.rawValue else { throw BenchError("mosquitto_connect failed") }
        guard mosquitto_loop_start(h) == MOSQ_ERR_SUCCESS.rawValue else { throw BenchError("mosquitto_loop_start failed") }
        condition.withLock { while !connected { _ = condition.wait(until: .now + .seconds(10)); if !connected { break } } }
        guard condition.withLock({ connected }) else { throw BenchError("MQTT connect to \(host):\(port) as \(user) refused") }
    }

    func subscribe(_ topic: String) throws {
        guard mosquitto_subscribe(handle, nil, topic, 1) == MOSQ_ERR_SUCCESS.rawValue else { throw BenchError("subscribe \(topic) failed") }
    }

    func publish(_ topic: String, _ payload: [UInt8]) throws {
        let rc = payload.withUnsafeBytes { mosquitto_publish(handle, nil, topic, Int32($0.count), $0.baseAddress, 1, false) }
        guard rc == MOSQ_ERR_SUCCESS.rawValue else { throw BenchError("publish on \(topic) failed: \(rc)") }
    }

    /// Waits for messages and takes all of them (at most `max`).
    func take(max: Int, timeout: Double) -> [(topic: String, payload: [UInt8])] {
        condition.withLock {
            let deadline = ContinuousClock.now + .seconds(timeout)
            while inbox.isEmpty && condition.wait(until: deadline) {}
            let n = Swift.min(max, inbox.count)
            defer { inbox.removeFirst(n) }
            return Array(inbox.prefix(n))
        }
    }

    func stop() {
        mosquitto_disconnect(handle)
        mosquitto_loop_stop(handle, false)
        mosquitto_destroy(handle)
    }
}

struct ReferenceIngest: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "reference-ingest",
                                                    abstract: "The reference pipeline's receiver (run by `fieldlog-bench drain`).", shouldDisplay: false)
    @Option var mqttHost = "127.0.0.1"
    @Option var mqttPort: Int
    @Option var user: String
    @Option var password: String
    @Option var mariadbPort: Int
    @Option var mariadbUser: String
    @Option var mariadbPassword: String
    @Option var database: String
    @Option var device: String
    @Option(help: "Most messages per transaction.") var group = 16

    func run() throws {
        guard let mysql = mysql_init(nil) else { throw BenchError("mysql_init failed") }
        guard mysql_real_connect(mysql, "127.0.0.1", mariadbUser, mariadbPassword, database, UInt32(mariadbPort), nil, 0) != nil else {
            throw BenchError("MariaDB connect: \(String(cString: mysql_error(mysql)))")
        }
        func sql(_ text: String) throws {
            guard mysql_real_query(mysql, text, UInt(text.utf8.count)) == 0 else { throw BenchError("MariaDB: \(String(cString: mysql_error(mysql)))") }
        }
        try sql("SET time_zone = '+00:00'")
        let mqtt = try ReferenceMQTT(clientID: "ref-ingest-\(getpid())", user: user, password: password, host: mqttHost, port: mqttPort)
        try mqtt.subscribe("fieldlog/v1/devices/\(device)/batch")
        let ackTopic = "fieldlog/v1/devices/\(device)/ack"
        FileHandle.standardOutput.write(Data("reference-ingest: ready\n".utf8))
        let hex = Array("0123456789abcdef".utf8)
        while true {
            let messages = mqtt.take(max: group, timeout: 600)
            if messages.isEmpty { break }
            var text = "INSERT IGNORE INTO ref_readings (device_id, epoch, seq, device_time, vals) VALUES "
            var first = true
            var acks: [[UInt8]] = []
            for m in messages {
                let p = m.payload
                guard p.count >= 22 else { continue }
                func u64(_ at: Int) -> UInt64 { p.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: at, as: UInt64.self) } }
                let epoch = u64(0), seq0 = u64(8)
                let count = Int(p.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 16, as: UInt32.self) })
                let sensors = Int(p.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 20, as: UInt16.self) })
                let stride = 8 + 8 * sensors
                guard p.count == 22 + count * stride else { continue }
                for i in 0..<count {
                    let at = 22 + i * stride
                    let ts = Int64(bitPattern: u64(at))
                    text += first ? "('" : ",('"
                    first = false
                    text += device + "'," + String(epoch) + "," + String(seq0 + UInt64(i)) + ",'" + (SQLDateTime.format(unixMilliseconds: ts) ?? "1970-01-01 00:00:00.000") + "',X'"
                    var bytes = [UInt8](); bytes.reserveCapacity(16 * sensors)
                    for b in p[(at + 8)..<(at + stride)] { bytes.append(hex[Int(b >> 4)]); bytes.append(hex[Int(b & 15)]) }
                    text += String(decoding: bytes, as: UTF8.self) + "')"
                }
                acks.append(Array(p[8..<16]) + withUnsafeBytes(of: UInt64(count).littleEndian) { Array($0) })
            }
            try sql("START TRANSACTION")
            if !first { try sql(text) }
            try sql("COMMIT")
            for a in acks { try mqtt.publish(ackTopic, a) }
        }
        mqtt.stop()
        mysql_close(mysql)
    }
}

struct ReferencePublish: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "reference-publish",
                                                    abstract: "The reference pipeline's sender (run by `fieldlog-bench drain`).", shouldDisplay: false)
    @Option var mqttHost = "127.0.0.1"
    @Option var mqttPort: Int
    @Option var user: String
    @Option var password: String
    @Option var readings: Int
    @Option var sensors: Int
    @Option var batchRecords: Int
    @Option var window: Int

    func run() throws {
        // The batches, built before the clock starts (the device's log reads are not what this measures).
        var batches: [[UInt8]] = []
        var seq: UInt64 = 1
        let epoch = UInt64.random(in: 1...UInt64.max)
        while seq <= UInt64(readings) {
            let n = min(batchRecords, readings - Int(seq) + 1)
            var b = [UInt8]()
            b.reserveCapacity(22 + n * (8 + 8 * sensors))
            func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { b.append(contentsOf: $0) } }
            put(epoch); put(seq); put(UInt32(n)); put(UInt16(sensors))
            for i in 0..<n {
                put(Int64(1_700_000_000_000) + Int64(seq) * 10 + Int64(i))
                let values = benchReading(sensors: sensors, seed: Int(seq) + i)
                for (_, v) in values.sorted { if case .number(let d) = v { put(d.bitPattern) } }
            }
            batches.append(b)
            seq += UInt64(n)
        }
        let mqtt = try ReferenceMQTT(clientID: user, user: user, password: password, host: mqttHost, port: mqttPort)
        try mqtt.subscribe("fieldlog/v1/devices/\(user)/ack")
        Thread.sleep(forTimeInterval: 0.3)
        let topic = "fieldlog/v1/devices/\(user)/batch"
        let start = ContinuousClock.now
        var sent = 0, acked = 0
        while acked < batches.count {
            while sent < batches.count && sent - acked < window { try mqtt.publish(topic, batches[sent]); sent += 1 }
            let got = mqtt.take(max: 1_000, timeout: 60)
            guard !got.isEmpty else { throw BenchError("reference-publish: no ack for 60 s (\(acked) of \(batches.count) acked)") }
            acked += got.count
        }
        let elapsed = secondsSince(start)
        FileHandle.standardOutput.write(Data("reference-publish: \(readings) readings in \(elapsed) s\n".utf8))
        mqtt.stop()
    }
}

enum ReferencePipeline {
    /// Runs the reference pipeline once on the stack and returns what it measured.
    static func measure(stack: BenchStack, dir: String, readings: Int, sensors: Int, window: Int, batchRecords: Int,
                        reporter: Reporter) async throws -> (readingsPerSecond: Double, cpuMicrosecondsPerReading: Double, cpu: [String: Double]) {
        let tag = "\(getpid())"
        let database = "bench_reference_\(tag)"
        let deviceName = "bench-ref-\(tag)"
        let password = "pw-\(UInt64.random(in: 0...UInt64.max))"
        try stack.addMQTTUsers([(deviceName, password)])
        try await stack.freshDatabase(database)
        return try await withCleanups { cleanups in
            cleanups.add { await stack.dropDatabase(database) }
            let c = try await MariaDBConnection.connect(configuration: stack.mariaDB(database: database), logger: quietLogger("bench.sql"))
            try await c.query("""
                CREATE TABLE ref_readings (device_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL, epoch BIGINT UNSIGNED NOT NULL,
                  seq BIGINT UNSIGNED NOT NULL, device_time DATETIME(3) NOT NULL, vals VARBINARY(512) NOT NULL,
                  PRIMARY KEY (device_id, epoch, seq)) ENGINE=InnoDB
                """)
            let env = stack.environment
            guard let mariaPort = env["FIELDLOG_MARIADB_PORT"], let mariaUser = env["FIELDLOG_MARIADB_USER"], let mariaPassword = env["FIELDLOG_MARIADB_PASSWORD"],
                  let backendUser = env["FIELDLOG_MQTT_BACKEND_USER"], let backendPassword = env["FIELDLOG_MQTT_BACKEND_PASSWORD"] else {
                throw BenchError("reference: the stack environment lacks MariaDB or MQTT credentials")
            }
            let bench = stack.binDir + "/fieldlog-bench"
            let ingest = try ChildProcess.spawn(bench, ["reference-ingest", "--mqtt-port", String(stack.mqttPort), "--user", backendUser,
                                                               "--password", backendPassword, "--mariadb-port", mariaPort, "--mariadb-user", mariaUser,
                                                               "--mariadb-password", mariaPassword, "--database", database, "--device", deviceName,
                                                               "--group", String(window)],
                                                stdoutPath: dir + "/reference-ingest.log", stderrPath: dir + "/reference-ingest.log")
            cleanups.add { await ingest.stop() }
            let ready = ContinuousClock.now
            while !(ingest.tail().contains("ready")) {
                guard ingest.isRunning, ContinuousClock.now - ready < .seconds(20) else { throw BenchError("reference-ingest did not start: \(ingest.tail())") }
                try await Task.sleep(for: .milliseconds(50))
            }
            let (mosquittoPID, mariadbPID) = stack.servicePIDs
            let before = (mosquittoPID.map(FleetBench.cpu) ?? 0, mariadbPID.map(FleetBench.cpu) ?? 0)
            reporter.note("drain: reference pipeline, \(readings) readings")
            let publisher = try ChildProcess.spawn(bench, ["reference-publish", "--mqtt-port", String(stack.mqttPort), "--user", deviceName,
                                                                  "--password", password, "--readings", String(readings), "--sensors", String(sensors),
                                                                  "--batch-records", String(batchRecords), "--window", String(window)],
                                                   stdoutPath: dir + "/reference-publish.log", stderrPath: dir + "/reference-publish.log")
            cleanups.add { await publisher.stop() }
            let started = ContinuousClock.now
            var publisherCPU = 0.0
            while publisher.isRunning {
                if let s = try? ProcSample.read(pid: publisher.pid) { publisherCPU = s.cpuSeconds }
                guard ContinuousClock.now - started < .seconds(600) else { throw BenchError("reference pipeline: over 600 s") }
                try await Task.sleep(for: .milliseconds(50))
            }
            guard let line = publisher.tail().split(separator: "\n").last(where: { $0.hasPrefix("reference-publish:") }),
                  let seconds = Double(line.split(separator: " ").dropLast().last ?? "") else {
                throw BenchError("reference-publish failed: \(publisher.tail())")
            }
            let ingestCPU = (try? ProcSample.read(pid: ingest.pid))?.cpuSeconds ?? 0
            let after = (mosquittoPID.map(FleetBench.cpu) ?? 0, mariadbPID.map(FleetBench.cpu) ?? 0)
            await ingest.stop()
            let stored = try await c.query("SELECT COUNT(*), COUNT(DISTINCT seq) FROM ref_readings").rows[0]
            await c.close()
            guard stored[0].int64 == Int64(readings), stored[1].int64 == Int64(readings) else {
                throw BenchError("reference pipeline: \(stored) rows stored for \(readings) readings")
            }
            let cpu = ["publisher": publisherCPU, "ingest": ingestCPU, "mosquitto": after.0 - before.0, "mariadb": after.1 - before.1]
            return (Double(readings) / seconds, cpu.values.reduce(0, +) / Double(readings) * 1e6, cpu)
        }
    }
}
