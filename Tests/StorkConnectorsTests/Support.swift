import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOPosix
import StorkConnectors
import StorkCore
import StorkResources
import StorkTestKit
import Synchronization
import Testing

// MARK: - Messaging: local fan-out

/// ``StorkMessaging`` without a server: every publish goes to the matching subscriptions of this process, and is
/// recorded for assertions.
final class LocalMessaging: StorkMessaging {
    private struct Subscription {
        let pattern: String
        let continuation: AsyncStream<StorkMessage>.Continuation
    }

    private struct State {
        var nextID = 0
        var subscriptions: [Int: Subscription] = [:]
        var published: [StorkMessage] = []
    }

    private let state = Mutex(State())

    @discardableResult
    func publish(_ message: StorkMessage) -> Int {
        let targets = self.state.withLock { state -> [AsyncStream<StorkMessage>.Continuation] in
            state.published.append(message)
            return state.subscriptions.values.filter { Self.matches(message.subject, $0.pattern) }.map(\.continuation)
        }
        for target in targets { target.yield(message) }
        return targets.count
    }

    func subscribe(_ subject: String, queue: String?) -> AsyncStream<StorkMessage> {
        let (stream, continuation) = AsyncStream.makeStream(of: StorkMessage.self)
        let id = self.state.withLock { state -> Int in
            state.nextID += 1
            state.subscriptions[state.nextID] = Subscription(pattern: subject, continuation: continuation)
            return state.nextID
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.subscriptions.removeValue(forKey: id) }
        }
        return stream
    }

    /// Payloads published on `subject`, as strings.
    func published(on subject: String) -> [String] {
        self.state.withLock { state in
            state.published.filter { $0.subject == subject }.map { String(decoding: $0.payload, as: UTF8.self) }
        }
    }

    func publishedPayloads(on subject: String) -> [[UInt8]] {
        self.state.withLock { state in state.published.filter { $0.subject == subject }.map(\.payload) }
    }

    /// How many subscriptions would receive a message on `subject`.
    func subscribers(of subject: String) -> Int {
        self.state.withLock { state in state.subscriptions.values.filter { Self.matches(subject, $0.pattern) }.count }
    }

    static func matches(_ subject: String, _ pattern: String) -> Bool {
        let tokens = subject.split(separator: ".", omittingEmptySubsequences: false)
        let patternTokens = pattern.split(separator: ".", omittingEmptySubsequences: false)
        for (index, token) in patternTokens.enumerated() {
            if token == ">" { return tokens.count > index }
            guard index < tokens.count else { return false }
            if token != "*" && token != tokens[index] { return false }
        }
        return tokens.count == patternTokens.count
    }
}

// MARK: - Clock: every wait recorded, released by the test

/// A manual ``ConnectorClock``: sleeps are recorded and return only when the test releases them (``release()``, the
/// oldest first) or moves the time past their end (``advance(by:)``), or at once when `automatic`. Cancelling a
/// sleeping task ends its sleep with `CancellationError`. Nothing here waits for wall-clock time.
final class TestClock: Sendable {
    private struct Sleeper {
        var id: Int
        var deadline: Duration
        var continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var sleeps: [Duration] = []
        var waiting: [Sleeper] = []
        var nextID = 0
        var automatic: Bool
        var start: Date
        /// How far ``advance(by:)`` moved the time.
        var elapsed: Duration = .zero
    }

    private let state: Mutex<State>

    init(automatic: Bool = false, now: Date = Date(timeIntervalSince1970: 1_700_000_000)) {
        self.state = Mutex(State(automatic: automatic, start: now))
    }

    var clock: ConnectorClock {
        ConnectorClock(
            now: { self.state.withLock { $0.start.addingTimeInterval($0.elapsed.secondsDouble) } },
            sleep: { try await self.sleep($0) }
        )
    }

    /// Every duration slept so far, in order.
    var sleeps: [Duration] { self.state.withLock { $0.sleeps } }

    /// Sleeps not released yet.
    var pending: Int { self.state.withLock { $0.waiting.count } }

