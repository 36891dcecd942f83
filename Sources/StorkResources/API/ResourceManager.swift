import Foundation
import Logging
import ServiceLifecycle
import StorkCore
import StorkMembership
import StorkPlacement
import Synchronization

// MARK: - Configuration

/// How one node of a Stork cluster runs. Every field has a working default except the node's name.
public struct ResourceManagerConfiguration: Sendable {
    /// The node's stable name: placement hashes it, so a restarted node gets its resources back.
    public var name: String
    /// Addresses of nodes to join through. Empty: this node starts a new cluster.
    public var seeds: [String] = []
    /// Membership, orchestrator, placement and forwarding settings.
    public var node = NodeSettings()
    /// Poll the source given to the convenience initializers this often (only the node that owns the source's
    /// key polls). Nil: fetch once (and again when another node takes over the source).
    public var pollInterval: Duration?
    /// Keep every resource in the replicated desired set (true), or refetch the source after every rebalance
    /// (false; the original library's behaviour without a cache).
    public var cacheAllResources = true
    /// How long failing fetches are retried before the node gives up: it then terminates everything it runs and
    /// leaves the cluster, so nothing it ran is orphaned.
    public var maxLengthOfTimeToRetryResourceFetching: Duration = .seconds(60)
    /// First delay between fetch retries; doubles up to the time that is left.
    public var fetchRetryInitial: Duration = .seconds(1)
    /// How long a node that left keeps answering, so that its departure reaches every member.
    public var leaveLinger: Duration = .milliseconds(300)
    /// Required in lease mode (`node.orchestrator.ownership = .lease(…)`): where the leases live.
    public var ownershipStore: (any OwnershipStore)?
    /// Lease mode: how long one store operation may take before it counts as failed.
    public var ownershipStoreTimeout: Duration = .seconds(2)
    /// The node's message server, handed to handlers in ``ResourceContext/messaging``.
    public var messaging: (any StorkMessaging)?

    public init(name: String) {
        self.name = name
    }
}

/// The retry schedule of source fetches: exponential backoff until a total time runs out.
public struct FetchRetryPolicy: Sendable, Hashable {
    public var initial: Duration
    public var maximumTotal: Duration

    public init(initial: Duration, maximumTotal: Duration) {
        self.initial = initial
        self.maximumTotal = maximumTotal
    }

    /// The delay before the next attempt after `failures` failed attempts that took `elapsed` so far, or nil when
    /// the time is up.
    public func delay(afterFailures failures: Int, elapsed: Duration) -> Duration? {
        guard elapsed < self.maximumTotal else { return nil }
        let exponent = Double(max(0, failures - 1))
        let seconds = self.initial.secondsDouble * pow(2, min(exponent, 30))
        let left = (self.maximumTotal - elapsed).secondsDouble
        return .nanoseconds(Int64(min(seconds, left) * 1e9))
    }
}

/// A source and how the cluster uses it.
public struct SourceRegistration: Sendable {
    /// The source's name: resources remember which source listed them, so that a source's refresh only removes
    /// what that source stopped listing.
    public var name: String
    public var source: any ResourceSource
    /// Poll this often; nil fetches once (and again when another node takes the source over).
    public var pollInterval: Duration?
    /// The key whose owner (by placement) is the one node that fetches and polls this source.
    public var electionKey: ResourceID

    public init(name: String, source: any ResourceSource, pollInterval: Duration? = nil, electionKey: ResourceID? = nil) {
        self.name = name
        self.source = source
        self.pollInterval = pollInterval
        self.electionKey = electionKey ?? ResourceID("stork.source.\(name)")
    }
}

/// What this node is doing with one resource.
public struct ResourceState: Sendable, Hashable {
    public var id: ResourceID
    /// claiming (gossip mode) or acquiring (lease mode), handling, running, failed or terminating.
    public var state: String
    /// When it entered that state.
    public var since: Date
    /// The handle attempt (1 = first since it came here).
    public var attempt: Int
    public var resource: Resource?
    /// Lease mode: the fencing token of the lease it runs under.
    public var fencingToken: UInt64?
}

/// Counters of one node since it started.
public struct ResourceManagerStatistics: Sendable, Hashable {
    public var handles = 0
    public var handleFailures = 0
    public var terminations = 0
    public var terminationFailures = 0
    public var handoffTimeouts = 0
    /// allocate / deallocate calls made on this node.
    public var requests = 0
    /// Lease mode: leases granted to this node, leases it lost (self-fenced or taken), store operations (one per
    /// batch) and store operations that failed or timed out.
    public var leasesAcquired = 0
    public var leasesLost = 0
    public var leaseStoreOperations = 0
    public var leaseStoreFailures = 0
    /// Relay frames that came through the manager's receive loop (transports that cannot hand them over directly)
    /// and were given to the relay receiver, and those dropped because none was set.
    public var relayFramesReceived = 0
    public var relayFramesDropped = 0
}

