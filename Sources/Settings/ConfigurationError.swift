/// Where a setting's value came from.
public enum SettingSource: Hashable, Sendable, CustomStringConvertible {
    /// The table's default.
    case builtIn
    /// A line of a configuration file.
    case file(path: String, line: Int)
    /// The process environment.
    case environment
    /// A command-line option (`--mqtt-host`, `--set`, …).
    case commandLine(option: String)

    public var description: String {
        switch self {
        case .builtIn: return "default"
        case .file(let path, let line): return "\(path):\(line)"
        case .environment: return "environment"
        case .commandLine(let option): return "command line \(option)"
        }
    }
}

/// One problem with the configuration: which setting, what value, where it came from and
/// what would have been allowed.
public struct ConfigurationProblem: Hashable, Sendable, CustomStringConvertible {
    /// The name the value was given under (an alias when that is what was set), or an option.
    public var setting: String
    public var value: String
    public var source: SettingSource
    public var allowed: String

    public init(setting: String, value: String, source: SettingSource, allowed: String) {
        self.setting = setting
        self.value = value
        self.source = source
        self.allowed = allowed
    }

    public var description: String {
        // `--wait="5000" (from the command line)`, not `(from command line --wait)` again.
        let from = source == .commandLine(option: setting) ? "the command line" : source.description
        return "\(setting)=\(value.debugDescription) (from \(from)): \(allowed)"
    }
}

/// The configuration has problems: lists every one of them (a program reports them all at
/// once, so one edit fixes the file).
public struct ConfigurationError: Error, Sendable, CustomStringConvertible {
    public var problems: [ConfigurationProblem]

    public init(problems: [ConfigurationProblem]) {
        precondition(!problems.isEmpty, "a configuration error names at least one problem")
        self.problems = problems
    }

    /// One problem with a command-line argument that is not a setting (`--wait`, `--device`).
    public init(option: String, value: String, allowed: String) {
        self.init(problems: [ConfigurationProblem(setting: option, value: value, source: .commandLine(option: option), allowed: allowed)])
    }

    public var description: String {
        "invalid configuration:\n" + problems.map { "  - \($0)" }.joined(separator: "\n")
    }
}
