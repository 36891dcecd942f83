import Foundation
import SQLiteNIO
import StorkSQLStreamStores
import StorkStreaming
import StorkTestKit
import Testing

@Suite("SQLite message store", .timeLimit(.minutes(2)))
struct SQLiteMessageStoreTests {
    // MARK: The contract

    @Test("appended messages read back by sequence and in ranges")
    func appendAndRead() async throws { try await withFixture(.sqlite, SQLStoreContract.appendAndRead) }

    @Test("removed messages are gone, ranges skip them, a reopen recovers the rest")
    func removeAndSkip() async throws { try await withFixture(.sqlite, SQLStoreContract.removeAndSkip) }

    @Test("purge keeps the highest sequence, across a reopen")
    func purgeKeepsLastSequence() async throws {
        try await withFixture(.sqlite, SQLStoreContract.purgeKeepsLastSequence)
    }

    @Test("metadata records are saved, replaced and deleted, across a reopen")
    func metadata() async throws { try await withFixture(.sqlite, SQLStoreContract.metadata) }

    @Test("a batch whose sequences do not grow is refused whole")
    func nonGrowingBatchRefusedWhole() async throws {
        try await withFixture(.sqlite, SQLStoreContract.nonGrowingBatchRefusedWhole)
    }

    @Test("a batch of 2,500 messages is stored whole, and refused whole")
    func largeBatches() async throws { try await withFixture(.sqlite, SQLStoreContract.largeBatches) }

    @Test("a second writer on the same stream cannot append sequences the stream holds")
    func staleWriterRefused() async throws { try await withFixture(.sqlite, SQLStoreContract.staleWriterRefused) }

    @Test("a reopened store recovers exactly what the memory store holds")
    func reopenReturnsTheSameRecovery() async throws {
        try await withFixture(.sqlite, SQLStoreContract.reopenReturnsTheSameRecovery)
    }

    @Test("two streams in one file do not see each other")
    func streamsAreIsolated() async throws { try await withFixture(.sqlite, SQLStoreContract.streamsAreIsolated) }

    @Test("two clusters on one database never meet")
    func clustersAreIsolated() async throws { try await withFixture(.sqlite, SQLStoreContract.clustersAreIsolated) }

    @Test("destroy deletes the stream's rows")
    func destroyDeletesTheStream() async throws {
        try await withFixture(.sqlite, SQLStoreContract.destroyDeletesTheStream)
    }

    // MARK: SQLite only

    /// What a killed process leaves is what is in its files: the database and its write-ahead log, copied while the
    /// store is still open (never closed, never checkpointed), hold every batch whose `append` returned.
    @Test("an appended batch is in the files when append returns (what kill -9 leaves)")
    func appendIsInTheFilesWhenItReturns() async throws {
        try await withFixture(.sqlite) { fixture in
            let store = try fixture.make()
            _ = try await store.open()
            try await store.append(storedMessages(1...100))
            try await store.append(storedMessages(101...150))
            try await store.saveMetadata(key: "consumer/a", value: [7])
            let copy = fixture.directory.appendingPathComponent("copy")
            try FileManager.default.createDirectory(at: copy, withIntermediateDirectories: true)
            for suffix in ["", "-wal"] {
                try FileManager.default.copyItem(
                    atPath: fixture.databasePath + suffix,
                    toPath: copy.appendingPathComponent("streams.db" + suffix).path
                )
            }
            let survivor = SQLiteMessageStore(
                path: copy.appendingPathComponent("streams.db").path,
                stream: fixture.stream
            )
            let recovery = try await survivor.open()
            #expect(recovery.messages.map(\.sequence) == Array(1...150))
            #expect(recovery.lastSequence == 150)
            #expect(recovery.metadata == ["consumer/a": [7]])
            #expect(try await survivor.messages(from: 140, limit: 100) == storedMessages(140...150))
            try await survivor.close()
            try await store.close()
        }
    }

