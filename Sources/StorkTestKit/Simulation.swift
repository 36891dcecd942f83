import Foundation
import HeapModule
import StorkCore
import StorkMembership
import StorkPlacement
import StorkResources

// MARK: - Simulation
//
// N nodes running the real `ClusterNodeStateMachine` (membership, placement, desired set, orchestrator,
// forwarding) over a simulated network with a virtual clock. Everything random derives from the seed, so a seed
// replays the same run event for event. Invariants are checked at every handle and at the end:
//
// * no resource is handled on a node while another node runs it, unless the starter did not count the other as a
//   member of its view (it was declared dead: a pause, a partition, a false suspicion) or the handoff deadline
//   expired under network faults; in runs without faults there is no excuse at all;
// * after the last fault heals, within `convergenceBound`: membership agrees on the live nodes, every node holds
//   the same desired set, every desired resource runs on exactly one live node (its owner) and nothing else runs;
// * every allocate/deallocate gets an answer (unless the node it was made on crashed), and without faults every
//   answer is a success.
//
// In lease mode the simulator also models the ownership store (`LeaseTable` on a clock of its own, with latency,
// timeouts and outages) and checks, at every step where it matters:
// * a handle starts only under the lease the store currently holds valid for that node, and each resource's tokens
//   strictly increase from one handle to the next, cluster-wide;
// * never two valid leases for one resource: when the store grants a lease, no other node (running, paused or
//   partitioned) still believes it holds an unexpired lease on it.

/// A deterministic simulation of one Stork cluster. Create, `run()`, read the report.
public struct Simulation {
    // MARK: Types

    enum NodeState: Equatable {
        case down
        case up
        case paused
    }

    /// One simulated process slot. A class, so that the simulation mutates nodes in place without copying them.
    final class SimNode {
        let index: Int
        let name: String
        let address: String
        var generation = 0
        var identity: NodeID
        var machine: ClusterNodeStateMachine?
        var state: NodeState = .down
        /// Resources whose handler is running here (from the start of handle until terminate completes), with the
        /// members of this node's view when it started the handle.
        var running: [ResourceID: Set<NodeID>] = [:]
        /// Events that arrived while paused, replayed on resume.
        var deferred: [Event] = []
        var scheduledWake: StorkInstant?
        /// Resources whose handoff deadline expired on this node, and when.
        var handoffTimeouts: [ResourceID: StorkInstant] = [:]

        init(index: Int, name: String, address: String, identity: NodeID) {
            self.index = index
            self.name = name
            self.address = address
            self.identity = identity
        }
    }

    enum Event {
        case start(Int)
        case deliver(from: Int, to: Int, ClusterMessage)
        case wake(Int, generation: Int)
        case handlerDone(Int, generation: Int, ResourceID, ticket: UInt64, isHandle: Bool, succeeded: Bool)
        case crash(Int)
        case restart(Int)
        case pause(Int)
        case resume(Int)
        case partition(blocked: Set<Link>)
        case heal
        case lossOn
        case lossOff
        case allocate(ResourceID)
        case deallocate(ResourceID)
        case check
        /// Lease mode: a request reaches the store, and the store's answer reaches the node.
        case storeRequest(Int, generation: Int, holder: String, StoreRequest, requestedAt: StorkInstant)
        case storeAnswer(Int, generation: Int, StoreAnswer, requestedAt: StorkInstant)
        case storeDown
        case storeUp
    }

    enum StoreRequest {
        case acquire([ResourceID])
        case renew([LeaseKey])
        case release([LeaseKey])
    }

    enum StoreAnswer {
        case acquired(LeaseGrants)
        case renewed(LeaseRenewals)
        case acquireFailed([ResourceID])
        case renewFailed
        case released
    }

    struct Link: Hashable {
        var from: Int
        var to: Int
    }

    struct Scheduled: Comparable {
        var at: StorkInstant
        var sequence: UInt64
        var event: Event

        static func < (lhs: Scheduled, rhs: Scheduled) -> Bool {
            if lhs.at != rhs.at { return lhs.at < rhs.at }
            return lhs.sequence < rhs.sequence
        }

        static func == (lhs: Scheduled, rhs: Scheduled) -> Bool {
            lhs.at == rhs.at && lhs.sequence == rhs.sequence
        }
    }

    struct LastOperation {
        var isAllocate: Bool
        var requestID: UInt64
        var node: Int
        var generation: Int
        var succeeded: Bool?
        /// The version the change got on the node that took it.
        var version: DesiredVersion?
        /// At some crash, no live member other than the crashing one held the change (or a newer version of the
        /// id): every member that held it crashed.
        var everyHolderCrashed = false
    }

    struct PendingRequest {
        var node: Int
        var generation: Int
        var id: ResourceID
        var isAllocate: Bool
        var issuedAt: StorkInstant
    }

    // MARK: State

