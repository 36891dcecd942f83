import StorkStreaming

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - What a segment file holds

/// The records of one segment file, as a scan or its index file found them.
struct SegmentContents {
    /// Every message record's sequence, in file (and sequence) order, removed or not.
    var sequences: [UInt64] = []
    /// The file offset and length of each record.
    var offsets: [UInt64] = []
    var lengths: [UInt32] = []
    /// Each record's subject, size and time: from a scan always, from an index file when asked for.
    var entries: [MessageIndexEntry] = []
    /// The ranges of every deletion record in the file.
    var deletions: [ClosedRange<UInt64>] = []
    /// Bytes of whole, valid records from the start of the file: the file's size unless `damage` is set.
    var validBytes: UInt64 = 0
    /// Why the record at `validBytes` is not valid, when one is not.
    var damage: LogRecord.Damage?
}

// MARK: - Segment

/// One segment file and its in-memory index: sequence → (offset, length), and which records are removed.
///
/// A sealed segment may drop its arrays (``unload()``): the log keeps only a few
/// sealed segments loaded and reads the arrays back from the index file when needed, so that memory does not grow
/// with the stream. What stays is the count, the first and last sequences, and which records are removed.
///
/// Not thread-safe: owned by a `SegmentedLog`, which is only used under its store's lock.
final class Segment {
    /// The first sequence this segment may hold, which names the file; the last is just below the next segment's.
    let start: UInt64
    let logPath: String
    let indexPath: String
    /// The file's size: every record it holds ends at or before it.
    var size: UInt64 = 0
    /// Whether it is no longer the active (last) segment: sealed segments are only read, compacted or deleted.
    var isSealed = false
    /// An open descriptor, or -1. The active segment's is read-write and always open; sealed segments open theirs on
    /// demand and the log closes the least recently used.
    var descriptor: Int32 = -1
    /// The ranges of the deletion records in this file.
    var deletions: [ClosedRange<UInt64>] = []

    private(set) var sequences: [UInt64] = []
    private(set) var offsets: [UInt64] = []
    private(set) var lengths: [UInt32] = []
    private var removedBits: [UInt64] = []
    /// Entries not removed.
    private(set) var liveCount = 0
    /// Bytes of removed message records still in the file.
    private(set) var removedBytes: UInt64 = 0
    /// The entries before the first live one (all removed), and their bytes. Removal from the head of a segment is
    /// how limits age messages out; those bytes come back when the whole segment goes, so compaction ignores them.
    private(set) var headCount = 0
    private(set) var headBytes: UInt64 = 0

    init(start: UInt64, directory: String) {
        self.start = start
        let name = Self.fileName(start)
        self.logPath = "\(directory)/\(name).log"
        self.indexPath = "\(directory)/\(name).idx"
    }

    /// `00000000000000000042` for 42: twenty digits, so that names sort as numbers.
    static func fileName(_ start: UInt64) -> String {
        let digits = String(start)
        return String(repeating: "0", count: max(0, 20 - digits.count)) + digits
    }

    /// The start of the segment file named `name` (`<20 digits>.log`), or nil for another file.
    static func start(ofLogFileNamed name: String) -> UInt64? {
        guard name.hasSuffix(".log") else { return nil }
        let digits = name.dropLast(4)
        guard digits.count == 20, digits.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
        return UInt64(digits)
    }

    /// Whether the arrays are in memory (always, unless ``unload()`` dropped them).
    private(set) var isLoaded = true
    /// Whether an index file describing the current file is on disk (dropped arrays are read back from it rather
    /// than by a scan of the segment).
    var hasIndexFile = false
    private var storedCount = 0
    private var storedFirst: UInt64?
    private var storedLast: UInt64?
    /// The sum of the records' lengths.
    private(set) var messageBytes: UInt64 = 0

    var count: Int { self.isLoaded ? self.sequences.count : self.storedCount }
    var firstSequence: UInt64? { self.isLoaded ? self.sequences.first : self.storedFirst }
    var lastSequence: UInt64? { self.isLoaded ? self.sequences.last : self.storedLast }
    /// The first present sequence, if any (kept while unloaded: removals need the arrays).
    private(set) var headSequence: UInt64?
    /// Removed bytes that are not at the head: what compaction would reclaim that waiting would not.
    var interiorRemovedBytes: UInt64 { self.removedBytes - self.headBytes }

