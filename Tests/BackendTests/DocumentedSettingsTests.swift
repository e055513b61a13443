// Every environment variable the backend's docs and deployment files name is one that
// `fieldlog-backend` actually reads, and the committed reference (docs/backend-configuration.md)
// is what its settings table generates. The names are checked by behaviour, not only against
// the table: a variable counts as read when setting it alone changes the loaded configuration
// (BackendConfiguration, WebSettings, log level) or makes loading fail. Names of device
// settings are allowed where the guides say what to set on a device; they are checked against
// docs/device-configuration.md, which DeviceTests checks against the device's code.
import Foundation
import Settings
import TestSupport
import XCTest
@testable import BackendStore
@testable import Ingest
@testable import Audit
@testable import WebAdmin

final class DocumentedSettingsTests: XCTestCase {
    /// Everything `fieldlog-backend` takes from an environment, as text (or the error it gives).
    private func snapshot(_ env: [String: String]) -> String {
        do {
            var r = SettingsReader(try BackendConfiguration.values(environment: env))
            let level = BackendConfiguration.logLevel(reading: &r)
            let config = BackendConfiguration(reading: &r)
            let web = WebSettings(reading: &r)
            try r.finish()
            var text = ""
            dump(config, to: &text)
            dump(web, to: &text)
            return text + "log level \(level)"
        } catch {
            return "error: \(error)"
        }
    }

    /// Whether `fieldlog-backend` reads the variable: some value of it changes what is loaded.
    private func isRead(_ name: String, baseline: String) -> Bool {
        let probes = ["7", "0", "probe-value", "fieldlog/probe/{device}/x", "debug"]
        return probes.contains { snapshot([name: $0]) != baseline }
    }

    static let files = ["docs/backend.md", "docs/web-admin.md", "docs/operating-backend.md", "docs/scaling.md",
                        "deploy/backend/README.md", "deploy/backend/backend.env.example", "deploy/backend/docker-compose.yml",
                        "deploy/backend/Dockerfile.backend", "deploy/backend/fieldlog-ingest@.service",
                        "deploy/backend/fieldlog-web.service", "docs/migrating-from-seed.md"]

    /// The device's settings, from docs/device-configuration.md (generated from the device's code
    /// and checked against it by DeviceTests.ConfigurationReferenceTests): the operating and
    /// migration guides name device settings too, where they say what to set on a device.
    private func deviceSettings() throws -> Set<String> {
        let text = try String(contentsOfFile: Stack.packageRoot + "/docs/device-configuration.md", encoding: .utf8)
        let names = text.split(separator: "\n").compactMap { line -> String? in
            guard line.hasPrefix("| `"), let end = line.dropFirst(3).firstIndex(of: "`") else { return nil }
            return String(line[line.index(line.startIndex, offsetBy: 3)..<end])
        }
        XCTAssertGreaterThan(names.count, 40, "docs/device-configuration.md lists the device's settings")
        return Set(names)
    }

    /// Names in these files that are not `fieldlog-backend`'s on purpose (scripts, tests), each said so where it appears.
    static let notTheBackends: Set<String> = [
        "FIELDLOG_GALERA_PORT", "FIELDLOG_GALERA_BENCH", "FIELDLOG_GALERA_BENCH_DEVICES", "FIELDLOG_GALERA_BENCH_RECORDS", // scaling.md: tests
        "FIELDLOG_REDIS_PORT", "FIELDLOG_REQUIRE_SERVICES", "FIELDLOG_STACK_DIR",                                       // scripts/stack, scripts/test
    ]

    func testEveryVariableTheBackendDocsNameIsOneTheBackendReads() throws {
        let baseline = snapshot([:])
        XCTAssertFalse(baseline.hasPrefix("error"), "the defaults load: \(baseline)")
        let device = try deviceSettings()
        let pattern = try NSRegularExpression(pattern: #"\b(?:FIELDLOG|MQTT)_[A-Z0-9_]*[A-Z0-9]\b(?![_*…])"#)
        var checked = Set<String>()
        for path in Self.files {
            guard let text = try? String(contentsOfFile: Stack.packageRoot + "/" + path, encoding: .utf8) else {
                XCTFail("\(path) is missing"); continue
            }
            let ns = text as NSString
            for m in pattern.matches(in: text, range: NSRange(location: 0, length: ns.length)) {
                let name = ns.substring(with: m.range)
                if Self.notTheBackends.contains(name) { continue }
                checked.insert(name)
                XCTAssertTrue(isRead(name, baseline: baseline) || device.contains(name),
                              "\(path) names \(name), which neither fieldlog-backend reads nor is a device setting (docs/device-configuration.md)")
            }
        }
        // The scan found the documented settings (database, broker, topics, ingest, web, log level).
        for name in ["FIELDLOG_MARIADB_ADDRESSES", "FIELDLOG_MQTT_BACKEND_PASSWORD", "FIELDLOG_INGEST_GROUP",
                     "FIELDLOG_WEB_PORT", "FIELDLOG_LOG_LEVEL", "MQTT_TOPIC_VALUES"] {
            XCTAssertTrue(checked.contains(name), "the docs name \(name)")
        }
    }

    func testCommittedReferenceIsWhatTheCodeGenerates() {
        GeneratedDocument.assertCommitted("docs/backend-configuration.md", equals: BackendSettings.table.referenceMarkdown(),
                                          regenerate: "swift run fieldlog-backend config reference > docs/backend-configuration.md")
    }

    func testReferenceListsEverySettingOnceWithItsDefault() {
        GeneratedDocument.assertReferenceListsEverySettingOnce(BackendSettings.table)
    }

    /// The table and the behaviour agree: every name in the table (and its aliases) is read.
    func testEveryNameInTheTableIsRead() {
        let baseline = snapshot([:])
        for name in BackendSettings.table.allNames.sorted() {
            XCTAssertTrue(isRead(name, baseline: baseline), "\(name) is in the table but changes nothing")
        }
    }

    /// The check can tell: names the backend does not read are reported as such.
    func testNamesTheBackendDoesNotReadAreFound() {
        let baseline = snapshot([:])
        for name in ["FIELDLOG_NOT_A_SETTING", "MQTT_TLS_ENABLE", "FIELDLOG_DEVICE_ID", "FIELDLOG_REDIS_PORT"] {
            XCTAssertFalse(isRead(name, baseline: baseline), "\(name) is not a backend setting")
        }
        for name in ["FIELDLOG_MARIADB_PASSWORD", "MQTT_USERNAME", "FIELDLOG_TOPIC_ACK", "FIELDLOG_WEB_INSECURE_COOKIES", "FIELDLOG_LOG_LEVEL"] {
            XCTAssertTrue(isRead(name, baseline: baseline), "\(name) is a backend setting")
        }
    }
}
