import Foundation
import Logging
import NIOCore
import StorkBus
import NIOPosix
import StorkCore
import Synchronization

// MARK: - StorkError

// MARK: - NATSClient

/// A small NATS client over one NIO connection: publish, subscribe, request/reply, flush. Used by connectors that
/// consume JetStream streams (the `webhook` connector) and by tests.
///
/// Everything the connection does happens on its event loop (``NATSClientHandler``); this class is the thread-safe
/// front. Operations from one task are written in the order they are called. `publish` does not wait: ``flush(timeout:)``
/// (a `PING` answered by a `PONG`) returns once the server processed everything written before it.
///
/// When the connection closes, every subscription's stream finishes and every pending request or flush fails with
/// ``StorkError/Code/connectionClosed``; ``closed`` then returns. The client does not reconnect: make a new one.
///
/// ```swift
/// let client = try await NATSClient.connect(host: "127.0.0.1", port: 4222)
/// let (_, messages) = try client.subscribe("orders.>")
/// try client.publish("orders.1", payload: ByteBuffer(string: "hello"))
/// let reply = try await client.request("$JS.API.INFO", payload: ByteBuffer(), timeout: .seconds(2))
/// await client.close()
/// ```
public final class NATSClient: BusClient, Sendable {
    /// How to connect.
    public struct Options: Sendable {
        /// The name sent in `CONNECT` (shown in `/connz`).
        public var name = "stork"
        /// How long the TCP connect and the handshake may take together.
        public var connectTimeout: Duration = .seconds(5)
        /// `auth_token` for a server that requires a token.
        public var token: String?
        /// `user` and `pass` for a server that requires users.
        public var user: String?
        public var password: String?
        public var eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton

        public init() {}
    }

    /// The subscription id of request replies (`_INBOX.<token>.*`); user subscriptions are numbered from 1.
    static let requestSID = "0"

    let channel: any Channel
    private let handler: NIOLoopBound<NATSClientHandler>
    /// The unique prefix of this connection's reply subjects: `_INBOX.<token>`.
    public let inboxPrefix: String
    /// The server's `INFO` JSON.
    public let serverInfo: String
    private let nextSID = Atomic<UInt64>(1)

    private var eventLoop: any EventLoop { self.channel.eventLoop }

    private init(channel: any Channel, handler: NIOLoopBound<NATSClientHandler>, inboxPrefix: String, info: String) {
        self.channel = channel
        self.handler = handler
        self.inboxPrefix = inboxPrefix
        self.serverInfo = info
    }

    // MARK: Connecting

    /// Connects to `host:port` and completes the handshake: `INFO`, `CONNECT` (headers and no-responders on, no
    /// `+OK`s), `PING`, `PONG`. Throws ``StorkError`` (`connect-failed`, with the server's `-ERR` when it sent one).
    public static func connect(host: String, port: Int, options: Options = Options()) async throws -> NATSClient {
        let eventLoop = options.eventLoopGroup.next()
        let timeout = TimeAmount.nanoseconds(options.connectTimeout.nanosecondsClamped)
        let info = eventLoop.makePromise(of: String.self)
        let token = makeNATSInboxToken(length: 22)
        let channel: any Channel
        let handler: NIOLoopBound<NATSClientHandler>
        do {
            (channel, handler) = try await connectNATSChannel(
                host: host,
                port: port,
                on: eventLoop,
                timeout: timeout,
                makeHandler: { NATSClientHandler(inbox: "_INBOX.\(token)", info: info) }
            )
        } catch {
            info.fail(error)
            throw StorkError(.connectFailed, "cannot connect to NATS at \(host):\(port)", underlying: error)
        }
        do {
            let infoJSON = try await info.futureResult.within(timeout, on: eventLoop, what: "INFO").get()
            let client = NATSClient(channel: channel, handler: handler, inboxPrefix: "_INBOX.\(token)", info: infoJSON)
            try await client.flush(timeout: options.connectTimeout, prefix: Self.connectLine(options))
            return client
        } catch {
            try? await channel.close()
            throw StorkError(.connectFailed, "NATS handshake with \(host):\(port) failed", underlying: error)
        }
    }

