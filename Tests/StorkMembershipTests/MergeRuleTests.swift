import StorkCore
import Testing

@testable import StorkMembership

// MARK: - Merge rules (ringpop's table, tombstones, restarts)

/// One row: member `b` is `from` at incarnation 5; gossip says `to` at `5 + delta`.
struct MergeCase: Sendable, CustomTestStringConvertible {
    var from: MemberStatus
    var to: MemberStatus
    var delta: Int
    var accepted: Bool

    var testDescription: String { "\(self.from) -> \(self.to) (inc \(self.delta >= 0 ? "+" : "")\(self.delta))" }
}

/// ringpop-common's 27 cases: alive/suspect/faulty to alive/suspect/faulty at incarnation −1 / 0 / +1, written
/// out by hand (not derived from the rule under test).
let ringpopCases: [MergeCase] = [
    MergeCase(from: .alive, to: .alive, delta: -1, accepted: false),
    MergeCase(from: .alive, to: .alive, delta: 0, accepted: false),
    MergeCase(from: .alive, to: .alive, delta: 1, accepted: true),
    MergeCase(from: .alive, to: .suspect, delta: -1, accepted: false),
    MergeCase(from: .alive, to: .suspect, delta: 0, accepted: true),
    MergeCase(from: .alive, to: .suspect, delta: 1, accepted: true),
    MergeCase(from: .alive, to: .dead, delta: -1, accepted: false),
    MergeCase(from: .alive, to: .dead, delta: 0, accepted: true),
    MergeCase(from: .alive, to: .dead, delta: 1, accepted: true),
    MergeCase(from: .suspect, to: .alive, delta: -1, accepted: false),
    MergeCase(from: .suspect, to: .alive, delta: 0, accepted: false),
    MergeCase(from: .suspect, to: .alive, delta: 1, accepted: true),
    MergeCase(from: .suspect, to: .suspect, delta: -1, accepted: false),
    MergeCase(from: .suspect, to: .suspect, delta: 0, accepted: false),
    MergeCase(from: .suspect, to: .suspect, delta: 1, accepted: true),
    MergeCase(from: .suspect, to: .dead, delta: -1, accepted: false),
    MergeCase(from: .suspect, to: .dead, delta: 0, accepted: true),
    MergeCase(from: .suspect, to: .dead, delta: 1, accepted: true),
    MergeCase(from: .dead, to: .alive, delta: -1, accepted: false),
    MergeCase(from: .dead, to: .alive, delta: 0, accepted: false),
    MergeCase(from: .dead, to: .alive, delta: 1, accepted: true),
    MergeCase(from: .dead, to: .suspect, delta: -1, accepted: false),
    MergeCase(from: .dead, to: .suspect, delta: 0, accepted: false),
    MergeCase(from: .dead, to: .suspect, delta: 1, accepted: true),
    MergeCase(from: .dead, to: .dead, delta: -1, accepted: false),
    MergeCase(from: .dead, to: .dead, delta: 0, accepted: false),
    MergeCase(from: .dead, to: .dead, delta: 1, accepted: true),
]

/// Every pair of {alive, suspect, dead, left} that involves `left`, with the rule: −1 ignored, +1 accepted,
/// 0 accepted iff strictly higher precedence.
let leftCases: [MergeCase] = {
    let all: [MemberStatus] = [.alive, .suspect, .dead, .left]
    var cases: [MergeCase] = []
    for from in all {
        for to in all where from == .left || to == .left {
            for delta in [-1, 0, 1] {
                cases.append(
                    MergeCase(from: from, to: to, delta: delta, accepted: delta == 1 || (delta == 0 && to > from))
                )
            }
        }
    }
    return cases
}()

@Suite("Membership merge rules")
struct MembershipMergeRuleTests {
    let b = node("b")
    let c = node("c")

