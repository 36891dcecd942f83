import NIOCore
import StorkStreaming
import Synchronization

// MARK: - Subscriptions

/// Code inside the server that receives messages like a client does: JetStream's API, streams capturing their
/// subjects, resource handlers through the Swift API. Called on the publisher's thread: it must not block.
public protocol NATSLocalReceiver: Sendable {
    func receive(_ message: NATSMessage, subscription: NATSSubscription)
}

/// One subscription: a client's `SUB`, or a local receiver inside the server.
public final class NATSSubscription: Hashable, Sendable {
    public enum Target: Sendable {
        case client(NATSClientConnection)
        case local(any NATSLocalReceiver)
    }

    public let subject: String
    public let queue: String?
    public let sid: String
    public let target: Target
    /// Deliveries so far, counted only when ``maxMessages`` is set.
    let delivered = Atomic<Int>(0)
    /// Deliveries after which the subscription ends (`UNSUB sid max`); 0 for none.
    let maxMessages = Atomic<Int>(0)

    public init(subject: String, queue: String?, sid: String, target: Target) {
        self.subject = subject
        self.queue = queue
        self.sid = sid
        self.target = target
    }

    var client: NATSClientConnection? {
        if case .client(let client) = self.target { return client }
        return nil
    }

    public static func == (lhs: NATSSubscription, rhs: NATSSubscription) -> Bool { lhs === rhs }
    public func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(self)) }
}

// MARK: - Delivery batches

/// Messages a connection's read delivers to other clients, gathered per target and handed over in one append (one
/// lock, one copy) when the read is done, instead of one locked append per message. Messages from one publisher to
/// one subscriber keep their order; the publisher's connection hands the batch over before anything else it writes
/// (PONG, +OK, -ERR, a no-responders status) so that those keep their place too.
struct NATSDeliveryBatch {
    private(set) var isEnabled: Bool
    private var targets: [(client: NATSClientConnection, buffer: ByteBuffer, messages: Int, bytes: Int)] = []
    /// Targets found congested by this read's deliveries (batched or not): the publisher stalls on them.
    private(set) var congested: [NATSClientConnection] = []
    /// Bytes gathered for one target before it is handed over early (large payloads).
    static let handOverBytes = 64 * 1024
    /// Subscribers of one message above which deliveries bypass the batch (wide fan-out).
    static let maxTargets = 16

    static var none: NATSDeliveryBatch { NATSDeliveryBatch(enabled: false) }

    init(enabled: Bool) {
        self.isEnabled = enabled
    }

    var isEmpty: Bool { self.targets.isEmpty }

    /// Adds a `MSG` for `client`. False when the client is already known to be closed.
    mutating func append(_ message: NATSMessage, sid: String, to client: NATSClientConnection) -> Bool {
        let index: Int
        if let found = self.targets.firstIndex(where: { $0.client === client }) {
            index = found
        } else {
            guard client.isOpen else { return false }
            self.targets.append((client, client.channel.allocator.buffer(capacity: 4096), 0, 0))
            index = self.targets.count - 1
        }
        self.targets[index].buffer.writeNATSMessage(
            subject: message.subject,
            sid: sid,
            replyTo: message.replyTo,
            headers: message.headers,
            payload: message.payload
        )
        self.targets[index].messages += 1
        self.targets[index].bytes += message.payload.readableBytes + (message.headers?.readableBytes ?? 0)
        if self.targets[index].buffer.readableBytes >= Self.handOverBytes {
            let target = self.targets.remove(at: index)
            target.client.enqueueBatch(target.buffer, messages: target.messages, bytes: target.bytes)
            self.checkCongestion(of: target.client)
        }
        return true
    }

    /// Appends everything gathered to its targets' outbound buffers.
    mutating func handOver() {
        guard !self.targets.isEmpty else { return }
        for target in self.targets {
            target.client.enqueueBatch(target.buffer, messages: target.messages, bytes: target.bytes)
            self.checkCongestion(of: target.client)
        }
        self.targets.removeAll(keepingCapacity: true)
    }

