import StorkCore

// MARK: - RunnerScheduler
//
// The pure part of a run: which nodes may start, which are skipped, when the run is complete. No tasks, no clock:
// `RunnerExecution` feeds it node results and carries out the actions it returns.
//
// A node becomes ready when every node that feeds it has finished or been skipped. A ready node is skipped when one of
// its input ports with edges has no edge from a node that ran through an active port (a branch's arm not taken is
// inactive); otherwise it starts, if fewer than `maxConcurrent` nodes are running, earliest in topological order first.

struct RunnerScheduler: Sendable {
    enum Action: Sendable, Hashable {
        case start(node: Int, inputs: [String: JSONValue])
        case skip(node: Int)
        case complete(outputs: [String: JSONValue])
    }

    private let program: RunnerProgram
    private let maxConcurrent: Int
    private var remaining: [Int]
    private var results: [RunnerNodeResult?]
    private var skipped: [Bool]
    /// Ready nodes, sorted descending so that `popLast` gives the earliest.
    private var ready: [Int] = []
    private var running = 0
    private var settled = 0
    private var completed = false

    init(program: RunnerProgram, maxConcurrent: Int) {
        self.program = program
        self.maxConcurrent = max(1, maxConcurrent)
        self.remaining = program.nodes.map(\.upstreamCount)
        self.results = Array(repeating: nil, count: program.nodes.count)
        self.skipped = Array(repeating: false, count: program.nodes.count)
    }

    /// The first actions of a run.
    mutating func begin() -> [Action] {
        precondition(self.settled == 0 && self.running == 0 && self.ready.isEmpty, "begin called twice")
        self.ready = self.program.nodes.indices.filter { self.remaining[$0] == 0 }.reversed()
        return self.drain()
    }

    /// A node the last actions started has finished with `result` (stream ports already filled).
    mutating func finished(node: Int, result: RunnerNodeResult) -> [Action] {
        precondition(self.results[node] == nil && !self.skipped[node], "node \(node) finished twice")
        precondition(self.running > 0, "node \(node) finished while none was running")
        self.running -= 1
        self.results[node] = result
        self.settle(node)
        return self.drain()
    }

    private mutating func settle(_ node: Int) {
        self.settled += 1
        var released = false
        for child in self.program.nodes[node].downstream {
            self.remaining[child] -= 1
            if self.remaining[child] == 0 {
                self.ready.append(child)
                released = true
            }
        }
        if released { self.ready.sort(by: >) }
    }

    private mutating func drain() -> [Action] {
        var actions: [Action] = []
        while let next = self.ready.last {
            if let inputs = self.inputs(of: next) {
                guard self.running < self.maxConcurrent else { break }
                self.ready.removeLast()
                self.running += 1
                actions.append(.start(node: next, inputs: inputs))
            } else {
                self.ready.removeLast()
                self.skipped[next] = true
                actions.append(.skip(node: next))
                self.settle(next)
            }
        }
        if self.settled == self.program.nodes.count, !self.completed {
            self.completed = true
            actions.append(.complete(outputs: self.outputs()))
        }
        return actions
    }

    /// The values on a ready node's inputs, or nil when the node must be skipped.
    private func inputs(of node: Int) -> [String: JSONValue]? {
        var inputs: [String: JSONValue] = [:]
        for (port, sources) in self.program.nodes[node].sources {
            var found = false
            for source in sources {
                guard !self.skipped[source.node], let result = self.results[source.node],
                    !result.inactivePorts.contains(source.port)
                else { continue }
                inputs[port] = result.values[source.port] ?? .null
                found = true
                break
            }
            if !found { return nil }
        }
        return inputs
    }

    private func outputs() -> [String: JSONValue] {
        var outputs: [String: JSONValue] = [:]
        for (index, node) in self.program.nodes.enumerated() {
            guard let name = node.prepared.runOutput else { continue }
            outputs[name] = self.skipped[index] ? .null : (self.results[index]?.values["value"] ?? .null)
        }
        return outputs
    }
}
