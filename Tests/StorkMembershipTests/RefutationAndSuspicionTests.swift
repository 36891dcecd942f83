import StorkCore
import Testing

@testable import StorkMembership

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Refutation

@Suite("Membership refutation")
struct MembershipRefutationTests {
    let me = node("a")
    let b = node("b")
    let c = node("c")

    /// (status about me, incarnation claimed, my incarnation before, expected incarnation after)
    static let rows: [(MemberStatus, UInt64, UInt64, UInt64)] = [
        (.suspect, 1, 2, 2),  // lower: ignored
        (.suspect, 2, 2, 3),  // equal: refuted
        (.suspect, 7, 2, 8),  // higher: refuted past it
        (.dead, 1, 2, 2),
        (.dead, 2, 2, 3),
        (.dead, 7, 2, 8),
        (.left, 2, 2, 3),  // nobody else may say we left
        (.alive, 2, 2, 2),  // alive about us: nothing to refute
        (.alive, 9, 2, 2),
    ]

    @Test("suspect/dead about me bump the incarnation only when ≥ mine", arguments: 0..<9)
    func refute(_ index: Int) {
        let (status, claimed, mine, expected) = Self.rows[index]
        var machine = machine(self.me, alive: [self.b, self.c])
        // Get to incarnation `mine` through earlier refutations.
        if mine > 0 {
            _ = machine.hear(MemberUpdate(node: self.me, status: .suspect, incarnation: mine - 1, source: self.b))
        }
        #expect(machine.incarnation == mine)
        let healthBefore = machine.localHealth
        let actions = machine.hear(
            MemberUpdate(node: self.me, status: status, incarnation: claimed, source: self.c),
            from: self.c
        )
        #expect(machine.incarnation == expected)
        #expect(machine.status(of: self.me) == .alive)
        if expected > mine {
            #expect(actions.refutations == [expected])
            #expect(machine.localHealth == min(healthBefore + 1, 8))
            // Alive at the new incarnation, with us as the source, straight to every member...
            let refutation = MemberUpdate(node: self.me, status: .alive, incarnation: expected, source: self.me)
            #expect(actions.gossips.map(\.1).sorted() == [self.b.address, self.c.address])
            #expect(actions.gossips.allSatisfy { $0.0.updates == [refutation] })
            // ...and in the broadcast queue.
            #expect(machine.broadcasts.entries[self.me]?.update == refutation)
            #expect(machine.statistics.refutations == (mine > 0 ? 2 : 1))
        } else {
            #expect(actions.refutations.isEmpty)
            #expect(actions.sent.isEmpty)
            #expect(machine.localHealth == healthBefore)
        }
    }

    @Test("after leaving, claims about us are not refuted")
    func noRefutationAfterLeave() {
        var machine = machine(self.me, alive: [self.b])
        _ = machine.leave(now: at(0))
        let actions = machine.hear(MemberUpdate(node: self.me, status: .dead, incarnation: 5, source: self.b))
        #expect(actions.refutations.isEmpty)
        #expect(machine.status(of: self.me) == .left)
        #expect(machine.incarnation == 1)
    }
}

// MARK: - Lifeguard suspicion

