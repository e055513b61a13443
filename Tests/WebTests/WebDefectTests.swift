// Route tests for the defects of issue 16, one test per defect; each failed on the code before
// the fix. Real MariaDB and broker, in process (`app.test(.router)`), or on a loopback port
// (`.live`) where the client's address matters.
import FieldlogCore
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import Sync
import TestSupport
import XCTest
@testable import BackendStore
@testable import Ingest
@testable import Audit
@testable import WebAdmin

final class WebDefectTests: XCTestCase {
    /// Records a command as the web sends it and the device's answer as the ingest records it.
    static func recordAnswered(_ h: WebHarness, device: DeviceID, command: Command, response: CommandResponse) async throws {
        let payload = String(decoding: SyncCodec.encode(command), as: UTF8.self)
        try await h.store.insertCommand(requestID: command.requestID!, device: device, command: command, payload: payload, sentBy: WebTestDatabase.user)
        try await h.store.database.store().recordResponse(device: device, response)
    }

    func testSuccessfulReplayIsShownAndReportedAsAnswered() async throws {
        let h = try await WebHarness.make()
        addTeardownBlock { await h.close() }
        let device = try DeviceID(Stack.uniqueName("replayok"))
        try await h.storeReadings(device, epoch: Epoch(3), count: 5)
        let range = SequenceRange(checked: SequenceNumber(1), SequenceNumber(3))
        let replay = Command(requestID: "web-replay-ok", kind: .replay(epoch: Epoch(3), range: range))
        try await Self.recordAnswered(h, device: device, command: replay,
                                 response: CommandResponse(requestID: "web-replay-ok", command: "replay", message: "resent", resent: range))
        let refused = Command(requestID: "web-replay-bad", kind: .replay(epoch: Epoch(3), range: range))
        try await Self.recordAnswered(h, device: device, command: refused,
                                 response: CommandResponse(requestID: "web-replay-bad", command: "replay", error: .invalidArgument, message: "no such epoch"))
        try await h.application.test(.router) { client in
            let s = try await client.signIn()
            let api = try jsonBody(try await client.get("/api/commands/web-replay-ok", s))
            XCTAssertEqual(api["outcome"] as? String, "resent 1…3")
            XCTAssertEqual(api["state"] as? String, "answered")
            expectEqual(try jsonBody(try await client.get("/api/commands/web-replay-bad", s))["state"] as? String, "failed")
            let page = String(buffer: try await client.get("/devices/\(device)", s).body)
            let row = try XCTUnwrap(page.components(separatedBy: "data-request=\"web-replay-ok\"").dropFirst().first?.components(separatedBy: "</tr>").first)
            XCTAssertTrue(row.contains("✓ answered · resent 1…3"), row)
            XCTAssertFalse(row.contains("✗"), row)
            let bad = try XCTUnwrap(page.components(separatedBy: "data-request=\"web-replay-bad\"").dropFirst().first?.components(separatedBy: "</tr>").first)
            XCTAssertTrue(bad.contains("✗ invalid-argument"), bad)
        }
    }

