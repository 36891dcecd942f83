import ArgumentParser
import Foundation
import StorkCore
import StorkMembership
import StorkTestKit

// MARK: - stork bench detection

/// `stork bench detection`: how fast a crashed node is declared dead by every member, in virtual time, and how
/// many live members are wrongly declared dead under packet loss.
struct DetectionBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "detection",
        abstract: "Failure-detection time and false positives of the membership protocol, simulated.",
        discussion: """
            For each cluster size, runs --seeds simulations with default membership settings on a network with \
            0.5–5 ms delay: once without loss, crashing one node 2 s after convergence and measuring until every \
            other member declared it dead; and once with --loss packet loss for --observe seconds without a crash, \
            counting live members declared dead. Times are virtual seconds.
            """
    )

    @Option(help: "Cluster sizes, comma separated.")
    var nodes: String = "5,10,20,50"

    @Option(help: "Seeds per size.")
    var seeds: Int = 20

    @Option(help: "Packet loss for the false-positive runs (0.05 = 5%).")
    var loss: Double = 0.05

    @Option(help: "Virtual seconds each false-positive run observes.")
    var observe: Int = 60

    @Option(help: "Override the suspicion multiplier (for tuning experiments).")
    var suspicionMultiplier: Double?

    @Option(help: "Override the suspicion minimum in milliseconds (for tuning experiments).")
    var suspicionMinimumMs: Int?

    @Option(help: "Override the max independent suspicions (Lifeguard K).")
    var independentSuspicions: Int?

    @Option(help: "Override the probe interval in milliseconds (for tuning experiments).")
    var probeIntervalMs: Int?

    @Option(help: "Override the suspicion maximum multiplier (for tuning experiments).")
    var suspicionMaxMultiplier: Double?

    func validate() throws {
        guard self.seeds >= 1 else { throw ValidationError("--seeds must be at least 1") }
        guard (0..<1).contains(self.loss) else { throw ValidationError("--loss must be in [0, 1)") }
        guard (try? self.sizes()) != nil else {
            throw ValidationError("--nodes must be a list of sizes ≥ 2, e.g. 5,10,50")
        }
    }

    func sizes() throws -> [Int] {
        let sizes = self.nodes.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !sizes.isEmpty, sizes.allSatisfy({ $0 >= 2 && $0 <= 500 }) else { throw ValidationError("bad sizes") }
        return sizes
    }

    func run() async throws {
        var settings = MembershipSettings()
        if let value = self.suspicionMultiplier { settings.suspicionMultiplier = value }
        if let value = self.suspicionMinimumMs { settings.suspicionMinimum = .milliseconds(value) }
        if let value = self.independentSuspicions { settings.maxIndependentSuspicions = value }
        if let value = self.suspicionMaxMultiplier { settings.suspicionMaxMultiplier = value }
        if let value = self.probeIntervalMs { settings.probeInterval = .milliseconds(value) }
        print("## Failure detection (default membership settings, virtual time)")
        print()
        print(
            "probe interval \(settings.probeInterval), probe timeout \(settings.probeTimeout), indirect timeout "
                + "\(settings.indirectProbeTimeout), suspicion minimum \(settings.suspicionMinimum), "
                + "suspicion multiplier \(settings.suspicionMultiplier), \(self.seeds) seeds per row"
        )
        print()
        let lossPercent = String(format: "%g", self.loss * 100)
        print(
            "| nodes | crash → dead everywhere p50 | p99 | max | first detection p50 | with \(lossPercent)% loss: "
                + "crash → dead everywhere max | live members declared dead (\(lossPercent)% loss, \(self.observe) s) | "
                + "suspicions refuted |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        let loss = self.loss
        let frozen = settings
        let observe = self.observe
        let seedCount = self.seeds
        for size in try self.sizes() {
            let rows = await withTaskGroup(of: (DetectionReport, DetectionReport, DetectionReport).self) { group in
                for seed in 1...UInt64(seedCount) {
                    group.addTask {
                        let crash = MembershipSimulation(nodes: size, settings: frozen, seed: seed).run()
                        let lossyCrash = MembershipSimulation(nodes: size, settings: frozen, lossRate: loss, seed: seed)
                            .run()
                        var quiet = MembershipSimulation(
                            nodes: size,
                            settings: frozen,
                            lossRate: loss,
                            seed: seed + 10_000
                        )
                        quiet.crashAfterConvergence = nil
                        quiet.observeFor = .seconds(observe)
                        return (crash, lossyCrash, quiet.run())
                    }
                }
                var rows: [(DetectionReport, DetectionReport, DetectionReport)] = []
                for await row in group { rows.append(row) }
                return rows
            }
            if ProcessInfo.processInfo.environment["STORK_BENCH_VERBOSE"] != nil {
                for row in rows {
                    print(
                        "  suspect \(row.0.firstSuspicion?.secondsDouble ?? -1) first \(row.0.firstDetection?.secondsDouble ?? -1) all \(row.0.detectionTime?.secondsDouble ?? -1)"
                    )
                }
            }
            let times = rows.compactMap { $0.0.detectionTime?.secondsDouble }.sorted()
            let firsts = rows.compactMap { $0.0.firstDetection?.secondsDouble }.sorted()
            let lossy = rows.compactMap { $0.1.detectionTime?.secondsDouble }.sorted()
            let undetected = rows.filter { $0.0.detectionTime == nil || $0.1.detectionTime == nil }.count
            let falsePositives = rows.reduce(0) { $0 + $1.2.falsePositives + $1.0.falsePositives }
            let suspicions = rows.reduce(0) { $0 + $1.2.suspicionsOfLiveMembers }
            func q(_ values: [Double], _ p: Double) -> String {
                guard !values.isEmpty else { return "-" }
                let i = min(values.count - 1, max(0, Int((Double(values.count) * p).rounded(.up)) - 1))
                return String(format: "%.2f s", values[i])
            }
            print(
                "| \(size) | \(q(times, 0.5)) | \(q(times, 0.99)) | \(q(times, 1)) | \(q(firsts, 0.5)) | "
                    + "\(q(lossy, 1)) | \(falsePositives) | \(suspicions) |"
                    + (undetected > 0 ? " (\(undetected) runs never detected)" : "")
            )
        }
    }
}
