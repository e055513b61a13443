// GPIO: a thin, safe wrapper over libgpiod v1.6 for one edge-event input line, owner of its
// chip and line.
//
// Theory of operation: `GPIOEdgeInput` opens the chip (by name, path, label or number, as
// gpiod_chip_open_lookup does) and requests one line for edge events with the given bias in
// its initialiser, and releases line and chip exactly once (close() or deinit). Waiting for an
// event blocks, so it belongs on a dedicated thread: `blockingWaitForEvent(timeout:)` for a
// thread of the caller's, or `events()`, which starts one and feeds a bounded AsyncStream.
// Every edge is reported with the kernel's timestamp; what counts as a bounce is the caller's
// business (the device's `PressDetector`). All libgpiod calls are serialised by one lock; the
// reader waits in short slices so that close() never waits long and never frees what a wait
// still uses.
import CGPIOD
import FieldlogCore
import Synchronization
import Threading
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// Which edges of the signal to report.
public enum GPIOEdge: Sendable, Hashable {
    case rising, falling, both
}

/// The line's internal pull resistor.
public enum GPIOBias: Sendable, Hashable {
    /// Leave it as configured (firmware/device tree).
    case asIs
    case disabled
    case pullUp
    case pullDown
}

/// One edge seen on the line.
public struct GPIOEdgeEvent: Sendable, Hashable {
    public enum Kind: Sendable, Hashable { case rising, falling }
    public var kind: Kind
    /// The kernel's timestamp of the event (monotonic clock), for debouncing.
    public var timestamp: Duration
    public init(kind: Kind, timestamp: Duration) {
        self.kind = kind
        self.timestamp = timestamp
    }
}

/// A GPIO failure: what was being done, on which chip and line, and the system's reason.
public struct GPIOError: Error, Sendable, Hashable, CustomStringConvertible {
    public let operation: String
    public let chip: String
    public let line: UInt32?
    public let message: String

    public var description: String {
        "GPIO: \(operation) on chip \"\(chip)\"\(line.map { " line \($0)" } ?? "") failed: \(message)"
    }
}

/// Where the line is and how to request it.
public struct GPIOConfiguration: Sendable, Hashable {
    /// The chip: a name ("gpiochip0"), a path ("/dev/gpiochip0"), a label ("pinctrl-bcm2711")
    /// or a number ("0"). Default "gpiochip0".
    public var chip: String
    /// Offset of the line on the chip (on a Raspberry Pi, the BCM number; the seed's BUTTON_PIN, default 2).
    public var line: UInt32
    public var edge: GPIOEdge
    public var bias: GPIOBias
    /// Consumer label shown by `gpioinfo`. Default "fieldlog".
    public var consumer: String

    public init(chip: String = "gpiochip0", line: UInt32 = 2, edge: GPIOEdge = .falling, bias: GPIOBias = .pullUp,
                consumer: String = "fieldlog") {
        self.chip = chip
        self.line = line
        self.edge = edge
        self.bias = bias
        self.consumer = consumer
    }
}

/// One GPIO line requested for edge events.
public final class GPIOEdgeInput: @unchecked Sendable {
    // @unchecked: `chip`, `line` and `closed` are only touched under `lock`.
    public let configuration: GPIOConfiguration
    private let lock = Lock()
    private var chip: OpaquePointer?
    private var line: OpaquePointer?
    private var closed = false

