import Logging
import NIOCore
import NIOPosix
import StorkCore
import StorkMembership
import StorkResources
import Synchronization

// MARK: - Configuration and statistics

/// Where a node listens and how it talks to its peers.
public struct ClusterTransportConfiguration: Sendable {
    /// "host:port" to bind UDP and TCP on; port 0 picks a free port (tests).
    public var bind: String
    /// The address peers use to reach this node; defaults to the bound address.
    public var advertise: String?
    public var clusterName: String
    /// With a key, every datagram and frame is authenticated (HMAC-SHA256); without one, none may be.
    public var clusterKey: String?
    /// Membership messages that encode larger than this go over TCP instead of UDP.
    public var maximumDatagramSize = 1400
    public var maximumFrameSize = 16 << 20
    /// Frames waiting for a connection to one peer; beyond this the oldest are dropped (and counted).
    public var sendQueueLimit = 10_000

    public init(bind: String, clusterName: String = "stork", clusterKey: String? = nil) {
        self.bind = bind
        self.clusterName = clusterName
        self.clusterKey = clusterKey
    }
}

/// Counters of one transport since it started.
public struct ClusterTransportStatistics: Sendable, Hashable {
    public var datagramsSent = 0
    public var datagramsReceived = 0
    public var framesSent = 0
    public var framesReceived = 0
    public var bytesSent = 0
    public var bytesReceived = 0
    /// Frames and datagrams dropped because they were malformed, oversized, foreign, forged or replayed.
    public var rejected: [WireError.Code: Int] = [:]
    public var queueDrops = 0
    public var connectionFailures = 0
}

/// Parses "host:port" into a socket address. Hosts are IP literals or "localhost" (no DNS lookups on the hot path).
func socketAddress(_ address: String) throws -> SocketAddress {
    guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]),
        (0...65_535).contains(port)
    else {
        throw StorkError(.invalidInput, "'\(address)' is not host:port")
    }
    var host = String(address[..<colon])
    if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
    if host == "localhost" { host = "127.0.0.1" }
    do {
        return try SocketAddress(ipAddress: host, port: port)
    } catch {
        throw StorkError(.invalidInput, "'\(address)': the host must be an IP address", underlying: error)
    }
}

// MARK: - NIOClusterTransport

/// The cluster transport of a real node: membership messages over UDP (when they fit a datagram), everything else
/// over one TCP connection per peer with length-prefixed frames; every frame carries the cluster name and, with a
/// cluster key, an HMAC-SHA256. Bad input is dropped and counted, never trusted and never fatal.
public final class NIOClusterTransport: ClusterTransport, Sendable {
    struct Peer {
        var channel: (any Channel)?
        var connecting = false
        var pending: [ByteBuffer] = []
        var failures = 0
        var retryAfter: NIODeadline?
    }

    struct State {
        var peers: [String: Peer] = [:]
        var addresses: [String: SocketAddress] = [:]
        var statistics = ClusterTransportStatistics()
        var replay: [UInt64: ReplayWindow] = [:]
        var closed = false
        var rejectionsLogged = 0
        var inbound: [ObjectIdentifier: any Channel] = [:]
    }

    let configuration: ClusterTransportConfiguration
    let settings: WireSettings
    let senderUID: UInt64
    let sequence = Atomic<UInt64>(0)
    let group: any EventLoopGroup
    let logger: Logger
    let state = Mutex(State())
    let stream: AsyncStream<ClusterMessage>
    let continuation: AsyncStream<ClusterMessage>.Continuation
    let udp = Mutex<(any Channel)?>(nil)
    let server = Mutex<(any Channel)?>(nil)

    private init(configuration: ClusterTransportConfiguration, logger: Logger) {
        self.configuration = configuration
        self.settings = WireSettings(
            clusterName: configuration.clusterName,
            clusterKey: configuration.clusterKey,
            maximumFrameSize: configuration.maximumFrameSize
        )
        var random = SystemRandomNumberGenerator()
        self.senderUID = random.next()
        self.group = MultiThreadedEventLoopGroup.singleton
        self.logger = logger
        (self.stream, self.continuation) = AsyncStream<ClusterMessage>.makeStream(bufferingPolicy: .bufferingNewest(100_000))
    }