    public let configuration: SimulationConfiguration
    private var random: SeededRandom
    private var now = StorkInstant.zero
    private var queue = Heap<Scheduled>()
    private var sequence: UInt64 = 0
    private var nodes: [SimNode] = []
    private var addressIndex: [String: Int] = [:]
    private var blocked: Set<Link> = []
    private var lossActive = false
    private var faultsEnd = StorkInstant.zero
    private var nextRequestID: UInt64 = 0
    private var pending: [UInt64: PendingRequest] = [:]
    /// The last operation issued per resource and whether it completed successfully.
    private var lastOperation: [ResourceID: LastOperation] = [:]
    private var nextResourceNumber = 0
    private var convergedAt: StorkInstant?
    private var report: SimulationReport
    private var traceHash: UInt64 = 0xCBF2_9CE4_8422_2325
    private let traceLines = TraceLines()
    /// Lease mode: the store's table, whether it answers, and the last token each resource was handled with.
    private var leaseTable = LeaseTable()
    private var storeAvailable = true
    private var lastHandledToken: [ResourceID: UInt64] = [:]
    private var leaseSettings: LeaseSettings? { self.configuration.node.orchestrator.ownership.leaseSettings }

    public init(configuration: SimulationConfiguration) {
        self.configuration = configuration
        self.random = SeededRandom(seed: configuration.seed)
        self.report = SimulationReport(configuration: configuration)
        for index in 0..<configuration.nodes {
            let name = "node-\(index)"
            let address = "\(name):7946"
            let identity = NodeID(name: name, address: address, uid: 0)
            self.nodes.append(SimNode(index: index, name: name, address: address, identity: identity))
            self.addressIndex[address] = index
        }
    }

    // MARK: Running

    /// Runs the whole scenario and returns what happened.
    public mutating func run() -> SimulationReport {
        self.planScenario()
        let hardStop =
            self.faultsEnd + self.configuration.convergenceBound + self.configuration.node.forwardDeadline
            + .seconds(5)
        while let next = self.queue.popMin() {
            if next.at > hardStop { break }
            self.now = next.at
            self.report.events += 1
            self.handle(next.event)
            if self.report.finished { break }
        }
        if !self.report.finished {
            self.finish(converged: false)
        }
        self.report.traceFingerprint = self.traceHash
        self.report.trace = self.traceLines.lines
        self.report.virtualDuration = self.now - .zero
        return self.report
    }

    private mutating func planScenario() {
        let config = self.configuration
        for index in 0..<config.nodes {
            self.schedule(.start(index), at: .zero + config.startupSpacing * index)
        }
        let faultsStart = StorkInstant.zero + config.startupSpacing * config.nodes + config.warmup
        self.faultsEnd = faultsStart + (config.faults.isEmpty && !config.churn ? .zero : config.faultWindow)

        // Faults: episodes at random intervals through the window, each healed before the window ends.
        let kinds = config.faults.subtracting([.loss, .ackCrash]).sorted()
        if config.faults.contains(.loss) {
            self.schedule(.lossOn, at: faultsStart)
            self.schedule(.lossOff, at: self.faultsEnd)
        }
        if !kinds.isEmpty {
            var t = faultsStart + self.uniform(.milliseconds(500), .seconds(3))
            while t < self.faultsEnd {
                let kind = kinds[Int(self.random.next() % UInt64(kinds.count))]
                let remaining = self.faultsEnd - t
                let length = min(self.uniform(.milliseconds(500), .seconds(8)), remaining)
                switch kind {
                case .crash:
                    let victim = Int(self.random.next() % UInt64(config.nodes))
                    self.schedule(.crash(victim), at: t)
                    self.schedule(.restart(victim), at: t + length)
                case .pause:
                    let victim = Int(self.random.next() % UInt64(config.nodes))
                    self.schedule(.pause(victim), at: t)
                    self.schedule(.resume(victim), at: t + length)
                case .partition:
                    self.schedule(.partition(blocked: self.randomPartition()), at: t)
                    self.schedule(.heal, at: t + length)
                case .store:
                    self.schedule(.storeDown, at: t)
                    self.schedule(.storeUp, at: t + length)
                case .loss, .ackCrash:
                    break
                }
                t = t + self.uniform(.seconds(1), .seconds(6))
            }
        }

        // Workload: the initial source list, then allocations and deallocations through random nodes.
        if config.churn {
            var t = faultsStart
            while t < self.faultsEnd {
                t = t + self.uniform(.milliseconds(100), .seconds(1))
                if t >= self.faultsEnd { break }
                if self.random.nextUnitDouble() < 0.6 || self.nextResourceNumber == 0 {
                    self.schedule(.allocate(ResourceID("dyn-\(self.nextResourceNumber)")), at: t)
                    self.nextResourceNumber += 1
                } else {
                    let victim = Int(self.random.next() % UInt64(max(1, config.resources + self.nextResourceNumber)))
                    let id =
                        victim < config.resources
                        ? ResourceID("res-\(victim)") : ResourceID("dyn-\(victim - config.resources)")
                    self.schedule(.deallocate(id), at: t)
                }
            }
        }
        self.schedule(.check, at: self.faultsEnd + .milliseconds(100))
    }

