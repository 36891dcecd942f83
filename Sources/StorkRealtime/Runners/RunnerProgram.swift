import StorkCore

// MARK: - RunnerProgram
//
// A definition checked against a registry: every kind known, every node prepared, every edge between existing ports
// of types that meet, every required input fed, input and output nodes present, no cycle. The nodes are kept in a
// topological order (ties broken by the order of the definition), which is also the order nodes start in when a run
// may start only one at a time. A program is immutable and shared by all its runs.

/// A runner definition compiled for running. Build one per loaded definition and start any number of
/// `RunnerExecution`s from it.
public struct RunnerProgram: Sendable {
    struct Source: Sendable, Hashable {
        var node: Int
        var port: String
    }

    struct Node: Sendable {
        var definition: RunnerNodeDefinition
        var prepared: RunnerPreparedNode
        /// For each input port with edges: where its values come from, in the order of the definition's edges.
        var sources: [String: [Source]]
        /// Nodes this one feeds, each once.
        var downstream: [Int]
        /// How many distinct nodes feed this one.
        var upstreamCount: Int
    }

    public let definition: RunnerDefinition
    /// In topological order.
    let nodes: [Node]
    /// The run inputs the input nodes read, sorted by name.
    public let inputs: [RunnerPreparedNode.RunInput]
    /// The names of the run outputs, sorted.
    public let outputNames: [String]

