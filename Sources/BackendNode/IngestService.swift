// IngestService: the IO shell of `fieldlog-backend ingest`.
//
// Theory of operation: one MQTT v5 client subscribes, with the shared-subscription group
// (`$share/fieldlog-ingest/...`), to the device batch, status and response topics and to the
// seed's values topic, so N ingest processes split the traffic. Its message stream feeds the
// bounded InboundQueue; one IngestWriter task stores groups and publishes acks (QoS 1,
// retained) after each commit. The broker connection is kept up by the client (reconnect with
// backoff, re-subscribe when the session is gone); the database connection by the writer's
// retry policy. Nothing here acks: acks come only from the writer after a commit.
// Shutdown (SIGTERM/SIGINT through the ServiceGroup): stop taking messages, let the writer
// finish its current group, disconnect.
import FieldlogCore
import Foundation
import Logging
import MQTT
import ServiceLifecycle
import Sync

struct IngestService: Service, CustomStringConvertible {
    let configuration: BackendConfiguration
    let metrics: BackendMetrics
    let logger: Logger

    /// What ServiceLifecycle logs (never the configuration: it holds passwords).
    var description: String { "IngestService" }

    /// Runs `attempt` until it succeeds, logging `what` and waiting 200 ms, doubling up to 5 s,
    /// after each failure that `retryable` accepts (any, unless given); other errors end it.
    @discardableResult
    private static func retrying<T>(_ logger: Logger, _ what: @autoclosure () -> String,
                                    if retryable: (any Error) -> Bool = { _ in true },
                                    _ attempt: () async throws -> T) async throws -> T {
        var backoff = Duration.milliseconds(200)
        while true {
            do {
                return try await attempt()
            } catch where retryable(error) {
                logger.warning("\(what()), retrying in \(backoff): \(error)")
                try await Task.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(5))
            }
        }
    }

    func run() async throws {
        let broker = configuration.broker
        let clientID = "\(broker.clientIDPrefix)-\(String(UInt64.random(in: 0...UInt64.max), radix: 36))"
        let client = try MQTTClient(
            configuration: MQTTConfiguration(host: broker.host, port: broker.port, clientID: clientID, cleanStart: true,
                                             username: broker.user, password: broker.password,
                                             keepAlive: .seconds(broker.keepAliveSeconds),
                                             reconnect: MQTTReconnectPolicy(minDelay: .milliseconds(200), maxDelay: .seconds(5))),
            logger: logger)
        let queue = InboundQueue(capacity: configuration.ingest.maxQueuedMessages)
        let database = DatabaseClient(settings: configuration.database, logger: logger)
        let writer = IngestWriter(database: database, topics: configuration.topics.templates, settings: configuration.ingest,
                                  metrics: metrics, logger: logger) { topic, payload in
            try await client.publish(topic, payload: payload, qos: .atLeastOnce, retain: true,
                                     properties: MQTTMessageProperties(contentType: SyncCodec.contentType))
        }

        // Check the schema before taking any message: a wrong schema is a clear error and an
        // exit; an unreachable database is waited for (ingest never exits because of an outage).
        let store = try await Self.retrying(logger, "no MariaDB answers yet (\(configuration.database))") {
            do { return try await database.store() } catch { await database.failed(); throw error }
        }
        try await Migrator(connection: store.connection).requireCurrent()
        try await Self.retrying(logger, "broker \(broker.host):\(broker.port) not reachable") { try await client.connect() }
        // The connection may drop again before the SUBACKs come back (a flapping network, a
        // broker restarting): the client reconnects by itself, so a subscription that failed
        // for want of a connection is simply asked for again. A refusal (the ACL) is a
        // configuration error and ends the process with the broker's reason.
        for filter in writer.subscriptionFilters {
            let shared = configuration.topics.shared(filter)
            try await Self.retrying(logger, "subscribe to \(shared) failed for want of a connection",
                                    if: { ($0 as? MQTTError).map { $0.kind == .notConnected || $0.kind == .connection } ?? false }) {
                try await client.subscribe(shared, qos: .atLeastOnce)
            }
            logger.info("subscribed", metadata: ["filter": "\(shared)"])
        }
        let address = await database.address
        logger.info("ingest running", metadata: ["client": "\(clientID)", "database": "\(address)"])

        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    for await m in client.messages {
                        if !queue.offer(InboundMessage(topic: m.topic, payload: m.payload)) {
                            metrics.droppedUnacked.increment()
                        }
                    }
                    queue.finish()
                }
                group.addTask {
                    for await event in client.events {
                        switch event {
                        case .connected: logger.info("broker connected")
                        case .disconnected(let e): logger.warning("broker connection lost: \(e.map { "\($0)" } ?? "closed")")
                        case .connectFailed(let e): logger.warning("broker connect failed: \(e)")
                        case .reconnecting(let attempt, let delay): logger.debug("broker reconnect \(attempt) in \(delay)")
                        }
                    }
                }
                await writer.run(queue: queue)
                group.cancelAll()
                await client.disconnect()
            }
        } onGracefulShutdown: {
            queue.finish()
        }
        await database.close()
        logger.info("ingest stopped")
    }
}

/// The HTTP server as a Service of the ingest ServiceGroup.
struct MetricsService: Service, CustomStringConvertible {
    let metrics: BackendMetrics
    let host: String
    let port: Int
    let logger: Logger

    var description: String { "MetricsService(\(host):\(port))" }

    func run() async throws {
        let app = MetricsEndpoint.buildApplication(metrics: metrics, host: host, port: port, logger: logger)
        try await app.runService()
    }
}
