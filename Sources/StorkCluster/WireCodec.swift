import Crypto
import Foundation
import StorkCore
import StorkMembership
import StorkResources

// MARK: - Wire format, version 1
//
// Every datagram (UDP) and every frame (TCP, after a 4-byte big-endian length) is:
//
//   "STK"  version:u8=1  flags:u8  cluster:str8  sender-uid:u64  sequence:u64  kind:u8  body-length:u32  body
//   [ HMAC-SHA256 over everything above: 32 bytes, when flags bit 0 is set ]
//
// Integers are big-endian. str8/str16 are UTF-8 with a 1- or 2-byte length. Lists have a u32 count that is checked
// against the bytes left before anything is allocated. A resource travels as compact JSON (u32 length + bytes).
// With a cluster key every frame must carry a valid MAC; without one, frames must not. The (sender uid, sequence)
// pair lets receivers drop replayed datagrams.

/// Why a frame was rejected.
public struct WireError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Code: String, Hashable, Sendable, CaseIterable {
        case truncated, oversized, badMagic, badVersion, wrongCluster, badMAC, missingMAC, unexpectedMAC
        case unknownKind, badValue, trailingBytes, stale
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(self.code.rawValue): \(self.message)" }
}

/// Settings shared by the encoder and the decoder of one cluster.
public struct WireSettings: Sendable {
    public var clusterName: String
    /// The HMAC key's bytes (SHA-256 of the cluster key); nil when the cluster has no key.
    var keyBytes: [UInt8]?
    public var maximumFrameSize: Int

    public init(clusterName: String, clusterKey: String?, maximumFrameSize: Int = 16 << 20) {
        self.clusterName = clusterName
        self.keyBytes = clusterKey.map { Array(SHA256.hash(data: Data($0.utf8))) }
        self.maximumFrameSize = maximumFrameSize
    }

    /// The HMAC key, derived from the cluster key; nil when the cluster has no key.
    var key: SymmetricKey? { self.keyBytes.map { SymmetricKey(data: $0) } }
}

/// A decoded frame: the message, and who sent it with which sequence (for replay protection).
public struct WireFrame: Sendable {
    public var senderUID: UInt64
    public var sequence: UInt64
    public var message: ClusterMessage
}

public enum WireCodec {
    static let magic: [UInt8] = Array("STK".utf8)
    static let version: UInt8 = 1

    enum Kind: UInt8 {
        case ping = 1, ack, pingRequest, nack, gossip, pushPull
        case ownership = 10, desired, forward
    }

    // MARK: Encoding

    public static func encode(
        _ message: ClusterMessage,
        senderUID: UInt64,
        sequence: UInt64,
        settings: WireSettings
    ) -> [UInt8] {
        var body = WireWriter()
        let kind = Self.writeBody(message, into: &body)
        var frame = WireWriter()
        frame.bytes.reserveCapacity(body.bytes.count + 64)
        frame.bytes += Self.magic
        frame.u8(Self.version)
        frame.u8(settings.key == nil ? 0 : 1)
        frame.str8(settings.clusterName)
        frame.u64(senderUID)
        frame.u64(sequence)
        frame.u8(kind.rawValue)
        frame.u32(UInt32(body.bytes.count))
        frame.bytes += body.bytes
        if let key = settings.key {
            frame.bytes += Array(HMAC<SHA256>.authenticationCode(for: frame.bytes, using: key))
        }
        return frame.bytes
    }

