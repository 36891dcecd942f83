import Foundation
import Logging
import StorkCore
import StorkStreaming

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - SegmentedLog
//
// The file store's engine: a directory of segment files named by the first sequence each may hold, the last one
// active (appended to), the others sealed. Removals are deletion records appended to the active segment (a list of
// sequence ranges); whole segments below a purge are unlinked. The name of the active segment is always at most the
// highest sequence + 1, so that the highest sequence survives when every message is gone.
//
// Not thread-safe: `FileMessageStore` keeps it in a `Mutex`.

final class SegmentedLog {
    private enum Phase {
        case created, open, closed
    }

    /// What the background syncer does outside the lock: fsync a duplicate of the active descriptor and/or the
    /// directory.
    struct SyncWork {
        var descriptor: Int32?
        var path = ""
        var directory: String?
        /// Duplicates of segments sealed with unsynced writes (`.batched`), each closed once synced.
        var sealed: [(descriptor: Int32, path: String)] = []
    }

    let directory: String
    let configuration: FileMessageStoreConfiguration
    let logger: Logger
    private let metadata: MetadataDirectory
    private var phase = Phase.created
    private var lock: DirectoryLock?
    /// In start order; the last is the active segment.
    private var segments: [Segment] = []
    private var lastSequence: UInt64 = 0
    /// A buffer for encoding appends and for reads, grown as needed.
    private var scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 8)
    /// Sealed segments with an open descriptor, least recently read first.
    private var openSegments: [Segment] = []
    /// Sealed segments with their arrays in memory, least recently used first (see `ensureLoaded`).
    private var loadedSegments: [Segment] = []
    /// Writes to the active segment not yet synced (`.batched`).
    private var activeDirty = false
    /// Segments sealed with writes not yet synced (`.batched`): duplicates of their descriptors for the background
    /// thread, so that a roll never holds appends (and their acks) behind an fsync.
    private var sealedDirty: [(descriptor: Int32, path: String)] = []
    /// Names created or removed not yet synced (`.batched`).
    private var directoryDirty = false
    /// A failed fsync: the kernel may have dropped the data, so the log takes no more writes.
    private var syncFailure: StorkError?
    /// Sealed segments whose index file is still to be written, oldest first: by the background thread, outside the
    /// lock, so that a roll never holds appends (and their acks) behind a scan of the whole segment.
    private var unindexed: [Segment] = []
    /// How the last `open()` read its segments: sealed ones from their index files' summaries, from whole index
    /// files, or by a scan (the active one is always scanned).
    private(set) var recoveryCounts = FileMessageStore.RecoveryCounts()
    /// Whether a background thread takes the index work (``takeIndexWork()``); without one a roll writes it itself.
    var indexesInBackground = false

    /// A sealed segment's index to build outside the lock: a duplicate descriptor of its file and what it was.
    struct IndexWork {
        var start: UInt64
        var logPath: String
        var indexPath: String
        var size: UInt64
        var generation: UInt64
        var descriptor: Int32
    }

    init(directory: String, configuration: FileMessageStoreConfiguration, logger: Logger) {
        self.directory = directory
        self.configuration = configuration
        self.logger = logger
        self.metadata = MetadataDirectory(storeDirectory: directory)
    }

    deinit {
        self.abandon()
        self.scratch.deallocate()
    }

    private var active: Segment { self.segments[self.segments.count - 1] }

    private var isAlwaysSynced: Bool { self.configuration.fsync == .always }

    // MARK: - Open and recover

    func open() throws -> MessageStoreRecovery {
        guard self.phase == .created else {
            throw StorkError(.storeFailed, "file store \(self.directory) was already opened")
        }
        do {
            try FileManager.default.createDirectory(atPath: self.directory, withIntermediateDirectories: true)
        } catch {
            throw StorkError(.storeFailed, "create \(self.directory)", underlying: error)
        }
        try FileSystem.createDirectory(self.metadata.path)
        self.lock = try DirectoryLock(directory: self.directory)
        do {
            let recovery = try self.recover()
            self.phase = .open
            return recovery
        } catch {
            self.abandon()
            throw error
        }
    }

    private func recover() throws -> MessageStoreRecovery {
        var starts: [UInt64] = []
        var indexFiles: [String] = []
        for name in try FileSystem.contentsOfDirectory(self.directory) {
            if name.hasSuffix(".tmp") {
                try FileSystem.removeFile("\(self.directory)/\(name)")
            } else if let start = Segment.start(ofLogFileNamed: name) {
                starts.append(start)
            } else if name.hasSuffix(".idx") {
                indexFiles.append(name)
            }
        }
        starts.sort()
        // An index whose segment is gone (a crash while a segment was deleted).
        let logNames = Set(starts.map { Segment.fileName($0) })
        for name in indexFiles where !logNames.contains(String(name.dropLast(4))) {
            try FileSystem.removeFile("\(self.directory)/\(name)")
        }

        var truncatedBytes: UInt64 = 0
        // Per segment kept: the summaries of its messages' blocks before deletions are applied. The active segment's
        // details stay for a second summary; sealed segments drop their arrays once summarised (read back on use).
        var summaries: [[StreamIndex.Block]] = []
        var activeEntries: [MessageIndexEntry] = []
        for (position, start) in starts.enumerated() {
            let isLast = position == starts.count - 1
            let segment = Segment(start: start, directory: self.directory)
            segment.isSealed = !isLast
            var blocks: [StreamIndex.Block]?
            var entries: [MessageIndexEntry] = []
            if segment.isSealed, self.configuration.verification == .activeSegment {
                blocks = try self.recoverFromSummary(segment, limit: starts[position + 1])
                if blocks != nil { self.recoveryCounts.summaries += 1 }
            }
            if blocks == nil {
                let (contents, cut) = try self.recoverSegment(segment, limit: isLast ? nil : starts[position + 1])
                truncatedBytes += cut
                entries = contents.entries
            }
            if segment.isSealed, segment.size == 0 {
                // Nothing left to read, and only the last segment's name matters for the highest sequence.
                FileSystem.closeFile(segment.descriptor)
                try FileSystem.removeFile(segment.logPath)
                try FileSystem.removeFile(segment.indexPath)
                self.directoryDirty = true
                continue
            }
            if segment.isSealed {
                FileSystem.closeFile(segment.descriptor)
                segment.descriptor = -1
            }
            self.segments.append(segment)
            summaries.append(blocks ?? Self.summaries(of: segment, entries))
            if segment.isSealed { segment.unload() } else { activeEntries = entries }
        }
        if self.segments.isEmpty {
            try self.createActiveSegment(start: 1)
            summaries.append([])
        }
        for position in try self.applyDeletions() {
            let segment = self.segments[position]
            let entries = segment.isSealed ? try self.details(of: segment) : activeEntries
            summaries[position] = Self.summaries(of: segment, entries)
        }
        for segment in self.segments where segment.isSealed { segment.unload() }
        self.loadedSegments = []

        self.lastSequence = self.active.start - 1
        for segment in self.segments.reversed() {
            if let last = segment.lastSequence {
                self.lastSequence = max(self.lastSequence, last)
                break
            }
        }
        var builder = StreamIndex.Builder()
        for blocks in summaries { builder.add(blocks) }
        let metadata = try self.metadata.load(logger: self.logger)
        if self.directoryDirty { try self.syncDirectoryNow() }
        self.logger.debug(
            "file store opened",
            metadata: [
                "stork.store.directory": "\(self.directory)",
                "stork.store.segments": "\(self.segments.count)",
                "stork.store.opened_from": "\(self.recoveryCounts)",
                "stork.store.messages": "\(self.segments.reduce(0) { $0 + $1.liveCount })",
                "stork.store.last_sequence": "\(self.lastSequence)",
                "stork.store.truncated_bytes": "\(truncatedBytes)",
            ]
        )
        return MessageStoreRecovery(
            blocks: builder.blocks,
            lastSequence: self.lastSequence,
            metadata: metadata,
            truncatedBytes: truncatedBytes
        )
    }

    /// The summaries of the blocks of `segment`'s present messages; `entries` are its records' details.
    private static func summaries(of segment: Segment, _ entries: [MessageIndexEntry]) -> [StreamIndex.Block] {
        var builder = StreamIndex.Builder()
        for (position, entry) in entries.enumerated() where !segment.isRemoved(position) { builder.add(entry) }
        return builder.blocks
    }

    /// Every record's subject, size and time in a sealed segment, from its index file or a scan.
    private func details(of segment: Segment) throws -> [MessageIndexEntry] {
        if let bytes = try FileSystem.contents(of: segment.indexPath),
            let contents = SegmentIndexFile.decode(bytes, start: segment.start, logSize: segment.size)
        {
            return contents.entries
        }
        return try self.scan(segment).entries
    }

    /// A scan of a sealed segment's whole file, which must be clean (checksums are checked again by every read).
    private func scan(_ segment: Segment, verifyChecksums: Bool = true) throws -> SegmentContents {
        let contents = try SegmentScanner.scan(
            descriptor: try self.readDescriptor(segment),
            path: segment.logPath,
            size: segment.size,
            start: segment.start,
            limit: nil,
            verifyChecksums: verifyChecksums
        )
        if let damage = contents.damage {
            throw StorkError(.storeFailed, "\(segment.logPath) is damaged at offset \(contents.validBytes): \(damage)")
        }
        return contents
    }

    /// Brings back a sealed segment's arrays (from its index file, or a scan), and notes it as recently used; the
    /// least recently used beyond `maximumLoadedSegments` drop theirs.
    private func ensureLoaded(_ segment: Segment) throws {
        if !segment.isLoaded {
            var contents: SegmentContents?
            if segment.hasIndexFile, let bytes = try FileSystem.contents(of: segment.indexPath) {
                contents = SegmentIndexFile.decode(bytes, start: segment.start, logSize: segment.size, details: false)
            }
            guard segment.restore(try contents ?? self.scan(segment, verifyChecksums: false)) else {
                throw StorkError(.storeFailed, "\(segment.logPath) no longer holds the records its index listed")
            }
        }
        guard segment.isSealed, self.loadedSegments.last !== segment else { return }
        self.loadedSegments.removeAll { $0 === segment }
        self.loadedSegments.append(segment)
        while self.loadedSegments.count > max(1, self.configuration.maximumLoadedSegments) {
            self.loadedSegments.removeFirst().unload()
        }
    }

    /// Opens a sealed segment from the header and tail of its index file (version 2): its count, deletions and block
    /// summaries, not its entries. Leaves its descriptor open; nil (descriptor closed) when the index does not serve.
    private func recoverFromSummary(_ segment: Segment, limit: UInt64) throws -> [StreamIndex.Block]? {
        segment.descriptor = try FileSystem.openFile(segment.logPath, O_RDWR)
        do {
            let size = try FileSystem.fileSize(segment.descriptor, path: segment.logPath)
            if let summary = try SegmentIndexFile.readSummary(
                path: segment.indexPath,
                start: segment.start,
                limit: limit,
                logSize: size
            ) {
                segment.loadSummary(summary, size: size)
                return summary.blocks
            }
        } catch {
            FileSystem.closeFile(segment.descriptor)
            segment.descriptor = -1
            throw error
        }
        FileSystem.closeFile(segment.descriptor)
        segment.descriptor = -1
        return nil
    }

    /// Reads one segment's index file or scans it, cuts a damaged tail, and loads its in-memory index. Leaves its
    /// descriptor open (read-write). Returns what it holds and how many bytes were cut.
    private func recoverSegment(
        _ segment: Segment,
        limit: UInt64?
    ) throws -> (contents: SegmentContents, cut: UInt64) {
        segment.descriptor = try FileSystem.openFile(segment.logPath, O_RDWR)
        do {
            let size = try FileSystem.fileSize(segment.descriptor, path: segment.logPath)
            var contents: SegmentContents?
            if segment.isSealed, self.configuration.verification == .activeSegment,
                let bytes = try FileSystem.contents(of: segment.indexPath)
            {
                contents = SegmentIndexFile.decode(bytes, start: segment.start, logSize: size)
                if contents == nil {
                    self.logger.info(
                        "file store index is stale or damaged, scanning its segment",
                        metadata: ["stork.store.file": "\(segment.indexPath)"]
                    )
                }
            }
            let scanned = contents == nil
            if scanned { self.recoveryCounts.scans += 1 } else { self.recoveryCounts.indexes += 1 }
            var found =
                try contents
                ?? SegmentScanner.scan(
                    descriptor: segment.descriptor,
                    path: segment.logPath,
                    size: size,
                    start: segment.start,
                    limit: limit,
                    verifyChecksums: true
                )
            var cut: UInt64 = 0
            if let damage = found.damage {
                cut = size - found.validBytes
                self.logger.warning(
                    "file store cut a damaged tail",
                    metadata: [
                        "stork.store.file": "\(segment.logPath)",
                        "stork.store.offset": "\(found.validBytes)",
                        "stork.store.cut_bytes": "\(cut)",
                        "stork.store.damage": "\(damage)",
                        "stork.store.segment": "\(segment.isSealed ? "sealed" : "active")",
                    ]
                )
                try FileSystem.truncateFile(segment.descriptor, to: found.validBytes, path: segment.logPath)
                try FileSystem.syncFile(segment.descriptor, path: segment.logPath)
                found.damage = nil
                if segment.isSealed { try FileSystem.removeFile(segment.indexPath) }
            }
            segment.load(found, size: found.validBytes)
            if segment.isSealed, !scanned {
                segment.hasIndexFile = true
            } else if segment.isSealed, found.validBytes > 0 {
                self.writeIndex(of: segment, contents: found)
            }
            return (found, cut)
        } catch {
            FileSystem.closeFile(segment.descriptor)
            segment.descriptor = -1
            throw error
        }
    }

    /// Marks removed every message that a deletion record in any segment names; returns the positions of the segments
    /// it touched.
    private func applyDeletions() throws -> [Int] {
        var ranges = self.segments.flatMap(\.deletions)
        guard !ranges.isEmpty else { return [] }
        ranges.sort { $0.lowerBound < $1.lowerBound }
        var merged: [ClosedRange<UInt64>] = []
        merged.reserveCapacity(ranges.count)
        for range in ranges {
            if let last = merged.last, range.lowerBound == 0 || range.lowerBound - 1 <= last.upperBound {
                merged[merged.count - 1] = last.lowerBound...max(last.upperBound, range.upperBound)
            } else {
                merged.append(range)
            }
        }
        var touched: [Int] = []
        for (position, segment) in self.segments.enumerated() {
            guard let first = segment.firstSequence, let last = segment.lastSequence else { continue }
            // The first range that ends at or after this segment's first message.
            var low = 0
            var high = merged.count
            while low < high {
                let middle = (low + high) / 2
                if merged[middle].upperBound < first { low = middle + 1 } else { high = middle }
            }
            if low < merged.count, merged[low].lowerBound <= last {
                try self.ensureLoaded(segment)
                touched.append(position)
            }
            while low < merged.count, merged[low].lowerBound <= last {
                var index = segment.firstIndex(atOrAfter: merged[low].lowerBound)
                while index < segment.count, segment.sequences[index] <= merged[low].upperBound {
                    segment.markRemoved(index)
                    index += 1
                }
                low += 1
            }
        }
        return touched
    }

    // MARK: - Append

    func append(_ messages: [StoredMessage]) throws {
        try self.checkWritable()
        guard !messages.isEmpty else { return }
        var previous = self.lastSequence
        var total = 0
        for message in messages {
            guard message.sequence > previous else {
                throw StorkError(
                    .storeFailed,
                    "append of sequence \(message.sequence) after \(previous): sequences must grow"
                )
            }
            guard let length = LogRecord.encodedLength(of: message) else {
                throw StorkError(
                    .storeFailed,
                    "message \(message.sequence) is too large for the file store (subject over 65535 bytes or "
                        + "record over \(LogRecord.maximumLength) bytes)"
                )
            }
            total += length
            previous = message.sequence
        }
        if self.active.size > 0, self.active.size + UInt64(total) > UInt64(self.configuration.segmentMaxBytes) {
            try self.rollOver()
        }
        self.reserveScratch(total)
        let segment = self.active
        let entriesBefore = segment.count
        segment.reserveCapacity(adding: messages.count)
        var position = 0
        let base = self.scratch.baseAddress!
        for message in messages {
            let length = LogRecord.encodedLength(of: message)!
            LogRecord.encode(message, length: length, into: base + position)
            segment.appendEntry(sequence: message.sequence, offset: segment.size + UInt64(position), length: length)
            position += length
        }
        do {
            try self.writeToActive(UnsafeRawBufferPointer(start: base, count: total))
        } catch {
            segment.truncateEntries(to: entriesBefore)
            throw error
        }
        self.lastSequence = previous
    }

    /// Appends bytes (whole records) to the active segment and syncs by the policy.
    private func writeToActive(_ bytes: UnsafeRawBufferPointer) throws {
        let segment = self.active
        do {
            try FileSystem.writeFile(segment.descriptor, bytes, at: segment.size, path: segment.logPath)
        } catch {
            // Cut whatever part of the write reached the file, so that the next append starts on a boundary.
            try? FileSystem.truncateFile(segment.descriptor, to: segment.size, path: segment.logPath)
            throw error
        }
        segment.size += UInt64(bytes.count)
        if self.isAlwaysSynced {
            do {
                try Self.syncData(segment.descriptor, path: segment.logPath)
            } catch let error as StorkError {
                self.syncFailure = error
                throw error
            }
        } else {
            self.activeDirty = true
        }
    }

    /// Seals the active segment (synced, with an index file) and starts a new one named after the highest sequence.
    private func rollOver() throws {
        let old = self.active
        if self.activeDirty {
            let duplicate = dup(old.descriptor)
            if duplicate >= 0 {
                self.sealedDirty.append((duplicate, old.logPath))
            } else {
                try Self.syncData(old.descriptor, path: old.logPath)
            }
            self.activeDirty = false
        }
        try self.createActiveSegment(start: self.lastSequence + 1)
        old.isSealed = true
        if self.indexesInBackground { self.unindexed.append(old) } else { self.buildIndex(old) }
        self.rememberOpen(old)
        try self.ensureLoaded(old)
        self.compactIfWorthwhile(old)
    }

    private func createActiveSegment(start: UInt64) throws {
        let segment = Segment(start: start, directory: self.directory)
        segment.descriptor = try FileSystem.openFile(segment.logPath, O_RDWR | O_CREAT | O_EXCL)
        self.segments.append(segment)
        try self.directoryChanged()
    }

    // MARK: - Read

    func message(_ sequence: UInt64) throws -> StoredMessage? {
        try self.checkOpen()
        guard let segment = self.segment(containing: sequence) else { return nil }
        try self.ensureLoaded(segment)
        guard let index = segment.index(of: sequence), !segment.isRemoved(index) else { return nil }
        let length = Int(segment.lengths[index])
        self.reserveScratch(length)
        let descriptor = try self.readDescriptor(segment)
        let offset = segment.offsets[index]
        let read = try FileSystem.readFile(
            descriptor,
            into: self.scratch,
            count: length,
            at: offset,
            path: segment.logPath
        )
        return try self.decodeMessage(
            UnsafeRawPointer(self.scratch.baseAddress!),
            available: read,
            expected: sequence,
            length: length,
            segment: segment,
            offset: offset
        )
    }

    func messages(from sequence: UInt64, limit: Int) throws -> [StoredMessage] {
        try self.checkOpen()
        guard limit > 0, !self.segments.isEmpty else { return [] }
        var result: [StoredMessage] = []
        var position = self.segmentPosition(containing: sequence) ?? 0
        var from = sequence
        while position < self.segments.count, result.count < limit {
            let segment = self.segments[position]
            try self.ensureLoaded(segment)
            try self.readRuns(of: segment, from: segment.firstIndex(atOrAfter: from), limit: limit - result.count) {
                result.append($0)
            }
            position += 1
            from = 0
        }
        return result
    }

    /// Records whose sequence, offset and length are in memory (loaded segments).
    var residentIndexEntries: Int {
        self.segments.reduce(0) { $0 + ($1.isLoaded ? $1.count : 0) }
    }

    /// The subject, size and time of the present messages with sequences in `range`, read from their records'
    /// headers (the stream's index loads a block's detail this way).
    func indexEntries(in range: ClosedRange<UInt64>) throws -> [MessageIndexEntry] {
        try self.checkOpen()
        guard !self.segments.isEmpty else { return [] }
        var result: [MessageIndexEntry] = []
        var position = self.segmentPosition(containing: range.lowerBound) ?? 0
        while position < self.segments.count, self.segments[position].start <= range.upperBound {
            let segment = self.segments[position]
            try self.ensureLoaded(segment)
            try self.readRecords(
                of: segment,
                from: segment.firstIndex(atOrAfter: range.lowerBound),
                limit: .max,
                through: range.upperBound
            ) { record, available, entry in
                let sequence = segment.sequences[entry]
                let length = Int(segment.lengths[entry])
                guard available >= max(length, LogRecord.headerSize), case .success(let header) = LogRecord.parseHeader(record),
                    header.kind == .message, header.sequence == sequence, header.length == length
                else {
                    // The full read reports the damage and drops the index file.
                    _ = try self.decodeMessage(
                        record,
                        available: available,
                        expected: sequence,
                        length: length,
                        segment: segment,
                        offset: segment.offsets[entry]
                    )
                    return
                }
                result.append(
                    MessageIndexEntry(
                        sequence: sequence,
                        subject: LogRecord.subject(header, record),
                        size: UInt64(length) - LogRecord.accountingDifference,
                        timestamp: header.timestamp
                    )
                )
            }
            position += 1
        }
        return result
    }

    /// Reads up to `limit` present messages of `segment` from entry `index` on, in few large reads.
    private func readRuns(
        of segment: Segment,
        from index: Int,
        limit: Int,
        _ body: (StoredMessage) throws -> Void
    ) throws {
        try self.readRecords(of: segment, from: index, limit: limit) { record, available, entry in
            try body(
                self.decodeMessage(
                    record,
                    available: available,
                    expected: segment.sequences[entry],
                    length: Int(segment.lengths[entry]),
                    segment: segment,
                    offset: segment.offsets[entry]
                )
            )
        }
    }

    /// Hands up to `limit` present records of `segment` from entry `index` on (up to sequence `through`) to `body`
    /// with the bytes read after each and its entry, in few large reads: neighbouring records are read together when
    /// the run stays under 1 MiB and skips at most 64 KiB of other records.
    private func readRecords(
        of segment: Segment,
        from index: Int,
        limit: Int,
        through: UInt64 = .max,
        _ body: (UnsafeRawPointer, Int, Int) throws -> Void
    ) throws {
        let maximumRun: UInt64 = 1 << 20
        let maximumGap: UInt64 = 64 << 10
        var index = index
        var produced = 0
        while index < segment.count, produced < limit, segment.sequences[index] <= through {
            if segment.isRemoved(index) {
                index += 1
                continue
            }
            let runStart = segment.offsets[index]
            var runEnd = runStart + UInt64(segment.lengths[index])
            var end = index + 1
            var wanted = 1
            while end < segment.count, produced + wanted < limit, segment.sequences[end] <= through {
                if segment.isRemoved(end) {
                    end += 1
                    continue
                }
                let recordEnd = segment.offsets[end] + UInt64(segment.lengths[end])
                guard recordEnd - runStart <= maximumRun, segment.offsets[end] - runEnd <= maximumGap else { break }
                runEnd = recordEnd
                wanted += 1
                end += 1
            }
            let runLength = Int(runEnd - runStart)
            self.reserveScratch(runLength)
            let descriptor = try self.readDescriptor(segment)
            let read = try FileSystem.readFile(
                descriptor,
                into: self.scratch,
                count: runLength,
                at: runStart,
                path: segment.logPath
            )
            let base = UnsafeRawPointer(self.scratch.baseAddress!)
            for entry in index..<end where !segment.isRemoved(entry) {
                let relative = Int(segment.offsets[entry] - runStart)
                try body(base + relative, read - relative, entry)
                produced += 1
            }
            index = end
        }
    }

    /// Checks and decodes the record the index points at. A mismatch is damage the last `open()` did not see (it
    /// trusted a sealed segment's index): the read fails, and the index file goes so that the next `open()` scans
    /// the segment and cuts it there.
    private func decodeMessage(
        _ record: UnsafeRawPointer,
        available: Int,
        expected sequence: UInt64,
        length: Int,
        segment: Segment,
        offset: UInt64
    ) throws -> StoredMessage {
        var damage: LogRecord.Damage?
        if available < length {
            damage = .tornRecord(length: length, available: UInt64(max(0, available)))
        } else {
            switch LogRecord.parseHeader(record) {
            case .failure(let found):
                damage = found
            case .success(let header):
                if header.kind != .message || header.length != length || header.sequence != sequence {
                    damage = .badSequence(header.sequence, "is not the indexed \(sequence)")
                } else if !LogRecord.checksumMatches(record, length: length) {
                    damage = .badChecksum
                } else {
                    return LogRecord.message(header, record)
                }
            }
        }
        self.logger.error(
            "file store read a damaged record; the next open scans and cuts its segment",
            metadata: [
                "stork.store.file": "\(segment.logPath)",
                "stork.store.offset": "\(offset)",
                "stork.store.sequence": "\(sequence)",
                "stork.store.damage": "\(damage.map { "\($0)" } ?? "")",
            ]
        )
        if segment.isSealed {
            try? FileSystem.removeFile(segment.indexPath)
            segment.hasIndexFile = false
        }
        throw StorkError(
            .storeFailed,
            "message \(sequence) in \(segment.logPath) at offset \(offset) is damaged: "
                + "\(damage.map { "\($0)" } ?? "")"
        )
    }

    // MARK: - Remove and purge

    func remove(_ sequences: [UInt64]) throws {
        try self.checkWritable()
        var found: [(segment: Segment, index: Int, sequence: UInt64)] = []
        // Sequences of segments whose offsets cannot be read back now: the deletion record still names them (the next
        // open applies it), only their in-memory marks wait.
        var unreadable: [UInt64] = []
        for sequence in sequences.sorted() {
            guard let segment = self.segment(containing: sequence), sequence <= self.lastSequence else { continue }
            do {
                try self.ensureLoaded(segment)
            } catch {
                self.logger.error(
                    "file store could not read a segment's index to remove messages; removed at the next open",
                    metadata: ["stork.store.file": "\(segment.logPath)", "stork.store.error": "\(error)"]
                )
                unreadable.append(sequence)
                continue
            }
            if let index = segment.index(of: sequence), !segment.isRemoved(index) {
                found.append((segment, index, sequence))
            }
        }
        guard !found.isEmpty || !unreadable.isEmpty else { return }
        let ranges = Self.ranges(of: found.map(\.sequence) + unreadable)
        let record = LogRecord.deletion(ranges)
        try record.withUnsafeBytes { try self.writeToActive($0) }
        self.active.deletions.append(contentsOf: ranges)
        var touched: [Segment] = []
        for (segment, index, _) in found {
            // The record is durable: a segment that cannot be read back now is marked at the next open.
            guard (try? self.ensureLoaded(segment)) != nil else { continue }
            segment.markRemoved(index)
            if segment.isSealed, touched.last !== segment, !touched.contains(where: { $0 === segment }) {
                touched.append(segment)
            }
        }
        for segment in touched {
            self.compactIfWorthwhile(segment)
        }
    }

    func purge(through sequence: UInt64) throws {
        try self.checkWritable()
        let through = min(sequence, self.lastSequence)
        guard let first = self.segments.first, through >= first.start else { return }
        let everything = through == self.lastSequence
        let hasMessages = self.segments.contains { segment in segment.headSequence.map { $0 <= through } ?? false }
        let doomed = self.segments.indices.dropLast().filter { self.segments[$0 + 1].start - 1 <= through }
        let replaceActive = everything && self.active.start <= self.lastSequence
        guard hasMessages || !doomed.isEmpty || replaceActive || (everything && self.active.size > 0) else { return }

        // The deletion record first, so that a crash part way through leaves nothing of the purge undone.
        let record = LogRecord.deletion([first.start...through])
        try record.withUnsafeBytes { try self.writeToActive($0) }
        self.active.deletions.append(first.start...through)
        for (position, segment) in self.segments.enumerated() {
            guard let head = segment.headSequence, head <= through else { continue }
            if everything || doomed.contains(position) {
                segment.markAllRemoved()  // its files go below
                continue
            }
            try self.ensureLoaded(segment)
            var index = segment.headCount
            while index < segment.count, segment.sequences[index] <= through {
                segment.markRemoved(index)
                index += 1
            }
        }

        if everything {
            if replaceActive {
                // A new, empty active segment whose name keeps the highest sequence, made durable before the old
                // segments go.
                try self.createActiveSegment(start: self.lastSequence + 1)
                if !self.isAlwaysSynced { try self.syncDirectoryNow() }
                self.activeDirty = false
            }
            let active = self.active
            for segment in self.segments where segment !== active {
                try self.deleteFiles(of: segment)
            }
            self.segments = [active]
            if active.size > 0 {
                // Only deletion records: nothing older is left for them to remove.
                try FileSystem.truncateFile(active.descriptor, to: 0, path: active.logPath)
                active.load(SegmentContents(), size: 0)
                if self.isAlwaysSynced { try Self.syncData(active.descriptor, path: active.logPath) }
            }
            try self.directoryChanged()
            return
        }
        for position in doomed.reversed() {
            try self.deleteFiles(of: self.segments[position])
            self.segments.remove(at: position)
        }
        if !doomed.isEmpty { try self.directoryChanged() }
        if let oldest = self.segments.first, oldest.isSealed {
            self.compactIfWorthwhile(oldest)
        }
    }

    /// Sorted, merged ranges of consecutive sequences.
    static func ranges(of sequences: [UInt64]) -> [ClosedRange<UInt64>] {
        let sorted = sequences.sorted()
        var ranges: [ClosedRange<UInt64>] = []
        var low = sorted[0]
        var high = sorted[0]
        for sequence in sorted.dropFirst() where sequence != high {
            if sequence == high + 1 {
                high = sequence
            } else {
                ranges.append(low...high)
                low = sequence
                high = sequence
            }
        }
        ranges.append(low...high)
        return ranges
    }

    // MARK: - Compaction

    /// Deletes a sealed segment whose messages are all removed, or rewrites one whose removed messages (not at its
    /// head) take at least the configured fraction of it. Failures are logged: the removals themselves are durable
    /// already, only space is not reclaimed.
    private func compactIfWorthwhile(_ segment: Segment) {
        guard segment.isSealed, self.segments.contains(where: { $0 === segment }) else { return }
        let needed = self.neededDeletions(segment)
        do {
            if segment.liveCount == 0 {
                if needed.isEmpty {
                    try self.deleteFiles(of: segment)
                    self.segments.removeAll { $0 === segment }
                    try self.directoryChanged()
                } else if segment.removedBytes > 0 {
                    try self.rewrite(segment, keeping: needed)
                }
            } else if segment.size > 0,
                Double(segment.interiorRemovedBytes) >= self.configuration.compactionThreshold * Double(segment.size)
            {
                try self.rewrite(segment, keeping: needed)
            }
        } catch {
            self.logger.warning(
                "file store compaction failed",
                metadata: ["stork.store.file": "\(segment.logPath)", "stork.store.error": "\(error)"]
            )
        }
    }

    /// The deletion ranges in `segment` that still matter when it is rewritten: those naming sequences of older
    /// segments that still exist (its own removed messages are dropped by the rewrite itself).
    private func neededDeletions(_ segment: Segment) -> [ClosedRange<UInt64>] {
        guard let oldest = self.segments.first, oldest.start < segment.start else { return [] }
        let clipped = segment.deletions.compactMap { range -> ClosedRange<UInt64>? in
            let low = max(range.lowerBound, oldest.start)
            let high = min(range.upperBound, segment.start - 1)
            return low <= high ? low...high : nil
        }
        guard !clipped.isEmpty else { return [] }
        let sorted = clipped.sorted { $0.lowerBound < $1.lowerBound }
        var merged: [ClosedRange<UInt64>] = [sorted[0]]
        for range in sorted.dropFirst() {
            let last = merged[merged.count - 1]
            if range.lowerBound == 0 || range.lowerBound - 1 <= last.upperBound {
                merged[merged.count - 1] = last.lowerBound...max(last.upperBound, range.upperBound)
            } else {
                merged.append(range)
            }
        }
        return merged
    }

    /// Writes the live messages of `segment` (checked) and `deletions` to a temporary file, syncs it, and renames it
    /// over the segment; then reloads the segment's index from the new file.
    private func rewrite(_ segment: Segment, keeping deletions: [ClosedRange<UInt64>]) throws {
        let temporaryPath = segment.logPath + ".tmp"
        let output = try FileSystem.openFile(temporaryPath, O_RDWR | O_CREAT | O_TRUNC)
        var renamed = false
        defer {
            if !renamed {
                FileSystem.closeFile(output)
                try? FileSystem.removeFile(temporaryPath)
            }
        }
        var pending: [UInt8] = []
        pending.reserveCapacity(1 << 20)
        var written: UInt64 = 0
        func flush() throws {
            try pending.withUnsafeBytes { try FileSystem.writeFile(output, $0, at: written, path: temporaryPath) }
            written += UInt64(pending.count)
            pending.removeAll(keepingCapacity: true)
        }
        try self.ensureLoaded(segment)
        try self.readRuns(of: segment, from: 0, limit: segment.liveCount) { message in
            let length = LogRecord.encodedLength(of: message)!
            let start = pending.count
            pending.append(contentsOf: repeatElement(0, count: length))
            pending.withUnsafeMutableBytes { LogRecord.encode(message, length: length, into: $0.baseAddress! + start) }
            if pending.count >= 1 << 20 { try flush() }
        }
        if !deletions.isEmpty { pending.append(contentsOf: LogRecord.deletion(deletions)) }
        try flush()
        try FileSystem.syncFile(output, path: temporaryPath)
        let contents = try SegmentScanner.scan(
            descriptor: output,
            path: temporaryPath,
            size: written,
            start: segment.start,
            limit: nil,
            verifyChecksums: false
        )
        guard contents.damage == nil, contents.entries.count == segment.liveCount else {
            throw StorkError(.storeFailed, "compaction of \(segment.logPath) produced an inconsistent file")
        }
        try FileSystem.removeFile(segment.indexPath)
        try FileSystem.renameFile(temporaryPath, to: segment.logPath)
        renamed = true
        self.forgetOpen(segment)
        segment.descriptor = output
        let before = segment.size
        segment.load(contents, size: written)
        self.rememberOpen(segment)
        try FileSystem.syncDirectory(self.directory)
        self.unindexed.removeAll { $0 === segment }
        self.writeIndex(of: segment, contents: contents)
        self.logger.debug(
            "file store compacted a segment",
            metadata: [
                "stork.store.file": "\(segment.logPath)",
                "stork.store.bytes_before": "\(before)",
                "stork.store.bytes_after": "\(written)",
            ]
        )
    }

    // MARK: - Metadata

    func saveMetadata(key: String, value: [UInt8]?) throws {
        try self.checkWritable()
        try self.metadata.save(key: key, value: value)
    }

    // MARK: - Sync, close, destroy

    /// For the background syncer: what to fsync now (outside the lock), clearing the dirty flags.
    func takeSyncWork() -> SyncWork? {
        guard self.phase == .open, self.activeDirty || self.directoryDirty || !self.sealedDirty.isEmpty else { return nil }
        var work = SyncWork()
        work.sealed = self.sealedDirty
        self.sealedDirty = []
        if self.activeDirty {
            let duplicate = dup(self.active.descriptor)
            if duplicate >= 0 {
                work.descriptor = duplicate
                work.path = self.active.logPath
                self.activeDirty = false
            }
        }
        if self.directoryDirty {
            work.directory = self.directory
            self.directoryDirty = false
        }
        return work
    }

    /// Runs `work` (without the lock held).
    static func perform(_ work: SyncWork) throws {
        var failure: (any Error)?
        for (descriptor, path) in work.sealed {
            do { try Self.syncData(descriptor, path: path) } catch { failure = failure ?? error }
            FileSystem.closeFile(descriptor)
        }
        if let descriptor = work.descriptor {
            do { try Self.syncData(descriptor, path: work.path) } catch { failure = failure ?? error }
            FileSystem.closeFile(descriptor)
        }
        if let directory = work.directory {
            do { try FileSystem.syncDirectory(directory) } catch { failure = failure ?? error }
        }
        if let failure { throw failure }
    }

    /// For the background thread: the next sealed segment to index, with a descriptor of its own (closed by the
    /// caller). A failed build leaves the segment without an index file, which the next `open()` rebuilds by a scan.
    func takeIndexWork() -> IndexWork? {
        guard self.phase == .open, !self.unindexed.isEmpty else { return nil }
        let segment = self.unindexed.removeFirst()
        guard let descriptor = try? self.readDescriptor(segment) else { return nil }
        let duplicate = dup(descriptor)
        guard duplicate >= 0 else { return nil }
        return IndexWork(
            start: segment.start,
            logPath: segment.logPath,
            indexPath: segment.indexPath,
            size: segment.size,
            generation: segment.generation,
            descriptor: duplicate
        )
    }

    /// Scans the segment of `work` and writes its index to a temporary file (no lock held); returns that file.
    static func writeIndexFile(_ work: IndexWork) throws -> String {
        let contents = try SegmentScanner.scan(
            descriptor: work.descriptor,
            path: work.logPath,
            size: work.size,
            start: work.start,
            limit: nil,
            verifyChecksums: false
        )
        guard contents.damage == nil else {
            throw StorkError(.storeFailed, "\(work.logPath) does not scan cleanly: \(contents.damage!)")
        }
        let bytes = SegmentIndexFile.encode(start: work.start, logSize: work.size, contents: contents)
        let temporary = work.indexPath + ".tmp"
        let output = try FileSystem.openFile(temporary, O_WRONLY | O_CREAT | O_TRUNC)
        defer { FileSystem.closeFile(output) }
        try bytes.withUnsafeBytes { try FileSystem.writeFile(output, $0, at: 0, path: temporary) }
        return temporary
    }

    /// Puts a background-built index in place, unless its segment changed or went meanwhile (then it is dropped).
    func finishIndex(_ work: IndexWork, temporary: String?, error: (any Error)?) {
        let current = self.segments.first { $0.start == work.start }
        if let temporary {
            if self.phase == .open, let current, current.isSealed, current.generation == work.generation,
                current.size == work.size
            {
                do {
                    try FileSystem.renameFile(temporary, to: work.indexPath)
                    current.hasIndexFile = true
                    if !self.loadedSegments.contains(where: { $0 === current }) { current.unload() }
                    return
                } catch {
                    self.logger.warning(
                        "file store could not write an index file",
                        metadata: ["stork.store.file": "\(work.indexPath)", "stork.store.error": "\(error)"]
                    )
                }
            }
            try? FileSystem.removeFile(temporary)
        } else if let error {
            self.logger.warning(
                "file store could not index a sealed segment",
                metadata: ["stork.store.file": "\(work.logPath)", "stork.store.error": "\(error)"]
            )
        }
    }

    func recordSyncFailure(_ error: StorkError) {
        self.logger.error(
            "file store fsync failed; the store takes no more writes",
            metadata: ["stork.store.directory": "\(self.directory)", "stork.store.error": "\(error)"]
        )
        if self.syncFailure == nil { self.syncFailure = error }
    }

    func close() throws {
        guard self.phase == .open else {
            self.phase = .closed
            return
        }
        // What the background thread did not index yet is indexed now, so that the next open reads indexes.
        let unindexed = self.unindexed
        self.unindexed = []
        for segment in unindexed { self.buildIndex(segment) }
        var failure: (any Error)?
        for (descriptor, path) in self.sealedDirty {
            do { try Self.syncData(descriptor, path: path) } catch { failure = failure ?? error }
            FileSystem.closeFile(descriptor)
        }
        self.sealedDirty = []
        if self.activeDirty {
            do { try Self.syncData(self.active.descriptor, path: self.active.logPath) } catch { failure = failure ?? error }
            self.activeDirty = false
        }
        if self.directoryDirty {
            do { try self.syncDirectoryNow() } catch { failure = failure ?? error }
        }
        self.abandon()
        if let failure { throw failure }
    }

    func destroy() throws {
        self.abandon()
        do {
            if FileManager.default.fileExists(atPath: self.directory) {
                try FileManager.default.removeItem(atPath: self.directory)
            }
        } catch {
            throw StorkError(.storeFailed, "remove \(self.directory)", underlying: error)
        }
    }

    /// Closes every descriptor and releases the directory lock, syncing nothing (what a crash leaves).
    func abandon() {
        for segment in self.segments where segment.descriptor >= 0 {
            FileSystem.closeFile(segment.descriptor)
            segment.descriptor = -1
        }
        for (descriptor, _) in self.sealedDirty { FileSystem.closeFile(descriptor) }
        self.sealedDirty = []
        self.segments = []
        self.openSegments = []
        self.loadedSegments = []
        self.unindexed = []
        self.lock?.release()
        self.lock = nil
        self.phase = .closed
    }

    // MARK: - Helpers

    private func checkOpen() throws {
        guard self.phase == .open else {
            throw StorkError(
                .storeFailed,
                "file store \(self.directory) is \(self.phase == .created ? "not open yet" : "closed")"
            )
        }
    }

    private func checkWritable() throws {
        try self.checkOpen()
        if let syncFailure { throw syncFailure }
    }

    /// The segment whose range holds `sequence`: the last one starting at or before it.
    private func segment(containing sequence: UInt64) -> Segment? {
        self.segmentPosition(containing: sequence).map { self.segments[$0] }
    }

    private func segmentPosition(containing sequence: UInt64) -> Int? {
        var low = 0
        var high = self.segments.count
        while low < high {
            let middle = (low + high) / 2
            if self.segments[middle].start <= sequence { low = middle + 1 } else { high = middle }
        }
        return low == 0 ? nil : low - 1
    }

    private func reserveScratch(_ count: Int) {
        guard count > self.scratch.count else { return }
        self.scratch.deallocate()
        self.scratch = .allocate(byteCount: max(count, self.scratch.count * 2), alignment: 8)
    }

    private func readDescriptor(_ segment: Segment) throws -> Int32 {
        if segment.descriptor >= 0 {
            if segment.isSealed, self.openSegments.last !== segment { self.rememberOpen(segment) }
            return segment.descriptor
        }
        segment.descriptor = try FileSystem.openFile(segment.logPath, O_RDONLY)
        self.rememberOpen(segment)
        return segment.descriptor
    }

    /// Moves a sealed segment with an open descriptor to the most recent end, closing the least recent beyond the
    /// configured count.
    private func rememberOpen(_ segment: Segment) {
        self.openSegments.removeAll { $0 === segment }
        self.openSegments.append(segment)
        while self.openSegments.count > max(1, self.configuration.maximumOpenSegments) {
            let oldest = self.openSegments.removeFirst()
            FileSystem.closeFile(oldest.descriptor)
            oldest.descriptor = -1
        }
    }

    private func forgetOpen(_ segment: Segment) {
        self.openSegments.removeAll { $0 === segment }
        if segment.descriptor >= 0 {
            FileSystem.closeFile(segment.descriptor)
            segment.descriptor = -1
        }
    }

    private func deleteFiles(of segment: Segment) throws {
        self.unindexed.removeAll { $0 === segment }
        self.loadedSegments.removeAll { $0 === segment }
        self.forgetOpen(segment)
        try FileSystem.removeFile(segment.logPath)
        try FileSystem.removeFile(segment.indexPath)
    }

    /// Writes the index file of a sealed segment from a parse of its records (best effort: a missing index is
    /// rebuilt by the next `open()`).
    private func buildIndex(_ segment: Segment) {
        do {
            self.writeIndex(of: segment, contents: try self.scan(segment, verifyChecksums: false))
        } catch {
            self.logger.warning(
                "file store could not index a sealed segment",
                metadata: ["stork.store.file": "\(segment.logPath)", "stork.store.error": "\(error)"]
            )
        }
    }

    private func writeIndex(of segment: Segment, contents: SegmentContents) {
        let path = segment.indexPath
        let bytes = SegmentIndexFile.encode(start: segment.start, logSize: segment.size, contents: contents)
        do {
            try FileSystem.writeAtomically(bytes, to: path, directory: self.directory, durable: false)
            segment.hasIndexFile = true
        } catch {
            self.logger.warning(
                "file store could not write an index file",
                metadata: ["stork.store.file": "\(path)", "stork.store.error": "\(error)"]
            )
        }
    }

    /// A name was created or removed: sync the directory now (`.always`) or soon (`.batched`).
    private func directoryChanged() throws {
        if self.isAlwaysSynced { try self.syncDirectoryNow() } else { self.directoryDirty = true }
    }

    private func syncDirectoryNow() throws {
        try FileSystem.syncDirectory(self.directory)
        self.directoryDirty = false
    }

    private static func syncData(_ descriptor: Int32, path: String) throws {
        #if os(Linux)
        while fdatasync(descriptor) != 0 {
            if errno != EINTR { throw StorkError.storeFailed("fdatasync", path: path) }
        }
        #else
        try FileSystem.syncFile(descriptor, path: path)
        #endif
    }
}
