import AsyncHTTPClient
import Logging
import Metrics
import Prometheus
import ServiceLifecycle
import StorkConnectors
import StorkCore
import StorkBus
import StorkRealtime
import StorkResources

// MARK: - Plugins by name
//
// Every pluggable part of `stork serve` is chosen by a `type` name in stork.yaml, with that entry's other keys as
// its options:
//
//     resources:
//       sources: [{type: accounts, count: 3}]     # a registered source type
//       handler: {type: sidecar, url: http://127.0.0.1:9000}
//
// `StorkPlugins` maps each kind's names to factories. `StorkPlugins()` has the built-ins; a Swift user's binary
// registers its own types (or replaces a built-in one) and hands the registry to `ServerConfiguration.load` (which
// checks the names) and to `StorkServer` (which builds the parts). Docs/plugins.md is the guide.

/// The options of one configuration entry (its keys besides `type`), read with errors that name the key:
/// `try options.requiredString("url")` fails with `'url' is required`. Call `checkKeys` so that a misspelt key is an
/// error rather than silently ignored.
public typealias PluginOptions = AuthenticatorOptions

/// One pluggable part as the configuration chooses it: a `type` name and the entry's other keys.
public struct PluginSelection: Sendable, Hashable {
    /// The registered name, e.g. `file`, `sidecar`, `prometheus`.
    public var type: String
    /// The entry's other keys (a JSON object).
    public var options: [String: JSONValue]

    public init(type: String, options: [String: JSONValue] = [:]) {
        self.type = type
        self.options = options
    }
}

/// What a plugin factory may use besides its options: the node's shared I/O and identity.
public struct StorkPluginContext: Sendable {
    /// The node's logger (with `stork.node` set).
    public var logger: Logger
    /// The node's shared HTTP client (do not shut it down).
    public var httpClient: HTTPClient
    /// `node.name`.
    public var node: String
    /// `cluster.name`.
    public var cluster: String
    /// `node.data`: the node's state directory (created before any plugin is built).
    public var dataDirectory: String
    /// The process environment (for `${VAR}`-style lookups a plugin does itself).
    public var environment: [String: String]
    /// The node's message server (publish, subscribe, request); nil when the NATS endpoint is off.
    public var messaging: (any StorkMessaging)?

    public init(
        logger: Logger,
        httpClient: HTTPClient,
        node: String,
        cluster: String,
        dataDirectory: String,
        environment: [String: String] = [:],
        messaging: (any StorkMessaging)? = nil
    ) {
        self.logger = logger
        self.httpClient = httpClient
        self.node = node
        self.cluster = cluster
        self.dataDirectory = dataDirectory
        self.environment = environment
        self.messaging = messaging
    }
}

/// What a `permission` plugin gives the gateway.
public struct PermissionsPlugin: Sendable {
    /// The rules in force now (asked on every client action, so a plugin may change them at any time).
    public var rules: @Sendable () -> PermissionRules
    /// A service to run beside the gateway (a file watcher, a poller), if the plugin needs one.
    public var service: (any Service)?

    public init(rules: @escaping @Sendable () -> PermissionRules, service: (any Service)? = nil) {
        self.rules = rules
        self.service = service
    }
}

/// What a `metrics` plugin gives the node.
public struct MetricsPlugin: Sendable {
    /// Where the node's swift-metrics (connector metrics) go; nil: nowhere.
    public var factory: (any MetricsFactory)?
    /// A Prometheus registry that `/metrics` serves after Stork's own samples; nil: only Stork's own samples.
    public var prometheus: PrometheusCollectorRegistry?

    public init(factory: (any MetricsFactory)?, prometheus: PrometheusCollectorRegistry? = nil) {
        self.factory = factory
        self.prometheus = prometheus
    }
}

// MARK: - StorkPlugins

