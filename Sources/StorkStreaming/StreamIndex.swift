import DequeModule

// MARK: - StreamIndex

/// What a stream knows about its messages without reading the store: every present message's sequence, subject,
/// size and time, in order. Decides limits (which messages to drop, whether to refuse a new one) and answers
/// consumers' "what comes next" questions. Pure.
///
/// The entries live in blocks of at most ``blockCapacity`` messages, so that appending never copies more than one
/// block (a single array of millions of entries pauses the stream's appends, and their acks, each time it grows) and
/// a block whose messages are all gone is freed at once.
public struct StreamIndex: Sendable {
    /// Messages per block.
    public static let blockCapacity = 4096

    struct Block: Sendable {
        /// Ascending; `head` and after are present (removal from the head only moves `head`).
        var entries: ContiguousArray<MessageIndexEntry>
        var head = 0

        init(_ entry: MessageIndexEntry) {
            self.entries = [entry]
            self.entries.reserveCapacity(StreamIndex.blockCapacity)
        }

        var count: Int { self.entries.count - self.head }
        var first: MessageIndexEntry { self.entries[self.head] }
        var last: MessageIndexEntry { self.entries[self.entries.count - 1] }

        /// The position in `entries` of the first present entry with sequence ≥ `sequence`.
        func position(atOrAfter sequence: UInt64) -> Int {
            var low = self.head
            var high = self.entries.count
            while low < high {
                let middle = (low + high) / 2
                if self.entries[middle].sequence < sequence { low = middle + 1 } else { high = middle }
            }
            return low
        }
    }

    /// Never empty blocks, ascending.
    private(set) var blocks: Deque<Block> = []
    /// Present messages.
    public private(set) var count = 0
    /// The highest sequence ever stored; never goes down.
    public private(set) var lastSequence: UInt64 = 0
    public private(set) var bytes: UInt64 = 0
    /// The first sequence that may still be present (after a purge, above the purged ones even when empty).
    private var floor: UInt64 = 1

    /// Per distinct subject: how many messages are present, where the first is (exactly, or at or after `first`
    /// when `firstIsExact` is false: found by a scan from there when needed) and the last. Kept only while the stream
    /// limits messages per subject (`max_msgs_per_subject`), so that a trim looks at the subjects appended since the
    /// last one instead of every message.
    struct SubjectState: Sendable {
        var count: Int
        var first: UInt64
        var firstIsExact = true
        var last: UInt64
        /// False once the last was removed while others stay (a message delete): `last` is then only an upper bound.
        var lastIsExact = true
    }

    private var subjects: [String: SubjectState]?
    /// Subjects appended to since the last `evict`.
    private var touched: Set<String> = []
    /// The per-subject limit `subjects` was last checked against.
    private var subjectLimit: Int64 = 0

    public init() {}

    public init(recovery: MessageStoreRecovery) {
        for entry in recovery.messages { self.append(entry) }
        self.lastSequence = max(recovery.lastSequence, recovery.messages.last?.sequence ?? 0)
        self.floor = recovery.messages.first?.sequence ?? self.lastSequence + 1
    }

    /// Every present message, in order.
    public var entries: Entries { Entries(blocks: self.blocks, count: self.count) }

    /// The present messages with sequence ≥ `sequence`, in order.
    public func entries(from sequence: UInt64) -> Entries.SubSequence {
        let entries = self.entries
        return entries[self.index(atOrAfter: sequence)...]
    }

    public var firstSequence: UInt64 { self.blocks.first?.first.sequence ?? max(self.floor, self.lastSequence + 1) }
    /// Sequences between first and last that are gone (deleted inside the range).
    public var deletedCount: Int {
        guard let first = self.blocks.first?.first else { return 0 }
        return Int(self.lastSequence - first.sequence + 1) - self.count
    }

    // MARK: Changing

    public mutating func append(_ entry: MessageIndexEntry) {
        precondition(entry.sequence > self.lastSequence, "sequence \(entry.sequence) after \(self.lastSequence)")
        if let last = self.blocks.indices.last, self.blocks[last].entries.count < Self.blockCapacity {
            self.blocks[last].entries.append(entry)
        } else {
            self.blocks.append(Block(entry))
        }
        self.count += 1
        self.lastSequence = entry.sequence
        self.bytes += entry.size
        if self.subjects != nil {
            if var state = self.subjects![entry.subject] {
                state.count += 1
                state.last = entry.sequence
                state.lastIsExact = true
                self.subjects![entry.subject] = state
            } else {
                self.subjects![entry.subject] = SubjectState(count: 1, first: entry.sequence, last: entry.sequence)
            }
            self.touched.insert(entry.subject)
        }
    }

