// The committed configuration documents are what the code generates: docs/device-configuration.md
// (`fieldlog-device config reference`) and deploy/device/device.env.example (`config example`).
import Device
import Foundation
import TestSupport
import XCTest

final class ConfigurationReferenceTests: XCTestCase {
    /// The first line that differs, for a short failure message.
    private func firstDifference(_ committed: String, _ generated: String) -> String {
        let a = committed.components(separatedBy: "\n"), b = generated.components(separatedBy: "\n")
        for i in 0..<max(a.count, b.count) {
            let x = i < a.count ? a[i] : "(end of file)", y = i < b.count ? b[i] : "(end of file)"
            if x != y { return "line \(i + 1): committed \(x.debugDescription), generated \(y.debugDescription)" }
        }
        return "no line differs"
    }

    private func assertCommitted(_ path: String, equals generated: String, regenerate: String,
                                 file: StaticString = #filePath, line: UInt = #line) throws {
        let full = Stack.packageRoot + "/" + path
        guard let committed = try? String(contentsOfFile: full, encoding: .utf8) else {
            return XCTFail("\(path) is missing; make it with: \(regenerate)", file: file, line: line)
        }
        XCTAssert(committed == generated,
                  "\(path) differs from what the code generates (\(firstDifference(committed, generated))); regenerate it with: \(regenerate)",
                  file: file, line: line)
    }

    func testCommittedReferenceIsWhatTheCodeGenerates() throws {
        try assertCommitted("docs/device-configuration.md", equals: Settings.referenceMarkdown(),
                            regenerate: "swift run fieldlog-device config reference > docs/device-configuration.md")
    }

    func testCommittedExampleFileIsWhatTheCodeGenerates() throws {
        try assertCommitted("deploy/device/device.env.example", equals: Settings.exampleFile(),
                            regenerate: "swift run fieldlog-device config example > deploy/device/device.env.example")
    }

    func testReferenceListsEverySettingOnceWithItsDefault() {
        let md = Settings.referenceMarkdown()
        let rows = md.split(separator: "\n").filter { $0.hasPrefix("| `") }
        XCTAssertEqual(rows.count, Settings.all.count, "one table row per setting")
        for s in Settings.all {
            let row = rows.filter { $0.hasPrefix("| `\(s.name)` |") }
            XCTAssertEqual(row.count, 1, "\(s.name) appears in exactly one row")
            if let d = s.defaultValue, !d.isEmpty { XCTAssertTrue(row.first?.contains("`\(d)`") ?? false, "\(s.name)'s default \(d) is shown") }
            // A `|` in a help text must not split the row into more cells.
            XCTAssertEqual(row.first.map { $0.replacingOccurrences(of: "\\|", with: "").filter { $0 == "|" }.count }, 4, "\(s.name): 3 cells")
        }
    }

    /// Every environment variable the device docs and deployment files name is a setting the
    /// program reads (or FIELDLOG_CONFIG, the file's path), so the docs cannot drift from the code.
    func testEveryVariableNamedInTheDeviceDocsIsASetting() throws {
        let known = Set(Settings.all.map(\.name)).union(["FIELDLOG_CONFIG"])
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