    /// Notes `client` if it is congested (one relaxed load when it is not).
    @inline(__always)
    mutating func checkCongestion(of client: NATSClientConnection) {
        guard client.congested.load(ordering: .relaxed) else { return }
        if !self.congested.contains(where: { $0 === client }) { self.congested.append(client) }
    }

    /// Takes the congested targets noted so far.
    mutating func takeCongested() -> [NATSClientConnection] {
        guard !self.congested.isEmpty else { return [] }
        defer { self.congested = [] }
        return self.congested
    }

    /// Adds what another batch noted (deliveries that bypassed this one).
    mutating func absorbCongestion(from other: inout NATSDeliveryBatch) {
        for client in other.takeCongested() where !self.congested.contains(where: { $0 === client }) {
            self.congested.append(client)
        }
    }
}

// MARK: - NATSRouter

/// Who is interested in which subject, and delivery to them: the subscription index shared by every connection and
/// local receiver of one server.
public final class NATSRouter: Sendable {
    private let index = Mutex(SubjectIndex<NATSSubscription>())
    private let queueCursor = Atomic<Int>(0)
    /// Bumped (under the index's lock) whenever a subscription comes or goes: a connection's ``RouteCache`` is valid
    /// while the generation it saw is current.
    private let generation = Atomic<UInt64>(0)

    /// A publishing connection's memory of its last subject and what it matched, so that a client publishing to the
    /// same subject again skips the shared index (its lock and its hashing) until a subscription changes.
    struct RouteCache {
        var generation = UInt64.max
        var subject = ""
        var match = SubjectIndex<NATSSubscription>.Match()
    }

    public init() {}

    public var subscriptionCount: Int { self.index.withLock { $0.count } }

    func add(_ subscription: NATSSubscription) {
        self.index.withLock {
            $0.insert(subscription, pattern: subscription.subject, queue: subscription.queue)
            self.generation.wrappingAdd(1, ordering: .releasing)
        }
    }

    @discardableResult
    func remove(_ subscription: NATSSubscription) -> Bool {
        self.index.withLock {
            defer { self.generation.wrappingAdd(1, ordering: .releasing) }
            return $0.remove(subscription, pattern: subscription.subject, queue: subscription.queue)
        }
    }

    /// Subscribes a local receiver to `subject` (a pattern), in a queue group when `queue` is given.
    public func subscribe(_ subject: String, queue: String? = nil, receiver: any NATSLocalReceiver) -> NATSSubscription {
        let subscription = NATSSubscription(subject: subject, queue: queue, sid: "local", target: .local(receiver))
        self.add(subscription)
        return subscription
    }

    /// Ends a local subscription.
    public func unsubscribe(_ subscription: NATSSubscription) {
        self.remove(subscription)
    }

    /// Whether anyone would receive a message on `subject`.
    public func hasInterest(in subject: String) -> Bool {
        !self.index.withLock { $0.match(subject) }.isEmpty
    }

    /// Publishes from inside the server (no client connection): every matching subscription gets it, one member of
    /// each queue group. Returns how many received it.
    @discardableResult
    public func publish(_ message: NATSMessage) -> Int {
        self.route(message, from: nil)
    }

    /// Delivers `message` to the subscribers of `subject` while the message keeps its own subject on the wire (how
    /// a stream's message reaches a consumer's inbox or deliver subject).
    @discardableResult
    public func publish(_ message: NATSMessage, to subject: String) -> Int {
        self.route(message, from: nil, routingSubject: subject)
    }

    /// Delivers `message` to every match. `publisher` is the client that sent it (nil from inside the server); a
    /// client that connected with `echo: false` does not receive its own messages.
    func route(_ message: NATSMessage, from publisher: NATSClientConnection?, routingSubject: String? = nil) -> Int {
        let match = self.index.withLock { $0.match(routingSubject ?? message.subject) }
        var unbatched = NATSDeliveryBatch.none
        return self.deliver(message, to: match, from: publisher, batch: &unbatched)
    }

