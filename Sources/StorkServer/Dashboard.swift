import StorkBus
import StorkNATS
import StorkBusCluster
import Foundation
import ServiceLifecycle
import StorkCore
import StorkResources
import Synchronization

// MARK: - Dashboard data
//
// What `GET /dashboard` shows beyond the admin API's documents (Docs/dashboard.md):
//
//   GET /v1/moves   the last owner changes of resources in this node's view (a bounded ring, newest last)
//   GET /v1/stats   cumulative counters from named sources (the NATS endpoint, the resource manager, and whatever
//                   else registers a source); the page turns them into rates from the deltas between two reads

// MARK: - Moves

/// One resource that changed owner when this node's view changed.
public struct ResourceMove: Sendable, Hashable {
    public var id: ResourceID
    /// The owner in the previous view.
    public var from: String
    /// The owner in the new view.
    public var to: String
    /// When this node saw the new view.
    public var at: Date
    /// Why the owner changed: which members left or joined the view (`"-n3"`, `"+n4"`).
    public var reason: String

    public init(id: ResourceID, from: String, to: String, at: Date, reason: String) {
        self.id = id
        self.from = from
        self.to = to
        self.at = at
        self.reason = reason
    }
}

/// The owner changes between the views a node saw, the last `capacity` of them. A pure value: the placement the
/// node computed goes in, moves come out.
struct MoveLog: Sendable {
    /// What the owners were computed from: placement owners change only with the view, and the desired set
    /// changes which resources there are.
    struct Key: Sendable, Hashable {
        var checksum: UInt64
        var desired: Int
    }

    let capacity: Int
    private(set) var moves: [ResourceMove] = []
    private(set) var key: Key?
    private var view: [String] = []
    private var owners: [ResourceID: String] = [:]

    init(capacity: Int) {
        precondition(capacity > 0, "a move log keeps at least one move")
        self.capacity = capacity
    }

    /// Whether `key` differs from the last observation (and the owners are worth computing).
    func isStale(_ key: Key) -> Bool {
        self.key != key
    }

    /// Takes the placement of a new view: every resource whose owner changed from one member to another is a move.
    /// Resources that appear, disappear or have no owner are not moves. The first observation only sets the
    /// baseline. Returns the moves it recorded.
    @discardableResult
    mutating func observe(key: Key, view: [String], owners: [ResourceID: String], now: Date) -> [ResourceMove] {
        guard self.key != key else { return [] }
        defer {
            self.key = key
            self.view = view
            self.owners = owners
        }
        guard self.key != nil else { return [] }
        let left = Set(self.view).subtracting(view).sorted().map { "-" + $0 }
        let joined = Set(view).subtracting(self.view).sorted().map { "+" + $0 }
        let reason = (left + joined).joined(separator: " ")
        var recorded: [ResourceMove] = []
        for (id, owner) in owners.sorted(by: { $0.key < $1.key }) {
            guard let previous = self.owners[id], previous != owner else { continue }
            recorded.append(ResourceMove(id: id, from: previous, to: owner, at: now, reason: reason))
        }
        self.moves.append(contentsOf: recorded)
        if self.moves.count > self.capacity { self.moves.removeFirst(self.moves.count - self.capacity) }
        return recorded
    }
}

/// Records the moves of resources between this node's views (``MoveLog`` behind a lock).
///
/// It observes the manager's placement when asked (`observe()`: the admin API calls it on every read of the
/// cluster, resources and moves), and, when run as a `Service`, at every view the manager applies, so that a move
/// carries the time the view changed even when nobody reads.
public final class MoveRecorder: Service, Sendable {
    public static let defaultCapacity = 200

    let manager: ResourceManager
    private let log: Mutex<MoveLog>

    public init(manager: ResourceManager, capacity: Int = MoveRecorder.defaultCapacity) {
        self.manager = manager
        self.log = Mutex(MoveLog(capacity: capacity))
    }

    /// The recorded moves, oldest first.
    public func moves() -> [ResourceMove] {
        self.log.withLock { $0.moves }
    }

    /// Compares the manager's current placement with the last one seen; cheap when the view did not change.
    public func observe(now: Date = Date()) {
        let status = self.manager.status()
        let key = MoveLog.Key(checksum: status.viewChecksum, desired: status.desiredCount)
        guard status.isJoined, self.log.withLock({ $0.isStale(key) }) else { return }
        // Computed outside the log's lock: the manager takes its own.
        var owners: [ResourceID: String] = [:]
        for (resource, owner) in self.manager.clusterAssignment() {
            if let owner { owners[resource.id] = owner.name }
        }
        let view = status.view.map(\.name)
        self.log.withLock { _ = $0.observe(key: key, view: view, owners: owners, now: now) }
    }

