import StorkCore
import Testing

@testable import StorkMembership

// MARK: - A tiny in-memory cluster with virtual time
//
// Wires N state machines through a seeded in-memory network (latency, random loss, crashed nodes) and a virtual
// clock. Enough to check convergence, detection time and false positives here; the real simulator lives in
// StorkTestKit.

struct TestCluster {
    struct Envelope {
        var at: StorkInstant
        var order: UInt64
        var to: String
        var message: MembershipMessage
    }

    var machines: [String: MembershipStateMachine] = [:]
    var nodes: [NodeID] = []
    var crashed: Set<String> = []
    /// Partition group per address; messages between different groups are lost. Empty: no partition.
    var groups: [String: Int] = [:]
    /// In flight, sorted by (at, order) descending: the next delivery is `last`.
    var inFlight: [Envelope] = []
    var deadlines: [String: StorkInstant] = [:]
    var now: StorkInstant = .zero
    var random: SeededRandom
    var lossRate: Double
    var latencyMicroseconds: ClosedRange<Int64>
    var lastOrder: UInt64 = 0
    /// Every status change any node observed: (when, observer, change).
    var changes: [(StorkInstant, NodeID, MemberChange)] = []
    var delivered = 0
    var dropped = 0

    init(
        size: Int,
        seed: UInt64,
        lossRate: Double = 0,
        latencyMicroseconds: ClosedRange<Int64> = 500...5_000,
        settings: MembershipSettings = .init()
    ) {
        self.random = SeededRandom(seed: seed)
        self.lossRate = lossRate
        self.latencyMicroseconds = latencyMicroseconds
        for index in 0..<size {
            let id = NodeID(name: "n\(index)", address: "n\(index):7946", uid: UInt64(1_000 + index))
            self.nodes.append(id)
            self.machines[id.address] = MembershipStateMachine(
                myself: id,
                seeds: ["n0:7946", "n1:7946"],
                settings: settings,
                random: self.random.split()
            )
        }
    }

    /// Starts node `index` now.
    mutating func start(_ index: Int) {
        let address = self.nodes[index].address
        let actions = self.machines[address]!.start(now: self.now)
        self.handle(actions, from: self.nodes[index])
        self.deadlines[address] = self.machines[address]!.nextDeadline
    }

    /// Starts every node, `staggerMilliseconds` apart.
    mutating func startAll(staggerMilliseconds: Int = 20) {
        for index in self.nodes.indices {
            self.run(until: self.now + .milliseconds(index == 0 ? 0 : staggerMilliseconds))
            self.start(index)
        }
    }

    /// Splits the cluster: `first` indices on one side, the rest on the other.
    mutating func partition(_ first: Range<Int>) {
        for (index, node) in self.nodes.enumerated() { self.groups[node.address] = first.contains(index) ? 0 : 1 }
    }

    mutating func heal() {
        self.groups = [:]
    }

    /// The node stops sending and receiving.
    mutating func crash(_ index: Int) {
        self.crashed.insert(self.nodes[index].address)
        self.deadlines[self.nodes[index].address] = nil
    }

    mutating func run(until end: StorkInstant) {
        while true {
            var timer: (StorkInstant, String)?
            for (address, deadline) in self.deadlines {
                if timer.map({ (deadline, address) < $0 }) ?? true { timer = (deadline, address) }
            }
            let message = self.inFlight.last
            if let message, message.at <= end, timer.map({ message.at <= $0.0 }) ?? true {
                self.inFlight.removeLast()
                self.now = message.at
                guard !self.crashed.contains(message.to), self.machines[message.to] != nil else { continue }
                self.delivered += 1
                let actions = self.machines[message.to]!.receive(message.message, now: self.now)
                self.handle(actions, from: self.machines[message.to]!.myself)
                self.deadlines[message.to] = self.machines[message.to]!.nextDeadline
            } else if let (deadline, address) = timer, deadline <= end {
                self.now = deadline
                let actions = self.machines[address]!.tick(now: self.now)
                self.handle(actions, from: self.machines[address]!.myself)
                self.deadlines[address] = self.machines[address]!.nextDeadline
            } else {
                break
            }
        }
        self.now = end
    }

