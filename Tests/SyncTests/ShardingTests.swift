import FieldlogCore
@testable import Sync
import TestSupport
import XCTest

/// The shard map, the routing policy and the ingest machine's side of the fence (docs/sharding.md), without IO.
final class ShardingTests: XCTestCase {
    typealias Machine = IngestStateMachine<VirtualInstant>
    let s1 = try! ShardNumber(1), s2 = try! ShardNumber(2), s3 = try! ShardNumber(3)
    let t0 = VirtualInstant.zero
    func d(_ s: String) -> DeviceID { try! DeviceID(s) }
    func servers(_ shards: [ShardNumber], retired: Set<ShardNumber> = []) -> [ShardNumber: ShardMap.Server] {
        Dictionary(uniqueKeysWithValues: shards.map { ($0, ShardMap.Server(addresses: ["127.0.0.1:\(13399 + Int($0.rawValue))"], active: !retired.contains($0))) })
    }
    func twoShards(version: UInt64 = 1, overrides: [DeviceID: ShardMap.Override] = [:], frozen: Set<Int> = []) throws -> ShardMap {
        let base = try ShardMap.evenlySpread(version: ShardMapVersion(rawValue: version), shards: servers([s1, s2]))
        return try ShardMap(version: base.version, buckets: base.buckets.enumerated().map { i, b in ShardMap.Bucket(shard: b.shard, frozen: frozen.contains(i)) },
                            overrides: overrides, servers: base.servers)
    }

    func testBucketIsZlibCRC32Mod4096AsMariaDBComputesIt() {
        // zlib.crc32(b"dev-a") = 3968548450 (MariaDB's CRC32('dev-a') is the same function).
        XCTAssertEqual(ShardMap.bucket(of: d("dev-a")), 3968548450 % 4096)
        XCTAssertEqual(ShardMap.bucket(of: d("dev-000001")), 379870223 % 4096)
        XCTAssertEqual(ShardMap.bucket(of: d("sensor.42_x")), 4081672529 % 4096)
    }

    func testEvenlySpreadMapGivesBucketBToShardBMod2Plus1AsInit() throws {
        let map = try twoShards()
        XCTAssertEqual(map.route(d("dev-a")), .shard(3682 % 2 == 0 ? s1 : s2))
        XCTAssertEqual(map.route(d("dev-000001")), .shard(3087 % 2 == 0 ? s1 : s2))
        // 10,000 ids spread within 3 % of even over the two shards.
        var on1 = 0
        for i in 1...10_000 where map.route(d(String(format: "dev-%06d", i))) == .shard(s1) { on1 += 1 }
        XCTAssertEqual(Double(on1), 5_000, accuracy: 150)
    }

    func testOverrideWinsOverBucketAndMovingOrFrozenIsNotWritable() throws {
        let a = d("dev-a"), b = d("dev-000001"), c = d("sensor.42_x")
        let home = try twoShards().route(a)
        let other = home == .shard(s1) ? s2 : s1
        let map = try twoShards(overrides: [a: ShardMap.Override(shard: other), b: ShardMap.Override(shard: s1, movingTo: s2)],
                                frozen: [ShardMap.bucket(of: c)])
        XCTAssertEqual(map.route(a), .shard(other))
        XCTAssertEqual(map.route(b), .moving(from: s1, to: s2))
        XCTAssertEqual(map.route(c), .frozen(bucket: 337))
        XCTAssertEqual(ShardRouting.decide(device: a, isSeed: false, map: map), .shard(other))
        XCTAssertEqual(ShardRouting.decide(device: b, isSeed: false, map: map), .drop(.deviceMoving), "batches are dropped unacked: the device resends")
        XCTAssertEqual(ShardRouting.decide(device: c, isSeed: false, map: map), .drop(.bucketFrozen))
        XCTAssertEqual(ShardRouting.decide(device: b, isSeed: true, map: map), .hold(.deviceMoving), "seed values are never resent: held")
        XCTAssertEqual(ShardRouting.decide(device: c, isSeed: true, map: map), .hold(.bucketFrozen))
    }

    func testMessagesWithoutADeviceGoToTheLowestActiveShard() throws {
        let base = try ShardMap.evenlySpread(version: ShardMapVersion(rawValue: 3), shards: servers([s1, s2, s3]))
        XCTAssertEqual(ShardRouting.decide(device: nil, isSeed: false, map: base), .shard(s1))
        // Shard 1 retired (its buckets given away first): the lowest active one is 2.
        let retired = try ShardMap(version: base.version, buckets: base.buckets.map { ShardMap.Bucket(shard: $0.shard == s1 ? s2 : $0.shard) },
                                   overrides: [:], servers: servers([s1, s2, s3], retired: [s1]))
        XCTAssertEqual(ShardRouting.decide(device: nil, isSeed: false, map: retired), .shard(s2))
        // A device pinned to a retired shard is written nowhere.
        let pinned = try ShardMap(version: base.version, buckets: retired.buckets, overrides: [d("dev-a"): ShardMap.Override(shard: s1)],
                                  servers: retired.servers)
        XCTAssertEqual(ShardRouting.decide(device: d("dev-a"), isSeed: false, map: pinned), .drop(.shardUnavailable))
    }

