import StorkCore

// MARK: - SWIM + Lifeguard membership as a pure state machine
//
// `MembershipStateMachine` is one node's view of the cluster. It does no I/O and reads no clock: the driver feeds
// it events (`start`, `receive`, `tick`, `leave`), each with `now`, and performs the returned actions. All
// randomness comes from the stored `SeededRandom`, and every iteration whose order reaches the output is sorted by
// `NodeID`, so a run replays exactly from its seed.
//
// Failure detection (SWIM). Every `probeInterval × (LHM + 1)` we probe the next member of a round-robin over a
// shuffled list of alive and suspect members (reshuffled after each pass; new members are inserted at a random
// position of the rest of the pass). The probe is a direct `ping` with a fresh sequence. Without an `ack` after
// `probeTimeout × (LHM + 1)` we send `pingRequest`s to `indirectProbeCount` random other alive members; each helper
// pings the target with its own sequence, forwards the target's `ack` with our sequence, or sends a `nack` after
// `nackFraction × indirectProbeTimeout`. Without any ack by the end of the indirect window
// (`indirectProbeTimeout × (LHM + 1)` later) the target becomes suspect, with us as the source. Only acks to our own
// probes count as evidence; other traffic from a member proves nothing.
//
// Lifeguard. (1) Local health multiplier (LHM) 0...maxLocalHealthMultiplier: +1 when a probe fails and helpers
// also failed to send their expected nacks, +1 when we must refute a suspicion about ourselves, −1 on every
// successful probe; it stretches the probe interval and both probe timeouts. (2) Dynamic suspicion timeout:
// `min = max(suspicionMinimum, suspicionMultiplier × log10(n + 1) × probeInterval)`, `max = suspicionMaxMultiplier
// × min`, `timeout(C) = max(min, max − (max − min) × log(C + 1) / log(K + 1))`, where C counts independent
// confirmations (distinct sources beyond the first) and K = maxIndependentSuspicions; measured from when we first
// suspected and recomputed on each confirmation. Expiry declares the member dead.
//
// Precedence and merge rules, for an update about another member (SWIM / ringpop):
// * statuses in precedence order: alive < suspect < dead < left;
// * unknown member: accept (dead/left are recorded as tombstones, so stale alive gossip cannot resurrect them);
// * lower incarnation: ignore; higher incarnation: accept any status;
// * equal incarnation: accept only a strictly higher-precedence status (suspect about a suspect member from a new
//   source is a Lifeguard confirmation: it shortens the timeout and is re-gossiped, up to K);
// * same name, different uid: a higher uid is a newer process; an alive/suspect lower-uid member is superseded
//   and declared dead locally (and gossiped).
// Accepted updates are re-gossiped and reported as `.memberChanged` when the status changed.
//
// About ourselves: alive is ignored; suspect/dead/left with an incarnation ≥ ours (unless we left) makes us take
// incarnation + 1, gossip alive (source: us) to everyone at once and through the queue, emit `.refuted` and add 1
// to the LHM. We never adopt a non-alive status from others. An update about a process with our name and a higher
// uid is ignored (not recorded); we remember it in `supersededBy` and stop refuting, so an old process cannot fight
// its replacement forever; stopping the old process is the driver's decision.
//
// Dissemination. Accepted changes enter a broadcast queue (one entry per member; newer replaces older) and are
// piggybacked on every ping, ack and pingRequest (up to `maxUpdatesPerMessage`, fewest transmissions first), and
// sent as `gossip` every `gossipInterval` to `gossipFanout` random targets drawn from the alive/suspect members and
// the members dead for less than `gossipToTheDeadTime` (memberlist's rule; a message to a suspect or dead member
// always carries the claim about that member, so a falsely accused member learns of it and refutes). Each update is
// transmitted at most `retransmitMultiplier × ceil(log10(n + 1))` times.
//
// Anti-entropy. Pings, acks and push-pulls carry a checksum over the sorted (node, status, incarnation) of alive
// and suspect members. A ping/ack whose checksum differs from ours while our queue is empty triggers a push-pull
// with its sender (at most one per `pushPullMinimumGap`). Every `pushPullInterval` (±10%) we push-pull with a
// random alive member or, with probability 1/2 when there are any, a dead member's or an absent seed's address
// (partition healing). A push-pull sends all members, tombstones included; the receiver merges and replies with
// its full state, which the requester merges. One refinement from memberlist: in a full-state merge, "dead" about
// a member we hold alive or suspect is taken as "suspect" at that incarnation, so a healed partition costs
// refutations rather than false deaths.
//
// Join and leave. `start` sends a join push-pull to every seed but our own address and retries with exponential
// backoff; the first push-pull reply emits `.joined(standalone: false)` (that first reply is merged without
// re-gossiping it: a new node disseminates only itself). A node that is itself one of its seeds emits
// `.joined(standalone: true)` without an answer by `standaloneAfter` and keeps retrying every `joinBackoffMax`;
// any other node keeps retrying and stays unjoined (so it never runs resources as an island of one). `leave` raises our incarnation, marks us
// left, sends the update to every alive/suspect member and queues it; we then stop probing and push-pulling but
// keep answering. Dead and left members are forgotten `tombstoneTimeout` after their status changed.

