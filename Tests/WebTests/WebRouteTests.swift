// Route tests of the web admin: every page and API call, in process (`app.test(.router)`),
// against a real migrated MariaDB database and the stack's real broker.
import FieldlogCore
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import MQTT
import Sync
import TestSupport
import XCTest
@testable import BackendStore
@testable import Ingest
@testable import Audit
@testable import WebAdmin

final class WebRouteTests: XCTestCase {
    static let pages = ["/", "/audit", "/devices/d1", "/devices/d1/readings.csv", "/devices/d1/commands"]
    static let apis = ["/api/devices", "/api/devices/d1", "/api/devices/d1/series", "/api/devices/d1/readings",
                       "/api/devices/d1/readings.csv", "/api/devices/d1/commands", "/api/commands/x", "/api/audit"]

    func testWithoutSessionPagesRedirectAndAPIAnswers401() async throws {
        let h = try await WebHarness.make()
        addTeardownBlock { await h.close() }
        try await h.application.test(.router) { client in
            for path in Self.pages {
                let r = try await client.execute(uri: path, method: .get)
                XCTAssertEqual(r.status, .found, path)
                XCTAssertTrue(r.headers[.location]?.hasPrefix("/signin?next=") == true, "\(path): \(r.headers[.location] ?? "no location")")
            }
            for path in Self.apis {
                let r = try await client.execute(uri: path, method: .get)
                XCTAssertEqual(r.status, .unauthorized, path)
                XCTAssertTrue(String(buffer: r.body).contains("Not signed in"), path)
            }
            for (method, path) in [(HTTPRequest.Method.post, "/devices/d1/commands"), (.post, "/api/devices/d1/commands"), (.post, "/signout"), (.delete, "/api/session")] {
                let r = try await client.execute(uri: path, method: method)
                XCTAssertTrue(r.status == .found || r.status == .unauthorized, "\(method) \(path): \(r.status)")
            }
            // A made-up session token is no session.
            let fake = try await client.execute(uri: "/api/devices", method: .get, headers: [.cookie: "\(WebSettings.sessionCookie)=\(randomToken())"])
            XCTAssertEqual(fake.status, .unauthorized)
            // What is public: the sign-in page and the assets.
            for path in ["/signin", "/static/app.css", "/static/app.js", "/static/icon.svg", "/healthz"] {
                let r = try await client.execute(uri: path, method: .get)
                XCTAssertEqual(r.status, .ok, path)
            }
            let missing = try await client.execute(uri: "/static/nope.js", method: .get)
            XCTAssertEqual(missing.status, .notFound)
        }
    }

