// Shards (docs/sharding.md): the settings of a sharded ingest, and the reads of a shard's map
// copy and of its `shard_self`.
//
// The map is read version first, then its rows, each statement on its own (READ COMMITTED):
// the rows are then at least as new as the version. Cached with that version, a newer row set is
// safe (a newer map is never less right, and `fl_fence` refuses the version once the shard has
// a newer one); the other order could cache old rows under a new version, which the fence
// would then let through.
import FieldlogCore
import Foundation
import MariaDB
import Settings
import Sync

/// Where each shard is: `FIELDLOG_SHARDS=N` and `FIELDLOG_SHARD_<K>_ADDRESSES` (host[:port],…,
/// in failover order) for K = 1…N, as `scripts/stack up --shards N` writes them to stack.env
/// (BackendSettings' "shards" group). The shards take the database name, user and password of
/// `FIELDLOG_MARIADB_*` (which, in a sharded stack, points at the Spider front end: the
/// readers' server). A shard the map names but the settings do not is reached at the addresses
/// its `shard_servers` row gives.
package struct ShardSettings: Sendable {
    /// Most shards the settings name (the stack's port layout allows 16).
    package static let maxShards = 16

    package var shards: [ShardNumber: [DatabaseAddress]]

    package init(shards: [ShardNumber: [DatabaseAddress]]) { self.shards = shards }

    /// nil when FIELDLOG_SHARDS is 0: one database, no map (the unsharded ingest).
    package init?(reading r: inout SettingsReader) {
        let count = r.int("FIELDLOG_SHARDS")
        // A shard's addresses beyond FIELDLOG_SHARDS: a misconfiguration (a shard left out), not ignored.
        for k in (count + 1)..<(Self.maxShards + 1) where r.optional("FIELDLOG_SHARD_\(k)_ADDRESSES") != nil {
            r.problem("FIELDLOG_SHARD_\(k)_ADDRESSES", "unset: FIELDLOG_SHARDS=\(count) names no shard \(k) (or set FIELDLOG_SHARDS ≥ \(k))")
        }
        guard count > 0 else { return nil }
        var shards: [ShardNumber: [DatabaseAddress]] = [:]
        for k in 1...min(count, Self.maxShards) {
            let name = "FIELDLOG_SHARD_\(k)_ADDRESSES"
            let allowed = "the servers of shard \(k) (FIELDLOG_SHARDS=\(count)): a comma-separated list of host[:port]"
            guard let list = r.optional(name) else { r.problem(name, allowed); continue }
            let parts = list.split(separator: ",")
            let addresses = parts.compactMap { DatabaseAddress.parse(String($0)) }
            guard addresses.count == parts.count, !addresses.isEmpty else { r.problem(name, allowed); continue }
            shards[try! ShardNumber(UInt16(k))] = addresses
        }
        self.shards = shards
    }

    /// The database settings of shard `k`: `base` (name, account, timeouts) at the shard's addresses.
    package func database(_ k: ShardNumber, base: DatabaseSettings, map: ShardMap?) throws(ShardMapError) -> DatabaseSettings {
        var settings = base
        if let configured = shards[k] {
            settings.addresses = configured
        } else if let server = map?.servers[k] {
            let addresses = server.addresses.compactMap { DatabaseAddress.parse($0) }
            guard addresses.count == server.addresses.count, !addresses.isEmpty else {
                throw ShardMapError(message: "shard_servers.addresses of \(k) is not a list of host[:port]: \(server.addresses.joined(separator: ","))")
            }
            settings.addresses = addresses
        } else {
            throw ShardMapError(message: "no addresses for \(k): set FIELDLOG_SHARD_\(k.rawValue)_ADDRESSES")
        }
        return settings
    }
}

/// A server answered at a shard's address but says it is another shard (or none): writing
/// there would put devices on the wrong shard. The ingest treats it as the shard being unreachable.
package struct ShardMismatch: Error, CustomStringConvertible {
    package var expected: ShardNumber
    package var found: UInt16?
    package var address: String
    package var description: String {
        "the server at \(address) is \(found.map { $0 == 0 ? "the Spider front end (shard_self 0)" : "shard \($0)" } ?? "no shard (no shard_self row)"), not \(expected): check FIELDLOG_SHARD_\(expected.rawValue)_ADDRESSES / shard_servers"
    }
}

extension Store {
    /// `shard_self.shard` (0: the front end), nil when the table or its row is missing.
    package func shardSelf() async throws -> UInt16? {
        do {
            let r = try await connection.query("SELECT shard FROM shard_self WHERE id = 1")
            return r.rows.first?.first?.uint64.flatMap { UInt16(exactly: $0) }
        } catch let e as MariaDBError where e.code == 1146 {  // no such table: not a shard
            return nil
        }
    }

    /// This copy's map version, nil when it has none.
    package func shardMapVersion() async throws -> ShardMapVersion? {
        let r = try await connection.query("SELECT version FROM shard_map WHERE id = 1")
        return r.rows.first?.first?.uint64.map(ShardMapVersion.init(rawValue:))
    }

    /// This copy of the map (version first; see the top of the file).
    package func loadShardMap() async throws -> ShardMap {
        guard let version = try await shardMapVersion() else {
            throw ShardMapError(message: "no shard map on this server (scripts/shards init)")
        }
        func shard(_ v: MariaDBValue, _ what: String) throws -> ShardNumber {
            guard let n = v.uint64, let s = UInt16(exactly: n), let k = try? ShardNumber(s) else {
                throw ShardMapError(message: "\(what): \(v) is not a shard number")
            }
            return k
        }
        var servers: [ShardNumber: ShardMap.Server] = [:]
        for row in try await connection.query("SELECT shard, addresses, state FROM shard_servers").rows {
            servers[try shard(row[0], "shard_servers.shard")] = ShardMap.Server(
                addresses: (row[1].string ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) },
                active: row[2].string == "active")
        }
        var buckets = [ShardMap.Bucket?](repeating: nil, count: ShardMap.bucketCount)
        for row in try await connection.query("SELECT bucket, shard, frozen FROM shard_buckets").rows {
            guard let b = row[0].uint64.map(Int.init), b < ShardMap.bucketCount else { throw ShardMapError(message: "shard_buckets.bucket \(row[0]) out of range") }
            buckets[b] = ShardMap.Bucket(shard: try shard(row[1], "shard_buckets.shard"), frozen: (row[2].uint64 ?? 0) != 0)
        }
        guard let whole = buckets as? [ShardMap.Bucket] else {
            throw ShardMapError(message: "shard_buckets lacks \(buckets.filter { $0 == nil }.count) of \(ShardMap.bucketCount) buckets")
        }
        var overrides: [DeviceID: ShardMap.Override] = [:]
        for row in try await connection.query("SELECT device_id, shard, moving_to FROM shard_overrides").rows {
            guard let text = row[0].string, let device = try? DeviceID(text) else { continue }  // not a device id ingest can see
            overrides[device] = ShardMap.Override(shard: try shard(row[1], "shard_overrides.shard of \(text)"),
                                                  movingTo: row[2] == .null ? nil : try shard(row[2], "shard_overrides.moving_to of \(text)"))
        }
        do {
            return try ShardMap(version: version, buckets: whole, overrides: overrides, servers: servers)
        } catch {
            throw ShardMapError(message: error.description)
        }
    }
}

/// A shard's map copy is missing or inconsistent.
package struct ShardMapError: Error, CustomStringConvertible {
    package var message: String
    package init(message: String) { self.message = message }
    package var description: String { "shard map: \(message)" }
}