/// One node's SWIM + Lifeguard membership: a pure, deterministic state machine. See the comment at the top of
/// this file for the algorithm.
public struct MembershipStateMachine: Sendable {
    // MARK: Identity and configuration

    /// This node.
    public let myself: NodeID
    /// The settings this machine runs with.
    public let settings: MembershipSettings
    /// Seed addresses, without our own address, deduplicated and sorted.
    public let seeds: [String]
    /// Whether this node may start a cluster on its own: it has no seeds, or its own address is one of them. A node
    /// that is not a seed waits (retrying) until a seed answers, rather than forming an island that would run
    /// every resource by itself.
    public let maySeedCluster: Bool
    /// Our incarnation: raised to refute a suspicion and to leave.
    public private(set) var incarnation: UInt64 = 0
    /// `.alive`, or `.left` after `leave`.
    var selfStatus: MemberStatus = .alive
    var selfSince: StorkInstant = .zero
    /// A newer process with our name (higher uid), if one was reported. We ignore updates about it and stop
    /// refuting claims about ourselves.
    public private(set) var supersededBy: NodeID?
    var random: SeededRandom

    // MARK: View

    var records: [NodeID: MemberRecord] = [:]
    /// Alive + suspect members other than ourselves.
    var activeOthers = 0
    var broadcasts = BroadcastQueue()
    /// Lifeguard local health multiplier score, `0...settings.maxLocalHealthMultiplier`.
    public private(set) var localHealth = 0
    /// Counters for metrics and tests.
    public private(set) var statistics = MembershipStatistics()
    /// Over the sorted (node, status, incarnation) of alive and suspect members, ourselves included.
    public private(set) var checksum: UInt64 = 0
    var checksumDirty = true
    var outbox: [MembershipAction] = []

    // MARK: Lifecycle

    var started = false
    /// Whether `.joined` was emitted.
    public private(set) var isJoined = false
    /// Present while no seed has answered.
    var join: JoinAttempts?
    var standaloneAt: StorkInstant?

    // MARK: Probing, gossip, push-pull

    var lastSequence: UInt64 = 0
    var probes: [UInt64: Probe] = [:]
    var relays: [UInt64: Relay] = [:]
    var probeOrder: [NodeID] = []
    var probeCursor = 0
    var nextProbeAt: StorkInstant?
    var nextGossipAt: StorkInstant?
    var nextPushPullAt: StorkInstant?
    var lastTriggeredPushPull: StorkInstant?

    /// - Parameters:
    ///   - myself: this process.
    ///   - seeds: addresses to join through; our own address is ignored, so every node may get the same list.
    ///   - random: the only source of randomness; seed it to replay a run.
    public init(
        myself: NodeID,
        seeds: [String],
        settings: MembershipSettings = .init(),
        random: SeededRandom
    ) {
        self.myself = myself
        self.settings = settings
        self.seeds = Set(seeds).subtracting([myself.address]).sorted()
        self.maySeedCluster = seeds.isEmpty || seeds.contains(myself.address)
        self.random = random
        self.refreshChecksum()
    }

    // MARK: - Queries

    /// Every known member, tombstones and ourselves included, sorted by node.
    public var members: [Member] {
        var result = self.records.map { node, record in
            Member(node: node, status: record.status, incarnation: record.incarnation, since: record.since)
        }
        result.append(
            Member(node: self.myself, status: self.selfStatus, incarnation: self.incarnation, since: self.selfSince)
        )
        return result.sorted { $0.node < $1.node }
    }

    /// One member, or `nil` if unknown or forgotten.
    public func member(_ node: NodeID) -> Member? {
        if node == self.myself {
            return Member(node: node, status: self.selfStatus, incarnation: self.incarnation, since: self.selfSince)
        }
        return self.records[node].map {
            Member(node: node, status: $0.status, incarnation: $0.incarnation, since: $0.since)
        }
    }

    /// Alive and suspect members, ourselves included unless we left; sorted. What placement should use.
    public var placementMembers: [NodeID] {
        var result = self.records.compactMap { $0.value.status.isActive ? $0.key : nil }
        if self.selfStatus.isActive { result.append(self.myself) }
        return result.sorted()
    }

    public func status(of node: NodeID) -> MemberStatus? {
        node == self.myself ? self.selfStatus : self.records[node]?.status
    }

    /// When a suspect member will be declared dead, if it is suspect.
    public func suspicionDeadline(of node: NodeID) -> StorkInstant? {
        guard let record = self.records[node], record.status == .suspect else { return nil }
        return record.suspicion?.deadline
    }

    /// How many updates wait in the broadcast queue.
    public var pendingBroadcasts: Int { self.broadcasts.entries.count }

