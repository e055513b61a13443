// DeviceLog: the whole-file check, like fsck (`fieldlog-device log check`).
import FieldlogCore

extension DeviceLog {
    // MARK: Check

    /// Verifies the whole file like fsck: SQLite integrity, record checksums and bodies,
    /// head/acked consistency, loss markers inside the head and not overlapping records or
    /// each other, and no unexplained gap above the acked pointer. Returns the problems found
    /// (empty: the log is sound).
    public func check() async throws -> [String] {
        let path = self.path
        return try await read { c in
            try c.readTransaction {
                var problems: [String] = []
                let integrity = try c.query("PRAGMA integrity_check").compactMap { row -> String? in
                    if case .text(let t) = row[0] { return t }; return nil
                }
                if integrity != ["ok"] { problems.append(contentsOf: integrity.prefix(20).map { "sqlite integrity: \($0)" }) }
                let state: (head: SequenceNumber, acked: SequenceNumber)
                do { state = try Self.readState(c, path: path) } catch {
                    problems.append("\(error)")
                    return problems
                }
                let markers: [LossMarker]
                do { markers = try Self.readMarkers(c, path: path, overlapping: nil) } catch {
                    problems.append("\(error)")
                    markers = []
                }
                for m in markers where m.range.last > state.head {
                    problems.append("loss marker \(m.range) lies beyond the head \(state.head)")
                }
                // Walk all records: order, checksums, bodies. Above the acked pointer every
                // sequence number must be a record or lie under exactly one loss marker.
                let statement = try c.prepare("SELECT seq, ts_ms, unsynced, body, crc FROM records ORDER BY seq")
                defer { statement.reset() }
                let acked = Int64(state.acked.rawValue), head = Int64(state.head.rawValue)
                var spans: [(first: Int64, last: Int64, what: String)] = markers.map {
                    (Int64($0.range.first.rawValue), Int64($0.range.last.rawValue), "loss marker \($0.range)")
                }
                var last: Int64 = 0
                var runFirst: Int64? = nil
                while try statement.step() {
                    let seq = statement.int64(at: 0), ts = statement.int64(at: 1)
                    let unsynced = statement.int64(at: 2) != 0, body = statement.bytes(at: 3), crc = statement.int64(at: 4)
                    if RecordCodec.checksum(seq: seq, timestampMs: ts, unsynced: unsynced, body: body) != UInt32(truncatingIfNeeded: crc) {
                        problems.append("record \(seq): checksum mismatch")
                    } else if let e = Result(catching: { try RecordCodec.decode(body) }).failureValue {
                        problems.append("record \(seq): undecodable body: \(e)")
                    }
                    if seq > acked {
                        if let f = runFirst, seq != last + 1 { spans.append((f, last, "records \(f)…\(last)")); runFirst = seq }
                        if runFirst == nil { runFirst = seq }
                    }
                    last = seq
                    if problems.count > 100 { problems.append("…stopping after 100 problems"); return problems }
                }
                if let f = runFirst { spans.append((f, last, "records \(f)…\(last)")) }
                if last > head { problems.append("record \(last) lies beyond the head \(state.head)") }
                spans.sort { $0.first < $1.first }
                var cursor = acked + 1
                var previous = "the acked pointer \(state.acked)"
                for span in spans where span.last > acked {
                    if span.first > cursor {
                        problems.append("records \(cursor)…\(span.first - 1) are missing with no loss marker (acked \(state.acked), head \(state.head))")
                    } else if span.first < cursor && span.first > acked {
                        problems.append("\(span.what) overlaps \(previous)")
                    }
                    cursor = max(cursor, span.last + 1)
                    previous = span.what
                }
                if cursor <= head {
                    problems.append("records \(cursor)…\(head) are missing with no loss marker (acked \(state.acked), head \(state.head))")
                }
                return problems
            }
        }
    }
}

extension Result {
    fileprivate var failureValue: Failure? {
        if case .failure(let e) = self { return e }
        return nil
    }
}
