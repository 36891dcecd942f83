import StorkCore
import Synchronization

// MARK: - RunnerExecution
//
// One run of a program. `run()` executes the graph in a task group (independent nodes run at the same time, up to
// `maxConcurrentNodes`), reports every step on `events` and returns the outcome. The host:
//
//     let execution = RunnerExecution(program: program, runId: runId, inputs: inputs, user: user.ruleValue,
//                                     effects: effectsActingAs(user))
//     try await withThrowingDiscardingTaskGroup { group in
//         group.addTask { for await event in execution.events { try await send(event.jsonText, to: userSubject) } }
//         let outcome = await execution.run()       // the REST call answers with this
//     }
//
// and calls `pause()` / `resume()` from other tasks; cancelling the task that awaits `run()` cancels the run.
//
// Pausing stops new work and holds nothing back: while paused no node starts, streaming nodes neither pull nor emit,
// and nodes already inside an effect (an HTTP request, a delay) finish and report. `events` is an unbounded buffer:
// events wait there until the host reads them, paused or not.

/// How a run ended.
public enum RunnerOutcome: Sendable, Hashable {
    /// Every node ran or was skipped: one value per output node (null for a skipped one).
    case completed([String: JSONValue])
    case failed(RunnerError)
}

/// Bounds on one run.
public struct RunnerExecutionConfiguration: Sendable, Hashable {
    /// How many nodes may run at the same time; 1 runs them one by one in topological order.
    public var maxConcurrentNodes: Int = 8
    /// How many items one node may emit on its stream ports in one run; one more fails the node.
    public var maxStreamItems: Int = 10_000

    public init() {}
}

/// One run of a `RunnerProgram`. Create one per run; `run()` may be called once.
public final class RunnerExecution: Sendable {
    public let runId: String
    public let program: RunnerProgram
    /// The run's events, in order, ending with `completed` or `failed`; finishes after that.
    public let events: AsyncStream<RunnerEvent>

    private let inputs: [String: JSONValue]
    private let user: JSONValue
    private let effects: any RunnerEffects
    private let configuration: RunnerExecutionConfiguration
    private let continuation: AsyncStream<RunnerEvent>.Continuation
    let control: RunnerRunControl
    private let started = Mutex(false)

    /// - Parameters:
    ///   - inputs: values for the runner's input nodes, by input name (checked when the run starts).
    ///   - user: who runs it, as `AuthenticatedUser.ruleValue` (conditions read it as `user`).
    ///   - effects: the host's HTTP, publish, subscribe, sleep and time for this run.
    public init(
        program: RunnerProgram,
        runId: String,
        inputs: [String: JSONValue],
        user: JSONValue = .null,
        effects: any RunnerEffects,
        configuration: RunnerExecutionConfiguration = RunnerExecutionConfiguration()
    ) {
        self.program = program
        self.runId = runId
        self.inputs = inputs
        self.user = user
        self.effects = effects
        self.configuration = configuration
        (self.events, self.continuation) = AsyncStream.makeStream(of: RunnerEvent.self)
        self.control = RunnerRunControl()
    }

    // MARK: Pause and resume

    /// Stops new work: no node starts and streaming nodes stop pulling until `resume()`. Emits `paused`. Does
    /// nothing when already paused or finished.
    public func pause() {
        if self.control.setPaused(true) { self.continuation.yield(.paused(runId: self.runId)) }
    }

    /// Lets a paused run go on. Emits `resumed`. Does nothing when not paused or finished.
    public func resume() {
        if self.control.setPaused(false) { self.continuation.yield(.resumed(runId: self.runId)) }
    }

    public var isPaused: Bool {
        self.control.isPaused
    }

    // MARK: Running

    /// Runs the graph to the end and returns how it ended (also sent as the last event). Cancelling the calling task
    /// cancels every running node and ends the run with `failed` (code `cancelled`).
    public func run() async -> RunnerOutcome {
        let startedBefore = self.started.withLock { started in
            defer { started = true }
            return started
        }
        precondition(!startedBefore, "run() called twice on run \(self.runId)")
        do {
            try self.program.checkInputs(self.inputs)
        } catch {
            return self.finish(.failed(self.runnerError(error, node: nil)))
        }
        return await withTaskGroup(of: NodeCompletion.self) { group -> RunnerOutcome in
            var scheduler = RunnerScheduler(program: self.program, maxConcurrent: self.configuration.maxConcurrentNodes)
            var actions = scheduler.begin()
            while true {
                for action in actions {
                    switch action {
                    case .start(let node, let inputs):
                        group.addTask { await self.runNode(node, inputs: inputs) }
                    case .skip(let node):
                        self.continuation.yield(
                            .skipped(runId: self.runId, nodeId: self.program.nodes[node].definition.id)
                        )
                    case .complete(let outputs):
                        return self.finish(.completed(outputs))
                    }
                }
                guard let completion = await group.next() else {
                    preconditionFailure("run \(self.runId): no node running and the run not complete")
                }
                if Task.isCancelled {
                    group.cancelAll()
                    return self.finish(.failed(RunnerError(.cancelled, "the run was cancelled")))
                }
                switch completion {
                case .finished(let node, let result):
                    actions = scheduler.finished(node: node, result: result)
                case .failed(let node, let error):
                    // Report first, so that nothing a cancelled node still says comes after the failure.
                    let outcome = self.finish(.failed(self.runnerError(error, node: node)))
                    group.cancelAll()
                    return outcome
                }
            }
        }
    }