    /// The names of the members this node counts as the cluster: alive and suspect ones, and dead ones until their
    /// tombstone is forgotten (`tombstoneTimeout`: a crashed or cut-off member may come back), ourselves included
    /// unless we left. A member that left gracefully is not counted. A restarted process counts once (by name).
    public var clusterMemberNames: Set<String> {
        var names = Set(self.records.compactMap { $0.value.status == .left ? nil : $0.key.name })
        if self.selfStatus != .left { names.insert(self.myself.name) }
        return names
    }

    /// Alive + suspect members, ourselves included unless we left (the `n` of the Lifeguard formulas).
    public var activeMemberCount: Int { self.activeOthers + (self.selfStatus.isActive ? 1 : 0) }

    /// The earliest pending timer; call `tick(now:)` then.
    public var nextDeadline: StorkInstant? {
        var earliest: StorkInstant?
        self.forEachTimer { instant, _ in
            if earliest.map({ instant < $0 }) ?? true { earliest = instant }
        }
        return earliest
    }

    // MARK: - Events

    /// Begins: announces ourselves, sends a join push-pull to every seed (or emits `.joined(standalone: true)` at
    /// once when there is none) and starts the timers. Emits `.memberChanged` for ourselves (`nil -> alive`).
    public mutating func start(now: StorkInstant) -> [MembershipAction] {
        guard !self.started else { return [] }
        self.started = true
        self.selfSince = now
        self.checksumDirty = true
        self.emit(.memberChanged(MemberChange(node: self.myself, previous: nil, current: self.selfStatus)))
        self.broadcasts.enqueue(self.selfUpdate)
        if self.seeds.isEmpty {
            self.isJoined = true
            self.emit(.joined(standalone: true))
        } else {
            self.sendJoinRequests()
            let wait = self.random.jittered(self.settings.joinBackoffInitial, fraction: 0.2)
            self.join = JoinAttempts(
                backoff: self.settings.joinBackoffInitial,
                nextAttemptAt: now + positive(min(wait, self.settings.joinBackoffMax))
            )
            self.standaloneAt = self.maySeedCluster ? now + self.settings.standaloneAfter : nil
        }
        // The first probe is staggered so that nodes started together do not probe in lockstep.
        self.nextProbeAt = now + positive(self.settings.probeInterval.scaled(by: self.random.nextUnitDouble()))
        self.nextGossipAt = now + positive(self.settings.gossipInterval)
        self.nextPushPullAt = now + positive(self.random.jittered(self.settings.pushPullInterval, fraction: 0.1))
        return self.finish()
    }

    /// Handles one message from another node. Messages claiming to come from ourselves are ignored.
    public mutating func receive(_ message: MembershipMessage, now: StorkInstant) -> [MembershipAction] {
        guard message.from != self.myself else { return [] }
        switch message {
        case .ping(let ping): self.onPing(ping, now: now)
        case .ack(let ack): self.onAck(ack, now: now)
        case .pingRequest(let request): self.onPingRequest(request, now: now)
        case .nack(let nack): self.onNack(nack)
        case .gossip(let gossip): self.merge(gossip.updates, from: gossip.from, now: now)
        case .pushPull(let pushPull): self.onPushPull(pushPull, now: now)
        }
        return self.finish()
    }

    /// Runs every timer due at `now`, earliest first.
    public mutating func tick(now: StorkInstant) -> [MembershipAction] {
        while let timer = self.earliestTimer(dueBy: now) {
            self.fire(timer, now: now)
        }
        return self.finish()
    }

    /// Leaves gracefully: raises our incarnation, marks us left, tells every alive/suspect member directly and
    /// keeps the update in the broadcast queue. Probing, push-pull and joining stop; we keep answering pings and
    /// gossiping until the driver stops us. Emits `.memberChanged` for ourselves (`alive -> left`).
    public mutating func leave(now: StorkInstant) -> [MembershipAction] {
        guard self.selfStatus != .left else { return [] }
        let previous = self.selfStatus
        self.incarnation += 1
        self.selfStatus = .left
        self.selfSince = now
        self.checksumDirty = true
        let update = self.selfUpdate
        self.broadcasts.enqueue(update)
        self.emit(.memberChanged(MemberChange(node: self.myself, previous: previous, current: .left)))
        self.probes.removeAll()
        self.nextProbeAt = nil
        self.nextPushPullAt = nil
        self.join = nil
        self.standaloneAt = nil
        for target in self.activeOtherNodes() {
            self.send(.gossip(Gossip(from: self.myself, updates: [update])), to: target.address)
        }
        return self.finish()
    }

    // MARK: - Message handlers

    mutating func onPing(_ ping: Ping, now: StorkInstant) {
        self.merge(ping.updates, from: ping.from, now: now)
        if let target = ping.target, target != self.myself { return }
        self.considerTriggeredPushPull(with: ping.from, theirChecksum: ping.checksum, now: now)
        self.refreshChecksum()
        let ack = Ack(
            from: self.myself,
            sequence: ping.sequence,
            updates: self.piggyback(for: ping.from),
            checksum: self.checksum
        )
        self.send(.ack(ack), to: ping.from.address)
    }

