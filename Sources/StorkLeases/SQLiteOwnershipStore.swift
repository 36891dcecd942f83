import Foundation
import Logging
import NIOCore
import NIOPosix
import SQLiteNIO
import StorkCore
import StorkResources

// MARK: - SQLiteOwnershipStore
//
// Leases in one SQLite file, shared by the Stork processes of one host (WAL mode, a busy timeout, and every
// operation in one `BEGIN IMMEDIATE` transaction, so operations of several processes serialize on the file's write
// lock). The store's clock is the host's wall clock read inside that transaction, once per operation; all processes
// of the host share it. Schema (version 1, created and migrated by `prepare`):
//
//   stork_schema(version INTEGER)                             -- one row: the schema version
//   stork_leases(cluster TEXT, resource_id TEXT, holder TEXT NULL, token INTEGER, expires_at INTEGER (Unix ms),
//                PRIMARY KEY (cluster, resource_id))
//
// A row is never deleted, so a resource's token only grows, across releases and restarts.

/// An `OwnershipStore` on an SQLite file, for several Stork processes on one host.
public actor SQLiteOwnershipStore: OwnershipStore {
    public nonisolated let path: String
    public nonisolated let cluster: String
    private let logger: Logger
    private var connection: SQLiteConnection?
    /// A thread of its own: SQLite blocks its thread while it waits for another process's lock, and a shared pool
    /// could be filled with such waits while the lock holder's next statement queues behind them.
    private var threadPool: NIOThreadPool?
    /// Ids per statement: bounded so that one statement's JSON stays a few hundred kilobytes.
    static let batchSize = 10_000

    public init(path: String, cluster: String = "stork", logger: Logger = Logger(label: "stork.leases.sqlite")) {
        self.path = path
        self.cluster = cluster
        self.logger = logger
    }

    public nonisolated var description: String { "sqlite:\(self.path)" }

    deinit {
        // A store dropped without `close()` still closes its file and stops its thread (asynchronously).
        let threadPool = self.threadPool
        if let connection = self.connection {
            connection.close().whenComplete { _ in threadPool?.shutdownGracefully { _ in } }
        } else {
            threadPool?.shutdownGracefully { _ in }
        }
    }

    private func open() async throws -> SQLiteConnection {
        if let connection = self.connection { return connection }
        let threadPool: NIOThreadPool
        if let existing = self.threadPool {
            threadPool = existing
        } else {
            threadPool = NIOThreadPool(numberOfThreads: 1)
            threadPool.start()
            self.threadPool = threadPool
        }
        let connection = try await SQLiteConnection.open(
            storage: .file(path: self.path),
            threadPool: threadPool,
            logger: self.logger,
            on: MultiThreadedEventLoopGroup.singleton.any()
        )
        do {
            _ = try await connection.query("PRAGMA busy_timeout = 5000")
            _ = try await connection.query("PRAGMA journal_mode = WAL")
            _ = try await connection.query("PRAGMA synchronous = NORMAL")
        } catch {
            try? await connection.close()
            throw error
        }
        self.connection = connection
        return connection
    }

    /// Runs `body` in an immediate transaction with the store's current time (Unix milliseconds). On an error the
    /// transaction is rolled back (the connection to a local file stays usable).
    private func transaction<T: Sendable>(
        _ body: (SQLiteConnection, Int64) async throws -> T
    ) async throws -> T {
        let connection = try await self.open()
        do {
            _ = try await connection.query("BEGIN IMMEDIATE")
            do {
                let rows = try await connection.query(
                    "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) AS now"
                )
                guard let now = rows.first?.column("now")?.integer else {
                    throw StorkError(.unavailable, "SQLite did not return the time")
                }
                let result = try await body(connection, Int64(now))
                _ = try await connection.query("COMMIT")
                return result
            } catch {
                _ = try? await connection.query("ROLLBACK")
                throw error
            }
        } catch {
            throw StorkError(.unavailable, "the SQLite ownership store at \(self.path) failed: \(String(reflecting: error))")
        }
    }

    public func prepare() async throws {
        try await self.transaction { connection, _ in
            _ = try await connection.query("CREATE TABLE IF NOT EXISTS stork_schema (version INTEGER NOT NULL)")
            let rows = try await connection.query("SELECT MAX(version) AS version FROM stork_schema")
            let version = rows.first?.column("version")?.integer ?? 0
            if version > 1 {
                throw StorkError(.invalidInput, "the lease schema in \(self.path) is version \(version); this Stork knows 1")
            }
            if version < 1 {
                _ = try await connection.query(
                    """
                    CREATE TABLE IF NOT EXISTS stork_leases (
                        cluster TEXT NOT NULL,
                        resource_id TEXT NOT NULL,
                        holder TEXT,
                        token INTEGER NOT NULL,
                        expires_at INTEGER NOT NULL,
                        PRIMARY KEY (cluster, resource_id)
                    ) WITHOUT ROWID
                    """
                )
                _ = try await connection.query("DELETE FROM stork_schema")
                _ = try await connection.query("INSERT INTO stork_schema (version) VALUES (1)")
            }
        }
    }

    public func acquire(_ ids: [ResourceID], holder: String, duration: Duration) async throws -> LeaseGrants {
        let unique = Array(Set(ids)).sorted()
        let granted = try await self.transaction { connection, now -> [LeaseKey] in
            var granted: [LeaseKey] = []
            for chunk in unique.chunked(Self.batchSize) {
                let rows = try await connection.query(
                    """
                    INSERT INTO stork_leases (cluster, resource_id, holder, token, expires_at)
                    SELECT ?1, value, ?2, 1, ?3 + ?4 FROM json_each(?5) WHERE true
                    ON CONFLICT (cluster, resource_id) DO UPDATE
                        SET holder = excluded.holder, token = stork_leases.token + 1, expires_at = excluded.expires_at
                        WHERE stork_leases.holder IS NULL OR stork_leases.expires_at <= ?3
                            OR stork_leases.holder = excluded.holder
                    RETURNING resource_id, token
                    """,
                    [.text(self.cluster), .text(holder), .integer(Int(now)), .integer(Int(duration.milliseconds)),
                     .text(Self.json(chunk.map(\.rawValue)))]
                )
                granted += rows.compactMap(Self.leaseKey)
            }
            return granted
        }
        let grantedIDs = Set(granted.map(\.id))
        return LeaseGrants(granted: granted.sorted(), refused: unique.filter { !grantedIDs.contains($0) })
    }

    public func renew(_ leases: [LeaseKey], holder: String, duration: Duration) async throws -> LeaseRenewals {
        let renewed = try await self.transaction { connection, now -> Set<LeaseKey> in
            var renewed: Set<LeaseKey> = []
            for chunk in leases.chunked(Self.batchSize) {
                let rows = try await connection.query(
                    """
                    UPDATE stork_leases SET expires_at = ?3 + ?4
                    WHERE cluster = ?1 AND holder = ?2 AND expires_at > ?3
                        AND (resource_id, token) IN (
                            SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?5))
                    RETURNING resource_id, token
                    """,
                    [.text(self.cluster), .text(holder), .integer(Int(now)), .integer(Int(duration.milliseconds)),
                     .text(Self.json(chunk))]
                )
                renewed.formUnion(rows.compactMap(Self.leaseKey))
            }
            return renewed
        }
        return LeaseRenewals(
            renewed: leases.filter { renewed.contains($0) },
            lost: leases.filter { !renewed.contains($0) }
        )
    }

    public func release(_ leases: [LeaseKey], holder: String) async throws {
        try await self.transaction { connection, now in
            for chunk in leases.chunked(Self.batchSize) {
                _ = try await connection.query(
                    """
                    UPDATE stork_leases SET holder = NULL, expires_at = ?3
                    WHERE cluster = ?1 AND holder = ?2
                        AND (resource_id, token) IN (
                            SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?4))
                    """,
                    [.text(self.cluster), .text(holder), .integer(Int(now)), .text(Self.json(chunk))]
                )
            }
        }
    }

    public func records(_ ids: [ResourceID]?) async throws -> [LeaseRecord] {
        try await self.transaction { connection, now in
            let rows: [SQLiteRow]
            if let ids {
                rows = try await connection.query(
                    """
                    SELECT resource_id, holder, token, expires_at FROM stork_leases
                    WHERE cluster = ?1 AND resource_id IN (SELECT value FROM json_each(?2)) ORDER BY resource_id
                    """,
                    [.text(self.cluster), .text(Self.json(ids.map(\.rawValue)))]
                )
            } else {
                rows = try await connection.query(
                    "SELECT resource_id, holder, token, expires_at FROM stork_leases WHERE cluster = ?1 ORDER BY resource_id",
                    [.text(self.cluster)]
                )
            }
            return rows.compactMap { row -> LeaseRecord? in
                guard let id = row.column("resource_id")?.string, let token = row.column("token")?.integer,
                    let expires = row.column("expires_at")?.integer
                else { return nil }
                return LeaseRecord(
                    id: ResourceID(id),
                    holder: row.column("holder")?.string,
                    token: UInt64(max(0, token)),
                    remainingMilliseconds: Int64(expires) - now
                )
            }
        }
    }

    public func close() async {
        try? await self.connection?.close()
        self.connection = nil
        try? await self.threadPool?.shutdownGracefully()
        self.threadPool = nil
    }

    // MARK: Helpers

    static func leaseKey(_ row: SQLiteRow) -> LeaseKey? {
        guard let id = row.column("resource_id")?.string, let token = row.column("token")?.integer else { return nil }
        return LeaseKey(id: ResourceID(id), token: UInt64(max(0, token)))
    }

    /// A JSON array of strings.
    static func json<S: Sequence<String>>(_ strings: S) -> String {
        "[" + strings.map(Self.quoted).joined(separator: ",") + "]"
    }

    /// A JSON array of `[id, token]` pairs.
    static func json<S: Sequence<LeaseKey>>(_ keys: S) -> String {
        "[" + keys.map { "[\(Self.quoted($0.id.rawValue)),\($0.token)]" }.joined(separator: ",") + "]"
    }

    /// A JSON string literal.
    static func quoted(_ string: String) -> String {
        var result = "\""
        for scalar in string.unicodeScalars {
            switch scalar {
            case "\"": result += "\\\""
            case "\\": result += "\\\\"
            case _ where scalar.value < 0x20: result += String(format: "\\u%04x", scalar.value)
            default: result.unicodeScalars.append(scalar)
            }
        }
        return result + "\""
    }
}

extension Array {
    /// Consecutive slices of at most `size` elements (none for an empty array).
    func chunked(_ size: Int) -> [ArraySlice<Element>] {
        stride(from: 0, to: self.count, by: size).map { self[$0..<Swift.min($0 + size, self.count)] }
    }
}

extension Duration {
    /// Whole milliseconds, rounded down.
    var milliseconds: Int64 { self.nanosecondsClamped / 1_000_000 }
}
