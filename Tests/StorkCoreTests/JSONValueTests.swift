import Foundation
import Testing

@testable import StorkCore

@Suite("JSONValue text")
struct JSONValueTests {
    @Test("strings with quotes, backslashes and control characters survive a round trip")
    func escaping() throws {
        let value: JSONValue = [
            "quote": "say \"hi\"", "slash": "a\\b", "lines": "one\ntwo\r\tthree", "control": "\u{01}\u{1F}",
            "unicode": "héllo ⚽️", "nested": [1, 2.5, true, nil, ["k": "v"]],
        ]
        let text = value.description
        #expect(try JSONValue.parse(Array(text.utf8)) == value)
        #expect(text.contains(#""quote":"say \"hi\"""#))
        #expect(text.contains(#"\u0001\u001f"#))
    }

    @Test("keys are sorted, integers print without a fraction, non-finite numbers become null")
    func canonical() {
        let value: JSONValue = ["b": 2, "a": 1.5, "c": .number(.infinity)]
        #expect(value.description == #"{"a":1.5,"b":2,"c":null}"#)
    }

    @Test("top-level scalars parse; garbage is an error")
    func parsing() throws {
        #expect(try JSONValue.parse(Array("42".utf8)) == 42)
        #expect(try JSONValue.parse(Array("\"x\"".utf8)) == "x")
        #expect(throws: (any Error).self) { try JSONValue.parse(Array("{\"a\":".utf8)) }
        #expect(throws: (any Error).self) { try JSONValue.parse(Array("nope".utf8)) }
    }
}
