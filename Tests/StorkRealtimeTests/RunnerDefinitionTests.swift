import Foundation
import StorkCore
import Testing

@testable import StorkRealtime

/// input -> template -> output, the smallest useful runner.
private let greetingNodes: [JSONValue] = [
    ["id": "who", "kind": "input", "options": ["name": "name", "type": "string", "default": "world"]],
    ["id": "greet", "kind": "template", "inputs": ["name": "string"], "options": ["template": "Hello, {{name}}!"]],
    ["id": "out", "kind": "output", "options": ["name": "greeting"]],
]
private let greetingEdges = ["who.value -> greet.name", "greet.value -> out.value"]

@Suite("Runner definitions")
struct RunnerDefinitionTests {
    @Test("a valid definition decodes, compiles and lists its inputs and outputs")
    func validDefinition() throws {
        let compiled = try program(runnerDocument(nodes: greetingNodes, edges: greetingEdges))
        #expect(compiled.definition.id == "test")
        #expect(compiled.definition.name == "test")
        #expect(compiled.definition.version == 1)
        #expect(compiled.inputs.map(\.name) == ["name"])
        #expect(compiled.inputs.first?.defaultValue == "world")
        #expect(compiled.outputNames == ["greeting"])
        #expect(compiled.nodes.map(\.definition.id) == ["who", "greet", "out"])
        // The document form reads back to the same definition.
        let again = try RunnerDefinition(document: compiled.definition.document)
        #expect(again == compiled.definition)
    }

