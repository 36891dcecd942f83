import Logging
import NIOCore
import StorkBus
import StorkStreaming

// MARK: - NATSConnectionHandler

/// The bytes of one client connection: parses operations, answers them, routes publishes. Lives on the connection's
/// event loop; what other threads need is in ``NATSClientConnection``.
final class NATSConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let server: NATSServer
    private var accumulated: ByteBuffer?
    private var client: NATSClientConnection?
    private var options = NATSConnectOptions()
    private var connectReceived = false
    private var verbose = false
    private var pedantic = false
    private var noResponders = false
    private var closing = false
    private var pingsOut = 0
    private var pingTask: RepeatedTask?
    private var authTimeout: Scheduled<Void>?
    /// Flow control: while stalled, the connection does not read (a subscriber it published to is congested).
    private var stalled = false
    /// What was read while stalled, processed when the stall ends.
    private var held: ByteBuffer?
    private var stallToken: UInt64 = 0
    private var stallTimeout: Scheduled<Void>?
    /// The targets of the current stall with their drain progress when it was last checked, and when it began.
    private var stallTargets: [(target: any BusStallTarget, progress: Int)] = []
    private var stallStarted = NIODeadline.now()
    /// A stall is renewed while a target is still congested and draining, up to this long in all (as a link between
    /// nodes waits for a draining peer); a target that made no progress in a stall's time lets the producer go.
    static let maximumStall: TimeAmount = .seconds(5)
    /// What the parsing loop mutates for every operation. It lives in a local variable while a read is processed
    /// (moved out of the handler and back): every access to a stored property of a class is an exclusivity check at
    /// run time, several per message otherwise.
    private struct ReadState {
        var parser: NATSClientParser
        /// The last published subject's match.
        var routeCache = BusRouter.RouteCache()
        /// Deliveries of this read's publishes to clients, handed over when the read is done (off in verbose mode,
        /// where every publish is answered by a +OK that must follow what it delivered to this same client).
        var deliveries = BusDeliveryBatch(enabled: true)
        /// Publishes counted during the read, added to the connection's counters once.
        var messages = 0
        var bytes = 0
    }

    private var read: ReadState
    private var logger: Logger

    init(server: NATSServer) {
        self.server = server
        self.read = ReadState(parser: Self.makeParser(server))
        self.logger = server.logger
    }

    private static func makeParser(_ server: NATSServer) -> NATSClientParser {
        NATSClientParser(maxControlLine: server.configuration.maxControlLine, maxPayload: server.configuration.maxPayload)
    }

    // MARK: Lifecycle

    func channelActive(context: ChannelHandlerContext) {
        guard let client = self.server.register(context.channel) else {
            var buffer = context.channel.allocator.buffer(capacity: 64)
            buffer.writeNATSError(.maxConnectionsExceeded)
            let channel = context.channel
            context.writeAndFlush(self.wrapOutboundOut(buffer)).whenComplete { _ in channel.close(promise: nil) }
            self.closing = true
            return
        }
        self.client = client
        self.logger[metadataKey: "nats.cid"] = "\(client.id)"
        let info = self.server.infoLine(for: client)
        client.enqueue { $0.writeImmutableBuffer(info) }

        let configuration = self.server.configuration
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let contextBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        if configuration.authentication.isRequired {
            self.authTimeout = context.eventLoop.scheduleTask(in: .init(configuration.authTimeout)) {
                loopBound.value.fail(.authorizationTimeout, context: contextBound.value)
            }
        }
        let interval = TimeAmount(configuration.pingInterval)
        self.pingTask = context.eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
            loopBound.value.pingTick(context: contextBound.value)
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.pingTask?.cancel()
        self.authTimeout?.cancel()
        self.stallTimeout?.cancel()
        if let client = self.client {
            self.server.unregister(client)
        }
        self.client = nil
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.client?.writabilityChanged(context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.logger.debug("connection error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    // MARK: Reading

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.closing, let client = self.client else { return }
        var incoming = self.unwrapInboundIn(data)
        if self.stalled {
            // Reads the socket had under way when the stall began (up to `maxMessagesPerRead` of them): held until
            // it ends, so that a stall holds the producer at once rather than after up to 16 MiB more.
            if var held = self.held {
                held.writeBuffer(&incoming)
                self.held = held
            } else {
                self.held = incoming
            }
            return
        }
        self.read(incoming, client: client, context: context)
    }

    private func read(_ incoming: ByteBuffer, client: NATSClientConnection, context: ChannelHandlerContext) {
        var incoming = incoming
        if var buffer = self.accumulated {
            // An operation straddles the previous read and this one. Complete it with a small part of this read
            // and go on in this read itself, rather than copying all of it behind the leftover.
            self.accumulated = nil
            let leftover = buffer.readableBytes
            var head = incoming.readSlice(length: min(incoming.readableBytes, Self.straddleChunk))!
            let borrowed = head.readableBytes
            buffer.writeBuffer(&head)
            self.process(&buffer, client: client, context: context)
            if buffer.readableBytes <= borrowed {
                // The leftover is consumed: what remains of the borrowed bytes goes back to this read.
                incoming.moveReaderIndex(to: incoming.readerIndex - buffer.readableBytes)
            } else {
                // Still incomplete (a large payload): it needs the rest of this read anyway.
                precondition(buffer.readableBytes <= leftover + borrowed)
                buffer.writeBuffer(&incoming)
                self.process(&buffer, client: client, context: context)
                self.keep(buffer)
                return
            }
        }
        self.process(&incoming, client: client, context: context)
        self.keep(incoming)
        self.stallIfCongested(client: client, context: context)
    }

    // MARK: Flow control

    /// When this read's publishes filled a subscriber past half its limit, stops reading until that subscriber
    /// drains or the stall times out (nats-server's fast-producer stall): the producer slows down instead of the
    /// consumer being dropped.
    private func stallIfCongested(client: NATSClientConnection, context: ChannelHandlerContext) {
        let congested = self.read.deliveries.takeCongested()
        guard !congested.isEmpty, !self.stalled, !self.closing else { return }
        self.stallToken &+= 1
        let token = self.stallToken
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let contextBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        let resume: @Sendable () -> Void = {
            eventLoop.execute { loopBound.value.resume(token: token, context: contextBound.value) }
        }
        var longest: Duration?
        var targets: [(target: any BusStallTarget, progress: Int)] = []
        for target in congested where target !== client {
            let progress = target.drainProgress
            if let duration = target.stall(resume: resume) {
                longest = max(longest ?? duration, duration)
                targets.append((target, progress))
            }
        }
        guard let longest else { return }
        self.stalled = true
        self.stallTargets = targets
        self.stallStarted = context.eventLoop.now
        self.server.noteStall()
        try? context.channel.syncOptions?.setOption(ChannelOptions.autoRead, value: false)
        self.stallTimeout = context.eventLoop.scheduleTask(in: .init(longest)) {
            loopBound.value.stallRanOut(token: token, resume: resume, context: contextBound.value)
        }
    }

    /// The stall's time ran out before its targets drained. A target still congested that drained some meanwhile
    /// (its reader reads, only slower than this producer writes) keeps the producer stalled, up to ``maximumStall``
    /// in all; otherwise the producer reads again.
    private func stallRanOut(token: UInt64, resume: @escaping @Sendable () -> Void, context: ChannelHandlerContext) {
        guard self.stalled, token == self.stallToken else { return }
        var longest: Duration?
        var targets: [(target: any BusStallTarget, progress: Int)] = []
        if context.eventLoop.now - self.stallStarted < Self.maximumStall {
            for (target, progress) in self.stallTargets where target.drainProgress != progress {
                let now = target.drainProgress
                if let duration = target.stall(resume: resume) {
                    longest = max(longest ?? duration, duration)
                    targets.append((target, now))
                }
            }
        }
        guard let longest else {
            self.resume(token: token, context: context)
            return
        }
        self.stallTargets = targets
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let contextBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        self.stallTimeout = context.eventLoop.scheduleTask(in: .init(longest)) {
            loopBound.value.stallRanOut(token: token, resume: resume, context: contextBound.value)
        }
    }

    private func resume(token: UInt64, context: ChannelHandlerContext) {
        guard self.stalled, token == self.stallToken else { return }
        self.stalled = false
        self.stallTargets = []
        self.stallTimeout?.cancel()
        self.stallTimeout = nil
        guard !self.closing, context.channel.isActive else { return }
        if let held = self.held, let client = self.client {
            self.held = nil
            self.read(held, client: client, context: context)
            // It may have congested a subscriber again: then the new stall decides when reading goes on.
            if self.stalled { return }
        }
        try? context.channel.syncOptions?.setOption(ChannelOptions.autoRead, value: true)
        context.read()
    }

    /// How much of a new read completes an operation left over from the previous one (its control line fits).
    private static let straddleChunk = 8192

    private func keep(_ buffer: ByteBuffer) {
        guard !self.closing, buffer.readableBytes > 0 else { return }
        var rest = buffer
        if rest.readerIndex > 65536 { rest.discardReadBytes() }
        self.accumulated = rest
    }

    private func process(_ buffer: inout ByteBuffer, client: NATSClientConnection, context: ChannelHandlerContext) {
        var state = ReadState(parser: NATSClientParser(maxControlLine: 0, maxPayload: 0))
        swap(&state, &self.read)
        defer {
            state.deliveries.handOver()
            if state.messages > 0 {
                client.inMessages.wrappingAdd(state.messages, ordering: .relaxed)
                client.inBytes.wrappingAdd(state.bytes, ordering: .relaxed)
                state.messages = 0
                state.bytes = 0
            }
            swap(&state, &self.read)
        }
        // Publishes skip `handle` (the hot path) only once they are allowed: before CONNECT on a server that
        // requires authentication they go through it and are refused.
        var publishesAllowed = self.connectReceived || !self.server.configuration.authentication.isRequired
        while !self.closing {
            let operation: NATSClientOperation?
            do {
                operation = try state.parser.next(&buffer)
            } catch {
                state.deliveries.handOver()
                self.fail(error, context: context)
                return
            }
            guard let operation else { break }
            if publishesAllowed, case .publish(let message) = operation {
                self.publish(message, client: client, context: context, state: &state)
            } else {
                // Whatever this operation writes (PONG, +OK, -ERR) comes after the messages published before it.
                state.deliveries.handOver()
                self.handle(operation, client: client, context: context, state: &state)
                if case .connect = operation {
                    state.deliveries = BusDeliveryBatch(enabled: !self.verbose)
                    publishesAllowed = self.connectReceived || !self.server.configuration.authentication.isRequired
                }
            }
        }
    }

    // MARK: Operations

    private func handle(
        _ operation: NATSClientOperation,
        client: NATSClientConnection,
        context: ChannelHandlerContext,
        state: inout ReadState
    ) {
        if case .connect(let json) = operation {
            self.connect(json, client: client, context: context)
            return
        }
        if !self.connectReceived, self.server.configuration.authentication.isRequired {
            self.fail(.authorizationViolation, context: context)
            return
        }
        switch operation {
        case .connect:
            preconditionFailure("CONNECT is handled above")
        case .publish(let message):
            self.publish(message, client: client, context: context, state: &state)
        case .subscribe(let subject, let queue, let sid):
            guard Subject.isValidPattern(subject), queue.map(Subject.isValidLiteral) ?? true else {
                self.fail(.invalidSubject, context: context)
                return
            }
            let subscription = BusSubscription(subject: subject, queue: queue, sid: sid, target: .client(client))
            if client.remember(subscription) {
                self.server.router.add(subscription)
            }
            self.ok(client)
        case .unsubscribe(let sid, let max):
            if let subscription = client.subscription(sid: sid) {
                let delivered = subscription.delivered.load(ordering: .relaxed)
                if let max, max > 0, delivered < max {
                    subscription.maxMessages.store(max, ordering: .relaxed)
                } else {
                    self.server.router.remove(subscription)
                    client.forget(subscription)
                }
            }
            self.ok(client)
        case .ping:
            client.enqueue { $0.writeStaticString("PONG\r\n") }
        case .pong:
            self.pingsOut = 0
        }
    }

    private func connect(_ json: ByteBuffer, client: NATSClientConnection, context: ChannelHandlerContext) {
        let options: NATSConnectOptions
        do {
            options = try NATSConnectOptions.decode(json)
        } catch {
            self.fail(error, context: context)
            return
        }
        if let proto = options.protocol, proto < 0 || proto > 1 {
            self.fail(.invalidClientProtocol, context: context)
            return
        }
        guard self.server.configuration.authentication.admits(options) else {
            self.logger.info("authorization failed", metadata: ["nats.user": "\(options.user ?? "")"])
            self.fail(.authorizationViolation, context: context)
            return
        }
        self.authTimeout?.cancel()
        self.authTimeout = nil
        self.options = options
        self.connectReceived = true
        self.verbose = options.verbose ?? false
        self.pedantic = options.pedantic ?? false
        self.noResponders = (options.noResponders ?? false) && (options.headers ?? false)
        client.echo = options.echo ?? true
        client.takesAsyncInfo.store((options.protocol ?? 0) >= 1, ordering: .relaxed)
        client.identify(name: options.name, lang: options.lang, version: options.version)
        self.ok(client)
    }

    private func publish(
        _ message: BusMessage,
        client: NATSClientConnection,
        context: ChannelHandlerContext,
        state: inout ReadState
    ) {
        if message.headers != nil, self.options.headers != true {
            // Like nats-server: headers were not negotiated in CONNECT, so HPUB is a protocol violation.
            self.fail(.headersNotSupported, context: context)
            return
        }
        if self.pedantic, !Subject.isValidLiteral(message.subject) {
            state.deliveries.handOver()
            client.enqueue { $0.writeNATSError(NATSProtocolError("Invalid Publish Subject", closesConnection: false)) }
            return
        }
        // +OK comes before any message this publish delivers back to the publisher (nats-server's order).
        self.ok(client)
        state.messages += 1
        state.bytes += message.size
        let deliveries = self.server.router.route(
            message,
            from: client,
            cache: &state.routeCache,
            batch: &state.deliveries
        )
        if deliveries == 0, self.noResponders, let reply = message.replyTo,
            let own = self.server.router.subscription(of: client, matching: reply)
        {
            state.deliveries.handOver()
            // Nobody listens: tell the requester at once instead of letting it time out (NATS status 503).
            client.enqueue { buffer in
                buffer.writeStaticString("HMSG ")
                buffer.writeString(reply)
                buffer.writeInteger(UInt8(ascii: " "))
                buffer.writeString(own.sid)
                buffer.writeStaticString(" 16 16\r\nNATS/1.0 503\r\n\r\n\r\n")
            }
        }
    }

    private func ok(_ client: NATSClientConnection) {
        if self.verbose { client.enqueue { $0.writeStaticString("+OK\r\n") } }
    }

    // MARK: Keepalive and errors

    private func pingTick(context: ChannelHandlerContext) {
        guard let client = self.client, !self.closing else { return }
        if self.pingsOut >= self.server.configuration.maxPingsOut {
            self.fail(.staleConnection, context: context)
            return
        }
        self.pingsOut += 1
        client.enqueue { $0.writeStaticString("PING\r\n") }
    }

    /// Sends `-ERR`; closes the connection when the error says so, after what was queued before it is written.
    private func fail(_ error: NATSProtocolError, context: ChannelHandlerContext) {
        guard !self.closing else { return }
        // Deliveries gathered by a read in progress are handed over by that read (before this -ERR is written when
        // the error came from its own parsing).
        self.read.deliveries.handOver()
        guard error.closesConnection else {
            self.client?.enqueue { $0.writeNATSError(error) }
            return
        }
        self.closing = true
        self.accumulated = nil
        self.logger.debug("closing connection", metadata: ["nats.error": "\(error.message)"])
        self.client?.flush()
        var buffer = context.channel.allocator.buffer(capacity: 64)
        buffer.writeNATSError(error)
        if let client = self.client { self.server.dropSubscriptions(of: client) }
        let channel = context.channel
        context.writeAndFlush(self.wrapOutboundOut(buffer)).whenComplete { _ in channel.close(promise: nil) }
    }
}
