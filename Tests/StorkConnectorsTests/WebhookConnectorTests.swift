import AsyncHTTPClient
import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import StorkConnectors
import StorkCore
import StorkBus
import StorkNATS
import StorkResources
import StorkStreaming
import StorkTestKit
import Synchronization
import Testing

// MARK: - A NATS server with JetStream on loopback

final class ClientCounts: Sendable {
    let counts = Mutex<(local: Int, remote: Int)>((0, 0))
}

/// A real NATS endpoint with JetStream (memory streams) on a free loopback port, and a client connected to it.
struct JetStreamFixture: Sendable {
    let port: Int
    let client: NATSClient
    let router: BusRouter
    /// Bus clients the connectors made: in process (`local`) and over NATS (`remote`).
    let clientsMade = ClientCounts()

    var endpoint: ConnectorNATSEndpoint { ConnectorNATSEndpoint(host: "127.0.0.1", port: self.port) }

    /// Clients on the server's bus in process, and NATS clients for resources that name a server; counted.
    var bus: ConnectorBus {
        ConnectorBus(
            local: { name in
                self.clientsMade.counts.withLock { $0.local += 1 }
                return LocalBusClient(router: self.router, name: name)
            },
            remote: { endpoint, name in
                self.clientsMade.counts.withLock { $0.remote += 1 }
                var options = NATSClient.Options()
                options.name = name
                return try await NATSClient.connect(host: endpoint.host, port: endpoint.port, options: options)
            }
        )
    }

    /// A JSON API request; the answer as a dictionary.
    func api(_ subject: String, _ body: [String: Any] = [:]) async throws -> [String: Any] {
        let data = try JSONSerialization.data(withJSONObject: body)
        let reply = try await self.client.request(subject, payload: ByteBuffer(bytes: data), timeout: .seconds(5))
        return try #require(JSONSerialization.jsonObject(with: Data(reply.payload.readableBytesView)) as? [String: Any])
    }

    /// Creates a memory stream.
    func createStream(_ name: String, subjects: [String]) async throws {
        let answer = try await self.api(
            "$JS.API.STREAM.CREATE.\(name)",
            ["name": name, "subjects": subjects, "storage": "memory"]
        )
        #expect(answer["error"] == nil, "\(answer)")
    }

    /// Publishes and waits for the stream's ack; returns the stream sequence.
    @discardableResult
    func publish(_ subject: String, _ payload: String, headers: MessageHeaders? = nil) async throws -> Int {
        let reply = try await self.client.request(
            subject,
            headers: headers,
            payload: ByteBuffer(string: payload),
            timeout: .seconds(5)
        )
        let answer = try #require(
            JSONSerialization.jsonObject(with: Data(reply.payload.readableBytesView)) as? [String: Any]
        )
        return try #require(answer["seq"] as? Int, "\(answer)")
    }

    /// The consumer's numbers: `num_ack_pending`, `num_pending`, `num_redelivered`, `ack_floor.stream_seq`.
    func consumer(_ stream: String, _ name: String) async throws -> [String: Any] {
        try await self.api("$JS.API.CONSUMER.INFO.\(stream).\(name)")
    }
}

func withJetStream(_ body: @Sendable (JetStreamFixture) async throws -> Void) async throws {
    var configuration = NATSServerConfiguration()
    configuration.port = 0
    let logger = quietLogger("test-nats")
    let server = NATSServer(configuration: configuration, logger: logger)
    server.jetstream = true
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("webhook-\(UUID().uuidString)").path
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let jetstream = JetStream(
        configuration: .init(directory: directory),
        router: server.router,
        storeFactory: { _, _ in throw StorkError(.invalidInput, "the tests use memory streams") },
        logger: logger
    )
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await jetstream.run() }
        try await jetstream.waitUntilReady()
        group.addTask { try await server.run() }
        let address = try await server.waitUntilListening()
        let client = try await NATSClient.connect(host: "127.0.0.1", port: address.port ?? 0)
        do {
            try await body(JetStreamFixture(port: address.port ?? 0, client: client, router: server.router))
        } catch {
            await client.close()
            group.cancelAll()
            throw error
        }
        await client.close()
        group.cancelAll()
    }
}

// MARK: - A webhook receiver that fails as told

