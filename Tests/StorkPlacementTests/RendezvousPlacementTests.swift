import StorkCore
import StorkPlacement
import Testing

@Suite("Placement: rendezvous (default)")
struct RendezvousPlacementTests {
    // MARK: - Balance and movement

    /// For 100,000 ids over n equal nodes: load balance, and movement when one node joins or leaves.
    ///
    /// For random ids no function of (id, members) can beat the binomial spread: with 100,000 / n ids per node the
    /// standard deviation of a node's load is about √(mean) (2.2% of the mean at 2,000 per node), so the expected
    /// max/mean for 50 nodes is about 1.05 and the bound there is looser.
    @Test(arguments: ["sequential", "random"], [3, 10, 50])
    func balanceAndMovement(idSet: String, memberCount: Int) {
        let ids = PlacementFixtures.ids(idSet)
        let nodes = PlacementFixtures.nodes(memberCount)
        let base = Placement(nodes: nodes)
        let added = Placement(nodes: nodes + PlacementFixtures.nodes(1, from: memberCount))
        let leaving = nodes[memberCount / 2]
        let removed = Placement(nodes: nodes.filter { $0 != leaving })

        let balance = PlacementBalance(placement: base, ids: ids)
        let adding = PlacementMovement(from: base, to: added, ids: ids)
        let removing = PlacementMovement(from: base, to: removed, ids: ids)
        print(
            "rendezvous \(idSet) n=\(memberCount): max/mean \(balance.maxOverMean) min/mean \(balance.minOverMean)"
                + " σ/mean \(balance.relativeStandardDeviation)"
                + " add \(adding.movedOverIdeal)×ideal remove \(removing.movedOverIdeal)×ideal"
        )

        #expect(balance.loads.reduce(0, +) == ids.count)
        #expect(balance.maxOverMean <= (memberCount <= 10 ? 1.05 : 1.08))
        #expect(adding.idealFraction == 1 / Double(memberCount + 1))
        #expect(removing.idealFraction == 1 / Double(memberCount))
        #expect(adding.movedOverIdeal <= 1.05)
        #expect(removing.movedOverIdeal <= 1.05)
        // Only keys of the node that joined or left move.
        #expect(adding.unnecessaryMoves == 0)
        #expect(removing.unnecessaryMoves == 0)
        let newcomer = added.nodes.first { !base.contains($0) }
        for (id, (before, after)) in zip(ids, zip(base.owners(of: ids), added.owners(of: ids))) where before != after {
            #expect(after == newcomer, "\(id) moved from \(String(describing: before)) to a node that was there")
        }
        for (id, (before, after)) in zip(ids, zip(base.owners(of: ids), removed.owners(of: ids))) where before != after
        {
            #expect(before == leaving, "\(id) moved away from \(String(describing: before)), which stayed")
        }
    }

    // MARK: - Weights

    /// A node of weight 2 among 10 of weight 1 gets twice the mean of the others, within 5%.
    @Test(arguments: ["sequential", "random"])
    func weightedShare(idSet: String) {
        let ids = PlacementFixtures.ids(idSet)
        let light = PlacementFixtures.nodes(10).map { PlacementMember(node: $0) }
        let heavy = PlacementMember(node: PlacementFixtures.nodes(1, from: 10)[0], weight: 2)
        let placement = Placement(members: light + [heavy])
        let assignment = placement.assignment(of: ids)
        let heavyLoad = Double(assignment[heavy.node]!.count)
        let othersMean = Double(light.map { assignment[$0.node]!.count }.reduce(0, +)) / Double(light.count)
        print("weighted \(idSet): weight-2 node has \(heavyLoad / othersMean)× the mean of the others")
        #expect(abs(heavyLoad / othersMean - 2) <= 0.1)
        let balance = PlacementBalance(placement: placement, ids: ids)
        #expect(balance.maxOverMean <= 1.05)
        #expect(balance.minOverMean >= 0.95)
    }

