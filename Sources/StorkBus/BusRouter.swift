import NIOCore
import StorkStreaming
import Synchronization

// MARK: - Subscriptions

/// Code inside the server that receives messages like a client does: JetStream's API, streams capturing their
/// subjects, resource handlers through the Swift API. Called on the publisher's thread: it must not block.
public protocol BusReceiver: Sendable {
    func receive(_ message: BusMessage, subscription: BusSubscription)
}

/// Something a publisher can be stalled on (flow control): a client connection whose outbound buffer is backed up,
/// or the link to another node whose queue is.
public protocol BusStallTarget: AnyObject, Sendable {
    /// How long a producer should stall now, registering `resume` to be called once when this target drains (or
    /// closes); nil when it is not congested any more (then `resume` is not kept).
    func stall(resume: @escaping @Sendable () -> Void) -> Duration?
    /// A count that grows whenever this target hands buffered output on (it is draining): a producer whose stall ran
    /// out stalls again while the target is still congested and this moved, and goes on only when it did not (the
    /// target stopped reading and will be dropped as a slow consumer). Targets that cannot tell keep it at 0.
    var drainProgress: Int { get }
}

extension BusStallTarget {
    public var drainProgress: Int { 0 }
}

/// A client connection of a protocol adapter (NATS) as the router delivers to it: messages are encoded in the
/// connection's own wire format, straight into its outbound buffer or into a buffer gathered for it during the
/// publisher's read (``BusDeliveryBatch``).
public protocol BusConnection: BusStallTarget {
    /// Whether messages can still be queued (not closed).
    var isOpen: Bool { get }
    /// Whether it receives messages it published itself.
    var echo: Bool { get }
    /// Whether its outbound buffer is backed up: producers into it should stall (a relaxed load, read after each
    /// delivery).
    var isCongested: Bool { get }
    /// An empty buffer for gathering deliveries to it.
    func makeBatchBuffer() -> ByteBuffer
    /// Encodes `message` for subscription `sid` into `buffer`, in the connection's wire format.
    func encode(_ message: BusMessage, sid: String, into buffer: inout ByteBuffer)
    /// Queues one message for subscription `sid`. False when the connection is closed or was just found slow.
    func enqueueMessage(_ message: BusMessage, sid: String) -> Bool
    /// Queues deliveries gathered with ``encode(_:sid:into:)``, as one write. False when closed or found slow.
    @discardableResult func enqueueBatch(_ frames: ByteBuffer, messages: Int, bytes: Int) -> Bool
    /// Forgets a subscription that ended by reaching its maximum number of messages.
    func forget(_ subscription: BusSubscription)
}

/// The way to another node of the cluster, as the router sees it: a subscription whose target is a route stands for
/// the interest of that node's subscribers (see ``BusRouter/addRemote(_:pattern:queue:)``).
public protocol BusRemoteRoute: BusStallTarget {
    /// Queues `message` for the node behind the route, which delivers it to its own subscribers and to one member of
    /// each queue group in `groups` (the groups this node chose that node for). Never waits; false when the route
    /// is closed or had to drop it.
    func forward(_ message: BusMessage, groups: [String]) -> Bool
    /// The same for the messages one client read published, in order: sent together (one frame when the route is
    /// idle). Returns how many were accepted.
    func forward(_ messages: [(message: BusMessage, groups: [String])]) -> Int
    /// ``forward(_:groups:)`` for a message the receiving node routes by `routingSubject` rather than its subject.
    func forward(_ message: BusMessage, groups: [String], routingSubject: String) -> Bool
    /// Whether the route's queue is backed up: publishers into it should stall.
    var isCongested: Bool { get }
    /// False when the node behind the route is known to be unreachable now: a queue group's message goes to a
    /// member on another node if there is one.
    var isAvailable: Bool { get }
}

/// Who learns about a subscription.
public enum BusSubscriptionScope: Sendable, Hashable {
    /// Its interest is announced to the other nodes of the cluster, which forward matching messages here.
    case cluster
    /// It sees only what is published on this node (the node's own JetStream API, for one).
    case node
}

