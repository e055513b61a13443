// The vocabulary of refusal: why bytes did not become a message (spec/protocol.md §5.2), as
// every decoder (JSON and compact) reports it and as the backend stores and counts it.

/// The dead-letter classes of spec §5.2. Raw values are the names stored and counted.
public enum DeadLetterReason: String, Hashable, Sendable, CaseIterable {
    /// Larger than `ProtocolLimits.maxMessageBytes` (checked before parsing).
    case oversize = "oversize"
    /// Not JSON, or not UTF-8, or trailing data, duplicate keys, too deep.
    case malformedJSON = "malformed-json"
    /// A compact batch (§3.7) whose bytes cannot be read: truncated, a corrupt zlib stream, an
    /// inflated size other than the declared one, non-canonical varints, invalid UTF-8, trailing bytes.
    case malformedCompact = "malformed-compact"
    /// `v` missing or not a version this receiver speaks.
    case unknownVersion = "unknown-version"
    /// Valid JSON of the right version, but a member missing, of the wrong type, out of
    /// its limits, unknown, or the wrong `type` for the topic.
    case invalidMessage = "invalid-message"
    /// The message's `device` differs from the device in its topic.
    case deviceMismatch = "device-mismatch"
    /// Sequence numbers in a batch not strictly ascending (a regression or a duplicate).
    case sequenceRegression = "sequence-regression"
    /// Records and loss markers do not exactly cover the batch's `first...last`.
    case rangeMismatch = "range-mismatch"
    /// The topic does not match any subscribed template.
    case unknownTopic = "unknown-topic"
    /// One record of an otherwise valid batch that the receiver could not accept (§5.3); the
    /// record is kept aside and counted as accounted for.
    case rejectedRecord = "rejected-record"
    /// A seed-format (legacy) value list that could not be read (§6.3).
    case legacyMalformed = "legacy-malformed"
    /// A valid message the database refused for good (a data or constraint error, or an error
    /// that persisted through every retry); kept aside with the database's reason (§5.2).
    case storeRefused = "store-refused"
}

/// Why bytes could not be decoded into a message.
public struct SyncDecodingError: Error, Hashable, Sendable, CustomStringConvertible {
    public var reason: DeadLetterReason
    public var message: String
    public init(_ reason: DeadLetterReason, _ message: String) {
        self.reason = reason
        self.message = message
    }
    public var description: String { "\(reason.rawValue): \(message)" }
}

/// Why a command could not be understood; carries what is needed to send an error reply.
public struct CommandDecodingError: Error, Hashable, Sendable, CustomStringConvertible {
    public var requestID: String?
    public var command: String?
    public var code: CommandErrorCode
    public var message: String
    public var description: String { "\(code.rawValue): \(message)" }

    /// The error reply for this failure.
    public var response: CommandResponse {
        CommandResponse(requestID: requestID, command: command ?? "", error: code, message: message)
    }
}