/// The registry of pluggable parts by kind and `type` name. `StorkPlugins()` has every built-in:
///
/// | kind | built-in types | configured by |
/// |---|---|---|
/// | source | `file`, `http` | `resources.sources[]` |
/// | handler | `sidecar`, `log` | `resources.handler` |
/// | connector | `websocket`, `http-poll`, `webhook` | a resource's `kind` attribute |
/// | ownershipStore | `sqlite`, `postgres`, `postgresql`, `memory` | the scheme of `ownership.store` |
/// | messageStore | `file`, `memory`, `sqlite`, `postgres` | `streaming.store` |
/// | authenticator | `open`, `users`, `jwt`, `http` | `gateway.auth[]` |
/// | permission | `rules`, `open`, `none` | `gateway.permissions` |
/// | logger | `stdout`, `stderr` | `logger` |
/// | metrics | `prometheus`, `none` | `metrics` |
/// | endpoint | none (NATS, HTTP and the gateway have their own sections) | `endpoints[]` |
///
/// ```swift
/// var plugins = StorkPlugins()
/// plugins.register(source: "accounts") { options, context in
///     try options.checkKeys(["count"])
///     return AccountsSource(count: try options.integer("count", in: 1...1000) ?? 3)
/// }
/// let configuration = try ServerConfiguration.load(path: "stork.yaml", plugins: plugins)
/// try await StorkServer(configuration: configuration, plugins: plugins).run()
/// ```
public struct StorkPlugins: Sendable {
    /// The kinds of pluggable parts.
    public enum Kind: String, Sendable, Hashable, CaseIterable {
        case source, handler, connector, ownershipStore, messageStore, authenticator, permission, logger, metrics
        case endpoint

        /// How errors name the kind: "source type", "message store type", …
        var label: String {
            switch self {
            case .ownershipStore: "ownership store scheme"
            case .messageStore: "message store type"
            default: "\(self.rawValue) type"
            }
        }
    }

    public typealias SourceFactory =
        @Sendable (_ options: PluginOptions, _ context: StorkPluginContext) throws -> any ResourceSource
    public typealias HandlerFactory =
        @Sendable (_ options: PluginOptions, _ context: StorkPluginContext) throws -> any ResourceHandler
    /// Connectors are chosen per resource by its `kind` attribute, so the factory takes no options.
    public typealias ConnectorFactory = @Sendable (_ context: StorkPluginContext) -> any Connector
    /// Gets the whole `ownership.store` URL (`redis://…`); the scheme chose the factory.
    public typealias OwnershipStoreFactory =
        @Sendable (_ url: String, _ context: StorkPluginContext) throws -> any OwnershipStore
    /// Returns the function that makes each stream's store (the stream's configuration and its own directory).
    public typealias MessageStoreFactory =
        @Sendable (_ options: PluginOptions, _ context: StorkPluginContext) throws -> JetStream.StoreFactory
    public typealias PermissionFactory =
        @Sendable (_ options: PluginOptions, _ context: StorkPluginContext) throws -> PermissionsPlugin
    /// Returns the swift-log handler factory that `LoggingSystem.bootstrap` gets (once per process). Loggers are
    /// built before anything else, so there is no context.
    public typealias LoggerFactory =
        @Sendable (_ options: PluginOptions) throws -> @Sendable (_ label: String) -> any Logging.LogHandler
    public typealias MetricsPluginFactory =
        @Sendable (_ options: PluginOptions, _ context: StorkPluginContext) throws -> MetricsPlugin
    /// An extra endpoint: a service that starts after the resource manager and stops before it.
    public typealias EndpointFactory =
        @Sendable (_ options: PluginOptions, _ context: StorkPluginContext) throws -> any Service

    var sources: [String: SourceFactory] = [:]
    var handlers: [String: HandlerFactory] = [:]
    var connectors: [(name: String, factory: ConnectorFactory)] = []
    var ownershipStores: [String: OwnershipStoreFactory] = [:]
    var messageStores: [String: MessageStoreFactory] = [:]
    var permissions: [String: PermissionFactory] = [:]
    var loggers: [String: LoggerFactory] = [:]
    var metrics: [String: MetricsPluginFactory] = [:]
    var endpoints: [String: EndpointFactory] = [:]
    /// The gateway's authenticators (`gateway.auth`); register with `register(authenticator:factory:)`.
    public var authenticators = AuthenticatorRegistry()

    /// A registry with every built-in type.
    public init() {
        self.registerBuiltIns()
    }

