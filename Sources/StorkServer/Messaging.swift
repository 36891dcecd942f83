import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import StorkNATS
import StorkResources

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

/// Publishes this node's resource lifecycle events on `stork.resources.<node>.<event>` and its membership events on
/// `stork.cluster.<node>.<type>` (JSON bodies, the documents of `GET /v1/events`), so that any NATS client can
/// watch the node.
struct LifecycleEventPublisher: Service {
    let manager: ResourceManager
    let router: NATSRouter
    let node: String

    func run() async throws {
        let events = self.manager.events()
        await cancelWhenGracefulShutdown {
            for await event in events {
                let document = AdminAPI.eventDocument(event)
                let subject: String
                switch event {
                case .resource(let resource):
                    subject = "stork.resources.\(Self.token(self.node)).\(resource.kind.name)"
                case .member:
                    subject = "stork.cluster.\(Self.token(self.node)).member"
                case .joined, .refuted, .viewApplied, .left:
                    let type: String
                    if case .object(let fields) = document, case .string(let value)? = fields["type"] {
                        type = value
                    } else {
                        type = "event"
                    }
                    subject = "stork.cluster.\(Self.token(self.node)).\(type)"
                }
                var body = document
                if case .object(var fields) = body {
                    fields["node"] = .string(self.node)
                    if case .resource(let resource) = event {
                        fields["event"] = .string(resource.kind.name)
                        fields["detail"] = .string("\(resource.kind)")
                    }
                    body = .object(fields)
                }
                self.router.publish(NATSMessage(subject: subject, payload: ByteBuffer(string: body.description)))
            }
        }
    }

    /// A node name as one subject token.
    static func token(_ name: String) -> String {
        String(name.map { $0 == "." || $0 == "*" || $0 == ">" || $0 == " " || $0 == "\t" ? "_" : $0 })
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
