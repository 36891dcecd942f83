import Foundation
import StorkCore
import Synchronization
import Testing

@testable import StorkRealtime

// MARK: - Fake effects

/// The host, faked: HTTP answered by a closure, publishes recorded, subscriptions fed by the test, and a manual clock
/// whose sleepers wake only when the test advances it. Tests wait for the fake to reach a state (`until`), never for
/// wall-clock time.
final class FakeRunnerEffects: RunnerEffects, Sendable {
    struct Sleeper {
        var id: UInt64
        var deadline: Int64
        var continuation: CheckedContinuation<Void, any Error>
    }

    struct State {
        var requests: [RunnerHTTPRequest] = []
        var published: [(subject: String, payload: JSONValue)] = []
        var subscriptions: [String: AsyncStream<RunnerMessage>.Continuation] = [:]
        var subscribed: [String] = []
        var unsubscribed: [String] = []
        var nanoseconds: Int64 = 1_700_000_000_000 * 1_000_000
        var sleepers: [Sleeper] = []
        var cancelledSleeps: Set<UInt64> = []
        var nextId: UInt64 = 0
        var watchers: [(predicate: @Sendable (State) -> Bool, continuation: CheckedContinuation<Void, Never>)] = []
    }

    private let state = Mutex(State())
    private let httpHandler: @Sendable (RunnerHTTPRequest) async throws -> RunnerHTTPResponse

    init(
        http: @escaping @Sendable (RunnerHTTPRequest) async throws -> RunnerHTTPResponse = { _ in
            RunnerHTTPResponse(status: 404)
        }
    ) {
        self.httpHandler = http
    }

    var snapshot: State {
        self.state.withLock { $0 }
    }

    /// Changes the state, then wakes the watchers whose condition now holds.
    @discardableResult
    private func mutate<T>(_ body: (inout State) -> T) -> T {
        let (result, due) = self.state.withLock { state -> (T, [CheckedContinuation<Void, Never>]) in
            let result = body(&state)
            let snapshot = state
            let due = state.watchers.filter { $0.predicate(snapshot) }.map(\.continuation)
            state.watchers.removeAll { $0.predicate(snapshot) }
            return (result, due)
        }
        for watcher in due { watcher.resume() }
        return result
    }

    /// Returns once `predicate` holds.
    func until(_ predicate: @escaping @Sendable (State) -> Bool) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = self.state.withLock { state -> Bool in
                if predicate(state) { return true }
                state.watchers.append((predicate, continuation))
                return false
            }
            if ready { continuation.resume() }
        }
    }

    // MARK: RunnerEffects

    func http(_ request: RunnerHTTPRequest) async throws -> RunnerHTTPResponse {
        self.mutate { $0.requests.append(request) }
        return try await self.httpHandler(request)
    }

    func publish(subject: String, payload: JSONValue) async throws {
        self.mutate { $0.published.append((subject, payload)) }
    }

    func subscribe(subject: String) async throws -> AsyncStream<RunnerMessage> {
        let (stream, continuation) = AsyncStream.makeStream(of: RunnerMessage.self)
        continuation.onTermination = { _ in self.mutate { $0.unsubscribed.append(subject) } }
        self.mutate {
            $0.subscriptions[subject] = continuation
            $0.subscribed.append(subject)
        }
        return stream
    }

    func sleep(for duration: Duration) async throws {
        let id = self.mutate { state -> UInt64 in
            defer { state.nextId += 1 }
            return state.nextId
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let cancelled = self.mutate { state -> Bool in
                    if state.cancelledSleeps.contains(id) { return true }
                    let deadline = state.nanoseconds + duration.nanosecondsClamped
                    state.sleepers.append(Sleeper(id: id, deadline: deadline, continuation: continuation))
                    return false
                }
                if cancelled { continuation.resume(throwing: CancellationError()) }
            }
        } onCancel: {
            let sleeper = self.mutate { state -> Sleeper? in
                if let index = state.sleepers.firstIndex(where: { $0.id == id }) {
                    return state.sleepers.remove(at: index)
                }
                state.cancelledSleeps.insert(id)
                return nil
            }
            sleeper?.continuation.resume(throwing: CancellationError())
        }
    }

    func now() -> Double {
        Double(self.state.withLock { $0.nanoseconds }) / 1e6
    }

    // MARK: Driving

    /// Moves the manual clock on and wakes the sleepers that are due.
    func advance(by duration: Duration) {
        let due = self.mutate { state -> [Sleeper] in
            state.nanoseconds += duration.nanosecondsClamped
            let due = state.sleepers.filter { $0.deadline <= state.nanoseconds }
            state.sleepers.removeAll { $0.deadline <= state.nanoseconds }
            return due
        }
        for sleeper in due { sleeper.continuation.resume() }
    }

    /// Delivers a message to the subscription made on `subscription` (with `subject`, default the same).
    func deliver(_ data: JSONValue, to subscription: String, subject: String? = nil) {
        let continuation = self.state.withLock { $0.subscriptions[subscription] }
        #expect(continuation != nil, "no subscription on \(subscription)")
        continuation?.yield(RunnerMessage(subject: subject ?? subscription, data: data))
    }

    /// Ends the subscription on `subject` from the host's side.
    func endSubscription(_ subject: String) {
        let continuation = self.state.withLock { $0.subscriptions[subject] }
        continuation?.finish()
    }
}

