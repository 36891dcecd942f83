import StorkCore
import StorkPlacement

// MARK: - OrchestratorStateMachine
//
// Turns "what this node should run" (the desired set, placed on the current view of the cluster) and "what it
// runs" into actions: handle, terminate, claim, confirm, retry. It is pure: events in, actions out, time passed in.
//
// The rules that keep a resource on exactly one node:
//
// 1. One phase per resource: claiming → handling → running → terminating, or failed (waiting to retry). A handle
//    or terminate call is only ever issued from a phase in which none is in flight, so there are never two
//    concurrent calls for one id (the original library's double-handle race).
// 2. Revoke-then-assign. A node that becomes the owner of a resource it does not run first asks every other
//    member of its view to release it (`releaseRequest`, carrying the view's placement checksum and a round
//    number). A member answers only when it agrees on the view (same checksum) and nothing of the resource runs
//    there any more; until then it refuses or holds the answer. The owner handles once every member confirmed.
//    Members it considers dead or gone are not asked: that is the only way two nodes can run one resource, and
//    only when failure detection declared a live node dead (a pause or a partition).
// 3. A node that runs a resource it no longer owns terminates it at once. With rule 2 this makes every move
//    terminate-before-handle, and it also resolves duplicates left behind by a healed partition.
// 4. Views are applied after `rebalanceDelay`, so bursts of membership changes cause one rebalance with the
//    latest view. Answers to claims use the applied view only.
// 5. A node leaving terminates everything and reports `drained` before it leaves the membership, so nobody
//    starts its resources while it still runs them.
// 6. A resource pinned to a node (`Resource.pinnedNode`, by name) is owned by the member of that name only, and by
//    nobody while no member has it: placement never moves it elsewhere. Rules 1–5 apply to it unchanged.
//
// In lease mode (`OwnershipMode.lease`) rule 2 is replaced by a lease in an ownership store: the placement owner
// asks the store for the resource's lease (batched), handles once granted (with the lease's fencing token), renews
// all its leases in one batch every `renewInterval`, and gives a lease back after terminating a resource that moved.
// If no renewal succeeded for `renewDeadline` since the last successful request was sent, it terminates the
// resource itself (self-fencing) before the store's `duration` can run out, and asks for the lease again. Another
// node gets the lease only once it was given back or expired by the store's clock.

/// The per-node orchestrator of resource ownership. See the comment at the top of this file for the rules.
public struct OrchestratorStateMachine: Sendable {
    // MARK: State

    enum Phase: Hashable, Sendable {
        /// Waiting for `waiting` to confirm they released the resource (nothing runs here).
        case claiming(round: UInt64, waiting: Set<NodeID>, started: StorkInstant)
        /// Lease mode: waiting for the store to grant the lease (nothing runs here).
        case acquiring
        /// `handle` is in flight.
        case handling(ticket: UInt64)
        /// Handled, running.
        case running
        /// The last handle failed; retried at `retryAt` (nothing runs here).
        case failed(retryAt: StorkInstant)
        /// `terminate` is in flight.
        case terminating(ticket: UInt64, reason: TerminationReason)

        /// Whether the handler may be running the resource in this phase.
        var isActive: Bool {
            switch self {
            case .handling, .running, .terminating: return true
            case .claiming, .acquiring, .failed: return false
            }
        }
    }

    struct Entry: Sendable {
        var resource: Resource
        var phase: Phase
        /// Handle attempts since the last success.
        var attempt: Int = 0
        /// The placement checksum under which every member confirmed; a later handle in the same view needs no new
        /// claim.
        var claimedUnder: UInt64?
        /// Claimants that must be told once nothing of the resource runs here, with their round.
        var waiters: [NodeID: UInt64] = [:]
    }

    enum Timer: Hashable, Sendable {
        case rebalance
        case claimResend
        case retry(ResourceID)
        case leaseRenew
        case leaseCheck
        case acquireRetry
    }

