import Foundation
import Logging
import Prometheus
import ServiceLifecycle
import StorkCore
import StorkGateway
import StorkLeases
import StorkBus
import StorkRealtime
import StorkResources
import StorkSQLStreamStores
import StorkStreamStores
import StorkStreaming

// MARK: - The built-in types
//
// Each built-in reads its options with `PluginOptions` (errors name the key) and rejects keys it does not know.
// The keys are the ones Docs/configuration.md documents for the same part; Docs/plugins.md lists them by kind.

extension StorkPlugins {
    mutating func registerBuiltIns() {
        // Sources
        self.register(source: "file") { options, context in
            try options.checkKeys(["path", "reload"])
            return FileResourceSource(
                path: try options.requiredString("path"),
                reload: try options.bool("reload") ?? true,
                logger: context.logger
            )
        }
        self.register(source: "http") { options, context in
            try options.checkKeys(["url", "headers", "timeout"])
            return HTTPResourceSource(
                url: try Self.httpURL(options, "url"),
                headers: try options.stringMap("headers") ?? [:],
                timeout: try options.duration("timeout") ?? .seconds(5),
                client: context.httpClient
            )
        }
        // Handlers
        self.register(handler: "sidecar") { options, context in
            try options.checkKeys(["url", "timeout", "headers"])
            return SidecarHandler(
                url: try Self.httpURL(options, "url"),
                timeout: try options.duration("timeout") ?? .seconds(10),
                headers: try options.stringMap("headers") ?? [:],
                client: context.httpClient
            )
        }
        self.register(handler: "log") { options, _ in
            try options.checkKeys([])
            return LogHandler()
        }
        // Ownership stores, by URL scheme
        for scheme in ["sqlite", "postgres", "postgresql", "memory"] {
            self.register(ownershipStore: scheme) { url, context in
                try OwnershipStores.make(url: url, cluster: context.cluster, logger: context.logger)
            }
        }
        // Message stores
        self.register(messageStore: "memory") { options, _ in
            try options.checkKeys([])
            return { _, _ in MemoryMessageStore() }
        }
        self.register(messageStore: "file") { options, context in
            try options.checkKeys(["segmentMaxBytes", "fileSync"])
            var file = FileMessageStoreConfiguration()
            file.segmentMaxBytes = try options.integer("segmentMaxBytes", in: 4096...(1 << 34)) ?? file.segmentMaxBytes
            if case .string("always")? = options.fields["fileSync"] {
                file.fsync = .always
            } else {
                file.fsync = .batched(try options.duration("fileSync") ?? .milliseconds(100))
            }
            let logger = context.logger
            return { [file] _, directory in FileMessageStore(directory: directory, configuration: file, logger: logger) }
        }
        self.register(messageStore: "sqlite") { options, context in
            try options.checkKeys(["path"])
            let path = try options.string("path") ?? "\(context.dataDirectory)/streams.db"
            let logger = context.logger
            let cluster = context.cluster
            return { config, _ in SQLiteMessageStore(path: path, stream: config.name, cluster: cluster, logger: logger) }
        }
        self.register(messageStore: "postgres") { options, context in
            try options.checkKeys(["url"])
            guard let url = try options.string("url") else {
                throw StorkError(.invalidInput, "'url' is required (streaming.postgres)")
            }
            let logger = context.logger
            let cluster = context.cluster
            return { config, _ in
                // Fencing: a stream on PostgreSQL moves between nodes (it is placed), and the node that opens it
                // last is the only one whose writes count.
                try PostgresMessageStore(url: url, stream: config.name, cluster: cluster, fencing: true, logger: logger)
            }
        }
        // Permissions
        self.register(permission: "rules", factory: Self.makeRulesPermissions)
        for name in ["open", "none"] {
            self.register(permission: name) { options, context in
                try options.checkKeys([])
                context.logger.critical(
                    "gateway: permissions are OPEN: every client may publish, subscribe, request, respond to and see the presence of every subject. For development only."
                )
                let rules = try PermissionRules(document: Self.openRules)
                return PermissionsPlugin(rules: { rules })
            }
        }
        // Loggers
        self.register(logger: "stdout") { options in try StorkLogHandler.factory(options, stream: .standardOutput) }
        self.register(logger: "stderr") { options in try StorkLogHandler.factory(options, stream: .standardError) }
        // Metrics
        self.register(metrics: "prometheus") { options, _ in
            try options.checkKeys([])
            let registry = PrometheusCollectorRegistry()
            return MetricsPlugin(factory: PrometheusMetricsFactory(registry: registry), prometheus: registry)
        }
        self.register(metrics: "none") { options, _ in
            try options.checkKeys([])
            return MetricsPlugin(factory: nil)
        }
    }

