import StorkCore
import Testing

@testable import StorkMembership

// MARK: - Probe cycle, indirect probes, Lifeguard local health

@Suite("Membership probing")
struct MembershipProbeTests {
    let me = node("a")
    let others = ["b", "c", "d", "e"].map { node($0) }

    /// Steps through deadlines until our next probe ping; returns it and its instant.
    func nextPing(_ machine: inout MembershipStateMachine) -> (Ping, StorkInstant) {
        while let deadline = machine.nextDeadline {
            if let ping = machine.tick(now: deadline).pings.first { return (ping.0, deadline) }
        }
        Issue.record("no ping")
        return (Ping(from: self.me, sequence: 0, target: nil, updates: [], checksum: 0), .zero)
    }

    @Test("ping, then pingRequests to k helpers after probeTimeout, then suspect at the end of the indirect window")
    func probeFailsWithNacks() throws {
        var machine = machine(self.me, alive: self.others)
        let (ping, t0) = self.nextPing(&machine)
        let target = try #require(ping.target)
        #expect(self.others.contains(target))
        #expect(machine.statistics.probesSent == 1)

        // Nothing but gossip before the direct timeout.
        #expect(machine.tick(now: t0 + .milliseconds(99)).pingRequests.isEmpty)
        let indirect = machine.tick(now: t0 + .milliseconds(100)).pingRequests
        let helpers = Set(self.others).subtracting([target])
        #expect(Set(indirect.map(\.0.from)) == [self.me])
        #expect(Set(indirect.map(\.1)) == Set(helpers.map(\.address)))
        #expect(indirect.allSatisfy { $0.0.sequence == ping.sequence && $0.0.target == target })

        // Every helper nacks: the failure is the target's, not ours.
        for helper in helpers.sorted() {
            _ = machine.receive(.nack(Nack(from: helper, sequence: ping.sequence)), now: t0 + .milliseconds(260))
        }
        _ = machine.tick(now: t0 + .milliseconds(299))
        #expect(machine.status(of: target) == .alive)
        let actions = machine.tick(now: t0 + .milliseconds(300))
        #expect(actions.changes.contains(MemberChange(node: target, previous: .alive, current: .suspect)))
        #expect(machine.status(of: target) == .suspect)
        #expect(machine.localHealth == 0)
        #expect(machine.statistics.probeFailures >= 1)
        #expect(machine.statistics.suspicionsRaised == 1)
        #expect(
            machine.broadcasts.entries[target]?.update
                == MemberUpdate(node: target, status: .suspect, incarnation: 0, source: self.me)
        )
        // A late ack for that probe proves nothing.
        _ = machine.receive(
            .ack(Ack(from: target, sequence: ping.sequence, updates: [], checksum: machine.checksum)),
            now: t0 + .milliseconds(310)
        )
        #expect(machine.status(of: target) == .suspect)
        #expect(machine.localHealth == 0)
    }

    @Test("missed nacks raise local health, which stretches the next probe interval; success lowers it")
    func localHealth() throws {
        var machine = machine(self.me, alive: self.others)
        let (ping, t0) = self.nextPing(&machine)
        let target = try #require(ping.target)
        let responsive = Set(self.others).subtracting([target])
        _ = machine.advance(to: t0 + .milliseconds(100), answering: responsive)
        // One helper of three nacks: two nacks are missing when the probe fails.
        let helper = try #require(responsive.sorted().first)
        _ = machine.receive(.nack(Nack(from: helper, sequence: ping.sequence)), now: t0 + .milliseconds(150))
        _ = machine.advance(to: t0 + .milliseconds(300), answering: responsive)
        #expect(machine.status(of: target) == .suspect)
        #expect(machine.localHealth == 1)
        // The next probe was scheduled before; the one after it uses LHM 1: 2 × probeInterval.
        #expect(machine.nextProbeAt == t0 + .milliseconds(400))
        let second = try #require(machine.tick(now: t0 + .milliseconds(400)).pings.first?.0)
        #expect(machine.nextProbeAt == t0 + .milliseconds(800))
        // Its timeouts are stretched too: helpers are asked after 200 ms, not 100 ms.
        #expect(machine.tick(now: t0 + .milliseconds(500)).pingRequests.isEmpty)
        #expect(!machine.tick(now: t0 + .milliseconds(600)).pingRequests.isEmpty)
        // An ack forwarded by a helper is a success: LHM goes down.
        _ = machine.receive(
            .ack(Ack(from: helper, sequence: second.sequence, updates: [], checksum: machine.checksum)),
            now: t0 + .milliseconds(650)
        )
        #expect(machine.localHealth == 0)
    }

    @Test("local health is bounded by maxLocalHealthMultiplier and never below 0")
    func localHealthBounds() {
        var machine = machine(self.me, alive: self.others)
        for incarnation: UInt64 in 0..<20 {
            _ = machine.hear(
                MemberUpdate(node: self.me, status: .suspect, incarnation: incarnation * 2, source: self.others[0])
            )
        }
        #expect(machine.localHealth == 8)
        for _ in 0..<20 { machine.adjustLocalHealth(-1) }
        #expect(machine.localHealth == 0)
    }

    @Test("2-node cluster: no helpers, straight to suspect at the same deadline, no health penalty")
    func twoNodes() throws {
        let b = node("b")
        var machine = machine(self.me, alive: [b])
        let (ping, t0) = self.nextPing(&machine)
        #expect(ping.target == b)
        #expect(machine.tick(now: t0 + .milliseconds(100)).pingRequests.isEmpty)
        #expect(machine.status(of: b) == .alive)
        _ = machine.tick(now: t0 + .milliseconds(300))
        #expect(machine.status(of: b) == .suspect)
        #expect(machine.localHealth == 0)
    }

    @Test("helper pings the target with its own sequence and forwards the ack with the requester's")
    func helperForwardsAck() throws {
        let requester = node("b")
        let target = node("c")
        var helper = machine(self.me, alive: [requester, target])
        let request = PingRequest(from: requester, sequence: 42, target: target, updates: [])
        let sent = helper.receive(.pingRequest(request), now: at(1_000))
        let (ping, address) = try #require(sent.pings.first)
        #expect(address == target.address)
        #expect(ping.target == target)
        #expect(ping.sequence != 42)
        let forwarded = helper.receive(
            .ack(Ack(from: target, sequence: ping.sequence, updates: [], checksum: helper.checksum)),
            now: at(1_050)
        )
        let (ack, to) = try #require(forwarded.acks.first)
        #expect(to == requester.address)
        #expect(ack.sequence == 42)
        #expect(ack.from == self.me)
        // Answered: no nack later.
        #expect(helper.advance(to: at(2_000), answering: [requester, target]).map(\.1).nacks.isEmpty)
    }

    @Test("helper sends a nack at 80% of indirectProbeTimeout when the target stays silent")
    func helperNacks() {
        let requester = node("b")
        let target = node("c")
        var helper = machine(self.me, alive: [requester, target])
        _ = helper.receive(
            .pingRequest(PingRequest(from: requester, sequence: 42, target: target, updates: [])),
            now: at(1_000)
        )
        let nacks = helper.advance(to: at(2_000), answering: [requester]).filter {
            if case .send(.nack, _) = $0.1 { true } else { false }
        }
        #expect(nacks.count == 1)
        #expect(nacks.first?.0 == at(1_160))
        #expect(nacks.first?.1 == .send(.nack(Nack(from: self.me, sequence: 42)), to: requester.address))
    }

    @Test("round robin: every alive member is probed exactly once per pass, passes reshuffled")
    func roundRobin() {
        let members = (1...6).map { node("m\($0)") }
        var machine = machine(self.me, alive: members)
        let actions = machine.advance(to: at(200 * 6 * 6), answering: Set(members)).map(\.1)
        let targets = actions.pings.compactMap(\.0.target)
        #expect(targets.count >= 36)
        let passes = stride(from: 0, to: 36, by: 6).map { Array(targets[$0..<$0 + 6]) }
        for pass in passes { #expect(Set(pass) == Set(members)) }
        #expect(Set(passes).count > 1)
        #expect(machine.localHealth == 0)
        #expect(machine.statistics.probeFailures == 0)
    }

    @Test("a new member joins the current pass; dead members are not probed")
    func membershipChangesDuringPass() {
        let b = node("b")
        let c = node("c")
        var machine = machine(self.me, alive: [b, c])
        _ = machine.hear(MemberUpdate(node: c, status: .dead, incarnation: 0, source: b))
        let d = node("d")
        _ = machine.hear(MemberUpdate(node: d, status: .alive, incarnation: 0))
        let targets = machine.advance(to: at(2_000), answering: [b, d]).map(\.1).pings.compactMap(\.0.target)
        #expect(!targets.contains(c))
        #expect(Set(targets) == [b, d])
    }

    @Test("a ping meant for another process (e.g. the old uid on our address) is not answered")
    func pingForAnotherUID() {
        var machine = machine(node("a", uid: 2), alive: [node("b")])
        let wrong = machine.receive(
            .ping(
                Ping(from: node("b"), sequence: 1, target: node("a", uid: 1), updates: [], checksum: machine.checksum)
            ),
            now: at(10)
        )
        #expect(wrong.acks.isEmpty)
        let right = machine.receive(
            .ping(
                Ping(from: node("b"), sequence: 2, target: node("a", uid: 2), updates: [], checksum: machine.checksum)
            ),
            now: at(10)
        )
        #expect(right.acks.map(\.0.sequence) == [2])
    }
}
