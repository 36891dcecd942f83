import Logging
import NIOWebSocket
import ServiceLifecycle
import StorkCore
import StorkRealtime
import StorkStreaming
import Synchronization
import WSClient

// MARK: - GatewayClient
//
// A Swift client of the gateway's WebSocket protocol v1 (Docs/gateway.md). `run()` owns the connection: it connects,
// authenticates, and while the connection lasts a child task writes the queued client frames and the connection's task
// reads the server's; when the connection drops it reconnects with backoff and resumes the session (`resume` with the
// session id and the last `seq` it read), so the server resends what was missed. The public methods queue a frame and
// wait for its answer; subscriptions and runs are async sequences fed by the reader.

/// What happened to the client's connection (see ``GatewayClient/connectionEvents()``).
public enum GatewayClientEvent: Sendable, Hashable {
    /// The first connection was welcomed.
    case connected(GatewayWelcome)
    /// The connection dropped; the client reconnects (unless it was closed).
    case disconnected
    /// A new connection was welcomed. `recovered` is true when the same session was resumed and every delivery missed
    /// meanwhile was resent; false when messages were lost or the session was new (its subscriptions were made again,
    /// without `from`).
    case reconnected(GatewayWelcome, recovered: Bool)
}

/// A client of the realtime gateway: publish, subscribe, request/respond, presence and runners over one WebSocket,
/// resumed across reconnects.
///
/// The connection lives in ``run()`` (the client is a `Service`), or in the scope of
/// ``withGatewayClient(configuration:clock:logger:_:)``:
///
/// ```swift
/// var configuration = GatewayClientConfiguration(url: "ws://127.0.0.1:8080/v1/ws")
/// configuration.credentials = .password(user: "alice", password: "wonderland")
/// try await withGatewayClient(configuration: configuration) { client in
///     let notes = try await client.subscribe("users.alice.notes")
///     try await client.publish("users.alice.notes", data: ["text": "hi"])
///     for try await message in notes { print(message.data); break }
/// }
/// ```
///
/// Actions made while the client is reconnecting wait (at most `answerTimeout`) and are sent once it is back. An
/// action whose connection dropped before its answer came fails with `connection_lost`: it may have happened.
/// A message frame does not say which subscription it is for: it goes to every subscription of this client whose
/// subject matches, so two overlapping subscriptions (`a.>` and `a.b`) each receive both of the server's copies.
public final class GatewayClient: Service, Sendable {
    public let configuration: GatewayClientConfiguration
    let logger: Logger
    /// Paces reconnection (the injected clock); answers are bounded by `answerTimeout` on the continuous clock.
    let sleep: @Sendable (Duration) async throws -> Void
    let state = Mutex(State())

    /// - Parameters:
    ///   - clock: the clock that paces reconnection attempts (tests pass a manual one).
    public init(
        configuration: GatewayClientConfiguration,
        clock: some Clock<Duration> = ContinuousClock(),
        logger: Logger = Logger(label: "stork.gateway.client")
    ) {
        self.configuration = configuration
        self.logger = logger
        self.sleep = { duration in try await clock.sleep(for: duration) }
    }

    // MARK: State

    struct Outgoing: Sendable {
        var id: UInt64?
        var text: String
    }

    enum Slot {
        case registered
        case waiting(CheckedContinuation<[String: JSONValue], any Error>)
        case done(Result<[String: JSONValue], any Error>)
    }

    struct Pending {
        var slot: Slot
        /// The connection that carried the frame; when it drops unanswered the action fails with `connection_lost`.
        var sentOn: Int?
    }

    struct LocalSubscription {
        var subject: String
        var continuation: AsyncThrowingStream<GatewayMessage, any Error>.Continuation
    }

    struct LocalRun {
        var token: UInt64
        var runId: String?
        var continuation: AsyncThrowingStream<RunnerEvent, any Error>.Continuation
    }

    enum Ending: Sendable {
        case authFailed(GatewayClientError)
    }

