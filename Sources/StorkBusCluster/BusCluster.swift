import DequeModule
import Logging
import NIOCore
import ServiceLifecycle
import StorkCore
import StorkBus
import StorkResources
import StorkStreaming
import Synchronization

// MARK: - BusCluster
//
// Driver shape: the interest table is a pure state machine (`BusInterestStateMachine`) behind a `Mutex`; frames are
// sent after it is released. This node's interest comes from the router (`observeInterest`), which reports the first
// subscription of a key and the end of the last one under its own lock, in order; the resulting deltas go to the
// transport at once, so that a peer learns of a subscription before any message published after it (a request's
// reply inbox before the request). Other nodes' interest becomes remote subscriptions on the router, changed under
// a second lock (`remote`) in the order the table decided them.
//
// Messages: the router forwards a message to each matching node once (`BusRemoteRoute.forward` on that node's
// `BusPeerLink`, with the queue groups it chose that node for). A link queues what it is given (bounded) and one task
// per link sends it in frames, waiting while the transport's own queue for that peer is full, so that nothing is
// dropped below it. Past half of the bound the link is congested and the client connections publishing into it are
// stalled (flow control, as for a slow subscriber); past the bound messages are dropped, counted and logged.
// Received messages are delivered on the local router and never forwarded again: one hop, no loops.

/// One node's part of the cluster-wide message bus: tells the other nodes which subjects and queue groups this
/// node's subscribers want, forwards to each interested node what is published here, and delivers here what other
/// nodes forward. Every NATS client, gateway session, connector and receiver inside the server on any node sees the
/// messages published on every node (nats-server's cluster semantics; Docs/nats.md, "Clustering").
///
/// Run it as a `Service` beside the `ResourceManager`; it ends when the manager's frame stream ends, or on graceful
/// shutdown. One per node; `run()` is called once.
public final class BusCluster<C: Clock>: Service, Sendable where C.Duration == Duration {
    struct Watcher {
        var pattern: String
        var last: BusInterest
        var continuation: AsyncStream<BusInterest>.Continuation
    }

    struct State {
        var machine: BusInterestStateMachine
        var links: [NodeID: BusPeerLink] = [:]
        /// Live peers' NATS client addresses, as they told.
        var clientURLs: [NodeID: String] = [:]
        var urlWatchers: [Int: AsyncStream<[String]>.Continuation] = [:]
        var lastURLs: [String] = []
        var watchers: [Int: Watcher] = [:]
        var nextWatcher = 0
        var statistics = BusClusterStatistics()
        var isStopped = false
        var warnedKeyLimit = false
    }

    public let configuration: BusClusterConfiguration
    private let network: any BusNetwork
    public let router: BusRouter
    private let clock: C
    private let origin: C.Instant
    private let logger: Logger
    private let state: Mutex<State>
    /// Remote subscriptions per peer and key; held while they change (see the note at the top of the file).
    private let remote = Mutex<[NodeID: [String: BusSubscription]]>([:])
    /// Links whose sending task must start.
    private let newLinks: AsyncStream<BusPeerLink>
    private let newLinkContinuation: AsyncStream<BusPeerLink>.Continuation

    public init(
        network: some BusNetwork,
        router: BusRouter,
        configuration: BusClusterConfiguration = BusClusterConfiguration(),
        clock: C,
        logger: Logger = Logger(label: "stork.bus")
    ) {
        self.network = network
        self.router = router
        self.configuration = configuration
        self.clock = clock
        self.origin = clock.now
        var logger = logger
        logger[metadataKey: "stork.node"] = "\(network.identity.name)"
        self.logger = logger
        self.state = Mutex(
            State(
                machine: BusInterestStateMachine(
                    myself: network.identity,
                    antiEntropyInterval: configuration.antiEntropyInterval
                )
            )
        )
        (self.newLinks, self.newLinkContinuation) = AsyncStream<BusPeerLink>.makeStream()
    }

    // MARK: Interest

    /// Who in the cluster is subscribed to `subject` (or, for a pattern, to any subject it could match).
    public func interest(in subject: String) -> BusInterest {
        self.state.withLock { $0.machine.interest(in: subject) }
    }

