import AsyncHTTPClient
import Foundation
import Hummingbird
import Logging
import Prometheus
import ServiceLifecycle
import StorkCluster
import StorkConnectors
import StorkBus
import StorkBusCluster
import StorkCore
import StorkGateway
import StorkLeases
import StorkNATS
import StorkRealtime
import StorkResources
import StorkStreamStores
import StorkStreaming

// MARK: - StorkServer
//
// The composition root of `stork serve`: configuration → cluster transport, resource manager (handler, sources),
// admin HTTP API, run as one ServiceGroup. Start order: transport, resource manager, HTTP; on SIGTERM or
// `stork drain` the group shuts down in reverse: the HTTP server stops, the node hands every resource off and
// leaves, the transport closes.

/// One running Stork node, built from a `ServerConfiguration`; its pluggable parts (sources, handler, connectors,
/// stores, authenticators, permissions, metrics, endpoints) come from `plugins` by the names the configuration gives.
public struct StorkServer: Sendable {
    public var configuration: ServerConfiguration
    public var plugins: StorkPlugins
    public var logger: Logger
    /// Swift providers for `gateway.providers` entries whose `type` names one.
    public var gatewayProviders: [String: any GatewayProvider] = [:]

    public init(
        configuration: ServerConfiguration,
        plugins: StorkPlugins = StorkPlugins(),
        logger: Logger = Logger(label: "stork")
    ) {
        self.configuration = configuration
        self.plugins = plugins
        self.logger = logger
    }

