import Crypto
import StorkCore
import StorkMembership
import StorkResources
import Testing

@testable import StorkCluster

/// The code of the error `body` throws, or nil when it succeeds.
func wireErrorCode(_ body: () throws(WireError) -> Void) -> WireError.Code? {
    do {
        try body()
        return nil
    } catch {
        return error.code
    }
}

@Suite("Wire codec")
struct WireCodecTests {
    static let plain = WireSettings(clusterName: "stork", clusterKey: nil)
    static let keyed = WireSettings(clusterName: "stork", clusterKey: "correct horse battery staple")
    static let header = WireHeader(senderUID: 0xDEAD_BEEF, sequence: 42, isDatagram: false)

    static func decodeCode(_ bytes: [UInt8], _ settings: WireSettings = Self.plain) -> WireError.Code? {
        wireErrorCode { () throws(WireError) in _ = try WireCodec.decode(bytes, settings: settings) }
    }

    /// A frame around a hand-written body (to build invalid bodies with a valid header).
    static func frame(_ kind: WireCodec.Kind, _ body: (inout WireWriter) -> Void) -> [UInt8] {
        var writer = WireWriter()
        body(&writer)
        return try! WireCodec.assemble(kind: kind.rawValue, body: writer.bytes, header: Self.header, settings: Self.plain)
    }

    // MARK: Round trips

    @Test("every message kind round-trips, with random values, with and without a key", arguments: [false, true])
    func roundTrip(keyed: Bool) throws {
        let settings = keyed ? Self.keyed : Self.plain
        var generator = MessageGenerator(seed: keyed ? 2 : 1)
        var seen = Set<WireCodec.Kind>()
        var longest = 0
        for i in 0..<1_400 {
            let message = generator.message(kind: i)
            let header = WireHeader(senderUID: generator.u64(), sequence: UInt64(i), isDatagram: i % 3 == 0)
            let bytes = try WireCodec.encode(message, header: header, settings: settings)
            let frame = try WireCodec.decode(bytes, settings: settings)
            #expect(frame.message == message, "kind \(WireCodec.Kind.allCases[i % MessageGenerator.kinds])")
            #expect(frame.header == header)
            seen.insert(MessageGenerator.kind(of: message))
            longest = max(longest, bytes.count)
        }
        #expect(seen == Set(WireCodec.Kind.allCases))
        #expect(longest > 20_000, "some messages carry long lists")
    }

    @Test("a full state of 5,000 desired entries round-trips")
    func largeState() throws {
        var generator = MessageGenerator(seed: 3)
        let entries = (0..<5_000).map { _ in generator.entry() }
        let message = ClusterMessage.desired(.state(from: generator.node(), entries: entries, digest: 1, isReply: true))
        let bytes = try WireCodec.encode(message, header: Self.header, settings: Self.keyed)
        #expect(bytes.count > 500_000)
        #expect(try WireCodec.decode(bytes, settings: Self.keyed).message == message)
    }

    @Test("the frame layout: magic, version, flags, cluster, uid, sequence, kind, body length, body, MAC")
    func layout() throws {
        let message = ClusterMessage.desired(.digest(from: NodeID(name: "n", address: "a", uid: 2), digest: 3))
        let header = WireHeader(senderUID: 0x0102_0304_0506_0708, sequence: 9, isDatagram: true)
        let bytes = try WireCodec.encode(message, header: header, settings: Self.keyed)
        let body: [UInt8] = [1, UInt8(ascii: "n"), 1, UInt8(ascii: "a"), 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3]
        let expected: [UInt8] =
            Array("STK".utf8) + [1, 0b11, 5] + Array("stork".utf8) + [1, 2, 3, 4, 5, 6, 7, 8] + [0, 0, 0, 0, 0, 0, 0, 9]
            + [33] + [0, 0, 0, UInt8(body.count)] + body
        #expect(Array(bytes.prefix(expected.count)) == expected)
        let mac = HMAC<SHA256>.authenticationCode(
            for: expected,
            using: SymmetricKey(data: SHA256.hash(data: Array("correct horse battery staple".utf8)))
        )
        #expect(Array(bytes.suffix(32)) == Array(mac))
        #expect(bytes.count == expected.count + 32)
    }

