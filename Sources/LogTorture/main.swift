// fieldlog-log-torture: a test helper that appends to a device log at full speed and prints
// "seq tag" on stdout for every append after it returned, so a test can kill -9 it at any
// moment and check that every printed append survived.
//
// Usage: fieldlog-log-torture --db PATH --device ID [--concurrency N] [--count N] [--prefix P]
//                             [--durability full|normal] [--executor pool|log|mixed]
// `--executor`: where the appending tasks run: Swift's pool, the log's own executor (as the
// device's sampler does), or mixed (every other task on the log's executor). Default pool.
// Tags are "<prefix>-<worker>-<i>" and stored as the text value "tag".
import FieldlogCore
import Foundation
import Log
import Logging

struct Options {
    var db = ""
    var device = ""
    var concurrency = 8
    var count = Int.max
    var prefix = "run"
    var durability = Durability.full
    var executor = "pool"
}

func parse() -> Options {
    var o = Options()
    var args = CommandLine.arguments.dropFirst()[...]
    func value(_ name: String) -> String {
        guard let v = args.popFirst() else { fail("\(name) needs a value") }
        return v
    }
    while let a = args.popFirst() {
        switch a {
        case "--db": o.db = value(a)
        case "--device": o.device = value(a)
        case "--concurrency": o.concurrency = Int(value(a)) ?? 0
        case "--count": o.count = Int(value(a)) ?? 0
        case "--prefix": o.prefix = value(a)
        case "--durability": o.durability = Durability(rawValue: value(a)) ?? .full
        case "--executor":
            o.executor = value(a)
            if !["pool", "log", "mixed"].contains(o.executor) { fail("--executor takes pool, log or mixed, got \(o.executor)") }
        default: fail("unknown argument \(a)")
        }
    }
    if o.db.isEmpty || o.device.isEmpty || o.concurrency < 1 || o.count < 0 { fail("usage: --db PATH --device ID [--concurrency N] [--count N]") }
    return o
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("fieldlog-log-torture: \(message)\n".utf8))
    exit(2)
}

/// Writes one whole line with a single write(2), so a kill leaves only whole lines behind.
func emit(_ line: String) {
    var bytes = Array((line + "\n").utf8)
    bytes.withUnsafeMutableBytes { b in
        var off = 0
        while off < b.count {
            let n = write(1, b.baseAddress! + off, b.count - off)
            if n <= 0 { exit(3) }
            off += n
        }
    }
}

let options = parse()
do {
    var logger = Logger(label: "torture")
    logger.logLevel = .error
    let log = try await DeviceLog.open(path: options.db, device: try DeviceID(options.device),
                                       configuration: LogConfiguration(durability: options.durability), logger: logger)
    emit("epoch \(log.epoch.hex)")
    let perWorker = options.count == Int.max ? Int.max : (options.count + options.concurrency - 1) / options.concurrency
    try await withThrowingTaskGroup(of: Void.self) { group in
        for w in 0..<options.concurrency {
            let onLog = options.executor == "log" || (options.executor == "mixed" && w % 2 == 1)
            group.addTask(executorPreference: onLog ? log.executor : nil) {
                var i = 0
                while i < perWorker {
                    let tag = "\(options.prefix)-\(w)-\(i)"
                    let seq = try await log.append(try SensorValues(["tag": .text(tag), "n": .number(Double(i))]))
                    emit("\(seq.rawValue) \(tag)")
                    i += 1
                }
            }
        }
        try await group.waitForAll()
    }
    await log.close()
} catch {
    fail("\(error)")
}
