// Chart: one sensor's series over a time range, drawn on the server as SVG.
//
// Theory of operation: a pure function from points and marked periods to HTML (no IO, so tests
// check it directly). The line is cut wherever it would claim readings that do not exist:
// - between two readings of different epochs (the device's log restarted);
// - across a range of sequence numbers that is missing (a gap, records an ended epoch never
//   delivered) or declared lost (`cuts`), however close in time its neighbours are;
// - where two neighbouring readings are further apart in time than `breakFactor` × the median
//   interval (at least `minBreakMs`): that stretch is shaded as "no readings" (device stopped,
//   offline, or powered off).
// Bands shade the missing (red) and declared-lost (amber) ranges between their neighbouring
// readings and the stretch since an offline device was last seen (grey). Each piece of line is
// reduced on its own to at most 4 points per column (first, min, max, last), so spikes stay
// visible and no cut is bridged. The plot is an SVG stretched to the card's width; the axis
// labels are separate SVGs in CSS pixels, so they stay readable on a phone. The element carries
// the range and the reduced points (`data-*`) for the script's hover read-out and
// drag-to-zoom; time labels carry `data-ms` so the script writes them in the viewer's zone.
import Audit
import BackendStore
import Foundation

/// A marked stretch of time on a chart.
package struct ChartBand: Sendable, Hashable {
    package enum Kind: String, Sendable { case noData = "nodata", missing = "missing", lost = "lost", offline = "offline" }
    package var kind: Kind
    package var fromMs: Int64
    package var toMs: Int64
    package var label: String
}

/// Sequence numbers of one epoch that the line must not be drawn across (missing or lost).
package struct ChartCut: Sendable, Hashable {
    package var epoch: UInt64
    package var first: UInt64
    package var last: UInt64
}

