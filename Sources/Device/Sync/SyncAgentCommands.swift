// The sync agent's commands: answering command messages, and the replays commands ask for.
//
// Commands are answered one at a time, in arrival order, by the command handler (opened on
// first use: its durable id file; while it cannot be opened, every command is answered with
// an error saying so). A replay is the owner loop's work: `replay` hands it over as an event
// and waits until the session has built the batches (or refused).
import FieldlogCore
import MQTT
import Sync

extension SyncAgent {
    // MARK: replay (called by the command handler)

    /// Republishes the requested range as replay batches and waits until the session has built
    /// them all (or refused the request).
    public func replay(_ query: ReplayQuery) async throws -> ReplayOutcome {
        return try await withCheckedThrowingContinuation { c in
            let sink = lock.withLock { eventSink }
            guard let sink, case .enqueued = sink.yield(.replay(query, c)) else {
                c.resume(throwing: CommandFailure(code: .failed, message: "the sync agent is not running; ask again later"))
                return
            }
        }
    }

    // MARK: commands

    /// The command handler, opened on first use; nil (and reported) while it cannot be.
    func openCommandHandler() -> Result<CommandHandler, any Error> {
        if let h = lock.withLock({ commandHandler }) { return .success(h) }
        do {
            let h = try makeCommandHandler()
            lock.withLock { commandHandler = h }
            commandsHealth?.running()
            return .success(h)
        } catch {
            commandsHealth?.degraded("cannot open the command-id file: \(error); commands are answered with an error")
            logger.error("commands unavailable: cannot open the command-id file; answering commands with an error", metadata: ["error": "\(error)"])
            return .failure(error)
        }
    }

    /// Answers one command message: executes it, or says why commands cannot run now.
    func handleCommand(_ m: MQTTMessage, mqtt: MQTTClient) async {
        var payload: [UInt8]
        var after: (@Sendable () async -> Void)?
        switch openCommandHandler() {
        case .success(let handler):
            let result = await handler.handle(m.payload)
            if let status = result.response?.status {
                // spec §3.5: `status` publishes a fresh status and replies with it.
                _ = try? await mqtt.publish(configuration.topics.status, payload: SyncCodec.encode(status), qos: .atLeastOnce,
                                            retain: true, properties: .init(contentType: SyncCodec.contentType))
            }
            payload = result.payload
            after = result.afterResponse
        case .failure(let error):
            metrics.commandErrors.increment()
            let command = try? SyncCodec.decodeCommand(m.payload)
            payload = SyncCodec.encode(CommandResponse(
                requestID: command?.requestID, command: command?.name ?? "unknown", error: .failed,
                message: "the device cannot record command ids durably (\(error)); not executed, ask again later"))
        }
        do {
            try await mqtt.publish(configuration.topics.response, payload: payload, qos: .atLeastOnce, retain: false,
                                   properties: .init(contentType: SyncCodec.contentType))
        } catch {
            logger.warning("cannot publish command response", metadata: ["error": "\(error)"])
        }
        await after?()
    }
}
