import Foundation
import StorkConnectors
import StorkGateway
import StorkCore
import StorkMembership
import StorkPlacement
import StorkResources
import StorkStreaming
import Yams

// MARK: - Loading: defaults < file < environment < flags

extension ServerConfiguration {
    /// Reads the configuration: the defaults, then the YAML file (if any), then `STORK_*` environment variables,
    /// then the command-line overrides. Any problem is a `StorkError(.invalidInput)` naming the key.
    public static func load(
        path: String?,
        environment: [String: String] = ProcessInfo.processInfo.environment,
        overrides: ConfigurationOverrides = .init(),
        plugins: StorkPlugins = StorkPlugins()
    ) throws -> ServerConfiguration {
        var configuration = ServerConfiguration()
        if let path {
            let text: String
            do {
                text = try String(contentsOfFile: path, encoding: .utf8)
            } catch {
                throw StorkError(.invalidInput, "cannot read the configuration file \(path)", underlying: error)
            }
            configuration = try Self.parse(yaml: text, environment: environment, file: path, plugins: plugins)
            configuration.gateway.directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
        }
        try configuration.apply(environment: environment)
        try configuration.apply(overrides)
        try configuration.validate(plugins: plugins)
        return configuration
    }

    /// Parses YAML text on top of the defaults. Plugin `type` names are checked against `plugins` (their options
    /// are checked when the server builds the part).
    public static func parse(
        yaml text: String,
        environment: [String: String] = [:],
        file: String = "configuration",
        plugins: StorkPlugins = StorkPlugins()
    ) throws -> ServerConfiguration {
        guard text.utf8.count <= 1 << 20 else { throw StorkError(.invalidInput, "\(file): larger than 1 MiB") }
        // `${VAR}` may stand anywhere, even unquoted inside a flow mapping where its braces would be YAML syntax:
        // swap each for a plain placeholder before parsing, and substitute after.
        let (protected, expressions) = ConfigValue.protectVariables(text)
        let root: Yams.Node?
        do {
            root = try Yams.compose(yaml: protected)
        } catch {
            throw StorkError(.invalidInput, "\(file): not valid YAML: \(error)")
        }
        var configuration = ServerConfiguration()
        guard let root else { return configuration }
        let document = ConfigNode(node: root, path: "", environment: environment, expressions: expressions)
        let top = try document.mapping(
            allowed: [
                "node", "cluster", "resources", "connectors", "membership", "ownership", "nats", "streaming", "gateway",
                "logger", "metrics", "endpoints",
            ]
        )
        if let node = top["node"] {
            let fields = try node.mapping(allowed: ["name", "bind", "advertise", "http", "seeds", "data", "nats"])
            if let value = fields["name"] { configuration.node.name = try value.string() }
            if let value = fields["bind"] { configuration.node.bind = try value.address() }
            if let value = fields["advertise"] { configuration.node.advertise = try value.address() }
            if let value = fields["http"] { configuration.node.http = try value.address() }
            if let value = fields["seeds"] { configuration.node.seeds = try value.addressList() }
            if let value = fields["data"] { configuration.node.data = try value.string() }
            if let value = fields["nats"] { configuration.node.nats = try value.optionalEndpoint() }
        }
        if let nats = top["nats"] {
            configuration.nats = try Self.nats(nats)
        }
        if let streaming = top["streaming"] {
            let fields = try streaming.mapping(allowed: ["store", "fileSync", "segmentMaxBytes", "sqlite", "postgres", "maxStreams"])
            if let value = fields["store"] {
                let selection = try value.pluginSelection(.messageStore, plugins: plugins)
                if let store = Streaming.Store(rawValue: selection.type), selection.options.isEmpty {
                    configuration.streaming.store = store
                } else {
                    configuration.streaming.customStore = selection
                }
            }
            if let value = fields["fileSync"] {
                let text = try value.string()
                configuration.streaming.fileSync = text == "always" ? nil : try value.duration()
            }
            if let value = fields["segmentMaxBytes"] {
                configuration.streaming.segmentMaxBytes = try value.integer(in: 4096...(1 << 34))
            }
            if let value = fields["sqlite"] { configuration.streaming.sqlite = try value.string() }
            if let value = fields["postgres"] {
                let url = try value.string()
                guard url.hasPrefix("postgres://") || url.hasPrefix("postgresql://") else {
                    throw value.error("expected postgres://user:password@host:port/database")
                }
                configuration.streaming.postgres = url
            }
            if let value = fields["maxStreams"] { configuration.streaming.maxStreams = try value.integer(in: 1...1_000_000) }
        }
        if let cluster = top["cluster"] {
            let fields = try cluster.mapping(allowed: ["name", "key"])
            if let value = fields["name"] { configuration.cluster.name = try value.string() }
            if let value = fields["key"] {
                let key = try value.optionalString()
                configuration.cluster.key = key?.isEmpty == true ? nil : key
            }
        }
        if let resources = top["resources"] {
            let fields = try resources.mapping(
                allowed: [
                    "sources", "handler", "placement", "cacheAllResources", "maxLengthOfTimeToRetryResourceFetching",
                    "replicas",
                ]
            )
            if let value = fields["sources"] { configuration.resources.sources = try Self.sources(value, plugins: plugins) }
            if let value = fields["handler"] { configuration.resources.handler = try Self.handler(value, plugins: plugins) }
            if let value = fields["placement"] {
                let name = try value.string()
                guard let strategy = PlacementStrategy(parsing: name) else {
                    throw value.error("unknown placement '\(name)'; expected default or ringpop")
                }
                configuration.resources.placement = strategy
            }
            if let value = fields["cacheAllResources"] { configuration.resources.cacheAllResources = try value.bool() }
            if let value = fields["replicas"] {
                let text = try value.string()
                guard let replicas = ReplicaRequirement(parsing: text) else {
                    throw value.error("expected a positive number of members or all, not '\(text)'")
                }
                configuration.resources.replicas = replicas
            }
            if let value = fields["maxLengthOfTimeToRetryResourceFetching"] {
                configuration.resources.maxLengthOfTimeToRetryResourceFetching = try value.duration()
            }
        }
        if let connectors = top["connectors"] {
            let fields = try connectors.mapping(allowed: ["enabled", "unknownKind", "secretsFile", "stopGracePeriod"])
            if let value = fields["enabled"] { configuration.connectors.enabled = try value.bool() }
            if let value = fields["unknownKind"] {
                let name = try value.string()
                guard let policy = ConnectorHandlerConfiguration.UnknownKind(rawValue: name) else {
                    throw value.error("unknown value '\(name)'; expected fail or handler")
                }
                configuration.connectors.unknownKind = policy
            }
            if let value = fields["secretsFile"] {
                let path = try value.optionalString()
                configuration.connectors.secretsFile = path?.isEmpty == true ? nil : path
            }
            if let value = fields["stopGracePeriod"] {
                configuration.connectors.stopGracePeriod = try value.duration()
            }
        }
        if let gateway = top["gateway"] { configuration.gateway = try Self.gateway(gateway, plugins: plugins) }
        if let logger = top["logger"] { configuration.logger = try logger.pluginSelection(.logger, plugins: plugins) }
        if let metrics = top["metrics"] { configuration.metrics = try metrics.pluginSelection(.metrics, plugins: plugins) }
        if let endpoints = top["endpoints"] {
            configuration.endpoints = try endpoints.sequence().map { try $0.pluginSelection(.endpoint, plugins: plugins) }
        }
        if let membership = top["membership"] {
            let fields = try membership.mapping(
                allowed: ["probeInterval", "probeTimeout", "indirectProbeTimeout", "suspicionMinimum", "pushPullInterval"]
            )
            if let value = fields["probeInterval"] { configuration.membership.probeInterval = try value.duration() }
            if let value = fields["probeTimeout"] { configuration.membership.probeTimeout = try value.duration() }
            if let value = fields["indirectProbeTimeout"] {
                configuration.membership.indirectProbeTimeout = try value.duration()
            }
            if let value = fields["suspicionMinimum"] { configuration.membership.suspicionMinimum = try value.duration() }
            if let value = fields["pushPullInterval"] { configuration.membership.pushPullInterval = try value.duration() }
        }
        if let ownership = top["ownership"] {
            let fields = try ownership.mapping(
                allowed: [
                    "mode", "store", "leaseDuration", "renewInterval", "renewDeadline", "acquireRetryInterval",
                    "storeTimeout",
                ]
            )
            if let value = fields["mode"] {
                let name = try value.string()
                guard let mode = Ownership.Mode(rawValue: name) else {
                    throw value.error("unknown ownership mode '\(name)'; expected gossip or lease")
                }
                configuration.ownership.mode = mode
            }
            if let value = fields["store"] { configuration.ownership.store = try value.string() }
            if let value = fields["leaseDuration"] { configuration.ownership.lease.duration = try value.duration() }
            if let value = fields["renewInterval"] { configuration.ownership.lease.renewInterval = try value.duration() }
            if let value = fields["renewDeadline"] { configuration.ownership.lease.renewDeadline = try value.duration() }
            if let value = fields["acquireRetryInterval"] {
                configuration.ownership.lease.acquireRetryInterval = try value.duration()
            }
            if let value = fields["storeTimeout"] { configuration.ownership.storeTimeout = try value.duration() }
        }
        return configuration
    }

