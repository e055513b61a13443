// ShardedIngest: `fieldlog-backend ingest` over several shards (docs/sharding.md, "How ingest
// routes"), when FIELDLOG_SHARDS is set.
//
// Theory of operation: one IngestWriter (Sync's IngestStateMachine and its shell) per shard,
// each with its own connection (the shard's failover list, checked against `shard_self` on
// every connect), its own queue with the configured byte bounds, and its own transaction in
// flight, so shards commit concurrently and a shard that is down stops only its devices. The
// router in front of them caches the map with its version and gives each message to its
// device's shard (Sync's `ShardRouting`: the policy); a moving device's messages, or those of a
// new device in a frozen bucket, are dropped unacked with their own reason (the device resends),
// its seed values are held until the map places it. Every write transaction starts with
// `CALL fl_fence(version)`; on FL001 the writer reloads the map, its machine hands back the
// fenced transaction's messages, and the router routes them again.
// The map is reloaded about once a second (the newest of the shards' copies) and after every
// FL001. Reading from the broker pauses only when every shard's queue asks for it: a shard that
// is down fills its own queue, and then its devices' messages are dropped unacked (queue-full,
// the device resends), while the other shards' devices keep being stored and acked.
import BackendStore
import FieldlogCore
import Foundation
import Logging
import MQTT
import MariaDB
import ServiceLifecycle
import Synchronization
import Sync

