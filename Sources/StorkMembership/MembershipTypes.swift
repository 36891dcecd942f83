import StorkCore

// MARK: - MemberStatus

/// The status of a member as one node sees it, in precedence order.
///
/// At equal incarnation a status only ever moves *up* this list (`alive < suspect < dead < left`); only a higher
/// incarnation, which only the member itself can issue, may bring it back to `alive`.
public enum MemberStatus: UInt8, Comparable, Sendable, Codable, CustomStringConvertible {
    /// Answers probes (or nobody has shown otherwise yet).
    case alive = 0
    /// A probe failed; the member has a suspicion timeout to refute before it is declared dead.
    case suspect = 1
    /// Declared dead (suspicion expired, or superseded by a newer process with the same name). A tombstone.
    case dead = 2
    /// Left gracefully. A tombstone.
    case left = 3

    @inlinable
    public static func < (lhs: MemberStatus, rhs: MemberStatus) -> Bool {
        lhs.rawValue < rhs.rawValue
    }

    /// `alive` and `suspect` members take part in placement and are probed.
    @inlinable
    public var isActive: Bool { self == .alive || self == .suspect }

    /// `dead` and `left` members are tombstones: kept for `tombstoneTimeout` so stale gossip cannot resurrect them.
    @inlinable
    public var isTombstone: Bool { self == .dead || self == .left }

    public var description: String {
        switch self {
        case .alive: "alive"
        case .suspect: "suspect"
        case .dead: "dead"
        case .left: "left"
        }
    }
}

// MARK: - Member

/// One member of the cluster as the local node sees it.
public struct Member: Hashable, Sendable, CustomStringConvertible {
    public var node: NodeID
    public var status: MemberStatus
    /// Only the member itself raises its incarnation (to refute a suspicion or to leave).
    public var incarnation: UInt64
    /// When the status last changed locally.
    public var since: StorkInstant

    public init(node: NodeID, status: MemberStatus, incarnation: UInt64, since: StorkInstant) {
        self.node = node
        self.status = status
        self.incarnation = incarnation
        self.since = since
    }

    public var description: String { "\(self.node) \(self.status)/\(self.incarnation)" }
}

// MARK: - MemberUpdate

/// A claim about one member, as it travels in gossip and push-pull state.
public struct MemberUpdate: Hashable, Sendable, Codable, CustomStringConvertible {
    public var node: NodeID
    public var status: MemberStatus
    public var incarnation: UInt64
    /// Who asserts a suspicion or death (Lifeguard counts distinct sources as independent confirmations). For an
    /// update a member issues about itself (alive after a refutation, left) this is the member itself.
    public var source: NodeID?

    public init(node: NodeID, status: MemberStatus, incarnation: UInt64, source: NodeID? = nil) {
        self.node = node
        self.status = status
        self.incarnation = incarnation
        self.source = source
    }

    public var description: String {
        if let source { return "\(self.node) \(self.status)/\(self.incarnation) by \(source.name)" }
        return "\(self.node) \(self.status)/\(self.incarnation)"
    }
}

// MARK: - MemberChange

/// A change of a member's status in the local view. `nil` means unknown (before) or forgotten (after).
public struct MemberChange: Hashable, Sendable, CustomStringConvertible {
    public var node: NodeID
    public var previous: MemberStatus?
    public var current: MemberStatus?

    public init(node: NodeID, previous: MemberStatus?, current: MemberStatus?) {
        self.node = node
        self.previous = previous
        self.current = current
    }

    public var description: String {
        "\(self.node): \(self.previous.map(\.description) ?? "unknown") -> \(self.current.map(\.description) ?? "forgotten")"
    }
}

// MARK: - Messages

/// A direct probe. The receiver answers with an ``Ack`` carrying the same sequence.
public struct Ping: Hashable, Sendable, Codable {
    public var from: NodeID
    public var sequence: UInt64
    /// The member the sender means to reach. A receiver that is not this member (for example a restarted process
    /// on the same address, with a new uid) merges the updates but does not answer. `nil`: whoever listens there.
    public var target: NodeID?
    public var updates: [MemberUpdate]
    /// The sender's ``MembershipStateMachine/checksum``.
    public var checksum: UInt64

    public init(from: NodeID, sequence: UInt64, target: NodeID?, updates: [MemberUpdate], checksum: UInt64) {
        self.from = from
        self.sequence = sequence
        self.target = target
        self.updates = updates
        self.checksum = checksum
    }
}

/// The answer to a ``Ping``, or a helper forwarding the target's answer with the requester's sequence.
public struct Ack: Hashable, Sendable, Codable {
    public var from: NodeID
    public var sequence: UInt64
    public var updates: [MemberUpdate]
    public var checksum: UInt64

    public init(from: NodeID, sequence: UInt64, updates: [MemberUpdate], checksum: UInt64) {
        self.from = from
        self.sequence = sequence
        self.updates = updates
        self.checksum = checksum
    }
}