    static func gateway(_ value: ConfigNode, plugins: StorkPlugins = StorkPlugins()) throws -> Gateway {
        var gateway = Gateway()
        gateway.enabled = true
        let fields = try value.mapping(
            allowed: [
                "enabled", "path", "auth", "permissions", "authTimeout", "maxAuthAttempts", "recoveryWindow",
                "recoveryMessages", "requestTimeout", "maxPendingRequests", "maxSubscriptions", "maxFrameBytes",
                "historyLimit", "presenceTimeout", "providers", "providerRefresh", "runners",
            ]
        )
        if let value = fields["enabled"] { gateway.enabled = try value.bool() }
        if let value = fields["path"] {
            let path = try value.string()
            guard path.hasPrefix("/"), !path.contains(" ") else { throw value.error("expected a path like /v1/ws") }
            gateway.settings.path = path
        }
        if let value = fields["auth"] {
            gateway.auth = try value.sequence().map { entry in
                let json = try entry.json()
                guard case .object(let object) = json, case .string? = object["type"] else {
                    throw entry.error("each authenticator needs a 'type' (open, users, jwt, http)")
                }
                return json
            }
        }
        if let value = fields["permissions"], let type = try value.anyMapping()["type"], try type.string() != "rules" {
            gateway.permissionsPlugin = try value.pluginSelection(.permission, plugins: plugins)
        } else if let value = fields["permissions"] {
            let permissions = try value.mapping(allowed: ["type", "file", "rules"])
            if let file = permissions["file"] { gateway.permissionsFile = try file.string() }
            if let rules = permissions["rules"] { gateway.permissionRules = .object(["rules": try rules.json()]) }
            if gateway.permissionsFile != nil, gateway.permissionRules != nil {
                throw value.error("give either 'file' or 'rules', not both")
            }
        }
        if let value = fields["authTimeout"] { gateway.settings.authTimeout = try value.duration() }
        if let value = fields["maxAuthAttempts"] { gateway.settings.maxAuthAttempts = try value.integer(in: 1...100) }
        if let value = fields["recoveryWindow"] { gateway.settings.recoveryWindow = try value.duration() }
        if let value = fields["recoveryMessages"] {
            gateway.settings.recoveryMessages = try value.integer(in: 1...1_000_000)
        }
        if let value = fields["requestTimeout"] { gateway.settings.requestTimeout = try value.duration() }
        if let value = fields["maxPendingRequests"] {
            gateway.settings.maxPendingRequests = try value.integer(in: 1...100_000)
        }
        if let value = fields["maxSubscriptions"] {
            gateway.settings.maxSubscriptionsPerSession = try value.integer(in: 1...1_000_000)
        }
        if let value = fields["maxFrameBytes"] { gateway.settings.maxFrameBytes = try value.integer(in: 1024...(64 << 20)) }
        if let value = fields["historyLimit"] { gateway.settings.historyLimit = try value.integer(in: 1...100_000) }
        if let value = fields["presenceTimeout"] { gateway.settings.presenceTimeout = try value.duration() }
        if let value = fields["providerRefresh"] { gateway.settings.providerRefresh = try value.duration() }
        if let value = fields["runners"] { gateway.runners = try value.string() }
        if let value = fields["providers"] {
            gateway.providers = try value.sequence().map { entry in
                let keys = try entry.mapping(allowed: ["name", "pattern", "type", "listen", "grace"])
                guard let name = try keys["name"]?.string(), let pattern = try keys["pattern"]?.string() else {
                    throw entry.error("a provider needs 'name' and 'pattern'")
                }
                guard Subject.isValidPattern(pattern) else { throw entry.error("'\(pattern)' is not a subject pattern") }
                var provider = Provider(name: name, pattern: pattern, type: try keys["type"]?.string() ?? "nats")
                provider.listen = try keys["listen"]?.string()
                if provider.type == "nats" {
                    let listen = provider.listen ?? "stork.listen.\(name)"
                    guard Subject.isValidLiteral(listen) else { throw entry.error("'listen' must be a subject") }
                    provider.listen = listen
                }
                if let grace = keys["grace"] { provider.grace = try grace.duration() }
                return provider
            }
            let names = gateway.providers.map(\.name)
            if Set(names).count != names.count { throw value.error("two providers have the same name") }
        }
        return gateway
    }