    private mutating func randomPartition() -> Set<Link> {
        let n = self.configuration.nodes
        var sideA: Set<Int> = []
        if self.random.nextUnitDouble() < 0.5 {
            sideA.insert(Int(self.random.next() % UInt64(n)))  // isolate one node
        } else {
            for i in 0..<n where self.random.nextUnitDouble() < 0.5 { sideA.insert(i) }
            if sideA.isEmpty || sideA.count == n { sideA = [0] }
        }
        let oneWay = self.random.nextUnitDouble() < 0.3
        var links: Set<Link> = []
        for a in sideA {
            for b in 0..<n where !sideA.contains(b) {
                links.insert(Link(from: a, to: b))
                if !oneWay { links.insert(Link(from: b, to: a)) }
            }
        }
        return links
    }

    // MARK: Event handling

    private mutating func handle(_ event: Event) {
        switch event {
        case .start(let index):
            self.startProcess(index)
        case .deliver(let from, let to, let message):
            guard self.deferIfPaused(to, event) else { return }
            guard self.nodes[to].state == .up else { return }
            self.trace(1, to, message.from.uid)
            self.drive(to) { $0.receive(message, now: $1) }
            _ = from
        case .wake(let index, let generation):
            guard self.nodes[index].generation == generation else { return }
            guard self.deferIfPaused(index, event) else { return }
            guard self.nodes[index].state == .up else { return }
            self.nodes[index].scheduledWake = nil
            self.drive(index) { $0.tick(now: $1) }
        case .handlerDone(let index, let generation, let id, let ticket, let isHandle, let succeeded):
            guard self.nodes[index].generation == generation else { return }
            guard self.deferIfPaused(index, event) else { return }
            guard self.nodes[index].state == .up else { return }
            self.trace(2, index, ticket)
            self.log(
                "node-\(index) \(isHandle ? "handle" : "terminate") \(id) #\(ticket) \(succeeded ? "done" : "failed")"
            )
            if isHandle {
                if !succeeded { self.nodes[index].running[id] = nil }
                self.drive(index) { $0.handleCompleted(id, ticket: ticket, succeeded: succeeded, now: $1) }
            } else {
                self.nodes[index].running[id] = nil
                self.drive(index) { $0.terminateCompleted(id, ticket: ticket, succeeded: succeeded, now: $1) }
            }
        case .crash(let index):
            guard self.nodes[index].state != .down else { return }
            self.log("node-\(index) crashes (ran \(self.nodes[index].running.count))")
            self.report.crashes += 1
            // A change that no other live process holds dies with this one: every member that held it crashed.
            for (id, last) in self.lastOperation where !last.everyHolderCrashed {
                guard let version = last.version else { continue }
                let survives = self.nodes.contains { other in
                    other.index != index && other.state != .down
                        && (other.machine?.desired.entry(id).map { $0.version >= version } ?? false)
                }
                if !survives { self.lastOperation[id]?.everyHolderCrashed = true }
            }
            self.nodes[index].state = .down
            self.nodes[index].machine = nil
            self.nodes[index].running = [:]
            self.nodes[index].deferred = []
            self.nodes[index].scheduledWake = nil
            self.nodes[index].generation += 1
        case .restart(let index):
            guard self.nodes[index].state == .down else { return }
            self.log("node-\(index) restarts")
            self.startProcess(index)
        case .pause(let index):
            guard self.nodes[index].state == .up else { return }
            self.report.pauses += 1
            self.log("node-\(index) pauses")
            self.nodes[index].state = .paused
        case .resume(let index):
            guard self.nodes[index].state == .paused else { return }
            self.nodes[index].state = .up
            self.log("node-\(index) resumes (\(self.nodes[index].deferred.count) deferred events)")
            let deferred = self.nodes[index].deferred
            self.nodes[index].deferred = []
            self.nodes[index].scheduledWake = nil
            for event in deferred { self.schedule(event, at: self.now) }
            self.scheduleWake(index)
        case .partition(let links):
            self.report.partitions += 1
            self.log("partition: \(links.map { "\($0.from)->\($0.to)" }.sorted().joined(separator: " "))")
            self.blocked = links
        case .heal:
            self.log("partition heals")
            self.blocked = []
        case .lossOn:
            self.lossActive = true
        case .lossOff:
            self.lossActive = false
        case .allocate(let id):
            self.issue(id, isAllocate: true)
        case .deallocate(let id):
            self.issue(id, isAllocate: false)
        case .check:
            self.checkConvergence()
        case .storeRequest(let index, let generation, let holder, let request, let requestedAt):
            self.serveStore(index, generation: generation, holder: holder, request, requestedAt: requestedAt)
        case .storeAnswer(let index, let generation, let answer, let requestedAt):
            guard self.nodes[index].generation == generation else { return }
            guard self.deferIfPaused(index, event) else { return }
            guard self.nodes[index].state == .up else { return }
            switch answer {
            case .acquired(let grants):
                self.drive(index) {
                    $0.leasesAcquired(granted: grants.granted, refused: grants.refused, requestedAt: requestedAt, now: $1)
                }
            case .renewed(let renewals):
                self.drive(index) {
                    $0.leasesRenewed(renewed: renewals.renewed, lost: renewals.lost, requestedAt: requestedAt, now: $1)
                }
            case .acquireFailed(let ids):
                self.drive(index) { $0.leaseAcquireFailed(ids, now: $1) }
            case .renewFailed:
                self.drive(index) { $0.leaseRenewFailed(now: $1) }
            case .released:
                break
            }
        case .storeDown:
            self.report.storeOutages += 1
            self.log("the ownership store goes down")
            self.storeAvailable = false
        case .storeUp:
            self.log("the ownership store is back")
            self.storeAvailable = true
        }
    }

