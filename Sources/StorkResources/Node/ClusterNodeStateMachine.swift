import StorkCore
import StorkMembership
import StorkPlacement

// MARK: - ClusterNodeStateMachine
//
// One Stork node as a pure state machine: membership (SWIM), the replicated desired set, the orchestrator and
// the forwarding of allocate/deallocate to owners, composed. The real driver (`ResourceManager`) and the
// simulator (`StorkTestKit`) are both thin shells around it: what the simulator proves is what runs.

/// One Stork node: events in (messages, timers, handler outcomes, API calls), actions out.
public struct ClusterNodeStateMachine: Sendable {
    /// A local `allocate` / `deallocate`: answered once its owner answered and enough members hold the change.
    struct PendingForward: Sendable {
        var operation: ForwardOperation
        var deadline: StorkInstant
        /// The node the resource is pinned to, as the requester knew it when the request started (a deallocation's
        /// entry has no resource left to tell).
        var pin: String?
        var refusals = 0
        /// Members known to hold the change (its version or a newer one), this node included.
        var holders: Set<NodeID>
        /// The owner's answer, kept until enough members hold the change.
        var answered: RequestOutcome?
        /// How many times the change was sent to the members that had not confirmed it.
        var replications = 0
    }

    enum WaiterKind: Hashable, Sendable {
        case allocate
        case deallocate
    }

    struct Waiter: Hashable, Sendable {
        var requester: NodeID
        var requestID: UInt64
        var kind: WaiterKind
    }

    enum Timer: Hashable, Sendable {
        case desiredSync
        case desiredGarbage
        case forward(UInt64)
        case replicate(UInt64)
    }

    public let myself: NodeID
    public let settings: NodeSettings
    public private(set) var membership: MembershipStateMachine
    public private(set) var orchestrator: OrchestratorStateMachine
    public private(set) var desired: DesiredSet
    public private(set) var hasLeft = false
    private var isLeaving = false
    private var random: SeededRandom
    /// Wall-clock milliseconds at `StorkInstant.zero`, for the desired set's hybrid logical clock.
    private let epochMillis: UInt64
    private var timers = DeadlineQueue<Timer>()
    private var outgoing: [UInt64: PendingForward] = [:]
    /// The requests in `outgoing` per resource, oldest first: `held` answers find theirs without a scan.
    private var outgoingByResource: [ResourceID: [UInt64]] = [:]
    private var waiters: [ResourceID: [Waiter]] = [:]
    private var actions: [NodeAction] = []
    private var forwardOutbox: [NodeID: [ForwardItem]] = [:]
    private var replicaOutbox: [NodeID: [DesiredEntry]] = [:]
    private var heldOutbox: [NodeID: [DesiredHolding]] = [:]
    private var replyOutbox: [NodeID: [ForwardReply]] = [:]
    private var appliedChecksum: UInt64?
    private var appliedMembers: Set<NodeID> = []

    public init(
        myself: NodeID,
        seeds: [String],
        settings: NodeSettings = .init(),
        random: SeededRandom,
        epochMillis: UInt64 = 0
    ) {
        var random = random
        self.myself = myself
        self.settings = settings
        self.membership = MembershipStateMachine(
            myself: myself,
            seeds: seeds,
            settings: settings.membership,
            random: random.split()
        )
        self.orchestrator = OrchestratorStateMachine(
            myself: myself,
            strategy: settings.placement,
            settings: settings.orchestrator,
            random: random.split()
        )
        self.desired = DesiredSet(origin: "\(myself.name)#\(myself.uid)")
        self.random = random
        self.epochMillis = epochMillis
    }

    // MARK: Queries

    public var nextDeadline: StorkInstant? {
        [self.membership.nextDeadline, self.orchestrator.nextDeadline, self.timers.peekDeadline]
            .compactMap { $0 }.min()
    }

    /// The members this node places resources on (its current view).
    public var placement: Placement { self.orchestrator.placement }

    // MARK: Lifecycle

    public mutating func start(now: StorkInstant) -> [NodeAction] {
        self.process(self.membership.start(now: now), now: now)
        self.timers.schedule(
            .desiredSync,
            at: now + self.random.jittered(self.settings.desiredSyncInterval, fraction: 0.2)
        )
        self.timers.schedule(.desiredGarbage, at: now + .seconds(60))
        return self.flush(now: now)
    }

