import DequeModule
import Logging
import NIOCore
import NIOPosix
import StorkCore
import StorkMembership
import StorkResources
import Synchronization

// MARK: - NIOClusterTransport
//
// Routing: membership messages except push-pull go over UDP when their frame fits `maximumDatagramSize` and the
// peer's address is known as an IP (an IP literal, or a hostname while a TCP connection to it is open); everything
// else goes over TCP: one outbound connection per peer address, opened lazily, frames in order, reconnected with
// backoff. Peers send to us on their own outbound connections; our TCP server only reads.
//
// Driver shape: NIO channel handlers for bytes (a length-prefix decoder, a frame handler, a datagram handler) and
// one `Mutex` around the transport's state; channel I/O happens after the lock is released. Plain handlers rather
// than `NIOAsyncChannel`: `send` must never wait, and queued frames are written by the connection's event loop
// (as fast as the socket takes them) without a task per peer. Background work (connects, reconnect timers, idle
// timeouts) lives on NIO event loops; there is no unstructured `Task`.

/// The cluster transport of a real node: UDP datagrams for membership, length-prefixed TCP frames for the rest,
/// every frame carrying the cluster name and, with a cluster key, an HMAC-SHA256 (see `WireCodec`).
///
/// Bad input is dropped and counted (`statistics.rejected`), never trusted and never fatal. `send` never blocks:
/// frames wait in a bounded queue per peer. Create it with `start(configuration:logger:group:)`, hand it to a
/// `ResourceManager` (which calls `close()` when it stops), and `await shutdown()` to wait until every socket is
/// closed.
public final class NIOClusterTransport: ClusterTransport, Sendable {
    // MARK: State

    /// One peer's outbound connection and the frames waiting for it.
    struct Peer {
        enum Connection {
            /// No connection; the next frame opens one.
            case idle
            case connecting
            case connected(any Channel)
            /// A connection attempt failed; a timer retries (or goes idle when nothing waits).
            case backingOff
        }

        var connection: Connection = .idle
        var queue = Deque<ByteBuffer>()
        var queuedBytes = 0
        /// Failed connection attempts in a row.
        var failures = 0
        /// A drain is scheduled on the connection's event loop.
        var drainScheduled = false

        var isConnected: Bool {
            if case .connected = self.connection { return true }
            return false
        }

        func isConnected(to channel: any Channel) -> Bool {
            if case .connected(let current) = self.connection { return current === channel }
            return false
        }
    }

    struct State {
        var isClosed = false
        var address = ""
        var udp: (any Channel)?
        var server: (any Channel)?
        var peers: [String: Peer] = [:]
        var inbound: [ObjectIdentifier: any Channel] = [:]
        var connecting: [Int: EventLoopFuture<any Channel>] = [:]
        var nextConnectID = 0
        /// Where to send datagrams for an address: IP literals, and hostnames while a TCP connection is open.
        var datagramTargets: [String: SocketAddress] = [:]
        var replay: ReplayGuard
        var statistics = ClusterTransportStatistics()
        var rejectionLog = LogRateLimiter()
        var failureLog = LogRateLimiter()
        var closeFutures: [EventLoopFuture<Void>] = []
        /// Senders waiting until a peer's queue is empty (``waitForBacklog(to:)``).
        var drainWaiters: [String: [CheckedContinuation<Void, Never>]] = [:]
        /// Where relay messages go instead of `incoming()`.
        var relayReceiver: RelayReceiver?

        /// The waiters of `address` when its queue is empty (or gone), removed.
        mutating func takeDrainWaiters(_ address: String) -> [CheckedContinuation<Void, Never>] {
            guard self.drainWaiters[address] != nil, (self.peers[address]?.queuedBytes ?? 0) == 0 else { return [] }
            return self.drainWaiters.removeValue(forKey: address) ?? []
        }
    }

    static let datagramTargetLimit = 10_000

