import StorkCore

// MARK: - PlacementMember

/// One node that can own resources, with its relative capacity.
public struct PlacementMember: Hashable, Sendable, CustomStringConvertible {
    /// The node. Rendezvous placement hashes its `name`, the ringpop ring its `address`.
    public var node: NodeID
    /// The node's share relative to the others: a node of weight 2 gets twice the resources of a node of weight 1.
    /// Must be finite and greater than zero.
    public var weight: Double

    public init(node: NodeID, weight: Double = 1) {
        self.node = node
        self.weight = weight
    }

    public var description: String {
        self.weight == 1 ? self.node.description : "\(self.node)*\(self.weight)"
    }
}

// MARK: - PlacementStrategy

/// How a `Placement` maps resource ids to members.
public enum PlacementStrategy: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// Weighted rendezvous (highest random weight) hashing on the node's name: the best balance, and on a membership
    /// change only the resources of the node that joined or left move. The default.
    case rendezvous = "default"
    /// A consistent-hash ring with 100 points per node hashed with FarmHash Fingerprint32, keyed on the node's
    /// address: the same owners as ringpop-go (and ringpop-node with `isCrossPlatform`), for clusters migrating
    /// from ringpop. Balance is worse (about 10% load spread) and weights are ignored.
    case ringpop

    /// Parses a strategy name: `default` or `rendezvous`, or `ringpop` (any letter case). `nil` for anything else.
    public init?(parsing name: String) {
        switch name.lowercased() {
        case "default", "rendezvous": self = .rendezvous
        case "ringpop": self = .ringpop
        default: return nil
        }
    }

    /// The names `init(parsing:)` accepts.
    public static let acceptedNames = ["default", "rendezvous", "ringpop"]

    public var description: String { self.rawValue }
}

// MARK: - Placement

/// Which member owns each resource: an immutable view of one member set, prepared for fast lookups.
///
/// Placement is a pure function of the resource id and the member set, so every node that sees the same members
/// computes the same owners without talking to the others; `checksum` tells whether two nodes see the same set.
/// Build a new `Placement` whenever membership changes and keep it while the members stay the same.
///
/// ```swift
/// let placement = Placement(nodes: members)
/// if placement.owner(of: "sensor-42") == me { start("sensor-42") }
/// ```
///
/// - `.rendezvous` (the default) gives every resource to the member with the highest score
///   `mix64(hash(id) ^ seed(member.name))`, or, when weights differ, the highest `weight / -ln(score as (0, 1))`.
///   Because it hashes the node's *name*, a process restarted under the same name (with a new uid) gets the same
///   resources back. Lookups cost one string hash plus a few instructions per member, with no allocation.
/// - `.ringpop` is ringpop's ring: see `PlacementStrategy.ringpop`. Lookups are one Fingerprint32 and a binary search.
///
/// Members with the same `NodeID` are collapsed into one (keeping the largest weight). Members with the same name
/// (rendezvous) or address (ringpop) but different `NodeID`s tie on every resource, and the smaller `NodeID` (the
/// older process, for the same name) wins all of them; membership should remove the superseded process.
public struct Placement: Sendable {
    /// The strategy this placement uses.
    public let strategy: PlacementStrategy
    /// The members, sorted by node and without duplicates.
    public let members: [PlacementMember]
    /// A stable hash of the member set (see `Placement.checksum(strategy:members:)`), the same whatever order the
    /// members were listed in: two nodes with equal checksums see the same members and place resources the same way.
    public let checksum: UInt64

    /// Rendezvous: one seed per member, from its name, in `members` order.
    @usableFromInline let seeds: [UInt64]
    /// Rendezvous: the weights, in `members` order; empty when all weights are equal.
    @usableFromInline let weights: [Double]
    /// Ringpop: the sorted hashes of the ring's points.
    @usableFromInline let ringHashes: [UInt32]
    /// Ringpop: for each point, the index in `members` of the member that owns it.
    @usableFromInline let ringOwners: [Int32]

