// The sync agent's owner loop: the only code that touches the `DeviceSyncStateMachine`.
//
// It takes the agent's events one at a time, in order, feeds each to the machine and carries
// out the actions the machine returns (see SyncAgent.swift for where the events come from).
import FieldlogCore
import Log
import Logging
import MQTT
import Sync
import Threading

extension SyncAgent {
    /// The owner loop: the only code that touches the state machine.
    final class OwnerLoop: @unchecked Sendable {
        // @unchecked: used by exactly one task (the loop).
        let agent: SyncAgent
        let mqtt: MQTTClient
        let sink: AsyncStream<Event>.Continuation
        let commandSink: AsyncStream<MQTTMessage>.Continuation
        var machine: Machine
        var timers: [Machine.Timer: Task<Void, Never>] = [:]
        var replayWaiters: [Machine.ReplayTicket: CheckedContinuation<ReplayOutcome, any Error>] = [:]
        var nextTicket: Machine.ReplayTicket = 0
        var shuttingDown = false

        init(agent: SyncAgent, mqtt: MQTTClient, sink: AsyncStream<Event>.Continuation,
             commandSink: AsyncStream<MQTTMessage>.Continuation, machine: Machine) {
            self.agent = agent
            self.mqtt = mqtt
            self.sink = sink
            self.commandSink = commandSink
            self.machine = machine
        }

        var logger: Logger { agent.logger }
        var topics: DeviceConfiguration.Topics { agent.configuration.topics }
        var wallMs: Int64 { WallClock.now().unixMilliseconds }

        func run(_ events: AsyncStream<Event>) async {
            for await event in events {
                let now = ContinuousClock.now
                switch event {
                case .shutdown where !shuttingDown:
                    shuttingDown = true
                    await perform(machine.shuttingDown(wallMilliseconds: wallMs))
                    for t in timers.values { t.cancel() }
                    for (_, c) in replayWaiters { c.resume(throwing: CommandFailure(code: .failed, message: "the device is shutting down")) }
                    replayWaiters = [:]
                    // No new events; what is still buffered is drained below, so a replay that
                    // raced the shutdown is answered too (its command waits for it).
                    agent.endEvents()
                    continue
                case _ where shuttingDown:
                    if case .replay(_, let c) = event { c.resume(throwing: CommandFailure(code: .failed, message: "the device is shutting down")) }
                    continue
                case .shutdown:
                    continue
                case .mqtt(let e):
                    await handleConnection(e, now: now)
                case .message(let m):
                    if m.topic == topics.ack {
                        await perform(machine.ackPayloadReceived(m.payload, now: now))
                    } else if m.topic == topics.request || m.topic == topics.broadcast {
                        commandSink.yield(m)
                    }
                case .tick:
                    let switches = await agent.settings.switches
                    if switches.senderEnabled != machine.isSenderEnabled {
                        logger.info(switches.senderEnabled ? "sender enabled (mqtt_sender:enabled)" : "sender paused (mqtt_sender:enabled is 0)")
                        await perform(machine.senderSwitched(enabled: switches.senderEnabled, now: now))
                    }
                    do {
                        let head = try await agent.log.head()
                        await perform(machine.headObserved(head, measuring: switches.measurementEnabled, now: now, wallMilliseconds: wallMs))
                    } catch {
                        logger.error("cannot read the log head", metadata: ["error": "\(error)"])
                    }
                case .timer(let kind, let at):
                    await perform(machine.timerFired(kind, now: max(now, at)))
                case .subscribeAnswered(let connection, let error):
                    if let error {
                        logger.warning("subscribe failed; retrying", metadata: ["error": "\(error)"])
                        agent.mqttHealth?.degraded("subscribe failed: \(error)")
                        await perform(machine.subscribeFailed(connection: connection, now: now))
                    } else {
                        await perform(machine.subscribed(connection: connection, now: now))
                        if machine.isSubscribed { agent.mqttHealth?.running() }
                    }
                case .replay(let query, let continuation):
                    nextTicket += 1
                    replayWaiters[nextTicket] = continuation
                    do {
                        let status = try await agent.log.status()
                        await perform(machine.replayRequested(query, ticket: nextTicket, oldestRetained: status.oldestRetained,
                                                              logHead: status.head, now: now))
                    } catch {
                        replayWaiters.removeValue(forKey: nextTicket)?.resume(throwing: error)
                    }
                case .published(let batch, let result):
                    switch result {
                    case .success:
                        agent.metrics.batchesSent.increment()
                        if batch.resendCount > 0 { agent.metrics.resends.increment() }
                        await perform(machine.publishConfirmed(batch.batch.range))
                    case .failure(let error):
                        // The session resends on its timer or on reconnect; nothing to do here.
                        logger.debug("batch publish not confirmed", metadata: ["range": "\(batch.batch.range)", "error": "\(error)"])
                    }
                }
                let sender = machine.sender
                agent.updateSnapshot {
                    $0.head = sender.head
                    $0.acked = sender.acked
                    $0.inFlight = sender.inFlightRanges
                    $0.subscribed = self.machine.isSubscribed
                    $0.senderEnabled = self.machine.isSenderEnabled
                }
                agent.metrics.backlog.set(Double(sender.backlog))
                agent.metrics.head.set(Double(sender.head.rawValue))
            }
        }

