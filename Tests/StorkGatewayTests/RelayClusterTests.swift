import Logging
import NIOCore
import StorkCluster
import StorkCore
import StorkNATS
import StorkResources
import Synchronization
import Testing

@testable import StorkGateway

// MARK: - Helpers

/// Runs nothing: the nodes exist for their membership and their relay.
private struct IdleHandler: ResourceHandler {
    func handle(_ resource: Resource, context: ResourceContext) async throws {}
    func terminate(_ resource: Resource, reason: TerminationReason, context: ResourceContext) async throws {}
}

/// One node: a resource manager on a loopback NIO transport, a NATS router, and the relay between them.
private struct RelayNode {
    let manager: ResourceManager
    let router: NATSRouter
    let relay: ClusterRelay<ContinuousClock>
    var id: NodeID { self.manager.identity }

    static func start(name: String, seeds: [String]) async throws -> (RelayNode, NIOClusterTransport) {
        let transport = try await NIOClusterTransport.start(
            configuration: ClusterTransportConfiguration(bind: "127.0.0.1:0", clusterKey: "relay-test"),
            logger: quietLogger("relay")
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
            logger: quietLogger("relay")
        )
        let router = NATSRouter()
        var relayConfiguration = ClusterRelayConfiguration()
        relayConfiguration.antiEntropyInterval = .milliseconds(200)
        let relay = ClusterRelay(network: manager, router: router, configuration: relayConfiguration, logger: quietLogger("relay"))
        return (RelayNode(manager: manager, router: router, relay: relay), transport)
    }

    func publish(_ subject: String, _ payload: String, headers: NATSHeaders? = nil) {
        self.router.publish(NATSMessage(subject: subject, headers: headers?.encoded, payload: ByteBuffer(string: payload)))
    }

    /// A local subscriber, announced to the cluster like the gateway does for a WebSocket client.
    func subscribe(_ pattern: String) throws -> (Collector, NATSSubscription) {
        let collector = Collector()
        let subscription = self.router.subscribe(pattern, receiver: collector)
        try self.relay.addInterest(pattern)
        return (collector, subscription)
    }

    func knows(_ node: RelayNode, wants subject: String) -> Bool {
        self.relay.interest(in: subject).nodes.contains(node.id)
    }
}

// MARK: - Tests

