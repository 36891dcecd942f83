import DequeModule
import Synchronization

// MARK: - StreamIndexLoader

/// How an index reads the per-message details (subject, size, time) of a block it does not hold in memory: from the
/// store's own indexes on disk. Called with the stream's lock held, so it must be quick and must not call back into
/// the stream.
public protocol StreamIndexLoader: Sendable {
    /// The messages the store holds with sequences in `range`, in order. Removed messages may be among them (the
    /// index knows which are present). Nil when the store cannot read them (it logs why); the index asks again next
    /// time and meanwhile answers from its summaries as far as they go.
    func indexEntries(in range: ClosedRange<UInt64>) -> [MessageIndexEntry]?
}

// MARK: - StreamIndex

/// What a stream knows about its messages without reading their payloads: which sequences are present, their
/// subjects, sizes and times. Decides limits (which messages to drop, whether to refuse a new one) and answers
/// consumers' "what comes next" questions. Pure, apart from its loader.
///
/// Memory does not grow with the stream's length (issue 20). Sequences are grouped in blocks of ``blockSpan``
/// (`1…4096`, `4097…8192`, …). Every block keeps a *summary* in memory: first and last present sequence, count,
/// bytes, first and last time, which sequences are present (a bitmap, only once one inside the range is missing) and
/// how many messages each subject has (while the block has at most ``maximumSubjectsPerBlock`` of them). The
/// per-message *detail* is held for the block being appended to; the detail of older blocks comes from the store's
/// ``StreamIndexLoader`` when a question needs it (a filter the subject counts cannot answer, a removal, a time), and
/// the last ``defaultCachedBlocks`` used stay in a cache. Without a loader (the SQL stores) every block's detail stays
/// in memory.
///
/// Loaded detail may still list messages removed since (the store removes after the index): presence is always
/// decided by the summary. Copies of an index share the detail cache; only one copy may change.
public struct StreamIndex: Sendable {
    /// Sequences per block.
    public static let blockSpan: UInt64 = 4096
    /// At most this many messages per block (one per sequence).
    public static let blockCapacity = Int(blockSpan)
    /// Beyond this many distinct subjects a block stops counting per subject (filters then read its detail).
    public static let maximumSubjectsPerBlock = 16
    /// Blocks whose detail a stream with a loader keeps in memory besides the one being appended to.
    public static let defaultCachedBlocks = 32

    /// The summary of the present messages in one block of sequences.
    public struct Block: Sendable, Equatable {
        /// The first sequence of the block's span (`base … base + blockSpan - 1`).
        public let base: UInt64
        /// First and last present sequences.
        public internal(set) var first: UInt64
        public internal(set) var last: UInt64
        public internal(set) var count: Int
        public internal(set) var bytes: UInt64
        /// The times of the first and last present messages.
        public internal(set) var firstTime: Int64
        public internal(set) var lastTime: Int64
        /// One bit per sequence of the span, set when present; nil while every sequence from `first` to `last` is.
        var present: [UInt64]?
        /// Present messages per subject; nil once the block had more than ``maximumSubjectsPerBlock`` subjects.
        var subjects: [String: Int]?

        static func base(of sequence: UInt64) -> UInt64 {
            sequence == 0 ? 1 : (sequence - 1) / StreamIndex.blockSpan * StreamIndex.blockSpan + 1
        }

        public init(_ entry: MessageIndexEntry) {
            self.base = Self.base(of: entry.sequence)
            self.first = entry.sequence
            self.last = entry.sequence
            self.count = 1
            self.bytes = entry.size
            self.firstTime = entry.timestamp
            self.lastTime = entry.timestamp
            self.subjects = [entry.subject: 1]
        }

        /// The sequence after this block's span.
        var end: UInt64 { self.base + StreamIndex.blockSpan }

        @inline(__always)
        private func bit(_ sequence: UInt64) -> Bool {
            let offset = Int(sequence - self.base)
            return self.present![offset >> 6] & (1 << UInt64(offset & 63)) != 0
        }

        public func contains(_ sequence: UInt64) -> Bool {
            sequence >= self.first && sequence <= self.last && (self.present == nil || self.bit(sequence))
        }

