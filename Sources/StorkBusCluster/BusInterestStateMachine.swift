import StorkCore
import StorkBus
import StorkStreaming

// MARK: - Values

/// Who, in the cluster, is interested in a subject (or in some subject of a pattern).
public struct BusInterest: Hashable, Sendable, CustomStringConvertible {
    /// A subscriber on this node (a client, the gateway, a receiver inside the server).
    public var local: Bool
    /// The peers with a matching subscriber, sorted.
    public var nodes: [NodeID]

    public init(local: Bool, nodes: [NodeID]) {
        self.local = local
        self.nodes = nodes
    }

    /// Whether anyone anywhere in the cluster is subscribed.
    public var isEmpty: Bool { !self.local && self.nodes.isEmpty }

    public var description: String {
        "local: \(self.local), nodes: [\(self.nodes.map(\.name).joined(separator: ", "))]"
    }
}

/// Counters of the interest protocol.
public struct BusInterestStatistics: Hashable, Sendable {
    /// Deltas applied in order, and those that were late (an older or equal version: ignored).
    public var deltasApplied = 0
    public var deltasLate = 0
    /// Deltas that skipped a version (one was lost): the peer is asked for a snapshot instead.
    public var gaps = 0
    /// Snapshots applied, and those older than what was known.
    public var snapshotsApplied = 0
    public var snapshotsStale = 0
    /// Interest frames from nodes that are not live members (departed, or not yet seen): ignored.
    public var framesFromStrangers = 0
    /// Peers whose interest was dropped because they left or were declared dead.
    public var peersDropped = 0
}

/// What the interest table asks its driver to do.
public enum BusInterestAction: Hashable, Sendable {
    /// Send an interest message to a peer.
    case send(BusInterestMessage, to: NodeID)
    /// A peer became interested in an interest key (a pattern, or a pattern and a queue group): add a remote
    /// subscription for it on the local router.
    case peerAdded(NodeID, key: String)
    /// A peer is no longer interested in the key (or left): remove that remote subscription.
    case peerRemoved(NodeID, key: String)
    /// Local or remote interest changed: watchers of ``BusInterest`` should look again.
    case interestChanged
}

// MARK: - BusInterestStateMachine

/// The cluster-wide interest table of one node's bus: its own interest keys (versioned; the router counts the
/// subscriptions behind each) and every live peer's, kept in sync by deltas, snapshots and periodic digests. A key is
/// a subject pattern, or a pattern and a queue group separated by a space (``BusRouter/interestKey(pattern:queue:)``).
///
/// Versions: every change of the local set raises `localVersion` by one and goes to every live peer as a delta from
/// `version - 1` to `version`. A receiver applies a delta only on top of exactly the previous version: a late delta
/// (older or equal) is ignored, so it can never undo newer state, and a delta that skips a version (one was lost or
/// the peer started sending before it saw us) makes the receiver ask for a snapshot. A snapshot replaces what is
/// known when its version is not older; one older than a delta seen while it was awaited (frames leave the sender
/// after its lock, so a snapshot can be overtaken by a newer delta) is applied and asked for again. Versions count per process: a restarted node has a new `NodeID` (new uid) and
/// starts again at 0, which is the empty set everywhere.
///
/// Membership decides who is a peer: interest frames from nodes that are not live members are ignored; a member that
/// becomes live gets our snapshot and a pull for its own; a member that leaves or is declared dead loses its interest
/// at once. Every `antiEntropyInterval` each live peer gets a digest of our version, which repairs lost deltas,
/// snapshots and pulls.
///
/// Pure: no I/O, no clock; `now` comes in with the events that need it.
public struct BusInterestStateMachine: Sendable {
    struct Peer: Sendable {
        var version: UInt64 = 0
        var patterns: Set<String> = []
        /// A pull is on its way; no other is sent until a snapshot comes or the next anti-entropy round.
        var pulling = false
        /// The newest delta version seen while a gap waited for a snapshot. Frames to one peer are sent after the
        /// sender's lock is released, so the snapshot answering a pull can arrive after a newer delta; a snapshot
        /// older than this one asks again instead of settling.
        var newestSeen: UInt64 = 0
    }

    public let myself: NodeID
    public let antiEntropyInterval: Duration
    public private(set) var localVersion: UInt64 = 0
    public private(set) var statistics = BusInterestStatistics()
    /// When `tick` wants to run next; nil before `start`.
    public private(set) var nextDeadline: StorkInstant?

