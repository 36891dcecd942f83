import Foundation
import Hummingbird
import HummingbirdWebSocket
import NIOWebSocket
import Logging
import NIOCore
import StorkCore
import StorkBus
import StorkRealtime
import StorkStreaming

// MARK: - One WebSocket connection
//
// The connection's task reads client frames one at a time and answers through the session's queue; a child task
// writes that queue to the socket. Requests wait in child tasks of their own, so a slow responder never stops the
// reading. Before `auth` succeeds only `auth` and `ping` are accepted; the connection is closed after
// `maxAuthAttempts` failures or when `authTimeout` passes without a session.

extension Gateway {
    /// `GET <path>` with an upgrade: the gateway's WebSocket endpoint.
    public func webSocketRouter() -> Router<BasicWebSocketRequestContext> {
        let router = Router(context: BasicWebSocketRequestContext.self)
        self.addWebSocketRoute(to: router)
        return router
    }

    public func addWebSocketRoute(to router: Router<BasicWebSocketRequestContext>) {
        router.ws(RouterPath(self.configuration.path)) { _, _ in
            self.isClosed ? .dontUpgrade : .upgrade([:])
        } onUpgrade: { inbound, outbound, _ in
            await self.serve(inbound: inbound, outbound: outbound)
        }
    }

    func serve(inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter) async {
        self.counters.connections.add(1, ordering: .relaxed)
        defer { self.counters.connections.subtract(1, ordering: .relaxed) }
        let connection = GatewayConnection(
            gateway: self,
            id: self.connections.add(1, ordering: .relaxed).newValue,
            outbound: outbound
        )
        await connection.run(inbound: inbound)
    }
}

/// The state of one connection, owned by its task.
final class GatewayConnection: Sendable {
    let gateway: Gateway
    let id: GatewayConnectionID
    let outbound: WebSocketOutboundWriter

    init(gateway: Gateway, id: GatewayConnectionID, outbound: WebSocketOutboundWriter) {
        self.gateway = gateway
        self.id = id
        self.outbound = outbound
    }

    /// Frames sent before a session exists (auth errors, pongs).
    func sendDirect(_ frame: GatewayServerFrame) async {
        try? await self.outbound.write(.custom(WebSocketFrame(fin: true, opcode: .text, data: ByteBuffer(bytes: frame.encoded))))
    }

    func close(_ code: WebSocketErrorCode, _ reason: String) async {
        try? await self.outbound.close(code, reason: reason)
    }

    func run(inbound: WebSocketInboundStream) async {
        let gateway = self.gateway
        var session: GatewaySession?
        var failures = 0
        await withTaskGroup(of: Void.self) { group in
            // Unauthenticated connections do not linger.
            let authenticated = AsyncStream<Void>.makeStream()
            group.addTask {
                await withTaskGroup(of: Bool.self) { timer in
                    timer.addTask {
                        for await _ in authenticated.stream { return true }
                        return true
                    }
                    timer.addTask {
                        do {
                            try await gateway.clock.sleep(gateway.configuration.authTimeout)
                            return false
                        } catch {
                            return true
                        }
                    }
                    let done = await timer.next() ?? true
                    timer.cancelAll()
                    if !done { await self.close(.policyViolation, "not authenticated within the time allowed") }
                }
            }
            defer { authenticated.continuation.finish() }
            do {
                for try await message in inbound.messages(maxSize: gateway.configuration.maxFrameBytes) {
                    let bytes: [UInt8]
                    switch message {
                    case .text(let text): bytes = Array(text.utf8)
                    case .binary(let buffer): bytes = Array(buffer.readableBytesView)
                    }
                    let frame: GatewayClientFrame
                    do throws(GatewayProtocolError) {
                        frame = try GatewayClientFrame.decode(bytes, maxBytes: gateway.configuration.maxFrameBytes)
                    } catch {
                        let answer = GatewayServerFrame.error(id: error.id, code: error.code.rawValue, message: error.message)
                        if let session { session.sendControl(answer) } else { await self.sendDirect(answer) }
                        continue
                    }
                    guard let current = session else {
                        // Before a session: auth and ping only.
                        switch frame.message {
                        case .ping:
                            await self.sendDirect(.pong(id: frame.id))
                        case .auth(let credentials, let resume):
                            switch await self.authenticate(frame.id, credentials: credentials, resume: resume) {
                            case .success(let opened):
                                session = opened
                                authenticated.continuation.yield()
                                group.addTask { await self.write(opened) }
                            case .failure(let error):
                                failures += 1
                                await self.sendDirect(.error(id: frame.id, code: error.code, message: error.message))
                                if failures >= gateway.configuration.maxAuthAttempts {
                                    await self.close(.policyViolation, "too many failed authentication attempts")
                                }
                            }
                        default:
                            await self.sendDirect(
                                .error(id: frame.id, code: "not_authenticated", message: "send 'auth' first")
                            )
                        }
                        continue
                    }
                    await self.handle(frame, session: current, group: &group)
                }
            } catch {
                gateway.logger.debug("connection read ended", metadata: ["stork.error": "\(error)"])
            }
            if let session { session.detach(self.id, now: gateway.clock.now()) }
            group.cancelAll()
        }
    }

