// CrashVFS: a test-only SQLite VFS over "unix" that simulates a power cut
// (shared/notes/POWERLOSS.md, after SQLite's src/test6.c).
//
// Theory of operation
// - Writes and truncates are not applied to the file: they are queued per path (the OS
//   page cache). Reads and sizes see the real file with the queue laid over it.
// - xSync on a file applies that path's queue to the real file (the real fsync is skipped:
//   the real file *is* the disk here).
// - Every mutating call (write, truncate, sync) counts as one operation. When the count
//   reaches `crashAt`, the power is cut: every queued write of every file is independently
//   applied, dropped, or torn (a prefix of new bytes, then garbage), then all later mutating
//   calls fail with SQLITE_IOERR so nothing (checkpoint, WAL delete at close) can run.
// - `failSyncAt` instead fails that one xSync with SQLITE_IOERR_FSYNC and drops its queued
//   writes (Linux "fsyncgate": dirty pages dropped, error reported once).
// - Device characteristics: POWERSAFE_OVERWRITE, so only bytes that were written may tear.
// File struct layout (hand-made): pMethods at 0, our handle id at 8, the real unixFile at 16.
import CSQLite
import FieldlogCore
import Foundation

let SQLITE_IOERR_SHORT_READ_: Int32 = SQLITE_IOERR | (2 << 8)
let SQLITE_IOERR_WRITE_: Int32 = SQLITE_IOERR | (3 << 8)
let SQLITE_IOERR_FSYNC_: Int32 = SQLITE_IOERR | (4 << 8)
let SQLITE_IOERR_TRUNCATE_: Int32 = SQLITE_IOERR | (6 << 8)
let SQLITE_IOERR_DELETE_: Int32 = SQLITE_IOERR | (10 << 8)

/// Shared state of the crash VFS (one per process; tests using it must not run in parallel).
final class CrashVFS: @unchecked Sendable {
    // @unchecked: every mutable field is only touched with `lock` held.
    static let name = "fieldlog-crash"
    static let shared = CrashVFS()

    enum Op {
        case write(offset: Int64, data: [UInt8])
        case truncate(Int64)
    }

    private let lock = NSLock()
    private var queues: [String: [Op]] = [:]
    private var handles: [Int: String] = [:]
    private var nextHandle = 1
    private(set) var operations = 0
    private var crashAt = Int.max
    private var failSyncAt = Int.max
    private var syncs = 0
    private(set) var crashed = false
    private(set) var syncFailures = 0
    private var rng = SplitMix64(seed: 0)

    private init() {
        _ = Self.registered
    }

    static let registered: Bool = {
        guard let unix = sqlite3_vfs_find("unix") else { fatalError("no unix VFS") }
        let vfs = UnsafeMutablePointer<sqlite3_vfs>.allocate(capacity: 1)
        vfs.initialize(to: unix.pointee)
        vfs.pointee.zName = UnsafePointer(strdup(name))
        vfs.pointee.szOsFile = 16 + unix.pointee.szOsFile
        vfs.pointee.pNext = nil
        vfs.pointee.xOpen = crashOpen
        vfs.pointee.xDelete = crashDelete
        vfs.pointee.xAccess = crashAccess
        let rc = sqlite3_vfs_register(vfs, 0)
        precondition(rc == SQLITE_OK, "sqlite3_vfs_register failed: \(rc)")
        return true
    }()

    /// Starts a run: empty caches, counters at zero, crash at mutating operation `crashAt`
    /// (Int.max: never), fail the `failSyncAt`-th xSync (Int.max: never).
    func arm(crashAt: Int = .max, failSyncAt: Int = .max, seed: UInt64) {
        lock.withLock {
            queues.removeAll()
            operations = 0
            syncs = 0
            syncFailures = 0
            crashed = false
            self.crashAt = crashAt
            self.failSyncAt = failSyncAt
            rng = SplitMix64(seed: seed)
        }
    }

    /// Cuts the power now, dropping every write not yet synced (no random apply or tear):
    /// for tests that need one certain outcome.
    func cutDroppingUnsynced() {
        lock.withLock {
            crashed = true
            queues.removeAll()
        }
    }

