// SyncCodec: the JSON encoding of protocol v1 messages (spec/protocol.md §3).
//
// Decoding is strict and total: every input either gives a message whose fields are all
// within the protocol's limits, or a `SyncDecodingError` whose `reason` is one of the
// dead-letter classes of spec §5.2 and whose message says what was wrong. The size limit
// is checked before any parsing. Unknown members are rejected (v1 is strict; extensions
// get a new version). Encoding is deterministic: fixed member order, so equal messages
// give equal bytes.

import FieldlogCore

/// The dead-letter classes of spec §5.2. Raw values are the names stored and counted.
public enum DeadLetterReason: String, Hashable, Sendable, CaseIterable {
    /// Larger than `ProtocolLimits.maxMessageBytes` (checked before parsing).
    case oversize = "oversize"
    /// Not JSON, or not UTF-8, or trailing data, duplicate keys, too deep.
    case malformedJSON = "malformed-json"
    /// A compact batch (§3.7) whose bytes cannot be read: truncated, a corrupt zlib stream, an
    /// inflated size other than the declared one, non-canonical varints, invalid UTF-8, trailing bytes.
    case malformedCompact = "malformed-compact"
    /// `v` missing or not a version this receiver speaks.
    case unknownVersion = "unknown-version"
    /// Valid JSON of the right version, but a member missing, of the wrong type, out of
    /// its limits, unknown, or the wrong `type` for the topic.
    case invalidMessage = "invalid-message"
    /// The message's `device` differs from the device in its topic.
    case deviceMismatch = "device-mismatch"
    /// Sequence numbers in a batch not strictly ascending (a regression or a duplicate).
    case sequenceRegression = "sequence-regression"
    /// Records and loss markers do not exactly cover the batch's `first...last`.
    case rangeMismatch = "range-mismatch"
    /// The topic does not match any subscribed template.
    case unknownTopic = "unknown-topic"
    /// One record of an otherwise valid batch that the receiver could not accept (§5.3); the
    /// record is kept aside and counted as accounted for.
    case rejectedRecord = "rejected-record"
    /// A seed-format (legacy) value list that could not be read (§6.3).
    case legacyMalformed = "legacy-malformed"
    /// A valid message the database refused for good (a data or constraint error, or an error
    /// that persisted through every retry); kept aside with the database's reason (§5.2).
    case storeRefused = "store-refused"
}

/// Why bytes could not be decoded into a message.
public struct SyncDecodingError: Error, Hashable, Sendable, CustomStringConvertible {
    public var reason: DeadLetterReason
    public var message: String
    public init(_ reason: DeadLetterReason, _ message: String) {
        self.reason = reason
        self.message = message
    }
    public var description: String { "\(reason.rawValue): \(message)" }
}

/// Why a command could not be understood; carries what is needed to send an error reply.
public struct CommandDecodingError: Error, Hashable, Sendable, CustomStringConvertible {
    public var requestID: String?
    public var command: String?
    public var code: CommandErrorCode
    public var message: String
    public var description: String { "\(code.rawValue): \(message)" }

    /// The error reply for this failure.
    public var response: CommandResponse {
        CommandResponse(requestID: requestID, command: command ?? "", error: code, message: message)
    }
}

/// Encoder and decoder of protocol v1 messages.
public enum SyncCodec {
    /// MQTT v5 content type set on every published message.
    public static let contentType = "application/vnd.fieldlog.v1+json"

    // MARK: Encoding

    public static func encode(_ b: Batch) -> [UInt8] { JSONWriter.encode(json(b)) }
    public static func encode(_ a: Ack) -> [UInt8] { JSONWriter.encode(json(a)) }
    public static func encode(_ s: Status) -> [UInt8] { JSONWriter.encode(json(s)) }
    public static func encode(_ c: Command) -> [UInt8] { JSONWriter.encode(json(c)) }
    public static func encode(_ r: CommandResponse) -> [UInt8] { JSONWriter.encode(json(r)) }

    static func seq(_ s: SequenceNumber) -> JSONValue { .integer(Int64(s.rawValue)) }

    static func json(_ r: LogRecord) -> JSONValue {
        var m: [(String, JSONValue)] = [("seq", seq(r.sequence)), ("ts", .integer(r.timestamp.unixMilliseconds))]
        if r.timestamp.clockUnsynchronized { m.append(("unsync", .bool(true))) }
        m.append(("values", .object(r.values.sorted.map { (name, value) in
            switch value {
            case .number(let d): return (name, .double(d))
            case .text(let s): return (name, .string(s))
            }
        })))
        if !r.missingSensors.isEmpty { m.append(("missing", .array(r.missingSensors.map { .string($0) }))) }
        return .object(m)
    }

