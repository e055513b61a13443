// Topic templates (spec/protocol.md §2): where each message goes, configurable, with the
// defaults of protocol v1 and the seed's names for compatibility.

import FieldlogCore

/// One topic template. Placeholders: `{device}` (also the seed's `%(device_uuid)s`),
/// `{device_type}`/`%(device_type)s`, `{app_id}`/`%(app_id)s`, `{app_name}`/`%(app_name)s`.
/// A placeholder must fill a whole topic level; `{device}` may appear at most once.
public struct TopicTemplate: Hashable, Sendable, CustomStringConvertible {
    public let template: String
    /// Levels of the template with the seed's placeholders normalised to `{name}`.
    let levels: [String]

    static let aliases = ["%(device_uuid)s": "{device}", "%(device_type)s": "{device_type}",
                          "%(app_id)s": "{app_id}", "%(app_name)s": "{app_name}"]
    static let known: Set<String> = ["{device}", "{device_type}", "{app_id}", "{app_name}"]

    public init(_ template: String) throws(DomainError) {
        guard !template.isEmpty, template.utf8.count <= 256 else {
            throw DomainError("topic template must be 1…256 bytes, got \(template.debugDescription)")
        }
        var levels: [String] = []
        for raw in template.split(separator: "/", omittingEmptySubsequences: false) {
            let level = Self.aliases[String(raw)] ?? String(raw)
            if level.contains("{") || level.contains("}") || level.contains("%(") {
                guard Self.known.contains(level) else {
                    throw DomainError("topic template \(template.debugDescription): \(String(raw).debugDescription) is not a whole-level placeholder; known are {device}, {device_type}, {app_id}, {app_name} and the seed's %(device_uuid)s forms")
                }
            }
            guard !level.contains("+"), !level.contains("#") else {
                throw DomainError("topic template \(template.debugDescription) must not contain MQTT wildcards")
            }
            levels.append(level)
        }
        guard levels.filter({ $0 == "{device}" }).count <= 1 else {
            throw DomainError("topic template \(template.debugDescription) names {device} more than once")
        }
        self.template = template
        self.levels = levels
    }

    init(checked template: String) {
        do { try self.init(template) } catch { preconditionFailure("built-in topic template: \(error)") }
    }

    public var description: String { template }

    /// Whether the template has a `{device}` level (the broadcast topic does not).
    var isPerDevice: Bool { levels.contains("{device}") }

    /// The topic for one device.
    public func topic(device: DeviceID, identity: DeviceIdentity = DeviceIdentity()) -> String {
        levels.map { level in
            switch level {
            case "{device}": return device.rawValue
            case "{device_type}": return identity.deviceType
            case "{app_id}": return identity.appID
            case "{app_name}": return identity.appName
            default: return level
            }
        }.joined(separator: "/")
    }

    /// The subscription filter that matches this template for every device (`+` for every
    /// placeholder level).
    public var filter: String {
        levels.map { Self.known.contains($0) ? "+" : $0 }.joined(separator: "/")
    }

    /// The device named by `topic` if it matches this template, else nil (also nil when the
    /// level is not a valid device id).
    public func device(inTopic topic: String) -> DeviceID? {
        let parts = topic.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == levels.count else { return nil }
        var device: DeviceID?
        for (part, level) in zip(parts, levels) {
            switch level {
            case "{device}": device = try? DeviceID(String(part))
                if device == nil { return nil }
            case "{device_type}", "{app_id}", "{app_name}": if part.isEmpty { return nil }
            default: if part != level { return nil }
            }
        }
        return device
    }
}

/// The seed's identity placeholders (balena: `BALENA_DEVICE_TYPE`, `BALENA_APP_ID`, `BALENA_APP_NAME`).
public struct DeviceIdentity: Hashable, Sendable {
    public var deviceType: String
    public var appID: String
    public var appName: String
    public init(deviceType: String = "unknown", appID: String = "0", appName: String = "fieldlog") {
        self.deviceType = deviceType
        self.appID = appID
        self.appName = appName
    }
}

