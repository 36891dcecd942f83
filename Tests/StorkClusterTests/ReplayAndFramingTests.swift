import NIOCore
import NIOEmbedded
import Testing

@testable import StorkCluster

@Suite("Replay window")
struct ReplayWindowTests {
    /// Sequence → accepted?, in order.
    @Test(
        "fresh sequences pass once; repeats and sequences older than the window are stale",
        arguments: [
            ([1, 2, 3, 2, 3, 4], [true, true, true, false, false, true]),
            ([5, 3, 4, 3, 5, 1], [true, true, true, false, false, true]),
            ([0, 1, 0], [false, true, false]),
            ([3_000, 1_017, 1_016, 1_015, 2_999, 3_000], [true, true, false, false, true, false]),
            ([1, 100_000, 1, 99_999, 98_017, 98_016], [true, true, false, true, true, false]),
            ([64, 128, 192, 64, 128, 192], [true, true, true, false, false, false]),
            ([UInt64.max, UInt64.max - 1, UInt64.max], [true, true, false]),
        ] as [([UInt64], [Bool])]
    )
    func window(sequences: [UInt64], expected: [Bool]) {
        var window = ReplayWindow()
        #expect(sequences.map { window.accept($0) } == expected)
    }

    @Test("a jump beyond the window clears it; every sequence in a long shuffled run is accepted exactly once")
    func shuffled() {
        var window = ReplayWindow()
        var generator = SystemRandomNumberGenerator()
        var sequences = Array(UInt64(1)...20_000)
        // Reorder locally (within 500), as UDP might, then replay everything once more.
        for start in stride(from: 0, to: sequences.count, by: 500) {
            sequences[start..<min(sequences.count, start + 500)].shuffle(using: &generator)
        }
        #expect(sequences.allSatisfy { window.accept($0) })
        #expect(sequences.allSatisfy { !window.accept($0) })
    }

    @Test("windows are per sender and channel, and the number of senders is bounded")
    func guardPerSender() {
        var guard_ = ReplayGuard(maximumSenders: 3)
        func accept(_ uid: UInt64, _ sequence: UInt64, datagram: Bool) -> Bool {
            guard_.accept(WireHeader(senderUID: uid, sequence: sequence, isDatagram: datagram))
        }
        #expect(accept(1, 1, datagram: true))
        #expect(accept(1, 1, datagram: false))
        #expect(accept(2, 1, datagram: true))
        #expect(!accept(1, 1, datagram: true))
        #expect(accept(3, 1, datagram: true))  // forgets (1, stream)
        #expect(guard_.entries.count == 3)
        #expect(accept(1, 1, datagram: false))
    }
}

@Suite("TCP framing")
struct FramingTests {
    func channel(maximum: Int = 1_000) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameLengthDecoder(maximumFrameSize: maximum)))
        return channel
    }

    @Test("frames split across reads and several frames in one read come out whole")
    func splitting() throws {
        let channel = try self.channel()
        var stream = ByteBuffer()
        for size in [0, 1, 10, 700, 1_000] {
            stream.writeInteger(UInt32(size))
            stream.writeBytes((0..<size).map { UInt8(truncatingIfNeeded: $0 &+ size) })
        }
        // Feed it in chunks of 7 bytes.
        while stream.readableBytes > 0 {
            try channel.writeInbound(stream.readSlice(length: min(7, stream.readableBytes))!)
        }
        for size in [0, 1, 10, 700, 1_000] {
            let frame = try #require(try channel.readInbound(as: ByteBuffer.self))
            #expect(Array(frame.readableBytesView) == (0..<size).map { UInt8(truncatingIfNeeded: $0 &+ size) })
        }
        #expect(try channel.readInbound(as: ByteBuffer.self) == nil)
        #expect(try channel.finish().isClean)
    }

    @Test("a length above the maximum is an error as soon as the 4 length bytes arrive")
    func oversized() throws {
        let channel = try self.channel()
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt32(1_001))
        #expect(throws: WireError.self) { try channel.writeInbound(buffer) }
        _ = try? channel.finish()
        let huge = try self.channel()
        var max = ByteBuffer()
        max.writeInteger(UInt32.max)
        #expect {
            try huge.writeInbound(max)
        } throws: { error in
            (error as? WireError)?.code == .oversized
        }
        _ = try? huge.finish()
    }
}