    static func writeBody(_ message: ClusterMessage, into w: inout WireWriter) -> Kind {
        switch message {
        case .membership(let message):
            switch message {
            case .ping(let ping):
                w.node(ping.from)
                w.u64(ping.sequence)
                w.optionalNode(ping.target)
                w.updates(ping.updates)
                w.u64(ping.checksum)
                return .ping
            case .ack(let ack):
                w.node(ack.from)
                w.u64(ack.sequence)
                w.updates(ack.updates)
                w.u64(ack.checksum)
                return .ack
            case .pingRequest(let request):
                w.node(request.from)
                w.u64(request.sequence)
                w.node(request.target)
                w.updates(request.updates)
                return .pingRequest
            case .nack(let nack):
                w.node(nack.from)
                w.u64(nack.sequence)
                return .nack
            case .gossip(let gossip):
                w.node(gossip.from)
                w.updates(gossip.updates)
                return .gossip
            case .pushPull(let pushPull):
                w.node(pushPull.from)
                w.bool(pushPull.isJoin)
                w.bool(pushPull.isReply)
                w.updates(pushPull.members)
                w.u64(pushPull.checksum)
                return .pushPull
            }
        case .ownership(let message):
            switch message {
            case .releaseRequest(let from, let checksum, let items):
                w.u8(0)
                w.node(from)
                w.u64(checksum)
                w.claims(items)
            case .releaseConfirm(let from, let items):
                w.u8(1)
                w.node(from)
                w.claims(items)
            case .releaseRefuse(let from, let checksum, let items):
                w.u8(2)
                w.node(from)
                w.u64(checksum)
                w.claims(items)
            }
            return .ownership
        case .desired(let message):
            switch message {
            case .delta(let from, let entries):
                w.u8(0)
                w.node(from)
                w.entries(entries)
            case .digest(let from, let digest):
                w.u8(1)
                w.node(from)
                w.u64(digest)
            case .state(let from, let entries, let digest, let isReply):
                w.u8(2)
                w.node(from)
                w.entries(entries)
                w.u64(digest)
                w.bool(isReply)
            }
            return .desired
        case .forward(let message):
            switch message {
            case .request(let from, let checksum, let items):
                w.u8(0)
                w.node(from)
                w.u64(checksum)
                w.u32(UInt32(items.count))
                for item in items {
                    w.u64(item.requestID)
                    switch item.operation {
                    case .allocate(let entry):
                        w.u8(0)
                        w.entry(entry)
                    case .deallocate(let entry):
                        w.u8(1)
                        w.entry(entry)
                    }
                }
            case .reply(let from, let replies):
                w.u8(1)
                w.node(from)
                w.u32(UInt32(replies.count))
                for reply in replies {
                    w.u64(reply.requestID)
                    switch reply.answer {
                    case .handled: w.u8(0)
                    case .handleFailed(let attempt):
                        w.u8(1)
                        w.u32(UInt32(clamping: attempt))
                    case .terminated: w.u8(2)
                    case .refused(let checksum):
                        w.u8(3)
                        w.u64(checksum)
                    }
                }
            }
            return .forward
        }
    }

    // MARK: Decoding

    /// Decodes one frame. Never traps: anything malformed, oversized, foreign or forged is a `WireError`.
    public static func decode(_ bytes: some Collection<UInt8>, settings: WireSettings) throws(WireError) -> WireFrame {
        guard bytes.count <= settings.maximumFrameSize + 64 else {
            throw WireError(.oversized, "frame of \(bytes.count) bytes exceeds \(settings.maximumFrameSize)")
        }
        let bytes = Array(bytes)
        var r = WireReader(bytes)
        guard Array(try r.take(3)) == Self.magic else { throw WireError(.badMagic, "not a Stork frame") }
        let version = try r.u8()
        guard version == Self.version else { throw WireError(.badVersion, "unsupported wire version \(version)") }
        let flags = try r.u8()
        let cluster = try r.str8()
        guard cluster == settings.clusterName else {
            throw WireError(.wrongCluster, "frame for cluster '\(cluster.prefix(64))'")
        }
        let sender = try r.u64()
        let sequence = try r.u64()
        let kindByte = try r.u8()
        let bodyLength = Int(try r.u32())
        guard bodyLength <= settings.maximumFrameSize else { throw WireError(.oversized, "body of \(bodyLength) bytes") }
        let bodyStart = r.offset
        _ = try r.take(bodyLength)
        let macStart = r.offset
        let authenticated = flags & 1 == 1
        switch (authenticated, settings.key) {
        case (true, let key?):
            let mac = try r.take(32)
            guard HMAC<SHA256>.isValidAuthenticationCode(mac, authenticating: bytes[0..<macStart], using: key) else {
                throw WireError(.badMAC, "authentication code does not match")
            }
        case (false, .some):
            throw WireError(.missingMAC, "the cluster requires authenticated frames")
        case (true, .none):
            throw WireError(.unexpectedMAC, "authenticated frame, but this node has no cluster key")
        case (false, .none):
            break
        }
        guard r.isAtEnd else { throw WireError(.trailingBytes, "\(bytes.count - r.offset) bytes after the frame") }
        guard let kind = Kind(rawValue: kindByte) else { throw WireError(.unknownKind, "message kind \(kindByte)") }
        var body = WireReader(Array(bytes[bodyStart..<macStart]))
        let message = try Self.readBody(kind, from: &body)
        guard body.isAtEnd else { throw WireError(.trailingBytes, "bytes after the message body") }
        return WireFrame(senderUID: sender, sequence: sequence, message: message)
    }