    /// Binds UDP and TCP on `configuration.bind` and starts receiving.
    public static func start(
        configuration: ClusterTransportConfiguration,
        logger: Logger = Logger(label: "stork.cluster")
    ) async throws -> NIOClusterTransport {
        let bindAddress = try socketAddress(configuration.bind)
        // TCP first: with port 0 its free port is then used for UDP too.
        let transport = NIOClusterTransport(configuration: configuration, logger: logger)
        let server = try await ServerBootstrap(group: transport.group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { [transport] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        ByteToMessageHandler(LengthPrefixedFrameDecoder(maximum: configuration.maximumFrameSize))
                    )
                    try channel.pipeline.syncOperations.addHandler(InboundFrameHandler(transport: transport))
                }
            }
            .bind(to: bindAddress).get()
        let port = server.localAddress?.port ?? bindAddress.port ?? 0
        let host = String(configuration.bind[..<(configuration.bind.lastIndex(of: ":") ?? configuration.bind.endIndex)])
        let udpAddress = try socketAddress("\(host):\(port)")
        let udp = try await DatagramBootstrap(group: transport.group)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(InboundDatagramHandler(transport: transport))
                }
            }
            .bind(to: udpAddress).get()
        transport.server.withLock { $0 = server }
        transport.udp.withLock { $0 = udp }
        transport.boundPort.withLock { $0 = port }
        return transport
    }

    let boundPort = Mutex<Int>(0)

    /// The address peers use: the configured advertise address, or the bind address with the real port.
    public var address: String {
        if let advertise = self.configuration.advertise { return advertise }
        let bind = self.configuration.bind
        let host = bind[..<(bind.lastIndex(of: ":") ?? bind.endIndex)]
        return "\(host):\(self.boundPort.withLock { $0 })"
    }

    public var statistics: ClusterTransportStatistics { self.state.withLock { $0.statistics } }

    public func incoming() -> AsyncStream<ClusterMessage> { self.stream }

    // MARK: Sending

    public func send(_ message: ClusterMessage, to address: String) {
        let frame = WireCodec.encode(
            message,
            senderUID: self.senderUID,
            sequence: self.sequence.add(1, ordering: .relaxed).newValue,
            settings: self.settings
        )
        let viaUDP: Bool
        if case .membership(let membership) = message, membership.kind != .pushPull,
            frame.count <= self.configuration.maximumDatagramSize
        {
            viaUDP = true
        } else {
            viaUDP = false
        }
        let resolved: SocketAddress? = self.state.withLock { state in
            if let known = state.addresses[address] { return known }
            guard let parsed = try? socketAddress(address) else { return nil }
            state.addresses[address] = parsed
            return parsed
        }
        guard let target = resolved else {
            self.state.withLock { $0.statistics.connectionFailures += 1 }
            return
        }
        if viaUDP {
            guard let udp = self.udp.withLock({ $0 }) else { return }
            let buffer = udp.allocator.buffer(bytes: frame)
            udp.writeAndFlush(AddressedEnvelope(remoteAddress: target, data: buffer), promise: nil)
            self.state.withLock { state in
                state.statistics.datagramsSent += 1
                state.statistics.bytesSent += frame.count
            }
        } else {
            var buffer = ByteBufferAllocator().buffer(capacity: frame.count + 4)
            buffer.writeInteger(UInt32(frame.count))
            buffer.writeBytes(frame)
            self.sendFrame(buffer, to: address, target: target)
        }
    }

    private func sendFrame(_ buffer: ByteBuffer, to address: String, target: SocketAddress) {
        enum Next {
            case write(any Channel)
            case connect
            case nothing
        }
        let next: Next = self.state.withLock { state in
            guard !state.closed else { return .nothing }
            var peer = state.peers[address] ?? Peer()
            defer { state.peers[address] = peer }
            state.statistics.framesSent += 1
            state.statistics.bytesSent += buffer.readableBytes
            if let channel = peer.channel {
                return .write(channel)
            }
            peer.pending.append(buffer)
            if peer.pending.count > self.configuration.sendQueueLimit {
                peer.pending.removeFirst()
                state.statistics.queueDrops += 1
            }
            if peer.connecting { return .nothing }
            if let retryAfter = peer.retryAfter, NIODeadline.now() < retryAfter {
                // Still backing off after a failure: this frame waits (bounded) for the next attempt.
                return .nothing
            }
            peer.connecting = true
            return .connect
        }
        switch next {
        case .write(let channel):
            channel.writeAndFlush(buffer, promise: nil)
        case .connect:
            self.connect(to: address, target: target)
        case .nothing:
            break
        }
    }

    private func connect(to address: String, target: SocketAddress) {
        ClientBootstrap(group: self.group)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(2))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    // Peers may answer on the same connection.
                    try channel.pipeline.syncOperations.addHandler(
                        ByteToMessageHandler(LengthPrefixedFrameDecoder(maximum: self.configuration.maximumFrameSize))
                    )
                    try channel.pipeline.syncOperations.addHandler(InboundFrameHandler(transport: self))
                }
            }
            .connect(to: target)
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    let pending: [ByteBuffer] = self.state.withLock { state in
                        guard !state.closed else { return [] }
                        var peer = state.peers[address] ?? Peer()
                        peer.channel = channel
                        peer.connecting = false
                        peer.failures = 0
                        peer.retryAfter = nil
                        let pending = peer.pending
                        peer.pending = []
                        state.peers[address] = peer
                        return pending
                    }
                    if self.state.withLock({ $0.closed }) {
                        channel.close(promise: nil)
                        return
                    }
                    for buffer in pending { channel.write(buffer, promise: nil) }
                    channel.flush()
                    channel.closeFuture.whenComplete { _ in
                        self.state.withLock { state in
                            if let current = state.peers[address]?.channel, current === channel {
                                state.peers[address]?.channel = nil
                            }
                        }
                    }
                case .failure:
                    self.state.withLock { state in
                        var peer = state.peers[address] ?? Peer()
                        peer.connecting = false
                        peer.failures += 1
                        // Exponential backoff, 50 ms doubling to 2 s; queued frames wait for the next attempt.
                        let delay = min(2_000, 50 << min(peer.failures - 1, 6))
                        peer.retryAfter = .now() + .milliseconds(Int64(delay))
                        state.statistics.connectionFailures += 1
                        state.peers[address] = peer
                    }
                }
            }
    }

    // MARK: Receiving

    func deliver(_ bytes: ByteBuffer, viaUDP: Bool) {
        let count = bytes.readableBytes
        let frame: WireFrame
        do {
            frame = try WireCodec.decode(bytes.readableBytesView, settings: self.settings)
        } catch {
            self.reject(error)
            return
        }
        let accepted: Bool = self.state.withLock { state in
            if viaUDP {
                state.statistics.datagramsReceived += 1
            } else {
                state.statistics.framesReceived += 1
            }
            state.statistics.bytesReceived += count
            // Replayed datagrams matter only when frames are authenticated: without a key anyone can forge them.
            guard self.settings.keyBytes != nil else { return true }
            var window = state.replay[frame.senderUID] ?? ReplayWindow()
            let fresh = window.accept(frame.sequence)
            state.replay[frame.senderUID] = window
            if !fresh { state.statistics.rejected[.stale, default: 0] += 1 }
            return fresh
        }
        guard accepted else { return }
        self.continuation.yield(frame.message)
    }

    func reject(_ error: WireError) {
        let shouldLog = self.state.withLock { state -> Bool in
            state.statistics.rejected[error.code, default: 0] += 1
            state.rejectionsLogged += 1
            return state.rejectionsLogged <= 20 || state.rejectionsLogged % 1000 == 0
        }
        if shouldLog {
            self.logger.warning("dropped a frame", metadata: ["stork.reason": "\(error)"])
        }
    }

    func registerInbound(_ channel: any Channel) {
        self.state.withLock { $0.inbound[ObjectIdentifier(channel)] = channel }
        channel.closeFuture.whenComplete { _ in
            self.state.withLock { _ = $0.inbound.removeValue(forKey: ObjectIdentifier(channel)) }
        }
    }

    // MARK: Closing

    public func close() {
        let channels: [any Channel] = self.state.withLock { state in
            state.closed = true
            var channels = state.peers.values.compactMap(\.channel)
            channels += state.inbound.values
            state.peers = [:]
            state.inbound = [:]
            return channels
        }
        for channel in channels { channel.close(promise: nil) }
        self.udp.withLock { $0?.close(promise: nil) }
        self.server.withLock { $0?.close(promise: nil) }
        self.continuation.finish()
    }
}