    static func sources(_ value: ConfigNode, plugins: StorkPlugins = StorkPlugins()) throws -> [Source] {
        var counts: [String: Int] = [:]
        return try value.sequence().map { item in
            // A registered type other than the built-ins: its own keys besides name and poll.
            if let typeNode = try item.anyMapping()["type"], try !["file", "http"].contains(typeNode.string()) {
                let selection = try item.pluginSelection(.source, plugins: plugins, excluding: ["name", "poll"])
                let fields = try item.anyMapping()
                counts[selection.type, default: 0] += 1
                let name = try fields["name"]?.string() ?? "\(selection.type)-\(counts[selection.type]!)"
                guard !name.isEmpty else { throw item.error("'name' must not be empty") }
                return Source(name: name, kind: .plugin(selection), poll: try fields["poll"]?.duration())
            }
            let fields = try item.mapping(allowed: ["type", "name", "path", "url", "poll", "reload", "headers", "timeout"])
            guard let typeNode = fields["type"] else { throw item.error("missing 'type' (file or http)") }
            let type = try typeNode.string()
            counts[type, default: 0] += 1
            let name = try fields["name"]?.string() ?? "\(type)-\(counts[type]!)"
            guard !name.isEmpty else { throw item.error("'name' must not be empty") }
            let poll = try fields["poll"]?.duration()
            switch type {
            case "file":
                guard let path = fields["path"] else { throw item.error("a file source needs 'path'") }
                for key in ["url", "headers", "timeout"] where fields[key] != nil {
                    throw fields[key]!.error("not a key of a file source")
                }
                return Source(
                    name: name,
                    kind: .file(path: try path.string(), reload: try fields["reload"]?.bool() ?? true),
                    poll: poll
                )
            case "http":
                guard let url = fields["url"] else { throw item.error("an http source needs 'url'") }
                if let path = fields["path"] { throw path.error("not a key of an http source") }
                if let reload = fields["reload"] { throw reload.error("not a key of an http source") }
                return Source(
                    name: name,
                    kind: .http(
                        url: try url.httpURL(),
                        headers: try fields["headers"]?.stringMap() ?? [:],
                        timeout: try fields["timeout"]?.duration() ?? .seconds(5)
                    ),
                    poll: poll
                )
            default:
                throw typeNode.error("unknown source type '\(type)'; expected file or http")
            }
        }
    }

