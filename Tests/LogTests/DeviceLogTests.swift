// Unit tests of DeviceLog against real SQLite files in temporary directories.
import CSQLite
import FieldlogCore
import Threading
@testable @_spi(Testing) import Log
import TestSupport
import XCTest

/// Raw SQL on a file, bypassing DeviceLog (to build bad files and to damage good ones).
func rawSQL(_ path: String, _ sql: String) throws {
    var db: OpaquePointer?
    guard sqlite3_open(path, &db) == SQLITE_OK else { throw SQLFailed(description: "open \(path)") }
    defer { sqlite3_close(db) }
    var err: UnsafeMutablePointer<CChar>?
    if sqlite3_exec(db, sql, nil, nil, &err) != SQLITE_OK {
        let m = err.map { String(cString: $0) } ?? "?"
        sqlite3_free(err)
        throw SQLFailed(description: "\(sql): \(m)")
    }
}

struct SQLFailed: Error { let description: String }

func reading(_ n: Int) -> SensorValues {
    try! SensorValues(["n": .number(Double(n)), "temp": .number(21.25), "label": .text("r\(n)")])
}

final class DeviceLogTests: XCTestCase {
    let device = try! DeviceID("dev-1")
    var dir: TemporaryDirectory!

    override func setUp() async throws { dir = try TemporaryDirectory("fieldlog-log") }
    override func tearDown() async throws { dir.remove() }

    func testCreateAppendReopenKeepsEpochAndRecords() async throws {
        let path = dir.file("a.db")
        let log = try await DeviceLog.open(path: path, device: device)
        XCTAssertEqual(log.deviceID, device)
        let epoch = log.epoch
        var seqs: [SequenceNumber] = []
        let ts = DeviceTimestamp(unixMilliseconds: 1_700_000_000_123, clockUnsynchronized: true)
        for i in 1...5 { seqs.append(try await log.append(reading(i), timestamp: ts, missing: i == 3 ? ["humidity"] : [])) }
        XCTAssertEqual(seqs.map(\.rawValue), [1, 2, 3, 4, 5])
        await log.close()
        do {
            _ = try await log.append(reading(9))
            XCTFail("append after close must throw")
        } catch LogError.closed {}

        let again = try await DeviceLog.open(path: path, device: nil)
        XCTAssertEqual(again.epoch, epoch)
        XCTAssertEqual(again.deviceID, device)
        do { let value = try await again.head(); XCTAssertEqual(value, SequenceNumber(5)) }
        let records = try await again.records(from: SequenceNumber(1), limit: 10)
        XCTAssertEqual(records.count, 5)
        XCTAssertEqual(records[2], LogRecord(sequence: SequenceNumber(3), timestamp: ts, values: reading(3), missingSensors: ["humidity"]))
        XCTAssertEqual(records[0].values["label"], .text("r1"))
        do { let value = try await again.check(); XCTAssertEqual(value, []) }
        await again.close()
    }

    func testValuesRoundTripExactly() async throws {
        let log = try await DeviceLog.open(path: dir.file("v.db"), device: device)
        let values = try SensorValues(["int": .number(-42), "big": .number(9_007_199_254_740_992), "frac": .number(0.1),
                                       "neg0": .number(-0.0), "tiny": .number(Double.leastNonzeroMagnitude), "text": .text("héllo \"quoted\""),
                                       "empty": .text("")])
        let seq = try await log.append(values)
        let back = try await log.records(from: seq, limit: 1)[0].values
        XCTAssertEqual(back, values)
        if case .number(let d)? = back["neg0"] { XCTAssertEqual(d.sign, .minus) } else { XCTFail() }
        await log.close()
    }

