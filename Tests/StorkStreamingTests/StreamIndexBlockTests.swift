import Foundation
import Testing

@testable import StorkStreaming

/// What a store with its own index gives the stream's index: every entry ever appended (removed or not, as a store
/// that has not yet applied a removal would), read back by sequence range. A fake: the file store's real loader is
/// tested in FileMessageStoreTests.
final class ModelLoader: StreamIndexLoader, @unchecked Sendable {
    private let lock = NSLock()
    private var all: [MessageIndexEntry] = []
    private(set) var loads = 0

    func record(_ entry: MessageIndexEntry) {
        self.lock.withLock { self.all.append(entry) }
    }

    /// While set, every read fails (a store that cannot read its files).
    var failing = false

    func indexEntries(in range: ClosedRange<UInt64>) -> [MessageIndexEntry]? {
        self.lock.withLock {
            self.loads += 1
            return self.failing ? nil : self.all.filter { range.contains($0.sequence) }
        }
    }
}

/// An index and the loader it reads evicted detail from (nil: everything in memory).
struct IndexUnderTest {
    var index: StreamIndex
    let loader: ModelLoader?

    init(loaded: Bool) {
        self.loader = loaded ? ModelLoader() : nil
        self.index = StreamIndex(loader: self.loader, cachedBlocks: 1)
    }

    mutating func append(_ entry: MessageIndexEntry) {
        self.loader?.record(entry)
        self.index.append(entry)
    }
}

/// The index keeps summaries of blocks and their detail in memory or in the store: every operation must answer as
/// one ordered list would, across blocks, whether the detail is cached or read back.
@Suite("StreamIndex across blocks")
struct StreamIndexBlockTests {
    func entry(_ sequence: UInt64) -> MessageIndexEntry {
        MessageIndexEntry(sequence: sequence, subject: sequence % 3 == 0 ? "a.x" : "b.y", size: 10, timestamp: Int64(sequence))
    }

    @Test("appends, removals in the middle and at the head, purge and lookups agree with a plain list", arguments: [false, true])
    func agreesWithAList(loaded: Bool) {
        let capacity = StreamIndex.blockCapacity
        var under = IndexUnderTest(loaded: loaded)
        var model: [MessageIndexEntry] = []
        var sequence: UInt64 = 0
        for _ in 0..<(capacity * 3 + 17) {
            sequence += UInt64(1 + (sequence % 5 == 0 ? 1 : 0))  // gaps now and then
            under.append(self.entry(sequence))
            model.append(self.entry(sequence))
        }
        #expect(under.index.blocks.count == Int((sequence - 1) / StreamIndex.blockSpan) + 1)
        // Removals: a whole block's worth from the middle of one, some heads, some absent.
        var random = SeededLCG(seed: 7)
        for _ in 0..<capacity {
            let victim = model[Int(random.next() % UInt64(model.count))].sequence
            let removed = under.index.remove(victim)
            #expect(removed)
            model.removeAll { $0.sequence == victim }
        }
        let absent = [under.index.remove(0), under.index.remove(sequence + 1)]
        #expect(absent == [false, false])
        for _ in 0..<100 {
            let removed = under.index.remove(model[0].sequence)
            #expect(removed)
            model.removeFirst()
        }
        let index = under.index
        #expect(index.count == model.count)
        #expect(Array(index.entries) == model)
        #expect(Array(index.reversedEntries()) == model.reversed())
        #expect(index.bytes == UInt64(model.count * 10))
        #expect(index.firstSequence == model[0].sequence)
        #expect(index.firstTimestamp == model[0].timestamp && index.lastTimestamp == model.last!.timestamp)
        #expect(index.deletedCount == Int(sequence - model[0].sequence + 1) - model.count)
        for probe in stride(from: UInt64(0), through: sequence + 2, by: 97) {
            #expect(index.next(from: probe, filters: []) == model.first { $0.sequence >= probe }?.sequence)
            #expect(index.next(from: probe, filters: ["a.*"]) == model.first { $0.sequence >= probe && $0.subject == "a.x" }?.sequence)
            #expect(index.count(from: probe, filters: []) == model.filter { $0.sequence >= probe }.count)
            #expect(index.count(from: probe, filters: ["b.>"]) == model.filter { $0.sequence >= probe && $0.subject == "b.y" }.count)
            #expect(index.count(through: probe) == model.filter { $0.sequence <= probe }.count)
            #expect(index.entry(probe) == model.first { $0.sequence == probe })
            #expect(index.contains(probe) == model.contains { $0.sequence == probe })
            #expect(Array(index.entries(from: probe)) == model.filter { $0.sequence >= probe })
            #expect(Array(index.reversedEntries(through: probe)) == model.filter { $0.sequence <= probe }.reversed())
            #expect(index.firstSequence(atOrAfter: Int64(probe)) == model.first { $0.timestamp >= Int64(probe) }?.sequence)
        }
        #expect(index.last(filters: ["a.x"]) == model.last { $0.subject == "a.x" }?.sequence)
        #expect(index.last(filters: []) == model.last?.sequence)
        // Purge through the middle of a block, then everything.
        let cut = model[model.count / 2].sequence
        under.index.purge(through: cut)
        model.removeAll { $0.sequence <= cut }
        #expect(Array(under.index.entries) == model)
        #expect(under.index.count == model.count)
        under.index.purge()
        #expect(under.index.count == 0 && under.index.entries.isEmpty && under.index.blocks.isEmpty)
        #expect(under.index.firstSequence == sequence + 1)
        // Appends go on after the purge.
        under.append(self.entry(sequence + 1))
        #expect(Array(under.index.entries) == [self.entry(sequence + 1)])
    }