    /// A registry with no type at all, not even the built-ins (the authenticators keep theirs): for a binary that
    /// wants to allow only its own parts.
    public static var empty: StorkPlugins {
        var plugins = StorkPlugins()
        plugins.sources = [:]
        plugins.handlers = [:]
        plugins.ownershipStores = [:]
        plugins.messageStores = [:]
        plugins.permissions = [:]
        plugins.loggers = [:]
        plugins.metrics = [:]
        plugins.endpoints = [:]
        return plugins
    }

    // MARK: Registering

    /// Adds (or replaces) the resource source `type` (`resources.sources: [{type: NAME, …}]`).
    public mutating func register(source type: String, factory: @escaping SourceFactory) {
        self.sources[type] = factory
    }

    /// Adds (or replaces) the resource handler `type` (`resources.handler: {type: NAME, …}`).
    public mutating func register(handler type: String, factory: @escaping HandlerFactory) {
        self.handlers[type] = factory
    }

    /// Adds a connector, run for resources whose `kind` attribute is `name` (which must equal the connector's
    /// `name`); replaces a built-in one of the same name.
    public mutating func register(connector name: String, factory: @escaping ConnectorFactory) {
        self.connectors.removeAll { $0.name == name }
        self.connectors.append((name, factory))
    }

    /// Adds (or replaces) the ownership store for URLs `scheme:…` (`ownership.store: redis://…` → `redis`).
    public mutating func register(ownershipStore scheme: String, factory: @escaping OwnershipStoreFactory) {
        self.ownershipStores[scheme] = factory
    }

    /// Adds (or replaces) the message store `type` (`streaming.store: NAME` or `{type: NAME, …}`).
    public mutating func register(messageStore type: String, factory: @escaping MessageStoreFactory) {
        self.messageStores[type] = factory
    }

    /// Adds (or replaces) the gateway authenticator `type` (`gateway.auth: [{type: NAME, …}]`).
    public mutating func register(authenticator type: String, factory: @escaping AuthenticatorRegistry.Factory) {
        self.authenticators.register(type: type, factory: factory)
    }

    /// Adds (or replaces) the gateway permission `type` (`gateway.permissions: {type: NAME, …}`).
    public mutating func register(permission type: String, factory: @escaping PermissionFactory) {
        self.permissions[type] = factory
    }

    /// Adds (or replaces) the logger `type` (`logger: {type: NAME, …}`).
    public mutating func register(logger type: String, factory: @escaping LoggerFactory) {
        self.loggers[type] = factory
    }

    /// Adds (or replaces) the metrics backend `type` (`metrics: {type: NAME, …}`).
    public mutating func register(metrics type: String, factory: @escaping MetricsPluginFactory) {
        self.metrics[type] = factory
    }

    /// Adds (or replaces) the endpoint `type` (`endpoints: [{type: NAME, …}]`).
    public mutating func register(endpoint type: String, factory: @escaping EndpointFactory) {
        self.endpoints[type] = factory
    }

    // MARK: Looking up

    /// The names registered for `kind`, sorted.
    public func types(_ kind: Kind) -> [String] {
        switch kind {
        case .source: self.sources.keys.sorted()
        case .handler: self.handlers.keys.sorted()
        case .connector:
            Set(["websocket", "http-poll", "webhook"]).union(self.connectors.map(\.name)).sorted()
        case .ownershipStore: self.ownershipStores.keys.sorted()
        case .messageStore: self.messageStores.keys.sorted()
        case .authenticator: self.authenticators.types
        case .permission: self.permissions.keys.sorted()
        case .logger: self.loggers.keys.sorted()
        case .metrics: self.metrics.keys.sorted()
        case .endpoint: self.endpoints.keys.sorted()
        }
    }

    /// The error for a name nobody registered: `unknown source type 'ftp' (known: file, http)`.
    public func unknown(_ kind: Kind, _ type: String) -> StorkError {
        let known = self.types(kind)
        return StorkError(
            .invalidInput,
            "unknown \(kind.label) '\(type)' (known: \(known.isEmpty ? "none" : known.joined(separator: ", ")))"
        )
    }