    /// Runs until SIGTERM / SIGINT (graceful), a drain, or cancellation.
    public func run(installSignalHandlers: Bool = true) async throws {
        let configuration = self.configuration
        var logger = self.logger
        logger[metadataKey: "stork.node"] = "\(configuration.node.name)"
        try FileManager.default.createDirectory(atPath: configuration.node.data, withIntermediateDirectories: true)

        var transportConfiguration = ClusterTransportConfiguration(
            bind: configuration.node.bind,
            clusterName: configuration.cluster.name,
            clusterKey: configuration.cluster.key
        )
        transportConfiguration.advertise = configuration.node.advertise
        let transport = try await NIOClusterTransport.start(configuration: transportConfiguration, logger: logger)
        let httpClient = HTTPClient(eventLoopGroupProvider: .singleton)
        defer {
            transport.close()
        }

        let plugins = self.plugins
        let nats = try configuration.node.nats.map { address in
            try NATSServer(configuration: configuration.natsServerConfiguration(address: address), logger: logger)
        }
        let context = StorkPluginContext(
            logger: logger,
            httpClient: httpClient,
            node: configuration.node.name,
            cluster: configuration.cluster.name,
            dataDirectory: configuration.node.data,
            environment: ProcessInfo.processInfo.environment,
            messaging: nats.map { RouterMessaging(router: $0.router) }
        )
        // Durable streams behind the JetStream API, on the NATS endpoint's router; file stores under node.data.
        let jetstream = nats.map { nats in
            nats.jetstream = true
            var jetstreamConfiguration = JetStream.Configuration(directory: "\(configuration.node.data)/jetstream")
            jetstreamConfiguration.maxStreams = configuration.streaming.maxStreams
            return JetStream(
                configuration: jetstreamConfiguration,
                router: nats.router,
                storeFactory: configuration.makeMessageStoreFactory(plugins: plugins, context: context),
                logger: logger
            )
        }
        var managerConfiguration = configuration.resourceManagerConfiguration()
        managerConfiguration.messaging = context.messaging
        if let url = configuration.ownershipStoreURL {
            let store = try plugins.makeOwnershipStore(url: url, context: context)
            managerConfiguration.ownershipStore = store
            logger.info("lease ownership", metadata: ["stork.store": "\(store.description)"])
        }
        // Connector metrics (stork_connector_*) go to this node's own Prometheus registry, served on /metrics with
        // the rest: no process-wide metrics bootstrap, so that several nodes can run in one process.
        let metrics = try plugins.makeMetrics(configuration.metrics, context: context)
        // The realtime gateway shares the node's HTTP port: its WebSocket endpoint and HTTP routes beside the admin API.
        // Its rules file is watched and reloaded; its providers run as connectors where they are placed.
        var gateway: Gateway?
        var permissionsService: (any Service)?
        if configuration.gateway.enabled, let nats {
            do {
                let permissions = try configuration.makePermissions(plugins: plugins, context: context)
                gateway = Gateway(
                    configuration: configuration.gateway.settings,
                    node: configuration.node.name,
                    router: nats.router,
                    jetstream: jetstream,
                    authentication: try await configuration.makeAuthenticationChain(
                        registry: plugins.authenticators,
                        httpClient: httpClient
                    ),
                    permissions: permissions.rules,
                    providers: try configuration.makeProviderRegistrations(swiftProviders: self.gatewayProviders),
                    runners: try configuration.gateway.runners.map {
                        try Gateway.loadRunners(directory: configuration.gateway.resolve($0))
                    } ?? [:],
                    httpClient: httpClient,
                    logger: logger
                )
                permissionsService = permissions.service
            } catch {
                // A mistake in the gateway's files must be reported, not crash on the HTTP client's deinit check.
                try? await httpClient.shutdown()
                throw error
            }
        }
        let baseHandler = try configuration.makeHandler(plugins: plugins, context: context)
        let connectors = configuration.makeConnectorHandler(
            httpClient: httpClient,
            registry: plugins.makeConnectorRegistry(context: context),
            fallback: baseHandler,
            metricsFactory: metrics.factory,
            bus: nats.map { Self.connectorBus(router: $0.router) },
            extra: (gateway.map { [ProviderConnector(gateway: $0), RunnerConnector(gateway: $0)] } ?? [])
                + (jetstream.map { [StreamConnector(jetstream: $0)] } ?? []),
            logger: logger
        )
        let handler: any ResourceHandler = connectors.map { $0 as any ResourceHandler } ?? baseHandler
        let manager = ResourceManager(
            configuration: managerConfiguration,
            handler: handler,
            sources: try configuration.makeSourceRegistrations(plugins: plugins, context: context),
            transport: transport,
            logger: logger
        )
        // Every stream is a resource. Streams on PostgreSQL are placed: placement picks the node that serves each;
        // their list is kept in PostgreSQL too, so that they are placed again after the whole cluster restarted. The
        // others are kept on their node, their resource pinned there, so every node can answer for them.
        var streamRestorer: PlacedStreamRestorer?
        var streamRecorder: KeptStreamRecorder?
        if let jetstream {
            let catalog = try configuration.streaming.postgres.map { url in
                try PlacedStreamCatalog(url: url, cluster: configuration.cluster.name, logger: logger)
            }
            jetstream.attach(placement: .cluster(configuration: configuration, manager: manager, catalog: catalog))
            if let catalog {
                streamRestorer = PlacedStreamRestorer(catalog: catalog, manager: manager, jetstream: jetstream, logger: logger)
            }
            streamRecorder = KeptStreamRecorder(
                manager: manager,
                jetstream: jetstream,
                node: configuration.node.name,
                logger: logger
            )
        }
        // The bus joins this node's router to the other nodes' (every subscriber sees every node's messages); it
        // needs the manager, which needs the gateway's connectors: the gateway is attached to both once they exist.
        var bus: BusCluster<ContinuousClock>?
        if let nats {
            var busConfiguration = BusClusterConfiguration()
            busConfiguration.clientURL = configuration.advertisedNATSAddress
            let cluster = BusCluster(network: manager, router: nats.router, configuration: busConfiguration, logger: logger)
            gateway?.attach(interest: BusGatewayInterest(bus: cluster), resources: manager)
            bus = cluster
        }
        let (host, port) = try Self.hostAndPort(configuration.node.http)
        // Moves are recorded from the moment the manager starts, not when the dashboard first asks.
        let moves = MoveRecorder(manager: manager)
        let keptStreamNames: (@Sendable () -> [String])? = jetstream.map { jetstream in
            { @Sendable in jetstream.keptStreams().map(\.config.name) }
        }
        let drain = NodeDrain(manager: manager, nats: nats, trapsSignal: installSignalHandlers)
        let adminRouter = AdminAPI.router(
            manager: manager,
            nats: nats,
            extraMetrics: [TransportMetrics(transport: transport)] + (nats.map { [BusMetrics(bus: bus, nats: $0)] } ?? []),
            connectors: connectors?.board,
            metricsRegistry: metrics.prometheus,
            extraStats: (bus.map { [BusStatsSource(bus: $0)] } ?? []) + (gateway.map { [GatewayStatsSource(gateway: $0)] } ?? []),
            moves: moves,
            clusterName: configuration.cluster.name,
            drain: { drain.request() },
            keptStreams: keptStreamNames
        )
        gateway?.addHTTPRoutes(to: adminRouter)
        let app = Application(
            router: adminRouter,
            server: gateway.map { .http1WebSocketUpgrade(webSocketRouter: $0.webSocketRouter()) } ?? .http1(),
            configuration: ApplicationConfiguration(address: .hostname(host, port: port), serverName: "stork"),
            logger: logger
        )
        logger.info(
            "starting",
            metadata: [
                "stork.cluster": "\(transport.address)", "stork.http": "\(configuration.node.http)",
                "stork.seeds": "\(configuration.node.seeds)", "stork.nats": "\(configuration.node.nats ?? "off")",
                "stork.connectors": "\(connectors.map { $0.registry.kinds.joined(separator: ",") } ?? "off")",
            ]
        )
        // Endpoints start last and stop first: the NATS endpoint and the HTTP API close before the node hands its
        // resources off. The connector handler owns the connector tasks: it starts before the manager and stops
        // after it, once the manager terminated (and so cancelled) every connector.
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let connectors { services.append(.init(service: connectors)) }
        services.append(.init(service: manager, successTerminationBehavior: .gracefullyShutdownGroup))
        services.append(.init(service: moves))
        if let nats {
            services.append(
                .init(service: LifecycleEventPublisher(manager: manager, router: nats.router, node: configuration.node.name))
            )
        }
        if let jetstream { services.append(.init(service: jetstream)) }
        if let streamRestorer { services.append(.init(service: streamRestorer)) }
        if let streamRecorder { services.append(.init(service: streamRecorder)) }
        if let nats {
            services.append(.init(service: NATSEndpointService(nats: nats, jetstream: jetstream, restorer: streamRestorer)))
        }
        if let bus { services.append(.init(service: bus)) }
        if let bus, let nats { services.append(.init(service: ConnectURLsService(nats: nats, bus: bus))) }
        services.append(.init(service: drain))
        if let permissionsService { services.append(.init(service: permissionsService)) }
        if let gateway { services.append(.init(service: gateway)) }
        for (index, endpoint) in configuration.endpoints.enumerated() {
            services.append(.init(service: try plugins.makeEndpoint(endpoint, place: "endpoints[\(index)]", context: context)))
        }
        services.append(.init(service: app))
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: services,
                gracefulShutdownSignals: installSignalHandlers ? [.sigterm, .sigint] : [],
                logger: logger
            )
        )
        do {
            try await group.run()
        } catch {
            try? await httpClient.shutdown()
            await managerConfiguration.ownershipStore?.close()
            throw error
        }
        try? await httpClient.shutdown()
        await managerConfiguration.ownershipStore?.close()
        logger.info("stopped")
    }

    /// How this node's connectors reach the bus: in process on `router`, and over NATS for a resource that names
    /// another server (`server: nats://…`).
    static func connectorBus(router: BusRouter) -> ConnectorBus {
        ConnectorBus(
            local: { name in LocalBusClient(router: router, name: name) },
            remote: { endpoint, name in
                var options = NATSClient.Options()
                options.name = name
                options.token = endpoint.token
                options.user = endpoint.user
                options.password = endpoint.password
                return try await NATSClient.connect(host: endpoint.host, port: endpoint.port, options: options)
            }
        )
    }

    public static func hostAndPort(_ address: String) throws -> (String, Int) {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else {
            throw StorkError(.invalidInput, "'\(address)' is not host:port")
        }
        return (String(address[..<colon]), port)
    }
}

