// The router's middlewares besides the session's (Auth.swift): errors turned into clear answers,
// and the security headers every answer carries.
import Foundation
import HTTPTypes
import Hummingbird
import Logging

/// Turns errors into clear answers: HTML for pages, JSON for /api; never a bare 500.
package struct ErrorPageMiddleware: RouterMiddleware {
    package typealias Context = WebContext
    package let logger: Logger

    package func handle(_ request: Request, context: WebContext, next: (Request, WebContext) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch {
            let status: HTTPResponse.Status
            let message: String
            if let e = error as? HTTPError {
                status = e.status
                message = e.body ?? e.status.reasonPhrase
            } else if let e = error as? any HTTPResponseError {
                status = e.status
                message = "\(e.status.reasonPhrase)"
            } else if let e = error as? UserChangeError {
                status = e.httpError.status
                message = e.description
            } else {
                // The details stay in the log: they may name internals a visitor has no business seeing.
                let reference = String(randomToken().prefix(12))
                logger.error("web: \(request.method) \(request.uri.path) failed (reference \(reference)): \(error)")
                status = .internalServerError
                message = "An unexpected error happened. It was logged with reference \(reference)."
            }
            if SessionMiddleware.isAPI(request.uri.path) {
                struct Body: Encodable { struct E: Encodable { var status: Int; var message: String }; var error: E }
                var r = try json(Body(error: .init(status: status.code, message: message)), status: status)
                if status == .unauthorized { r.headers[.wwwAuthenticate] = "Cookie realm=\"fieldlog\"" }
                return r
            }
            return htmlResponse(Page.error(status: status.code, message: message, session: context.session), status: status)
        }
    }
}

/// Headers that keep the pages from being framed, sniffed or made to run foreign scripts.
package struct SecurityHeadersMiddleware: RouterMiddleware {
    package typealias Context = WebContext
    package func handle(_ request: Request, context: WebContext, next: (Request, WebContext) async throws -> Response) async throws -> Response {
        var r = try await next(request, context)
        r.headers[.contentSecurityPolicy] = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
        r.headers[.xContentTypeOptions] = "nosniff"
        r.headers[HTTPField.Name("Referrer-Policy")!] = "same-origin"
        r.headers[HTTPField.Name("X-Frame-Options")!] = "DENY"
        return r
    }
}
