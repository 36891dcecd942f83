import StorkCore

// MARK: - RunnerDefinition
//
// A runner is a graph of nodes joined by edges from an output port to an input port, stored as JSON:
//
//     {
//       "id": "greeting", "name": "Greeting", "version": 1,
//       "nodes": [
//         {"id": "who", "kind": "input", "options": {"name": "name", "type": "string", "default": "world"}},
//         {"id": "greet", "kind": "template", "inputs": {"name": "string"}, "options": {"template": "Hello, {{name}}!"}},
//         {"id": "out", "kind": "output", "options": {"name": "greeting"}}
//       ],
//       "edges": [
//         {"from": "who.value", "to": "greet.name"},
//         {"from": "greet.value", "to": "out.value"}
//       ]
//     }
//
// Decoding checks the shape only (keys, types, names); `RunnerProgram` checks the graph against the kinds in a
// `RunnerNodeRegistry`. Docs/runners.md is the reference for the format.

/// The type of a port. An edge may join two ports whose types can meet (see `canFeed`); values that reach a typed
/// port through an `any` port are checked when the run gets there.
public enum RunnerPortType: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    case string, number, boolean, object, array, any
    /// An output port that emits several items one by one (each in its own `node` event). Downstream nodes receive
    /// the items collected into an array once the stream has ended, so a stream feeds `array`, `any` or `stream`
    /// input ports.
    case stream

    public var description: String { self.rawValue }

    /// Whether `value` is of this type. `null` is accepted everywhere: it stands for "no value".
    public func accepts(_ value: JSONValue) -> Bool {
        switch (self, value) {
        case (_, .null), (.any, _): true
        case (.string, .string), (.number, .number), (.boolean, .bool), (.object, .object): true
        case (.array, .array), (.stream, .array): true
        default: false
        }
    }

    /// Whether an edge may lead from an output port of this type into an input port of type `target`.
    public func canFeed(_ target: RunnerPortType) -> Bool {
        switch (self, target) {
        case (.any, _), (_, .any): true
        case (.stream, .array), (.stream, .stream): true
        case (.stream, _), (_, .stream): false
        default: self == target
        }
    }
}

/// One port of a node.
public struct RunnerPort: Sendable, Hashable, CustomStringConvertible {
    public var name: String
    public var type: RunnerPortType
    /// Input ports only: the port must have an edge.
    public var required: Bool
    /// Input ports only: several edges may lead into the port; it takes the value of the first (in the order of the
    /// definition's `edges`) whose node ran. The `output` kind's `value` port works so, to join the arms of a branch.
    public var acceptsMany: Bool

    public init(_ name: String, _ type: RunnerPortType, required: Bool = true, acceptsMany: Bool = false) {
        self.name = name
        self.type = type
        self.required = required
        self.acceptsMany = acceptsMany
    }

    public var description: String { "\(self.name): \(self.type)" }
}

/// A node as the definition states it: its kind, its options, and the ports it declares (for kinds whose ports depend
/// on the node, such as `template`, whose inputs are the names its placeholders use).
public struct RunnerNodeDefinition: Sendable, Hashable {
    public var id: String
    public var kind: String
    public var options: [String: JSONValue]
    /// Input ports declared by the definition (`"inputs": {"city": "string"}`), sorted by name.
    public var declaredInputs: [RunnerPort]
    /// Output ports declared by the definition, sorted by name (only kinds that allow it use them).
    public var declaredOutputs: [RunnerPort]
    /// For editors: a label and anything else (positions, colours); the engine does not read them.
    public var label: String?
    public var meta: JSONValue?

    public init(
        id: String,
        kind: String,
        options: [String: JSONValue] = [:],
        declaredInputs: [RunnerPort] = [],
        declaredOutputs: [RunnerPort] = [],
        label: String? = nil,
        meta: JSONValue? = nil
    ) {
        self.id = id
        self.kind = kind
        self.options = options
        self.declaredInputs = declaredInputs
        self.declaredOutputs = declaredOutputs
        self.label = label
        self.meta = meta
    }
}

