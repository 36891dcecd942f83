import Foundation
import Logging
import NIOPosix
import StorkCore
import StorkStreaming
import Synchronization

// MARK: - FileMessageStore

/// A message store in a directory of its own (one per stream): a segmented append-only log with a checksum on every
/// record, an index per segment, and recovery that cuts a torn or damaged tail instead of failing.
///
/// Layout of the directory:
///
///     00000000000000000001.log    a segment: records from sequence 1 on (named by the first sequence it may hold)
///     00000000000000000001.idx    its index (sequence → offset, subject, size, time), written when it is sealed
///     00000000000000004097.log    the active segment: appends go here
///     meta/k-<hex key>.meta       a metadata record
///     LOCK                        held (flock) while the store is open
///
/// An `append` builds the records of the whole batch in one buffer and writes them with one write(2); reads use
/// pread(2) at offsets from the in-memory index. Removals append a deletion record (ranges of sequences); a purge
/// also unlinks the segments wholly below it. Sealed segments whose messages are mostly removed are rewritten, and
/// deleted once all are. See ``FileMessageStoreConfiguration`` for syncing, verification and compaction.
public final class FileMessageStore: MessageStore {
    public let directory: String
    public let configuration: FileMessageStoreConfiguration
    private let log: SharedLog
    private let syncer = Mutex<BackgroundSyncer?>(nil)

    public init(
        directory: String,
        configuration: FileMessageStoreConfiguration = .init(),
        logger: Logger = Logger(label: "stork.store.file")
    ) {
        self.directory = directory
        self.configuration = configuration
        self.log = SharedLog(SegmentedLog(directory: directory, configuration: configuration, logger: logger))
    }

    deinit {
        // Dropped without `close()`: release the files at once, sync nothing (as if the process had died), and let
        // the syncer's thread end on its own.
        self.syncer.withLock { $0?.stopWithoutWaiting() }
        self.log.mutex.withLock { $0.abandon() }
    }

    public var kind: String { "file" }

    public func open() async throws -> MessageStoreRecovery {
        let recovery = try self.log.mutex.withLock { log in
            let recovery = try log.open()
            log.indexesInBackground = true
            return recovery
        }
        // The background thread fsyncs (`.batched`) and writes the indexes of sealed segments (always).
        let interval: Duration
        if case .batched(let batch) = self.configuration.fsync { interval = batch } else { interval = .milliseconds(100) }
        let syncer = BackgroundSyncer(log: self.log, interval: interval)
        self.syncer.withLock { $0 = syncer }
        return recovery
    }

    /// How `open()` read the segments: sealed ones from the summaries in their index files (the fast path), from
    /// whole index files (version 1, or a summary that did not check), or by a scan (no usable index; always the
    /// active segment).
    public struct RecoveryCounts: Sendable, Equatable, CustomStringConvertible {
        public var summaries = 0
        public var indexes = 0
        public var scans = 0

        public init(summaries: Int = 0, indexes: Int = 0, scans: Int = 0) {
            self.summaries = summaries
            self.indexes = indexes
            self.scans = scans
        }

        public var description: String { "\(self.summaries) summaries, \(self.indexes) index files, \(self.scans) scans" }
    }

    public var recoveryCounts: RecoveryCounts {
        self.log.mutex.withLock { $0.recoveryCounts }
    }

    /// How many records' offsets and lengths the store holds in memory now: the active segment's and those of the
    /// few sealed segments kept loaded. Bounded by the segment size, not by the stream's length.
    public var residentIndexEntries: Int {
        self.log.mutex.withLock { $0.residentIndexEntries }
    }

    /// Reads a block's detail from the records' headers (the index keeps only summaries of sealed blocks).
    public var indexLoader: (any StreamIndexLoader)? { FileIndexLoader(log: self.log) }

    public func append(_ messages: [StoredMessage]) async throws {
        try self.log.mutex.withLock { try $0.append(messages) }
    }

    public func message(_ sequence: UInt64) async throws -> StoredMessage? {
        try self.log.mutex.withLock { try $0.message(sequence) }
    }

    public func messages(from sequence: UInt64, limit: Int) async throws -> [StoredMessage] {
        try self.log.mutex.withLock { try $0.messages(from: sequence, limit: limit) }
    }

    public func remove(_ sequences: [UInt64]) async throws {
        try self.log.mutex.withLock { try $0.remove(sequences) }
    }