    /// A machine that holds `b` in `status` at incarnation 5.
    func machineHolding(_ status: MemberStatus) -> MembershipStateMachine {
        var machine = machine()
        switch status {
        case .alive:
            _ = machine.hear(MemberUpdate(node: self.b, status: .alive, incarnation: 5))
        case .suspect:
            _ = machine.hear(MemberUpdate(node: self.b, status: .alive, incarnation: 5))
            _ = machine.hear(MemberUpdate(node: self.b, status: .suspect, incarnation: 5, source: self.c))
        case .dead, .left:
            _ = machine.hear(MemberUpdate(node: self.b, status: status, incarnation: 5, source: self.c))
        }
        #expect(machine.status(of: self.b) == status)
        return machine
    }

    func check(_ row: MergeCase) {
        var machine = self.machineHolding(row.from)
        let queuedBefore = machine.broadcasts.entries[self.b]
        let incoming = MemberUpdate(
            node: self.b,
            status: row.to,
            incarnation: UInt64(5 + row.delta),
            source: row.to == .alive ? nil : self.c
        )
        let actions = machine.hear(incoming, now: at(10))
        let expectedStatus = row.accepted ? row.to : row.from
        let expectedIncarnation: UInt64 = row.accepted ? UInt64(5 + row.delta) : 5
        #expect(machine.status(of: self.b) == expectedStatus)
        #expect(machine.member(self.b)?.incarnation == expectedIncarnation)
        if row.accepted, row.to != row.from {
            #expect(actions.changes == [MemberChange(node: self.b, previous: row.from, current: row.to)])
        } else {
            #expect(actions.changes.isEmpty)
        }
        if row.accepted {
            // Accepted changes are re-gossiped.
            #expect(machine.broadcasts.entries[self.b]?.update == incoming)
        } else {
            #expect(machine.broadcasts.entries[self.b] == queuedBefore)
        }
    }

    @Test("ringpop's 27 cases", arguments: ringpopCases)
    func ringpop(_ row: MergeCase) {
        self.check(row)
    }

    @Test("cases involving left", arguments: leftCases)
    func left(_ row: MergeCase) {
        self.check(row)
    }

    @Test(
        "unknown member reported dead or left is a tombstone that stale alive gossip cannot resurrect",
        arguments: [MemberStatus.dead, .left]
    )
    func tombstone(_ status: MemberStatus) {
        var machine = machine()
        let first = machine.hear(MemberUpdate(node: self.b, status: status, incarnation: 5, source: self.c))
        #expect(first.changes == [MemberChange(node: self.b, previous: nil, current: status)])
        #expect(machine.status(of: self.b) == status)
        #expect(!machine.placementMembers.contains(self.b))
        for incarnation: UInt64 in [3, 4, 5] {
            for stale: MemberStatus in [.alive, .suspect] {
                let actions = machine.hear(MemberUpdate(node: self.b, status: stale, incarnation: incarnation))
                #expect(actions.changes.isEmpty)
                #expect(machine.status(of: self.b) == status)
            }
        }
        // Only the member itself can come back, with a higher incarnation.
        let back = machine.hear(MemberUpdate(node: self.b, status: .alive, incarnation: 6))
        #expect(back.changes == [MemberChange(node: self.b, previous: status, current: .alive)])
    }

    @Test("tombstones are forgotten tombstoneTimeout after their status changed")
    func tombstoneExpiry() {
        var machine = machine()
        _ = machine.hear(MemberUpdate(node: self.b, status: .alive, incarnation: 1), now: at(0))
        _ = machine.hear(MemberUpdate(node: self.b, status: .dead, incarnation: 1, source: self.c), now: at(1_000))
        #expect(machine.member(self.b)?.since == at(1_000))
        let before = machine.advance(to: at(60_999)).map(\.1)
        #expect(before.changes.isEmpty)
        #expect(machine.status(of: self.b) == .dead)
        let after = machine.advance(to: at(61_000)).map(\.1)
        #expect(after.changes == [MemberChange(node: self.b, previous: .dead, current: nil)])
        #expect(machine.status(of: self.b) == nil)
        #expect(!machine.members.map(\.node).contains(self.b))
    }

