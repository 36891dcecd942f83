import NIOCore
import NIOEmbedded
import Testing

@testable import StorkNATS


@Suite("NATS connection reads")
struct NATSConnectionTests {
    /// Publishes of many sizes (some larger than the part of a read used to complete a straddling operation), sent in
    /// reads of random sizes: every message comes back once, in order, with its payload, however the reads fall, and
    /// before the PONG of the PING that follows them (deliveries are batched per read).
    @Test("messages split across reads of any size arrive whole and in order", arguments: [1, 2, 3])
    func straddlingReads(seed: UInt64) throws {
        var random = SplitMix64(seed: seed)
        let server = NATSServer(configuration: {
            var configuration = NATSServerConfiguration()
            configuration.maxPayload = 64 * 1024
            return configuration
        }())
        var stream = ByteBuffer(string: "CONNECT {\"verbose\":false}\r\nSUB t.> 1\r\n")
        var expected: [(subject: String, payload: [UInt8])] = []
        for index in 0..<600 {
            let size = random.next(4) == 0 ? random.next(20_000) : random.next(64)
            let payload = (0..<size).map { UInt8(truncatingIfNeeded: $0 &+ index) }
            let subject = "t.\(index % 7)"
            expected.append((subject, payload))
            stream.writeNATSPublish(subject: subject, replyTo: nil, headers: nil, payload: ByteBuffer(bytes: payload))
        }
        stream.writeString("PING\r\n")

        let loop = EmbeddedEventLoop()
        let channel = EmbeddedChannel(handler: NATSConnectionHandler(server: server), loop: loop)
        try channel.connect(to: .init(ipAddress: "127.0.0.1", port: 1)).wait()
        var parser = NATSServerParser()
        var output = ByteBuffer()
        var received: [(subject: String, payload: [UInt8])] = []
        var pong = false
        while stream.readableBytes > 0 {
            let size = min(stream.readableBytes, 1 + random.next(random.next(2) == 0 ? 40 : 30_000))
            try channel.writeInbound(stream.readSlice(length: size)!)
            loop.run()
            while var buffer = try channel.readOutbound(as: ByteBuffer.self) { output.writeBuffer(&buffer) }
            while let operation = try parser.next(&output) {
                switch operation {
                case .message(let message, _):
                    received.append((message.subject, Array(message.payload.readableBytesView)))
                case .pong:
                    // PONG answers the PING sent after every publish: every message must be out before it.
                    #expect(received.count == expected.count)
                    pong = true
                default:
                    break
                }
            }
        }
        #expect(channel.isActive)
        #expect(pong)
        #expect(received.count == expected.count)
        for (got, want) in zip(received, expected) {
            #expect(got.subject == want.subject)
            #expect(got.payload == want.payload)
        }
        _ = try? channel.finish()
    }
}

@Suite("NATS routing and ack parsing")
struct NATSRoutingTests {
    /// A connection remembers what its last subject matched; a subscription made afterwards (by another connection)
    /// must still receive the next publish, and an ended one must not.
    @Test("a publisher's match cache follows subscriptions made and ended after it")
    func routeCacheFollowsSubscriptions() throws {
        let server = NATSServer(configuration: NATSServerConfiguration())
        let loop = EmbeddedEventLoop()
        let publisher = EmbeddedChannel(handler: NATSConnectionHandler(server: server), loop: loop)
        let subscriber = EmbeddedChannel(handler: NATSConnectionHandler(server: server), loop: loop)
        try publisher.connect(to: .init(ipAddress: "127.0.0.1", port: 1)).wait()
        try subscriber.connect(to: .init(ipAddress: "127.0.0.1", port: 2)).wait()
        func received() throws -> [String] {
            loop.run()
            var output = ByteBuffer()
            while var buffer = try subscriber.readOutbound(as: ByteBuffer.self) { output.writeBuffer(&buffer) }
            var parser = NATSServerParser()
            var payloads: [String] = []
            while let operation = try parser.next(&output) {
                if case .message(let message, _) = operation { payloads.append(String(buffer: message.payload)) }
            }
            return payloads
        }
        try publisher.writeInbound(ByteBuffer(string: "CONNECT {}\r\nPUB a.b 1\r\n1\r\n"))
        _ = try received()  // INFO only
        try subscriber.writeInbound(ByteBuffer(string: "CONNECT {}\r\nSUB a.* 9\r\n"))
        loop.run()
        try publisher.writeInbound(ByteBuffer(string: "PUB a.b 1\r\n2\r\n"))
        #expect(try received() == ["2"])
        try subscriber.writeInbound(ByteBuffer(string: "UNSUB 9\r\n"))
        loop.run()
        try publisher.writeInbound(ByteBuffer(string: "PUB a.b 1\r\n3\r\n"))
        #expect(try received() == [])
        _ = try? publisher.finish()
        _ = try? subscriber.finish()
    }