    mutating func handle(_ actions: [MembershipAction], from sender: NodeID) {
        for action in actions {
            switch action {
            case .send(let message, let to):
                if let mine = self.groups[sender.address], let theirs = self.groups[to], mine != theirs {
                    self.dropped += 1
                    continue
                }
                if self.lossRate > 0, self.random.nextUnitDouble() < self.lossRate {
                    self.dropped += 1
                    continue
                }
                let delay = Int64.random(in: self.latencyMicroseconds, using: &self.random)
                self.lastOrder += 1
                let envelope = Envelope(
                    at: self.now + .microseconds(delay),
                    order: self.lastOrder,
                    to: to,
                    message: message
                )
                let index = self.inFlight.partitioningIndex {
                    ($0.at, $0.order) < (envelope.at, envelope.order)
                }
                self.inFlight.insert(envelope, at: index)
            case .memberChanged(let change):
                self.changes.append((self.now, sender, change))
            case .joined, .refuted:
                break
            }
        }
    }

    func machine(_ index: Int) -> MembershipStateMachine { self.machines[self.nodes[index].address]! }

    var live: [MembershipStateMachine] {
        self.nodes.filter { !self.crashed.contains($0.address) }.map { self.machines[$0.address]! }
    }

    /// Every live node sees exactly the live nodes, all alive, with one checksum.
    var isConverged: Bool {
        let expected = self.nodes.filter { !self.crashed.contains($0.address) }.sorted()
        let live = self.live
        return live.allSatisfy { machine in
            machine.placementMembers == expected && expected.allSatisfy { machine.status(of: $0) == .alive }
        } && Set(live.map(\.checksum)).count == 1
    }

    /// What differs from convergence, for failure messages.
    var divergence: String {
        let expected = self.nodes.filter { !self.crashed.contains($0.address) }
        var lines: [String] = []
        for machine in self.live {
            let wrong = machine.members.filter { member in
                expected.contains(member.node) ? member.status != .alive : member.status.isActive
            }
            let missing = expected.filter { machine.status(of: $0) == nil }
            if !wrong.isEmpty || !missing.isEmpty {
                lines.append("\(machine.myself.name): wrong \(wrong) missing \(missing.map(\.name))")
            }
        }
        lines.append("checksums: \(Set(self.live.map(\.checksum)).count)")
        return lines.joined(separator: "; ")
    }

    /// Changes to dead observed anywhere.
    var deaths: [(StorkInstant, NodeID, MemberChange)] {
        self.changes.filter { $0.2.current == .dead }
    }
}

extension Array {
    /// For an array sorted so that `belongsAfter` holds for a prefix: the first index where it no longer holds.
    func partitioningIndex(where belongsAfter: (Element) -> Bool) -> Int {
        // Sorted descending: elements greater than the new one stay before it.
        var low = 0
        var high = self.count
        while low < high {
            let mid = (low + high) / 2
            if belongsAfter(self[mid]) { high = mid } else { low = mid + 1 }
        }
        return low
    }
}

@Suite("Membership cluster (in-memory harness)")
struct MembershipClusterTests {
    @Test("5 nodes converge to 5 alive with one checksum")
    func converge() {
        for seed: UInt64 in 1...5 {
            var cluster = TestCluster(size: 5, seed: seed)
            cluster.startAll()
            var convergedAt: StorkInstant?
            while cluster.now < at(5_000) {
                cluster.run(until: cluster.now + .milliseconds(10))
                if convergedAt == nil, cluster.isConverged { convergedAt = cluster.now }
            }
            let converged = cluster.isConverged
            #expect(converged, "seed \(seed): \(cluster.divergence)")
            #expect(cluster.live.allSatisfy { $0.isJoined })
            #expect(cluster.deaths.isEmpty)
            #expect(cluster.live.allSatisfy { $0.statistics.suspicionsRaised == 0 })
            print(
                "membership harness: 5 nodes, seed \(seed): converged at \(convergedAt.map(\.description) ?? "never")"
            )
        }
    }

    @Test("a run replays exactly from its seed")
    func deterministic() {
        func run(_ seed: UInt64) -> [String] {
            var cluster = TestCluster(size: 8, seed: seed, lossRate: 0.05)
            cluster.startAll()
            cluster.run(until: at(5_000))
            cluster.crash(3)
            cluster.run(until: at(10_000))
            return cluster.changes.map { "\($0.0) \($0.1.name) \($0.2)" }
                + cluster.live.map { "\($0.myself.name) \($0.checksum) \($0.statistics.totalMessagesSent)" }
        }
        #expect(run(42) == run(42))
        #expect(run(42) != run(43))
    }