    /// Each broken definition is refused with the expected code, naming the node (and port) at fault.
    @Test(
        "validation matrix",
        arguments: [
            // duplicate node ids
            (
                "duplicate id",
                runnerDocument(nodes: greetingNodes + [["id": "greet", "kind": "output"]], edges: greetingEdges),
                RunnerError.Code.duplicateId, "greet", nil as String?
            ),
            // unknown kind
            (
                "unknown kind",
                runnerDocument(nodes: greetingNodes + [["id": "x", "kind": "teleport"]], edges: greetingEdges),
                .unknownKind, "x", nil
            ),
            // unknown port on either side
            (
                "unknown output port",
                runnerDocument(nodes: greetingNodes, edges: ["who.valu -> greet.name", "greet.value -> out.value"]),
                .unknownPort, "who", "valu"
            ),
            (
                "unknown input port",
                runnerDocument(nodes: greetingNodes, edges: ["who.value -> greet.nom", "greet.value -> out.value"]),
                .unknownPort, "greet", "nom"
            ),
            // an edge to a node that does not exist
            (
                "unknown node",
                runnerDocument(nodes: greetingNodes, edges: greetingEdges + ["ghost.value -> out.value"]),
                .unknownNode, "ghost", nil
            ),
            // a number into a string port
            (
                "type mismatch",
                runnerDocument(
                    nodes: [
                        ["id": "n", "kind": "input", "options": ["type": "number"]],
                        ["id": "t", "kind": "template", "inputs": ["s": "string"], "options": ["template": "{{s}}"]],
                        ["id": "out", "kind": "output"],
                    ],
                    edges: ["n.value -> t.s", "t.value -> out.value"]
                ),
                .typeMismatch, "t", "s"
            ),
            // a stream into a string port
            (
                "stream into string",
                runnerDocument(
                    nodes: [
                        ["id": "in", "kind": "input"],
                        ["id": "sub", "kind": "subscribe", "options": ["subject": "a.b", "count": 1]],
                        ["id": "t", "kind": "template", "inputs": ["s": "string"], "options": ["template": "{{s}}"]],
                        ["id": "out", "kind": "output"],
                    ],
                    edges: ["sub.message -> t.s", "t.value -> out.value", "in.value -> out.value"]
                ),
                .typeMismatch, "t", "s"
            ),
            // a required input with no edge
            (
                "required input without edge",
                runnerDocument(nodes: greetingNodes, edges: ["who.value -> greet.name"]),
                .missingEdge, "out", "value"
            ),
            // two edges into a port that takes one
            (
                "two edges into one port",
                runnerDocument(
                    nodes: greetingNodes + [["id": "who2", "kind": "input", "options": ["name": "other"]]],
                    edges: greetingEdges + ["who2.value -> greet.name"]
                ),
                .missingEdge, "greet", "name"
            ),
            // a cycle
            (
                "cycle",
                runnerDocument(
                    nodes: [
                        ["id": "in", "kind": "input"],
                        [
                            "id": "a", "kind": "template", "inputs": ["x": "any", "y": "any"],
                            "options": ["template": "{{x}}"],
                        ],
                        ["id": "b", "kind": "template", "inputs": ["x": "any"], "options": ["template": "{{x}}"]],
                        ["id": "out", "kind": "output"],
                    ],
                    edges: ["in.value -> a.x", "a.value -> b.x", "b.value -> a.y", "b.value -> out.value"]
                ),
                .cycle, "a", nil
            ),
            // no input node
            (
                "no input node",
                runnerDocument(
                    nodes: [
                        ["id": "t", "kind": "template", "options": ["template": "constant"]],
                        ["id": "out", "kind": "output"],
                    ],
                    edges: ["t.value -> out.value"]
                ),
                .missingEndpoint, nil, nil
            ),
            // no output node
            (
                "no output node",
                runnerDocument(
                    nodes: [
                        ["id": "in", "kind": "input"], ["id": "d", "kind": "delay", "options": ["milliseconds": 5]],
                    ],
                    edges: ["in.value -> d.value"]
                ),
                .missingEndpoint, nil, nil
            ),
            // a placeholder for an input that is not declared
            (
                "undeclared placeholder",
                runnerDocument(
                    nodes: [
                        ["id": "who", "kind": "input"],
                        [
                            "id": "greet", "kind": "template", "inputs": ["name": "any"],
                            "options": ["template": "Hi {{nmae}}"],
                        ],
                        ["id": "out", "kind": "output"],
                    ],
                    edges: ["who.value -> greet.name", "greet.value -> out.value"]
                ),
                .invalidOptions, "greet", nil
            ),
            // an option the kind does not know
            (
                "unknown option",
                runnerDocument(
                    nodes: [
                        ["id": "in", "kind": "input"], ["id": "d", "kind": "delay", "options": ["seconds": 5]],
                        ["id": "out", "kind": "output"],
                    ],
                    edges: ["in.value -> d.value", "d.value -> out.value"]
                ),
                .invalidOptions, "d", nil
            ),
            // a subscribe that would never end
            (
                "endless subscribe",
                runnerDocument(
                    nodes: [
                        ["id": "in", "kind": "input"], ["id": "s", "kind": "subscribe", "options": ["subject": "a"]],
                        ["id": "out", "kind": "output"],
                    ],
                    edges: ["in.value -> out.value", "s.count -> out.value"]
                ),
                .invalidOptions, "s", nil
            ),
            // a condition that does not parse
            (
                "bad condition",
                runnerDocument(
                    nodes: [
                        ["id": "in", "kind": "input"],
                        ["id": "b", "kind": "branch", "options": ["condition": "data.value =="]],
                        ["id": "out", "kind": "output"],
                    ],
                    edges: ["in.value -> b.value", "b.true -> out.value"]
                ),
                .invalidOptions, "b", nil
            ),
            // a default of the wrong type
            (
                "bad default",
                runnerDocument(
                    nodes: [
                        ["id": "in", "kind": "input", "options": ["type": "number", "default": "three"]],
                        ["id": "out", "kind": "output"],
                    ],
                    edges: ["in.value -> out.value"]
                ),
                .invalidOptions, "in", nil
            ),
            // two input nodes taking the same run input
            (
                "duplicate run input",
                runnerDocument(
                    nodes: [
                        ["id": "a", "kind": "input", "options": ["name": "x"]],
                        ["id": "b", "kind": "input", "options": ["name": "x"]], ["id": "out", "kind": "output"],
                    ],
                    edges: ["a.value -> out.value", "b.value -> out.value"]
                ),
                .duplicateId, "b", nil
            ),
        ] as [(String, JSONValue, RunnerError.Code, String?, String?)]
    )
    func invalidDefinitions(
        _ label: String,
        _ document: JSONValue,
        _ code: RunnerError.Code,
        _ nodeId: String?,
        _ port: String?
    ) throws {
        do {
            _ = try program(document)
            Issue.record("\(label): accepted")
        } catch let error as RunnerError {
            #expect(error.code == code, "\(label): \(error)")
            #expect(error.nodeId == nodeId, "\(label): \(error)")
            if let port { #expect(error.port == port, "\(label): \(error)") }
            if let nodeId { #expect(error.message.contains("'\(nodeId)'"), "\(label): \(error.message)") }
        }
    }

    @Test("a cycle is named node by node")
    func cycleMessage() throws {
        let document = runnerDocument(
            nodes: [
                ["id": "in", "kind": "input"],
                ["id": "a", "kind": "template", "inputs": ["x": "any", "y": "any"], "options": ["template": "{{x}}"]],
                ["id": "b", "kind": "template", "inputs": ["x": "any"], "options": ["template": "{{x}}"]],
                ["id": "out", "kind": "output"],
            ],
            edges: ["in.value -> a.x", "a.value -> b.x", "b.value -> a.y", "b.value -> out.value"]
        )
        let error = try #require(throws: RunnerError.self) { try program(document) }
        #expect(error.message == "the edges form a cycle: 'a' -> 'b' -> 'a'")
    }

    /// Shape errors from decoding: each names where it is.
    @Test(
        "malformed documents",
        arguments: [
            ("not json", "{\"id\": ", "not valid JSON"),
            ("not an object", "[1, 2]", "the definition must be a JSON object"),
            ("no id", "{\"nodes\": []}", "'id' is missing"),
            ("bad id", "{\"id\": \"a b\", \"nodes\": []}", "'id' must be 1 to 128"),
            ("unknown key", "{\"id\": \"a\", \"nodes\": [], \"nodez\": 1}", "unknown key 'nodez'"),
            ("node not object", "{\"id\": \"a\", \"nodes\": [3]}", "node 1 must be a JSON object"),
            (
                "bad edge", "{\"id\": \"a\", \"nodes\": [], \"edges\": [{\"from\": \"a\", \"to\": \"b.c\"}]}",
                "edge 1: 'from'"
            ),
            (
                "bad port type",
                "{\"id\": \"a\", \"nodes\": [{\"id\": \"n\", \"kind\": \"x\", \"inputs\": {\"p\": \"strin\"}}]}",
                "node 'n', inputs 'p': unknown type"
            ),
            ("bad version", "{\"id\": \"a\", \"version\": -1, \"nodes\": []}", "'version' must be a whole number"),
        ]
    )
    func malformed(_ label: String, _ text: String, _ fragment: String) throws {
        let error = try #require(throws: RunnerError.self) { try RunnerDefinition(json: Array(text.utf8)) }
        #expect(error.code == .malformed, "\(label)")
        #expect(error.message.contains(fragment), "\(label): \(error.message)")
    }

    @Test("limits refuse oversized documents before reading them")
    func limits() throws {
        var limits = RunnerLimits()
        limits.maxDocumentBytes = 10
        let error = try #require(throws: RunnerError.self) {
            try RunnerDefinition(json: Array("{\"id\": \"abcdefgh\"}".utf8), limits: limits)
        }
        #expect(error.code == .tooLarge)
        var nodeLimits = RunnerLimits()
        nodeLimits.maxNodes = 2
        let tooMany = try #require(throws: RunnerError.self) {
            try RunnerDefinition(
                document: runnerDocument(nodes: greetingNodes, edges: greetingEdges),
                limits: nodeLimits
            )
        }
        #expect(tooMany.code == .tooLarge)
    }

