// Commands, sans IO: a JSON payload in, a parsed command or an error response out.
//
// Theory of operation: the seed's JSON commands (`reboot`, `get_config`, `set_config`,
// `send_measurements`; names case-insensitive) plus Fieldlog's (`replay`, `status`, `start`,
// `stop`, `set_interval`). A request may carry an id (`id`, or `request_id`; a string or a
// whole number) that is echoed in the response and makes the command at-most-once: the
// handler remembers executed ids durably and answers a repeated delivery with the stored
// response, without executing again. A payload that is not a JSON object, has no command,
// names an unknown command, or has a bad argument gets an error response naming what was
// wrong, and nothing else happens. `get_config`/`set_config` only reach the documented keys
// below, never arbitrary Redis keys as the seed allowed.
import FieldlogCore
import Foundation

/// Longest command payload accepted (checked before parsing).
public let commandMaxBytes = 16 * 1024

/// Keys reachable through `get_config` / `set_config`.
public enum ConfigKey: String, Sendable, CaseIterable {
    // Writable runtime switches (the seed's Redis keys).
    case measurementEnabled = "measurement:enabled"
    case measurementInterval = "measurement:interval"
    case senderEnabled = "mqtt_sender:enabled"
    case senderInterval = "mqtt_sender:interval"
    // Read-only facts.
    case deviceID = "device:id"
    case logEpoch = "log:epoch"
    case logHead = "log:head"
    case logAcked = "log:acked"

    public var switchKey: SwitchKey? { SwitchKey(rawValue: rawValue) }

    static var listing: String { allCases.map(\.rawValue).joined(separator: ", ") }
    static var writableListing: String { allCases.filter { $0.switchKey != nil }.map(\.rawValue).joined(separator: ", ") }
}

/// A request id: a string or a whole number, echoed as it came.
public enum RequestID: Hashable, Sendable, CustomStringConvertible {
    case string(String)
    case number(Int64)

    public static let maxLength = 128

    public var description: String {
        switch self {
        case .string(let s): return s
        case .number(let n): return String(n)
        }
    }

    /// The key under which an executed id is remembered (type-tagged, so "1" and 1 differ).
    public var storageKey: String {
        switch self {
        case .string(let s): return "s:" + s
        case .number(let n): return "n:" + String(n)
        }
    }
}

/// A range for `send_measurements` / `replay`: `nil` ends mean "oldest retained" / "head".
public struct ReplayRange: Hashable, Sendable {
    public var from: SequenceNumber?
    public var to: SequenceNumber?
    /// At most this many records (nil: no limit beyond the range).
    public var count: Int?
}

/// A parsed, valid command.
public enum Command: Hashable, Sendable {
    case reboot
    case getConfig(ConfigKey)
    case setConfig(SwitchKey, SwitchValue, text: String)
    case sendMeasurements(ReplayRange)
    case replay(ReplayRange)
    case status
    case start
    case stop
    case setInterval(Duration, target: SwitchKey)

    /// The canonical (lowercase) command name, as echoed in responses.
    public var name: String {
        switch self {
        case .reboot: return "reboot"
        case .getConfig: return "get_config"
        case .setConfig: return "set_config"
        case .sendMeasurements: return "send_measurements"
        case .replay: return "replay"
        case .status: return "status"
        case .start: return "start"
        case .stop: return "stop"
        case .setInterval: return "set_interval"
        }
    }
}

/// A command request as received: its id (if any) and the command, or why it is invalid.
public struct CommandRequest: Sendable {
    public var id: RequestID?
    /// The command name as sent (for echoing in an error), lowercased.
    public var name: String?
    public var parsed: Result<Command, CommandError>
}

/// Why a command was rejected (the text goes into the error response).
public struct CommandError: Error, Hashable, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A JSON response object. Keys are kept in a stable order for readability.
public struct CommandResponse: Sendable, Equatable {
    public var fields: [(String, JSONValue)]

    public init(_ fields: [(String, JSONValue)]) { self.fields = fields }

    public static func == (a: Self, b: Self) -> Bool {
        a.fields.count == b.fields.count && zip(a.fields, b.fields).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
    }

    public subscript(key: String) -> JSONValue? { fields.first { $0.0 == key }?.1 }

