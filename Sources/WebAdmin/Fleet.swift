// Fleet: every device's summary, for a fleet of 10,000 and more.
//
// Theory of operation: `FleetLoader` reads the whole fleet in one job on the connection with
// set-based queries (devices with their status; epochs; per (device, epoch) an aggregate of
// its `batch_ranges` that tells whether they tile 1…highest, and the rows of the epochs that do
// not; dead letters and seed readings per device) and derives the same numbers as the
// `Auditor` reading the ledger only (`checksRows: false`: gaps, missing records, records an
// ended epoch never delivered, last seen, silent), so the fleet page never disagrees with
// `fieldlog-backend audit` about the ledger; `WebAdminTests` checks the two side by side,
// overlapping ranges included. Rows missing behind the ledger (a pass over the readings) are
// the Audit and device pages' to show, as on main's fleet overview. The result is a `FleetSnapshot`;
// `FleetCache` keeps the last one: younger than `WebSettings.fleetCacheAge` it is served as it
// is; older (by at most `staleServedFor`) it is still served while one background load (in
// the cache's own service, `FleetCache.run`) replaces it; without one, a request waits for the
// load, which concurrent requests share.
// So a page view costs a filter, a sort and a slice in memory. `FleetQuery` is that filter, sort and slice:
// pure, parsed from the request (a 400 that names a wrong parameter), and the same for the
// page, the JSON API and the live updates.
import Audit
import BackendStore
import FieldlogCore
import Foundation
import Hummingbird
import MariaDB
import ServiceLifecycle

/// One device as the fleet overview shows it.
package struct FleetDevice: Codable, Sendable, Hashable {
    package var device: String
    package var protocolName: String
    /// "online", "offline" or nil (no status received yet), from the device's retained status.
    package var state: String?
    package var measuring: Bool?
    package var epoch: String?
    package var head: UInt64?
    package var acked: UInt64?
    /// head − acked from the last status: records the device still holds unsent or unacked.
    package var backlog: UInt64?
    package var storedThrough: UInt64?
    package var gapCount: Int
    package var missingRecords: UInt64
    package var deadLetters: Int
    package var lastSeenAt: String?
    package var statusAt: String?
    package var silent: Bool
    /// MQTT bytes of the device's latest reported day (its data budget, spec §3.4), if any.
    package var dataUsage: DataUsageRow? = nil
}

/// One device's MQTT traffic on one (UTC) day, as its status messages reported it.
package struct DataUsageRow: Codable, Sendable, Hashable {
    package var day: String
    package var sentBytes: UInt64
    package var receivedBytes: UInt64
}

/// The whole fleet at one moment, with its counts.
package struct FleetSnapshot: Sendable {
    package var devices: [FleetDevice]
    package var loadedAt: ContinuousClock.Instant
    /// The same moment on the wall clock, for "as of" on the page.
    package var loadedAtMs: Int64
    package var counts: FleetCounts

    package init(devices: [FleetDevice], loadedAt: ContinuousClock.Instant, loadedAtMs: Int64 = WebTime.nowMilliseconds()) {
        self.devices = devices
        self.loadedAt = loadedAt
        self.loadedAtMs = loadedAtMs
        counts = FleetCounts(devices)
    }
}

/// How many devices each filter selects (the tiles of the fleet page).
package struct FleetCounts: Codable, Sendable, Hashable {
    package var all = 0, online = 0, offline = 0, silent = 0, gaps = 0, backlog = 0, deadLetters = 0
    package var recordsWaiting: UInt64 = 0

    package init(_ devices: [FleetDevice]) {
        all = devices.count
        for d in devices {
            for f in FleetFilter.allCases where f.matches(d) {
                switch f {
                case .online: online += 1
                case .offline: offline += 1
                case .silent: silent += 1
                case .gaps: gaps += 1
                case .backlog: backlog += 1
                case .deadLetters: deadLetters += 1
                }
            }
            recordsWaiting += d.backlog ?? 0
        }
    }

    package func count(_ f: FleetFilter?) -> Int {
        switch f {
        case nil: return all
        case .online?: return online
        case .offline?: return offline
        case .silent?: return silent
        case .gaps?: return gaps
        case .backlog?: return backlog
        case .deadLetters?: return deadLetters
        }
    }
}