    static func json(_ l: LossMarker) -> JSONValue {
        var m: [(String, JSONValue)] = [("first", seq(l.range.first)), ("last", seq(l.range.last)),
                                        ("reason", .string(l.reason.rawValue)), ("at", .integer(l.recordedAtUnixMilliseconds))]
        if !l.detail.isEmpty { m.append(("detail", .string(l.detail))) }
        return .object(m)
    }

    static func json(_ b: Batch) -> JSONValue {
        var m: [(String, JSONValue)] = [
            ("v", .integer(syncProtocolVersion)), ("type", .string("batch")),
            ("device", .string(b.device.rawValue)), ("epoch", .string(b.epoch.hex)),
            ("first", seq(b.range.first)), ("last", seq(b.range.last)),
            ("records", .array(b.records.map(json))),
        ]
        if !b.losses.isEmpty { m.append(("losses", .array(b.losses.map(json)))) }
        if let r = b.replayRequestID { m.append(("replay", .string(r))) }
        return .object(m)
    }

    static func json(_ r: SequenceRange) -> JSONValue { .array([seq(r.first), seq(r.last)]) }

    static func json(_ a: Ack) -> JSONValue {
        var m: [(String, JSONValue)] = [
            ("v", .integer(syncProtocolVersion)), ("type", .string("ack")),
            ("device", .string(a.device.rawValue)), ("epoch", .string(a.epoch.hex)),
            ("through", seq(a.through)),
        ]
        if let s = a.stored { m.append(("stored", json(s))) }
        if !a.rejected.isEmpty { m.append(("rejected", .array(a.rejected.map(seq)))) }
        if !a.missing.isEmpty { m.append(("missing", .array(a.missing.map(json)))) }
        return .object(m)
    }

    static func json(_ s: Status) -> JSONValue {
        var m: [(String, JSONValue)] = [
            ("v", .integer(syncProtocolVersion)), ("type", .string("status")),
            ("device", .string(s.device.rawValue)), ("state", .string(s.state.rawValue)),
        ]
        if let e = s.epoch { m.append(("epoch", .string(e.hex))) }
        if let h = s.head { m.append(("head", seq(h))) }
        if let a = s.acked { m.append(("acked", seq(a))) }
        if let b = s.backlog { m.append(("backlog", .integer(Int64(b)))) }
        if let t = s.atUnixMilliseconds { m.append(("at", .integer(t))) }
        if let me = s.measuring { m.append(("measuring", .bool(me))) }
        if let u = s.dataUsage {
            m.append(("data_day", .string(u.dayText)))
            m.append(("data_sent", .integer(u.sentBytes)))
            m.append(("data_received", .integer(u.receivedBytes)))
        }
        return .object(m)
    }

    static func json(_ c: Command) -> JSONValue {
        var m: [(String, JSONValue)] = [("v", .integer(syncProtocolVersion)), ("command", .string(c.name))]
        if let id = c.requestID { m.append(("id", .string(id))) }
        switch c.kind {
        case .reboot, .status, .start, .stop: break
        case .getConfig(let key): m.append(("key", .string(key)))
        case .setConfig(let key, let value): m.append(("key", .string(key))); m.append(("value", json(value)))
        case .sendMeasurements(let lo, let hi, let count):
            m.append(("min_id", lo.map(json) ?? .string("-")))
            m.append(("max_id", hi.map(json) ?? .string("+")))
            if let count { m.append(("count", .integer(count))) }
        case .replay(let epoch, let range):
            if let epoch { m.append(("epoch", .string(epoch.hex))) }
            m.append(("from", seq(range.first)))
            m.append(("to", seq(range.last)))
        case .setInterval(let ms):
            m.append(("seconds", ms % 1000 == 0 ? .integer(ms / 1000) : .double(Double(ms) / 1000)))
        }
        return .object(m)
    }

    static func json(_ v: ConfigValue) -> JSONValue {
        switch v {
        case .string(let s): return .string(s)
        case .integer(let i): return .integer(i)
        case .double(let d): return .double(d)
        }
    }

    static func json(_ b: MeasurementBound) -> JSONValue {
        switch b {
        case .sequence(let s): return seq(s)
        case .streamID(let id): return .string(id.description)
        }
    }

    static func json(_ r: CommandResponse) -> JSONValue {
        var m: [(String, JSONValue)] = [("v", .integer(syncProtocolVersion)), ("command", .string(r.command))]
        if let id = r.requestID { m.append(("id", .string(id))) }
        m.append(("ok", .bool(r.ok)))
        if let e = r.error { m.append(("error", .string(e.rawValue))) }
        if let msg = r.message { m.append(("message", .string(msg))) }
        if let k = r.key { m.append(("key", .string(k))) }
        if let v = r.value { m.append(("value", json(v))) }
        if let rs = r.resent { m.append(("resent", json(rs))) }
        if !r.notRetained.isEmpty { m.append(("not_retained", .array(r.notRetained.map(json)))) }
        if let s = r.status { m.append(("status", json(s))) }
        return .object(m)
    }

