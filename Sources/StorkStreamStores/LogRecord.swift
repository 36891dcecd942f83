import StorkStreaming

// MARK: - Record layout
//
// Every record in a segment file describes itself; all integers are little-endian:
//
//   offset  size  field
//        0     2  magic "SK" (0x53 0x4B)
//        2     1  kind: 1 = message, 2 = deletion
//        3     1  reserved, 0
//        4     4  length of the whole record, header and checksum included
//        8     8  sequence (a deletion: 0)
//       16     8  timestamp, nanoseconds since the Unix epoch (a deletion: 0)
//       24     2  subject length S
//       26     4  header block length H
//       30     S  subject (UTF-8)
//     30+S     H  header block
//   30+S+H     P  payload (P = length - 34 - S - H); a deletion: pairs of sequences (first, last), 16 bytes each
// length-4     4  CRC-32C of every byte before it
//
// A message record takes its `StoredMessage.accountedSize` + 18 bytes.

/// The on-disk record format of the file store: encoding, header parsing and checksum checks.
enum LogRecord {
    enum Kind: UInt8 {
        case message = 1
        case deletion = 2
    }

    static let magic: UInt16 = 0x4B53
    static let headerSize = 30
    static let overhead = 34
    /// `length - accountedSize` for a message record.
    static let accountingDifference: UInt64 = 18
    /// No record is larger (a sanity bound for lengths read from disk, far above any NATS payload limit).
    static let maximumLength = 1 << 30

    /// The fixed fields of a record.
    struct Header {
        var kind: Kind
        var length: Int
        var sequence: UInt64
        var timestamp: Int64
        var subjectLength: Int
        var headersLength: Int

        var payloadLength: Int { self.length - LogRecord.overhead - self.subjectLength - self.headersLength }
    }

    /// Why the bytes at some offset are not a record (used in logs).
    enum Damage: Error, CustomStringConvertible {
        case tornHeader(available: Int)
        case badMagic
        case badKind(UInt8)
        case badLength(Int)
        case tornRecord(length: Int, available: UInt64)
        case badChecksum
        case badSequence(UInt64, String)
        case badDeletion

        var description: String {
            switch self {
            case .tornHeader(let available): "torn record header (\(available) bytes)"
            case .badMagic: "no record magic"
            case .badKind(let kind): "unknown record kind \(kind)"
            case .badLength(let length): "impossible record length \(length)"
            case .tornRecord(let length, let available): "torn record (\(length) bytes, \(available) in the file)"
            case .badChecksum: "checksum mismatch"
            case .badSequence(let sequence, let why): "sequence \(sequence) \(why)"
            case .badDeletion: "malformed deletion record"
            }
        }
    }

    // MARK: Encoding

    /// The length of the record for `message`, or nil when a field is too large for the format.
    static func encodedLength(of message: StoredMessage) -> Int? {
        let subject = message.subject.utf8.count
        guard subject <= Int(UInt16.max) else { return nil }
        let length = Self.overhead + subject + message.headers.count + message.payload.count
        return length <= Self.maximumLength ? length : nil
    }

    /// Writes the record for `message` at `destination`, which has room for `length` (its `encodedLength`) bytes.
    static func encode(_ message: StoredMessage, length: Int, into destination: UnsafeMutableRawPointer) {
        var subject = message.subject
        let subjectLength = subject.utf8.count
        Self.writeHeader(
            kind: .message,
            length: length,
            sequence: message.sequence,
            timestamp: message.timestamp,
            subjectLength: subjectLength,
            headersLength: message.headers.count,
            into: destination
        )
        var position = Self.headerSize
        subject.withUTF8 { utf8 in
            if let base = utf8.baseAddress { (destination + position).copyMemory(from: base, byteCount: utf8.count) }
        }
        position += subjectLength
        message.headers.withUnsafeBytes { bytes in
            if let base = bytes.baseAddress { (destination + position).copyMemory(from: base, byteCount: bytes.count) }
        }
        position += message.headers.count
        message.payload.withUnsafeBytes { bytes in
            if let base = bytes.baseAddress { (destination + position).copyMemory(from: base, byteCount: bytes.count) }
        }
        Self.seal(destination, length: length)
    }

    /// The record that removes every sequence in `ranges`.
    static func deletion(_ ranges: [ClosedRange<UInt64>]) -> [UInt8] {
        let length = Self.overhead + 16 * ranges.count
        return [UInt8](unsafeUninitializedCapacity: length) { buffer, initialized in
            let destination = UnsafeMutableRawPointer(buffer.baseAddress!)
            Self.writeHeader(
                kind: .deletion,
                length: length,
                sequence: 0,
                timestamp: 0,
                subjectLength: 0,
                headersLength: 0,
                into: destination
            )
            for (index, range) in ranges.enumerated() {
                destination.storeBytes(
                    of: range.lowerBound.littleEndian,
                    toByteOffset: Self.headerSize + 16 * index,
                    as: UInt64.self
                )
                destination.storeBytes(
                    of: range.upperBound.littleEndian,
                    toByteOffset: Self.headerSize + 16 * index + 8,
                    as: UInt64.self
                )
            }
            Self.seal(destination, length: length)
            initialized = length
        }
    }

