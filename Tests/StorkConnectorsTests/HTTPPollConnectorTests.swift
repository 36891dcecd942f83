import AsyncHTTPClient
import Foundation
import HTTPTypes
import Hummingbird
import Prometheus
import StorkConnectors
import StorkCore
import StorkResources
import StorkTestKit
import Synchronization
import Testing

// MARK: - The state machine

@Suite("http-poll decisions")
struct HTTPPollStateMachineTests {
    let now = Date(timeIntervalSince1970: 1_700_000_000)

    func machine(_ publish: HTTPPollStateMachine.PublishMode = .changes) -> HTTPPollStateMachine {
        HTTPPollStateMachine(
            interval: .seconds(5),
            publish: publish,
            backoff: ConnectorBackoff(minimum: .seconds(1), maximum: .seconds(8), seed: 42)
        )
    }

    @Test("changed bodies are published, 304 and equal bodies are not; validators go back as conditional headers")
    func changes() {
        var machine = self.machine()
        #expect(machine.conditionalHeaders().isEmpty)
        let steps: [(HTTPPollStateMachine.Response, HTTPPollStateMachine.Action, [String])] = [
            (.init(status: 200, etag: "\"1\"", bodyHash: [1]), .publish(after: .seconds(5)), ["If-None-Match: \"1\""]),
            (.init(status: 304, etag: "\"1\""), .unchanged(after: .seconds(5)), ["If-None-Match: \"1\""]),
            (
                .init(status: 200, etag: "\"2\"", lastModified: "Tue, 14 Nov 2023 22:13:20 GMT", bodyHash: [2]),
                .publish(after: .seconds(5)),
                ["If-None-Match: \"2\"", "If-Modified-Since: Tue, 14 Nov 2023 22:13:20 GMT"]
            ),
            // A server without validators: the body hash decides.
            (.init(status: 200, bodyHash: [2]), .unchanged(after: .seconds(5)), []),
            (.init(status: 204, bodyHash: [3]), .publish(after: .seconds(5)), []),
        ]
        for (index, (response, expected, headers)) in steps.enumerated() {
            #expect(machine.received(response, now: self.now) == expected, "step \(index)")
            #expect(machine.conditionalHeaders().map { "\($0.name): \($0.value)" } == headers, "step \(index)")
        }
    }

    @Test("publish: always publishes every body and sends no conditional headers")
    func always() {
        var machine = self.machine(.always)
        #expect(
            machine.received(.init(status: 200, etag: "\"1\"", bodyHash: [1]), now: self.now)
                == .publish(after: .seconds(5))
        )
        #expect(machine.conditionalHeaders().isEmpty)
        #expect(
            machine.received(.init(status: 200, etag: "\"1\"", bodyHash: [1]), now: self.now)
                == .publish(after: .seconds(5))
        )
    }

    @Test("errors back off exponentially with jitter; 429 and 503 honour Retry-After in seconds or as a date")
    func failures() {
        var machine = self.machine()
        let bounds: [ClosedRange<Double>] = [1...1, 1...2, 2...4, 4...8, 4...8]
        for (index, bound) in bounds.enumerated() {
            guard case .retry(let after, let reason) = machine.received(.init(status: 500), now: self.now) else {
                Issue.record("no retry")
                return
            }
            #expect(bound.contains(after.secondsDouble), "failure \(index + 1): \(after)")
            #expect(reason == "HTTP 500")
        }
        // Success resets the backoff.
        #expect(machine.received(.init(status: 200, bodyHash: [1]), now: self.now) == .publish(after: .seconds(5)))
        #expect(machine.failed("connection refused") == .retry(after: .seconds(1), reason: "connection refused"))

        guard case .retry(let after, let reason) = machine.received(.init(status: 429, retryAfter: "7"), now: self.now)
        else {
            Issue.record("no retry")
            return
        }
        #expect(after == .seconds(7))
        #expect(reason.contains("429"))
        let date = "Tue, 14 Nov 2023 22:13:50 GMT"  // 30 s after `now`
        #expect(
            machine.received(.init(status: 503, retryAfter: date), now: self.now)
                == .retry(after: .seconds(30), reason: "HTTP 503 Service Unavailable, Retry-After 30.0 seconds")
        )
        #expect(HTTPPollStateMachine.retryAfter("Tue, 14 Nov 2023 22:13:00 GMT", now: self.now) == .zero)
        #expect(HTTPPollStateMachine.retryAfter("soon", now: self.now) == nil)
        #expect(HTTPPollStateMachine.retryAfter("Tuesday, 14-Nov-23 22:13:30 GMT", now: self.now) == .seconds(10))
        // A Retry-After of zero still waits backoffMin, so that a server cannot make the poller spin.
        guard case .retry(let zero, _) = machine.received(.init(status: 429, retryAfter: "0"), now: self.now) else {
            Issue.record("no retry")
            return
        }
        #expect(zero == .seconds(1))
    }

    @Test("backoff stays within its bounds")
    func backoff() {
        var backoff = ConnectorBackoff(minimum: .milliseconds(100), maximum: .seconds(1), seed: 7)
        var delays: [Duration] = []
        for _ in 0..<50 { delays.append(backoff.nextDelay()) }
        #expect(delays[0] == .milliseconds(100))
        #expect(delays.allSatisfy { $0 >= .milliseconds(100) && $0 <= .seconds(1) })
        #expect(Set(delays.suffix(20)).count > 1, "jittered")
        backoff.reset()
        #expect(backoff.nextDelay() == .milliseconds(100))
    }
}

