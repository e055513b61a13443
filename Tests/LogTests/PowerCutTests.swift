// Simulated power cuts through CrashVFS (shared/notes/POWERLOSS.md §4).
//
// Each case: a fresh directory; 4 concurrent appenders (two on the log's own executor, two on
// Swift's pool) run the real append API (group commit included) through the crash VFS; at a seeded random mutating I/O operation the power is
// cut (queued writes applied, dropped or torn); every connection is closed; the file is
// reopened through the plain "unix" VFS and checked. The seed is printed; set
// FIELDLOG_POWERCUT_SEED to replay.
@testable @_spi(Testing) import Log
import FieldlogCore
import Foundation
import Logging
import TestSupport
import XCTest

final class PowerCutTests: XCTestCase {
    static let device = try! DeviceID("powercut-device")

    struct Workload {
        var acked: [(seq: SequenceNumber, tag: Int)] = []
        var failedTags: [Int] = []
        var attempted = 0
        var epoch: Epoch?
        /// The highest pointer `markAcked` returned (0: no acker, or none returned).
        var ackedPointer: UInt64 = 0
    }

    enum Outcome: Equatable {
        case ok
        case lost(String)
        case corrupt(String)
    }

    /// Runs the appenders until `appends` are done or the power is cut.
    /// With `acks`, a fifth task acknowledges what has been appended, as the sync agent does
    /// (its commits are not fsynced on their own: docs/log.md, "Guarantees").
    func runWorkload(path: String, configuration: LogConfiguration, appends: Int = 48, concurrency: Int = 4, acks: Bool = false) async -> Workload {
        var result = Workload()
        let log: DeviceLog
        var quiet = Logger(label: "powercut")
        quiet.logLevel = .critical   // failed batches after the cut are expected
        do { log = try await DeviceLog.open(path: path, device: Self.device, configuration: configuration, logger: quiet) } catch { return result }
        result.epoch = log.epoch
        await withTaskGroup(of: Workload.self) { group in
            for worker in 0..<concurrency {
                // Half the appenders run on the log's own executor (as the device's sampler
                // does), half on Swift's pool: both hand-offs to the group commit are cut.
                group.addTask(executorPreference: worker % 2 == 1 ? log.executor : nil) {
                    var w = Workload()
                    for i in 0..<(appends / concurrency) {
                        let tag = worker * 10_000 + i
                        w.attempted += 1
                        do {
                            let values = try SensorValues(["tag": .number(Double(tag)), "temp": .number(20.5 + Double(i))])
                            let seq = try await log.append(values)
                            w.acked.append((seq, tag))
                        } catch {
                            w.failedTags.append(tag)
                            if CrashVFS.shared.isCrashed { break }
                        }
                    }
                    return w
                }
            }
            if acks {
                group.addTask {
                    var w = Workload()
                    // Until the appenders are done (head reaches the appends, or the power is cut).
                    while !CrashVFS.shared.isCrashed {
                        guard let head = try? await log.head() else { break }
                        if let through = try? await log.markAcked(through: head) { w.ackedPointer = max(w.ackedPointer, through.rawValue) }
                        if head.rawValue >= UInt64(appends) { break }
                        try? await Task.sleep(for: .milliseconds(1))
                    }
                    return w
                }
            }
            for await w in group {
                result.acked += w.acked
                result.failedTags += w.failedTags
                result.attempted += w.attempted
                result.ackedPointer = max(result.ackedPointer, w.ackedPointer)
            }
        }
        await log.close()
        return result
    }

    /// Reopens through the default VFS and checks the invariants.
    func verify(path: String, workload: Workload) async -> Outcome {
        let log: DeviceLog
        do {
            log = try await DeviceLog.open(path: path, device: nil)
        } catch {
            // A log whose creation never became durable may be absent or empty, but only if
            // no append had returned.
            if workload.acked.isEmpty, let e = error as? LogError {
                switch e {
                case .missing: return .ok
                case .notAFieldlogLog(_, let reason) where reason.contains("empty"): return .ok
                default: break
                }
            }
            return workload.acked.isEmpty ? .corrupt("open: \(error)") : .lost("open after cut failed with \(workload.acked.count) acked appends: \(error)")
        }
        let outcome = await verifyOpened(log, workload: workload)
        await log.close()
        return outcome
    }

