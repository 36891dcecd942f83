import Foundation
import StorkCore
import Testing

@testable import StorkRealtime

/// topic -> subscribe to `feeds.<topic>` (count 3) -> the last message, the count, and every message collected.
private let feed = runnerDocument(
    id: "feed",
    nodes: [
        ["id": "topic", "kind": "input", "options": ["type": "string"]],
        [
            "id": "listen", "kind": "subscribe", "inputs": ["topic": "string"],
            "options": ["subject": "feeds.{{topic}}", "count": 3],
        ],
        [
            "id": "all", "kind": "template", "inputs": ["items": "array"],
            "options": ["template": ["items": "{{items}}"]],
        ],
        ["id": "last", "kind": "output"], ["id": "count", "kind": "output"], ["id": "everything", "kind": "output"],
    ],
    edges: [
        "topic.value -> listen.topic", "listen.last -> last.value", "listen.count -> count.value",
        "listen.message -> all.items", "all.value -> everything.value",
    ]
)

private func message(_ n: Int) -> JSONValue {
    ["subject": "feeds.scores", "data": ["n": .number(Double(n))]]
}

@Suite("Runner streaming, pause and resume", .timeLimit(.minutes(1)))
struct RunnerStreamingTests {
    @Test("a subscribe node streams three messages; while paused it neither pulls nor emits; resume goes on")
    func pauseAndResume() async throws {
        let effects = FakeRunnerEffects()
        let execution = RunnerExecution(
            program: try program(feed),
            runId: "r1",
            inputs: ["topic": "scores"],
            effects: effects
        )
        let (outcome, events) = try await runWhile(execution) { log in
            await effects.until { $0.subscribed == ["feeds.scores"] }
            effects.deliver(["n": 1], to: "feeds.scores")
            await log.until { $0.filter(\.isItem).count == 1 }

            execution.pause()
            #expect(execution.isPaused)
            effects.deliver(["n": 2], to: "feeds.scores")
            effects.deliver(["n": 3], to: "feeds.scores")
            // The subscribe node is now held by the pause gate (before pulling, or before emitting what it pulled).
            await execution.control.untilWaiting(atLeast: 1)
            #expect(log.events.filter(\.isItem).count == 1)
            #expect(!log.events.contains { $0.isTerminal })

            execution.resume()
            #expect(!execution.isPaused)
        }
        #expect(
            outcome
                == .completed([
                    "last": message(3), "count": 3, "everything": ["items": [message(1), message(2), message(3)]],
                ])
        )