    /// The number of points each member has on the ringpop ring (ringpop's default `replicaPoints`).
    public static let ringpopReplicaPoints = 100

    /// Prepares a placement over `members`.
    ///
    /// - Precondition: every weight is finite and greater than zero.
    public init(strategy: PlacementStrategy = .rendezvous, members: [PlacementMember]) {
        for member in members {
            precondition(
                member.weight.isFinite && member.weight > 0,
                "placement weights must be finite and positive, got \(member)"
            )
        }
        let members = Self.normalised(members)
        self.strategy = strategy
        self.members = members
        self.checksum = Self.checksum(strategy: strategy, normalisedMembers: members)
        switch strategy {
        case .rendezvous:
            self.seeds = members.map { Self.seed(name: $0.node.name) }
            let firstWeight = members.first?.weight ?? 1
            self.weights = members.allSatisfy { $0.weight == firstWeight } ? [] : members.map(\.weight)
            self.ringHashes = []
            self.ringOwners = []
        case .ringpop:
            self.seeds = []
            self.weights = []
            (self.ringHashes, self.ringOwners) = Self.ring(members)
        }
    }

    /// Prepares a placement over `nodes`, all of weight 1.
    public init(strategy: PlacementStrategy = .rendezvous, nodes: [NodeID]) {
        self.init(strategy: strategy, members: nodes.map { PlacementMember(node: $0) })
    }

    /// Whether there are no members (and so no owners).
    public var isEmpty: Bool { self.members.isEmpty }

    /// The member nodes, sorted.
    public var nodes: [NodeID] { self.members.map(\.node) }

    /// Whether `node` is a member.
    public func contains(_ node: NodeID) -> Bool {
        self.index(of: node) != nil
    }

    /// The index of `node` in `members`, by binary search.
    func index(of node: NodeID) -> Int? {
        var low = 0
        var high = self.members.count
        while low < high {
            let middle = (low + high) / 2
            if self.members[middle].node < node {
                low = middle + 1
            } else {
                high = middle
            }
        }
        return low < self.members.count && self.members[low].node == node ? low : nil
    }
}

// MARK: - Lookups

extension Placement {
    /// The member that owns `id`, or `nil` when there are no members. Does not allocate.
    @inlinable
    public func owner(of id: ResourceID) -> NodeID? {
        guard let index = self.ownerIndex(of: id) else { return nil }
        return self.members[index].node
    }

    /// The owner of a resource pinned to the node named `pinnedTo` (the member of that name, none while it is not a
    /// member; the older process when two of that name are members, as rendezvous ties go), or the owner placement
    /// chooses when `pinnedTo` is nil.
    public func owner(of id: ResourceID, pinnedTo: String?) -> NodeID? {
        guard let pinnedTo else { return self.owner(of: id) }
        return self.members.first { $0.node.name == pinnedTo }?.node
    }

    /// The owners of `ids`, in the same order.
    @inlinable
    public func owners(of ids: some Sequence<ResourceID>) -> [NodeID?] {
        var owners: [NodeID?] = []
        owners.reserveCapacity(ids.underestimatedCount)
        for id in ids {
            owners.append(self.owner(of: id))
        }
        return owners
    }

    /// The resources each member owns, keyed by every member (members that own nothing map to an empty array).
    /// Resources keep their order from `ids`.
    @inlinable
    public func assignment(of ids: some Sequence<ResourceID>) -> [NodeID: [ResourceID]] {
        var byIndex = [[ResourceID]](repeating: [], count: self.members.count)
        for id in ids {
            if let index = self.ownerIndex(of: id) {
                byIndex[index].append(id)
            }
        }
        var assignment: [NodeID: [ResourceID]] = [:]
        assignment.reserveCapacity(self.members.count)
        for (index, member) in self.members.enumerated() {
            assignment[member.node] = byIndex[index]
        }
        return assignment
    }