    private enum NodeCompletion: Sendable {
        case finished(Int, RunnerNodeResult)
        case failed(Int, any Error)
    }

    private func runNode(_ index: Int, inputs: [String: JSONValue]) async -> NodeCompletion {
        let node = self.program.nodes[index]
        let nodeId = node.definition.id
        do {
            try await self.control.waitWhilePaused()
            for port in node.prepared.inputs {
                if let value = inputs[port.name], !port.type.accepts(value) {
                    throw RunnerError(
                        .typeMismatch,
                        "node '\(nodeId)' (\(node.definition.kind)): input '\(port.name)' takes \(port.type), got \(Self.typeName(value))",
                        nodeId: nodeId,
                        port: port.name
                    )
                }
            }
            let streamPorts = Set(node.prepared.outputs.filter { $0.type == .stream }.map(\.name))
            let collector = RunnerStreamCollector(
                ports: streamPorts,
                limit: self.configuration.maxStreamItems,
                continuation: self.continuation
            )
            let context = RunnerNodeContext(
                runId: self.runId,
                node: node.definition,
                inputs: inputs,
                runInputs: self.inputs,
                user: self.user,
                effects: self.effects,
                control: self.control,
                stream: collector
            )
            var result = try await node.prepared.run(context)
            try Task.checkCancellation()
            var output: [String: JSONValue] = [:]
            for (port, value) in result.values {
                guard let declared = node.prepared.outputs.first(where: { $0.name == port }), declared.type != .stream
                else {
                    throw RunnerError(
                        .nodeFailed,
                        "node '\(nodeId)' (\(node.definition.kind)) gave a value for '\(port)', which is not one of its non-stream output ports",
                        nodeId: nodeId,
                        port: port
                    )
                }
                guard declared.type.accepts(value) else {
                    throw RunnerError(
                        .typeMismatch,
                        "node '\(nodeId)' (\(node.definition.kind)): output '\(port)' is \(declared.type), got \(Self.typeName(value))",
                        nodeId: nodeId,
                        port: port
                    )
                }
            }
            for port in node.prepared.outputs where !result.inactivePorts.contains(port.name) {
                if port.type == .stream {
                    result.values[port.name] = .array(collector.items(on: port.name))
                } else {
                    output[port.name] = result.values[port.name] ?? .null
                }
            }
            self.continuation.yield(.node(runId: self.runId, nodeId: nodeId, output: .object(output)))
            return .finished(index, result)
        } catch {
            return .failed(index, error)
        }
    }

    /// Sends the last event, ends `events`, and stops pause and resume from reporting.
    private func finish(_ outcome: RunnerOutcome) -> RunnerOutcome {
        self.control.finish()
        switch outcome {
        case .completed(let outputs):
            self.continuation.yield(.completed(runId: self.runId, outputs: outputs))
        case .failed(let error):
            self.continuation.yield(.failed(runId: self.runId, nodeId: error.nodeId, error: error))
        }
        self.continuation.finish()
        return outcome
    }

    private func runnerError(_ error: any Error, node: Int?) -> RunnerError {
        let definition = node.map { self.program.nodes[$0].definition }
        if var error = error as? RunnerError {
            if error.nodeId == nil { error.nodeId = definition?.id }
            return error
        }
        guard let definition else { return RunnerError(.nodeFailed, "\(error)", underlying: error) }
        if error is CancellationError {
            return RunnerError(
                .nodeFailed,
                "node '\(definition.id)' (\(definition.kind)) was cancelled",
                nodeId: definition.id,
                underlying: error
            )
        }
        return RunnerError(
            .nodeFailed,
            "node '\(definition.id)' (\(definition.kind)) failed: \(error)",
            nodeId: definition.id,
            underlying: error
        )
    }

    private static func typeName(_ value: JSONValue) -> String {
        switch value {
        case .null: "null"
        case .bool: "boolean"
        case .number: "number"
        case .string: "string"
        case .array: "array"
        case .object: "object"
        }
    }
}

// MARK: - RunnerRunControl