    /// Ends the oldest pending sleep (the time stays where it is).
    func release() {
        let waiter = self.state.withLock { state in state.waiting.isEmpty ? nil : state.waiting.removeFirst() }
        waiter?.continuation.resume()
    }

    /// Moves the time forward by `duration`, ending every pending sleep that is over by then.
    func advance(by duration: Duration) {
        let due = self.state.withLock { state -> [Sleeper] in
            state.elapsed += duration
            let elapsed = state.elapsed
            let due = state.waiting.filter { $0.deadline <= elapsed }
            state.waiting.removeAll { $0.deadline <= elapsed }
            return due
        }
        for sleeper in due { sleeper.continuation.resume() }
    }

    /// Waits (bounded) until the `number`-th sleep was requested and is pending; returns its duration.
    func sleep(number: Int, timeout: Duration = .seconds(20)) async -> Duration? {
        guard await eventually(timeout, { self.sleeps.count >= number && self.pending > 0 }) else { return nil }
        return self.sleeps[number - 1]
    }

    private func sleep(_ duration: Duration) async throws {
        let (id, automatic) = self.state.withLock { state -> (Int, Bool) in
            state.sleeps.append(duration)
            state.nextID += 1
            return (state.nextID, state.automatic)
        }
        if automatic {
            try Task.checkCancellation()
            await Task.yield()
            return
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let cancelled = self.state.withLock { state -> Bool in
                    if Task.isCancelled { return true }
                    state.waiting.append(Sleeper(id: id, deadline: state.elapsed + duration, continuation: continuation))
                    return false
                }
                if cancelled { continuation.resume(throwing: CancellationError()) }
            }
        } onCancel: {
            let waiter = self.state.withLock { state -> CheckedContinuation<Void, any Error>? in
                guard let index = state.waiting.firstIndex(where: { $0.id == id }) else { return nil }
                return state.waiting.remove(at: index).continuation
            }
            waiter?.resume(throwing: CancellationError())
        }
    }
}

// MARK: - Connector handler harness

/// A fallback handler that records its calls.
final class RecordingHandler: ResourceHandler {
    let calls = Mutex<[String]>([])

    func handle(_ resource: Resource, context: ResourceContext) async throws {
        self.calls.withLock { $0.append("handle \(resource.id)") }
    }

    func terminate(_ resource: Resource, reason: TerminationReason, context: ResourceContext) async throws {
        self.calls.withLock { $0.append("terminate \(resource.id)") }
    }

    func handleFailed(_ resource: Resource, error: any Error, context: ResourceContext) async {
        self.calls.withLock { $0.append("failed \(resource.id)") }
    }
}

func quietLogger(_ label: String = "test") -> Logger {
    var logger = Logger(label: label)
    logger.logLevel = .critical
    return logger
}

func resourceContext(messaging: (any StorkMessaging)?, attempt: Int = 1) -> ResourceContext {
    ResourceContext(
        node: NodeID(name: "n1", address: "127.0.0.1:1", uid: 1),
        attempt: attempt,
        logger: quietLogger(),
        messaging: messaging
    )
}

/// A handler configuration: the defaults, changed by `body`.
func configured(_ body: (inout ConnectorHandlerConfiguration) -> Void) -> ConnectorHandlerConfiguration {
    var configuration = ConnectorHandlerConfiguration()
    body(&configuration)
    return configuration
}

/// A handler configuration whose connectors wait on `clock`, with no stop grace period: a stopped connector must
/// return by itself (nothing cancels it, so a test of one that does not runs into its time limit), and the clock
/// records only the connectors' own waits. Then `body` changes it.
func configured(
    clock: TestClock,
    _ body: (inout ConnectorHandlerConfiguration) -> Void = { _ in }
) -> ConnectorHandlerConfiguration {
    configured {
        $0.clock = clock.clock
        $0.stopGracePeriod = nil
        body(&$0)
    }
}

