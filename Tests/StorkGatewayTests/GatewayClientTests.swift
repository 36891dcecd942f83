import Foundation
import Logging
import NIOCore
import StorkCore
import StorkNATS
import StorkRealtime
import StorkTestKit
import Synchronization
import Testing

@testable import StorkGateway

// MARK: - The Swift client against a real gateway on a loopback port

@Suite("Gateway Swift client")
struct GatewayClientTests {
    static let users: UsersFileAuthenticator = {
        let document: JSONValue = [
            "users": [
                ["id": "alice", "password": .string(PasswordHash(password: "wonderland", iterations: 1000).encoded)],
                [
                    "id": "bob", "password": .string(PasswordHash(password: "builder", iterations: 1000).encoded),
                    "roles": ["responder"],
                ],
            ]
        ]
        return try! UsersFileAuthenticator(document: document)
    }()

    static func configuration(_ port: Int, _ credentials: Credentials) -> GatewayClientConfiguration {
        var configuration = GatewayClientConfiguration(url: "ws://127.0.0.1:\(port)/v1/ws", credentials: credentials)
        configuration.answerTimeout = .seconds(20)  // a bound, not a speed
        return configuration
    }

    /// The next element of a sequence, or nil when it ended or `timeout` passed (a bound, not a speed).
    static func next<S: AsyncSequence & Sendable>(
        _ sequence: S,
        timeout: Duration = .seconds(20)
    ) async throws -> S.Element? where S.Element: Sendable {
        try await withThrowingTaskGroup(of: S.Element?.self) { group in
            group.addTask {
                var iterator = sequence.makeAsyncIterator()
                return try await iterator.next()
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            defer { group.cancelAll() }
            return try await group.next() ?? nil
        }
    }

    @Test("the client encodes every action as the server's codec reads it")
    func codecRoundTrip() throws {
        let messages: [GatewayClientMessage] = [
            .auth(credentials: .password(user: "alice", password: "p\"w"), resume: nil),
            .auth(credentials: .token("t0k"), resume: GatewayResume(session: "s1", lastSequence: 41)),
            .subscribe(subject: "a.*.>", from: nil),
            .subscribe(subject: "a.b", from: .sequence(3)),
            .subscribe(subject: "a.b", from: .time(milliseconds: 1_700_000_000_000)),
            .subscribe(subject: "a.b", from: .last(10)),
            .unsubscribe(subject: "a.b"),
            .publish(subject: "a.b", data: ["x": [1, "two", nil, true]]),
            .request(subject: "rpc.add", data: [1, 2], timeoutMilliseconds: 2000),
            .respond(to: "_GW.n.1", data: 3),
            .presence(subject: "rooms.r1"),
            .runnerOpen(runner: "greeting"),
            .runnerRun(instance: "r1", inputs: ["name": "Ada"]),
            .runnerPause(instance: "r1"),
            .runnerResume(instance: "r1"),
            .runnerClose(instance: "r1"),
            .ping,
        ]
        for (index, message) in messages.enumerated() {
            let text = message.encodedText(id: .number(Double(index)))
            let frame = try GatewayClientFrame.decode(Array(text.utf8))
            #expect(frame == GatewayClientFrame(id: .number(Double(index)), message: message), "\(text)")
        }
    }

    @Test("the client reads the server's frames")
    func serverFrames() throws {
        let message = GatewayServerFrame.message(
            seq: 7, subject: "orders.eu.1", data: GatewayPayload(bytes: Array("plain".utf8)), replyTo: "_GW.x.1",
            stream: "ORDERS", streamSeq: 120
        )
        let decoded = try GatewayClientInbound.decode(String(decoding: message.encoded, as: UTF8.self))
        #expect(
            decoded
                == .message(
                    GatewayMessage(
                        sequence: 7, subject: "orders.eu.1", data: "plain", encoding: .text, replyTo: "_GW.x.1",
                        stream: "ORDERS", streamSequence: 120
                    )
                )
        )
        let welcome = GatewayServerFrame.welcome(
            id: "auth", session: "s1", user: AuthenticatedUser(id: "alice", roles: ["member"]), recovered: true
        )
        guard case .answer(_, "welcome", let fields) = try GatewayClientInbound.decode(String(decoding: welcome.encoded, as: UTF8.self))
        else {
            Issue.record("not an answer")
            return
        }
        #expect(
            GatewayClientInbound.welcome(fields)
                == GatewayWelcome(session: "s1", user: AuthenticatedUser(id: "alice", roles: ["member"]), recovered: true)
        )
        #expect(throws: GatewayClientError.self) { try GatewayClientInbound.decode("[1]") }
    }

    @Test("reconnection backs off exponentially up to the maximum")
    func backoff() {
        var reconnect = GatewayClientConfiguration.Reconnect()
        reconnect.initialDelay = .milliseconds(100)
        reconnect.maxDelay = .seconds(1)
        #expect((0..<6).map { reconnect.delay(attempt: $0) } == [
            .milliseconds(100), .milliseconds(200), .milliseconds(400), .milliseconds(800), .seconds(1), .seconds(1),
        ])
    }

    @Test("a user logs in with a password and gets a session; a wrong password throws auth_failed")
    func authentication() async throws {
        try await withGateway(authentication: AuthenticationChain([Self.users]), rules: ownChannelRules) { _, port in
            let welcome = try await withGatewayClient(
                configuration: Self.configuration(port, .password(user: "alice", password: "wonderland")),
                logger: quietLogger("client")
            ) { client in
                try await client.ping()
                return try #require(client.welcome)
            }
            #expect(welcome.user.id == "alice")
            #expect(!welcome.session.isEmpty)
            #expect(welcome.recovered == nil)

            let error = await #expect(throws: GatewayClientError.self) {
                try await withGatewayClient(
                    configuration: Self.configuration(port, .password(user: "alice", password: "nope")),
                    logger: quietLogger("client")
                ) { _ in }
            }
            #expect(error?.code == .authFailed)
            #expect(error?.message.isEmpty == false)
        }
    }

    @Test("nothing listens: the first connection throws connect_failed")
    func connectFailure() async throws {
        // Port 1 on the loopback interface: nothing listens there (the connection is refused).
        let error = await #expect(throws: GatewayClientError.self) {
            try await withGatewayClient(
                configuration: Self.configuration(1, .none),
                logger: quietLogger("client")
            ) { _ in }
        }
        #expect(error?.code == .connectFailed)
    }

    @Test("publish and subscribe round trip; refusals carry the server's code")
    func publishSubscribe() async throws {
        try await withGateway(authentication: AuthenticationChain([Self.users]), rules: ownChannelRules) { _, port in
            try await withGatewayClient(
                configuration: Self.configuration(port, .password(user: "alice", password: "wonderland")),
                logger: quietLogger("client")
            ) { client in
                let notes = try await client.subscribe("users.alice.>")
                #expect(notes.replayed == nil)
                try await client.publish("users.alice.notes", data: ["text": "hello \"you\""])
                let message = try await Self.next(notes)
                #expect(message?.subject == "users.alice.notes")
                #expect(message?.data == ["text": "hello \"you\""])
                #expect(message?.encoding == .json)
                #expect(message?.sequence == 1)

                let refused = await #expect(throws: GatewayClientError.self) {
                    try await client.subscribe("users.bob.>")
                }
                #expect(refused?.code == .forbidden)
                let publishRefused = await #expect(throws: GatewayClientError.self) {
                    try await client.publish("users.bob.inbox", data: 1)
                }
                #expect(publishRefused?.code == .forbidden)

                // After unsubscribing, the sequence ends and nothing more arrives.
                try await notes.unsubscribe()
                try await client.publish("users.alice.notes", data: 2)
                var after: [GatewayMessage] = []
                for try await message in notes { after.append(message) }
                #expect(after.isEmpty)
            }
        }
    }

    @Test("request and respond between two clients")
    func requestRespond() async throws {
        try await withGateway(authentication: AuthenticationChain([Self.users]), rules: ownChannelRules) { _, port in
            try await withGatewayClient(
                configuration: Self.configuration(port, .password(user: "bob", password: "builder")),
                logger: quietLogger("bob")
            ) { bob in
                let calls = try await bob.subscribe("rpc.add")
                try await withGatewayClient(
                    configuration: Self.configuration(port, .password(user: "alice", password: "wonderland")),
                    logger: quietLogger("alice")
                ) { alice in
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        group.addTask {
                            guard let call = try await Self.next(calls), let replyTo = call.replyTo,
                                case .array(let terms) = call.data
                            else { throw GatewayClientError(.protocolError, "no request arrived") }
                            let sum = terms.reduce(0.0) { total, term in
                                if case .number(let value) = term { return total + value }
                                return total
                            }
                            try await bob.respond(to: replyTo, data: .number(sum))
                        }
                        let reply = try await alice.request("rpc.add", data: [1, 2], timeout: .seconds(20))
                        #expect(reply == 3)
                        try await group.waitForAll()
                    }
                    // Only a request this session received may be answered.
                    let error = await #expect(throws: GatewayClientError.self) {
                        try await bob.respond(to: "_GW.test.999", data: 0)
                    }
                    #expect(error?.code == "not_a_request")
                }
            }
        }
    }

    @Test("presence lists the users subscribed to a subject")
    func presence() async throws {
        try await withGateway(rules: ownChannelRules) { _, port in
            try await withGatewayClient(configuration: Self.configuration(port, .password(user: "ann", password: "")), logger: quietLogger("ann")) { ann in
                try await withGatewayClient(configuration: Self.configuration(port, .password(user: "ben", password: "")), logger: quietLogger("ben")) { ben in
                    _ = try await ann.subscribe("public.room")
                    _ = try await ben.subscribe("public.>")
                    #expect(try await ann.presence("public.room") == ["ann", "ben"])
                }
            }
        }
    }

    @Test("after a dropped connection the client reconnects, resumes its session and gets what it missed")
    func resumeAfterDrop() async throws {
        let router = NATSRouter()
        let clock = ManualClock()
        try await withGateway(rules: ownChannelRules, router: router) { gateway, port in
            var configuration = Self.configuration(port, .password(user: "frank", password: ""))
            configuration.reconnect.initialDelay = .seconds(1)
            try await withGatewayClient(configuration: configuration, clock: clock, logger: quietLogger("frank")) { client in
                let events = client.connectionEvents()
                let session = try #require(client.welcome?.session)
                let messages = try await client.subscribe("users.frank.>")
                router.publish(NATSMessage(subject: "users.frank.a", payload: ByteBuffer(string: "1")))
                #expect(try await Self.next(messages)?.data == 1)

                client.dropConnection()
                #expect(try await Self.next(events) == .disconnected)
                #expect(await eventually(.seconds(20)) { gateway.session(session)?.disconnectedSince() != nil })
                // While the client waits to reconnect (the manual clock holds it), messages keep coming.
                for n in 2...4 { router.publish(NATSMessage(subject: "users.frank.a", payload: ByteBuffer(string: "\(n)"))) }
                await clock.sleepsStarted(atLeast: 1)
                clock.advance(by: .seconds(1))

                guard case .reconnected(let welcome, let recovered)? = try await Self.next(events) else {
                    Issue.record("the client did not reconnect")
                    return
                }
                #expect(recovered)
                #expect(welcome.session == session)
                #expect(welcome.recovered == true)
                var missed: [GatewayMessage] = []
                for _ in 0..<3 { if let message = try await Self.next(messages) { missed.append(message) } }
                #expect(missed.map(\.sequence) == [2, 3, 4])
                #expect(missed.map(\.data) == [2, 3, 4])
                // The subscription came back with the session; actions work on the new connection.
                try await client.publish("users.frank.b", data: 5)
                #expect(try await Self.next(messages)?.sequence == 5)
                #expect(client.lastSequence == 5)
            }
        }
    }

    @Test("when the session is gone, the client gets a new one, reports it not recovered and subscribes again")
    func resumeExpired() async throws {
        let router = NATSRouter()
        let clock = ManualClock()
        let gatewayClock = ManualClock()
        try await withGateway(rules: ownChannelRules, router: router, clock: gatewayClock.gatewayClock) { gateway, port in
            var configuration = Self.configuration(port, .password(user: "gina", password: ""))
            configuration.reconnect.initialDelay = .seconds(1)
            try await withGatewayClient(configuration: configuration, clock: clock, logger: quietLogger("gina")) { client in
                let events = client.connectionEvents()
                let session = try #require(client.welcome?.session)
                let messages = try await client.subscribe("users.gina.>")
                client.dropConnection()
                #expect(try await Self.next(events) == .disconnected)
                #expect(await eventually(.seconds(20)) { gateway.session(session)?.disconnectedSince() != nil })
                gatewayClock.advance(by: .seconds(61))
                gateway.expireSessions()
                #expect(gateway.session(session) == nil)
                await clock.sleepsStarted(atLeast: 1)
                clock.advance(by: .seconds(1))

                guard case .reconnected(let welcome, let recovered)? = try await Self.next(events) else {
                    Issue.record("the client did not reconnect")
                    return
                }
                #expect(!recovered)
                #expect(welcome.session != session)
                #expect(welcome.recovered == false)
                // The subscription was made again on the new session (before the publish below, in order).
                try await client.publish("users.gina.x", data: "again")
                let message = try await Self.next(messages)
                #expect(message?.data == "again")
                #expect(message?.sequence == 1)
            }
        }
    }

    @Test("subscribe with from replays stored messages with their stream position, then live ones")
    func replay() async throws {
        try await withJetStream { router, jetstream in
            _ = try await routerRequest(
                router, "$JS.API.STREAM.CREATE.HIST", #"{"name":"HIST","subjects":["history.>"],"storage":"memory"}"#
            )
            for n in 1...5 {
                router.publish(NATSMessage(subject: "history.room", payload: ByteBuffer(string: "{\"n\":\(n)}")))
            }
            #expect(await eventually(.seconds(20)) {
                (try? await jetstream.history(subject: "history.room", from: .sequence(1), limit: 10))?.messages.count == 5
            })
            try await withGateway(rules: ownChannelRules, router: router, jetstream: jetstream) { _, port in
                try await withGatewayClient(configuration: Self.configuration(port, .password(user: "ivy", password: "")), logger: quietLogger("ivy")) { client in
                    let history = try await client.subscribe("history.>", from: .sequence(3))
                    #expect(history.replayed == 3)
                    var replayed: [GatewayMessage] = []
                    for _ in 0..<3 { if let message = try await Self.next(history) { replayed.append(message) } }
                    #expect(replayed.map(\.streamSequence) == [3, 4, 5])
                    #expect(replayed.map(\.data) == [["n": 3], ["n": 4], ["n": 5]])
                    #expect(replayed.allSatisfy { $0.stream == "HIST" })
                    try await client.publish("history.room", data: ["n": 6])
                    #expect(try await Self.next(history)?.data == ["n": 6])

                    let none = await #expect(throws: GatewayClientError.self) {
                        try await client.subscribe("public.x", from: .last(1))
                    }
                    #expect(none?.code == "no_history")
                }
            }
        }
    }
}
