// Commands (spec/protocol.md §3.5), as the backend and the seed's tools send them, and the
// error replies a command that does not decode gets (§3.6): the command layer of the JSON
// decoder (see SyncCodec.swift).

import FieldlogCore

extension SyncCodec {
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