    /// Ends a run (after all connections are closed): forgets queued writes, stops failing.
    func disarm() {
        lock.withLock {
            queues.removeAll()
            crashed = false
            crashAt = .max
            failSyncAt = .max
        }
    }

    // MARK: Called from the C callbacks

    func register(path: String) -> Int {
        lock.withLock {
            let id = nextHandle
            nextHandle += 1
            handles[id] = path
            return id
        }
    }

    func unregister(_ id: Int) { _ = lock.withLock { handles.removeValue(forKey: id) } }
    func path(_ id: Int) -> String { lock.withLock { handles[id] ?? "" } }

    /// Counts a mutating operation; true when it must fail (power already cut, or cut now).
    private func countLocked() -> Bool {
        if crashed { return true }
        operations += 1
        if operations >= crashAt {
            cutLocked()
            return true
        }
        return false
    }

    /// The power cut: each queued op of each file is applied, dropped or torn.
    private func cutLocked() {
        crashed = true
        for (path, ops) in queues {
            let fd = Foundation.open(path, O_WRONLY)
            guard fd >= 0 else { continue }
            for op in ops {
                let choice = rng.next() % 10
                switch op {
                case .write(let offset, let data):
                    if choice < 4 {
                        _ = data.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) }
                    } else if choice < 6 && !data.isEmpty {
                        var torn = data
                        let keep = Int(rng.next() % UInt64(data.count))
                        for i in keep..<torn.count where rng.next() % 2 == 0 { torn[i] = UInt8(truncatingIfNeeded: rng.next()) }
                        let length = keep + Int(rng.next() % UInt64(data.count - keep + 1))
                        _ = torn.withUnsafeBytes { pwrite(fd, $0.baseAddress, length, off_t(offset)) }
                    }
                case .truncate(let size):
                    if choice < 5 { _ = ftruncate(fd, off_t(size)) }
                }
            }
            Foundation.close(fd)
        }
        queues.removeAll()
    }

    func write(path: String, offset: Int64, bytes: UnsafeRawPointer, count: Int) -> Int32 {
        lock.withLock {
            if countLocked() { return SQLITE_IOERR_WRITE_ }
            queues[path, default: []].append(.write(offset: offset, data: Array(UnsafeRawBufferPointer(start: bytes, count: count))))
            return SQLITE_OK
        }
    }

    func truncate(path: String, size: Int64) -> Int32 {
        lock.withLock {
            if countLocked() { return SQLITE_IOERR_TRUNCATE_ }
            queues[path, default: []].append(.truncate(size))
            return SQLITE_OK
        }
    }

    /// Returns the ops to apply to the real file now, or an error code.
    func sync(path: String) -> Result<[Op], SyncFailure> {
        lock.withLock {
            if countLocked() { return .failure(SyncFailure(code: SQLITE_IOERR_FSYNC_)) }
            syncs += 1
            let ops = queues.removeValue(forKey: path) ?? []
            if syncs == failSyncAt {
                syncFailures += 1
                return .failure(SyncFailure(code: SQLITE_IOERR_FSYNC_))   // dirty pages dropped
            }
            return .success(ops)
        }
    }

    struct SyncFailure: Error { let code: Int32 }

    func queued(path: String) -> [Op] { lock.withLock { queues[path] ?? [] } }

    func delete(path: String) -> Int32? {
        lock.withLock {
            if crashed { return SQLITE_IOERR_DELETE_ }
            queues.removeValue(forKey: path)
            return nil
        }
    }

    var isCrashed: Bool { lock.withLock { crashed } }
    var operationCount: Int { lock.withLock { operations } }
    var failedSyncs: Int { lock.withLock { syncFailures } }
    /// xSync calls since `arm`.
    var syncCount: Int { lock.withLock { syncs } }

    static func logicalSize(realSize: Int64, ops: [Op]) -> Int64 {
        var size = realSize
        for op in ops {
            switch op {
            case .write(let offset, let data): size = max(size, offset + Int64(data.count))
            case .truncate(let n): size = n
            }
        }
        return size
    }
}

// MARK: C callbacks (non-capturing; state lives in CrashVFS.shared)

