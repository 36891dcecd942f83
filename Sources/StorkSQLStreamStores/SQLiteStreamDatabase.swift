import Foundation
import Logging
import NIOCore
import NIOPosix
import SQLiteNIO
import StorkCore
import Synchronization

// MARK: - SQLiteStreamDatabase

/// One SQLite file as this process uses it for streams: one connection, on a thread of its own, shared by every
/// ``SQLiteMessageStore`` of the process on that file, and a gate that lets one store at a time use it.
///
/// Why shared: a file holds many streams, and SQLite takes one writer at a time. Stores with connections of their
/// own would queue on the file's write lock through SQLite's busy handler, which sleeps (1 ms, 2 ms, 5 ms, …) between
/// tries, and would cost a thread each. Sharing one connection turns that into an in-process FIFO without sleeps.
///
/// Why a gate: a transaction spans several statements (`BEGIN IMMEDIATE`, …, `COMMIT`), each its own hop to the
/// thread; another store's statement issued in between would run inside that transaction.
///
/// Why a thread of its own: SQLite blocks its thread while it waits for another process's write lock (up to the
/// busy timeout); on a shared pool such waits could take every thread (the lease store's deadlock).
final class SQLiteStreamDatabase: Sendable {
    let path: String
    /// The path as the registry knows it.
    private let key: String
    /// The cluster that rows from before schema version 2 are given.
    private let cluster: String
    private let logger: Logger
    private let gate = AsyncGate()
    /// Touched inside `gate`, or once no store uses the database any more.
    private let resources = Mutex(Resources())

    private struct Resources {
        var threadPool: NIOThreadPool?
        var connection: SQLiteConnection?
        var isClosed = false
    }

    private init(path: String, key: String, cluster: String, logger: Logger) {
        self.path = path
        self.key = key
        self.cluster = cluster
        self.logger = logger
    }

    // MARK: Sharing within the process

    private struct Entry {
        let database: SQLiteStreamDatabase
        var users: Int
    }

    /// The databases in use in this process, by canonical path.
    private static let registry = Mutex<[String: Entry]>([:])

    /// The database for `path`, shared with the other stores of this process on the same file. Each call must be
    /// balanced by one `release()` (or `releaseWithoutWaiting()`).
    /// `cluster` is the first user's: rows written before the schema knew clusters are given it when the file is
    /// migrated.
    static func retain(path: String, cluster: String, logger: Logger) -> SQLiteStreamDatabase {
        let key = URL(fileURLWithPath: path).standardizedFileURL.resolvingSymlinksInPath().path
        return Self.registry.withLock { entries in
            if var entry = entries[key] {
                entry.users += 1
                entries[key] = entry
                return entry.database
            }
            let database = SQLiteStreamDatabase(path: path, key: key, cluster: cluster, logger: logger)
            entries[key] = Entry(database: database, users: 1)
            return database
        }
    }

    /// Gives back one store's use; the last one closes the connection and stops the thread (after any operation in
    /// progress). A store that retains the path afterwards gets a new database.
    func release() async {
        guard self.dropUser() else { return }
        await self.gate.withGate {
            let resources = self.takeResources()
            try? await resources.connection?.close()
            try? await resources.threadPool?.shutdownGracefully()
        }
    }

    /// `release()` for a store dropped without `close()`: closes without waiting.
    func releaseWithoutWaiting() {
        guard self.dropUser() else { return }
        let resources = self.takeResources()
        let threadPool = resources.threadPool
        if let connection = resources.connection {
            connection.close().whenComplete { _ in threadPool?.shutdownGracefully { _ in } }
        } else {
            threadPool?.shutdownGracefully { _ in }
        }
    }

    /// True when the caller was the last user (the database has left the registry).
    private func dropUser() -> Bool {
        Self.registry.withLock { entries in
            guard var entry = entries[self.key], entry.database === self else { return false }
            entry.users -= 1
            if entry.users > 0 {
                entries[self.key] = entry
                return false
            }
            entries[self.key] = nil
            return true
        }
    }

    private func takeResources() -> Resources {
        self.resources.withLock { resources in
            defer { resources = Resources(isClosed: true) }
            return resources
        }
    }

    // MARK: Operations

    /// Runs `body` alone on the connection, opening it first (and preparing the schema) when needed.
    func withConnection<T: Sendable>(_ body: (SQLiteConnection) async throws -> T) async throws -> T {
        try await self.gate.withGate {
            let connection = try await self.connection()
            return try await body(connection)
        }
    }

    /// Runs `body` in one `BEGIN IMMEDIATE` … `COMMIT` transaction, rolled back when it throws. When it returns, the
    /// transaction is in the write-ahead log (a killed process does not lose it; see ``SQLiteMessageStore``).
    func transaction<T: Sendable>(_ body: (SQLiteConnection) async throws -> T) async throws -> T {
        try await self.withConnection { connection in
            try await Self.transaction(on: connection, body)
        }
    }

    private static func transaction<T: Sendable>(
        on connection: SQLiteConnection,
        _ body: (SQLiteConnection) async throws -> T
    ) async throws -> T {
        _ = try await connection.query("BEGIN IMMEDIATE")
        do {
            let result = try await body(connection)
            _ = try await connection.query("COMMIT")
            return result
        } catch {
            _ = try? await connection.query("ROLLBACK")
            throw error
        }
    }

