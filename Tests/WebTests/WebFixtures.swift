// Shared helpers of the web tests: a migrated database with a user and a device's data, an
// in-process router, and a signed-in test client.
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

/// The web tests' database: the shared fixture, with the web users.
typealias WebTestDatabase = TestDatabase

extension TestDatabase {
    static let user = "operator"
    static let password = "correct horse battery"
    /// A user of each role, all with `password`.
    static let viewer = "viewer", admin = "admin"

    convenience init() throws { try self.init("web") }

    /// Migrates and adds the test users (bcrypt cost 4 keeps tests fast).
    func prepare(_ web: WebStore) async throws {
        let store = try await web.database.store()
        try await Migrator(connection: store.connection).migrate()
        let users = UserDirectory(store: web)
        for (name, role) in [(Self.user, Role.operator), (Self.viewer, .viewer), (Self.admin, .admin)] {
            try await users.add(name: name, password: Self.password, role: role, by: "test")
        }
    }
}

/// A web app on a test database, with its MQTT publisher connected to the stack's broker.
struct WebHarness {
    let db: WebTestDatabase
    let store: WebStore
    let deps: WebDependencies
    let publisher: MQTTCommandPublisher
    let publisherTask: Task<Void, Never>

    static func make(secureCookies: Bool = true, _ configure: (inout WebSettings) -> Void = { _ in }) async throws -> WebHarness {
        let db = try WebTestDatabase()
        var settings = WebSettings()
        settings.secureCookies = secureCookies
        settings.bcryptCost = 4
        settings.commandTimeout = .seconds(5)
        settings.fleetCacheAge = .zero
        settings.liveInterval = .milliseconds(200)
        settings.liveMaxDuration = .seconds(3)
        configure(&settings)
        let logger = Logger(label: "web-test")
        let store = WebStore(database: DatabaseClient(settings: db.settings, logger: logger), settings: settings, logger: logger)
        try await db.prepare(store)
        let publisher = MQTTCommandPublisher(broker: db.broker, logger: logger)
        let task = Task { do { try await publisher.run() } catch {} }
        let deps = WebDependencies(store: store,
                                   commands: CommandDispatcher(store: store, publisher: publisher, topics: .defaults, logger: logger),
                                   settings: settings, logger: logger)
        return WebHarness(db: db, store: store, deps: deps, publisher: publisher, publisherTask: task)
    }

    func close() async {
        publisherTask.cancel()
        await store.close()
        db.drop()
    }

    var application: some ApplicationProtocol { Application(router: buildRouter(deps)) }

    /// The application on a loopback port (for tests that need a real peer address).
    var liveApplication: some ApplicationProtocol {
        Application(router: buildRouter(deps), configuration: ApplicationConfiguration(address: .hostname("127.0.0.1", port: 0)))
    }

    /// Stores `count` readings of `device` through the backend's own write path, one every
    /// `everyMs` ending now, leaving out the sequence numbers in `missing` (a gap).
    func storeReadings(_ device: DeviceID, epoch: Epoch, count: UInt64, everyMs: Int64 = 1000, missing: ClosedRange<UInt64>? = nil) async throws {
        let now = WebTime.nowMilliseconds()
        let records = (1...count).filter { !(missing?.contains($0) ?? false) }.map { seq in
            LogRecord(sequence: SequenceNumber(seq), timestamp: DeviceTimestamp(unixMilliseconds: now - Int64(count - seq) * everyMs),
                      values: try! SensorValues(["temperature_c": .number(20 + Double(seq % 10) / 2), "state": .text("ok")]))
        }
        // Contiguous runs become batches (a gap is simply never sent).
        var runs: [[LogRecord]] = []
        for r in records {
            if let last = runs.last?.last, last.sequence.rawValue + 1 == r.sequence.rawValue { runs[runs.count - 1].append(r) } else { runs.append([r]) }
        }
        let s = try await store.database.store()
        for run in runs {
            let batch = Batch(device: device, epoch: epoch, range: SequenceRange(checked: run.first!.sequence, run.last!.sequence), records: run)
            let request = StoreRequest(batch, topic: TopicTemplates.defaults.batch.topic(device: device))
            _ = try await s.storeBatches([request], newDevices: [device], newEpochs: [(device, epoch)])
        }
        try await s.recordStatus(Status(device: device, state: .online, epoch: epoch, head: SequenceNumber(count + 5),
                                        acked: SequenceNumber(count), atUnixMilliseconds: now, measuring: true,
                                        dataUsage: DataUsage(day: DataUsage.day(ofUnixMilliseconds: now), sentBytes: 48_213, receivedBytes: 1_840)))
    }
}

