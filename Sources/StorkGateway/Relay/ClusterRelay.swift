import Logging
import NIOCore
import ServiceLifecycle
import StorkCore
import StorkNATS
import StorkResources
import StorkStreaming
import Synchronization

// MARK: - ClusterRelay
//
// Driver shape: the interest table is a pure state machine (`RelayInterestStateMachine`) behind a `Mutex`; cluster
// sends happen after the lock is released. Router subscriptions change under a second lock taken before the state
// lock, so that the subscribe / unsubscribe calls of concurrent interest changes reach the router in the order the
// table decided them. Messages to forward are queued per peer (bounded) by the router's receiver, which runs on the
// publisher's thread and never waits; one loop in `run()` drains the queues into batched frames.
//
// Forwarding dedupe: every router subscription of the relay is in one queue group (`_STORK_RELAY`). The router
// merges queue members of the same group across patterns, so a message matching several forwarded patterns (`a.>`
// and `a.b`) reaches the relay exactly once; the relay then sends it once to each peer whose patterns match, looked
// up in the table at that moment.

/// Cluster-wide publish/subscribe for the gateway's subjects, on top of the node's NATS router and the cluster.
///
/// The gateway reports what its clients subscribe to (``addInterest(_:)`` / ``removeInterest(_:)``); the relay tells
/// every live peer. For each pattern some peer is interested in, the relay subscribes on the local router and sends
/// matching messages to the interested peers (each peer once per message), where they are published on that node's
/// router with the header `Stork-Relay: <origin node name>`. Messages carrying that header are never forwarded again:
/// every node forwards only what was published on it, one hop to each interested peer, so nothing loops or echoes.
///
/// Run it as a `Service` beside the `ResourceManager` (it ends when the manager's relay stream ends, or on graceful
/// shutdown). One relay per node; `run()` is called once.
public final class ClusterRelay<C: Clock>: Service, Sendable where C.Duration == Duration {
    /// The header that marks a message as relayed from another node.
    public static var markerHeader: String { "Stork-Relay" }
    /// The queue group of the relay's router subscriptions.
    static var queueGroup: String { "_STORK_RELAY" }

    struct PeerQueue {
        var messages: [RelayedMessage] = []
        var bytes = 0
        /// Messages dropped since the queue last drained (logged once per episode).
        var dropping = 0
    }

    struct Watcher {
        var pattern: String
        var last: RelayInterest
        var continuation: AsyncStream<RelayInterest>.Continuation
    }

    struct State {
        var machine: RelayInterestStateMachine
        var queues: [NodeID: PeerQueue] = [:]
        var watchers: [Int: Watcher] = [:]
        var nextWatcher = 0
        var statistics = ClusterRelayStatistics()
        var isStopped = false
    }

    public let configuration: ClusterRelayConfiguration
    private let network: any ClusterRelayNetwork
    private let router: NATSRouter
    private let clock: C
    private let origin: C.Instant
    private let logger: Logger
    private let state: Mutex<State>
    /// Router subscriptions by pattern; held while they change (see the note at the top of the file).
    private let subscriptions = Mutex<[String: NATSSubscription]>([:])
    private let flushSignals: AsyncStream<Void>
    private let flushContinuation: AsyncStream<Void>.Continuation