    /// A lease this node holds: its token, and when the node must stop acting on it unless renewed.
    struct HeldLease: Hashable, Sendable {
        var token: UInt64
        var fenceAt: StorkInstant
    }

    public let myself: NodeID
    public var settings: OrchestratorSettings
    /// The view in force.
    public private(set) var placement: Placement
    private var pendingPlacement: Placement?
    /// False until the node joined the cluster: before that it neither handles nor answers claims.
    public private(set) var isReady = false
    private var pendingReady = false
    public private(set) var isLeaving = false
    private var drainedReported = false

    private var desired: [ResourceID: Resource] = [:]
    private var entries: [ResourceID: Entry] = [:]
    private var claiming: Set<ResourceID> = []
    private var leases: [ResourceID: HeldLease] = [:]
    /// Lease mode: resources in `.acquiring`, and those whose acquisition is with the store right now.
    private var acquiring: Set<ResourceID> = []
    private var acquireInFlight: Set<ResourceID> = []
    private var renewInFlight = false
    private var timers = DeadlineQueue<Timer>()
    private var nextRound: UInt64 = 0
    private var nextTicket: UInt64 = 0
    private var random: SeededRandom

    // Per-event buffers, flushed into actions at the end of every public entry point.
    private var actions: [OrchestratorAction] = []
    private var requestOutbox: [NodeID: [ClaimItem]] = [:]
    private var confirmOutbox: [NodeID: [ClaimItem]] = [:]
    private var refuseOutbox: [NodeID: [ClaimItem]] = [:]
    private var acquireOutbox: [ResourceID] = []
    private var releaseOutbox: [LeaseKey] = []

    public init(
        myself: NodeID,
        strategy: PlacementStrategy = .rendezvous,
        settings: OrchestratorSettings = .init(),
        random: SeededRandom
    ) {
        self.myself = myself
        self.settings = settings
        self.placement = Placement(strategy: strategy, nodes: [myself])
        self.random = random
    }

    // MARK: Queries

    /// The earliest time at which `tick(now:)` has work to do.
    public var nextDeadline: StorkInstant? { self.timers.peekDeadline }

    /// Resources whose handler may be running here (handling, running or terminating).
    public var activeResources: [ResourceID] {
        self.entries.compactMap { $0.value.phase.isActive ? $0.key : nil }.sorted()
    }

    /// Resources that are handled and running here.
    public var runningResources: [ResourceID] {
        self.entries.compactMap { $0.value.phase == .running ? $0.key : nil }.sorted()
    }

    public var desiredCount: Int { self.desired.count }

    /// Lease mode: the fencing token of the lease this node holds for `id`, if any.
    public func fencingToken(of id: ResourceID) -> UInt64? { self.leases[id]?.token }

    /// Lease mode: the leases this node holds, and when it must stop acting on each unless renewed.
    public var heldLeases: [(key: LeaseKey, fenceAt: StorkInstant)] {
        self.leases.map { (LeaseKey(id: $0.key, token: $0.value.token), $0.value.fenceAt) }.sorted { $0.key < $1.key }
    }

    private var leaseSettings: LeaseSettings? { self.settings.ownership.leaseSettings }

    private func hasValidLease(_ id: ResourceID, now: StorkInstant) -> Bool {
        guard let lease = self.leases[id] else { return false }
        return lease.fenceAt > now
    }
    public func desiredResource(_ id: ResourceID) -> Resource? { self.desired[id] }
    public var desiredResources: [Resource] { self.desired.values.sorted { $0.id < $1.id } }

    /// A short name of the resource's phase here, or nil when the node holds no state for it.
    public func phase(of id: ResourceID) -> String? {
        guard let entry = self.entries[id] else { return nil }
        switch entry.phase {
        case .claiming: return "claiming"
        case .acquiring: return "acquiring"
        case .handling: return "handling"
        case .running: return "running"
        case .failed: return "failed"
        case .terminating: return "terminating"
        }
    }

