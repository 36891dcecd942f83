import StorkCore
import StorkMembership
import StorkPlacement

// MARK: - Settings

/// Everything one node's state machine needs to know, with working defaults.
public struct NodeSettings: Sendable, Hashable {
    public var membership = MembershipSettings()
    public var orchestrator = OrchestratorSettings()
    /// How resources are placed on members: rendezvous hashing (`default`) or the ringpop-compatible ring.
    public var placement: PlacementStrategy = .rendezvous
    /// How often the node compares its desired set with one random member's (anti-entropy).
    public var desiredSyncInterval: Duration = .seconds(2)
    /// How long a removed resource is remembered, so that an older addition arriving late cannot revive it.
    public var desiredTombstoneRetention: Duration = .seconds(3600)
    /// How long `allocate` / `deallocate` keep trying to reach the owner before they fail with a timeout.
    public var forwardDeadline: Duration = .seconds(30)
    /// How long one forwarding attempt waits for the owner's answer before it is sent again.
    public var forwardAttemptTimeout: Duration = .seconds(3)
    /// Backoff between attempts after a refusal: doubles from the initial value up to the maximum.
    public var forwardRetryInitial: Duration = .milliseconds(50)
    public var forwardRetryMaximum: Duration = .seconds(1)
    /// How many members must hold a change made through `allocate` / `deallocate` before it is acknowledged.
    public var replicas: ReplicaRequirement = .members(2)

    public init() {}
}

/// How many members must hold an `allocate` / `deallocate` change (its version or a newer one) before the call
/// answers. The node that took the change is one of them.
public enum ReplicaRequirement: Hashable, Sendable, CustomStringConvertible {
    /// At least this many members of the answering node's view, or every member when the view is smaller (a
    /// one-node cluster acknowledges alone).
    case members(Int)
    /// Every member of the answering node's view.
    case everyMember

    /// How many holders a view of `viewSize` members (the answering node included) requires.
    public func required(viewSize: Int) -> Int {
        switch self {
        case .members(let count): return max(1, min(count, viewSize))
        case .everyMember: return max(1, viewSize)
        }
    }

    public var description: String {
        switch self {
        case .members(let count): return "\(count)"
        case .everyMember: return "all"
        }
    }

    /// Parses `2` (a positive number) or `all`.
    public init?(parsing text: String) {
        if text == "all" {
            self = .everyMember
        } else if let count = Int(text), count >= 1 {
            self = .members(count)
        } else {
            return nil
        }
    }
}

// MARK: - Messages

/// Anti-entropy and dissemination of the desired set.
public enum DesiredSetMessage: Hashable, Sendable {
    /// Entries that just changed at the sender.
    case delta(from: NodeID, entries: [DesiredEntry])
    /// "This is my digest": the receiver answers with its full state when its own differs.
    case digest(from: NodeID, digest: UInt64)
    /// A full state. `isReply` means the sender was asked; the asker answers with its own state in turn when
    /// the digests still differ after merging.
    case state(from: NodeID, entries: [DesiredEntry], digest: UInt64, isReply: Bool)
    /// Entries changed through `allocate` / `deallocate` at the sender, which waits for enough members to hold them
    /// before it answers its caller: the receiver merges them and answers `held`.
    case replicate(from: NodeID, entries: [DesiredEntry])
    /// "I hold these ids at these versions (or newer)": the answer to `replicate`.
    case held(from: NodeID, versions: [DesiredHolding])

    public var from: NodeID {
        switch self {
        case .delta(let from, _), .digest(let from, _), .state(let from, _, _, _), .replicate(let from, _),
            .held(let from, _):
            return from
        }
    }
}

/// One id of the desired set and the version its sender holds.
public struct DesiredHolding: Hashable, Sendable {
    public var id: ResourceID
    public var version: DesiredVersion

    public init(id: ResourceID, version: DesiredVersion) {
        self.id = id
        self.version = version
    }
}

/// An `allocate` or `deallocate` carried to the resource's owner.
public enum ForwardOperation: Hashable, Sendable {
    case allocate(DesiredEntry)
    case deallocate(DesiredEntry)

    public var entry: DesiredEntry {
        switch self {
        case .allocate(let entry), .deallocate(let entry): return entry
        }
    }
}

public struct ForwardItem: Hashable, Sendable {
    public var requestID: UInt64
    public var operation: ForwardOperation

