// Settings of the web admin (`fieldlog-backend web` / `run`): the FIELDLOG_WEB_* rows of
// BackendSettings' table (their defaults and limits), read into typed values.
import Audit
import BackendStore
import FieldlogCore
import Foundation
import Hummingbird
import Settings

/// Everything the web admin needs besides the database and broker settings.
package struct WebSettings: Sendable {
    /// Address the HTTP server binds to (FIELDLOG_WEB_HOST; put a TLS proxy in front for remote use).
    package var host: String
    /// FIELDLOG_WEB_PORT (0 in tests: any free port).
    package var port: Int
    /// Whether session cookies carry `Secure` (sent only over HTTPS); off only for plain-http
    /// loopback use (FIELDLOG_WEB_INSECURE_COOKIES=1 / --insecure-cookies).
    package var secureCookies: Bool
    /// How long a session lives after sign-in (FIELDLOG_WEB_SESSION_SECONDS).
    package var sessionLifetime: Duration
    /// How long the pages wait for a device's answer before showing "no answer" (FIELDLOG_WEB_COMMAND_TIMEOUT_SECONDS).
    package var commandTimeout: Duration
    /// Config keys the pages offer for get/set (FIELDLOG_WEB_CONFIG_KEYS; the device enforces its own allow-list too).
    package var configKeys: [String]
    /// A device is shown as "silent" when nothing arrived for this long (FIELDLOG_WEB_SILENT_AFTER_SECONDS).
    package var silentAfter: Duration
    /// bcrypt cost of new password hashes (FIELDLOG_WEB_BCRYPT_COST; tests use 4).
    package var bcryptCost: UInt8
    /// How old the fleet overview's snapshot may be before a request reads the fleet anew
    /// (FIELDLOG_WEB_FLEET_CACHE_SECONDS; 0: every request reads it; see Fleet.swift).
    package var fleetCacheAge: Duration
    /// How often a live page's stream looks for changes. Not a setting: 1 s (tests use less).
    package var liveInterval: Duration = .seconds(1)
    /// A live stream ends after this long; the browser reconnects by itself. Not a setting: 10 min.
    package var liveMaxDuration: Duration = .seconds(600)
    /// Live streams served at once by one web process; more are refused with 503 (FIELDLOG_WEB_LIVE_MAX_STREAMS).
    package var liveMaxStreams: Int
    /// Peers whose X-Forwarded-For names the client, a TLS proxy in front (FIELDLOG_WEB_TRUSTED_PROXIES).
    package var trustedProxies: [String]
    /// Sign-in attempts checked at once (bcrypt is CPU-bound by design); more get 429 (FIELDLOG_WEB_SIGNIN_CONCURRENCY).
    package var signInConcurrency: Int

    package static let sessionCookie = "fieldlog_session"
    package static let signInCookie = "fieldlog_signin"

    /// The defaults of the table (tests start from these).
    package init() {
        self = BackendSettings.table.readingDefaults { r in WebSettings(reading: &r) }
    }

    /// Checks and reads the FIELDLOG_WEB_* settings; throws one error listing every problem.
    package init(values: SettingValues) throws(ConfigurationError) {
        var r = SettingsReader(values)
        self.init(reading: &r)
        try r.finish()
    }

    /// Reads the FIELDLOG_WEB_* settings, recording problems in `r`.
    package init(reading r: inout SettingsReader) {
        host = r.string("FIELDLOG_WEB_HOST")
        port = r.int("FIELDLOG_WEB_PORT")
        secureCookies = !r.bool("FIELDLOG_WEB_INSECURE_COOKIES")
        sessionLifetime = .seconds(r.integer("FIELDLOG_WEB_SESSION_SECONDS"))
        commandTimeout = .seconds(r.integer("FIELDLOG_WEB_COMMAND_TIMEOUT_SECONDS"))
        silentAfter = .seconds(r.integer("FIELDLOG_WEB_SILENT_AFTER_SECONDS"))
        bcryptCost = UInt8(r.integer("FIELDLOG_WEB_BCRYPT_COST"))
        fleetCacheAge = .seconds(r.integer("FIELDLOG_WEB_FLEET_CACHE_SECONDS"))
        liveMaxStreams = r.int("FIELDLOG_WEB_LIVE_MAX_STREAMS")
        signInConcurrency = r.int("FIELDLOG_WEB_SIGNIN_CONCURRENCY")
        trustedProxies = r.list("FIELDLOG_WEB_TRUSTED_PROXIES")
        if !trustedProxies.allSatisfy({ $0.utf8.count <= 64 && $0.utf8.allSatisfy { b in isHexDigit(b | 0x20) || b == 0x2E || b == 0x3A } }) {
            r.problem("FIELDLOG_WEB_TRUSTED_PROXIES", "a comma-separated list of IP addresses")
        }
        configKeys = r.list("FIELDLOG_WEB_CONFIG_KEYS")
        if configKeys.isEmpty || !configKeys.allSatisfy({ $0.utf8.count <= 128 }) {
            r.problem("FIELDLOG_WEB_CONFIG_KEYS", "a comma-separated list of config keys of at most 128 bytes each")
        }
    }
}

