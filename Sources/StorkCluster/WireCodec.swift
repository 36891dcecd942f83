import Crypto
import Foundation
import StorkCore
import StorkMembership
import StorkResources

// MARK: - Wire format, version 1
//
// One frame is a UDP datagram, or the payload of a TCP frame (TCP adds a 4-byte big-endian length in front, which
// is not part of the frame). All integers are big-endian and fixed width.
//
//   offset  size   field
//   0       3      magic "STK"
//   3       1      version = 1
//   4       1      flags: bit 0 = authenticated (a MAC follows the body), bit 1 = datagram (the sequence comes from
//                  the sender's datagram counter); every other bit must be 0
//   5       1+n    cluster name: u8 length (at most 64) + UTF-8
//   .       8      sender uid: random per transport instance (per process start)
//   .       8      sequence: per sender and per channel (datagram / stream), starts at 1, increases by 1 per frame
//   .       1      message kind (`WireCodec.Kind`)
//   .       4      body length
//   .       n      body
//   .       32     HMAC-SHA256 over every byte above, when flag bit 0 is set
//
// Body values: node = str8 name, str8 address, u64 uid; str8 = u8 length + UTF-8 (at most 255 bytes); str16 = u16
// length + UTF-8 (at most 1024 bytes: resource ids, version origins, source names); optional = u8 0/1 + value;
// bool = u8 0/1; list = u32 count + elements, where the count must fit in the bytes left (checked before anything
// is allocated); a resource = u32 length + compact JSON (sorted keys, nesting at most 64 deep) whose "id" must equal
// the entry's id. Enumerations travel as u8 raw values and anything unknown is an error. A relay frame (kind 64) is a
// node and bytes32 (u32 length + bytes): the relay's own encoding, opaque here, authenticated like every frame.
//
// With a cluster key every frame must carry a valid MAC, and without one no frame may: a node never silently
// accepts unauthenticated traffic because a peer forgot its key. The MAC covers the header too, so the sender uid,
// the sequence and the datagram flag cannot be changed; the transport drops a frame whose (uid, channel, sequence)
// it has already seen or that is older than its replay window (`ReplayWindow`).

// MARK: - Errors

/// Why a frame was rejected (decoding) or could not be built (encoding). Messages never quote the frame's bytes.
public struct WireError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Code: String, Hashable, Sendable, CaseIterable {
        /// The frame ends before a field it announces.
        case truncated
        /// The frame, a datagram or a TCP length prefix is larger than allowed.
        case oversized
        /// Not a Stork frame.
        case badMagic
        /// A wire version this node does not speak.
        case badVersion
        /// Unknown flag bits, or a datagram flag that does not match the channel the frame arrived on.
        case badFlags
        /// The frame belongs to another cluster.
        case wrongCluster
        /// This node has a cluster key and the frame carries no MAC.
        case missingMAC
        /// The frame carries a MAC and this node has no cluster key.
        case unexpectedMAC
        /// The MAC does not match: another key, or a forged or corrupted frame.
        case badMAC
        /// A message kind this node does not know.
        case unknownKind
        /// An enumeration (member status, boolean, operation, answer, optional marker) with an unknown raw value.
        case badEnumValue
        /// A string is not valid UTF-8.
        case invalidUTF8
        /// A resource is not valid JSON, not an object with a string "id", or nested too deeply.
        case invalidJSON
        /// A string is longer than its field allows.
        case fieldTooLong
        /// A list announces more elements than the bytes left could hold.
        case countTooLarge
        /// A value that decodes but makes no sense (a resource whose id differs from its entry's).
        case badValue
        /// Bytes after the message or after the MAC.
        case trailingBytes
        /// A replayed or too old frame (the transport's replay window, only with a cluster key).
        case stale
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(self.code.rawValue): \(self.message)" }
}

// MARK: - Settings, header, frame

/// Limits of the wire format.
public enum WireLimits {
    /// Cluster names are at most this many UTF-8 bytes.
    public static let maximumClusterNameBytes = 64
    /// Node names and addresses are at most this many UTF-8 bytes.
    public static let maximumNameBytes = 255
    /// Resource ids, version origins and source names are at most this many UTF-8 bytes.
    public static let maximumIDBytes = 1024
    /// Resource JSON may nest arrays and objects at most this deep.
    public static let maximumJSONDepth = 64
    /// The bytes of a frame before its body, not counting the cluster name.
    static let fixedHeaderBytes = 3 + 1 + 1 + 1 + 8 + 8 + 1 + 4
    static let macBytes = 32
}

