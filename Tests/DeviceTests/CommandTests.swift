@testable import Device
import FieldlogCore
import Logging
import Sync
import TestSupport
import XCTest

/// An environment over in-memory facts: commands are checked as transcripts
/// ("given this state, this payload gives this response and this change").
struct FakeEnvironment: CommandEnvironment {
    let settings: RuntimeSettings
    var facts = LogFacts(deviceID: try! DeviceID("dev-1"), epoch: Epoch(0xabc), head: SequenceNumber(10), ackedThrough: SequenceNumber(7))
    var rebootCommand: [String] = []
    let replays = Recorder<ReplayQuery>()
    /// Retained records 3…10, appended one second apart from t = 1 700 000 000 000 ms (seq 3)
    /// on; 6 is missing (a loss marker).
    var times: [RecordTime] = (3...10).filter { $0 != 6 }.map {
        RecordTime(sequence: SequenceNumber(UInt64($0)), unixMilliseconds: 1_700_000_000_000 + Int64($0 - 3) * 1000)
    }

    func logFacts() async throws -> LogFacts { facts }
    /// Retains 3…head.
    func replay(_ r: ReplayQuery) async throws -> ReplayOutcome {
        await replays.add(r)
        let from = r.from ?? SequenceNumber(3), to = r.to ?? facts.head
        let lost = from < SequenceNumber(3) ? [SequenceRange(checked: from, SequenceNumber(2))] : []
        return ReplayOutcome(resent: SequenceRange(checked: max(from, SequenceNumber(3)), to), notRetained: lost)
    }
    func currentStatus() async throws -> Status {
        Status(device: facts.deviceID, state: .online, epoch: facts.epoch, head: facts.head, acked: facts.ackedThrough)
    }
    func firstRetainedRecord(atOrAfter sequence: SequenceNumber) async throws -> RecordTime? {
        times.first { $0.sequence >= sequence }
    }
}

actor Recorder<T: Sendable> {
    var items: [T] = []
    func add(_ t: T) { items.append(t) }
}

final class CommandTests: XCTestCase {
    func makeSettings() -> RuntimeSettings {
        RuntimeSettings(defaults: .init(measurementEnabled: true, measurementInterval: .seconds(2), senderEnabled: true, senderInterval: .seconds(1)))
    }

    func handler(_ env: FakeEnvironment, seen: SeenCommands? = nil) -> CommandHandler {
        CommandHandler(environment: env, seen: seen, metrics: DeviceMetrics(), logger: Logger(label: "test"))
    }

    func send(_ h: CommandHandler, _ json: String) async -> CommandResponse {
        let r = await h.handle(Array(json.utf8))
        return try! SyncCodec.decodeCommandResponse(r.payload)
    }

    func text(_ h: CommandHandler, _ json: String) async -> String {
        String(decoding: await h.handle(Array(json.utf8)).payload, as: UTF8.self)
    }

