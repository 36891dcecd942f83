import DequeModule

// MARK: - StreamIndex

/// What a stream knows about its messages without reading the store: every present message's sequence, subject,
/// size and time, in order. Decides limits (which messages to drop, whether to refuse a new one) and answers
/// consumers' "what comes next" questions. Pure.
public struct StreamIndex: Sendable {
    public private(set) var entries: Deque<MessageIndexEntry> = []
    /// The highest sequence ever stored; never goes down.
    public private(set) var lastSequence: UInt64 = 0
    public private(set) var bytes: UInt64 = 0
    /// The first sequence that may still be present (after a purge, above the purged ones even when empty).
    private var floor: UInt64 = 1

    public init() {}

    public init(recovery: MessageStoreRecovery) {
        self.entries = Deque(recovery.messages)
        self.lastSequence = max(recovery.lastSequence, recovery.messages.last?.sequence ?? 0)
        self.bytes = recovery.messages.reduce(0) { $0 + $1.size }
        self.floor = recovery.messages.first?.sequence ?? self.lastSequence + 1
    }

    public var count: Int { self.entries.count }
    public var firstSequence: UInt64 { self.entries.first?.sequence ?? max(self.floor, self.lastSequence + 1) }
    /// Sequences between first and last that are gone (deleted inside the range).
    public var deletedCount: Int {
        guard let first = self.entries.first else { return 0 }
        return Int(self.lastSequence - first.sequence + 1) - self.entries.count
    }

    // MARK: Changing

    public mutating func append(_ entry: MessageIndexEntry) {
        precondition(entry.sequence > self.lastSequence, "sequence \(entry.sequence) after \(self.lastSequence)")
        self.entries.append(entry)
        self.lastSequence = entry.sequence
        self.bytes += entry.size
    }

    /// Removes one message; false when it is not present.
    @discardableResult
    public mutating func remove(_ sequence: UInt64) -> Bool {
        guard let index = self.position(of: sequence) else { return false }
        self.bytes -= self.entries[index].size
        self.entries.remove(at: index)
        return true
    }

    /// Removes every message with sequence ≤ `sequence` (every message when nil). Returns how many.
    @discardableResult
    public mutating func purge(through sequence: UInt64? = nil) -> Int {
        let limit = sequence ?? self.lastSequence
        var removed = 0
        while let first = self.entries.first, first.sequence <= limit {
            self.bytes -= first.size
            self.entries.removeFirst()
            removed += 1
        }
        self.floor = max(self.floor, min(limit, self.lastSequence) + 1)
        return removed
    }

    /// Drops the oldest messages beyond the stream's limits (messages, bytes, age at `now` in ns) and returns their
    /// sequences, oldest first. With discard `new`, message and byte limits are enforced by refusing instead (see
    /// ``refusal(for:config:)``), but age still drops old messages.
    public mutating func evict(config: StreamConfig, now: Int64) -> [UInt64] {
        var evicted: [UInt64] = []
        func dropFirst() {
            let first = self.entries.removeFirst()
            self.bytes -= first.size
            evicted.append(first.sequence)
        }
        if config.maxMsgs > 0 {
            while self.entries.count > config.maxMsgs { dropFirst() }
        }
        if config.maxBytes > 0 {
            while self.bytes > UInt64(config.maxBytes), !self.entries.isEmpty { dropFirst() }
        }
        if config.maxAge > 0 {
            while let first = self.entries.first, now - first.timestamp >= config.maxAge { dropFirst() }
        }
        if config.maxMsgsPerSubject > 0 {
            var counts: [String: Int64] = [:]
            for entry in self.entries { counts[entry.subject, default: 0] += 1 }
            if counts.values.contains(where: { $0 > config.maxMsgsPerSubject }) {
                var kept: Deque<MessageIndexEntry> = []
                for entry in self.entries {
                    if counts[entry.subject]! > config.maxMsgsPerSubject {
                        counts[entry.subject]! -= 1
                        self.bytes -= entry.size
                        evicted.append(entry.sequence)
                    } else {
                        kept.append(entry)
                    }
                }
                self.entries = kept
                evicted.sort()
            }
        }
        if let first = evicted.last { self.floor = max(self.floor, min(first + 1, self.firstSequence)) }
        return evicted
    }

