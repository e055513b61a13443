// Checks of the documents generated from the settings tables (docs/device-configuration.md,
// docs/backend-configuration.md, deploy/device/device.env.example): the committed file is what
// the code generates, and the reference lists every setting once.
import Foundation
import Settings
import XCTest

public enum GeneratedDocument {
    /// The first line that differs, for a short failure message.
    static func firstDifference(_ committed: String, _ generated: String) -> String {
        let a = committed.components(separatedBy: "\n"), b = generated.components(separatedBy: "\n")
        for i in 0..<max(a.count, b.count) {
            let x = i < a.count ? a[i] : "(end of file)", y = i < b.count ? b[i] : "(end of file)"
            if x != y { return "line \(i + 1): committed \(x.debugDescription), generated \(y.debugDescription)" }
        }
        return "no line differs"
    }

    /// The file at `path` (from the package root) is `generated`; else the failure says how to regenerate it.
    public static func assertCommitted(_ path: String, equals generated: String, regenerate: String,
                                       file: StaticString = #filePath, line: UInt = #line) {
        let full = Stack.packageRoot + "/" + path
        guard let committed = try? String(contentsOfFile: full, encoding: .utf8) else {
            return XCTFail("\(path) is missing; make it with: \(regenerate)", file: file, line: line)
        }
        XCTAssert(committed == generated,
                  "\(path) differs from what the code generates (\(firstDifference(committed, generated))); regenerate it with: \(regenerate)",
                  file: file, line: line)
    }

    /// The table's reference has one row per setting, with its default and three cells.
    public static func assertReferenceListsEverySettingOnce(_ table: SettingsTable, file: StaticString = #filePath, line: UInt = #line) {
        let md = table.referenceMarkdown()
        let rows = md.split(separator: "\n").filter { $0.hasPrefix("| `") }
        XCTAssertEqual(rows.count, table.settings.count, "one table row per setting", file: file, line: line)
        for s in table.settings {
            let row = rows.filter { $0.hasPrefix("| `\(s.name)` |") }
            XCTAssertEqual(row.count, 1, "\(s.name) appears in exactly one row", file: file, line: line)
            if let d = s.defaultValue, !d.isEmpty {
                XCTAssertTrue(row.first?.contains("`\(d)`") ?? false, "\(s.name)'s default \(d) is shown", file: file, line: line)
            }
            // A `|` in a help text must not split the row into more cells.
            XCTAssertEqual(row.first.map { $0.replacingOccurrences(of: "\\|", with: "").filter { $0 == "|" }.count }, 4,
                           "\(s.name): 3 cells", file: file, line: line)
            for alias in s.aliases {
                XCTAssertTrue(row.first?.contains("`\(alias)`") ?? false, "\(s.name)'s other name \(alias) is shown", file: file, line: line)
            }
        }
    }
}
