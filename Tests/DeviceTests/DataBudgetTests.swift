@testable import Device
import MQTT
import Synchronization
import Sync
import XCTest

/// The data budget as transcripts: "given these packets at these times, these figures".
final class DataBudgetTests: XCTestCase {
    func testBytesAreCountedPerUTCDayAndInAll() {
        let clock = Mutex<Int64>(1_700_000_000_000)  // 2023-11-14T22:13:20Z
        let metrics = DeviceMetrics(now: { clock.withLock { $0 } })
        let budget = metrics.dataBudget
        budget.mqttBytesSent(1000)
        budget.mqttBytesReceived(40)
        budget.mqttBytesSent(24)
        XCTAssertEqual(budget.today(), DataUsage(day: 19_675, sentBytes: 1024, receivedBytes: 40))
        XCTAssertEqual(budget.today().dayText, "2023-11-14")

        // Midnight UTC: the day's tally starts again, the totals go on.
        clock.withLock { $0 = 1_700_006_400_000 }  // 2023-11-15T00:00:00Z
        XCTAssertEqual(budget.today(), DataUsage(day: 19_676, sentBytes: 0, receivedBytes: 0))
        budget.mqttBytesReceived(8)
        let text = metrics.render()
        XCTAssertTrue(text.contains("fieldlog_device_mqtt_sent_bytes_total 1024"), text)
        XCTAssertTrue(text.contains("fieldlog_device_mqtt_received_bytes_total 48"), text)
        XCTAssertTrue(text.contains("fieldlog_device_mqtt_sent_today_bytes 0"), text)
        XCTAssertTrue(text.contains("fieldlog_device_mqtt_received_today_bytes 8"), text)

        // A clock stepped back to yesterday keeps counting on today's tally.
        clock.withLock { $0 = 1_700_000_000_000 }
        budget.mqttBytesSent(5)
        XCTAssertEqual(budget.today(), DataUsage(day: 19_676, sentBytes: 5, receivedBytes: 8))
    }

    func testPacketSizesAreMQTT5Encodings() {
        // PUBLISH QoS 1 "a/b", 10 bytes: 1 + 1 (remaining 18) + 2+3 topic + 2 id + 1 props length + 10.
        XCTAssertEqual(MQTTPacketSize.publish(topic: "a/b", payloadBytes: 10, qos: .atLeastOnce, properties: .init()), 20)
        // QoS 0 has no packet id; a content type adds 1 + 2 + its bytes.
        XCTAssertEqual(MQTTPacketSize.publish(topic: "a/b", payloadBytes: 10, qos: .atMostOnce, properties: .init(contentType: "application/json")), 37)
        // A remaining length of 128 or more takes two bytes.
        XCTAssertEqual(MQTTPacketSize.publish(topic: "a/b", payloadBytes: 200, qos: .atLeastOnce, properties: .init()), 211)
        XCTAssertEqual(MQTTPacketSize.varIntBytes(127), 1)
        XCTAssertEqual(MQTTPacketSize.varIntBytes(16_384), 3)
        XCTAssertEqual(MQTTPacketSize.varIntBytes(2_097_152), 4)
    }
}
