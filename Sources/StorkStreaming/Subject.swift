// MARK: - Subjects

/// Rules for NATS subjects: case-sensitive tokens separated by `.`, no empty tokens, no whitespace.
///
/// A *subject* names where a message is published; a *pattern* (used by subscriptions, stream subjects and
/// consumer filters) may also hold the wildcards `*` (exactly one token) and `>` (one or more trailing tokens,
/// last only). Wildcards are whole tokens: `foo*.bar` is a literal token, as in NATS, but `foo.*bar` and `>`
/// anywhere but the end are invalid patterns.
public enum Subject {
    /// Whether `subject` is a valid pattern for a subscription (wildcards allowed).
    /// `name` as one subject token: the characters a token cannot hold (`.`, `*`, `>`, spaces, tabs) become `_`.
    public static func token(_ name: String) -> String {
        String(name.map { $0 == "." || $0 == "*" || $0 == ">" || $0 == " " || $0 == "\t" ? "_" : $0 })
    }

    public static func isValidPattern(_ subject: String) -> Bool {
        self.validate(subject.utf8, wildcardsAllowed: true)
    }

    /// Whether `subject` is a valid literal subject (no wildcard tokens).
    public static func isValidLiteral(_ subject: String) -> Bool {
        self.validate(subject.utf8, wildcardsAllowed: false)
    }

    /// Whether `subject` is acceptable to publish to. Like nats-server outside pedantic mode, wildcard tokens are
    /// accepted here (clients publish JetStream API requests such as `$JS.API.CONSUMER.CREATE.S.C.orders.>`);
    /// they are matched as ordinary tokens.
    public static func isValidForPublish(_ subject: String) -> Bool {
        self.validate(subject.utf8, wildcardsAllowed: true)
    }

    /// Whether the pattern contains a wildcard token.
    public static func hasWildcard(_ pattern: String) -> Bool {
        var tokenStart = true
        var previousWasWildcard = false
        for byte in pattern.utf8 {
            if byte == UInt8(ascii: ".") {
                if previousWasWildcard { return true }
                tokenStart = true
                previousWasWildcard = false
                continue
            }
            previousWasWildcard = tokenStart && (byte == UInt8(ascii: "*") || byte == UInt8(ascii: ">"))
            tokenStart = false
        }
        return previousWasWildcard
    }

    /// Whether the literal `subject` is matched by `pattern`.
    public static func matches(pattern: String, subject: String) -> Bool {
        var patternTokens = pattern.utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)[...]
        var subjectTokens = subject.utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)[...]
        while let patternToken = patternTokens.popFirst() {
            if patternToken.elementsEqual(">".utf8) { return !subjectTokens.isEmpty }
            guard let subjectToken = subjectTokens.popFirst() else { return false }
            if patternToken.elementsEqual("*".utf8) { continue }
            if !patternToken.elementsEqual(subjectToken) { return false }
        }
        return subjectTokens.isEmpty
    }

    /// Whether every subject matched by `inner` is also matched by `outer` (`orders.*` is within `orders.>`).
    public static func isSubset(_ inner: String, of outer: String) -> Bool {
        let innerTokens = inner.split(separator: ".", omittingEmptySubsequences: false)
        let outerTokens = outer.split(separator: ".", omittingEmptySubsequences: false)
        var index = 0
        while index < outerTokens.count {
            let outerToken = outerTokens[index]
            if outerToken == ">" { return index < innerTokens.count }
            guard index < innerTokens.count else { return false }
            let innerToken = innerTokens[index]
            if outerToken == "*" {
                if innerToken == ">" { return false }
            } else if outerToken != innerToken {
                return false
            }
            index += 1
        }
        return index == innerTokens.count
    }

    /// Whether some subject could be matched by both patterns.
    public static func overlaps(_ a: String, _ b: String) -> Bool {
        let aTokens = a.split(separator: ".", omittingEmptySubsequences: false)
        let bTokens = b.split(separator: ".", omittingEmptySubsequences: false)
        var index = 0
        while index < aTokens.count, index < bTokens.count {
            let x = aTokens[index]
            let y = bTokens[index]
            if x == ">" || y == ">" { return true }
            if x != "*", y != "*", x != y { return false }
            index += 1
        }
        return aTokens.count == bTokens.count
    }

    /// One pass: tokens must be non-empty and free of whitespace; a token that is exactly `*` or `>` is a wildcard
    /// (refused when not allowed), and nothing may follow a `>` token.
    private static func validate(_ bytes: String.UTF8View, wildcardsAllowed: Bool) -> Bool {
        var tokenLength = 0
        var tokenFirst: UInt8 = 0
        var sawFullWildcard = false
        func endToken() -> Bool {
            guard tokenLength > 0, !sawFullWildcard else { return false }
            if tokenLength == 1, tokenFirst == UInt8(ascii: "*") || tokenFirst == UInt8(ascii: ">") {
                guard wildcardsAllowed else { return false }
                sawFullWildcard = tokenFirst == UInt8(ascii: ">")
            }
            tokenLength = 0
            return true
        }
        for byte in bytes {
            switch byte {
            case UInt8(ascii: "."):
                guard endToken() else { return false }
            case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\r"), UInt8(ascii: "\n"), 0:
                return false
            default:
                if tokenLength == 0 { tokenFirst = byte }
                tokenLength += 1
            }
        }
        return endToken()
    }
}