    // MARK: Decoding

    /// Size check, JSON parse, object check and version check, shared by all messages.
    static func envelope(_ bytes: [UInt8], maxBytes: Int, type: String?) throws(SyncDecodingError) -> Fields {
        guard bytes.count <= maxBytes else {
            throw SyncDecodingError(.oversize, "message is \(bytes.count) bytes; at most \(maxBytes) allowed")
        }
        let value: JSONValue
        do { value = try JSONReader.parse(bytes) } catch { throw SyncDecodingError(.malformedJSON, error.description) }
        guard case .object = value else { throw SyncDecodingError(.malformedJSON, "message must be a JSON object, got \(value.kindName)") }
        var f = Fields(value, path: "")
        guard let v = f.take("v") else { throw SyncDecodingError(.unknownVersion, "member \"v\" (protocol version) is missing") }
        guard case .integer(syncProtocolVersion) = v else {
            throw SyncDecodingError(.unknownVersion, "protocol version \(describe(v)) is not supported; this receiver speaks \(syncProtocolVersion)")
        }
        if let type {
            let t = try f.string("type", maxBytes: 16)
            guard t == type else { throw SyncDecodingError(.invalidMessage, "expected a message of type \"\(type)\", got \"\(t)\"") }
        }
        return f
    }

    static func describe(_ v: JSONValue) -> String {
        let s = String(decoding: JSONWriter.encode(v), as: UTF8.self)
        return s.utf8.count > 40 ? String(s.prefix(40)) + "…" : s
    }

    /// Decodes a batch. `expectedDevice` (from the topic) is compared with the batch's device.
    /// Records with invalid content but a readable sequence number are not an error: they are
    /// returned in `Batch.rejected` (spec §5.3).
    public static func decodeBatch(_ bytes: [UInt8], expectedDevice: DeviceID? = nil,
                                   maxBytes: Int = ProtocolLimits.maxMessageBytes) throws(SyncDecodingError) -> Batch {
        var f = try envelope(bytes, maxBytes: maxBytes, type: "batch")
        let device = try f.device("device")
        if let expectedDevice, expectedDevice != device {
            throw SyncDecodingError(.deviceMismatch, "batch names device \"\(device)\" but was published on the topic of \"\(expectedDevice)\"")
        }
        let epoch = try f.epoch("epoch")
        let first = try f.sequence("first", allowZero: false)
        let last = try f.sequence("last", allowZero: false)
        guard first <= last else { throw SyncDecodingError(.sequenceRegression, "batch range first \(first) is after last \(last)") }
        let range = SequenceRange(checked: first, last)
        let recordItems = try f.array("records", maxCount: ProtocolLimits.maxRecordsPerBatch)
        let lossItems = try f.optionalArray("losses", maxCount: ProtocolLimits.maxLossesPerBatch) ?? []
        let replay = try f.has("replay") ? f.requestID("replay") : nil
        try f.finish()

        var records: [LogRecord] = []
        var rejected: [RejectedRecord] = []
        records.reserveCapacity(recordItems.count)
        // Covered sequence numbers, as (first, last, what) in input order, to check tiling.
        var spans: [(SequenceNumber, SequenceNumber)] = []
        spans.reserveCapacity(recordItems.count + lossItems.count)
        var previous = SequenceNumber.zero
        for (k, item) in recordItems.enumerated() {
            guard case .object = item else {
                throw SyncDecodingError(.invalidMessage, "records[\(k)] must be an object, got \(item.kindName)")
            }
            var rf = Fields(item, path: "records[\(k)].")
            let s = try rf.sequence("seq", allowZero: false)
            guard s > previous else {
                throw SyncDecodingError(.sequenceRegression, "records[\(k)].seq \(s) is not after the previous record's \(previous)")
            }
            previous = s
            spans.append((s, s))
            do {
                records.append(try record(&rf, sequence: s))
            } catch {
                rejected.append(RejectedRecord(sequence: s, reason: error.message, excerpt: truncate(describeFull(item))))
            }
        }
        var losses: [LossMarker] = []
        var previousLoss = SequenceNumber.zero
        for (k, item) in lossItems.enumerated() {
            guard case .object = item else {
                throw SyncDecodingError(.invalidMessage, "losses[\(k)] must be an object, got \(item.kindName)")
            }
            var lf = Fields(item, path: "losses[\(k)].")
            let lo = try lf.sequence("first", allowZero: false)
            let hi = try lf.sequence("last", allowZero: false)
            guard lo <= hi, lo > previousLoss else {
                throw SyncDecodingError(.sequenceRegression, "losses[\(k)] range \(lo)…\(hi) is empty or not after the previous loss marker")
            }
            previousLoss = hi
            let reasonText = try lf.string("reason", maxBytes: 32)
            guard let reason = LossReason(rawValue: reasonText) else {
                throw SyncDecodingError(.invalidMessage, "losses[\(k)].reason \(reasonText.debugDescription) is not one of \(LossReason.allCases.map(\.rawValue))")
            }
            let at = try lf.timestamp("at")
            let detail = try lf.optionalString("detail", maxBytes: ProtocolLimits.maxTextBytes) ?? ""
            try lf.finish()
            losses.append(LossMarker(range: SequenceRange(checked: lo, hi), reason: reason, recordedAtUnixMilliseconds: at, detail: detail))
            spans.append((lo, hi))
        }
        // Records and losses together must tile first...last exactly.
        try BatchTiling.check(range: range, spans: &spans)
        return Batch(device: device, epoch: epoch, range: range, records: records, losses: losses, replayRequestID: replay, rejected: rejected)
    }