    /// Every action allowed on every subject.
    static var openRules: JSONValue {
        var rule: [String: JSONValue] = ["subject": .string(">")]
        for action in PermissionAction.allCases { rule[action.rawValue] = .bool(true) }
        return .object(["rules": .array([.object(rule)])])
    }

    /// `rules`: a rules file (watched and reloaded) or inline `rules`; neither refuses everything.
    static func makeRulesPermissions(_ options: PluginOptions, _ context: StorkPluginContext) throws -> PermissionsPlugin {
        try options.checkKeys(["file", "rules"])
        if let file = try options.string("file") {
            guard options.fields["rules"] == nil else { throw StorkError(.invalidInput, "give either 'file' or 'rules', not both") }
            let watcher = try RulesFileWatcher(
                path: file,
                clock: ContinuousClock(),
                logger: context.logger,
                decode: { try DocumentFile.parse($0, path: file) }
            )
            return PermissionsPlugin(rules: { watcher.rules }, service: watcher)
        }
        let rules = try options.fields["rules"].map { try PermissionRules(document: .object(["rules": $0])) } ?? PermissionRules([])
        if rules.rules.isEmpty { context.logger.warning("gateway: no permission rules, so every client action is refused") }
        return PermissionsPlugin(rules: { rules })
    }

    /// An http(s) URL without a trailing slash.
    static func httpURL(_ options: PluginOptions, _ key: String) throws -> String {
        let text = try options.requiredString(key)
        guard let url = URL(string: text), ["http", "https"].contains(url.scheme?.lowercased() ?? ""), url.host != nil else {
            throw StorkError(.invalidInput, "'\(key)': '\(text)' is not an http(s) URL")
        }
        return text.hasSuffix("/") ? String(text.dropLast()) : text
    }
}

// MARK: - The stdout / stderr logger

/// The built-in `stdout` and `stderr` loggers: `format: text` (swift-log's stream handler) or `json` (one object per
/// line: `time`, `level`, `label`, `message`, metadata under their own keys), from `level` up.
struct StorkLogHandler: Logging.LogHandler {
    enum Stream: Sendable {
        case standardOutput, standardError
    }

    static func factory(_ options: PluginOptions, stream: Stream) throws -> @Sendable (String) -> any Logging.LogHandler {
        try options.checkKeys(["format", "level"])
        let level: Logger.Level
        if let name = try options.string("level") {
            guard let parsed = Logger.Level(rawValue: name) else {
                let known = Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")
                throw StorkError(.invalidInput, "'level': '\(name)' is not one of \(known)")
            }
            level = parsed
        } else {
            level = .info
        }
        switch try options.string("format") ?? "text" {
        case "text":
            return { label in
                var handler =
                    stream == .standardOutput
                    ? StreamLogHandler.standardOutput(label: label) : StreamLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            }
        case "json":
            return { label in StorkLogHandler(label: label, stream: stream, logLevel: level) }
        case let other:
            throw StorkError(.invalidInput, "'format': '\(other)' is not text or json")
        }
    }

    let label: String
    let stream: Stream
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?

    init(label: String, stream: Stream, logLevel: Logger.Level) {
        self.label = label
        self.stream = stream
        self.logLevel = logLevel
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var fields: [String: JSONValue] = [:]
        var all = self.metadata
        if let provided = self.metadataProvider?.get() { all.merge(provided) { _, new in new } }
        if let metadata = event.metadata { all.merge(metadata) { _, new in new } }
        for (key, value) in all { fields[key] = .string("\(value)") }
        fields["time"] = .string(Date().formatted(.iso8601))
        fields["level"] = .string(event.level.rawValue)
        fields["label"] = .string(self.label)
        fields["message"] = .string("\(event.message)")
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        guard var line = try? encoder.encode(JSONValue.object(fields)) else { return }
        line.append(0x0A)
        // One write per line, so that lines from different threads do not interleave.
        switch self.stream {
        case .standardOutput: FileHandle.standardOutput.write(line)
        case .standardError: FileHandle.standardError.write(line)
        }
    }
}
