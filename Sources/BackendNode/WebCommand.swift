// `fieldlog-backend web` (the web admin), `fieldlog-backend user …` (its users).
import ArgumentParser
import Audit
import BackendStore
import FieldlogCore
import Foundation
import Hummingbird
import Ingest
import Logging
import ServiceLifecycle
import WebAdmin

/// Options of the web server, shared by `web` and `run`.
struct WebOptions: ParsableArguments {
    @Option(name: .customLong("web-host"), help: "Address to serve on (FIELDLOG_WEB_HOST, default 127.0.0.1).")
    var host: String?
    @Option(name: .customLong("web-port"), help: "Port to serve on (FIELDLOG_WEB_PORT, default 8080).")
    var port: Int?
    @Flag(help: "Session cookies without Secure, for plain http on loopback only (FIELDLOG_WEB_INSECURE_COOKIES=1).")
    var insecureCookies = false

    /// The settings these options set.
    var settings: [String: String?] {
        ["FIELDLOG_WEB_HOST": host, "FIELDLOG_WEB_PORT": port.map(String.init), "FIELDLOG_WEB_INSECURE_COOKIES": insecureCookies ? "1" : nil]
    }
}

extension FieldlogBackend {
    struct Web: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Serve the web admin: fleet overview, device charts and readings, control, audit, JSON API.")
        @OptionGroup var common: CommonOptions
        @OptionGroup var web: WebOptions

        func run() async throws {
            let (config, settings, logger) = try common.start(web.settings) { r in WebSettings(reading: &r) }
            let services = try await WebServer.prepare(config: config, settings: settings, logger: logger)
            try await runServices(services, logger: logger)
        }
    }

    struct User: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Manage the users of the web admin: roles viewer (reads), operator (also sends commands), admin (also manages users).",
            discussion: "Every change ends that user's sessions and is recorded in the activity trail as done by cli:<your login name>.",
            subcommands: [List.self, Add.self, Passwd.self, Role.self, Disable.self, Enable.self, Remove.self, Signout.self])

        /// The user store of the configured database (schema checked), closed by `close`.
        struct Context {
            let directory: UserDirectory
            let database: DatabaseClient

            static func open(_ common: CommonOptions) async throws -> Context {
                let (config, settings, logger) = try common.start { r in WebSettings(reading: &r) }
                let database = DatabaseClient(settings: config.database, logger: logger)
                let store = try await database.store()
                try await Migrator(connection: store.connection).requireCurrent()
                return Context(directory: UserDirectory(store: WebStore(database: database, settings: settings, logger: logger)), database: database)
            }

            /// Runs `body`, closes the database, and turns a refused change into a plain error message.
            func run(_ body: (UserDirectory) async throws -> String) async throws {
                do {
                    let message = try await body(directory)
                    await database.close()
                    print(message)
                } catch let e as UserChangeError {
                    await database.close()
                    throw ValidationError(e.description)
                }
            }
        }

        struct Name: ParsableArguments {
            @Argument(help: "User name: 1…64 characters A–Z a–z 0–9 . _ - @.") var name: String
        }

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "List the users with their role, state and live sessions.")
            @OptionGroup var common: CommonOptions
            @Flag(help: "Print JSON instead of a table.") var json = false

            func run() async throws {
                let c = try await Context.open(common)
                try await c.run { d in
                    let users = try await d.store.users()
                    if json {
                        let encoder = JSONEncoder()
                        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                        return String(decoding: try encoder.encode(users), as: UTF8.self)
                    }
                    guard !users.isEmpty else { return "no users yet; add one with: fieldlog-backend user add NAME --role admin" }
                    let width = max(4, users.map(\.name.count).max() ?? 4)
                    func pad(_ s: String, _ n: Int) -> String { s + String(repeating: " ", count: max(0, n - s.count)) }
                    var lines = [pad("USER", width) + "  ROLE      STATE     SESSIONS  CHANGED"]
                    for u in users {
                        lines.append(pad(u.name, width) + "  " + pad(u.role.rawValue, 8) + "  " + pad(u.disabled ? "disabled" : "enabled", 8) + "  "
                                     + pad(String(u.sessions), 8) + "  " + (u.updatedAt ?? "—"))
                    }
                    return lines.joined(separator: "\n")
                }
            }
        }

        struct Add: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Create a web admin user. The password is read from the terminal (asked twice) or, when stdin is not a terminal, from its first line.")
            @OptionGroup var common: CommonOptions
            @OptionGroup var user: Name
            @Option(help: "viewer, operator or admin (default operator).") var role: String = "operator"

            func run() async throws {
                let r: WebAdmin.Role
                do { r = try WebAdmin.Role.parse(role) } catch { throw ValidationError(error.description) }
                if let problem = Passwords.checkUserName(user.name) { throw ValidationError("invalid user name \(user.name.debugDescription): \(problem)") }
                let password = try readPassword(for: user.name)
                let c = try await Context.open(common)
                try await c.run { d in
                    try await d.add(name: user.name, password: password, role: r, by: UserDirectory.commandLineActor)
                    return "user \(user.name) created (\(r.rawValue))"
                }
            }
        }

        struct Passwd: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Set a new password (read like add's); ends the user's sessions.")
            @OptionGroup var common: CommonOptions
            @OptionGroup var user: Name

            func run() async throws {
                let password = try readPassword(for: user.name)
                let c = try await Context.open(common)
                try await c.run { d in
                    try await d.setPassword(name: user.name, password: password, by: UserDirectory.commandLineActor)
                    return "password of user \(user.name) changed; their sessions ended"
                }
            }
        }

        struct Role: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Set a user's role; ends the user's sessions.")
            @OptionGroup var common: CommonOptions
            @OptionGroup var user: Name
            @Argument(help: "viewer, operator or admin.") var role: String

            func run() async throws {
                let r: WebAdmin.Role
                do { r = try WebAdmin.Role.parse(role) } catch { throw ValidationError(error.description) }
                let c = try await Context.open(common)
                try await c.run { d in
                    try await d.setRole(name: user.name, role: r, by: UserDirectory.commandLineActor)
                    return "user \(user.name) is now \(r.rawValue); their sessions ended"
                }
            }
        }

        struct Disable: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Disable a user: no sign-in, sessions ended; the user and the trail stay.")
            @OptionGroup var common: CommonOptions
            @OptionGroup var user: Name

            func run() async throws {
                let c = try await Context.open(common)
                try await c.run { d in
                    try await d.setDisabled(name: user.name, true, by: UserDirectory.commandLineActor)
                    return "user \(user.name) disabled; their sessions ended"
                }
            }
        }

        struct Enable: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Enable a disabled user again.")
            @OptionGroup var common: CommonOptions
            @OptionGroup var user: Name

            func run() async throws {
                let c = try await Context.open(common)
                try await c.run { d in
                    try await d.setDisabled(name: user.name, false, by: UserDirectory.commandLineActor)
                    return "user \(user.name) enabled"
                }
            }
        }

        struct Remove: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Remove a user and end their sessions (the activity trail keeps their name).")
            @OptionGroup var common: CommonOptions
            @OptionGroup var user: Name

            func run() async throws {
                let c = try await Context.open(common)
                try await c.run { d in
                    try await d.remove(name: user.name, by: UserDirectory.commandLineActor)
                    return "user \(user.name) removed"
                }
            }
        }

        struct Signout: AsyncParsableCommand {
            static let configuration = CommandConfiguration(commandName: "signout", abstract: "End every session of a user now.")
            @OptionGroup var common: CommonOptions
            @OptionGroup var user: Name

            func run() async throws {
                let c = try await Context.open(common)
                try await c.run { d in
                    try await d.signOut(name: user.name, by: UserDirectory.commandLineActor)
                    return "user \(user.name) signed out everywhere"
                }
            }
        }
    }
}