    public func isRunning(_ id: ResourceID) -> Bool { self.entries[id]?.phase == .running }

    /// The resource as this node knows it: desired, or (removed, still ending here) the one it runs.
    public func knownResource(_ id: ResourceID) -> Resource? { self.desired[id] ?? self.entries[id]?.resource }

    /// The node that should run `id` in the view in force: the member its pin names (none while that node is not a
    /// member), or the placement owner.
    public func owner(of id: ResourceID) -> NodeID? {
        self.placement.owner(of: id, pinnedTo: self.knownResource(id)?.pinnedNode)
    }

    /// Whether this node should run `id` in the view in force.
    public func shouldRun(_ id: ResourceID) -> Bool {
        self.isReady && !self.isLeaving && self.desired[id] != nil && self.owner(of: id) == self.myself
    }

    // MARK: Events

    /// The node joined the cluster (or runs alone): from now on it handles what it owns.
    public mutating func becameReady(now: StorkInstant) -> [OrchestratorAction] {
        self.pendingReady = true
        self.timers.scheduleIfEarlier(.rebalance, at: now + self.settings.rebalanceDelay)
        return self.flush()
    }

    /// A new view of the cluster. It is applied after `rebalanceDelay`, together with any view that follows it.
    public mutating func viewChanged(_ placement: Placement, now: StorkInstant) -> [OrchestratorAction] {
        self.pendingPlacement = placement
        self.timers.scheduleIfEarlier(.rebalance, at: now + self.settings.rebalanceDelay)
        return self.flush()
    }

    /// Resources added or changed, and resources removed, in the desired set.
    public mutating func desiredChanged(
        upserted: [Resource],
        removed: [ResourceID],
        now: StorkInstant
    ) -> [OrchestratorAction] {
        for resource in upserted { self.desired[resource.id] = resource }
        for id in removed { self.desired[id] = nil }
        var touched = Set(upserted.map(\.id))
        touched.formUnion(removed)
        for id in touched.sorted() { self.reconcile(id, now: now) }
        return self.flush()
    }

    /// The whole desired set, replacing the previous one.
    public mutating func desiredReplaced(_ resources: [Resource], now: StorkInstant) -> [OrchestratorAction] {
        var next: [ResourceID: Resource] = [:]
        next.reserveCapacity(resources.count)
        for resource in resources { next[resource.id] = resource }
        var touched: [ResourceID] = []
        for (id, resource) in next where self.desired[id] != resource { touched.append(id) }
        for id in self.desired.keys where next[id] == nil { touched.append(id) }
        self.desired = next
        for id in touched.sorted() { self.reconcile(id, now: now) }
        return self.flush()
    }

    /// The handler's `handle` for `id` returned (`succeeded`) or threw.
    public mutating func handleCompleted(
        _ id: ResourceID,
        ticket: UInt64,
        succeeded: Bool,
        now: StorkInstant
    ) -> [OrchestratorAction] {
        guard var entry = self.entries[id], case .handling(let current) = entry.phase, current == ticket else {
            return self.flush()
        }
        if succeeded {
            entry.phase = .running
            let attempt = entry.attempt
            entry.attempt = 0
            self.entries[id] = entry
            self.emit(id, .handled(attempt: attempt), now: now)
        } else {
            self.fail(id, entry, now: now)
        }
        self.reconcile(id, now: now)
        return self.flush()
    }

    /// A running resource stopped by itself (a runner returned or threw): nothing runs here any more, and it is
    /// retried with backoff like a failed handle.
    public mutating func runningFailed(_ id: ResourceID, now: StorkInstant) -> [OrchestratorAction] {
        guard var entry = self.entries[id], entry.phase == .running else { return self.flush() }
        entry.attempt = max(entry.attempt, 1)
        self.fail(id, entry, now: now)
        self.reconcile(id, now: now)
        self.checkDrained()
        return self.flush()
    }