/// A node's port, written `node.port` in a definition.
public struct RunnerPortReference: Sendable, Hashable, CustomStringConvertible {
    public var node: String
    public var port: String

    public init(node: String, port: String) {
        self.node = node
        self.port = port
    }

    public var description: String { "\(self.node).\(self.port)" }
}

/// An edge from an output port to an input port.
public struct RunnerEdge: Sendable, Hashable, CustomStringConvertible {
    public var from: RunnerPortReference
    public var to: RunnerPortReference

    public init(from: RunnerPortReference, to: RunnerPortReference) {
        self.from = from
        self.to = to
    }

    public var description: String { "\(self.from) -> \(self.to)" }
}

/// Bounds on a definition, so that a hostile document costs little to refuse.
public struct RunnerLimits: Sendable, Hashable {
    /// The largest document `RunnerDefinition(json:)` reads.
    public var maxDocumentBytes: Int = 1 << 20
    /// The most nodes a definition may have.
    public var maxNodes: Int = 1_000
    /// The most edges a definition may have.
    public var maxEdges: Int = 4_000

    public init() {}
}

/// A runner definition, decoded and checked for shape. Compile it into a `RunnerProgram` to check the graph.
public struct RunnerDefinition: Sendable, Hashable {
    public var id: String
    public var name: String
    public var version: Int
    public var description: String?
    public var nodes: [RunnerNodeDefinition]
    public var edges: [RunnerEdge]
    /// For editors; not read by the engine.
    public var meta: JSONValue?

    public init(
        id: String,
        name: String? = nil,
        version: Int = 1,
        description: String? = nil,
        nodes: [RunnerNodeDefinition],
        edges: [RunnerEdge],
        meta: JSONValue? = nil
    ) {
        self.id = id
        self.name = name ?? id
        self.version = version
        self.description = description
        self.nodes = nodes
        self.edges = edges
        self.meta = meta
    }

    /// Decodes a definition from JSON text.
    /// - Throws: `RunnerError` (`malformed` or `tooLarge`), naming what is wrong and where.
    public init(json bytes: some Collection<UInt8>, limits: RunnerLimits = RunnerLimits()) throws {
        guard bytes.count <= limits.maxDocumentBytes else {
            throw RunnerError(
                .tooLarge,
                "the definition is \(bytes.count) bytes, over the limit of \(limits.maxDocumentBytes)"
            )
        }
        let document: JSONValue
        do {
            document = try RunnerJSON.parse(bytes)
        } catch {
            throw RunnerError(.malformed, "the definition is not valid JSON", underlying: error)
        }
        try self.init(document: document, limits: limits)
    }

    /// Decodes a definition from a JSON value (e.g. a request body already parsed).
    /// - Throws: `RunnerError` (`malformed` or `tooLarge`), naming what is wrong and where.
    public init(document: JSONValue, limits: RunnerLimits = RunnerLimits()) throws {
        let top = try DocumentReader(document, at: "the definition")
        try top.allowOnly(["id", "name", "version", "description", "nodes", "edges", "meta"])
        let id = try top.name("id")
        self.id = id
        self.name = try top.optionalString("name") ?? id
        self.version = try top.optionalInteger("version") ?? 1
        self.description = try top.optionalString("description")
        self.meta = top.fields["meta"]

        let nodeValues = try top.array("nodes")
        guard nodeValues.count <= limits.maxNodes else {
            throw RunnerError(
                .tooLarge,
                "the definition has \(nodeValues.count) nodes, over the limit of \(limits.maxNodes)"
            )
        }
        self.nodes = try nodeValues.enumerated().map { index, value in
            try Self.decodeNode(value, index: index)
        }

        let edgeValues = try top.optionalArray("edges") ?? []
        guard edgeValues.count <= limits.maxEdges else {
            throw RunnerError(
                .tooLarge,
                "the definition has \(edgeValues.count) edges, over the limit of \(limits.maxEdges)"
            )
        }
        self.edges = try edgeValues.enumerated().map { index, value in
            let edge = try DocumentReader(value, at: "edge \(index + 1)")
            try edge.allowOnly(["from", "to"])
            return RunnerEdge(
                from: try edge.portReference("from"),
                to: try edge.portReference("to")
            )
        }
    }