/// UTC times as MariaDB returns them ("YYYY-MM-DD hh:mm:ss.fff") and as the web shows them
/// (ISO 8601 with Z, which the page's script turns into the viewer's time zone).
package enum WebTime {
    /// Milliseconds since 1970 of a DATETIME text in UTC; nil when it is not one.
    package static func milliseconds(sql text: String) -> Int64? {
        let u = Array(text.utf8)
        guard u.count >= 19, u[4] == 0x2D, u[7] == 0x2D, u[10] == 0x20 || u[10] == 0x54, u[13] == 0x3A, u[16] == 0x3A else { return nil }
        func num(_ a: Int, _ b: Int) -> Int64? {
            var v: Int64 = 0
            for i in a..<b { guard u[i] >= 0x30, u[i] <= 0x39 else { return nil }; v = v * 10 + Int64(u[i] - 0x30) }
            return v
        }
        guard let y = num(0, 4), let m = num(5, 7), let d = num(8, 10), let h = num(11, 13), let mi = num(14, 16), let s = num(17, 19),
              (1...12).contains(m), (1...31).contains(d), h < 24, mi < 60, s < 61 else { return nil }
        var ms: Int64 = 0
        if u.count > 20, u[19] == 0x2E {
            var digits = 0
            var i = 20
            while i < u.count, u[i] >= 0x30, u[i] <= 0x39, digits < 3 { ms = ms * 10 + Int64(u[i] - 0x30); digits += 1; i += 1 }
            while digits < 3 { ms *= 10; digits += 1 }
        }
        // Days from civil (Howard Hinnant's algorithm).
        let yy = m <= 2 ? y - 1 : y
        let era = (yy >= 0 ? yy : yy - 399) / 400
        let yoe = yy - era * 400
        let mp = (m + 9) % 12
        let doy = (153 * mp + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        let days = era * 146_097 + doe - 719_468
        return ((days * 24 + h) * 60 + mi) * 60_000 + s * 1000 + ms
    }

    /// "2026-11-29T20:16:13.123Z".
    package static func iso(milliseconds ms: Int64) -> String {
        guard let t = SQLTime.datetime(unixMilliseconds: ms) else { return String(ms) }
        return t.replacingOccurrences(of: " ", with: "T") + "Z"
    }

    /// ISO text of a DATETIME text, or nil.
    package static func iso(sql text: String?) -> String? {
        guard let text, let ms = milliseconds(sql: text) else { return nil }
        return iso(milliseconds: ms)
    }

    /// Parses what the API and the forms accept for a time: ISO 8601 with a zone
    /// ("2026-11-29T20:00:00Z", "…+01:00", fractional seconds allowed), or milliseconds since 1970.
    package static func parse(_ text: String) -> Int64? {
        let t = text.trimmingCharacters(in: .whitespaces)
        if let ms = Int64(t), ms >= 0, ms < 253_402_300_800_000 { return ms }
        let u = Array(t.utf8)
        guard u.count >= 20, u[10] == 0x54 else { return nil }
        // Split off the zone: "Z" or ±hh:mm.
        var offsetMs: Int64 = 0
        var body = t
        if t.hasSuffix("Z") {
            body = String(t.dropLast())
        } else if u.count >= 25, u[u.count - 6] == 0x2B || u[u.count - 6] == 0x2D, u[u.count - 3] == 0x3A {
            let zone = Array(t.utf8.suffix(6))
            guard let hh = Int64(String(decoding: zone[1...2], as: UTF8.self)), let mm = Int64(String(decoding: zone[4...5], as: UTF8.self)),
                  hh < 24, mm < 60 else { return nil }
            offsetMs = (hh * 60 + mm) * 60_000 * (zone[0] == 0x2B ? 1 : -1)
            body = String(t.dropLast(6))
        } else {
            return nil
        }
        guard body.utf8.count >= 19, let local = milliseconds(sql: body) else { return nil }
        let ms = local - offsetMs
        guard ms >= 0, ms < 253_402_300_800_000 else { return nil }
        return ms
    }

    package static func nowMilliseconds() -> Int64 { WallClock.unixMilliseconds() }

    /// A `from`/`to` range (either given; `to` defaults to now), checked; nil when neither is given.
    package static func range(from fromText: String?, to toText: String?, now: Int64) throws -> (from: Int64, to: Int64)? {
        guard fromText != nil || toText != nil else { return nil }
        guard let f = fromText, let from = parse(f) else {
            throw HTTPError(.badRequest, message: "from must be a time like 2026-11-29T08:00:00Z (or ms since 1970), got \(fromText.map { "\"\($0)\"" } ?? "nothing")")
        }
        var to = now
        if let t = toText {
            guard let v = parse(t) else { throw HTTPError(.badRequest, message: "to must be a time like 2026-11-29T20:00:00Z (or ms since 1970), got \"\(t)\"") }
            to = v
        }
        guard to > from else { throw HTTPError(.badRequest, message: "to must be after from") }
        guard to - from <= 366 * 86_400_000 else { throw HTTPError(.badRequest, message: "a time range can span at most 366 days") }
        return (from, to)
    }

    /// The audit report with its times in ISO 8601 UTC, as every other answer of the API has
    /// them (the report itself keeps the SQL text that `fieldlog-backend audit` prints).
    package static func isoTimes(_ report: AuditReport) -> AuditReport {
        var r = report
        r.generatedAt = iso(sql: r.generatedAt) ?? r.generatedAt
        for i in r.devices.indices {
            r.devices[i].lastSeenAt = iso(sql: r.devices[i].lastSeenAt)
            for j in r.devices[i].epochs.indices {
                r.devices[i].epochs[j].lastStoredAt = iso(sql: r.devices[i].epochs[j].lastStoredAt)
            }
        }
        return r
    }
}

/// A duration in words for people ("3 min", "2 h 5 min").
package func humanDuration(milliseconds ms: Int64) -> String {
    let s = max(0, ms / 1000)
    if s < 60 { return "\(s) s" }
    if s < 3600 { return "\(s / 60) min" }
    if s < 86400 { return "\(s / 3600) h \(s % 3600 / 60) min" }
    return "\(s / 86400) d \(s % 86400 / 3600) h"
}
