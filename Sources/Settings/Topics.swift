// The topic settings, the same in both programs' tables: templates of the protocol's topics
// (spec/protocol.md §2), their defaults from Sync's `TopicTemplates`, the seed's names as aliases.
import Sync

extension Setting {
    /// The topic templates (spec §2.2), listed under `group`; unset means the protocol's default.
    public static func topicTemplates(group: String) -> [Setting] {
        let d = TopicTemplates.defaults
        return [
            Setting("FIELDLOG_TOPIC_BATCH", nil, group: group,
                    "Batch topic template (default \(d.batch)); placeholders {device} {device_type} {app_id} {app_name} or the seed's %(device_uuid)s forms, each a whole topic level."),
            Setting("FIELDLOG_TOPIC_ACK", nil, group: group, "Ack topic template (default \(d.ack); retained, from the backend)."),
            Setting("FIELDLOG_TOPIC_STATUS", nil, group: group, "Status topic template (default \(d.status); retained, with last will)."),
            Setting("FIELDLOG_TOPIC_REQUEST", nil, group: group, aliases: ["MQTT_TOPIC_REQUEST"],
                    "Command topic template (default \(d.request); the seed's: iot-projekt/device/%(device_uuid)s/request)."),
            Setting("FIELDLOG_TOPIC_RESPONSE", nil, group: group, aliases: ["MQTT_TOPIC_RESPONSE"],
                    "Command response topic template (default \(d.response))."),
            Setting("FIELDLOG_TOPIC_BROADCAST", nil, group: group, aliases: ["MQTT_TOPIC_BROADCAST"],
                    "Broadcast command topic (default \(d.broadcast); the seed's: iot-projekt/device/broadcast/control)."),
            Setting("FIELDLOG_TOPIC_LEGACY_VALUES", nil, group: group, aliases: ["MQTT_TOPIC_VALUES"],
                    "The seed's value-list topic (default \(d.legacyValues)): read by the backend from legacy seed devices; a Fieldlog device publishes numbered batches on FIELDLOG_TOPIC_BATCH instead (protocol §2.2)."),
        ]
    }
}

extension SettingsReader {
    /// The protocol's topic templates from the topic settings (`Setting.topicTemplates`), read
    /// by Sync's `TopicTemplates.fromEnvironment`; a bad one is a problem under the name given.
    public mutating func topicTemplates() -> TopicTemplates {
        let given = values.asGiven(Setting.topicTemplates(group: "").map(\.name))
        do { return try TopicTemplates.fromEnvironment(given) } catch {
            // Its message starts with the name it read: "MQTT_TOPIC_REQUEST: topic template …".
            let text = error.description
            let name = given.keys.first { text.hasPrefix($0 + ": ") }
            let setting = name.flatMap { n in values.table[n] }?.name ?? "FIELDLOG_TOPIC_BATCH"
            problem(setting, name.map { String(text.dropFirst($0.count + 2)) } ?? text)
            return .defaults
        }
    }
}