    // MARK: The ownership store (lease mode)

    private var storeNow: StorkInstant { self.now + self.configuration.storeClockOffset }

    private func holder(_ index: Int) -> String { "\(self.nodes[index].name)/\(self.nodes[index].identity.uid)" }

    /// Sends a request from a node to the store: it arrives after the store latency, or, with the store down, the
    /// node's wait times out.
    private mutating func requestStore(_ request: StoreRequest, from index: Int) {
        let generation = self.nodes[index].generation
        guard self.storeAvailable else {
            self.answerStoreFailure(request, to: index, generation: generation, requestedAt: self.now)
            return
        }
        self.schedule(
            .storeRequest(index, generation: generation, holder: self.holder(index), request, requestedAt: self.now),
            at: self.now + self.uniform(self.configuration.minimumStoreLatency, self.configuration.maximumStoreLatency)
        )
    }

    private mutating func answerStoreFailure(_ request: StoreRequest, to index: Int, generation: Int, requestedAt: StorkInstant) {
        let answer: StoreAnswer
        switch request {
        case .acquire(let ids): answer = .acquireFailed(ids)
        case .renew: answer = .renewFailed
        case .release: answer = .released
        }
        self.schedule(
            .storeAnswer(index, generation: generation, answer, requestedAt: requestedAt),
            at: requestedAt + self.configuration.storeTimeout
        )
    }

    private mutating func serveStore(
        _ index: Int,
        generation: Int,
        holder: String,
        _ request: StoreRequest,
        requestedAt: StorkInstant
    ) {
        guard let settings = self.leaseSettings else { return }
        guard self.storeAvailable else {
            self.answerStoreFailure(request, to: index, generation: generation, requestedAt: requestedAt)
            return
        }
        // The store applies requests even from a process that has crashed since: they were already sent.
        let answer: StoreAnswer
        switch request {
        case .acquire(let ids):
            let grants = self.leaseTable.acquire(ids, holder: holder, duration: settings.duration, now: self.storeNow)
            for key in grants.granted { self.checkGrant(key, to: index, generation: generation) }
            self.report.leaseGrants += grants.granted.count
            answer = .acquired(grants)
        case .renew(let keys):
            answer = .renewed(self.leaseTable.renew(keys, holder: holder, duration: settings.duration, now: self.storeNow))
        case .release(let keys):
            self.leaseTable.release(keys, holder: holder, now: self.storeNow)
            answer = .released
        }
        self.report.storeOperations += 1
        self.schedule(
            .storeAnswer(index, generation: generation, answer, requestedAt: requestedAt),
            at: self.now + self.uniform(self.configuration.minimumStoreLatency, self.configuration.maximumStoreLatency)
        )
    }

    /// Never two valid leases: when the store grants `key`, no other node may still believe it holds an unexpired
    /// lease on that resource (paused and partitioned nodes included: their belief is measured on their clock).
    private mutating func checkGrant(_ key: LeaseKey, to index: Int, generation: Int) {
        for other in self.nodes where !(other.index == index && other.generation == generation) {
            guard let machine = other.machine,
                let held = machine.orchestrator.heldLeases.first(where: { $0.key.id == key.id })
            else { continue }
            if held.fenceAt > self.now {
                self.violation(
                    "\(key.id): the store granted token \(key.token) to node-\(index) while \(other.name) [\(other.state)] "
                        + "still holds token \(held.key.token) until \(held.fenceAt)"
                )
            }
        }
    }