/// The pause gate of a run: nodes wait here while the run is paused; cancellation lets them go with an error.
final class RunnerRunControl: Sendable {
    private struct State {
        var paused = false
        var finished = false
        var nextId: UInt64 = 0
        var waiters: [UInt64: CheckedContinuation<Void, any Error>] = [:]
        var cancelled: Set<UInt64> = []
        /// Tests wait here until so many nodes are held by the gate.
        var watchers: [(count: Int, continuation: CheckedContinuation<Void, Never>)] = []
    }

    private let state = Mutex(State())

    var isPaused: Bool {
        self.state.withLock { $0.paused }
    }

    /// Sets the flag; true when it changed (and the run is not finished). Resuming lets every waiter go.
    func setPaused(_ paused: Bool) -> Bool {
        let (changed, released) = self.state.withLock { state -> (Bool, [CheckedContinuation<Void, any Error>]) in
            guard !state.finished, state.paused != paused else { return (false, []) }
            state.paused = paused
            guard !paused else { return (true, []) }
            defer { state.waiters.removeAll() }
            return (true, Array(state.waiters.values))
        }
        for waiter in released { waiter.resume() }
        return changed
    }

    /// After the run: pause and resume no longer change anything, and nothing waits.
    func finish() {
        let released = self.state.withLock { state -> [CheckedContinuation<Void, any Error>] in
            state.finished = true
            state.paused = false
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        for waiter in released { waiter.resume(throwing: CancellationError()) }
    }

    /// Returns at once unless paused; waits for resume while paused; throws `CancellationError` when cancelled.
    func waitWhilePaused() async throws {
        try Task.checkCancellation()
        guard self.isPaused else { return }
        let id = self.state.withLock { state -> UInt64 in
            defer { state.nextId += 1 }
            return state.nextId
        }
        defer { _ = self.state.withLock { $0.cancelled.remove(id) } }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let (verdict, watchers) = self.state.withLock {
                    state -> (Result<Void, any Error>?, [CheckedContinuation<Void, Never>]) in
                    if state.cancelled.contains(id) { return (.failure(CancellationError()), []) }
                    if !state.paused { return (.success(()), []) }
                    state.waiters[id] = continuation
                    let count = state.waiters.count
                    let due = state.watchers.filter { $0.count <= count }.map(\.continuation)
                    state.watchers.removeAll { $0.count <= count }
                    return (nil, due)
                }
                if let verdict { continuation.resume(with: verdict) }
                for watcher in watchers { watcher.resume() }
            }
        } onCancel: {
            let waiter = self.state.withLock { state -> CheckedContinuation<Void, any Error>? in
                if let waiter = state.waiters.removeValue(forKey: id) { return waiter }
                state.cancelled.insert(id)
                return nil
            }
            waiter?.resume(throwing: CancellationError())
        }
    }

    /// How many nodes the gate holds.
    var waiting: Int {
        self.state.withLock { $0.waiters.count }
    }

    /// Returns once the gate holds at least `count` nodes (for tests: "the run is really stopped now").
    func untilWaiting(atLeast count: Int) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = self.state.withLock { state -> Bool in
                if state.waiters.count >= count { return true }
                state.watchers.append((count, continuation))
                return false
            }
            if ready { continuation.resume() }
        }
    }
}

// MARK: - RunnerStreamCollector

/// Collects what one node emits on its stream ports and reports each item as it comes.
final class RunnerStreamCollector: Sendable {
    private let ports: Set<String>
    private let limit: Int
    private let continuation: AsyncStream<RunnerEvent>.Continuation
    private let state = Mutex<(items: [String: [JSONValue]], total: Int)>(([:], 0))

    init(ports: Set<String>, limit: Int, continuation: AsyncStream<RunnerEvent>.Continuation) {
        self.ports = ports
        self.limit = limit
        self.continuation = continuation
    }

    func append(_ item: JSONValue, on port: String, runId: String, nodeId: String) throws {
        guard self.ports.contains(port) else {
            throw RunnerError(
                .nodeFailed,
                "node '\(nodeId)' emitted on '\(port)', which is not one of its stream output ports",
                nodeId: nodeId,
                port: port
            )
        }
        try self.state.withLock { state in
            guard state.total < self.limit else {
                throw RunnerError(
                    .nodeFailed,
                    "node '\(nodeId)' emitted more than \(self.limit) items",
                    nodeId: nodeId,
                    port: port
                )
            }
            state.total += 1
            state.items[port, default: []].append(item)
            let index = state.items[port, default: []].count - 1
            // Yield under the lock so that items of one node go out in their order.
            self.continuation.yield(.item(runId: runId, nodeId: nodeId, port: port, index: index, value: item))
        }
    }

    func items(on port: String) -> [JSONValue] {
        self.state.withLock { $0.items[port] ?? [] }
    }
}
