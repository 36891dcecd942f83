import StorkCore
import StorkPlacement
import Testing

@testable import StorkResources

/// A few node state machines wired by hand: messages wait in a queue, links can be cut, time is virtual.
struct HandWiredCluster {
    var nodes: [String: ClusterNodeStateMachine] = [:]
    var identities: [String: NodeID] = [:]
    var queue: [(from: String, to: String, message: ClusterMessage)] = []
    var blocked: Set<String> = []  // "from>to"
    /// Drops the messages for which it returns true (sender, receiver, message), on top of `blocked`.
    var drop: ((String, String, ClusterMessage) -> Bool)?
    var now = StorkInstant.zero
    var completions: [UInt64: RequestOutcome] = [:]
    var refusalsSeen = 0
    var running: [String: Set<ResourceID>] = [:]
    /// The settings of the nodes started from now on.
    var settings = NodeSettings()

    mutating func start(_ name: String, seeds: [String]) {
        let identity = NodeID(name: name, address: name, uid: UInt64(self.nodes.count + 1))
        self.identities[name] = identity
        var machine = ClusterNodeStateMachine(
            myself: identity,
            seeds: seeds,
            settings: self.settings,
            random: SeededRandom(seed: identity.uid)
        )
        let actions = machine.start(now: self.now)
        self.nodes[name] = machine
        self.perform(actions, at: name)
    }

    mutating func perform(_ actions: [NodeAction], at name: String) {
        for action in actions {
            switch action {
            case .send(let message, let to):
                if case .forward(.reply(_, let replies)) = message {
                    self.refusalsSeen += replies.filter { if case .refused = $0.answer { true } else { false } }.count
                }
                self.queue.append((name, to, message))
            case .handle(let resource, _, let ticket):
                self.running[name, default: []].insert(resource.id)
                let now = self.now
                self.mutate(name) { $0.handleCompleted(resource.id, ticket: ticket, succeeded: true, now: now) }
            case .terminate(let resource, _, let ticket):
                self.running[name, default: []].remove(resource.id)
                let now = self.now
                self.mutate(name) { $0.terminateCompleted(resource.id, ticket: ticket, succeeded: true, now: now) }
            case .complete(let requestID, let outcome):
                self.completions[requestID] = outcome
            case .acquireLeases, .renewLeases, .releaseLeases:
                break  // gossip mode: never asked
            case .event:
                break
            }
        }
    }

    /// Applies `body` to a node's machine and performs the resulting actions.
    mutating func mutate(_ name: String, _ body: (inout ClusterNodeStateMachine) -> [NodeAction]) {
        var machine = self.nodes[name]!
        let actions = body(&machine)
        self.nodes[name] = machine
        self.perform(actions, at: name)
    }

    /// Delivers what can be delivered, then advances time by `step` and runs due timers; repeats for `duration`.
    mutating func run(for duration: Duration, step: Duration = .milliseconds(10)) {
        let end = self.now + duration
        while self.now < end {
            let pending = self.queue
            self.queue = []
            for (from, to, message) in pending {
                if self.blocked.contains("\(from)>\(to)") { continue }
                if let drop = self.drop, drop(from, to, message) { continue }
                guard self.nodes[to] != nil else { continue }
                let now = self.now
                self.mutate(to) { $0.receive(message, now: now) }
            }
            self.now += step
            for name in self.nodes.keys.sorted() {
                let now = self.now
                if let deadline = self.nodes[name]!.nextDeadline, deadline <= now {
                    self.mutate(name) { $0.tick(now: now) }
                }
            }
        }
    }
}

@Suite("Forwarding: allocate and deallocate reach the owner and report its handler's outcome")
struct ForwardingTests {
    @Test("a forward refused while views differ is retried, rerouted, and answered after the owner handled it")
    func refusedForwardIsRetried() {
        var cluster = HandWiredCluster()
        cluster.start("a", seeds: [])
        cluster.start("b", seeds: ["a"])
        cluster.run(for: .seconds(2))
        #expect(cluster.nodes["a"]!.placement.members.count == 2)

        // c joins through a. a applies the new view first; b hears of c a little later, through gossip.
        cluster.start("c", seeds: ["a"])
        cluster.run(for: .milliseconds(70))
        #expect(cluster.nodes["a"]!.placement.members.count == 3)
        #expect(cluster.nodes["b"]!.placement.members.count == 2)
        let viewABC = Placement(nodes: ["a", "b", "c"].map { cluster.identities[$0]! })
        // An id that b owns once c is in the view.
        let id = (0..<1000).map { ResourceID("acct-\($0)") }.first { viewABC.owner(of: $0) == cluster.identities["b"] }!

        // Allocate through a, whose view includes c: b (view without c) refuses; a retries with backoff.
        let now = cluster.now
        cluster.mutate("a") { $0.allocate(Resource(id: id), requestID: 1, now: now) }
        cluster.run(for: .milliseconds(30))
        #expect(cluster.completions[1] == nil, "not answered while the views differ")
        #expect(cluster.refusalsSeen > 0, "b refused: its view differs from a's")

        // b learns of c, the views agree, the retry is accepted.
        cluster.run(for: .seconds(3))
        #expect(cluster.completions[1] == .handled(by: cluster.identities["b"]!))
        #expect(cluster.running["b"]?.contains(id) == true)
        #expect(cluster.running["a"]?.contains(id) != true && cluster.running["c"]?.contains(id) != true)
    }

