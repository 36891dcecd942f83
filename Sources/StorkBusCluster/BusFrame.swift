import Foundation
import NIOCore
import StorkBus
import StorkStreaming

// MARK: - Bus frames
//
// What two nodes' buses say to each other, inside the payload of a cluster relay message (`ClusterMessage.relay`,
// which the cluster transport authenticates like every frame). All integers are big-endian and fixed width.
//
//   offset  size   field
//   0       1      bus format version = 2
//   1       1      kind: 1 delta, 2 snapshot, 3 digest, 4 pull, 8 node, 16 messages
//   2       n      body
//
// delta:    u64 version, list of added keys, list of removed keys
// snapshot: u64 version, list of keys
// digest:   u64 version
// pull:     nothing
// node:     optional str16 client URL (`host:port` of the sender's NATS endpoint)
// messages: u64 recipient uid, list of (str16 subject, optional str16 reply-to, optional bytes32 header block,
//           bytes32 payload, list16 of str16 queue groups the receiver serves)
//
// list = u32 count + elements (a count the bytes left cannot hold is refused before anything is allocated);
// list16 = u16 count + elements; str16 = u16 length + UTF-8; optional = u8 0/1 + value; bytes32 = u32 length +
// bytes. A key is a valid NATS subject pattern, or one and a queue group name separated by a space; subjects must be
// valid to publish to, queue groups valid names; anything else is a `BusFrameError`.

/// How one node's interest (the interest keys of its cluster-scoped subscriptions) travels to its peers.
public enum BusInterestMessage: Hashable, Sendable {
    /// The sender's interest went from version `version - 1` to `version` by these changes.
    case delta(version: UInt64, added: [String], removed: [String])
    /// The sender's whole interest at `version`.
    case snapshot(version: UInt64, patterns: [String])
    /// Anti-entropy: the sender's current version. A receiver that knows another one asks for a snapshot.
    case digest(version: UInt64)
    /// "Send me your snapshot."
    case pull
}

/// One message published on the sender's router, carried to a peer that is interested in its subject.
public struct BusRoutedMessage: Hashable, Sendable {
    public var subject: String
    public var replyTo: String?
    /// The NATS header block (`NATS/1.0\r\n…`), as published.
    public var headers: ByteBuffer?
    public var payload: ByteBuffer
    /// The queue groups the sender chose the receiver for: it delivers to one local member of each (and to all its
    /// plain subscribers).
    public var groups: [String]
    /// Where the receiver routes the message when not by its subject: a JetStream delivery keeps the stream's
    /// subject but goes to the consumer's deliver subject or a pull request's inbox. Nil: by its subject.
    public var routingSubject: String?

    public init(
        subject: String,
        replyTo: String? = nil,
        headers: ByteBuffer? = nil,
        payload: ByteBuffer,
        groups: [String] = [],
        routingSubject: String? = nil
    ) {
        self.subject = subject
        self.replyTo = replyTo
        self.headers = headers
        self.payload = payload
        self.groups = groups
        self.routingSubject = routingSubject
    }

    /// A message with its payload (and header block) given as bytes.
    public init(
        subject: String,
        replyTo: String? = nil,
        headers: [UInt8]? = nil,
        payload: [UInt8],
        groups: [String] = [],
        routingSubject: String? = nil
    ) {
        self.init(
            subject: subject,
            replyTo: replyTo,
            headers: headers.map { ByteBuffer(bytes: $0) },
            payload: ByteBuffer(bytes: payload),
            groups: groups,
            routingSubject: routingSubject
        )
    }

    /// The bytes this message takes in a `messages` frame.
    var encodedSize: Int {
        Self.encodedSize(
            subject: self.subject,
            replyTo: self.replyTo,
            headers: self.headers?.readableBytes,
            payload: self.payload.readableBytes,
            groups: self.groups,
            routingSubject: self.routingSubject
        )
    }

    static func encodedSize(
        subject: String,
        replyTo: String?,
        headers: Int?,
        payload: Int,
        groups: [String],
        routingSubject: String? = nil
    ) -> Int {
        var size = 2 + subject.utf8.count + 1 + 1 + 4 + payload + 2
        if let replyTo { size += 2 + replyTo.utf8.count }
        if let routingSubject { size += 2 + routingSubject.utf8.count }
        if let headers { size += 4 + headers }
        for group in groups { size += 2 + group.utf8.count }
        return size
    }
}

/// Everything one node's bus sends another's.
public enum BusFrame: Hashable, Sendable {
    case interest(BusInterestMessage)
    /// What the sender tells about itself: where its NATS clients connect (nil: it has no NATS endpoint).
    case node(clientURL: String?)
    /// Messages for the process whose uid is `recipient`: a restarted node (same address, new uid) drops what was
    /// meant for its previous life, which had other subscriptions.
    case messages(recipient: UInt64, [BusRoutedMessage])
}

