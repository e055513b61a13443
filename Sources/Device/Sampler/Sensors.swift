// Sensor sources: each turns one configured sensor into values for a reading.
//
// Theory of operation: a sensor's `read()` is a blocking call (sysfs reads can stall for
// milliseconds on slow buses such as DHT22's bit-banging driver; a command can take seconds),
// so the sampler calls it on its own thread, never on Swift's cooperative pool. A failing read
// throws `SensorError` with a message that names the file or command; the sampler counts it and
// records the sensor as missing in that reading. Sources hold no state that a failed read could
// leave half-updated.
import FieldlogCore
import Threading
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import Sync

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
func makeSensorSource(_ spec: SensorSpec, timeout: Duration) -> any SensorSource {
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
    // @unchecked: `random` and `value` are only touched under `lock`.
    public let name: String
    private let lock = Lock()
    /// Tiny, fast, good enough for a walk, and reproducible from the seed.
    private var random: SplitMix64
    private var value: Double

    public init(name: String, seed: UInt64) {
        self.name = name
        random = SplitMix64(seed: seed)
        value = 50
    }

    public func read() throws(SensorError) -> [String: SensorValue] {
        lock.withLock {
            let unit = random.nextDouble()  // [0, 1)
            value = min(100, max(0, value + (unit - 0.5) * 2))
            // Two decimals, as a real sensor would give, so logs stay readable.
            return [name: .number((value * 100).rounded() / 100)]
        }
    }
}

// MARK: - sysfs helpers

/// read(2), under a name no sensor's `read()` hides.
private func posixRead(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int) -> Int { read(fd, buffer, count) }

