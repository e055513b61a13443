// HTML: markup that cannot forget to escape.
//
// Theory of operation: a page is an `HTML` value, written as a string literal with
// interpolations. The literal parts are markup we wrote in this source; every interpolated
// `String` (a device id, a sensor name, a message from a device, a user name) is escaped for
// both text and quoted attribute values (& < > " '); only another `HTML` value is inserted as
// it is. Numbers are formatted, never raw text. So the only way to put unescaped text into a
// page is to build it as an `HTML` literal here, in reviewed source: there is no "raw" door.
// Attribute values must always be quoted (they are, everywhere in the pages).

/// A piece of HTML whose interpolated text is escaped.
package struct HTML: Sendable, Hashable, ExpressibleByStringInterpolation, CustomStringConvertible {
    /// The markup.
    private(set) var text: String

    /// A literal: markup written in this source, taken as it is.
    package init(stringLiteral value: String) { text = value }

    package init(stringInterpolation: Interpolation) { text = stringInterpolation.text }

    /// Nothing.
    package static let empty: HTML = ""

    package var description: String { text }
    package var isEmpty: Bool { text.isEmpty }

    package mutating func append(_ other: HTML) { text += other.text }

    package static func + (a: HTML, b: HTML) -> HTML {
        var r = a
        r.append(b)
        return r
    }

    package static func += (a: inout HTML, b: HTML) { a.append(b) }

    /// Escaped text as HTML (for building values outside a literal).
    package init(text value: String) { text = HTML.escape(value) }

    package struct Interpolation: StringInterpolationProtocol {
        package var text = ""

        package init(literalCapacity: Int, interpolationCount: Int) { text.reserveCapacity(literalCapacity + 16 * interpolationCount) }

        package mutating func appendLiteral(_ literal: String) { text += literal }
        /// Text: escaped.
        package mutating func appendInterpolation(_ value: String) { text += HTML.escape(value) }
        package mutating func appendInterpolation(_ value: Substring) { text += HTML.escape(String(value)) }
        /// Optional text: escaped; nothing for nil.
        package mutating func appendInterpolation(_ value: String?) { if let value { text += HTML.escape(value) } }
        /// Markup: inserted as it is.
        package mutating func appendInterpolation(_ value: HTML) { text += value.text }
        package mutating func appendInterpolation(_ value: HTML?) { if let value { text += value.text } }
        package mutating func appendInterpolation(_ values: [HTML]) { for v in values { text += v.text } }
        /// Numbers.
        package mutating func appendInterpolation(_ value: Int) { text += String(value) }
        package mutating func appendInterpolation(_ value: Int64) { text += String(value) }
        package mutating func appendInterpolation(_ value: UInt64) { text += String(value) }
    }

    /// Escapes for text and for quoted attribute values.
    package static func escape(_ s: String) -> String {
        guard s.utf8.contains(where: { $0 == 0x26 || $0 == 0x3C || $0 == 0x3E || $0 == 0x22 || $0 == 0x27 }) else { return s }
        var out = ""
        out.reserveCapacity(s.utf8.count + 16)
        for c in s.unicodeScalars {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }
}

extension Array where Element == HTML {
    /// The pieces one after the other, with `separator` between them.
    package func joined(separator: HTML = .empty) -> HTML {
        var out = HTML.empty
        for (i, h) in enumerated() {
            if i > 0 { out += separator }
            out += h
        }
        return out
    }
}

/// A URL path with a query, built from parts (each name and value percent-encoded). Interpolate
/// `.text` into an HTML attribute: the HTML escaping then turns `&` into `&amp;` as it must.
package struct PageLink: Sendable, Hashable {
    package var path: String
    package var query: [(String, String)] = []

    package init(_ path: String, _ query: [(String, String?)] = []) {
        self.path = path
        self.query = query.compactMap { k, v in v.map { (k, $0) } }
    }

    package static func == (a: PageLink, b: PageLink) -> Bool { a.text == b.text }
    package func hash(into h: inout Hasher) { h.combine(text) }

    /// The same link with `name` set to `value` (nil removes it).
    package func with(_ name: String, _ value: String?) -> PageLink {
        var l = self
        l.query.removeAll { $0.0 == name }
        if let value { l.query.append((name, value)) }
        return l
    }

    package var text: String {
        guard !query.isEmpty else { return path }
        return path + "?" + query.map { "\(Self.encode($0.0))=\(Self.encode($0.1))" }.joined(separator: "&")
    }

    /// Percent-encodes everything but the unreserved characters of RFC 3986.
    package static func encode(_ s: String) -> String {
        var out = ""
        for b in s.utf8 {
            switch b {
            case 0x30...0x39, 0x41...0x5A, 0x61...0x7A, 0x2D, 0x2E, 0x5F, 0x7E: out.unicodeScalars.append(Unicode.Scalar(b))
            default: out += "%" + String(b, radix: 16, uppercase: true).leftPadded(to: 2)
            }
        }
        return out
    }
}

extension String {
    package func leftPadded(to n: Int, with c: Character = "0") -> String {
        count >= n ? self : String(repeating: c, count: n - count) + self
    }
}