    @Test("limits evict across blocks, oldest first", arguments: [false, true])
    func evictsAcrossBlocks(loaded: Bool) {
        var under = IndexUnderTest(loaded: loaded)
        for sequence in 1...UInt64(StreamIndex.blockCapacity * 2 + 10) { under.append(self.entry(sequence)) }
        var config = StreamConfig(name: "S")
        config.maxMsgs = 100
        let evicted = under.index.evict(config: config, now: 0)
        #expect(evicted == Array(1...UInt64(StreamIndex.blockCapacity * 2 - 90)))
        #expect(under.index.count == 100 && under.index.blocks.count == 2)  // the last 90 of the second block, the 10 of the third
        #expect(under.index.entries.first?.sequence == UInt64(StreamIndex.blockCapacity * 2 - 89))
        // Bytes, then age: whole blocks and a part of one.
        config.maxMsgs = 0
        config.maxBytes = 500
        #expect(under.index.evict(config: config, now: 0).count == 50)
        #expect(under.index.bytes == 500)
        config.maxBytes = 0
        config.maxAge = 5
        let now = Int64(StreamIndex.blockCapacity * 2 + 10)
        #expect(under.index.evict(config: config, now: now) == Array(UInt64(StreamIndex.blockCapacity * 2 - 39)...UInt64(now - 5)))
        #expect(under.index.count == 5 && under.index.firstTimestamp == now - 4)
    }

    @Test("a loaded index keeps the detail of a bounded number of blocks, however long the stream grows")
    func detailStaysBounded() {
        let loader = ModelLoader()
        var index = StreamIndex(loader: loader, cachedBlocks: 2)
        var peak = 0
        let total = StreamIndex.blockCapacity * 40
        for sequence in 1...UInt64(total) {
            let entry = MessageIndexEntry(sequence: sequence, subject: "s.\(sequence % 7)", size: 16, timestamp: Int64(sequence))
            loader.record(entry)
            index.append(entry)
            if sequence % 1000 == 0 {
                // Questions that read old blocks' detail: a filtered count, an entry, a time.
                _ = index.count(from: sequence / 2, filters: ["s.3"])
                _ = index.entry(sequence / 3)
                _ = index.firstSequence(atOrAfter: Int64(sequence / 4))
                peak = max(peak, index.residentDetailEntries)
            }
        }
        #expect(index.count == total)
        #expect(peak <= 3 * StreamIndex.blockCapacity, "detail in memory peaked at \(peak) entries")
        #expect(loader.loads > 0)
        // The summaries alone answer unfiltered questions and subject counts (few subjects per block).
        let before = loader.loads
        #expect(index.count(from: 1, filters: []) == total)
        #expect(index.count(from: 1, filters: ["s.1"]) == (1...total).filter { $0 % 7 == 1 }.count)
        #expect(index.next(from: 12_345, filters: []) == 12_345)
        #expect(loader.loads == before)
    }

