import NIOCore
import NIOPosix
import StorkCore
import StorkNATS

// MARK: - DemoNATSClient
//
// A small NATS client for the demo: connects to one node's NATS endpoint, subscribes, publishes, and hands every
// message to an async stream. The bytes are handled by `DemoNATSHandler` on the connection's event loop (parsing
// with StorkNATS's `NATSServerParser`, answering the server's PINGs); this class is the front async code calls.

public final class DemoNATSClient: Sendable {
    /// A message for one of this connection's subscriptions.
    public struct Message: Sendable {
        public var subject: String
        public var payload: [UInt8]
    }

    let channel: any Channel
    let handler: NIOLoopBound<DemoNATSHandler>
    /// Every message, until the connection closes (then the stream finishes).
    public let messages: AsyncStream<Message>
    public let name: String

    private init(
        channel: any Channel,
        handler: NIOLoopBound<DemoNATSHandler>,
        messages: AsyncStream<Message>,
        name: String
    ) {
        self.channel = channel
        self.handler = handler
        self.messages = messages
        self.name = name
    }

    /// Connects to `host:port` and completes the handshake (INFO, CONNECT, PING/PONG) within `timeout`.
    public static func connect(
        host: String,
        port: Int,
        name: String,
        timeout: Duration = .seconds(5),
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> DemoNATSClient {
        let eventLoop = group.next()
        let (messages, continuation) = AsyncStream.makeStream(of: Message.self)
        let info = eventLoop.makePromise(of: Void.self)
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: eventLoop)
                .connectTimeout(.nanoseconds(timeout.nanosecondsClamped))
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            DemoNATSHandler(info: info, messages: continuation)
                        )
                    }
                }
                .connect(host: host, port: port)
                .get()
        } catch {
            info.fail(error)
            continuation.finish()
            throw StorkError(.unavailable, "\(name): cannot connect to NATS at \(host):\(port)", underlying: error)
        }
        let handler = try await eventLoop.submit {
            NIOLoopBound(try channel.pipeline.syncOperations.handler(type: DemoNATSHandler.self), eventLoop: eventLoop)
        }.get()
        let client = DemoNATSClient(channel: channel, handler: handler, messages: messages, name: name)
        let infoTimer = eventLoop.scheduleTask(in: .nanoseconds(timeout.nanosecondsClamped)) {
            info.fail(StorkError(.timeout, "no INFO within \(timeout)"))
        }
        do {
            try await info.futureResult.get()
            infoTimer.cancel()
            let connect =
                #"CONNECT {"verbose":false,"pedantic":false,"headers":false,"protocol":1,"name":"\#(name)","lang":"swift","version":"1"}"#
                + "\r\n"
            try await client.writeAndPing(ByteBuffer(string: connect), timeout: timeout)
        } catch {
            client.close()
            throw StorkError(.unavailable, "\(name): NATS handshake with \(host):\(port) failed", underlying: error)
        }
        return client
    }

    /// `SUB subject sid`, and waits until the server confirmed it (PONG): from then on, messages published to
    /// `subject` on this server reach this client.
    public func subscribe(_ subject: String, sid: String = "1", timeout: Duration = .seconds(5)) async throws {
        try await self.writeAndPing(ByteBuffer(string: "SUB \(subject) \(sid)\r\n"), timeout: timeout)
    }

    /// `PUB subject n`, without waiting.
    public func publish(_ subject: String, payload: some Sequence<UInt8>) {
        var bytes = self.channel.allocator.buffer(capacity: 64)
        bytes.writeNATSPublish(subject: subject, replyTo: nil, headers: nil, payload: ByteBuffer(bytes: Array(payload)))
        self.channel.writeAndFlush(bytes, promise: nil)
    }

    /// PING, and waits for the PONG: the server processed everything sent before.
    public func flush(timeout: Duration = .seconds(5)) async throws {
        try await self.writeAndPing(ByteBuffer(), timeout: timeout)
    }

    public var isActive: Bool { self.channel.isActive }

    public func close() {
        self.channel.close(promise: nil)
    }

    private func writeAndPing(_ bytes: ByteBuffer, timeout: Duration) async throws {
        let handler = self.handler
        let eventLoop = self.channel.eventLoop
        try await eventLoop.flatSubmit {
            let pong = handler.value.writeAndPing(bytes)
            let deadline = eventLoop.makePromise(of: Void.self)
            let timer = eventLoop.scheduleTask(in: .nanoseconds(timeout.nanosecondsClamped)) {
                deadline.fail(StorkError(.timeout, "no PONG within \(timeout)"))
            }
            pong.whenComplete { result in
                timer.cancel()
                deadline.completeWith(result)
            }
            return deadline.futureResult
        }.get()
    }
}

// MARK: - DemoNATSHandler

/// The bytes of one demo NATS connection, on its event loop.
final class DemoNATSHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var parser = NATSServerParser()
    private var buffered: ByteBuffer?
    private let info: EventLoopPromise<Void>
    private var infoSeen = false
    private let messages: AsyncStream<DemoNATSClient.Message>.Continuation
    private var pongWaiters = CircularBuffer<EventLoopPromise<Void>>()
    private var context: ChannelHandlerContext?
    private var closed = false

    init(info: EventLoopPromise<Void>, messages: AsyncStream<DemoNATSClient.Message>.Continuation) {
        self.info = info
        self.messages = messages
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = self.unwrapInboundIn(data)
        var buffer: ByteBuffer
        if var previous = self.buffered {
            previous.writeBuffer(&incoming)
            buffer = previous
        } else {
            buffer = incoming
        }
        self.buffered = nil
        while !self.closed {
            let operation: NATSServerOperation?
            do {
                operation = try self.parser.next(&buffer)
            } catch {
                self.fail(context: context, StorkError(.invalidInput, "unparsable NATS server output: \(error)"))
                return
            }
            guard let operation else { break }
            switch operation {
            case .info:
                if !self.infoSeen {
                    self.infoSeen = true
                    self.info.succeed()
                }
            case .ping:
                context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(string: "PONG\r\n")), promise: nil)
            case .pong:
                self.pongWaiters.popFirst()?.succeed()
            case .ok:
                break
            case .error(let text):
                self.fail(context: context, StorkError(.unavailable, "the NATS server sent -ERR '\(text)'"))
                return
            case .message(let message, _):
                self.messages.yield(
                    DemoNATSClient.Message(subject: message.subject, payload: Array(message.payload.readableBytesView))
                )
            }
        }
        if buffer.readableBytes > 0 {
            buffer.discardReadBytes()
            self.buffered = buffer
        }
    }

    func writeAndPing(_ bytes: ByteBuffer) -> EventLoopFuture<Void> {
        guard let context = self.context, !self.closed else {
            return self.info.futureResult.eventLoop.makeFailedFuture(
                StorkError(.unavailable, "the NATS connection closed")
            )
        }
        let promise = context.eventLoop.makePromise(of: Void.self)
        self.pongWaiters.append(promise)
        var out = bytes
        out.writeString("PING\r\n")
        context.writeAndFlush(self.wrapOutboundOut(out), promise: nil)
        return promise.futureResult
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.fail(context: context, StorkError(.unavailable, "the NATS connection closed"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.fail(context: context, StorkError(.unavailable, "NATS connection error", underlying: error))
    }

    private func fail(context: ChannelHandlerContext, _ error: StorkError) {
        guard !self.closed else { return }
        self.closed = true
        self.buffered = nil
        if !self.infoSeen { self.info.fail(error) }
        while let waiter = self.pongWaiters.popFirst() { waiter.fail(error) }
        self.messages.finish()
        context.close(promise: nil)
    }
}
