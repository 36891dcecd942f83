import Foundation
import Logging
import NIOSSL
import PostgresNIO
import StorkCore
import StorkResources

// MARK: - PostgresOwnershipStore
//
// Leases in PostgreSQL, for a cluster on several hosts. Expiry is judged by the server's `now()` (the start of the
// operation's transaction), never the nodes' clocks. Each operation is one statement over arrays (`unnest`), so a
// node with 100,000 leases renews them in a handful of statements (10,000 ids each). One connection per store,
// reopened on the next operation after a failure. Schema (created and migrated by `prepare`, under an advisory
// lock so that nodes starting together do not race):
//
//   stork_schema_migrations(version int PRIMARY KEY, applied_at timestamptz)
//   stork_leases(cluster text, resource_id text, holder text NULL, token bigint, expires_at timestamptz,
//                PRIMARY KEY (cluster, resource_id))
//
// A row is never deleted, so a resource's token only grows, across releases and restarts of Stork and PostgreSQL.

/// An `OwnershipStore` on PostgreSQL.
public actor PostgresOwnershipStore: OwnershipStore {
    public nonisolated let configuration: PostgresConnection.Configuration
    public nonisolated let cluster: String
    private nonisolated let redacted: String
    private let logger: Logger
    private var connection: PostgresConnection?
    /// True while one operation opens the connection; the others wait for it (actor methods interleave at awaits).
    private var isConnecting = false
    private var nextConnectionID = 0
    static let batchSize = 10_000
    /// The advisory lock key that serializes migrations ("stork" in ASCII).
    static let migrationLock: Int64 = 0x73_74_6F_72_6B

    public init(
        configuration: PostgresConnection.Configuration,
        description: String,
        cluster: String = "stork",
        logger: Logger = Logger(label: "stork.leases.postgres")
    ) {
        self.configuration = configuration
        self.redacted = description
        self.cluster = cluster
        self.logger = logger
    }

    /// Parses `postgres://user:password@host:port/database?sslmode=disable|prefer|require` (also `postgresql://`).
    public init(url: String, cluster: String = "stork", logger: Logger = Logger(label: "stork.leases.postgres")) throws {
        guard let components = URLComponents(string: url), ["postgres", "postgresql"].contains(components.scheme ?? ""),
            let host = components.host, !host.isEmpty
        else {
            throw StorkError(.invalidInput, "'\(Self.redact(url))' is not a postgres://user:password@host:port/database URL")
        }
        let user = components.user.flatMap { $0.removingPercentEncoding } ?? "postgres"
        let password = components.password.flatMap { $0.removingPercentEncoding }
        let database = components.path.split(separator: "/").first.map(String.init)
        let mode = components.queryItems?.first { $0.name == "sslmode" }?.value ?? "disable"
        let tls: PostgresConnection.Configuration.TLS
        switch mode {
        case "disable":
            tls = .disable
        case "prefer", "require":
            let context = try NIOSSLContext(configuration: .makeClientConfiguration())
            tls = mode == "prefer" ? .prefer(context) : .require(context)
        default:
            throw StorkError(.invalidInput, "sslmode '\(mode)' is not one of disable, prefer, require")
        }
        var configuration = PostgresConnection.Configuration(
            host: host,
            port: components.port ?? 5432,
            username: user,
            password: password,
            database: database,
            tls: tls
        )
        configuration.options.connectTimeout = .seconds(3)
        self.init(configuration: configuration, description: Self.redact(url), cluster: cluster, logger: logger)
    }

    /// The URL without its password.
    static func redact(_ url: String) -> String {
        guard var components = URLComponents(string: url), components.password != nil else { return url }
        components.password = "***"
        return components.string ?? url
    }

    public nonisolated var description: String { self.redacted }

    deinit {
        // A store dropped without `close()` still closes its connection (the closure keeps it alive until then).
        if let connection = self.connection { connection.close().whenComplete { _ in _ = connection } }
    }

    /// The open connection, opening one if needed. Every connection this store drops is closed first.
    private func open() async throws -> PostgresConnection {
        while true {
            if let connection = self.connection, !connection.isClosed { return connection }
            guard self.isConnecting else { break }
            try await Task.sleep(for: .milliseconds(5))
        }
        self.isConnecting = true
        defer { self.isConnecting = false }
        if let stale = self.connection {
            self.connection = nil
            try? await stale.close()
        }
        self.nextConnectionID += 1
        let connection = try await PostgresConnection.connect(
            configuration: self.configuration,
            id: self.nextConnectionID,
            logger: self.logger
        )
        self.connection = connection
        return connection
    }

    /// Runs `body` on the connection. A connection that broke, or whose operation was cancelled (a caller's
    /// timeout: the server may be unreachable), is closed and reopened by the next operation; other errors leave
    /// it open.
    private func withConnection<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        var used: PostgresConnection?
        do {
            let connection = try await self.open()
            used = connection
            return try await body(connection)
        } catch {
            if let used, used.isClosed || Task.isCancelled || error is CancellationError {
                if self.connection === used { self.connection = nil }
                try? await used.close()
            }
            // PSQLError's description hides everything; its reflection has the server's message (no password:
            // the connection configuration is not part of it).
            throw StorkError(.unavailable, "the PostgreSQL ownership store at \(self.redacted) failed: \(Self.explain(error))")
        }
    }

    public func prepare() async throws {
        let logger = self.logger
        try await self.withConnection { connection in
            try await connection.query("BEGIN", logger: logger)
            do {
                try await connection.query("SELECT pg_advisory_xact_lock(\(Self.migrationLock))", logger: logger)
                try await connection.query(
                    """
                    CREATE TABLE IF NOT EXISTS stork_schema_migrations (
                        version int PRIMARY KEY,
                        applied_at timestamptz NOT NULL DEFAULT now()
                    )
                    """,
                    logger: logger
                )
                var version = 0
                for try await (current) in try await connection.query(
                    "SELECT COALESCE(MAX(version), 0) FROM stork_schema_migrations",
                    logger: logger
                ).decode(Int.self) {
                    version = current
                }
                if version > 1 {
                    throw StorkError(.invalidInput, "the lease schema is version \(version); this Stork knows 1")
                }
                if version < 1 {
                    try await connection.query(
                        """
                        CREATE TABLE IF NOT EXISTS stork_leases (
                            cluster text NOT NULL,
                            resource_id text NOT NULL,
                            holder text,
                            token bigint NOT NULL,
                            expires_at timestamptz NOT NULL,
                            PRIMARY KEY (cluster, resource_id)
                        )
                        """,
                        logger: logger
                    )
                    try await connection.query("INSERT INTO stork_schema_migrations (version) VALUES (1)", logger: logger)
                }
                try await connection.query("COMMIT", logger: logger)
            } catch {
                _ = try? await connection.query("ROLLBACK", logger: logger)
                throw error
            }
        }
    }

    public func acquire(_ ids: [ResourceID], holder: String, duration: Duration) async throws -> LeaseGrants {
        let unique = Array(Set(ids)).sorted()
        let logger = self.logger
        let cluster = self.cluster
        let seconds = duration.secondsDouble
        let granted = try await self.withConnection { connection -> [LeaseKey] in
            var granted: [LeaseKey] = []
            for chunk in unique.chunked(Self.batchSize) {
                let names = chunk.map(\.rawValue)
                let rows = try await connection.query(
                    """
                    INSERT INTO stork_leases (cluster, resource_id, holder, token, expires_at)
                    SELECT \(cluster), id, \(holder), 1, now() + make_interval(secs => \(seconds))
                    FROM unnest(\(names)::text[]) AS t(id)
                    ON CONFLICT (cluster, resource_id) DO UPDATE
                        SET holder = EXCLUDED.holder, token = stork_leases.token + 1, expires_at = EXCLUDED.expires_at
                        WHERE stork_leases.holder IS NULL OR stork_leases.expires_at <= now()
                            OR stork_leases.holder = EXCLUDED.holder
                    RETURNING resource_id, token
                    """,
                    logger: logger
                )
                for try await (id, token) in rows.decode((String, Int64).self) {
                    granted.append(LeaseKey(id: ResourceID(id), token: UInt64(max(0, token))))
                }
            }
            return granted
        }
        let grantedIDs = Set(granted.map(\.id))
        return LeaseGrants(granted: granted.sorted(), refused: unique.filter { !grantedIDs.contains($0) })
    }

    public func renew(_ leases: [LeaseKey], holder: String, duration: Duration) async throws -> LeaseRenewals {
        let logger = self.logger
        let cluster = self.cluster
        let seconds = duration.secondsDouble
        let renewed = try await self.withConnection { connection -> Set<LeaseKey> in
            var renewed: Set<LeaseKey> = []
            for chunk in leases.chunked(Self.batchSize) {
                let names = chunk.map(\.id.rawValue)
                // `= ANY(array)` on the primary key, not a join with `unnest`: a join's plan depends on statistics,
                // and a nested loop over a freshly filled table took 19 s for 10,000 rows in a trial. Rows with the
                // same holder but another token (re-acquired since) are extended harmlessly and not reported.
                let rows = try await connection.query(
                    """
                    UPDATE stork_leases SET expires_at = now() + make_interval(secs => \(seconds))
                    WHERE cluster = \(cluster) AND holder = \(holder) AND resource_id = ANY(\(names)::text[])
                        AND expires_at > now()
                    RETURNING resource_id, token
                    """,
                    logger: logger
                )
                for try await (id, token) in rows.decode((String, Int64).self) {
                    renewed.insert(LeaseKey(id: ResourceID(id), token: UInt64(max(0, token))))
                }
            }
            return renewed
        }
        return LeaseRenewals(
            renewed: leases.filter { renewed.contains($0) },
            lost: leases.filter { !renewed.contains($0) }
        )
    }

    public func release(_ leases: [LeaseKey], holder: String) async throws {
        let logger = self.logger
        let cluster = self.cluster
        try await self.withConnection { connection in
            for chunk in leases.chunked(Self.batchSize) {
                let names = chunk.map(\.id.rawValue)
                let pairs = chunk.map { "\($0.id.rawValue)#\($0.token)" }
                try await connection.query(
                    """
                    UPDATE stork_leases SET holder = NULL, expires_at = now()
                    WHERE cluster = \(cluster) AND holder = \(holder) AND resource_id = ANY(\(names)::text[])
                        AND (resource_id || '#' || token::text) = ANY(\(pairs)::text[])
                    """,
                    logger: logger
                )
            }
        }
    }

    public func records(_ ids: [ResourceID]?) async throws -> [LeaseRecord] {
        let logger = self.logger
        let cluster = self.cluster
        let names = ids?.map(\.rawValue)
        return try await self.withConnection { connection in
            let rows: PostgresRowSequence
            if let names {
                rows = try await connection.query(
                    """
                    SELECT resource_id, holder, token,
                        (EXTRACT(EPOCH FROM (expires_at - now())) * 1000)::int8
                    FROM stork_leases WHERE cluster = \(cluster) AND resource_id = ANY(\(names)::text[])
                    ORDER BY resource_id
                    """,
                    logger: logger
                )
            } else {
                rows = try await connection.query(
                    """
                    SELECT resource_id, holder, token,
                        (EXTRACT(EPOCH FROM (expires_at - now())) * 1000)::int8
                    FROM stork_leases WHERE cluster = \(cluster) ORDER BY resource_id
                    """,
                    logger: logger
                )
            }
            var records: [LeaseRecord] = []
            for try await (id, holder, token, remaining) in rows.decode((String, String?, Int64, Int64).self) {
                records.append(
                    LeaseRecord(id: ResourceID(id), holder: holder, token: UInt64(max(0, token)), remainingMilliseconds: remaining)
                )
            }
            return records
        }
    }

    static func explain(_ error: any Error) -> String {
        if let error = error as? PSQLError {
            if let message = error.serverInfo?[.message] { return "\(error.code): \(message)" }
            return "\(error.code)"
        }
        return String(describing: error)
    }

    public func close() async {
        try? await self.connection?.close()
        self.connection = nil
    }
}