        func handleConnection(_ e: MQTTConnectionEvent, now: ContinuousClock.Instant) async {
            switch e {
            case .connected(let sessionPresent):
                let n = agent.snapshot.connects
                if n > 0 { agent.metrics.reconnects.increment() }
                agent.metrics.mqttConnected.set(Double(1))
                logger.info("MQTT connected", metadata: ["session_present": "\(sessionPresent)", "connects": "\(n + 1)"])
                agent.updateSnapshot { $0.connected = true; $0.connects += 1; $0.lastError = nil }
                await perform(machine.brokerConnected(now: now, wallMilliseconds: wallMs))
            case .disconnected(let error):
                agent.metrics.mqttConnected.set(Double(0))
                agent.updateSnapshot { $0.connected = false; $0.lastError = error.map { "\($0)" } }
                agent.mqttHealth?.degraded("disconnected from the broker: \(error.map { "\($0)" } ?? "-"); reconnecting")
                logger.warning("MQTT disconnected; sampling goes on, unacked records are resent after reconnect",
                               metadata: ["error": "\(error.map { "\($0)" } ?? "-")"])
                await perform(machine.brokerDisconnected(now: now))
            case .connectFailed(let error):
                agent.updateSnapshot { $0.lastError = "\(error)" }
                agent.mqttHealth?.degraded("cannot connect to the broker: \(error); retrying")
                logger.debug("MQTT connect attempt failed", metadata: ["error": "\(error)"])
            case .reconnecting(let attempt, let delay):
                logger.debug("MQTT reconnecting", metadata: ["attempt": "\(attempt)", "delay": "\(delay)"])
            }
        }

        func perform(_ actions: [Machine.Action]) async {
            var queue = actions[...]
            while let action = queue.popFirst() {
                logger.trace("sync action", metadata: ["action": "\(action)"])
                switch action {
                case .subscribe(let connection):
                    let mqtt = self.mqtt, sink = self.sink, filters = [topics.ack, topics.request, topics.broadcast]
                    Task(executorPreference: currentTaskExecutorPreference()) {
                        do {
                            for filter in filters { try await mqtt.subscribe(filter, qos: .atLeastOnce) }
                            sink.yield(.subscribeAnswered(connection: connection, error: nil))
                        } catch {
                            sink.yield(.subscribeAnswered(connection: connection, error: error))
                        }
                    }
                case .loadRecords(let from, let through, let limit):
                    do {
                        let entries = try await agent.log.entries(in: SequenceRange(checked: from, through), limit: limit)
                        var records: [LogRecord] = []
                        var losses: [LossMarker] = []
                        for e in entries {
                            switch e {
                            case .record(let r): records.append(r)
                            case .loss(let l): losses.append(l)
                            }
                        }
                        let retainedFrom = try await agent.log.retainedFrom()
                        queue.append(contentsOf: machine.recordsLoaded(
                            from: from, records: records, losses: losses, retainedFrom: retainedFrom,
                            nowUnixMilliseconds: wallMs, now: ContinuousClock.now))
                    } catch {
                        logger.error("cannot read records for a batch", metadata: ["error": "\(error)"])
                    }
                case .publishBatch(let outgoing):
                    let mqtt = self.mqtt, topic = topics.values, sink = self.sink
                    Task(executorPreference: currentTaskExecutorPreference()) {
                        do {
                            try await mqtt.publish(topic, payload: outgoing.payload, qos: .atLeastOnce, retain: false,
                                                   properties: .init(contentType: outgoing.encoding.contentType))
                            sink.yield(.published(outgoing, .success(())))
                        } catch let e as MQTTError {
                            sink.yield(.published(outgoing, .failure(e)))
                        } catch {
                            sink.yield(.published(outgoing, .failure(MQTTError(operation: "publish", kind: .library, message: "\(error)"))))
                        }
                    }
                case .persistAcked(let through):
                    do {
                        let acked = try await agent.log.markAcked(through: through)
                        agent.metrics.acks.increment()
                        agent.metrics.ackedThrough.set(Double(acked.rawValue))
                        logger.debug("acked", metadata: ["through": "\(acked)"])
                    } catch {
                        // Persisting may lag: after a restart the sender resends from the older
                        // pointer and the backend absorbs the duplicates.
                        logger.error("cannot persist the acked pointer", metadata: ["error": "\(error)"])
                    }
                case .publishStatus(var built):
                    // The day's MQTT data goes with the online status (spec §3.4).
                    if built.state == .online { built.dataUsage = agent.metrics.dataBudget.today() }
                    let status = built, mqtt = self.mqtt, topic = topics.status, logger = self.logger
                    let publish: @Sendable () async throws -> Void = {
                        try await mqtt.publish(topic, payload: SyncCodec.encode(status), qos: .atLeastOnce, retain: true,
                                               properties: .init(contentType: SyncCodec.contentType))
                    }
                    if shuttingDown {
                        // The offline status goes out before the disconnect, but never holds shutdown up.
                        _ = try? await withTimeout(.seconds(2), publish)
                    } else {
                        Task(executorPreference: currentTaskExecutorPreference()) {
                            do { try await publish() } catch { logger.debug("status publish failed", metadata: ["error": "\(error)"]) }
                        }
                    }
                case .armTimer(let kind, let at):
                    timers[kind]?.cancel()
                    let sink = self.sink
                    timers[kind] = Task(executorPreference: currentTaskExecutorPreference()) {
                        try? await executorSleep(until: at)
                        if !Task.isCancelled { sink.yield(.timer(kind, at)) }
                    }
                case .cancelTimer(let kind):
                    timers.removeValue(forKey: kind)?.cancel()
                case .answerReplay(let ticket, let answer):
                    guard let c = replayWaiters.removeValue(forKey: ticket) else { continue }
                    switch answer {
                    case .finished(let resent, let notRetained): c.resume(returning: ReplayOutcome(resent: resent, notRetained: notRetained))
                    case .refused(let why): c.resume(throwing: CommandFailure(code: .failed, message: why))
                    }
                case .reportAnomaly(let text):
                    logger.warning("sync anomaly", metadata: ["detail": "\(text)"])
                }
            }
        }
    }
}