    /// The index in `members` of the owner of `id`, or `nil` when there are no members. Does not allocate.
    ///
    /// For hot loops that keep per-member data in arrays parallel to `members`.
    public func ownerIndex(of id: ResourceID) -> Int? {
        if self.members.isEmpty { return nil }
        switch self.strategy {
        case .rendezvous:
            let hash = PlacementHash.hash(id.rawValue)
            return self.weights.isEmpty ? self.rendezvousIndex(hash: hash) : self.weightedRendezvousIndex(hash: hash)
        case .ringpop:
            return self.ringIndex(hash: FarmHash.fingerprint32(id.rawValue))
        }
    }
}

// MARK: - Rendezvous

extension Placement {
    /// The seed of a member named `name`: independent of the member's position, uid and address.
    static func seed(name: String) -> UInt64 {
        StableHash.mix64(PlacementHash.hash(name, seed: 0x6E6F_6465_2D73_6565))
    }

    /// The score of a member for a resource: a bijective mix of the resource's hash and the member's seed.
    @inline(__always)
    static func score(hash: UInt64, seed: UInt64) -> UInt64 {
        StableHash.mix64(hash ^ seed)
    }

    /// Equal weights: the member with the highest score. `members` is sorted, so `>` leaves ties with the smaller
    /// node.
    func rendezvousIndex(hash: UInt64) -> Int {
        self.seeds.withUnsafeBufferPointer { seeds in
            var best = 0
            var bestScore = Self.score(hash: hash, seed: seeds[0])
            var index = 1
            while index < seeds.count {
                let score = Self.score(hash: hash, seed: seeds[index])
                if score > bestScore {
                    best = index
                    bestScore = score
                }
                index += 1
            }
            return best
        }
    }

    /// Unequal weights: the member with the highest `weight / -ln(u)`, `u` being the score as a number in (0, 1).
    /// This gives member `i` a share of exactly `weight[i] / Σ weights` (Schindelhauer and Schomaker's weighted
    /// distributed hash tables), and still moves only the keys of a member that joins or leaves.
    func weightedRendezvousIndex(hash: UInt64) -> Int {
        self.seeds.withUnsafeBufferPointer { seeds in
            self.weights.withUnsafeBufferPointer { weights in
                var best = 0
                var bestKey = -Double.infinity
                for index in 0..<seeds.count {
                    let score = Self.score(hash: hash, seed: seeds[index])
                    // The top 52 bits plus a half: strictly inside (0, 1), so the logarithm is finite and negative.
                    let unit = (Double(score >> 12) + 0.5) * 0x1p-52
                    let key = weights[index] / DeterministicMath.negativeLog(unit)
                    if key > bestKey {
                        best = index
                        bestKey = key
                    }
                }
                return best
            }
        }
    }
}

// MARK: - Ringpop ring

extension Placement {
    /// The ring's points sorted by (hash, address), and the member index owning each.
    ///
    /// Each address gets points `fingerprint32(address + String(i))` for `i` in `0..<100`, concatenated with no
    /// separator exactly as ringpop does (so `"1.2.3.4:55" + "55"` and `"1.2.3.4:555" + "5"` collide, ringpop-node
    /// issue #241; compatibility wins). Members sharing an address share one set of points, owned by the smallest.
    static func ring(_ members: [PlacementMember]) -> (hashes: [UInt32], owners: [Int32]) {
        // One owner per distinct address (the first in `members` order, i.e. the smallest node), ranked by address
        // so that points can be sorted as (hash, address rank) packed into one integer.
        var ownerByAddress: [String: Int] = [:]
        for (index, member) in members.enumerated() where ownerByAddress[member.node.address] == nil {
            ownerByAddress[member.node.address] = index
        }
        let addresses = ownerByAddress.keys.sorted()
        var points: [UInt64] = []
        points.reserveCapacity(addresses.count * Self.ringpopReplicaPoints)
        var key: [UInt8] = []
        for (rank, address) in addresses.enumerated() {
            // The bytes of `address + String(replica)`, built in one reused buffer.
            key.removeAll(keepingCapacity: true)
            key.append(contentsOf: address.utf8)
            let addressLength = key.count
            for replica in 0..<Self.ringpopReplicaPoints {
                key.removeSubrange(addressLength...)
                Self.appendDecimal(replica, to: &key)
                points.append(UInt64(FarmHash.fingerprint32(key)) << 32 | UInt64(rank))
            }
        }
        points.sort()
        let ownerByRank = addresses.map { Int32(ownerByAddress[$0]!) }
        return (
            points.map { UInt32(truncatingIfNeeded: $0 >> 32) },
            points.map { ownerByRank[Int(truncatingIfNeeded: $0 & 0xFFFF_FFFF)] }
        )
    }