    static func truncate(_ s: String) -> String {
        guard s.utf8.count > ProtocolLimits.maxTextBytes else { return s }
        var out = ""
        for ch in s {
            if out.utf8.count + ch.utf8.count > ProtocolLimits.maxTextBytes - 3 { break }
            out.append(ch)
        }
        return out + "…"
    }

    /// A record's JSON text, truncated to `ProtocolLimits.maxTextBytes` (for rejected records).
    public static func excerpt(of r: LogRecord) -> String { truncate(describeFull(json(r))) }

    static func describeFull(_ v: JSONValue) -> String { String(decoding: JSONWriter.encode(v), as: UTF8.self) }

    /// The content of one record after its `seq`; errors here reject only this record.
    static func record(_ rf: inout Fields, sequence: SequenceNumber) throws(SyncDecodingError) -> LogRecord {
        let ts = try rf.timestamp("ts")
        let unsync = try rf.optionalBool("unsync") ?? false
        guard let valuesJSON = rf.take("values") else { throw rf.missing("values") }
        guard case .object(let members) = valuesJSON else {
            throw SyncDecodingError(.invalidMessage, "\(rf.path)values must be an object, got \(valuesJSON.kindName)")
        }
        guard members.count <= SensorValues.maxSensors else {
            throw SyncDecodingError(.invalidMessage, "\(rf.path)values holds \(members.count) sensors; at most \(SensorValues.maxSensors) allowed")
        }
        var dict: [String: SensorValue] = [:]
        for (name, v) in members {
            switch v {
            case .integer(let i): dict[name] = .number(Double(i))
            case .double(let d): dict[name] = .number(d)
            case .string(let s): dict[name] = .text(s)
            default:
                throw SyncDecodingError(.invalidMessage, "\(rf.path)values.\(name) must be a number or a string, got \(v.kindName)")
            }
        }
        let values: SensorValues
        do { values = try SensorValues(dict) } catch {
            throw SyncDecodingError(.invalidMessage, "\(rf.path)values: \(error.description)")
        }
        var missing: [String] = []
        if let items = try rf.optionalArray("missing", maxCount: ProtocolLimits.maxMissingSensors) {
            for (k, item) in items.enumerated() {
                guard case .string(let name) = item else {
                    throw SyncDecodingError(.invalidMessage, "\(rf.path)missing[\(k)] must be a string")
                }
                do { try SensorValues.validate(name: name) } catch {
                    throw SyncDecodingError(.invalidMessage, "\(rf.path)missing[\(k)]: \(error.description)")
                }
                missing.append(name)
            }
        }
        try rf.finish()
        return LogRecord(sequence: sequence, timestamp: DeviceTimestamp(unixMilliseconds: ts, clockUnsynchronized: unsync),
                         values: values, missingSensors: missing)
    }

    static func range(_ v: JSONValue, path: String) throws(SyncDecodingError) -> SequenceRange {
        guard case .array(let pair) = v, pair.count == 2 else {
            throw SyncDecodingError(.invalidMessage, "\(path) must be a [first, last] pair")
        }
        let lo = try Fields.sequenceValue(pair[0], path: path + "[0]", allowZero: false)
        let hi = try Fields.sequenceValue(pair[1], path: path + "[1]", allowZero: false)
        guard lo <= hi else { throw SyncDecodingError(.invalidMessage, "\(path) first \(lo) is after last \(hi)") }
        return SequenceRange(checked: lo, hi)
    }

