// Seed value lists (spec/protocol.md §6.3): readings from unmodified seed devices.
//
// The seed's `mqtthandler` publishes a JSON list per interval on
// `iot-projekt/device/<uuid>/values`, one object per Redis stream entry: `_id` (stream id
// "ms-n"), `_device_uuid`, `_device_type`, `_app_id`, `_app_name`, and one member per sensor
// value (as strings, since stream fields are strings). There are no sequence numbers and no
// acks, so these readings are stored de-duplicated by (device, `_id`), and the audit says such
// devices have no delivery guarantee. The decoder is the protocol's strict JSON reader (no
// duplicate members, exact integers, bounded nesting), so it is total and fuzzed like the rest.

import FieldlogCore

/// One reading of a seed device.
public struct LegacyReading: Hashable, Sendable {
    /// The Redis stream id, "ms-n" (at most 41 ASCII characters).
    public var streamID: String
    public var streamMilliseconds: Int64
    public var values: SensorValues
}

/// A seed values message.
public struct LegacyValues: Hashable, Sendable {
    public var device: DeviceID
    public var deviceType: String?
    public var appID: String?
    public var appName: String?
    public var readings: [LegacyReading]

    /// Most readings in one message.
    static let maxReadings = 10_000
    /// Longest `_device_type`, `_app_id`, `_app_name` kept (longer ones are cut).
    static let maxMetaBytes = 128
    /// Longest stream id ("ms-n": 20 + 1 + 20 digits).
    static let maxStreamIDBytes = 41

    /// Decodes a seed values list for the topic's `device`. Errors carry a dead-letter reason:
    /// `oversize`, `legacy-malformed` or `device-mismatch`.
    public static func decode(_ payload: [UInt8], device: DeviceID,
                              maxBytes: Int = ProtocolLimits.maxMessageBytes) throws(SyncDecodingError) -> LegacyValues {
        guard payload.count <= maxBytes else {
            throw SyncDecodingError(.oversize, "message is \(payload.count) bytes; at most \(maxBytes) allowed")
        }
        let json: JSONValue
        do { json = try JSONReader.parse(payload) } catch {
            throw SyncDecodingError(.legacyMalformed, "not JSON: \(error.description)")
        }
        guard case .array(let list) = json else {
            throw SyncDecodingError(.legacyMalformed, "expected a JSON list of readings, got \(json.kindName)")
        }
        guard list.count <= maxReadings else {
            throw SyncDecodingError(.oversize, "\(list.count) readings; at most \(maxReadings) allowed")
        }
        var message = LegacyValues(device: device, readings: [])
        message.readings.reserveCapacity(list.count)
        for (i, item) in list.enumerated() {
            guard case .object(let members) = item else {
                throw SyncDecodingError(.legacyMalformed, "reading \(i) is not a JSON object")
            }
            guard case .string(let id)? = item["_id"], let ms = streamMilliseconds(id) else {
                throw SyncDecodingError(.legacyMalformed, "reading \(i) has no valid `_id` (a Redis stream id \"ms-n\")")
            }
            if let uuid = item["_device_uuid"] {
                guard case .string(let u) = uuid, u == device.rawValue else {
                    throw SyncDecodingError(.deviceMismatch, "reading \(i) names device \(SyncCodec.describe(uuid)), the topic names \(device)")
                }
            }
            message.deviceType = message.deviceType ?? meta(item["_device_type"])
            message.appID = message.appID ?? meta(item["_app_id"])
            message.appName = message.appName ?? meta(item["_app_name"])
            var values: [String: SensorValue] = [:]
            for (name, raw) in members where !name.hasPrefix("_") {
                do throws(DomainError) { try SensorValues.validate(name: name) } catch {
                    throw SyncDecodingError(.legacyMalformed, "reading \(i): \(error.description)")
                }
                switch raw {
                case .string(let s):
                    if let d = number(s) { values[name] = .number(d) } else { values[name] = .text(s) }
                case .integer(let n): values[name] = .number(Double(n))
                case .double(let d): values[name] = .number(d)
                default:
                    throw SyncDecodingError(.legacyMalformed, "reading \(i): value of \(name) is \(raw.kindName); a string or a number is expected")
                }
            }
            do throws(DomainError) {
                message.readings.append(LegacyReading(streamID: id, streamMilliseconds: ms, values: try SensorValues(values)))
            } catch {
                throw SyncDecodingError(.legacyMalformed, "reading \(i): \(error.description)")
            }
        }
        return message
    }

    /// A finite number written as text ("21.5", " 3 "), as the seed's Python `float()` reads it; nil otherwise.
    static func number(_ s: String) -> Double? {
        let trimmed = s.utf8.drop { $0 == 0x20 || $0 == 0x09 }.reversed().drop { $0 == 0x20 || $0 == 0x09 }.reversed()
        guard !trimmed.isEmpty, trimmed.count <= 64,
              trimmed.allSatisfy({ (0x30...0x39).contains($0) || $0 == 0x2E || $0 == 0x2D || $0 == 0x2B || $0 == 0x65 || $0 == 0x45 }),
              let d = Double(String(decoding: Array(trimmed), as: UTF8.self)), d.isFinite else { return nil }
        return d
    }

    /// `_device_type`, `_app_id`, `_app_name`: a string or a number, cut to `maxMetaBytes`.
    static func meta(_ v: JSONValue?) -> String? {
        switch v {
        case .string(let s)?: return TextLimit.prefix(s, maxBytes: maxMetaBytes)
        case .integer(let n)?: return String(n)
        case .double(let d)?: return String(d)
        default: return nil
        }
    }

    /// The milliseconds of a Redis stream id "1621122796939-0" (digits only, the time within
    /// the protocol's timestamp range), nil when it is not one.
    public static func streamMilliseconds(_ id: String) -> Int64? {
        let bytes = Array(id.utf8)
        guard bytes.count <= maxStreamIDBytes, let dash = bytes.firstIndex(of: 0x2D), dash > 0, dash < bytes.count - 1,
              dash <= 20, bytes.count - dash - 1 <= 20,
              bytes[..<dash].allSatisfy({ (0x30...0x39).contains($0) }),
              bytes[(dash + 1)...].allSatisfy({ (0x30...0x39).contains($0) }),
              let ms = Int64(String(decoding: bytes[..<dash], as: UTF8.self)), ProtocolLimits.timestampRange.contains(ms),
              UInt64(String(decoding: bytes[(dash + 1)...], as: UTF8.self)) != nil else { return nil }
        return ms
    }
}
