import Foundation
import Logging
import NIOCore
import SQLiteNIO
import StorkCore
import StorkStreaming
import Synchronization

// MARK: - SQLiteMessageStore
//
// Streams in one SQLite file: many streams (of one cluster or several) may share a file, each keyed by its cluster's
// name and its own, joined by the unit separator (U+001F, which neither name may contain) in the `name` and `stream`
// columns. Schema (version 2, created and migrated by Stork on first use, in an immediate transaction so that
// processes opening the file together do not race; version 2 gave rows from before it the migrating node's cluster):
//
//   stork_stream_schema(version INTEGER)                       -- one row: the schema version
//   stork_streams(name TEXT PRIMARY KEY, last_sequence INTEGER) -- the highest sequence ever appended; survives purges
//   stork_messages(stream TEXT, sequence INTEGER, subject TEXT, headers BLOB, payload BLOB,
//                  timestamp INTEGER (ns since the Unix epoch), PRIMARY KEY (stream, sequence))
//   stork_stream_metadata(stream TEXT, key TEXT, value BLOB, PRIMARY KEY (stream, key))
//
// Headers and payloads are never NULL (an empty one is a zero-length blob). `destroy()` deletes the stream's rows in
// all three tables. The file is in WAL mode with `synchronous = NORMAL`: every append is one `BEGIN IMMEDIATE` …
// `COMMIT` transaction, written to the write-ahead log before `append` returns, so a killed process (kill -9) loses
// nothing; the log is fsynced at checkpoints, so a crash of the machine or the OS may lose the latest commits (never
// the database). The other pragmas: `busy_timeout = 5000` (ms) for writers of other processes on the same file.

/// A `MessageStore` in an SQLite file that may hold many streams.
///
/// Stores of one process on the same file share one connection and one thread (see `SQLiteStreamDatabase`), so
/// appends of several streams queue in the process rather than on SQLite's lock. Other processes may use the file
/// too (each stream from one process at a time, as for every store); their writes wait for each other up to the busy
/// timeout.
public final class SQLiteMessageStore: MessageStore {
    /// The database file.
    public let path: String
    /// The stream's name.
    public let stream: String
    /// The cluster the stream belongs to (`cluster.name`).
    public let cluster: String
    /// The key of the stream's rows: cluster and stream name, joined by U+001F.
    let key: String
    private let logger: Logger
    private let state = Mutex(State())

    private struct State {
        var database: SQLiteStreamDatabase?
        var lastSequence: UInt64 = 0
        var isClosed = false
    }

    /// Rows per INSERT: 5 parameters each, well below SQLite's 32,766.
    static let rowsPerInsert = 1000

    public init(
        path: String,
        stream: String,
        cluster: String = "stork",
        logger: Logger = Logger(label: "stork.store.sqlite")
    ) {
        self.path = path
        self.stream = stream
        self.cluster = cluster
        self.key = Self.key(cluster: cluster, stream: stream)
        var logger = logger
        logger[metadataKey: "stork.stream"] = "\(stream)"
        self.logger = logger
    }

    deinit {
        // Dropped without `close()`: give the shared connection back without waiting.
        self.state.withLock { $0.database }?.releaseWithoutWaiting()
    }

    public var kind: String { "sqlite" }

    // MARK: MessageStore

    public func open() async throws -> MessageStoreRecovery {
        let database = try self.database()
        let stream = self.stream
        let key = self.key
        let recovery = try await self.run("open") {
            try await database.transaction { connection in
                _ = try await connection.query(
                    "INSERT INTO stork_streams (name, last_sequence) VALUES (?1, 0) ON CONFLICT (name) DO NOTHING",
                    [.text(key)]
                )
                let streamRows = try await connection.query(
                    "SELECT last_sequence FROM stork_streams WHERE name = ?1",
                    [.text(key)]
                )
                var recovery = MessageStoreRecovery()
                recovery.lastSequence = UInt64(max(0, Int64(streamRows.first?.column("last_sequence")?.integer ?? 0)))
                let messageRows = try await connection.query(
                    """
                    SELECT sequence, subject, length(headers) + length(payload) AS body, timestamp
                    FROM stork_messages WHERE stream = ?1 ORDER BY sequence
                    """,
                    [.text(key)]
                )
                recovery.messages.reserveCapacity(messageRows.count)
                for row in messageRows {
                    guard let sequence = row.column("sequence")?.integer, let subject = row.column("subject")?.string,
                        let body = row.column("body")?.integer, let timestamp = row.column("timestamp")?.integer
                    else { throw StorkError(.storeFailed, "a message row of stream '\(stream)' is incomplete") }
                    recovery.messages.append(
                        SQLStoreRules.indexEntry(
                            sequence: Int64(sequence),
                            subject: subject,
                            bodyLength: Int64(body),
                            timestamp: Int64(timestamp)
                        )
                    )
                }
                // Never below a stored message, even if the stream row was edited by hand.
                recovery.lastSequence = max(recovery.lastSequence, recovery.messages.last?.sequence ?? 0)
                let metadataRows = try await connection.query(
                    "SELECT key, value FROM stork_stream_metadata WHERE stream = ?1",
                    [.text(key)]
                )
                for row in metadataRows {
                    guard let key = row.column("key")?.string else { continue }
                    recovery.metadata[key] = Self.bytes(row.column("value"))
                }
                return recovery
            }
        }
        self.state.withLock { $0.lastSequence = recovery.lastSequence }
        self.logger.debug(
            "opened SQLite message store",
            metadata: [
                "stork.store.path": "\(self.path)", "stork.store.messages": "\(recovery.messages.count)",
                "stork.store.last_sequence": "\(recovery.lastSequence)",
            ]
        )
        return recovery
    }

