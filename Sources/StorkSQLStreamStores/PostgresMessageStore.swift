import Foundation
import Logging
import NIOCore
import NIOPosix
import PostgresNIO
import StorkCore
import StorkStreaming

// MARK: - PostgresMessageStore
//
// Streams in PostgreSQL, each keyed by its cluster's name and its own: two clusters on one database never meet. Schema (created and migrated by Stork on a store's first
// connection, in one transaction under an advisory lock, so that nodes starting together do not race; the lease
// store's tables and migrations are separate):
//
//   stork_stream_schema_migrations(version int PRIMARY KEY, applied_at timestamptz)
//   stork_streams(cluster text, name text, last_sequence bigint,   -- the highest sequence ever appended
//                 PRIMARY KEY (cluster, name))
//   stork_messages(cluster text, stream text, sequence bigint, subject text, headers bytea, payload bytea,
//                  timestamp bigint (ns since the Unix epoch), PRIMARY KEY (cluster, stream, sequence))
//   stork_stream_metadata(cluster text, stream text, key text, value bytea, PRIMARY KEY (cluster, stream, key))
//
// Version 2 of the schema added `cluster`; rows written before it belong to the cluster whose node migrated the
// database (until then one database could serve one cluster only). Version 3 added `stork_streams.fence`.
//
// Fencing (`fencing: true`, for streams that move between nodes): `open` raises the stream's `fence` by one and
// keeps the new value as this store's token; every write (append, remove, purge, metadata) names the token in its
// own statement and changes nothing when the row holds another one. A later `open` by another process (the new
// owner after a takeover) therefore stops every write of the earlier one, even one paused mid-operation: its
// statements find a higher fence and fail with `fenced`.
//
// Every operation but `open` is one statement, so one round trip and atomic on its own: an append is an UPDATE of
// the stream's row (only when the batch starts above `last_sequence`) and an INSERT of the batch from arrays
// (`unnest`), joined in one statement; reads are ranges of `(stream, sequence)`; `remove` is
// `sequence = ANY($2)`; `destroy` deletes the stream's rows from the three tables. When `append` returns, the batch
// is committed (with the server's `synchronous_commit`, durable on the server's disk).
//
// One connection per store, reopened after the server restarts: an operation that finds its connection closed
// opens a new one first; one whose connection breaks under it is retried once on a new connection when it is
// idempotent (all but `append`), and an `append` in doubt is settled by reading the stream's row (it waits for the
// old transaction with `FOR UPDATE`): committed means done, absent means written again.
//
// The actor runs on the event loop of its connections, and sends every statement from there, right after checking
// that the connection is open. PostgresNIO's async `query` writes to the channel from whatever thread calls it; when
// the channel closes in between (the server terminated the connection), the write lands in a pipeline whose handler
// is gone, and the query's promise is never completed: the call hangs forever. Checked and sent on the loop, a
// statement either reaches the handler, which runs or fails it, or is refused before it is sent.

