// The messages of the sync protocol, version 1 (spec/protocol.md §3).
//
// These are plain values; `SyncCodec` turns them into bytes and back. Every field's limit is
// in `ProtocolLimits` and is checked by the decoder (outside input) and asserted by the
// encoder's callers (our own messages).

import FieldlogCore

/// The protocol version this code speaks (the `"v"` member of every message).
let syncProtocolVersion: Int64 = 1

/// Limits of protocol v1. The same numbers are in spec/protocol.md §3.1.
public enum ProtocolLimits {
    /// Largest message the decoder accepts, checked before parsing (bytes).
    public static let maxMessageBytes = 262_144
    /// Most records in one batch.
    public static let maxRecordsPerBatch = 1_000
    /// Most loss markers in one batch.
    static let maxLossesPerBatch = 64
    /// Most ranges in an ack's `missing` list, and sequence numbers in its `rejected` list.
    @usableFromInline static let maxAckListEntries = 64
    /// Longest request id of a command (1…64 printable ASCII, no space: `isValidRequestID`).
    static let maxRequestIDBytes = 64
    /// Longest command name echoed in a command response.
    static let maxCommandNameBytes = 64
    /// Timestamps (`ts`, `at`; ms since 1970, device wall clock): 0 … 2^53. Anything outside is
    /// a broken clock or a hostile sender; the bound keeps every difference of two timestamps
    /// (lags, ages) far from Int64 overflow and every value exact in JSON and in a BIGINT column.
    static let timestampRange: ClosedRange<Int64> = 0...(1 << 53)

    /// Whether `s` is a valid request id: 1…`maxRequestIDBytes` bytes, each printable ASCII
    /// 0x21…0x7E (no space, no control character, nothing outside ASCII).
    static func isValidRequestID(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= maxRequestIDBytes && s.utf8.allSatisfy { $0 >= 0x21 && $0 <= 0x7E }
    }
    /// Longest config key / value, and free-text fields (loss detail, error message).
    static let maxKeyBytes = 128
    public static let maxTextBytes = 1_024
    /// Most names in a record's `missing` sensor list.
    static let maxMissingSensors = SensorValues.maxSensors
}

/// One record in a batch that the sender could read but the receiver could not accept
/// (a value out of the protocol's limits, a bad sensor name...). It is kept aside, stored in
/// the dead-letter table by the backend and acknowledged as rejected (spec §5.3).
public struct RejectedRecord: Hashable, Sendable {
    public var sequence: SequenceNumber
    public var reason: String
    /// The record's JSON text, truncated to `ProtocolLimits.maxTextBytes`.
    public var excerpt: String

    public init(sequence: SequenceNumber, reason: String, excerpt: String) {
        self.sequence = sequence
        self.reason = reason
        self.excerpt = excerpt
    }
}

/// Device → backend: a contiguous run `range` of a device's log in one epoch. Every sequence
/// number in `range` is covered by exactly one record or one loss marker (spec §3.2).
public struct Batch: Hashable, Sendable {
    public var device: DeviceID
    public var epoch: Epoch
    public var range: SequenceRange
    public var records: [LogRecord]
    public var losses: [LossMarker]
    /// Set when the batch answers a `replay` command (the command's request id).
    public var replayRequestID: String?
    /// Records the decoder could not accept (receiver side only; never encoded).
    public var rejected: [RejectedRecord]

    public init(device: DeviceID, epoch: Epoch, range: SequenceRange, records: [LogRecord], losses: [LossMarker] = [],
                replayRequestID: String? = nil, rejected: [RejectedRecord] = []) {
        self.device = device
        self.epoch = epoch
        self.range = range
        self.records = records
        self.losses = losses
        self.replayRequestID = replayRequestID
        self.rejected = rejected
    }
}

/// Backend → device (QoS 1, retained): every record of `epoch` through `through` is stored,
/// declared lost, or rejected and kept aside (spec §3.3).
public struct Ack: Hashable, Sendable {
    public var device: DeviceID
    public var epoch: Epoch
    /// Contiguous prefix: all of 1...through is accounted for in the store. `.zero` = nothing yet.
    public var through: SequenceNumber
    /// The range of the batch whose commit caused this ack (a selective ack), if any.
    public var stored: SequenceRange?
    /// Sequence numbers of `stored` the backend rejected and kept aside.
    public var rejected: [SequenceNumber]
    /// Ranges above `through` the backend knows it is missing (for the gap audit), if known.
    public var missing: [SequenceRange]

    public init(device: DeviceID, epoch: Epoch, through: SequenceNumber, stored: SequenceRange? = nil,
                rejected: [SequenceNumber] = [], missing: [SequenceRange] = []) {
        self.device = device
        self.epoch = epoch
        self.through = through
        self.stored = stored
        self.rejected = rejected
        self.missing = missing
    }
}

/// Whether a device is connected; the broker publishes `offline` as the device's last will.
public enum DeviceState: String, Hashable, Sendable {
    case online
    case offline
}