    private mutating func fail(_ id: ResourceID, _ entry: Entry, now: StorkInstant) {
        var entry = entry
        var delay = self.settings.retryDelay(attempt: entry.attempt)
        delay = self.random.jittered(delay, fraction: self.settings.retryJitter)
        let retryAt = now + delay
        entry.phase = .failed(retryAt: retryAt)
        self.entries[id] = entry
        self.timers.schedule(.retry(id), at: retryAt)
        self.emit(id, .handleFailed(attempt: entry.attempt, retryIn: delay), now: now)
        self.actions.append(.scheduleRetry(id, attempt: entry.attempt + 1, at: retryAt))
        // Someone may be waiting for this resource to stop here: a failed handle leaves nothing running.
        self.confirmWaiters(of: id)
    }

    /// The handler's `terminate` for `id` returned (`succeeded`) or threw. Either way the resource no longer runs
    /// here: a failed termination is reported and the resource is still released.
    public mutating func terminateCompleted(
        _ id: ResourceID,
        ticket: UInt64,
        succeeded: Bool,
        now: StorkInstant
    ) -> [OrchestratorAction] {
        guard let entry = self.entries[id], case .terminating(let current, let reason) = entry.phase,
            current == ticket
        else {
            return self.flush()
        }
        self.emit(id, succeeded ? .terminated(reason) : .terminationFailed(reason), now: now)
        self.confirmWaiters(of: id)
        self.entries[id] = nil
        self.releaseLeaseIfUnneeded(id)
        self.reconcile(id, now: now)
        self.checkDrained()
        return self.flush()
    }

    /// A message from another member's orchestrator.
    public mutating func receive(_ message: OwnershipMessage, now: StorkInstant) -> [OrchestratorAction] {
        switch message {
        case .releaseRequest(let from, let checksum, let items):
            self.onReleaseRequest(from: from, checksum: checksum, items: items, now: now)
        case .releaseConfirm(let from, let items):
            self.onReleaseConfirm(from: from, items: items, now: now)
        case .releaseRefuse:
            // The claimant keeps asking on its resend timer; the views converge through membership.
            break
        }
        return self.flush()
    }

    // MARK: Lease events

    /// Lease mode: the store answered an `acquireLeases` request sent at `requestedAt`: `granted` leases with their
    /// tokens; the other ids are held by another node (asked again every `acquireRetryInterval`).
    public mutating func leasesAcquired(
        granted: [LeaseKey],
        refused: [ResourceID],
        requestedAt: StorkInstant,
        now: StorkInstant
    ) -> [OrchestratorAction] {
        guard let settings = self.leaseSettings else { return self.flush() }
        for key in granted {
            self.acquireInFlight.remove(key.id)
            self.leases[key.id] = HeldLease(token: key.token, fenceAt: requestedAt + settings.renewDeadline)
            self.emit(key.id, .leaseAcquired(token: key.token), now: now)
            if let entry = self.entries[key.id], entry.phase == .acquiring, self.shouldRun(key.id),
                self.hasValidLease(key.id, now: now)
            {
                self.startHandle(key.id, now: now)
            } else {
                self.releaseLeaseIfUnneeded(key.id)
            }
        }
        self.acquireFailed(refused, now: now)
        self.scheduleLeaseTimers(now: now)
        return self.flush()
    }

    /// Lease mode: an `acquireLeases` request failed (the store is unreachable or answered with an error).
    public mutating func leaseAcquireFailed(_ ids: [ResourceID], now: StorkInstant) -> [OrchestratorAction] {
        self.acquireFailed(ids, now: now)
        return self.flush()
    }