    private var localCounts: [String: Int] = [:]
    private var localIndex = SubjectIndex<String>()
    private var live: Set<NodeID> = []
    private var peers: [NodeID: Peer] = [:]
    private var remoteIndex = SubjectIndex<NodeID>()

    public init(myself: NodeID, antiEntropyInterval: Duration = .seconds(5)) {
        self.myself = myself
        self.antiEntropyInterval = antiEntropyInterval
    }

    // MARK: Queries

    /// The local patterns (each once, however many subscribers), sorted.
    public var localPatterns: [String] { self.localCounts.keys.sorted() }

    /// How many local subscribers hold `pattern`.
    public func localCount(of pattern: String) -> Int { self.localCounts[pattern] ?? 0 }

    /// The live peers, sorted.
    public var livePeers: [NodeID] { self.live.sorted() }

    /// A peer's patterns as known here, sorted (empty for an unknown peer).
    public func patterns(of node: NodeID) -> [String] { self.peers[node]?.patterns.sorted() ?? [] }

    /// A peer's version as known here (0 for an unknown peer).
    public func version(of node: NodeID) -> UInt64 { self.peers[node]?.version ?? 0 }

    /// Every key some peer is interested in, each once, sorted.
    public var remoteKeys: [String] {
        var keys = Set<String>()
        for peer in self.peers.values { keys.formUnion(peer.patterns) }
        return keys.sorted()
    }

    /// The peers with a subscriber (plain or in a queue group) matching `subject`: each once, sorted.
    public mutating func peers(interestedIn subject: String) -> [NodeID] {
        let match = self.remoteIndex.match(subject)
        return Self.unique(match.plain + match.groups.flatMap(\.members))
    }

    /// Who is interested in `pattern` (queue groups count): a literal subject is matched against every pattern; a
    /// pattern with wildcards counts every pattern that could match one of the same subjects (`a.*` and `a.b`
    /// overlap, `a.*` and `b.>` do not).
    public func interest(in pattern: String) -> BusInterest {
        if !Subject.hasWildcard(pattern) {
            let match = self.remoteIndex.lookup(pattern)
            return BusInterest(
                local: self.localIndex.hasInterest(in: pattern),
                nodes: Self.unique(match.plain + match.groups.flatMap(\.members))
            )
        }
        func overlaps(_ key: String) -> Bool { Subject.overlaps(BusRouter.parseInterestKey(key).pattern, pattern) }
        return BusInterest(
            local: self.localCounts.keys.contains(where: overlaps),
            nodes: self.peers.filter { $0.value.patterns.contains(where: overlaps) }.keys.sorted()
        )
    }

    static func unique(_ nodes: [NodeID]) -> [NodeID] {
        if nodes.count < 2 { return nodes }
        var result = nodes.sorted()
        var last = 0
        for index in 1..<result.count where result[index] != result[last] {
            last += 1
            result[last] = result[index]
        }
        result.removeSubrange((last + 1)...)
        return result
    }

    // MARK: Events

    /// Starts the anti-entropy timer.
    public mutating func start(now: StorkInstant) -> [BusInterestAction] {
        self.nextDeadline = now + self.antiEntropyInterval
        return []
    }

    /// One more local holder of interest key `key` (already validated). The first one is announced to every live peer.
    public mutating func addLocalInterest(_ key: String) -> [BusInterestAction] {
        let count = self.localCounts[key, default: 0]
        self.localCounts[key] = count + 1
        guard count == 0 else { return [] }
        let (pattern, queue) = BusRouter.parseInterestKey(key)
        self.localIndex.insert(key, pattern: pattern, queue: queue)
        return self.announce(added: [key], removed: [])
    }

    /// One local holder of `key` fewer. The last one's departure is announced; unknown keys are ignored.
    public mutating func removeLocalInterest(_ key: String) -> [BusInterestAction] {
        guard let count = self.localCounts[key] else { return [] }
        guard count == 1 else {
            self.localCounts[key] = count - 1
            return []
        }
        self.localCounts[key] = nil
        let (pattern, queue) = BusRouter.parseInterestKey(key)
        self.localIndex.remove(key, pattern: pattern, queue: queue)
        return self.announce(added: [], removed: [key])
    }

    private mutating func announce(added: [String], removed: [String]) -> [BusInterestAction] {
        self.localVersion += 1
        var actions: [BusInterestAction] = self.live.sorted().map {
            .send(.delta(version: self.localVersion, added: added, removed: removed), to: $0)
        }
        actions.append(.interestChanged)
        return actions
    }

