// The checker: the lab's verdict, computed only from what the device log files and the
// database hold (see Readers.swift), never from what Fieldlog's processes say about themselves.
//
// Rules, per device and epoch (the log file's epoch):
//  1. Every seq 1…head the device appended is in `readings` exactly once, or lies in a loss
//     range the device declared with a reason (in its log, seen by the lab's watcher before
//     a trim, or recorded by the backend in `loss_ranges`). Otherwise it is UNEXPLAINED.
//  2. No `readings` row for a seq beyond the device's head (a reading the device never
//     appended: PHANTOM), and a stored row's device time equals the log record's
//     (a seq reused for a different reading: CONFLICT).
//  3. The device's acked pointer never passed a seq the database lacks (unless declared lost):
//     ACKED-BUT-MISSING.
//  4. `fieldlog-backend audit` reports no gaps (exit 0) — run by the runner, passed in.
//  5. Every process the lab did not kill is still running — passed in.
import Foundation

/// One device's numbers in the report.
public struct DeviceVerdict: Sendable {
    public var device: String
    public var epoch: UInt64
    public var head: UInt64
    public var acked: UInt64
    public var stored = 0
    public var duplicates = 0
    public var declaredLost = 0
    var declaredLostStoredAnyway = 0
    public var unexplained: [ClosedRange<UInt64>] = []
    public var unexplainedCount = 0
    public var phantoms = 0
    public var conflicts = 0
    public var ackedButMissing = 0
    public var lossReasons: [String: Int] = [:]
    /// Declared losses the backend did not record in loss_ranges (reported, not fatal: the
    /// device may not have sent them yet).
    public var lossesNotInDatabase = 0
    public var otherEpochsInDatabase = 0

    public var isClean: Bool { unexplainedCount == 0 && phantoms == 0 && conflicts == 0 && ackedButMissing == 0 && duplicates == 0 }
}

/// The checker's verdict over a whole fleet.
public struct Verdict: Sendable {
    public var devices: [DeviceVerdict]
    var auditExitStatus: Int32?
    var auditSummary: String
    var processProblems: [String]

    public var appended: UInt64 { devices.reduce(0) { $0 + $1.head } }
    public var stored: Int { devices.reduce(0) { $0 + $1.stored } }
    public var duplicates: Int { devices.reduce(0) { $0 + $1.duplicates } }
    public var declaredLost: Int { devices.reduce(0) { $0 + $1.declaredLost } }
    public var unexplained: Int { devices.reduce(0) { $0 + $1.unexplainedCount + $1.phantoms + $1.conflicts } }
    public var ackedButMissing: Int { devices.reduce(0) { $0 + $1.ackedButMissing } }

    /// Passed: nothing unexplained, no acked-but-missing, audit clean, no process died on its own.
    public var passed: Bool {
        devices.allSatisfy(\.isClean) && auditExitStatus == 0 && processProblems.isEmpty
    }

    public var failures: [String] {
        var out: [String] = []
        for d in devices where !d.isClean {
            var parts: [String] = []
            if d.unexplainedCount > 0 {
                let shown = d.unexplained.prefix(8).map { $0.count == 1 ? "\($0.lowerBound)" : "\($0.lowerBound)…\($0.upperBound)" }
                parts.append("\(d.unexplainedCount) unexplained missing seq(s) [\(shown.joined(separator: ", "))\(d.unexplained.count > 8 ? ", …" : "")]")
            }
            if d.phantoms > 0 { parts.append("\(d.phantoms) phantom row(s) beyond head \(d.head)") }
            if d.conflicts > 0 { parts.append("\(d.conflicts) row(s) whose device time differs from the log record") }
            if d.duplicates > 0 { parts.append("\(d.duplicates) duplicate row(s)") }
            if d.ackedButMissing > 0 { parts.append("acked pointer \(d.acked) passed \(d.ackedButMissing) seq(s) the database lacks") }
            out.append("device \(d.device) epoch \(String(d.epoch, radix: 16)): " + parts.joined(separator: "; "))
        }
        if auditExitStatus != 0 {
            out.append("fieldlog-backend audit exited \(auditExitStatus.map(String.init) ?? "not run"): \(auditSummary)")
        }
        out.append(contentsOf: processProblems)
        return out
    }
}

public enum Checker {
    /// Checks one device: its final log snapshot, every loss marker the watcher saw in its
    /// log during the run, and the database's view of it.
    public static func check(log: DeviceLogSnapshot, markersSeen: Set<DeclaredLoss>, database: DatabaseDeviceView) -> DeviceVerdict {
        var v = DeviceVerdict(device: log.deviceID, epoch: log.epoch, head: log.head, acked: log.acked)
        let rows = database.readings[log.epoch] ?? [:]
        v.otherEpochsInDatabase = database.readings.keys.filter { $0 != log.epoch }.count
        var declared = Array(markersSeen.union(log.lossMarkers))
        let dbLosses = database.losses[log.epoch] ?? []
        for l in dbLosses where !declared.contains(where: { $0.first == l.first && $0.last == l.last }) { declared.append(l) }
        v.lossesNotInDatabase = Set(markersSeen.union(log.lossMarkers)).filter { m in
            !dbLosses.contains(where: { $0.first <= m.first && m.last <= $0.last })
        }.count
        declared.sort { $0.first < $1.first }

        func declaredLoss(_ seq: UInt64) -> DeclaredLoss? {
            // Ranges are few; a linear scan is fine and obviously right.
            declared.first { $0.contains(seq) }
        }

        var runStart: UInt64? = nil
        var seq: UInt64 = 1
        while seq <= log.head {
            if let row = rows[seq] {
                v.stored += 1
                if row.count > 1 { v.duplicates += row.count - 1 }
                if let ts = log.records[seq], ts != row.deviceMs { v.conflicts += 1 }
                if declaredLoss(seq) != nil { v.declaredLostStoredAnyway += 1 }
                if let s = runStart { v.unexplained.append(s...(seq - 1)); runStart = nil }
            } else if let loss = declaredLoss(seq) {
                v.declaredLost += 1
                v.lossReasons[loss.reason, default: 0] += 1
                if let s = runStart { v.unexplained.append(s...(seq - 1)); runStart = nil }
            } else {
                v.unexplainedCount += 1
                if runStart == nil { runStart = seq }
                if seq <= log.acked { v.ackedButMissing += 1 }
            }
            seq += 1
        }
        if let s = runStart { v.unexplained.append(s...log.head) }
        v.phantoms = rows.keys.filter { $0 > log.head || $0 == 0 }.count
        return v
    }
}
