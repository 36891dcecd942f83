import Foundation
import Hummingbird
import HummingbirdWebSocket
import Logging
import NIOCore
import StorkCore
import StorkBus
import StorkNATS
import StorkRealtime
import StorkResources
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
            seq: 7,
            subject: "orders.eu.1",
            data: GatewayPayload(bytes: Array("plain".utf8)),
            replyTo: "_GW.x.1",
            stream: "ORDERS",
            streamSeq: 120
        )
        let decoded = try GatewayClientInbound.decode(String(decoding: message.encoded, as: UTF8.self))
        #expect(
            decoded
                == .message(
                    GatewayMessage(
                        sequence: 7,
                        subject: "orders.eu.1",
                        data: "plain",
                        encoding: .text,
                        replyTo: "_GW.x.1",
                        stream: "ORDERS",
                        streamSequence: 120
                    )
                )
        )
        let welcome = GatewayServerFrame.welcome(
            id: "auth",
            session: "s1",
            user: AuthenticatedUser(id: "alice", roles: ["member"]),
            recovered: true
        )
        guard
            case .answer(_, "welcome", let fields) = try GatewayClientInbound.decode(
                String(decoding: welcome.encoded, as: UTF8.self)
            )
        else {
            Issue.record("not an answer")
            return
        }
        #expect(
            GatewayClientInbound.welcome(fields)
                == GatewayWelcome(
                    session: "s1",
                    user: AuthenticatedUser(id: "alice", roles: ["member"]),
                    recovered: true
                )
        )
        #expect(throws: GatewayClientError.self) { try GatewayClientInbound.decode("[1]") }
    }

    @Test("reconnection backs off exponentially up to the maximum")
    func backoff() {
        var reconnect = GatewayClientConfiguration.Reconnect()
        reconnect.initialDelay = .milliseconds(100)
        reconnect.maxDelay = .seconds(1)
        #expect(
            (0..<6).map { reconnect.delay(attempt: $0) } == [
                .milliseconds(100), .milliseconds(200), .milliseconds(400), .milliseconds(800), .seconds(1),
                .seconds(1),
            ]
        )
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
            try await withGatewayClient(
                configuration: Self.configuration(port, .password(user: "ann", password: "")),
                logger: quietLogger("ann")
            ) { ann in
                try await withGatewayClient(
                    configuration: Self.configuration(port, .password(user: "ben", password: "")),
                    logger: quietLogger("ben")
                ) { ben in
                    // (A subscription whose sequence is dropped ends: these are kept until the check is done.)
                    let room = try await ann.subscribe("public.room")
                    let everything = try await ben.subscribe("public.>")
                    #expect(try await ann.presence("public.room") == ["ann", "ben"])
                    withExtendedLifetime((room, everything)) {}
                }
            }
        }
    }

    @Test("after a dropped connection the client reconnects, resumes its session and gets what it missed")
    func resumeAfterDrop() async throws {
        let router = BusRouter()
        let clock = ManualClock()
        try await withGateway(rules: ownChannelRules, router: router) { gateway, port in
            var configuration = Self.configuration(port, .password(user: "frank", password: ""))
            configuration.reconnect.initialDelay = .seconds(1)
            try await withGatewayClient(configuration: configuration, clock: clock, logger: quietLogger("frank")) {
                client in
                let events = client.connectionEvents()
                let session = try #require(client.welcome?.session)
                let messages = try await client.subscribe("users.frank.>")
                router.publish(BusMessage(subject: "users.frank.a", payload: ByteBuffer(string: "1")))
                #expect(try await Self.next(messages)?.data == 1)

                client.dropConnection()
                #expect(try await Self.next(events) == .disconnected)
                #expect(await eventually(.seconds(20)) { gateway.session(session)?.disconnectedSince() != nil })
                // While the client waits to reconnect (the manual clock holds it), messages keep coming.
                for n in 2...4 {
                    router.publish(BusMessage(subject: "users.frank.a", payload: ByteBuffer(string: "\(n)")))
                }
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
        let router = BusRouter()
        let clock = ManualClock()
        let gatewayClock = ManualClock()
        try await withGateway(rules: ownChannelRules, router: router, clock: gatewayClock.gatewayClock) {
            gateway,
            port in
            var configuration = Self.configuration(port, .password(user: "gina", password: ""))
            configuration.reconnect.initialDelay = .seconds(1)
            try await withGatewayClient(configuration: configuration, clock: clock, logger: quietLogger("gina")) {
                client in
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
                router,
                "$JS.API.STREAM.CREATE.HIST",
                #"{"name":"HIST","subjects":["history.>"],"storage":"memory"}"#
            )
            for n in 1...5 {
                router.publish(BusMessage(subject: "history.room", payload: ByteBuffer(string: "{\"n\":\(n)}")))
            }
            #expect(
                await eventually(.seconds(20)) {
                    (try? await jetstream.history(subject: "history.room", from: .sequence(1), limit: 10))?.messages
                        .count == 5
                }
            )
            try await withGateway(rules: ownChannelRules, router: router, jetstream: jetstream) { _, port in
                try await withGatewayClient(
                    configuration: Self.configuration(port, .password(user: "ivy", password: "")),
                    logger: quietLogger("ivy")
                ) { client in
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

// MARK: - Runners, with a stand-in for the resource manager
//
// `runner.open` allocates `$gw.runner.<instance>`; in a cluster placement puts it on a node whose `gateway.runner`
// connector answers commands on `$GW.runner.<instance>.ctl` and publishes the run's events (the Python suite
// Tests/GatewayCluster runs that across processes). Here `RunnerHost` is the placement and the connector in one: it
// answers the same commands on the router with the events a greeting runner sends.

final class RunnerHost: GatewayResources, BusReceiver {
    let router: BusRouter
    let commands = AsyncStream.makeStream(of: BusMessage.self)
    let allocated = Mutex<[String: BusSubscription]>([:])
    let closed = Mutex<[String]>([])
    static let node = NodeID(name: "test", address: "127.0.0.1:0", uid: 1)

    init(router: BusRouter) {
        self.router = router
    }

    func allocate(_ resource: Resource) async -> RequestOutcome {
        guard let instance = resource.attributes["instance"]?.stringValue else { return .shutdown }
        let subscription = self.router.subscribe("$GW.runner.\(instance).ctl", receiver: self)
        self.allocated.withLock { $0[instance] = subscription }
        return .handled(by: Self.node)
    }

    func deallocate(_ id: ResourceID) async -> RequestOutcome {
        let instance = String(id.rawValue.dropFirst("$gw.runner.".count))
        if let subscription = self.allocated.withLock({ $0.removeValue(forKey: instance) }) {
            self.router.unsubscribe(subscription)
        }
        self.closed.withLock { $0.append(instance) }
        return .terminated(by: Self.node)
    }

    func receive(_ message: BusMessage, subscription: BusSubscription) {
        self.commands.continuation.yield(message)
    }

    /// Answers commands until cancelled: `run` greets `inputs.name` (a name of "fail" fails the run), `pause` finds
    /// nothing running.
    func run() async {
        var count = 0
        for await command in self.commands.stream {
            guard let replyTo = command.replyTo, let body = try? JSONValue.parse(command.payload.readableBytesView)
            else { continue }
            let instance = command.subject.split(separator: ".")[2]
            let events = "$GW.runner.\(instance).events"
            switch body["op"]?.stringValue {
            case "run":
                count += 1
                let runId = JSONValue.string("run-\(count)")
                self.publish(["accepted": true, "runId": runId], to: replyTo)
                let name = body["inputs"]?["name"]?.stringValue ?? "world"
                self.publish(
                    ["type": "node", "runId": runId, "nodeId": "who", "output": ["value": .string(name)]],
                    to: events
                )
                if name == "fail" {
                    self.publish(
                        [
                            "type": "failed", "runId": runId, "nodeId": "greet", "code": "node-failed",
                            "error": "no greeting for fail",
                        ],
                        to: events
                    )
                } else {
                    self.publish(
                        ["type": "completed", "runId": runId, "outputs": ["greeting": .string("Hello, \(name)!")]],
                        to: events
                    )
                }
            default:
                self.publish(["error": "not_running", "message": "no run in progress"], to: replyTo)
            }
        }
    }

    private func publish(_ value: JSONValue, to subject: String) {
        self.router.publish(BusMessage(subject: subject, payload: ByteBuffer(string: value.description)))
    }
}

/// A gateway with the greeting runner and `host` standing in for the resource manager, on 127.0.0.1.
func withRunnerGateway(_ body: @Sendable (_ port: Int) async throws -> Void) async throws {
    let router = BusRouter()
    let host = RunnerHost(router: router)
    let greeting: JSONValue = [
        "id": "greeting", "name": "Greeting", "version": 1,
        "nodes": [
            ["id": "who", "kind": "input", "options": ["name": "name", "type": "string", "default": "world"]],
            [
                "id": "greet", "kind": "template", "inputs": ["name": "string"],
                "options": ["template": "Hello, {{name}}!"],
            ],
            ["id": "out", "kind": "output", "options": ["name": "greeting"]],
        ],
        "edges": [["from": "who.value", "to": "greet.name"], ["from": "greet.value", "to": "out.value"]],
    ]
    let rules = try PermissionRules(document: [
        "rules": [["subject": "users.$userId.runners.>", "runner": "user.id == $userId"]]
    ])
    let gateway = Gateway(
        node: "test",
        router: router,
        authentication: AuthenticationChain([OpenAuthenticator()]),
        permissions: { rules },
        resources: host,
        runners: ["greeting": try RunnerProgram(definition: RunnerDefinition(document: greeting))],
        logger: quietLogger("gateway")
    )
    let httpRouter = Router()
    let port = Mutex<Int?>(nil)
    let app = Application(
        router: httpRouter,
        server: .http1WebSocketUpgrade(webSocketRouter: gateway.webSocketRouter()),
        configuration: .init(address: .hostname("127.0.0.1", port: 0)),
        onServerRunning: { channel in port.withLock { $0 = channel.localAddress?.port } },
        logger: quietLogger("gateway-http")
    )
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await app.runService(gracefulShutdownSignals: []) }
        group.addTask { await host.run() }
        defer { group.cancelAll() }
        guard await eventually(.seconds(10), { port.withLock { $0 } != nil }), let bound = port.withLock({ $0 }) else {
            throw StorkError(.timeout, "the gateway did not start")
        }
        try await body(bound)
        _ = host
    }
}

extension GatewayClientTests {
    @Test("a runner is opened, run to its outputs or its failure, refused a pause when idle, and closed")
    func runners() async throws {
        try await withRunnerGateway { port in
            try await withGatewayClient(
                configuration: Self.configuration(port, .password(user: "ada", password: "")),
                logger: quietLogger("ada")
            ) { client in
                let greeting = try await client.openRunner("greeting")
                #expect(greeting.name == "greeting")
                #expect(!greeting.instance.isEmpty)

                let run = try await greeting.run(["name": "Ada"])
                var events: [RunnerEvent] = []
                for try await event in run { events.append(event) }
                #expect(
                    events == [
                        .node(runId: run.runId, nodeId: "who", output: ["value": "Ada"]),
                        .completed(runId: run.runId, outputs: ["greeting": "Hello, Ada!"]),
                    ]
                )
                #expect(try await greeting.call(["name": "Bea"]) == ["greeting": "Hello, Bea!"])
                let failed = await #expect(throws: GatewayClientError.self) {
                    try await greeting.call(["name": "fail"])
                }
                #expect(failed?.code == "node-failed")

                let idle = await #expect(throws: GatewayClientError.self) { try await greeting.pause() }
                #expect(idle?.code == "not_running")
                let unknown = await #expect(throws: GatewayClientError.self) { try await client.openRunner("nope") }
                #expect(unknown?.code == "unknown_runner")
                try await greeting.close()
                let closed = await #expect(throws: GatewayClientError.self) { try await greeting.run() }
                #expect(closed?.code == "unknown_instance")
            }
        }
    }
}
