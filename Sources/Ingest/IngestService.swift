// IngestService: the MQTT side of `fieldlog-backend ingest`.
//
// Theory of operation: an MQTT v5 client subscribes, with the shared-subscription group
// (`$share/fieldlog-ingest/...`), to the device batch, status and response topics, so N ingest
// processes split the traffic. Its session is clean: a device resends every batch until it is
// acked, so a message lost with a process is sent again, and a process that dies for good
// must not keep a share of the traffic in a session nobody reads.
// Seed devices never resend. Their values topic therefore has a second client with a
// persistent session (clean start off, a stable client id per process, a session expiry):
// while this process is down or restarting, and while the broker restarts (with persistence),
// the broker keeps this process's seed messages and delivers them on reconnect, so seed
// devices lose nothing a persistent subscriber would receive. That subscription is NOT shared:
// mosquitto 2.0 does not restore shared subscriptions from its persistence file (after a broker
// restart the session comes back without it, and every seed message goes nowhere until the
// process subscribes again), and a shared member that is gone for good would keep its share of
// the messages in a session nobody reads. So every ingest process takes every seed message,
// and the store keeps one (INSERT IGNORE by device and stream id).
// Every message goes to the IngestWriter (Sync's IngestStateMachine and its thin shell), which
// asks this side to pause and resume reading (backpressure) and publishes acks (QoS 1,
// retained) only after commits.
// Shutdown (SIGTERM/SIGINT through the ServiceGroup): stop reading, store and ack what is
// queued (up to the group's deadline), disconnect (the seed session stays for the next start).
import BackendStore
import FieldlogCore
import Foundation
import Logging
import MQTT
import ServiceLifecycle
import Sync