    /// Runs `factory` with `selection`'s options; errors are prefixed with `place` and the type:
    /// `resources.sources[0] (accounts): 'count' must be a whole number from 1 to 1000`.
    func build<Part>(
        _ kind: Kind,
        _ selection: PluginSelection,
        place: String,
        in factories: [String: @Sendable (PluginOptions, StorkPluginContext) throws -> Part],
        context: StorkPluginContext
    ) throws -> Part {
        guard let factory = factories[selection.type] else {
            throw StorkError(.invalidInput, "\(place): \(self.unknown(kind, selection.type).message)")
        }
        do {
            return try factory(PluginOptions(selection.options), context)
        } catch let error as StorkError {
            throw Self.prefixed(error, "\(place) (\(selection.type))")
        } catch {
            throw StorkError(.invalidInput, "\(place) (\(selection.type)): \(error)", underlying: error)
        }
    }

    static func prefixed(_ error: StorkError, _ prefix: String) -> StorkError {
        var error = error
        error.message = "\(prefix): \(error.message)"
        return error
    }

    /// The resource source `selection` names.
    public func makeSource(
        _ selection: PluginSelection,
        place: String = "source",
        context: StorkPluginContext
    ) throws -> any ResourceSource {
        try self.build(.source, selection, place: place, in: self.sources, context: context)
    }

    /// The resource handler `selection` names.
    public func makeHandler(
        _ selection: PluginSelection,
        place: String = "resources.handler",
        context: StorkPluginContext
    ) throws -> any ResourceHandler {
        try self.build(.handler, selection, place: place, in: self.handlers, context: context)
    }

    /// The built-in connectors plus the registered ones (which replace built-ins of the same name).
    public func makeConnectorRegistry(context: StorkPluginContext) -> ConnectorRegistry {
        var registry = ConnectorRegistry.builtIn(httpClient: context.httpClient)
        for (_, factory) in self.connectors { registry.register(factory(context)) }
        return registry
    }

    /// The ownership store an `ownership.store` URL names, by its scheme (`sqlite:…` → `sqlite`).
    public func makeOwnershipStore(url: String, context: StorkPluginContext) throws -> any OwnershipStore {
        let scheme = Self.scheme(url)
        guard let factory = self.ownershipStores[scheme] else {
            throw StorkError(.invalidInput, "ownership.store: \(self.unknown(.ownershipStore, scheme).message)")
        }
        do {
            return try factory(url, context)
        } catch let error as StorkError {
            throw Self.prefixed(error, "ownership.store (\(scheme))")
        }
    }

    /// The part of a store URL before the first `:` (`memory` has none: the whole string).
    static func scheme(_ url: String) -> String {
        url.firstIndex(of: ":").map { String(url[..<$0]) } ?? url
    }

    /// The per-stream store maker `selection` names.
    public func makeMessageStore(
        _ selection: PluginSelection,
        place: String = "streaming.store",
        context: StorkPluginContext
    ) throws -> JetStream.StoreFactory {
        try self.build(.messageStore, selection, place: place, in: self.messageStores, context: context)
    }

    /// The gateway permissions `selection` names.
    public func makePermissions(
        _ selection: PluginSelection,
        place: String = "gateway.permissions",
        context: StorkPluginContext
    ) throws -> PermissionsPlugin {
        try self.build(.permission, selection, place: place, in: self.permissions, context: context)
    }

    /// The swift-log handler factory `selection` names, for `LoggingSystem.bootstrap`.
    public func makeLogHandlerFactory(
        _ selection: PluginSelection
    ) throws -> @Sendable (String) -> any Logging.LogHandler {
        guard let factory = self.loggers[selection.type] else {
            throw StorkError(.invalidInput, "logger: \(self.unknown(.logger, selection.type).message)")
        }
        do {
            return try factory(PluginOptions(selection.options))
        } catch let error as StorkError {
            throw Self.prefixed(error, "logger (\(selection.type))")
        }
    }

    /// The metrics backend `selection` names.
    public func makeMetrics(_ selection: PluginSelection, context: StorkPluginContext) throws -> MetricsPlugin {
        try self.build(.metrics, selection, place: "metrics", in: self.metrics, context: context)
    }

    /// The extra endpoint `selection` names.
    public func makeEndpoint(
        _ selection: PluginSelection,
        place: String = "endpoints",
        context: StorkPluginContext
    ) throws -> any Service {
        try self.build(.endpoint, selection, place: place, in: self.endpoints, context: context)
    }
}