    @Test("a store that cannot read a block's detail leaves the index usable: trims end, bytes stay counted, reads recover")
    func failingLoader() {
        let loader = ModelLoader()
        var index = StreamIndex(loader: loader, cachedBlocks: 1)
        let total = StreamIndex.blockCapacity * 4
        var model: [MessageIndexEntry] = []
        for sequence in 1...UInt64(total) {
            let entry = MessageIndexEntry(sequence: sequence, subject: "k.\(sequence % 10)", size: 10, timestamp: Int64(sequence))
            loader.record(entry)
            index.append(entry)
            model.append(entry)
        }
        loader.failing = true
        var config = StreamConfig(name: "S")
        config.maxMsgsPerSubject = 300
        let trimmed = index.evict(config: config, now: 0)  // ends, though most subjects' messages cannot be read
        #expect(index.count == total - trimmed.count)
        config = StreamConfig(name: "S")
        config.maxBytes = Int64(index.bytes) - 100
        let before = index.count
        let dropped = index.evict(config: config, now: 0)
        #expect(!dropped.isEmpty && dropped.count <= StreamIndex.blockCapacity && index.count == before - dropped.count)
        #expect(index.bytes <= UInt64(config.maxBytes))
        let removed = index.remove(UInt64(total / 2))
        #expect(removed)
        // Appends go on into the tail, whose earlier detail is read once the store reads again.
        let next = MessageIndexEntry(sequence: UInt64(total + 1), subject: "k.1", size: 10, timestamp: Int64(total + 1))
        loader.record(next)
        index.append(next)
        loader.failing = false
        let present = Array(index.entries)
        #expect(present.count == index.count)
        #expect(present.allSatisfy { index.contains($0.sequence) } && present.last == next)
        // The one message removed blind still counts (10 bytes) until its block empties.
        #expect(index.bytes == UInt64(index.count * 10) + 10)
    }

    @Test("an index rebuilt from a store's block summaries answers as the one that was appended to")
    func rebuiltFromSummaries() {
        let loader = ModelLoader()
        var index = StreamIndex(loader: loader, cachedBlocks: 1)
        var builder = StreamIndex.Builder()
        var second = StreamIndex.Builder()
        for sequence in UInt64(1)...10_000 where sequence % 11 != 0 {
            let entry = self.entry(sequence)
            loader.record(entry)
            index.append(entry)
            // Two "segments" split inside a block, merged as a store's recovery does.
            if sequence < 5_000 { builder.add(entry) } else { second.add(entry) }
        }
        builder.add(second.blocks)
        #expect(builder.blocks == Array(index.blocks))
        var recovered = StreamIndex(recovery: MessageStoreRecovery(blocks: builder.blocks, lastSequence: 10_001), loader: loader)
        #expect(recovered.count == index.count && recovered.bytes == index.bytes && recovered.lastSequence == 10_001)
        #expect(Array(recovered.entries) == Array(index.entries))
        let next = MessageIndexEntry(sequence: 10_002, subject: "a.x", size: 10, timestamp: 10_002)
        loader.record(next)
        recovered.append(next)
        #expect(recovered.entries.reversedLast == next)
    }
}

