// MARK: - FileMessageStoreConfiguration

/// How a ``FileMessageStore`` lays out, syncs, verifies and compacts its files. The defaults suit a server.
public struct FileMessageStoreConfiguration: Sendable, Hashable {
    /// When appended messages reach the disk (not only the kernel).
    public enum SyncPolicy: Sendable, Hashable {
        /// `append` returns after the write and an `fdatasync`: the messages survive a crash of the machine.
        case always
        /// `append` returns after the write(2): the messages survive a crash of the process (kill -9), and a
        /// background thread of the store syncs files with unsynced writes at most once per interval, so a crash of
        /// the machine loses at most about that much. `close()` syncs.
        case batched(Duration)
    }

    /// How much of the store `open()` reads to check checksums.
    public enum RecoveryVerification: Sendable, Hashable {
        /// Every record of the active (last) segment; sealed segments are read from their index files (and scanned
        /// only when one is missing or stale). Opening costs little however large the stream. A damaged record in a
        /// sealed segment is found when it is read: the read fails, and the next `open()` scans that segment and
        /// cuts it at the damage.
        case activeSegment
        /// Every record of every segment: opening reads the whole stream, and damage anywhere is cut at once.
        case allSegments
    }

    /// A segment is sealed and a new one started when an append would take it past this size. One append always goes
    /// whole into one segment, which may so exceed this. Default 16 MiB.
    public var segmentMaxBytes: Int

    /// When appends, removals and purges are synced. Default `.batched(.milliseconds(100))`. Whatever the policy,
    /// `saveMetadata` syncs before it returns, a compacted segment is synced before it replaces the old one, a
    /// segment sealed with unsynced writes is synced by the background thread within the batch interval (not inside
    /// the append that seals it), and the new segment a purge of everything starts is synced at once (its name keeps
    /// the highest sequence).
    public var fsync: SyncPolicy

    /// A sealed segment is rewritten without its removed messages when they take at least this fraction of its
    /// bytes, not counting removed messages at its head (the oldest ones, which go when the whole segment goes). A
    /// segment whose messages are all removed is deleted at once. Greater than 1 turns compaction off. Default 0.5.
    public var compactionThreshold: Double

    /// What `open()` verifies. Default `.activeSegment`.
    public var verification: RecoveryVerification

    /// How many sealed segments keep a file descriptor open for reads at once (least recently read closed first).
    /// Default 32.
    public var maximumOpenSegments: Int

    /// How many sealed segments keep their in-memory index (sequence, offset and length per record: 20 bytes a
    /// message) at once; the others read it back from their index file when needed (least recently used dropped
    /// first). Default 2.
    public var maximumLoadedSegments: Int

    public init(
        segmentMaxBytes: Int = 16 << 20,
        fsync: SyncPolicy = .batched(.milliseconds(100)),
        compactionThreshold: Double = 0.5,
        verification: RecoveryVerification = .activeSegment,
        maximumOpenSegments: Int = 32,
        maximumLoadedSegments: Int = 2
    ) {
        self.maximumLoadedSegments = maximumLoadedSegments
        self.segmentMaxBytes = segmentMaxBytes
        self.fsync = fsync
        self.compactionThreshold = compactionThreshold
        self.verification = verification
        self.maximumOpenSegments = maximumOpenSegments
    }
}