/// The fleet filters.
package enum FleetFilter: String, Sendable, CaseIterable {
    case online, offline, silent, gaps, backlog
    case deadLetters = "dead-letters"

    package func matches(_ d: FleetDevice) -> Bool {
        switch self {
        case .online: return d.state == "online"
        case .offline: return d.state == "offline"
        case .silent: return d.silent
        case .gaps: return d.missingRecords > 0
        case .backlog: return (d.backlog ?? 0) > 0
        case .deadLetters: return d.deadLetters > 0
        }
    }

    package var title: String {
        switch self {
        case .online: return "online"
        case .offline: return "offline"
        case .silent: return "silent"
        case .gaps: return "with gaps"
        case .backlog: return "with backlog"
        case .deadLetters: return "with dead letters"
        }
    }
}

/// Search, filter, sort and page of the fleet (`?q=&filter=&sort=&dir=&page=&pageSize=`).
package struct FleetQuery: Sendable, Hashable {
    package var search: String?
    package var filter: FleetFilter?
    package var sort: FleetSort = .device
    package var descending = false
    package var page = 0
    package var pageSize = 50

    package static let maxPageSize = 1000

    package enum FleetSort: String, Sendable, CaseIterable {
        case device, state, lastSeen, epoch, storedThrough, backlog, gaps, deadLetters
    }

    /// Parses the parameters; a wrong one is a 400 that says what is allowed.
    package init(parameters p: (String) -> String?, defaultPageSize: Int = 50) throws {
        if let q = p("q") {
            guard q.utf8.count <= 64 else { throw HTTPError(.badRequest, message: "q (device id search) has at most 64 characters") }
            search = q
        }
        if let f = p("filter") {
            guard let v = FleetFilter(rawValue: f) else {
                throw HTTPError(.badRequest, message: "filter must be one of \(FleetFilter.allCases.map(\.rawValue).joined(separator: ", ")), got \"\(f)\"")
            }
            filter = v
        }
        if let s = p("sort") {
            guard let v = FleetSort(rawValue: s) else {
                throw HTTPError(.badRequest, message: "sort must be one of \(FleetSort.allCases.map(\.rawValue).joined(separator: ", ")), got \"\(s)\"")
            }
            sort = v
        }
        if let d = p("dir") {
            guard d == "asc" || d == "desc" else { throw HTTPError(.badRequest, message: "dir must be asc or desc, got \"\(d)\"") }
            descending = d == "desc"
        }
        page = try Self.int(p("page"), "page", default: 0, range: 0...1_000_000)
        pageSize = try Self.int(p("pageSize"), "pageSize", default: defaultPageSize, range: 1...Self.maxPageSize)
    }

    package init() {}

    package static func int(_ text: String?, _ name: String, default value: Int, range: ClosedRange<Int>) throws -> Int {
        guard let t = text else { return value }
        guard let v = Int(t), range.contains(v) else {
            throw HTTPError(.badRequest, message: "\(name) must be a whole number \(range.lowerBound)…\(range.upperBound), got \"\(t)\"")
        }
        return v
    }

    /// The parameters that differ from the defaults, for links.
    package var parameters: [(String, String?)] {
        [("q", search), ("filter", filter?.rawValue), ("sort", sort == .device ? nil : sort.rawValue), ("dir", descending ? "desc" : nil),
         ("page", page == 0 ? nil : String(page)), ("pageSize", pageSize == 50 ? nil : String(pageSize))]
    }

    /// One page of the matching devices, and how many match.
    package func apply(_ devices: [FleetDevice]) -> (page: [FleetDevice], total: Int) {
        let needle = search?.lowercased()
        var matching = devices.filter { d in
            (filter?.matches(d) ?? true) && (needle.map { d.device.lowercased().contains($0) } ?? true)
        }
        matching.sort(by: less)
        if descending { matching.reverse() }
        let start = min(matching.count, page * pageSize)
        return (Array(matching[start..<min(matching.count, start + pageSize)]), matching.count)
    }

    private func less(_ a: FleetDevice, _ b: FleetDevice) -> Bool {
        switch sort {
        case .state: return (a.state ?? "~", a.device) < (b.state ?? "~", b.device)
        case .lastSeen: return (a.lastSeenAt ?? "", a.device) < (b.lastSeenAt ?? "", b.device)
        case .epoch: return (a.epoch ?? "", a.device) < (b.epoch ?? "", b.device)
        case .storedThrough: return (a.storedThrough ?? 0, a.device) < (b.storedThrough ?? 0, b.device)
        case .backlog: return (a.backlog ?? 0, a.device) < (b.backlog ?? 0, b.device)
        case .gaps: return (a.missingRecords, a.device) < (b.missingRecords, b.device)
        case .deadLetters: return (a.deadLetters, a.device) < (b.deadLetters, b.device)
        case .device: return a.device < b.device
        }
    }
}