    /// Graceful leave: terminate everything (answering claims), then leave the membership.
    public mutating func leave(now: StorkInstant) -> [NodeAction] {
        guard !self.isLeaving else { return self.flush(now: now) }
        self.isLeaving = true
        for requestID in self.outgoing.keys.sorted() { self.complete(requestID, .shutdown) }
        self.process(self.orchestrator.leave(now: now), now: now)
        return self.flush(now: now)
    }

    // MARK: API

    /// Adds (or updates) a resource in the cluster's desired set and reports, through `.complete(requestID:)`, how
    /// its owner's handler did.
    public mutating func allocate(_ resource: Resource, requestID: UInt64, now: StorkInstant) -> [NodeAction] {
        guard !self.isLeaving else {
            self.actions.append(.complete(requestID: requestID, .shutdown))
            return self.flush(now: now)
        }
        if let entry = self.desired.put(resource, physicalMillis: self.physicalMillis(now), now: now) {
            self.applyLocally([entry], now: now)
        }
        guard let entry = self.desired.entry(resource.id) else { return self.flush(now: now) }
        self.startRequest(requestID, .allocate(entry), pin: entry.resource?.pinnedNode, now: now)
        return self.flush(now: now)
    }

    /// Removes a resource from the cluster's desired set and reports when its owner terminated it.
    public mutating func deallocate(_ id: ResourceID, requestID: UInt64, now: StorkInstant) -> [NodeAction] {
        guard !self.isLeaving else {
            self.actions.append(.complete(requestID: requestID, .shutdown))
            return self.flush(now: now)
        }
        let pin = self.orchestrator.knownResource(id)?.pinnedNode
        if let entry = self.desired.remove(id, physicalMillis: self.physicalMillis(now), now: now) {
            self.applyLocally([entry], now: now)
        }
        let entry =
            self.desired.entry(id)
            ?? DesiredEntry(id: id, resource: nil, version: DesiredVersion(clock: 0, origin: self.desired.origin))
        self.startRequest(requestID, .deallocate(entry), pin: pin, now: now)
        return self.flush(now: now)
    }

    /// A source delivered its complete list: that source's part of the desired set becomes exactly that list.
    public mutating func sourceReplaced(
        _ resources: [Resource],
        source: String = "default",
        now: StorkInstant
    ) -> [NodeAction] {
        let changes = self.desired.replace(
            with: resources,
            source: source,
            physicalMillis: self.physicalMillis(now),
            now: now
        )
        if !changes.isEmpty { self.publish(changes, now: now) }
        return self.flush(now: now)
    }

    /// A source delivered changes: these resources were added or changed, these were deleted.
    public mutating func sourceChanged(
        upserted: [Resource],
        removed: [ResourceID],
        source: String = "default",
        now: StorkInstant
    ) -> [NodeAction] {
        var changes: [DesiredEntry] = []
        let millis = self.physicalMillis(now)
        for resource in upserted {
            if let entry = self.desired.put(resource, source: source, physicalMillis: millis, now: now) {
                changes.append(entry)
            }
        }
        for id in removed {
            if let entry = self.desired.remove(id, physicalMillis: millis, now: now) { changes.append(entry) }
        }
        if !changes.isEmpty { self.publish(changes, now: now) }
        return self.flush(now: now)
    }

    // MARK: Handler outcomes

    public mutating func handleCompleted(
        _ id: ResourceID,
        ticket: UInt64,
        succeeded: Bool,
        now: StorkInstant
    ) -> [NodeAction] {
        self.process(self.orchestrator.handleCompleted(id, ticket: ticket, succeeded: succeeded, now: now), now: now)
        return self.flush(now: now)
    }

    public mutating func terminateCompleted(
        _ id: ResourceID,
        ticket: UInt64,
        succeeded: Bool,
        now: StorkInstant
    ) -> [NodeAction] {
        self.process(self.orchestrator.terminateCompleted(id, ticket: ticket, succeeded: succeeded, now: now), now: now)
        return self.flush(now: now)
    }

    /// A running resource stopped by itself; it is retried with backoff.
    public mutating func runningFailed(_ id: ResourceID, now: StorkInstant) -> [NodeAction] {
        self.process(self.orchestrator.runningFailed(id, now: now), now: now)
        return self.flush(now: now)
    }

