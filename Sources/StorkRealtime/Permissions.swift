import StorkCore

// MARK: - Permission rules
//
// A rules file is a list of subject patterns, each with conditions per action:
//
//     rules:
//       - subject: "users.$userId.>"          # a user's own channels
//         publish: "user.id == $userId"
//         subscribe: "user.id == $userId"
//       - subject: "public.>"
//         subscribe: true
//         publish: "'admin' in user.roles"
//
// Patterns use the NATS subject syntax (`*` one token, `>` one or more trailing tokens) plus `$name`, one token bound
// to a variable the conditions can read. For an action on a subject, the most specific pattern that matches the
// subject and has a condition for that action decides (token by token, a literal beats a `$variable`, which beats
// `*`, which beats `>`; then the longer pattern); with none, the action is denied.

/// What a client asks to do.
public enum PermissionAction: String, Sendable, Hashable, CaseIterable, Codable {
    case publish, subscribe, request, respond, presence, runner
}

/// Who asks, as authentication established it.
public struct AuthenticatedUser: Sendable, Hashable, Codable {
    public var id: String
    public var roles: [String]
    /// Server-side data about the user (from the users file, the JWT's claims, the auth webhook): conditions read it
    /// as `user.data`; clients never see it.
    public var data: JSONValue

    public init(id: String, roles: [String] = [], data: JSONValue = .object([:])) {
        self.id = id
        self.roles = roles
        self.data = data
    }

    /// The user as conditions see it: `{id, roles, data}`.
    public var ruleValue: JSONValue {
        .object(["id": .string(self.id), "roles": .array(self.roles.map(JSONValue.string)), "data": self.data])
    }
}

/// The outcome of a check, with the rule that decided (for logs and error messages).
public struct PermissionDecision: Sendable, Hashable {
    public var allowed: Bool
    /// The pattern of the deciding rule, nil when no rule covers the action (default deny).
    public var pattern: String?

    public init(allowed: Bool, pattern: String?) {
        self.allowed = allowed
        self.pattern = pattern
    }
}

/// A subject pattern with variables.
public struct PermissionPattern: Sendable, Hashable, CustomStringConvertible {
    public enum Token: Sendable, Hashable {
        case literal(String)
        case variable(String)
        case single
        case rest

        var rank: Int {
            switch self {
            case .literal: 3
            case .variable: 2
            case .single: 1
            case .rest: 0
            }
        }
    }

    public let text: String
    public let tokens: [Token]

    public init(_ text: String) throws {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard !text.isEmpty, !parts.contains(where: \.isEmpty) else {
            throw StorkError(.invalidInput, "subject pattern '\(text)': empty token")
        }
        var tokens: [Token] = []
        for (index, part) in parts.enumerated() {
            switch part {
            case ">":
                guard index == parts.count - 1 else {
                    throw StorkError(.invalidInput, "subject pattern '\(text)': '>' must be the last token")
                }
                tokens.append(.rest)
            case "*":
                tokens.append(.single)
            default:
                if part.hasPrefix("$") {
                    let name = String(part.dropFirst())
                    guard !name.isEmpty, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" }) else {
                        throw StorkError(.invalidInput, "subject pattern '\(text)': bad variable '\(part)'")
                    }
                    guard !tokens.contains(.variable(name)) else {
                        throw StorkError(.invalidInput, "subject pattern '\(text)': variable '\(part)' twice")
                    }
                    tokens.append(.variable(name))
                } else {
                    guard !part.contains(where: { $0 == "*" || $0 == ">" || $0.isWhitespace }) else {
                        throw StorkError(.invalidInput, "subject pattern '\(text)': bad token '\(part)'")
                    }
                    tokens.append(.literal(part))
                }
            }
        }
        self.text = text
        self.tokens = tokens
    }

    public var description: String { self.text }

    public var variableNames: Set<String> {
        Set(self.tokens.compactMap { if case .variable(let name) = $0 { name } else { nil } })
    }

    /// The variables bound when `subject` matches, nil when it does not.
    public func match(_ subject: String) -> [String: String]? {
        let parts = subject.split(separator: ".", omittingEmptySubsequences: false)
        var variables: [String: String] = [:]
        for (index, token) in self.tokens.enumerated() {
            if case .rest = token { return parts.count > index ? variables : nil }
            guard index < parts.count, !parts[index].isEmpty else { return nil }
            switch token {
            case .literal(let literal): guard parts[index] == literal else { return nil }
            case .variable(let name): variables[name] = String(parts[index])
            case .single, .rest: break
            }
        }
        return parts.count == self.tokens.count ? variables : nil
    }

    /// Whether this pattern is more specific than `other`.
    public func isMoreSpecific(than other: PermissionPattern) -> Bool {
        for (mine, theirs) in zip(self.tokens, other.tokens) where mine.rank != theirs.rank {
            return mine.rank > theirs.rank
        }
        if self.tokens.count != other.tokens.count { return self.tokens.count > other.tokens.count }
        return false
    }
}