    /// Lease mode: the store answered a `renewLeases` request sent at `requestedAt`: `renewed` leases last another
    /// `duration`; `lost` ones are no longer this node's (expired, or another node holds them now).
    public mutating func leasesRenewed(
        renewed: [LeaseKey],
        lost: [LeaseKey],
        requestedAt: StorkInstant,
        now: StorkInstant
    ) -> [OrchestratorAction] {
        guard let settings = self.leaseSettings else { return self.flush() }
        self.renewInFlight = false
        for key in renewed {
            guard var lease = self.leases[key.id], lease.token == key.token else { continue }
            lease.fenceAt = max(lease.fenceAt, requestedAt + settings.renewDeadline)
            self.leases[key.id] = lease
        }
        for key in lost where self.leases[key.id]?.token == key.token {
            self.fence(key.id, token: key.token, now: now)
        }
        self.checkLeases(now: now)
        return self.flush()
    }

    /// Lease mode: a `renewLeases` request failed. The leases stay until their deadline; the next renewal may work.
    public mutating func leaseRenewFailed(now: StorkInstant) -> [OrchestratorAction] {
        self.renewInFlight = false
        return self.flush()
    }

    private mutating func acquireFailed(_ ids: [ResourceID], now: StorkInstant) {
        guard let settings = self.leaseSettings else { return }
        var retry = false
        for id in ids {
            self.acquireInFlight.remove(id)
            if self.acquiring.contains(id) { retry = true }
        }
        if retry {
            let delay = self.random.jittered(settings.acquireRetryInterval, fraction: 0.2)
            self.timers.scheduleIfEarlier(.acquireRetry, at: now + delay)
        }
    }

    private mutating func retryAcquisitions(now: StorkInstant) {
        for id in self.acquiring.sorted() where !self.acquireInFlight.contains(id) {
            guard self.shouldRun(id) else {
                self.dropEntry(id)
                continue
            }
            self.acquireOutbox.append(id)
        }
    }

    private mutating func renewLeases(now: StorkInstant) {
        guard self.leaseSettings != nil, !self.leases.isEmpty else { return }
        if !self.renewInFlight {
            self.renewInFlight = true
            self.actions.append(.renewLeases(self.leases.map { LeaseKey(id: $0.key, token: $0.value.token) }.sorted()))
        }
        self.scheduleLeaseTimers(now: now)
    }

    /// Self-fencing: stops every resource whose lease was not renewed in time.
    private mutating func checkLeases(now: StorkInstant) {
        for (id, lease) in self.leases where lease.fenceAt <= now {
            self.fence(id, token: lease.token, now: now)
        }
        self.scheduleLeaseTimers(now: now)
    }

    private mutating func fence(_ id: ResourceID, token: UInt64, now: StorkInstant) {
        self.leases[id] = nil
        self.emit(id, .leaseLost(token: token), now: now)
        self.reconcile(id, now: now)
        // A lease granted too late to use leaves its resource waiting: ask again.
        if self.entries[id]?.phase == .acquiring, !self.acquireInFlight.contains(id) { self.acquireOutbox.append(id) }
    }

    private mutating func scheduleLeaseTimers(now: StorkInstant) {
        guard let settings = self.leaseSettings else { return }
        if self.leases.isEmpty {
            self.timers.cancel(.leaseRenew)
            self.timers.cancel(.leaseCheck)
            return
        }
        if self.timers.deadline(of: .leaseRenew) == nil {
            self.timers.schedule(.leaseRenew, at: now + settings.renewInterval)
        }
        if let earliest = self.leases.values.lazy.map(\.fenceAt).min() {
            self.timers.schedule(.leaseCheck, at: max(earliest, now))
        }
    }

    /// Runs every timer due at `now`.
    public mutating func tick(now: StorkInstant) -> [OrchestratorAction] {
        while let timer = self.timers.popDue(now: now) {
            switch timer {
            case .rebalance:
                self.applyView(now: now)
            case .claimResend:
                self.resendClaims(now: now)
            case .retry(let id):
                self.retry(id, now: now)
            case .leaseRenew:
                self.renewLeases(now: now)
            case .leaseCheck:
                self.checkLeases(now: now)
            case .acquireRetry:
                self.retryAcquisitions(now: now)
            }
        }
        return self.flush()
    }