    func testConcurrentAppendsAreGroupCommittedWithContiguousSeqs() async throws {
        let log = try await DeviceLog.open(path: dir.file("c.db"), device: device)
        let seqs = try await withThrowingTaskGroup(of: (Int, SequenceNumber).self) { group in
            for i in 0..<500 { group.addTask { (i, try await log.append(reading(i))) } }
            var all: [(Int, SequenceNumber)] = []
            for try await r in group { all.append(r) }
            return all
        }
        XCTAssertEqual(Set(seqs.map(\.1.rawValue)), Set(1...500))
        let records = try await log.records(from: SequenceNumber(1), limit: 1000)
        for (i, seq) in seqs { XCTAssertEqual(records[Int(seq.rawValue) - 1].values, reading(i)) }
        do { let value = try await log.head(); XCTAssertEqual(value, SequenceNumber(500)) }
        await log.close()
    }

    func testRecordsBatchesByLimitAndBytes() async throws {
        let log = try await DeviceLog.open(path: dir.file("b.db"), device: device)
        for i in 1...20 { _ = try await log.append(reading(i)) }
        do { let value = try await log.records(from: SequenceNumber(5), limit: 3).map(\.sequence.rawValue); XCTAssertEqual(value, [5, 6, 7]) }
        do { let value = try await log.records(from: SequenceNumber(19), limit: 10).map(\.sequence.rawValue); XCTAssertEqual(value, [19, 20]) }
        do { let value = try await log.records(from: SequenceNumber(21), limit: 10); XCTAssertEqual(value, []) }
        // A tiny byte budget still yields one record, so the sender always makes progress.
        do { let value = try await log.records(from: SequenceNumber(1), limit: 10, maxBytes: 1).count; XCTAssertEqual(value, 1) }
        let bodySize = RecordCodec.encode(reading(10), missing: []).count
        do { let value = try await log.records(from: SequenceNumber(10), limit: 10, maxBytes: bodySize * 3).count; XCTAssertEqual(value, 3) }
        await log.close()
    }

    func testAckIsForwardOnlyBoundedByHeadAndDurable() async throws {
        let path = dir.file("ack.db")
        let log = try await DeviceLog.open(path: path, device: device)
        for i in 1...10 { _ = try await log.append(reading(i)) }
        do { let value = try await log.markAcked(through: SequenceNumber(4)); XCTAssertEqual(value, SequenceNumber(4)) }
        do { let value = try await log.markAcked(through: SequenceNumber(2)); XCTAssertEqual(value, SequenceNumber(4), "an older ack is ignored") }
        do {
            try await log.markAcked(through: SequenceNumber(11))
            XCTFail("ack beyond head must throw")
        } catch LogError.ackBeyondHead(_, let ack, let head) {
            XCTAssertEqual(ack, SequenceNumber(11))
            XCTAssertEqual(head, SequenceNumber(10))
        }
        await log.close()
        let again = try await DeviceLog.open(path: path, device: device)
        do { let value = try await again.ackedThrough(); XCTAssertEqual(value, SequenceNumber(4)) }
        await again.close()
    }

    func testRetentionTrimsOnlyAcknowledgedRecords() async throws {
        var config = LogConfiguration()
        config.retentionMaxCount = 3
        config.retentionMaxAge = nil
        let log = try await DeviceLog.open(path: dir.file("r.db"), device: device, configuration: config)
        for i in 1...20 { _ = try await log.append(reading(i)) }
        try await log.markAcked(through: SequenceNumber(10))
        var s = try await log.status()
        XCTAssertEqual(s.oldestRetained, SequenceNumber(8), "3 acked records kept: 8, 9, 10")
        XCTAssertEqual(s.retained, 13)
        XCTAssertEqual(s.backlog, 10)
        do { let value = try await log.check(); XCTAssertEqual(value, []) }

        // Age: old acked records go, unacked old records stay.
        var aged = LogConfiguration()
        aged.retentionMaxCount = nil
        aged.retentionMaxAge = .seconds(60)
        let log2 = try await DeviceLog.open(path: dir.file("r2.db"), device: device, configuration: aged)
        let old = DeviceTimestamp(unixMilliseconds: 1_000_000)
        for i in 1...6 { _ = try await log2.append(reading(i), timestamp: old) }
        try await log2.markAcked(through: SequenceNumber(4))
        s = try await log2.status()
        XCTAssertEqual(s.oldestRetained, SequenceNumber(5))
        XCTAssertEqual(s.retained, 2)
        await log.close()
        await log2.close()
    }