// MARK: - Event log

/// Collects a run's events and lets a test wait until they show something.
final class RunnerEventLog: Sendable {
    private let state = Mutex<
        (
            events: [RunnerEvent],
            watchers: [(predicate: @Sendable ([RunnerEvent]) -> Bool, continuation: CheckedContinuation<Void, Never>)]
        )
    >(([], []))

    var events: [RunnerEvent] {
        self.state.withLock { $0.events }
    }

    func collect(_ events: AsyncStream<RunnerEvent>) async {
        for await event in events {
            let due = self.state.withLock { state -> [CheckedContinuation<Void, Never>] in
                state.events.append(event)
                let snapshot = state.events
                let due = state.watchers.filter { $0.predicate(snapshot) }.map(\.continuation)
                state.watchers.removeAll { $0.predicate(snapshot) }
                return due
            }
            for watcher in due { watcher.resume() }
        }
        // Release anyone still waiting: nothing more will come.
        let rest = self.state.withLock { state in
            defer { state.watchers.removeAll() }
            return state.watchers.map(\.continuation)
        }
        for watcher in rest { watcher.resume() }
    }

    /// Returns once `predicate` holds for the events so far (or the stream has ended).
    func until(_ predicate: @escaping @Sendable ([RunnerEvent]) -> Bool) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = self.state.withLock { state -> Bool in
                if predicate(state.events) { return true }
                state.watchers.append((predicate, continuation))
                return false
            }
            if ready { continuation.resume() }
        }
    }
}

extension RunnerEvent {
    /// The node id of a node, item or skipped event.
    var eventNodeId: String? {
        switch self {
        case .node(_, let nodeId, _), .item(_, let nodeId, _, _, _), .skipped(_, let nodeId): nodeId
        case .failed(_, let nodeId, _): nodeId
        default: nil
        }
    }

    var isItem: Bool {
        if case .item = self { return true }
        return false
    }
}

// MARK: - Running

/// Runs `execution` while `body` drives it; returns the outcome and every event.
func runWhile(
    _ execution: RunnerExecution,
    _ body: @Sendable (RunnerEventLog) async throws -> Void = { _ in }
) async throws -> (outcome: RunnerOutcome, events: [RunnerEvent]) {
    let log = RunnerEventLog()
    let outcome = try await withThrowingTaskGroup(of: RunnerOutcome?.self) { group -> RunnerOutcome? in
        group.addTask {
            await log.collect(execution.events)
            return nil
        }
        group.addTask { await execution.run() }
        try await body(log)
        var outcome: RunnerOutcome?
        for try await result in group where result != nil { outcome = result }
        return outcome
    }
    return (try #require(outcome), log.events)
}

/// Decodes and compiles a definition given as a JSON value.
func program(
    _ document: JSONValue,
    registry: RunnerNodeRegistry = RunnerNodeRegistry()
) throws -> RunnerProgram {
    try RunnerProgram(definition: RunnerDefinition(document: document), registry: registry)
}

/// A definition document: nodes and `"a.x -> b.y"` edges.
func runnerDocument(id: String = "test", nodes: [JSONValue], edges: [String]) -> JSONValue {
    .object([
        "id": .string(id),
        "nodes": .array(nodes),
        "edges": .array(
            edges.map { edge in
                let parts = edge.components(separatedBy: " -> ")
                return ["from": .string(parts[0]), "to": .string(parts[1])]
            }
        ),
    ])
}

/// The folder of the example definitions.
let runnerExamplesFolder = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent()
    .deletingLastPathComponent()
    .deletingLastPathComponent()
    .appendingPathComponent("Examples/runners")
