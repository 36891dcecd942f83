import Logging
import NIOCore
import StorkCore
import StorkBus
import StorkNATS
import StorkResources
import StorkTestKit
import Synchronization
import Testing

@testable import StorkBusCluster

// MARK: - An in-memory network of buses

/// Waits (bounded, on the condition, not a speed) until `condition` holds; records an issue naming `what` and throws
/// when it never does.
func until(_ what: String, timeout: Duration = .seconds(30), _ condition: () -> Bool) async throws {
    guard await eventually(timeout, { condition() }) else {
        Issue.record("never happened: \(what)")
        throw StorkError(.timeout, what)
    }
}

func quietLogger(_ label: String) -> Logger {
    var logger = Logger(label: label)
    logger.logLevel = .critical
    return logger
}

/// Nodes whose bus frames travel through in-memory streams (in order per receiver, handed to each node's relay
/// receiver by ``pump()``); interest frames can be lost on purpose.
final class BusTestNetwork: Sendable {
    struct State {
        var inboxes: [NodeID: AsyncStream<RelayMessage>.Continuation] = [:]
        var endpoints: [Endpoint] = []
        var members: [NodeID] = []
        /// Interest frames to drop (the next n), to play lost deltas.
        var dropInterestFrames = 0
        /// What every transport queue reports holding (0: idle, so links send directly).
        var backlog = 0
        var sent = 0
    }

    let state = Mutex(State())

    func endpoint(_ name: String) -> Endpoint {
        let node = NodeID(name: name, address: "\(name):1", uid: 1)
        let (stream, continuation) = AsyncStream<RelayMessage>.makeStream()
        let endpoint = Endpoint(identity: node, network: self, stream: stream)
        self.state.withLock { state in
            state.inboxes[node] = continuation
            state.members.append(node)
            state.endpoints.append(endpoint)
        }
        return endpoint
    }

    /// Hands every node's frames to its receiver, in order, until the network closes.
    func pump() async {
        let endpoints = self.state.withLock { $0.endpoints }
        await withTaskGroup(of: Void.self) { group in
            for endpoint in endpoints {
                group.addTask {
                    for await message in endpoint.stream { _ = endpoint.receiver.withLock { $0 }?(message, {}) }
                }
            }
        }
    }

    func deliver(_ payload: [UInt8], from: NodeID, to: NodeID) {
        self.state.withLock { state in
            state.sent += 1
            if state.dropInterestFrames > 0, case .interest? = try? BusFrameCodec.decode(payload) {
                state.dropInterestFrames -= 1
                return
            }
            state.inboxes[to]?.yield(RelayMessage(from: from, payload: payload))
        }
    }

    func close() {
        let endpoints = self.state.withLock { state in
            for inbox in state.inboxes.values { inbox.finish() }
            return state.endpoints
        }
        // Like a node that stops: its event stream ends, and its bus with it.
        for endpoint in endpoints { endpoint.eventsContinuation.finish() }
    }

    final class Endpoint: BusNetwork {
        let identity: NodeID
        let network: BusTestNetwork
        let stream: AsyncStream<RelayMessage>
        let receiver = Mutex<RelayReceiver?>(nil)
        let eventStream: AsyncStream<NodeEvent>
        let eventsContinuation: AsyncStream<NodeEvent>.Continuation

        init(identity: NodeID, network: BusTestNetwork, stream: AsyncStream<RelayMessage>) {
            self.identity = identity
            self.network = network
            self.stream = stream
            (self.eventStream, self.eventsContinuation) = AsyncStream<NodeEvent>.makeStream()
        }

        func setRelayReceiver(_ receiver: RelayReceiver?) { self.receiver.withLock { $0 = receiver } }
        func sendRelay(_ payload: [UInt8], to node: NodeID) {
            self.network.deliver(payload, from: self.identity, to: node)
        }
        func relayBacklog(to node: NodeID) -> Int { self.network.state.withLock { $0.backlog } }
        func isReachable(_ node: NodeID) -> Bool { true }
        func waitForRelayBacklog(to node: NodeID) async {}
        func liveMembers() -> [NodeID] { self.network.state.withLock { $0.members } }
        func events() -> AsyncStream<NodeEvent> { self.eventStream }
    }
}

final class Inbox: BusReceiver {
    let messages = Mutex<[BusMessage]>([])
    func receive(_ message: BusMessage, subscription: BusSubscription) {
        self.messages.withLock { $0.append(message) }
    }
    var count: Int { self.messages.withLock { $0.count } }
    var payloads: [String] { self.messages.withLock { $0.map { String(buffer: $0.payload) } } }
}

