import StorkCore

// MARK: - Many seeds

/// The outcome of running many seeds of one scenario.
public struct SimulationSummary: Sendable {
    public var seedsRun = 0
    public var events = 0
    public var convergenceTimes: [Duration] = []
    /// Seeds with at least one violation, with their reports.
    public var failures: [SimulationReport] = []
    public var crashes = 0
    public var pauses = 0
    public var partitions = 0
    public var excusedOverlaps = 0
    public var handoffTimeouts = 0
    public var falseDeaths = 0
    public var lostWithEveryHolder = 0
    /// The seeds that lost an acknowledged change (every holder crashed), for replays.
    public var seedsWithLoss: [UInt64] = []
    public var requestsIssued = 0
    public var outcomes: [String: Int] = [:]
    public var leaseGrants = 0
    public var storeOutages = 0

    public init() {}

    public mutating func add(_ report: SimulationReport) {
        self.seedsRun += 1
        self.events += report.events
        if let time = report.convergenceTime { self.convergenceTimes.append(time) }
        if !report.passed { self.failures.append(report) }
        self.crashes += report.crashes
        self.pauses += report.pauses
        self.partitions += report.partitions
        self.excusedOverlaps += report.excusedOverlaps
        self.handoffTimeouts += report.handoffTimeouts
        self.falseDeaths += report.falseDeaths
        self.lostWithEveryHolder += report.lostWithEveryHolder
        if report.lostWithEveryHolder > 0 { self.seedsWithLoss.append(report.configuration.seed) }
        self.requestsIssued += report.requestsIssued
        self.leaseGrants += report.leaseGrants
        self.storeOutages += report.storeOutages
        for (name, count) in report.outcomes { self.outcomes[name, default: 0] += count }
    }

    public mutating func merge(_ other: SimulationSummary) {
        self.seedsRun += other.seedsRun
        self.events += other.events
        self.convergenceTimes += other.convergenceTimes
        self.failures += other.failures
        self.crashes += other.crashes
        self.pauses += other.pauses
        self.partitions += other.partitions
        self.excusedOverlaps += other.excusedOverlaps
        self.handoffTimeouts += other.handoffTimeouts
        self.falseDeaths += other.falseDeaths
        self.lostWithEveryHolder += other.lostWithEveryHolder
        self.seedsWithLoss = (self.seedsWithLoss + other.seedsWithLoss).sorted()
        self.requestsIssued += other.requestsIssued
        self.leaseGrants += other.leaseGrants
        self.storeOutages += other.storeOutages
        for (name, count) in other.outcomes { self.outcomes[name, default: 0] += count }
    }

    /// The `p`-quantile (0...1) of the convergence times, in seconds.
    public func convergenceQuantile(_ p: Double) -> Double? {
        guard !self.convergenceTimes.isEmpty else { return nil }
        let sorted = self.convergenceTimes.sorted()
        let index = min(sorted.count - 1, max(0, Int((Double(sorted.count) * p).rounded(.up)) - 1))
        return sorted[index].secondsDouble
    }

    public var violations: Int { self.failures.reduce(0) { $0 + $1.violations.count } }
}

public enum SimulationRunner {
    /// Runs `seeds` with the base configuration, one after the other.
    public static func run(
        seeds: some Sequence<UInt64>,
        base: SimulationConfiguration
    ) -> SimulationSummary {
        var summary = SimulationSummary()
        for seed in seeds {
            var configuration = base
            configuration.seed = seed
            var simulation = Simulation(configuration: configuration)
            summary.add(simulation.run())
        }
        return summary
    }

    /// Runs `seeds` spread over `parallelism` concurrent workers.
    public static func runParallel(
        seeds: [UInt64],
        base: SimulationConfiguration,
        parallelism: Int
    ) async -> SimulationSummary {
        let workers = max(1, min(parallelism, seeds.count))
        return await withTaskGroup(of: SimulationSummary.self) { group in
            for worker in 0..<workers {
                let mine = stride(from: worker, to: seeds.count, by: workers).map { seeds[$0] }
                group.addTask { Self.run(seeds: mine, base: base) }
            }
            var total = SimulationSummary()
            for await part in group { total.merge(part) }
            total.failures.sort { $0.configuration.seed < $1.configuration.seed }
            return total
        }
    }
}