private func realFile(_ file: UnsafeMutablePointer<sqlite3_file>) -> UnsafeMutablePointer<sqlite3_file> {
    UnsafeMutableRawPointer(file).advanced(by: 16).assumingMemoryBound(to: sqlite3_file.self)
}

private func handleID(_ file: UnsafeMutablePointer<sqlite3_file>) -> Int {
    UnsafeMutableRawPointer(file).advanced(by: 8).load(as: Int.self)
}

private func realMethods(_ file: UnsafeMutablePointer<sqlite3_file>) -> sqlite3_io_methods {
    realFile(file).pointee.pMethods.pointee
}

private func realSize(_ file: UnsafeMutablePointer<sqlite3_file>) -> Int64 {
    var size: sqlite3_int64 = 0
    _ = realMethods(file).xFileSize(realFile(file), &size)
    return size
}

/// Applies ops to the real file through its own handle (keeps the VFS's POSIX locks intact).
private func apply(_ ops: [CrashVFS.Op], to file: UnsafeMutablePointer<sqlite3_file>) -> Int32 {
    let m = realMethods(file)
    let real = realFile(file)
    for op in ops {
        let rc: Int32
        switch op {
        case .write(let offset, let data):
            rc = data.withUnsafeBytes { m.xWrite(real, $0.baseAddress, Int32($0.count), offset) }
        case .truncate(let size):
            rc = m.xTruncate(real, size)
        }
        if rc != SQLITE_OK { return rc }
    }
    return SQLITE_OK
}

nonisolated(unsafe) private let crashMethods: UnsafeMutablePointer<sqlite3_io_methods> = {
    let m = UnsafeMutablePointer<sqlite3_io_methods>.allocate(capacity: 1)
    m.initialize(to: sqlite3_io_methods())
    m.pointee.iVersion = 2
    m.pointee.xClose = { file in
        guard let file else { return SQLITE_OK }
        CrashVFS.shared.unregister(handleID(file))
        return realMethods(file).xClose(realFile(file))
    }
    m.pointee.xRead = { file, buffer, amount, offset in
        guard let file, let buffer else { return SQLITE_IOERR }
        // After the cut the process is "dead": it must not read what the disk now holds.
        if CrashVFS.shared.isCrashed { return SQLITE_IOERR | (1 << 8) }
        let path = CrashVFS.shared.path(handleID(file))
        let ops = CrashVFS.shared.queued(path: path)
        let rc = realMethods(file).xRead(realFile(file), buffer, amount, offset)
        if ops.isEmpty { return rc }
        if rc != SQLITE_OK && rc != SQLITE_IOERR_SHORT_READ_ { return rc }
        let size = CrashVFS.logicalSize(realSize: realSize(file), ops: ops)
        let lo = offset, hi = offset + Int64(amount)
        for op in ops {
            switch op {
            case .write(let wOffset, let data):
                let a = max(lo, wOffset), b = min(hi, wOffset + Int64(data.count))
                if a < b {
                    data.withUnsafeBytes { src in
                        (buffer + Int(a - lo)).copyMemory(from: src.baseAddress! + Int(a - wOffset), byteCount: Int(b - a))
                    }
                }
            case .truncate(let n):
                if n < hi { let a = max(lo, n); memset(buffer + Int(a - lo), 0, Int(hi - a)) }
            }
        }
        if hi > size {
            let a = max(lo, size)
            memset(buffer + Int(a - lo), 0, Int(hi - a))
            return SQLITE_IOERR_SHORT_READ_
        }
        return SQLITE_OK
    }
    m.pointee.xWrite = { file, bytes, amount, offset in
        guard let file, let bytes else { return SQLITE_IOERR }
        return CrashVFS.shared.write(path: CrashVFS.shared.path(handleID(file)), offset: offset, bytes: bytes, count: Int(amount))
    }
    m.pointee.xTruncate = { file, size in
        guard let file else { return SQLITE_IOERR }
        return CrashVFS.shared.truncate(path: CrashVFS.shared.path(handleID(file)), size: size)
    }
    m.pointee.xSync = { file, _ in
        guard let file else { return SQLITE_IOERR }
        switch CrashVFS.shared.sync(path: CrashVFS.shared.path(handleID(file))) {
        case .failure(let f): return f.code
        case .success(let ops): return apply(ops, to: file)
        }
    }
    m.pointee.xFileSize = { file, out in
        guard let file, let out else { return SQLITE_IOERR }
        let ops = CrashVFS.shared.queued(path: CrashVFS.shared.path(handleID(file)))
        out.pointee = CrashVFS.logicalSize(realSize: realSize(file), ops: ops)
        return SQLITE_OK
    }
    m.pointee.xLock = { file, level in realMethods(file!).xLock(realFile(file!), level) }
    m.pointee.xUnlock = { file, level in realMethods(file!).xUnlock(realFile(file!), level) }
    m.pointee.xCheckReservedLock = { file, out in realMethods(file!).xCheckReservedLock(realFile(file!), out) }
    m.pointee.xFileControl = { file, op, arg in
        switch op {
        case SQLITE_FCNTL_SIZE_HINT, SQLITE_FCNTL_CHUNK_SIZE: return SQLITE_OK   // would bypass the cache
        case SQLITE_FCNTL_MMAP_SIZE: return SQLITE_NOTFOUND                     // no mmap of cached data
        default: return realMethods(file!).xFileControl(realFile(file!), op, arg)
        }
    }
    m.pointee.xSectorSize = { file in realMethods(file!).xSectorSize(realFile(file!)) }
    m.pointee.xDeviceCharacteristics = { _ in SQLITE_IOCAP_POWERSAFE_OVERWRITE }
    m.pointee.xShmMap = { file, page, size, extend, out in realMethods(file!).xShmMap(realFile(file!), page, size, extend, out) }
    m.pointee.xShmLock = { file, offset, n, flags in realMethods(file!).xShmLock(realFile(file!), offset, n, flags) }
    m.pointee.xShmBarrier = { file in realMethods(file!).xShmBarrier(realFile(file!)) }
    m.pointee.xShmUnmap = { file, delete in realMethods(file!).xShmUnmap(realFile(file!), delete) }
    return m
}()