/// Why a bus frame was refused. Messages never quote the frame's bytes.
public struct BusFrameError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Code: String, Hashable, Sendable, CaseIterable {
        /// The frame ends before a field it announces.
        case truncated
        /// A bus format version this node does not speak.
        case badVersion
        /// A frame kind this node does not know.
        case unknownKind
        /// An optional marker other than 0 or 1.
        case badEnumValue
        /// A string is not valid UTF-8.
        case invalidUTF8
        /// A pattern or subject that NATS would refuse, or a string longer than its field allows.
        case invalidSubject
        /// A list announces more elements than the bytes left could hold.
        case countTooLarge
        /// Bytes after the frame.
        case trailingBytes
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "bus frame \(self.code.rawValue): \(self.message)" }
}

// MARK: - BusFrameCodec

/// Encodes and decodes bus frames. Pure; never traps on input.
public enum BusFrameCodec {
    static let version: UInt8 = 2

    enum Kind: UInt8, CaseIterable {
        case delta = 1
        case snapshot = 2
        case digest = 3
        case pull = 4
        case node = 8
        case messages = 16
    }

    /// The bytes of a `messages` frame before its messages.
    static let messagesOverhead = 2 + 8 + 4

    /// Subjects, reply subjects and patterns are at most this many UTF-8 bytes.
    public static let maximumSubjectBytes = 4096

    /// Whether `url` is a `host:port` a client could connect to: printable ASCII without spaces, at most 255 bytes,
    /// a port after the last colon.
    public static func isValidClientURL(_ url: String) -> Bool {
        guard url.utf8.count <= 255, url.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }),
            let colon = url.lastIndex(of: ":"), let port = Int(url[url.index(after: colon)...]), (1...65535).contains(port)
        else { return false }
        return colon > url.startIndex
    }

    /// Whether `key` is a subject pattern, or one followed by a space and a queue group name.
    public static func isValidInterestKey(_ key: String) -> Bool {
        guard key.utf8.count <= Self.maximumSubjectBytes else { return false }
        let (pattern, queue) = BusRouter.parseInterestKey(key)
        guard Subject.isValidPattern(pattern) else { return false }
        guard let queue else { return true }
        return Subject.isValidLiteral(queue) && !queue.contains(".") && !queue.contains(" ")
    }

    public static func encode(_ frame: BusFrame) -> [UInt8] {
        var buffer = ByteBuffer()
        switch frame {
        case .interest(.delta(let version, let added, let removed)):
            buffer.writeInteger(Self.version)
            buffer.writeInteger(Kind.delta.rawValue)
            buffer.writeInteger(version)
            buffer.writeBusStrings(added)
            buffer.writeBusStrings(removed)
        case .interest(.snapshot(let version, let patterns)):
            buffer.writeInteger(Self.version)
            buffer.writeInteger(Kind.snapshot.rawValue)
            buffer.writeInteger(version)
            buffer.writeBusStrings(patterns)
        case .interest(.digest(let version)):
            buffer.writeInteger(Self.version)
            buffer.writeInteger(Kind.digest.rawValue)
            buffer.writeInteger(version)
        case .interest(.pull):
            buffer.writeInteger(Self.version)
            buffer.writeInteger(Kind.pull.rawValue)
        case .node(let clientURL):
            buffer.writeInteger(Self.version)
            buffer.writeInteger(Kind.node.rawValue)
            if let clientURL {
                buffer.writeInteger(UInt8(1))
                buffer.writeBusString(clientURL)
            } else {
                buffer.writeInteger(UInt8(0))
            }
        case .messages(let recipient, let messages):
            var body = ByteBuffer()
            for message in messages {
                body.writeBusMessage(
                    subject: message.subject,
                    replyTo: message.replyTo,
                    headers: message.headers,
                    payload: message.payload,
                    groups: message.groups,
                    routingSubject: message.routingSubject
                )
            }
            return Self.messagesFrame(recipient: recipient, count: messages.count, body: body)
        }
        return Array(buffer.readableBytesView)
    }

    /// A `messages` frame around messages already encoded one after the other (``ByteBuffer/writeBusMessage``).
    static func messagesFrame(recipient: UInt64, count: Int, body: ByteBuffer) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Self.messagesOverhead + body.readableBytes)
        bytes.append(Self.version)
        bytes.append(Kind.messages.rawValue)
        withUnsafeBytes(of: recipient.bigEndian) { bytes += $0 }
        withUnsafeBytes(of: UInt32(truncatingIfNeeded: count).bigEndian) { bytes += $0 }
        bytes += body.readableBytesView
        return bytes
    }

    public static func decode(_ bytes: [UInt8]) throws(BusFrameError) -> BusFrame {
        var reader = BusReader(ByteBuffer(bytes: bytes))
        let version = try reader.u8()
        guard version == Self.version else { throw BusFrameError(.badVersion, "bus format \(version)") }
        let raw = try reader.u8()
        guard let kind = Kind(rawValue: raw) else { throw BusFrameError(.unknownKind, "kind \(raw)") }
        let frame: BusFrame
        switch kind {
        case .delta:
            let version = try reader.u64()
            let added = try reader.patterns()
            let removed = try reader.patterns()
            frame = .interest(.delta(version: version, added: added, removed: removed))
        case .snapshot:
            let version = try reader.u64()
            frame = .interest(.snapshot(version: version, patterns: try reader.patterns()))
        case .digest:
            frame = .interest(.digest(version: try reader.u64()))
        case .pull:
            frame = .interest(.pull)
        case .node:
            var clientURL: String?
            if try reader.present() {
                let url = try reader.string()
                guard Self.isValidClientURL(url) else { throw BusFrameError(.invalidSubject, "an invalid client URL") }
                clientURL = url
            }
            frame = .node(clientURL: clientURL)
        case .messages:
            let recipient = try reader.u64()
            // subject (2 + 1), reply marker, header marker, payload length, group count.
            let count = try reader.count(minimumElementSize: 3 + 1 + 1 + 4 + 2)
            var messages: [BusRoutedMessage] = []
            messages.reserveCapacity(count)
            for _ in 0..<count {
                let subject = try reader.subject(published: true)
                // Bit 0: a reply subject follows; bit 1: then a routing subject (a literal one).
                let flags = try reader.u8()
                guard flags & ~0b11 == 0 else { throw BusFrameError(.badEnumValue, "message flags \(flags)") }
                let replyTo = flags & 1 != 0 ? try reader.subject(published: true) : nil
                let routingSubject = flags & 2 != 0 ? try reader.subject(published: true) : nil
                let headers = try reader.present() ? try reader.bytes32() : nil
                let payload = try reader.bytes32()
                let groupCount = Int(try reader.u16())
                var groups: [String] = []
                for _ in 0..<groupCount { groups.append(try reader.queueName()) }
                messages.append(
                    BusRoutedMessage(
                        subject: subject,
                        replyTo: replyTo,
                        headers: headers,
                        payload: payload,
                        groups: groups,
                        routingSubject: routingSubject
                    )
                )
            }
            frame = .messages(recipient: recipient, messages)
        }
        guard reader.isAtEnd else { throw BusFrameError(.trailingBytes, "\(reader.remaining) bytes after the frame") }
        return frame
    }
}

