import NIOCore
import NIOPosix
import StorkBus
import StorkNATS

// MARK: - NATSBenchError

/// Why a benchmark scenario failed: a lost message, an error from the server, a timeout, a child process that would
/// not start. Failures are reported in the table and make `stork bench nats` exit non-zero.
struct NATSBenchError: Error, Sendable, CustomStringConvertible {
    struct Code: Hashable, Sendable, CustomStringConvertible {
        var rawValue: String
        var description: String { self.rawValue }

        /// The server answered with `-ERR`, an error document or an unexpected status.
        static let serverError = Code(rawValue: "server-error")
        /// Fewer messages (or replies, or acks) arrived than were sent.
        static let lostMessages = Code(rawValue: "lost-messages")
        /// Something arrived that the scenario did not send or expect.
        static let unexpected = Code(rawValue: "unexpected")
        /// The connection closed before the scenario was done.
        static let connectionClosed = Code(rawValue: "connection-closed")
        /// A scenario or a wait did not finish in time.
        static let timeout = Code(rawValue: "timeout")
        /// A server process could not be started or did not become ready.
        static let serverStart = Code(rawValue: "server-start")
    }

    var code: Code
    var message: String
    var underlying: String?

    init(_ code: Code, _ message: String, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying.map { "\($0)" }
    }

    var description: String {
        if let underlying { return "\(self.message) (\(underlying))" }
        return self.message
    }
}

// MARK: - NATSBenchSink

/// What a scenario does with what the server sends to one of its connections, besides the connection's own
/// bookkeeping (PING/PONG, INFO, request replies). Called on the connection's event loop, and only there: a sink
/// is made on the loop by ``NATSBenchClient/attach(_:)`` and never leaves it; results leave through promises.
protocol NATSBenchSink: AnyObject {
    /// Called once, right after the sink is attached (a scenario's first writes go here).
    func start()
    /// A `MSG`/`HMSG` for one of the scenario's subscriptions.
    func received(_ message: BusMessage, sid: String)
    /// The end of one read burst: the moment to write what the messages just read call for, in one buffer.
    func readComplete()
    /// The connection failed or closed; the sink fails what it still owes.
    func failed(_ error: NATSBenchError)
}

extension NATSBenchSink {
    func start() {}
    func readComplete() {}
}

// MARK: - NATSBenchClient

/// A minimal NATS client for load generation, over SwiftNIO: connects (`INFO`, then `CONNECT` and `PING`, waits for
/// `PONG`), writes protocol bytes it is given in large buffers, publishes a fixed message many times as fast as the
/// socket takes it, makes JetStream API requests, and hands everything else the server sends to a
/// ``NATSBenchSink``.
///
/// Everything the connection does happens on its event loop (``NATSBenchClientHandler``); this class is the thread-safe
/// front that scenarios call from async code.
final class NATSBenchClient: Sendable {
    let channel: any Channel
    /// What the client calls itself in errors ("stork: subscriber").
    let name: String
    /// A unique token for this connection's reply subjects (`_INBOX.<token>.…`).
    let token: String
    private let handler: NIOLoopBound<NATSBenchClientHandler>

    var eventLoop: any EventLoop { self.channel.eventLoop }

    private init(channel: any Channel, name: String, token: String, handler: NIOLoopBound<NATSBenchClientHandler>) {
        self.channel = channel
        self.name = name
        self.token = token
        self.handler = handler
    }

    /// `CONNECT` as ``NATSClient`` sends it (no `+OK`s, headers and "no responders" on), named `stork-bench`, then
    /// `PING`.
    static let hello: ByteBuffer = {
        var options = NATSClient.Options()
        options.name = "stork-bench"
        var bytes = NATSClient.connectLine(options)
        bytes.writeStaticString("PING\r\n")
        return bytes
    }()