    // MARK: Loading and appending

    /// Bumped by every `load`: an index built from the file before (in the background) no longer describes it.
    private(set) var generation: UInt64 = 0

    /// Replaces the index with what a scan or an index file found (nothing removed yet).
    func load(_ contents: SegmentContents, size: UInt64) {
        self.generation &+= 1
        self.size = size
        self.sequences = contents.sequences
        self.offsets = contents.offsets
        self.lengths = contents.lengths
        self.isLoaded = true
        self.hasIndexFile = false
        self.messageBytes = contents.lengths.reduce(0) { $0 + UInt64($1) }
        self.removedBits = [UInt64](repeating: 0, count: (contents.sequences.count + 63) / 64)
        self.liveCount = contents.sequences.count
        self.removedBytes = 0
        self.headCount = 0
        self.headBytes = 0
        self.headSequence = contents.sequences.first
        self.deletions = contents.deletions
    }

    /// Loads what a sealed segment's index file summarises, without its arrays (read back by ``restore(_:)``).
    func loadSummary(_ summary: SegmentIndexFile.Summary, size: UInt64) {
        self.generation &+= 1
        self.size = size
        self.sequences = []
        self.offsets = []
        self.lengths = []
        self.isLoaded = false
        self.hasIndexFile = true
        self.storedCount = summary.entryCount
        self.storedFirst = summary.blocks.first?.first
        self.storedLast = summary.blocks.last?.last
        self.messageBytes = summary.blocks.reduce(0) {
            $0 + $1.bytes + UInt64($1.count) * LogRecord.accountingDifference
        }
        self.removedBits = [UInt64](repeating: 0, count: (summary.entryCount + 63) / 64)
        self.liveCount = summary.entryCount
        self.removedBytes = 0
        self.headCount = 0
        self.headBytes = 0
        self.headSequence = self.storedFirst
        self.deletions = summary.deletions
    }

    /// Drops the arrays (a sealed segment); ``restore(_:)`` brings them back, from the index file or a scan.
    func unload() {
        guard self.isLoaded, self.isSealed else { return }
        self.storedCount = self.sequences.count
        self.storedFirst = self.sequences.first
        self.storedLast = self.sequences.last
        self.sequences = []
        self.offsets = []
        self.lengths = []
        self.isLoaded = false
    }

    /// Puts back the arrays an index file or a scan of the unchanged file found; false when they do not match.
    func restore(_ contents: SegmentContents) -> Bool {
        guard !self.isLoaded, contents.sequences.count == self.storedCount,
            contents.sequences.first == self.storedFirst, contents.sequences.last == self.storedLast
        else { return false }
        self.sequences = contents.sequences
        self.offsets = contents.offsets
        self.lengths = contents.lengths
        self.isLoaded = true
        return true
    }

    func reserveCapacity(adding count: Int) {
        let needed = self.sequences.count + count
        guard needed > self.sequences.capacity else { return }
        let capacity = max(needed, self.sequences.capacity * 2, 1024)
        self.sequences.reserveCapacity(capacity)
        self.offsets.reserveCapacity(capacity)
        self.lengths.reserveCapacity(capacity)
    }

    @inline(__always)
    func appendEntry(sequence: UInt64, offset: UInt64, length: Int) {
        if self.sequences.count & 63 == 0 { self.removedBits.append(0) }
        if self.headCount == self.sequences.count { self.headSequence = sequence }
        self.messageBytes += UInt64(length)
        self.sequences.append(sequence)
        self.offsets.append(offset)
        self.lengths.append(UInt32(length))
        self.liveCount += 1
    }

    /// Drops the entries from `count` on (all live): an append whose write failed.
    func truncateEntries(to count: Int) {
        guard count < self.sequences.count else { return }
        self.liveCount -= self.sequences.count - count
        for index in count..<self.sequences.count { self.messageBytes -= UInt64(self.lengths[index]) }
        self.sequences.removeSubrange(count...)
        self.offsets.removeSubrange(count...)
        self.lengths.removeSubrange(count...)
        self.removedBits.removeSubrange(((count + 63) / 64)...)
        if self.headCount >= self.sequences.count { self.headSequence = nil }
    }

