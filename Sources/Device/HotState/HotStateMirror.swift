// HotStateMirror: the Redis mirror of the log, for dashboards and other device programs.
//
// Theory of operation
// - Redis is never on the durability path. The SQLite log is the truth; the mirror reads
//   the log and copies each record, in order, into the capped stream `measurement:values`
//   (XADD MAXLEN ~ N) with fields `seq`, `epoch`, `ts_ms`, then one field per sensor value
//   (strings, like the seed's stream).
// - `run()` wakes on every append of this process's `DeviceLog` and on a poll timer (appends
//   by other processes), reads the records after `lastMirrored` in bounded batches, and
//   pipelines them to Redis; after a catch-up it lets appends gather for `coalescing`
//   (100 ms), so a fast sampler costs one round trip per 100 ms, not one per reading. It
//   remembers `lastMirrored` in memory; on first contact it resumes after the stream's last
//   entry of the same epoch (so a restart of this program does not repeat entries), else
//   from the newest `streamMaxLength` records.
// - When Redis is down or restarts, the XADDs fail, `lastMirrored` stays, and the loop
//   retries after `retryDelay`: appends never wait for Redis, and the mirror catches up
//   from the log when Redis is back.
// - The runtime switches (`measurement:enabled`, …) are not the mirror's: `SwitchPoller`
//   reads and writes them, parsed by `SwitchKey.parse` (Runtime/).
import FieldlogCore
import Log
import Threading
import Logging
import Redis

/// Settings of the hot-state mirror.
public struct HotStateConfiguration: Sendable {
    /// Where Redis is.
    public var redis: RedisConfiguration
    /// Stream the records are mirrored to. Default "measurement:values".
    var streamKey: String = "measurement:values"
    /// Approximate cap of the stream (XADD MAXLEN ~). Default 10 000.
    var streamMaxLength: Int = 10_000
    /// Records per pipelined round trip. Default 500.
    public var batchSize: Int = 500
    /// Wait before retrying after Redis failed. Default 1 s.
    public var retryDelay: Duration = .seconds(1)
    /// How often to look for records appended by other processes. Default 500 ms.
    public var pollInterval: Duration = .milliseconds(500)
    /// After copying, appends of the next this long are copied together (one Redis round trip
    /// for them all instead of one per append). Default 100 ms.
    var coalescing: Duration = .milliseconds(100)
    public init(redis: RedisConfiguration) { self.redis = redis }
}

/// Mirrors a `DeviceLog` into Redis. Run `run()` as a service.
public final class HotStateMirror: @unchecked Sendable {
    // @unchecked: mutable state is guarded by `lock`; the Redis connection is thread-safe.
    public let configuration: HotStateConfiguration
    private let log: DeviceLog
    private let redis: RedisConnection
    private let logger: Logger
    private let lock = Lock()
    private var lastMirroredValue: SequenceNumber?
    private var redisDown = false

    public init(log: DeviceLog, configuration: HotStateConfiguration, logger: Logger = Logger(label: "fieldlog.hotstate")) {
        precondition(configuration.batchSize >= 1 && configuration.streamMaxLength >= 1)
        self.log = log
        self.configuration = configuration
        self.logger = logger
        self.redis = RedisConnection(configuration: configuration.redis, logger: logger)
    }

    deinit { redis.close() }

    /// Highest sequence number copied to Redis so far (nil before first contact).
    public var lastMirrored: SequenceNumber? { lock.withLock { lastMirroredValue } }