/// `POST /hook`: records every request (headers, body, whether its signature verifies), and answers as its mode
/// says: 200, a status for the first `count` requests, always a status, or never (until the test ends). A request
/// the test holds (``hold(request:)``) waits, recorded, until ``releaseHeld()``: a POST in flight for as long as
/// the test wants, with no timer.
final class HookReceiver: Sendable {
    enum Mode: Sendable {
        case ok
        case failFirst(Int, status: Int)
        case always(Int)
        case hang
    }

    struct Request: Sendable {
        var deliveryID: String
        var subject: String
        var attempt: String
        var contentType: String
        var body: String
        var signatureValid: Bool
    }

    private struct State {
        var mode: Mode
        var requests: [Request] = []
        /// Indexes of requests that wait for ``releaseHeld()`` before they are answered.
        var held: Set<Int> = []
        var gate = OneShotSignal()
    }

    let secret: String
    private let state: Mutex<State>

    init(secret: String = "hook-secret", mode: Mode = .ok) {
        self.secret = secret
        self.state = Mutex(State(mode: mode))
    }

    var requests: [Request] { self.state.withLock { $0.requests } }

    /// Requests answered 2xx, by delivery id.
    func delivered() -> [String: Int] {
        var counts: [String: Int] = [:]
        for (index, request) in self.requests.enumerated() where self.succeeded(index) {
            counts[request.deliveryID, default: 0] += 1
        }
        return counts
    }

    private func succeeded(_ index: Int) -> Bool {
        switch self.state.withLock({ $0.mode }) {
        case .ok: return true
        case .failFirst(let count, _): return index >= count
        case .always, .hang: return false
        }
    }

    func update(_ mode: Mode) { self.state.withLock { $0.mode = mode } }

    /// The request with this index (0 for the first) waits, once recorded, until ``releaseHeld()``.
    func hold(request index: Int) { _ = self.state.withLock { $0.held.insert(index) } }

    /// Answers every held request that waits, and holds the later ones marked by ``hold(request:)`` again.
    func releaseHeld() {
        let gate = self.state.withLock { state in
            defer { state.gate = OneShotSignal() }
            return state.gate
        }
        gate.fire()
    }

    var router: Router<BasicRequestContext> {
        let router = Router()
        router.post("/hook") { request, context -> Response in
            let body = try await request.body.collect(upTo: 1 << 20)
            let bytes = Array(body.readableBytesView)
            func header(_ name: String) -> String { request.headers[HTTPField.Name(name)!] ?? "" }
            let expected = "sha256="
                + HMAC<SHA256>.authenticationCode(for: bytes, using: SymmetricKey(data: Array(self.secret.utf8)))
                .map { String(format: "%02x", $0) }.joined()
            let recorded = Request(
                deliveryID: header("Stork-Delivery-Id"),
                subject: header("Stork-Subject"),
                attempt: header("Stork-Attempt"),
                contentType: header("Content-Type"),
                body: String(decoding: bytes, as: UTF8.self),
                signatureValid: header("Stork-Signature") == expected
            )
            let (index, mode, gate) = self.state.withLock { state in
                state.requests.append(recorded)
                let index = state.requests.count - 1
                return (index, state.mode, state.held.remove(index) != nil ? state.gate : nil)
            }
            if let gate { await gate.wait() }
            switch mode {
            case .ok:
                return Response(status: .ok)
            case .failFirst(let count, let status):
                return Response(status: index < count ? .init(code: status) : .ok)
            case .always(let status):
                return Response(status: .init(code: status))
            case .hang:
                // Never answers: waits until the server shuts down (which cancels it).
                await OneShotSignal().wait()
                throw CancellationError()
            }
        }
        return router
    }
}

// MARK: - The bench: JetStream, the receiver and a connector handler

/// One webhook test's world: a JetStream server on loopback with the memory stream `EVENTS` (`events.>`), the
/// receiver on loopback, and a connector handler running the webhook kind on the test's manual clock.
struct WebhookBench: Sendable {
    let nats: JetStreamFixture
    let port: Int
    let receiver: HookReceiver
    let clock: TestClock
    let handler: ConnectorHandler
    let configuration: ConnectorHandlerConfiguration

    /// A webhook resource that POSTs to the receiver, on the `EVENTS` stream, signed with the `hook-key` secret.
    func resource(_ id: ResourceID, subject: String = "events.>", _ extra: [String: JSONValue] = [:]) -> Resource {
        Resource(
            id: id,
            attributes: [
                "kind": "webhook", "url": .string("http://127.0.0.1:\(self.port)/hook"), "stream": "EVENTS",
                "subject": .string(subject), "secret": ["secret": "hook-key"],
            ].merging(extra) { $1 }
        )
    }

