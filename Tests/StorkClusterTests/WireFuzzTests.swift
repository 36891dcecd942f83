import StorkCore
import Testing

@testable import StorkCluster

/// Hostile input never crashes the decoder: it returns a message or throws a `WireError`. A trap would end the test
/// process, so finishing the loops is the proof; the counts show the inputs reached every layer of the decoder.
@Suite("Wire codec fuzzing")
struct WireFuzzTests {
    static let plain = WireSettings(clusterName: "stork", clusterKey: nil)
    static let keyed = WireSettings(clusterName: "stork", clusterKey: "fuzz")

    struct Tally {
        var accepted = 0
        var rejected: [WireError.Code: Int] = [:]
        var total: Int { self.accepted + self.rejected.values.reduce(0, +) }

        /// Decodes; when that succeeds, the message must survive another round trip unchanged.
        mutating func feed(_ bytes: [UInt8], _ settings: WireSettings) {
            do {
                let frame = try WireCodec.decode(bytes, settings: settings)
                self.accepted += 1
                let again = try WireCodec.encode(frame.message, header: frame.header, settings: settings)
                #expect(try WireCodec.decode(again, settings: settings) == frame)
            } catch {
                self.rejected[error.code, default: 0] += 1
            }
        }
    }

    static func randomBytes(_ count: Int, _ random: inout SeededRandom) -> [UInt8] {
        (0..<count).map { _ in UInt8(truncatingIfNeeded: random.next()) }
    }

    @Test("100,000 random byte strings")
    func randomInput() {
        var random = SeededRandom(seed: 99)
        var tally = Tally()
        let clock = ContinuousClock()
        let elapsed = clock.measure {
            for i in 0..<100_000 {
                var bytes = Self.randomBytes(Int(random.next() % 160), &random)
                // Most start like a frame of this cluster so that they get past the first checks: a header with a
                // random kind and a body length that often matches, then random body bytes.
                if i % 4 != 0 {
                    let flags: UInt8 = i % 8 == 1 ? 1 : 0
                    var header = Array("STK".utf8) + [1, flags, 5] + Array("stork".utf8)
                    header += Self.randomBytes(16, &random)
                    let kinds = WireCodec.Kind.allCases
                    header.append(i % 16 == 3 ? UInt8(truncatingIfNeeded: random.next()) : kinds[i % kinds.count].rawValue)
                    let length = i % 3 == 0 ? UInt32(truncatingIfNeeded: random.next()) : UInt32(bytes.count)
                    header += [UInt8(length >> 24), UInt8((length >> 16) & 0xFF), UInt8((length >> 8) & 0xFF), UInt8(length & 0xFF)]
                    bytes = header + bytes
                }
                tally.feed(bytes, i % 8 == 1 ? Self.keyed : Self.plain)
            }
        }
        print("fuzz: 100,000 random inputs in \(elapsed): \(tally.accepted) accepted, rejected \(tally.rejected)")
        #expect(tally.total == 100_000)
        // The inputs reached the body decoder, not only the header checks.
        #expect(tally.rejected[.truncated, default: 0] > 1_000)
        #expect(tally.rejected[.unknownKind, default: 0] > 100)
        #expect(tally.rejected[.invalidUTF8, default: 0] > 1_000, "bodies were read field by field")
    }

    @Test("100,000 mutations of valid frames: bit flips, truncations, insertions, deletions, corrupted lengths")
    func mutations() throws {
        var random = SeededRandom(seed: 7)
        var generator = MessageGenerator(seed: 8)
        var bodies: [(WireCodec.Kind, [UInt8])] = []
        while bodies.count < 300 {
            let message = generator.message(kind: bodies.count)
            let (kind, body) = try WireCodec.encodeBody(message)
            if body.count < 4_000 { bodies.append((kind, body)) }  // keep the loop fast; sizes still vary widely
        }
        let header = WireHeader(senderUID: 1, sequence: 1, isDatagram: false)
        let frames = try bodies.enumerated().map { index, entry in
            try WireCodec.assemble(
                kind: entry.0.rawValue,
                body: entry.1,
                header: header,
                settings: index % 5 == 0 ? Self.keyed : Self.plain
            )
        }

        func mutate(_ input: [UInt8], _ random: inout SeededRandom) -> [UInt8] {
            var bytes = input
            guard !bytes.isEmpty else { return Self.randomBytes(8, &random) }
            let count = UInt64(bytes.count)
            switch random.next() % 7 {
            case 0:  // bit flips
                for _ in 0..<(1 + random.next() % 4) { bytes[Int(random.next() % count)] ^= 1 << (random.next() % 8) }
            case 1:  // truncation
                bytes.removeLast(Int(1 + random.next() % count))
            case 2:  // insertion
                bytes.insert(contentsOf: Self.randomBytes(Int(1 + random.next() % 16), &random), at: Int(random.next() % count))
            case 3:  // deletion of a range
                let start = Int(random.next() % count)
                bytes.removeSubrange(start..<min(bytes.count, start + Int(1 + random.next() % 16)))
            case 4:  // a length or count field set to an extreme or random value
                let at = Int(random.next() % UInt64(max(1, bytes.count - 4)))
                let values: [[UInt8]] = [[0xFF, 0xFF, 0xFF, 0xFF], [0x7F, 0xFF, 0xFF, 0xFF], [0, 0, 0, 0], [0, 0, 0xFF, 0xFF]]
                let value = random.next() % 5 == 4 ? Self.randomBytes(4, &random) : values[Int(random.next() % 4)]
                bytes.replaceSubrange(at..<min(bytes.count, at + 4), with: value)
            case 5:  // a duplicated slice
                let start = Int(random.next() % count)
                let slice = bytes[start..<min(bytes.count, start + Int(1 + random.next() % 32))]
                bytes.insert(contentsOf: slice, at: Int(random.next() % count))
            default:  // one random byte replaced
                bytes[Int(random.next() % count)] = UInt8(truncatingIfNeeded: random.next())
            }
            return bytes
        }

        var tally = Tally()
        let clock = ContinuousClock()
        let elapsed = try clock.measure {
            for i in 0..<100_000 {
                let index = i % frames.count
                let settings = index % 5 == 0 ? Self.keyed : Self.plain
                if i % 2 == 0 {
                    // The whole frame: header, lengths and MAC.
                    tally.feed(mutate(frames[index], &random), settings)
                } else {
                    // The body only, behind a valid header (and a valid MAC): every mutation reaches the body
                    // decoder.
                    let (kind, body) = bodies[index]
                    let frame = try WireCodec.assemble(
                        kind: kind.rawValue,
                        body: mutate(body, &random),
                        header: header,
                        settings: settings
                    )
                    tally.feed(frame, settings)
                }
            }
        }
        print("fuzz: 100,000 mutated frames in \(elapsed): \(tally.accepted) accepted, rejected \(tally.rejected)")
        #expect(tally.total == 100_000)
        #expect(tally.accepted > 1_000, "some mutations still decode (and then round-trip)")
        for code: WireError.Code in [.truncated, .badMAC, .countTooLarge, .badEnumValue, .trailingBytes, .invalidUTF8] {
            #expect(tally.rejected[code, default: 0] > 0, "no mutation was rejected as \(code)")
        }
    }
}
