import StorkCore
import Testing

@testable import StorkGateway

@Suite("Relay frames")
struct RelayFrameTests {
    static func code(_ bytes: [UInt8]) -> RelayFrameError.Code? {
        do {
            _ = try RelayFrameCodec.decode(bytes)
            return nil
        } catch {
            return error.code
        }
    }

    static let samples: [RelayFrame] = [
        .interest(.delta(version: 7, added: ["users.alice.>", "a.*.c"], removed: ["x"])),
        .interest(.delta(version: UInt64.max, added: [], removed: [])),
        .interest(.snapshot(version: 0, patterns: [])),
        .interest(.snapshot(version: 3, patterns: ["日本.>", String(repeating: "s", count: 4096)])),
        .interest(.digest(version: 42)),
        .interest(.pull),
        .messages([]),
        .messages([
            RelayedMessage(subject: "users.alice.events", payload: Array("hello".utf8)),
            RelayedMessage(
                subject: "a.b",
                replyTo: "_INBOX.x.y",
                headers: Array("NATS/1.0\r\nA: b\r\n\r\n".utf8),
                payload: []
            ),
            RelayedMessage(subject: "big", payload: [UInt8](repeating: 0xFE, count: 100_000)),
        ]),
    ]

    @Test("every frame kind round-trips")
    func roundTrip() throws {
        for frame in Self.samples {
            #expect(try RelayFrameCodec.decode(RelayFrameCodec.encode(frame)) == frame)
        }
    }

    @Test("the layout: version, kind, body")
    func layout() {
        #expect(RelayFrameCodec.encode(.interest(.pull)) == [1, 4])
        #expect(RelayFrameCodec.encode(.interest(.digest(version: 258))) == [1, 3, 0, 0, 0, 0, 0, 0, 1, 2])
        #expect(
            RelayFrameCodec.encode(.messages([RelayedMessage(subject: "s", payload: [9])]))
                == [1, 16, 0, 0, 0, 1, 0, 1, UInt8(ascii: "s"), 0, 0, 0, 0, 0, 1, 9]
        )
        let message = RelayedMessage(subject: "ab", replyTo: "r", headers: [1, 2], payload: [3])
        #expect(RelayFrameCodec.encode(.messages([message])).count == RelayFrameCodec.messagesOverhead + message.encodedSize)
    }

    @Test("malformed frames are refused with their own code")
    func rejections() {
        #expect(Self.code([]) == .truncated)
        #expect(Self.code([2, 4]) == .badVersion)
        #expect(Self.code([1, 99]) == .unknownKind)
        #expect(Self.code([1, 4, 0]) == .trailingBytes)
        #expect(Self.code([1, 3, 0, 0]) == .truncated)
        // A snapshot announcing 2^32-1 patterns in 4 bytes.
        #expect(Self.code([1, 2] + [UInt8](repeating: 0, count: 8) + [0xFF, 0xFF, 0xFF, 0xFF]) == .countTooLarge)
        func snapshot(_ pattern: [UInt8]) -> [UInt8] {
            [1, 2] + [UInt8](repeating: 0, count: 8) + [0, 0, 0, 1, UInt8(pattern.count >> 8), UInt8(pattern.count & 0xFF)]
                + pattern
        }
        #expect(Self.code(snapshot(Array("ok.>".utf8))) == nil)
        #expect(Self.code(snapshot(Array("a.>.b".utf8))) == .invalidSubject)
        #expect(Self.code(snapshot(Array("a..b".utf8))) == .invalidSubject)
        #expect(Self.code(snapshot(Array("a b".utf8))) == .invalidSubject)
        #expect(Self.code(snapshot([])) == .invalidSubject)
        #expect(Self.code(snapshot([0xC3, 0x28])) == .invalidUTF8)
        #expect(Self.code(snapshot([UInt8](repeating: 0x61, count: 4097))) == .invalidSubject)
        func message(subject: [UInt8], reply: UInt8 = 0, headers: UInt8 = 0, payloadLength: UInt32 = 0) -> [UInt8] {
            var bytes: [UInt8] = [1, 16, 0, 0, 0, 1, 0, UInt8(subject.count)] + subject + [reply]
            if reply == 1 { bytes += [0, 1, UInt8(ascii: "r")] }
            bytes.append(headers)
            if headers == 1 { bytes += [0, 0, 0, 0] }
            bytes += [
                UInt8(payloadLength >> 24), UInt8((payloadLength >> 16) & 0xFF), UInt8((payloadLength >> 8) & 0xFF),
                UInt8(payloadLength & 0xFF),
            ]
            return bytes
        }
        #expect(Self.code(message(subject: Array("s".utf8), reply: 1, headers: 1)) == nil)
        #expect(Self.code(message(subject: Array("s".utf8), reply: 2)) == .badEnumValue)
        #expect(Self.code(message(subject: Array("s".utf8), headers: 7)) == .badEnumValue)
        #expect(Self.code(message(subject: Array("a..s".utf8))) == .invalidSubject)
        #expect(Self.code(message(subject: Array("s".utf8), payloadLength: 1)) == .truncated)
        #expect(Self.code(message(subject: Array("s".utf8), payloadLength: UInt32.max)) == .truncated)
    }

    @Test("20,000 mutated frames never trap; whatever decodes round-trips")
    func mutations() throws {
        var random = SeededRandom(seed: 11)
        let frames = Self.samples.map { RelayFrameCodec.encode($0) }.filter { $0.count < 10_000 }
        var accepted = 0
        var rejected: [RelayFrameError.Code: Int] = [:]
        for i in 0..<20_000 {
            var bytes = frames[i % frames.count]
            switch random.next() % 4 {
            case 0 where !bytes.isEmpty:
                let index = Int(random.next() % UInt64(bytes.count))
                bytes[index] ^= UInt8(truncatingIfNeeded: random.next() | 1)
            case 1:
                bytes = Array(bytes.prefix(Int(random.next() % UInt64(bytes.count + 1))))
            case 2:
                let index = Int(random.next() % UInt64(bytes.count + 1))
                bytes.insert(UInt8(truncatingIfNeeded: random.next()), at: index)
            default:
                if bytes.count > 6 {
                    bytes[2] = UInt8(truncatingIfNeeded: random.next())
                    bytes[5] = UInt8(truncatingIfNeeded: random.next())
                }
            }
            do {
                let frame = try RelayFrameCodec.decode(bytes)
                accepted += 1
                #expect(try RelayFrameCodec.decode(RelayFrameCodec.encode(frame)) == frame)
            } catch {
                rejected[error.code, default: 0] += 1
            }
        }
        #expect(accepted + rejected.values.reduce(0, +) == 20_000)
        #expect(rejected[.truncated, default: 0] > 1_000)
        #expect(accepted > 100, "some mutations stay valid (a changed payload byte)")
    }

    @Test("queued messages are split into frames of at most the configured size; a large one goes alone")
    func batching() {
        let small = RelayedMessage(subject: "s", payload: [UInt8](repeating: 1, count: 90))
        let large = RelayedMessage(subject: "l", payload: [UInt8](repeating: 2, count: 5_000))
        let frames = ClusterRelay<ContinuousClock>.frames(
            [small, small, small, large, small] + Array(repeating: small, count: 20),
            maximumBytes: 1_000
        )
        #expect(frames.map(\.count) == [3, 1, 10, 10, 1])
        for frame in frames where frame.count > 1 {
            #expect(RelayFrameCodec.encode(.messages(frame)).count <= 1_000)
        }
        #expect(ClusterRelay<ContinuousClock>.frames([], maximumBytes: 1_000).isEmpty)
    }
}
