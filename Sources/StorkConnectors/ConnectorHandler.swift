import CoreMetrics
import Foundation
import Logging
import ServiceLifecycle
import StorkCore
import StorkResources
import Synchronization

// MARK: - Configuration

/// How ``ConnectorHandler`` runs connectors.
public struct ConnectorHandlerConfiguration: Sendable {
    /// What happens to a resource whose `kind` names no registered connector.
    public enum UnknownKind: String, Sendable, Hashable {
        /// `handle` fails with an error naming the known kinds (retried with backoff, shown in the admin API).
        case fail
        /// The resource goes to the fallback handler, like a resource without `kind`.
        case handler
    }

    public var unknownKind: UnknownKind = .fail
    /// Resolves secret references in attributes.
    public var secrets = ConnectorSecrets()
    /// The clock connectors wait on.
    public var clock = ConnectorClock.system
    /// Clients of the bus: this node's in process, other servers' over NATS. Connectors that consume streams
    /// (`webhook`) use this node's unless a resource names another server.
    public var bus: ConnectorBus?
    /// Where connector metrics go; nil: the global `MetricsSystem.factory`.
    public var metricsFactory: (any MetricsFactory)?
    /// Backoff between restarts of a connector whose `run` returned or threw (built-in connectors never do: they
    /// retry by themselves).
    public var restartBackoffMinimum: Duration = .seconds(1)
    public var restartBackoffMaximum: Duration = .seconds(60)
    /// How long a connector told to stop (terminate, drain, shutdown) may take to finish what it started and return
    /// from `run`, waited on ``clock``; then its task is cancelled. The default, 30 s, covers a `webhook` POST in
    /// flight (its `timeout`, 10 s by default), its open pull (5 s) and its final flush. `.zero` cancels at once;
    /// nil never cancels (the connector alone decides when it is done).
    public var stopGracePeriod: Duration? = .seconds(30)

    public init() {}
}

// MARK: - ConnectorHandler

/// A ``ResourceHandler`` that runs the connector a resource's `kind` attribute names, and hands every other resource
/// to a fallback handler (the sidecar, the log handler, your own).
///
/// `handle` validates the attributes (a bad attribute fails the handle, which Stork retries with backoff) and starts
/// the connector as a child task of ``run()``; `terminate` fires the connector's stop signal
/// (``ConnectorContext/stop``), cancels its task if it has not returned within
/// ``ConnectorHandlerConfiguration/stopGracePeriod``, and returns when it ended. Run the handler
/// as a `Service` in the same `ServiceGroup` as the `ResourceManager`, listed before it so that it stops after it:
///
/// ```swift
/// let connectors = ConnectorHandler(registry: .builtIn(httpClient: client), fallback: LogHandler(), logger: logger)
/// let manager = ResourceManager(configuration: configuration, handler: connectors, transport: transport, logger: logger)
/// let group = ServiceGroup(services: [connectors, manager], logger: logger)
/// ```
public final class ConnectorHandler: ResourceHandler, Service {
    public let registry: ConnectorRegistry
    public let fallback: any ResourceHandler
    public let configuration: ConnectorHandlerConfiguration
    /// The state of every connector on this node.
    public let board: ConnectorStatusBoard
    let logger: Logger

    private enum Route {
        case fallback
        case connector(RunningConnector)
    }

    private enum Phase {
        case accepting
        case stopped
    }

    private struct State {
        var phase = Phase.accepting
        var routes: [ResourceID: Route] = [:]
        /// Connectors handed to `run()` whose task has not taken them over yet.
        var unstarted: [ObjectIdentifier: RunningConnector] = [:]
    }

    private let state = Mutex(State())
    private let starts: AsyncStream<RunningConnector>
    private let startContinuation: AsyncStream<RunningConnector>.Continuation

    public init(
        registry: ConnectorRegistry,
        fallback: any ResourceHandler,
        configuration: ConnectorHandlerConfiguration = .init(),
        board: ConnectorStatusBoard = ConnectorStatusBoard(),
        logger: Logger
    ) {
        self.registry = registry
        self.fallback = fallback
        self.configuration = configuration
        self.board = board
        self.logger = logger
        (self.starts, self.startContinuation) = AsyncStream.makeStream(of: RunningConnector.self)
    }

    // MARK: Service

