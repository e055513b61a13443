// FaultPlayer: plays a run's seeded fault schedule against the clock.
//
// Theory of operation: the schedule's begin and end events are sorted by time and released
// when their time comes (the player sleeps until the next event or progress line, it does not
// poll). Each target has a lane of its own — a child task that takes its steps in order and
// carries each out on a thread of its own (`LabFleet.apply` blocks) — so a slow restart
// (mariadbd recovery) never delays faults on other targets. All stack services share one
// lane: a service fault starts only after the previous one's restart finished (a Galera node
// is synced again), so two nodes are never down at once because a rejoin took longer than the
// schedule assumed (quorum would be lost). At the end of the phase every fault still open is
// ended, in schedule order, and the player waits until every lane is done. The watcher is
// told when a fault begins and when each step took effect. Cancelling the task drops the
// steps still queued (teardown must not wait behind them).
import Logging
import Processes

struct FaultPlayer: Sendable {
    let fleet: LabFleet
    let watcher: FleetWatcher
    let logger: Logger

    /// What playing a schedule left: steps that failed, and how many faults began.
    struct Outcome: Sendable {
        var errors: [String]
        var started: Int
    }

    /// One step of one fault.
    private struct Step: Sendable {
        var fault: ScheduledFault
        var index: Int
        var begin: Bool
    }

    /// Plays `schedule` for `seconds`, calling `progress` (seconds elapsed, faults active, faults
    /// started) every `progressEvery` seconds; returns once every step took effect.
    func play(_ schedule: [ScheduledFault], seconds: Double, progressEvery: Double,
              progress: @Sendable (_ elapsed: Double, _ active: [ScheduledFault], _ started: Int) async -> Void) async throws -> Outcome {
        var events: [(at: Double, begin: Bool, index: Int)] = []
        for (i, f) in schedule.enumerated() {
            events.append((f.atSeconds, true, i))
            events.append((f.atSeconds + f.durationSeconds, false, i))
        }
        events.sort { $0.at < $1.at || ($0.at == $1.at && !$0.begin && $1.begin) }

        return try await withThrowingTaskGroup(of: [String].self) { group in
            var lanes: [FaultTarget: AsyncStream<Step>.Continuation] = [:]
            var active: [Int: ScheduledFault] = [:]
            var started = 0
            func dispatch(_ index: Int, begin: Bool) async {
                let f = schedule[index]
                if begin {
                    active[index] = f
                    started += 1
                    await watcher.faultBegins(f, index: index)
                } else {
                    guard active.removeValue(forKey: index) != nil else { return }
                }
                // A device move is a map change, which needs every shard up: it shares the services' lane.
                let key: FaultTarget = {
                    if case .service = f.target { return .service(.mariadb) }
                    return f.kind == .deviceMove ? .service(.mariadb) : f.target
                }()
                if lanes[key] == nil {
                    let (steps, lane) = AsyncStream.makeStream(of: Step.self)
                    lanes[key] = lane
                    group.addTask { await self.run(lane: steps) }
                }
                lanes[key]!.yield(Step(fault: f, index: index, begin: begin))
            }

            let t0 = ContinuousClock.now
            func elapsed() -> Double { (ContinuousClock.now - t0).inSeconds }
            var next = 0
            var nextProgress = progressEvery
            while true {
                let now = elapsed()
                if now >= seconds { break }
                try Task.checkCancellation()
                while next < events.count && events[next].at <= now {
                    await dispatch(events[next].index, begin: events[next].begin)
                    next += 1
                }
                if now >= nextProgress {
                    nextProgress = now + progressEvery
                    await progress(now, Array(active.values), started)
                }
                let wake = min(seconds, nextProgress, next < events.count ? events[next].at : seconds)
                try await Task.sleep(until: t0 + .milliseconds(Int64((wake * 1000).rounded(.up))), clock: .continuous)
            }
            // End every fault still open (in schedule order), then wait for every lane.
            while next < events.count {
                if !events[next].begin { await dispatch(events[next].index, begin: false) }
                next += 1
            }
            for lane in lanes.values { lane.finish() }
            var errors: [String] = []
            for try await laneErrors in group { errors += laneErrors }
            return Outcome(errors: errors, started: started)
        }
    }

