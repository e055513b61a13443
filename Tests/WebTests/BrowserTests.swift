// The browser test: the real stack, `fieldlog-backend run` (ingest + web in one process), a
// device on the broker, 1,000 more devices written straight into the database, and Debian's
// headless chromium driven through chromedriver's WebDriver HTTP API. As a viewer: the chart
// (with its gap cut and marked, the hover read-out and drag-to-zoom), a live update arriving
// without a reload, no controls. As an operator: stop the device and see its answer arrive,
// replay the gap from the audit page and see the replay shown as answered; the fleet page
// searched and filtered; the dead letters page. Screenshots at 1280×900 and 390×844 go to
// .run/screenshots/ (NN-name-WIDTH.png); the phone layout is checked too (labels beside
// values in tables, chart labels of a readable size).
//
// The device: `ProtocolDevice` below plays one with the protocol's own messages (Sync's
// codec): it publishes batches and its status as the device user, and answers commands on its
// response topic as spec/protocol.md says. It holds back records 8…10 until asked to replay
// them, so the audit page has a gap that its replay button closes — something a healthy
// `fieldlog-device` never shows. The real device behind the same pages runs in
// scripts/checks/demo and in DeviceTests' command tests.
import FieldlogCore
import Foundation
import Logging
import MQTT
import Processes
import Sync
import TestSupport
import XCTest
@testable import BackendStore
@testable import Ingest
@testable import Audit
@testable import WebAdmin

