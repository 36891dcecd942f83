import StorkCore
import StorkPlacement
import Testing

@Suite("Placement: common behaviour")
struct PlacementTests {
    @Test(arguments: PlacementStrategy.allCases)
    func noMembersNoOwner(strategy: PlacementStrategy) {
        let placement = Placement(strategy: strategy, nodes: [])
        #expect(placement.isEmpty)
        #expect(placement.owner(of: "anything") == nil)
        #expect(placement.owners(of: ["a", "b"]) == [nil, nil])
        #expect(placement.assignment(of: ["a"]).isEmpty)
    }

    @Test(arguments: PlacementStrategy.allCases)
    func singleMemberOwnsEverything(strategy: PlacementStrategy) {
        let node = PlacementFixtures.nodes(1)[0]
        let placement = Placement(strategy: strategy, nodes: [node])
        for id in PlacementFixtures.randomIDs[0..<1_000] {
            #expect(placement.owner(of: id) == node)
        }
        #expect(placement.owner(of: "") == node)
    }

    @Test(arguments: PlacementStrategy.allCases)
    func batchEqualsSingle(strategy: PlacementStrategy) {
        let placement = Placement(strategy: strategy, nodes: PlacementFixtures.nodes(10))
        let ids = Array(PlacementFixtures.randomIDs[0..<10_000]) + Array(PlacementFixtures.sequentialIDs[0..<10_000])
        let batch = placement.owners(of: ids)
        #expect(batch.count == ids.count)
        #expect(batch == ids.map { placement.owner(of: $0) })

        let assignment = placement.assignment(of: ids)
        #expect(Set(assignment.keys) == Set(placement.nodes))
        #expect(assignment.values.map(\.count).reduce(0, +) == ids.count)
        for (node, owned) in assignment {
            for id in owned {
                #expect(placement.owner(of: id) == node)
            }
        }
    }

    @Test func membersAreSortedAndDeduplicated() {
        let nodes = PlacementFixtures.nodes(4)
        let placement = Placement(members: [
            PlacementMember(node: nodes[3]),
            PlacementMember(node: nodes[1], weight: 2),
            PlacementMember(node: nodes[0]),
            PlacementMember(node: nodes[1]),
            PlacementMember(node: nodes[3]),
        ])
        #expect(placement.nodes == [nodes[0], nodes[1], nodes[3]])
        #expect(placement.members[1].weight == 2)
        #expect(placement.contains(nodes[1]))
        #expect(!placement.contains(nodes[2]))
        let withoutDuplicates = Placement(members: [
            PlacementMember(node: nodes[0]),
            PlacementMember(node: nodes[1], weight: 2),
            PlacementMember(node: nodes[3]),
        ])
        #expect(placement.checksum == withoutDuplicates.checksum)
    }

    // MARK: - Checksums

    @Test(arguments: PlacementStrategy.allCases)
    func checksumIgnoresOrder(strategy: PlacementStrategy) {
        let nodes = PlacementFixtures.nodes(10)
        var random = SeededRandom(seed: 1)
        let checksum = Placement(strategy: strategy, nodes: nodes).checksum
        for _ in 0..<5 {
            #expect(Placement(strategy: strategy, nodes: nodes.shuffled(using: &random)).checksum == checksum)
        }
        #expect(Placement.checksum(strategy: strategy, members: nodes.map { PlacementMember(node: $0) }) == checksum)
    }

    @Test func rendezvousChecksumChangesWithAnyMemberField() {
        let nodes = PlacementFixtures.nodes(3)
        let checksum = Placement(nodes: nodes).checksum
        var changes: [[PlacementMember]] = []
        for field in 0..<4 {
            var members = nodes.map { PlacementMember(node: $0) }
            switch field {
            case 0: members[1].node.name += "x"
            case 1: members[1].node.address += "0"
            case 2: members[1].node.uid += 1
            default: members[1].weight = 2
            }
            changes.append(members)
        }
        changes.append(nodes.dropLast().map { PlacementMember(node: $0) })
        changes.append((nodes + PlacementFixtures.nodes(1, from: 3)).map { PlacementMember(node: $0) })
        var checksums: Set<UInt64> = [checksum]
        for members in changes {
            checksums.insert(Placement(members: members).checksum)
        }
        #expect(checksums.count == changes.count + 1)
    }

    /// The rendezvous checksum is FNV-1a 64 of "name@address#uid*weight" joined by ";".
    @Test func rendezvousChecksumFormat() {
        let nodes = [
            NodeID(name: "b", address: "h2:1", uid: 7),
            NodeID(name: "a", address: "h1:1", uid: 12),
        ]
        let placement = Placement(members: [
            PlacementMember(node: nodes[0], weight: 2), PlacementMember(node: nodes[1]),
        ])
        #expect(placement.checksum == StableHash.fnv1a64("a@h1:1#12*1.0;b@h2:1#7*2.0"))
    }

    /// The ring ignores names and uids: only addresses matter, as in ringpop.
    @Test func ringpopChecksumOnlySeesAddresses() {
        let nodes = PlacementFixtures.nodes(3)
        let renamed = nodes.map { NodeID(name: $0.name + "-new", address: $0.address, uid: $0.uid + 1) }
        #expect(
            Placement(strategy: .ringpop, nodes: nodes).checksum
                == Placement(strategy: .ringpop, nodes: renamed).checksum
        )
        let moved = [nodes[0], nodes[1], NodeID(name: "node-2", address: "127.0.0.1:4000", uid: 1)]
        #expect(
            Placement(strategy: .ringpop, nodes: nodes).checksum != Placement(strategy: .ringpop, nodes: moved).checksum
        )
    }

    // MARK: - Strategy names

    @Test func strategyNames() {
        #expect(PlacementStrategy(parsing: "default") == .rendezvous)
        #expect(PlacementStrategy(parsing: "rendezvous") == .rendezvous)
        #expect(PlacementStrategy(parsing: "RingPop") == .ringpop)
        #expect(PlacementStrategy(parsing: "ring") == nil)
        #expect(PlacementStrategy(rawValue: "default") == .rendezvous)
        #expect(PlacementStrategy.rendezvous.description == "default")
    }
}
