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

        public var isEmpty: Bool { self.plain.isEmpty && self.groups.isEmpty }

        public init() {}
    }

    private struct Node: Sendable {
        var children: [Substring: Int] = [:]
        var star: Int?
        var full: Int?
        var plain: [Value] = []
        var queues: [String: [Value]] = [:]
        var parent: Int = -1
        var token: Substring = ""

        var isPrunable: Bool {
            self.children.isEmpty && self.star == nil && self.full == nil && self.plain.isEmpty && self.queues.isEmpty
        }
    }

    private var nodes: [Node] = [Node()]
    private var freeNodes: [Int] = []
    private var cache: [String: Match] = [:]
    /// Matches kept at most; the cache is emptied when it is full and whenever a subscription changes.
    public var cacheLimit = 4096
    /// How many subscriptions the index holds.
    public private(set) var count = 0

    public init() {}

    // MARK: Changing

    /// Adds a subscription for `pattern` (already validated), in `queue` when given.
    public mutating func insert(_ value: Value, pattern: String, queue: String? = nil) {
        var current = 0
        for token in pattern.split(separator: ".", omittingEmptySubsequences: false) {
            current = self.child(of: current, token: token)
        }
        if let queue {
            self.nodes[current].queues[queue, default: []].append(value)
        } else {
            self.nodes[current].plain.append(value)
        }
        self.count += 1
        self.cache.removeAll(keepingCapacity: true)
    }

    /// Removes one subscription added with the same pattern and queue. Returns whether it was there.
    @discardableResult
    public mutating func remove(_ value: Value, pattern: String, queue: String? = nil) -> Bool {
        var current = 0
        for token in pattern.split(separator: ".", omittingEmptySubsequences: false) {
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
        self.count -= 1
        self.cache.removeAll(keepingCapacity: true)
        self.prune(from: current)
        return true
    }

    // MARK: Matching

    /// The subscriptions whose patterns match the literal `subject`.
    public mutating func match(_ subject: String) -> Match {
        if let cached = self.cache[subject] { return cached }
        let result = self.lookup(subject)
        if self.cache.count >= self.cacheLimit { self.cache.removeAll(keepingCapacity: true) }
        self.cache[subject] = result
        return result
    }

    /// The same as ``match(_:)`` without touching the cache (for readers that hold no write access).
    public func lookup(_ subject: String) -> Match {
        let tokens = subject.split(separator: ".", omittingEmptySubsequences: false)
        var plain: [Value] = []
        var queues: [String: [Value]] = [:]
        self.collect(node: 0, tokens: tokens[...], plain: &plain, queues: &queues)
        var result = Match()
        result.plain = plain
        if !queues.isEmpty {
            result.groups = queues.sorted { $0.key < $1.key }.map { (queue: $0.key, members: $0.value) }
        }
        return result
    }

    /// Whether any subscription matches `subject`.
    public func hasInterest(in subject: String) -> Bool {
        !self.lookup(subject).isEmpty
    }

    private func collect(
        node index: Int,
        tokens: ArraySlice<Substring>,
        plain: inout [Value],
        queues: inout [String: [Value]]
    ) {
        let node = self.nodes[index]
        guard let token = tokens.first else {
            Self.take(node, plain: &plain, queues: &queues)
            return
        }
        if let full = node.full {
            Self.take(self.nodes[full], plain: &plain, queues: &queues)
        }
        let rest = tokens.dropFirst()
        if let star = node.star {
            self.collect(node: star, tokens: rest, plain: &plain, queues: &queues)
        }
        if let literal = node.children[token] {
            self.collect(node: literal, tokens: rest, plain: &plain, queues: &queues)
        }
    }

    private static func take(_ node: Node, plain: inout [Value], queues: inout [String: [Value]]) {
        plain.append(contentsOf: node.plain)
        for (queue, members) in node.queues {
            queues[queue, default: []].append(contentsOf: members)
        }
    }

    // MARK: Trie upkeep

    private mutating func child(of parent: Int, token: Substring) -> Int {
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

    private func existingChild(of parent: Int, token: Substring) -> Int? {
        switch token {
        case "*": self.nodes[parent].star
        case ">": self.nodes[parent].full
        default: self.nodes[parent].children[token]
        }
    }

    private mutating func prune(from start: Int) {
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