    static func readBody(_ kind: Kind, from r: inout WireReader) throws(WireError) -> ClusterMessage {
        switch kind {
        case .ping:
            let from = try r.node()
            let sequence = try r.u64()
            let target = try r.optionalNode()
            let updates = try r.updates()
            let checksum = try r.u64()
            return .membership(
                .ping(Ping(from: from, sequence: sequence, target: target, updates: updates, checksum: checksum))
            )
        case .ack:
            let from = try r.node()
            let sequence = try r.u64()
            let updates = try r.updates()
            let checksum = try r.u64()
            return .membership(.ack(Ack(from: from, sequence: sequence, updates: updates, checksum: checksum)))
        case .pingRequest:
            let from = try r.node()
            let sequence = try r.u64()
            let target = try r.node()
            let updates = try r.updates()
            return .membership(
                .pingRequest(PingRequest(from: from, sequence: sequence, target: target, updates: updates))
            )
        case .nack:
            let from = try r.node()
            return .membership(.nack(Nack(from: from, sequence: try r.u64())))
        case .gossip:
            let from = try r.node()
            return .membership(.gossip(Gossip(from: from, updates: try r.updates())))
        case .pushPull:
            let from = try r.node()
            let isJoin = try r.bool()
            let isReply = try r.bool()
            let members = try r.updates()
            let checksum = try r.u64()
            return .membership(
                .pushPull(PushPull(from: from, isJoin: isJoin, isReply: isReply, members: members, checksum: checksum))
            )
        case .ownership:
            let subtype = try r.u8()
            let from = try r.node()
            switch subtype {
            case 0:
                let checksum = try r.u64()
                return .ownership(.releaseRequest(from: from, checksum: checksum, items: try r.claims()))
            case 1:
                return .ownership(.releaseConfirm(from: from, items: try r.claims()))
            case 2:
                let checksum = try r.u64()
                return .ownership(.releaseRefuse(from: from, checksum: checksum, items: try r.claims()))
            default:
                throw WireError(.badValue, "ownership message type \(subtype)")
            }
        case .desired:
            let subtype = try r.u8()
            let from = try r.node()
            switch subtype {
            case 0:
                return .desired(.delta(from: from, entries: try r.entries()))
            case 1:
                return .desired(.digest(from: from, digest: try r.u64()))
            case 2:
                let entries = try r.entries()
                let digest = try r.u64()
                let isReply = try r.bool()
                return .desired(.state(from: from, entries: entries, digest: digest, isReply: isReply))
            default:
                throw WireError(.badValue, "desired-set message type \(subtype)")
            }
        case .forward:
            let subtype = try r.u8()
            let from = try r.node()
            switch subtype {
            case 0:
                let checksum = try r.u64()
                let count = try r.count(minimumElementSize: 10)
                var items: [ForwardItem] = []
                items.reserveCapacity(count)
                for _ in 0..<count {
                    let requestID = try r.u64()
                    let op = try r.u8()
                    let entry = try r.entry()
                    switch op {
                    case 0: items.append(ForwardItem(requestID: requestID, operation: .allocate(entry)))
                    case 1: items.append(ForwardItem(requestID: requestID, operation: .deallocate(entry)))
                    default: throw WireError(.badValue, "forward operation \(op)")
                    }
                }
                return .forward(.request(from: from, checksum: checksum, items: items))
            case 1:
                let count = try r.count(minimumElementSize: 9)
                var replies: [ForwardReply] = []
                replies.reserveCapacity(count)
                for _ in 0..<count {
                    let requestID = try r.u64()
                    let answer: ForwardAnswer
                    switch try r.u8() {
                    case 0: answer = .handled
                    case 1: answer = .handleFailed(attempt: Int(try r.u32()))
                    case 2: answer = .terminated
                    case 3: answer = .refused(checksum: try r.u64())
                    case let other: throw WireError(.badValue, "forward answer \(other)")
                    }
                    replies.append(ForwardReply(requestID: requestID, answer: answer))
                }
                return .forward(.reply(from: from, replies: replies))
            default:
                throw WireError(.badValue, "forward message type \(subtype)")
            }
        }
    }
}