/// Answers every message with a reply carrying `name`.
final class Responder: BusReceiver {
    let router: BusRouter
    let name: String
    init(router: BusRouter, name: String) {
        self.router = router
        self.name = name
    }
    func receive(_ message: BusMessage, subscription: BusSubscription) {
        guard let reply = message.replyTo else { return }
        self.router.publish(BusMessage(subject: reply, payload: ByteBuffer(string: self.name)))
    }
}

/// Buses on an in-memory network, each with its own router.
struct BusTestCluster {
    let network = BusTestNetwork()
    let clock = ManualClock()
    var routers: [BusRouter] = []
    var buses: [BusCluster<ManualClock>] = []
    var ids: [NodeID] = []

    init(_ names: [String], configuration: BusClusterConfiguration = BusClusterConfiguration()) {
        for name in names {
            let router = BusRouter()
            let endpoint = self.network.endpoint(name)
            self.ids.append(endpoint.identity)
            self.routers.append(router)
            self.buses.append(
                BusCluster(
                    network: endpoint,
                    router: router,
                    configuration: configuration,
                    clock: self.clock,
                    logger: quietLogger("bus")
                )
            )
        }
    }

    /// Runs every bus for the duration of `body`.
    func run(_ body: () async throws -> Void) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await self.network.pump() }
            for bus in self.buses { group.addTask { try await bus.run() } }
            try await body()
            self.network.close()
            try await group.waitForAll()
        }
    }

    /// Waits until every bus knows that node `index`'s router is interested in `subject`.
    func waitUntilKnown(_ index: Int, wants subject: String) async throws {
        let node = self.ids[index]
        try await until("every node knows \(node.name) wants \(subject)") {
            self.buses.indices.allSatisfy { $0 == index || self.buses[$0].interest(in: subject).nodes.contains(node) }
        }
    }
}

// MARK: - Tests

@Suite("Bus on an in-memory network", .timeLimit(.minutes(1)))
struct BusDriverTests {
    @Test("a subscription anywhere is interest everywhere; a lost delta is repaired by anti-entropy on injected time")
    func antiEntropyRepairsLostDelta() async throws {
        var configuration = BusClusterConfiguration()
        configuration.antiEntropyInterval = .seconds(5)
        let cluster = BusTestCluster(["a", "b"], configuration: configuration)
        let (routerA, routerB) = (cluster.routers[0], cluster.routers[1])
        let (a, bID) = (cluster.buses[0], cluster.ids[1])
        try await cluster.run {
            try await until("both buses sleep on the clock") { cluster.clock.pendingSleeps == 2 }
            let inbox = Inbox()
            _ = routerB.subscribe("x.>", receiver: inbox)
            try await until("a knows b's interest") { a.interest(in: "x.1").nodes == [bID] }
            routerA.publish(BusMessage(subject: "x.1", payload: ByteBuffer(string: "one")))
            try await until("b got it") { inbox.count == 1 }

            // b's next delta is lost: a does not learn about "y" until the anti-entropy round.
            cluster.network.state.withLock { $0.dropInterestFrames = 1 }
            _ = routerB.subscribe("y", receiver: inbox)
            try await until("the delta was dropped") { cluster.network.state.withLock { $0.dropInterestFrames == 0 } }
            #expect(a.interest(in: "y").isEmpty)
            let snapshotsBefore = a.statistics().interest.snapshotsApplied
            cluster.clock.advance(by: .seconds(5))
            try await until("a repaired b's interest from the digest") { a.interest(in: "y").nodes == [bID] }
            #expect(a.statistics().interest.snapshotsApplied > snapshotsBefore, "the repair came as a snapshot")
        }
    }

    @Test("each subscriber once, whatever the number of matching patterns; nothing comes back or goes on")
    func onceAndOneHop() async throws {
        let cluster = BusTestCluster(["a", "b", "c"])
        try await cluster.run {
            let onB = Inbox()
            let onC = Inbox()
            let onA = Inbox()
            for pattern in ["o.>", "o.*", "o.x"] { _ = cluster.routers[1].subscribe(pattern, receiver: onB) }
            _ = cluster.routers[2].subscribe("o.x", receiver: onC)
            try await cluster.waitUntilKnown(1, wants: "o.x")
            try await cluster.waitUntilKnown(2, wants: "o.x")
            for i in 0..<50 { cluster.routers[0].publish(BusMessage(subject: "o.x", payload: ByteBuffer(string: "\(i)"))) }
            try await until("every copy arrived") { onB.count == 150 && onC.count == 50 }
            #expect(onC.payloads == (0..<50).map(String.init), "in order per publisher")
            // Published on b: a has no interest, c gets it once (not again through a).
            _ = cluster.routers[0].subscribe("p", receiver: onA)
            _ = cluster.routers[2].subscribe("p", receiver: onC)
            try await cluster.waitUntilKnown(0, wants: "p")
            try await cluster.waitUntilKnown(2, wants: "p")
            cluster.routers[1].publish(BusMessage(subject: "p", payload: ByteBuffer(string: "from-b")))
            try await until("a and c got it") { onA.count == 1 && onC.count == 51 }
            let forwarded = cluster.buses.map { $0.statistics().messagesForwarded }
            #expect(forwarded == [100, 2, 0], "a sent 50 to b and 50 to c; b sent one to a and one to c; c nothing")
        }
    }

