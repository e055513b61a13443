// The answers handlers give: HTML pages and JSON (both never cached), and JSON request bodies
// read with errors that say what was wrong.
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

package func htmlResponse(_ page: HTML, status: HTTPResponse.Status = .ok) -> Response {
    Response(status: status, headers: [.contentType: "text/html; charset=utf-8", .cacheControl: "no-store"],
             body: .init(byteBuffer: ByteBuffer(string: page.text)))
}

package func json(_ value: some Encodable, status: HTTPResponse.Status = .ok) throws -> Response {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    let data = try encoder.encode(value)
    return Response(status: status, headers: [.contentType: "application/json; charset=utf-8", .cacheControl: "no-store"],
                    body: .init(byteBuffer: ByteBuffer(bytes: data)))
}

package func decodeJSON<T: Decodable>(_ request: Request, _ context: WebContext) async throws -> T {
    var request = request
    guard request.headers[.contentType]?.hasPrefix("application/json") == true else {
        throw HTTPError(.badRequest, message: "send a JSON body with Content-Type: application/json")
    }
    let body = try await request.collectBody(upTo: context.maxUploadSize)
    do {
        return try JSONDecoder().decode(T.self, from: Data(buffer: body))
    } catch let e as HTTPError {
        throw e
    } catch let DecodingError.keyNotFound(key, _) {
        throw HTTPError(.badRequest, message: "the JSON body lacks \"\(key.stringValue)\"")
    } catch let DecodingError.typeMismatch(_, c) {
        throw HTTPError(.badRequest, message: "wrong type at \(c.codingPath.map(\.stringValue).joined(separator: ".")): \(c.debugDescription)")
    } catch {
        throw HTTPError(.badRequest, message: "the body is not valid JSON for this call")
    }
}