    // MARK: Ownership store answers (lease mode)

    public mutating func leasesAcquired(
        granted: [LeaseKey],
        refused: [ResourceID],
        requestedAt: StorkInstant,
        now: StorkInstant
    ) -> [NodeAction] {
        self.process(
            self.orchestrator.leasesAcquired(granted: granted, refused: refused, requestedAt: requestedAt, now: now),
            now: now
        )
        return self.flush(now: now)
    }

    public mutating func leaseAcquireFailed(_ ids: [ResourceID], now: StorkInstant) -> [NodeAction] {
        self.process(self.orchestrator.leaseAcquireFailed(ids, now: now), now: now)
        return self.flush(now: now)
    }

    public mutating func leasesRenewed(
        renewed: [LeaseKey],
        lost: [LeaseKey],
        requestedAt: StorkInstant,
        now: StorkInstant
    ) -> [NodeAction] {
        self.process(
            self.orchestrator.leasesRenewed(renewed: renewed, lost: lost, requestedAt: requestedAt, now: now),
            now: now
        )
        return self.flush(now: now)
    }

    public mutating func leaseRenewFailed(now: StorkInstant) -> [NodeAction] {
        self.process(self.orchestrator.leaseRenewFailed(now: now), now: now)
        return self.flush(now: now)
    }

    // MARK: Messages and timers

    public mutating func receive(_ message: ClusterMessage, now: StorkInstant) -> [NodeAction] {
        switch message {
        case .membership(let message):
            self.process(self.membership.receive(message, now: now), now: now)
        case .ownership(let message):
            guard !self.hasLeft else { break }
            self.process(self.orchestrator.receive(message, now: now), now: now)
        case .desired(let message):
            guard !self.hasLeft else { break }
            self.onDesired(message, now: now)
        case .forward(let message):
            guard !self.hasLeft else { break }
            self.onForward(message, now: now)
        case .relay:
            // Application frames belong to the relay above; the driver hands them over instead of passing them here.
            break
        }
        return self.flush(now: now)
    }

    public mutating func tick(now: StorkInstant) -> [NodeAction] {
        if let deadline = self.membership.nextDeadline, deadline <= now {
            self.process(self.membership.tick(now: now), now: now)
        }
        if let deadline = self.orchestrator.nextDeadline, deadline <= now {
            self.process(self.orchestrator.tick(now: now), now: now)
        }
        while let timer = self.timers.popDue(now: now) {
            switch timer {
            case .desiredSync:
                self.syncDesired(now: now)
                self.timers.schedule(
                    .desiredSync,
                    at: now + self.random.jittered(self.settings.desiredSyncInterval, fraction: 0.2)
                )
            case .desiredGarbage:
                self.desired.collectGarbage(removedBefore: now - self.settings.desiredTombstoneRetention)
                self.timers.schedule(.desiredGarbage, at: now + .seconds(60))
            case .forward(let requestID):
                self.attemptForward(requestID, now: now)
            case .replicate(let requestID):
                self.replicate(requestID, now: now)
            }
        }
        return self.flush(now: now)
    }

    // MARK: Membership and orchestrator outputs

    private mutating func process(_ membershipActions: [MembershipAction], now: StorkInstant) {
        var viewChanged = false
        for action in membershipActions {
            switch action {
            case .send(let message, let address):
                self.actions.append(.send(.membership(message), to: address))
            case .memberChanged(let change):
                self.actions.append(.event(.member(change)))
                viewChanged = true
            case .joined(let standalone):
                self.actions.append(.event(.joined(standalone: standalone)))
                // Learn the cluster's desired set now rather than at the next anti-entropy round.
                self.syncDesired(now: now)
                if !self.isLeaving {
                    self.process(self.orchestrator.becameReady(now: now), now: now)
                }
                viewChanged = true
            case .refuted(let incarnation):
                self.actions.append(.event(.refuted(incarnation: incarnation)))
            }
        }
        if viewChanged, !self.hasLeft {
            let placement = Placement(strategy: self.settings.placement, nodes: self.membership.placementMembers)
            self.process(self.orchestrator.viewChanged(placement, now: now), now: now)
            // The number of holders a change needs follows the view.
            for requestID in self.outgoing.keys.sorted() { self.completeIfReplicated(requestID) }
        }
    }