// MARK: - Writer and reader

extension ByteBuffer {
    /// Strings are validated before they get here (patterns and subjects of at most 4096 bytes).
    mutating func writeBusString(_ value: String) {
        let lengthIndex = self.writerIndex
        self.writeInteger(UInt16(0))
        let written = self.writeString(value)
        self.setInteger(UInt16(truncatingIfNeeded: written), at: lengthIndex)
    }

    mutating func writeBusStrings(_ values: [String]) {
        self.writeInteger(UInt32(truncatingIfNeeded: values.count))
        for value in values { self.writeBusString(value) }
    }

    /// One message of a `messages` frame.
    mutating func writeBusMessage(
        subject: String,
        replyTo: String?,
        headers: ByteBuffer?,
        payload: ByteBuffer,
        groups: [String],
        routingSubject: String? = nil
    ) {
        self.writeBusString(subject)
        // The reply marker of the first format, with bit 1 for a routing subject after the reply subject.
        self.writeInteger(UInt8((replyTo == nil ? 0 : 1) | (routingSubject == nil ? 0 : 2)))
        if let replyTo { self.writeBusString(replyTo) }
        if let routingSubject { self.writeBusString(routingSubject) }
        if var headers {
            self.writeInteger(UInt8(1))
            self.writeInteger(UInt32(truncatingIfNeeded: headers.readableBytes))
            self.writeBuffer(&headers)
        } else {
            self.writeInteger(UInt8(0))
        }
        var payload = payload
        self.writeInteger(UInt32(truncatingIfNeeded: payload.readableBytes))
        self.writeBuffer(&payload)
        self.writeInteger(UInt16(truncatingIfNeeded: groups.count))
        for group in groups { self.writeBusString(group) }
    }
}

/// Reads a frame; every read checks the bytes left first. Byte fields come out as slices of the frame's buffer.
struct BusReader {
    private var buffer: ByteBuffer
    /// The last subject found valid: the messages of a frame often share one, and it is not checked again.
    private var lastValidSubject: String?

    init(_ buffer: ByteBuffer) { self.buffer = buffer }

