import Foundation
import Logging
import NIOCore
import NIOPosix
import StorkCore
import StorkMembership
import StorkResources
import StorkTestKit
import Synchronization
import Testing

@testable import StorkCluster

func quietLogger() -> Logger {
    var logger = Logger(label: "stork.test")
    logger.logLevel = .critical
    return logger
}

func startTransport(key: String? = nil, cluster: String = "stork") async throws -> NIOClusterTransport {
    var configuration = ClusterTransportConfiguration(bind: "127.0.0.1:0", clusterName: cluster, clusterKey: key)
    configuration.maximumFrameSize = 8 << 20
    return try await NIOClusterTransport.start(configuration: configuration, logger: quietLogger())
}

/// Collects what a transport receives, in a background child task.
final class Inbox: Sendable {
    let messages = Mutex<[ClusterMessage]>([])

    func count() -> Int { self.messages.withLock { $0.count } }

    /// Waits (at most `timeout`) until `count` messages arrived.
    func wait(for count: Int, timeout: Duration = .seconds(10)) async throws {
        _ = await eventually(timeout) { self.count() >= count }
    }
}

/// The socket address of a transport bound to an IP literal.
func socketAddress(_ address: String) throws -> SocketAddress {
    guard case .ip(let socket) = try PeerAddress(address) else {
        throw StorkError(.invalidInput, "'\(address)' is not an IP address")
    }
    return socket
}

func withInbox(_ transport: NIOClusterTransport, _ body: (Inbox) async throws -> Void) async throws {
    let inbox = Inbox()
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask {
            for await message in transport.incoming() { inbox.messages.withLock { $0.append(message) } }
        }
        try await body(inbox)
        transport.close()
        try await group.waitForAll()
    }
}

@Suite("NIO cluster transport on loopback", .timeLimit(.minutes(2)))
struct TransportTests {
    @Test("every message kind crosses over UDP or TCP, in order per peer over TCP", arguments: [nil, "k3y"] as [String?])
    func exchange(key: String?) async throws {
        let a = try await startTransport(key: key)
        let b = try await startTransport(key: key)
        var generator = MessageGenerator(seed: 5)
        let messages = (0..<140).map { generator.message(kind: $0 % MessageGenerator.kinds) }
        try await withInbox(b) { inbox in
            for message in messages { a.send(message, to: b.address) }
            try await inbox.wait(for: messages.count)
            let received = inbox.messages.withLock { $0 }
            #expect(Set(received) == Set(messages))
            // TCP keeps order per peer: the non-membership messages arrive in the order sent.
            let tcpSent = messages.filter { if case .membership = $0 { false } else { true } }
            let tcpReceived = received.filter { if case .membership = $0 { false } else { true } }
            #expect(tcpReceived == tcpSent)
        }
        let stats = a.statistics
        #expect(stats.datagramsSent > 0 && stats.framesSent > 0)
        a.close()
    }

    @Test("a large state (5,000 entries) goes over TCP")
    func largeState() async throws {
        let a = try await startTransport()
        let b = try await startTransport()
        var generator = MessageGenerator(seed: 6)
        let message = ClusterMessage.desired(
            .state(from: generator.node(), entries: (0..<5_000).map { _ in generator.entry() }, digest: 9, isReply: false)
        )
        try await withInbox(b) { inbox in
            a.send(message, to: b.address)
            try await inbox.wait(for: 1)
            #expect(inbox.messages.withLock { $0 } == [message])
        }
        a.close()
    }

    @Test("frames from a peer with another key or another cluster are dropped and counted")
    func authentication() async throws {
        let good = try await startTransport(key: "right")
        let forger = try await startTransport(key: "wrong")
        let stranger = try await startTransport(key: "right", cluster: "other")
        let receiver = try await startTransport(key: "right")
        let ping = ClusterMessage.membership(.nack(Nack(from: NodeID(name: "x", address: "1.2.3.4:5", uid: 1), sequence: 1)))
        let big = ClusterMessage.desired(.digest(from: NodeID(name: "x", address: "1.2.3.4:5", uid: 1), digest: 2))
        try await withInbox(receiver) { inbox in
            for _ in 0..<5 {
                forger.send(ping, to: receiver.address)
                forger.send(big, to: receiver.address)
                stranger.send(ping, to: receiver.address)
            }
            good.send(ping, to: receiver.address)
            good.send(big, to: receiver.address)
            try await inbox.wait(for: 2)
            // Wait for the verdicts on the forged and foreign traffic rather than for a fixed time: once they are
            // counted, anything of theirs that got through would already be in the inbox.
            _ = await eventually(.seconds(30)) {
                let rejected = receiver.statistics.rejected
                return rejected[.badMAC, default: 0] >= 5 && rejected[.wrongCluster, default: 0] >= 5
            }
            #expect(inbox.messages.withLock { $0 } .count == 2, "only the good peer's messages arrive")
            let rejected = receiver.statistics.rejected
            #expect(rejected[.badMAC, default: 0] >= 5)
            #expect(rejected[.wrongCluster, default: 0] >= 5)
        }
        for transport in [good, forger, stranger] { transport.close() }
    }