/// A new password: from the terminal (asked twice) or the first line of stdin.
func readPassword(for name: String) throws -> String {
    let password: String
    if isatty(STDIN_FILENO) == 1 {
        let first = String(cString: getpass("Password for \(name): "))
        let second = String(cString: getpass("Again: "))
        guard first == second else { throw ValidationError("the two passwords differ") }
        password = first
    } else {
        guard let line = Swift.readLine(strippingNewline: true) else { throw ValidationError("no password on stdin") }
        password = line
    }
    if let problem = Passwords.check(password) { throw ValidationError(problem) }
    return password
}

/// Builds the web admin's services (used by `web` and `run`).
enum WebServer {
    static func prepare(config: BackendConfiguration, settings: WebSettings, logger: Logger) async throws -> [any Service] {
        let database = DatabaseClient(settings: config.database, logger: logger)
        let store = try await database.store()
        try await Migrator(connection: store.connection).requireCurrent()
        let webStore = WebStore(database: database, settings: settings, logger: logger)
        let publisher = MQTTCommandPublisher(broker: config.broker, logger: logger)
        let deps = WebDependencies(store: webStore,
                                   commands: CommandDispatcher(store: webStore, publisher: publisher, topics: config.topics.templates, logger: logger),
                                   settings: settings, logger: logger)
        if !settings.secureCookies {
            logger.warning("web: session cookies are sent without Secure; use this only on loopback or behind nothing but a trusted network")
        }
        logger.info("web admin on http://\(settings.host):\(settings.port)/")
        // Shutdown in reverse: the server first, then background fleet loads, then the broker connection.
        return [publisher, webStore.fleetCache, buildApplication(deps)]
    }
}
