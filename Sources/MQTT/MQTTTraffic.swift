// Traffic accounting: the bytes a client's MQTT packets take on the connection, for a data
// budget on metered links.
//
// libmosquitto counts nothing, so the client counts what passes through its API, exactly as
// MQTT v5 encodes it: every PUBLISH sent and received (fixed header, topic, packet id,
// properties, payload) and the PUBACK that goes with each QoS 1 one. Not counted: keep-alive
// pings (4 bytes per keep-alive interval), CONNECT/CONNACK/SUBSCRIBE/SUBACK at each
// (re)connect, QoS 1 messages libmosquitto resends after a reconnect, TLS record overhead
// (about 22–29 bytes per record) and TCP/IP headers (40 bytes or more per segment). So the
// figure is the application's MQTT traffic, a lower bound of what the link carries.
import Synchronization

/// Told of the bytes an `MQTTClient` moves. Called from the client's network thread and from
/// publishing tasks: implementations must be thread-safe and return quickly.
public protocol MQTTTrafficObserver: Sendable {
    func mqttBytesSent(_ bytes: Int)
    func mqttBytesReceived(_ bytes: Int)
}

/// Sizes of MQTT v5 packets as they are encoded on the wire (MQTT 5.0 §2, §3.3, §3.4).
public enum MQTTPacketSize {
    /// A PUBLISH packet with this topic, payload size, QoS and properties.
    public static func publish(topic: String, payloadBytes: Int, qos: MQTTQoS, properties: MQTTMessageProperties) -> Int {
        let props = propertyBytes(properties)
        let remaining = 2 + topic.utf8.count + (qos == .atMostOnce ? 0 : 2) + varIntBytes(props) + props + payloadBytes
        return 1 + varIntBytes(remaining) + remaining
    }

    /// A PUBACK with reason code success and no properties (the reason code is then omitted).
    static let pubAck = 4

    /// Bytes of the property block (without its length).
    static func propertyBytes(_ p: MQTTMessageProperties) -> Int {
        var n = 0
        if let c = p.contentType { n += 1 + 2 + c.utf8.count }
        if p.messageExpiryInterval != nil { n += 1 + 4 }
        if let t = p.responseTopic { n += 1 + 2 + t.utf8.count }
        if let d = p.correlationData { n += 1 + 2 + d.count }
        for u in p.userProperties { n += 1 + 2 + u.name.utf8.count + 2 + u.value.utf8.count }
        return n
    }

    /// Bytes of a variable byte integer (1…4).
    public static func varIntBytes(_ value: Int) -> Int {
        switch value {
        case ..<128: return 1
        case ..<16_384: return 2
        case ..<2_097_152: return 3
        default: return 4
        }
    }
}

/// The client's tally: forwards packet sizes to the observer, if one is set.
final class TrafficTally: Sendable {
    private let observer = Mutex<(any MQTTTrafficObserver)?>(nil)

    func observe(_ o: any MQTTTrafficObserver) { observer.withLock { $0 = o } }

    /// A PUBLISH written by this client, and the PUBACK a QoS 1 one brings back.
    func published(topic: String, payloadBytes: Int, qos: MQTTQoS, properties: MQTTMessageProperties) {
        guard let o = observer.withLock({ $0 }) else { return }
        o.mqttBytesSent(MQTTPacketSize.publish(topic: topic, payloadBytes: payloadBytes, qos: qos, properties: properties))
        if qos != .atMostOnce { o.mqttBytesReceived(MQTTPacketSize.pubAck) }
    }

    /// A PUBLISH delivered to this client, and the PUBACK it answers a QoS 1 one with.
    func delivered(_ m: MQTTMessage) {
        guard let o = observer.withLock({ $0 }) else { return }
        o.mqttBytesReceived(MQTTPacketSize.publish(topic: m.topic, payloadBytes: m.payload.count, qos: m.qos, properties: m.properties))
        if m.qos != .atMostOnce { o.mqttBytesSent(MQTTPacketSize.pubAck) }
    }
}