    private mutating func process(_ orchestratorActions: [OrchestratorAction], now: StorkInstant) {
        var touched: [ResourceID] = []
        for action in orchestratorActions {
            switch action {
            case .handle(let resource, let attempt, let ticket):
                self.actions.append(.handle(resource, attempt: attempt, ticket: ticket))
            case .terminate(let resource, let reason, let ticket):
                self.actions.append(.terminate(resource, reason: reason, ticket: ticket))
            case .send(let message, let node):
                self.actions.append(.send(.ownership(message), to: node.address))
            case .scheduleRetry:
                break
            case .event(let event):
                self.actions.append(.event(.resource(event)))
                self.resolveWaiters(for: event, now: now)
                touched.append(event.id)
            case .acquireLeases(let ids):
                self.actions.append(.acquireLeases(ids))
            case .renewLeases(let keys):
                self.actions.append(.renewLeases(keys))
            case .releaseLeases(let keys):
                self.actions.append(.releaseLeases(keys))
            case .drained:
                self.process(self.membership.leave(now: now), now: now)
                self.hasLeft = true
                self.actions.append(.event(.left))
                self.answerAllWaitersRefused()
            }
        }
        if self.orchestrator.placement.checksum != self.appliedChecksum, self.orchestrator.isReady {
            self.appliedChecksum = self.orchestrator.placement.checksum
            // Members new to this view (a join, a healed partition) may hold changes this node lacks or lack this
            // node's: compare desired sets with each of them now rather than at the next anti-entropy round.
            let members = Set(self.orchestrator.placement.members.map(\.node))
            for member in members.subtracting(self.appliedMembers).sorted() where member != self.myself {
                self.actions.append(
                    .send(.desired(.digest(from: self.myself, digest: self.desired.digest)), to: member.address)
                )
            }
            self.appliedMembers = members
            self.actions.append(
                .event(
                    .viewApplied(
                        members: self.orchestrator.placement.members.map(\.node),
                        checksum: self.orchestrator.placement.checksum
                    )
                )
            )
            for id in self.waiters.keys.sorted() { self.evaluateWaiters(of: id, now: now) }
        } else {
            for id in touched where self.waiters[id] != nil { self.evaluateWaiters(of: id, now: now) }
        }
    }

    // MARK: Desired set dissemination

    /// Applies a change made here (a source's) and sends it to every peer.
    private mutating func publish(_ entries: [DesiredEntry], now: StorkInstant) {
        self.applyLocally(entries, now: now)
        for peer in self.peers() {
            self.actions.append(.send(.desired(.delta(from: self.myself, entries: entries)), to: peer.address))
        }
    }

    /// Tells the orchestrator about a change made here.
    private mutating func applyLocally(_ entries: [DesiredEntry], now: StorkInstant) {
        var upserted: [Resource] = []
        var removed: [ResourceID] = []
        for entry in entries {
            if let resource = entry.resource { upserted.append(resource) } else { removed.append(entry.id) }
        }
        self.process(self.orchestrator.desiredChanged(upserted: upserted, removed: removed, now: now), now: now)
    }

    private mutating func merge(_ entries: [DesiredEntry], now: StorkInstant) {
        let (upserted, removed) = self.desired.merge(entries, now: now)
        if !upserted.isEmpty || !removed.isEmpty {
            self.process(self.orchestrator.desiredChanged(upserted: upserted, removed: removed, now: now), now: now)
        }
    }

    private mutating func onDesired(_ message: DesiredSetMessage, now: StorkInstant) {
        switch message {
        case .delta(_, let entries):
            self.merge(entries, now: now)
        case .replicate(let from, let entries):
            self.merge(entries, now: now)
            // A leaving node will not keep what it holds: it does not count as a holder.
            guard !self.isLeaving else { return }
            self.heldOutbox[from, default: []].append(
                contentsOf: entries.compactMap { entry in
                    self.desired.entry(entry.id).map { DesiredHolding(id: entry.id, version: $0.version) }
                }
            )
        case .held(let from, let versions):
            self.onHeld(versions, by: from)
        case .digest(let from, let digest):
            if digest != self.desired.digest {
                let state = DesiredSetMessage.state(
                    from: self.myself,
                    entries: self.desired.allEntries,
                    digest: self.desired.digest,
                    isReply: true
                )
                self.actions.append(.send(.desired(state), to: from.address))
            }
        case .state(let from, let entries, let digest, let isReply):
            self.merge(entries, now: now)
            if isReply, self.desired.digest != digest {
                let state = DesiredSetMessage.state(
                    from: self.myself,
                    entries: self.desired.allEntries,
                    digest: self.desired.digest,
                    isReply: false
                )
                self.actions.append(.send(.desired(state), to: from.address))
            }
        }
    }