    /// ``route(_:from:routingSubject:)`` for a client's publish, through the connection's cache of its last subject;
    /// deliveries to clients go into `batch`, which the publisher's connection hands over at the end of its read.
    func route(
        _ message: NATSMessage,
        from publisher: NATSClientConnection,
        cache: inout RouteCache,
        batch: inout NATSDeliveryBatch
    ) -> Int {
        // Read before the lookup: a change after this point bumps the generation and the next publish looks again.
        let generation = self.generation.load(ordering: .acquiring)
        if cache.generation != generation || cache.subject != message.subject {
            cache.match = self.index.withLock { $0.match(message.subject) }
            cache.subject = message.subject
            cache.generation = generation
        }
        return self.deliver(message, to: cache.match, from: publisher, batch: &batch)
    }

    private func deliver(
        _ message: NATSMessage,
        to match: SubjectIndex<NATSSubscription>.Match,
        from publisher: NATSClientConnection?,
        batch: inout NATSDeliveryBatch
    ) -> Int {
        if match.isEmpty { return 0 }
        let skipOwn = publisher.map { !$0.echo } ?? false
        var deliveries = 0
        // Wide fan-out goes straight to each subscriber: the batch finds its targets by a linear search.
        var unbatched = NATSDeliveryBatch.none
        let wide = match.plain.count > NATSDeliveryBatch.maxTargets
        for subscription in match.plain {
            if skipOwn, subscription.client === publisher { continue }
            let delivered =
                wide
                ? self.deliver(message, to: subscription, batch: &unbatched)
                : self.deliver(message, to: subscription, batch: &batch)
            if delivered { deliveries += 1 }
        }
        let cursor = match.groups.isEmpty ? 0 : self.queueCursor.wrappingAdd(1, ordering: .relaxed).oldValue
        for (groupIndex, group) in match.groups.enumerated() {
            let members = group.members
            // Rotates per message; groups start at different members so that they do not move in lockstep.
            let start = (cursor &+ groupIndex &* 7) & Int.max
            // One member: start at a rotating position and take the first that accepts the message. Not batched: a
            // member found slow or closed must be known now, so that the message goes to another member.
            for offset in 0..<members.count {
                let subscription = members[(start &+ offset) % members.count]
                if skipOwn, subscription.client === publisher { continue }
                if self.deliver(message, to: subscription, batch: &unbatched) {
                    deliveries += 1
                    break
                }
            }
        }
        batch.absorbCongestion(from: &unbatched)
        return deliveries
    }

    /// The subscription of `client` that a reply subject would reach (for "no responders").
    func subscription(of client: NATSClientConnection, matching subject: String) -> NATSSubscription? {
        let match = self.index.withLock { $0.match(subject) }
        return match.plain.first { $0.client === client }
            ?? match.groups.lazy.flatMap(\.members).first { $0.client === client }
    }

    /// Delivers to one subscription; false when it has reached its maximum or its connection is gone.
    private func deliver(
        _ message: NATSMessage,
        to subscription: NATSSubscription,
        batch: inout NATSDeliveryBatch
    ) -> Bool {
        let maximum = subscription.maxMessages.load(ordering: .relaxed)
        if maximum > 0 {
            let count = subscription.delivered.wrappingAdd(1, ordering: .relaxed).newValue
            if count > maximum { return false }
            if count == maximum {
                self.remove(subscription)
                subscription.client?.forget(subscription)
            }
        }
        switch subscription.target {
        case .client(let client):
            if batch.isEnabled { return batch.append(message, sid: subscription.sid, to: client) }
            let delivered = client.enqueueMessage(message, sid: subscription.sid)
            batch.checkCongestion(of: client)
            return delivered
        case .local(let receiver):
            receiver.receive(message, subscription: subscription)
            return true
        }
    }
}