    /// Checks credentials and opens (or resumes) a session; sends `welcome` through it.
    func authenticate(
        _ id: JSONValue?,
        credentials: Credentials,
        resume: GatewayResume?
    ) async -> Result<GatewaySession, GatewayActionError> {
        let gateway = self.gateway
        let user: AuthenticatedUser
        switch await gateway.authenticate(credentials) {
        case .accepted(let accepted): user = accepted
        case .rejected(let reason): return .failure(GatewayActionError("auth_failed", reason))
        case .notMine: return .failure(GatewayActionError("auth_failed", "no authenticator accepted these credentials"))
        }
        if let resume, let previous = gateway.session(resume.session), previous.user.id == user.id,
            let attachment = previous.attach(self.id, after: resume.lastSequence)
        {
            // Welcome goes first, then the missed frames (the writer sends control frames before sequenced ones).
            previous.sendControl(.welcome(id: id, session: previous.id, user: user, recovered: attachment.recovered))
            return .success(previous)
        }
        let session = gateway.newSession(user: user)
        _ = session.attach(self.id, after: nil)
        session.sendControl(.welcome(id: id, session: session.id, user: user, recovered: resume == nil ? nil : false))
        return .success(session)
    }

    /// Writes the session's queue to the socket until the connection is superseded, detached or too slow.
    func write(_ session: GatewaySession) async {
        while let batch = await session.nextBatch(for: self.id) {
            if batch.slow {
                await self.close(.unexpectedServerError, "slow consumer: fell more than the recovery buffer behind")
                return
            }
            do {
                for frame in batch.frames {
                    try await self.outbound.write(.custom(WebSocketFrame(fin: true, opcode: .text, data: ByteBuffer(bytes: frame))))
                }
            } catch {
                return
            }
        }
        if session.state.withLock({ $0.ended }) {
            await self.close(.goingAway, "session ended")
        }
    }

    // MARK: Actions

    /// Messages go to one subject: wildcards are for subscriptions (the HTTP calls refuse them too).
    static func requireLiteral(_ subject: String) throws(GatewayActionError) {
        guard !Subject.hasWildcard(subject) else {
            throw GatewayActionError("bad_field", "'subject': a message's subject has no wildcards: '\(subject)'")
        }
    }

    func handle(_ frame: GatewayClientFrame, session: GatewaySession, group: inout TaskGroup<Void>) async {
        let gateway = self.gateway
        let id = frame.id
        do throws(GatewayActionError) {
            switch frame.message {
            case .ping:
                session.sendControl(.pong(id: id))
            case .auth:
                throw GatewayActionError("already_authenticated", "this connection has a session")
            case .subscribe(let subject, let from):
                let replayed = try await gateway.subscribe(session, subject: subject, from: from)
                if id != nil {
                    var fields: [String: JSONValue] = ["subject": .string(subject)]
                    if let replayed { fields["replayed"] = .number(Double(replayed)) }
                    session.sendControl(.ok(id: id, fields: fields))
                }
            case .unsubscribe(let subject):
                gateway.unsubscribe(session, subject: subject)
                if id != nil { session.sendControl(.ok(id: id, fields: ["subject": .string(subject)])) }
            case .publish(let subject, let data):
                try Self.requireLiteral(subject)
                guard gateway.allows(.publish, subject: subject, user: session.user, data: data) else {
                    throw .forbidden(.publish, subject)
                }
                gateway.publish(subject: subject, data: data)
                if id != nil { session.sendControl(.ok(id: id, fields: [:])) }
            case .request(let subject, let data, let timeout):
                try Self.requireLiteral(subject)
                guard gateway.allows(.request, subject: subject, user: session.user, data: data) else {
                    throw .forbidden(.request, subject)
                }
                guard session.pendingRequests.add(1, ordering: .relaxed).newValue <= gateway.configuration.maxPendingRequests
                else {
                    session.pendingRequests.subtract(1, ordering: .relaxed)
                    throw GatewayActionError("too_many_requests", "at most \(gateway.configuration.maxPendingRequests) requests may wait")
                }
                let wait = timeout.map { Duration.milliseconds($0) } ?? gateway.configuration.requestTimeout
                group.addTask {
                    defer { session.pendingRequests.subtract(1, ordering: .relaxed) }
                    do throws(GatewayActionError) {
                        let reply = try await gateway.request(subject: subject, data: data, timeout: wait)
                        session.sendControl(.response(id: id, data: GatewayPayload(bytes: reply.payload.readableBytesView)))
                    } catch {
                        session.sendControl(.error(id: id, code: error.code, message: error.message))
                    }
                }
            case .respond(let to, let data):
                guard session.takeReplyTarget(to) else {
                    throw GatewayActionError("not_a_request", "'\(to)' is not a request this session received")
                }
                var bytes: [UInt8] = []
                data.appendJSON(to: &bytes)
                gateway.router.publish(BusMessage(subject: to, payload: ByteBuffer(bytes: bytes)))
                if id != nil { session.sendControl(.ok(id: id, fields: [:])) }
            case .presence(let subject):
                guard gateway.allows(.presence, subject: subject, user: session.user) else {
                    throw .forbidden(.presence, subject)
                }
                group.addTask {
                    let users = await gateway.presence(subject)
                    session.sendControl(.presence(id: id, subject: subject, users: users))
                }
            case .runnerOpen(let runner):
                // Loading may take a moment (placement, the owner's handle): answered from a child task.
                group.addTask {
                    do throws(GatewayActionError) {
                        let instance = try await gateway.openRunner(runner, session: session)
                        session.sendControl(.ok(id: id, fields: ["instance": .string(instance), "runner": .string(runner)]))
                    } catch {
                        session.sendControl(.error(id: id, code: error.code, message: error.message))
                    }
                }
            case .runnerClose(let instance):
                group.addTask {
                    do throws(GatewayActionError) {
                        try await gateway.closeRunner(instance, session: session)
                        session.sendControl(.ok(id: id, fields: ["instance": .string(instance)]))
                    } catch {
                        session.sendControl(.error(id: id, code: error.code, message: error.message))
                    }
                }
            case .runnerRun(let instance, let inputs):
                group.addTask {
                    do throws(GatewayActionError) {
                        let answer = try await gateway.commandRunner(
                            instance, session: session, command: ["op": "run", "inputs": .object(inputs)]
                        )
                        if let runId = answer["runId"]?.stringValue { session.runStarted(instance, runId: runId) }
                        session.sendControl(
                            .ok(id: id, fields: ["instance": .string(instance), "runId": answer["runId"] ?? .null])
                        )
                    } catch {
                        session.sendControl(.error(id: id, code: error.code, message: error.message))
                    }
                }
            case .runnerPause(let instance), .runnerResume(let instance):
                let op: JSONValue = if case .runnerPause = frame.message { "pause" } else { "resume" }
                group.addTask {
                    do throws(GatewayActionError) {
                        let answer = try await gateway.commandRunner(instance, session: session, command: ["op": op])
                        session.sendControl(.ok(id: id, fields: ["instance": .string(instance), "runId": answer["runId"] ?? .null]))
                    } catch {
                        session.sendControl(.error(id: id, code: error.code, message: error.message))
                    }
                }
            }
        } catch {
            session.sendControl(.error(id: id, code: error.code, message: error.message))
        }
    }
}

