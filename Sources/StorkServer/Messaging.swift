import StorkBus
import StorkNATS
import StorkBusCluster
import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import StorkResources
import StorkStreaming
import UnixSignals

// MARK: - Messaging for handlers, on the node's NATS router

/// ``StorkMessaging`` over the node's NATS router: what handlers publish reaches NATS clients and streams of this
/// node; what NATS clients publish reaches handlers' subscriptions.
struct RouterMessaging: StorkMessaging {
    let router: BusRouter

    func publish(_ message: StorkMessage) -> Int {
        self.router.publish(
            BusMessage(
                subject: message.subject,
                replyTo: message.replyTo,
                headers: Self.headers(message.headers),
                payload: ByteBuffer(bytes: message.payload)
            )
        )
    }

    func subscribe(_ subject: String, queue: String?) -> AsyncStream<StorkMessage> {
        let (stream, continuation) = AsyncStream.makeStream(of: StorkMessage.self, bufferingPolicy: .bufferingNewest(65536))
        let subscription = self.router.subscribe(subject, queue: queue, receiver: Receiver(continuation: continuation))
        let router = self.router
        continuation.onTermination = { _ in router.unsubscribe(subscription) }
        return stream
    }

    func request(_ message: StorkMessage, timeout: Duration) async throws -> StorkMessage {
        // The client's only subscription is the request's inbox, which `request` ends itself: nothing to close.
        let client = LocalBusClient(router: self.router, name: "handler")
        let reply = try await client.request(
            message.subject,
            headers: Self.headers(message.headers),
            payload: ByteBuffer(bytes: message.payload),
            timeout: timeout
        )
        return Self.storkMessage(reply)
    }

    static func headers(_ fields: [String: String]) -> MessageHeaders? {
        fields.isEmpty ? nil : MessageHeaders(fields: fields.sorted { $0.key < $1.key }.map { ($0.key, $0.value) })
    }

    static func storkMessage(_ message: BusMessage) -> StorkMessage {
        var headers: [String: String] = [:]
        if let parsed = message.headers {
            for field in parsed.fields { headers[field.name] = field.value }
        }
        return StorkMessage(
            subject: message.subject,
            replyTo: message.replyTo,
            headers: headers,
            payload: Array(message.payload.readableBytesView)
        )
    }

    struct Receiver: BusReceiver {
        let continuation: AsyncStream<StorkMessage>.Continuation
        func receive(_ message: BusMessage, subscription: BusSubscription) {
            self.continuation.yield(RouterMessaging.storkMessage(message))
        }
    }
}

// MARK: - Lifecycle events as messages

/// Publishes this node's resource lifecycle events on `stork.resources.<node>.<event>` (JSON bodies, the documents of
/// `GET /v1/events` with `node`), so that any NATS client can watch the resources of the node.
struct LifecycleEventPublisher: Service {
    let manager: ResourceManager
    let router: BusRouter
    let node: String

    func run() async throws {
        let events = self.manager.events()
        await cancelWhenGracefulShutdown {
            for await event in events {
                // Only resource events: membership and view changes stay on `GET /v1/events`, so that a client
                // subscribed to `>` sees Stork's own messages only when resources change.
                guard case .resource(let resource) = event else { continue }
                let document = AdminAPI.eventDocument(event)
                let subject = "stork.resources.\(Subject.token(self.node)).\(resource.kind.name)"
                var body = document
                if case .object(var fields) = body {
                    fields["node"] = .string(self.node)
                    fields["event"] = .string(resource.kind.name)
                    fields["detail"] = .string("\(resource.kind)")
                    body = .object(fields)
                }
                self.router.publish(BusMessage(subject: subject, payload: ByteBuffer(string: body.description)))
            }
        }
    }
}

// MARK: - The endpoint opens when streams are ready

/// Runs the NATS endpoint once JetStream has recovered its streams, so that no client sees a moment without them.
struct NATSEndpointService: Service {
    let nats: NATSServer
    let jetstream: JetStream?
    /// The streams placed again after a restart (streams on PostgreSQL), waited for like the node's own streams.
    var restorer: PlacedStreamRestorer? = nil

    func run() async throws {
        try await self.jetstream?.waitUntilReady()
        await self.restorer?.waitUntilRestored()
        try await self.nats.run()
    }
}

// MARK: - Draining a node

/// `stork drain` (`POST /v1/drain`) and SIGUSR2: the node's NATS clients move to other nodes first (lame-duck mode:
/// INFO with `ldm: true`, then the remaining clients are closed over `nats.lameDuckDuration`), then the node hands
/// every resource off and leaves the cluster, and the process exits. SIGTERM skips the lame-duck part.
final class NodeDrain: Service, Sendable {
    let manager: ResourceManager
    let nats: NATSServer?
    /// Whether SIGUSR2 starts a drain (only for the process's own server, not in tests running several).
    let trapsSignal: Bool
    private let requests: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation

    init(manager: ResourceManager, nats: NATSServer?, trapsSignal: Bool) {
        self.manager = manager
        self.nats = nats
        self.trapsSignal = trapsSignal
        (self.requests, self.continuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    /// Starts the drain (once; later requests change nothing).
    func request() {
        self.continuation.yield()
    }

    func run() async throws {
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                if self.trapsSignal {
                    group.addTask {
                        for await _ in await UnixSignalsSequence(trapping: .sigusr2) { self.request() }
                    }
                }
                group.addTask {
                    for await _ in self.requests {
                        await self.nats?.enterLameDuckMode()
                        self.manager.drain()
                        return
                    }
                }
                await group.next()
                // The drain started; what is left (the signal watcher) is not needed any more.
                group.cancelAll()
            }
        }
        self.continuation.finish()
    }
}

/// Keeps the NATS endpoint's `connect_urls` equal to the cluster's client addresses as the bus learns them.
struct ConnectURLsService: Service {
    let nats: NATSServer
    let bus: BusCluster<ContinuousClock>

    func run() async throws {
        await cancelWhenGracefulShutdown {
            for await urls in self.bus.connectURLUpdates() { self.nats.setConnectURLs(urls) }
        }
    }
}