    /// A handle in lease mode starts only under the lease the store holds valid for this node, with a token larger
    /// than any earlier handle of the resource anywhere.
    private mutating func checkLeaseAtHandle(_ id: ResourceID, on index: Int) {
        guard self.leaseSettings != nil else { return }
        guard let token = self.nodes[index].machine?.orchestrator.fencingToken(of: id) else {
            self.violation("\(id) handled on node-\(index) without a lease")
            return
        }
        if let valid = self.leaseTable.validLease(of: id, now: self.storeNow) {
            if valid.holder != self.holder(index) || valid.token != token {
                self.violation("\(id) handled on node-\(index) with token \(token) but the store holds \(valid.token) for \(valid.holder)")
            }
        } else {
            self.violation("\(id) handled on node-\(index) with token \(token) after the lease expired in the store")
        }
        if let last = self.lastHandledToken[id], token < last {
            self.violation("\(id) handled on node-\(index) with token \(token) after token \(last) was used")
        }
        self.lastHandledToken[id] = max(token, self.lastHandledToken[id] ?? 0)
    }

    /// Returns false (and keeps the event) when the node is paused.
    private mutating func deferIfPaused(_ index: Int, _ event: Event) -> Bool {
        guard self.nodes[index].state == .paused else { return true }
        self.nodes[index].deferred.append(event)
        return false
    }

    private mutating func startProcess(_ index: Int) {
        let config = self.configuration
        let node = self.nodes[index]
        node.generation += 1
        node.identity = NodeID(
            name: node.name,
            address: node.address,
            uid: (UInt64(node.generation) << 20) | (self.random.next() & 0xF_FFFF)
        )
        // Node 0 bootstraps the cluster on its first start; everybody else (and node 0 after a restart) joins
        // through the other nodes.
        let seeds: [String] =
            index == 0 && node.generation == 1
            ? [] : self.nodes.filter { $0.index != index }.map(\.address)
        node.machine = ClusterNodeStateMachine(
            myself: node.identity,
            seeds: seeds,
            settings: config.node,
            random: self.random.split(),
            epochMillis: 1_700_000_000_000
        )
        node.state = .up
        node.running = [:]
        node.deferred = []
        node.scheduledWake = nil
        node.handoffTimeouts = [:]
        self.drive(index) { $0.start(now: $1) }
        if index == 0 && node.generation == 1 {
            let resources = (0..<config.resources).map { self.resource(ResourceID("res-\($0)"), number: $0) }
            self.drive(index) { $0.sourceReplaced(resources, now: $1) }
        }
    }

    /// Resource number `number`: pinned to a node in turn every `pinnedEvery` resources.
    private func resource(_ id: ResourceID, number: Int) -> Resource {
        let every = self.configuration.pinnedEvery
        guard every > 0, number % every == 0 else { return Resource(id: id) }
        let node = self.nodes[(number / every) % self.nodes.count].name
        return Resource(id: id, attributes: [Resource.pinAttribute: .string(node)])
    }

    private mutating func issue(_ id: ResourceID, isAllocate: Bool) {
        let candidates = self.nodes.filter { $0.state == .up }.map(\.index)
        guard !candidates.isEmpty else { return }
        let index = candidates[Int(self.random.next() % UInt64(candidates.count))]
        self.nextRequestID += 1
        let requestID = self.nextRequestID
        self.pending[requestID] = PendingRequest(
            node: index,
            generation: self.nodes[index].generation,
            id: id,
            isAllocate: isAllocate,
            issuedAt: self.now
        )
        self.lastOperation[id] = LastOperation(
            isAllocate: isAllocate,
            requestID: requestID,
            node: index,
            generation: self.nodes[index].generation
        )
        self.report.requestsIssued += 1
        if isAllocate {
            let resource = self.resource(id, number: Int(id.rawValue.split(separator: "-").last ?? "") ?? 0)
            self.drive(index) { $0.allocate(resource, requestID: requestID, now: $1) }
        } else {
            self.drive(index) { $0.deallocate(id, requestID: requestID, now: $1) }
        }
        self.lastOperation[id]?.version = self.nodes[index].machine?.desired.entry(id)?.version
    }

    // MARK: Driving one node

    private mutating func drive(_ index: Int, _ body: (inout ClusterNodeStateMachine, StorkInstant) -> [NodeAction]) {
        // Move the machine out so that it is uniquely referenced while it mutates (no copy-on-write copies).
        guard var machine = self.nodes[index].machine.take() else { return }
        let actions = body(&machine, self.now)
        self.nodes[index].machine = machine
        for action in actions { self.perform(action, at: index) }
        self.scheduleWake(index)
    }

    private mutating func scheduleWake(_ index: Int) {
        guard self.nodes[index].state == .up, let deadline = self.nodes[index].machine?.nextDeadline else { return }
        if let scheduled = self.nodes[index].scheduledWake, scheduled <= deadline, scheduled >= self.now { return }
        let at = max(deadline, self.now)
        self.nodes[index].scheduledWake = at
        self.schedule(.wake(index, generation: self.nodes[index].generation), at: at)
    }

