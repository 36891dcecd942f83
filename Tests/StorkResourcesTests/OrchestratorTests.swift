import StorkCore
import StorkPlacement
import Testing

@testable import StorkResources

// MARK: - Helpers

let nodeA = NodeID(name: "a", address: "10.0.0.1:7946", uid: 1)
let nodeB = NodeID(name: "b", address: "10.0.0.2:7946", uid: 2)
let nodeC = NodeID(name: "c", address: "10.0.0.3:7946", uid: 3)

func at(_ milliseconds: Int) -> StorkInstant { .zero + .milliseconds(milliseconds) }

/// Resource ids "r0", "r1", … split by who owns them among `members`.
func ids(ownedBy owner: NodeID, among members: [NodeID], count: Int, excluding: Set<ResourceID> = []) -> [ResourceID] {
    let placement = Placement(strategy: .rendezvous, nodes: members)
    var result: [ResourceID] = []
    var i = 0
    while result.count < count {
        let id = ResourceID("r\(i)")
        if placement.owner(of: id) == owner, !excluding.contains(id) { result.append(id) }
        i += 1
    }
    return result
}

/// Drives one orchestrator and records what it asked for.
struct OrchestratorHarness {
    var machine: OrchestratorStateMachine
    var now = StorkInstant.zero
    var log: [OrchestratorAction] = []

    init(myself: NodeID = nodeA, settings: OrchestratorSettings = .init()) {
        self.machine = OrchestratorStateMachine(myself: myself, settings: settings, random: SeededRandom(seed: 1))
    }

    @discardableResult
    mutating func record(_ actions: [OrchestratorAction]) -> [OrchestratorAction] {
        self.log.append(contentsOf: actions)
        return actions
    }

    /// Joins with a view of `members` and lets the rebalance delay pass.
    @discardableResult
    mutating func join(_ members: [NodeID]) -> [OrchestratorAction] {
        var actions = self.machine.becameReady(now: self.now)
        actions += self.machine.viewChanged(Placement(nodes: members), now: self.now)
        return self.record(actions + self.advance(by: .milliseconds(100)))
    }

    @discardableResult
    mutating func view(_ members: [NodeID]) -> [OrchestratorAction] {
        let actions = self.machine.viewChanged(Placement(nodes: members), now: self.now)
        return self.record(actions + self.advance(by: .milliseconds(100)))
    }

    @discardableResult
    mutating func advance(by duration: Duration) -> [OrchestratorAction] {
        let end = self.now + duration
        var actions: [OrchestratorAction] = []
        while let deadline = self.machine.nextDeadline, deadline <= end {
            self.now = max(self.now, deadline)
            actions += self.machine.tick(now: self.now)
        }
        self.now = end
        return self.record(actions)
    }

    @discardableResult
    mutating func desire(_ ids: [ResourceID]) -> [OrchestratorAction] {
        self.record(self.machine.desiredChanged(upserted: ids.map { Resource(id: $0) }, removed: [], now: self.now))
    }

    @discardableResult
    mutating func undesire(_ ids: [ResourceID]) -> [OrchestratorAction] {
        self.record(self.machine.desiredChanged(upserted: [], removed: ids, now: self.now))
    }

    /// Every other member confirms every outstanding request in `actions`.
    @discardableResult
    mutating func confirmAll(_ actions: [OrchestratorAction]) -> [OrchestratorAction] {
        var result: [OrchestratorAction] = []
        for case .send(.releaseRequest(_, _, let items), let peer) in actions {
            result += self.machine.receive(.releaseConfirm(from: peer, items: items), now: self.now)
        }
        return self.record(result)
    }

    @discardableResult
    mutating func complete(
        _ actions: [OrchestratorAction],
        succeeding: (ResourceID) -> Bool = { _ in true }
    )
        -> [OrchestratorAction]
    {
        var result: [OrchestratorAction] = []
        for action in actions {
            switch action {
            case .handle(let resource, _, let ticket):
                result += self.machine.handleCompleted(
                    resource.id,
                    ticket: ticket,
                    succeeded: succeeding(resource.id),
                    now: self.now
                )
            case .terminate(let resource, _, let ticket):
                result += self.machine.terminateCompleted(
                    resource.id,
                    ticket: ticket,
                    succeeded: succeeding(resource.id),
                    now: self.now
                )
            default: break
            }
        }
        return self.record(result)
    }
}

