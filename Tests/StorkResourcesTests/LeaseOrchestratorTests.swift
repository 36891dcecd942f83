import StorkCore
import StorkPlacement
import Testing

@testable import StorkResources

/// Lease timing for these tests: 1 s leases, renewed every 200 ms, fenced after 700 ms without a renewal.
let testLeases = LeaseSettings(
    duration: .seconds(1),
    renewInterval: .milliseconds(200),
    renewDeadline: .milliseconds(700),
    acquireRetryInterval: .milliseconds(100)
)

func leaseSettings() -> OrchestratorSettings {
    var settings = OrchestratorSettings()
    settings.ownership = .lease(testLeases)
    return settings
}

/// An orchestrator in lease mode and a store (the reference `LeaseTable`) that answers its requests at once, on
/// the same clock, unless `storeUp` is false.
struct LeaseHarness {
    var node: OrchestratorHarness
    var table = LeaseTable()
    var storeUp = true
    var holder: String

    init(myself: NodeID = nodeA) {
        self.node = OrchestratorHarness(myself: myself, settings: leaseSettings())
        self.holder = "\(myself.name)/\(myself.uid)"
    }

    /// Answers every store request in `actions` (and in the answers' actions), completes handles and terminates.
    @discardableResult
    mutating func serve(_ actions: [OrchestratorAction]) -> [OrchestratorAction] {
        var pending = actions
        var all: [OrchestratorAction] = []
        while !pending.isEmpty {
            let action = pending.removeFirst()
            all.append(action)
            let now = self.node.now
            var next: [OrchestratorAction] = []
            switch action {
            case .acquireLeases(let ids):
                if self.storeUp {
                    let grants = self.table.acquire(ids, holder: self.holder, duration: testLeases.duration, now: now)
                    next = self.node.machine.leasesAcquired(granted: grants.granted, refused: grants.refused, requestedAt: now, now: now)
                } else {
                    next = self.node.machine.leaseAcquireFailed(ids, now: now)
                }
            case .renewLeases(let keys):
                if self.storeUp {
                    let result = self.table.renew(keys, holder: self.holder, duration: testLeases.duration, now: now)
                    next = self.node.machine.leasesRenewed(renewed: result.renewed, lost: result.lost, requestedAt: now, now: now)
                } else {
                    next = self.node.machine.leaseRenewFailed(now: now)
                }
            case .releaseLeases(let keys):
                if self.storeUp { self.table.release(keys, holder: self.holder, now: now) }
            case .handle, .terminate:
                next = self.node.complete([action])
            default:
                break
            }
            pending += next
        }
        self.node.log += all
        return all
    }

    @discardableResult
    mutating func advance(by duration: Duration, step: Duration = .milliseconds(50)) -> [OrchestratorAction] {
        var all: [OrchestratorAction] = []
        var left = duration
        while left > .zero {
            let slice = min(step, left)
            all += self.serve(self.node.advance(by: slice))
            left -= slice
        }
        return all
    }
}

extension Array where Element == OrchestratorAction {
    var acquired: [ResourceID] {
        self.flatMap { if case .acquireLeases(let ids) = $0 { return ids } else { return [] } }
    }
    var renewals: [[LeaseKey]] {
        self.compactMap { if case .renewLeases(let keys) = $0 { return keys } else { return nil } }
    }
    var released: [LeaseKey] {
        self.flatMap { if case .releaseLeases(let keys) = $0 { return keys } else { return [] } }
    }
    func terminations(_ reason: TerminationReason) -> [ResourceID] {
        self.compactMap { if case .terminate(let r, let why, _) = $0, why == reason { return r.id } else { return nil } }.sorted()
    }
}

@Suite("Orchestrator in lease mode")
struct LeaseOrchestratorTests {
    @Test("the owner acquires every lease in one batch, then handles each with its fencing token")
    func acquireThenHandle() {
        var h = LeaseHarness()
        h.serve(h.node.join([nodeA]))
        let actions = h.serve(h.node.desire(rids(0..<50)))
        #expect(actions.acquired.count == 50)
        #expect(actions.filter { if case .acquireLeases = $0 { true } else { false } }.count == 1, "one batch")
        #expect(actions.handled == rids(0..<50).sorted())
        #expect(rids(0..<50).allSatisfy { h.node.machine.fencingToken(of: $0) == 1 && h.node.machine.isRunning($0) })
    }

    @Test("no handle while another node holds the lease; the lease is retried and taken once it expires")
    func refusedUntilExpiry() {
        var h = LeaseHarness()
        _ = h.table.acquire(["x"], holder: "b/2", duration: .milliseconds(600), now: .zero)
        h.serve(h.node.join([nodeA]))
        let first = h.serve(h.node.desire(["x"]))
        #expect(first.handled.isEmpty)
        #expect(h.node.machine.phase(of: "x") == "acquiring")
        let waiting = h.advance(by: .milliseconds(500))
        #expect(waiting.handled.isEmpty)
        #expect(waiting.acquired.count >= 3, "asked again every acquireRetryInterval")
        let later = h.advance(by: .milliseconds(300))
        #expect(later.handled == ["x"])
        #expect(h.node.machine.fencingToken(of: "x") == 2)
    }