    /// Decodes an ack. `expectedDevice` (from the topic) is compared with the ack's device.
    public static func decodeAck(_ bytes: [UInt8], expectedDevice: DeviceID? = nil,
                                 maxBytes: Int = 16_384) throws(SyncDecodingError) -> Ack {
        var f = try envelope(bytes, maxBytes: maxBytes, type: "ack")
        let device = try f.device("device")
        if let expectedDevice, expectedDevice != device {
            throw SyncDecodingError(.deviceMismatch, "ack names device \"\(device)\" but was published on the topic of \"\(expectedDevice)\"")
        }
        let epoch = try f.epoch("epoch")
        let through = try f.sequence("through", allowZero: true)
        let stored = try f.take("stored").map { v throws(SyncDecodingError) in try range(v, path: "stored") }
        var rejected: [SequenceNumber] = []
        for (k, v) in (try f.optionalArray("rejected", maxCount: ProtocolLimits.maxAckListEntries) ?? []).enumerated() {
            rejected.append(try Fields.sequenceValue(v, path: "rejected[\(k)]", allowZero: false))
        }
        var missing: [SequenceRange] = []
        for (k, v) in (try f.optionalArray("missing", maxCount: ProtocolLimits.maxAckListEntries) ?? []).enumerated() {
            missing.append(try range(v, path: "missing[\(k)]"))
        }
        try f.finish()
        return Ack(device: device, epoch: epoch, through: through, stored: stored, rejected: rejected, missing: missing)
    }

    /// Decodes a status message (including a last will).
    public static func decodeStatus(_ bytes: [UInt8], expectedDevice: DeviceID? = nil,
                                    maxBytes: Int = 16_384) throws(SyncDecodingError) -> Status {
        var f = try envelope(bytes, maxBytes: maxBytes, type: "status")
        let device = try f.device("device")
        if let expectedDevice, expectedDevice != device {
            throw SyncDecodingError(.deviceMismatch, "status names device \"\(device)\" but was published on the topic of \"\(expectedDevice)\"")
        }
        let stateText = try f.string("state", maxBytes: 16)
        guard let state = DeviceState(rawValue: stateText) else {
            throw SyncDecodingError(.invalidMessage, "state \(stateText.debugDescription) must be \"online\" or \"offline\"")
        }
        let epoch = try f.has("epoch") ? f.epoch("epoch") : nil
        let head = try f.has("head") ? f.sequence("head", allowZero: true) : nil
        let acked = try f.has("acked") ? f.sequence("acked", allowZero: true) : nil
        let backlog = try f.has("backlog") ? f.integer("backlog") : nil
        let at = try f.has("at") ? f.timestamp("at") : nil
        let measuring = try f.optionalBool("measuring")
        var dataUsage: DataUsage?
        if f.has("data_day") || f.has("data_sent") || f.has("data_received") {
            let text = try f.string("data_day", maxBytes: 10)
            guard let day = DataUsage.day(fromText: text) else {
                throw SyncDecodingError(.invalidMessage, "data_day \(text.debugDescription) is not a date YYYY-MM-DD")
            }
            let sent = try f.integer("data_sent"), received = try f.integer("data_received")
            guard sent >= 0, received >= 0 else { throw SyncDecodingError(.invalidMessage, "data_sent and data_received must not be negative") }
            dataUsage = DataUsage(day: day, sentBytes: sent, receivedBytes: received)
        }
        try f.finish()
        if let head, let acked, acked > head {
            throw SyncDecodingError(.invalidMessage, "acked \(acked) is after head \(head)")
        }
        let s = Status(device: device, state: state, epoch: epoch, head: head, acked: acked, atUnixMilliseconds: at, measuring: measuring,
                       dataUsage: dataUsage)
        if let backlog, backlog != s.backlog.map({ Int64($0) }) {
            throw SyncDecodingError(.invalidMessage, "backlog \(backlog) is not head − acked")
        }
        return s
    }

    /// Decodes a command response.
    public static func decodeCommandResponse(_ bytes: [UInt8], maxBytes: Int = 65_536) throws(SyncDecodingError) -> CommandResponse {
        var f = try envelope(bytes, maxBytes: maxBytes, type: nil)
        let command = try f.string("command", maxBytes: ProtocolLimits.maxCommandNameBytes)
        let id = try f.has("id") ? f.requestID("id") : nil
        let ok = try f.bool("ok")
        var code: CommandErrorCode?
        if let e = try f.optionalString("error", maxBytes: 32) {
            guard let c = CommandErrorCode(rawValue: e) else {
                throw SyncDecodingError(.invalidMessage, "error \(e.debugDescription) is not one of \(CommandErrorCode.allCases.map(\.rawValue))")
            }
            code = c
        }
        guard ok == (code == nil) else { throw SyncDecodingError(.invalidMessage, "\"ok\" must be false exactly when \"error\" is set") }
        let message = try f.optionalString("message", maxBytes: ProtocolLimits.maxTextBytes)
        let key = try f.optionalString("key", maxBytes: ProtocolLimits.maxKeyBytes)
        let value = try f.take("value").map { v throws(SyncDecodingError) in try configValue(v) }
        let resent = try f.take("resent").map { v throws(SyncDecodingError) in try range(v, path: "resent") }
        var notRetained: [SequenceRange] = []
        for (k, v) in (try f.optionalArray("not_retained", maxCount: ProtocolLimits.maxAckListEntries) ?? []).enumerated() {
            notRetained.append(try range(v, path: "not_retained[\(k)]"))
        }
        var status: Status?
        if let s = f.take("status") {
            status = try decodeStatus(JSONWriter.encode(s))
        }
        try f.finish()
        return CommandResponse(requestID: id, command: command, error: code, message: message, key: key, value: value,
                               resent: resent, notRetained: notRetained, status: status)
    }