    func testSignInNextCannotLeaveTheSite() async throws {
        let h = try await WebHarness.make()
        addTeardownBlock { await h.close() }
        try await h.application.test(.router) { client in
            for next in ["%2F%09%2Fevil.example%2F", "%2F%0D%0A%2Fevil.example", "%2F%5Cevil.example", "%2F%2Fevil.example", "%2F%252F%252Fevil.example",
                         "https%3A%2F%2Fevil.example", "%20%2F%2Fevil.example"] {
                let page = try await client.execute(uri: "/signin?next=\(next)", method: .get)
                let form = String(buffer: page.body)
                let shown = try XCTUnwrap(hiddenValue("next", in: form))
                XCTAssertFalse(shown.contains("evil") && !shown.hasPrefix("/%"), "\(next) → \(shown)")
                // A correct sign-in with that next goes home, not elsewhere.
                let token = try XCTUnwrap(hiddenValue("csrf", in: form))
                let c = try XCTUnwrap(cookie(WebSettings.signInCookie, from: page))
                let r = try await client.execute(uri: "/signin", method: .post,
                                                 headers: [.cookie: "\(WebSettings.signInCookie)=\(c)", .contentType: "application/x-www-form-urlencoded"],
                                                 body: ByteBuffer(string: "csrf=\(token)&user=operator&password=correct+horse+battery&next=\(next)"))
                XCTAssertEqual(r.status, .found)
                let location = try XCTUnwrap(r.headers[.location])
                XCTAssertTrue(location == "/" || location.hasPrefix("/%"), "\(next) → Location \(location.debugDescription)")
                XCTAssertFalse(location.unicodeScalars.contains { $0.value < 0x21 }, "no control characters or spaces")
            }
            // A local path survives.
            let ok = try await client.execute(uri: "/signin?next=%2Fdevices%2Fd1%3Frange%3D1h", method: .get)
            XCTAssertEqual(hiddenValue("next", in: String(buffer: ok.body)), "/devices/d1?range=1h")
        }
    }

    func testNextSurvivesAWrongPassword() async throws {
        let h = try await WebHarness.make()
        addTeardownBlock { await h.close() }
        try await h.application.test(.router) { client in
            let page = try await client.execute(uri: "/signin?next=%2Faudit", method: .get)
            let token = try XCTUnwrap(hiddenValue("csrf", in: String(buffer: page.body)))
            let c = try XCTUnwrap(cookie(WebSettings.signInCookie, from: page))
            let wrong = try await client.execute(uri: "/signin", method: .post,
                                                 headers: [.cookie: "\(WebSettings.signInCookie)=\(c)", .contentType: "application/x-www-form-urlencoded"],
                                                 body: ByteBuffer(string: "csrf=\(token)&user=operator&password=nope-nope-nope&next=%2Faudit"))
            XCTAssertEqual(wrong.status, .unauthorized)
            let again = String(buffer: wrong.body)
            XCTAssertEqual(hiddenValue("next", in: again), "/audit")
            // Signing in from the re-shown form lands on /audit.
            let token2 = try XCTUnwrap(hiddenValue("csrf", in: again))
            let c2 = try XCTUnwrap(cookie(WebSettings.signInCookie, from: wrong))
            let right = try await client.execute(uri: "/signin", method: .post,
                                                 headers: [.cookie: "\(WebSettings.signInCookie)=\(c2)", .contentType: "application/x-www-form-urlencoded"],
                                                 body: ByteBuffer(string: "csrf=\(token2)&user=operator&password=correct+horse+battery&next=\(PageLink.encode(hiddenValue("next", in: again)!))"))
            XCTAssertEqual(right.headers[.location], "/audit")
        }
    }

    func testThrottledSignInShowsTheFormWithTheReason() async throws {
        let h = try await WebHarness.make()
        addTeardownBlock { await h.close() }
        try await h.application.test(.router) { client in
            var last: TestResponse?
            for _ in 0..<6 {
                let page = try await client.execute(uri: "/signin?next=%2Faudit", method: .get)
                let token = try XCTUnwrap(hiddenValue("csrf", in: String(buffer: page.body)))
                let c = try XCTUnwrap(cookie(WebSettings.signInCookie, from: page))
                last = try await client.execute(uri: "/signin", method: .post,
                                                headers: [.cookie: "\(WebSettings.signInCookie)=\(c)", .contentType: "application/x-www-form-urlencoded"],
                                                body: ByteBuffer(string: "csrf=\(token)&user=operator&password=wrong-wrong-wrong&next=%2Faudit"))
            }
            let refused = try XCTUnwrap(last)
            XCTAssertEqual(refused.status, .tooManyRequests)
            let html = String(buffer: refused.body)
            XCTAssertTrue(html.contains("name=\"password\""), "the form is shown again: \(html.prefix(300))")
            XCTAssertTrue(html.contains("Too many failed sign-ins"), html)
            XCTAssertEqual(hiddenValue("next", in: html), "/audit")
            XCTAssertFalse(html.contains("Something went wrong"))
        }
    }

