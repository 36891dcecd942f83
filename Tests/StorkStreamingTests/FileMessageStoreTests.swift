import Foundation
import StorkStreamStores
import StorkStreaming
import StorkTestKit
import Testing

// MARK: - Helpers

extension FileMessageStoreConfiguration {
    /// Small segments, so that a few dozen messages span several files (98-byte records: ten per segment).
    static func small(
        verification: RecoveryVerification = .activeSegment,
        fsync: SyncPolicy = .batched(.milliseconds(20))
    ) -> Self {
        Self(segmentMaxBytes: 1024, fsync: fsync, verification: verification)
    }
}

/// A new `FileMessageStore` on `directory`, opened.
func openFileStore(
    _ directory: StoreTestDirectory,
    _ configuration: FileMessageStoreConfiguration = .small()
) async throws -> (FileMessageStore, MessageStoreRecovery) {
    let store = FileMessageStore(directory: directory.path, configuration: configuration)
    let recovery = try await store.open().expanded(store)
    return (store, recovery)
}

/// Appends `messages` one append each (so that record boundaries and segment rollovers are predictable).
func appendEach(_ messages: [StoredMessage], to store: some MessageStore) async throws {
    for message in messages {
        try await store.append([message])
    }
}

func segmentFileName(_ start: UInt64) -> String {
    let digits = String(start)
    return String(repeating: "0", count: 20 - digits.count) + digits + ".log"
}

// MARK: - Tests

