import ArgumentParser
import Foundation
import Stork
import StorkTestKit

/// `stork sim`: runs the deterministic cluster simulator over many seeds and checks the invariants.
struct SimCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sim",
        abstract: "Run the deterministic cluster simulator over many seeds and check Stork's invariants.",
        discussion: """
            Each seed runs a cluster of --nodes nodes with the real membership, placement and orchestrator state \
            machines on a simulated network and virtual clock, injects --faults during a fault window while \
            resources are allocated and deallocated, heals everything, and checks that the cluster converges with \
            every desired resource handled by exactly one node. A violation prints the seed and the command that \
            replays it, and the exit status is 1.
            """
    )

    @Option(help: "How many seeds to run (seeds first-seed ..< first-seed + seeds).")
    var seeds: Int = 100

    @Option(help: "The first seed.")
    var firstSeed: UInt64 = 1

    @Option(help: "Run exactly this one seed (a replay); prints its full report.")
    var seed: UInt64?

    @Option(help: "Nodes in the simulated cluster.")
    var nodes: Int = 5

    @Option(help: "Resources in the source at start.")
    var resources: Int = 100

    @Option(help: "Comma-separated faults: crash, pause, partition, loss, store, ack-crash (or none, all).")
    var faults: String = "crash,pause,partition,loss,ack-crash"

    @Option(help: "Seconds of virtual time during which faults are injected.")
    var faultWindow: Int = 30

    @Flag(help: "Do not allocate and deallocate resources during the run.")
    var noChurn = false

    @Flag(help: "Lease ownership (default lease settings) with a simulated ownership store; checks the lease invariants.")
    var leases = false

    @Option(help: "Members that must hold an allocate/deallocate before it answers: a number, or all (resources.replicas).")
    var replicas: String = "2"

    @Option(help: "Pin every Nth resource to a node (the nodes in turn); 0 pins none.")
    var pinnedEvery: Int = 0

    @Flag(help: "With --seed: print the run's trace of events.")
    var trace = false

    @Option(help: "Parallel workers (default: the number of cores).")
    var jobs: Int?

    func validate() throws {
        guard self.nodes >= 1, self.nodes <= 200 else { throw ValidationError("--nodes must be between 1 and 200") }
        guard self.seeds >= 1 else { throw ValidationError("--seeds must be at least 1") }
        guard self.resources >= 0 else { throw ValidationError("--resources must not be negative") }
        guard self.pinnedEvery >= 0 else { throw ValidationError("--pinned-every must not be negative") }
        guard self.faultWindow >= 1 else { throw ValidationError("--fault-window must be at least 1 second") }
        guard ReplicaRequirement(parsing: self.replicas) != nil else {
            throw ValidationError("--replicas must be a positive number or all")
        }
        do {
            _ = try SimulationFault.parseList(self.faults)
        } catch let error as StorkError {
            throw ValidationError(error.message)
        }
    }

    func run() async throws {
        var base = SimulationConfiguration()
        base.nodes = self.nodes
        base.resources = self.resources
        base.faults = try SimulationFault.parseList(self.faults)
        base.churn = !self.noChurn
        base.pinnedEvery = self.pinnedEvery
        base.faultWindow = .seconds(self.faultWindow)
        if self.leases { base.node.orchestrator.ownership = .lease(LeaseSettings()) }
        base.node.replicas = ReplicaRequirement(parsing: self.replicas) ?? .members(2)

        if let seed = self.seed {
            base.seed = seed
            base.recordTrace = self.trace
            var simulation = Simulation(configuration: base)
            let report = simulation.run()
            Self.printReport(report)
            if !report.passed { throw ExitCode(1) }
            return
        }

        let seeds = (0..<UInt64(self.seeds)).map { self.firstSeed + $0 }
        let started = ContinuousClock.now
        let summary = await SimulationRunner.runParallel(
            seeds: seeds,
            base: base,
            parallelism: self.jobs ?? ProcessInfo.processInfo.activeProcessorCount
        )
        let elapsed = ContinuousClock.now - started
        let faultNames = base.faults.isEmpty ? "none" : base.faults.sorted().map(\.rawValue).joined(separator: ",")
        print(
            "stork sim: \(summary.seedsRun) seeds, \(self.nodes) nodes, \(self.resources) resources, faults \(faultNames)"
        )
        print("  events:                 \(summary.events)")
        let p50 = summary.convergenceQuantile(0.5).map { String(format: "%.2f", $0) } ?? "-"
        let p99 = summary.convergenceQuantile(0.99).map { String(format: "%.2f", $0) } ?? "-"
        print("  convergence after heal: p50 \(p50) s, p99 \(p99) s (virtual)")
        print(
            "  faults injected:        \(summary.crashes) crashes, \(summary.pauses) pauses, \(summary.partitions) partitions"
        )
        print("  false deaths:           \(summary.falseDeaths) (a live member declared dead, under faults)")
        print("  excused overlaps:       \(summary.excusedOverlaps) (a member declared dead still ran it)")
        print("  handoff timeouts:       \(summary.handoffTimeouts)")
        if self.leases {
            print("  leases granted:         \(summary.leaseGrants) (store outages: \(summary.storeOutages))")
        }
        print(
            "  acknowledged lost:      \(summary.lostWithEveryHolder) (acknowledged changes whose every holder crashed; "
                + "lost with a holder alive is a violation)"
        )
        if !summary.seedsWithLoss.isEmpty {
            print("    in seeds:             \(summary.seedsWithLoss.sorted().prefix(10).map(String.init).joined(separator: " "))")
        }
        let outcomes = summary.outcomes.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(
            separator: ", "
        )
        print("  requests:               \(summary.requestsIssued) issued; \(outcomes)")
        print("  wall time:              \(String(format: "%.1f", elapsed.secondsDouble)) s")
        print("  violations:             \(summary.violations)")
        for failure in summary.failures.prefix(10) {
            print("")
            print("seed \(failure.configuration.seed) failed:")
            for violation in failure.violations.prefix(5) { print("  \(violation)") }
            print("  replay: \(failure.configuration.replayCommand)")
        }
        if !summary.failures.isEmpty { throw ExitCode(1) }
    }

    static func printReport(_ report: SimulationReport) {
        let config = report.configuration
        print("seed \(config.seed): \(report.passed ? "passed" : "FAILED")")
        print(
            "  events \(report.events), virtual time \(String(format: "%.1f", report.virtualDuration.secondsDouble)) s"
        )
        if let time = report.convergenceTime {
            print("  converged \(String(format: "%.2f", time.secondsDouble)) s after the faults healed")
        } else {
            print("  did not converge")
        }
        print("  crashes \(report.crashes), pauses \(report.pauses), partitions \(report.partitions)")
        print("  handles \(report.handles), terminations \(report.terminations), refutations \(report.refutations)")
        print("  messages \(report.messagesSent) sent, \(report.messagesDropped) dropped")
        print(
            "  false deaths \(report.falseDeaths), excused overlaps \(report.excusedOverlaps), handoff timeouts \(report.handoffTimeouts)"
        )
        let outcomes = report.outcomes.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(
            separator: ", "
        )
        print("  requests \(report.requestsIssued) issued; \(outcomes)")
        print("  final resources \(report.finalResources)")
        print("  acknowledged changes lost \(report.lostWithEveryHolder) (every member that held them crashed)")
        print("  trace fingerprint \(String(report.traceFingerprint, radix: 16))")
        for line in report.trace { print("  | \(line)") }
        for violation in report.violations { print("  VIOLATION \(violation)") }
        for note in report.notes { print("  note: \(note)") }
        print("  replay: \(config.replayCommand)")
    }
}
