import StorkCore

// MARK: - Stored messages

/// One message as a stream keeps it: its place in the stream, the subject it was published to, the raw NATS
/// header block (empty when the message had none) and the payload.
public struct StoredMessage: Sendable, Hashable {
    /// The stream sequence, from 1, assigned by the stream and never reused.
    public var sequence: UInt64
    /// The subject the message was published to.
    public var subject: String
    /// The header block exactly as it came on the wire (`NATS/1.0\r\n…\r\n\r\n`), or empty.
    public var headers: [UInt8]
    /// The payload.
    public var payload: [UInt8]
    /// When the stream stored it: nanoseconds since the Unix epoch, by the server's clock.
    public var timestamp: Int64

    public init(sequence: UInt64, subject: String, headers: [UInt8] = [], payload: [UInt8], timestamp: Int64) {
        self.sequence = sequence
        self.subject = subject
        self.headers = headers
        self.payload = payload
        self.timestamp = timestamp
    }

    /// The size counted against a stream's `max_bytes` and reported in its state: subject, headers, payload and a
    /// fixed overhead for sequence and timestamp (the same accounting in every store).
    public var accountedSize: UInt64 {
        UInt64(self.subject.utf8.count + self.headers.count + self.payload.count + 16)
    }

    /// What a stream keeps in memory about this message.
    public var indexEntry: MessageIndexEntry {
        MessageIndexEntry(sequence: self.sequence, subject: self.subject, size: self.accountedSize, timestamp: self.timestamp)
    }
}

/// What a stream's index knows about one message: its sequence, subject, accounted size and time (see
/// ``StreamIndex`` for which of these stay in memory).
public struct MessageIndexEntry: Sendable, Hashable {
    public var sequence: UInt64
    public var subject: String
    /// ``StoredMessage/accountedSize``.
    public var size: UInt64
    public var timestamp: Int64

    public init(sequence: UInt64, subject: String, size: UInt64, timestamp: Int64) {
        self.sequence = sequence
        self.subject = subject
        self.size = size
        self.timestamp = timestamp
    }
}

// MARK: - The store contract

/// What a store found when it opened: the messages it holds (in sequence order, without payloads), the highest
/// sequence it ever stored (which stays when messages are purged, so that sequences are never reused), and the
/// metadata records written with ``MessageStore/saveMetadata(key:value:)``.
public struct MessageStoreRecovery: Sendable, Equatable {
    /// The present messages, from stores that keep no index of their own.
    public var messages: [MessageIndexEntry]
    /// Or, from stores with a ``MessageStore/indexLoader``: the summaries of the blocks of present messages, in order
    /// (the per-message detail stays in the store).
    public var blocks: [StreamIndex.Block]
    /// The highest sequence ever appended, 0 when none; messages may have been removed since.
    public var lastSequence: UInt64
    public var metadata: [String: [UInt8]]
    /// Bytes of a torn or corrupt tail that recovery cut off (0 after a clean shutdown).
    public var truncatedBytes: UInt64

    public init(
        messages: [MessageIndexEntry] = [],
        blocks: [StreamIndex.Block] = [],
        lastSequence: UInt64 = 0,
        metadata: [String: [UInt8]] = [:],
        truncatedBytes: UInt64 = 0
    ) {
        self.messages = messages
        self.blocks = blocks
        self.lastSequence = lastSequence
        self.metadata = metadata
        self.truncatedBytes = truncatedBytes
    }
}

/// Where one stream keeps its messages and the state of its consumers.
///
/// The stream decides sequences, limits and what to remove; the store only persists and reads. Calls for one
/// store never overlap: the stream awaits one before it makes the next. A store is used by one process at a time.
///
/// Durability: when ``append(_:)`` returns, the messages survive a crash of the process (kill -9); whether they
/// also survive a crash of the machine depends on the store's sync policy (the file store's `fsync`, the
/// databases' commit).
public protocol MessageStore: Sendable {
    /// A short name for logs and monitoring, such as `file` or `postgres`.
    var kind: String { get }

    /// Opens the store, creating it when it does not exist, and recovers what it holds. Called once, first.
    func open() async throws -> MessageStoreRecovery

    /// Appends messages whose sequences grow and are greater than every sequence stored before (gaps are allowed:
    /// a sequence whose write failed is never reused). A batch that breaks the rule is refused whole.
    func append(_ messages: [StoredMessage]) async throws

    /// The message with this sequence, or nil when it was never stored or has been removed.
    func message(_ sequence: UInt64) async throws -> StoredMessage?

    /// Up to `limit` present messages with sequence ≥ `sequence`, in order, skipping removed ones.
    func messages(from sequence: UInt64, limit: Int) async throws -> [StoredMessage]

    /// Removes these messages (limits, message deletes). Unknown sequences are ignored.
    func remove(_ sequences: [UInt64]) async throws

    /// Removes every message with sequence ≤ `sequence`. The highest sequence stays as it is.
    func purge(through sequence: UInt64) async throws

    /// Writes (or, with nil, deletes) a small record kept beside the messages: the stream's configuration,
    /// a consumer's configuration and ack state. Durable when it returns.
    func saveMetadata(key: String, value: [UInt8]?) async throws

    /// Flushes and releases files and connections. The store is not used afterwards.
    func close() async throws

    /// Deletes everything the store holds (the stream is being deleted). The store is not used afterwards.
    func destroy() async throws

    /// How the stream's index reads per-message detail from the store, for a store whose recovery returns block
    /// summaries; nil for stores whose index keeps every message's detail in memory.
    var indexLoader: (any StreamIndexLoader)? { get }
}

extension MessageStore {
    public var indexLoader: (any StreamIndexLoader)? { nil }
}

// MARK: - Errors

extension StorkError.Code {
    /// A message store could not read or write its data.
    public static let storeFailed = StorkError.Code("store-failed")
    /// Another process opened the stream since this store did (a takeover): this store's writes are refused.
    public static let fenced = StorkError.Code("fenced")
}