    /// A config value (set_config, and its echo in a response): a string of at most
    /// `ProtocolLimits.maxTextBytes` or a number. A boolean is refused: the seed's handler
    /// dies on one (redis-py cannot store it), so no seed tool sends one that worked.
    static func configValue(_ v: JSONValue) throws(SyncDecodingError) -> ConfigValue {
        switch v {
        case .string(let s):
            guard s.utf8.count <= ProtocolLimits.maxTextBytes else {
                throw SyncDecodingError(.invalidMessage, "value is longer than \(ProtocolLimits.maxTextBytes) bytes")
            }
            return .string(s)
        case .integer(let i): return .integer(i)
        case .double(let d): return .double(d)
        case .bool(let b):
            throw SyncDecodingError(.invalidMessage, "value must be a string or a number, got the boolean \(b); send 1 or 0")
        default: throw SyncDecodingError(.invalidMessage, "value must be a string or a number, got \(v.kindName)")
        }
    }

    /// What Python's int() reads from a string, for digits: optional blanks around, an optional
    /// `+`, then decimal digits (no sign `-`: a count is never negative). nil otherwise.
    static func wholeNumber(_ s: String) -> Int64? {
        let blank: (UInt8) -> Bool = { $0 == 0x20 || ($0 >= 0x09 && $0 <= 0x0D) }
        var bytes = s.utf8.drop(while: blank)
        while let last = bytes.last, blank(last) { bytes = bytes.dropLast() }
        if bytes.first == UInt8(ascii: "+") { bytes = bytes.dropFirst() }
        guard !bytes.isEmpty, bytes.count <= 19, bytes.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
        return Int64(String(decoding: bytes, as: UTF8.self))
    }

