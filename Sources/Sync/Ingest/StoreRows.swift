// StoreRows: the rows one ingest transaction writes, and the columns they must fit.
//
// The ingest state machine decides WHAT to store (`IngestTransaction`); this file turns that
// into the rows of the backend's tables (docs/backend.md has the schema), as plain values, so
// the mapping is pure: the database shell (BackendNode's Store) only binds them to SQL, and the
// ingest fuzzer (scripts/fuzz-ingest) checks every value against its column with
// `violations()`. Every value comes from a validated message (§3.1 limits), from our own
// clipped text (topics, details, excerpts), or from our own clock, so a row that does not fit
// its column is a bug here, never a database error a device can provoke (issue D1).

import FieldlogCore

/// The rows of one transaction, table by table, in the order the shell writes them.
public struct StoreRows: Hashable, Sendable {
    /// `devices` (INSERT IGNORE): devices seen for the first time.
    public struct Device: Hashable, Sendable {
        public var device: String
        public var legacy: Bool
        public var deviceType: String?, appID: String?, appName: String?
    }
    /// `epochs` (INSERT IGNORE).
    public struct Epoch: Hashable, Sendable { public var device: String; public var epoch: UInt64 }
    /// `readings` (INSERT IGNORE on device, epoch, seq): one row per reading, its numbers in
    /// `vals` and its texts in `texts` (schema 8; `reading_values` is a view over both, docs/backend.md).
    public struct Reading: Hashable, Sendable {
        public var device: String, epoch: UInt64, seq: UInt64, deviceMs: Int64
        public var deviceTime: String?
        public var unsynchronized: Bool
        public var missingSensors: String?
        /// The numbers as a JSON object, sensors in name order: `{"hum":40.5,"temp":21.5}`.
        public var vals: String
        /// The texts likewise (`{"state":"on"}`), nil when the reading has none (most have none).
        public var texts: String?
    }
    /// `device_sensors` (INSERT IGNORE on device, sensor): the sensors a device has sent, so a
    /// list of them never scans its readings.
    public struct Sensor: Hashable, Sendable { public var device: String, sensor: String }
    /// `loss_ranges` (INSERT IGNORE).
    public struct Loss: Hashable, Sendable {
        public var device: String, epoch: UInt64, first: UInt64, last: UInt64, reason: String, detail: String, recordedMs: Int64
    }
    /// `batch_ranges` (INSERT IGNORE): one immutable row per batch (§5.4).
    public struct Range: Hashable, Sendable { public var device: String, epoch: UInt64, first: UInt64, last: UInt64 }
    /// `dead_letters` (INSERT IGNORE: a rejected record is unique by device, epoch, seq).
    public struct DeadLetterRow: Hashable, Sendable {
        public var topic: String
        /// Stored as its raw value (the enum's cases are the column's only values).
        public var reason: DeadLetterReason
        public var detail: String
        public var device: String?, epoch: UInt64?, seq: UInt64?
        public var payloadBytes: UInt64
        public var payloadHead: [UInt8]
        /// Unique when set: a dead letter every ingest process writes is kept once.
        public var dedupKey: [UInt8]?
    }
    /// `legacy_readings` (INSERT IGNORE on device, stream id).
    public struct LegacyReading: Hashable, Sendable {
        public var device: String, streamID: String, deviceMs: Int64, deviceTime: String?
    }
    /// `legacy_values` (INSERT IGNORE).
    public struct LegacyValue: Hashable, Sendable {
        public var device: String, streamID: String, sensor: String, deviceTime: String?, number: Double?, text: String?
    }
    /// A status: UPDATE of the device's row, and the epoch's reported head (GREATEST).
    public struct Status: Hashable, Sendable {
        public var device: String, state: String
        public var epoch: UInt64?, head: UInt64?, acked: UInt64?
        public var measuring: Bool?
        public var deviceMs: Int64?
        /// The data budget of the status (spec §3.4): a `device_data_usage` row per device and
        /// day, keeping the larger figure of each direction.
        public var dataUsage: DataUsage?
    }
    /// A command response: a `command_responses` row, and the command's row when its id is known.
    public struct Response: Hashable, Sendable {
        public var device: String, requestID: String?, command: String, ok: Bool, outcome: String, payload: String
    }

