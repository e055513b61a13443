// Pure parts of the web admin, without IO: time parsing, the SVG chart, CSV cells, command input.
import FieldlogCore
import Foundation
import Sync
import XCTest
@testable import BackendStore
@testable import Ingest
@testable import Audit
@testable import WebAdmin

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
        let svg = chart.html().text
        XCTAssertEqual(svg.components(separatedBy: "<polyline").count - 1, 2, "the line is drawn in two pieces")
        XCTAssertTrue(svg.contains("band nodata"))
        XCTAssertTrue(svg.contains("band missing"))
        XCTAssertTrue(svg.contains("band offline"))
        XCTAssertTrue(svg.contains("temp&lt;x&gt;"), "the sensor name is escaped")
        XCTAssertFalse(svg.contains("temp<x>"))
        XCTAssertTrue(svg.contains("data-ms="), "time labels can be localised")
        XCTAssertTrue(svg.contains("data-points=\"10000,0,1;11000,1,2;"), "the points for the hover read-out, relative to the range")
        let empty = SensorChart(sensor: "t", points: [], fromMs: base, toMs: base + 1000).html().text
        XCTAssertTrue(empty.contains("No readings in this time range"))
    }

    /// Issue 16: the line was drawn straight through a gap and a declared loss when the
    /// neighbouring readings were close in time.
    func testChartCutsTheLineAtMissingAndLostRecordsAndEpochs() {
        let base: Int64 = 1_800_000_000_000
        // Readings every 250 ms, seq 1…40 of epoch 7 without 8…10 (a gap) and 20…21 (declared lost), then epoch 8.
        let seqs = (1...40).filter { !(8...10).contains($0) && !(20...21).contains($0) }
        var points = seqs.map { SeriesPoint(ms: base + Int64($0) * 250, value: Double($0 % 5), epoch: 7, seq: UInt64($0)) }
        points += (1...5).map { SeriesPoint(ms: base + 10_250 + Int64($0) * 250, value: 1, epoch: 8, seq: UInt64($0)) }
        let cuts = [ChartCut(epoch: 7, first: 8, last: 10), ChartCut(epoch: 7, first: 20, last: 21)]
        let chart = SensorChart(sensor: "t", points: points, fromMs: base, toMs: base + 12_000, cuts: cuts)
        XCTAssertTrue(chart.breaks().isEmpty, "no neighbours are far apart in time")
        XCTAssertEqual(chart.segments().map { $0.map(\.seq) }, [Array(1...7), Array(11...19), Array(22...40), Array(1...5)].map { $0.map(UInt64.init) })
        XCTAssertEqual(chart.html().text.components(separatedBy: "<polyline").count - 1, 4)
        // Without the cuts it would be one line per epoch: what the old chart drew.
        XCTAssertEqual(SensorChart(sensor: "t", points: points, fromMs: base, toMs: base + 12_000).segments().count, 2)
        // A missing sensor value (a record without this sensor) is no cut.
        let sparse = [1, 2, 4, 5].map { SeriesPoint(ms: base + Int64($0) * 250, value: 1, epoch: 7, seq: UInt64($0)) }
        XCTAssertEqual(SensorChart(sensor: "t", points: sparse, fromMs: base, toMs: base + 2000, cuts: cuts).segments().count, 1)
    }

    func testHTMLEscapesInterpolatedTextButNotMarkup() {
        let name = "<script>alert('x')</script> & \"q\""
        let inner: HTML = "<b>\(name)</b>"
        let page: HTML = "<p title=\"\(name)\">\(inner) \(42) \(Optional<String>.none)</p>"
        XCTAssertEqual(page.text, "<p title=\"&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;\"><b>&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;</b> 42 </p>")
        XCTAssertEqual(PageLink("/d", [("q", "a b&c=d/é"), ("x", nil)]).text, "/d?q=a%20b%26c%3Dd%2F%C3%A9")
    }

    func testChartReducesManyPointsButKeepsSpikes() {
        let base: Int64 = 1_800_000_000_000
        var points = (0..<100_000).map { SeriesPoint(ms: base + Int64($0) * 10, value: 1, epoch: 1, seq: UInt64($0 + 1)) }
        points[54_321].value = 1000
        let chart = SensorChart(sensor: "t", points: points, fromMs: base, toMs: base + 1_000_000, columns: 800)
        let reduced = chart.reduced(points)
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
        // Issue 16: spreadsheets skip a leading TAB or CR and run the rest as a formula.
        XCTAssertEqual(csvField("\t=HYPERLINK(\"x\")"), "\"'\t=HYPERLINK(\"\"x\"\")\"")
        XCTAssertEqual(csvField("\r=1+1"), "\"'\r=1+1\"")
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
        let t = SignInThrottle(freeFailures: 3, freeClientFailures: 100, capacity: 2)
        let t0 = ContinuousClock.now
        for k in 0..<3 {
            XCTAssertNil(t.refusal(client: "c", user: "a", now: t0), "attempt \(k + 1) is free")
            t.failed(client: "c", user: "a", now: t0)
        }
        XCTAssertEqual(t.refusal(client: "c", user: "a", now: t0), .seconds(30))
        XCTAssertEqual(t.refusal(client: "c", user: "a", now: t0 + .seconds(20)), .seconds(10))
        XCTAssertNil(t.refusal(client: "c", user: "a", now: t0 + .seconds(30)))
        t.failed(client: "c", user: "a", now: t0 + .seconds(30))
        XCTAssertEqual(t.refusal(client: "c", user: "a", now: t0 + .seconds(30)), .seconds(60), "doubles per further failure")
        XCTAssertNil(t.refusal(client: "c", user: "b", now: t0), "per user name")
        XCTAssertNil(t.refusal(client: "other", user: "a", now: t0), "another client may still sign in as a: no lock-out by others")
        XCTAssertEqual(SignInThrottle.delay(afterFailures: 20), .seconds(900), "at most 15 min")
        t.succeeded(client: "c", user: "a")
        XCTAssertNil(t.refusal(client: "c", user: "a", now: t0 + .seconds(30)))
        // Bounded: a third pair pushes out the stalest.
        for _ in 0..<3 { t.failed(client: "c", user: "x", now: t0) }
        for _ in 0..<3 { t.failed(client: "c", user: "y", now: t0 + .seconds(1)) }
        for _ in 0..<3 { t.failed(client: "c", user: "z", now: t0 + .seconds(2)) }
        XCTAssertNil(t.refusal(client: "c", user: "x", now: t0 + .seconds(2)), "dropped: the stalest")
        XCTAssertNotNil(t.refusal(client: "c", user: "z", now: t0 + .seconds(2)))
    }

    func testSignInThrottleSlowsAClientThatTriesManyNames() {
        let t = SignInThrottle(freeFailures: 5, freeClientFailures: 10)
        let t0 = ContinuousClock.now
        for k in 0..<10 {
            XCTAssertNil(t.refusal(client: "guesser", user: "name\(k)", now: t0))
            t.failed(client: "guesser", user: "name\(k)", now: t0)
        }
        XCTAssertEqual(t.refusal(client: "guesser", user: "fresh-name", now: t0), .seconds(30), "every further name waits")
        XCTAssertNil(t.refusal(client: "someone-else", user: "fresh-name", now: t0))
    }

    func testSignInGateAdmitsAtMostItsLimitAtOnce() async {
        let gate = SignInGate(limit: 2)
        let (release, releaser) = AsyncStream.makeStream(of: Void.self)
        let started = AsyncStream.makeStream(of: Void.self)
        async let a: Int? = gate.run { started.continuation.yield(); for await _ in release { break }; return 1 }
        async let b: Int? = gate.run { started.continuation.yield(); for await _ in release { break }; return 2 }
        var it = started.stream.makeAsyncIterator()
        _ = await it.next(); _ = await it.next()
        let third = await gate.run { 3 }
        XCTAssertNil(third, "a third check while two run is refused")
        releaser.yield(); releaser.yield(); releaser.finish()
        let done = await [a, b]
        XCTAssertEqual(done.compactMap { $0 }.sorted(), [1, 2])
        let after = await gate.run { 4 }
        XCTAssertEqual(after, 4)
    }

    func testConfigValuesAreCheckedByKind() throws {
        XCTAssertEqual(try ConfigValueKind(key: "measurement:enabled").normalized("off"), "0")
        XCTAssertEqual(try ConfigValueKind(key: "measurement:enabled").normalized(" ON "), "1")
        XCTAssertThrowsError(try ConfigValueKind(key: "measurement:enabled").normalized("disable"), "issue 16: the device would read it as on")
        XCTAssertEqual(try ConfigValueKind(key: "mqtt_sender:interval").normalized("2.50"), "2.5")
        XCTAssertThrowsError(try ConfigValueKind(key: "mqtt_sender:interval").normalized("0"))
        XCTAssertEqual(try ConfigValueKind(key: "site:name").normalized("Hall 3"), "Hall 3")
    }

    func testCommandStateComesFromTheAnswersOkNotFromTheOutcomeText() {
        func state(_ ok: Bool?, _ outcome: String?, answered: Bool = true, sentAgoMs: Int64 = 1000) -> String {
            CommandRow.state(answeredOK: ok, responseAt: answered ? "2026-01-01 00:00:00.000" : nil, outcome: outcome,
                             sentAtMs: 10_000 - sentAgoMs, nowMs: 10_000, timeoutMs: 5000)
        }
        XCTAssertEqual(state(true, "resent 1…3"), "answered", "issue 16: a successful replay")
        XCTAssertEqual(state(true, "not-retained 1…4"), "answered")
        XCTAssertEqual(state(false, "not-allowed"), "failed")
        XCTAssertEqual(state(nil, "not-sent"), "not-sent")
        XCTAssertEqual(state(nil, "resent 1…3"), "answered", "without an answer row, only an error code is a failure")
        XCTAssertEqual(state(nil, "failed"), "failed")
        XCTAssertEqual(state(nil, nil, answered: false), "waiting")
        XCTAssertEqual(state(nil, nil, answered: false, sentAgoMs: 6000), "timed-out")
    }

    func testFleetQueryFiltersSearchesSortsAndPages() throws {
        func device(_ i: Int) -> FleetDevice {
            FleetDevice(device: "dev-\(String(i).leftPadded(to: 3))", protocolName: "fieldlog", state: i % 3 == 0 ? "offline" : "online", measuring: true,
                        epoch: nil, head: nil, acked: nil, backlog: UInt64(i % 4), storedThrough: nil, gapCount: i % 5 == 0 ? 1 : 0,
                        missingRecords: i % 5 == 0 ? UInt64(i) : 0, deadLetters: i % 7 == 0 ? 1 : 0, lastSeenAt: nil, statusAt: nil, silent: i % 11 == 0)
        }
        let fleet = (1...100).map(device)
        func q(_ p: [String: String]) throws -> FleetQuery { try FleetQuery(parameters: { p[$0] }) }
        let offline = try q(["filter": "offline", "pageSize": "10"]).apply(fleet)
        XCTAssertEqual(offline.total, 33)
        XCTAssertEqual(offline.page.count, 10)
        XCTAssertTrue(offline.page.allSatisfy { $0.state == "offline" })
        let counts = FleetCounts(fleet)
        XCTAssertEqual([counts.online, counts.offline, counts.silent, counts.gaps, counts.deadLetters], [67, 33, 9, 20, 14])
        XCTAssertEqual(try q(["q": "DEV-04"]).apply(fleet).page.map(\.device), (40...49).map { "dev-0\($0)" }, "case-insensitive substring")
        let gapsDesc = try q(["filter": "gaps", "sort": "gaps", "dir": "desc", "page": "1", "pageSize": "5"]).apply(fleet)
        XCTAssertEqual(gapsDesc.page.map(\.missingRecords), [75, 70, 65, 60, 55])
        for bad in [["filter": "broken"], ["sort": "colour"], ["dir": "up"], ["page": "-1"], ["pageSize": "0"], ["q": String(repeating: "x", count: 65)]] {
            XCTAssertThrowsError(try q(bad), "\(bad)")
        }
    }
}
