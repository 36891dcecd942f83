import NIOCore
import StorkBus

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Lines and arguments

/// Tolerant tokenizing shared by both parsers: fields are separated by one or more spaces or tabs, a line ends with
/// `\n` and an optional `\r` before it, operation names are case-insensitive.
enum NATSLine {
    /// The index of the first `\n` in the readable bytes, or nil.
    static func newlineOffset(in buffer: ByteBuffer) -> Int? {
        buffer.withUnsafeReadableBytes { bytes in
            bytes.firstIndex(of: UInt8(ascii: "\n"))
        }
    }

    /// The offset of the first `\n` within the first `limit + 2` bytes (a longer line is refused anyway), or nil.
    static func newlineOffset(in bytes: UnsafeRawBufferPointer, limit: Int) -> Int? {
        guard let base = bytes.baseAddress else { return nil }
        let window = limit > bytes.count ? bytes.count : min(bytes.count, limit + 2)
        guard let found = memchr(base, Int32(UInt8(ascii: "\n")), window) else { return nil }
        let offset = base.distance(to: UnsafeRawPointer(found))
        return offset > limit ? nil : offset
    }

    /// Splits a control line (without its line ending) into fields.
    static func fields(_ line: UnsafeRawBufferPointer) -> [UnsafeRawBufferPointer] {
        var fields: [UnsafeRawBufferPointer] = []
        fields.reserveCapacity(5)
        var start = -1
        for index in 0..<line.count {
            let byte = line[index]
            if byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") {
                if start >= 0 {
                    fields.append(UnsafeRawBufferPointer(rebasing: line[start..<index]))
                    start = -1
                }
            } else if start < 0 {
                start = index
            }
        }
        if start >= 0 { fields.append(UnsafeRawBufferPointer(rebasing: line[start..<line.count])) }
        return fields
    }

    /// The operation name, upper-cased (ASCII letters only), or nil when it is not a plausible name.
    static func operation(_ field: UnsafeRawBufferPointer) -> UInt64? {
        guard field.count <= 8 else { return nil }
        var packed: UInt64 = 0
        for byte in field {
            let upper = (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z")) ? byte - 32 : byte
            packed = packed << 8 | UInt64(upper)
        }
        return packed
    }

    /// The operation (the bytes before the first space or tab, packed by ``operation(_:)``) and the rest of the line.
    static func split(
        _ line: UnsafeRawBufferPointer
    ) throws(NATSProtocolError) -> (operation: UInt64, rest: UnsafeRawBufferPointer) {
        var nameEnd = 0
        while nameEnd < line.count, line[nameEnd] != UInt8(ascii: " "), line[nameEnd] != UInt8(ascii: "\t") {
            nameEnd += 1
        }
        guard let operation = self.operation(UnsafeRawBufferPointer(rebasing: line[0..<nameEnd])) else {
            throw .unknownOperation
        }
        return (operation, UnsafeRawBufferPointer(rebasing: line[nameEnd..<line.count]))
    }

    /// Takes a message body of `totalSize` bytes (the first `headerSize` of them headers) and its closing CRLF.
    static func readBody(
        _ buffer: inout ByteBuffer,
        headerSize: Int,
        totalSize: Int
    ) throws(NATSProtocolError) -> (headers: ByteBuffer?, payload: ByteBuffer) {
        let start = buffer.readerIndex
        guard buffer.getInteger(at: start + totalSize, as: UInt16.self) == 0x0D0A else { throw .parserError }
        let headers = headerSize > 0 ? buffer.getSlice(at: start, length: headerSize) : nil
        let payload = buffer.getSlice(at: start + headerSize, length: totalSize - headerSize)!
        buffer.moveReaderIndex(forwardBy: totalSize + 2)
        return (headers, payload)
    }

    static func pack(_ name: StaticString) -> UInt64 {
        var packed: UInt64 = 0
        name.withUTF8Buffer { for byte in $0 { packed = packed << 8 | UInt64(byte) } }
        return packed
    }

    /// A non-negative decimal, or nil (empty, a non-digit, or more than 18 digits).
    static func decimal(_ field: UnsafeRawBufferPointer) -> Int? {
        guard !field.isEmpty, field.count <= 18 else { return nil }
        var value = 0
        for byte in field {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            value = value * 10 + Int(byte - UInt8(ascii: "0"))
        }
        return value
    }

    static func string(_ field: UnsafeRawBufferPointer) -> String {
        String(decoding: field, as: UTF8.self)
    }

    /// The control line without its ending: `count` bytes up to the `\n`, less a `\r` before it.
    static func lineLength(_ newline: Int, in bytes: UnsafeRawBufferPointer) -> Int {
        newline > 0 && bytes[newline - 1] == UInt8(ascii: "\r") ? newline - 1 : newline
    }

    static let pub = pack("PUB")
    static let hpub = pack("HPUB")
    static let sub = pack("SUB")
    static let unsub = pack("UNSUB")
    static let ping = pack("PING")
    static let pong = pack("PONG")
    static let connect = pack("CONNECT")
    static let msg = pack("MSG")
    static let hmsg = pack("HMSG")
    static let info = pack("INFO")
    static let ok = pack("+OK")
    static let err = pack("-ERR")
}