    // MARK: Limits when encoding

    @Test("fields at their limits encode; one byte more is refused")
    func encodingLimits() throws {
        func encode(_ message: ClusterMessage, _ settings: WireSettings = Self.plain) -> WireError.Code? {
            wireErrorCode { () throws(WireError) in _ = try WireCodec.encode(message, header: Self.header, settings: settings) }
        }
        func node(name: Int = 1, address: Int = 1) -> NodeID {
            NodeID(name: String(repeating: "n", count: name), address: String(repeating: "a", count: address), uid: 1)
        }
        func claim(_ bytes: Int) -> ClusterMessage {
            .ownership(.releaseConfirm(from: node(), items: [ClaimItem(id: ResourceID(String(repeating: "r", count: bytes)), round: 1)]))
        }
        #expect(encode(.membership(.nack(Nack(from: node(name: 255, address: 255), sequence: 1)))) == nil)
        #expect(encode(.membership(.nack(Nack(from: node(name: 256), sequence: 1)))) == .fieldTooLong)
        #expect(encode(.membership(.nack(Nack(from: node(address: 256), sequence: 1)))) == .fieldTooLong)
        #expect(encode(claim(1024)) == nil)
        #expect(encode(claim(1025)) == .fieldTooLong)
        let nan = Resource(id: "r", attributes: ["x": .number(.nan)])
        let entry = DesiredEntry(id: "r", resource: nan, version: DesiredVersion(clock: 1, origin: "o"))
        #expect(encode(.desired(.delta(from: node(), entries: [entry]))) == .invalidJSON)
        let long = WireSettings(clusterName: String(repeating: "c", count: 65), clusterKey: nil)
        #expect(encode(claim(1), long) == .fieldTooLong)
        let tiny = WireSettings(clusterName: "stork", clusterKey: nil, maximumFrameSize: 100)
        #expect(encode(claim(100), tiny) == .oversized)
    }

    // MARK: Rejections

    @Test("each kind of bad frame is rejected with its own code")
    func rejections() throws {
        var generator = MessageGenerator(seed: 4)
        let message = generator.message(kind: 0)
        let plain = try WireCodec.encode(message, header: Self.header, settings: Self.plain)
        let keyed = try WireCodec.encode(message, header: Self.header, settings: Self.keyed)
        let nameEnd = 6 + 5

        #expect(Self.decodeCode(plain) == nil)
        #expect(Self.decodeCode([]) == .truncated)
        #expect(Self.decodeCode(Array(plain.prefix(10))) == .truncated)
        #expect(Self.decodeCode(Array(plain.dropLast())) == .truncated)
        #expect(Self.decodeCode(plain, WireSettings(clusterName: "stork", clusterKey: nil, maximumFrameSize: 64)) == .oversized)
        #expect(Self.decodeCode(Array("XTK".utf8) + plain.dropFirst(3)) == .badMagic)
        var version = plain
        version[3] = 2
        #expect(Self.decodeCode(version) == .badVersion)
        var flags = plain
        flags[4] = 0b100
        #expect(Self.decodeCode(flags) == .badFlags)
        #expect(Self.decodeCode(plain, WireSettings(clusterName: "storm", clusterKey: nil)) == .wrongCluster)
        #expect(Self.decodeCode(plain, WireSettings(clusterName: "", clusterKey: nil)) == .wrongCluster)
        #expect(Self.decodeCode(plain, Self.keyed) == .missingMAC)
        #expect(Self.decodeCode(keyed, Self.plain) == .unexpectedMAC)
        #expect(Self.decodeCode(keyed, WireSettings(clusterName: "stork", clusterKey: "wrong")) == .badMAC)
        var forgedBody = keyed
        forgedBody[forgedBody.count - 40] ^= 1
        #expect(Self.decodeCode(forgedBody, Self.keyed) == .badMAC)
        var forgedMAC = keyed
        forgedMAC[forgedMAC.count - 1] ^= 0x80
        #expect(Self.decodeCode(forgedMAC, Self.keyed) == .badMAC)
        var forgedSequence = keyed
        forgedSequence[nameEnd + 15] ^= 1
        #expect(Self.decodeCode(forgedSequence, Self.keyed) == .badMAC)
        var forgedChannel = keyed
        forgedChannel[4] |= WireCodec.flagDatagram
        #expect(Self.decodeCode(forgedChannel, Self.keyed) == .badMAC)
        #expect(Self.decodeCode(Array(keyed.dropLast(5)), Self.keyed) == .truncated)
        #expect(Self.decodeCode(plain + [0]) == .trailingBytes)
        #expect(Self.decodeCode(keyed + [0], Self.keyed) == .trailingBytes)
        var unknown = plain
        unknown[nameEnd + 16] = 99
        #expect(Self.decodeCode(unknown) == .unknownKind)
    }

