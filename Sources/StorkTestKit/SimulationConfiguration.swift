import Foundation
import StorkCore
import StorkResources

// MARK: - Faults

/// A kind of fault the simulator injects during a run's fault window.
public enum SimulationFault: String, CaseIterable, Sendable, Hashable, Comparable {
    /// A process dies (all its state and running resources are gone) and restarts later as a new member.
    case crash
    /// A process stops (like SIGSTOP or a long GC pause) and resumes later with its state and stale timers.
    case pause
    /// The network splits into two groups, symmetric or one-way, and heals later.
    case partition
    /// Messages are lost and duplicated at random.
    case loss
    /// Lease mode: the ownership store cannot be reached (requests time out) for a while.
    case store
    /// The node that answered an `allocate` / `deallocate` successfully crashes at the instant of its answer (with
    /// probability `ackCrashRate`) and restarts later: the acknowledged change must survive it.
    case ackCrash = "ack-crash"

    public static func < (lhs: SimulationFault, rhs: SimulationFault) -> Bool { lhs.rawValue < rhs.rawValue }

    /// Parses "crash,pause,partition,loss" (or "none").
    public static func parseList(_ text: String) throws -> Set<SimulationFault> {
        var result = Set<SimulationFault>()
        for part in text.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !part.isEmpty {
            if part == "none" { continue }
            if part == "all" {
                result.formUnion(Self.allCases)
                continue
            }
            guard let fault = SimulationFault(rawValue: part) else {
                throw StorkError(
                    .invalidInput,
                    "unknown fault '\(part)'; expected a comma-separated list of crash, pause, partition, loss, store, "
                        + "ack-crash"
                )
            }
            result.insert(fault)
        }
        return result
    }
}

// MARK: - Configuration

/// One simulated run: the cluster, the workload, the faults. Every random choice derives from `seed`.
public struct SimulationConfiguration: Sendable {
    public var seed: UInt64 = 1
    public var nodes = 5
    /// Resources in the source at start.
    public var resources = 100
    public var faults: Set<SimulationFault> = []
    /// Allocate and deallocate resources through random nodes while faults happen.
    public var churn = true
    /// Every this many resources (by number), one is pinned to a node (`Resource.pinAttribute`), the nodes taken in
    /// turn; 0 pins none.
    public var pinnedEvery = 0
    /// The settings every node runs with.
    public var node = NodeSettings()

    /// Time between node starts; node 0 starts first and the others join through it.
    public var startupSpacing: Duration = .milliseconds(100)
    /// Quiet time after the last start before faults begin.
    public var warmup: Duration = .seconds(5)
    /// How long faults are injected. Every fault is healed at the end of the window.
    public var faultWindow: Duration = .seconds(30)
    /// After the window, the cluster must converge within this bound or the run fails.
    public var convergenceBound: Duration = .seconds(60)

    /// One-way network delay, uniformly distributed: messages are reordered naturally.
    public var minimumDelay: Duration = .microseconds(500)
    public var maximumDelay: Duration = .milliseconds(5)
    /// Loss and duplication rates while the `loss` fault is active.
    public var lossRate = 0.05
    public var duplicateRate = 0.01

    /// The simulated handler: latency and failure rates of handle and terminate.
    public var minimumHandlerLatency: Duration = .milliseconds(1)
    public var maximumHandlerLatency: Duration = .milliseconds(40)
    public var handleFailureRate = 0.03
    /// With the `ack-crash` fault: the probability that a node crashes right after a successful answer.
    public var ackCrashRate = 0.1
    public var terminateFailureRate = 0.02

    /// Lease mode (set `node.orchestrator.ownership = .lease(…)`): the ownership store's one-way latency, how long
    /// a node waits for an answer before the request counts as failed, and the store clock's offset from the
    /// nodes' (the store judges expiry by its own clock).
    public var minimumStoreLatency: Duration = .milliseconds(1)
    public var maximumStoreLatency: Duration = .milliseconds(20)
    public var storeTimeout: Duration = .seconds(1)
    public var storeClockOffset: Duration = .seconds(1_000)

    /// Keep a trace of every event (for `--trace` and replays); costs memory.
    public var recordTrace = false

    public init() {}

    /// The command that replays this run.
    public var replayCommand: String {
        let faults = self.faults.isEmpty ? "none" : self.faults.sorted().map(\.rawValue).joined(separator: ",")
        return
            "stork sim --seed \(self.seed) --nodes \(self.nodes) --resources \(self.resources) --faults \(faults)"
            + (self.churn ? "" : " --no-churn") + (self.pinnedEvery == 0 ? "" : " --pinned-every \(self.pinnedEvery)") + (self.node.orchestrator.ownership.leaseSettings != nil ? " --leases" : "")
            + (self.node.replicas == .members(2) ? "" : " --replicas \(self.node.replicas)") + " --trace"
    }
}
