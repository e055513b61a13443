// The Grafana example (deploy/grafana/dashboards/fieldlog-readings.json) against a real MariaDB
// with the migrated schema and known rows. Grafana itself is not run (it is not available on
// these machines): its MySQL macros and variable interpolation are expanded here the way its
// MySQL data source documents them, and every panel's and variable's SQL is run with the
// session settings the provisioned data source uses (time_zone +00:00).
import Foundation
import TestSupport
import XCTest
@testable import BackendStore
@testable import Ingest
@testable import Audit
@testable import WebAdmin

final class GrafanaDashboardTests: XCTestCase {
    struct Panel { var title: String; var sql: String }

    /// Time range of the "dashboard": 2026-11-29 10:00:00 … 10:10:00 UTC, interval 1 min.
    static let from: Int64 = 1_795_946_400, to: Int64 = 1_795_947_000, interval: Int64 = 60
    static let epoch: UInt64 = 0xFEDC_BA98_7654_3210   // above 2^63: the epoch column is BIGINT UNSIGNED

    private func dashboard() throws -> (panels: [Panel], variables: [String: String]) {
        let url = URL(fileURLWithPath: Stack.packageRoot + "/deploy/grafana/dashboards/fieldlog-readings.json")
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        let panels = try XCTUnwrap(json["panels"] as? [[String: Any]]).map { p -> Panel in
            let target = (p["targets"] as? [[String: Any]])?.first
            return Panel(title: p["title"] as? String ?? "?", sql: target?["rawSql"] as? String ?? "")
        }
        let templating = try XCTUnwrap((json["templating"] as? [String: Any])?["list"] as? [[String: Any]])
        var variables: [String: String] = [:]
        for v in templating { variables[v["name"] as? String ?? "?"] = v["query"] as? String }
        return (panels, variables)
    }