    private mutating func syncDesired(now: StorkInstant) {
        guard !self.hasLeft else { return }
        let digest = ClusterMessage.desired(.digest(from: self.myself, digest: self.desired.digest))
        let peers = self.peers()
        if !peers.isEmpty {
            self.actions.append(.send(digest, to: peers[Int(self.random.next() % UInt64(peers.count))].address))
        }
        // A member declared dead may be alive behind a partition that just healed: one of them gets the digest too,
        // so that changes held only on this side cross as soon as the network lets them, before membership has
        // merged the two views (which can take seconds).
        let unreachable = self.unreachableMembers(excluding: peers)
        if !unreachable.isEmpty {
            let member = unreachable[Int(self.random.next() % UInt64(unreachable.count))]
            self.actions.append(.send(digest, to: member.address))
        }
    }

    /// Members declared dead that membership still remembers, one per address not already among `peers`.
    private func unreachableMembers(excluding peers: [NodeID]) -> [NodeID] {
        var addresses = Set(peers.map(\.address))
        var members: [NodeID] = []
        for member in self.membership.members.sorted(by: { $0.node > $1.node }) where member.status == .dead {
            guard member.node != self.myself, addresses.insert(member.node.address).inserted else { continue }
            members.append(member.node)
        }
        return members
    }

    private func peers() -> [NodeID] {
        self.membership.placementMembers.filter { $0 != self.myself }
    }

    // MARK: Replication of API changes (requester side)
    //
    // An `allocate` / `deallocate` answers only once its owner answered *and* `settings.replicas` members of this
    // node's view hold the change (its version or a newer one): a crash of the node that took it right after the
    // answer cannot take the change with it. The change goes to every peer at once (`replicate`); each answers
    // `held`; a remote owner that accepted the forwarded change holds it too. Peers that have not answered get it
    // again with backoff until the request's deadline, which answers `notReplicated` if the owner answered but too
    // few members confirmed.

    private mutating func startRequest(
        _ requestID: UInt64,
        _ operation: ForwardOperation,
        pin: String?,
        now: StorkInstant
    ) {
        self.outgoing[requestID] = PendingForward(
            operation: operation,
            deadline: now + self.settings.forwardDeadline,
            pin: pin,
            holders: [self.myself]
        )
        self.outgoingByResource[operation.entry.id, default: []].append(requestID)
        self.replicate(requestID, now: now)
        self.attemptForward(requestID, now: now)
    }

    /// Sends the change to the peers that have not confirmed it yet, and schedules the next round.
    private mutating func replicate(_ requestID: UInt64, now: StorkInstant) {
        guard var pending = self.outgoing[requestID], now < pending.deadline else { return }
        let id = pending.operation.entry.id
        let entry = self.desired.entry(id) ?? pending.operation.entry
        for peer in self.replicaTargets() where !pending.holders.contains(peer) {
            self.replicaOutbox[peer, default: []].append(entry)
        }
        let delay = self.forwardBackoff(pending.replications)
        pending.replications += 1
        self.outgoing[requestID] = pending
        self.timers.schedule(.replicate(requestID), at: min(now + delay, pending.deadline))
    }

    /// The peers of the view, and members declared dead that membership still remembers: behind a one-way
    /// partition a member this node cannot hear from may still receive, and keep, the change.
    private func replicaTargets() -> [NodeID] {
        let peers = self.peers()
        return peers + self.unreachableMembers(excluding: peers)
    }

    private mutating func onHeld(_ versions: [DesiredHolding], by holder: NodeID) {
        for holding in versions {
            for requestID in self.outgoingByResource[holding.id] ?? [] {
                guard let pending = self.outgoing[requestID], holding.version >= pending.operation.entry.version
                else { continue }
                self.outgoing[requestID]?.holders.insert(holder)
                self.completeIfReplicated(requestID)
            }
        }
    }

