// The protocol layer of the JSON decoder: members read as the protocol's value types, each
// within its limits (spec/protocol.md §3.1; see SyncCodec.swift).

import FieldlogCore

extension Fields {
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
}

extension SyncCodec {
    static func range(_ v: JSONValue, path: String) throws(SyncDecodingError) -> SequenceRange {
        guard case .array(let pair) = v, pair.count == 2 else {
            throw SyncDecodingError(.invalidMessage, "\(path) must be a [first, last] pair")
        }
        let lo = try Fields.sequenceValue(pair[0], path: path + "[0]", allowZero: false)
        let hi = try Fields.sequenceValue(pair[1], path: path + "[1]", allowZero: false)
        guard lo <= hi else { throw SyncDecodingError(.invalidMessage, "\(path) first \(lo) is after last \(hi)") }
        return SequenceRange(checked: lo, hi)
    }
}
