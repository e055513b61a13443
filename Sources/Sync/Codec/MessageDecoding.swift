// The message layer of the JSON decoder: the rules of each message (see SyncCodec.swift).

import FieldlogCore

extension SyncCodec {
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
}