// MARK: - Writer

struct WireWriter {
    var bytes: [UInt8] = []

    mutating func u8(_ value: UInt8) { self.bytes.append(value) }
    mutating func bool(_ value: Bool) { self.bytes.append(value ? 1 : 0) }
    mutating func u16(_ value: UInt16) { withUnsafeBytes(of: value.bigEndian) { self.bytes += $0 } }
    mutating func u32(_ value: UInt32) { withUnsafeBytes(of: value.bigEndian) { self.bytes += $0 } }
    mutating func u64(_ value: UInt64) { withUnsafeBytes(of: value.bigEndian) { self.bytes += $0 } }

    /// Strings longer than the field allows are truncated at a character boundary (names and addresses are
    /// validated long before they get here).
    mutating func str8(_ value: String) {
        let utf8 = Self.prefix(value, maximum: 255)
        self.u8(UInt8(utf8.count))
        self.bytes += utf8
    }

    mutating func str16(_ value: String) {
        let utf8 = Self.prefix(value, maximum: 65_535)
        self.u16(UInt16(utf8.count))
        self.bytes += utf8
    }

    mutating func blob(_ value: [UInt8]) {
        self.u32(UInt32(value.count))
        self.bytes += value
    }

    static func prefix(_ value: String, maximum: Int) -> [UInt8] {
        var result = Array(value.utf8)
        if result.count <= maximum { return result }
        var cut = maximum
        while cut > 0, result[cut] & 0xC0 == 0x80 { cut -= 1 }
        result.removeSubrange(cut...)
        return result
    }

    mutating func node(_ node: NodeID) {
        self.str8(node.name)
        self.str8(node.address)
        self.u64(node.uid)
    }

    mutating func optionalNode(_ node: NodeID?) {
        if let node {
            self.u8(1)
            self.node(node)
        } else {
            self.u8(0)
        }
    }

    mutating func updates(_ updates: [MemberUpdate]) {
        self.u32(UInt32(updates.count))
        for update in updates {
            self.node(update.node)
            self.u8(update.status.rawValue)
            self.u64(update.incarnation)
            self.optionalNode(update.source)
        }
    }

    mutating func claims(_ items: [ClaimItem]) {
        self.u32(UInt32(items.count))
        for item in items {
            self.str16(item.id.rawValue)
            self.u64(item.round)
        }
    }

    mutating func entries(_ entries: [DesiredEntry]) {
        self.u32(UInt32(entries.count))
        for entry in entries { self.entry(entry) }
    }

    mutating func entry(_ entry: DesiredEntry) {
        self.str16(entry.id.rawValue)
        if let resource = entry.resource {
            self.u8(1)
            self.blob(Array(WireJSON.encode(resource)))
        } else {
            self.u8(0)
        }
        self.u64(entry.version.clock)
        self.str8(entry.version.origin)
        if let source = entry.source {
            self.u8(1)
            self.str8(source)
        } else {
            self.u8(0)
        }
    }
}

// MARK: - Reader

struct WireReader {
    let bytes: [UInt8]
    var offset = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var isAtEnd: Bool { self.offset == self.bytes.count }
    var remaining: Int { self.bytes.count - self.offset }

    mutating func take(_ count: Int) throws(WireError) -> ArraySlice<UInt8> {
        guard count >= 0, count <= self.remaining else {
            throw WireError(.truncated, "needed \(count) bytes, \(self.remaining) left")
        }
        defer { self.offset += count }
        return self.bytes[self.offset..<self.offset + count]
    }

    mutating func u8() throws(WireError) -> UInt8 { try self.take(1).first! }

    mutating func bool() throws(WireError) -> Bool {
        switch try self.u8() {
        case 0: return false
        case 1: return true
        case let other: throw WireError(.badValue, "boolean \(other)")
        }
    }