@Suite("StreamIndex block summaries in files")
struct StreamIndexBlockCodecTests {
    @Test("summaries round-trip through their encoding; damaged bytes decode to nil or a consistent block, never a trap")
    func codec() {
        var builder = StreamIndex.Builder()
        for sequence in UInt64(1)...10_000 where sequence % 7 != 0 {
            builder.add(MessageIndexEntry(sequence: sequence, subject: sequence % 3 == 0 ? "a.x" : "b.y", size: 10, timestamp: Int64(sequence)))
        }
        for sequence in UInt64(10_001)...13_000 {  // more subjects than a block counts
            builder.add(MessageIndexEntry(sequence: sequence, subject: "k.\(sequence)", size: 5, timestamp: Int64(sequence)))
        }
        var bytes: [UInt8] = []
        for block in builder.blocks { block.encode(into: &bytes) }
        var position = 0
        var decoded: [StreamIndex.Block] = []
        while position < bytes.count, let block = StreamIndex.Block.decode(bytes, at: &position) { decoded.append(block) }
        #expect(decoded == builder.blocks)
        var random = SeededLCG(seed: 3)
        var rejected = 0
        for _ in 0..<3000 {
            var damaged = bytes
            damaged[Int(random.next() % UInt64(bytes.count))] ^= UInt8(1 + random.next() % 255)
            if random.next() % 4 == 0 { damaged.removeLast(Int(random.next() % UInt64(damaged.count))) }
            if random.next() % 8 == 0 { damaged = (0..<Int(random.next() % 700)).map { _ in UInt8(truncatingIfNeeded: random.next()) } }
            var at = 0
            while at < damaged.count {
                guard let block = StreamIndex.Block.decode(damaged, at: &at) else {
                    rejected += 1
                    break
                }
                #expect(block.count >= 1 && block.first <= block.last && block.count(from: block.first) == block.count)
                #expect(block.count(passing: []) ?? block.count == block.count)
            }
        }
        #expect(rejected > 0)
    }
}

extension StreamIndex.Entries {
    var reversedLast: MessageIndexEntry? { Array(self).last }
}

/// A small deterministic generator for the test.
struct SeededLCG {
    var state: UInt64
    init(seed: UInt64) { self.state = seed }
    mutating func next() -> UInt64 {
        self.state = self.state &* 6364136223846793005 &+ 1442695040888963407
        return self.state >> 33
    }
}

@Suite("StreamIndex: messages per subject")
struct StreamIndexPerSubjectTests {
    /// What `max_msgs_per_subject` keeps: the last `limit` of each subject.
    func expected(_ model: [MessageIndexEntry], limit: Int) -> [MessageIndexEntry] {
        var seen: [String: Int] = [:]
        var kept: [MessageIndexEntry] = []
        for entry in model.reversed() {
            seen[entry.subject, default: 0] += 1
            if seen[entry.subject]! <= limit { kept.append(entry) }
        }
        return kept.reversed()
    }

    @Test("evicting per subject after each append, with deletes and purges between, keeps the last N of each subject")
    func keepsTheLastOfEachSubject() {
        for limit in [1, 3] as [Int64] {
            var config = StreamConfig(name: "KV")
            config.maxMsgsPerSubject = limit
          for loaded in [false, true] {
            var under = IndexUnderTest(loaded: loaded)
            var model: [MessageIndexEntry] = []
            var random = SeededLCG(seed: UInt64(limit))
            var evictedTotal: [UInt64] = []
            for sequence in UInt64(1)...6000 {
                let entry = MessageIndexEntry(
                    sequence: sequence, subject: "k.\(random.next() % 50)", size: 1, timestamp: Int64(sequence))
                under.append(entry)
                model.append(entry)
                switch random.next() % 100 {
                case 0..<3:
                    // A message delete: of the subject's last, or anywhere.
                    if let victim = model.randomElement(using: &random) {
                        _ = under.index.remove(victim.sequence)
                        model.removeAll { $0.sequence == victim.sequence }
                    }
                case 3:
                    let through = sequence - min(sequence - 1, random.next() % 100)
                    under.index.purge(through: through)
                    model.removeAll { $0.sequence <= through }
                default:
                    break
                }
                evictedTotal += under.index.evict(config: config, now: 0)
                model = self.expected(model, limit: Int(limit))
                if sequence % 500 == 0 { #expect(Array(under.index.entries) == model, "limit \(limit) at \(sequence)") }
            }
            #expect(Array(under.index.entries) == model)
            #expect(!evictedTotal.isEmpty)
          }
        }
    }
}

extension SeededLCG: RandomNumberGenerator {}