    /// Compiles `definition` with the kinds of `registry`.
    /// - Throws: `RunnerError` naming the node, port or edge at fault: `duplicateId`, `unknownKind`,
    ///   `invalidOptions`, `unknownNode`, `unknownPort`, `typeMismatch`, `missingEdge`, `cycle`, `missingEndpoint`.
    public init(definition: RunnerDefinition, registry: RunnerNodeRegistry = RunnerNodeRegistry()) throws {
        self.definition = definition

        // Ids, kinds, preparation.
        var indexById: [String: Int] = [:]
        for (index, node) in definition.nodes.enumerated() {
            guard indexById[node.id] == nil else {
                throw RunnerError(.duplicateId, "two nodes have the id '\(node.id)'", nodeId: node.id)
            }
            indexById[node.id] = index
        }
        var prepared: [RunnerPreparedNode] = []
        prepared.reserveCapacity(definition.nodes.count)
        for node in definition.nodes {
            guard let kind = registry.kind(named: node.kind) else {
                throw RunnerError(
                    .unknownKind,
                    "node '\(node.id)': unknown kind \(JSONValue.string(String(node.kind.prefix(60)))) (known: \(registry.names.joined(separator: ", ")))",
                    nodeId: node.id
                )
            }
            let preparedNode: RunnerPreparedNode
            do {
                preparedNode = try kind.prepare(node)
            } catch var error as RunnerError {
                error.nodeId = error.nodeId ?? node.id
                throw error
            } catch {
                throw RunnerError(
                    .invalidOptions,
                    "node '\(node.id)' (\(node.kind)): \(error)",
                    nodeId: node.id,
                    underlying: error
                )
            }
            for (ports, side) in [(preparedNode.inputs, "input"), (preparedNode.outputs, "output")] {
                var seen: Set<String> = []
                for port in ports where !seen.insert(port.name).inserted {
                    throw RunnerError(
                        .duplicateId,
                        "node '\(node.id)': two \(side) ports are named '\(port.name)'",
                        nodeId: node.id,
                        port: port.name
                    )
                }
            }
            prepared.append(preparedNode)
        }

        // Edges.
        var sources: [[String: [Source]]] = Array(repeating: [:], count: definition.nodes.count)
        var downstream: [Set<Int>] = Array(repeating: [], count: definition.nodes.count)
        var seenEdges: Set<RunnerEdge> = []
        for edge in definition.edges {
            guard seenEdges.insert(edge).inserted else {
                throw RunnerError(
                    .malformed,
                    "the edge \(edge) appears twice",
                    nodeId: edge.to.node,
                    port: edge.to.port
                )
            }
            guard let from = indexById[edge.from.node] else {
                throw RunnerError(
                    .unknownNode,
                    "edge \(edge): there is no node '\(edge.from.node)'",
                    nodeId: edge.from.node
                )
            }
            guard let to = indexById[edge.to.node] else {
                throw RunnerError(
                    .unknownNode,
                    "edge \(edge): there is no node '\(edge.to.node)'",
                    nodeId: edge.to.node
                )
            }
            guard let output = prepared[from].outputs.first(where: { $0.name == edge.from.port }) else {
                throw RunnerError(
                    .unknownPort,
                    "edge \(edge): node '\(edge.from.node)' (\(definition.nodes[from].kind)) has no output port '\(edge.from.port)' (it has: \(Self.list(prepared[from].outputs)))",
                    nodeId: edge.from.node,
                    port: edge.from.port
                )
            }
            guard let input = prepared[to].inputs.first(where: { $0.name == edge.to.port }) else {
                throw RunnerError(
                    .unknownPort,
                    "edge \(edge): node '\(edge.to.node)' (\(definition.nodes[to].kind)) has no input port '\(edge.to.port)' (it has: \(Self.list(prepared[to].inputs)))",
                    nodeId: edge.to.node,
                    port: edge.to.port
                )
            }
            guard output.type.canFeed(input.type) else {
                throw RunnerError(
                    .typeMismatch,
                    "edge \(edge): output '\(edge.from.port)' of node '\(edge.from.node)' is \(output.type), input '\(edge.to.port)' of node '\(edge.to.node)' takes \(input.type)",
                    nodeId: edge.to.node,
                    port: edge.to.port
                )
            }
            sources[to][edge.to.port, default: []].append(Source(node: from, port: edge.from.port))
            downstream[from].insert(to)
        }

        // Inputs: required ones fed, single ones fed once.
        for (index, node) in definition.nodes.enumerated() {
            for port in prepared[index].inputs {
                let count = sources[index][port.name]?.count ?? 0
                if count == 0, port.required {
                    throw RunnerError(
                        .missingEdge,
                        "node '\(node.id)' (\(node.kind)): the required input '\(port.name)' has no edge",
                        nodeId: node.id,
                        port: port.name
                    )
                }
                if count > 1, !port.acceptsMany {
                    throw RunnerError(
                        .missingEdge,
                        "node '\(node.id)' (\(node.kind)): the input '\(port.name)' has \(count) edges and takes one",
                        nodeId: node.id,
                        port: port.name
                    )
                }
            }
        }

        // Input and output nodes.
        var runInputs: [String: RunnerPreparedNode.RunInput] = [:]
        var runOutputs: Set<String> = []
        for (index, node) in definition.nodes.enumerated() {
            if let runInput = prepared[index].runInput {
                guard runInputs.updateValue(runInput, forKey: runInput.name) == nil else {
                    throw RunnerError(
                        .duplicateId,
                        "node '\(node.id)': another input node already takes the run input '\(runInput.name)'",
                        nodeId: node.id
                    )
                }
            }
            if let runOutput = prepared[index].runOutput {
                guard runOutputs.insert(runOutput).inserted else {
                    throw RunnerError(
                        .duplicateId,
                        "node '\(node.id)': another output node already gives the run output '\(runOutput)'",
                        nodeId: node.id
                    )
                }
            }
        }
        guard !runInputs.isEmpty else {
            throw RunnerError(.missingEndpoint, "the runner has no input node (kind \"input\")")
        }
        guard !runOutputs.isEmpty else {
            throw RunnerError(.missingEndpoint, "the runner has no output node (kind \"output\")")
        }
        self.inputs = runInputs.keys.sorted().compactMap { runInputs[$0] }
        self.outputNames = runOutputs.sorted()

        // Topological order (Kahn), ties in definition order; what is left over is on or after a cycle.
        let upstreamCounts: [Int] = (0..<definition.nodes.count).map { index in
            Set(sources[index].values.flatMap { $0.map(\.node) }).count
        }
        var remaining = upstreamCounts
        var ready = (0..<definition.nodes.count).filter { remaining[$0] == 0 }.reversed() as [Int]
        var order: [Int] = []
        order.reserveCapacity(definition.nodes.count)
        while let next = ready.popLast() {
            order.append(next)
            var released: [Int] = []
            for child in downstream[next] {
                remaining[child] -= 1
                if remaining[child] == 0 { released.append(child) }
            }
            // Keep `ready` sorted descending so that popLast gives the earliest node of the definition.
            ready.append(contentsOf: released)
            ready.sort(by: >)
        }
        guard order.count == definition.nodes.count else {
            throw Self.cycleError(definition: definition, remaining: remaining, downstream: downstream)
        }

        var position: [Int] = Array(repeating: 0, count: order.count)
        for (newIndex, oldIndex) in order.enumerated() { position[oldIndex] = newIndex }
        self.nodes = order.map { oldIndex in
            Node(
                definition: definition.nodes[oldIndex],
                prepared: prepared[oldIndex],
                sources: sources[oldIndex].mapValues { $0.map { Source(node: position[$0.node], port: $0.port) } },
                downstream: downstream[oldIndex].map { position[$0] }.sorted(),
                upstreamCount: upstreamCounts[oldIndex]
            )
        }
    }