    mutating func onAck(_ ack: Ack, now: StorkInstant) {
        self.merge(ack.updates, from: ack.from, now: now)
        if self.probes.removeValue(forKey: ack.sequence) != nil {
            self.adjustLocalHealth(-1)
        } else if let relay = self.relays.removeValue(forKey: ack.sequence) {
            self.refreshChecksum()
            let forwarded = Ack(
                from: self.myself,
                sequence: relay.requesterSequence,
                updates: self.piggyback(for: relay.requester),
                checksum: self.checksum
            )
            self.send(.ack(forwarded), to: relay.requester.address)
        }
        self.considerTriggeredPushPull(with: ack.from, theirChecksum: ack.checksum, now: now)
    }

    mutating func onPingRequest(_ request: PingRequest, now: StorkInstant) {
        self.merge(request.updates, from: request.from, now: now)
        self.refreshChecksum()
        if request.target == self.myself {
            let ack = Ack(
                from: self.myself,
                sequence: request.sequence,
                updates: self.piggyback(for: request.from),
                checksum: self.checksum
            )
            self.send(.ack(ack), to: request.from.address)
            return
        }
        let sequence = self.makeSequence()
        self.relays[sequence] = Relay(
            requester: request.from,
            requesterSequence: request.sequence,
            nackAt: now + positive(self.settings.indirectProbeTimeout.scaled(by: self.settings.nackFraction))
        )
        let ping = Ping(
            from: self.myself,
            sequence: sequence,
            target: request.target,
            updates: self.piggyback(for: request.target),
            checksum: self.checksum
        )
        self.send(.ping(ping), to: request.target.address)
    }

    mutating func onNack(_ nack: Nack) {
        guard var probe = self.probes[nack.sequence], probe.helpers.contains(nack.from) else { return }
        probe.nacks.insert(nack.from)
        self.probes[nack.sequence] = probe
    }

    mutating func onPushPull(_ pushPull: PushPull, now: StorkInstant) {
        // The first answer to a join is merged quietly: a new node disseminates only itself.
        let firstContact = pushPull.isReply && !self.isJoined
        for var update in pushPull.members {
            // memberlist's rule for full-state merges: another node's view that a member we hold alive or suspect
            // is dead only makes it suspect here. After a partition heals, each side's tombstones for the other
            // then cost a refutation instead of a false death.
            if update.status == .dead, update.node != self.myself, self.records[update.node]?.status.isActive == true {
                update.status = .suspect
            }
            self.apply(update, sender: pushPull.from, now: now, regossip: !firstContact)
        }
        if !pushPull.isReply {
            self.refreshChecksum()
            let reply = PushPull(
                from: self.myself,
                isJoin: pushPull.isJoin,
                isReply: true,
                members: self.fullState(),
                checksum: self.checksum
            )
            self.send(.pushPull(reply), to: pushPull.from.address)
            return
        }
        self.join = nil
        self.standaloneAt = nil
        if !self.isJoined {
            self.isJoined = true
            self.emit(.joined(standalone: false))
        }
    }

    // MARK: - Merging

    mutating func merge(_ updates: [MemberUpdate], from sender: NodeID, now: StorkInstant, regossip: Bool = true) {
        for update in updates {
            self.apply(update, sender: sender, now: now, regossip: regossip)
        }
    }

    /// Applies one claim with the SWIM / ringpop merge rules (see the top of the file).
    mutating func apply(_ update: MemberUpdate, sender: NodeID, now: StorkInstant, regossip: Bool) {
        if update.node == self.myself {
            self.applyAboutMyself(update, sender: sender, now: now)
            return
        }
        if update.node.name == self.myself.name, update.node.uid > self.myself.uid {
            // A newer process with our name. Ignored (not recorded); remembered so we stop refuting.
            if self.supersededBy.map({ $0.uid < update.node.uid }) ?? true { self.supersededBy = update.node }
            return
        }
        var update = update
        if update.status != .alive, update.source == nil { update.source = sender }
        if update.status.isActive, self.newerProcessExists(than: update.node) {
            // Superseded by a newer process with the same name: it is dead, whatever the claim says.
            update = MemberUpdate(
                node: update.node,
                status: .dead,
                incarnation: update.incarnation,
                source: self.myself
            )
        }
        guard let record = self.records[update.node] else {
            self.accept(update, previous: nil, now: now, regossip: regossip)
            return
        }
        if update.incarnation < record.incarnation { return }
        if update.incarnation == record.incarnation {
            if update.status > record.status {
                self.accept(update, previous: record, now: now, regossip: regossip)
            } else if update.status == .suspect, record.status == .suspect {
                self.confirmSuspicion(update, now: now, regossip: regossip)
            }
            return
        }
        self.accept(update, previous: record, now: now, regossip: regossip)
    }

