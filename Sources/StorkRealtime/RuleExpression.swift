import StorkCore

// MARK: - RuleExpression
//
// The condition language of permission rules: small, total and side-effect free, so that a rules file can be
// checked when it is loaded and evaluated on every message without surprises.
//
//     user.id == $userId
//     'admin' in user.roles || user.data.plan == 'pro'
//     startsWith(subject, 'public.') && data.text != null && !(data.size > 1000)
//
// Values are JSON values. Paths read `user` (id, roles, data), `data` (the message's JSON body, when it is JSON),
// `subject`, `action`, `now` (milliseconds since 1970) and `$name` variables bound by the rule's subject pattern. A
// path that leads nowhere is `null`. Operators: `==` `!=` `<` `<=` `>` `>=` (numbers or strings), `&&` `||` `!`,
// `in` (an element of an array, a substring of a string, a key of an object), parentheses. Functions:
// `startsWith(a, b)`, `endsWith(a, b)`, `lower(a)`, `upper(a)`, `count(a)`. A condition that does not come out
// `true` denies.

/// A parsed condition.
public indirect enum RuleExpression: Sendable, Hashable {
    case literal(JSONValue)
    /// A path from a root (`user`, `data`, `subject`, `action`, `now`, or `$name`), e.g. `user.data.plan`.
    case path(root: String, keys: [String])
    case not(RuleExpression)
    case binary(BinaryOperator, RuleExpression, RuleExpression)
    case call(Function, [RuleExpression])

    public enum BinaryOperator: String, Sendable, Hashable {
        case and = "&&", or = "||"
        case equal = "==", notEqual = "!="
        case less = "<", lessOrEqual = "<=", greater = ">", greaterOrEqual = ">="
        case `in`
    }

    public enum Function: String, Sendable, Hashable, CaseIterable {
        case startsWith, endsWith, lower, upper, count

        var arity: Int {
            switch self {
            case .startsWith, .endsWith: 2
            case .lower, .upper, .count: 1
            }
        }
    }

    /// The roots a path may start with, besides `$variables`.
    public static let roots: Set<String> = ["user", "data", "subject", "action", "now"]

    /// Parses `text`; the error names the position and what was expected.
    public static func parse(_ text: String) throws -> RuleExpression {
        var parser = RuleExpressionParser(text)
        return try parser.parseAll()
    }

    /// The `$variables` the expression reads.
    public var variables: Set<String> {
        switch self {
        case .literal: []
        case .path(let root, _): root.hasPrefix("$") ? [String(root.dropFirst())] : []
        case .not(let inner): inner.variables
        case .binary(_, let lhs, let rhs): lhs.variables.union(rhs.variables)
        case .call(_, let arguments): arguments.reduce(into: []) { $0.formUnion($1.variables) }
        }
    }

    // MARK: Evaluation

    /// Evaluates the expression; `true` only when it yields the boolean `true`.
    public func allows(_ context: RuleContext) -> Bool {
        self.evaluate(context) == .bool(true)
    }

    public func evaluate(_ context: RuleContext) -> JSONValue {
        switch self {
        case .literal(let value):
            return value
        case .path(let root, let keys):
            var value = context.root(root)
            for key in keys {
                switch value {
                case .object(let fields): value = fields[key] ?? .null
                case .array(let items): value = Int(key).flatMap { items.indices.contains($0) ? items[$0] : nil } ?? .null
                default: value = .null
                }
            }
            return value
        case .not(let inner):
            return .bool(inner.evaluate(context) != .bool(true))
        case .binary(let op, let lhs, let rhs):
            switch op {
            case .and:
                return .bool(lhs.evaluate(context) == .bool(true) && rhs.evaluate(context) == .bool(true))
            case .or:
                return .bool(lhs.evaluate(context) == .bool(true) || rhs.evaluate(context) == .bool(true))
            default:
                return .bool(Self.compare(op, lhs.evaluate(context), rhs.evaluate(context)))
            }
        case .call(let function, let arguments):
            let values = arguments.map { $0.evaluate(context) }
            switch function {
            case .startsWith:
                guard case .string(let a) = values[0], case .string(let b) = values[1] else { return .bool(false) }
                return .bool(a.hasPrefix(b))
            case .endsWith:
                guard case .string(let a) = values[0], case .string(let b) = values[1] else { return .bool(false) }
                return .bool(a.hasSuffix(b))
            case .lower:
                guard case .string(let a) = values[0] else { return .null }
                return .string(a.lowercased())
            case .upper:
                guard case .string(let a) = values[0] else { return .null }
                return .string(a.uppercased())
            case .count:
                switch values[0] {
                case .string(let a): return .number(Double(a.count))
                case .array(let a): return .number(Double(a.count))
                case .object(let a): return .number(Double(a.count))
                default: return .null
                }
            }
        }
    }

    private static func compare(_ op: BinaryOperator, _ lhs: JSONValue, _ rhs: JSONValue) -> Bool {
        switch op {
        case .equal: return lhs == rhs
        case .notEqual: return lhs != rhs
        case .in:
            switch rhs {
            case .array(let items): return items.contains(lhs)
            case .string(let text):
                guard case .string(let needle) = lhs else { return false }
                return text.contains(needle)
            case .object(let fields):
                guard case .string(let key) = lhs else { return false }
                return fields[key] != nil
            default: return false
            }
        case .less, .lessOrEqual, .greater, .greaterOrEqual:
            let order: Int
            switch (lhs, rhs) {
            case (.number(let a), .number(let b)): order = a < b ? -1 : (a > b ? 1 : 0)
            case (.string(let a), .string(let b)): order = a < b ? -1 : (a > b ? 1 : 0)
            default: return false
            }
            switch op {
            case .less: return order < 0
            case .lessOrEqual: return order <= 0
            case .greater: return order > 0
            default: return order >= 0
            }
        case .and, .or:
            return false
        }
    }
}

