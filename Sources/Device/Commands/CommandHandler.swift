// The command handler: command payloads in, protocol responses (and a few side effects) out.
//
// Theory of operation: `handle(payload)` decodes the payload with the protocol's codec (the
// seed's commands in any letter case, plus `replay`, `status`, `start`, `stop`,
// `set_interval`); anything malformed or unknown gets an error response and nothing else
// happens. A command with a request id is executed at most once: the id is looked up in the
// durable `SeenCommands`; a repeat delivery (QoS 1 redelivery, a backend retry) is answered
// with the stored response bytes and not executed again. Otherwise the id is marked started
// (fsynced) before executing, and the response is stored after. The command then acts on a
// `CommandEnvironment` (runtime switches, log facts, replay, status). For `reboot`, the
// result carries an action to run after the response was published, so the caller sees the
// answer before the device goes down. Nothing here touches MQTT: the MQTT agent calls
// `handle` for each message on the request and broadcast topics and publishes the payload on
// the response topic.
import FieldlogCore
import Threading
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Logging
import Sync

/// Facts about the log for `get_config`.
public struct LogFacts: Sendable {
    public var deviceID: DeviceID
    public var epoch: Epoch
    public var head: SequenceNumber
    public var ackedThrough: SequenceNumber
    public init(deviceID: DeviceID, epoch: Epoch, head: SequenceNumber, ackedThrough: SequenceNumber) {
        self.deviceID = deviceID
        self.epoch = epoch
        self.head = head
        self.ackedThrough = ackedThrough
    }
}

/// What a replay did: the range republished and the parts no longer retained.
public struct ReplayOutcome: Sendable, Equatable {
    public var resent: SequenceRange?
    public var notRetained: [SequenceRange]
    public init(resent: SequenceRange?, notRetained: [SequenceRange]) {
        self.resent = resent
        self.notRetained = notRetained
    }
}

/// What commands act on. The device node implements it over its components.
public protocol CommandEnvironment: Sendable {
    var settings: RuntimeSettings { get }
    func logFacts() async throws -> LogFacts
    /// Republishes a range as batches marked with the request id; returns when done.
    func replay(_ request: ReplayQuery) async throws -> ReplayOutcome
    /// The current status (also published on the status topic by the caller).
    func currentStatus() async throws -> Status
    /// The first retained record at or after `sequence`, with its time; nil when there is none
    /// (maps a Redis stream id in `send_measurements` onto the log).
    func firstRetainedRecord(atOrAfter sequence: SequenceNumber) async throws -> RecordTime?
    /// The reboot command line; empty when reboot is disabled.
    var rebootCommand: [String] { get }
}

/// The result of handling one payload.
public struct CommandResult: Sendable {
    /// The response as sent (protocol encoding); publish it on the response topic.
    public var payload: [UInt8]
    /// The decoded response (nil for a repeated id answered with stored bytes).
    public var response: CommandResponse?
    /// Run after the response was published (reboot).
    public var afterResponse: (@Sendable () async -> Void)?
}

/// Thrown by command execution: becomes an error response with this code.
struct CommandFailure: Error, CustomStringConvertible {
    var code: CommandErrorCode
    var message: String
    var description: String { message }
}

public final class CommandHandler: Sendable {
    let environment: any CommandEnvironment
    let seen: SeenCommands?
    let metrics: DeviceMetrics
    let logger: Logger

    /// - Parameter seen: the durable id store; nil only in tests that do not need at-most-once.
    public init(environment: any CommandEnvironment, seen: SeenCommands?, metrics: DeviceMetrics, logger: Logger) {
        self.environment = environment
        self.seen = seen
        self.metrics = metrics
        self.logger = logger
    }

    public func handle(_ payload: [UInt8]) async -> CommandResult {
        let command: Command
        do { command = try SyncCodec.decodeCommand(payload) } catch {
            metrics.commandErrors.increment()
            logger.warning("rejected command", metadata: ["error": "\(error)", "id": "\(error.requestID ?? "-")"])
            return result(error.response)
        }

        if let id = command.requestID, let seen {
            switch await seen.state(of: id) {
            case .answered(let data)?:
                logger.info("repeated command id; answering with the stored response, not executing again", metadata: ["id": "\(id)"])
                return CommandResult(payload: Array(data), response: nil, afterResponse: nil)
            case .started?:
                metrics.commandErrors.increment()
                return result(CommandResponse(requestID: id, command: command.name, error: .failed,
                                              message: "command id \(id) was received before and its execution was interrupted (restart); not executed again"))
            case nil:
                do { try await seen.markStarted(id) } catch {
                    metrics.commandErrors.increment()
                    logger.error("cannot record command id; not executing", metadata: ["error": "\(error)"])
                    return result(CommandResponse(requestID: id, command: command.name, error: .failed,
                                                  message: "cannot record the command id durably (\(error)); not executed"))
                }
            }
        }

        var out: CommandResult
        do {
            out = try await execute(command)
            metrics.commands.increment()
            logger.info("command executed", metadata: ["command": "\(command.name)", "id": "\(command.requestID ?? "-")"])
        } catch let f as CommandFailure {
            metrics.commandErrors.increment()
            logger.warning("command refused", metadata: ["command": "\(command.name)", "error": "\(f.message)"])
            out = result(CommandResponse(requestID: command.requestID, command: command.name, error: f.code, message: f.message))
        } catch {
            metrics.commandErrors.increment()
            logger.warning("command failed", metadata: ["command": "\(command.name)", "error": "\(error)"])
            out = result(CommandResponse(requestID: command.requestID, command: command.name, error: .failed, message: "\(error)"))
        }
        if let id = command.requestID, let seen {
            do { try await seen.markAnswered(id, response: Data(out.payload)) } catch {
                logger.error("cannot record command response", metadata: ["error": "\(error)"])
            }
        }
        return out
    }

