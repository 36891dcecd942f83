import Foundation
import Logging
import StorkConnectors
import StorkGateway
import StorkCore
import StorkMembership
import StorkBus
import StorkNATS
import StorkPlacement
import StorkResources
import StorkSQLStreamStores
import StorkStreamStores
import StorkStreaming

// MARK: - ServerConfiguration
//
// What `stork serve` runs. Every key is documented in Docs/configuration.md; every field has a working default, so
// that no configuration at all runs a single node on loopback.

/// The configuration of one `stork serve` process.
public struct ServerConfiguration: Sendable, Hashable {
    public struct Node: Sendable, Hashable {
        /// Unique per node; placement hashes it.
        public var name = ServerConfiguration.defaultNodeName()
        /// Cluster address, UDP and TCP.
        public var bind = "127.0.0.1:7946"
        /// The address other nodes use to reach this one (default: `bind`).
        public var advertise: String?
        /// Admin HTTP API.
        public var http = "127.0.0.1:8080"
        /// Addresses of live members to join through; may include this node's own.
        public var seeds: [String] = []
        /// Local state directory.
        public var data = "./stork-data"
        /// The NATS client endpoint (host:port), nil when turned off (`nats: off`).
        public var nats: String? = "127.0.0.1:4222"
    }

    /// Durable streams (the `streaming:` section): where streams keep their messages unless a stream names its own
    /// store (`stork_store` in its configuration).
    public struct Streaming: Sendable, Hashable {
        public enum Store: String, Sendable, Hashable, CaseIterable {
            case file, memory, sqlite, postgres
        }

        /// The store of streams with file storage that do not name one.
        public var store: Store = .file
        /// File store: fsync after every batch (`always`), or at most every this long (the default, 100 ms; a
        /// message is on disk in the page cache when acknowledged, so it survives kill -9 of the process).
        public var fileSync: Duration? = .milliseconds(100)
        /// File store: the largest segment file.
        public var segmentMaxBytes = 16 * 1024 * 1024
        /// SQLite store: the database file (default `{node.data}/streams.db`).
        public var sqlite: String?
        /// PostgreSQL store: `postgres://user:password@host:port/database`.
        public var postgres: String?
        /// A registered message store (`store: NAME` or `store: {type: NAME, …}` naming a type registered in
        /// `StorkPlugins`): used instead of `store` when set.
        public var customStore: PluginSelection?
        /// Streams at most.
        public var maxStreams = 10_000
    }

    /// The NATS endpoint's protocol limits and authentication (the `nats:` section).
    public struct NATS: Sendable, Hashable {
        /// Clients must send this `auth_token` in CONNECT.
        public var token: String?
        /// Clients must send one of these `user`/`pass` pairs in CONNECT (user → password).
        public var users: [String: String] = [:]
        public var maxPayload = 1_048_576
        public var maxControlLine = 4096
        public var maxPending = 64 * 1024 * 1024
        public var maxConnections = 65536
        public var pingInterval: Duration = .seconds(120)
        public var maxPingsOut = 2
        public var authTimeout: Duration = .seconds(2)
        /// Lame-duck mode (`stork drain`, SIGUSR2): clients are closed spread over this long …
        public var lameDuckDuration: Duration = .seconds(30)
        /// … after this long first.
        public var lameDuckGracePeriod: Duration = .seconds(10)
    }

    public struct Cluster: Sendable, Hashable {
        public var name = "stork"
        /// With a key, all cluster traffic is authenticated (HMAC-SHA256).
        public var key: String?
    }

    public enum SourceKind: Sendable, Hashable {
        /// A JSON or YAML file, reloaded when it changes.
        case file(path: String, reload: Bool)
        /// An HTTP URL, polled.
        case http(url: String, headers: [String: String], timeout: Duration)
        /// A type registered in `StorkPlugins` (`{type: NAME, …}`), with the entry's other keys as options.
        case plugin(PluginSelection)
    }

    public struct Source: Sendable, Hashable {
        public var name: String
        public var kind: SourceKind
        public var poll: Duration?
    }

    public enum Handler: Sendable, Hashable {
        /// Calls the user's app: POST/DELETE {url}/resources/{id}.
        case sidecar(url: String, timeout: Duration, headers: [String: String])
        /// Logs handle and terminate; always succeeds.
        case log
        /// A type registered in `StorkPlugins` (`{type: NAME, …}`), with the entry's other keys as options.
        case plugin(PluginSelection)
    }

    public struct Resources: Sendable, Hashable {
        public var sources: [Source] = []
        public var handler: Handler = .log
        public var placement: PlacementStrategy = .rendezvous
        public var cacheAllResources = true
        public var maxLengthOfTimeToRetryResourceFetching: Duration = .seconds(60)
        /// How many members must hold an allocate/deallocate before it answers (`2`, any positive number, or `all`).
        public var replicas: ReplicaRequirement = .members(2)
    }

    /// Who may run a resource: `gossip` (placement on the gossiped view) or `lease` (placement plus a lease with a
    /// fencing token in an ownership store).
    public struct Ownership: Sendable, Hashable {
        public enum Mode: String, Sendable, Hashable {
            case gossip, lease
        }