@Suite("Cluster relay on loopback", .timeLimit(.minutes(3)))
struct RelayClusterTests {
    @Test("a node that crashes is declared dead, its interest is dropped and nothing more is forwarded to it")
    func crashedPeer() async throws {
        let (n1, t1) = try await RelayNode.start(name: "n1", seeds: [])
        let (n2, t2) = try await RelayNode.start(name: "n2", seeds: [t1.address])
        // n2 runs in a task of its own so that it can crash alone: its tasks are cancelled and its sockets closed,
        // without a goodbye.
        let crashing = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await n2.manager.run() }
                group.addTask { try await n2.relay.run() }
                try await group.waitForAll()
            }
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await n1.manager.run() }
            group.addTask { try await n1.relay.run() }
            _ = try n2.subscribe("orders.>")
            try await until("n1 knows n2's interest") { n1.knows(n2, wants: "orders.1") }
            #expect(n1.router.hasInterest(in: "orders.1"))

            t2.close()
            crashing.cancel()
            try await until("n1 declared n2 dead and dropped its interest") {
                n1.relay.interest(in: "orders.1").isEmpty
            }
            #expect(!n1.router.hasInterest(in: "orders.1"), "the relay's router subscription ended")
            #expect(n1.relay.statistics().interest.peersDropped == 1)
            n1.publish("orders.1", "nobody")
            #expect(n1.relay.statistics().messagesForwarded == 0)
            await n1.manager.stop()
            try await group.waitForAll()
        }
        _ = try? await crashing.value
    }

    @Test("three nodes: exactly-once delivery both ways, no loops, unsubscribe and departure stop forwarding")
    func threeNodes() async throws {
        let (n1, t1) = try await RelayNode.start(name: "n1", seeds: [])
        let (n2, _) = try await RelayNode.start(name: "n2", seeds: [t1.address])
        let (n3, _) = try await RelayNode.start(name: "n3", seeds: [t1.address])
        let nodes = [n1, n2, n3]

        try await withThrowingTaskGroup(of: Void.self) { group in
            for node in nodes {
                group.addTask { try await node.manager.run() }
                group.addTask { try await node.relay.run() }
            }
            try await until("every relay sees two live peers") {
                nodes.allSatisfy { $0.relay.snapshot().peers.count == 2 }
            }

            // A browser on n3 subscribes with overlapping patterns; a runner on n1 publishes.
            let (alice, _) = try n3.subscribe("users.alice.events")
            try n3.relay.addInterest("users.alice.>")
            try await until("n1 and n2 know n3's interest") {
                n1.knows(n3, wants: "users.alice.events") && n2.knows(n3, wants: "users.alice.events")
            }
            #expect(n1.relay.interest(in: "users.alice.events") == RelayInterest(local: false, nodes: [n3.id]))
            #expect(n2.relay.interest(in: "users.alice.events").nodes == [n3.id])
            #expect(n3.relay.interest(in: "users.alice.events") == RelayInterest(local: true, nodes: []))

            n1.publish("users.alice.events", "m1", headers: NATSHeaders(fields: [("X-Trace", "t1")]))
            n1.publish("users.alice.events", "m2")
            try await until("n3 received both") { alice.payloads.count >= 2 }
            #expect(alice.payloads == ["m1", "m2"], "once each, in order, despite two matching patterns")
            let first = try #require(alice.messages.withLock { $0.first })
            let headers = try #require(first.headers.flatMap(NATSHeaders.parse))
            #expect(headers["X-Trace"] == "t1")
            #expect(headers[ClusterRelay<ContinuousClock>.markerHeader] == "n1")

            // The other way, with n2 interested too: n1 and n2 each get one copy of what n3 publishes; nobody
            // forwards a relayed message again.
            let (replies1, _) = try n1.subscribe("replies.>")
            let (replies2, _) = try n2.subscribe("replies.*")
            try await until("n3 knows n1 and n2's interest") {
                n3.relay.interest(in: "replies.one").nodes == [n1.id, n2.id]
            }
            // n3 also wants what it publishes on `users.alice.>`, so n1 and n2 forward those subjects to n3: a
            // relayed copy arriving on n1 must not go back.
            try n1.relay.addInterest("users.alice.>")
            try await until("n2 and n3 know n1's interest") {
                n2.knows(n1, wants: "users.alice.x") && n3.knows(n1, wants: "users.alice.x")
            }
            let framesBefore = nodes.map { $0.relay.statistics().messageFramesSent }
            n3.publish("replies.one", "r1")
            n2.publish("users.alice.events", "m3")
            try await until("replies reached n1 and n2") {
                replies1.payloads == ["r1"] && replies2.payloads == ["r1"]
            }
            try await until("m3 reached n3") { alice.payloads.count == 3 }
            // A fence on the same ordered link: anything forwarded twice would arrive before it.
            n3.publish("replies.two", "r2")
            try await until("the fence reached n1") { replies1.payloads.count == 2 }
            #expect(replies1.payloads == ["r1", "r2"])
            #expect(alice.payloads == ["m1", "m2", "m3"])
            // Counters move just after the frames leave: wait for the least that must have been sent.
            try await until("n2 and n3 counted their frames") {
                let frames = nodes.map { $0.relay.statistics().messageFramesSent }
                return frames[1] - framesBefore[1] >= 2 && frames[2] - framesBefore[2] >= 2
            }
            let framesAfter = nodes.map { $0.relay.statistics().messageFramesSent }
            // n1: nothing (m3 arrived relayed); n2: m3 to n1 and n3 (one frame each); n3: r1 and r2 to n1 and n2.
            #expect(framesAfter[0] == framesBefore[0], "n1 never forwards a relayed message")
            #expect(framesAfter[1] - framesBefore[1] == 2)
            #expect((2...4).contains(framesAfter[2] - framesBefore[2]), "r1 and r2 to two peers (batched or not)")
            #expect(n1.relay.statistics().relayedNotForwarded >= 1, "m3 arrived on n1, matched n3's interest, stopped")

            // A subject n3 keeps, for fences on the n1 -> n3 link.
            let (fence3, _) = try n3.subscribe("fence")
            try await until("n1 knows n3's fence interest") { n1.knows(n3, wants: "fence") }

            // A provider on n1 waits until nobody anywhere listens on users.alice.events.
            let updates = n1.relay.interestUpdates(for: "users.alice.events")
            n1.relay.removeInterest("users.alice.>")
            n3.relay.removeInterest("users.alice.events")
            n3.relay.removeInterest("users.alice.>")
            var iterator = updates.makeAsyncIterator()
            var last: RelayInterest?
            while let next = await iterator.next() {
                last = next
                if next.isEmpty { break }
            }
            #expect(last?.isEmpty == true)
            #expect(!n1.router.hasInterest(in: "users.alice.events"), "n1's relay ended its router subscription")
            n1.publish("users.alice.events", "after-unsubscribe")
            n1.publish("fence", "f1")
            try await until("the fence reached n3") { fence3.payloads == ["f1"] }
            #expect(alice.payloads == ["m1", "m2", "m3"], "nothing after the unsubscribe")

            // n2 leaves: its interest is dropped everywhere.
            #expect(n3.knows(n2, wants: "replies.one"))
            await n2.manager.stop()
            try await until("n1 and n3 dropped n2's interest") {
                !n3.knows(n2, wants: "replies.one") && n1.relay.snapshot().peers[n2.id] == nil
            }
            #expect(n3.relay.interest(in: "replies.one").nodes == [n1.id])
            n3.publish("replies.four", "r4")
            try await until("n1 still gets n3's messages") { replies1.payloads == ["r1", "r2", "r4"] }
            #expect(replies2.payloads == ["r1", "r2"])

            for node in [n3, n1] { await node.manager.stop() }
            try await group.waitForAll()
        }
        for node in nodes {
            let statistics = node.relay.statistics()
            #expect(statistics.messagesDropped == 0)
            #expect(statistics.framesRejected == 0)
        }
    }
}