    mutating func accept(_ update: MemberUpdate, previous: MemberRecord?, now: StorkInstant, regossip: Bool) {
        let node = update.node
        let previousStatus = previous?.status
        let wasActive = previousStatus?.isActive ?? false
        var record = MemberRecord(
            status: update.status,
            incarnation: update.incarnation,
            since: previousStatus == update.status ? (previous?.since ?? now) : now,
            source: update.source,
            suspicion: nil
        )
        if wasActive != update.status.isActive { self.activeOthers += update.status.isActive ? 1 : -1 }
        if update.status == .suspect {
            let timeout = self.settings.suspicionTimeout(confirmations: 0, memberCount: self.activeMemberCount)
            record.suspicion = Suspicion(
                started: now,
                confirmers: [update.source ?? self.myself],
                deadline: now + timeout
            )
        }
        self.records[node] = record
        self.checksumDirty = true
        if update.status == .dead, update.source == self.myself { self.statistics.deathsDeclared += 1 }
        if regossip { self.broadcasts.enqueue(update) }
        if previousStatus != update.status {
            self.emit(.memberChanged(MemberChange(node: node, previous: previousStatus, current: update.status)))
        }
        if update.status.isActive, !wasActive { self.addToProbeOrder(node) }
        self.enforceSupersession(around: node, now: now)
    }

    /// Lifeguard: a suspicion about a suspect member, at the same incarnation, from a new source.
    mutating func confirmSuspicion(_ update: MemberUpdate, now: StorkInstant, regossip: Bool) {
        guard var record = self.records[update.node], var suspicion = record.suspicion,
            let source = update.source
        else { return }
        guard !suspicion.confirmers.contains(source),
            suspicion.confirmers.count <= self.settings.maxIndependentSuspicions
        else { return }
        suspicion.confirmers.append(source)
        let timeout = self.settings.suspicionTimeout(
            confirmations: suspicion.confirmers.count - 1,
            memberCount: self.activeMemberCount
        )
        suspicion.deadline = suspicion.started + timeout
        record.suspicion = suspicion
        self.records[update.node] = record
        if regossip { self.broadcasts.enqueue(update) }
    }

    mutating func applyAboutMyself(_ update: MemberUpdate, sender: NodeID, now: StorkInstant) {
        guard update.status != .alive, self.selfStatus != .left, self.supersededBy == nil,
            update.incarnation >= self.incarnation
        else { return }
        self.incarnation = update.incarnation + 1
        self.statistics.refutations += 1
        self.adjustLocalHealth(+1)
        self.checksumDirty = true
        let alive = self.selfUpdate
        self.broadcasts.enqueue(alive)
        self.emit(.refuted(incarnation: self.incarnation))
        var targets = self.activeOtherNodes()
        if !targets.contains(sender) { targets.append(sender) }
        for target in targets {
            self.send(.gossip(Gossip(from: self.myself, updates: [alive])), to: target.address)
        }
    }

    /// Whether a process with the same name and a higher uid is known (ourselves included).
    func newerProcessExists(than node: NodeID) -> Bool {
        if self.myself.name == node.name, self.myself.uid > node.uid { return true }
        return self.records.keys.contains { $0.name == node.name && $0.uid > node.uid }
    }

    /// Same name, different uid: the higher uid is the newer process. Declares every alive/suspect older one dead.
    mutating func enforceSupersession(around node: NodeID, now: StorkInstant) {
        let older = self.records.compactMap { other, record in
            other.name == node.name && other.uid < node.uid && record.status.isActive ? other : nil
        }.sorted()
        for other in older {
            guard let record = self.records[other], record.status.isActive else { continue }
            let update = MemberUpdate(node: other, status: .dead, incarnation: record.incarnation, source: self.myself)
            self.apply(update, sender: self.myself, now: now, regossip: true)
        }
    }

    // MARK: - Timers

    enum TimerKind: Hashable, Comparable {
        case standalone
        case joinRetry
        case probeIndirect(UInt64)
        case probeDeadline(UInt64)
        case relayNack(UInt64)
        case suspicion(NodeID)
        case tombstone(NodeID)
        case probe
        case gossip
        case pushPull
    }

    func forEachTimer(_ body: (StorkInstant, TimerKind) -> Void) {
        if let instant = self.standaloneAt { body(instant, .standalone) }
        if let join = self.join { body(join.nextAttemptAt, .joinRetry) }
        for (sequence, probe) in self.probes {
            if let instant = probe.indirectAt { body(instant, .probeIndirect(sequence)) }
            body(probe.deadline, .probeDeadline(sequence))
        }
        for (sequence, relay) in self.relays { body(relay.nackAt, .relayNack(sequence)) }
        for (node, record) in self.records {
            if record.status == .suspect, let suspicion = record.suspicion {
                body(suspicion.deadline, .suspicion(node))
            } else if record.status.isTombstone {
                body(record.since + self.settings.tombstoneTimeout, .tombstone(node))
            }
        }
        if let instant = self.nextProbeAt { body(instant, .probe) }
        if let instant = self.nextGossipAt { body(instant, .gossip) }
        if let instant = self.nextPushPullAt { body(instant, .pushPull) }
    }

