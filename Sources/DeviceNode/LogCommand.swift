// `fieldlog-device log …`: inspect and feed a device log from the shell.
import ArgumentParser
import FieldlogCore
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import Log
import Logging
import Sync

/// `fieldlog-device log`: append to, show, dump and check a device log file.
struct LogCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "log",
        abstract: "Work with a device's durable log (SQLite file).",
        subcommands: [LogAppend.self, LogStatusCommand.self, LogDump.self, LogCheck.self])
}

struct LogFileOptions: ParsableArguments {
    @Option(name: .long, help: "Path of the log file.")
    var db: String
}

/// Turns a failure to open or use the log into a clean message and exit status.
func failing(_ error: Error, code: Int32 = 1) -> ExitCode {
    printError("fieldlog-device: \(error)")
    return ExitCode(code)
}

/// Writes one line to standard error.
func printError(_ line: String) {
    var bytes = Array((line + "\n").utf8)
    var offset = 0
    while offset < bytes.count {
        let n = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress! + offset, $0.count - offset) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { return }
        offset += n
    }
}

struct LogAppend: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "append",
        abstract: "Append one reading (name=value …) and print its sequence number.",
        discussion: "A value that parses as a finite number is stored as a number, anything else as text. The log is created for --device when the file does not exist.")

    @OptionGroup var file: LogFileOptions

    @Option(name: .long, help: "Device id, to create a new log (default: $FIELDLOG_DEVICE_ID); must match an existing log.")
    var device: String?

    @Option(name: .long, help: "full (fsync per commit, default) or normal.")
    var durability: String = "full"

    @Option(name: .long, help: "A sensor that could not be read (repeatable).")
    var missing: [String] = []

    @Argument(help: "Sensor values as name=value.")
    var values: [String] = []

    func run() async throws {
        let reading: SensorValues
        let deviceID: DeviceID?
        let config: LogConfiguration
        do {
            reading = try parseReading(values)
            let id = device ?? ProcessInfo.processInfo.environment["FIELDLOG_DEVICE_ID"]
            deviceID = try id.map { try DeviceID($0) }
            guard let d = Durability(rawValue: durability) else {
                throw ValidationError("--durability must be full or normal, got \(durability.debugDescription)")
            }
            config = LogConfiguration(durability: d)
        } catch {
            throw failing(error, code: 64)
        }
        do {
            let log = try await DeviceLog.open(path: file.db, device: deviceID, configuration: config)
            let seq = try await log.append(reading, missing: missing)
            await log.close()
            print(seq.rawValue)
        } catch {
            throw failing(error)
        }
    }
}

/// Parses `name=value` arguments into a reading.
func parseReading(_ arguments: [String]) throws -> SensorValues {
    var values: [String: SensorValue] = [:]
    for argument in arguments {
        guard let eq = argument.firstIndex(of: "=") else {
            throw ValidationError("expected name=value, got \(argument.debugDescription)")
        }
        let name = String(argument[..<eq])
        let text = String(argument[argument.index(after: eq)...])
        guard values[name] == nil else { throw ValidationError("sensor \(name.debugDescription) given twice") }
        if let d = Double(text), d.isFinite {
            values[name] = .number(d)
        } else {
            values[name] = .text(text)
        }
    }
    return try SensorValues(values)
}

struct LogStatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show device id, epoch, head, acked-through, backlog, retained records, file size and loss markers.")

    @OptionGroup var file: LogFileOptions

    @Flag(name: .long, help: "Print one JSON object.")
    var json = false

    func run() async throws {
        let status: LogStatus
        do {
            let log = try await DeviceLog.open(path: file.db, device: nil)
            status = try await log.status()
            await log.close()
        } catch {
            throw failing(error)
        }
        if json {
            print(jsonLine([
                ("path", .string(status.path)), ("device_id", .string(status.deviceID.rawValue)), ("epoch", .string(status.epoch.hex)),
                ("head", .integer(Int64(status.head.rawValue))), ("acked_through", .integer(Int64(status.ackedThrough.rawValue))),
                ("backlog", .integer(Int64(status.backlog))), ("retained", .integer(Int64(status.retained))),
                ("file_bytes", .integer(status.fileBytes)), ("wal_bytes", .integer(status.walBytes)),
                ("loss_markers", .array(status.lossMarkers.map(markerJSON))),
                ("oldest_retained", status.oldestRetained.map { .integer(Int64($0.rawValue)) } ?? .null),
            ]))
        } else {
            print("""
                log            \(status.path)
                device         \(status.deviceID)
                epoch          \(status.epoch)
                head           \(status.head)
                acked through  \(status.ackedThrough)
                backlog        \(status.backlog) records
                retained       \(status.retained) records\(status.oldestRetained.map { " (oldest \($0))" } ?? "")
                file size      \(status.fileBytes) bytes (+ \(status.walBytes) bytes WAL)
                loss markers   \(status.lossMarkers.count)
                """)
            for m in status.lossMarkers {
                print("  \(m.range): \(m.reason.rawValue) at \(m.recordedAtUnixMilliseconds) ms\(m.detail.isEmpty ? "" : " — \(m.detail)")")
            }
        }
    }
}

