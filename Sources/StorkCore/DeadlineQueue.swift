import HeapModule

// MARK: - DeadlineQueue

/// The timers of a pure state machine: at most one deadline per key, the earliest first.
///
/// Scheduling a key again replaces its deadline; cancelled and replaced deadlines stay in the heap and are dropped
/// when they reach the top, so the top is always live and every operation is O(log n). Keys pop in deadline order,
/// ties in scheduling order, which keeps simulations deterministic.
public struct DeadlineQueue<Key: Hashable & Sendable>: Sendable {
    @usableFromInline
    struct Slot: Comparable, Sendable {
        @usableFromInline var deadline: StorkInstant
        @usableFromInline var sequence: UInt64
        @usableFromInline var key: Key

        @inlinable
        init(deadline: StorkInstant, sequence: UInt64, key: Key) {
            self.deadline = deadline
            self.sequence = sequence
            self.key = key
        }

        @inlinable
        static func < (lhs: Slot, rhs: Slot) -> Bool {
            if lhs.deadline != rhs.deadline { return lhs.deadline < rhs.deadline }
            return lhs.sequence < rhs.sequence
        }

        @inlinable
        static func == (lhs: Slot, rhs: Slot) -> Bool {
            lhs.deadline == rhs.deadline && lhs.sequence == rhs.sequence
        }
    }

    @usableFromInline var heap = Heap<Slot>()
    @usableFromInline var live: [Key: UInt64] = [:]
    @usableFromInline var nextSequence: UInt64 = 0

    @inlinable
    public init() {}

    /// Sets the deadline of `key`, replacing any earlier one.
    @inlinable
    public mutating func schedule(_ key: Key, at deadline: StorkInstant) {
        self.nextSequence &+= 1
        self.live[key] = self.nextSequence
        self.heap.insert(Slot(deadline: deadline, sequence: self.nextSequence, key: key))
        self.dropStale()
        self.compactIfNeeded()
    }

    /// Sets the deadline of `key` only if it has none or the new one is earlier.
    @inlinable
    public mutating func scheduleIfEarlier(_ key: Key, at deadline: StorkInstant) {
        if let current = self.deadline(of: key), current <= deadline { return }
        self.schedule(key, at: deadline)
    }

    @inlinable
    public mutating func cancel(_ key: Key) {
        guard self.live.removeValue(forKey: key) != nil else { return }
        self.dropStale()
    }

    @inlinable
    public func contains(_ key: Key) -> Bool {
        self.live[key] != nil
    }

    /// The deadline of `key`, if scheduled. O(n): for tests and rare paths.
    @inlinable
    public func deadline(of key: Key) -> StorkInstant? {
        guard let sequence = self.live[key] else { return nil }
        return self.heap.unordered.first { $0.sequence == sequence }?.deadline
    }

    /// The earliest live deadline.
    @inlinable
    public var peekDeadline: StorkInstant? {
        self.heap.min?.deadline
    }

    /// Removes and returns the next key whose deadline is at or before `now`.
    @inlinable
    public mutating func popDue(now: StorkInstant) -> Key? {
        guard let top = self.heap.min, top.deadline <= now else { return nil }
        _ = self.heap.popMin()
        self.live[top.key] = nil
        self.dropStale()
        return top.key
    }

    /// Removes and returns every key due at or before `now`, in deadline order.
    @inlinable
    public mutating func popAllDue(now: StorkInstant) -> [Key] {
        var due: [Key] = []
        while let key = self.popDue(now: now) { due.append(key) }
        return due
    }

    @inlinable
    public var count: Int { self.live.count }

    @inlinable
    mutating func dropStale() {
        while let top = self.heap.min, self.live[top.key] != top.sequence {
            _ = self.heap.popMin()
        }
    }

    @inlinable
    mutating func compactIfNeeded() {
        guard self.heap.count > 64, self.heap.count > 4 * self.live.count else { return }
        let live = self.live
        self.heap = Heap(self.heap.unordered.filter { live[$0.key] == $0.sequence })
    }
}