@Suite("Membership suspicion timeout")
struct MembershipSuspicionTests {
    @Test("min/max formula for several n and C")
    func arithmetic() {
        let settings = testSettings
        func seconds(_ c: Int, _ n: Int) -> Double {
            settings.suspicionTimeout(confirmations: c, memberCount: n).secondsDouble
        }
        func close(_ a: Double, _ b: Double) -> Bool { abs(a - b) < 1e-6 }
        // n = 1: 4 × log10(2) × 0.2 s = 0.241 s < 0.5 s floor, so min = 0.5 s, max = 1.5 s.
        #expect(close(seconds(0, 1), 1.5))
        #expect(close(seconds(3, 1), 0.5))
        // n = 5: min = 0.8 × log10(6) = 0.62249 s, max = 1.86747 s; C = 1 is halfway (log 2 / log 4 = 1/2).
        let min5 = 0.8 * log10(6.0)
        #expect(close(seconds(0, 5), 3 * min5))
        #expect(close(seconds(1, 5), 3 * min5 - 2 * min5 * 0.5))
        #expect(close(seconds(2, 5), 3 * min5 - 2 * min5 * log(3) / log(4)))
        #expect(close(seconds(3, 5), min5))
        #expect(close(seconds(10, 5), min5))  // never below min
        // n = 10 and 50.
        #expect(close(seconds(3, 10), 0.8 * log10(11.0)))
        #expect(close(seconds(0, 50), 3 * 0.8 * log10(51.0)))
        // Monotone: more confirmations, shorter timeout; more members, longer.
        for n in [1, 5, 10, 50, 500] {
            for c in 0..<4 { #expect(seconds(c + 1, n) <= seconds(c, n)) }
            #expect(seconds(0, n) <= seconds(0, n * 2))
        }
    }

    @Test("deadline shrinks as independent confirmations arrive; expiry declares dead")
    func confirmations() {
        let me = node("a")
        let members = ["b", "c", "d", "e"].map { node($0) }
        let b = members[0]
        var machine = machine(me, alive: members)
        let settings = machine.settings
        let n = 5
        _ = machine.hear(MemberUpdate(node: b, status: .suspect, incarnation: 0, source: node("c")), now: at(100))
        #expect(
            machine.suspicionDeadline(of: b) == at(100) + settings.suspicionTimeout(confirmations: 0, memberCount: n)
        )
        // The same source again is not independent.
        _ = machine.hear(MemberUpdate(node: b, status: .suspect, incarnation: 0, source: node("c")), now: at(150))
        #expect(
            machine.suspicionDeadline(of: b) == at(100) + settings.suspicionTimeout(confirmations: 0, memberCount: n)
        )
        // New sources confirm: measured from the first suspicion, recomputed, and re-gossiped.
        _ = machine.hear(MemberUpdate(node: b, status: .suspect, incarnation: 0, source: node("d")), now: at(200))
        let one = at(100) + settings.suspicionTimeout(confirmations: 1, memberCount: n)
        #expect(machine.suspicionDeadline(of: b) == one)
        #expect(machine.broadcasts.entries[b]?.update.source == node("d"))
        _ = machine.hear(MemberUpdate(node: b, status: .suspect, incarnation: 0, source: node("e")), now: at(300))
        let two = at(100) + settings.suspicionTimeout(confirmations: 2, memberCount: n)
        #expect(two < one)
        #expect(machine.suspicionDeadline(of: b) == two)
        // Expiry: dead, with us as the source, gossiped.
        let early = machine.advance(to: two - .milliseconds(1), answering: Set(members)).map(\.1)
        #expect(early.changes.isEmpty)
        let actions = machine.advance(to: two, answering: Set(members)).map(\.1)
        #expect(actions.changes.contains(MemberChange(node: b, previous: .suspect, current: .dead)))
        #expect(
            machine.broadcasts.entries[b]?.update == MemberUpdate(node: b, status: .dead, incarnation: 0, source: me)
        )
        #expect(machine.statistics.deathsDeclared == 1)
    }

    @Test("a refutation (higher incarnation alive) cancels the suspicion")
    func refutationCancels() {
        let b = node("b")
        var machine = machine(alive: [b])
        _ = machine.hear(MemberUpdate(node: b, status: .suspect, incarnation: 0, source: node("c")), now: at(0))
        #expect(machine.suspicionDeadline(of: b) != nil)
        _ = machine.hear(MemberUpdate(node: b, status: .alive, incarnation: 1, source: b), now: at(100))
        #expect(machine.suspicionDeadline(of: b) == nil)
        let actions = machine.advance(to: at(10_000), answering: [b]).map(\.1)
        #expect(!actions.changes.contains { $0.node == b })
        #expect(machine.status(of: b) == .alive)
    }
}