    public var devices: [Device] = []
    public var epochs: [Epoch] = []
    public var readings: [Reading] = []
    public var sensors: [Sensor] = []
    public var losses: [Loss] = []
    public var ranges: [Range] = []
    public var deadLetters: [DeadLetterRow] = []
    public var legacyReadings: [LegacyReading] = []
    public var legacyValues: [LegacyValue] = []
    public var statuses: [Status] = []
    public var responses: [Response] = []

    /// Longest stored topic, detail and response payload (column sizes).
    static let maxTopicBytes = 512
    static let maxDetailBytes = 1_024
    static let maxResponsePayloadBytes = 65_000

    public init() {}

    /// The rows of `transaction`. The `received_at` columns are the shell's (its clock).
    public init(_ transaction: IngestTransaction) {
        for d in transaction.newDevices { devices.append(Device(device: d.rawValue, legacy: false)) }
        for k in transaction.newEpochs { epochs.append(Epoch(device: k.device.rawValue, epoch: k.epoch.rawValue)) }
        for b in transaction.batches { add(b) }
        for l in transaction.legacy { add(l) }
        for d in transaction.deadLetters { deadLetters.append(Self.row(d)) }
        for s in transaction.statuses {
            statuses.append(Status(device: s.device.rawValue, state: s.state.rawValue, epoch: s.epoch?.rawValue, head: s.head?.rawValue,
                                   acked: s.acked?.rawValue, measuring: s.measuring, deviceMs: s.atUnixMilliseconds,
                                   dataUsage: s.dataUsage))
        }
        for r in transaction.responses {
            responses.append(Response(device: r.device.rawValue, requestID: r.response.requestID,
                                      command: TextLimit.prefix(r.response.command, maxBytes: ProtocolLimits.maxCommandNameBytes),
                                      ok: r.response.ok, outcome: TextLimit.prefix(r.outcome, maxBytes: ResponseRecord.maxOutcomeBytes),
                                      payload: TextLimit.prefix(r.payload, maxBytes: Self.maxResponsePayloadBytes)))
        }
    }

    private mutating func add(_ b: StoreRequest) {
        let device = b.device.rawValue, epoch = b.epoch.rawValue
        var names: Set<String> = []
        for r in b.records {
            let columns = Self.columns(r.values)
            readings.append(Reading(device: device, epoch: epoch, seq: r.sequence.rawValue, deviceMs: r.timestamp.unixMilliseconds,
                                    deviceTime: SQLDateTime.format(unixMilliseconds: r.timestamp.unixMilliseconds),
                                    unsynchronized: r.timestamp.clockUnsynchronized,
                                    missingSensors: r.missingSensors.isEmpty ? nil : r.missingSensors.joined(separator: ","),
                                    vals: columns.vals, texts: columns.texts))
            for (name, _) in r.values.sorted where names.insert(name).inserted && !knownSensors.contains(Sensor(device: device, sensor: name)) {
                knownSensors.insert(Sensor(device: device, sensor: name))
                sensors.append(Sensor(device: device, sensor: name))
            }
        }
        for l in b.losses {
            losses.append(Loss(device: device, epoch: epoch, first: l.range.first.rawValue, last: l.range.last.rawValue,
                               reason: l.reason.rawValue, detail: TextLimit.prefix(l.detail, maxBytes: Self.maxDetailBytes),
                               recordedMs: l.recordedAtUnixMilliseconds))
        }
        for r in b.rejected {
            deadLetters.append(Self.row(DeadLetter(topic: b.topic, reason: .rejectedRecord, message: r.reason, topicDevice: b.device,
                                                                epoch: b.epoch, sequence: r.sequence, payload: Array(r.excerpt.utf8))))
        }
        ranges.append(Range(device: device, epoch: epoch, first: b.range.first.rawValue, last: b.range.last.rawValue))
    }

    /// Sensors already in `sensors` (one row per device and sensor per transaction).
    private var knownSensors: Set<Sensor> = []

    /// A reading's numbers as stored in `readings.vals` (schema 8): a JSON object from sensor
    /// name to number, in name order (the protocol's deterministic JSON writer), so one sensor is
    /// `JSON_VALUE(vals, '$.temp')` in SQL and an average needs no type test (docs/backend.md).
    public static func vals(_ values: SensorValues) -> String { columns(values).vals }

    /// A reading's texts as stored in `readings.texts`, like `vals`; nil when it has none.
    public static func texts(_ values: SensorValues) -> String? { columns(values).texts }

