// Sensor sources: each turns one configured sensor into values for a reading.
//
// Theory of operation: a sensor's `read()` is a blocking call (sysfs reads can stall for
// milliseconds on slow buses such as DHT22's bit-banging driver; a command can take seconds),
// so the sampler calls it on its own thread, never on Swift's cooperative pool. A failing read
// throws `SensorError` with a message that names the file or command; the sampler counts it and
// records the sensor as missing in that reading. Sources hold no state that a failed read could
// leave half-updated.
import FieldlogCore
import Foundation

/// Why a sensor could not be read.
public struct SensorError: Error, Hashable, Sendable, CustomStringConvertible {
    public let sensor: String
    public let reason: String
    public init(sensor: String, reason: String) {
        self.sensor = sensor
        self.reason = reason
    }
    public var description: String { "sensor \(sensor): \(reason)" }
}

/// One readable sensor. `read()` blocks; call it off the cooperative pool.
public protocol SensorSource: Sendable {
    /// The configured name; values are stored under it (or `name.channel` for several).
    var name: String { get }
    func read() throws(SensorError) -> [String: SensorValue]
}

/// Builds the source for a configured sensor.
public func makeSensorSource(_ spec: SensorSpec, timeout: Duration) -> any SensorSource {
    switch spec.kind {
    case .simulated(let seed): return SimulatedSensor(name: spec.name, seed: seed)
    case .iio(let path): return IIOSensor(name: spec.name, path: path)
    case .oneWire(let path): return OneWireSensor(name: spec.name, path: path)
    case .command(let args): return CommandSensor(name: spec.name, arguments: args, timeout: timeout)
    }
}

// MARK: - simulated

/// A seeded random walk between 0 and 100, so the device runs (and tests run) anywhere.
/// The same seed gives the same series.
public final class SimulatedSensor: SensorSource, @unchecked Sendable {
    // @unchecked: `state` and `value` are only touched under `lock`.
    public let name: String
    private let lock = NSLock()
    private var state: UInt64
    private var value: Double

    public init(name: String, seed: UInt64) {
        self.name = name
        state = seed
        value = 50
    }

    /// SplitMix64: tiny, fast, good enough for a walk, and reproducible from the seed.
    private func nextRandom() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    public func read() throws(SensorError) -> [String: SensorValue] {
        lock.withLock {
            let unit = Double(nextRandom() >> 11) / Double(1 << 53)  // [0, 1)
            value = min(100, max(0, value + (unit - 0.5) * 2))
            // Two decimals, as a real sensor would give, so logs stay readable.
            return [name: .number((value * 100).rounded() / 100)]
        }
    }
}

// MARK: - sysfs helpers

enum SysfsFile {
    /// Reads a small sysfs attribute; throws naming the file.
    static func read(_ path: String, sensor: String) throws(SensorError) -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw SensorError(sensor: sensor, reason: "cannot open \(path) (\(errnoText()))")
        }
        defer { try? handle.close() }
        let data: Data
        do { data = try handle.read(upToCount: 4096) ?? Data() } catch {
            throw SensorError(sensor: sensor, reason: "cannot read \(path): \(error.localizedDescription)")
        }
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    static func number(_ path: String, sensor: String) throws(SensorError) -> Double {
        let text = try read(path, sensor: sensor)
        guard let d = Double(text), d.isFinite else {
            throw SensorError(sensor: sensor, reason: "\(path) holds \(text.debugDescription), not a number")
        }
        return d
    }

    static func errnoText() -> String { String(cString: strerror(errno)) }
}

// MARK: - IIO

/// A Linux Industrial I/O device in sysfs (BME280, DHT11/22, SHT3x and many more through
/// their kernel drivers). The path is one channel file (`…/in_temp_input` or `…/in_voltage0_raw`)
/// or a device directory (`/sys/bus/iio/devices/iio:device0`), then every channel is read.
///
/// Values are in the kernel's IIO units (e.g. milli °C for temperature, milli-percent for
/// relative humidity, kPa for pressure): a `_raw` value becomes `(raw + offset) × scale` from
/// the channel's (or the channel type's shared) `_offset` and `_scale` attributes.
public struct IIOSensor: SensorSource {
    public let name: String
    public let path: String

    public init(name: String, path: String) {
        self.name = name
        self.path = path
    }