extension Array where Element == OrchestratorAction {
    var handled: [ResourceID] {
        self.compactMap { if case .handle(let r, _, _) = $0 { return r.id } else { return nil } }.sorted()
    }
    var terminated: [ResourceID] {
        self.compactMap { if case .terminate(let r, _, _) = $0 { return r.id } else { return nil } }.sorted()
    }
    var requests: [NodeID: [ClaimItem]] {
        var result: [NodeID: [ClaimItem]] = [:]
        for case .send(.releaseRequest(_, _, let items), let peer) in self { result[peer, default: []] += items }
        return result
    }
    var confirms: [NodeID: [ClaimItem]] {
        var result: [NodeID: [ClaimItem]] = [:]
        for case .send(.releaseConfirm(_, let items), let peer) in self { result[peer, default: []] += items }
        return result
    }
    var refusals: [NodeID: [ClaimItem]] {
        var result: [NodeID: [ClaimItem]] = [:]
        for case .send(.releaseRefuse(_, _, let items), let peer) in self { result[peer, default: []] += items }
        return result
    }
    var events: [ResourceEvent] {
        self.compactMap { if case .event(let e) = $0 { return e } else { return nil } }
    }
}

// MARK: - The original library's scenarios

@Suite("Orchestrator: the original library's scenarios")
struct OriginalScenarioTests {
    @Test("handles only the resources this node owns")
    func handlesOnlyMine() {
        var h = OrchestratorHarness()
        let mine = ids(ownedBy: nodeA, among: [nodeA, nodeB], count: 2)
        let theirs = ids(ownedBy: nodeB, among: [nodeA, nodeB], count: 1)
        h.desire(mine + theirs)
        let claims = h.join([nodeA, nodeB])
        #expect(claims.requests[nodeB]?.map(\.id).sorted() == mine.sorted())
        #expect(claims.handled.isEmpty, "nothing is handled before the other member confirms")
        let handled = h.confirmAll(claims)
        #expect(handled.handled == mine.sorted())
        h.complete(handled)
        #expect(h.machine.runningResources == mine.sorted())
    }

    @Test("a failed handle reports the failure, is not recorded as running, and is retried with backoff")
    func failedHandle() {
        var h = OrchestratorHarness()
        let mine = ids(ownedBy: nodeA, among: [nodeA], count: 3)
        h.desire(mine)
        let first = h.join([nodeA])
        #expect(first.handled == mine.sorted())
        let failing = mine[0]
        let outcome = h.complete(first, succeeding: { $0 != failing })
        #expect(h.machine.runningResources == Array(mine.dropFirst()).sorted())
        #expect(
            outcome.events.contains {
                $0.id == failing && { if case .handleFailed(1, _) = $0.kind { true } else { false } }($0)
            }
        )
        guard
            case .scheduleRetry(failing, 2, let retryAt)? = outcome.first(where: {
                if case .scheduleRetry = $0 { true } else { false }
            })
        else {
            Issue.record("no retry scheduled")
            return
        }
        // Jittered around the 1 s initial delay.
        #expect(retryAt >= at(800) && retryAt <= at(1200))
        let retried = h.advance(by: .seconds(2))
        #expect(retried.handled == [failing], "retried once, in the same view without a new claim")
        h.complete(retried)
        #expect(h.machine.runningResources == mine.sorted())
    }

    @Test("rebalance from 4 to 5 resources terminates the one that moved and handles the new ones")
    func rebalanceFourToFive() {
        var h = OrchestratorHarness()
        // Four resources all owned by A while alone; then B joins and a fifth resource appears.
        let all = (0..<4).map { ResourceID("r\($0)") }
        h.desire(all)
        h.complete(h.join([nodeA]))
        #expect(h.machine.runningResources == all.sorted())

        let placementAB = Placement(nodes: [nodeA, nodeB])
        let moved = all.filter { placementAB.owner(of: $0) == nodeB }
        let fifth = ids(ownedBy: nodeA, among: [nodeA, nodeB], count: 1, excluding: Set(all))[0]
        h.complete(h.desire([fifth]))
        let rebalance = h.view([nodeA, nodeB])
        #expect(rebalance.terminated == moved.sorted(), "only the resources that moved to B are terminated")
        #expect(rebalance.handled.isEmpty, "nothing new to handle: the fifth already runs here")
        h.complete(rebalance)
        let stillMine = all.filter { placementAB.owner(of: $0) == nodeA }
        #expect(h.machine.runningResources == (stillMine + [fifth]).sorted())
    }

    @Test("a failed termination still removes the resource and reports the failure")
    func failedTermination() {
        var h = OrchestratorHarness()
        let mine = ids(ownedBy: nodeA, among: [nodeA], count: 2)
        h.desire(mine)
        h.complete(h.join([nodeA]))
        let removal = h.undesire([mine[0]])
        #expect(removal.terminated == [mine[0]])
        let outcome = h.complete(removal, succeeding: { _ in false })
        #expect(outcome.events.map(\.kind) == [.terminationFailed(.removed)])
        #expect(h.machine.runningResources == [mine[1]])
        #expect(h.machine.phase(of: mine[0]) == nil)
    }
}