    let configuration: ClusterTransportConfiguration
    let settings: WireSettings
    let logger: Logger
    let group: any EventLoopGroup
    /// Random per instance, never 0: receivers key replay windows by it.
    let senderUID: UInt64
    let datagramSequence = Atomic<UInt64>(0)
    let streamSequence = Atomic<UInt64>(0)
    let state: Mutex<State>
    let stream: AsyncStream<ClusterMessage>
    let continuation: AsyncStream<ClusterMessage>.Continuation

    private init(configuration: ClusterTransportConfiguration, logger: Logger, group: any EventLoopGroup) {
        self.configuration = configuration
        self.settings = WireSettings(
            clusterName: configuration.clusterName,
            clusterKey: configuration.clusterKey,
            maximumFrameSize: configuration.maximumFrameSize
        )
        self.logger = logger
        self.group = group
        var random = SystemRandomNumberGenerator()
        self.senderUID = random.next() | 1
        self.state = Mutex(State(replay: ReplayGuard(maximumSenders: configuration.replayWindowSenders)))
        (self.stream, self.continuation) = AsyncStream<ClusterMessage>.makeStream(
            bufferingPolicy: .bufferingNewest(configuration.incomingBufferLimit)
        )
    }

    // MARK: Starting

    /// Binds TCP and UDP on `configuration.bind` (the same port; with port 0 the TCP port is reused for UDP) and
    /// starts receiving. Throws `StorkError(.invalidInput)` for an unusable configuration and
    /// `StorkError("bind-failed")` when the port is taken.
    public static func start(
        configuration: ClusterTransportConfiguration,
        logger: Logger = Logger(label: "stork.cluster"),
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> NIOClusterTransport {
        try configuration.validate()
        let bindAddress: SocketAddress
        switch try PeerAddress(configuration.bind) {
        case .ip(let address): bindAddress = address
        case .host(let host, let port): bindAddress = try SocketAddress.makeAddressResolvingHost(host, port: port)
        }
        let attempts = bindAddress.port == 0 ? 5 : 1
        var lastError: (any Error)?
        for _ in 0..<attempts {
            let transport = NIOClusterTransport(configuration: configuration, logger: logger, group: group)
            do {
                try await transport.bind(bindAddress)
                return transport
            } catch {
                // With port 0, the free TCP port may be taken for UDP: try another one.
                await transport.shutdown()
                lastError = error
            }
        }
        throw StorkError(
            StorkError.Code("bind-failed"),
            "cannot bind TCP and UDP on \(configuration.bind)",
            underlying: lastError
        )
    }

    private func bind(_ bindAddress: SocketAddress) async throws {
        let server = try await ServerBootstrap(group: self.group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(.backlog, value: 256)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try self.addStreamHandlers(to: channel, role: .accepted)
                }
            }
            .bind(to: bindAddress).get()
        self.state.withLock { $0.server = server }
        let port = server.localAddress?.port ?? bindAddress.port ?? 0
        var udpAddress = bindAddress
        udpAddress.port = port
        let receiveBuffer = self.configuration.maximumDatagramSize + 1
        let udp = try await DatagramBootstrap(group: self.group)
            .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: receiveBuffer))
            .channelOption(.maxMessagesPerRead, value: 16)
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(DatagramHandler(transport: self))
                }
            }
            .bind(to: udpAddress).get()
        let bind = self.configuration.bind
        let host = bind[..<(bind.lastIndex(of: ":") ?? bind.endIndex)]
        let address = self.configuration.advertise ?? "\(host):\(port)"
        let closed = self.state.withLock { state in
            state.udp = udp
            state.address = address
            return state.isClosed
        }
        if closed { udp.close(promise: nil) }
    }

    func addStreamHandlers(to channel: any Channel, role: StreamHandler.Role) throws {
        let sync = channel.pipeline.syncOperations
        switch role {
        case .accepted:
            try sync.addHandler(IdleStateHandler(readTimeout: TimeAmount(self.configuration.inboundIdleTimeout)))
        case .outbound:
            try sync.addHandler(IdleStateHandler(writeTimeout: TimeAmount(self.configuration.outboundIdleTimeout)))
        }
        try sync.addHandler(ByteToMessageHandler(FrameLengthDecoder(maximumFrameSize: self.configuration.maximumFrameSize)))
        try sync.addHandler(StreamHandler(transport: self, role: role))
    }

    // MARK: ClusterTransport

    /// The address peers use: `configuration.advertise`, or the bound host with the bound port.
    public var address: String { self.state.withLock { $0.address } }

    /// A snapshot of the counters.
    public var statistics: ClusterTransportStatistics { self.state.withLock { $0.statistics } }

    /// The decoded, authenticated, fresh messages from every peer. Ends when the transport closes.
    public func incoming() -> AsyncStream<ClusterMessage> { self.stream }

    /// Encodes and queues `message` for `address` ("host:port") and returns at once. Best-effort: a message that
    /// cannot be encoded, or that a full queue or a failing peer drops, is counted and lost.
    public func send(_ message: ClusterMessage, to address: String) {
        let kind: WireCodec.Kind
        let body: [UInt8]
        do {
            (kind, body) = try WireCodec.encodeBody(message)
        } catch {
            self.encodeFailed(error)
            return
        }
        if case .membership(let membership) = message, membership.kind != .pushPull,
            self.sendDatagram(kind: kind, body: body, to: address)
        {
            return
        }
        let header = WireHeader(
            senderUID: self.senderUID,
            sequence: self.streamSequence.wrappingAdd(1, ordering: .relaxed).newValue,
            isDatagram: false
        )
        let frame: [UInt8]
        do {
            frame = try WireCodec.assemble(kind: kind.rawValue, body: body, header: header, settings: self.settings)
        } catch {
            self.encodeFailed(error)
            return
        }
        var buffer = ByteBufferAllocator().buffer(capacity: frame.count + 4)
        buffer.writeInteger(UInt32(frame.count))
        buffer.writeBytes(frame)
        self.enqueue(buffer, to: address)
    }

    /// Sends a datagram when the address is known and the frame fits; false means "use TCP".
    private func sendDatagram(kind: WireCodec.Kind, body: [UInt8], to address: String) -> Bool {
        guard
            WireLimits.fixedHeaderBytes + self.settings.clusterName.utf8.count + body.count
                + (self.settings.isAuthenticated ? WireLimits.macBytes : 0) <= self.configuration.maximumDatagramSize
        else { return false }
        let route: (any Channel, SocketAddress)? = self.state.withLock { state in
            guard !state.isClosed, let udp = state.udp else { return nil }
            if let target = state.datagramTargets[address] { return (udp, target) }
            guard case .ip(let target)? = try? PeerAddress(address) else { return nil }
            if state.datagramTargets.count >= Self.datagramTargetLimit { state.datagramTargets.removeAll() }
            state.datagramTargets[address] = target
            return (udp, target)
        }
        guard let (udp, target) = route else { return false }
        let header = WireHeader(
            senderUID: self.senderUID,
            sequence: self.datagramSequence.wrappingAdd(1, ordering: .relaxed).newValue,
            isDatagram: true
        )
        let frame: [UInt8]
        do {
            frame = try WireCodec.assemble(kind: kind.rawValue, body: body, header: header, settings: self.settings)
        } catch {
            return false
        }
        guard udp.isWritable else {
            // The socket's send buffer is full: drop rather than queue without bound (UDP is best-effort anyway).
            self.state.withLock { $0.statistics.queueDrops += 1 }
            return true
        }
        udp.writeAndFlush(AddressedEnvelope(remoteAddress: target, data: udp.allocator.buffer(bytes: frame)), promise: nil)
        self.state.withLock { state in
            state.statistics.datagramsSent += 1
            state.statistics.bytesSent += frame.count
        }
        return true
    }

    /// Stops receiving and sending and closes every socket without waiting. Idempotent.
    public func close() {
        let channels: [any Channel] = self.state.withLock { state in
            guard !state.isClosed else { return [] }
            state.isClosed = true
            var channels: [any Channel] = []
            if let udp = state.udp { channels.append(udp) }
            if let server = state.server { channels.append(server) }
            for peer in state.peers.values {
                if case .connected(let channel) = peer.connection { channels.append(channel) }
            }
            channels += state.inbound.values
            state.peers = [:]
            state.inbound = [:]
            state.closeFutures = channels.map(\.closeFuture)
            return channels
        }
        let waiters = self.state.withLock { state in
            defer { state.drainWaiters = [:] }
            return state.drainWaiters.values.flatMap { $0 }
        }
        for waiter in waiters { waiter.resume() }
        self.continuation.finish()
        for channel in channels { channel.close(promise: nil) }
    }

    /// Closes (if not yet closed) and waits until every socket of this transport is closed.
    public func shutdown() async {
        self.close()
        let (closing, connecting) = self.state.withLock { ($0.closeFutures, Array($0.connecting.values)) }
        for future in connecting {
            // A connection that completes after `close` is closed by its completion handler.
            if let channel = try? await future.get() { try? await channel.closeFuture.get() }
        }
        for future in closing { try? await future.get() }
    }

    // MARK: Outbound TCP

    /// Bytes queued for `address` that its connection has not taken yet.
    public func backlog(to address: String) -> Int {
        self.state.withLock { $0.peers[address]?.queuedBytes ?? 0 }
    }

    /// Returns once nothing is queued for `address` any more (its connection took everything, or the queue was dropped
    /// after failed connection attempts, or the transport closed): a sender with much to say sends its next frame
    /// then, in step with the connection, instead of letting this bounded queue drop frames.
    public func waitForBacklog(to address: String) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = self.state.withLock { state -> Bool in
                guard !state.isClosed, (state.peers[address]?.queuedBytes ?? 0) > 0 else { return true }
                state.drainWaiters[address, default: []].append(continuation)
                return false
            }
            if ready { continuation.resume() }
        }
    }

    /// False while the last attempt to connect to `address` failed (it is backing off): a peer that was killed is
    /// seen this way at once, long before membership declares it dead.
    public func isReachable(_ address: String) -> Bool {
        self.state.withLock { state in
            guard let peer = state.peers[address] else { return true }
            switch peer.connection {
            case .connected: return true
            case .backingOff: return false
            case .idle, .connecting: return peer.failures == 0
            }
        }
    }

    private func enqueue(_ frame: ByteBuffer, to address: String) {
        enum Next {
            case nothing
            case connect
            case drain(any Channel)
        }
        let next: Next = self.state.withLock { state in
            guard !state.isClosed else { return .nothing }
            var peer = state.peers.removeValue(forKey: address) ?? Peer()
            defer { state.peers[address] = peer }
            peer.queue.append(frame)
            peer.queuedBytes += frame.readableBytes
            while peer.queue.count > 1,
                peer.queue.count > self.configuration.sendQueueLimit
                    || peer.queuedBytes > self.configuration.sendQueueByteLimit
            {
                let dropped = peer.queue.removeFirst()
                peer.queuedBytes -= dropped.readableBytes
                state.statistics.queueDrops += 1
            }
            switch peer.connection {
            case .idle:
                peer.connection = .connecting
                return .connect
            case .connecting, .backingOff:
                return .nothing
            case .connected(let channel):
                guard !peer.drainScheduled else { return .nothing }
                peer.drainScheduled = true
                return .drain(channel)
            }
        }
        switch next {
        case .nothing:
            break
        case .connect:
            self.connect(to: address)
        case .drain(let channel):
            channel.eventLoop.execute { self.drain(address, channel) }
        }
    }

    /// Writes queued frames while the connection takes them (on its event loop). What the socket cannot take yet
    /// stays in our bounded queue; `channelWritabilityChanged` drains again.
    func drain(_ address: String, _ channel: any Channel) {
        var wrote = false
        var drained: [CheckedContinuation<Void, Never>] = []
        while true {
            let writable = channel.isWritable
            let frame: ByteBuffer? = self.state.withLock { state in
                guard state.peers[address]?.isConnected(to: channel) == true else { return nil }
                guard writable, let frame = state.peers[address]?.queue.popFirst() else {
                    state.peers[address]?.drainScheduled = false
                    drained = state.takeDrainWaiters(address)
                    return nil
                }
                state.peers[address]?.queuedBytes -= frame.readableBytes
                state.statistics.framesSent += 1
                state.statistics.bytesSent += frame.readableBytes
                return frame
            }
            guard let frame else { break }
            channel.write(frame, promise: nil)
            wrote = true
        }
        if wrote { channel.flush() }
        for waiter in drained { waiter.resume() }
    }

    private func connect(to address: String) {
        let peerAddress: PeerAddress
        do {
            peerAddress = try PeerAddress(address)
        } catch {
            self.connectFailed(address, connectID: nil, error: error)
            return
        }
        let bootstrap = ClientBootstrap(group: self.group)
            .connectTimeout(TimeAmount(self.configuration.connectTimeout))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.writeBufferWaterMark, value: .init(low: 256 << 10, high: 1 << 20))
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try self.addStreamHandlers(to: channel, role: .outbound(address: address))
                }
            }
        let future: EventLoopFuture<any Channel>
        switch peerAddress {
        case .ip(let target): future = bootstrap.connect(to: target)
        case .host(let host, let port): future = bootstrap.connect(host: host, port: port)
        }
        let connectID = self.state.withLock { state in
            state.nextConnectID += 1
            state.connecting[state.nextConnectID] = future
            return state.nextConnectID
        }
        future.whenComplete { result in
            switch result {
            case .success(let channel): self.connected(address, channel, connectID: connectID, peerAddress: peerAddress)
            case .failure(let error): self.connectFailed(address, connectID: connectID, error: error)
            }
        }
    }

    /// Runs on the new channel's event loop.
    private func connected(_ address: String, _ channel: any Channel, connectID: Int, peerAddress: PeerAddress) {
        enum Outcome {
            case usable
            case transportClosed
            case alreadyInactive
        }
        let outcome: Outcome = self.state.withLock { state in
            state.connecting[connectID] = nil
            guard !state.isClosed else { return .transportClosed }
            // On this event loop, an inactive channel has already delivered its `channelInactive`, which found the
            // peer still connecting and was ignored: count it as a failed attempt.
            guard channel.isActive, var peer = state.peers.removeValue(forKey: address) else {
                return .alreadyInactive
            }
            defer { state.peers[address] = peer }
            state.statistics.connectionsOpened += 1
            peer.failures = 0
            peer.connection = .connected(channel)
            peer.drainScheduled = true
            if case .host = peerAddress, let remote = channel.remoteAddress {
                state.datagramTargets[address] = remote
            }
            return .usable
        }
        switch outcome {
        case .usable:
            self.drain(address, channel)
        case .transportClosed:
            channel.close(promise: nil)
        case .alreadyInactive:
            channel.close(promise: nil)
            self.connectFailed(address, connectID: nil, error: ChannelError.ioOnClosedChannel)
        }
    }

    private func connectFailed(_ address: String, connectID: Int?, error: any Error) {
        var waiters: [CheckedContinuation<Void, Never>] = []
        defer { for waiter in waiters { waiter.resume() } }
        let (delay, dropped, log): (TimeAmount?, Int, Int?) = self.state.withLock { state in
            if let connectID { state.connecting[connectID] = nil }
            state.statistics.connectionFailures += 1
            guard !state.isClosed, var peer = state.peers.removeValue(forKey: address) else { return (nil, 0, nil) }
            defer { state.peers[address] = peer }
            peer.failures += 1
            var dropped = 0
            if peer.failures >= self.configuration.dropQueueAfterFailures {
                dropped = peer.queue.count
                state.statistics.queueDrops += dropped
                peer.queue.removeAll()
                peer.queuedBytes = 0
                waiters = state.drainWaiters.removeValue(forKey: address) ?? []
            }
            peer.connection = .backingOff
            let log = state.failureLog.allow(now: .now(), interval: .seconds(10))
            return (Self.backoff(failures: peer.failures, self.configuration), dropped, log)
        }
        if let suppressed = log {
            self.logger.warning(
                "cannot connect to a peer",
                metadata: [
                    "stork.peer": "\(address)", "stork.error": "\(error)", "stork.dropped": "\(dropped)",
                    "stork.suppressed": "\(suppressed)",
                ]
            )
        }
        guard let delay else { return }
        self.group.next().scheduleTask(in: delay) { self.retry(address) }
    }

    /// `reconnectInitial` doubling per failure up to `reconnectMaximum`, with ±20% jitter.
    static func backoff(failures: Int, _ configuration: ClusterTransportConfiguration) -> TimeAmount {
        let initial = Double(TimeAmount(configuration.reconnectInitial).nanoseconds)
        let maximum = Double(TimeAmount(configuration.reconnectMaximum).nanoseconds)
        let base = min(maximum, initial * Double(1 << min(max(0, failures - 1), 40)))
        return .nanoseconds(Int64(base * Double.random(in: 0.8...1.2)))
    }

    private func retry(_ address: String) {
        let connect: Bool = self.state.withLock { state in
            guard !state.isClosed, case .backingOff? = state.peers[address]?.connection else { return false }
            if state.peers[address]?.queue.isEmpty == true {
                // Nothing waits: the next frame connects at once. `failures` stays, so the queue is dropped sooner
                // if the peer is still unreachable.
                state.peers[address]?.connection = .idle
                return false
            }
            state.peers[address]?.connection = .connecting
            return true
        }
        if connect { self.connect(to: address) }
    }

    /// The outbound connection to `address` closed (the peer went away, a write failed, or it was idle).
    func outboundClosed(_ address: String, _ channel: any Channel) {
        let reconnect: Bool = self.state.withLock { state in
            guard !state.isClosed, var peer = state.peers.removeValue(forKey: address) else { return false }
            guard peer.isConnected(to: channel) else {
                state.peers[address] = peer
                return false
            }
            if case .host? = try? PeerAddress(address) { state.datagramTargets[address] = nil }
            peer.drainScheduled = false
            if peer.queue.isEmpty { return false }  // forget the peer; the next frame connects again
            peer.connection = .connecting
            state.peers[address] = peer
            return true
        }
        if reconnect { self.connect(to: address) }
    }

    /// The outbound connection wrote nothing for `outboundIdleTimeout`: returns whether to close it (only when
    /// nothing waits; new frames then open a new connection).
    func outboundIdle(_ address: String, _ channel: any Channel) -> Bool {
        self.state.withLock { state in
            guard let peer = state.peers[address], peer.isConnected(to: channel), peer.queue.isEmpty else {
                return false
            }
            state.peers[address] = nil
            return true
        }
    }

    // MARK: Inbound

    /// An accepted connection became active: false when it must be closed (closed transport, too many).
    func inboundOpened(_ channel: any Channel) -> Bool {
        self.state.withLock { state in
            guard !state.isClosed else { return false }
            guard state.inbound.count < self.configuration.maximumInboundConnections else {
                state.statistics.connectionsRefused += 1
                return false
            }
            state.statistics.connectionsAccepted += 1
            state.inbound[ObjectIdentifier(channel)] = channel
            return true
        }
    }

    func inboundClosed(_ channel: any Channel) {
        self.state.withLock { _ = $0.inbound.removeValue(forKey: ObjectIdentifier(channel)) }
    }

    /// Relay messages go to `receiver` on the event loop that read them (with back-pressure), not to `incoming()`.
    public func setRelayReceiver(_ receiver: RelayReceiver?) -> Bool {
        self.state.withLock { $0.relayReceiver = receiver }
        return true
    }

    /// A datagram or a TCP frame (without its length prefix) arrived. Returns how long to stop reading from the
    /// sender (a relay receiver's back-pressure), having registered `resume`.
    @discardableResult
    func receive(
        _ buffer: ByteBuffer,
        isDatagram: Bool,
        from remote: SocketAddress?,
        resume: (@Sendable () -> Void)? = nil
    ) -> Duration? {
        let size = buffer.readableBytes
        if isDatagram, size > self.configuration.maximumDatagramSize {
            self.reject(WireError(.oversized, "a datagram of \(size) bytes"), from: remote)
            return nil
        }
        let frame: WireFrame
        do {
            frame = try WireCodec.decode(Array(buffer.readableBytesView), settings: self.settings)
        } catch {
            self.reject(error, from: remote)
            return nil
        }
        guard frame.header.isDatagram == isDatagram else {
            self.reject(WireError(.badFlags, "the datagram flag does not match the channel"), from: remote)
            return nil
        }
        let (fresh, relayReceiver): (Bool, RelayReceiver?) = self.state.withLock { state in
            if self.settings.isAuthenticated, !state.replay.accept(frame.header) { return (false, nil) }
            if isDatagram {
                state.statistics.datagramsReceived += 1
                state.statistics.bytesReceived += size
            } else {
                state.statistics.framesReceived += 1
                state.statistics.bytesReceived += size + 4
            }
            return (true, state.relayReceiver)
        }
        guard fresh else {
            self.reject(WireError(.stale, "sequence \(frame.header.sequence) was seen or is too old"), from: remote)
            return nil
        }
        if case .relay(let relay) = frame.message, let relayReceiver {
            return relayReceiver(relay, resume ?? {})
        }
        if case .dropped = self.continuation.yield(frame.message) {
            self.state.withLock { $0.statistics.deliveryDrops += 1 }
        }
        return nil
    }

    /// Counts a rejected frame and logs it, at most once every 10 seconds (with the number not logged since).
    func reject(_ error: WireError, from remote: SocketAddress?) {
        let suppressed: Int? = self.state.withLock { state in
            state.statistics.rejected[error.code, default: 0] += 1
            return state.rejectionLog.allow(now: .now(), interval: .seconds(10))
        }
        guard let suppressed else { return }
        self.logger.warning(
            "dropped a cluster frame",
            metadata: [
                "stork.reason": "\(error.code.rawValue)", "stork.detail": "\(error.message)",
                "stork.peer": "\(remote.map { "\($0)" } ?? "unknown")", "stork.suppressed": "\(suppressed)",
            ]
        )
    }

    private func encodeFailed(_ error: WireError) {
        let suppressed: Int? = self.state.withLock { state in
            state.statistics.encodeFailures += 1
            return state.rejectionLog.allow(now: .now(), interval: .seconds(10))
        }
        guard let suppressed else { return }
        self.logger.error(
            "cannot encode a cluster message; it is not sent",
            metadata: ["stork.reason": "\(error.code.rawValue)", "stork.detail": "\(error.message)", "stork.suppressed": "\(suppressed)"]
        )
    }
}

