import StorkBus
import StorkCore
import Testing

@testable import StorkBusCluster

/// The interest table alone: events in, actions out, no clock and no network.
@Suite("Bus interest table")
struct BusInterestTests {
    static let a = NodeID(name: "a", address: "127.0.0.1:1", uid: 1)
    static let b = NodeID(name: "b", address: "127.0.0.1:2", uid: 2)
    static let c = NodeID(name: "c", address: "127.0.0.1:3", uid: 3)

    /// Node a's table, with b and c live and their greetings already exchanged.
    static func table(peers: [NodeID] = [b, c]) -> BusInterestStateMachine {
        var machine = BusInterestStateMachine(myself: Self.a, antiEntropyInterval: .seconds(5))
        _ = machine.start(now: .zero)
        _ = machine.membersChanged([Self.a] + peers)
        for peer in peers { _ = machine.receive(.snapshot(version: 0, patterns: []), from: peer) }
        return machine
    }

    @Test("local interest is reference-counted: the first subscriber and the last unsubscriber are announced")
    func localReferenceCount() {
        var machine = Self.table()
        let b = Self.b
        let c = Self.c
        let steps: [(String, (inout BusInterestStateMachine) -> [BusInterestAction], [BusInterestAction])] = [
            ("first add", { $0.addLocalInterest("users.alice.>") }, [
                .send(.delta(version: 1, added: ["users.alice.>"], removed: []), to: b),
                .send(.delta(version: 1, added: ["users.alice.>"], removed: []), to: c),
                .interestChanged,
            ]),
            ("second add", { $0.addLocalInterest("users.alice.>") }, []),
            ("first remove", { $0.removeLocalInterest("users.alice.>") }, []),
            ("unknown remove", { $0.removeLocalInterest("nobody") }, []),
            ("last remove", { $0.removeLocalInterest("users.alice.>") }, [
                .send(.delta(version: 2, added: [], removed: ["users.alice.>"]), to: b),
                .send(.delta(version: 2, added: [], removed: ["users.alice.>"]), to: c),
                .interestChanged,
            ]),
            ("remove again", { $0.removeLocalInterest("users.alice.>") }, []),
        ]
        for (name, event, expected) in steps {
            #expect(event(&machine) == expected, "\(name)")
        }
        #expect(machine.localVersion == 2)
        #expect(machine.localPatterns.isEmpty)
    }