    mutating func integer<T: FixedWidthInteger>(_: T.Type) throws(WireError) -> T {
        var value: T = 0
        for byte in try self.take(MemoryLayout<T>.size) { value = (value << 8) | T(byte) }
        return value
    }

    mutating func u16() throws(WireError) -> UInt16 { try self.integer(UInt16.self) }
    mutating func u32() throws(WireError) -> UInt32 { try self.integer(UInt32.self) }
    mutating func u64() throws(WireError) -> UInt64 { try self.integer(UInt64.self) }

    mutating func string(length: Int) throws(WireError) -> String {
        let slice = try self.take(length)
        guard let string = String(validating: slice, as: UTF8.self) else {
            throw WireError(.badValue, "invalid UTF-8")
        }
        return string
    }

    mutating func str8() throws(WireError) -> String { try self.string(length: Int(try self.u8())) }
    mutating func str16() throws(WireError) -> String { try self.string(length: Int(try self.u16())) }

    /// A list count, refused when the bytes left could not hold that many elements.
    mutating func count(minimumElementSize: Int) throws(WireError) -> Int {
        let count = Int(try self.u32())
        guard count <= self.remaining / max(1, minimumElementSize) else {
            throw WireError(.badValue, "count \(count) larger than the bytes left allow")
        }
        return count
    }

    mutating func node() throws(WireError) -> NodeID {
        let name = try self.str8()
        let address = try self.str8()
        let uid = try self.u64()
        guard !name.isEmpty else { throw WireError(.badValue, "empty node name") }
        return NodeID(name: name, address: address, uid: uid)
    }

    mutating func optionalNode() throws(WireError) -> NodeID? {
        try self.bool() ? try self.node() : nil
    }

    mutating func updates() throws(WireError) -> [MemberUpdate] {
        let count = try self.count(minimumElementSize: 20)
        var updates: [MemberUpdate] = []
        updates.reserveCapacity(count)
        for _ in 0..<count {
            let node = try self.node()
            let raw = try self.u8()
            guard let status = MemberStatus(rawValue: raw) else { throw WireError(.badValue, "member status \(raw)") }
            let incarnation = try self.u64()
            let source = try self.optionalNode()
            updates.append(MemberUpdate(node: node, status: status, incarnation: incarnation, source: source))
        }
        return updates
    }

    mutating func claims() throws(WireError) -> [ClaimItem] {
        let count = try self.count(minimumElementSize: 10)
        var items: [ClaimItem] = []
        items.reserveCapacity(count)
        for _ in 0..<count {
            let id = try self.str16()
            guard !id.isEmpty else { throw WireError(.badValue, "empty resource id") }
            items.append(ClaimItem(id: ResourceID(id), round: try self.u64()))
        }
        return items
    }

    mutating func entries() throws(WireError) -> [DesiredEntry] {
        let count = try self.count(minimumElementSize: 13)
        var entries: [DesiredEntry] = []
        entries.reserveCapacity(count)
        for _ in 0..<count { entries.append(try self.entry()) }
        return entries
    }

    mutating func entry() throws(WireError) -> DesiredEntry {
        let id = try self.str16()
        guard !id.isEmpty else { throw WireError(.badValue, "empty resource id") }
        var resource: Resource?
        if try self.bool() {
            let length = Int(try self.u32())
            let json = try self.take(length)
            resource = try WireJSON.decode(json)
            guard resource?.id.rawValue == id else { throw WireError(.badValue, "resource id does not match entry") }
        }
        let clock = try self.u64()
        let origin = try self.str8()
        let source = try self.bool() ? try self.str8() : nil
        return DesiredEntry(
            id: ResourceID(id),
            resource: resource,
            version: DesiredVersion(clock: clock, origin: origin),
            source: source
        )
    }
}

// MARK: - Resources as JSON

enum WireJSON {
    static func encode(_ resource: Resource) -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return (try? encoder.encode(resource)) ?? Data("{}".utf8)
    }

    static func decode(_ bytes: ArraySlice<UInt8>) throws(WireError) -> Resource {
        do {
            return try JSONDecoder().decode(Resource.self, from: Data(bytes))
        } catch {
            throw WireError(.badValue, "resource JSON: \(error)")
        }
    }
}
