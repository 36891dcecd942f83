import StorkCore

// MARK: - RunnerTemplate
//
// Text with placeholders filled from a node's inputs: `Hello, {{name}}!`, `{{weather.main.temp}}`,
// `https://api.example.com/weather?q={{city | url}}`. A placeholder is an input port name, then `.key` steps into
// objects (or `.0` into arrays); a path that leads nowhere gives null. Filters: `url` percent-encodes the text, `json`
// writes the value as JSON text. There is no escape for `{{`; templates are parsed when the definition is compiled,
// so a mistake is found before any run.

/// A string template.
public struct RunnerTemplate: Sendable, Hashable {
    enum Piece: Sendable, Hashable {
        case text(String)
        case placeholder(Placeholder)
    }

    struct Placeholder: Sendable, Hashable {
        var root: String
        var keys: [String]
        var filter: Filter?

        func value(in inputs: [String: JSONValue]) -> JSONValue {
            var value = inputs[self.root] ?? .null
            for key in self.keys {
                switch value {
                case .object(let fields): value = fields[key] ?? .null
                case .array(let items):
                    value = Int(key).flatMap { items.indices.contains($0) ? items[$0] : nil } ?? .null
                default: value = .null
                }
            }
            return value
        }
    }

    enum Filter: String, Sendable, Hashable {
        case url, json
    }

    let pieces: [Piece]

    /// Parses `text`.
    /// - Throws: `RunnerError(.invalidOptions)` naming the character where the template goes wrong.
    public init(_ text: String) throws {
        var pieces: [Piece] = []
        var rest = Substring(text)
        while let open = rest.range(of: "{{") {
            if open.lowerBound > rest.startIndex { pieces.append(.text(String(rest[..<open.lowerBound]))) }
            guard let close = rest[open.upperBound...].range(of: "}}") else {
                let offset = text.distance(from: text.startIndex, to: open.lowerBound)
                throw RunnerError(.invalidOptions, "template, at character \(offset + 1): '{{' without '}}'")
            }
            let offset = text.distance(from: text.startIndex, to: open.lowerBound)
            pieces.append(.placeholder(try Self.parsePlaceholder(rest[open.upperBound..<close.lowerBound], at: offset)))
            rest = rest[close.upperBound...]
        }
        if !rest.isEmpty { pieces.append(.text(String(rest))) }
        self.pieces = pieces
    }

    private static func parsePlaceholder(_ body: Substring, at offset: Int) throws -> Placeholder {
        let parts = body.split(separator: "|", omittingEmptySubsequences: false)
        guard parts.count <= 2 else {
            throw RunnerError(.invalidOptions, "template, at character \(offset + 1): one filter at most")
        }
        var filter: Filter?
        if parts.count == 2 {
            let name = parts[1].trimmingSpaces
            guard let known = Filter(rawValue: name) else {
                throw RunnerError(
                    .invalidOptions,
                    "template, at character \(offset + 1): unknown filter '\(name.prefix(40))' (expected url or json)"
                )
            }
            filter = known
        }
        let path = parts[0].trimmingSpaces.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard let root = path.first, RunnerDefinition.isValidName(root), path.allSatisfy({ !$0.isEmpty }) else {
            throw RunnerError(
                .invalidOptions,
                "template, at character \(offset + 1): expected an input name, then .key steps, in '{{\(body.prefix(60))}}'"
            )
        }
        return Placeholder(root: root, keys: Array(path.dropFirst()), filter: filter)
    }

    /// The input port names the placeholders read.
    public var inputNames: Set<String> {
        Set(
            self.pieces.compactMap {
                if case .placeholder(let placeholder) = $0 { return placeholder.root }
                return nil
            }
        )
    }

