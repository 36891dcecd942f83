import StorkCore
import Synchronization

// MARK: - ClusterTransport

/// How a node reaches its peers. The NIO transport (UDP for membership, TCP frames for the rest) implements it
/// for real clusters; `InMemoryNetwork` implements it inside one process for tests, examples and the demo.
public protocol ClusterTransport: Sendable {
    /// The address peers use to reach this node.
    var address: String { get }
    /// Sends without waiting; delivery is best-effort (the protocols above retry).
    func send(_ message: ClusterMessage, to address: String)
    /// Messages for this node. Called once; the stream ends when the transport closes.
    func incoming() -> AsyncStream<ClusterMessage>
    /// Stops delivering and sending.
    func close()
    /// Bytes queued for `address` and not yet handed to its connection (0 when unknown): a sender with much to say
    /// waits while this is high instead of making the transport drop its oldest frames.
    func backlog(to address: String) -> Int
    /// False when the transport knows `address` cannot be reached now (its last connection attempt failed).
    func isReachable(_ address: String) -> Bool
    /// Returns once nothing is queued for `address` (at once when nothing is).
    func waitForBacklog(to address: String) async
    /// Hands relay messages to `receiver` on the transport's own thread, as they arrive, instead of ``incoming()``
    /// (nil: back to ``incoming()``). Returns false when this transport cannot (then they stay in ``incoming()``).
    func setRelayReceiver(_ receiver: RelayReceiver?) -> Bool
}

/// Takes relay messages where they arrive (``ClusterTransport/setRelayReceiver(_:)``). It must not block. When what it
/// delivered filled a consumer, it returns how long the transport should stop reading from that sender, having
/// registered `resume` (call it once the consumer drained) with the consumer: back-pressure to the sending node.
public typealias RelayReceiver = @Sendable (_ message: RelayMessage, _ resume: @escaping @Sendable () -> Void) -> Duration?

extension ClusterTransport {
    public func backlog(to address: String) -> Int { 0 }
    public func isReachable(_ address: String) -> Bool { true }
    public func waitForBacklog(to address: String) async {}
    public func setRelayReceiver(_ receiver: RelayReceiver?) -> Bool { false }
}

// MARK: - InMemoryNetwork

/// Nodes in one process, connected by in-memory queues. Endpoints can be cut off (to play a crash or a
/// partition) and reconnected.
public final class InMemoryNetwork: Sendable {
    struct State {
        var endpoints: [String: AsyncStream<ClusterMessage>.Continuation] = [:]
        var isolated: Set<String> = []
        /// Per endpoint: messages delivered that its receiver has not finished with.
        var inFlight: [String: Int] = [:]
        var delivered = 0
        var dropped = 0
    }

    private let state = Mutex(State())

    public init() {}

    /// A transport bound to `address`. A second endpoint on the same address replaces the first.
    public func endpoint(_ address: String) -> InMemoryTransport {
        let (stream, continuation) = AsyncStream<ClusterMessage>.makeStream(bufferingPolicy: .unbounded)
        let previous = self.state.withLock { state in
            let previous = state.endpoints[address]
            state.endpoints[address] = continuation
            state.isolated.remove(address)
            state.inFlight[address] = nil
            return previous
        }
        previous?.finish()
        return InMemoryTransport(address: address, network: self, stream: stream)
    }

    /// Drops everything to and from `address` until `reconnect` (a crash or a partition of one node).
    public func isolate(_ address: String) {
        self.state.withLock { _ = $0.isolated.insert(address) }
    }

    public func reconnect(_ address: String) {
        self.state.withLock { _ = $0.isolated.remove(address) }
    }

    /// Messages delivered whose receiver has not finished with them yet: a receiver is done with a message when it
    /// asks its stream for the next one. Zero means that every message sent so far has been acted on, so that a
    /// test driving a manual clock knows it may move time on.
    public var inFlight: Int {
        self.state.withLock { $0.inFlight.values.reduce(0, +) }
    }

    /// Messages delivered and dropped so far.
    public var counts: (delivered: Int, dropped: Int) {
        self.state.withLock { ($0.delivered, $0.dropped) }
    }

    func deliver(_ message: ClusterMessage, from: String, to: String) {
        self.state.withLock { state in
            guard !state.isolated.contains(from), !state.isolated.contains(to), let target = state.endpoints[to] else {
                state.dropped += 1
                return
            }
            state.delivered += 1
            state.inFlight[to, default: 0] += 1
            target.yield(message)
        }
    }

    func taken(by address: String) {
        self.state.withLock { state in
            if let count = state.inFlight[address], count > 0 { state.inFlight[address] = count - 1 }
        }
    }

    func remove(_ address: String) {
        let continuation = self.state.withLock { state in
            state.inFlight[address] = nil
            return state.endpoints.removeValue(forKey: address)
        }
        continuation?.finish()
    }
}

/// One node's endpoint on an `InMemoryNetwork`.
public struct InMemoryTransport: ClusterTransport {
    public let address: String
    let network: InMemoryNetwork
    let stream: AsyncStream<ClusterMessage>

    public func send(_ message: ClusterMessage, to address: String) {
        self.network.deliver(message, from: self.address, to: address)
    }

    public func incoming() -> AsyncStream<ClusterMessage> {
        let reader = Reader(self.stream.makeAsyncIterator(), address: self.address, network: self.network)
        return AsyncStream(unfolding: { await reader.next() })
    }

    public func close() {
        self.network.remove(self.address)
    }
}

/// Reads one endpoint's queue for its receiver and tells the network when the receiver is done with a message (it
/// asks for the next one).
///
/// `@unchecked Sendable`: the iterator is touched only from `next()`, and an `AsyncStream` built by unfolding calls
/// its closure for one `next()` of its one consumer at a time, never concurrently.
private final class Reader: @unchecked Sendable {
    private var iterator: AsyncStream<ClusterMessage>.Iterator
    private var holdsMessage = false
    private let address: String
    private let network: InMemoryNetwork

    init(_ iterator: AsyncStream<ClusterMessage>.Iterator, address: String, network: InMemoryNetwork) {
        self.iterator = iterator
        self.address = address
        self.network = network
    }

    func next() async -> ClusterMessage? {
        if self.holdsMessage { self.network.taken(by: self.address) }
        let message = await self.iterator.next()
        self.holdsMessage = message != nil
        return message
    }
}