final class BrowserTests: XCTestCase {
    func testViewerAndOperatorUseTheAdminOnDesktopAndPhone() async throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/chromedriver"), FileManager.default.isExecutableFile(atPath: "/usr/bin/chromium") else {
            let why = "chromium and chromium-driver are not installed (scripts/install-deps installs them)"
            if ProcessInfo.processInfo.environment["FIELDLOG_REQUIRE_SERVICES"] == "1" { throw CommandFailed(description: why) }
            throw XCTSkip(why)
        }
        let db = try WebTestDatabase()
        defer { db.drop() }
        let tmp = try TemporaryDirectory("fieldlog-browser")
        defer { tmp.remove() }
        let shots = Stack.packageRoot + "/.run/screenshots"
        try FileManager.default.createDirectory(atPath: shots, withIntermediateDirectories: true)

        // Backend: schema, a viewer and an operator, 1,000 devices and some dead letters, then ingest + web in one process.
        let backend = try Binaries.path("fieldlog-backend")
        var env = db.environment.filter { $0.key.hasPrefix("FIELDLOG_") }
        env["FIELDLOG_WEB_BCRYPT_COST"] = "4"
        try runWithEnvironment(backend, ["migrate"], environment: env)
        try runWithEnvironment(backend, ["user", "add", "operator", "--role", "operator"], environment: env, input: "correct horse battery\n")
        try runWithEnvironment(backend, ["user", "add", "viewer", "--role", "viewer"], environment: env, input: "correct horse battery\n")
        let database = DatabaseClient(settings: db.settings, logger: Logger(label: "browser-test"))
        let store = try await database.store()
        let prefix = "bt"
        try await insertFleet(store, count: 1000, prefix: prefix)
        try await recordDeadLetters(store, [
            DeadLetter(topic: "fieldlog/v1/devices/bt-0003/batch", reason: .malformedJSON, message: "expected a value at offset 14",
                          topicDevice: try DeviceID("bt-0003"), payload: Array("{\"v\":1,\"records\":[{\"seq\":<script>alert(1)</script>".utf8)),
            DeadLetter(topic: "fieldlog/v1/devices/bt-0004/batch", reason: .oversize, message: "payload of 9000000 bytes is over the 1048576 limit",
                          topicDevice: try DeviceID("bt-0004"), payload: [0x1f, 0x8b, 0x08, 0x00], payloadBytes: 9_000_000),
        ])
        await database.close()
        let webPort = Ports.free()
        var processEnv = ProcessInfo.processInfo.environment
        for (k, v) in env { processEnv[k] = v }
        processEnv["FIELDLOG_INGEST_GROUP"] = Stack.uniqueName("browser")
        processEnv["FIELDLOG_WEB_FLEET_CACHE_SECONDS"] = "1"
        let server = ManagedProcess(executable: backend, arguments: ["run", "--web-port", String(webPort), "--insecure-cookies"],
                                    logPath: tmp.file("backend.log"), environment: processEnv)
        try server.start()
        defer { server.stop() }
        try Ports.waitListening(webPort, what: "fieldlog-backend web")

        // The device.
        let device = try DeviceID(Stack.uniqueName("press"))
        let devicePassword = Stack.uniqueName("pw")
        try db.stack.addMQTTUser(device.rawValue, password: devicePassword)
        let sim = try await ProtocolDevice.start(device: device, password: devicePassword, stack: db.stack)
        addTeardownBlock { await sim.shutdown() }
        // Let it measure for a while so the chart has a line.
        try await Task.sleep(for: .seconds(6))

        // The browser.
        let driverPort = Ports.free()
        let driver = ManagedProcess(executable: "/usr/bin/chromedriver", arguments: ["--port=\(driverPort)"], logPath: tmp.file("chromedriver.log"))
        try driver.start()
        defer { driver.stop() }
        try Ports.waitListening(driverPort, what: "chromedriver")
        let browser = try await WebDriver.start(port: driverPort)
        let base = "http://127.0.0.1:\(webPort)"
        let devicePath = "/devices/\(device.rawValue)"
        func text(_ css: String) async throws -> String {
            try await browser.script("var e=document.querySelector(\(jsString(css))); return e ? e.innerText : ''") as? String ?? ""
        }
        func count(_ css: String) async throws -> Int {
            try await browser.script("return document.querySelectorAll(\(jsString(css))).length") as? Int ?? 0
        }
        func signIn(_ user: String) async throws {
            try await browser.type("input[name=user]", user)
            try await browser.type("input[name=password]", "correct horse battery")
            try await browser.click("form button[type=submit]")
        }

        do {
            try await browser.setViewport(width: 1280, height: 900)
            try await browser.go(base + devicePath)
            try await browser.waitUntil("the sign-in page") { try await browser.script("return location.pathname") as? String == "/signin" }
            try await browser.screenshot(to: shots + "/01-signin-1280.png", fullPage: false)

            // The viewer: charts, no controls.
            try await signIn("viewer")
            try await browser.waitUntil("the device page") { try await browser.script("return location.pathname") as? String == devicePath }
            expectEqual(try await count("#stop-button"), 0, "a viewer has no stop button")
            expectTrue(try await text("#control").contains("Your role (viewer) reads only"))
            expectGreater(try await count(".chart polyline.line"), 1, "the line is cut at the gap 8…10")
            expectGreater(try await count(".plot rect.band.missing"), 0, "the lost records 8…10 are marked on the chart")
            // Hover: the value and time of the nearest reading.
            try await browser.pointer(on: ".chartcard .plotbox", at: [(0.6, 0.5)])
            let tip = try await text(".chartcard .tip")
            XCTAssertTrue(tip.contains("seq"), "hover shows value, time and sequence number: \(tip.debugDescription)")
            try await browser.screenshot(to: shots + "/02-device-viewer-hover-1280.png", fullPage: false)

            // A live update without a reload: the device stops measuring on its own (its button).
            try await browser.script("window.fieldlogMarker = 42")
            await sim.setMeasuring(false)
            try await browser.waitUntil("the live status", timeout: .seconds(20)) { try await text("#summary").contains("Stopped") }
            expectEqual(try await browser.script("return window.fieldlogMarker") as? Int, 42, "no reload")
            expectNotNil(Int(try await browser.script("return document.body.getAttribute('data-live-updates')") as? String ?? ""))
            await sim.setMeasuring(true)
            try await browser.waitUntil("measuring again", timeout: .seconds(20)) { try await text("#summary").contains("Measuring") }
            try await Task.sleep(for: .seconds(2))

            // Drag across the chart: the page zooms to that span.
            try await browser.pointer(on: ".chartcard .plotbox", at: [(0.35, 0.5), (0.75, 0.5)], press: true)
            try await browser.waitUntil("the zoomed range") { (try await browser.script("return location.search") as? String ?? "").contains("from=") }
            let search = try await browser.script("return location.search") as? String ?? ""
            XCTAssertTrue(search.contains("to="), search)
            try await browser.go(base + devicePath)

            // Sign out; the operator signs in.
            try await browser.click("form.signout button")
            try await browser.waitUntil("signed out") { try await browser.script("return location.pathname") as? String == "/signin" }
            try await browser.go(base + devicePath)
            try await signIn("operator")
            try await browser.waitUntil("the device page") { try await browser.script("return location.pathname") as? String == devicePath }

            // Stop measuring; the device's answer arrives live. The form posts and comes back to
            // the device page: wait for the new document (the old one's marker gone), or the
            // marker below lands on the page the post is leaving.
            try await browser.script("window.fieldlogBeforeStop = 1")
            try await browser.click("#stop-button")
            try await browser.waitUntil("the device page again") {
                let path = try await browser.script("return location.pathname") as? String
                let state = try await browser.script("return document.readyState") as? String
                let fresh = try await browser.script("return window.fieldlogBeforeStop === undefined") as? Bool
                return path == devicePath && state == "complete" && fresh == true
            }
            try await browser.script("window.fieldlogMarker = 7")
            try await browser.waitUntil("the device's answer", timeout: .seconds(20)) {
                let t = try await text("#commands")
                return t.contains("answered") && t.contains("measuring stopped")
            }
            expectEqual(try await browser.script("return window.fieldlogMarker") as? Int, 7, "the answer came without a reload")
            try await browser.waitUntil("the stopped status", timeout: .seconds(20)) { try await text("#summary").contains("Stopped") }
            try await browser.script("document.getElementById('control').scrollIntoView()")
            try await browser.screenshot(to: shots + "/03-device-operator-stopped-1280.png", fullPage: false)

            // The readings stop: the count of stored readings no longer grows.
            func storedCount() async throws -> Int {
                try await browser.go(base + devicePath)
                let digits = try await text("#readings .pager").components(separatedBy: "·").last?.filter(\.isNumber) ?? ""
                return Int(digits) ?? -1
            }
            try await Task.sleep(for: .seconds(2))
            let before = try await storedCount()
            XCTAssertGreaterThan(before, 5)
            try await Task.sleep(for: .seconds(4))
            let after = try await storedCount()
            XCTAssertEqual(before, after, "no readings arrive after the stop")
            try await browser.screenshot(to: shots + "/04-device-1280-full.png")

            // The audit shows the gap; its replay button asks the device to resend it, and it closes.
            try await browser.go(base + "/audit?x=1")
            expectTrue(try await text("main").contains("8…10"), "the audit lists the gap")
            try await browser.screenshot(to: shots + "/05-audit-1280.png", fullPage: false)
            try await browser.click("tr:has(a[href='\(devicePath)#audit']) form button")
            try await browser.waitUntil("the replay to fill the gap", timeout: .seconds(20)) {
                try await browser.go(base + "/audit")
                return !(try await text("main").contains("8…10"))
            }
            // The replay is shown as answered, not failed.
            try await browser.go(base + devicePath)
            try await browser.waitUntil("the replay's answer", timeout: .seconds(20)) { try await text("#commands").contains("answered · resent 8…10") }
            expectFalse(try await text("#commands").contains("✗"))

            // The fleet: 1,001 devices, searched, then filtered by the offline tile.
            try await browser.go(base + "/")
            // 1,000 written, the real one, and any whose retained status the shared broker still holds from earlier runs.
            let pager = try await text("#fleet-pager")
            let total = Int(pager.components(separatedBy: " of ").dropFirst().first?.prefix { $0.isNumber || $0 == "\u{202F}" }.filter(\.isNumber) ?? "") ?? 0
            XCTAssertGreaterThanOrEqual(total, 1001, pager)
            XCTAssertTrue(pager.contains("1–50 of"), pager)
            try await browser.screenshot(to: shots + "/06-fleet-1280.png", fullPage: false)
            try await browser.type("input[name=q]", "bt-00")
            try await browser.click("form.search button[type=submit]")
            try await browser.waitUntil("the search") { (try await text("#fleet-pager")).contains("of 100 devices") }
            expectEqual(try await count("#fleet-rows tr"), 50)
            try await browser.click("a.tile[data-filter=offline]")
            try await browser.waitUntil("the offline filter") { (try await text("#fleet-pager")).contains("of 25 devices") }
            let rows = try await browser.script("return Array.from(document.querySelectorAll('#fleet-rows td[data-label=Status]')).map(function(e){return e.innerText}).join('|')") as? String ?? ""
            XCTAssertFalse(rows.contains("Online"), rows)
            expectTrue(try await browser.script("return location.search") as? String == "?q=bt-00&filter=offline")
            try await browser.screenshot(to: shots + "/07-fleet-search-offline-1280.png", fullPage: false)

            // Dead letters, with the payload head (escaped).
            try await browser.go(base + "/dead-letters")
            expectEqual(try await count("table.deadletters tbody tr"), 50, "a page of the newest")
            try await browser.script("document.querySelectorAll('table.deadletters details').forEach(function(d){d.open=true})")
            expectTrue(try await text("table.deadletters").contains("<script>alert(1)</script>"), "shown as text")
            expectEqual(try await count("table.deadletters script"), 0)
            try await browser.screenshot(to: shots + "/08-dead-letters-1280.png", fullPage: false)

            // The phone.
            try await browser.setViewport(width: 390, height: 844)
            try await browser.go(base + "/?filter=gaps")
            let label = try await browser.script("""
                var td=document.querySelector('#fleet-rows td[data-label=Backlog]'); var cs=getComputedStyle(td);
                return cs.display + '|' + getComputedStyle(td,'::before').content
                """) as? String ?? ""
            XCTAssertEqual(label, "flex|\"Backlog\"", "the label sits beside the value, not glued to it")
            try await browser.screenshot(to: shots + "/09-fleet-390.png", fullPage: false)
            try await browser.go(base + devicePath)
            let axis = try await browser.script("var t=document.querySelector('.chart svg.yaxis text'); return t.getBoundingClientRect().height") as? Double ?? 0
            XCTAssertGreaterThanOrEqual(axis, 10, "chart labels are readable on a phone")
            try await browser.screenshot(to: shots + "/10-device-390.png", fullPage: false)
            try await browser.screenshot(to: shots + "/11-device-390-full.png", maxHeight: 5200)
            try await browser.go(base + "/?filter=gaps")
            try await browser.screenshot(to: shots + "/12-fleet-390-full.png", maxHeight: 3000)
            try await browser.go(base + "/dead-letters?limit=5")
            try await browser.screenshot(to: shots + "/13-dead-letters-390-full.png", maxHeight: 3000)
            try await browser.go(base + "/audit")
            try await browser.screenshot(to: shots + "/14-audit-390.png", fullPage: false)
            try await browser.quit()
        } catch {
            try? await browser.screenshot(to: shots + "/failure.png")
            try? await browser.quit()
            print("backend log:\n\(server.log().suffix(4000))")
            throw error
        }
    }
}

