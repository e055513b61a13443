// The switch poller: keeps `RuntimeSettings` and Redis in step.
//
// Theory of operation: every `pollInterval`, and at once after a local change, it first writes the switches changed locally
// (commands, the button) with SET, then reads all four with one pipelined GET. A key that is
// absent keeps the last known value (the seed's fallback); an invalid value is logged and
// ignored. When Redis does not answer, nothing changes: the sampler and the sender go on with
// the last known values, and the local changes wait until Redis is back. Redis' availability
// is shown on /status and /metrics (and as the `redis_switches` component's state). Never
// throws for Redis trouble.
#if canImport(Glibc)
import Glibc
#endif
import Logging
import Redis
import ServiceLifecycle

public struct SwitchPoller: Service {
    public let redis: RedisConnection
    public let settings: RuntimeSettings
    public let metrics: DeviceMetrics
    public let pollInterval: Duration
    public let logger: Logger
    /// Where Redis' availability is reported as this component's state.
    public let health: ComponentHealth.Reporter?

    public init(redis: RedisConfiguration, settings: RuntimeSettings, metrics: DeviceMetrics, pollInterval: Duration = .seconds(1), logger: Logger,
                health: ComponentHealth.Reporter? = nil) {
        self.redis = RedisConnection(configuration: redis, logger: logger)
        self.settings = settings
        self.metrics = metrics
        self.pollInterval = pollInterval
        self.logger = logger
        self.health = health
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            var wasUp: Bool? = nil
            while !Task.isCancelled {
                let up = await pollOnce()
                if up != wasUp {
                    if up { logger.info("Redis reachable", metadata: ["redis": "\(redis.configuration.endpointDescription)"]) }
                    else { logger.warning("Redis unreachable; keeping the last known switches", metadata: ["redis": "\(redis.configuration.endpointDescription)"]) }
                    wasUp = up
                }
                // Wake early on a local change, so it reaches Redis within milliseconds.
                await settings.waitForChange(timeout: pollInterval)
            }
        }
        redis.close()
    }

    /// One round: write pending, read all. Returns whether Redis answered.
    @discardableResult
    public func pollOnce() async -> Bool {
        do {
            let pending = await settings.pendingWrites
            if !pending.isEmpty {
                let keys = Array(pending.keys)
                let replies = try await redis.pipeline(keys.map { k in ["SET", k.rawValue, pending[k]!.redisText].map { Array($0.utf8) } })
                var written: [SwitchKey: SwitchValue] = [:]
                for (k, r) in zip(keys, replies) {
                    if case .error(let m) = r { logger.error("SET failed", metadata: ["key": "\(k.rawValue)", "error": "\(m)"]) } else { written[k] = pending[k]! }
                }
                await settings.writesDone(written)
            }
            let keys = SwitchKey.allCases
            let replies = try await redis.pipeline(keys.map { [Array("GET".utf8), Array($0.rawValue.utf8)] })
            var values: [SwitchKey: String?] = [:]
            for (k, r) in zip(keys, replies) {
                if case .error(let m) = r {
                    logger.warning("GET failed", metadata: ["key": "\(k.rawValue)", "error": "\(m)"])
                    continue
                }
                values[k] = r.isNull ? String?.none : r.string
            }
            for problem in await settings.applyRemote(values) {
                logger.warning("ignoring an invalid switch value in Redis; keeping the last known one", metadata: ["problem": "\(problem)"])
            }
            metrics.redisAvailable.set(Double(1))
            health?.running()
            return true
        } catch {
            await settings.setRedisAvailable(false)
            metrics.redisAvailable.set(Double(0))
            health?.degraded("Redis \(redis.configuration.endpointDescription) does not answer (\(error)); keeping the last known switches")
            logger.debug("Redis poll failed", metadata: ["error": "\(error)"])
            return false
        }
    }
}
