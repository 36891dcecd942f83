import Testing

@testable import StorkStreaming

/// The index keeps its entries in blocks: every operation must answer as one ordered list would, across blocks.
@Suite("StreamIndex across blocks")
struct StreamIndexBlockTests {
    func entry(_ sequence: UInt64) -> MessageIndexEntry {
        MessageIndexEntry(sequence: sequence, subject: sequence % 3 == 0 ? "a.x" : "b.y", size: 10, timestamp: Int64(sequence))
    }

    @Test("appends, removals in the middle and at the head, purge and lookups agree with a plain list")
    func agreesWithAList() {
        let capacity = StreamIndex.blockCapacity
        var index = StreamIndex()
        var model: [MessageIndexEntry] = []
        var sequence: UInt64 = 0
        for _ in 0..<(capacity * 3 + 17) {
            sequence += UInt64(1 + (sequence % 5 == 0 ? 1 : 0))  // gaps now and then
            index.append(self.entry(sequence))
            model.append(self.entry(sequence))
        }
        #expect(index.blocks.count == 4)
        // Removals: a whole block's worth from the middle of one, some heads, some absent.
        var random = SeededLCG(seed: 7)
        for _ in 0..<capacity {
            let victim = model[Int(random.next() % UInt64(model.count))].sequence
            let removed = index.remove(victim)
            #expect(removed)
            model.removeAll { $0.sequence == victim }
        }
        let absent = [index.remove(0), index.remove(sequence + 1)]
        #expect(absent == [false, false])
        for _ in 0..<100 {
            let removed = index.remove(model[0].sequence)
            #expect(removed)
            model.removeFirst()
        }
        #expect(index.count == model.count)
        #expect(Array(index.entries) == model)
        #expect(Array(index.entries.reversed()) == model.reversed())
        #expect(index.bytes == UInt64(model.count * 10))
        #expect(index.firstSequence == model[0].sequence)
        for probe in stride(from: UInt64(0), through: sequence + 2, by: 97) {
            #expect(index.next(from: probe, filters: []) == model.first { $0.sequence >= probe })
            #expect(index.next(from: probe, filters: ["a.*"]) == model.first { $0.sequence >= probe && $0.subject == "a.x" })
            #expect(index.count(from: probe, filters: []) == model.filter { $0.sequence >= probe }.count)
            #expect(index.count(from: probe, filters: ["b.>"]) == model.filter { $0.sequence >= probe && $0.subject == "b.y" }.count)
            #expect(index.entry(probe) == model.first { $0.sequence == probe })
            #expect(Array(index.entries(from: probe)) == model.filter { $0.sequence >= probe })
        }
        #expect(index.last(filters: ["a.x"]) == model.last { $0.subject == "a.x" })
        // Purge through the middle of a block, then everything.
        let cut = model[model.count / 2].sequence
        index.purge(through: cut)
        model.removeAll { $0.sequence <= cut }
        #expect(Array(index.entries) == model)
        #expect(index.count == model.count)
        index.purge()
        #expect(index.count == 0 && index.entries.isEmpty && index.blocks.isEmpty)
        #expect(index.firstSequence == sequence + 1)
    }

    @Test("limits evict across blocks, oldest first")
    func evictsAcrossBlocks() {
        var index = StreamIndex()
        for sequence in 1...UInt64(StreamIndex.blockCapacity * 2 + 10) { index.append(self.entry(sequence)) }
        var config = StreamConfig(name: "S")
        config.maxMsgs = 100
        let evicted = index.evict(config: config, now: 0)
        #expect(evicted == Array(1...UInt64(StreamIndex.blockCapacity * 2 - 90)))
        #expect(index.count == 100 && index.blocks.count == 2)  // the last 90 of the second block, the 10 of the third
        #expect(index.entries.first?.sequence == UInt64(StreamIndex.blockCapacity * 2 - 89))
    }
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
            var index = StreamIndex()
            var model: [MessageIndexEntry] = []
            var random = SeededLCG(seed: UInt64(limit))
            var evictedTotal: [UInt64] = []
            for sequence in UInt64(1)...6000 {
                let entry = MessageIndexEntry(
                    sequence: sequence, subject: "k.\(random.next() % 50)", size: 1, timestamp: Int64(sequence))
                index.append(entry)
                model.append(entry)
                switch random.next() % 100 {
                case 0..<3:
                    // A message delete: of the subject's last, or anywhere.
                    if let victim = model.randomElement(using: &random) {
                        _ = index.remove(victim.sequence)
                        model.removeAll { $0.sequence == victim.sequence }
                    }
                case 3:
                    let through = sequence - min(sequence - 1, random.next() % 100)
                    index.purge(through: through)
                    model.removeAll { $0.sequence <= through }
                default:
                    break
                }
                evictedTotal += index.evict(config: config, now: 0)
                model = self.expected(model, limit: Int(limit))
                if sequence % 500 == 0 { #expect(Array(index.entries) == model, "limit \(limit) at \(sequence)") }
            }
            #expect(Array(index.entries) == model)
            #expect(!evictedTotal.isEmpty)
        }
    }
}

extension SeededLCG: RandomNumberGenerator {}