/// What the encoder and the decoder of one cluster agree on.
public struct WireSettings: Sendable {
    /// The cluster name every frame carries; frames of other clusters are rejected.
    public var clusterName: String
    /// The largest frame encoded or accepted, MAC included (the TCP length prefix is not counted).
    public var maximumFrameSize: Int
    /// The HMAC key: SHA-256 of the cluster key. Nil when the cluster has no key.
    var key: SymmetricKey? { self.macKey?.key }
    private let macKey: MACKey?

    /// - Parameters:
    ///   - clusterName: at most 64 UTF-8 bytes (checked by `validate()` and by the encoder).
    ///   - clusterKey: any string; the HMAC-SHA256 key is its SHA-256. Nil: frames are not authenticated.
    ///   - maximumFrameSize: 16 MiB by default.
    public init(clusterName: String, clusterKey: String?, maximumFrameSize: Int = 16 << 20) {
        self.clusterName = clusterName
        self.macKey = clusterKey.map { MACKey(key: SymmetricKey(data: SHA256.hash(data: Array($0.utf8)))) }
        self.maximumFrameSize = maximumFrameSize
    }

    /// Whether frames are authenticated.
    public var isAuthenticated: Bool { self.key != nil }

    /// Throws when the settings cannot produce valid frames.
    public func validate() throws(WireError) {
        guard self.clusterName.utf8.count <= WireLimits.maximumClusterNameBytes else {
            throw WireError(.fieldTooLong, "the cluster name is longer than \(WireLimits.maximumClusterNameBytes) bytes")
        }
        let smallest = WireLimits.fixedHeaderBytes + self.clusterName.utf8.count + WireLimits.macBytes
        guard self.maximumFrameSize >= smallest else {
            throw WireError(.oversized, "the maximum frame size \(self.maximumFrameSize) is below \(smallest) bytes")
        }
    }
}

/// Carries the HMAC key across threads.
///
/// `@unchecked Sendable`: swift-crypto 3 does not mark `SymmetricKey` as `Sendable`, but it is an immutable value
/// (its bytes are written once, at creation, and only read afterwards), so sharing it is safe.
struct MACKey: @unchecked Sendable {
    let key: SymmetricKey
}

/// The authenticated header fields that the transport needs for replay protection.
public struct WireHeader: Hashable, Sendable {
    /// Random per transport instance: a restarted process starts new sequences under a new uid.
    public var senderUID: UInt64
    /// Per sender and channel; increases with every frame.
    public var sequence: UInt64
    /// The frame was sent as a UDP datagram (its sequence comes from the sender's datagram counter).
    public var isDatagram: Bool

    public init(senderUID: UInt64, sequence: UInt64, isDatagram: Bool) {
        self.senderUID = senderUID
        self.sequence = sequence
        self.isDatagram = isDatagram
    }
}

/// A decoded frame.
public struct WireFrame: Hashable, Sendable {
    public var header: WireHeader
    public var message: ClusterMessage

    public var senderUID: UInt64 { self.header.senderUID }
    public var sequence: UInt64 { self.header.sequence }
}

// MARK: - WireCodec

/// Encodes and decodes cluster messages (`ClusterMessage`) to and from frames of wire version 1. Pure: no I/O, no
/// NIO types; bytes are `[UInt8]`. The decoder never traps and never allocates more than a small multiple of the
/// frame's size: anything malformed, oversized, foreign or forged is a `WireError`.
public enum WireCodec {
    static let magic: [UInt8] = Array("STK".utf8)
    static let version: UInt8 = 1
    static let flagAuthenticated: UInt8 = 1 << 0
    static let flagDatagram: UInt8 = 1 << 1

    /// The message kinds, one per case of every message enumeration.
    enum Kind: UInt8, CaseIterable {
        case ping = 1
        case ack = 2
        case pingRequest = 3
        case nack = 4
        case gossip = 5
        case pushPull = 6
        case releaseRequest = 16
        case releaseConfirm = 17
        case releaseRefuse = 18
        case desiredDelta = 32
        case desiredDigest = 33
        case desiredState = 34
        case desiredReplicate = 35
        case desiredHeld = 36
        case forwardRequest = 48
        case forwardReply = 49
        case relay = 64
    }

