import HeapModule
import StorkCore
import StorkMembership

// MARK: - MembershipSimulation
//
// Failure detection alone: N membership state machines on a simulated network (virtual clock, seeded delay and
// loss). Measures how long after a crash every other member declares the crashed node dead, and counts live
// members declared dead (false positives). Used by `stork bench detection` and the tests.

/// The result of one failure-detection run.
public struct DetectionReport: Sendable {
    /// Virtual time from the crash until the last live member declared it dead; nil if some never did.
    public var detectionTime: Duration?
    /// Virtual time from the crash until the first live member declared it dead.
    public var firstDetection: Duration?
    /// Live members declared dead by someone during the run.
    public var falsePositives = 0
    /// Suspicions raised about live members (refuted in time unless counted above).
    public var suspicionsOfLiveMembers = 0
    /// Virtual time for every member to see every other alive after the starts.
    public var convergenceTime: Duration?
    /// Virtual time from the crash until the first member suspected the crashed node.
    public var firstSuspicion: Duration?
    public var messages = 0
}

/// A scripted failure-detection experiment. Deterministic per seed.
public struct MembershipSimulation {
    struct Scheduled: Comparable {
        var at: StorkInstant
        var sequence: UInt64
        var event: Event

        static func < (lhs: Scheduled, rhs: Scheduled) -> Bool {
            lhs.at == rhs.at ? lhs.sequence < rhs.sequence : lhs.at < rhs.at
        }

        static func == (lhs: Scheduled, rhs: Scheduled) -> Bool { lhs.at == rhs.at && lhs.sequence == rhs.sequence }
    }

    enum Event {
        case start(Int)
        case deliver(Int, MembershipMessage)
        case wake(Int)
        case crash(Int)
    }

    public var nodes: Int
    public var settings: MembershipSettings
    public var lossRate: Double
    public var seed: UInt64
    /// When to crash the last node, after everybody converged; nil for no crash.
    public var crashAfterConvergence: Duration? = .seconds(2)
    /// How long to run after convergence (or after the crash) at most.
    public var observeFor: Duration = .seconds(30)
    public var minimumDelay: Duration = .microseconds(500)
    public var maximumDelay: Duration = .milliseconds(5)

    public init(nodes: Int, settings: MembershipSettings = .init(), lossRate: Double = 0, seed: UInt64 = 1) {
        self.nodes = nodes
        self.settings = settings
        self.lossRate = lossRate
        self.seed = seed
    }

    public func run() -> DetectionReport {
        var random = SeededRandom(seed: self.seed)
        var queue = Heap<Scheduled>()
        var sequence: UInt64 = 0
        var machines: [MembershipStateMachine?] = Array(repeating: nil, count: self.nodes)
        var wakes: [StorkInstant?] = Array(repeating: nil, count: self.nodes)
        var alive = Array(repeating: true, count: self.nodes)
        var identities: [NodeID] = []
        var index: [String: Int] = [:]
        var report = DetectionReport()
        for i in 0..<self.nodes {
            let identity = NodeID(name: "node-\(i)", address: "node-\(i):7946", uid: UInt64(i + 1))
            identities.append(identity)
            index[identity.address] = i
        }
        func schedule(_ event: Event, at: StorkInstant) {
            sequence += 1
            queue.insert(Scheduled(at: at, sequence: sequence, event: event))
        }
        for i in 0..<self.nodes { schedule(.start(i), at: .zero + .milliseconds(10 * i)) }

        let victim = self.nodes - 1
        var crashAt: StorkInstant?
        var convergedAt: StorkInstant?
        var endAt: StorkInstant?
        var detectedBy: Set<Int> = []

        func perform(_ actions: [MembershipAction], at node: Int, now: StorkInstant) {
            for action in actions {
                switch action {
                case .send(let message, let address):
                    report.messages += 1
                    guard let target = index[address] else { continue }
                    if random.nextUnitDouble() < self.lossRate { continue }
                    let span = self.maximumDelay.nanosecondsClamped - self.minimumDelay.nanosecondsClamped
                    let delay = self.minimumDelay.nanosecondsClamped + Int64(random.next() % UInt64(max(1, span)))
                    schedule(.deliver(target, message), at: now + .nanoseconds(delay))
                case .memberChanged(let change):
                    guard let subject = index[change.node.address], identities[subject] == change.node else { continue }
                    if change.current == .dead {
                        if alive[subject] {
                            report.falsePositives += 1
                        } else if let crashAt, subject == victim, !detectedBy.contains(node) {
                            detectedBy.insert(node)
                            if detectedBy.count == 1 { report.firstDetection = now - crashAt }
                            if detectedBy.count == self.nodes - 1 { report.detectionTime = now - crashAt }
                        }
                    } else if change.current == .suspect, alive[subject] {
                        report.suspicionsOfLiveMembers += 1
                    } else if change.current == .suspect, let crashAt, subject == victim, report.firstSuspicion == nil {
                        report.firstSuspicion = now - crashAt
                    }
                case .joined, .refuted:
                    break
                }
            }
            if alive[node], let deadline = machines[node]?.nextDeadline,
                wakes[node].map({ deadline < $0 || $0 < now }) ?? true
            {
                wakes[node] = max(deadline, now)
                schedule(.wake(node), at: max(deadline, now))
            }
        }

        func converged() -> Bool {
            machines.allSatisfy { $0?.placementMembers.count == self.nodes }
        }

        while let next = queue.popMin() {
            let now = next.at
            if let endAt, now > endAt { break }
            if now > .zero + .seconds(120) && convergedAt == nil { break }
            switch next.event {
            case .start(let i):
                var machine = MembershipStateMachine(
                    myself: identities[i],
                    seeds: i == 0 ? [] : [identities[0].address],
                    settings: self.settings,
                    random: random.split()
                )
                let actions = machine.start(now: now)
                machines[i] = machine
                perform(actions, at: i, now: now)
            case .deliver(let i, let message):
                guard alive[i], var machine = machines[i] else { continue }
                machines[i] = nil
                let actions = machine.receive(message, now: now)
                machines[i] = machine
                perform(actions, at: i, now: now)
            case .wake(let i):
                guard alive[i], var machine = machines[i] else { continue }
                wakes[i] = nil
                machines[i] = nil
                let actions = machine.tick(now: now)
                machines[i] = machine
                perform(actions, at: i, now: now)
            case .crash(let i):
                alive[i] = false
                crashAt = now
                endAt = now + self.observeFor
            }
            if convergedAt == nil, converged() {
                convergedAt = now
                report.convergenceTime = now - .zero
                if let delay = self.crashAfterConvergence {
                    schedule(.crash(victim), at: now + delay)
                } else {
                    endAt = now + self.observeFor
                }
            }
            if crashAt != nil, detectedBy.count == self.nodes - 1 { break }
        }
        return report
    }
}
