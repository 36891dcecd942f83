import Foundation
import Logging
import PostgresNIO
import StorkCore
import StorkSQLStreamStores
import StorkStreaming
import StorkTestKit
import Testing

/// The PostgreSQL cases run against the server scripts/test starts on loopback (`STORK_TEST_POSTGRES_URL`); without
/// it they are skipped with that reason. Each test uses stream names of its own, so runs never collide. Serialized:
/// the restart test must not run alongside the others.
@Suite(
    "PostgreSQL message store",
    .enabled(
        if: SQLTestEnvironment.postgresURL != nil,
        "STORK_TEST_POSTGRES_URL is not set: PostgreSQL message store tests skipped (scripts/test sets it)"
    ),
    .serialized,
    .timeLimit(.minutes(2))
)
struct PostgresMessageStoreTests {
    // MARK: The contract

    @Test("appended messages read back by sequence and in ranges")
    func appendAndRead() async throws { try await withFixture(.postgres, SQLStoreContract.appendAndRead) }

    @Test("removed messages are gone, ranges skip them, a reopen recovers the rest")
    func removeAndSkip() async throws { try await withFixture(.postgres, SQLStoreContract.removeAndSkip) }

    @Test("purge keeps the highest sequence, across a reopen")
    func purgeKeepsLastSequence() async throws {
        try await withFixture(.postgres, SQLStoreContract.purgeKeepsLastSequence)
    }

    @Test("metadata records are saved, replaced and deleted, across a reopen")
    func metadata() async throws { try await withFixture(.postgres, SQLStoreContract.metadata) }

    @Test("a batch whose sequences do not grow is refused whole")
    func nonGrowingBatchRefusedWhole() async throws {
        try await withFixture(.postgres, SQLStoreContract.nonGrowingBatchRefusedWhole)
    }

    @Test("a batch of 2,500 messages is stored whole, and refused whole")
    func largeBatches() async throws { try await withFixture(.postgres, SQLStoreContract.largeBatches) }

    @Test("a second writer on the same stream cannot append sequences the stream holds")
    func staleWriterRefused() async throws { try await withFixture(.postgres, SQLStoreContract.staleWriterRefused) }

    @Test("a reopened store recovers exactly what the memory store holds")
    func reopenReturnsTheSameRecovery() async throws {
        try await withFixture(.postgres, SQLStoreContract.reopenReturnsTheSameRecovery)
    }

    @Test("two streams in one database do not see each other")
    func streamsAreIsolated() async throws {
        try await withFixture(.postgres, otherStreams: ["b"], SQLStoreContract.streamsAreIsolated)
    }

    @Test("two clusters on one database never meet")
    func clustersAreIsolated() async throws { try await withFixture(.postgres, SQLStoreContract.clustersAreIsolated) }

    @Test("destroy deletes the stream's rows")
    func destroyDeletesTheStream() async throws {
        try await withFixture(.postgres, SQLStoreContract.destroyDeletesTheStream)
    }

    // MARK: PostgreSQL only