        public var mode: Mode = .gossip
        /// `sqlite:PATH` or `postgres://…`; in lease mode without a store, `sqlite:{node.data}/leases.db`.
        public var store: String?
        public var lease = LeaseSettings()
        /// How long one store operation may take before it counts as failed.
        public var storeTimeout: Duration = .seconds(2)
    }

    /// Built-in connectors (the `connectors:` section): a resource whose `kind` attribute names one (`websocket`,
    /// `http-poll`) runs it; every other resource goes to `resources.handler`. Docs/connectors.md has the kinds.
    public struct Connectors: Sendable, Hashable {
        /// Run connectors (true), or hand every resource to `resources.handler` (false).
        public var enabled = true
        /// A resource whose `kind` names no connector: `fail` (its handle fails with an error naming the known
        /// kinds, and is retried) or `handler` (it goes to `resources.handler`).
        public var unknownKind: ConnectorHandlerConfiguration.UnknownKind = .fail
        /// A file of secrets for `{"secret": "NAME"}` references in resource attributes: a JSON object or
        /// `NAME=value` lines. `STORK_SECRET_<NAME>` environment variables are looked at first.
        public var secretsFile: String?
        /// How long a connector told to stop (the resource moved, was removed or changed; the node drains) may take
        /// to finish what it started before it is cancelled.
        public var stopGracePeriod: Duration = .seconds(30)
    }

    /// The realtime gateway (the `gateway:` section): WebSocket and HTTP endpoints for apps and browsers on the
    /// node's HTTP port. Docs/gateway.md documents every key.
    public struct Gateway: Sendable, Hashable {
        /// Off unless the section turns it on (it needs the NATS endpoint: its messages go through the same router).
        public var enabled = false
        public var settings = GatewayConfiguration()
        /// The authenticators, in order (`{type: open}`, `{type: users, file: …}`): the first that answers decides.
        public var auth: [JSONValue] = [.object(["type": .string("open")])]
        /// The permission rules file (YAML or JSON), reloaded when it changes.
        public var permissionsFile: String?
        /// Rules given inline (`permissions: {rules: [...]}`), when there is no file.
        public var permissionRules: JSONValue?
        /// Another permission type than `rules` (`permissions: {type: open}`, or a type registered in
        /// `StorkPlugins`); when set, `permissionsFile` and `permissionRules` are not used.
        public var permissionsPlugin: PluginSelection?
        /// The configuration file's directory: relative paths in `auth` entries and `permissions.file` are
        /// resolved against it (nil: against the working directory).
        public var directory: String?

        /// `path` as the gateway opens it: absolute as given, relative to the configuration file's directory.
        public func resolve(_ path: String) -> String {
            guard let directory = self.directory, !path.hasPrefix("/") else { return path }
            return URL(fileURLWithPath: directory).appendingPathComponent(path).path
        }

        /// Listening providers (`providers:`): each `{name, pattern, type: nats, listen, grace}` or a Swift type.
        public var providers: [Provider] = []
        /// A directory of runner definitions (`*.json`, Docs/runners.md) that clients may open.
        public var runners: String?
    }

    public struct Provider: Sendable, Hashable {
        public var name: String
        public var pattern: String
        /// `nats` (a NATS client on `listen`), or the name of a Swift provider the server was given.
        public var type: String
        public var listen: String?
        public var grace: Duration = .seconds(5)
    }

    public var node = Node()
    public var cluster = Cluster()
    public var gateway = Gateway()
    public var connectors = Connectors()
    public var resources = Resources()
    public var membership = MembershipSettings()
    public var ownership = Ownership()
    public var nats = NATS()
    public var streaming = Streaming()
    /// The process's logger (`logger: {type: stdout, format: json, level: info}`); nil: text on standard error at
    /// the command's `--log-level`. Used by `StorkServer.serve`, which bootstraps swift-log once per process.
    public var logger: PluginSelection?
    /// The metrics backend (`metrics: {type: prometheus}`, served on `/metrics`; `none` turns connector metrics off).
    public var metrics = PluginSelection(type: "prometheus")
    /// Extra endpoints registered in `StorkPlugins` (`endpoints: [{type: NAME, …}]`): services that start after the
    /// resource manager and stop before it. The built-in endpoints have their own keys (`node.nats`, `node.http`,
    /// `gateway`).
    public var endpoints: [PluginSelection] = []

    public init() {}

    static func defaultNodeName() -> String {
        let host = ProcessInfo.processInfo.hostName
        return host.isEmpty || host == "localhost" ? "stork-1" : host
    }

    /// The resource manager's configuration for this server.
    public func resourceManagerConfiguration() -> ResourceManagerConfiguration {
        var configuration = ResourceManagerConfiguration(name: self.node.name)
        configuration.seeds = self.node.seeds
        configuration.node.membership = self.membership
        configuration.node.placement = self.resources.placement
        configuration.cacheAllResources = self.resources.cacheAllResources
        configuration.maxLengthOfTimeToRetryResourceFetching = self.resources.maxLengthOfTimeToRetryResourceFetching
        configuration.node.replicas = self.resources.replicas
        if self.ownership.mode == .lease {
            configuration.node.orchestrator.ownership = .lease(self.ownership.lease)
            configuration.ownershipStoreTimeout = self.ownership.storeTimeout
        }
        return configuration
    }

