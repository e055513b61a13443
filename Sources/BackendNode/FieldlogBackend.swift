import ArgumentParser

/// `fieldlog-backend`: ingest, audit and replay into MariaDB.
@main
struct FieldlogBackend: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fieldlog-backend",
        abstract: "Fieldlog backend: ingest device logs into MariaDB exactly once.",
        subcommands: [])
}
