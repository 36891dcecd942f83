import NIOCore
import NIOEmbedded
import Testing

@testable import StorkNATS

/// Random and mutated protocol input. The parser must never crash, must only report the errors NATS defines, and
/// the connection must answer every error with `-ERR` (and close when the error is fatal).
@Suite("NATS protocol fuzzing")
struct NATSFuzzTests {
    static let seeds: [[UInt8]] = [
        "CONNECT {\"verbose\":true,\"pedantic\":false,\"headers\":true,\"no_responders\":true}\r\n",
        "PUB foo.bar 5\r\nhello\r\n", "PUB foo reply 0\r\n\r\n", "HPUB foo.bar  24 26\r\nNATS/1.0\r\nA: 1\r\nB: 2\r\n\r\nok\r\n",
        "SUB foo.* 1\r\n", "SUB foo.bar q 2\r\n", "UNSUB 1 10\r\n", "PING\r\n", "PONG\r\n",
        "PUB $JS.API.STREAM.CREATE.X _INBOX.a 2\r\n{}\r\n",
    ].map { Array($0.utf8) }

    static let alphabet: [UInt8] = Array("PUBHSNCOTIGMXFQW .*>$\r\n\t0123456789{}\":,abc-+'".utf8)
    static let knownErrors: Set<String> = [
        "Unknown Protocol Operation", "Parser Error", "Maximum Control Line Exceeded", "Maximum Payload Violation",
    ]

    /// One input: random bytes biased to protocol characters, or a valid seed with mutations.
    static func input(_ random: inout SplitMix64) -> [UInt8] {
        switch random.next(4) {
        case 0:
            return (0..<random.next(80)).map { _ in
                random.next(5) == 0 ? UInt8(truncatingIfNeeded: random.next()) : alphabet[random.next(alphabet.count)]
            }
        default:
            var bytes: [UInt8] = []
            for _ in 0..<(1 + random.next(3)) { bytes += seeds[random.next(seeds.count)] }
            for _ in 0..<(1 + random.next(4)) where !bytes.isEmpty {
                let position = random.next(bytes.count)
                switch random.next(6) {
                case 0: bytes[position] ^= UInt8(1 << random.next(8))
                case 1: bytes.insert(alphabet[random.next(alphabet.count)], at: position)
                case 2: bytes.remove(at: position)
                case 3: bytes.removeSubrange(position...)
                case 4: bytes.insert(contentsOf: bytes[position..<min(bytes.count, position + 8)], at: position)
                default: bytes[position] = UInt8(ascii: "9")  // sizes that lie
                }
            }
            return bytes
        }
    }

    @Test("1,000,000 random and mutated inputs: no crash, only NATS errors")
    func parserFuzz() {
        var random = SplitMix64(seed: 0x5EED)
        var errors = 0
        var operations = 0
        let parser = NATSClientParser(maxControlLine: 128, maxPayload: 64)
        for _ in 0..<1_000_000 {
            let bytes = Self.input(&random)
            let chunk = random.next(3) == 0 ? 1 + random.next(8) : 0
            let result = parseAll(bytes, chunk: chunk, parser: parser)
            operations += result.operations.count
            if let error = result.error {
                errors += 1
                #expect(Self.knownErrors.contains(error.message), "\(error) for \(bytes)")
            }
        }
        // The generator must exercise both sides.
        #expect(errors > 100_000)
        #expect(operations > 100_000)
    }

    @Test("20,000 inputs through a connection: every protocol error is answered with -ERR and a close")
    func connectionFuzz() throws {
        var random = SplitMix64(seed: 0xC0FFEE)
        let server = NATSServer(configuration: {
            var configuration = NATSServerConfiguration()
            configuration.maxControlLine = 128
            configuration.maxPayload = 64
            return configuration
        }())
        for _ in 0..<20_000 {
            let bytes = Self.input(&random)
            let expectedError = parseAll(bytes, parser: NATSClientParser(maxControlLine: 128, maxPayload: 64)).error
            let loop = EmbeddedEventLoop()
            let channel = EmbeddedChannel(handler: NATSConnectionHandler(server: server), loop: loop)
            try channel.connect(to: .init(ipAddress: "127.0.0.1", port: 1)).wait()
            try channel.writeInbound(ByteBuffer(bytes: bytes))
            loop.run()
            var output = ""
            while let buffer = try channel.readOutbound(as: ByteBuffer.self) { output += String(buffer: buffer) }
            if expectedError != nil {
                // The parser's error, or an earlier one the connection found (a CONNECT it could not accept):
                // either way the last thing written is a fatal -ERR and the connection is closed.
                let last = output.components(separatedBy: "-ERR '").last.map { $0.prefix { $0 != "'" } } ?? ""
                #expect(
                    Self.knownErrors.contains(String(last)) || last == "Invalid Client Protocol"
                        || last == "Message Headers Not Supported",
                    "\(bytes): \(output)"
                )
                #expect(!channel.isActive, "\(bytes)")
            } else if output.contains("-ERR") {
                // Without a framing error only non-fatal answers, or a CONNECT refused with a close.
                #expect(output.contains("Invalid Subject") || !channel.isActive, "\(bytes): \(output)")
            }
            _ = try? channel.finish()
        }
        #expect(server.varz().connections == 0)
    }
}

/// A small deterministic generator for tests.
struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { self.state = seed }
    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func next(_ bound: Int) -> Int { bound <= 0 ? 0 : Int(self.next() % UInt64(bound)) }
}