    @Test("a queue group across nodes: each message to exactly one member in the cluster, a local member first")
    func queueGroups() async throws {
        let cluster = BusTestCluster(["a", "b", "c"])
        try await cluster.run {
            let members = [Inbox(), Inbox(), Inbox(), Inbox()]
            _ = cluster.routers[1].subscribe("jobs.*", queue: "workers", receiver: members[0])
            _ = cluster.routers[1].subscribe("jobs.*", queue: "workers", receiver: members[1])
            _ = cluster.routers[2].subscribe("jobs.*", queue: "workers", receiver: members[2])
            let audit = Inbox()
            _ = cluster.routers[2].subscribe("jobs.*", queue: "audit", receiver: audit)
            try await cluster.waitUntilKnown(1, wants: "jobs.1")
            try await cluster.waitUntilKnown(2, wants: "jobs.1")
            for i in 0..<1_000 {
                cluster.routers[0].publish(BusMessage(subject: "jobs.\(i % 10)", payload: ByteBuffer(string: "\(i)")))
            }
            try await until("1,000 deliveries in the group, 1,000 in audit") {
                members.map(\.count).reduce(0, +) == 1_000 && audit.count == 1_000
            }
            let delivered = members.flatMap(\.payloads)
            #expect(Set(delivered).count == 1_000, "each message once")
            #expect(members[0].count + members[1].count > 0 && members[2].count > 0, "both nodes served")

            // A member on the publishing node takes everything.
            _ = cluster.routers[0].subscribe("jobs.*", queue: "workers", receiver: members[3])
            for i in 0..<100 { cluster.routers[0].publish(BusMessage(subject: "jobs.1", payload: ByteBuffer(string: "l\(i)"))) }
            try await until("the local member got the 100") { members[3].count == 100 }
            #expect(members.prefix(3).map(\.count).reduce(0, +) == 1_000)
        }
    }

    @Test("request/reply across nodes; a reply inbox is known to the responder's node before the request arrives")
    func requestReply() async throws {
        let cluster = BusTestCluster(["a", "b"])
        try await cluster.run {
            _ = cluster.routers[1].subscribe("service", receiver: Responder(router: cluster.routers[1], name: "b"))
            try await cluster.waitUntilKnown(1, wants: "service")
            for i in 0..<20 {
                // A fresh inbox per request, subscribed right before it: the reply must never miss it.
                let inbox = Inbox()
                let subscription = cluster.routers[0].subscribe("_INBOX.\(i)", receiver: inbox)
                let delivered = cluster.routers[0].publish(
                    BusMessage(subject: "service", replyTo: "_INBOX.\(i)", payload: ByteBuffer(string: "q"))
                )
                #expect(delivered == 1, "counted as delivered: a node has a responder")
                try await until("reply \(i)") { inbox.payloads == ["b"] }
                cluster.routers[0].unsubscribe(subscription)
            }
            #expect(cluster.routers[0].publish(BusMessage(subject: "nobody", replyTo: "_INBOX.x", payload: ByteBuffer())) == 0)
        }
    }

    @Test("node-scoped subscriptions and remote interest are not announced; interest past the key limit is counted")
    func scopesAndLimits() async throws {
        var configuration = BusClusterConfiguration()
        configuration.maximumLocalKeys = 2
        let cluster = BusTestCluster(["a", "b"], configuration: configuration)
        try await cluster.run {
            // Once the buses run, subscriptions are reported in the order they happen (the limit takes the first).
            try await until("both buses sleep on the clock") { cluster.clock.pendingSleeps == 2 }
            let inbox = Inbox()
            _ = cluster.routers[1].subscribe("$JS.API.>", scope: .node, receiver: inbox)
            _ = cluster.routers[1].subscribe("one", receiver: inbox)
            _ = cluster.routers[1].subscribe("two", queue: "q", receiver: inbox)
            _ = cluster.routers[1].subscribe("three", receiver: inbox)
            try await cluster.waitUntilKnown(1, wants: "two")
            #expect(cluster.buses[1].snapshot().local == ["one", "two q"])
            #expect(cluster.buses[1].statistics().keysNotAnnounced == 1)
            #expect(cluster.buses[0].interest(in: "$JS.API.INFO").isEmpty)
            #expect(cluster.buses[0].snapshot().peers[cluster.ids[1]] == ["one", "two q"])
            // a's remote subscriptions are not a's interest: b learns nothing from them.
            #expect(cluster.buses[0].snapshot().local.isEmpty)
        }
    }