    /// The earliest timer due by `now`; ties broken by kind, then key, so the order is deterministic.
    func earliestTimer(dueBy now: StorkInstant) -> TimerKind? {
        var best: (StorkInstant, TimerKind)?
        self.forEachTimer { instant, kind in
            guard instant <= now else { return }
            if let current = best, (current.0, current.1) <= (instant, kind) { return }
            best = (instant, kind)
        }
        return best?.1
    }

    /// Runs one timer. Every branch removes the timer or moves it past `now`, so `tick` terminates.
    mutating func fire(_ timer: TimerKind, now: StorkInstant) {
        switch timer {
        case .standalone:
            self.standaloneAt = nil
            if !self.isJoined {
                self.isJoined = true
                self.emit(.joined(standalone: true))
            }
        case .joinRetry:
            guard var attempts = self.join else { return }
            self.sendJoinRequests()
            attempts.backoff =
                self.isJoined ? self.settings.joinBackoffMax : min(attempts.backoff * 2, self.settings.joinBackoffMax)
            let wait = min(self.random.jittered(attempts.backoff, fraction: 0.2), self.settings.joinBackoffMax)
            attempts.nextAttemptAt = now + positive(wait)
            self.join = attempts
        case .probe:
            self.probeTick(now: now)
        case .probeIndirect(let sequence):
            self.sendIndirectProbes(sequence: sequence)
        case .probeDeadline(let sequence):
            self.probeFailed(sequence: sequence, now: now)
        case .relayNack(let sequence):
            guard let relay = self.relays.removeValue(forKey: sequence) else { return }
            self.send(
                .nack(Nack(from: self.myself, sequence: relay.requesterSequence)),
                to: relay.requester.address
            )
        case .suspicion(let node):
            guard let record = self.records[node], record.status == .suspect else { return }
            let update = MemberUpdate(node: node, status: .dead, incarnation: record.incarnation, source: self.myself)
            self.apply(update, sender: self.myself, now: now, regossip: true)
        case .tombstone(let node):
            guard let record = self.records.removeValue(forKey: node) else { return }
            self.broadcasts.remove(node)
            self.emit(.memberChanged(MemberChange(node: node, previous: record.status, current: nil)))
        case .gossip:
            self.gossipTick(now: now)
        case .pushPull:
            self.pushPullTick(now: now)
        }
    }

    // MARK: - Probing

    var healthFactor: Double { Double(self.localHealth + 1) }

    mutating func probeTick(now: StorkInstant) {
        self.nextProbeAt = now + positive(self.settings.probeInterval.scaled(by: self.healthFactor))
        guard let target = self.nextProbeTarget() else { return }
        let sequence = self.makeSequence()
        let direct = positive(self.settings.probeTimeout.scaled(by: self.healthFactor))
        let indirect = positive(self.settings.indirectProbeTimeout.scaled(by: self.healthFactor))
        self.probes[sequence] = Probe(
            target: target,
            indirectAt: now + direct,
            deadline: now + direct + indirect
        )
        self.statistics.probesSent += 1
        self.refreshChecksum()
        let ping = Ping(
            from: self.myself,
            sequence: sequence,
            target: target,
            updates: self.piggyback(for: target),
            checksum: self.checksum
        )
        self.send(.ping(ping), to: target.address)
    }

    /// The next member of the round-robin; a new shuffled pass when the current one is done.
    mutating func nextProbeTarget() -> NodeID? {
        var reshuffled = false
        while true {
            if self.probeCursor >= self.probeOrder.count {
                if reshuffled { return nil }
                reshuffled = true
                self.probeOrder = self.activeOtherNodes()
                self.probeOrder.shuffle(using: &self.random)
                self.probeCursor = 0
                if self.probeOrder.isEmpty { return nil }
            }
            let candidate = self.probeOrder[self.probeCursor]
            self.probeCursor += 1
            if self.records[candidate]?.status.isActive == true { return candidate }
        }
    }

    /// A new (or revived) member joins the rest of the current pass at a random position.
    mutating func addToProbeOrder(_ node: NodeID) {
        if self.probeCursor < self.probeOrder.count, self.probeOrder[self.probeCursor...].contains(node) { return }
        let position = Int.random(in: self.probeCursor...self.probeOrder.count, using: &self.random)
        self.probeOrder.insert(node, at: position)
    }

    mutating func sendIndirectProbes(sequence: UInt64) {
        guard var probe = self.probes[sequence] else { return }
        probe.indirectAt = nil
        guard self.records[probe.target]?.status.isActive == true else {
            self.probes[sequence] = nil
            return
        }
        let candidates = self.records.compactMap { node, record in
            record.status == .alive && node != probe.target ? node : nil
        }.sorted()
        probe.helpers = self.randomSample(candidates, count: self.settings.indirectProbeCount)
        self.probes[sequence] = probe
        for helper in probe.helpers {
            self.statistics.indirectProbesSent += 1
            let request = PingRequest(
                from: self.myself,
                sequence: sequence,
                target: probe.target,
                updates: self.piggyback(for: helper)
            )
            self.send(.pingRequest(request), to: helper.address)
        }
    }

