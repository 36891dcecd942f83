import Foundation
import StorkCore

// MARK: - Settings

/// How the orchestrator paces itself. Every duration is in the driver's time (virtual in the simulator).
public struct OrchestratorSettings: Sendable, Hashable {
    /// How long a change of membership waits for more changes before the node rebalances, so that a burst of
    /// changes (a deploy, a partition healing) causes one rebalance with the latest view.
    public var rebalanceDelay: Duration = .milliseconds(50)
    /// How often unanswered release requests are sent again (they may be lost).
    public var claimResendInterval: Duration = .milliseconds(300)
    /// How long a new owner waits for live members to confirm they released a resource before it handles it
    /// anyway. Failure detection declares an unresponsive member dead long before this.
    public var handoffDeadline: Duration = .seconds(30)
    /// First delay before a failed handle is retried; doubles (`retryMultiplier`) up to `retryMaximum`.
    public var retryInitial: Duration = .seconds(1)
    public var retryMaximum: Duration = .seconds(60)
    public var retryMultiplier: Double = 2
    /// Each retry delay is multiplied by a random factor in `[1 - retryJitter, 1 + retryJitter]`.
    public var retryJitter: Double = 0.2
    /// Who may run a resource: the placement owner once every member confirmed (`gossip`), or the placement owner
    /// while it holds a lease in an ownership store (`lease`).
    public var ownership: OwnershipMode = .gossip

    public init() {}

    /// The delay before retry number `attempt` (1 = first retry), without jitter.
    public func retryDelay(attempt: Int) -> Duration {
        let exponent = Double(max(0, attempt - 1))
        let seconds = self.retryInitial.secondsDouble * pow(self.retryMultiplier, exponent)
        return .nanoseconds(Int64(min(seconds, self.retryMaximum.secondsDouble) * 1e9))
    }
}

// MARK: - Ownership mode and leases

/// How ownership of a resource is decided.
public enum OwnershipMode: Sendable, Hashable {
    /// Placement on the gossiped view, with revoke-then-assign between members. Two nodes run one resource only
    /// when a live node was declared dead (a pause or partition longer than failure detection).
    case gossip
    /// Placement says who should own; a lease in an `OwnershipStore` says who may act. A node handles only while
    /// it holds an unexpired lease, and every acquisition carries a new fencing token.
    case lease(LeaseSettings)

    public var leaseSettings: LeaseSettings? {
        if case .lease(let settings) = self { return settings }
        return nil
    }
}

/// Lease timing, as in Kubernetes leader election: a lease lasts `duration` from the store's clock at each
/// acquisition or renewal; its holder renews every `renewInterval`; if no renewal succeeded for `renewDeadline`
/// (measured on the holder's own clock from the moment it sent the last successful request), the holder stops the
/// resource itself, before the store can consider the lease expired and grant it to another node.
public struct LeaseSettings: Sendable, Hashable {
    public var duration: Duration = .seconds(10)
    public var renewInterval: Duration = .seconds(2)
    public var renewDeadline: Duration = .seconds(7)
    /// How often a node that wants a lease held by another node asks again.
    public var acquireRetryInterval: Duration = .milliseconds(500)

    public init() {}

    public init(duration: Duration, renewInterval: Duration, renewDeadline: Duration, acquireRetryInterval: Duration) {
        self.duration = duration
        self.renewInterval = renewInterval
        self.renewDeadline = renewDeadline
        self.acquireRetryInterval = acquireRetryInterval
    }

    /// Throws unless `renewInterval < renewDeadline < duration` and every duration is positive.
    public func validate() throws {
        guard self.renewInterval > .zero, self.acquireRetryInterval > .zero else {
            throw StorkError(.invalidInput, "ownership.renewInterval and ownership.acquireRetryInterval must be positive")
        }
        guard self.renewInterval < self.renewDeadline else {
            throw StorkError(.invalidInput, "ownership.renewInterval must be shorter than ownership.renewDeadline")
        }
        guard self.renewDeadline < self.duration else {
            throw StorkError(.invalidInput, "ownership.renewDeadline must be shorter than ownership.leaseDuration")
        }
    }
}

/// A lease on one resource as its holder knows it: the fencing token of its acquisition.
public struct LeaseKey: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var id: ResourceID
    public var token: UInt64

    public init(id: ResourceID, token: UInt64) {
        self.id = id
        self.token = token
    }

    public static func < (lhs: LeaseKey, rhs: LeaseKey) -> Bool { (lhs.id, lhs.token) < (rhs.id, rhs.token) }
    public var description: String { "\(self.id)#\(self.token)" }
}

// MARK: - Messages between orchestrators

/// One resource in a release request or its answer: the claimant's round for that resource, so that an answer to
/// an older claim is never taken for an answer to the current one.
public struct ClaimItem: Hashable, Sendable, Codable, CustomStringConvertible {
    public var id: ResourceID
    public var round: UInt64

    public init(id: ResourceID, round: UInt64) {
        self.id = id
        self.round = round
    }