// MARK: - NATSClientParser

/// Parses what a client sends, incrementally: feed it the bytes read so far and take operations until it returns
/// nil (it needs more bytes). It consumes what it returns; a thrown error is a protocol violation and the
/// connection should answer it with `-ERR` (and close when ``NATSProtocolError/closesConnection``).
///
/// Pure: no I/O, no allocation beyond the fields it returns. Fuzzed in StorkNATSTests.
public struct NATSClientParser: Sendable {
    /// The longest control line accepted (NATS: `max_control_line`, 4096).
    public var maxControlLine: Int
    /// The largest payload (headers included) accepted (NATS: `max_payload`, 1 MiB).
    public var maxPayload: Int

    /// A `PUB`/`HPUB` whose control line was read and whose payload has not fully arrived.
    private var pending: Pending?

    public init(maxControlLine: Int = 4096, maxPayload: Int = 1_048_576) {
        self.maxControlLine = maxControlLine
        self.maxPayload = maxPayload
    }

    /// The subject of the last `PUB`, kept so that a client publishing to the same subject again and again (the
    /// common case) gets the same `String` back without allocating, and routes through its connection's match cache.
    private var lastSubjectBytes: [UInt8] = []
    private var lastSubject = ""

    /// The next operation from `buffer`, nil when more bytes are needed.
    public mutating func next(_ buffer: inout ByteBuffer) throws(NATSProtocolError) -> NATSClientOperation? {
        if let pending = self.pending {
            guard buffer.readableBytes >= pending.totalSize + 2 else { return nil }
            self.pending = nil
            return .publish(try Self.readPayload(&buffer, pending))
        }
        let maxControlLine = self.maxControlLine
        // One pass over the readable bytes: find the line end and, for the hot `PUB`, its fields in place.
        let scanned: LineScan = buffer.withUnsafeReadableBytes { bytes in
            guard let newline = NATSLine.newlineOffset(in: bytes, limit: maxControlLine) else {
                return bytes.count > maxControlLine ? .tooLong : .incomplete
            }
            let length = NATSLine.lineLength(newline, in: bytes)
            let line = UnsafeRawBufferPointer(rebasing: bytes[0..<length])
            if let publish = self.scanPublish(line) {
                // The payload is usually there already: check its closing CRLF here, in the same pass.
                let end = newline + 1 + publish.totalSize
                guard bytes.count >= end + 2 else { return .publish(publish, consumed: newline + 1) }
                let closed = bytes[end] == UInt8(ascii: "\r") && bytes[end + 1] == UInt8(ascii: "\n")
                return .complete(publish, lineBytes: newline + 1, closed: closed)
            }
            do throws(NATSProtocolError) {
                return .operation(try self.parseLine(line), consumed: newline + 1)
            } catch {
                return .failed(error, consumed: newline + 1)
            }
        }
        switch scanned {
        case .incomplete:
            return nil
        case .tooLong:
            throw .maxControlLineExceeded
        case .failed(let error, let consumed):
            buffer.moveReaderIndex(forwardBy: consumed)
            throw error
        case .operation(let operation, let consumed):
            buffer.moveReaderIndex(forwardBy: consumed)
            if operation != nil { return operation }
        case .publish(let publish, let consumed):
            buffer.moveReaderIndex(forwardBy: consumed)
            self.pending = publish
        case .complete(let publish, let lineBytes, let closed):
            guard closed else {
                buffer.moveReaderIndex(forwardBy: lineBytes)
                throw .parserError
            }
            let payload = buffer.getSlice(at: buffer.readerIndex + lineBytes, length: publish.totalSize)!
            buffer.moveReaderIndex(forwardBy: lineBytes + publish.totalSize + 2)
            return .publish(BusMessage(subject: publish.subject, replyTo: publish.replyTo, payload: payload))
        }
        // A PUB/HPUB line: the payload follows.
        guard let pending = self.pending, buffer.readableBytes >= pending.totalSize + 2 else { return nil }
        self.pending = nil
        return .publish(try Self.readPayload(&buffer, pending))
    }

