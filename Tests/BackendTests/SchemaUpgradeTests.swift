// Schema 7 on a database with a million readings (issue 17): `migrate --prepare` moves every
// reading's values into `readings.vals` while a writer of the previous version keeps inserting
// in the old layout, then `migrate` (writers stopped) catches up and swaps the table for the
// view. Nothing may be lost or doubled: every value of the old table is in the view, equal,
// once; the switch-over's duration is the downtime an upgrade costs, and is printed.
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
@testable import WebAdmin

final class SchemaUpgradeTests: XCTestCase {
    func testAMillionReadingsMoveToOneRowPerReadingWhileTheOldWriterRunsAndNothingIsLostOrDoubled() async throws {
        let db = try TestDatabase("upgrade7")
        defer { db.drop() }
        // Statements over a million rows take longer than the tests' usual 10 s read timeout.
        var settings = db.settings
        settings.readTimeout = .seconds(600)
        let c = try await connectFirst(settings, logger: Logger(label: "test"))
        let migrator = Migrator(connection: c, logger: Logger(label: "test"))
        let previous = Schema.migrations.map(\.version).filter { $0 < 7 }.max()!
        try await migrator.migrate(upTo: previous)
        // A million readings of ten devices in the schema-6 layout, two values each (a number and,
        // for every seventh reading, a text), built on the server (the SEQUENCE engine).
        let n = 1_000_000
        let fillStart = ContinuousClock.now
        try await c.query("""
            INSERT INTO readings (device_id, epoch, seq, device_ms, device_time, clock_unsynchronized, received_at)
            SELECT CONCAT('old-', s.seq % 10), 7, s.seq DIV 10 + 1, 1700000000000 + s.seq * 100,
                   FROM_UNIXTIME(1700000000 + s.seq / 10), 0, NOW(3)
              FROM seq_0_to_\(n - 1) s
            """)
        try await c.query("""
            INSERT INTO reading_values (device_id, epoch, seq, sensor, device_time, num_value, text_value)
            SELECT device_id, epoch, seq, 'temp', device_time, seq / 8 + 0.1, NULL FROM readings
            """)
        try await c.query("""
            INSERT INTO reading_values (device_id, epoch, seq, sensor, device_time, num_value, text_value)
            SELECT device_id, epoch, seq, 'state', device_time, NULL, IF(seq % 2 = 0, 'on "quoted" é', 'off\\\\path') FROM readings WHERE seq % 7 = 0
            """)
        print("schema 7 upgrade: filled \(n) readings in \(ContinuousClock.now - fillStart)")
        let before = try await c.query("SELECT COUNT(*), SUM(num_value), COUNT(text_value), SUM(CRC32(text_value)) FROM reading_values").rows[0].map(\.description)

        // The previous version's ingest keeps writing, in the old layout, during --prepare.
        let writerConnection = try await connectFirst(settings, logger: Logger(label: "test"))
        let writer = Task { () -> Int in
            var k = 0
            while !Task.isCancelled {
                k += 1
                let k = k
                _ = try? await writerConnection.transaction { s in
                    try s.execute("INSERT INTO readings (device_id, epoch, seq, device_ms, device_time, clock_unsynchronized, received_at) VALUES ('live', 9, ?, ?, NOW(3), 0, NOW(3))",
                                  [.int(Int64(k)), .int(1_800_000_000_000 + Int64(k))])
                    try s.execute("INSERT INTO reading_values (device_id, epoch, seq, sensor, device_time, num_value) VALUES ('live', 9, ?, 'temp', NOW(3), ?)",
                                  [.int(Int64(k)), .double(Double(k) / 4)])
                }
                try? await Task.sleep(for: .milliseconds(5))
            }
            return k
        }
        let prepareStart = ContinuousClock.now
        let prepared = try await migrator.prepare()
        XCTAssertEqual(prepared, [7, 8, 9])
        let prepareTime = ContinuousClock.now - prepareStart
        writer.cancel()
        let written = await writer.value
        XCTAssertGreaterThan(written, 10, "the old writer ran during --prepare")
        let versionAfterPrepare = try await migrator.currentVersion()
        XCTAssertEqual(versionAfterPrepare, previous, "--prepare does not switch")
        XCTAssertGreaterThan(try db.scalar("SELECT COUNT(*) FROM readings WHERE device_id = 'live' AND vals IS NULL"), "0",
                             "rows written after --prepare passed them are left for the switch-over")

        // Ingest stopped: the switch-over.
        let switchStart = ContinuousClock.now
        let applied = try await migrator.migrate()
        let switchTime = ContinuousClock.now - switchStart
        XCTAssertEqual(applied, [7, 8, 9])
        let versionAfter = try await migrator.currentVersion()
        XCTAssertEqual(versionAfter, Schema.latestVersion)
        XCTAssertEqual(try db.scalar("SELECT TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'reading_values'"), "VIEW")
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM readings WHERE vals IS NULL"), "0")
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM readings WHERE vals NOT LIKE '{%'"), "0", "schema 8's objects, written once")
        // Every value, equal, once: the view over the new layout against the old table.
        let after = try await c.query("SELECT COUNT(*), SUM(num_value), COUNT(text_value), SUM(CRC32(text_value)) FROM reading_values WHERE device_id <> 'live'").rows[0].map(\.description)
        XCTAssertEqual(after, before)
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM reading_values_v6"), String(Int(before[0])! + written))
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM reading_values"), String(Int(before[0])! + written))
        XCTAssertEqual(try db.scalar("""
            SELECT COUNT(*) FROM reading_values_v6 o LEFT JOIN reading_values v
              ON v.device_id = o.device_id AND v.epoch = o.epoch AND v.seq = o.seq AND v.sensor = o.sensor
             WHERE o.device_id = 'old-3' AND (v.seq IS NULL OR NOT (v.num_value <=> o.num_value) OR NOT (v.text_value <=> o.text_value))
            """), "0", "one device value by value")
        XCTAssertEqual(try db.scalar("SELECT GROUP_CONCAT(sensor ORDER BY sensor) FROM device_sensors WHERE device_id = 'old-3'"), "state,temp")
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM sensor_values WHERE device_id = 'old-3' AND sensor = 'temp'"), String(n / 10))
        // The ingest of this version writes the new layout, read through the same view.
        let device = Fixtures.device()
        _ = try await Store(connection: c).storeBatches([Fixtures.request(Fixtures.batch(device, Epoch(1), 1, 5))], newDevices: [device], newEpochs: [(device, Epoch(1))])
        XCTAssertEqual(try db.scalar("SELECT GROUP_CONCAT(CONCAT(seq, sensor, COALESCE(num_value, text_value)) ORDER BY seq, sensor) FROM reading_values WHERE device_id = '\(device)'"),
                       "1stateok,1temp0.1,2stateok,2temp0.2,3stateok,3temp0.3,4stateok,4temp0.4,5stateok,5temp0.5")
        print("schema 7 upgrade: \(n) readings; --prepare \(prepareTime) while the old writer added \(written); switch-over (the downtime) \(switchTime)")
        await writerConnection.close()
        await c.close()
    }

