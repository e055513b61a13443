import Dispatch
import FieldlogCore
#if canImport(Glibc)
import Glibc
#endif

/// One reading of all configured sensors: the values that could be read, the sensors that
/// could not, and why.
public struct Reading: Sendable {
    public var values: SensorValues
    /// Names of configured sensors that failed this time (recorded with the reading).
    public var missingSensors: [String]
    public var errors: [SensorError]
}

/// Reads every configured sensor on a thread of its own (sysfs and commands block).
public final class SensorPanel: Sendable {
    public let sources: [any SensorSource]
    private let queue = DispatchQueue(label: "fieldlog.sensors")

    public init(sources: [any SensorSource]) {
        self.sources = sources
    }

    public convenience init(specs: [SensorSpec], timeout: Duration) {
        self.init(sources: specs.map { makeSensorSource($0, timeout: timeout) })
    }

    /// Takes one reading of every sensor. Never throws: failures are part of the reading.
    public func takeReading() async -> Reading {
        await withCheckedContinuation { (continuation: CheckedContinuation<Reading, Never>) in
            queue.async {
                continuation.resume(returning: Self.readAll(self.sources))
            }
        }
    }

    static func readAll(_ sources: [any SensorSource]) -> Reading {
        var merged: [String: SensorValue] = [:]
        var missing: [String] = []
        var errors: [SensorError] = []
        for source in sources {
            do throws(SensorError) {
                let values = try source.read()
                // A source's keys are its name or `name.channel`; names are unique, so no clash.
                merged.merge(values) { a, _ in a }
            } catch {
                missing.append(source.name)
                errors.append(error)
            }
        }
        var values = SensorValues.empty
        do { values = try SensorValues(merged) } catch {
            // Too many values in total (more than SensorValues.maxSensors): keep the first ones
            // by name so the reading is still stored, and say so.
            let kept = Dictionary(uniqueKeysWithValues: merged.sorted { $0.key < $1.key }.prefix(SensorValues.maxSensors).map { ($0.key, $0.value) })
            values = (try? SensorValues(kept)) ?? .empty
            errors.append(SensorError(sensor: "*", reason: "\(error); kept the first \(SensorValues.maxSensors) by name"))
        }
        return Reading(values: values, missingSensors: missing, errors: errors)
    }
}
