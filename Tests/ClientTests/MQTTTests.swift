// MQTT wrapper against the shared stack's Mosquitto (auth + per-device ACL on), and private
// brokers for TLS and restarts.
import Foundation
@_spi(Testing) import MQTT
import TestSupport
import Threading
import XCTest

/// Collects what an AsyncStream delivers, so tests can wait for it with a timeout.
actor Inbox<Element: Sendable> {
    private(set) var items: [Element] = []
    func append(_ item: Element) { items.append(item) }

    static func collecting(_ stream: AsyncStream<Element>) -> Inbox<Element> {
        let inbox = Inbox<Element>()
        Task {
            for await item in stream { await inbox.append(item) }
        }
        return inbox
    }

    /// Waits until `condition` holds for the items; fails the test with `what` after `timeout`.
    func wait(for what: String, timeout: Duration = .seconds(5), file: StaticString = #filePath, line: UInt = #line,
              _ condition: @Sendable ([Element]) -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while !condition(items) {
            if ContinuousClock.now > deadline {
                XCTFail("timed out waiting for \(what); have \(items)", file: file, line: line)
                throw CancellationError()
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }
}

final class MQTTTests: XCTestCase {
    private var stack: Stack!

    override func setUpWithError() throws {
        guard let stack = try Stack.available() else { throw XCTSkip("no service stack (run scripts/stack up)") }
        self.stack = stack
    }

    private static let fastReconnect = MQTTReconnectPolicy(minDelay: .milliseconds(100), maxDelay: .seconds(1), jitter: 0.5)

    /// A new device user on the shared broker: its id is its user name (the ACL keys on it).
    private func newDevice() throws -> (id: String, password: String) {
        let id = Stack.uniqueName("dev")
        let password = Stack.uniqueName("pw")
        try stack.addMQTTUser(id, password: password)
        return (id, password)
    }

    private func client(user: String, password: String, port: Int? = nil, clientID: String? = nil,
                        will: MQTTConfiguration.Will? = nil, cleanStart: Bool = true, sessionExpiry: Duration? = nil,
                        tls: MQTTConfiguration.TLS? = nil) throws -> MQTTClient {
        try MQTTClient(configuration: MQTTConfiguration(
            host: "127.0.0.1", port: port ?? stack.mqttPort, clientID: clientID ?? Stack.uniqueName(user),
            cleanStart: cleanStart, username: user, password: password, keepAlive: .seconds(10), tls: tls, will: will,
            sessionExpiry: sessionExpiry, reconnect: Self.fastReconnect))
    }

    private func backend(port: Int? = nil) throws -> MQTTClient {
        try client(user: stack.mqttBackendUser, password: stack.mqttBackendPassword, port: port)
    }

    private func topic(_ device: String, _ leaf: String) -> String { "fieldlog/v1/devices/\(device)/\(leaf)" }

    // MARK: authentication

    func testBadPasswordIsRefusedWithAClearError() async throws {
        let device = try newDevice()
        let mqtt = try client(user: device.id, password: "not-the-password")
        do {
            try await mqtt.connect()
            XCTFail("expected the broker to refuse")
        } catch let error as MQTTError {
            XCTAssertEqual(error.kind, .connectRefused, error.description)
            XCTAssertTrue([.badUserNameOrPassword, .notAuthorized].contains(error.reasonCode), error.description)
            XCTAssertTrue(error.description.contains("refused the connection"), error.description)
        }
        // The same client can connect once the credentials are right on the broker's side.
        try stack.addMQTTUser(device.id, password: "not-the-password")
        try await mqtt.connect()
        await mqtt.disconnect()
    }

    func testConnectToAClosedPortAndPublishBeforeConnecting() async throws {
        let device = try newDevice()
        let port = Ports.free()
        let mqtt = try client(user: device.id, password: device.password, port: port)
        do {
            try await mqtt.publish(topic(device.id, "batch"), payload: [1], qos: .atMostOnce)
            XCTFail("expected not connected")
        } catch let error as MQTTError {
            XCTAssertEqual(error.kind, .notConnected, error.description)
        }
        do {
            try await mqtt.connect()
            XCTFail("expected a connection error")
        } catch let error as MQTTError {
            XCTAssertEqual(error.kind, .connection, error.description)
            XCTAssertTrue(error.description.contains("127.0.0.1:\(port)"), error.description)
            XCTAssertTrue(error.message.lowercased().contains("refused"), error.description)
        }
        XCTAssertThrowsError(try MQTTClient(configuration: MQTTConfiguration(clientID: "x", keepAlive: .seconds(1)))) {
            XCTAssertTrue("\($0)".contains("keepAlive"), "\($0)")
        }
        XCTAssertThrowsError(try MQTTClient(configuration: MQTTConfiguration(
            clientID: "x", tls: .init(caFile: "/nonexistent/ca.pem")))) {
            XCTAssertTrue("\($0)".contains("/nonexistent/ca.pem"), "\($0)")
        }
    }

    /// Regression: a configuration error found after `mosquitto_new` (unreadable TLS file, a
    /// certificate without its key, a will on a wildcard topic) used to destroy the handle twice
    /// (once in init's error path, once in deinit), corrupting the heap; the abort came later, in
    /// whatever allocated next. Many failed inits followed by heavy allocation make it show here.
    func testFailedConfigurationFreesTheHandleOnceEvenWhenRepeated() throws {
        for i in 0..<200 {
            XCTAssertThrowsError(try MQTTClient(configuration: MQTTConfiguration(
                clientID: "bad-tls-\(i)", tls: .init(caFile: "/nonexistent/ca-\(i).pem")))) {
                XCTAssertTrue("\($0)".contains("/nonexistent/ca-\(i).pem"), "\($0)")
            }
            XCTAssertThrowsError(try MQTTClient(configuration: MQTTConfiguration(
                clientID: "bad-will-\(i)", will: .init(topic: "fieldlog/v1/devices/+/status", payload: [1], qos: .atLeastOnce,
                                                       properties: .init(contentType: "text/plain"))))) {
                XCTAssertTrue("\($0)".contains("will"), "\($0)")
            }
        }
        // Allocation-heavy work after the failures, as the simulation test that used to abort.
        var total = 0
        for round in 0..<200 {
            var chunks: [[UInt8]] = []
            for size in stride(from: 16, through: 4096, by: 61) { chunks.append([UInt8](repeating: UInt8(truncatingIfNeeded: round), count: size)) }
            var text: [String] = []
            for chunk in chunks.shuffled() { text.append(String(decoding: chunk.prefix(40), as: UTF8.self) + "\(chunk.count)") }
            total += chunks.reduce(0) { $0 + $1.count } + text.count
        }
        XCTAssertGreaterThan(total, 0)
    }

    // MARK: publish / subscribe

    func testPublishSubscribeRoundTripWithPropertiesAndPubAck() async throws {
        let device = try newDevice()
        let sub = try backend()
        let inbox = Inbox.collecting(sub.messages)
        try await sub.connect()
        let granted = try await sub.subscribe(topic(device.id, "#"), qos: .atLeastOnce)
        XCTAssertEqual(granted, .atLeastOnce)

        let pub = try client(user: device.id, password: device.password)
        let ack0 = try await pub.connect()
        XCTAssertFalse(ack0.sessionPresent)
        let payload: [UInt8] = [0x7b, 0, 1, 2, 0xff, 0x7d]
        let properties = MQTTMessageProperties(contentType: "application/x-fieldlog-batch",
                                               userProperties: [.init("epoch", "7"), .init("first-seq", "42"), .init("epoch", "dup")])
        let ack = try await pub.publish(topic(device.id, "batch"), payload: payload, qos: .atLeastOnce, properties: properties)
        XCTAssertEqual(ack.reasonCode, .success)
        try await pub.publish(topic(device.id, "status"), payload: Array("online".utf8), qos: .atMostOnce)

        try await inbox.wait(for: "both messages") { $0.count >= 2 }
        let messages = await inbox.items
        let batch = try XCTUnwrap(messages.first { $0.topic.hasSuffix("/batch") })
        XCTAssertEqual(batch.payload, payload)
        XCTAssertEqual(batch.qos, .atLeastOnce)
        XCTAssertFalse(batch.retain)
        XCTAssertEqual(batch.properties.contentType, "application/x-fieldlog-batch")
        XCTAssertEqual(batch.properties.userProperties, properties.userProperties)
        let status = try XCTUnwrap(messages.first { $0.topic.hasSuffix("/status") })
        XCTAssertEqual(status.payloadString, "online")
        XCTAssertEqual(status.qos, .atMostOnce)

        // No subscriber: the v5 PUBACK still succeeds, with reason "no matching subscribers".
        try await sub.unsubscribe(topic(device.id, "#"))
        let lonely = try await pub.publish(topic(device.id, "batch"), payload: [1], qos: .atLeastOnce)
        XCTAssertEqual(lonely.reasonCode, .noMatchingSubscribers)
        await pub.disconnect()
        await sub.disconnect()
        do {
            try await pub.publish(topic(device.id, "batch"), payload: [1])
            XCTFail("expected closed")
        } catch let error as MQTTError {
            XCTAssertEqual(error.kind, .closed)
        }
    }

    /// Backpressure: a paused client stops reading, the broker holds what it cannot send, the
    /// connection stays up past the keep-alive (the client still reads a PINGRESP now and then),
    /// and resuming delivers every message.
    func testPausedReadingHoldsMessagesAtTheBrokerKeepsTheConnectionAndResumeDeliversAll() async throws {
        let device = try newDevice()
        let sub = try backend()  // keep-alive 10 s
        let inbox = Inbox.collecting(sub.messages)
        let events = Inbox.collecting(sub.events)
        try await sub.connect()
        try await sub.subscribe(topic(device.id, "batch"), qos: .atLeastOnce)
        let pub = try client(user: device.id, password: device.password)
        try await pub.connect()
        sub.pauseReading()
        let payload = [UInt8](repeating: 0x61, count: 10_000)
        let count = 2_000
        let batchTopic = topic(device.id, "batch")
        try await withThrowingTaskGroup(of: Void.self) { group in
            for lane in 0..<8 {
                group.addTask { for _ in stride(from: lane, to: count, by: 8) { try await pub.publish(batchTopic, payload: payload, qos: .atLeastOnce) } }
            }
            try await group.waitForAll()
        }
        try await Task.sleep(for: .seconds(2))
        let whilePaused = await inbox.items.count
        XCTAssertLessThan(whilePaused, count, "a paused client does not take everything the broker has for it")
        // Past the keep-alive while paused: still connected.
        try await Task.sleep(for: .seconds(11))
        let seen = await events.items
        let disconnects = seen.filter { if case .disconnected = $0 { true } else { false } }
        XCTAssertEqual(disconnects.count, 0, "the connection survives a pause longer than the keep-alive: \(seen)")
        sub.resumeReading()
        try await inbox.wait(for: "all \(count) messages after resuming", timeout: .seconds(30)) { $0.count >= count }
        print("paused: \(whilePaused) of \(count) messages arrived while reading was paused")
        await pub.disconnect()
        await sub.disconnect()
    }

    func testRetainedMessageReachesALaterSubscriber() async throws {
        let device = try newDevice()
        let pub = try client(user: device.id, password: device.password)
        try await pub.connect()
        try await pub.publish(topic(device.id, "status"), payload: Array("online".utf8), qos: .atLeastOnce, retain: true,
                              properties: .init(contentType: "text/plain"))
        let sub = try backend()
        let inbox = Inbox.collecting(sub.messages)
        try await sub.connect()
        try await sub.subscribe(topic(device.id, "status"))
        try await inbox.wait(for: "the retained message") { !$0.isEmpty }
        let retained = await inbox.items[0]
        XCTAssertTrue(retained.retain)
        XCTAssertEqual(retained.payloadString, "online")
        XCTAssertEqual(retained.properties.contentType, "text/plain")
        // An empty retained payload clears it.
        try await pub.publish(topic(device.id, "status"), payload: [], qos: .atLeastOnce, retain: true)
        await pub.disconnect()
        await sub.disconnect()
    }

    func testLastWillIsPublishedWhenTheConnectionBreaksAndTheClientReconnects() async throws {
        let device = try newDevice()
        let sub = try backend()
        let inbox = Inbox.collecting(sub.messages)
        try await sub.connect()
        try await sub.subscribe(topic(device.id, "status"))

        let will = MQTTConfiguration.Will(topic: topic(device.id, "status"), payload: Array("offline".utf8), qos: .atLeastOnce,
                                          properties: .init(contentType: "text/plain", userProperties: [.init("why", "will")]))
        let mqtt = try client(user: device.id, password: device.password, will: will)
        let events = Inbox.collecting(mqtt.events)
        try await mqtt.connect()
        mqtt.simulateConnectionLoss()
        try await inbox.wait(for: "the will") { $0.contains { $0.payloadString == "offline" } }
        let first = await inbox.items.first
        let received = try XCTUnwrap(first)
        XCTAssertEqual(received.properties.contentType, "text/plain")
        XCTAssertEqual(received.properties.userProperties, [.init("why", "will")])

        // The client reconnects by itself, with backoff, and works again.
        try await events.wait(for: "disconnected, reconnecting, connected") { items in
            guard let lost = items.firstIndex(where: { if case .disconnected(.some) = $0 { true } else { false } }) else { return false }
            return items[lost...].contains { if case .reconnecting(attempt: 1, _) = $0 { true } else { false } }
                && items[lost...].contains { if case .connected = $0 { true } else { false } }
        }
        try await mqtt.publish(topic(device.id, "status"), payload: Array("back".utf8))
        try await inbox.wait(for: "the message after reconnecting") { $0.contains { $0.payloadString == "back" } }

        // A graceful disconnect does not publish the will; asking for it does.
        await mqtt.disconnect(sendWill: true)
        try await inbox.wait(for: "the will on request") { $0.filter { $0.payloadString == "offline" }.count == 2 }
        await sub.disconnect()
    }

    /// Done-when: the broker refuses a device that publishes under another device's topic; the
    /// PUBACK reason says so, the publish throws saying so, and no subscriber gets the message.
    func testPublishingUnderAnotherDevicesTopicIsRefusedAndNeverDelivered() async throws {
        let mallory = try newDevice()
        let victim = try newDevice()
        let sub = try backend()
        let inbox = Inbox.collecting(sub.messages)
        try await sub.connect()
        try await sub.subscribe(topic(victim.id, "#"))

        let attacker = try client(user: mallory.id, password: mallory.password)
        try await attacker.connect()
        do {
            try await attacker.publish(topic(victim.id, "batch"), payload: Array("forged".utf8), qos: .atLeastOnce)
            XCTFail("expected the broker to refuse the publish")
        } catch let error as MQTTError {
            XCTAssertEqual(error.kind, .publishRefused, error.description)
            XCTAssertEqual(error.reasonCode, .notAuthorized, error.description)
            XCTAssertTrue(error.description.contains("Not authorized (0x87)"), error.description)
            XCTAssertTrue(error.description.contains(topic(victim.id, "batch")), error.description)
        }
        // QoS 0 has no PUBACK: the broker drops it silently; it must not arrive either.
        try await attacker.publish(topic(victim.id, "status"), payload: Array("forged-qos0".utf8), qos: .atMostOnce)
        // The attacker's own topic still works on the same connection.
        let own = try await attacker.publish(topic(mallory.id, "batch"), payload: [1], qos: .atLeastOnce)
        XCTAssertFalse(own.reasonCode.isFailure)

        // The real device's message arrives; the forged ones never do.
        let real = try client(user: victim.id, password: victim.password)
        try await real.connect()
        try await real.publish(topic(victim.id, "batch"), payload: Array("genuine".utf8), qos: .atLeastOnce)
        try await inbox.wait(for: "the genuine message") { $0.contains { $0.payloadString == "genuine" } }
        try await Task.sleep(for: .milliseconds(300))
        let payloads = await inbox.items.map(\.payloadString)
        XCTAssertEqual(payloads, ["genuine"])

        // Reading another device's acks: mosquitto 2.0 grants the SUBSCRIBE (its SUBACK says
        // success) but checks read access per message, so nothing of the victim's arrives.
        let attackerInbox = Inbox.collecting(attacker.messages)
        do {
            try await attacker.subscribe(topic(victim.id, "ack"))
        } catch let error as MQTTError {
            XCTAssertEqual(error.kind, .subscribeRefused, error.description) // also fine: refused outright
        }
        try await attacker.subscribe(topic(mallory.id, "ack"))
        try await sub.publish(topic(victim.id, "ack"), payload: Array("victim-ack".utf8))
        try await sub.publish(topic(mallory.id, "ack"), payload: Array("own-ack".utf8))
        try await attackerInbox.wait(for: "the attacker's own ack") { $0.contains { $0.payloadString == "own-ack" } }
        try await Task.sleep(for: .milliseconds(200))
        let attackerPayloads = await attackerInbox.items.map(\.payloadString)
        XCTAssertEqual(attackerPayloads, ["own-ack"])
        for c in [attacker, real, sub] { await c.disconnect() }
    }

    func testSharedSubscriptionSplitsMessagesBetweenSubscribers() async throws {
        let device = try newDevice()
        let group = "$share/\(Stack.uniqueName("g"))/" + topic(device.id, "batch")
        let first = try backend(), second = try backend()
        let inbox1 = Inbox.collecting(first.messages), inbox2 = Inbox.collecting(second.messages)
        for c in [first, second] {
            try await c.connect()
            let granted = try await c.subscribe(group, qos: .atLeastOnce)
            XCTAssertEqual(granted, .atLeastOnce)
        }
        let pub = try client(user: device.id, password: device.password)
        try await pub.connect()
        for i in 0..<20 {
            try await pub.publish(topic(device.id, "batch"), payload: Array("m\(i)".utf8), qos: .atLeastOnce)
        }
        let deadline = ContinuousClock.now + .seconds(5)
        var got1: [String] = [], got2: [String] = []
        while got1.count + got2.count < 20, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
            got1 = await inbox1.items.map(\.payloadString)
            got2 = await inbox2.items.map(\.payloadString)
        }
        XCTAssertEqual(Set(got1 + got2), Set((0..<20).map { "m\($0)" }))
        XCTAssertEqual(got1.count + got2.count, 20, "each message goes to exactly one member of the group")
        XCTAssertFalse(got1.isEmpty, "the first subscriber got a share")
        XCTAssertFalse(got2.isEmpty, "the second subscriber got a share")
        for c in [pub, first, second] { await c.disconnect() }
    }

    // MARK: many open files

    /// Opens descriptors until the next one is numbered above select(2)'s limit (1024).
    private func holdDescriptorsAboveSelectLimit() -> [Int32] {
        var held: [Int32] = []
        while true {
            let fd = open("/dev/null", O_RDONLY)
            guard fd >= 0 else { break }
            held.append(fd)
            if fd > 1100 { break }
        }
        return held
    }

    /// A process with more than 1,024 open files (a fleet simulation, a busy backend) still
    /// connects, publishes and receives: libmosquitto's select()-based loop refused such sockets.
    func testConnectsPublishesAndReceivesWithItsSocketAboveTheSelectLimit() async throws {
        let held = holdDescriptorsAboveSelectLimit()
        defer { for fd in held { close(fd) } }
        XCTAssertGreaterThan(held.last ?? 0, 1024, "could not open enough descriptors (ulimit -n?)")
        let device = try newDevice()
        let sub = try backend()
        let inbox = Inbox.collecting(sub.messages)
        try await sub.connect()
        try await sub.subscribe(topic(device.id, "batch"), qos: .atLeastOnce)
        let pub = try client(user: device.id, password: device.password)
        try await pub.connect()
        for i in 0..<50 {
            try await pub.publish(topic(device.id, "batch"), payload: Array("m\(i)".utf8), qos: .atLeastOnce)
        }
        try await inbox.wait(for: "50 messages through sockets above 1024") { $0.count == 50 }
        let got = await inbox.items.map(\.payloadString)
        XCTAssertEqual(got, (0..<50).map { "m\($0)" })
        await pub.disconnect()
        await sub.disconnect()
    }

    // MARK: TLS

    /// Done-when: TLS with a CA the test made; refused when the client trusts another CA.
    @MainActor func testTLSWithATestMadeCAAndRefusalUnderAnotherCA() async throws {
        let dir = try TemporaryDirectory("mqtt-tls")
        defer { dir.remove() }
        try makeCertificates(in: dir)
        let tlsPort = Ports.free(), mutualPort = Ports.free()
        let broker = try PrivateMosquitto(extraConfig: """
            listener \(tlsPort) 127.0.0.1
            cafile \(dir.file("ca.pem"))
            certfile \(dir.file("server.pem"))
            keyfile \(dir.file("server.key"))
            listener \(mutualPort) 127.0.0.1
            cafile \(dir.file("ca.pem"))
            certfile \(dir.file("server.pem"))
            keyfile \(dir.file("server.key"))
            require_certificate true
            """, persistence: false)
        try broker.addUser("fieldlog-backend", password: "backend-pw")
        try broker.start()
        try Ports.waitListening(tlsPort, what: "mosquitto TLS listener (log: \(broker.process.logPath))")
        try Ports.waitListening(mutualPort, what: "mosquitto mutual-TLS listener (log: \(broker.process.logPath))")

        let trusted = try client(user: "fieldlog-backend", password: "backend-pw", port: tlsPort,
                                 tls: .init(caFile: dir.file("ca.pem")))
        let inbox = Inbox.collecting(trusted.messages)
        try await trusted.connect()
        try await trusted.subscribe("fieldlog/v1/backend/tls-test")
        try await trusted.publish("fieldlog/v1/backend/tls-test", payload: Array("over TLS".utf8), qos: .atLeastOnce)
        try await inbox.wait(for: "the message over TLS") { $0.first?.payloadString == "over TLS" }
        await trusted.disconnect()

        // The same with the socket numbered above select(2)'s limit (the poll loop does the handshake).
        do {
            let held = holdDescriptorsAboveSelectLimit()
            defer { for fd in held { close(fd) } }
            let high = try client(user: "fieldlog-backend", password: "backend-pw", port: tlsPort, tls: .init(caFile: dir.file("ca.pem")))
            let highInbox = Inbox.collecting(high.messages)
            try await high.connect()
            try await high.subscribe("fieldlog/v1/backend/tls-test-high")
            try await high.publish("fieldlog/v1/backend/tls-test-high", payload: Array("over TLS, fd > 1024".utf8), qos: .atLeastOnce)
            try await highInbox.wait(for: "the message over TLS above fd 1024") { $0.first?.payloadString == "over TLS, fd > 1024" }
            await high.disconnect()
        }

        let untrusting = try client(user: "fieldlog-backend", password: "backend-pw", port: tlsPort,
                                    tls: .init(caFile: dir.file("other-ca.pem")))
        do {
            try await untrusting.connect()
            XCTFail("expected the TLS handshake to fail")
        } catch let error as MQTTError {
            XCTAssertEqual(error.kind, .tls, error.description)
            XCTAssertTrue(error.description.contains("certificate verify failed"), error.description)
        }

        // A listener that requires a client certificate: accepted with one the CA signed, refused without.
        let withCertificate = try client(user: "fieldlog-backend", password: "backend-pw", port: mutualPort,
                                         tls: .init(caFile: dir.file("ca.pem"), certificateFile: dir.file("client.pem"),
                                                    keyFile: dir.file("client.key")))
        try await withCertificate.connect()
        await withCertificate.disconnect()
        let withoutCertificate = try client(user: "fieldlog-backend", password: "backend-pw", port: mutualPort,
                                            tls: .init(caFile: dir.file("ca.pem")))
        do {
            try await withoutCertificate.connect()
            XCTFail("expected the broker to require a client certificate")
        } catch let error as MQTTError {
            XCTAssertEqual(error.kind, .tls, error.description)
            XCTAssertTrue(error.description.contains("certificate required"), error.description)
        }
        broker.stop()
    }

    private func makeCertificates(in dir: TemporaryDirectory) throws {
        func openssl(_ args: [String]) throws { try Shell.run("openssl", args) }
        for ca in ["ca", "other-ca"] {
            try openssl(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Fieldlog test \(ca)",
                         "-keyout", dir.file("\(ca).key"), "-out", dir.file("\(ca).pem")])
        }
        try openssl(["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                     "-keyout", dir.file("server.key"), "-out", dir.file("server.csr")])
        try "subjectAltName=IP:127.0.0.1,DNS:localhost\n".write(toFile: dir.file("san.ext"), atomically: true, encoding: .utf8)
        try openssl(["x509", "-req", "-in", dir.file("server.csr"), "-CA", dir.file("ca.pem"), "-CAkey", dir.file("ca.key"),
                     "-CAcreateserial", "-days", "2", "-extfile", dir.file("san.ext"), "-out", dir.file("server.pem")])
        try openssl(["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=fieldlog-backend",
                     "-keyout", dir.file("client.key"), "-out", dir.file("client.csr")])
        try openssl(["x509", "-req", "-in", dir.file("client.csr"), "-CA", dir.file("ca.pem"), "-CAkey", dir.file("ca.key"),
                     "-CAcreateserial", "-days", "2", "-out", dir.file("client.pem")])
    }

    // MARK: broker restart

    @MainActor func testReconnectAfterBrokerRestartRestoresSubscriptionsAndDeliversQueuedQoS1() async throws {
        let broker = try PrivateMosquitto()
        try broker.addUser("fieldlog-backend", password: "backend-pw")
        let device = "dev-restart"
        try broker.addUser(device, password: "device-pw")
        try broker.start()
        let subscriberID = Stack.uniqueName("backend-session")
        let sub = try client(user: "fieldlog-backend", password: "backend-pw", port: broker.port, clientID: subscriberID,
                             cleanStart: false, sessionExpiry: .seconds(300))
        let subInbox = Inbox.collecting(sub.messages)
        try await sub.connect()
        try await sub.subscribe(topic(device, "batch"), qos: .atLeastOnce)
        let pub = try client(user: device, password: "device-pw", port: broker.port)
        let pubEvents = Inbox.collecting(pub.events)
        try await pub.connect()

        // Broker down: a QoS 1 publish is queued by the client and completes after the restart.
        broker.stop()
        try await pubEvents.wait(for: "the publisher noticing") { $0.contains { if case .disconnected(.some) = $0 { true } else { false } } }
        let publish = Task { try await pub.publish(topic(device, "batch"), payload: Array("while-down".utf8), qos: .atLeastOnce) }
        try await Task.sleep(for: .milliseconds(300))
        try broker.start()
        let ack = try await publish.value
        XCTAssertFalse(ack.reasonCode.isFailure)
        try await subInbox.wait(for: "delivery after the restart (subscription restored)", timeout: .seconds(10)) {
            $0.contains { $0.payloadString == "while-down" }
        }

        // Subscriber away, broker restarted meanwhile: its session keeps the QoS 1 messages.
        await sub.disconnect()
        for i in 1...3 {
            try await pub.publish(topic(device, "batch"), payload: Array("queued-\(i)".utf8), qos: .atLeastOnce)
        }
        broker.stop()
        try broker.start()
        let back = try client(user: "fieldlog-backend", password: "backend-pw", port: broker.port, clientID: subscriberID,
                              cleanStart: false, sessionExpiry: .seconds(300))
        let backInbox = Inbox.collecting(back.messages)
        let connack = try await back.connect()
        XCTAssertTrue(connack.sessionPresent, "the broker kept the session over its restart")
        try await backInbox.wait(for: "the queued messages", timeout: .seconds(10)) { $0.count >= 3 }
        let queued = await backInbox.items.map(\.payloadString)
        XCTAssertEqual(queued, ["queued-1", "queued-2", "queued-3"])
        await back.disconnect()
        await pub.disconnect()
        broker.stop()
    }

    @MainActor func testABrokerThatNeverAnswersTimesOutTheConnect() async throws {
        let broker = try PrivateMosquitto(persistence: false)
        try broker.start()
        broker.process.pause() // the kernel still accepts TCP; nothing answers CONNECT
        defer { broker.process.resume() }
        let mqtt = try MQTTClient(configuration: MQTTConfiguration(
            port: broker.port, clientID: Stack.uniqueName("hung"), username: "x", password: "y",
            connectTimeout: .milliseconds(800)))
        let started = ContinuousClock.now
        do {
            try await mqtt.connect()
            XCTFail("expected a timeout")
        } catch let error as MQTTError {
            XCTAssertEqual(error.kind, .connection, error.description)
            XCTAssertTrue(error.message.contains("no CONNACK from the broker within 0.8 seconds"), error.description)
        }
        XCTAssertLessThan(ContinuousClock.now - started, .seconds(5))
    }

    // MARK: cancellation

    /// A broker that stops answering (its process paused; the kernel still takes TCP): a QoS 1
    /// publish and a connect wrapped in `withTimeout` give up on time, because every wait of the
    /// client ends when its task is cancelled; a client whose connect was cancelled connects
    /// again once the broker answers.
    @MainActor func testWithTimeoutEndsWaitsForABrokerThatStoppedAnswering() async throws {
        let broker = try PrivateMosquitto(persistence: false)
        let device = "dev-hung"
        try broker.addUser(device, password: "device-pw")
        try broker.start()
        defer {
            broker.process.resume()
            broker.stop()
        }
        let batchTopic = topic(device, "batch")
        let pub = try client(user: device, password: "device-pw", port: broker.port)
        try await pub.connect()
        broker.process.pause()
        var started = ContinuousClock.now
        do {
            try await withTimeout(.milliseconds(500)) {
                try await pub.publish(batchTopic, payload: Array("unanswered".utf8), qos: .atLeastOnce)
            }
            XCTFail("a paused broker sent a PUBACK")
        } catch is TimeoutError {}
        XCTAssertLessThan(ContinuousClock.now - started, .seconds(2), "the publish gave up at its timeout")

        let late = try client(user: device, password: "device-pw", port: broker.port)  // connect timeout 10 s
        started = ContinuousClock.now
        do {
            try await withTimeout(.milliseconds(500)) { try await late.connect() }
            XCTFail("a paused broker sent a CONNACK")
        } catch is TimeoutError {}
        XCTAssertLessThan(ContinuousClock.now - started, .seconds(2), "the connect gave up at its timeout, not the client's connect timeout")

        broker.process.resume()
        try await late.connect()
        try await late.publish(batchTopic, payload: Array("answered".utf8), qos: .atLeastOnce)
        await late.disconnect()
        await pub.disconnect()
    }

    // MARK: backoff (sans-IO)

    func testBackoffGrowsExponentiallyIsCappedAndJittered() {
        let backoff = ReconnectBackoff(policy: MQTTReconnectPolicy(minDelay: .milliseconds(500), maxDelay: .seconds(30), jitter: 0.5))
        XCTAssertEqual(backoff.delay(attempt: 1, randomUnit: 0), .milliseconds(500))
        XCTAssertEqual(backoff.delay(attempt: 2, randomUnit: 0), .seconds(1))
        XCTAssertEqual(backoff.delay(attempt: 4, randomUnit: 0), .seconds(4))
        XCTAssertEqual(backoff.delay(attempt: 4, randomUnit: 0.5), .seconds(3))
        XCTAssertEqual(backoff.delay(attempt: 7, randomUnit: 0), .seconds(30), "capped at max")
        XCTAssertEqual(backoff.delay(attempt: 1_000, randomUnit: 0), .seconds(30), "no overflow for long outages")
        for attempt in 1...40 {
            let base = backoff.delay(attempt: attempt, randomUnit: 0)
            for r in stride(from: 0.0, to: 1.0, by: 0.1) {
                let d = backoff.delay(attempt: attempt, randomUnit: r)
                XCTAssertLessThanOrEqual(d, base)
                XCTAssertGreaterThan(d, base / 2 - .nanoseconds(2))
            }
        }
        let noJitter = ReconnectBackoff(policy: MQTTReconnectPolicy(minDelay: .seconds(1), maxDelay: .seconds(8), jitter: 0))
        XCTAssertEqual((1...5).map { noJitter.delay(attempt: $0, randomUnit: 0.9) },
                       [.seconds(1), .seconds(2), .seconds(4), .seconds(8), .seconds(8)])
    }

    func testReasonCodesReadAsTheSpecificationNamesThem() {
        XCTAssertEqual(MQTTReasonCode.notAuthorized.description, "Not authorized (0x87)")
        XCTAssertEqual(MQTTReasonCode.success.description, "Success (0x00)")
        XCTAssertTrue(MQTTReasonCode.badUserNameOrPassword.isFailure)
        XCTAssertFalse(MQTTReasonCode.noMatchingSubscribers.isFailure)
    }
}
