// The start/stop button service: GPIO edges → `PressDetector` → toggle `measurement:enabled`.
//
// Theory of operation: the line is requested for both edges (so bounces of either kind
// restart the quiet period) with the configured bias; the GPIO input's own thread waits for
// edges (libgpiod blocks) and hands every one, through its bounded stream, to the task that
// owns the `ButtonToggle`, which debounces them (`PressDetector`). A press flips
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
struct ButtonUnavailable: Error, CustomStringConvertible {
    public var chip: String
    public var line: Int
    public var reason: String
    public var description: String {
        "start/stop button on \(chip) line \(line) unavailable: \(reason) (set BUTTON_ENABLE=false if there is no button)"
    }
}

struct ButtonService: Service {
    public let settings: DeviceConfiguration.ButtonSettings
    let runtime: RuntimeSettings
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
        let edges = input.events()
        var failure: (any Error)?
        await withGracefulShutdownHandler {
            do {
                for try await edge in edges where toggle.edge(edge) == .toggle {
                    metrics.buttonPresses.increment()
                    let on = await runtime.toggleMeasurement()
                    logger.notice("button pressed: measurement \(on ? "started" : "stopped")")
                }
            } catch {
                failure = error  // a kernel error while waiting (thrown below)
            }
        } onGracefulShutdown: {
            input.close()  // the stream finishes
        }
        input.close()
        if !Task.isShuttingDownGracefully, let failure {
            throw ButtonUnavailable(chip: settings.chip, line: settings.line, reason: "\(failure)")
        }
    }
}
