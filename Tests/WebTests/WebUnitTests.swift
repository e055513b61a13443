// Pure parts of the web admin, without IO: time parsing, the SVG chart, CSV cells, command input.
import FieldlogCore
import Foundation
import Sync
import XCTest
@testable import BackendNode

final class WebUnitTests: XCTestCase {
    func testTimesParseAndFormatRoundTrip() {
        XCTAssertEqual(WebTime.milliseconds(sql: "1970-01-01 00:00:00.000"), 0)
        XCTAssertEqual(WebTime.milliseconds(sql: "2026-11-29 20:16:13.123"), 1_795_983_373_123)
        XCTAssertEqual(WebTime.iso(milliseconds: 1_795_983_373_123), "2026-11-29T20:16:13.123Z")
        XCTAssertEqual(WebTime.parse("2026-11-29T20:16:13.123Z"), 1_795_983_373_123)
        XCTAssertEqual(WebTime.parse("2026-11-29T21:16:13.123+01:00"), 1_795_983_373_123)
        XCTAssertEqual(WebTime.parse("2026-11-29T20:16:13Z"), 1_795_983_373_000)
        XCTAssertEqual(WebTime.parse("1795983373123"), 1_795_983_373_123)
        for bad in ["yesterday", "2026-13-01T00:00:00Z", "2026-11-29 20:16:13", "2026-11-29T20:16:13", "", "-5", "2026-11-29T25:00:00Z"] {
            XCTAssertNil(WebTime.parse(bad), bad)
        }
        for ms: Int64 in [0, 1, 999, 86_399_999, 951_782_400_000, 4_102_444_800_000] {
            XCTAssertEqual(WebTime.milliseconds(sql: SQLTime.datetime(unixMilliseconds: ms)!), ms)
        }
    }

    func testChartBreaksTheLineAtGapsAndMarksBands() {
        let base: Int64 = 1_800_000_000_000
        var points = (0..<20).map { SeriesPoint(ms: base + Int64($0) * 1000, value: Double($0), epoch: 1, seq: UInt64($0 + 1)) }
        points += (0..<20).map { SeriesPoint(ms: base + 120_000 + Int64($0) * 1000, value: Double($0), epoch: 1, seq: UInt64($0 + 21)) }
        let chart = SensorChart(sensor: "temp<x>", points: points, fromMs: base - 10_000, toMs: base + 200_000,
                                bands: [ChartBand(kind: .missing, fromMs: base + 30_000, toMs: base + 40_000, label: "records 5…9 missing"),
                                        ChartBand(kind: .offline, fromMs: base + 150_000, toMs: base + 200_000, label: "offline")])
        XCTAssertEqual(chart.breaks().count, 2, "one break between the two runs, one after the last reading")
        XCTAssertEqual(chart.breaks().first?.fromMs, base + 19_000)
        XCTAssertEqual(chart.breaks().last?.fromMs, base + 139_000)
        let svg = chart.svg()
        XCTAssertEqual(svg.components(separatedBy: "<polyline").count - 1, 2, "the line is drawn in two pieces")
        XCTAssertTrue(svg.contains("band nodata"))
        XCTAssertTrue(svg.contains("band missing"))
        XCTAssertTrue(svg.contains("band offline"))
        XCTAssertTrue(svg.contains("temp&lt;x&gt;"), "the sensor name is escaped")
        XCTAssertFalse(svg.contains("temp<x>"))
        XCTAssertTrue(svg.contains("data-ms="), "time labels can be localised")
        let empty = SensorChart(sensor: "t", points: [], fromMs: base, toMs: base + 1000).svg()
        XCTAssertTrue(empty.contains("No readings in this time range"))
    }

    func testChartReducesManyPointsButKeepsSpikes() {
        let base: Int64 = 1_800_000_000_000
        var points = (0..<100_000).map { SeriesPoint(ms: base + Int64($0) * 10, value: 1, epoch: 1, seq: UInt64($0 + 1)) }
        points[54_321].value = 1000
        let chart = SensorChart(sensor: "t", points: points, fromMs: base, toMs: base + 1_000_000)
        let reduced = chart.reduced(plotWidth: 800)
        XCTAssertLessThanOrEqual(reduced.count, 800 * 4 + 4)
        XCTAssertTrue(reduced.contains { $0.value == 1000 }, "the spike survives")
        XCTAssertEqual(reduced, reduced.sorted { ($0.ms, $0.seq) < ($1.ms, $1.seq) })
    }

