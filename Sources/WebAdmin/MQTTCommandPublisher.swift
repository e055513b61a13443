// MQTTCommandPublisher: the web process's own MQTT connection, used only to publish commands.
//
// Theory of operation: a Service. `run()` connects (retrying with backoff while the broker is
// away; the client reconnects by itself afterwards) and keeps the connection until graceful
// shutdown, which cancels the connect or the wait; then it disconnects.
// `publish` sends QoS 1 and waits for the broker's PUBACK, at most `ackTimeout` (`withTimeout`:
// the client's wait ends when cancelled): a command the broker has not taken by then is
// reported as not sent instead of leaving the operator's request hanging; a QoS 1 publish made
// while disconnected stays queued in libmosquitto and may still go out after a reconnect.
// Responses are not read here: the ingest processes subscribe to the response topics and
// record every answer on its command row (IngestWriter).
import Audit
import BackendStore
import Foundation
import Logging
import MQTT
import ServiceLifecycle
import Sync
import Threading

package final class MQTTCommandPublisher: CommandPublisher, Service, Sendable {
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
        let broker = self.broker, logger = self.logger
        // Until graceful shutdown: connect, then watch the connection.
        await cancelWhenGracefulShutdown {
            var backoff = Duration.milliseconds(200)
            while !Task.isCancelled {
                do {
                    try await client.connect()
                    logger.info("web: connected to the broker for commands", metadata: ["broker": "\(broker.host):\(broker.port)"])
                    break
                } catch is CancellationError {
                    return
                } catch {
                    logger.warning("web: broker \(broker.host):\(broker.port) not reachable, retrying in \(backoff): \(error)")
                    do { try await Task.sleep(for: backoff) } catch { return }
                    backoff = min(backoff * 2, .seconds(5))
                }
            }
            for await event in client.events {
                if case .disconnected(let e) = event { logger.warning("web: broker connection lost: \(e.map { "\($0)" } ?? "closed")") }
            }
        }
        await client.disconnect()
    }

    package struct Timeout: Error, CustomStringConvertible {
        package var seconds: Int64
        package var description: String { "the broker did not acknowledge the command within \(seconds) s (is it reachable?)" }
    }

    package func publish(topic: String, payload: [UInt8]) async throws {
        guard let client else { throw MQTTError(operation: "publish", kind: .usage, message: setupError ?? "no client") }
        do {
            _ = try await withTimeout(ackTimeout) {
                try await client.publish(topic, payload: payload, qos: .atLeastOnce, retain: false,
                                         properties: MQTTMessageProperties(contentType: SyncCodec.contentType))
            }
        } catch is TimeoutError {
            throw Timeout(seconds: ackTimeout.components.seconds)
        }
    }
}