    /// A shard's outage as its begin saw it (sharded runs).
    private struct ShardOutage: Sendable {
        var shard: Int
        var homes: [String: Int]
        var acked: [UInt64]
        var deviceFaults: [Int: Int]
        var since: Double
    }

    /// Carries out one target's steps in order; returns the ones that failed.
    private func run(lane steps: AsyncStream<Step>) async -> [String] {
        var errors: [String] = []
        var outages: [Int: ShardOutage] = [:]
        for await step in steps {
            let (fleet, f, index, begin) = (self.fleet, step.fault, step.index, step.begin)
            var finding: String?
            var homes: [String: Int] = [:]
            let moveStart = monotonicSeconds()
            if f.kind == .shardKill {
                if begin {
                    homes = (try? await runBlocking("lab shards") { try fleet.stack.shardsOf(fleet.devices.map(\.id)) }) ?? [:]
                } else if let o = outages.removeValue(forKey: index) {
                    // The shard stays down for the fault's duration from when it really went down
                    // (a kill queued behind a slow move must not shrink the window).
                    let remaining = f.durationSeconds - 1 - (monotonicSeconds() - o.since)
                    if remaining > 0 { try? await Task.sleep(for: .milliseconds(Int64(remaining * 1000))) }
                    try? await Task.sleep(for: .milliseconds(300))   // one more poll of the device logs
                    finding = await checkOtherShardsAcked(o)
                }
            }
            do {
                try await runBlocking("lab fault") { try fleet.apply(f, index: index, begin: begin) }
                if f.kind == .shardKill, begin, case .service(.shard(let k)) = f.target {
                    // What was in flight on the shard has been acked or never will be: the baseline.
                    try? await Task.sleep(for: .seconds(1))
                    outages[index] = ShardOutage(shard: k, homes: homes, acked: await watcher.ackedPointers,
                                                 deviceFaults: await watcher.deviceFaultsBegun, since: monotonicSeconds())
                }
                if f.kind == .deviceMove, begin, case .device(let i) = f.target {
                    await watcher.note(String(format: "device %@ moved to the other shard mid-stream in %.1f s", fleet.devices[i].id,
                                              monotonicSeconds() - moveStart))
                }
            } catch {
                let message = "\(begin ? "begin" : "end") \(f.kind.rawValue) on \(f.target): \(error)"
                logger.warning("lab: fault action failed", metadata: ["fault": "\(message)"])
                errors.append(message)
            }
            if let finding {
                logger.warning("lab: \(finding)")
                errors.append(finding)
            }
            // The fault took effect (or ended): what the figures need to know.
            await watcher.faultTookEffect(f, index: index, begin: begin)
        }
        return errors
    }

    /// While shard `o.shard` was down, every device on another shard that no fault of its own
    /// stopped must have been acked further (a shard that is down stops only its devices).
    /// Returns the finding, nil when there is none; notes what each device did.
    private func checkOtherShardsAcked(_ o: ShardOutage) async -> String? {
        let now = await watcher.ackedPointers
        let faultsNow = await watcher.deviceFaultsBegun
        var others: [String] = [], stalled: [String] = [], own: [String] = []
        for d in fleet.devices {
            guard let home = o.homes[d.id] else { continue }
            let before = o.acked[d.index], after = now[d.index]
            if home == o.shard { own.append("\(d.id) +\(after - before)"); continue }
            let quiet = (faultsNow[d.index] ?? 0) == (o.deviceFaults[d.index] ?? 0)
            guard quiet, await !watcher.deviceFaulted(d.index) else { continue }
            others.append("\(d.id) +\(after - before)")
            if after <= before { stalled.append(d.id) }
        }
        await watcher.note(String(format: "shard %d down: devices on other shards acked %@; its own %@ (over %.1f s)", o.shard,
                                  others.joined(separator: ", "), own.joined(separator: ", "), monotonicSeconds() - o.since))
        if others.isEmpty { return "shard \(o.shard) down: no device on another shard could be watched (all faulted)" }
        if !stalled.isEmpty { return "shard \(o.shard) down: devices on other shards were not acked meanwhile: \(stalled.joined(separator: ", "))" }
        return nil
    }
}