    private mutating func perform(_ action: NodeAction, at index: Int) {
        switch action {
        case .send(let message, let address):
            self.send(message, from: index, to: address)
        case .handle(let resource, _, let ticket):
            self.report.handles += 1
            self.trace(3, index, ticket)
            self.log("node-\(index) handle \(resource.id) #\(ticket)")
            self.checkOverlap(resource.id, startingOn: index)
            self.checkLeaseAtHandle(resource.id, on: index)
            self.nodes[index].running[resource.id] = Set(
                self.nodes[index].machine?.placement.members.map(\.node) ?? []
            )
            let succeeded = self.random.nextUnitDouble() >= self.configuration.handleFailureRate
            self.schedule(
                .handlerDone(
                    index,
                    generation: self.nodes[index].generation,
                    resource.id,
                    ticket: ticket,
                    isHandle: true,
                    succeeded: succeeded
                ),
                at: self.now + self.handlerLatency()
            )
        case .terminate(let resource, let reason, let ticket):
            self.report.terminations += 1
            self.trace(4, index, ticket)
            self.log("node-\(index) terminate \(resource.id) #\(ticket) (\(reason))")
            let succeeded = self.random.nextUnitDouble() >= self.configuration.terminateFailureRate
            self.schedule(
                .handlerDone(
                    index,
                    generation: self.nodes[index].generation,
                    resource.id,
                    ticket: ticket,
                    isHandle: false,
                    succeeded: succeeded
                ),
                at: self.now + self.handlerLatency()
            )
        case .complete(let requestID, let outcome):
            self.complete(requestID, outcome, at: index)
        case .event(let event):
            self.observe(event, at: index)
        case .acquireLeases(let ids):
            self.log("node-\(index) acquires \(ids.count) leases")
            self.requestStore(.acquire(ids), from: index)
        case .renewLeases(let keys):
            self.requestStore(.renew(keys), from: index)
        case .releaseLeases(let keys):
            self.log("node-\(index) releases \(keys.count) leases")
            self.requestStore(.release(keys), from: index)
        }
    }

    private mutating func observe(_ event: NodeEvent, at index: Int) {
        switch event {
        case .resource(let resourceEvent):
            if case .handoffTimedOut = resourceEvent.kind {
                self.report.handoffTimeouts += 1
                self.nodes[index].handoffTimeouts[resourceEvent.id] = self.now
            }
        case .member(let change):
            self.log(
                "node-\(index) sees \(change.node.name)#\(change.node.uid) \(change.previous.map { "\($0)" } ?? "-") -> \(change.current.map { "\($0)" } ?? "-")"
            )
            if change.current == .dead, let victim = self.addressIndex[change.node.address],
                self.nodes[victim].identity == change.node, self.nodes[victim].state == .up
            {
                self.report.falseDeaths += 1
            }
        case .refuted:
            self.report.refutations += 1
        case .viewApplied(let members, _):
            self.log("node-\(index) applies view \(members.map(\.name))")
        case .joined(let standalone):
            self.log("node-\(index) joined\(standalone ? " (standalone)" : "")")
        case .left:
            self.log("node-\(index) left")
        }
    }

    private mutating func complete(_ requestID: UInt64, _ outcome: RequestOutcome, at index: Int) {
        guard let request = self.pending.removeValue(forKey: requestID) else {
            self.violation("request \(requestID) completed twice (second: \(outcome)) on node-\(index)")
            return
        }
        self.report.outcomes[Self.outcomeName(outcome), default: 0] += 1
        self.log(
            "node-\(index) request \(requestID) (\(request.isAllocate ? "allocate" : "deallocate") \(request.id)): \(outcome)"
        )
        let succeeded: Bool
        switch outcome {
        case .handled, .handleFailed: succeeded = request.isAllocate
        case .terminated: succeeded = !request.isAllocate
        case .timedOut, .notReplicated, .shutdown: succeeded = false
        }
        if self.configuration.faults.isEmpty, !succeeded {
            self.violation("request \(requestID) for \(request.id) failed without faults: \(outcome)")
        }
        if var last = self.lastOperation[request.id], last.requestID == requestID {
            last.succeeded = succeeded
            self.lastOperation[request.id] = last
        }
        // The fault the replication of acknowledged changes exists for: the node that answered dies at once (only
        // when no other node is down, so that it is the one crash the guarantee promises to survive).
        if succeeded, self.configuration.faults.contains(.ackCrash), self.now < self.faultsEnd,
            self.random.nextUnitDouble() < self.configuration.ackCrashRate,
            !self.nodes.contains(where: { $0.state == .down })
        {
            self.log("node-\(index) will crash right after answering request \(requestID)")
            self.schedule(.crash(index), at: self.now)
            let restartAt = self.now + self.uniform(.milliseconds(500), .seconds(8))
            self.schedule(.restart(index), at: max(self.now, min(restartAt, self.faultsEnd)))
        }
    }

