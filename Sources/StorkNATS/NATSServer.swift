import Foundation
import Logging
import NIOCore
import StorkBus
import NIOPosix
import ServiceLifecycle
import Synchronization

// MARK: - NATSServer

/// The NATS client endpoint: accepts TCP connections, speaks the NATS protocol, routes messages through its
/// ``BusRouter`` (which the rest of Stork uses to publish and subscribe from inside the server).
///
/// A `Service`: `run()` listens until graceful shutdown or cancellation, then closes every connection.
public final class NATSServer: Service, Sendable {
    /// The protocol version clients see. nats-py enables its modern JetStream API from 2.9 on (by minor number).
    public static let compatibleVersion = "2.10.0"

    public let configuration: NATSServerConfiguration
    public let router: BusRouter
    public let serverID: String
    let logger: Logger
    private let group: any EventLoopGroup
    private let startedWallClock = Date()
    private let started = ContinuousClock.now

    private struct Registry {
        var connections: [UInt64: NATSClientConnection] = [:]
        var nextID: UInt64 = 1
        var totalConnections = 0
        var slowConsumers = 0
        var closedInMessages = 0
        var closedInBytes = 0
        var closedOutMessages = 0
        var closedOutBytes = 0
    }

    private struct Listening {
        var address: SocketAddress?
        var failure: (any Error)?
        var waiters: [CheckedContinuation<SocketAddress, any Error>] = []
    }

    private let registry = Mutex(Registry())
    private let listening = Mutex(Listening())

    /// What INFO tells clients about the cluster.
    private struct Advertised {
        var connectURLs: [String] = []
        var lameDuck = false
        var listener: (any Channel)?
    }

    private let advertised = Mutex(Advertised())
    /// Whether JetStream is offered (set when the streaming layer attaches to this server).
    private let jetstreamEnabled = Atomic<Bool>(false)
    /// Times a publishing client was stalled because a subscriber it published to was congested (flow control).
    private let producerStalls = Atomic<Int>(0)

    func noteStall() { self.producerStalls.wrappingAdd(1, ordering: .relaxed) }

    /// Times a publishing client was stalled (it stopped reading until a congested subscriber drained).
    public var stalls: Int { self.producerStalls.load(ordering: .relaxed) }

