import ArgumentParser

/// `fieldlog-device`: the program that runs on each device.
@main
struct FieldlogDevice: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fieldlog-device",
        abstract: "Fieldlog device node: durable local log, sampler, sync agent.",
        subcommands: [LogCommand.self, RunCommand.self, SampleCommand.self, ButtonCommand.self, SyncCommand.self, ConfigCommand.self])
}