/// A snapshot of one node.
public struct ResourceManagerStatus: Sendable {
    public var identity: NodeID
    public var isJoined: Bool
    /// Whether the node applied a view of the cluster and handles what it owns.
    public var isReady: Bool
    /// Whether the node is leaving (draining) or has left.
    public var isLeaving: Bool
    public var members: [Member]
    /// The members resources are placed on, and the placement checksum of that view.
    public var view: [NodeID]
    public var viewChecksum: UInt64
    public var running: [ResourceID]
    public var desiredCount: Int
    /// Handler calls and ownership store operations asked for and not finished yet (a runner counts until it has
    /// started). Zero when the node waits for nothing but its timers and its peers.
    public var workInFlight: Int
}

// MARK: - ResourceManager

/// Runs resources on this node as part of a cluster: the library form of Stork.
///
/// Give it a handler (or a runner), optionally a source, and a transport; run it as a `Service` (for example in a
/// `ServiceGroup`). `allocate` and `deallocate` work on any node; `stop` leaves gracefully (everything running
/// here is terminated before the node leaves, so nothing is orphaned).
///
/// Every timer of the node (membership probes, retries, polls, store timeouts, the linger after leaving) runs on the
/// `clock` given to the initializer, the continuous clock by default; tests pass a clock they move by hand.
public final class ResourceManager: Service, Sendable {
    enum Mode: Sendable {
        case handler(any ResourceHandler)
        case runner(any ResourceRunner)
    }

    enum Work: Sendable {
        case handle(Resource, attempt: Int, ticket: UInt64, token: UInt64?)
        case terminate(Resource, reason: TerminationReason, ticket: UInt64, token: UInt64?)
        case acquireLeases([ResourceID])
        case renewLeases([LeaseKey])
        case releaseLeases([LeaseKey])
        /// Stop after a pause (the node left; let its departure spread first).
        case finishAfter(Duration)
        case finish
    }

    struct RunningResource: Sendable {
        var stop = OneShotSignal()
        var done = OneShotSignal()
    }

    struct State: Sendable {
        var machine: ClusterNodeStateMachine
        var requests: [UInt64: CheckedContinuation<RequestOutcome, Never>] = [:]
        var nextRequestID: UInt64 = 0
        var subscribers: [Int: AsyncStream<NodeEvent>.Continuation] = [:]
        var nextSubscriber = 0
        var runners: [ResourceID: RunningResource] = [:]
        var hasLeft = false
        var isLeaving = false
        var failure: StorkError?
        var resourceStates: [ResourceID: ResourceState] = [:]
        var statistics = ResourceManagerStatistics()
        /// Lease mode: the token each resource was handled under, passed to its terminate.
        var handledTokens: [ResourceID: UInt64] = [:]
        /// Lease mode: store operations in flight (waited for, briefly, before the node stops).
        var storeOperations = 0
        /// Lease mode: acquisitions and releases asked for while one of the same kind is with the store; they go
        /// together in the next batch, so that a burst of moves costs a few queries rather than one per event.
        var pendingAcquisitions: [ResourceID] = []
        var acquisitionInFlight = false
        var pendingReleases: [LeaseKey] = []
        var releaseInFlight = false
        /// Where relay frames go (``relayFrames()``); nil until someone asks.
        var relayReceiver: RelayReceiver?
        /// Handler calls and store operations asked for and not finished (a runner until it has started).
        var workInFlight = 0
    }


    public let identity: NodeID
    public let configuration: ResourceManagerConfiguration
    /// Lease mode: who this node is in the ownership store ("name/uid": a restarted node is a new holder).
    public var leaseHolder: String { "\(self.identity.name)/\(self.identity.uid)" }
    private let mode: Mode
    private let sources: [SourceRegistration]
    private let transport: any ClusterTransport
    private let logger: Logger
    /// What every timer, poll, retry and timeout of this node runs on (the continuous clock unless one was given).
    private let clock: StorkClock
    private let state: Mutex<State>
    private let work: AsyncStream<Work>
    private let workContinuation: AsyncStream<Work>.Continuation
    private let wake = WakeSignal()
    private let joined = OneShotSignal()
    private let left = OneShotSignal()

    /// A node whose resources come from one source (named "default", polled every `pollInterval`) and `allocate`.
    public convenience init(
        configuration: ResourceManagerConfiguration,
        handler: some ResourceHandler,
        source: (any ResourceSource)? = nil,
        transport: some ClusterTransport,
        logger: Logger = Logger(label: "stork.resources"),
        clock: some Clock<Duration> = ContinuousClock()
    ) {
        let sources = source.map { [SourceRegistration(name: "default", source: $0, pollInterval: configuration.pollInterval)] }
        self.init(configuration, .handler(handler), sources ?? [], transport, logger, StorkClock(clock))
    }