    /// The open connection; inside `gate` only.
    private func connection() async throws -> SQLiteConnection {
        let (existing, isClosed) = self.resources.withLock { ($0.connection, $0.isClosed) }
        if let existing { return existing }
        guard !isClosed else { throw StorkError(.storeFailed, "the SQLite database \(self.path) is closed") }
        let threadPool = self.resources.withLock { resources -> NIOThreadPool in
            if let threadPool = resources.threadPool { return threadPool }
            let threadPool = NIOThreadPool(numberOfThreads: 1)
            threadPool.start()
            resources.threadPool = threadPool
            return threadPool
        }
        let directory = URL(fileURLWithPath: self.path).deletingLastPathComponent().path
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let connection = try await SQLiteConnection.open(
            storage: .file(path: self.path),
            threadPool: threadPool,
            logger: self.logger,
            on: MultiThreadedEventLoopGroup.singleton.any()
        )
        do {
            _ = try await connection.query("PRAGMA busy_timeout = 5000")
            _ = try await connection.query("PRAGMA journal_mode = WAL")
            // NORMAL in WAL mode: a commit is written to the log (it survives the process) but the log is synced
            // only at checkpoints, so a crash of the machine may lose the latest commits; never corruption.
            _ = try await connection.query("PRAGMA synchronous = NORMAL")
            try await Self.migrate(connection, path: self.path, cluster: self.cluster)
        } catch {
            try? await connection.close()
            throw error
        }
        self.resources.withLock { $0.connection = connection }
        self.logger.debug("opened SQLite stream database", metadata: ["stork.store.path": "\(self.path)"])
        return connection
    }

    // MARK: Schema

    /// The statements that bring the schema from version `n` to `n + 1`, at index `n`. Append, never edit.
    static let migrations: [[String]] = [
        [
            """
            CREATE TABLE IF NOT EXISTS stork_streams (
                name TEXT NOT NULL PRIMARY KEY,
                last_sequence INTEGER NOT NULL
            ) WITHOUT ROWID
            """,
            """
            CREATE TABLE IF NOT EXISTS stork_messages (
                stream TEXT NOT NULL,
                sequence INTEGER NOT NULL,
                subject TEXT NOT NULL,
                headers BLOB NOT NULL,
                payload BLOB NOT NULL,
                timestamp INTEGER NOT NULL,
                PRIMARY KEY (stream, sequence)
            )
            """,
            """
            CREATE TABLE IF NOT EXISTS stork_stream_metadata (
                stream TEXT NOT NULL,
                key TEXT NOT NULL,
                value BLOB NOT NULL,
                PRIMARY KEY (stream, key)
            ) WITHOUT ROWID
            """,
        ],
        // 2: rows keyed by cluster and stream (`<cluster>` U+001F `<stream>`); rows from before get the migrating
        // node's cluster (?1).
        [
            "UPDATE stork_streams SET name = ?1 || char(31) || name WHERE instr(name, char(31)) = 0",
            "UPDATE stork_messages SET stream = ?1 || char(31) || stream WHERE instr(stream, char(31)) = 0",
            "UPDATE stork_stream_metadata SET stream = ?1 || char(31) || stream WHERE instr(stream, char(31)) = 0",
        ],
    ]

    /// Creates or upgrades the schema in one immediate transaction: the file's write lock serializes processes that
    /// open it together.
    private static func migrate(_ connection: SQLiteConnection, path: String, cluster: String) async throws {
        try await Self.transaction(on: connection) { connection in
            _ = try await connection.query("CREATE TABLE IF NOT EXISTS stork_stream_schema (version INTEGER NOT NULL)")
            let rows = try await connection.query("SELECT MAX(version) AS version FROM stork_stream_schema")
            let version = Int(rows.first?.column("version")?.integer ?? 0)
            guard version <= Self.migrations.count else {
                throw StorkError(
                    .storeFailed,
                    "the stream schema in \(path) is version \(version); this Stork knows up to \(Self.migrations.count)"
                )
            }
            guard version < Self.migrations.count else { return }
            for statements in Self.migrations[version...] {
                for statement in statements {
                    _ = try await connection.query(statement, statement.contains("?1") ? [.text(cluster)] : [])
                }
            }
            _ = try await connection.query("DELETE FROM stork_stream_schema")
            _ = try await connection.query(
                "INSERT INTO stork_stream_schema (version) VALUES (?1)",
                [.integer(Self.migrations.count)]
            )
        }
    }
}

// MARK: - AsyncGate

/// Lets one task at a time through a section that spans awaits; the others wait in arrival order. Waiting cannot be
/// cancelled: the sections it guards are short (one SQLite transaction, bounded by the busy timeout).
final class AsyncGate: Sendable {
    private struct State {
        var isTaken = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())

    func withGate<T>(_ body: () async throws -> T) async rethrows -> T {
        await self.enter()
        defer { self.leave() }
        return try await body()
    }

    private func enter() async {
        let entered = self.state.withLock { state in
            guard !state.isTaken else { return false }
            state.isTaken = true
            return true
        }
        if entered { return }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let enterNow = self.state.withLock { state in
                guard state.isTaken else {
                    state.isTaken = true
                    return true
                }
                state.waiters.append(continuation)
                return false
            }
            if enterNow { continuation.resume() }
        }
    }

    private func leave() {
        let next = self.state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard !state.waiters.isEmpty else {
                state.isTaken = false
                return nil
            }
            // The gate stays taken: it passes to the first waiter.
            return state.waiters.removeFirst()
        }
        next?.resume()
    }
}