    // MARK: Encoding

    /// Encodes one message into a frame.
    ///
    /// Throws `fieldTooLong` when a name, address or id exceeds its field, `invalidJSON` when a resource has an
    /// attribute JSON cannot carry (NaN, infinity), and `oversized` when the frame exceeds
    /// `settings.maximumFrameSize`.
    public static func encode(
        _ message: ClusterMessage,
        header: WireHeader,
        settings: WireSettings
    ) throws(WireError) -> [UInt8] {
        let (kind, body) = try Self.encodeBody(message)
        return try Self.assemble(kind: kind.rawValue, body: body, header: header, settings: settings)
    }

    /// The kind and the body of a message, without the header (the transport builds the header per channel).
    static func encodeBody(_ message: ClusterMessage) throws(WireError) -> (Kind, [UInt8]) {
        var writer = WireWriter()
        let kind = try writer.message(message)
        return (kind, writer.bytes)
    }

    /// Builds a frame around a body. `kind` is a raw byte so that tests can build frames of unknown kinds.
    static func assemble(
        kind: UInt8,
        body: [UInt8],
        header: WireHeader,
        settings: WireSettings
    ) throws(WireError) -> [UInt8] {
        try settings.validate()
        let name = Array(settings.clusterName.utf8)
        let size = WireLimits.fixedHeaderBytes + name.count + body.count + (settings.key == nil ? 0 : WireLimits.macBytes)
        guard size <= settings.maximumFrameSize, body.count <= UInt32.max else {
            throw WireError(.oversized, "a frame of \(size) bytes exceeds the maximum of \(settings.maximumFrameSize)")
        }
        var writer = WireWriter()
        writer.bytes.reserveCapacity(size)
        writer.bytes += Self.magic
        writer.u8(Self.version)
        var flags: UInt8 = 0
        if settings.key != nil { flags |= Self.flagAuthenticated }
        if header.isDatagram { flags |= Self.flagDatagram }
        writer.u8(flags)
        writer.u8(UInt8(name.count))
        writer.bytes += name
        writer.u64(header.senderUID)
        writer.u64(header.sequence)
        writer.u8(kind)
        writer.u32(UInt32(body.count))
        writer.bytes += body
        if let key = settings.key {
            writer.bytes += HMAC<SHA256>.authenticationCode(for: writer.bytes, using: key)
        }
        return writer.bytes
    }

    // MARK: Decoding

    /// Decodes one frame: checks size, magic, version, flags, cluster name and MAC (before looking at the body),
    /// then the body. Never traps.
    public static func decode(_ bytes: [UInt8], settings: WireSettings) throws(WireError) -> WireFrame {
        guard bytes.count <= settings.maximumFrameSize else {
            throw WireError(.oversized, "a frame of \(bytes.count) bytes exceeds the maximum of \(settings.maximumFrameSize)")
        }
        var reader = WireReader(bytes)
        guard try reader.take(3).elementsEqual(Self.magic) else { throw WireError(.badMagic, "not a Stork frame") }
        let version = try reader.u8()
        guard version == Self.version else { throw WireError(.badVersion, "wire version \(version) is not supported") }
        let flags = try reader.u8()
        guard flags & ~(Self.flagAuthenticated | Self.flagDatagram) == 0 else {
            throw WireError(.badFlags, "unknown flags \(flags)")
        }
        let nameLength = Int(try reader.u8())
        let name = try reader.take(nameLength)
        guard name.elementsEqual(settings.clusterName.utf8) else {
            throw WireError(.wrongCluster, "the frame belongs to another cluster")
        }
        let header = WireHeader(
            senderUID: try reader.u64(),
            sequence: try reader.u64(),
            isDatagram: flags & Self.flagDatagram != 0
        )
        let kindByte = try reader.u8()
        let bodyLength = Int(try reader.u32())
        let bodyStart = reader.offset
        _ = try reader.take(bodyLength)
        let bodyEnd = reader.offset

        let authenticated = flags & Self.flagAuthenticated != 0
        switch (authenticated, settings.key) {
        case (true, let key?):
            let mac = try reader.take(WireLimits.macBytes)
            guard reader.isAtEnd else { throw WireError(.trailingBytes, "\(reader.remaining) bytes after the MAC") }
            guard HMAC<SHA256>.isValidAuthenticationCode(mac, authenticating: bytes[0..<bodyEnd], using: key) else {
                throw WireError(.badMAC, "the authentication code does not match")
            }
        case (false, .some):
            throw WireError(.missingMAC, "this cluster requires authenticated frames")
        case (true, .none):
            throw WireError(.unexpectedMAC, "an authenticated frame, but this node has no cluster key")
        case (false, .none):
            guard reader.isAtEnd else { throw WireError(.trailingBytes, "\(reader.remaining) bytes after the body") }
        }

        guard let kind = Kind(rawValue: kindByte) else { throw WireError(.unknownKind, "message kind \(kindByte)") }
        var body = WireReader(bytes, range: bodyStart..<bodyEnd)
        let message = try body.message(kind)
        guard body.isAtEnd else { throw WireError(.trailingBytes, "\(body.remaining) bytes after the message") }
        return WireFrame(header: header, message: message)
    }
}