    /// A node whose resources come from several named sources and `allocate`.
    public convenience init(
        configuration: ResourceManagerConfiguration,
        handler: some ResourceHandler,
        sources: [SourceRegistration],
        transport: some ClusterTransport,
        logger: Logger = Logger(label: "stork.resources"),
        clock: some Clock<Duration> = ContinuousClock()
    ) {
        self.init(configuration, .handler(handler), sources, transport, logger, StorkClock(clock))
    }

    /// A node whose resources run as `ResourceRunner.run` calls, cancelled to terminate.
    public convenience init(
        configuration: ResourceManagerConfiguration,
        runner: some ResourceRunner,
        source: (any ResourceSource)? = nil,
        transport: some ClusterTransport,
        logger: Logger = Logger(label: "stork.resources"),
        clock: some Clock<Duration> = ContinuousClock()
    ) {
        let sources = source.map { [SourceRegistration(name: "default", source: $0, pollInterval: configuration.pollInterval)] }
        self.init(configuration, .runner(runner), sources ?? [], transport, logger, StorkClock(clock))
    }

    private init(
        _ configuration: ResourceManagerConfiguration,
        _ mode: Mode,
        _ sources: [SourceRegistration],
        _ transport: any ClusterTransport,
        _ logger: Logger,
        _ clock: StorkClock
    ) {
        var random = SeededRandom()
        let milliseconds = UInt64(max(0, Date().timeIntervalSince1970 * 1000))
        self.identity = NodeID(
            name: configuration.name,
            address: transport.address,
            uid: NodeID.makeUID(unixMilliseconds: milliseconds, using: &random)
        )
        self.configuration = configuration
        self.mode = mode
        self.sources = sources
        self.transport = transport
        var logger = logger
        logger[metadataKey: "stork.node"] = "\(configuration.name)"
        self.logger = logger
        self.clock = clock
        self.state = Mutex(
            State(
                machine: ClusterNodeStateMachine(
                    myself: self.identity,
                    seeds: configuration.seeds,
                    settings: configuration.node,
                    random: random.split(),
                    epochMillis: milliseconds
                )
            )
        )
        (self.work, self.workContinuation) = AsyncStream<Work>.makeStream(bufferingPolicy: .unbounded)
    }

    // MARK: Public API

    /// Adds a resource to the cluster (or updates it) and returns once its owner's handler finished with it.
    @discardableResult
    public func allocate(_ resource: Resource) async -> RequestOutcome {
        if let pin = resource.pinnedNode {
            let isMember = self.state.withLock { $0.machine.placement.members.contains { $0.node.name == pin } }
            if !isMember {
                self.logger.warning(
                    "a resource is pinned to a node that is not a member: it runs when that node joins",
                    metadata: ["stork.resource": "\(resource.id)", "stork.pin": "\(pin)"]
                )
            }
        }
        return await self.request { machine, requestID, now in
            machine.allocate(resource, requestID: requestID, now: now)
        }
    }

    /// Removes a resource from the cluster and returns once its owner terminated it.
    @discardableResult
    public func deallocate(_ id: ResourceID) async -> RequestOutcome {
        await self.request { machine, requestID, now in machine.deallocate(id, requestID: requestID, now: now) }
    }

    /// Leaves gracefully: terminates everything running here (others take it over), leaves the membership, and
    /// returns when done. `run()` returns afterwards.
    public func stop() async {
        self.beginLeave()
        await self.left.wait()
    }