    // MARK: Lookup

    /// The position of the first entry with a sequence ≥ `sequence`.
    func firstIndex(atOrAfter sequence: UInt64) -> Int {
        // Sequences are usually dense: try the direct position first.
        if let first = self.sequences.first, sequence >= first {
            let guess = sequence - first
            if guess < UInt64(self.sequences.count), self.sequences[Int(guess)] == sequence { return Int(guess) }
        }
        var low = 0
        var high = self.sequences.count
        while low < high {
            let middle = (low + high) / 2
            if self.sequences[middle] < sequence { low = middle + 1 } else { high = middle }
        }
        return low
    }

    /// The position of the entry with this sequence, removed or not.
    func index(of sequence: UInt64) -> Int? {
        let index = self.firstIndex(atOrAfter: sequence)
        return index < self.sequences.count && self.sequences[index] == sequence ? index : nil
    }

    @inline(__always)
    func isRemoved(_ index: Int) -> Bool {
        self.removedBits[index >> 6] & (1 << UInt64(index & 63)) != 0
    }

    /// Marks an entry removed; false when it already was.
    @discardableResult
    func markRemoved(_ index: Int) -> Bool {
        guard !self.isRemoved(index) else { return false }
        self.removedBits[index >> 6] |= 1 << UInt64(index & 63)
        self.liveCount -= 1
        self.removedBytes += UInt64(self.lengths[index])
        while self.headCount < self.sequences.count, self.isRemoved(self.headCount) {
            self.headBytes += UInt64(self.lengths[self.headCount])
            self.headCount += 1
        }
        self.headSequence = self.headCount < self.sequences.count ? self.sequences[self.headCount] : nil
        return true
    }

    /// Marks every entry removed, loaded or not (the segment is about to be deleted by a purge).
    func markAllRemoved() {
        let count = self.count
        // Only the bits of existing entries: an append after a failed purge must find its own bits clear.
        for word in self.removedBits.indices {
            let bits = min(64, count - word * 64)
            self.removedBits[word] = bits <= 0 ? 0 : (bits == 64 ? ~0 : (1 << UInt64(bits)) - 1)
        }
        self.liveCount = 0
        self.removedBytes = self.messageBytes
        self.headCount = count
        self.headBytes = self.messageBytes
        self.headSequence = nil
    }
}

// MARK: - Scanning a segment file

/// Reads a segment file from the start, record by record, in large sequential reads, and stops at the first bytes
/// that are not a valid record: a torn or garbled tail, a checksum mismatch, a sequence out of place.
enum SegmentScanner {
    static let chunkSize = 1 << 20

    /// - Parameters:
    ///   - start: the segment's first possible sequence; `limit`: the next segment's, when there is one.
    ///   - verifyChecksums: false only for a file this process wrote and checked (building an index at seal).
    static func scan(
        descriptor: Int32,
        path: String,
        size: UInt64,
        start: UInt64,
        limit: UInt64?,
        verifyChecksums: Bool
    ) throws -> SegmentContents {
        var contents = SegmentContents()
        var capacity = Self.chunkSize
        var buffer = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 8)
        defer { buffer.deallocate() }
        var bufferOffset: UInt64 = 0  // the file offset of buffer[0]
        var filled = 0
        var position = 0
        var previous: UInt64?

        /// Makes at least `minimum` bytes from `position` available, as far as the file has them.
        func fill(_ minimum: Int) throws {
            if position > 0 {
                (buffer).copyMemory(from: buffer + position, byteCount: filled - position)
                bufferOffset += UInt64(position)
                filled -= position
                position = 0
            }
            if minimum > capacity {
                let larger = UnsafeMutableRawPointer.allocate(byteCount: minimum, alignment: 8)
                larger.copyMemory(from: buffer, byteCount: filled)
                buffer.deallocate()
                buffer = larger
                capacity = minimum
            }
            let wanted = Int(min(UInt64(capacity - filled), size - (bufferOffset + UInt64(filled))))
            guard wanted > 0 else { return }
            filled += try FileSystem.readFile(
                descriptor,
                into: UnsafeMutableRawBufferPointer(start: buffer + filled, count: wanted),
                count: wanted,
                at: bufferOffset + UInt64(filled),
                path: path
            )
        }