    /// Handles `resource` on `handler` (default: the bench's).
    func handle(_ resource: Resource, on handler: ConnectorHandler? = nil) async throws {
        try await (handler ?? self.handler).handle(resource, context: resourceContext(messaging: LocalMessaging()))
    }

    /// Terminates `resource` on `handler` (default: the bench's); returns when its connector ended.
    func terminate(
        _ resource: Resource,
        reason: TerminationReason = .removed,
        on handler: ConnectorHandler? = nil
    ) async throws {
        try await (handler ?? self.handler).terminate(
            resource,
            reason: reason,
            context: resourceContext(messaging: LocalMessaging())
        )
    }

    /// The numbers of the resource's durable consumer.
    func consumer(of id: ResourceID) async throws -> [String: Any] {
        try await self.nats.consumer("EVENTS", WebhookConnector.consumerName(for: id))
    }

    /// Waits (bounded) until the resource's consumer has nothing pending and nothing awaiting an ack.
    func settled(_ id: ResourceID) async throws -> Bool {
        try await eventually(.seconds(10)) {
            let info = try await self.consumer(of: id)
            return info["num_ack_pending"] as? Int == 0 && info["num_pending"] as? Int == 0
        }
    }

    /// Runs `body` with a second connector handler (another node's), on the same configuration, stopped after it.
    func withSecondHandler(_ body: @Sendable (ConnectorHandler) async throws -> Void) async throws {
        try await withConnectorHandler(
            registry: WebhookConnectorTests.registry(),
            configuration: self.configuration,
            body
        )
    }
}

/// Runs `body` on a fresh bench. Everything is structured and torn down inner first, on success and on failure: the
/// connector handler stops (its connectors return, their acks flushed) before the receiver goes, and the receiver
/// before the NATS server; each layer cancels its own server task, so that no task group waits for a server that
/// runs forever. `body` runs inline (it does not escape).
func withWebhookBench(
    receiver: HookReceiver = HookReceiver(),
    configure: (inout ConnectorHandlerConfiguration) -> Void = { _ in },
    _ body: @Sendable (WebhookBench) async throws -> Void
) async throws {
    let clock = TestClock()
    let base = configured(clock: clock) {
        $0.secrets = ConnectorSecrets(environment: ["STORK_SECRET_HOOK_KEY": "hook-secret"])
        configure(&$0)
    }
    try await withJetStream { nats in
        try await nats.createStream("EVENTS", subjects: ["events.>"])
        let configuration = configured {
            $0 = base
            $0.bus = nats.bus
        }
        try await withApplication(router: receiver.router) { port in
            try await withConnectorHandler(registry: WebhookConnectorTests.registry(), configuration: configuration) {
                handler in
                try await body(
                    WebhookBench(
                        nats: nats,
                        port: port,
                        receiver: receiver,
                        clock: clock,
                        handler: handler,
                        configuration: configuration
                    )
                )
            }
        }
    }
}

// MARK: - Tests

@Suite("webhook connector", .timeLimit(.minutes(1)))
struct WebhookConnectorTests {
    static func registry() -> ConnectorRegistry {
        var registry = ConnectorRegistry()
        registry.register(WebhookConnector(client: HTTPClient.shared, pullExpiry: .seconds(1)))
        return registry
    }

    @Test("each message is POSTed once, signed, with its delivery id, subject and content type, and acked")
    func delivery() async throws {
        try await withWebhookBench { bench in
            let (nats, receiver) = (bench.nats, bench.receiver)
            // Published before the resource starts: the consumer delivers everything from the start.
            try await nats.publish("events.a", "first", headers: MessageHeaders(fields: [("Content-Type", "text/plain")]))
            let resource = bench.resource("hook-1", subject: "events.a")
            try await bench.handle(resource)
            try await nats.publish("events.b", "not for this hook")
            try await nats.publish("events.a", "second")
            #expect(await eventually(.seconds(20)) { receiver.requests.count >= 2 })
            let requests = receiver.requests
            #expect(requests.map(\.body) == ["first", "second"])
            #expect(requests.map(\.deliveryID) == ["EVENTS:1", "EVENTS:3"])
            #expect(requests.allSatisfy { $0.signatureValid && $0.attempt == "1" && $0.subject == "events.a" })
            #expect(requests.map(\.contentType) == ["text/plain", "application/octet-stream"])

            #expect(try await bench.settled("hook-1"))
            let status = try #require(bench.handler.board.status(of: "hook-1"))
            #expect(status.state == .connected)
            #expect(status.messagesOut == 2)
            #expect(status.failures == 0)
            #expect(bench.clock.sleeps.isEmpty)
            #expect(nats.clientsMade.counts.withLock { $0 } == (1, 0), "this node's stream is consumed in process")
            try await bench.terminate(resource)
        }
    }