    public init(requestID: UInt64, operation: ForwardOperation) {
        self.requestID = requestID
        self.operation = operation
    }
}

/// The owner's answer to one forwarded request.
public enum ForwardAnswer: Hashable, Sendable {
    /// The owner's handler handled the resource (it runs).
    case handled
    /// The owner's handler failed; the owner keeps retrying with backoff.
    case handleFailed(attempt: Int)
    /// The owner terminated the resource (or it was not running).
    case terminated
    /// The owner's view differs from the sender's, or the resource moved: the sender re-resolves and retries.
    case refused(checksum: UInt64)
}

public struct ForwardReply: Hashable, Sendable {
    public var requestID: UInt64
    public var answer: ForwardAnswer

    public init(requestID: UInt64, answer: ForwardAnswer) {
        self.requestID = requestID
        self.answer = answer
    }
}

public enum ForwardMessage: Hashable, Sendable {
    /// Requests from one node to the owner, batched, with the sender's placement checksum.
    case request(from: NodeID, checksum: UInt64, items: [ForwardItem])
    case reply(from: NodeID, replies: [ForwardReply])

    public var from: NodeID {
        switch self {
        case .request(let from, _, _), .reply(let from, _): return from
        }
    }
}

/// A frame of an application protocol carried between nodes (the realtime gateway's cluster relay). Opaque here:
/// the node's state machine never sees it; the `ResourceManager` hands it to ``ResourceManager/setRelayReceiver(_:)``.
public struct RelayMessage: Hashable, Sendable {
    /// The node that sent it.
    public var from: NodeID
    /// The application's bytes (the relay's own encoding).
    public var payload: [UInt8]

    public init(from: NodeID, payload: [UInt8]) {
        self.from = from
        self.payload = payload
    }
}

/// Everything nodes say to each other.
public enum ClusterMessage: Hashable, Sendable {
    case membership(MembershipMessage)
    case ownership(OwnershipMessage)
    case desired(DesiredSetMessage)
    case forward(ForwardMessage)
    /// An application frame for the relay; not part of the resource protocols.
    case relay(RelayMessage)

    public var from: NodeID {
        switch self {
        case .membership(let message): return message.from
        case .ownership(let message): return message.from
        case .desired(let message): return message.from
        case .forward(let message): return message.from
        case .relay(let message): return message.from
        }
    }
}

// MARK: - Outcomes, events, actions

/// How an `allocate` or `deallocate` ended, as reported by the resource's owner.
public enum RequestOutcome: Hashable, Sendable {
    /// `allocate`: the owner's handler handled the resource.
    case handled(by: NodeID)
    /// `allocate`: the owner's handler failed; the owner retries with backoff and calls `handleFailed`.
    case handleFailed(by: NodeID, attempt: Int)
    /// `deallocate`: the owner terminated the resource, or it was not running anywhere.
    case terminated(by: NodeID)
    /// The request could not reach an owner that agreed on the view before the deadline.
    case timedOut
    /// The owner answered, but fewer members than `required` confirmed that they hold the change before the deadline:
    /// it is not acknowledged. It may still spread, or be lost if the `holders` that have it crash.
    case notReplicated(holders: Int, required: Int)
    /// The node is leaving or stopped.
    case shutdown

    public var succeeded: Bool {
        switch self {
        case .handled, .terminated: return true
        case .handleFailed, .timedOut, .notReplicated, .shutdown: return false
        }
    }
}

/// What a node reports about itself and its resources.
public enum NodeEvent: Hashable, Sendable {
    case resource(ResourceEvent)
    case member(MemberChange)
    case joined(standalone: Bool)
    case refuted(incarnation: UInt64)
    /// A new view was applied: these members, this placement checksum.
    case viewApplied(members: [NodeID], checksum: UInt64)
    /// Nothing runs here any more and the node left the membership.
    case left
}

/// What one node's state machine asks its driver to do.
public enum NodeAction: Hashable, Sendable {
    case send(ClusterMessage, to: String)
    case handle(Resource, attempt: Int, ticket: UInt64)
    case terminate(Resource, reason: TerminationReason, ticket: UInt64)
    /// A local `allocate` / `deallocate` call finished.
    case complete(requestID: UInt64, RequestOutcome)
    case event(NodeEvent)
    /// Lease mode: the orchestrator's requests to the ownership store (see `OrchestratorAction`).
    case acquireLeases([ResourceID])
    case renewLeases([LeaseKey])
    case releaseLeases([LeaseKey])
}