    mutating func probeFailed(sequence: UInt64, now: StorkInstant) {
        guard let probe = self.probes.removeValue(forKey: sequence) else { return }
        self.statistics.probeFailures += 1
        // Lifeguard: helpers that did not even nack point at our own health.
        if !probe.helpers.isEmpty, probe.nacks.count < probe.helpers.count { self.adjustLocalHealth(+1) }
        guard let record = self.records[probe.target], record.status.isActive else { return }
        if record.status == .alive { self.statistics.suspicionsRaised += 1 }
        let update = MemberUpdate(
            node: probe.target,
            status: .suspect,
            incarnation: record.incarnation,
            source: self.myself
        )
        self.apply(update, sender: self.myself, now: now, regossip: true)
    }

    mutating func adjustLocalHealth(_ delta: Int) {
        self.localHealth = min(max(self.localHealth + delta, 0), max(0, self.settings.maxLocalHealthMultiplier))
    }

    mutating func makeSequence() -> UInt64 {
        self.lastSequence &+= 1
        return self.lastSequence
    }

    // MARK: - Gossip

    mutating func gossipTick(now: StorkInstant) {
        self.nextGossipAt = now + positive(self.settings.gossipInterval)
        var recentlyDead = false
        let candidates = self.records.compactMap { node, record -> NodeID? in
            if record.status.isActive { return node }
            if record.status == .dead, now < record.since + self.settings.gossipToTheDeadTime {
                recentlyDead = true
                return node
            }
            return nil
        }.sorted()
        guard !candidates.isEmpty, recentlyDead || !self.broadcasts.entries.isEmpty else { return }
        for target in self.randomSample(candidates, count: self.settings.gossipFanout) {
            let updates = self.piggyback(for: target)
            guard !updates.isEmpty else { continue }
            self.send(.gossip(Gossip(from: self.myself, updates: updates)), to: target.address)
        }
    }

    /// Updates for one message to `recipient`: the claim about the recipient first if we hold it suspect or dead
    /// (so it can refute), then the broadcast queue, fewest transmissions first.
    mutating func piggyback(for recipient: NodeID) -> [MemberUpdate] {
        var updates: [MemberUpdate] = []
        var excluded: NodeID?
        if let record = self.records[recipient], record.status == .suspect || record.status == .dead {
            updates.append(record.update(about: recipient))
            excluded = recipient
        }
        updates += self.broadcasts.take(
            max: self.settings.maxUpdatesPerMessage - updates.count,
            limit: self.settings.retransmitLimit(memberCount: self.activeMemberCount),
            excluding: excluded
        )
        return updates
    }

    // MARK: - Push-pull

    mutating func pushPullTick(now: StorkInstant) {
        self.nextPushPullAt = now + positive(self.random.jittered(self.settings.pushPullInterval, fraction: 0.1))
        guard self.selfStatus != .left else { return }
        let alive = self.records.compactMap { $0.value.status == .alive ? $0.key : nil }.sorted()
        var activeAddresses = Set(self.records.compactMap { $0.value.status.isActive ? $0.key.address : nil })
        activeAddresses.insert(self.myself.address)
        var healing = Set(self.seeds)
        for (node, record) in self.records where record.status == .dead { healing.insert(node.address) }
        let healingAddresses = healing.subtracting(activeAddresses).sorted()
        let address: String?
        if !healingAddresses.isEmpty, alive.isEmpty || self.random.nextUnitDouble() < 0.5 {
            address = healingAddresses.randomElement(using: &self.random)
        } else {
            address = alive.randomElement(using: &self.random)?.address
        }
        guard let address else { return }
        self.startPushPull(to: address, isJoin: false)
    }

    /// A ping or ack with a checksum other than ours, while we have nothing left to gossip: our views differ in
    /// a way gossip will not fix, so exchange full state (rate-limited).
    mutating func considerTriggeredPushPull(with peer: NodeID, theirChecksum: UInt64, now: StorkInstant) {
        self.refreshChecksum()
        guard theirChecksum != self.checksum, self.broadcasts.entries.isEmpty, self.selfStatus != .left else {
            return
        }
        if let last = self.lastTriggeredPushPull, now < last + self.settings.pushPullMinimumGap { return }
        self.lastTriggeredPushPull = now
        self.statistics.pushPullsTriggered += 1
        self.startPushPull(to: peer.address, isJoin: false)
    }

    mutating func sendJoinRequests() {
        for seed in self.seeds { self.startPushPull(to: seed, isJoin: true) }
    }

    mutating func startPushPull(to address: String, isJoin: Bool) {
        self.statistics.pushPullsStarted += 1
        self.refreshChecksum()
        let request = PushPull(
            from: self.myself,
            isJoin: isJoin,
            isReply: false,
            members: self.fullState(),
            checksum: self.checksum
        )
        self.send(.pushPull(request), to: address)
    }

