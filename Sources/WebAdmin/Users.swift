// Users, roles, sessions and the activity trail of the web admin.
//
// Theory of operation: a user has a role, `viewer` (reads everything), `operator` (also sends
// commands) or `admin` (also manages users), and may be disabled. `UserDirectory` is the one
// place that changes users, used alike by `fieldlog-backend user …` and the admin pages: each
// change runs in one transaction with (a) ending that user's sessions (all of them, or all
// but the caller's own when users change their own password) and (b) a row in
// `web_activity` that names who did it. Every command sent from the web is recorded there
// too (`CommandDispatcher`), so the trail answers "who sent which command" and "who changed
// which user". A session is only valid while its user exists and is enabled, and the role is
// read with the session on every request, so a change takes effect at the next request.
import Audit
import BackendStore
import FieldlogCore
import Foundation
import Hummingbird
import MariaDB

/// What a user may do; each role can do everything of the roles below it.
package enum Role: String, Sendable, Codable, CaseIterable, Comparable {
    case viewer, `operator`, admin

    package static func < (a: Role, b: Role) -> Bool { a.rank < b.rank }
    private var rank: Int { Role.allCases.firstIndex(of: self)! }

    /// A role from its name, or a message that lists the roles.
    package static func parse(_ text: String) throws(RoleError) -> Role {
        guard let r = Role(rawValue: text) else { throw RoleError(text: text) }
        return r
    }

    package var summary: String {
        switch self {
        case .viewer: return "reads pages and the API"
        case .operator: return "also sends commands to devices"
        case .admin: return "also manages users"
        }
    }
}

package struct RoleError: Error, CustomStringConvertible {
    package var text: String
    package var description: String { "role must be one of \(Role.allCases.map(\.rawValue).joined(separator: ", ")), got \(text.debugDescription)" }
}

/// A signed-in user's session.
package struct WebSession: Sendable, Hashable {
    package var token: String
    package var user: String
    package var role: Role
    package var csrfToken: String
    package var expiresAtMs: Int64
}

/// A user as the users page and `user list` show it.
package struct WebUser: Codable, Sendable, Hashable {
    package var name: String
    package var role: Role
    package var disabled: Bool
    package var createdAt: String?
    package var updatedAt: String?
    /// Live sessions.
    package var sessions: Int
}

/// One entry of the activity trail.
package struct ActivityEntry: Codable, Sendable, Hashable {
    package var id: UInt64
    package var at: String?
    package var actor: String
    package var action: String
    package var target: String
    package var detail: String
    package var requestId: String?
}

/// Why a user change was refused (a 400/404/409 in the web, an error message in the CLI).
package struct UserChangeError: Error, CustomStringConvertible {
    package enum Kind { case invalid, notFound, conflict }
    package var kind: Kind
    package var description: String

    package var httpError: HTTPError {
        switch kind {
        case .invalid: return HTTPError(.badRequest, message: description)
        case .notFound: return HTTPError(.notFound, message: description)
        case .conflict: return HTTPError(.conflict, message: description)
        }
    }
}

/// Activity actions (the `action` column).
package enum ActivityAction: String, Sendable, CaseIterable {
    case command
    case userAdd = "user.add"
    case userPassword = "user.passwd"
    case userRole = "user.role"
    case userDisable = "user.disable"
    case userEnable = "user.enable"
    case userRemove = "user.remove"
    case userSignOut = "user.signout"
}

