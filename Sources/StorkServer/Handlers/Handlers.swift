import AsyncHTTPClient
import Foundation
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import StorkConnectors
import StorkCore
import StorkResources

// MARK: - Sidecar

/// Lets an app in any language handle resources: Stork calls it over HTTP.
///
/// handle: `POST {url}/resources/{id}` with the resource as JSON; 2xx means handled, anything else (or a timeout)
/// is a failure that Stork retries with backoff. terminate: `DELETE {url}/resources/{id}`. Headers: `Stork-Node`,
/// `Stork-Attempt`, `Stork-Reason` (terminate), and `Stork-Fencing-Token` when leases are on.
public struct SidecarHandler: ResourceHandler {
    public var url: String
    public var timeout: Duration
    public var headers: [String: String]
    let client: HTTPClient

    public init(url: String, timeout: Duration = .seconds(10), headers: [String: String] = [:], client: HTTPClient) {
        self.url = url.hasSuffix("/") ? String(url.dropLast()) : url
        self.timeout = timeout
        self.headers = headers
        self.client = client
    }

    func endpoint(_ id: ResourceID) -> String {
        let allowed = CharacterSet.urlPathAllowed.subtracting(CharacterSet(charactersIn: "/?#"))
        let segment = id.rawValue.addingPercentEncoding(withAllowedCharacters: allowed)
        return "\(self.url)/resources/\(segment ?? id.rawValue)"
    }

    func call(
        _ method: HTTPMethod,
        _ resource: Resource,
        context: ResourceContext,
        reason: TerminationReason?
    ) async throws {
        var request = HTTPClientRequest(url: self.endpoint(resource.id))
        request.method = method
        for (name, value) in self.headers { request.headers.replaceOrAdd(name: name, value: value) }
        request.headers.replaceOrAdd(name: "Stork-Node", value: context.node.name)
        request.headers.replaceOrAdd(name: "Stork-Attempt", value: String(context.attempt))
        if let token = context.fencingToken {
            request.headers.replaceOrAdd(name: "Stork-Fencing-Token", value: String(token))
        }
        if let reason { request.headers.replaceOrAdd(name: "Stork-Reason", value: reason.rawValue) }
        if method == .POST {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            request.headers.replaceOrAdd(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: try encoder.encode(resource)))
        }
        let response: HTTPClientResponse
        do {
            response = try await self.client.execute(request, timeout: .nanoseconds(self.timeout.nanosecondsClamped))
        } catch {
            throw StorkError(.handlerFailed, "\(method) \(self.endpoint(resource.id)) failed", underlying: error)
        }
        // Read (a bounded amount of) the body so that the connection can be reused.
        _ = try? await response.body.collect(upTo: 1 << 20)
        guard (200..<300).contains(response.status.code) else {
            throw StorkError(.handlerFailed, "\(method) \(self.endpoint(resource.id)) answered \(response.status.code)")
        }
    }

    public func handle(_ resource: Resource, context: ResourceContext) async throws {
        try await self.call(.POST, resource, context: context, reason: nil)
    }

    public func terminate(_ resource: Resource, reason: TerminationReason, context: ResourceContext) async throws {
        try await self.call(.DELETE, resource, context: context, reason: reason)
    }
}

// MARK: - Log

/// Logs handle and terminate and always succeeds: for trying Stork out.
public struct LogHandler: ResourceHandler {
    public init() {}

    public func handle(_ resource: Resource, context: ResourceContext) async throws {
        context.logger.info("handle", metadata: ["stork.attempt": "\(context.attempt)"])
    }

    public func terminate(_ resource: Resource, reason: TerminationReason, context: ResourceContext) async throws {
        context.logger.info("terminate", metadata: ["stork.reason": "\(reason.rawValue)"])
    }
}

// MARK: - From configuration

extension ServerConfiguration {
    /// The sources this configuration names, built through `plugins`, ready for the resource manager. Errors name
    /// the entry: `resources.sources[1] (accounts): 'count' is required`.
    public func makeSourceRegistrations(
        plugins: StorkPlugins = StorkPlugins(),
        context: StorkPluginContext
    ) throws -> [SourceRegistration] {
        try self.resources.sources.enumerated().map { index, source in
            SourceRegistration(
                name: source.name,
                source: try plugins.makeSource(source.kind.selection, place: "resources.sources[\(index)]", context: context),
                pollInterval: source.poll
            )
        }
    }

    /// The connector handler of this configuration, with `fallback` for resources without `kind`; nil when
    /// connectors are turned off (`connectors.enabled: false`). Run it as a service beside the resource manager.
    /// `registry` has the connectors by kind (default: the built-ins; `StorkPlugins.makeConnectorRegistry` adds the
    /// registered ones).
    public func makeConnectorHandler(
        httpClient: HTTPClient,
        registry: ConnectorRegistry? = nil,
        fallback: any ResourceHandler,
        metricsFactory: (any MetricsFactory)?,
        bus: ConnectorBus? = nil,
        environment: [String: String] = ProcessInfo.processInfo.environment,
        extra: [any Connector] = [],
        logger: Logger
    ) -> ConnectorHandler? {
        // The gateway's providers and runners are connectors too: with `connectors.enabled: false` they still run, and
        // every other resource goes to the handler.
        guard self.connectors.enabled || !extra.isEmpty else { return nil }
        var connectors =
            self.connectors.enabled ? (registry ?? ConnectorRegistry.builtIn(httpClient: httpClient)) : ConnectorRegistry()
        for connector in extra { connectors.register(connector) }
        var configuration = ConnectorHandlerConfiguration()
        configuration.unknownKind = self.connectors.enabled ? self.connectors.unknownKind : .handler
        configuration.secrets = ConnectorSecrets(environment: environment, file: self.connectors.secretsFile)
        configuration.metricsFactory = metricsFactory
        configuration.bus = bus
        configuration.stopGracePeriod = self.connectors.stopGracePeriod
        return ConnectorHandler(
            registry: connectors,
            fallback: fallback,
            configuration: configuration,
            logger: logger
        )
    }

    /// The handler this configuration names (`resources.handler`), built through `plugins`.
    public func makeHandler(
        plugins: StorkPlugins = StorkPlugins(),
        context: StorkPluginContext
    ) throws -> any ResourceHandler {
        try plugins.makeHandler(self.resources.handler.selection, context: context)
    }
}