/// One subscription: a client's `SUB`, a local receiver inside the server, or another node's interest.
public final class BusSubscription: Hashable, Sendable {
    public enum Target: Sendable {
        case client(any BusConnection)
        case local(any BusReceiver)
        /// Another node's subscribers: matching messages are forwarded there.
        case remote(any BusRemoteRoute)
    }

    public let subject: String
    public let queue: String?
    public let sid: String
    public let target: Target
    public let scope: BusSubscriptionScope
    /// Deliveries so far, counted only when ``maxMessages`` is set.
    package let delivered = Atomic<Int>(0)
    /// Deliveries after which the subscription ends (`UNSUB sid max`); 0 for none.
    package let maxMessages = Atomic<Int>(0)

    public init(subject: String, queue: String?, sid: String, target: Target, scope: BusSubscriptionScope = .cluster) {
        self.subject = subject
        self.queue = queue
        self.sid = sid
        self.target = target
        self.scope = scope
    }

    /// Whether this subscription is interest the cluster should know about: this node's, cluster-scoped.
    package var announced: Bool {
        if case .remote = self.target { return false }
        return self.scope == .cluster
    }

    /// The key of this subscription's interest: its pattern, or pattern and queue group separated by a space.
    public var interestKey: String { BusRouter.interestKey(pattern: self.subject, queue: self.queue) }

    package var client: (any BusConnection)? {
        if case .client(let client) = self.target { return client }
        return nil
    }

    public static func == (lhs: BusSubscription, rhs: BusSubscription) -> Bool { lhs === rhs }
    public func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(self)) }
}

// MARK: - Delivery batches

/// Messages a connection's read delivers to other clients, gathered per target and handed over in one append (one
/// lock, one copy) when the read is done, instead of one locked append per message. Messages from one publisher to
/// one subscriber keep their order; the publisher's connection hands the batch over before anything else it writes
/// (PONG, +OK, -ERR, a no-responders status) so that those keep their place too.
package struct BusDeliveryBatch {
    package private(set) var isEnabled: Bool
    private var targets: [(client: any BusConnection, buffer: ByteBuffer, messages: Int, bytes: Int)] = []
    /// Targets found congested by this read's deliveries (batched or not): the publisher stalls on them.
    private(set) var congested: [any BusStallTarget] = []
    /// Messages for other nodes gathered during the read, per route, handed over with the rest.
    private var remote: [(route: any BusRemoteRoute, items: [(message: BusMessage, groups: [String])])] = []
    /// Bytes gathered for one target before it is handed over early (large payloads).
    static let handOverBytes = 64 * 1024
    /// Subscribers of one message above which deliveries bypass the batch (wide fan-out).
    static let maxTargets = 16

    package static var none: BusDeliveryBatch { BusDeliveryBatch(enabled: false) }

    package init(enabled: Bool) {
        self.isEnabled = enabled
    }

    package var isEmpty: Bool { self.targets.isEmpty && self.remote.isEmpty }

    /// Gathers a message for another node (sent in one go at the end of the read).
    mutating func append(_ message: BusMessage, groups: [String], to route: any BusRemoteRoute) {
        if let index = self.remote.firstIndex(where: { $0.route === route }) {
            self.remote[index].items.append((message, groups))
        } else {
            self.remote.append((route, [(message, groups)]))
        }
    }

    /// Adds a `MSG` for `client`. False when the client is already known to be closed.
    mutating func append(_ message: BusMessage, sid: String, to client: any BusConnection) -> Bool {
        let index: Int
        if let found = self.targets.firstIndex(where: { $0.client === client }) {
            index = found
        } else {
            guard client.isOpen else { return false }
            self.targets.append((client, client.makeBatchBuffer(), 0, 0))
            index = self.targets.count - 1
        }
        client.encode(message, sid: sid, into: &self.targets[index].buffer)
        self.targets[index].messages += 1
        self.targets[index].bytes += message.size
        if self.targets[index].buffer.readableBytes >= Self.handOverBytes {
            let target = self.targets.remove(at: index)
            target.client.enqueueBatch(target.buffer, messages: target.messages, bytes: target.bytes)
            self.checkCongestion(of: target.client)
        }
        return true
    }

    /// Appends everything gathered to its targets' outbound buffers, and hands other nodes' messages to their routes.
    package mutating func handOver() {
        if !self.targets.isEmpty {
            for target in self.targets {
                target.client.enqueueBatch(target.buffer, messages: target.messages, bytes: target.bytes)
                self.checkCongestion(of: target.client)
            }
            self.targets.removeAll(keepingCapacity: true)
        }
        if !self.remote.isEmpty {
            let remote = self.remote
            self.remote.removeAll(keepingCapacity: true)
            for (route, items) in remote {
                _ = route.forward(items)
                if route.isCongested { self.note(route) }
            }
        }
    }

    /// Notes `client` if it is congested (one relaxed load when it is not).
    @inline(__always)
    mutating func checkCongestion(of client: any BusConnection) {
        guard client.isCongested else { return }
        self.note(client)
    }

    package mutating func note(_ target: any BusStallTarget) {
        if !self.congested.contains(where: { $0 === target }) { self.congested.append(target) }
    }

    /// Takes the congested targets noted so far.
    package mutating func takeCongested() -> [any BusStallTarget] {
        guard !self.congested.isEmpty else { return [] }
        defer { self.congested = [] }
        return self.congested
    }

    /// Adds what another batch noted (deliveries that bypassed this one).
    mutating func absorbCongestion(from other: inout BusDeliveryBatch) {
        for target in other.takeCongested() { self.note(target) }
    }
}

