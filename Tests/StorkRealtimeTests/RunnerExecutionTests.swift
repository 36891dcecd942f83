import Foundation
import StorkCore
import Testing

@testable import StorkRealtime

private func execute(
    _ document: JSONValue,
    inputs: [String: JSONValue] = [:],
    effects: FakeRunnerEffects = FakeRunnerEffects(),
    registry: RunnerNodeRegistry = RunnerNodeRegistry(),
    runId: String = "r1"
) async throws -> (outcome: RunnerOutcome, events: [RunnerEvent]) {
    let execution = RunnerExecution(
        program: try program(document, registry: registry),
        runId: runId,
        inputs: inputs,
        effects: effects
    )
    return try await runWhile(execution)
}

/// input -> template (request body) -> http -> branch on the status -> template / apology -> output.
private let pipeline = runnerDocument(
    id: "pipeline",
    nodes: [
        ["id": "who", "kind": "input", "options": ["name": "name", "type": "string"]],
        [
            "id": "body", "kind": "template", "inputs": ["name": "string"],
            "options": ["template": ["user": "{{name}}", "greeting": "Hello, {{name}}"]],
        ],
        [
            "id": "post", "kind": "http", "inputs": ["payload": "object", "name": "string"],
            "options": [
                "method": "post", "url": "https://api.example.com/greet/{{name|url}}", "body": "{{payload}}",
                "headers": ["Authorization": "Bearer {{name}}"],
            ],
        ],
        ["id": "ok", "kind": "branch", "inputs": ["status": "number"], "options": ["condition": "data.status == 201"]],
        ["id": "thanks", "kind": "template", "inputs": ["reply": "any"], "options": ["template": "id {{reply.id}}"]],
        ["id": "sorry", "kind": "template", "inputs": ["reply": "any"], "options": ["template": "refused"]],
        ["id": "result", "kind": "output", "options": ["name": "result"]],
        ["id": "status", "kind": "output", "options": ["name": "status"]],
    ],
    edges: [
        "who.value -> body.name", "body.value -> post.payload", "who.value -> post.name", "post.json -> ok.value",
        "post.status -> ok.status", "ok.true -> thanks.reply", "ok.false -> sorry.reply",
        "thanks.value -> result.value",
        "sorry.value -> result.value", "post.status -> status.value",
    ]
)

@Suite("Runner execution", .timeLimit(.minutes(1)))
struct RunnerExecutionTests {
    @Test("a pipeline runs in dependency order, skips the arm not taken, and completes with its outputs")
    func pipelineRuns() async throws {
        let effects = FakeRunnerEffects { request in
            RunnerHTTPResponse(
                status: 201,
                headers: ["content-type": "application/json"],
                body: Array("{\"id\": 7}".utf8)
            )
        }
        let (outcome, events) = try await execute(pipeline, inputs: ["name": "Ada Lovelace"], effects: effects)
        #expect(outcome == .completed(["result": "id 7", "status": 201]))

        // The request was made from the templates.
        let request = try #require(effects.snapshot.requests.first)
        #expect(request.method == "POST")
        #expect(request.url == "https://api.example.com/greet/Ada%20Lovelace")
        #expect(request.headers == ["Authorization": "Bearer Ada Lovelace", "Content-Type": "application/json"])
        #expect(
            try RunnerJSON.parse(request.body ?? []) == ["user": "Ada Lovelace", "greeting": "Hello, Ada Lovelace"]
        )

        // Each node reports after every node that feeds it; the last event is `completed`.
        let order = events.compactMap(\.eventNodeId)
        func position(_ id: String) throws -> Int { try #require(order.firstIndex(of: id)) }
        for (before, after) in [
            ("who", "body"), ("body", "post"), ("post", "ok"), ("ok", "thanks"), ("thanks", "result"),
        ] {
            #expect(try position(before) < position(after), "\(before) before \(after): \(order)")
        }
        #expect(events.contains(.skipped(runId: "r1", nodeId: "sorry")))
        #expect(events.contains(.node(runId: "r1", nodeId: "ok", output: ["true": ["id": 7]])))
        #expect(events.last == .completed(runId: "r1", outputs: ["result": "id 7", "status": 201]))
        #expect(events.filter(\.isTerminal).count == 1)
    }

