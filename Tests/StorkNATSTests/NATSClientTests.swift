import Logging
import NIOCore
import StorkBus
import StorkNATS
import Synchronization
import StorkCore
import Testing

/// Runs a real ``NATSServer`` on a free loopback port for the duration of `body`.
func withNATSServer(
    _ configure: (inout NATSServerConfiguration) -> Void = { _ in },
    _ body: @Sendable (NATSServer, Int) async throws -> Void
) async throws {
    var configuration = NATSServerConfiguration()
    configuration.port = 0
    configure(&configuration)
    var logger = Logger(label: "test.nats")
    logger.logLevel = .critical
    let server = NATSServer(configuration: configuration, logger: logger)
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await server.run() }
        let address = try await server.waitUntilListening()
        do {
            try await body(server, address.port ?? 0)
        } catch {
            group.cancelAll()
            throw error
        }
        group.cancelAll()
    }
}

@Suite("NATS client", .timeLimit(.minutes(1)))
struct NATSClientTests {
    @Test("publish, subscribe with headers, flush, unsubscribe")
    func publishSubscribe() async throws {
        try await withNATSServer { _, port in
            let subscriber = try await NATSClient.connect(host: "127.0.0.1", port: port)
            let publisher = try await NATSClient.connect(host: "127.0.0.1", port: port)
            let (sid, messages) = try subscriber.subscribe("orders.*")
            try await subscriber.flush(timeout: .seconds(5))

            try publisher.publish("orders.1", payload: ByteBuffer(string: "one"))
            try publisher.publish(
                "orders.2",
                replyTo: "answers.2",
                headers: MessageHeaders(fields: [("Content-Type", "application/json")]),
                payload: ByteBuffer(string: "{}")
            )
            try publisher.publish("other.3", payload: ByteBuffer(string: "not for us"))
            try await publisher.flush(timeout: .seconds(5))

            var iterator = messages.makeAsyncIterator()
            let first = try #require(await iterator.next())
            #expect(first.subject == "orders.1")
            #expect(String(buffer: first.payload) == "one")
            #expect(first.headers == nil)
            let second = try #require(await iterator.next())
            #expect(second.subject == "orders.2")
            #expect(second.replyTo == "answers.2")
            #expect(second.headers?["content-type"] == "application/json")
            #expect(String(buffer: second.payload) == "{}")

            subscriber.unsubscribe(sid)
            #expect(await iterator.next() == nil, "unsubscribe finishes the stream")
            #expect(throws: StorkError.self) { try publisher.publish("bad subject", payload: ByteBuffer()) }
            await subscriber.close()
            await publisher.close()
        }
    }

    @Test("request gets the first reply; no responders and no reply fail clearly")
    func requestReply() async throws {
        try await withNATSServer { _, port in
            let responder = try await NATSClient.connect(host: "127.0.0.1", port: port)
            let requester = try await NATSClient.connect(host: "127.0.0.1", port: port)
            let (_, requests) = try responder.subscribe("echo")
            let (_, silent) = try responder.subscribe("silent")
            try await responder.flush(timeout: .seconds(5))
            let echo = Task {
                for await request in requests {
                    guard let reply = request.replyTo else { continue }
                    try responder.publish(reply, payload: ByteBuffer(string: "re: " + String(buffer: request.payload)))
                }
            }
            defer { echo.cancel() }

            for index in 0..<3 {
                let reply = try await requester.request("echo", payload: ByteBuffer(string: "\(index)"), timeout: .seconds(5))
                #expect(String(buffer: reply.payload) == "re: \(index)")
            }
            await #expect {
                try await requester.request("nobody", payload: ByteBuffer(), timeout: .seconds(5))
            } throws: { error in
                (error as? StorkError)?.code == .noResponders
            }
            await #expect {
                try await requester.request("silent", payload: ByteBuffer(), timeout: .milliseconds(200))
            } throws: { error in
                (error as? StorkError)?.code == .timeout
            }
            _ = silent
            await responder.close()
            await requester.close()
        }
    }

    @Test("the server going away finishes subscriptions and fails what waits")
    func serverCloses() async throws {
        let opened = Mutex<(NATSClient, AsyncStream<BusMessage>)?>(nil)
        try await withNATSServer { _, port in
            let client = try await NATSClient.connect(host: "127.0.0.1", port: port)
            let (_, messages) = try client.subscribe(">")
            try await client.flush(timeout: .seconds(5))
            opened.withLock { $0 = (client, messages) }
        }
        let (client, messages) = try #require(opened.withLock { $0 })
        // The server stopped when its task group ended: the stream finishes and the client reports why.
        for await _ in messages {}
        let reason = await client.closed()
        #expect(reason?.code == .connectionClosed)
        #expect(!client.isOpen)
        await #expect {
            try await client.flush(timeout: .seconds(1))
        } throws: { error in
            (error as? StorkError)?.code == .connectionClosed
        }
    }

    @Test("a refused connection and a bad token are connect errors")
    func connectErrors() async throws {
        try await withNATSServer({ $0.authentication = .token("s3cret") }) { _, port in
            await #expect {
                try await NATSClient.connect(host: "127.0.0.1", port: port)
            } throws: { error in
                (error as? StorkError)?.code == .connectFailed
            }
            var options = NATSClient.Options()
            options.token = "s3cret"
            let client = try await NATSClient.connect(host: "127.0.0.1", port: port, options: options)
            try await client.flush(timeout: .seconds(5))
            await client.close()
        }
        await #expect {
            try await NATSClient.connect(host: "127.0.0.1", port: 1)
        } throws: { error in
            (error as? StorkError)?.code == .connectFailed
        }
    }
}