    /// Keeps the per-subject state in step with a removal.
    private mutating func subjectRemoved(_ entry: MessageIndexEntry) {
        guard self.subjects != nil, var state = self.subjects![entry.subject] else { return }
        state.count -= 1
        if state.count == 0 {
            self.subjects![entry.subject] = nil
            return
        }
        if entry.sequence == state.last { state.lastIsExact = false }
        if state.firstIsExact, state.first == entry.sequence {
            state.first = entry.sequence + 1
            state.firstIsExact = false
        }
        if state.count == 1, state.lastIsExact {
            state.first = state.last
            state.firstIsExact = true
        }
        self.subjects![entry.subject] = state
    }

    /// Removes one message; false when it is not present.
    @discardableResult
    public mutating func remove(_ sequence: UInt64) -> Bool {
        guard let block = self.block(containing: sequence) else { return false }
        let position = self.blocks[block].position(atOrAfter: sequence)
        guard position < self.blocks[block].entries.count, self.blocks[block].entries[position].sequence == sequence
        else { return false }
        let removed = self.blocks[block].entries[position]
        self.bytes -= removed.size
        self.count -= 1
        self.subjectRemoved(removed)
        if position == self.blocks[block].head {
            self.blocks[block].head += 1
        } else {
            self.blocks[block].entries.remove(at: position)
        }
        if self.blocks[block].count == 0 { self.blocks.remove(at: block) }
        return true
    }

    /// Removes the first message.
    private mutating func removeFirst() -> MessageIndexEntry {
        let first = self.blocks[0].first
        self.blocks[0].head += 1
        if self.blocks[0].count == 0 { self.blocks.removeFirst() }
        self.count -= 1
        self.bytes -= first.size
        self.subjectRemoved(first)
        return first
    }

    /// Removes every message with sequence ≤ `sequence` (every message when nil). Returns how many.
    @discardableResult
    public mutating func purge(through sequence: UInt64? = nil) -> Int {
        let limit = sequence ?? self.lastSequence
        var removed = 0
        while let first = self.blocks.first {
            if first.last.sequence <= limit {
                // The whole block at once.
                self.count -= first.count
                for index in first.head..<first.entries.count {
                    self.bytes -= first.entries[index].size
                    self.subjectRemoved(first.entries[index])
                }
                removed += first.count
                self.blocks.removeFirst()
                continue
            }
            while self.blocks[0].first.sequence <= limit {
                _ = self.removeFirst()
                removed += 1
            }
            break
        }
        self.floor = max(self.floor, min(limit, self.lastSequence) + 1)
        return removed
    }

    /// Drops the oldest messages beyond the stream's limits (messages, bytes, age at `now` in ns) and returns their
    /// sequences, oldest first. With discard `new`, message and byte limits are enforced by refusing instead (see
    /// ``refusal(for:config:)``), but age still drops old messages.
    public mutating func evict(config: StreamConfig, now: Int64) -> [UInt64] {
        var evicted: [UInt64] = []
        if config.maxMsgs > 0 {
            while self.count > config.maxMsgs { evicted.append(self.removeFirst().sequence) }
        }
        if config.maxBytes > 0 {
            while self.bytes > UInt64(config.maxBytes), self.count > 0 { evicted.append(self.removeFirst().sequence) }
        }
        if config.maxAge > 0 {
            while let first = self.blocks.first?.first, now - first.timestamp >= config.maxAge {
                evicted.append(self.removeFirst().sequence)
            }
        }
        if config.maxMsgsPerSubject > 0 {
            evicted += self.evictPerSubject(limit: config.maxMsgsPerSubject)
            evicted.sort()
        } else if self.subjects != nil {
            self.subjects = nil
            self.touched = []
            self.subjectLimit = 0
        }
        if let first = evicted.last { self.floor = max(self.floor, min(first + 1, self.firstSequence)) }
        return evicted
    }

