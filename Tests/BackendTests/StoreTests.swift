// Schema, store and audit against the stack's real MariaDB (each test in a fresh database).
import FieldlogCore
import Foundation
import Logging
import MariaDB
import Sync
import TestSupport
import XCTest
@testable import BackendStore
@testable import Ingest
@testable import Audit
@testable import WebAdmin

final class MigrationTests: XCTestCase {
    func testMigrateCreatesTheSchemaRerunIsANoOpAndANewerSchemaIsRefused() async throws {
        let db = try TestDatabase("migrate")
        defer { db.drop() }
        let c = try await db.connect()
        let migrator = Migrator(connection: c)
        let value1 = try await migrator.currentVersion()
        XCTAssertEqual(value1, 0)
        let value2 = try await migrator.migrate()
        XCTAssertEqual(value2, Schema.migrations.map(\.version))
        let value3 = try await migrator.migrate()
        XCTAssertEqual(value3, [], "re-running applies nothing")
        let value4 = try await migrator.currentVersion()
        XCTAssertEqual(value4, Schema.latestVersion)
        try await migrator.requireCurrent()
        for table in ["devices", "epochs", "readings", "reading_values", "device_sensors", "batch_ranges", "loss_ranges", "dead_letters",
                      "legacy_readings", "legacy_values", "commands", "command_responses", "sensor_values", "epoch_progress",
                      "device_data_usage"] {
            XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = '\(table)'"), "1", table)
        }
        try await c.query("INSERT INTO schema_migrations (version, name) VALUES (\(Schema.latestVersion + 1), 'from the future')")
        do {
            try await migrator.migrate()
            XCTFail("a newer schema must be refused")
        } catch let e as SchemaError {
            XCTAssertTrue(e.description.contains("newer than this fieldlog-backend knows"), e.description)
        }
        do {
            try await migrator.requireCurrent()
            XCTFail("a newer schema must be refused")
        } catch is SchemaError {}
        await c.close()
    }
}

final class StoreTests: XCTestCase {
    func testTheSameBatchTwiceIsStoredOnceAndCountedAsDuplicates() async throws {
        let db = try TestDatabase("store")
        defer { db.drop() }
        let c = try await db.migrated()
        let store = Store(connection: c)
        try await store.prepareSession()
        let device = Fixtures.device(), epoch = Epoch.random()
        var b = Fixtures.batch(device, epoch, 1, 5)
        b.losses = [LossMarker(range: SequenceRange(checked: SequenceNumber(6), SequenceNumber(7)), reason: .diskQuota,
                               recordedAtUnixMilliseconds: 1_764_000_000_000, detail: "quota 10 MiB")]
        b.range = SequenceRange(checked: SequenceNumber(1), SequenceNumber(7))
        b.rejected = []
        let first = try await store.storeBatches([Fixtures.request(b)], newDevices: [device], newEpochs: [(device, epoch)])
        XCTAssertEqual(first.map(\.recordsInserted), [5])
        let again = try await store.storeBatches([Fixtures.request(b), Fixtures.request(b)], newDevices: [device], newEpochs: [(device, epoch)])
        XCTAssertEqual(again.map(\.recordsInserted), [0, 0])
        XCTAssertEqual(again.map(\.duplicates), [5, 5])
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM readings"), "5")
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM reading_values"), "10")
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM loss_ranges"), "1")
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM batch_ranges"), "1")
        let coverage = try await store.coverage(device: device, epoch: epoch)
        XCTAssertEqual(coverage.contiguousThrough, SequenceNumber(7), "the declared loss counts as accounted for")
        // The documented Grafana view: one row per (device, time, sensor, value).
        XCTAssertEqual(try db.scalar("SELECT CONCAT(time, ' ', sensor, '=', num_value) FROM sensor_values WHERE device_id = '\(device)' AND seq = 2 AND sensor = 'temp'"),
                       "2025-11-24 16:00:02.000 temp=0.2")
        XCTAssertEqual(try db.scalar("SELECT CONCAT(stored_through, ' ', highest_seen) FROM epoch_progress WHERE device_id = '\(device)'"), "7 7")
        await c.close()
    }

