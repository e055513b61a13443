// ShardRouting: what the sharded ingest does with one message, given the cached map (sans-IO).
//
// Theory of operation: a message goes to the ingest machine of its device's shard. A message
// without a device (a topic no template matches: it becomes a dead letter) goes to the lowest
// active shard. A device that is moving, or new in a frozen bucket, is written nowhere: its
// batches, statuses and responses are dropped unacked with their own reason (the device keeps
// them and resends), while its seed values are held until a reloaded map places the device
// (a seed device never resends). After FL001 (the shard's map is newer than ours) the shell
// reloads the map and passes the fenced transaction's messages through here again.
import FieldlogCore

public enum ShardRouting {
    public enum Decision: Hashable, Sendable {
        /// Give it to this shard's ingest machine.
        case shard(ShardNumber)
        /// Not taken: unacked; the device resends it.
        case drop(DropReason)
        /// Keep it and route it again after the next map reload (seed values: never resent).
        case hold(DropReason)
    }

    /// Where a message of `device` (nil: its topic names none) goes; `isSeed`: a seed value list.
    public static func decide(device: DeviceID?, isSeed: Bool, map: ShardMap) -> Decision {
        guard let device else { return .shard(map.lowestActiveShard) }
        let reason: DropReason
        switch map.route(device) {
        case .shard(let s):
            guard map.servers[s]?.active == true else {
                // A retired shard still named by the map: an operator's mistake; nothing is
                // written where the readers no longer look.
                reason = .shardUnavailable
                break
            }
            return .shard(s)
        case .moving: reason = .deviceMoving
        case .frozen: reason = .bucketFrozen
        }
        return isSeed ? .hold(reason) : .drop(reason)
    }

    /// Whether `topic` is a seed value list (held, not dropped, when its device cannot be written now).
    public static func isSeedTopic(_ topic: String, configuration: IngestConfiguration) -> Bool {
        configuration.acceptLegacyValues && configuration.topics.legacyValues.device(inTopic: topic) != nil
    }
}