    func testSeedGetConfig() async {
        let h = handler(FakeEnvironment(settings: makeSettings()))
        let r = await text(h, #"{"command": "get_config", "key": "measurement:interval"}"#)
        XCTAssertEqual(r, #"{"v":1,"command":"get_config","ok":true,"key":"measurement:interval","value":"2"}"#)
    }

    func testCommandNamesAreCaseInsensitiveAndIDsAreEchoed() async {
        let h = handler(FakeEnvironment(settings: makeSettings()))
        let r = await send(h, #"{"command": "GET_CONFIG", "key": "log:head", "id": "req-1"}"#)
        XCTAssertEqual(r.requestID, "req-1")
        XCTAssertEqual(r.value, "10")
        let s = await send(h, #"{"command": "status", "id": "s1"}"#)
        XCTAssertEqual(s.status?.head, SequenceNumber(10))
        XCTAssertEqual(s.status?.acked, SequenceNumber(7))
    }

    func testSetConfigChangesTheSwitchAndIsQueuedForRedis() async {
        let settings = makeSettings()
        let r = await send(handler(FakeEnvironment(settings: settings)), #"{"command": "set_config", "key": "measurement:enabled", "value": "0"}"#)
        XCTAssertTrue(r.ok)
        XCTAssertEqual(r.value, "0")
        let s = await settings.switches
        XCTAssertFalse(s.measurementEnabled)
        let pending = await settings.pendingWrites
        XCTAssertEqual(pending[.measurementEnabled], .enabled(false))
    }

    func testSetConfigIsLimitedToDocumentedKeysAndValidValues() async {
        let settings = makeSettings()
        let h = handler(FakeEnvironment(settings: settings))
        let r1 = await send(h, #"{"command": "set_config", "key": "mqtt_sender:last_id", "value": "0"}"#)
        XCTAssertEqual(r1.error, .notAllowed)
        XCTAssertTrue(r1.message!.contains("not available"))
        let r2 = await send(h, #"{"command": "set_config", "key": "log:head", "value": "0"}"#)
        XCTAssertEqual(r2.error, .notAllowed)
        XCTAssertTrue(r2.message!.contains("read-only"))
        let r3 = await send(h, #"{"command": "set_config", "key": "measurement:interval", "value": "-1"}"#)
        XCTAssertEqual(r3.error, .invalidArgument)
        XCTAssertTrue(r3.message!.contains("0.01…86400"), r3.message!)
        let s = await settings.switches
        XCTAssertEqual(s.measurementInterval, .seconds(2), "a rejected command changes nothing")
    }

    func testStartStopAndSetInterval() async {
        let settings = makeSettings()
        let h = handler(FakeEnvironment(settings: settings))
        _ = await send(h, #"{"command": "stop"}"#)
        var s = await settings.switches
        XCTAssertFalse(s.measurementEnabled)
        _ = await send(h, #"{"command": "start"}"#)
        let r = await send(h, #"{"command": "set_interval", "seconds": 0.5}"#)
        XCTAssertEqual(r.value, "0.5")
        _ = await send(h, #"{"command": "set_config", "key": "mqtt_sender:interval", "value": 30}"#)
        s = await settings.switches
        XCTAssertTrue(s.measurementEnabled)
        XCTAssertEqual(s.measurementInterval, .milliseconds(500))
        XCTAssertEqual(s.senderInterval, .seconds(30))
    }

    func testSendMeasurementsAndReplay() async throws {
        let env = FakeEnvironment(settings: makeSettings())
        let h = handler(env)
        let r = await send(h, #"{"command": "send_measurements", "min_id": "-", "max_id": "+", "count": 5}"#)
        XCTAssertTrue(r.ok)
        XCTAssertEqual(r.resent, SequenceRange(checked: SequenceNumber(3), SequenceNumber(10)))
        let r2 = await send(h, #"{"command": "replay", "from": 1, "to": 4, "id": "x"}"#)
        XCTAssertEqual(r2.resent, SequenceRange(checked: SequenceNumber(3), SequenceNumber(4)))
        XCTAssertEqual(r2.notRetained, [SequenceRange(checked: SequenceNumber(1), SequenceNumber(2))])
        let requests = await env.replays.items
        XCTAssertEqual(requests, [ReplayQuery(requestID: nil, from: nil, to: nil, count: 5),
                                  ReplayQuery(requestID: "x", from: SequenceNumber(1), to: SequenceNumber(4), count: nil)])
        let otherEpoch = await send(h, #"{"command": "replay", "from": 1, "to": 4, "epoch": "00000000000000ff"}"#)
        XCTAssertEqual(otherEpoch.error, .invalidArgument)
        let bad = await send(h, #"{"command": "replay", "from": 5, "to": 4}"#)
        XCTAssertFalse(bad.ok)
    }

    /// The seed's payloads, where the seed's answer differed from an earlier device (issue 19).
    func testSeedParityOfNumbersCountsAndStreamIDs() async throws {
        let settings = makeSettings()
        let h = handler(FakeEnvironment(settings: settings))
        // set_config with a JSON number echoes a number, like the seed.
        let n = await text(h, #"{"command": "set_config", "key": "mqtt_sender:interval", "value": 30}"#)
        XCTAssertEqual(n, #"{"v":1,"command":"set_config","ok":true,"key":"mqtt_sender:interval","value":30}"#)
        let d = await text(h, #"{"command": "set_config", "key": "measurement:interval", "value": 2.5}"#)
        XCTAssertEqual(d, #"{"v":1,"command":"set_config","ok":true,"key":"measurement:interval","value":2.5}"#)
        let s = await text(h, #"{"command": "set_config", "key": "measurement:interval", "value": "3"}"#)
        XCTAssertEqual(s, #"{"v":1,"command":"set_config","ok":true,"key":"measurement:interval","value":"3"}"#, "a string stays a string")
        // What the seed crashed on stays refused, and changes nothing.
        let b = await send(h, #"{"command": "set_config", "key": "measurement:enabled", "value": false}"#)
        XCTAssertEqual(b.error, .invalidArgument)
        XCTAssertTrue(b.message!.contains("boolean"), b.message!)
        let abc = await send(h, #"{"command": "set_config", "key": "measurement:interval", "value": "abc"}"#)
        XCTAssertEqual(abc.error, .invalidArgument)
        let sw = await settings.switches
        XCTAssertEqual(sw.measurementInterval, .seconds(3))
        XCTAssertTrue(sw.measurementEnabled)
    }

    func testSendMeasurementsTakesTheSeedsCountStringAndStreamIDs() async throws {
        let env = FakeEnvironment(settings: makeSettings())
        let h = handler(env)
        let t0 = 1_700_000_000_000  // time of record 3; record n was appended at t0 + (n − 3) s
        let count = await send(h, #"{"command": "send_measurements", "count": "3"}"#)
        XCTAssertTrue(count.ok, count.message ?? "")
        // At or after a time: from the first record appended then.
        let after = await send(h, #"{"command": "send_measurements", "min_id": "\#(t0 + 2000)-0"}"#)
        XCTAssertTrue(after.ok, after.message ?? "")
        // Between two times falling between records, with the seed's exclusive "(" form; 6 is
        // missing, so a time at 6 starts at 7.
        _ = await send(h, #"{"command": "send_measurements", "min_id": "\#(t0 + 3000)-0", "max_id": "(\#(t0 + 6000)-0"}"#)
        _ = await send(h, #"{"command": "send_measurements", "min_id": "(\#(t0)-5", "max_id": "\#(t0 + 4500)-0", "count": 2}"#)
        // Before every record, after every record: from the oldest / nothing to send.
        _ = await send(h, #"{"command": "send_measurements", "min_id": "1-0", "max_id": "\#(t0)-0"}"#)
        let none = await send(h, #"{"command": "send_measurements", "min_id": "\#(t0 + 60_000)-0"}"#)
        XCTAssertTrue(none.ok)
        XCTAssertNil(none.resent, "no record at or after that time: nothing resent")
        let beforeAll = await send(h, #"{"command": "send_measurements", "max_id": "\#(t0 - 1)-0"}"#)
        XCTAssertNil(beforeAll.resent)
        let requests = await env.replays.items
        XCTAssertEqual(requests, [
            ReplayQuery(requestID: nil, from: nil, to: nil, count: 3),
            ReplayQuery(requestID: nil, from: SequenceNumber(5), to: nil, count: nil),
            ReplayQuery(requestID: nil, from: SequenceNumber(7), to: SequenceNumber(8), count: nil),
            ReplayQuery(requestID: nil, from: SequenceNumber(4), to: SequenceNumber(7), count: 2),
            ReplayQuery(requestID: nil, from: SequenceNumber(3), to: SequenceNumber(3), count: nil),
        ])
        let bad = await send(h, #"{"command": "send_measurements", "count": "abc"}"#)
        XCTAssertEqual(bad.error, .invalidArgument)
        XCTAssertTrue(bad.message!.contains("abc"), bad.message!)
    }

    func testRebootIsDisabledByDefaultAndRunsTheConfiguredCommandAfterTheResponse() async throws {
        let dir = try TemporaryDirectory("reboot")
        defer { dir.remove() }
        let r = await send(handler(FakeEnvironment(settings: makeSettings())), #"{"command": "reboot"}"#)
        XCTAssertEqual(r.error, .notAllowed)
        XCTAssertTrue(r.message!.contains("disabled"))

        var env = FakeEnvironment(settings: makeSettings())
        env.rebootCommand = ["/usr/bin/touch", dir.file("rebooted")]
        let result = await handler(env).handle(Array(#"{"command": "Reboot"}"#.utf8))
        XCTAssertEqual(String(decoding: result.payload, as: UTF8.self), #"{"v":1,"command":"reboot","ok":true}"#)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.file("rebooted")), "not before the response is out")
        await result.afterResponse?()
        for _ in 0..<100 where !FileManager.default.fileExists(atPath: dir.file("rebooted")) { try await Task.sleep(for: .milliseconds(20)) }
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir.file("rebooted")))
    }

    func testMalformedAndUnknownCommandsGetErrorResponsesOnly() async {
        let settings = makeSettings()
        let h = handler(FakeEnvironment(settings: settings))
        let cases: [(String, CommandErrorCode)] = [
            ("not json", .malformed),
            ("[1,2]", .malformed),
            (#"{"key": "x"}"#, .malformed),
            (#"{"command": 5}"#, .malformed),
            (#"{"command": "format_disk", "id": "z"}"#, .unknownCommand),
            (#"{"command": "get_config"}"#, .invalidArgument),
            (#"{"command": "stop", "id": 7}"#, .malformed),
            (#"{"command": "set_interval", "seconds": true}"#, .invalidArgument),
            (String(repeating: " ", count: 20000), .malformed),
        ]
        for (payload, expected) in cases {
            let r = await send(h, payload)
            XCTAssertEqual(r.error, expected, String(payload.prefix(40)))
            XCTAssertNotNil(r.message)
        }
        let unknown = await send(h, #"{"command": "format_disk", "id": "z"}"#)
        XCTAssertEqual(unknown.requestID, "z")
        XCTAssertEqual(unknown.command, "format_disk")
        let s = await settings.switches
        XCTAssertEqual(s, DeviceSwitches(measurementEnabled: true, measurementInterval: .seconds(2), senderEnabled: true, senderInterval: .seconds(1)),
                       "nothing else happened")
    }

    func testACommandIDIsExecutedAtMostOnceAcrossRestarts() async throws {
        let dir = try TemporaryDirectory("seen")
        defer { dir.remove() }
        let settings = makeSettings()
        let env = FakeEnvironment(settings: settings)
        let path = dir.file("device.sqlite3.commands")
        let firstBytes: String
        do {
            let h = handler(env, seen: try SeenCommands(path: path, capacity: 100))
            firstBytes = await text(h, #"{"command": "stop", "id": "once"}"#)
            await settings.set(.measurementEnabled, .enabled(true))  // someone starts it again
            let again = await text(h, #"{"command": "stop", "id": "once"}"#)
            XCTAssertEqual(again, firstBytes, "a repeat gets the same response")
            let s = await settings.switches
            XCTAssertTrue(s.measurementEnabled, "the repeat was not executed")
        }
        // A new process (new handler, same file) remembers.
        let h2 = handler(env, seen: try SeenCommands(path: path, capacity: 100))
        let third = await text(h2, #"{"command": "stop", "id": "once"}"#)
        XCTAssertEqual(third, firstBytes)
        let s = await settings.switches
        XCTAssertTrue(s.measurementEnabled)
    }

    func testInterruptedCommandIsNotExecutedAgain() async throws {
        let dir = try TemporaryDirectory("seen")
        defer { dir.remove() }
        let path = dir.file("c")
        let seen = try SeenCommands(path: path, capacity: 100)
        try await seen.markStarted("crashy")
        // A torn last line (power cut mid-write) is ignored.
        let fh = FileHandle(forWritingAtPath: path)!
        fh.seekToEndOfFile()
        fh.write(Data(#"{"k":"torn","r":"{\"comm"#.utf8))
        try fh.close()
        let settings = makeSettings()
        let h = handler(FakeEnvironment(settings: settings), seen: try SeenCommands(path: path, capacity: 100))
        let r = await send(h, #"{"command": "stop", "id": "crashy"}"#)
        XCTAssertEqual(r.error, .failed)
        XCTAssertTrue(r.message!.contains("not executed again"))
        let s = await settings.switches
        XCTAssertTrue(s.measurementEnabled)
        let fresh = await send(h, #"{"command": "stop", "id": "torn"}"#)
        XCTAssertTrue(fresh.ok, "a torn line does not count as seen")
    }

    func testSeenFileIsCompactedAndKeepsTheNewestIDs() async throws {
        let dir = try TemporaryDirectory("seen")
        defer { dir.remove() }
        let path = dir.file("c")
        let seen = try SeenCommands(path: path, capacity: 100)
        for i in 0..<300 {
            try await seen.markStarted("\(i)")
            try await seen.markAnswered("\(i)", response: Data("{\"ok\":true}".utf8))
        }
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").count
        XCTAssertLessThanOrEqual(lines, 200)
        let reopened = try SeenCommands(path: path, capacity: 100)
        let newest = await reopened.state(of: "299"), oldest = await reopened.state(of: "0")
        XCTAssertEqual(newest, .answered(Data("{\"ok\":true}".utf8)))
        XCTAssertNil(oldest, "the oldest ids are forgotten beyond the capacity")
    }

    func testRemoteValuesUpdateSwitchesButPendingLocalChangesWin() async {
        let settings = makeSettings()
        await settings.set(.measurementInterval, .interval(.seconds(5)))
        let problems = await settings.applyRemote([.measurementInterval: "9", .senderInterval: "bogus", .measurementEnabled: nil, .senderEnabled: "0"])
        var s = await settings.switches
        XCTAssertEqual(s.measurementInterval, .seconds(5), "our unwritten change is newer")
        XCTAssertEqual(s.senderInterval, .seconds(1), "an invalid remote value is ignored")
        XCTAssertTrue(s.measurementEnabled, "an absent key keeps the last known value")
        XCTAssertFalse(s.senderEnabled)
        XCTAssertEqual(problems.count, 1)
        await settings.writesDone([.measurementInterval: .interval(.seconds(5))])
        await settings.applyRemote([.measurementInterval: "9"])
        s = await settings.switches
        XCTAssertEqual(s.measurementInterval, .seconds(9))
    }
}