    func verifyOpened(_ log: DeviceLog, workload: Workload) async -> Outcome {
        do {
            if let epoch = workload.epoch, !workload.acked.isEmpty, epoch != log.epoch {
                return .lost("epoch changed from \(epoch) to \(log.epoch)")
            }
            let problems = try await log.check()
            if !problems.isEmpty { return .corrupt("check: \(problems.joined(separator: "; "))") }
            let head = try await log.head()
            let records = try await log.records(from: SequenceNumber(1), limit: 100_000)
            guard records.count == Int(head.rawValue) else { return .corrupt("\(records.count) records for head \(head)") }
            for (i, r) in records.enumerated() where r.sequence.rawValue != UInt64(i + 1) {
                return .corrupt("record \(i + 1) has seq \(r.sequence)")
            }
            if head.rawValue > UInt64(workload.attempted) { return .corrupt("head \(head) beyond \(workload.attempted) attempted appends") }
            let ackedPointer = try await log.ackedThrough()
            if ackedPointer.rawValue > head.rawValue { return .corrupt("acked \(ackedPointer) beyond head \(head)") }
            if ackedPointer.rawValue > workload.ackedPointer {
                return .corrupt("acked \(ackedPointer) beyond the highest markAcked returned, \(workload.ackedPointer)")
            }
            var tags: [Int: SequenceNumber] = [:]
            for r in records {
                guard case .number(let t)? = r.values["tag"] else { return .corrupt("record \(r.sequence) has no tag") }
                if let other = tags[Int(t)] { return .corrupt("tag \(Int(t)) stored twice, at \(other) and \(r.sequence)") }
                tags[Int(t)] = r.sequence
            }
            // What survived must be a prefix of the acked history: every acked seq ≤ head
            // holds exactly that append; acked seqs beyond the head are lost.
            var firstLost: String?
            for (seq, tag) in workload.acked {
                if seq > head {
                    if firstLost == nil { firstLost = "acked append \(seq) (tag \(tag)) missing; head \(head)" }
                    continue
                }
                guard case .number(let t)? = records[Int(seq.rawValue) - 1].values["tag"], Int(t) == tag else {
                    return .corrupt("not a prefix: record \(seq) is not the acked append with tag \(tag)")
                }
            }
            if let firstLost { return .lost(firstLost) }
            let next = try await log.append(try SensorValues(["tag": .number(-1)]))
            guard next == head.next else { return .corrupt("append after reopen got \(next), head was \(head)") }
            return .ok
        } catch {
            return .corrupt("\(error)")
        }
    }

    struct Tally {
        var ok = 0, lost = 0, corrupt = 0
        var firstLost: String?
        var firstCorrupt: String?
        var failedAppends = 0
        /// Appends that failed in runs where the power was never cut (only the fsync failed).
        var failedAppendsWithoutCut = 0
    }

