// Executed command ids, remembered durably so a command is executed at most once.
//
// Theory of operation: an append-only file of JSON lines next to the log
// (`<LOG_PATH>.commands`). Before a command with an id is executed, a line `{"k": id}` is
// written and fsynced; after, a line with its response. On start the file is read back; the
// last line per id wins. A crash between the two lines leaves the id "started": a redelivery
// is then answered with an error saying the outcome is unknown, and is not executed again
// (at most once, as promised). The file is bounded: when it holds more than twice `capacity`
// lines it is rewritten with the newest `capacity` ids (temp file, fsync, rename, fsync of
// the directory), so a power cut during compaction leaves either the old or the new file.
// A torn last line (power cut mid-write) is skipped when reading.
//
// A side file rather than a table in the log's SQLite file: the log's schema belongs to the
// log, and this state is not part of the replicated data.
//
// Threads (docs/concurrency.md): the file and the ids it holds belong to a `SeenFile`,
// confined to an `OwnerThread` of its own, so the fsyncs never block Swift's pool.
import Threading
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// What is remembered about one command id.
public enum SeenState: Sendable, Equatable {
    /// Execution started but no response was recorded (crash in between).
    case started
    /// Executed; this was the response.
    case answered(Data)
}

/// The durable set of executed command ids (see the theory of operation above).
public final class SeenCommands: Sendable {
    public let path: String
    public let capacity: Int
    private let file: ThreadConfined<SeenFile>

    /// Opens (or creates) the file; throws naming the file when it cannot be read or created.
    public init(path: String, capacity: Int) throws {
        precondition(capacity > 0)
        self.path = path
        self.capacity = capacity
        let seen = SeenFile(path: path, capacity: capacity)
        if FileManager.default.fileExists(atPath: path) {
            guard let data = FileManager.default.contents(atPath: path) else {
                throw SeenCommandsError("cannot read the command-id file \(path)")
            }
            for line in data.split(separator: UInt8(ascii: "\n")) {
                guard let l = try? JSONDecoder().decode(SeenFile.Line.self, from: line) else { continue }  // torn line
                seen.remember(l.k, l.r.map { .answered(Data($0.utf8)) } ?? .started)
                seen.lineCount += 1
            }
        } else {
            guard FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o600]) else {
                throw SeenCommandsError("cannot create the command-id file \(path) (\(String(cString: strerror(errno))))")
            }
            Self.syncDirectory(of: path)
        }
        seen.fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC)
        guard seen.fd >= 0 else {
            throw SeenCommandsError("cannot open the command-id file \(path) for writing (\(String(cString: strerror(errno))))")
        }
        file = ThreadConfined(seen, on: OwnerThread(name: "fieldlog-seen", stackSize: 256 << 10))
    }

    deinit {
        file.submit { $0.close() }
        file.thread.stop()
    }

    /// What is remembered about `key` (nil: never seen, or forgotten beyond the capacity).
    public func state(of key: String) async -> SeenState? {
        (try? await file.run { $0.entries[key] }) ?? nil
    }

    /// Durably marks `key` as started. Throws when the file cannot be written: the caller must
    /// then not execute the command.
    public func markStarted(_ key: String) async throws {
        try await file.run { try $0.write(SeenFile.Line(k: key, r: nil), state: .started) }
    }

    /// Durably records the response for `key`.
    public func markAnswered(_ key: String, response: Data) async throws {
        let line = SeenFile.Line(k: key, r: String(decoding: response, as: UTF8.self))
        try await file.run { try $0.write(line, state: .answered(response)) }
    }

    /// Writes all of `data` and fsyncs; throws naming the file.
    static func writeAll(_ data: Data, to fd: Int32, path: String) throws {
        try data.withUnsafeBytes { (bytes: UnsafeRawBufferPointer) in
            var offset = 0
            while offset < bytes.count {
                let n = posixWrite(fd, bytes.baseAddress! + offset, bytes.count - offset)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw SeenCommandsError("cannot write the command-id file \(path): \(String(cString: strerror(errno)))") }
                offset += n
            }
        }
        guard fsync(fd) == 0 else { throw SeenCommandsError("cannot fsync the command-id file \(path): \(String(cString: strerror(errno)))") }
    }

    static func syncDirectory(of path: String) {
        let dir = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
        let fd = open(dir.isEmpty ? "/" : dir, O_RDONLY)
        if fd >= 0 {
            fsync(fd)
            close(fd)
        }
    }
}

/// The command-id file and the ids it holds; used on its `OwnerThread` only (`ThreadConfined`).
final class SeenFile {
    struct Line: Codable, Sendable {
        var k: String
        var r: String?
    }

    let path: String
    let capacity: Int
    private(set) var entries: [String: SeenState] = [:]
    private var order: [String] = []
    var lineCount = 0
    /// The file, open for appending; -1 once closed.
    var fd: Int32 = -1

    init(path: String, capacity: Int) {
        self.path = path
        self.capacity = capacity
    }

    deinit { close() }

    func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    func remember(_ key: String, _ state: SeenState) {
        if entries[key] == nil { order.append(key) }
        entries[key] = state
    }

    func write(_ line: Line, state: SeenState) throws {
        guard fd >= 0 else { throw SeenCommandsError("command-id file \(path) is closed") }
        var data = try JSONEncoder().encode(line)
        data.append(UInt8(ascii: "\n"))
        try SeenCommands.writeAll(data, to: fd, path: path)
        remember(line.k, state)
        lineCount += 1
        if lineCount > 2 * capacity { try compact() }
    }

    private func compact() throws {
        let keep = order.suffix(capacity)
        var out = Data()
        let encoder = JSONEncoder()
        for k in keep {
            guard let st = entries[k] else { continue }
            var l = Line(k: k, r: nil)
            if case .answered(let d) = st { l.r = String(decoding: d, as: UTF8.self) }
            out.append(try encoder.encode(l))
            out.append(UInt8(ascii: "\n"))
        }
        let tmp = path + ".tmp"
        let tfd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard tfd >= 0 else { throw SeenCommandsError("cannot create \(tmp) (\(String(cString: strerror(errno))))") }
        defer { Glibc.close(tfd) }
        try SeenCommands.writeAll(out, to: tfd, path: tmp)
        guard rename(tmp, path) == 0 else { throw SeenCommandsError("cannot rename \(tmp) to \(path): \(String(cString: strerror(errno)))") }
        SeenCommands.syncDirectory(of: path)
        Glibc.close(fd)
        fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC)
        let kept = Set(keep)
        for k in order where !kept.contains(k) { entries[k] = nil }
        order = Array(keep)
        lineCount = order.count
    }
}

/// The command-id file could not be read or written (names the file).
struct SeenCommandsError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// write(2), under a name the store's own `write` does not hide.
private func posixWrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int { write(fd, buffer, count) }