/// Every change to users; see the theory of operation.
package struct UserDirectory: Sendable {
    package let store: WebStore

    package init(store: WebStore) { self.store = store }

    /// Creates a user; refuses an existing name.
    package func add(name: String, password: String, role: Role, by actor: String) async throws {
        try check(name: name)
        if let p = Passwords.check(password) { throw UserChangeError(kind: .invalid, description: p) }
        let hash = await Passwords.hash(password, cost: store.settings.bcryptCost)
        let now = SQLTime.now()
        let added = try await store.run("add user") { s in
            try await s.connection.transaction { t in
                let n = try t.execute("""
                    INSERT IGNORE INTO web_users (user_name, password_hash, role, created_at, updated_at) VALUES (?, ?, ?, ?, ?)
                    """, [.string(name), .string(hash), .string(role.rawValue), .string(now), .string(now)]).affectedRows
                guard n == 1 else { return false }
                try Self.record(t, actor: actor, action: .userAdd, target: name, detail: "role \(role.rawValue)")
                return true
            }
        }
        guard added else { throw UserChangeError(kind: .conflict, description: "user \(name) exists; change it with passwd, role, disable or remove") }
    }

    /// Sets a new password and ends the user's sessions (but `keep`, the caller's own).
    package func setPassword(name: String, password: String, by actor: String, keep: String? = nil) async throws {
        if let p = Passwords.check(password) { throw UserChangeError(kind: .invalid, description: p) }
        let hash = await Passwords.hash(password, cost: store.settings.bcryptCost)
        try await change(name, by: actor, action: .userPassword, detail: "new password", keep: keep,
                         "UPDATE web_users SET password_hash = ?, updated_at = ? WHERE user_name = ?", [.string(hash)])
    }

    package func setRole(name: String, role: Role, by actor: String) async throws {
        try await change(name, by: actor, action: .userRole, detail: "role \(role.rawValue)", keep: nil,
                         "UPDATE web_users SET role = ?, updated_at = ? WHERE user_name = ?", [.string(role.rawValue)])
    }

    package func setDisabled(name: String, _ disabled: Bool, by actor: String) async throws {
        if disabled {
            try await change(name, by: actor, action: .userDisable, detail: "disabled", keep: nil,
                             "UPDATE web_users SET disabled_at = COALESCE(disabled_at, ?), updated_at = ? WHERE user_name = ?", [.string(SQLTime.now())])
        } else {
            try await change(name, by: actor, action: .userEnable, detail: "enabled", keep: nil,
                             "UPDATE web_users SET disabled_at = NULL, updated_at = ? WHERE user_name = ?", [])
        }
    }

    package func remove(name: String, by actor: String) async throws {
        try await change(name, by: actor, action: .userRemove, detail: "removed", keep: nil, "DELETE FROM web_users WHERE user_name = ?", [], stamps: false)
    }

    /// Ends every session of the user (but `keep`); the user stays.
    package func signOut(name: String, by actor: String, keep: String? = nil) async throws {
        try await change(name, by: actor, action: .userSignOut, detail: "signed out everywhere", keep: keep, nil, [], stamps: false)
    }

    /// Runs `sql` (its binds are `binds`, then `updated_at` when `stamps`, then the name) for an
    /// existing user, ends the user's sessions and records the change, in one transaction.
    private func change(_ name: String, by actor: String, action: ActivityAction, detail: String, keep: String?,
                        _ sql: String?, _ binds: [MariaDBValue], stamps: Bool = true) async throws {
        try check(name: name)
        let now = SQLTime.now()
        let params = binds + (stamps ? [.string(now)] : []) + [.string(name)]
        let found = try await store.run("change user") { s in
            try await s.connection.transaction { t in
                guard !(try t.execute("SELECT 1 FROM web_users WHERE user_name = ? FOR UPDATE", [.string(name)]).rows.isEmpty) else { return false }
                if let sql { try t.execute(sql, params) }
                if let keep {
                    try t.execute("DELETE FROM web_sessions WHERE user_name = ? AND token <> SHA2(?, 256)", [.string(name), .string(keep)])
                } else {
                    try t.execute("DELETE FROM web_sessions WHERE user_name = ?", [.string(name)])
                }
                try Self.record(t, actor: actor, action: action, target: name, detail: detail)
                return true
            }
        }
        guard found else { throw UserChangeError(kind: .notFound, description: "no user \(name.debugDescription)") }
    }

    private func check(name: String) throws {
        if let p = Passwords.checkUserName(name) { throw UserChangeError(kind: .invalid, description: "invalid user name \(name.debugDescription): \(p)") }
    }

    /// Appends to the activity trail inside a transaction.
    package static func record(_ t: MariaDBSession, actor: String, action: ActivityAction, target: String, detail: String, requestID: String? = nil) throws {
        try t.execute("INSERT INTO web_activity (at, actor, action, target, detail, request_id) VALUES (?, ?, ?, ?, ?, ?)",
                      [.string(SQLTime.now()), .string(String(actor.prefix(80))), .string(action.rawValue), .string(String(target.prefix(128))),
                       .string(String(detail.prefix(1024))), requestID.map(MariaDBValue.string) ?? .null])
    }

    /// The actor name of the command line: "cli:" and the login name.
    package static var commandLineActor: String {
        let env = ProcessInfo.processInfo.environment
        return "cli:" + (env["SUDO_USER"] ?? env["USER"] ?? env["LOGNAME"] ?? "unknown")
    }
}

extension WebStore {
    // MARK: users

