import Foundation
import StorkCore
import Testing

@testable import StorkRealtime

@Suite("Rules that reload")
struct ReloadableRulesTests {
    static func json(_ text: String) -> [UInt8] { Array(text.utf8) }

    static let open = #"{"rules": [{"subject": "public.>", "subscribe": true}]}"#
    static let closed = #"{"rules": [{"subject": "public.>", "subscribe": false}]}"#
    static let broken = #"{"rules": [{"subject": "public.>", "subscribe": "user.id =="}]}"#

    static func reloadable() -> ReloadableRules {
        ReloadableRules(decode: { try JSONDecoder().decode(JSONValue.self, from: Data($0)) })
    }

    static func allowsSubscribe(_ rules: ReloadableRules) -> Bool {
        rules.rules.decide(.subscribe, subject: "public.news", user: AuthenticatedUser(id: "u")).allowed
    }

    static func stamp(_ modified: Int64) -> RulesFileStamp { RulesFileStamp(modified: modified, size: 0) }

    @Test("before any file everything is denied; a valid file swaps in; the same bytes again are unchanged")
    func swaps() {
        var rules = Self.reloadable()
        #expect(!Self.allowsSubscribe(rules))
        #expect(rules.onSnapshot(RulesFileSnapshot(contents: Self.json(Self.open), stamp: Self.stamp(1))) == .reloaded)
        #expect(Self.allowsSubscribe(rules))
        #expect(rules.generation == 1)
        #expect(rules.loadedStamp == Self.stamp(1))
        // Touched (new stamp, same bytes): nothing to parse.
        #expect(rules.onSnapshot(RulesFileSnapshot(contents: Self.json(Self.open), stamp: Self.stamp(2))) == .unchanged)
        #expect(rules.generation == 1)
        #expect(
            rules.onSnapshot(RulesFileSnapshot(contents: Self.json(Self.closed), stamp: Self.stamp(3))) == .reloaded
        )
        #expect(!Self.allowsSubscribe(rules))
        #expect(rules.generation == 2)
        #expect(rules.lastError == nil)
    }

    @Test("an invalid file keeps the rules in force and records why, once; a fixed file clears the error")
    func keepsPrevious() throws {
        var rules = Self.reloadable()
        _ = rules.onSnapshot(RulesFileSnapshot(contents: Self.json(Self.open), stamp: Self.stamp(1)))
        let action = rules.onSnapshot(RulesFileSnapshot(contents: Self.json(Self.broken), stamp: Self.stamp(2)))
        guard case .keptPrevious(let error) = action else {
            Issue.record("expected keptPrevious, got \(action)")
            return
        }
        #expect(error.message.hasPrefix("permissions: rule 1 ('public.>'), subscribe: condition"))
        #expect(rules.lastError == error)
        #expect(Self.allowsSubscribe(rules))
        #expect(rules.loadedStamp == Self.stamp(1))
        // Polled again unchanged: not parsed or reported again, the error stays.
        #expect(
            rules.onSnapshot(RulesFileSnapshot(contents: Self.json(Self.broken), stamp: Self.stamp(2))) == .unchanged
        )
        #expect(rules.lastError == error)
        // Not even JSON.
        guard
            case .keptPrevious(let syntax) = rules.onSnapshot(
                RulesFileSnapshot(contents: Self.json("rules: ["), stamp: Self.stamp(3))
            )
        else {
            Issue.record("expected keptPrevious")
            return
        }
        #expect(syntax.message.hasPrefix("permissions: the file is not valid"))
        #expect(Self.allowsSubscribe(rules))
        #expect(
            rules.onSnapshot(RulesFileSnapshot(contents: Self.json(Self.closed), stamp: Self.stamp(4))) == .reloaded
        )
        #expect(rules.lastError == nil)
        #expect(!Self.allowsSubscribe(rules))
    }

    @Test("a file that cannot be read keeps the rules; when it comes back it is loaded again")
    func missing() {
        var rules = Self.reloadable()
        _ = rules.onSnapshot(RulesFileSnapshot(contents: Self.json(Self.open), stamp: Self.stamp(1)))
        let gone = StorkError(.invalidInput, "permissions: cannot read rules.yaml")
        #expect(rules.onSnapshot(RulesFileSnapshot(unreadable: gone)) == .keptPrevious(gone))
        #expect(rules.onSnapshot(RulesFileSnapshot(unreadable: gone)) == .unchanged)
        #expect(rules.lastError == gone)
        #expect(Self.allowsSubscribe(rules))
        #expect(rules.onSnapshot(RulesFileSnapshot(contents: Self.json(Self.open), stamp: Self.stamp(5))) == .reloaded)
        #expect(rules.lastError == nil)
        #expect(rules.loadedStamp == Self.stamp(5))
    }
}