    static func nats(_ value: ConfigNode) throws -> NATS {
        var nats = NATS()
        let fields = try value.mapping(
            allowed: [
                "token", "users", "maxPayload", "maxControlLine", "maxPending", "maxConnections", "pingInterval",
                "maxPingsOut", "authTimeout", "lameDuckDuration", "lameDuckGracePeriod",
            ]
        )
        if let value = fields["token"] {
            let token = try value.optionalString()
            nats.token = token?.isEmpty == true ? nil : token
        }
        if let value = fields["users"] {
            for item in try value.sequence() {
                let user = try item.mapping(allowed: ["user", "password"])
                guard let name = user["user"], let password = user["password"] else {
                    throw item.error("a user needs 'user' and 'password'")
                }
                let userName = try name.string()
                guard nats.users[userName] == nil else { throw name.error("user '\(userName)' given twice") }
                nats.users[userName] = try password.string()
            }
        }
        if let value = fields["maxPayload"] { nats.maxPayload = try value.integer(in: 1...(64 << 20)) }
        if let value = fields["maxControlLine"] { nats.maxControlLine = try value.integer(in: 256...(1 << 20)) }
        if let value = fields["maxPending"] { nats.maxPending = try value.integer(in: 1024...(1 << 34)) }
        if let value = fields["maxConnections"] { nats.maxConnections = try value.integer(in: 1...(1 << 24)) }
        if let value = fields["pingInterval"] { nats.pingInterval = try value.duration() }
        if let value = fields["maxPingsOut"] { nats.maxPingsOut = try value.integer(in: 1...1000) }
        if let value = fields["authTimeout"] { nats.authTimeout = try value.duration() }
        if let value = fields["lameDuckDuration"] { nats.lameDuckDuration = try value.duration() }
        if let value = fields["lameDuckGracePeriod"] { nats.lameDuckGracePeriod = try value.duration() }
        guard nats.lameDuckGracePeriod >= .zero, nats.lameDuckGracePeriod < nats.lameDuckDuration else {
            throw value.error("lameDuckGracePeriod must be at least 0 and shorter than lameDuckDuration")
        }
        return nats
    }