    public func run() async throws {
        let events = self.manager.events()
        self.observe()
        await cancelWhenGracefulShutdown {
            for await event in events {
                if case .viewApplied = event { self.observe() }
            }
        }
    }
}

// MARK: - Stats

/// Numbers for `GET /v1/stats`, under a source's name: counters only ever grow (the dashboard shows their rate),
/// gauges are current values. The gateway's connections and deliveries, for example, add a source of their own.
public protocol AdminStatsSource: Sendable {
    /// Unique among the sources of a node: `nats`, `resources`, …
    var name: String { get }
    func stats() -> AdminStats
}

public struct AdminStats: Sendable, Hashable {
    /// Cumulative since the process started.
    public var counters: [String: Double]
    public var gauges: [String: Double]

    public init(counters: [String: Double] = [:], gauges: [String: Double] = [:]) {
        self.counters = counters
        self.gauges = gauges
    }
}

/// The NATS endpoint's totals (the numbers of `/varz`).
struct NATSStatsSource: AdminStatsSource {
    let nats: NATSServer
    var name: String { "nats" }

    func stats() -> AdminStats {
        let varz = self.nats.varz()
        return AdminStats(
            counters: [
                "inMsgs": Double(varz.inMsgs), "outMsgs": Double(varz.outMsgs),
                "inBytes": Double(varz.inBytes), "outBytes": Double(varz.outBytes),
                "totalConnections": Double(varz.totalConnections), "slowConsumers": Double(varz.slowConsumers),
                "stalls": Double(self.nats.stalls),
            ],
            gauges: ["connections": Double(varz.connections), "subscriptions": Double(varz.subscriptions)]
        )
    }
}

/// The resource manager's counters (the numbers of `/metrics`).
struct ResourceStatsSource: AdminStatsSource {
    let manager: ResourceManager
    var name: String { "resources" }

    func stats() -> AdminStats {
        let statistics = self.manager.statistics()
        let status = self.manager.status()
        return AdminStats(
            counters: [
                "handles": Double(statistics.handles), "handleFailures": Double(statistics.handleFailures),
                "terminations": Double(statistics.terminations),
                "terminationFailures": Double(statistics.terminationFailures),
                "requests": Double(statistics.requests),
            ],
            gauges: ["running": Double(status.running.count), "desired": Double(status.desiredCount)]
        )
    }
}

// MARK: - Documents

extension AdminAPI {
    static func movesDocument(_ moves: [ResourceMove], node: String) -> JSONValue {
        .object([
            "node": .string(node),
            "moves": .array(
                moves.map { move in
                    .object([
                        "id": .string(move.id.rawValue), "from": .string(move.from), "to": .string(move.to),
                        "at": .string(iso8601(move.at)), "reason": .string(move.reason),
                    ])
                }
            ),
        ])
    }

    static func statsDocument(_ sources: [any AdminStatsSource], node: String, now: Date) -> JSONValue {
        func numbers(_ values: [String: Double]) -> JSONValue {
            .object(values.mapValues { .number($0) })
        }
        return .object([
            "node": .string(node),
            "time": .number(now.timeIntervalSince1970),
            "sources": .array(
                sources.map { source in
                    let stats = source.stats()
                    return .object([
                        "name": .string(source.name), "counters": numbers(stats.counters),
                        "gauges": numbers(stats.gauges),
                    ])
                }
            ),
        ])
    }
}

/// The cluster bus's counters (what crosses between nodes).
struct BusStatsSource: AdminStatsSource {
    let bus: BusCluster<ContinuousClock>
    var name: String { "bus" }

    func stats() -> AdminStats {
        let statistics = self.bus.statistics()
        let snapshot = self.bus.snapshot()
        return AdminStats(
            counters: [
                "messagesForwarded": Double(statistics.messagesForwarded),
                "bytesForwarded": Double(statistics.bytesForwarded),
                "framesSent": Double(statistics.messageFramesSent),
                "messagesReceived": Double(statistics.messagesReceived),
                "bytesReceived": Double(statistics.bytesReceived),
                "messagesDropped": Double(statistics.messagesDropped),
                "messagesTooLarge": Double(statistics.messagesTooLarge),
                "stalls": Double(statistics.stalls),
                "framesRejected": Double(statistics.framesRejected),
                "framesForAnotherProcess": Double(statistics.framesForAnotherProcess),
                "interestFramesSent": Double(statistics.interestFramesSent),
            ],
            gauges: [
                "peers": Double(snapshot.peers.count),
                "localInterest": Double(snapshot.local.count),
                "remoteInterest": Double(snapshot.peers.values.reduce(0) { $0 + $1.count }),
                "queuedBytes": Double(self.bus.queuedBytes().values.reduce(0, +)),
            ]
        )
    }
}

