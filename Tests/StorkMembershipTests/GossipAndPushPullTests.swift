import StorkCore
import Testing

@testable import StorkMembership

// MARK: - Gossip dissemination

@Suite("Membership gossip")
struct MembershipGossipTests {
    let me = node("a")
    let others = ["b", "c", "d", "e"].map { node($0) }

    @Test("retransmit limit: retransmitMultiplier × ceil(log10(n + 1))")
    func retransmitLimit() {
        let settings = testSettings
        #expect(settings.retransmitLimit(memberCount: 1) == 4)
        #expect(settings.retransmitLimit(memberCount: 5) == 4)
        #expect(settings.retransmitLimit(memberCount: 9) == 4)
        #expect(settings.retransmitLimit(memberCount: 10) == 8)
        #expect(settings.retransmitLimit(memberCount: 99) == 8)
        #expect(settings.retransmitLimit(memberCount: 100) == 12)
    }

    @Test("an update is transmitted at most the retransmit limit, then no longer piggybacked")
    func decay() {
        var machine = machine(self.me, alive: self.others)
        let f = node("f")
        let everyone = Set(self.others + [f])
        _ = machine.advance(to: at(1_000), answering: everyone)
        #expect(machine.pendingBroadcasts == 0)
        let update = MemberUpdate(node: f, status: .alive, incarnation: 0)
        _ = machine.hear(update, from: self.others[0], now: at(1_000))
        let limit = machine.settings.retransmitLimit(memberCount: machine.activeMemberCount)
        #expect(limit == 4)
        let actions = machine.advance(to: at(5_000), answering: everyone).map(\.1)
        let carried = actions.sent.filter { if case .pushPull = $0.message { false } else { true } }
            .flatMap(\.message.carriedUpdates)
        #expect(carried.filter { $0 == update }.count == limit)
        #expect(machine.pendingBroadcasts == 0)
        // Gossip rounds stop once there is nothing to say.
        let quiet = machine.advance(to: at(6_000), answering: everyone).map(\.1)
        #expect(quiet.gossips.isEmpty)
    }

    @Test("piggyback: at most maxUpdatesPerMessage, fewest transmissions first; newer replaces older")
    func piggybackOrder() {
        var machine = machine(self.me, alive: self.others)
        _ = machine.advance(to: at(1_000), answering: Set(self.others))
        let fresh = (0..<20).map { MemberUpdate(node: node("n\($0)"), status: .alive, incarnation: 0) }
        _ = machine.receive(.gossip(Gossip(from: self.others[0], updates: fresh)), now: at(1_000))
        let first = machine.piggyback(for: self.others[0])
        #expect(first.count == 12)
        let second = machine.piggyback(for: self.others[1])
        #expect(second.count == 12)
        // The 8 never sent go first.
        #expect(Set(second.prefix(8)) == Set(fresh).subtracting(first))

        let g = node("g")
        _ = machine.hear(MemberUpdate(node: g, status: .alive, incarnation: 0), now: at(1_000))
        _ = machine.hear(
            MemberUpdate(node: g, status: .suspect, incarnation: 0, source: self.others[1]),
            now: at(1_000)
        )
        #expect(machine.broadcasts.entries[g]?.update.status == .suspect)
        #expect(machine.broadcasts.entries.values.filter { $0.update.node == g }.count == 1)
    }

    @Test("gossip rounds reach recently dead members, with the claim about them, for gossipToTheDeadTime")
    func gossipToTheDead() {
        let b = node("b")
        let c = node("c")
        var machine = machine(self.me, alive: [b, c])
        _ = machine.advance(to: at(1_000), answering: [b, c])
        _ = machine.hear(MemberUpdate(node: c, status: .dead, incarnation: 0, source: b), now: at(1_000))
        let early = machine.advance(to: at(2_900), answering: [b]).map(\.1).gossips
        let toDead = early.filter { $0.1 == c.address }
        #expect(!toDead.isEmpty)
        #expect(
            toDead.allSatisfy { $0.0.updates.first == MemberUpdate(node: c, status: .dead, incarnation: 0, source: b) }
        )
        let late = machine.advance(to: at(6_000), answering: [b]).map(\.1).gossips
        #expect(!late.contains { $0.1 == c.address })
    }
}

// MARK: - Push-pull, join, leave

