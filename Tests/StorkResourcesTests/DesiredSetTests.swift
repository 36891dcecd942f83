import StorkCore
import Testing

@testable import StorkResources

@Suite("Desired set: versions, tombstones, sources, digests")
struct DesiredSetTests {
    func resource(_ id: String, _ version: Double = 1) -> Resource {
        Resource(id: ResourceID(id), attributes: ["v": .number(version)])
    }

    @Test("the highest version wins in either order, and a removal beats an older addition")
    func lastWriterWins() {
        var a = DesiredSet(origin: "a#1")
        var b = DesiredSet(origin: "b#2")
        let added = a.put(self.resource("x"), physicalMillis: 1000, now: .zero)!
        let removed = b.remove("x", physicalMillis: 2000, now: .zero)!
        // b never saw the addition, yet its tombstone is newer and wins everywhere.
        _ = a.merge([removed], now: .zero)
        _ = b.merge([added], now: .zero)
        #expect(a.resource("x") == nil && b.resource("x") == nil)
        #expect(a.digest == b.digest)
    }

    @Test("a source refresh removes only what that source stopped listing")
    func sourcesAreSeparate() {
        var set = DesiredSet(origin: "a#1")
        _ = set.replace(with: [self.resource("f1"), self.resource("f2")], source: "file", physicalMillis: 1, now: .zero)
        _ = set.replace(with: [self.resource("h1")], source: "http", physicalMillis: 2, now: .zero)
        _ = set.put(self.resource("api"), physicalMillis: 3, now: .zero)
        let changes = set.replace(with: [self.resource("f2")], source: "file", physicalMillis: 4, now: .zero)
        #expect(changes.map(\.id) == ["f1"])
        #expect(set.resources.map(\.id) == ["api", "f2", "h1"])
        // Unchanged content from the same source is not a change.
        #expect(set.replace(with: [self.resource("f2")], source: "file", physicalMillis: 5, now: .zero).isEmpty)
    }

    @Test("merging reports upserts and removals of the live set, and equal sets have equal digests")
    func mergeReportsChanges() {
        var a = DesiredSet(origin: "a#1")
        var b = DesiredSet(origin: "b#2")
        let entries = (0..<50).compactMap { a.put(self.resource("r\($0)"), physicalMillis: 10, now: .zero) }
        let (upserted, removed) = b.merge(entries.reversed(), now: .zero)
        #expect(upserted.count == 50 && removed.isEmpty)
        #expect(a.digest == b.digest)
        let tombstone = a.remove("r7", physicalMillis: 20, now: .zero)!
        #expect(a.digest != b.digest)
        #expect(b.merge([tombstone], now: .zero).removed == ["r7"])
        #expect(a.digest == b.digest)
        // Stale and duplicate deliveries change nothing.
        let again = b.merge(entries + [tombstone], now: .zero)
        #expect(again.upserted.isEmpty && again.removed.isEmpty)
    }

    @Test("tombstones are forgotten after the retention, and not before")
    func garbageCollection() {
        var set = DesiredSet(origin: "a#1")
        _ = set.put(self.resource("x"), physicalMillis: 1, now: .zero)
        _ = set.remove("x", physicalMillis: 2, now: .zero + .seconds(10))
        set.collectGarbage(removedBefore: .zero + .seconds(5))
        #expect(set.entry("x") != nil)
        set.collectGarbage(removedBefore: .zero + .seconds(11))
        #expect(set.entry("x") == nil)
        #expect(set.digest == DesiredSet(origin: "b#2").digest)
    }
}