    @Test("a publish before CONNECT on a server requiring a token is an authorization violation and reaches nobody")
    func publishBeforeConnect() throws {
        let server = NATSServer(configuration: {
            var configuration = NATSServerConfiguration()
            configuration.authentication = .token("s3cret")
            return configuration
        }())
        let loop = EmbeddedEventLoop()
        let subscriber = EmbeddedChannel(handler: NATSConnectionHandler(server: server), loop: loop)
        let intruder = EmbeddedChannel(handler: NATSConnectionHandler(server: server), loop: loop)
        try subscriber.connect(to: .init(ipAddress: "127.0.0.1", port: 1)).wait()
        try intruder.connect(to: .init(ipAddress: "127.0.0.1", port: 2)).wait()
        try subscriber.writeInbound(ByteBuffer(string: "CONNECT {\"auth_token\":\"s3cret\"}\r\nSUB secret.> 1\r\n"))
        try intruder.writeInbound(ByteBuffer(string: "PUB secret.x 2\r\nhi\r\n"))
        loop.run()
        var intruderOutput = ""
        while let buffer = try intruder.readOutbound(as: ByteBuffer.self) { intruderOutput += String(buffer: buffer) }
        var subscriberOutput = ""
        while let buffer = try subscriber.readOutbound(as: ByteBuffer.self) { subscriberOutput += String(buffer: buffer) }
        #expect(intruderOutput.contains("-ERR 'Authorization Violation'"))
        #expect(!subscriberOutput.contains("MSG"))
        _ = try? subscriber.finish()
        _ = try? intruder.finish()
    }
}

@Suite("NATS flow control: a fast producer is stalled instead of its consumer being dropped")
struct NATSFlowControlTests {
    /// The value of `autoRead` the handler last set on `channel` (nil: never set).
    static func autoRead(_ channel: EmbeddedChannel) -> Bool? {
        channel.options.last { $0.option is ChannelOptions.Types.AutoReadOption }?.value as? Bool
    }

    static func drain(_ channel: EmbeddedChannel) throws -> (messages: Int, errors: [String]) {
        var output = ByteBuffer()
        while var buffer = try channel.readOutbound(as: ByteBuffer.self) { output.writeBuffer(&buffer) }
        var parser = NATSServerParser()
        var messages = 0
        var errors: [String] = []
        while let operation = try parser.next(&output) {
            switch operation {
            case .message: messages += 1
            case .error(let text): errors.append(text)
            default: break
            }
        }
        return (messages, errors)
    }

    struct Pair {
        let server: NATSServer
        let loop = EmbeddedEventLoop()
        let publisher: EmbeddedChannel
        let subscriber: EmbeddedChannel

        init(maxPending: Int) throws {
            var configuration = NATSServerConfiguration()
            configuration.maxPending = maxPending
            self.server = NATSServer(configuration: configuration)
            self.publisher = EmbeddedChannel(handler: NATSConnectionHandler(server: self.server), loop: self.loop)
            self.subscriber = EmbeddedChannel(handler: NATSConnectionHandler(server: self.server), loop: self.loop)
            try self.publisher.connect(to: .init(ipAddress: "127.0.0.1", port: 1)).wait()
            try self.subscriber.connect(to: .init(ipAddress: "127.0.0.1", port: 2)).wait()
            try self.subscriber.writeInbound(ByteBuffer(string: "CONNECT {}\r\nSUB t 1\r\n"))
            try self.publisher.writeInbound(ByteBuffer(string: "CONNECT {}\r\n"))
            self.loop.run()
            _ = try NATSFlowControlTests.drain(self.subscriber)
        }

        /// The subscriber's socket stops (or starts again) taking bytes.
        func subscriberWritable(_ writable: Bool) {
            self.subscriber.isWritable = writable
            self.subscriber.pipeline.fireChannelWritabilityChanged()
            self.loop.run()
        }

        /// One read of the publisher with `count` publishes of `size` bytes.
        func publish(_ count: Int, size: Int) throws {
            var buffer = ByteBuffer()
            for _ in 0..<count {
                buffer.writeNATSPublish(
                    subject: "t",
                    replyTo: nil,
                    headers: nil,
                    payload: ByteBuffer(repeating: 0x61, count: size)
                )
            }
            try self.publisher.writeInbound(buffer)
            self.loop.run()
        }
    }