// MARK: - The faults the original library had

@Suite("Orchestrator: faults of the original library are fixed")
struct FaultTests {
    @Test("overlapping rebalances never call handle twice for one id")
    func overlappingRebalances() {
        var h = OrchestratorHarness()
        let id = ids(ownedBy: nodeA, among: [nodeA], count: 1)[0]
        h.desire([id])
        let first = h.join([nodeA])
        #expect(first.handled == [id])
        // While handle is in flight, membership changes several times, back and forth.
        var later: [OrchestratorAction] = []
        later += h.view([nodeA, nodeC])
        later += h.view([nodeA])
        later += h.desire([id])
        later += h.view([nodeA])
        #expect(later.handled.isEmpty, "no second handle while the first is in flight")
        h.complete(first)
        #expect(h.machine.runningResources == [id])
    }

    @Test("a burst of view changes is coalesced into one rebalance with the latest view")
    func coalescesBursts() {
        var h = OrchestratorHarness()
        let resources = (0..<50).map { ResourceID("r\($0)") }
        h.desire(resources)
        h.complete(h.join([nodeA]))
        var actions = h.machine.viewChanged(Placement(nodes: [nodeA, nodeB]), now: h.now)
        actions += h.machine.viewChanged(Placement(nodes: [nodeA, nodeB, nodeC]), now: h.now + .milliseconds(10))
        actions += h.machine.viewChanged(Placement(nodes: [nodeA, nodeC]), now: h.now + .milliseconds(20))
        #expect(actions.isEmpty, "nothing happens until the rebalance delay passed")
        let rebalance = h.advance(by: .milliseconds(100))
        let latest = Placement(nodes: [nodeA, nodeC])
        #expect(rebalance.terminated == resources.filter { latest.owner(of: $0) == nodeC }.sorted())
    }

    @Test("a resource added after start is kept: it is handled after a rebalance moves it here")
    func addedAfterStartIsNotForgotten() {
        var h = OrchestratorHarness()
        h.join([nodeA, nodeB])
        // Added later, owned by B for now: A does nothing but remembers it.
        let late = ids(ownedBy: nodeB, among: [nodeA, nodeB], count: 1)[0]
        #expect(h.desire([late]).handled.isEmpty)
        // B dies: A owns it now and handles it without anyone fetching anything again.
        let actions = h.view([nodeA])
        #expect(actions.handled == [late])
    }

    @Test("leaving terminates everything, then reports drained; no orphans")
    func leavingDrains() {
        var h = OrchestratorHarness()
        let mine = ids(ownedBy: nodeA, among: [nodeA], count: 3)
        h.desire(mine)
        h.complete(h.join([nodeA]))
        let leave = h.record(h.machine.leave(now: h.now))
        #expect(leave.terminated == mine.sorted())
        #expect(!leave.contains(.drained), "not drained while terminations are in flight")
        let done = h.complete(leave)
        #expect(done.contains(.drained))
        #expect(h.machine.activeResources.isEmpty)
        // A node that left never handles again.
        #expect(h.desire(ids(ownedBy: nodeA, among: [nodeA], count: 5)).handled.isEmpty)
    }
}

// MARK: - Revoke-then-assign