    /// Mirrors until cancelled. Never throws for Redis trouble (it retries); returns when
    /// the task is cancelled or the log is closed.
    public func run() async {
        let (wake, wakeContinuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let appends = log.appendNotifications()
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for await _ in appends { wakeContinuation.yield() }
                wakeContinuation.finish()   // the log was closed
            }
            group.addTask { [configuration] in
                while !Task.isCancelled {
                    try? await executorSleep(for: configuration.pollInterval)
                    wakeContinuation.yield()
                }
            }
            group.addTask {
                wakeContinuation.yield()
                for await _ in wake {
                    if Task.isCancelled { break }
                    if await !self.catchUp() {
                        try? await Task.sleep(for: self.configuration.retryDelay)
                    } else if self.configuration.coalescing > .zero {
                        // At 100 readings/s one round trip per append was a fifth of the
                        // device's CPU; the stream is for dashboards, 100 ms late is fine.
                        try? await executorSleep(for: self.configuration.coalescing)
                    }
                }
            }
            await group.next()
            group.cancelAll()
        }
    }

    /// Copies everything after `lastMirrored` to Redis. Returns false when Redis failed.
    @discardableResult
    public func catchUp() async -> Bool {
        do {
            var position: SequenceNumber
            if let known = lastMirrored {
                position = known
            } else {
                position = try await resumePosition()
                lock.withLock { if lastMirroredValue == nil { lastMirroredValue = position } }
            }
            while !Task.isCancelled {
                let records = try await log.records(from: position.next, limit: configuration.batchSize)
                guard let last = records.last else { break }
                let replies = try await redis.pipeline(records.map(xadd))
                for (record, reply) in zip(records, replies) {
                    if case .error(let message) = reply {
                        throw RedisError(operation: "XADD \(configuration.streamKey) seq \(record.sequence)", kind: .serverError, message: message)
                    }
                }
                position = last.sequence
                lock.withLock { lastMirroredValue = position }
            }
            markUp()
            return true
        } catch let error as LogError {
            logger.error("hot-state mirror cannot read the log", metadata: ["error": "\(error)"])
            return false
        } catch {
            markDown(error)
            return false
        }
    }

    /// Where to start when this mirror first reaches Redis.
    private func resumePosition() async throws -> SequenceNumber {
        let status = try await log.status()
        let reply = try await redis.command(["XREVRANGE", configuration.streamKey, "+", "-", "COUNT", "1"])
        if case .error(let message) = reply {
            throw RedisError(operation: "XREVRANGE \(configuration.streamKey)", kind: .serverError, message: message)
        }
        if let entry = reply.array?.first?.array, entry.count == 2, let fields = entry[1].array {
            var map: [String: String] = [:]
            var i = 0
            while i + 1 < fields.count {
                if let k = fields[i].string, let v = fields[i + 1].string, map[k] == nil { map[k] = v }
                i += 2
            }
            if map["epoch"] == log.epoch.hex, let s = map["seq"].flatMap(UInt64.init), s <= status.head.rawValue {
                return SequenceNumber(s)
            }
        }
        let window = UInt64(configuration.streamMaxLength)
        let fromWindow = status.head.rawValue > window ? status.head.rawValue - window : 0
        let fromRetained = (status.oldestRetained?.rawValue ?? status.head.rawValue + 1) - 1
        return SequenceNumber(max(fromWindow, fromRetained))
    }

    private func xadd(_ record: LogRecord) -> [[UInt8]] {
        var args: [String] = ["XADD", configuration.streamKey, "MAXLEN", "~", String(configuration.streamMaxLength), "*",
                              "seq", String(record.sequence.rawValue), "epoch", log.epoch.hex,
                              "ts_ms", String(record.timestamp.unixMilliseconds)]
        if record.timestamp.clockUnsynchronized { args += ["clock_unsynchronized", "1"] }
        for (name, value) in record.values.sorted {
            switch value {
            case .number(let d): args += [name, d == d.rounded() && abs(d) < 1e15 ? String(Int64(d)) : String(d)]
            case .text(let s): args += [name, s]
            }
        }
        if !record.missingSensors.isEmpty { args += ["missing", record.missingSensors.joined(separator: ",")] }
        return args.map { Array($0.utf8) }
    }

    private func markDown(_ error: Error) {
        let first = lock.withLock { () -> Bool in
            defer { redisDown = true }
            return !redisDown
        }
        if first {
            logger.warning("Redis unreachable; appends go on, the mirror will catch up", metadata: ["error": "\(error)"])
        }
    }

    private func markUp() {
        let wasDown = lock.withLock { () -> Bool in
            defer { redisDown = false }
            return redisDown
        }
        if wasDown { logger.info("Redis reachable again; mirror caught up", metadata: ["lastMirrored": "\(lastMirrored.map(\.description) ?? "-")"]) }
    }
}