    /// Weighted placement keeps the minimal-movement property.
    @Test func weightedMovement() {
        let ids = PlacementFixtures.sequentialIDs[0..<20_000]
        let members = PlacementFixtures.nodes(10).enumerated().map {
            PlacementMember(node: $1, weight: 1 + Double($0 % 3))
        }
        let base = Placement(members: members)
        let added = Placement(
            members: members + [PlacementMember(node: PlacementFixtures.nodes(1, from: 10)[0], weight: 3)]
        )
        let removed = Placement(members: Array(members.dropFirst()))
        let adding = PlacementMovement(from: base, to: added, ids: ids)
        let removing = PlacementMovement(from: base, to: removed, ids: ids)
        #expect(adding.unnecessaryMoves == 0)
        #expect(removing.unnecessaryMoves == 0)
        #expect(adding.movedOverIdeal > 0.9 && adding.movedOverIdeal < 1.1)
        #expect(removing.movedOverIdeal > 0.9 && removing.movedOverIdeal < 1.1)
    }

    /// Scaling every weight by the same factor changes nothing.
    @Test func equalWeightsOtherThanOne() {
        let nodes = PlacementFixtures.nodes(7)
        let ones = Placement(nodes: nodes)
        let threes = Placement(members: nodes.map { PlacementMember(node: $0, weight: 3) })
        let ids = PlacementFixtures.sequentialIDs[0..<5_000]
        #expect(ones.owners(of: ids) == threes.owners(of: ids))
    }

    // MARK: - Identity

    /// A restarted process (same name, new uid, even a new address) gets the same resources.
    @Test func ownershipFollowsTheName() {
        let nodes = PlacementFixtures.nodes(5)
        var restartedNodes = nodes
        restartedNodes[2] = NodeID(name: nodes[2].name, address: "10.0.0.9:7000", uid: 99)
        let before = Placement(nodes: nodes)
        let after = Placement(nodes: restartedNodes)
        #expect(before.checksum != after.checksum)
        for id in PlacementFixtures.sequentialIDs[0..<5_000] {
            #expect(before.owner(of: id)?.name == after.owner(of: id)?.name)
        }
    }

    /// Two processes with the same name tie on every resource; the smaller NodeID (the older uid) wins.
    @Test func sameNameTiesGoToTheSmallerNode() {
        let old = NodeID(name: "a", address: "127.0.0.1:1", uid: 1)
        let new = NodeID(name: "a", address: "127.0.0.1:2", uid: 2)
        let other = NodeID(name: "b", address: "127.0.0.1:3", uid: 1)
        let placement = Placement(nodes: [new, other, old])
        let owners = Set(PlacementFixtures.sequentialIDs[0..<1_000].compactMap { placement.owner(of: $0) })
        #expect(owners == [old, other])
    }

    /// Owners depend only on the set of members, never on their order.
    @Test func orderIndependent() {
        let nodes = PlacementFixtures.nodes(10)
        var random = SeededRandom(seed: 7)
        let shuffled = nodes.shuffled(using: &random)
        let ids = PlacementFixtures.randomIDs[0..<5_000]
        for strategy in PlacementStrategy.allCases {
            #expect(
                Placement(strategy: strategy, nodes: nodes).owners(of: ids)
                    == Placement(strategy: strategy, nodes: shuffled).owners(of: ids)
            )
        }
    }

    /// Pins the hash: owners must never change between versions, or a mixed-version cluster disagrees.
    @Test func ownersAreStable() {
        let placement = Placement(nodes: PlacementFixtures.nodes(3))
        let owners = (0..<8).map { placement.owner(of: ResourceID("resource-\($0)"))!.name }
        #expect(owners == Self.pinnedOwners, "\(owners)")
        let weighted = Placement(members: [
            PlacementMember(node: PlacementFixtures.nodes(1)[0], weight: 1),
            PlacementMember(node: PlacementFixtures.nodes(1, from: 1)[0], weight: 2.5),
            PlacementMember(node: PlacementFixtures.nodes(1, from: 2)[0], weight: 0.5),
        ])
        let weightedOwners = (0..<8).map { weighted.owner(of: ResourceID("resource-\($0)"))!.name }
        #expect(weightedOwners == Self.pinnedWeightedOwners, "\(weightedOwners)")
    }

    static let pinnedOwners = ["node-0", "node-2", "node-0", "node-0", "node-2", "node-0", "node-2", "node-0"]
    static let pinnedWeightedOwners = ["node-0", "node-1", "node-1", "node-1", "node-2", "node-0", "node-1", "node-0"]
}