    /// Random bytes, random mutations of a valid document and deep nesting: every one is a value or an error.
    @Test("hostile documents never crash (seeded fuzz)")
    func fuzz() throws {
        let valid = RunnerJSON.bytes(runnerDocument(nodes: greetingNodes, edges: greetingEdges))
        let alphabet = Array("{}[]\":,.-0123456789abcdefghijklmnopqrstuvwxyz {{}}|\\nulltruefalse".utf8)
        var random = SeededRandom(seed: 0x5EED_2026)
        var accepted = 0
        for round in 0..<3_000 {
            var bytes: [UInt8]
            switch round % 3 {
            case 0:
                bytes = (0..<Int(random.next() % 200)).map { _ in alphabet[Int(random.next() % UInt64(alphabet.count))]
                }
            case 1:
                bytes = valid
                for _ in 0..<(1 + Int(random.next() % 6)) {
                    let position = Int(random.next() % UInt64(bytes.count))
                    switch random.next() % 3 {
                    case 0: bytes[position] = alphabet[Int(random.next() % UInt64(alphabet.count))]
                    case 1: bytes.remove(at: position)
                    default: bytes.insert(alphabet[Int(random.next() % UInt64(alphabet.count))], at: position)
                    }
                }
            default:
                bytes = (0..<Int(random.next() % 400)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            }
            if let definition = try? RunnerDefinition(json: bytes), (try? RunnerProgram(definition: definition)) != nil
            {
                accepted += 1
            }
        }
        // Some mutations only touch strings and stay valid.
        #expect(accepted > 0)
        // Deep nesting is refused by the parser, not by the stack.
        let deep = Array(String(repeating: "[", count: 100_000).utf8)
        #expect(throws: RunnerError.self) { try RunnerDefinition(json: deep) }
        let deepOptions = Array(
            ("{\"id\":\"a\",\"nodes\":[{\"id\":\"n\",\"kind\":\"template\",\"options\":{\"template\":"
                + String(repeating: "{\"a\":", count: 5_000) + "1" + String(repeating: "}", count: 5_000) + "}}]}").utf8
        )
        #expect(throws: RunnerError.self) { try RunnerDefinition(json: deepOptions) }
    }

    @Test("the example definitions validate")
    func examples() throws {
        for name in ["greeting", "weather"] {
            let url = runnerExamplesFolder.appendingPathComponent("\(name).json")
            let bytes = try Data(contentsOf: url)
            let definition = try RunnerDefinition(json: Array(bytes))
            #expect(definition.id == name)
            _ = try RunnerProgram(definition: definition)
        }
    }
}

@Suite("Runner templates")
struct RunnerTemplateTests {
    @Test("placeholders, paths, filters")
    func rendering() throws {
        let inputs: [String: JSONValue] = [
            "name": "Ada", "n": 3, "ok": true, "w": ["main": ["temp": 21.5], "tags": ["a", "b"]],
            "city": "São Paulo & co",
        ]
        #expect(try RunnerTemplate("Hello, {{name}}!").render(inputs) == "Hello, Ada!")
        #expect(
            try RunnerTemplate("{{ w.main.temp }}° {{w.tags.1}} {{missing}}|{{n}} {{ok}}").render(inputs)
                == "21.5° b |3 true"
        )
        #expect(try RunnerTemplate("q={{city | url}}").render(inputs) == "q=S%C3%A3o%20Paulo%20%26%20co")
        #expect(try RunnerTemplate("{{w.tags|json}}").render(inputs) == "[\"a\",\"b\"]")
        #expect(try RunnerTemplate("{{w.main}}").value(inputs) == ["temp": 21.5])
        let json = try RunnerJSONTemplate([
            "temp": "{{w.main.temp}}", "text": "it is {{w.main.temp}}", "k": [1, "{{n}}"],
        ])
        #expect(json.render(inputs) == ["temp": 21.5, "text": "it is 21.5", "k": [1, 3]])
        #expect(json.inputNames == ["w", "n"])
    }

    @Test(
        "mistakes are found when parsing",
        arguments: ["{{name", "{{}}", "{{a|shout}}", "{{a..b}}", "{{a|url|json}}"]
    )
    func mistakes(_ text: String) {
        #expect(throws: RunnerError.self) { try RunnerTemplate(text) }
    }
}