/// What a condition can read.
public struct RuleContext: Sendable {
    public var user: JSONValue
    public var data: JSONValue
    public var subject: String
    public var action: String
    public var now: Double
    public var variables: [String: String]

    public init(
        user: JSONValue,
        data: JSONValue = .null,
        subject: String,
        action: String,
        now: Double = 0,
        variables: [String: String] = [:]
    ) {
        self.user = user
        self.data = data
        self.subject = subject
        self.action = action
        self.now = now
        self.variables = variables
    }

    func root(_ name: String) -> JSONValue {
        if name.hasPrefix("$") { return self.variables[String(name.dropFirst())].map(JSONValue.string) ?? .null }
        switch name {
        case "user": return self.user
        case "data": return self.data
        case "subject": return .string(self.subject)
        case "action": return .string(self.action)
        case "now": return .number(self.now)
        default: return .null
        }
    }
}

// MARK: - Parser

/// Recursive descent over the characters of one condition: `or` < `and` < comparison < unary < primary.
struct RuleExpressionParser {
    private let characters: [Character]
    private var position = 0

    init(_ text: String) {
        self.characters = Array(text)
    }

    mutating func parseAll() throws -> RuleExpression {
        let expression = try self.parseOr()
        self.skipSpaces()
        guard self.position == self.characters.count else { throw self.error("unexpected '\(self.characters[self.position])'") }
        return expression
    }

    private func error(_ message: String) -> StorkError {
        StorkError(.invalidInput, "condition, at character \(self.position + 1): \(message)")
    }

    private mutating func skipSpaces() {
        while self.position < self.characters.count, self.characters[self.position].isWhitespace { self.position += 1 }
    }

    /// Consumes `token` (after spaces) if it comes next.
    private mutating func take(_ token: String) -> Bool {
        self.skipSpaces()
        let tokenCharacters = Array(token)
        guard self.position + tokenCharacters.count <= self.characters.count,
            Array(self.characters[self.position..<self.position + tokenCharacters.count]) == tokenCharacters
        else { return false }
        // A word operator must not be the start of a longer name (`in` vs `index`).
        if let last = tokenCharacters.last, last.isLetter, self.position + tokenCharacters.count < self.characters.count {
            let next = self.characters[self.position + tokenCharacters.count]
            if next.isLetter || next.isNumber || next == "_" { return false }
        }
        self.position += tokenCharacters.count
        return true
    }