@Suite("Membership push-pull, join and leave")
struct MembershipPushPullTests {
    @Test("push-pull merges in both directions; checksums agree afterwards")
    func pushPullBothWays() throws {
        let a = node("a")
        let c = node("c")
        var left = machine(a, alive: [node("b")])
        _ = left.hear(MemberUpdate(node: node("x"), status: .dead, incarnation: 2, source: node("b")))
        var right = machine(c, alive: [node("d")])
        _ = right.hear(MemberUpdate(node: node("e"), status: .suspect, incarnation: 1, source: node("d")))
        #expect(left.checksum != right.checksum)

        left.startPushPull(to: c.address, isJoin: false)
        let (request, to) = try #require(left.finish().pushPulls.first)
        #expect(to == c.address)
        #expect(!request.isReply)
        #expect(request.members.map(\.node) == [a, node("b"), node("x")])
        let replied = right.receive(.pushPull(request), now: at(10))
        let (reply, back) = try #require(replied.pushPulls.first)
        #expect(back == a.address)
        #expect(reply.isReply)
        #expect(right.status(of: node("x")) == .dead)
        _ = left.receive(.pushPull(reply), now: at(20))

        func view(_ machine: MembershipStateMachine) -> [String] {
            machine.members.map { "\($0.node) \($0.status) \($0.incarnation)" }
        }
        #expect(view(left) == view(right))
        #expect(left.checksum == right.checksum)
        #expect(left.placementMembers == [a, node("b"), c, node("d"), node("e")])
        #expect(left.statistics.pushPullsStarted == 1)
    }

    @Test("in a full-state merge, dead about a member we hold alive only makes it suspect (memberlist's rule)")
    func pushPullDeadBecomesSuspect() {
        let b = node("b")
        let c = node("c")
        var machine = machine(node("a"), alive: [b])
        let state = [
            MemberUpdate(node: b, status: .dead, incarnation: 0, source: c),
            MemberUpdate(node: c, status: .alive, incarnation: 0, source: c),
            MemberUpdate(node: node("x"), status: .dead, incarnation: 4, source: c),
        ]
        let actions = machine.receive(
            .pushPull(PushPull(from: c, isJoin: false, isReply: false, members: state, checksum: 0)),
            now: at(100)
        )
        #expect(machine.status(of: b) == .suspect)
        #expect(machine.suspicionDeadline(of: b) != nil)
        // Unknown members follow the normal rules: a tombstone.
        #expect(machine.status(of: node("x")) == .dead)
        #expect(actions.pushPulls.first?.0.isReply == true)
        // Gossip (not full state) still applies dead directly.
        _ = machine.hear(MemberUpdate(node: b, status: .dead, incarnation: 0, source: c), now: at(200))
        #expect(machine.status(of: b) == .dead)
    }

    @Test("a checksum mismatch with an empty queue triggers a push-pull, at most one per pushPullMinimumGap")
    func triggeredPushPull() {
        let b = node("b")
        var machine = machine(node("a"), alive: [b])
        machine.broadcasts.entries.removeAll()
        func ping(_ checksum: UInt64, _ ms: Int) -> [MembershipAction] {
            machine.receive(
                .ping(Ping(from: b, sequence: 1, target: nil, updates: [], checksum: checksum)),
                now: at(ms)
            )
        }
        #expect(ping(machine.checksum, 1_000).pushPulls.isEmpty)
        let first = ping(12_345, 1_000)
        #expect(first.acks.count == 1)
        #expect(first.pushPulls.map(\.1) == [b.address])
        #expect(ping(12_345, 1_500).pushPulls.isEmpty)
        #expect(ping(12_345, 2_000).pushPulls.count == 1)
        // Something still to gossip: gossip will fix it, no push-pull.
        _ = machine.hear(MemberUpdate(node: node("c"), status: .alive, incarnation: 0), now: at(3_000))
        #expect(ping(12_345, 3_500).pushPulls.isEmpty)
        #expect(machine.statistics.pushPullsTriggered == 2)
    }

    @Test("join: retries with exponential backoff (±20%, capped), standalone after standaloneAfter, then merges")
    func joinBackoff() throws {
        let me = node("a")
        var machine = MembershipStateMachine(
            myself: me,
            seeds: ["s1:1", me.address, "s2:1", "s1:1"],
            random: SeededRandom(seed: 7)
        )
        #expect(machine.seeds == ["s1:1", "s2:1"])
        let start = machine.start(now: .zero)
        #expect(start.pushPulls.map(\.1) == ["s1:1", "s2:1"])
        #expect(start.pushPulls.allSatisfy { $0.0.isJoin && !$0.0.isReply && $0.0.members.map(\.node) == [me] })
        #expect(start.joins.isEmpty)
        #expect(!machine.isJoined)

        let actions = machine.advance(to: at(30_000))
        var attempts: [StorkInstant] = [.zero]
        for (instant, action) in actions {
            if case .send(.pushPull(let request), "s1:1") = action, request.isJoin { attempts.append(instant) }
        }
        #expect(attempts.count >= 10)
        for (index, pair) in zip(attempts, attempts.dropFirst()).enumerated() {
            let gap = (pair.1 - pair.0).secondsDouble * 1000
            // 100 ms doubling per attempt; once standalone (3 s), every retry waits the maximum.
            let base = pair.0 >= at(3_000) ? 5_000 : min(100 * Double(1 << index), 5_000)
            #expect(
                gap >= base * 0.8 - 0.001 && gap <= min(base * 1.2, 5_000) + 0.001,
                "attempt \(index + 1): \(gap) ms"
            )
        }
        let standalone = actions.filter { if case .joined = $0.1 { true } else { false } }
        #expect(standalone.count == 1)
        #expect(standalone.first?.0 == at(3_000))
        #expect(standalone.first?.1 == .joined(standalone: true))
        #expect(machine.isJoined)