// MARK: - BusRouter

/// Who is interested in which subject, and delivery to them: the subscription index shared by every connection and
/// local receiver of one server, and the interest of the other nodes of the cluster (remote subscriptions).
///
/// Cluster routing: this node's cluster-scoped subscriptions are counted per interest key (pattern, or pattern and
/// queue group); the first one of a key and the last one's departure are reported to the observer (the cluster
/// part, which tells the other nodes), in order, under the router's lock. Other nodes' interest comes back as
/// remote subscriptions. A message published here reaches each matching node once, whatever the number of its
/// patterns that match; a queue group gets one member in the whole cluster, a local member preferred; what arrives
/// from another node (``deliverFromPeer(_:groups:)``) is delivered here only, never forwarded again.
public final class BusRouter: Sendable {
    struct State {
        var subjects = SubjectIndex<BusSubscription>()
        /// Interest key → this node's cluster-scoped subscriptions with it.
        var interest: [String: Int] = [:]
        var observer: (@Sendable (_ key: String, _ added: Bool) -> Void)?
    }

    private let state = Mutex(State())
    private let queueCursor = Atomic<Int>(0)
    /// Bumped (under the lock) whenever a subscription comes or goes: a connection's ``RouteCache`` is valid while
    /// the generation it saw is current.
    private let generation = Atomic<UInt64>(0)

    /// A publishing connection's memory of its last subject and what it matched, so that a client publishing to the
    /// same subject again skips the shared index (its lock and its hashing) until a subscription changes.
    package struct RouteCache {
        var generation = UInt64.max
        var subject = ""
        var match = SubjectIndex<BusSubscription>.Match()

        package init() {}
    }

    public init() {}

    public var subscriptionCount: Int { self.state.withLock { $0.subjects.count } }

    /// The interest key of a pattern with an optional queue group: `pattern`, or `pattern queue`.
    public static func interestKey(pattern: String, queue: String?) -> String {
        queue.map { "\(pattern) \($0)" } ?? pattern
    }

    /// The pattern and queue group of an interest key.
    public static func parseInterestKey(_ key: String) -> (pattern: String, queue: String?) {
        guard let space = key.firstIndex(of: " ") else { return (key, nil) }
        return (String(key[..<space]), String(key[key.index(after: space)...]))
    }

    /// Reports this node's interest to `observer`: first every key held now (`added: true`), then from now on the
    /// first cluster-scoped subscription of a key (`true`) and the end of the last one (`false`), in the order they
    /// happen, called under the router's lock (it must not call the router). One observer per router.
    public func observeInterest(_ observer: @escaping @Sendable (_ key: String, _ added: Bool) -> Void) {
        self.state.withLock { state in
            state.observer = observer
            for key in state.interest.keys.sorted() { observer(key, true) }
        }
    }