    func runCases(_ label: String, configuration: LogConfiguration, cases: Int, seed: UInt64, injectSyncFailure: Bool = false,
                  acks: Bool = false) async throws -> Tally {
        let dir = try TemporaryDirectory("fieldlog-powercut")
        defer { dir.remove() }
        var config = configuration
        config.vfsName = CrashVFS.name
        _ = CrashVFS.registered

        // Dry run: how many mutating operations and syncs does the workload make?
        CrashVFS.shared.arm(seed: seed)
        let dry = await runWorkload(path: dir.file("dry.db"), configuration: config, acks: acks)
        let totalOps = CrashVFS.shared.operationCount
        CrashVFS.shared.disarm()
        XCTAssertEqual(dry.acked.count, dry.attempted, "\(label): dry run must not fail")
        XCTAssertGreaterThan(totalOps, 10)

        var rng = SplitMix64(seed: seed)
        var tally = Tally()
        for c in 0..<cases {
            let path = dir.file("case\(c).db")
            let crashAt = Int(rng.next() % UInt64(totalOps)) + 1
            let caseSeed = rng.next()
            if injectSyncFailure {
                let failSync = Int(rng.next() % 40) + 2
                CrashVFS.shared.arm(crashAt: Int(rng.next() % 2) == 0 ? .max : crashAt + totalOps / 2, failSyncAt: failSync, seed: caseSeed)
            } else {
                CrashVFS.shared.arm(crashAt: crashAt, seed: caseSeed)
            }
            let workload = await runWorkload(path: path, configuration: config, acks: acks)
            tally.failedAppends += workload.failedTags.count
            if !CrashVFS.shared.isCrashed { tally.failedAppendsWithoutCut += workload.failedTags.count }
            CrashVFS.shared.disarm()
            let outcome = await verify(path: path, workload: workload)
            switch outcome {
            case .ok: tally.ok += 1
            case .lost(let why):
                tally.lost += 1
                if tally.firstLost == nil { tally.firstLost = "case \(c) crashAt \(crashAt): \(why)" }
            case .corrupt(let why):
                tally.corrupt += 1
                if tally.firstCorrupt == nil { tally.firstCorrupt = "case \(c) crashAt \(crashAt): \(why)" }
            }
        }
        print("power-cut \(label): seed \(seed), \(totalOps) I/O ops per run, \(cases) cases: ok \(tally.ok), lost \(tally.lost), corrupt \(tally.corrupt), failed appends \(tally.failedAppends) (\(tally.failedAppendsWithoutCut) without a cut)"
              + (tally.firstLost.map { "; first lost: \($0)" } ?? "") + (tally.firstCorrupt.map { "; first corrupt: \($0)" } ?? ""))
        return tally
    }

    var seed: UInt64 {
        if let s = ProcessInfo.processInfo.environment["FIELDLOG_POWERCUT_SEED"], let v = UInt64(s) { return v }
        return UInt64.random(in: 1...UInt64.max)
    }

    func testFullDurabilityKeepsEveryReturnedAppend() async throws {
        let t = try await runCases("full", configuration: LogConfiguration(durability: .full), cases: 300, seed: seed)
        XCTAssertEqual(t.lost, 0, t.firstLost ?? "")
        XCTAssertEqual(t.corrupt, 0, t.firstCorrupt ?? "")
        XCTAssertEqual(t.ok, 300)
    }

    /// Acks between the appends: their commits are not fsynced on their own (docs/log.md),
    /// so a cut may take back the last acks, but never a returned append, and the pointer
    /// never exceeds what `markAcked` returned. Also with tiny checkpoints.
    func testFullDurabilityWithUnsyncedAcksKeepsEveryReturnedAppend() async throws {
        let t = try await runCases("full+acks", configuration: LogConfiguration(durability: .full), cases: 200, seed: seed, acks: true)
        XCTAssertEqual(t.lost, 0, t.firstLost ?? "")
        XCTAssertEqual(t.corrupt, 0, t.firstCorrupt ?? "")
        var config = LogConfiguration(durability: .full)
        config.walAutocheckpointPages = 4
        let c = try await runCases("full+acks+checkpoints", configuration: config, cases: 100, seed: seed, acks: true)
        XCTAssertEqual(c.lost, 0, c.firstLost ?? "")
        XCTAssertEqual(c.corrupt, 0, c.firstCorrupt ?? "")
    }