/// Runs a ``ConnectorHandler`` (as its service) for the duration of `body`, then shuts it down.
func withConnectorHandler(
    registry: ConnectorRegistry = ConnectorRegistry.webSocketOnly,
    fallback: any ResourceHandler = RecordingHandler(),
    configuration: ConnectorHandlerConfiguration = .init(),
    _ body: @Sendable (ConnectorHandler) async throws -> Void
) async throws {
    let handler = ConnectorHandler(
        registry: registry,
        fallback: fallback,
        configuration: configuration,
        logger: quietLogger()
    )
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await handler.run() }
        do {
            try await body(handler)
        } catch {
            group.cancelAll()
            throw error
        }
        group.cancelAll()
    }
}

extension ConnectorRegistry {
    static var webSocketOnly: ConnectorRegistry {
        var registry = ConnectorRegistry()
        registry.register(WebSocketConnector())
        return registry
    }
}

// MARK: - Local servers

/// Runs a Hummingbird application on an ephemeral loopback port for the duration of `body`.
func withApplication(
    router: Router<BasicRequestContext> = Router(),
    server: HTTPServerBuilder = .http1(),
    _ body: @Sendable (Int) async throws -> Void
) async throws {
    let port = Mutex<Int?>(nil)
    let app = Application(
        router: router,
        server: server,
        configuration: .init(address: .hostname("127.0.0.1", port: 0)),
        onServerRunning: { channel in port.withLock { $0 = channel.localAddress?.port } },
        logger: quietLogger("test-server")
    )
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await app.runService() }
        guard await eventually(.seconds(10), { port.withLock { $0 } != nil }), let bound = port.withLock({ $0 }) else {
            group.cancelAll()
            throw StorkError(.timeout, "the test server did not start")
        }
        do {
            try await body(bound)
        } catch {
            group.cancelAll()
            throw error
        }
        group.cancelAll()
    }
}

/// A WebSocket server for the tests: `/feed` sends what the test tells it and records what it receives, `/silent`
/// accepts and then never reads (so never answers a ping); anything else is refused.
final class FeedServer: Sendable {
    enum Command: Sendable {
        case text(String)
        case binary([UInt8])
        case close
    }

    private struct State {
        var connections = 0
        var open: [Int: AsyncStream<Command>.Continuation] = [:]
        var headers: [[String: String]] = []
        var received: [String] = []
    }

    private let state = Mutex(State())

    /// Upgrade requests accepted so far.
    var connections: Int { self.state.withLock { $0.connections } }
    /// Connections open now.
    var openConnections: Int { self.state.withLock { $0.open.count } }
    /// The headers of each accepted upgrade request (names lower-cased).
    var headers: [[String: String]] { self.state.withLock { $0.headers } }
    /// Text messages received from clients.
    var received: [String] { self.state.withLock { $0.received } }

    /// Sends to every open connection.
    func send(_ command: Command) {
        for connection in self.state.withLock({ Array($0.open.values) }) { connection.yield(command) }
    }

    var builder: HTTPServerBuilder {
        .http1WebSocketUpgrade { request, _, _ in
            let silent: Bool
            switch request.path {
            case "/feed": silent = false
            case "/silent": silent = true
            default: return .dontUpgrade
            }
            var fields: [String: String] = [:]
            for field in request.headerFields { fields[field.name.canonicalName] = field.value }
            let headers = fields
            return .upgrade([:]) { inbound, outbound, _ in
                let (commands, continuation) = AsyncStream.makeStream(of: Command.self)
                let id = self.state.withLock { state -> Int in
                    state.connections += 1
                    state.headers.append(headers)
                    state.open[state.connections] = continuation
                    return state.connections
                }
                defer { _ = self.state.withLock { $0.open.removeValue(forKey: id) } }
                try await withThrowingTaskGroup(of: Void.self) { group in
                    if !silent {
                        group.addTask {
                            for try await message in inbound.messages(maxSize: 1 << 20) {
                                if case .text(let text) = message { self.state.withLock { $0.received.append(text) } }
                            }
                        }
                    }
                    group.addTask {
                        for await command in commands {
                            switch command {
                            case .text(let text): try await outbound.write(.text(text))
                            case .binary(let bytes): try await outbound.write(.binary(ByteBuffer(bytes: bytes)))
                            case .close: return
                            }
                        }
                    }
                    try await group.next()
                    group.cancelAll()
                }
            }
        }
    }
}

