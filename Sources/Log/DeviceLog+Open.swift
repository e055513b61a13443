// DeviceLog: opening a log file, creating it and its schema, and identifying what a file is
// (the theory of operation is in DeviceLog.swift).
import CSQLite
import FieldlogCore
import Logging
import Threading
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension DeviceLog {
    // MARK: Open

    /// Opens the log at `path`, creating it for `device` when the file does not exist.
    ///
    /// - Parameter device: the device this log belongs to. Required to create a log; when
    ///   given for an existing log it must match (`LogError.wrongDevice`). nil opens an
    ///   existing log of any device (readers, CLI).
    /// - Throws: `LogError.missing`, `.notAFieldlogLog`, `.unsupportedSchema`, `.corrupt`,
    ///   `.wrongDevice`, `.sqlite`. A file that is not ours is never modified.
    public static func open(path: String, device: DeviceID?, configuration: LogConfiguration = LogConfiguration(),
                            logger: Logger = Logger(label: "fieldlog.log")) async throws -> DeviceLog {
        let thread = OwnerThread(name: "fieldlog-sqlite", stackSize: 1 << 20)
        do {
            let opened = try await thread.run { () throws -> Opened in
                let (connection, device, epoch) = try openOnThread(path: path, device: device, configuration: configuration)
                let store = ThreadConfined(LogStore(connection: connection, path: path, configuration: configuration, logger: logger),
                                           on: thread)
                return Opened(store: store, device: device, epoch: epoch)
            }
            logger.debug("opened log", metadata: ["path": "\(path)", "device": "\(opened.device)", "epoch": "\(opened.epoch)"])
            return DeviceLog(path: path, deviceID: opened.device, epoch: opened.epoch, configuration: configuration,
                             store: opened.store, logger: logger)
        } catch {
            thread.stop()
            throw error
        }
    }

    private struct Opened: Sendable {
        var store: ThreadConfined<LogStore>
        var device: DeviceID
        var epoch: Epoch
    }

    /// Opens (and if need be creates) the log, retrying an open that SQLite refused as busy.
    ///
    /// SQLite answers `SQLITE_BUSY` without calling the busy handler where waiting could
    /// deadlock. Two processes that create the same log at once both switch it to WAL, each
    /// upgrading a read lock it holds, and one of them gets that answer at once. Everything an
    /// open does is idempotent (the schema is created only if it is still missing, inside a
    /// write transaction), so a busy open starts again, until the busy timeout.
    private static func openOnThread(path: String, device: DeviceID?, configuration: LogConfiguration) throws -> (SQLiteConnection, DeviceID, Epoch) {
        let deadline = ContinuousClock.now + configuration.busyTimeout
        var pause = Duration.milliseconds(1)
        while true {
            do {
                return try openOnce(path: path, device: device, configuration: configuration)
            } catch LogError.sqlite(let error) where error.isBusy && ContinuousClock.now < deadline {
                OSThread.sleep(pause + .microseconds(Int64.random(in: 0...1000)))
                pause = min(pause * 2, .milliseconds(50))
            }
        }
    }

    private static func openOnce(path: String, device: DeviceID?, configuration: LogConfiguration) throws -> (SQLiteConnection, DeviceID, Epoch) {
        var st = stat()
        let exists = stat(path, &st) == 0
        if exists && (st.st_mode & S_IFMT) == S_IFDIR { throw LogError.notAFieldlogLog(path: path, reason: "it is a directory") }
        if !exists && device == nil { throw LogError.missing(path: path) }

        let connection: SQLiteConnection
        do {
            connection = try SQLiteConnection(path: path, create: device != nil, vfs: configuration.vfsName)
        } catch {
            throw LogError.sqlite(error)
        }
        do {
            let busyMs = configuration.busyTimeout.inMilliseconds
            try connection.setBusyTimeout(milliseconds: Int32(clamping: busyMs))
            // Per connection, before anything is written (the schema's creation included).
            let synchronous = configuration.synchronousOff ? "OFF" : (configuration.durability == .full ? "FULL" : "NORMAL")
            try connection.execute("PRAGMA synchronous=\(synchronous)")
            let expected: Int64 = configuration.synchronousOff ? 0 : (configuration.durability == .full ? 2 : 1)
            guard try connection.scalarInt("PRAGMA synchronous") == expected else {
                throw LogError.corrupt(path: path, detail: "could not set synchronous=\(synchronous)")
            }
            // Identify the file before writing anything to it.
            var (appID, tables) = try connection.readTransaction { try identify(connection, path: path) }
            if appID == 0 && tables == 0 {
                guard let device else { throw LogError.notAFieldlogLog(path: path, reason: "the database is empty") }
                // The log's creation (and its epoch) is always made durable, whatever the
                // durability of appends: a log must never silently come back with a new epoch.
                try connection.execute("PRAGMA synchronous=FULL")
                try connection.execute("PRAGMA journal_mode=WAL")
                try connection.writeTransaction {
                    // Another process may have created it since we looked.
                    (appID, tables) = try identify(connection, path: path)
                    guard appID == 0 && tables == 0 else { return }
                    try createSchema(connection, device: device)
                }
                (appID, tables) = try connection.readTransaction { try identify(connection, path: path) }
                try connection.execute("PRAGMA synchronous=\(synchronous)")
            }
            guard appID == applicationID else {
                throw LogError.notAFieldlogLog(path: path, reason: appID == 0
                    ? "it is an SQLite database of another application (\(tables) schema objects, no Fieldlog application id)"
                    : "application id is \(hex8(appID)), Fieldlog logs have \(hex8(applicationID))")
            }
            var version = try connection.scalarInt("PRAGMA user_version") ?? 0
            guard version == schemaVersion || version == 1 else {
                throw LogError.unsupportedSchema(path: path, found: version, supported: schemaVersion)
            }
            if version == 1 {
                // A version 1 file is a valid version 2 file (its state.head equals the head);
                // marking it keeps builds that would read state.head alone from opening it.
                try connection.writeTransaction {
                    version = try connection.scalarInt("PRAGMA user_version") ?? 0
                    if version == 1 { try connection.execute("PRAGMA user_version = \(schemaVersion)") }
                }
            }
            let meta = try readMeta(connection, path: path)
            if let device, device != meta.device {
                throw LogError.wrongDevice(path: path, expected: device, found: meta.device.rawValue)
            }
            let mode = try connection.query("PRAGMA journal_mode").first?.first
            if mode != .text("wal") { try connection.execute("PRAGMA journal_mode=WAL") }
            try connection.execute("PRAGMA wal_autocheckpoint=\(max(0, configuration.walAutocheckpointPages))")
            // Check the state row once at open.
            _ = try readState(connection, path: path)
            return (connection, meta.device, meta.epoch)
        } catch let error as SQLiteError {
            connection.close()
            if error.isCorrupt { throw LogError.notAFieldlogLog(path: path, reason: error.message) }
            throw LogError.sqlite(error)
        } catch {
            connection.close()
            throw error
        }
    }


    /// The application id and the number of schema objects. Read both in one transaction: a
    /// process creating the log at the same moment must not be seen half done (no id yet,
    /// tables already there), which would look like another application's database.
    private static func identify(_ c: SQLiteConnection, path: String) throws -> (Int32, Int64) {
        let appID = Int32(truncatingIfNeeded: try c.scalarInt("PRAGMA application_id") ?? 0)
        let tables = try c.scalarInt("SELECT count(*) FROM sqlite_master") ?? 0
        return (appID, tables)
    }

    private static func createSchema(_ c: SQLiteConnection, device: DeviceID) throws {
        try c.execute("""
            CREATE TABLE meta(key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID;
            CREATE TABLE state(id INTEGER PRIMARY KEY CHECK (id = 1),
                               head INTEGER NOT NULL CHECK (head >= 0),
                               acked INTEGER NOT NULL CHECK (acked >= 0 AND acked <= head));
            CREATE TABLE records(seq INTEGER PRIMARY KEY CHECK (seq >= 1),
                                 ts_ms INTEGER NOT NULL,
                                 unsynced INTEGER NOT NULL,
                                 body BLOB NOT NULL,
                                 crc INTEGER NOT NULL);
            CREATE TABLE loss_markers(first INTEGER PRIMARY KEY CHECK (first >= 1),
                                      last INTEGER NOT NULL CHECK (last >= first),
                                      reason TEXT NOT NULL,
                                      recorded_ms INTEGER NOT NULL,
                                      detail TEXT NOT NULL);
            INSERT INTO state(id, head, acked) VALUES (1, 0, 0);
            PRAGMA application_id = \(applicationID);
            PRAGMA user_version = \(schemaVersion);
            """)
        let epoch = Epoch.random()
        for (key, value) in [("format", formatName), ("device_id", device.rawValue), ("epoch", epoch.hex),
                             ("created_ms", String(currentTimeMs()))] {
            try c.run("INSERT INTO meta(key, value) VALUES (?, ?)", [.text(key), .text(value)])
        }
    }

    private static func readMeta(_ c: SQLiteConnection, path: String) throws -> (device: DeviceID, epoch: Epoch) {
        var meta: [String: String] = [:]
        for row in try c.query("SELECT key, value FROM meta") {
            if case .text(let k) = row[0], case .text(let v) = row[1] { meta[k] = v }
        }
        guard meta["format"] == formatName else {
            throw LogError.corrupt(path: path, detail: "meta format is \(meta["format"].debugDescription), expected \(formatName)")
        }
        guard let deviceText = meta["device_id"], let device = try? DeviceID(deviceText) else {
            throw LogError.corrupt(path: path, detail: "meta device_id \(meta["device_id"].debugDescription) is not a valid device id")
        }
        guard let epochText = meta["epoch"], let epoch = try? Epoch(hex: epochText), epoch.rawValue != 0 else {
            throw LogError.corrupt(path: path, detail: "meta epoch \(meta["epoch"].debugDescription) is not a valid epoch")
        }
        return (device, epoch)
    }

    /// The head (max of state.head and the highest record) and the acked pointer.
    static func readState(_ c: SQLiteConnection, path: String) throws -> (head: SequenceNumber, acked: SequenceNumber) {
        let rows = try c.query("SELECT max(head, coalesce((SELECT max(seq) FROM records), 0)), acked FROM state WHERE id = 1")
        guard rows.count == 1, case .integer(let head) = rows[0][0], case .integer(let acked) = rows[0][1],
              head >= 0, acked >= 0, acked <= head, UInt64(head) <= SequenceNumber.max.rawValue else {
            throw LogError.corrupt(path: path, detail: "state row is missing or invalid: \(rows)")
        }
        return (SequenceNumber(UInt64(head)), SequenceNumber(UInt64(acked)))
    }
}

/// `0x` and eight hex digits of the 32 bits (as `%08x` prints them).
private func hex8(_ v: Int32) -> String {
    let digits = String(UInt32(bitPattern: v), radix: 16)
    return "0x" + String(repeating: "0", count: 8 - digits.count) + digits
}