/// Routes messages to the shards' writers with the cached map; holds what must wait for a new map.
package final class ShardRouter: Sendable {
    private enum Held: Sendable {
        case message(InboundMessage)
        case released(IngestWriter.Machine.Released)
    }
    private struct State: Sendable {
        var map: ShardMap
        var held: [Held] = []
        var heldBytes = 0
        var paused: Set<ShardNumber> = []
        var warnedUnserved: Set<ShardNumber> = []
        var writers: [ShardNumber: IngestWriter] = [:]
    }

    package let machine: IngestConfiguration
    /// The map's copies: one connection per shard, for version checks and loads (not the writers').
    private let control: [ShardNumber: DatabaseClient]
    private let metrics: BackendMetrics
    private let logger: Logger
    private let broker: ReadControl
    /// The map, the writers and what is held. Messages are handed to the writers (a non-blocking
    /// yield) and map changes announced to them inside this lock, so each writer sees its
    /// messages and the `.mapChanged` of the map that routed them in routing order.
    private let state: Mutex<State>
    /// Most bytes of seed values held for devices that cannot be written now.
    private let maxHeldBytes: Int

    package init(map: ShardMap, control: [ShardNumber: DatabaseClient], machine: IngestConfiguration, metrics: BackendMetrics,
                 logger: Logger, broker: ReadControl) {
        self.machine = machine
        self.control = control
        self.metrics = metrics
        self.logger = logger
        self.broker = broker
        self.maxHeldBytes = machine.maxQueuedBytes
        self.state = Mutex(State(map: map))
        metrics.shardMapVersion(map.version)
    }

    package var map: ShardMap { state.withLock { $0.map } }
    package var version: ShardMapVersion { state.withLock { $0.map.version } }

    /// Sets the writers, once, before the first message.
    package func serve(_ writers: [ShardNumber: IngestWriter]) { state.withLock { $0.writers = writers } }

    /// What writer `k` gets as its `ShardBinding` (created before `serve`, with the map in use then).
    package func binding(for k: ShardNumber) -> ShardBinding {
        ShardBinding(shard: k, initialVersion: version, version: { [self] in version }, reload: { [self] in await reload() },
                     reroute: { [self] in reroute($0) })
    }

    /// Writer `k`'s backpressure: the broker pauses only while every shard's queue asks for it.
    package func readControl(for k: ShardNumber) -> ReadControl {
        ReadControl(pause: { [self] in
            let all = state.withLock { s in s.paused.insert(k); return s.paused.count >= s.writers.count }
            if all { broker.pause() }
        }, resume: { [self] in
            let wasAll = state.withLock { s in
                let was = s.paused.count >= s.writers.count
                s.paused.remove(k)
                return was
            }
            if wasAll { broker.resume() }
        })
    }

    /// A message from the broker (any thread; never blocks).
    package func offer(topic: String, payload: [UInt8], contentType: String?) {
        let device = IngestItem.device(ofTopic: topic, configuration: machine)
        let seed = ShardRouting.isSeedTopic(topic, configuration: machine)
        let decision = state.withLock { s -> ShardRouting.Decision in
            let d = ShardRouting.decide(device: device, isSeed: seed, map: s.map)
            guard case .shard(let k) = d else { return d }
            guard let w = s.writers[k] else { return .drop(.shardUnavailable) }
            w.offer(topic: topic, payload: payload, contentType: contentType)
            return d
        }
        switch decision {
        case .shard:
            break
        case .drop(let reason):
            drop(topic: topic, device: device, bytes: payload.count, reason)
        case .hold(let reason):
            hold(.message(InboundMessage(topic: topic, payload: payload, contentType: contentType)), bytes: payload.count + topic.utf8.count,
                 topic: topic, device: device, reason: reason)
        }
    }

    /// The messages of a fenced transaction, routed again with the (reloaded) map, in order.
    package func reroute(_ released: [IngestWriter.Machine.Released]) {
        guard !released.isEmpty else { return }
        let notTaken = state.withLock { s -> [(IngestWriter.Machine.Released, ShardRouting.Decision)] in
            var perShard: [ShardNumber: [IngestWriter.Machine.Released]] = [:]
            var order: [ShardNumber] = []
            var notTaken: [(IngestWriter.Machine.Released, ShardRouting.Decision)] = []
            for r in released {
                let d = ShardRouting.decide(device: r.device, isSeed: r.isSeed, map: s.map)
                if case .shard(let k) = d, s.writers[k] != nil {
                    if perShard[k] == nil { order.append(k) }
                    perShard[k, default: []].append(r)
                } else if case .shard = d {
                    notTaken.append((r, .drop(.shardUnavailable)))
                } else {
                    notTaken.append((r, d))
                }
            }
            for k in order { s.writers[k]!.requeue(perShard[k]!) }
            return notTaken
        }
        for (r, d) in notTaken {
            switch d {
            case .drop(let reason): drop(topic: r.topic, device: r.device, bytes: r.payloadBytes, reason)
            case .hold(let reason): hold(.released(r), bytes: r.payloadBytes + r.topic.utf8.count, topic: r.topic, device: r.device, reason: reason)
            case .shard: break
            }
        }
    }

    /// Loads the newest copy of the map if it is newer than the cached one; routes what was held.
    package func reload() async {
        let versions = await withTaskGroup(of: (ShardNumber, ShardMapVersion?).self) { group in
            for (k, c) in control {
                group.addTask {
                    do { return (k, try await c.store().shardMapVersion()) } catch {
                        await c.failed()
                        return (k, nil)
                    }
                }
            }
            var all: [(ShardNumber, ShardMapVersion)] = []
            for await (k, v) in group { if let v { all.append((k, v)) } }
            return all
        }
        guard let newest = versions.max(by: { $0.1 < $1.1 }), newest.1 > version, let client = control[newest.0] else { return }
        do {
            install(try await client.store().loadShardMap())
        } catch {
            await client.failed()
            logger.warning("could not load the shard map \(newest.1) from \(newest.0): \(error)")
        }
    }

    /// Replaces the cached map by `map` if it is newer, and routes the held messages again.
    package func install(_ map: ShardMap) {
        let held: [Held]? = state.withLock { s in
            guard map.version > s.map.version else { return nil }
            s.map = map
            // Each writer hands back what it holds that was routed with an older map.
            for w in s.writers.values { w.mapChanged(map.version) }
            let h = s.held
            s.held = []
            s.heldBytes = 0
            return h
        }
        guard let held else { return }
        metrics.shardMapVersion(map.version)
        logger.info("shard map \(map.version) loaded", metadata: ["overrides": "\(map.overrides.count)",
                                                                  "moving": "\(map.overrides.values.filter { $0.movingTo != nil }.count)",
                                                                  "frozen buckets": "\(map.buckets.filter(\.frozen).count)"])
        let served = state.withLock { Set($0.writers.keys) }
        for k in map.activeShards where !served.contains(k) {
            if state.withLock({ $0.warnedUnserved.insert(k).inserted }) {
                logger.error("the shard map names \(k), which this process does not write (added since it started): restart ingest; its devices' messages are dropped unacked meanwhile")
            }
        }
        for h in held {
            switch h {
            case .message(let m): offer(topic: m.topic, payload: m.payload, contentType: m.contentType)
            case .released(let r): reroute([r])
            }
        }
    }

    private func drop(topic: String, device: DeviceID?, bytes: Int, _ reason: DropReason) {
        metrics.dropped(reason)
        logger.debug("message of \(bytes) bytes on \(topic.prefix(200)) dropped unacked (\(reason.rawValue)); \(device.map { "\($0) resends its batches" } ?? "")")
    }

    private func hold(_ h: Held, bytes: Int, topic: String, device: DeviceID?, reason: DropReason) {
        let taken = state.withLock { s in
            guard s.heldBytes + bytes <= maxHeldBytes else { return false }
            s.held.append(h)
            s.heldBytes += bytes
            return true
        }
        if !taken {
            metrics.dropped(.holdFull)
            logger.critical("seed values of \(device.map(\.rawValue) ?? "no device") on \(topic.prefix(200)) dropped: \(maxHeldBytes) bytes already held while devices cannot be written (\(reason.rawValue)); seed devices do not resend")
        }
    }
}