/// One entry of a rules file.
public struct PermissionRule: Sendable, Hashable {
    public var pattern: PermissionPattern
    public var conditions: [PermissionAction: RuleExpression]

    public init(pattern: PermissionPattern, conditions: [PermissionAction: RuleExpression]) throws {
        for (action, condition) in conditions {
            let unknown = condition.variables.subtracting(pattern.variableNames)
            guard unknown.isEmpty else {
                throw StorkError(
                    .invalidInput,
                    "rule '\(pattern)', \(action.rawValue): $\(unknown.sorted().joined(separator: ", $")) is not in the subject pattern"
                )
            }
        }
        self.pattern = pattern
        self.conditions = conditions
    }
}

/// A set of rules and the decision for each request.
public struct PermissionRules: Sendable, Hashable {
    public private(set) var rules: [PermissionRule]

    public init(_ rules: [PermissionRule]) {
        self.rules = rules
    }

    /// Reads the `rules:` document (decoded from YAML or JSON): a list of objects with `subject` and a condition
    /// (string, or `true`/`false`) per action. Errors name the rule and the key.
    public init(document: JSONValue) throws {
        guard case .object(let top) = document, case .array(let entries)? = top["rules"] else {
            throw StorkError(.invalidInput, "permissions: expected a 'rules:' list")
        }
        var rules: [PermissionRule] = []
        for (index, entry) in entries.enumerated() {
            let place = "permissions: rule \(index + 1)"
            guard case .object(let fields) = entry else { throw StorkError(.invalidInput, "\(place): expected an object") }
            guard case .string(let subject)? = fields["subject"] else {
                throw StorkError(.invalidInput, "\(place): 'subject' is required")
            }
            let pattern: PermissionPattern
            do {
                pattern = try PermissionPattern(subject)
            } catch let error as StorkError {
                throw StorkError(.invalidInput, "\(place): \(error.message)")
            }
            var conditions: [PermissionAction: RuleExpression] = [:]
            for (key, value) in fields where key != "subject" {
                guard let action = PermissionAction(rawValue: key) else {
                    let known = PermissionAction.allCases.map(\.rawValue).joined(separator: ", ")
                    throw StorkError(.invalidInput, "\(place) ('\(subject)'): unknown action '\(key)' (known: \(known))")
                }
                switch value {
                case .bool(let allowed):
                    conditions[action] = .literal(.bool(allowed))
                case .string(let text):
                    do {
                        conditions[action] = try RuleExpression.parse(text)
                    } catch let error as StorkError {
                        throw StorkError(.invalidInput, "\(place) ('\(subject)'), \(key): \(error.message)")
                    }
                default:
                    throw StorkError(.invalidInput, "\(place) ('\(subject)'), \(key): expected a condition string or true/false")
                }
            }
            do {
                rules.append(try PermissionRule(pattern: pattern, conditions: conditions))
            } catch let error as StorkError {
                throw StorkError(.invalidInput, "\(place): \(error.message)")
            }
        }
        self.rules = rules
    }

    /// Whether `user` may do `action` on `subject`, with `data` the message's JSON body (or null).
    public func decide(
        _ action: PermissionAction,
        subject: String,
        user: AuthenticatedUser,
        data: JSONValue = .null,
        now: Double = 0
    ) -> PermissionDecision {
        var best: (rule: PermissionRule, condition: RuleExpression, variables: [String: String])?
        for rule in self.rules {
            guard let condition = rule.conditions[action], let variables = rule.pattern.match(subject) else { continue }
            if let current = best, !rule.pattern.isMoreSpecific(than: current.rule.pattern) { continue }
            best = (rule, condition, variables)
        }
        guard let best else { return PermissionDecision(allowed: false, pattern: nil) }
        let context = RuleContext(
            user: user.ruleValue,
            data: data,
            subject: subject,
            action: action.rawValue,
            now: now,
            variables: best.variables
        )
        return PermissionDecision(allowed: best.condition.allows(context), pattern: best.rule.pattern.text)
    }
}
