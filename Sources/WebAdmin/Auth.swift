// Auth: sessions, roles and CSRF protection of the web admin.
//
// Theory of operation: passwords are stored as bcrypt hashes (HummingbirdBcrypt, cost from
// WebSettings). Signing in creates a server-side session row (`web_sessions`: a 256-bit
// random token, the user, a per-session 256-bit CSRF token, an expiry); the browser holds only
// the token, in a cookie that is HttpOnly, SameSite=Strict and Secure (unless turned off for
// plain-http loopback use). `SessionMiddleware` loads the session (with the user's role; a
// disabled or removed user has none) for every request except the sign-in page and static
// assets; without one, pages redirect to /signin and /api answers 401. The role a route needs
// is decided in one place, `SessionMiddleware.requiredRole`: a 403 says which role it takes.
// Every state-changing request (any method but GET/HEAD) must carry the session's CSRF token:
// forms in the `csrf` field, the JSON API in the `X-CSRF-Token` header; a wrong or missing
// token is a 403. The sign-in form itself is protected by a double-submit token (a short-lived
// cookie that must equal the form field), so a foreign page cannot sign a browser in.
// The table keeps only a SHA-256 of each session token (computed by MariaDB's SHA2), so a
// copy of the database does not hand out live sessions. `SignInThrottle` slows down password
// guessing per client and per (client, user name), so nobody can lock another client out of
// an account, and `SignInGate` bounds the bcrypt checks running at once.
import Audit
import BackendStore
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdBcrypt
import Logging
import NIOCore
import Synchronization

/// The request context of the web admin: Hummingbird's core plus the signed-in session.
package struct WebContext: RequestContext {
    package var coreContext: CoreRequestContextStorage
    /// Set by `SessionMiddleware` for signed-in requests.
    package var session: WebSession?
    /// The url-encoded form of a POST, parsed once by the CSRF check.
    package var form: [String: String] = [:]

    /// The peer's IP address (nil in in-process tests).
    package var peerAddress: String?

    package init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        session = nil
        peerAddress = source.channel.remoteAddress?.ipAddress
    }

    /// Who is asking, for throttling: the peer, or the last X-Forwarded-For entry when the
    /// peer is a trusted proxy.
    package func client(_ request: Request, trustedProxies: [String]) -> String {
        let peer = peerAddress ?? "local"
        guard trustedProxies.contains(peer), let forwarded = request.headers[HTTPField.Name("X-Forwarded-For")!] else { return peer }
        let last = forwarded.split(separator: ",").last.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
        return last.isEmpty || last.utf8.count > 64 ? peer : last
    }

    /// Throws 403 unless the signed-in user has at least `role`.
    package func require(_ role: Role) throws {
        guard signedIn.role >= role else {
            throw HTTPError(.forbidden, message: "This needs the \(role.rawValue) role; you are signed in as \(signedIn.user) (\(signedIn.role.rawValue)).")
        }
    }

    /// 64 KiB is plenty for any form or command of the admin.
    package var maxUploadSize: Int { 64 * 1024 }

    /// The session; only called behind SessionMiddleware, which guarantees it.
    package var signedIn: WebSession {
        guard let session else { preconditionFailure("route behind SessionMiddleware without a session") }
        return session
    }
}

/// Password hashing off the cooperative pool (bcrypt takes ~0.2 s at cost 12 by design).
package enum Passwords {
    package static func hash(_ password: String, cost: UInt8) async -> String {
        await offPool { Bcrypt.hash(password, cost: cost) }
    }

    package static func verify(_ password: String, hash: String) async -> Bool {
        await offPool { Bcrypt.verify(password, hash: hash) }
    }

    /// Whether `password` matches `hash`; without a hash (no such user) it checks against a
    /// dummy of the same cost and says no, so both take the same time.
    package static func verify(_ password: String, hash: String?, cost: UInt8) async -> Bool {
        await offPool {
            guard let hash else {
                _ = Bcrypt.verify(password, hash: dummyHash(cost: cost))
                return false
            }
            return Bcrypt.verify(password, hash: hash)
        }
    }

    /// A hash to verify against when the user does not exist (or is disabled), at the cost of
    /// real hashes, so both cases take the same time. Made once per cost.
    package static func dummyHash(cost: UInt8) -> String {
        dummyHashes.withLock { d in
            if let h = d[cost] { return h }
            let h = Bcrypt.hash("fieldlog-no-such-user", cost: cost)
            d[cost] = h
            return h
        }
    }

    private static let dummyHashes = Mutex<[UInt8: String]>([:])

    /// Checks a new password; the message says what is wrong.
    package static func check(_ password: String) -> String? {
        if password.utf8.count < 10 { return "the password must have at least 10 characters" }
        if password.utf8.count > 72 { return "the password must have at most 72 bytes (bcrypt ignores the rest)" }
        return nil
    }

    /// User names: 1…64 of A–Z a–z 0–9 . _ - @.
    package static func checkUserName(_ name: String) -> String? {
        guard !name.isEmpty, name.utf8.count <= 64,
              name.utf8.allSatisfy({ b in (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x2E || b == 0x5F || b == 0x2D || b == 0x40 })
        else { return "a user name has 1…64 characters A–Z a–z 0–9 . _ - @" }
        return nil
    }
}

/// Runs CPU-heavy work on a GCD thread, not on Swift's cooperative pool.
package func offPool<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { c in
        DispatchQueue.global().async { c.resume(returning: body()) }
    }
}