    /// The NATS endpoint's settings for listening on `address` (host:port).
    public func natsServerConfiguration(address: String) throws -> NATSServerConfiguration {
        var result = NATSServerConfiguration()
        let (host, port) = try StorkServer.hostAndPort(address)
        result.host = host
        result.port = port
        result.serverName = self.node.name
        result.maxPayload = self.nats.maxPayload
        result.maxControlLine = self.nats.maxControlLine
        result.maxPending = self.nats.maxPending
        result.maxConnections = self.nats.maxConnections
        result.pingInterval = self.nats.pingInterval
        result.maxPingsOut = self.nats.maxPingsOut
        result.authTimeout = self.nats.authTimeout
        result.lameDuckDuration = self.nats.lameDuckDuration
        result.lameDuckGracePeriod = self.nats.lameDuckGracePeriod
        if let token = self.nats.token {
            result.authentication = .token(token)
        } else if !self.nats.users.isEmpty {
            result.authentication = .users(self.nats.users)
        }
        return result
    }

    /// Where other nodes tell NATS clients to connect to this one (`connect_urls`): `node.nats`, with a wildcard host
    /// (`0.0.0.0`, `::`) replaced by the host of `node.advertise` (or `node.bind`). Nil without a NATS endpoint.
    public var advertisedNATSAddress: String? {
        guard let nats = self.node.nats, let (host, port) = try? StorkServer.hostAndPort(nats) else { return nil }
        guard ["0.0.0.0", "::", "[::]", ""].contains(host) else { return nats }
        let cluster = self.node.advertise ?? self.node.bind
        guard let (clusterHost, _) = try? StorkServer.hostAndPort(cluster) else { return nats }
        return "\(clusterHost):\(port)"
    }

    /// The ownership store URL in force (lease mode), with the default applied.
    public var ownershipStoreURL: String? {
        guard self.ownership.mode == .lease else { return nil }
        return self.ownership.store ?? "sqlite:\(self.node.data)/leases.db"
    }
}

/// Values from the command line, which win over everything else.
public struct ConfigurationOverrides: Sendable, Hashable {
    public var name: String?
    public var bind: String?
    public var http: String?
    public var seeds: [String]?
    /// `--nats`: host:port, or `off`.
    public var nats: String?
    /// `--data`: the local state directory.
    public var data: String?

    public init(
        name: String? = nil,
        bind: String? = nil,
        http: String? = nil,
        seeds: [String]? = nil,
        nats: String? = nil,
        data: String? = nil
    ) {
        self.name = name
        self.bind = bind
        self.http = http
        self.seeds = seeds
        self.nats = nats
        self.data = data
    }
}

// MARK: - Message stores

extension ServerConfiguration {
    /// Makes each stream's store through `plugins`: the one the stream names (`stork_store`), else
    /// `streaming.customStore`, else `streaming.store`. The built-in stores get their options from the `streaming`
    /// section.
    public func makeMessageStoreFactory(
        plugins: StorkPlugins = StorkPlugins(),
        context: StorkPluginContext
    ) -> JetStream.StoreFactory {
        let configuration = self
        return { config, directory in
            let selection = configuration.messageStoreSelection(config.storkStore)
            let make = try plugins.makeMessageStore(selection, place: "stream \(config.name): store", context: context)
            return try make(config, directory)
        }
    }

    /// The type of store a stream is kept in: memory for `storage: memory` without a `stork_store` (as JetStream
    /// makes it), else the store its `stork_store` or the configuration names.
    public func streamStoreType(_ config: StreamConfig) -> String {
        config.isInMemory ? "memory" : self.messageStoreSelection(config.storkStore).type
    }

    /// The message store a stream gets: `name` (a stream's `stork_store`) or the configured default, with the
    /// options the `streaming` section gives it.
    public func messageStoreSelection(_ name: String? = nil) -> PluginSelection {
        let type = name ?? self.streaming.customStore?.type ?? self.streaming.store.rawValue
        if let custom = self.streaming.customStore, custom.type == type { return custom }
        switch Streaming.Store(rawValue: type) {
        case .file?:
            return PluginSelection(
                type: type,
                options: [
                    "segmentMaxBytes": .number(Double(self.streaming.segmentMaxBytes)),
                    "fileSync": self.streaming.fileSync.map { JSONValue.number($0.secondsDouble) } ?? JSONValue.string("always"),
                ]
            )
        case .sqlite?:
            return PluginSelection(type: type, options: ["path": .string(self.streaming.sqlite ?? "\(self.node.data)/streams.db")])
        case .postgres?:
            return PluginSelection(type: type, options: self.streaming.postgres.map { ["url": .string($0)] } ?? [:])
        case .memory?, nil:
            return PluginSelection(type: type)
        }
    }
}
