// ShardMap: which shard holds each device (docs/sharding.md, "The shard map"), sans-IO.
//
// Theory of operation: the map is loaded by the ingest shell from the shard whose
// `shard_map.version` is highest and cached here with that version. Routing a device is a
// dictionary lookup in the overrides, else its bucket: CRC-32/IEEE of the id's ASCII bytes
// (zlib's function, as MariaDB's CRC32()) & 4095 → `shard_buckets`. A device with an override
// that says `moving_to`, or one without an override in a `frozen` bucket, must not be written
// anywhere for now: its batches are dropped unacked (the device resends them), its seed values
// held (they are never resent). Every write transaction on a shard carries the cached version
// to `fl_fence`, which refuses it (FL001) once the shard's map is newer; the caller then reloads
// the map and routes again (`ShardRouting`).
import CZlib
import FieldlogCore

/// A shard's number (1…999, `shard_servers.shard`).
public struct ShardNumber: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let rawValue: UInt16
    public static let range: ClosedRange<UInt16> = 1...999

    public init(_ rawValue: UInt16) throws(DomainError) {
        guard Self.range.contains(rawValue) else { throw DomainError("shard number must be 1…999, got \(rawValue)") }
        self.rawValue = rawValue
    }

    public static func < (a: ShardNumber, b: ShardNumber) -> Bool { a.rawValue < b.rawValue }
    public var description: String { "shard \(rawValue)" }
}

/// A version of the map (`shard_map.version`; every change increments it).
public struct ShardMapVersion: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static func < (a: ShardMapVersion, b: ShardMapVersion) -> Bool { a.rawValue < b.rawValue }
    public var description: String { "v\(rawValue)" }
}

/// Where a device's writes go now.
public enum ShardRoute: Hashable, Sendable {
    /// Write it on this shard.
    case shard(ShardNumber)
    /// It is being moved: nothing of it is written or acked until the move is done.
    case moving(from: ShardNumber, to: ShardNumber)
    /// Its bucket is being reassigned and it has no override: nothing of it is written for now.
    case frozen(bucket: Int)
}

/// The map as loaded from one copy; see the theory of operation at the top of the file.
public struct ShardMap: Hashable, Sendable {
    public static let bucketCount = 4096

    public struct Bucket: Hashable, Sendable {
        public var shard: ShardNumber
        public var frozen: Bool
        public init(shard: ShardNumber, frozen: Bool = false) { self.shard = shard; self.frozen = frozen }
    }
    public struct Override: Hashable, Sendable {
        /// Where the device's rows are.
        public var shard: ShardNumber
        /// Set while it moves there.
        public var movingTo: ShardNumber?
        public init(shard: ShardNumber, movingTo: ShardNumber? = nil) { self.shard = shard; self.movingTo = movingTo }
    }
    public struct Server: Hashable, Sendable {
        /// host[:port] in failover order, as `shard_servers.addresses` holds them.
        public var addresses: [String]
        public var active: Bool
        public init(addresses: [String], active: Bool = true) { self.addresses = addresses; self.active = active }
    }

    public let version: ShardMapVersion
    public let buckets: [Bucket]
    public let overrides: [DeviceID: Override]
    public let servers: [ShardNumber: Server]

    /// Checks the copy is whole: 4096 buckets, and every shard a bucket or an override names is a known server.
    public init(version: ShardMapVersion, buckets: [Bucket], overrides: [DeviceID: Override],
                servers: [ShardNumber: Server]) throws(DomainError) {
        guard buckets.count == Self.bucketCount else {
            throw DomainError("shard map \(version) has \(buckets.count) buckets, not \(Self.bucketCount)")
        }
        for (i, b) in buckets.enumerated() where servers[b.shard] == nil {
            throw DomainError("shard map \(version): bucket \(i) names \(b.shard), which is not in shard_servers")
        }
        for (d, o) in overrides {
            for s in [o.shard] + (o.movingTo.map { [$0] } ?? []) where servers[s] == nil {
                throw DomainError("shard map \(version): the override of \(d) names \(s), which is not in shard_servers")
            }
        }
        guard servers.values.contains(where: \.active) else { throw DomainError("shard map \(version) has no active shard") }
        self.version = version
        self.buckets = buckets
        self.overrides = overrides
        self.servers = servers
    }

    /// A map of one version that gives bucket b to shard b mod N + 1 (what `scripts/shards init` starts with; tests).
    public static func evenlySpread(version: ShardMapVersion, shards: [ShardNumber: Server]) throws(DomainError) -> ShardMap {
        let order = shards.keys.sorted()
        guard !order.isEmpty else { throw DomainError("no shards") }
        return try ShardMap(version: version, buckets: (0..<bucketCount).map { Bucket(shard: order[$0 % order.count]) },
                            overrides: [:], servers: shards)
    }

    /// CRC-32/IEEE (zlib's) of the id's bytes & 4095, as `fl_bucket` computes it.
    public static func bucket(of device: DeviceID) -> Int {
        let crc = Array(device.rawValue.utf8).withUnsafeBufferPointer { p in
            CZlib.crc32(0, p.baseAddress, uInt(p.count))
        }
        return Int(crc & UInt(bucketCount - 1))
    }

    public func route(_ device: DeviceID) -> ShardRoute {
        if let o = overrides[device] {
            if let to = o.movingTo { return .moving(from: o.shard, to: to) }
            return .shard(o.shard)
        }
        let b = Self.bucket(of: device)
        return buckets[b].frozen ? .frozen(bucket: b) : .shard(buckets[b].shard)
    }

    /// The active shards, lowest first.
    public var activeShards: [ShardNumber] { servers.filter(\.value.active).keys.sorted() }

    /// Where rows without a device (dead letters of unknown topics) go.
    var lowestActiveShard: ShardNumber { activeShards[0] }
}