    @Test("bad bodies behind a valid header are rejected with their own code")
    func badBodies() {
        let node: (inout WireWriter) -> Void = { w in
            w.u8(1)
            w.bytes += Array("n".utf8)
            w.u8(1)
            w.bytes += Array("a".utf8)
            w.u64(1)
        }
        // A gossip with one update whose status is 7.
        #expect(Self.decodeCode(Self.frame(.gossip) { w in
            node(&w)
            w.u32(1)
            node(&w)
            w.u8(7)
            w.u64(1)
            w.u8(0)
        }) == .badEnumValue)
        // A boolean that is 2, an optional marker that is 5, an unknown forward operation and answer.
        #expect(Self.decodeCode(Self.frame(.pushPull) { w in
            node(&w)
            w.u8(2)
        }) == .badEnumValue)
        #expect(Self.decodeCode(Self.frame(.ping) { w in
            node(&w)
            w.u64(1)
            w.u8(5)
        }) == .badEnumValue)
        #expect(Self.decodeCode(Self.frame(.forwardReply) { w in
            node(&w)
            w.u32(1)
            w.u64(1)
            w.u8(9)
        }) == .badEnumValue)
        // A node name that is not UTF-8.
        #expect(Self.decodeCode(Self.frame(.nack) { w in
            w.u8(2)
            w.bytes += [0xC3, 0x28]
            w.u8(0)
            w.u64(1)
            w.u64(1)
        }) == .invalidUTF8)
        // A resource id longer than 1,024 bytes.
        #expect(Self.decodeCode(Self.frame(.releaseConfirm) { w in
            node(&w)
            w.u32(1)
            w.u16(2000)
            w.bytes += [UInt8](repeating: 0x61, count: 2000)
            w.u64(1)
        }) == .fieldTooLong)
        // A list count that the bytes left cannot hold.
        #expect(Self.decodeCode(Self.frame(.desiredDelta) { w in
            node(&w)
            w.u32(UInt32.max)
        }) == .countTooLarge)
        #expect(Self.decodeCode(Self.frame(.gossip) { w in
            node(&w)
            w.u32(3)
            node(&w)
        }) == .countTooLarge)
        // Bytes after the message.
        #expect(Self.decodeCode(Self.frame(.nack) { w in
            node(&w)
            w.u64(1)
            w.u8(0)
        }) == .trailingBytes)
        // A body cut short.
        #expect(Self.decodeCode(Self.frame(.ack) { w in
            node(&w)
            w.u32(0)
        }) == .truncated)
    }

    // MARK: Relay frames

    @Test("a relay frame carries its sender and opaque bytes: layout, empty and large payloads, with and without a key")
    func relayRoundTrip() throws {
        let from = NodeID(name: "n", address: "a", uid: 2)
        let message = ClusterMessage.relay(RelayMessage(from: from, payload: [0, 0xFF, 7]))
        let (kind, body) = try WireCodec.encodeBody(message)
        #expect(kind == .relay)
        #expect(kind.rawValue == 64)
        #expect(body == [1, UInt8(ascii: "n"), 1, UInt8(ascii: "a"), 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0xFF, 7])
        for settings in [Self.plain, Self.keyed] {
            for payload in [[], [UInt8](repeating: 0xAB, count: 1 << 20)] as [[UInt8]] {
                let relay = ClusterMessage.relay(RelayMessage(from: from, payload: payload))
                let bytes = try WireCodec.encode(relay, header: Self.header, settings: settings)
                #expect(try WireCodec.decode(bytes, settings: settings).message == relay)
            }
        }
        let tiny = WireSettings(clusterName: "stork", clusterKey: nil, maximumFrameSize: 1024)
        let big = ClusterMessage.relay(RelayMessage(from: from, payload: [UInt8](repeating: 1, count: 1024)))
        #expect(wireErrorCode { () throws(WireError) in _ = try WireCodec.encode(big, header: Self.header, settings: tiny) } == .oversized)
    }

    @Test("malformed relay frames are rejected: cut payload, hostile length, trailing bytes, forged MAC")
    func relayRejections() throws {
        func node(_ w: inout WireWriter) {
            w.u8(1)
            w.bytes += Array("n".utf8)
            w.u8(1)
            w.bytes += Array("a".utf8)
            w.u64(1)
        }
        #expect(Self.decodeCode(Self.frame(.relay) { w in
            node(&w)
            w.u32(4)
            w.bytes += [1, 2, 3, 4]
        }) == nil)
        #expect(Self.decodeCode(Self.frame(.relay) { w in
            node(&w)
            w.u32(5)
            w.bytes += [1, 2, 3, 4]
        }) == .truncated)
        #expect(Self.decodeCode(Self.frame(.relay) { w in
            node(&w)
            w.u32(UInt32.max)
        }) == .truncated)
        #expect(Self.decodeCode(Self.frame(.relay) { w in
            node(&w)
            w.u32(1)
            w.bytes += [1, 2]
        }) == .trailingBytes)
        #expect(Self.decodeCode(Self.frame(.relay) { w in
            w.u8(1)
            w.bytes += [0xC3]
        }) == .invalidUTF8)
        #expect(Self.decodeCode(Self.frame(.relay) { w in node(&w) }) == .truncated)
        let relay = ClusterMessage.relay(RelayMessage(from: NodeID(name: "n", address: "a", uid: 1), payload: [9, 9, 9]))
        var keyed = try WireCodec.encode(relay, header: Self.header, settings: Self.keyed)
        keyed[keyed.count - 33] ^= 1
        #expect(Self.decodeCode(keyed, Self.keyed) == .badMAC, "a changed payload byte breaks the MAC")
        let plain = try WireCodec.encode(relay, header: Self.header, settings: Self.plain)
        #expect(Self.decodeCode(plain, Self.keyed) == .missingMAC, "relay frames are authenticated like every frame")
    }

    static func entryFrame(id: String, json: [UInt8]) -> [UInt8] {
        Self.frame(.desiredDelta) { w in
            w.u8(1)
            w.bytes += Array("n".utf8)
            w.u8(0)
            w.u64(1)
            w.u32(1)
            w.u16(UInt16(id.utf8.count))
            w.bytes += Array(id.utf8)
            w.u8(1)
            w.u32(UInt32(json.count))
            w.bytes += json
            w.u64(1)
            w.u16(1)
            w.bytes += Array("o".utf8)
            w.u8(0)
        }
    }

    @Test("resource JSON: valid, malformed, not an object, without an id, another id, too deep")
    func resourceJSON() {
        func code(_ json: String, id: String = "r1") -> WireError.Code? {
            Self.decodeCode(Self.entryFrame(id: id, json: Array(json.utf8)))
        }
        #expect(code(#"{"id":"r1","a":{"b":[1,2,{"c":null}]}}"#) == nil)
        #expect(code(#"{"id":"r1","a":"[[[[{{{{"}"#) == nil, "brackets inside strings do not count")
        #expect(code(#"{"id":"r1","#) == .invalidJSON)
        #expect(code(#"["id","r1"]"#) == .invalidJSON)
        #expect(code(#"{"name":"x"}"#) == .invalidJSON)
        #expect(code(#"{"id":7}"#) == .invalidJSON)
        #expect(code(#"{"id":""}"#, id: "") == .invalidJSON)
        #expect(code(#"{"id":"r2"}"#) == .badValue)
        #expect(code("\u{FF}") == .invalidJSON)
        let deep = #"{"id":"r1","a":"# + String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000) + "}"
        #expect(code(deep) == .invalidJSON)
        let limit = #"{"id":"r1","a":"# + String(repeating: "[", count: 63) + String(repeating: "]", count: 63) + "}"
        #expect(code(limit) == nil, "64 levels (the object and 63 arrays) are allowed")
    }
}
