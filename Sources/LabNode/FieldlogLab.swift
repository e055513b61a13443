// `fieldlog-lab`: runs the outage lab's scenarios against a stack of its own or a given one.
// Thin: parse, bootstrap logging, hand over to OutageLab.LabRun, print the report.
import ArgumentParser
import Foundation
import Logging
import OutageLab

@main
struct FieldlogLab: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fieldlog-lab",
        abstract: "Outage lab: run a fleet under seeded faults, heal, drain, and check that every reading is stored exactly once or reported lost.",
        subcommands: [Run.self, List.self])

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the scenarios and the faults each injects.")
        func run() {
            for s in Scenario.all {
                let kinds = Array(Set(s.faults.map(\.rawValue))).sorted().joined(separator: ", ")
                print("\(s.name.padding(toLength: 10, withPad: " ", startingAt: 0)) \(s.summary)")
                print("           faults: \(kinds); fleet: \(s.shape.devices) devices, \(s.shape.ingests) ingest; default duration \(Int(s.defaultDurationSeconds)) s")
            }
        }
    }

    struct Run: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run one scenario; exit 0 only when nothing is unexplained.",
            discussion: "The seed drives the whole fault schedule; a failing run prints its seed, and `--seed` replays the schedule.")

        @Argument(help: "Scenario name (see `fieldlog-lab list`).") var scenario: String
        @Option(help: "Seed of the fault schedule (default: random, printed).") var seed: UInt64?
        @Option(help: "Length of the fault phase, e.g. 90s, 10m (default: the scenario's).") var duration: String?
        @Option(help: "Use the running stack in this directory (its stack.env) instead of starting one.") var stackDir: String?
        @Option(help: "Work directory for logs and device log files (default /tmp/fieldlog-lab-SCENARIO-SEED).") var workDir: String?
        @Option(help: "fieldlog-device executable (default: next to fieldlog-lab).") var device: String?
        @Option(help: "fieldlog-backend executable (default: next to fieldlog-lab).") var backend: String?
        @Option(help: "The stack script (default: scripts/stack of the source tree, or FIELDLOG_STACK_SCRIPT).") var stackScript: String?
        @Option(help: "Longest wait for the fleet to drain after healing, e.g. 5m (default 5m).") var drainTimeout: String?
        @Option(help: "Seconds between progress lines (default 5).") var progressEvery: Double = 5
        @Flag(help: "Keep the lab's own stack data after the run.") var keep = false
        @Option(help: "Log level of the lab itself (default warning).") var logLevel: String = "warning"

        func run() async throws {
            guard let s = Scenario.named(scenario) else {
                throw ValidationError("unknown scenario \(scenario.debugDescription); known: \(Scenario.all.map(\.name).joined(separator: ", "))")
            }
            guard let level = Logger.Level(rawValue: logLevel) else {
                throw ValidationError("--log-level \(logLevel.debugDescription) is not one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            LoggingSystem.bootstrap { label in
                var h = StreamLogHandler.standardError(label: label)
                h.logLevel = level
                return h
            }
            let logger = Logger(label: "fieldlog.lab")
            let seedValue = seed ?? UInt64.random(in: 1...UInt64.max)
            let durationSeconds: Double
            do { durationSeconds = try duration.map(parseDurationSeconds) ?? s.defaultDurationSeconds } catch { throw ValidationError("--duration: \(error)") }
            let binDir = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent().path
            let script = stackScript ?? ProcessInfo.processInfo.environment["FIELDLOG_STACK_SCRIPT"] ?? Self.sourceTreeScript()
            var options = LabOptions(scenario: s, seed: seedValue, durationSeconds: durationSeconds,
                                     deviceBinary: device ?? binDir + "/fieldlog-device",
                                     backendBinary: backend ?? binDir + "/fieldlog-backend", stackScript: script)
            options.existingStackDirectory = stackDir
            options.workDirectory = workDir
            options.progressEverySeconds = progressEvery
            options.keep = keep
            if let drainTimeout {
                do { options.drainTimeoutSeconds = try parseDurationSeconds(drainTimeout) } catch { throw ValidationError("--drain-timeout: \(error)") }
            }
            let run = LabRun(options: options, logger: logger) { line in
                FileHandle.standardError.write(Data((line + "\n").utf8))
            }
            let task = Task { try await run.run() }
            // Ctrl-C / SIGTERM: the run is cancelled and tears down what it started (processes,
            // proxies, its stack).
            signal(SIGINT, SIG_IGN)
            signal(SIGTERM, SIG_IGN)
            var sources: [DispatchSourceSignal] = []
            for sig in [SIGINT, SIGTERM] {
                let src = DispatchSource.makeSignalSource(signal: sig, queue: .global())
                src.setEventHandler {
                    FileHandle.standardError.write(Data("fieldlog-lab: interrupted, tearing down\n".utf8))
                    task.cancel()
                }
                src.resume()
                sources.append(src)
            }
            defer { sources.forEach { $0.cancel() } }
            let report: LabReport
            do {
                report = try await task.value
            } catch {
                print("fieldlog-lab: the lab could not run scenario \(s.name) (seed \(seedValue)): \(error)")
                throw ExitCode(2)
            }
            print(report.text)
            if !report.passed { throw ExitCode(1) }
        }

        /// scripts/stack of the source tree this binary was built from.
        static func sourceTreeScript() -> String {
            var url = URL(fileURLWithPath: #filePath)
            for _ in 0..<3 { url.deleteLastPathComponent() }
            return url.path + "/scripts/stack"
        }
    }
}