    public var description: String { "\(self.id)@\(self.round)" }
}

/// The revoke-then-assign protocol between a new owner and every other live member.
public enum OwnershipMessage: Hashable, Sendable {
    /// "Under the view with this placement checksum I own these resources: stop them if you run them, and
    /// confirm." Sent by a node that is about to handle resources it does not run yet.
    case releaseRequest(from: NodeID, checksum: UInt64, items: [ClaimItem])
    /// "I do not run these (any more), and I will not start them without asking you." Sent when nothing of the
    /// resource runs here: at once, or after its termination finished.
    case releaseConfirm(from: NodeID, items: [ClaimItem])
    /// "My view differs from yours (here is my checksum); ask again when we agree."
    case releaseRefuse(from: NodeID, checksum: UInt64, items: [ClaimItem])

    public var from: NodeID {
        switch self {
        case .releaseRequest(let from, _, _), .releaseConfirm(let from, _), .releaseRefuse(let from, _, _):
            return from
        }
    }
}

// MARK: - Actions and events

/// Why a resource is being terminated.
public enum TerminationReason: String, Hashable, Sendable, Codable {
    /// Placement moved it to another node.
    case moved
    /// It is no longer in the desired set (deallocated, or deleted at its source).
    case removed
    /// Its attributes changed; it is restarted with the new ones.
    case updated
    /// This node is leaving the cluster or stopping.
    case leaving
    /// Lease mode: this node could not renew its lease in time (or the store says another node holds it), so it
    /// stops the resource itself (self-fencing).
    case leaseLost
}

/// What happened to a resource on this node; the `ResourceManager` publishes these as its lifecycle events.
public enum ResourceEventKind: Hashable, Sendable {
    /// This node became the owner and asked the other members to release the resource.
    case claiming(peers: Int)
    /// The handler was called (attempt 1 is the first call).
    case handling(attempt: Int)
    case handled(attempt: Int)
    case handleFailed(attempt: Int, retryIn: Duration)
    case terminating(TerminationReason)
    case terminated(TerminationReason)
    case terminationFailed(TerminationReason)
    /// Members in the current view did not confirm the release before the deadline; the node handled anyway.
    case handoffTimedOut(unconfirmed: [NodeID])
    /// Lease mode: this node owns the resource by placement and asks the store for its lease.
    case acquiringLease
    /// Lease mode: the store granted the lease with this fencing token.
    case leaseAcquired(token: UInt64)
    /// Lease mode: the lease was not renewed in time, or another node holds it now.
    case leaseLost(token: UInt64)

    /// The event's name without its details (`handled`, `terminated`, `leaseLost`, …): one subject token.
    public var name: String {
        switch self {
        case .claiming: "claiming"
        case .handling: "handling"
        case .handled: "handled"
        case .handleFailed: "handleFailed"
        case .terminating: "terminating"
        case .terminated: "terminated"
        case .terminationFailed: "terminationFailed"
        case .handoffTimedOut: "handoffTimedOut"
        case .acquiringLease: "acquiringLease"
        case .leaseAcquired: "leaseAcquired"
        case .leaseLost: "leaseLost"
        }
    }
}

public struct ResourceEvent: Hashable, Sendable, CustomStringConvertible {
    public var id: ResourceID
    public var kind: ResourceEventKind
    public var at: StorkInstant

    public init(id: ResourceID, kind: ResourceEventKind, at: StorkInstant) {
        self.id = id
        self.kind = kind
        self.at = at
    }

    public var description: String { "\(self.at) \(self.id) \(self.kind)" }
}

/// What the orchestrator asks its driver to do. Each action is independent; the driver performs them in order.
public enum OrchestratorAction: Hashable, Sendable {
    /// Call the handler's `handle`. Report the outcome with `handleCompleted(_:ticket:succeeded:now:)`.
    case handle(Resource, attempt: Int, ticket: UInt64)
    /// Call the handler's `terminate`. Report the outcome with `terminateCompleted(_:ticket:succeeded:now:)`.
    case terminate(Resource, reason: TerminationReason, ticket: UInt64)
    /// Send a release request to a member.
    case send(OwnershipMessage, to: NodeID)
    /// A failed handle will be retried at this time (informational: the state machine owns the timer).
    case scheduleRetry(ResourceID, attempt: Int, at: StorkInstant)
    case event(ResourceEvent)
    /// Leaving: nothing runs here any more.
    case drained
    /// Lease mode: ask the store for these leases (one batch). Report with `leasesAcquired(…)` or
    /// `leaseAcquireFailed(…)`, passing the time just before the request was sent.
    case acquireLeases([ResourceID])
    /// Lease mode: renew every lease this node holds (one batch). Report with `leasesRenewed(…)` or
    /// `leaseRenewFailed(…)`.
    case renewLeases([LeaseKey])
    /// Lease mode: give these leases back (the resources stopped here and belong elsewhere). Best effort: an
    /// unreleased lease expires.
    case releaseLeases([LeaseKey])
}