    func testQuotaStopFailsAppendsClearlyAndKeepsData() async throws {
        var config = LogConfiguration()
        config.maxBytes = 64 * 1024
        config.quotaPolicy = .stop
        config.durability = .normal
        let log = try await DeviceLog.open(path: dir.file("q.db"), device: device, configuration: config)
        var appended = 0
        var quotaError: LogError?
        for i in 1...5000 {
            do { _ = try await log.append(reading(i)); appended += 1 } catch let e as LogError {
                quotaError = e
                break
            }
        }
        guard case .quotaExceeded(let path, _, let max)? = quotaError else { return XCTFail("expected quotaExceeded, got \(String(describing: quotaError))") }
        XCTAssertEqual(path, dir.file("q.db"))
        XCTAssertEqual(max, 64 * 1024)
        XCTAssertTrue("\(quotaError!)".contains("disk quota exceeded"))
        do { let value = try await log.head(); XCTAssertEqual(value, SequenceNumber(UInt64(appended))) }
        do { let value = try await log.status().retained; XCTAssertEqual(value, appended, "stop never drops unacknowledged records") }
        // Acking frees room: appends resume.
        try await log.markAcked(through: SequenceNumber(UInt64(appended)))
        _ = try await log.append(reading(0))
        do { let value = try await log.check(); XCTAssertEqual(value, []) }
        await log.close()
    }

    func testQuotaDropOldestRecordsExactLossMarkers() async throws {
        var config = LogConfiguration()
        config.maxBytes = 64 * 1024
        config.quotaPolicy = .dropOldest
        config.durability = .normal   // fsyncs are not what this test is about
        let log = try await DeviceLog.open(path: dir.file("d.db"), device: device, configuration: config)
        // Some acked records too: they go first, and are never reported as lost.
        for i in 1...100 { _ = try await log.append(reading(i)) }
        try await log.markAcked(through: SequenceNumber(50))
        for i in 101...3000 { _ = try await log.append(reading(i)) }
        do { let value = try await log.head(); XCTAssertEqual(value, SequenceNumber(3000)) }
        let markers = try await log.lossMarkers()
        XCTAssertFalse(markers.isEmpty)
        XCTAssertEqual(markers.first?.range.first, SequenceNumber(51), "acked records are trimmed, not lost")
        XCTAssertTrue(markers.allSatisfy { $0.reason == .diskQuota })
        let status = try await log.status()
        // Every seq is a record or under exactly one marker.
        let lost = markers.reduce(UInt64(0)) { $0 + $1.range.count }
        XCTAssertEqual(lost + UInt64(status.retained), 3000 - 50)
        XCTAssertEqual(markers.last!.range.last.next, status.oldestRetained)
        do { let value = try await log.check(); XCTAssertEqual(value, []) }
        // entries(in:) interleaves markers and records in order.
        let entries = try await log.entries(in: SequenceRange(checked: SequenceNumber(51), SequenceNumber(3000)), limit: 5)
        guard case .loss(let m) = entries.first else { return XCTFail("first entry should be a loss marker") }
        XCTAssertEqual(m, markers[0])
        if case .record(let r) = entries.last { XCTAssertEqual(r.sequence, status.oldestRetained?.advanced(by: 4)) } else { XCTFail() }
        await log.close()
    }

    func testRefusesFilesThatAreNotFieldlogLogsWithoutTouchingThem() async throws {
        // Not SQLite at all.
        let junk = dir.file("junk.db")
        let junkBytes = Data((0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        try junkBytes.write(to: URL(fileURLWithPath: junk))
        do {
            _ = try await DeviceLog.open(path: junk, device: device)
            XCTFail("junk must be refused")
        } catch LogError.notAFieldlogLog(let path, _) {
            XCTAssertEqual(path, junk)
        }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: junk)), junkBytes)