    /// Connects to `host:port` on `eventLoop` and completes the handshake within `timeout`.
    static func connect(
        host: String,
        port: Int,
        name: String,
        on eventLoop: any EventLoop,
        timeout: TimeAmount = .seconds(10)
    ) async throws -> NATSBenchClient {
        let info = eventLoop.makePromise(of: ByteBuffer.self)
        let token = makeNATSInboxToken(length: 12)
        let channel: any Channel
        let handler: NIOLoopBound<NATSBenchClientHandler>
        do {
            (channel, handler) = try await connectNATSChannel(
                host: host,
                port: port,
                on: eventLoop,
                timeout: timeout,
                configure: { bootstrap in
                    // Large writes and reads: the load generator moves many messages per syscall.
                    bootstrap
                        .channelOption(.writeBufferWaterMark, value: .init(low: 256 * 1024, high: 1024 * 1024))
                        .channelOption(
                            .recvAllocator,
                            value: AdaptiveRecvByteBufferAllocator(
                                minimum: 4096,
                                initial: 64 * 1024,
                                maximum: 1024 * 1024
                            )
                        )
                },
                makeHandler: { NATSBenchClientHandler(name: name, token: token, info: info) }
            )
        } catch {
            info.fail(error)
            throw NATSBenchError(.connectionClosed, "\(name): cannot connect to \(host):\(port)", underlying: error)
        }
        let client = NATSBenchClient(channel: channel, name: name, token: token, handler: handler)
        do {
            _ = try await info.futureResult.within(timeout, on: eventLoop, what: "\(name): INFO").get()
            try await client.writeAwaitingPong(Self.hello, timeout: timeout)
        } catch {
            await client.close()
            throw error
        }
        return client
    }

    // MARK: Writing

    /// Writes `bytes` and flushes, without waiting.
    func write(_ bytes: ByteBuffer) {
        self.channel.writeAndFlush(bytes, promise: nil)
    }

    /// `PING`, and waits for the `PONG`: the server has processed everything this connection sent before, and
    /// everything it had queued for this connection before the `PONG` has arrived.
    func flush(timeout: TimeAmount = .seconds(60)) async throws {
        var ping = self.channel.allocator.buffer(capacity: 8)
        ping.writeStaticString("PING\r\n")
        try await self.writeAwaitingPong(ping, timeout: timeout)
    }

    /// Writes `bytes`, which end with a `PING`, and waits for its `PONG`.
    private func writeAwaitingPong(_ bytes: ByteBuffer, timeout: TimeAmount) async throws {
        let handler = self.handler
        let name = self.name
        let eventLoop = self.eventLoop
        try await eventLoop.flatSubmit {
            handler.value.writeAwaitingPong(bytes).within(timeout, on: eventLoop, what: "\(name): PONG")
        }.get()
    }

    /// `SUB <subject> <sid>`, without waiting (a later ``flush(timeout:)`` confirms it).
    func subscribe(_ subject: String, sid: String) {
        var line = self.channel.allocator.buffer(capacity: subject.utf8.count + sid.utf8.count + 8)
        line.writeStaticString("SUB ")
        line.writeString(subject)
        line.writeStaticString(" ")
        line.writeString(sid)
        line.writeStaticString("\r\n")
        self.write(line)
    }

    /// Writes `message` (one encoded `PUB`) `count` times, in buffers of about 64 KiB, as fast as the socket takes
    /// them (writing stops while the channel is not writable and resumes when it is), then `PING`; returns at the
    /// `PONG`, when the server has processed every message. `progress` counts the messages written so far.
    func publish(
        _ message: ByteBuffer,
        count: Int,
        timeout: TimeAmount,
        progress: NATSBenchProgress? = nil
    ) async throws {
        let perBatch = max(1, 64 * 1024 / max(1, message.readableBytes))
        var bytes = self.channel.allocator.buffer(capacity: perBatch * message.readableBytes)
        for _ in 0..<perBatch { bytes.writeImmutableBuffer(message) }
        let batch = bytes
        let handler = self.handler
        let name = self.name
        let eventLoop = self.eventLoop
        try await eventLoop.flatSubmit {
            handler.value.startPump(
                .init(remaining: count, perBatch: perBatch, batch: batch, single: message, progress: progress)
            )
            .within(timeout, on: eventLoop, what: "\(name): publishing \(count) messages")
        }.get()
    }

    // MARK: Requests

    /// Publishes `payload` to `subject` with a fresh reply subject and returns the first reply.
    func request(_ subject: String, payload: String, timeout: TimeAmount = .seconds(10)) async throws -> BusMessage {
        let handler = self.handler
        let body = ByteBuffer(string: payload)
        let name = self.name
        let eventLoop = self.eventLoop
        return try await eventLoop.flatSubmit {
            handler.value.request(subject, payload: body)
                .within(timeout, on: eventLoop, what: "\(name): reply to \(subject)")
        }.get()
    }

    // MARK: Sinks