    public func purge(through sequence: UInt64) async throws {
        try self.log.mutex.withLock { try $0.purge(through: sequence) }
    }

    public func saveMetadata(key: String, value: [UInt8]?) async throws {
        try self.log.mutex.withLock { try $0.saveMetadata(key: key, value: value) }
    }

    public func close() async throws {
        await self.stopSyncer()
        try self.log.mutex.withLock { try $0.close() }
    }

    public func destroy() async throws {
        await self.stopSyncer()
        try self.log.mutex.withLock { try $0.destroy() }
    }

    private func stopSyncer() async {
        let syncer = self.syncer.withLock { syncer in
            defer { syncer = nil }
            return syncer
        }
        await syncer?.stop()
    }
}

// MARK: - Index loader

struct FileIndexLoader: StreamIndexLoader {
    let log: SharedLog

    func indexEntries(in range: ClosedRange<UInt64>) -> [MessageIndexEntry]? {
        self.log.mutex.withLock { log in
            do {
                return try log.indexEntries(in: range)
            } catch {
                log.logger.error(
                    "file store could not read the index of a block; the stream's limits and filters may miscount it",
                    metadata: [
                        "stork.store.directory": "\(log.directory)",
                        "stork.store.range": "\(range)",
                        "stork.store.error": "\(error)",
                    ]
                )
                return nil
            }
        }
    }
}

// MARK: - Shared log

/// The log behind its lock, shared by the store and its syncer thread (which must not keep the store itself alive).
final class SharedLog: Sendable {
    let mutex: Mutex<SegmentedLog>

    init(_ log: sending SegmentedLog) {
        self.mutex = Mutex(log)
    }

    /// One round of the background thread: fsync what is dirty, then index the segments sealed since the last round.
    func backgroundRound() {
        self.syncDirtyFiles()
        while let work = self.mutex.withLock({ $0.takeIndexWork() }) {
            var temporary: String?
            var failure: (any Error)?
            do { temporary = try SegmentedLog.writeIndexFile(work) } catch { failure = error }
            FileSystem.closeFile(work.descriptor)
            self.mutex.withLock { $0.finishIndex(work, temporary: temporary, error: failure) }
        }
    }

    /// Takes the fsync work under the lock and fsyncs without it.
    func syncDirtyFiles() {
        guard let work = self.mutex.withLock({ $0.takeSyncWork() }) else { return }
        do {
            try SegmentedLog.perform(work)
        } catch {
            let failure = error as? StorkError ?? StorkError(.storeFailed, "fsync", underlying: error)
            self.mutex.withLock { $0.recordSyncFailure(failure) }
        }
    }
}

// MARK: - Background syncer

/// The thread of a store that, once per interval, fsyncs files with unsynced writes (`.batched`) and writes the index
/// files of segments sealed since. It runs on a one-thread `NIOThreadPool` it owns; `stop()` wakes it, lets it
/// finish its round and shuts the pool down.
final class BackgroundSyncer: Sendable {
    private let signal = StopSignal()
    private let pool: NIOThreadPool

    init(log: SharedLog, interval: Duration) {
        self.pool = NIOThreadPool(numberOfThreads: 1)
        self.pool.start()
        let signal = self.signal
        self.pool.submit { _ in
            while signal.wait(for: interval) {
                log.backgroundRound()
            }
        }
    }

    func stop() async {
        self.signal.stop()
        try? await self.pool.shutdownGracefully()
    }

    func stopWithoutWaiting() {
        self.signal.stop()
        self.pool.shutdownGracefully { _ in }
    }
}

/// A stop flag that a thread can wait on with a timeout.
///
/// `@unchecked Sendable`: `stopped` is only read and written with `condition` locked.
private final class StopSignal: @unchecked Sendable {
    private let condition = NSCondition()
    private var stopped = false

    /// Waits for `interval` or until stopped; true when the interval passed without a stop.
    func wait(for interval: Duration) -> Bool {
        let deadline = Date(timeIntervalSinceNow: interval.secondsDouble)
        self.condition.lock()
        defer { self.condition.unlock() }
        while !self.stopped, Date() < deadline {
            _ = self.condition.wait(until: deadline)
        }
        return !self.stopped
    }

    func stop() {
        self.condition.lock()
        self.stopped = true
        self.condition.broadcast()
        self.condition.unlock()
    }
}
