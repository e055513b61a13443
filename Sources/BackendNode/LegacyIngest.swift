// Legacy ingest: readings from unmodified seed devices (the Python `mqtthandler`).
//
// The seed publishes a JSON list per interval on `iot-projekt/device/<uuid>/values`, one object
// per Redis stream entry: `_id` (stream id "ms-n"), `_device_uuid`, `_device_type`, `_app_id`,
// `_app_name`, and one member per sensor value (as strings). There are no sequence numbers and
// no acks: the seed's device forgets what it handed to its MQTT client. So these readings are
// stored de-duplicated by (device, `_id`) and the audit says that such devices have no delivery
// guarantee; nothing can tell a gap from a quiet period.
import FieldlogCore
import Foundation
import MariaDB

/// One reading of a seed device.
struct LegacyReading: Hashable, Sendable {
    var streamID: String
    var streamMilliseconds: Int64
    var values: [(name: String, value: SensorValue)]

    static func == (a: Self, b: Self) -> Bool {
        a.streamID == b.streamID && a.values.map(\.name) == b.values.map(\.name) && a.values.map(\.value) == b.values.map(\.value)
    }
    func hash(into h: inout Hasher) { h.combine(streamID) }
}

/// A parsed seed message.
struct LegacyMessage: Sendable {
    var device: DeviceID
    var deviceType: String?
    var appID: String?
    var appName: String?
    var readings: [LegacyReading]
}

/// Why a seed message was not accepted.
struct LegacyParseError: Error, CustomStringConvertible {
    var reason: DeadLetterCause
    var description: String
}

enum LegacyParser {
    /// Same limit as the protocol's messages.
    static let maxMessageBytes = 262_144
    static let maxReadings = 10_000

    /// Parses a seed values message for the topic's `device`.
    static func parse(_ payload: [UInt8], device: DeviceID) throws(LegacyParseError) -> LegacyMessage {
        guard payload.count <= maxMessageBytes else {
            throw LegacyParseError(reason: .oversize, description: "message of \(payload.count) bytes; at most \(maxMessageBytes) allowed")
        }
        let json: Any
        do {
            json = try JSONSerialization.jsonObject(with: Data(payload), options: [])
        } catch {
            throw LegacyParseError(reason: .legacyMalformed, description: "not JSON: \(error.localizedDescription)")
        }
        guard let list = json as? [Any] else {
            throw LegacyParseError(reason: .legacyMalformed, description: "expected a JSON list of readings")
        }
        guard list.count <= maxReadings else {
            throw LegacyParseError(reason: .oversize, description: "\(list.count) readings; at most \(maxReadings) allowed")
        }
        var message = LegacyMessage(device: device, readings: [])
        for (i, item) in list.enumerated() {
            guard let object = item as? [String: Any] else {
                throw LegacyParseError(reason: .legacyMalformed, description: "reading \(i) is not a JSON object")
            }
            guard let id = object["_id"] as? String, let ms = streamMilliseconds(id) else {
                throw LegacyParseError(reason: .legacyMalformed, description: "reading \(i) has no valid `_id` (a Redis stream id \"ms-n\")")
            }
            if let uuid = object["_device_uuid"] {
                guard let u = uuid as? String, u == device.rawValue else {
                    throw LegacyParseError(reason: .deviceMismatch, description: "reading \(i) names device \(String(describing: uuid)), the topic names \(device)")
                }
            }
            message.deviceType = message.deviceType ?? (object["_device_type"] as? String).map { String($0.prefix(128)) }
            message.appID = message.appID ?? (object["_app_id"]).map { String(String(describing: $0).prefix(128)) }
            message.appName = message.appName ?? (object["_app_name"] as? String).map { String($0.prefix(128)) }
            var values: [(String, SensorValue)] = []
            for (name, raw) in object where !name.hasPrefix("_") {
                do throws(DomainError) {
                    try SensorValues.validate(name: name)
                } catch {
                    throw LegacyParseError(reason: .legacyMalformed, description: "reading \(i): \(error.description)")
                }
                let value: SensorValue
                if let s = raw as? String {
                    if let d = Double(s.trimmingCharacters(in: .whitespaces)), d.isFinite { value = .number(d) } else {
                        guard s.utf8.count <= SensorValues.maxTextBytes else {
                            throw LegacyParseError(reason: .legacyMalformed, description: "reading \(i): value of \(name) is longer than \(SensorValues.maxTextBytes) bytes")
                        }
                        value = .text(s)
                    }
                } else if let n = raw as? NSNumber, n.doubleValue.isFinite {
                    value = .number(n.doubleValue)
                } else {
                    throw LegacyParseError(reason: .legacyMalformed, description: "reading \(i): value of \(name) is neither a string nor a finite number")
                }
                values.append((name, value))
            }
            guard values.count <= SensorValues.maxSensors else {
                throw LegacyParseError(reason: .legacyMalformed, description: "reading \(i) has \(values.count) values; at most \(SensorValues.maxSensors)")
            }
            values.sort { $0.0 < $1.0 }
            message.readings.append(LegacyReading(streamID: id, streamMilliseconds: ms, values: values.map { (name: $0.0, value: $0.1) }))
        }
        return message
    }

    /// The milliseconds of a Redis stream id "1621122796939-0", nil when it is not one.
    static func streamMilliseconds(_ id: String) -> Int64? {
        guard id.utf8.count <= 41 else { return nil }
        let parts = id.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 2, let ms = Int64(parts[0]), ms >= 0, UInt64(parts[1]) != nil else { return nil }
        return ms
    }
}

extension Store {
    /// Stores a seed message; returns (readings inserted, duplicates).
    func storeLegacy(_ m: LegacyMessage) async throws -> (inserted: Int, duplicates: Int) {
        guard !m.readings.isEmpty else { return (0, 0) }
        let now = SQLTime.now()
        let d = MariaDBValue.string(m.device.rawValue)
        var readingRows: [[MariaDBValue]] = []
        var valueRows: [[MariaDBValue]] = []
        for r in m.readings {
            let time = SQLTime.datetime(unixMilliseconds: r.streamMilliseconds).map(MariaDBValue.string) ?? .null
            readingRows.append([d, .string(r.streamID), .int(r.streamMilliseconds), time, .string(now)])
            for (name, value) in r.values {
                switch value {
                case .number(let x): valueRows.append([d, .string(r.streamID), .string(name), time, .double(x), .null])
                case .text(let s): valueRows.append([d, .string(r.streamID), .string(name), time, .null, .string(s)])
                }
            }
        }
        let meta: [MariaDBValue] = [m.deviceType.map(MariaDBValue.string) ?? .null, m.appID.map(MariaDBValue.string) ?? .null,
                                    m.appName.map(MariaDBValue.string) ?? .null]
        let rows = (readingRows, valueRows)
        // Checked inserts (Store.swift): a row INSERT IGNORE dropped for another reason than a duplicate fails the transaction.
        let counts = try await connection.transaction { s in
            try s.insert(.legacyDevices, [[d, .string("legacy"), .string(now)] + meta])
            let n = try s.insert(.legacyReadings, rows.0)
            try s.insert(.legacyValues, rows.1)
            return n
        }
        return (counts.inserted, counts.duplicates)
    }
}
