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

    /// A store for `stream` (by default the fixture's own) on the fixture's database.
    func make(stream: String? = nil) throws -> any MessageStore {
        let stream = stream ?? self.stream
        switch self.kind {
        case .sqlite:
            return SQLiteMessageStore(path: self.databasePath, stream: stream)
        case .postgres:
            guard let url = SQLTestEnvironment.postgresURL else {
                throw StorkError(.unavailable, "STORK_TEST_POSTGRES_URL is not set")
            }
            return try PostgresMessageStore(url: url, stream: stream)
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

// MARK: - Messages (as in StorkStreamingTests)

/// A message with a payload of `payloadSize` bytes derived from the sequence (so that mix-ups show).
func storedMessage(
    _ sequence: UInt64,
    subject: String = "orders.created",
    headers: [UInt8] = [],
    payloadSize: Int = 16
) -> StoredMessage {
    StoredMessage(
        sequence: sequence,
        subject: subject,
        headers: headers,
        payload: (0..<payloadSize).map { UInt8(truncatingIfNeeded: Int(sequence) &* 31 &+ $0) },
        timestamp: 1_700_000_000_000_000_000 + Int64(sequence)
    )
}

func storedMessages(_ sequences: ClosedRange<UInt64>, payloadSize: Int = 16) -> [StoredMessage] {
    sequences.map { storedMessage($0, payloadSize: payloadSize) }
}

// MARK: - Waiting and processes

/// Waits (bounded) until `condition` holds; returns whether it did.
func eventually(_ timeout: Duration = .seconds(30), _ condition: () async -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if await condition() { return true }
        try? await Task.sleep(for: .milliseconds(50))
    }
    return await condition()
}

/// Runs a shell command with every signal unblocked and at its default action, and no inherited output (as the
/// lease tests do): the test runner's threads block signals, and a PostgreSQL started from a child that inherits that
/// mask would not act on its shutdown signals.
func runWithDefaultSignals(_ command: String) throws -> Int32 {
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var none = sigset_t()
    sigemptyset(&none)
    posix_spawnattr_setsigmask(&attributes, &none)
    var all = sigset_t()
    sigfillset(&all)
    sigdelset(&all, SIGKILL)
    sigdelset(&all, SIGSTOP)
    posix_spawnattr_setsigdefault(&attributes, &all)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
    let arguments: [UnsafeMutablePointer<CChar>?] = ["/bin/sh", "-c", command].map { $0.withCString { strdup($0) } }
    defer { for argument in arguments { free(argument) } }
    var argv = arguments + [nil]
    var pid: pid_t = 0
    let result = posix_spawn(&pid, "/bin/sh", &actions, &attributes, &argv, environ)
    guard result == 0 else { throw StorkError(.unavailable, "cannot start /bin/sh: \(result)") }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0, errno == EINTR {}
    return status
}