    private static func list(_ ports: [RunnerPort]) -> String {
        ports.isEmpty ? "none" : ports.map(\.description).joined(separator: ", ")
    }

    /// Follows edges among the nodes Kahn's algorithm could not order until one repeats, and names that loop.
    private static func cycleError(
        definition: RunnerDefinition,
        remaining: [Int],
        downstream: [Set<Int>]
    ) -> RunnerError {
        let stuck = Set(remaining.indices.filter { remaining[$0] > 0 })
        // Every stuck node has a stuck parent (one not ordered yet), so walking from parent to parent must come back
        // to a node already seen: that loop is a cycle.
        var parents: [Int: Int] = [:]
        for node in stuck.sorted() {
            for child in downstream[node] where stuck.contains(child) && parents[child] == nil { parents[child] = node }
        }
        var current = stuck.min() ?? 0
        var visited: [Int] = []
        var seenAt: [Int: Int] = [:]
        while seenAt[current] == nil, let parent = parents[current] {
            seenAt[current] = visited.count
            visited.append(current)
            current = parent
        }
        var loop = seenAt[current].map { Array(visited[$0...]).reversed() as [Int] } ?? visited
        // Start the loop at its earliest node in the definition, so the message does not depend on the walk.
        if let first = loop.indices.min(by: { loop[$0] < loop[$1] }) { loop = Array(loop[first...] + loop[..<first]) }
        let names = loop.map { definition.nodes[$0].id }
        let text = (names + (names.first.map { [$0] } ?? [])).map { "'\($0)'" }.joined(separator: " -> ")
        return RunnerError(.cycle, "the edges form a cycle: \(text)", nodeId: names.first)
    }

    // MARK: Run inputs

    /// Checks the inputs of a run: every name is a run input, every required one is there, every value has the
    /// input's type.
    /// - Throws: `RunnerError(.invalidInput)` naming the input (and its node).
    public func checkInputs(_ inputs: [String: JSONValue]) throws {
        let known = Set(self.inputs.map(\.name))
        if let unknown = inputs.keys.sorted().first(where: { !known.contains($0) }) {
            throw RunnerError(
                .invalidInput,
                "unknown input \(JSONValue.string(String(unknown.prefix(60)))) (the runner takes: \(self.inputs.map(\.name).joined(separator: ", ")))"
            )
        }
        for node in self.nodes {
            if let runInput = node.prepared.runInput {
                _ = try Self.value(of: runInput, in: inputs, nodeId: node.definition.id)
            }
        }
    }

    /// The value a run input takes: the one given, else the default, else null when optional.
    static func value(
        of runInput: RunnerPreparedNode.RunInput,
        in inputs: [String: JSONValue],
        nodeId: String
    ) throws -> JSONValue {
        guard let value = inputs[runInput.name] ?? runInput.defaultValue else {
            if runInput.required {
                throw RunnerError(
                    .invalidInput,
                    "the input '\(runInput.name)' is missing (node '\(nodeId)')",
                    nodeId: nodeId,
                    port: "value"
                )
            }
            return .null
        }
        guard runInput.type.accepts(value) else {
            throw RunnerError(
                .invalidInput,
                "the input '\(runInput.name)' must be of type \(runInput.type) (node '\(nodeId)')",
                nodeId: nodeId,
                port: "value"
            )
        }
        return value
    }
}