// MARK: - Writer

struct WireWriter {
    var bytes: [UInt8] = []
    let json: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return encoder
    }()

    mutating func u8(_ value: UInt8) { self.bytes.append(value) }
    mutating func bool(_ value: Bool) { self.bytes.append(value ? 1 : 0) }
    mutating func u16(_ value: UInt16) { self.integer(value) }
    mutating func u32(_ value: UInt32) { self.integer(value) }
    mutating func u64(_ value: UInt64) { self.integer(value) }

    mutating func integer<T: FixedWidthInteger>(_ value: T) {
        var shift = T.bitWidth - 8
        while shift >= 0 {
            self.bytes.append(UInt8(truncatingIfNeeded: value >> shift))
            shift -= 8
        }
    }

    /// A string of at most 255 bytes with a 1-byte length.
    mutating func str8(_ value: String, _ field: StaticString) throws(WireError) {
        let utf8 = value.utf8
        guard utf8.count <= WireLimits.maximumNameBytes else {
            throw WireError(.fieldTooLong, "\(field) is \(utf8.count) bytes, more than \(WireLimits.maximumNameBytes)")
        }
        self.u8(UInt8(utf8.count))
        self.bytes += utf8
    }

    /// A string of at most 1024 bytes with a 2-byte length.
    mutating func str16(_ value: String, _ field: StaticString) throws(WireError) {
        let utf8 = value.utf8
        guard utf8.count <= WireLimits.maximumIDBytes else {
            throw WireError(.fieldTooLong, "\(field) is \(utf8.count) bytes, more than \(WireLimits.maximumIDBytes)")
        }
        self.u16(UInt16(utf8.count))
        self.bytes += utf8
    }

    mutating func count(_ count: Int) { self.u32(UInt32(truncatingIfNeeded: count)) }

    mutating func node(_ node: NodeID) throws(WireError) {
        try self.str8(node.name, "a node name")
        try self.str8(node.address, "a node address")
        self.u64(node.uid)
    }

    mutating func optionalNode(_ node: NodeID?) throws(WireError) {
        if let node {
            self.u8(1)
            try self.node(node)
        } else {
            self.u8(0)
        }
    }

    mutating func updates(_ updates: [MemberUpdate]) throws(WireError) {
        self.count(updates.count)
        for update in updates {
            try self.node(update.node)
            self.u8(update.status.rawValue)
            self.u64(update.incarnation)
            try self.optionalNode(update.source)
        }
    }

    mutating func claims(_ items: [ClaimItem]) throws(WireError) {
        self.count(items.count)
        for item in items {
            try self.str16(item.id.rawValue, "a resource id")
            self.u64(item.round)
        }
    }

    mutating func entries(_ entries: [DesiredEntry]) throws(WireError) {
        self.count(entries.count)
        for entry in entries { try self.entry(entry) }
    }

    mutating func entry(_ entry: DesiredEntry) throws(WireError) {
        try self.str16(entry.id.rawValue, "a resource id")
        if let resource = entry.resource {
            self.u8(1)
            let json: Data
            do {
                json = try self.json.encode(resource)
            } catch {
                throw WireError(.invalidJSON, "a resource attribute cannot be written as JSON (NaN or infinity)")
            }
            self.count(json.count)
            self.bytes += json
        } else {
            self.u8(0)
        }
        self.u64(entry.version.clock)
        try self.str16(entry.version.origin, "a version origin")
        if let source = entry.source {
            self.u8(1)
            try self.str16(source, "a source name")
        } else {
            self.u8(0)
        }
    }

    mutating func message(_ message: ClusterMessage) throws(WireError) -> WireCodec.Kind {
        switch message {
        case .membership(let message):
            switch message {
            case .ping(let ping):
                try self.node(ping.from)
                self.u64(ping.sequence)
                try self.optionalNode(ping.target)
                try self.updates(ping.updates)
                self.u64(ping.checksum)
                return .ping
            case .ack(let ack):
                try self.node(ack.from)
                self.u64(ack.sequence)
                try self.updates(ack.updates)
                self.u64(ack.checksum)
                return .ack
            case .pingRequest(let request):
                try self.node(request.from)
                self.u64(request.sequence)
                try self.node(request.target)
                try self.updates(request.updates)
                return .pingRequest
            case .nack(let nack):
                try self.node(nack.from)
                self.u64(nack.sequence)
                return .nack
            case .gossip(let gossip):
                try self.node(gossip.from)
                try self.updates(gossip.updates)
                return .gossip
            case .pushPull(let pushPull):
                try self.node(pushPull.from)
                self.bool(pushPull.isJoin)
                self.bool(pushPull.isReply)
                try self.updates(pushPull.members)
                self.u64(pushPull.checksum)
                return .pushPull
            }
        case .ownership(let message):
            switch message {
            case .releaseRequest(let from, let checksum, let items):
                try self.node(from)
                self.u64(checksum)
                try self.claims(items)
                return .releaseRequest
            case .releaseConfirm(let from, let items):
                try self.node(from)
                try self.claims(items)
                return .releaseConfirm
            case .releaseRefuse(let from, let checksum, let items):
                try self.node(from)
                self.u64(checksum)
                try self.claims(items)
                return .releaseRefuse
            }
        case .desired(let message):
            switch message {
            case .delta(let from, let entries):
                try self.node(from)
                try self.entries(entries)
                return .desiredDelta
            case .digest(let from, let digest):
                try self.node(from)
                self.u64(digest)
                return .desiredDigest
            case .state(let from, let entries, let digest, let isReply):
                try self.node(from)
                try self.entries(entries)
                self.u64(digest)
                self.bool(isReply)
                return .desiredState
            case .replicate(let from, let entries):
                try self.node(from)
                try self.entries(entries)
                return .desiredReplicate
            case .held(let from, let versions):
                try self.node(from)
                self.count(versions.count)
                for holding in versions {
                    try self.str16(holding.id.rawValue, "a resource id")
                    self.u64(holding.version.clock)
                    try self.str16(holding.version.origin, "a version origin")
                }
                return .desiredHeld
            }
        case .forward(let message):
            switch message {
            case .request(let from, let checksum, let items):
                try self.node(from)
                self.u64(checksum)
                self.count(items.count)
                for item in items {
                    self.u64(item.requestID)
                    switch item.operation {
                    case .allocate(let entry):
                        self.u8(0)
                        try self.entry(entry)
                    case .deallocate(let entry):
                        self.u8(1)
                        try self.entry(entry)
                    }
                }
                return .forwardRequest
            case .reply(let from, let replies):
                try self.node(from)
                self.count(replies.count)
                for reply in replies {
                    self.u64(reply.requestID)
                    switch reply.answer {
                    case .handled:
                        self.u8(0)
                    case .handleFailed(let attempt):
                        self.u8(1)
                        self.u64(UInt64(bitPattern: Int64(attempt)))
                    case .terminated:
                        self.u8(2)
                    case .refused(let checksum):
                        self.u8(3)
                        self.u64(checksum)
                    }
                }
                return .forwardReply
            }
        case .relay(let message):
            try self.node(message.from)
            self.count(message.payload.count)
            self.bytes += message.payload
            return .relay
        }
    }
}

