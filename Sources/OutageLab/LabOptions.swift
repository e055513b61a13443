// The options of a lab run and its report.
import Foundation

/// Everything a run needs to know.
public struct LabOptions: Sendable {
    public var scenario: Scenario
    public var seed: UInt64
    public var durationSeconds: Double
    /// A running stack to use (its directory with stack.env); nil: the lab starts its own.
    public var existingStackDirectory: String?
    /// Where logs, device log files and (own) stack live. Default /tmp/fieldlog-lab-<scenario>-<seed>.
    public var workDirectory: String?
    public var deviceBinary: String
    public var backendBinary: String
    /// The program run as `<ingestBinary> ingest` (nil: `backendBinary`). A test gives a
    /// deliberately broken one here to show the lab catches it (BrokenBuildTests).
    public var ingestBinary: String?
    public var stackScript: String
    /// Longest wait for the fleet to drain after healing.
    public var drainTimeoutSeconds: Double = 300
    /// Seconds between progress lines.
    public var progressEverySeconds: Double = 5
    /// Keep the work directory (and an own stack's data) after a passing run.
    public var keep = false

    public init(scenario: Scenario, seed: UInt64, durationSeconds: Double, deviceBinary: String, backendBinary: String, stackScript: String) {
        self.scenario = scenario
        self.seed = seed
        self.durationSeconds = durationSeconds
        self.deviceBinary = deviceBinary
        self.backendBinary = backendBinary
        self.stackScript = stackScript
    }
}

/// The result of a run.
public struct LabReport: Sendable {
    public var scenario: String
    public var seed: UInt64
    public var durationSeconds: Double
    public var devices: Int
    public var ingests: Int
    public var database: String
    public var verdict: Verdict
    public var faults: [ScheduledFault]
    var faultErrors: [String]
    public var drained: Bool
    var timeToDrainSeconds: Double
    var notes: [String]
    public var workDirectory: String
    /// Recovery and continuity (issue 21); reported, not part of the verdict.
    public var figures: RecoveryFigures

    public var passed: Bool { verdict.passed && drained && faultErrors.isEmpty }

    public var text: String {
        var byKind: [String: Int] = [:]
        for f in faults { byKind[f.kind.rawValue, default: 0] += 1 }
        let kinds = byKind.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        var reasons: [String: Int] = [:]
        for d in verdict.devices { for (r, n) in d.lossReasons { reasons[r, default: 0] += n } }
        let reasonText = reasons.isEmpty ? "" : " (" + reasons.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ") + ")"
        var lines = [
            "fieldlog-lab report: scenario \(scenario), seed \(seed), fault phase \(Int(durationSeconds)) s",
            "  replay:             fieldlog-lab run \(scenario) --seed \(seed) --duration \(Int(durationSeconds))s",
            "  fleet:              \(devices) devices, \(ingests) ingest processes, \(database)",
            "  readings appended:  \(verdict.appended)",
            "  stored:             \(verdict.stored)",
            "  duplicates:         \(verdict.duplicates)",
            "  declared losses:    \(verdict.declaredLost)\(reasonText)",
            "  unexplained losses: \(verdict.unexplained)",
            "  acked but missing:  \(verdict.ackedButMissing)",
            "  faults injected:    \(faults.count)\(kinds.isEmpty ? "" : " (\(kinds))")",
            "  time to drain:      \(drained ? String(format: "%.1f s", timeToDrainSeconds) : "did not drain within \(Int(timeToDrainSeconds)) s")",
        ] + figures.lines + [
            "  audit:              \(verdict.auditExitStatus.map { "exit \($0)" } ?? "not run")\(verdict.auditExitStatus == 0 ? "" : ": " + verdict.auditSummary.prefix(400))",
            "  processes:          \(verdict.processProblems.isEmpty ? "every process the lab did not kill kept running" : "\(verdict.processProblems.count) problem(s)")",
        ]
        for d in verdict.devices {
            lines.append(String(format: "    %@ epoch %@: head %llu acked %llu stored %d lost %d unexplained %d",
                                d.device as NSString, String(d.epoch, radix: 16) as NSString, d.head, d.acked, d.stored, d.declaredLost,
                                d.unexplainedCount + d.phantoms + d.conflicts))
            if let f = figures.devices.first(where: { $0.id == d.device }) { lines.append(figures.deviceLine(f)) }
        }
        for n in notes { lines.append("  note: \(n)") }
        for e in faultErrors.prefix(20) { lines.append("  fault error: \(e)") }
        for f in verdict.failures { lines.append("  FAIL: \(f)") }
        if !drained { lines.append("  FAIL: the fleet did not drain after healing") }
        lines.append("  work directory:     \(workDirectory)")
        lines.append("  verdict:            \(passed ? "PASS" : "FAIL (seed \(seed))")")
        return lines.joined(separator: "\n")
    }
}
