// MQTTCommandPublisher: the web process's own MQTT connection, used only to publish commands.
//
// Theory of operation: a Service. `run()` connects (retrying with backoff while the broker is
// away; the client reconnects by itself afterwards) and keeps the connection until shutdown.
// `publish` sends QoS 1 and waits for the broker's PUBACK, at most `ackTimeout`: a command the
// broker has not taken by then is reported as not sent instead of leaving the operator's
// request hanging. Responses are not read here: the ingest processes subscribe to the
// response topics and record every answer on its command row (IngestWriter).
import Audit
import BackendStore
import Foundation
import Logging
import MQTT
import ServiceLifecycle
import Sync

package final class MQTTCommandPublisher: CommandPublisher, Service, @unchecked Sendable {
    // @unchecked: `client` is set once in init and never changed; MQTTClient is thread-safe.
    private let client: MQTTClient?
    private let setupError: String?
    private let broker: BrokerSettings
    private let logger: Logger
    package let ackTimeout: Duration

    package init(broker: BrokerSettings, logger: Logger, ackTimeout: Duration = .seconds(5)) {
        self.broker = broker
        self.logger = logger
        self.ackTimeout = ackTimeout
        let clientID = "fieldlog-web-\(String(UInt64.random(in: 0...UInt64.max), radix: 36))"
        do {
            client = try MQTTClient(
                configuration: MQTTConfiguration(host: broker.host, port: broker.port, clientID: clientID, cleanStart: true,
                                                 username: broker.user, password: broker.password,
                                                 keepAlive: .seconds(broker.keepAliveSeconds),
                                                 reconnect: MQTTReconnectPolicy(minDelay: .milliseconds(200), maxDelay: .seconds(5))),
                logger: logger)
            setupError = nil
        } catch {
            client = nil
            setupError = "\(error)"
        }
    }

    package func run() async throws {
        guard let client else { throw MQTTError(operation: "configure web MQTT client", kind: .usage, message: setupError ?? "unknown") }
        var backoff = Duration.milliseconds(200)
        while !Task.isCancelled {
            do {
                try await client.connect()
                logger.info("web: connected to the broker for commands", metadata: ["broker": "\(broker.host):\(broker.port)"])
                break
            } catch {
                logger.warning("web: broker \(broker.host):\(broker.port) not reachable, retrying in \(backoff): \(error)")
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(5))
            }
        }
        // Keep the connection until shutdown.
        await withGracefulShutdownHandler {
            for await event in client.events {
                if case .disconnected(let e) = event { logger.warning("web: broker connection lost: \(e.map { "\($0)" } ?? "closed")") }
            }
        } onGracefulShutdown: {
            Task { await client.disconnect() }
        }
    }

    package struct Timeout: Error, CustomStringConvertible {
        package var seconds: Int64
        package var description: String { "the broker did not acknowledge the command within \(seconds) s (is it reachable?)" }
    }

    package func publish(topic: String, payload: [UInt8]) async throws {
        guard let client else { throw MQTTError(operation: "publish", kind: .usage, message: setupError ?? "no client") }
        let timeout = ackTimeout
        // Two unstructured tasks race: a QoS 1 publish made while disconnected stays queued in
        // libmosquitto (and completes after a reconnect), so it must not hold the request.
        let once = Once()
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            Task {
                do {
                    try await client.publish(topic, payload: payload, qos: .atLeastOnce, retain: false,
                                             properties: MQTTMessageProperties(contentType: SyncCodec.contentType))
                    if once.claim() { c.resume() }
                } catch {
                    if once.claim() { c.resume(throwing: error) }
                }
            }
            Task {
                try? await Task.sleep(for: timeout)
                if once.claim() { c.resume(throwing: Timeout(seconds: timeout.components.seconds)) }
            }
        }
    }
}

/// True for the first caller of `claim()` only.
package final class Once: @unchecked Sendable {
    // @unchecked: `done` is only touched under `lock`.
    private let lock = NSLock()
    private var done = false
    package func claim() -> Bool { lock.withLock { defer { done = true }; return !done } }
}
