// Connecting at start-up. The MQTT client reconnects by itself once it was connected; the
// first connect, though, throws when the broker is unreachable — normal for a device that
// boots offline, or a backend started before its broker. Retry with backoff and jitter
// (so a fleet does not reconnect in lock step) until it works or the task is cancelled.

import Logging
import MQTT

extension MQTTClient {
    /// Connects, retrying with `policy`'s backoff and jitter until connected or cancelled.
    func connectRetrying(policy: MQTTReconnectPolicy, logger: Logger) async throws {
        let backoff = ReconnectBackoff(policy: policy)
        var attempt = 0
        while true {
            do {
                try await connect()
                return
            } catch {
                attempt += 1
                let delay = backoff.delay(attempt: attempt, randomUnit: Double.random(in: 0..<1))
                logger.warning("sync could not connect to the broker; retrying",
                               metadata: ["attempt": "\(attempt)", "delay": "\(delay)", "error": "\(error)"])
                try await Task.sleep(for: delay)
            }
        }
    }
}
