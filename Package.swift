// swift-tools-version:6.1
import PackageDescription

// `STORK_STRICT=1` (set by scripts/test in CI) turns every warning in Stork's own targets into an error.
// It is read here rather than passed as `-Xswiftc` so that dependencies keep building with their own settings.
let strict = Context.environment["STORK_STRICT"] == "1"
let storkSwiftSettings: [SwiftSetting] =
    strict ? [.unsafeFlags(["-warnings-as-errors"])] : []
// The message path (NATS connections, the bus router, the cluster transport and the bus between nodes) runs its
// exclusivity checks at compile time only in release builds: the dynamic checks cost about 6% of a node's CPU under
// load (perf, `stork bench nats --natsgo`). Debug builds, which the tests use, keep them.
let hotPathSwiftSettings: [SwiftSetting] =
    storkSwiftSettings + [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]
let package = Package(
    name: "Stork",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Stork", targets: ["Stork"]),
        .library(name: "StorkCore", targets: ["StorkCore"]),
        .library(name: "StorkPlacement", targets: ["StorkPlacement"]),
        .library(name: "StorkMembership", targets: ["StorkMembership"]),
        .library(name: "StorkResources", targets: ["StorkResources"]),
        .library(name: "StorkTestKit", targets: ["StorkTestKit"]),
        .library(name: "StorkCluster", targets: ["StorkCluster"]),
        .library(name: "StorkLeases", targets: ["StorkLeases"]),
        .library(name: "StorkStreaming", targets: ["StorkStreaming"]),
        .library(name: "StorkStreamStores", targets: ["StorkStreamStores"]),
        .library(name: "StorkSQLStreamStores", targets: ["StorkSQLStreamStores"]),
        .library(name: "StorkNATS", targets: ["StorkNATS"]),
        .library(name: "StorkRealtime", targets: ["StorkRealtime"]),
        .library(name: "StorkConnectors", targets: ["StorkConnectors"]),
        .library(name: "StorkGateway", targets: ["StorkGateway"]),
        .library(name: "StorkBus", targets: ["StorkBus"]),
        .library(name: "StorkBusCluster", targets: ["StorkBusCluster"]),
        .executable(name: "stork", targets: ["stork"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        .package(url: "https://github.com/vapor/jwt-kit.git", from: "5.7.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/vapor/sqlite-nio.git", from: "1.13.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
        .package(url: "https://github.com/hummingbird-project/swift-websocket.git", from: "1.6.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird-websocket.git", from: "2.8.1"),
    ],
    targets: [
        // MARK: - Pure cores (no I/O, no clocks, no tasks)
        .target(
            name: "StorkCore",
            dependencies: [
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "HeapModule", package: "swift-collections"),
            ],
            swiftSettings: storkSwiftSettings
        ),
        .target(
            name: "StorkPlacement",
            dependencies: ["StorkCore"],
            swiftSettings: storkSwiftSettings
        ),
        .target(
            name: "StorkMembership",
            dependencies: ["StorkCore"],
            swiftSettings: storkSwiftSettings
        ),
        .target(
            name: "StorkResources",
            dependencies: [
                "StorkCore",
                "StorkMembership",
                "StorkPlacement",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: storkSwiftSettings
        ),
        // MARK: - Streaming core: subjects, subscription index, streams, consumers, the message-store contract
        .target(
            name: "StorkStreaming",
            dependencies: [
                "StorkCore",
                .product(name: "DequeModule", package: "swift-collections"),
            ],
            swiftSettings: storkSwiftSettings
        ),
        // MARK: - Realtime gateway core (no I/O): authentication chain, users file, permission rules and their conditions
        .target(
            name: "StorkRealtime",
            dependencies: [
                "StorkCore",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "JWTKit", package: "jwt-kit"),
            ],
            swiftSettings: storkSwiftSettings
        ),
        // MARK: - Message stores that persist: file (segmented log), later SQLite and PostgreSQL
        .target(
            name: "StorkStreamStores",
            dependencies: [
                "StorkCore",
                "StorkStreaming",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: storkSwiftSettings
        ),
        // MARK: - Message stores in SQL databases: SQLite (one file, many streams) and PostgreSQL
        .target(
            name: "StorkSQLStreamStores",
            dependencies: [
                "StorkCore",
                "StorkStreaming",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "SQLiteNIO", package: "sqlite-nio"),
            ],
            swiftSettings: storkSwiftSettings
        ),
        // MARK: - NATS client protocol: codec (pure, fuzzed) and the server endpoint over NIO
        // MARK: - The node's message bus: subjects, the router and local receivers, request/reply, durable streams
        .target(
            name: "StorkBus",
            dependencies: [
                "StorkCore",
                "StorkStreaming",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: hotPathSwiftSettings
        ),
        // MARK: - The NATS protocol adapter over the bus: server, connections, parser, Stork's own client
        .target(
            name: "StorkNATS",
            dependencies: [
                "StorkBus",
                "StorkCore",
                "StorkStreaming",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: hotPathSwiftSettings
        ),
        // MARK: - Cluster transport: wire codec, UDP + TCP over NIO, peer authentication
        .target(
            name: "StorkCluster",
            dependencies: [
                "StorkCore",
                "StorkMembership",
                "StorkResources",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
            ],
            swiftSettings: hotPathSwiftSettings
        ),
        // MARK: - Ownership stores for lease mode: SQLite (one host) and PostgreSQL (a cluster)
        .target(
            name: "StorkLeases",
            dependencies: [
                "StorkCore",
                "StorkResources",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "SQLiteNIO", package: "sqlite-nio"),
            ],
            swiftSettings: storkSwiftSettings
        ),
        // MARK: - Connectors: resources whose `kind` attribute names built-in work (WebSocket, HTTP polling, webhooks)
        .target(
            name: "StorkConnectors",
            dependencies: [
                "StorkCore",
                "StorkBus",
                "StorkResources",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "WSClient", package: "swift-websocket"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: storkSwiftSettings
        ),
        // MARK: - The message bus across the cluster: interest exchange and forwarding between nodes' routers
        .target(
            name: "StorkBusCluster",
            dependencies: [
                "StorkBus",
                "StorkCore",
                "StorkResources",
                "StorkStreaming",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: hotPathSwiftSettings
        ),
        // MARK: - Realtime gateway I/O: WebSocket + HTTP endpoints, providers and runners
        .target(
            name: "StorkGateway",
            dependencies: [
                "StorkBus",
                "StorkConnectors",
                "StorkCore",
                "StorkRealtime",
                "StorkResources",
                "StorkStreaming",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
                .product(name: "WSClient", package: "swift-websocket"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
            ],
            swiftSettings: storkSwiftSettings
        ),
        // MARK: - The server: configuration, sources, handlers, admin API, composition
        .target(
            name: "StorkServer",
            dependencies: [
                "StorkBus",
                "StorkBusCluster",
                "StorkCore",
                "StorkCluster",
                "StorkConnectors",
                "StorkGateway",
                "StorkLeases",
                "StorkMembership",
                "StorkNATS",
                "StorkPlacement",
                "StorkRealtime",
                "StorkResources",
                "StorkSQLStreamStores",
                "StorkStreamStores",
                "StorkStreaming",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: storkSwiftSettings
        ),
        // MARK: - The live demo: a football match feed over WebSockets, its players as resources, the web page
        .target(
            name: "StorkDemo",
            dependencies: [
                "StorkCore",
                "StorkNATS",
                "StorkServer",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
                .product(name: "WSClient", package: "swift-websocket"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: storkSwiftSettings
        ),
        // MARK: - Umbrella library for Swift users: `import Stork`
        .target(
            name: "Stork",
            dependencies: ["StorkCore", "StorkMembership", "StorkPlacement", "StorkResources"],
            swiftSettings: storkSwiftSettings
        ),
        // MARK: - Deterministic simulator, shared by tests, benchmarks and `stork sim`
        .target(
            name: "StorkTestKit",
            dependencies: [
                "StorkCore",
                "StorkStreaming",
                "StorkMembership",
                "StorkPlacement",
                "StorkResources",
                .product(name: "HeapModule", package: "swift-collections"),
            ],
            swiftSettings: storkSwiftSettings
        ),
        // MARK: - Command-line tool
        .executableTarget(
            name: "stork",
            dependencies: [
                "Stork",
                "StorkDemo",
                "StorkLeases",
                "StorkRealtime",
                "StorkServer",
                "StorkTestKit",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: storkSwiftSettings
        ),
        // MARK: - Examples (built with the package so that they keep compiling)
        .executableTarget(
            name: "stork-example-embedded",
            dependencies: [
                "Stork",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Examples/Embedded",
            swiftSettings: storkSwiftSettings
        ),
        // A `stork serve` of one's own: a custom source, authenticator and connector registered by name.
        .executableTarget(
            name: "stork-example-plugins",
            dependencies: ["StorkConnectors", "StorkCore", "StorkRealtime", "StorkResources", "StorkServer"],
            path: "Examples/CustomPlugins",
            exclude: ["stork.yaml"],
            swiftSettings: storkSwiftSettings
        ),
        // MARK: - Tests
        .testTarget(name: "StorkCoreTests", dependencies: ["StorkCore"], swiftSettings: storkSwiftSettings),
        .testTarget(
            name: "StorkClusterTests",
            dependencies: [
                "StorkCluster",
                "StorkTestKit",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: storkSwiftSettings
        ),
        .testTarget(
            name: "StorkServerTests",
            dependencies: [
                "StorkServer",
                "StorkConnectors",
                "StorkTestKit",
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: storkSwiftSettings
        ),
        .testTarget(
            name: "StorkConnectorsTests",
            dependencies: [
                "StorkConnectors",
                "StorkNATS",
                "StorkStreaming",
                "StorkTestKit",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: storkSwiftSettings
        ),
        .testTarget(
            name: "StorkLeasesTests",
            dependencies: ["StorkLeases", "StorkTestKit", .product(name: "Logging", package: "swift-log")],
            swiftSettings: storkSwiftSettings
        ),
        .testTarget(
            name: "StorkStreamingTests",
            dependencies: ["StorkStreaming", "StorkStreamStores", "StorkTestKit"],
            swiftSettings: storkSwiftSettings
        ),
        .testTarget(
            name: "StorkSQLStreamStoresTests",
            dependencies: [
                "StorkCore",
                "StorkSQLStreamStores",
                "StorkStreaming",
                "StorkTestKit",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "SQLiteNIO", package: "sqlite-nio"),
            ],
            swiftSettings: storkSwiftSettings
        ),
        .testTarget(
            name: "StorkNATSTests",
            dependencies: [
                "StorkBus",
                "StorkCore",
                "StorkNATS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: storkSwiftSettings
        ),
        .testTarget(
            name: "StorkBusTests",
            dependencies: [
                "StorkBus",
                "StorkBusCluster",
                "StorkCluster",
                "StorkCore",
                "StorkNATS",
                "StorkResources",
                "StorkStreaming",
                "StorkTestKit",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: storkSwiftSettings
        ),
        .testTarget(
            name: "StorkGatewayTests",
            dependencies: [
                "StorkCluster",
                "StorkGateway",
                "StorkNATS",
                "StorkRealtime",
                "StorkResources",
                "StorkTestKit",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
                .product(name: "WSClient", package: "swift-websocket"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
            ],
            swiftSettings: storkSwiftSettings
        ),
        .testTarget(
            name: "StorkRealtimeTests",
            dependencies: [
                "StorkRealtime",
                "StorkCore",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "CryptoExtras", package: "swift-crypto"),
                .product(name: "JWTKit", package: "jwt-kit"),
            ],
            swiftSettings: storkSwiftSettings
        ),
        .testTarget(
            name: "StorkPlacementTests",
            dependencies: ["StorkPlacement"],
            swiftSettings: storkSwiftSettings
        ),
        .testTarget(
            name: "StorkMembershipTests",
            dependencies: ["StorkMembership"],
            swiftSettings: storkSwiftSettings
        ),
        .testTarget(
            name: "StorkResourcesTests",
            dependencies: ["StorkResources", "StorkTestKit"],
            swiftSettings: storkSwiftSettings
        ),
        .testTarget(
            name: "StorkSimulationTests",
            dependencies: ["StorkTestKit"],
            swiftSettings: storkSwiftSettings
        ),
        .testTarget(
            name: "StorkDemoTests",
            dependencies: [
                "StorkCore",
                "StorkDemo",
                "StorkTestKit",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "WSClient", package: "swift-websocket"),
            ],
            swiftSettings: storkSwiftSettings
        ),
        .testTarget(
            name: "StorkCLITests",
            dependencies: [
                "stork",
                "StorkRealtime",
                "StorkServer",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
            ],
            swiftSettings: storkSwiftSettings
        ),
    ],
    swiftLanguageModes: [.v6]
)