// MARK: - Replay window

/// Accepts each sequence number once, within a window of the last 4,096 below the highest seen.
struct ReplayWindow {
    static let size: UInt64 = 4096
    var highest: UInt64 = 0
    var seen: Set<UInt64> = []

    mutating func accept(_ sequence: UInt64) -> Bool {
        if sequence + Self.size <= self.highest { return false }
        guard self.seen.insert(sequence).inserted else { return false }
        if sequence > self.highest {
            self.highest = sequence
            if self.seen.count > Int(Self.size) * 2 {
                let floor = self.highest > Self.size ? self.highest - Self.size : 0
                self.seen = self.seen.filter { $0 > floor }
            }
        }
        return true
    }
}

// MARK: - Channel handlers

/// Splits a TCP stream into frames: a 4-byte big-endian length, then that many bytes. A length above the maximum
/// closes the connection before anything is allocated for it.
struct LengthPrefixedFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = ByteBuffer
    let maximum: Int

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return .needMoreData }
        guard Int(length) <= self.maximum + 64 else {
            throw WireError(.oversized, "frame length \(length)")
        }
        guard buffer.readableBytes >= 4 + Int(length) else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 4)
        let frame = buffer.readSlice(length: Int(length))!
        context.fireChannelRead(Self.wrapInboundOut(frame))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws
        -> DecodingState
    {
        try self.decode(context: context, buffer: &buffer)
    }
}

final class InboundFrameHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let transport: NIOClusterTransport

    init(transport: NIOClusterTransport) { self.transport = transport }

    func channelActive(context: ChannelHandlerContext) {
        self.transport.registerInbound(context.channel)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.transport.deliver(Self.unwrapInboundIn(data), viaUDP: false)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? WireError { self.transport.reject(error) }
        context.close(promise: nil)
    }
}

final class InboundDatagramHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    let transport: NIOClusterTransport

    init(transport: NIOClusterTransport) { self.transport = transport }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.transport.deliver(Self.unwrapInboundIn(data).data, viaUDP: true)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A datagram error (e.g. ICMP port unreachable surfacing as an error) is not fatal for the socket.
    }
}