    static func handler(_ value: ConfigNode, plugins: StorkPlugins = StorkPlugins()) throws -> Handler {
        if let typeNode = try value.anyMapping()["type"], try !["sidecar", "log"].contains(typeNode.string()) {
            return .plugin(try value.pluginSelection(.handler, plugins: plugins))
        }
        let fields = try value.mapping(allowed: ["type", "url", "timeout", "headers"])
        guard let typeNode = fields["type"] else { throw value.error("missing 'type' (sidecar or log)") }
        switch try typeNode.string() {
        case "sidecar":
            guard let url = fields["url"] else { throw value.error("a sidecar handler needs 'url'") }
            return .sidecar(
                url: try url.httpURL(),
                timeout: try fields["timeout"]?.duration() ?? .seconds(10),
                headers: try fields["headers"]?.stringMap() ?? [:]
            )
        case "log":
            for key in ["url", "timeout", "headers"] where fields[key] != nil {
                throw fields[key]!.error("not a key of a log handler")
            }
            return .log
        case let other:
            throw typeNode.error("unknown handler type '\(other)'; expected sidecar or log")
        }
    }

    // MARK: Environment and flags

    mutating func apply(environment: [String: String]) throws {
        if let value = environment["STORK_NODE_NAME"], !value.isEmpty { self.node.name = value }
        if let value = environment["STORK_BIND"], !value.isEmpty {
            self.node.bind = try ConfigValue.address(value, path: "STORK_BIND")
        }
        if let value = environment["STORK_HTTP"], !value.isEmpty {
            self.node.http = try ConfigValue.address(value, path: "STORK_HTTP")
        }
        if let value = environment["STORK_SEEDS"] {
            self.node.seeds = try ConfigValue.addressList(value, path: "STORK_SEEDS")
        }
        if let value = environment["STORK_CLUSTER_KEY"], !value.isEmpty { self.cluster.key = value }
        if let value = environment["STORK_DATA"], !value.isEmpty { self.node.data = value }
        if let value = environment["STORK_STREAMING_POSTGRES"], !value.isEmpty { self.streaming.postgres = value }
        if let value = environment["STORK_CONNECTORS_SECRETS_FILE"], !value.isEmpty { self.connectors.secretsFile = value }
        if let value = environment["STORK_NATS"], !value.isEmpty {
            self.node.nats = try ConfigValue.optionalEndpoint(value, path: "STORK_NATS")
        }
        if let value = environment["STORK_OWNERSHIP_MODE"], !value.isEmpty {
            guard let mode = Ownership.Mode(rawValue: value) else {
                throw StorkError(.invalidInput, "STORK_OWNERSHIP_MODE: unknown mode '\(value)'; expected gossip or lease")
            }
            self.ownership.mode = mode
        }
        if let value = environment["STORK_OWNERSHIP_STORE"], !value.isEmpty { self.ownership.store = value }
    }