    /// Drops the oldest messages of every subject holding more than `limit`. The first call (or a new limit) looks at
    /// every subject; later ones only at the subjects appended to since.
    private mutating func evictPerSubject(limit: Int64) -> [UInt64] {
        var candidates: [String]
        if self.subjects == nil || self.subjectLimit != limit {
            var states: [String: SubjectState] = [:]
            for entry in self.entries {
                if var state = states[entry.subject] {
                    state.count += 1
                    state.last = entry.sequence
                    states[entry.subject] = state
                } else {
                    states[entry.subject] = SubjectState(count: 1, first: entry.sequence, last: entry.sequence)
                }
            }
            self.subjects = states
            self.subjectLimit = limit
            candidates = states.compactMap { $0.value.count > limit ? $0.key : nil }
        } else {
            candidates = self.touched.filter { (self.subjects![$0]?.count ?? 0) > limit }
        }
        self.touched = []
        var doomed: [UInt64] = []
        for subject in candidates.sorted() {
            while var state = self.subjects![subject], state.count > limit {
                if !state.firstIsExact {
                    state.first = self.entries(from: state.first).first { $0.subject == subject }!.sequence
                    state.firstIsExact = true
                    self.subjects![subject] = state
                }
                self.remove(state.first)
                doomed.append(state.first)
            }
        }
        return doomed
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
        if config.maxMsgs > 0, self.count + queuedCount >= config.maxMsgs { return .maximumMessagesExceeded }
        if config.maxBytes > 0, self.bytes + queuedBytes + size > UInt64(config.maxBytes) { return .maximumBytesExceeded }
        return nil
    }

    // MARK: Reading

    /// The first block whose last sequence is ≥ `sequence` (`blocks.count` when none is).
    private func firstBlock(endingAtOrAfter sequence: UInt64) -> Int {
        var low = 0
        var high = self.blocks.count
        while low < high {
            let middle = (low + high) / 2
            if self.blocks[middle].last.sequence < sequence { low = middle + 1 } else { high = middle }
        }
        return low
    }

    /// The block that would hold `sequence` if it is present.
    private func block(containing sequence: UInt64) -> Int? {
        let block = self.firstBlock(endingAtOrAfter: sequence)
        return block < self.blocks.count && self.blocks[block].first.sequence <= sequence ? block : nil
    }

    /// The position in `entries` of the first present message with sequence ≥ `sequence`.
    private func index(atOrAfter sequence: UInt64) -> Entries.Index {
        let block = self.firstBlock(endingAtOrAfter: sequence)
        guard block < self.blocks.count else { return Entries.Index(block: block, position: 0) }
        return Entries.Index(block: block, position: self.blocks[block].position(atOrAfter: sequence))
    }

    public func entry(_ sequence: UInt64) -> MessageIndexEntry? {
        guard let block = self.block(containing: sequence) else { return nil }
        let position = self.blocks[block].position(atOrAfter: sequence)
        let entries = self.blocks[block].entries
        return position < entries.count && entries[position].sequence == sequence ? entries[position] : nil
    }

    /// The first message at or after `sequence` whose subject passes `filters` (all when empty).
    public func next(from sequence: UInt64, filters: [String]) -> MessageIndexEntry? {
        self.entries(from: sequence).first { Self.passes($0.subject, filters) }
    }

    /// How many messages at or after `sequence` pass `filters`.
    public func count(from sequence: UInt64, filters: [String]) -> Int {
        let start = self.index(atOrAfter: sequence)
        if filters.isEmpty {
            guard start.block < self.blocks.count else { return 0 }
            var count = self.blocks[start.block].entries.count - start.position
            for block in (start.block + 1)..<self.blocks.count { count += self.blocks[block].count }
            return count
        }
        var count = 0
        for entry in self.entries[start...] where Self.passes(entry.subject, filters) { count += 1 }
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

    // MARK: Entries

    /// The present messages of an index, in order (a view of its blocks).
    public struct Entries: BidirectionalCollection, Sendable {
        public struct Index: Comparable, Sendable {
            /// The block, and the position in its `entries` (≥ its `head`).
            var block: Int
            var position: Int

            public static func < (lhs: Index, rhs: Index) -> Bool {
                lhs.block != rhs.block ? lhs.block < rhs.block : lhs.position < rhs.position
            }
        }

        let blocks: Deque<Block>
        public let count: Int

        public var startIndex: Index { Index(block: 0, position: self.blocks.first?.head ?? 0) }
        public var endIndex: Index { Index(block: self.blocks.count, position: 0) }
        public var isEmpty: Bool { self.count == 0 }

        public subscript(index: Index) -> MessageIndexEntry { self.blocks[index.block].entries[index.position] }

        public func index(after index: Index) -> Index {
            if index.position + 1 < self.blocks[index.block].entries.count {
                return Index(block: index.block, position: index.position + 1)
            }
            let next = index.block + 1
            return Index(block: next, position: next < self.blocks.count ? self.blocks[next].head : 0)
        }

        public func index(before index: Index) -> Index {
            if index.block < self.blocks.count, index.position > self.blocks[index.block].head {
                return Index(block: index.block, position: index.position - 1)
            }
            let previous = index.block - 1
            return Index(block: previous, position: self.blocks[previous].entries.count - 1)
        }

        public var first: MessageIndexEntry? { self.blocks.first?.first }
        public var last: MessageIndexEntry? { self.blocks.last?.last }
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
