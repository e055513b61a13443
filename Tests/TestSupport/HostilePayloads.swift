// Hostile traffic for the ingest: what a misbehaving device with valid credentials can send
// on its own topics (issue D1–D3 and the classes of issue 15 item 7). Used by the simulation
// (Tests/SyncTests), the ingest fuzzer's corpus and the hostile-traffic integration test.
import FieldlogCore
import Sync

public enum HostilePayloads {
    /// The classes of hostile message, for reporting what was sent.
    public enum Kind: String, CaseIterable, Sendable {
        case randomBytes, truncated, garbled, boundaryNumbers, nonFinite, deepNesting, huge, badText
        case duplicateKeys, tilingViolation, deviceMismatch, unknownEpoch, injection, d1RequestID, d2Overflow, d3Timestamp
        case legacyGarbage
        /// Compact batches (spec §3.7) broken after encoding, or naming another device.
        case compactGarbage
    }

    /// One hostile (topic, payload) for `device`, of `kind`.
    public static func make<G: RandomNumberGenerator>(_ kind: Kind, device: DeviceID, topics: TopicTemplates = .defaults,
                                                      using g: inout G) -> (topic: String, payload: [UInt8]) {
        let batchTopic = topics.batch.topic(device: device)
        let d = device.rawValue
        func pick<T>(_ xs: [T]) -> T { xs[Int.random(in: 0..<xs.count, using: &g)] }
        func validBatch(first: UInt64 = 1, count: UInt64 = 3, epoch: Epoch? = nil, as encoding: BatchEncoding = .json, of owner: DeviceID? = nil) -> [UInt8] {
            let e = epoch ?? Epoch.random(using: &g)
            let records = (first..<(first + count)).map { s in
                LogRecord(sequence: SequenceNumber(s), timestamp: DeviceTimestamp(unixMilliseconds: 1_700_000_000_000 + Int64(s)),
                          values: try! SensorValues(["t": .number(Double(s))]))
            }
            return encoding.encode(Batch(device: owner ?? device, epoch: e, range: SequenceRange(checked: SequenceNumber(first), SequenceNumber(first + count - 1)),
                                         records: records), maxBytes: .max).payload
        }
        let epoch = Epoch.random(using: &g).hex
        let boundaries = ["0", "-1", "9007199254740992", "9007199254740993", "9223372036854775807", "-9223372036854775808",
                          "18446744073709551616", "1e400", "-0", "0.5"]
        switch kind {
        case .randomBytes:
            let n = Int.random(in: 0...2_000, using: &g)
            return (pick([batchTopic, topics.status.topic(device: device), topics.response.topic(device: device)]),
                    (0..<n).map { _ in UInt8.random(in: 0...255, using: &g) })
        case .truncated:
            let b = validBatch()
            return (batchTopic, Array(b.prefix(Int.random(in: 0..<b.count, using: &g))))
        case .garbled:
            var b = validBatch()
            for _ in 0..<Int.random(in: 1...8, using: &g) { b[Int.random(in: 0..<b.count, using: &g)] = UInt8.random(in: 0...255, using: &g) }
            return (batchTopic, b)
        case .boundaryNumbers:
            let (a, z, ts) = (pick(boundaries), pick(boundaries), pick(boundaries))
            return (batchTopic, Array(#"{"v":1,"type":"batch","device":"\#(d)","epoch":"\#(epoch)","first":\#(a),"last":\#(z),"records":[{"seq":\#(a),"ts":\#(ts),"values":{"t":1}}]}"#.utf8))
        case .nonFinite:
            let v = pick(["NaN", "Infinity", "-Infinity", "1e999", "nan"])
            return (batchTopic, Array(#"{"v":1,"type":"batch","device":"\#(d)","epoch":"\#(epoch)","first":1,"last":1,"records":[{"seq":1,"ts":1,"values":{"t":\#(v)}}]}"#.utf8))
        case .deepNesting:
            let depth = Int.random(in: 17...400, using: &g)
            return (batchTopic, Array((String(repeating: "[", count: depth) + String(repeating: "]", count: depth)).utf8))
        case .huge:
            let filler = String(repeating: "x", count: 300_000)
            return (pick([batchTopic, topics.status.topic(device: device), topics.legacyValues.topic(device: device)]),
                    Array(#"{"v":1,"type":"batch","device":"\#(d)","filler":"\#(filler)"}"#.utf8))
        case .badText:
            let bad = pick(["é", "a b", "\\u0000", "tab\\there", "💥", "", String(repeating: "k", count: 300), "\\ud800"])
            return pick([
                (batchTopic, Array(#"{"v":1,"type":"batch","device":"\#(d)","epoch":"\#(epoch)","first":1,"last":1,"records":[{"seq":1,"ts":1,"values":{"\#(bad)":1}}]}"#.utf8)),
                (batchTopic, Array(#"{"v":1,"type":"batch","device":"\#(bad)","epoch":"\#(epoch)","first":1,"last":1,"records":[{"seq":1,"ts":1,"values":{"t":1}}]}"#.utf8)),
                (topics.response.topic(device: device), Array(#"{"v":1,"command":"\#(bad)","id":"\#(bad)","ok":true}"#.utf8)),
                (batchTopic, Array(#"{"v":1,"type":"batch","device":"\#(d)","epoch":"\#(epoch)","first":1,"last":1,"records":[{"seq":1,"ts":1,"values":{"t":"\#(bad)"}}],"replay":"\#(bad)"}"#.utf8)),
            ])
        case .duplicateKeys:
            return (batchTopic, Array(#"{"v":1,"type":"batch","device":"\#(d)","device":"\#(d)","epoch":"\#(epoch)","first":1,"last":1,"records":[]}"#.utf8))
        case .tilingViolation:
            let body = pick([#""first":1,"last":3,"records":[{"seq":1,"ts":1,"values":{}},{"seq":3,"ts":1,"values":{}}]"#,
                             #""first":1,"last":2,"records":[{"seq":1,"ts":1,"values":{}},{"seq":2,"ts":1,"values":{}}],"losses":[{"first":2,"last":2,"reason":"disk-quota","at":1}]"#,
                             #""first":2,"last":2,"records":[{"seq":5,"ts":1,"values":{}}]"#,
                             #""first":1,"last":2,"records":[{"seq":2,"ts":1,"values":{}},{"seq":1,"ts":1,"values":{}}]"#])
            return (batchTopic, Array(#"{"v":1,"type":"batch","device":"\#(d)","epoch":"\#(epoch)",\#(body)}"#.utf8))
        case .deviceMismatch:
            // On its own topic (the broker's ACL keeps it off others'), naming another device.
            let other = SyncCodec.encode(Batch(device: try! DeviceID("someone-else"), epoch: Epoch.random(using: &g),
                                               range: SequenceRange(checked: SequenceNumber(1), SequenceNumber(1)),
                                               records: [LogRecord(sequence: SequenceNumber(1), timestamp: DeviceTimestamp(unixMilliseconds: 1),
                                                                   values: try! SensorValues(["t": .number(1)]))]))
            return (pick([batchTopic, topics.status.topic(device: device)]), other)
        case .unknownEpoch:
            return (batchTopic, validBatch(first: UInt64.random(in: 1...1_000_000, using: &g), count: UInt64.random(in: 1...20, using: &g)))
        case .injection:
            let text = pick(["'); DROP TABLE readings; --", "<script>alert(1)</script>", "\\\" OR 1=1 --", "%s%n%x", "../../etc/passwd"])
            return pick([
                (batchTopic, Array(#"{"v":1,"type":"batch","device":"\#(d)","epoch":"\#(epoch)","first":1,"last":2,"records":[{"seq":1,"ts":1,"values":{"t":"\#(text)"}}],"losses":[{"first":2,"last":2,"reason":"disk-quota","at":1,"detail":"\#(text)"}]}"#.utf8)),
                (topics.response.topic(device: device), Array(#"{"v":1,"command":"get_config","id":"r-1","ok":false,"error":"failed","message":"\#(text)"}"#.utf8)),
                (topics.legacyValues.topic(device: device), Array(#"[{"_id":"1700000000000-0","_device_type":"\#(text)","t":"\#(text)"}]"#.utf8)),
            ])
        case .d1RequestID:
            return (topics.response.topic(device: device), Array(#"{"v":1,"command":"get_config","id":"\u00e9","ok":true}"#.utf8))
        case .d2Overflow:
            return pick(d2Pair(device: device, topics: topics))
        case .d3Timestamp:
            return (batchTopic, Array(#"{"v":1,"type":"batch","device":"\#(d)","epoch":"\#(epoch)","first":1,"last":1,"records":[{"seq":1,"ts":-9223372036854775808,"values":{"t":1}}]}"#.utf8))
        case .legacyGarbage:
            let body = pick([#"[{"_id":"x"}]"#, #"[{"_id":"1-0","_device_uuid":"other"}]"#, #"{"_id":"1-0"}"#, #"[{"_id":"99999999999999999999-0","t":"1"}]"#,
                             #"[{"_id":"1700000000000-0","bad name":"1"}]"#, #"[1,2,3]"#, "[" + String(repeating: #"{"_id":"1-0"},"#, count: 50) + "{}]"])
            return (topics.legacyValues.topic(device: device), Array(body.utf8))
        case .compactGarbage:
            var b = validBatch(count: UInt64.random(in: 1...30, using: &g), as: .compact)
            switch Int.random(in: 0..<5, using: &g) {
            case 0: b = Array(b.prefix(Int.random(in: 0..<b.count, using: &g)))
            case 1: for _ in 0..<Int.random(in: 1...4, using: &g) { b[Int.random(in: 3..<b.count, using: &g)] ^= UInt8.random(in: 1...255, using: &g) }
            case 2: b[3] = UInt8.random(in: 2...255, using: &g)  // a format version nobody speaks
            case 3: b += (0..<Int.random(in: 1...64, using: &g)).map { _ in UInt8.random(in: 0...255, using: &g) }
            default: b = validBatch(as: .compact, of: try! DeviceID("someone-else"))
            }
            return (batchTopic, b)
        }
    }

    /// Issue D2 whole: one epoch, a batch 5…5, then 1…2^53 declared lost (both valid).
    public static func d2Pair(device: DeviceID, topics: TopicTemplates = .defaults) -> [(topic: String, payload: [UInt8])] {
        let d = device.rawValue, t = topics.batch.topic(device: device)
        return [(t, Array(#"{"v":1,"type":"batch","device":"\#(d)","epoch":"00000000000000d2","first":5,"last":5,"records":[{"seq":5,"ts":1,"values":{"t":1}}]}"#.utf8)),
                (t, Array(#"{"v":1,"type":"batch","device":"\#(d)","epoch":"00000000000000d2","first":1,"last":9007199254740992,"records":[],"losses":[{"first":1,"last":9007199254740992,"reason":"disk-quota","at":1}]}"#.utf8))]
    }

    /// A random hostile message of any kind.
    public static func any<G: RandomNumberGenerator>(device: DeviceID, topics: TopicTemplates = .defaults, using g: inout G) -> (kind: Kind, topic: String, payload: [UInt8]) {
        let kind = Kind.allCases[Int.random(in: 0..<Kind.allCases.count, using: &g)]
        let m = make(kind, device: device, topics: topics, using: &g)
        return (kind, m.topic, m.payload)
    }
}
