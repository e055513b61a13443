// `fieldlog-backend web` (the web admin), `fieldlog-backend user add` (its users).
import ArgumentParser
import FieldlogCore
import Foundation
import Hummingbird
import Logging
import ServiceLifecycle

/// Options of the web server, shared by `web` and `run`.
struct WebOptions: ParsableArguments {
    @Option(name: .customLong("web-host"), help: "Address to serve on (FIELDLOG_WEB_HOST, default 127.0.0.1).")
    var host: String?
    @Option(name: .customLong("web-port"), help: "Port to serve on (FIELDLOG_WEB_PORT, default 8080).")
    var port: Int?
    @Flag(help: "Session cookies without Secure, for plain http on loopback only (FIELDLOG_WEB_INSECURE_COOKIES=1).")
    var insecureCookies = false
}

extension FieldlogBackend {
    struct Web: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Serve the web admin: fleet overview, device charts and readings, control, audit, JSON API.")
        @OptionGroup var common: CommonOptions
        @OptionGroup var web: WebOptions

        func run() async throws {
            let logger = try common.bootstrapLogging()
            let config = try common.load()
            let settings = try WebSettings.load(host: web.host, port: web.port, insecureCookies: web.insecureCookies)
            let services = try await WebServer.prepare(config: config, settings: settings, logger: logger)
            let group = ServiceGroup(configuration: ServiceGroupConfiguration(
                services: services.map { ServiceGroupConfiguration.ServiceConfiguration(service: $0) },
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
            try await group.run()
        }
    }

    struct User: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Manage the users of the web admin.", subcommands: [Add.self])

        struct Add: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Create a web admin user, or set a new password for an existing one. The password is read from the terminal (asked twice) or, when stdin is not a terminal, from its first line.")
            @OptionGroup var common: CommonOptions
            @Argument(help: "User name: 1…64 characters A–Z a–z 0–9 . _ - @.") var name: String

            func run() async throws {
                let logger = try common.bootstrapLogging()
                let config = try common.load()
                if let problem = Passwords.checkUserName(name) { throw ValidationError("invalid user name \(name.debugDescription): \(problem)") }
                let password = try readPassword()
                if let problem = Passwords.check(password) { throw ValidationError(problem) }
                let settings = try WebSettings.load(host: nil, port: nil, insecureCookies: false)
                let database = DatabaseClient(settings: config.database, logger: logger)
                let store = try await database.store()
                try await Migrator(connection: store.connection).requireCurrent()
                let hash = await Passwords.hash(password, cost: settings.bcryptCost)
                let created = try await WebStore(database: database, settings: settings, logger: logger).addUser(name: name, passwordHash: hash)
                await database.close()
                print(created ? "user \(name) created" : "password of user \(name) changed")
            }

            func readPassword() throws -> String {
                if isatty(STDIN_FILENO) == 1 {
                    let first = String(cString: getpass("Password for \(name): "))
                    let second = String(cString: getpass("Again: "))
                    guard first == second else { throw ValidationError("the two passwords differ") }
                    return first
                }
                guard let line = Swift.readLine(strippingNewline: true) else { throw ValidationError("no password on stdin") }
                return line
            }
        }
    }
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
        return [publisher, buildApplication(deps)]
    }
}