    public func append(_ messages: [StoredMessage]) async throws {
        let database = try self.database()
        let lastSequence = self.state.withLock { $0.lastSequence }
        guard let (first, last) = try SQLStoreRules.checkBatch(messages, after: lastSequence) else { return }
        let stream = self.stream
        let key = self.key
        try await self.run("append") {
            try await database.transaction { connection in
                // The database's own check: another writer (a second process on the same stream) is refused here.
                let advanced = try await connection.query(
                    """
                    UPDATE stork_streams SET last_sequence = ?2 WHERE name = ?1 AND last_sequence < ?3
                    RETURNING last_sequence
                    """,
                    [
                        .text(key), .integer(Int(SQLStoreRules.column(last))),
                        .integer(Int(SQLStoreRules.column(first))),
                    ]
                )
                guard !advanced.isEmpty else {
                    throw StorkError(
                        .storeFailed,
                        "append from sequence \(first): stream '\(stream)' already holds that sequence or a later one"
                    )
                }
                for chunk in stride(from: 0, to: messages.count, by: Self.rowsPerInsert) {
                    let rows = messages[chunk..<min(chunk + Self.rowsPerInsert, messages.count)]
                    _ = try await connection.query(Self.insertStatement(rows: rows.count), Self.binds(key, rows))
                }
            }
        }
        self.state.withLock { $0.lastSequence = last }
    }

    public func message(_ sequence: UInt64) async throws -> StoredMessage? {
        let database = try self.database()
        let stream = self.stream
        let key = self.key
        return try await self.run("read") {
            try await database.withConnection { connection in
                let rows = try await connection.query(
                    """
                    SELECT sequence, subject, headers, payload, timestamp FROM stork_messages
                    WHERE stream = ?1 AND sequence = ?2
                    """,
                    [.text(key), .integer(Int(SQLStoreRules.column(sequence)))]
                )
                return try rows.first.map { try Self.message($0, stream: stream) }
            }
        }
    }

    public func messages(from sequence: UInt64, limit: Int) async throws -> [StoredMessage] {
        guard limit > 0 else { return [] }
        let database = try self.database()
        let stream = self.stream
        let key = self.key
        return try await self.run("read") {
            try await database.withConnection { connection in
                let rows = try await connection.query(
                    """
                    SELECT sequence, subject, headers, payload, timestamp FROM stork_messages
                    WHERE stream = ?1 AND sequence >= ?2 ORDER BY sequence LIMIT ?3
                    """,
                    [
                        .text(key), .integer(Int(SQLStoreRules.column(sequence))),
                        .integer(Int(SQLStoreRules.column(limit: limit))),
                    ]
                )
                return try rows.map { try Self.message($0, stream: stream) }
            }
        }
    }

    public func remove(_ sequences: [UInt64]) async throws {
        let present = sequences.filter { $0 <= SQLStoreRules.maximumSequence }
        guard !present.isEmpty else { return }
        let database = try self.database()
        let key = self.key
        let list = "[" + present.map(String.init).joined(separator: ",") + "]"
        try await self.run("remove") {
            try await database.withConnection { connection in
                _ = try await connection.query(
                    "DELETE FROM stork_messages WHERE stream = ?1 AND sequence IN (SELECT value FROM json_each(?2))",
                    [.text(key), .text(list)]
                )
            }
        }
    }

    public func purge(through sequence: UInt64) async throws {
        let database = try self.database()
        let key = self.key
        try await self.run("purge") {
            try await database.withConnection { connection in
                _ = try await connection.query(
                    "DELETE FROM stork_messages WHERE stream = ?1 AND sequence <= ?2",
                    [.text(key), .integer(Int(SQLStoreRules.column(sequence)))]
                )
            }
        }
    }