    @Test("all leases renew in one batch per interval while the store answers")
    func batchedRenewal() {
        var h = LeaseHarness()
        h.serve(h.node.join([nodeA]))
        h.serve(h.node.desire(rids(0..<100)))
        let actions = h.advance(by: .seconds(3))
        #expect(actions.renewals.count >= 13 && actions.renewals.count <= 16, "about one per 200 ms")
        #expect(actions.renewals.allSatisfy { $0.count == 100 })
        #expect(actions.terminated.isEmpty, "nothing fenced while renewals succeed")
        #expect(rids(0..<100).allSatisfy { h.node.machine.isRunning($0) })
    }

    @Test("store down: resources stop by themselves before the lease can expire, and restart with a new token after")
    func selfFencing() {
        var h = LeaseHarness()
        h.serve(h.node.join([nodeA]))
        h.serve(h.node.desire(rids(0..<10)))
        h.advance(by: .milliseconds(400))
        h.storeUp = false
        let down = h.now
        var fencedAt: StorkInstant?
        for _ in 0..<40 {
            let actions = h.advance(by: .milliseconds(25), step: .milliseconds(25))
            if fencedAt == nil, !actions.terminations(.leaseLost).isEmpty {
                fencedAt = h.now
                #expect(actions.terminations(.leaseLost) == rids(0..<10).sorted())
            }
        }
        guard let fencedAt else {
            Issue.record("never fenced")
            return
        }
        // The last renewal that succeeded was sent before `down`; the store's lease lasts 1 s from then.
        #expect(fencedAt - down <= .milliseconds(700))
        #expect(rids(0..<10).allSatisfy { !h.node.machine.isRunning($0) })
        for id in rids(0..<10) {
            #expect(h.table.validLease(of: id, now: fencedAt).map { $0.token } == 1, "fenced while the store still had the lease")
        }
        h.storeUp = true
        let back = h.advance(by: .milliseconds(500))
        #expect(back.handled == rids(0..<10).sorted())
        #expect(rids(0..<10).allSatisfy { h.node.machine.fencingToken(of: $0) == 2 })
    }

    @Test("a renewal that reports a lease lost (taken over) terminates that resource at once")
    func lostOnRenewal() {
        var h = LeaseHarness()
        h.serve(h.node.join([nodeA]))
        h.serve(h.node.desire(["x", "y"]))
        // Another holder took "x" (for instance after this node was paused past the lease).
        h.table = LeaseTable()
        _ = h.table.acquire(["y"], holder: h.holder, duration: .seconds(1), now: h.now)
        _ = h.table.acquire(["x"], holder: "b/2", duration: .seconds(10), now: h.now)
        let actions = h.advance(by: .milliseconds(250))
        #expect(actions.terminations(.leaseLost) == ["x"])
        #expect(h.node.machine.phase(of: "x") == "acquiring")
        #expect(h.node.machine.isRunning("y"), "the other lease renews and keeps running")
    }

    @Test("when a resource moves away, it is terminated first and its lease released, so the new owner gets it at once")
    func releaseOnMove() {
        var a = LeaseHarness(myself: nodeA)
        a.serve(a.node.join([nodeA]))
        let moving = ids(ownedBy: nodeB, among: [nodeA, nodeB], count: 3)
        a.serve(a.node.desire(moving))
        #expect(moving.allSatisfy { a.node.machine.isRunning($0) })
        let actions = a.serve(a.node.view([nodeA, nodeB]))
        #expect(actions.terminations(.moved) == moving.sorted())
        #expect(actions.released.map(\.id).sorted() == moving.sorted())
        var b = LeaseHarness(myself: nodeB)
        b.table = a.table
        b.serve(b.node.join([nodeA, nodeB]))
        let taken = b.serve(b.node.desire(moving))
        #expect(taken.handled == moving.sorted())
        #expect(moving.allSatisfy { b.node.machine.fencingToken(of: $0) == 2 })
    }

    @Test("leaving terminates everything, releases every lease, then reports drained")
    func leaveReleases() {
        var h = LeaseHarness()
        h.serve(h.node.join([nodeA]))
        h.serve(h.node.desire(rids(0..<5)))
        let actions = h.serve(h.node.machine.leave(now: h.now))
        #expect(actions.terminations(.leaving) == rids(0..<5).sorted())
        #expect(actions.released.count == 5)
        #expect(actions.contains(.drained))
        #expect(rids(0..<5).allSatisfy { h.table.validLease(of: $0, now: h.now) == nil })
    }

    @Test("settings must keep renewInterval < renewDeadline < duration")
    func validation() {
        #expect(throws: StorkError.self) {
            try LeaseSettings(duration: .seconds(5), renewInterval: .seconds(2), renewDeadline: .seconds(6), acquireRetryInterval: .seconds(1)).validate()
        }
        #expect(throws: StorkError.self) {
            try LeaseSettings(duration: .seconds(5), renewInterval: .seconds(3), renewDeadline: .seconds(2), acquireRetryInterval: .seconds(1)).validate()
        }
        #expect(throws: Never.self) { try LeaseSettings().validate() }
    }
}

extension LeaseHarness {
    var now: StorkInstant { self.node.now }
}

/// Resource ids "r{n}" for `range`.
func rids(_ range: Range<Int>) -> [ResourceID] { range.map { ResourceID("r\($0)") } }
