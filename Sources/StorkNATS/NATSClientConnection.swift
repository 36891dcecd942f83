import NIOCore
import StorkBus
import Synchronization

// MARK: - NATSClientConnection

/// One client connection as the rest of the server sees it: where to deliver messages (an outbound buffer any thread
/// may append to, flushed on the connection's event loop), its subscriptions and its counters.
///
/// Publishers on other event loops append under a lock and schedule at most one flush at a time, so that many
/// messages go out in one write.
///
/// Flow control, as nats-server does it: once more than half of `maxPending` bytes wait here (the socket is backed
/// up), the connection is *congested*; a client connection publishing into it is stalled (it stops reading) until
/// this one drains, for 100 ms up to 1 s depending on how full it is, so a burst slows the producer instead of
/// losing the consumer. A client that does not read at all still fills up: past `maxPending` bytes it is
/// disconnected as a slow consumer and nobody else waits for it.
public final class NATSClientConnection: BusConnection, Sendable {
    struct Outbound {
        var buffer: ByteBuffer
        var flushScheduled = false
        var writable = true
        var closed = false
        var outMessages = 0
        var outBytes = 0
        var subscriptions: [String: BusSubscription] = [:]
        var name: String?
        var lang: String?
        var version: String?
        var lastActivity: ContinuousClock.Instant
        /// Producers stalled on this connection: resumed when it drains (or closes).
        var stalledProducers: [@Sendable () -> Void] = []
    }

    public let id: UInt64
    let channel: any Channel
    let remoteAddress: SocketAddress?
    let started: ContinuousClock.Instant
    let startedWallClock: Double
    private let maxPending: Int
    static let eagerFlushBytes = 64 * 1024
    private let state: Mutex<Outbound>
    let inMessages = Atomic<Int>(0)
    let inBytes = Atomic<Int>(0)
    private let echoEnabled = Atomic<Bool>(true)
    /// Why the connection was closed by the server, for logs and monitoring.
    let slowConsumer = Atomic<Bool>(false)
    /// More than half of `maxPending` waits to be written: producers should stall. Read without the lock by the
    /// router after each delivery.
    let congested = Atomic<Bool>(false)
    /// Times a producer was stalled on this connection, for monitoring.
    let stallsCaused = Atomic<Int>(0)
    /// Flushes that handed bytes to the socket (``BusStallTarget/drainProgress``).
    private let flushes = Atomic<Int>(0)
    /// At most this much is handed to the channel at a time: the rest waits here, where it counts as pending (the
    /// channel's own queue would hide a backlog from flow control and drain without any sign of progress).
    private let handOffBytes: Int

    public var drainProgress: Int { self.flushes.load(ordering: .relaxed) }
    /// The client sent CONNECT with `protocol` 1: it takes INFO updates while connected (cluster changes, lame duck).
    let takesAsyncInfo = Atomic<Bool>(false)

    init(id: UInt64, channel: any Channel, maxPending: Int, now: ContinuousClock.Instant, wallClock: Double) {
        self.id = id
        self.channel = channel
        self.remoteAddress = channel.remoteAddress
        self.maxPending = maxPending
        self.handOffBytes = min(1 << 20, max(4096, maxPending / 16))
        self.started = now
        self.startedWallClock = wallClock
        self.state = Mutex(Outbound(buffer: channel.allocator.buffer(capacity: 4096), lastActivity: now))
    }

    var eventLoop: any EventLoop { self.channel.eventLoop }

    /// Whether the client receives messages it published itself (`CONNECT` `echo`, default true).
    public internal(set) var echo: Bool {
        get { self.echoEnabled.load(ordering: .relaxed) }
        set { self.echoEnabled.store(newValue, ordering: .relaxed) }
    }

    // MARK: Outbound

    private enum Outcome {
        case queued
        /// Queued, and enough is waiting that a publisher on the same event loop should write it now rather than
        /// at the end of its read batch (which may hold many large messages).
        case queuedLarge
        case scheduleFlush
        case slowConsumer
        case closed
    }

    /// Appends a `MSG`/`HMSG` for subscription `sid`. False when the connection is closed or was just found slow.
    public func enqueueMessage(_ message: BusMessage, sid: String) -> Bool {
        let size = message.size
        let outcome = self.state.withLock { state -> Outcome in
            if state.closed { return .closed }
            self.encode(message, sid: sid, into: &state.buffer)
            state.outMessages += 1
            state.outBytes += size
            return self.outcome(&state)
        }
        return self.act(on: outcome)
    }