    /// Stops reporting interest.
    public func stopObservingInterest() {
        self.state.withLock { $0.observer = nil }
    }

    /// This node's interest keys (cluster-scoped subscriptions), sorted.
    public var interestKeys: [String] { self.state.withLock { $0.interest.keys.sorted() } }

    package func add(_ subscription: BusSubscription) {
        self.state.withLock { state in
            state.subjects.insert(subscription, pattern: subscription.subject, queue: subscription.queue)
            self.generation.wrappingAdd(1, ordering: .releasing)
            guard subscription.announced else { return }
            let key = subscription.interestKey
            let count = state.interest[key, default: 0]
            state.interest[key] = count + 1
            if count == 0 { state.observer?(key, true) }
        }
    }

    @discardableResult
    package func remove(_ subscription: BusSubscription) -> Bool {
        self.state.withLock { state in
            defer { self.generation.wrappingAdd(1, ordering: .releasing) }
            guard state.subjects.remove(subscription, pattern: subscription.subject, queue: subscription.queue) else {
                return false
            }
            guard subscription.announced else { return true }
            let key = subscription.interestKey
            let count = state.interest[key, default: 1] - 1
            state.interest[key] = count > 0 ? count : nil
            if count <= 0 { state.observer?(key, false) }
            return true
        }
    }

    /// Subscribes a local receiver to `subject` (a pattern), in a queue group when `queue` is given. A `.node`
    /// subscription sees only what is published on this node.
    public func subscribe(
        _ subject: String,
        queue: String? = nil,
        scope: BusSubscriptionScope = .cluster,
        receiver: any BusReceiver
    ) -> BusSubscription {
        let subscription = BusSubscription(
            subject: subject,
            queue: queue,
            sid: "local",
            target: .local(receiver),
            scope: scope
        )
        self.add(subscription)
        return subscription
    }

    /// Ends a local subscription.
    public func unsubscribe(_ subscription: BusSubscription) {
        self.remove(subscription)
    }

    /// Adds another node's interest in `pattern` (in queue group `queue`): matching messages published here are
    /// forwarded through `route`. Remote subscriptions are never announced back.
    public func addRemote(_ route: any BusRemoteRoute, pattern: String, queue: String?) -> BusSubscription {
        let subscription = BusSubscription(subject: pattern, queue: queue, sid: "remote", target: .remote(route))
        self.add(subscription)
        return subscription
    }

    /// Ends a remote subscription.
    public func removeRemote(_ subscription: BusSubscription) {
        self.remove(subscription)
    }

    /// Whether anyone, here or on another node, would receive a message on `subject`.
    public func hasInterest(in subject: String) -> Bool {
        !self.state.withLock { $0.subjects.match(subject) }.isEmpty
    }

    /// How many other nodes have a subscriber that would receive a message on `subject` (each node once).
    public func remoteNodesInterested(in subject: String) -> Int {
        let match = self.state.withLock { $0.subjects.match(subject) }
        var routes: [ObjectIdentifier] = []
        func note(_ subscription: BusSubscription) {
            guard case .remote(let route) = subscription.target else { return }
            let id = ObjectIdentifier(route)
            if !routes.contains(id) { routes.append(id) }
        }
        for subscription in match.plain { note(subscription) }
        for group in match.groups { for member in group.members { note(member) } }
        return routes.count
    }

    /// Whether a subscriber on this node (a client or a receiver inside the server) would receive a message on
    /// `subject`.
    public func hasLocalInterest(in subject: String) -> Bool {
        let match = self.state.withLock { $0.subjects.match(subject) }
        return match.plain.contains { !$0.isRemote } || match.groups.contains { $0.members.contains { !$0.isRemote } }
    }

    /// Publishes from inside the server (no client connection): every matching subscription gets it, one member of
    /// each queue group, here or on other nodes. Returns how many received it (a node counts once).
    @discardableResult
    public func publish(_ message: BusMessage) -> Int {
        self.route(message, from: nil)
    }

