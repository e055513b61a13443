// The sampler: takes a reading every interval and appends it to the log.
//
// Theory of operation: one loop. Each tick it looks at the runtime switches (last known
// values: Redis being down changes nothing here), and when measurement is enabled it reads
// every sensor on the sensor thread, stamps the reading with the wall clock (flagged when the
// kernel says the clock is not synchronised) and appends it to the log. It waits for the
// append to be durable before the next tick, so a slow disk slows sampling down instead of
// queueing readings in memory without bound (a missed tick is counted). Ticks are kept on a
// fixed grid from the start, so the rate does not drift with read and append time. An append
// that fails (disk full, quota reached under the `stop` policy) is logged with its reason
// and counted, and the sampler tries again at the next tick; it never crashes the process.
// Nothing else can hold it up: it waits only for the sensors (bounded by their timeout) and
// the log. The longest time between two consecutive appends (pauses of measurement and
// interval changes excluded) is kept as a figure of sampling continuity (/status, /metrics).
import CDeviceSupport
import FieldlogCore
#if canImport(Glibc)
import Glibc
#endif
import Log
import Logging
import ServiceLifecycle

/// Where readings go: the device log. `append` returns once the record is durable.
public protocol ReadingLog: Sendable {
    func append(_ values: SensorValues, timestamp: DeviceTimestamp, missingSensors: [String]) async throws -> SequenceNumber
}

/// FieldlogCore's wall clock, with whether the kernel believes it is synchronised (NTP).
extension WallClock {
    /// Now, flagged when the clock is not synchronised.
    public static func now() -> DeviceTimestamp {
        DeviceTimestamp(unixMilliseconds: unixMilliseconds(), clockUnsynchronized: !isSynchronized())
    }

    /// `adjtimex` reports TIME_ERROR while the clock is unsynchronised (no NTP yet, an RTC-less
    /// board after boot). A failed query counts as synchronised (unknown is not flagged).
    static func isSynchronized() -> Bool {
        fieldlog_clock_unsynchronized() != 1
    }
}

/// The latest readings, for the status page's chart (bounded ring).
public actor RecentReadings {
    public struct Entry: Sendable {
        public var sequence: SequenceNumber
        public var timestamp: DeviceTimestamp
        public var values: SensorValues
        public var missing: [String]
    }
    public let capacity: Int
    private(set) var entries: [Entry] = []
    public private(set) var lastError: String?
    private(set) var lastErrorAt: DeviceTimestamp?

    public init(capacity: Int = 120) {
        precondition(capacity > 0)
        self.capacity = capacity
    }

    func add(_ e: Entry) {
        entries.append(e)
        if entries.count > capacity { entries.removeFirst(entries.count - capacity) }
    }

    private(set) var consecutiveAppendFailures = 0
    private var lastAppendAt: ContinuousClock.Instant?
    /// Longest time between two consecutive appends so far (nil before the second append).
    private(set) var appendGapMax: Duration?

    /// Notes an append at `at`; returns the longest gap so far.
    func appended(at: ContinuousClock.Instant) -> Duration? {
        if let last = lastAppendAt {
            let gap = at - last
            if gap > appendGapMax ?? .zero { appendGapMax = gap }
        }
        lastAppendAt = at
        return appendGapMax
    }

    /// Measurement paused or its interval changed: the next append starts a new run.
    func restartGapClock() { lastAppendAt = nil }

    /// Counts failed appends in a row; returns the count after this call (0 after a success).
    func appendResult(failed: Bool) -> (now: Int, before: Int) {
        let before = consecutiveAppendFailures
        consecutiveAppendFailures = failed ? before + 1 : 0
        return (consecutiveAppendFailures, before)
    }

    func noteError(_ message: String?) {
        lastError = message
        lastErrorAt = message == nil ? nil : WallClock.now()
    }

    public func snapshot() -> [Entry] { entries }
}

