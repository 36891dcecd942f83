import Testing

@testable import StorkStreaming

@Suite("Subjects and the subject index")
struct SubjectTests {
    @Test(
        "pattern validity",
        arguments: [
            ("foo", true), ("foo.bar", true), ("foo.*", true), ("foo.>", true), (">", true), ("*", true),
            ("*.*.>", true), ("foo*.bar", true), ("$JS.API.>", true), ("_INBOX.abc.*", true),
            ("", false), (".", false), ("foo.", false), (".foo", false), ("foo..bar", false), ("foo bar", false),
            ("foo.>.bar", false), ("foo\t", false), (">.foo", false), ("foo.\r", false),
        ]
    )
    func patternValidity(subject: String, valid: Bool) {
        #expect(Subject.isValidPattern(subject) == valid, "\(subject)")
    }

    @Test("literals refuse wildcards")
    func literals() {
        #expect(Subject.isValidLiteral("orders.new"))
        #expect(!Subject.isValidLiteral("orders.*"))
        #expect(!Subject.isValidLiteral("orders.>"))
        #expect(Subject.isValidLiteral("orders.*x"))  // not a whole-token wildcard
    }

    @Test(
        "matching",
        arguments: [
            ("foo.bar", "foo.bar", true), ("foo.*", "foo.bar", true), ("foo.*", "foo.bar.baz", false),
            ("foo.>", "foo.bar", true), ("foo.>", "foo.bar.baz", true), ("foo.>", "foo", false),
            ("*.bar", "foo.bar", true), ("*.bar", "foo.baz", false), (">", "a.b.c", true), ("*", "a.b", false),
            ("foo.*.baz", "foo.x.baz", true), ("foo.*.baz", "foo.x.bar", false), ("a.b", "a", false),
        ]
    )
    func matching(pattern: String, subject: String, matches: Bool) {
        #expect(Subject.matches(pattern: pattern, subject: subject) == matches, "\(pattern) ~ \(subject)")
        var index = SubjectIndex<Int>()
        index.insert(1, pattern: pattern)
        #expect(!index.lookup(subject).isEmpty == matches, "index: \(pattern) ~ \(subject)")
    }

    @Test("subset and overlap of patterns")
    func subsetAndOverlap() {
        #expect(Subject.isSubset("orders.*", of: "orders.>"))
        #expect(Subject.isSubset("orders.new", of: "orders.*"))
        #expect(!Subject.isSubset("orders.>", of: "orders.*"))
        #expect(!Subject.isSubset("orders", of: "orders.>"))
        #expect(Subject.overlaps("orders.*", "*.new"))
        #expect(!Subject.overlaps("orders.*", "billing.*"))
        #expect(Subject.overlaps("a.>", "a.b.c"))
        #expect(!Subject.overlaps("a.b", "a.b.c"))
    }

    @Test("queue groups are reported per group; removal prunes and empties the cache")
    func queueGroups() {
        var index = SubjectIndex<String>()
        index.insert("plain", pattern: "orders.>")
        index.insert("w1", pattern: "orders.new", queue: "workers")
        index.insert("w2", pattern: "orders.*", queue: "workers")
        index.insert("a1", pattern: "orders.new", queue: "audit")
        let match = index.lookup("orders.new")
        #expect(match.plain == ["plain"])
        #expect(match.groups.map(\.queue) == ["audit", "workers"])
        #expect(Set(match.groups[1].members) == ["w1", "w2"])
        #expect(index.count == 4)

        let removed1 = index.remove("w1", pattern: "orders.new", queue: "workers")
        #expect(removed1)
        let removed2 = index.remove("w1", pattern: "orders.new", queue: "workers")
        #expect(!removed2)
        #expect(index.lookup("orders.new").groups[1].members == ["w2"])
        let removed3 = index.remove("plain", pattern: "orders.>")
        #expect(removed3)
        let removed4 = index.remove("w2", pattern: "orders.*", queue: "workers")
        #expect(removed4)
        let removed5 = index.remove("a1", pattern: "orders.new", queue: "audit")
        #expect(removed5)
        #expect(index.lookup("orders.new").isEmpty)
        #expect(index.count == 0)
    }

    @Test("the index agrees with direct matching on random patterns and subjects")
    func randomAgreement() {
        var random = SplitMix(seed: 42)
        let tokens = ["a", "b", "c", "*", ">"]
        var index = SubjectIndex<Int>()
        var patterns: [Int: String] = [:]
        for id in 0..<300 {
            var parts: [String] = []
            for position in 0..<(1 + random.next(3)) {
                var token = tokens[random.next(tokens.count)]
                if token == ">", position < 2, random.next(2) == 0 { token = "a" }
                parts.append(token)
                if token == ">" { break }
            }
            let pattern = parts.joined(separator: ".")
            guard Subject.isValidPattern(pattern) else { continue }
            patterns[id] = pattern
            index.insert(id, pattern: pattern)
        }
        for id in patterns.keys.sorted() where id % 3 == 0 {
            let removed6 = index.remove(id, pattern: patterns[id]!)
            #expect(removed6)
            patterns[id] = nil
        }
        for _ in 0..<500 {
            let subject = (0..<(1 + random.next(4))).map { _ in ["a", "b", "c"][random.next(3)] }
                .joined(separator: ".")
            let expected = Set(patterns.filter { Subject.matches(pattern: $0.value, subject: subject) }.keys)
            #expect(Set(index.lookup(subject).plain) == expected, "\(subject)")
        }
    }
}

/// A small deterministic generator for tests.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { self.state = seed }
    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func next(_ bound: Int) -> Int { Int(self.next() % UInt64(bound)) }
}