    /// INSERT IGNORE also turns a failed CHECK constraint (or a foreign key, or a partition that
    /// takes no such value) into a warning and skips the row. The store's checked inserts see
    /// rows inserted + rows proven duplicates < rows sent and fail the whole transaction, so
    /// the range is never committed and never acked; duplicates of a resend still pass.
    func testARowInsertIgnoreDropsSilentlyFailsTheTransactionInsteadOfBeingAcked() async throws {
        let db = try TestDatabase("dropped")
        defer { db.drop() }
        let c = try await db.migrated()
        let store = Store(connection: c)
        try await store.prepareSession()
        try await c.query("ALTER TABLE readings ADD CONSTRAINT drops_seq_7 CHECK (seq <> 7)")
        let device = Fixtures.device(), epoch = Epoch.random()
        do {
            _ = try await store.storeBatches([Fixtures.request(Fixtures.batch(device, epoch, 1, 10))], newDevices: [device], newEpochs: [(device, epoch)])
            XCTFail("a reading the table refuses must fail the transaction")
        } catch let e as MariaDBError {
            // Readings go in array-bound (`insertBulk`): there the server fails the row as a
            // single-row INSERT IGNORE does (4025), where a multi-row one drops it with a warning
            // (the checked insert's case, below for device_sensors). Refused: the ingest isolates it.
            XCTAssertEqual(e.code, 4025, "\(e)")
            XCTAssertTrue(e.description.contains("drops_seq_7"), "the server's reason is in the error: \(e)")
            XCTAssertEqual(e.storeFailure, .refused(e.description))
        }
        for table in ["devices", "epochs", "readings", "reading_values", "batch_ranges"] {
            XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM \(table)"), "0", "\(table): nothing of the failed transaction is committed")
        }
        let coverage = try await store.coverage(device: device, epoch: epoch)
        XCTAssertEqual(coverage.contiguousThrough, .zero, "nothing to ack")

        // Batches the constraint does not touch are stored; a resend of them is all duplicates,
        // which the follow-up count proves (no error), also for a group holding the same batch twice.
        let ok = try await store.storeBatches([Fixtures.request(Fixtures.batch(device, epoch, 11, 20))], newDevices: [device], newEpochs: [(device, epoch)])
        XCTAssertEqual(ok.map(\.recordsInserted), [10])
        let resent = try await store.storeBatches([Fixtures.request(Fixtures.batch(device, epoch, 11, 20)), Fixtures.request(Fixtures.batch(device, epoch, 11, 20))],
                                                  newDevices: [device], newEpochs: [(device, epoch)])
        XCTAssertEqual(resent.map(\.duplicates), [10, 10])

        // A dropped sensor row (device_sensors, a device seen for the first time) and a dropped dead
        // letter (NULL key: must be inserted) fail too.
        let other = Fixtures.device("other")
        try await c.query("ALTER TABLE device_sensors ADD CONSTRAINT drops_state CHECK (sensor <> 'state' OR device_id NOT LIKE 'other%')")
        do {
            _ = try await store.storeBatches([Fixtures.request(Fixtures.batch(other, epoch, 21, 30))], newDevices: [other], newEpochs: [(other, epoch)])
            XCTFail("a silently dropped sensor row must fail the transaction")
        } catch let e as MariaDBRowsNotWritten {
            XCTAssertEqual(e.table, "device_sensors")
            XCTAssertEqual(e.missingKeys, [[.string(other.rawValue), .string("state")]])
            XCTAssertTrue(e.warnings.contains { $0.contains("drops_state") }, "the server's reason is in the error: \(e)")
        }
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM readings WHERE device_id = '\(other)'"), "0")
        try await c.query("ALTER TABLE dead_letters ADD CONSTRAINT drops_oversize CHECK (reason <> 'oversize')")
        var tx = IngestTransaction()
        tx.deadLetters = [DeadLetter(topic: "t", reason: .malformedJSON, message: "x", topicDevice: nil, payload: [1]),
                          DeadLetter(topic: "t", reason: .oversize, message: "y", topicDevice: nil, payload: [2])]
        do {
            _ = try await store.write(StoreRows(tx))
            XCTFail("a silently dropped dead letter must fail")
        } catch let e as MariaDBRowsNotWritten {
            XCTAssertEqual([e.sent, e.inserted], [2, 1])
        }
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM dead_letters"), "0", "rolled back: not half of the letters")
        await c.close()
    }