    /// Opens the chip and requests the line; throws a `GPIOError` naming chip and line when
    /// either does not exist, is busy, or the bias is not supported.
    public init(configuration: GPIOConfiguration) throws {
        self.configuration = configuration
        let chipName = configuration.chip
        guard !chipName.isEmpty else {
            throw GPIOError(operation: "open chip", chip: chipName, line: nil, message: "the chip name is empty")
        }
        guard let chip = gpiod_chip_open_lookup(chipName) else {
            let reason = String(cString: strerror(errno))
            let hint = FileManager.default.fileExists(atPath: "/dev") &&
                ((try? FileManager.default.contentsOfDirectory(atPath: "/dev"))?.contains { $0.hasPrefix("gpiochip") } ?? false)
                ? "" : " (this machine has no GPIO chips: no /dev/gpiochip*)"
            throw GPIOError(operation: "open chip", chip: chipName, line: nil, message: reason + hint)
        }
        guard let line = gpiod_chip_get_line(chip, configuration.line) else {
            let reason = String(cString: strerror(errno))
            let count = gpiod_chip_num_lines(chip)
            gpiod_chip_close(chip)
            throw GPIOError(operation: "get line", chip: chipName, line: configuration.line,
                            message: "\(reason) (the chip has \(count) lines: 0...\(max(Int(count) - 1, 0)))")
        }
        var flags: Int32 = 0
        switch configuration.bias {
        case .asIs: flags = 0
        case .disabled: flags = Int32(GPIOD_LINE_REQUEST_FLAG_BIAS_DISABLE)
        case .pullUp: flags = Int32(GPIOD_LINE_REQUEST_FLAG_BIAS_PULL_UP)
        case .pullDown: flags = Int32(GPIOD_LINE_REQUEST_FLAG_BIAS_PULL_DOWN)
        }
        let requestType: Int32
        switch configuration.edge {
        case .rising: requestType = Int32(GPIOD_LINE_REQUEST_EVENT_RISING_EDGE)
        case .falling: requestType = Int32(GPIOD_LINE_REQUEST_EVENT_FALLING_EDGE)
        case .both: requestType = Int32(GPIOD_LINE_REQUEST_EVENT_BOTH_EDGES)
        }
        let rc = configuration.consumer.withCString { consumer -> Int32 in
            var request = gpiod_line_request_config(consumer: consumer, request_type: requestType, flags: flags)
            return gpiod_line_request(line, &request, 0)
        }
        guard rc == 0 else {
            let reason = String(cString: strerror(errno))
            gpiod_chip_close(chip)
            throw GPIOError(operation: "request line for \(configuration.edge) edges with bias \(configuration.bias)",
                            chip: chipName, line: configuration.line, message: reason)
        }
        self.chip = chip
        self.line = line
    }

    deinit { close() }

    /// Releases the line and closes the chip (once; later calls do nothing).
    public func close() {
        lock.withLock {
            guard !closed else { return }
            closed = true
            if let line { gpiod_line_release(line) }
            if let chip { gpiod_chip_close(chip) }
            line = nil
            chip = nil
        }
    }

    /// Waits up to `timeout` for the next edge; nil on timeout. Blocks: call it from a
    /// dedicated thread. Throws when the input was closed or the kernel reports an error.
    func blockingWaitForEvent(timeout: Duration) throws -> GPIOEdgeEvent? {
        try lock.withLock {
            guard !closed, let line else {
                throw GPIOError(operation: "wait for an event", chip: configuration.chip, line: configuration.line,
                                message: "the input was closed")
            }
            var ts = max(timeout, .zero).timespecValue
            let waited = gpiod_line_event_wait(line, &ts)
            if waited == 0 { return nil }
            guard waited == 1 else {
                throw GPIOError(operation: "wait for an event", chip: configuration.chip, line: configuration.line,
                                message: String(cString: strerror(errno)))
            }
            var event = gpiod_line_event()
            guard gpiod_line_event_read(line, &event) == 0 else {
                throw GPIOError(operation: "read an event", chip: configuration.chip, line: configuration.line,
                                message: String(cString: strerror(errno)))
            }
            let kind: GPIOEdgeEvent.Kind = event.event_type == Int32(GPIOD_LINE_EVENT_RISING_EDGE) ? .rising : .falling
            let timestamp = Duration.seconds(Int64(event.ts.tv_sec)) + .nanoseconds(Int64(event.ts.tv_nsec))
            return GPIOEdgeEvent(kind: kind, timestamp: timestamp)
        }
    }

    /// Every edge, read on a thread of its own until the stream's consumer stops or the input
    /// is closed (then the stream finishes, with the error if the kernel reported one). At most
    /// `bufferLimit` edges wait for the consumer; older ones beyond that are dropped.
    public func events(bufferLimit: Int = 256) -> AsyncThrowingStream<GPIOEdgeEvent, Error> {
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: GPIOEdgeEvent.self, throwing: Error.self,
                                                                   bufferingPolicy: .bufferingNewest(bufferLimit))
        let stop = StopFlag()
        continuation.onTermination = { _ in stop.set() }
        OSThread.start(name: "gpio \(configuration.chip):\(configuration.line)") { [self] in
            while !stop.isSet {
                do {
                    // Short slices, so a stopped consumer or close() is noticed quickly.
                    guard let event = try blockingWaitForEvent(timeout: .milliseconds(200)) else { continue }
                    continuation.yield(event)
                } catch {
                    let wasClosed = lock.withLock { closed }
                    if wasClosed { continuation.finish() } else { continuation.finish(throwing: error) }
                    return
                }
            }
            continuation.finish()
        }
        return stream
    }
}

private final class StopFlag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .releasing) }
    var isSet: Bool { value.load(ordering: .acquiring) }
}