extension IngestService {
    /// `run()` with shards: see the theory of operation at the top of the file.
    func runSharded(_ shards: ShardSettings) async throws {
        let ingest = configuration.ingest
        let machine = ingest.machine(topics: configuration.topics.templates)
        let templates = configuration.topics.templates

        // The map: the newest copy among the shards that answer (waited for; ingest never exits for an outage).
        var control: [ShardNumber: DatabaseClient] = [:]
        for k in shards.shards.keys.sorted() {
            control[k] = DatabaseClient(settings: try shards.database(k, base: configuration.database, map: nil), expectedShard: k, logger: logger)
        }
        let map = try await Self.retrying(logger, "no shard answers with a shard map yet (\(shards.shards.keys.sorted().map(\.description).joined(separator: ", ")))") {
            var best: ShardMap?
            var lastError: (any Error)?
            for (_, c) in control.sorted(by: { $0.key < $1.key }) {
                do {
                    let m = try await c.store().loadShardMap()
                    if best == nil || m.version > best!.version { best = m }
                } catch {
                    await c.failed()
                    lastError = error
                }
            }
            guard let best else { throw lastError ?? ShardMapError(message: "no shard answered") }
            return best
        }
        for k in map.activeShards where control[k] == nil {
            control[k] = DatabaseClient(settings: try shards.database(k, base: configuration.database, map: map), expectedShard: k, logger: logger)
        }
        // The schema of every shard that answers now (a wrong schema is an exit; a shard that is
        // down is checked by nothing until it answers: `migrate` runs before ingest starts).
        for (k, c) in control.sorted(by: { $0.key < $1.key }) {
            guard let store = try? await c.store() else {
                logger.warning("\(k) is not answering at start; its devices wait until it does")
                continue
            }
            try await Migrator(connection: store.connection).requireCurrent()
        }

        let client = try makeClient(id: "\(configuration.broker.clientIDPrefix)-\(String(UInt64.random(in: 0...UInt64.max), radix: 36))", persistent: false)
        let seedClient = machine.acceptLegacyValues ? try makeClient(id: ingest.clientID, persistent: true) : nil
        let clients = [client] + (seedClient.map { [$0] } ?? [])
        let router = ShardRouter(map: map, control: control, machine: machine, metrics: metrics, logger: logger,
                                 broker: ReadControl(pause: { for c in clients { c.pauseReading() } },
                                                     resume: { for c in clients { c.resumeReading() } }))
        let publish: AckPublisher = { topic, payload in
            try await client.publish(topic, payload: payload, qos: .atLeastOnce, retain: true,
                                     properties: MQTTMessageProperties(contentType: SyncCodec.contentType))
        }
        var writers: [ShardNumber: IngestWriter] = [:]
        var databases: [DatabaseClient] = []
        for k in control.keys.sorted() {
            var shardLogger = logger
            shardLogger[metadataKey: "shard"] = "\(k.rawValue)"
            let database = DatabaseClient(settings: try shards.database(k, base: configuration.database, map: map), expectedShard: k, logger: shardLogger)
            databases.append(database)
            writers[k] = IngestWriter(database: database, configuration: machine, metrics: metrics, logger: shardLogger,
                                      readControl: router.readControl(for: k), shard: router.binding(for: k), publishAck: publish)
        }
        router.serve(writers)
        let shardWriters = writers

        _ = try await start(client, filters: [templates.batch.filter, templates.status.filter, templates.response.filter], shared: true)
        var seedSession = "none"
        if let seedClient {
            seedSession = try await start(seedClient, filters: [templates.legacyValues.filter], shared: false).sessionPresent ? "resumed" : "new"
        }
        logger.info("sharded ingest running", metadata: ["seed-values client": "\(ingest.clientID)", "seed-values session": "\(seedSession)",
                                                         "shards": "\(shardWriters.keys.sorted().map { "\($0.rawValue)" }.joined(separator: ","))",
                                                         "map": "\(map.version)"])

        // Shutdown as the unsharded ingest does it (IngestService.serve); besides the writers,
        // the map's reload about once a second: a move marks a device in the shards' copies, and
        // its batches are only taken again after a reload shows the move done.
        await IngestService.serve(clients: clients, seedClient: seedClient, seedClientID: ingest.clientID, logger: logger,
                                  offer: { m in router.offer(topic: m.topic, payload: m.payload, contentType: m.properties.contentType) },
                                  finish: { for w in shardWriters.values { w.finish() } },
                                  run: {
            await withDiscardingTaskGroup { group in
                group.addTask {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: .seconds(1))
                        if Task.isCancelled { break }
                        await router.reload()
                    }
                }
                await withDiscardingTaskGroup { writersGroup in
                    for w in shardWriters.values { writersGroup.addTask { await w.run() } }
                }
                group.cancelAll()
            }
        })
        for d in databases { await d.close() }
        for c in control.values { await c.close() }
        logger.info("ingest stopped")
    }
}
