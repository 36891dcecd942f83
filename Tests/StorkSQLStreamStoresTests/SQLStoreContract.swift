import StorkStreaming
import StorkTestKit
import Testing

// MARK: - The MessageStore contract, for the SQL stores

/// The checks of Tests/StorkStreamingTests/MessageStoreContractTests.swift (a test target cannot import another),
/// plus what the SQL stores promise beyond them. Each takes a fresh fixture; the suites run them per database.
/// `reopen` closes the store and opens a new instance on the same data: a restart of Stork.
enum SQLStoreContract {
    static func reopen(_ store: inout any MessageStore, _ fixture: SQLStoreFixture) async throws -> MessageStoreRecovery
    {
        try await store.close()
        store = try fixture.make()
        return try await store.open()
    }

    static func appendAndRead(_ fixture: SQLStoreFixture) async throws {
        let store = try fixture.make()
        #expect(try await store.open() == MessageStoreRecovery())
        let headers = Array("NATS/1.0\r\nA: b\r\n\r\n".utf8)
        let all =
            storedMessages(1...40) + [storedMessage(41, subject: "with.headers", headers: headers)]
            + [storedMessage(42, subject: "empty.payload", payloadSize: 0)]
        for batch in stride(from: 0, to: all.count, by: 7) {
            try await store.append(Array(all[batch..<min(batch + 7, all.count)]))
        }
        #expect(try await store.message(1) == all[0])
        #expect(try await store.message(41) == all[40])
        #expect(try await store.message(42) == all[41])
        #expect(try await store.message(17) == all[16])
        #expect(try await store.message(0) == nil)
        #expect(try await store.message(43) == nil)
        #expect(try await store.message(.max) == nil)
        #expect(try await store.messages(from: 3, limit: 4) == Array(all[2..<6]))
        #expect(try await store.messages(from: 0, limit: 1000) == all)
        #expect(try await store.messages(from: 39, limit: 10) == Array(all[38...]))
        #expect(try await store.messages(from: 43, limit: 10).isEmpty)
        #expect(try await store.messages(from: .max, limit: 10).isEmpty)
        #expect(try await store.messages(from: 1, limit: 0).isEmpty)
        try await store.append([])
        #expect(try await store.messages(from: 0, limit: 1000).count == 42)
        try await store.close()
    }

    static func removeAndSkip(_ fixture: SQLStoreFixture) async throws {
        var store = try fixture.make()
        _ = try await store.open()
        let all = storedMessages(1...20)
        try await store.append(all)
        try await store.remove([2, 4, 5, 20])
        try await store.remove([4, 100, 0, .max])  // already removed or never stored: ignored
        try await store.remove([])
        #expect(try await store.message(4) == nil)
        #expect(try await store.message(3) == all[2])
        #expect(try await store.messages(from: 1, limit: 3) == [all[0], all[2], all[5]])
        #expect(try await store.messages(from: 4, limit: 2) == [all[5], all[6]])
        #expect(try await store.messages(from: 19, limit: 5) == [all[18]])
        try await store.remove([1])
        #expect(try await store.messages(from: 0, limit: 1) == [all[2]])
        let recovery = try await Self.reopen(&store, fixture)
        #expect(recovery.messages.map(\.sequence) == [3] + Array(6...19))
        #expect(recovery.lastSequence == 20)
        try await store.close()
    }

    static func purgeKeepsLastSequence(_ fixture: SQLStoreFixture) async throws {
        var store = try fixture.make()
        _ = try await store.open()
        let all = storedMessages(1...30)
        try await store.append(all)
        try await store.purge(through: 12)
        #expect(try await store.message(12) == nil)
        #expect(try await store.message(13) == all[12])
        #expect(try await store.messages(from: 0, limit: 2) == [all[12], all[13]])
        try await store.purge(through: 5)  // nothing left there
        #expect(try await store.messages(from: 0, limit: 100).count == 18)
        try await store.purge(through: .max)
        #expect(try await store.messages(from: 0, limit: 100).isEmpty)
        var recovery = try await Self.reopen(&store, fixture)
        #expect(recovery.messages.isEmpty)
        #expect(recovery.lastSequence == 30, "the highest sequence survives a purge of everything and a restart")
        let purged = store
        await #expect(throws: (any Error).self) { try await purged.append([storedMessage(30)]) }
        try await store.append([storedMessage(31)])
        #expect(try await store.message(31) == storedMessage(31))
        recovery = try await Self.reopen(&store, fixture)
        #expect(recovery.messages == [storedMessage(31).indexEntry])
        #expect(recovery.lastSequence == 31)
        try await store.close()
    }