/// The sampler service (see the theory of operation above).
public struct Sampler: Service {
    public let panel: SensorPanel
    public let log: any ReadingLog
    public let settings: RuntimeSettings
    public let metrics: DeviceMetrics
    public let recent: RecentReadings
    public let logger: Logger

    public init(panel: SensorPanel, log: any ReadingLog, settings: RuntimeSettings, metrics: DeviceMetrics,
                recent: RecentReadings, logger: Logger) {
        self.panel = panel
        self.log = log
        self.settings = settings
        self.metrics = metrics
        self.recent = recent
        self.logger = logger
    }

    public func run() async throws {
        logger.info("sampler started", metadata: ["sensors": "\(panel.sources.map(\.name).joined(separator: ","))"])
        try await cancelWhenGracefulShutdown {
            try await loop()
        }
        logger.info("sampler stopped")
    }

    func loop() async throws {
        let clock = ContinuousClock()
        var next = clock.now
        var paused = false
        while !Task.isCancelled {
            let switches = await settings.switches
            if switches.measurementEnabled {
                if paused { logger.info("measurement enabled"); paused = false }
                await sampleOnce()
            } else if !paused {
                logger.info("measurement paused (measurement:enabled is 0)")
                paused = true
                await recent.restartGapClock()
            }
            // Next tick on the grid; if we fell behind, skip the missed ticks (counted).
            let interval = switches.measurementInterval
            next += interval
            let now = clock.now
            if next < now {
                var missed: Int64 = 0
                while next < now { next += interval; missed += 1 }
                if switches.measurementEnabled { metrics.readingsSkipped.increment(by: missed) }
            }
            // Sleep until the tick, waking early if a switch changes (e.g. interval 1 h → 1 s).
            while clock.now < next && !Task.isCancelled {
                let before = await settings.switches
                await settings.waitForChange(timeout: next - clock.now)
                let after = await settings.switches
                if after != before {
                    if after.measurementInterval != before.measurementInterval {
                        next = clock.now  // take the new pace from now
                        await recent.restartGapClock()
                    } else if after.measurementEnabled && !before.measurementEnabled {
                        next = clock.now
                    }
                    break
                }
            }
        }
    }

    /// One reading, appended. Never throws: failures are logged, counted and shown on /status.
    public func sampleOnce() async {
        let reading = await panel.takeReading()
        for e in reading.errors {
            metrics.sensorError(e.sensor)
            logger.error("sensor read failed", metadata: ["sensor": "\(e.sensor)", "reason": "\(e.reason)"])
        }
        let timestamp = WallClock.now()
        let start = ContinuousClock.now
        do {
            let seq = try await log.append(reading.values, timestamp: timestamp, missingSensors: reading.missingSensors)
            let appendedAt = ContinuousClock.now
            metrics.appendLatency.record(appendedAt - start)
            metrics.appends.increment()
            if let gap = await recent.appended(at: appendedAt) { metrics.appendGapMax.set(gap.inSeconds) }
            metrics.head.set(Double(seq.rawValue))
            await settings.appended()
            await recent.add(.init(sequence: seq, timestamp: timestamp, values: reading.values, missing: reading.missingSensors))
            await recent.noteError(reading.errors.isEmpty ? nil : reading.errors.map(\.description).joined(separator: "; "))
            let streak = await recent.appendResult(failed: false)
            if streak.before > 0 { logger.notice("appends work again", metadata: ["failed_in_a_row": "\(streak.before)"]) }
            logger.trace("appended", metadata: ["seq": "\(seq)"])
        } catch {
            metrics.appendFailures.increment()
            await recent.noteError("append failed: \(error)")
            // Logged on the first failure and every 100th after (a full disk must not flood the journal).
            let streak = await recent.appendResult(failed: true)
            if streak.now == 1 || streak.now % 100 == 0 {
                logger.error("append failed; sampling continues and retries every tick", metadata: ["error": "\(error)", "failed_in_a_row": "\(streak.now)"])
            }
        }
    }
}
