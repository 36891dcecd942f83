import AsyncHTTPClient
import Logging
import StorkCore
import StorkResources

// MARK: - Connector

/// One kind of built-in work: what runs a resource whose `kind` attribute names it.
///
/// A connector is stateless between resources; everything one resource needs lives in `run`. `run` keeps the
/// resource alive by itself (it reconnects, retries, backs off) and returns only when its task is cancelled, which is
/// how ``ConnectorHandler`` terminates it. If it returns or throws anyway, the handler restarts it with backoff.
///
/// ```swift
/// struct EchoConnector: Connector {
///     let name = "echo"
///     func validate(_ resource: Resource) throws {
///         _ = try ConnectorAttributes(resource, kind: self.name).subject("subject")
///     }
///     func run(_ resource: Resource, context: ConnectorContext) async throws {
///         context.status.state(.connected)
///         try await Task.sleep(for: .seconds(1_000_000_000))
///     }
/// }
/// var registry = ConnectorRegistry.builtIn(httpClient: client)
/// registry.register(EchoConnector())
/// ```
public protocol Connector: Sendable {
    /// The value of the `kind` attribute this connector runs, e.g. `websocket`.
    var name: String { get }

    /// Checks the resource's attributes and throws a `StorkError(.invalidInput)` that names the bad attribute.
    /// Called in `handle`, before anything starts: a failure is retried with backoff like any failed handle.
    func validate(_ resource: Resource) throws

    /// Runs the resource until the calling task is cancelled.
    func run(_ resource: Resource, context: ConnectorContext) async throws
}

// MARK: - ConnectorContext

/// What a running connector gets: where to publish, where to report, how to resolve secrets and to wait.
public struct ConnectorContext: Sendable {
    /// The handle call's context: node, attempt, fencing token, a logger with the resource id.
    public var resource: ResourceContext
    /// The node's message server.
    public var messaging: any StorkMessaging
    /// Reports the connector's state and counts to the status board and to metrics.
    public var status: ConnectorStatusReporter
    /// Resolves `{"secret": "NAME"}` references in attributes.
    public var secrets: ConnectorSecrets
    /// The clock connectors wait on (backoff, poll intervals): tests inject one that does not wait.
    public var clock: ConnectorClock
    /// This node's own NATS endpoint as a client reaches it (connectors that consume streams connect to it unless
    /// a resource names another server); nil when the handler was not told.
    public var nats: ConnectorNATSEndpoint?

    public init(
        resource: ResourceContext,
        messaging: any StorkMessaging,
        status: ConnectorStatusReporter,
        secrets: ConnectorSecrets,
        clock: ConnectorClock,
        nats: ConnectorNATSEndpoint? = nil
    ) {
        self.resource = resource
        self.messaging = messaging
        self.status = status
        self.secrets = secrets
        self.clock = clock
        self.nats = nats
    }

    public var logger: Logger { self.resource.logger }
}

// MARK: - ConnectorRegistry

/// The connectors a node knows, by kind name.
///
/// ``builtIn(httpClient:)`` has `websocket`, `http-poll` and `webhook`; a Swift user registers their own kinds (or replaces a
/// built-in one) with ``register(_:)`` before handing the registry to ``ConnectorHandler``.
public struct ConnectorRegistry: Sendable {
    private var connectors: [String: any Connector] = [:]

    /// An empty registry.
    public init() {}

    /// The registry with every built-in kind: `websocket`, `http-poll` (which polls with `httpClient`) and `webhook`
    /// (which posts with it).
    public static func builtIn(httpClient: HTTPClient) -> ConnectorRegistry {
        var registry = ConnectorRegistry()
        registry.register(WebSocketConnector())
        registry.register(HTTPPollConnector(client: httpClient))
        registry.register(WebhookConnector(client: httpClient))
        return registry
    }

    /// Adds a connector under its ``Connector/name``, replacing one registered under the same name.
    public mutating func register(_ connector: any Connector) {
        self.connectors[connector.name] = connector
    }

    /// Removes the connector of a kind, if any.
    public mutating func remove(_ name: String) {
        self.connectors[name] = nil
    }

    /// The connector registered for `kind`.
    public subscript(kind kind: String) -> (any Connector)? {
        self.connectors[kind]
    }

    /// The registered kinds, sorted.
    public var kinds: [String] {
        self.connectors.keys.sorted()
    }
}

// MARK: - ConnectorNATSEndpoint

/// A NATS endpoint as a client reaches it: where, and how to log in.
public struct ConnectorNATSEndpoint: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int
    /// `auth_token`, when the endpoint requires a token.
    public var token: String?
    /// `user` and `pass`, when the endpoint requires users.
    public var user: String?
    public var password: String?

    public init(host: String, port: Int, token: String? = nil, user: String? = nil, password: String? = nil) {
        self.host = host
        self.port = port
        self.token = token
        self.user = user
        self.password = password
    }

    /// `nats://host:port` (never the credentials).
    public var description: String { "nats://\(self.host):\(self.port)" }
}

extension StorkError.Code {
    /// A connector's connection or poll failed.
    public static let connectorFailed = StorkError.Code("connector-failed")
}
