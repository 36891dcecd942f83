import Foundation
import Logging
import StorkCore

// MARK: - `stork serve` as a function

extension StorkServer {
    /// What `stork serve` does, for a binary of one's own that registers plugins first: loads the configuration
    /// (defaults < `configurationFile` < `STORK_*` environment < `overrides`) with `plugins`' names, bootstraps
    /// swift-log from its `logger` section (once per process: call this once), and runs the node until SIGTERM or
    /// SIGINT.
    ///
    /// - Parameter logLevel: wins over `logger.level` (the command line's `--log-level`); nil keeps the configured
    ///   level (default `info`).
    public static func serve(
        configurationFile: String?,
        overrides: ConfigurationOverrides = .init(),
        logLevel: Logger.Level? = nil,
        plugins: StorkPlugins = StorkPlugins(),
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) async throws {
        let configuration = try ServerConfiguration.load(
            path: configurationFile,
            environment: environment,
            overrides: overrides,
            plugins: plugins
        )
        var selection = configuration.logger ?? PluginSelection(type: "stderr")
        if let logLevel { selection.options["level"] = .string(logLevel.rawValue) }
        let factory = try plugins.makeLogHandlerFactory(selection)
        LoggingSystem.bootstrap(factory)
        try await StorkServer(configuration: configuration, plugins: plugins, logger: Logger(label: "stork")).run()
    }

    /// The `--config FILE` of a command line (`--config=FILE` too), for a binary without an argument parser.
    public static func configurationFile(in arguments: [String] = CommandLine.arguments) -> String? {
        for (index, argument) in arguments.enumerated() {
            if argument == "--config", index + 1 < arguments.count { return arguments[index + 1] }
            if argument.hasPrefix("--config=") { return String(argument.dropFirst("--config=".count)) }
        }
        return nil
    }
}
