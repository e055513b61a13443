// fieldlog-backend reads its settings through swift-configuration's providers: each provider is
// a layer of Settings' `SettingValues` (which resolves names, aliases and precedence the same
// way for both programs, and remembers which layer gave each value for the messages).
// fieldlog-device reads the same tables without this package (0.68 MB it cannot afford:
// docs/device.md, "Binary size").
import Configuration
import Settings

/// A swift-configuration provider as a layer of the settings.
package struct ConfigProviderLayer: SettingsLayer {
    private let snapshot: any ConfigSnapshot
    private let source: SettingSource

    /// One consistent snapshot of `provider`; its values are reported as coming from `source`.
    package init(_ provider: some ConfigProvider, source: SettingSource) {
        snapshot = provider.snapshot()
        self.source = source
    }

    /// The environment (`EnvironmentVariablesProvider`), with `table`'s secrets marked as such
    /// (swift-configuration redacts them wherever it prints values).
    package init(environmentOf table: SettingsTable, _ environment: [String: String]) {
        let secrets = Set(table.settings.filter(\.secret).flatMap(\.names))
        self.init(EnvironmentVariablesProvider(environmentVariables: environment, secretsSpecifier: .specific(secrets)),
                  source: .environment)
    }

    package func value(forName name: String) -> RawSetting? {
        // A setting name is one key component; the environment provider encodes it unchanged
        // (upper case, `_`). Strings never fail to convert, so a throwing lookup has nothing.
        guard case .string(let value)? = (try? snapshot.value(forKey: AbsoluteConfigKey([name]), type: .string))?.value?.content else {
            return nil
        }
        return RawSetting(value: value, source: source, name: name)
    }

    package var problems: [ConfigurationProblem] { [] }
}
