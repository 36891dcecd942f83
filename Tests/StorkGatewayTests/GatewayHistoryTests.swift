import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import StorkCore
import StorkBus
import StorkNATS
import StorkRealtime
import StorkTestKit
import Synchronization
import Testing

@testable import StorkGateway

/// Runs a JetStream (memory streams) on a fresh router for the duration of `body`.
func withJetStream(_ body: @Sendable (BusRouter, JetStream) async throws -> Void) async throws {
    let router = BusRouter()
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("gateway-\(UUID().uuidString)").path
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let jetstream = JetStream(
        configuration: .init(directory: directory),
        router: router,
        storeFactory: { _, _ in throw StorkError(.invalidInput, "the tests use memory streams") },
        logger: quietLogger("jetstream")
    )
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await jetstream.run() }
        try await jetstream.waitUntilReady()
        do {
            try await body(router, jetstream)
        } catch {
            group.cancelAll()
            throw error
        }
        group.cancelAll()
    }
}

/// Sends a request on the router and waits for its reply (a bound, not a speed).
func routerRequest(_ router: BusRouter, _ subject: String, _ body: String) async throws -> String {
    let collector = Collector()
    let inbox = "_INBOX.test.\(UUID().uuidString)"
    let subscription = router.subscribe(inbox, receiver: collector)
    defer { router.unsubscribe(subscription) }
    router.publish(BusMessage(subject: subject, replyTo: inbox, payload: ByteBuffer(string: body)))
    guard await eventually(.seconds(20), { !collector.payloads.isEmpty }) else {
        throw StorkError(.timeout, "no reply to \(subject)")
    }
    return collector.payloads[0]
}

@Suite("Gateway history and replay")
struct GatewayHistoryTests {
    @Test("subscribe with from replays stored messages with their stream position, then continues live without duplicates")
    func replayThenLive() async throws {
        try await withJetStream { router, jetstream in
            let created = try await routerRequest(
                router, "$JS.API.STREAM.CREATE.HIST", #"{"name":"HIST","subjects":["history.>"],"storage":"memory"}"#
            )
            #expect(created.contains("\"HIST\""))
            for n in 1...5 {
                router.publish(BusMessage(subject: "history.room", payload: ByteBuffer(string: "{\"n\":\(n)}")))
            }
            #expect(await eventually(.seconds(20)) {
                (try? await jetstream.history(subject: "history.room", from: .sequence(1), limit: 10))?.messages.count == 5
            })
            try await withGateway(rules: ownChannelRules, router: router, jetstream: jetstream) { _, port in
                let socket = TestSocket(port: port)
                _ = await socket.auth(["user": "ivy"])
                socket.send(["type": "subscribe", "id": 1, "subject": "history.>", "from": ["seq": 3]])
                var frames: [JSONValue] = []
                // The answer is not sequenced with the messages: read until both the ok and the three arrived.
                while frames.filter({ $0["type"] == "message" }).count < 3 || !frames.contains(where: { $0["type"] == "ok" }),
                    let frame = await socket.next()
                {
                    frames.append(frame)
                }
                #expect(frames.contains(["type": "ok", "id": 1, "subject": "history.>", "replayed": 3]))
                let replayed = frames.filter { $0["type"] == "message" }
                #expect(replayed.map { $0["streamSeq"] } == [3, 4, 5])
                #expect(replayed.map { $0["data"] } == [["n": 3], ["n": 4], ["n": 5]])
                #expect(replayed.allSatisfy { $0["stream"] == "HIST" })

                socket.send(["type": "publish", "subject": "history.room", "data": ["n": 6]])
                let live = await socket.next(ofType: "message")
                #expect(live?["data"] == ["n": 6])
                #expect(live?["streamSeq"] == nil)

                // A subject no stream stores has no history.
                socket.send(["type": "subscribe", "id": 2, "subject": "public.x", "from": ["last": 1]])
                #expect(await socket.next()?["code"] == "no_history")
            }
        }
    }

    @Test("HTTP: publish, history and request authenticate and obey the rules")
    func http() async throws {
        let users = try UsersFileAuthenticator(document: [
            "users": [["id": "alice", "password": .string(PasswordHash(password: "pw", iterations: 1000).encoded)]]
        ])
        try await withJetStream { router, jetstream in
            _ = try await routerRequest(
                router, "$JS.API.STREAM.CREATE.U", #"{"name":"U","subjects":["users.>"],"storage":"memory"}"#
            )
            try await withGateway(
                authentication: AuthenticationChain([users]), rules: ownChannelRules, router: router, jetstream: jetstream
            ) { _, port in
                let base = "http://127.0.0.1:\(port)"
                let basic = "Basic " + Data("alice:pw".utf8).base64EncodedString()
                func call(_ method: HTTPMethod, _ path: String, auth: String?, body: String? = nil) async throws -> (Int, JSONValue?) {
                    var request = HTTPClientRequest(url: base + path)
                    request.method = method
                    if let auth { request.headers.add(name: "Authorization", value: auth) }
                    if let body { request.body = .bytes(ByteBuffer(string: body)) }
                    let response = try await HTTPClient.shared.execute(request, timeout: .seconds(20))
                    let bytes = try await response.body.collect(upTo: 1 << 20)
                    return (Int(response.status.code), try? JSONValue.parse(bytes.readableBytesView))
                }
                let published = try await call(.POST, "/v1/publish", auth: basic, body: #"{"subject":"users.alice.notes","data":{"t":1}}"#)
                #expect(published.0 == 200)
                #expect(published.1?["ok"] == true)
                #expect(try await call(.POST, "/v1/publish", auth: basic, body: #"{"subject":"users.bob.notes","data":1}"#).0 == 403)
                #expect(try await call(.POST, "/v1/publish", auth: nil, body: #"{"subject":"users.alice.notes"}"#).0 == 401)
                let wrong = "Basic " + Data("alice:nope".utf8).base64EncodedString()
                #expect(try await call(.POST, "/v1/publish", auth: wrong, body: #"{"subject":"users.alice.notes"}"#).0 == 401)
                #expect(try await call(.POST, "/v1/publish", auth: basic, body: "not json").0 == 400)
                #expect(try await call(.POST, "/v1/publish", auth: basic, body: #"{"subject":"users.alice.>"}"#).0 == 400)

                var history: (Int, JSONValue?) = (0, nil)
                _ = await eventually(.seconds(20)) {
                    history = (try? await call(.GET, "/v1/history?subject=users.alice.notes&limit=5", auth: basic)) ?? (0, nil)
                    if case .array(let messages)? = history.1?["messages"] { return !messages.isEmpty }
                    return false
                }
                #expect(history.0 == 200)
                #expect(history.1?["stream"] == "U")
                if case .array(let messages)? = history.1?["messages"] {
                    #expect(messages.map { $0["data"] } == [["t": 1]])
                }
                #expect(try await call(.GET, "/v1/history?subject=users.bob.notes", auth: basic).0 == 403)

                // A request nobody answers on this single node: no responders.
                let request = try await call(.POST, "/v1/request", auth: basic, body: #"{"subject":"rpc.nobody","timeout":100}"#)
                #expect(request.0 == 404)
                #expect(request.1?["error"]?["code"] == "no_responders")
            }
        }
    }
}