    /// The `CONNECT` line: no `+OK`s (not verbose), headers on (JetStream statuses come as headers), "no
    /// responders" on, and the credentials of `options`.
    package static func connectLine(_ options: Options) -> ByteBuffer {
        var fields: [String: Any] = [
            "verbose": false, "pedantic": false, "headers": true, "no_responders": true, "protocol": 1,
            "name": options.name, "lang": "swift", "version": "1",
        ]
        if let token = options.token { fields["auth_token"] = token }
        if let user = options.user { fields["user"] = user }
        if let password = options.password { fields["pass"] = password }
        let json = (try? JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys])) ?? Data("{}".utf8)
        var buffer = ByteBuffer(string: "CONNECT ")
        buffer.writeBytes(json)
        buffer.writeStaticString("\r\n")
        return buffer
    }

    // MARK: Publishing

    /// Publishes a message (`PUB`, or `HPUB` with headers) without waiting; a closed connection drops it (a later
    /// ``flush(timeout:)`` fails).
    public func publish(
        _ subject: String,
        replyTo: String? = nil,
        headers: MessageHeaders? = nil,
        payload: ByteBuffer = ByteBuffer()
    ) throws {
        try Self.check(subject)
        if let replyTo { try Self.check(replyTo) }
        var frame = ByteBuffer()
        frame.reserveCapacity(subject.utf8.count + payload.readableBytes + 64)
        frame.writeNATSPublish(subject: subject, replyTo: replyTo, headers: headers?.encoded, payload: payload)
        self.channel.writeAndFlush(frame, promise: nil)
    }

    /// A fresh subject for replies, unique to this connection (not one that ``request(_:headers:payload:timeout:)``
    /// uses).
    public func newInbox() -> String {
        "\(self.inboxPrefix).s\(self.nextSID.wrappingAdd(1, ordering: .relaxed).oldValue)"
    }

    // MARK: Subscribing

    /// Subscribes to `subject` (wildcards allowed), in queue group `queue` if given. Messages arrive on the stream
    /// (buffered without bound: the caller consumes what it asked for). The stream finishes on ``unsubscribe(_:)``,
    /// on ``close()`` and when the connection closes; ending the iteration unsubscribes.
    public func subscribe(
        _ subject: String,
        queue: String? = nil
    ) throws -> (sid: String, messages: AsyncStream<BusMessage>) {
        try Self.check(subject)
        if let queue { try Self.check(queue) }
        let sid = String(self.nextSID.wrappingAdd(1, ordering: .relaxed).oldValue)
        let (stream, continuation) = AsyncStream.makeStream(of: BusMessage.self)
        continuation.onTermination = { [weak self] termination in
            if case .cancelled = termination { self?.unsubscribe(sid) }
        }
        let handler = self.handler
        self.eventLoop.execute {
            handler.value.subscribe(sid: sid, subject: subject, queue: queue, continuation: continuation)
        }
        return (sid, stream)
    }

    /// Ends subscription `sid`: `UNSUB`, and its stream finishes. Nothing happens for an unknown sid.
    public func unsubscribe(_ sid: String) {
        let handler = self.handler
        self.eventLoop.execute { handler.value.unsubscribe(sid: sid) }
    }

    // MARK: Request and flush

    /// Publishes `payload` to `subject` with a reply subject of this connection and returns the first reply. Throws
    /// `no-responders` when nobody subscribes to `subject`, `timeout` when no reply comes in time.
    public func request(
        _ subject: String,
        headers: MessageHeaders? = nil,
        payload: ByteBuffer,
        timeout: Duration
    ) async throws -> BusMessage {
        try Self.check(subject)
        let handler = self.handler
        let eventLoop = self.eventLoop
        let amount = TimeAmount.nanoseconds(timeout.nanosecondsClamped)
        return try await eventLoop.flatSubmit {
            handler.value.request(subject, headers: headers?.encoded, payload: payload, timeout: amount)
        }.get()
    }

    /// `PING`, and waits for the `PONG`: the server has processed everything this connection sent before (acks,
    /// publishes, subscriptions), and everything it sent to this connection before the `PONG` has been read.
    public func flush(timeout: Duration) async throws {
        try await self.flush(timeout: timeout, prefix: nil)
    }

    private func flush(timeout: Duration, prefix: ByteBuffer?) async throws {
        let handler = self.handler
        let eventLoop = self.eventLoop
        let amount = TimeAmount.nanoseconds(timeout.nanosecondsClamped)
        try await eventLoop.flatSubmit {
            handler.value.ping(prefix: prefix).within(amount, on: eventLoop, what: "PONG")
        }.get()
    }

    // MARK: Closing

    /// Whether the connection is still open.
    public var isOpen: Bool { self.channel.isActive }

    /// Returns when the connection has closed (either side); the reason, if it was not ``close()``.
    public func closed() async -> StorkError? {
        try? await self.channel.closeFuture.get()
        let handler = self.handler
        return try? await self.eventLoop.submit { handler.value.closeReason }.get()
    }

    /// Closes the connection: subscriptions finish, pending requests and flushes fail. Returns when it is closed.
    public func close() async {
        let handler = self.handler
        try? await self.eventLoop.submit { handler.value.closeRequested = true }.get()
        try? await self.channel.close()
    }

    // MARK: Helpers

    private static func check(_ subject: String) throws {
        guard !subject.isEmpty,
            !subject.utf8.contains(where: { $0 == 0x20 || $0 == 0x09 || $0 == 0x0D || $0 == 0x0A })
        else {
            throw StorkError(.invalidSubject, "'\(subject)' is not a subject that can be sent")
        }
    }
}

