import Foundation
import StorkCore
import Testing

@testable import StorkRealtime

private let rulesDocument: JSONValue = .object([
    "rules": .array([
        .object([
            "subject": .string("users.$userId.>"),
            "publish": .string("user.id == $userId"),
            "subscribe": .string("user.id == $userId"),
            "request": .string("user.id == $userId"),
            "runner": .string("user.id == $userId"),
        ]),
        // Anyone may drop a message in a user's inbox, only its owner reads it.
        .object([
            "subject": .string("users.$userId.inbox"),
            "publish": .bool(true),
        ]),
        .object([
            "subject": .string("public.>"),
            "subscribe": .bool(true),
            "publish": .string("'admin' in user.roles"),
        ]),
        .object([
            "subject": .string("rooms.$room.messages"),
            "publish": .string("$room in user.data.rooms && data.text != null && count(data.text) <= 20"),
            "subscribe": .string("$room in user.data.rooms"),
        ]),
        .object([
            "subject": .string("admin.*"),
            "subscribe": .string("'admin' in user.roles"),
        ]),
        .object([
            "subject": .string("admin.audit"),
            "subscribe": .bool(false),
        ]),
    ]),
])

private let alice = AuthenticatedUser(id: "alice", roles: ["member"], data: .object(["rooms": .array([.string("r1")])]))
private let bob = AuthenticatedUser(id: "bob", roles: ["admin"], data: .object(["rooms": .array([.string("r2")])]))

@Suite("Permission rules")
struct PermissionTests {
    let rules: PermissionRules

    init() throws {
        self.rules = try PermissionRules(document: rulesDocument)
    }

    /// The matrix: a user uses their own channels and never another user's; the most specific rule decides; what no
    /// rule covers is denied.
    @Test(
        "who may do what",
        arguments: [
            // own channels
            ("alice", PermissionAction.publish, "users.alice.events", true),
            ("alice", .subscribe, "users.alice.events", true),
            ("alice", .subscribe, "users.alice.deep.nested.channel", true),
            ("alice", .request, "users.alice.rpc", true),
            ("alice", .runner, "users.alice.runner.summarise", true),
            // someone else's: never read, never write (except dropping into the inbox)
            ("alice", .publish, "users.bob.events", false),
            ("alice", .subscribe, "users.bob.events", false),
            ("alice", .subscribe, "users.bob.inbox", false),
            ("alice", .request, "users.bob.rpc", false),
            ("alice", .runner, "users.bob.runner.summarise", false),
            ("bob", .subscribe, "users.alice.events", false),
            ("alice", .publish, "users.bob.inbox", true),
            // a token that only looks like the user
            ("alice", .subscribe, "users.alice2.events", false),
            ("alice", .subscribe, "users.alice", false),
            // public: everyone reads, admins write
            ("alice", .subscribe, "public.news", true),
            ("alice", .publish, "public.news", false),
            ("bob", .publish, "public.news", true),
            // conditions on user data and on the message
            ("alice", .subscribe, "rooms.r1.messages", true),
            ("alice", .subscribe, "rooms.r2.messages", false),
            // most specific wins, also to deny
            ("bob", .subscribe, "admin.metrics", true),
            ("bob", .subscribe, "admin.audit", false),
            ("alice", .subscribe, "admin.metrics", false),
            // default deny
            ("alice", .presence, "users.alice.events", false),
            ("bob", .publish, "elsewhere", false),
            ("bob", .respond, "public.news", false),
        ]
    )
    func matrix(user: String, action: PermissionAction, subject: String, allowed: Bool) {
        let decision = self.rules.decide(action, subject: subject, user: user == "alice" ? alice : bob)
        #expect(decision.allowed == allowed, "\(user) \(action) \(subject) decided by \(decision.pattern ?? "no rule")")
    }

    @Test("conditions read the message: a room message needs text of at most 20 characters")
    func messageConditions() {
        let ok: JSONValue = .object(["text": .string("hello")])
        let long: JSONValue = .object(["text": .string(String(repeating: "x", count: 21))])
        #expect(self.rules.decide(.publish, subject: "rooms.r1.messages", user: alice, data: ok).allowed)
        #expect(!self.rules.decide(.publish, subject: "rooms.r1.messages", user: alice, data: long).allowed)
        #expect(!self.rules.decide(.publish, subject: "rooms.r1.messages", user: alice, data: .null).allowed)
        #expect(!self.rules.decide(.publish, subject: "rooms.r2.messages", user: alice, data: ok).allowed)
    }

