// Commands: the keys they may reach. Parsing and the wire format are the protocol's
// (Sync: `SyncCodec.decodeCommand`, `CommandResponse`, spec/protocol.md), so the backend and
// the device agree byte for byte; this file only holds the device's allow-list.
import FieldlogCore

/// Keys reachable through `get_config` / `set_config`: never arbitrary Redis keys, as the seed allowed.
enum ConfigKey: String, Sendable, CaseIterable {
    // Writable runtime switches (the seed's Redis keys).
    case measurementEnabled = "measurement:enabled"
    case measurementInterval = "measurement:interval"
    case senderEnabled = "mqtt_sender:enabled"
    case senderInterval = "mqtt_sender:interval"
    // Read-only facts.
    case deviceID = "device:id"
    case logEpoch = "log:epoch"
    case logHead = "log:head"
    case logAcked = "log:acked"

    var switchKey: SwitchKey? { SwitchKey(rawValue: rawValue) }

    static var listing: String { allCases.map(\.rawValue).joined(separator: ", ") }
    static var writableListing: String { allCases.filter { $0.switchKey != nil }.map(\.rawValue).joined(separator: ", ") }
}