    /// Stop handling: terminate everything, answer claims, and report `drained` when nothing runs here.
    public mutating func leave(now: StorkInstant) -> [OrchestratorAction] {
        self.isLeaving = true
        for id in self.allKnownIDs() { self.reconcile(id, now: now) }
        self.checkDrained()
        return self.flush()
    }

    // MARK: Reconciliation

    private mutating func reconcile(_ id: ResourceID, now: StorkInstant) {
        let shouldRun = self.shouldRun(id)
        guard var entry = self.entries[id] else {
            if shouldRun, let resource = self.desired[id] {
                self.startClaim(id, resource: resource, previous: nil, now: now)
            }
            return
        }
        let wanted = self.desired[id]
        switch entry.phase {
        case .claiming, .acquiring:
            if !shouldRun {
                self.dropEntry(id)
            } else if let wanted, wanted != entry.resource {
                entry.resource = wanted
                self.entries[id] = entry
            }
        case .failed:
            if !shouldRun {
                self.timers.cancel(.retry(id))
                self.dropEntry(id)
            } else if let wanted, wanted != entry.resource {
                entry.resource = wanted
                self.entries[id] = entry
            }
        case .running:
            if !shouldRun {
                let reason: TerminationReason =
                    wanted == nil ? .removed : (self.isLeaving || !self.isReady ? .leaving : .moved)
                self.startTerminate(id, reason: reason, now: now)
            } else if self.leaseSettings != nil, !self.hasValidLease(id, now: now) {
                self.startTerminate(id, reason: .leaseLost, now: now)
            } else if let wanted, wanted != entry.resource {
                self.startTerminate(id, reason: .updated, now: now)
            }
        case .handling, .terminating:
            // Wait for the call in flight; its completion reconciles again.
            break
        }
    }

    private mutating func startClaim(_ id: ResourceID, resource: Resource, previous: Entry?, now: StorkInstant) {
        if self.leaseSettings != nil {
            self.startAcquire(id, resource: resource, previous: previous, now: now)
            return
        }
        var entry = previous ?? Entry(resource: resource, phase: .running)
        entry.resource = resource
        entry.waiters = [:]
        let myself = self.myself
        let peers = self.placement.members.map(\.node).filter { $0 != myself }
        if peers.isEmpty || entry.claimedUnder == self.placement.checksum {
            entry.claimedUnder = self.placement.checksum
            self.entries[id] = entry
            self.startHandle(id, now: now)
            return
        }
        self.nextRound &+= 1
        let round = self.nextRound
        let waiting = Set(peers)
        entry.phase = .claiming(round: round, waiting: waiting, started: now)
        entry.claimedUnder = nil
        self.entries[id] = entry
        self.claiming.insert(id)
        for peer in waiting { self.requestOutbox[peer, default: []].append(ClaimItem(id: id, round: round)) }
        self.timers.scheduleIfEarlier(.claimResend, at: now + self.settings.claimResendInterval)
        self.emit(id, .claiming(peers: waiting.count), now: now)
    }

    /// Lease mode: handle at once under a lease still held, or ask the store for it.
    private mutating func startAcquire(_ id: ResourceID, resource: Resource, previous: Entry?, now: StorkInstant) {
        var entry = previous ?? Entry(resource: resource, phase: .acquiring)
        entry.resource = resource
        entry.waiters = [:]
        if self.hasValidLease(id, now: now) {
            self.entries[id] = entry
            self.startHandle(id, now: now)
            return
        }
        entry.phase = .acquiring
        self.entries[id] = entry
        self.acquiring.insert(id)
        if !self.acquireInFlight.contains(id) { self.acquireOutbox.append(id) }
        self.emit(id, .acquiringLease, now: now)
    }