    @Test("a full queue drops and counts, a too large message is counted; the router's caller never waits")
    func queueBounds() async throws {
        var configuration = BusClusterConfiguration()
        configuration.maximumQueuedBytes = 0
        configuration.maximumMessageBytes = 100
        let cluster = BusTestCluster(["a", "b"], configuration: configuration)
        try await cluster.run {
            _ = cluster.routers[1].subscribe("z", receiver: Inbox())
            try await cluster.waitUntilKnown(1, wants: "z")
            // A busy transport: every message must queue (an idle one takes a message directly, past the queue).
            cluster.network.state.withLock { $0.backlog = 1 }
            for _ in 0..<3 { cluster.routers[0].publish(BusMessage(subject: "z", payload: ByteBuffer(string: "small"))) }
            cluster.routers[0].publish(BusMessage(subject: "z", payload: ByteBuffer(repeating: 0, count: 200)))
            let statistics = cluster.buses[0].statistics()
            #expect(statistics.messagesDropped == 3)
            #expect(statistics.droppedByPeer == [cluster.ids[1]: 3])
            #expect(statistics.messagesTooLarge == 1)
            #expect(statistics.messagesForwarded == 0)
        }
    }

    @Test("messages meant for a previous process on the same address are dropped, not delivered to the new one's subscribers")
    func previousProcess() async throws {
        let cluster = BusTestCluster(["a", "b"])
        try await cluster.run {
            let inbox = Inbox()
            _ = cluster.routers[1].subscribe("s", receiver: inbox)
            try await cluster.waitUntilKnown(1, wants: "s")
            let stale = BusFrameCodec.encode(.messages(recipient: 99, [BusRoutedMessage(subject: "s", payload: [1])]))
            cluster.network.deliver(stale, from: cluster.ids[0], to: cluster.ids[1])
            cluster.routers[0].publish(BusMessage(subject: "s", payload: ByteBuffer(string: "now")))
            try await until("the current message arrived") { inbox.count >= 1 }
            #expect(inbox.payloads == ["now"])
            #expect(cluster.buses[1].statistics().framesForAnotherProcess == 1)
        }
    }

    @Test("every node learns where the others' NATS clients connect")
    func connectURLs() async throws {
        var configurations: [BusClusterConfiguration] = []
        for port in [4001, 4002] {
            var configuration = BusClusterConfiguration()
            configuration.clientURL = "127.0.0.1:\(port)"
            configurations.append(configuration)
        }
        let network = BusTestNetwork()
        let clock = ManualClock()
        let buses = zip(["a", "b"], configurations).map { name, configuration in
            BusCluster(
                network: network.endpoint(name),
                router: BusRouter(),
                configuration: configuration,
                clock: clock,
                logger: quietLogger("bus")
            )
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await network.pump() }
            for bus in buses { group.addTask { try await bus.run() } }
            // Each node learns the other's address when its greeting arrives, in no set order: wait for both.
            for bus in buses {
                var updates = bus.connectURLUpdates().makeAsyncIterator()
                var latest = await updates.next()
                while latest != nil, latest != ["127.0.0.1:4001", "127.0.0.1:4002"] { latest = await updates.next() }
                #expect(latest == ["127.0.0.1:4001", "127.0.0.1:4002"])
            }
            #expect(buses[1].connectURLs == ["127.0.0.1:4001", "127.0.0.1:4002"])
            network.close()
            try await group.waitForAll()
        }
    }

    @Test("a congested link stalls the publishing client connection until it drains")
    func congestion() {
        var configuration = BusClusterConfiguration()
        configuration.maximumQueuedBytes = 1_000
        let link = BusPeerLink(node: NodeID(name: "b", address: "b:1", uid: 1), configuration: configuration)
        #expect(link.forward(BusMessage(subject: "s", payload: ByteBuffer(repeating: 1, count: 400)), groups: []))
        #expect(!link.isCongested)
        #expect(link.stall(resume: {}) == nil)
        #expect(link.forward(BusMessage(subject: "s", payload: ByteBuffer(repeating: 1, count: 400)), groups: []))
        #expect(link.isCongested, "past half of the bound")
        let resumed = Mutex(0)
        #expect(link.stall(resume: { resumed.withLock { $0 += 1 } }) == .seconds(5))
        #expect(!link.forward(BusMessage(subject: "s", payload: ByteBuffer(repeating: 1, count: 400)), groups: []))
        _ = link.take()
        #expect(!link.isCongested)
        #expect(resumed.withLock { $0 } == 1, "drained under half: the stalled publisher resumes")
        #expect(link.counters().dropped == 1)
    }
}
