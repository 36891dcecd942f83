import Logging
import StorkCore

// MARK: - ResourceContext

/// What a handler knows about the call it is in.
public struct ResourceContext: Sendable {
    /// The node running the resource.
    public var node: NodeID
    /// The handle attempt (1 for the first call after the resource came here; more after failures).
    public var attempt: Int
    /// In lease mode, the fencing token of the lease this node holds for the resource: pass it to downstream
    /// systems so they can reject a stale owner. Nil in the default (gossip) ownership mode.
    public var fencingToken: UInt64?
    /// A logger with the resource id and node in its metadata.
    public var logger: Logger
    /// The node's message server, when it runs one: publish the resource's events, subscribe to its commands.
    public var messaging: (any StorkMessaging)?

    public init(
        node: NodeID,
        attempt: Int,
        fencingToken: UInt64? = nil,
        logger: Logger,
        messaging: (any StorkMessaging)? = nil
    ) {
        self.node = node
        self.attempt = attempt
        self.fencingToken = fencingToken
        self.logger = logger
        self.messaging = messaging
    }
}

// MARK: - ResourceHandler

/// Starts and stops resources on this node: the four callbacks of the original library.
///
/// Stork guarantees that for one resource id the calls never overlap on a node: `terminate` is only called after
/// `handle` returned, and `handle` is never called twice concurrently. In the default ownership mode a resource
/// moves revoke-then-assign: the old owner's `terminate` returns before the new owner's `handle` is called, unless
/// the old owner was declared dead.
public protocol ResourceHandler: Sendable {
    /// Start the resource. Return when it runs; throw if it could not be started (it is retried with backoff).
    func handle(_ resource: Resource, context: ResourceContext) async throws
    /// Called after every failed `handle`, before the retry is scheduled.
    func handleFailed(_ resource: Resource, error: any Error, context: ResourceContext) async
    /// Stop the resource: it moved, was removed, changed, or the node is leaving.
    func terminate(_ resource: Resource, reason: TerminationReason, context: ResourceContext) async throws
    /// Called when `terminate` threw. The resource is considered stopped regardless.
    func handleFailedTermination(_ resource: Resource, error: any Error, context: ResourceContext) async
}

extension ResourceHandler {
    public func handleFailed(_ resource: Resource, error: any Error, context: ResourceContext) async {
        context.logger.warning("handle failed", metadata: ["stork.error": "\(error)"])
    }

    public func handleFailedTermination(_ resource: Resource, error: any Error, context: ResourceContext) async {
        context.logger.warning("terminate failed", metadata: ["stork.error": "\(error)"])
    }
}

// MARK: - ResourceRunner

/// The structured alternative to `ResourceHandler`: a resource is one async function that runs as long as the
/// resource runs here, and is cancelled to terminate it.
///
/// If `run` returns or throws while the resource should still run, the resource is restarted with backoff.
public protocol ResourceRunner: Sendable {
    func run(_ resource: Resource, context: ResourceContext) async throws
}

// MARK: - ResourceSource

/// A change pushed by a source between fetches.
public enum ResourceSourceChange: Sendable, Hashable {
    /// These resources were added or changed.
    case upserted([Resource])
    /// These resources were deleted.
    case removed([ResourceID])
    /// This is now the complete list.
    case replaced([Resource])
}

/// Says which resources exist: the original library's plugin (setup, fetch, tear down), plus optional pushes.
///
/// Only one node of the cluster (the owner of the source's key) fetches and polls; the changes it sees, additions
/// and deletions, are replicated to every node.
public protocol ResourceSource: Sendable {
    func setup() async throws
    /// The complete current list.
    func fetch() async throws -> [Resource]
    /// Changes pushed between fetches, if the source can push (nil if it cannot).
    func changes() -> AsyncStream<ResourceSourceChange>?
    func tearDown() async
}

extension ResourceSource {
    public func setup() async throws {}
    public func changes() -> AsyncStream<ResourceSourceChange>? { nil }
    public func tearDown() async {}
}

/// A source with a fixed list: for tests, examples, and resources that only come through `allocate`.
public struct StaticResourceSource: ResourceSource {
    public var resources: [Resource]

    public init(_ resources: [Resource] = []) {
        self.resources = resources
    }

    public func fetch() async throws -> [Resource] { self.resources }
}