    public init(
        network: some ClusterRelayNetwork,
        router: NATSRouter,
        configuration: ClusterRelayConfiguration = ClusterRelayConfiguration(),
        clock: C,
        logger: Logger = Logger(label: "stork.relay")
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
                machine: RelayInterestStateMachine(
                    myself: network.identity,
                    antiEntropyInterval: configuration.antiEntropyInterval
                )
            )
        )
        (self.flushSignals, self.flushContinuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    // MARK: Interest

    /// One more local subscriber of `pattern` (a NATS subject pattern, `*` and `>` allowed). The first one makes
    /// the pattern known to every peer, which then forwards matching messages here.
    public func addInterest(_ pattern: String) throws(ClusterRelayError) {
        guard pattern.utf8.count <= RelayFrameCodec.maximumSubjectBytes, Subject.isValidPattern(pattern) else {
            throw ClusterRelayError(.invalidPattern, "'\(pattern.prefix(100))' is not a valid subject pattern")
        }
        let limit = self.configuration.maximumLocalPatterns
        let refused = self.state.withLock { state in
            state.machine.localCount(of: pattern) == 0 && state.machine.localPatterns.count >= limit
        }
        if refused {
            throw ClusterRelayError(.tooManyPatterns, "more than \(limit) distinct patterns on this node")
        }
        self.mutate { machine, _ in machine.addLocalInterest(pattern) }
    }

    /// One local subscriber of `pattern` fewer; after the last one, peers stop forwarding it here. A pattern that
    /// was never added is ignored.
    public func removeInterest(_ pattern: String) {
        self.mutate { machine, _ in machine.removeLocalInterest(pattern) }
    }

    /// Who in the cluster is subscribed to `subject` (or, for a pattern, to any subject it could match).
    public func interest(in subject: String) -> RelayInterest {
        self.state.withLock { $0.machine.interest(in: subject) }
    }

    /// The interest in `pattern` now, then every time it changes (only the latest value is kept for a slow
    /// reader). A provider waits for `isEmpty` to know that nobody in the cluster listens any more. Ends when the
    /// relay stops.
    public func interestUpdates(for pattern: String) -> AsyncStream<RelayInterest> {
        let (stream, continuation) = AsyncStream<RelayInterest>.makeStream(bufferingPolicy: .bufferingNewest(1))
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

    /// The local patterns and what each peer is known to want, for status pages and tests.
    public func snapshot() -> (local: [String], peers: [NodeID: [String]]) {
        self.state.withLock { state in
            let machine = state.machine
            var peers: [NodeID: [String]] = [:]
            for node in machine.livePeers { peers[node] = machine.patterns(of: node) }
            return (machine.localPatterns, peers)
        }
    }

    /// Counters since start.
    public func statistics() -> ClusterRelayStatistics {
        self.state.withLock { state in
            var statistics = state.statistics
            statistics.interest = state.machine.statistics
            return statistics
        }
    }

    // MARK: Service

    public func run() async throws {
        let frames = self.network.relayFrames()
        let events = self.network.events()
        self.mutate { machine, now in machine.start(now: now) }
        self.refreshMembers()
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    for await frame in frames { self.receive(frame) }
                }
                group.addTask {
                    for await event in events {
                        switch event {
                        case .member, .joined, .viewApplied, .left: self.refreshMembers()
                        case .resource, .refuted: continue
                        }
                    }
                }
                group.addTask { await self.flushLoop() }
                group.addTask { await self.timerLoop() }
                // The node's streams end when it stops: then the relay stops too.
                await group.next()
                group.cancelAll()
            }
        }
        self.stop()
    }

    /// Ends every router subscription and every watcher.
    private func stop() {
        let watchers = self.subscriptions.withLock { subscriptions in
            for subscription in subscriptions.values { self.router.unsubscribe(subscription) }
            subscriptions = [:]
            return self.state.withLock { state in
                state.isStopped = true
                state.queues = [:]
                defer { state.watchers = [:] }
                return Array(state.watchers.values)
            }
        }
        for watcher in watchers { watcher.continuation.finish() }
        self.flushContinuation.finish()
    }

    private func now() -> StorkInstant {
        StorkInstant(nanoseconds: self.origin.duration(to: self.clock.now).nanosecondsClamped)
    }

    private func timerLoop() async {
        while !Task.isCancelled {
            // Membership events can be missed (a full event buffer): reread the members every round.
            self.refreshMembers()
            self.mutate { machine, now in machine.tick(now: now) }
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

    /// Runs one event through the interest table and performs what it asks: router subscriptions in order, then
    /// watchers and cluster sends outside the locks.
    private func mutate(_ body: (inout RelayInterestStateMachine, StorkInstant) -> [RelayAction]) {
        let now = self.now()
        let (sends, updates) = self.subscriptions.withLock { subscriptions in
            let (actions, updates) = self.state.withLock {
                state -> ([RelayAction], [(AsyncStream<RelayInterest>.Continuation, RelayInterest)]) in
                guard !state.isStopped else { return ([], []) }
                let actions = body(&state.machine, now)
                var updates: [(AsyncStream<RelayInterest>.Continuation, RelayInterest)] = []
                if actions.contains(.interestChanged) {
                    for (id, watcher) in state.watchers {
                        let current = state.machine.interest(in: watcher.pattern)
                        guard current != watcher.last else { continue }
                        state.watchers[id]?.last = current
                        updates.append((watcher.continuation, current))
                    }
                }
                return (actions, updates)
            }
            var sends: [(RelayInterestMessage, NodeID)] = []
            for action in actions {
                switch action {
                case .send(let message, let node):
                    sends.append((message, node))
                case .startForwarding(let pattern):
                    guard subscriptions[pattern] == nil else { continue }
                    subscriptions[pattern] = self.router.subscribe(
                        pattern,
                        queue: Self.queueGroup,
                        receiver: RelayReceiver(forward: { self.forward($0) })
                    )
                case .stopForwarding(let pattern):
                    if let subscription = subscriptions.removeValue(forKey: pattern) {
                        self.router.unsubscribe(subscription)
                    }
                case .interestChanged:
                    continue
                }
            }
            return (sends, updates)
        }
        for (continuation, interest) in updates { continuation.yield(interest) }
        guard !sends.isEmpty else { return }
        for (message, node) in sends {
            self.network.sendRelay(RelayFrameCodec.encode(.interest(message)), to: node)
        }
        self.state.withLock { $0.statistics.interestFramesSent += sends.count }
    }

    // MARK: Receiving

    private func receive(_ relay: RelayMessage) {
        let frame: RelayFrame
        do {
            frame = try RelayFrameCodec.decode(relay.payload)
        } catch {
            self.state.withLock { $0.statistics.framesRejected += 1 }
            self.logger.debug(
                "relay frame rejected",
                metadata: ["stork.peer": "\(relay.from)", "stork.error": "\(error)"]
            )
            return
        }
        switch frame {
        case .interest(let message):
            self.mutate { machine, _ in machine.receive(message, from: relay.from) }
        case .messages(let messages):
            self.publish(messages, from: relay.from)
        }
    }

    /// Publishes messages from `origin` on the local router, marked so that they are not forwarded again.
    private func publish(_ messages: [RelayedMessage], from origin: NodeID) {
        var rejected = 0
        for message in messages {
            var headers = NATSHeaders()
            if let block = message.headers {
                guard let parsed = NATSHeaders.parse(ByteBuffer(bytes: block)) else {
                    rejected += 1
                    continue
                }
                headers = parsed
            }
            headers.fields.append((Self.markerHeader, origin.name))
            self.router.publish(
                NATSMessage(
                    subject: message.subject,
                    replyTo: message.replyTo,
                    headers: headers.encoded,
                    payload: ByteBuffer(bytes: message.payload)
                )
            )
        }
        self.state.withLock { state in
            state.statistics.messagesReceived += messages.count - rejected
            state.statistics.framesRejected += rejected
        }
    }

    // MARK: Forwarding

    /// Called by the router on the publisher's thread for a message matching some peer's interest. Never waits.
    private func forward(_ message: NATSMessage) {
        var relayed = false
        if let block = message.headers {
            relayed = NATSHeaders.parse(block)?[Self.markerHeader] != nil
        }
        let item =
            relayed
            ? nil
            : RelayedMessage(
                subject: message.subject,
                replyTo: message.replyTo,
                headers: message.headers.map { Array($0.readableBytesView) },
                payload: Array(message.payload.readableBytesView)
            )
        let limits = (self.configuration.maximumQueuedMessages, self.configuration.maximumQueuedBytes)
        let maximumMessage = self.configuration.maximumMessageBytes
        let (queued, newlyDropping) = self.state.withLock { state -> (Bool, [NodeID]) in
            let peers = state.machine.peers(interestedIn: message.subject)
            guard !peers.isEmpty else { return (false, []) }
            guard let item else {
                state.statistics.relayedNotForwarded += 1
                return (false, [])
            }
            let size = item.encodedSize
            guard size <= maximumMessage else {
                state.statistics.messagesTooLarge += 1
                return (false, [])
            }
            var queued = false
            var newlyDropping: [NodeID] = []
            for node in peers {
                var queue = state.queues[node] ?? PeerQueue()
                if queue.messages.count >= limits.0 || queue.bytes + size > limits.1 {
                    if queue.dropping == 0 { newlyDropping.append(node) }
                    queue.dropping += 1
                    state.statistics.messagesDropped += 1
                    state.statistics.droppedByPeer[node, default: 0] += 1
                } else {
                    queue.messages.append(item)
                    queue.bytes += size
                    queued = true
                }
                state.queues[node] = queue
            }
            return (queued, newlyDropping)
        }
        for node in newlyDropping {
            self.logger.warning(
                "a peer's relay queue is full; dropping its messages until it drains",
                metadata: ["stork.peer": "\(node)", "stork.queue_limit": "\(limits.0)"]
            )
        }
        if queued { self.flushContinuation.yield() }
    }

    /// Sends what waits in the queues, batched into frames, whenever something was queued.
    private func flushLoop() async {
        for await _ in self.flushSignals {
            let batches = self.state.withLock { state -> [(NodeID, [RelayedMessage], dropped: Int)] in
                var batches: [(NodeID, [RelayedMessage], dropped: Int)] = []
                // Messages queued for a peer that has left since are not sent.
                let live = Set(state.machine.livePeers)
                for (node, queue) in state.queues where live.contains(node) {
                    batches.append((node, queue.messages, queue.dropping))
                }
                state.queues = [:]
                return batches
            }
            var frames = 0
            var messages = 0
            for (node, batch, dropped) in batches {
                if dropped > 0 {
                    self.logger.warning(
                        "a peer's relay queue drained after dropping messages",
                        metadata: ["stork.peer": "\(node)", "stork.dropped": "\(dropped)"]
                    )
                }
                for frame in Self.frames(batch, maximumBytes: self.configuration.maximumFrameBytes) {
                    self.network.sendRelay(RelayFrameCodec.encode(.messages(frame)), to: node)
                    frames += 1
                    messages += frame.count
                }
            }
            self.state.withLock { state in
                state.statistics.messageFramesSent += frames
                state.statistics.messagesForwarded += messages
            }
        }
    }

    /// Splits messages into frames of at most about `maximumBytes` (a larger message goes alone).
    static func frames(_ messages: [RelayedMessage], maximumBytes: Int) -> [[RelayedMessage]] {
        var frames: [[RelayedMessage]] = []
        var current: [RelayedMessage] = []
        var bytes = RelayFrameCodec.messagesOverhead
        for message in messages {
            let size = message.encodedSize
            if !current.isEmpty, bytes + size > maximumBytes {
                frames.append(current)
                current = []
                bytes = RelayFrameCodec.messagesOverhead
            }
            current.append(message)
            bytes += size
        }
        if !current.isEmpty { frames.append(current) }
        return frames
    }
}

extension ClusterRelay where C == ContinuousClock {
    /// A relay on the real clock.
    public convenience init(
        network: some ClusterRelayNetwork,
        router: NATSRouter,
        configuration: ClusterRelayConfiguration = ClusterRelayConfiguration(),
        logger: Logger = Logger(label: "stork.relay")
    ) {
        self.init(network: network, router: router, configuration: configuration, clock: ContinuousClock(), logger: logger)
    }
}

/// The relay's router subscriptions: hands each matching message to the relay.
struct RelayReceiver: NATSLocalReceiver {
    let forward: @Sendable (NATSMessage) -> Void

    func receive(_ message: NATSMessage, subscription: NATSSubscription) {
        self.forward(message)
    }
}
