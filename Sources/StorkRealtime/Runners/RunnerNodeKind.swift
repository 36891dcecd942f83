import StorkCore

// MARK: - RunnerNodeKind
//
// A kind turns a node of a definition into something that runs. `prepare` is called once, when the definition is
// compiled: it checks the options, parses templates and conditions, and says which ports the node has. The closure it
// returns is called once per run that reaches the node.

/// A kind of node, such as `http` or `template`. Register your own with `RunnerNodeRegistry.register`.
public protocol RunnerNodeKind: Sendable {
    /// The name definitions use in a node's `kind`.
    var name: String { get }

    /// Checks `node` (options, declared ports) and returns it ready to run.
    /// - Throws: `RunnerError` (usually `.invalidOptions`, e.g. from `RunnerNodeOptions`); other errors are reported
    ///   as invalid options of the node.
    func prepare(_ node: RunnerNodeDefinition) throws -> RunnerPreparedNode
}

/// A node ready to run: its ports and what it does.
public struct RunnerPreparedNode: Sendable {
    /// A run input this node reads (the `input` kind): listed by `RunnerProgram.inputs` and checked before a run.
    public struct RunInput: Sendable, Hashable {
        public var name: String
        public var type: RunnerPortType
        public var required: Bool
        public var defaultValue: JSONValue?

        public init(name: String, type: RunnerPortType, required: Bool, defaultValue: JSONValue? = nil) {
            self.name = name
            self.type = type
            self.required = required
            self.defaultValue = defaultValue
        }
    }

    public var inputs: [RunnerPort]
    public var outputs: [RunnerPort]
    /// Set by the `input` kind.
    public var runInput: RunInput?
    /// Set by the `output` kind: the name of the run output the node's `value` input becomes.
    public var runOutput: String?
    /// Runs the node once. Return the values of the output ports (stream ports are filled from `context.emit`);
    /// throwing fails the run.
    public var run: @Sendable (RunnerNodeContext) async throws -> RunnerNodeResult

    public init(
        inputs: [RunnerPort],
        outputs: [RunnerPort],
        runInput: RunInput? = nil,
        runOutput: String? = nil,
        run: @escaping @Sendable (RunnerNodeContext) async throws -> RunnerNodeResult
    ) {
        self.inputs = inputs
        self.outputs = outputs
        self.runInput = runInput
        self.runOutput = runOutput
        self.run = run
    }
}

/// What a node produced: values for its output ports, and the ports it leaves inactive (a `branch` leaves the arm not
/// taken inactive). Nodes whose inputs come only from inactive ports are skipped. An active port the node gives no
/// value is `null`.
public struct RunnerNodeResult: Sendable, Hashable, ExpressibleByDictionaryLiteral {
    public var values: [String: JSONValue]
    public var inactivePorts: Set<String>

    public init(_ values: [String: JSONValue] = [:], inactivePorts: Set<String> = []) {
        self.values = values
        self.inactivePorts = inactivePorts
    }

    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        self.init(Dictionary(elements, uniquingKeysWith: { _, last in last }))
    }
}

/// What a running node sees.
public struct RunnerNodeContext: Sendable {
    public let runId: String
    public let node: RunnerNodeDefinition
    /// The values on the node's input ports. An optional port without an edge is absent.
    public let inputs: [String: JSONValue]
    /// All the inputs the run was started with (the `input` kind reads these).
    public let runInputs: [String: JSONValue]
    /// Who started the run, as `AuthenticatedUser.ruleValue` gives it (null when the host did not say); `branch`
    /// conditions read it as `user`.
    public let user: JSONValue
    public let effects: any RunnerEffects
    let control: RunnerRunControl
    let stream: RunnerStreamCollector

    public var nodeId: String { self.node.id }

    /// Returns at once while the run is not paused, waits for `resume` while it is; throws `CancellationError` when
    /// the run is cancelled. A node that loops (reads a stream, polls) calls this before each step.
    public func checkpoint() async throws {
        try await self.control.waitWhilePaused()
    }

    /// Emits one item on a `stream` output port: a `node` event goes out with the item at once, and the port's value
    /// for downstream nodes is every item emitted, in order. Waits while the run is paused.
    /// - Throws: `RunnerError` when `port` is not a stream output of this node or the run's item limit is reached;
    ///   `CancellationError` when the run is cancelled.
    public func emit(_ item: JSONValue, on port: String) async throws {
        try await self.checkpoint()
        try self.stream.append(item, on: port, runId: self.runId, nodeId: self.nodeId)
    }
}

// MARK: - Options

/// Reads a node's options, with errors that name the node and the option.
public struct RunnerNodeOptions: Sendable {
    public let node: RunnerNodeDefinition

    public init(_ node: RunnerNodeDefinition) {
        self.node = node
    }

    /// An `invalidOptions` error about this node.
    public func error(_ message: String) -> RunnerError {
        RunnerError(.invalidOptions, "node '\(self.node.id)' (\(self.node.kind)): \(message)", nodeId: self.node.id)
    }

    /// Refuses options outside `keys`, so that a misspelt option is found rather than ignored.
    public func allowOnly(_ keys: Set<String>) throws {
        if let unknown = self.node.options.keys.sorted().first(where: { !keys.contains($0) }) {
            let expected = keys.isEmpty ? "none" : keys.sorted().joined(separator: ", ")
            throw self.error("unknown option '\(unknown.prefix(60))' (expected \(expected))")
        }
    }

    /// Refuses declared input ports (for kinds whose inputs are fixed).
    public func noDeclaredInputs() throws {
        guard self.node.declaredInputs.isEmpty else { throw self.error("this kind does not take declared inputs") }
    }

