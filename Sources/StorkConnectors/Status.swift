import CoreMetrics
import Foundation
import StorkCore
import Synchronization

// MARK: - ConnectorState

/// What a connector is doing with its resource.
public enum ConnectorState: String, Sendable, Hashable, CaseIterable {
    /// Handled; the connector task is about to run.
    case starting
    /// Opening a connection (WebSocket).
    case connecting
    /// Connected and receiving (WebSocket).
    case connected
    /// Polling on schedule: the last poll succeeded (http-poll).
    case polling
    /// Waiting before the next attempt after a failure.
    case backoff
    /// The resource could not start (bad attributes, no message server), or the connector stopped with an error.
    case failed

    /// Whether the connector does its work in this state: `up` in metrics.
    public var isUp: Bool { self == .connected || self == .polling }
}

// MARK: - ConnectorStatus

/// One resource's connector, as `GET /v1/resources` shows it.
public struct ConnectorStatus: Sendable, Hashable {
    /// The connector's kind (the resource's `kind` attribute).
    public var kind: String
    public var state: ConnectorState
    /// When it entered `state`.
    public var since: Date
    /// Messages that came from the remote end and were published (WebSocket messages, changed poll bodies).
    public var messagesIn = 0
    /// Messages sent to the remote end (WebSocket `outbound`).
    public var messagesOut = 0
    /// Failed connections, lost connections, failed polls, failed starts.
    public var failures = 0
    /// Attempts made after a failure (reconnects, polls after a failed one, restarts).
    public var retries = 0
    /// The last failure, for people (never a secret or a payload).
    public var lastError: String?

    public init(kind: String, state: ConnectorState, since: Date) {
        self.kind = kind
        self.state = state
        self.since = since
    }
}

// MARK: - ConnectorStatusBoard

/// The status of every connector on this node: written by connectors through their reporter, read by the admin API.
public final class ConnectorStatusBoard: Sendable {
    private let entries = Mutex<[ResourceID: ConnectorStatus]>([:])

    public init() {}

    /// The status of the connector of `id`, if one ran or tried to run here.
    public func status(of id: ResourceID) -> ConnectorStatus? {
        self.entries.withLock { $0[id] }
    }

    /// Every connector's status.
    public func all() -> [ResourceID: ConnectorStatus] {
        self.entries.withLock { $0 }
    }

    /// A reporter for the connector of `id`, with its metrics from `metricsFactory` (nil: the global
    /// `MetricsSystem.factory`). The board entry starts (or restarts, keeping its counters) in `starting`.
    public func reporter(
        for id: ResourceID,
        kind: String,
        metricsFactory: (any MetricsFactory)? = nil,
        now: @escaping @Sendable () -> Date = { Date() }
    ) -> ConnectorStatusReporter {
        self.begin(id, kind: kind, now: now())
        return ConnectorStatusReporter(
            board: self,
            id: id,
            kind: kind,
            metrics: ConnectorMetrics(kind: kind, id: id, factory: metricsFactory ?? MetricsSystem.factory),
            now: now
        )
    }

    /// Records a start that failed before the connector ran (validation, no message server).
    func recordStartFailure(_ id: ResourceID, kind: String, error: String, now: Date) {
        self.entries.withLock { entries in
            var status =
                entries[id].flatMap { $0.kind == kind ? $0 : nil }
                ?? ConnectorStatus(kind: kind, state: .failed, since: now)
            if status.state != .failed { status.since = now }
            status.state = .failed
            status.failures += 1
            status.lastError = error
            entries[id] = status
        }
    }

    func begin(_ id: ResourceID, kind: String, now: Date) {
        self.entries.withLock { entries in
            var status =
                entries[id].flatMap { $0.kind == kind ? $0 : nil }
                ?? ConnectorStatus(kind: kind, state: .starting, since: now)
            status.state = .starting
            status.since = now
            entries[id] = status
        }
    }

    func update(_ id: ResourceID, _ body: (inout ConnectorStatus) -> Void) {
        self.entries.withLock { entries in
            guard var status = entries[id] else { return }
            body(&status)
            entries[id] = status
        }
    }

    func remove(_ id: ResourceID) {
        _ = self.entries.withLock { $0.removeValue(forKey: id) }
    }
}

// MARK: - ConnectorStatusReporter

/// How a running connector reports: every call updates the status board and the metrics of its resource.
public struct ConnectorStatusReporter: Sendable {
    let board: ConnectorStatusBoard
    public let id: ResourceID
    public let kind: String
    let metrics: ConnectorMetrics
    let now: @Sendable () -> Date

    /// The connector entered `state` (`since` changes only when the state does).
    public func state(_ state: ConnectorState) {
        let now = self.now()
        self.board.update(self.id) { status in
            guard status.state != state else { return }
            status.state = state
            status.since = now
        }
        self.metrics.up.record(state.isUp ? 1 : 0)
    }

    /// `count` messages came in from the remote end and were published.
    public func received(_ count: Int = 1) {
        self.board.update(self.id) { $0.messagesIn += count }
        self.metrics.messagesIn.increment(by: Int64(count))
    }

    /// `count` messages were sent to the remote end.
    public func sent(_ count: Int = 1) {
        self.board.update(self.id) { $0.messagesOut += count }
        self.metrics.messagesOut.increment(by: Int64(count))
    }

    /// A connection or poll failed; `error` is for people (no secrets, no payloads).
    public func failed(_ error: String) {
        self.board.update(self.id) { status in
            status.failures += 1
            status.lastError = error
        }
        self.metrics.failures.increment()
    }

    /// Another attempt after a failure starts.
    public func retrying() {
        self.board.update(self.id) { $0.retries += 1 }
        self.metrics.retries.increment()
    }

    /// The resource stopped here: its board entry and its metrics go away.
    func finish() {
        self.board.remove(self.id)
        self.metrics.destroy()
    }
}

// MARK: - Metrics

/// The swift-metrics instruments of one resource's connector, with dimensions `kind` and `resource`.
///
/// `stork_connector_messages_total{direction="in"|"out"}`, `stork_connector_failures_total`,
/// `stork_connector_retries_total` (counters) and `stork_connector_up` (gauge: 1 when connected or polling).
final class ConnectorMetrics: Sendable {
    let messagesIn: Counter
    let messagesOut: Counter
    let failures: Counter
    let retries: Counter
    let up: Gauge

    init(kind: String, id: ResourceID, factory: any MetricsFactory) {
        let dimensions = [("kind", kind), ("resource", id.rawValue)]
        self.messagesIn = Counter(
            label: "stork_connector_messages_total",
            dimensions: dimensions + [("direction", "in")],
            factory: factory
        )
        self.messagesOut = Counter(
            label: "stork_connector_messages_total",
            dimensions: dimensions + [("direction", "out")],
            factory: factory
        )
        self.failures = Counter(label: "stork_connector_failures_total", dimensions: dimensions, factory: factory)
        self.retries = Counter(label: "stork_connector_retries_total", dimensions: dimensions, factory: factory)
        self.up = Gauge(label: "stork_connector_up", dimensions: dimensions, factory: factory)
        self.up.record(0)
    }

    func destroy() {
        self.messagesIn.destroy()
        self.messagesOut.destroy()
        self.failures.destroy()
        self.retries.destroy()
        self.up.destroy()
    }
}
