import Device
import FieldlogCore
import Settings
import Sync
import XCTest

final class ConfigurationTests: XCTestCase {
    func config(file: String = "", env: [String: String] = [:], set: [String] = [], host: String = "pi-1") throws(ConfigurationError) -> DeviceConfiguration {
        let table = DeviceSettings.table
        let commandLine = try set.map { (text) throws(ConfigurationError) in try CommandLineSetting.parse(set: text) }
        let values = SettingValues(table: table, commandLine: commandLine, environment: env,
                                   file: SettingsFile(contents: file, path: "device.env", table: table))
        return try DeviceConfiguration(values: values, hostName: host)
    }

    func problems(file: String = "", env: [String: String] = [:], set: [String] = []) -> [ConfigurationProblem] {
        do {
            _ = try config(file: file, env: env, set: set)
            XCTFail("expected a configuration error")
            return []
        } catch { return error.problems }
    }

    func testDefaultsGiveTheDocumentedValues() throws {
        let c = try config()
        XCTAssertEqual(c.identity.deviceID.rawValue, "pi-1", "host name is the fallback device id")
        XCTAssertEqual(c.sampling.interval, .seconds(2))
        XCTAssertEqual(c.sampling.sensors.map(\.name), ["random"], "the seed's field name")
        guard case .simulated = c.sampling.sensors[0].kind else { return XCTFail("default sensor is simulated") }
        XCTAssertEqual(c.log.durability, .full)
        XCTAssertEqual(c.log.quotaPolicy, .stop)
        XCTAssertEqual(c.redis.port, 6379)
        XCTAssertEqual(c.mqtt.port, 1883)
        XCTAssertEqual(c.mqtt.username, "pi-1")
        XCTAssertEqual(c.mqtt.topics.values, "fieldlog/v1/devices/pi-1/batch")
        XCTAssertEqual(c.status.host, "127.0.0.1", "status page is loopback by default")
        XCTAssertEqual(c.commands.rebootCommand, [], "reboot is disabled by default")
        XCTAssertEqual(c.button.bias, .up)
        XCTAssertEqual(c.button.edge, .falling)
        XCTAssertEqual(c.button.bounce, .milliseconds(20))
    }

    func testEnvironmentOverridesFileWhichOverridesDefaults() throws {
        let file = """
        # a comment
        INTERVAL_SECONDS=5
        export MQTT_HOST="broker.example"
        REDIS_PORT = '6380'
        """
        let c = try config(file: file, env: ["INTERVAL_SECONDS": "0.5", "PATH": "/bin"])
        XCTAssertEqual(c.sampling.interval, .milliseconds(500))
        XCTAssertEqual(c.mqtt.host, "broker.example")
        XCTAssertEqual(c.redis.port, 6380)
        XCTAssertEqual(c.values["INTERVAL_SECONDS"]?.source, .environment)
        XCTAssertEqual(c.values["MQTT_HOST"]?.source, .file(path: "device.env", line: 3))
    }