    /// The text with every placeholder replaced by its value: strings as they are, null as nothing, numbers and
    /// booleans as JSON writes them, objects and arrays as JSON text.
    public func render(_ inputs: [String: JSONValue]) -> String {
        var output = ""
        for piece in self.pieces {
            switch piece {
            case .text(let text):
                output += text
            case .placeholder(let placeholder):
                let value = placeholder.value(in: inputs)
                switch placeholder.filter {
                case nil: output += Self.text(of: value)
                case .json?: output += RunnerJSON.text(value)
                case .url?: output += Self.percentEncoded(Self.text(of: value))
                }
            }
        }
        return output
    }

    /// When the template is exactly one placeholder without a filter, the value itself (keeping its type);
    /// otherwise the rendered text.
    public func value(_ inputs: [String: JSONValue]) -> JSONValue {
        if self.pieces.count == 1, case .placeholder(let placeholder) = self.pieces[0], placeholder.filter == nil {
            return placeholder.value(in: inputs)
        }
        return .string(self.render(inputs))
    }

    /// The text a value stands for in a template.
    public static func text(of value: JSONValue) -> String {
        switch value {
        case .null: ""
        case .string(let text): text
        case .bool(let flag): flag ? "true" : "false"
        case .number(let number): RunnerJSON.numberText(number)
        case .array, .object: RunnerJSON.text(value)
        }
    }

    /// Percent-encodes everything but RFC 3986's unreserved characters, so the text is safe in a path segment or a
    /// query value.
    static func percentEncoded(_ text: String) -> String {
        var output = ""
        for byte in text.utf8 {
            switch byte {
            case 0x30...0x39, 0x41...0x5A, 0x61...0x7A, 0x2D, 0x2E, 0x5F, 0x7E:
                output.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                let hex = String(byte, radix: 16, uppercase: true)
                output += "%" + (hex.count == 1 ? "0" + hex : hex)
            }
        }
        return output
    }
}

/// A JSON value whose strings are templates (object keys are taken as they are). A string that is exactly one
/// placeholder becomes the value it names, so `{"temp": "{{weather.main.temp}}"}` keeps the number a number.
public struct RunnerJSONTemplate: Sendable, Hashable {
    indirect enum Shape: Sendable, Hashable {
        case constant(JSONValue)
        case template(RunnerTemplate)
        case array([Shape])
        case object([String: Shape])
    }

    let shape: Shape

    /// - Throws: `RunnerError(.invalidOptions)` for a string whose template does not parse.
    public init(_ value: JSONValue) throws {
        self.shape = try Self.parse(value)
    }

    private static func parse(_ value: JSONValue) throws -> Shape {
        switch value {
        case .string(let text):
            return text.contains("{{") ? .template(try RunnerTemplate(text)) : .constant(value)
        case .array(let items):
            return .array(try items.map(Self.parse))
        case .object(let fields):
            return .object(try fields.mapValues(Self.parse))
        case .null, .bool, .number:
            return .constant(value)
        }
    }

    /// The input port names the placeholders read.
    public var inputNames: Set<String> {
        func names(_ shape: Shape) -> Set<String> {
            switch shape {
            case .constant: []
            case .template(let template): template.inputNames
            case .array(let items): items.reduce(into: []) { $0.formUnion(names($1)) }
            case .object(let fields): fields.values.reduce(into: []) { $0.formUnion(names($1)) }
            }
        }
        return names(self.shape)
    }

    /// The value with every template filled from `inputs`.
    public func render(_ inputs: [String: JSONValue]) -> JSONValue {
        func render(_ shape: Shape) -> JSONValue {
            switch shape {
            case .constant(let value): value
            case .template(let template): template.value(inputs)
            case .array(let items): .array(items.map(render))
            case .object(let fields): .object(fields.mapValues(render))
            }
        }
        return render(self.shape)
    }

    /// The type the rendered value will have, as far as the template shows it.
    var resultType: RunnerPortType {
        switch self.shape {
        case .object: .object
        case .array: .array
        case .template, .constant(.null): .any
        case .constant(.string): .string
        case .constant(.number): .number
        case .constant(.bool): .boolean
        case .constant(.array): .array
        case .constant(.object): .object
        }
    }
}

extension Substring {
    fileprivate var trimmingSpaces: String {
        String(self.drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
    }
}
