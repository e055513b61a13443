// Commands from the web admin to devices.
//
// Theory of operation: a form or API request is turned into a Sync `Command` by
// `CommandInput.command(...)`, which checks every argument and says what is wrong (a 400).
// `CommandDispatcher.send` records the command with its request id and the signed-in user in
// `commands`, then publishes it (QoS 1, not retained) on the device's request topic
// (spec/protocol.md §2, `fieldlog/v1/devices/{device}/request`). The device answers on its
// response topic; the ingest process records the answer on the same `commands` row (Store's
// `recordResponse`), and the pages poll that row: answered, failed, or — after
// `WebSettings.commandTimeout` without an answer — timed out. A command the broker did not
// take is marked `not-sent` with the reason.
import Audit
import BackendStore
import FieldlogCore
import Foundation
import Hummingbird
import Logging
import Sync

/// Publishes bytes on a topic (the web process's MQTT client; see MQTTCommandPublisher).
package protocol CommandPublisher: Sendable {
    func publish(topic: String, payload: [UInt8]) async throws
}

/// The arguments of a command, as a form or the JSON API gives them (all text, checked here).
package struct CommandInput: Decodable, Sendable {
    package var command: String
    package var key: String?
    package var value: String?
    package var intervalSeconds: String?
    package var epoch: String?
    package var from: String?
    package var to: String?
    package var confirm: String?

    package init(command: String, key: String? = nil, value: String? = nil, intervalSeconds: String? = nil, epoch: String? = nil,
         from: String? = nil, to: String? = nil, confirm: String? = nil) {
        self.command = command
        self.key = key
        self.value = value
        self.intervalSeconds = intervalSeconds
        self.epoch = epoch
        self.from = from
        self.to = to
        self.confirm = confirm
    }

    package init(form: [String: String]) {
        func v(_ k: String) -> String? { form[k].flatMap { $0.trimmingCharacters(in: .whitespaces).isEmpty ? nil : $0.trimmingCharacters(in: .whitespaces) } }
        self.init(command: form["command"] ?? "", key: v("key"), value: form["value"], intervalSeconds: v("intervalSeconds"),
                  epoch: v("epoch"), from: v("from"), to: v("to"), confirm: v("confirm"))
    }

    /// Decodes numbers or strings for the numeric members, so JSON clients may send either.
    package init(from decoder: any Decoder) throws {
        enum K: String, CodingKey { case command, key, value, intervalSeconds, epoch, from, to, confirm }
        let c = try decoder.container(keyedBy: K.self)
        func text(_ k: K) throws -> String? {
            if let s = try? c.decodeIfPresent(String.self, forKey: k) { return s }
            if let i = try? c.decodeIfPresent(Int64.self, forKey: k) { return String(i) }
            if let d = try? c.decodeIfPresent(Double.self, forKey: k) { return String(d) }
            if let b = try? c.decodeIfPresent(Bool.self, forKey: k) { return String(b) }
            return nil
        }
        guard let command = try text(.command) else {
            throw HTTPError(.badRequest, message: "missing \"command\": one of \(Self.names.joined(separator: ", "))")
        }
        self.init(command: command, key: try text(.key), value: try text(.value), intervalSeconds: try text(.intervalSeconds),
                  epoch: try text(.epoch), from: try text(.from), to: try text(.to), confirm: try text(.confirm))
    }

    package static let names = ["start", "stop", "status", "set_interval", "get_config", "set_config", "replay", "reboot"]

    /// Whether this is a reboot without its confirmation (the page asks first).
    package var needsConfirmation: Bool { command == "reboot" && confirm != "yes" && confirm != "true" }

    /// The protocol command, or a 400 that says what is wrong.
    package func command(requestID: String, configKeys: [String]) throws -> Command {
        func bad(_ m: String) -> HTTPError { HTTPError(.badRequest, message: m) }
        let kind: Command.Kind
        switch command {
        case "start": kind = .start
        case "stop": kind = .stop
        case "status": kind = .status
        case "reboot":
            guard !needsConfirmation else { throw bad("reboot needs confirm=yes (the device restarts and stops measuring for a while)") }
            kind = .reboot
        case "set_interval":
            guard let t = intervalSeconds, let s = Double(t), s.isFinite, s >= 0.1, s <= 86_400 else {
                throw bad("set_interval needs intervalSeconds between 0.1 and 86400, got \(intervalSeconds.map { "\"\($0)\"" } ?? "nothing")")
            }
            kind = .setInterval(milliseconds: Int64((s * 1000).rounded()))
        case "get_config", "set_config":
            guard let key, !key.isEmpty else { throw bad("\(command) needs a key: one of \(configKeys.joined(separator: ", "))") }
            guard configKeys.contains(key) else { throw bad("config key \"\(key)\" is not allowed; allowed are \(configKeys.joined(separator: ", "))") }
            if command == "get_config" {
                kind = .getConfig(key: key)
            } else {
                guard let value else { throw bad("set_config needs a value") }
                guard value.utf8.count <= ProtocolLimits.maxTextBytes else { throw bad("the value is longer than \(ProtocolLimits.maxTextBytes) bytes") }
                kind = .setConfig(key: key, value: .string(try ConfigValueKind(key: key).normalized(value)))
            }
        case "replay":
            var epochValue: Epoch?
            if let e = epoch {
                do { epochValue = try Epoch(hex: e) } catch { throw bad("epoch \"\(e)\" is not an epoch: \(error.description)") }
            }
            guard let f = from, let first = UInt64(f), first >= 1 else { throw bad("replay needs from: a sequence number ≥ 1, got \(from.map { "\"\($0)\"" } ?? "nothing")") }
            guard let t = to, let last = UInt64(t), last >= first else { throw bad("replay needs to: a sequence number ≥ from (\(first)), got \(to.map { "\"\($0)\"" } ?? "nothing")") }
            guard last - first < 10_000_000 else { throw bad("replay ranges are limited to 10,000,000 records; split the range") }
            kind = .replay(epoch: epochValue, range: SequenceRange(checked: SequenceNumber(first), SequenceNumber(last)))
        default:
            throw bad("unknown command \"\(command)\"; known are \(Self.names.joined(separator: ", "))")
        }
        return Command(requestID: requestID, kind: kind)
    }
}

