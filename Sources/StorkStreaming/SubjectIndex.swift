// MARK: - SubjectIndex

/// Subscriptions by subject pattern, matched against published subjects: a token trie with `*` and `>` branches and
/// a cache of recent matches.
///
/// A value type used under its owner's lock. Values are compared with `==` to remove them, so a subscription
/// should be a reference with identity equality or carry a unique id.
public struct SubjectIndex<Value: Hashable & Sendable>: Sendable {
    /// What a subject matched: every plain subscription, and the members of each queue group (one of them should
    /// receive the message).
    public struct Match: Sendable {
        public var plain: [Value] = []
        public var groups: [(queue: String, members: [Value])] = []

        @inlinable public var isEmpty: Bool { self.plain.isEmpty && self.groups.isEmpty }

        @inlinable public init() {}
    }

    @usableFromInline
    struct Node: Sendable {
        @usableFromInline var children: [Substring: Int] = [:]
        @usableFromInline var star: Int?
        @usableFromInline var full: Int?
        @usableFromInline var plain: [Value] = []
        @usableFromInline var queues: [String: [Value]] = [:]
        @usableFromInline var parent: Int = -1
        @usableFromInline var token: Substring = ""

        @inlinable init() {}

        @inlinable
        var isPrunable: Bool {
            self.children.isEmpty && self.star == nil && self.full == nil && self.plain.isEmpty && self.queues.isEmpty
        }
    }

    @usableFromInline var nodes: [Node] = [Node()]
    @usableFromInline var freeNodes: [Int] = []
    @usableFromInline var cache: [String: Match] = [:]
    @usableFromInline var transientCache: [String: Match] = [:]
    /// Matches kept at most; the cache is emptied when it is full and whenever a subscription changes.
    public var cacheLimit = 4096
    @usableFromInline var storedCount = 0
    /// How many subscriptions the index holds.
    public var count: Int { self.storedCount }

    public init() {}

    // MARK: Changing

    /// Adds a subscription for `pattern` (already validated), in `queue` when given.
    @inlinable
    public mutating func insert(_ value: Value, pattern: String, queue: String? = nil) {
        var current = 0
        for token in Self.tokens(pattern) {
            current = self.child(of: current, token: token)
        }
        if let queue {
            self.nodes[current].queues[queue, default: []].append(value)
        } else {
            self.nodes[current].plain.append(value)
        }
        self.storedCount += 1
        self.cache.removeAll(keepingCapacity: true)
        self.transientCache.removeAll(keepingCapacity: true)
    }

    /// Removes one subscription added with the same pattern and queue. Returns whether it was there.
    @discardableResult
    @inlinable
    public mutating func remove(_ value: Value, pattern: String, queue: String? = nil) -> Bool {
        var current = 0
        for token in Self.tokens(pattern) {
            guard let next = self.existingChild(of: current, token: token) else { return false }
            current = next
        }
        if let queue {
            guard var members = self.nodes[current].queues[queue], let index = members.firstIndex(of: value) else {
                return false
            }
            members.remove(at: index)
            self.nodes[current].queues[queue] = members.isEmpty ? nil : members
        } else {
            guard let index = self.nodes[current].plain.firstIndex(of: value) else { return false }
            self.nodes[current].plain.remove(at: index)
        }
        self.storedCount -= 1
        self.cache.removeAll(keepingCapacity: true)
        self.transientCache.removeAll(keepingCapacity: true)
        self.prune(from: current)
        return true
    }

    // MARK: Matching

    /// The subscriptions whose patterns match the literal `subject`.
    @inlinable
    public mutating func match(_ subject: String) -> Match {
        // Ack subjects are unique per message: caching them costs a hash and an insert for nothing. Inboxes often
        // are too, but a pull request's inbox repeats for its whole batch: they get a small cache of their own, so
        // that neither evicts the subjects that repeat for long.
        if subject.utf8.first == UInt8(ascii: "$"), subject.hasPrefix("$JS.ACK.") {
            return self.lookup(subject)
        }
        if subject.utf8.first == UInt8(ascii: "_"), subject.hasPrefix("_INBOX.") {
            if let cached = self.transientCache[subject] { return cached }
            let result = self.lookup(subject)
            if self.transientCache.count >= 64 { self.transientCache.removeAll(keepingCapacity: true) }
            self.transientCache[subject] = result
            return result
        }
        if let cached = self.cache[subject] { return cached }
        let result = self.lookup(subject)
        if self.cache.count >= self.cacheLimit { self.cache.removeAll(keepingCapacity: true) }
        self.cache[subject] = result
        return result
    }

