import StorkCore
import StorkResources

// MARK: - Configuration

/// How the cluster relay propagates interest and forwards messages. Every field has a working default.
public struct ClusterRelayConfiguration: Sendable {
    /// How often every live peer gets a digest of this node's interest version (repairs lost deltas and snapshots).
    public var antiEntropyInterval: Duration = .seconds(5)
    /// Messages waiting to be sent to one peer; beyond this new messages for that peer are dropped and counted.
    public var maximumQueuedMessages = 10_000
    /// The same bound in bytes (message sizes as encoded).
    public var maximumQueuedBytes = 16 << 20
    /// Messages queued for one peer go out together in frames of at most about this many bytes. Keep it well
    /// below the cluster transport's `maximumFrameSize` (16 MiB).
    public var maximumFrameBytes = 1 << 20
    /// A single message larger than this is not forwarded (counted in `messagesTooLarge`).
    public var maximumMessageBytes = 8 << 20
    /// Distinct local patterns at most; ``ClusterRelay/addInterest(_:)`` refuses more (a snapshot must fit a frame).
    public var maximumLocalPatterns = 100_000

    public init() {}
}

// MARK: - Statistics

/// Counters of one relay since it started, for metrics.
public struct ClusterRelayStatistics: Hashable, Sendable {
    /// The interest protocol's counters.
    public var interest = RelayInterestStatistics()
    /// Messages queued for a peer and sent, and the relay frames that carried them.
    public var messagesForwarded = 0
    public var messageFramesSent = 0
    /// Messages dropped because a peer's queue was full (the peer or the link cannot keep up).
    public var messagesDropped = 0
    /// Messages larger than `maximumMessageBytes`, not forwarded.
    public var messagesTooLarge = 0
    /// Messages that came from another node (they carry the marker header) and matched a peer's interest: never
    /// forwarded again, so nothing loops.
    public var relayedNotForwarded = 0
    /// Messages received from peers and published on the local router.
    public var messagesReceived = 0
    /// Relay frames that could not be decoded (and messages with a malformed header block).
    public var framesRejected = 0
    /// Interest frames sent (deltas, snapshots, digests, pulls).
    public var interestFramesSent = 0
    /// Per peer: messages dropped because its queue was full.
    public var droppedByPeer: [NodeID: Int] = [:]

    public init() {}
}

// MARK: - Errors

/// Why the relay refused a request.
public struct ClusterRelayError: Error, Hashable, Sendable, CustomStringConvertible {
    public struct Code: RawRepresentable, Hashable, Sendable {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        /// Not a valid NATS subject pattern, or longer than 4096 bytes.
        public static let invalidPattern = Code(rawValue: "invalid-pattern")
        /// More distinct local patterns than `maximumLocalPatterns`.
        public static let tooManyPatterns = Code(rawValue: "too-many-patterns")
    }

    public var code: Code
    public var message: String
    public var underlying: (any Error & Sendable)?

    public init(_ code: Code, _ message: String, underlying: (any Error & Sendable)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.code == rhs.code && lhs.message == rhs.message }
    public func hash(into hasher: inout Hasher) {
        hasher.combine(self.code)
        hasher.combine(self.message)
    }

    public var description: String { "\(self.code.rawValue): \(self.message)" }
}

// MARK: - What the relay needs from the node

/// The node as the relay sees it: its identity, its live peers, and a way to exchange relay frames with them.
/// `ResourceManager` is one; tests use an in-memory one.
public protocol ClusterRelayNetwork: Sendable {
    /// This node.
    var identity: NodeID { get }
    /// Relay frames from peers (called once).
    func relayFrames() -> AsyncStream<RelayMessage>
    /// Sends a relay frame without waiting; best-effort.
    func sendRelay(_ payload: [UInt8], to node: NodeID)
    /// The members seen alive or suspect, this node included.
    func liveMembers() -> [NodeID]
    /// The node's events; the relay looks at membership changes and rereads ``liveMembers()``.
    func events() -> AsyncStream<NodeEvent>
}

extension ResourceManager: ClusterRelayNetwork {}