    /// How many live members hold the change, and how many must before it is acknowledged.
    ///
    /// `.members(k)` counts the cluster as every member not known to have left, dead ones included until
    /// membership forgets them: a node cut off from the others does not acknowledge alone just because it declared
    /// them dead; a one-node cluster, or the last node after the others left, does.
    private func replicaShortfall(_ pending: PendingForward) -> (holders: Int, required: Int) {
        let view = Set(self.membership.placementMembers)
        let holders = pending.holders.filter { $0 == self.myself || view.contains($0) }
        switch self.settings.replicas {
        case .members:
            let clusterSize = self.membership.clusterMemberNames.count
            return (holders.count, self.settings.replicas.required(viewSize: clusterSize))
        case .everyMember:
            let required = view.union([self.myself])
            return (holders.intersection(required).count, required.count)
        }
    }

    /// The owner answered: the caller gets that answer once enough members hold the change.
    private mutating func ownerAnswered(_ requestID: UInt64, _ outcome: RequestOutcome, holder: NodeID?) {
        guard var pending = self.outgoing[requestID] else { return }
        if pending.answered == nil { pending.answered = outcome }
        if let holder { pending.holders.insert(holder) }
        self.outgoing[requestID] = pending
        // No more forwarding: the deadline timer now only ends a wait for holders.
        self.timers.schedule(.forward(requestID), at: pending.deadline)
        self.completeIfReplicated(requestID)
    }

    private mutating func completeIfReplicated(_ requestID: UInt64) {
        guard let pending = self.outgoing[requestID], let answered = pending.answered else { return }
        let (holders, required) = self.replicaShortfall(pending)
        guard holders >= required else { return }
        self.complete(requestID, answered)
    }

    private mutating func complete(_ requestID: UInt64, _ outcome: RequestOutcome) {
        guard let pending = self.outgoing.removeValue(forKey: requestID) else { return }
        self.timers.cancel(.forward(requestID))
        self.timers.cancel(.replicate(requestID))
        let id = pending.operation.entry.id
        if var requests = self.outgoingByResource[id] {
            requests.removeAll { $0 == requestID }
            self.outgoingByResource[id] = requests.isEmpty ? nil : requests
        }
        if var list = self.waiters[id] {
            list.removeAll { $0.requester == self.myself && $0.requestID == requestID }
            self.waiters[id] = list.isEmpty ? nil : list
        }
        self.actions.append(.complete(requestID: requestID, outcome))
    }

    // MARK: Forwarding (requester side)

    private mutating func attemptForward(_ requestID: UInt64, now: StorkInstant) {
        guard let pending = self.outgoing[requestID] else { return }
        let id = pending.operation.entry.id
        if now >= pending.deadline {
            if pending.answered != nil {
                let (holders, required) = self.replicaShortfall(pending)
                self.complete(requestID, .notReplicated(holders: holders, required: required))
            } else {
                self.complete(requestID, .timedOut)
            }
            return
        }
        guard pending.answered == nil else {
            self.timers.schedule(.forward(requestID), at: pending.deadline)
            return
        }
        guard self.orchestrator.isReady else {
            self.timers.schedule(.forward(requestID), at: now + self.forwardBackoff(pending.refusals))
            return
        }
        guard let owner = self.orchestrator.placement.owner(of: id, pinnedTo: pending.pin) else {
            if pending.pin != nil, case .deallocate = pending.operation {
                // Pinned to a node that is not a member: nothing runs it anywhere in this view.
                self.ownerAnswered(requestID, .terminated(by: self.myself), holder: nil)
                return
            }
            // No member (yet) to run it: a pinned resource waits for its node, until the deadline.
            self.timers.schedule(.forward(requestID), at: now + self.forwardBackoff(pending.refusals))
            return
        }
        if owner == self.myself {
            // The owner is this node: its own desired set already holds the change. Wait for the orchestrator,
            // with the deadline as the timer.
            self.timers.schedule(.forward(requestID), at: pending.deadline)
            let kind: WaiterKind = pending.operation.entry.isRemoval ? .deallocate : .allocate
            self.addWaiter(Waiter(requester: self.myself, requestID: requestID, kind: kind), for: id, now: now)
            return
        }
        self.forwardOutbox[owner, default: []].append(ForwardItem(requestID: requestID, operation: pending.operation))
        self.timers.schedule(.forward(requestID), at: now + self.settings.forwardAttemptTimeout)
    }