// MARK: - Reader

/// Reads values from a range of a byte array. Every read checks the bytes left first; nothing traps.
struct WireReader {
    let bytes: [UInt8]
    private(set) var offset: Int
    let end: Int

    init(_ bytes: [UInt8]) {
        self.init(bytes, range: 0..<bytes.count)
    }

    init(_ bytes: [UInt8], range: Range<Int>) {
        self.bytes = bytes
        self.offset = range.lowerBound
        self.end = range.upperBound
    }

    var isAtEnd: Bool { self.offset == self.end }
    var remaining: Int { self.end - self.offset }

    mutating func take(_ count: Int) throws(WireError) -> ArraySlice<UInt8> {
        guard count >= 0, count <= self.remaining else {
            throw WireError(.truncated, "\(count) bytes needed, \(self.remaining) left")
        }
        let start = self.offset
        self.offset += count
        return self.bytes[start..<self.offset]
    }

    mutating func u8() throws(WireError) -> UInt8 {
        guard self.offset < self.end else { throw WireError(.truncated, "1 byte needed, none left") }
        defer { self.offset += 1 }
        return self.bytes[self.offset]
    }

    mutating func integer<T: FixedWidthInteger>(_: T.Type) throws(WireError) -> T {
        var value: T = 0
        for byte in try self.take(T.bitWidth / 8) { value = (value << 8) | T(byte) }
        return value
    }