/// A `MessageStore` in PostgreSQL; many streams (and Stork nodes) share a database.
public actor PostgresMessageStore: MessageStore {
    public nonisolated let stream: String
    /// The cluster the stream belongs to (`cluster.name`): part of every row's key.
    public nonisolated let cluster: String
    /// Whether `open` takes the stream over from any earlier opener (see "Fencing" above).
    public nonisolated let fencing: Bool
    /// The fence this store's writes carry (set by `open` when fencing).
    private var fence: Int64?
    /// The loop the actor runs on and its connections live on.
    private nonisolated let eventLoop: any EventLoop
    public nonisolated let configuration: PostgresConnection.Configuration
    /// The server, for logs and errors, without a password.
    public nonisolated let description: String
    private let logger: Logger
    private var connection: PostgresConnection?
    /// True while one operation opens the connection; others wait (actor methods interleave at awaits).
    private var isConnecting = false
    private var nextConnectionID = 0
    private var isSchemaReady = false
    private var lastSequence: UInt64 = 0
    private var isClosed = false

    /// The advisory lock key that serializes stream-schema migrations ("stork-st" in ASCII).
    static let migrationLock: Int64 = 0x73_74_6F_72_6B_2D_73_74

    /// A store for `stream` of `cluster` on the server `url` names: `postgres://user:password@host:port/database`,
    /// with `?sslmode=disable|prefer|require` (also `postgresql://`).
    public init(
        url: String,
        stream: String,
        cluster: String = "stork",
        fencing: Bool = false,
        logger: Logger = Logger(label: "stork.store.postgres")
    ) throws {
        let parsed = try PostgresURL(url)
        self.init(
            configuration: parsed.configuration,
            description: parsed.redacted,
            stream: stream,
            cluster: cluster,
            fencing: fencing,
            logger: logger
        )
    }

    /// A store for `stream` on a server given by its connection configuration; `description` names it in logs.
    public init(
        configuration: PostgresConnection.Configuration,
        description: String,
        stream: String,
        cluster: String = "stork",
        fencing: Bool = false,
        logger: Logger = Logger(label: "stork.store.postgres"),
        eventLoop: any EventLoop = MultiThreadedEventLoopGroup.singleton.any()
    ) {
        self.fencing = fencing
        self.eventLoop = eventLoop
        self.configuration = configuration
        self.description = description
        self.stream = stream
        self.cluster = cluster
        var logger = logger
        logger[metadataKey: "stork.stream"] = "\(stream)"
        self.logger = logger
    }

    deinit {
        // Dropped without `close()`: close the connection anyway (the closure keeps it alive until then).
        if let connection = self.connection { connection.close().whenComplete { _ in _ = connection } }
    }

    public nonisolated var kind: String { "postgres" }

    public nonisolated var unownedExecutor: UnownedSerialExecutor {
        self.eventLoop.executor.asUnownedSerialExecutor()
    }

    // MARK: MessageStore

    public func open() async throws -> MessageStoreRecovery {
        let stream = self.stream
        let cluster = self.cluster
        let recovery = try await self.withConnection("open", idempotent: true) { connection in
            // One snapshot for the stream's row, messages and metadata.
            try await self.transaction(on: connection, "BEGIN ISOLATION LEVEL REPEATABLE READ") {
                try await self.execute(
                    """
                    INSERT INTO stork_streams (cluster, name, last_sequence) VALUES (\(cluster), \(stream), 0)
                    ON CONFLICT (cluster, name) DO NOTHING
                    """,
                    on: connection
                )
                if self.fencing {
                    for row in try await self.execute(
                        """
                        UPDATE stork_streams SET fence = fence + 1 WHERE cluster = \(cluster) AND name = \(stream)
                        RETURNING fence
                        """,
                        on: connection
                    ) {
                        self.fence = try row.decode(Int64.self)
                    }
                }
                var recovery = MessageStoreRecovery()
                for row in try await self.execute(
                    "SELECT last_sequence FROM stork_streams WHERE cluster = \(cluster) AND name = \(stream)",
                    on: connection
                ) {
                    recovery.lastSequence = UInt64(max(0, try row.decode(Int64.self)))
                }
                let messages = try await self.execute(
                    """
                    SELECT sequence, subject, (octet_length(headers) + octet_length(payload))::int8, timestamp
                    FROM stork_messages WHERE cluster = \(cluster) AND stream = \(stream) ORDER BY sequence
                    """,
                    on: connection
                )
                recovery.messages.reserveCapacity(messages.count)
                for row in messages {
                    let (sequence, subject, body, timestamp) = try row.decode((Int64, String, Int64, Int64).self)
                    recovery.messages.append(
                        SQLStoreRules.indexEntry(
                            sequence: sequence,
                            subject: subject,
                            bodyLength: body,
                            timestamp: timestamp
                        )
                    )
                }
                recovery.lastSequence = max(recovery.lastSequence, recovery.messages.last?.sequence ?? 0)
                for row in try await self.execute(
                    "SELECT key, value FROM stork_stream_metadata WHERE cluster = \(cluster) AND stream = \(stream)",
                    on: connection
                ) {
                    let (key, value) = try row.decode((String, ByteBuffer).self)
                    recovery.metadata[key] = Array(value.readableBytesView)
                }
                return recovery
            }
        }
        self.lastSequence = recovery.lastSequence
        self.logger.debug(
            "opened PostgreSQL message store",
            metadata: [
                "stork.store.server": "\(self.description)", "stork.store.messages": "\(recovery.messages.count)",
                "stork.store.last_sequence": "\(recovery.lastSequence)",
            ]
        )
        return recovery
    }

    public func append(_ messages: [StoredMessage]) async throws {
        guard let (first, last) = try SQLStoreRules.checkBatch(messages, after: self.lastSequence) else { return }
        let query = Self.insertQuery(
            PostgresBatch(messages),
            cluster: self.cluster,
            stream: self.stream,
            fence: self.fence,
            first: first,
            last: last
        )
        let insert: (PostgresConnection) async throws -> Int64 = { connection in
            var inserted: Int64 = 0
            for row in try await self.execute(query, on: connection) { inserted = try row.decode(Int64.self) }
            return inserted
        }
        var inserted: Int64
        do {
            inserted = try await self.attempt(insert)
        } catch let lost as ConnectionLost {
            inserted = try await self.settleAppend(query: insert, first: first, last: last, count: messages.count, lost)
        } catch {
            throw self.storeError("append", error)
        }
        guard inserted == Int64(messages.count) else {
            try await self.checkFence("append")
            throw StorkError(
                .storeFailed,
                "append from sequence \(first): stream '\(self.stream)' already holds that sequence or a later one"
            )
        }
        self.lastSequence = last
    }

    /// An append whose connection broke under it may have committed. `FOR UPDATE` waits until the old transaction
    /// (if the server still runs it) has ended, so the stream's row tells: at `last`, it committed; below `first`, it
    /// did not, and is sent again; anything else is not this store's doing.
    private func settleAppend(
        query insert: (PostgresConnection) async throws -> Int64,
        first: UInt64,
        last: UInt64,
        count: Int,
        _ lost: ConnectionLost
    ) async throws -> Int64 {
        self.logger.warning(
            "connection lost during an append; settling it on a new connection",
            metadata: ["stork.store.server": "\(self.description)", "error": "\(Self.explain(lost.underlying))"]
        )
        let stream = self.stream
        let cluster = self.cluster
        let stored = try await self.withConnection("append", idempotent: true) { connection in
            var stored: Int64 = 0
            for row in try await self.execute(
                "SELECT last_sequence FROM stork_streams WHERE cluster = \(cluster) AND name = \(stream) FOR UPDATE",
                on: connection
            ) {
                stored = try row.decode(Int64.self)
            }
            return stored
        }
        let metadata: Logger.Metadata = ["stork.store.first": "\(first)", "stork.store.last": "\(last)"]
        if stored >= SQLStoreRules.column(last) {
            self.logger.info("the append in doubt had committed", metadata: metadata)
            return Int64(count)
        }
        if stored < SQLStoreRules.column(first) {
            self.logger.info("the append in doubt had not committed; sending it again", metadata: metadata)
            return try await self.withConnection("append", idempotent: false, insert)
        }
        throw StorkError(.storeFailed, "append of \(first)...\(last) to stream '\(stream)': the stream holds \(stored)")
    }

    public func message(_ sequence: UInt64) async throws -> StoredMessage? {
        let stream = self.stream
        let cluster = self.cluster
        let value = SQLStoreRules.column(sequence)
        return try await self.withConnection("read", idempotent: true) { connection in
            let rows = try await self.execute(
                """
                SELECT sequence, subject, headers, payload, timestamp FROM stork_messages
                WHERE cluster = \(cluster) AND stream = \(stream) AND sequence = \(value)
                """,
                on: connection
            )
            return try Self.messages(rows).first
        }
    }

    public func messages(from sequence: UInt64, limit: Int) async throws -> [StoredMessage] {
        guard limit > 0 else { return [] }
        let stream = self.stream
        let cluster = self.cluster
        let from = SQLStoreRules.column(sequence)
        let limit = SQLStoreRules.column(limit: limit)
        return try await self.withConnection("read", idempotent: true) { connection in
            let rows = try await self.execute(
                """
                SELECT sequence, subject, headers, payload, timestamp FROM stork_messages
                WHERE cluster = \(cluster) AND stream = \(stream) AND sequence >= \(from) ORDER BY sequence LIMIT \(limit)
                """,
                on: connection
            )
            return try Self.messages(rows)
        }
    }

    public func remove(_ sequences: [UInt64]) async throws {
        let present = sequences.filter { $0 <= SQLStoreRules.maximumSequence }.map { Int64($0) }
        guard !present.isEmpty else { return }
        try await self.deleteMessages("remove", listed: present, through: 0)
    }

    public func purge(through sequence: UInt64) async throws {
        try await self.deleteMessages("purge", listed: [], through: SQLStoreRules.column(sequence))
    }

    /// Deletes the messages `listed` and those up to `through`, in one fenced statement.
    private func deleteMessages(_ operation: String, listed: [Int64], through: Int64) async throws {
        let (cluster, stream, fence) = (self.cluster, self.stream, self.fence)
        try await self.owned(operation) { connection in
            try await self.execute(
                """
                WITH owner AS (
                    SELECT 1 FROM stork_streams
                    WHERE cluster = \(cluster) AND name = \(stream) AND (\(fence)::int8 IS NULL OR fence = \(fence))
                ), done AS (
                    DELETE FROM stork_messages
                    WHERE cluster = \(cluster) AND stream = \(stream)
                        AND (sequence <= \(through) OR sequence = ANY(\(listed)::int8[]))
                        AND EXISTS (SELECT 1 FROM owner)
                ) SELECT count(*) FROM owner
                """,
                on: connection
            )
        }
    }

    public func saveMetadata(key: String, value: [UInt8]?) async throws {
        let stream = self.stream
        let cluster = self.cluster
        let fence = self.fence
        try await self.owned("save metadata") { connection in
            if let value {
                let bytes = ByteBuffer(bytes: value)
                return try await self.execute(
                    """
                    WITH owner AS (
                        SELECT 1 FROM stork_streams
                        WHERE cluster = \(cluster) AND name = \(stream) AND (\(fence)::int8 IS NULL OR fence = \(fence))
                    ), done AS (
                        INSERT INTO stork_stream_metadata (cluster, stream, key, value)
                        SELECT \(cluster), \(stream), \(key), \(bytes) WHERE EXISTS (SELECT 1 FROM owner)
                        ON CONFLICT (cluster, stream, key) DO UPDATE SET value = EXCLUDED.value
                    ) SELECT count(*) FROM owner
                    """,
                    on: connection
                )
            }
            return try await self.execute(
                """
                WITH owner AS (
                    SELECT 1 FROM stork_streams
                    WHERE cluster = \(cluster) AND name = \(stream) AND (\(fence)::int8 IS NULL OR fence = \(fence))
                ), done AS (
                    DELETE FROM stork_stream_metadata
                    WHERE cluster = \(cluster) AND stream = \(stream) AND key = \(key) AND EXISTS (SELECT 1 FROM owner)
                ) SELECT count(*) FROM owner
                """,
                on: connection
            )
        }
    }

    public func close() async throws {
        self.isClosed = true
        let connection = self.connection
        self.connection = nil
        try? await connection?.close()
    }

    public func destroy() async throws {
        let stream = self.stream
        let cluster = self.cluster
        let fence = self.fence
        let existed = try await self.withConnection("destroy", idempotent: true) { connection in
            var owners: Int64 = 0
            for row in try await self.execute(
                """
                WITH owner AS (
                    SELECT 1 FROM stork_streams
                    WHERE cluster = \(cluster) AND name = \(stream) AND (\(fence)::int8 IS NULL OR fence = \(fence))
                ), messages AS (
                    DELETE FROM stork_messages
                    WHERE cluster = \(cluster) AND stream = \(stream) AND EXISTS (SELECT 1 FROM owner)
                ), metadata AS (
                    DELETE FROM stork_stream_metadata
                    WHERE cluster = \(cluster) AND stream = \(stream) AND EXISTS (SELECT 1 FROM owner)
                ), streams AS (
                    DELETE FROM stork_streams WHERE cluster = \(cluster) AND name = \(stream) AND EXISTS (SELECT 1 FROM owner)
                ) SELECT count(*) FROM owner
                """,
                on: connection
            ) {
                owners = try row.decode(Int64.self)
            }
            return owners
        }
        try await self.close()
        // Without fencing a missing row is nothing to destroy; with it, another node holds the stream now.
        if existed == 0, fence != nil { throw self.fencedError("destroy") }
    }

    // MARK: Fencing

    /// Runs a fenced write: its statement starts with the stream's row as `owner` while the row holds this store's
    /// fence (any row without fencing) and answers `count(*) FROM owner`; 0 means another process has opened the
    /// stream since, and nothing was written.
    private func owned(
        _ operation: String,
        _ statement: @escaping (PostgresConnection) async throws -> PostgresQueryResult
    ) async throws {
        let owners = try await self.withConnection(operation, idempotent: true) { connection in
            var owners: Int64 = 0
            for row in try await statement(connection) { owners = try row.decode(Int64.self) }
            return owners
        }
        guard owners == 0 else { return }
        if self.fence != nil { throw self.fencedError(operation) }
        throw StorkError(.storeFailed, "\(operation) of stream '\(self.stream)': the stream is not in the store (destroyed)")
    }

    /// Throws `fenced` when the stream's row no longer holds this store's fence (after a write that changed nothing).
    private func checkFence(_ operation: String) async throws {
        guard let fence = self.fence else { return }
        let (cluster, stream) = (self.cluster, self.stream)
        let current = try await self.withConnection(operation, idempotent: true) { connection in
            var current: Int64?
            for row in try await self.execute(
                "SELECT fence FROM stork_streams WHERE cluster = \(cluster) AND name = \(stream)",
                on: connection
            ) {
                current = try row.decode(Int64.self)
            }
            return current
        }
        if current != fence { throw self.fencedError(operation) }
    }

    private func fencedError(_ operation: String) -> StorkError {
        StorkError(
            .fenced,
            "\(operation) of stream '\(self.stream)' refused: another node has opened the stream since this one did"
        )
    }

    // MARK: Statements

    /// The batch's columns as arrays, for `unnest`.
    private struct PostgresBatch: Sendable {
        var sequences: [Int64] = []
        var subjects: [String] = []
        var headers: [ByteBuffer] = []
        var payloads: [ByteBuffer] = []
        var timestamps: [Int64] = []

        init(_ messages: [StoredMessage]) {
            self.sequences.reserveCapacity(messages.count)
            self.subjects.reserveCapacity(messages.count)
            self.headers.reserveCapacity(messages.count)
            self.payloads.reserveCapacity(messages.count)
            self.timestamps.reserveCapacity(messages.count)
            for message in messages {
                self.sequences.append(Int64(message.sequence))
                self.subjects.append(message.subject)
                self.headers.append(ByteBuffer(bytes: message.headers))
                self.payloads.append(ByteBuffer(bytes: message.payload))
                self.timestamps.append(message.timestamp)
            }
        }
    }

    /// One statement: advance the stream's `last_sequence` when the batch starts above it, and insert the batch
    /// only then. Its one row is the number of rows inserted (0 when the stream already holds `first` or later).
    private static func insertQuery(
        _ batch: PostgresBatch,
        cluster: String,
        stream: String,
        fence: Int64?,
        first: UInt64,
        last: UInt64
    ) -> PostgresQuery {
        let first = SQLStoreRules.column(first)
        let last = SQLStoreRules.column(last)
        return """
            WITH advanced AS (
                UPDATE stork_streams SET last_sequence = \(last)
                WHERE cluster = \(cluster) AND name = \(stream) AND last_sequence < \(first)
                    AND (\(fence)::int8 IS NULL OR fence = \(fence))
                RETURNING cluster, name
            ), inserted AS (
                INSERT INTO stork_messages (cluster, stream, sequence, subject, headers, payload, timestamp)
                SELECT advanced.cluster, advanced.name, m.sequence, m.subject, m.headers, m.payload, m.timestamp
                FROM advanced, unnest(
                    \(batch.sequences)::int8[], \(batch.subjects)::text[], \(batch.headers)::bytea[],
                    \(batch.payloads)::bytea[], \(batch.timestamps)::int8[]
                ) AS m(sequence, subject, headers, payload, timestamp)
                RETURNING 1
            )
            SELECT count(*) FROM inserted
            """
    }

    private static func messages(_ rows: PostgresQueryResult) throws -> [StoredMessage] {
        try rows.map { row in
            let (sequence, subject, headers, payload, timestamp) = try row.decode(
                (Int64, String, ByteBuffer, ByteBuffer, Int64).self
            )
            return StoredMessage(
                sequence: UInt64(max(0, sequence)),
                subject: subject,
                headers: Array(headers.readableBytesView),
                payload: Array(payload.readableBytesView),
                timestamp: timestamp
            )
        }
    }

    /// Sends `query` from the event loop right after checking that the connection is open (see the top of the
    /// file), and collects its rows.
    @discardableResult
    private func execute(
        _ query: PostgresQuery,
        on connection: PostgresConnection
    ) async throws -> PostgresQueryResult {
        self.eventLoop.preconditionInEventLoop()
        guard !connection.isClosed else { throw ConnectionClosed() }
        let result: EventLoopFuture<PostgresQueryResult> = connection.query(query, logger: self.logger)
        return try await result.get()
    }

    /// Runs `body` between `begin` and `COMMIT`, rolled back when it throws.
    private func transaction<T: Sendable>(
        on connection: PostgresConnection,
        _ begin: PostgresQuery = "BEGIN",
        _ body: () async throws -> T
    ) async throws -> T {
        try await self.execute(begin, on: connection)
        do {
            let result = try await body()
            try await self.execute("COMMIT", on: connection)
            return result
        } catch {
            _ = try? await self.execute("ROLLBACK", on: connection)
            throw error
        }
    }

    // MARK: Schema

    /// The statements that bring the schema from version `n` to `n + 1`, at index `n`. Append, never edit.
    static let migrations: [[String]] = [
        [
            """
            CREATE TABLE IF NOT EXISTS stork_streams (
                name text PRIMARY KEY,
                last_sequence bigint NOT NULL
            )
            """,
            """
            CREATE TABLE IF NOT EXISTS stork_messages (
                stream text NOT NULL,
                sequence bigint NOT NULL,
                subject text NOT NULL,
                headers bytea NOT NULL,
                payload bytea NOT NULL,
                timestamp bigint NOT NULL,
                PRIMARY KEY (stream, sequence)
            )
            """,
            """
            CREATE TABLE IF NOT EXISTS stork_stream_metadata (
                stream text NOT NULL,
                key text NOT NULL,
                value bytea NOT NULL,
                PRIMARY KEY (stream, key)
            )
            """,
        ],
        // 2: every row keyed by its cluster too; rows from before belong to the cluster that migrates
        // (`stork.cluster`, set for the migration's transaction).
        [
            "ALTER TABLE stork_streams ADD COLUMN cluster text NOT NULL DEFAULT current_setting('stork.cluster')",
            "ALTER TABLE stork_messages ADD COLUMN cluster text NOT NULL DEFAULT current_setting('stork.cluster')",
            "ALTER TABLE stork_stream_metadata ADD COLUMN cluster text NOT NULL DEFAULT current_setting('stork.cluster')",
            "ALTER TABLE stork_streams ALTER COLUMN cluster DROP DEFAULT",
            "ALTER TABLE stork_messages ALTER COLUMN cluster DROP DEFAULT",
            "ALTER TABLE stork_stream_metadata ALTER COLUMN cluster DROP DEFAULT",
            "ALTER TABLE stork_streams DROP CONSTRAINT stork_streams_pkey, ADD PRIMARY KEY (cluster, name)",
            "ALTER TABLE stork_messages DROP CONSTRAINT stork_messages_pkey, ADD PRIMARY KEY (cluster, stream, sequence)",
            """
            ALTER TABLE stork_stream_metadata DROP CONSTRAINT stork_stream_metadata_pkey,
                ADD PRIMARY KEY (cluster, stream, key)
            """,
        ],
        // 3: the fence of the stream's latest opener (fencing stores).
        ["ALTER TABLE stork_streams ADD COLUMN fence bigint NOT NULL DEFAULT 0"],
    ]

    private func migrate(_ connection: PostgresConnection) async throws {
        try await self.transaction(on: connection) {
            try await self.execute("SELECT pg_advisory_xact_lock(\(Self.migrationLock))", on: connection)
            try await self.execute("SELECT set_config('stork.cluster', \(self.cluster), true)", on: connection)
            try await self.execute(
                """
                CREATE TABLE IF NOT EXISTS stork_stream_schema_migrations (
                    version int PRIMARY KEY,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )
                """,
                on: connection
            )
            var version = 0
            for row in try await self.execute(
                "SELECT COALESCE(MAX(version), 0)::int8 FROM stork_stream_schema_migrations",
                on: connection
            ) {
                version = Int(try row.decode(Int64.self))
            }
            guard version <= Self.migrations.count else {
                throw StorkError(
                    .storeFailed,
                    "the stream schema is version \(version); this Stork knows up to \(Self.migrations.count)"
                )
            }
            for (index, statements) in Self.migrations.enumerated().dropFirst(version) {
                for statement in statements {
                    try await self.execute(PostgresQuery(unsafeSQL: statement), on: connection)
                }
                let applied = Int64(index + 1)
                try await self.execute(
                    "INSERT INTO stork_stream_schema_migrations (version) VALUES (\(applied))",
                    on: connection
                )
            }
        }
    }

    // MARK: Connection

    /// A failure of the connection under an operation (the server closed it, restarted, or the network broke), as
    /// opposed to an error the server reported for the statement.
    private struct ConnectionLost: Error {
        var underlying: any Error
    }

    /// The connection was found closed just before a statement was sent.
    private struct ConnectionClosed: Error, CustomStringConvertible {
        var description: String { "the connection is closed" }
    }

    /// The open connection, opening one (and migrating the schema, once per store) if needed. Every connection this
    /// store drops is closed first.
    private func connect() async throws -> PostgresConnection {
        while true {
            guard !self.isClosed else {
                throw StorkError(.storeFailed, "the PostgreSQL store of stream '\(self.stream)' is closed")
            }
            if let connection = self.connection, !connection.isClosed { return connection }
            guard self.isConnecting else { break }
            try await Task.sleep(for: .milliseconds(5))
        }
        self.isConnecting = true
        defer { self.isConnecting = false }
        if let stale = self.connection {
            self.connection = nil
            try? await stale.close()
            self.logger.info("reconnecting to PostgreSQL", metadata: ["stork.store.server": "\(self.description)"])
        }
        self.nextConnectionID += 1
        let connection = try await PostgresConnection.connect(
            on: self.eventLoop,
            configuration: self.configuration,
            id: self.nextConnectionID,
            logger: self.logger
        )
        do {
            if !self.isSchemaReady {
                try await self.migrate(connection)
                self.isSchemaReady = true
            }
            guard !self.isClosed else {
                throw StorkError(.storeFailed, "the PostgreSQL store of stream '\(self.stream)' is closed")
            }
        } catch {
            try? await connection.close()
            throw error
        }
        self.connection = connection
        return connection
    }

    /// Runs `body` once. A connection that broke under it, or whose operation was cancelled, is closed (the next
    /// operation opens a new one); a broken connection is reported as `ConnectionLost`.
    private func attempt<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        let connection = try await self.connect()
        do {
            return try await body(connection)
        } catch {
            let cancelled = Task.isCancelled || error is CancellationError
            let lost = Self.isConnectionLost(error, on: connection)
            if cancelled || lost {
                if self.connection === connection { self.connection = nil }
                try? await connection.close()
            }
            throw lost && !cancelled ? ConnectionLost(underlying: error) : error
        }
    }

    /// Runs `body`; an idempotent one whose connection broke under it runs once more on a new connection. Errors
    /// come out as `storeFailed`.
    private func withConnection<T: Sendable>(
        _ operation: String,
        idempotent: Bool,
        _ body: (PostgresConnection) async throws -> T
    ) async throws -> T {
        do {
            return try await self.attempt(body)
        } catch let lost as ConnectionLost where idempotent {
            self.logger.info(
                "connection lost; retrying on a new connection",
                metadata: [
                    "stork.store.server": "\(self.description)", "stork.store.operation": "\(operation)",
                    "error": "\(Self.explain(lost.underlying))",
                ]
            )
            do {
                return try await self.attempt(body)
            } catch {
                throw self.storeError(operation, error)
            }
        } catch {
            throw self.storeError(operation, error)
        }
    }

    private static func isConnectionLost(_ error: any Error, on connection: PostgresConnection) -> Bool {
        if connection.isClosed || error is ConnectionClosed { return true }
        guard let error = error as? PSQLError else { return false }
        let lostCodes: [PSQLError.Code] = [
            .serverClosedConnection, .clientClosedConnection, .connectionError, .uncleanShutdown,
        ]
        if lostCodes.contains(error.code) { return true }
        // Class 08 (connection exception) and 57P (the server is shutting down or starting up).
        guard error.code == .server, let state = error.serverInfo?[.sqlState] else { return false }
        return state.hasPrefix("08") || state.hasPrefix("57P")
    }

    private func storeError(_ operation: String, _ error: any Error) -> StorkError {
        let error = (error as? ConnectionLost)?.underlying ?? error
        if let error = error as? StorkError { return error }
        // PSQLError's description hides the server's message; `explain` has it (and no password: the connection
        // configuration is not part of it).
        return StorkError(
            .storeFailed,
            "\(operation) of stream '\(self.stream)' in PostgreSQL \(self.description) failed: \(Self.explain(error))"
        )
    }

    static func explain(_ error: any Error) -> String {
        if let error = error as? PSQLError {
            if let message = error.serverInfo?[.message] { return "\(error.code): \(message)" }
            return "\(error.code)"
        }
        return String(describing: error)
    }
}