/// The gateway's numbers for `/v1/stats` (the dashboard's rates).
struct GatewayStatsSource: AdminStatsSource {
    let gateway: Gateway
    var name: String { "gateway" }

    func stats() -> AdminStats {
        let statistics = self.gateway.statistics()
        return AdminStats(
            counters: [
                "published": Double(statistics.published), "deliveries": Double(statistics.deliveries),
                "logins": Double(statistics.logins), "loginFailures": Double(statistics.loginFailures),
                "denied": Double(statistics.denied),
            ],
            gauges: [
                "connections": Double(statistics.connections), "sessions": Double(statistics.sessions),
                "subscriptions": Double(statistics.subscriptions),
            ]
        )
    }
}

/// The transport's counters as Prometheus samples.
struct TransportMetrics: AdminMetricsSource {
    let transport: NIOClusterTransport

    func samples() -> [MetricSample] {
        let statistics = self.transport.statistics
        var samples = [
            MetricSample(name: "stork_gossip_datagrams_total", labels: ["direction": "sent"],
                value: Double(statistics.datagramsSent), help: "Membership datagrams (UDP)."),
            MetricSample(name: "stork_gossip_datagrams_total", labels: ["direction": "received"],
                value: Double(statistics.datagramsReceived), help: "Membership datagrams (UDP)."),
            MetricSample(name: "stork_cluster_frames_total", labels: ["direction": "sent"],
                value: Double(statistics.framesSent), help: "Cluster frames (TCP)."),
            MetricSample(name: "stork_cluster_frames_total", labels: ["direction": "received"],
                value: Double(statistics.framesReceived), help: "Cluster frames (TCP)."),
            MetricSample(name: "stork_cluster_bytes_total", labels: ["direction": "sent"],
                value: Double(statistics.bytesSent), help: "Bytes of cluster traffic (UDP and TCP)."),
            MetricSample(name: "stork_cluster_bytes_total", labels: ["direction": "received"],
                value: Double(statistics.bytesReceived), help: "Bytes of cluster traffic (UDP and TCP)."),
            MetricSample(name: "stork_cluster_send_queue_drops_total", value: Double(statistics.queueDrops),
                help: "Frames dropped because a peer's send queue was full."),
            MetricSample(name: "stork_cluster_connection_failures_total", value: Double(statistics.connectionFailures),
                help: "Failed connections to peers."),
        ]
        for code in WireError.Code.allCases {
            samples.append(
                MetricSample(name: "stork_frames_rejected_total", labels: ["reason": code.rawValue],
                    value: Double(statistics.rejected[code, default: 0]),
                    help: "Frames and datagrams dropped as malformed, oversized, foreign, forged or replayed.")
            )
        }
        return samples
    }
}
