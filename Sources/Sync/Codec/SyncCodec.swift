// SyncCodec: the JSON encoding of protocol v1 messages (spec/protocol.md §3).
//
// Encoding is deterministic: fixed member order, so equal messages give equal bytes.
// Decoding is strict and total: every input either gives a message whose fields are all
// within the protocol's limits, or a `SyncDecodingError` whose `reason` is one of the
// dead-letter classes of spec §5.2 and whose message says what was wrong. It comes in layers,
// one file each:
//   JSONFields.swift       the wire: the size limit before any parsing, a JSON object, version
//                          and type (`envelope`), members read by JSON type, unknown ones
//                          rejected (v1 is strict; extensions get a new version)
//   ProtocolFields.swift   the protocol's value types: sequence numbers, ranges, device ids,
//                          epochs, timestamps, request ids, each within its limits (§3.1)
//   MessageDecoding.swift  batches (tiling, rejected records §5.3), acks, statuses, command
//                          responses: the rules of each message
//   CommandDecoding.swift  commands, seed-style ones included (§3.5)
// The compact batch encoding (§3.7) is CompactBatch.swift.

import FieldlogCore

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
}