    @Test("a restarted node (same name, higher uid) supersedes the old process")
    func restartSupersedes() {
        var machine = machine()
        let old = node("b", uid: 1)
        let new = node("b", uid: 2)
        _ = machine.hear(MemberUpdate(node: old, status: .alive, incarnation: 3))
        let actions = machine.hear(MemberUpdate(node: new, status: .alive, incarnation: 0))
        #expect(
            Set(actions.changes) == [
                MemberChange(node: new, previous: nil, current: .alive),
                MemberChange(node: old, previous: .alive, current: .dead),
            ]
        )
        #expect(machine.member(old)?.incarnation == 3)
        #expect(machine.placementMembers == [node("a"), new])
        // The death is gossiped with us as the source.
        #expect(
            machine.broadcasts.entries[old]?.update
                == MemberUpdate(node: old, status: .dead, incarnation: 3, source: node("a"))
        )
        // Stale or even newer alive gossip about the old process cannot bring it back.
        _ = machine.hear(MemberUpdate(node: old, status: .alive, incarnation: 4))
        #expect(machine.status(of: old) == .dead)
        #expect(machine.statistics.deathsDeclared == 2)
    }

    @Test("an old process heard of after its replacement is recorded dead at once")
    func oldProcessAfterNew() {
        var machine = machine()
        let old = node("b", uid: 1)
        let new = node("b", uid: 2)
        _ = machine.hear(MemberUpdate(node: new, status: .alive, incarnation: 0))
        let actions = machine.hear(MemberUpdate(node: old, status: .alive, incarnation: 7))
        #expect(actions.changes == [MemberChange(node: old, previous: nil, current: .dead)])
        #expect(machine.placementMembers == [node("a"), new])
    }

    @Test("an older process with our own name is declared dead; a newer one is ignored and stops refutation")
    func ownName() {
        let me = node("a", uid: 5)
        var machine = machine(me)
        let older = node("a", uid: 4)
        _ = machine.hear(MemberUpdate(node: older, status: .alive, incarnation: 0))
        #expect(machine.status(of: older) == .dead)

        let newer = node("a", uid: 6)
        let actions = machine.hear(MemberUpdate(node: newer, status: .alive, incarnation: 0))
        #expect(actions.isEmpty)
        #expect(machine.status(of: newer) == nil)
        #expect(machine.supersededBy == newer)
        // We no longer fight for our identity: a suspicion about us is not refuted.
        let suspicion = machine.hear(MemberUpdate(node: me, status: .suspect, incarnation: 0, source: self.c))
        #expect(suspicion.refutations.isEmpty)
        #expect(machine.incarnation == 0)
        #expect(machine.status(of: me) == .alive)
    }

    @Test("checksum covers alive and suspect members only, in a stable order")
    func checksum() {
        var one = machine(node("a"))
        var two = machine(node("a"))
        _ = one.hear(MemberUpdate(node: self.b, status: .alive, incarnation: 1))
        _ = one.hear(MemberUpdate(node: self.c, status: .alive, incarnation: 2))
        _ = two.hear(MemberUpdate(node: self.c, status: .alive, incarnation: 2))
        _ = two.hear(MemberUpdate(node: self.b, status: .alive, incarnation: 1))
        #expect(one.checksum == two.checksum)
        _ = two.hear(MemberUpdate(node: self.b, status: .suspect, incarnation: 1))
        #expect(one.checksum != two.checksum)
        _ = one.hear(MemberUpdate(node: self.b, status: .dead, incarnation: 1))
        _ = two.hear(MemberUpdate(node: self.b, status: .dead, incarnation: 1))
        #expect(one.checksum == two.checksum)
        // Tombstones do not count: forgetting one keeps the checksum.
        _ = two.hear(MemberUpdate(node: node("d"), status: .left, incarnation: 1))
        #expect(one.checksum == two.checksum)
    }
}