// MARK: - Log rate limiting

/// Allows one log line per interval and counts the ones suppressed in between.
struct LogRateLimiter: Sendable {
    private var nextAllowed: NIODeadline = .uptimeNanoseconds(0)
    private var suppressed = 0

    /// The number suppressed since the last allowed line, or nil when this one is suppressed.
    mutating func allow(now: NIODeadline, interval: TimeAmount) -> Int? {
        guard now >= self.nextAllowed else {
            self.suppressed += 1
            return nil
        }
        defer { self.suppressed = 0 }
        self.nextAllowed = now + interval
        return self.suppressed
    }
}

// MARK: - Channel handlers

/// Splits a TCP byte stream into frames: a 4-byte big-endian length, then that many bytes. A length above the
/// maximum is an error (the connection closes) before anything is buffered for it.
struct FrameLengthDecoder: ByteToMessageDecoder {
    typealias InboundOut = ByteBuffer
    let maximumFrameSize: Int

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return .needMoreData }
        guard Int(length) <= self.maximumFrameSize else {
            throw WireError(.oversized, "a frame length of \(length) bytes exceeds \(self.maximumFrameSize)")
        }
        guard let frame = buffer.getSlice(at: buffer.readerIndex + 4, length: Int(length)) else {
            return .needMoreData
        }
        buffer.moveReaderIndex(forwardBy: 4 + Int(length))
        context.fireChannelRead(Self.wrapInboundOut(frame))
        return .continue
    }

    mutating func decodeLast(
        context: ChannelHandlerContext,
        buffer: inout ByteBuffer,
        seenEOF: Bool
    ) throws -> DecodingState {
        // A partial frame at the end of the stream is dropped with the connection.
        try self.decode(context: context, buffer: &buffer)
    }
}

