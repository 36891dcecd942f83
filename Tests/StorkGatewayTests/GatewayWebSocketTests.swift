import Foundation
import NIOCore
import StorkCore
import StorkBus
import StorkNATS
import StorkRealtime
import StorkTestKit
import Synchronization
import Testing

@testable import StorkGateway

@Suite("Gateway over WebSocket")
struct GatewayWebSocketTests {
    static let users: UsersFileAuthenticator = {
        let document: JSONValue = [
            "users": [
                ["id": "alice", "password": .string(PasswordHash(password: "wonderland", iterations: 1000).encoded)],
                ["id": "bob", "password": .string(PasswordHash(password: "builder", iterations: 1000).encoded), "roles": ["responder"]],
            ]
        ]
        return try! UsersFileAuthenticator(document: document)
    }()

    static var chain: AuthenticationChain { AuthenticationChain([Self.users]) }

    @Test("a wrong password is refused with auth_failed; after the allowed attempts the connection is closed")
    func authFailure() async throws {
        var configuration = GatewayConfiguration()
        configuration.maxAuthAttempts = 2
        try await withGateway(configuration: configuration, authentication: Self.chain, rules: ownChannelRules) { _, port in
            let socket = TestSocket(port: port)
            let first = await socket.auth(["user": "alice", "password": "nope"])
            #expect(first?["type"] == "error")
            #expect(first?["code"] == "auth_failed")
            #expect(first?["id"] == "auth")
            // Before a session only auth and ping are served.
            socket.send(["type": "subscribe", "id": 5, "subject": "users.alice.x"])
            #expect(await socket.next()?["code"] == "not_authenticated")
            let second = await socket.auth(["user": "nobody", "password": "x"])
            #expect(second?["code"] == "auth_failed")
            #expect(await socket.waitClosed())
        }
    }

    @Test("a user subscribes to and publishes on their own channels, and is refused other users' channels")
    func ownChannels() async throws {
        try await withGateway(authentication: Self.chain, rules: ownChannelRules) { _, port in
            let alice = TestSocket(port: port)
            let welcome = await alice.auth(["user": "alice", "password": "wonderland"])
            #expect(welcome?["type"] == "welcome")
            #expect(welcome?["user"]?["id"] == "alice")
            #expect(welcome?["v"] == 1)

            alice.send(["type": "subscribe", "id": 1, "subject": "users.alice.>"])
            #expect(await alice.next() == ["type": "ok", "id": 1, "subject": "users.alice.>"])
            alice.send(["type": "subscribe", "id": 2, "subject": "users.bob.>"])
            let refused = await alice.next()
            #expect(refused?["code"] == "forbidden")
            #expect(refused?["id"] == 2)
            alice.send(["type": "publish", "id": 3, "subject": "users.bob.inbox", "data": ["text": "hi"]])
            #expect(await alice.next()?["code"] == "forbidden")
            // The gateway's own subjects are never a client's.
            alice.send(["type": "subscribe", "id": 4, "subject": "$GW.presence"])
            #expect(await alice.next()?["code"] == "forbidden")

            alice.send(["type": "publish", "id": 5, "subject": "users.alice.notes", "data": ["text": "hello \"you\""]])
            // The answer and the delivery of the message to the publisher itself may come in either order.
            let frames = [await alice.next(), await alice.next()].compactMap { $0 }
            #expect(frames.contains(["type": "ok", "id": 5]))
            let message = frames.first { $0["type"] == "message" }
            #expect(message?["type"] == "message")
            #expect(message?["subject"] == "users.alice.notes")
            #expect(message?["data"] == ["text": "hello \"you\""])
            #expect(message?["seq"] == 1)
        }
    }