    /// Makes a sink on the connection's event loop, hands it what the scenario's subscriptions receive from now on,
    /// and starts it.
    func attach(_ make: @escaping @Sendable (any Channel) -> any NATSBenchSink) async throws {
        let handler = self.handler
        let channel = self.channel
        try await self.eventLoop.submit {
            let sink = make(channel)
            try handler.value.attach(sink)
            sink.start()
        }.get()
    }

    /// Runs `body` on the connection's event loop with its sink (for reading a sink's counters).
    func withSink<Result: Sendable>(_ body: @escaping @Sendable ((any NATSBenchSink)?) -> Result) async throws -> Result
    {
        let handler = self.handler
        return try await self.eventLoop.submit { body(handler.value.sink) }.get()
    }

    // MARK: Closing

    /// Closes the connection (what it still waits for fails) and waits until it is closed.
    func close() async {
        try? await self.channel.close()
    }
}

// MARK: - NATSBenchClientHandler

/// The bytes of one benchmark connection, on its event loop: parses what the server sends with
/// ``NATSServerParser``, answers `PING`, completes `PONG` and request waiters in order, drives the publishing pump,
/// and passes the scenario's messages to the sink.
final class NATSBenchClientHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// A fixed message written `remaining` times: whole batches of `perBatch` copies, then a tail.
    struct Pump {
        var remaining: Int
        var perBatch: Int
        var batch: ByteBuffer
        var single: ByteBuffer
        var progress: NATSBenchProgress?
        var done: EventLoopPromise<Void>?
        var written = 0
    }

    /// The subscription id of request replies (`_INBOX.<token>.r.*`); never handed to the sink.
    static let requestSID = "r"

    private let name: String
    private let info: EventLoopPromise<ByteBuffer>
    private var reader = NATSServerReader()
    private var replyInbox: NATSReplyInbox
    private var context: ChannelHandlerContext?
    private var pongWaiters = CircularBuffer<EventLoopPromise<Void>>()
    private var replyWaiters: [String: EventLoopPromise<BusMessage>] = [:]
    private var pump: Pump?
    private var failure: NATSBenchError?
    private(set) var sink: (any NATSBenchSink)?

    init(name: String, token: String, info: EventLoopPromise<ByteBuffer>) {
        self.name = name
        self.replyInbox = NATSReplyInbox(prefix: "_INBOX.\(token).r", sid: Self.requestSID)
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
        while self.failure == nil {
            let operation: NATSServerOperation?
            do {
                operation = try self.reader.next()
            } catch {
                self.fail(NATSBenchError(.unexpected, "\(self.name): unparsable server output", underlying: error))
                return
            }
            guard let operation else { return }
            self.handle(operation, context: context)
        }
    }

    private func handle(_ operation: NATSServerOperation, context: ChannelHandlerContext) {
        switch operation {
        case .info(let json):
            self.info.succeed(json)
        case .ping:
            var pong = context.channel.allocator.buffer(capacity: 8)
            pong.writeStaticString("PONG\r\n")
            context.writeAndFlush(self.wrapOutboundOut(pong), promise: nil)
        case .pong:
            guard let waiter = self.pongWaiters.popFirst() else {
                self.fail(NATSBenchError(.unexpected, "\(self.name): PONG without a PING"))
                return
            }
            waiter.succeed()
        case .ok:
            break
        case .error(let text):
            self.fail(NATSBenchError(.serverError, "\(self.name): the server sent -ERR '\(text)'"))
        case .message(let message, let sid):
            if sid == Self.requestSID {
                self.replyWaiters.removeValue(forKey: message.subject)?.succeed(message)
            } else if let sink = self.sink {
                sink.received(message, sid: sid)
            } else {
                self.fail(
                    NATSBenchError(.unexpected, "\(self.name): a message on '\(message.subject)' nobody expected")
                )
            }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if self.failure == nil { self.sink?.readComplete() }
        context.fireChannelReadComplete()
    }

    // MARK: Failing

    func channelInactive(context: ChannelHandlerContext) {
        self.fail(NATSBenchError(.connectionClosed, "\(self.name): the connection closed"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.fail(NATSBenchError(.connectionClosed, "\(self.name): connection error", underlying: error))
        context.close(promise: nil)
    }

    /// Fails every waiter and the sink with the first failure; later ones are dropped.
    private func fail(_ error: NATSBenchError) {
        guard self.failure == nil else { return }
        self.failure = error
        self.reader = NATSServerReader()
        self.info.fail(error)
        while let waiter = self.pongWaiters.popFirst() { waiter.fail(error) }
        let replies = self.replyWaiters
        self.replyWaiters = [:]
        for waiter in replies.values { waiter.fail(error) }
        self.pump?.done?.fail(error)
        self.pump = nil
        self.sink?.failed(error)
        self.context?.close(promise: nil)
    }

    // MARK: Writing

    func writeAwaitingPong(_ bytes: ByteBuffer) -> EventLoopFuture<Void> {
        guard let context = self.context, self.failure == nil else { return self.failedFuture() }
        let promise = context.eventLoop.makePromise(of: Void.self)
        self.pongWaiters.append(promise)
        context.writeAndFlush(self.wrapOutboundOut(bytes), promise: nil)
        return promise.futureResult
    }

    func request(_ subject: String, payload: ByteBuffer) -> EventLoopFuture<BusMessage> {
        guard let context = self.context, self.failure == nil else { return self.failedFuture() }
        var bytes = context.channel.allocator.buffer(capacity: 128 + payload.readableBytes)
        let inbox = self.replyInbox.nextReplySubject(writingSubscriptionInto: &bytes)
        let promise = context.eventLoop.makePromise(of: BusMessage.self)
        self.replyWaiters[inbox] = promise
        bytes.writeNATSPublish(subject: subject, replyTo: inbox, headers: nil, payload: payload)
        context.writeAndFlush(self.wrapOutboundOut(bytes), promise: nil)
        // A reply that never comes stays registered until the connection closes, which fails it.
        return promise.futureResult
    }

    func attach(_ sink: any NATSBenchSink) throws {
        if let failure { throw failure }
        self.sink = sink
    }

    private func failedFuture<Value>() -> EventLoopFuture<Value> {
        let error = self.failure ?? NATSBenchError(.connectionClosed, "\(self.name): the connection closed")
        return (self.context?.eventLoop ?? self.info.futureResult.eventLoop).makeFailedFuture(error)
    }

    // MARK: Publishing pump

    func startPump(_ pump: Pump) -> EventLoopFuture<Void> {
        guard let context = self.context, self.failure == nil else { return self.failedFuture() }
        precondition(self.pump == nil, "\(self.name): a publishing pump is already running")
        var pump = pump
        let promise = context.eventLoop.makePromise(of: Void.self)
        pump.done = promise
        self.pump = pump
        self.drivePump(context: context)
        return promise.futureResult
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { self.drivePump(context: context) }
        context.fireChannelWritabilityChanged()
    }

    /// Writes batches while the channel is writable. After 32 batches it lets the event loop run (reads, other
    /// channels) and continues from a task; when the channel stops being writable, the writability change continues.
    private func drivePump(context: ChannelHandlerContext) {
        guard var pump = self.pump else { return }
        var written = 0
        while pump.remaining > 0, context.channel.isWritable, written < 32 {
            if pump.remaining >= pump.perBatch {
                context.write(self.wrapOutboundOut(pump.batch), promise: nil)
                pump.remaining -= pump.perBatch
                pump.written += pump.perBatch
            } else {
                var tail = context.channel.allocator.buffer(capacity: pump.single.readableBytes * pump.remaining)
                for _ in 0..<pump.remaining { tail.writeImmutableBuffer(pump.single) }
                context.write(self.wrapOutboundOut(tail), promise: nil)
                pump.written += pump.remaining
                pump.remaining = 0
            }
            context.flush()
            written += 1
        }
        pump.progress?.update(pump.written)
        guard pump.remaining == 0 else {
            self.pump = pump
            if context.channel.isWritable {
                let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
                context.eventLoop.execute { bound.value.0.drivePump(context: bound.value.1) }
            }
            return
        }
        self.pump = nil
        guard let done = pump.done else { return }
        var ping = context.channel.allocator.buffer(capacity: 8)
        ping.writeStaticString("PING\r\n")
        self.pongWaiters.append(done)
        context.writeAndFlush(self.wrapOutboundOut(ping), promise: nil)
    }
}

// MARK: - Waiting with a deadline

extension EventLoopFuture where Value: Sendable {
    /// This future, or a ``NATSBenchError`` with code `timeout` if it has not completed after `timeout`.
    func within(_ timeout: TimeAmount, on eventLoop: any EventLoop, what: String) -> EventLoopFuture<Value> {
        self.within(timeout, on: eventLoop) {
            NATSBenchError(.timeout, "\(what): nothing after \(timeout.nanoseconds / 1_000_000) ms")
        }
    }
}