/// Device → backend (QoS 1, retained): the device's sync state (spec §3.4).
public struct Status: Hashable, Sendable {
    public var device: DeviceID
    public var state: DeviceState
    /// Absent in the last will (which is fixed at connect time and would go stale).
    public var epoch: Epoch?
    public var head: SequenceNumber?
    public var acked: SequenceNumber?
    /// Device wall clock when sent (ms since 1970).
    public var atUnixMilliseconds: Int64?
    /// Whether measuring is enabled (`measurement:enabled`).
    public var measuring: Bool?
    /// MQTT bytes sent and received today (the device's UTC day), for the data budget.
    public var dataUsage: DataUsage?

    public init(device: DeviceID, state: DeviceState, epoch: Epoch? = nil, head: SequenceNumber? = nil,
                acked: SequenceNumber? = nil, atUnixMilliseconds: Int64? = nil, measuring: Bool? = nil,
                dataUsage: DataUsage? = nil) {
        self.device = device
        self.state = state
        self.epoch = epoch
        self.head = head
        self.acked = acked
        self.atUnixMilliseconds = atUnixMilliseconds
        self.measuring = measuring
        self.dataUsage = dataUsage
    }

    /// Records appended but not yet acknowledged (head − acked), when both are known.
    public var backlog: UInt64? {
        guard let head, let acked, head >= acked else { return nil }
        return head.rawValue - acked.rawValue
    }

    /// The last will a device registers at connect.
    public static func lastWill(device: DeviceID) -> Status { Status(device: device, state: .offline) }
}

/// The bytes a device's MQTT traffic took on one day (UTC), as the device counts them: every
/// PUBLISH and PUBACK it sent or received, headers included (spec §3.4; the MQTT module's
/// MQTTTraffic.swift says what is not counted).
public struct DataUsage: Hashable, Sendable {
    /// The day, as days since 1970-01-01 (UTC).
    public var day: Int64
    public var sentBytes: Int64
    public var receivedBytes: Int64

    public init(day: Int64, sentBytes: Int64, receivedBytes: Int64) {
        self.day = day
        self.sentBytes = sentBytes
        self.receivedBytes = receivedBytes
    }

    /// The UTC day of a wall-clock time in ms since 1970.
    public static func day(ofUnixMilliseconds ms: Int64) -> Int64 {
        let d = ms / 86_400_000
        return ms < 0 && ms % 86_400_000 != 0 ? d - 1 : d
    }

    /// `YYYY-MM-DD` (proleptic Gregorian calendar; the civil-from-days algorithm of
    /// H. Hinnant, "chrono-compatible low-level date algorithms").
    public var dayText: String {
        let z = day + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        let y = yoe + era * 400 + (m <= 2 ? 1 : 0)
        func two(_ n: Int64) -> String { n < 10 ? "0\(n)" : "\(n)" }
        return "\(y)-\(two(m))-\(two(d))"
    }

    /// Parses `YYYY-MM-DD` (years 1970…9999, a real date); nil otherwise.
    public static func day(fromText text: String) -> Int64? {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0].count == 4, parts[1].count == 2, parts[2].count == 2,
              parts.allSatisfy({ $0.utf8.allSatisfy { $0 >= 0x30 && $0 <= 0x39 } }),
              let y = Int64(parts[0]), let m = Int64(parts[1]), let d = Int64(parts[2]),
              y >= 1970, (1...12).contains(m), d >= 1 else { return nil }
        let yy = m <= 2 ? y - 1 : y
        let era = yy / 400
        let yoe = yy - era * 400
        let doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        let day = era * 146_097 + doe - 719_468
        // Reject 02-30 and the like: the day must print back as given.
        guard DataUsage(day: day, sentBytes: 0, receivedBytes: 0).dayText == text else { return nil }
        return day
    }
}

/// Backend/operator → device on the request or broadcast topic (spec §3.5). The seed's
/// commands keep their names and members; every command may carry a request id.
public struct Command: Hashable, Sendable {
    public enum Kind: Hashable, Sendable {
        /// Reboot the device (seed). Replied to before rebooting.
        case reboot
        /// Read a config key (seed); only keys on the device's allow-list.
        case getConfig(key: String)
        /// Write a config key (seed); only keys on the device's allow-list, values checked.
        case setConfig(key: String, value: ConfigValue)
        /// Seed: send a range of readings. `min`/`max` nil mean the seed's "-" / "+".
        case sendMeasurements(min: MeasurementBound?, max: MeasurementBound?, count: Int64?)
        /// Resend `range` of `epoch` (nil: the current epoch) as batches marked with the request id.
        case replay(epoch: Epoch?, range: SequenceRange)
        /// Publish a fresh status message and reply with it.
        case status
        /// Enable / disable measuring (`measurement:enabled`).
        case start
        case stop
        /// Set the measuring interval.
        case setInterval(milliseconds: Int64)
    }

    /// Request id echoed in the reply; nil for seed-style commands without one.
    public var requestID: String?
    public var kind: Kind

    public init(requestID: String? = nil, kind: Kind) {
        self.requestID = requestID
        self.kind = kind
    }

