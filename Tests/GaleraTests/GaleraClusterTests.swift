// The backend on a 3-node MariaDB Galera cluster (issue 11), on this machine, with real
// processes: a private cluster (scripts/stack up --galera 3 in a private directory and ports),
// its private broker, two `fieldlog-backend ingest` processes each given the full address list
// (one preferring node 1, the other node 2) and a fleet of simulated devices streaming real
// protocol batches. One database node is SIGKILLed mid-stream (the one an ingest is using) and
// brought back by incremental state transfer (IST); every reading must be stored exactly once,
// on every node, `audit` must find nothing missing, and the fleet's acks must never stand still
// longer than the cluster's failure detection (plus the device's resend interval).
// Certification conflicts are provoked on purpose with two in-process writers on two nodes.
//
// One cluster serves the whole class (started on first use, about 15–30 s; stopped in
// `tearDown` of the class, also when a test fails).
import FieldlogCore
import Foundation
import Logging
import MariaDB
import Sync
import TestSupport
import XCTest
@testable import BackendStore
@testable import Ingest
@testable import Audit
import Synchronization

final class GaleraClusterTests: XCTestCase {
    /// The class's cluster, started on first use (nil before that and after `stopCluster`).
    private static let shared = Mutex<Result<PrivateGalera, any Error>?>(nil)

    /// The class's cluster; started on first use.
    static func cluster() throws -> PrivateGalera {
        let result = shared.withLock { current in
            if current == nil {
                current = Result {
                    guard FileManager.default.fileExists(atPath: "/usr/lib/galera/libgalera_smm.so"), getuid() == 0 else {
                        throw GaleraUnavailable(description: "Galera tests need galera-4 (/usr/lib/galera/libgalera_smm.so) and root (nodes run as mysql)")
                    }
                    let start = ContinuousClock.now
                    let g = try PrivateGalera(nodes: 3)
                    print("galera: 3-node cluster up in \(ContinuousClock.now - start) at \(g.addresses()) (\(g.directory.path))")
                    return g
                }
            }
            return current!
        }
        do {
            return try result.get()
        } catch let e as GaleraUnavailable where !Stack.servicesRequired {
            throw XCTSkip(e.description)
        }
    }

    /// Stops the class's cluster (a later `cluster()` starts a new one).
    static func stopCluster() {
        let current = shared.withLock { current in
            defer { current = nil }
            return current
        }
        if case .success(let g)? = current { g.down() }
    }

    override class func tearDown() {
        stopCluster()
        super.tearDown()
    }

    /// A fresh database on the cluster and the environment of a `fieldlog-backend` using it.
    private func database(_ g: PrivateGalera, preferring node: Int) throws -> (name: String, env: [String: String]) {
        let name = Stack.uniqueName("galera").replacingOccurrences(of: "-", with: "_")
        try g.sql("CREATE DATABASE `\(name)` CHARACTER SET utf8mb4")
        var env = ProcessInfo.processInfo.environment
        env["FIELDLOG_MARIADB_ADDRESSES"] = g.addresses(preferring: node)
        env["FIELDLOG_MARIADB_USER"] = g.user
        env["FIELDLOG_MARIADB_PASSWORD"] = g.password
        env["FIELDLOG_MARIADB_DATABASE"] = name
        env["FIELDLOG_MQTT_HOST"] = "127.0.0.1"
        env["FIELDLOG_MQTT_PORT"] = String(g.mqttPort)
        env["FIELDLOG_MQTT_BACKEND_USER"] = g.mqttBackendUser
        env["FIELDLOG_MQTT_BACKEND_PASSWORD"] = g.mqttBackendPassword
        env["FIELDLOG_METRICS_PORT"] = "0"
        return (name, env)
    }