    @Test("the deciding rule is reported")
    func decidingRule() {
        #expect(self.rules.decide(.publish, subject: "users.bob.inbox", user: alice).pattern == "users.$userId.inbox")
        #expect(self.rules.decide(.subscribe, subject: "users.bob.inbox", user: alice).pattern == "users.$userId.>")
        #expect(self.rules.decide(.presence, subject: "x", user: alice).pattern == nil)
    }

    @Test(
        "specificity: literal over variable over * over >, then the longer pattern",
        arguments: [
            ("a.b", "a.$x", true), ("a.$x", "a.*", true), ("a.*", "a.>", true), ("a.$x.c", "a.$x.>", true),
            ("a.*.c", "a.$x.>", false), ("a.b.>", "a.b", true), ("a.b", "a.b", false),
        ]
    )
    func specificity(more: String, less: String, expected: Bool) throws {
        #expect(try PermissionPattern(more).isMoreSpecific(than: PermissionPattern(less)) == expected)
    }

    @Test(
        "bad rules files are refused with the rule and key named",
        arguments: [
            (#"{"rules":[{"publish":true}]}"#, "rule 1: 'subject' is required"),
            (#"{"rules":[{"subject":"a.>.b","publish":true}]}"#, "'>' must be the last token"),
            (#"{"rules":[{"subject":"a.$x","publish":"user.id == $y"}]}"#, "$y is not in the subject pattern"),
            (#"{"rules":[{"subject":"a","write":true}]}"#, "unknown action 'write'"),
            (#"{"rules":[{"subject":"a","publish":"user.id =="}]}"#, "expected a value"),
            (#"{"rules":[{"subject":"a","publish":"users.id == 'x'"}]}"#, "unknown name 'users'"),
            (#"{"rules":[{"subject":"a","publish":"startsWith(subject)"}]}"#, "takes 2 argument(s)"),
            (#"{"rules":[{"subject":"a","publish":3}]}"#, "expected a condition string"),
            (#"{"nope":[]}"#, "expected a 'rules:' list"),
        ]
    )
    func badFiles(json: String, message: String) throws {
        let document = try JSONDecoderShim.decode(json)
        #expect {
            _ = try PermissionRules(document: document)
        } throws: { error in
            "\(error)".contains(message)
        }
    }

    @Test(
        "expressions",
        arguments: [
            ("true && !false", true), ("1 < 2 && 'a' < 'b' && 2 >= 2", true), ("'ell' in 'hello'", true),
            ("'k' in data", true), ("data.list.1 == 'y'", true), ("data.missing == null", true),
            ("data.missing.deeper == null", true), ("lower('AbC') == 'abc'", true), ("upper(data.k) == 'V'", true),
            ("endsWith(subject, '.x') || startsWith(subject, 's.')", true), ("count(data.list) == 2", true),
            ("action == 'publish' && now > 0", true), ("(1 == 1 || 1 == 2) && !(2 == 3)", true),
            ("'1' == 1", false), ("null < 1", false), ("data.k", false), ("-1.5 < 0", true),
            ("'it\\'s' == \"it's\"", true), ("index == 1", false),
        ]
    )
    func expressions(text: String, expected: Bool) throws {
        let context = RuleContext(
            user: alice.ruleValue,
            data: .object(["k": .string("v"), "list": .array([.string("x"), .string("y")])]),
            subject: "s.x",
            action: "publish",
            now: 1000
        )
        let expression: RuleExpression
        do {
            expression = try RuleExpression.parse(text)
        } catch {
            #expect(!expected, "\(text): \(error)")
            return
        }
        #expect(expression.allows(context) == expected, "\(text)")
    }
}

/// JSON text to a JSONValue, for table rows written as JSON.
enum JSONDecoderShim {
    static func decode(_ json: String) throws -> JSONValue {
        try JSONDecoder().decode(JSONValue.self, from: Data(json.utf8))
    }
}
