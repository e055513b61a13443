@testable import Device
import FieldlogCore
import TestSupport
import XCTest

/// Sensor sources against fake sysfs trees in temporary directories.
final class SensorTests: XCTestCase {
    var dir: TemporaryDirectory!

    override func setUpWithError() throws { dir = try TemporaryDirectory("sensors") }
    override func tearDown() { dir.remove() }

    func write(_ rel: String, _ text: String) throws {
        let path = dir.file(rel)
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try text.write(toFile: path, atomically: true, encoding: .utf8)
    }

    func number(_ v: SensorValue?) -> Double? { if case .number(let d)? = v { return d } else { return nil } }

    func testSimulatedWalkIsReproducibleAndBounded() throws {
        let a = SimulatedSensor(name: "random", seed: 42), b = SimulatedSensor(name: "random", seed: 42), c = SimulatedSensor(name: "random", seed: 43)
        var sa: [Double] = [], sb: [Double] = [], sc: [Double] = []
        for _ in 0..<500 {
            sa.append(number(try a.read()["random"])!)
            sb.append(number(try b.read()["random"])!)
            sc.append(number(try c.read()["random"])!)
        }
        XCTAssertEqual(sa, sb, "same seed, same series")
        XCTAssertNotEqual(sa, sc)
        XCTAssertTrue(sa.allSatisfy { (0...100).contains($0) })
        XCTAssertTrue(zip(sa, sa.dropFirst()).allSatisfy { abs($0 - $1) <= 1.01 }, "a walk moves by at most one per step")
    }

    func testIIOInputChannelFile() throws {
        try write("iio:device0/in_temp_input", "23125\n")
        let s = IIOSensor(name: "t", path: dir.file("iio:device0/in_temp_input"))
        XCTAssertEqual(number(try s.read()["t"]), 23125)
    }

    func testIIORawWithChannelScaleAndOffset() throws {
        try write("iio:device1/in_voltage0_raw", "1000")
        try write("iio:device1/in_voltage0_scale", "0.5")
        try write("iio:device1/in_voltage0_offset", "-10")
        let s = IIOSensor(name: "v", path: dir.file("iio:device1/in_voltage0_raw"))
        XCTAssertEqual(number(try s.read()["v"]), 495)
    }

    func testIIORawWithSharedTypeScale() throws {
        try write("iio:device2/in_voltage3_raw", "200")
        try write("iio:device2/in_voltage_scale", "0.25")
        let s = IIOSensor(name: "v", path: dir.file("iio:device2/in_voltage3_raw"))
        XCTAssertEqual(number(try s.read()["v"]), 50)
    }

    func testIIODeviceDirectoryReadsEveryChannelAndToleratesAFailingOne() throws {
        // A DHT22 through dht11.ko: temperature and humidity; humidity times out this time.
        try write("iio:device3/in_temp_input", "21500")
        try write("iio:device3/in_humidityrelative_input", "garbage")
        try write("iio:device3/name", "dht11")
        let values = try IIOSensor(name: "dht", path: dir.file("iio:device3")).read()
        XCTAssertEqual(values.keys.sorted(), ["dht.temp"])
        XCTAssertEqual(number(values["dht.temp"]), 21500)
    }

    func testIIOFailuresNameTheFile() throws {
        XCTAssertThrowsError(try IIOSensor(name: "t", path: dir.file("nope/in_temp_input")).read()) { e in
            XCTAssertTrue("\(e)".contains("nope/in_temp_input"), "\(e)")
        }
        try write("iio:device4/in_temp_input", "")
        XCTAssertThrowsError(try IIOSensor(name: "t", path: dir.file("iio:device4/in_temp_input")).read()) { e in
            XCTAssertTrue("\(e)".contains("not a number"), "\(e)")
        }
        try write("iio:device5/name", "empty")
        XCTAssertThrowsError(try IIOSensor(name: "t", path: dir.file("iio:device5")).read()) { e in
            XCTAssertTrue("\(e)".contains("no IIO channels"), "\(e)")
        }
    }