    /// A `PUB`/`HPUB` line read, its payload not yet.
    private struct Pending {
        var subject: String
        var replyTo: String?
        var headerSize: Int
        var totalSize: Int
    }

    private enum LineScan {
        case incomplete
        case tooLong
        case publish(Pending, consumed: Int)
        /// A `PUB` whose payload has arrived too; `closed` tells whether CRLF follows it.
        case complete(Pending, lineBytes: Int, closed: Bool)
        case operation(NATSClientOperation?, consumed: Int)
        case failed(NATSProtocolError, consumed: Int)
    }

    /// `PUB <subject> [reply] <size>` read in place, without an array of fields. Nil when the line is not a
    /// well-formed PUB within the limits (the general path then parses it, and reports what is wrong).
    private mutating func scanPublish(_ line: UnsafeRawBufferPointer) -> Pending? {
        let count = line.count
        guard count > 4, let base = line.baseAddress else { return nil }
        let bytes = base.assumingMemoryBound(to: UInt8.self)
        guard bytes[0] | 0x20 == UInt8(ascii: "p"), bytes[1] | 0x20 == UInt8(ascii: "u"),
            bytes[2] | 0x20 == UInt8(ascii: "b"), bytes[3] == 0x20 || bytes[3] == 0x09
        else { return nil }
        // Up to three fields: subject, optional reply, size.
        var starts = (0, 0, 0)
        var ends = (0, 0, 0)
        var fields = 0
        var index = 4
        while true {
            while index < count, bytes[index] == 0x20 || bytes[index] == 0x09 { index += 1 }
            if index == count { break }
            let start = index
            while index < count, bytes[index] != 0x20, bytes[index] != 0x09 { index += 1 }
            switch fields {
            case 0: starts.0 = start; ends.0 = index
            case 1: starts.1 = start; ends.1 = index
            case 2: starts.2 = start; ends.2 = index
            default: return nil
            }
            fields += 1
        }
        let sizeStart: Int
        let sizeEnd: Int
        var replyTo: String?
        switch fields {
        case 2:
            (sizeStart, sizeEnd) = (starts.1, ends.1)
        case 3:
            (sizeStart, sizeEnd) = (starts.2, ends.2)
            replyTo = String(decoding: UnsafeBufferPointer(start: bytes + starts.1, count: ends.1 - starts.1), as: UTF8.self)
        default:
            return nil
        }
        guard sizeEnd - sizeStart <= 18 else { return nil }
        var size = 0
        for position in sizeStart..<sizeEnd {
            let digit = bytes[position] &- UInt8(ascii: "0")
            guard digit < 10 else { return nil }
            size = size * 10 + Int(digit)
        }
        guard size <= self.maxPayload else { return nil }
        let subjectCount = ends.0 - starts.0
        let same = subjectCount == self.lastSubjectBytes.count
            && self.lastSubjectBytes.withUnsafeBytes { memcmp($0.baseAddress!, bytes + starts.0, subjectCount) == 0 }
        if !same {
            let subject = UnsafeBufferPointer(start: bytes + starts.0, count: subjectCount)
            self.lastSubjectBytes = Array(subject)
            self.lastSubject = String(decoding: subject, as: UTF8.self)
        }
        return Pending(subject: self.lastSubject, replyTo: replyTo, headerSize: 0, totalSize: size)
    }