/// Loads the session; keeps everyone without one out of everything but sign-in and assets.
package struct SessionMiddleware: RouterMiddleware {
    package typealias Context = WebContext
    package let store: WebStore

    package static func isPublic(_ path: String) -> Bool {
        path == "/signin" || path.hasPrefix("/static/") || path == "/favicon.ico" || path == "/api/session" || path == "/healthz"
    }

    package static func isAPI(_ path: String) -> Bool { path == "/api" || path.hasPrefix("/api/") }

    package func handle(_ request: Request, context: WebContext, next: (Request, WebContext) async throws -> Response) async throws -> Response {
        var context = context
        let path = request.uri.path
        if let token = request.cookies[WebSettings.sessionCookie]?.value {
            context.session = try await store.session(token: token)
        }
        if Self.isPublic(path) { return try await next(request, context) }
        guard let session = context.session else {
            if Self.isAPI(path) {
                throw HTTPError(.unauthorized, message: "Not signed in: POST /api/session with user and password first.")
            }
            var target = path
            if let q = request.uri.query { target += "?" + q }
            let next = request.method == .get ? "?next=" + (target.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? "/") : ""
            return Response.redirect(to: "/signin" + next, type: .found)
        }
        var request = request
        if request.method != .get, request.method != .head {
            try await checkCSRF(&request, context: &context, session: session)
        }
        try context.require(Self.requiredRole(method: request.method, path: path))
        return try await next(request, context)
    }

    /// The role each route needs: user management is for admins, sending commands for
    /// operators, everything else (reading) for every signed-in user.
    package static func requiredRole(method: HTTPRequest.Method, path: String) -> Role {
        if path == "/users" || path.hasPrefix("/users/") || path == "/api/users" || path.hasPrefix("/api/users/") { return .admin }
        if method == .post, path.hasSuffix("/commands") { return .operator }
        return .viewer
    }

    /// Compares the request's CSRF token with the session's; forms are parsed here (once).
    package func checkCSRF(_ request: inout Request, context: inout WebContext, session: WebSession) async throws {
        var given = request.headers[HTTPField.Name("X-CSRF-Token")!]
        if given == nil, request.headers[.contentType]?.hasPrefix("application/x-www-form-urlencoded") == true {
            let body = try await request.collectBody(upTo: context.maxUploadSize)
            context.form = parseForm(String(buffer: body))
            given = context.form["csrf"]
        }
        guard let given, constantTimeEqual(given, session.csrfToken) else {
            throw HTTPError(.forbidden, message: "The form or request is missing its security token (CSRF), or the token is stale. Reload the page and try again.")
        }
    }
}

/// Compares without an early exit, so timing does not tell how much of a token was right.
package func constantTimeEqual(_ a: String, _ b: String) -> Bool {
    let x = Array(a.utf8), y = Array(b.utf8)
    guard x.count == y.count else { return false }
    var diff: UInt8 = 0
    for i in 0..<x.count { diff |= x[i] ^ y[i] }
    return diff == 0
}

/// Parses application/x-www-form-urlencoded text (the last value of a repeated name wins).
package func parseForm(_ text: String) -> [String: String] {
    var out: [String: String] = [:]
    for pair in text.split(separator: "&") {
        let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
        func decode(_ s: Substring) -> String {
            String(s).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? ""
        }
        guard let k = kv.first else { continue }
        out[decode(k)] = kv.count > 1 ? decode(kv[1]) : ""
    }
    return out
}

extension WebSettings {
    package func sessionCookie(_ session: WebSession) -> Cookie {
        Cookie(name: Self.sessionCookie, value: session.token, maxAge: Int(sessionLifetime.components.seconds), path: "/",
               secure: secureCookies, httpOnly: true, sameSite: .strict)
    }

    package func expiredCookie(_ name: String) -> Cookie {
        Cookie(name: name, value: "gone", maxAge: 0, path: "/", secure: secureCookies, httpOnly: true, sameSite: .strict)
    }

