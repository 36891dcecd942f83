import NIOCore
import StorkCore

// MARK: - Configuration

/// Where a node listens and how it talks to its peers. Every field has a working default except `bind`.
public struct ClusterTransportConfiguration: Sendable {
    /// "host:port" to bind UDP and TCP on (the same port for both). The host is an IP address or "localhost";
    /// port 0 picks a free port (tests).
    public var bind: String
    /// The address peers use to reach this node; defaults to the bound host and port. Set it when binding 0.0.0.0.
    public var advertise: String?
    /// Every frame carries it; frames of other clusters are dropped. At most 64 UTF-8 bytes.
    public var clusterName: String
    /// With a key (any non-empty string), every frame carries an HMAC-SHA256 and frames without a valid one are
    /// dropped; without a key, authenticated frames are dropped. Every node of a cluster must use the same key.
    public var clusterKey: String?
    /// Membership messages (except push-pull) whose frame fits in this many bytes go over UDP; larger ones, and
    /// everything else, go over TCP. Datagrams larger than this are dropped on receipt, so use the same value on
    /// every node. 1400 by default: below a 1500-byte Ethernet MTU with room for IP and UDP headers.
    public var maximumDatagramSize = 1400
    /// The largest TCP frame sent or accepted (a larger length prefix closes the connection before anything is
    /// allocated for it). 16 MiB by default.
    public var maximumFrameSize = 16 << 20
    /// Frames waiting for one peer's connection (not yet handed to the socket); beyond this the oldest are dropped
    /// and counted in `ClusterTransportStatistics.queueDrops`.
    public var sendQueueLimit = 10_000
    /// The same bound in bytes (64 MiB by default); a single frame larger than it is still sent.
    public var sendQueueByteLimit = 64 << 20
    /// How long a TCP connection attempt may take.
    public var connectTimeout: Duration = .seconds(2)
    /// The delay before reconnecting after a failed attempt; doubles (with ±20% jitter) up to `reconnectMaximum`.
    public var reconnectInitial: Duration = .milliseconds(50)
    public var reconnectMaximum: Duration = .seconds(2)
    /// After this many failed attempts in a row, the frames waiting for the peer are dropped (and counted): the
    /// protocols above resend what still matters, and a dead peer does not hold memory.
    public var dropQueueAfterFailures = 4
    /// An outbound connection with nothing to send for this long is closed (it reopens on the next frame).
    public var outboundIdleTimeout: Duration = .seconds(60)
    /// An inbound connection that received nothing for this long is closed. Longer than the peers'
    /// `outboundIdleTimeout`, so that the sending side closes first.
    public var inboundIdleTimeout: Duration = .seconds(300)
    /// More simultaneous inbound connections than this are refused (closed at once).
    public var maximumInboundConnections = 1024
    /// Decoded messages waiting for the consumer of `incoming()`; beyond this the oldest are dropped and counted.
    public var incomingBufferLimit = 50_000
    /// Senders whose replay windows are remembered; the least recently heard is forgotten first.
    public var replayWindowSenders = 4096

    public init(bind: String, clusterName: String = "stork", clusterKey: String? = nil) {
        self.bind = bind
        self.clusterName = clusterName
        self.clusterKey = clusterKey
    }

    /// Throws `StorkError(.invalidInput)` naming the first setting that cannot work.
    public func validate() throws {
        func invalid(_ message: String) -> StorkError { StorkError(.invalidInput, message) }
        _ = try PeerAddress(self.bind)
        if let advertise = self.advertise { _ = try PeerAddress(advertise) }
        if self.clusterName.utf8.count > WireLimits.maximumClusterNameBytes {
            throw invalid("the cluster name is longer than \(WireLimits.maximumClusterNameBytes) bytes")
        }
        if self.clusterKey?.isEmpty == true { throw invalid("the cluster key is empty (leave it unset for none)") }
        if self.maximumDatagramSize < 512 || self.maximumDatagramSize > 65_507 {
            throw invalid("maximumDatagramSize must be between 512 and 65507")
        }
        if self.maximumFrameSize < 1024 || self.maximumFrameSize > Int(UInt32.max) {
            throw invalid("maximumFrameSize must be between 1 KiB and 4 GiB")
        }
        if self.sendQueueLimit < 1 || self.sendQueueByteLimit < 1 { throw invalid("send queue limits must be positive") }
        if self.maximumInboundConnections < 1 { throw invalid("maximumInboundConnections must be positive") }
        if self.incomingBufferLimit < 1 { throw invalid("incomingBufferLimit must be positive") }
        if self.replayWindowSenders < 1 { throw invalid("replayWindowSenders must be positive") }
        if self.dropQueueAfterFailures < 1 { throw invalid("dropQueueAfterFailures must be positive") }
        for (name, value) in [
            ("connectTimeout", self.connectTimeout), ("reconnectInitial", self.reconnectInitial),
            ("reconnectMaximum", self.reconnectMaximum), ("outboundIdleTimeout", self.outboundIdleTimeout),
            ("inboundIdleTimeout", self.inboundIdleTimeout),
        ] where value <= .zero {
            throw invalid("\(name) must be positive")
        }
    }
}

// MARK: - Statistics

/// Counters of one transport since it started. They only grow.
public struct ClusterTransportStatistics: Sendable, Hashable {
    /// UDP datagrams handed to the socket / accepted (decoded, authenticated, fresh).
    public var datagramsSent = 0
    public var datagramsReceived = 0
    /// TCP frames handed to a connection / accepted.
    public var framesSent = 0
    public var framesReceived = 0
    /// Bytes of those datagrams and frames (TCP length prefixes included).
    public var bytesSent = 0
    public var bytesReceived = 0
    /// Datagrams and frames dropped, by reason: malformed, oversized, foreign, forged, replayed.
    public var rejected: [WireError.Code: Int] = [:]
    /// Frames dropped because a peer's send queue was full, its connection kept failing, or the UDP socket could
    /// not take more.
    public var queueDrops = 0
    /// Messages that could not be encoded (a field too long, a frame too large, NaN in a resource): not sent.
    public var encodeFailures = 0
    /// Decoded messages dropped because the consumer of `incoming()` fell behind.
    public var deliveryDrops = 0
    /// Outbound TCP connections opened, and attempts that failed (refused, timed out, unresolvable).
    public var connectionsOpened = 0
    public var connectionFailures = 0
    /// Inbound TCP connections accepted, and refused because `maximumInboundConnections` were open.
    public var connectionsAccepted = 0
    public var connectionsRefused = 0

    public init() {}

    /// Every rejected datagram and frame.
    public var rejectedTotal: Int { self.rejected.values.reduce(0, +) }
}

// MARK: - Addresses

/// A parsed "host:port": an IP literal (or "localhost", taken as 127.0.0.1) is resolved at once; other hosts are
/// resolved by NIO when a TCP connection is made (off the event loop).
enum PeerAddress: Hashable, Sendable {
    case ip(SocketAddress)
    case host(String, port: Int)

    init(_ address: String) throws {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]),
            (0...65_535).contains(port)
        else {
            throw StorkError(.invalidInput, "'\(address)' is not host:port")
        }
        var host = String(address[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        if host == "localhost" { host = "127.0.0.1" }
        guard !host.isEmpty else { throw StorkError(.invalidInput, "'\(address)' has no host") }
        if let ip = try? SocketAddress(ipAddress: host, port: port) {
            self = .ip(ip)
        } else {
            self = .host(host, port: port)
        }
    }

    var port: Int {
        switch self {
        case .ip(let address): return address.port ?? 0
        case .host(_, let port): return port
        }
    }
}