    mutating func u16() throws(WireError) -> UInt16 { try self.integer(UInt16.self) }
    mutating func u32() throws(WireError) -> UInt32 { try self.integer(UInt32.self) }
    mutating func u64() throws(WireError) -> UInt64 { try self.integer(UInt64.self) }

    mutating func bool() throws(WireError) -> Bool {
        switch try self.u8() {
        case 0: return false
        case 1: return true
        case let other: throw WireError(.badEnumValue, "boolean \(other)")
        }
    }

    /// The marker in front of an optional value.
    mutating func present() throws(WireError) -> Bool {
        switch try self.u8() {
        case 0: return false
        case 1: return true
        case let other: throw WireError(.badEnumValue, "optional marker \(other)")
        }
    }

    mutating func string(length: Int, maximum: Int, _ field: StaticString) throws(WireError) -> String {
        guard length <= maximum else {
            throw WireError(.fieldTooLong, "\(field) of \(length) bytes, more than \(maximum)")
        }
        let slice = try self.take(length)
        guard let string = String(validating: slice, as: UTF8.self) else {
            throw WireError(.invalidUTF8, "\(field) is not valid UTF-8")
        }
        return string
    }

    mutating func str8(_ field: StaticString) throws(WireError) -> String {
        try self.string(length: Int(try self.u8()), maximum: WireLimits.maximumNameBytes, field)
    }

    mutating func str16(_ field: StaticString) throws(WireError) -> String {
        try self.string(length: Int(try self.u16()), maximum: WireLimits.maximumIDBytes, field)
    }

    /// A list count, refused when the bytes left could not hold that many elements of at least
    /// `minimumElementSize` bytes each: a hostile count never makes the decoder reserve memory.
    mutating func count(minimumElementSize: Int) throws(WireError) -> Int {
        let count = Int(try self.u32())
        guard count <= self.remaining / minimumElementSize else {
            throw WireError(.countTooLarge, "\(count) elements announced, \(self.remaining) bytes left")
        }
        return count
    }

    // Smallest encodings, for `count(minimumElementSize:)`.
    static let minimumNode = 1 + 1 + 8
    static let minimumUpdate = minimumNode + 1 + 8 + 1
    static let minimumClaim = 2 + 8
    static let minimumEntry = 2 + 1 + 8 + 2 + 1
    static let minimumHolding = 2 + 8 + 2
    static let minimumForwardItem = 8 + 1 + minimumEntry
    static let minimumForwardReply = 8 + 1

    mutating func node() throws(WireError) -> NodeID {
        let name = try self.str8("a node name")
        let address = try self.str8("a node address")
        return NodeID(name: name, address: address, uid: try self.u64())
    }

    mutating func optionalNode() throws(WireError) -> NodeID? {
        try self.present() ? try self.node() : nil
    }

