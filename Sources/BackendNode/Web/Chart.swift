// Chart: one sensor's series over a time range, drawn on the server as SVG.
//
// Theory of operation: a pure function from points and marked periods to SVG text (no IO, so
// tests check it directly). The line breaks wherever two neighbouring readings are further
// apart than `breakFactor` × the median interval (at least `minBreakMs`): the break is shaded
// as "no readings" (device stopped, offline, or powered off). Periods the audit knows records
// are missing (sequence gaps) are shaded red, the stretch since an offline device was last
// seen dark grey. More points than pixels are reduced per pixel column to their first, min,
// max and last, so spikes stay visible. Time labels carry `data-ms`; the page's script
// rewrites them in the viewer's time zone (the server writes UTC).
import Foundation

/// A marked stretch of time on a chart.
struct ChartBand: Sendable, Hashable {
    enum Kind: String, Sendable { case noData = "nodata", missing = "missing", offline = "offline" }
    var kind: Kind
    var fromMs: Int64
    var toMs: Int64
    var label: String
}

struct SensorChart: Sendable {
    var sensor: String
    var points: [SeriesPoint]
    var fromMs: Int64
    var toMs: Int64
    var bands: [ChartBand] = []
    var width = 720.0
    var height = 280.0
    var breakFactor = 3.0
    var minBreakMs: Int64 = 5_000

    static let left = 58.0, right = 12.0, top = 12.0, bottom = 30.0

    /// Where the line breaks: pairs of neighbouring points too far apart.
    func breaks() -> [ChartBand] {
        guard points.count >= 2 else { return [] }
        var intervals = zip(points, points.dropFirst()).map { $1.ms - $0.ms }.filter { $0 > 0 }
        intervals.sort()
        let median = intervals.isEmpty ? 0 : intervals[intervals.count / 2]
        let limit = max(minBreakMs, Int64(Double(median) * breakFactor))
        var out: [ChartBand] = []
        for (a, b) in zip(points, points.dropFirst()) where b.ms - a.ms > limit {
            out.append(ChartBand(kind: .noData, fromMs: a.ms, toMs: b.ms, label: "no readings for \(humanDuration(milliseconds: b.ms - a.ms))"))
        }
        // Readings that stopped before the end of the range.
        if let last = points.last, toMs - last.ms > limit {
            out.append(ChartBand(kind: .noData, fromMs: last.ms, toMs: toMs, label: "no readings since the last one"))
        }
        return out
    }

    func svg() -> String {
        let plotW = width - Self.left - Self.right, plotH = height - Self.top - Self.bottom
        let span = Double(max(1, toMs - fromMs))
        func x(_ ms: Int64) -> Double { Self.left + Double(ms - fromMs) / span * plotW }
        let values = points.map(\.value)
        var lo = values.min() ?? 0, hi = values.max() ?? 1
        if lo == hi { lo -= 1; hi += 1 }
        let ticks = niceTicks(lo: lo, hi: hi, count: 5)
        lo = min(lo, ticks.first ?? lo); hi = max(hi, ticks.last ?? hi)
        func y(_ v: Double) -> Double { Self.top + (1 - (v - lo) / (hi - lo)) * plotH }
        func f(_ d: Double) -> String { String(format: "%.1f", d) }

        var s = "<svg class=\"chart\" viewBox=\"0 0 \(Int(width)) \(Int(height))\" role=\"img\" aria-label=\"\(html(sensor)) over time\" xmlns=\"http://www.w3.org/2000/svg\">"
        s += "<rect class=\"plot\" x=\"\(f(Self.left))\" y=\"\(f(Self.top))\" width=\"\(f(plotW))\" height=\"\(f(plotH))\"/>"
        // Bands first, so the line is drawn over them.
        for band in bands + breaks() {
            let a = max(fromMs, band.fromMs), b = min(toMs, band.toMs)
            guard b > a else { continue }
            s += "<rect class=\"band \(band.kind.rawValue)\" x=\"\(f(x(a)))\" y=\"\(f(Self.top))\" width=\"\(f(max(1.5, x(b) - x(a))))\" height=\"\(f(plotH))\"><title>\(html(band.label))</title></rect>"
        }
        for t in ticks {
            s += "<line class=\"grid\" x1=\"\(f(Self.left))\" x2=\"\(f(width - Self.right))\" y1=\"\(f(y(t)))\" y2=\"\(f(y(t)))\"/>"
            s += "<text class=\"ylabel\" x=\"\(f(Self.left - 6))\" y=\"\(f(y(t) + 4))\" text-anchor=\"end\">\(formatNumber(t))</text>"
        }
        for t in timeTicks() {
            s += "<line class=\"grid\" x1=\"\(f(x(t)))\" x2=\"\(f(x(t)))\" y1=\"\(f(Self.top))\" y2=\"\(f(Self.top + plotH))\"/>"
            s += "<text class=\"xlabel\" data-ms=\"\(t)\" data-span=\"\(toMs - fromMs)\" x=\"\(f(x(t)))\" y=\"\(f(height - 10))\" text-anchor=\"middle\">\(utcLabel(t))</text>"
        }
        // The line, broken at the gaps.
        let breakStarts = Set(breaks().map(\.fromMs))
        var segment: [(x: Double, y: Double)] = []
        func flush() {
            if segment.count == 1 { s += "<circle class=\"dot\" r=\"2.5\" cx=\"\(f(segment[0].x))\" cy=\"\(f(segment[0].y))\"/>" }
            if segment.count >= 2 {
                s += "<polyline class=\"line\" points=\"\(segment.map { "\(f($0.x)),\(f($0.y))" }.joined(separator: " "))\"/>"
            }
            segment = []
        }
        for p in reduced(plotWidth: Int(plotW)) {
            segment.append((x(p.ms), y(p.value)))
            if breakStarts.contains(p.ms) { flush() }
        }
        flush()
        if points.count <= 80 {
            for p in points { s += "<circle class=\"dot\" r=\"2.2\" cx=\"\(f(x(p.ms)))\" cy=\"\(f(y(p.value)))\"><title>\(formatNumber(p.value)) at \(WebTime.iso(milliseconds: p.ms)) (seq \(p.seq))</title></circle>" }
        }
        if points.isEmpty {
            s += "<text class=\"empty\" x=\"\(f(Self.left + plotW / 2))\" y=\"\(f(Self.top + plotH / 2))\" text-anchor=\"middle\">No readings in this time range</text>"
        }
        s += "</svg>"
        return s
    }

