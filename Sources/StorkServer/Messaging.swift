import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import StorkNATS
import StorkResources
import StorkStreaming

// MARK: - Messaging for handlers, on the node's NATS router

/// ``StorkMessaging`` over the node's NATS router: what handlers publish reaches NATS clients and streams of this
/// node; what NATS clients publish reaches handlers' subscriptions.
struct RouterMessaging: StorkMessaging {
    let router: NATSRouter

    func publish(_ message: StorkMessage) -> Int {
        var headers: ByteBuffer?
        if !message.headers.isEmpty {
            headers = NATSHeaders(fields: message.headers.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }).encoded
        }
        return self.router.publish(
            NATSMessage(subject: message.subject, replyTo: message.replyTo, headers: headers, payload: ByteBuffer(bytes: message.payload))
        )
    }

    func subscribe(_ subject: String, queue: String?) -> AsyncStream<StorkMessage> {
        let (stream, continuation) = AsyncStream.makeStream(of: StorkMessage.self, bufferingPolicy: .bufferingNewest(65536))
        let subscription = self.router.subscribe(subject, queue: queue, receiver: Receiver(continuation: continuation))
        let router = self.router
        continuation.onTermination = { _ in router.unsubscribe(subscription) }
        return stream
    }

    struct Receiver: NATSLocalReceiver {
        let continuation: AsyncStream<StorkMessage>.Continuation
        func receive(_ message: NATSMessage, subscription: NATSSubscription) {
            var headers: [String: String] = [:]
            if let block = message.headers, let parsed = NATSHeaders.parse(block) {
                for field in parsed.fields { headers[field.name] = field.value }
            }
            self.continuation.yield(
                StorkMessage(
                    subject: message.subject,
                    replyTo: message.replyTo,
                    headers: headers,
                    payload: Array(message.payload.readableBytesView)
                )
            )
        }
    }
}

// MARK: - Lifecycle events as messages

/// Publishes this node's resource lifecycle events on `stork.resources.<node>.<event>` (JSON bodies, the documents of
/// `GET /v1/events` with `node`), so that any NATS client can watch the resources of the node.
struct LifecycleEventPublisher: Service {
    let manager: ResourceManager
    let router: NATSRouter
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
                self.router.publish(NATSMessage(subject: subject, payload: ByteBuffer(string: body.description)))
            }
        }
    }
}

// MARK: - The endpoint opens when streams are ready

/// Runs the NATS endpoint once JetStream has recovered its streams, so that no client sees a moment without them.
struct NATSEndpointService: Service {
    let nats: NATSServer
    let jetstream: JetStream?

    func run() async throws {
        try await self.jetstream?.waitUntilReady()
        try await self.nats.run()
    }
}