        // Another application's SQLite database.
        let other = dir.file("other.db")
        try rawSQL(other, "CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        let before = try Data(contentsOf: URL(fileURLWithPath: other))
        do {
            _ = try await DeviceLog.open(path: other, device: device)
            XCTFail("foreign database must be refused")
        } catch let e as LogError {
            guard case .notAFieldlogLog = e else { return XCTFail("\(e)") }
            XCTAssertTrue(e.description.contains(other), e.description)
        }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: other)), before)

        // Missing file without a device id.
        do {
            _ = try await DeviceLog.open(path: dir.file("none.db"), device: nil)
            XCTFail("missing must throw")
        } catch LogError.missing {}
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.file("none.db")))
    }

    func testWrongDeviceAndSchemaVersionAreRefused() async throws {
        let path = dir.file("w.db")
        let log = try await DeviceLog.open(path: path, device: device)
        _ = try await log.append(reading(1))
        await log.close()
        do {
            _ = try await DeviceLog.open(path: path, device: try DeviceID("dev-2"))
            XCTFail("wrong device must throw")
        } catch LogError.wrongDevice(_, let expected, let found) {
            XCTAssertEqual(expected.rawValue, "dev-2")
            XCTAssertEqual(found, "dev-1")
        }
        try rawSQL(path, "PRAGMA user_version = 7")
        do {
            _ = try await DeviceLog.open(path: path, device: device)
            XCTFail("unknown schema must throw")
        } catch LogError.unsupportedSchema(_, let found, let supported) {
            XCTAssertEqual(found, 7)
            XCTAssertEqual(supported, DeviceLog.schemaVersion)
        }
    }

    func testCheckReportsDamage() async throws {
        let path = dir.file("damage.db")
        let log = try await DeviceLog.open(path: path, device: device)
        for i in 1...10 { _ = try await log.append(reading(i)) }
        try await log.markAcked(through: SequenceNumber(2))
        await log.close()
        try rawSQL(path, "DELETE FROM records WHERE seq IN (5, 6); UPDATE records SET ts_ms = ts_ms + 1 WHERE seq = 8;")
        let again = try await DeviceLog.open(path: path, device: nil)
        let problems = try await again.check()
        XCTAssertTrue(problems.contains { $0.contains("records 5…6 are missing with no loss marker") }, "\(problems)")
        XCTAssertTrue(problems.contains { $0.contains("record 8: checksum mismatch") }, "\(problems)")
        do {
            _ = try await again.records(from: SequenceNumber(7), limit: 5)
            XCTFail("reading a damaged record must throw")
        } catch LogError.corrupt(_, let detail) {
            XCTAssertTrue(detail.contains("record 8"), detail)
        }
        await again.close()
    }

    /// The stored checksum is part of the file format: CRC-32 (IEEE) over the sequence number
    /// and timestamp (8 bytes little-endian each), the unsynchronised flag and the body.
    /// Checked against a plain bitwise CRC-32, itself checked against the standard check value.
    func testRecordChecksumIsCRC32OfTheDocumentedBytes() {
        func bitwiseCRC32(_ bytes: [UInt8]) -> UInt32 {
            var crc: UInt32 = 0xFFFF_FFFF
            for b in bytes {
                crc ^= UInt32(b)
                for _ in 0..<8 { crc = (crc & 1) != 0 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
            }
            return ~crc
        }
        XCTAssertEqual(bitwiseCRC32(Array("123456789".utf8)), 0xCBF4_3926)
        func littleEndian(_ v: Int64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
        var rng = SystemRandomNumberGenerator()
        let edges: [Int64] = [0, 1, 255, 256, Int64.max, -1, Int64.min]
        for i in 0..<500 {
            let seq = i < edges.count ? edges[i] : Int64.random(in: 1...Int64.max, using: &rng)
            let ts = i < edges.count ? edges[edges.count - 1 - i] : Int64.random(in: 0...4_000_000_000_000, using: &rng)
            let unsynced = Bool.random(using: &rng)
            let body = (0..<Int.random(in: 0...300, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let expected = bitwiseCRC32(littleEndian(seq) + littleEndian(ts) + [unsynced ? 1 : 0] + body)
            XCTAssertEqual(RecordEncoding.checksum(seq: seq, timestampMs: ts, unsynced: unsynced, body: body), expected,
                           "seq \(seq) ts \(ts) unsynced \(unsynced) body \(body.count) bytes")
        }
    }

    func testTwoConnectionsOnOneFileShareHeadAndAcks() async throws {
        let path = dir.file("two.db")
        let writer = try await DeviceLog.open(path: path, device: device)
        let reader = try await DeviceLog.open(path: path, device: nil)
        XCTAssertEqual(writer.epoch, reader.epoch)
        async let appends: Void = {
            for i in 1...200 { _ = try await writer.append(reading(i)) }
        }()
        var acked = SequenceNumber.zero
        while acked < SequenceNumber(200) {
            let batch = try await reader.records(from: acked.next, limit: 17)
            let head = try await reader.head()
            if let last = batch.last {
                XCTAssertEqual(batch.first?.sequence, acked.next)
                XCTAssertLessThanOrEqual(last.sequence, head)
                acked = try await reader.markAcked(through: last.sequence)
            } else {
                try await Task.sleep(for: .milliseconds(1))
            }
        }
        try await appends
        do { let value = try await writer.ackedThrough(); XCTAssertEqual(value, SequenceNumber(200)) }
        do { let value = try await writer.check(); XCTAssertEqual(value, []) }
        await writer.close()
        await reader.close()
    }

    func testCloseCommitsQueuedAppendsAndRefusesLaterOnes() async throws {
        let log = try await DeviceLog.open(path: dir.file("close.db"), device: device)
        let outcomes = await withTaskGroup(of: String.self) { group in
            for i in 0..<200 {
                group.addTask {
                    do { _ = try await log.append(reading(i)); return "ok" } catch LogError.closed { return "closed" } catch { return "\(error)" }
                }
            }
            group.addTask { await log.close(); return "close" }
            var all: [String] = []
            for await o in group { all.append(o) }
            return all
        }
        XCTAssertTrue(outcomes.allSatisfy { ["ok", "closed", "close"].contains($0) }, "\(Set(outcomes))")
        let okCount = outcomes.filter { $0 == "ok" }.count
        let again = try await DeviceLog.open(path: dir.file("close.db"), device: device)
        let head = try await again.head()
        XCTAssertEqual(head, SequenceNumber(UInt64(okCount)), "every append that returned is in the log, nothing else")
        await again.close()
    }

    /// Appends hand over to the group commit two ways (tasks on the log's own executor, tasks on
    /// Swift's pool) while a second `DeviceLog` on the same file appends too and a reader on the
    /// log's executor reads and acknowledges: every sequence number is given once, in order,
    /// to exactly the reading its caller was told.
    func testAppendersOnTheLogExecutorThePoolAndASecondConnectionShareOneHistory() async throws {
        let path = dir.file("mixed.db")
        let log = try await DeviceLog.open(path: path, device: device)
        let other = try await DeviceLog.open(path: path, device: device)
        let perTask = 25
        let returned = try await withThrowingTaskGroup(of: [(SequenceNumber, Int)].self) { group in
            for t in 0..<48 {
                // 0..<24 on the log's executor, 24..<40 on the pool, 40..<48 through the second connection.
                let target = t < 40 ? log : other
                group.addTask(executorPreference: t < 24 ? log.executor : nil) {
                    var mine: [(SequenceNumber, Int)] = []
                    for i in 0..<perTask {
                        let tag = t * 1000 + i
                        mine.append((try await target.append(reading(tag)), tag))
                    }
                    return mine
                }
            }
            group.addTask(executorPreference: log.executor) {
                // A reader on the log's executor (its reads run inline) acknowledging as it goes.
                var acked = SequenceNumber.zero
                let deadline = ContinuousClock.now + .seconds(60)
                while acked < SequenceNumber(UInt64(48 * perTask)) && ContinuousClock.now < deadline {
                    let batch = try await log.records(from: acked.next, limit: 100)
                    if let last = batch.last {
                        XCTAssertEqual(batch.first?.sequence, acked.next, "records are contiguous")
                        acked = try await log.markAcked(through: last.sequence)
                    } else {
                        try await Task.sleep(for: .milliseconds(1))
                    }
                }
                return []
            }
            var all: [(SequenceNumber, Int)] = []
            for try await part in group { all += part }
            return all
        }
        XCTAssertEqual(returned.count, 48 * perTask)
        XCTAssertEqual(Set(returned.map(\.0)).count, returned.count, "no sequence number given twice")
        let records = try await log.records(from: SequenceNumber(1), limit: 10_000)
        XCTAssertEqual(records.map(\.sequence.rawValue), Array(1...UInt64(48 * perTask)))
        for (seq, tag) in returned where records[Int(seq.rawValue) - 1].values != reading(tag) {
            XCTFail("record \(seq) is not the reading \(tag) its caller was told")
        }
        let head = try await other.head()
        XCTAssertEqual(head, SequenceNumber(UInt64(48 * perTask)))
        let acked = try await other.ackedThrough()
        XCTAssertEqual(acked, head)
        XCTAssertGreaterThan(log.statistics.largestBatch, 1, "appenders resumed by one commit share the next")
        do { let value = try await log.check(); XCTAssertEqual(value, []) }
        await other.close()
        await log.close()
    }

    /// Tasks on the log's executor sleep on the log thread's own timers (`executorSleep`): a
    /// sleeper wakes after its deadline, a cancelled sleeper wakes at once with
    /// `CancellationError`, and appends on the same executor go on while others sleep.
    func testSleepersOnTheLogExecutorWakeOnTimeAndOnCancellation() async throws {
        let log = try await DeviceLog.open(path: dir.file("timers.db"), device: device)
        let clock = ContinuousClock()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 1...5 {
                group.addTask(executorPreference: log.executor) {
                    let started = clock.now
                    try await executorSleep(for: .milliseconds(20 * i))
                    XCTAssertGreaterThanOrEqual(clock.now - started, .milliseconds(20 * i), "sleeper \(i) woke early")
                }
            }
            group.addTask(executorPreference: log.executor) {
                for i in 1...50 { _ = try await log.append(reading(i)) }
            }
            try await group.waitForAll()
        }
        do { let value = try await log.head(); XCTAssertEqual(value, SequenceNumber(50)) }

        let sleeper = Task(executorPreference: log.executor) { () -> Bool in
            do { try await executorSleep(for: .seconds(600)); return false } catch is CancellationError { return true } catch { return false }
        }
        try await Task.sleep(for: .milliseconds(20))
        let started = clock.now
        sleeper.cancel()
        let cancelled = await sleeper.value
        XCTAssertTrue(cancelled, "a cancelled sleep throws CancellationError")
        XCTAssertLessThan(clock.now - started, .seconds(30), "a cancelled sleeper wakes without waiting for its deadline")
        // Cancelled before it sleeps: throws at once as well.
        let early = Task(executorPreference: log.executor) { () -> Bool in
            withUnsafeCurrentTask { $0?.cancel() }
            do { try await executorSleep(for: .seconds(600)); return false } catch is CancellationError { return true } catch { return false }
        }
        let earlyCancelled = await early.value
        XCTAssertTrue(earlyCancelled)
        await log.close()
    }

    /// Appends do not write state.head; the head is still right after retention trimmed every
    /// record, after reopening, and for another connection.
    func testHeadSurvivesTrimmingEveryRecord() async throws {
        let path = dir.file("trim-all.db")
        var config = LogConfiguration()
        config.retentionMaxCount = 0
        let log = try await DeviceLog.open(path: path, device: device, configuration: config)
        for i in 1...10 { _ = try await log.append(reading(i)) }
        try await log.markAcked(through: SequenceNumber(10))
        let status = try await log.status()
        XCTAssertEqual(status.retained, 0)
        XCTAssertEqual(status.head, SequenceNumber(10))
        await log.close()
        let again = try await DeviceLog.open(path: path, device: device, configuration: config)
        do { let value = try await again.head(); XCTAssertEqual(value, SequenceNumber(10)) }
        let next = try await again.append(reading(11))
        XCTAssertEqual(next, SequenceNumber(11))
        do { let value = try await again.check(); XCTAssertEqual(value, []) }
        await again.close()
    }

    /// A version 1 file (written by builds whose every append updated state.head) opens, is
    /// marked version 2, and keeps its head and records.
    func testVersion1FileOpensAndIsMarkedVersion2() async throws {
        let path = dir.file("v1.db")
        let log = try await DeviceLog.open(path: path, device: device)
        for i in 1...5 { _ = try await log.append(reading(i)) }
        await log.close()
        try rawSQL(path, "UPDATE state SET head = (SELECT max(seq) FROM records); PRAGMA user_version = 1")
        let again = try await DeviceLog.open(path: path, device: device)
        do { let value = try await again.head(); XCTAssertEqual(value, SequenceNumber(5)) }
        do { let value = try await again.append(reading(6)); XCTAssertEqual(value, SequenceNumber(6)) }
        do { let value = try await again.check(); XCTAssertEqual(value, []) }
        await again.close()
        var db: OpaquePointer?
        XCTAssertEqual(sqlite3_open(path, &db), SQLITE_OK)
        defer { sqlite3_close(db) }
        var stmt: OpaquePointer?
        XCTAssertEqual(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &stmt, nil), SQLITE_OK)
        defer { sqlite3_finalize(stmt) }
        XCTAssertEqual(sqlite3_step(stmt), SQLITE_ROW)
        XCTAssertEqual(sqlite3_column_int64(stmt, 0), DeviceLog.schemaVersion)
    }

    func testAppendNotificationsReportTheHead() async throws {
        let log = try await DeviceLog.open(path: dir.file("n.db"), device: device)
        let stream = log.appendNotifications()
        _ = try await log.append(reading(1))
        var it = stream.makeAsyncIterator()
        let head = await it.next()
        XCTAssertEqual(head, SequenceNumber(1))
        await log.close()
        let end = await it.next()
        XCTAssertNil(end)
    }
}

final class LogConfigurationTests: XCTestCase {
    func testEnvironmentOverridesDefaults() throws {
        let c = try LogConfiguration(environment: [
            "FIELDLOG_LOG_DURABILITY": "normal", "FIELDLOG_LOG_MAX_BYTES": "64M", "FIELDLOG_LOG_QUOTA_POLICY": "drop-oldest",
            "FIELDLOG_LOG_RETENTION_SECONDS": "3600", "FIELDLOG_LOG_RETENTION_COUNT": "0", "FIELDLOG_LOG_BUSY_TIMEOUT_MS": "250",
        ])
        XCTAssertEqual(c.durability, .normal)
        XCTAssertEqual(c.maxBytes, 64 << 20)
        XCTAssertEqual(c.quotaPolicy, .dropOldest)
        XCTAssertEqual(c.retentionMaxAge, .seconds(3600))
        XCTAssertNil(c.retentionMaxCount)
        XCTAssertEqual(c.busyTimeout, .milliseconds(250))
        let d = try LogConfiguration(environment: [:])
        XCTAssertEqual(d.durability, .full)
        XCTAssertNil(d.maxBytes)
    }

    func testBadEnvironmentValuesNameTheVariable() {
        for (key, value) in [("FIELDLOG_LOG_DURABILITY", "fast"), ("FIELDLOG_LOG_MAX_BYTES", "-5"), ("FIELDLOG_LOG_MAX_BYTES", "10"),
                             ("FIELDLOG_LOG_QUOTA_POLICY", "lru"), ("FIELDLOG_LOG_RETENTION_COUNT", "many")] {
            XCTAssertThrowsError(try LogConfiguration(environment: [key: value])) { error in
                XCTAssertTrue("\(error)".contains(key), "\(error)")
            }
        }
    }
}
