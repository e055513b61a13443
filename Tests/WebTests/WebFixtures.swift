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
@testable import BackendNode

/// A fresh, migrated database on the shared stack with one web user.
final class WebTestDatabase: @unchecked Sendable {
    // @unchecked: immutable after init.
    let stack: Stack
    let name: String
    let settings: DatabaseSettings
    static let user = "operator"
    static let password = "correct horse battery"

    init() throws {
        guard let stack = try Stack.available() else { throw XCTSkip("no service stack (run scripts/stack up)") }
        self.stack = stack
        name = try stack.createDatabase("web")
        settings = DatabaseSettings(addresses: [DatabaseAddress(host: stack.mariaDBHost, port: stack.mariaDBPort)],
                                    user: stack.mariaDBUser, password: stack.mariaDBPassword, database: name,
                                    connectTimeout: .seconds(2), readTimeout: .seconds(10))
    }

    var broker: BrokerSettings {
        BrokerSettings(host: stack.mqttHost, port: stack.mqttPort, user: stack.mqttBackendUser, password: stack.mqttBackendPassword)
    }

    /// Migrates and adds the test user (bcrypt cost 4 keeps tests fast).
    func prepare(_ web: WebStore) async throws {
        let store = try await web.database.store()
        try await Migrator(connection: store.connection).migrate()
        _ = try await web.addUser(name: Self.user, passwordHash: await Passwords.hash(Self.password, cost: 4))
    }

    /// Environment for a spawned `fieldlog-backend` that uses this database.
    var environment: [String: String] { stack.backendEnvironment(database: name) }

    func drop() { try? stack.dropDatabase(name) }
}

/// A web app on a test database, with its MQTT publisher connected to the stack's broker.
struct WebHarness {
    let db: WebTestDatabase
    let store: WebStore
    let deps: WebDependencies
    let publisher: MQTTCommandPublisher
    let publisherTask: Task<Void, Never>

    static func make(secureCookies: Bool = true) async throws -> WebHarness {
        let db = try WebTestDatabase()
        var settings = WebSettings()
        settings.secureCookies = secureCookies
        settings.bcryptCost = 4
        settings.commandTimeout = .seconds(5)
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
        await store.database.close()
        db.drop()
    }

    var application: some ApplicationProtocol { Application(router: buildRouter(deps)) }

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
                                        acked: SequenceNumber(count), atUnixMilliseconds: now, measuring: true))
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
    func signIn(user: String = WebTestDatabase.user, password: String = WebTestDatabase.password) async throws -> SignedIn {
        let page = try await execute(uri: "/signin", method: .get)
        XCTAssertEqual(page.status, .ok)
        let token = try XCTUnwrap(hiddenValue("csrf", in: String(buffer: page.body)))
        let signinCookie = try XCTUnwrap(cookie(WebSettings.signInCookie, from: page))
        let body = "csrf=\(token)&user=\(user)&password=\(password.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!)&next=%2F"
        let r = try await execute(uri: "/signin", method: .post,
                                  headers: [.cookie: "\(WebSettings.signInCookie)=\(signinCookie)", .contentType: "application/x-www-form-urlencoded"],
                                  body: ByteBuffer(string: body))
        XCTAssertEqual(r.status, .found, String(buffer: r.body))
        let session = try XCTUnwrap(cookie(WebSettings.sessionCookie, from: r), "no session cookie")
        let info = try await execute(uri: "/api/session", method: .get, headers: [.cookie: "\(WebSettings.sessionCookie)=\(session)"])
        XCTAssertEqual(info.status, .ok)
        let o = try JSONSerialization.jsonObject(with: Data(buffer: info.body)) as! [String: Any]
        return SignedIn(cookie: "\(WebSettings.sessionCookie)=\(session)", csrf: o["csrfToken"] as! String)
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