    mutating func updates() throws(WireError) -> [MemberUpdate] {
        let count = try self.count(minimumElementSize: Self.minimumUpdate)
        var updates: [MemberUpdate] = []
        updates.reserveCapacity(count)
        for _ in 0..<count {
            let node = try self.node()
            let raw = try self.u8()
            guard let status = MemberStatus(rawValue: raw) else {
                throw WireError(.badEnumValue, "member status \(raw)")
            }
            let incarnation = try self.u64()
            let source = try self.optionalNode()
            updates.append(MemberUpdate(node: node, status: status, incarnation: incarnation, source: source))
        }
        return updates
    }

    mutating func claims() throws(WireError) -> [ClaimItem] {
        let count = try self.count(minimumElementSize: Self.minimumClaim)
        var items: [ClaimItem] = []
        items.reserveCapacity(count)
        for _ in 0..<count {
            let id = try self.str16("a resource id")
            items.append(ClaimItem(id: ResourceID(id), round: try self.u64()))
        }
        return items
    }

    mutating func entries() throws(WireError) -> [DesiredEntry] {
        let count = try self.count(minimumElementSize: Self.minimumEntry)
        var entries: [DesiredEntry] = []
        entries.reserveCapacity(count)
        for _ in 0..<count { entries.append(try self.entry()) }
        return entries
    }

    mutating func entry() throws(WireError) -> DesiredEntry {
        let id = try self.str16("a resource id")
        var resource: Resource?
        if try self.present() {
            let length = Int(try self.u32())
            let decoded = try WireJSON.resource(try self.take(length))
            guard decoded.id.rawValue == id else {
                throw WireError(.badValue, "the resource's id differs from its entry's")
            }
            resource = decoded
        }
        let clock = try self.u64()
        let origin = try self.str16("a version origin")
        let source = try self.present() ? try self.str16("a source name") : nil
        return DesiredEntry(
            id: ResourceID(id),
            resource: resource,
            version: DesiredVersion(clock: clock, origin: origin),
            source: source
        )
    }

    mutating func message(_ kind: WireCodec.Kind) throws(WireError) -> ClusterMessage {
        switch kind {
        case .ping:
            let from = try self.node()
            let sequence = try self.u64()
            let target = try self.optionalNode()
            let updates = try self.updates()
            let checksum = try self.u64()
            return .membership(
                .ping(Ping(from: from, sequence: sequence, target: target, updates: updates, checksum: checksum))
            )
        case .ack:
            let from = try self.node()
            let sequence = try self.u64()
            let updates = try self.updates()
            let checksum = try self.u64()
            return .membership(.ack(Ack(from: from, sequence: sequence, updates: updates, checksum: checksum)))
        case .pingRequest:
            let from = try self.node()
            let sequence = try self.u64()
            let target = try self.node()
            let updates = try self.updates()
            return .membership(
                .pingRequest(PingRequest(from: from, sequence: sequence, target: target, updates: updates))
            )
        case .nack:
            let from = try self.node()
            return .membership(.nack(Nack(from: from, sequence: try self.u64())))
        case .gossip:
            let from = try self.node()
            return .membership(.gossip(Gossip(from: from, updates: try self.updates())))
        case .pushPull:
            let from = try self.node()
            let isJoin = try self.bool()
            let isReply = try self.bool()
            let members = try self.updates()
            let checksum = try self.u64()
            return .membership(
                .pushPull(PushPull(from: from, isJoin: isJoin, isReply: isReply, members: members, checksum: checksum))
            )
        case .releaseRequest:
            let from = try self.node()
            let checksum = try self.u64()
            return .ownership(.releaseRequest(from: from, checksum: checksum, items: try self.claims()))
        case .releaseConfirm:
            let from = try self.node()
            return .ownership(.releaseConfirm(from: from, items: try self.claims()))
        case .releaseRefuse:
            let from = try self.node()
            let checksum = try self.u64()
            return .ownership(.releaseRefuse(from: from, checksum: checksum, items: try self.claims()))
        case .desiredDelta:
            let from = try self.node()
            return .desired(.delta(from: from, entries: try self.entries()))
        case .desiredDigest:
            let from = try self.node()
            return .desired(.digest(from: from, digest: try self.u64()))
        case .desiredState:
            let from = try self.node()
            let entries = try self.entries()
            let digest = try self.u64()
            let isReply = try self.bool()
            return .desired(.state(from: from, entries: entries, digest: digest, isReply: isReply))
        case .desiredReplicate:
            let from = try self.node()
            return .desired(.replicate(from: from, entries: try self.entries()))
        case .desiredHeld:
            let from = try self.node()
            let count = try self.count(minimumElementSize: Self.minimumHolding)
            var versions: [DesiredHolding] = []
            versions.reserveCapacity(count)
            for _ in 0..<count {
                let id = try self.str16("a resource id")
                let clock = try self.u64()
                let origin = try self.str16("a version origin")
                versions.append(
                    DesiredHolding(id: ResourceID(id), version: DesiredVersion(clock: clock, origin: origin))
                )
            }
            return .desired(.held(from: from, versions: versions))
        case .forwardRequest:
            let from = try self.node()
            let checksum = try self.u64()
            let count = try self.count(minimumElementSize: Self.minimumForwardItem)
            var items: [ForwardItem] = []
            items.reserveCapacity(count)
            for _ in 0..<count {
                let requestID = try self.u64()
                let operation = try self.u8()
                let entry = try self.entry()
                switch operation {
                case 0: items.append(ForwardItem(requestID: requestID, operation: .allocate(entry)))
                case 1: items.append(ForwardItem(requestID: requestID, operation: .deallocate(entry)))
                default: throw WireError(.badEnumValue, "forward operation \(operation)")
                }
            }
            return .forward(.request(from: from, checksum: checksum, items: items))
        case .forwardReply:
            let from = try self.node()
            let count = try self.count(minimumElementSize: Self.minimumForwardReply)
            var replies: [ForwardReply] = []
            replies.reserveCapacity(count)
            for _ in 0..<count {
                let requestID = try self.u64()
                let answer: ForwardAnswer
                switch try self.u8() {
                case 0: answer = .handled
                case 1: answer = .handleFailed(attempt: Int(truncatingIfNeeded: Int64(bitPattern: try self.u64())))
                case 2: answer = .terminated
                case 3: answer = .refused(checksum: try self.u64())
                case let other: throw WireError(.badEnumValue, "forward answer \(other)")
                }
                replies.append(ForwardReply(requestID: requestID, answer: answer))
            }
            return .forward(.reply(from: from, replies: replies))
        case .relay:
            let from = try self.node()
            let length = Int(try self.u32())
            let payload = Array(try self.take(length))
            return .relay(RelayMessage(from: from, payload: payload))
        }
    }
}