    func result(_ r: CommandResponse, after: (@Sendable () async -> Void)? = nil) -> CommandResult {
        CommandResult(payload: SyncCodec.encode(r), response: r, afterResponse: after)
    }

    func execute(_ command: Command) async throws -> CommandResult {
        let settings = environment.settings
        let id = command.requestID
        func ok(key: String? = nil, value: ConfigValue? = nil) -> CommandResponse {
            CommandResponse(requestID: id, command: command.name, key: key, value: value)
        }
        switch command.kind {
        case .reboot:
            let argv = environment.rebootCommand
            guard !argv.isEmpty else {
                throw CommandFailure(code: .notAllowed, message: "reboot is disabled on this device (set COMMAND_REBOOT to enable it)")
            }
            let log = logger
            return result(ok(), after: {
                log.notice("rebooting on command", metadata: ["command": "\(argv.joined(separator: " "))"])
                do { try runDetached(argv) } catch { log.error("reboot command failed", metadata: ["error": "\(error)"]) }
            })
        case .getConfig(let k):
            guard let key = ConfigKey(rawValue: k) else {
                throw CommandFailure(code: .notAllowed, message: "key \(k.debugDescription) is not available; keys: \(ConfigKey.listing)")
            }
            let value: String
            if let sk = key.switchKey {
                value = await settings.switches[sk].redisText
            } else {
                let facts = try await environment.logFacts()
                switch key {
                case .deviceID: value = facts.deviceID.rawValue
                case .logEpoch: value = facts.epoch.hex
                case .logHead: value = facts.head.description
                case .logAcked: value = facts.ackedThrough.description
                default: preconditionFailure("unhandled key \(key)")
                }
            }
            return result(ok(key: key.rawValue, value: .string(value)))
        case .setConfig(let k, let sent):
            guard let key = ConfigKey(rawValue: k) else {
                throw CommandFailure(code: .notAllowed, message: "key \(k.debugDescription) is not available; writable keys: \(ConfigKey.writableListing)")
            }
            guard let sk = key.switchKey else {
                throw CommandFailure(code: .notAllowed, message: "key \(k.debugDescription) is read-only; writable keys: \(ConfigKey.writableListing)")
            }
            let value: SwitchValue
            do { value = try sk.parse(sent.text) } catch { throw CommandFailure(code: .invalidArgument, message: error.description) }
            await settings.set(sk, value)
            // Echo what is stored, in the JSON type it was sent in (the seed echoes a number as one).
            return result(ok(key: key.rawValue, value: sent.sameKind(value.redisText)))
        case .start, .stop:
            let on = command.kind == .start
            await settings.set(.measurementEnabled, .enabled(on))
            return result(ok(key: SwitchKey.measurementEnabled.rawValue, value: .string(on ? "1" : "0")))
        case .setInterval(let ms):
            let value: SwitchValue
            do { value = try SwitchKey.measurementInterval.parse(String(Double(ms) / 1000)) } catch {
                throw CommandFailure(code: .invalidArgument, message: error.description)
            }
            await settings.set(.measurementInterval, value)
            return result(ok(key: SwitchKey.measurementInterval.rawValue, value: .string(value.redisText)))
        case .status:
            var r = ok()
            r.status = try await environment.currentStatus()
            return result(r)
        case .sendMeasurements(let lo, let hi, let count):
            // A stream-id bound is a time: the records appended within it (see MeasurementRange).
            let head = try await environment.logFacts().head
            let lookup: MeasurementRange.Lookup = { [environment] s in try await environment.firstRetainedRecord(atOrAfter: s) }
            let lower = try await MeasurementRange.lower(lo, head: head, lookup: lookup)
            let upper = try await MeasurementRange.upper(hi, head: head, lookup: lookup)
            guard lower != .empty, upper != .empty else { return result(ok()) }  // no record within the times asked
            let from = lower.sequence, to = upper.sequence
            if let from, let to, from > to { return result(ok()) }
            let outcome = try await environment.replay(ReplayQuery(requestID: id, from: from, to: to, count: count))
            var r = ok()
            r.resent = outcome.resent
            r.notRetained = outcome.notRetained
            return result(r)
        case .replay(let epoch, let range):
            let facts = try await environment.logFacts()
            if let epoch, epoch != facts.epoch {
                throw CommandFailure(code: .invalidArgument,
                                     message: "epoch \(epoch.hex) is not this log's epoch \(facts.epoch.hex); records of an earlier log are gone")
            }
            let outcome = try await environment.replay(ReplayQuery(requestID: id, from: range.first, to: range.last, count: nil))
            var r = ok()
            r.resent = outcome.resent
            r.notRetained = outcome.notRetained
            return result(r)
        }
    }
}

/// Starts a command without waiting for it (reboot). No shell. A thread of its own reaps it
/// when it ends, so no zombie is left behind.
func runDetached(_ argv: [String]) throws {
    let pid = try Spawn.start(argv)
    OSThread.start(name: "reboot-wait") { _ = try? Spawn.exitStatus(pid, block: true) }
}