/// A JavaScript string literal of `s`.
func jsString(_ s: String) -> String {
    String(decoding: try! JSONSerialization.data(withJSONObject: [s]), as: UTF8.self).dropFirst().dropLast().description
}

/// A device that speaks protocol v1 on the broker: batches of one reading every 250 ms, its
/// status (retained), and answers to start/stop/status commands on its response topic.
actor ProtocolDevice {
    let device: DeviceID
    let epoch = Epoch(UInt64.random(in: 1...0xffff_ffff))
    let client: MQTTClient
    var measuring = true
    var next = SequenceNumber(1)
    var loop: Task<Void, Never>?
    /// Everything measured, for replays.
    var log: [UInt64: LogRecord] = [:]
    /// Sequence numbers whose batches are "lost" on the way (never sent until replayed): a gap.
    let withheld: ClosedRange<UInt64> = 8...10
    var commands: Task<Void, Never>?

    init(device: DeviceID, client: MQTTClient) {
        self.device = device
        self.client = client
    }

    static func start(device: DeviceID, password: String, stack: Stack) async throws -> ProtocolDevice {
        let t = TopicTemplates.defaults
        let client = try MQTTClient(configuration: MQTTConfiguration(
            host: stack.mqttHost, port: stack.mqttPort, clientID: device.rawValue, username: device.rawValue, password: password,
            will: .init(topic: t.status.topic(device: device), payload: SyncCodec.encode(Status.lastWill(device: device)), retain: true)))
        try await client.connect()
        try await client.subscribe(t.request.topic(device: device))
        let d = ProtocolDevice(device: device, client: client)
        await d.begin()
        return d
    }

    func begin() {
        loop = Task { await self.measureLoop() }
        commands = Task { await self.commandLoop() }
    }

    func status() -> Status {
        Status(device: device, state: .online, epoch: epoch, head: SequenceNumber(next.rawValue - 1), acked: SequenceNumber(next.rawValue - 1),
               atUnixMilliseconds: WebTime.nowMilliseconds(), measuring: measuring)
    }

    /// The device's own start/stop (its button): measuring changes and the status says so.
    func setMeasuring(_ on: Bool) async {
        measuring = on
        await publishStatus()
    }

    func publishStatus() async {
        _ = try? await client.publish(TopicTemplates.defaults.status.topic(device: device), payload: SyncCodec.encode(status()), retain: true)
    }

    func measureLoop() async {
        await publishStatus()
        var tick = 0.0
        while !Task.isCancelled {
            if measuring {
                tick += 1
                let value = 21.0 + 3 * sin(tick / 6) + Double.random(in: -0.2...0.2)
                let record = LogRecord(sequence: next, timestamp: DeviceTimestamp(unixMilliseconds: WebTime.nowMilliseconds()),
                                       values: try! SensorValues(["temperature_c": .number((value * 100).rounded() / 100), "pressure_bar": .number(2 + tick.truncatingRemainder(dividingBy: 7) / 10)]))
                log[next.rawValue] = record
                if !withheld.contains(next.rawValue) {
                    let batch = Batch(device: device, epoch: epoch, range: SequenceRange(checked: next, next), records: [record])
                    _ = try? await client.publish(TopicTemplates.defaults.batch.topic(device: device), payload: SyncCodec.encode(batch))
                }
                next = SequenceNumber(next.rawValue + 1)
            }
            try? await Task.sleep(for: .milliseconds(250))
        }
    }

    func commandLoop() async {
        for await m in client.messages {
            guard let command = try? SyncCodec.decodeCommand(m.payload) else { continue }
            let response: CommandResponse
            switch command.kind {
            case .stop: measuring = false; response = CommandResponse(requestID: command.requestID, command: command.name, message: "measuring stopped")
            case .start: measuring = true; response = CommandResponse(requestID: command.requestID, command: command.name, message: "measuring started")
            case .status: response = CommandResponse(requestID: command.requestID, command: command.name, status: status())
            case .replay(let e, let range) where e == nil || e == epoch:
                let records = (range.first.rawValue...range.last.rawValue).compactMap { log[$0] }
                if records.count == Int(range.last.rawValue - range.first.rawValue + 1) {
                    let batch = Batch(device: device, epoch: epoch, range: range, records: records, replayRequestID: command.requestID)
                    _ = try? await client.publish(TopicTemplates.defaults.batch.topic(device: device), payload: SyncCodec.encode(batch))
                    response = CommandResponse(requestID: command.requestID, command: command.name, message: "resent", resent: range)
                } else {
                    response = CommandResponse(requestID: command.requestID, command: command.name, error: .invalidArgument, message: "range not in the log")
                }
            default: response = CommandResponse(requestID: command.requestID, command: command.name, error: .unknownCommand, message: "not supported by the test device")
            }
            await publishStatus()
            _ = try? await client.publish(TopicTemplates.defaults.response.topic(device: device), payload: SyncCodec.encode(response))
        }
    }

    func shutdown() async {
        loop?.cancel()
        commands?.cancel()
        await client.disconnect(sendWill: true)
    }
}