    /// Appends the decimal digits of a non-negative `value`, as `String(value)` spells it.
    static func appendDecimal(_ value: Int, to bytes: inout [UInt8]) {
        var divisor = 1
        while value / divisor >= 10 { divisor *= 10 }
        repeat {
            bytes.append(UInt8(ascii: "0") + UInt8(value / divisor % 10))
            divisor /= 10
        } while divisor > 0
    }

    /// The owner of the first point whose hash is at least `hash`, wrapping around to the first point.
    func ringIndex(hash: UInt32) -> Int {
        self.ringHashes.withUnsafeBufferPointer { hashes in
            // A lower bound whose loop has no data-dependent branch (the compiler selects with a conditional move),
            // so random keys cost no branch mispredictions.
            var base = 0
            var length = hashes.count
            while length > 1 {
                let half = length >> 1
                base = hashes[base &+ half] < hash ? base &+ half : base
                length &-= half
            }
            let first = hashes[base] < hash ? base &+ 1 : base
            return Int(self.ringOwners[first == hashes.count ? 0 : first])
        }
    }
}

// MARK: - Members and checksums

extension Placement {
    /// Members sorted by node, with duplicates of one node collapsed into the one of largest weight.
    static func normalised(_ members: [PlacementMember]) -> [PlacementMember] {
        let sorted = members.sorted { lhs, rhs in
            lhs.node != rhs.node ? lhs.node < rhs.node : lhs.weight > rhs.weight
        }
        var unique: [PlacementMember] = []
        unique.reserveCapacity(sorted.count)
        for member in sorted where unique.last?.node != member.node {
            unique.append(member)
        }
        return unique
    }

    /// The checksum of a member set under `strategy`, in any order and with any duplicates.
    ///
    /// - `.rendezvous`: 64-bit FNV-1a over `name@address#uid*weight` for each member (uid in decimal, weight as Swift
    ///   prints a `Double`, e.g. `1.0`), sorted by node and joined by `;`.
    /// - `.ringpop`: ringpop's checksum, FarmHash Fingerprint32 of the distinct addresses, sorted and joined by `;`.
    public static func checksum(strategy: PlacementStrategy, members: [PlacementMember]) -> UInt64 {
        Self.checksum(strategy: strategy, normalisedMembers: Self.normalised(members))
    }

    static func checksum(strategy: PlacementStrategy, normalisedMembers members: [PlacementMember]) -> UInt64 {
        switch strategy {
        case .rendezvous:
            var hash = StableHash.fnv1a64("")
            for (index, member) in members.enumerated() {
                if index > 0 { hash = StableHash.fnv1a64(";", continuing: hash) }
                let node = member.node
                hash = StableHash.fnv1a64("\(node.name)@\(node.address)#\(node.uid)*\(member.weight)", continuing: hash)
            }
            return hash
        case .ringpop:
            let addresses = Set(members.map(\.node.address)).sorted()
            return UInt64(FarmHash.fingerprint32(addresses.joined(separator: ";")))
        }
    }
}