    @Test("the other arm: the output fed by both arms takes the one that ran")
    func otherArm() async throws {
        let effects = FakeRunnerEffects { _ in RunnerHTTPResponse(status: 409, body: Array("busy".utf8)) }
        let (outcome, events) = try await execute(pipeline, inputs: ["name": "Ada"], effects: effects)
        #expect(outcome == .completed(["result": "refused", "status": 409]))
        #expect(events.contains(.skipped(runId: "r1", nodeId: "thanks")))
        #expect(
            events.contains(
                .node(
                    runId: "r1",
                    nodeId: "post",
                    output: ["status": 409, "headers": [:], "body": "busy", "json": nil]
                )
            )
        )
    }

    @Test("an output fed only by skipped nodes is null")
    func skippedOutputIsNull() async throws {
        let document = runnerDocument(
            nodes: [
                ["id": "flag", "kind": "input", "options": ["type": "boolean"]],
                ["id": "b", "kind": "branch"],
                ["id": "t", "kind": "template", "inputs": ["x": "any"], "options": ["template": "yes"]],
                ["id": "yes", "kind": "output"],
                ["id": "no", "kind": "output"],
            ],
            edges: ["flag.value -> b.value", "b.true -> t.x", "t.value -> yes.value", "b.false -> no.value"]
        )
        let (outcome, events) = try await execute(document, inputs: ["flag": false])
        #expect(outcome == .completed(["yes": nil, "no": false]))
        #expect(events.contains(.skipped(runId: "r1", nodeId: "t")))
        #expect(events.contains(.skipped(runId: "r1", nodeId: "yes")))
    }

    @Test("a failing node ends the run with `failed` naming it, and no `completed`")
    func failure() async throws {
        struct Refused: Error, CustomStringConvertible { var description: String { "connection refused" } }
        let effects = FakeRunnerEffects { _ in throw Refused() }
        let (outcome, events) = try await execute(pipeline, inputs: ["name": "Ada"], effects: effects)
        guard case .failed(let error) = outcome else {
            Issue.record("completed: \(outcome)")
            return
        }
        #expect(error.code == .nodeFailed)
        #expect(error.nodeId == "post")
        #expect(error.message == "node 'post' (http) failed: connection refused")
        #expect(events.last == .failed(runId: "r1", nodeId: "post", error: error))
        #expect(!events.contains { if case .completed = $0 { return true } else { return false } })
        #expect(!events.contains { $0.eventNodeId == "ok" })
    }

    @Test(
        "bad run inputs fail before any node runs",
        arguments: [
            (["name": 3] as [String: JSONValue], "the input 'name' must be of type string (node 'who')"),
            ([:], "the input 'name' is missing (node 'who')"),
            (["name": "Ada", "nmae": "x"], "unknown input \"nmae\" (the runner takes: name)"),
        ]
    )
    func badInputs(_ inputs: [String: JSONValue], _ message: String) async throws {
        let (outcome, events) = try await execute(pipeline, inputs: inputs)
        guard case .failed(let error) = outcome else {
            Issue.record("completed: \(outcome)")
            return
        }
        #expect(error.code == .invalidInput)
        #expect(error.message == message)
        #expect(events.count == 1)
    }

    @Test("a value of the wrong type arriving through an `any` port fails the node that takes it")
    func runtimeTypeCheck() async throws {
        let document = runnerDocument(
            nodes: [
                ["id": "in", "kind": "input"],
                ["id": "t", "kind": "template", "inputs": ["n": "number"], "options": ["template": "{{n}}"]],
                ["id": "out", "kind": "output"],
            ],
            edges: ["in.value -> t.n", "t.value -> out.value"]
        )
        let (outcome, _) = try await execute(document, inputs: ["in": "three"])
        guard case .failed(let error) = outcome else {
            Issue.record("completed: \(outcome)")
            return
        }
        #expect(error.code == .typeMismatch)
        #expect(error.nodeId == "t")
        #expect(error.port == "n")
    }

    @Test("publish renders its subject and payload and sends them through the host")
    func publish() async throws {
        let document = runnerDocument(
            nodes: [
                ["id": "room", "kind": "input", "options": ["type": "string"]],
                ["id": "text", "kind": "input", "options": ["type": "string"]],
                [
                    "id": "say", "kind": "publish", "inputs": ["room": "string", "text": "string"],
                    "options": ["subject": "rooms.{{room}}.messages", "payload": ["text": "{{text}}", "n": 1]],
                ],
                ["id": "out", "kind": "output"],
            ],
            edges: ["room.value -> say.room", "text.value -> say.text", "say.subject -> out.value"]
        )
        let effects = FakeRunnerEffects()
        let (outcome, _) = try await execute(document, inputs: ["room": "r1", "text": "hi"], effects: effects)
        #expect(outcome == .completed(["out": "rooms.r1.messages"]))
        #expect(effects.snapshot.published.map(\.subject) == ["rooms.r1.messages"])
        #expect(effects.snapshot.published.map(\.payload) == [["text": "hi", "n": 1]])

        // A subject with a wildcard or a space is refused before anything is sent.
        for room in ["*", "a b"] {
            let refused = FakeRunnerEffects()
            let (failed, _) = try await execute(
                document,
                inputs: ["room": .string(room), "text": "x"],
                effects: refused
            )
            guard case .failed(let error) = failed else {
                Issue.record("published to \(room)")
                continue
            }
            #expect(error.nodeId == "say")
            #expect(refused.snapshot.published.isEmpty)
        }
    }

    @Test("branch: equals, truthiness, and conditions reading the user")
    func branchForms() async throws {
        func document(_ options: JSONValue) -> JSONValue {
            runnerDocument(
                nodes: [
                    ["id": "in", "kind": "input"], ["id": "b", "kind": "branch", "options": options],
                    ["id": "out", "kind": "output"],
                ],
                edges: ["in.value -> b.value", "b.true -> out.value"]
            )
        }
        for (options, value, taken) in [
            (["equals": "go"], "go", true), (["equals": "go"], "stop", false), ([:], 0, false), ([:], "x", true),
            ([:], [], false), (["condition": "data.value > 2"], 3, true),
            (["condition": "'admin' in user.roles"], 1, true),
        ] as [(JSONValue, JSONValue, Bool)] {
            let execution = RunnerExecution(
                program: try program(document(options)),
                runId: "r",
                inputs: ["in": value],
                user: AuthenticatedUser(id: "ada", roles: ["admin"]).ruleValue,
                effects: FakeRunnerEffects()
            )
            let (outcome, _) = try await runWhile(execution)
            #expect(outcome == .completed(["out": taken ? value : nil]), "\(options) with \(value)")
        }
    }

    @Test("a delay waits on the host's clock: the run completes only when the clock moves")
    func delayWaitsForTheClock() async throws {
        let document = runnerDocument(
            nodes: [
                ["id": "in", "kind": "input"], ["id": "wait", "kind": "delay", "options": ["milliseconds": 1500]],
                ["id": "out", "kind": "output"],
            ],
            edges: ["in.value -> wait.value", "wait.value -> out.value"]
        )
        let effects = FakeRunnerEffects()
        let execution = RunnerExecution(
            program: try program(document),
            runId: "r1",
            inputs: ["in": 42],
            effects: effects
        )
        let (outcome, events) = try await runWhile(execution) { log in
            await effects.until { $0.sleepers.count == 1 }
            // Asleep: the input node has reported, the delay has not, nothing has completed.
            #expect(!log.events.contains { $0.eventNodeId == "wait" || $0.isTerminal })
            effects.advance(by: .milliseconds(1499))
            #expect(effects.snapshot.sleepers.count == 1)
            effects.advance(by: .milliseconds(1))
        }
        #expect(outcome == .completed(["out": 42]))
        #expect(events.last == .completed(runId: "r1", outputs: ["out": 42]))
    }

    @Test("cancelling the task that runs a run cancels its nodes and ends it with `failed` (cancelled)")
    func cancellation() async throws {
        let document = runnerDocument(
            nodes: [
                ["id": "in", "kind": "input"],
                ["id": "listen", "kind": "subscribe", "options": ["subject": "a.>", "count": 5]],
                ["id": "wait", "kind": "delay", "options": ["milliseconds": 60_000]], ["id": "out", "kind": "output"],
            ],
            edges: ["in.value -> wait.value", "wait.value -> out.value", "listen.count -> out.value"]
        )
        let effects = FakeRunnerEffects()
        let execution = RunnerExecution(
            program: try program(document),
            runId: "r1",
            inputs: ["in": 1],
            effects: effects
        )
        let log = RunnerEventLog()
        async let collected: Void = log.collect(execution.events)
        let runTask = Task { await execution.run() }
        await effects.until { $0.sleepers.count == 1 && $0.subscribed == ["a.>"] }
        effects.deliver("one", to: "a.>", subject: "a.b")
        await log.until { $0.contains(where: \.isItem) }
        runTask.cancel()
        let outcome = await runTask.value
        await collected
        #expect(outcome == .failed(RunnerError(.cancelled, "the run was cancelled")))
        #expect(
            log.events.last
                == .failed(runId: "r1", nodeId: nil, error: RunnerError(.cancelled, "the run was cancelled"))
        )
        // The sleeper was woken by cancellation and the subscription ended.
        await effects.until { $0.unsubscribed == ["a.>"] }
        #expect(effects.snapshot.sleepers.isEmpty)
    }

    @Test("a kind registered in Swift runs like a built-in")
    func userKind() async throws {
        var registry = RunnerNodeRegistry()
        registry.register(
            RunnerSimpleKind(
                name: "uppercase",
                inputs: [RunnerPort("text", .string)],
                outputs: [RunnerPort("text", .string), RunnerPort("length", .number)]
            ) { context in
                let text = context.inputs["text"]?.stringValue ?? ""
                return ["text": .string(text.uppercased()), "length": .number(Double(text.count))]
            }
        )
        let document = runnerDocument(
            nodes: [
                ["id": "in", "kind": "input", "options": ["type": "string"]], ["id": "up", "kind": "uppercase"],
                ["id": "text", "kind": "output"], ["id": "length", "kind": "output"],
            ],
            edges: ["in.value -> up.text", "up.text -> text.value", "up.length -> length.value"]
        )
        let (outcome, events) = try await execute(document, inputs: ["in": "stork"], registry: registry)
        #expect(outcome == .completed(["text": "STORK", "length": 5]))
        #expect(events.contains(.node(runId: "r1", nodeId: "up", output: ["text": "STORK", "length": 5])))
        // Without the registration the kind is unknown.
        #expect(throws: RunnerError.self) { try program(document) }
    }

    @Test("a node that breaks its contract fails the run instead of the engine")
    func misbehavingKind() async throws {
        var registry = RunnerNodeRegistry()
        registry.register(
            RunnerSimpleKind(name: "liar", inputs: [], outputs: [RunnerPort("n", .number)]) { _ in ["n": "not a number"]
            }
        )
        let document = runnerDocument(
            nodes: [
                ["id": "in", "kind": "input", "options": ["required": false]], ["id": "l", "kind": "liar"],
                ["id": "out", "kind": "output"],
            ],
            edges: ["l.n -> out.value", "in.value -> out.value"]
        )
        let (outcome, _) = try await execute(document, registry: registry)
        guard case .failed(let error) = outcome else {
            Issue.record("completed: \(outcome)")
            return
        }
        #expect(error.code == .typeMismatch)
        #expect(error.nodeId == "l")
    }

    @Test("one node at a time: nodes start in topological order, ties in definition order")
    func sequential() async throws {
        let document = runnerDocument(
            nodes: [
                ["id": "in", "kind": "input"],
                ["id": "c", "kind": "template", "inputs": ["x": "any"], "options": ["template": "c{{x}}"]],
                ["id": "a", "kind": "template", "inputs": ["x": "any"], "options": ["template": "a{{x}}"]],
                ["id": "b", "kind": "template", "inputs": ["x": "any"], "options": ["template": "b{{x}}"]],
                ["id": "out", "kind": "output"],
            ],
            edges: [
                "in.value -> a.x", "in.value -> b.x", "in.value -> c.x", "a.value -> out.value", "b.value -> out.value",
            ]
        )
        var configuration = RunnerExecutionConfiguration()
        configuration.maxConcurrentNodes = 1
        let execution = RunnerExecution(
            program: try program(document),
            runId: "r1",
            inputs: ["in": 1],
            effects: FakeRunnerEffects(),
            configuration: configuration
        )
        let (outcome, events) = try await runWhile(execution)
        #expect(outcome == .completed(["out": "a1"]))
        #expect(events.compactMap(\.eventNodeId) == ["in", "c", "a", "b", "out"])
    }

    @Test("the weather example: a 200 reports and publishes, anything else apologises", arguments: [200, 503])
    func weatherExample(_ status: Int) async throws {
        let bytes = try Data(contentsOf: runnerExamplesFolder.appendingPathComponent("weather.json"))
        let program = try RunnerProgram(definition: RunnerDefinition(json: Array(bytes)))
        #expect(program.inputs.map(\.name) == ["city", "units"])
        #expect(program.outputNames == ["status", "summary"])
        let effects = FakeRunnerEffects { request in
            #expect(request.url == "https://weather.example.com/v1/current?q=S%C3%A3o%20Paulo&units=metric")
            #expect(request.headers == ["Accept": "application/json"])
            #expect(request.timeout == .seconds(5))
            let body = status == 200 ? "{\"temperature\": 24, \"summary\": \"sunny\"}" : "down"
            return RunnerHTTPResponse(status: status, body: Array(body.utf8))
        }
        let execution = RunnerExecution(program: program, runId: "w", inputs: ["city": "São Paulo"], effects: effects)
        let (outcome, events) = try await runWhile(execution)
        if status == 200 {
            #expect(outcome == .completed(["summary": "São Paulo: 24°, sunny", "status": 200]))
            #expect(effects.snapshot.published.map(\.subject) == ["weather.reports"])
            #expect(
                effects.snapshot.published.map(\.payload) == [["city": "São Paulo", "report": "São Paulo: 24°, sunny"]]
            )
            #expect(events.contains(.skipped(runId: "w", nodeId: "apology")))
        } else {
            #expect(outcome == .completed(["summary": "No weather for São Paulo right now.", "status": 503]))
            #expect(effects.snapshot.published.isEmpty)
            #expect(events.contains(.skipped(runId: "w", nodeId: "report")))
            #expect(events.contains(.skipped(runId: "w", nodeId: "announce")))
        }
    }
}