package struct IngestService: Service, CustomStringConvertible {
    package let configuration: BackendConfiguration
    package let metrics: BackendMetrics
    package let logger: Logger
    /// How transactions reach the database (`.committing`; the lab's broken ingest injects another).
    package let write: TransactionWrite

    package init(configuration: BackendConfiguration, metrics: BackendMetrics, logger: Logger, write: TransactionWrite = .committing) {
        self.configuration = configuration
        self.metrics = metrics
        self.logger = logger
        self.write = write
    }

    /// What ServiceLifecycle logs (never the configuration: it holds passwords).
    package var description: String { "IngestService" }

    /// Runs `attempt` until it succeeds, logging `what` and waiting 200 ms, doubling up to 5 s,
    /// after each failure that `retryable` accepts (any, unless given); other errors end it.
    @discardableResult
    static func retrying<T>(_ logger: Logger, _ what: @autoclosure () -> String,
                                    if retryable: (any Error) -> Bool = { _ in true },
                                    _ attempt: () async throws -> T) async throws -> T {
        try await Retrying().run(if: retryable, failed: { error, _, wait in logger.warning("\(what()), retrying in \(wait): \(error)") },
                                 attempt)
    }

    func makeClient(id: String, persistent: Bool) throws -> MQTTClient {
        let broker = configuration.broker
        return try MQTTClient(
            configuration: MQTTConfiguration(host: broker.host, port: broker.port, clientID: id, cleanStart: !persistent,
                                             username: broker.user, password: broker.password,
                                             keepAlive: .seconds(broker.keepAliveSeconds),
                                             sessionExpiry: persistent ? configuration.ingest.sessionExpiry : nil,
                                             reconnect: MQTTReconnectPolicy(minDelay: .milliseconds(200), maxDelay: .seconds(5))),
            logger: logger)
    }

    /// Connects (waiting for the broker) and subscribes to `filters`, in the shared group when `shared`.
    func start(_ client: MQTTClient, filters: [String], shared: Bool) async throws -> MQTTConnAck {
        let broker = configuration.broker
        let ack = try await Self.retrying(logger, "broker \(broker.host):\(broker.port) not reachable") { try await client.connect() }
        // The connection may drop again before the SUBACKs come back (a flapping network, a
        // broker restarting): the client reconnects by itself, so a subscription that failed
        // for want of a connection is simply asked for again. A refusal (the ACL) is a
        // configuration error and ends the process with the broker's reason.
        for filter in filters {
            let filter = shared ? configuration.topics.shared(filter) : filter
            try await Self.retrying(logger, "subscribe to \(filter) failed for want of a connection",
                                    if: { ($0 as? MQTTError).map { $0.kind == .notConnected || $0.kind == .connection } ?? false }) {
                try await client.subscribe(filter, qos: .atLeastOnce)
            }
            logger.info("subscribed", metadata: ["filter": "\(filter)"])
        }
        return ack
    }

    package func run() async throws {
        // FIELDLOG_SHARDS: one writer per shard behind a router (ShardedIngest.swift).
        if let shards = configuration.shards { return try await runSharded(shards) }
        let ingest = configuration.ingest
        let machine = ingest.machine(topics: configuration.topics.templates)
        let templates = configuration.topics.templates
        let client = try makeClient(id: "\(configuration.broker.clientIDPrefix)-\(String(UInt64.random(in: 0...UInt64.max), radix: 36))", persistent: false)
        let seedClient = machine.acceptLegacyValues ? try makeClient(id: ingest.clientID, persistent: true) : nil
        let clients = [client] + (seedClient.map { [$0] } ?? [])
        let database = DatabaseClient(settings: configuration.database, logger: logger)
        let writer = IngestWriter(database: database, configuration: machine, metrics: metrics, logger: logger,
                                  readControl: ReadControl(pause: { for c in clients { c.pauseReading() } },
                                                           resume: { for c in clients { c.resumeReading() } }),
                                  write: write) { topic, payload in
            try await client.publish(topic, payload: payload, qos: .atLeastOnce, retain: true,
                                     properties: MQTTMessageProperties(contentType: SyncCodec.contentType))
        }

        // Check the schema before taking any message: a wrong schema is a clear error and an
        // exit; an unreachable database is waited for (ingest never exits because of an outage).
        let store = try await Self.retrying(logger, "no MariaDB answers yet (\(configuration.database))") {
            do { return try await database.store() } catch { await database.failed(); throw error }
        }
        try await Migrator(connection: store.connection).requireCurrent()
        _ = try await start(client, filters: [templates.batch.filter, templates.status.filter, templates.response.filter], shared: true)
        var seedSession = "none"
        if let seedClient {
            seedSession = try await start(seedClient, filters: [templates.legacyValues.filter], shared: false).sessionPresent ? "resumed" : "new"
        }
        let address = await database.address
        logger.info("ingest running", metadata: ["seed-values client": "\(ingest.clientID)", "seed-values session": "\(seedSession)",
                                                 "database": "\(address)"])

        await Self.serve(clients: clients, seedClient: seedClient, seedClientID: ingest.clientID, logger: logger,
                         offer: { m in writer.offer(topic: m.topic, payload: m.payload, contentType: m.properties.contentType) },
                         finish: { writer.finish() },
                         run: { await writer.run() })
        await database.close()
        logger.info("ingest stopped")
    }

    /// The shutdown order both ingests share: graceful shutdown reads no more and ends the
    /// connections, then everything that was read is stored and acked (up to the deadline).
    /// libmosquitto acknowledges a QoS 1 message to the broker as it reads it, so the writers
    /// finish only after every client's message stream ended: finishing them earlier lost a
    /// message read just before (the seed's readings are not resent). `run` runs the writers.
    static func serve(clients: [MQTTClient], seedClient: MQTTClient?, seedClientID: String, logger: Logger,
                      offer: @escaping @Sendable (MQTTMessage) -> Void, finish: @escaping @Sendable () -> Void,
                      run: @escaping @Sendable () async -> Void) async {
        await withDiscardingTaskGroup { group in
            group.addTask {
                await withDiscardingTaskGroup { feeders in
                    for c in clients {
                        feeders.addTask { for await m in c.messages { offer(m) } }
                    }
                }
                finish()
            }
            for c in clients {
                group.addTask { await Self.logEvents(of: c, clientID: c === seedClient ? seedClientID : nil, logger: logger) }
            }
            group.addTask {
                // Also ends when the service is cancelled (the deadline passed) or the writers ended.
                try? await gracefulShutdown()
                for c in clients { c.pauseReading() }
                for c in clients { await c.disconnect() }
            }
            await run()
            for c in clients { await c.disconnect() }
            group.cancelAll()
        }
    }

    static func logEvents(of client: MQTTClient, clientID: String?, logger: Logger) async {
        for await event in client.events {
            switch event {
            case .connected(let sessionPresent):
                logger.info("broker connected", metadata: ["session": "\(clientID == nil ? "clean" : sessionPresent ? "resumed" : "new")"])
            case .disconnected(nil):
                logger.info("broker disconnected")
            case .disconnected(let e):
                if let clientID, let e, "\(e)".contains("Session taken over") {
                    logger.critical("another process connected with this ingest's client id \(clientID); give each ingest process its own FIELDLOG_INGEST_INSTANCE (or FIELDLOG_INGEST_CLIENT_ID)")
                } else {
                    logger.warning("broker connection lost: \(e.map { "\($0)" } ?? "closed")")
                }
            case .connectFailed(let e): logger.warning("broker connect failed: \(e)")
            case .reconnecting(let attempt, let delay): logger.debug("broker reconnect \(attempt) in \(delay)")
            }
        }
    }
}

/// The HTTP server as a Service of the ingest ServiceGroup.
package struct MetricsService: Service, CustomStringConvertible {
    package let metrics: BackendMetrics
    package let host: String
    package let port: Int
    package let logger: Logger

    package init(metrics: BackendMetrics, host: String, port: Int, logger: Logger) {
        self.metrics = metrics
        self.host = host
        self.port = port
        self.logger = logger
    }

    package var description: String { "MetricsService(\(host):\(port))" }

    package func run() async throws {
        let app = MetricsEndpoint.buildApplication(metrics: metrics, host: host, port: port, logger: logger)
        // `run()`, not `runService()`: the latter starts a ServiceGroup of its own that catches
        // SIGTERM itself, so the server could stop before the ingest group asked it to, and the
        // group then reported a service that "finished unexpectedly" (exit status 1).
        try await app.run()
    }
}
