import StorkCore
import StorkMembership
import StorkResources

@testable import StorkCluster

/// Random but reproducible messages of every kind, with realistic values: node ids with non-ASCII names, resources
/// with nested JSON attributes, and now and then long lists and fields at their size limits.
struct MessageGenerator {
    var random: SeededRandom

    init(seed: UInt64) { self.random = SeededRandom(seed: seed) }

    /// The number of message kinds `message(kind:)` produces (one per case of every message enumeration).
    static let kinds = WireCodec.Kind.allCases.count

    mutating func int(_ range: Range<Int>) -> Int { Int.random(in: range, using: &self.random) }
    mutating func chance(_ percent: Int) -> Bool { self.int(0..<100) < percent }
    mutating func u64() -> UInt64 { self.random.next() }

    static let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789-_.:/ é✓日本🐦")

    mutating func string(_ maximum: Int = 12) -> String {
        String((0..<self.int(1..<maximum + 1)).map { _ in Self.alphabet[self.int(0..<Self.alphabet.count)] })
    }

    /// A string of exactly `bytes` UTF-8 bytes (a limit case).
    func string(bytes: Int) -> String { String(repeating: "x", count: bytes) }

    mutating func node() -> NodeID {
        let name = self.chance(2) ? self.string(bytes: WireLimits.maximumNameBytes) : "node-" + self.string()
        let address =
            self.chance(10)
            ? "[fd00::\(self.int(1..<9999))]:\(self.int(1..<65_535))"
            : "10.\(self.int(0..<255)).\(self.int(0..<255)).\(self.int(0..<255)):\(self.int(1..<65_535))"
        return NodeID(name: name, address: address, uid: self.u64())
    }

    mutating func update() -> MemberUpdate {
        MemberUpdate(
            node: self.node(),
            status: MemberStatus(rawValue: UInt8(self.int(0..<4)))!,
            incarnation: self.u64() >> UInt64(self.int(0..<64)),
            source: self.chance(50) ? nil : self.node()
        )
    }

    /// Usually a few, sometimes a long list.
    mutating func length(short: Int, long: Int) -> Int {
        self.chance(5) ? self.int(short..<long) : self.int(0..<short)
    }

    mutating func updates() -> [MemberUpdate] { (0..<self.length(short: 8, long: 300)).map { _ in self.update() } }

    mutating func json(depth: Int = 0) -> JSONValue {
        switch self.int(0..<(depth > 3 ? 4 : 6)) {
        case 0: return .null
        case 1: return .bool(self.chance(50))
        case 2:
            switch self.int(0..<3) {
            case 0: return .number(Double(self.int(-1_000_000..<1_000_000)))
            case 1: return .number(Double(self.int(-100_000..<100_000)) / 7)
            default: return .number(Double(bitPattern: self.u64() & 0x7FEF_FFFF_FFFF_FFFF))  // finite, any magnitude
            }
        case 3: return .string(self.string(30) + (self.chance(10) ? "\"\\\n\t\u{0}" : ""))
        case 4: return .array((0..<self.int(0..<5)).map { _ in self.json(depth: depth + 1) })
        default:
            var object: [String: JSONValue] = [:]
            for _ in 0..<self.int(0..<5) { object[self.string(8)] = self.json(depth: depth + 1) }
            return .object(object)
        }
    }

    mutating func resourceID() -> ResourceID {
        if self.chance(1) { return ResourceID(self.string(bytes: WireLimits.maximumIDBytes)) }
        return ResourceID("acct-" + self.string(20))
    }

    mutating func resource(id: ResourceID? = nil) -> Resource {
        var attributes: [String: JSONValue] = [:]
        for _ in 0..<self.int(0..<6) { attributes[self.string(10)] = self.json() }
        return Resource(id: id ?? self.resourceID(), attributes: attributes)
    }

    mutating func entry() -> DesiredEntry {
        let id = self.resourceID()
        return DesiredEntry(
            id: id,
            resource: self.chance(25) ? nil : self.resource(id: id),
            version: DesiredVersion(clock: self.u64() >> 8, origin: "node-\(self.string())#\(String(self.u64(), radix: 16))"),
            source: self.chance(50) ? nil : self.string(16)
        )
    }