    private func forwardBackoff(_ refusals: Int) -> Duration {
        let initial = self.settings.forwardRetryInitial.secondsDouble
        let seconds = min(initial * Double(1 << min(refusals, 20)), self.settings.forwardRetryMaximum.secondsDouble)
        return .nanoseconds(Int64(seconds * 1e9))
    }

    private mutating func onReply(_ reply: ForwardReply, from: NodeID, now: StorkInstant) {
        guard var pending = self.outgoing[reply.requestID], pending.answered == nil else { return }
        let outcome: RequestOutcome
        switch reply.answer {
        case .handled: outcome = .handled(by: from)
        case .handleFailed(let attempt): outcome = .handleFailed(by: from, attempt: attempt)
        case .terminated: outcome = .terminated(by: from)
        case .refused:
            pending.refusals += 1
            self.outgoing[reply.requestID] = pending
            let retryAt = min(now + self.forwardBackoff(pending.refusals - 1), pending.deadline)
            self.timers.schedule(.forward(reply.requestID), at: retryAt)
            return
        }
        // The owner merged the forwarded change before it answered: it is a holder.
        self.ownerAnswered(reply.requestID, outcome, holder: from)
    }

    // MARK: Forwarding (owner side)

    private mutating func onForward(_ message: ForwardMessage, now: StorkInstant) {
        switch message {
        case .reply(let from, let replies):
            for reply in replies { self.onReply(reply, from: from, now: now) }
        case .request(let from, let checksum, let items):
            let agrees =
                !self.isLeaving && self.orchestrator.isReady && checksum == self.orchestrator.placement.checksum
            var accepted: [ForwardItem] = []
            for item in items {
                if agrees, self.accepts(item.operation) {
                    accepted.append(item)
                } else {
                    self.replyOutbox[from, default: []].append(
                        ForwardReply(
                            requestID: item.requestID,
                            answer: .refused(checksum: self.orchestrator.placement.checksum)
                        )
                    )
                }
            }
            guard !accepted.isEmpty else { return }
            self.merge(accepted.map(\.operation.entry).filter { $0.version.clock > 0 }, now: now)
            for item in accepted {
                let kind: WaiterKind = item.operation.entry.isRemoval ? .deallocate : .allocate
                self.addWaiter(
                    Waiter(requester: from, requestID: item.requestID, kind: kind),
                    for: item.operation.entry.id,
                    now: now
                )
            }
        }
    }

    /// Whether this node is the one to answer a forwarded change (the caller checked that the views agree).
    private func accepts(_ operation: ForwardOperation) -> Bool {
        let id = operation.entry.id
        switch operation {
        case .allocate(let entry):
            return self.orchestrator.placement.owner(of: id, pinnedTo: entry.resource?.pinnedNode) == self.myself
        case .deallocate:
            // A requester that knew the resource pinned here sends it here even if this node has already dropped it
            // (the removal can arrive by replication first): nothing of it runs here, which is the answer.
            guard self.orchestrator.knownResource(id) != nil else { return true }
            return self.orchestrator.owner(of: id) == self.myself
        }
    }

    private mutating func addWaiter(_ waiter: Waiter, for id: ResourceID, now: StorkInstant) {
        var list = self.waiters[id] ?? []
        if !list.contains(waiter) { list.append(waiter) }
        self.waiters[id] = list
        self.evaluateWaiters(of: id, now: now)
    }

    /// Answers the waiters of `id` whose question has an answer now.
    private mutating func evaluateWaiters(of id: ResourceID, now: StorkInstant) {
        guard let list = self.waiters[id] else { return }
        var remaining: [Waiter] = []
        let owns = self.orchestrator.isReady && self.orchestrator.owner(of: id) == self.myself
        let phase = self.orchestrator.phase(of: id)
        for waiter in list {
            let answer: ForwardAnswer?
            switch waiter.kind {
            case .allocate:
                if !owns || self.isLeaving {
                    answer = .refused(checksum: self.orchestrator.placement.checksum)
                } else if self.orchestrator.desiredResource(id) == nil {
                    answer = .terminated
                } else if phase == "running" {
                    answer = .handled
                } else {
                    answer = nil
                }
            case .deallocate:
                // Answered once nothing of the resource runs here.
                let active = phase == "handling" || phase == "running" || phase == "terminating"
                answer = active ? nil : .terminated
            }
            if let answer { self.answer(waiter, answer, now: now) } else { remaining.append(waiter) }
        }
        self.waiters[id] = remaining.isEmpty ? nil : remaining
    }

