import ArgumentParser
import StorkCore
import StorkPlacement

// MARK: - stork bench

/// `stork bench …`: quick measurements of Stork's pure components, printed as Markdown tables.
///
/// These are for a person reading numbers; the tracked, regression-checked benchmarks live in the separate
/// `Benchmarks/` package (package-benchmark).
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure Stork's components and print the results as Markdown.",
        subcommands: [
            PlacementBenchCommand.self,
            DetectionBenchCommand.self,
            FailoverBenchCommand.self,
            AllocateBenchCommand.self,
            LeaseBenchCommand.self,
            NATSBenchCommand.self,
            GatewayBenchCommand.self,
        ]
    )
}

// MARK: - stork bench placement

/// `stork bench placement`: balance, movement and lookup speed of each placement strategy.
struct PlacementBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "placement",
        abstract: "Balance, movement on a membership change, and lookup speed of each placement strategy.",
        discussion: """
            For n = 3, 10 and 50 equal nodes and two id sets ("resource-0", "resource-1", … and random UUIDs): \
            max/mean and min/mean load, and the fraction of ids that change owner when one node joins or one \
            leaves, divided by the minimum possible (1/(n+1) and 1/n). Then single-core lookups per second for 10 \
            nodes. Build in release for meaningful speeds: swift run -c release stork bench placement
            """
    )

    @Option(help: "The number of resource ids in each id set.")
    var ids: Int = 100_000

    @Option(help: "Seconds to spend timing each lookup measurement.")
    var seconds: Double = 1.5

    func validate() throws {
        guard self.ids > 0 else { throw ValidationError("--ids must be at least 1, got \(self.ids).") }
        guard self.seconds > 0, self.seconds.isFinite else {
            throw ValidationError("--seconds must be a positive number, got \(self.seconds).")
        }
    }

    func run() throws {
        let idSets: [(name: String, ids: [ResourceID])] = [
            ("sequential", (0..<self.ids).map { ResourceID("resource-\($0)") }),
            ("random UUID", Self.randomUUIDs(count: self.ids, seed: 0x5EED)),
        ]
        print("## Placement balance and movement (\(self.ids) ids)")
        print()
        print("| strategy | ids | nodes | max/mean | min/mean | σ/mean | add 1: moved/ideal | remove 1: moved/ideal |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for strategy in PlacementStrategy.allCases {
            for idSet in idSets {
                for count in [3, 10, 50] {
                    let row = Self.measureChanges(strategy: strategy, nodeCount: count, ids: idSet.ids)
                    print(
                        "| \(Self.strategyName(strategy)) | \(idSet.name) | \(count) | \(Self.format(row.balance.maxOverMean))"
                            + " | \(Self.format(row.balance.minOverMean))"
                            + " | \(Self.format(row.balance.relativeStandardDeviation * 100, digits: 2))%"
                            + " | \(Self.format(row.adding.movedOverIdeal)) | \(Self.format(row.removing.movedOverIdeal)) |"
                    )
                }
            }
        }

        print()
        print("## Lookups per second, one core, 10 nodes (\(self.seconds) s each)")
        print()
        print("| strategy | owner(of:) per s | ns per lookup | owners(of:) batch per s |")
        print("|---|---:|---:|---:|")
        let nodes = Self.nodes(10)
        let ids = idSets[1].ids
        let placements: [(String, Placement)] = [
            ("default (rendezvous)", Placement(nodes: nodes)),
            (
                "default, weights 1 and 2",
                Placement(members: nodes.enumerated().map { PlacementMember(node: $1, weight: Double($0 % 2 + 1)) })
            ),
            ("ringpop", Placement(strategy: .ringpop, nodes: nodes)),
        ]
        for (name, placement) in placements {
            let single = Self.lookupsPerSecond(seconds: self.seconds) {
                var checksum = 0
                for id in ids {
                    checksum &+= placement.ownerIndex(of: id)!
                }
                return (ids.count, checksum)
            }
            let batch = Self.lookupsPerSecond(seconds: self.seconds) {
                let owners = placement.owners(of: ids)
                return (owners.count, owners.count)
            }
            print(
                "| \(name) | \(Self.formatCount(single)) | \(Self.format(1e9 / single, digits: 1))"
                    + " | \(Self.formatCount(batch)) |"
            )
        }
    }

    // MARK: Measuring

    static func nodes(_ count: Int, from start: Int = 0) -> [NodeID] {
        (start..<start + count).map { NodeID(name: "node-\($0)", address: "127.0.0.1:\(3000 + $0)", uid: 1) }
    }

    static func measureChanges(
        strategy: PlacementStrategy,
        nodeCount: Int,
        ids: [ResourceID]
    ) -> (balance: PlacementBalance, adding: PlacementMovement, removing: PlacementMovement) {
        let nodes = Self.nodes(nodeCount)
        let base = Placement(strategy: strategy, nodes: nodes)
        let added = Placement(strategy: strategy, nodes: nodes + Self.nodes(1, from: nodeCount))
        let removed = Placement(strategy: strategy, nodes: nodes.filter { $0 != nodes[nodeCount / 2] })
        return (
            PlacementBalance(placement: base, ids: ids),
            PlacementMovement(from: base, to: added, ids: ids),
            PlacementMovement(from: base, to: removed, ids: ids)
        )
    }

    /// Runs `body` repeatedly for about `seconds` and returns lookups per second. `body` returns how many lookups
    /// it did and a value that depends on their results (so that the work cannot be optimised away).
    static func lookupsPerSecond(seconds: Double, _ body: () -> (lookups: Int, result: Int)) -> Double {
        let clock = ContinuousClock()
        let budget = Duration.nanoseconds(Int64(seconds * 1e9))
        var lookups = 0
        var sink = 0
        let start = clock.now
        var elapsed = Duration.zero
        repeat {
            let (count, result) = body()
            lookups += count
            sink &+= result
            elapsed = clock.now - start
        } while elapsed < budget
        if sink == Int.min { print("", terminator: "") }  // keeps `sink` alive
        let (wholeSeconds, attoseconds) = elapsed.components
        return Double(lookups) / (Double(wholeSeconds) + Double(attoseconds) * 1e-18)
    }

    /// Random version-4-shaped UUID strings from a fixed seed.
    static func randomUUIDs(count: Int, seed: UInt64) -> [ResourceID] {
        var random = SeededRandom(seed: seed)
        let hex = Array("0123456789abcdef".utf8)
        return (0..<count).map { _ in
            let words = (random.next(), random.next())
            var bytes: [UInt8] = []
            bytes.reserveCapacity(36)
            for nibbleIndex in 0..<32 {
                let word = nibbleIndex < 16 ? words.0 : words.1
                var nibble = Int((word >> UInt64(60 - 4 * (nibbleIndex % 16))) & 0xF)
                if nibbleIndex == 12 { nibble = 4 }
                if nibbleIndex == 16 { nibble = 8 | (nibble & 3) }
                if [8, 12, 16, 20].contains(nibbleIndex) { bytes.append(UInt8(ascii: "-")) }
                bytes.append(hex[nibble])
            }
            return ResourceID(String(decoding: bytes, as: UTF8.self))
        }
    }

    // MARK: Formatting

    static func strategyName(_ strategy: PlacementStrategy) -> String {
        strategy == .rendezvous ? "default (rendezvous)" : strategy.rawValue
    }

    /// `value` with `digits` decimals, without Foundation.
    static func format(_ value: Double, digits: Int = 3) -> String {
        guard value.isFinite else { return "\(value)" }
        var scale = 1.0
        for _ in 0..<digits { scale *= 10 }
        let scaled = (abs(value) * scale).rounded()
        let whole = Int(scaled / scale)
        let fraction = Int(scaled - Double(whole) * scale)
        let sign = value < 0 && scaled != 0 ? "-" : ""
        guard digits > 0 else { return "\(sign)\(whole)" }
        let fractionText = String(fraction)
        return "\(sign)\(whole)." + String(repeating: "0", count: digits - fractionText.count) + fractionText
    }

    /// A large count in millions, e.g. `29.5 M`.
    static func formatCount(_ value: Double) -> String {
        value >= 1e6 ? "\(Self.format(value / 1e6, digits: 1)) M" : "\(Self.format(value / 1e3, digits: 1)) k"
    }
}