    private static func writeHeader(
        kind: Kind,
        length: Int,
        sequence: UInt64,
        timestamp: Int64,
        subjectLength: Int,
        headersLength: Int,
        into destination: UnsafeMutableRawPointer
    ) {
        destination.storeBytes(of: Self.magic.littleEndian, toByteOffset: 0, as: UInt16.self)
        destination.storeBytes(of: kind.rawValue, toByteOffset: 2, as: UInt8.self)
        destination.storeBytes(of: 0, toByteOffset: 3, as: UInt8.self)
        destination.storeBytes(of: UInt32(length).littleEndian, toByteOffset: 4, as: UInt32.self)
        destination.storeBytes(of: sequence.littleEndian, toByteOffset: 8, as: UInt64.self)
        destination.storeBytes(of: timestamp.littleEndian, toByteOffset: 16, as: Int64.self)
        destination.storeBytes(of: UInt16(subjectLength).littleEndian, toByteOffset: 24, as: UInt16.self)
        destination.storeBytes(of: UInt32(headersLength).littleEndian, toByteOffset: 26, as: UInt32.self)
    }

    /// Stores the checksum of the first `length - 4` bytes in the last four.
    private static func seal(_ record: UnsafeMutableRawPointer, length: Int) {
        let crc = CRC32C.checksum(UnsafeRawBufferPointer(start: record, count: length - 4))
        record.storeBytes(of: crc.littleEndian, toByteOffset: length - 4, as: UInt32.self)
    }

    // MARK: Decoding

    /// Parses the fixed fields at `source`, which holds at least `headerSize` bytes; checks everything but the
    /// checksum and whether the whole record is there.
    static func parseHeader(_ source: UnsafeRawPointer) -> Result<Header, Damage> {
        guard UInt16(littleEndian: source.loadUnaligned(fromByteOffset: 0, as: UInt16.self)) == Self.magic else {
            return .failure(.badMagic)
        }
        let rawKind = source.load(fromByteOffset: 2, as: UInt8.self)
        guard let kind = Kind(rawValue: rawKind), source.load(fromByteOffset: 3, as: UInt8.self) == 0 else {
            return .failure(.badKind(rawKind))
        }
        let length = Int(UInt32(littleEndian: source.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
        let header = Header(
            kind: kind,
            length: length,
            sequence: UInt64(littleEndian: source.loadUnaligned(fromByteOffset: 8, as: UInt64.self)),
            timestamp: Int64(littleEndian: source.loadUnaligned(fromByteOffset: 16, as: Int64.self)),
            subjectLength: Int(UInt16(littleEndian: source.loadUnaligned(fromByteOffset: 24, as: UInt16.self))),
            headersLength: Int(UInt32(littleEndian: source.loadUnaligned(fromByteOffset: 26, as: UInt32.self)))
        )
        guard length >= Self.overhead, length <= Self.maximumLength,
            header.subjectLength + header.headersLength <= length - Self.overhead
        else {
            return .failure(.badLength(length))
        }
        if kind == .deletion, header.subjectLength != 0 || header.headersLength != 0 || header.payloadLength % 16 != 0 {
            return .failure(.badDeletion)
        }
        return .success(header)
    }

    /// Whether the checksum of the whole record at `record` (`length` bytes) matches.
    static func checksumMatches(_ record: UnsafeRawPointer, length: Int) -> Bool {
        let stored = UInt32(littleEndian: record.loadUnaligned(fromByteOffset: length - 4, as: UInt32.self))
        return CRC32C.checksum(UnsafeRawBufferPointer(start: record, count: length - 4)) == stored
    }

    /// The message in a checked record.
    static func message(_ header: Header, _ record: UnsafeRawPointer) -> StoredMessage {
        let subject = UnsafeRawBufferPointer(start: record + Self.headerSize, count: header.subjectLength)
        let headers = UnsafeRawBufferPointer(
            start: record + Self.headerSize + header.subjectLength,
            count: header.headersLength
        )
        let payload = UnsafeRawBufferPointer(
            start: record + Self.headerSize + header.subjectLength + header.headersLength,
            count: header.payloadLength
        )
        return StoredMessage(
            sequence: header.sequence,
            subject: String(decoding: subject, as: UTF8.self),
            headers: [UInt8](headers),
            payload: [UInt8](payload),
            timestamp: header.timestamp
        )
    }

    /// The subject of a checked message record.
    static func subject(_ header: Header, _ record: UnsafeRawPointer) -> String {
        String(
            decoding: UnsafeRawBufferPointer(start: record + Self.headerSize, count: header.subjectLength),
            as: UTF8.self
        )
    }

    /// The ranges of a checked deletion record.
    static func deletedRanges(_ header: Header, _ record: UnsafeRawPointer) -> [ClosedRange<UInt64>]? {
        var ranges: [ClosedRange<UInt64>] = []
        ranges.reserveCapacity(header.payloadLength / 16)
        var offset = Self.headerSize
        while offset < header.length - 4 {
            let first = UInt64(littleEndian: record.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
            let last = UInt64(littleEndian: record.loadUnaligned(fromByteOffset: offset + 8, as: UInt64.self))
            guard first <= last else { return nil }
            ranges.append(first...last)
            offset += 16
        }
        return ranges
    }
}