    /// The interest in `pattern` now, then every time it changes (only the latest value is kept for a slow
    /// reader). A provider waits for `isEmpty` to know that nobody in the cluster listens any more. Ends when the
    /// bus stops.
    public func interestUpdates(for pattern: String) -> AsyncStream<BusInterest> {
        let (stream, continuation) = AsyncStream<BusInterest>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let (id, current, stopped) = self.state.withLock { state in
            let current = state.machine.interest(in: pattern)
            state.nextWatcher += 1
            if !state.isStopped {
                state.watchers[state.nextWatcher] = Watcher(pattern: pattern, last: current, continuation: continuation)
            }
            return (state.nextWatcher, current, state.isStopped)
        }
        continuation.yield(current)
        if stopped {
            continuation.finish()
            return stream
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.watchers.removeValue(forKey: id) }
        }
        return stream
    }

    /// The local interest keys and what each live peer is known to want, for status pages and tests.
    public func snapshot() -> (local: [String], peers: [NodeID: [String]]) {
        self.state.withLock { state in
            let machine = state.machine
            var peers: [NodeID: [String]] = [:]
            for node in machine.livePeers { peers[node] = machine.patterns(of: node) }
            return (machine.localPatterns, peers)
        }
    }

    /// How many other nodes are live members.
    public var livePeerCount: Int { self.state.withLock { $0.machine.livePeers.count } }

    /// Where NATS clients can connect in the cluster: this node's client URL and every live peer's, sorted.
    public var connectURLs: [String] { self.state.withLock { self.connectURLs(of: $0) } }

    private func connectURLs(of state: State) -> [String] {
        var urls = Set(state.clientURLs.values)
        if let own = self.configuration.clientURL { urls.insert(own) }
        return urls.sorted()
    }

    /// ``connectURLs`` now, then every time it changes (only the newest value is kept for a slow reader). Ends when
    /// the bus stops.
    public func connectURLUpdates() -> AsyncStream<[String]> {
        let (stream, continuation) = AsyncStream<[String]>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let (id, stopped) = self.state.withLock { state in
            state.nextWatcher += 1
            if !state.isStopped { state.urlWatchers[state.nextWatcher] = continuation }
            // Yielded under the lock that updates are published under: a change published right after the watcher
            // was registered comes after this value, never before it (the buffer keeps only the newest).
            continuation.yield(self.connectURLs(of: state))
            return (state.nextWatcher, state.isStopped)
        }
        if stopped {
            continuation.finish()
            return stream
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.urlWatchers.removeValue(forKey: id) }
        }
        return stream
    }

    /// Tells watchers of the connect URLs when they changed (under the state lock: they keep the newest value).
    private func publishURLs(_ state: inout State) {
        let urls = self.connectURLs(of: state)
        guard urls != state.lastURLs else { return }
        state.lastURLs = urls
        for continuation in state.urlWatchers.values { continuation.yield(urls) }
    }

    /// Counters since start.
    public func statistics() -> BusClusterStatistics {
        let (statistics, links) = self.state.withLock { state in
            var statistics = state.statistics
            statistics.interest = state.machine.statistics
            return (statistics, Array(state.links.values))
        }
        var result = statistics
        for link in links {
            let counters = link.counters()
            result.messagesForwarded += counters.forwarded
            result.bytesForwarded += counters.bytes
            result.messageFramesSent += counters.frames
            result.messagesDropped += counters.dropped
            result.messagesTooLarge += counters.tooLarge
            result.stalls += counters.stalls
            result.forwardedByPeer[link.node, default: 0] += counters.forwarded
            result.bytesByPeer[link.node, default: 0] += counters.bytes
            if counters.dropped > 0 { result.droppedByPeer[link.node, default: 0] += counters.dropped }
        }
        return result
    }

    /// Bytes waiting for each live peer (this node's queue; the transport's is separate).
    public func queuedBytes() -> [NodeID: Int] {
        let links = self.state.withLock { Array($0.links.values) }
        var result: [NodeID: Int] = [:]
        for link in links { result[link.node] = link.queuedBytes }
        return result
    }

    // MARK: Service

    public func run() async throws {
        let events = self.network.events()
        self.mutate { machine, now in machine.start(now: now) }
        // Receiving before anything is sent: a frame that arrives with no receiver is dropped, and a peer's answer to
        // the pull sent below (or its deltas) lost that way would wait for the anti-entropy round. Interest frames
        // that come before the members are read are ignored (strangers); the pull sent then brings them again.
        self.network.setRelayReceiver { [weak self] message, resume in self?.receive(message, resume: resume) }
        self.refreshMembers()
        self.router.observeInterest { [weak self] key, added in self?.localInterestChanged(key, added: added) }
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    for await event in events {
                        switch event {
                        case .member, .joined, .viewApplied, .left: self.refreshMembers()
                        case .resource, .refuted: continue
                        }
                    }
                }
                group.addTask { await self.timerLoop() }
                group.addTask {
                    await withTaskGroup(of: Void.self) { links in
                        for await link in self.newLinks {
                            links.addTask { await self.send(link) }
                        }
                        links.cancelAll()
                    }
                }
                // The node's event stream ends when it stops: then the bus stops too.
                await group.next()
                self.stop()
                group.cancelAll()
            }
        }
        self.stop()
    }

    /// Ends every remote subscription, link and watcher.
    private func stop() {
        self.network.setRelayReceiver(nil)
        self.router.stopObservingInterest()
        let (watchers, links, urlWatchers) = self.remote.withLock { remote in
            for subscriptions in remote.values {
                for subscription in subscriptions.values { self.router.removeRemote(subscription) }
            }
            remote = [:]
            return self.state.withLock { state -> ([Watcher], [BusPeerLink], [AsyncStream<[String]>.Continuation]) in
                state.isStopped = true
                defer {
                    state.watchers = [:]
                    state.urlWatchers = [:]
                    state.links = [:]
                }
                return (Array(state.watchers.values), Array(state.links.values), Array(state.urlWatchers.values))
            }
        }
        // Outside the lock: finishing a stream runs its termination handler, which takes the lock.
        for link in links { link.close() }
        for watcher in watchers { watcher.continuation.finish() }
        for continuation in urlWatchers { continuation.finish() }
        self.newLinkContinuation.finish()
    }

    private func now() -> StorkInstant {
        StorkInstant(nanoseconds: self.origin.duration(to: self.clock.now).nanosecondsClamped)
    }

    private func timerLoop() async {
        while !Task.isCancelled {
            // Membership events can be missed (a full event buffer): reread the members every round.
            self.refreshMembers()
            self.mutate { machine, now in machine.tick(now: now) }
            // Where this node's clients connect, again every round (repairs a lost greeting).
            let peers = self.state.withLock { $0.machine.livePeers }
            self.announceNode(to: peers)
            let deadline = self.state.withLock { $0.machine.nextDeadline }
            let delay = deadline.map { $0 - self.now() } ?? self.configuration.antiEntropyInterval
            do {
                try await self.clock.sleep(for: max(delay, .milliseconds(1)))
            } catch {
                return
            }
        }
    }

    private func refreshMembers() {
        self.mutate { machine, _ in machine.membersChanged(self.network.liveMembers()) }
    }

    // MARK: Driving the state machine

    /// This node's interest changed (called by the router under its lock, in order): only frames go out.
    private func localInterestChanged(_ key: String, added: Bool) {
        let limit = self.configuration.maximumLocalKeys
        var warn = false
        let sends = self.state.withLock { state -> [(BusInterestMessage, NodeID)] in
            guard !state.isStopped else { return [] }
            if added, state.machine.localCount(of: key) == 0, state.machine.localPatterns.count >= limit {
                state.statistics.keysNotAnnounced += 1
                warn = !state.warnedKeyLimit
                state.warnedKeyLimit = true
                return []
            }
            guard BusFrameCodec.isValidInterestKey(key) else { return [] }
            let actions = added ? state.machine.addLocalInterest(key) : state.machine.removeLocalInterest(key)
            return self.sends(of: actions, state: &state)
        }
        if warn {
            self.logger.warning(
                "more distinct subscriptions than bus.maximumLocalKeys: the others see only what is published here",
                metadata: ["stork.limit": "\(limit)"]
            )
        }
        self.transmit(sends)
    }

    /// Runs one event through the interest table and performs what it asks: remote subscriptions in order, then
    /// watchers and frames outside the locks.
    private func mutate(_ body: (inout BusInterestStateMachine, StorkInstant) -> [BusInterestAction]) {
        let now = self.now()
        var created: [BusPeerLink] = []
        var closed: [BusPeerLink] = []
        let sends = self.remote.withLock { remote -> [(BusInterestMessage, NodeID)] in
            let (actions, sends, links) = self.state.withLock {
                state -> ([BusInterestAction], [(BusInterestMessage, NodeID)], [NodeID: BusPeerLink]) in
                guard !state.isStopped else { return ([], [], [:]) }
                let actions = body(&state.machine, now)
                let sends = self.sends(of: actions, state: &state)
                // A link per live peer; links of departed peers close.
                let live = Set(state.machine.livePeers)
                for node in live where state.links[node] == nil {
                    let network = self.network
                    let link = BusPeerLink(
                        node: node,
                        configuration: self.configuration,
                        transport: BusPeerLink.Transport(
                            send: { network.sendRelay($0, to: node) },
                            backlog: { network.relayBacklog(to: node) },
                            reachable: { network.isReachable(node) }
                        )
                    )
                    state.links[node] = link
                    created.append(link)
                }
                for (node, link) in state.links where !live.contains(node) {
                    state.links[node] = nil
                    state.clientURLs[node] = nil
                    closed.append(link)
                }
                if !closed.isEmpty { self.publishURLs(&state) }
                return (actions, sends, state.links)
            }
            for action in actions {
                switch action {
                case .peerAdded(let node, let key):
                    guard let link = links[node], remote[node]?[key] == nil else { continue }
                    let (pattern, queue) = BusRouter.parseInterestKey(key)
                    remote[node, default: [:]][key] = self.router.addRemote(link, pattern: pattern, queue: queue)
                case .peerRemoved(let node, let key):
                    if let subscription = remote[node]?.removeValue(forKey: key) {
                        self.router.removeRemote(subscription)
                    }
                    if remote[node]?.isEmpty == true { remote[node] = nil }
                case .send, .interestChanged:
                    continue
                }
            }
            // A departed peer's remote subscriptions go with it, whatever the table said.
            for link in closed {
                for subscription in (remote.removeValue(forKey: link.node) ?? [:]).values {
                    self.router.removeRemote(subscription)
                }
            }
            return sends
        }
        for link in closed { link.close() }
        for link in created { self.newLinkContinuation.yield(link) }
        self.transmit(sends)
        self.announceNode(to: created.map(\.node))
    }

    /// Tells `peers` where this node's NATS clients connect.
    private func announceNode(to peers: [NodeID]) {
        guard !peers.isEmpty else { return }
        let frame = BusFrameCodec.encode(.node(clientURL: self.configuration.clientURL))
        for peer in peers { self.network.sendRelay(frame, to: peer) }
    }

    /// The frames the actions ask for; watchers whose interest changed are told (under the state lock: they only
    /// keep the newest value).
    private func sends(of actions: [BusInterestAction], state: inout State) -> [(BusInterestMessage, NodeID)] {
        var sends: [(BusInterestMessage, NodeID)] = []
        var changed = false
        for action in actions {
            switch action {
            case .send(let message, let node): sends.append((message, node))
            case .interestChanged: changed = true
            case .peerAdded, .peerRemoved: continue
            }
        }
        if changed {
            for (id, watcher) in state.watchers {
                let current = state.machine.interest(in: watcher.pattern)
                guard current != watcher.last else { continue }
                state.watchers[id]?.last = current
                watcher.continuation.yield(current)
            }
        }
        state.statistics.interestFramesSent += sends.count
        return sends
    }

    private func transmit(_ sends: [(BusInterestMessage, NodeID)]) {
        for (message, node) in sends {
            self.network.sendRelay(BusFrameCodec.encode(.interest(message)), to: node)
        }
    }

    // MARK: Receiving

    /// A frame from a peer, on the transport's thread. Returns how long the transport should stop reading from that
    /// peer (a subscriber here is congested), having registered `resume` with the congested subscribers.
    private func receive(_ relay: RelayMessage, resume: @escaping @Sendable () -> Void) -> Duration? {
        let frame: BusFrame
        do {
            frame = try BusFrameCodec.decode(relay.payload)
        } catch {
            self.state.withLock { $0.statistics.framesRejected += 1 }
            self.logger.debug(
                "bus frame rejected",
                metadata: ["stork.peer": "\(relay.from)", "stork.error": "\(error)"]
            )
            return nil
        }
        switch frame {
        case .interest(let message):
            self.mutate { machine, _ in machine.receive(message, from: relay.from) }
        case .node(let clientURL):
            self.state.withLock { state in
                guard state.links[relay.from] != nil, state.clientURLs[relay.from] != clientURL else { return }
                state.clientURLs[relay.from] = clientURL
                self.publishURLs(&state)
            }
        case .messages(let recipient, let messages):
            guard recipient == self.network.identity.uid else {
                // Sent to this address's previous process (a restart): its subscriptions are gone.
                self.state.withLock { $0.statistics.framesForAnotherProcess += 1 }
                return nil
            }
            return self.deliver(messages, from: relay.from, resume: resume)
        }
        return nil
    }

    /// Delivers messages from another node on the local router. When a subscriber they went to is congested, the
    /// link from that node stalls like a publishing client would: the transport stops reading from it until the
    /// subscriber drains (then `resume`) or the stall time passes.
    private func deliver(
        _ messages: [BusRoutedMessage],
        from origin: NodeID,
        resume: @escaping @Sendable () -> Void
    ) -> Duration? {
        var rejected = 0
        var bytes = 0
        var deliveries: [(message: BusMessage, groups: [String], routingSubject: String?)] = []
        deliveries.reserveCapacity(messages.count)
        for message in messages {
            var headers: MessageHeaders?
            if let block = message.headers {
                guard let parsed = MessageHeaders.parse(block) else {
                    rejected += 1
                    continue
                }
                headers = parsed
            }
            bytes += message.payload.readableBytes + (message.headers?.readableBytes ?? 0)
            deliveries.append(
                (
                    BusMessage(
                        subject: message.subject,
                        replyTo: message.replyTo,
                        headers: headers,
                        payload: message.payload
                    ),
                    message.groups,
                    message.routingSubject
                )
            )
        }
        let congested = self.router.deliverFromPeer(deliveries)
        self.state.withLock { state in
            state.statistics.messagesReceived += messages.count - rejected
            state.statistics.bytesReceived += bytes
            state.statistics.framesRejected += rejected
        }
        guard !congested.isEmpty else { return nil }
        let longest = congested.compactMap { $0.stall(resume: resume) }.max()
        if longest != nil { self.state.withLock { $0.statistics.stalls += 1 } }
        return longest
    }

    // MARK: Sending

    /// Sends what `link` queues, in frames, until it closes.
    private func send(_ link: BusPeerLink) async {
        for await _ in link.signals {
            while true {
                // The transport hands what it holds to the connection before it gets more: its queue for the peer is
                // bounded and drops its oldest frames when full, and meanwhile messages gather here into larger
                // frames (the link's queue and the stalled publishers absorb the wait). An idle link sends at once.
                if self.network.relayBacklog(to: link.node) > 0 { await self.network.waitForRelayBacklog(to: link.node) }
                guard let batch = link.take() else { break }
                self.network.sendRelay(batch.frame, to: link.node)
                link.sent()
                if batch.droppedSinceLastTake > 0 {
                    self.logger.warning(
                        "a peer's bus queue was full: messages for it were dropped",
                        metadata: ["stork.peer": "\(link.node)", "stork.dropped": "\(batch.droppedSinceLastTake)"]
                    )
                }
            }
            if link.isClosed { return }
        }
    }
}

