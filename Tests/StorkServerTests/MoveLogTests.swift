import Foundation
import StorkCore
import Testing

@testable import StorkServer

@Suite("Move log")
struct MoveLogTests {
    typealias Key = MoveLog.Key
    let t0 = Date(timeIntervalSince1970: 1_700_000_000)

    @Test("the first view is the baseline; owner changes in a new view are moves with the view's change as reason")
    func movesBetweenViews() {
        var log = MoveLog(capacity: 10)
        let first = log.observe(
            key: Key(checksum: 1, desired: 3), view: ["n1", "n2", "n3"],
            owners: ["a": "n1", "b": "n2", "c": "n3"], now: self.t0
        )
        #expect(first.isEmpty)
        #expect(!log.isStale(Key(checksum: 1, desired: 3)))
        #expect(log.isStale(Key(checksum: 2, desired: 3)))
        #expect(log.isStale(Key(checksum: 1, desired: 4)))

        let later = self.t0.addingTimeInterval(5)
        let moves = log.observe(
            key: Key(checksum: 2, desired: 3), view: ["n1", "n2"], owners: ["a": "n1", "b": "n2", "c": "n1"], now: later
        )
        #expect(moves == [ResourceMove(id: "c", from: "n3", to: "n1", at: later, reason: "-n3")])
        #expect(log.moves == moves)

        let joined = log.observe(
            key: Key(checksum: 3, desired: 3), view: ["n1", "n2", "n4"], owners: ["a": "n4", "b": "n2", "c": "n1"],
            now: later
        )
        #expect(joined.map(\.id) == ["a"])
        #expect(joined.first?.reason == "+n4")
        #expect(log.moves.map(\.id) == ["c", "a"])
    }

    @Test("the same key again records nothing; new, removed and unowned resources are not moves")
    func notMoves() {
        var log = MoveLog(capacity: 10)
        log.observe(key: Key(checksum: 1, desired: 2), view: ["n1", "n2"], owners: ["a": "n1", "b": "n2"], now: self.t0)
        #expect(
            log.observe(key: Key(checksum: 1, desired: 2), view: ["n1"], owners: ["a": "n2", "b": "n1"], now: self.t0)
                .isEmpty
        )
        // A new resource appears (the desired set changed, the view did not).
        let moves = log.observe(
            key: Key(checksum: 1, desired: 3), view: ["n1", "n2"], owners: ["a": "n1", "b": "n2", "new": "n2"],
            now: self.t0
        )
        #expect(moves.isEmpty)
        // n2 leaves: "new" moves; "a" and "b" disappear (deallocated), "orphan" has no owner before.
        #expect(
            log.observe(
                key: Key(checksum: 2, desired: 2), view: ["n1"], owners: ["new": "n1", "orphan": "n1"], now: self.t0
            ).map(\.id) == ["new"]
        )
    }

    @Test("only the last `capacity` moves are kept, oldest first")
    func bounded() {
        var log = MoveLog(capacity: 3)
        var owners: [ResourceID: String] = [:]
        for i in 0..<5 { owners[ResourceID("r\(i)")] = "n1" }
        log.observe(key: Key(checksum: 0, desired: 5), view: ["n1", "n2"], owners: owners, now: self.t0)
        for i in 0..<5 { owners[ResourceID("r\(i)")] = "n2" }
        let moves = log.observe(key: Key(checksum: 1, desired: 5), view: ["n2"], owners: owners, now: self.t0)
        #expect(moves.count == 5)
        #expect(log.moves.map(\.id.rawValue) == ["r2", "r3", "r4"])
    }
}