// MARK: - Against a local server

/// An HTTP endpoint whose answers the test changes: `/poll` serves a body with an ETag (and honours If-None-Match),
/// or fails as told.
final class PollServer: Sendable {
    enum Mode: Sendable {
        case ok
        case status(Int)
        case tooMany(retryAfter: String?)
    }

    struct State {
        var body = "v1"
        var etag: String? = "\"1\""
        var mode = Mode.ok
        var requests: [[String: String]] = []
    }

    let state = Mutex(State())

    var requests: [[String: String]] { self.state.withLock { $0.requests } }

    func update(_ body: (inout State) -> Void) { self.state.withLock { body(&$0) } }

    var router: Router<BasicRequestContext> {
        let router = Router()
        router.get("/poll") { request, _ -> Response in
            var headers: [String: String] = [:]
            for field in request.headers { headers[field.name.canonicalName] = field.value }
            let state = self.state.withLock { state in
                state.requests.append(headers)
                return state
            }
            var fields = HTTPFields()
            switch state.mode {
            case .status(let code):
                return Response(status: .init(code: code), body: .init(byteBuffer: ByteBuffer(string: "no")))
            case .tooMany(let retryAfter):
                if let retryAfter { fields[HTTPField.Name("Retry-After")!] = retryAfter }
                return Response(status: .tooManyRequests, headers: fields)
            case .ok:
                if let etag = state.etag {
                    fields[HTTPField.Name("ETag")!] = etag
                    if headers["if-none-match"] == etag { return Response(status: .notModified, headers: fields) }
                }
                return Response(status: .ok, headers: fields, body: .init(byteBuffer: ByteBuffer(string: state.body)))
            }
        }
        return router
    }
}