    private mutating func startHandle(_ id: ResourceID, now: StorkInstant) {
        guard var entry = self.entries[id] else { return }
        self.claiming.remove(id)
        self.acquiring.remove(id)
        self.nextTicket &+= 1
        entry.attempt += 1
        entry.phase = .handling(ticket: self.nextTicket)
        self.entries[id] = entry
        self.emit(id, .handling(attempt: entry.attempt), now: now)
        self.actions.append(.handle(entry.resource, attempt: entry.attempt, ticket: self.nextTicket))
    }

    private mutating func startTerminate(_ id: ResourceID, reason: TerminationReason, now: StorkInstant) {
        guard var entry = self.entries[id] else { return }
        self.nextTicket &+= 1
        entry.phase = .terminating(ticket: self.nextTicket, reason: reason)
        self.entries[id] = entry
        self.emit(id, .terminating(reason), now: now)
        self.actions.append(.terminate(entry.resource, reason: reason, ticket: self.nextTicket))
    }

    private mutating func dropEntry(_ id: ResourceID) {
        self.confirmWaiters(of: id)
        self.claiming.remove(id)
        self.acquiring.remove(id)
        self.entries[id] = nil
        self.releaseLeaseIfUnneeded(id)
    }

    /// Lease mode: gives the lease back when nothing of the resource runs here and this node should not run it.
    private mutating func releaseLeaseIfUnneeded(_ id: ResourceID) {
        guard let lease = self.leases[id], self.entries[id] == nil, !self.shouldRun(id) else { return }
        self.leases[id] = nil
        self.releaseOutbox.append(LeaseKey(id: id, token: lease.token))
    }

    private mutating func confirmWaiters(of id: ResourceID) {
        guard var entry = self.entries[id], !entry.waiters.isEmpty else { return }
        for (peer, round) in entry.waiters {
            self.confirmOutbox[peer, default: []].append(ClaimItem(id: id, round: round))
        }
        entry.waiters = [:]
        self.entries[id] = entry
    }

    private mutating func retry(_ id: ResourceID, now: StorkInstant) {
        guard let entry = self.entries[id], case .failed = entry.phase else { return }
        guard self.shouldRun(id), let resource = self.desired[id] else {
            self.dropEntry(id)
            return
        }
        if self.leaseSettings != nil {
            self.startAcquire(id, resource: resource, previous: entry, now: now)
        } else if entry.claimedUnder == self.placement.checksum {
            var updated = entry
            updated.resource = resource
            self.entries[id] = updated
            self.startHandle(id, now: now)
        } else {
            self.startClaim(id, resource: resource, previous: entry, now: now)
        }
    }

    private mutating func applyView(now: StorkInstant) {
        if self.pendingReady {
            self.isReady = true
            self.pendingReady = false
        }
        if let pending = self.pendingPlacement {
            self.placement = pending
            self.pendingPlacement = nil
        }
        // Claims in progress restart with the new view's members and a new round.
        for id in self.claiming.sorted() {
            guard let entry = self.entries[id] else { continue }
            if self.shouldRun(id), let resource = self.desired[id] {
                var previous = entry
                previous.claimedUnder = nil
                self.startClaim(id, resource: resource, previous: previous, now: now)
            } else {
                self.dropEntry(id)
            }
        }
        for id in self.allKnownIDs() { self.reconcile(id, now: now) }
    }

    private mutating func resendClaims(now: StorkInstant) {
        for id in self.claiming.sorted() {
            guard var entry = self.entries[id], case .claiming(let round, let waiting, let started) = entry.phase
            else { continue }
            if now >= started + self.settings.handoffDeadline {
                self.emit(id, .handoffTimedOut(unconfirmed: waiting.sorted()), now: now)
                entry.claimedUnder = self.placement.checksum
                self.entries[id] = entry
                self.startHandle(id, now: now)
                continue
            }
            for peer in waiting { self.requestOutbox[peer, default: []].append(ClaimItem(id: id, round: round)) }
        }
        if !self.claiming.isEmpty {
            self.timers.schedule(.claimResend, at: now + self.settings.claimResendInterval)
        }
    }