    /// Refuses declared output ports (for kinds whose outputs are fixed).
    public func noDeclaredOutputs() throws {
        guard self.node.declaredOutputs.isEmpty else { throw self.error("this kind does not take declared outputs") }
    }

    public func value(_ key: String) -> JSONValue? {
        switch self.node.options[key] {
        case nil, .null?: nil
        case let value?: value
        }
    }

    public func string(_ key: String) throws -> String {
        guard let value = try self.optionalString(key) else { throw self.error("option '\(key)' is missing") }
        return value
    }

    public func optionalString(_ key: String) throws -> String? {
        switch self.value(key) {
        case nil: return nil
        case .string(let value)?: return value
        default: throw self.error("option '\(key)' must be a string")
        }
    }

    public func optionalNumber(_ key: String) throws -> Double? {
        switch self.value(key) {
        case nil: return nil
        case .number(let value)? where value.isFinite: return value
        default: throw self.error("option '\(key)' must be a number")
        }
    }

    /// A whole number in `range`.
    public func optionalInteger(_ key: String, in range: ClosedRange<Int>) throws -> Int? {
        guard let number = try self.optionalNumber(key) else { return nil }
        guard number.rounded() == number, number >= Double(range.lowerBound), number <= Double(range.upperBound) else {
            throw self.error("option '\(key)' must be a whole number from \(range.lowerBound) to \(range.upperBound)")
        }
        return Int(number)
    }

    public func optionalBool(_ key: String) throws -> Bool? {
        switch self.value(key) {
        case nil: return nil
        case .bool(let value)?: return value
        default: throw self.error("option '\(key)' must be true or false")
        }
    }

    /// A string template in option `key`, checked against the node's declared inputs.
    public func template(_ key: String) throws -> RunnerTemplate? {
        guard let text = try self.optionalString(key) else { return nil }
        let template: RunnerTemplate
        do {
            template = try RunnerTemplate(text)
        } catch let error as RunnerError {
            throw self.error("option '\(key)': \(error.message)")
        }
        try self.checkNames(template.inputNames, in: key)
        return template
    }

    /// A JSON template in option `key`, checked against the node's declared inputs.
    public func jsonTemplate(_ key: String) throws -> RunnerJSONTemplate? {
        guard let value = self.value(key) else { return nil }
        let template: RunnerJSONTemplate
        do {
            template = try RunnerJSONTemplate(value)
        } catch let error as RunnerError {
            throw self.error("option '\(key)': \(error.message)")
        }
        try self.checkNames(template.inputNames, in: key)
        return template
    }

    private func checkNames(_ names: Set<String>, in key: String) throws {
        let declared = Set(self.node.declaredInputs.map(\.name))
        if let unknown = names.subtracting(declared).sorted().first {
            throw self.error(
                "option '\(key)' reads '{{\(unknown)}}', which is not a declared input (declare it in \"inputs\")"
            )
        }
    }
}

// MARK: - Registry

/// The kinds a runner definition may use, by name. Starts with the built-ins; `register` adds a kind or replaces the
/// one of the same name (so a host may swap the built-in `http` for one with its own policy).
public struct RunnerNodeRegistry: Sendable {
    private var kinds: [String: any RunnerNodeKind]

    /// The built-in kinds: input, output, http, template, delay, publish, subscribe, branch.
    public init() {
        self.kinds = [:]
        for kind in Self.builtInKinds { self.register(kind) }
    }

    /// A registry with no kinds at all.
    public static var empty: RunnerNodeRegistry {
        var registry = RunnerNodeRegistry()
        registry.kinds = [:]
        return registry
    }

    static let builtInKinds: [any RunnerNodeKind] = [
        RunnerInputKind(), RunnerOutputKind(), RunnerHTTPKind(), RunnerTemplateKind(), RunnerDelayKind(),
        RunnerPublishKind(), RunnerSubscribeKind(), RunnerBranchKind(),
    ]

    /// Adds `kind`, replacing a kind of the same name.
    public mutating func register(_ kind: any RunnerNodeKind) {
        self.kinds[kind.name] = kind
    }

    public func kind(named name: String) -> (any RunnerNodeKind)? {
        self.kinds[name]
    }

    /// The names of the registered kinds, sorted.
    public var names: [String] {
        self.kinds.keys.sorted()
    }
}

/// A kind with fixed ports and no options: the shortest way to add your own node.
///
///     registry.register(RunnerSimpleKind(name: "uppercase", inputs: [RunnerPort("text", .string)],
///                                        outputs: [RunnerPort("text", .string)]) { context in
///         ["text": .string((context.inputs["text"]?.stringValue ?? "").uppercased())]
///     })
public struct RunnerSimpleKind: RunnerNodeKind {
    public let name: String
    public let inputs: [RunnerPort]
    public let outputs: [RunnerPort]
    public let body: @Sendable (RunnerNodeContext) async throws -> RunnerNodeResult

    public init(
        name: String,
        inputs: [RunnerPort],
        outputs: [RunnerPort],
        run: @escaping @Sendable (RunnerNodeContext) async throws -> RunnerNodeResult
    ) {
        self.name = name
        self.inputs = inputs
        self.outputs = outputs
        self.body = run
    }

    public func prepare(_ node: RunnerNodeDefinition) throws -> RunnerPreparedNode {
        let options = RunnerNodeOptions(node)
        try options.allowOnly([])
        try options.noDeclaredInputs()
        try options.noDeclaredOutputs()
        return RunnerPreparedNode(inputs: self.inputs, outputs: self.outputs, run: self.body)
    }
}