    /// Under `full` an ack makes no fsync of its own and the next append's does (the one
    /// fsync the ack saves; docs/log.md, "Guarantees"). Under a cut right after the ack the
    /// pointer comes back as before it; after the append's fsync, as acked.
    func testAckIsMadeDurableByTheNextAppendsFsync() async throws {
        let dir = try TemporaryDirectory("fieldlog-ack-sync")
        defer { dir.remove() }
        var config = LogConfiguration(durability: .full)
        config.vfsName = CrashVFS.name
        _ = CrashVFS.registered
        for cutAfterAppend in [false, true] {
            let path = dir.file("ack-\(cutAfterAppend).db")
            CrashVFS.shared.arm(seed: 1)
            let log = try await DeviceLog.open(path: path, device: Self.device, configuration: config)
            for i in 0..<3 { _ = try await log.append(try SensorValues(["tag": .number(Double(i))])) }
            let before = CrashVFS.shared.syncCount
            _ = try await log.markAcked(through: SequenceNumber(2))
            XCTAssertEqual(CrashVFS.shared.syncCount, before, "markAcked must not fsync on its own under full")
            if cutAfterAppend {
                _ = try await log.append(try SensorValues(["tag": .number(3)]))
                XCTAssertGreaterThan(CrashVFS.shared.syncCount, before, "an append under full must fsync (synchronous=FULL restored)")
            }
            // The power is cut now: every write not yet synced is dropped.
            CrashVFS.shared.cutDroppingUnsynced()
            await log.close()
            CrashVFS.shared.disarm()
            let reopened = try await DeviceLog.open(path: path, device: nil)
            let acked = try await reopened.ackedThrough()
            let head = try await reopened.head()
            await reopened.close()
            XCTAssertEqual(acked, SequenceNumber(cutAfterAppend ? 2 : 0), "cut \(cutAfterAppend ? "after" : "before") the next append's fsync")
            XCTAssertEqual(head, SequenceNumber(cutAfterAppend ? 4 : 3))
        }
    }

    /// With tiny auto-checkpoints, cuts also land inside checkpoints (database file writes
    /// and syncs, WAL restarts).
    func testFullDurabilitySurvivesCutsInsideCheckpoints() async throws {
        var config = LogConfiguration(durability: .full)
        config.walAutocheckpointPages = 4
        let t = try await runCases("full+checkpoints", configuration: config, cases: 200, seed: seed)
        XCTAssertEqual(t.lost, 0, t.firstLost ?? "")
        XCTAssertEqual(t.corrupt, 0, t.firstCorrupt ?? "")
    }

    /// Negative control: the harness must be able to see a lost acked append.
    func testNormalDurabilityLosesSomeReturnedAppendButNeverCorrupts() async throws {
        let t = try await runCases("normal", configuration: LogConfiguration(durability: .normal), cases: 60, seed: seed)
        XCTAssertGreaterThan(t.lost, 0, "synchronous=NORMAL should lose a returned append for some cut; the harness cannot fail")
        XCTAssertEqual(t.corrupt, 0, t.firstCorrupt ?? "")
    }

    /// Negative control: with no syncs at all the log must be seen to corrupt or lose.
    func testSynchronousOffCorruptsOrLoses() async throws {
        var config = LogConfiguration()
        config.synchronousOff = true
        config.walAutocheckpointPages = 4   // unsynced checkpoints: the database file itself can tear
        let t = try await runCases("off", configuration: config, cases: 100, seed: seed)
        XCTAssertGreaterThan(t.lost + t.corrupt, 0, "synchronous=OFF should corrupt or lose for some cut; the harness cannot fail")
    }

    /// A failed fsync (dirty pages dropped) fails the append; the record is in doubt and
    /// never shares a sequence number with an acknowledged one.
    func testFailedFsyncFailsAppendAndNeverDuplicatesSeq() async throws {
        let t = try await runCases("fsync-failure", configuration: LogConfiguration(durability: .full), cases: 80, seed: seed, injectSyncFailure: true)
        XCTAssertEqual(t.lost, 0, t.firstLost ?? "")
        XCTAssertEqual(t.corrupt, 0, t.firstCorrupt ?? "")
        XCTAssertGreaterThan(t.failedAppendsWithoutCut, 0, "the injected fsync failure alone should have failed some append")
    }
}