    /// Delivers `message` to the subscribers of `subject` while the message keeps its own subject on the wire (how
    /// a stream's message reaches a consumer's inbox or deliver subject).
    @discardableResult
    public func publish(_ message: BusMessage, to subject: String) -> Int {
        self.route(message, from: nil, routingSubject: subject)
    }

    /// Delivers a message that another node forwarded: to this node's subscribers, and to one local member of each
    /// queue group in `groups` (the groups the publishing node chose this node for). Never forwarded again. Returns
    /// how many received it and the targets found congested (the link that brought it may stall on them).
    public func deliverFromPeer(_ message: BusMessage, groups: [String]) -> (deliveries: Int, congested: [any BusStallTarget]) {
        var batch = BusDeliveryBatch.none
        var cache = RouteCache()
        let deliveries = self.deliverFromPeer(message, groups: groups, match: self.match(message.subject, cache: &cache), batch: &batch)
        return (deliveries, batch.takeCongested())
    }

    /// ``deliverFromPeer(_:groups:)`` for the messages of one frame: deliveries to clients are gathered and handed
    /// over together (one append per client, as for a client's read). Returns the congested targets.
    /// A message with a `routingSubject` (a JetStream delivery: the stream's subject, for a deliver subject or an
    /// inbox) goes where that subject leads.
    public func deliverFromPeer(
        _ messages: [(message: BusMessage, groups: [String], routingSubject: String?)]
    ) -> [any BusStallTarget] {
        var batch = BusDeliveryBatch(enabled: true)
        var cache = RouteCache()
        for (message, groups, routingSubject) in messages {
            let match = self.match(routingSubject ?? message.subject, cache: &cache)
            _ = self.deliverFromPeer(message, groups: groups, match: match, batch: &batch)
        }
        batch.handOver()
        return batch.takeCongested()
    }

    /// What `subject` matches, from `cache` while no subscription came or went since it was filled.
    private func match(_ subject: String, cache: inout RouteCache) -> SubjectIndex<BusSubscription>.Match {
        // Read before the lookup: a change after this point bumps the generation and the next call looks again.
        let generation = self.generation.load(ordering: .acquiring)
        if cache.generation != generation || cache.subject != subject {
            cache.match = self.state.withLock { $0.subjects.match(subject) }
            cache.subject = subject
            cache.generation = generation
        }
        return cache.match
    }

    private func deliverFromPeer(
        _ message: BusMessage,
        groups: [String],
        match: SubjectIndex<BusSubscription>.Match,
        batch: inout BusDeliveryBatch
    ) -> Int {
        guard !match.isEmpty else { return 0 }
        var deliveries = 0
        for subscription in match.plain where !subscription.isRemote {
            if self.deliver(message, to: subscription, batch: &batch) { deliveries += 1 }
        }
        if !groups.isEmpty {
            let cursor = self.queueCursor.wrappingAdd(1, ordering: .relaxed).oldValue
            for (groupIndex, group) in match.groups.enumerated() where groups.contains(group.queue) {
                let members = group.members
                let start = (cursor &+ groupIndex &* 7) & Int.max
                var unbatched = BusDeliveryBatch.none
                for offset in 0..<members.count {
                    let subscription = members[(start &+ offset) % members.count]
                    if subscription.isRemote { continue }
                    if self.deliver(message, to: subscription, batch: &unbatched) {
                        deliveries += 1
                        break
                    }
                }
                batch.absorbCongestion(from: &unbatched)
            }
        }
        return deliveries
    }

    /// Delivers `message` to every match. `publisher` is the client that sent it (nil from inside the server); a
    /// client that connected with `echo: false` does not receive its own messages.
    package func route(_ message: BusMessage, from publisher: (any BusConnection)?, routingSubject: String? = nil) -> Int {
        let match = self.state.withLock { $0.subjects.match(routingSubject ?? message.subject) }
        var unbatched = BusDeliveryBatch.none
        let routing = routingSubject == message.subject ? nil : routingSubject
        return self.deliver(message, to: match, from: publisher, batch: &unbatched, routingSubject: routing)
    }

