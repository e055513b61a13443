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
                let key: FaultTarget = { if case .service = f.target { return .service(.mariadb) }; return f.target }()
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

    /// Carries out one target's steps in order; returns the ones that failed.
    private func run(lane steps: AsyncStream<Step>) async -> [String] {
        var errors: [String] = []
        for await step in steps {
            let (fleet, f, index, begin) = (self.fleet, step.fault, step.index, step.begin)
            do {
                try await runBlocking("lab fault") { try fleet.apply(f, index: index, begin: begin) }
            } catch {
                let message = "\(begin ? "begin" : "end") \(f.kind.rawValue) on \(f.target): \(error)"
                logger.warning("lab: fault action failed", metadata: ["fault": "\(message)"])
                errors.append(message)
            }
            // The fault took effect (or ended): what the figures need to know.
            await watcher.faultTookEffect(f, index: index, begin: begin)
        }
        return errors
    }
}
