/// One sensor value: a number (finite) or a string.
public enum SensorValue: Hashable, Sendable, CustomStringConvertible {
    case number(Double)
    case text(String)

    public var description: String {
        switch self {
        case .number(let d): return String(d)
        case .text(let s): return s.debugDescription
        }
    }
}

/// A reading's values: sensor name → value.
///
/// Names are 1…64 bytes of printable ASCII without `"` or `\`; numbers are finite; strings
/// are at most 256 bytes; at most 64 sensors per reading. These limits keep a record small
/// enough to batch and to store, and are the same on device and backend (spec/protocol.md).
public struct SensorValues: Hashable, Sendable, Sequence {
    public private(set) var values: [String: SensorValue]

    public static let maxSensors = 64
    static let maxNameBytes = 64
    public static let maxTextBytes = 256

    public init(_ values: [String: SensorValue]) throws(DomainError) {
        guard values.count <= Self.maxSensors else {
            throw DomainError("a reading holds at most \(Self.maxSensors) values, got \(values.count)")
        }
        for (name, value) in values {
            try Self.validate(name: name)
            switch value {
            case .number(let d):
                guard d.isFinite else { throw DomainError("value of \(name.debugDescription) must be a finite number, got \(d)") }
            case .text(let s):
                guard s.utf8.count <= Self.maxTextBytes else {
                    throw DomainError("text value of \(name.debugDescription) is \(s.utf8.count) bytes; at most \(Self.maxTextBytes) allowed")
                }
            }
        }
        self.values = values
    }

    public static func validate(name: String) throws(DomainError) {
        guard !name.isEmpty, name.utf8.count <= maxNameBytes else {
            throw DomainError("sensor name must be 1…\(maxNameBytes) bytes, got \(name.debugDescription)")
        }
        for b in name.utf8 where b < 0x21 || b > 0x7E || b == 0x22 || b == 0x5C {
            throw DomainError("sensor name \(name.debugDescription) may only hold printable ASCII without spaces, quotes or backslashes")
        }
    }

    public static let empty = try! SensorValues([:])

    public subscript(name: String) -> SensorValue? { values[name] }
    public var count: Int { values.count }
    public var isEmpty: Bool { values.isEmpty }
    /// Sorted by name, so encodings are deterministic.
    public var sorted: [(name: String, value: SensorValue)] { values.sorted { $0.key < $1.key }.map { ($0.key, $0.value) } }
    public func makeIterator() -> Dictionary<String, SensorValue>.Iterator { values.makeIterator() }
}

/// Wall-clock time of a reading on the device, in milliseconds since 1970, with a flag
/// when the device knows its clock is not synchronised (no NTP yet, RTC-less boot).
public struct DeviceTimestamp: Hashable, Sendable {
    public var unixMilliseconds: Int64
    public var clockUnsynchronized: Bool

    public init(unixMilliseconds: Int64, clockUnsynchronized: Bool = false) {
        self.unixMilliseconds = unixMilliseconds
        self.clockUnsynchronized = clockUnsynchronized
    }
}

/// One reading as stored in a device's log.
public struct LogRecord: Hashable, Sendable {
    public var sequence: SequenceNumber
    public var timestamp: DeviceTimestamp
    public var values: SensorValues
    /// Sensors that were configured but could not be read for this reading.
    public var missingSensors: [String]

    public init(sequence: SequenceNumber, timestamp: DeviceTimestamp, values: SensorValues, missingSensors: [String] = []) {
        self.sequence = sequence
        self.timestamp = timestamp
        self.values = values
        self.missingSensors = missingSensors
    }
}

/// Why records were lost. The raw values are the wire and storage names.
public enum LossReason: String, Hashable, Sendable, CaseIterable {
    /// The disk quota was reached under the `drop-oldest` policy.
    case diskQuota = "disk-quota"
    /// A replay was asked for records the device no longer retains.
    case notRetained = "not-retained"
    /// An append whose commit failed and that did not reappear after recovery.
    case commitFailed = "commit-failed"
    /// The backend rejected the record (kept aside in the dead-letter table).
    case rejected = "rejected"
}

/// A range of sequence numbers the device had to drop, and why. Kept in the log and sent
/// to the backend so a loss is always reported, never silent.
public struct LossMarker: Hashable, Sendable {
    public var range: SequenceRange
    public var reason: LossReason
    /// When the device recorded the loss (device wall clock, ms since 1970).
    public var recordedAtUnixMilliseconds: Int64
    public var detail: String

    public init(range: SequenceRange, reason: LossReason, recordedAtUnixMilliseconds: Int64, detail: String = "") {
        self.range = range
        self.reason = reason
        self.recordedAtUnixMilliseconds = recordedAtUnixMilliseconds
        self.detail = detail
    }
}