    func testNiceTicksCoverTheRange() {
        let t = niceTicks(lo: 18.3, hi: 24.9, count: 5)
        XCTAssertLessThanOrEqual(t.first!, 18.3)
        XCTAssertGreaterThanOrEqual(t.last!, 24.9)
        XCTAssertTrue(t.count >= 3 && t.count <= 8, "\(t)")
    }

    func testCSVCellsAreQuotedAndNotFormulas() {
        XCTAssertEqual(csvField("plain"), "plain")
        XCTAssertEqual(csvField("a,b"), "\"a,b\"")
        XCTAssertEqual(csvField("say \"hi\""), "\"say \"\"hi\"\"\"")
        XCTAssertEqual(csvField("=cmd()"), "'=cmd()")
        XCTAssertEqual(csvField("-3.5"), "-3.5", "negative numbers stay numbers")
    }

    func testCommandInputChecksEveryArgument() throws {
        let keys = WebSettings().configKeys
        func cmd(_ form: [String: String]) throws -> Command.Kind { try CommandInput(form: form).command(requestID: "r", configKeys: keys).kind }
        XCTAssertEqual(try cmd(["command": "stop"]), .stop)
        XCTAssertEqual(try cmd(["command": "set_interval", "intervalSeconds": "2.5"]), .setInterval(milliseconds: 2500))
        XCTAssertEqual(try cmd(["command": "get_config", "key": "measurement:interval"]), .getConfig(key: "measurement:interval"))
        XCTAssertEqual(try cmd(["command": "replay", "epoch": "1f", "from": "3", "to": "9"]),
                       .replay(epoch: Epoch(0x1f), range: SequenceRange(checked: SequenceNumber(3), SequenceNumber(9))))
        XCTAssertEqual(try cmd(["command": "replay", "from": "3", "to": "3"]), .replay(epoch: nil, range: SequenceRange(checked: SequenceNumber(3), SequenceNumber(3))))
        XCTAssertTrue(CommandInput(form: ["command": "reboot"]).needsConfirmation)
        XCTAssertEqual(try cmd(["command": "reboot", "confirm": "yes"]), .reboot)
        for bad: [String: String] in [["command": "reboot"], ["command": "x"], ["command": "set_interval", "intervalSeconds": "0"],
                                      ["command": "set_interval", "intervalSeconds": "nan"], ["command": "set_config", "key": "rm -rf", "value": "1"],
                                      ["command": "replay", "from": "0", "to": "1"], ["command": "replay", "from": "1", "to": "99999999999"]] {
            XCTAssertThrowsError(try cmd(bad), "\(bad)")
        }
    }

    func testFormParsingDecodesPercentAndPlus() {
        XCTAssertEqual(parseForm("a=1&b=x+y&c=%E2%9C%93&d="), ["a": "1", "b": "x y", "c": "✓", "d": ""])
        XCTAssertTrue(constantTimeEqual("abc", "abc"))
        XCTAssertFalse(constantTimeEqual("abc", "abd"))
        XCTAssertFalse(constantTimeEqual("abc", "abcd"))
    }

    func testSignInThrottleDelaysAfterFreeFailuresDoublesAndForgetsOnSuccess() {
        let t = SignInThrottle(freeFailures: 3, capacity: 2)
        let t0 = ContinuousClock.now
        for k in 0..<3 {
            XCTAssertNil(t.refusal(user: "a", now: t0), "attempt \(k + 1) is free")
            t.failed(user: "a", now: t0)
        }
        XCTAssertEqual(t.refusal(user: "a", now: t0), .seconds(30))
        XCTAssertEqual(t.refusal(user: "a", now: t0 + .seconds(20)), .seconds(10))
        XCTAssertNil(t.refusal(user: "a", now: t0 + .seconds(30)))
        t.failed(user: "a", now: t0 + .seconds(30))
        XCTAssertEqual(t.refusal(user: "a", now: t0 + .seconds(30)), .seconds(60), "doubles per further failure")
        XCTAssertNil(t.refusal(user: "b", now: t0), "per user name")
        XCTAssertEqual(SignInThrottle.delay(afterFailures: 20), .seconds(900), "at most 15 min")
        t.succeeded(user: "a")
        XCTAssertNil(t.refusal(user: "a", now: t0 + .seconds(30)))
        // Bounded: a third name pushes out the stalest.
        for _ in 0..<3 { t.failed(user: "x", now: t0) }
        for _ in 0..<3 { t.failed(user: "y", now: t0 + .seconds(1)) }
        for _ in 0..<3 { t.failed(user: "z", now: t0 + .seconds(2)) }
        XCTAssertNil(t.refusal(user: "x", now: t0 + .seconds(2)), "dropped: the stalest")
        XCTAssertNotNil(t.refusal(user: "z", now: t0 + .seconds(2)))
    }
}