    /// Why a new message of `size` accounted bytes must be refused under a `discard: new` stream's message and byte
    /// limits, or nil when it may be stored. `queuedCount`/`queuedBytes` are messages accepted but not yet stored.
    public func refusal(
        for size: UInt64,
        queuedCount: Int = 0,
        queuedBytes: UInt64 = 0,
        config: StreamConfig
    ) -> JetStreamAPIError? {
        guard config.discard == .new else { return nil }
        if config.maxMsgs > 0, self.entries.count + queuedCount >= config.maxMsgs { return .maximumMessagesExceeded }
        if config.maxBytes > 0, self.bytes + queuedBytes + size > UInt64(config.maxBytes) { return .maximumBytesExceeded }
        return nil
    }

    // MARK: Reading

    /// The position of the first entry with sequence ≥ `sequence`.
    public func position(atOrAfter sequence: UInt64) -> Int {
        var low = 0
        var high = self.entries.count
        while low < high {
            let middle = (low + high) / 2
            if self.entries[middle].sequence < sequence { low = middle + 1 } else { high = middle }
        }
        return low
    }

    public func position(of sequence: UInt64) -> Int? {
        let index = self.position(atOrAfter: sequence)
        return index < self.entries.count && self.entries[index].sequence == sequence ? index : nil
    }

    public func entry(_ sequence: UInt64) -> MessageIndexEntry? {
        self.position(of: sequence).map { self.entries[$0] }
    }

    /// The first message at or after `sequence` whose subject passes `filters` (all when empty).
    public func next(from sequence: UInt64, filters: [String]) -> MessageIndexEntry? {
        var index = self.position(atOrAfter: sequence)
        while index < self.entries.count {
            let entry = self.entries[index]
            if Self.passes(entry.subject, filters) { return entry }
            index += 1
        }
        return nil
    }

    /// How many messages at or after `sequence` pass `filters`.
    public func count(from sequence: UInt64, filters: [String]) -> Int {
        let start = self.position(atOrAfter: sequence)
        if filters.isEmpty { return self.entries.count - start }
        var count = 0
        for index in start..<self.entries.count where Self.passes(self.entries[index].subject, filters) { count += 1 }
        return count
    }

    /// The last message passing `filters`, if any.
    public func last(filters: [String]) -> MessageIndexEntry? {
        self.entries.last { Self.passes($0.subject, filters) }
    }

    /// The first sequence stored at or after `timestamp` (ns), if any.
    public func firstSequence(atOrAfter timestamp: Int64) -> UInt64? {
        self.entries.first { $0.timestamp >= timestamp }?.sequence
    }

    static func passes(_ subject: String, _ filters: [String]) -> Bool {
        filters.isEmpty || filters.contains { Subject.matches(pattern: $0, subject: subject) }
    }
}

// MARK: - DuplicateWindow

/// `Nats-Msg-Id`s seen within the stream's duplicate window, and the sequence each was stored at.
public struct DuplicateWindow: Sendable {
    private var byID: [String: UInt64] = [:]
    private var order: Deque<(id: String, timestamp: Int64)> = []

    public init() {}

    /// The sequence a message with this id was stored at within the window ending `now`, if any.
    public mutating func sequence(of id: String, now: Int64, window: Int64) -> UInt64? {
        self.expire(now: now, window: window)
        return self.byID[id]
    }

    public mutating func record(_ id: String, sequence: UInt64, timestamp: Int64) {
        self.byID[id] = sequence
        self.order.append((id, timestamp))
    }

    private mutating func expire(now: Int64, window: Int64) {
        while let first = self.order.first, now - first.timestamp > window {
            self.order.removeFirst()
            self.byID[first.id] = nil
        }
    }
}