    /// Both columns in one pass over the values in name order, written straight into their
    /// buffers (no JSONValue tree, one sort): one call per stored reading.
    static func columns(_ values: SensorValues) -> (vals: String, texts: String?) {
        var numbers = JSONWriter(reservingCapacity: 24 * max(1, values.count))
        var texts: JSONWriter? = nil
        numbers.raw("{")
        var firstNumber = true
        for (name, value) in values.sorted {
            switch value {
            case .number(let d):
                if !firstNumber { numbers.raw(",") }
                firstNumber = false
                numbers.string(name)
                numbers.raw(":")
                numbers.double(d)
            case .text(let t):
                if texts == nil { texts = JSONWriter(reservingCapacity: 32); texts!.raw("{") } else { texts!.raw(",") }
                texts!.string(name)
                texts!.raw(":")
                texts!.string(t)
            }
        }
        numbers.raw("}")
        texts?.raw("}")
        return (String(decoding: numbers.bytes, as: UTF8.self), texts.map { String(decoding: $0.bytes, as: UTF8.self) })
    }

    /// The values back from `readings.vals` and `readings.texts` (the web admin reads them
    /// without MariaDB's JSON functions); nil for anything that is not what ingest writes.
    public static func values(vals: String, texts: String?) -> SensorValues? {
        var values: [String: SensorValue] = [:]
        guard case .object(let numbers)? = try? JSONReader.parse(Array(vals.utf8)) else { return nil }
        for (name, value) in numbers {
            switch value {
            case .double(let d): values[name] = .number(d)
            case .integer(let i): values[name] = .number(Double(i))
            default: return nil
            }
        }
        if let texts {
            guard case .object(let members)? = try? JSONReader.parse(Array(texts.utf8)) else { return nil }
            for (name, value) in members {
                guard case .string(let t) = value, values[name] == nil else { return nil }
                values[name] = .text(t)
            }
        }
        return try? SensorValues(values)
    }

    /// `readings.vals`, a VARCHAR of ASCII since schema 9 (a longer one needs a migration):
    /// numbers only, at most 64 sensors of 1…64-byte ASCII names, a number at most 24
    /// characters of JSON, so at most 2 + 64 × (64 + 3 + 24 + 1) − 1 = 5,889 bytes.
    public static let maxValsBytes = 6_000
    /// `readings.texts`, a MEDIUMTEXT: 64 sensors of 64-byte names with 256-byte texts, every byte escaped.
    static let maxTextsBytes = 16 << 20

    private mutating func add(_ l: LegacyValues) {
        let device = l.device.rawValue
        devices.append(Device(device: device, legacy: true, deviceType: l.deviceType, appID: l.appID, appName: l.appName))
        for r in l.readings {
            let time = SQLDateTime.format(unixMilliseconds: r.streamMilliseconds)
            legacyReadings.append(LegacyReading(device: device, streamID: r.streamID, deviceMs: r.streamMilliseconds, deviceTime: time))
            for (name, value) in r.values.sorted {
                switch value {
                case .number(let d): legacyValues.append(LegacyValue(device: device, streamID: r.streamID, sensor: name, deviceTime: time, number: d, text: nil))
                case .text(let s): legacyValues.append(LegacyValue(device: device, streamID: r.streamID, sensor: name, deviceTime: time, number: nil, text: s))
                }
            }
        }
    }

    static func row(_ d: DeadLetter) -> DeadLetterRow {
        DeadLetterRow(topic: TextLimit.clip(d.topic, maxBytes: maxTopicBytes), reason: d.reason,
                   detail: TextLimit.clip(d.message, maxBytes: maxDetailBytes), device: d.topicDevice?.rawValue,
                   epoch: d.epoch?.rawValue, seq: d.sequence?.rawValue, payloadBytes: UInt64(max(0, d.payloadBytes)),
                   payloadHead: Array(d.payloadExcerpt.prefix(DeadLetter.excerptBytes)), dedupKey: d.dedupKey)
    }

    // MARK: Column checks

