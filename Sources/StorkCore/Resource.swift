import Foundation
// MARK: - JSONValue

/// A JSON value: the attributes of a resource are arbitrary JSON, kept as-is and handed to handlers.
public enum JSONValue: Hashable, Sendable, Codable, CustomStringConvertible {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Double.self) {
            self = .number(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([JSONValue].self) {
            self = .array(value)
        } else if let value = try? container.decode([String: JSONValue].self) {
            self = .object(value)
        } else {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "not a JSON value")
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let value): try container.encode(value)
        case .number(let value): try container.encode(value)
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }

    /// The string, if this is a string.
    /// The field `key` of an object (nil for a missing field or a value that is not an object).
    public subscript(_ key: String) -> JSONValue? {
        if case .object(let fields) = self { return fields[key] }
        return nil
    }

    public var stringValue: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    /// The value as JSON text (keys sorted, so the text of equal values is equal).
    public var description: String {
        var bytes: [UInt8] = []
        self.appendJSON(to: &bytes)
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Appends the value as JSON text (keys sorted; strings escaped as RFC 8259 requires).
    public func appendJSON(to bytes: inout [UInt8]) {
        switch self {
        case .null: bytes.append(contentsOf: "null".utf8)
        case .bool(let value): bytes.append(contentsOf: (value ? "true" : "false").utf8)
        case .number(let value):
            if !value.isFinite {
                bytes.append(contentsOf: "null".utf8)  // JSON has no NaN or infinities
            } else if value.rounded() == value, abs(value) < 1e15 {
                bytes.append(contentsOf: String(Int64(value)).utf8)
            } else {
                bytes.append(contentsOf: String(value).utf8)
            }
        case .string(let value): Self.appendJSONString(value, to: &bytes)
        case .array(let values):
            bytes.append(UInt8(ascii: "["))
            for (index, value) in values.enumerated() {
                if index > 0 { bytes.append(UInt8(ascii: ",")) }
                value.appendJSON(to: &bytes)
            }
            bytes.append(UInt8(ascii: "]"))
        case .object(let fields):
            bytes.append(UInt8(ascii: "{"))
            for (index, field) in fields.sorted(by: { $0.key < $1.key }).enumerated() {
                if index > 0 { bytes.append(UInt8(ascii: ",")) }
                Self.appendJSONString(field.key, to: &bytes)
                bytes.append(UInt8(ascii: ":"))
                field.value.appendJSON(to: &bytes)
            }
            bytes.append(UInt8(ascii: "}"))
        }
    }

    /// Appends `text` as a JSON string literal: quotes, backslashes and control characters escaped.
    public static func appendJSONString(_ text: String, to bytes: inout [UInt8]) {
        bytes.append(UInt8(ascii: "\""))
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\""): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\"")])
            case UInt8(ascii: "\\"): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
            case 0x0A: bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
            case 0x0D: bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
            case 0x09: bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0")])
                bytes.append(hex[Int(byte >> 4)])
                bytes.append(hex[Int(byte & 0x0F)])
            default: bytes.append(byte)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }

    /// Parses JSON text (any value at the top, as RFC 8259 allows); throws on anything else.
    public static func parse(_ bytes: some Collection<UInt8>) throws -> JSONValue {
        try JSONDecoder().decode(JSONValue.self, from: Data(bytes))
    }
}

// MARK: - Resource

/// Something long-lived that must be handled by exactly one node: an id plus whatever attributes its source gave.
public struct Resource: Hashable, Sendable, Codable, CustomStringConvertible {
    public var id: ResourceID
    /// Every field of the resource as its source gave it, including `id`.
    public var attributes: [String: JSONValue]

    public init(id: ResourceID, attributes: [String: JSONValue] = [:]) {
        self.id = id
        var attributes = attributes
        attributes["id"] = .string(id.rawValue)
        self.attributes = attributes
    }

    public init(from decoder: any Decoder) throws {
        let fields = try [String: JSONValue](from: decoder)
        guard case .string(let id)? = fields["id"], !id.isEmpty else {
            throw DecodingError.dataCorrupted(
                .init(codingPath: decoder.codingPath, debugDescription: "a resource needs a non-empty string \"id\"")
            )
        }
        self.id = ResourceID(id)
        self.attributes = fields
    }

    public func encode(to encoder: any Encoder) throws {
        try self.attributes.encode(to: encoder)
    }

    /// An attribute as a string, if present and a string.
    public subscript(string key: String) -> String? {
        self.attributes[key]?.stringValue
    }

    /// The attribute that pins a resource to one node, by the node's name (`node.name`): only that node runs it, and
    /// while it is not a member of the cluster nobody does (placement does not move it elsewhere).
    public static let pinAttribute = "stork.node"

    /// The name of the node this resource is pinned to (see `pinAttribute`), or nil when placement chooses.
    public var pinnedNode: String? { self[string: Self.pinAttribute] }

    /// Checks the attributes Stork reads itself: a pin must name a node.
    public func validatePin() throws {
        guard let value = self.attributes[Self.pinAttribute] else { return }
        guard case .string(let name) = value, !name.isEmpty else {
            throw StorkError(.invalidInput, "\(self.id): '\(Self.pinAttribute)' must be a node's name (a non-empty string)")
        }
    }

    public var description: String { JSONValue.object(self.attributes).description }
}

// MARK: - Literals

extension JSONValue: ExpressibleByStringLiteral, ExpressibleByBooleanLiteral, ExpressibleByIntegerLiteral,
    ExpressibleByFloatLiteral, ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral, ExpressibleByNilLiteral
{
    public init(stringLiteral value: String) { self = .string(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(integerLiteral value: Int) { self = .number(Double(value)) }
    public init(floatLiteral value: Double) { self = .number(value) }
    public init(arrayLiteral elements: JSONValue...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        self = .object(Dictionary(elements, uniquingKeysWith: { _, last in last }))
    }
    public init(nilLiteral: ()) { self = .null }
}