    @Test("a resource that names a server consumes its stream over NATS, with the same delivery and acks")
    func remoteServer() async throws {
        try await withWebhookBench { bench in
            let (nats, receiver) = (bench.nats, bench.receiver)
            let resource = bench.resource("hook-remote", subject: "events.r", ["server": .string("nats://127.0.0.1:\(nats.port)")])
            try await bench.handle(resource)
            try await nats.publish("events.r", "over the wire")
            #expect(await eventually(.seconds(20)) { receiver.requests.count >= 1 })
            #expect(receiver.requests.map(\.body) == ["over the wire"])
            #expect(try await bench.settled("hook-remote"))
            #expect(nats.clientsMade.counts.withLock { $0 } == (0, 1))
            try await bench.terminate(resource)
        }
    }

    @Test("failed POSTs are retried after backoff delays from the clock; the delivery id stays, the attempt counts")
    func retries() async throws {
        try await withWebhookBench(receiver: HookReceiver(mode: .failFirst(2, status: 500))) { bench in
            let (clock, receiver) = (bench.clock, bench.receiver)
            let resource = bench.resource("hook-retry", ["backoffMin": 0.5, "backoffMax": 4, "maxAttempts": 5])
            try await bench.handle(resource)
            try await bench.nats.publish("events.x", "payload")

            #expect(await clock.sleep(number: 1) == .milliseconds(500))
            #expect(receiver.requests.count == 1)
            clock.release()
            let second = try #require(await clock.sleep(number: 2))
            #expect(second >= .milliseconds(500) && second <= .seconds(1))
            #expect(receiver.requests.count == 2)
            clock.release()
            #expect(await eventually(.seconds(10)) { receiver.requests.count == 3 })

            let requests = receiver.requests
            #expect(requests.map(\.attempt) == ["1", "2", "3"])
            #expect(Set(requests.map(\.deliveryID)) == ["EVENTS:1"])
            #expect(requests.allSatisfy { $0.signatureValid })
            #expect(
                try await eventually(.seconds(10)) {
                    try await bench.consumer(of: "hook-retry")["num_ack_pending"] as? Int == 0
                }
            )
            let status = try #require(bench.handler.board.status(of: "hook-retry"))
            #expect(status.failures == 2)
            #expect(status.retries == 2)
            #expect(status.messagesOut == 1)
            #expect(status.lastError == "HTTP 500 from http://127.0.0.1:\(bench.port)/hook")
            try await bench.terminate(resource)
        }
    }

    @Test("after maxAttempts a message goes to the dead-letter subject with the error, and is terminated")
    func deadLetter() async throws {
        try await withWebhookBench(receiver: HookReceiver(mode: .always(503))) { bench in
            let (nats, clock, receiver) = (bench.nats, bench.clock, bench.receiver)
            let (_, dead) = try nats.client.subscribe("dead.hooks")
            try await nats.client.flush(timeout: .seconds(5))
            let resource = bench.resource(
                "hook-dead",
                ["maxAttempts": 3, "deadLetter": "dead.hooks", "backoffMin": 1, "backoffMax": 2]
            )
            try await bench.handle(resource)
            try await nats.publish(
                "events.d",
                "{\"n\":1}",
                headers: MessageHeaders(fields: [("Content-Type", "application/json")])
            )
            #expect(await clock.sleep(number: 1) == .seconds(1))
            clock.release()
            _ = try #require(await clock.sleep(number: 2))
            clock.release()

            var iterator = dead.makeAsyncIterator()
            let letter = try #require(await iterator.next())
            let headers = try #require(letter.headers)
            #expect(String(buffer: letter.payload) == "{\"n\":1}")
            #expect(headers["Stork-Error"] == "HTTP 503 from http://127.0.0.1:\(bench.port)/hook")
            #expect(headers["Stork-Original-Subject"] == "events.d")
            #expect(headers["Stork-Delivery-Id"] == "EVENTS:1")
            #expect(headers["Content-Type"] == "application/json")
            #expect(receiver.requests.map(\.attempt) == ["1", "2", "3"])
            #expect(clock.sleeps.count == 2, "no wait after the last attempt")

            #expect(try await bench.settled("hook-dead"))
            // The next message is delivered as usual.
            receiver.update(.ok)
            try await nats.publish("events.d", "next")
            #expect(await eventually(.seconds(10)) { receiver.requests.last?.body == "next" })
            try await bench.terminate(resource)
        }
    }

    @Test("a receiver that never answers times out; the attempt counts as failed")
    func timeout() async throws {
        try await withWebhookBench(receiver: HookReceiver(mode: .hang)) { bench in
            let receiver = bench.receiver
            let resource = bench.resource(
                "hook-slow",
                ["timeout": 0.2, "maxAttempts": 2, "backoffMin": 3, "backoffMax": 3]
            )
            try await bench.handle(resource)
            try await bench.nats.publish("events.t", "slow")
            #expect(await bench.clock.sleep(number: 1) == .seconds(3))
            let status = try #require(bench.handler.board.status(of: "hook-slow"))
            #expect(status.failures == 1)
            #expect(status.lastError?.contains("POST http://127.0.0.1:\(bench.port)/hook failed") == true)
            // Terminating while it waits for the next attempt gives the message back at once.
            try await bench.terminate(resource, reason: .moved)
            let info = try await bench.consumer(of: "hook-slow")
            #expect(info["num_pending"] as? Int == 0)
            #expect(receiver.requests.count == 1)

            // The next owner delivers it, starting from its first attempt.
            receiver.update(.ok)
            try await bench.handle(resource)
            #expect(await eventually(.seconds(10)) { receiver.requests.count == 2 })
            #expect(receiver.requests.last?.attempt == "1")
            #expect(receiver.requests.last?.deliveryID == "EVENTS:1")
            try await bench.terminate(resource)
        }
    }

    @Test("terminate during a POST in flight lets it finish and acks it; fetched messages not started go back")
    func terminateDuringPOST() async throws {
        let receiver = HookReceiver()
        receiver.hold(request: 0)
        // A grace period on the test's clock: its timer shows when terminate has fired the stop signal.
        try await withWebhookBench(receiver: receiver, configure: { $0.stopGracePeriod = .seconds(30) }) { bench in
            for payload in ["a", "b", "c"] { try await bench.nats.publish("events.i", payload) }
            let resource = bench.resource("hook-in-flight")
            try await bench.handle(resource)
            // The POST of "a" is in flight, held by the receiver.
            #expect(await eventually(.seconds(20)) { receiver.requests.count == 1 })
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await bench.terminate(resource, reason: .moved) }
                // Stopped: the handler waits out its grace period while the POST goes on; nothing else starts.
                #expect(await bench.clock.sleep(number: 1) == .seconds(30))
                #expect(receiver.requests.count == 1)
                receiver.releaseHeld()
                try await group.waitForAll()
            }
            #expect(bench.clock.pending == 0, "the connector returned within the grace period, not cancelled")
            #expect(bench.handler.board.status(of: "hook-in-flight") == nil)
            #expect(receiver.requests.map(\.body) == ["a"])
            // "a" was acked before terminate returned; "b" and "c" were given back (they wait for redelivery, so the
            // server still counts them as pending an ack).
            let info = try await bench.consumer(of: "hook-in-flight")
            #expect((info["ack_floor"] as? [String: Any])?["stream_seq"] as? Int == 1, "\(info)")
            #expect(info["num_ack_pending"] as? Int == 2, "\(info)")

            // The next owner delivers only what was given back, each from its first attempt.
            try await bench.handle(resource)
            #expect(await eventually(.seconds(20)) { receiver.requests.count == 3 })
            #expect(try await bench.settled("hook-in-flight"))
            let requests = receiver.requests
            #expect(requests.map(\.body) == ["a", "b", "c"])
            #expect(requests.map(\.deliveryID) == ["EVENTS:1", "EVENTS:2", "EVENTS:3"])
            #expect(requests.allSatisfy { $0.attempt == "1" })
            try await bench.terminate(resource)
        }
    }

    @Test("a move mid-stream: the next owner continues where the last stopped, every message exactly once")
    func moveExactlyOnce() async throws {
        try await withWebhookBench { bench in
            try await bench.withSecondHandler { second in
                let (first, receiver, clock) = (bench.handler, bench.receiver, bench.clock)
                let resource = bench.resource("hook-move", ["batch": 5])
                for index in 0..<60 { try await bench.nats.publish("events.m", "\(index)") }
                var owner = first
                for round in 0..<4 {
                    let target = 12 * (round + 1)
                    // The target-th POST is held: the move finds it in flight, and fetched messages not started.
                    receiver.hold(request: target - 1)
                    try await bench.handle(resource, on: owner)
                    #expect(await eventually(.seconds(20)) { receiver.delivered().count >= target })
                    let current = owner
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        group.addTask { try await bench.terminate(resource, reason: .moved, on: current) }
                        receiver.releaseHeld()
                        try await group.waitForAll()
                    }
                    owner = owner === first ? second : first
                }
                try await bench.handle(resource, on: owner)
                #expect(await eventually(.seconds(20)) { receiver.delivered().count == 60 })
                #expect(try await bench.settled("hook-move"))
                try await bench.terminate(resource, on: owner)
                let counts = receiver.delivered()
                #expect(counts.count == 60)
                #expect(counts.values.allSatisfy { $0 == 1 }, "duplicates: \(counts.filter { $0.value > 1 })")
                #expect(receiver.requests.count == 60)
                #expect(clock.sleeps.isEmpty)
            }
        }
    }

    @Test("bad attributes are rejected with the attribute's name")
    func validation() {
        let connector = WebhookConnector(client: HTTPClient.shared)
        let base: [String: JSONValue] = [
            "url": "http://127.0.0.1/hook", "stream": "EVENTS", "subject": "events.>", "secret": "s",
        ]
        let cases: [([String: JSONValue?], String)] = [
            (["url": nil], "'url' is required"),
            (["url": "ws://127.0.0.1/x"], "'url' must be a http:// or https:// URL"),
            (["stream": nil], "'stream' is required"),
            (["stream": "a.b"], "'stream' must be a stream name"),
            (["subject": "a..b"], "'subject' must be a subject"),
            (["secret": nil], "'secret' is required"),
            (["secret": 5], "'secret' must be a string or {\"secret\": \"NAME\"}"),
            (["secret": ["name": "x"]], "'secret' must be a string or {\"secret\": \"NAME\"}"),
            (["server": "http://127.0.0.1:4222"], "'server' must be a nats://host:port URL"),
            (["maxAttempts": 0], "'maxAttempts' must be between 1 and 1000"),
            (["batch": 2.5], "'batch' must be a whole number"),
            (["deadLetter": "dead.*"], "'deadLetter' must be a subject without wildcards"),
            (["timeout": 40], "'ackWait' must be longer than 'timeout' and 'backoffMax'"),
            (["backoffMin": 5, "backoffMax": 1], "'backoffMax' must not be less than backoffMin"),
        ]
        for (changes, message) in cases {
            var attributes = base.merging(["kind": "webhook"]) { $1 }
            for (key, value) in changes { attributes[key] = value }
            let resource = Resource(id: "r", attributes: attributes)
            #expect(throws: StorkError.self, "\(changes)") { try connector.validate(resource) }
            #expect {
                try connector.validate(resource)
            } throws: { error in
                (error as? StorkError)?.message.contains(message) == true
            }
        }
        let good = Resource(
            id: "r",
            attributes: base.merging(["kind": "webhook", "server": "nats://tok@10.0.0.1:4333"]) { $1 }
        )
        let settings = try? WebhookConnectorSettings(good)
        #expect(settings?.server == ConnectorNATSEndpoint(host: "10.0.0.1", port: 4333, token: "tok"))
        #expect(settings?.batch == 10)
        #expect(settings?.ackWait == .seconds(30))
    }

    @Test("consumer names are valid NATS names, stable, and differ for ids that sanitize alike")
    func consumerNames() {
        let dotted = WebhookConnector.consumerName(for: "tenant.a b*")
        let underscored = WebhookConnector.consumerName(for: "tenant_a_b_")
        #expect(dotted.hasPrefix("stork-webhook-tenant_a_b_-"))
        #expect(dotted != underscored)
        #expect(dotted == WebhookConnector.consumerName(for: "tenant.a b*"))
        #expect(!dotted.contains { $0 == "." || $0 == "*" || $0 == ">" || $0 == " " })
        #expect(
            WebhookConnector.signature(secret: "key", body: Array("The quick brown fox jumps over the lazy dog".utf8))
                == "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        )
    }
}