    private static func decodeNode(_ value: JSONValue, index: Int) throws -> RunnerNodeDefinition {
        let place = "node \(index + 1)"
        let node = try DocumentReader(value, at: place)
        try node.allowOnly(["id", "kind", "options", "inputs", "outputs", "label", "meta"])
        let id = try node.name("id")
        let named = try DocumentReader(value, at: "node '\(id)'")
        let kind = try named.string("kind")
        let options = try named.optionalObject("options") ?? [:]
        return RunnerNodeDefinition(
            id: id,
            kind: kind,
            options: options,
            declaredInputs: try named.ports("inputs"),
            declaredOutputs: try named.ports("outputs"),
            label: try named.optionalString("label"),
            meta: named.fields["meta"]
        )
    }

    /// The definition as a JSON document, in the form `init(document:)` reads.
    public var document: JSONValue {
        func ports(_ ports: [RunnerPort]) -> JSONValue {
            .object(
                Dictionary(
                    uniqueKeysWithValues: ports.map { port in
                        (
                            port.name,
                            port.required
                                ? JSONValue.string(port.type.rawValue)
                                : ["type": .string(port.type.rawValue), "required": false]
                        )
                    }
                )
            )
        }
        var top: [String: JSONValue] = [
            "id": .string(self.id),
            "name": .string(self.name),
            "version": .number(Double(self.version)),
            "nodes": .array(
                self.nodes.map { node in
                    var fields: [String: JSONValue] = ["id": .string(node.id), "kind": .string(node.kind)]
                    if !node.options.isEmpty { fields["options"] = .object(node.options) }
                    if !node.declaredInputs.isEmpty { fields["inputs"] = ports(node.declaredInputs) }
                    if !node.declaredOutputs.isEmpty { fields["outputs"] = ports(node.declaredOutputs) }
                    if let label = node.label { fields["label"] = .string(label) }
                    if let meta = node.meta { fields["meta"] = meta }
                    return .object(fields)
                }
            ),
            "edges": .array(
                self.edges.map { .object(["from": .string($0.from.description), "to": .string($0.to.description)]) }
            ),
        ]
        if let description = self.description { top["description"] = .string(description) }
        if let meta = self.meta { top["meta"] = meta }
        return .object(top)
    }

    /// Whether `text` may name a runner, a node or a port: 1 to 128 ASCII letters, digits, `_` or `-`.
    public static func isValidName(_ text: String) -> Bool {
        guard !text.isEmpty, text.utf8.count <= 128 else { return false }
        return text.utf8.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                || byte == 0x5F || byte == 0x2D
        }
    }
}

// MARK: - Reading a document

/// Reads the fields of one JSON object of a definition, with errors that say where.
struct DocumentReader {
    let fields: [String: JSONValue]
    let place: String

    init(_ value: JSONValue, at place: String) throws {
        guard case .object(let fields) = value else {
            throw RunnerError(.malformed, "\(place) must be a JSON object")
        }
        self.fields = fields
        self.place = place
    }

    func allowOnly(_ keys: Set<String>) throws {
        if let unknown = self.fields.keys.sorted().first(where: { !keys.contains($0) }) {
            throw RunnerError(
                .malformed,
                "\(self.place): unknown key '\(unknown)' (expected \(keys.sorted().joined(separator: ", ")))"
            )
        }
    }

    func string(_ key: String) throws -> String {
        guard let value = try self.optionalString(key) else {
            throw RunnerError(.malformed, "\(self.place): '\(key)' is missing")
        }
        return value
    }