        func damaged(_ damage: LogRecord.Damage) -> SegmentContents {
            contents.validBytes = bufferOffset + UInt64(position)
            contents.damage = damage
            return contents
        }

        while bufferOffset + UInt64(position) < size {
            let offset = bufferOffset + UInt64(position)
            if filled - position < LogRecord.headerSize {
                try fill(LogRecord.headerSize)
                if filled - position < LogRecord.headerSize {
                    return damaged(.tornHeader(available: filled - position))
                }
            }
            let header: LogRecord.Header
            switch LogRecord.parseHeader(buffer + position) {
            case .success(let parsed): header = parsed
            case .failure(let damage): return damaged(damage)
            }
            guard UInt64(header.length) <= size - offset else {
                return damaged(.tornRecord(length: header.length, available: size - offset))
            }
            if filled - position < header.length {
                try fill(header.length)
                guard filled - position >= header.length else {
                    return damaged(.tornRecord(length: header.length, available: UInt64(filled - position)))
                }
            }
            let record = UnsafeRawPointer(buffer + position)
            if verifyChecksums, !LogRecord.checksumMatches(record, length: header.length) {
                return damaged(.badChecksum)
            }
            switch header.kind {
            case .message:
                let sequence = header.sequence
                if sequence < start { return damaged(.badSequence(sequence, "is below the segment's first \(start)")) }
                if let limit, sequence >= limit {
                    return damaged(.badSequence(sequence, "belongs to the next segment (from \(limit))"))
                }
                if let previous, sequence <= previous {
                    return damaged(.badSequence(sequence, "does not follow \(previous)"))
                }
                previous = sequence
                contents.sequences.append(sequence)
                contents.lengths.append(UInt32(header.length))
                contents.entries.append(
                    MessageIndexEntry(
                        sequence: sequence,
                        subject: LogRecord.subject(header, record),
                        size: UInt64(header.length) - LogRecord.accountingDifference,
                        timestamp: header.timestamp
                    )
                )
                contents.offsets.append(offset)
            case .deletion:
                guard let ranges = LogRecord.deletedRanges(header, record) else { return damaged(.badDeletion) }
                contents.deletions.append(contentsOf: ranges)
            }
            position += header.length
        }
        contents.validBytes = size
        return contents
    }
}

// MARK: - Index files

/// The persisted index of a sealed segment (`<start>.idx`), written when it is sealed or compacted, so that opening
/// a store reads a small part of a file per segment instead of the segment. Layout (little-endian):
///
///     "SKI2"  start u64  logSize u64  entryCount u32  deletionCount u32                        (the header, 28 bytes)
///     entryCount × (sequence u64, offset u64, length u32, timestamp i64, subjectLength u16, subject)
///     deletionCount × (first u64, last u64)                                                     (the tail, from here)
///     blockCount u32  blockCount × block summary (`StreamIndex.Block.encode`) of every entry
///     tailOffset u64
///     CRC-32C of the header and the tail (from tailOffset up to here), u32
///     CRC-32C of everything before it, u32
///
/// Opening reads only the header and the tail (deletions and block summaries: what recovery needs); the entries are
/// read, and the whole file checked, when the segment's offsets are needed. Version 1 ("SKI1": no tail, no tail
/// checksum) is still read, by a full decode. An index whose checksum, start or log size does not match its segment
/// is stale and rebuilt by a scan.
enum SegmentIndexFile {
    static let magic: UInt32 = 0x3249_4B53  // "SKI2"
    static let magicVersion1: UInt32 = 0x3149_4B53  // "SKI1"
    static let headerSize = 28