/// Keeps the last fleet snapshot; concurrent requests share one load.
///
/// Structured: a load runs in the task of the request that needed it (the others wait for its
/// result), or, for a snapshot served stale while a fresh one loads, in `run()`, the cache's
/// refresher (a service of the web program). Without a running refresher a stale snapshot is
/// not served: the request loads.
package actor FleetCache: Service {
    package typealias Load = @Sendable () async throws -> FleetSnapshot

    private var current: FleetSnapshot?
    /// A load is running (in a request or in the refresher) or queued for the refresher.
    private var loading = false
    /// A load is running (not just queued).
    private var loadRunning = false
    /// Requests waiting for the running load.
    private var waiters: [CheckedContinuation<FleetSnapshot, any Error>] = []
    /// The refresher's queue, while it runs.
    private var refresher: AsyncStream<Load>.Continuation?

    /// How long past `maxAge` a snapshot is still served while a new one loads.
    package static let staleServedFor: Duration = .seconds(60)

    package init() {}

    /// The snapshot: as it is when younger than `maxAge`; as it is while the refresher replaces
    /// it when younger than `maxAge` + `staleServedFor` (and `maxAge` > 0); else after a load.
    package func snapshot(maxAge: Duration, load: @escaping Load) async throws -> FleetSnapshot {
        if let c = current {
            let age = ContinuousClock.now - c.loadedAt
            if age <= maxAge { return c }
            if maxAge > .zero, age <= maxAge + Self.staleServedFor, refreshInBackground(load) { return c }
        }
        while true {
            if !loading { return try await runLoad(load) }
            do {
                return try await withCheckedThrowingContinuation { waiters.append($0) }
            } catch is LoadAbandoned {
                continue  // the task that ran the load was cancelled, not this one: load here
            }
        }
    }

    /// Runs the background loads of stale snapshots until graceful shutdown.
    package func run() async {
        let (loads, queue) = AsyncStream.makeStream(of: Load.self, bufferingPolicy: .bufferingNewest(1))
        refresher = queue
        await cancelWhenGracefulShutdown {
            for await load in loads { _ = try? await self.runLoad(load) }
        }
        refresher = nil
        // A load queued but never run: whoever waits for it loads itself.
        if loading && !loadRunning { finish(.failure(LoadAbandoned())) }
    }

    /// Queues a background load unless one is on its way; false without a refresher.
    private func refreshInBackground(_ load: @escaping Load) -> Bool {
        guard let refresher else { return false }
        if loading { return true }
        guard case .enqueued = refresher.yield(load) else { return false }
        loading = true
        return true
    }

    /// Runs one load and hands its result to every request that waits for it.
    private func runLoad(_ load: Load) async throws -> FleetSnapshot {
        loading = true
        loadRunning = true
        let result: Result<FleetSnapshot, any Error>
        do {
            result = .success(try await load())
        } catch is CancellationError {
            result = .failure(LoadAbandoned())
        } catch {
            result = .failure(error)
        }
        loadRunning = false
        finish(result)
        switch result {
        case .success(let s): return s
        case .failure(let e): throw e is LoadAbandoned ? CancellationError() : e
        }
    }

    /// Ends the load: keeps a newer snapshot (a failed load leaves the last one) and answers the waiters.
    private func finish(_ result: Result<FleetSnapshot, any Error>) {
        if case .success(let s) = result, current.map({ s.loadedAt > $0.loadedAt }) ?? true { current = s }
        loading = false
        let waiting = waiters
        waiters = []
        for w in waiting { w.resume(with: result) }
    }

    /// The load a request waited for was given up (its task was cancelled).
    private struct LoadAbandoned: Error {}
}

extension WebStore {
    /// The fleet's snapshot (cached, see `FleetCache`).
    package func fleetSnapshot() async throws -> FleetSnapshot {
        try await fleetCache.snapshot(maxAge: settings.fleetCacheAge) { [self] in
            FleetSnapshot(devices: try await self.fleet(), loadedAt: .now)
        }
    }