    /// Owns the connector tasks. On graceful shutdown every connector still running is told to stop (and cancelled
    /// after the grace period); cancellation cancels them at once. Returns when all have ended.
    public func run() async throws {
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { group in
                for await running in self.starts {
                    group.addTask { await self.supervise(running) }
                }
                // Shut down or cancelled: stop whatever still runs (the task group waits for them), and finish the
                // starts that never got a task (handled just before the shutdown), so that their terminate returns.
                self.stopAll()
                self.abandonUnstarted()
            }
        } onGracefulShutdown: {
            self.stopAll()
        }
    }

    private func stopAll() {
        let running = self.state.withLock { state -> [RunningConnector] in
            state.phase = .stopped
            return state.routes.values.compactMap { route in
                if case .connector(let running) = route { return running }
                return nil
            }
        }
        self.startContinuation.finish()
        for connector in running { connector.stop.fire() }
    }

    private func abandonUnstarted() {
        let unstarted = self.state.withLock { state in
            defer { state.unstarted = [:] }
            return Array(state.unstarted.values)
        }
        for running in unstarted where running.abandonIfUnstarted() {
            running.context.status.finish()
            running.done.fire()
        }
    }

    // MARK: ResourceHandler

    /// What runs `resource`: a connector, or nil for the fallback handler.
    public func connector(for resource: Resource) throws -> (any Connector)? {
        guard let value = resource.attributes["kind"], value != .null else { return nil }
        guard case .string(let kind) = value else {
            throw StorkError(.invalidInput, "resource \(resource.id): 'kind' must be a string, got \(value)")
        }
        if let connector = self.registry[kind: kind] { return connector }
        switch self.configuration.unknownKind {
        case .handler:
            return nil
        case .fail:
            let known = self.registry.kinds.joined(separator: ", ")
            throw StorkError(
                .invalidInput,
                "resource \(resource.id): unknown kind '\(kind)'; connectors here run \(known.isEmpty ? "no kind" : known) "
                    + "(a resource without 'kind' goes to the handler)"
            )
        }
    }

    public func handle(_ resource: Resource, context: ResourceContext) async throws {
        let found: (any Connector)?
        do {
            found = try self.connector(for: resource)
            try found?.validate(resource)
        } catch {
            self.board.recordStartFailure(
                resource.id,
                kind: resource[string: "kind"] ?? "\(resource.attributes["kind"] ?? .null)",
                error: "\(error)",
                now: self.configuration.clock.now()
            )
            throw error
        }
        guard let connector = found else {
            try await self.fallback.handle(resource, context: context)
            self.state.withLock { $0.routes[resource.id] = .fallback }
            return
        }
        guard let messaging = context.messaging else {
            let error = StorkError(
                .unavailable,
                "resource \(resource.id) (\(connector.name)): connectors publish on the message server, which is off "
                    + "on this node (node.nats)"
            )
            self.board.recordStartFailure(
                resource.id,
                kind: connector.name,
                error: "\(error)",
                now: self.configuration.clock.now()
            )
            throw error
        }
        // Stork never calls handle twice for a resource without terminate in between; if it ever did, the old task
        // stops first, so that one resource never has two connections.
        await self.stopConnector(resource.id)

        let reporter = self.board.reporter(
            for: resource.id,
            kind: connector.name,
            metricsFactory: self.configuration.metricsFactory,
            now: self.configuration.clock.now
        )
        let running = RunningConnector(
            resource: resource,
            connector: connector,
            context: ConnectorContext(
                resource: context,
                messaging: messaging,
                status: reporter,
                secrets: self.configuration.secrets,
                clock: self.configuration.clock,
                bus: self.configuration.bus,
                stop: OneShotSignal()
            )
        )
        let accepted = self.state.withLock { state -> Bool in
            guard case .accepting = state.phase else { return false }
            state.routes[resource.id] = .connector(running)
            state.unstarted[ObjectIdentifier(running)] = running
            return true
        }
        guard accepted else {
            reporter.finish()
            throw StorkError(.shutdown, "resource \(resource.id): the connector handler is stopping")
        }
        self.startContinuation.yield(running)
    }

    public func handleFailed(_ resource: Resource, error: any Error, context: ResourceContext) async {
        let goesToFallback: Bool
        do {
            goesToFallback = try self.connector(for: resource) == nil
        } catch {
            goesToFallback = false
        }
        if goesToFallback {
            await self.fallback.handleFailed(resource, error: error, context: context)
        } else {
            context.logger.warning("connector failed to start", metadata: ["stork.error": "\(error)"])
        }
    }

    public func terminate(_ resource: Resource, reason: TerminationReason, context: ResourceContext) async throws {
        let route = self.state.withLock { $0.routes[resource.id] }
        switch route {
        case .fallback?:
            self.state.withLock { _ = $0.routes.removeValue(forKey: resource.id) }
            try await self.fallback.terminate(resource, reason: reason, context: context)
        case .connector?:
            await self.stopConnector(resource.id)
        case nil:
            // Not started here (its handle failed): nothing runs; forget its failed start.
            self.board.remove(resource.id)
        }
    }

    public func handleFailedTermination(_ resource: Resource, error: any Error, context: ResourceContext) async {
        await self.fallback.handleFailedTermination(resource, error: error, context: context)
    }

    /// Stops the connector of `id`, if one runs, and returns when its task ended.
    private func stopConnector(_ id: ResourceID) async {
        let running = self.state.withLock { state -> RunningConnector? in
            guard case .connector(let running)? = state.routes[id] else { return nil }
            state.routes[id] = nil
            return running
        }
        guard let running else { return }
        running.stop.fire()
        await running.done.wait()
    }

    // MARK: Running one connector

    /// Runs a connector until it is stopped, then clears its status and says it is done.
    ///
    /// Stopping is cooperative: the stop signal asks `run` to finish and return; only a connector still running after
    /// the grace period is cancelled (the grace child ends, and the group cancels the rest).
    private func supervise(_ running: RunningConnector) async {
        guard running.claim() else { return }
        _ = self.state.withLock { $0.unstarted.removeValue(forKey: ObjectIdentifier(running)) }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.runWithRestarts(running) }
            if let grace = self.configuration.stopGracePeriod {
                group.addTask { await self.enforceStopGrace(grace, on: running) }
            }
            await group.next()
            group.cancelAll()
        }
        running.context.status.finish()
        running.done.fire()
    }

    /// Returns once the connector was told to stop and `grace` passed on the clock (then the connector is cancelled),
    /// or when cancelled (the connector returned in time, or the handler is cancelled).
    private func enforceStopGrace(_ grace: Duration, on running: RunningConnector) async {
        await running.stop.wait()
        guard !Task.isCancelled else { return }
        guard grace > .zero else { return }
        do {
            try await running.context.clock.sleep(grace)
        } catch {
            return
        }
        running.context.logger.warning(
            "connector did not stop within its grace period, cancelling it",
            metadata: ["stork.grace": "\(grace)"]
        )
    }

    /// Runs the connector; if it returns or throws while not stopping, runs it again after a backoff.
    private func runWithRestarts(_ running: RunningConnector) async {
        let context = running.context
        var backoff = ConnectorBackoff(
            minimum: self.configuration.restartBackoffMinimum,
            maximum: self.configuration.restartBackoffMaximum
        )
        while !context.isStopping {
            do {
                try await running.connector.run(running.resource, context: context)
                if context.isStopping { return }
                context.status.failed("the connector stopped by itself")
            } catch {
                if context.isStopping { return }
                context.status.failed("\(error)")
                context.logger.warning("connector stopped", metadata: ["stork.error": "\(error)"])
            }
            context.status.state(.failed)
            guard await context.sleep(backoff.nextDelay()) else { return }
            context.status.retrying()
        }
    }
}

/// One resource's connector: what to run, and the signals that stop it and say it ended.
final class RunningConnector: Sendable {
    let resource: Resource
    let connector: any Connector
    let context: ConnectorContext
    let done = OneShotSignal()

    /// Fired to tell the connector to stop: the context's signal.
    var stop: OneShotSignal { self.context.stop }

    private enum Phase {
        case pending, started, abandoned
    }

    private let phase = Mutex(Phase.pending)

    init(resource: Resource, connector: any Connector, context: ConnectorContext) {
        self.resource = resource
        self.connector = connector
        self.context = context
    }

    /// The handler's task takes it over; false when the handler stopped before it could.
    func claim() -> Bool {
        self.phase.withLock { phase in
            guard case .pending = phase else { return false }
            phase = .started
            return true
        }
    }

    /// Marks it as never to be started, unless a task took it over already; true when it was still pending.
    func abandonIfUnstarted() -> Bool {
        self.phase.withLock { phase in
            guard case .pending = phase else { return false }
            phase = .abandoned
            return true
        }
    }
}
