// `fieldlog-backend run`: ingest and the web admin in one process, for small installations.
import ArgumentParser
import Audit
import BackendStore
import Foundation
import Ingest
import Logging
import ServiceLifecycle
import WebAdmin

extension FieldlogBackend {
    struct Run: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run ingest and the web admin in one process (small installations).")
        @OptionGroup var common: CommonOptions
        @OptionGroup var web: WebOptions
        @Option(help: "Port of GET /metrics (FIELDLOG_METRICS_PORT, default 9464; 0 turns it off).") var metricsPort: Int?

        func run() async throws {
            let (config, settings, logger) = try common.start(web.settings.merging(["FIELDLOG_METRICS_PORT": metricsPort.map(String.init)]) { a, _ in a }) {
                r in WebSettings(reading: &r)
            }
            let metrics = BackendMetrics()
            // Ingest first, the web admin last: shutdown stops the web first, ingest last.
            var services: [any Service] = []
            if config.ingest.metricsPort != 0 {
                services.append(MetricsService(metrics: metrics, host: config.ingest.metricsHost, port: config.ingest.metricsPort, logger: logger))
            }
            services.append(IngestService(configuration: config, metrics: metrics, logger: logger))
            services += try await WebServer.prepare(config: config, settings: settings, logger: logger)
            try await runServices(services, logger: logger)
        }
    }
}
