// Signing in and out: the sign-in page and form (CSRF cookie, throttled password checks) and
// the API's session calls.
import FieldlogCore
import Foundation
import HTTPTypes
import Hummingbird

extension WebRoutes {
    package func signInPage(_ request: Request, _ context: WebContext, next: String? = nil, message: String? = nil,
                    status: HTTPResponse.Status = .ok) async throws -> Response {
        if context.session != nil, message == nil { return .redirect(to: "/", type: .found) }
        let token = randomToken()
        var r = htmlResponse(Page.signIn(token: token, next: safeNext(next ?? query(request, "next")), message: message), status: status)
        r.setCookie(deps.settings.signInCookie(token))
        return r
    }

    /// Only paths of this site, so a sign-in link cannot send the user elsewhere: it must start
    /// with one "/" and hold nothing a browser would read as another host (a second "/" or "\\"
    /// at its start, after dropping the TAB/CR/LF browsers ignore) or treat specially (control
    /// characters, spaces).
    package func safeNext(_ next: String?) -> String {
        guard let next, next.utf8.count <= 2048, next.hasPrefix("/"),
              next.utf8.allSatisfy({ $0 > 0x20 && $0 != 0x7F && $0 != 0x5C }) else { return "/" }
        let second = next.utf8.dropFirst().first
        guard second != 0x2F else { return "/" }
        return next
    }

    package func signIn(_ request: Request, _ context: WebContext) async throws -> Response {
        var request = request
        let form = parseForm(String(buffer: try await request.collectBody(upTo: context.maxUploadSize)))
        guard let cookie = request.cookies[WebSettings.signInCookie]?.value, let given = form["csrf"], constantTimeEqual(cookie, given) else {
            throw HTTPError(.forbidden, message: "The sign-in form is stale or was not sent from this site. Reload the sign-in page and try again.")
        }
        let user = form["user"] ?? "", password = form["password"] ?? ""
        let session: WebSession?
        do {
            session = try await authenticate(user: user, password: password, client: context.client(request, trustedProxies: deps.settings.trustedProxies))
        } catch let e as HTTPError where e.status == .tooManyRequests {
            return try await signInPage(request, context, next: form["next"], message: e.body ?? "Too many sign-ins; wait a moment.", status: .tooManyRequests)
        }
        guard let session else {
            return try await signInPage(request, context, next: form["next"], message: "Wrong user name or password.", status: .unauthorized)
        }
        var r = Response.redirect(to: safeNext(form["next"]), type: .found)
        r.setCookie(deps.settings.sessionCookie(session))
        r.setCookie(deps.settings.expiredCookie(WebSettings.signInCookie))
        return r
    }

    /// Checks the password (throttled, see SignInThrottle/SignInGate); a session when right.
    package func authenticate(user: String, password: String, client: String) async throws -> WebSession? {
        guard Passwords.checkUserName(user) == nil, !password.isEmpty, password.utf8.count <= 72 else { return nil }
        if let wait = deps.signInThrottle.refusal(client: client, user: user, now: .now) {
            deps.logger.notice("web: sign-in for \(user.debugDescription) from \(client) refused: too many failures")
            throw HTTPError(.tooManyRequests, message: "Too many failed sign-ins from here. Try again in \(wait.components.seconds + 1) s.")
        }
        let checked: Bool? = try await deps.signInGate.run {
            let hash = try await store.passwordHash(user: user)
            return await Passwords.verify(password, hash: hash, cost: deps.settings.bcryptCost)
        }
        guard let ok = checked else {
            throw HTTPError(.tooManyRequests, message: "Too many sign-ins at once. Try again in a few seconds.")
        }
        guard ok, let session = try await store.createSession(user: user) else {
            deps.signInThrottle.failed(client: client, user: user, now: .now)
            deps.logger.notice("web: failed sign-in for \(user.debugDescription) from \(client)")
            return nil
        }
        deps.signInThrottle.succeeded(client: client, user: user)
        deps.logger.info("web: \(user) signed in from \(client)")
        return session
    }

    package func signOut(_ request: Request, _ context: WebContext) async throws -> Response {
        try await store.deleteSession(token: context.signedIn.token)
        var r = Response.redirect(to: "/signin", type: .found)
        r.setCookie(deps.settings.expiredCookie(WebSettings.sessionCookie))
        return r
    }

    package struct SessionInfo: Codable { var user: String; var role: Role; var csrfToken: String; var expiresAt: String }

    package func sessionInfo(_ context: WebContext) throws -> Response {
        guard let s = context.session else { throw HTTPError(.unauthorized, message: "Not signed in: POST /api/session with user and password first.") }
        return try json(SessionInfo(user: s.user, role: s.role, csrfToken: s.csrfToken, expiresAt: WebTime.iso(milliseconds: s.expiresAtMs)))
    }

    package struct Credentials: Decodable { var user: String; var password: String }

    package func apiSignIn(_ request: Request, _ context: WebContext) async throws -> Response {
        let c: Credentials = try await decodeJSON(request, context)
        guard let session = try await authenticate(user: c.user, password: c.password, client: context.client(request, trustedProxies: deps.settings.trustedProxies)) else {
            throw HTTPError(.unauthorized, message: "wrong user name or password")
        }
        var r = try json(SessionInfo(user: session.user, role: session.role, csrfToken: session.csrfToken,
                                     expiresAt: WebTime.iso(milliseconds: session.expiresAtMs)), status: .created)
        r.setCookie(deps.settings.sessionCookie(session))
        return r
    }

    package func apiSignOut(_ request: Request, _ context: WebContext) async throws -> Response {
        guard let s = context.session else { throw HTTPError(.unauthorized, message: "Not signed in.") }
        // /api/session is public (for signing in), so SessionMiddleware did not check the token.
        guard let given = request.headers[HTTPField.Name("X-CSRF-Token")!], constantTimeEqual(given, s.csrfToken) else {
            throw HTTPError(.forbidden, message: "missing or wrong X-CSRF-Token header")
        }
        try await store.deleteSession(token: s.token)
        var r = Response(status: .noContent)
        r.setCookie(deps.settings.expiredCookie(WebSettings.sessionCookie))
        return r
    }
}