        /// Turns "every sequence from first to last" into bits.
        mutating func materialize() {
            guard self.present == nil else { return }
            var bits = [UInt64](repeating: 0, count: Int(StreamIndex.blockSpan) / 64)
            for offset in Int(self.first - self.base)...Int(self.last - self.base) {
                bits[offset >> 6] |= 1 << UInt64(offset & 63)
            }
            self.present = bits
        }

        mutating func setBit(_ sequence: UInt64, _ value: Bool) {
            let offset = Int(sequence - self.base)
            if value {
                self.present![offset >> 6] |= 1 << UInt64(offset & 63)
            } else {
                self.present![offset >> 6] &= ~(1 << UInt64(offset & 63))
            }
        }

        /// The first present sequence ≥ `sequence`.
        func next(atOrAfter sequence: UInt64) -> UInt64? {
            let from = max(sequence, self.first)
            guard from <= self.last else { return nil }
            guard let present = self.present else { return from }
            var offset = Int(from - self.base)
            var word = present[offset >> 6] & (~0 << UInt64(offset & 63))
            while true {
                if word != 0 {
                    let found = self.base + UInt64((offset & ~63) + word.trailingZeroBitCount)
                    return found <= self.last ? found : nil
                }
                offset = (offset & ~63) + 64
                guard offset < present.count * 64 else { return nil }
                word = present[offset >> 6]
            }
        }

        /// The last present sequence ≤ `sequence`.
        func previous(atOrBefore sequence: UInt64) -> UInt64? {
            let from = min(sequence, self.last)
            guard from >= self.first else { return nil }
            guard let present = self.present else { return from }
            var offset = Int(from - self.base)
            let shift = UInt64(offset & 63)
            var word = present[offset >> 6] & (shift == 63 ? ~0 : (1 << (shift + 1)) - 1)
            while true {
                if word != 0 {
                    let found = self.base + UInt64((offset & ~63) + 63 - word.leadingZeroBitCount)
                    return found >= self.first ? found : nil
                }
                guard offset >= 64 else { return nil }
                offset = (offset & ~63) - 1
                word = present[offset >> 6]
            }
        }

        /// Present messages with sequence ≥ `sequence`.
        func count(from sequence: UInt64) -> Int {
            if sequence <= self.first { return self.count }
            if sequence > self.last { return 0 }
            guard let present = self.present else { return Int(self.last - sequence + 1) }
            let low = Int(sequence - self.base)
            let high = Int(self.last - self.base)
            var total = 0
            for word in (low >> 6)...(high >> 6) {
                var bits = present[word]
                if word == low >> 6 { bits &= ~0 << UInt64(low & 63) }
                if word == high >> 6, high & 63 != 63 { bits &= (1 << UInt64((high & 63) + 1)) - 1 }
                total += bits.nonzeroBitCount
            }
            return total
        }

        /// Present messages whose subject passes `filters`, counted from the subject counts; nil when the block no
        /// longer counts per subject.
        func count(passing filters: [String]) -> Int? {
            guard let subjects = self.subjects else { return nil }
            var total = 0
            for (subject, count) in subjects where StreamIndex.passes(subject, filters) { total += count }
            return total
        }

        /// Whether the block may hold a message passing `filters` (false only when its subject counts say so).
        func mayHold(_ filters: [String]) -> Bool {
            filters.isEmpty || (self.count(passing: filters) ?? 1) > 0
        }

        /// Adds a message after `last` (the block's span).
        public mutating func append(_ entry: MessageIndexEntry) {
            if self.present != nil || entry.sequence != self.last + 1 {
                self.materialize()
                self.setBit(entry.sequence, true)
            }
            self.last = entry.sequence
            self.count += 1
            self.bytes += entry.size
            self.lastTime = entry.timestamp
            if self.subjects != nil {
                self.subjects![entry.subject, default: 0] += 1
                if self.subjects!.count > StreamIndex.maximumSubjectsPerBlock { self.subjects = nil }
            }
        }