    func testAnIncompleteCopyIsRefused() throws {
        XCTAssertThrowsError(try ShardMap(version: ShardMapVersion(rawValue: 1), buckets: [ShardMap.Bucket(shard: s1)], overrides: [:], servers: servers([s1])))
        let buckets = (0..<ShardMap.bucketCount).map { _ in ShardMap.Bucket(shard: s2) }
        XCTAssertThrowsError(try ShardMap(version: ShardMapVersion(rawValue: 1), buckets: buckets, overrides: [:], servers: servers([s1])),
                             "a bucket names a shard that is not in shard_servers")
        XCTAssertThrowsError(try ShardMap(version: ShardMapVersion(rawValue: 1), buckets: buckets.map { _ in ShardMap.Bucket(shard: s1) },
                                          overrides: [d("x"): ShardMap.Override(shard: s1, movingTo: s3)], servers: servers([s1])))
        XCTAssertThrowsError(try ShardNumber(0))
        XCTAssertThrowsError(try ShardNumber(1000))
    }

    // MARK: the machine's side of the fence

    func batch(_ device: DeviceID, _ a: UInt64, _ b: UInt64) -> (String, [UInt8]) {
        let records = (a...b).map {
            LogRecord(sequence: SequenceNumber($0), timestamp: DeviceTimestamp(unixMilliseconds: 1_700_000_000_000), values: try! SensorValues(["t": .number(1)]))
        }
        return (TopicTemplates.defaults.batch.topic(device: device),
                SyncCodec.encode(Batch(device: device, epoch: Epoch(1), range: SequenceRange(checked: SequenceNumber(a), SequenceNumber(b)), records: records)))
    }
    func writes(_ actions: [Machine.Action]) -> [IngestTransaction] {
        actions.compactMap { if case .write(let tx) = $0 { return tx } else { return nil } }
    }

    func testFencedTransactionReleasesItsMessagesInOrderAndAnotherMachineStoresThem() throws {
        let a = d("dev-a"), b = d("dev-b")
        var source = Machine()
        let (ta, pa) = batch(a, 1, 5)
        let first = try XCTUnwrap(writes(source.messageReceived(topic: ta, payload: pa, now: t0)).first)
        // While it is in flight, more arrive: they form the next group.
        let (tb, pb) = batch(b, 1, 3)
        XCTAssertEqual(writes(source.messageReceived(topic: tb, payload: pb, now: t0)), [])
        let (ta2, pa2) = batch(a, 6, 9)
        _ = source.messageReceived(topic: ta2, payload: pa2, now: t0)

        // The shard's map is newer: nothing committed, the messages come back; the next group goes on.
        let (released, actions) = source.transactionFenced(first.id, now: t0)
        XCTAssertEqual(released.map(\.device), [a])
        XCTAssertEqual(released.map(\.topic), [ta])
        XCTAssertFalse(released.contains(where: \.isSeed))
        XCTAssertFalse(actions.contains { if case .retrying = $0 { true } else { false } }, "FL001 is not a failure of the messages")
        XCTAssertFalse(actions.contains { if case .isolating = $0 { true } else { false } })
        let next = try XCTUnwrap(writes(actions).first)
        XCTAssertEqual(Set(next.batches.map(\.device)), [a, b])
        XCTAssertEqual(source.transactionFenced(first.id, now: t0).released, [], "a stale report is ignored")

        // Routed to another shard's machine: written there, acked after its commit only.
        var target = Machine()
        let moved = try XCTUnwrap(writes(target.requeue(released, now: t0)).first)
        XCTAssertEqual(moved.batches.map(\.range), [SequenceRange(checked: SequenceNumber(1), SequenceNumber(5))])
        XCTAssertEqual(moved.newDevices, [a])
        let done = target.transactionCommitted(moved.id, result: WriteResult(readingsInserted: 5, legacyInserted: 0), now: t0)
        let acks = done.flatMap { a -> [Ack] in if case .publishAcks(let l) = a { return l.map(\.ack) } else { return [] } }
        XCTAssertEqual(acks.map(\.through), [SequenceNumber(5)])
        XCTAssertTrue(target.isIdle)
    }

