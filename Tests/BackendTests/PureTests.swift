// Tests of the pure parts (no IO): coverage, configuration, seed-format parsing, time formatting.
import FieldlogCore
import Foundation
import Settings
import Sync
import XCTest
@testable import BackendStore
@testable import Ingest
@testable import Audit
@testable import WebAdmin

final class CoverageTests: XCTestCase {
    private func r(_ a: UInt64, _ b: UInt64) -> SequenceRange { SequenceRange(checked: SequenceNumber(a), SequenceNumber(b)) }

    func testGivenAdjacentAndOverlappingRangesThePrefixIsTheirUnion() {
        var c = Coverage()
        c.insert(r(11, 20))
        XCTAssertEqual(c.contiguousThrough, .zero, "1 is not covered")
        XCTAssertEqual(c.gaps(), [r(1, 10)])
        c.insert(r(1, 10))
        XCTAssertEqual(c.contiguousThrough, SequenceNumber(20), "adjacent ranges merge")
        c.insert(r(25, 30))
        c.insert(r(15, 22))
        XCTAssertEqual(c.ranges, [r(1, 22), r(25, 30)])
        XCTAssertEqual(c.gaps(), [r(23, 24)])
        XCTAssertEqual(c.highest, SequenceNumber(30))
        c.insert(r(23, 24))
        XCTAssertEqual(c.ranges, [r(1, 30)])
    }

    func testCoverageAgreesWithTheSpecsAckRuleOnRandomRanges() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<500 {
            var ranges: [SequenceRange] = []
            for _ in 0..<Int.random(in: 0...8, using: &rng) {
                let a = UInt64.random(in: 1...40, using: &rng)
                ranges.append(r(a, a + UInt64.random(in: 0...6, using: &rng)))
            }
            let c = Coverage(ranges)
            XCTAssertEqual(c.contiguousThrough, AckRule.storedThrough(checkpoint: .zero, ranges: ranges), "\(ranges)")
            let through = c.contiguousThrough
            XCTAssertEqual(c.gaps(after: through), AckRule.missing(after: through, ranges: ranges), "\(ranges)")
            // Every number up to `through` is inside some range: the ack never passes a hole.
            for s in stride(from: UInt64(1), through: through.rawValue, by: 1) {
                XCTAssertTrue(ranges.contains { $0.contains(SequenceNumber(s)) })
            }
        }
    }
}

final class ConfigurationTests: XCTestCase {
    private func load(_ env: [String: String], commandLine: [CommandLineSetting] = [], file: String? = nil) throws(ConfigurationError) -> BackendConfiguration {
        let table = BackendSettings.table
        let values = SettingValues(table: table, layers: [CommandLineLayer(commandLine, table: table), ConfigProviderLayer(environmentOf: table, env)]
                                                         + (file.map { [SettingsFile(contents: $0, path: "backend.env", table: table)] } ?? []))
        return try BackendConfiguration(values: values)
    }

    func testDefaultsAndAddressList() throws {
        let c = try load([
            "FIELDLOG_MARIADB_ADDRESSES": "db1:3307, db2 ,[::1]:3308", "FIELDLOG_MARIADB_PASSWORD": "pw",
        ])
        XCTAssertEqual(c.database.addresses, [DatabaseAddress(host: "db1", port: 3307), DatabaseAddress(host: "db2", port: 3306),
                                              DatabaseAddress(host: "::1", port: 3308)])
        XCTAssertEqual(c.database.database, "fieldlog")
        XCTAssertEqual(c.broker.port, 1883)
        XCTAssertEqual(c.ingest.metricsPort, 9464)
        XCTAssertEqual(c.topics.shared(c.topics.templates.batch.filter), "$share/fieldlog-ingest/fieldlog/v1/devices/+/batch")
    }

    func testSeedEnvironmentNamesAreHonoured() throws {
        let c = try load([
            "MQTT_HOST": "broker", "MQTT_PORT": "8883", "MQTT_USERNAME": "u", "MQTT_PASSWORD": "p",
        ])
        XCTAssertEqual(c.broker.host, "broker")
        XCTAssertEqual(c.broker.port, 8883)
        XCTAssertEqual(c.broker.user, "u")
        // The new name wins; an empty one (compose passes `NAME=` for what it leaves out) counts as unset.
        XCTAssertEqual(try load(["MQTT_HOST": "seed", "FIELDLOG_MQTT_HOST": "new"]).broker.host, "new")
        XCTAssertEqual(try load(["MQTT_HOST": "seed", "FIELDLOG_MQTT_HOST": ""]).broker.host, "seed")
        XCTAssertEqual(try load(["FIELDLOG_MQTT_PORT": ""]).broker.port, 1883)
    }

    func testCommandLineThenEnvironmentThenFileThenDefault() throws {
        let file = "FIELDLOG_MQTT_HOST=from-file\nFIELDLOG_MQTT_PORT=1884\nFIELDLOG_MARIADB_USER=file-user\n"
        let c = try load(["FIELDLOG_MQTT_PORT": "1885", "FIELDLOG_MARIADB_USER": "env-user"],
                         commandLine: [CommandLineSetting(name: "FIELDLOG_MARIADB_USER", value: "cli-user", option: "--set")], file: file)
        XCTAssertEqual(c.broker.host, "from-file")
        XCTAssertEqual(c.broker.port, 1885)
        XCTAssertEqual(c.database.user, "cli-user")
        XCTAssertEqual(c.database.password, "", "the default")
    }

