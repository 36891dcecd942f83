import Foundation
import StorkCore

// MARK: - RunnerJSON
//
// JSON text in and out for runners: definitions and HTTP bodies are parsed into `JSONValue`, events and templates are
// written with sorted keys so that the same value always gives the same text.

/// JSON text for runner definitions, events and templates.
public enum RunnerJSON {
    /// Parses JSON text. Foundation's decoder bounds the nesting depth, so a hostile document is an error, not a
    /// stack overflow.
    public static func parse(_ bytes: some Collection<UInt8>) throws -> JSONValue {
        try JSONDecoder().decode(JSONValue.self, from: Data(bytes))
    }

    /// The value as compact JSON text with object keys sorted. Numbers that are whole are written without a fraction;
    /// numbers JSON cannot hold (infinities, NaN) are written as `null`.
    public static func text(_ value: JSONValue) -> String {
        var output = ""
        self.write(value, into: &output)
        return output
    }

    /// `text(value)` as UTF-8 bytes.
    public static func bytes(_ value: JSONValue) -> [UInt8] {
        Array(self.text(value).utf8)
    }

    private static func write(_ value: JSONValue, into output: inout String) {
        switch value {
        case .null: output += "null"
        case .bool(let flag): output += flag ? "true" : "false"
        case .number(let number): output += self.numberText(number)
        case .string(let string): self.writeString(string, into: &output)
        case .array(let items):
            output += "["
            for (index, item) in items.enumerated() {
                if index > 0 { output += "," }
                self.write(item, into: &output)
            }
            output += "]"
        case .object(let fields):
            output += "{"
            for (index, key) in fields.keys.sorted().enumerated() {
                if index > 0 { output += "," }
                self.writeString(key, into: &output)
                output += ":"
                self.write(fields[key] ?? .null, into: &output)
            }
            output += "}"
        }
    }

    static func numberText(_ number: Double) -> String {
        guard number.isFinite else { return "null" }
        if number.rounded() == number, abs(number) < 1e15 { return String(Int64(number)) }
        return String(number)
    }

    private static func writeString(_ string: String, into output: inout String) {
        output += "\""
        for scalar in string.unicodeScalars {
            switch scalar {
            case "\"": output += "\\\""
            case "\\": output += "\\\\"
            case "\n": output += "\\n"
            case "\r": output += "\\r"
            case "\t": output += "\\t"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    output += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    output.unicodeScalars.append(scalar)
                }
            }
        }
        output += "\""
    }
}