/// All topics of the protocol (spec §2).
public struct TopicTemplates: Hashable, Sendable {
    public var batch: TopicTemplate
    public var ack: TopicTemplate
    public var status: TopicTemplate
    public var request: TopicTemplate
    public var response: TopicTemplate
    public var broadcast: TopicTemplate
    /// Where legacy seed devices publish their value lists (read by the backend only).
    public var legacyValues: TopicTemplate

    public init(batch: TopicTemplate, ack: TopicTemplate, status: TopicTemplate, request: TopicTemplate,
                response: TopicTemplate, broadcast: TopicTemplate, legacyValues: TopicTemplate) {
        self.batch = batch
        self.ack = ack
        self.status = status
        self.request = request
        self.response = response
        self.broadcast = broadcast
        self.legacyValues = legacyValues
    }

    /// Protocol v1 defaults (these are in deploy/mosquitto/fieldlog.acl).
    public static let defaults = TopicTemplates(
        batch: TopicTemplate(checked: "fieldlog/v1/devices/{device}/batch"),
        ack: TopicTemplate(checked: "fieldlog/v1/devices/{device}/ack"),
        status: TopicTemplate(checked: "fieldlog/v1/devices/{device}/status"),
        request: TopicTemplate(checked: "fieldlog/v1/devices/{device}/request"),
        response: TopicTemplate(checked: "fieldlog/v1/devices/{device}/response"),
        broadcast: TopicTemplate(checked: "fieldlog/v1/broadcast/control"),
        legacyValues: TopicTemplate(checked: "iot-projekt/device/%(device_uuid)s/values"))

    /// The seed's topic names for commands and replies (`iot-projekt/device/...`), v1 topics
    /// for batches, acks and status (the seed has none of those).
    public static let seedCompatible = TopicTemplates(
        batch: defaults.batch, ack: defaults.ack, status: defaults.status,
        request: TopicTemplate(checked: "iot-projekt/device/%(device_uuid)s/request"),
        response: TopicTemplate(checked: "iot-projekt/device/%(device_uuid)s/response"),
        broadcast: TopicTemplate(checked: "iot-projekt/device/broadcast/control"),
        legacyValues: defaults.legacyValues)

    // Environment variable names, new and the seed's (spec §2.2); the first name present wins.
    // Immutable; key paths are not Sendable, hence nonisolated(unsafe).
    nonisolated(unsafe) static let environmentNames: [(keyPath: WritableKeyPath<TopicTemplates, TopicTemplate>, names: [String])] = [
        (\.batch, ["FIELDLOG_TOPIC_BATCH"]),
        (\.ack, ["FIELDLOG_TOPIC_ACK"]),
        (\.status, ["FIELDLOG_TOPIC_STATUS"]),
        (\.request, ["FIELDLOG_TOPIC_REQUEST", "MQTT_TOPIC_REQUEST"]),
        (\.response, ["FIELDLOG_TOPIC_RESPONSE", "MQTT_TOPIC_RESPONSE"]),
        (\.broadcast, ["FIELDLOG_TOPIC_BROADCAST", "MQTT_TOPIC_BROADCAST"]),
        (\.legacyValues, ["FIELDLOG_TOPIC_LEGACY_VALUES", "MQTT_TOPIC_VALUES"]),
    ]

    /// `base` with every template overridden by the environment variables of `environmentNames`.
    public static func fromEnvironment(_ env: [String: String], base: TopicTemplates = .defaults) throws(DomainError) -> TopicTemplates {
        var t = base
        for (keyPath, names) in environmentNames {
            // An empty value means unset, as for every other setting.
            guard let name = names.first(where: { !(env[$0] ?? "").isEmpty }), let value = env[name] else { continue }
            do { t[keyPath: keyPath] = try TopicTemplate(value) } catch { throw DomainError("\(name): \(error.description)") }
        }
        for (keyPath, names) in environmentNames where keyPath != \TopicTemplates.broadcast {
            guard t[keyPath: keyPath].isPerDevice else {
                throw DomainError("\(names[0]): topic template \(t[keyPath: keyPath].template.debugDescription) needs a {device} level")
            }
        }
        return t
    }
}
