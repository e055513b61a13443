// The command handler: parsed commands in, JSON responses (and a few side effects) out.
//
// Theory of operation: `handle(payload)` parses the payload (Command.swift), checks the
// request id against the durable `SeenCommands`, marks it started, executes the command
// against a `CommandEnvironment` (runtime switches, log facts, replay, status, reboot) and
// records the response. It returns what to publish and, for `reboot`, an action to run
// after the response was published (so the caller sees the answer before the device goes).
// Nothing here touches MQTT: the MQTT agent calls `handle` for each message on the request
// and broadcast topics and publishes the result on the response topic.
import FieldlogCore
import Foundation
import Logging

/// Facts about the log for `get_config` and `status`.
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

/// What a replay did: the records republished and any part of the range no longer retained.
public struct ReplayOutcome: Sendable {
    public var sent: SequenceRange?
    public var records: Int
    public var notRetained: SequenceRange?
    public init(sent: SequenceRange?, records: Int, notRetained: SequenceRange?) {
        self.sent = sent
        self.records = records
        self.notRetained = notRetained
    }
}

/// What commands act on. The device node implements it over its components.
public protocol CommandEnvironment: Sendable {
    var settings: RuntimeSettings { get }
    func logFacts() async throws -> LogFacts
    func replay(_ range: ReplayRange) async throws -> ReplayOutcome
    func statusJSON() async -> JSONValue
    /// The reboot command line; empty when reboot is disabled.
    var rebootCommand: [String] { get }
}

/// The result of handling one payload.
public struct CommandResult: Sendable {
    /// Publish this on the response topic.
    public var response: CommandResponse
    /// Run after the response was published (reboot).
    public var afterResponse: (@Sendable () async -> Void)?
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

    public func handle(_ payload: Data) async -> CommandResult {
        let request = CommandParser.parse(payload)
        let command: Command
        switch request.parsed {
        case .failure(let e):
            metrics.commandErrors.increment()
            logger.warning("rejected command", metadata: ["error": "\(e.message)", "id": "\(request.id?.description ?? "-")"])
            return CommandResult(response: .error(e.message, command: request.name, id: request.id))
        case .success(let c):
            command = c
        }

        if let id = request.id, let seen {
            switch seen.state(of: id.storageKey) {
            case .answered(let data)?:
                logger.info("duplicate command id; answering with the stored response", metadata: ["id": "\(id)"])
                var r = Self.decodeStored(data) ?? .error("duplicate command id; response unavailable", command: command.name, id: id)
                r.fields.append(("duplicate", .bool(true)))
                return CommandResult(response: r)
            case .started?:
                metrics.commandErrors.increment()
                return CommandResult(response: .error("command id \(id) was received before and its execution was interrupted; not executed again (at most once)",
                                                      command: command.name, id: id))
            case nil:
                do { try await seen.markStarted(id.storageKey) } catch {
                    metrics.commandErrors.increment()
                    logger.error("cannot record command id; not executing", metadata: ["error": "\(error)"])
                    return CommandResult(response: .error("cannot record the command id durably (\(error)); not executed", command: command.name, id: id))
                }
            }
        }

        var result: CommandResult
        do {
            result = try await execute(command, id: request.id)
            metrics.commands.increment()
            logger.info("command executed", metadata: ["command": "\(command.name)", "id": "\(request.id?.description ?? "-")"])
        } catch {
            metrics.commandErrors.increment()
            logger.warning("command failed", metadata: ["command": "\(command.name)", "error": "\(error)"])
            result = CommandResult(response: .error("\(error)", command: command.name, id: request.id))
        }
        if let id = request.id, let seen {
            do { try await seen.markAnswered(id.storageKey, response: result.response.encoded()) } catch {
                logger.error("cannot record command response", metadata: ["error": "\(error)"])
            }
        }
        return result
    }

    static func decodeStored(_ data: Data) -> CommandResponse? {
        let r = CommandResponse(storedRaw: data)
        return r.fields.isEmpty ? nil : r
    }

    func ok(_ command: Command, _ id: RequestID?, _ extra: [(String, JSONValue)] = []) -> CommandResponse {
        var f: [(String, JSONValue)] = [("command", .string(command.name))]
        if let id { f.append(("id", JSONValue(id))) }
        f.append(("ok", .bool(true)))
        return CommandResponse(f + extra)
    }