/// The bus and the NATS endpoint on `/metrics`: what crosses between nodes (in total and per peer), flow control,
/// slow consumers, interest sizes.
struct BusMetrics: AdminMetricsSource {
    let bus: BusCluster<ContinuousClock>?
    let nats: NATSServer

    func samples() -> [MetricSample] {
        let varz = self.nats.varz()
        var samples = [
            MetricSample(name: "stork_nats_messages_total", labels: ["direction": "in"], value: Double(varz.inMsgs),
                help: "Messages published by clients (in) and delivered to clients (out)."),
            MetricSample(name: "stork_nats_messages_total", labels: ["direction": "out"], value: Double(varz.outMsgs),
                help: "Messages published by clients (in) and delivered to clients (out)."),
            MetricSample(name: "stork_nats_bytes_total", labels: ["direction": "in"], value: Double(varz.inBytes),
                help: "Payload and header bytes published by clients (in) and delivered to clients (out)."),
            MetricSample(name: "stork_nats_bytes_total", labels: ["direction": "out"], value: Double(varz.outBytes),
                help: "Payload and header bytes published by clients (in) and delivered to clients (out)."),
            MetricSample(name: "stork_nats_stalls_total", value: Double(self.nats.stalls),
                help: "Times a publishing client was stalled because a subscriber it published to was congested."),
            MetricSample(name: "stork_nats_slow_consumers_total", value: Double(varz.slowConsumers),
                help: "Clients disconnected as slow consumers."),
            MetricSample(name: "stork_nats_connections", value: Double(varz.connections), type: "gauge",
                help: "Open client connections."),
            MetricSample(name: "stork_nats_subscriptions", value: Double(varz.subscriptions), type: "gauge",
                help: "Subscriptions on this node's router (clients, receivers inside the server, other nodes')."),
        ]
        guard let bus = self.bus else { return samples }
        let statistics = bus.statistics()
        let snapshot = bus.snapshot()
        samples += [
            MetricSample(name: "stork_bus_messages_total", labels: ["direction": "forwarded"],
                value: Double(statistics.messagesForwarded), help: "Messages sent to (forwarded) and received from other nodes."),
            MetricSample(name: "stork_bus_messages_total", labels: ["direction": "received"],
                value: Double(statistics.messagesReceived), help: "Messages sent to (forwarded) and received from other nodes."),
            MetricSample(name: "stork_bus_bytes_total", labels: ["direction": "forwarded"],
                value: Double(statistics.bytesForwarded), help: "Bytes sent to and received from other nodes."),
            MetricSample(name: "stork_bus_bytes_total", labels: ["direction": "received"],
                value: Double(statistics.bytesReceived), help: "Bytes sent to and received from other nodes."),
            MetricSample(name: "stork_bus_dropped_total", value: Double(statistics.messagesDropped),
                help: "Messages for another node dropped because its queue was full."),
            MetricSample(name: "stork_bus_stalls_total", value: Double(statistics.stalls),
                help: "Stalls caused by the bus: publishers waiting for a congested link, links waiting for a congested subscriber."),
            MetricSample(name: "stork_bus_frames_rejected_total", value: Double(statistics.framesRejected),
                help: "Bus frames that could not be decoded."),
            MetricSample(name: "stork_bus_interest_keys", labels: ["side": "local"], value: Double(snapshot.local.count),
                type: "gauge", help: "Interest keys (patterns, or pattern and queue group) of this node and of its peers."),
            MetricSample(name: "stork_bus_interest_keys", labels: ["side": "remote"],
                value: Double(snapshot.peers.values.reduce(0) { $0 + $1.count }), type: "gauge",
                help: "Interest keys (patterns, or pattern and queue group) of this node and of its peers."),
        ]
        let queued = bus.queuedBytes()
        for (peer, messages) in statistics.forwardedByPeer.sorted(by: { $0.key.name < $1.key.name }) {
            samples.append(
                MetricSample(name: "stork_bus_peer_messages_total", labels: ["peer": peer.name], value: Double(messages),
                    help: "Messages forwarded to each live peer.")
            )
            samples.append(
                MetricSample(name: "stork_bus_peer_bytes_total", labels: ["peer": peer.name],
                    value: Double(statistics.bytesByPeer[peer] ?? 0), help: "Bytes forwarded to each live peer.")
            )
            samples.append(
                MetricSample(name: "stork_bus_peer_queued_bytes", labels: ["peer": peer.name],
                    value: Double(queued[peer] ?? 0), type: "gauge", help: "Bytes waiting to be sent to each live peer.")
            )
        }
        return samples
    }
}