    func testFleetThroughTwoIngestsSurvivesASIGKILLedNodeAndItsISTRejoinStoringEverythingExactlyOnce() async throws {
        let g = try Self.cluster()
        let (name, env) = try database(g, preferring: 1)
        let migrate = try BackendProcess.run(["migrate"], environment: env)
        XCTAssertEqual(migrate.status, 0, migrate.output)
        let dir = try TemporaryDirectory("galera-ingest")
        defer { if testRun?.hasSucceeded == true { dir.remove() } else { print("ingest logs kept in \(dir.path)") } }

        // Two ingest processes, each with the whole address list: a prefers node 1, b node 2.
        let group = Stack.uniqueName("ingest")
        let metricsA = Ports.free(), metricsB = Ports.free()
        var envA = env, envB = env
        envA["FIELDLOG_INGEST_GROUP"] = group
        envB["FIELDLOG_INGEST_GROUP"] = group
        envA["FIELDLOG_METRICS_PORT"] = String(metricsA)
        envB["FIELDLOG_METRICS_PORT"] = String(metricsB)
        envB["FIELDLOG_MARIADB_ADDRESSES"] = g.addresses(preferring: 2)
        let a = try BackendProcess.ingest("a", environment: envA, directory: dir)
        let b = try BackendProcess.ingest("b", environment: envB, directory: dir)
        defer { a.stop(); b.stop() }
        try BackendProcess.waitRunning(a)
        try BackendProcess.waitRunning(b)
        XCTAssertTrue(a.log().contains("127.0.0.1:\(g.port(1))"), "ingest a starts on node 1: \(a.log())")

        // 6 devices × 2 000 records (200 batches of 10, one every 100 ms): about 20 s of traffic.
        let fleet = try await Fleet.connect(count: 6, port: g.mqttPort, addUser: g.addMQTTUser, records: 2_000)
        let streaming = Task { try await fleet.stream(interval: .milliseconds(100), timeout: .seconds(100)) }

        // Mid-stream: SIGKILL node 1 (ingest a's node), then bring it back (IST) while traffic goes on.
        let killDeadline = ContinuousClock.now + .seconds(60)
        while fleet.acked < fleet.totalRecords / 4 {
            guard ContinuousClock.now < killDeadline else {
                streaming.cancel()
                XCTFail("the fleet did not get a quarter acked within 60 s: \(fleet.acked) of \(fleet.totalRecords); ingest a: \(a.log().suffix(2000))")
                return
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        let ackedAtKill = fleet.acked
        try g.kill(1)
        let killedAt = ContinuousClock.now
        print("galera: node 1 SIGKILLed at \(ackedAtKill) of \(fleet.totalRecords) records acked")
        // As an operator would: restart the crashed node once the cluster has evicted it (a
        // restart while the dead instance is still a member can be partitioned away again on a
        // loaded machine). Node 1 then rejoins by IST while traffic goes on.
        let rejoin = Task.detached { () throws -> Duration in
            let evictDeadline = ContinuousClock.now + .seconds(30)
            while (try? g.status("wsrep_cluster_size", node: 2)) != "2" && ContinuousClock.now < evictDeadline {
                try await Task.sleep(for: .milliseconds(200))
            }
            print("galera: node 1 evicted after \(ContinuousClock.now - killedAt)")
            let start = ContinuousClock.now
            do {
                try g.start(1)
            } catch {
                print("galera: first restart of node 1 failed, once more: \(String(describing: error).suffix(500))")
                try g.start(1)
            }
            return ContinuousClock.now - start
        }
        try await streaming.value
        let rejoinTime = try await rejoin.value
        let streamTime = ContinuousClock.now - killedAt
        print("galera: node 1 rejoined in \(rejoinTime); fleet done \(streamTime) after the kill")

        // Every reading exactly once, on every node (node 1 caught up by IST).
        let expected = fleet.devices.map { "\($0.id.rawValue)\t2000\t1\t2000\t4000" }.sorted().joined(separator: "\n")
        for node in [3, 1, 2] {
            let rows = try g.sql("""
                SET SESSION wsrep_sync_wait = 1;
                SELECT r.device_id, COUNT(*), MIN(r.seq), MAX(r.seq), (SELECT COUNT(*) FROM reading_values v WHERE v.device_id = r.device_id)
                  FROM readings r GROUP BY r.device_id ORDER BY r.device_id
                """, node: node, database: name).trimmingCharacters(in: .whitespacesAndNewlines)
            XCTAssertEqual(rows, expected, "readings on node \(node)")
        }
        let rejoinLog = (try? String(contentsOfFile: g.directory.file("galera/node1/mariadb.log"), encoding: .utf8)) ?? ""
        let transferLines = rejoinLog.split(separator: "\n").filter { $0.contains("IST") || $0.contains("SST") || $0.contains("Recovered") }
        // Node 1 is back in the cluster (it holds every row, checked above). How it caught up is
        // reported, not asserted: scripts/stack restarts it from its recovered position (IST),
        // but under this test's load the node has also come back by a full copy (SST) followed
        // by IST of the last write sets (docs/scaling.md).
        XCTAssertTrue(rejoinLog.contains("IST received") || rejoinLog.contains("SST received"),
                      "node 1 rejoined by state transfer: \(transferLines.suffix(15).joined(separator: "\n"))")
        let transfer = rejoinLog.contains("SST received") ? "SST (full copy) then IST" : "IST (incremental)"
        XCTAssertEqual(try g.status("wsrep_local_state_comment", node: 1), "Synced")
        XCTAssertEqual(try g.status("wsrep_cluster_size", node: 1), "3")
        print("galera: node 1 caught up by \(transfer)")

        var audit = try BackendProcess.run(["audit"], environment: env)
        if audit.status != 0 {
            // A gap can be transient while two processes store adjacent batches (docs/backend.md).
            try await Task.sleep(for: .seconds(1))
            audit = try BackendProcess.run(["audit"], environment: env)
        }
        XCTAssertEqual(audit.status, 0, audit.output)
        XCTAssertTrue(audit.output.contains("RESULT: nothing missing"), audit.output)

        // Ingest a lost its node and moved on; deadlock/certification retries are counted.
        let textA = try BackendProcess.metrics(port: metricsA), textB = try BackendProcess.metrics(port: metricsB)
        XCTAssertGreaterThanOrEqual(BackendProcess.counter("fieldlog_database_reconnects_total", in: textA), 1, textA)
        XCTAssertTrue(textA.contains("fieldlog_deadlock_retries_total"), textA)
        XCTAssertTrue(textB.contains("fieldlog_deadlock_retries_total"), textB)
        XCTAssertTrue(a.log().contains("connected to MariaDB") && a.log().contains("127.0.0.1:\(g.port(2))"),
                      "ingest a failed over to node 2: \(a.log().suffix(2000))")
        let retries = BackendProcess.counter("fieldlog_deadlock_retries_total", in: textA) + BackendProcess.counter("fieldlog_deadlock_retries_total", in: textB)
        let reconnects = BackendProcess.counter("fieldlog_database_reconnects_total", in: textA) + BackendProcess.counter("fieldlog_database_reconnects_total", in: textB)

        // Ingest never stood still longer than the failure detection (plus one resend interval
        // of the devices and a scheduling allowance for this shared 2-core machine).
        let stall = fleet.longestStall
        let bound = PrivateGalera.failureDetection + .seconds(1) + .seconds(2)
        print("galera: longest fleet-wide ack stall \(stall) (bound \(bound)); deadlock/certification retries \(Int(retries)); reconnects \(Int(reconnects)); device resend rounds \(fleet.devices.map(\.resendCount).reduce(0, +))")
        XCTAssertLessThanOrEqual(stall, bound, "ingest stood still longer than the failure detection")
        XCTAssertTrue(a.isRunning && b.isRunning, "no ingest exited")
        await fleet.close()
        try? g.sql("DROP DATABASE `\(name)`")
    }

    /// Two writers on two nodes store batches of one device concurrently: adjacent batches (the
    /// normal case: they seldom conflict), then the same batches at once (a resend racing its
    /// original after a failover: the inserts of one write set collide with the other's and one
    /// loses certification, ERROR 1213). Each ack is checked, at the moment it is published,
    /// against a causal read on the third node; conflicts must be retried and counted.
    func testCertificationConflictsBetweenNodesAreRetriedCountedAndNeverAckAheadOfTheStore() async throws {
        let g = try Self.cluster()
        let (name, env) = try database(g, preferring: 1)
        let migrate = try BackendProcess.run(["migrate"], environment: env)
        XCTAssertEqual(migrate.status, 0, migrate.output)
        func settings(_ node: Int) -> DatabaseSettings {
            DatabaseSettings(addresses: [DatabaseAddress(host: "127.0.0.1", port: g.port(node))], user: g.user, password: g.password,
                             database: name, connectTimeout: .seconds(2), readTimeout: .seconds(20))
        }
        // The checker reads on node 3 with wsrep_sync_wait=1: it sees every commit certified before the read.
        let checker = try await connectFirst(settings(3), logger: Logger(label: "checker"))
        let acks = AckLog(), violations = AckLog()
        let publish: AckPublisher = { _, payload in
            let ack = try SyncCodec.decodeAck(payload)
            let stored = try await checker.execute("SELECT COUNT(*) FROM readings WHERE device_id = ? AND epoch = ? AND seq <= ?",
                                                   [.string(ack.device.rawValue), .uint(ack.epoch.rawValue), .uint(ack.through.rawValue)])
            if stored.rows[0][0].uint64 != ack.through.rawValue { violations.append(ack) }
            acks.append(ack)
        }
        var ingest = IngestSettings()
        ingest.metricsPort = 0
        ingest.reconnectBackoffFirst = .milliseconds(50)
        ingest.reconnectBackoffMax = .milliseconds(500)
        let metricsA = BackendMetrics(), metricsB = BackendMetrics()
        let a = IngestWriter(database: DatabaseClient(settings: settings(1), logger: Logger(label: "a")),
                             configuration: ingest.machine(topics: .defaults), metrics: metricsA, logger: Logger(label: "a"), publishAck: publish)
        let b = IngestWriter(database: DatabaseClient(settings: settings(2), logger: Logger(label: "b")),
                             configuration: ingest.machine(topics: .defaults), metrics: metricsB, logger: Logger(label: "b"), publishAck: publish)

        func messages(_ device: DeviceID, _ epoch: Epoch, batches: Int) -> [InboundMessage] {
            (0..<batches).map { i in
                let first = UInt64(i) * 10 + 1
                let records = (first...first + 9).map { seq in
                    LogRecord(sequence: SequenceNumber(seq), timestamp: DeviceTimestamp(unixMilliseconds: 1_764_000_000_000 + Int64(seq)),
                              values: try! SensorValues(["temp": .number(Double(seq)), "state": .text("ok")]))
                }
                let batch = Batch(device: device, epoch: epoch, range: SequenceRange(checked: SequenceNumber(first), SequenceNumber(first + 9)), records: records)
                return InboundMessage(topic: TopicTemplates.defaults.batch.topic(device: device), payload: SyncCodec.encode(batch))
            }
        }

        // 1. Adjacent batches: even ones on node 1, odd ones on node 2, in groups of two, at once.
        let adjacent = try DeviceID(Stack.uniqueName("adj")), epoch = Epoch.random()
        let all = messages(adjacent, epoch, batches: 60)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (w, start) in [(a, 0), (b, 1)] {
                group.addTask { for i in stride(from: start, to: 60, by: 4) { await w.process([all[i], all[i + 2]]) } }
            }
            try await group.waitForAll()
        }
        XCTAssertEqual(try g.sql("SELECT COUNT(*) FROM readings WHERE device_id = '\(adjacent)'", node: 3, database: name)
                        .trimmingCharacters(in: .whitespacesAndNewlines), "600")
        // Every batch is acked: selectively (`stored`), or by its transaction's ack whose
        // `through` covers it (§5.5 rule C: one ack for the batches `through` covers).
        let adjacentAcks = acks.all.filter { $0.device == adjacent }
        for i in 0..<60 {
            let last = UInt64(i) * 10 + 10
            XCTAssertTrue(adjacentAcks.contains { $0.stored?.last.rawValue == last || $0.through.rawValue >= last }, "batch \(i) (…\(last)) not acked")
        }
        XCTAssertLessThanOrEqual(adjacentAcks.count, 60, "at most one ack per batch")
        // Each writer acks what it saw (reads with wsrep_sync_wait=1). The last to commit need
        // not read: when its batch continues the prefix it already knew, it acks without a read
        // (spec §5.5), and may then not see the other's last commit. So the acks may stop short
        // of 600 until the device's probe brings a commit that sees everything: here, a resend
        // of the last batch through node 1.
        XCTAssertGreaterThanOrEqual(adjacentAcks.map(\.through).max() ?? .zero, SequenceNumber(580))
        await a.process([all[59]])
        XCTAssertEqual(acks.all.filter { $0.device == adjacent }.map(\.through).max(), SequenceNumber(600),
                       "the probe's commit reads every earlier commit")

        // 2. The same batches on both nodes at once, until certification conflicts happened
        //    (each round is a new device; a round takes well under a second).
        var round = 0
        var devices: [DeviceID] = []
        func retries() -> Double {
            BackendProcess.counter("fieldlog_deadlock_retries_total", in: metricsA.text()) + BackendProcess.counter("fieldlog_deadlock_retries_total", in: metricsB.text())
        }
        // Adjacent batches conflict only on the new device's `devices`/`epochs` row, if at all.
        let adjacentRetries = retries()
        repeat {
            round += 1
            let device = try DeviceID(Stack.uniqueName("race"))
            devices.append(device)
            let same = messages(device, Epoch.random(), batches: 40)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for w in [a, b] {
                    group.addTask { for i in stride(from: 0, to: 40, by: 4) { await w.process(Array(same[i..<i + 4])) } }
                }
                try await group.waitForAll()
            }
        } while retries() == adjacentRetries && round < 15
        print("galera: certification-conflict retries: \(Int(adjacentRetries)) with adjacent batches, \(Int(retries() - adjacentRetries)) in \(round) racing round(s)")
        XCTAssertGreaterThan(retries(), adjacentRetries, "two nodes inserting the same rows at once must lose certification (1213) and retry")
        for device in devices {
            XCTAssertEqual(try g.sql("SELECT CONCAT(COUNT(*), ' ', MIN(seq), ' ', MAX(seq)) FROM readings WHERE device_id = '\(device)'", node: 3, database: name)
                            .trimmingCharacters(in: .whitespacesAndNewlines), "400 1 400", "device \(device) stored exactly once")
            XCTAssertEqual(acks.all.filter { $0.device == device }.map(\.through).max(), SequenceNumber(400))
        }
        let inserted = BackendProcess.counter("fieldlog_rows_inserted_total", in: metricsA.text()) + BackendProcess.counter("fieldlog_rows_inserted_total", in: metricsB.text())
        XCTAssertEqual(inserted, Double(600 + 400 * devices.count), "every record inserted once across both writers")
        XCTAssertEqual(violations.all, [], "an ack passed what was stored")
        await checker.close()
        await a.database.close()
        await b.database.close()
        try? g.sql("DROP DATABASE `\(name)`")
    }
}

struct GaleraUnavailable: Error, CustomStringConvertible { var description: String }

/// Acks published by the in-process writers, in order.
final class AckLog: Sendable {
    private let acks = Mutex<[Ack]>([])
    var all: [Ack] { acks.withLock { $0 } }
    func append(_ a: Ack) { acks.withLock { $0.append(a) } }
}