    /// Serialised as a JSON object (keys in order).
    public func encoded() -> Data {
        var s = "{"
        for (i, (k, v)) in fields.enumerated() {
            if i > 0 { s += "," }
            s += JSONValue.string(k).encoded + ":" + v.encoded
        }
        s += "}"
        return Data(s.utf8)
    }

    /// An error response: `{"command": name, "id": id, "ok": false, "error": message}`.
    public static func error(_ message: String, command: String?, id: RequestID?) -> CommandResponse {
        var f: [(String, JSONValue)] = []
        if let command { f.append(("command", .string(command))) }
        if let id { f.append(("id", JSONValue(id))) }
        f.append(("ok", .bool(false)))
        f.append(("error", .string(message)))
        return CommandResponse(f)
    }
}

/// A small JSON value for responses (ordered objects, deterministic output).
public indirect enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    init(_ id: RequestID) {
        switch id {
        case .string(let s): self = .string(s)
        case .number(let n): self = .int(n)
        }
    }

    public static func == (a: Self, b: Self) -> Bool { a.encoded == b.encoded }

    public var encoded: String {
        switch self {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .int(let n): return String(n)
        case .double(let d): return d.isFinite ? String(d) : "null"
        case .string(let s):
            var out = "\""
            for u in s.unicodeScalars {
                switch u {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                case "\r": out += "\\r"
                case "\t": out += "\\t"
                default:
                    if u.value < 0x20 { out += String(format: "\\u%04x", u.value) } else { out.unicodeScalars.append(u) }
                }
            }
            return out + "\""
        case .array(let a): return "[" + a.map(\.encoded).joined(separator: ",") + "]"
        case .object(let o): return "{" + o.map { JSONValue.string($0.0).encoded + ":" + $0.1.encoded }.joined(separator: ",") + "}"
        }
    }

    public var stringValue: String? { if case .string(let s) = self { return s } else { return nil } }
    public var boolValue: Bool? { if case .bool(let b) = self { return b } else { return nil } }
}

/// Parses command payloads.
public enum CommandParser {
    public static func parse(_ payload: Data) -> CommandRequest {
        guard payload.count <= commandMaxBytes else {
            return CommandRequest(id: nil, name: nil, parsed: .failure(.init("command is \(payload.count) bytes; at most \(commandMaxBytes) allowed")))
        }
        let object: AnyJSON
        do { object = try JSONDecoder().decode(AnyJSON.self, from: payload) } catch {
            return CommandRequest(id: nil, name: nil, parsed: .failure(.init("command is not valid JSON")))
        }
        guard case .object(let dict) = object else {
            return CommandRequest(id: nil, name: nil, parsed: .failure(.init("command must be a JSON object")))
        }
        var id: RequestID? = nil
        let idValue = dict["id"] ?? dict["request_id"]
        if let idValue {
            switch parseID(idValue) {
            case .success(let v): id = v
            case .failure(let e): return CommandRequest(id: nil, name: nil, parsed: .failure(e))
            }
        }
        guard case .string(let rawName)? = dict["command"] else {
            return CommandRequest(id: id, name: nil, parsed: .failure(.init("missing \"command\" (a string)")))
        }
        let name = rawName.lowercased()
        return CommandRequest(id: id, name: name, parsed: Result { () throws(CommandError) in try command(name, dict) })
    }

    static func parseID(_ v: AnyJSON) -> Result<RequestID, CommandError> {
        switch v {
        case .string(let s):
            guard !s.isEmpty, s.utf8.count <= RequestID.maxLength else {
                return .failure(.init("\"id\" must be 1…\(RequestID.maxLength) bytes"))
            }
            return .success(.string(s))
        case .int(let n):
            return .success(.number(n))
        default:
            return .failure(.init("\"id\" must be a string or a whole number"))
        }
    }

