// Routes of user management (admins), the own account (everyone) and the activity trail.
// Every change goes through `UserDirectory` (Users.swift), the same code as
// `fieldlog-backend user …`: it ends the user's other sessions and records who did it.
// Admins cannot demote, disable or remove themselves here, so the web cannot lock its last
// admin out by accident (the command line can still do anything).
import Audit
import BackendStore
import FieldlogCore
import Foundation
import HTTPTypes
import Hummingbird

extension WebRoutes {
    package func registerAdmin(_ router: Router<WebContext>) {
        router.get("/users") { request, context in
            htmlResponse(Page.users(try await store.users(), session: context.signedIn, message: query(request, "done")))
        }
        router.post("/users") { _, context in
            let f = context.form
            let name = f["name"] ?? ""
            try await users.add(name: name, password: f["password"] ?? "", role: try role(f["role"]), by: context.signedIn.user)
            return Response.redirect(to: PageLink("/users", [("done", "User \(name) added.")]).text, type: .normal)
        }
        router.post("/users/:user") { _, context in
            let name = context.parameters.get("user") ?? ""
            let f = context.form
            let done: String
            switch f["action"] ?? "" {
            case "role":
                let r = try role(f["role"])
                try notSelf(name, context, "change your own role")
                try await users.setRole(name: name, role: r, by: context.signedIn.user)
                done = "\(name) is now \(r.rawValue); their sessions ended."
            case "passwd":
                try await users.setPassword(name: name, password: f["password"] ?? "", by: context.signedIn.user,
                                            keep: name == context.signedIn.user ? context.signedIn.token : nil)
                done = "Password of \(name) changed; their other sessions ended."
            case "disable":
                try notSelf(name, context, "disable yourself")
                try await users.setDisabled(name: name, true, by: context.signedIn.user)
                done = "\(name) is disabled and signed out."
            case "enable":
                try await users.setDisabled(name: name, false, by: context.signedIn.user)
                done = "\(name) is enabled."
            case "signout":
                try await users.signOut(name: name, by: context.signedIn.user, keep: name == context.signedIn.user ? context.signedIn.token : nil)
                done = "\(name) is signed out everywhere."
            case "remove":
                try notSelf(name, context, "remove yourself")
                guard f["confirm"] == "yes" else { throw HTTPError(.badRequest, message: "tick “sure” to remove a user") }
                try await users.remove(name: name, by: context.signedIn.user)
                done = "\(name) is removed."
            case let a:
                throw HTTPError(.badRequest, message: "action must be one of role, passwd, disable, enable, signout, remove, got \"\(a)\"")
            }
            return Response.redirect(to: PageLink("/users", [("done", done)]).text, type: .normal)
        }
        router.get("/account") { request, context in
            let mine = try await store.users().first { $0.name == context.signedIn.user }?.sessions ?? 1
            return htmlResponse(Page.account(session: context.signedIn, sessions: mine, message: query(request, "done")))
        }
        router.post("/account") { _, context in
            let s = context.signedIn
            let f = context.form
            switch f["action"] ?? "" {
            case "passwd":
                let current = f["current"] ?? ""
                guard let hash = try await store.passwordHash(user: s.user), await Passwords.verify(current, hash: hash) else {
                    throw HTTPError(.badRequest, message: "the current password is not right")
                }
                guard f["password"] == f["again"] else { throw HTTPError(.badRequest, message: "the two new passwords differ") }
                try await users.setPassword(name: s.user, password: f["password"] ?? "", by: s.user, keep: s.token)
                return Response.redirect(to: PageLink("/account", [("done", "Password changed; your other sessions ended.")]).text, type: .normal)
            case "signout":
                try await users.signOut(name: s.user, by: s.user, keep: s.token)
                return Response.redirect(to: PageLink("/account", [("done", "Your other sessions ended.")]).text, type: .normal)
            case let a:
                throw HTTPError(.badRequest, message: "action must be passwd or signout, got \"\(a)\"")
            }
        }
        router.get("/activity") { request, context in
            let (entries, q) = try await activity(request)
            return htmlResponse(Page.activity(entries, target: q.target, action: q.action, before: q.before, limit: q.limit, session: context.signedIn))
        }

        // JSON API.
        router.get("/api/users") { _, _ in try json(["users": try await store.users()]) }
        router.post("/api/users") { request, context in
            struct Body: Decodable { var name: String; var password: String; var role: String? }
            let b: Body = try await decodeJSON(request, context)
            try await users.add(name: b.name, password: b.password, role: try role(b.role), by: context.signedIn.user)
            guard let u = try await store.users().first(where: { $0.name == b.name }) else { throw HTTPError(.notFound, message: "user \(b.name) vanished") }
            return try json(u, status: .created)
        }
        router.post("/api/users/:user/password") { request, context in
            struct Body: Decodable { var password: String }
            let b: Body = try await decodeJSON(request, context)
            let name = context.parameters.get("user") ?? ""
            try await users.setPassword(name: name, password: b.password, by: context.signedIn.user,
                                        keep: name == context.signedIn.user ? context.signedIn.token : nil)
            return Response(status: .noContent)
        }
        router.post("/api/users/:user/role") { request, context in
            struct Body: Decodable { var role: String }
            let b: Body = try await decodeJSON(request, context)
            let name = context.parameters.get("user") ?? ""
            try notSelf(name, context, "change your own role")
            try await users.setRole(name: name, role: try role(b.role), by: context.signedIn.user)
            return Response(status: .noContent)
        }
        for (path, disable) in [("/api/users/:user/disable", true), ("/api/users/:user/enable", false)] {
            router.post(RouterPath(path)) { _, context in
                let name = context.parameters.get("user") ?? ""
                if disable { try notSelf(name, context, "disable yourself") }
                try await users.setDisabled(name: name, disable, by: context.signedIn.user)
                return Response(status: .noContent)
            }
        }
        router.post("/api/users/:user/signout") { _, context in
            let name = context.parameters.get("user") ?? ""
            try await users.signOut(name: name, by: context.signedIn.user, keep: name == context.signedIn.user ? context.signedIn.token : nil)
            return Response(status: .noContent)
        }
        router.delete("/api/users/:user") { _, context in
            let name = context.parameters.get("user") ?? ""
            try notSelf(name, context, "remove yourself")
            try await users.remove(name: name, by: context.signedIn.user)
            return Response(status: .noContent)
        }
        router.get("/api/activity") { request, _ in
            let (entries, q) = try await activity(request)
            struct Body: Encodable { var activity: [ActivityEntry]; var next: String? }
            return try json(Body(activity: entries, next: entries.count == q.limit ? entries.last.map { String($0.id) } : nil))
        }
    }