    func execute(_ command: Command, id: RequestID?) async throws -> CommandResult {
        let settings = environment.settings
        switch command {
        case .reboot:
            let argv = environment.rebootCommand
            guard !argv.isEmpty else { throw CommandError("reboot is disabled on this device (set COMMAND_REBOOT to enable it)") }
            let log = logger
            return CommandResult(response: ok(command, id), afterResponse: {
                log.notice("rebooting on command", metadata: ["command": "\(argv.joined(separator: " "))"])
                do { try runDetached(argv) } catch { log.error("reboot command failed", metadata: ["error": "\(error)"]) }
            })
        case .getConfig(let key):
            let value: JSONValue
            if let sk = key.switchKey {
                value = .string(await settings.switches[sk].redisText)
            } else {
                let facts = try await environment.logFacts()
                switch key {
                case .deviceID: value = .string(facts.deviceID.rawValue)
                case .logEpoch: value = .string(facts.epoch.hex)
                case .logHead: value = .string(facts.head.description)
                case .logAcked: value = .string(facts.ackedThrough.description)
                default: preconditionFailure("unhandled key \(key)")
                }
            }
            return CommandResult(response: ok(command, id, [("key", .string(key.rawValue)), ("value", value)]))
        case .setConfig(let key, let value, _):
            await settings.set(key, value)
            return CommandResult(response: ok(command, id, [("key", .string(key.rawValue)), ("value", .string(value.redisText))]))
        case .start, .stop:
            await settings.set(.measurementEnabled, .enabled(command == .start))
            return CommandResult(response: ok(command, id, [("key", .string(SwitchKey.measurementEnabled.rawValue)),
                                                            ("value", .string(command == .start ? "1" : "0"))]))
        case .setInterval(let d, let target):
            await settings.set(target, .interval(d))
            return CommandResult(response: ok(command, id, [("key", .string(target.rawValue)), ("value", .string(formatSeconds(d)))]))
        case .status:
            return CommandResult(response: ok(command, id, [("status", await environment.statusJSON())]))
        case .sendMeasurements(let range), .replay(let range):
            let outcome = try await environment.replay(range)
            var extra: [(String, JSONValue)] = [("records", .int(Int64(outcome.records)))]
            if let s = outcome.sent {
                extra.append(("from", .int(Int64(s.first.rawValue))))
                extra.append(("to", .int(Int64(s.last.rawValue))))
            }
            if let n = outcome.notRetained {
                extra.append(("not_retained", .object([("from", .int(Int64(n.first.rawValue))), ("to", .int(Int64(n.last.rawValue)))])))
            }
            return CommandResult(response: ok(command, id, extra))
        }
    }
}

extension CommandResponse {
    /// A stored response re-read from the id file (empty when it does not decode).
    init(storedRaw data: Data) {
        guard case .object(let dict)? = try? JSONDecoder().decode(AnyJSON.self, from: data) else {
            self.init([])
            return
        }
        // Rebuild with the usual leading keys first, the rest sorted, for a stable order.
        var fields: [(String, JSONValue)] = []
        for k in ["command", "id", "ok"] { if let v = dict[k] { fields.append((k, JSONValue(any: v))) } }
        for (k, v) in dict.sorted(by: { $0.key < $1.key }) where !["command", "id", "ok"].contains(k) {
            fields.append((k, JSONValue(any: v)))
        }
        self.init(fields)
    }
}

extension JSONValue {
    init(any v: AnyJSON) {
        switch v {
        case .null: self = .null
        case .bool(let b): self = .bool(b)
        case .int(let n): self = .int(n)
        case .double(let d): self = .double(d)
        case .string(let s): self = .string(s)
        case .array(let a): self = .array(a.map(JSONValue.init(any:)))
        case .object(let o): self = .object(o.sorted { $0.key < $1.key }.map { ($0.key, JSONValue(any: $0.value)) })
        }
    }
}

/// Starts a command without waiting for it (reboot): its own process group, no shell.
func runDetached(_ argv: [String]) throws {
    let p = Process()
    if argv[0].hasPrefix("/") {
        p.executableURL = URL(fileURLWithPath: argv[0])
        p.arguments = Array(argv.dropFirst())
    } else {
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = argv
    }
    p.standardInput = FileHandle.nullDevice
    try p.run()
}
