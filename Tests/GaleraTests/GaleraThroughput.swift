// Throughput of ingest into the 3-node Galera cluster beside a single MariaDB: the same fleet
// (simulated devices streaming real batches through a private broker) against two
// `fieldlog-backend ingest` processes, on the same machine, in the same run. A measurement, not
// a test of speed: it asserts only that every record was stored exactly once, and prints the
// figures. It runs only when asked (it takes a minute or two):
//
//   FIELDLOG_GALERA_BENCH=1 swift test --filter GaleraTests.GaleraThroughput
//
// Fleet shape: FIELDLOG_GALERA_BENCH_DEVICES (default 10), FIELDLOG_GALERA_BENCH_RECORDS per
// device (default 3000), batches of 10, up to 32 unacked batches per device.
import FieldlogCore
import Foundation
import Processes
import TestSupport
import XCTest

final class GaleraThroughput: XCTestCase {
    override class func tearDown() {
        GaleraClusterTests.stopCluster()
        super.tearDown()
    }

    func testIngestThroughputThreeNodeClusterBesideSingleNode() async throws {
        let env = ProcessInfo.processInfo.environment
        guard env["FIELDLOG_GALERA_BENCH"] == "1" else {
            throw XCTSkip("a measurement: run with FIELDLOG_GALERA_BENCH=1 (see docs/scaling.md)")
        }
        let deviceCount = Int(env["FIELDLOG_GALERA_BENCH_DEVICES"] ?? "") ?? 10
        let records = UInt64(env["FIELDLOG_GALERA_BENCH_RECORDS"] ?? "") ?? 3_000
        let g = try GaleraClusterTests.cluster()
        let single = try PrivateMariaDB()
        try single.start()
        defer { single.stop() }

        var results: [String] = []
        // Single node: two ingest processes on the one server.
        try single.sql("CREATE DATABASE bench CHARACTER SET utf8mb4")
        let singleAddress = "127.0.0.1:\(single.port)"
        results.append(try await measure("single MariaDB", g: g, addresses: [singleAddress, singleAddress],
                                         user: single.user, password: single.password, devices: deviceCount, records: records))
        // Cluster: ingest a on node 1, ingest b on node 2 (each with the full list).
        let name = Stack.uniqueName("bench").replacingOccurrences(of: "-", with: "_")
        try g.sql("CREATE DATABASE `\(name)` CHARACTER SET utf8mb4")
        results.append(try await measure("3-node Galera", g: g, addresses: [g.addresses(preferring: 1), g.addresses(preferring: 2)],
                                         user: g.user, password: g.password, database: name, devices: deviceCount, records: records))
        print("galera throughput (\(deviceCount) devices × \(records) records, batches of 10, 2 ingest processes):\n  " + results.joined(separator: "\n  "))
        try? g.sql("DROP DATABASE `\(name)`")
    }

    private func measure(_ label: String, g: PrivateGalera, addresses: [String], user: String, password: String,
                         database: String = "bench", devices: Int, records: UInt64) async throws -> String {
        var env = ProcessInfo.processInfo.environment
        env["FIELDLOG_MARIADB_USER"] = user
        env["FIELDLOG_MARIADB_PASSWORD"] = password
        env["FIELDLOG_MARIADB_DATABASE"] = database
        env["FIELDLOG_MARIADB_ADDRESSES"] = addresses[0]
        env["FIELDLOG_MQTT_HOST"] = "127.0.0.1"
        env["FIELDLOG_MQTT_PORT"] = String(g.mqttPort)
        env["FIELDLOG_MQTT_BACKEND_USER"] = g.mqttBackendUser
        env["FIELDLOG_MQTT_BACKEND_PASSWORD"] = g.mqttBackendPassword
        env["FIELDLOG_METRICS_PORT"] = "0"
        env["FIELDLOG_INGEST_GROUP"] = Stack.uniqueName("bench")
        let migrate = try BackendProcess.run(["migrate"], environment: env)
        XCTAssertEqual(migrate.status, 0, migrate.output)
        let dir = try TemporaryDirectory("galera-bench")
        defer { dir.remove() }
        var processes: [ManagedProcess] = []
        defer { for p in processes { p.stop() } }
        for (i, list) in addresses.enumerated() {
            var e = env
            e["FIELDLOG_MARIADB_ADDRESSES"] = list
            processes.append(try BackendProcess.ingest("ingest\(i)", environment: e, directory: dir))
        }
        for p in processes { try BackendProcess.waitRunning(p) }
        let fleet = try await Fleet.connect(count: devices, port: g.mqttPort, addUser: g.addMQTTUser, records: records)
        let start = ContinuousClock.now
        try await fleet.stream(interval: .milliseconds(2), window: 32, timeout: .seconds(600))
        let elapsed = ContinuousClock.now - start
        await fleet.close()
        let count = try Shell.run("mariadb", ["--no-defaults", "-h", "127.0.0.1", "-P", String(addresses[0].split(separator: ",")[0].split(separator: ":")[1]),
                                              "-u", user, "-p" + password, "--batch", "--skip-column-names", "-e",
                                              "SELECT COUNT(*) FROM readings", database]).trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertEqual(count, String(UInt64(devices) * records), "\(label): every record stored exactly once")
        let seconds = elapsed.inSeconds
        let rate = Double(UInt64(devices) * records) / seconds
        return String(format: "%@: %d records in %.1f s = %.0f records/s (acked end to end)", label, Int(UInt64(devices) * records), seconds, rate)
    }
}
