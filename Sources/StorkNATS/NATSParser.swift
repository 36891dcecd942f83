import NIOCore

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
    private var pending: (subject: String, replyTo: String?, headerSize: Int, totalSize: Int)?

    public init(maxControlLine: Int = 4096, maxPayload: Int = 1_048_576) {
        self.maxControlLine = maxControlLine
        self.maxPayload = maxPayload
    }

    /// The next operation from `buffer`, nil when more bytes are needed.
    public mutating func next(_ buffer: inout ByteBuffer) throws(NATSProtocolError) -> NATSClientOperation? {
        if let pending = self.pending {
            guard buffer.readableBytes >= pending.totalSize + 2 else { return nil }
            self.pending = nil
            return .publish(try Self.readPayload(&buffer, pending))
        }
        guard let newline = NATSLine.newlineOffset(in: buffer) else {
            if buffer.readableBytes > self.maxControlLine { throw .maxControlLineExceeded }
            return nil
        }
        if newline > self.maxControlLine { throw .maxControlLineExceeded }
        let parsed: Result<NATSClientOperation?, NATSProtocolError> = buffer.withUnsafeReadableBytes { bytes in
            let line = UnsafeRawBufferPointer(rebasing: bytes[0..<NATSLine.lineLength(newline, in: bytes)])
            return Result { () throws(NATSProtocolError) in try self.parseLine(line) }
        }
        buffer.moveReaderIndex(forwardBy: newline + 1)
        let operation = try parsed.get()
        if operation == nil, let pending = self.pending {
            // A PUB/HPUB line: the payload follows.
            guard buffer.readableBytes >= pending.totalSize + 2 else { return nil }
            self.pending = nil
            return .publish(try Self.readPayload(&buffer, pending))
        }
        return operation
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
            self.pending = (
                NATSLine.string(fields[0]), fields.count == 3 ? NATSLine.string(fields[1]) : nil, 0, size
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
            self.pending = (
                NATSLine.string(fields[0]), fields.count == 4 ? NATSLine.string(fields[1]) : nil, headerSize,
                totalSize
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
        _ pending: (subject: String, replyTo: String?, headerSize: Int, totalSize: Int)
    ) throws(NATSProtocolError) -> NATSMessage {
        let (headers, payload) = try NATSLine.readBody(
            &buffer,
            headerSize: pending.headerSize,
            totalSize: pending.totalSize
        )
        return NATSMessage(subject: pending.subject, replyTo: pending.replyTo, headers: headers, payload: payload)
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
            NATSMessage(subject: pending.subject, replyTo: pending.replyTo, headers: headers, payload: payload),
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