    /// Grafana's MySQL macros and multi-value variables (single-quoted, comma-separated).
    private func expand(_ sql: String, variables: [String: [String]]) throws -> String {
        var s = sql.replacingOccurrences(of: "$__interval", with: "'\(Self.interval)s'")
        let group = try NSRegularExpression(pattern: #"\$__timeGroupAlias\(([^,()]+),\s*'(\d+)s'\)"#)
        s = group.stringByReplacingMatches(in: s, range: NSRange(s.startIndex..., in: s),
                                           withTemplate: #"cast(cast(UNIX_TIMESTAMP($1)/($2) as signed)*$2 as signed) AS "time""#)
        let filter = try NSRegularExpression(pattern: #"\$__timeFilter\(([^()]+)\)"#)
        s = filter.stringByReplacingMatches(in: s, range: NSRange(s.startIndex..., in: s),
                                            withTemplate: "$1 BETWEEN FROM_UNIXTIME(\(Self.from)) AND FROM_UNIXTIME(\(Self.to))")
        for (name, values) in variables {
            s = s.replacingOccurrences(of: "$\(name)", with: values.map { "'\($0)'" }.joined(separator: ","))
        }
        // A `$` left before a name is a macro or variable not expanded (`'$."temp"'` is a JSON path).
        XCTAssertNil(s.range(of: #"\$[A-Za-z_]"#, options: .regularExpression), "every macro and variable expanded: \(s)")
        return s
    }

    private func rows(_ db: TestDatabase, _ sql: String) throws -> [[String]] {
        let out = try db.stack.sql("SET time_zone = '+00:00'; " + sql, database: db.name)
        return out.split(separator: "\n", omittingEmptySubsequences: true).map { $0.split(separator: "\t", omittingEmptySubsequences: false).map(String.init) }
    }

    /// dev-a (Fieldlog): seq 1…20 and 25…30 stored (ranges 1…10, 11…20, 25…30), 21…24 declared
    /// lost, readings every 10 s from 10:00:10, sensors temp = seq, hum = 50 and the text sensor
    /// state = "on" (never plotted); status head 30,
    /// acked 20. dev-b (seed, legacy ingest): three readings of `random`. Three dead letters.
    private func fill(_ db: TestDatabase) throws {
        func t(_ seq: Int) -> String {
            let s = 10 * seq
            return String(format: "2026-11-29 10:%02d:%02d.000", s / 60, s % 60)
        }
        let seqs = Array(1...20) + Array(25...30)
        var sql = """
            INSERT INTO devices (device_id, protocol, first_seen_at, status_state, status_epoch, status_head, status_acked, status_received_at)
              VALUES ('dev-a', 'fieldlog', '2026-11-29 09:59:00', 'online', \(Self.epoch), 30, 20, '2026-11-29 10:05:00'),
                     ('dev-b', 'legacy', '2026-11-29 09:59:00', NULL, NULL, NULL, NULL, NULL);
            INSERT INTO epochs (device_id, epoch, first_seen_at, reported_head) VALUES ('dev-a', \(Self.epoch), '2026-11-29 09:59:00', 30);
            """
        sql += "INSERT INTO readings (device_id, epoch, seq, device_ms, device_time, clock_unsynchronized, received_at, vals, texts) VALUES "
        sql += seqs.map { "('dev-a', \(Self.epoch), \($0), \((Self.from + Int64(10 * $0)) * 1000), '\(t($0))', 0, '\(t($0))', '{\"hum\":50.0,\"temp\":\($0).0}', '{\"state\":\"on\"}')" }
            .joined(separator: ",") + ";"
        sql += "INSERT INTO device_sensors (device_id, sensor) VALUES ('dev-a', 'hum'), ('dev-a', 'state'), ('dev-a', 'temp');"
        sql += """
            INSERT INTO batch_ranges (device_id, epoch, first_seq, last_seq, stored_at) VALUES
              ('dev-a', \(Self.epoch), 1, 10, '2026-11-29 10:02:00'), ('dev-a', \(Self.epoch), 11, 20, '2026-11-29 10:04:00'),
              ('dev-a', \(Self.epoch), 25, 30, '2026-11-29 10:05:00');
            INSERT INTO loss_ranges (device_id, epoch, first_seq, last_seq, reason, detail, device_recorded_ms, received_at) VALUES
              ('dev-a', \(Self.epoch), 21, 24, 'disk-quota', 'quota 1 MB reached', 0, '2026-11-29 10:04:30');
            INSERT INTO legacy_readings (device_id, stream_id, device_ms, device_time, received_at) VALUES
              ('dev-b', '1795946430000-0', 1795946430000, '2026-11-29 10:00:30', '2026-11-29 10:00:31'),
              ('dev-b', '1795946490000-0', 1795946490000, '2026-11-29 10:01:30', '2026-11-29 10:01:31'),
              ('dev-b', '1795946550000-0', 1795946550000, '2026-11-29 10:02:30', '2026-11-29 10:02:31');
            INSERT INTO legacy_values (device_id, stream_id, sensor, device_time, num_value) VALUES
              ('dev-b', '1795946430000-0', 'random', '2026-11-29 10:00:30', 1.5),
              ('dev-b', '1795946490000-0', 'random', '2026-11-29 10:01:30', 2.5),
              ('dev-b', '1795946550000-0', 'random', '2026-11-29 10:02:30', 3.5);
            INSERT INTO dead_letters (received_at, topic, reason, detail, payload_bytes, payload_head) VALUES
              ('2026-11-29 10:01:00', 'fieldlog/v1/devices/dev-a/batch', 'malformed', 'x', 1, 'x'),
              ('2026-11-29 10:03:00', 'fieldlog/v1/devices/dev-a/batch', 'malformed', 'x', 1, 'x'),
              ('2026-11-29 10:03:30', 'fieldlog/v1/devices/dev-a/batch', 'oversize', 'x', 1, 'x'),
              ('2026-11-29 11:00:00', 'fieldlog/v1/devices/dev-a/batch', 'oversize', 'outside the range', 1, 'x');
            """
        try db.stack.sql(sql, database: db.name)
    }

    /// Grafana's bucket of a unix time: cast(t/60 as signed) rounds half away from zero in MariaDB.
    private func bucket(_ t: Int64) -> Int64 { Int64((Double(t) / Double(Self.interval)).rounded()) * Self.interval }

    func testEveryPanelAndVariableQueryRunsAndShowsTheStoredRows() async throws {
        let db = try TestDatabase("grafana")
        defer { db.drop() }
        let connection = try await db.migrated()
        await connection.close()
        try fill(db)
        let (panels, variableQueries) = try dashboard()
        XCTAssertEqual(panels.count, 5)

        // Variables: the device list, then the sensors of the chosen devices.
        let devices = try rows(db, try expand(XCTUnwrap(variableQueries["device"]), variables: [:])).map { $0[0] }
        XCTAssertEqual(devices, ["dev-a", "dev-b"])
        let sensors = try rows(db, try expand(XCTUnwrap(variableQueries["sensor"]), variables: ["device": devices])).map { $0[0] }
        XCTAssertEqual(Set(sensors), ["temp", "hum", "state", "random"])
        let vars = ["device": devices, "sensor": sensors]
        func panel(_ title: String) throws -> [[String]] {
            let p = try XCTUnwrap(panels.first { $0.title == title }, "panel \(title)")
            return try rows(db, try expand(p.sql, variables: vars))
        }

        // Readings: one series per device and sensor, times on the interval grid, ordered, the
        // averages of exactly the stored values (Fieldlog and seed readings together).
        let readings = try panel("Readings")
        let seqs = Array(1...20) + Array(25...30)
        var expected: [String: [Int64: [Double]]] = [:]
        for s in seqs {
            let tt = Self.from + Int64(10 * s)
            expected["dev-a temp", default: [:]][bucket(tt), default: []].append(Double(s))
            expected["dev-a hum", default: [:]][bucket(tt), default: []].append(50)
        }
        for (i, v) in [1.5, 2.5, 3.5].enumerated() { expected["dev-b random", default: [:]][bucket(Self.from + 30 + 60 * Int64(i)), default: []].append(v) }
        var seen: [String: [Int64: Double]] = [:]
        var lastTime: Int64 = 0
        for r in readings {
            XCTAssertEqual(r.count, 3, "time, metric, value")
            let time = try XCTUnwrap(Int64(r[0])), value = try XCTUnwrap(Double(r[2]))
            XCTAssertEqual(time % Self.interval, 0, "on the grid")
            XCTAssertGreaterThanOrEqual(time, lastTime, "ordered by time")
            lastTime = time
            seen[r[1], default: [:]][time] = value
        }
        XCTAssertEqual(Set(seen.keys), Set(expected.keys))
        for (metric, buckets) in expected {
            XCTAssertEqual(Set(seen[metric]?.keys.map { $0 } ?? []), Set(buckets.keys), metric)
            for (b, values) in buckets {
                XCTAssertEqual(seen[metric]?[b] ?? .nan, values.reduce(0, +) / Double(values.count), accuracy: 1e-9, "\(metric) at \(b)")
            }
        }

        // Readings stored per interval: 26 Fieldlog readings of dev-a in the range (seed readings are not in `readings`).
        let counts = try panel("Readings stored per interval")
        XCTAssertEqual(Set(counts.map { $0[1] }), ["dev-a"])
        XCTAssertEqual(counts.compactMap { Int($0[2]) }.reduce(0, +), seqs.count)

        // Dead letters in the range, by reason (the one at 11:00 is outside it).
        let dead = try panel("Dead letters by reason")
        XCTAssertEqual(dead.map { [$0[0], $0[1]] }, [["malformed", "2"], ["oversize", "1"]])

        // Fleet progress: the ack rule over batch_ranges (stored through 20 below the gap 21…24),
        // the epoch as the web admin shows it, the device's reported backlog.
        let fleet = try panel("Fleet progress")
        XCTAssertEqual(fleet.count, 2)
        XCTAssertEqual(Array(fleet[0].prefix(7)), ["dev-a", "fieldlog", "online", "fedcba9876543210", "20", "30", "10"])
        XCTAssertEqual(Array(fleet[1].prefix(7)), ["dev-b", "legacy", "NULL", "NULL", "NULL", "NULL", "NULL"])

        // Declared losses.
        let losses = try panel("Declared losses")
        XCTAssertEqual(losses.count, 1)
        XCTAssertEqual(Array(losses[0].prefix(6)), ["dev-a", "fedcba9876543210", "21", "24", "4", "disk-quota"])
    }
}
