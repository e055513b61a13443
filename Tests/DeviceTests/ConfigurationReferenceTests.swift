// The committed configuration documents are what the code generates: docs/device-configuration.md
// (`fieldlog-device config reference`) and deploy/device/device.env.example (`config example`).
import Device
import Foundation
import Settings
import TestSupport
import XCTest

final class ConfigurationReferenceTests: XCTestCase {
    func testCommittedReferenceIsWhatTheCodeGenerates() throws {
        GeneratedDocument.assertCommitted("docs/device-configuration.md", equals: DeviceSettings.table.referenceMarkdown(),
                                          regenerate: "swift run fieldlog-device config reference > docs/device-configuration.md")
    }

    func testCommittedExampleFileIsWhatTheCodeGenerates() throws {
        GeneratedDocument.assertCommitted("deploy/device/device.env.example", equals: DeviceSettings.exampleFile(),
                                          regenerate: "swift run fieldlog-device config example > deploy/device/device.env.example")
    }

    func testReferenceListsEverySettingOnceWithItsDefault() {
        GeneratedDocument.assertReferenceListsEverySettingOnce(DeviceSettings.table)
    }

    /// Every environment variable the device docs and deployment files name is a setting the
    /// program reads (or FIELDLOG_CONFIG, the file's path), so the docs cannot drift from the code.
    func testEveryVariableNamedInTheDeviceDocsIsASetting() throws {
        let known = DeviceSettings.table.allNames.union(["FIELDLOG_CONFIG"])
        let files = ["docs/device.md", "deploy/device/fieldlog-device.service", "deploy/device/docker-compose.yml",
                     "deploy/device/Dockerfile", "deploy/device/device.env.example"]
        let pattern = try NSRegularExpression(pattern: #"\b(?:FIELDLOG|MQTT|REDIS|BALENA|BUTTON|LOG|SYNC|STATUS|COMMAND|SENSOR|INTERVAL|MEASUREMENT)_[A-Z0-9_]*[A-Z0-9]\b(?![_*…])"#)
        var checked = 0
        for path in files {
            guard let text = try? String(contentsOfFile: Stack.packageRoot + "/" + path, encoding: .utf8) else {
                XCTFail("\(path) is missing"); continue
            }
            let ns = text as NSString
            for m in pattern.matches(in: text, range: NSRange(location: 0, length: ns.length)) {
                let name = ns.substring(with: m.range)
                checked += 1
                XCTAssertTrue(known.contains(name), "\(path) names \(name), which fieldlog-device does not read")
            }
        }
        XCTAssertGreaterThan(checked, 20, "the scan found the documented settings")
    }
}