    public func read() throws(SensorError) -> [String: SensorValue] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw SensorError(sensor: name, reason: "IIO path \(path) does not exist")
        }
        if !isDirectory.boolValue {
            let dir = (path as NSString).deletingLastPathComponent
            let file = (path as NSString).lastPathComponent
            guard let channel = Self.channel(ofFile: file) else {
                throw SensorError(sensor: name, reason: "\(path) is not an IIO channel file (in_*_input or in_*_raw)")
            }
            return [name: .number(try readChannel(channel, in: dir, preferRaw: file.hasSuffix("_raw")))]
        }
        let files: [String]
        do { files = try FileManager.default.contentsOfDirectory(atPath: path) } catch {
            throw SensorError(sensor: name, reason: "cannot list \(path): \(error.localizedDescription)")
        }
        var channels = Set<String>()
        for f in files { if let c = Self.channel(ofFile: f) { channels.insert(c) } }
        guard !channels.isEmpty else { throw SensorError(sensor: name, reason: "no IIO channels (in_*_input or in_*_raw) in \(path)") }
        var values: [String: SensorValue] = [:]
        var failures: [String] = []
        for c in channels.sorted() {
            do throws(SensorError) { values["\(name).\(c)"] = .number(try readChannel(c, in: path, preferRaw: false)) } catch {
                failures.append(error.reason)
            }
        }
        // Some channels of a device may fail (a DHT22 read times out now and then); only a
        // device with no readable channel counts as failed, the others are still recorded.
        if values.isEmpty { throw SensorError(sensor: name, reason: failures.joined(separator: "; ")) }
        return values
    }

    /// `in_temp_input` → `temp`; `in_voltage0_raw` → `voltage0`; anything else → nil.
    static func channel(ofFile file: String) -> String? {
        guard file.hasPrefix("in_") else { return nil }
        for suffix in ["_input", "_raw"] where file.hasSuffix(suffix) {
            let c = String(file.dropFirst(3).dropLast(suffix.count))
            return c.isEmpty ? nil : c
        }
        return nil
    }

    private func readChannel(_ channel: String, in dir: String, preferRaw: Bool) throws(SensorError) -> Double {
        let input = "\(dir)/in_\(channel)_input"
        if !preferRaw && FileManager.default.fileExists(atPath: input) {
            return try SysfsFile.number(input, sensor: name)
        }
        let raw = try SysfsFile.number("\(dir)/in_\(channel)_raw", sensor: name)
        let scale = try attribute("scale", channel: channel, in: dir) ?? 1
        let offset = try attribute("offset", channel: channel, in: dir) ?? 0
        return (raw + offset) * scale
    }

    /// The channel's own attribute (`in_voltage0_scale`) or the shared one of its type (`in_voltage_scale`).
    private func attribute(_ attr: String, channel: String, in dir: String) throws(SensorError) -> Double? {
        var candidates = ["\(dir)/in_\(channel)_\(attr)"]
        let type = String(channel.reversed().drop(while: { $0.isNumber }).reversed())
        if type != channel && !type.isEmpty { candidates.append("\(dir)/in_\(type)_\(attr)") }
        for c in candidates where FileManager.default.fileExists(atPath: c) {
            return try SysfsFile.number(c, sensor: name)
        }
        return nil
    }
}

// MARK: - 1-Wire

/// A DS18B20 temperature sensor through the kernel's w1-therm driver, in °C.
/// Newer kernels offer `temperature` (milli °C); older ones only `w1_slave`, whose first line
/// ends in `YES` when the CRC matched and whose second line ends in `t=<milli °C>`.
public struct OneWireSensor: SensorSource {
    public let name: String
    public let path: String

    public init(name: String, path: String) {
        self.name = name
        self.path = path
    }

    public func read() throws(SensorError) -> [String: SensorValue] {
        let temperatureFile = path + "/temperature"
        if FileManager.default.fileExists(atPath: temperatureFile) {
            let milli = try SysfsFile.number(temperatureFile, sensor: name)
            return [name: .number(try Self.check(milli / 1000, sensor: name, file: temperatureFile))]
        }
        let slave = path + "/w1_slave"
        let text = try SysfsFile.read(slave, sensor: name)
        return [name: .number(try Self.parseW1Slave(text, sensor: name, file: slave))]
    }

    /// Parses the two lines of `w1_slave`.
    static func parseW1Slave(_ text: String, sensor: String, file: String) throws(SensorError) -> Double {
        let lines = text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        guard lines.count >= 2 else { throw SensorError(sensor: sensor, reason: "\(file): expected two lines, got \(text.debugDescription)") }
        guard lines[0].contains("crc=") else { throw SensorError(sensor: sensor, reason: "\(file): first line has no crc: \(lines[0].debugDescription)") }
        guard lines[0].hasSuffix("YES") else { throw SensorError(sensor: sensor, reason: "\(file): CRC check failed (\(lines[0]))") }
        guard let r = lines[1].range(of: "t="), let milli = Double(lines[1][r.upperBound...]) else {
            throw SensorError(sensor: sensor, reason: "\(file): second line has no t=<value>: \(lines[1].debugDescription)")
        }
        return try check(milli / 1000, sensor: sensor, file: file)
    }

