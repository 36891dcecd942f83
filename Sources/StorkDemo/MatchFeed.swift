import Hummingbird
import HummingbirdWebSocket
import Logging
import NIOCore
import StorkCore
import Synchronization

// MARK: - MatchFeed
//
// The match feed server: a third-party live feed as the demo's world sees it. Each player has a WebSocket URL,
// `ws://HOST:PORT/players/<player-id>`; whoever connects there receives that player's shots as JSON text messages
// (`ShotMessage`). The script is played in real time by `play(length:)`; `run()` repeats unconfirmed shots. The
// bookkeeping is `MatchFeedStateMachine`; this class holds it under a lock and does the writing.

public final class MatchFeed: Sendable {
    public enum Phase: String, Sendable {
        case waiting = "waiting"
        case playing = "playing"
        case fullTime = "full time"
    }

    /// What the page and the report read.
    public struct Snapshot: Sendable {
        public var phase: Phase
        public var minute: Int
        /// Released shots' score, home first.
        public var score: (home: Int, away: Int)
        public var counters: MatchFeedStateMachine.Counters
        public var pending: [Shot]
        public var connections: [String: Int]
        /// When the match started and how long it lasts (real time), once it started.
        public var kickoff: StorkInstant?
        public var length: Duration?
    }

    struct State {
        var machine: MatchFeedStateMachine
        /// Where each open connection's writer takes its shots from.
        var outlets: [FeedConnectionID: AsyncStream<Shot>.Continuation] = [:]
        var nextConnection = 1
        var phase = Phase.waiting
        var kickoff: StorkInstant?
        var length: Duration?
        var released: [Shot] = []
        var stopped = false
    }

    public let script: MatchScript
    public let tickInterval: Duration
    let state: Mutex<State>
    let origin: ContinuousClock.Instant
    let logger: Logger

    /// - Parameters:
    ///   - origin: the instant that `StorkInstant.zero` stands for (shared with the rest of the demo).
    public init(
        script: MatchScript = .standard,
        resendAfter: Duration = .seconds(3),
        tickInterval: Duration = .milliseconds(250),
        origin: ContinuousClock.Instant = .now,
        logger: Logger = Logger(label: "stork.demo.feed")
    ) {
        self.script = script
        self.tickInterval = tickInterval
        self.origin = origin
        self.logger = logger
        self.state = Mutex(
            State(machine: MatchFeedStateMachine(playerIDs: script.players.map(\.id), resendAfter: resendAfter))
        )
    }

    var now: StorkInstant {
        StorkInstant(nanoseconds: (ContinuousClock.now - self.origin).nanosecondsClamped)
    }

    // MARK: Playing the script

    /// Plays the match: releases every shot at its time, `length` from kick-off to the final whistle. Returns at
    /// the final whistle.
    public func play(length: Duration) async throws {
        let kickoff = ContinuousClock.now
        self.state.withLock { state in
            state.phase = .playing
            state.kickoff = self.now
            state.length = length
        }
        for shot in self.script.shots {
            try await Task.sleep(until: kickoff + self.script.due(shot, length: length), clock: .continuous)
            self.release(shot)
        }
        try await Task.sleep(until: kickoff + length, clock: .continuous)
        self.state.withLock { $0.phase = .fullTime }
    }

    func release(_ shot: Shot) {
        self.state.withLock { state in
            state.released.append(shot)
            switch state.machine.onRelease(shot, now: self.now) {
            case .write(let shot, let connections):
                // Yielding to a stream does not block: the connection's own task does the writing.
                for connection in connections { state.outlets[connection]?.yield(shot) }
            case .hold:
                break
            }
        }
    }

    /// Repeats unconfirmed shots every `tickInterval` (those last written `resendAfter` ago), until cancelled; at the
    /// end, closes every connection's writer.
    public func run() async throws {
        defer { self.stop() }
        while !Task.isCancelled {
            try await Task.sleep(for: self.tickInterval)
            self.state.withLock { state in
                for resend in state.machine.onTick(now: self.now) {
                    for shot in resend.shots { state.outlets[resend.connection]?.yield(shot) }
                }
            }
        }
    }

    /// Ends every connection's writer (their WebSockets close) and refuses new connections.
    public func stop() {
        let outlets = self.state.withLock { state in
            state.stopped = true
            defer { state.outlets = [:] }
            return state.outlets.values
        }
        for outlet in outlets { outlet.finish() }
    }

    // MARK: Confirming

    /// The demo received shot `sequence` over NATS.
    @discardableResult
    public func confirm(_ sequence: Int) -> MatchFeedStateMachine.ConfirmAction {
        self.state.withLock { $0.machine.onConfirm(sequence) }
    }