    package func role(_ text: String?) throws -> Role {
        do { return try Role.parse(text ?? Role.operator.rawValue) } catch { throw HTTPError(.badRequest, message: error.description) }
    }

    package func notSelf(_ name: String, _ context: WebContext, _ what: String) throws {
        guard name != context.signedIn.user else {
            throw HTTPError(.conflict, message: "You cannot \(what) here, so the web keeps an admin; ask another admin or use `fieldlog-backend user`.")
        }
    }

    package func activity(_ request: Request) async throws -> ([ActivityEntry], (target: String?, action: String?, before: UInt64?, limit: Int)) {
        let target = query(request, "target"), action = query(request, "action")
        if let a = action, ActivityAction(rawValue: a) == nil {
            throw HTTPError(.badRequest, message: "action must be one of \(ActivityAction.allCases.map(\.rawValue).joined(separator: ", ")), got \"\(a)\"")
        }
        var before: UInt64?
        if let b = query(request, "before") {
            guard let v = UInt64(b) else { throw HTTPError(.badRequest, message: "before must be an activity id (a whole number), got \"\(b)\"") }
            before = v
        }
        let limit = try intParameter(request, "limit", default: 100, range: 1...1000)
        return (try await store.activity(target: target, action: action, before: before, limit: limit), (target, action, before, limit))
    }
}