/// What a config key takes, so only valid values are offered and sent: the device reads any
/// text but "0"/"false"/"off"/"no" as *on* for a switch, so "disable" would turn it on.
/// Keys of the device's runtime switches end in `:enabled` (on/off) or `:interval` (seconds);
/// other keys (FIELDLOG_WEB_CONFIG_KEYS may add some) take text.
package enum ConfigValueKind: Sendable, Hashable {
    case onOff
    case seconds
    case text

    package init(key: String) {
        if key.hasSuffix(":enabled") { self = .onOff } else if key.hasSuffix(":interval") { self = .seconds } else { self = .text }
    }

    /// The value as the device stores it ("1"/"0", seconds), or a 400 that says what is allowed.
    package func normalized(_ value: String) throws -> String {
        let v = value.trimmingCharacters(in: .whitespaces)
        switch self {
        case .onOff:
            switch v.lowercased() {
            case "1", "on", "true", "yes": return "1"
            case "0", "off", "false", "no": return "0"
            default: throw HTTPError(.badRequest, message: "this setting is on or off: send 1 (on) or 0 (off), got \"\(value)\"")
            }
        case .seconds:
            guard let d = Double(v), d.isFinite, d >= 0.01, d <= 86_400 else {
                throw HTTPError(.badRequest, message: "this setting is a number of seconds, 0.01…86400, got \"\(value)\"")
            }
            return formatNumber(d)
        case .text:
            return value
        }
    }
}

/// Records and publishes commands.
package struct CommandDispatcher: Sendable {
    package let store: WebStore
    package let publisher: (any CommandPublisher)?
    package let topics: TopicTemplates
    package let logger: Logger

    package init(store: WebStore, publisher: (any CommandPublisher)?, topics: TopicTemplates, logger: Logger) {
        self.store = store
        self.publisher = publisher
        self.topics = topics
        self.logger = logger
    }

    /// Records `command` as sent by `user` and publishes it; returns its row.
    package func send(_ command: Command, to device: DeviceID, by user: String) async throws -> CommandRow {
        guard let requestID = command.requestID else { preconditionFailure("web commands always carry a request id") }
        let payload = SyncCodec.encode(command)
        try await store.insertCommand(requestID: requestID, device: device, command: command, payload: String(decoding: payload, as: UTF8.self), sentBy: user)
        logger.info("web: \(user) sends \(command.name) to \(device)", metadata: ["request": "\(requestID)"])
        do {
            guard let publisher else { throw HTTPError(.serviceUnavailable, message: "this web process has no broker connection") }
            try await publisher.publish(topic: topics.request.topic(device: device), payload: payload)
        } catch {
            logger.warning("web: could not publish \(command.name) to \(device): \(error)")
            try await store.markNotSent(requestID: requestID, reason: "the broker did not take the command: \(error)")
        }
        guard let row = try await store.command(requestID: requestID) else {
            throw HTTPError(.internalServerError, message: "the command was recorded but cannot be read back")
        }
        return row
    }

    /// "web-" + 24 hex digits: unique, and says where a command came from.
    package static func newRequestID() -> String { "web-" + String(randomToken().prefix(24)) }
}