    /// Every member we know, tombstones and ourselves included, sorted by node.
    func fullState() -> [MemberUpdate] {
        var state = self.records.map { node, record in record.update(about: node) }
        state.append(self.selfUpdate)
        return state.sorted { $0.node < $1.node }
    }

    // MARK: - Helpers

    var selfUpdate: MemberUpdate {
        MemberUpdate(node: self.myself, status: self.selfStatus, incarnation: self.incarnation, source: self.myself)
    }

    func activeOtherNodes() -> [NodeID] {
        self.records.compactMap { $0.value.status.isActive ? $0.key : nil }.sorted()
    }

    mutating func randomSample(_ items: [NodeID], count: Int) -> [NodeID] {
        var pool = items
        let k = min(max(0, count), pool.count)
        for index in 0..<k {
            pool.swapAt(index, Int.random(in: index..<pool.count, using: &self.random))
        }
        return Array(pool[..<k])
    }

    mutating func send(_ message: MembershipMessage, to address: String) {
        self.statistics.messagesSent[message.kind, default: 0] += 1
        self.outbox.append(.send(message, to: address))
    }

    mutating func emit(_ action: MembershipAction) {
        self.outbox.append(action)
    }

    mutating func refreshChecksum() {
        guard self.checksumDirty else { return }
        self.checksumDirty = false
        var entries = self.records.compactMap { node, record in
            record.status.isActive ? (node, record.status, record.incarnation) : nil
        }
        if self.selfStatus.isActive { entries.append((self.myself, self.selfStatus, self.incarnation)) }
        entries.sort { $0.0 < $1.0 }
        var hash = StableHash.fnv1a64("")
        for (node, status, incarnation) in entries {
            hash = StableHash.fnv1a64(
                "\(node.name)\u{1F}\(node.address)\u{1F}\(node.uid)\u{1F}\(status.rawValue)\u{1F}\(incarnation)\u{1E}",
                continuing: hash
            )
        }
        self.checksum = hash
    }

    mutating func finish() -> [MembershipAction] {
        self.refreshChecksum()
        let actions = self.outbox
        self.outbox = []
        return actions
    }
}

/// Durations used as timer delays are at least a microsecond, so `tick` always makes progress.
@inline(__always)
func positive(_ duration: Duration) -> Duration {
    max(duration, .microseconds(1))
}

// MARK: - Internal state

struct MemberRecord: Sendable, Hashable {
    var status: MemberStatus
    var incarnation: UInt64
    var since: StorkInstant
    var source: NodeID?
    var suspicion: Suspicion?

    func update(about node: NodeID) -> MemberUpdate {
        MemberUpdate(node: node, status: self.status, incarnation: self.incarnation, source: self.source)
    }
}

/// Lifeguard suspicion of one member at one incarnation.
struct Suspicion: Sendable, Hashable {
    /// When we first suspected (at this incarnation).
    var started: StorkInstant
    /// Distinct sources, the first one first; confirmations are the ones beyond it.
    var confirmers: [NodeID]
    var deadline: StorkInstant
}

/// One of our own probes.
struct Probe: Sendable, Hashable {
    var target: NodeID
    /// When to ask helpers; `nil` once asked.
    var indirectAt: StorkInstant?
    /// When the probe fails without an ack.
    var deadline: StorkInstant
    var helpers: [NodeID] = []
    var nacks: Set<NodeID> = []
}

/// A probe we run for another node (we are its helper).
struct Relay: Sendable, Hashable {
    var requester: NodeID
    var requesterSequence: UInt64
    var nackAt: StorkInstant
}

struct JoinAttempts: Sendable, Hashable {
    var backoff: Duration
    var nextAttemptAt: StorkInstant
}

// MARK: - BroadcastQueue

/// Updates waiting to be piggybacked: one per member (a newer one replaces the older), fewest transmissions
/// first, newest first among equals.
struct BroadcastQueue: Sendable, Hashable {
    struct Entry: Sendable, Hashable {
        var update: MemberUpdate
        var transmits: Int
        var order: UInt64
    }

    var entries: [NodeID: Entry] = [:]
    var lastOrder: UInt64 = 0

    mutating func enqueue(_ update: MemberUpdate) {
        self.lastOrder &+= 1
        self.entries[update.node] = Entry(update: update, transmits: 0, order: self.lastOrder)
    }

    mutating func remove(_ node: NodeID) {
        self.entries[node] = nil
    }

    /// Up to `max` updates for one message; each counts one transmission, and is dropped after `limit`.
    mutating func take(max: Int, limit: Int, excluding: NodeID?) -> [MemberUpdate] {
        guard max > 0, !self.entries.isEmpty else { return [] }
        let chosen = self.entries.values
            .filter { $0.update.node != excluding }
            .sorted { ($0.transmits, UInt64.max - $0.order) < ($1.transmits, UInt64.max - $1.order) }
            .prefix(max)
        for entry in chosen {
            let node = entry.update.node
            if entry.transmits + 1 >= limit {
                self.entries[node] = nil
            } else {
                self.entries[node]?.transmits += 1
            }
        }
        return chosen.map(\.update)
    }
}