@Suite("http-poll connector", .timeLimit(.minutes(1)))
struct HTTPPollConnectorTests {
    @Test("changes are published, 304 and equal bodies are not, 5xx backs off, 429 waits Retry-After; metrics count it")
    func pollLifecycle() async throws {
        let server = PollServer()
        let messaging = LocalMessaging()
        let clock = TestClock()
        let registry = PrometheusCollectorRegistry()
        try await withApplication(router: server.router) { port in
            var connectors = ConnectorRegistry()
            connectors.register(HTTPPollConnector(client: HTTPClient.shared))
            try await withConnectorHandler(
                registry: connectors,
                configuration: configured(clock: clock) {
                    $0.metricsFactory = PrometheusMetricsFactory(registry: registry)
                    $0.secrets = ConnectorSecrets(environment: ["STORK_SECRET_POLL_KEY": "k-123"])
                }
            ) { handler in
                let resource = Resource(
                    id: "poll-1",
                    attributes: [
                        "kind": "http-poll", "url": .string("http://127.0.0.1:\(port)/poll"),
                        "subject": "prices.poll-1",
                        "interval": 5, "timeout": 5, "backoffMin": 0.5, "backoffMax": 4,
                        "headers": ["X-Api-Key": ["secret": "poll.key"]],
                    ]
                )
                try await handler.handle(resource, context: resourceContext(messaging: messaging))
                let status = { handler.board.status(of: "poll-1") }

                // 1. 200 with an ETag: published; the next poll waits the interval.
                #expect(await clock.sleep(number: 1) == .seconds(5))
                #expect(messaging.published(on: "prices.poll-1") == ["v1"])
                #expect(status()?.state == .polling)
                #expect(server.requests[0]["x-api-key"] == "k-123")
                #expect(server.requests[0]["if-none-match"] == nil)

                // 2. Conditional request, 304: nothing published.
                clock.release()
                #expect(await clock.sleep(number: 2) == .seconds(5))
                #expect(server.requests[1]["if-none-match"] == "\"1\"")
                #expect(messaging.published(on: "prices.poll-1") == ["v1"])

                // 3. A new body: published.
                server.update {
                    $0.body = "v2"
                    $0.etag = "\"2\""
                }
                clock.release()
                #expect(await clock.sleep(number: 3) == .seconds(5))
                #expect(messaging.published(on: "prices.poll-1") == ["v1", "v2"])

                // 4. The same body without an ETag: the hash says unchanged.
                server.update { $0.etag = nil }
                clock.release()
                #expect(await clock.sleep(number: 4) == .seconds(5))
                #expect(messaging.published(on: "prices.poll-1") == ["v1", "v2"])

                // 5. 500 twice: backoff from backoffMin, failures and retries counted.
                server.update { $0.mode = .status(500) }
                clock.release()
                #expect(await clock.sleep(number: 5) == .milliseconds(500))
                #expect(status()?.state == .backoff)
                #expect(status()?.failures == 1)
                #expect(status()?.lastError == "HTTP 500")
                clock.release()
                let second = try #require(await clock.sleep(number: 6))
                #expect(second >= .milliseconds(500) && second <= .seconds(1))
                #expect(status()?.failures == 2)
                #expect(status()?.retries == 1)

                // 6. 429 with Retry-After: 7 s, whatever the backoff says.
                server.update { $0.mode = .tooMany(retryAfter: "7") }
                clock.release()
                #expect(await clock.sleep(number: 7) == .seconds(7))
                #expect(status()?.lastError?.contains("429") == true)

                // 7. Back to normal, with a new body: published, polling again at the interval.
                server.update {
                    $0.mode = .ok
                    $0.body = "v3"
                }
                clock.release()
                #expect(await clock.sleep(number: 8) == .seconds(5))
                #expect(messaging.published(on: "prices.poll-1") == ["v1", "v2", "v3"])
                #expect(status()?.state == .polling)
                #expect(status()?.messagesIn == 3)
                #expect(status()?.retries == 3)

                var text: [UInt8] = []
                registry.emit(into: &text)
                let lines = String(decoding: text, as: UTF8.self).split(separator: "\n").map(String.init)
                func sample(_ name: String, _ filter: String? = nil) -> String? {
                    lines.first { line in
                        line.hasPrefix(name + "{") && line.contains("resource=\"poll-1\"")
                            && line.contains("kind=\"http-poll\"")
                            && filter.map { line.contains($0) } ?? true
                    }
                }
                #expect(
                    sample("stork_connector_messages_total", "direction=\"in\"")?.hasSuffix(" 3") == true,
                    "\(lines)"
                )
                #expect(sample("stork_connector_failures_total")?.hasSuffix(" 3") == true)
                #expect(sample("stork_connector_retries_total")?.hasSuffix(" 3") == true)
                #expect(sample("stork_connector_up")?.hasSuffix(" 1.0") == true)

                try await handler.terminate(resource, reason: .removed, context: resourceContext(messaging: messaging))
                var after: [UInt8] = []
                registry.emit(into: &after)
                #expect(
                    !String(decoding: after, as: UTF8.self).contains("resource=\"poll-1\""),
                    "metrics of a stopped resource are removed"
                )
            }
        }
    }

    @Test("publish: always publishes every poll; a missing secret is a failed poll that says what to set")
    func alwaysAndMissingSecret() async throws {
        let server = PollServer()
        let messaging = LocalMessaging()
        let clock = TestClock()
        try await withApplication(router: server.router) { port in
            var connectors = ConnectorRegistry()
            connectors.register(HTTPPollConnector(client: HTTPClient.shared))
            try await withConnectorHandler(
                registry: connectors,
                configuration: configured(clock: clock) {
                    $0.secrets = ConnectorSecrets(environment: [:])
                }
            ) { handler in
                let always = Resource(
                    id: "poll-always",
                    attributes: [
                        "kind": "http-poll", "url": .string("http://127.0.0.1:\(port)/poll"), "subject": "p.a",
                        "publish": "always", "interval": 1,
                    ]
                )
                try await handler.handle(always, context: resourceContext(messaging: messaging))
                #expect(await clock.sleep(number: 1) == .seconds(1))
                clock.release()
                #expect(await clock.sleep(number: 2) == .seconds(1))
                #expect(messaging.published(on: "p.a") == ["v1", "v1"])
                #expect(server.requests.allSatisfy { $0["if-none-match"] == nil })
                try await handler.terminate(always, reason: .removed, context: resourceContext(messaging: messaging))

                let secret = Resource(
                    id: "poll-secret",
                    attributes: [
                        "kind": "http-poll", "url": .string("http://127.0.0.1:\(port)/poll"), "subject": "p.s",
                        "headers": ["Authorization": ["secret": "missing-token"]], "backoffMin": 2,
                    ]
                )
                try await handler.handle(secret, context: resourceContext(messaging: messaging))
                #expect(await clock.sleep(number: 3) == .seconds(2))
                let status = try #require(handler.board.status(of: "poll-secret"))
                #expect(status.state == .backoff)
                #expect(status.lastError?.contains("STORK_SECRET_MISSING_TOKEN") == true)
                #expect(messaging.published(on: "p.s").isEmpty)
                try await handler.terminate(secret, reason: .removed, context: resourceContext(messaging: messaging))
            }
        }
    }

    @Test("bad attributes are rejected with the attribute's name")
    func validation() {
        let connector = HTTPPollConnector(client: HTTPClient.shared)
        let cases: [([String: JSONValue], String)] = [
            (["subject": "a"], "'url' is required"),
            (["url": "ws://127.0.0.1/x", "subject": "a"], "'url' must be a http:// or https:// URL"),
            (["url": "http://127.0.0.1/x"], "'subject' is required"),
            (["url": "http://127.0.0.1/x", "subject": "a", "interval": 0], "'interval' must be between"),
            (
                ["url": "http://127.0.0.1/x", "subject": "a", "interval": true],
                "'interval' must be a number of seconds"
            ),
            (
                ["url": "http://127.0.0.1/x", "subject": "a", "timeout": "forever"],
                "'timeout' must be a number of seconds"
            ),
            (
                ["url": "http://127.0.0.1/x", "subject": "a", "publish": "sometimes"],
                "'publish' must be one of changes, always"
            ),
            (
                ["url": "http://127.0.0.1/x", "subject": "a", "maxBodyBytes": 1.5],
                "'maxBodyBytes' must be a whole number"
            ),
        ]
        for (attributes, message) in cases {
            let resource = Resource(id: "r", attributes: attributes.merging(["kind": "http-poll"]) { $1 })
            #expect {
                try connector.validate(resource)
            } throws: { error in
                (error as? StorkError)?.message.contains(message) == true
            }
        }
    }
}