    /// The same as ``match(_:)`` without touching the cache (for readers that hold no write access).
    @inlinable
    public func lookup(_ subject: String) -> Match {
        var plain: [Value] = []
        var queues: [String: [Value]] = [:]
        self.collect(node: 0, subject: subject, from: subject.utf8.startIndex, plain: &plain, queues: &queues)
        var result = Match()
        result.plain = plain
        if !queues.isEmpty {
            result.groups = queues.sorted { $0.key < $1.key }.map { (queue: $0.key, members: $0.value) }
        }
        return result
    }

    /// Whether any subscription matches `subject`.
    @inlinable
    public func hasInterest(in subject: String) -> Bool {
        !self.lookup(subject).isEmpty
    }

    /// Walks the trie along the tokens of `subject` from `start` (nil: no tokens left), finding each token as it
    /// goes: no array of tokens per message.
    @inlinable
    func collect(
        node index: Int,
        subject: String,
        from start: String.Index?,
        plain: inout [Value],
        queues: inout [String: [Value]]
    ) {
        guard let start else {
            Self.take(self.nodes[index], plain: &plain, queues: &queues)
            return
        }
        if let full = self.nodes[index].full {
            Self.take(self.nodes[full], plain: &plain, queues: &queues)
        }
        let utf8 = subject.utf8
        let end = utf8[start...].firstIndex(of: UInt8(ascii: ".")) ?? utf8.endIndex
        let rest = end == utf8.endIndex ? nil : utf8.index(after: end)
        if let star = self.nodes[index].star {
            self.collect(node: star, subject: subject, from: rest, plain: &plain, queues: &queues)
        }
        if let literal = self.nodes[index].children[Substring(utf8[start..<end])] {
            self.collect(node: literal, subject: subject, from: rest, plain: &plain, queues: &queues)
        }
    }

    @inlinable
    static func take(_ node: Node, plain: inout [Value], queues: inout [String: [Value]]) {
        plain.append(contentsOf: node.plain)
        for (queue, members) in node.queues {
            queues[queue, default: []].append(contentsOf: members)
        }
    }

    /// The dot-separated tokens of a subject, split on its UTF-8 bytes (splitting a `String` by `Character` costs
    /// grapheme breaking on every byte, and matching runs once per published message).
    @inlinable
    static func tokens(_ subject: String) -> [Substring] {
        subject.utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false).map { Substring($0) }
    }

    // MARK: Trie upkeep

    @inlinable
    mutating func child(of parent: Int, token: Substring) -> Int {
        if let existing = self.existingChild(of: parent, token: token) { return existing }
        var node = Node()
        node.parent = parent
        node.token = token
        let index: Int
        if let free = self.freeNodes.popLast() {
            index = free
            self.nodes[index] = node
        } else {
            index = self.nodes.count
            self.nodes.append(node)
        }
        switch token {
        case "*": self.nodes[parent].star = index
        case ">": self.nodes[parent].full = index
        default: self.nodes[parent].children[token] = index
        }
        return index
    }

    @inlinable
    func existingChild(of parent: Int, token: Substring) -> Int? {
        switch token {
        case "*": self.nodes[parent].star
        case ">": self.nodes[parent].full
        default: self.nodes[parent].children[token]
        }
    }

    @inlinable
    mutating func prune(from start: Int) {
        var current = start
        while current != 0, self.nodes[current].isPrunable {
            let parent = self.nodes[current].parent
            switch self.nodes[current].token {
            case "*": self.nodes[parent].star = nil
            case ">": self.nodes[parent].full = nil
            default: self.nodes[parent].children[self.nodes[current].token] = nil
            }
            self.nodes[current] = Node()
            self.freeNodes.append(current)
            current = parent
        }
    }
}
