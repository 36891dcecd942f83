import Foundation
import StorkConnectors
import StorkCore
import StorkResources
import StorkTestKit
import Testing

@Suite("websocket connector", .timeLimit(.minutes(1)))
struct WebSocketConnectorTests {
    func feedResource(port: Int, path: String = "/feed", _ extra: [String: JSONValue] = [:]) -> Resource {
        var attributes: [String: JSONValue] = [
            "kind": "websocket",
            "url": .string("ws://127.0.0.1:\(port)\(path)"),
            "subject": "nest.acct-42",
        ]
        for (key, value) in extra { attributes[key] = value }
        return Resource(id: "acct-42", attributes: attributes)
    }

    @Test(
        "received messages reach the subject, outbound messages reach the server, headers and a secret arrive, terminate closes"
    )
    func messagesBothWays() async throws {
        let server = FeedServer()
        let messaging = LocalMessaging()
        try await withApplication(server: server.builder) { port in
            try await withConnectorHandler(
                configuration: configured {
                    $0.secrets = ConnectorSecrets(environment: ["STORK_SECRET_FEED_TOKEN": "Bearer s3cret"])
                }
            ) { handler in
                let resource = self.feedResource(
                    port: port,
                    [
                        "outbound": "cmd.acct-42",
                        "headers": ["X-Account": "acct-42", "Authorization": ["secret": "feed-token"]],
                    ]
                )
                try await handler.handle(resource, context: resourceContext(messaging: messaging))
                #expect(
                    await eventually(.seconds(10)) {
                        handler.board.status(of: "acct-42")?.state == .connected && server.openConnections == 1
                    }
                )
                #expect(server.headers.first?["authorization"] == "Bearer s3cret")
                #expect(server.headers.first?["x-account"] == "acct-42")

                server.send(.text("hello"))
                server.send(.binary([0, 1, 2, 255]))
                #expect(await eventually(.seconds(10)) { messaging.publishedPayloads(on: "nest.acct-42").count == 2 })
                #expect(messaging.publishedPayloads(on: "nest.acct-42") == [Array("hello".utf8), [0, 1, 2, 255]])

                #expect(await eventually(.seconds(10)) { messaging.subscribers(of: "cmd.acct-42") == 1 })
                messaging.publish(StorkMessage(subject: "cmd.acct-42", payload: Array("subscribe trades".utf8)))
                #expect(await eventually(.seconds(10)) { server.received == ["subscribe trades"] })

                #expect(await eventually(.seconds(5)) { handler.board.status(of: "acct-42")?.messagesOut == 1 })
                let status = try #require(handler.board.status(of: "acct-42"))
                #expect(status.kind == "websocket")
                #expect(status.messagesIn == 2)
                #expect(status.failures == 0 && status.retries == 0)

                // Terminate cancels the connection and returns when it is gone.
                try await handler.terminate(resource, reason: .removed, context: resourceContext(messaging: messaging))
                #expect(handler.board.status(of: "acct-42") == nil)
                #expect(await eventually(.seconds(10)) { server.openConnections == 0 })
                #expect(messaging.subscribers(of: "cmd.acct-42") == 0)
                #expect(server.connections == 1)
            }
        }
    }

    @Test(
        "a connection the server closes is reopened after backoffMin; refused upgrades back off exponentially with jitter"
    )
    func reconnectWithBackoff() async throws {
        let server = FeedServer()
        let messaging = LocalMessaging()
        let clock = TestClock()
        try await withApplication(server: server.builder) { port in
            try await withConnectorHandler(configuration: configured(clock: clock)) { handler in
                let resource = self.feedResource(port: port, ["backoffMin": 0.5, "backoffMax": 4])
                try await handler.handle(resource, context: resourceContext(messaging: messaging))
                #expect(
                    await eventually(.seconds(10)) {
                        handler.board.status(of: "acct-42")?.state == .connected && server.openConnections == 1
                    }
                )

                server.send(.close)
                #expect(await clock.sleep(number: 1) == .milliseconds(500))
                var status = try #require(handler.board.status(of: "acct-42"))
                #expect(status.state == .backoff)
                #expect(status.failures == 1)
                #expect(status.lastError?.contains("closed") == true)
                #expect(server.connections == 1, "no reconnect before the backoff ends")

                clock.release()
                #expect(await eventually(.seconds(10)) { server.connections == 2 })
                #expect(
                    await eventually(.seconds(10)) {
                        handler.board.status(of: "acct-42")?.state == .connected && server.openConnections == 1
                    }
                )
                status = try #require(handler.board.status(of: "acct-42"))
                #expect(status.retries == 1)
                server.send(.text("after reconnect"))
                #expect(
                    await eventually(.seconds(10)) { messaging.published(on: "nest.acct-42") == ["after reconnect"] }
                )
                try await handler.terminate(resource, reason: .removed, context: resourceContext(messaging: messaging))

                // A path the server refuses to upgrade: every attempt fails, and the waits grow up to backoffMax.
                let refused = Resource(
                    id: "acct-43",
                    attributes: self.feedResource(port: port, path: "/nope", ["backoffMin": 0.5, "backoffMax": 4])
                        .attributes.merging(["id": "acct-43"]) { $1 }
                )
                try await handler.handle(refused, context: resourceContext(messaging: messaging))
                let bounds: [ClosedRange<Double>] = [0.5...0.5, 0.5...1, 1...2, 2...4, 2...4, 2...4]
                for (index, bound) in bounds.enumerated() {
                    let delay = try #require(await clock.sleep(number: 2 + index))
                    #expect(bound.contains(delay.secondsDouble), "wait \(index + 1): \(delay) not in \(bound)")
                    clock.release()
                }
                #expect(
                    await eventually(.seconds(10)) {
                        (handler.board.status(of: "acct-43")?.failures ?? 0) >= bounds.count
                    }
                )
                #expect(handler.board.status(of: "acct-43")?.lastError?.contains("upgrade") == true)
                try await handler.terminate(refused, reason: .removed, context: resourceContext(messaging: messaging))
            }
        }
    }

    @Test("no pong within the heartbeat closes the connection, and the connector reconnects")
    func heartbeatTimeout() async throws {
        let server = FeedServer()
        let messaging = LocalMessaging()
        let clock = TestClock()
        try await withApplication(server: server.builder) { port in
            try await withConnectorHandler(configuration: configured(clock: clock)) { handler in
                let resource = self.feedResource(port: port, path: "/silent", ["heartbeat": 0.2, "backoffMin": 0.25])
                try await handler.handle(resource, context: resourceContext(messaging: messaging))
                #expect(await eventually(.seconds(10)) { server.connections == 1 })
                // The server never answers the ping: the client gives up on the connection after the heartbeat.
                #expect(await clock.sleep(number: 1) == .milliseconds(250))
                #expect(handler.board.status(of: "acct-42")?.failures == 1)
                clock.release()
                #expect(await eventually(.seconds(10)) { server.connections == 2 })
                try await handler.terminate(resource, reason: .removed, context: resourceContext(messaging: messaging))
            }
        }
    }

    @Test("a heartbeat the server answers keeps the connection")
    func heartbeatAnswered() async throws {
        let server = FeedServer()
        let messaging = LocalMessaging()
        let clock = TestClock()
        let tap = WebSocketTap()
        try await withApplication(server: server.builder) { serverPort in
            // The connector reaches the server through the tap, which counts the pings and pongs on the wire.
            try await tap.run(upstream: serverPort) { port in
                try await withConnectorHandler(configuration: configured(clock: clock)) { handler in
                    let resource = self.feedResource(port: port, ["heartbeat": 1])
                    try await handler.handle(resource, context: resourceContext(messaging: messaging))
                    #expect(
                        await eventually(.seconds(10)) {
                            handler.board.status(of: "acct-42")?.state == .connected && server.openConnections == 1
                        }
                    )
                    // Two heartbeats pass while messages flow: the pongs keep the one connection open.
                    for index in 0..<3 {
                        server.send(.text("tick \(index)"))
                        #expect(
                            await eventually(.seconds(10)) {
                                messaging.published(on: "nest.acct-42").count == index + 1
                            },
                            "\(String(describing: handler.board.status(of: "acct-42")))"
                        )
                        if index < 2 {
                            // The next heartbeat: a ping out and its pong back (the client's own timer).
                            #expect(await eventually(.seconds(20)) { tap.pongs >= index + 1 })
                        }
                    }
                    #expect(tap.pings >= 2)
                    #expect(server.connections == 1)
                    #expect(clock.sleeps.isEmpty)
                    try await handler.terminate(
                        resource,
                        reason: .removed,
                        context: resourceContext(messaging: messaging)
                    )
                }
            }
        }
    }

    @Test("bad attributes are rejected with the attribute's name")
    func validation() throws {
        let connector = WebSocketConnector()
        let cases: [([String: JSONValue], String)] = [
            ([:], "'url' is required"),
            (["url": "http://127.0.0.1/x", "subject": "a"], "'url' must be a ws:// or wss:// URL"),
            (["url": 7, "subject": "a"], "'url' must be a string"),
            (["url": "ws://127.0.0.1/x"], "'subject' is required"),
            (["url": "ws://127.0.0.1/x", "subject": "a.*"], "'subject' must be a subject without wildcards"),
            (["url": "ws://127.0.0.1/x", "subject": "a..b"], "no empty tokens"),
            (["url": "ws://127.0.0.1/x", "subject": "a", "outbound": "a.>.b"], "'outbound' may have '>' only"),
            (["url": "ws://127.0.0.1/x", "subject": "a", "headers": ["X": 1]], "header 'X' must be a string"),
            (
                ["url": "ws://127.0.0.1/x", "subject": "a", "headers": ["X": ["secret": ""]]],
                "header 'X' must be a string"
            ),
            (["url": "ws://127.0.0.1/x", "subject": "a", "headers": ["bad name": "v"]], "not an HTTP token"),
            (["url": "ws://127.0.0.1/x", "subject": "a", "headers": "x"], "'headers' must be an object"),
            (["url": "ws://127.0.0.1/x", "subject": "a", "heartbeat": -1], "'heartbeat' must be between"),
            (
                ["url": "ws://127.0.0.1/x", "subject": "a", "heartbeat": "soon"],
                "'heartbeat' must be a number of seconds"
            ),
            (
                ["url": "ws://127.0.0.1/x", "subject": "a", "backoffMin": 10, "backoffMax": 1],
                "'backoffMax' must not be less"
            ),
        ]
        for (attributes, message) in cases {
            let resource = Resource(id: "r", attributes: attributes.merging(["kind": "websocket"]) { $1 })
            do {
                try connector.validate(resource)
                Issue.record("accepted \(attributes)")
            } catch let error as StorkError {
                #expect(error.code == .invalidInput)
                #expect(error.message.contains(message), "\(error.message) lacks \(message)")
                #expect(error.message.hasPrefix("resource r (websocket): "))
            }
        }
        let good = Resource(
            id: "r",
            attributes: [
                "kind": "websocket", "url": "wss://feeds.example/x", "subject": "a.b", "outbound": "cmd.>",
                "headers": ["Authorization": ["secret": "t"]], "heartbeat": "500ms", "backoffMin": 0.1,
                "backoffMax": "2m",
            ]
        )
        let settings = try WebSocketConnectorSettings(good)
        #expect(settings.heartbeat == .milliseconds(500))
        #expect(settings.backoffMaximum == .seconds(120))
        #expect(settings.headers == [ConnectorHeader(name: "Authorization", value: .secret("t"))])
    }
}
