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
import Sync

/// Where each shard is: `FIELDLOG_SHARDS=N` and `FIELDLOG_SHARD_<K>_ADDRESSES` (host[:port],…,
/// in failover order) for K = 1…N, as `scripts/stack up --shards N` writes them to stack.env.
/// The shards take the database name, user and password of `FIELDLOG_MARIADB_*` (which, in a
/// sharded stack, points at the Spider front end: the readers' server). A shard the map names
/// but the environment does not is reached at the addresses its `shard_servers` row gives.
package struct ShardSettings: Sendable {
    package var shards: [ShardNumber: [DatabaseAddress]]

    package init(shards: [ShardNumber: [DatabaseAddress]]) { self.shards = shards }

    /// nil when `FIELDLOG_SHARDS` is unset or 0: one database, no map (the unsharded ingest).
    package static func load(environment env: EnvironmentReader = EnvironmentReader()) throws(ConfigurationError) -> ShardSettings? {
        let count = try env.int(["FIELDLOG_SHARDS"], default: 0, range: 0...999)
        guard count > 0 else { return nil }
        var shards: [ShardNumber: [DatabaseAddress]] = [:]
        for k in 1...count {
            let name = "FIELDLOG_SHARD_\(k)_ADDRESSES"
            guard let (setting, list) = env.string([name]) else {
                throw ConfigurationError(setting: name, value: "", allowed: "the addresses of shard \(k) (FIELDLOG_SHARDS=\(count)): host[:port],…")
            }
            shards[try! ShardNumber(UInt16(k))] = try parseAddresses(list, setting: setting)
        }
        return ShardSettings(shards: shards)
    }

    package static func parseAddresses(_ list: String, setting: String) throws(ConfigurationError) -> [DatabaseAddress] {
        var addresses: [DatabaseAddress] = []
        for part in list.split(separator: ",") { addresses.append(try DatabaseAddress.parse(String(part), setting: setting)) }
        guard !addresses.isEmpty else { throw ConfigurationError(setting: setting, value: list, allowed: "a comma-separated list of host[:port]") }
        return addresses
    }

    /// The database settings of shard `k`: `base` (name, account, timeouts) at the shard's addresses.
    package func database(_ k: ShardNumber, base: DatabaseSettings, map: ShardMap?) throws(ConfigurationError) -> DatabaseSettings {
        var settings = base
        if let configured = shards[k] {
            settings.addresses = configured
        } else if let server = map?.servers[k] {
            settings.addresses = try Self.parseAddresses(server.addresses.joined(separator: ","), setting: "shard_servers.addresses of shard \(k.rawValue)")
        } else {
            throw ConfigurationError(setting: "FIELDLOG_SHARD_\(k.rawValue)_ADDRESSES", value: "", allowed: "the addresses of shard \(k.rawValue)")
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