extension BusCluster where C == ContinuousClock {
    /// A bus on the real clock.
    public convenience init(
        network: some BusNetwork,
        router: BusRouter,
        configuration: BusClusterConfiguration = BusClusterConfiguration(),
        logger: Logger = Logger(label: "stork.bus")
    ) {
        self.init(network: network, router: router, configuration: configuration, clock: ContinuousClock(), logger: logger)
    }
}

// MARK: - BusPeerLink

/// The way to one other node: the router's remote subscriptions for that node point here. Queues what the router
/// forwards (bounded, in bytes as encoded) for the sending task; congested past half the bound. A few messages
/// forwarded while nothing waits here or in the transport go out at once, from the publisher's thread (no task
/// switch: the latency of request/reply); under load messages queue and leave in frames of many.
///
/// Messages are encoded into frame bodies as they arrive (chunks of up to `maximumFrameBytes`), so that a frame is one
/// copy of its chunk: no per-message objects wait in the queue.
final class BusPeerLink: BusRemoteRoute, Sendable {
    /// At most this many messages of one client read go to the transport directly.
    static let directLimit = 8

    /// The cluster transport as one link uses it.
    struct Transport: Sendable {
        var send: @Sendable ([UInt8]) -> Void
        var backlog: @Sendable () -> Int
        var reachable: @Sendable () -> Bool

