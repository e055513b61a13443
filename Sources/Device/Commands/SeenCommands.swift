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
import Dispatch
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
public final class SeenCommands: @unchecked Sendable {
    // @unchecked: `entries`, `order`, `lineCount` and `fd` are only touched on `queue`.
    public let path: String
    public let capacity: Int
    private let queue = DispatchQueue(label: "fieldlog.seen-commands")
    private var entries: [String: SeenState] = [:]
    private var order: [String] = []
    private var lineCount = 0
    /// The file, open for appending; -1 once closed.
    private var fd: Int32 = -1

    struct Line: Codable {
        var k: String
        var r: String?
    }

    /// Opens (or creates) the file; throws naming the file when it cannot be read or created.
    public init(path: String, capacity: Int) throws {
        precondition(capacity > 0)
        self.path = path
        self.capacity = capacity
        if FileManager.default.fileExists(atPath: path) {
            guard let data = FileManager.default.contents(atPath: path) else {
                throw SeenCommandsError("cannot read the command-id file \(path)")
            }
            for line in data.split(separator: UInt8(ascii: "\n")) {
                guard let l = try? JSONDecoder().decode(Line.self, from: line) else { continue }  // torn line
                remember(l.k, l.r.map { .answered(Data($0.utf8)) } ?? .started)
                lineCount += 1
            }
        } else {
            guard FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o600]) else {
                throw SeenCommandsError("cannot create the command-id file \(path) (\(String(cString: strerror(errno))))")
            }
            Self.syncDirectory(of: path)
        }
        fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC)
        guard fd >= 0 else {
            throw SeenCommandsError("cannot open the command-id file \(path) for writing (\(String(cString: strerror(errno))))")
        }
    }

    deinit { if fd >= 0 { close(fd) } }

    private func remember(_ key: String, _ state: SeenState) {
        if entries[key] == nil { order.append(key) }
        entries[key] = state
    }

    public func state(of key: String) -> SeenState? {
        queue.sync { entries[key] }
    }

    /// Durably marks `key` as started. Throws when the file cannot be written: the caller must
    /// then not execute the command.
    public func markStarted(_ key: String) async throws {
        try await write(Line(k: key, r: nil), state: .started)
    }

    /// Durably records the response for `key`.
    public func markAnswered(_ key: String, response: Data) async throws {
        try await write(Line(k: key, r: String(decoding: response, as: UTF8.self)), state: .answered(response))
    }

    private func write(_ line: Line, state: SeenState) async throws {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            queue.async {
                do {
                    try self.writeLocked(line, state: state)
                    c.resume()
                } catch {
                    c.resume(throwing: error)
                }
            }
        }
    }

    private func writeLocked(_ line: Line, state: SeenState) throws {
        guard fd >= 0 else { throw SeenCommandsError("command-id file \(path) is closed") }
        var data = try JSONEncoder().encode(line)
        data.append(UInt8(ascii: "\n"))
        try Self.writeAll(data, to: fd, path: path)
        remember(line.k, state)
        lineCount += 1
        if lineCount > 2 * capacity { try compactLocked() }
    }

    private func compactLocked() throws {
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
        defer { close(tfd) }
        try Self.writeAll(out, to: tfd, path: tmp)
        guard rename(tmp, path) == 0 else { throw SeenCommandsError("cannot rename \(tmp) to \(path): \(String(cString: strerror(errno)))") }
        Self.syncDirectory(of: path)
        close(fd)
        fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC)
        let kept = Set(keep)
        for k in order where !kept.contains(k) { entries[k] = nil }
        order = Array(keep)
        lineCount = order.count
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

/// The command-id file could not be read or written (names the file).
struct SeenCommandsError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// write(2), under a name the store's own `write` does not hide.
private func posixWrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int { write(fd, buffer, count) }