    /// The wire name (`"get_config"`...).
    public var name: String {
        switch kind {
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

/// A `set_config` value as it came: the seed takes a JSON string or number, stores it as text
/// and echoes it back in the same JSON type (spec §3.5). Booleans are not config values: the
/// seed's handler dies on one, so the decoder refuses them.
public enum ConfigValue: Hashable, Sendable, ExpressibleByStringLiteral, CustomStringConvertible {
    case string(String)
    case integer(Int64)
    case double(Double)

    public init(stringLiteral value: String) { self = .string(value) }

    /// The value as text (what is parsed and stored in Redis).
    public var text: String {
        switch self {
        case .string(let s): return s
        case .integer(let i): return String(i)
        case .double(let d): return String(d)
        }
    }

    public var description: String { text }

    /// `text` in the JSON type of `self`: a string stays a string; for a number, `text` is read
    /// back as an integer when it is one, else as a double (a text that is no number stays text).
    public func sameKind(_ text: String) -> ConfigValue {
        guard case .string = self else {
            if let i = Int64(text) { return .integer(i) }
            if let d = Double(text), d.isFinite { return .double(d) }
            return .string(text)
        }
        return .string(text)
    }
}

/// A Redis stream id as the seed's tooling sends for `send_measurements` (`1700000000000-0`,
/// or with XRANGE's `(` prefix for an exclusive bound). It stands for the wall-clock time
/// (ms since 1970) the seed appended a reading at; the device maps it onto the times of its
/// records. The log keeps whole milliseconds, so the part after `-` (which orders entries
/// within one millisecond in Redis) is checked but does not narrow the bound, and `(`
/// excludes the whole millisecond. A digit string without `-` is a sequence number, not a
/// stream id (spec §3.5).
public struct RedisStreamID: Hashable, Sendable, CustomStringConvertible {
    public var milliseconds: UInt64
    /// `(` prefix: the bound itself is excluded.
    public var exclusive: Bool

    public init(milliseconds: UInt64, exclusive: Bool = false) {
        self.milliseconds = milliseconds
        self.exclusive = exclusive
    }

    /// Parses `ms-seq`, `(ms-seq` or `(ms` (decimal digits); nil for anything else.
    public init?(_ text: String) {
        var rest = Substring(text)
        exclusive = rest.first == "("
        if exclusive { rest = rest.dropFirst() }
        let parts = rest.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
        func number(_ s: Substring) -> UInt64? {
            guard !s.isEmpty, s.utf8.count <= 20, s.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
            return UInt64(s)
        }
        guard let ms = number(parts[0]), parts.count == 2 ? number(parts[1]) != nil : exclusive else { return nil }
        milliseconds = ms
    }

    /// The wire form, always with a sequence part so it never reads as a sequence number.
    public var description: String { (exclusive ? "(" : "") + String(milliseconds) + "-0" }
}

/// One end of a `send_measurements` range: a sequence number of the log, or a Redis stream id
/// (a time) as the seed's tooling sends.
public enum MeasurementBound: Hashable, Sendable, CustomStringConvertible {
    case sequence(SequenceNumber)
    case streamID(RedisStreamID)

    public var description: String {
        switch self {
        case .sequence(let s): return s.description
        case .streamID(let id): return id.description
        }
    }
}

/// Why a command failed; the raw values are the wire names (spec §3.6).
public enum CommandErrorCode: String, Hashable, Sendable, CaseIterable {
    case malformed = "malformed"
    case unknownCommand = "unknown-command"
    case invalidArgument = "invalid-argument"
    case notAllowed = "not-allowed"
    case unsupportedVersion = "unsupported-version"
    case failed = "failed"
}

/// Device → backend on the response topic (QoS 1, not retained), one per command (spec §3.6).
public struct CommandResponse: Hashable, Sendable {
    public var requestID: String?
    /// The command's wire name, or what was sent when it was not understood (seed: `"command"`).
    public var command: String
    /// nil on success.
    public var error: CommandErrorCode?
    /// Human-readable detail (always set for errors).
    public var message: String?
    /// Seed-compatible members for get_config / set_config (`value` in the JSON type the
    /// set_config command used, like the seed's echo).
    public var key: String?
    public var value: ConfigValue?
    /// For `replay` / `send_measurements`: the range that was resent, and ranges answered
    /// with `not-retained` loss markers.
    public var resent: SequenceRange?
    public var notRetained: [SequenceRange]
    /// For `status`: the status that was published.
    public var status: Status?

    public init(requestID: String?, command: String, error: CommandErrorCode? = nil, message: String? = nil,
                key: String? = nil, value: ConfigValue? = nil, resent: SequenceRange? = nil,
                notRetained: [SequenceRange] = [], status: Status? = nil) {
        self.requestID = requestID
        self.command = command
        self.error = error
        self.message = message
        self.key = key
        self.value = value
        self.resent = resent
        self.notRetained = notRetained
        self.status = status
    }

    public var ok: Bool { error == nil }
}
