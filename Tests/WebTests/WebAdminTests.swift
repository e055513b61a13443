// Route tests of what issue 16 added: roles, user management (web and command line) with the
// activity trail, the fleet page for a large fleet, dead letters, live streams, and the
// OpenAPI document checked against the router.
import FieldlogCore
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import MariaDB
import Sync
import TestSupport
import XCTest
@testable import BackendStore
@testable import Ingest
@testable import Audit
@testable import WebAdmin

final class WebAdminTests: XCTestCase {
    func testRolesDecideWhoReadsWhoOperatesWhoAdministers() async throws {
        let h = try await WebHarness.make()
        addTeardownBlock { await h.close() }
        let device = try DeviceID(Stack.uniqueName("roles"))
        try await h.storeReadings(device, epoch: Epoch(1), count: 3, missing: 2...2)
        try await h.application.test(.router) { client in
            let viewer = try await client.signIn(user: WebTestDatabase.viewer)
            let op = try await client.signIn(user: WebTestDatabase.user)
            let admin = try await client.signIn(user: WebTestDatabase.admin)
            expectEqual(try jsonBody(try await client.get("/api/session", viewer))["role"] as? String, "viewer")
            // Everyone reads.
            for path in ["/", "/devices/\(device)", "/audit", "/dead-letters", "/activity", "/account", "/api/devices", "/api/activity"] {
                expectEqual(try await client.get(path, viewer).status, .ok, path)
            }
            // Viewers see no controls and cannot send.
            let page = String(buffer: try await client.get("/devices/\(device)", viewer).body)
            XCTAssertFalse(page.contains("id=\"stop-button\""))
            XCTAssertTrue(page.contains("Your role (viewer) reads only"))
            let auditPage = String(buffer: try await client.get("/audit", viewer).body)
            XCTAssertTrue(auditPage.contains("2…2"), "the viewer sees the gap")
            XCTAssertFalse(auditPage.contains("value=\"replay\""), "but no replay button")
            let form = try await client.postForm("/devices/\(device)/commands", viewer, [("command", "stop")])
            XCTAssertEqual(form.status, .forbidden)
            XCTAssertTrue(String(buffer: form.body).contains("needs the operator role"))
            expectEqual(try await client.sendJSON("/api/devices/\(device)/commands", viewer, #"{"command":"stop"}"#).status, .forbidden)
            expectTrue(try await h.store.commands(device: device).isEmpty)
            // Operators send, but do not manage users.
            expectTrue(String(buffer: try await client.get("/devices/\(device)", op).body).contains("id=\"stop-button\""))
            expectTrue(String(buffer: try await client.get("/audit", op).body).contains("value=\"replay\""))
            for (path, s) in [("/users", viewer), ("/users", op), ("/api/users", op)] {
                expectEqual(try await client.get(path, s).status, .forbidden, path)
            }
            expectEqual(try await client.postForm("/users", op, [("name", "mallory"), ("password", "long enough password"), ("role", "admin")]).status, .forbidden)
            expectFalse(String(buffer: try await client.get("/", op).body).contains("href=\"/users\""), "no Users link for operators")
            // Admins do.
            expectEqual(try await client.get("/users", admin).status, .ok)
            expectTrue(String(buffer: try await client.get("/", admin).body).contains("href=\"/users\""))
        }
    }

    func testAdminsManageUsersEveryChangeEndsSessionsAndIsInTheTrail() async throws {
        let h = try await WebHarness.make()
        addTeardownBlock { await h.close() }
        let device = try DeviceID(Stack.uniqueName("trail"))
        try await h.storeReadings(device, epoch: Epoch(1), count: 3)
        try await h.application.test(.router) { client in
            let admin = try await client.signIn(user: WebTestDatabase.admin)
            // Add a user; it signs in as a viewer.
            let add = try await client.postForm("/users", admin, [("name", "carol"), ("password", "carol's long password"), ("role", "viewer")])
            XCTAssertEqual(add.status, .seeOther, String(buffer: add.body))
            let dup = try await client.postForm("/users", admin, [("name", "carol"), ("password", "carol's long password"), ("role", "viewer")])
            XCTAssertEqual(dup.status, .conflict)
            let badAdd = try await client.postForm("/users", admin, [("name", "dave"), ("password", "short"), ("role", "viewer")])
            XCTAssertEqual(badAdd.status, .badRequest)
            XCTAssertTrue(String(buffer: badAdd.body).contains("at least 10 characters"))
            var carol = try await client.signIn(user: "carol", password: "carol's long password")
            expectEqual(try await client.postForm("/devices/\(device)/commands", carol, [("command", "status")]).status, .forbidden)
            // Promote: carol's session ends; signed in again, she operates.
            expectEqual(try await client.postForm("/users/carol", admin, [("action", "role"), ("role", "operator")]).status, .seeOther)
            expectEqual(try await client.get("/", carol).status, .found, "a role change ends the sessions")
            carol = try await client.signIn(user: "carol", password: "carol's long password")
            expectEqual(try await client.postForm("/devices/\(device)/commands", carol, [("command", "status")]).status, .seeOther)
            // Sign out everywhere, disable (sign-in refused), enable, reset password, remove.
            expectEqual(try await client.postForm("/users/carol", admin, [("action", "signout")]).status, .seeOther)
            expectEqual(try await client.get("/", carol).status, .found)
            carol = try await client.signIn(user: "carol", password: "carol's long password")
            expectEqual(try await client.postForm("/users/carol", admin, [("action", "disable")]).status, .seeOther)
            expectEqual(try await client.get("/api/devices", carol).status, .unauthorized, "a disabled user's session ends")
            let refused = try await client.execute(uri: "/api/session", method: .post, headers: [.contentType: "application/json"],
                                                   body: ByteBuffer(string: #"{"user":"carol","password":"carol's long password"}"#))
            XCTAssertEqual(refused.status, .unauthorized)
            expectEqual(try await client.postForm("/users/carol", admin, [("action", "enable")]).status, .seeOther)
            expectEqual(try await client.postForm("/users/carol", admin, [("action", "passwd"), ("password", "another long password")]).status, .seeOther)
            carol = try await client.signIn(user: "carol", password: "another long password")
            expectEqual(try await client.postForm("/users/carol", admin, [("action", "remove")]).status, .badRequest, "needs the confirmation")
            expectEqual(try await client.postForm("/users/carol", admin, [("action", "remove"), ("confirm", "yes")]).status, .seeOther)
            expectEqual(try await client.get("/", carol).status, .found)
            expectEqual(try await client.postForm("/users/nobody", admin, [("action", "disable")]).status, .notFound)
            // An admin cannot lock themselves out in the web.
            for action in [[("action", "disable")], [("action", "role"), ("role", "viewer")], [("action", "remove"), ("confirm", "yes")]] {
                expectEqual(try await client.postForm("/users/admin", admin, action).status, .conflict, "\(action)")
            }
            // The JSON API does the same.
            expectEqual(try await client.sendJSON("/api/users", admin, #"{"name":"erin","password":"erin's long password","role":"viewer"}"#).status, .created)
            expectEqual(try await client.sendJSON("/api/users/erin/role", admin, #"{"role":"operator"}"#).status, .noContent)
            expectEqual(try await client.sendJSON("/api/users/erin/role", admin, #"{"role":"root"}"#).status, .badRequest)
            expectEqual(try await client.sendJSON("/api/users/erin/disable", admin, "{}").status, .noContent)
            expectEqual(try await client.sendJSON("/api/users/erin", admin, method: .delete, "{}").status, .noContent)
            let users = try unwrap(try jsonBody(try await client.get("/api/users", admin))["users"] as? [[String: Any]])
            XCTAssertEqual(users.map { $0["name"] as? String }, ["admin", "operator", "viewer"])

            // The trail: who sent which command, who changed which user.
            let trail = try unwrap(try jsonBody(try await client.get("/api/activity?limit=100", admin))["activity"] as? [[String: Any]])
            func entries(_ action: String, _ target: String) -> [[String: Any]] { trail.filter { $0["action"] as? String == action && $0["target"] as? String == target } }
            XCTAssertEqual(entries("command", device.rawValue).first?["actor"] as? String, "carol")
            XCTAssertEqual(entries("command", device.rawValue).first?["detail"] as? String, "status")
            XCTAssertNotNil(entries("command", device.rawValue).first?["requestId"] as? String)
            for action in ["user.add", "user.role", "user.signout", "user.disable", "user.enable", "user.passwd", "user.remove"] {
                XCTAssertEqual(entries(action, "carol").first?["actor"] as? String, "admin", action)
            }
            let page = String(buffer: try await client.get("/activity?target=carol", admin).body)
            XCTAssertTrue(page.contains("user.remove"))
            XCTAssertFalse(page.contains(">\(device.rawValue)</a>"), "filtered by target")
        }
    }

    func testUserCommandLine() async throws {
        let db = try WebTestDatabase()
        defer { db.drop() }
        let backend = try Binaries.path("fieldlog-backend")
        var env = db.environment.filter { $0.key.hasPrefix("FIELDLOG_") }
        env["FIELDLOG_WEB_BCRYPT_COST"] = "4"
        env["USER"] = "ops-person"
        func run(_ args: [String], input: String? = nil) throws -> String { try runWithEnvironment(backend, ["user"] + args, environment: env, input: input) }
        try runWithEnvironment(backend, ["migrate"], environment: env)
        XCTAssertTrue(try run(["list"]).contains("no users yet"))
        XCTAssertTrue(try run(["add", "alice", "--role", "admin"], input: "a long enough password\n").contains("user alice created (admin)"))
        XCTAssertTrue(try run(["add", "bob"], input: "a long enough password\n").contains("(operator)"))
        XCTAssertThrowsError(try run(["add", "bob"], input: "a long enough password\n"), "bob exists")
        XCTAssertThrowsError(try run(["add", "carl", "--role", "root"], input: "a long enough password\n"))
        XCTAssertThrowsError(try run(["add", "short"], input: "short\n"))
        // A live session of bob's, to see the changes end it.
        func sessions(_ user: String) throws -> String {
            try db.stack.sql("SELECT COUNT(*) FROM web_sessions WHERE user_name = '\(user)'", database: db.name).trimmingCharacters(in: .whitespacesAndNewlines)
        }
        func session(_ user: String) throws {
            _ = try db.stack.sql("INSERT INTO web_sessions VALUES (SHA2(RAND(), 256), '\(user)', REPEAT('a', 64), NOW(3), NOW(3) + INTERVAL 1 HOUR)", database: db.name)
        }
        for (args, expect) in [(["passwd", "bob"], "password of user bob changed"), (["role", "bob", "viewer"], "now viewer"), (["signout", "bob"], "signed out"),
                               (["disable", "bob"], "disabled")] {
            try session("bob")
            XCTAssertEqual(try sessions("bob"), "1")
            XCTAssertTrue(try run(args, input: "a new long password\n").contains(expect), "\(args)")
            XCTAssertEqual(try sessions("bob"), "0", "\(args) ends bob's sessions")
        }
        let list = try run(["list"])
        XCTAssertTrue(list.contains("alice") && list.contains("admin"), list)
        XCTAssertTrue(list.split(separator: "\n").contains { $0.hasPrefix("bob") && $0.contains("viewer") && $0.contains("disabled") }, list)
        XCTAssertTrue(try run(["enable", "bob"]).contains("enabled"))
        XCTAssertTrue(try run(["remove", "bob"]).contains("removed"))
        XCTAssertThrowsError(try run(["remove", "bob"]), "no such user")
        let trail = try db.stack.sql("SELECT CONCAT(actor, ' ', action, ' ', target) FROM web_activity ORDER BY id", database: db.name)
        for action in ["user.add alice", "user.add bob", "user.passwd bob", "user.role bob", "user.signout bob", "user.disable bob", "user.enable bob", "user.remove bob"] {
            XCTAssertTrue(trail.contains("cli:ops-person \(action)"), "\(action) in \(trail)")
        }
    }

    func testFleetPageSearchesFiltersSortsAndPagesAndAgreesWithTheAudit() async throws {
        let h = try await WebHarness.make()
        addTeardownBlock { await h.close() }
        let prefix = Stack.uniqueName("fl")
        try await insertFleet(try await h.store.database.store(), count: 120, prefix: prefix)
        // Devices with the real write path: a gap, and an epoch that ended with records never stored.
        let real = try DeviceID(Stack.uniqueName("flreal"))
        try await h.storeReadings(real, epoch: Epoch(5), count: 30, missing: 10...12)
        try await h.storeReadings(real, epoch: Epoch(6), count: 4)
        // Overlapping rows (a resend cut differently) around a gap, and rows that do not start at 1.
        let odd = try DeviceID(Stack.uniqueName("flodd"))
        let s = try await h.store.database.store()
        try await s.connection.execute("INSERT INTO devices (device_id, protocol, first_seen_at) VALUES (?, 'fieldlog', NOW(3))", [.string(odd.rawValue)])
        try await s.connection.insertRows("INSERT INTO epochs (device_id, epoch, first_seen_at, reported_head)",
                                          rows: [[.string(odd.rawValue), .uint(1), .string(SQLTime.now()), .uint(10)],
                                                 [.string(odd.rawValue), .uint(2), .string(SQLTime.now()), .uint(30)]])
        try await s.connection.insertRows("INSERT INTO batch_ranges (device_id, epoch, first_seq, last_seq, stored_at)", rows: [
            [1, 5], [4, 6], [3, 4], [9, 10], [2, 3],
        ].map { [.string(odd.rawValue), .uint(1), .uint($0[0]), .uint($0[1]), .string(SQLTime.now())] } + [
            [5, 9], [12, 20], [12, 14], [25, 26],
        ].map { [.string(odd.rawValue), .uint(2), .uint($0[0]), .uint($0[1]), .string(SQLTime.now())] })
        try await h.application.test(.router) { client in
            let s = try await client.signIn(user: WebTestDatabase.viewer)
            // The fleet summary agrees with the audit of the ledger, device by device (the
            // fleet's figures come from the ledger; the Audit page also checks the rows).
            let audit = try await h.store.audit(checkingRows: false)
            let fleet = try await h.store.fleet()
            XCTAssertEqual(fleet.count, 122)
            for d in audit.devices {
                let f = try XCTUnwrap(fleet.first { $0.device == d.device })
                XCTAssertEqual(f.missingRecords, d.epochs.reduce(0) { $0 + $1.missingCount }, d.device)
                XCTAssertEqual(f.gapCount, d.epochs.reduce(0) { $0 + $1.gaps.count + ($1.unstoredAtEnd == nil ? 0 : 1) }, d.device)
                XCTAssertEqual(f.silent, d.silent, d.device)
                XCTAssertEqual(f.lastSeenAt, WebTime.iso(sql: d.lastSeenAt), d.device)
                XCTAssertEqual(f.storedThrough, d.epochs.first { $0.epoch == f.epoch }?.storedThrough, d.device)
            }
            XCTAssertEqual(fleet.first { $0.device == real.rawValue }?.missingRecords, 3 + 5, "the gap and the ended epoch's last 5")
            let o = try XCTUnwrap(fleet.first { $0.device == odd.rawValue })
            XCTAssertEqual(o.missingRecords, 2 + 4 + 2 + 4, "7…8 of epoch 1; 1…4, 10…11, 21…24 of epoch 2 (27…30 of the current epoch are backlog)")
            XCTAssertEqual(o.storedThrough, 0, "epoch 2 does not start at 1")

            let all = try jsonBody(try await client.get("/api/devices?pageSize=1000", s))
            XCTAssertEqual(all["total"] as? Int, 122)
            let counts = try XCTUnwrap(all["counts"] as? [String: Any])
            XCTAssertEqual(counts["offline"] as? Int, 30)
            XCTAssertEqual(counts["silent"] as? Int, 12)
            XCTAssertEqual(counts["gaps"] as? Int, 26)
            XCTAssertEqual(counts["deadLetters"] as? Int, 14)
            func devices(_ query: String) async throws -> (names: [String], total: Int) {
                let b = try jsonBody(try await client.get("/api/devices?\(query)", s))
                return ((b["devices"] as? [[String: Any]] ?? []).compactMap { $0["device"] as? String }, b["total"] as? Int ?? -1)
            }
            expectEqual(try await devices("filter=offline&pageSize=10").total, 30)
            expectEqual(try await devices("q=\(prefix)-011").names, (110...119).map { "\(prefix)-0\($0)" })
            let gaps = try await devices("filter=gaps&sort=device&dir=desc&page=1&pageSize=5")
            XCTAssertEqual(gaps.total, 26)
            XCTAssertEqual(gaps.names, [100, 95, 90, 85, 80].map { "\(prefix)-\(String($0).leftPadded(to: 4))" }, "after flreal, flodd, 115, 110, 105")
            expectEqual(try await devices("filter=backlog").total, 120 - 18 + 1, "head − acked > 0 but every 7th; and the real device")
            expectEqual(try await devices("filter=dead-letters").total, 14)

            // The page: tiles (with the offline one), rows of the page, a pager.
            let html = String(buffer: try await client.get("/?filter=offline&q=\(prefix)&pageSize=10&page=1", s).body)
            XCTAssertTrue(html.contains("data-filter=\"offline\" aria-current=\"true\""), "the offline tile is the current filter")
            XCTAssertTrue(html.contains("11–20 of 30 devices · page 2 of 3"), html)
            XCTAssertEqual(html.components(separatedBy: "<tr class=").count - 1, 10)
            XCTAssertTrue(html.contains("data-live=\"/live/fleet?q=\(prefix)&amp;filter=offline&amp;page=1&amp;pageSize=10\""), "the live stream follows the page's query")
            let bad = try await client.get("/?filter=broken", s)
            XCTAssertEqual(bad.status, .badRequest)
            XCTAssertTrue(String(buffer: bad.body).contains("filter must be one of online, offline, silent, gaps, backlog, dead-letters"))
        }
    }

    func testDeadLettersAreListedWithFiltersAndPayloadHead() async throws {
        let h = try await WebHarness.make()
        addTeardownBlock { await h.close() }
        let a = try DeviceID(Stack.uniqueName("dla")), b = try DeviceID(Stack.uniqueName("dlb"))
        let s = try await h.store.database.store()
        try await recordDeadLetters(s, [
            DeadLetter(topic: "fieldlog/v1/devices/\(a)/batch", reason: .malformedJSON, message: "unexpected end", topicDevice: a, payload: Array("{\"records\":[1,2".utf8)),
            DeadLetter(topic: "fieldlog/v1/devices/\(b)/batch", reason: .oversize, message: "too big", topicDevice: b, payload: [0xff, 0xfe, 0x00, 0x01], payloadBytes: 9_000_000),
            DeadLetter(topic: "weird/topic", reason: .unknownTopic, message: "no device", topicDevice: nil, payload: Array("x".utf8)),
        ])
        try await h.application.test(.router) { client in
            let session = try await client.signIn(user: WebTestDatabase.viewer)
            let all = try unwrap(try jsonBody(try await client.get("/api/dead-letters", session))["deadLetters"] as? [[String: Any]])
            XCTAssertEqual(all.map { $0["reason"] as? String }, ["unknown-topic", "oversize", "malformed-json"], "newest first")
            XCTAssertEqual(all.last?["payloadHead"] as? String, "{\"records\":[1,2")
            XCTAssertEqual(all[1]["payloadHeadHex"] as? String, "fffe0001")
            let byDevice = try unwrap(try jsonBody(try await client.get("/api/dead-letters?device=\(a)", session))["deadLetters"] as? [[String: Any]])
            XCTAssertEqual(byDevice.count, 1)
            let byReason = try unwrap(try jsonBody(try await client.get("/api/dead-letters?reason=oversize", session))["deadLetters"] as? [[String: Any]])
            XCTAssertEqual(byReason.map { $0["device"] as? String }, [b.rawValue])
            let future = WebTime.iso(milliseconds: WebTime.nowMilliseconds() + 60_000)
            let none = try jsonBody(try await client.get("/api/dead-letters?from=\(future)&to=\(WebTime.iso(milliseconds: WebTime.nowMilliseconds() + 120_000))", session))
            XCTAssertEqual((none["deadLetters"] as? [Any])?.count, 0)
            let paged = try jsonBody(try await client.get("/api/dead-letters?limit=2", session))
            let next = try XCTUnwrap(paged["next"] as? String)
            expectEqual((try jsonBody(try await client.get("/api/dead-letters?limit=2&before=\(next)", session))["deadLetters"] as? [Any])?.count, 1)
            let page = String(buffer: try await client.get("/dead-letters?reason=malformed-json", session).body)
            XCTAssertTrue(page.contains("{&quot;records&quot;:[1,2"), "the payload head, escaped")
            XCTAssertTrue(page.contains("unexpected end"))
            XCTAssertFalse(page.contains("too big"))
            XCTAssertTrue(page.contains("<option value=\"malformed-json\" selected>"))
            for bad in ["reason=nonsense", "device=bad%20id", "from=yesterday", "before=x", "limit=0"] {
                expectEqual(try await client.get("/dead-letters?\(bad)", session).status, .badRequest, bad)
            }
        }
    }

    func testLiveStreamSendsStatusBacklogAndAnswersAsTheyChange() async throws {
        let h = try await WebHarness.make { $0.liveMaxDuration = .seconds(4) }
        addTeardownBlock { await h.close() }
        let device = try DeviceID(Stack.uniqueName("live"))
        try await h.storeReadings(device, epoch: Epoch(1), count: 5)
        let command = Command(requestID: "web-live", kind: .stop)
        try await h.store.insertCommand(requestID: "web-live", device: device, command: command,
                                        payload: String(decoding: SyncCodec.encode(command), as: UTF8.self), sentBy: "operator")
        try await h.application.test(.router) { client in
            let s = try await client.signIn(user: WebTestDatabase.viewer)
            // While the stream runs: the device reports a new backlog and answers the command.
            let changes = Task {
                try await Task.sleep(for: .seconds(1))
                let store = try await h.store.database.store()
                try await store.recordStatus(Status(device: device, state: .online, epoch: Epoch(1), head: SequenceNumber(47), acked: SequenceNumber(5),
                                                    atUnixMilliseconds: WebTime.nowMilliseconds(), measuring: false))
                let answer = CommandResponse(requestID: "web-live", command: "stop", message: "measuring stopped")
                try await store.recordResponse(device: device, answer)
            }
            let r = try await client.get("/devices/\(device)/live", s)
            try await changes.value
            XCTAssertEqual(r.headers[.contentType], "text/event-stream; charset=utf-8")
            XCTAssertEqual(r.headers[.cacheControl], "no-store")
            let events = String(buffer: r.body).components(separatedBy: "\n\n").filter { $0.hasPrefix("event: part") }
            let parts = try events.map { e -> [String: String] in
                let data = try XCTUnwrap(e.split(separator: "\n").first { $0.hasPrefix("data: ") }).dropFirst(6)
                return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(data.utf8)) as? [String: String])
            }
            let summaries = parts.filter { $0["id"] == "summary" }.compactMap { $0["html"] }
            XCTAssertEqual(summaries.count, 2, "the first state, then the change; nothing while it stays the same")
            XCTAssertTrue(summaries.first?.contains("Measuring") == true)
            XCTAssertTrue(summaries.last?.contains("Stopped") == true)
            XCTAssertTrue(summaries.last?.contains("<span class=\"n\" id=\"backlog\">42</span>") == true, summaries.last ?? "")
            let answers = parts.filter { $0["id"] == "commands" }.compactMap { $0["html"] }
            XCTAssertEqual(answers.count, 2)
            XCTAssertTrue(answers.first?.contains("waiting for device") == true)
            XCTAssertTrue(answers.last?.contains("measuring stopped") == true)
            // The fleet stream follows its query.
            let fleet = String(buffer: try await client.get("/live/fleet?q=\(device)", s).body)
            XCTAssertTrue(fleet.contains("\"id\":\"fleet-rows\""))
            XCTAssertTrue(fleet.contains(device.rawValue))
            // Signed out: the stream says so and ends.
            try await UserDirectory(store: h.store).signOut(name: WebTestDatabase.viewer, by: "test")
            let ended = try await client.get("/devices/\(device)/live", s)
            XCTAssertEqual(ended.status, .found, "no session, no stream")
        }
    }

    func testLiveStreamsAreBounded() async throws {
        let live = LiveStreams(limit: 2)
        XCTAssertTrue(live.enter())
        XCTAssertTrue(live.enter())
        XCTAssertFalse(live.enter())
        live.leave()
        XCTAssertTrue(live.enter())
        XCTAssertEqual(live.count, 2)
    }

    /// docs/openapi.yaml documents exactly the /api routes of the router, method by method.
    func testOpenAPIDocumentMatchesTheRouter() async throws {
        let h = try await WebHarness.make()
        addTeardownBlock { await h.close() }
        let routes = Set(buildRouter(h.deps).routes.filter { $0.path.description.hasPrefix("/api/") }.map { "\($0.method.rawValue) \($0.path.description)" })
        let yaml = try String(contentsOfFile: Stack.packageRoot + "/docs/openapi.yaml", encoding: .utf8)
        var documented = Set<String>()
        var path: String?
        var inPaths = false
        for line in yaml.split(separator: "\n", omittingEmptySubsequences: false) {
            if line == "paths:" { inPaths = true; continue }
            guard inPaths else { continue }
            if line.hasPrefix("  /"), line.hasSuffix(":"), !line.hasPrefix("   ") { path = String(line.dropFirst(2).dropLast()); continue }
            if let p = path, line.hasPrefix("    "), !line.hasPrefix("     ") {
                let key = line.trimmingCharacters(in: .whitespaces).dropLast()
                if ["get", "post", "put", "patch", "delete"].contains(String(key)) { documented.insert("\(key.uppercased()) \(p)") }
            }
        }
        XCTAssertGreaterThan(documented.count, 10, "the parser found the paths")
        XCTAssertEqual(routes.subtracting(documented).sorted(), [], "routes missing from docs/openapi.yaml")
        XCTAssertEqual(documented.subtracting(routes).sorted(), [], "documented routes the router does not have")
    }
}