    private mutating func onReleaseRequest(from: NodeID, checksum: UInt64, items: [ClaimItem], now: StorkInstant) {
        guard self.isReady, checksum == self.placement.checksum, self.placement.contains(from) else {
            self.refuseOutbox[from, default: []].append(contentsOf: items)
            return
        }
        for item in items {
            guard self.owner(of: item.id) == from else {
                self.refuseOutbox[from, default: []].append(item)
                continue
            }
            guard var entry = self.entries[item.id] else {
                self.confirmOutbox[from, default: []].append(item)
                continue
            }
            switch entry.phase {
            case .claiming, .acquiring:
                // Impossible in one view (one owner per id); refuse rather than guess.
                self.refuseOutbox[from, default: []].append(item)
            case .failed:
                self.timers.cancel(.retry(item.id))
                self.dropEntry(item.id)
                self.confirmOutbox[from, default: []].append(item)
            case .handling, .running, .terminating:
                entry.waiters[from] = item.round
                self.entries[item.id] = entry
                self.reconcile(item.id, now: now)
            }
        }
    }

    private mutating func onReleaseConfirm(from: NodeID, items: [ClaimItem], now: StorkInstant) {
        for item in items {
            guard var entry = self.entries[item.id],
                case .claiming(let round, var waiting, let started) = entry.phase, round == item.round
            else { continue }
            waiting.remove(from)
            if waiting.isEmpty {
                entry.claimedUnder = self.placement.checksum
                self.entries[item.id] = entry
                self.startHandle(item.id, now: now)
            } else {
                entry.phase = .claiming(round: round, waiting: waiting, started: started)
                self.entries[item.id] = entry
            }
        }
    }

    private mutating func checkDrained() {
        guard self.isLeaving, !self.drainedReported else { return }
        guard !self.entries.values.contains(where: { $0.phase.isActive }) else { return }
        self.drainedReported = true
        self.actions.append(.drained)
    }

    // MARK: Helpers

    private func allKnownIDs() -> [ResourceID] {
        var ids = Set(self.desired.keys)
        ids.formUnion(self.entries.keys)
        return ids.sorted()
    }

    private mutating func emit(_ id: ResourceID, _ kind: ResourceEventKind, now: StorkInstant) {
        self.actions.append(.event(ResourceEvent(id: id, kind: kind, at: now)))
    }

    private mutating func flush() -> [OrchestratorAction] {
        var result: [OrchestratorAction] = []
        // Leases given back first, so that a driver sees them before `drained`.
        if !self.releaseOutbox.isEmpty {
            result.append(.releaseLeases(self.releaseOutbox.sorted()))
            self.releaseOutbox = []
        }
        result += self.actions
        self.actions = []
        let checksum = self.placement.checksum
        for peer in self.refuseOutbox.keys.sorted() {
            result.append(
                .send(.releaseRefuse(from: self.myself, checksum: checksum, items: self.refuseOutbox[peer]!), to: peer)
            )
        }
        for peer in self.confirmOutbox.keys.sorted() {
            result.append(.send(.releaseConfirm(from: self.myself, items: self.confirmOutbox[peer]!), to: peer))
        }
        for peer in self.requestOutbox.keys.sorted() {
            let items = self.requestOutbox[peer]!
            result.append(.send(.releaseRequest(from: self.myself, checksum: checksum, items: items), to: peer))
        }
        self.refuseOutbox = [:]
        self.confirmOutbox = [:]
        self.requestOutbox = [:]
        if !self.acquireOutbox.isEmpty {
            self.acquireInFlight.formUnion(self.acquireOutbox)
            result.append(.acquireLeases(self.acquireOutbox))
            self.acquireOutbox = []
        }
        return result
    }
}