enum SysfsFile {
    /// Reads a small sysfs attribute; throws naming the file.
    static func read(_ path: String, sensor: String) throws(SensorError) -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SensorError(sensor: sensor, reason: "cannot open \(path) (\(errnoText()))") }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 4096)
        var count = 0
        while count < buffer.count {
            let n = buffer.withUnsafeMutableBytes { posixRead(fd, $0.baseAddress! + count, $0.count - count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw SensorError(sensor: sensor, reason: "cannot read \(path): \(errnoText())") }
            if n == 0 { break }
            count += n
        }
        return String(decoding: buffer[..<count], as: UTF8.self).trimmed()
    }

    /// True for a directory, false for anything else, nil when nothing is at `path`.
    static func isDirectory(_ path: String) -> Bool? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return (st.st_mode & S_IFMT) == S_IFDIR
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
        guard let isDirectory = SysfsFile.isDirectory(path) else {
            throw SensorError(sensor: name, reason: "IIO path \(path) does not exist")
        }
        if !isDirectory {
            let slash = path.lastIndex(of: "/")
            let dir = slash.map { String(path[..<$0]) } ?? "."
            let file = slash.map { String(path[path.index(after: $0)...]) } ?? path
            guard let channel = Self.channel(ofFile: file) else {
                throw SensorError(sensor: name, reason: "\(path) is not an IIO channel file (in_*_input or in_*_raw)")
            }
            return [name: .number(try readChannel(channel, in: dir, preferRaw: file.hasSuffix("_raw")))]
        }
        let files: [String]
        do { files = try FileManager.default.contentsOfDirectory(atPath: path) } catch {
            throw SensorError(sensor: name, reason: "cannot list \(path): \(error)")
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
        let lines = text.split(separator: "\n").map { $0.trimmed(.spaces) }
        guard lines.count >= 2 else { throw SensorError(sensor: sensor, reason: "\(file): expected two lines, got \(text.debugDescription)") }
        guard lines[0].contains("crc=") else { throw SensorError(sensor: sensor, reason: "\(file): first line has no crc: \(lines[0].debugDescription)") }
        guard lines[0].hasSuffix("YES") else { throw SensorError(sensor: sensor, reason: "\(file): CRC check failed (\(lines[0]))") }
        guard let r = lines[1].firstRange(of: "t="), let milli = Double(lines[1][r.upperBound...]) else {
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

    static func parse(_ output: [UInt8], sensor: String) throws(SensorError) -> [String: SensorValue] {
        let object: JSONValue
        do { object = try JSONReader.parse(output) } catch {
            throw SensorError(sensor: sensor, reason: "command output is not JSON (\(error)): \(String(decoding: output.prefix(200), as: UTF8.self).debugDescription)")
        }
        guard case .object(let members) = object else {
            throw SensorError(sensor: sensor, reason: "command output must be a JSON object, got \(String(decoding: output.prefix(200), as: UTF8.self).debugDescription)")
        }
        var values: [String: SensorValue] = [:]
        for (key, value) in members {
            let full = "\(sensor).\(key)"
            do throws(DomainError) { try SensorValues.validate(name: full) } catch {
                throw SensorError(sensor: sensor, reason: "command output key \(key.debugDescription): \(error)")
            }
            switch value {
            case .integer(let i): values[full] = .number(Double(i))
            case .double(let d): values[full] = .number(d)  // the reader gives finite numbers only
            case .bool(let b): values[full] = .number(b ? 1 : 0)  // booleans are stored as 0/1
            case .string(let s):
                guard s.utf8.count <= SensorValues.maxTextBytes else {
                    throw SensorError(sensor: sensor, reason: "text value of \(key.debugDescription) is longer than \(SensorValues.maxTextBytes) bytes")
                }
                values[full] = .text(s)
            default:
                throw SensorError(sensor: sensor, reason: "value of \(key.debugDescription) must be a number, string or boolean")
            }
        }
        guard !values.isEmpty else { throw SensorError(sensor: sensor, reason: "command printed an empty object") }
        return values
    }

    /// Runs the program with its output on a pipe, reads at most `maxOutputBytes` + 1 bytes
    /// until it closes, and kills the program when `timeout` passes first.
    private func run() throws(SensorError) -> [UInt8] {
        let exe = arguments[0]
        var fds: [Int32] = [-1, -1]
        // Close-on-exec, so the program (and other children) keep only the end dup2'ed to stdout.
        guard pipe(&fds) == 0 else { throw SensorError(sensor: name, reason: "cannot make a pipe: \(SysfsFile.errnoText())") }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        let pid: pid_t
        do { pid = try Spawn.start(arguments, stdout: fds[1], discardingErrors: true) } catch {
            close(fds[0]); close(fds[1])
            throw SensorError(sensor: name, reason: error.description)
        }
        close(fds[1])
        defer { close(fds[0]) }
        let deadline = ContinuousClock.now + timeout
        func killed(_ why: String) -> SensorError {
            kill(pid, SIGKILL)
            _ = try? Spawn.exitStatus(pid, block: true)
            return SensorError(sensor: name, reason: "\(exe) \(why)")
        }
        var data: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while data.count <= Self.maxOutputBytes {
            let left = deadline - .now
            guard left > .zero else { throw killed("did not finish within \(timeout); killed") }
            var p = pollfd(fd: fds[0], events: Int16(POLLIN), revents: 0)
            let ms = Int32(clamping: max(1, left.inMilliseconds))
            let ready = poll(&p, 1, ms)
            if ready < 0 && errno == EINTR { continue }
            guard ready >= 0 else { throw killed("could not be read: \(SysfsFile.errnoText())") }
            if ready == 0 { continue }
            let n = chunk.withUnsafeMutableBytes { posixRead(fds[0], $0.baseAddress!, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw killed("could not be read: \(SysfsFile.errnoText())") }
            if n == 0 { break }  // end of output
            data += chunk[..<n]
        }
        guard data.count <= Self.maxOutputBytes else { throw killed("printed more than \(Self.maxOutputBytes) bytes") }
        // Output closed: the program is ending; wait for it until the deadline.
        while true {
            let status: Int32?
            do { status = try Spawn.exitStatus(pid, block: false) } catch { throw SensorError(sensor: name, reason: error.description) }
            if let status {
                guard status == 0 else { throw SensorError(sensor: name, reason: "\(exe) exited with status \(status)") }
                return data
            }
            guard ContinuousClock.now < deadline else { throw killed("did not finish within \(timeout); killed") }
            OSThread.sleep(.milliseconds(5))
        }
    }
}
