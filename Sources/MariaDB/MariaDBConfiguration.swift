// MariaDB: a thin, safe wrapper over MariaDB Connector/C (libmariadb 3.3).
import Foundation

/// Where and how to connect to a MariaDB server.
public struct MariaDBConfiguration: Sendable {
    /// TLS settings for the connection to the server.
    public struct TLS: Sendable {
        /// PEM file of the certificate authority that signed the server's certificate.
        public var caFile: String?
        /// Check the server certificate's chain and host name (default true). Only turn off for tests.
        public var verifyServerCertificate: Bool
        /// Optional client certificate and key (PEM), for servers that require them.
        public var certificateFile: String?
        public var keyFile: String?

        public init(caFile: String? = nil, verifyServerCertificate: Bool = true,
                    certificateFile: String? = nil, keyFile: String? = nil) {
            self.caFile = caFile
            self.verifyServerCertificate = verifyServerCertificate
            self.certificateFile = certificateFile
            self.keyFile = keyFile
        }
    }

    /// Host name or address (ignored when `unixSocket` is set). Default "127.0.0.1".
    public var host: String
    /// TCP port. Default 3306.
    public var port: Int
    /// Path of the server's unix socket; when set, the connection uses it instead of TCP.
    public var unixSocket: String?
    public var user: String
    public var password: String
    /// Default database (schema) of the session; nil for none.
    public var database: String?
    /// Time allowed to establish the connection. Default 5 s; whole seconds, at least 1.
    public var connectTimeout: Duration
    /// Time allowed for one read from the server. Default 30 s; whole seconds, at least 1.
    /// Connector/C may retry a read, so a dead server is noticed after up to about three times this.
    public var readTimeout: Duration
    /// Time allowed for one write to the server. Default 30 s; whole seconds, at least 1.
    public var writeTimeout: Duration
    /// TLS; nil for a plain connection (fine on loopback or a unix socket).
    public var tls: TLS?
    /// Character set of the session. Default "utf8mb4" (all of Unicode).
    var characterSet: String
    /// Number of prepared statements kept open per connection (least recently used are closed). Default 64.
    var statementCacheSize: Int

    public init(host: String = "127.0.0.1", port: Int = 3306, unixSocket: String? = nil,
                user: String, password: String, database: String? = nil,
                connectTimeout: Duration = .seconds(5), readTimeout: Duration = .seconds(30),
                writeTimeout: Duration = .seconds(30), tls: TLS? = nil,
                characterSet: String = "utf8mb4", statementCacheSize: Int = 64) {
        self.host = host
        self.port = port
        self.unixSocket = unixSocket
        self.user = user
        self.password = password
        self.database = database
        self.connectTimeout = connectTimeout
        self.readTimeout = readTimeout
        self.writeTimeout = writeTimeout
        self.tls = tls
        self.characterSet = characterSet
        self.statementCacheSize = statementCacheSize
    }

    /// "user@host:port/db" or "user@unix:path/db", for messages (never the password).
    public var endpointDescription: String {
        let place = unixSocket.map { "unix:\($0)" } ?? "\(host):\(port)"
        return "\(user)@\(place)/\(database ?? "")"
    }
}
