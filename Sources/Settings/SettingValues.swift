/// A setting's value with where it came from.
public struct RawSetting: Hashable, Sendable {
    public var value: String
    public var source: SettingSource
    /// The name it was given under: the setting's name, or an alias (the seed's name).
    public var name: String

    public init(value: String, source: SettingSource, name: String) {
        self.value = value
        self.source = source
        self.name = name
    }
}

/// One source of values: the command line, the environment, a file. `SettingValues` asks
/// them in order of precedence. The backend plugs swift-configuration's providers in as
/// layers (BackendStore/ConfigProviderLayer.swift); the device, which cannot afford that
/// package's 0.68 MB (docs/device.md, "Binary size"), uses the plain layers here.
public protocol SettingsLayer: Sendable {
    /// The value given under `name` (a setting's name or alias), and where; nil when not given.
    func value(forName name: String) -> RawSetting?
    /// Problems found while reading the layer (unknown names, bad lines).
    var problems: [ConfigurationProblem] { get }
}

/// The process environment (or a dictionary standing in for it).
public struct EnvironmentLayer: SettingsLayer {
    public let environment: [String: String]
    public init(_ environment: [String: String]) { self.environment = environment }

    public func value(forName name: String) -> RawSetting? {
        environment[name].map { RawSetting(value: $0, source: .environment, name: name) }
    }

    /// Other variables are not ours to judge: the environment holds many other things.
    public var problems: [ConfigurationProblem] { [] }
}

/// A value set on the command line: by an option of its own (`--mqtt-host`) or `--set NAME=value`.
public struct CommandLineSetting: Hashable, Sendable {
    /// The setting's name or alias.
    public var name: String
    public var value: String
    /// How it was given, for messages: `--mqtt-host`, `--set`.
    public var option: String

    public init(name: String, value: String, option: String) {
        self.name = name
        self.value = value
        self.option = option
    }

    /// `--set NAME=value`.
    public static func parse(set text: String) throws(ConfigurationError) -> CommandLineSetting {
        guard let eq = text.firstIndex(of: "="), eq != text.startIndex else {
            throw ConfigurationError(option: "--set", value: text, allowed: "NAME=value, NAME a setting (or its other name)")
        }
        return CommandLineSetting(name: String(text[..<eq]), value: String(text[text.index(after: eq)...]), option: "--set")
    }
}

/// The values given on the command line (a later one of the same name wins).
public struct CommandLineLayer: SettingsLayer {
    private var byName: [String: CommandLineSetting] = [:]
    public private(set) var problems: [ConfigurationProblem] = []

    public init(_ settings: [CommandLineSetting], table: SettingsTable) {
        for s in settings {
            guard table[s.name] != nil else {
                problems.append(.init(setting: s.name, value: s.value, source: .commandLine(option: s.option), allowed: table.unknownSetting))
                continue
            }
            byName[s.name] = s
        }
    }

    public func value(forName name: String) -> RawSetting? {
        byName[name].map { RawSetting(value: $0.value, source: .commandLine(option: $0.option), name: name) }
    }
}

/// Every setting of a table with its value and source, resolved from layers in order of
/// precedence (the programs: command line, environment, configuration file), then the
/// table's defaults.
///
/// The names of a setting are tried in order (its name, then its aliases); for one name, the
/// highest layer that has it decides. An empty value counts as not set where the table says
/// so (`SettingsTable.emptyMeansUnset`): then the next name is tried, then the default.
public struct SettingValues: Sendable {
    public let table: SettingsTable
    /// By setting name (never an alias); absent: unset, without a default.
    public private(set) var values: [String: RawSetting] = [:]
    /// Problems found while reading the layers (file lines, unknown names).
    public let problems: [ConfigurationProblem]

    public init(table: SettingsTable, layers: [any SettingsLayer]) {
        self.table = table
        problems = layers.flatMap(\.problems)
        for setting in table.settings {
            if let found = Self.resolve(setting, emptyIsUnset: table.emptyIsUnset(setting), layers: layers) {
                values[setting.name] = found
            } else if let d = setting.defaultValue {
                values[setting.name] = RawSetting(value: d, source: .builtIn, name: setting.name)
            }
        }
    }

    /// The command line, then the environment, then the file (the programs' order).
    public init(table: SettingsTable, commandLine: [CommandLineSetting] = [], environment: [String: String] = [:],
                file: SettingsFile? = nil) {
        self.init(table: table, layers: [CommandLineLayer(commandLine, table: table), EnvironmentLayer(environment)] + (file.map { [$0] } ?? []))
    }

    private static func resolve(_ setting: Setting, emptyIsUnset: Bool, layers: [any SettingsLayer]) -> RawSetting? {
        for name in setting.names {
            guard let found = layers.lazy.compactMap({ $0.value(forName: name) }).first else { continue }
            if found.value.isEmpty && emptyIsUnset { continue }  // this name is unset: try the next one
            return found
        }
        return nil
    }

    /// The setting's value, by its name (not an alias); nil when unset.
    public subscript(name: String) -> RawSetting? { values[name] }

    /// The values of these settings under the names they were given, for code that reads an
    /// environment-like dictionary (Sync's `TopicTemplates.fromEnvironment`).
    func asGiven(_ names: [String]) -> [String: String] {
        var out: [String: String] = [:]
        for n in names { if let r = values[n] { out[r.name] = r.value } }
        return out
    }
}

extension SettingValues {
    /// What a program reads at start: the command line, the environment, and the configuration
    /// file named by `--config` (`configOption`), else by `FIELDLOG_CONFIG` in the environment.
    /// A named file that cannot be read is an error.
    public static func load(table: SettingsTable, commandLine: [CommandLineSetting], environment: any SettingsLayer,
                            configOption: String?) throws(ConfigurationError) -> SettingValues {
        var file: SettingsFile?
        if let configOption {
            file = try SettingsFile.read(path: configOption, given: .commandLine(option: "--config"), table: table)
        } else if let named = environment.value(forName: "FIELDLOG_CONFIG"), !named.value.isEmpty {
            file = try SettingsFile.read(path: named.value, given: .environment, table: table)
        }
        return SettingValues(table: table, layers: [CommandLineLayer(commandLine, table: table), environment] + (file.map { [$0] } ?? []))
    }
}
