// The tests' database: a fresh database on the shared stack's MariaDB, dropped at the end.
// One fixture for every backend test target (BackendTests, WebTests, GaleraTests' helpers).
import BackendStore
import Foundation
import Logging
import MariaDB
import XCTest

/// A fresh database on the shared stack's MariaDB (migrated on request), dropped with `drop()`.
package final class TestDatabase: @unchecked Sendable {
    // @unchecked: immutable after init.
    package let stack: Stack
    package let name: String
    package let settings: DatabaseSettings

    /// Skips the test when no stack is running (fails it under FIELDLOG_REQUIRE_SERVICES=1).
    package init(_ prefix: String = "backend") throws {
        guard let stack = try Stack.available() else { throw XCTSkip("no service stack (run scripts/stack up)") }
        self.stack = stack
        name = try stack.createDatabase(prefix)
        settings = DatabaseSettings(addresses: [DatabaseAddress(host: stack.mariaDBHost, port: stack.mariaDBPort)],
                                    user: stack.mariaDBUser, password: stack.mariaDBPassword, database: name,
                                    connectTimeout: .seconds(2), readTimeout: .seconds(10))
    }

    /// A connection to it, with the backend's session settings.
    package func connect() async throws -> MariaDBConnection {
        try await connectFirst(settings, logger: Logger(label: "test"))
    }

    /// A connection to it after `fieldlog-backend migrate`'s migrations.
    package func migrated() async throws -> MariaDBConnection {
        let c = try await connect()
        try await Migrator(connection: c).migrate()
        return c
    }

    /// The stack's broker, as the backend's settings name it.
    package var broker: BrokerSettings {
        BrokerSettings(host: stack.mqttHost, port: stack.mqttPort, user: stack.mqttBackendUser, password: stack.mqttBackendPassword)
    }

    /// Environment for a spawned `fieldlog-backend` that uses this database.
    package var environment: [String: String] { stack.backendEnvironment(database: name) }

    /// The first column of the query's output, trimmed (the `mariadb` client, tab-separated rows).
    package func scalar(_ sql: String) throws -> String {
        try stack.sql(sql, database: name).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    package func drop() { try? stack.dropDatabase(name) }
}