    private mutating func parseOr() throws -> RuleExpression {
        var expression = try self.parseAnd()
        while self.take("||") { expression = .binary(.or, expression, try self.parseAnd()) }
        return expression
    }

    private mutating func parseAnd() throws -> RuleExpression {
        var expression = try self.parseComparison()
        while self.take("&&") { expression = .binary(.and, expression, try self.parseComparison()) }
        return expression
    }

    private mutating func parseComparison() throws -> RuleExpression {
        let lhs = try self.parseUnary()
        for op in [RuleExpression.BinaryOperator.equal, .notEqual, .lessOrEqual, .greaterOrEqual, .less, .greater, .in]
        where self.take(op.rawValue) {
            return .binary(op, lhs, try self.parseUnary())
        }
        return lhs
    }

    private mutating func parseUnary() throws -> RuleExpression {
        if self.take("!") { return .not(try self.parseUnary()) }
        return try self.parsePrimary()
    }

    private mutating func parsePrimary() throws -> RuleExpression {
        self.skipSpaces()
        guard self.position < self.characters.count else { throw self.error("expected a value, found the end") }
        let character = self.characters[self.position]
        if character == "(" {
            self.position += 1
            let inner = try self.parseOr()
            guard self.take(")") else { throw self.error("expected ')'") }
            return inner
        }
        if character == "'" || character == "\"" { return .literal(.string(try self.parseString(quote: character))) }
        if character.isNumber || (character == "-" && self.peekIsDigit(1)) { return .literal(.number(try self.parseNumber())) }
        if character == "$" || character.isLetter || character == "_" {
            let name = self.parseName()
            switch name {
            case "true": return .literal(.bool(true))
            case "false": return .literal(.bool(false))
            case "null": return .literal(.null)
            default: break
            }
            if let function = RuleExpression.Function(rawValue: name), self.take("(") {
                var arguments: [RuleExpression] = []
                if !self.take(")") {
                    repeat { arguments.append(try self.parseOr()) } while self.take(",")
                    guard self.take(")") else { throw self.error("expected ')' after the arguments of \(name)") }
                }
                guard arguments.count == function.arity else {
                    throw self.error("\(name) takes \(function.arity) argument(s), not \(arguments.count)")
                }
                return .call(function, arguments)
            }
            guard name.hasPrefix("$") ? name.count > 1 : RuleExpression.roots.contains(name) else {
                throw self.error("unknown name '\(name)' (use user, data, subject, action, now or a $variable)")
            }
            var keys: [String] = []
            while self.position < self.characters.count, self.characters[self.position] == "." {
                self.position += 1
                let key = self.parseName()
                guard !key.isEmpty, !key.hasPrefix("$") else { throw self.error("expected a field name after '.'") }
                keys.append(key)
            }
            return .path(root: name, keys: keys)
        }
        throw self.error("unexpected '\(character)'")
    }

    private func peekIsDigit(_ offset: Int) -> Bool {
        self.position + offset < self.characters.count && self.characters[self.position + offset].isNumber
    }

    private mutating func parseName() -> String {
        var name = ""
        if self.position < self.characters.count, self.characters[self.position] == "$" {
            name.append("$")
            self.position += 1
        }
        while self.position < self.characters.count {
            let character = self.characters[self.position]
            guard character.isLetter || character.isNumber || character == "_" || character == "-" else { break }
            name.append(character)
            self.position += 1
        }
        return name
    }

    private mutating func parseString(quote: Character) throws -> String {
        self.position += 1
        var value = ""
        while self.position < self.characters.count {
            let character = self.characters[self.position]
            self.position += 1
            if character == quote { return value }
            if character == "\\", self.position < self.characters.count {
                value.append(self.characters[self.position])
                self.position += 1
            } else {
                value.append(character)
            }
        }
        throw self.error("unterminated string")
    }

    private mutating func parseNumber() throws -> Double {
        let start = self.position
        if self.characters[self.position] == "-" { self.position += 1 }
        while self.position < self.characters.count, self.characters[self.position].isNumber || self.characters[self.position] == "." {
            self.position += 1
        }
        guard let value = Double(String(self.characters[start..<self.position])) else { throw self.error("bad number") }
        return value
    }
}