    /// Appends frames another connection's read gathered for this one (``BusDeliveryBatch``), as one write.
    @discardableResult
    public func enqueueBatch(_ frames: ByteBuffer, messages: Int, bytes: Int) -> Bool {
        var frames = frames
        let outcome = self.state.withLock { state -> Outcome in
            if state.closed { return .closed }
            state.buffer.writeBuffer(&frames)
            state.outMessages += messages
            state.outBytes += bytes
            return self.outcome(&state)
        }
        return self.act(on: outcome)
    }

    /// Whether messages can still be queued (not closed by the server or the peer).
    public var isOpen: Bool { !self.state.withLock { $0.closed } }

    public var isCongested: Bool { self.congested.load(ordering: .relaxed) }

    public func makeBatchBuffer() -> ByteBuffer { self.channel.allocator.buffer(capacity: 4096) }

    /// A `MSG` or `HMSG` line and its body.
    public func encode(_ message: BusMessage, sid: String, into buffer: inout ByteBuffer) {
        buffer.writeNATSMessage(
            subject: message.subject, sid: sid, replyTo: message.replyTo, headers: message.headers?.encoded, payload: message.payload
        )
    }

    /// Appends protocol output of the server's own (INFO, PONG, +OK, -ERR), in order with messages.
    @discardableResult
    func enqueue(_ write: (inout ByteBuffer) -> Void) -> Bool {
        let outcome = self.state.withLock { state -> Outcome in
            if state.closed { return .closed }
            write(&state.buffer)
            return self.outcome(&state)
        }
        return self.act(on: outcome)
    }

    private func outcome(_ state: inout Outbound) -> Outcome {
        // Slow means the socket is backed up (the channel stopped being writable) and still more than maxPending
        // waits here. A writable channel whose loop simply has not flushed yet is not slow, up to a hard bound.
        let pendingBytes = state.buffer.readableBytes
        if (pendingBytes > self.maxPending && !state.writable) || pendingBytes > 2 * self.maxPending + (8 << 20) {
            state.closed = true
            state.buffer.clear()
            return .slowConsumer
        }
        if pendingBytes > self.maxPending / 2, !self.congested.load(ordering: .relaxed) {
            self.congested.store(true, ordering: .relaxed)
        }
        if state.flushScheduled {
            return state.writable && state.buffer.readableBytes >= Self.eagerFlushBytes ? .queuedLarge : .queued
        }
        state.flushScheduled = true
        return .scheduleFlush
    }

    private func act(on outcome: Outcome) -> Bool {
        switch outcome {
        case .queued:
            return true
        case .queuedLarge:
            if self.eventLoop.inEventLoop { self.flush() }
            return true
        case .scheduleFlush:
            self.eventLoop.execute { self.flush() }
            return true
        case .slowConsumer:
            self.slowConsumer.store(true, ordering: .relaxed)
            self.eventLoop.execute {
                var buffer = self.channel.allocator.buffer(capacity: 32)
                buffer.writeNATSError(.slowConsumer)
                self.channel.writeAndFlush(buffer, promise: nil)
                self.channel.close(promise: nil)
            }
            return false
        case .closed:
            return false
        }
    }

    /// Writes what is buffered, at most ``handOffBytes`` at a time (the rest follows while the channel stays
    /// writable, or when it becomes writable again). On the connection's event loop.
    func flush() {
        let (pending, resumed, more) = self.state.withLock { state -> (ByteBuffer?, [@Sendable () -> Void], Bool) in
            // While the socket cannot take more, the flag stays set: the writability change flushes.
            guard !state.closed, state.writable else { return (nil, [], false) }
            state.flushScheduled = false
            guard state.buffer.readableBytes > 0 else { return (nil, [], false) }
            let taken: ByteBuffer
            if state.buffer.readableBytes <= self.handOffBytes {
                let capacity = min(max(state.buffer.readableBytes, 4096), 1 << 20)
                taken = state.buffer
                state.buffer = self.channel.allocator.buffer(capacity: capacity)
            } else {
                taken = state.buffer.readSlice(length: self.handOffBytes)!
                state.flushScheduled = true
            }
            // Producers go on once what waits here is back under half the limit.
            let resumed = state.buffer.readableBytes <= self.maxPending / 2 ? self.drained(&state) : []
            return (taken, resumed, state.flushScheduled)
        }
        if let pending {
            self.flushes.wrappingAdd(1, ordering: .relaxed)
            self.channel.writeAndFlush(pending, promise: nil)
        }
        if more { self.eventLoop.execute { self.flush() } }
        for resume in resumed { resume() }
    }