func markerJSON(_ m: LossMarker) -> JSONValue {
    sortedObject([("first", .integer(Int64(m.range.first.rawValue))), ("last", .integer(Int64(m.range.last.rawValue))),
                  ("reason", .string(m.reason.rawValue)), ("recorded_ms", .integer(m.recordedAtUnixMilliseconds)),
                  ("detail", .string(m.detail))])
}

/// An object with its members in key order (stable output for diffs and scripts).
func sortedObject(_ members: [(String, JSONValue)]) -> JSONValue {
    .object(members.sorted { $0.0 < $1.0 })
}

func jsonLine(_ members: [(String, JSONValue)]) -> String {
    String(decoding: JSONWriter.encode(sortedObject(members)), as: UTF8.self)
}

struct LogDump: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dump",
        abstract: "Print records (and loss markers) as JSON lines, in sequence order.")

    @OptionGroup var file: LogFileOptions

    @Option(name: .long, help: "First sequence number (default 1).")
    var from: UInt64 = 1

    @Option(name: .long, help: "Last sequence number (default: the head).")
    var to: UInt64?

    func run() async throws {
        do {
            let log = try await DeviceLog.open(path: file.db, device: nil)
            let head = try await log.head()
            let last = min(to ?? head.rawValue, head.rawValue)
            var next = SequenceNumber(max(from, 1))
            while next.rawValue <= last {
                let range = try SequenceRange(next, SequenceNumber(last))
                let entries = try await log.entries(in: range, limit: 1000)
                if entries.isEmpty { break }
                for entry in entries {
                    switch entry {
                    case .record(let r):
                        let values: [(String, JSONValue)] = r.values.sorted.map { name, value in
                            switch value {
                            case .number(let d): return (name, .double(d))
                            case .text(let s): return (name, .string(s))
                            }
                        }
                        print(jsonLine([("seq", .integer(Int64(r.sequence.rawValue))), ("ts_ms", .integer(r.timestamp.unixMilliseconds)),
                                        ("clock_unsynchronized", .bool(r.timestamp.clockUnsynchronized)),
                                        ("values", .object(values)), ("missing", .array(r.missingSensors.map { .string($0) }))]))
                        next = r.sequence.next
                    case .loss(let m):
                        print(jsonLine([("loss", markerJSON(m))]))
                        next = max(next, m.range.last.next)
                    }
                }
                // Fewer than `limit` records: the whole range (markers included) was returned.
                let records = entries.filter { if case .record = $0 { return true }; return false }.count
                if records < 1000 { break }
            }
            await log.close()
        } catch {
            throw failing(error)
        }
    }
}

struct LogCheck: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Verify a log like fsck: SQLite integrity, checksums, contiguous sequence numbers, loss markers, acked pointer.",
        discussion: "Exit status 0 only when everything holds; otherwise the problems are listed and the status is 1 (2 when the file cannot be opened as a log).")

    @OptionGroup var file: LogFileOptions

    func run() async throws {
        let problems: [String]
        let status: LogStatus
        do {
            let log = try await DeviceLog.open(path: file.db, device: nil)
            problems = try await log.check()
            status = try await log.status()
            await log.close()
        } catch {
            throw failing(error, code: 2)
        }
        if problems.isEmpty {
            print("ok: \(file.db): device \(status.deviceID), epoch \(status.epoch), head \(status.head), acked \(status.ackedThrough), \(status.retained) records, \(status.lossMarkers.count) loss markers")
        } else {
            print("\(file.db): \(problems.count) problem(s):")
            for p in problems { print("  - \(p)") }
            throw ExitCode(1)
        }
    }
}