    @Test("past half of maxPending the publisher stops reading; it reads again when the subscriber drains, and nothing is lost")
    func stallUntilDrained() throws {
        let pair = try Pair(maxPending: 64 * 1024)
        pair.subscriberWritable(false)
        try pair.publish(20, size: 1024)
        #expect(Self.autoRead(pair.publisher) == nil, "20 KiB waiting: below half the limit, no stall")
        try pair.publish(20, size: 1024)
        #expect(Self.autoRead(pair.publisher) == false, "40 KiB waiting: the publisher is stalled")
        #expect(pair.server.stalls == 1)
        #expect(pair.subscriber.isActive)

        pair.subscriberWritable(true)
        #expect(Self.autoRead(pair.publisher) == true, "the subscriber drained: the publisher reads again")
        let received = try Self.drain(pair.subscriber)
        #expect(received.messages == 40)
        #expect(received.errors.isEmpty)
        #expect(pair.subscriber.isActive)
        _ = try? pair.publisher.finish()
        _ = try? pair.subscriber.finish()
    }

    @Test("a subscriber that reads slowly keeps the publisher stalled past the stall's time; it is never dropped")
    func slowReaderKeepsProducerStalled() throws {
        let pair = try Pair(maxPending: 64 * 1024)
        pair.subscriberWritable(false)
        try pair.publish(60, size: 1024)
        #expect(Self.autoRead(pair.publisher) == false, "60 KiB waiting: stalled")
        // The stall lasts 100 ms plus 100 ms per 3.2 KiB over half: 100 + 800 ms. Within it the subscriber's socket
        // takes one hand-off (4 KiB, a sixteenth of the limit) and is full again: slower than the publisher, but
        // reading.
        pair.subscriber.isWritable = true
        pair.subscriber.pipeline.fireChannelWritabilityChanged()
        pair.subscriber.isWritable = false
        pair.subscriber.pipeline.fireChannelWritabilityChanged()
        pair.loop.run()
        pair.loop.advanceTime(by: .milliseconds(900))
        #expect(Self.autoRead(pair.publisher) == false, "still congested and draining: stalled again, not resumed")
        // Now it stops reading: at the end of the renewed stall the publisher goes on.
        pair.loop.advanceTime(by: .seconds(1))
        #expect(Self.autoRead(pair.publisher) == true, "no progress during the stall: the publisher reads again")
        #expect(pair.subscriber.isActive)
        // It reads again and takes everything: nothing was lost, nobody was dropped.
        pair.subscriberWritable(true)
        let received = try Self.drain(pair.subscriber)
        #expect(received.messages == 60)
        #expect(received.errors.isEmpty)
        #expect(pair.subscriber.isActive)
        _ = try? pair.publisher.finish()
        _ = try? pair.subscriber.finish()
    }

    @Test("what the socket read while the publisher was stalled waits for the stall's end: it cannot overrun the subscriber")
    func readsDuringStallAreHeld() throws {
        let pair = try Pair(maxPending: 64 * 1024)
        pair.subscriberWritable(false)
        try pair.publish(40, size: 1024)
        #expect(Self.autoRead(pair.publisher) == false, "40 KiB waiting: stalled")
        // Reads already under way when the stall began (NIO finishes up to maxMessagesPerRead of them).
        try pair.publish(30, size: 1024)
        #expect(pair.subscriber.isActive, "70 KiB would be past maxPending: the 30 KiB were held, not delivered")
        pair.subscriberWritable(true)
        #expect(Self.autoRead(pair.publisher) == true)
        let received = try Self.drain(pair.subscriber)
        #expect(received.messages == 70, "nothing lost: the held publishes were delivered after the stall")
        #expect(received.errors.isEmpty)
        _ = try? pair.publisher.finish()
        _ = try? pair.subscriber.finish()
    }

    @Test("a stall ends after its timeout; a subscriber that never reads is still closed as a slow consumer")
    func stallTimesOutThenSlowConsumer() throws {
        let pair = try Pair(maxPending: 64 * 1024)
        pair.subscriberWritable(false)
        try pair.publish(40, size: 1024)
        #expect(Self.autoRead(pair.publisher) == false)
        // 40 KiB of a 32 KiB upper half: 100 ms plus 100 ms per 3.2 KiB over half, i.e. 100 + 200 ms.
        pair.loop.advanceTime(by: .milliseconds(299))
        #expect(Self.autoRead(pair.publisher) == false)
        pair.loop.advanceTime(by: .milliseconds(1))
        #expect(Self.autoRead(pair.publisher) == true, "resumed by the timeout")
        try pair.publish(30, size: 1024)
        #expect(!pair.subscriber.isActive, "over maxPending and not reading: closed as a slow consumer")
        #expect(pair.publisher.isActive, "the publisher is unaffected")
        _ = try? pair.publisher.finish()
    }
}
