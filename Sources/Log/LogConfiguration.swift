// Configuration and errors of the device log.
import FieldlogCore

/// When an append counts as done.
public enum Durability: String, Sendable, CaseIterable {
    /// `synchronous=FULL`: the WAL is fsynced at every commit; an append that returned
    /// survives a power cut. The default.
    case full
    /// `synchronous=NORMAL`: WAL synced only around checkpoints. Never corrupts, but the
    /// last commits may be lost on power loss (not on a process crash).
    case normal
}

/// What to do when the log reaches its disk quota.
public enum QuotaPolicy: String, Sendable, CaseIterable {
    /// Appends fail with `LogError.quotaExceeded` until acks and retention free space.
    case stop
    /// The oldest unacknowledged records are deleted and a `LossMarker(.diskQuota)` with
    /// their exact range is kept, so the loss is reported, never silent.
    case dropOldest = "drop-oldest"
}

/// Settings of a `DeviceLog`. Built in memory by tests, filled from the environment and
/// command line in `main`.
public struct LogConfiguration: Sendable {
    /// Default `.full`.
    public var durability: Durability = .full
    /// How long a write waits for another process's lock before failing. Default 5 s.
    public var busyTimeout: Duration = .seconds(5)
    /// Acknowledged records older than this (device time) are trimmed. nil: no age limit.
    /// Default 7 days.
    public var retentionMaxAge: Duration? = .seconds(7 * 24 * 3600)
    /// At most this many acknowledged records are retained. nil: no count limit. Default 100 000.
    public var retentionMaxCount: Int? = 100_000
    /// Disk quota for the database's live pages (the WAL, bounded by auto-checkpoints, is
    /// not counted). nil: no quota. Default nil.
    public var maxBytes: Int64? = nil
    /// Applied when `maxBytes` is reached. Default `.stop`.
    public var quotaPolicy: QuotaPolicy = .stop
    /// WAL pages after which a commit checkpoints into the database file
    /// (`PRAGMA wal_autocheckpoint`). Default 1000 (SQLite's default, ~4 MiB of WAL).
    public var walAutocheckpointPages: Int = 1000
    /// Most appends one group commit takes (bounds transaction size and latency). Default 8192.
    var maxBatchSize: Int = 8192

    /// Test only: the name of a registered SQLite VFS to open the file through.
    @_spi(Testing) public var vfsName: String? = nil
    /// Test only: `synchronous=OFF` (for negative controls of the power-cut test).
    @_spi(Testing) public var synchronousOff: Bool = false

    public init() {}

    public init(durability: Durability) { self.durability = durability }
}

/// An error of the device log, naming the file.
public enum LogError: Error, CustomStringConvertible, Sendable {
    /// No log file at `path`, and no device id was given to create one.
    case missing(path: String)
    /// The file exists but is not a Fieldlog device log (another SQLite file, or not SQLite).
    case notAFieldlogLog(path: String, reason: String)
    /// The file is a Fieldlog log with a schema version this build cannot read.
    case unsupportedSchema(path: String, found: Int64, supported: Int64)
    /// The file is a Fieldlog log whose contents break its own rules.
    case corrupt(path: String, detail: String)
    /// The file belongs to another device.
    case wrongDevice(path: String, expected: DeviceID, found: String)
    /// The disk quota is reached and the policy is `stop`.
    case quotaExceeded(path: String, usedBytes: Int64, maxBytes: Int64)
    /// `markAcked(through:)` beyond the head: an ack for records that were never appended.
    case ackBeyondHead(path: String, ack: SequenceNumber, head: SequenceNumber)
    /// A value from the caller broke a rule.
    case invalidInput(path: String, reason: String)
    /// The log was closed.
    case closed(path: String)
    /// SQLite failed (I/O error, busy beyond the timeout, …).
    case sqlite(SQLiteError)