    /// Decodes a command. Seed-style commands (no `"v"`, no `"id"`, any letter case of the
    /// name) are accepted. Failures carry the request id and name when they could be read,
    /// so the device can send an error reply (spec §3.6).
    public static func decodeCommand(_ bytes: [UInt8], maxBytes: Int = 16_384) throws(CommandDecodingError) -> Command {
        func fail(_ code: CommandErrorCode, _ m: String, id: String? = nil, command: String? = nil) -> CommandDecodingError {
            CommandDecodingError(requestID: id, command: command, code: code, message: m)
        }
        guard bytes.count <= maxBytes else { throw fail(.malformed, "command is \(bytes.count) bytes; at most \(maxBytes) allowed") }
        let value: JSONValue
        do { value = try JSONReader.parse(bytes) } catch { throw fail(.malformed, error.description) }
        guard case .object = value else { throw fail(.malformed, "command must be a JSON object, got \(value.kindName)") }
        var f = Fields(value, path: "")
        // Read the id first so every later error can carry it.
        var id: String?
        if let idValue = f.take("id") {
            guard case .string(let s) = idValue, ProtocolLimits.isValidRequestID(s) else {
                throw fail(.malformed, "\"id\" must be 1…\(ProtocolLimits.maxRequestIDBytes) printable ASCII characters")
            }
            id = s
        }
        guard case .string(let rawName)? = f.take("command") else {
            throw fail(.malformed, "member \"command\" (a string) is missing", id: id)
        }
        let name = rawName.lowercased()
        if let v = f.take("v") {
            guard case .integer(syncProtocolVersion) = v else {
                throw fail(.unsupportedVersion, "protocol version \(describe(v)) is not supported; this device speaks \(syncProtocolVersion)", id: id, command: rawName)
            }
        }
        func arg<T>(_ body: (inout Fields) throws(SyncDecodingError) -> T) throws(CommandDecodingError) -> T {
            do { return try body(&f) } catch { throw fail(.invalidArgument, error.message, id: id, command: name) }
        }
        let kind: Command.Kind
        switch name {
        case "reboot": kind = .reboot
        case "status": kind = .status
        case "start": kind = .start
        case "stop": kind = .stop
        case "get_config":
            kind = .getConfig(key: try arg { f throws(SyncDecodingError) in try f.string("key", maxBytes: ProtocolLimits.maxKeyBytes) })
        case "set_config":
            let key = try arg { f throws(SyncDecodingError) in try f.string("key", maxBytes: ProtocolLimits.maxKeyBytes) }
            let value: ConfigValue = try arg { f throws(SyncDecodingError) in
                guard let v = f.take("value") else { throw f.missing("value") }
                return try configValue(v)
            }
            kind = .setConfig(key: key, value: value)
        case "send_measurements":
            kind = try arg { f throws(SyncDecodingError) in
                // The seed passes min_id, max_id and count to Redis' XRANGE: a bound is "-" / "+"
                // (open), a sequence number (integer or digit string), or a stream id.
                func bound(_ k: String, open: String) throws(SyncDecodingError) -> MeasurementBound? {
                    guard let v = f.take(k) else { return nil }
                    if case .string(let s) = v {
                        if s == open { return nil }
                        if let n = UInt64(s), n >= 1, n <= SequenceNumber.max.rawValue { return .sequence(SequenceNumber(n)) }
                        if let id = RedisStreamID(s) { return .streamID(id) }
                        throw SyncDecodingError(.invalidMessage, "\(k) must be \"\(open)\", a sequence number or a Redis stream id (like \"1700000000000-0\"), got \(s.debugDescription)")
                    }
                    return .sequence(try Fields.sequenceValue(v, path: k, allowZero: false))
                }
                let lo = try bound("min_id", open: "-")
                let hi = try bound("max_id", open: "+")
                switch (lo, hi) {
                case (.sequence(let a)?, .sequence(let b)?) where a > b:
                    throw SyncDecodingError(.invalidMessage, "min_id \(a) is after max_id \(b)")
                case (.streamID(let a)?, .streamID(let b)?) where a.milliseconds > b.milliseconds:
                    throw SyncDecodingError(.invalidMessage, "min_id \(a) is after max_id \(b)")
                default: break
                }
                var count: Int64?
                if let v = f.take("count") {
                    // The seed calls int() on it: a digit string counts too.
                    let c: Int64
                    switch v {
                    case .integer(let i): c = i
                    case .string(let s):
                        guard let i = wholeNumber(s) else {
                            throw SyncDecodingError(.invalidMessage, "count must be a whole number (or a string of one), got \(s.debugDescription)")
                        }
                        c = i
                    default:
                        throw SyncDecodingError(.invalidMessage, "count must be a whole number (or a string of one), got \(describe(v))")
                    }
                    guard c >= 1 else { throw SyncDecodingError(.invalidMessage, "count must be at least 1, got \(c)") }
                    count = c
                }
                return .sendMeasurements(min: lo, max: hi, count: count)
            }
        case "replay":
            kind = try arg { f throws(SyncDecodingError) in
                let epoch = try f.has("epoch") ? f.epoch("epoch") : nil
                let lo = try f.sequence("from", allowZero: false)
                let hi = try f.sequence("to", allowZero: false)
                guard lo <= hi else { throw SyncDecodingError(.invalidMessage, "from \(lo) is after to \(hi)") }
                return .replay(epoch: epoch, range: SequenceRange(checked: lo, hi))
            }
        case "set_interval":
            kind = try arg { f throws(SyncDecodingError) in
                guard let v = f.take("seconds") else { throw f.missing("seconds") }
                let seconds: Double
                switch v {
                case .integer(let i): seconds = Double(i)
                case .double(let d): seconds = d
                default: throw SyncDecodingError(.invalidMessage, "seconds must be a number, got \(v.kindName)")
                }
                guard seconds >= 0.01, seconds <= 86_400 else {
                    throw SyncDecodingError(.invalidMessage, "seconds must be within 0.01…86400, got \(seconds)")
                }
                return .setInterval(milliseconds: Int64((seconds * 1000).rounded()))
            }
        default:
            throw fail(.unknownCommand, "unknown command \(rawName.debugDescription); known are reboot, get_config, set_config, send_measurements, replay, status, start, stop, set_interval", id: id, command: rawName)
        }
        do { try f.finish() } catch { throw fail(.invalidArgument, error.message, id: id, command: name) }
        return Command(requestID: id, kind: kind)
    }
}

/// Reads members of one JSON object, remembering which were read so that `finish()` can
/// reject unknown ones.
struct Fields {
    private var members: [(String, JSONValue)]
    let path: String

    init(_ v: JSONValue, path: String) {
        guard case .object(let m) = v else { preconditionFailure("Fields over a non-object") }
        members = m
        self.path = path
    }

    mutating func take(_ key: String) -> JSONValue? {
        guard let k = members.firstIndex(where: { $0.0 == key }) else { return nil }
        return members.remove(at: k).1
    }

    func has(_ key: String) -> Bool { members.contains { $0.0 == key } }

    func missing(_ key: String) -> SyncDecodingError {
        SyncDecodingError(.invalidMessage, "member \"\(path)\(key)\" is missing")
    }

    func finish() throws(SyncDecodingError) {
        if let (k, _) = members.first {
            throw SyncDecodingError(.invalidMessage, "unknown member \"\(path)\(k)\"")
        }
    }