    /// Parses one control line. Returns nil for PUB/HPUB (the payload is read next, `pending` is set).
    private mutating func parseLine(_ line: UnsafeRawBufferPointer) throws(NATSProtocolError) -> NATSClientOperation? {
        let (operation, rest) = try NATSLine.split(line)
        switch operation {
        case NATSLine.pub:
            let fields = NATSLine.fields(rest)
            guard fields.count == 2 || fields.count == 3, let size = NATSLine.decimal(fields[fields.count - 1]) else {
                throw .parserError
            }
            guard size <= self.maxPayload else { throw .maxPayloadViolation }
            self.pending = Pending(
                subject: NATSLine.string(fields[0]),
                replyTo: fields.count == 3 ? NATSLine.string(fields[1]) : nil,
                headerSize: 0,
                totalSize: size
            )
            return nil
        case NATSLine.hpub:
            let fields = NATSLine.fields(rest)
            guard fields.count == 3 || fields.count == 4,
                let headerSize = NATSLine.decimal(fields[fields.count - 2]),
                let totalSize = NATSLine.decimal(fields[fields.count - 1]),
                headerSize <= totalSize
            else { throw .parserError }
            guard totalSize <= self.maxPayload else { throw .maxPayloadViolation }
            self.pending = Pending(
                subject: NATSLine.string(fields[0]),
                replyTo: fields.count == 4 ? NATSLine.string(fields[1]) : nil,
                headerSize: headerSize,
                totalSize: totalSize
            )
            return nil
        case NATSLine.sub:
            let fields = NATSLine.fields(rest)
            switch fields.count {
            case 2: return .subscribe(subject: NATSLine.string(fields[0]), queue: nil, sid: NATSLine.string(fields[1]))
            case 3:
                return .subscribe(
                    subject: NATSLine.string(fields[0]),
                    queue: NATSLine.string(fields[1]),
                    sid: NATSLine.string(fields[2])
                )
            default: throw .parserError
            }
        case NATSLine.unsub:
            let fields = NATSLine.fields(rest)
            switch fields.count {
            case 1: return .unsubscribe(sid: NATSLine.string(fields[0]), max: nil)
            case 2:
                guard let max = NATSLine.decimal(fields[1]) else { throw .parserError }
                return .unsubscribe(sid: NATSLine.string(fields[0]), max: max)
            default: throw .parserError
            }
        case NATSLine.ping:
            return .ping
        case NATSLine.pong:
            return .pong
        case NATSLine.connect:
            var start = 0
            while start < rest.count, rest[start] == UInt8(ascii: " ") || rest[start] == UInt8(ascii: "\t") {
                start += 1
            }
            var buffer = ByteBuffer()
            buffer.writeBytes(UnsafeRawBufferPointer(rebasing: rest[start..<rest.count]))
            return .connect(buffer)
        default:
            throw .unknownOperation
        }
    }

    private static func readPayload(
        _ buffer: inout ByteBuffer,
        _ pending: Pending
    ) throws(NATSProtocolError) -> BusMessage {
        let (headers, payload) = try NATSLine.readBody(
            &buffer,
            headerSize: pending.headerSize,
            totalSize: pending.totalSize
        )
        return BusMessage(
                subject: pending.subject, replyTo: pending.replyTo, headers: headers.map(MessageHeaders.init(block:)), payload: payload
            )
    }
}