    static func encode(start: UInt64, logSize: UInt64, contents: SegmentContents) -> [UInt8] {
        var writer = ByteWriter()
        writer.bytes.reserveCapacity(64 + contents.entries.count * 48 + contents.deletions.count * 16)
        writer.append(Self.magic)
        writer.append(start)
        writer.append(logSize)
        writer.append(UInt32(contents.entries.count))
        writer.append(UInt32(contents.deletions.count))
        var builder = StreamIndex.Builder()
        for (entry, offset) in zip(contents.entries, contents.offsets) {
            writer.append(entry.sequence)
            writer.append(offset)
            writer.append(UInt32(entry.size + LogRecord.accountingDifference))
            writer.append(entry.timestamp)
            let subject = Array(entry.subject.utf8)
            writer.append(UInt16(subject.count))
            writer.bytes.append(contentsOf: subject)
            builder.add(entry)
        }
        let tailOffset = writer.bytes.count
        for range in contents.deletions {
            writer.append(range.lowerBound)
            writer.append(range.upperBound)
        }
        writer.append(UInt32(builder.blocks.count))
        for block in builder.blocks { block.encode(into: &writer.bytes) }
        writer.append(UInt64(tailOffset))
        let tailChecksum = writer.bytes.withUnsafeBytes {
            CRC32C.checksum(
                UnsafeRawBufferPointer(rebasing: $0[tailOffset...]),
                continuing: CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[..<Self.headerSize]))
            )
        }
        writer.append(tailChecksum)
        writer.append(CRC32C.checksum(writer.bytes))
        return writer.bytes
    }

    /// What recovery needs from a sealed segment's index, read without its entries.
    struct Summary {
        var entryCount: Int
        var deletions: [ClosedRange<UInt64>]
        var blocks: [StreamIndex.Block]
    }

    /// The header and tail of the index file at `path` (version 2), or nil when it is missing, of version 1, damaged
    /// or does not describe this log file.
    /// `limit` is the next segment's start, when there is one: a summary reaching it is not this segment's.
    static func readSummary(path: String, start: UInt64, limit: UInt64?, logSize: UInt64) throws -> Summary? {
        guard let descriptor = try FileSystem.openFileIfExists(path, O_RDONLY) else { return nil }
        defer { FileSystem.closeFile(descriptor) }
        let size = try FileSystem.fileSize(descriptor, path: path)
        guard size >= UInt64(Self.headerSize + 20) else { return nil }
        func read(_ count: Int, at offset: UInt64) throws -> [UInt8]? {
            var bytes = [UInt8](repeating: 0, count: count)
            let read = try bytes.withUnsafeMutableBytes {
                try FileSystem.readFile(descriptor, into: $0, count: count, at: offset, path: path)
            }
            return read == count ? bytes : nil
        }
        guard let header = try read(Self.headerSize, at: 0), let end = try read(16, at: size - 16) else { return nil }
        var reader = ByteReader(bytes: header, end: header.count)
        guard reader.read(UInt32.self) == Self.magic, reader.read(UInt64.self) == start,
            reader.read(UInt64.self) == logSize, let entryCount = reader.read(UInt32.self),
            let deletionCount = reader.read(UInt32.self)
        else { return nil }
        var endReader = ByteReader(bytes: end, end: end.count)
        guard let tailOffset = endReader.read(UInt64.self), let tailChecksum = endReader.read(UInt32.self),
            tailOffset >= UInt64(Self.headerSize), tailOffset <= size - 16,
            let tail = try read(Int(size - 8 - tailOffset), at: tailOffset),
            CRC32C.checksum(tail, continuing: CRC32C.checksum(header)) == tailChecksum
        else { return nil }
        // The tail read ends with tailOffset (8 bytes), which the checksum covers.
        var tailReader = ByteReader(bytes: tail, end: tail.count - 8)
        var summary = Summary(entryCount: Int(entryCount), deletions: [], blocks: [])
        for _ in 0..<deletionCount {
            guard let first = tailReader.read(UInt64.self), let last = tailReader.read(UInt64.self), first <= last else {
                return nil
            }
            summary.deletions.append(first...last)
        }
        guard let blockCount = tailReader.read(UInt32.self) else { return nil }
        var position = tailReader.position
        let blockBytes = Array(tail[..<(tail.count - 8)])
        var counted = 0
        var recordBytes: UInt64 = 0
        for _ in 0..<blockCount {
            guard let block = StreamIndex.Block.decode(blockBytes, at: &position),
                summary.blocks.last.map({ block.first > $0.last }) ?? (block.first >= start),
                limit.map({ block.last < $0 }) ?? true
            else { return nil }
            // The records' bytes (accounted size + the record's overhead) fit in the log: no overflow further on.
            let (withOverhead, overflow1) = block.bytes.addingReportingOverflow(
                UInt64(block.count) * LogRecord.accountingDifference
            )
            let (sum, overflow2) = recordBytes.addingReportingOverflow(withOverhead)
            guard !overflow1, !overflow2, sum <= logSize else { return nil }
            recordBytes = sum
            counted += block.count
            summary.blocks.append(block)
        }
        guard position == blockBytes.count, counted == summary.entryCount else { return nil }
        return summary
    }

    /// The contents an index file describes, or nil when it is damaged or does not describe this log file. Without
    /// `details`, only sequences, offsets and lengths (not each record's subject and time).
    static func decode(_ bytes: [UInt8], start: UInt64, logSize: UInt64, details: Bool = true) -> SegmentContents? {
        guard bytes.count >= 32 else { return nil }
        let stored = bytes.withUnsafeBytes {
            UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: bytes.count - 4, as: UInt32.self))
        }
        guard bytes.withUnsafeBytes({ CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0.dropLast(4))) }) == stored
        else { return nil }
        var reader = ByteReader(bytes: bytes, end: bytes.count - 4)
        let magic = reader.read(UInt32.self)
        guard magic == Self.magic || magic == Self.magicVersion1, reader.read(UInt64.self) == start,
            reader.read(UInt64.self) == logSize, let entryCount = reader.read(UInt32.self),
            let deletionCount = reader.read(UInt32.self)
        else { return nil }
        var contents = SegmentContents()
        if details { contents.entries.reserveCapacity(Int(entryCount)) }
        contents.sequences.reserveCapacity(Int(entryCount))
        contents.offsets.reserveCapacity(Int(entryCount))
        contents.lengths.reserveCapacity(Int(entryCount))
        var previous: UInt64?
        for _ in 0..<entryCount {
            guard let sequence = reader.read(UInt64.self), let offset = reader.read(UInt64.self),
                let length = reader.read(UInt32.self), let timestamp = reader.read(Int64.self),
                let subjectLength = reader.read(UInt16.self), let subject = reader.readBytes(Int(subjectLength)),
                length >= LogRecord.overhead, offset <= logSize, UInt64(length) <= logSize - offset, sequence >= start,
                previous.map({ sequence > $0 }) ?? true
            else { return nil }
            previous = sequence
            contents.sequences.append(sequence)
            contents.offsets.append(offset)
            contents.lengths.append(length)
            if details {
                contents.entries.append(
                    MessageIndexEntry(
                        sequence: sequence,
                        subject: String(decoding: subject, as: UTF8.self),
                        size: UInt64(length) - LogRecord.accountingDifference,
                        timestamp: timestamp
                    )
                )
            }
        }
        for _ in 0..<deletionCount {
            guard let first = reader.read(UInt64.self), let last = reader.read(UInt64.self), first <= last else {
                return nil
            }
            contents.deletions.append(first...last)
        }
        // Version 2's block summaries and tail offset follow; the whole-file checksum covered them.
        guard magic == Self.magic || reader.isAtEnd else { return nil }
        contents.validBytes = logSize
        return contents
    }
}

// MARK: - Little-endian byte helpers for small files

struct ByteWriter {
    var bytes: [UInt8] = []

    mutating func append<Value: FixedWidthInteger>(_ value: Value) {
        withUnsafeBytes(of: value.littleEndian) { self.bytes.append(contentsOf: $0) }
    }
}

struct ByteReader {
    let bytes: [UInt8]
    let end: Int
    private(set) var position = 0

    init(bytes: [UInt8], end: Int) {
        self.bytes = bytes
        self.end = end
    }

    var isAtEnd: Bool { self.position == self.end }

    mutating func read<Value: FixedWidthInteger>(_: Value.Type) -> Value? {
        let size = MemoryLayout<Value>.size
        guard self.end - self.position >= size else { return nil }
        let value = self.bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: self.position, as: Value.self) }
        self.position += size
        return Value(littleEndian: value)
    }

    mutating func readBytes(_ count: Int) -> ArraySlice<UInt8>? {
        guard count >= 0, self.end - self.position >= count else { return nil }
        defer { self.position += count }
        return self.bytes[self.position..<(self.position + count)]
    }
}