    mutating func string(_ key: String, maxBytes: Int) throws(SyncDecodingError) -> String {
        guard let v = take(key) else { throw missing(key) }
        guard case .string(let s) = v else { throw SyncDecodingError(.invalidMessage, "\(path)\(key) must be a string, got \(v.kindName)") }
        guard s.utf8.count <= maxBytes else {
            throw SyncDecodingError(.invalidMessage, "\(path)\(key) is \(s.utf8.count) bytes; at most \(maxBytes) allowed")
        }
        return s
    }

    mutating func optionalString(_ key: String, maxBytes: Int) throws(SyncDecodingError) -> String? {
        has(key) ? try string(key, maxBytes: maxBytes) : nil
    }

    mutating func bool(_ key: String) throws(SyncDecodingError) -> Bool {
        guard let v = take(key) else { throw missing(key) }
        guard case .bool(let b) = v else { throw SyncDecodingError(.invalidMessage, "\(path)\(key) must be true or false, got \(v.kindName)") }
        return b
    }

    mutating func optionalBool(_ key: String) throws(SyncDecodingError) -> Bool? {
        has(key) ? try bool(key) : nil
    }

    mutating func integer(_ key: String) throws(SyncDecodingError) -> Int64 {
        guard let v = take(key) else { throw missing(key) }
        guard case .integer(let i) = v else { throw SyncDecodingError(.invalidMessage, "\(path)\(key) must be an integer, got \(SyncCodec.describe(v))") }
        return i
    }

    /// A timestamp (ms since 1970, device wall clock) within `ProtocolLimits.timestampRange` (spec §3.1).
    mutating func timestamp(_ key: String) throws(SyncDecodingError) -> Int64 {
        guard let v = take(key) else { throw missing(key) }
        guard case .integer(let i) = v, ProtocolLimits.timestampRange.contains(i) else {
            throw SyncDecodingError(.invalidMessage, "\(path)\(key) must be an integer timestamp in ms within \(ProtocolLimits.timestampRange.lowerBound)…\(ProtocolLimits.timestampRange.upperBound), got \(SyncCodec.describe(v))")
        }
        return i
    }

    /// A request id: 1…`maxRequestIDBytes` printable ASCII characters without space (spec §3.1).
    mutating func requestID(_ key: String) throws(SyncDecodingError) -> String {
        guard let v = take(key) else { throw missing(key) }
        guard case .string(let s) = v, ProtocolLimits.isValidRequestID(s) else {
            throw SyncDecodingError(.invalidMessage, "\(path)\(key) must be 1…\(ProtocolLimits.maxRequestIDBytes) printable ASCII characters without space, got \(SyncCodec.describe(v))")
        }
        return s
    }

    static func sequenceValue(_ v: JSONValue, path: String, allowZero: Bool) throws(SyncDecodingError) -> SequenceNumber {
        guard case .integer(let i) = v, i >= (allowZero ? 0 : 1), UInt64(i) <= SequenceNumber.max.rawValue else {
            throw SyncDecodingError(.invalidMessage, "\(path) must be an integer sequence number within \(allowZero ? 0 : 1)…\(SequenceNumber.max), got \(SyncCodec.describe(v))")
        }
        return SequenceNumber(UInt64(i))
    }

    mutating func sequence(_ key: String, allowZero: Bool) throws(SyncDecodingError) -> SequenceNumber {
        guard let v = take(key) else { throw missing(key) }
        return try Self.sequenceValue(v, path: path + key, allowZero: allowZero)
    }

    mutating func device(_ key: String) throws(SyncDecodingError) -> DeviceID {
        let s = try string(key, maxBytes: 256)
        do { return try DeviceID(s) } catch { throw SyncDecodingError(.invalidMessage, "\(path)\(key): \(error.description)") }
    }

    mutating func epoch(_ key: String) throws(SyncDecodingError) -> Epoch {
        let s = try string(key, maxBytes: 32)
        guard s.utf8.count == 16, s.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }) else {
            throw SyncDecodingError(.invalidMessage, "\(path)\(key) must be 16 lowercase hex digits, got \(s.debugDescription)")
        }
        let e = Epoch(UInt64(s, radix: 16)!)
        guard e.rawValue != 0 else { throw SyncDecodingError(.invalidMessage, "\(path)\(key) must not be 0") }
        return e
    }

    mutating func array(_ key: String, maxCount: Int) throws(SyncDecodingError) -> [JSONValue] {
        guard let v = take(key) else { throw missing(key) }
        guard case .array(let items) = v else { throw SyncDecodingError(.invalidMessage, "\(path)\(key) must be an array, got \(v.kindName)") }
        guard items.count <= maxCount else {
            throw SyncDecodingError(.invalidMessage, "\(path)\(key) holds \(items.count) entries; at most \(maxCount) allowed")
        }
        return items
    }

    mutating func optionalArray(_ key: String, maxCount: Int) throws(SyncDecodingError) -> [JSONValue]? {
        has(key) ? try array(key, maxCount: maxCount) : nil
    }
}
