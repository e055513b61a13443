#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import FieldlogCore

/// A configuration file of `KEY=value` lines, the same names as the environment variables, so
/// one file serves systemd's `EnvironmentFile=`, docker's `env_file` and the program's `--config`.
///
/// `#` starts a comment line, blank lines are skipped, a value may be wrapped in single or
/// double quotes, a leading `export ` is allowed. A line without `=` and a key that is not in
/// the table are problems: a typo must not silently fall back to a default.
public struct SettingsFile: SettingsLayer {
    /// One `KEY=value` line.
    public struct Entry: Hashable, Sendable {
        public var name: String
        public var value: String
        public var line: Int
    }

    public let path: String
    /// The lines in file order (a later line of the same key wins).
    public private(set) var entries: [Entry] = []
    /// Lines that are not `KEY=value`, keys the table does not have.
    public private(set) var problems: [ConfigurationProblem] = []
    private var lastByName: [String: Entry] = [:]

    public init(contents text: String, path: String, table: SettingsTable) {
        self.path = path
        var lineNumber = 0
        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            var line = rawLine.trimmed(.spaces)
            if line.hasSuffix("\r") { line.removeLast() }
            if line.isEmpty || line.hasPrefix("#") { continue }
            if line.hasPrefix("export ") { line = String(line.dropFirst(7)).trimmed(.spaces) }
            let source = SettingSource.file(path: path, line: lineNumber)
            guard let eq = line.firstIndex(of: "=") else {
                problems.append(.init(setting: "(line)", value: line, source: source, allowed: "expected KEY=value"))
                continue
            }
            let key = line[..<eq].trimmed(.spaces)
            var value = line[line.index(after: eq)...].trimmed(.spaces)
            if value.count >= 2, let f = value.first, f == "\"" || f == "'", value.last == f {
                value = String(value.dropFirst().dropLast())
            }
            guard table[key] != nil else {
                problems.append(.init(setting: key, value: value, source: source, allowed: table.unknownSetting))
                continue
            }
            let entry = Entry(name: key, value: value, line: lineNumber)
            entries.append(entry)
            lastByName[key] = entry
        }
    }

    public func value(forName name: String) -> RawSetting? {
        lastByName[name].map { RawSetting(value: $0.value, source: .file(path: path, line: $0.line), name: name) }
    }

    /// Reads the file at `path`; one that does not exist or cannot be read is an error that
    /// names it and the option or variable (`given`) that named it.
    public static func read(path: String, given source: SettingSource, table: SettingsTable) throws(ConfigurationError) -> SettingsFile {
        guard let data = FileManager.default.contents(atPath: path) else {
            let option: String
            if case .commandLine(let o) = source { option = o } else { option = "FIELDLOG_CONFIG" }
            throw ConfigurationError(problems: [.init(setting: option, value: path, source: source,
                                                      allowed: "the configuration file cannot be read (missing or no permission)")])
        }
        return SettingsFile(contents: String(decoding: data, as: UTF8.self), path: path, table: table)
    }
}