    static func outcomeName(_ outcome: RequestOutcome) -> String {
        switch outcome {
        case .handled: return "handled"
        case .handleFailed: return "handle-failed"
        case .terminated: return "terminated"
        case .timedOut: return "timed-out"
        case .notReplicated: return "not-replicated"
        case .shutdown: return "shutdown"
        }
    }

    // MARK: Network

    private mutating func send(_ message: ClusterMessage, from: Int, to address: String) {
        self.report.messagesSent += 1
        guard let to = self.addressIndex[address] else {
            self.report.messagesDropped += 1
            return
        }
        if self.blocked.contains(Link(from: from, to: to)) {
            self.report.messagesDropped += 1
            return
        }
        if self.lossActive, self.random.nextUnitDouble() < self.configuration.lossRate {
            self.report.messagesDropped += 1
            return
        }
        self.schedule(.deliver(from: from, to: to, message), at: self.now + self.networkDelay())
        if self.lossActive, self.random.nextUnitDouble() < self.configuration.duplicateRate {
            self.schedule(.deliver(from: from, to: to, message), at: self.now + self.networkDelay())
        }
    }

    private mutating func networkDelay() -> Duration {
        self.uniform(self.configuration.minimumDelay, self.configuration.maximumDelay)
    }

    private mutating func handlerLatency() -> Duration {
        self.uniform(self.configuration.minimumHandlerLatency, self.configuration.maximumHandlerLatency)
    }

    private mutating func uniform(_ low: Duration, _ high: Duration) -> Duration {
        let lo = low.nanosecondsClamped
        let hi = high.nanosecondsClamped
        guard hi > lo else { return low }
        return .nanoseconds(lo + Int64(self.random.next() % UInt64(hi - lo)))
    }

    private mutating func schedule(_ event: Event, at: StorkInstant) {
        self.sequence += 1
        self.queue.insert(Scheduled(at: at, sequence: self.sequence, event: event))
    }

    private mutating func trace(_ kind: UInt64, _ node: Int, _ value: UInt64) {
        var h = self.traceHash
        for part in [kind, UInt64(node), value, UInt64(bitPattern: self.now.nanoseconds)] {
            h = StableHash.mix64(h ^ part)
        }
        self.traceHash = h
    }

    private func log(_ line: @autoclosure () -> String) {
        guard self.configuration.recordTrace else { return }
        self.traceLines.lines.append("\(String(format: "%9.3f", self.now.seconds)) \(line())")
    }

    // MARK: Invariants

    private mutating func violation(_ text: String) {
        self.report.violations.append("\(self.now) \(text)")
    }

    /// Two nodes may run one resource only if one of them did not count the other as a member when it started it:
    /// a live member was declared dead (a pause, a partition, a false suspicion), or a handoff deadline expired
    /// under network faults. Without faults there is no excuse.
    private mutating func checkOverlap(_ id: ResourceID, startingOn index: Int) {
        let starter = self.nodes[index]
        if let pin = starter.machine?.orchestrator.desiredResource(id)?.pinnedNode, pin != starter.name {
            self.violation("\(id) is pinned to \(pin) but was handled on \(starter.name)")
        }
        let starterView = Set(starter.machine?.placement.members.map(\.node) ?? [])
        for other in self.nodes where other.index != index && other.state != .down {
            guard let otherView = other.running[id] else { continue }
            if self.configuration.faults.isEmpty {
                self.violation("\(id) handled on \(starter.name) while \(other.name) runs it (no faults injected)")
            } else if !starterView.contains(other.identity) || !otherView.contains(starter.identity) {
                self.report.excusedOverlaps += 1
            } else if let timedOut = starter.handoffTimeouts[id], self.now - timedOut < .seconds(1) {
                self.report.excusedOverlaps += 1
            } else {
                self.violation(
                    "\(id) handled on \(starter.name) while \(other.name) runs it, and each counted the other as a member"
                )
            }
        }
    }

    private mutating func checkConvergence() {
        if self.isConverged() {
            if let first = self.convergedAt {
                // Stable for a second, and every request answered: done.
                if self.now - first >= .seconds(1), self.pendingRequestsSettled() {
                    self.finish(converged: true)
                    return
                }
            } else {
                self.convergedAt = self.now
            }
        } else {
            self.convergedAt = nil
        }
        if self.now - self.faultsEnd > self.configuration.convergenceBound {
            self.finish(converged: false)
            return
        }
        self.schedule(.check, at: self.now + .milliseconds(100))
    }

    private func pendingRequestsSettled() -> Bool {
        // Requests made on a process that has since crashed are lost with it; all others must be answered.
        !self.pending.values.contains { self.nodes[$0.node].generation == $0.generation }
    }

