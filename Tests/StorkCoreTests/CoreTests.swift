import Foundation
import Testing

@testable import StorkCore

@Suite struct SeededRandomTests {
    @Test func sameSeedSameSequence() {
        var a = SeededRandom(seed: 42)
        var b = SeededRandom(seed: 42)
        for _ in 0..<100 { #expect(a.next() == b.next()) }
    }

    @Test func differentSeedsDiffer() {
        var a = SeededRandom(seed: 1)
        var b = SeededRandom(seed: 2)
        #expect(a.next() != b.next())
    }

    @Test func unitDoubleInRange() {
        var a = SeededRandom(seed: 7)
        for _ in 0..<10_000 {
            let d = a.nextUnitDouble()
            #expect(d >= 0 && d < 1)
        }
    }
}

@Suite struct ResourceCodingTests {
    @Test func decodesIdAndKeepsAttributes() throws {
        let json = #"{"id":"acct-42","kind":"websocket","n":3}"#
        let resource = try JSONDecoder().decode(Resource.self, from: Data(json.utf8))
        #expect(resource.id == "acct-42")
        #expect(resource[string: "kind"] == "websocket")
        #expect(resource.attributes["n"] == .number(3))
    }

    @Test func rejectsMissingOrEmptyId() {
        for json in [#"{"kind":"x"}"#, #"{"id":""}"#, #"{"id":3}"#, "[]", "nonsense"] {
            #expect(throws: (any Error).self) { try JSONDecoder().decode(Resource.self, from: Data(json.utf8)) }
        }
    }

    @Test func roundTrips() throws {
        let resource = Resource(
            id: "r1",
            attributes: ["url": .string("ws://x"), "tags": .array([.bool(true), .null])]
        )
        let data = try JSONEncoder().encode(resource)
        #expect(try JSONDecoder().decode(Resource.self, from: data) == resource)
    }
}

@Suite struct TimeTests {
    @Test func instantArithmetic() {
        let t = StorkInstant.zero + .milliseconds(1500)
        #expect(t.nanoseconds == 1_500_000_000)
        #expect(t - StorkInstant.zero == .milliseconds(1500))
        #expect((t - .seconds(1)).nanoseconds == 500_000_000)
        #expect(Duration.seconds(2).scaled(by: 1.5) == .seconds(3))
    }
}