// MARK: - NATSServerParser

/// Parses what a server sends (`INFO`, `MSG`, `HMSG`, `PING`, `PONG`, `+OK`, `-ERR`), incrementally, for Stork's
/// own client.
public struct NATSServerParser: Sendable {
    public var maxControlLine: Int
    private var pending: (subject: String, sid: String, replyTo: String?, headerSize: Int, totalSize: Int)?

    public init(maxControlLine: Int = 65536) {
        self.maxControlLine = maxControlLine
    }

    public mutating func next(_ buffer: inout ByteBuffer) throws(NATSProtocolError) -> NATSServerOperation? {
        if self.pending == nil {
            guard let newline = NATSLine.newlineOffset(in: buffer) else {
                if buffer.readableBytes > self.maxControlLine { throw .maxControlLineExceeded }
                return nil
            }
            let parsed: Result<NATSServerOperation?, NATSProtocolError> = buffer.withUnsafeReadableBytes { bytes in
                let line = UnsafeRawBufferPointer(rebasing: bytes[0..<NATSLine.lineLength(newline, in: bytes)])
                return Result { () throws(NATSProtocolError) in try self.parseLine(line) }
            }
            buffer.moveReaderIndex(forwardBy: newline + 1)
            if let operation = try parsed.get() { return operation }
        }
        guard let pending = self.pending, buffer.readableBytes >= pending.totalSize + 2 else { return nil }
        self.pending = nil
        let (headers, payload) = try NATSLine.readBody(
            &buffer,
            headerSize: pending.headerSize,
            totalSize: pending.totalSize
        )
        return .message(
            BusMessage(
                subject: pending.subject, replyTo: pending.replyTo, headers: headers.map(MessageHeaders.init(block:)), payload: payload
            ),
            sid: pending.sid
        )
    }

    private mutating func parseLine(_ line: UnsafeRawBufferPointer) throws(NATSProtocolError) -> NATSServerOperation? {
        let (operation, rest) = try NATSLine.split(line)
        switch operation {
        case NATSLine.msg:
            let fields = NATSLine.fields(rest)
            guard fields.count == 3 || fields.count == 4, let size = NATSLine.decimal(fields[fields.count - 1]) else {
                throw .parserError
            }
            self.pending = (
                NATSLine.string(fields[0]), NATSLine.string(fields[1]),
                fields.count == 4 ? NATSLine.string(fields[2]) : nil, 0, size
            )
            return nil
        case NATSLine.hmsg:
            let fields = NATSLine.fields(rest)
            guard fields.count == 4 || fields.count == 5,
                let headerSize = NATSLine.decimal(fields[fields.count - 2]),
                let totalSize = NATSLine.decimal(fields[fields.count - 1]),
                headerSize <= totalSize
            else { throw .parserError }
            self.pending = (
                NATSLine.string(fields[0]), NATSLine.string(fields[1]),
                fields.count == 5 ? NATSLine.string(fields[2]) : nil, headerSize, totalSize
            )
            return nil
        case NATSLine.ping: return .ping
        case NATSLine.pong: return .pong
        case NATSLine.ok: return .ok
        case NATSLine.err:
            var text = NATSLine.string(rest).trimmingSpaces()
            if text.hasPrefix("'"), text.hasSuffix("'"), text.count >= 2 { text = String(text.dropFirst().dropLast()) }
            return .error(text)
        case NATSLine.info:
            var buffer = ByteBuffer()
            buffer.writeBytes(rest)
            return .info(buffer)
        default:
            throw .unknownOperation
        }
    }
}

extension String {
    func trimmingSpaces() -> String {
        var view = Substring(self)
        while let first = view.first, first == " " || first == "\t" { view = view.dropFirst() }
        while let last = view.last, last == " " || last == "\t" { view = view.dropLast() }
        return String(view)
    }
}