    /// At most 4 points per pixel column: first, min, max, last (in time order).
    func reduced(plotWidth: Int) -> [SeriesPoint] {
        guard points.count > plotWidth * 4, plotWidth > 0 else { return points }
        let span = Double(max(1, toMs - fromMs))
        var out: [SeriesPoint] = []
        var column = -1
        var bucket: [SeriesPoint] = []
        func emit() {
            guard let first = bucket.first, let last = bucket.last else { return }
            let mn = bucket.min { $0.value < $1.value }!, mx = bucket.max { $0.value < $1.value }!
            var set = [first, mn, mx, last]
            set.sort { ($0.ms, $0.seq) < ($1.ms, $1.seq) }
            var seen = Set<SeriesPoint>()
            for p in set where seen.insert(p).inserted { out.append(p) }
            bucket = []
        }
        for p in points {
            let c = Int(Double(p.ms - fromMs) / span * Double(plotWidth))
            if c != column { emit(); column = c }
            bucket.append(p)
        }
        emit()
        return out
    }

    /// Round times for the x axis: 4…8 ticks at a step of 1 min … 1 week.
    func timeTicks() -> [Int64] {
        let span = toMs - fromMs
        let steps: [Int64] = [1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000, 600_000, 900_000, 1_800_000, 3_600_000, 7_200_000, 10_800_000, 21_600_000, 43_200_000, 86_400_000, 172_800_000, 604_800_000]
        let step = steps.first { span / $0 <= 5 } ?? 604_800_000
        var t = (fromMs / step + 1) * step
        var out: [Int64] = []
        while t < toMs, out.count < 12 { out.append(t); t += step }
        return out
    }

    func utcLabel(_ ms: Int64) -> String {
        let iso = WebTime.iso(milliseconds: ms)   // 2026-11-29T20:16:13.123Z
        let parts = iso.split(separator: "T")
        let hm = String(parts.last?.prefix(5) ?? "")
        if toMs - fromMs < 900_000 { return String(parts.last?.prefix(8) ?? "") }
        return toMs - fromMs > 86_400_000 ? "\(parts.first?.suffix(5) ?? "") \(hm)" : hm
    }
}

/// 1-2-5 ticks covering lo…hi.
func niceTicks(lo: Double, hi: Double, count: Int) -> [Double] {
    guard hi > lo, lo.isFinite, hi.isFinite else { return [lo] }
    let raw = (hi - lo) / Double(max(1, count - 1))
    let mag = pow(10, floor(log10(raw)))
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].map { $0 * mag }.first { $0 >= raw } ?? raw
    var t = floor(lo / step) * step
    var out: [Double] = []
    while t <= hi + step * 0.001, out.count < 20 { out.append(abs(t) < step * 1e-9 ? 0 : t); t += step }
    if (out.last ?? hi) < hi { out.append(t) }
    return out
}

/// HTML/XML text escaping.
func html(_ s: String) -> String {
    var out = ""
    out.reserveCapacity(s.utf8.count)
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
