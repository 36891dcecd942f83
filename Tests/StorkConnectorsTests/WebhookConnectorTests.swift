import AsyncHTTPClient
import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import StorkConnectors
import StorkCore
import StorkNATS
import StorkResources
import StorkStreaming
import StorkTestKit
import Synchronization
import Testing

// MARK: - A NATS server with JetStream on loopback

/// A real NATS endpoint with JetStream (memory streams) on a free loopback port, and a client connected to it.
struct JetStreamFixture: Sendable {
    let port: Int
    let client: NATSClient

    var endpoint: ConnectorNATSEndpoint { ConnectorNATSEndpoint(host: "127.0.0.1", port: self.port) }

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
    func publish(_ subject: String, _ payload: String, headers: NATSHeaders? = nil) async throws -> Int {
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
            try await body(JetStreamFixture(port: address.port ?? 0, client: client))
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
/// says: 200, a status for the first `count` requests, always a status, or never (until the test ends).
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
        var delay: Duration = .zero
    }

    let secret: String
    private let state: Mutex<State>

    init(secret: String = "hook-secret", mode: Mode = .ok, delay: Duration = .zero) {
        self.secret = secret
        self.state = Mutex(State(mode: mode, delay: delay))
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
            let (index, mode, delay) = self.state.withLock { state in
                state.requests.append(recorded)
                return (state.requests.count - 1, state.mode, state.delay)
            }
            if delay > .zero { try await Task.sleep(for: delay) }
            switch mode {
            case .ok:
                return Response(status: .ok)
            case .failFirst(let count, let status):
                return Response(status: index < count ? .init(code: status) : .ok)
            case .always(let status):
                return Response(status: .init(code: status))
            case .hang:
                try await Task.sleep(for: .seconds(3600))
                return Response(status: .ok)
            }
        }
        return router
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

    static func resource(
        _ id: ResourceID,
        port: Int,
        subject: String = "events.>",
        _ extra: [String: JSONValue] = [:]
    ) -> Resource {
        Resource(
            id: id,
            attributes: [
                "kind": "webhook", "url": .string("http://127.0.0.1:\(port)/hook"), "stream": "EVENTS",
                "subject": .string(subject), "secret": ["secret": "hook-key"],
            ].merging(extra) { $1 }
        )
    }

    static func handlerConfiguration(_ clock: TestClock, nats: JetStreamFixture) -> ConnectorHandlerConfiguration {
        configured(clock: clock) {
            $0.nats = nats.endpoint
            $0.secrets = ConnectorSecrets(environment: ["STORK_SECRET_HOOK_KEY": "hook-secret"])
        }
    }

