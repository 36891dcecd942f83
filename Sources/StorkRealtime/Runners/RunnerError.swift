import StorkCore

// MARK: - RunnerError

/// Why a runner definition was refused or a run did not complete: a machine-readable code, a message for people that
/// names the node and port concerned, and those names on their own for programs.
public struct RunnerError: Error, Hashable, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public var rawValue: String
        public init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { self.rawValue }

        // Definition errors (found when a definition is decoded or compiled).

        /// The document is not JSON, or not the shape of a runner definition.
        public static let malformed = Code("malformed")
        /// The document is over one of `RunnerLimits`.
        public static let tooLarge = Code("too-large")
        /// Two nodes share an id, two input nodes a name, or two output nodes a name.
        public static let duplicateId = Code("duplicate-id")
        /// A node's `kind` is not in the registry.
        public static let unknownKind = Code("unknown-kind")
        /// An edge names a node that does not exist.
        public static let unknownNode = Code("unknown-node")
        /// An edge names a port its node does not have.
        public static let unknownPort = Code("unknown-port")
        /// An edge joins ports whose types cannot meet.
        public static let typeMismatch = Code("type-mismatch")
        /// A required input port has no edge, or an input port that takes one edge has several.
        public static let missingEdge = Code("missing-edge")
        /// The edges form a cycle.
        public static let cycle = Code("cycle")
        /// The definition has no `input` node or no `output` node.
        public static let missingEndpoint = Code("missing-endpoint")
        /// A node's options (or declared ports) are not what its kind accepts.
        public static let invalidOptions = Code("invalid-options")

        // Run errors (reported in a `failed` event).

        /// The inputs given to `run` do not match the runner's input nodes.
        public static let invalidInput = Code("invalid-input")
        /// A node threw, or produced a value its ports do not allow.
        public static let nodeFailed = Code("node-failed")
        /// The run was cancelled (the runner was unloaded, the client went away, the server is stopping).
        public static let cancelled = Code("cancelled")
    }

    public var code: Code
    public var message: String
    /// The node concerned, when there is one.
    public var nodeId: String?
    /// The port concerned, when there is one.
    public var port: String?
    /// The error underneath (a thrown error's description), when there is one.
    public var underlying: String?

    public init(
        _ code: Code,
        _ message: String,
        nodeId: String? = nil,
        port: String? = nil,
        underlying: (any Error)? = nil
    ) {
        self.code = code
        self.message = message
        self.nodeId = nodeId
        self.port = port
        self.underlying = underlying.map { String(describing: $0) }
    }

    public var description: String {
        if let underlying { return "\(self.code): \(self.message) (\(underlying))" }
        return "\(self.code): \(self.message)"
    }
}