    mutating func apply(_ overrides: ConfigurationOverrides) throws {
        if let name = overrides.name { self.node.name = name }
        if let bind = overrides.bind { self.node.bind = try ConfigValue.address(bind, path: "--bind") }
        if let http = overrides.http { self.node.http = try ConfigValue.address(http, path: "--http") }
        if let seeds = overrides.seeds {
            self.node.seeds = try seeds.map { try ConfigValue.address($0, path: "--seeds") }
        }
        if let nats = overrides.nats { self.node.nats = try ConfigValue.optionalEndpoint(nats, path: "--nats") }
        if let data = overrides.data { self.node.data = data }
    }

    func validate(plugins: StorkPlugins = StorkPlugins()) throws {
        guard !self.node.name.isEmpty, self.node.name.utf8.count <= 255 else {
            throw StorkError(.invalidInput, "node.name must be 1 to 255 bytes")
        }
        guard !self.cluster.name.isEmpty, self.cluster.name.utf8.count <= 64 else {
            throw StorkError(.invalidInput, "cluster.name must be 1 to 64 bytes")
        }
        if self.ownership.mode == .lease {
            try self.ownership.lease.validate()
            guard self.ownership.storeTimeout > .zero, self.ownership.storeTimeout < self.ownership.lease.renewDeadline else {
                throw StorkError(.invalidInput, "ownership.storeTimeout must be positive and shorter than ownership.renewDeadline")
            }
            if let store = self.ownership.store {
                let scheme = StorkPlugins.scheme(store)
                let builtIn = store.hasPrefix("sqlite:") || store.hasPrefix("postgres://") || store.hasPrefix("postgresql://")
                if !builtIn, ["sqlite", "postgres", "postgresql"].contains(scheme) || !plugins.types(.ownershipStore).contains(scheme) {
                    throw StorkError(
                        .invalidInput,
                        "ownership.store must be sqlite:PATH, postgres://user:password@host:port/db or a registered store's URL (\(plugins.unknown(.ownershipStore, scheme).message))"
                    )
                }
            }
        }
        if self.streaming.customStore == nil, self.streaming.store == .postgres, self.streaming.postgres == nil {
            throw StorkError(.invalidInput, "streaming.store is postgres but streaming.postgres (the URL) is not set")
        }
        if self.nats.token != nil, !self.nats.users.isEmpty {
            throw StorkError(.invalidInput, "nats: give either 'token' or 'users', not both")
        }
        guard self.nats.pingInterval > .zero, self.nats.authTimeout > .zero else {
            throw StorkError(.invalidInput, "nats.pingInterval and nats.authTimeout must be positive")
        }
        if self.gateway.enabled, self.node.nats == nil {
            throw StorkError(.invalidInput, "gateway: needs the NATS endpoint (node.nats), whose router carries its messages")
        }
        if self.connectors.enabled, let file = self.connectors.secretsFile,
            !FileManager.default.isReadableFile(atPath: file)
        {
            throw StorkError(.invalidInput, "connectors.secretsFile: cannot read \(file)")
        }
        let names = self.resources.sources.map(\.name)
        if Set(names).count != names.count {
            throw StorkError(.invalidInput, "resources.sources: two sources have the same name")
        }
    }
}

// MARK: - Reading YAML nodes with their key path

struct ConfigNode {
    let node: Yams.Node
    let path: String
    let environment: [String: String]
    var expressions: [String] = []

    func error(_ message: String) -> StorkError {
        StorkError(.invalidInput, "\(self.path.isEmpty ? "configuration" : self.path): \(message)")
    }

    func child(_ key: String, _ node: Yams.Node) -> ConfigNode {
        ConfigNode(
            node: node,
            path: self.path.isEmpty ? key : "\(self.path).\(key)",
            environment: self.environment,
            expressions: self.expressions
        )
    }