    static func metadata(_ fixture: SQLStoreFixture) async throws {
        var store = try fixture.make()
        _ = try await store.open()
        try await store.saveMetadata(key: "stream", value: [1, 2, 3])
        try await store.saveMetadata(key: "consumer/a", value: [4])
        try await store.saveMetadata(key: "consumer/b", value: [])
        try await store.saveMetadata(key: "consumer/a", value: [5, 6])
        try await store.saveMetadata(key: "consumer/c", value: [])
        try await store.saveMetadata(key: "consumer/b", value: nil)
        try await store.saveMetadata(key: "never-saved", value: nil)
        var recovery = try await Self.reopen(&store, fixture)
        #expect(recovery.metadata == ["stream": [1, 2, 3], "consumer/a": [5, 6], "consumer/c": []])
        try await store.saveMetadata(key: "stream", value: nil)
        recovery = try await Self.reopen(&store, fixture)
        #expect(recovery.metadata == ["consumer/a": [5, 6], "consumer/c": []])
        try await store.close()
    }

    /// A batch that breaks the rule is refused whole: nothing of it is stored, before or after a restart, and the
    /// store goes on from where it was.
    static func nonGrowingBatchRefusedWhole(_ fixture: SQLStoreFixture) async throws {
        var store = try fixture.make()
        _ = try await store.open()
        try await store.append(storedMessages(1...3))
        let refused: [[StoredMessage]] = [
            [storedMessage(3)],
            [storedMessage(1)],
            [storedMessage(4), storedMessage(5), storedMessage(5)],
            [storedMessage(6), storedMessage(5)],
            [
                storedMessage(4),
                StoredMessage(sequence: UInt64(Int64.max) + 1, subject: "beyond", payload: [1], timestamp: 0),
            ],
        ]
        for batch in refused {
            let current = store
            await #expect(throws: (any Error).self, "\(batch.map(\.sequence))") { try await current.append(batch) }
        }
        #expect(try await store.messages(from: 0, limit: 10) == storedMessages(1...3))
        var recovery = try await Self.reopen(&store, fixture)
        #expect(recovery.messages.map(\.sequence) == [1, 2, 3])
        #expect(recovery.lastSequence == 3)
        try await store.append([storedMessage(4), storedMessage(7)])  // gaps are allowed
        recovery = try await Self.reopen(&store, fixture)
        #expect(recovery.messages.map(\.sequence) == [1, 2, 3, 4, 7])
        #expect(recovery.lastSequence == 7)
        try await store.close()
    }

    /// A batch larger than one SQLite INSERT takes (1,000 rows) is still one transaction: all of it or none.
    static func largeBatches(_ fixture: SQLStoreFixture) async throws {
        var store = try fixture.make()
        _ = try await store.open()
        let large = storedMessages(1...2500, payloadSize: 100)
        try await store.append(large)
        let broken = storedMessages(2501...4999) + [storedMessage(10)]
        let current = store
        await #expect(throws: (any Error).self) { try await current.append(broken) }
        #expect(try await store.messages(from: 2490, limit: 100) == Array(large[2489...]))
        let recovery = try await Self.reopen(&store, fixture)
        #expect(recovery.messages == large.map(\.indexEntry))
        #expect(recovery.lastSequence == 2500)
        try await store.close()
    }

    /// A second store on the same stream (another process, or a stale instance) cannot append what the first already
    /// holds: the database checks the highest sequence, not only the store's memory.
    static func staleWriterRefused(_ fixture: SQLStoreFixture) async throws {
        let first = try fixture.make()
        let second = try fixture.make()
        _ = try await first.open()
        _ = try await second.open()
        try await first.append(storedMessages(1...5))
        await #expect(throws: (any Error).self) { try await second.append(storedMessages(3...8)) }
        #expect(try await first.messages(from: 0, limit: 100) == storedMessages(1...5))
        try await second.append(storedMessages(6...8))
        #expect(try await first.messages(from: 0, limit: 100) == storedMessages(1...8))
        try await first.close()
        try await second.close()
    }