    package func signInCookie(_ token: String) -> Cookie {
        Cookie(name: Self.signInCookie, value: token, maxAge: 3600, path: "/signin", secure: secureCookies, httpOnly: true, sameSite: .strict)
    }
}

/// Slows down password guessing. Two counters of failed sign-ins, both kept in memory per web
/// process (a restart forgets them) and bounded (`capacity` entries each, the stalest
/// dropped first):
/// - per (client, user name): after `freeFailures` failures in a row, the next attempt for that
///   name from that client is refused until a delay has passed (30 s, doubling per further
///   failure, at most 15 min). Other clients can still sign in as that user: nobody can lock
///   an operator out by failing on purpose.
/// - per client, over all names: after `freeClientFailures` failures the client is slowed the
///   same way, so trying many names costs the guesser time (and the server no bcrypt CPU).
/// A successful sign-in clears the (client, name) entry and forgives the client one failure
/// per success. Time is passed in, so the rule is tested without waiting.
package final class SignInThrottle: Sendable {
    package struct Entry { var failures: Int; var lastFailure: ContinuousClock.Instant }
    package let freeFailures: Int
    package let freeClientFailures: Int
    package let capacity: Int
    private let pairs = Mutex<[String: Entry]>([:])
    private let clients = Mutex<[String: Entry]>([:])

    package init(freeFailures: Int = 5, freeClientFailures: Int = 20, capacity: Int = 10_000) {
        precondition(freeFailures >= 1 && freeClientFailures >= 1 && capacity >= 1)
        self.freeFailures = freeFailures
        self.freeClientFailures = freeClientFailures
        self.capacity = capacity
    }

    package static func pairKey(client: String, user: String) -> String { client + "\u{0}" + user }

    /// How long `client` must still wait before trying `user` again, or nil when an attempt is allowed.
    package func refusal(client: String, user: String, now: ContinuousClock.Instant) -> Duration? {
        let a = Self.wait(pairs, Self.pairKey(client: client, user: user), free: freeFailures, now: now)
        let b = Self.wait(clients, client, free: freeClientFailures, now: now)
        return [a, b].compactMap { $0 }.max()
    }

    package func failed(client: String, user: String, now: ContinuousClock.Instant) {
        Self.count(pairs, Self.pairKey(client: client, user: user), now: now, capacity: capacity)
        Self.count(clients, client, now: now, capacity: capacity)
    }

    package func succeeded(client: String, user: String) {
        pairs.withLock { _ = $0.removeValue(forKey: Self.pairKey(client: client, user: user)) }
        clients.withLock { e in
            guard let entry = e[client] else { return }
            if entry.failures <= 1 { e[client] = nil } else { e[client]?.failures -= 1 }
        }
    }

    private static func wait(_ table: borrowing Mutex<[String: Entry]>, _ key: String, free: Int, now: ContinuousClock.Instant) -> Duration? {
        table.withLock { e in
            guard let entry = e[key], entry.failures >= free else { return nil }
            let wait = delay(afterFailures: entry.failures - free + 1) - (now - entry.lastFailure)
            return wait > .zero ? wait : nil
        }
    }

    private static func count(_ table: borrowing Mutex<[String: Entry]>, _ key: String, now: ContinuousClock.Instant, capacity: Int) {
        table.withLock { e in
            if e[key] == nil && e.count >= capacity, let stalest = e.min(by: { $0.value.lastFailure < $1.value.lastFailure })?.key {
                e[stalest] = nil
            }
            e[key, default: Entry(failures: 0, lastFailure: now)].failures += 1
            e[key]?.lastFailure = now
        }
    }

    /// 30 s for the first refused attempt, doubling, at most 15 min.
    package static func delay(afterFailures n: Int) -> Duration {
        .seconds(min(30 * (1 << min(max(n - 1, 0), 10)), 900))
    }
}

/// Bounds the password checks running at once: bcrypt costs ~0.2 s of CPU each by design, so
/// a flood of sign-ins from many clients gets 429 instead of queueing up CPU work.
package final class SignInGate: Sendable {
    package let limit: Int
    private let running = Mutex(0)

    package init(limit: Int) {
        precondition(limit >= 1)
        self.limit = limit
    }

    /// Runs `body` when fewer than `limit` run; nil (without running it) otherwise.
    package func run<T: Sendable>(_ body: () async throws -> T) async rethrows -> T? {
        let admitted = running.withLock { n in
            guard n < limit else { return false }
            n += 1
            return true
        }
        guard admitted else { return nil }
        defer { running.withLock { $0 -= 1 } }
        return try await body()
    }
}
