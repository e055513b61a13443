#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// One problem with the configuration: which setting, what value, where it came from and
/// what would have been allowed.
public struct ConfigurationProblem: Hashable, Sendable, CustomStringConvertible {
    public var setting: String
    public var value: String
    public var source: SettingSource
    public var allowed: String

    public var description: String {
        "\(setting)=\(value.debugDescription) (from \(source)): \(allowed)"
    }
}

/// Thrown when the configuration has problems; lists every one of them.
public struct ConfigurationError: Error, Sendable, CustomStringConvertible {
    public var problems: [ConfigurationProblem]
    public init(problems: [ConfigurationProblem]) { self.problems = problems }
    public var description: String {
        "invalid configuration:\n" + problems.map { "  - \($0)" }.joined(separator: "\n")
    }
}

/// A raw value with its origin.
public struct RawSetting: Hashable, Sendable {
    public var value: String
    public var source: SettingSource
}

/// The merged raw settings: defaults < file < environment.
public struct ConfigurationSource: Sendable {
    public private(set) var values: [String: RawSetting] = [:]
    /// Problems found while reading the layers (bad lines, unknown keys in the file).
    public private(set) var problems: [ConfigurationProblem] = []

    public init() {
        for s in Settings.all {
            if let d = s.defaultValue { values[s.name] = RawSetting(value: d, source: .builtIn) }
        }
    }

    /// Reads a `KEY=value` file: `#` starts a comment line, blank lines are skipped, values
    /// may be wrapped in single or double quotes, an optional leading `export ` is allowed.
    /// Unknown keys are reported (a typo must not silently fall back to a default).
    public mutating func apply(fileContents text: String, path: String) {
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
            guard Settings.byName[key] != nil else {
                problems.append(.init(setting: key, value: value, source: source,
                                      allowed: "unknown setting (see `fieldlog-device config check --help` or docs/device.md)"))
                continue
            }
            values[key] = RawSetting(value: value, source: source)
        }
    }

    /// Applies the environment: every known setting name present overrides the file.
    /// Unknown variables are ignored (the environment holds many other things).
    public mutating func apply(environment: [String: String]) {
        for s in Settings.all {
            if let v = environment[s.name] { values[s.name] = RawSetting(value: v, source: .environment) }
        }
    }

    /// Sets one value (tests, command-line overrides).
    public mutating func set(_ name: String, _ value: String, source: SettingSource = .environment) {
        precondition(Settings.byName[name] != nil, "unknown setting \(name)")
        values[name] = RawSetting(value: value, source: source)
    }

    /// Defaults, then the file (if any; a named file that does not exist is an error), then the environment.
    public static func load(file: String?, environment: [String: String]) throws -> ConfigurationSource {
        var source = ConfigurationSource()
        if let file {
            guard let data = FileManager.default.contents(atPath: file) else {
                throw ConfigurationError(problems: [.init(setting: "--config", value: file, source: .environment,
                                                          allowed: "the configuration file cannot be read (missing or no permission)")])
            }
            source.apply(fileContents: String(decoding: data, as: UTF8.self), path: file)
        }
        source.apply(environment: environment)
        return source
    }
}