    private mutating func resolveWaiters(for event: ResourceEvent, now: StorkInstant) {
        guard let list = self.waiters[event.id] else { return }
        var remaining: [Waiter] = []
        for waiter in list {
            switch (waiter.kind, event.kind) {
            case (.allocate, .handled):
                self.answer(waiter, .handled, now: now)
            case (.allocate, .handleFailed(let attempt, _)):
                self.answer(waiter, .handleFailed(attempt: attempt), now: now)
            case (.deallocate, .terminated), (.deallocate, .terminationFailed):
                self.answer(waiter, .terminated, now: now)
            default:
                remaining.append(waiter)
            }
        }
        self.waiters[event.id] = remaining.isEmpty ? nil : remaining
    }

    private mutating func answer(_ waiter: Waiter, _ answer: ForwardAnswer, now: StorkInstant) {
        guard waiter.requester == self.myself else {
            self.replyOutbox[waiter.requester, default: []].append(
                ForwardReply(requestID: waiter.requestID, answer: answer)
            )
            return
        }
        // A local caller: its request is still in `outgoing` unless it already timed out.
        guard let pending = self.outgoing[waiter.requestID], pending.answered == nil else { return }
        let outcome: RequestOutcome
        switch answer {
        case .handled: outcome = .handled(by: self.myself)
        case .handleFailed(let attempt): outcome = .handleFailed(by: self.myself, attempt: attempt)
        case .terminated: outcome = .terminated(by: self.myself)
        case .refused:
            // The resource moved away while the caller waited: re-resolve the owner and ask it.
            self.timers.schedule(.forward(waiter.requestID), at: now + self.settings.forwardRetryInitial)
            return
        }
        self.ownerAnswered(waiter.requestID, outcome, holder: nil)
    }

    private mutating func answerAllWaitersRefused() {
        for id in self.waiters.keys.sorted() {
            // Local callers were already told `.shutdown` when the leave began.
            for waiter in self.waiters[id] ?? [] where waiter.requester != self.myself {
                self.replyOutbox[waiter.requester, default: []].append(
                    ForwardReply(requestID: waiter.requestID, answer: .refused(checksum: 0))
                )
            }
        }
        self.waiters = [:]
    }

    // MARK: Output

    private func physicalMillis(_ now: StorkInstant) -> UInt64 {
        self.epochMillis &+ UInt64(max(0, now.nanoseconds / 1_000_000))
    }

    private mutating func flush(now: StorkInstant) -> [NodeAction] {
        for peer in self.forwardOutbox.keys.sorted() {
            let items = self.forwardOutbox[peer]!
            let message = ForwardMessage.request(
                from: self.myself,
                checksum: self.orchestrator.placement.checksum,
                items: items
            )
            self.actions.append(.send(.forward(message), to: peer.address))
        }
        for peer in self.replyOutbox.keys.sorted() {
            let message = ForwardMessage.reply(from: self.myself, replies: self.replyOutbox[peer]!)
            self.actions.append(.send(.forward(message), to: peer.address))
        }
        for peer in self.replicaOutbox.keys.sorted() {
            let message = DesiredSetMessage.replicate(from: self.myself, entries: self.replicaOutbox[peer]!)
            self.actions.append(.send(.desired(message), to: peer.address))
        }
        for peer in self.heldOutbox.keys.sorted() {
            let message = DesiredSetMessage.held(from: self.myself, versions: self.heldOutbox[peer]!)
            self.actions.append(.send(.desired(message), to: peer.address))
        }
        self.forwardOutbox = [:]
        self.replyOutbox = [:]
        self.replicaOutbox = [:]
        self.heldOutbox = [:]
        let result = self.actions
        self.actions = []
        return result
    }
}
