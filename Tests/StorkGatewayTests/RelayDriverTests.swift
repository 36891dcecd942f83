import NIOCore
import StorkCore
import StorkNATS
import StorkResources
import Synchronization
import StorkTestKit
import Testing

@testable import StorkGateway

// MARK: - An in-memory network of relays

/// Nodes whose relay frames travel through in-memory streams; interest frames can be lost on purpose.
final class RelayTestNetwork: Sendable {
    struct State {
        var inboxes: [NodeID: AsyncStream<RelayMessage>.Continuation] = [:]
        var members: [NodeID] = []
        /// Interest frames to drop (the next n), to play lost deltas.
        var dropInterestFrames = 0
        var sent = 0
    }

    let state = Mutex(State())

    func endpoint(_ name: String) -> Endpoint {
        let node = NodeID(name: name, address: "\(name):1", uid: 1)
        let (stream, continuation) = AsyncStream<RelayMessage>.makeStream()
        self.state.withLock { state in
            state.inboxes[node] = continuation
            state.members.append(node)
        }
        return Endpoint(identity: node, network: self, stream: stream)
    }

    func deliver(_ payload: [UInt8], from: NodeID, to: NodeID) {
        self.state.withLock { state in
            state.sent += 1
            if state.dropInterestFrames > 0, case .interest? = try? RelayFrameCodec.decode(payload) {
                state.dropInterestFrames -= 1
                return
            }
            state.inboxes[to]?.yield(RelayMessage(from: from, payload: payload))
        }
    }

    func close() {
        self.state.withLock { state in
            for inbox in state.inboxes.values { inbox.finish() }
        }
    }

    struct Endpoint: ClusterRelayNetwork {
        let identity: NodeID
        let network: RelayTestNetwork
        let stream: AsyncStream<RelayMessage>

        func relayFrames() -> AsyncStream<RelayMessage> { self.stream }
        func sendRelay(_ payload: [UInt8], to node: NodeID) {
            self.network.deliver(payload, from: self.identity, to: node)
        }
        func liveMembers() -> [NodeID] { self.network.state.withLock { $0.members } }
        func events() -> AsyncStream<NodeEvent> { AsyncStream { _ in } }
    }
}

private final class Inbox: NATSLocalReceiver {
    let messages = Mutex<[NATSMessage]>([])
    func receive(_ message: NATSMessage, subscription: NATSSubscription) {
        self.messages.withLock { $0.append(message) }
    }
    var count: Int { self.messages.withLock { $0.count } }
}

// MARK: - Tests

@Suite("Relay driver on an in-memory network", .timeLimit(.minutes(1)))
struct RelayDriverTests {
    @Test("a lost delta is repaired by the next anti-entropy round, on injected time")
    func antiEntropyRepairsLostDelta() async throws {
        let network = RelayTestNetwork()
        let clock = ManualClock()
        var configuration = ClusterRelayConfiguration()
        configuration.antiEntropyInterval = .seconds(5)
        let (routerA, routerB) = (NATSRouter(), NATSRouter())
        let a = ClusterRelay(network: network.endpoint("a"), router: routerA, configuration: configuration, clock: clock)
        let b = ClusterRelay(network: network.endpoint("b"), router: routerB, configuration: configuration, clock: clock)
        let bID = network.state.withLock { $0.members[1] }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await a.run() }
            group.addTask { try await b.run() }
            try await until("both relays sleep on the clock") { clock.pendingSleeps == 2 }

            let inbox = Inbox()
            _ = routerB.subscribe("x.>", receiver: inbox)
            try b.addInterest("x.>")
            try await until("a knows b's interest") { a.interest(in: "x.1").nodes == [bID] }
            routerA.publish(NATSMessage(subject: "x.1", payload: ByteBuffer(string: "one")))
            try await until("b got it") { inbox.count == 1 }

            // b's next delta is lost: a does not learn about "y" until the anti-entropy round.
            network.state.withLock { $0.dropInterestFrames = 1 }
            try b.addInterest("y")
            try await until("the delta was dropped") { network.state.withLock { $0.dropInterestFrames == 0 } }
            #expect(a.interest(in: "y").isEmpty)
            clock.advance(by: .seconds(5))
            try await until("a repaired b's interest from the digest") { a.interest(in: "y").nodes == [bID] }
            #expect(a.statistics().interest.snapshotsApplied >= 2, "the greeting and the repair")

            network.close()
            try await group.waitForAll()
        }
        #expect(a.snapshot().local.isEmpty)
    }

    @Test("a full queue drops and counts; the router's caller never waits; relayed messages are not forwarded")
    func queueBoundsAndMarkers() async throws {
        let network = RelayTestNetwork()
        let clock = ManualClock()
        var configuration = ClusterRelayConfiguration()
        configuration.maximumQueuedMessages = 0
        configuration.maximumMessageBytes = 100
        let (routerA, routerB) = (NATSRouter(), NATSRouter())
        let a = ClusterRelay(network: network.endpoint("a"), router: routerA, configuration: configuration, clock: clock)
        let b = ClusterRelay(network: network.endpoint("b"), router: routerB, clock: clock)
        let bID = network.state.withLock { $0.members[1] }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await a.run() }
            group.addTask { try await b.run() }
            try b.addInterest("z")
            try await until("a knows b's interest") { a.interest(in: "z").nodes == [bID] }
            for _ in 0..<3 { routerA.publish(NATSMessage(subject: "z", payload: ByteBuffer(string: "small"))) }
            routerA.publish(NATSMessage(subject: "z", payload: ByteBuffer(repeating: 0, count: 200)))
            let marked = NATSHeaders(fields: [(ClusterRelay<ManualClock>.markerHeader, "elsewhere")]).encoded
            routerA.publish(NATSMessage(subject: "z", headers: marked, payload: ByteBuffer(string: "relayed")))
            let statistics = a.statistics()
            #expect(statistics.messagesDropped == 3)
            #expect(statistics.droppedByPeer == [bID: 3])
            #expect(statistics.messagesTooLarge == 1)
            #expect(statistics.relayedNotForwarded == 1)
            #expect(statistics.messagesForwarded == 0)
            network.close()
            try await group.waitForAll()
        }
    }

    @Test("addInterest refuses invalid patterns and too many of them")
    func refusals() throws {
        let network = RelayTestNetwork()
        var configuration = ClusterRelayConfiguration()
        configuration.maximumLocalPatterns = 2
        let relay = ClusterRelay(network: network.endpoint("a"), router: NATSRouter(), configuration: configuration, clock: ManualClock())
        for bad in ["", "a..b", "a.>.b", "a b", String(repeating: "x", count: 4097)] {
            #expect(throws: ClusterRelayError.self) { try relay.addInterest(bad) }
        }
        try relay.addInterest("one")
        try relay.addInterest("two")
        try relay.addInterest("two")
        let error = #expect(throws: ClusterRelayError.self) { try relay.addInterest("three") }
        #expect(error?.code == .tooManyPatterns)
        relay.removeInterest("one")
        try relay.addInterest("three")
        #expect(relay.snapshot().local == ["three", "two"])
        #expect(relay.interest(in: "two") == RelayInterest(local: true, nodes: []))
    }
}
