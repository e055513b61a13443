#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import FieldlogCore

/// Reads typed values from resolved settings by their table rows, collecting every problem
/// instead of stopping at the first; `finish()` throws them all as one `ConfigurationError`.
///
/// A bad value reads as a harmless placeholder (the range's lower bound, the first choice)
/// so that reading goes on; the placeholder is never used, since `finish()` then throws.
public struct SettingsReader {
    public let values: SettingValues
    public private(set) var problems: [ConfigurationProblem]

    public init(_ values: SettingValues) {
        self.values = values
        problems = values.problems
    }

    /// The setting's row; reading a name the table does not have is a programming error.
    private func setting(_ name: String) -> Setting {
        guard let s = values.table[name], s.name == name else {
            preconditionFailure("\(values.table.program): \(name) is not a setting of the table")
        }
        return s
    }

    /// The value and where it came from; an unset setting reads as empty, from the default.
    public func raw(_ name: String) -> RawSetting {
        values[setting(name).name] ?? RawSetting(value: "", source: .builtIn, name: name)
    }

    /// Records a problem with the setting's value (under the name it was given).
    public mutating func problem(_ name: String, _ allowed: String) {
        let r = raw(name)
        problems.append(.init(setting: r.name, value: r.value, source: r.source, allowed: allowed))
    }

    /// Records a problem with its own wording (settings checked together, command-line arguments).
    public mutating func problem(_ problem: ConfigurationProblem) { problems.append(problem) }

    /// Throws every problem found so far.
    public func finish() throws(ConfigurationError) {
        if !problems.isEmpty { throw ConfigurationError(problems: problems) }
    }

    private func range<T>(_ name: String, _ extract: (SettingKind) -> T?) -> T {
        guard let r = extract(setting(name).kind) else {
            preconditionFailure("\(values.table.program): \(name) is read as another kind than its row's \(setting(name).kind)")
        }
        return r
    }

    /// The value as given (empty when unset).
    public func string(_ name: String) -> String { raw(name).value }

    /// The value, nil when unset or empty.
    public func optional(_ name: String) -> String? {
        let v = raw(name).value
        return v.isEmpty ? nil : v
    }

    /// The value without surrounding spaces; empty is a problem.
    public mutating func nonEmpty(_ name: String) -> String {
        let v = raw(name).value.trimmed(.spaces)
        if v.isEmpty { problem(name, SettingKind.nonEmpty.allowed!) }
        return v
    }

    public mutating func bool(_ name: String) -> Bool {
        precondition(setting(name).kind == .bool, "\(name) is not a boolean setting")
        switch raw(name).value.trimmed(.spaces).lowercased() {
        case "1", "true", "yes", "on": return true
        case "0", "false", "no", "off": return false
        default:
            problem(name, SettingKind.bool.allowed!)
            return false
        }
    }

    /// A whole number in the row's range.
    public mutating func integer(_ name: String) -> Int64 {
        let range = range(name) { if case .integer(let r) = $0 { r } else { nil } }
        guard let n = Int64(raw(name).value.trimmed(.spaces)), range.contains(n) else {
            problem(name, SettingKind.integer(range).allowed!)
            return range.lowerBound
        }
        return n
    }

    /// `integer(_:)` as an `Int` (every range in the tables fits one).
    public mutating func int(_ name: String) -> Int { Int(integer(name)) }

    /// Bytes in the row's range, with an optional k/M/G suffix (powers of 1024).
    public mutating func bytes(_ name: String) -> Int64 {
        let range = range(name) { if case .bytes(let r) = $0 { r } else { nil } }
        var v = raw(name).value.trimmed(.spaces)
        var factor: Int64 = 1
        switch v.last {
        case "k", "K": factor = 1024
        case "m", "M": factor = 1024 * 1024
        case "g", "G": factor = 1024 * 1024 * 1024
        default: break
        }
        if factor != 1 { v.removeLast() }
        guard let n = Int64(v), n >= 0, n <= Int64.max / factor, range.contains(n * factor) else {
            problem(name, SettingKind.bytes(range).allowed!)
            return range.lowerBound
        }
        return n * factor
    }

    /// Seconds in the row's range, decimals allowed, to the millisecond.
    public mutating func seconds(_ name: String) -> Duration {
        let range = range(name) { if case .seconds(let r) = $0 { r } else { nil } }
        guard let d = Double(raw(name).value.trimmed(.spaces)), d.isFinite, range.contains(d) else {
            problem(name, SettingKind.seconds(range).allowed!)
            return .seconds(range.lowerBound)
        }
        return .milliseconds(Int64((d * 1000).rounded()))
    }

    /// One of the row's words, in any case; returns the word as the row writes it.
    public mutating func word(_ name: String) -> String {
        let words = range(name) { if case .choice(let w) = $0 { w } else { nil } }
        let v = raw(name).value.trimmed(.spaces).lowercased()
        guard let w = words.first(where: { $0.lowercased() == v }) else {
            problem(name, SettingKind.choice(words).allowed!)
            return words[0]
        }
        return w
    }

    /// One of an enumeration's cases by raw value, in any case (the row lists the raw values).
    public mutating func choice<T: RawRepresentable & CaseIterable>(_ name: String, _: T.Type) -> T where T.RawValue == String {
        precondition(setting(name).kind == .choice(T.allCases.map(\.rawValue)), "\(name)'s row does not list \(T.self)'s cases")
        return T(rawValue: word(name))!
    }

    /// A path that must be a readable file when `needed`; nil when unset.
    public mutating func readableFile(_ name: String, needed: Bool) -> String? {
        guard let v = optional(name) else { return nil }
        if needed && !FileManager.default.isReadableFile(atPath: v) {
            problem(name, "a readable file (it does not exist or cannot be read)")
        }
        return v
    }

    /// A comma-separated list: items trimmed, empty items dropped.
    public func list(_ name: String) -> [String] {
        raw(name).value.split(separator: ",").map { $0.trimmed(.spaces) }.filter { !$0.isEmpty }
    }
}

extension SettingsTable {
    /// What `read` makes of the table's defaults alone, for the in-memory configurations tests
    /// start from; a default that does not pass its own checks is a programming error.
    public func readingDefaults<T>(_ read: (inout SettingsReader) -> T) -> T {
        var r = SettingsReader(SettingValues(table: self, layers: []))
        let value = read(&r)
        precondition(r.problems.isEmpty, "\(program): invalid defaults: \(r.problems)")
        return value
    }
}