    public func snapshot() -> Snapshot {
        self.state.withLock { state in
            let minute: Int
            switch state.phase {
            case .waiting: minute = 0
            case .fullTime: minute = self.script.lastMinute
            case .playing:
                let elapsed = state.kickoff.map { self.now - $0 } ?? .zero
                minute = self.script.minute(at: elapsed, length: state.length ?? .seconds(1))
            }
            return Snapshot(
                phase: state.phase,
                minute: minute,
                score: self.script.score(after: state.released),
                counters: state.machine.counters,
                pending: state.machine.pending,
                connections: state.machine.connectionCounts,
                kickoff: state.kickoff,
                length: state.length
            )
        }
    }

    // MARK: Connections

    /// Registers a connection of `player`; its stream yields the player's pending shots first, then new ones and
    /// repeats. Nil for an unknown player or a stopped feed.
    func open(player: String) -> (FeedConnectionID, AsyncStream<Shot>)? {
        let (stream, outlet) = AsyncStream.makeStream(of: Shot.self)
        let connection: FeedConnectionID? = self.state.withLock { state in
            guard !state.stopped else { return nil }
            let connection = FeedConnectionID(state.nextConnection)
            switch state.machine.onConnect(connection, player: player, now: self.now) {
            case .reject:
                return nil
            case .accept(let backlog):
                state.nextConnection += 1
                state.outlets[connection] = outlet
                // Under the lock, so that the backlog comes before any shot released after this connection opened.
                for shot in backlog { outlet.yield(shot) }
                return connection
            }
        }
        guard let connection else {
            outlet.finish()
            return nil
        }
        self.logger.debug("connected", metadata: ["demo.player": "\(player)", "demo.connection": "\(connection)"])
        return (connection, stream)
    }

    func close(_ connection: FeedConnectionID, player: String) {
        let outlet = self.state.withLock { state in
            state.machine.onDisconnect(connection, player: player)
            return state.outlets.removeValue(forKey: connection)
        }
        outlet?.finish()
        self.logger.debug("disconnected", metadata: ["demo.player": "\(player)", "demo.connection": "\(connection)"])
    }

    func knows(_ player: String) -> Bool {
        self.script.player(player) != nil
    }

    /// `GET /players/{id}` with an upgrade: the player's WebSocket.
    public func webSocketRouter() -> Router<BasicWebSocketRequestContext> {
        let router = Router(context: BasicWebSocketRequestContext.self)
        router.ws("/players/:id") { _, context in
            guard let id = context.parameters.get("id"), self.knows(id) else { return .dontUpgrade }
            return .upgrade([:])
        } onUpgrade: { inbound, outbound, context in
            guard let player = context.requestContext.parameters.get("id"),
                let (connection, shots) = self.open(player: player)
            else {
                try await outbound.close(.policyViolation, reason: "no such player, or the feed stopped")
                return
            }
            defer { self.close(connection, player: player) }
            try await withThrowingTaskGroup(of: Void.self) { group in
                // The peer closing (or the connection failing) ends the inbound side; what it sends is ignored.
                group.addTask { for try await _ in inbound {} }
                group.addTask {
                    for await shot in shots {
                        try await outbound.writeTextMessage(ShotMessage(shot, script: self.script).json)
                    }
                    try? await outbound.close(.goingAway, reason: "the feed stopped")
                }
                _ = try await group.next()
                group.cancelAll()
            }
        }
        return router
    }
}

// MARK: - The feed as an HTTP server

extension MatchFeed {
    /// A Hummingbird application serving the feed on `host:port` (HTTP/1 with WebSocket upgrade); `onRunning` is
    /// called with the port once it listens (port 0 picks a free one).
    public func application(
        host: String = "127.0.0.1",
        port: Int,
        logger: Logger,
        onRunning: @escaping @Sendable (Int) -> Void = { _ in }
    ) -> some ApplicationProtocol {
        let router = Router()
        router.get("/") { _, _ in
            "Stork demo match feed: \(self.script.home.name) v \(self.script.away.name). "
                + "WebSocket per player: /players/<player-id> (player-1 … player-\(self.script.players.count)).\n"
        }
        return Application(
            router: router,
            server: .http1WebSocketUpgrade(webSocketRouter: self.webSocketRouter()),
            configuration: .init(address: .hostname(host, port: port), serverName: "stork-demo-feed"),
            onServerRunning: { channel in onRunning(channel.localAddress?.port ?? port) },
            logger: logger
        )
    }
}