    func testCommandLineOverridesEnvironment() throws {
        let c = try config(file: "INTERVAL_SECONDS=5\n", env: ["INTERVAL_SECONDS": "0.5", "REDIS_PORT": "6380"], set: ["INTERVAL_SECONDS=3", "LOG_LEVEL=debug"])
        XCTAssertEqual(c.sampling.interval, .seconds(3))
        XCTAssertEqual(c.values["INTERVAL_SECONDS"]?.source, .commandLine(option: "--set"))
        XCTAssertEqual(c.redis.port, 6380, "what the command line does not set comes from below")
        XCTAssertEqual(c.logLevel, .debug)
        let p = problems(set: ["INTERVALL_SECONDS=3", "MQTT_PORT=0"])
        XCTAssertEqual(p.map(\.setting), ["INTERVALL_SECONDS", "MQTT_PORT"])
        XCTAssertTrue(p[0].allowed.contains("unknown setting"), p[0].allowed)
        XCTAssertTrue(p[1].description.contains(#"MQTT_PORT="0" (from command line --set): a whole number in 1…65535"#), p[1].description)
        XCTAssertThrowsError(try CommandLineSetting.parse(set: "INTERVAL_SECONDS")) { XCTAssertTrue("\($0)".contains("NAME=value"), "\($0)") }
    }

    func testANameWinsOverItsSeedAliasWhereverEachIsSet() throws {
        // The new name in the file beats the seed's name in the environment; an empty value is "unset".
        let c = try config(file: "FIELDLOG_TOPIC_REQUEST=plant/{device}/req\n", env: ["MQTT_TOPIC_REQUEST": "seed/%(device_uuid)s/request"])
        XCTAssertEqual(c.mqtt.topics.request, "plant/pi-1/req")
        XCTAssertEqual(c.values["FIELDLOG_TOPIC_REQUEST"]?.source, .file(path: "device.env", line: 1))
        let seed = try config(env: ["FIELDLOG_TOPIC_REQUEST": "", "MQTT_TOPIC_REQUEST": "seed/%(device_uuid)s/request"])
        XCTAssertEqual(seed.mqtt.topics.request, "seed/pi-1/request")
        XCTAssertEqual(seed.values["FIELDLOG_TOPIC_REQUEST"]?.name, "MQTT_TOPIC_REQUEST")
        XCTAssertTrue(seed.effectiveDescription().contains("FIELDLOG_TOPIC_REQUEST=seed/%(device_uuid)s/request  # environment as MQTT_TOPIC_REQUEST"))
        // An empty environment value unsets a setting without a default that the file sets.
        XCTAssertEqual(try config(file: "MQTT_CLIENT_ID=fixed\n", env: ["MQTT_CLIENT_ID": ""]).mqtt.clientID, "pi-1")
    }

    func testIdentityPrefersExplicitIDThenBalenaUUIDThenHostName() throws {
        XCTAssertEqual(try config(env: ["BALENA_DEVICE_UUID": "abc123"]).identity.deviceID.rawValue, "abc123")
        XCTAssertEqual(try config(env: ["BALENA_DEVICE_UUID": "abc123", "FIELDLOG_DEVICE_ID": "dev-7"]).identity.deviceID.rawValue, "dev-7")
    }

    func testSeedTopicTemplatesAreFilledIn() throws {
        let c = try config(env: [
            "BALENA_DEVICE_UUID": "u1", "BALENA_APP_NAME": "app",
            "MQTT_TOPIC_REQUEST": "iot-projekt/device/%(device_uuid)s/request",
            "MQTT_TOPIC_BROADCAST": "iot-projekt/%(app_name)s/broadcast/control",
            "FIELDLOG_TOPIC_BATCH": "plant-7/{device}/batch",
        ])
        XCTAssertEqual(c.mqtt.topics.request, "iot-projekt/device/u1/request")
        XCTAssertEqual(c.mqtt.topics.broadcast, "iot-projekt/app/broadcast/control")
        XCTAssertEqual(c.mqtt.topics.values, "plant-7/u1/batch")
        XCTAssertEqual(c.mqtt.topics.ack, "fieldlog/v1/devices/u1/ack")
    }

    func testBadValuesNameSettingValueSourceAndWhatIsAllowed() {
        let p = problems(file: "INTERVAL_SECONDS=fast\n", env: ["LOG_DURABILITY": "sometimes", "MQTT_PORT": "70000", "MQTT_TLS_ENABLE": "maybe"])
        let bySetting = Dictionary(uniqueKeysWithValues: p.map { ($0.setting, $0) })
        XCTAssertEqual(Set(bySetting.keys), ["INTERVAL_SECONDS", "LOG_DURABILITY", "MQTT_PORT", "MQTT_TLS_ENABLE"], "every problem is reported at once")
        XCTAssertEqual(bySetting["INTERVAL_SECONDS"]?.value, "fast")
        XCTAssertEqual(bySetting["INTERVAL_SECONDS"]?.source, .file(path: "device.env", line: 1))
        XCTAssertTrue(bySetting["INTERVAL_SECONDS"]!.allowed.contains("0.01…86400"), bySetting["INTERVAL_SECONDS"]!.allowed)
        XCTAssertTrue(bySetting["LOG_DURABILITY"]!.allowed.contains("full, normal"))
        XCTAssertTrue(bySetting["MQTT_PORT"]!.allowed.contains("1…65535"))
        XCTAssertTrue(bySetting["MQTT_TLS_ENABLE"]!.allowed.contains("true/false"))
        let text = ConfigurationError(problems: p).description
        XCTAssertTrue(text.contains("LOG_DURABILITY=\"sometimes\" (from environment)"), text)
    }

    func testUnknownKeyInFileIsAnError() {
        let p = problems(file: "INTERVALL_SECONDS=3\n")
        XCTAssertEqual(p.map(\.setting), ["INTERVALL_SECONDS"])
        XCTAssertTrue(p[0].allowed.contains("unknown setting"))
    }

    func testBadDeviceIDIsReported() {
        let p = problems(env: ["FIELDLOG_DEVICE_ID": "a/b"])
        XCTAssertEqual(p.first?.setting, "FIELDLOG_DEVICE_ID")
        XCTAssertEqual(p.first?.value, "a/b")
    }

    func testWildcardInTopicIsRejected() {
        XCTAssertEqual(problems(env: ["FIELDLOG_TOPIC_BATCH": "a/+/{device}"]).map(\.setting), ["FIELDLOG_TOPIC_BATCH"])
        XCTAssertEqual(problems(env: ["MQTT_TOPIC_REQUEST": "a/%(nope)s"]).map(\.setting), ["MQTT_TOPIC_REQUEST"])
    }

    func testSizesAcceptSuffixes() throws {
        let c = try config(env: ["LOG_MAX_BYTES": "64M", "SYNC_BATCH_MAX_BYTES": "128k"])
        XCTAssertEqual(c.log.maxBytes, 64 << 20)
        XCTAssertEqual(c.sync.batchMaxBytes, 128 << 10)
        XCTAssertEqual(problems(env: ["LOG_MAX_BYTES": "1k"]).map(\.setting), ["LOG_MAX_BYTES"], "a quota below 64k cannot work")
        XCTAssertEqual(problems(env: ["SYNC_BATCH_MAX_BYTES": "2M"]).map(\.setting), ["SYNC_BATCH_MAX_BYTES"], "beyond the protocol's 256k")
    }

    func testSyncEncodingChoosesTheSendersBatchEncoding() throws {
        XCTAssertEqual(try config().sync.encoding, .json, "JSON unless the device is told otherwise")
        let c = try config(file: "SYNC_ENCODING=compact\n")
        XCTAssertEqual(c.sync.encoding, .compact)
        XCTAssertEqual(DeviceNode.syncConfiguration(c).sender.encoding, .compact)
        XCTAssertEqual(try config(env: ["SYNC_ENCODING": " Compact "]).sync.encoding, .compact)
        let p = problems(env: ["SYNC_ENCODING": "cbor"])
        XCTAssertEqual(p.map(\.setting), ["SYNC_ENCODING"])
        XCTAssertTrue(p[0].allowed.contains("json, compact"), p[0].allowed)
    }

    func testButtonSettingsAreCaseInsensitiveLikeTheSeed() throws {
        let c = try config(env: ["BUTTON_PULL_UP_DOWN": "down", "BUTTON_EVENT": "Rising", "BUTTON_PIN": "17"])
        XCTAssertEqual(c.button.bias, .down)
        XCTAssertEqual(c.button.edge, .rising)
        XCTAssertEqual(c.button.line, 17)
        XCTAssertEqual(problems(env: ["BUTTON_EVENT": "BOTH"]).map(\.setting), ["BUTTON_EVENT"])
    }

    func testSensorListParsing() throws {
        let specs = try SensorSpec.parseList("t=iio:/sys/bus/iio/devices/iio:device0/in_temp_input; w=w1:28-0000abc ;r=simulated:7;x=command:/usr/bin/env printf '{\"a\": 1}'")
        XCTAssertEqual(specs, [
            SensorSpec(name: "t", kind: .iio(path: "/sys/bus/iio/devices/iio:device0/in_temp_input")),
            SensorSpec(name: "w", kind: .oneWire(path: "/sys/bus/w1/devices/28-0000abc")),
            SensorSpec(name: "r", kind: .simulated(seed: 7)),
            SensorSpec(name: "x", kind: .command(arguments: ["/usr/bin/env", "printf", "{\"a\": 1}"])),
        ])
        XCTAssertEqual(problems(env: ["SENSORS": "t=thermo:1"]).map(\.setting), ["SENSORS"])
        XCTAssertEqual(problems(env: ["SENSORS": "a=simulated;a=simulated"]).map(\.setting), ["SENSORS"])
        XCTAssertEqual(problems(env: ["SENSORS": "t=iio:relative/path"]).map(\.setting), ["SENSORS"])
        XCTAssertEqual(problems(env: ["SENSORS": ""]).map(\.setting), ["SENSORS"])
    }

    func testTLSFilesMustBeReadableWhenTLSIsOn() throws {
        XCTAssertEqual(problems(env: ["MQTT_TLS_ENABLE": "1", "MQTT_TLS_CA_CERTS": "/nonexistent/ca.pem"]).map(\.setting), ["MQTT_TLS_CA_CERTS"])
        _ = try config(env: ["MQTT_TLS_ENABLE": "0", "MQTT_TLS_CA_CERTS": "/nonexistent/ca.pem"])
    }

    func testEffectiveDescriptionMasksSecrets() throws {
        let c = try config(env: ["MQTT_PASSWORD": "hunter2", "COMMAND_REBOOT": "systemctl reboot"])
        let text = c.effectiveDescription()
        XCTAssertFalse(text.contains("hunter2"))
        XCTAssertTrue(text.contains("MQTT_PASSWORD=********  # environment"), text)
        XCTAssertTrue(text.contains("FIELDLOG_TOPIC_BATCH=  # unset (effective: fieldlog/v1/devices/pi-1/batch)"), text)
        XCTAssertEqual(c.commands.rebootCommand, ["systemctl", "reboot"])
    }

    func testCommandLineSplitting() throws {
        XCTAssertEqual(try CommandLineSplitter.split(#"a "b c" 'd e' f\ g"#), ["a", "b c", "d e", "f g"])
        XCTAssertEqual(try CommandLineSplitter.split(""), [])
        XCTAssertThrowsError(try CommandLineSplitter.split(#"a "b"#))
    }

    func testMissingConfigFileIsAnError() {
        XCTAssertThrowsError(try DeviceConfiguration.load(configOption: "/nonexistent/device.env", commandLine: [], environment: [:])) { e in
            XCTAssertTrue("\(e)".contains("/nonexistent/device.env"))
        }
    }

    func testEveryDefaultIsValid() throws {
        // The built-in table must itself pass validation (a typo in a default would break every start).
        _ = try config()
    }
}
