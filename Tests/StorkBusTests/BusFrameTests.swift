import NIOCore
import StorkCore
import StorkBus
import StorkNATS
import Testing

@testable import StorkBusCluster

@Suite("Bus frames")
struct BusFrameTests {
    static func code(_ bytes: [UInt8]) -> BusFrameError.Code? {
        do {
            _ = try BusFrameCodec.decode(bytes)
            return nil
        } catch {
            return error.code
        }
    }

    static let samples: [BusFrame] = [
        .interest(.delta(version: 7, added: ["users.alice.>", "a.*.c"], removed: ["x"])),
        .interest(.delta(version: UInt64.max, added: [], removed: [])),
        .interest(.snapshot(version: 0, patterns: [])),
        .interest(.snapshot(version: 3, patterns: ["日本.>", String(repeating: "s", count: 4096)])),
        .interest(.delta(version: 8, added: ["jobs.> workers", "a.b q-1"], removed: ["x.* q"])),
        .interest(.digest(version: 42)),
        .interest(.pull),
        .messages(recipient: 0, []),
        .node(clientURL: "127.0.0.1:4222"),
        .node(clientURL: nil),
        .messages(recipient: 0x0102_0304_0506_0708, [
            BusRoutedMessage(subject: "users.alice.events", payload: Array("hello".utf8)),
            BusRoutedMessage(
                subject: "a.b",
                replyTo: "_INBOX.x.y",
                headers: Array("NATS/1.0\r\nA: b\r\n\r\n".utf8),
                payload: []
            ),
            BusRoutedMessage(subject: "big", payload: [UInt8](repeating: 0xFE, count: 100_000)),
            BusRoutedMessage(subject: "jobs.1", payload: [1], groups: ["workers", "audit"]),
            // A JetStream delivery: the stream's subject, routed to a pull request's inbox.
            BusRoutedMessage(
                subject: "orders.new",
                replyTo: "$JS.ACK.ORDERS.c.1.1.1.0.0",
                payload: [2],
                routingSubject: "_INBOX.n3.abc"
            ),
            BusRoutedMessage(subject: "orders.new", payload: [3], routingSubject: "deliver.here"),
        ]),
    ]

    @Test("every frame kind round-trips")
    func roundTrip() throws {
        for frame in Self.samples {
            #expect(try BusFrameCodec.decode(BusFrameCodec.encode(frame)) == frame)
        }
    }

