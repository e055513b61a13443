// DatabaseClient: one live connection to the first answering server of a list, with failover.
//
// Theory of operation: `store()` returns the current connection's Store, connecting first if
// there is none: it tries the addresses in order starting at the current one, each once, and
// throws the last error when none answers. `failed()` drops the connection and moves to the
// next address, so after a node dies the next attempt goes elsewhere (a Galera cluster: any
// node takes writes; a commit there is certified cluster-wide before it returns).
// What to do after a failure (retry, reconnect, isolate, give up) is the ingest state
// machine's decision (Sync's IngestStateMachine); this type only keeps the connection.
import FieldlogCore
import Foundation
import Logging
import MariaDB
import Sync

package actor DatabaseClient {
    package nonisolated let settings: DatabaseSettings
    package let logger: Logger
    private var index = 0
    private var current: Store?

    /// Sharded: the shard every address must say it is (`shard_self`), checked on each connect.
    package nonisolated let expectedShard: ShardNumber?

    package init(settings: DatabaseSettings, expectedShard: ShardNumber? = nil, logger: Logger) {
        precondition(!settings.addresses.isEmpty, "no database address")
        self.settings = settings
        self.expectedShard = expectedShard
        self.logger = logger
    }

    /// The address in use (or tried next).
    package var address: DatabaseAddress { settings.addresses[index] }

    /// The connected store; connects (with failover along the list) when there is none.
    package func store() async throws -> Store {
        if let current { return current }
        var lastError: Error?
        for attempt in 0..<settings.addresses.count {
            let i = (index + attempt) % settings.addresses.count
            let address = settings.addresses[i]
            let connection = MariaDBConnection(configuration: settings.configuration(for: address), logger: logger)
            do {
                try await connection.connect()
                let store = Store(connection: connection)
                try await store.prepareSession()
                if let expectedShard {
                    let found = try await store.shardSelf()
                    guard found == expectedShard.rawValue else {
                        throw ShardMismatch(expected: expectedShard, found: found, address: address.description)
                    }
                }
                index = i
                current = store
                logger.info("connected to MariaDB", metadata: ["address": "\(address)"])
                return store
            } catch {
                await connection.close()
                logger.warning("MariaDB at \(address) is not answering: \(error)")
                lastError = error
            }
        }
        throw lastError!
    }

    /// Drops the connection (after a failure) and moves to the next address.
    package func failed() async {
        if let current { await current.connection.close() }
        current = nil
        index = (index + 1) % settings.addresses.count
    }

    /// Closes the connection for good (its owner thread ended: `MariaDBConnection.shutdown`);
    /// a later `store()` connects anew.
    package func close() async {
        if let current { await current.connection.shutdown() }
        current = nil
    }
}