        let items = events.compactMap { event -> Int? in
            if case .item(_, "listen", "message", let index, _) = event { return index }
            return nil
        }
        #expect(items == [0, 1, 2])
        let kinds = events.map { event -> String in
            switch event {
            case .item(_, _, _, let index, _): "item\(index)"
            case .paused: "paused"
            case .resumed: "resumed"
            default: event.eventNodeId ?? "terminal"
            }
        }
        // Pause and resume fall between the first and the second item.
        let paused = try #require(kinds.firstIndex(of: "paused"))
        let resumed = try #require(kinds.firstIndex(of: "resumed"))
        #expect(try #require(kinds.firstIndex(of: "item0")) < paused)
        #expect(paused < resumed)
        #expect(resumed < (try #require(kinds.firstIndex(of: "item1"))))
        // The node's own event (after its stream) carries the non-stream ports only.
        #expect(events.contains(.node(runId: "r1", nodeId: "listen", output: ["last": message(3), "count": 3])))
        // The subscription was given back when the node had its three messages.
        await effects.until { $0.unsubscribed == ["feeds.scores"] }
    }

    @Test("pausing before the run starts holds every node until resume")
    func pausedFromTheStart() async throws {
        let document = runnerDocument(
            nodes: [["id": "in", "kind": "input"], ["id": "out", "kind": "output"]],
            edges: ["in.value -> out.value"]
        )
        let execution = RunnerExecution(
            program: try program(document),
            runId: "r1",
            inputs: ["in": "x"],
            effects: FakeRunnerEffects()
        )
        execution.pause()
        let (outcome, events) = try await runWhile(execution) { log in
            await execution.control.untilWaiting(atLeast: 1)
            #expect(!log.events.contains { $0.eventNodeId != nil })
            execution.resume()
        }
        #expect(outcome == .completed(["out": "x"]))
        #expect(events.first == .paused(runId: "r1"))
        #expect(events.dropFirst().first == .resumed(runId: "r1"))
        // After the end, pause and resume do nothing.
        execution.pause()
        #expect(!execution.isPaused)
    }

    @Test("`until` ends the stream at the first message that satisfies it")
    func until() async throws {
        let document = runnerDocument(
            nodes: [
                ["id": "in", "kind": "input", "options": ["required": false]],
                ["id": "listen", "kind": "subscribe", "options": ["subject": "jobs.*", "until": "data.done == true"]],
                ["id": "out", "kind": "output"],
            ],
            edges: ["listen.count -> out.value", "in.value -> out.value"]
        )
        let effects = FakeRunnerEffects()
        let execution = RunnerExecution(program: try program(document), runId: "r1", inputs: [:], effects: effects)
        let (outcome, _) = try await runWhile(execution) { _ in
            await effects.until { $0.subscribed == ["jobs.*"] }
            for done in [false, false, true, false] {
                effects.deliver(["done": .bool(done)], to: "jobs.*", subject: "jobs.1")
            }
        }
        #expect(outcome == .completed(["out": 3]))
    }

    @Test("a subscription the host ends early fails the node")
    func endedEarly() async throws {
        let effects = FakeRunnerEffects()
        let execution = RunnerExecution(
            program: try program(feed),
            runId: "r1",
            inputs: ["topic": "scores"],
            effects: effects
        )
        let (outcome, _) = try await runWhile(execution) { _ in
            await effects.until { $0.subscribed == ["feeds.scores"] }
            effects.deliver(["n": 1], to: "feeds.scores")
            effects.endSubscription("feeds.scores")
        }
        guard case .failed(let error) = outcome else {
            Issue.record("completed: \(outcome)")
            return
        }
        #expect(error.nodeId == "listen")
        #expect(
            error.message == "node 'listen' (subscribe): the subscription to 'feeds.scores' ended after 1 message(s)"
        )
    }

    @Test("the item limit stops a stream that emits too much")
    func itemLimit() async throws {
        var configuration = RunnerExecutionConfiguration()
        configuration.maxStreamItems = 2
        let effects = FakeRunnerEffects()
        let execution = RunnerExecution(
            program: try program(feed),
            runId: "r1",
            inputs: ["topic": "scores"],
            effects: effects,
            configuration: configuration
        )
        let (outcome, _) = try await runWhile(execution) { _ in
            await effects.until { $0.subscribed == ["feeds.scores"] }
            for n in 1...3 { effects.deliver(["n": .number(Double(n))], to: "feeds.scores") }
        }
        guard case .failed(let error) = outcome else {
            Issue.record("completed: \(outcome)")
            return
        }
        #expect(error.message == "node 'listen' emitted more than 2 items")
    }
}