@Suite("Orchestrator: revoke-then-assign handoff")
struct HandoffTests {
    @Test("the old owner terminates and confirms before the new owner handles")
    func handoffOrder() {
        // A runs the resource alone; B joins and owns it in the new view.
        var a = OrchestratorHarness(myself: nodeA)
        var b = OrchestratorHarness(myself: nodeB)
        let id = ids(ownedBy: nodeB, among: [nodeA, nodeB], count: 1)[0]
        a.desire([id])
        a.complete(a.join([nodeA]))
        #expect(a.machine.runningResources == [id])

        b.desire([id])
        let claim = b.join([nodeA, nodeB])
        #expect(claim.handled.isEmpty)
        let request = claim.requests[nodeA] ?? []
        #expect(request.map(\.id) == [id])

        // A has not applied the new view yet: it refuses (views differ).
        let early = a.record(
            a.machine.receive(
                .releaseRequest(from: nodeB, checksum: b.machine.placement.checksum, items: request),
                now: a.now
            )
        )
        #expect(early.refusals[nodeB]?.map(\.id) == [id])

        // A applies the view: it terminates the resource it no longer owns.
        let moved = a.view([nodeA, nodeB])
        #expect(moved.terminated == [id])
        // Asked again while terminating: the answer waits for the termination.
        let waiting = a.record(
            a.machine.receive(
                .releaseRequest(from: nodeB, checksum: b.machine.placement.checksum, items: request),
                now: a.now
            )
        )
        #expect(waiting.confirms.isEmpty)
        let terminated = a.complete(moved)
        #expect(terminated.confirms[nodeB] == request)

        // B handles only now.
        let handled = b.record(b.machine.receive(.releaseConfirm(from: nodeA, items: request), now: b.now))
        #expect(handled.handled == [id])
    }

    @Test("a confirmation for an older round is ignored")
    func staleConfirmationIgnored() {
        var b = OrchestratorHarness(myself: nodeB)
        let id = ids(ownedBy: nodeB, among: [nodeA, nodeB, nodeC], count: 1, excluding: [])[0]
        b.desire([id])
        let first = b.join([nodeA, nodeB])
        let oldRound = first.requests[nodeA] ?? []
        // The view changes (C joins) before A answers: the claim restarts with a new round.
        let second = b.view([nodeA, nodeB, nodeC])
        let placementABC = Placement(nodes: [nodeA, nodeB, nodeC])
        if placementABC.owner(of: id) == nodeB {
            #expect(second.requests[nodeA]?.first?.round != oldRound.first?.round)
        }
        let late = b.record(b.machine.receive(.releaseConfirm(from: nodeA, items: oldRound), now: b.now))
        #expect(late.handled.isEmpty)
    }

    @Test("a dead old owner is not waited for")
    func deadOwnerNotAwaited() {
        var b = OrchestratorHarness(myself: nodeB)
        let id = ids(ownedBy: nodeB, among: [nodeB], count: 1)[0]
        b.desire([id])
        // A (the old owner) is gone from B's view: B handles at once.
        #expect(b.join([nodeB]).handled == [id])
    }

    @Test("a member that never answers delays the handle until the handoff deadline")
    func handoffDeadline() {
        var settings = OrchestratorSettings()
        settings.handoffDeadline = .seconds(5)
        var b = OrchestratorHarness(myself: nodeB, settings: settings)
        let id = ids(ownedBy: nodeB, among: [nodeA, nodeB], count: 1)[0]
        b.desire([id])
        let claim = b.join([nodeA, nodeB])
        #expect(claim.handled.isEmpty)
        let resent = b.advance(by: .seconds(1))
        #expect(Set(resent.requests[nodeA]?.map(\.id) ?? []) == [id], "unanswered requests are sent again")
        #expect(resent.handled.isEmpty)
        let late = b.advance(by: .seconds(5))
        #expect(late.handled == [id])
        #expect(late.events.contains { $0.kind == .handoffTimedOut(unconfirmed: [nodeA]) })
    }

    @Test("a request from a member whose view differs is refused")
    func refusesOtherViews() {
        var a = OrchestratorHarness(myself: nodeA)
        a.join([nodeA, nodeB])
        let items = [ClaimItem(id: "x", round: 1)]
        let refused = a.record(
            a.machine.receive(.releaseRequest(from: nodeB, checksum: 12345, items: items), now: a.now)
        )
        #expect(refused.refusals[nodeB] == items)
    }

    @Test("an updated resource is restarted with its new attributes")
    func updatedRestarts() {
        var h = OrchestratorHarness()
        h.desire(["x"])
        h.complete(h.join([nodeA]))
        let update = h.record(
            h.machine.desiredChanged(
                upserted: [Resource(id: "x", attributes: ["v": .number(2)])],
                removed: [],
                now: h.now
            )
        )
        #expect(update.terminated == ["x"])
        let restart = h.complete(update)
        guard case .handle(let resource, _, _)? = restart.first(where: { if case .handle = $0 { true } else { false } })
        else {
            Issue.record("not restarted")
            return
        }
        #expect(resource.attributes["v"] == .number(2))
    }
}
