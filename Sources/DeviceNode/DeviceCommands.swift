// `fieldlog-device run|sample|button|sync|config check`: thin commands over Device.DeviceNode.
import ArgumentParser
import Device
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import Logging
import Settings

/// Options shared by the commands that read the configuration.
struct ConfigOptions: ParsableArguments {
    @Option(name: .long, help: "Configuration file of KEY=value lines (environment variables override it). Default: $FIELDLOG_CONFIG, else none.")
    var config: String?
    @Option(name: .customLong("set"), help: ArgumentHelp("Set a setting for this run, over the environment and the file (repeatable).", valueName: "KEY=value"))
    var set: [String] = []

    /// Loads, validates and returns the configuration; prints every problem and exits 78 (EX_CONFIG) on error.
    func load() throws -> DeviceConfiguration {
        do {
            let commandLine = try set.map { (text) throws(ConfigurationError) in try CommandLineSetting.parse(set: text) }
            return try DeviceConfiguration.load(configOption: config, commandLine: commandLine, environment: ProcessInfo.processInfo.environment)
        } catch {
            printError("fieldlog-device: \(error)")
            throw ExitCode(78)
        }
    }
}

func bootstrapLogging(_ level: Logger.Level) -> Logger {
    LoggingSystem.bootstrap { label in
        var h = StreamLogHandler.standardError(label: label)
        h.logLevel = level
        return h
    }
    var logger = Logger(label: "fieldlog.device")
    logger.logLevel = level
    return logger
}

func runComponents(_ options: ConfigOptions, _ components: ComponentSet) async throws {
    let c = try options.load()
    let logger = bootstrapLogging(c.logLevel)
    do {
        try await DeviceNode.run(c, components: components, logger: logger)
    } catch {
        logger.critical("fieldlog-device stopped: \(error)")
        throw ExitCode(1)
    }
}

struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run every component: sampler, button, sync agent with commands, status server.")
    @OptionGroup var options: ConfigOptions
    func run() async throws { try await runComponents(options, .all) }
}

struct SampleCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "sample", abstract: "Run the sampler alone (appends to the log).")
    @OptionGroup var options: ConfigOptions
    func run() async throws { try await runComponents(options, [.sampler]) }
}

struct ButtonCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "button", abstract: "Run the start/stop button alone (toggles measurement:enabled in Redis).")
    @OptionGroup var options: ConfigOptions
    func run() async throws {
        var c = try options.load()
        c.button.enabled = true
        let logger = bootstrapLogging(c.logLevel)
        do { try await DeviceNode.run(c, components: [.button], logger: logger) } catch {
            logger.critical("fieldlog-device stopped: \(error)")
            throw ExitCode(1)
        }
    }
}

struct SyncCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "sync", abstract: "Run the sync agent and command handler alone (reads the log another process appends to).")
    @OptionGroup var options: ConfigOptions
    func run() async throws { try await runComponents(options, [.sync, .status]) }
}

struct ConfigCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "config", abstract: "Inspect the configuration.",
                                                    subcommands: [ConfigCheck.self, ConfigExample.self, ConfigReference.self])
}

struct ConfigCheck: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Validate the configuration and print the effective values (secrets masked); exit 78 on problems.")
    @OptionGroup var options: ConfigOptions
    func run() async throws {
        let c = try options.load()
        print(c.effectiveDescription())
    }
}

struct ConfigExample: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "example",
        abstract: "Print a commented example configuration file with every setting and its default.")
    func run() async throws { print(DeviceSettings.exampleFile(), terminator: "") }
}

struct ConfigReference: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reference",
        abstract: "Print the configuration reference as Markdown (docs/device-configuration.md is made by this).")
    func run() async throws { print(DeviceSettings.table.referenceMarkdown(), terminator: "") }
}
