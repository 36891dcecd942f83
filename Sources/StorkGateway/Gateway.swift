import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import StorkCore
import StorkBus
import StorkRealtime
import StorkStreaming
import Synchronization

// MARK: - Gateway
//
// The realtime gateway of one node: sessions of authenticated clients (WebSocket connections, HTTP calls), each
// action checked against the permission rules, messages exchanged through the node's NATS router, so that WebSocket
// clients, NATS clients, streams and resource handlers all see the same subjects. Subscriptions fan out through one
// router subscription per subject pattern (the hub), whatever the number of sessions on it; the payload of a message
// is classified once and only the frame's sequence number differs per session.
//
// Cluster-wide delivery is the bus's job (StorkBus): the hub's router subscriptions are interest the other nodes
// learn, and messages published on other nodes reach this node's router.

/// The rest of the cluster as the gateway sees it (the bus): who listens elsewhere, and how many other nodes there are.
public protocol GatewayInterest: Sendable {
    /// Whether a subscriber on another node matches `subject`.
    func remoteInterest(in subject: String) -> Bool
    /// How many other nodes run a gateway (they answer presence queries).
    var peerCount: Int { get }
}

public final class Gateway: Service, Sendable {
    public let configuration: GatewayConfiguration
    let router: BusRouter
    let jetstream: JetStream?
    let authentication: AuthenticationChain
    let permissions: @Sendable () -> PermissionRules
    let clock: GatewayClock
    let logger: Logger
    /// Providers that produce subjects while someone listens.
    let providers: [GatewayProviderRegistration]
    /// Runner definitions clients may open, by name.
    let runnerPrograms: [String: RunnerProgram]
    /// For runners' HTTP nodes.
    let httpClient: HTTPClient
    /// Runner instances of ended sessions and idle providers, deallocated by the next round of `run()`.
    let pendingUnloads = Mutex<[ResourceID]>([])
    /// The cluster relay and the resource manager, attached once the server built them (after the gateway).
    private let attachments = Mutex<(interest: (any GatewayInterest)?, resources: (any GatewayResources)?)>((nil, nil))
    var interest: (any GatewayInterest)? { self.attachments.withLock { $0.interest } }
    var resources: (any GatewayResources)? { self.attachments.withLock { $0.resources } }
    /// When this node last allocated each listened subject's provider.
    let providerAssertions = Mutex<[String: StorkInstant]>([:])
    /// This node's name as one subject token (inboxes are `_GW.<node>.<n>`).
    let nodeToken: String

    struct HubEntry {
        var subscription: BusSubscription
        var sessions: [String: GatewaySession]
    }

    struct Inbox {
        var next: UInt64 = 1
        var waiting: [UInt64: AsyncStream<BusMessage>.Continuation] = [:]
    }

    let hub = Mutex<[String: HubEntry]>([:])
    let sessions = Mutex<[String: GatewaySession]>([:])
    let inbox = Mutex(Inbox())
    let connections = Atomic<UInt64>(0)
    let messageIDs = Atomic<UInt64>(0)
    let counters = GatewayCounters()
    private let closed = Atomic<Bool>(false)
    private let inboxSubscription = Mutex<[BusSubscription]>([])

    public init(
        configuration: GatewayConfiguration = GatewayConfiguration(),
        node: String,
        router: BusRouter,
        jetstream: JetStream? = nil,
        authentication: AuthenticationChain,
        permissions: @escaping @Sendable () -> PermissionRules,
        clock: GatewayClock = .system,
        interest: (any GatewayInterest)? = nil,
        resources: (any GatewayResources)? = nil,
        providers: [GatewayProviderRegistration] = [],
        runners: [String: RunnerProgram] = [:],
        httpClient: HTTPClient = .shared,
        logger: Logger = Logger(label: "stork.gateway")
    ) {
        self.configuration = configuration
        self.router = router
        self.jetstream = jetstream
        self.authentication = authentication
        self.permissions = permissions
        self.clock = clock
        self.providers = providers
        self.runnerPrograms = runners
        self.httpClient = httpClient
        self.logger = logger
        self.nodeToken = Subject.token(node)
        if authentication.authenticators.contains(where: { $0 is OpenAuthenticator }) {
            logger.warning("gateway authentication 'open' accepts everyone: for development only")
        }
        let replies = router.subscribe("_GW.\(self.nodeToken).>", receiver: InboxReceiver(gateway: self))
        let presence = router.subscribe("$GW.presence", receiver: PresenceReceiver(gateway: self))
        self.inboxSubscription.withLock { $0 = [replies, presence] }
        self.attach(interest: interest, resources: resources)
    }

