import Foundation
import StorkCore
import StorkMembership
import StorkResources
import Testing

@testable import StorkCluster

/// Random but reproducible messages of every kind.
struct MessageGenerator {
    var random: SeededRandom

    mutating func int(_ range: Range<Int>) -> Int { range.lowerBound + Int(self.random.next() % UInt64(range.count)) }
    mutating func string(_ maximum: Int = 12) -> String {
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789-_.:/é✓")
        return String((0..<self.int(1..<maximum + 1)).map { _ in alphabet[self.int(0..<alphabet.count)] })
    }
    mutating func node() -> NodeID {
        NodeID(name: self.string(), address: "10.0.\(self.int(0..<255)).\(self.int(0..<255)):\(self.int(1..<65_535))", uid: self.random.next())
    }
    mutating func update() -> MemberUpdate {
        MemberUpdate(
            node: self.node(),
            status: MemberStatus(rawValue: UInt8(self.int(0..<4)))!,
            incarnation: self.random.next() >> 20,
            source: self.int(0..<2) == 0 ? nil : self.node()
        )
    }
    mutating func updates() -> [MemberUpdate] { (0..<self.int(0..<8)).map { _ in self.update() } }
    mutating func json(depth: Int = 0) -> JSONValue {
        switch self.int(0..<(depth > 2 ? 4 : 6)) {
        case 0: return .null
        case 1: return .bool(self.int(0..<2) == 0)
        case 2: return .number(Double(self.int(-1000..<1000)) / 4)
        case 3: return .string(self.string(20))
        case 4: return .array((0..<self.int(0..<4)).map { _ in self.json(depth: depth + 1) })
        default:
            return .object(Dictionary((0..<self.int(0..<4)).map { _ in (self.string(6), self.json(depth: depth + 1)) }, uniquingKeysWith: { a, _ in a }))
        }
    }
    mutating func resource() -> Resource {
        var attributes: [String: JSONValue] = [:]
        for _ in 0..<self.int(0..<5) { attributes[self.string(8)] = self.json() }
        return Resource(id: ResourceID("res-" + self.string()), attributes: attributes)
    }
    mutating func entry() -> DesiredEntry {
        let resource = self.resource()
        return DesiredEntry(
            id: resource.id,
            resource: self.int(0..<3) == 0 ? nil : resource,
            version: DesiredVersion(clock: self.random.next() >> 8, origin: self.string()),
            source: self.int(0..<2) == 0 ? nil : self.string()
        )
    }
    mutating func claims() -> [ClaimItem] {
        (0..<self.int(0..<6)).map { _ in ClaimItem(id: ResourceID(self.string()), round: self.random.next()) }
    }
    mutating func message(kind: Int) -> ClusterMessage {
        switch kind {
        case 0: return .membership(.ping(Ping(from: self.node(), sequence: self.random.next(), target: self.int(0..<2) == 0 ? nil : self.node(), updates: self.updates(), checksum: self.random.next())))
        case 1: return .membership(.ack(Ack(from: self.node(), sequence: self.random.next(), updates: self.updates(), checksum: self.random.next())))
        case 2: return .membership(.pingRequest(PingRequest(from: self.node(), sequence: self.random.next(), target: self.node(), updates: self.updates())))
        case 3: return .membership(.nack(Nack(from: self.node(), sequence: self.random.next())))
        case 4: return .membership(.gossip(Gossip(from: self.node(), updates: self.updates())))
        case 5: return .membership(.pushPull(PushPull(from: self.node(), isJoin: self.int(0..<2) == 0, isReply: self.int(0..<2) == 0, members: self.updates(), checksum: self.random.next())))
        case 6: return .ownership(.releaseRequest(from: self.node(), checksum: self.random.next(), items: self.claims()))
        case 7: return .ownership(.releaseConfirm(from: self.node(), items: self.claims()))
        case 8: return .ownership(.releaseRefuse(from: self.node(), checksum: self.random.next(), items: self.claims()))
        case 9: return .desired(.delta(from: self.node(), entries: (0..<self.int(0..<5)).map { _ in self.entry() }))
        case 10: return .desired(.digest(from: self.node(), digest: self.random.next()))
        case 11: return .desired(.state(from: self.node(), entries: (0..<self.int(0..<5)).map { _ in self.entry() }, digest: self.random.next(), isReply: self.int(0..<2) == 0))
        case 12:
            let items = (0..<self.int(0..<4)).map { _ in
                ForwardItem(requestID: self.random.next(), operation: self.int(0..<2) == 0 ? .allocate(self.entry()) : .deallocate(self.entry()))
            }
            return .forward(.request(from: self.node(), checksum: self.random.next(), items: items))
        default:
            let answers: [ForwardAnswer] = [.handled, .handleFailed(attempt: self.int(1..<9)), .terminated, .refused(checksum: self.random.next())]
            let replies = (0..<self.int(0..<5)).map { _ in ForwardReply(requestID: self.random.next(), answer: answers[self.int(0..<4)]) }
            return .forward(.reply(from: self.node(), replies: replies))
        }
    }
    static let kinds = 14
}

@Suite("Wire codec")
struct WireCodecTests {
    static let plain = WireSettings(clusterName: "stork", clusterKey: nil)
    static let keyed = WireSettings(clusterName: "stork", clusterKey: "s3cret")

