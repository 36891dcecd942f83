import StorkCore
import StorkPlacement

// MARK: - Fixtures shared by the placement tests

enum PlacementFixtures {
    /// `count` nodes named `node-0`, `node-1`, … at `127.0.0.1:3000`, `127.0.0.1:3001`, …
    static func nodes(_ count: Int, from start: Int = 0) -> [NodeID] {
        (start..<start + count).map { NodeID(name: "node-\($0)", address: "127.0.0.1:\(3000 + $0)", uid: 1) }
    }

    /// A node given only as an address, as ringpop knows them.
    static func addressNode(_ address: String) -> NodeID {
        NodeID(name: address, address: address, uid: 0)
    }

    /// "resource-0" … "resource-99999".
    static let sequentialIDs: [ResourceID] = (0..<100_000).map { ResourceID("resource-\($0)") }

    /// 100,000 random UUID-shaped ids (version 4 layout) from a fixed seed.
    static let randomIDs: [ResourceID] = {
        var random = SeededRandom(seed: 0x5EED_0F_1D5)
        return (0..<100_000).map { _ in ResourceID(uuidLike(using: &random)) }
    }()

    /// Both id sets, by name, for parameterised tests.
    static func ids(_ name: String) -> [ResourceID] {
        name == "sequential" ? Self.sequentialIDs : Self.randomIDs
    }

    static func uuidLike(using random: inout SeededRandom) -> String {
        let high = random.next()
        let low = random.next()
        let hex = Array("0123456789abcdef".utf8)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(36)
        var nibbles: [UInt8] = []
        for shift in stride(from: 60, through: 0, by: -4) { nibbles.append(UInt8((high >> UInt64(shift)) & 0xF)) }
        for shift in stride(from: 60, through: 0, by: -4) { nibbles.append(UInt8((low >> UInt64(shift)) & 0xF)) }
        nibbles[12] = 4  // version
        nibbles[16] = 8 | (nibbles[16] & 3)  // variant
        for (index, nibble) in nibbles.enumerated() {
            if index == 8 || index == 12 || index == 16 || index == 20 { bytes.append(UInt8(ascii: "-")) }
            bytes.append(hex[Int(nibble)])
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
