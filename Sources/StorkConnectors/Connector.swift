import AsyncHTTPClient
import Logging
import StorkBus
import StorkCore
import StorkResources

// MARK: - Connector

/// One kind of built-in work: what runs a resource whose `kind` attribute names it.
///
/// A connector is stateless between resources; everything one resource needs lives in `run`. `run` keeps the
/// resource alive by itself (it reconnects, retries, backs off) until ``ConnectorContext/stop`` fires, which is how
/// ``ConnectorHandler`` terminates it (a move, a removal, a drain): it then finishes what it started (a request in
/// flight, its acks), gives back what it did not start, and returns. A connector that has not returned within the
/// handler's ``ConnectorHandlerConfiguration/stopGracePeriod`` is cancelled; cancellation (also the handler's own) is
/// abrupt. If `run` returns or throws without being told to stop, the handler restarts it with backoff.
///
/// ```swift
/// struct EchoConnector: Connector {
///     let name = "echo"
///     func validate(_ resource: Resource) throws {
///         _ = try ConnectorAttributes(resource, kind: self.name).subject("subject")
///     }
///     func run(_ resource: Resource, context: ConnectorContext) async throws {
///         context.status.state(.connected)
///         await context.stop.wait()
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

    /// Runs the resource until `context.stop` fires (then finishes what is in flight and returns) or the calling task
    /// is cancelled (then returns at once).
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
    /// Clients of the bus: this node's, in process, and other servers' (connectors that consume streams use this
    /// node's unless a resource names another server); nil when the node runs no message server.
    public var bus: ConnectorBus?
    /// Fires when the connector is to stop (terminate, drain, shutdown): `run` finishes what it started and returns.
    /// Wait on it (``sleep(_:)``, ``untilStopped(_:)`` or `stop.wait()`) wherever `run` waits for long.
    public var stop: OneShotSignal

    public init(
        resource: ResourceContext,
        messaging: any StorkMessaging,
        status: ConnectorStatusReporter,
        secrets: ConnectorSecrets,
        clock: ConnectorClock,
        bus: ConnectorBus? = nil,
        stop: OneShotSignal = OneShotSignal()
    ) {
        self.resource = resource
        self.messaging = messaging
        self.status = status
        self.secrets = secrets
        self.clock = clock
        self.bus = bus
        self.stop = stop
    }

    public var logger: Logger { self.resource.logger }

    /// True once ``stop`` fired or the calling task was cancelled: `run` should wind down and return.
    public var isStopping: Bool { self.stop.isFired || Task.isCancelled }

    /// Waits `duration` on ``clock`` unless the connector is told to stop first; true when the whole duration passed,
    /// false when it stopped (or its task was cancelled).
    public func sleep(_ duration: Duration) async -> Bool {
        guard !self.isStopping else { return false }
        let clock = self.clock
        let slept = (try? await self.untilStopped { try await clock.sleep(duration) }) != nil
        return slept && !self.isStopping
    }

    /// Runs `body` until it returns, or until ``stop`` fires, which cancels it: for work that has nothing to finish
    /// (a connection attempt, a GET). Nil when stopped first; rethrows what `body` throws.
    public func untilStopped<Value: Sendable>(
        _ body: @escaping @Sendable () async throws -> Value
    ) async throws -> Value? {
        let stop = self.stop
        return try await withThrowingTaskGroup(of: Value?.self) { group in
            group.addTask { try await body() }
            group.addTask {
                await stop.wait()
                return nil
            }
            defer { group.cancelAll() }
            // The first child to end decides: the body's value (or error), or the stop (nil).
            return try await group.next() ?? nil
        }
    }
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

// MARK: - ConnectorBus

/// How connectors reach the bus: a client on this node's bus (no socket: what it publishes is routed at once, and it
/// sees what any node publishes), and, for a resource that names another server, a client over the network.
public struct ConnectorBus: Sendable {
    /// A client on this node's bus, named `name` (for logs and inboxes).
    public var local: @Sendable (_ name: String) -> any BusClient
    /// A client of the NATS server at `endpoint`; nil when this node cannot make one.
    public var remote: (@Sendable (_ endpoint: ConnectorNATSEndpoint, _ name: String) async throws -> any BusClient)?

    public init(
        local: @escaping @Sendable (_ name: String) -> any BusClient,
        remote: (@Sendable (_ endpoint: ConnectorNATSEndpoint, _ name: String) async throws -> any BusClient)? = nil
    ) {
        self.local = local
        self.remote = remote
    }

    /// Clients on `router`'s bus; no remote clients.
    public static func router(_ router: BusRouter) -> ConnectorBus {
        ConnectorBus(local: { name in LocalBusClient(router: router, name: name) })
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