    /// The ingest reads a whole group's progress in one statement (chunks of 64 keys): the same
    /// ranges as one read per (device, epoch), in the order asked, empty for unknown keys.
    func testProgressOfManyDevicesInOneReadMatchesOneReadPerDevice() async throws {
        let db = try TestDatabase("progress-many")
        defer { db.drop() }
        let c = try await db.migrated()
        let store = Store(connection: c)
        try await store.prepareSession()
        let devices = (0..<70).map { _ in Fixtures.device() }
        let epoch = Epoch.random(), otherEpoch = Epoch.random()
        var requests = devices.enumerated().map { i, d in Fixtures.request(Fixtures.batch(d, epoch, 1, UInt64(i % 5 + 1))) }
        requests.append(Fixtures.request(Fixtures.batch(devices[0], epoch, 11, 12)))
        requests.append(Fixtures.request(Fixtures.batch(devices[0], otherEpoch, 1, 3)))
        _ = try await store.storeBatches(requests, newDevices: devices, newEpochs: devices.map { ($0, epoch) } + [(devices[0], otherEpoch)])
        let unknown = Fixtures.device()
        let keys = devices.map { (device: $0, epoch: epoch, above: SequenceNumber.zero) }
            + [(device: devices[0], epoch: otherEpoch, above: SequenceNumber(1)), (device: devices[0], epoch: epoch, above: SequenceNumber(5)),
               (device: unknown, epoch: epoch, above: SequenceNumber.zero)]
        let together = try await store.committedRanges(of: keys)
        XCTAssertEqual(together.count, keys.count)
        for (k, ranges) in zip(keys, together) {
            let alone = try await store.committedRanges(device: k.device, epoch: k.epoch, above: k.above)
            XCTAssertEqual(ranges, alone, "\(k.device) \(k.epoch) above \(k.above)")
        }
        XCTAssertEqual(together[0].map(\.description), [SequenceRange(checked: SequenceNumber(1), SequenceNumber(1)), SequenceRange(checked: SequenceNumber(11), SequenceNumber(12))].map(\.description))
        XCTAssertEqual(together[keys.count - 2].count, 1, "only the range ending above 5")
        XCTAssertEqual(together.last, [], "a device never seen has no ranges")

        // A group's statuses in one transaction, in arrival order (the later one wins).
        try await store.recordStatuses([
            Status(device: devices[1], state: .online, epoch: epoch, head: SequenceNumber(2), acked: SequenceNumber(1), atUnixMilliseconds: 1_764_000_000_000),
            Status(device: devices[2], state: .online, epoch: epoch, head: SequenceNumber(3), acked: SequenceNumber(3), atUnixMilliseconds: 1_764_000_000_000),
            Status(device: devices[1], state: .offline, epoch: epoch, head: SequenceNumber(2), acked: SequenceNumber(2), atUnixMilliseconds: 1_764_000_000_500),
        ])
        XCTAssertEqual(try db.scalar("SELECT CONCAT(status_state, ' ', status_acked) FROM devices WHERE device_id = '\(devices[1])'"), "offline 2")
        XCTAssertEqual(try db.scalar("SELECT CONCAT(status_state, ' ', status_acked) FROM devices WHERE device_id = '\(devices[2])'"), "online 3")

        // The data budget: one row per device and day; a restarted device's smaller count of
        // the same day does not lower what was recorded.
        let day = DataUsage.day(ofUnixMilliseconds: 1_764_000_000_000)
        try await store.recordStatuses([
            Status(device: devices[1], state: .online, dataUsage: DataUsage(day: day, sentBytes: 5000, receivedBytes: 700)),
            Status(device: devices[1], state: .online, dataUsage: DataUsage(day: day, sentBytes: 300, receivedBytes: 900)),
            Status(device: devices[1], state: .online, dataUsage: DataUsage(day: day + 1, sentBytes: 10, receivedBytes: 20)),
        ])
        XCTAssertEqual(try db.scalar("""
            SELECT GROUP_CONCAT(CONCAT(day, ' ', sent_bytes, ' ', received_bytes) ORDER BY day SEPARATOR '; ')
            FROM device_data_usage WHERE device_id = '\(devices[1])'
            """), "2025-11-24 5000 900; 2025-11-25 10 20")
        await c.close()
    }