    func testFenceAlsoReleasesThePartsWaitingBehindTheTransaction() throws {
        var m = Machine()
        let a = d("dev-a")
        let (tb, pb) = batch(a, 1, 2)
        let first = try XCTUnwrap(writes(m.messageReceived(topic: tb, payload: pb, now: t0)).first)
        // A status and a batch queue up: the next group is two parts (data, then state).
        let status = TopicTemplates.defaults.status.topic(device: a)
        _ = m.messageReceived(topic: status, payload: SyncCodec.encode(Status(device: a, state: .online)), now: t0)
        let (tb2, pb2) = batch(a, 3, 4)
        _ = m.messageReceived(topic: tb2, payload: pb2, now: t0)
        let ok = m.transactionCommitted(first.id, result: WriteResult(readingsInserted: 2, legacyInserted: 0), now: t0)
        let second = try XCTUnwrap(writes(ok).first, "\(ok)")
        XCTAssertEqual(second.batches.count, 1)
        let (released, actions) = m.transactionFenced(second.id, now: t0)
        XCTAssertEqual(released.map(\.topic), [tb2, status], "the data part, then the state part waiting behind it")
        XCTAssertEqual(writes(actions), [])
        XCTAssertTrue(m.isIdle)
    }

    func testANewMapReleasesEverythingNotInFlightSoTheNextFenceNeverOutrunsTheRouting() throws {
        let a = d("dev-a"), b = d("dev-b")
        var m = Machine()
        let (ta, pa) = batch(a, 1, 5)
        let inFlight = try XCTUnwrap(writes(m.messageReceived(topic: ta, payload: pa, now: t0)).first)
        let (tb, pb) = batch(b, 1, 3)
        let (ta2, pa2) = batch(a, 6, 9)
        _ = m.messageReceived(topic: tb, payload: pb, now: t0)
        _ = m.messageReceived(topic: ta2, payload: pa2, now: t0)
        // The map changed: the queued messages were routed with the old one and come back in order.
        let (released, actions) = m.releaseAll(now: t0)
        XCTAssertEqual(released.map(\.topic), [tb, ta2])
        XCTAssertEqual(writes(actions), [], "the transaction in flight stays the only one")
        XCTAssertEqual(m.queuedMessages, 0)
        XCTAssertEqual(m.queuedBytes, 0)
        // The transaction in flight still completes (its older fence version decides on the shard).
        let done = m.transactionCommitted(inFlight.id, result: WriteResult(readingsInserted: 5, legacyInserted: 0), now: t0)
        XCTAssertTrue(done.contains { if case .publishAcks = $0 { true } else { false } })
        XCTAssertTrue(m.isIdle)

        // A part waiting to be retried (its shard was down) was routed with the old map too.
        let again = try XCTUnwrap(writes(m.messageReceived(topic: tb, payload: pb, now: t0)).first)
        let retry = m.transactionFailed(again.id, failure: .connection("down"), now: t0)
        XCTAssertTrue(retry.contains { if case .armTimer = $0 { true } else { false } })
        XCTAssertEqual(m.releaseAll(now: t0).released.map(\.topic), [tb])
        XCTAssertTrue(m.isIdle)
        XCTAssertEqual(writes(m.timerFired(now: t0.advanced(by: .seconds(10)))), [], "the stale backoff timer writes nothing")
    }

    func testRequeueCountsTowardsTheQueueAndPausesReadingAboveTheMark() throws {
        var source = Machine(), target: Machine = {
            var c = IngestConfiguration()
            c.maxQueuedBytes = 2 * c.maxMessageBytes
            c.maxQueuedBytesPerDevice = c.maxQueuedBytes
            return Machine(configuration: c)
        }()
        // Keep the target busy so the requeued messages wait in its queue.
        let (tx0, px0) = batch(d("dev-x"), 1, 1)
        XCTAssertEqual(writes(target.messageReceived(topic: tx0, payload: px0, now: t0)).count, 1)
        var released: [Machine.Released] = []
        for i in 0..<3 {
            // 200 kB that is no batch: a dead letter, but the queue counts its bytes all the same.
            let dev = d("dev-\(i)")
            let payload = [UInt8](repeating: UInt8(ascii: "{"), count: 200_000)
            let tx = try XCTUnwrap(writes(source.messageReceived(topic: TopicTemplates.defaults.batch.topic(device: dev), payload: payload, now: t0)).first)
            released += source.transactionFenced(tx.id, now: t0).released
        }
        XCTAssertEqual(released.count, 3)
        let a = target.requeue(released, now: t0)
        XCTAssertGreaterThan(target.queuedBytes, target.configuration.maxQueuedBytes)
        XCTAssertEqual(a.filter { $0 == .pauseReading }.count, 1)
        XCTAssertEqual(target.queuedMessages, 3, "never dropped: they were taken once already")
    }
}