    @Test("the layout: version, kind, body")
    func layout() {
        #expect(BusFrameCodec.encode(.interest(.pull)) == [2, 4])
        #expect(BusFrameCodec.encode(.interest(.digest(version: 258))) == [2, 3, 0, 0, 0, 0, 0, 0, 1, 2])
        #expect(
            BusFrameCodec.encode(.messages(recipient: 7, [BusRoutedMessage(subject: "s", payload: [9])]))
                == [2, 16, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 1, 0, 1, UInt8(ascii: "s"), 0, 0, 0, 0, 0, 1, 9, 0, 0]
        )
        #expect(
            BusFrameCodec.encode(.messages(recipient: 0, [BusRoutedMessage(subject: "s", payload: [], groups: ["q"])]))
                == [2, 16] + [UInt8](repeating: 0, count: 8)
                + [0, 0, 0, 1, 0, 1, UInt8(ascii: "s"), 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, UInt8(ascii: "q")]
        )
        let message = BusRoutedMessage(subject: "ab", replyTo: "r", headers: [1, 2], payload: [3])
        #expect(
            BusFrameCodec.encode(.messages(recipient: 1, [message])).count
                == BusFrameCodec.messagesOverhead + message.encodedSize
        )
        #expect(BusFrameCodec.encode(.node(clientURL: "h:1")) == [2, 8, 1, 0, 3, UInt8(ascii: "h"), UInt8(ascii: ":"), UInt8(ascii: "1")])
    }

    @Test("malformed frames are refused with their own code")
    func rejections() {
        #expect(Self.code([]) == .truncated)
        #expect(Self.code([1, 4]) == .badVersion, "the relay's format 1 is not spoken any more")
        #expect(Self.code([2, 99]) == .unknownKind)
        #expect(Self.code([2, 4, 0]) == .trailingBytes)
        #expect(Self.code([2, 3, 0, 0]) == .truncated)
        // A snapshot announcing 2^32-1 patterns in 4 bytes.
        #expect(Self.code([2, 2] + [UInt8](repeating: 0, count: 8) + [0xFF, 0xFF, 0xFF, 0xFF]) == .countTooLarge)
        func snapshot(_ pattern: [UInt8]) -> [UInt8] {
            [2, 2] + [UInt8](repeating: 0, count: 8) + [0, 0, 0, 1, UInt8(pattern.count >> 8), UInt8(pattern.count & 0xFF)]
                + pattern
        }
        #expect(Self.code(snapshot(Array("ok.>".utf8))) == nil)
        #expect(Self.code(snapshot(Array("ok.> workers".utf8))) == nil)
        #expect(Self.code(snapshot(Array("a.>.b".utf8))) == .invalidSubject)
        #expect(Self.code(snapshot(Array("a..b".utf8))) == .invalidSubject)
        #expect(Self.code(snapshot(Array("a b.c".utf8))) == .invalidSubject, "a queue group is one token")
        #expect(Self.code(snapshot(Array("a b c".utf8))) == .invalidSubject)
        #expect(Self.code(snapshot(Array("a ".utf8))) == .invalidSubject)
        #expect(Self.code(snapshot([])) == .invalidSubject)
        #expect(Self.code(snapshot([0xC3, 0x28])) == .invalidUTF8)
        #expect(Self.code(snapshot([UInt8](repeating: 0x61, count: 4097))) == .invalidSubject)
        func message(
            subject: [UInt8],
            reply: UInt8 = 0,
            headers: UInt8 = 0,
            payloadLength: UInt32 = 0,
            group: [UInt8]? = nil
        ) -> [UInt8] {
            var bytes: [UInt8] = [2, 16] + [UInt8](repeating: 0, count: 8) + [0, 0, 0, 1, 0, UInt8(subject.count)]
                + subject + [reply]
            if reply == 1 { bytes += [0, 1, UInt8(ascii: "r")] }
            bytes.append(headers)
            if headers == 1 { bytes += [0, 0, 0, 0] }
            bytes += [
                UInt8(payloadLength >> 24), UInt8((payloadLength >> 16) & 0xFF), UInt8((payloadLength >> 8) & 0xFF),
                UInt8(payloadLength & 0xFF),
            ]
            if let group { bytes += [0, 1, 0, UInt8(group.count)] + group } else { bytes += [0, 0] }
            return bytes
        }
        #expect(Self.code(message(subject: Array("s".utf8), reply: 1, headers: 1)) == nil)
        #expect(Self.code(message(subject: Array("s".utf8), reply: 4)) == .badEnumValue)
        #expect(Self.code(message(subject: Array("s".utf8), reply: 2)) == .invalidSubject, "a routing subject must follow")
        #expect(Self.code(message(subject: Array("s".utf8), headers: 7)) == .badEnumValue)
        #expect(Self.code(message(subject: Array("a..s".utf8))) == .invalidSubject)
        #expect(Self.code(message(subject: Array("s".utf8), payloadLength: 1)) == .truncated)
        #expect(Self.code(message(subject: Array("s".utf8), payloadLength: UInt32.max)) == .truncated)
        #expect(Self.code(message(subject: Array("s".utf8), group: Array("workers".utf8))) == nil)
        #expect(Self.code(message(subject: Array("s".utf8), group: Array("a.b".utf8))) == .invalidSubject)
        #expect(Self.code(message(subject: Array("s".utf8), group: [])) == .invalidSubject)
        func node(_ url: String) -> [UInt8] { [2, 8, 1, 0, UInt8(url.utf8.count)] + Array(url.utf8) }
        #expect(Self.code(node("127.0.0.1:4222")) == nil)
        #expect(Self.code(node("127.0.0.1:0")) == .invalidSubject)
        #expect(Self.code(node("no port")) == .invalidSubject)
        #expect(Self.code(node(":4222")) == .invalidSubject)
        #expect(Self.code([2, 8, 2]) == .badEnumValue)
    }

    @Test("20,000 mutated frames never trap; whatever decodes round-trips")
    func mutations() throws {
        var random = SeededRandom(seed: 11)
        let frames = Self.samples.map { BusFrameCodec.encode($0) }.filter { $0.count < 10_000 }
        var accepted = 0
        var rejected: [BusFrameError.Code: Int] = [:]
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
                let frame = try BusFrameCodec.decode(bytes)
                accepted += 1
                #expect(try BusFrameCodec.decode(BusFrameCodec.encode(frame)) == frame)
            } catch {
                rejected[error.code, default: 0] += 1
            }
        }
        #expect(accepted + rejected.values.reduce(0, +) == 20_000)
        #expect(rejected[.truncated, default: 0] > 1_000)
        #expect(accepted > 100, "some mutations stay valid (a changed payload byte)")
    }

    @Test("a link hands out what it queued in frames of at most the configured size; a large message goes alone")
    func batching() throws {
        var configuration = BusClusterConfiguration()
        configuration.maximumQueuedBytes = 1 << 20
        configuration.maximumFrameBytes = 1_000
        let link = BusPeerLink(node: NodeID(name: "b", address: "b:1", uid: 1), configuration: configuration)
        func message(_ size: Int) -> BusMessage {
            BusMessage(subject: "s", payload: ByteBuffer(repeating: 1, count: size))
        }
        for size in [90, 90, 90, 5_000] + Array(repeating: 90, count: 21) {
            #expect(link.forward(message(size), groups: []))
        }
        var frames: [Int] = []
        while let batch = link.take() {
            guard case .messages(let recipient, let messages) = try BusFrameCodec.decode(batch.frame) else {
                Issue.record("not a messages frame")
                break
            }
            #expect(recipient == 1)
            #expect(messages.count == batch.count)
            frames.append(messages.count)
            if messages.count > 1 { #expect(batch.frame.count <= 1_000 + BusFrameCodec.messagesOverhead) }
            link.sent()
        }
        #expect(frames == [3, 1, 9, 9, 3], "at most 9 messages of 101 bytes after 14 bytes of frame")
        #expect(link.queuedBytes == 0)
    }
}