        /// The summary of `self` followed by `later`, two parts of the same span (segments of a store).
        public func merged(with later: Block) -> Block {
            precondition(later.base == self.base && later.first > self.last, "blocks to merge overlap")
            var result = self
            if self.present != nil || later.present != nil || later.first != self.last + 1 {
                result.materialize()
                var other = later
                other.materialize()
                for word in result.present!.indices { result.present![word] |= other.present![word] }
            }
            result.last = later.last
            result.count += later.count
            result.bytes += later.bytes
            result.lastTime = later.lastTime
            if let ours = self.subjects, let theirs = later.subjects {
                let subjects = ours.merging(theirs, uniquingKeysWith: +)
                result.subjects = subjects.count > StreamIndex.maximumSubjectsPerBlock ? nil : subjects
            } else {
                result.subjects = nil
            }
            return result
        }
    }

    /// Builds block summaries from present messages given in order (stores, at recovery).
    public struct Builder: Sendable {
        public private(set) var blocks: [Block] = []

        public init() {}

        public mutating func add(_ entry: MessageIndexEntry) {
            if let last = self.blocks.indices.last, self.blocks[last].base == Block.base(of: entry.sequence) {
                self.blocks[last].append(entry)
            } else {
                self.blocks.append(Block(entry))
            }
        }

        /// Adds the summaries of later messages, merging a block that continues the last one.
        public mutating func add(_ blocks: [Block]) {
            for block in blocks {
                if let last = self.blocks.indices.last, self.blocks[last].base == block.base {
                    self.blocks[last] = self.blocks[last].merged(with: block)
                } else {
                    self.blocks.append(block)
                }
            }
        }
    }

    /// Never empty blocks, ascending.
    public private(set) var blocks: Deque<Block> = []
    /// The detail of the block with base `tailBase` (appends go there), every message appended or loaded, present or
    /// not.
    private var tail: ContiguousArray<MessageIndexEntry> = []
    private var tailBase: UInt64 = 0
    /// False while `tail` lacks the block's messages from before the index took it over (a failed load).
    private var tailComplete = true
    private let cache: DetailCache
    private let loader: (any StreamIndexLoader)?
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

    /// An empty index. With a `loader`, at most `cachedBlocks` blocks' detail stays in memory besides the last one.
    public init(loader: (any StreamIndexLoader)? = nil, cachedBlocks: Int = StreamIndex.defaultCachedBlocks) {
        self.loader = loader
        self.cache = DetailCache(capacity: loader == nil ? Int.max : max(1, cachedBlocks))
    }

    /// The index of what a store recovered: its messages, or its block summaries (which need the store's loader).
    public init(
        recovery: MessageStoreRecovery,
        loader: (any StreamIndexLoader)? = nil,
        cachedBlocks: Int = StreamIndex.defaultCachedBlocks
    ) {
        precondition(recovery.blocks.isEmpty || loader != nil, "block summaries need the store's loader")
        self.init(loader: loader, cachedBlocks: cachedBlocks)
        for entry in recovery.messages { self.append(entry) }
        for block in recovery.blocks {
            precondition(block.first > self.lastSequence && block.base != self.blocks.last?.base, "blocks out of order")
            self.blocks.append(block)
            self.count += block.count
            self.bytes += block.bytes
            self.lastSequence = block.last
        }
        self.lastSequence = max(recovery.lastSequence, self.lastSequence)
        self.floor = self.blocks.first?.first ?? self.lastSequence + 1
    }

    public var firstSequence: UInt64 { self.blocks.first?.first ?? max(self.floor, self.lastSequence + 1) }
    /// The times of the first and last present messages (0 when none).
    public var firstTimestamp: Int64 { self.blocks.first?.firstTime ?? 0 }
    public var lastTimestamp: Int64 { self.blocks.last?.lastTime ?? 0 }
    /// Sequences between first and last that are gone (deleted inside the range).
    /// (`last_seq - first_seq + 1 - messages`, as nats-server counts: a removed newest message counts too.)
    public var deletedCount: Int {
        guard let first = self.blocks.first?.first else { return 0 }
        return Int(self.lastSequence - first + 1) - self.count
    }

    /// How many messages' detail is in memory now (the block appended to and the cached ones): bounded by the cache,
    /// not by the stream's length, when the index has a loader.
    public var residentDetailEntries: Int { self.tail.count + self.cache.entryCount }

    // MARK: Detail