/// The frames of one TCP connection: an accepted one (peers' frames to us) or our outbound one to a peer.
final class StreamHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer

    enum Role: Sendable {
        case accepted
        case outbound(address: String)
    }

    let transport: NIOClusterTransport
    let role: Role

    init(transport: NIOClusterTransport, role: Role) {
        self.transport = transport
        self.role = role
    }

    func channelActive(context: ChannelHandlerContext) {
        if case .accepted = self.role, !self.transport.inboundOpened(context.channel) {
            context.close(promise: nil)
            return
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        switch self.role {
        case .accepted: self.transport.inboundClosed(context.channel)
        case .outbound(let address): self.transport.outboundClosed(address, context.channel)
        }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let channel = context.channel
        let resume: @Sendable () -> Void = { channel.eventLoop.execute { Self.resumeReading(channel) } }
        let pause = self.transport.receive(
            Self.unwrapInboundIn(data),
            isDatagram: false,
            from: channel.remoteAddress,
            resume: resume
        )
        if let pause {
            // Back-pressure: what this peer sent filled a consumer here; read no more from it until it drains.
            try? channel.syncOptions?.setOption(ChannelOptions.autoRead, value: false)
            channel.eventLoop.scheduleTask(in: TimeAmount(pause)) { Self.resumeReading(channel) }
        }
    }

    static func resumeReading(_ channel: any Channel) {
        guard channel.isActive else { return }
        if (try? channel.syncOptions?.getOption(ChannelOptions.autoRead)) == false {
            try? channel.syncOptions?.setOption(ChannelOptions.autoRead, value: true)
            channel.read()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if case .outbound(let address) = self.role, context.channel.isWritable {
            self.transport.drain(address, context.channel)
        }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let idle = event as? IdleStateHandler.IdleStateEvent else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        switch (self.role, idle) {
        case (.accepted, .read):
            context.close(promise: nil)
        case (.outbound(let address), .write):
            if self.transport.outboundIdle(address, context.channel) { context.close(promise: nil) }
        default:
            break
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Framing errors (an oversized length) leave the stream unreadable: count them and close. I/O errors close.
        if let error = error as? WireError { self.transport.reject(error, from: context.channel.remoteAddress) }
        context.close(promise: nil)
    }
}

/// Datagrams from every peer.
final class DatagramHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>

    let transport: NIOClusterTransport

    init(transport: NIOClusterTransport) { self.transport = transport }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = Self.unwrapInboundIn(data)
        self.transport.receive(envelope.data, isDatagram: true, from: envelope.remoteAddress)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Errors such as ICMP "port unreachable" surface here; the socket stays usable.
    }
}