    /// After the same operations, a reopened store recovers exactly what `MemoryMessageStore` holds, twice in a row.
    static func reopenReturnsTheSameRecovery(_ fixture: SQLStoreFixture) async throws {
        let reference = MemoryMessageStore()
        _ = try await reference.open()
        var store = try fixture.make()
        _ = try await store.open()
        for target in [store, reference] as [any MessageStore] {
            for batch in 0..<20 {
                let first = UInt64(batch * 10 + 1)
                try await target.append(storedMessages(first...(first + 9), payloadSize: batch * 3))
            }
            try await target.remove([3, 50, 51, 52, 120, 199])
            try await target.purge(through: 25)
            try await target.saveMetadata(key: "stream", value: Array("config".utf8))
            try await target.saveMetadata(key: "consumer/x", value: [0, 1, 2])
        }
        let expected = try await reference.open()
        #expect(try await Self.reopen(&store, fixture) == expected)
        #expect(try await Self.reopen(&store, fixture) == expected)
        #expect(try await store.messages(from: 0, limit: 1000) == reference.messages(from: 0, limit: 1000))
        try await store.close()
    }

    /// Two streams in one database: each sees only its own messages, highest sequence and metadata, through
    /// removes, purges, restarts and the other's `destroy()`.
    static func streamsAreIsolated(_ fixture: SQLStoreFixture) async throws {
        let otherName = fixture.otherStream("b")
        var store = try fixture.make()
        var other = try fixture.make(stream: otherName)
        _ = try await store.open()
        #expect(try await other.open() == MessageStoreRecovery())
        try await store.append(storedMessages(1...10))
        try await other.append([storedMessage(1, subject: "other"), storedMessage(2, subject: "other")])
        try await store.saveMetadata(key: "stream", value: [1])
        try await other.saveMetadata(key: "stream", value: [2])
        try await store.remove([2])
        try await other.purge(through: 1)
        #expect(try await store.message(1) == storedMessage(1))
        #expect(try await other.message(1) == nil)
        #expect(try await other.messages(from: 0, limit: 100) == [storedMessage(2, subject: "other")])
        var recovery = try await Self.reopen(&store, fixture)
        #expect(recovery.messages.map(\.sequence) == [1] + Array(3...10))
        #expect(recovery.lastSequence == 10)
        #expect(recovery.metadata == ["stream": [1]])
        try await other.close()
        other = try fixture.make(stream: otherName)
        var otherRecovery = try await other.open()
        #expect(otherRecovery.messages.map(\.sequence) == [2])
        #expect(otherRecovery.lastSequence == 2)
        #expect(otherRecovery.metadata == ["stream": [2]])
        try await other.destroy()
        recovery = try await Self.reopen(&store, fixture)
        #expect(recovery.messages.count == 9, "destroying one stream leaves the other alone")
        other = try fixture.make(stream: otherName)
        otherRecovery = try await other.open()
        #expect(otherRecovery == MessageStoreRecovery(), "a destroyed stream starts again from nothing")
        try await other.destroy()
        try await store.close()
    }

    /// Two clusters on one database, each with a stream of the same name: neither sees the other's messages,
    /// sequences or metadata, and destroying one leaves the other.
    static func clustersAreIsolated(_ fixture: SQLStoreFixture) async throws {
        let (east, west) = ("east-\(fixture.stream)", "west-\(fixture.stream)")
        let store = try fixture.make(cluster: east)
        var other = try fixture.make(cluster: west)
        _ = try await store.open()
        #expect(try await other.open() == MessageStoreRecovery())
        try await store.append(storedMessages(1...5))
        try await other.append([storedMessage(1, subject: "west")])
        try await store.saveMetadata(key: "consumer.c", value: [1])
        #expect(try await other.message(1) == storedMessage(1, subject: "west"))
        #expect(try await store.message(1) == storedMessage(1))
        try await other.close()
        other = try fixture.make(cluster: west)
        let recovery = try await other.open()
        #expect(recovery.messages.map(\.sequence) == [1] && recovery.lastSequence == 1 && recovery.metadata.isEmpty)
        try await other.destroy()
        #expect(try await store.messages(from: 0, limit: 10) == storedMessages(1...5), "the other cluster's stream stays")
        try await store.destroy()
    }

    /// `destroy()` deletes the stream's messages, highest sequence and metadata; a store opened on the name afterwards
    /// starts empty from sequence 1.
    static func destroyDeletesTheStream(_ fixture: SQLStoreFixture) async throws {
        let store = try fixture.make()
        _ = try await store.open()
        try await store.append(storedMessages(1...5))
        try await store.saveMetadata(key: "stream", value: [9])
        try await store.destroy()
        await #expect(throws: (any Error).self) { try await store.append([storedMessage(6)]) }
        let again = try fixture.make()
        #expect(try await again.open() == MessageStoreRecovery())
        try await again.append([storedMessage(1)])
        #expect(try await again.messages(from: 0, limit: 10) == [storedMessage(1)])
        try await again.close()
    }
}