package struct SensorChart: Sendable {
    package var sensor: String
    package var points: [SeriesPoint]
    package var fromMs: Int64
    package var toMs: Int64
    package var bands: [ChartBand] = []
    package var cuts: [ChartCut] = []
    /// Plot coordinates: x in 0…width (stretched to the card), y in CSS pixels.
    package var width = 1000.0
    package var height = 220.0
    /// Columns for the point reduction (about the widest plot in CSS pixels).
    package var columns = 600
    package var breakFactor = 3.0
    package var minBreakMs: Int64 = 5_000

    package static let padding = 10.0

    /// The time limit above which neighbouring readings are not joined.
    package var breakLimitMs: Int64 {
        var intervals = zip(points, points.dropFirst()).map { $1.ms - $0.ms }.filter { $0 > 0 }
        intervals.sort()
        let median = intervals.isEmpty ? 0 : intervals[intervals.count / 2]
        return max(minBreakMs, Int64(Double(median) * breakFactor))
    }

    /// Stretches without readings: between neighbours too far apart, and after the last reading.
    package func breaks() -> [ChartBand] {
        guard points.count >= 2 else { return [] }
        let limit = breakLimitMs
        var out: [ChartBand] = []
        for (a, b) in zip(points, points.dropFirst()) where b.ms - a.ms > limit {
            out.append(ChartBand(kind: .noData, fromMs: a.ms, toMs: b.ms, label: "no readings for \(humanDuration(milliseconds: b.ms - a.ms))"))
        }
        if let last = points.last, toMs - last.ms > limit {
            out.append(ChartBand(kind: .noData, fromMs: last.ms, toMs: toMs, label: "no readings since the last one"))
        }
        return out
    }

    /// Whether the line must not join `a` and `b` (neighbours in time).
    package func isCut(_ a: SeriesPoint, _ b: SeriesPoint, limit: Int64) -> Bool {
        if a.epoch != b.epoch || b.ms - a.ms > limit { return true }
        guard b.seq > a.seq + 1 else { return false }
        return cuts.contains { $0.epoch == a.epoch && $0.first <= b.seq - 1 && $0.last >= a.seq + 1 }
    }

    /// The pieces of the line: runs of points that may be joined.
    package func segments() -> [[SeriesPoint]] {
        let limit = breakLimitMs
        var out: [[SeriesPoint]] = []
        var current: [SeriesPoint] = []
        for p in points {
            if let last = current.last, isCut(last, p, limit: limit) {
                out.append(current)
                current = []
            }
            current.append(p)
        }
        if !current.isEmpty { out.append(current) }
        return out
    }

    package func html() -> HTML {
        let span = Double(max(1, toMs - fromMs))
        func x(_ ms: Int64) -> Double { Double(ms - fromMs) / span * width }
        let values = points.map(\.value)
        var lo = values.min() ?? 0, hi = values.max() ?? 1
        if lo == hi { lo -= 1; hi += 1 }
        let ticks = niceTicks(lo: lo, hi: hi, count: 5)
        lo = min(lo, ticks.first ?? lo); hi = max(hi, ticks.last ?? hi)
        let plotH = height - 2 * Self.padding
        func y(_ v: Double) -> Double { Self.padding + (1 - (v - lo) / (hi - lo)) * plotH }
        func f(_ d: Double) -> String { String(format: "%.1f", d) }

        var plot: HTML = "<rect class=\"plotbg\" x=\"0\" y=\"0\" width=\"\(f(width))\" height=\"\(f(height))\"/>"
        // Bands first, so the line is drawn over them.
        for band in bands + breaks() {
            let a = max(fromMs, band.fromMs), b = min(toMs, band.toMs)
            // Outside the range, or an empty stretch: nothing to shade. A missing range between
            // two readings of the same millisecond still gets a thin band.
            guard b >= a, b > a || band.kind != .noData else { continue }
            let left = x(a), right = x(b)
            plot += "<rect class=\"band \(band.kind.rawValue)\" x=\"\(f(left))\" y=\"0\" width=\"\(f(max(3, right - left)))\" height=\"\(f(height))\"><title>\(band.label)</title></rect>"
        }
        for t in ticks { plot += "<line class=\"grid\" x1=\"0\" x2=\"\(f(width))\" y1=\"\(f(y(t)))\" y2=\"\(f(y(t)))\"/>" }
        let times = timeTicks()
        for t in times { plot += "<line class=\"grid\" x1=\"\(f(x(t)))\" x2=\"\(f(x(t)))\" y1=\"0\" y2=\"\(f(height))\"/>" }
        var hover: [String] = []
        for segment in segments() {
            let r = reduced(segment)
            if r.count == 1 {
                plot += "<line class=\"pt\" x1=\"\(f(x(r[0].ms)))\" x2=\"\(f(x(r[0].ms)))\" y1=\"\(f(y(r[0].value)))\" y2=\"\(f(y(r[0].value)))\"/>"
            } else {
                plot += "<polyline class=\"line\" points=\"\(r.map { "\(f(x($0.ms))),\(f(y($0.value)))" }.joined(separator: " "))\"/>"
            }
            if points.count <= 80, r.count > 1 {
                for p in r { plot += "<line class=\"pt\" x1=\"\(f(x(p.ms)))\" x2=\"\(f(x(p.ms)))\" y1=\"\(f(y(p.value)))\" y2=\"\(f(y(p.value)))\"/>" }
            }
            hover += r.map { "\($0.ms - fromMs),\(formatNumber($0.value)),\($0.seq)" }
        }
        let labelChars = ticks.map { formatNumber($0).count }.max() ?? 1
        let axisWidth = max(34, 8 * labelChars + 12)
        var yAxis = HTML.empty
        for t in ticks { yAxis += "<text x=\"\(axisWidth - 6)\" y=\"\(f(y(t) + 4))\" text-anchor=\"end\">\(formatNumber(t))</text>" }
        var xAxis = HTML.empty
        for t in times {
            let pct = Double(t - fromMs) / span * 100
            xAxis += "<text x=\"\(f(pct))%\" y=\"14\" text-anchor=\"middle\" data-ms=\"\(t)\" data-span=\"\(toMs - fromMs)\">\(utcLabel(t))</text>"
        }
        let empty: HTML = points.isEmpty ? "<p class=\"chart-empty\">No readings in this time range</p>" : .empty
        return """
        <div class="chart" data-from="\(fromMs)" data-to="\(toMs)" data-lo="\(formatNumber(lo))" data-hi="\(formatNumber(hi))" data-pad="\(f(Self.padding))" data-height="\(f(height))" data-points="\(hover.joined(separator: ";"))">\
        <svg class="yaxis" width="\(axisWidth)" height="\(f(height))" aria-hidden="true">\(yAxis)</svg>\
        <div class="plotbox"><svg class="plot" viewBox="0 0 \(f(width)) \(f(height))" preserveAspectRatio="none" height="\(f(height))" role="img" aria-label="\(sensor) over time">\(plot)</svg>\(empty)</div>\
        <span></span><svg class="xaxis" height="20" aria-hidden="true">\(xAxis)</svg></div>
        """
    }

    /// At most 4 points per column of the range (first, min, max, last, in time order).
    package func reduced(_ points: [SeriesPoint]) -> [SeriesPoint] {
        guard points.count > columns * 4, columns > 0 else { return points }
        let span = Double(max(1, toMs - fromMs))
        var out: [SeriesPoint] = []
        var column = Int.min
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
            let c = Int(Double(p.ms - fromMs) / span * Double(columns))
            if c != column { emit(); column = c }
            bucket.append(p)
        }
        emit()
        return out
    }

    /// Round times for the x axis: 4…8 ticks at a step of 1 s … 1 week.
    package func timeTicks() -> [Int64] {
        let span = toMs - fromMs
        let steps: [Int64] = [1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000, 600_000, 900_000, 1_800_000, 3_600_000, 7_200_000, 10_800_000, 21_600_000, 43_200_000, 86_400_000, 172_800_000, 604_800_000]
        let step = steps.first { span / $0 <= 5 } ?? 604_800_000
        var t = (fromMs / step + 1) * step
        var out: [Int64] = []
        while t < toMs, out.count < 12 { out.append(t); t += step }
        return out
    }

    package func utcLabel(_ ms: Int64) -> String {
        let iso = WebTime.iso(milliseconds: ms)   // 2026-11-29T20:16:13.123Z
        let parts = iso.split(separator: "T")
        let hm = String(parts.last?.prefix(5) ?? "")
        if toMs - fromMs < 900_000 { return String(parts.last?.prefix(8) ?? "") }
        return toMs - fromMs > 86_400_000 ? "\(parts.first?.suffix(5) ?? "") \(hm)" : hm
    }
}

/// 1-2-5 ticks covering lo…hi.
package func niceTicks(lo: Double, hi: Double, count: Int) -> [Double] {
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
