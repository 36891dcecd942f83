import StorkCore
import StorkPlacement
import Testing

@testable import StorkResources

/// A `drop` filter: the change's replication from `sender` (to `receivers`, or to anyone) is lost.
private func replicationLost(
    from sender: String,
    to receivers: Set<String>? = nil
) -> (String, String, ClusterMessage) -> Bool {
    { from, to, message in
        guard from == sender, receivers?.contains(to) ?? true else { return false }
        if case .desired(.replicate) = message { return true }
        return false
    }
}

/// An id among the first 1,000 candidates that `node` owns in `placement`.
private func id(ownedBy node: NodeID, in placement: Placement) -> ResourceID {
    (0..<1000).map { ResourceID("acct-\($0)") }.first { placement.owner(of: $0) == node }!
}

@Suite("Replication: allocate and deallocate answer only once enough members hold the change")
struct ReplicationTests {
    /// Two or three nodes that agree on their view.
    static func cluster(_ names: [String], replicas: ReplicaRequirement = .members(2)) -> HandWiredCluster {
        var cluster = HandWiredCluster()
        cluster.settings.replicas = replicas
        cluster.start(names[0], seeds: [])
        for name in names.dropFirst() { cluster.start(name, seeds: [names[0]]) }
        cluster.run(for: .seconds(2))
        for name in names { #expect(cluster.nodes[name]!.placement.members.count == names.count) }
        return cluster
    }

    @Test("an allocate owned by the node that took it waits until a peer holds the change, then answers")
    func ownerWaitsForAPeer() {
        var cluster = Self.cluster(["a", "b"])
        let a = cluster.identities["a"]!
        let id = id(ownedBy: a, in: cluster.nodes["a"]!.placement)
        cluster.drop = replicationLost(from: "a")
        let now = cluster.now
        cluster.mutate("a") { $0.allocate(Resource(id: id), requestID: 1, now: now) }
        cluster.run(for: .milliseconds(200))
        #expect(cluster.running["a"]?.contains(id) == true, "the owner's handler ran")
        #expect(cluster.completions[1] == nil, "not acknowledged while no peer confirmed it holds the change")

        cluster.drop = nil
        cluster.run(for: .seconds(2))
        #expect(cluster.completions[1] == .handled(by: a))
        #expect(cluster.nodes["b"]!.desired.resource(id) != nil, "b holds it: a crash of a cannot lose it")
    }

    @Test("a deallocate waits for a holder too, and a removal acknowledged is held by two members")
    func deallocateWaitsForAPeer() {
        var cluster = Self.cluster(["a", "b"])
        let a = cluster.identities["a"]!
        let id = id(ownedBy: a, in: cluster.nodes["a"]!.placement)
        var now = cluster.now
        cluster.mutate("a") { $0.allocate(Resource(id: id), requestID: 1, now: now) }
        cluster.run(for: .seconds(1))
        #expect(cluster.completions[1] == .handled(by: a))

        cluster.drop = replicationLost(from: "a")
        now = cluster.now
        cluster.mutate("a") { $0.deallocate(id, requestID: 2, now: now) }
        cluster.run(for: .milliseconds(200))
        #expect(cluster.running["a"]?.contains(id) == false, "terminated on the owner")
        #expect(cluster.completions[2] == nil)
        cluster.drop = nil
        cluster.run(for: .seconds(2))
        #expect(cluster.completions[2] == .terminated(by: a))
        #expect(cluster.nodes["b"]!.desired.resource(id) == nil)
    }

    @Test("a change no peer confirms before the deadline is answered notReplicated, naming holders and required")
    func notReplicatedAtTheDeadline() {
        var cluster = Self.cluster(["a", "b"])
        let a = cluster.identities["a"]!
        let id = id(ownedBy: a, in: cluster.nodes["a"]!.placement)
        // b never hears from a: a declares b dead, but b is still part of the cluster (a crash or a partition is
        // not a graceful leave), so a must not acknowledge alone.
        cluster.blocked = ["a>b"]
        let now = cluster.now
        cluster.mutate("a") { $0.allocate(Resource(id: id), requestID: 1, now: now) }
        cluster.run(for: .seconds(20))
        #expect(cluster.nodes["a"]!.placement.members.count == 1, "a's view lost b")
        #expect(cluster.completions[1] == nil)
        cluster.run(for: .seconds(12))
        #expect(cluster.completions[1] == .notReplicated(holders: 1, required: 2))
        #expect(cluster.completions[1]?.succeeded == false)
    }

    @Test("a one-node cluster acknowledges alone")
    func singleNode() {
        var cluster = Self.cluster(["a"])
        let a = cluster.identities["a"]!
        let now = cluster.now
        cluster.mutate("a") { $0.allocate(Resource(id: "solo"), requestID: 1, now: now) }
        cluster.run(for: .milliseconds(50))
        #expect(cluster.completions[1] == .handled(by: a))
    }

    @Test("after the other member left gracefully, the last one acknowledges alone")
    func afterAGracefulLeave() {
        var cluster = Self.cluster(["a", "b"])
        let a = cluster.identities["a"]!
        let now = cluster.now
        cluster.mutate("b") { $0.leave(now: now) }
        cluster.run(for: .seconds(2))
        #expect(cluster.nodes["a"]!.placement.members.count == 1)
        let later = cluster.now
        cluster.mutate("a") { $0.allocate(Resource(id: "after-leave"), requestID: 1, now: later) }
        cluster.run(for: .milliseconds(50))
        #expect(cluster.completions[1] == .handled(by: a))
    }

    @Test("a change through a non-owner is held by the taker and the owner: the owner's answer suffices")
    func remoteOwnerIsAHolder() {
        var cluster = Self.cluster(["a", "b", "c"])
        let b = cluster.identities["b"]!
        let id = id(ownedBy: b, in: cluster.nodes["a"]!.placement)
        // No replication from a arrives anywhere: the owner's answer makes it the second holder.
        cluster.drop = replicationLost(from: "a")
        let now = cluster.now
        cluster.mutate("a") { $0.allocate(Resource(id: id), requestID: 1, now: now) }
        cluster.run(for: .milliseconds(100))
        #expect(cluster.completions[1] == .handled(by: b))
    }

    @Test("replicas: all waits for every member of the view")
    func everyMember() {
        var cluster = Self.cluster(["a", "b", "c"], replicas: .everyMember)
        let a = cluster.identities["a"]!
        let id = id(ownedBy: a, in: cluster.nodes["a"]!.placement)
        cluster.drop = replicationLost(from: "a", to: ["c"])
        let now = cluster.now
        cluster.mutate("a") { $0.allocate(Resource(id: id), requestID: 1, now: now) }
        cluster.run(for: .milliseconds(200))
        #expect(cluster.running["a"]?.contains(id) == true)
        #expect(cluster.nodes["b"]!.desired.resource(id) != nil)
        #expect(cluster.completions[1] == nil, "c does not hold it yet")
        cluster.drop = nil
        cluster.run(for: .seconds(2))
        #expect(cluster.completions[1] == .handled(by: a))
    }

    @Test("replica requirements parse and bound themselves by the cluster's size")
    func requirement() {
        #expect(ReplicaRequirement(parsing: "2") == .members(2))
        #expect(ReplicaRequirement(parsing: "all") == .everyMember)
        #expect(ReplicaRequirement(parsing: "0") == nil)
        #expect(ReplicaRequirement(parsing: "two") == nil)
        #expect(ReplicaRequirement.members(2).required(viewSize: 1) == 1)
        #expect(ReplicaRequirement.members(2).required(viewSize: 5) == 2)
        #expect(ReplicaRequirement.members(3).required(viewSize: 2) == 2)
        #expect(ReplicaRequirement.everyMember.required(viewSize: 4) == 4)
    }
}
