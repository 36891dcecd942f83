import StorkCore

// MARK: - PlacementBalance

/// How evenly a placement spreads a set of resources over its members, relative to their weights.
public struct PlacementBalance: Sendable, Hashable {
    /// Resources per member, in `Placement.members` order.
    public var loads: [Int]
    /// The largest load divided by the member's fair share (`total · weight / Σ weights`).
    public var maxOverMean: Double
    /// The smallest load divided by the member's fair share.
    public var minOverMean: Double
    /// The standard deviation of load / fair share.
    public var relativeStandardDeviation: Double

    /// Measures `placement` over `ids`.
    public init(placement: Placement, ids: some Sequence<ResourceID>) {
        var loads = [Int](repeating: 0, count: placement.members.count)
        for id in ids {
            if let index = placement.ownerIndex(of: id) { loads[index] += 1 }
        }
        self.loads = loads
        let total = Double(loads.reduce(0, +))
        let totalWeight = placement.members.reduce(0) { $0 + $1.weight }
        let ratios = zip(loads, placement.members).map { load, member in
            total == 0 ? 1 : Double(load) / (total * member.weight / totalWeight)
        }
        self.maxOverMean = ratios.max() ?? 1
        self.minOverMean = ratios.min() ?? 1
        let mean = ratios.isEmpty ? 1 : ratios.reduce(0, +) / Double(ratios.count)
        let variance =
            ratios.isEmpty ? 0 : ratios.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(ratios.count)
        self.relativeStandardDeviation = variance.squareRoot()
    }
}

// MARK: - PlacementMovement

/// Which resources change owner between two placements (one membership change).
public struct PlacementMovement: Sendable, Hashable {
    /// The number of resources looked at.
    public var total: Int
    /// The number whose owner changed.
    public var moved: Int
    /// Moves between two nodes that are members both before and after: zero for a placement that moves only what
    /// the membership change forces.
    public var unnecessaryMoves: Int
    /// The fraction of resources that must move at the least: the share the joining members get plus the share the
    /// leaving members had, by weight (`1/(n+1)` when adding one of n+1 equal nodes, `1/n` when removing one of n).
    public var idealFraction: Double

    /// The fraction of resources that moved.
    public var movedFraction: Double { self.total == 0 ? 0 : Double(self.moved) / Double(self.total) }

    /// How many times the minimum moved: 1 is optimal.
    public var movedOverIdeal: Double { self.idealFraction == 0 ? 1 : self.movedFraction / self.idealFraction }

    /// Compares the owners of `ids` under `before` and `after`.
    public init(from before: Placement, to after: Placement, ids: some Sequence<ResourceID>) {
        var total = 0
        var moved = 0
        var unnecessary = 0
        for id in ids {
            total += 1
            let old = before.owner(of: id)
            let new = after.owner(of: id)
            guard old != new else { continue }
            moved += 1
            if let old, let new, after.contains(old), before.contains(new) {
                unnecessary += 1
            }
        }
        self.total = total
        self.moved = moved
        self.unnecessaryMoves = unnecessary
        let beforeWeight = before.members.reduce(0) { $0 + $1.weight }
        let afterWeight = after.members.reduce(0) { $0 + $1.weight }
        let joined = after.members.filter { !before.contains($0.node) }.reduce(0) { $0 + $1.weight }
        let left = before.members.filter { !after.contains($0.node) }.reduce(0) { $0 + $1.weight }
        self.idealFraction =
            (afterWeight > 0 ? joined / afterWeight : 0) + (beforeWeight > 0 ? left / beforeWeight : 0)
    }
}