    /// Every value that does not fit its column (empty when all fit). The column types are
    /// those of the schema (Sources/BackendNode/Schema.swift): ASCII device ids and sensor
    /// names, utf8mb4 VARCHAR(n) counting characters, TEXT counting bytes, BIGINT UNSIGNED
    /// keys within the protocol's 2^53, DATETIME(3) text.
    public func violations() -> [String] {
        var v: [String] = []
        func check(_ ok: Bool, _ what: @autoclosure () -> String) { if !ok { v.append(what()) } }
        for d in devices {
            check(Columns.deviceID(d.device), "devices.device_id \(d.device.debugDescription)")
            for (name, s) in [("device_type", d.deviceType), ("app_id", d.appID), ("app_name", d.appName)] {
                if let s { check(Columns.varchar(s, 128), "devices.\(name) of \(s.utf8.count) bytes") }
            }
        }
        for e in epochs { check(Columns.deviceID(e.device) && e.epoch != 0, "epochs row \(e)") }
        for r in readings {
            check(Columns.deviceID(r.device) && r.epoch != 0 && Columns.sequence(r.seq), "readings key \(r.device) \(r.epoch) \(r.seq)")
            check(r.deviceTime.map(Columns.datetime) ?? true, "readings.device_time \(String(describing: r.deviceTime))")
            check(r.missingSensors.map { Columns.ascii($0, 4_200) } ?? true, "readings.missing_sensors")
            check(Columns.ascii(r.vals, Self.maxValsBytes) && Columns.vals(r.vals), "readings.vals \(r.vals.prefix(100))")
            check(r.texts.map { $0.utf8.count <= Self.maxTextsBytes && Columns.texts($0) } ?? true, "readings.texts \(r.texts?.prefix(100) ?? "")")
        }
        for x in sensors { check(Columns.deviceID(x.device) && Columns.sensor(x.sensor), "device_sensors \(x)") }
        for l in losses {
            check(Columns.deviceID(l.device) && l.epoch != 0 && Columns.sequence(l.first) && Columns.sequence(l.last) && l.first <= l.last,
                  "loss_ranges key \(l.first)…\(l.last)")
            check(Columns.ascii(l.reason, 32) && Columns.varchar(l.detail, 1_024), "loss_ranges reason/detail")
        }
        for r in ranges {
            check(Columns.deviceID(r.device) && r.epoch != 0 && Columns.sequence(r.first) && Columns.sequence(r.last) && r.first <= r.last,
                  "batch_ranges \(r.first)…\(r.last)")
        }
        for d in deadLetters {
            check(Columns.varchar(d.topic, 512), "dead_letters.topic of \(d.topic.unicodeScalars.count) characters")
            check(Columns.ascii(d.reason.rawValue, 32), "dead_letters.reason \(d.reason.rawValue)")
            check(Columns.varchar(d.detail, 1_024), "dead_letters.detail of \(d.detail.unicodeScalars.count) characters")
            check(d.device.map(Columns.deviceID) ?? true, "dead_letters.device_id")
            check(d.seq.map(Columns.sequence) ?? true, "dead_letters.seq")
            check(d.payloadBytes <= UInt64(UInt32.max) && d.payloadHead.count <= 1_024, "dead_letters.payload")
            check(d.dedupKey.map { $0.count == 16 } ?? true, "dead_letters.dedup_key")
        }
        for r in legacyReadings {
            check(Columns.deviceID(r.device) && Columns.ascii(r.streamID, 41) && !r.streamID.isEmpty, "legacy_readings key")
            check(r.deviceTime.map(Columns.datetime) ?? true, "legacy_readings.device_time")
        }
        for x in legacyValues {
            check(Columns.deviceID(x.device) && Columns.ascii(x.streamID, 41) && Columns.sensor(x.sensor), "legacy_values key")
            check((x.number == nil) != (x.text == nil) && (x.number.map(\.isFinite) ?? true), "legacy_values value")
            check(x.text.map { Columns.varchar($0, 256) } ?? true, "legacy_values.text_value")
        }
        for s in statuses {
            check(Columns.deviceID(s.device) && Columns.varchar(s.state, 16), "devices status of \(s.device)")
            check([s.head, s.acked].allSatisfy { $0.map { $0 <= SequenceNumber.max.rawValue } ?? true } && s.epoch != 0, "devices status values")
        }
        for r in responses {
            check(Columns.deviceID(r.device), "command_responses.device_id")
            check(r.requestID.map { Columns.ascii($0, 64) && !$0.isEmpty } ?? true, "command_responses.request_id \(String(describing: r.requestID))")
            check(Columns.varchar(r.command, 64), "command_responses.command")
            check(Columns.varchar(r.outcome, 32), "commands.outcome")
            check(r.payload.utf8.count <= 65_535, "command_responses.payload of \(r.payload.utf8.count) bytes")
        }
        return v
    }
}