    @Test("a member that becomes live gets our snapshot and a pull for its own")
    func greeting() {
        var machine = BusInterestStateMachine(myself: Self.a)
        _ = machine.addLocalInterest("x.>")
        #expect(machine.membersChanged([Self.a]) == [])
        #expect(
            machine.membersChanged([Self.a, Self.b]) == [
                .send(.snapshot(version: 1, patterns: ["x.>"]), to: Self.b), .send(.pull, to: Self.b),
            ]
        )
        #expect(machine.membersChanged([Self.b, Self.a]) == [], "the same set again changes nothing")
        // The peer's answer to the pull.
        #expect(
            machine.receive(.snapshot(version: 4, patterns: ["y", "z.*"]), from: Self.b) == [
                .peerAdded(Self.b, key: "y"), .peerAdded(Self.b, key: "z.*"), .interestChanged,
            ]
        )
        #expect(machine.version(of: Self.b) == 4)
        #expect(machine.receive(.pull, from: Self.b) == [.send(.snapshot(version: 1, patterns: ["x.>"]), to: Self.b)])
    }

    @Test("deltas apply in order; a late delta cannot undo newer state")
    func deltasInOrder() {
        var machine = Self.table()
        #expect(
            machine.receive(.delta(version: 1, added: ["a.b"], removed: []), from: Self.b) == [
                .peerAdded(Self.b, key: "a.b"), .interestChanged,
            ]
        )
        #expect(
            machine.receive(.delta(version: 2, added: [], removed: ["a.b"]), from: Self.b) == [
                .peerRemoved(Self.b, key: "a.b"), .interestChanged,
            ]
        )
        // Delivered again, late: ignored.
        #expect(machine.receive(.delta(version: 1, added: ["a.b"], removed: []), from: Self.b) == [])
        #expect(machine.receive(.delta(version: 2, added: [], removed: ["a.b"]), from: Self.b) == [])
        #expect(machine.patterns(of: Self.b) == [])
        #expect(machine.statistics.deltasApplied == 2)
        #expect(machine.statistics.deltasLate == 2)
        // An older snapshot is stale too.
        #expect(machine.receive(.snapshot(version: 1, patterns: ["a.b"]), from: Self.b) == [])
        #expect(machine.statistics.snapshotsStale == 1)
        #expect(machine.remoteKeys == [])
    }

    @Test("a delta that skips a version asks for one snapshot, which repairs the gap")
    func gapRepair() {
        var machine = Self.table()
        _ = machine.receive(.delta(version: 1, added: ["p1"], removed: []), from: Self.b)
        #expect(machine.receive(.delta(version: 3, added: ["p3"], removed: []), from: Self.b) == [.send(.pull, to: Self.b)])
        #expect(machine.receive(.delta(version: 4, added: ["p4"], removed: []), from: Self.b) == [], "one pull at a time")
        #expect(machine.receive(.digest(version: 4), from: Self.b) == [], "a pull is already on its way")
        #expect(machine.patterns(of: Self.b) == ["p1"])
        #expect(
            machine.receive(.snapshot(version: 4, patterns: ["p1", "p3", "p4"]), from: Self.b) == [
                .peerAdded(Self.b, key: "p3"), .peerAdded(Self.b, key: "p4"), .interestChanged,
            ]
        )
        #expect(machine.receive(.delta(version: 5, added: [], removed: ["p1"]), from: Self.b) == [
            .peerRemoved(Self.b, key: "p1"), .interestChanged,
        ])
        #expect(machine.statistics.gaps == 2)
    }

    @Test("a snapshot that answers a pull but is older than a delta seen meanwhile asks again instead of settling")
    func snapshotOvertaken() {
        var machine = Self.table()
        // b's delta 2 (a subscription) overtakes its snapshot 1 (built to answer our pull before that subscription).
        #expect(machine.receive(.delta(version: 2, added: ["late"], removed: []), from: Self.b) == [.send(.pull, to: Self.b)])
        #expect(
            machine.receive(.snapshot(version: 1, patterns: ["early"]), from: Self.b) == [
                .peerAdded(Self.b, key: "early"), .interestChanged, .send(.pull, to: Self.b),
            ]
        )
        #expect(machine.receive(.digest(version: 2), from: Self.b) == [], "the second pull is on its way")
        #expect(
            machine.receive(.snapshot(version: 2, patterns: ["early", "late"]), from: Self.b) == [
                .peerAdded(Self.b, key: "late"), .interestChanged,
            ]
        )
        #expect(machine.patterns(of: Self.b) == ["early", "late"])
        // Settled: the next gap pulls again, once.
        #expect(machine.receive(.delta(version: 4, added: [], removed: []), from: Self.b) == [.send(.pull, to: Self.b)])
    }

    @Test("anti-entropy: a digest to every live peer when due; a differing digest asks for a snapshot")
    func antiEntropy() {
        var machine = Self.table()
        _ = machine.addLocalInterest("q")
        #expect(machine.tick(now: .zero + .seconds(4)) == [])
        #expect(
            machine.tick(now: .zero + .seconds(5)) == [
                .send(.digest(version: 1), to: Self.b), .send(.digest(version: 1), to: Self.c),
            ]
        )
        #expect(machine.nextDeadline == .zero + .seconds(10))
        #expect(machine.receive(.digest(version: 0), from: Self.b) == [], "b's version is known")
        #expect(machine.receive(.digest(version: 2), from: Self.b) == [.send(.pull, to: Self.b)])
        #expect(machine.receive(.digest(version: 2), from: Self.b) == [], "no second pull before an answer")
        // The pull was lost: the next round may pull again.
        _ = machine.tick(now: .zero + .seconds(10))
        #expect(machine.receive(.digest(version: 2), from: Self.b) == [.send(.pull, to: Self.b)])
    }

    @Test("a peer that leaves or is declared dead loses its interest; its frames are ignored until it is live again")
    func departedPeers() {
        var machine = Self.table()
        _ = machine.receive(.snapshot(version: 2, patterns: ["shared", "only.b"]), from: Self.b)
        _ = machine.receive(.snapshot(version: 1, patterns: ["shared"]), from: Self.c)
        #expect(machine.remoteKeys == ["only.b", "shared"])
        #expect(
            machine.membersChanged([Self.a, Self.c]) == [
                .peerRemoved(Self.b, key: "only.b"), .peerRemoved(Self.b, key: "shared"), .interestChanged,
            ]
        )
        #expect(machine.remoteKeys == ["shared"], "c still wants it")
        #expect(machine.interest(in: "only.b").isEmpty)
        #expect(machine.receive(.delta(version: 3, added: ["late"], removed: []), from: Self.b) == [])
        #expect(machine.statistics.framesFromStrangers == 1)
        #expect(machine.statistics.peersDropped == 1)
        #expect(machine.membersChanged([Self.a]) == [.peerRemoved(Self.c, key: "shared"), .interestChanged])
        #expect(machine.remoteKeys == [])
        // b comes back (a refuted suspicion, same process): it is greeted again and its state starts over.
        #expect(
            machine.membersChanged([Self.a, Self.b]) == [
                .send(.snapshot(version: 0, patterns: []), to: Self.b), .send(.pull, to: Self.b),
            ]
        )
        #expect(machine.version(of: Self.b) == 0)
        _ = machine.receive(.snapshot(version: 3, patterns: ["shared", "late"]), from: Self.b)
        #expect(machine.remoteKeys == ["late", "shared"])
    }

    @Test("overlapping patterns: each peer once per message, deterministically; each peer's keys added and removed")
    func overlapDedupe() {
        var machine = Self.table()
        #expect(
            machine.receive(.snapshot(version: 1, patterns: ["a.>", "a.b", "a.*"]), from: Self.b) == [
                .peerAdded(Self.b, key: "a.*"), .peerAdded(Self.b, key: "a.>"), .peerAdded(Self.b, key: "a.b"),
                .interestChanged,
            ]
        )
        #expect(
            machine.receive(.snapshot(version: 1, patterns: ["a.b", "z"]), from: Self.c) == [
                .peerAdded(Self.c, key: "a.b"), .peerAdded(Self.c, key: "z"), .interestChanged,
            ]
        )
        #expect(machine.peers(interestedIn: "a.b") == [Self.b, Self.c])
        #expect(machine.peers(interestedIn: "a.b") == [Self.b, Self.c], "again, through the match cache")
        #expect(machine.peers(interestedIn: "a.b.c") == [Self.b])
        #expect(machine.peers(interestedIn: "z") == [Self.c])
        #expect(machine.peers(interestedIn: "b") == [])
        #expect(
            machine.receive(.delta(version: 2, added: [], removed: ["a.b"]), from: Self.b) == [
                .peerRemoved(Self.b, key: "a.b"), .interestChanged,
            ]
        )
        #expect(machine.peers(interestedIn: "a.b") == [Self.b, Self.c], "b still matches through a.> and a.*")
        #expect(
            machine.receive(.delta(version: 2, added: [], removed: ["a.b"]), from: Self.c) == [
                .peerRemoved(Self.c, key: "a.b"), .interestChanged,
            ]
        )
        #expect(machine.peers(interestedIn: "a.b") == [Self.b])
    }

    @Test("interest queries: literal subjects match, patterns overlap, local and remote")
    func queries() {
        var machine = Self.table()
        _ = machine.addLocalInterest("users.alice.*")
        _ = machine.receive(.snapshot(version: 1, patterns: ["users.>"]), from: Self.b)
        _ = machine.receive(.snapshot(version: 1, patterns: ["users.bob.events"]), from: Self.c)
        #expect(machine.interest(in: "users.alice.events") == BusInterest(local: true, nodes: [Self.b]))
        #expect(machine.interest(in: "users.bob.events") == BusInterest(local: false, nodes: [Self.b, Self.c]))
        #expect(machine.interest(in: "users.bob.*") == BusInterest(local: false, nodes: [Self.b, Self.c]))
        #expect(machine.interest(in: "users.*.events") == BusInterest(local: true, nodes: [Self.b, Self.c]))
        #expect(machine.interest(in: "orders.>").isEmpty)
        #expect(machine.interest(in: "users").isEmpty, "users.> needs at least one more token")
    }

    @Test("queue groups: a key with a queue group is its own interest, matched with the group's pattern")
    func queueGroups() {
        var machine = Self.table()
        #expect(
            machine.addLocalInterest("jobs.> workers") == [
                .send(.delta(version: 1, added: ["jobs.> workers"], removed: []), to: Self.b),
                .send(.delta(version: 1, added: ["jobs.> workers"], removed: []), to: Self.c),
                .interestChanged,
            ]
        )
        #expect(machine.interest(in: "jobs.1") == BusInterest(local: true, nodes: []))
        #expect(
            machine.receive(.snapshot(version: 1, patterns: ["jobs.> workers", "jobs.1"]), from: Self.b) == [
                .peerAdded(Self.b, key: "jobs.1"), .peerAdded(Self.b, key: "jobs.> workers"), .interestChanged,
            ]
        )
        #expect(machine.peers(interestedIn: "jobs.1") == [Self.b], "plain and queue interest of one peer count once")
        #expect(machine.interest(in: "jobs.*") == BusInterest(local: true, nodes: [Self.b]))
        #expect(machine.remoteKeys == ["jobs.1", "jobs.> workers"])
    }
}
