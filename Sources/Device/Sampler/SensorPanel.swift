import FieldlogCore
import Threading
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

/// Reads every configured sensor on a thread of its own (sysfs and commands block:
/// docs/concurrency.md).
public final class SensorPanel: Sendable {
    public let sources: [any SensorSource]
    private let thread = OwnerThread(name: "fieldlog-sensors", stackSize: 256 << 10)

    public init(sources: [any SensorSource]) {
        self.sources = sources
    }

    deinit { thread.stop() }

    public convenience init(specs: [SensorSpec], timeout: Duration) {
        self.init(sources: specs.map { makeSensorSource($0, timeout: timeout) })
    }

    /// Takes one reading of every sensor. Never throws: failures are part of the reading.
    public func takeReading() async -> Reading {
        let sources = self.sources
        do {
            return try await thread.run { Self.readAll(sources) }
        } catch {
            // Only after deinit, which cannot run while this call holds the panel.
            preconditionFailure("sensor thread stopped while the panel is in use: \(error)")
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
