// Connecting the backend's commands to MariaDB.
import Logging
import MariaDB

/// Connects to the first answering server of the list (for the one-shot commands).
package func connectFirst(_ settings: DatabaseSettings, logger: Logger) async throws -> MariaDBConnection {
    var last: Error?
    for address in settings.addresses {
        let connection = MariaDBConnection(configuration: settings.configuration(for: address), logger: logger)
        do {
            try await connection.connect()
            try await Store(connection: connection).prepareSession()
            return connection
        } catch {
            last = error
            await connection.close()
        }
    }
    throw last!
}
