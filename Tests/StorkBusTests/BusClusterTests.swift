import Logging
import NIOCore
import StorkCluster
import StorkCore
import StorkBus
import StorkNATS
import StorkResources
import Synchronization
import Testing

@testable import StorkBusCluster

// MARK: - Helpers

/// Runs nothing: the nodes exist for their membership and their bus.
private struct IdleHandler: ResourceHandler {
    func handle(_ resource: Resource, context: ResourceContext) async throws {}
    func terminate(_ resource: Resource, reason: TerminationReason, context: ResourceContext) async throws {}
}

/// One node: a resource manager on a loopback NIO transport, a NATS router, and the bus between them.
private struct BusNode {
    let manager: ResourceManager
    let router: BusRouter
    let bus: BusCluster<ContinuousClock>
    var id: NodeID { self.manager.identity }

    static func start(name: String, seeds: [String]) async throws -> (BusNode, NIOClusterTransport) {
        let transport = try await NIOClusterTransport.start(
            configuration: ClusterTransportConfiguration(bind: "127.0.0.1:0", clusterKey: "bus-test"),
            logger: quietLogger("bus")
        )
        var configuration = ResourceManagerConfiguration(name: name)
        configuration.seeds = seeds
        configuration.leaveLinger = .milliseconds(100)
        configuration.node.membership.probeTimeout = .milliseconds(300)
        configuration.node.membership.indirectProbeTimeout = .milliseconds(600)
        configuration.node.membership.suspicionMinimum = .seconds(2)
        let manager = ResourceManager(
            configuration: configuration,
            handler: IdleHandler(),
            transport: transport,
            logger: quietLogger("bus")
        )
        let router = BusRouter()
        var busConfiguration = BusClusterConfiguration()
        busConfiguration.antiEntropyInterval = .milliseconds(200)
        let bus = BusCluster(network: manager, router: router, configuration: busConfiguration, logger: quietLogger("bus"))
        return (BusNode(manager: manager, router: router, bus: bus), transport)
    }

    func publish(_ subject: String, _ payload: String, headers: MessageHeaders? = nil) {
        self.router.publish(BusMessage(subject: subject, headers: headers, payload: ByteBuffer(string: payload)))
    }

    /// A local subscriber: the bus tells the cluster by itself.
    func subscribe(_ pattern: String) -> (Inbox, BusSubscription) {
        let inbox = Inbox()
        return (inbox, self.router.subscribe(pattern, receiver: inbox))
    }

    func knows(_ node: BusNode, wants subject: String) -> Bool {
        self.bus.interest(in: subject).nodes.contains(node.id)
    }

    func forwarded(to node: BusNode) -> Int { self.bus.statistics().forwardedByPeer[node.id] ?? 0 }
}

// MARK: - Tests