    public func saveMetadata(key: String, value: [UInt8]?) async throws {
        let database = try self.database()
        let streamKey = self.key
        try await self.run("save metadata") {
            try await database.withConnection { connection in
                if let value {
                    _ = try await connection.query(
                        """
                        INSERT INTO stork_stream_metadata (stream, key, value) VALUES (?1, ?2, ifnull(?3, x''))
                        ON CONFLICT (stream, key) DO UPDATE SET value = excluded.value
                        """,
                        [.text(streamKey), .text(key), .blob(ByteBuffer(bytes: value))]
                    )
                } else {
                    _ = try await connection.query(
                        "DELETE FROM stork_stream_metadata WHERE stream = ?1 AND key = ?2",
                        [.text(streamKey), .text(key)]
                    )
                }
            }
        }
    }

    public func close() async throws {
        let database = self.state.withLock { state in
            defer {
                state.database = nil
                state.isClosed = true
            }
            return state.database
        }
        await database?.release()
    }

    public func destroy() async throws {
        let database = try self.database()
        let key = self.key
        try await self.run("destroy") {
            try await database.transaction { connection in
                _ = try await connection.query("DELETE FROM stork_messages WHERE stream = ?1", [.text(key)])
                _ = try await connection.query("DELETE FROM stork_stream_metadata WHERE stream = ?1", [.text(key)])
                _ = try await connection.query("DELETE FROM stork_streams WHERE name = ?1", [.text(key)])
            }
        }
        try await self.close()
    }

    // MARK: Helpers

    /// The shared database, retained on first use.
    private func database() throws -> SQLiteStreamDatabase {
        try self.state.withLock { state in
            guard !state.isClosed else {
                throw StorkError(.storeFailed, "the SQLite store of stream '\(self.stream)' is closed")
            }
            if let database = state.database { return database }
            let database = SQLiteStreamDatabase.retain(path: self.path, cluster: self.cluster, logger: self.logger)
            state.database = database
            return database
        }
    }

    /// Runs one operation; errors other than Stork's own become `storeFailed` errors that name the operation.
    private func run<T: Sendable>(_ operation: String, _ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as StorkError {
            throw error
        } catch {
            throw StorkError(
                .storeFailed,
                "\(operation) of stream '\(self.stream)' in SQLite \(self.path) failed",
                underlying: error
            )
        }
    }

    /// The key of a stream's rows.
    static func key(cluster: String, stream: String) -> String { "\(cluster)\u{1F}\(stream)" }

    /// `INSERT … VALUES (?1, ?2, …), (?1, ?7, …), …` for `rows` messages: the stream once, then five per message.
    static func insertStatement(rows: Int) -> String {
        var sql = "INSERT INTO stork_messages (stream, sequence, subject, headers, payload, timestamp) VALUES "
        sql.reserveCapacity(sql.utf8.count + rows * 64)
        for row in 0..<rows {
            let base = 2 + row * 5
            if row > 0 { sql += ", " }
            sql += "(?1, ?\(base), ?\(base + 1), ifnull(?\(base + 2), x''), ifnull(?\(base + 3), x''), ?\(base + 4))"
        }
        return sql
    }

    private static func binds(_ key: String, _ messages: ArraySlice<StoredMessage>) -> [SQLiteData] {
        var binds: [SQLiteData] = [.text(key)]
        binds.reserveCapacity(1 + messages.count * 5)
        for message in messages {
            binds.append(.integer(Int(message.sequence)))
            binds.append(.text(message.subject))
            // A zero-length blob may bind as NULL; the statement turns NULL back into an empty blob.
            binds.append(.blob(ByteBuffer(bytes: message.headers)))
            binds.append(.blob(ByteBuffer(bytes: message.payload)))
            binds.append(.integer(Int(message.timestamp)))
        }
        return binds
    }

    private static func message(_ row: SQLiteRow, stream: String) throws -> StoredMessage {
        guard let sequence = row.column("sequence")?.integer, let subject = row.column("subject")?.string,
            let timestamp = row.column("timestamp")?.integer
        else { throw StorkError(.storeFailed, "a message row of stream '\(stream)' is incomplete") }
        return StoredMessage(
            sequence: UInt64(max(0, Int64(sequence))),
            subject: subject,
            headers: Self.bytes(row.column("headers")),
            payload: Self.bytes(row.column("payload")),
            timestamp: Int64(timestamp)
        )
    }

    /// The bytes of a blob column; a zero-length blob may read back as NULL.
    private static func bytes(_ data: SQLiteData?) -> [UInt8] {
        guard let buffer = data?.blob else { return [] }
        return Array(buffer.readableBytesView)
    }
}