    /// Whether the next field is the length-prefixed `string`, byte for byte; if so it is consumed.
    private mutating func startsWithString(_ string: String) -> Bool {
        var string = string
        return string.withUTF8 { utf8 in
            guard let length = self.buffer.getInteger(at: self.buffer.readerIndex, as: UInt16.self), Int(length) == utf8.count,
                self.buffer.readableBytes >= 2 + utf8.count
            else { return false }
            let equal = self.buffer.withUnsafeReadableBytes { bytes in
                utf8.isEmpty || memcmp(bytes.baseAddress! + 2, utf8.baseAddress!, utf8.count) == 0
            }
            if equal { self.buffer.moveReaderIndex(forwardBy: 2 + utf8.count) }
            return equal
        }
    }

    var isAtEnd: Bool { self.buffer.readableBytes == 0 }
    var remaining: Int { self.buffer.readableBytes }

    private mutating func integer<T: FixedWidthInteger>(_: T.Type) throws(BusFrameError) -> T {
        guard let value = self.buffer.readInteger(as: T.self) else {
            throw BusFrameError(.truncated, "\(T.bitWidth / 8) bytes needed, \(self.remaining) left")
        }
        return value
    }

    mutating func u8() throws(BusFrameError) -> UInt8 { try self.integer(UInt8.self) }
    mutating func u16() throws(BusFrameError) -> UInt16 { try self.integer(UInt16.self) }
    mutating func u32() throws(BusFrameError) -> UInt32 { try self.integer(UInt32.self) }
    mutating func u64() throws(BusFrameError) -> UInt64 { try self.integer(UInt64.self) }

    mutating func present() throws(BusFrameError) -> Bool {
        switch try self.u8() {
        case 0: return false
        case 1: return true
        case let other: throw BusFrameError(.badEnumValue, "optional marker \(other)")
        }
    }

    mutating func count(minimumElementSize: Int) throws(BusFrameError) -> Int {
        let count = Int(try self.u32())
        guard count <= self.remaining / minimumElementSize else {
            throw BusFrameError(.countTooLarge, "\(count) elements announced, \(self.remaining) bytes left")
        }
        return count
    }

    mutating func string() throws(BusFrameError) -> String {
        let length = Int(try self.u16())
        guard length <= BusFrameCodec.maximumSubjectBytes else {
            throw BusFrameError(.invalidSubject, "a subject of \(length) bytes")
        }
        guard length <= self.remaining else {
            throw BusFrameError(.truncated, "\(length) bytes needed, \(self.remaining) left")
        }
        let string = self.buffer.withUnsafeReadableBytes { bytes -> String? in
            let bytes = UnsafeRawBufferPointer(rebasing: bytes[0..<length])
            // ASCII (nearly every subject) decodes exactly; anything else is validated, never repaired.
            if !bytes.contains(where: { $0 >= 0x80 }) { return String(decoding: bytes, as: UTF8.self) }
            return String(validating: Array(bytes), as: UTF8.self)
        }
        self.buffer.moveReaderIndex(forwardBy: length)
        guard let string else { throw BusFrameError(.invalidUTF8, "a subject is not valid UTF-8") }
        return string
    }

    /// A subject as published (`published`, where NATS accepts wildcard tokens as ordinary ones) or a pattern.
    mutating func subject(published: Bool) throws(BusFrameError) -> String {
        // The subject of the previous message again (a frame usually carries one publisher's burst): compared as
        // bytes, neither decoded nor validated again.
        if published, let last = self.lastValidSubject, self.startsWithString(last) { return last }
        let subject = try self.string()
        if published, subject == self.lastValidSubject { return subject }
        guard published ? Subject.isValidForPublish(subject) : Subject.isValidPattern(subject) else {
            throw BusFrameError(.invalidSubject, published ? "an invalid subject" : "an invalid subject pattern")
        }
        if published { self.lastValidSubject = subject }
        return subject
    }

    /// A queue group name: one token, no wildcard.
    mutating func queueName() throws(BusFrameError) -> String {
        let name = try self.string()
        guard Subject.isValidLiteral(name), !name.contains(".") else {
            throw BusFrameError(.invalidSubject, "an invalid queue group name")
        }
        return name
    }

    /// Interest keys: a pattern, or a pattern, a space and a queue group.
    mutating func patterns() throws(BusFrameError) -> [String] {
        let count = try self.count(minimumElementSize: 2)
        var patterns: [String] = []
        patterns.reserveCapacity(count)
        for _ in 0..<count {
            let key = try self.string()
            guard BusFrameCodec.isValidInterestKey(key) else {
                throw BusFrameError(.invalidSubject, "an invalid subject pattern")
            }
            patterns.append(key)
        }
        return patterns
    }

    mutating func bytes32() throws(BusFrameError) -> ByteBuffer {
        let length = Int(try self.u32())
        guard let slice = self.buffer.readSlice(length: length) else {
            throw BusFrameError(.truncated, "\(length) bytes needed, \(self.remaining) left")
        }
        return slice
    }
}
