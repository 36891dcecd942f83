import AsyncHTTPClient
import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOPosix
import StorkCore
import StorkTestKit
import Synchronization
import Testing

@testable import StorkServer

#if canImport(Glibc)
import Glibc
#endif

/// A loopback TCP port that was free a moment ago (bound to port 0, then released).
func freeLoopbackPort() throws -> Int {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard descriptor >= 0 else { throw StorkError(.unavailable, "socket failed") }
    defer { close(descriptor) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = 0
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
    }
    guard bound == 0 else { throw StorkError(.unavailable, "bind failed") }
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
    }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// Reads a NATS connection until `done` says the text so far is enough (bounded by the caller's test time limit).
/// `subscribed` runs once the server answered the PING sent after SUB: from then on, every message on `subject`
/// reaches this subscriber.
func natsSubscriber(
    port: Int,
    subject: String,
    subscribed: @Sendable @escaping () -> Void = {},
    until done: @Sendable @escaping (String) -> Bool
) async throws -> String {
    let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .connect(host: "127.0.0.1", port: port) { channel in
            channel.eventLoop.makeCompletedFuture {
                try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
            }
        }
    return try await channel.executeThenClose { inbound, outbound in
        try await outbound.write(ByteBuffer(string: "CONNECT {\"verbose\":false}\r\nSUB \(subject) 1\r\nPING\r\n"))
        var text = ""
        var announced = false
        for try await chunk in inbound {
            text += String(buffer: chunk)
            if !announced, text.contains("PONG\r\n") {
                announced = true
                subscribed()
            }
            if done(text) { break }
        }
        return text
    }
}

/// The remote end of the test's WebSocket feed: each connection gets what `send` sends.
final class TickFeed: Sendable {
    private let clients = Mutex<[AsyncStream<String>.Continuation]>([])

    var upgrades: Int { self.clients.withLock { $0.count } }

    func connected() -> AsyncStream<String> {
        let (stream, continuation) = AsyncStream.makeStream(of: String.self)
        self.clients.withLock { $0.append(continuation) }
        return stream
    }

    func send(_ text: String) {
        for client in self.clients.withLock({ $0 }) { client.yield(text) }
    }
}

@Suite("Connectors in stork serve", .timeLimit(.minutes(2)))
struct ConnectorServerTests {
    @Test(
        "a kind: websocket resource from a file source publishes its feed on a NATS subject; the admin API and /metrics show it"
    )
    func websocketThroughServer() async throws {
        // The remote feed: a WebSocket endpoint that sends "tick" to every client whenever the test says so.
        let ticks = TickFeed()
        let feed = HTTPServerBuilder.http1WebSocketUpgrade { request, _, _ in
            guard request.path == "/feed" else { return .dontUpgrade }
            return .upgrade([:]) { _, outbound, _ in
                for await tick in ticks.connected() { try await outbound.write(.text(tick)) }
            }
        }
        let feedPort = Mutex<Int?>(nil)
        var quiet = Logger(label: "test")
        quiet.logLevel = .critical
        let feedApp = Application(
            router: Router(),
            server: feed,
            configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { channel in feedPort.withLock { $0 = channel.localAddress?.port } },
            logger: quiet
        )

        let directory = NSTemporaryDirectory() + "stork-connectors-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }

        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await feedApp.runService() }
            #expect(await eventually(.seconds(10)) { feedPort.withLock { $0 } != nil })
            let port = try #require(feedPort.withLock { $0 })
            let resources = """
                [{"id": "acct-42", "kind": "websocket", "url": "ws://127.0.0.1:\(port)/feed", "subject": "nest.acct-42"},
                 {"id": "plain"}]
                """
            try resources.write(toFile: directory + "/resources.json", atomically: true, encoding: .utf8)

            var configuration = ServerConfiguration()
            configuration.node.name = "n1"
            configuration.node.bind = "127.0.0.1:\(try freeLoopbackPort())"
            configuration.node.http = "127.0.0.1:\(try freeLoopbackPort())"
            let natsPort = try freeLoopbackPort()
            configuration.node.nats = "127.0.0.1:\(natsPort)"
            configuration.node.data = directory + "/data"
            configuration.resources.sources = [
                .init(name: "file", kind: .file(path: directory + "/resources.json", reload: false), poll: nil)
            ]
            let server = StorkServer(configuration: configuration, logger: quiet)
            group.addTask { try await server.run(installSignalHandlers: false) }

            // The connector connects to the feed.
            #expect(await eventually(.seconds(30)) { ticks.upgrades >= 1 })

            // A NATS client subscribed to the resource's subject receives what the feed sends: the feed ticks once
            // the subscription is in place (the server answered the PING after SUB), so no tick goes unseen.
            let received = try await natsSubscriber(
                port: natsPort,
                subject: "nest.acct-42",
                subscribed: { ticks.send("tick") },
                until: { $0.contains("tick") }
            )
            #expect(received.contains("MSG nest.acct-42 1 4\r\ntick") == true, "\(received)")

            // GET /v1/resources shows the connector of acct-42 and none for the resource without kind.
            let admin = "http://\(configuration.node.http)"
            let response = try await HTTPClient.shared.execute(
                HTTPClientRequest(url: admin + "/v1/resources"),
                timeout: .seconds(10)
            )
            let body = try await response.body.collect(upTo: 1 << 20)
            let document = try decode(body)
            guard case .array(let items)? = document["resources"] else {
                Issue.record("no resources in \(String(buffer: body))")
                return
            }
            let byID = Dictionary(
                uniqueKeysWithValues: items.compactMap { item -> (String, [String: JSONValue])? in
                    guard case .object(let fields) = item, case .string(let id)? = fields["id"] else { return nil }
                    return (id, fields)
                }
            )
            guard case .object(let connector)? = byID["acct-42"]?["connector"] else {
                Issue.record("no connector object: \(String(buffer: body))")
                return
            }
            #expect(connector["kind"] == "websocket")
            #expect(connector["state"] == "connected")
            if case .number(let count)? = connector["messagesIn"] {
                #expect(count >= 1)
            } else {
                Issue.record("messagesIn")
            }
            #expect(byID["plain"]?["connector"] == .null)
            #expect(byID["plain"]?["state"] == "running")

            let metrics = try await HTTPClient.shared.execute(
                HTTPClientRequest(url: admin + "/metrics"),
                timeout: .seconds(10)
            )
            let text = String(buffer: try await metrics.body.collect(upTo: 1 << 20))
            #expect(text.contains("stork_connector_up{kind=\"websocket\",resource=\"acct-42\"} 1.0"), "\(text)")
            #expect(
                text.contains(
                    "stork_connector_messages_total{kind=\"websocket\",resource=\"acct-42\",direction=\"in\"}"
                )
            )
            #expect(text.contains("stork_members{status=\"alive\"} 1"))

            group.cancelAll()
        }
    }
}