    /// Clears the congestion and hands back the producers to resume.
    private func drained(_ state: inout Outbound) -> [@Sendable () -> Void] {
        guard self.congested.load(ordering: .relaxed) || !state.stalledProducers.isEmpty else { return [] }
        self.congested.store(false, ordering: .relaxed)
        defer { state.stalledProducers = [] }
        return state.stalledProducers
    }

    /// How long a producer should stall on this connection now (nats-server's rule: 100 ms, plus 100 ms per tenth
    /// of the limit's upper half that is filled, at most 1 s), or nil when it is not congested any more. `resume`
    /// is called once, when the connection drains or closes, unless it is not congested (nil).
    public func stall(resume: @escaping @Sendable () -> Void) -> Duration? {
        self.state.withLock { state -> Duration? in
            let pending = state.buffer.readableBytes
            guard !state.closed, self.congested.load(ordering: .relaxed), pending > self.maxPending / 2 else {
                return nil
            }
            state.stalledProducers.append(resume)
            self.stallsCaused.wrappingAdd(1, ordering: .relaxed)
            let half = max(1, self.maxPending / 2)
            let tenths = (pending - half) / max(1, half / 10)
            return .milliseconds(min(1000, 100 + 100 * tenths))
        }
    }

    func writabilityChanged(_ writable: Bool) {
        self.state.withLock { $0.writable = writable }
        if writable { self.flush() }
    }

    /// Marks the connection closed: nothing more is buffered. Returns its subscriptions, to be removed from the
    /// router.
    func markClosed() -> [BusSubscription] {
        let (subscriptions, resumed) = self.state.withLock { state in
            state.closed = true
            state.buffer.clear()
            let subscriptions = Array(state.subscriptions.values)
            state.subscriptions.removeAll()
            return (subscriptions, self.drained(&state))
        }
        for resume in resumed { resume() }
        return subscriptions
    }

    // MARK: Subscriptions and identity

    func remember(_ subscription: BusSubscription) -> Bool {
        self.state.withLock { state in
            guard state.subscriptions[subscription.sid] == nil else { return false }
            state.subscriptions[subscription.sid] = subscription
            return true
        }
    }

    func subscription(sid: String) -> BusSubscription? {
        self.state.withLock { $0.subscriptions[sid] }
    }

    public func forget(_ subscription: BusSubscription) {
        self.state.withLock { state in
            if state.subscriptions[subscription.sid] === subscription {
                state.subscriptions[subscription.sid] = nil
            }
        }
    }

    func identify(name: String?, lang: String?, version: String?) {
        self.state.withLock { state in
            state.name = name
            state.lang = lang
            state.version = version
        }
    }

    func touch(_ now: ContinuousClock.Instant) {
        self.state.withLock { $0.lastActivity = now }
    }

    /// A consistent view of the connection for monitoring.
    struct Snapshot: Sendable {
        var id: UInt64
        var ip: String
        var port: Int
        var name: String?
        var lang: String?
        var version: String?
        var subscriptions: [String]
        var inMessages: Int
        var inBytes: Int
        var outMessages: Int
        var outBytes: Int
        var pendingBytes: Int
        var started: ContinuousClock.Instant
        var startedWallClock: Double
        var lastActivity: ContinuousClock.Instant
    }

    func snapshot() -> Snapshot {
        self.state.withLock { state in
            Snapshot(
                id: self.id,
                ip: self.remoteAddress?.ipAddress ?? "",
                port: self.remoteAddress?.port ?? 0,
                name: state.name,
                lang: state.lang,
                version: state.version,
                subscriptions: state.subscriptions.values.map(\.subject).sorted(),
                inMessages: self.inMessages.load(ordering: .relaxed),
                inBytes: self.inBytes.load(ordering: .relaxed),
                outMessages: state.outMessages,
                outBytes: state.outBytes,
                pendingBytes: state.buffer.readableBytes,
                started: self.started,
                startedWallClock: self.startedWallClock,
                lastActivity: state.lastActivity
            )
        }
    }
}
