// BrokenIngest: a deliberately broken `fieldlog-backend ingest`, built for the outage lab's
// BrokenBuildTests only (never installed, never shipped).
//
// It is the real ingest service with one thing injected: the way a transaction reaches the
// database (`TransactionWrite`). Instead of reporting a transaction only once it is
// committed, it acks every batch on receipt, through its last record, then makes one attempt
// to store it and forgets it when that fails. The lab must catch it: a partition between
// ingest and MariaDB loses acked readings, and the devices' acked pointers pass them. The
// production program has no such switch; a test injects the fault by running this program
// (`LabOptions.ingestBinary`) instead of `fieldlog-backend`.
import BackendStore
import Foundation
import Ingest
import Logging
import ServiceLifecycle
import Settings
import Sync

@main
enum BrokenIngest {
    static func main() async throws {
        guard Array(CommandLine.arguments.dropFirst()) == ["ingest"] else {
            FileHandle.standardError.write(Data("usage: BrokenIngest ingest (configured like fieldlog-backend ingest, by environment)\n".utf8))
            exit(64)
        }
        var settings = SettingsReader(try BackendConfiguration.values())
        let level = BackendConfiguration.logLevel(reading: &settings)
        let configuration = BackendConfiguration(reading: &settings)
        try settings.finish()
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        let logger = Logger(label: "fieldlog.broken-ingest")
        logger.warning("the outage lab's deliberately broken ingest: it acks before it commits")
        let service = IngestService(configuration: configuration, metrics: BackendMetrics(), logger: logger, write: .ackingBeforeCommit)
        var group = ServiceGroupConfiguration(services: [.init(service: service)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        group.maximumGracefulShutdownDuration = .seconds(10)
        do {
            try await ServiceGroup(configuration: group).run()
        } catch is CancellationError {
            logger.info("ingest cancelled after the graceful shutdown period")
        }
    }
}

extension TransactionWrite {
    /// Acks every batch on receipt, through its last record, then makes one attempt to store
    /// the transaction and forgets it when that fails, reporting success either way.
    static let ackingBeforeCommit = TransactionWrite { transaction, context in
        await context.publishAcks(transaction.batches.map { b in
            let ack = Ack(device: b.device, epoch: b.epoch, through: b.range.last, stored: b.range)
            return AckMessage(topic: context.configuration.topics.ack.topic(device: b.device), payload: SyncCodec.encode(ack), ack: ack)
        })
        do {
            _ = try await context.database.store().write(StoreRows(transaction))
        } catch {
            await context.database.failed()
            context.logger.error("broken ingest: store failed after the ack; \(transaction.batches.count) batch(es) lost: \(error)")
        }
        return .committed(WriteResult(readingsInserted: 0, legacyInserted: 0))
    }
}