    /// A writer of the previous version during `--prepare`: a reading of device `live` every
    /// 5 ms, its `vals` the SQL expression `vals` of one bound number. Returns how many it wrote.
    private static func previousVersionWriter(_ connection: MariaDBConnection, vals: String) -> Task<Int, Never> {
        Task {
            var k = 0
            while !Task.isCancelled {
                k += 1
                _ = try? await connection.execute("""
                    INSERT INTO readings (device_id, epoch, seq, device_ms, device_time, clock_unsynchronized, received_at, vals)
                    VALUES ('live', 9, ?, ?, NOW(3), 0, NOW(3), \(vals))
                    """, [.int(Int64(k)), .int(1_800_000_000_000 + Int64(k)), .double(Double(k) / 4)])
                try? await Task.sleep(for: .milliseconds(5))
            }
            return k
        }
    }

    /// A reader during `--prepare`: `sums` every 50 ms; returns every result unlike `before`.
    private static func watchingReader(_ connection: MariaDBConnection, sums: String, before: [String]) -> Task<[String], Never> {
        Task {
            var seen: [String] = []
            while !Task.isCancelled {
                if let row = try? await connection.query(sums).rows.first?.map(\.description), row != before { seen.append(row.joined(separator: " ")) }
                try? await Task.sleep(for: .milliseconds(50))
            }
            return seen
        }
    }