    @Test("deallocate through a non-owner answers after the owner terminated the resource")
    func deallocateThroughNonOwner() {
        var cluster = HandWiredCluster()
        cluster.start("a", seeds: [])
        cluster.start("b", seeds: ["a"])
        cluster.run(for: .seconds(2))
        let view = cluster.nodes["a"]!.placement
        let id = (0..<1000).map { ResourceID("r\($0)") }.first { view.owner(of: $0) == cluster.identities["b"] }!
        var now = cluster.now
        cluster.mutate("a") { $0.allocate(Resource(id: id), requestID: 1, now: now) }
        cluster.run(for: .seconds(1))
        #expect(cluster.completions[1] == .handled(by: cluster.identities["b"]!))
        now = cluster.now
        cluster.mutate("a") { $0.deallocate(id, requestID: 2, now: now) }
        cluster.run(for: .seconds(1))
        #expect(cluster.completions[2] == .terminated(by: cluster.identities["b"]!))
        #expect(cluster.running["b"]?.contains(id) == false)
        // Every node's desired set lost it.
        for name in ["a", "b"] { #expect(cluster.nodes[name]!.desired.resource(id) == nil) }
    }

    @Test("a forward that cannot reach any agreeing owner times out with an answer, never silence")
    func unreachableOwnerTimesOut() {
        var cluster = HandWiredCluster()
        cluster.start("a", seeds: [])
        cluster.start("b", seeds: ["a"])
        cluster.run(for: .seconds(2))
        let view = cluster.nodes["a"]!.placement
        let id = (0..<1000).map { ResourceID("r\($0)") }.first { view.owner(of: $0) == cluster.identities["b"] }!
        // a can send to b but never hears back: b's answers are lost, and b does not look dead to a for long
        // enough... until failure detection removes it; either way a must answer the caller.
        cluster.blocked = ["b>a"]
        let now = cluster.now
        cluster.mutate("a") { $0.allocate(Resource(id: id), requestID: 7, now: now) }
        cluster.run(for: .seconds(35))
        #expect(cluster.completions[7] != nil, "the caller always gets an answer")
    }

    @Test("a pinned resource runs on its node only: forwarded there, never moved while it is gone, deallocated anyway")
    func pinnedResource() {
        var cluster = HandWiredCluster()
        cluster.start("a", seeds: [])
        cluster.start("b", seeds: ["a"])
        cluster.start("c", seeds: ["a"])
        cluster.run(for: .seconds(3))
        let view = cluster.nodes["a"]!.placement
        #expect(view.members.count == 3)
        // Placement would give it to a; the pin gives it to c.
        let id = (0..<1000).map { ResourceID("r\($0)") }.first { view.owner(of: $0) == cluster.identities["a"] }!
        let pinned = Resource(id: id, attributes: [Resource.pinAttribute: "c"])
        var now = cluster.now
        cluster.mutate("b") { $0.allocate(pinned, requestID: 1, now: now) }
        cluster.run(for: .seconds(1))
        #expect(cluster.completions[1] == .handled(by: cluster.identities["c"]!))
        #expect(cluster.running["c"]?.contains(id) == true)
        #expect(cluster.running["a"]?.contains(id) != true && cluster.running["b"]?.contains(id) != true)

        // c is cut off until the others declare it dead: nobody takes the resource over.
        cluster.blocked = ["c>a", "c>b", "a>c", "b>c"]
        cluster.run(for: .seconds(30))
        #expect(cluster.nodes["a"]!.placement.members.count == 2, "a no longer counts c")
        #expect(cluster.running["a"]?.contains(id) != true && cluster.running["b"]?.contains(id) != true)
        #expect(cluster.nodes["a"]!.desired.resource(id)?.pinnedNode == "c", "still desired, pinned")

        // Deallocating while its node is gone answers at once: nothing runs it in this view.
        now = cluster.now
        cluster.mutate("a") { $0.deallocate(id, requestID: 2, now: now) }
        cluster.run(for: .seconds(1))
        #expect(cluster.completions[2] == .terminated(by: cluster.identities["a"]!))
        for name in ["a", "b"] { #expect(cluster.nodes[name]!.desired.resource(id) == nil) }
    }

    @Test("a pin must name a node")
    func pinValidation() throws {
        try Resource(id: "x", attributes: [Resource.pinAttribute: "n1"]).validatePin()
        try Resource(id: "x").validatePin()
        #expect(throws: StorkError.self) { try Resource(id: "x", attributes: [Resource.pinAttribute: 3]).validatePin() }
        #expect(throws: StorkError.self) { try Resource(id: "x", attributes: [Resource.pinAttribute: ""]).validatePin() }
    }
}