    func testSignInSetsStrictCookieAndSignOutEndsSession() async throws {
        let h = try await WebHarness.make()
        addTeardownBlock { await h.close() }
        try await h.application.test(.router) { client in
            // The sign-in form needs its own double-submit token.
            let stale = try await client.execute(uri: "/signin", method: .post, headers: [.contentType: "application/x-www-form-urlencoded"],
                                                 body: ByteBuffer(string: "csrf=abc&user=operator&password=x"))
            XCTAssertEqual(stale.status, .forbidden)
            // Wrong password: the form again, with a message, 401.
            let page = try await client.execute(uri: "/signin", method: .get)
            let token = try XCTUnwrap(hiddenValue("csrf", in: String(buffer: page.body)))
            let c = try XCTUnwrap(cookie(WebSettings.signInCookie, from: page))
            let wrong = try await client.execute(uri: "/signin", method: .post,
                                                 headers: [.cookie: "\(WebSettings.signInCookie)=\(c)", .contentType: "application/x-www-form-urlencoded"],
                                                 body: ByteBuffer(string: "csrf=\(token)&user=operator&password=wrong-password"))
            XCTAssertEqual(wrong.status, .unauthorized)
            XCTAssertTrue(String(buffer: wrong.body).contains("Wrong user name or password"))
            XCTAssertNil(cookie(WebSettings.sessionCookie, from: wrong))
            // Right password: a Secure, HttpOnly, SameSite=Strict session cookie.
            let r = try await client.execute(uri: "/signin", method: .post,
                                             headers: [.cookie: "\(WebSettings.signInCookie)=\(c)", .contentType: "application/x-www-form-urlencoded"],
                                             body: ByteBuffer(string: "csrf=\(token)&user=operator&password=correct+horse+battery&next=%2Faudit"))
            XCTAssertEqual(r.status, .found)
            XCTAssertEqual(r.headers[.location], "/audit")
            let header = try XCTUnwrap(setCookieHeaders(r).first { $0.hasPrefix(WebSettings.sessionCookie + "=") })
            XCTAssertTrue(header.contains("HttpOnly"), header)
            XCTAssertTrue(header.contains("Secure"), header)
            XCTAssertTrue(header.contains("SameSite=Strict"), header)
            // An outside next= is ignored.
            let s = try await client.signIn()
            let fleet = try await client.execute(uri: "/", method: .get, headers: s.headers)
            XCTAssertEqual(fleet.status, .ok)
            XCTAssertTrue(String(buffer: fleet.body).contains("Sign out"))
            // Sign out with a wrong CSRF token: 403; with the right one: the session is gone.
            let bad = try await client.execute(uri: "/signout", method: .post, headers: [.cookie: s.cookie, .contentType: "application/x-www-form-urlencoded"],
                                               body: ByteBuffer(string: "csrf=\(randomToken())"))
            XCTAssertEqual(bad.status, .forbidden)
            let out = try await client.execute(uri: "/signout", method: .post, headers: [.cookie: s.cookie, .contentType: "application/x-www-form-urlencoded"],
                                               body: ByteBuffer(string: "csrf=\(s.csrf)"))
            XCTAssertEqual(out.status, .found)
            let after = try await client.execute(uri: "/", method: .get, headers: s.headers)
            XCTAssertEqual(after.status, .found)
            // The JSON API signs in and out too.
            let apiIn = try await client.execute(uri: "/api/session", method: .post, headers: [.contentType: "application/json"],
                                                 body: ByteBuffer(string: #"{"user":"operator","password":"correct horse battery"}"#))
            XCTAssertEqual(apiIn.status, .created)
            let csrf = try XCTUnwrap(try jsonBody(apiIn)["csrfToken"] as? String)
            let apiCookie = "\(WebSettings.sessionCookie)=\(try XCTUnwrap(cookie(WebSettings.sessionCookie, from: apiIn)))"
            let apiWrong = try await client.execute(uri: "/api/session", method: .post, headers: [.contentType: "application/json"],
                                                    body: ByteBuffer(string: #"{"user":"operator","password":"nope"}"#))
            XCTAssertEqual(apiWrong.status, .unauthorized)
            let apiBad = try await client.execute(uri: "/api/session", method: .post, headers: [.contentType: "application/json"], body: ByteBuffer(string: "{"))
            XCTAssertEqual(apiBad.status, .badRequest)
            let noCsrf = try await client.execute(uri: "/api/session", method: .delete, headers: [.cookie: apiCookie])
            XCTAssertEqual(noCsrf.status, .forbidden)
            let apiOut = try await client.execute(uri: "/api/session", method: .delete, headers: [.cookie: apiCookie, HTTPField.Name("X-CSRF-Token")!: csrf])
            XCTAssertEqual(apiOut.status, .noContent)
        }
    }

    func testSessionTokensAreStoredHashedAndGuessingIsThrottled() async throws {
        let h = try await WebHarness.make()
        addTeardownBlock { await h.close() }
        try await h.application.test(.router) { client in
            let s = try await client.signIn()
            let token = String(s.cookie.dropFirst(WebSettings.sessionCookie.count + 1))
            let sql = "SELECT COUNT(*) FROM web_sessions WHERE token = "
            XCTAssertEqual(try h.db.stack.sql(sql + "'\(token)'", database: h.db.name).trimmingCharacters(in: .whitespacesAndNewlines), "0",
                           "the cookie's token is not stored")
            XCTAssertEqual(try h.db.stack.sql(sql + "SHA2('\(token)', 256)", database: h.db.name).trimmingCharacters(in: .whitespacesAndNewlines), "1",
                           "its SHA-256 is")
            // Five wrong passwords in a row; then even the right one is refused for a while.
            func apiSignIn(_ password: String) async throws -> TestResponse {
                try await client.execute(uri: "/api/session", method: .post, headers: [.contentType: "application/json"],
                                         body: ByteBuffer(string: #"{"user":"operator","password":"\#(password)"}"#))
            }
            for _ in 0..<5 {
                let wrong = try await apiSignIn("wrong-password")
                XCTAssertEqual(wrong.status, .unauthorized)
            }
            let refused = try await apiSignIn("correct horse battery")
            XCTAssertEqual(refused.status, .tooManyRequests)
            XCTAssertTrue(String(buffer: refused.body).contains("Too many failed sign-ins"), String(buffer: refused.body))
            // The signed-in session is not affected.
            let fleet = try await client.execute(uri: "/", method: .get, headers: s.headers)
            XCTAssertEqual(fleet.status, .ok)
        }
    }

    func testPagesAndAPIShowTheFleetDeviceReadingsAndAudit() async throws {
        let h = try await WebHarness.make()
        addTeardownBlock { await h.close() }
        let device = try DeviceID(Stack.uniqueName("webdev"))
        let epoch = Epoch(0xabc)
        try await h.storeReadings(device, epoch: epoch, count: 120, missing: 50...59)
        try await h.application.test(.router) { client in
            let s = try await client.signIn()
            func get(_ uri: String) async throws -> TestResponse { try await client.execute(uri: uri, method: .get, headers: s.headers) }

            let fleet = try await get("/?sort=gaps&dir=desc")
            XCTAssertEqual(fleet.status, .ok)
            let fleetHTML = String(buffer: fleet.body)
            XCTAssertTrue(fleetHTML.contains(device.rawValue))
            XCTAssertTrue(fleetHTML.contains("Online"))
            XCTAssertTrue(fleetHTML.contains("10 missing"), "gap of 10 shown")
            XCTAssertEqual(fleet.headers[.contentSecurityPolicy]?.contains("default-src 'self'"), true)

            let page = try await get("/devices/\(device)?range=1h")
            XCTAssertEqual(page.status, .ok)
            let html = String(buffer: page.body)
            XCTAssertTrue(html.contains("<polyline class=\"line\""), "a chart with a line")
            XCTAssertTrue(html.contains("band missing"), "the gap is marked on the chart")
            XCTAssertTrue(html.contains("temperature_c"))
            XCTAssertTrue(html.contains("records missing"))
            XCTAssertTrue(html.contains("48 kB ↑ 1.8 kB ↓"), "the data budget of the device's day")
            XCTAssertTrue(html.contains("name=\"csrf\" value=\"\(s.csrf)\""), "forms carry the CSRF token")
            XCTAssertTrue(html.contains("Page 1 of 5"), "110 readings in pages of 25")
            let page2 = try await get("/devices/\(device)?range=1h&page=2")
            XCTAssertTrue(String(buffer: page2.body).contains("Page 3 of 5"))

            let csv = try await get("/devices/\(device)/readings.csv?range=1h")
            XCTAssertEqual(csv.status, .ok)
            let lines = String(buffer: csv.body).split(separator: "\r\n")
            XCTAssertEqual(lines.first, "time_utc,epoch,seq,state,temperature_c")
            XCTAssertEqual(lines.count, 111, "header + 110 stored readings")
            XCTAssertTrue(lines[1].hasSuffix(",\(epoch.hex),1,ok,20.5"), String(lines[1]))

            let audit = try await get("/audit")
            XCTAssertEqual(audit.status, .ok)
            let auditHTML = String(buffer: audit.body)
            XCTAssertTrue(auditHTML.contains("50…59"))
            XCTAssertTrue(auditHTML.contains("Request replay"))

            let fragment = try await get("/devices/\(device)/commands")
            XCTAssertTrue(String(buffer: fragment.body).contains("id=\"commands\""))

            // JSON API.
            let devices = try jsonBody(try await get("/api/devices"))["devices"] as! [[String: Any]]
            let d = try XCTUnwrap(devices.first { $0["device"] as? String == device.rawValue })
            XCTAssertEqual(d["state"] as? String, "online")
            XCTAssertEqual(d["storedThrough"] as? Int, 49)
            XCTAssertEqual(d["backlog"] as? Int, 5)
            XCTAssertEqual(d["missingRecords"] as? Int, 10)
            XCTAssertEqual((d["dataUsage"] as? [String: Any])?["sentBytes"] as? Int, 48_213)
            let detail = try jsonBody(try await get("/api/devices/\(device)"))
            XCTAssertEqual(detail["sensors"] as? [String], ["state", "temperature_c"])
            let series = try jsonBody(try await get("/api/devices/\(device)/series?range=1h&sensor=temperature_c"))
            XCTAssertEqual((series["series"] as? [String: [Any]])?["temperature_c"]?.count, 110)
            let readings = try jsonBody(try await get("/api/devices/\(device)/readings?range=1h&pageSize=10"))
            XCTAssertEqual(readings["total"] as? Int, 110)
            XCTAssertEqual((readings["readings"] as? [Any])?.count, 10)
            let auditJSON = try jsonBody(try await get("/api/audit"))
            XCTAssertEqual((auditJSON["devices"] as? [Any])?.count, 1)
            let from = WebTime.iso(milliseconds: WebTime.nowMilliseconds() - 3_600_000)
            let ranged = try await get("/api/devices/\(device)/readings?from=\(from)&to=\(WebTime.nowMilliseconds() + 1000)")
            XCTAssertEqual(try jsonBody(ranged)["total"] as? Int, 110)
            let apiCSV = try await get("/api/devices/\(device)/readings.csv?range=1h")
            XCTAssertEqual(apiCSV.headers[.contentType], "text/csv; charset=utf-8")

            // Bad parameters: a clear 400, never a 500.
            let bad: [(String, String)] = [
                ("/?sort=nonsense", "sort must be one of"), ("/?dir=up", "dir must be asc or desc"),
                ("/devices/bad%20id!", "invalid device id"), ("/devices/\(device)?range=2h", "range must be one of"),
                ("/devices/\(device)?from=yesterday", "from must be a time"), ("/devices/\(device)?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", "to must be after from"),
                ("/devices/\(device)?from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z", "at most 366 days"),
                ("/devices/\(device)?page=-1", "page must be"), ("/devices/\(device)?pageSize=100000", "pageSize must be"),
                ("/api/devices/\(device)/series?to=garbage&from=1", "to must be a time"), ("/api/devices/\(device)/readings?page=x", "page must be"),
                ("/api/devices/bad%20id!", "invalid device id"), ("/devices/\(device)/readings.csv?range=century", "range must be one of"),
            ]
            for (uri, message) in bad {
                let r = try await get(uri)
                XCTAssertEqual(r.status, .badRequest, uri)
                XCTAssertTrue(String(buffer: r.body).contains(message), "\(uri): \(String(buffer: r.body).prefix(300))")
            }
            for uri in ["/devices/no-such-device", "/api/devices/no-such-device", "/api/devices/no-such-device/readings", "/api/commands/web-nope"] {
                let r = try await get(uri)
                XCTAssertEqual(r.status, .notFound, uri)
            }
        }
    }

    func testCommandsNeedCSRFAreCheckedPublishedAndShowTheResponse() async throws {
        let h = try await WebHarness.make()
        addTeardownBlock { await h.close() }
        let device = try DeviceID(Stack.uniqueName("webcmd"))
        try await h.storeReadings(device, epoch: Epoch(7), count: 5)
        // A listener on the device's request topic sees what the web process publishes.
        let listener = try MQTTClient(configuration: MQTTConfiguration(host: h.db.stack.mqttHost, port: h.db.stack.mqttPort, clientID: Stack.uniqueName("weblisten"),
                                                                       username: h.db.stack.mqttBackendUser, password: h.db.stack.mqttBackendPassword))
        try await listener.connect()
        try await listener.subscribe(TopicTemplates.defaults.request.topic(device: device))
        addTeardownBlock { await listener.disconnect() }

        try await h.application.test(.router) { client in
            let s = try await client.signIn()
            let path = "/devices/\(device)/commands"
            func form(_ body: String, csrf: String?) async throws -> TestResponse {
                try await client.execute(uri: path, method: .post, headers: [.cookie: s.cookie, .contentType: "application/x-www-form-urlencoded"],
                                         body: ByteBuffer(string: (csrf.map { "csrf=\($0)&" } ?? "") + body))
            }
            // CSRF: missing or wrong → 403, for forms and the API.
            let noToken = try await form("command=stop", csrf: nil)
            XCTAssertEqual(noToken.status, .forbidden)
            let wrongToken = try await form("command=stop", csrf: randomToken())
            XCTAssertEqual(wrongToken.status, .forbidden)
            let apiNoToken = try await client.execute(uri: "/api\(path)", method: .post, headers: s.headers(csrfHeader: false, json: true),
                                                      body: ByteBuffer(string: #"{"command":"stop"}"#))
            XCTAssertEqual(apiNoToken.status, .forbidden)
            let apiWrongToken = try await client.execute(uri: "/api\(path)", method: .post,
                                                         headers: [.cookie: s.cookie, .contentType: "application/json", HTTPField.Name("X-CSRF-Token")!: "nope"],
                                                         body: ByteBuffer(string: #"{"command":"stop"}"#))
            XCTAssertEqual(apiWrongToken.status, .forbidden)

            // Bad arguments → 400 that says what is wrong.
            let badForms: [(String, String)] = [
                ("command=fly", "unknown command"), ("command=set_interval", "intervalSeconds"), ("command=set_interval&intervalSeconds=-3", "intervalSeconds"),
                ("command=get_config&key=secret", "not allowed"), ("command=set_config&key=measurement%3Ainterval", "needs a value"),
                ("command=replay&from=9&to=3", "≥ from"), ("command=replay&epoch=xyz&from=1&to=3", "is not an epoch"), ("command=replay&to=3", "needs from"),
            ]
            for (body, message) in badForms {
                let r = try await form(body, csrf: s.csrf)
                XCTAssertEqual(r.status, .badRequest, body)
                XCTAssertTrue(String(buffer: r.body).contains(message), "\(body): \(String(buffer: r.body).prefix(400))")
            }
            let apiBad = try await client.execute(uri: "/api\(path)", method: .post, headers: s.headers(csrfHeader: true, json: true),
                                                  body: ByteBuffer(string: #"{"command":"set_interval","intervalSeconds":"fast"}"#))
            XCTAssertEqual(apiBad.status, .badRequest)
            let apiNotJSON = try await client.execute(uri: "/api\(path)", method: .post, headers: s.headers(csrfHeader: true, json: true), body: ByteBuffer(string: "[1,"))
            XCTAssertEqual(apiNotJSON.status, .badRequest)
            let apiNoCommand = try await client.execute(uri: "/api\(path)", method: .post, headers: s.headers(csrfHeader: true, json: true), body: ByteBuffer(string: "{}"))
            XCTAssertEqual(apiNoCommand.status, .badRequest)
            let unknownDevice = try await client.execute(uri: "/devices/nobody/commands", method: .post,
                                                         headers: [.cookie: s.cookie, .contentType: "application/x-www-form-urlencoded"], body: ByteBuffer(string: "csrf=\(s.csrf)&command=stop"))
            XCTAssertEqual(unknownDevice.status, .notFound)

            // Reboot asks first.
            let confirm = try await form("command=reboot", csrf: s.csrf)
            XCTAssertEqual(confirm.status, .ok)
            XCTAssertTrue(String(buffer: confirm.body).contains("Yes, reboot now"))
            let before = try await h.store.commands(device: device)
            XCTAssertEqual(before.count, 0, "nothing sent before the confirmation")

            // Stop: recorded with the user, published with its request id.
            let sent = try await waitFor("the publisher connects") {
                let r = try await form("command=stop", csrf: s.csrf)
                XCTAssertEqual(r.status, .seeOther)
                let rows = try await h.store.commands(device: device)
                return rows.first?.state == "not-sent" ? nil : rows.first
            }
            XCTAssertEqual(sent.sentBy, WebTestDatabase.user)
            XCTAssertEqual(sent.command, "stop")
            XCTAssertEqual(sent.state, "waiting")
            var received: MQTTMessage?
            for await m in listener.messages {
                if let c = try? SyncCodec.decodeCommand(m.payload), c.requestID == sent.requestId { received = m; break }
            }
            let command = try SyncCodec.decodeCommand(try XCTUnwrap(received).payload)
            XCTAssertEqual(command.kind, .stop)

            // The device's answer, as ingest records it, shows on the page and in the API.
            let ingest = try await h.store.database.store()
            let response = CommandResponse(requestID: sent.requestId, command: "stop", message: "measuring stopped")
            try await ingest.recordResponse(device: device, response)
            let api = try jsonBody(try await client.execute(uri: "/api/commands/\(sent.requestId)", method: .get, headers: s.headers))
            XCTAssertEqual(api["state"] as? String, "answered")
            let fragment = String(buffer: try await client.execute(uri: "/devices/\(device)/commands", method: .get, headers: s.headers).body)
            XCTAssertTrue(fragment.contains("measuring stopped"), fragment)

            // The API sends too (202 + Location), and replay carries its range.
            let apiSent = try await client.execute(uri: "/api\(path)", method: .post, headers: s.headers(csrfHeader: true, json: true),
                                                   body: ByteBuffer(string: #"{"command":"replay","epoch":"7","from":2,"to":4}"#))
            XCTAssertEqual(apiSent.status, .accepted, String(buffer: apiSent.body))
            let row = try jsonBody(apiSent)
            XCTAssertEqual(apiSent.headers[.location], "/api/commands/\(row["requestId"] as! String)")
            XCTAssertTrue((row["payload"] as? String)?.contains("\"replay\"") == true)
            let list = try jsonBody(try await client.execute(uri: "/api\(path)", method: .get, headers: s.headers))
            XCTAssertEqual((list["commands"] as? [Any])?.count, 2)
        }
    }

    func testCommandWithoutAnswerTimesOut() async throws {
        let h = try await WebHarness.make()
        addTeardownBlock { await h.close() }
        let device = try DeviceID(Stack.uniqueName("webtmo"))
        try await h.storeReadings(device, epoch: Epoch(1), count: 3)
        let s = try await h.store.database.store()
        try await s.connection.execute("INSERT INTO commands (request_id, device_id, command, payload, sent_at, sent_by) VALUES ('web-old', ?, 'status', '{}', ?, 'operator')",
                                       [.string(device.rawValue), .string(SQLTime.datetime(unixMilliseconds: WebTime.nowMilliseconds() - 60_000)!)])
        let row = try await h.store.command(requestID: "web-old")
        XCTAssertEqual(row?.state, "timed-out")
        XCTAssertTrue(Page.commandsTable([row!]).text.contains("no answer (timed out)"))
    }

    func testUserAddCommandHashesPasswordFromStdin() async throws {
        let db = try WebTestDatabase()
        defer { db.drop() }
        let backend = try Binaries.path("fieldlog-backend")
        var env = db.environment.filter { $0.key.hasPrefix("FIELDLOG_") }
        env["FIELDLOG_WEB_BCRYPT_COST"] = "4"
        try runWithEnvironment(backend, ["migrate"], environment: env)
        let out = try runWithEnvironment(backend, ["user", "add", "alice"], environment: env, input: "a long enough password\n")
        XCTAssertTrue(out.contains("user alice created"), out)
        let hash = try db.stack.sql("SELECT password_hash FROM web_users WHERE user_name = 'alice'", database: db.name).trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertTrue(hash.hasPrefix("$2"), "a bcrypt hash, not the password: \(hash)")
        XCTAssertThrowsError(try runWithEnvironment(backend, ["user", "add", "bob"], environment: env, input: "short\n"))
        XCTAssertThrowsError(try runWithEnvironment(backend, ["user", "add", "bad name"], environment: env, input: "a long enough password\n"))
    }
}

/// Polls `body` until it returns a value (at most `timeout`).
func waitFor<T>(_ what: String, timeout: Duration = .seconds(20), _ body: () async throws -> T?) async throws -> T {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if let v = try await body() { return v }
        try await Task.sleep(for: .milliseconds(200))
    }
    throw CommandFailed(description: "timed out after \(timeout) waiting for \(what)")
}

/// Runs a program with extra environment variables (through env(1)); returns its stdout.
@discardableResult
func runWithEnvironment(_ program: String, _ arguments: [String], environment: [String: String], input: String? = nil) throws -> String {
    let env = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    return try Shell.run(program, arguments, environment: env, input: input)
}
