import StorkCore
import StorkResources

// MARK: - Configuration

/// How the bus propagates interest and forwards messages between nodes. Every field has a working default.
public struct BusClusterConfiguration: Sendable {
    /// How often every live peer gets a digest of this node's interest version (repairs lost deltas and snapshots).
    public var antiEntropyInterval: Duration = .seconds(5)
    /// Bytes (as encoded) waiting to be sent to one peer, this queue and the cluster transport's together. Past half
    /// of it the link is congested and client connections publishing into it are stalled (flow control); past all
    /// of it new messages for that peer are dropped, counted and logged.
    public var maximumQueuedBytes = 64 << 20
    /// Messages queued for one peer go out together in frames of at most about this many bytes (64 KiB: larger
    /// frames cost more in fresh pages for their copies than they save in frames). Keep it below the cluster
    /// transport's `maximumFrameSize` (16 MiB).
    public var maximumFrameBytes = 64 << 10
    /// A single message larger than this is not forwarded (counted in `messagesTooLarge`).
    public var maximumMessageBytes = 8 << 20
    /// Distinct interest keys this node announces at most (a snapshot must fit a frame); subscriptions beyond it
    /// receive only what is published on this node (counted in `keysNotAnnounced`, logged).
    public var maximumLocalKeys = 100_000
    /// Where this node's NATS clients connect (`host:port`), told to the other nodes so that every node's INFO lists
    /// the whole cluster (`connect_urls`). Nil: this node has no NATS endpoint.
    public var clientURL: String?

    public init() {}
}

// MARK: - Statistics

/// Counters of one node's bus since it started, for metrics.
public struct BusClusterStatistics: Hashable, Sendable {
    /// The interest protocol's counters.
    public var interest = BusInterestStatistics()
    /// Messages queued for a peer and sent, the frames that carried them, and their bytes.
    public var messagesForwarded = 0
    public var messageFramesSent = 0
    public var bytesForwarded = 0
    /// Messages dropped because a peer's queue was full (the peer or the link cannot keep up).
    public var messagesDropped = 0
    /// Messages larger than `maximumMessageBytes`, not forwarded.
    public var messagesTooLarge = 0
    /// Messages received from peers and delivered on the local router, and their bytes.
    public var messagesReceived = 0
    public var bytesReceived = 0
    /// Frames that could not be decoded (and messages with a malformed header block).
    public var framesRejected = 0
    /// Message frames sent to a previous process on this node's address (before a restart), dropped.
    public var framesForAnotherProcess = 0
    /// Interest frames sent (deltas, snapshots, digests, pulls).
    public var interestFramesSent = 0
    /// Times a publishing client was stalled because a peer's queue was congested.
    public var stalls = 0
    /// Interest keys beyond `maximumLocalKeys`, not announced.
    public var keysNotAnnounced = 0
    /// Per peer: messages and bytes sent, and messages dropped because its queue was full.
    public var forwardedByPeer: [NodeID: Int] = [:]
    public var bytesByPeer: [NodeID: Int] = [:]
    public var droppedByPeer: [NodeID: Int] = [:]

    public init() {}
}

// MARK: - What the bus needs from the node

/// The node as the bus sees it: its identity, its live peers, and a way to exchange frames with them.
/// `ResourceManager` is one; tests use an in-memory one.
public protocol BusNetwork: Sendable {
    /// This node.
    var identity: NodeID { get }
    /// Where frames from peers go from now on (nil: nowhere). The receiver runs on the transport's thread and must
    /// not block; it returns how long to stop reading from the sender (back-pressure), having registered `resume`.
    func setRelayReceiver(_ receiver: RelayReceiver?)
    /// Sends a frame without waiting; best-effort. Frames to one peer arrive in the order they were sent.
    func sendRelay(_ payload: [UInt8], to node: NodeID)
    /// Bytes sent to `node` that the transport has not written yet.
    func relayBacklog(to node: NodeID) -> Int
    /// Returns once the transport holds nothing more for `node`.
    func waitForRelayBacklog(to node: NodeID) async
    /// False when the transport knows `node` cannot be reached now (a killed node, before membership says so).
    func isReachable(_ node: NodeID) -> Bool
    /// The members seen alive or suspect, this node included.
    func liveMembers() -> [NodeID]
    /// The node's events; the bus looks at membership changes and rereads ``liveMembers()``.
    func events() -> AsyncStream<NodeEvent>
}

extension ResourceManager: BusNetwork {}
