// The outage lab's scenarios in their short form, on real processes and real services:
// `fieldlog-device run` ×5+, `fieldlog-backend ingest` ×2, Redis, Mosquitto, MariaDB (and a
// Galera cluster), with faults on a seeded schedule, then heal, drain and the independent
// check. The long form is `fieldlog-lab run SCENARIO --duration 10m`.
//
// Seeds: each scenario has a fixed default seed so CI replays the same schedule;
// FIELDLOG_LAB_SEED=<n> replays another, FIELDLOG_LAB_SEED=random draws one (printed).
// The lab starts a stack of its own (own directory and ports) once for this class, since
// it kills and pauses the services; the shared test stack is never touched.
import Foundation
import Logging
import OutageLab
import Processes
import TestSupport
import XCTest

final class OutageScenarioTests: XCTestCase {
    nonisolated(unsafe) static var stackDir: String?
    nonisolated(unsafe) static var stackFailure: String?

    /// One lab stack for the whole class (single MariaDB); the Galera test starts its own.
    static func sharedStack() throws -> String {
        if let d = stackDir { return d }
        if let f = stackFailure { throw XCTSkip(f) }
        let dir = FileManager.default.temporaryDirectory.path + "/" + Stack.uniqueName("fieldlog-lab-stack")
        var env = ProcessInfo.processInfo.environment
        env["FIELDLOG_REDIS_PORT"] = String(Ports.free())
        env["FIELDLOG_MQTT_PORT"] = String(Ports.free())
        env["FIELDLOG_MARIADB_PORT"] = String(Ports.free())
        let r = try Tool.status(Stack.packageRoot + "/scripts/stack", ["up", "--dir", dir], environment: env, timeoutSeconds: 180)
        guard r.status == 0 else {
            stackFailure = "the lab stack did not start: \(r.stderr) \(r.stdout)"
            throw LabError.command(stackFailure!)
        }
        stackDir = dir
        atexit {
            if let d = OutageScenarioTests.stackDir {
                _ = try? Tool.status(Stack.packageRoot + "/scripts/stack", ["down", "--dir", d], timeoutSeconds: 120)
                try? FileManager.default.removeItem(atPath: d)
            }
        }
        return dir
    }

    /// The seed of a short run: FIELDLOG_LAB_SEED when set (a number, or "random"); otherwise
    /// the first seed from `value` on whose schedule (pure, computed before the run) every
    /// fault kind of the scenario occurs, so a short CI run still covers the whole scenario.
    static func seed(default value: UInt64, scenario name: String, seconds: Double) -> UInt64 {
        switch ProcessInfo.processInfo.environment["FIELDLOG_LAB_SEED"] {
        case .some("random"): return UInt64.random(in: 1...UInt64.max)
        case .some(let s): if let v = UInt64(s) { return v }
        case .none: break
        }
        guard let scenario = Scenario.named(name) else { return value }
        let kinds = Set(scenario.faults)
        var seed = value
        for _ in 0..<10_000 {
            let schedule = FaultSchedule.make(scenario: scenario, seed: seed, durationSeconds: seconds)
            var covered = Set(schedule.map(\.kind)) == kinds
            if kinds.contains(.serviceKill) {
                // every service killed at least once
                let killed = Set(schedule.filter { $0.kind == .serviceKill }.map(\.target.description))
                covered = covered && killed.count == (scenario.shape.galeraNodes > 0 ? 2 : 3)
            }
            if covered { return seed }
            seed += 1
        }
        return value
    }

    func options(_ name: String, seed: UInt64, seconds: Double, ownStack: Bool = false) throws -> LabOptions {
        let scenario = try XCTUnwrap(Scenario.named(name))
        var o = LabOptions(scenario: scenario, seed: seed, durationSeconds: seconds,
                           deviceBinary: try Binaries.path("fieldlog-device"), backendBinary: try Binaries.path("fieldlog-backend"),
                           stackScript: Stack.packageRoot + "/scripts/stack")
        if !ownStack { o.existingStackDirectory = try Self.sharedStack() }
        o.workDirectory = FileManager.default.temporaryDirectory.path + "/" + Stack.uniqueName("fieldlog-lab-\(name)")
        o.drainTimeoutSeconds = 180
        return o
    }

    func run(_ o: LabOptions) async throws -> LabReport {
        print("outage lab: scenario \(o.scenario.name) seed \(o.seed) (replay: FIELDLOG_LAB_SEED=\(o.seed), or fieldlog-lab run \(o.scenario.name) --seed \(o.seed))")
        let run = LabRun(options: o, logger: Logger(label: "lab")) { print($0) }
        let report = try await run.run()
        print(report.text)
        if report.passed { try? FileManager.default.removeItem(atPath: report.workDirectory) }
        return report
    }

