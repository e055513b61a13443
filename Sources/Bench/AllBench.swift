// all: every benchmark in one run on one private stack, sized to finish in under 10 minutes
// on a 2-core machine. `--json` prints one JSON object per benchmark (configuration).
import ArgumentParser
import Foundation

struct AllBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "all",
        abstract: "append, encoding, drain, fleet and footprint in one run (one private stack); with --json one object per line.")

    @OptionGroup var stackOptions: StackOptions

    @Option(help: "Readings in the drain backlog.")
    var drainReadings: Int = 1_000_000

    @Option(help: "Seconds measured per append configuration.")
    var appendSeconds: Double = 1

    @Option(help: "Seconds measured per fleet run and footprint phase.")
    var seconds: Double = 10

    func run() async throws {
        let reporter = Reporter(json: stackOptions.json)
        let started = ContinuousClock.now
        let dir = try BenchDirectory(stackOptions.dir, name: "all")
        defer { dir.remove() }

        reporter.note("append")
        let append = try AppendBench.parse(["--seconds", String(appendSeconds), "--dir", dir.path + "/append"] + (stackOptions.json ? ["--json"] : []))
        try await append.run()

        reporter.note("encoding")
        for row in try EncodingBench.measure(sensors: [1, 4, 8], records: 500, batches: 20, intervalMs: 2000, jitterMs: 5,
                                             seconds: 0.5, samples: nil) {
            reporter.emit(row)
        }

        let stack = try await BenchStack.start(stackOptions, dir: dir.path, reporter: reporter)
        defer { stack.stop() }
        var failures = 0
        // One failing benchmark is reported and the run goes on to the next.
        func attempt(_ name: String, _ body: () async throws -> [[String: Any]]) async {
            do {
                for row in try await body() { reporter.emit(row) }
            } catch {
                failures += 1
                reporter.emit(["benchmark": name, "error": "\(error)"])
            }
        }
        await attempt("drain") {
            [try await DrainBench.measure(stack: stack, dir: dir.path, readings: drainReadings, sensors: 1, window: 16, batchRecords: 500,
                                          ceilingReadings: 200_000, ceilingMessages: 20_000, timeout: 600, reporter: reporter)]
        }
        for s in ["1000x1", "100x100"] {
            for n in [1, 2] {
                await attempt("fleet-\(s)-ingest\(n)") {
                    [try await FleetBench.measure(stack: stack, dir: dir.path, scenario: FleetBench.Scenario(s)!, ingests: n,
                                                  seconds: seconds, warmup: 3, durability: "full", senderInterval: 1, reporter: reporter)]
                }
            }
        }
        await attempt("footprint") {
            try await FootprintBench.measure(stack: stack, dir: dir.path, seconds: seconds, backlog: 200_000, reporter: reporter)
        }
        reporter.emit(["benchmark": "all", "seconds": secondsSince(started), "target_seconds": 600, "failed_benchmarks": failures])
        if failures > 0 { throw ExitCode(1) }
    }
}