/// Cookies and the CSRF token of a signed-in client.
struct SignedIn {
    var cookie: String
    var csrf: String
    var headers: HTTPFields { [.cookie: cookie] }
    func headers(csrfHeader: Bool, json: Bool = false) -> HTTPFields {
        var h: HTTPFields = [.cookie: cookie]
        if csrfHeader { h[HTTPField.Name("X-CSRF-Token")!] = csrf }
        if json { h[.contentType] = "application/json" }
        return h
    }
}

extension TestClientProtocol {
    /// Signs in through the form, as a browser does; returns the session cookie and CSRF token.
    func signIn(user: String = WebTestDatabase.user, password: String = WebTestDatabase.password, client: String? = nil) async throws -> SignedIn {
        let page = try await execute(uri: "/signin", method: .get)
        XCTAssertEqual(page.status, .ok)
        let token = try XCTUnwrap(hiddenValue("csrf", in: String(buffer: page.body)))
        let signinCookie = try XCTUnwrap(cookie(WebSettings.signInCookie, from: page))
        let body = "csrf=\(token)&user=\(user)&password=\(password.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!)&next=%2F"
        var headers: HTTPFields = [.cookie: "\(WebSettings.signInCookie)=\(signinCookie)", .contentType: "application/x-www-form-urlencoded"]
        if let client { headers[HTTPField.Name("X-Forwarded-For")!] = client }
        let r = try await execute(uri: "/signin", method: .post, headers: headers, body: ByteBuffer(string: body))
        XCTAssertEqual(r.status, .found, String(buffer: r.body))
        let session = try XCTUnwrap(cookie(WebSettings.sessionCookie, from: r), "no session cookie")
        let info = try await execute(uri: "/api/session", method: .get, headers: [.cookie: "\(WebSettings.sessionCookie)=\(session)"])
        XCTAssertEqual(info.status, .ok)
        let o = try JSONSerialization.jsonObject(with: Data(buffer: info.body)) as! [String: Any]
        return SignedIn(cookie: "\(WebSettings.sessionCookie)=\(session)", csrf: o["csrfToken"] as! String)
    }

    func get(_ uri: String, _ s: SignedIn) async throws -> TestResponse {
        try await execute(uri: uri, method: .get, headers: s.headers)
    }

    /// Posts a form with the session's CSRF token.
    func postForm(_ uri: String, _ s: SignedIn, _ fields: [(String, String)]) async throws -> TestResponse {
        let body = ([("csrf", s.csrf)] + fields).map { "\($0.0)=\(PageLink.encode($0.1))" }.joined(separator: "&")
        return try await execute(uri: uri, method: .post, headers: [.cookie: s.cookie, .contentType: "application/x-www-form-urlencoded"],
                                 body: ByteBuffer(string: body))
    }

    /// Sends JSON with the session's CSRF token.
    func sendJSON(_ uri: String, _ s: SignedIn, method: HTTPRequest.Method = .post, _ json: String) async throws -> TestResponse {
        try await execute(uri: uri, method: method, headers: s.headers(csrfHeader: true, json: true), body: ByteBuffer(string: json))
    }
}

func hiddenValue(_ name: String, in html: String) -> String? {
    guard let r = html.range(of: "name=\"\(name)\" value=\"") else { return nil }
    return String(html[r.upperBound...].prefix { $0 != "\"" })
}

func cookie(_ name: String, from response: TestResponse) -> String? {
    setCookieHeaders(response).compactMap { h -> String? in
        guard h.hasPrefix(name + "=") else { return nil }
        return String(h.dropFirst(name.count + 1).prefix { $0 != ";" })
    }.first
}