// MARK: - A tap on WebSocket control frames

/// A loopback TCP relay in front of a WebSocket server that counts the control frames passing through: pings from
/// the clients, pongs from the server. A test waits on these counts (events on the wire) instead of sleeping for
/// heartbeats to happen.
final class WebSocketTap: Sendable {
    private struct Counts {
        var pings = 0
        var pongs = 0
    }

    private let counts = Mutex(Counts())

    /// Ping frames sent by clients.
    var pings: Int { self.counts.withLock { $0.pings } }
    /// Pong frames sent by the server.
    var pongs: Int { self.counts.withLock { $0.pongs } }

    /// Relays a loopback port to `upstream` (a loopback port) for the duration of `body`, which gets the relay's port.
    func run(upstream: Int, _ body: @Sendable (Int) async throws -> Void) async throws {
        let listener = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(host: "127.0.0.1", port: 0) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        let port = try #require(listener.channel.localAddress?.port)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await listener.executeThenClose { connections in
                    try await withThrowingDiscardingTaskGroup { relays in
                        for try await connection in connections {
                            relays.addTask { try? await self.relay(connection, upstream: upstream) }
                        }
                    }
                }
            }
            do {
                try await body(port)
            } catch {
                group.cancelAll()
                throw error
            }
            group.cancelAll()
        }
    }

    private func relay(_ client: NIOAsyncChannel<ByteBuffer, ByteBuffer>, upstream: Int) async throws {
        let server = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: "127.0.0.1", port: upstream) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        try await client.executeThenClose { clientIn, clientOut in
            try await server.executeThenClose { serverIn, serverOut in
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        var scanner = WebSocketFrameScanner()
                        for try await bytes in clientIn {
                            let pings = scanner.feed(bytes).filter { $0 == 0x9 }.count
                            if pings > 0 { self.counts.withLock { $0.pings += pings } }
                            try await serverOut.write(bytes)
                        }
                    }
                    group.addTask {
                        var scanner = WebSocketFrameScanner()
                        for try await bytes in serverIn {
                            let pongs = scanner.feed(bytes).filter { $0 == 0xA }.count
                            if pongs > 0 { self.counts.withLock { $0.pongs += pongs } }
                            try await clientOut.write(bytes)
                        }
                    }
                    // Either side closed: close both.
                    try await group.next()
                    group.cancelAll()
                }
            }
        }
    }
}

/// Finds the WebSocket frames in one direction of a connection (after the HTTP upgrade headers): each `feed`
/// returns the opcodes of the frames it completed.
struct WebSocketFrameScanner {
    private var buffer: [UInt8] = []
    private var upgraded = false

    mutating func feed(_ bytes: ByteBuffer) -> [UInt8] {
        self.buffer += bytes.readableBytesView
        if !self.upgraded {
            let end: [UInt8] = Array("\r\n\r\n".utf8)
            guard let index = self.buffer.indices.dropLast(3).first(where: { Array(self.buffer[$0..<$0 + 4]) == end })
            else { return [] }
            self.buffer.removeFirst(index + 4)
            self.upgraded = true
        }
        var opcodes: [UInt8] = []
        while self.buffer.count >= 2 {
            var length = Int(self.buffer[1] & 0x7F)
            var header = 2
            if length == 126 {
                guard self.buffer.count >= 4 else { break }
                length = Int(self.buffer[2]) << 8 | Int(self.buffer[3])
                header = 4
            } else if length == 127 {
                guard self.buffer.count >= 10 else { break }
                length = self.buffer[2..<10].reduce(0) { $0 << 8 | Int($1) }
                header = 10
            }
            if self.buffer[1] & 0x80 != 0 { header += 4 }  // the mask of a client's frame
            guard self.buffer.count >= header + length else { break }
            opcodes.append(self.buffer[0] & 0x0F)
            self.buffer.removeFirst(header + length)
        }
        return opcodes
    }
}