    func testBadValuesNameSettingValueAndWhatIsAllowed() {
        func error(_ env: [String: String], commandLine: [CommandLineSetting] = []) -> String {
            do {
                _ = try load(env, commandLine: commandLine)
                return "no error"
            } catch { return error.description }
        }
        let port = error(["FIELDLOG_MQTT_PORT": "70000"])
        XCTAssertTrue(port.contains("FIELDLOG_MQTT_PORT") && port.contains("70000") && port.contains("1…65535"), port)
        let list = error(["FIELDLOG_MARIADB_ADDRESSES": "db1:notaport"])
        XCTAssertTrue(list.contains("FIELDLOG_MARIADB_ADDRESSES") && list.contains("db1:notaport") && list.contains("host[:port]"), list)
        let db = error([:], commandLine: [CommandLineSetting(name: "FIELDLOG_MARIADB_DATABASE", value: "drop table;", option: "--database")])
        XCTAssertTrue(db.contains("--database") && db.contains("A–Z"), db)
        let metrics = error([:], commandLine: [CommandLineSetting(name: "FIELDLOG_METRICS_PORT", value: "-1", option: "--metrics-port")])
        XCTAssertTrue(metrics.contains("--metrics-port"), metrics)
        let topic = error(["FIELDLOG_TOPIC_BATCH": "fieldlog/+/batch"])
        XCTAssertTrue(topic.contains("FIELDLOG_TOPIC_BATCH"), topic)
        // Every problem at once, each under the name it was given (the seed's here), with its source.
        let both = error(["MQTT_PORT": "x", "FIELDLOG_INGEST_GROUP": "a/b"])
        XCTAssertTrue(both.contains(#"MQTT_PORT="x" (from environment): a whole number in 1…65535"#), both)
        XCTAssertTrue(both.contains(#"FIELDLOG_INGEST_GROUP="a/b" (from environment): a share name without / + #"#), both)
    }

    func testInMemoryDefaultsAreTheTablesDefaults() throws {
        let loaded = try load([:])
        let memory = IngestSettings()
        XCTAssertEqual(loaded.ingest.maxBatchesPerTransaction, memory.maxBatchesPerTransaction)
        XCTAssertEqual(loaded.ingest.maxQueuedBytes, 32 << 20)
        XCTAssertEqual(loaded.ingest.maxQueuedBytesPerDevice, 4 << 20)
        XCTAssertEqual(loaded.ingest.clientID, memory.clientID)
        XCTAssertEqual(loaded.topics.shareGroup, TopicSettings().shareGroup)
        let web = WebSettings()
        XCTAssertEqual(web.port, 8080)
        XCTAssertTrue(web.secureCookies)
        XCTAssertEqual(web.sessionLifetime, .seconds(12 * 3600))
        XCTAssertEqual(web.configKeys, ["measurement:interval", "measurement:enabled", "mqtt_sender:interval", "mqtt_sender:enabled"])
    }
}

final class SQLTimeTests: XCTestCase {
    func testDatetimeFormatting() {
        XCTAssertEqual(SQLTime.datetime(unixMilliseconds: 0), "1970-01-01 00:00:00.000")
        XCTAssertEqual(SQLTime.datetime(unixMilliseconds: 1_621_122_796_939), "2021-05-15 23:53:16.939")
        XCTAssertEqual(SQLTime.datetime(unixMilliseconds: 951_782_400_000), "2000-02-29 00:00:00.000")
        XCTAssertEqual(SQLTime.datetime(unixMilliseconds: -1), "1969-12-31 23:59:59.999")
        XCTAssertNil(SQLTime.datetime(unixMilliseconds: .max))
        XCTAssertEqual(SQLTime.datetime(unixMilliseconds: -30_610_224_000_000), "1000-01-01 00:00:00.000")
        XCTAssertEqual(SQLTime.datetime(unixMilliseconds: 253_402_300_799_999), "9999-12-31 23:59:59.999")
        XCTAssertNil(SQLTime.datetime(unixMilliseconds: 253_402_300_800_000))
        XCTAssertNil(SQLTime.datetime(unixMilliseconds: -30_610_224_000_001))
        // Every field's digits in place (against Foundation's formatter), across a few centuries.
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyy-MM-dd HH:mm:ss"
        var x: UInt64 = 0x9E37_79B9_7F4A_7C15
        for _ in 0..<2000 {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17
            let ms = Int64(x % 8_000_000_000_000) - 2_000_000_000_000
            let seconds = ms >= 0 ? ms / 1000 : (ms - 999) / 1000 // whole seconds are exact as a Double
            let millis = ms - seconds * 1000
            let expected = formatter.string(from: Date(timeIntervalSince1970: Double(seconds))) + "." + String(format: "%03d", Int(millis))
            XCTAssertEqual(SQLTime.datetime(unixMilliseconds: ms), expected, "\(ms)")
        }
    }
}