@Suite("FileMessageStore")
struct FileMessageStoreTests {
    @Test("segments roll over at segmentMaxBytes, get index files, and read across boundaries")
    func segmentRollover() async throws {
        let directory = StoreTestDirectory("rollover")
        defer { directory.remove() }
        var (store, _) = try await openFileStore(directory)
        let all = storedMessages(1...200, payloadSize: 50)  // 98 bytes each
        for batch in stride(from: 0, to: 200, by: 5) {
            try await store.append(Array(all[batch..<(batch + 5)]))
        }
        let logs = directory.files(withExtension: "log")
        #expect(logs.count == 20)  // two batches of 490 bytes per 1024-byte segment
        #expect(logs.first == segmentFileName(1))
        #expect(logs.contains(segmentFileName(191)))
        for name in logs { #expect(directory.size(of: name) == 980) }
        #expect(try await store.messages(from: 0, limit: 500) == all)
        #expect(try await store.messages(from: 8, limit: 25) == Array(all[7..<32]))
        for sequence in [1, 10, 11, 99, 100, 101, 200] {
            #expect(try await store.message(UInt64(sequence)) == all[sequence - 1])
        }
        // A batch larger than a segment goes whole into a new one.
        let large = storedMessages(201...230, payloadSize: 50)
        try await store.append(large)
        #expect(directory.size(of: segmentFileName(201)) == 30 * 98)
        try await store.close()
        // Every sealed segment has its index (written in the background, or by close at the latest).
        #expect(directory.files(withExtension: "idx").count == 20)

        let recovery: MessageStoreRecovery
        (store, recovery) = try await openFileStore(directory)
        #expect(recovery.messages == (all + large).map(\.indexEntry))
        #expect(recovery.lastSequence == 230)
        #expect(recovery.truncatedBytes == 0)
        #expect(try await store.messages(from: 195, limit: 10) == Array((all + large)[194..<204]))
        try await store.append([storedMessage(231, payloadSize: 50)])
        #expect(directory.files(withExtension: "log").count == 22)
        try await store.close()
    }

    @Test("removes and purges survive reopening, and a purge of everything keeps the sequence going")
    func reopenAfterRemovesAndPurges() async throws {
        let directory = StoreTestDirectory("purge")
        defer { directory.remove() }
        var (store, _) = try await openFileStore(directory)
        let all = storedMessages(1...100, payloadSize: 50)
        try await appendEach(all, to: store)
        try await store.remove([5, 15, 16, 55, 99])
        try await store.purge(through: 23)
        let expected = all.filter { $0.sequence > 23 && ![55, 99].contains($0.sequence) }
        #expect(directory.files(withExtension: "log").first == segmentFileName(21))
        try await store.close()

        var recovery: MessageStoreRecovery
        (store, recovery) = try await openFileStore(directory)
        #expect(recovery.messages == expected.map(\.indexEntry))
        #expect(recovery.lastSequence == 100)
        #expect(try await store.messages(from: 0, limit: 3) == Array(expected.prefix(3)))

        try await store.purge(through: 100)
        #expect(try await store.messages(from: 0, limit: 10).isEmpty)
        #expect(directory.files(withExtension: "log") == [segmentFileName(101)])
        #expect(directory.size(of: segmentFileName(101)) == 0)
        try await store.close()
        (store, recovery) = try await openFileStore(directory)
        #expect(recovery.messages.isEmpty)
        #expect(recovery.lastSequence == 100)
        await #expect(throws: (any Error).self) { try await store.append([storedMessage(100)]) }
        let next = storedMessages(101...105, payloadSize: 50)
        try await store.append(next)
        try await store.close()

        (store, recovery) = try await openFileStore(directory)
        #expect(recovery.messages == next.map(\.indexEntry))
        #expect(recovery.lastSequence == 105)
        try await store.purge(through: 1000)
        try await store.purge(through: 1000)  // nothing left: no change
        try await store.close()
        (store, recovery) = try await openFileStore(directory)
        #expect(recovery.messages.isEmpty)
        #expect(recovery.lastSequence == 105)
        try await store.append([storedMessage(106)])
        #expect(try await store.message(106) == storedMessage(106))
        try await store.close()
    }

    @Test("a torn last record is cut at every byte offset, and the store goes on")
    func tornTail() async throws {
        let directory = StoreTestDirectory("torn")
        defer { directory.remove() }
        var (store, _) = try await openFileStore(directory, .init())
        let headers = Array("NATS/1.0\r\nTrace: 1\r\n\r\n".utf8)
        let messages = storedMessages(1...4) + [storedMessage(5, headers: headers, payloadSize: 40)]
        try await appendEach(messages, to: store)
        try await store.close()

        let file = directory.url(segmentFileName(1))
        let pristine = try Data(contentsOf: file)
        let lastStart = pristine.count - fileRecordLength(of: messages[4])
        let replacement = storedMessage(5, subject: "after.cut", payloadSize: 7)
        for cut in lastStart..<pristine.count {
            try pristine.prefix(cut).write(to: file)
            var recovery: MessageStoreRecovery
            (store, recovery) = try await openFileStore(directory, .init())
            #expect(recovery.messages == messages.prefix(4).map(\.indexEntry), "cut at \(cut)")
            #expect(recovery.truncatedBytes == UInt64(cut - lastStart), "cut at \(cut)")
            #expect(recovery.lastSequence == 4)
            #expect(try await store.messages(from: 0, limit: 10) == Array(messages.prefix(4)))
            try await store.append([replacement])
            try await store.close()

            (store, recovery) = try await openFileStore(directory, .init())
            #expect(recovery.truncatedBytes == 0)
            #expect(recovery.messages.map(\.sequence) == [1, 2, 3, 4, 5])
            #expect(try await store.message(5) == replacement)
            try await store.close()
        }

        // A cut inside the first record leaves nothing, and sequences start again from 1.
        try pristine.prefix(10).write(to: file)
        let recovery: MessageStoreRecovery
        (store, recovery) = try await openFileStore(directory, .init())
        #expect(recovery.messages.isEmpty)
        #expect(recovery.truncatedBytes == 10)
        #expect(recovery.lastSequence == 0)
        try await store.close()
    }

    @Test("garbage after the last record is cut")
    func garbageAfterLastRecord() async throws {
        let directory = StoreTestDirectory("garbage")
        defer { directory.remove() }
        var (store, _) = try await openFileStore(directory, .init())
        let messages = storedMessages(1...10)
        try await store.append(messages)
        try await store.close()

        let file = directory.url(segmentFileName(1))
        let pristine = try Data(contentsOf: file)
        var random = StoreTestGenerator(seed: 7)
        let noise = Data((0..<777).map { _ in UInt8.random(in: 0...255, using: &random) })
        var damagedRecord = Data(pristine.suffix(fileRecordLength(of: messages[9])))
        damagedRecord[40] ^= 0x01
        for tail in [noise, Data(count: 4096), damagedRecord, Data(pristine.prefix(20))] {
            try (pristine + tail).write(to: file)
            let recovery: MessageStoreRecovery
            (store, recovery) = try await openFileStore(directory, .init())
            #expect(recovery.truncatedBytes == UInt64(tail.count))
            #expect(recovery.messages == messages.map(\.indexEntry))
            try await store.append([storedMessage(11)])
            #expect(try await store.messages(from: 9, limit: 5) == [messages[8], messages[9], storedMessage(11)])
            try await store.close()
            let repaired = try Data(contentsOf: file)
            #expect(repaired.count == pristine.count + fileRecordLength(of: storedMessage(11)))
            #expect(repaired.prefix(pristine.count) == pristine)
            try pristine.write(to: file)
        }
    }

    @Test(
        "a flipped byte in a sealed segment cuts that segment there, keeping everything before and after",
        arguments: [
            FileMessageStoreConfiguration.RecoveryVerification.allSegments,
            FileMessageStoreConfiguration.RecoveryVerification.activeSegment,
        ]
    )
    func flippedByteInSealedSegment(verification: FileMessageStoreConfiguration.RecoveryVerification) async throws {
        let directory = StoreTestDirectory("flip")
        defer { directory.remove() }
        let configuration = FileMessageStoreConfiguration.small(verification: verification)
        var (store, _) = try await openFileStore(directory, configuration)
        let all = storedMessages(1...50, payloadSize: 50)
        try await appendEach(all, to: store)
        try await store.close()

        // Segment 11...20: damage the payload of 14 (the fourth record).
        let file = directory.url(segmentFileName(11))
        var bytes = try Data(contentsOf: file)
        bytes[3 * 98 + 60] ^= 0x40
        try bytes.write(to: file)
        let survivors = all.filter { $0.sequence <= 13 || $0.sequence > 20 }

        var recovery: MessageStoreRecovery
        (store, recovery) = try await openFileStore(directory, configuration)
        if verification == .activeSegment {
            // The index is trusted at open; the read finds the damage, and the next open cuts it.
            #expect(recovery.truncatedBytes == 0)
            #expect(try await store.message(13) == all[12])
            await #expect(throws: (any Error).self) { try await store.message(14) }
            await #expect(throws: (any Error).self) { try await store.messages(from: 12, limit: 5) }
            try await store.close()
            (store, recovery) = try await openFileStore(directory, configuration)
        }
        #expect(recovery.truncatedBytes == UInt64(980 - 3 * 98))
        #expect(recovery.messages == survivors.map(\.indexEntry))
        #expect(recovery.lastSequence == 50)
        #expect(try await store.message(14) == nil)
        #expect(try await store.messages(from: 0, limit: 100) == survivors)
        try await store.append([storedMessage(51)])
        try await store.close()

        (store, recovery) = try await openFileStore(directory, configuration)
        #expect(recovery.truncatedBytes == 0)
        #expect(recovery.messages == (survivors + [storedMessage(51)]).map(\.indexEntry))
        try await store.close()
    }

    @Test("missing, damaged and stale index files are rebuilt from their segments")
    func indexFilesRebuilt() async throws {
        let directory = StoreTestDirectory("index")
        defer { directory.remove() }
        var (store, _) = try await openFileStore(directory)
        let all = storedMessages(1...60, payloadSize: 50)
        try await appendEach(all, to: store)
        try await store.remove([3, 33, 34])
        try await store.close()
        let expected = all.filter { ![3, 33, 34].contains($0.sequence) }.map(\.indexEntry)

        let indexes = directory.files(withExtension: "idx")
        #expect(indexes.count == 5)
        for name in indexes { try FileManager.default.removeItem(at: directory.url(name)) }
        var recovery: MessageStoreRecovery
        (store, recovery) = try await openFileStore(directory)
        #expect(recovery.messages == expected)
        #expect(recovery.truncatedBytes == 0)
        #expect(directory.files(withExtension: "idx") == indexes)
        try await store.close()

        // A damaged index and one that no longer matches its segment's size (garbage after its last record).
        var damaged = try Data(contentsOf: directory.url(indexes[1]))
        damaged[damaged.count / 2] ^= 0xFF
        try damaged.write(to: directory.url(indexes[1]))
        let sealed = directory.url(segmentFileName(31))
        try (try Data(contentsOf: sealed) + Data(repeating: 0xAB, count: 100)).write(to: sealed)
        (store, recovery) = try await openFileStore(directory)
        #expect(recovery.messages == expected)
        #expect(recovery.truncatedBytes == 100)
        #expect(try await store.messages(from: 0, limit: 100).map(\.indexEntry) == expected)
        try await store.close()
        (store, recovery) = try await openFileStore(directory)
        #expect(recovery.truncatedBytes == 0)
        try await store.close()

        // A damaged summary (the tail opening reads) and damaged entries behind an intact summary (read on use).
        for (name, offset) in [(indexes[2], -30), (indexes[3], 40)] {
            var bytes = try Data(contentsOf: directory.url(name))
            bytes[offset < 0 ? bytes.count + offset : offset] ^= 0x5A
            try bytes.write(to: directory.url(name))
        }
        (store, recovery) = try await openFileStore(directory)
        // Five sealed segments: three summaries read, the damaged one's whole index is damaged too: a scan.
        #expect(store.recoveryCounts == .init(summaries: 4, indexes: 0, scans: 2))
        #expect(recovery.messages == expected)
        #expect(try await store.messages(from: 0, limit: 100).map(\.indexEntry) == expected)
        try await store.close()
    }

    @Test("compaction rewrites mostly removed segments, deletes empty ones, and keeps what is left readable")
    func compaction() async throws {
        let directory = StoreTestDirectory("compact")
        defer { directory.remove() }
        var (store, _) = try await openFileStore(directory)
        var expected = storedMessages(1...30, payloadSize: 50)
        try await appendEach(expected, to: store)
        // The active segment (21...) records the removal of 8, which lives in segment 1.
        try await store.remove([8])
        let more = storedMessages(31...60, payloadSize: 50)
        try await appendEach(more, to: store)
        expected += more

        // Most of segment 21, from its interior: rewritten to its three live messages, and it keeps the removal of
        // 8 (segment 1 is still there).
        try await store.remove(Array(22...28))
        #expect(directory.size(of: segmentFileName(21)) == 3 * 98 + 34 + 16)
        // Every message of segment 41: deleted.
        try await store.remove(Array(41...50))
        #expect(!directory.files(withExtension: "log").contains(segmentFileName(41)))
        // The head of segment 1: left as it is until all of it goes.
        try await store.remove(Array(1...6))
        #expect(directory.size(of: segmentFileName(1)) == 980)
        // Below the threshold: left as it is.
        try await store.remove([33, 35])
        #expect(directory.size(of: segmentFileName(31)) == 980)
        expected.removeAll { [8, 33, 35].contains($0.sequence) || (1...6).contains($0.sequence) }
        expected.removeAll { (22...28).contains($0.sequence) || (41...50).contains($0.sequence) }
        #expect(try await store.messages(from: 0, limit: 100) == expected)
        try await store.close()

        var recovery: MessageStoreRecovery
        (store, recovery) = try await openFileStore(directory)
        #expect(recovery.messages == expected.map(\.indexEntry))
        #expect(try await store.messages(from: 0, limit: 100) == expected)
        for message in expected { #expect(try await store.message(message.sequence) == message) }

        // The rest of segment 21: nothing live, but its record of removing 8 still matters.
        try await store.remove([21, 29, 30])
        #expect(directory.size(of: segmentFileName(21)) == 34 + 16)
        expected.removeAll { [21, 29, 30].contains($0.sequence) }
        try await store.close()
        for verification in [FileMessageStoreConfiguration.RecoveryVerification.allSegments, .activeSegment] {
            (store, recovery) = try await openFileStore(directory, .small(verification: verification))
            #expect(recovery.messages == expected.map(\.indexEntry))
            #expect(try await store.message(8) == nil)
            #expect(try await store.messages(from: 0, limit: 100) == expected)
            try await store.close()
        }
    }

    @Test(
        "both sync policies store, sync and recover",
        arguments: [
            FileMessageStoreConfiguration.SyncPolicy.always,
            FileMessageStoreConfiguration.SyncPolicy.batched(.milliseconds(1)),
        ]
    )
    func syncPolicies(policy: FileMessageStoreConfiguration.SyncPolicy) async throws {
        let directory = StoreTestDirectory("sync")
        defer { directory.remove() }
        let configuration = FileMessageStoreConfiguration.small(fsync: policy)
        var (store, _) = try await openFileStore(directory, configuration)
        let all = storedMessages(1...100, payloadSize: 50)
        for batch in stride(from: 0, to: 100, by: 10) {
            try await store.append(Array(all[batch..<(batch + 10)]))
        }
        try await store.remove([1, 2, 50])
        try await store.purge(through: 10)
        try await store.saveMetadata(key: "stream", value: [7])
        try await store.close()
        await #expect(throws: (any Error).self) { try await store.append([storedMessage(101)]) }

        let recovery: MessageStoreRecovery
        (store, recovery) = try await openFileStore(directory, configuration)
        #expect(recovery.messages == all.filter { $0.sequence > 10 && $0.sequence != 50 }.map(\.indexEntry))
        #expect(recovery.metadata == ["stream": [7]])
        try await store.destroy()
        #expect(!FileManager.default.fileExists(atPath: directory.path))
    }

    @Test("a store dropped without close (a killed process) loses nothing that append returned")
    func droppedWithoutClose() async throws {
        let directory = StoreTestDirectory("crash")
        defer { directory.remove() }
        let configuration = FileMessageStoreConfiguration.small(fsync: .batched(.seconds(60)))
        var store: FileMessageStore? = FileMessageStore(directory: directory.path, configuration: configuration)
        _ = try await store?.open()
        let all = storedMessages(1...45, payloadSize: 50)
        try await store?.append(all)
        try await store?.remove([44])
        store = nil

        let (reopened, recovery) = try await openFileStore(directory, configuration)
        #expect(recovery.messages == all.filter { $0.sequence != 44 }.map(\.indexEntry))
        #expect(recovery.truncatedBytes == 0)
        try await reopened.close()
    }

    @Test("a long stream keeps a bounded part of its index in memory, while it grows, when read and after a restart")
    func indexMemoryIsBounded() async throws {
        let directory = StoreTestDirectory("bounded")
        defer { directory.remove() }
        // Records of 16-byte payloads on "orders.created" are 64 bytes: about a thousand per segment.
        let configuration = FileMessageStoreConfiguration(segmentMaxBytes: 64 << 10, fsync: .batched(.seconds(60)))
        let perSegment = (64 << 10) / 64 + 1
        let bound = (configuration.maximumLoadedSegments + 1) * perSegment
        let (store, _) = try await openFileStore(directory, configuration)
        var index = StreamIndex(loader: store.indexLoader, cachedBlocks: 2)
        let total: UInt64 = 60_000
        var peak = (store: 0, index: 0)
        for first in stride(from: UInt64(1), through: total, by: 1000) {
            let messages = storedMessages(first...(first + 999))
            try await store.append(messages)
            for message in messages { index.append(message.indexEntry) }
            // Questions that read old blocks: an entry, a time, a message.
            #expect(index.entry(first / 2 + 1) == storedMessage(first / 2 + 1).indexEntry)
            #expect(index.firstSequence(atOrAfter: storedMessage(first / 3 + 1).timestamp) == first / 3 + 1)
            #expect(try await store.message(first / 4 + 1) == storedMessage(first / 4 + 1))
            peak = (max(peak.store, store.residentIndexEntries), max(peak.index, index.residentDetailEntries))
        }
        let all = storedMessages(1...total).map(\.indexEntry)
        #expect(Array(index.entries) == all)
        peak = (max(peak.store, store.residentIndexEntries), max(peak.index, index.residentDetailEntries))
        #expect(peak.store <= bound, "the store held \(peak.store) records' offsets")
        #expect(peak.index <= 3 * StreamIndex.blockCapacity, "the index held \(peak.index) entries' detail")
        try await store.close()

        // After a restart: summaries only, the same answers, and the same bounds.
        let reopened = FileMessageStore(directory: directory.path, configuration: configuration)
        let recovery = try await reopened.open()
        let segments = directory.files(withExtension: "log").count
        #expect(reopened.recoveryCounts == .init(summaries: segments - 1, indexes: 0, scans: 1))
        #expect(recovery.messages.isEmpty && recovery.blocks.count == Int(total / UInt64(StreamIndex.blockSpan)) + 1)
        let recovered = StreamIndex(recovery: recovery, loader: reopened.indexLoader, cachedBlocks: 2)
        #expect(recovered.count == Int(total) && recovered.bytes == index.bytes)
        #expect(reopened.residentIndexEntries <= bound)
        #expect(Array(recovered.entries) == all)
        #expect(reopened.residentIndexEntries <= bound && recovered.residentDetailEntries <= 3 * StreamIndex.blockCapacity)
        try await reopened.close()
    }

    @Test("metadata keys of any shape round-trip")
    func metadataKeys() async throws {
        let directory = StoreTestDirectory("meta")
        defer { directory.remove() }
        var (store, _) = try await openFileStore(directory)
        let keys = ["", "a/b\\c", "../../etc/passwd", "ümlaut 🚀", String(repeating: "long-", count: 80), "x\0y"]
        for (index, key) in keys.enumerated() {
            try await store.saveMetadata(key: key, value: [UInt8(index)] + Array(key.utf8))
        }
        try await store.close()
        let recovery: MessageStoreRecovery
        (store, recovery) = try await openFileStore(directory)
        #expect(recovery.metadata.count == keys.count)
        for (index, key) in keys.enumerated() {
            #expect(recovery.metadata[key] == [UInt8(index)] + Array(key.utf8))
        }
        try await store.close()
    }

    @Test("a second store on the same directory is refused while the first is open")
    func directoryLock() async throws {
        let directory = StoreTestDirectory("lock")
        defer { directory.remove() }
        let (first, _) = try await openFileStore(directory)
        let second = FileMessageStore(directory: directory.path)
        await #expect(throws: (any Error).self) { try await second.open() }
        try await first.close()
        let (third, _) = try await openFileStore(directory)
        try await third.close()
    }

    @Test(
        "random appends, removes, purges, restarts and crashes match the memory store",
        arguments: [1, 2] as [UInt64]
    )
    func randomizedAgainstMemoryStore(seed: UInt64) async throws {
        let directory = StoreTestDirectory("random")
        defer { directory.remove() }
        var random = StoreTestGenerator(seed: seed)
        let reference = MemoryMessageStore()
        _ = try await reference.open()
        let configuration = FileMessageStoreConfiguration(
            segmentMaxBytes: 2048,
            fsync: .batched(.milliseconds(5)),
            compactionThreshold: 0.25,
            verification: seed.isMultiple(of: 2) ? .allSegments : .activeSegment,
            maximumOpenSegments: 3
        )
        var store = FileMessageStore(directory: directory.path, configuration: configuration)
        _ = try await store.open()
        var next: UInt64 = 1
        let subjects = ["a", "orders.eu.created", "x.y.z"]

        func compareRecovery(_ recovery: MessageStoreRecovery, round: Int) async throws {
            let expected = try await reference.open().expanded(reference)
            #expect(recovery.messages == expected.messages, "round \(round)")
            #expect(recovery.lastSequence == expected.lastSequence, "round \(round)")
            #expect(recovery.metadata == expected.metadata, "round \(round)")
            #expect(recovery.truncatedBytes == 0, "round \(round)")
        }

        for round in 0..<200 {
            let operation = Int.random(in: 0..<100, using: &random)
            switch operation {
            case 0..<45:
                if Int.random(in: 0..<10, using: &random) == 0 { next += UInt64.random(in: 1...3, using: &random) }
                let count = Int.random(in: 1...12, using: &random)
                let batch = (0..<count).map { offset in
                    storedMessage(
                        next + UInt64(offset),
                        subject: subjects.randomElement(using: &random)!,
                        headers: Bool.random(using: &random) ? [] : Array("NATS/1.0\r\n\r\n".utf8),
                        payloadSize: Int.random(in: 0...200, using: &random)
                    )
                }
                next += UInt64(count)
                try await reference.append(batch)
                try await store.append(batch)
            case 45..<70:
                // Scattered sequences, or a run (which makes sealed segments worth compacting).
                let doomed: [UInt64]
                if Bool.random(using: &random) {
                    let count = Int.random(in: 1...8, using: &random)
                    doomed = (0..<count).map { _ in UInt64.random(in: 0...(next + 1), using: &random) }
                } else {
                    let first = UInt64.random(in: 0...(next + 1), using: &random)
                    doomed = Array(first...(first + UInt64.random(in: 0...20, using: &random)))
                }
                try await reference.remove(doomed)
                try await store.remove(doomed)
            case 70..<76:
                let through =
                    Int.random(in: 0..<4, using: &random) == 0
                    ? next + 5 : UInt64.random(in: 0...next, using: &random)
                try await reference.purge(through: through)
                try await store.purge(through: through)
            case 76..<80:
                let key = "consumer/\(Int.random(in: 0..<3, using: &random))"
                let value: [UInt8]? = Bool.random(using: &random) ? [UInt8(round & 0xFF)] : nil
                try await reference.saveMetadata(key: key, value: value)
                try await store.saveMetadata(key: key, value: value)
            case 80..<90:
                try await store.close()
                store = FileMessageStore(directory: directory.path, configuration: configuration)
                try await compareRecovery(store.open().expanded(store), round: round)
            case 90..<95:
                // A crash: the store is dropped without close.
                store = FileMessageStore(directory: directory.path, configuration: configuration)
                try await compareRecovery(store.open().expanded(store), round: round)
            default:
                let sequence = UInt64.random(in: 0...(next + 1), using: &random)
                #expect(try await store.message(sequence) == reference.message(sequence), "round \(round)")
            }
            let from = UInt64.random(in: 0...(next + 1), using: &random)
            let limit = Int.random(in: 1...40, using: &random)
            let expected = try await reference.messages(from: from, limit: limit)
            #expect(try await store.messages(from: from, limit: limit) == expected, "round \(round)")
        }
        #expect(try await store.messages(from: 0, limit: 10_000) == reference.messages(from: 0, limit: 10_000))
        try await store.close()
        store = FileMessageStore(directory: directory.path, configuration: configuration)
        try await compareRecovery(store.open().expanded(store), round: 200)
        try await store.close()
    }
}
