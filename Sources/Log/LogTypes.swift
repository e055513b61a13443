// The values a `DeviceLog` hands out besides records: entries of a range, its counters, its status.
import FieldlogCore

/// One entry of a log range: a record, or a marker for records that were lost.
public enum LogEntry: Hashable, Sendable {
    case record(LogRecord)
    case loss(LossMarker)
}

/// Group-commit counters of one `DeviceLog` since it was opened.
public struct LogStatistics: Sendable, Hashable {
    /// Append transactions committed.
    public var commits: UInt64 = 0
    /// Appends returned to callers as durable.
    var appendsCommitted: UInt64 = 0
    /// Append transactions that failed (their appends are in doubt).
    var failedCommits: UInt64 = 0
    var appendsFailed: UInt64 = 0
    /// Most appends one commit carried.
    public var largestBatch: Int = 0
}

/// A snapshot of a log's state.
public struct LogStatus: Sendable {
    public var path: String
    public var deviceID: DeviceID
    public var epoch: Epoch
    /// Highest sequence number appended.
    public var head: SequenceNumber
    /// Highest sequence number the backend confirmed.
    public var ackedThrough: SequenceNumber
    /// Unacknowledged records present (head − acked − records lost under markers).
    public var backlog: Int
    /// Records present in the file (acknowledged ones kept for replay, plus the backlog).
    public var retained: Int
    /// Lowest sequence number still present.
    public var oldestRetained: SequenceNumber?
    public var fileBytes: Int64
    public var walBytes: Int64
    public var lossMarkers: [LossMarker]
}