    /// The members membership currently sees as alive or suspect (this node may be among them). Departed peers lose
    /// their interest; new ones get our snapshot and a pull for theirs.
    public mutating func membersChanged(_ members: [NodeID]) -> [BusInterestAction] {
        var current = Set(members)
        current.remove(self.myself)
        guard current != self.live else { return [] }
        var actions: [BusInterestAction] = []
        for node in self.live.subtracting(current).sorted() {
            if self.peers[node] != nil {
                actions += self.replacePatterns(of: node, with: [])
                self.peers[node] = nil
            }
            self.statistics.peersDropped += 1
        }
        let joined = current.subtracting(self.live).sorted()
        self.live = current
        for node in joined {
            actions.append(.send(.snapshot(version: self.localVersion, patterns: self.localPatterns), to: node))
            actions.append(.send(.pull, to: node))
            self.peers[node, default: Peer()].pulling = true
        }
        return actions
    }

    /// An interest message from a peer.
    public mutating func receive(_ message: BusInterestMessage, from node: NodeID) -> [BusInterestAction] {
        guard self.live.contains(node) else {
            self.statistics.framesFromStrangers += 1
            return []
        }
        var peer = self.peers[node] ?? Peer()
        switch message {
        case .delta(let version, let added, let removed):
            if version <= peer.version {
                self.statistics.deltasLate += 1
                return []
            }
            guard version == peer.version + 1 else {
                self.statistics.gaps += 1
                peer.newestSeen = max(peer.newestSeen, version)
                let alreadyPulling = peer.pulling
                peer.pulling = true
                self.peers[node] = peer
                return alreadyPulling ? [] : [.send(.pull, to: node)]
            }
            self.statistics.deltasApplied += 1
            var patterns = peer.patterns.subtracting(removed)
            patterns.formUnion(added)
            peer.version = version
            self.peers[node] = peer
            return self.replacePatterns(of: node, with: patterns)
        case .snapshot(let version, let patterns):
            // Equal versions are accepted: the first snapshot of a peer at version 0, or a repair after a gap.
            guard version >= peer.version else {
                self.statistics.snapshotsStale += 1
                return []
            }
            self.statistics.snapshotsApplied += 1
            peer.version = version
            // A newer delta came while we waited: this snapshot is behind it, so ask once more.
            let behind = peer.newestSeen > version
            peer.pulling = behind
            if !behind { peer.newestSeen = 0 }
            self.peers[node] = peer
            return self.replacePatterns(of: node, with: Set(patterns)) + (behind ? [.send(.pull, to: node)] : [])
        case .digest(let version):
            guard version != peer.version, !peer.pulling else { return [] }
            peer.pulling = true
            self.peers[node] = peer
            return [.send(.pull, to: node)]
        case .pull:
            return [.send(.snapshot(version: self.localVersion, patterns: self.localPatterns), to: node)]
        }
    }

    /// Runs the anti-entropy round when it is due: a digest to every live peer, and pulls that got no answer may be
    /// sent again.
    public mutating func tick(now: StorkInstant) -> [BusInterestAction] {
        guard let deadline = self.nextDeadline, deadline <= now else { return [] }
        self.nextDeadline = now + self.antiEntropyInterval
        for node in self.peers.keys { self.peers[node]?.pulling = false }
        return self.live.sorted().map { .send(.digest(version: self.localVersion), to: $0) }
    }

    // MARK: Applying a peer's set

    private mutating func replacePatterns(of node: NodeID, with patterns: Set<String>) -> [BusInterestAction] {
        let old = self.peers[node]?.patterns ?? []
        guard old != patterns else { return [] }
        var actions: [BusInterestAction] = []
        for key in old.subtracting(patterns).sorted() {
            let (pattern, queue) = BusRouter.parseInterestKey(key)
            self.remoteIndex.remove(node, pattern: pattern, queue: queue)
            actions.append(.peerRemoved(node, key: key))
        }
        for key in patterns.subtracting(old).sorted() {
            let (pattern, queue) = BusRouter.parseInterestKey(key)
            self.remoteIndex.insert(node, pattern: pattern, queue: queue)
            actions.append(.peerAdded(node, key: key))
        }
        if !patterns.isEmpty || self.peers[node] != nil {
            self.peers[node, default: Peer()].patterns = patterns
        }
        actions.append(.interestChanged)
        return actions
    }
}