        static var none: Transport { Transport(send: { _ in }, backlog: { 1 }, reachable: { true }) }
    }

    /// Messages encoded one after the other: the body of one `messages` frame.
    struct Chunk {
        var body = ByteBuffer()
        var count = 0
    }

    struct Queue {
        var chunks = Deque<Chunk>()
        var bytes = 0
        var closed = false
        /// The sending task holds a batch it has not handed to the transport yet: nothing may overtake it.
        var sending = false
        var stalled: [@Sendable () -> Void] = []
        var droppedSinceLastTake = 0
        var forwarded = 0
        var forwardedBytes = 0
        var frames = 0
        var dropped = 0
        var tooLarge = 0
        var stalls = 0
    }

    struct Batch {
        var frame: [UInt8]
        var count: Int
        var droppedSinceLastTake: Int
    }

    let node: NodeID
    private let maximumBytes: Int
    private let maximumMessageBytes: Int
    private let maximumFrameBytes: Int
    private let transport: Transport
    private let queue = Mutex(Queue())
    private let congested = Atomic<Bool>(false)
    let signals: AsyncStream<Void>
    private let signal: AsyncStream<Void>.Continuation

    /// `transport` defaults to one that never takes a message directly (everything queues).
    init(node: NodeID, configuration: BusClusterConfiguration, transport: Transport = .none) {
        self.node = node
        self.transport = transport
        self.maximumBytes = configuration.maximumQueuedBytes
        self.maximumMessageBytes = configuration.maximumMessageBytes
        self.maximumFrameBytes = configuration.maximumFrameBytes
        (self.signals, self.signal) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    var isClosed: Bool { self.queue.withLock { $0.closed } }
    var queuedBytes: Int { self.queue.withLock { $0.bytes } }

    func forward(_ message: BusMessage, groups: [String]) -> Bool {
        self.forward([(message, groups)]) == 1
    }

    func forward(_ message: BusMessage, groups: [String], routingSubject: String) -> Bool {
        self.enqueue([(message, groups)], routingSubject: routingSubject) == 1
    }

    func forward(_ messages: [(message: BusMessage, groups: [String])]) -> Int {
        self.enqueue(messages, routingSubject: nil)
    }

    /// Queues `messages` (all routed by `routingSubject` on the receiving node when it is given).
    private func enqueue(_ messages: [(message: BusMessage, groups: [String])], routingSubject: String?) -> Int {
        var signal = false
        let accepted = self.queue.withLock { queue -> Int in
            guard !queue.closed else { return 0 }
            var accepted = 0
            let direct =
                messages.count <= Self.directLimit && queue.chunks.isEmpty && !queue.sending
                && self.transport.backlog() == 0
            var chunk = Chunk()
            for (message, groups) in messages {
                let headers = message.headers?.encoded
                let size = BusRoutedMessage.encodedSize(
                    subject: message.subject,
                    replyTo: message.replyTo,
                    headers: headers?.readableBytes,
                    payload: message.payload.readableBytes,
                    groups: groups,
                    routingSubject: routingSubject
                )
                guard size <= self.maximumMessageBytes else {
                    queue.tooLarge += 1
                    continue
                }
                if direct {
                    // Nothing waits, and only a few messages: straight to the transport (the latency of a request),
                    // under the lock so that nothing overtakes them. More go to the sending task, which builds the
                    // frames on another thread while this one reads on.
                    if chunk.count > 0, chunk.body.readableBytes + size > self.maximumFrameBytes {
                        self.send(chunk, queue: &queue)
                        chunk = Chunk()
                    }
                    chunk.body.writeBusMessage(
                        subject: message.subject,
                        replyTo: message.replyTo,
                        headers: headers,
                        payload: message.payload,
                        groups: groups,
                        routingSubject: routingSubject
                    )
                    chunk.count += 1
                } else {
                    guard queue.bytes + size <= self.maximumBytes else {
                        queue.dropped += 1
                        queue.droppedSinceLastTake += 1
                        continue
                    }
                    if queue.chunks.isEmpty
                        || (queue.chunks.last!.count > 0
                            && queue.chunks.last!.body.readableBytes + size > self.maximumFrameBytes)
                    {
                        queue.chunks.append(Chunk())
                    }
                    let last = queue.chunks.count - 1
                    queue.chunks[last].body.writeBusMessage(
                        subject: message.subject,
                        replyTo: message.replyTo,
                        headers: headers,
                        payload: message.payload,
                        groups: groups,
                        routingSubject: routingSubject
                    )
                    queue.chunks[last].count += 1
                    queue.bytes += size
                    signal = true
                }
                queue.forwarded += 1
                queue.forwardedBytes += size
                accepted += 1
            }
            if direct, chunk.count > 0 { self.send(chunk, queue: &queue) }
            if queue.bytes > self.maximumBytes / 2, !self.congested.load(ordering: .relaxed) {
                self.congested.store(true, ordering: .relaxed)
            }
            return accepted
        }
        if signal { self.signal.yield() }
        return accepted
    }

    private func send(_ chunk: Chunk, queue: inout Queue) {
        self.transport.send(BusFrameCodec.messagesFrame(recipient: self.node.uid, count: chunk.count, body: chunk.body))
        queue.frames += 1
    }

    /// The sending task handed its batch to the transport.
    func sent() {
        self.queue.withLock { $0.sending = false }
    }

    var isCongested: Bool { self.congested.load(ordering: .relaxed) }

    var isAvailable: Bool { self.transport.reachable() }

    /// A publisher waits for a link until it drains below half its bound, up to 5 s: a link that drains is never
    /// given up on (it is a node, not a stuck client; the stall ends the moment it is back under half). Only a node
    /// that stops taking messages for that long lets publishers go on into its bound, where messages are dropped.
    func stall(resume: @escaping @Sendable () -> Void) -> Duration? {
        self.queue.withLock { queue -> Duration? in
            guard !queue.closed, self.congested.load(ordering: .relaxed) else { return nil }
            queue.stalled.append(resume)
            queue.stalls += 1
            return .seconds(5)
        }
    }

    /// The next frame to send (one chunk, at most about `maximumFrameBytes`); nil when nothing waits. Resumes
    /// stalled producers once the queue is back under half its bound.
    func take() -> Batch? {
        let (batch, resumed) = self.queue.withLock { queue -> (Batch?, [@Sendable () -> Void]) in
            guard let chunk = queue.chunks.popFirst() else { return (nil, []) }
            queue.bytes -= chunk.body.readableBytes
            queue.frames += 1
            queue.sending = true
            let batch = Batch(
                frame: BusFrameCodec.messagesFrame(recipient: self.node.uid, count: chunk.count, body: chunk.body),
                count: chunk.count,
                droppedSinceLastTake: queue.droppedSinceLastTake
            )
            queue.droppedSinceLastTake = 0
            var resumed: [@Sendable () -> Void] = []
            if queue.bytes <= self.maximumBytes / 2, self.congested.load(ordering: .relaxed) {
                self.congested.store(false, ordering: .relaxed)
                resumed = queue.stalled
                queue.stalled = []
            }
            return (batch, resumed)
        }
        for resume in resumed { resume() }
        return batch
    }

    /// Drops what waits and wakes everything stalled on it; the sending task ends.
    func close() {
        let resumed = self.queue.withLock { queue -> [@Sendable () -> Void] in
            queue.closed = true
            queue.chunks = []
            queue.bytes = 0
            defer { queue.stalled = [] }
            return queue.stalled
        }
        self.congested.store(false, ordering: .relaxed)
        for resume in resumed { resume() }
        self.signal.yield()
        self.signal.finish()
    }

    func counters() -> (forwarded: Int, bytes: Int, frames: Int, dropped: Int, tooLarge: Int, stalls: Int) {
        self.queue.withLock { ($0.forwarded, $0.forwardedBytes, $0.frames, $0.dropped, $0.tooLarge, $0.stalls) }
    }
}
