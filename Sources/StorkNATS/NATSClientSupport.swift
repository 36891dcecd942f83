import NIOCore
import StorkBus
import NIOPosix

// MARK: - Client-side pieces shared by NATSClient and the benchmark's load generator
//
// `NATSClient` (a general client) and `stork bench nats`'s connections (a load generator with its own handler) open,
// read and time out their connections the same way; what is the same lives here, once. `package`: for the targets
// of this package, not a public API.

// MARK: Connecting

/// Opens a TCP connection to a NATS server on `eventLoop` with `makeHandler()` as its only handler, and returns the
/// channel and that handler (bound to the loop). `configure` adds channel options to the bootstrap.
package func connectNATSChannel<Handler: ChannelHandler & SendableMetatype>(
    host: String,
    port: Int,
    on eventLoop: any EventLoop,
    timeout: TimeAmount,
    configure: (ClientBootstrap) -> ClientBootstrap = { $0 },
    makeHandler: @escaping @Sendable () -> Handler
) async throws -> (channel: any Channel, handler: NIOLoopBound<Handler>) {
    let bootstrap = ClientBootstrap(group: eventLoop)
        .connectTimeout(timeout)
        .channelOption(.socketOption(.tcp_nodelay), value: 1)
    let channel = try await configure(bootstrap)
        .channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(makeHandler())
            }
        }
        .connect(host: host, port: port)
        .get()
    let handler = try await eventLoop.submit {
        NIOLoopBound(try channel.pipeline.syncOperations.handler(type: Handler.self), eventLoop: eventLoop)
    }.get()
    return (channel, handler)
}

/// A token for a connection's reply subjects (`_INBOX.<token>…`): `length` random letters and digits.
package func makeNATSInboxToken(length: Int) -> String {
    let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
    var generator = SystemRandomNumberGenerator()
    return String((0..<length).map { _ in alphabet[Int(generator.next() % UInt64(alphabet.count))] })
}

// MARK: Reading

/// What a client reads from a server: bytes arrive in pieces, operations come out whole. Feed each read with
/// ``append(_:)``, then take operations with ``next()`` until it returns nil (the rest waits for more bytes).
package struct NATSServerReader {
    private var parser = NATSServerParser()
    private var buffer = ByteBuffer()

    package init() {}

    /// Adds bytes that arrived.
    package mutating func append(_ incoming: inout ByteBuffer) {
        if self.buffer.readableBytes == 0 {
            self.buffer = incoming
        } else {
            self.buffer.writeBuffer(&incoming)
        }
    }

    /// The next complete operation, or nil when the bytes so far end before one; throws on bytes that are not the
    /// NATS protocol.
    package mutating func next() throws -> NATSServerOperation? {
        if let operation = try self.parser.next(&self.buffer) { return operation }
        if self.buffer.readerIndex > 64 * 1024 { self.buffer.discardReadBytes() }
        return nil
    }
}

// MARK: Request replies

/// The reply subjects of a connection's requests: one wildcard subscription (`<prefix>.*` under `sid`), made with
/// the first request, and a counter.
package struct NATSReplyInbox {
    package let prefix: String
    package let sid: String
    private var subscribed = false
    private var counter = 0

    package init(prefix: String, sid: String) {
        self.prefix = prefix
        self.sid = sid
    }

    /// The reply subject of the next request; before the first, writes the inbox's `SUB` into `bytes`.
    package mutating func nextReplySubject(writingSubscriptionInto bytes: inout ByteBuffer) -> String {
        if !self.subscribed {
            self.subscribed = true
            bytes.writeString("SUB \(self.prefix).* \(self.sid)\r\n")
        }
        self.counter += 1
        return "\(self.prefix).\(self.counter)"
    }
}

// MARK: Waiting with a deadline

extension EventLoopFuture where Value: Sendable {
    /// This future, or the error `timedOut()` makes if it has not completed after `timeout`. (A promise completed
    /// twice keeps its first result, so the late completion is dropped.)
    package func within(
        _ timeout: TimeAmount,
        on eventLoop: any EventLoop,
        orFailWith timedOut: @escaping @Sendable () -> any Error
    ) -> EventLoopFuture<Value> {
        let promise = eventLoop.makePromise(of: Value.self)
        let timer = eventLoop.scheduleTask(in: timeout) { promise.fail(timedOut()) }
        self.hop(to: eventLoop).whenComplete { result in
            timer.cancel()
            promise.completeWith(result)
        }
        return promise.futureResult
    }
}