/// The few WebDriver (W3C) calls the test needs, over chromedriver's HTTP API.
struct WebDriver: Sendable {
    let base: String
    let session: String

    static func start(port: Int) async throws -> WebDriver {
        let caps: [String: Any] = ["capabilities": ["alwaysMatch": [
            "browserName": "chrome",
            "goog:chromeOptions": ["binary": "/usr/bin/chromium",
                                   "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars", "--lang=en-GB"]],
        ]]]
        let base = "http://127.0.0.1:\(port)"
        let r = try await call(base + "/session", method: "POST", body: caps)
        guard let value = r["value"] as? [String: Any], let id = value["sessionId"] as? String else {
            throw BrowserTestError( "chromedriver did not start a session: \(r)")
        }
        return WebDriver(base: base + "/session/" + id, session: id)
    }

    @discardableResult
    static func call(_ url: String, method: String, body: [String: Any]? = nil) async throws -> [String: Any] {
        let payload = try body.map { try JSONSerialization.data(withJSONObject: $0) }
        let data = try await withCheckedThrowingContinuation { (c: CheckedContinuation<Data, any Error>) in
            DispatchQueue.global().async {
                do { c.resume(returning: try PlainHTTP.request(url, method: method, body: payload)) } catch { c.resume(throwing: error) }
            }
        }
        let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] ?? [:]
        if let value = object["value"] as? [String: Any], let error = value["error"] as? String {
            throw BrowserTestError("WebDriver \(method) \(url): \(error): \(value["message"] ?? "")")
        }
        return object
    }

    func go(_ url: String) async throws { try await Self.call(base + "/url", method: "POST", body: ["url": url]) }

    func setWindow(width: Int, height: Int) async throws {
        try await Self.call(base + "/window/rect", method: "POST", body: ["width": width, "height": height])
    }

    /// Sizes the window so the page's viewport is width × height CSS pixels.
    func setViewport(width: Int, height: Int) async throws {
        try await setWindow(width: width, height: height)
        let inner = try await script("return [window.innerWidth, window.innerHeight]") as? [Int] ?? [width, height]
        try await setWindow(width: 2 * width - inner[0], height: 2 * height - inner[1])
    }

    func element(_ css: String) async throws -> String {
        let r = try await Self.call(base + "/element", method: "POST", body: ["using": "css selector", "value": css])
        guard let v = r["value"] as? [String: Any], let id = v.values.first as? String else { throw BrowserTestError( "no element \(css)") }
        return id
    }

    func type(_ css: String, _ text: String) async throws {
        let id = try await element(css)
        try await Self.call(base + "/element/\(id)/value", method: "POST", body: ["text": text])
    }

    func click(_ css: String) async throws {
        let id = try await element(css)
        try await Self.call(base + "/element/\(id)/click", method: "POST", body: [:])
    }

    @discardableResult
    func script(_ js: String) async throws -> Any? {
        try await Self.call(base + "/execute/sync", method: "POST", body: ["script": js, "args": []])["value"]
    }

    /// Saves a PNG of the window, or (`fullPage`) of the whole page: the window is grown to the
    /// page's height for it, then set back.
    func screenshot(to path: String, fullPage: Bool = true, maxHeight: Int = 6000) async throws {
        // Headless chromium has no window frame to the sides, but reports an outer width of at
        // least 500: the viewport's width is the width to keep.
        let width = try await script("return window.innerWidth") as? Int ?? 1280
        let windowHeight = try await script("return window.outerHeight") as? Int ?? 900
        if fullPage {
            let height = try await script("return Math.min(\(maxHeight), document.documentElement.scrollHeight)") as? Int ?? 1000
            let chrome = try await script("return window.outerHeight - window.innerHeight") as? Int ?? 0
            try await setWindow(width: width, height: height + chrome)
        }
        let r = try await Self.call(base + "/screenshot", method: "GET")
        guard let b64 = r["value"] as? String, let data = Data(base64Encoded: b64) else { throw BrowserTestError( "no screenshot") }
        try data.write(to: URL(fileURLWithPath: path))
        if fullPage { try await setWindow(width: width, height: windowHeight) }
    }

    /// Moves the mouse over the element to points given as fractions of its size; with
    /// `press`, holds the button from the first point to the last (a drag).
    func pointer(on css: String, at points: [(Double, Double)], press: Bool = false) async throws {
        let id = try await element(css)
        try await script("document.querySelector(\(jsString(css))).scrollIntoView({block:'center'})")
        let size = try await script("var r=document.querySelector(\(jsString(css))).getBoundingClientRect(); return [r.width, r.height]") as? [Double] ?? [0, 0]
        let origin: [String: Any] = ["element-6066-11e4-a52e-4f735466cecf": id]
        var actions: [[String: Any]] = []
        for (i, p) in points.enumerated() {
            actions.append(["type": "pointerMove", "duration": i == 0 ? 0 : 300, "origin": origin,
                            "x": Int((p.0 - 0.5) * size[0]), "y": Int((p.1 - 0.5) * size[1])])
            if press, i == 0 { actions.append(["type": "pointerDown", "button": 0]) }
        }
        if press { actions.append(["type": "pointerUp", "button": 0]) }
        try await Self.call(base + "/actions", method: "POST",
                            body: ["actions": [["type": "pointer", "id": "mouse", "parameters": ["pointerType": "mouse"], "actions": actions]]])
    }

    func waitUntil(_ what: String, timeout: Duration = .seconds(15), _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if (try? await condition()) == true { return }
            try await Task.sleep(for: .milliseconds(250))
        }
        throw BrowserTestError( "timed out waiting for \(what)")
    }

    func quit() async throws { try await Self.call(base, method: "DELETE") }
}

