// `fieldlog-backend config check|reference`: the settings as the program reads them, and the
// reference generated from BackendSettings' table (docs/backend-configuration.md).
import ArgumentParser
import BackendStore
import Settings
import WebAdmin

extension FieldlogBackend {
    struct Config: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Inspect the configuration.",
                                                        subcommands: [Check.self, Reference.self])

        struct Check: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Check every setting and print the effective values (secrets masked); fail on problems.")
            @OptionGroup var common: CommonOptions
            @OptionGroup var web: WebOptions

            func run() async throws {
                // Every setting, the web admin's too, as `run` reads them.
                let (values, _, config, _) = try common.read(web.settings) { r in WebSettings(reading: &r) }
                print(values.effectiveDescription(effective: [
                    "FIELDLOG_MARIADB_ADDRESSES": config.database.addresses.map(\.description).joined(separator: ","),
                    "FIELDLOG_INGEST_CLIENT_ID": config.ingest.clientID,
                ]))
            }
        }

        struct Reference: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Print the configuration reference as Markdown (docs/backend-configuration.md is made by this).")
            func run() async throws { print(BackendSettings.table.referenceMarkdown(), terminator: "") }
        }
    }
}