    public var description: String {
        switch self {
        case .missing(let path): return "\(path): no log file here (give a device id to create one)"
        case .notAFieldlogLog(let path, let reason): return "\(path): not a Fieldlog device log: \(reason); the file was left untouched"
        case .unsupportedSchema(let path, let found, let supported):
            return "\(path): log schema version \(found) is not supported (this build reads version \(supported)); the file was left untouched"
        case .corrupt(let path, let detail): return "\(path): log is corrupt: \(detail); the file was left untouched"
        case .wrongDevice(let path, let expected, let found): return "\(path): log belongs to device \(found.debugDescription), not \(expected.rawValue.debugDescription)"
        case .quotaExceeded(let path, let used, let max):
            return "\(path): disk quota exceeded (\(used) of \(max) bytes used by the log, policy stop); appends resume when acknowledged records are trimmed"
        case .ackBeyondHead(let path, let ack, let head): return "\(path): ack through \(ack) is beyond the log head \(head)"
        case .invalidInput(let path, let reason): return "\(path): \(reason)"
        case .closed(let path): return "\(path): log is closed"
        case .sqlite(let e): return e.description
        }
    }
}

extension LogConfiguration {
    /// Environment variables read by `init(environment:)`.
    enum EnvironmentKey {
        /// `full` or `normal`.
        public static let durability = "FIELDLOG_LOG_DURABILITY"
        /// Disk quota in bytes (suffixes k, M, G of 1024 allowed); unset or 0: no quota.
        public static let maxBytes = "FIELDLOG_LOG_MAX_BYTES"
        /// `stop` or `drop-oldest`.
        public static let quotaPolicy = "FIELDLOG_LOG_QUOTA_POLICY"
        /// Acknowledged records older than this many seconds are trimmed; 0: no age limit.
        public static let retentionSeconds = "FIELDLOG_LOG_RETENTION_SECONDS"
        /// At most this many acknowledged records are kept; 0: no count limit.
        static let retentionCount = "FIELDLOG_LOG_RETENTION_COUNT"
        /// Busy timeout for locks held by other processes, milliseconds.
        static let busyTimeoutMs = "FIELDLOG_LOG_BUSY_TIMEOUT_MS"
    }

    /// The defaults, overridden by the `EnvironmentKey` variables that are set.
    /// - Throws: `DomainError` naming the variable and the bad value.
    public init(environment: [String: String]) throws(DomainError) {
        self.init()
        func value(_ key: String) -> String? {
            guard let v = environment[key]?.trimmed(.spaces), !v.isEmpty else { return nil }
            return v
        }
        func integer(_ key: String, _ text: String) throws(DomainError) -> Int64 {
            var digits = Substring(text)
            var multiplier: Int64 = 1
            if key == EnvironmentKey.maxBytes, let last = digits.last, let m = ["k": 1 << 10, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30][String(last)] {
                multiplier = Int64(m)
                digits = digits.dropLast()
            }
            guard let n = Int64(digits), n >= 0, n <= Int64.max / multiplier else {
                throw DomainError("\(key) must be a non-negative integer, got \(text.debugDescription)")
            }
            return n * multiplier
        }
        if let v = value(EnvironmentKey.durability) {
            guard let d = Durability(rawValue: v) else { throw DomainError("\(EnvironmentKey.durability) must be full or normal, got \(v.debugDescription)") }
            durability = d
        }
        if let v = value(EnvironmentKey.maxBytes) {
            let n = try integer(EnvironmentKey.maxBytes, v)
            guard n == 0 || n >= 64 * 1024 else { throw DomainError("\(EnvironmentKey.maxBytes) must be 0 (no quota) or at least 64k, got \(v.debugDescription)") }
            maxBytes = n == 0 ? nil : n
        }
        if let v = value(EnvironmentKey.quotaPolicy) {
            guard let p = QuotaPolicy(rawValue: v) else { throw DomainError("\(EnvironmentKey.quotaPolicy) must be stop or drop-oldest, got \(v.debugDescription)") }
            quotaPolicy = p
        }
        if let v = value(EnvironmentKey.retentionSeconds) {
            let n = try integer(EnvironmentKey.retentionSeconds, v)
            retentionMaxAge = n == 0 ? nil : .seconds(n)
        }
        if let v = value(EnvironmentKey.retentionCount) {
            let n = try integer(EnvironmentKey.retentionCount, v)
            retentionMaxCount = n == 0 ? nil : Int(n)
        }
        if let v = value(EnvironmentKey.busyTimeoutMs) {
            busyTimeout = .milliseconds(try integer(EnvironmentKey.busyTimeoutMs, v))
        }
    }
}