struct BrowserTestError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A minimal blocking HTTP/1.1 client over a socket (chromedriver writes headers without a
/// space after the colon, which FoundationNetworking's URLSession refuses).
enum PlainHTTP {
    static func request(_ url: String, method: String, body: Data?) throws -> Data {
        guard let u = URL(string: url), let port = u.port else { throw BrowserTestError("bad url \(url)") }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw BrowserTestError("socket failed") }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard connected == 0 else { throw BrowserTestError("cannot connect to \(url)") }
        var head = "\(method) \(u.path.isEmpty ? "/" : u.path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nConnection: close\r\n"
        if let body { head += "Content-Type: application/json\r\nContent-Length: \(body.count)\r\n" }
        head += "\r\n"
        var out = Data(head.utf8)
        if let body { out.append(body) }
        try out.withUnsafeBytes { raw in
            var sent = 0
            while sent < raw.count {
                let n = send(fd, raw.baseAddress! + sent, raw.count - sent, 0)
                guard n > 0 else { throw BrowserTestError("send failed") }
                sent += n
            }
        }
        var timeout = timeval(tv_sec: 90, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        // Read until the body announced by Content-Length is complete (chromedriver may keep
        // the connection open), or until the peer closes.
        var response = Data()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            if let split = response.range(of: Data("\r\n\r\n".utf8)) {
                let headers = String(decoding: response[..<split.lowerBound], as: UTF8.self).lowercased()
                if let line = headers.split(separator: "\r\n").first(where: { $0.hasPrefix("content-length:") }),
                   let length = Int(line.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)),
                   response.count - split.upperBound >= length {
                    break
                }
            }
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { break }
            response.append(contentsOf: buffer[0..<n])
        }
        guard let split = response.range(of: Data("\r\n\r\n".utf8)) else { throw BrowserTestError("no HTTP response from \(url)") }
        let headers = String(decoding: response[..<split.lowerBound], as: UTF8.self).lowercased()
        var payload = response[split.upperBound...]
        if headers.contains("transfer-encoding:chunked") || headers.contains("transfer-encoding: chunked") {
            var decoded = Data()
            var rest = Data(payload)
            while let line = rest.range(of: Data("\r\n".utf8)) {
                let size = Int(String(decoding: rest[..<line.lowerBound], as: UTF8.self).trimmingCharacters(in: .whitespaces), radix: 16) ?? 0
                if size == 0 { break }
                let start = line.upperBound
                decoded.append(rest[start..<(start + size)])
                rest = Data(rest[(start + size + 2)...])
            }
            payload = decoded[...]
        }
        return Data(payload)
    }
}