    /// Every device's summary (or one device's), read now; the whole fleet on a connection of
    /// its own (`fleetDatabase`), so its read does not hold up the requests of the pages.
    package func fleet(device: DeviceID? = nil) async throws -> [FleetDevice] {
        let silentAfterMs = settings.silentAfter.inMilliseconds
        return try await run("fleet", on: device == nil ? fleetDatabase : database) { s in
            try await s.connection.withSession { t in try FleetLoader(session: t, device: device, silentAfterMs: silentAfterMs).load() }
        }
    }
}

/// Reads the fleet in set-based queries; see the theory of operation.
package struct FleetLoader {
    package let session: MariaDBSession
    package let device: DeviceID?
    package let silentAfterMs: Int64

    package struct Key: Hashable { var device: String; var epoch: UInt64 }
    /// What the rows of one (device, epoch) cover: the numbers `Coverage` derives.
    package struct RangeSummary { var gaps: Int; var missing: UInt64; var storedThrough: UInt64; var highest: UInt64; var lastStoredAt: String? }

    package func load(nowMs: Int64 = WebTime.nowMilliseconds()) throws -> [FleetDevice] {
        let filter = device == nil ? "" : " WHERE device_id = ?"
        let binds: [MariaDBValue] = device.map { [.string($0.rawValue)] } ?? []
        let devices = try session.execute("""
            SELECT device_id, protocol, status_state, status_measuring, status_epoch, status_head, status_acked, status_received_at
              FROM devices\(filter) ORDER BY device_id
            """, binds).rows
        let epochRows = try session.execute("SELECT device_id, epoch, reported_head FROM epochs\(filter) ORDER BY device_id, first_seen_at, epoch", binds).rows
        // Per (device, epoch), in one aggregate pass in key order: the newest row, the highest
        // number, and whether the rows tile 1…highest exactly — each row starting right after
        // another ends, none overlapping. That holds iff the multiset of first numbers equals
        // {1} ∪ {last + 1} minus {highest + 1}; the query compares the first two power sums of
        // the two sides, exactly (DECIMAL); the counts agree by construction. Such an epoch is
        // taken to have no gap and to be stored through its highest number (the common case:
        // batches one after the other and the compacted prefix). Two different multisets with
        // equal first and second power sums would pass too: a theoretical hole for an epoch
        // with an overlap and a gap just so, that the exact audit of the device page does not
        // share (docs/web-admin.md). Only the rows of the other epochs are read and merged here.
        // (A window function over the rows was measured at 24 s for 650,000 rows on MariaDB
        // 11; this aggregate takes about 1.5 s; docs/web-admin.md.)
        let summaries = try session.execute("""
            SELECT device_id, epoch, MAX(last_seq), MAX(stored_at),
                   MIN(first_seq) = 1 AND SUM(first_seq) = SUM(last_seq) - MAX(last_seq) + COUNT(*)
                   AND SUM(CAST(first_seq AS DECIMAL(65)) * first_seq)
                       = 1 + SUM(CAST(last_seq + 1 AS DECIMAL(65)) * (last_seq + 1)) - CAST(MAX(last_seq) + 1 AS DECIMAL(65)) * (MAX(last_seq) + 1)
              FROM batch_ranges\(filter) GROUP BY device_id, epoch
            """, binds).rows
        var ranges: [Key: RangeSummary] = [:]
        var irregular: [Key] = []
        for r in summaries {
            guard let d = r[0].string, let e = r[1].uint64, let highest = r[2].uint64 else { continue }
            let k = Key(device: d, epoch: e)
            ranges[k] = RangeSummary(gaps: 0, missing: 0, storedThrough: highest, highest: highest, lastStoredAt: r[3].string)
            if r[4].int64 != 1 { irregular.append(k) }
        }
        var start = 0
        while start < irregular.count {
            let chunk = irregular[start..<min(start + 500, irregular.count)]
            start += chunk.count
            let keys = Array(repeating: "(?, ?)", count: chunk.count).joined(separator: ", ")
            let rows = try session.execute("SELECT device_id, epoch, first_seq, last_seq FROM batch_ranges WHERE (device_id, epoch) IN (\(keys))",
                                           chunk.flatMap { [MariaDBValue.string($0.device), .uint($0.epoch)] }).rows
            var coverage: [Key: Coverage] = [:]
            for r in rows {
                guard let d = r[0].string, let e = r[1].uint64, let f = r[2].uint64, let l = r[3].uint64, f >= 1, f <= l else { continue }
                coverage[Key(device: d, epoch: e), default: Coverage()].insert(SequenceRange(checked: SequenceNumber(f), SequenceNumber(l)))
            }
            for (k, c) in coverage {
                let gaps = c.gaps()
                ranges[k]?.gaps = gaps.count
                ranges[k]?.missing = gaps.reduce(0) { $0 + ($1.last.rawValue - $1.first.rawValue + 1) }
                ranges[k]?.storedThrough = c.contiguousThrough.rawValue
            }
        }
        let dead = try session.execute(
            "SELECT device_id, COUNT(*) FROM dead_letters WHERE device_id IS NOT NULL\(device == nil ? "" : " AND device_id = ?") GROUP BY device_id", binds).rows
        let legacy = try session.execute("SELECT device_id, MAX(received_at) FROM legacy_readings\(filter) GROUP BY device_id", binds).rows
        let usageRows = try session.execute("""
            SELECT u.device_id, DATE_FORMAT(u.day, '%Y-%m-%d'), u.sent_bytes, u.received_bytes FROM device_data_usage u
              JOIN (SELECT device_id, MAX(day) AS day FROM device_data_usage\(filter) GROUP BY device_id) l
                ON l.device_id = u.device_id AND l.day = u.day
            """, binds).rows
        var usage: [String: DataUsageRow] = [:]
        for r in usageRows {
            if let d = r[0].string, let day = r[1].string { usage[d] = DataUsageRow(day: day, sentBytes: r[2].uint64 ?? 0, receivedBytes: r[3].uint64 ?? 0) }
        }

        var epochs: [String: [(epoch: UInt64, reportedHead: UInt64)]] = [:]
        for r in epochRows { if let d = r[0].string, let e = r[1].uint64 { epochs[d, default: []].append((e, r[2].uint64 ?? 0)) } }
        var deadCount: [String: Int] = [:]
        for r in dead { if let d = r[0].string { deadCount[d] = Int(r[1].int64 ?? 0) } }
        var legacySeen: [String: String] = [:]
        for r in legacy { if let d = r[0].string, let t = r[1].string { legacySeen[d] = t } }

        let silentBefore = SQLTime.datetime(unixMilliseconds: nowMs - silentAfterMs)!
        return devices.compactMap { row in
            guard let id = row[0].string else { return nil }
            let statusEpoch = row[4].uint64
            let known = epochs[id] ?? []
            let current = statusEpoch ?? known.last?.epoch
            var lastSeen = row[7].string
            var gapCount = 0
            var missing: UInt64 = 0
            var storedThrough: UInt64?
            for (epoch, reportedHead) in known {
                let summary = ranges[Key(device: id, epoch: epoch)]
                gapCount += summary?.gaps ?? 0
                missing += summary?.missing ?? 0
                let highest = summary?.highest ?? 0
                // An epoch the device has left: what it reported above the highest stored never arrives.
                if current != nil, current != epoch, reportedHead > highest {
                    gapCount += 1
                    missing += reportedHead - highest
                }
                if epoch == current { storedThrough = summary?.storedThrough ?? 0 }
                if let t = summary?.lastStoredAt, t > (lastSeen ?? "") { lastSeen = t }
            }
            if let t = legacySeen[id], t > (lastSeen ?? "") { lastSeen = t }
            let head = row[5].uint64, acked = row[6].uint64
            return FleetDevice(
                device: id, protocolName: row[1].string ?? "fieldlog", state: row[2].string, measuring: row[3].int64.map { $0 != 0 },
                epoch: current.map { Epoch($0).hex }, head: head, acked: acked,
                backlog: head.flatMap { h in acked.map { h >= $0 ? h - $0 : 0 } },
                storedThrough: storedThrough, gapCount: gapCount, missingRecords: missing, deadLetters: deadCount[id] ?? 0,
                lastSeenAt: WebTime.iso(sql: lastSeen), statusAt: WebTime.iso(sql: row[7].string), silent: (lastSeen ?? "") < silentBefore,
                dataUsage: usage[id])
        }
    }
}