/// Asks a helper to probe `target` on the sender's behalf (SWIM's indirect probe).
public struct PingRequest: Hashable, Sendable, Codable {
    public var from: NodeID
    /// The requester's probe sequence; the helper's forwarded ``Ack`` or its ``Nack`` carries it back.
    public var sequence: UInt64
    public var target: NodeID
    public var updates: [MemberUpdate]

    public init(from: NodeID, sequence: UInt64, target: NodeID, updates: [MemberUpdate]) {
        self.from = from
        self.sequence = sequence
        self.target = target
        self.updates = updates
    }
}

/// A helper's "I tried and the target did not answer in time" (Lifeguard): proof that the helper, at least, is
/// reachable, so a probe that fails *without* nacks points at the local node's own health.
public struct Nack: Hashable, Sendable, Codable {
    public var from: NodeID
    /// The requester's probe sequence.
    public var sequence: UInt64

    public init(from: NodeID, sequence: UInt64) {
        self.from = from
        self.sequence = sequence
    }
}

/// Updates sent on their own, every `gossipInterval`, to a few random members.
public struct Gossip: Hashable, Sendable, Codable {
    public var from: NodeID
    public var updates: [MemberUpdate]

    public init(from: NodeID, updates: [MemberUpdate]) {
        self.from = from
        self.updates = updates
    }
}

/// A full-state exchange (anti-entropy, join, partition healing). The receiver of a request merges `members` and
/// replies with its own full state (`isReply`).
public struct PushPull: Hashable, Sendable, Codable {
    public var from: NodeID
    public var isJoin: Bool
    public var isReply: Bool
    /// Every member the sender knows, tombstones and the sender itself included.
    public var members: [MemberUpdate]
    public var checksum: UInt64

    public init(from: NodeID, isJoin: Bool, isReply: Bool, members: [MemberUpdate], checksum: UInt64) {
        self.from = from
        self.isJoin = isJoin
        self.isReply = isReply
        self.members = members
        self.checksum = checksum
    }
}

/// Everything one membership state machine says to another.
public enum MembershipMessage: Hashable, Sendable, Codable {
    case ping(Ping)
    case ack(Ack)
    case pingRequest(PingRequest)
    case nack(Nack)
    case gossip(Gossip)
    case pushPull(PushPull)

    /// The sender.
    public var from: NodeID {
        switch self {
        case .ping(let message): message.from
        case .ack(let message): message.from
        case .pingRequest(let message): message.from
        case .nack(let message): message.from
        case .gossip(let message): message.from
        case .pushPull(let message): message.from
        }
    }

    /// The kind, for statistics and logging.
    public var kind: MembershipMessageKind {
        switch self {
        case .ping: .ping
        case .ack: .ack
        case .pingRequest: .pingRequest
        case .nack: .nack
        case .gossip: .gossip
        case .pushPull: .pushPull
        }
    }
}

/// The kinds of ``MembershipMessage``.
public enum MembershipMessageKind: String, Hashable, Sendable, CaseIterable {
    case ping, ack, pingRequest, nack, gossip, pushPull
}

// MARK: - MembershipAction

/// What the driver must do after an event.
public enum MembershipAction: Hashable, Sendable {
    /// Send `message` to `to`, a ``NodeID/address`` or a seed address. Unreliable delivery is fine.
    case send(MembershipMessage, to: String)
    /// A member's status changed in the local view (including the local node itself: `nil -> alive` on start,
    /// `alive -> left` on leave).
    case memberChanged(MemberChange)
    /// Emitted once: on first contact with the cluster (`standalone: false`), or when no seed answered within
    /// `standaloneAfter` and the node runs alone for now (`standalone: true`; joining continues in the background).
    case joined(standalone: Bool)
    /// We were suspected or declared dead and answered with a new incarnation.
    case refuted(incarnation: UInt64)
}

// MARK: - MembershipStatistics

/// Counters for metrics and tests. They only ever grow.
public struct MembershipStatistics: Hashable, Sendable {
    /// Direct probes (`ping`s of our own probe cycle) sent.
    public var probesSent = 0
    /// `pingRequest`s sent after a direct probe timed out.
    public var indirectProbesSent = 0
    /// Probes that ended without any ack.
    public var probeFailures = 0
    /// Members we moved from alive to suspect ourselves.
    public var suspicionsRaised = 0
    /// Times we refuted a suspicion or death about ourselves.
    public var refutations = 0
    /// Members we declared dead ourselves (suspicion expired or superseded).
    public var deathsDeclared = 0
    /// Push-pull requests we started (periodic, triggered by a checksum mismatch, joins included).
    public var pushPullsStarted = 0
    /// Of those, the ones triggered by a checksum mismatch.
    public var pushPullsTriggered = 0
    /// Messages sent, by kind.
    public var messagesSent: [MembershipMessageKind: Int] = [:]

    public init() {}

    /// All messages sent.
    public var totalMessagesSent: Int { self.messagesSent.values.reduce(0, +) }
}