    /// Schema 7's view: JSON_TABLE over an array of {"s","n"|"t"} (what a schema-7 database has).
    private static let schema7View = """
        CREATE OR REPLACE VIEW reading_values AS
          SELECT r.device_id, r.epoch, r.seq, j.sensor, r.device_time, j.num_value, j.text_value
            FROM readings r,
                 JSON_TABLE(r.vals, '$[*]' COLUMNS (sensor VARCHAR(64) PATH '$.s', num_value DOUBLE PATH '$.n', text_value VARCHAR(256) PATH '$.t')) j
        """

    // Schema 8 on a schema-7 database: `--prepare` rewrites the arrays while a schema-7 writer
    // keeps adding arrays, and readers see every value meanwhile; `migrate` rewrites the rest.
    func testSchema7ArraysBecomeObjectsWhileTheOldWriterRunsAndEveryValueStaysVisible() async throws {
        let db = try TestDatabase("upgrade8")
        defer { db.drop() }
        var settings = db.settings
        settings.readTimeout = .seconds(600)
        let c = try await connectFirst(settings, logger: Logger(label: "test"))
        let migrator = Migrator(connection: c, logger: Logger(label: "test"))
        try await migrator.migrate(upTo: 7)
        try await c.query(Self.schema7View)
        let n = 100_000
        // Ten devices; a number each, a text (quotes, a backslash, a non-ASCII letter) every seventh, none every 101st.
        try await c.query("""
            INSERT INTO readings (device_id, epoch, seq, device_ms, device_time, clock_unsynchronized, received_at, vals)
            SELECT CONCAT('old-', s.seq % 10), 7, s.seq DIV 10 + 1, 1700000000000 + s.seq * 100, FROM_UNIXTIME(1700000000 + s.seq / 10), 0, NOW(3),
                   CASE WHEN s.seq % 101 = 0 THEN '[]'
                        WHEN s.seq % 7 = 0 THEN CONCAT('[{"s":"state","t":', JSON_QUOTE(IF(s.seq % 2 = 0, 'on "quoted" é', 'off\\\\path')), '},{"s":"temp","n":', s.seq / 8 + 0.1, '}]')
                        ELSE CONCAT('[{"s":"temp","n":', s.seq / 8 + 0.1, '}]') END
              FROM seq_0_to_\(n - 1) s
            """)
        let sums = "SELECT COUNT(*), SUM(num_value), COUNT(text_value), SUM(CRC32(text_value)) FROM reading_values WHERE device_id <> 'live'"
        let before = try await c.query(sums).rows[0].map(\.description)
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM reading_values WHERE text_value = 'on \"quoted\" é'"), String((0..<n).filter { $0 % 101 != 0 && $0 % 7 == 0 && $0 % 2 == 0 }.count))

        // A writer of schema 7 (arrays) during --prepare; a reader checks every value stays visible.
        let writerConnection = try await connectFirst(settings, logger: Logger(label: "test"))
        let writer = Self.previousVersionWriter(writerConnection, vals: "CONCAT('[{\"s\":\"temp\",\"n\":', ?, '}]')")
        let readerConnection = try await connectFirst(settings, logger: Logger(label: "test"))
        let reader = Self.watchingReader(readerConnection, sums: sums, before: before)
        let prepared = try await migrator.prepare()
        XCTAssertEqual(prepared, [8, 9])
        writer.cancel()
        reader.cancel()
        let written = await writer.value
        let differences = await reader.value
        XCTAssertGreaterThan(written, 10, "the old writer ran during --prepare")
        XCTAssertEqual(differences, [], "readers saw every value, equal, while the rows were rewritten")
        XCTAssertGreaterThan(try db.scalar("SELECT COUNT(*) FROM readings WHERE vals LIKE '[%'"), "0", "the writer's newest arrays wait for the switch-over")

        let applied = try await migrator.migrate()
        XCTAssertEqual(applied, [8, 9])
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM readings WHERE vals NOT LIKE '{%'"), "0")
        let after = try await c.query(sums).rows[0].map(\.description)
        XCTAssertEqual(after, before, "every value, equal, once")
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM reading_values WHERE device_id = 'live'"), String(written))
        // The objects are what this version's ingest writes and what the web admin decodes.
        let sampleRow = try await c.query("SELECT vals FROM readings WHERE device_id = 'old-4' AND seq = 2").rows.first?.first?.string
        let sample = try XCTUnwrap(sampleRow)
        let sampleTexts = try await c.query("SELECT texts FROM readings WHERE device_id = 'old-4' AND seq = 2").rows.first?.first?.string
        XCTAssertEqual(StoreRows.values(vals: sample, texts: sampleTexts), try SensorValues(["state": .text("on \"quoted\" é"), "temp": .number(14.0 / 8 + 0.1)]))
        XCTAssertEqual(try db.scalar("SELECT vals FROM readings WHERE device_id = 'old-0' AND seq = 1"), "{}")
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM readings WHERE texts IS NOT NULL"), String((0..<n).filter { $0 % 101 != 0 && $0 % 7 == 0 }.count),
                       "texts only where a reading has one")
        await readerConnection.close()
        await writerConnection.close()
        await c.close()
    }

    // Schema 9 on a schema-8 database: `--prepare` copies `vals` into the VARCHAR column while a
    // schema-8 writer keeps inserting (MEDIUMTEXT) and a reader sees every value; `migrate`
    // copies the rest and swaps the columns. Every reading's vals equal, once.
    func testSchema8ValsBecomeAVarcharWhileTheOldWriterRunsAndEveryValueStaysVisible() async throws {
        let db = try TestDatabase("upgrade9")
        defer { db.drop() }
        var settings = db.settings
        settings.readTimeout = .seconds(600)
        let c = try await connectFirst(settings, logger: Logger(label: "test"))
        let migrator = Migrator(connection: c, logger: Logger(label: "test"))
        try await migrator.migrate(upTo: 8)
        XCTAssertEqual(try db.scalar("SELECT DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'readings' AND COLUMN_NAME = 'vals'"), "mediumtext")
        let n = 200_000
        // Ten devices; one to three numbers each (the longest numbers JSON writes among them), a text every seventh.
        try await c.query("""
            INSERT INTO readings (device_id, epoch, seq, device_ms, device_time, clock_unsynchronized, received_at, vals, texts)
            SELECT CONCAT('old-', s.seq % 10), 7, s.seq DIV 10 + 1, 1700000000000 + s.seq * 100, FROM_UNIXTIME(1700000000 + s.seq / 10), 0, NOW(3),
                   CASE WHEN s.seq % 101 = 0 THEN '{}'
                        WHEN s.seq % 3 = 0 THEN CONCAT('{"a.b-c_9":-2.2250738585072014e-308,"temp":', s.seq / 8 + 0.1, ',"z":1.7976931348623157e308}')
                        ELSE CONCAT('{"temp":', s.seq / 8 + 0.1, '}') END,
                   IF(s.seq % 7 = 0, '{"state":"on \\"quoted\\" é"}', NULL)
              FROM seq_0_to_\(n - 1) s
            """)
        let sums = "SELECT COUNT(*), SUM(CRC32(vals)), SUM(num_value), COUNT(text_value) FROM readings r JOIN reading_values v USING (device_id, epoch, seq) WHERE device_id <> 'live'"
        let before = try await c.query(sums).rows[0].map(\.description)

        let writerConnection = try await connectFirst(settings, logger: Logger(label: "test"))
        let writer = Self.previousVersionWriter(writerConnection, vals: "CONCAT('{\"temp\":', ?, '}')")
        let readerConnection = try await connectFirst(settings, logger: Logger(label: "test"))
        let reader = Self.watchingReader(readerConnection, sums: sums, before: before)
        let prepareStart = ContinuousClock.now
        let prepared = try await migrator.prepare()
        let prepareTime = ContinuousClock.now - prepareStart
        XCTAssertEqual(prepared, [9])
        writer.cancel()
        reader.cancel()
        let written = await writer.value
        let differences = await reader.value
        XCTAssertGreaterThan(written, 10, "the old writer ran during --prepare")
        XCTAssertEqual(differences, [], "readers saw every value, equal, while the column was copied")
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM readings WHERE device_id <> 'live' AND NOT (vals_v9 <=> vals)"), "0", "--prepare copied every row it passed")
        XCTAssertGreaterThan(try db.scalar("SELECT COUNT(*) FROM readings WHERE vals_v9 IS NULL"), "0", "the writer's newest rows wait for the switch-over")

        let switchStart = ContinuousClock.now
        let applied = try await migrator.migrate()
        let switchTime = ContinuousClock.now - switchStart
        XCTAssertEqual(applied, [9])
        XCTAssertEqual(try db.scalar("SELECT CONCAT(DATA_TYPE, ' ', CHARACTER_MAXIMUM_LENGTH, ' ', CHARACTER_SET_NAME) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'readings' AND COLUMN_NAME = 'vals'"), "varchar 6000 ascii")
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'readings' AND COLUMN_NAME = 'vals_v9'"), "0")
        let after = try await c.query(sums).rows[0].map(\.description)
        XCTAssertEqual(after, before, "every value, equal, once")
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM readings WHERE device_id = 'live' AND vals LIKE '{\"temp\":%'"), String(written))
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM sensor_values WHERE device_id = 'old-3' AND sensor = 'temp'"), String(n / 10 - (0..<n).filter { $0 % 10 == 3 && $0 % 101 == 0 }.count))
        // This version's ingest writes into the new column, read through the same view.
        let device = Fixtures.device()
        _ = try await Store(connection: c).storeBatches([Fixtures.request(Fixtures.batch(device, Epoch(1), 1, 3))], newDevices: [device], newEpochs: [(device, Epoch(1))])
        XCTAssertEqual(try db.scalar("SELECT GROUP_CONCAT(CONCAT(seq, sensor, COALESCE(num_value, text_value)) ORDER BY seq, sensor) FROM reading_values WHERE device_id = '\(device)'"),
                       "1stateok,1temp0.1,2stateok,2temp0.2,3stateok,3temp0.3")
        // Running it again changes nothing.
        let again = try await migrator.migrate()
        XCTAssertEqual(again, [])
        print("schema 9 upgrade: \(n) readings; --prepare \(prepareTime) while the old writer added \(written); switch-over (the downtime) \(switchTime)")
        await readerConnection.close()
        await writerConnection.close()
        await c.close()
    }

    /// A `vals` that cannot become ASCII of at most 6,000 bytes stops schema 9 before anything
    /// changes, and says which reading.
    func testSchema9RefusesAValsThatDoesNotFitAndChangesNothing() async throws {
        let db = try TestDatabase("upgrade9bad")
        defer { db.drop() }
        let c = try await connectFirst(db.settings, logger: Logger(label: "test"))
        let migrator = Migrator(connection: c, logger: Logger(label: "test"))
        try await migrator.migrate(upTo: 8)
        try await c.query("""
            INSERT INTO readings (device_id, epoch, seq, device_ms, device_time, clock_unsynchronized, received_at, vals) VALUES
              ('fine', 1, 1, 0, NULL, 0, NOW(3), '{"temp":1}'),
              ('odd', 1, 2, 0, NULL, 0, NOW(3), '{"tempé":1}')
            """)
        do {
            _ = try await migrator.migrate()
            XCTFail("schema 9 must refuse a non-ASCII vals")
        } catch let error as SchemaError {
            XCTAssertTrue(error.description.contains("odd epoch 1 seq 2"), error.description)
            XCTAssertTrue(error.description.contains("nothing was changed"), error.description)
        }
        let version = try await migrator.currentVersion()
        XCTAssertEqual(version, 8)
        XCTAssertEqual(try db.scalar("SELECT GROUP_CONCAT(vals ORDER BY seq) FROM readings"), "{\"temp\":1},{\"tempé\":1}")
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM readings WHERE vals_v9 IS NOT NULL"), "0")
        await c.close()
    }
}