    package func users() async throws -> [WebUser] {
        let now = SQLTime.now()
        return try await run("list users") { s in
            try await s.connection.execute("""
                SELECT u.user_name, u.role, u.disabled_at, u.created_at, u.updated_at,
                       (SELECT COUNT(*) FROM web_sessions w WHERE w.user_name = u.user_name AND w.expires_at > ?)
                  FROM web_users u ORDER BY u.user_name
                """, [.string(now)]).rows.map { r in
                WebUser(name: r[0].string ?? "", role: Role(rawValue: r[1].string ?? "") ?? .viewer, disabled: !r[2].isNull,
                        createdAt: WebTime.iso(sql: r[3].string), updatedAt: WebTime.iso(sql: r[4].string), sessions: Int(r[5].int64 ?? 0))
            }
        }
    }

    /// The password hash of an enabled user (nil: unknown or disabled).
    package func passwordHash(user: String) async throws -> String? {
        try await run("read user") { s in
            try await s.connection.execute("SELECT password_hash FROM web_users WHERE user_name = ? AND disabled_at IS NULL", [.string(user)]).rows.first?[0].string
        }
    }

    // MARK: sessions

    package func createSession(user: String) async throws -> WebSession? {
        let token = randomToken(), csrf = randomToken()
        let expires = WebTime.nowMilliseconds() + settings.sessionLifetime.inMilliseconds
        let role = try await run("create session") { s in
            try await s.connection.transaction { t -> String? in
                try t.execute("DELETE FROM web_sessions WHERE expires_at < ?", [.string(SQLTime.now())])
                guard let role = try t.execute("SELECT role FROM web_users WHERE user_name = ? AND disabled_at IS NULL", [.string(user)]).rows.first?[0].string else {
                    return nil
                }
                try t.execute("INSERT INTO web_sessions (token, user_name, csrf_token, created_at, expires_at) VALUES (SHA2(?, 256), ?, ?, ?, ?)",
                              [.string(token), .string(user), .string(csrf), .string(SQLTime.now()), .string(SQLTime.datetime(unixMilliseconds: expires)!)])
                return role
            }
        }
        guard let role, let r = Role(rawValue: role) else { return nil }
        return WebSession(token: token, user: user, role: r, csrfToken: csrf, expiresAtMs: expires)
    }

    /// The live session of a cookie token, or nil (unknown, expired, or its user is disabled or gone).
    package func session(token: String) async throws -> WebSession? {
        guard token.utf8.count == 64, token.utf8.allSatisfy({ isHexDigit($0) }) else { return nil }
        return try await run("read session") { s in
            let r = try await s.connection.execute("""
                SELECT s.user_name, s.csrf_token, s.expires_at, u.role FROM web_sessions s JOIN web_users u ON u.user_name = s.user_name
                 WHERE s.token = SHA2(?, 256) AND s.expires_at > ? AND u.disabled_at IS NULL
                """, [.string(token), .string(SQLTime.now())])
            guard let row = r.rows.first, let user = row[0].string, let csrf = row[1].string,
                  let exp = row[2].string.flatMap(WebTime.milliseconds(sql:)), let role = row[3].string.flatMap(Role.init(rawValue:)) else { return nil }
            return WebSession(token: token, user: user, role: role, csrfToken: csrf, expiresAtMs: exp)
        }
    }

    package func deleteSession(token: String) async throws {
        try await run("delete session") { s in
            try await s.connection.execute("DELETE FROM web_sessions WHERE token = SHA2(?, 256)", [.string(token)])
        }
    }

    // MARK: activity

    /// The trail, newest first: at most `limit` entries before id `before`, optionally only one target or action.
    package func activity(target: String? = nil, action: String? = nil, before: UInt64? = nil, limit: Int = 100) async throws -> [ActivityEntry] {
        var conditions: [String] = []
        var binds: [MariaDBValue] = []
        if let target { conditions.append("target = ?"); binds.append(.string(target)) }
        if let action { conditions.append("action = ?"); binds.append(.string(action)) }
        if let before { conditions.append("id < ?"); binds.append(.uint(before)) }
        let whereClause = conditions.isEmpty ? "" : " WHERE " + conditions.joined(separator: " AND ")
        let finalBinds = binds
        return try await run("read activity") { s in
            try await s.connection.execute(
                "SELECT id, at, actor, action, target, detail, request_id FROM web_activity\(whereClause) ORDER BY id DESC LIMIT \(limit)", finalBinds).rows.map { r in
                ActivityEntry(id: r[0].uint64 ?? 0, at: WebTime.iso(sql: r[1].string), actor: r[2].string ?? "", action: r[3].string ?? "",
                              target: r[4].string ?? "", detail: r[5].string ?? "", requestId: r[6].string)
            }
        }
    }
}
