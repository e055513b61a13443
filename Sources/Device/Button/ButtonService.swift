// The start/stop button service: GPIO edges → `PressDetector` → toggle `measurement:enabled`.
//
// Theory of operation: the line is requested for both edges (so bounces of either kind
// restart the quiet period) with the configured bias; a dedicated thread waits for edges
// (libgpiod blocks) and hands them to the task that owns the `ButtonToggle`. A press flips
// the switch in `RuntimeSettings`, which the switch poller writes to Redis, as the seed's
// `startstopbutton` did. Without GPIO hardware (no chip, no line, no permission), or when the
// kernel reports an error while waiting, `run(reporter:)` throws an error naming chip and
// line; the node runs it under a `SupervisedService`, which reports it and tries again with
// backoff while the rest of the device keeps running.
#if canImport(Glibc)
import Glibc
#endif
import FieldlogCore
import Threading
import GPIO
import Logging
import ServiceLifecycle

/// The button's line could not be used.
public struct ButtonUnavailable: Error, CustomStringConvertible {
    public var chip: String
    public var line: Int
    public var reason: String
    public var description: String {
        "start/stop button on \(chip) line \(line) unavailable: \(reason) (set BUTTON_ENABLE=false if there is no button)"
    }
}

public struct ButtonService: Service {
    public let settings: DeviceConfiguration.ButtonSettings
    public let runtime: RuntimeSettings
    public let metrics: DeviceMetrics
    public let logger: Logger

    public init(settings: DeviceConfiguration.ButtonSettings, runtime: RuntimeSettings, metrics: DeviceMetrics, logger: Logger) {
        self.settings = settings
        self.runtime = runtime
        self.metrics = metrics
        self.logger = logger
    }

    public func run() async throws {
        try await run(reporter: nil)
    }

    /// Runs until shutdown; throws `ButtonUnavailable` when the line cannot be used.
    public func run(reporter: ComponentHealth.Reporter?) async throws {
        let bias: GPIOBias = switch settings.bias {
        case .up: .pullUp
        case .down: .pullDown
        case .none: .disabled
        }
        let gpio = GPIOConfiguration(chip: settings.chip, line: UInt32(settings.line), edge: .both, bias: bias, consumer: "fieldlog-button")
        let input: GPIOEdgeInput
        do { input = try GPIOEdgeInput(configuration: gpio) } catch {
            throw ButtonUnavailable(chip: settings.chip, line: settings.line, reason: "\(error)")
        }
        reporter?.running()
        logger.info("start/stop button ready", metadata: ["chip": "\(settings.chip)", "line": "\(settings.line)",
                                                          "edge": "\(settings.edge.rawValue)", "bounce": "\(settings.bounce)"])
        var toggle = ButtonToggle(detector: PressDetector(pressEdge: settings.edge == .rising ? .rising : .falling, bounce: settings.bounce))
        let (stream, sink) = AsyncStream.makeStream(of: EdgeEvent.self, bufferingPolicy: .bufferingNewest(256))
        let failure = LockedFailure()
        OSThread.start(name: "fieldlog-button") {
            while true {
                do {
                    guard let e = try input.blockingWaitForEvent(timeout: .milliseconds(500)) else { continue }
                    let c = e.timestamp.components
                    let ns = UInt64(max(0, c.seconds)) * 1_000_000_000 + UInt64(max(0, c.attoseconds / 1_000_000_000))
                    sink.yield(EdgeEvent(kind: e.kind == .rising ? .rising : .falling, timestampNanoseconds: ns))
                } catch {
                    failure.set("\(error)")
                    sink.finish()  // closed on shutdown, or a kernel error (thrown below)
                    return
                }
            }
        }
        await withGracefulShutdownHandler {
            for await edge in stream where toggle.edge(edge) == .toggle {
                metrics.buttonPresses.increment()
                let on = await runtime.toggleMeasurement()
                logger.notice("button pressed: measurement \(on ? "started" : "stopped")")
            }
        } onGracefulShutdown: {
            input.close()
            sink.finish()
        }
        input.close()
        if !Task.isShuttingDownGracefully, let reason = failure.value {
            throw ButtonUnavailable(chip: settings.chip, line: settings.line, reason: reason)
        }
    }
}

/// The edge thread's error, read by the service after the stream ended.
private final class LockedFailure: @unchecked Sendable {
    // @unchecked: `reason` is only touched under `lock`.
    private let lock = Lock()
    private var reason: String?
    func set(_ r: String) { lock.withLock { reason = r } }
    var value: String? { lock.withLock { reason } }
}