    @Test("every message kind round-trips, with and without a cluster key", arguments: [false, true])
    func roundTrip(keyed: Bool) throws {
        let settings = keyed ? Self.keyed : Self.plain
        var generator = MessageGenerator(random: SeededRandom(seed: keyed ? 2 : 1))
        for i in 0..<2_000 {
            let message = generator.message(kind: i % MessageGenerator.kinds)
            let bytes = WireCodec.encode(message, senderUID: 7, sequence: UInt64(i), settings: settings)
            let frame = try WireCodec.decode(bytes, settings: settings)
            #expect(frame.message == message, "kind \(i % MessageGenerator.kinds)")
            #expect(frame.senderUID == 7 && frame.sequence == UInt64(i))
        }
    }

    @Test("a large state message (5,000 entries) round-trips")
    func largeState() throws {
        var generator = MessageGenerator(random: SeededRandom(seed: 3))
        let entries = (0..<5_000).map { _ in generator.entry() }
        let message = ClusterMessage.desired(.state(from: generator.node(), entries: entries, digest: 1, isReply: true))
        let bytes = WireCodec.encode(message, senderUID: 1, sequence: 1, settings: Self.plain)
        #expect(try WireCodec.decode(bytes, settings: Self.plain).message == message)
    }

    @Test("bad frames are rejected with the right reason")
    func rejections() {
        var generator = MessageGenerator(random: SeededRandom(seed: 4))
        let message = generator.message(kind: 0)
        let plain = WireCodec.encode(message, senderUID: 1, sequence: 1, settings: Self.plain)
        let keyed = WireCodec.encode(message, senderUID: 1, sequence: 1, settings: Self.keyed)
        func code(_ bytes: [UInt8], _ settings: WireSettings) -> WireError.Code? {
            do {
                _ = try WireCodec.decode(bytes, settings: settings)
                return nil
            } catch {
                return error.code
            }
        }
        #expect(code(Array(plain.prefix(10)), Self.plain) == .truncated)
        #expect(code([0x58] + plain.dropFirst(), Self.plain) == .badMagic)
        var version = plain
        version[3] = 9
        #expect(code(version, Self.plain) == .badVersion)
        #expect(code(plain, WireSettings(clusterName: "other", clusterKey: nil)) == .wrongCluster)
        #expect(code(plain, Self.keyed) == .missingMAC)
        #expect(code(keyed, Self.plain) == .unexpectedMAC)
        #expect(code(keyed, WireSettings(clusterName: "stork", clusterKey: "wrong")) == .badMAC)
        var forged = keyed
        forged[forged.count - 40] ^= 1
        #expect(code(forged, Self.keyed) == .badMAC)
        #expect(code(plain + [0], Self.plain) == .trailingBytes)
        let tiny = WireSettings(clusterName: "stork", clusterKey: nil, maximumFrameSize: 16)
        #expect(code(plain, tiny) == .oversized)
    }

    /// Decoders must never trap on hostile input: 100,000 random byte strings and 100,000 mutations of valid
    /// frames (bit flips, truncations, insertions, corrupted length and count fields).
    @Test("fuzz: random and mutated frames never crash the decoder")
    func fuzz() {
        var random = SeededRandom(seed: 99)
        var generator = MessageGenerator(random: SeededRandom(seed: 100))
        var accepted = 0
        var rejected = 0
        func feed(_ bytes: [UInt8], _ settings: WireSettings) {
            do {
                _ = try WireCodec.decode(bytes, settings: settings)
                accepted += 1
            } catch {
                rejected += 1
            }
        }
        for _ in 0..<100_000 {
            let length = Int(random.next() % 96)
            var bytes = (0..<length).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            // Half of them start like a frame, so that they get past the first checks.
            if random.next() % 2 == 0 { bytes = Array("STK".utf8) + [1, 0, 5] + Array("stork".utf8) + bytes }
            feed(bytes, Self.plain)
        }
        let valid = (0..<200).map { i in
            WireCodec.encode(generator.message(kind: i % MessageGenerator.kinds), senderUID: 1, sequence: 1, settings: Self.plain)
        }
        for i in 0..<100_000 {
            var bytes = valid[i % valid.count]
            switch random.next() % 5 {
            case 0:
                for _ in 0..<(1 + random.next() % 4) {
                    let index = Int(random.next() % UInt64(bytes.count))
                    bytes[index] ^= UInt8(1 << (random.next() % 8))
                }
            case 1:
                bytes = Array(bytes.prefix(Int(random.next() % UInt64(bytes.count))))
            case 2:
                let index = Int(random.next() % UInt64(bytes.count))
                bytes.insert(contentsOf: (0..<(1 + random.next() % 8)).map { _ in UInt8(truncatingIfNeeded: random.next()) }, at: index)
            case 3:
                // A length or count field set to something huge.
                let index = Int(random.next() % UInt64(max(1, bytes.count - 4)))
                bytes.replaceSubrange(index..<index + 4, with: [0xFF, 0xFF, 0xFF, UInt8(truncatingIfNeeded: random.next())])
            default:
                bytes.removeSubrange(Int(random.next() % UInt64(bytes.count))..<bytes.count)
                bytes += (0..<(random.next() % 32)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            }
            feed(bytes, Self.plain)
        }
        #expect(accepted + rejected == 200_000)
        #expect(rejected > 150_000)
    }
}