    /// ``route(_:from:routingSubject:)`` for a client's publish, through the connection's cache of its last subject;
    /// deliveries to clients go into `batch`, which the publisher's connection hands over at the end of its read.
    package func route(
        _ message: BusMessage,
        from publisher: any BusConnection,
        cache: inout RouteCache,
        batch: inout BusDeliveryBatch
    ) -> Int {
        self.deliver(message, to: self.match(message.subject, cache: &cache), from: publisher, batch: &batch)
    }

    /// The nodes a message goes to, with the queue groups each should serve.
    struct RemotePlan {
        var routes: [(route: any BusRemoteRoute, groups: [String])] = []

        mutating func add(_ route: any BusRemoteRoute, group: String?) {
            if let index = self.routes.firstIndex(where: { $0.route === route }) {
                if let group { self.routes[index].groups.append(group) }
            } else {
                self.routes.append((route, group.map { [$0] } ?? []))
            }
        }
    }

    private func deliver(
        _ message: BusMessage,
        to match: SubjectIndex<BusSubscription>.Match,
        from publisher: (any BusConnection)?,
        batch: inout BusDeliveryBatch,
        routingSubject: String? = nil
    ) -> Int {
        if match.isEmpty { return 0 }
        let skipOwn = publisher.map { !$0.echo } ?? false
        var deliveries = 0
        var remote = RemotePlan()
        // Wide fan-out goes straight to each subscriber: the batch finds its targets by a linear search.
        var unbatched = BusDeliveryBatch.none
        let wide = match.plain.count > BusDeliveryBatch.maxTargets
        for subscription in match.plain {
            if case .remote(let route) = subscription.target {
                remote.add(route, group: nil)
                continue
            }
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
            // One member: start at a rotating position and take the first local member that accepts the message;
            // only when none does, one other node that has members. Not batched: a member found slow or closed must
            // be known now, so that the message goes to another member.
            var served = false
            var remoteMember: (any BusRemoteRoute)?
            var remoteIsAvailable = false
            for offset in 0..<members.count {
                let subscription = members[(start &+ offset) % members.count]
                if case .remote(let route) = subscription.target {
                    // The first remote member whose node is reachable; failing that, the first one.
                    if !remoteIsAvailable, route.isAvailable {
                        remoteMember = route
                        remoteIsAvailable = true
                    } else if remoteMember == nil {
                        remoteMember = route
                    }
                    continue
                }
                if skipOwn, subscription.client === publisher { continue }
                if self.deliver(message, to: subscription, batch: &unbatched) {
                    deliveries += 1
                    served = true
                    break
                }
            }
            if !served, let route = remoteMember { remote.add(route, group: group.queue) }
        }
        for (route, groups) in remote.routes {
            if let routingSubject {
                // Routed by another subject than its own: the other node must route it the same way.
                if route.forward(message, groups: groups, routingSubject: routingSubject) { deliveries += 1 }
                if route.isCongested { batch.note(route) }
            } else if batch.isEnabled {
                // With the read's other messages for that node, at the end of the read.
                batch.append(message, groups: groups, to: route)
                deliveries += 1
            } else {
                if route.forward(message, groups: groups) { deliveries += 1 }
                if route.isCongested { batch.note(route) }
            }
        }
        batch.absorbCongestion(from: &unbatched)
        return deliveries
    }

    /// The subscription of `client` that a reply subject would reach (for "no responders").
    package func subscription(of client: any BusConnection, matching subject: String) -> BusSubscription? {
        let match = self.state.withLock { $0.subjects.match(subject) }
        return match.plain.first { $0.client === client }
            ?? match.groups.lazy.flatMap(\.members).first { $0.client === client }
    }

    /// Delivers to one subscription; false when it has reached its maximum or its connection is gone.
    private func deliver(
        _ message: BusMessage,
        to subscription: BusSubscription,
        batch: inout BusDeliveryBatch
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
        case .remote(let route):
            return route.forward(message, groups: subscription.queue.map { [$0] } ?? [])
        }
    }
}

extension BusSubscription {
    var isRemote: Bool {
        if case .remote = self.target { return true }
        return false
    }
}