    func mapping(allowed: [String]) throws -> [String: ConfigNode] {
        guard case .mapping(let mapping) = self.node else { throw self.error("expected a mapping of keys") }
        var result: [String: ConfigNode] = [:]
        for (key, value) in mapping {
            guard let name = key.string else { throw self.error("keys must be strings") }
            guard allowed.contains(name) else {
                let suggestion = allowed.min { ConfigValue.distance($0, name) < ConfigValue.distance($1, name) }
                let hint = suggestion.map { ConfigValue.distance($0, name) <= 2 ? " (did you mean '\($0)'?)" : "" } ?? ""
                throw self.child(name, value).error("unknown key\(hint)")
            }
            guard result[name] == nil else { throw self.child(name, value).error("given twice") }
            result[name] = self.child(name, value)
        }
        return result
    }

    func sequence() throws -> [ConfigNode] {
        guard case .sequence(let sequence) = self.node else { throw self.error("expected a list") }
        return sequence.enumerated().map { index, node in
            ConfigNode(node: node, path: "\(self.path)[\(index)]", environment: self.environment, expressions: self.expressions)
        }
    }

    func optionalString() throws -> String? {
        guard case .scalar(let scalar) = self.node else { throw self.error("expected a value") }
        if scalar.tag == Tag(.null), scalar.style == .plain, ["", "~", "null"].contains(scalar.string) { return nil }
        let restored = ConfigValue.restoreVariables(scalar.string, self.expressions)
        return try ConfigValue.substitute(restored, environment: self.environment, path: self.path)
    }

    func string() throws -> String {
        guard let value = try self.optionalString() else { throw self.error("expected a value, got null") }
        return value
    }

    func bool() throws -> Bool {
        switch try self.string().lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        case let other: throw self.error("expected true or false, got '\(other)'")
        }
    }

    func duration() throws -> Duration {
        try ConfigValue.duration(try self.string(), path: self.path)
    }

    func address() throws -> String {
        try ConfigValue.address(try self.string(), path: self.path)
    }

    /// An address, or `off` / `false` / empty for a feature turned off.
    func optionalEndpoint() throws -> String? {
        guard let text = try self.optionalString() else { return nil }
        return try ConfigValue.optionalEndpoint(text, path: self.path)
    }

    func integer(in range: ClosedRange<Int>) throws -> Int {
        let text = try self.string()
        guard let value = Int(text) else { throw self.error("expected a whole number, got '\(text)'") }
        guard range.contains(value) else {
            throw self.error("\(value) is out of range \(range.lowerBound)...\(range.upperBound)")
        }
        return value
    }

    func addressList() throws -> [String] {
        if case .scalar = self.node { return try ConfigValue.addressList(try self.string(), path: self.path) }
        return try self.sequence().map { try $0.address() }
    }

    func httpURL() throws -> String {
        let text = try self.string()
        guard let url = URL(string: text), ["http", "https"].contains(url.scheme?.lowercased() ?? ""),
            url.host != nil
        else {
            throw self.error("'\(text)' is not an http(s) URL")
        }
        return text.hasSuffix("/") ? String(text.dropLast()) : text
    }

    /// The node as JSON (scalars that read as numbers or booleans become them; `${VAR}` substituted in strings).
    func json(depth: Int = 0) throws -> JSONValue {
        guard depth < 64 else { throw self.error("nested too deeply") }
        switch self.node {
        case .scalar(let scalar):
            if scalar.style == .plain {
                if ["", "~", "null"].contains(scalar.string) { return .null }
                if ["true", "false"].contains(scalar.string) { return .bool(scalar.string == "true") }
                if let number = Double(scalar.string), scalar.string.first.map({ $0.isNumber || $0 == "-" }) == true {
                    return .number(number)
                }
            }
            return .string(try self.string())
        case .sequence:
            return .array(try self.sequence().map { try $0.json(depth: depth + 1) })
        case .mapping(let mapping):
            var object: [String: JSONValue] = [:]
            for (key, value) in mapping {
                guard let name = key.string else { throw self.error("keys must be strings") }
                object[name] = try self.child(name, value).json(depth: depth + 1)
            }
            return .object(object)
        case .alias:
            throw self.error("YAML aliases are not supported here")
        }
    }

    func stringMap() throws -> [String: String] {
        guard case .mapping(let mapping) = self.node else { throw self.error("expected a mapping") }
        var result: [String: String] = [:]
        for (key, value) in mapping {
            guard let name = key.string else { throw self.error("keys must be strings") }
            result[name] = try self.child(name, value).string()
        }
        return result
    }
}

enum ConfigValue {
    static let placeholderPrefix = "STORKVAR"