        // A seed answers at last: merged, no second `.joined`, no more join attempts.
        let s1 = NodeID(name: "s1", address: "s1:1", uid: 9)
        let reply = PushPull(
            from: s1,
            isJoin: true,
            isReply: true,
            members: [MemberUpdate(node: s1, status: .alive, incarnation: 0)],
            checksum: 0
        )
        let merged = machine.receive(.pushPull(reply), now: at(30_000))
        #expect(merged.joins.isEmpty)
        #expect(machine.status(of: s1) == .alive)
        let later = machine.advance(to: at(60_000), answering: [s1]).map(\.1)
        #expect(!later.pushPulls.contains { $0.0.isJoin })
    }

    @Test("join: the first push-pull reply emits joined(standalone: false); the seed adds and gossips the joiner")
    func joinAnswered() throws {
        let a = node("a")
        let b = node("b")
        var seed = machine(b, alive: [node("c")])
        seed.broadcasts.entries.removeAll()
        var joiner = MembershipStateMachine(myself: a, seeds: [b.address], random: SeededRandom(seed: 3))
        let (request, _) = try #require(joiner.start(now: at(0)).pushPulls.first)
        let answer = seed.receive(.pushPull(request), now: at(5))
        #expect(answer.changes == [MemberChange(node: a, previous: nil, current: .alive)])
        #expect(seed.broadcasts.entries[a] != nil)
        let (reply, _) = try #require(answer.pushPulls.first)
        let joined = joiner.receive(.pushPull(reply), now: at(10))
        #expect(joined.joins == [false])
        #expect(joiner.isJoined)
        #expect(joiner.placementMembers == [a, b, node("c")])
        // A new node disseminates only itself.
        #expect(joiner.broadcasts.entries.keys.sorted() == [a])
        let later = joiner.advance(to: at(5_000), answering: [b, node("c")]).map(\.1)
        #expect(later.joins.isEmpty)
        #expect(!later.pushPulls.contains { $0.0.isJoin })
    }

    @Test("a node that is not one of its own seeds never runs alone: it keeps trying its seeds")
    func nonSeedWaits() {
        var machine = MembershipStateMachine(myself: node("a"), seeds: ["s1:1", "s2:1"], random: SeededRandom(seed: 2))
        #expect(!machine.maySeedCluster)
        _ = machine.start(now: .zero)
        let actions = machine.advance(to: at(60_000))
        #expect(!actions.contains { if case .joined = $0.1 { true } else { false } })
        #expect(!machine.isJoined)
        #expect(actions.filter { if case .send(.pushPull(let request), "s1:1") = $0.1 { request.isJoin } else { false } }.count >= 10)
    }

    @Test("no seeds but our own address: standalone at once")
    func standaloneAtOnce() {
        let a = node("a")
        var machine = MembershipStateMachine(myself: a, seeds: [a.address], random: SeededRandom(seed: 1))
        let actions = machine.start(now: .zero)
        #expect(actions.joins == [true])
        #expect(actions.changes == [MemberChange(node: a, previous: nil, current: .alive)])
        #expect(actions.sent.isEmpty)
        #expect(machine.placementMembers == [a])
    }

    @Test("leave: left at a higher incarnation, told to everyone, out of placement; no more probes, still answers")
    func leave() throws {
        let a = node("a")
        let b = node("b")
        let c = node("c")
        var leaver = machine(a, alive: [b, c])
        var other = machine(b, alive: [a, c])
        let actions = leaver.leave(now: at(1_000))
        let update = MemberUpdate(node: a, status: .left, incarnation: 1, source: a)
        #expect(actions.changes == [MemberChange(node: a, previous: .alive, current: .left)])
        #expect(actions.gossips.map(\.1) == [b.address, c.address])
        #expect(actions.gossips.allSatisfy { $0.0.updates == [update] })
        #expect(leaver.incarnation == 1)
        #expect(leaver.placementMembers == [b, c])
        #expect(leaver.broadcasts.entries[a]?.update == update)
        #expect(leaver.leave(now: at(1_001)).isEmpty)

        let heard = other.receive(.gossip(actions.gossips[0].0), now: at(1_001))
        #expect(heard.changes == [MemberChange(node: a, previous: .alive, current: .left)])
        #expect(other.placementMembers == [b, c])

        let after = leaver.advance(to: at(30_000), answering: [b, c]).map(\.1)
        #expect(after.pings.isEmpty)
        #expect(after.pushPulls.isEmpty)
        let answer = leaver.receive(
            .ping(Ping(from: b, sequence: 5, target: a, updates: [], checksum: 0)),
            now: at(30_000)
        )
        #expect(answer.acks.map(\.0.sequence) == [5])

        // Forgotten tombstoneTimeout after it changed.
        let forgotten = other.advance(to: at(61_001), answering: [c]).map(\.1).changes
        #expect(forgotten.contains(MemberChange(node: a, previous: .left, current: nil)))
    }
}