@Suite("Bus between nodes on loopback", .timeLimit(.minutes(3)))
struct BusClusterTests {
    @Test("a node that crashes is declared dead, its interest is dropped and nothing more is forwarded to it")
    func crashedPeer() async throws {
        let (n1, t1) = try await BusNode.start(name: "n1", seeds: [])
        let (n2, t2) = try await BusNode.start(name: "n2", seeds: [t1.address])
        // n2 runs in a task of its own so that it can crash alone: its tasks are cancelled and its sockets closed,
        // without a goodbye.
        let crashing = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await n2.manager.run() }
                group.addTask { try await n2.bus.run() }
                try await group.waitForAll()
            }
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await n1.manager.run() }
            group.addTask { try await n1.bus.run() }
            _ = n2.subscribe("orders.>")
            try await until("n1 knows n2's interest") { n1.knows(n2, wants: "orders.1") }
            #expect(n1.router.hasInterest(in: "orders.1"), "a remote subscription on n1's router")
            #expect(!n1.router.hasLocalInterest(in: "orders.1"))

            t2.close()
            crashing.cancel()
            try await until("n1 declared n2 dead and dropped its interest") {
                n1.bus.interest(in: "orders.1").isEmpty
            }
            #expect(!n1.router.hasInterest(in: "orders.1"), "the remote subscription ended")
            #expect(n1.bus.statistics().interest.peersDropped == 1)
            #expect(n1.router.publish(BusMessage(subject: "orders.1", payload: ByteBuffer(string: "nobody"))) == 0)
            #expect(n1.bus.statistics().messagesForwarded == 0)
            await n1.manager.stop()
            try await group.waitForAll()
        }
        _ = try? await crashing.value
    }

    @Test("three nodes: once per node and per subscription, in order, both ways, no loops; unsubscribe and departure")
    func threeNodes() async throws {
        let (n1, t1) = try await BusNode.start(name: "n1", seeds: [])
        let (n2, _) = try await BusNode.start(name: "n2", seeds: [t1.address])
        let (n3, _) = try await BusNode.start(name: "n3", seeds: [t1.address])
        let nodes = [n1, n2, n3]

        try await withThrowingTaskGroup(of: Void.self) { group in
            for node in nodes {
                group.addTask { try await node.manager.run() }
                group.addTask { try await node.bus.run() }
            }
            try await until("every bus sees two live peers") {
                nodes.allSatisfy { $0.bus.snapshot().peers.count == 2 }
            }

            // Two overlapping subscriptions on n3; a publisher on n1.
            let (alice, aliceSubscription) = n3.subscribe("users.alice.events")
            let (aliceAll, aliceAllSubscription) = n3.subscribe("users.alice.>")
            try await until("n1 and n2 know n3's interest") {
                n1.knows(n3, wants: "users.alice.events") && n2.knows(n3, wants: "users.alice.events")
            }
            #expect(n1.bus.interest(in: "users.alice.events") == BusInterest(local: false, nodes: [n3.id]))
            #expect(n3.bus.interest(in: "users.alice.events") == BusInterest(local: true, nodes: []))

            n1.publish("users.alice.events", "m1", headers: MessageHeaders(fields: [("X-Trace", "t1"), ("X-Trace", "t2")]))
            n1.publish("users.alice.events", "m2")
            try await until("n3 received both, on both subscriptions") {
                alice.count == 2 && aliceAll.count == 2
            }
            #expect(alice.payloads == ["m1", "m2"] && aliceAll.payloads == ["m1", "m2"])
            #expect(n1.forwarded(to: n3) == 2, "one copy per message to n3, however many of its patterns match")
            let first = try #require(alice.messages.withLock { $0.first })
            let headers = try #require(first.headers)
            #expect(headers.fields.filter { $0.0 == "X-Trace" }.map(\.1) == ["t1", "t2"])

            // The other way: n1 and n2 each get one copy of what n3 publishes; what arrives from a peer is never
            // forwarded again.
            let (replies1, _) = n1.subscribe("replies.>")
            let (replies2, _) = n2.subscribe("replies.*")
            _ = n1.subscribe("users.alice.>")
            try await until("n3 knows n1 and n2's interest, n2 knows n1's") {
                n3.bus.interest(in: "replies.one").nodes == [n1.id, n2.id] && n2.knows(n1, wants: "users.alice.x")
            }
            let forwardedByN1 = n1.bus.statistics().messagesForwarded
            n3.publish("replies.one", "r1")
            n2.publish("users.alice.events", "m3")
            try await until("replies reached n1 and n2, m3 reached n3") {
                replies1.payloads == ["r1"] && replies2.payloads == ["r1"] && alice.count == 3
            }
            // A fence on the same ordered link: anything forwarded twice would arrive before it.
            n3.publish("replies.two", "r2")
            try await until("the fence reached n1") { replies1.payloads.count == 2 }
            #expect(replies1.payloads == ["r1", "r2"])
            #expect(alice.payloads == ["m1", "m2", "m3"])
            #expect(n1.bus.statistics().messagesForwarded == forwardedByN1, "n1 never forwards what it received")

            // A provider on n1 waits until nobody anywhere listens on users.alice.events.
            let (fence3, _) = n3.subscribe("fence")
            try await until("n1 knows n3's fence interest") { n1.knows(n3, wants: "fence") }
            let updates = n1.bus.interestUpdates(for: "users.alice.events")
            n3.router.unsubscribe(aliceSubscription)
            n3.router.unsubscribe(aliceAllSubscription)
            var iterator = updates.makeAsyncIterator()
            var last: BusInterest?
            while let next = await iterator.next() {
                last = next
                if next.nodes.isEmpty { break }
            }
            #expect(last?.nodes.isEmpty == true)
            try await until("n1's remote subscription for n3 ended") { !n1.knows(n3, wants: "users.alice.events") }
            n1.publish("users.alice.events", "after-unsubscribe")
            n1.publish("fence", "f1")
            try await until("the fence reached n3") { fence3.payloads == ["f1"] }
            #expect(alice.payloads == ["m1", "m2", "m3"], "nothing after the unsubscribe")

            // n2 leaves: its interest is dropped everywhere.
            #expect(n3.knows(n2, wants: "replies.one"))
            await n2.manager.stop()
            try await until("n1 and n3 dropped n2's interest") {
                !n3.knows(n2, wants: "replies.one") && n1.bus.snapshot().peers[n2.id] == nil
            }
            #expect(n3.bus.interest(in: "replies.one").nodes == [n1.id])
            n3.publish("replies.four", "r4")
            try await until("n1 still gets n3's messages") { replies1.payloads == ["r1", "r2", "r4"] }
            #expect(replies2.payloads == ["r1", "r2"])

            for node in [n3, n1] { await node.manager.stop() }
            try await group.waitForAll()
        }
        for node in nodes {
            let statistics = node.bus.statistics()
            #expect(statistics.messagesDropped == 0)
            #expect(statistics.framesRejected == 0)
        }
    }
}