func setCookieHeaders(_ response: TestResponse) -> [String] {
    response.headers[values: .setCookie]
}

func jsonBody(_ response: TestResponse) throws -> [String: Any] {
    try XCTUnwrap(JSONSerialization.jsonObject(with: Data(buffer: response.body)) as? [String: Any], String(buffer: response.body))
}

// XCTAssert's autoclosures cannot await; these take the values already awaited.
func expectEqual<T: Equatable>(_ a: T, _ b: T, _ message: @autoclosure () -> String = "", file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a, b, message(), file: file, line: line)
}

func expectTrue(_ v: Bool, _ message: @autoclosure () -> String = "", file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertTrue(v, message(), file: file, line: line)
}

func expectFalse(_ v: Bool, _ message: @autoclosure () -> String = "", file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertFalse(v, message(), file: file, line: line)
}

func expectNotNil<T>(_ v: T?, _ message: @autoclosure () -> String = "", file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertNotNil(v, message(), file: file, line: line)
}

func expectGreater<T: Comparable>(_ a: T, _ b: T, _ message: @autoclosure () -> String = "", file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertGreaterThan(a, b, message(), file: file, line: line)
}

func unwrap<T>(_ v: T?, _ message: @autoclosure () -> String = "", file: StaticString = #filePath, line: UInt = #line) throws -> T {
    try XCTUnwrap(v, message(), file: file, line: line)
}

/// A fleet made with SQL (fast), with every kind of device the filters select.
func insertFleet(_ s: Store, count: Int, prefix: String) async throws {
    let now = SQLTime.now()
    let old = SQLTime.datetime(unixMilliseconds: WebTime.nowMilliseconds() - 3_600_000)!
    var devices: [[MariaDBValue]] = [], epochs: [[MariaDBValue]] = [], ranges: [[MariaDBValue]] = [], dead: [[MariaDBValue]] = []
    for i in 0..<count {
        let id = MariaDBValue.string("\(prefix)-\(String(i).leftPadded(to: 4))")
        let offline = i % 4 == 0, silent = i % 10 == 0
        let head = UInt64(100 + i % 7)
        devices.append([id, .string(offline ? "offline" : "online"), .uint(1), .uint(head), .uint(100), .string(silent ? old : now), .string(silent ? old : now)])
        epochs.append([id, .uint(1), .string(now), .uint(head)])
        if i % 5 == 0 {
            ranges.append([id, .uint(1), .uint(1), .uint(40), .string(silent ? old : now)])
            ranges.append([id, .uint(1), .uint(45), .uint(100), .string(silent ? old : now)])
        } else {
            ranges.append([id, .uint(1), .uint(1), .uint(100), .string(silent ? old : now)])
        }
        if i % 9 == 0 { dead.append([id, .string(now)]) }
    }
    try await s.connection.insertRows("""
        INSERT INTO devices (device_id, status_state, status_epoch, status_head, status_acked, status_received_at, first_seen_at, protocol, status_measuring)
        """, rows: devices.map { $0 + [.string("fieldlog"), .int(1)] })
    try await s.connection.insertRows("INSERT INTO epochs (device_id, epoch, first_seen_at, reported_head)", rows: epochs)
    try await s.connection.insertRows("INSERT INTO batch_ranges (device_id, epoch, first_seq, last_seq, stored_at)", rows: ranges)
    try await s.connection.insertRows("INSERT INTO dead_letters (device_id, received_at, topic, reason, detail, payload_bytes, payload_head)",
                                      rows: dead.map { $0 + [.string("t"), .string("malformed-json"), .string("bad"), .uint(3), .bytes([0x7B, 0x78, 0x7D])] })
}

/// Writes dead letters the way the ingest does (one transaction of its rows).
func recordDeadLetters(_ s: Store, _ letters: [DeadLetter]) async throws {
    var tx = IngestTransaction()
    tx.deadLetters = letters
    _ = try await s.write(StoreRows(tx))
}