    @Test("streams appending at the same time in one file share its connection and keep their own messages")
    func concurrentStreamsInOneFile() async throws {
        let names = (0..<6).map { "s\($0)" }
        try await withFixture(.sqlite) { fixture in
            try await withThrowingTaskGroup(of: Void.self) { group in
                for name in names {
                    group.addTask {
                        let store = try fixture.make(stream: fixture.otherStream(name))
                        _ = try await store.open()
                        for batch in 0..<20 {
                            let first = UInt64(batch * 10 + 1)
                            try await store.append(storedMessages(first...(first + 9)))
                            if batch % 5 == 4 { try await store.remove([first]) }
                        }
                        try await store.close()
                    }
                }
                try await group.waitForAll()
            }
            for name in names {
                let store = try fixture.make(stream: fixture.otherStream(name))
                let recovery = try await store.open()
                #expect(recovery.messages.count == 196, "\(name)")
                #expect(recovery.lastSequence == 200, "\(name)")
                try await store.close()
            }
        }
    }

    @Test("closing one store leaves the others on the same file working")
    func closingOneStoreLeavesTheOthers() async throws {
        try await withFixture(.sqlite) { fixture in
            let first = try fixture.make()
            let second = try fixture.make(stream: fixture.otherStream("b"))
            _ = try await first.open()
            _ = try await second.open()
            try await first.append(storedMessages(1...3))
            try await first.close()
            await #expect(throws: (any Error).self) { try await first.append([storedMessage(4)]) }
            try await second.append(storedMessages(1...3))
            #expect(try await second.messages(from: 0, limit: 10) == storedMessages(1...3))
            let reopened = try fixture.make()
            #expect(try await reopened.open().lastSequence == 3)
            try await reopened.close()
            try await second.close()
        }
    }

    @Test("a version-1 file: its streams belong to the cluster of the node that migrates it, not to another")
    func versionOneFileMigrates() async throws {
        try await withFixture(.sqlite) { fixture in
            try FileManager.default.createDirectory(at: fixture.directory, withIntermediateDirectories: true)
            let connection = try await SQLiteConnection.open(storage: .file(path: fixture.databasePath))
            _ = try await connection.query("CREATE TABLE stork_stream_schema (version INTEGER NOT NULL)")
            _ = try await connection.query("INSERT INTO stork_stream_schema (version) VALUES (1)")
            _ = try await connection.query(
                "CREATE TABLE stork_streams (name TEXT NOT NULL PRIMARY KEY, last_sequence INTEGER NOT NULL) WITHOUT ROWID"
            )
            _ = try await connection.query(
                """
                CREATE TABLE stork_messages (stream TEXT NOT NULL, sequence INTEGER NOT NULL, subject TEXT NOT NULL,
                    headers BLOB NOT NULL, payload BLOB NOT NULL, timestamp INTEGER NOT NULL, PRIMARY KEY (stream, sequence))
                """
            )
            _ = try await connection.query(
                """
                CREATE TABLE stork_stream_metadata (stream TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
                    PRIMARY KEY (stream, key)) WITHOUT ROWID
                """
            )
            _ = try await connection.query("INSERT INTO stork_streams VALUES ('old', 2)")
            _ = try await connection.query(
                "INSERT INTO stork_messages VALUES ('old', 1, 'a', x'', x'61', 1), ('old', 2, 'a', x'', x'62', 2)"
            )
            _ = try await connection.query("INSERT INTO stork_stream_metadata VALUES ('old', 'k', x'07')")
            try await connection.close()

            let mine = try fixture.make(stream: "old", cluster: "legacy")
            let recovery = try await mine.open()
            #expect(recovery.messages.map(\.sequence) == [1, 2] && recovery.lastSequence == 2)
            #expect(recovery.metadata == ["k": [7]])
            #expect(try await mine.message(2)?.payload == Array("b".utf8))
            let theirs = try fixture.make(stream: "old", cluster: "another")
            #expect(try await theirs.open() == MessageStoreRecovery(), "another cluster's stream of the same name is new")
            try await theirs.close()
            try await mine.close()
        }
    }

    @Test("a file whose stream schema is newer than this Stork knows is refused with a clear error")
    func newerSchemaIsRefused() async throws {
        try await withFixture(.sqlite) { fixture in
            let store = try fixture.make()
            _ = try await store.open()
            try await store.close()
            // Another Stork, newer, moved the schema on.
            let connection = try await SQLiteConnection.open(storage: .file(path: fixture.databasePath))
            _ = try await connection.query("UPDATE stork_stream_schema SET version = 99")
            try await connection.close()
            let newer = try fixture.make()
            let error = await #expect(throws: (any Error).self) { _ = try await newer.open() }
            #expect("\(error.map { String(describing: $0) } ?? "")".contains("version 99"))
            try? await newer.close()
        }
    }
}
