import StorkCore

// MARK: - DesiredSet
//
// The set of resources that should exist, replicated on every node. Each id carries a version (a hybrid logical
// clock: physical milliseconds and a logical counter, plus the writer's identity); the highest version wins, and a
// deletion is a versioned tombstone so that it wins over older additions arriving late. Nodes exchange deltas on
// every change and compare digests periodically (anti-entropy), so every node knows every resource: a new owner
// never "forgets" a resource that was added after start (the original library's cache fault).

/// The version of one entry of the desired set. Ordered by time, then writer.
public struct DesiredVersion: Hashable, Comparable, Sendable, Codable, CustomStringConvertible {
    /// Hybrid logical clock: physical milliseconds shifted left 16 bits plus a logical counter.
    public var clock: UInt64
    /// The writer: node name and process uid, so that two writers never produce the same version.
    public var origin: String

    public init(clock: UInt64, origin: String) {
        self.clock = clock
        self.origin = origin
    }

    public static func < (lhs: DesiredVersion, rhs: DesiredVersion) -> Bool {
        if lhs.clock != rhs.clock { return lhs.clock < rhs.clock }
        return lhs.origin < rhs.origin
    }

    public var description: String { "\(self.clock)/\(self.origin)" }
}

/// One id of the desired set: the resource, or a tombstone when it was removed.
public struct DesiredEntry: Hashable, Sendable, Codable {
    public var id: ResourceID
    /// The resource, or nil for a removal.
    public var resource: Resource?
    public var version: DesiredVersion
    /// The name of the source that lists the resource (it goes when that source stops listing it), or nil when it
    /// came from `allocate` (it goes only with `deallocate`).
    public var source: String?

    public init(id: ResourceID, resource: Resource?, version: DesiredVersion, source: String? = nil) {
        self.id = id
        self.resource = resource
        self.version = version
        self.source = source
    }

    public var isRemoval: Bool { self.resource == nil }

    /// An order-independent fingerprint used in the set's digest.
    var fingerprint: UInt64 {
        var hash = StableHash.fnv1a64(self.id.rawValue)
        hash = StableHash.fnv1a64(self.version.origin, continuing: hash ^ self.version.clock)
        if let source = self.source { hash = StableHash.fnv1a64(source, continuing: hash ^ 0x27d4_eb2f) }
        return StableHash.mix64(hash ^ (self.isRemoval ? 0x5bd1_e995 : 0))
    }
}

/// The replicated desired set of one node. Pure: the caller passes physical time in milliseconds.
public struct DesiredSet: Sendable {
    public let origin: String
    private var entries: [ResourceID: DesiredEntry] = [:]
    private var removedAt: [ResourceID: StorkInstant] = [:]
    private var lastClock: UInt64 = 0
    /// XOR of every entry's fingerprint: equal sets have equal digests.
    public private(set) var digest: UInt64 = 0
    public private(set) var liveCount = 0

    public init(origin: String) {
        self.origin = origin
    }

    // MARK: Reading

    public func resource(_ id: ResourceID) -> Resource? { self.entries[id]?.resource }
    public func entry(_ id: ResourceID) -> DesiredEntry? { self.entries[id] }

    /// Every live resource, sorted by id.
    public var resources: [Resource] {
        self.entries.values.compactMap(\.resource).sorted { $0.id < $1.id }
    }

    /// The live resources whose id starts with `prefix`, unsorted.
    public func resources(withPrefix prefix: String) -> [Resource] {
        self.entries.values.compactMap { entry in entry.id.rawValue.hasPrefix(prefix) ? entry.resource : nil }
    }

    /// Every entry including tombstones, sorted by id: the payload of a full synchronisation.
    public var allEntries: [DesiredEntry] {
        self.entries.values.sorted { $0.id < $1.id }
    }

    public var entryCount: Int { self.entries.count }

    // MARK: Local changes

