import Foundation
import StorkCore
import StorkSQLStreamStores
import StorkStreaming
import Testing

// MARK: - The environment

/// What scripts/test exports: PostgreSQL on loopback and the command that restarts it.
enum SQLTestEnvironment {
    static var postgresURL: String? { ProcessInfo.processInfo.environment["STORK_TEST_POSTGRES_URL"] }
    static var postgresRestart: String? { ProcessInfo.processInfo.environment["STORK_TEST_POSTGRES_RESTART"] }
}

// MARK: - Stores under test

enum SQLStoreKind: String, Sendable, CustomTestStringConvertible {
    case sqlite, postgres

    var testDescription: String { self.rawValue }
}

/// Fresh storage for one test: a temporary SQLite file, or a stream name of its own in the PostgreSQL test database
/// (so that runs and tests never see each other's rows). `make` gives a store on it; a new one after `close()` stands
/// for a restart of Stork.
struct SQLStoreFixture: Sendable {
    let kind: SQLStoreKind
    let stream: String
    let directory: URL

    init(_ kind: SQLStoreKind) {
        self.kind = kind
        let unique = UUID().uuidString.prefix(8).lowercased()
        self.stream = "test-\(unique)"
        self.directory = FileManager.default.temporaryDirectory.appendingPathComponent("stork-sql-store-\(unique)")
    }

    var databasePath: String { self.directory.appendingPathComponent("streams.db").path }

    /// A store for `stream` (by default the fixture's own) of `cluster` on the fixture's database.
    func make(stream: String? = nil, cluster: String = "stork") throws -> any MessageStore {
        let stream = stream ?? self.stream
        switch self.kind {
        case .sqlite:
            return SQLiteMessageStore(path: self.databasePath, stream: stream, cluster: cluster)
        case .postgres:
            guard let url = SQLTestEnvironment.postgresURL else {
                throw StorkError(.unavailable, "STORK_TEST_POSTGRES_URL is not set")
            }
            return try PostgresMessageStore(url: url, stream: stream, cluster: cluster)
        }
    }

    /// A name for a second stream in the same database.
    func otherStream(_ suffix: String) -> String { "\(self.stream)-\(suffix)" }

    /// Deletes what the test left: the SQLite file, or the PostgreSQL rows of the given streams.
    func cleanUp(streams: [String] = []) async {
        switch self.kind {
        case .sqlite:
            try? FileManager.default.removeItem(at: self.directory)
        case .postgres:
            for stream in [self.stream] + streams {
                if let store = try? self.make(stream: stream) { try? await store.destroy() }
            }
        }
    }
}

/// Runs `body` with a fresh fixture and cleans up afterwards, whether `body` throws or not.
func withFixture(
    _ kind: SQLStoreKind,
    otherStreams: [String] = [],
    _ body: (SQLStoreFixture) async throws -> Void
) async throws {
    let fixture = SQLStoreFixture(kind)
    do {
        try await body(fixture)
    } catch {
        await fixture.cleanUp(streams: otherStreams.map(fixture.otherStream))
        throw error
    }
    await fixture.cleanUp(streams: otherStreams.map(fixture.otherStream))
}