@Suite("Runner events as JSON")
struct RunnerEventJSONTests {
    @Test("each event has the documented JSON and reads back")
    func json() throws {
        let failure = RunnerError(.nodeFailed, "node 'fetch' (http) failed: timeout", nodeId: "fetch")
        let cases: [(RunnerEvent, String)] = [
            (
                .node(runId: "r1", nodeId: "greet", output: ["value": "Hello"]),
                #"{"nodeId":"greet","output":{"value":"Hello"},"runId":"r1","type":"node"}"#
            ),
            (
                .item(runId: "r1", nodeId: "listen", port: "message", index: 0, value: ["n": 1]),
                #"{"item":0,"nodeId":"listen","output":{"message":{"n":1}},"port":"message","runId":"r1","type":"node"}"#
            ),
            (.skipped(runId: "r1", nodeId: "sorry"), #"{"nodeId":"sorry","runId":"r1","type":"skipped"}"#),
            (.paused(runId: "r1"), #"{"runId":"r1","type":"paused"}"#),
            (.resumed(runId: "r1"), #"{"runId":"r1","type":"resumed"}"#),
            (
                .completed(runId: "r1", outputs: ["greeting": "Hello", "n": 2.5]),
                #"{"outputs":{"greeting":"Hello","n":2.5},"runId":"r1","type":"completed"}"#
            ),
            (
                .failed(runId: "r1", nodeId: "fetch", error: failure),
                #"{"code":"node-failed","error":"node 'fetch' (http) failed: timeout","nodeId":"fetch","runId":"r1","type":"failed"}"#
            ),
            (
                .failed(runId: "r1", nodeId: nil, error: RunnerError(.cancelled, "the run was cancelled")),
                #"{"code":"cancelled","error":"the run was cancelled","nodeId":null,"runId":"r1","type":"failed"}"#
            ),
        ]
        for (event, text) in cases {
            #expect(event.jsonText == text)
            let parsed = try RunnerJSON.parse(Array(text.utf8))
            #expect(try RunnerEvent(json: parsed) == event)
        }
        #expect(throws: RunnerError.self) { try RunnerEvent(json: ["type": "exploded", "runId": "r1"]) }
    }

    @Test("JSON text escapes what it must")
    func escaping() throws {
        let value: JSONValue = ["a\"b": "line\nbreak\t\u{1}", "n": [1, -0.5, 1e20], "nothing": nil]
        let text = RunnerJSON.text(value)
        #expect(text == #"{"a\"b":"line\nbreak\t\u0001","n":[1,-0.5,1e+20],"nothing":null}"#)
        #expect(try RunnerJSON.parse(Array(text.utf8)) == value)
    }
}

@Suite("Runner scheduler")
struct RunnerSchedulerTests {
    /// The pure state machine, step by step: node results in, actions out.
    @Test("results in, actions out: start, skip the arm not taken, complete")
    func steps() throws {
        let document = runnerDocument(
            nodes: [
                ["id": "in", "kind": "input"], ["id": "b", "kind": "branch"],
                ["id": "t", "kind": "template", "inputs": ["x": "any"], "options": ["template": "t{{x}}"]],
                ["id": "out", "kind": "output"], ["id": "out2", "kind": "output"],
            ],
            edges: ["in.value -> b.value", "b.true -> t.x", "t.value -> out.value", "b.false -> out2.value"]
        )
        let compiled = try program(document)
        #expect(compiled.nodes.map(\.definition.id) == ["in", "b", "t", "out", "out2"])
        var scheduler = RunnerScheduler(program: compiled, maxConcurrent: 2)
        let steps: [(node: Int?, result: RunnerNodeResult, expected: [RunnerScheduler.Action])] = [
            (nil, [:], [.start(node: 0, inputs: [:])]),
            (0, ["value": 1], [.start(node: 1, inputs: ["value": 1])]),
            (
                1, RunnerNodeResult(["true": 1], inactivePorts: ["false"]),
                [.start(node: 2, inputs: ["x": 1]), .skip(node: 4)]
            ),
            (2, ["value": "t1"], [.start(node: 3, inputs: ["value": "t1"])]),
            (3, ["value": "t1"], [.complete(outputs: ["out": "t1", "out2": nil])]),
        ]
        for (index, step) in steps.enumerated() {
            let actions =
                if let node = step.node { scheduler.finished(node: node, result: step.result) } else {
                    scheduler.begin()
                }
            #expect(actions == step.expected, "step \(index)")
        }
    }
}
