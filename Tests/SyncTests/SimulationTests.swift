import Dispatch
import Foundation
import Synchronization
import XCTest

/// Runs the deterministic simulation (Simulation.swift) over many seeds.
///
/// `FIELDLOG_SIM_SEED=<n>` replays one seed with a trace; `FIELDLOG_SIM_SEEDS=<count>`
/// changes how many seeds the suite runs (default 10,000).
final class SimulationTests: XCTestCase {
    func testManySeedsKeepEveryInvariantAndConverge() throws {
        let env = ProcessInfo.processInfo.environment
        if let text = env["FIELDLOG_SIM_SEED"] {
            let seed = try XCTUnwrap(UInt64(text), "FIELDLOG_SIM_SEED must be an unsigned integer")
            let sim = Simulation(seed: seed, verbose: true)
            do { try sim.run() } catch {
                print(sim.trace.suffix(400).joined(separator: "\n"))
                XCTFail("\(error)")
                return
            }
            print(sim.trace.suffix(60).joined(separator: "\n"))
            print("seed \(seed) passed in \(sim.step) steps")
            return
        }
        let count = UInt64(env["FIELDLOG_SIM_SEEDS"] ?? "") ?? 10_000
        let base = UInt64(env["FIELDLOG_SIM_BASE"] ?? "") ?? 0x5EED_0000
        let start = Date()
        // Seeds are independent: run them on every core, in chunks, each seed alone replayable.
        struct Totals { var steps = 0; var stats = Simulation.Stats(); var failures: [SimulationFailure] = [] }
        let totals = Mutex(Totals())
        let chunks = 64
        DispatchQueue.concurrentPerform(iterations: chunks) { chunk in
            var local = Totals()
            var seed = base + UInt64(chunk)
            while seed < base + count {
                let sim = Simulation(seed: seed)
                do throws(SimulationFailure) { try sim.run() } catch { local.failures.append(error); break }
                local.steps += sim.step
                local.stats.add(sim.stats)
                seed += UInt64(chunks)
            }
            totals.withLock { t in
                t.steps += local.steps
                t.stats.add(local.stats)
                t.failures += local.failures
            }
        }
        let result = totals.withLock { $0 }
        if let first = result.failures.min(by: { $0.seed < $1.seed }) {
            XCTFail("\(first)\nreplay with: FIELDLOG_SIM_SEED=\(first.seed) swift test --filter SimulationTests/testManySeedsKeepEveryInvariantAndConverge")
            return
        }
        let stats = result.stats
        let steps = result.steps
        print("simulation: \(count) seeds, \(steps) steps, \(String(format: "%.1f", Date().timeIntervalSince(start))) s; exercised: \(stats)")
        // The run is only worth something if the faults really happened.
        XCTAssertGreaterThan(stats.resends, 0)
        XCTAssertGreaterThan(stats.compactBatches, 0, "odd seeds send compact batches")
        XCTAssertGreaterThan(stats.deviceCrashes, 0)
        XCTAssertGreaterThan(stats.receiverCrashes, 0)
        XCTAssertGreaterThan(stats.notRetainedMarkers, 0)
        XCTAssertGreaterThan(stats.diskQuotaDrops, 0)
        XCTAssertGreaterThan(stats.staleThroughs, 0)
        XCTAssertGreaterThan(stats.subscribeFailures, 0)
        XCTAssertGreaterThan(stats.senderPauses, 0)
        XCTAssertGreaterThan(stats.replaysRefused, 0)
        // The store fails as MariaDB does, and a hostile device sends garbage, in every run of seeds.
        XCTAssertGreaterThan(stats.connectionFailures, 0)
        XCTAssertGreaterThan(stats.conflicts, 0)
        XCTAssertGreaterThan(stats.refusals, 0)
        XCTAssertGreaterThan(stats.isolations, 0)
        XCTAssertGreaterThan(stats.notAcked, 0)
        XCTAssertGreaterThan(stats.hostile, 0)
        XCTAssertGreaterThan(stats.deadLetters, 0)
    }

    /// The harness must catch each deliberately broken variant within a few hundred seeds.
    func testBrokenVariantsAreCaught() {
        for variant in SimulationVariant.allCases where variant != .correct {
            var caught: SimulationFailure?
            for seed in UInt64(1)...400 {
                do { try Simulation(seed: seed, variant: variant).run() } catch { caught = error; break }
            }
            XCTAssertNotNil(caught, "variant \(variant) was not caught in 400 seeds")
            if let caught { print("variant \(variant) caught: \(caught)") }
        }
    }
}