    /// Lifecycle events of this node: resources claimed, handled, failed, terminated; members; views.
    public func events() -> AsyncStream<NodeEvent> {
        let (stream, continuation) = AsyncStream<NodeEvent>.makeStream(bufferingPolicy: .bufferingNewest(10_000))
        let id = self.state.withLock { state -> Int in
            state.nextSubscriber += 1
            state.subscribers[state.nextSubscriber] = continuation
            return state.nextSubscriber
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.subscribers.removeValue(forKey: id) }
        }
        return stream
    }

    // MARK: Relay frames

    /// Where application frames (``ClusterMessage/relay(_:)``) that peers send to this node go: to `receiver`, on the
    /// transport's thread as they arrive when the transport can (with back-pressure to the sender), or from this
    /// manager's receive loop otherwise. One receiver per node (the bus); nil stops the delivery.
    public func setRelayReceiver(_ receiver: RelayReceiver?) {
        self.state.withLock { $0.relayReceiver = receiver }
        _ = self.transport.setRelayReceiver(receiver)
    }

    /// Sends an application frame to `node` without waiting; best-effort like every cluster message.
    public func sendRelay(_ payload: [UInt8], to node: NodeID) {
        self.transport.send(.relay(RelayMessage(from: self.identity, payload: payload)), to: node.address)
    }

    /// Bytes the transport holds for `node` and has not written yet.
    public func relayBacklog(to node: NodeID) -> Int {
        self.transport.backlog(to: node.address)
    }

    /// Returns once the transport holds nothing more for `node`.
    public func waitForRelayBacklog(to node: NodeID) async {
        await self.transport.waitForBacklog(to: node.address)
    }

    /// False when the transport's last attempt to connect to `node` failed.
    public func isReachable(_ node: NodeID) -> Bool {
        self.transport.isReachable(node.address)
    }

    /// The members this node currently sees as alive or suspect (itself included), sorted: the peers worth talking
    /// to. Dead and departed members are not listed.
    public func liveMembers() -> [NodeID] {
        self.state.withLock { state in
            state.machine.membership.members.filter { $0.status.isActive }.map(\.node)
        }
    }

    /// A relay frame that came through `incoming()` (a transport that does not hand them over directly).
    private func deliverRelay(_ message: RelayMessage) {
        let receiver = self.state.withLock { state in
            if state.relayReceiver == nil {
                state.statistics.relayFramesDropped += 1
            } else {
                state.statistics.relayFramesReceived += 1
            }
            return state.relayReceiver
        }
        // No reading to pause here: the in-memory transport has no sender to push back on.
        _ = receiver?(message, {})
    }

    /// A snapshot of this node's view and work.
    public func status() -> ResourceManagerStatus {
        self.state.withLock { state in
            let machine = state.machine
            return ResourceManagerStatus(
                identity: self.identity,
                isJoined: machine.membership.isJoined,
                isReady: machine.orchestrator.isReady,
                isLeaving: state.isLeaving || state.hasLeft,
                members: machine.membership.members,
                view: machine.placement.members.map(\.node),
                viewChecksum: machine.placement.checksum,
                running: machine.orchestrator.runningResources,
                desiredCount: machine.desired.liveCount,
                workInFlight: state.workInFlight
            )
        }
    }

    // MARK: Service

    public func run() async throws {
        if self.configuration.node.orchestrator.ownership.leaseSettings != nil {
            guard let store = self.configuration.ownershipStore else {
                throw StorkError(.invalidInput, "lease ownership needs an ownership store (configuration.ownershipStore)")
            }
            try self.configuration.node.orchestrator.ownership.leaseSettings?.validate()
            try await store.prepare()
        }
        for registration in self.sources {
            try await registration.source.setup()
        }
        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await self.receiveLoop() }
                group.addTask { await self.timerLoop() }
                for registration in self.sources {
                    group.addTask { await self.sourceLoop(registration) }
                    if let changes = registration.source.changes() {
                        group.addTask { await self.changesLoop(changes, source: registration.name) }
                    }
                }
                self.apply { machine, now in machine.start(now: now) }
                for await item in self.work {
                    switch item {
                    case .finish:
                        await self.waitForStoreOperations(timeout: self.configuration.ownershipStoreTimeout)
                    case .finishAfter(let linger):
                        group.addTask {
                            try? await self.clock.sleep(for: linger)
                            self.workContinuation.yield(.finish)
                        }
                        continue
                    case .handle, .terminate, .acquireLeases, .renewLeases, .releaseLeases:
                        group.addTask { await self.execute(item) }
                        continue
                    }
                    break
                }
                group.cancelAll()
            }
        } onGracefulShutdown: {
            self.beginLeave()
        }
        self.transport.close()
        for registration in self.sources { await registration.source.tearDown() }
        // Finished after the lock is released: `finish()` runs the stream's `onTermination` at once, and the one
        // `events()` installs takes the lock again (a subscriber still iterating when the node stops crashed here).
        let (failure, subscribers) = self.state.withLock { state in
            defer {
                state.subscribers = [:]
                state.relayReceiver = nil
                // Work still queued when the loop ended is never done.
                state.workInFlight = 0
            }
            return (state.failure, Array(state.subscribers.values))
        }
        _ = self.transport.setRelayReceiver(nil)
        for continuation in subscribers { continuation.finish() }
        self.left.fire()
        if let failure { throw failure }
    }

    // MARK: Driving the state machine

    private func now() -> StorkInstant {
        self.clock.now
    }

    /// Runs one event through the state machine and performs what it asks, in order.
    private func apply(_ body: (inout ClusterNodeStateMachine, StorkInstant) -> [NodeAction]) {
        let now = self.now()
        let completions = self.state.withLock {
            state -> [(CheckedContinuation<RequestOutcome, Never>, RequestOutcome)] in
            let actions = body(&state.machine, now)
            return self.perform(actions, state: &state)
        }
        for (continuation, outcome) in completions { continuation.resume(returning: outcome) }
        self.wake.signal()
    }

    private func perform(
        _ actions: [NodeAction],
        state: inout State
    ) -> [(CheckedContinuation<RequestOutcome, Never>, RequestOutcome)] {
        var completions: [(CheckedContinuation<RequestOutcome, Never>, RequestOutcome)] = []
        for action in actions {
            switch action {
            case .send(let message, let address):
                self.transport.send(message, to: address)
            case .handle(let resource, let attempt, let ticket):
                let token = state.machine.orchestrator.fencingToken(of: resource.id)
                state.handledTokens[resource.id] = token
                if let token { state.resourceStates[resource.id]?.fencingToken = token }
                self.enqueue(.handle(resource, attempt: attempt, ticket: ticket, token: token), state: &state)
            case .terminate(let resource, let reason, let ticket):
                let token = state.handledTokens.removeValue(forKey: resource.id)
                self.enqueue(.terminate(resource, reason: reason, ticket: ticket, token: token), state: &state)
            case .acquireLeases(let ids):
                state.pendingAcquisitions += ids
                self.startNextBatch(&state)
            case .renewLeases(let keys):
                state.storeOperations += 1
                self.enqueue(.renewLeases(keys), state: &state)
            case .releaseLeases(let keys):
                state.pendingReleases += keys
                self.startNextBatch(&state)
            case .complete(let requestID, let outcome):
                if let continuation = state.requests.removeValue(forKey: requestID) {
                    completions.append((continuation, outcome))
                }
            case .event(let event):
                self.log(event)
                Self.record(event, in: &state)
                for subscriber in state.subscribers.values { subscriber.yield(event) }
                switch event {
                case .joined:
                    self.joined.fire()
                case .left:
                    state.hasLeft = true
                    // Keep answering briefly so the departure reaches everyone, then stop.
                    self.workContinuation.yield(.finishAfter(self.configuration.leaveLinger))
                default:
                    break
                }
            }
        }
        return completions
    }

    /// Keeps the per-resource state table and the counters up to date.
    private static func record(_ event: NodeEvent, in state: inout State) {
        guard case .resource(let event) = event else { return }
        let now = Date()
        func set(_ phase: String, attempt: Int? = nil) {
            let previous = state.resourceStates[event.id]
            state.resourceStates[event.id] = ResourceState(
                id: event.id,
                state: phase,
                since: previous?.state == phase ? previous!.since : now,
                attempt: attempt ?? previous?.attempt ?? 0,
                resource: state.machine.orchestrator.desiredResource(event.id),
                fencingToken: state.handledTokens[event.id] ?? previous?.fencingToken
            )
        }
        switch event.kind {
        case .claiming:
            set("claiming")
        case .acquiringLease:
            set("acquiring")
        case .leaseAcquired:
            state.statistics.leasesAcquired += 1
        case .leaseLost:
            state.statistics.leasesLost += 1
        case .handling(let attempt):
            state.statistics.handles += 1
            set("handling", attempt: attempt)
        case .handled(let attempt):
            set("running", attempt: attempt)
        case .handleFailed(let attempt, _):
            state.statistics.handleFailures += 1
            set("failed", attempt: attempt)
        case .terminating:
            state.statistics.terminations += 1
            set("terminating")
        case .terminated:
            state.resourceStates[event.id] = nil
        case .terminationFailed:
            state.statistics.terminationFailures += 1
            state.resourceStates[event.id] = nil
        case .handoffTimedOut:
            state.statistics.handoffTimeouts += 1
        }
    }

    private func request(
        _ body: @escaping @Sendable (inout ClusterNodeStateMachine, UInt64, StorkInstant) -> [NodeAction]
    ) async -> RequestOutcome {
        await withCheckedContinuation { (continuation: CheckedContinuation<RequestOutcome, Never>) in
            let now = self.now()
            let completions = self.state.withLock {
                state -> [(CheckedContinuation<RequestOutcome, Never>, RequestOutcome)] in
                if state.hasLeft { return [(continuation, .shutdown)] }
                state.statistics.requests += 1
                state.nextRequestID += 1
                state.requests[state.nextRequestID] = continuation
                let actions = body(&state.machine, state.nextRequestID, now)
                return self.perform(actions, state: &state)
            }
            for (continuation, outcome) in completions { continuation.resume(returning: outcome) }
            self.wake.signal()
        }
    }

    private func beginLeave() {
        self.state.withLock { $0.isLeaving = true }
        self.apply { machine, now in machine.leave(now: now) }
    }

    /// Starts a graceful leave without waiting for it (`stop()` waits). Used by `stork drain` and SIGTERM.
    public func drain() {
        self.beginLeave()
    }

    /// The resources this node holds state for (claiming, handling, running, failed, terminating), sorted by id.
    public func resourceStates() -> [ResourceState] {
        self.state.withLock { $0.resourceStates.values.sorted { $0.id < $1.id } }
    }

    /// Counters since start.
    public func statistics() -> ResourceManagerStatistics {
        self.state.withLock { $0.statistics }
    }

    /// The owner of every desired resource in this node's view (placement's choice, or the node a resource is pinned
    /// to; nil for a pinned resource whose node is not a member): the cluster-wide picture.
    public func clusterAssignment() -> [(resource: Resource, owner: NodeID?)] {
        self.desiredResources(withPrefix: "").sorted { $0.resource.id < $1.resource.id }
    }

    /// Whether the node is part of the cluster and handles what it owns (one read under the lock).
    public var isReady: Bool { self.state.withLock { $0.machine.orchestrator.isReady } }

    /// The desired resource `id` and its owner in this node's view (nil: no member, or a pin to a node that is not
    /// one), in one lookup.
    public func desiredResource(_ id: ResourceID) -> (resource: Resource, owner: NodeID?)? {
        self.state.withLock { state in
            guard let resource = state.machine.desired.resource(id) else { return nil }
            return (resource, state.machine.placement.owner(of: id, pinnedTo: resource.pinnedNode))
        }
    }

    /// The desired resources whose id starts with `prefix`, with their owners in this node's view, unsorted.
    public func desiredResources(withPrefix prefix: String) -> [(resource: Resource, owner: NodeID?)] {
        self.state.withLock { state in
            let placement = state.machine.placement
            return state.machine.desired.resources(withPrefix: prefix).map {
                ($0, placement.owner(of: $0.id, pinnedTo: $0.pinnedNode))
            }
        }
    }

    // MARK: Loops

    private func receiveLoop() async {
        for await message in self.transport.incoming() {
            if case .relay(let relay) = message {
                self.deliverRelay(relay)
                continue
            }
            self.apply { machine, now in machine.receive(message, now: now) }
        }
    }

    private func timerLoop() async {
        while !Task.isCancelled {
            let (deadline, now) = self.state.withLock { ($0.machine.nextDeadline, self.now()) }
            if let deadline, deadline <= now {
                self.apply { machine, now in machine.tick(now: now) }
                continue
            }
            let delay = deadline.map { $0 - now } ?? .seconds(1)
            await self.wake.wait(timeout: min(delay, .seconds(1)), on: self.clock)
        }
    }

    private func sourceLoop(_ registration: SourceRegistration) async {
        await self.joined.wait()
        var fetchedAsOwner = false
        var lastFetch: StorkInstant?
        var lastChecksum: UInt64?
        while !Task.isCancelled {
            // Decide on the applied view only: before the first one, every node thinks it is alone.
            let (isOwner, checksum) = self.state.withLock { state in
                (
                    state.machine.orchestrator.isReady
                        && state.machine.placement.owner(of: registration.electionKey) == self.identity,
                    state.machine.placement.checksum
                )
            }
            if isOwner {
                let pollDue =
                    registration.pollInterval.map { interval in
                        lastFetch.map { self.clock.now - $0 >= interval } ?? true
                    } ?? false
                let refetch = !self.configuration.cacheAllResources && lastChecksum != checksum
                if !fetchedAsOwner || pollDue || refetch {
                    guard let resources = await self.fetchWithRetry(registration) else { return }
                    fetchedAsOwner = true
                    lastFetch = self.clock.now
                    lastChecksum = checksum
                    let valid = self.withValidPins(resources, source: registration.name)
                    self.apply { machine, now in machine.sourceReplaced(valid, source: registration.name, now: now) }
                }
            } else {
                fetchedAsOwner = false
            }
            try? await self.clock.sleep(for: .milliseconds(200))
        }
    }

    /// Fetches, retrying with backoff; on giving up, leaves the cluster and returns nil.
    private func fetchWithRetry(_ registration: SourceRegistration) async -> [Resource]? {
        let policy = FetchRetryPolicy(
            initial: self.configuration.fetchRetryInitial,
            maximumTotal: self.configuration.maxLengthOfTimeToRetryResourceFetching
        )
        let started = self.clock.now
        var failures = 0
        while !Task.isCancelled {
            do {
                return try await registration.source.fetch()
            } catch {
                failures += 1
                guard let delay = policy.delay(afterFailures: failures, elapsed: self.clock.now - started) else {
                    let failure = StorkError(
                        .sourceFailed,
                        "the source '\(registration.name)' failed for \(failures) attempts; leaving the cluster",
                        underlying: error
                    )
                    self.logger.error("\(failure)")
                    self.state.withLock { $0.failure = failure }
                    self.beginLeave()
                    return nil
                }
                self.logger.warning(
                    "source fetch failed; retrying",
                    metadata: ["stork.source": "\(registration.name)", "stork.error": "\(error)", "stork.retry_in": "\(delay)"]
                )
                try? await self.clock.sleep(for: delay)
            }
        }
        return nil
    }

    private func changesLoop(_ changes: AsyncStream<ResourceSourceChange>, source: String) async {
        await self.joined.wait()
        for await change in changes {
            switch change {
            case .upserted(let resources):
                let valid = self.withValidPins(resources, source: source)
                self.apply { machine, now in
                    machine.sourceChanged(upserted: valid, removed: [], source: source, now: now)
                }
            case .removed(let ids):
                self.apply { machine, now in machine.sourceChanged(upserted: [], removed: ids, source: source, now: now) }
            case .replaced(let resources):
                let valid = self.withValidPins(resources, source: source)
                self.apply { machine, now in machine.sourceReplaced(valid, source: source, now: now) }
            }
        }
    }

    /// `resources` without those whose pin (`Resource.pinAttribute`) names no node: each is logged as an error and
    /// left out, rather than run wherever placement puts it.
    private func withValidPins(_ resources: [Resource], source: String) -> [Resource] {
        resources.filter { resource in
            do {
                try resource.validatePin()
                return true
            } catch {
                self.logger.error(
                    "a resource of the source is left out",
                    metadata: ["stork.source": "\(source)", "stork.error": "\(error)"]
                )
                return false
            }
        }
    }

    // MARK: Handler calls

    private func context(for resource: Resource, attempt: Int, token: UInt64?) -> ResourceContext {
        var logger = self.logger
        logger[metadataKey: "stork.resource"] = "\(resource.id)"
        if let token { logger[metadataKey: "stork.fencing_token"] = "\(token)" }
        return ResourceContext(
            node: self.identity,
            attempt: attempt,
            fencingToken: token,
            logger: logger,
            messaging: self.configuration.messaging
        )
    }

    /// Hands work to the loop in `run()`, counted until it is done (``ResourceManagerStatus/workInFlight``).
    private func enqueue(_ work: Work, state: inout State) {
        state.workInFlight += 1
        self.workContinuation.yield(work)
    }

    private func workDone() {
        self.state.withLock { $0.workInFlight -= 1 }
    }

    private func execute(_ item: Work) async {
        // A runner is done as work once it has started (it then runs until terminated): `runRunner` says so.
        var countedHere = true
        defer { if countedHere { self.workDone() } }
        switch item {
        case .acquireLeases(let ids):
            await self.storeOperation(
                { store, settings in try await store.acquire(ids, holder: self.leaseHolder, duration: settings.duration) },
                succeeded: { grants, requestedAt in
                    self.apply {
                        $0.leasesAcquired(granted: grants.granted, refused: grants.refused, requestedAt: requestedAt, now: $1)
                    }
                },
                failed: { self.apply { $0.leaseAcquireFailed(ids, now: $1) } }
            )
            self.batchFinished(acquisition: true)
        case .renewLeases(let keys):
            await self.storeOperation(
                { store, settings in try await store.renew(keys, holder: self.leaseHolder, duration: settings.duration) },
                succeeded: { renewals, requestedAt in
                    self.apply {
                        $0.leasesRenewed(renewed: renewals.renewed, lost: renewals.lost, requestedAt: requestedAt, now: $1)
                    }
                },
                failed: { self.apply { $0.leaseRenewFailed(now: $1) } }
            )
        case .releaseLeases(let keys):
            await self.storeOperation(
                { store, _ in try await store.release(keys, holder: self.leaseHolder) },
                succeeded: { _, _ in },
                failed: {}
            )
            self.batchFinished(acquisition: false)
        case .handle(let resource, let attempt, let ticket, let token):
            let context = self.context(for: resource, attempt: attempt, token: token)
            switch self.mode {
            case .handler(let handler):
                do {
                    try await handler.handle(resource, context: context)
                    self.apply { $0.handleCompleted(resource.id, ticket: ticket, succeeded: true, now: $1) }
                } catch {
                    await handler.handleFailed(resource, error: error, context: context)
                    self.apply { $0.handleCompleted(resource.id, ticket: ticket, succeeded: false, now: $1) }
                }
            case .runner(let runner):
                countedHere = false
                await self.runRunner(runner, resource: resource, ticket: ticket, context: context)
            }
        case .terminate(let resource, let reason, let ticket, let token):
            let context = self.context(for: resource, attempt: 0, token: token)
            switch self.mode {
            case .handler(let handler):
                do {
                    try await handler.terminate(resource, reason: reason, context: context)
                    self.apply { $0.terminateCompleted(resource.id, ticket: ticket, succeeded: true, now: $1) }
                } catch {
                    await handler.handleFailedTermination(resource, error: error, context: context)
                    self.apply { $0.terminateCompleted(resource.id, ticket: ticket, succeeded: false, now: $1) }
                }
            case .runner:
                let running = self.state.withLock { $0.runners[resource.id] }
                if let running {
                    running.stop.fire()
                    await running.done.wait()
                }
                self.apply { $0.terminateCompleted(resource.id, ticket: ticket, succeeded: true, now: $1) }
            }
        case .finish, .finishAfter:
            countedHere = false
        }
    }

    private func runRunner(
        _ runner: any ResourceRunner,
        resource: Resource,
        ticket: UInt64,
        context: ResourceContext
    ) async {
        let running = RunningResource()
        self.state.withLock { $0.runners[resource.id] = running }
        self.apply { $0.handleCompleted(resource.id, ticket: ticket, succeeded: true, now: $1) }
        self.workDone()
        let stoppedByUs = await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                do {
                    try await runner.run(resource, context: context)
                } catch {
                    if !Task.isCancelled {
                        context.logger.warning("runner failed", metadata: ["stork.error": "\(error)"])
                    }
                }
                return false
            }
            group.addTask {
                await running.stop.wait()
                return true
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
        self.state.withLock { state in
            if state.runners[resource.id]?.done === running.done { state.runners[resource.id] = nil }
        }
        running.done.fire()
        if !stoppedByUs {
            self.apply { $0.runningFailed(resource.id, now: $1) }
        }
    }

    // MARK: Ownership store calls

    /// Sends the waiting acquisitions and releases, each kind as one batch, unless one of that kind is in flight.
    private func startNextBatch(_ state: inout State) {
        if !state.acquisitionInFlight, !state.pendingAcquisitions.isEmpty {
            state.acquisitionInFlight = true
            state.storeOperations += 1
            self.enqueue(.acquireLeases(state.pendingAcquisitions), state: &state)
            state.pendingAcquisitions = []
        }
        if !state.releaseInFlight, !state.pendingReleases.isEmpty {
            state.releaseInFlight = true
            state.storeOperations += 1
            self.enqueue(.releaseLeases(state.pendingReleases), state: &state)
            state.pendingReleases = []
        }
    }

    private func batchFinished(acquisition: Bool) {
        self.state.withLock { state in
            if acquisition { state.acquisitionInFlight = false } else { state.releaseInFlight = false }
            self.startNextBatch(&state)
        }
    }

    /// Runs one store call with the configured timeout and reports its outcome; the time just before the call is
    /// what lease deadlines are measured from.
    private func storeOperation<T: Sendable>(
        _ call: @escaping @Sendable (any OwnershipStore, LeaseSettings) async throws -> T,
        succeeded: (T, StorkInstant) -> Void,
        failed: () -> Void
    ) async {
        defer { self.state.withLock { $0.storeOperations -= 1 } }
        guard let store = self.configuration.ownershipStore,
            let settings = self.configuration.node.orchestrator.ownership.leaseSettings
        else { return }
        let requestedAt = self.now()
        let timeout = self.configuration.ownershipStoreTimeout
        do {
            let result = try await withThrowingTaskGroup(of: T?.self) { group in
                group.addTask { try await call(store, settings) }
                group.addTask {
                    try await self.clock.sleep(for: timeout)
                    return nil
                }
                defer { group.cancelAll() }
                guard let first = try await group.next(), let value = first else {
                    throw StorkError(.timeout, "the ownership store did not answer within \(timeout)")
                }
                return value
            }
            self.state.withLock { $0.statistics.leaseStoreOperations += 1 }
            succeeded(result, requestedAt)
        } catch {
            self.state.withLock {
                $0.statistics.leaseStoreOperations += 1
                $0.statistics.leaseStoreFailures += 1
            }
            self.logger.warning("ownership store operation failed", metadata: ["stork.error": "\(error)"])
            failed()
        }
    }

    /// Waits (at most `timeout`) for store operations in flight, so that leases given back on leaving reach the
    /// store before the node stops.
    private func waitForStoreOperations(timeout: Duration) async {
        let deadline = self.clock.now + timeout
        while self.state.withLock({ $0.storeOperations > 0 }), self.clock.now < deadline {
            try? await self.clock.sleep(for: .milliseconds(10))
        }
    }

    // MARK: Logging

    private func log(_ event: NodeEvent) {
        switch event {
        case .resource(let event):
            self.logger.debug("resource \(event.id): \(event.kind)")
        case .member(let change):
            self.logger.info(
                "member \(change.node): \(change.previous.map { "\($0)" } ?? "-") -> \(change.current.map { "\($0)" } ?? "-")"
            )
        case .joined(let standalone):
            self.logger.info(standalone ? "no seed answered; running as a cluster of one" : "joined the cluster")
        case .refuted(let incarnation):
            self.logger.warning("refuted a suspicion about this node (incarnation \(incarnation))")
        case .viewApplied(let members, let checksum):
            self.logger.info("view of \(members.count) members applied (checksum \(checksum))")
        case .left:
            self.logger.info("left the cluster")
        }
    }
}