    mutating func entries() -> [DesiredEntry] { (0..<self.length(short: 6, long: 120)).map { _ in self.entry() } }

    mutating func claims() -> [ClaimItem] {
        (0..<self.length(short: 8, long: 500)).map { _ in ClaimItem(id: self.resourceID(), round: self.u64()) }
    }

    mutating func answer() -> ForwardAnswer {
        switch self.int(0..<4) {
        case 0: return .handled
        case 1: return .handleFailed(attempt: self.chance(5) ? Int.max : self.int(1..<50))
        case 2: return .terminated
        default: return .refused(checksum: self.u64())
        }
    }

    mutating func message() -> ClusterMessage { self.message(kind: self.int(0..<Self.kinds)) }

    /// A message of kind `kind` (0 ..< `kinds`, in the order of `WireCodec.Kind.allCases`).
    mutating func message(kind: Int) -> ClusterMessage {
        switch WireCodec.Kind.allCases[kind % Self.kinds] {
        case .ping:
            return .membership(
                .ping(
                    Ping(
                        from: self.node(),
                        sequence: self.u64(),
                        target: self.chance(50) ? nil : self.node(),
                        updates: self.updates(),
                        checksum: self.u64()
                    )
                )
            )
        case .ack:
            return .membership(
                .ack(Ack(from: self.node(), sequence: self.u64(), updates: self.updates(), checksum: self.u64()))
            )
        case .pingRequest:
            return .membership(
                .pingRequest(
                    PingRequest(from: self.node(), sequence: self.u64(), target: self.node(), updates: self.updates())
                )
            )
        case .nack:
            return .membership(.nack(Nack(from: self.node(), sequence: self.u64())))
        case .gossip:
            return .membership(.gossip(Gossip(from: self.node(), updates: self.updates())))
        case .pushPull:
            return .membership(
                .pushPull(
                    PushPull(
                        from: self.node(),
                        isJoin: self.chance(50),
                        isReply: self.chance(50),
                        members: self.updates(),
                        checksum: self.u64()
                    )
                )
            )
        case .releaseRequest:
            return .ownership(.releaseRequest(from: self.node(), checksum: self.u64(), items: self.claims()))
        case .releaseConfirm:
            return .ownership(.releaseConfirm(from: self.node(), items: self.claims()))
        case .releaseRefuse:
            return .ownership(.releaseRefuse(from: self.node(), checksum: self.u64(), items: self.claims()))
        case .desiredDelta:
            return .desired(.delta(from: self.node(), entries: self.entries()))
        case .desiredDigest:
            return .desired(.digest(from: self.node(), digest: self.u64()))
        case .desiredState:
            return .desired(
                .state(from: self.node(), entries: self.entries(), digest: self.u64(), isReply: self.chance(50))
            )
        case .desiredReplicate:
            return .desired(.replicate(from: self.node(), entries: self.entries()))
        case .desiredHeld:
            let versions = self.entries().map { DesiredHolding(id: $0.id, version: $0.version) }
            return .desired(.held(from: self.node(), versions: versions))
        case .forwardRequest:
            let items = (0..<self.length(short: 5, long: 60)).map { _ in
                ForwardItem(
                    requestID: self.u64(),
                    operation: self.chance(50) ? .allocate(self.entry()) : .deallocate(self.entry())
                )
            }
            return .forward(.request(from: self.node(), checksum: self.u64(), items: items))
        case .forwardReply:
            let replies = (0..<self.length(short: 6, long: 400)).map { _ in
                ForwardReply(requestID: self.u64(), answer: self.answer())
            }
            return .forward(.reply(from: self.node(), replies: replies))
        case .relay:
            let payload = (0..<self.length(short: 64, long: 5_000)).map { _ in UInt8(truncatingIfNeeded: self.u64()) }
            return .relay(RelayMessage(from: self.node(), payload: payload))
        }
    }

    /// The wire kind of a message, for coverage checks.
    static func kind(of message: ClusterMessage) -> WireCodec.Kind {
        (try? WireCodec.encodeBody(message).0) ?? .ping
    }
}
