// The schema of a program's settings: one table per program — fieldlog-device's in
// Device/Configuration/DeviceSettings.swift, fieldlog-backend's in
// BackendStore/BackendSettings.swift — and everything that is done with it.
//
// Theory of operation: a table row says everything about one setting: its name, the other
// names it is also read under (the seed's, e.g. MQTT_HOST for FIELDLOG_MQTT_HOST), its
// default, what values it takes (`SettingKind`: limits, choices), its group and what it
// does. From the table alone come
//   - the values: `SettingValues` resolves every setting from the command line, the
//     environment, a `KEY=value` file and the defaults, remembering where each came from;
//   - the checks: `SettingsReader` reads typed values by the row's kind and collects every
//     problem (setting, value, source, what is allowed) into one `ConfigurationError`;
//   - the documents: the reference (docs/device-configuration.md, docs/backend-configuration.md),
//     the example file and `config check`'s effective configuration (Reference.swift).
// The typed configuration structs (DeviceConfiguration, BackendConfiguration, WebSettings) read
// the table's settings by name; reading a name that is not in the table, or with a kind the
// row does not have, is a programming error (a precondition), caught by the tests that load
// the defaults.

/// What values a setting takes. The reader checks values by it, and the reference and the
/// error messages describe it with the same words (`allowed`).
public enum SettingKind: Hashable, Sendable {
    /// Any text, also empty; code that needs more (device ids, addresses, templates) checks it
    /// and says what it allows.
    case text
    /// Text that is not empty once spaces are trimmed.
    case nonEmpty
    /// true/false, 1/0, yes/no, on/off, in any case.
    case bool
    /// A whole number in the range.
    case integer(ClosedRange<Int64>)
    /// Seconds, decimals allowed (read as a `Duration` in milliseconds).
    case seconds(ClosedRange<Double>)
    /// Bytes, with an optional k, M or G suffix (powers of 1024).
    case bytes(ClosedRange<Int64>)
    /// One of these words, in any case; read as the word written here.
    case choice([String])

    /// What is allowed, in the words of the error messages and the reference (nil: any text).
    public var allowed: String? {
        switch self {
        case .text: return nil
        case .nonEmpty: return "must not be empty"
        case .bool: return "a boolean: true/false, 1/0, yes/no or on/off"
        case .integer(let r): return "a whole number in \(r.lowerBound)…\(r.upperBound)"
        case .seconds(let r): return "a number of seconds in \(Self.number(r.lowerBound))…\(Self.number(r.upperBound)) (decimals allowed)"
        case .bytes(let r): return "a size in bytes in \(r.lowerBound)…\(r.upperBound), optionally with suffix k, M or G"
        case .choice(let words): return "one of " + words.joined(separator: ", ") + " (case does not matter)"
        }
    }

    /// 0.01, 5, 86400: a whole number without ".0".
    static func number(_ d: Double) -> String {
        d == d.rounded() && abs(d) < 1e15 ? String(Int64(d)) : String(d)
    }
}

/// One setting: a row of a `SettingsTable`.
public struct Setting: Sendable {
    /// The environment variable and file key, e.g. `MQTT_HOST`.
    public let name: String
    /// Other names it is read under, after `name` (the seed's names, e.g. `MQTT_TOPIC_REQUEST`).
    public let aliases: [String]
    /// The value when nothing sets it; nil: unset (the code says what unset means, in `help`).
    public let defaultValue: String?
    /// What values it takes.
    public let kind: SettingKind
    /// The heading it is listed under.
    public let group: String
    /// Masked when printed (passwords).
    public let secret: Bool
    /// The command-line option that sets it, if any (e.g. `--mqtt-host`); `--set NAME=value` sets any.
    public let option: String?
    /// What it does, for the reference, the example file and `--help`.
    public let help: String

    public init(_ name: String, _ defaultValue: String?, _ kind: SettingKind = .text, group: String,
                aliases: [String] = [], option: String? = nil, secret: Bool = false, _ help: String) {
        self.name = name
        self.aliases = aliases
        self.defaultValue = defaultValue
        self.kind = kind
        self.group = group
        self.secret = secret
        self.option = option
        self.help = help
    }

    /// `name`, then the aliases: the order in which a value is looked for.
    public var names: [String] { [name] + aliases }
}

/// Every setting of one program, in the order its documents list them.
public struct SettingsTable: Sendable {
    /// The program, e.g. `fieldlog-device` (for messages and documents).
    public let program: String
    /// Where the reference document is, e.g. `docs/device-configuration.md`.
    public let referencePath: String
    /// Where the table is defined, for the reference's "generated from" note.
    public let sourcePath: String
    /// The reference's introduction (Markdown, after the title).
    public let referenceIntro: String
    /// Whether an empty value counts as not set for every setting (the backend: compose files
    /// pass `NAME=` for variables left out). Otherwise it does so only for settings without a
    /// default, and an empty value of any other is checked like every value (the device: an
    /// empty `SENSORS` is an error, not the default).
    public let emptyMeansUnset: Bool
    public let settings: [Setting]
    private let indexByName: [String: Int]

    public init(program: String, referencePath: String, sourcePath: String, referenceIntro: String,
                emptyMeansUnset: Bool, settings: [Setting]) {
        self.program = program
        self.referencePath = referencePath
        self.sourcePath = sourcePath
        self.referenceIntro = referenceIntro
        self.emptyMeansUnset = emptyMeansUnset
        self.settings = settings
        var index: [String: Int] = [:]
        for (i, s) in settings.enumerated() {
            for n in s.names {
                precondition(index.updateValue(i, forKey: n) == nil, "\(program): setting name \(n) is in the table twice")
            }
        }
        indexByName = index
    }

    /// The setting of this name or alias.
    public subscript(name: String) -> Setting? { indexByName[name].map { settings[$0] } }

    /// Every name and alias the program reads.
    public var allNames: Set<String> { Set(indexByName.keys) }

    /// What a problem with a name the table does not have says is allowed.
    var unknownSetting: String { "unknown setting (see `\(program) config reference` or \(referencePath))" }

    /// Whether an empty value of `setting` counts as not set (see `emptyMeansUnset`).
    func emptyIsUnset(_ setting: Setting) -> Bool { emptyMeansUnset || setting.defaultValue == nil }
}