    @Test("on an empty database, stores opening together create the schema once; a newer schema is refused")
    func migrationOnAnEmptySchema() async throws {
        // A PostgreSQL schema of its own stands for an empty database: the stores see only it (search_path).
        let url = try #require(SQLTestEnvironment.postgresURL)
        let schema = "stork_test_\(UUID().uuidString.prefix(8).lowercased())"
        var configuration = try PostgresMessageStore(url: url, stream: "admin").configuration
        let logger = Logger(label: "stork.test.postgres")
        let admin = try await PostgresConnection.connect(configuration: configuration, id: 1, logger: logger)
        try await admin.query("CREATE SCHEMA \(unescaped: schema)", logger: logger)
        configuration.options.additionalStartupParameters = [("search_path", schema)]
        let isolated = configuration
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<4 {
                    group.addTask {
                        let store = PostgresMessageStore(
                            configuration: isolated,
                            description: "test schema \(schema)",
                            stream: "s\(index)"
                        )
                        _ = try await store.open()
                        try await store.append(storedMessages(1...10))
                        try await store.close()
                    }
                }
                try await group.waitForAll()
            }
            var versions: [Int32] = []
            for try await version in try await admin.query(
                "SELECT version FROM \(unescaped: schema).stork_stream_schema_migrations",
                logger: logger
            ).decode(Int32.self) {
                versions.append(version)
            }
            #expect(versions == [1, 2, 3], "each migration, applied once")
            // Another Stork, newer, moved the schema on.
            try await admin.query(
                "INSERT INTO \(unescaped: schema).stork_stream_schema_migrations (version) VALUES (99)",
                logger: logger
            )
            let newer = PostgresMessageStore(configuration: configuration, description: "test", stream: "s0")
            let error = await #expect(throws: StorkError.self) { _ = try await newer.open() }
            #expect(error?.message.contains("version 99") == true)
            try await newer.close()
        } catch {
            Issue.record(error)
        }
        try await admin.query("DROP SCHEMA \(unescaped: schema) CASCADE", logger: logger)
        try await admin.close()
    }

    @Test("a version-1 database: its streams belong to the cluster of the node that migrates it, not to another")
    func versionOneDatabaseMigrates() async throws {
        let url = try #require(SQLTestEnvironment.postgresURL)
        let schema = "stork_test_\(UUID().uuidString.prefix(8).lowercased())"
        var configuration = try PostgresMessageStore(url: url, stream: "admin").configuration
        let logger = Logger(label: "stork.test.postgres")
        let admin = try await PostgresConnection.connect(configuration: configuration, id: 1, logger: logger)
        try await admin.query("CREATE SCHEMA \(unescaped: schema)", logger: logger)
        configuration.options.additionalStartupParameters = [("search_path", schema)]
        do {
            try await admin.query(
                """
                CREATE TABLE \(unescaped: schema).stork_stream_schema_migrations (
                    version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())
                """,
                logger: logger
            )
            try await admin.query(
                "INSERT INTO \(unescaped: schema).stork_stream_schema_migrations (version) VALUES (1)",
                logger: logger
            )
            // Version 1's tables, as it created them.
            try await admin.query(
                "CREATE TABLE \(unescaped: schema).stork_streams (name text PRIMARY KEY, last_sequence bigint NOT NULL)",
                logger: logger
            )
            try await admin.query(
                """
                CREATE TABLE \(unescaped: schema).stork_messages (stream text NOT NULL, sequence bigint NOT NULL,
                    subject text NOT NULL, headers bytea NOT NULL, payload bytea NOT NULL, timestamp bigint NOT NULL,
                    PRIMARY KEY (stream, sequence))
                """,
                logger: logger
            )
            try await admin.query(
                """
                CREATE TABLE \(unescaped: schema).stork_stream_metadata (stream text NOT NULL, key text NOT NULL,
                    value bytea NOT NULL, PRIMARY KEY (stream, key))
                """,
                logger: logger
            )
            try await admin.query("INSERT INTO \(unescaped: schema).stork_streams VALUES ('old', 2)", logger: logger)
            try await admin.query(
                """
                INSERT INTO \(unescaped: schema).stork_messages VALUES
                    ('old', 1, 'a', ''::bytea, 'a'::bytea, 1), ('old', 2, 'a', ''::bytea, 'b'::bytea, 2)
                """,
                logger: logger
            )
            try await admin.query(
                "INSERT INTO \(unescaped: schema).stork_stream_metadata VALUES ('old', 'k', '\\x07'::bytea)",
                logger: logger
            )
            let mine = PostgresMessageStore(configuration: configuration, description: "test", stream: "old", cluster: "legacy")
            let recovery = try await mine.open()
            #expect(recovery.messages.map(\.sequence) == [1, 2] && recovery.lastSequence == 2)
            #expect(recovery.metadata == ["k": [7]])
            #expect(try await mine.message(2)?.payload == Array("b".utf8))
            try await mine.append([storedMessage(3)])
            let theirs = PostgresMessageStore(configuration: configuration, description: "test", stream: "old", cluster: "another")
            #expect(try await theirs.open() == MessageStoreRecovery(), "another cluster's stream of the same name is new")
            try await theirs.append([storedMessage(1, subject: "theirs")])
            #expect(try await mine.message(1)?.subject == "a")
            try await theirs.close()
            try await mine.close()
        } catch {
            Issue.record(error)
        }
        try await admin.query("DROP SCHEMA \(unescaped: schema) CASCADE", logger: logger)
        try await admin.close()
    }

    @Test("a fencing store that opens the stream takes it over: every write of the earlier one is refused")
    func fencingTakeover() async throws {
        let url = try #require(SQLTestEnvironment.postgresURL)
        let stream = "test-\(UUID().uuidString.prefix(8).lowercased())"
        let first = try PostgresMessageStore(url: url, stream: stream, fencing: true)
        let second = try PostgresMessageStore(url: url, stream: stream, fencing: true)
        do {
            _ = try await first.open()
            try await first.append(storedMessages(1...5))
            try await first.saveMetadata(key: "consumer.c", value: [1])
            // The new owner opens: it sees everything the first wrote, and fences it off.
            let recovery = try await second.open()
            #expect(recovery.messages.map(\.sequence) == Array(1...5) && recovery.lastSequence == 5)
            #expect(recovery.metadata == ["consumer.c": [1]])
            for (operation, write) in [
                ("append", { @Sendable in try await first.append(storedMessages(6...6)) }),
                ("remove", { @Sendable in try await first.remove([1]) }),
                ("purge", { @Sendable in try await first.purge(through: 2) }),
                ("metadata", { @Sendable in try await first.saveMetadata(key: "consumer.c", value: [9]) }),
                ("metadata delete", { @Sendable in try await first.saveMetadata(key: "consumer.c", value: nil) }),
            ] as [(String, @Sendable () async throws -> Void)] {
                let error = await #expect(throws: StorkError.self, "\(operation)") { try await write() }
                #expect(error?.code == .fenced, "\(operation): \(String(describing: error))")
            }
            // Nothing of the earlier owner's late writes landed; the new owner goes on.
            try await second.append(storedMessages(6...7))
            #expect(try await second.messages(from: 0, limit: 10) == storedMessages(1...7))
            let reopened = try PostgresMessageStore(url: url, stream: stream)
            #expect(try await reopened.open().metadata == ["consumer.c": [1]])
            try await reopened.close()
            let stale = await #expect(throws: StorkError.self) { try await first.destroy() }
            #expect(stale?.code == .fenced)
            try await second.destroy()
        } catch {
            Issue.record(error)
            try? await second.destroy()
        }
    }

    @Test("connections the server terminates between and during operations: the store reconnects and loses nothing")
    func terminatedConnections() async throws {
        let url = try #require(SQLTestEnvironment.postgresURL)
        let name = "stork-test-\(UUID().uuidString.prefix(8).lowercased())"
        let logger = Logger(label: "stork.test.postgres")
        var configuration = try PostgresMessageStore(url: url, stream: "admin").configuration
        let admin = try await PostgresConnection.connect(configuration: configuration, id: 1, logger: logger)
        configuration.options.additionalStartupParameters = [("application_name", name)]
        let stream = "test-\(UUID().uuidString.prefix(8).lowercased())"
        let store = PostgresMessageStore(configuration: configuration, description: "test", stream: stream)
        do {
            _ = try await store.open()
            for round in 0..<20 {
                let first = UInt64(round * 50 + 1)
                if round % 2 == 0 {
                    // Between operations: the next one finds its connection gone (or about to go).
                    try await admin.query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = \(name)",
                        logger: logger
                    )
                    try await store.append(storedMessages(first...(first + 49)))
                } else {
                    // During an append: it is settled on a new connection, committed or not.
                    async let terminated = admin.query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = \(name)",
                        logger: logger
                    )
                    try await store.append(storedMessages(first...(first + 49), payloadSize: 4096))
                    _ = try await terminated
                }
                #expect(try await store.message(first) != nil, "round \(round)")
            }
            try await store.close()
            let reopened = try PostgresMessageStore(url: url, stream: stream)
            let recovery = try await reopened.open()
            #expect(recovery.messages.map(\.sequence) == Array(1...1000))
            #expect(recovery.lastSequence == 1000)
            try await reopened.destroy()
        } catch {
            Issue.record(error)
            try? await store.destroy()
        }
        try await admin.close()
    }

    @Test(
        "a PostgreSQL restart: the store reconnects, appends and reads continue, nothing committed is lost",
        .enabled(if: SQLTestEnvironment.postgresRestart != nil, "STORK_TEST_POSTGRES_RESTART is not set")
    )
    func restart() async throws {
        try await withFixture(.postgres) { fixture in
            let store = try fixture.make()
            _ = try await store.open()
            try await store.append(storedMessages(1...100))
            try await store.saveMetadata(key: "stream", value: [1])
            try Self.restartPostgres()
            // The first append after the restart reconnects (its old connection is gone) and goes through; should
            // the server still be starting, later tries do.
            var attempts = 0
            let appended = await eventually {
                attempts += 1
                return (try? await store.append(storedMessages(101...200))) != nil
            }
            #expect(appended)
            #expect(attempts == 1, "the append right after the restart reconnected by itself")
            #expect(try await store.messages(from: 95, limit: 10) == storedMessages(95...104))
            // A restart while a store is idle, then a read: reads retry on a new connection too.
            try Self.restartPostgres()
            #expect(try await store.message(150) == storedMessage(150))
            try await store.purge(through: 50)
            try await store.close()
            let reopened = try fixture.make()
            let recovery = try await reopened.open()
            #expect(recovery.messages.map(\.sequence) == Array(51...200))
            #expect(recovery.lastSequence == 200)
            #expect(recovery.metadata == ["stream": [1]])
            try await reopened.close()
        }
    }

    static func restartPostgres() throws {
        let command = SQLTestEnvironment.postgresRestart ?? "false"
        let status = try runWithDefaultSignals(command)
        guard status == 0 else { throw StorkError(.unavailable, "'\(command)' exited with \(status)") }
    }
}

/// Needs no server.
@Suite("PostgreSQL message store: URLs and unreachable servers", .timeLimit(.minutes(1)))
struct PostgresMessageStoreConfigurationTests {
    @Test("an unreachable server is a clear error (store-failed), never a hang, and the password stays out of it")
    func unreachable() async throws {
        let store = try PostgresMessageStore(url: "postgres://stork:secret@127.0.0.1:9/stork_test", stream: "none")
        do {
            _ = try await store.open()
            Issue.record("open succeeded without a server")
        } catch let error as StorkError {
            #expect(error.code == .storeFailed)
            #expect(!error.description.contains("secret"))
        }
        try await store.close()
    }

    @Test("bad URLs are refused with a message that names the problem")
    func badURLs() {
        #expect(throws: StorkError.self) { try PostgresMessageStore(url: "mysql://x@y/z", stream: "s") }
        #expect(throws: StorkError.self) {
            try PostgresMessageStore(url: "postgres://u:p@127.0.0.1/db?sslmode=maybe", stream: "s")
        }
    }
}