    static func command(_ name: String, _ d: [String: AnyJSON]) throws(CommandError) -> Command {
        switch name {
        case "reboot": return .reboot
        case "status": return .status
        case "start": return .start
        case "stop": return .stop
        case "get_config":
            return .getConfig(try configKey(d))
        case "set_config":
            let key = try configKey(d)
            guard let sk = key.switchKey else {
                throw CommandError("key \(key.rawValue.debugDescription) is read-only; writable keys: \(ConfigKey.writableListing)")
            }
            guard let raw = d["value"] else { throw CommandError("set_config needs \"value\"") }
            let text: String
            switch raw {
            case .string(let s): text = s
            case .int(let n): text = String(n)
            case .double(let x): text = String(x)
            case .bool(let b): text = b ? "1" : "0"
            default: throw CommandError("\"value\" must be a string, number or boolean")
            }
            do throws(DomainError) { return .setConfig(sk, try sk.parse(text), text: text) } catch { throw CommandError(error.description) }
        case "set_interval":
            let target: SwitchKey
            switch d["target"]?.string?.lowercased() {
            case nil, "measurement", "sampler": target = .measurementInterval
            case "sender", "mqtt_sender", "sync": target = .senderInterval
            case let t?: throw CommandError("\"target\" must be measurement or sender, got \(t.debugDescription)")
            }
            guard let raw = d["seconds"] ?? d["value"] ?? d["interval"] else {
                throw CommandError("set_interval needs \"seconds\" (a number)")
            }
            let text: String
            switch raw {
            case .string(let s): text = s
            case .int(let n): text = String(n)
            case .double(let x): text = String(x)
            default: throw CommandError("\"seconds\" must be a number")
            }
            do throws(DomainError) {
                guard case .interval(let dur) = try target.parse(text) else { preconditionFailure() }
                return .setInterval(dur, target: target)
            } catch { throw CommandError(error.description) }
        case "send_measurements":
            // The seed: min_id/max_id ("-" = oldest, "+" = newest) and count.
            return .sendMeasurements(try range(d, fromKey: "min_id", toKey: "max_id"))
        case "replay":
            return .replay(try range(d, fromKey: "from", toKey: "to"))
        default:
            throw CommandError("unknown command \(name.debugDescription); known: reboot, get_config, set_config, send_measurements, replay, status, start, stop, set_interval")
        }
    }

    static func configKey(_ d: [String: AnyJSON]) throws(CommandError) -> ConfigKey {
        guard let k = d["key"]?.string else { throw CommandError("needs \"key\" (a string); keys: \(ConfigKey.listing)") }
        guard let key = ConfigKey(rawValue: k) else {
            throw CommandError("key \(k.debugDescription) is not available; keys: \(ConfigKey.listing)")
        }
        return key
    }

    static func range(_ d: [String: AnyJSON], fromKey: String, toKey: String) throws(CommandError) -> ReplayRange {
        func bound(_ key: String, open: String) throws(CommandError) -> SequenceNumber? {
            guard let v = d[key] else { return nil }
            if case .string(let s) = v {
                if s == open || s == "-" || s == "+" { return nil }
                // The seed's ids were Redis stream ids ("1621122796939-0"); Fieldlog's are sequence numbers.
                guard let n = UInt64(s), n >= 1, n <= SequenceNumber.max.rawValue else {
                    throw CommandError("\"\(key)\" must be a sequence number ≥ 1, \"-\" or \"+\", got \(s.debugDescription)")
                }
                return SequenceNumber(n)
            }
            if case .int(let n) = v, n >= 1, UInt64(n) <= SequenceNumber.max.rawValue {
                return SequenceNumber(UInt64(n))
            }
            throw CommandError("\"\(key)\" must be a sequence number ≥ 1, \"-\" or \"+\"")
        }
        let from = try bound(fromKey, open: "-")
        let to = try bound(toKey, open: "+")
        if let from, let to, from > to { throw CommandError("\"\(fromKey)\" \(from) is after \"\(toKey)\" \(to)") }
        var count: Int? = nil
        if let c = d["count"] {
            guard case .int(let n) = c, n >= 1, n <= 1_000_000 else {
                throw CommandError("\"count\" must be a whole number in 1…1000000")
            }
            count = Int(n)
        }
        return ReplayRange(from: from, to: to, count: count)
    }
}

/// A decoded JSON value that keeps booleans, whole numbers and decimals apart.
enum AnyJSON: Decodable, Sendable {
    case null, bool(Bool), int(Int64), double(Double), string(String), array([AnyJSON]), object([String: AnyJSON])

    init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let n = try? c.decode(Int64.self) { self = .int(n) }
        else if let d = try? c.decode(Double.self) { self = .double(d) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([AnyJSON].self) { self = .array(a) }
        else { self = .object(try c.decode([String: AnyJSON].self)) }
    }

    var string: String? { if case .string(let s) = self { return s } else { return nil } }
}
