// MQTT v5 properties between Swift and libmosquitto: an owned `mosquitto_property` list built
// from `MQTTMessageProperties` (freed exactly once), and the properties read from a received one.
import CMosquitto
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An owned mosquitto_property list built from `MQTTMessageProperties`, and the reverse.
struct PropertyList {
    private(set) var pointer: OpaquePointer?

    init(_ p: MQTTMessageProperties, operation: String) throws {
        pointer = nil
        if p.isEmpty { return }
        var list: OpaquePointer?
        var rc = MOSQ_ERR_SUCCESS.rawValue
        func add(_ result: Int32) { if rc == MOSQ_ERR_SUCCESS.rawValue { rc = result } }
        if let contentType = p.contentType {
            add(mosquitto_property_add_string(&list, Int32(MQTT_PROP_CONTENT_TYPE.rawValue), contentType))
        }
        for user in p.userProperties {
            add(mosquitto_property_add_string_pair(&list, Int32(MQTT_PROP_USER_PROPERTY.rawValue), user.name, user.value))
        }
        if let expiry = p.messageExpiryInterval {
            add(mosquitto_property_add_int32(&list, Int32(MQTT_PROP_MESSAGE_EXPIRY_INTERVAL.rawValue), expiry))
        }
        if let topic = p.responseTopic {
            add(mosquitto_property_add_string(&list, Int32(MQTT_PROP_RESPONSE_TOPIC.rawValue), topic))
        }
        if let data = p.correlationData {
            guard data.count <= 65_535 else {
                mosquitto_property_free_all(&list)
                throw MQTTError(operation: operation, kind: .usage, message: "correlation data longer than 65535 bytes")
            }
            add(data.withUnsafeBytes { mosquitto_property_add_binary(&list, Int32(MQTT_PROP_CORRELATION_DATA.rawValue), $0.baseAddress, UInt16(data.count)) })
        }
        guard rc == MOSQ_ERR_SUCCESS.rawValue else {
            mosquitto_property_free_all(&list)
            throw MQTTError(operation: operation, kind: .usage, message: "bad MQTT properties: \(String(cString: mosquitto_strerror(rc)))")
        }
        pointer = list
    }

    mutating func free() {
        if pointer != nil { mosquitto_property_free_all(&pointer) }
        pointer = nil
    }

    /// After the library took ownership (a successful will_set_v5).
    mutating func releaseOwnership() { pointer = nil }

    static func read(_ list: OpaquePointer?) -> MQTTMessageProperties {
        var result = MQTTMessageProperties()
        guard let list else { return result }
        var text: UnsafeMutablePointer<CChar>?
        if mosquitto_property_read_string(list, Int32(MQTT_PROP_CONTENT_TYPE.rawValue), &text, false) != nil, let text {
            result.contentType = String(cString: text)
            cFree(text)
        }
        text = nil
        if mosquitto_property_read_string(list, Int32(MQTT_PROP_RESPONSE_TOPIC.rawValue), &text, false) != nil, let text {
            result.responseTopic = String(cString: text)
            cFree(text)
        }
        var expiry: UInt32 = 0
        if mosquitto_property_read_int32(list, Int32(MQTT_PROP_MESSAGE_EXPIRY_INTERVAL.rawValue), &expiry, false) != nil {
            result.messageExpiryInterval = expiry
        }
        var binary: UnsafeMutableRawPointer?
        var length: UInt16 = 0
        if mosquitto_property_read_binary(list, Int32(MQTT_PROP_CORRELATION_DATA.rawValue), &binary, &length, false) != nil {
            result.correlationData = binary.map { Array(UnsafeRawBufferPointer(start: $0, count: Int(length))) } ?? []
            cFree(binary)
        }
        var current: OpaquePointer? = list
        var skipFirst = false
        while true {
            var name: UnsafeMutablePointer<CChar>?
            var value: UnsafeMutablePointer<CChar>?
            guard let found = mosquitto_property_read_string_pair(current, Int32(MQTT_PROP_USER_PROPERTY.rawValue), &name, &value, skipFirst) else { break }
            if let name, let value { result.userProperties.append(MQTTUserProperty(String(cString: name), String(cString: value))) }
            cFree(name)
            cFree(value)
            current = found
            skipFirst = true
        }
        return result
    }
}

/// free(3), under a name no member hides.
private func cFree(_ pointer: UnsafeMutableRawPointer?) { free(pointer) }