    struct State {
        /// The connection being made or in use (numbered from 1), and whether it has been welcomed.
        var connection = 0
        var connected = false
        var running = false
        var closing = false
        /// Set once `run()` is over: every action fails with it.
        var finished: GatewayClientError?
        var ending: Ending?
        var dropRequested: Int?
        var welcome: GatewayWelcome?
        var lastSequence: UInt64 = 0
        var nextID: UInt64 = 1
        var outgoing: [Outgoing] = []
        var pending: [UInt64: Pending] = [:]
        var subscriptions: [UInt64: LocalSubscription] = [:]
        var runs: [String: LocalRun] = [:]
        var listeners: [UInt64: AsyncStream<GatewayClientEvent>.Continuation] = [:]
        /// Tasks waiting for a change of state (they re-check on every wake-up); the flag says "cancelled".
        var waiters: [UInt64: @Sendable (Bool) -> Void] = [:]

        mutating func nextNumber() -> UInt64 {
            defer { self.nextID += 1 }
            return self.nextID
        }
    }

    // MARK: Public state

    /// The welcome of the current session (nil before the first connection).
    public var welcome: GatewayWelcome? { self.state.withLock { $0.welcome } }

    /// Whether a connection is open and authenticated.
    public var isConnected: Bool { self.state.withLock { $0.connected } }

    /// The last delivery sequence read (what a resume continues after).
    public var lastSequence: UInt64 { self.state.withLock { $0.lastSequence } }