    public init(
        configuration: NATSServerConfiguration,
        router: BusRouter = BusRouter(),
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "stork.nats")
    ) {
        self.configuration = configuration
        self.router = router
        self.group = eventLoopGroup
        self.logger = logger
        self.serverID = Self.makeServerID()
    }

    /// Whether `INFO` advertises JetStream.
    public var jetstream: Bool {
        get { self.jetstreamEnabled.load(ordering: .relaxed) }
        set { self.jetstreamEnabled.store(newValue, ordering: .relaxed) }
    }

    // MARK: Running

    public func run() async throws {
        let bootstrap = ServerBootstrap(group: self.group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.writeBufferWaterMark, value: .init(low: 256 * 1024, high: 1024 * 1024))
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .childChannelOption(
                .recvAllocator,
                value: AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 16 * 1024, maximum: 1024 * 1024)
            )
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(NATSConnectionHandler(server: self))
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.bind(host: self.configuration.host, port: self.configuration.port).get()
        } catch {
            self.finishListening(.failure(error))
            throw StorkNATSError.bindFailed(
                "\(self.configuration.host):\(self.configuration.port)",
                underlying: error
            )
        }
        let address = channel.localAddress!
        let lameDuck = self.advertised.withLock { state in
            state.listener = channel
            return state.lameDuck
        }
        // Lame duck before the listener existed: close it at once.
        if lameDuck { try? await channel.close() }
        self.finishListening(.success(address))
        self.logger.info("NATS endpoint listening", metadata: ["nats.address": "\(address)"])

        try? await gracefulShutdown()

        try? await channel.close()
        let connections = self.registry.withLock { Array($0.connections.values) }
        for connection in connections {
            connection.flush()
            try? await connection.channel.close()
        }
        self.logger.info("NATS endpoint stopped")
    }

    /// The address the server listens on, once it does (useful with port 0).
    public func waitUntilListening() async throws -> SocketAddress {
        try await withCheckedThrowingContinuation { continuation in
            let ready: Result<SocketAddress, any Error>? = self.listening.withLock { state in
                if let address = state.address { return .success(address) }
                if let failure = state.failure { return .failure(failure) }
                state.waiters.append(continuation)
                return nil
            }
            if let ready { continuation.resume(with: ready) }
        }
    }

    private func finishListening(_ result: Result<SocketAddress, any Error>) {
        let waiters = self.listening.withLock { state in
            switch result {
            case .success(let address): state.address = address
            case .failure(let error): state.failure = error
            }
            defer { state.waiters.removeAll() }
            return state.waiters
        }
        for waiter in waiters { waiter.resume(with: result) }
    }

    // MARK: Connections

    func register(_ channel: any Channel) -> NATSClientConnection? {
        self.registry.withLock { registry in
            guard registry.connections.count < self.configuration.maxConnections else { return nil }
            let connection = NATSClientConnection(
                id: registry.nextID,
                channel: channel,
                maxPending: self.configuration.maxPending,
                now: .now,
                wallClock: Date().timeIntervalSince1970
            )
            registry.nextID += 1
            registry.totalConnections += 1
            registry.connections[connection.id] = connection
            return connection
        }
    }

    func dropSubscriptions(of connection: NATSClientConnection) {
        for subscription in connection.markClosed() {
            self.router.remove(subscription)
        }
    }

    func unregister(_ connection: NATSClientConnection) {
        self.dropSubscriptions(of: connection)
        let snapshot = connection.snapshot()
        let slow = connection.slowConsumer.load(ordering: .relaxed)
        self.registry.withLock { registry in
            registry.connections[connection.id] = nil
            registry.closedInMessages += snapshot.inMessages
            registry.closedInBytes += snapshot.inBytes
            registry.closedOutMessages += snapshot.outMessages
            registry.closedOutBytes += snapshot.outBytes
            if slow { registry.slowConsumers += 1 }
        }
        if slow {
            self.logger.warning(
                "slow consumer disconnected",
                metadata: ["nats.cid": "\(connection.id)", "nats.max_pending": "\(self.configuration.maxPending)"]
            )
        }
    }

    func infoLine(for connection: NATSClientConnection) -> ByteBuffer {
        var info = NATSServerInfo(
            serverID: self.serverID,
            serverName: self.configuration.serverName,
            version: Self.compatibleVersion,
            host: self.configuration.host,
            port: (self.listening.withLock { $0.address?.port }) ?? self.configuration.port,
            maxPayload: self.configuration.maxPayload
        )
        info.clientID = connection.id
        info.clientIP = connection.remoteAddress?.ipAddress
        info.authRequired = self.configuration.authentication.isRequired ? true : nil
        info.jetstream = self.jetstream ? true : nil
        let advertised = self.advertised.withLock { ($0.connectURLs, $0.lameDuck) }
        info.connectURLs = advertised.0.isEmpty ? nil : advertised.0
        info.lameDuckMode = advertised.1 ? true : nil
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let json = (try? encoder.encode(info)) ?? Data("{}".utf8)
        var buffer = ByteBuffer()
        buffer.writeStaticString("INFO ")
        buffer.writeBytes(json)
        buffer.writeStaticString("\r\n")
        return buffer
    }

    private static func makeServerID() -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
        var generator = SystemRandomNumberGenerator()
        return "N" + String((0..<55).map { _ in alphabet[Int(generator.next() % UInt64(alphabet.count))] })
    }

    // MARK: Cluster and lame duck

    /// The client addresses (`host:port`) of every node of the cluster, this one included: INFO's `connect_urls`,
    /// so that clients know where to reconnect. A change is sent at once to the clients that take INFO updates.
    public func setConnectURLs(_ urls: [String]) {
        let changed = self.advertised.withLock { state -> Bool in
            let sorted = urls.sorted()
            guard sorted != state.connectURLs else { return false }
            state.connectURLs = sorted
            return true
        }
        if changed { self.sendInfoUpdates() }
    }

    /// What INFO's `connect_urls` says now.
    public var connectURLs: [String] { self.advertised.withLock { $0.connectURLs } }

    /// Whether the server is in lame-duck mode.
    public var isLameDuck: Bool { self.advertised.withLock { $0.lameDuck } }

    private func sendInfoUpdates() {
        let connections = self.registry.withLock { Array($0.connections.values) }
        for connection in connections where connection.takesAsyncInfo.load(ordering: .relaxed) {
            let info = self.infoLine(for: connection)
            connection.enqueue { $0.writeImmutableBuffer(info) }
        }
    }

    /// Lame-duck mode, as nats-server's (SIGUSR2 there): new connections are refused, every client gets an INFO
    /// with `ldm: true` and moves to another server of the cluster on its own; after `lameDuckGracePeriod` those
    /// still connected are closed, spread over the rest of `lameDuckDuration` so that they do not all reconnect
    /// elsewhere at once. Returns when none is left. Subscriptions and routing work until each connection closes.
    public func enterLameDuckMode() async {
        let listener = self.advertised.withLock { state -> (any Channel)? in
            guard !state.lameDuck else { return nil }
            state.lameDuck = true
            return state.listener
        }
        try? await listener?.close()
        self.logger.info("NATS endpoint in lame-duck mode: clients are asked to move to another node")
        self.sendInfoUpdates()
        var remaining = self.registry.withLock { Array($0.connections.values) }.sorted { $0.id < $1.id }
        guard !remaining.isEmpty else { return }
        let grace = self.configuration.lameDuckGracePeriod
        try? await Task.sleep(for: grace)
        remaining = self.registry.withLock { Array($0.connections.values) }.sorted { $0.id < $1.id }
        guard !remaining.isEmpty else { return }
        // Close in batches every `interval` (at least 10 ms apart) over what is left of the duration.
        let window = max(self.configuration.lameDuckDuration - grace, .milliseconds(10))
        var interval = window / remaining.count
        var batch = 1
        if interval < .milliseconds(10) {
            batch = Int((Duration.milliseconds(10) / interval).rounded(.up))
            interval = .milliseconds(10)
        }
        while !remaining.isEmpty {
            for connection in remaining.prefix(batch) {
                connection.flush()
                try? await connection.channel.close()
            }
            remaining.removeFirst(min(batch, remaining.count))
            if !remaining.isEmpty { try? await Task.sleep(for: interval) }
        }
        self.logger.info("NATS endpoint lame-duck mode over: every client was closed")
    }

    // MARK: Monitoring

    /// `/varz`: the server and its totals.
    public func varz() -> NATSVarz {
        let connections = self.registry.withLock { $0 }
        var inMessages = connections.closedInMessages
        var inBytes = connections.closedInBytes
        var outMessages = connections.closedOutMessages
        var outBytes = connections.closedOutBytes
        for connection in connections.connections.values {
            let snapshot = connection.snapshot()
            inMessages += snapshot.inMessages
            inBytes += snapshot.inBytes
            outMessages += snapshot.outMessages
            outBytes += snapshot.outBytes
        }
        let now = Date()
        return NATSVarz(
            serverID: self.serverID,
            serverName: self.configuration.serverName,
            version: Self.compatibleVersion,
            host: self.configuration.host,
            port: (self.listening.withLock { $0.address?.port }) ?? self.configuration.port,
            maxPayload: self.configuration.maxPayload,
            maxControlLine: self.configuration.maxControlLine,
            maxPending: self.configuration.maxPending,
            maxConnections: self.configuration.maxConnections,
            pingInterval: Int64(self.configuration.pingInterval.components.seconds) * 1_000_000_000,
            pingMax: self.configuration.maxPingsOut,
            authRequired: self.configuration.authentication.isRequired,
            jetstream: self.jetstream,
            start: NATSMonitorTime.format(self.startedWallClock),
            now: NATSMonitorTime.format(now),
            uptime: NATSMonitorTime.duration(now.timeIntervalSince(self.startedWallClock)),
            cores: ProcessInfo.processInfo.activeProcessorCount,
            connections: connections.connections.count,
            totalConnections: connections.totalConnections,
            inMsgs: inMessages,
            outMsgs: outMessages,
            inBytes: inBytes,
            outBytes: outBytes,
            slowConsumers: connections.slowConsumers,
            subscriptions: self.router.subscriptionCount
        )
    }

    /// `/connz`: open connections, sorted by id, `offset`/`limit` as in NATS (limit default 1024).
    public func connz(offset: Int = 0, limit: Int = 1024, subscriptions: Bool = false) -> NATSConnz {
        let all = self.registry.withLock { $0.connections.values.map { $0 } }.sorted { $0.id < $1.id }
        let now = ContinuousClock.now
        let page = all.dropFirst(max(0, offset)).prefix(max(0, limit))
        let entries = page.map { connection -> NATSConnz.Connection in
            let snapshot = connection.snapshot()
            return NATSConnz.Connection(
                cid: snapshot.id,
                ip: snapshot.ip,
                port: snapshot.port,
                start: NATSMonitorTime.format(Date(timeIntervalSince1970: snapshot.startedWallClock)),
                lastActivity: NATSMonitorTime.format(
                    Date().addingTimeInterval(-Self.seconds(now - snapshot.lastActivity))
                ),
                uptime: NATSMonitorTime.duration(Self.seconds(now - snapshot.started)),
                idle: NATSMonitorTime.duration(Self.seconds(now - snapshot.lastActivity)),
                pendingBytes: snapshot.pendingBytes,
                inMsgs: snapshot.inMessages,
                outMsgs: snapshot.outMessages,
                inBytes: snapshot.inBytes,
                outBytes: snapshot.outBytes,
                subscriptions: snapshot.subscriptions.count,
                name: snapshot.name,
                lang: snapshot.lang,
                version: snapshot.version,
                subscriptionsList: subscriptions ? snapshot.subscriptions : nil
            )
        }
        return NATSConnz(
            serverID: self.serverID,
            now: NATSMonitorTime.format(Date()),
            numConnections: entries.count,
            total: all.count,
            offset: offset,
            limit: limit,
            connections: entries
        )
    }

    /// `/subsz`: subscription totals.
    public func subsz() -> NATSSubsz {
        NATSSubsz(serverID: self.serverID, now: NATSMonitorTime.format(Date()), numSubscriptions: self.router.subscriptionCount)
    }

    private static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}

// MARK: - Errors

/// Errors of the NATS endpoint itself (not protocol violations by clients, which are ``NATSProtocolError``).
public struct StorkNATSError: Error, CustomStringConvertible {
    public var message: String
    public var underlying: (any Error)?

    static func bindFailed(_ address: String, underlying: any Error) -> StorkNATSError {
        StorkNATSError(message: "cannot listen for NATS clients on \(address)", underlying: underlying)
    }

    public var description: String {
        if let underlying { return "\(self.message): \(underlying)" }
        return self.message
    }
}
