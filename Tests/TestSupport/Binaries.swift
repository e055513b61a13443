import Foundation

/// Paths of the package's own executables, as built by `swift build` for the tests.
public enum Binaries {
    /// The directory that holds the built products of the configuration the tests run in.
    public static let directory: String = {
        // The test bundle runs from the bin directory (.build/<triple>/debug/…xctest).
        let env = ProcessInfo.processInfo.environment
        if let dir = env["FIELDLOG_BIN_DIR"] { return dir }
        var url = URL(fileURLWithPath: CommandLine.arguments.first ?? ".").resolvingSymlinksInPath()
        while url.path != "/" {
            url.deleteLastPathComponent()
            if FileManager.default.fileExists(atPath: url.appendingPathComponent("fieldlog-device").path) { return url.path }
        }
        return Stack.packageRoot + "/.build/debug"
    }()

    /// The path of a built executable product, e.g. `fieldlog-device`; fails clearly when missing.
    public static func path(_ product: String) throws -> String {
        let p = directory + "/" + product
        guard FileManager.default.isExecutableFile(atPath: p) else {
            throw CommandFailed(description: "\(product) is not built at \(p): run `swift build` first")
        }
        return p
    }
}