    /// Replaces every `${…}` with `STORKVAR<n>X`, returning the expressions in order.
    static func protectVariables(_ text: String) -> (String, [String]) {
        var expressions: [String] = []
        var result = ""
        var rest = Substring(text)
        while let start = rest.range(of: "${"), let end = rest[start.upperBound...].firstIndex(of: "}") {
            result += rest[..<start.lowerBound]
            expressions.append(String(rest[start.lowerBound...end]))
            result += "\(Self.placeholderPrefix)\(expressions.count - 1)X"
            rest = rest[rest.index(after: end)...]
        }
        return (result + rest, expressions)
    }

    static func restoreVariables(_ text: String, _ expressions: [String]) -> String {
        guard !expressions.isEmpty, text.contains(Self.placeholderPrefix) else { return text }
        var result = text
        for (index, expression) in expressions.enumerated().reversed() {
            result = result.replacingOccurrences(of: "\(Self.placeholderPrefix)\(index)X", with: expression)
        }
        return result
    }

    /// `${VAR}` and `${VAR:-default}` from the environment. An unset variable without a default is an error.
    static func substitute(_ text: String, environment: [String: String], path: String) throws -> String {
        guard text.contains("${") else { return text }
        var result = ""
        var rest = Substring(text)
        while let start = rest.range(of: "${") {
            result += rest[..<start.lowerBound]
            guard let end = rest[start.upperBound...].firstIndex(of: "}") else {
                throw StorkError(.invalidInput, "\(path): unterminated ${")
            }
            let expression = rest[start.upperBound..<end]
            let name: Substring
            var fallback: Substring?
            if let separator = expression.range(of: ":-") {
                name = expression[..<separator.lowerBound]
                fallback = expression[separator.upperBound...]
            } else {
                name = expression
            }
            guard !name.isEmpty, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }) else {
                throw StorkError(.invalidInput, "\(path): bad variable name in ${\(expression)}")
            }
            if let value = environment[String(name)], !(value.isEmpty && fallback != nil) {
                result += value
            } else if let fallback {
                result += fallback
            } else {
                result += ""
            }
            rest = rest[rest.index(after: end)...]
        }
        return result + rest
    }

    /// "500ms", "10s", "2m", "1h", or a number of seconds.
    static func duration(_ text: String, path: String) throws -> Duration {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]
        for (suffix, scale) in units where trimmed.hasSuffix(suffix) {
            let number = trimmed.dropLast(suffix.count)
            if let value = Double(number), value.isFinite, value >= 0, value * scale < 1e9 {
                return .nanoseconds(Int64(value * scale * 1e9))
            }
            // "5m" vs "5ms": only fall through when the number part does not parse.
        }
        if let value = Double(trimmed), value.isFinite, value >= 0, value < 1e9 {
            return .nanoseconds(Int64(value * 1e9))
        }
        throw StorkError(.invalidInput, "\(path): '\(text)' is not a duration (like 500ms, 10s, 2m)")
    }

    static func address(_ text: String, path: String) throws -> String {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard let colon = trimmed.lastIndex(of: ":"), let port = Int(trimmed[trimmed.index(after: colon)...]),
            (0...65_535).contains(port), colon > trimmed.startIndex
        else {
            throw StorkError(.invalidInput, "\(path): '\(text)' is not host:port")
        }
        return trimmed
    }

    static func optionalEndpoint(_ text: String, path: String) throws -> String? {
        if ["", "off", "false", "no", "none"].contains(text.lowercased()) { return nil }
        return try self.address(text, path: path)
    }

    static func addressList(_ text: String, path: String) throws -> [String] {
        try text.split(separator: ",").map { String($0) }.filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
            .map { try Self.address($0, path: path) }
    }

    static func distance(_ a: String, _ b: String) -> Int {
        let a = Array(a)
        let b = Array(b)
        var previous = Array(0...b.count)
        for i in 1...max(1, a.count) where !a.isEmpty {
            var current = [i] + Array(repeating: 0, count: b.count)
            for j in 1...max(1, b.count) where !b.isEmpty {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            previous = current
        }
        return a.isEmpty ? b.count : (b.isEmpty ? a.count : previous[b.count])
    }
}