// MARK: - Subscribing

extension Gateway {
    /// Subscribes a session (permission checked); with `from`, replays stored messages first. Returns how many
    /// stored messages were replayed (nil without `from`).
    func subscribe(
        _ session: GatewaySession,
        subject: String,
        from: GatewayReplayStart?
    ) async throws(GatewayActionError) -> Int? {
        guard self.allows(.subscribe, subject: subject, user: session.user) else { throw .forbidden(.subscribe, subject) }
        guard session.subscriptionCount < self.configuration.maxSubscriptionsPerSession else {
            throw GatewayActionError("too_many_subscriptions", "at most \(self.configuration.maxSubscriptionsPerSession)")
        }
        if from != nil {
            guard let jetstream = self.jetstream, await jetstream.streamCapturing(subject) != nil else {
                throw GatewayActionError("no_history", "no stream stores '\(subject)'")
            }
        }
        let mayRespond = self.permissions().decide(
            .respond, subject: subject, user: session.user, now: self.clock.wallMilliseconds()
        ).allowed
        guard session.addSubscription(subject, mayRespond: mayRespond, holding: from != nil) else {
            return nil  // already subscribed: nothing changes
        }
        self.hubAdd(subject, session: session)
        guard let from, let jetstream = self.jetstream else { return nil }
        let history: JetStreamHistory?
        do {
            history = try await jetstream.history(
                subject: subject,
                from: Self.historyStart(from),
                limit: self.configuration.historyLimit
            )
        } catch {
            session.finishReplay(subject, stream: "", messages: [])
            throw GatewayActionError("history_failed", "\(error)")
        }
        let messages = (history?.messages ?? []).map { stored in
            (
                sequence: stored.sequence, subject: stored.subject,
                payload: GatewayPayload(bytes: stored.payload), messageID: Self.messageID(stored.headers)
            )
        }
        session.finishReplay(subject, stream: history?.stream ?? "", messages: messages)
        return messages.count
    }

    static func historyStart(_ start: GatewayReplayStart) -> JetStreamHistoryStart {
        switch start {
        case .sequence(let sequence): return .sequence(sequence)
        case .time(let milliseconds): return .time(nanoseconds: milliseconds.multipliedReportingOverflow(by: 1_000_000).partialValue)
        case .last(let count): return .last(count)
        }
    }

    func unsubscribe(_ session: GatewaySession, subject: String) {
        if session.removeSubscription(subject) { self.hubRemove(subject, session: session) }
    }
}