// MARK: - NATSClientHandler

/// The bytes of one client connection, on its event loop: parses what the server sends with ``NATSServerParser``,
/// answers `PING`, completes `PONG` and reply waiters, and hands messages to subscriptions' streams.
final class NATSClientHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let info: EventLoopPromise<String>
    private var gotInfo = false
    private var reader = NATSServerReader()
    private var replyInbox: NATSReplyInbox
    private var context: ChannelHandlerContext?
    private var pongWaiters = CircularBuffer<EventLoopPromise<Void>>()
    private var replyWaiters: [String: (promise: EventLoopPromise<BusMessage>, timer: Scheduled<Void>)] = [:]
    private var subscriptions: [String: AsyncStream<BusMessage>.Continuation] = [:]
    private var lastServerError: String?
    private(set) var closeReason: StorkError?
    private var isClosed = false
    var closeRequested = false

    init(inbox: String, info: EventLoopPromise<String>) {
        self.replyInbox = NATSReplyInbox(prefix: inbox, sid: NATSClient.requestSID)
        self.info = info
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    // MARK: Reading

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = self.unwrapInboundIn(data)
        self.reader.append(&incoming)
        while !self.isClosed {
            let operation: NATSServerOperation?
            do {
                operation = try self.reader.next()
            } catch {
                self.fail(StorkError(.protocolError, "unparsable server output", underlying: error))
                return
            }
            guard let operation else { return }
            self.handle(operation, context: context)
        }
    }

    private func handle(_ operation: NATSServerOperation, context: ChannelHandlerContext) {
        switch operation {
        case .info(let json):
            if !self.gotInfo {
                self.gotInfo = true
                self.info.succeed(String(buffer: json))
            }
        case .ping:
            context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(string: "PONG\r\n")), promise: nil)
        case .pong:
            self.pongWaiters.popFirst()?.succeed()
        case .ok:
            break
        case .error(let text):
            // Fatal errors are followed by the server closing the connection; the reason then names this text.
            self.lastServerError = text
        case .message(let message, let sid):
            if sid == NATSClient.requestSID {
                guard let waiter = self.replyWaiters.removeValue(forKey: message.subject) else { return }
                waiter.timer.cancel()
                if message.payload.readableBytes == 0, message.headers?.status == 503 {
                    waiter.promise.fail(StorkError(.noResponders, "no responders"))
                } else {
                    waiter.promise.succeed(message)
                }
            } else {
                self.subscriptions[sid]?.yield(message)
            }
        }
    }

    // MARK: Closing

    func channelInactive(context: ChannelHandlerContext) {
        let reason =
            self.closeRequested
            ? StorkError(.connectionClosed, "the connection was closed")
            : StorkError(
                .connectionClosed,
                "the NATS connection closed" + (self.lastServerError.map { " (server: -ERR '\($0)')" } ?? "")
            )
        self.fail(reason)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.fail(StorkError(.connectionClosed, "NATS connection error", underlying: error))
    }

    /// Fails everything that waits and finishes every subscription, once; closes the channel.
    private func fail(_ error: StorkError) {
        guard !self.isClosed else { return }
        self.isClosed = true
        if !self.closeRequested { self.closeReason = error }
        self.reader = NATSServerReader()
        self.info.fail(error)
        while let waiter = self.pongWaiters.popFirst() { waiter.fail(error) }
        let replies = self.replyWaiters
        self.replyWaiters = [:]
        for waiter in replies.values {
            waiter.timer.cancel()
            waiter.promise.fail(error)
        }
        let subscriptions = self.subscriptions
        self.subscriptions = [:]
        for continuation in subscriptions.values { continuation.finish() }
        self.context?.close(promise: nil)
    }

    // MARK: Writing (called on the event loop by NATSClient)

    func subscribe(sid: String, subject: String, queue: String?, continuation: AsyncStream<BusMessage>.Continuation) {
        guard !self.isClosed, let context = self.context else {
            continuation.finish()
            return
        }
        self.subscriptions[sid] = continuation
        let line = queue.map { "SUB \(subject) \($0) \(sid)\r\n" } ?? "SUB \(subject) \(sid)\r\n"
        context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(string: line)), promise: nil)
    }

    func unsubscribe(sid: String) {
        guard let continuation = self.subscriptions.removeValue(forKey: sid) else { return }
        continuation.finish()
        guard !self.isClosed, let context = self.context else { return }
        context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(string: "UNSUB \(sid)\r\n")), promise: nil)
    }

    /// Writes `prefix` (if any) and `PING`; the future completes at the matching `PONG`.
    func ping(prefix: ByteBuffer?) -> EventLoopFuture<Void> {
        guard !self.isClosed, let context = self.context else { return self.closedFuture() }
        var bytes = prefix ?? ByteBuffer()
        bytes.writeStaticString("PING\r\n")
        let promise = context.eventLoop.makePromise(of: Void.self)
        self.pongWaiters.append(promise)
        context.writeAndFlush(self.wrapOutboundOut(bytes), promise: nil)
        return promise.futureResult
    }

    func request(
        _ subject: String,
        headers: ByteBuffer?,
        payload: ByteBuffer,
        timeout: TimeAmount
    ) -> EventLoopFuture<BusMessage> {
        guard !self.isClosed, let context = self.context else { return self.closedFuture() }
        var bytes = ByteBuffer()
        let replyTo = self.replyInbox.nextReplySubject(writingSubscriptionInto: &bytes)
        let promise = context.eventLoop.makePromise(of: BusMessage.self)
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let timer = context.eventLoop.scheduleTask(in: timeout) {
            guard let waiter = bound.value.replyWaiters.removeValue(forKey: replyTo) else { return }
            waiter.promise.fail(
                StorkError(.timeout, "no reply to \(subject) within \(timeout.nanoseconds / 1_000_000) ms")
            )
        }
        self.replyWaiters[replyTo] = (promise, timer)
        bytes.writeNATSPublish(subject: subject, replyTo: replyTo, headers: headers, payload: payload)
        context.writeAndFlush(self.wrapOutboundOut(bytes), promise: nil)
        return promise.futureResult
    }

    private func closedFuture<Value>() -> EventLoopFuture<Value> {
        let error = self.closeReason ?? StorkError(.connectionClosed, "the NATS connection is closed")
        return self.info.futureResult.eventLoop.makeFailedFuture(error)
    }
}

// MARK: - Waiting with a deadline

extension EventLoopFuture where Value: Sendable {
    /// This future, or a ``StorkError`` with code `timeout` if it has not completed after `timeout`.
    fileprivate func within(_ timeout: TimeAmount, on eventLoop: any EventLoop, what: String) -> EventLoopFuture<Value> {
        self.within(timeout, on: eventLoop) {
            StorkError(.timeout, "no \(what) within \(timeout.nanoseconds / 1_000_000) ms")
        }
    }
}
