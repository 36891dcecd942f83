import Benchmark
import StorkCore
import StorkPlacement

// MARK: - Placement lookups
//
// Lookups over 10 nodes, cycling through 10,000 distinct ids. Single lookups are scaled by 1,000 (one measured
// iteration = 1,000 lookups); `mallocCountTotal` must stay 0 for them: `owner(of:)` does not allocate.

let nodeCount = 10

let nodes = (0..<nodeCount).map { NodeID(name: "node-\($0)", address: "127.0.0.1:\(3000 + $0)", uid: 1) }
let ids = (0..<10_000).map { ResourceID("resource-\($0)") }
let placements: [(name: String, placement: Placement)] = [
    ("rendezvous", Placement(strategy: .rendezvous, nodes: nodes)),
    (
        "rendezvous weighted",
        Placement(members: nodes.enumerated().map { PlacementMember(node: $1, weight: Double($0 % 2 + 1)) })
    ),
    ("ringpop", Placement(strategy: .ringpop, nodes: nodes)),
]

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal, .throughput, .mallocCountTotal],
        timeUnits: .nanoseconds,
        scalingFactor: .kilo,
        maxDuration: .seconds(2),
        maxIterations: 100_000
    )

    for (name, placement) in placements {
        Benchmark("owner(of:) \(name), \(nodeCount) nodes") { benchmark in
            var index = 0
            for _ in benchmark.scaledIterations {
                blackHole(placement.owner(of: ids[index]))
                index = index == ids.count - 1 ? 0 : index + 1
            }
        }

        Benchmark(
            "owners(of:) batch of \(ids.count) \(name), \(nodeCount) nodes",
            configuration: .init(scalingFactor: .one)
        ) { benchmark in
            for _ in benchmark.scaledIterations {
                blackHole(placement.owners(of: ids))
            }
        }
    }

    Benchmark("Placement.init rendezvous, 50 nodes") { benchmark in
        let fifty = (0..<50).map { NodeID(name: "node-\($0)", address: "127.0.0.1:\(3000 + $0)", uid: 1) }
        for _ in benchmark.scaledIterations {
            blackHole(Placement(nodes: fifty))
        }
    }

    Benchmark("Placement.init ringpop, 50 nodes") { benchmark in
        let fifty = (0..<50).map { NodeID(name: "node-\($0)", address: "127.0.0.1:\(3000 + $0)", uid: 1) }
        for _ in benchmark.scaledIterations {
            blackHole(Placement(strategy: .ringpop, nodes: fifty))
        }
    }

    Benchmark("FarmHash.fingerprint32 of a 10-byte id") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(FarmHash.fingerprint32(ids[benchmark.currentIteration % ids.count].rawValue))
        }
    }
}