    @Test("each message is POSTed once, signed, with its delivery id, subject and content type, and acked")
    func delivery() async throws {
        let receiver = HookReceiver()
        let clock = TestClock()
        try await withJetStream { nats in
            try await nats.createStream("EVENTS", subjects: ["events.>"])
            try await withApplication(router: receiver.router) { port in
                try await withConnectorHandler(
                    registry: Self.registry(),
                    configuration: Self.handlerConfiguration(clock, nats: nats)
                ) { handler in
                    // Published before the resource starts: the consumer delivers everything from the start.
                    try await nats.publish("events.a", "first", headers: NATSHeaders(fields: [("Content-Type", "text/plain")]))
                    let resource = Self.resource("hook-1", port: port, subject: "events.a")
                    try await handler.handle(resource, context: resourceContext(messaging: LocalMessaging()))
                    try await nats.publish("events.b", "not for this hook")
                    try await nats.publish("events.a", "second")
                    #expect(await eventually(.seconds(20)) { receiver.requests.count >= 2 })
                    let requests = receiver.requests
                    #expect(requests.map(\.body) == ["first", "second"])
                    #expect(requests.map(\.deliveryID) == ["EVENTS:1", "EVENTS:3"])
                    #expect(requests.allSatisfy { $0.signatureValid && $0.attempt == "1" && $0.subject == "events.a" })
                    #expect(requests.map(\.contentType) == ["text/plain", "application/octet-stream"])

                    let consumer = WebhookConnector.consumerName(for: "hook-1")
                    #expect(
                        try await eventually(.seconds(10)) {
                            let info = try await nats.consumer("EVENTS", consumer)
                            return info["num_ack_pending"] as? Int == 0 && info["num_pending"] as? Int == 0
                        }
                    )
                    let status = try #require(handler.board.status(of: "hook-1"))
                    #expect(status.state == .connected)
                    #expect(status.messagesOut == 2)
                    #expect(status.failures == 0)
                    #expect(clock.sleeps.isEmpty)
                    try await handler.terminate(
                        resource,
                        reason: .removed,
                        context: resourceContext(messaging: LocalMessaging())
                    )
                }
            }
        }
    }

    @Test("failed POSTs are retried after backoff delays from the clock; the delivery id stays, the attempt counts")
    func retries() async throws {
        let receiver = HookReceiver(mode: .failFirst(2, status: 500))
        let clock = TestClock()
        try await withJetStream { nats in
            try await nats.createStream("EVENTS", subjects: ["events.>"])
            try await withApplication(router: receiver.router) { port in
                try await withConnectorHandler(
                    registry: Self.registry(),
                    configuration: Self.handlerConfiguration(clock, nats: nats)
                ) { handler in
                    let resource = Self.resource(
                        "hook-retry",
                        port: port,
                        ["backoffMin": 0.5, "backoffMax": 4, "maxAttempts": 5]
                    )
                    try await handler.handle(resource, context: resourceContext(messaging: LocalMessaging()))
                    try await nats.publish("events.x", "payload")

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
                    let consumer = WebhookConnector.consumerName(for: "hook-retry")
                    #expect(
                        try await eventually(.seconds(10)) {
                            try await nats.consumer("EVENTS", consumer)["num_ack_pending"] as? Int == 0
                        }
                    )
                    let status = try #require(handler.board.status(of: "hook-retry"))
                    #expect(status.failures == 2)
                    #expect(status.retries == 2)
                    #expect(status.messagesOut == 1)
                    #expect(status.lastError == "HTTP 500 from http://127.0.0.1:\(port)/hook")
                    try await handler.terminate(
                        resource,
                        reason: .removed,
                        context: resourceContext(messaging: LocalMessaging())
                    )
                }
            }
        }
    }

    @Test("after maxAttempts a message goes to the dead-letter subject with the error, and is terminated")
    func deadLetter() async throws {
        let receiver = HookReceiver(mode: .always(503))
        let clock = TestClock()
        try await withJetStream { nats in
            try await nats.createStream("EVENTS", subjects: ["events.>"])
            let (_, dead) = try nats.client.subscribe("dead.hooks")
            try await nats.client.flush(timeout: .seconds(5))
            try await withApplication(router: receiver.router) { port in
                try await withConnectorHandler(
                    registry: Self.registry(),
                    configuration: Self.handlerConfiguration(clock, nats: nats)
                ) { handler in
                    let resource = Self.resource(
                        "hook-dead",
                        port: port,
                        ["maxAttempts": 3, "deadLetter": "dead.hooks", "backoffMin": 1, "backoffMax": 2]
                    )
                    try await handler.handle(resource, context: resourceContext(messaging: LocalMessaging()))
                    try await nats.publish(
                        "events.d",
                        "{\"n\":1}",
                        headers: NATSHeaders(fields: [("Content-Type", "application/json")])
                    )
                    #expect(await clock.sleep(number: 1) == .seconds(1))
                    clock.release()
                    _ = try #require(await clock.sleep(number: 2))
                    clock.release()

                    var iterator = dead.makeAsyncIterator()
                    let letter = try #require(await iterator.next())
                    let headers = try #require(letter.headers.flatMap { NATSHeaders.parse($0) })
                    #expect(String(buffer: letter.payload) == "{\"n\":1}")
                    #expect(headers["Stork-Error"] == "HTTP 503 from http://127.0.0.1:\(port)/hook")
                    #expect(headers["Stork-Original-Subject"] == "events.d")
                    #expect(headers["Stork-Delivery-Id"] == "EVENTS:1")
                    #expect(headers["Content-Type"] == "application/json")
                    #expect(receiver.requests.map(\.attempt) == ["1", "2", "3"])
                    #expect(clock.sleeps.count == 2, "no wait after the last attempt")

                    let consumer = WebhookConnector.consumerName(for: "hook-dead")
                    #expect(
                        try await eventually(.seconds(10)) {
                            let info = try await nats.consumer("EVENTS", consumer)
                            return info["num_ack_pending"] as? Int == 0 && info["num_pending"] as? Int == 0
                        }
                    )
                    // The next message is delivered as usual.
                    receiver.update(.ok)
                    try await nats.publish("events.d", "next")
                    #expect(await eventually(.seconds(10)) { receiver.requests.last?.body == "next" })
                    try await handler.terminate(
                        resource,
                        reason: .removed,
                        context: resourceContext(messaging: LocalMessaging())
                    )
                }
            }
        }
    }

    @Test("a receiver that never answers times out; the attempt counts as failed")
    func timeout() async throws {
        let receiver = HookReceiver(mode: .hang)
        let clock = TestClock()
        try await withJetStream { nats in
            try await nats.createStream("EVENTS", subjects: ["events.>"])
            try await withApplication(router: receiver.router) { port in
                try await withConnectorHandler(
                    registry: Self.registry(),
                    configuration: Self.handlerConfiguration(clock, nats: nats)
                ) { handler in
                    let resource = Self.resource(
                        "hook-slow",
                        port: port,
                        ["timeout": 0.2, "maxAttempts": 2, "backoffMin": 3, "backoffMax": 3]
                    )
                    try await handler.handle(resource, context: resourceContext(messaging: LocalMessaging()))
                    try await nats.publish("events.t", "slow")
                    #expect(await clock.sleep(number: 1) == .seconds(3))
                    let status = try #require(handler.board.status(of: "hook-slow"))
                    #expect(status.failures == 1)
                    #expect(status.lastError?.contains("POST http://127.0.0.1:\(port)/hook failed") == true)
                    // Terminating while it waits for the next attempt gives the message back at once.
                    try await handler.terminate(
                        resource,
                        reason: .moved,
                        context: resourceContext(messaging: LocalMessaging())
                    )
                    let consumer = WebhookConnector.consumerName(for: "hook-slow")
                    let info = try await nats.consumer("EVENTS", consumer)
                    #expect(info["num_pending"] as? Int == 0)
                    #expect(receiver.requests.count == 1)

                    // The next owner delivers it, starting from its first attempt.
                    receiver.update(.ok)
                    try await handler.handle(resource, context: resourceContext(messaging: LocalMessaging()))
                    #expect(await eventually(.seconds(10)) { receiver.requests.count == 2 })
                    #expect(receiver.requests.last?.attempt == "1")
                    #expect(receiver.requests.last?.deliveryID == "EVENTS:1")
                    try await handler.terminate(
                        resource,
                        reason: .removed,
                        context: resourceContext(messaging: LocalMessaging())
                    )
                }
            }
        }
    }

    @Test("a move mid-stream: the next owner continues where the last stopped, every message exactly once")
    func moveExactlyOnce() async throws {
        // A slow receiver, so that the move finds POSTs in flight and fetched messages not yet started.
        let receiver = HookReceiver(mode: .ok, delay: .milliseconds(15))
        let clock = TestClock()
        try await withJetStream { nats in
            try await nats.createStream("EVENTS", subjects: ["events.>"])
            try await withApplication(router: receiver.router) { port in
                let configuration = Self.handlerConfiguration(clock, nats: nats)
                try await withConnectorHandler(registry: Self.registry(), configuration: configuration) { first in
                    try await withConnectorHandler(registry: Self.registry(), configuration: configuration) { second in
                        let resource = Self.resource("hook-move", port: port, ["batch": 5])
                        let context = resourceContext(messaging: LocalMessaging())
                        for index in 0..<60 { try await nats.publish("events.m", "\(index)") }
                        var owner = first
                        for round in 0..<4 {
                            try await owner.handle(resource, context: context)
                            let target = 12 * (round + 1)
                            #expect(await eventually(.seconds(20)) { receiver.delivered().count >= target })
                            try await owner.terminate(resource, reason: .moved, context: context)
                            owner = owner === first ? second : first
                        }
                        try await owner.handle(resource, context: context)
                        #expect(await eventually(.seconds(20)) { receiver.delivered().count == 60 })
                        let consumer = WebhookConnector.consumerName(for: "hook-move")
                        #expect(
                            try await eventually(.seconds(10)) {
                                let info = try await nats.consumer("EVENTS", consumer)
                                return info["num_ack_pending"] as? Int == 0 && info["num_pending"] as? Int == 0
                            }
                        )
                        try await owner.terminate(resource, reason: .removed, context: context)
                        let counts = receiver.delivered()
                        #expect(counts.count == 60)
                        #expect(counts.values.allSatisfy { $0 == 1 }, "duplicates: \(counts.filter { $0.value > 1 })")
                        #expect(receiver.requests.count == 60)
                        #expect(clock.sleeps.isEmpty)
                    }
                }
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
