// The wire layer of the JSON decoder: from a message's bytes to its members (see SyncCodec.swift).

import FieldlogCore

extension SyncCodec {
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