    @Test("NATS-side publishers reach WebSocket subscribers, and WebSocket publishes reach the router; non-JSON bodies are marked")
    func routerBothWays() async throws {
        let router = BusRouter()
        try await withGateway(rules: ownChannelRules, router: router) { _, port in
            let socket = TestSocket(port: port)
            _ = await socket.auth(["user": "carol"])
            socket.send(["type": "subscribe", "id": 1, "subject": "public.>"])
            #expect(await socket.next()?["type"] == "ok")

            router.publish(BusMessage(subject: "public.news", payload: ByteBuffer(string: #"{"n":1}"#)))
            router.publish(BusMessage(subject: "public.news", payload: ByteBuffer(string: "plain text")))
            router.publish(BusMessage(subject: "public.news", payload: ByteBuffer(bytes: [0xff, 0xfe])))
            let json = await socket.next()
            #expect(json?["data"] == ["n": 1])
            #expect(json?["encoding"] == nil)
            let text = await socket.next()
            #expect(text?["data"] == "plain text")
            #expect(text?["encoding"] == "text")
            let binary = await socket.next()
            #expect(binary?["data"] == "//4=")
            #expect(binary?["encoding"] == "base64")
            #expect(binary?["seq"] == 3)

            let collector = Collector()
            let subscription = router.subscribe("public.>", receiver: collector)
            defer { router.unsubscribe(subscription) }
            socket.send(["type": "publish", "subject": "public.chat", "data": ["m": "x"]])
            #expect(await eventually(.seconds(20)) { collector.payloads == [#"{"m":"x"}"#] })
        }
    }

    @Test("malformed frames get an error and the connection keeps working")
    func malformedFrames() async throws {
        var configuration = GatewayConfiguration()
        configuration.maxFrameBytes = 4096
        try await withGateway(configuration: configuration, rules: ownChannelRules) { _, port in
            let socket = TestSocket(port: port)
            _ = await socket.auth(["user": "dave"])
            socket.sendRaw("{not json")
            #expect(await socket.next()?["code"] == "bad_frame")
            socket.sendRaw("[1,2]")
            #expect(await socket.next()?["code"] == "bad_frame")
            socket.sendRaw(#"{"type":"warp","id":7}"#)
            let unknown = await socket.next()
            #expect(unknown?["code"] == "unknown_type")
            #expect(unknown?["id"] == 7)
            socket.sendRaw(#"{"type":"subscribe","id":8,"subject":"a..b"}"#)
            #expect(await socket.next()?["code"] == "bad_field")
            socket.sendRaw(#"{"type":"auth","v":2}"#)
            #expect(await socket.next()?["code"] == "unsupported_version")
            socket.send(["type": "ping", "id": 9])
            #expect(await socket.next() == ["type": "pong", "id": 9])
        }
    }

    @Test("request and respond between two clients; the responder may only answer requests it received")
    func requestResponse() async throws {
        try await withGateway(authentication: Self.chain, rules: ownChannelRules) { _, port in
            let bob = TestSocket(port: port)
            _ = await bob.auth(["user": "bob", "password": "builder"])
            bob.send(["type": "subscribe", "id": 1, "subject": "rpc.add"])
            #expect(await bob.next()?["type"] == "ok")
            let alice = TestSocket(port: port)
            _ = await alice.auth(["user": "alice", "password": "wonderland"])

            bob.send(["type": "respond", "id": 2, "to": "_GW.test.1", "data": 0])
            #expect(await bob.next()?["code"] == "not_a_request")

            alice.send(["type": "request", "id": 10, "subject": "rpc.add", "data": [1, 2], "timeout": 10000])
            let request = await bob.next(ofType: "message")
            #expect(request?["data"] == [1, 2])
            guard case .string(let replyTo)? = request?["replyTo"] else {
                Issue.record("the request has no replyTo: \(String(describing: request))")
                return
            }
            bob.send(["type": "respond", "to": .string(replyTo), "data": 3])
            #expect(await alice.next() == ["type": "response", "id": 10, "data": 3])
        }
    }

    @Test("a request nobody answers times out on the gateway's clock")
    func requestTimeout() async throws {
        let clock = ManualClock()
        try await withGateway(rules: ownChannelRules, clock: clock.gatewayClock) { gateway, port in
            let socket = TestSocket(port: port)
            _ = await socket.auth(["user": "erin"])
            socket.send(["type": "subscribe", "id": 1, "subject": "users.erin.>"])
            #expect(await socket.next()?["type"] == "ok")
            // A subscriber exists (the client itself, which never answers), so the request waits for its timeout.
            let sleepersBefore = clock.pendingSleeps
            socket.send(["type": "request", "id": 2, "subject": "users.erin.service", "timeout": 5000])
            #expect(await socket.next(ofType: "message")?["subject"] == "users.erin.service")
            #expect(await eventually(.seconds(20)) { clock.pendingSleeps > sleepersBefore })
            clock.advance(by: .seconds(5))
            let answer = await socket.next()
            #expect(answer?["code"] == "timeout")
            #expect(answer?["id"] == 2)
            _ = gateway
        }
    }

    @Test("a client that reconnects within the window resumes its session and gets exactly what it missed")
    func resume() async throws {
        let router = BusRouter()
        try await withGateway(rules: ownChannelRules, router: router) { gateway, port in
            let first = TestSocket(port: port)
            let welcome = await first.auth(["user": "frank"])
            guard case .string(let session)? = welcome?["session"] else {
                Issue.record("no session in \(String(describing: welcome))")
                return
            }
            first.send(["type": "subscribe", "id": 1, "subject": "users.frank.>"])
            #expect(await first.next()?["type"] == "ok")
            router.publish(BusMessage(subject: "users.frank.a", payload: ByteBuffer(string: "1")))
            #expect(await first.next()?["seq"] == 1)
            await first.close()
            #expect(await eventually(.seconds(20)) { gateway.session(session)?.disconnectedSince() != nil })

            for n in 2...4 { router.publish(BusMessage(subject: "users.frank.a", payload: ByteBuffer(string: "\(n)"))) }

            let second = TestSocket(port: port)
            let resumed = await second.auth(["user": "frank", "resume": ["session": .string(session), "lastSeq": 1]])
            #expect(resumed?["type"] == "welcome")
            #expect(resumed?["session"] == .string(session))
            #expect(resumed?["recovered"] == true)
            var missed: [JSONValue] = []
            for _ in 0..<3 { if let frame = await second.next() { missed.append(frame) } }
            #expect(missed.map { $0["seq"] } == [2, 3, 4])
            #expect(missed.map { $0["data"] } == [2, 3, 4])
            // The subscription came back with the session: live messages continue.
            router.publish(BusMessage(subject: "users.frank.a", payload: ByteBuffer(string: "5")))
            #expect(await second.next()?["seq"] == 5)

            // Another user cannot take the session over.
            let intruder = TestSocket(port: port)
            let other = await intruder.auth(["user": "mallory", "resume": ["session": .string(session), "lastSeq": 0]])
            #expect(other?["session"] != .string(session))
            #expect(other?["recovered"] == false)
        }
    }

    @Test("a resume after more than the kept messages reports recovered false")
    func resumeGap() async throws {
        let router = BusRouter()
        var configuration = GatewayConfiguration()
        configuration.recoveryMessages = 2
        try await withGateway(configuration: configuration, rules: ownChannelRules, router: router) { gateway, port in
            let first = TestSocket(port: port)
            let welcome = await first.auth(["user": "gina"])
            guard case .string(let session)? = welcome?["session"] else { return }
            first.send(["type": "subscribe", "id": 1, "subject": "users.gina.>"])
            #expect(await first.next()?["type"] == "ok")
            await first.close()
            #expect(await eventually(.seconds(20)) { gateway.session(session)?.disconnectedSince() != nil })
            for n in 1...5 { router.publish(BusMessage(subject: "users.gina.a", payload: ByteBuffer(string: "\(n)"))) }
            let second = TestSocket(port: port)
            let resumed = await second.auth(["user": "gina", "resume": ["session": .string(session), "lastSeq": 0]])
            #expect(resumed?["recovered"] == false)
            #expect(await second.next()?["seq"] == 4)
            #expect(await second.next()?["seq"] == 5)
        }
    }

    @Test("a connection that does not authenticate in time is closed (gateway clock)")
    func authTimeout() async throws {
        let clock = ManualClock()
        try await withGateway(rules: ownChannelRules, clock: clock.gatewayClock) { _, port in
            let socket = TestSocket(port: port)
            socket.send(["type": "ping", "id": 1])
            #expect(await socket.next() == ["type": "pong", "id": 1])
            #expect(await eventually(.seconds(20)) { clock.pendingSleeps >= 1 })
            clock.advance(by: .seconds(11))
            #expect(await socket.waitClosed())
        }
    }

    @Test("sessions whose client stays away longer than the window end, and their subscriptions go")
    func expiry() async throws {
        let clock = ManualClock()
        let router = BusRouter()
        try await withGateway(rules: ownChannelRules, router: router, clock: clock.gatewayClock) { gateway, port in
            let socket = TestSocket(port: port)
            let welcome = await socket.auth(["user": "hank"])
            guard case .string(let session)? = welcome?["session"] else { return }
            socket.send(["type": "subscribe", "id": 1, "subject": "users.hank.>"])
            #expect(await socket.next()?["type"] == "ok")
            #expect(router.hasInterest(in: "users.hank.x"))
            await socket.close()
            #expect(await eventually(.seconds(20)) { gateway.session(session)?.disconnectedSince() != nil })
            clock.advance(by: .seconds(59))
            gateway.expireSessions()
            #expect(gateway.session(session) != nil)
            clock.advance(by: .seconds(2))
            gateway.expireSessions()
            #expect(gateway.session(session) == nil)
            #expect(!router.hasInterest(in: "users.hank.x"))
        }
    }

    @Test("presence lists the users subscribed to a subject")
    func presence() async throws {
        try await withGateway(rules: ownChannelRules) { _, port in
            let a = TestSocket(port: port)
            _ = await a.auth(["user": "ann"])
            let b = TestSocket(port: port)
            _ = await b.auth(["user": "ben"])
            a.send(["type": "subscribe", "id": 1, "subject": "public.room"])
            b.send(["type": "subscribe", "id": 1, "subject": "public.>"])
            #expect(await a.next()?["type"] == "ok")
            #expect(await b.next()?["type"] == "ok")
            a.send(["type": "presence", "id": 2, "subject": "public.room"])
            #expect(await a.next() == ["type": "presence", "id": 2, "subject": "public.room", "users": ["ann", "ben"]])
        }
    }
}