    /// The DS18B20 measures −55…125 °C; anything else is a bus error.
    static func check(_ celsius: Double, sensor: String, file: String) throws(SensorError) -> Double {
        guard celsius >= -55, celsius <= 125 else {
            throw SensorError(sensor: sensor, reason: "\(file): \(celsius) °C is outside the DS18B20's −55…125 °C")
        }
        return celsius
    }
}

// MARK: - external command

/// An external program that prints one JSON object of `name: number|string|bool` on stdout
/// and exits 0. Values are stored as `<sensor>.<key>`. Runs without a shell; killed after the timeout.
public struct CommandSensor: SensorSource {
    public let name: String
    public let arguments: [String]
    public let timeout: Duration
    /// Output beyond this is an error (a runaway program must not fill memory).
    static let maxOutputBytes = 64 * 1024

    public init(name: String, arguments: [String], timeout: Duration) {
        precondition(!arguments.isEmpty, "a command sensor needs a command")
        self.name = name
        self.arguments = arguments
        self.timeout = timeout
    }

    public func read() throws(SensorError) -> [String: SensorValue] {
        let output = try run()
        return try Self.parse(output, sensor: name)
    }

    static func parse(_ output: Data, sensor: String) throws(SensorError) -> [String: SensorValue] {
        let object: Any
        do { object = try JSONSerialization.jsonObject(with: output) } catch {
            throw SensorError(sensor: sensor, reason: "command output is not JSON: \(String(decoding: output.prefix(200), as: UTF8.self).debugDescription)")
        }
        guard let dict = object as? [String: Any] else {
            throw SensorError(sensor: sensor, reason: "command output must be a JSON object, got \(String(decoding: output.prefix(200), as: UTF8.self).debugDescription)")
        }
        var values: [String: SensorValue] = [:]
        for (key, value) in dict {
            let full = "\(sensor).\(key)"
            do throws(DomainError) { try SensorValues.validate(name: full) } catch {
                throw SensorError(sensor: sensor, reason: "command output key \(key.debugDescription): \(error)")
            }
            if let n = value as? NSNumber {
                // JSONSerialization gives booleans as NSNumber too; store them as 0/1.
                let d = n.doubleValue
                guard d.isFinite else { throw SensorError(sensor: sensor, reason: "value of \(key.debugDescription) is not finite") }
                values[full] = .number(d)
            } else if let s = value as? String {
                guard s.utf8.count <= SensorValues.maxTextBytes else {
                    throw SensorError(sensor: sensor, reason: "text value of \(key.debugDescription) is longer than \(SensorValues.maxTextBytes) bytes")
                }
                values[full] = .text(s)
            } else {
                throw SensorError(sensor: sensor, reason: "value of \(key.debugDescription) must be a number, string or boolean")
            }
        }
        guard !values.isEmpty else { throw SensorError(sensor: sensor, reason: "command printed an empty object") }
        return values
    }

    private func run() throws(SensorError) -> Data {
        let process = Process()
        let exe = arguments[0]
        if exe.hasPrefix("/") {
            process.executableURL = URL(fileURLWithPath: exe)
            process.arguments = Array(arguments.dropFirst())
        } else {
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = arguments
        }
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        let done = DispatchSemaphore(value: 0)
        process.terminationHandler = { _ in done.signal() }
        do { try process.run() } catch {
            throw SensorError(sensor: name, reason: "cannot start \(exe): \(error.localizedDescription)")
        }
        // Read on this (sampler) thread while a timer guards the deadline.
        let reader = out.fileHandleForReading
        nonisolated(unsafe) var data = Data()
        let readDone = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            while data.count <= Self.maxOutputBytes {
                let chunk = reader.availableData
                if chunk.isEmpty { break }
                data.append(chunk)
            }
            readDone.signal()
        }
        let ms = Int(timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
        if done.wait(timeout: .now() + .milliseconds(ms)) == .timedOut {
            kill(process.processIdentifier, SIGKILL)
            done.wait()
            _ = readDone.wait(timeout: .now() + 1)
            throw SensorError(sensor: name, reason: "\(exe) did not finish within \(timeout); killed")
        }
        guard readDone.wait(timeout: .now() + 1) == .success else {
            throw SensorError(sensor: name, reason: "\(exe) exited but its output did not close (a child still holds it?)")
        }
        guard process.terminationStatus == 0 else {
            throw SensorError(sensor: name, reason: "\(exe) exited with status \(process.terminationStatus)")
        }
        guard data.count <= Self.maxOutputBytes else {
            throw SensorError(sensor: name, reason: "\(exe) printed more than \(Self.maxOutputBytes) bytes")
        }
        return data
    }
}