    func assertPassed(_ report: LabReport, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertTrue(report.passed, "scenario \(report.scenario) failed with seed \(report.seed):\n\(report.text)", file: file, line: line)
        XCTAssertGreaterThan(report.verdict.appended, 0, "the fleet appended readings", file: file, line: line)
        XCTAssertGreaterThan(report.faults.count, 0, "faults were injected", file: file, line: line)
        // The recovery and continuity figures (issue 21) were measured; their values are
        // figures in the report, not assertions.
        XCTAssertFalse(report.figures.drainSamples.isEmpty, "healed → drained was measured", file: file, line: line)
        XCTAssertTrue(report.figures.devices.allSatisfy { $0.continuity.pairs > 0 }, "append gaps were measured on every device",
                      file: file, line: line)
    }

    func testCrashScenario() async throws {
        assertPassed(try await run(options("crash", seed: Self.seed(default: 101, scenario: "crash", seconds: 15), seconds: 15)))
    }

    func testServicesScenario() async throws {
        assertPassed(try await run(options("services", seed: Self.seed(default: 202, scenario: "services", seconds: 25), seconds: 25)))
    }

    func testNetworkScenario() async throws {
        assertPassed(try await run(options("network", seed: Self.seed(default: 303, scenario: "network", seconds: 15), seconds: 15)))
    }

    func testDiskScenario() async throws {
        let report = try await run(options("disk", seed: Self.seed(default: 404, scenario: "disk", seconds: 25), seconds: 25))
        assertPassed(report)
    }

    func testClockScenario() async throws {
        assertPassed(try await run(options("clock", seed: Self.seed(default: 505, scenario: "clock", seconds: 12), seconds: 12)))
    }

    func testCombinedScenario() async throws {
        assertPassed(try await run(options("combined", seed: Self.seed(default: 606, scenario: "combined", seconds: 30), seconds: 30)))
    }

    func testGaleraScenario() async throws {
        assertPassed(try await run(options("galera", seed: Self.seed(default: 707, scenario: "galera", seconds: 20), seconds: 20, ownStack: true)))
    }
}

/// The lab must catch a deliberately broken build: an ingest that acks each batch on receipt,
/// before its commit, and forgets it when the commit fails (the test-only program BrokenIngest:
/// `fieldlog-backend ingest` with that write injected, Tests/BrokenIngest). The network
/// scenario partitions ingest from MariaDB, so acked batches are lost and the devices' acked
/// pointers pass them.
final class BrokenBuildTests: XCTestCase {
    func testAckBeforeCommitIsCaught() async throws {
        let scenario = try XCTUnwrap(Scenario.named("network"))
        let seconds = 15.0
        // The schedule is pure: take the first seed from 1 on whose schedule cuts ingest ↔ MariaDB
        // early, so the check does not depend on luck.
        var seed: UInt64 = 1
        while !FaultSchedule.make(scenario: scenario, seed: seed, durationSeconds: seconds)
            .contains(where: { $0.kind == .databaseCut && $0.atSeconds < seconds / 2 && $0.durationSeconds > 2 }) { seed += 1 }
        var o = LabOptions(scenario: scenario, seed: seed, durationSeconds: seconds,
                           deviceBinary: try Binaries.path("fieldlog-device"), backendBinary: try Binaries.path("fieldlog-backend"),
                           stackScript: Stack.packageRoot + "/scripts/stack")
        o.existingStackDirectory = try OutageScenarioTests.sharedStack()
        o.workDirectory = FileManager.default.temporaryDirectory.path + "/" + Stack.uniqueName("fieldlog-lab-broken")
        o.ingestBinary = try Binaries.path("BrokenIngest")
        o.drainTimeoutSeconds = 60
        print("outage lab: broken build (ack before commit), scenario network seed \(seed)")
        let report = try await LabRun(options: o, logger: Logger(label: "lab")) { print($0) }.run()
        print(report.text)
        XCTAssertFalse(report.passed, "the lab passed a build that acks before commit:\n\(report.text)")
        XCTAssertGreaterThan(report.verdict.unexplained, 0, "lost readings are reported as unexplained")
        XCTAssertGreaterThan(report.verdict.ackedButMissing, 0, "acked pointers passed readings the database lacks")
        try? FileManager.default.removeItem(atPath: report.workDirectory)
    }
}
