import StorkCore
import Synchronization

// MARK: - OwnershipStore

/// What the store answered to an acquisition: the leases granted (each with a new fencing token) and the ids whose
/// lease another holder has.
public struct LeaseGrants: Sendable, Hashable {
    public var granted: [LeaseKey]
    public var refused: [ResourceID]

    public init(granted: [LeaseKey], refused: [ResourceID]) {
        self.granted = granted
        self.refused = refused
    }
}

/// What the store answered to a renewal: the leases extended, and those that are no longer the caller's (expired,
/// released, or acquired by another holder since).
public struct LeaseRenewals: Sendable, Hashable {
    public var renewed: [LeaseKey]
    public var lost: [LeaseKey]

    public init(renewed: [LeaseKey], lost: [LeaseKey]) {
        self.renewed = renewed
        self.lost = lost
    }
}

/// One row of the store, for inspection.
public struct LeaseRecord: Sendable, Hashable {
    public var id: ResourceID
    /// Nil when released.
    public var holder: String?
    /// The token of the latest acquisition (0 never).
    public var token: UInt64
    /// Milliseconds until the lease expires by the store's clock; 0 or less when it has expired.
    public var remainingMilliseconds: Int64

    public init(id: ResourceID, holder: String?, token: UInt64, remainingMilliseconds: Int64) {
        self.id = id
        self.holder = holder
        self.token = token
        self.remainingMilliseconds = remainingMilliseconds
    }
}

/// Where leases live in `lease` ownership mode. Every operation is one batch (one round trip to a database), and
/// expiry is judged by the store's clock, never the caller's.
///
/// The contract every implementation keeps (`LeaseTable` is its reference model):
/// - `acquire` grants a lease when nobody holds it, its lease expired, it was released, or the caller already holds
///   it; each grant increments the resource's fencing token, which is never reused (it survives restarts of the
///   store and of Stork, and releases).
/// - `renew` reports as renewed only leases the caller holds with that exact token and that have not expired (a
///   store may also extend the caller's unexpired lease on the same resource under a newer token; never another
///   holder's).
/// - `release` gives back only leases the caller holds with that token.
public protocol OwnershipStore: Sendable {
    /// A short description for logs ("sqlite:/var/lib/stork/leases.db", "postgres://…@host/db").
    var description: String { get }
    /// Creates or migrates the schema. Called before any other operation; safe to call from many nodes at once.
    func prepare() async throws
    func acquire(_ ids: [ResourceID], holder: String, duration: Duration) async throws -> LeaseGrants
    func renew(_ leases: [LeaseKey], holder: String, duration: Duration) async throws -> LeaseRenewals
    func release(_ leases: [LeaseKey], holder: String) async throws
    /// The rows for `ids`, or every row when nil.
    func records(_ ids: [ResourceID]?) async throws -> [LeaseRecord]
    /// Closes connections; the store is not used afterwards.
    func close() async
}

// MARK: - LeaseTable

/// The lease rules on an explicit clock: the reference model of `OwnershipStore`, used by `InMemoryOwnershipStore`
/// and by the simulator (with its virtual clock).
public struct LeaseTable: Sendable, Hashable {
    public struct Row: Sendable, Hashable {
        public var holder: String?
        public var token: UInt64
        public var expiresAt: StorkInstant
    }

    public private(set) var rows: [ResourceID: Row] = [:]

    public init() {}

    public mutating func acquire(
        _ ids: [ResourceID],
        holder: String,
        duration: Duration,
        now: StorkInstant
    ) -> LeaseGrants {
        var result = LeaseGrants(granted: [], refused: [])
        var seen = Set<ResourceID>()
        for id in ids where seen.insert(id).inserted {
            var row = self.rows[id] ?? Row(holder: nil, token: 0, expiresAt: now)
            if let current = row.holder, current != holder, row.expiresAt > now {
                result.refused.append(id)
                continue
            }
            row.holder = holder
            row.token += 1
            row.expiresAt = now + duration
            self.rows[id] = row
            result.granted.append(LeaseKey(id: id, token: row.token))
        }
        return result
    }