/// The column rules `StoreRows.violations()` checks.
public enum Columns {
    /// ASCII text of at most `max` bytes (no byte above 0x7F).
    public static func ascii(_ s: String, _ max: Int) -> Bool { s.utf8.count <= max && s.utf8.allSatisfy { $0 < 0x80 } }
    /// utf8mb4 VARCHAR(n): at most n characters (code points). Swift strings are valid Unicode.
    static func varchar(_ s: String, _ n: Int) -> Bool { s.unicodeScalars.count <= n }
    public static func deviceID(_ s: String) -> Bool { (try? DeviceID(s)) != nil }
    public static func sensor(_ s: String) -> Bool { (try? SensorValues.validate(name: s)) != nil }
    /// A sequence number column: 1…2^53.
    public static func sequence(_ n: UInt64) -> Bool { n >= 1 && n <= SequenceNumber.max.rawValue }
    /// `readings.vals`: what the `reading_values` view and `JSON_VALUE` read back: an object
    /// whose members are valid sensor names, each with a finite number.
    public static func vals(_ s: String) -> Bool {
        guard case .object(let members)? = try? JSONReader.parse(Array(s.utf8)) else { return false }
        return members.allSatisfy { name, value in
            switch value {
            case .double(let d): return sensor(name) && d.isFinite
            case .integer: return sensor(name)
            default: return false
            }
        }
    }

    /// `readings.texts`: a non-empty object of valid sensor names, each with a text of at most
    /// 256 characters (the view's `text_value`).
    public static func texts(_ s: String) -> Bool {
        guard case .object(let members)? = try? JSONReader.parse(Array(s.utf8)), !members.isEmpty else { return false }
        return members.allSatisfy { name, value in
            guard case .string(let t) = value else { return false }
            return sensor(name) && varchar(t, 256)
        }
    }

    /// "YYYY-MM-DD hh:mm:ss.fff" with a year of 1000…9999.
    public static func datetime(_ s: String) -> Bool {
        let b = Array(s.utf8)
        guard b.count == 23, b[4] == 0x2D, b[7] == 0x2D, b[10] == 0x20, b[13] == 0x3A, b[16] == 0x3A, b[19] == 0x2E else { return false }
        return [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22].allSatisfy { (0x30...0x39).contains(b[$0]) } && b[0] != 0x30
    }
}

/// DATETIME(3) text in UTC, without Foundation and without allocations beyond the result.
public enum SQLDateTime {
    /// "YYYY-MM-DD hh:mm:ss.fff" for ms since 1970; nil outside the DATETIME range (year 1000…9999).
    public static func format(unixMilliseconds ms: Int64) -> String? {
        guard ms >= -30_610_224_000_000, ms < 253_402_300_800_000 else { return nil }
        let days = ms >= 0 ? ms / 86_400_000 : (ms - 86_399_999) / 86_400_000
        let msOfDay = ms - days * 86_400_000
        // Civil from days (Howard Hinnant's algorithm).
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        var y = yoe + era * 400
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        if m <= 2 { y += 1 }
        guard (1000...9999).contains(y) else { return nil }
        let h = msOfDay / 3_600_000, mi = (msOfDay / 60_000) % 60, s = (msOfDay / 1000) % 60, f = msOfDay % 1000
        // Written digit by digit into one buffer: the ingest formats one per stored reading.
        return String(unsafeUninitializedCapacity: 23) { out in
            func put(_ v: Int64, _ digits: Int, at i: Int) {
                var v = v
                for k in stride(from: i + digits - 1, through: i, by: -1) {
                    out[k] = UInt8(ascii: "0") + UInt8(v % 10)
                    v /= 10
                }
            }
            put(y, 4, at: 0); out[4] = UInt8(ascii: "-"); put(m, 2, at: 5); out[7] = UInt8(ascii: "-"); put(d, 2, at: 8)
            out[10] = UInt8(ascii: " "); put(h, 2, at: 11); out[13] = UInt8(ascii: ":"); put(mi, 2, at: 14); out[16] = UInt8(ascii: ":")
            put(s, 2, at: 17); out[19] = UInt8(ascii: "."); put(f, 3, at: 20)
            return 23
        }
    }
}