    func testOneWireTemperatureFile() throws {
        try write("28-000001/temperature", "19437\n")
        XCTAssertEqual(number(try OneWireSensor(name: "w", path: dir.file("28-000001")).read()["w"]), 19.437)
    }

    func testOneWireSlaveFileWithGoodCRC() throws {
        try write("28-000002/w1_slave", "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n")
        XCTAssertEqual(number(try OneWireSensor(name: "w", path: dir.file("28-000002")).read()["w"]), 23.125)
    }

    func testOneWireSlaveFileWithBadCRCOrGarbageFails() throws {
        try write("28-000003/w1_slave", "72 01 4b 46 7f ff 0e 10 57 : crc=58 NO\n72 01 4b 46 7f ff 0e 10 57 t=23125\n")
        XCTAssertThrowsError(try OneWireSensor(name: "w", path: dir.file("28-000003")).read()) { e in
            XCTAssertTrue("\(e)".contains("CRC check failed"), "\(e)")
        }
        try write("28-000004/w1_slave", "00 00 00 00 00 00 00 00 00 : crc=00 YES\n")
        XCTAssertThrowsError(try OneWireSensor(name: "w", path: dir.file("28-000004")).read())
        try write("28-000005/temperature", "200000")
        XCTAssertThrowsError(try OneWireSensor(name: "w", path: dir.file("28-000005")).read()) { e in
            XCTAssertTrue("\(e)".contains("outside"), "\(e)")
        }
        XCTAssertThrowsError(try OneWireSensor(name: "w", path: dir.file("28-missing")).read())
    }

    func testCommandSensorParsesAJSONObject() throws {
        let s = CommandSensor(name: "ext", arguments: ["/bin/sh", "-c", #"echo '{"temp": 21.5, "ok": true, "state": "idle"}'"#], timeout: .seconds(5))
        let v = try s.read()
        XCTAssertEqual(number(v["ext.temp"]), 21.5)
        XCTAssertEqual(number(v["ext.ok"]), 1)
        XCTAssertEqual(v["ext.state"], .text("idle"))
    }

    func testCommandSensorFailures() throws {
        XCTAssertThrowsError(try CommandSensor(name: "e", arguments: ["/bin/sh", "-c", "echo '[1,2]'"], timeout: .seconds(5)).read()) { e in
            XCTAssertTrue("\(e)".contains("JSON object"), "\(e)")
        }
        XCTAssertThrowsError(try CommandSensor(name: "e", arguments: ["/bin/sh", "-c", "echo '{\"a\":1}'; exit 3"], timeout: .seconds(5)).read()) { e in
            XCTAssertTrue("\(e)".contains("status 3"), "\(e)")
        }
        XCTAssertThrowsError(try CommandSensor(name: "e", arguments: ["/nonexistent/tool"], timeout: .seconds(5)).read())
        let start = ContinuousClock.now
        XCTAssertThrowsError(try CommandSensor(name: "e", arguments: ["/bin/sleep", "30"], timeout: .milliseconds(300)).read()) { e in
            XCTAssertTrue("\(e)".contains("did not finish"), "\(e)")
        }
        XCTAssertLessThan(ContinuousClock.now - start, .seconds(10), "a hung command is killed")
    }

    func testPanelRecordsMissingSensorsAndKeepsTheOthers() async throws {
        try write("28-000006/w1_slave", "xx : crc=00 NO\nxx t=1\n")
        let panel = SensorPanel(sources: [
            SimulatedSensor(name: "random", seed: 1),
            OneWireSensor(name: "w", path: dir.file("28-000006")),
        ])
        let r = await panel.takeReading()
        XCTAssertNotNil(r.values["random"])
        XCTAssertNil(r.values["w"])
        XCTAssertEqual(r.missingSensors, ["w"])
        XCTAssertEqual(r.errors.map(\.sensor), ["w"])
    }
}
