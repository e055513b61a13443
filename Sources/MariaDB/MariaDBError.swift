import Foundation

/// An error from MariaDB or from Connector/C: what failed, the MariaDB error number and SQLSTATE.
public struct MariaDBError: Error, CustomStringConvertible, Sendable {
    /// What the wrapper was doing, e.g. "connect to fieldlog@127.0.0.1:3306/db" or "prepare `INSERT ...`".
    public let operation: String
    /// The MariaDB server or client error number (e.g. 1062 duplicate key, 1213 deadlock,
    /// 2006 server gone away, 2013 lost connection); 0 for misuse caught by the wrapper itself.
    public let code: UInt32
    /// The five-character SQLSTATE ("HY000" when the client library has none).
    public let sqlState: String
    /// The library's message.
    public let message: String

    /// True when the wrapper, not the server, found the error: the server reported success for
    /// a statement inside a transaction but had ended the transaction (`transactionEndedByServer`).
    public let endedTransactionSilently: Bool

    public init(operation: String, code: UInt32, sqlState: String, message: String) {
        self.init(operation: operation, code: code, sqlState: sqlState, message: message, endedTransactionSilently: false)
    }

    private init(operation: String, code: UInt32, sqlState: String, message: String, endedTransactionSilently: Bool) {
        self.operation = operation
        self.code = code
        self.sqlState = sqlState
        self.message = message
        self.endedTransactionSilently = endedTransactionSilently
    }

    public var description: String {
        "MariaDB: \(operation) failed: error \(code) (SQLSTATE \(sqlState)): \(message)"
    }

    /// The connection is gone (server restarted or killed it, network broke, or the connection
    /// never came up): call `reconnect()` and retry work that was not committed.
    public var isConnectionLost: Bool {
        Self.connectionLostCodes.contains(code)
    }

    /// Deadlock or Galera certification conflict (1213): the transaction was rolled back; retry it.
    /// Also true for `transactionEndedByServer`: the same rollback, which the server did not report.
    public var isDeadlock: Bool { code == 1213 }

    /// Lock wait timeout (1205): the statement (not the transaction) was rolled back.
    public var isLockWaitTimeout: Bool { code == 1205 }

    /// TLS could not be set up (2026), e.g. the server has no TLS or its certificate is not
    /// trusted: a configuration problem, not a lost connection.
    public var isTLSFailure: Bool { code == 2026 }

    /// Duplicate key (1062).
    public var isDuplicateKey: Bool { code == 1062 }

    static let connectionLostCodes: Set<UInt32> = [
        2002, // CR_CONNECTION_ERROR (unix socket)
        2003, // CR_CONN_HOST_ERROR
        2006, // CR_SERVER_GONE_ERROR
        2013, // CR_SERVER_LOST
        2055, // CR_SERVER_LOST_EXTENDED
        2057, // CR_STMT_CLOSED (statement invalidated by a lost connection)
        1053, // ER_SERVER_SHUTDOWN
        1927, // ER_CONNECTION_KILLED
        4031, // ER_CLIENT_INTERACTION_TIMEOUT
    ]

    /// The open transaction is gone although every statement in it returned success: the last
    /// OK packet no longer has SERVER_STATUS_IN_TRANS. MariaDB 10.11 does this when Galera aborts
    /// the transaction (a certification conflict) while an array-bound INSERT runs: the INSERT
    /// returns OK with every row counted, the rows are rolled back, and the statements after it
    /// would run (and commit) one by one in autocommit mode (docs/benchmarks.md, "Galera:
    /// array-bound inserts"). Reported as the certification conflict it is (1213, SQLSTATE
    /// 40001, so `isDeadlock`): retry the whole transaction.
    static func transactionEndedByServer(_ operation: String) -> MariaDBError {
        MariaDBError(operation: operation, code: 1213, sqlState: "40001",
                     message: "the server ended the open transaction although the last statement returned OK (no SERVER_STATUS_IN_TRANS; under Galera: an aborted array-bound INSERT, rolled back); nothing after it was run: retry the transaction",
                     endedTransactionSilently: true)
    }

    static func usage(_ operation: String, _ message: String) -> MariaDBError {
        MariaDBError(operation: operation, code: 0, sqlState: "HY000", message: message)
    }
}
