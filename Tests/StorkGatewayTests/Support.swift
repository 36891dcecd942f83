import Foundation
import Hummingbird
import HummingbirdWebSocket
import Logging
import NIOCore
import StorkCore
import StorkGateway
import StorkBus
import StorkNATS
import StorkRealtime
import StorkTestKit
import Synchronization
import Testing
import WSClient

// MARK: - A gateway on a loopback port, and a WebSocket client that speaks its protocol

func quietLogger(_ label: String) -> Logger {
    var logger = Logger(label: label)
    logger.logLevel = .critical
    return logger
}

/// Waits (bounded, on the condition, not a speed) until `condition` holds; records an issue naming `what` and throws
/// when it never does.
func until(_ what: String, timeout: Duration = .seconds(30), _ condition: () -> Bool) async throws {
    guard await eventually(timeout, { condition() }) else {
        Issue.record("never happened: \(what)")
        throw StorkError(.timeout, what)
    }
}

extension ManualClock {
    /// The clock as the gateway takes it: monotonic time from now (make it once per test), wall time from zero.
    var gatewayClock: GatewayClock {
        GatewayClock(StorkClock(self), wallMilliseconds: { Double(self.now.offset.nanosecondsClamped) / 1e6 })
    }
}

/// Runs a gateway on 127.0.0.1 (a free port) for the duration of `body`.
func withGateway(
    configuration: GatewayConfiguration = GatewayConfiguration(),
    authentication: AuthenticationChain = AuthenticationChain([OpenAuthenticator()]),
    rules: PermissionRules,
    router: BusRouter = BusRouter(),
    jetstream: JetStream? = nil,
    clock: GatewayClock = .system,
    _ body: @Sendable (_ gateway: Gateway, _ port: Int) async throws -> Void
) async throws {
    let gateway = Gateway(
        configuration: configuration,
        node: "test",
        router: router,
        jetstream: jetstream,
        authentication: authentication,
        permissions: { rules },
        clock: clock,
        logger: quietLogger("gateway")
    )
    let httpRouter = Router()
    gateway.addHTTPRoutes(to: httpRouter)
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
        guard await eventually(.seconds(10), { port.withLock { $0 } != nil }), let bound = port.withLock({ $0 }) else {
            group.cancelAll()
            throw StorkError(.timeout, "the gateway did not start")
        }
        do {
            try await body(gateway, bound)
        } catch {
            group.cancelAll()
            throw error
        }
        group.cancelAll()
    }
}

/// A protocol client over a real WebSocket: `send` frames, `next` received frames (parsed), `close`.
final class TestSocket: Sendable {
    private struct Inbox {
        var frames: [JSONValue] = []
        var closed = false
    }

    private final class Box: Sendable {
        let state = Mutex(Inbox())
    }

    private let outgoing: AsyncStream<String>.Continuation
    private let box = Box()
    private let task: Task<Void, Never>

    init(port: Int, path: String = "/v1/ws") {
        let (outgoingStream, outgoing) = AsyncStream.makeStream(of: String.self)
        self.outgoing = outgoing
        let box = self.box
        self.task = Task {
            defer { box.state.withLock { $0.closed = true } }
            _ = try? await WebSocketClient.connect(url: "ws://127.0.0.1:\(port)\(path)", logger: quietLogger("client")) {
                inbound, outbound, _ in
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        for await text in outgoingStream { try await outbound.writeTextMessage(text) }
                        try? await outbound.close(.normalClosure, reason: nil)
                    }
                    for try await message in inbound.messages(maxSize: 1 << 22) {
                        guard case .text(let text) = message, let value = try? JSONValue.parse(Array(text.utf8)) else {
                            continue
                        }
                        box.state.withLock { $0.frames.append(value) }
                    }
                    group.cancelAll()
                }
            }
        }
    }

    func send(_ value: JSONValue) {
        self.outgoing.yield(value.description)
    }

    func sendRaw(_ text: String) {
        self.outgoing.yield(text)
    }

    /// The next frame from the server, or nil when the connection closed or `timeout` passed (a bound, not a speed).
    func next(timeout: Duration = .seconds(20)) async -> JSONValue? {
        var frame: JSONValue?
        _ = await eventually(timeout) {
            self.box.state.withLock { inbox in
                if !inbox.frames.isEmpty { frame = inbox.frames.removeFirst() }
                return frame != nil || inbox.closed
            }
        }
        return frame
    }

    /// Frames until one of `type` (returned); nil if none comes.
    func next(ofType type: String, timeout: Duration = .seconds(20)) async -> JSONValue? {
        while let frame = await self.next(timeout: timeout) {
            if frame["type"] == .string(type) { return frame }
        }
        return nil
    }

    /// Every frame received so far, without waiting.
    func drain() -> [JSONValue] {
        self.box.state.withLock { inbox in
            defer { inbox.frames.removeAll() }
            return inbox.frames
        }
    }

    /// Waits until the server closed the connection.
    func waitClosed(timeout: Duration = .seconds(20)) async -> Bool {
        await eventually(timeout) { self.box.state.withLock { $0.closed } }
    }

    func close() async {
        self.outgoing.finish()
        await self.task.value
    }

    /// Authenticates and returns the welcome frame (or the error).
    func auth(_ fields: JSONValue) async -> JSONValue? {
        guard case .object(var object) = fields else { return nil }
        object["type"] = "auth"
        object["v"] = 1
        object["id"] = "auth"
        self.send(.object(object))
        return await self.next()
    }

    deinit {
        self.outgoing.finish()
        self.task.cancel()
    }
}

/// A local subscriber on a node's router, standing in for a WebSocket session or a NATS client.
final class Collector: BusReceiver {
    let messages = Mutex<[BusMessage]>([])

    func receive(_ message: BusMessage, subscription: BusSubscription) {
        self.messages.withLock { $0.append(message) }
    }

    var payloads: [String] { self.messages.withLock { $0.map { String(buffer: $0.payload) } } }
}

/// Rules of the usual shape: own channels, public read, inboxes.
let ownChannelRules: PermissionRules = {
    let document: JSONValue = [
        "rules": [
            [
                "subject": "users.$userId.>", "publish": "user.id == $userId", "subscribe": "user.id == $userId",
                "request": "user.id == $userId", "respond": "user.id == $userId",
            ],
            ["subject": "public.>", "subscribe": true, "publish": true, "presence": true],
            ["subject": "rpc.>", "request": true, "subscribe": "'responder' in user.roles", "respond": "'responder' in user.roles"],
            ["subject": "history.>", "subscribe": true, "publish": true],
        ]
    ]
    return try! PermissionRules(document: document)
}()
