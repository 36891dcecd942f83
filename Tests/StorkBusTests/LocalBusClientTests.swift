import NIOCore
import StorkBus
import StorkCore
import Testing

@Suite("LocalBusClient: a bus client in process")
struct LocalBusClientTests {
    @Test("publish and subscribe through the router; request gets the first reply; no responders and bad subjects are errors")
    func requestReply() async throws {
        let router = BusRouter()
        let service = LocalBusClient(router: router, name: "svc")
        let caller = LocalBusClient(router: router, name: "caller")
        let (_, requests) = try service.subscribe("svc.echo", queue: "workers")
        let responder = Task {
            for await request in requests {
                guard let reply = request.replyTo else { continue }
                var headers = MessageHeaders()
                headers.fields = [("X-Echo", "yes")]
                try? service.publish(reply, replyTo: nil, headers: headers, payload: request.payload)
            }
        }
        defer { responder.cancel() }

        let reply = try await caller.request("svc.echo", payload: ByteBuffer(string: "ping"), timeout: .seconds(20))
        #expect(String(buffer: reply.payload) == "ping")
        #expect(reply.headers?["x-echo"] == "yes")
        #expect(reply.subject.hasPrefix(caller.inboxPrefix + "."))

        await #expect(throws: StorkError.self) {
            try await caller.request("nobody.here", payload: ByteBuffer(), timeout: .seconds(20))
        }
        do {
            _ = try await caller.request("nobody.here", payload: ByteBuffer(), timeout: .seconds(20))
        } catch let error as StorkError {
            #expect(error.code == .noResponders)
        }
        #expect(throws: StorkError.self) { try caller.publish("bad subject", payload: ByteBuffer()) }
        #expect(throws: StorkError.self) { try caller.publish("orders..x", payload: ByteBuffer()) }
        #expect(throws: StorkError.self) { try caller.subscribe("a b") }
    }

    @Test("unsubscribe and close end the subscriptions' streams and leave the router; a closed client refuses work")
    func closing() async throws {
        let router = BusRouter()
        let client = LocalBusClient(router: router)
        let (sid, first) = try client.subscribe("a.>")
        let (_, second) = try client.subscribe("b.1")
        #expect(router.subscriptionCount == 2)
        try client.publish("a.x", payload: ByteBuffer(string: "1"))
        var iterator = first.makeAsyncIterator()
        #expect(await iterator.next().map { String(buffer: $0.payload) } == "1")
        client.unsubscribe(sid)
        #expect(await iterator.next() == nil)
        #expect(router.subscriptionCount == 1)
        await client.close()
        var rest = second.makeAsyncIterator()
        #expect(await rest.next() == nil)
        #expect(router.subscriptionCount == 0)
        #expect(throws: StorkError.self) { try client.publish("a.x", payload: ByteBuffer()) }
        #expect(throws: StorkError.self) { try client.subscribe("a.x") }
    }

    @Test("ack bodies are what JetStream reads back")
    func ackBodies() {
        #expect(String(buffer: DurableAck.ack.body) == "+ACK")
        #expect(String(buffer: DurableAck.nak(delay: nil).body) == "-NAK")
        #expect(String(buffer: DurableAck.nak(delay: .seconds(2)).body) == "-NAK {\"delay\":2000000000}")
        #expect(String(buffer: DurableAck.inProgress.body) == "+WPI")
        #expect(String(buffer: DurableAck.terminate.body) == "+TERM")
    }
}