    func optionalString(_ key: String) throws -> String? {
        switch self.fields[key] {
        case nil, .null?: return nil
        case .string(let value)?: return value
        default: throw RunnerError(.malformed, "\(self.place): '\(key)' must be a string")
        }
    }

    func name(_ key: String) throws -> String {
        let value = try self.string(key)
        guard RunnerDefinition.isValidName(value) else {
            throw RunnerError(
                .malformed,
                "\(self.place): '\(key)' must be 1 to 128 letters, digits, '_' or '-' (got \(JSONValue.string(String(value.prefix(140)))))"
            )
        }
        return value
    }

    func optionalInteger(_ key: String) throws -> Int? {
        switch self.fields[key] {
        case nil, .null?: return nil
        case .number(let value)? where value.rounded() == value && value >= 0 && value < 1e15: return Int(value)
        default: throw RunnerError(.malformed, "\(self.place): '\(key)' must be a whole number, 0 or more")
        }
    }

    func array(_ key: String) throws -> [JSONValue] {
        guard let value = try self.optionalArray(key) else {
            throw RunnerError(.malformed, "\(self.place): '\(key)' is missing")
        }
        return value
    }

    func optionalArray(_ key: String) throws -> [JSONValue]? {
        switch self.fields[key] {
        case nil, .null?: return nil
        case .array(let value)?: return value
        default: throw RunnerError(.malformed, "\(self.place): '\(key)' must be an array")
        }
    }

    func optionalObject(_ key: String) throws -> [String: JSONValue]? {
        switch self.fields[key] {
        case nil, .null?: return nil
        case .object(let value)?: return value
        default: throw RunnerError(.malformed, "\(self.place): '\(key)' must be an object")
        }
    }

    /// `"node.port"`.
    func portReference(_ key: String) throws -> RunnerPortReference {
        let text = try self.string(key)
        let parts = text.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 2, RunnerDefinition.isValidName(parts[0]), RunnerDefinition.isValidName(parts[1]) else {
            throw RunnerError(
                .malformed,
                "\(self.place): '\(key)' must be \"node.port\" (got \(JSONValue.string(String(text.prefix(280)))))"
            )
        }
        return RunnerPortReference(node: parts[0], port: parts[1])
    }

    /// `{"city": "string", "units": {"type": "string", "required": false}}`.
    func ports(_ key: String) throws -> [RunnerPort] {
        guard let fields = try self.optionalObject(key) else { return [] }
        return try fields.keys.sorted().map { name in
            guard RunnerDefinition.isValidName(name) else {
                throw RunnerError(
                    .malformed,
                    "\(self.place), \(key): a port name must be 1 to 128 letters, digits, '_' or '-' (got \(JSONValue.string(String(name.prefix(140)))))"
                )
            }
            let place = "\(self.place), \(key) '\(name)'"
            switch fields[name] {
            case .string(let typeName)?:
                return RunnerPort(name, try Self.portType(typeName, at: place))
            case .object?:
                let port = try DocumentReader(fields[name] ?? .null, at: place)
                try port.allowOnly(["type", "required"])
                let type = try Self.portType(try port.string("type"), at: place)
                var required = true
                switch port.fields["required"] {
                case nil, .null?: break
                case .bool(let value)?: required = value
                default: throw RunnerError(.malformed, "\(place): 'required' must be true or false")
                }
                return RunnerPort(name, type, required: required)
            default:
                throw RunnerError(.malformed, "\(place): must be a type name or {\"type\": …, \"required\": …}")
            }
        }
    }

    static func portType(_ name: String, at place: String) throws -> RunnerPortType {
        guard let type = RunnerPortType(rawValue: name) else {
            throw RunnerError(
                .malformed,
                "\(place): unknown type \(JSONValue.string(String(name.prefix(140)))) (expected \(RunnerPortType.allCases.map(\.rawValue).joined(separator: ", ")))"
            )
        }
        return type
    }
}