    @Test("a crashed node is declared dead by every other member within the bound", arguments: [5, 10, 20])
    func crashDetection(size: Int) {
        var worst: Duration = .zero
        var times: [Double] = []
        for seed: UInt64 in 1...5 {
            var cluster = TestCluster(size: size, seed: seed)
            cluster.startAll()
            cluster.run(until: at(8_000))
            let convergedBeforeCrash = cluster.isConverged
            #expect(convergedBeforeCrash, "seed \(seed): \(cluster.divergence)")
            let victim = cluster.nodes[2]
            let crashAt = cluster.now
            cluster.crash(2)
            var detectedAt: StorkInstant?
            while cluster.now < crashAt + .seconds(10) {
                cluster.run(until: cluster.now + .milliseconds(10))
                if cluster.live.allSatisfy({ $0.status(of: victim) == .dead }) {
                    detectedAt = cluster.now
                    break
                }
            }
            guard let detectedAt else {
                Issue.record("size \(size), seed \(seed): not detected within 10 s")
                continue
            }
            let elapsed = detectedAt - crashAt
            worst = max(worst, elapsed)
            times.append(elapsed.secondsDouble)
            // Nobody else was declared dead.
            #expect(cluster.deaths.allSatisfy { $0.2.node == victim }, "seed \(seed)")
            cluster.run(until: cluster.now + .seconds(2))
            let convergedAfter = cluster.isConverged
            #expect(convergedAfter, "seed \(seed): live members agree after detection: \(cluster.divergence)")
        }
        print(
            "membership harness: \(size) nodes, crash → dead on all members: "
                + times.map { "\(($0 * 100).rounded() / 100)s" }.joined(separator: " ") + ", worst \(worst)"
        )
        #expect(worst < .seconds(size <= 10 ? 3 : 4))
    }

    @Test("a healed partition reconverges through push-pull, without false deaths on either side")
    func partitionHeals() {
        for seed: UInt64 in 1...3 {
            var cluster = TestCluster(size: 10, seed: seed)
            cluster.startAll()
            cluster.run(until: at(8_000))
            cluster.partition(0..<5)
            cluster.run(until: at(23_000))
            // Each side has declared the other dead.
            let split = cluster.nodes.indices.allSatisfy { index in
                let machine = cluster.machine(index)
                return cluster.nodes.indices.allSatisfy { other in
                    (index < 5) == (other < 5)
                        ? machine.status(of: cluster.nodes[other]) == .alive
                        : machine.status(of: cluster.nodes[other]) == .dead
                }
            }
            #expect(split, "seed \(seed)")
            let healedAt = cluster.now
            let deathsBefore = cluster.deaths.count
            cluster.heal()
            var convergedAt: StorkInstant?
            while cluster.now < healedAt + .seconds(60) {
                cluster.run(until: cluster.now + .milliseconds(50))
                if cluster.isConverged {
                    convergedAt = cluster.now
                    break
                }
            }
            let falseDeaths = cluster.deaths.count - deathsBefore
            let elapsed = convergedAt.map { ($0 - healedAt).secondsDouble } ?? .infinity
            print(
                "membership harness: 10 nodes, 15 s partition 5/5, seed \(seed): reconverged \(elapsed) s after healing, "
                    + "\(falseDeaths) deaths after healing"
            )
            #expect(convergedAt != nil, "seed \(seed): \(cluster.divergence)")
            #expect(falseDeaths == 0, "seed \(seed)")
            #expect(elapsed < 30, "seed \(seed)")
        }
    }

    @Test("no false deaths under 5% loss: 10 nodes, 60 s of virtual time")
    func noFalsePositivesUnderLoss() {
        for seed: UInt64 in [11, 22, 33] {
            var cluster = TestCluster(size: 10, seed: seed, lossRate: 0.05)
            cluster.startAll()
            cluster.run(until: at(60_000))
            let suspicions = cluster.live.map(\.statistics.suspicionsRaised).reduce(0, +)
            let refutations = cluster.live.map(\.statistics.refutations).reduce(0, +)
            let probes = cluster.live.map(\.statistics.probesSent).reduce(0, +)
            let maxHealth = cluster.live.map(\.localHealth).max() ?? 0
            print(
                "membership harness: 10 nodes, 5% loss, 60 s, seed \(seed): \(probes) probes, "
                    + "\(suspicions) suspicions, \(refutations) refutations, \(cluster.deaths.count) deaths, "
                    + "\(cluster.delivered) delivered / \(cluster.dropped) dropped, max LHM now \(maxHealth)"
            )
            #expect(cluster.deaths.isEmpty, "seed \(seed): \(cluster.deaths.map(\.2))")
            let converged = cluster.isConverged
            #expect(converged, "seed \(seed): \(cluster.divergence)")
        }
    }
}