    private func isConverged() -> Bool {
        let live = self.nodes.filter { $0.state != .down }
        guard live.count == self.nodes.count, live.allSatisfy({ $0.state == .up }) else { return false }
        let expected = live.map(\.identity).sorted()
        var digest: UInt64?
        for node in live {
            guard let machine = node.machine, machine.orchestrator.isReady else { return false }
            guard machine.membership.placementMembers == expected else { return false }
            guard machine.placement.members.map(\.node) == expected else { return false }
            if let digest, digest != machine.desired.digest { return false }
            digest = machine.desired.digest
        }
        guard let reference = live.first?.machine else { return false }
        var runners: [ResourceID: Int] = [:]
        for node in live {
            for id in node.running.keys { runners[id, default: 0] += 1 }
        }
        for resource in reference.desired.resources {
            let owner = reference.placement.owner(of: resource.id, pinnedTo: resource.pinnedNode)
            guard owner != nil || resource.pinnedNode == nil else {
                // Pinned to a node that is not a member: nobody may run it.
                guard runners[resource.id] == nil else { return false }
                continue
            }
            guard runners[resource.id] == 1 else { return false }
            guard let ownerIndex = live.first(where: { $0.identity == owner })?.index,
                self.nodes[ownerIndex].machine?.orchestrator.isRunning(resource.id) == true
            else { return false }
            runners[resource.id] = nil
        }
        return runners.isEmpty
    }

    private mutating func finish(converged: Bool) {
        guard !self.report.finished else { return }
        self.report.finished = true
        self.report.converged = converged
        if converged, let at = self.convergedAt {
            self.report.convergenceTime = at - self.faultsEnd
        }
        guard converged else {
            self.violation("did not converge within \(self.configuration.convergenceBound) after the faults healed")
            self.describeDivergence()
            return
        }
        // Every request whose success was reported must be reflected in the final desired set, unless every member
        // that held the change crashed (the guarantee's one exception; counted and printed, and zero in practice
        // with `replicas` of 2 or more).
        if let reference = self.nodes.first?.machine {
            for (id, last) in self.lastOperation.sorted(by: { $0.key < $1.key }) where last.succeeded == true {
                let present = reference.desired.resource(id) != nil
                if present != last.isAllocate, last.everyHolderCrashed {
                    self.report.lostWithEveryHolder += 1
                    self.log("lost \(id): request \(last.requestID) on node-\(last.node), every holder crashed")
                } else if present != last.isAllocate {
                    self.violation(
                        "\(id): the last successful request was \(last.isAllocate ? "allocate" : "deallocate") but the "
                            + "converged desired set \(present ? "has" : "lacks") it, though a member that held the "
                            + "change survived"
                    )
                }
            }
            self.report.finalResources = reference.desired.liveCount
        }
    }

    private mutating func describeDivergence() {
        for node in self.nodes {
            guard let machine = node.machine else {
                self.report.notes.append("\(node.name): down")
                continue
            }
            self.report.notes.append(
                "\(node.name) [\(node.state)] view=\(machine.membership.placementMembers.map(\.name)) "
                    + "applied=\(machine.placement.members.map(\.node.name)) ready=\(machine.orchestrator.isReady) "
                    + "desired=\(machine.desired.liveCount) running=\(node.running.count)"
            )
        }
    }
}

/// The human-readable trace of one run; a reference so that logging does not mutate the simulation.
final class TraceLines {
    var lines: [String] = []
}

// MARK: - Report

/// What one simulated run did and found.
public struct SimulationReport: Sendable {
    public var configuration: SimulationConfiguration
    public var events = 0
    public var virtualDuration: Duration = .zero
    public var finished = false
    public var converged = false
    /// Virtual time from the end of the fault window until the cluster converged.
    public var convergenceTime: Duration?
    public var violations: [String] = []
    public var notes: [String] = []
    public var crashes = 0
    public var pauses = 0
    public var partitions = 0
    public var handles = 0
    public var terminations = 0
    public var messagesSent = 0
    public var messagesDropped = 0
    public var refutations = 0
    /// A live, running member was declared dead by someone (expected only under faults).
    public var falseDeaths = 0
    /// Overlaps explained by a member declared dead or a handoff deadline under network faults.
    public var excusedOverlaps = 0
    public var handoffTimeouts = 0
    /// Acknowledged requests whose change was lost because every member that held it crashed. (Lost while a holder
    /// survived is a violation.)
    public var lostWithEveryHolder = 0
    /// Lease mode: leases granted, store operations served, store outages.
    public var leaseGrants = 0
    public var storeOperations = 0
    public var storeOutages = 0
    public var requestsIssued = 0
    public var outcomes: [String: Int] = [:]
    public var finalResources = 0
    public var traceFingerprint: UInt64 = 0
    /// Human-readable events, when `recordTrace` is on.
    public var trace: [String] = []

    public init(configuration: SimulationConfiguration) {
        self.configuration = configuration
    }

    public var passed: Bool { self.violations.isEmpty }
}