// MARK: - Resources as JSON

enum WireJSON {
    /// Decodes a resource from compact JSON. The nesting depth is checked first, with a linear scan, so that hostile
    /// input cannot make the recursive decoder use much stack.
    static func resource(_ bytes: ArraySlice<UInt8>) throws(WireError) -> Resource {
        guard Self.depth(of: bytes, exceeds: WireLimits.maximumJSONDepth) == false else {
            throw WireError(.invalidJSON, "resource JSON nests deeper than \(WireLimits.maximumJSONDepth)")
        }
        do {
            return try JSONDecoder().decode(Resource.self, from: Data(bytes))
        } catch let error as DecodingError {
            switch error {
            case .dataCorrupted: throw WireError(.invalidJSON, "resource JSON is malformed or has no string id")
            case .typeMismatch: throw WireError(.invalidJSON, "resource JSON is not an object")
            case .keyNotFound, .valueNotFound: throw WireError(.invalidJSON, "resource JSON misses a value")
            @unknown default: throw WireError(.invalidJSON, "resource JSON is not valid")
            }
        } catch {
            throw WireError(.invalidJSON, "resource JSON is not valid")
        }
    }

    /// Whether arrays and objects nest deeper than `limit` (brackets inside strings do not count).
    static func depth(of bytes: ArraySlice<UInt8>, exceeds limit: Int) -> Bool {
        var depth = 0
        var inString = false
        var escaped = false
        for byte in bytes {
            if inString {
                if escaped {
                    escaped = false
                } else if byte == UInt8(ascii: "\\") {
                    escaped = true
                } else if byte == UInt8(ascii: "\"") {
                    inString = false
                }
                continue
            }
            switch byte {
            case UInt8(ascii: "\""):
                inString = true
            case UInt8(ascii: "["), UInt8(ascii: "{"):
                depth += 1
                if depth > limit { return true }
            case UInt8(ascii: "]"), UInt8(ascii: "}"):
                depth -= 1
            default:
                break
            }
        }
        return false
    }
}
