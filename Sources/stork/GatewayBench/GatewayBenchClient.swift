import NIOCore
import NIOPosix
import Synchronization

// MARK: - A lean WebSocket subscriber
//
// `stork bench gateway` holds thousands of WebSocket connections in one process, so each is one NIO channel with one
// handler and nothing else: no task, no async sequence, no HTTP codec. The handler writes the upgrade request,
// checks the `101`, sends `auth` and `subscribe` in one write, and from then on only parses frame headers and the
// prefix of text frames: a `message` frame's `seq` tells which published message it is (every session numbers its
// deliveries from 1, and the bench's sessions receive nothing else). What arrived is reported to a shared
// ``GatewayBenchTracker`` once per read.

/// What one server frame means to the bench.
enum GatewayBenchFrameEvent: Equatable, Sendable {
    case message(sequence: UInt64)
    case welcome
    /// `ok` for the subscribe frame (id 2).
    case subscribed
    case error(String)
    case ping([UInt8])
    case close(code: Int)
    /// Anything else (an `ok` without the subscribe id, a pong…).
    case other
}

/// Builds the bytes a client sends and parses the frames a server sends (RFC 6455; servers do not mask).
enum GatewayBenchWire {
    static let subscribeID = 2

    /// The HTTP upgrade request for `path` on `host:port`.
    static func upgradeRequest(host: String, port: Int, path: String) -> String {
        "GET \(path) HTTP/1.1\r\nHost: \(host):\(port)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    }

    /// Appends one client frame (FIN set, masked as RFC 6455 requires of clients).
    static func appendClientFrame(opcode: UInt8, payload: some Collection<UInt8>, to buffer: inout ByteBuffer) {
        let mask: [UInt8] = [0x5A, 0x1F, 0xC3, 0x77]
        buffer.writeInteger(UInt8(0x80 | opcode))
        let count = payload.count
        if count < 126 {
            buffer.writeInteger(UInt8(0x80 | count))
        } else if count <= 0xFFFF {
            buffer.writeInteger(UInt8(0x80 | 126))
            buffer.writeInteger(UInt16(count))
        } else {
            buffer.writeInteger(UInt8(0x80 | 127))
            buffer.writeInteger(UInt64(count))
        }
        buffer.writeBytes(mask)
        var index = 0
        for byte in payload {
            buffer.writeInteger(byte ^ mask[index & 3])
            index += 1
        }
    }

    /// `auth` (the `open` authenticator accepts any user) and, unless `authOnly`, `subscribe` to `subject`.
    static func openingFrames(subject: String, user: String, authOnly: Bool, allocator: ByteBufferAllocator) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: 160)
        let auth = #"{"type":"auth","v":1,"id":1,"user":"\#(user)","password":"-"}"#
        Self.appendClientFrame(opcode: 0x1, payload: auth.utf8, to: &buffer)
        if !authOnly {
            let subscribe = #"{"type":"subscribe","id":\#(Self.subscribeID),"subject":"\#(subject)"}"#
            Self.appendClientFrame(opcode: 0x1, payload: subscribe.utf8, to: &buffer)
        }
        return buffer
    }

    /// The length of the HTTP response head (through the blank line), or nil while it is incomplete.
    static func responseHeadLength(_ bytes: UnsafeRawBufferPointer) -> Int? {
        guard bytes.count >= 4 else { return nil }
        for index in 3..<bytes.count
        where bytes[index] == 0x0A && bytes[index - 1] == 0x0D && bytes[index - 2] == 0x0A && bytes[index - 3] == 0x0D {
            return index + 1
        }
        return nil
    }

    static let messagePrefix = Array(#"{"type":"message","seq":"#.utf8)
    static let welcomePrefix = Array(#"{"type":"welcome""#.utf8)
    static let subscribedPrefix = Array(#"{"type":"ok","id":2,"#.utf8)
    static let errorPrefix = Array(#"{"type":"error""#.utf8)

    /// Parses the complete frames at the start of `bytes` into `events`; returns how many bytes they took.
    /// Throws on a masked or fragmented server frame (the gateway sends neither).
    static func parseFrames(_ bytes: UnsafeRawBufferPointer, into events: inout [GatewayBenchFrameEvent]) throws -> Int {
        var offset = 0
        while bytes.count - offset >= 2 {
            let first = bytes[offset]
            let second = bytes[offset + 1]
            guard second & 0x80 == 0 else { throw NATSBenchError(.unexpected, "the server sent a masked frame") }
            guard first & 0x80 != 0 else { throw NATSBenchError(.unexpected, "the server sent a fragmented frame") }
            var header = 2
            var length = Int(second & 0x7F)
            if length == 126 {
                guard bytes.count - offset >= 4 else { break }
                length = Int(bytes[offset + 2]) << 8 | Int(bytes[offset + 3])
                header = 4
            } else if length == 127 {
                guard bytes.count - offset >= 10 else { break }
                length = 0
                for index in 2..<10 { length = length << 8 | Int(bytes[offset + index]) }
                header = 10
            }
            guard bytes.count - offset - header >= length else { break }
            let payload = UnsafeRawBufferPointer(rebasing: bytes[(offset + header)..<(offset + header + length)])
            events.append(Self.event(opcode: first & 0x0F, payload: payload))
            offset += header + length
        }
        return offset
    }

    static func event(opcode: UInt8, payload: UnsafeRawBufferPointer) -> GatewayBenchFrameEvent {
        switch opcode {
        case 0x1:
            if Self.hasPrefix(payload, Self.messagePrefix) {
                var sequence: UInt64 = 0
                var index = Self.messagePrefix.count
                while index < payload.count, payload[index] >= 0x30, payload[index] <= 0x39 {
                    sequence = sequence * 10 + UInt64(payload[index] - 0x30)
                    index += 1
                }
                return .message(sequence: sequence)
            }
            if Self.hasPrefix(payload, Self.subscribedPrefix) { return .subscribed }
            if Self.hasPrefix(payload, Self.welcomePrefix) { return .welcome }
            if Self.hasPrefix(payload, Self.errorPrefix) { return .error(String(decoding: payload, as: UTF8.self)) }
            return .other
        case 0x8:
            let code = payload.count >= 2 ? Int(payload[0]) << 8 | Int(payload[1]) : 1005
            return .close(code: code)
        case 0x9:
            return .ping(Array(payload))
        default:
            return .other
        }
    }

    static func hasPrefix(_ bytes: UnsafeRawBufferPointer, _ prefix: [UInt8]) -> Bool {
        guard bytes.count >= prefix.count else { return false }
        for index in 0..<prefix.count where bytes[index] != prefix[index] { return false }
        return true
    }
}

// MARK: - The tracker

/// Every delivery every subscriber reported, by message: how many subscribers have it, when the first and the last
/// got it (uptime nanoseconds). Message `i` is the session sequence `i + 1`. The first failure of any subscriber
/// after it subscribed is kept and ends the waits.
final class GatewayBenchTracker: Sendable {
    struct State {
        var counts: [Int]
        var first: [UInt64]
        var last: [UInt64]
        var delivered = 0
        var failure: NATSBenchError?
    }

    let subscribers: Int
    let messages: Int
    private let state: Mutex<State>

    init(subscribers: Int, messages: Int) {
        self.subscribers = subscribers
        self.messages = messages
        self.state = Mutex(
            State(
                counts: Array(repeating: 0, count: messages),
                first: Array(repeating: 0, count: messages),
                last: Array(repeating: 0, count: messages)
            )
        )
    }

    /// Deliveries of one read of one connection, all received at `time`.
    func record(_ indices: [Int], at time: UInt64) {
        self.state.withLock { state in
            for index in indices {
                guard index >= 0, index < self.messages else {
                    if state.failure == nil {
                        state.failure = NATSBenchError(.unexpected, "a subscriber received message \(index + 1), never sent")
                    }
                    continue
                }
                state.counts[index] += 1
                if state.counts[index] == 1 { state.first[index] = time }
                if time > state.last[index] { state.last[index] = time }
            }
            state.delivered += indices.count
        }
    }

    func fail(_ error: NATSBenchError) {
        self.state.withLock { state in
            if state.failure == nil { state.failure = error }
        }
    }

    /// Whether every subscriber has message `index`; throws the first failure.
    func isComplete(_ index: Int) throws -> Bool {
        try self.state.withLock { state in
            if let failure = state.failure { throw failure }
            return state.counts[index] >= self.subscribers
        }
    }

    /// Polls until every subscriber has messages `range` (they arrive in order per connection, so the last
    /// message's count is enough only when all earlier ones are complete too: each is checked).
    func waitUntilComplete(_ range: Range<Int>, timeout: Duration, what: String) async throws {
        let deadline = ContinuousClock.now + timeout
        var next = range.lowerBound
        while next < range.upperBound {
            if try self.isComplete(next) {
                next += 1
                continue
            }
            guard ContinuousClock.now < deadline else {
                let (count, delivered) = self.state.withLock { ($0.counts[next], $0.delivered) }
                throw NATSBenchError(
                    .lostMessages,
                    "\(what): after \(timeout), message \(next + 1) reached \(count) of \(self.subscribers) subscribers "
                        + "(\(delivered) deliveries in all)"
                )
            }
            try await Task.sleep(for: .microseconds(200))
        }
    }

    struct Snapshot: Sendable {
        var counts: [Int]
        var first: [UInt64]
        var last: [UInt64]
        var delivered: Int
    }

    func snapshot() -> Snapshot {
        self.state.withLock { Snapshot(counts: $0.counts, first: $0.first, last: $0.last, delivered: $0.delivered) }
    }
}

// MARK: - The connection handler

/// One subscriber connection, on its event loop.
final class GatewayBenchConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private enum Phase {
        case upgrading
        case opening
        case subscribed
        case done
    }

    let number: Int
    let request: String
    let subject: String
    let authOnly: Bool
    let tracker: GatewayBenchTracker?
    /// Succeeds when the subscription is confirmed (or, with `authOnly`, at `welcome`).
    let ready: EventLoopPromise<Void>
    private var phase = Phase.upgrading
    private var pending: ByteBuffer?
    private var events: [GatewayBenchFrameEvent] = []
    private var received: [Int] = []
    private var nextSequence: UInt64 = 1

    init(
        number: Int,
        host: String,
        port: Int,
        path: String,
        subject: String,
        authOnly: Bool,
        tracker: GatewayBenchTracker?,
        ready: EventLoopPromise<Void>
    ) {
        self.number = number
        self.request = GatewayBenchWire.upgradeRequest(host: host, port: port, path: path)
        self.subject = subject
        self.authOnly = authOnly
        self.tracker = tracker
        self.ready = ready
    }

    func channelActive(context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: self.request.utf8.count)
        buffer.writeString(self.request)
        context.writeAndFlush(self.wrapOutboundOut(buffer), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = self.unwrapInboundIn(data)
        if var pending = self.pending {
            pending.writeBuffer(&incoming)
            self.pending = pending
        } else {
            self.pending = incoming
        }
        do {
            try self.process(context: context)
        } catch {
            self.fail(error as? NATSBenchError ?? NATSBenchError(.unexpected, "\(error)"), context: context)
        }
    }

    private func process(context: ChannelHandlerContext) throws {
        guard var buffer = self.pending else { return }
        if self.phase == .upgrading {
            let head = buffer.withUnsafeReadableBytes { GatewayBenchWire.responseHeadLength($0) }
            guard let head else { return }
            let status = buffer.readString(length: head) ?? ""
            guard status.hasPrefix("HTTP/1.1 101") else {
                throw NATSBenchError(.serverError, "the upgrade was refused: \(status.prefix(while: { $0 != "\r" }))")
            }
            self.phase = .opening
            let frames = GatewayBenchWire.openingFrames(
                subject: self.subject,
                user: "u\(self.number)",
                authOnly: self.authOnly,
                allocator: context.channel.allocator
            )
            context.writeAndFlush(self.wrapOutboundOut(frames), promise: nil)
        }
        let consumed = try buffer.withUnsafeReadableBytes { bytes in
            try GatewayBenchWire.parseFrames(bytes, into: &self.events)
        }
        buffer.moveReaderIndex(forwardBy: consumed)
        self.pending = buffer.readableBytes == 0 ? nil : buffer
        for event in self.events { try self.handle(event, context: context) }
        self.events.removeAll(keepingCapacity: true)
    }

    private func handle(_ event: GatewayBenchFrameEvent, context: ChannelHandlerContext) throws {
        switch event {
        case .message(let sequence):
            guard sequence == self.nextSequence else {
                throw NATSBenchError(
                    .unexpected,
                    "subscriber \(self.number) received seq \(sequence), expected \(self.nextSequence)"
                )
            }
            self.nextSequence += 1
            self.received.append(Int(sequence) - 1)
        case .welcome:
            if self.authOnly, self.phase == .opening {
                self.phase = .subscribed
                self.ready.succeed()
            }
        case .subscribed:
            if self.phase == .opening {
                self.phase = .subscribed
                self.ready.succeed()
            }
        case .error(let text):
            throw NATSBenchError(.serverError, "subscriber \(self.number): \(text)")
        case .ping(let payload):
            var pong = context.channel.allocator.buffer(capacity: payload.count + 8)
            GatewayBenchWire.appendClientFrame(opcode: 0xA, payload: payload, to: &pong)
            context.writeAndFlush(self.wrapOutboundOut(pong), promise: nil)
        case .close(let code):
            throw NATSBenchError(.connectionClosed, "subscriber \(self.number): the server closed with code \(code)")
        case .other:
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if !self.received.isEmpty {
            self.tracker?.record(self.received, at: NIODeadline.now().uptimeNanoseconds)
            self.received.removeAll(keepingCapacity: true)
        }
        context.fireChannelReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.fail(NATSBenchError(.connectionClosed, "subscriber \(self.number): the connection closed"), context: nil)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.fail(NATSBenchError(.connectionClosed, "subscriber \(self.number)", underlying: error), context: context)
    }

    /// Before the subscription: fails `ready`; after it: tells the tracker (unless the bench closed it).
    private func fail(_ error: NATSBenchError, context: ChannelHandlerContext?) {
        switch self.phase {
        case .upgrading, .opening: self.ready.fail(error)
        case .subscribed: self.tracker?.fail(error)
        case .done: break
        }
        self.phase = .done
        context?.close(promise: nil)
    }

    /// The bench closes the connection: what happens next is no failure.
    func finish() {
        self.phase = .done
    }
}

// MARK: - Opening connections

enum GatewayBenchConnections {
    /// Opens a subscriber connection on `eventLoop` and waits until it is subscribed (or authenticated, with
    /// `authOnly`). Returns the channel and its handler's finish hook.
    static func open(
        number: Int,
        host: String,
        port: Int,
        path: String,
        subject: String,
        authOnly: Bool = false,
        tracker: GatewayBenchTracker?,
        on eventLoop: any EventLoop,
        timeout: TimeAmount
    ) async throws -> any Channel {
        let ready = eventLoop.makePromise(of: Void.self)
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: eventLoop)
                .connectTimeout(timeout)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelOption(
                    .recvAllocator,
                    value: AdaptiveRecvByteBufferAllocator(minimum: 512, initial: 2048, maximum: 256 * 1024)
                )
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            GatewayBenchConnectionHandler(
                                number: number,
                                host: host,
                                port: port,
                                path: path,
                                subject: subject,
                                authOnly: authOnly,
                                tracker: tracker,
                                ready: ready
                            )
                        )
                    }
                }
                .connect(host: host, port: port)
                .get()
        } catch {
            ready.fail(error)
            throw NATSBenchError(.connectionClosed, "subscriber \(number): cannot connect to \(host):\(port)", underlying: error)
        }
        do {
            try await ready.futureResult.within(timeout, on: eventLoop, what: "subscriber \(number): subscribing").get()
        } catch {
            try? await channel.close()
            throw error
        }
        return channel
    }

    /// Marks the connection as closed by the bench, then closes it.
    static func close(_ channel: any Channel) -> EventLoopFuture<Void> {
        channel.eventLoop.flatSubmit {
            if let handler = try? channel.pipeline.syncOperations.handler(type: GatewayBenchConnectionHandler.self) {
                handler.finish()
            }
            return channel.close()
        }
    }
}