    func testPasswordChangeEndsTheUsersOtherSessions() async throws {
        let h = try await WebHarness.make()
        addTeardownBlock { await h.close() }
        try await h.application.test(.router) { client in
            let first = try await client.signIn()
            let second = try await client.signIn()
            expectEqual(try await client.get("/", first).status, .ok)
            // The user changes their own password on the second session: the first ends, the second stays.
            let change = try await client.postForm("/account", second, [("action", "passwd"), ("current", WebTestDatabase.password),
                                                                        ("password", "a new long password"), ("again", "a new long password")])
            XCTAssertEqual(change.status, .seeOther, String(buffer: change.body))
            expectEqual(try await client.get("/", first).status, .found, "the other session ended")
            expectEqual(try await client.get("/", second).status, .ok, "the own session stays")
            // The command line sets a password: every session of that user ends.
            try await UserDirectory(store: h.store).setPassword(name: WebTestDatabase.user, password: WebTestDatabase.password, by: "cli:test")
            expectEqual(try await client.get("/", second).status, .found)
            expectEqual(try await client.get("/api/devices", second).status, .unauthorized)
        }
    }

    func testThrottleIsPerClientSoNobodyCanLockAnOperatorOut() async throws {
        let h = try await WebHarness.make { $0.trustedProxies = ["127.0.0.1"] }
        addTeardownBlock { await h.close() }
        try await h.liveApplication.test(.live) { client in
            func attempt(_ password: String, from ip: String, user: String = "operator") async throws -> TestResponse {
                try await client.execute(uri: "/api/session", method: .post,
                                         headers: [.contentType: "application/json", HTTPField.Name("X-Forwarded-For")!: "203.0.113.9, \(ip)"],
                                         body: ByteBuffer(string: #"{"user":"\#(user)","password":"\#(password)"}"#))
            }
            for _ in 0..<5 { expectEqual(try await attempt("wrong-password", from: "198.51.100.1").status, .unauthorized) }
            expectEqual(try await attempt(WebTestDatabase.password, from: "198.51.100.1").status, .tooManyRequests, "the guessing client waits")
            expectEqual(try await attempt(WebTestDatabase.password, from: "198.51.100.2").status, .created, "the operator elsewhere signs in")
            // A client trying many names is slowed down too (after 20 failures over all names).
            var statuses: [HTTPResponse.Status] = []
            for k in 0..<21 { statuses.append(try await attempt("wrong-password", from: "198.51.100.3", user: "name\(k)").status) }
            XCTAssertEqual(statuses.filter { $0 == .unauthorized }.count, 20)
            XCTAssertEqual(statuses.last, .tooManyRequests)
        }
    }

    func testErrorAnswersCarryTheSecurityHeaders() async throws {
        let h = try await WebHarness.make()
        addTeardownBlock { await h.close() }
        try await h.application.test(.router) { client in
            let s = try await client.signIn()
            var answers: [(String, TestResponse)] = [
                ("404", try await client.get("/no/such/page", s)),
                ("401", try await client.execute(uri: "/api/devices", method: .get)),
                ("400", try await client.get("/?sort=colour", s)),
                ("403", try await client.execute(uri: "/signout", method: .post, headers: [.cookie: s.cookie, .contentType: "application/x-www-form-urlencoded"],
                                                 body: ByteBuffer(string: "csrf=wrong"))),
                ("404 api", try await client.get("/api/commands/none", s)),
            ]
            for _ in 0..<6 {
                answers.append(("429", try await client.execute(uri: "/api/session", method: .post, headers: [.contentType: "application/json"],
                                                                 body: ByteBuffer(string: #"{"user":"admin","password":"wrong-password"}"#))))
            }
            XCTAssertEqual(answers.last?.1.status, .tooManyRequests)
            for (what, r) in answers {
                XCTAssertEqual(r.headers[.contentSecurityPolicy]?.contains("frame-ancestors 'none'"), true, what)
                XCTAssertEqual(r.headers[.xContentTypeOptions], "nosniff", what)
                XCTAssertEqual(r.headers[HTTPField.Name("X-Frame-Options")!], "DENY", what)
                XCTAssertEqual(r.headers[HTTPField.Name("Referrer-Policy")!], "same-origin", what)
            }
        }
    }

    func testUnexpectedErrorsAreLoggedNotShown() async throws {
        struct Secret: Error, CustomStringConvertible { var description: String { "password=hunter2 at /srv/db" } }
        let router = Router(context: WebContext.self)
        router.add(middleware: SecurityHeadersMiddleware())
        router.add(middleware: ErrorPageMiddleware(logger: Logger(label: "test")))
        router.get("/boom") { _, _ -> Response in throw Secret() }
        router.get("/api/boom") { _, _ -> Response in throw Secret() }
        try await Application(router: router).test(.router) { client in
            for path in ["/boom", "/api/boom"] {
                let r = try await client.execute(uri: path, method: .get)
                XCTAssertEqual(r.status, .internalServerError)
                let body = String(buffer: r.body)
                XCTAssertFalse(body.contains("hunter2"), body)
                XCTAssertTrue(body.contains("reference"), body)
                XCTAssertEqual(r.headers[.xContentTypeOptions], "nosniff")
            }
        }
    }

    func testAuditAPITimesAreISO8601AndCSVIsNotCached() async throws {
        let h = try await WebHarness.make()
        addTeardownBlock { await h.close() }
        let device = try DeviceID(Stack.uniqueName("isotime"))
        try await h.storeReadings(device, epoch: Epoch(1), count: 3)
        try await h.application.test(.router) { client in
            let s = try await client.signIn()
            let audit = try jsonBody(try await client.get("/api/audit", s))
            let iso = #/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/#
            XCTAssertNotNil((audit["generatedAt"] as? String)?.wholeMatch(of: iso), "\(audit["generatedAt"] ?? "nil")")
            let d = try XCTUnwrap((audit["devices"] as? [[String: Any]])?.first { $0["device"] as? String == device.rawValue })
            XCTAssertNotNil((d["lastSeenAt"] as? String)?.wholeMatch(of: iso), "\(d["lastSeenAt"] ?? "nil")")
            let epoch = try XCTUnwrap((d["epochs"] as? [[String: Any]])?.first)
            XCTAssertNotNil((epoch["lastStoredAt"] as? String)?.wholeMatch(of: iso), "\(epoch["lastStoredAt"] ?? "nil")")
            let detail = try jsonBody(try await client.get("/api/devices/\(device)", s))
            XCTAssertNotNil(((detail["audit"] as? [String: Any])?["lastSeenAt"] as? String)?.wholeMatch(of: iso))
            for path in ["/devices/\(device)/readings.csv?range=1h", "/api/devices/\(device)/readings.csv?range=1h"] {
                expectEqual(try await client.get(path, s).headers[.cacheControl], "no-store", path)
            }
        }
    }

    func testOnOffSettingsTakeOnlyOnOrOff() async throws {
        let h = try await WebHarness.make()
        addTeardownBlock { await h.close() }
        let device = try DeviceID(Stack.uniqueName("setcfg"))
        try await h.storeReadings(device, epoch: Epoch(1), count: 3)
        try await h.application.test(.router) { client in
            let s = try await client.signIn()
            let path = "/devices/\(device)/commands"
            let bad = try await client.postForm(path, s, [("command", "set_config"), ("key", "measurement:enabled"), ("value", "disable")])
            XCTAssertEqual(bad.status, .badRequest)
            XCTAssertTrue(String(buffer: bad.body).contains("send 1 (on) or 0 (off)"), String(buffer: bad.body))
            let apiBad = try await client.sendJSON("/api" + path, s, #"{"command":"set_config","key":"mqtt_sender:interval","value":"soon"}"#)
            XCTAssertEqual(apiBad.status, .badRequest)
            expectTrue(try await h.store.commands(device: device).isEmpty, "nothing was sent")
            let off = try await client.sendJSON("/api" + path, s, #"{"command":"set_config","key":"measurement:enabled","value":"off"}"#)
            XCTAssertEqual(off.status, .accepted)
            let payload = try XCTUnwrap(try jsonBody(off)["payload"] as? String)
            XCTAssertEqual(try SyncCodec.decodeCommand(Array(payload.utf8)).kind, .setConfig(key: "measurement:enabled", value: "0"))
            // The page offers only on and off for switches.
            let page = String(buffer: try await client.get("/devices/\(device)", s).body)
            let form = try XCTUnwrap(page.components(separatedBy: "name=\"key\" value=\"measurement:enabled\"").dropFirst().first?.components(separatedBy: "</form>").first)
            XCTAssertTrue(form.contains("<select name=\"value\""), form)
            XCTAssertTrue(form.contains("<option value=\"1\">on</option><option value=\"0\">off</option>"), form)
        }
    }

    func testRebootIsNotOfferedOnADeviceThatRefusedIt() async throws {
        let h = try await WebHarness.make()
        addTeardownBlock { await h.close() }
        let device = try DeviceID(Stack.uniqueName("noreboot"))
        try await h.storeReadings(device, epoch: Epoch(1), count: 3)
        try await h.application.test(.router) { client in
            let s = try await client.signIn()
            let before = String(buffer: try await client.get("/devices/\(device)", s).body)
            XCTAssertTrue(before.contains("value=\"reboot\""), "offered until the device says no")
            try await Self.recordAnswered(h, device: device, command: Command(requestID: "web-rb", kind: .reboot),
                                     response: CommandResponse(requestID: "web-rb", command: "reboot", error: .notAllowed,
                                                               message: "reboot is disabled on this device (set COMMAND_REBOOT to enable it)"))
            let after = String(buffer: try await client.get("/devices/\(device)", s).body)
            XCTAssertFalse(after.contains("value=\"reboot\""), "no reboot button after the refusal")
            XCTAssertTrue(after.contains("Reboot is off on this device"), after)
            XCTAssertTrue(after.contains("COMMAND_REBOOT"))
        }
    }

    func testPagesEscapeWhatDevicesSend() async throws {
        let h = try await WebHarness.make()
        addTeardownBlock { await h.close() }
        let device = try DeviceID(Stack.uniqueName("xss"))
        try await h.storeReadings(device, epoch: Epoch(1), count: 3)
        let attack = "<img src=x onerror=alert(1)>"
        try await Self.recordAnswered(h, device: device, command: Command(requestID: "web-x", kind: .getConfig(key: "measurement:interval")),
                                 response: CommandResponse(requestID: "web-x", command: "get_config", key: "measurement:interval", value: .string(attack)))
        let s = try await h.store.database.store()
        try await recordDeadLetters(s, [DeadLetter(topic: "fieldlog/v1/devices/\(device)/batch", reason: .malformedJSON, message: attack, topicDevice: device,
                                                     payload: Array("{\"x\":\"\(attack)\"}".utf8))])
        try await h.application.test(.router) { client in
            let session = try await client.signIn()
            for path in ["/devices/\(device)", "/dead-letters", "/activity"] {
                let html = String(buffer: try await client.get(path, session).body)
                XCTAssertFalse(html.contains("<img src=x"), path)
            }
            expectTrue(String(buffer: try await client.get("/devices/\(device)", session).body).contains("&lt;img src=x onerror=alert(1)&gt;"))
        }
    }
}