    public mutating func renew(
        _ leases: [LeaseKey],
        holder: String,
        duration: Duration,
        now: StorkInstant
    ) -> LeaseRenewals {
        var result = LeaseRenewals(renewed: [], lost: [])
        for key in leases {
            guard var row = self.rows[key.id], row.holder == holder, row.token == key.token, row.expiresAt > now else {
                result.lost.append(key)
                continue
            }
            row.expiresAt = now + duration
            self.rows[key.id] = row
            result.renewed.append(key)
        }
        return result
    }

    public mutating func release(_ leases: [LeaseKey], holder: String, now: StorkInstant) {
        for key in leases {
            guard var row = self.rows[key.id], row.holder == holder, row.token == key.token else { continue }
            row.holder = nil
            row.expiresAt = now
            self.rows[key.id] = row
        }
    }

    /// The holder and token of the unexpired lease on `id`, if any.
    public func validLease(of id: ResourceID, now: StorkInstant) -> (holder: String, token: UInt64)? {
        guard let row = self.rows[id], let holder = row.holder, row.expiresAt > now else { return nil }
        return (holder, row.token)
    }

    public func records(_ ids: [ResourceID]?, now: StorkInstant) -> [LeaseRecord] {
        let selected = ids ?? self.rows.keys.sorted()
        return selected.compactMap { id in
            self.rows[id].map {
                LeaseRecord(
                    id: id,
                    holder: $0.holder,
                    token: $0.token,
                    remainingMilliseconds: ($0.expiresAt.nanoseconds - now.nanoseconds) / 1_000_000
                )
            }
        }
    }
}

// MARK: - InMemoryOwnershipStore

/// Leases in this process's memory: for tests and for several `ResourceManager`s in one process. Its clock is this
/// process's monotonic clock unless it is given another (tests give it the manual clock their nodes run on); it
/// can be made unavailable to test outages.
public final class InMemoryOwnershipStore: OwnershipStore {
    private struct State {
        var table = LeaseTable()
        var available = true
        var operations = 0
    }

    private let state = Mutex(State())
    private let clock: StorkClock

    public init(clock: some Clock<Duration> = ContinuousClock()) {
        self.clock = StorkClock(clock)
    }

    public var description: String { "memory" }

    /// While false, every operation throws (a store outage).
    public var isAvailable: Bool {
        get { self.state.withLock { $0.available } }
        set { self.state.withLock { $0.available = newValue } }
    }

    /// Operations served so far (one per batch).
    public var operations: Int { self.state.withLock { $0.operations } }

    private func now() -> StorkInstant { self.clock.now }

    private func withTable<T>(_ body: (inout LeaseTable, StorkInstant) -> T) throws -> T {
        let now = self.now()
        return try self.state.withLock { state in
            guard state.available else { throw StorkError(.unavailable, "the in-memory ownership store is unavailable") }
            state.operations += 1
            return body(&state.table, now)
        }
    }

    public func prepare() async throws {}

    public func acquire(_ ids: [ResourceID], holder: String, duration: Duration) async throws -> LeaseGrants {
        try self.withTable { $0.acquire(ids, holder: holder, duration: duration, now: $1) }
    }

    public func renew(_ leases: [LeaseKey], holder: String, duration: Duration) async throws -> LeaseRenewals {
        try self.withTable { $0.renew(leases, holder: holder, duration: duration, now: $1) }
    }

    public func release(_ leases: [LeaseKey], holder: String) async throws {
        try self.withTable { $0.release(leases, holder: holder, now: $1) }
    }

    public func records(_ ids: [ResourceID]?) async throws -> [LeaseRecord] {
        try self.withTable { table, now in table.records(ids, now: now) }
    }

    public func close() async {}
}
