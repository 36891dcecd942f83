import Foundation
import NIOCore
import StorkCore
import StorkStreaming
import Synchronization

// MARK: - BusClient

/// A client of the bus: publish, subscribe, request/reply with inboxes, flush. ``LocalBusClient`` is one inside the
/// node (no socket); Stork's NATS client is one over the NATS protocol, for a server elsewhere. Code that consumes
/// durable streams (the `webhook` connector, ``DurableStreamClient``) is written once against this protocol.
///
/// Errors are ``StorkError``s: `.noResponders` when a request's subject has no subscriber anywhere, `.timeout`,
/// `.connectionClosed`, `.invalidSubject`.
public protocol BusClient: Sendable {
    /// The prefix of this client's reply subjects: a subscription to `<inboxPrefix>.>` receives every reply to it.
    var inboxPrefix: String { get }

    /// Publishes a message without waiting for anyone to receive it.
    func publish(_ subject: String, replyTo: String?, headers: MessageHeaders?, payload: ByteBuffer) throws

    /// Messages on `subject` (wildcards allowed), one member of `queue` each when given, until ``unsubscribe(_:)``
    /// or ``close()`` (the stream then finishes).
    func subscribe(_ subject: String, queue: String?) throws -> (sid: String, messages: AsyncStream<BusMessage>)

    func unsubscribe(_ sid: String)

    /// Publishes with a fresh inbox as the reply subject and returns the first reply.
    func request(_ subject: String, headers: MessageHeaders?, payload: ByteBuffer, timeout: Duration) async throws
        -> BusMessage

    /// Returns once everything published before it has been handed to the server (the node's router).
    func flush(timeout: Duration) async throws

    /// Ends every subscription; later operations fail.
    func close() async
}

extension BusClient {
    public func publish(_ subject: String, replyTo: String? = nil, payload: ByteBuffer) throws {
        try self.publish(subject, replyTo: replyTo, headers: nil, payload: payload)
    }

    public func subscribe(_ subject: String) throws -> (sid: String, messages: AsyncStream<BusMessage>) {
        try self.subscribe(subject, queue: nil)
    }

    public func request(_ subject: String, payload: ByteBuffer, timeout: Duration) async throws -> BusMessage {
        try await self.request(subject, headers: nil, payload: payload, timeout: timeout)
    }
}

// MARK: - LocalBusClient

/// A ``BusClient`` inside the node, on its ``BusRouter``: what it publishes is routed at once (to this node's
/// subscribers, its streams and, through the cluster, the other nodes'), and its subscriptions are the router's own,
/// so it sees what any node publishes. No socket, no encoding: messages are handed over as they are.
public final class LocalBusClient: BusClient {
    private struct State {
        var subscriptions: [String: (subscription: BusSubscription, continuation: AsyncStream<BusMessage>.Continuation)] = [:]
        var closed = false
    }

    private let router: BusRouter
    private let state = Mutex(State())
    private let nextSID = Atomic<Int>(1)
    public let inboxPrefix: String

    /// `name` shows in logs and inbox subjects (`_INBOX.<name>.<random>`), letters and digits only are kept.
    public init(router: BusRouter, name: String = "local") {
        self.router = router
        let safe = String(name.unicodeScalars.filter { CharacterSet.alphanumerics.contains($0) }.prefix(32))
        let random = UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(16)
        self.inboxPrefix = "_INBOX.\(safe.isEmpty ? "local" : safe).\(random)"
    }

    public func publish(_ subject: String, replyTo: String?, headers: MessageHeaders?, payload: ByteBuffer) throws {
        guard Subject.isValidForPublish(subject) else {
            throw StorkError(.invalidSubject, "'\(subject)' is not a subject that can be published to")
        }
        if let replyTo, !Subject.isValidLiteral(replyTo) {
            throw StorkError(.invalidSubject, "'\(replyTo)' is not a subject that can be replied to")
        }
        try self.checkOpen()
        self.router.publish(BusMessage(subject: subject, replyTo: replyTo, headers: headers, payload: payload))
    }

    public func subscribe(_ subject: String, queue: String?) throws -> (sid: String, messages: AsyncStream<BusMessage>) {
        guard Subject.isValidPattern(subject) else {
            throw StorkError(.invalidSubject, "'\(subject)' is not a subject pattern")
        }
        if let queue, queue.isEmpty || queue.utf8.contains(where: { $0 <= 0x20 }) {
            throw StorkError(.invalidSubject, "'\(queue)' is not a queue group name")
        }
        let sid = String(self.nextSID.wrappingAdd(1, ordering: .relaxed).oldValue)
        let (stream, continuation) = AsyncStream.makeStream(of: BusMessage.self)
        try self.state.withLock { state throws(StorkError) in
            guard !state.closed else { throw StorkError(.connectionClosed, "the bus client is closed") }
            let subscription = self.router.subscribe(subject, queue: queue, receiver: Receiver(continuation: continuation))
            state.subscriptions[sid] = (subscription, continuation)
        }
        continuation.onTermination = { [weak self] termination in
            if case .cancelled = termination { self?.unsubscribe(sid) }
        }
        return (sid, stream)
    }

    public func unsubscribe(_ sid: String) {
        let removed = self.state.withLock { $0.subscriptions.removeValue(forKey: sid) }
        guard let removed else { return }
        self.router.unsubscribe(removed.subscription)
        removed.continuation.finish()
    }

    public func request(
        _ subject: String,
        headers: MessageHeaders?,
        payload: ByteBuffer,
        timeout: Duration
    ) async throws -> BusMessage {
        guard Subject.isValidForPublish(subject) else {
            throw StorkError(.invalidSubject, "'\(subject)' is not a subject that can be published to")
        }
        let inbox = "\(self.inboxPrefix).r\(self.nextSID.wrappingAdd(1, ordering: .relaxed).oldValue)"
        let (sid, replies) = try self.subscribe(inbox, queue: nil)
        defer { self.unsubscribe(sid) }
        let received = self.router.publish(BusMessage(subject: subject, replyTo: inbox, headers: headers, payload: payload))
        if received == 0 { throw StorkError(.noResponders, "nobody listens on '\(subject)'") }
        let reply = try await withThrowingTaskGroup(of: BusMessage?.self) { group in
            group.addTask {
                for await message in replies { return message }
                return nil
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                throw StorkError(.timeout, "no reply on '\(subject)' within \(timeout)")
            }
            defer { group.cancelAll() }
            return try await group.next() ?? nil
        }
        guard let reply else { throw StorkError(.connectionClosed, "the bus client closed during a request") }
        if reply.payload.readableBytes == 0, reply.headers?.status == 503 {
            throw StorkError(.noResponders, "nobody listens on '\(subject)'")
        }
        return reply
    }

    /// Publishing hands a message to the router at once: nothing waits to be flushed.
    public func flush(timeout: Duration) async throws {
        try self.checkOpen()
    }

    public func close() async {
        let ended = self.state.withLock { state in
            state.closed = true
            defer { state.subscriptions.removeAll() }
            return Array(state.subscriptions.values)
        }
        for (subscription, continuation) in ended {
            self.router.unsubscribe(subscription)
            continuation.finish()
        }
    }

    private func checkOpen() throws {
        if self.state.withLock({ $0.closed }) { throw StorkError(.connectionClosed, "the bus client is closed") }
    }

    private struct Receiver: BusReceiver {
        let continuation: AsyncStream<BusMessage>.Continuation
        func receive(_ message: BusMessage, subscription: BusSubscription) {
            self.continuation.yield(message)
        }
    }
}