    /// Connects the gateway to the cluster's bus and the resource manager (built after it, since the manager runs
    /// the gateway's providers and runners).
    public func attach(interest: (any GatewayInterest)?, resources: (any GatewayResources)?) {
        self.attachments.withLock { attachments in
            attachments = (interest ?? attachments.interest, resources ?? attachments.resources)
        }
    }


    // MARK: Service

    /// Expires sessions whose client did not come back within the recovery window; on graceful shutdown closes
    /// every connection (clients see code 1001, going away) and ends the sessions.
    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                do {
                    try await self.clock.sleep(.seconds(1))
                } catch {
                    break
                }
                self.expireSessions()
                await self.deallocatePending()
                await self.assertProviders(now: self.clock.now())
            }
        }
        self.shutdown()
    }

    /// Ends sessions disconnected for longer than the recovery window.
    func expireSessions() {
        let now = self.clock.now()
        let expired = self.sessions.withLock { sessions in
            sessions.values.filter { session in
                guard let since = session.disconnectedSince() else { return false }
                return now - since >= self.configuration.recoveryWindow
            }
        }
        for session in expired { self.endSession(session, reason: "recovery window passed") }
    }

    /// Deallocates the runners of ended sessions and the providers nobody listens to.
    func deallocatePending() async {
        let unloads = self.pendingUnloads.withLock { pending in
            defer { pending.removeAll() }
            return pending
        }
        for id in unloads { _ = await self.resources?.deallocate(id) }
    }

    func shutdown() {
        guard !self.closed.exchange(true, ordering: .relaxed) else { return }
        let all = self.sessions.withLock { Array($0.values) }
        for session in all { self.endSession(session, reason: "the server is shutting down") }
        for subscription in self.inboxSubscription.withLock({ $0 }) { self.router.unsubscribe(subscription) }
    }

    var isClosed: Bool { self.closed.load(ordering: .relaxed) }

    // MARK: Sessions

    func newSession(user: AuthenticatedUser) -> GatewaySession {
        var generator = SystemRandomNumberGenerator()
        let id = "s" + String(generator.next(), radix: 36) + String(generator.next(), radix: 36)
        let session = GatewaySession(id: id, user: user, capacity: self.configuration.recoveryMessages)
        self.sessions.withLock { $0[id] = session }
        self.counters.sessions.add(1, ordering: .relaxed)
        return session
    }

    func session(_ id: String) -> GatewaySession? {
        self.sessions.withLock { $0[id] }
    }

    func endSession(_ session: GatewaySession, reason: String) {
        guard self.sessions.withLock({ $0.removeValue(forKey: session.id) }) != nil else { return }
        self.counters.sessions.subtract(1, ordering: .relaxed)
        let (patterns, runners) = session.end()
        for pattern in patterns { self.hubRemove(pattern, session: session) }
        // Its runners unload: the recovery window was their grace period.
        self.pendingUnloads.withLock { $0 += runners.map { ResourceID(Self.runnerPrefix + $0) } }
        self.logger.debug("session ended", metadata: ["stork.session": "\(session.id)", "stork.reason": "\(reason)"])
    }

    // MARK: Authentication and permissions

    func authenticate(_ credentials: Credentials) async -> AuthenticationOutcome {
        let outcome = await self.authentication.authenticate(credentials)
        switch outcome {
        case .accepted: self.counters.logins.add(1, ordering: .relaxed)
        case .rejected, .notMine: self.counters.loginFailures.add(1, ordering: .relaxed)
        }
        return outcome
    }

    func allows(_ action: PermissionAction, subject: String, user: AuthenticatedUser, data: JSONValue = .null) -> Bool {
        // `$…` subjects are the servers' own (JetStream's API, the gateway's presence) and `_GW.` its inboxes: never a
        // client's, whatever the rules say.
        if subject.hasPrefix("$") || subject.hasPrefix("_GW.") { return false }
        let decision = self.permissions().decide(
            action, subject: subject, user: user, data: data, now: self.clock.wallMilliseconds()
        )
        if !decision.allowed { self.counters.denied.add(1, ordering: .relaxed) }
        return decision.allowed
    }

    // MARK: Publishing

    /// Publishes a client's message (already permitted) into the node's router with a message id, so that a replay
    /// boundary can recognise it. Returns the number of local receivers.
    @discardableResult
    func publish(subject: String, data: JSONValue, replyTo: String? = nil) -> Int {
        var bytes: [UInt8] = []
        data.appendJSON(to: &bytes)
        let id = "\(self.nodeToken)-\(self.messageIDs.add(1, ordering: .relaxed).newValue)"
        let headers = MessageHeaders(fields: [(Self.messageIDHeader, id)])
        self.counters.published.add(1, ordering: .relaxed)
        return self.router.publish(
            BusMessage(subject: subject, replyTo: replyTo, headers: headers, payload: ByteBuffer(bytes: bytes))
        )
    }

    static let messageIDHeader = "Nats-Msg-Id"

    static func messageID(_ headers: MessageHeaders?) -> String? {
        headers?[Self.messageIDHeader]
    }

    /// The message id of a stored message (its headers as a NATS header block).
    static func messageID(_ headers: [UInt8]) -> String? {
        headers.isEmpty ? nil : MessageHeaders.parse(ByteBuffer(bytes: headers))?[Self.messageIDHeader]
    }

    // MARK: The hub

    /// Adds a session to a pattern's fan-out, subscribing the router for the first one (the bus tells the other
    /// nodes).
    func hubAdd(_ pattern: String, session: GatewaySession) {
        self.hub.withLock { hub in
            if hub[pattern] != nil {
                hub[pattern]!.sessions[session.id] = session
                return
            }
            let subscription = self.router.subscribe(pattern, receiver: HubReceiver(gateway: self, pattern: pattern))
            hub[pattern] = HubEntry(subscription: subscription, sessions: [session.id: session])
        }
        self.counters.subscriptions.add(1, ordering: .relaxed)
    }

    func hubRemove(_ pattern: String, session: GatewaySession) {
        self.hub.withLock { hub in
            guard hub[pattern]?.sessions.removeValue(forKey: session.id) != nil else { return }
            self.counters.subscriptions.subtract(1, ordering: .relaxed)
            guard hub[pattern]!.sessions.isEmpty else { return }
            self.router.unsubscribe(hub.removeValue(forKey: pattern)!.subscription)
        }
    }

    func fanOut(_ message: BusMessage, pattern: String) {
        guard let sessions = self.hub.withLock({ $0[pattern].map { Array($0.sessions.values) } }), !sessions.isEmpty
        else { return }
        let live = LiveMessage(
            subject: message.subject,
            payload: GatewayPayload(bytes: message.payload.readableBytesView),
            replyTo: message.replyTo,
            messageID: Self.messageID(message.headers)
        )
        for session in sessions { session.deliver(pattern: pattern, message: live) }
        self.counters.deliveries.add(sessions.count, ordering: .relaxed)
    }

    /// Users with a subscription on this node whose pattern matches `subject`.
    func localPresence(_ subject: String) -> Set<String> {
        self.hub.withLock { hub in
            var users = Set<String>()
            for (pattern, entry) in hub where pattern == subject || Subject.matches(pattern: pattern, subject: subject) {
                for session in entry.sessions.values { users.insert(session.user.id) }
            }
            return users
        }
    }

    // MARK: Requests

    /// Sends a request and waits for the first reply (or throws on timeout / no responders).
    func request(subject: String, data: JSONValue, timeout: Duration) async throws(GatewayActionError) -> BusMessage {
        let (stream, number) = self.openInbox()
        defer { self.closeInbox(number) }
        let delivered = self.publish(subject: subject, data: data, replyTo: "_GW.\(self.nodeToken).\(number)")
        if delivered == 0, !(self.interest?.remoteInterest(in: subject) ?? false) {
            throw GatewayActionError("no_responders", "nobody listens on '\(subject)'")
        }
        let reply = await self.first(of: stream, within: timeout)
        guard let reply else { throw GatewayActionError("timeout", "no reply within \(timeout)") }
        if reply.payload.readableBytes == 0, reply.headers?.status == 503
        {
            throw GatewayActionError("no_responders", "nobody listens on '\(subject)'")
        }
        return reply
    }

    func openInbox() -> (AsyncStream<BusMessage>, UInt64) {
        let (stream, continuation) = AsyncStream.makeStream(of: BusMessage.self, bufferingPolicy: .bufferingNewest(256))
        let number = self.inbox.withLock { inbox in
            let number = inbox.next
            inbox.next += 1
            inbox.waiting[number] = continuation
            return number
        }
        return (stream, number)
    }

    func closeInbox(_ number: UInt64) {
        self.inbox.withLock { $0.waiting.removeValue(forKey: number) }?.finish()
    }

    /// The first element of `stream`, or nil when `timeout` passes first.
    func first(of stream: AsyncStream<BusMessage>, within timeout: Duration) async -> BusMessage? {
        await withTaskGroup(of: BusMessage?.self) { group in
            group.addTask {
                var iterator = stream.makeAsyncIterator()
                return await iterator.next()
            }
            group.addTask {
                try? await self.clock.sleep(timeout)
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
    }

    func inboxReply(_ message: BusMessage) {
        guard let last = message.subject.split(separator: ".").last, let number = UInt64(last) else { return }
        _ = self.inbox.withLock { $0.waiting[number] }?.yield(message)
    }

    // MARK: Presence

    /// User ids subscribed to `subject` anywhere in the cluster: this node's, and the other gateways' answers to a
    /// query on `$GW.presence` (gathered until every peer answered or `presenceTimeout`).
    func presence(_ subject: String) async -> [String] {
        var users = self.localPresence(subject)
        let peers = self.interest?.peerCount ?? 0
        if peers > 0 {
            let (stream, number) = self.openInbox()
            defer { self.closeInbox(number) }
            var query: [UInt8] = []
            JSONValue.object(["subject": .string(subject)]).appendJSON(to: &query)
            self.router.publish(
                BusMessage(subject: "$GW.presence", replyTo: "_GW.\(self.nodeToken).\(number)", payload: ByteBuffer(bytes: query))
            )
            let answers = await withTaskGroup(of: [BusMessage].self) { group in
                group.addTask {
                    var collected: [BusMessage] = []
                    for await answer in stream {
                        collected.append(answer)
                        if collected.count >= peers { break }
                    }
                    return collected
                }
                group.addTask {
                    try? await self.clock.sleep(self.configuration.presenceTimeout)
                    self.closeInbox(number)
                    return []
                }
                var all: [BusMessage] = []
                for await part in group {
                    all += part
                    group.cancelAll()
                }
                return all
            }
            for answer in answers {
                if case .array(let ids)? = try? JSONValue.parse(answer.payload.readableBytesView) {
                    for case .string(let id) in ids { users.insert(id) }
                }
            }
        }
        return users.sorted()
    }

    func answerPresence(_ message: BusMessage) {
        guard let replyTo = message.replyTo,
            case .object(let query)? = try? JSONValue.parse(message.payload.readableBytesView),
            case .string(let subject)? = query["subject"]
        else { return }
        // The asking node answers its own query locally; only the others reply.
        if replyTo.hasPrefix("_GW.\(self.nodeToken).") { return }
        var body: [UInt8] = []
        JSONValue.array(self.localPresence(subject).sorted().map { .string($0) }).appendJSON(to: &body)
        self.router.publish(BusMessage(subject: replyTo, payload: ByteBuffer(bytes: body)))
    }

    // MARK: Statistics

    public struct Statistics: Sendable, Hashable {
        public var connections: Int
        public var sessions: Int
        public var subscriptions: Int
        public var published: Int
        public var deliveries: Int
        public var logins: Int
        public var loginFailures: Int
        public var denied: Int
    }

    public func statistics() -> Statistics {
        Statistics(
            connections: self.counters.connections.load(ordering: .relaxed),
            sessions: self.counters.sessions.load(ordering: .relaxed),
            subscriptions: self.counters.subscriptions.load(ordering: .relaxed),
            published: self.counters.published.load(ordering: .relaxed),
            deliveries: self.counters.deliveries.load(ordering: .relaxed),
            logins: self.counters.logins.load(ordering: .relaxed),
            loginFailures: self.counters.loginFailures.load(ordering: .relaxed),
            denied: self.counters.denied.load(ordering: .relaxed)
        )
    }
}

/// Counters read by `statistics()` and the metrics endpoint.
final class GatewayCounters: Sendable {
    let connections = Atomic<Int>(0)
    let sessions = Atomic<Int>(0)
    let subscriptions = Atomic<Int>(0)
    let published = Atomic<Int>(0)
    let deliveries = Atomic<Int>(0)
    let logins = Atomic<Int>(0)
    let loginFailures = Atomic<Int>(0)
    let denied = Atomic<Int>(0)
}

/// A refused action: a stable code and a message, sent to the client as an `error` frame (or an HTTP status).
struct GatewayActionError: Error, Sendable {
    var code: String
    var message: String

    init(_ code: String, _ message: String) {
        self.code = code
        self.message = message
    }

    static func forbidden(_ action: PermissionAction, _ subject: String) -> GatewayActionError {
        GatewayActionError("forbidden", "\(action.rawValue) on '\(subject)' is not allowed")
    }
}

// MARK: - Router receivers

struct HubReceiver: BusReceiver {
    let gateway: Gateway
    let pattern: String

    func receive(_ message: BusMessage, subscription: BusSubscription) {
        self.gateway.fanOut(message, pattern: self.pattern)
    }
}

struct InboxReceiver: BusReceiver {
    let gateway: Gateway

    func receive(_ message: BusMessage, subscription: BusSubscription) {
        self.gateway.inboxReply(message)
    }
}

struct PresenceReceiver: BusReceiver {
    let gateway: Gateway

    func receive(_ message: BusMessage, subscription: BusSubscription) {
        self.gateway.answerPresence(message)
    }
}
