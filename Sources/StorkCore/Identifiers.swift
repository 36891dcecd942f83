// MARK: - ResourceID

/// The identity of a resource: any non-empty string, unique within a cluster.
///
/// A resource id is what placement hashes, what the orchestrator keys its state by, and what users pass to
/// `allocate` / `deallocate`. Two resources with the same id are the same resource.
public struct ResourceID: Hashable, Comparable, Sendable, Codable, CustomStringConvertible,
    ExpressibleByStringLiteral
{
    public var rawValue: String

    @inlinable
    public init(_ rawValue: String) {
        self.rawValue = rawValue
    }

    @inlinable
    public init(stringLiteral value: String) {
        self.rawValue = value
    }

    public init(from decoder: any Decoder) throws {
        self.rawValue = try decoder.singleValueContainer().decode(String.self)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(self.rawValue)
    }

    @inlinable
    public static func < (lhs: ResourceID, rhs: ResourceID) -> Bool {
        lhs.rawValue < rhs.rawValue
    }

    public var description: String { self.rawValue }
}

// MARK: - NodeID

/// The identity of one Stork process.
///
/// `name` is stable across restarts (placement hashes it, so a restarted node gets its resources back), `address`
/// is where peers reach it, and `uid` is new for every process start: a restarted process is a *new* member and can
/// never be mistaken for (or resurrect) the old one. A higher `uid` with the same name supersedes a lower one.
public struct NodeID: Hashable, Comparable, Sendable, Codable, CustomStringConvertible {
    public var name: String
    public var address: String
    public var uid: UInt64

    public init(name: String, address: String, uid: UInt64) {
        self.name = name
        self.address = address
        self.uid = uid
    }

    /// Orders by name, then uid, then address: a total order used to make every iteration deterministic.
    public static func < (lhs: NodeID, rhs: NodeID) -> Bool {
        if lhs.name != rhs.name { return lhs.name < rhs.name }
        if lhs.uid != rhs.uid { return lhs.uid < rhs.uid }
        return lhs.address < rhs.address
    }

    public var description: String { "\(self.name)@\(self.address)#\(String(self.uid, radix: 16))" }

    /// A uid for a process starting now: milliseconds since the Unix epoch in the high bits, so that a later start
    /// orders after an earlier one, and random low bits so that two starts in one millisecond still differ.
    public static func makeUID<R: RandomNumberGenerator>(
        unixMilliseconds: UInt64,
        using generator: inout R
    ) -> UInt64 {
        (unixMilliseconds << 20) | (generator.next() & 0xF_FFFF)
    }
}