    @Test("an oversized or garbage TCP stream is cut off and the server keeps serving others")
    func hostileTCP() async throws {
        let receiver = try await startTransport()
        let sender = try await startTransport()
        try await withInbox(receiver) { inbox in
            let target = try socketAddress(receiver.address)
            let raw = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(to: target).get()
            var buffer = raw.allocator.buffer(capacity: 16)
            buffer.writeInteger(UInt32.max)  // a length far above the maximum
            buffer.writeBytes([1, 2, 3, 4])
            try await raw.writeAndFlush(buffer)
            let garbage = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(to: target).get()
            var junk = garbage.allocator.buffer(capacity: 64)
            junk.writeInteger(UInt32(20))
            junk.writeBytes((0..<20).map { UInt8($0) })
            try await garbage.writeAndFlush(junk)
            try await raw.closeFuture.get()
            let digest = ClusterMessage.desired(.digest(from: NodeID(name: "n", address: "127.0.0.1:1", uid: 3), digest: 4))
            sender.send(digest, to: receiver.address)
            try await inbox.wait(for: 1)
            // Nothing above waits for the garbage stream's verdict (only for the oversized one's close): wait for it
            // to be counted rather than assume it came first.
            _ = await eventually { receiver.statistics.rejected[.badMagic, default: 0] >= 1 }
            #expect(inbox.messages.withLock { $0 } == [digest])
            #expect(receiver.statistics.rejected[.oversized, default: 0] >= 1)
            #expect(receiver.statistics.rejected[.badMagic, default: 0] >= 1)
            try? await garbage.close()
        }
        sender.close()
    }

    @Test("three ResourceManagers over real sockets form a cluster and run each resource exactly once")
    func threeNodes() async throws {
        final class Ledger: Sendable {
            let running = Mutex<[ResourceID: String]>([:])
            let overlaps = Mutex<Int>(0)
        }
        struct Handler: ResourceHandler {
            let node: String
            let ledger: Ledger
            func handle(_ resource: Resource, context: ResourceContext) async throws {
                self.ledger.running.withLock { running in
                    if running[resource.id] != nil { self.ledger.overlaps.withLock { $0 += 1 } }
                    running[resource.id] = self.node
                }
            }
            func terminate(_ resource: Resource, reason: TerminationReason, context: ResourceContext) async throws {
                self.ledger.running.withLock { running in
                    if running[resource.id] == self.node { running[resource.id] = nil }
                }
            }
        }
        let ledger = Ledger()
        let transports = [
            try await startTransport(key: "k"), try await startTransport(key: "k"), try await startTransport(key: "k"),
        ]
        let resources = (0..<30).map { Resource(id: ResourceID("r\($0)")) }
        let managers = transports.enumerated().map { index, transport in
            var configuration = ResourceManagerConfiguration(name: "n\(index)")
            configuration.seeds = index == 0 ? [] : [transports[0].address]
            configuration.leaveLinger = .milliseconds(100)
            configuration.node.membership.probeTimeout = .milliseconds(300)
            configuration.node.membership.indirectProbeTimeout = .milliseconds(600)
            configuration.node.membership.suspicionMinimum = .seconds(2)
            return ResourceManager(
                configuration: configuration,
                handler: Handler(node: "n\(index)", ledger: ledger),
                source: StaticResourceSource(resources),
                transport: transport,
                logger: quietLogger()
            )
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for manager in managers { group.addTask { try await manager.run() } }
            _ = await eventually(.seconds(30)) {
                let running = ledger.running.withLock { $0 }
                return running.count == 30 && Set(running.values).count == 3
            }
            let running = ledger.running.withLock { $0 }
            #expect(running.count == 30)
            #expect(Set(running.values) == ["n0", "n1", "n2"])
            #expect(Set(managers.map { $0.status().viewChecksum }).count == 1)
            for manager in managers.reversed() { await manager.stop() }
            try await group.waitForAll()
        }
        #expect(ledger.overlaps.withLock { $0 } == 0)
        #expect(ledger.running.withLock { $0 }.isEmpty)
    }
}
