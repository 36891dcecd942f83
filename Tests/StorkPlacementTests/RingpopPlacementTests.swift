import StorkCore
import StorkPlacement
import Testing

@Suite("Placement: ringpop-compatible ring")
struct RingpopPlacementTests {
    static let addresses = ["127.0.0.1:3000", "127.0.0.1:3001", "127.0.0.1:3002"]
    static let placement = Placement(strategy: .ringpop, nodes: addresses.map(PlacementFixtures.addressNode))

    /// ringpop's checksum: Fingerprint32 of the sorted addresses joined by ";".
    @Test func checksumMatchesRingpop() {
        #expect(Self.placement.checksum == 742_371_003)
        let shuffled = Placement(
            strategy: .ringpop,
            nodes: Self.addresses.reversed().map(PlacementFixtures.addressNode)
        )
        #expect(shuffled.checksum == 742_371_003)
    }

    @Test(
        "owners match ringpop",
        arguments: [
            ("1", "127.0.0.1:3001"),
            ("2", "127.0.0.1:3001"),
            ("3", "127.0.0.1:3001"),
            ("4", "127.0.0.1:3002"),
            ("5", "127.0.0.1:3000"),
            ("6", "127.0.0.1:3000"),
            ("resource-1", "127.0.0.1:3002"),
        ]
    )
    func ownersMatchRingpop(id: String, owner: String) {
        #expect(Self.placement.owner(of: ResourceID(id))?.address == owner)
    }

    /// ringpop-common's "full lookup" test: the key `address + String(i)` is exactly the string hashed for replica
    /// point i, so it maps to that member, unless another member has a point with the same hash and a smaller address.
    @Test(arguments: [3, 10, 50])
    func fullLookup(memberCount: Int) {
        let nodes = PlacementFixtures.nodes(memberCount)
        let placement = Placement(strategy: .ringpop, nodes: nodes)
        var pointOwners: [UInt32: [String]] = [:]
        for node in nodes {
            for replica in 0..<Placement.ringpopReplicaPoints {
                pointOwners[FarmHash.fingerprint32(node.address + String(replica)), default: []].append(node.address)
            }
        }
        var collisions = 0
        for node in nodes {
            for replica in 0..<Placement.ringpopReplicaPoints {
                let key = node.address + String(replica)
                let expected = pointOwners[FarmHash.fingerprint32(key)]!.min()!
                if expected != node.address { collisions += 1 }
                #expect(placement.owner(of: ResourceID(key))?.address == expected, "\(key)")
            }
        }
        #expect(collisions == 0, "no genuine collisions expected among these addresses")
    }

    /// A key hashing above the last point wraps around to the first point's owner.
    @Test func wrapsAround() {
        let points = Self.addresses.flatMap { address in
            (0..<Placement.ringpopReplicaPoints).map { (FarmHash.fingerprint32(address + String($0)), address) }
        }.sorted(by: <)
        let maximumPoint = points.last!.0
        let id = (0..<1_000_000).lazy.map { "wrap-\($0)" }.first { FarmHash.fingerprint32($0) > maximumPoint }!
        #expect(Self.placement.owner(of: ResourceID(id))?.address == points[0].1)
    }

    /// Adding or removing a member moves only keys to or from that member, and about its share of keys.
    @Test(arguments: ["sequential", "random"], [3, 10, 50])
    func movementAndBalance(idSet: String, memberCount: Int) {
        let ids = PlacementFixtures.ids(idSet)
        let nodes = PlacementFixtures.nodes(memberCount)
        let base = Placement(strategy: .ringpop, nodes: nodes)
        let added = Placement(strategy: .ringpop, nodes: nodes + PlacementFixtures.nodes(1, from: memberCount))
        let removed = Placement(strategy: .ringpop, nodes: nodes.filter { $0 != nodes[memberCount / 2] })
        let balance = PlacementBalance(placement: base, ids: ids)
        let adding = PlacementMovement(from: base, to: added, ids: ids)
        let removing = PlacementMovement(from: base, to: removed, ids: ids)
        print(
            "ringpop \(idSet) n=\(memberCount): max/mean \(balance.maxOverMean) min/mean \(balance.minOverMean)"
                + " add \(adding.movedOverIdeal)×ideal remove \(removing.movedOverIdeal)×ideal"
        )
        #expect(adding.unnecessaryMoves == 0)
        #expect(removing.unnecessaryMoves == 0)
        #expect(balance.loads.reduce(0, +) == ids.count)
        // A ring with 100 points per node spreads load by about ±10%, up to ~1.3× (resource-manager.md §2.2).
        #expect(balance.maxOverMean < 1.5)
    }
}