private func crashOpen(_ vfs: UnsafeMutablePointer<sqlite3_vfs>?, _ name: UnsafePointer<CChar>?, _ file: UnsafeMutablePointer<sqlite3_file>?,
                       _ flags: Int32, _ outFlags: UnsafeMutablePointer<Int32>?) -> Int32 {
    guard let file, let unix = sqlite3_vfs_find("unix") else { return SQLITE_CANTOPEN }
    let path = name.map { String(cString: $0) } ?? "anonymous-\(UUID().uuidString)"
    let rc = unix.pointee.xOpen(unix, name, realFile(file), flags, outFlags)
    guard rc == SQLITE_OK, realFile(file).pointee.pMethods != nil else {
        file.pointee.pMethods = nil
        return rc
    }
    file.pointee.pMethods = UnsafePointer(crashMethods)
    UnsafeMutableRawPointer(file).advanced(by: 8).storeBytes(of: CrashVFS.shared.register(path: path), as: Int.self)
    return SQLITE_OK
}

private func crashDelete(_ vfs: UnsafeMutablePointer<sqlite3_vfs>?, _ name: UnsafePointer<CChar>?, _ syncDir: Int32) -> Int32 {
    guard let unix = sqlite3_vfs_find("unix"), let name else { return SQLITE_IOERR }
    if let rc = CrashVFS.shared.delete(path: String(cString: name)) { return rc }
    return unix.pointee.xDelete(unix, name, syncDir)
}

private func crashAccess(_ vfs: UnsafeMutablePointer<sqlite3_vfs>?, _ name: UnsafePointer<CChar>?, _ flags: Int32,
                         _ out: UnsafeMutablePointer<Int32>?) -> Int32 {
    guard let unix = sqlite3_vfs_find("unix"), let name, let out else { return SQLITE_IOERR }
    let ops = CrashVFS.shared.queued(path: String(cString: name))
    if flags == SQLITE_ACCESS_EXISTS, CrashVFS.logicalSize(realSize: 0, ops: ops) > 0 {
        out.pointee = 1
        return SQLITE_OK
    }
    return unix.pointee.xAccess(unix, name, flags, out)
}