    /// Adds or updates a resource. Returns the new entry, or nil when the resource was already there unchanged.
    ///
    /// `source` names the source that lists the resource: `replace(with:source:)` removes what that source no
    /// longer lists, and never touches resources added through `allocate` (source nil) or listed by other sources.
    public mutating func put(
        _ resource: Resource,
        source: String? = nil,
        physicalMillis: UInt64,
        now: StorkInstant
    ) -> DesiredEntry? {
        if let current = self.entries[resource.id], current.resource == resource,
            current.source == source || source == nil
        {
            return nil
        }
        let entry = DesiredEntry(
            id: resource.id,
            resource: resource,
            version: self.nextVersion(physicalMillis),
            source: source
        )
        self.store(entry, now: now)
        return entry
    }

    /// Removes a resource. Returns the tombstone, or nil when it was already removed here.
    ///
    /// An id this node has never heard of still gets a tombstone: the addition may simply not have reached this
    /// node yet, and the tombstone's newer version must win when it does.
    public mutating func remove(_ id: ResourceID, physicalMillis: UInt64, now: StorkInstant) -> DesiredEntry? {
        if let current = self.entries[id], current.resource == nil { return nil }
        let entry = DesiredEntry(id: id, resource: nil, version: self.nextVersion(physicalMillis))
        self.store(entry, now: now)
        return entry
    }

    /// Makes the source's part of the set equal to `resources`: adds and updates what is new or changed, removes
    /// what the source listed before and no longer lists. Resources added through `allocate` stay. Returns the
    /// entries that changed (the delta to publish).
    public mutating func replace(
        with resources: [Resource],
        source: String,
        physicalMillis: UInt64,
        now: StorkInstant
    ) -> [DesiredEntry] {
        var changes: [DesiredEntry] = []
        var seen = Set<ResourceID>()
        seen.reserveCapacity(resources.count)
        for resource in resources {
            seen.insert(resource.id)
            if let entry = self.put(resource, source: source, physicalMillis: physicalMillis, now: now) {
                changes.append(entry)
            }
        }
        let missing = self.entries.values.filter { $0.resource != nil && $0.source == source && !seen.contains($0.id) }
            .map(\.id).sorted()
        for id in missing {
            if let entry = self.remove(id, physicalMillis: physicalMillis, now: now) { changes.append(entry) }
        }
        return changes
    }

    // MARK: Remote changes

    /// Merges entries from another node: each wins if its version is higher than ours. Returns the resulting
    /// changes of the live set.
    public mutating func merge(
        _ incoming: [DesiredEntry],
        now: StorkInstant
    ) -> (upserted: [Resource], removed: [ResourceID]) {
        var upserted: [Resource] = []
        var removed: [ResourceID] = []
        for entry in incoming {
            let current = self.entries[entry.id]
            if let current, current.version >= entry.version { continue }
            self.lastClock = max(self.lastClock, entry.version.clock)
            let wasLive = current?.resource != nil
            self.store(entry, now: now)
            if let resource = entry.resource {
                if current?.resource != resource { upserted.append(resource) }
            } else if wasLive {
                removed.append(entry.id)
            }
        }
        return (upserted, removed)
    }

    /// Forgets tombstones removed before `cutoff`: they have had time to reach every node.
    public mutating func collectGarbage(removedBefore cutoff: StorkInstant) {
        for (id, at) in self.removedAt where at < cutoff {
            if let entry = self.entries[id], entry.resource == nil {
                self.digest ^= entry.fingerprint
                self.entries[id] = nil
            }
            self.removedAt[id] = nil
        }
    }

    // MARK: Internals

    private mutating func nextVersion(_ physicalMillis: UInt64) -> DesiredVersion {
        let physical = physicalMillis << 16
        self.lastClock = max(self.lastClock &+ 1, physical)
        return DesiredVersion(clock: self.lastClock, origin: self.origin)
    }

    private mutating func store(_ entry: DesiredEntry, now: StorkInstant) {
        if let old = self.entries[entry.id] {
            self.digest ^= old.fingerprint
            if old.resource != nil { self.liveCount -= 1 }
        }
        self.entries[entry.id] = entry
        self.digest ^= entry.fingerprint
        if entry.resource != nil {
            self.liveCount += 1
            self.removedAt[entry.id] = nil
        } else {
            self.removedAt[entry.id] = now
        }
    }
}