    /// Every message the store holds in `block`'s span as far as known (present or not), in order.
    func detail(of block: Block) -> ContiguousArray<MessageIndexEntry> {
        if block.base == self.tailBase {
            if self.tailComplete { return self.tail }
            return self.load(block).map { ContiguousArray($0) } ?? self.tail
        }
        if let cached = self.cache.get(block.base) { return cached }
        guard let loaded = self.load(block).map({ ContiguousArray($0) }) else { return [] }
        self.cache.put(block.base, loaded)
        return loaded
    }

    private func load(_ block: Block) -> [MessageIndexEntry]? {
        self.loader?.indexEntries(in: block.first...block.last)
    }

    /// The position in `detail` of the first message with sequence ≥ `sequence`.
    static func position(atOrAfter sequence: UInt64, in detail: ContiguousArray<MessageIndexEntry>) -> Int {
        detail.firstPosition(atOrAfter: sequence) { $0.sequence }
    }

    static func find(_ sequence: UInt64, in detail: ContiguousArray<MessageIndexEntry>) -> MessageIndexEntry? {
        let position = Self.position(atOrAfter: sequence, in: detail)
        return position < detail.count && detail[position].sequence == sequence ? detail[position] : nil
    }

    // MARK: Changing

    public mutating func append(_ entry: MessageIndexEntry) {
        precondition(entry.sequence > self.lastSequence, "sequence \(entry.sequence) after \(self.lastSequence)")
        let base = Block.base(of: entry.sequence)
        if let last = self.blocks.indices.last, self.blocks[last].base == base {
            self.blocks[last].append(entry)
        } else {
            self.blocks.append(Block(entry))
        }
        if base != self.tailBase || !self.tailComplete {
            if self.tailBase != base, self.tailBase != 0, self.tailComplete,
                self.blocks.contains(where: { $0.base == self.tailBase })
            {
                self.cache.put(self.tailBase, self.tail)
            }
            // The block's earlier messages (recovered, or appended before a failed load): from the cache or the store.
            var earlier: ContiguousArray<MessageIndexEntry> = []
            var complete = true
            let block = self.blocks[self.blocks.count - 1]
            if block.count > 1 {
                let before = Block.base(of: block.first)...(entry.sequence - 1)
                if let cached = self.cache.get(base) {
                    earlier = cached
                } else if let loaded = self.loader?.indexEntries(in: before) {
                    earlier = ContiguousArray(loaded)
                } else {
                    complete = self.loader == nil
                }
                self.cache.remove(base)
            }
            if !complete, base == self.tailBase { earlier = self.tail }
            self.tail = earlier
            self.tail.reserveCapacity(Self.blockCapacity)
            self.tailBase = base
            self.tailComplete = complete
        }
        self.tail.append(entry)
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

    /// Removes one message; false when it is not present. `subject`, when the caller knows it, is used if the store
    /// cannot read the message's detail.
    @discardableResult
    public mutating func remove(_ sequence: UInt64, subject: String? = nil) -> Bool {
        guard let block = self.block(containing: sequence), self.blocks[block].contains(sequence) else { return false }
        let detail = self.detail(of: self.blocks[block])
        self.removeEntry(sequence, inBlock: block, detail: detail, subject: subject)
        return true
    }

    /// Removes a present message, reading its size, subject and its neighbours' times from `detail`. A store that
    /// could not read the block (it logged why) leaves the size and subject unknown: the block then stops counting
    /// subjects, its bytes leave the stream's total when its last message goes, and `subject` (when the caller knows
    /// it) keeps the per-subject state right.
    private mutating func removeEntry(
        _ sequence: UInt64,
        inBlock position: Int,
        detail: ContiguousArray<MessageIndexEntry>,
        subject: String? = nil
    ) {
        let found = Self.find(sequence, in: detail)
        let entry = found ?? MessageIndexEntry(sequence: sequence, subject: subject ?? "", size: 0, timestamp: 0)
        self.count -= 1
        self.subjectRemoved(entry)
        var block = self.blocks[position]
        block.count -= 1
        if block.count == 0 {
            self.bytes -= min(self.bytes, block.bytes)
            self.blocks.remove(at: position)
            self.forgetDetail(block.base)
            return
        }
        self.bytes -= min(self.bytes, entry.size)
        block.bytes -= min(block.bytes, entry.size)
        if found == nil {
            block.subjects = nil
        } else if let count = block.subjects?[entry.subject] {
            block.subjects![entry.subject] = count > 1 ? count - 1 : nil
        }
        if sequence == block.first {
            if block.present != nil { block.setBit(sequence, false) }
            block.first = block.next(atOrAfter: sequence + 1)!
            // Unknown (a failed read): the block's last time, so that age limits keep rather than drop.
            block.firstTime = Self.find(block.first, in: detail)?.timestamp ?? max(block.firstTime, block.lastTime)
        } else if sequence == block.last {
            if block.present != nil { block.setBit(sequence, false) }
            block.last = block.previous(atOrBefore: sequence - 1)!
            if let previous = Self.find(block.last, in: detail) { block.lastTime = previous.timestamp }
        } else {
            block.materialize()
            block.setBit(sequence, false)
        }
        self.blocks[position] = block
    }

    /// Drops the first block whole: every message in it is going.
    private mutating func removeFirstBlock(collecting sequences: inout [UInt64]?) {
        let block = self.blocks.removeFirst()
        self.count -= block.count
        self.bytes -= min(self.bytes, block.bytes)
        if sequences != nil || self.subjects != nil {
            var next = block.next(atOrAfter: block.first)
            while let sequence = next {
                sequences?.append(sequence)
                next = block.next(atOrAfter: sequence + 1)
            }
        }
        if self.subjects != nil {
            let detail = self.detail(of: block)
            for entry in detail where block.contains(entry.sequence) { self.subjectRemoved(entry) }
        }
        self.forgetDetail(block.base)
    }

    private func forgetDetail(_ base: UInt64) {
        if base != self.tailBase { self.cache.remove(base) }
    }

    /// Removes the first present message and returns its sequence.
    private mutating func removeFirst() -> UInt64 {
        let first = self.blocks[0].first
        self.removeEntry(first, inBlock: 0, detail: self.detail(of: self.blocks[0]))
        return first
    }

    /// Removes every message with sequence ≤ `sequence` (every message when nil). Returns how many.
    @discardableResult
    public mutating func purge(through sequence: UInt64? = nil) -> Int {
        let limit = sequence ?? self.lastSequence
        var removed = 0
        var none: [UInt64]? = nil
        while let first = self.blocks.first {
            if first.last <= limit {
                removed += first.count
                self.removeFirstBlock(collecting: &none)
                continue
            }
            while self.blocks[0].first <= limit {
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
        var evicted: [UInt64]? = []
        if config.maxMsgs > 0 {
            while self.count > config.maxMsgs {
                if self.count - self.blocks[0].count >= config.maxMsgs {
                    self.removeFirstBlock(collecting: &evicted)
                } else {
                    evicted!.append(self.removeFirst())
                }
            }
        }
        if config.maxBytes > 0 {
            let limit = UInt64(config.maxBytes)
            while self.bytes > limit, let first = self.blocks.first {
                if self.bytes - first.bytes >= limit {
                    self.removeFirstBlock(collecting: &evicted)
                } else {
                    evicted!.append(self.removeFirst())
                }
            }
        }
        if config.maxAge > 0 {
            // Messages stored at or before the cutoff are too old (no overflow on extreme times).
            let (difference, overflow) = now.subtractingReportingOverflow(config.maxAge)
            let cutoff = overflow ? Int64.min : difference
            while let first = self.blocks.first, first.firstTime <= cutoff {
                if first.lastTime <= cutoff {
                    self.removeFirstBlock(collecting: &evicted)
                } else {
                    evicted!.append(self.removeFirst())
                }
            }
        }
        var result = evicted!
        if config.maxMsgsPerSubject > 0 {
            result += self.evictPerSubject(limit: config.maxMsgsPerSubject)
            result.sort()
        } else if self.subjects != nil {
            self.subjects = nil
            self.touched = []
            self.subjectLimit = 0
        }
        if let last = result.last { self.floor = max(self.floor, min(last + 1, self.firstSequence)) }
        return result
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
                    // Not found: the store could not read a block (logged by it); the next trim tries again.
                    guard let first = self.entries(from: state.first).first(where: { $0.subject == subject }) else {
                        break
                    }
                    state.first = first.sequence
                    state.firstIsExact = true
                    self.subjects![subject] = state
                }
                guard self.remove(state.first, subject: subject) else { break }
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
        self.blocks.firstPosition(atOrAfter: sequence) { $0.last }
    }

    /// The block whose span holds `sequence`, if there is one.
    private func block(containing sequence: UInt64) -> Int? {
        let block = self.firstBlock(endingAtOrAfter: sequence)
        return block < self.blocks.count && self.blocks[block].first <= sequence ? block : nil
    }

    /// Whether the message with this sequence is present.
    public func contains(_ sequence: UInt64) -> Bool {
        self.block(containing: sequence).map { self.blocks[$0].contains(sequence) } ?? false
    }

    /// The present message with this sequence (its detail may be read from the store).
    public func entry(_ sequence: UInt64) -> MessageIndexEntry? {
        guard let block = self.block(containing: sequence), self.blocks[block].contains(sequence) else { return nil }
        return Self.find(sequence, in: self.detail(of: self.blocks[block]))
    }

    /// The first present sequence ≥ `sequence` whose subject passes `filters` (all when empty).
    public func next(from sequence: UInt64, filters: [String]) -> UInt64? {
        var position = self.firstBlock(endingAtOrAfter: sequence)
        while position < self.blocks.count {
            let block = self.blocks[position]
            if filters.isEmpty { return block.next(atOrAfter: sequence) }
            if block.mayHold(filters) {
                let detail = self.detail(of: block)
                var index = Self.position(atOrAfter: max(sequence, block.first), in: detail)
                while index < detail.count, detail[index].sequence <= block.last {
                    let entry = detail[index]
                    if block.contains(entry.sequence), Self.passes(entry.subject, filters) { return entry.sequence }
                    index += 1
                }
            }
            position += 1
        }
        return nil
    }

    /// How many messages at or after `sequence` pass `filters`.
    public func count(from sequence: UInt64, filters: [String]) -> Int {
        var total = 0
        for position in self.firstBlock(endingAtOrAfter: sequence)..<self.blocks.count {
            let block = self.blocks[position]
            if filters.isEmpty {
                total += block.count(from: sequence)
            } else if sequence <= block.first, let counted = block.count(passing: filters) {
                total += counted
            } else if block.mayHold(filters) {
                for entry in self.detail(of: block)
                where entry.sequence >= sequence && block.contains(entry.sequence) && Self.passes(entry.subject, filters) {
                    total += 1
                }
            }
        }
        return total
    }

    /// The last present sequence passing `filters`, if any.
    public func last(filters: [String]) -> UInt64? {
        for block in self.blocks.reversed() {
            if filters.isEmpty { return block.last }
            guard block.mayHold(filters) else { continue }
            for entry in self.detail(of: block).reversed()
            where block.contains(entry.sequence) && Self.passes(entry.subject, filters) {
                return entry.sequence
            }
        }
        return nil
    }

    /// The first sequence stored at or after `timestamp` (ns), if any.
    public func firstSequence(atOrAfter timestamp: Int64) -> UInt64? {
        let low = self.blocks.firstPosition(atOrAfter: timestamp) { $0.lastTime }
        return self.entries(from: low < self.blocks.count ? self.blocks[low].first : self.lastSequence + 1)
            .first { $0.timestamp >= timestamp }?.sequence
    }

    /// Present messages up to and including `sequence`.
    public func count(through sequence: UInt64) -> Int {
        sequence == .max ? self.count : self.count - self.count(from: sequence + 1, filters: [])
    }

    static func passes(_ subject: String, _ filters: [String]) -> Bool {
        filters.isEmpty || filters.contains { Subject.matches(pattern: $0, subject: subject) }
    }

    // MARK: Entries

    /// Every present message, in order (detail read block by block).
    public var entries: Entries { Entries(index: self, start: 0) }

    /// The present messages with sequence ≥ `sequence`, in order.
    public func entries(from sequence: UInt64) -> Entries { Entries(index: self, start: sequence) }

    /// The present messages with sequence ≤ `sequence`, newest first.
    public func reversedEntries(through sequence: UInt64 = .max) -> ReversedEntries {
        ReversedEntries(index: self, end: sequence)
    }

    /// Present messages from a sequence on, in order.
    public struct Entries: Sequence, Sendable {
        let index: StreamIndex
        let start: UInt64

        public var isEmpty: Bool { self.index.next(from: self.start, filters: []) == nil }
        public var first: MessageIndexEntry? { self.first(where: { _ in true }) }

        public func makeIterator() -> Iterator {
            Iterator(index: self.index, start: self.start, block: self.index.firstBlock(endingAtOrAfter: self.start))
        }

        public struct Iterator: IteratorProtocol {
            let index: StreamIndex
            let start: UInt64
            var block: Int
            var detail: ContiguousArray<MessageIndexEntry>?
            var position = 0

            init(index: StreamIndex, start: UInt64, block: Int) {
                self.index = index
                self.start = start
                self.block = block
            }

            public mutating func next() -> MessageIndexEntry? {
                while self.block < self.index.blocks.count {
                    let block = self.index.blocks[self.block]
                    if self.detail == nil {
                        let detail = self.index.detail(of: block)
                        self.position = StreamIndex.position(atOrAfter: Swift.max(self.start, block.first), in: detail)
                        self.detail = detail
                    }
                    while self.position < self.detail!.count {
                        let entry = self.detail![self.position]
                        self.position += 1
                        if entry.sequence > block.last { break }
                        if block.contains(entry.sequence) { return entry }
                    }
                    self.block += 1
                    self.detail = nil
                }
                return nil
            }
        }
    }

    /// Present messages up to a sequence, newest first.
    public struct ReversedEntries: Sequence, Sendable {
        let index: StreamIndex
        let end: UInt64

        public func makeIterator() -> Iterator {
            let after = self.index.firstBlock(endingAtOrAfter: self.end)
            return Iterator(index: self.index, end: self.end, block: Swift.min(after, self.index.blocks.count - 1))
        }

        public struct Iterator: IteratorProtocol {
            let index: StreamIndex
            let end: UInt64
            var block: Int
            var detail: ContiguousArray<MessageIndexEntry>?
            var position = 0

            init(index: StreamIndex, end: UInt64, block: Int) {
                self.index = index
                self.end = end
                self.block = block
            }

            public mutating func next() -> MessageIndexEntry? {
                while self.block >= 0 {
                    let block = self.index.blocks[self.block]
                    if self.detail == nil {
                        let detail = self.index.detail(of: block)
                        self.position = StreamIndex.position(atOrAfter: Swift.min(self.end, block.last) &+ 1, in: detail) - 1
                        self.detail = detail
                    }
                    while self.position >= 0 {
                        let entry = self.detail![self.position]
                        self.position -= 1
                        if entry.sequence < block.first { break }
                        if block.contains(entry.sequence) { return entry }
                    }
                    self.block -= 1
                    self.detail = nil
                }
                return nil
            }
        }
    }
}

// MARK: - DetailCache

/// The per-message detail of blocks read from a store, least recently used dropped beyond a capacity. Shared by the
/// copies of an index.
final class DetailCache: Sendable {
    private struct State {
        var blocks: [UInt64: (entries: ContiguousArray<MessageIndexEntry>, used: UInt64)] = [:]
        var clock: UInt64 = 0
        var entryCount = 0
    }

    let capacity: Int
    private let state = Mutex(State())

    init(capacity: Int) { self.capacity = capacity }

    var entryCount: Int { self.state.withLock { $0.entryCount } }

    func get(_ base: UInt64) -> ContiguousArray<MessageIndexEntry>? {
        self.state.withLock { state in
            guard let found = state.blocks[base] else { return nil }
            state.clock += 1
            state.blocks[base]!.used = state.clock
            return found.entries
        }
    }

    func put(_ base: UInt64, _ entries: ContiguousArray<MessageIndexEntry>) {
        self.state.withLock { state in
            state.clock += 1
            state.entryCount += entries.count - (state.blocks[base]?.entries.count ?? 0)
            state.blocks[base] = (entries, state.clock)
            while state.blocks.count > self.capacity {
                let oldest = state.blocks.min { $0.value.used < $1.value.used }!.key
                state.entryCount -= state.blocks.removeValue(forKey: oldest)!.entries.count
            }
        }
    }

    func remove(_ base: UInt64) {
        self.state.withLock { state in
            if let removed = state.blocks.removeValue(forKey: base) { state.entryCount -= removed.entries.count }
        }
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

// MARK: - Block summaries in files

extension StreamIndex.Block {
    /// Appends the summary, little-endian, for a store's index files (decoded by ``decode(_:at:)``).
    public func encode(into bytes: inout [UInt8]) {
        func append<Value: FixedWidthInteger>(_ value: Value) {
            withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
        }
        append(self.base)
        append(self.first)
        append(self.last)
        append(UInt32(self.count))
        append(self.bytes)
        append(self.firstTime)
        append(self.lastTime)
        append(UInt8((self.present == nil ? 0 : 1) | (self.subjects == nil ? 0 : 2)))
        if let present = self.present { for word in present { append(word) } }
        if let subjects = self.subjects {
            append(UInt16(subjects.count))
            for (subject, count) in subjects.sorted(by: { $0.key < $1.key }) {
                let utf8 = Array(subject.utf8.prefix(Int(UInt16.max)))
                append(UInt16(utf8.count))
                bytes.append(contentsOf: utf8)
                append(UInt32(count))
            }
        }
    }

    /// The summary encoded at `position` (moved past it), or nil when the bytes are not a consistent one.
    public static func decode(_ bytes: [UInt8], at position: inout Int) -> Self? {
        func read<Value: FixedWidthInteger>(_: Value.Type) -> Value? {
            let size = MemoryLayout<Value>.size
            guard bytes.count - position >= size else { return nil }
            defer { position += size }
            return Value(littleEndian: bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: position, as: Value.self) })
        }
        guard let base = read(UInt64.self), let first = read(UInt64.self), let last = read(UInt64.self),
            let count = read(UInt32.self), let byteCount = read(UInt64.self), let firstTime = read(Int64.self),
            let lastTime = read(Int64.self), let flags = read(UInt8.self),
            base == Self.base(of: base), first >= base, last >= first, last - base < StreamIndex.blockSpan,
            count >= 1, UInt64(count) <= last - first + 1
        else { return nil }
        var block = Self(MessageIndexEntry(sequence: first, subject: "", size: byteCount, timestamp: firstTime))
        block.last = last
        block.count = Int(count)
        block.lastTime = lastTime
        block.subjects = nil
        if flags & 1 != 0 {
            var present: [UInt64] = []
            present.reserveCapacity(Int(StreamIndex.blockSpan) / 64)
            for _ in 0..<(Int(StreamIndex.blockSpan) / 64) {
                guard let word = read(UInt64.self) else { return nil }
                present.append(word)
            }
            block.present = present
            // No bits outside first…last, as many inside as the count, and first and last present.
            let total = present.reduce(0) { $0 + $1.nonzeroBitCount }
            guard total == block.count, block.count(from: first) == block.count, block.contains(first),
                block.contains(last)
            else { return nil }
        } else if UInt64(count) != last - first + 1 {
            return nil
        }
        if flags & 2 != 0 {
            guard let subjectCount = read(UInt16.self) else { return nil }
            var subjects: [String: Int] = [:]
            for _ in 0..<subjectCount {
                guard let length = read(UInt16.self), bytes.count - position >= Int(length) else { return nil }
                let subject = String(decoding: bytes[position..<(position + Int(length))], as: UTF8.self)
                position += Int(length)
                guard let count = read(UInt32.self) else { return nil }
                subjects[subject] = Int(count)
            }
            guard subjects.values.reduce(0, +) == block.count else { return nil }
            block.subjects = subjects
        }
        return block
    }
}

// MARK: - Binary search

extension RandomAccessCollection where Index == Int {
    /// The position of the first element whose `key` is ≥ `value`, in a collection ascending by `key` (`endIndex`
    /// when none is).
    func firstPosition<Key: Comparable>(atOrAfter value: Key, by key: (Element) -> Key) -> Int {
        var low = self.startIndex
        var high = self.endIndex
        while low < high {
            let middle = (low + high) / 2
            if key(self[middle]) < value { low = middle + 1 } else { high = middle }
        }
        return low
    }
}