    func testProgressViewAuditAndCompactionAgreeOnAGap() async throws {
        let db = try TestDatabase("gap")
        defer { db.drop() }
        let c = try await db.migrated()
        let store = Store(connection: c)
        try await store.prepareSession()
        let device = Fixtures.device(), epoch = Epoch.random()
        for (a, b) in [(1, 10), (11, 20), (31, 40), (21, 25)] as [(UInt64, UInt64)] {
            _ = try await store.storeBatches([Fixtures.request(Fixtures.batch(device, epoch, a, b))], newDevices: [device], newEpochs: [(device, epoch)])
        }
        XCTAssertEqual(try db.scalar("SELECT CONCAT(stored_through, ' ', highest_seen) FROM epoch_progress WHERE device_id = '\(device)'"), "25 40")
        let replaced = try await store.compactRanges(device: device, epoch: epoch, through: SequenceNumber(25))
        XCTAssertEqual(replaced, 3)
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM batch_ranges"), "2")
        let value5 = try await store.compactRanges(device: device, epoch: epoch, through: SequenceNumber(30))
        XCTAssertEqual(value5, 0, "never compacts over a gap")
        let coverage = try await store.coverage(device: device, epoch: epoch)
        XCTAssertEqual(coverage.contiguousThrough, SequenceNumber(25))
        XCTAssertEqual(coverage.gaps(), [SequenceRange(checked: SequenceNumber(26), SequenceNumber(30))])

        let report = try await Auditor(connection: c).run()
        XCTAssertTrue(report.hasGaps)
        let e = try XCTUnwrap(report.devices.first?.epochs.first)
        XCTAssertEqual(e.storedThrough, 25)
        XCTAssertEqual(e.highestSeen, 40)
        XCTAssertEqual(e.gaps, [EpochAudit.Range(SequenceRange(checked: SequenceNumber(26), SequenceNumber(30)))])
        XCTAssertEqual(report.repairRequests.map(\.range), [SequenceRange(checked: SequenceNumber(26), SequenceNumber(30))])
        XCTAssertTrue(report.text().contains("GAP 26…30"), report.text())

        let later = try await Auditor(connection: c, silentAfter: .seconds(60)).run(now: Date().addingTimeInterval(3600))
        XCTAssertEqual(later.devices.map(\.silent), [true], "an hour without data is silent beyond 60 s")
        XCTAssertEqual(report.devices.map(\.silent), [false])

        // audit --repair asks the device for the gap (a replay command, recorded).
        var env = db.environment
        env["FIELDLOG_MQTT_HOST"] = db.stack.mqttHost
        let repair = try BackendProcess.run(["audit", "--repair"], environment: env)
        XCTAssertEqual(repair.status, 1, repair.output)
        XCTAssertEqual(try db.scalar("SELECT CONCAT(command, ' ', first_seq, ' ', last_seq, ' ', epoch) FROM commands WHERE device_id = '\(device)'"),
                       "replay 26 30 \(epoch.rawValue)")

        _ = try await store.storeBatches([Fixtures.request(Fixtures.batch(device, epoch, 26, 30))], newDevices: [], newEpochs: [])
        let value6 = try await Auditor(connection: c).run().hasGaps
        XCTAssertFalse(value6)
        await c.close()
    }

    func testAnEpochEndedWithUnstoredRecordsIsReported() async throws {
        let db = try TestDatabase("epochs")
        defer { db.drop() }
        let c = try await db.migrated()
        let store = Store(connection: c)
        try await store.prepareSession()
        let device = Fixtures.device(), old = Epoch(1), new = Epoch(2)
        _ = try await store.storeBatches([Fixtures.request(Fixtures.batch(device, old, 1, 10))], newDevices: [device], newEpochs: [(device, old)])
        try await store.recordStatus(Status(device: device, state: .online, epoch: old, head: SequenceNumber(15), acked: SequenceNumber(10)))
        let value7 = try await Auditor(connection: c).run().hasGaps
        XCTAssertFalse(value7, "records above the highest stored of the current epoch are backlog")
        try await Task.sleep(for: .milliseconds(5))
        _ = try await store.storeBatches([Fixtures.request(Fixtures.batch(device, new, 1, 3))], newDevices: [], newEpochs: [(device, new)])
        try await store.recordStatus(Status(device: device, state: .online, epoch: new, head: SequenceNumber(3), acked: SequenceNumber(3)))
        let report = try await Auditor(connection: c).run(device: device)
        XCTAssertTrue(report.hasGaps)
        let ended = try XCTUnwrap(report.devices.first?.epochs.first { $0.epoch == old.hex })
        XCTAssertTrue(ended.ended)
        XCTAssertEqual(ended.unstoredAtEnd, EpochAudit.Range(SequenceRange(checked: SequenceNumber(11), SequenceNumber(15))))
        let current = try XCTUnwrap(report.devices.first?.epochs.first { $0.epoch == new.hex })
        // The web admin's fleet overview query (docs/backend.md).
        let fleet = try db.scalar("""
            SELECT d.device_id, d.protocol, d.status_state, d.status_epoch, d.status_head, d.status_acked,
                   p.stored_through, p.highest_seen
              FROM devices d
              LEFT JOIN epoch_progress p ON p.device_id = d.device_id AND p.epoch = d.status_epoch
             ORDER BY d.device_id
            """)
        XCTAssertEqual(fleet, "\(device)\tfieldlog\tonline\t2\t3\t3\t3\t3")
        XCTAssertFalse(current.ended)
        await c.close()
    }
}