    /// Connection changes from now on, until the client is closed. Each call makes a new sequence.
    public func connectionEvents() -> AsyncStream<GatewayClientEvent> {
        let (stream, continuation) = AsyncStream.makeStream(of: GatewayClientEvent.self)
        let key: UInt64? = self.state.withLock { state in
            guard state.finished == nil else { return nil }
            let key = state.nextNumber()
            state.listeners[key] = continuation
            return key
        }
        guard let key else {
            continuation.finish()
            return stream
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.listeners.removeValue(forKey: key) }
        }
        return stream
    }

    /// Waits until a connection is authenticated and returns its welcome; throws when the client ended (the first
    /// connection failed, the credentials were refused, or it was closed).
    @discardableResult
    public func connected() async throws -> GatewayWelcome {
        let outcome: Result<GatewayWelcome, GatewayClientError>? = await self.wait { state in
            if let finished = state.finished { return .failure(finished) }
            if state.connected, let welcome = state.welcome { return .success(welcome) }
            return nil
        }
        guard let outcome else { throw CancellationError() }
        return try outcome.get()
    }

    // MARK: Service

    /// Connects, and reconnects after drops, until ``close()`` or cancellation. Throws when the first connection
    /// fails (`connect_failed`, or the server's `auth_failed`), when a reconnect is refused, or when it gives up
    /// reconnecting (`connection_lost`).
    public func run() async throws {
        let alreadyRunning = self.state.withLock { state in
            defer { state.running = true }
            return state.running || state.finished != nil
        }
        guard !alreadyRunning else { throw GatewayClientError(.closed, "the client runs once") }
        var attempt = 0
        var welcomedOnce = false
        while true {
            let connection: Int? = self.state.withLock { state in
                guard !state.closing else { return nil }
                state.connection += 1
                state.ending = nil
                return state.connection
            }
            guard let connection else {
                self.finish(GatewayClientError(.closed, "the client was closed"))
                return
            }
            var failure: (any Error)?
            do {
                try await WebSocketClient.connect(
                    url: self.configuration.url,
                    configuration: WebSocketClientConfiguration(maxFrameSize: self.configuration.maxFrameBytes),
                    logger: self.logger
                ) { inbound, outbound, _ in
                    try await self.serve(connection, inbound: inbound, outbound: outbound)
                }
            } catch {
                failure = error
            }
            let (welcomed, ending, closing) = self.connectionEnded(connection)
            if welcomed {
                welcomedOnce = true
                attempt = 0
            }
            if closing || Task.isCancelled {
                self.finish(GatewayClientError(.closed, "the client was closed"))
                return
            }
            if case .authFailed(let error) = ending {
                self.finish(error)
                throw error
            }
            guard welcomedOnce else {
                let error = GatewayClientError(
                    .connectFailed,
                    "cannot connect to \(self.configuration.url)",
                    underlying: failure
                )
                self.finish(error)
                throw error
            }
            let reconnect = self.configuration.reconnect
            guard reconnect.enabled, reconnect.maxAttempts.map({ attempt < $0 }) ?? true else {
                let error = GatewayClientError(
                    .connectionLost,
                    "the connection to \(self.configuration.url) was lost",
                    underlying: failure
                )
                self.finish(error)
                throw error
            }
            let delay = reconnect.delay(attempt: attempt)
            attempt += 1
            self.logger.debug(
                "gateway connection lost, reconnecting",
                metadata: ["stork.attempt": "\(attempt)", "stork.delay": "\(delay)"]
            )
            // The pause ends early when the client is closed.
            await withTaskGroup(of: Void.self) { group in
                group.addTask { try? await self.sleep(delay) }
                group.addTask { _ = await self.wait { state -> Void? in state.closing ? () : nil } }
                await group.next()
                group.cancelAll()
            }
        }
    }

    /// Closes the connection (normal closure) and ends the client: subscriptions and event sequences finish, waiting
    /// actions fail with `client_closed`. The session stays on the server for its recovery window. Returns when
    /// ``run()`` is over (at once if it never ran).
    public func close() async {
        let running = self.state.withLock { state in
            state.closing = true
            return state.running
        }
        self.notify()
        guard running else {
            self.finish(GatewayClientError(.closed, "the client was closed"))
            return
        }
        _ = await self.wait { state -> Void? in state.finished != nil ? () : nil }
    }

    /// Closes the current connection as if the network had dropped it (the session stays on the server): the client
    /// reconnects and resumes. For tests, and for apps that know the network changed.
    public func dropConnection() {
        self.state.withLock { state in
            if state.connected { state.dropRequested = state.connection }
        }
        self.notify()
    }

    // MARK: One connection

    /// Authenticates (resuming the session when there is one), then reads the server's frames until the connection
    /// ends; the writer starts once the connection is welcomed.
    private func serve(
        _ connection: Int,
        inbound: WebSocketInboundStream,
        outbound: WebSocketOutboundWriter
    ) async throws {
        let resume: GatewayResume? = self.state.withLock { state in
            state.welcome.map { GatewayResume(session: $0.session, lastSequence: state.lastSequence) }
        }
        let auth = GatewayClientMessage.auth(credentials: self.configuration.credentials, resume: resume)
        try await outbound.writeTextMessage(auth.encodedText(id: "auth"))
        await withTaskGroup(of: Void.self) { group in
            // Closes the socket when the client is closed or asked to drop the connection (or the task is cancelled).
            group.addTask {
                let code = await self.wait { state -> WebSocketErrorCode? in
                    if state.closing { return .normalClosure }
                    if state.dropRequested == connection { return .goingAway }
                    return nil
                }
                try? await outbound.close(code ?? .goingAway, reason: nil)
            }
            do {
                for try await message in inbound.messages(maxSize: self.configuration.maxFrameBytes) {
                    guard case .text(let text) = message else { continue }
                    switch self.receive(text, connection: connection) {
                    case .none:
                        break
                    case .welcomed:
                        group.addTask { await self.write(connection, outbound: outbound) }
                    case .refused:
                        try? await outbound.close(.normalClosure, reason: nil)
                    }
                }
            } catch {
                self.logger.debug("gateway connection read ended", metadata: ["stork.error": "\(error)"])
            }
            group.cancelAll()
        }
    }

    /// Sends the queued frames, in order, while `connection` is the welcomed one.
    private func write(_ connection: Int, outbound: WebSocketOutboundWriter) async {
        while true {
            let next: Outgoing?? = await self.wait { state -> Outgoing?? in
                guard state.connected, state.connection == connection else { return .some(nil) }
                guard !state.outgoing.isEmpty else { return nil }
                let frame = state.outgoing.removeFirst()
                if let id = frame.id { state.pending[id]?.sentOn = connection }
                return .some(frame)
            }
            guard case .some(.some(let frame)) = next else { return }
            do {
                try await outbound.writeTextMessage(frame.text)
            } catch {
                return
            }
        }
    }

    /// After a connection ended: the actions it carried that were not answered fail; listeners hear of it.
    private func connectionEnded(_ connection: Int) -> (welcomed: Bool, ending: Ending?, closing: Bool) {
        let (outcome, lost, listeners) = self.state.withLock { state in
            let welcomed = state.connected && state.connection == connection
            state.connected = false
            if state.dropRequested == connection { state.dropRequested = nil }
            var lost: [CheckedContinuation<[String: JSONValue], any Error>] = []
            let error = GatewayClientError(.connectionLost, "the connection closed before the answer came")
            for (id, pending) in state.pending where pending.sentOn == connection {
                switch pending.slot {
                case .waiting(let continuation):
                    state.pending[id] = nil
                    lost.append(continuation)
                case .registered:
                    state.pending[id]?.slot = .done(.failure(error))
                case .done:
                    break
                }
            }
            let listeners = welcomed && !state.closing ? Array(state.listeners.values) : []
            return ((welcomed, state.ending, state.closing), lost, listeners)
        }
        for continuation in lost {
            continuation.resume(
                throwing: GatewayClientError(.connectionLost, "the connection closed before the answer came")
            )
        }
        for listener in listeners { listener.yield(.disconnected) }
        self.notify()
        return outcome
    }

    /// Ends the client: everything that waits fails with `error`, every sequence finishes.
    private func finish(_ error: GatewayClientError) {
        let (pending, subscriptions, runs, listeners) = self.state.withLock { state in
            if state.finished == nil { state.finished = error }
            state.closing = true
            state.connected = false
            state.outgoing.removeAll()
            defer {
                state.pending.removeAll()
                state.subscriptions.removeAll()
                state.runs.removeAll()
                state.listeners.removeAll()
            }
            return (
                Array(state.pending.values), Array(state.subscriptions.values), Array(state.runs.values),
                Array(state.listeners.values)
            )
        }
        for entry in pending {
            if case .waiting(let continuation) = entry.slot { continuation.resume(throwing: error) }
        }
        let cleanly = error.code == .closed
        for subscription in subscriptions {
            if cleanly { subscription.continuation.finish() } else { subscription.continuation.finish(throwing: error) }
        }
        for run in runs { run.continuation.finish(throwing: error) }
        for listener in listeners { listener.finish() }
        self.notify()
    }

    // MARK: Reading

    enum Received {
        case none, welcomed, refused
    }

    /// Handles one server frame.
    private func receive(_ text: String, connection: Int) -> Received {
        let frame: GatewayClientInbound
        do throws(GatewayClientError) {
            frame = try GatewayClientInbound.decode(text)
        } catch {
            self.logger.debug("unreadable gateway frame", metadata: ["stork.error": "\(error)"])
            return .none
        }
        switch frame {
        case .answer(.string("auth")?, "welcome", let fields):
            guard let welcome = GatewayClientInbound.welcome(fields) else {
                self.state.withLock { state in
                    state.ending = .authFailed(GatewayClientError(.protocolError, "a welcome without session or user"))
                }
                return .refused
            }
            self.welcomed(welcome, connection: connection)
            return .welcomed
        case .error(.string("auth")?, let code, let message):
            self.state.withLock { state in
                state.ending = .authFailed(GatewayClientError(GatewayClientError.Code(code), message))
            }
            return .refused
        case .answer(let id, _, let fields):
            if let id = Self.number(id) { self.complete(id, .success(fields)) }
        case .error(let id, let code, let message):
            let error = GatewayClientError(GatewayClientError.Code(code), message)
            if let id = Self.number(id) {
                self.complete(id, .failure(error))
            } else {
                self.logger.debug("gateway error", metadata: ["stork.error": "\(error)"])
            }
        case .message(let message):
            let targets = self.state.withLock { state in
                state.lastSequence = max(state.lastSequence, message.sequence)
                return state.subscriptions.values.filter {
                    $0.subject == message.subject || Subject.matches(pattern: $0.subject, subject: message.subject)
                }
            }
            for target in targets { target.continuation.yield(message) }
        case .runner(let sequence, let instance, let json):
            let event = try? RunnerEvent(json: json)
            let target: (LocalRun, terminal: Bool)? = self.state.withLock { state in
                state.lastSequence = max(state.lastSequence, sequence)
                guard let event, let run = state.runs[instance] else { return nil }
                if let runId = run.runId, runId != event.runId { return nil }
                if event.isTerminal { state.runs[instance] = nil }
                return (run, event.isTerminal)
            }
            if let event, let target {
                target.0.continuation.yield(event)
                if target.terminal { target.0.continuation.finish() }
            }
        }
        return .none
    }

    /// A connection was welcomed: a new session gets the subscriptions again; a resume that lost deliveries fails the
    /// runs in progress (their end may be among what was lost).
    private func welcomed(_ welcome: GatewayWelcome, connection: Int) {
        let (event, lostRuns, listeners) = self.state.withLock { state in
            let previous = state.welcome
            state.welcome = welcome
            state.connected = true
            let event: GatewayClientEvent
            var lostRuns: [LocalRun] = []
            if let previous {
                let sameSession = previous.session == welcome.session
                if !sameSession {
                    state.lastSequence = 0
                    let subjects = Set(state.subscriptions.values.map(\.subject)).sorted()
                    state.outgoing.insert(
                        contentsOf: subjects.map {
                            Outgoing(
                                id: nil,
                                text: GatewayClientMessage.subscribe(subject: $0, from: nil).encodedText(id: nil)
                            )
                        },
                        at: 0
                    )
                }
                let recovered = sameSession && welcome.recovered != false
                if !recovered {
                    lostRuns = Array(state.runs.values)
                    state.runs.removeAll()
                }
                event = .reconnected(welcome, recovered: recovered)
            } else {
                event = .connected(welcome)
            }
            return (event, lostRuns, Array(state.listeners.values))
        }
        for run in lostRuns {
            run.continuation.finish(
                throwing: GatewayClientError(.sessionLost, "the session was not recovered after a reconnect")
            )
        }
        for listener in listeners { listener.yield(event) }
        self.notify()
        self.logger.debug(
            "gateway connection welcomed",
            metadata: ["stork.session": "\(welcome.session)", "stork.connection": "\(connection)"]
        )
    }

    private static func number(_ id: JSONValue?) -> UInt64? {
        GatewayClientInbound.sequence(id)
    }

    // MARK: Actions

    /// Queues `message` with a fresh id and returns the fields of its answer (`ok`, `response`, `presence`…);
    /// an `error` answer is thrown as ``GatewayClientError`` with the server's code.
    func call(_ message: GatewayClientMessage, timeout: Duration? = nil) async throws -> [String: JSONValue] {
        let limit = timeout ?? self.configuration.answerTimeout
        let id: UInt64 = try self.state.withLock { state throws(GatewayClientError) in
            if let finished = state.finished { throw finished }
            if state.closing { throw GatewayClientError(.closed, "the client is closing") }
            let id = state.nextNumber()
            state.pending[id] = Pending(slot: .registered, sentOn: nil)
            state.outgoing.append(Outgoing(id: id, text: message.encodedText(id: .number(Double(id)))))
            return id
        }
        self.notify()
        let type = message.type
        return try await withThrowingTaskGroup(of: [String: JSONValue].self) { group in
            group.addTask { try await self.answer(id) }
            group.addTask {
                try await Task.sleep(for: limit)
                throw GatewayClientError(.timeout, "no answer to '\(type)' within \(limit)")
            }
            defer { group.cancelAll() }
            guard let answer = try await group.next() else { throw CancellationError() }
            return answer
        }
    }

    /// Queues a frame that needs no answer.
    func send(_ message: GatewayClientMessage) {
        let queued = self.state.withLock { state in
            guard state.finished == nil, !state.closing else { return false }
            state.outgoing.append(Outgoing(id: nil, text: message.encodedText(id: nil)))
            return true
        }
        if queued { self.notify() }
    }

    private func answer(_ id: UInt64) async throws -> [String: JSONValue] {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation {
                (continuation: CheckedContinuation<[String: JSONValue], any Error>) in
                let ready: Result<[String: JSONValue], any Error>? = self.state.withLock { state in
                    guard let pending = state.pending[id] else { return .failure(CancellationError()) }
                    if case .done(let result) = pending.slot {
                        state.pending[id] = nil
                        return result
                    }
                    state.pending[id]?.slot = .waiting(continuation)
                    return nil
                }
                if let ready { continuation.resume(with: ready) }
            }
        } onCancel: {
            // Given up (timeout or cancellation): forget the answer, and the frame if it has not been sent.
            let waiting = self.state.withLock { state -> CheckedContinuation<[String: JSONValue], any Error>? in
                state.outgoing.removeAll { $0.id == id }
                guard case .waiting(let continuation)? = state.pending.removeValue(forKey: id)?.slot else { return nil }
                return continuation
            }
            waiting?.resume(throwing: CancellationError())
        }
    }

    private func complete(_ id: UInt64, _ result: Result<[String: JSONValue], any Error>) {
        let waiting = self.state.withLock { state -> CheckedContinuation<[String: JSONValue], any Error>? in
            guard let pending = state.pending[id] else { return nil }
            switch pending.slot {
            case .waiting(let continuation):
                state.pending[id] = nil
                return continuation
            case .registered:
                state.pending[id]?.slot = .done(result)
                return nil
            case .done:
                return nil
            }
        }
        waiting?.resume(with: result)
    }

    // MARK: Waiting for a change of state

    /// Returns `check`'s value once it has one, re-checking after every change of state; nil when cancelled.
    func wait<Value: Sendable>(_ check: (inout State) -> Value?) async -> Value? {
        while true {
            let token = self.state.withLock { $0.nextNumber() }
            let outcome: Value?? = await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<Value??, Never>) in
                    let ready: Value?? = self.state.withLock { state in
                        if let value = check(&state) { return .some(value) }
                        if Task.isCancelled { return .some(nil) }
                        state.waiters[token] = { cancelled in
                            continuation.resume(returning: cancelled ? .some(nil) : nil)
                        }
                        return nil
                    }
                    if let ready { continuation.resume(returning: ready) }
                }
            } onCancel: {
                self.state.withLock { $0.waiters.removeValue(forKey: token) }?(true)
            }
            if let outcome { return outcome }
        }
    }

    /// Wakes every waiter to re-check the state.
    func notify() {
        let waiters = self.state.withLock { state in
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter(false) }
    }
}

// MARK: - A scope with a connected client

/// Runs a ``GatewayClient`` for the duration of `body`: connects and authenticates first (throwing `connect_failed`
/// or the server's `auth_failed`), closes the client when `body` returns or throws.
public func withGatewayClient<Value: Sendable>(
    configuration: GatewayClientConfiguration,
    clock: some Clock<Duration> = ContinuousClock(),
    logger: Logger = Logger(label: "stork.gateway.client"),
    _ body: (GatewayClient) async throws -> Value
) async throws -> Value {
    let client = GatewayClient(configuration: configuration, clock: clock, logger: logger)
    return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await client.run() }
        do {
            try await client.connected()
            let value = try await body(client)
            await client.close()
            return value
        } catch {
            await client.close()
            throw error
        }
    }
}
