import StorkCore

// MARK: - RunnerEvent
//
// What a run reports, in order, to the user who started it. The gateway sends `json` to the user's private subject
// as it is; Docs/runners.md documents the JSON.
//
//     {"type":"node","runId":"r1","nodeId":"greet","output":{"value":"Hello, Ada!"}}
//     {"type":"node","runId":"r1","nodeId":"listen","output":{"message":{…}},"port":"message","item":0}
//     {"type":"skipped","runId":"r1","nodeId":"apology"}
//     {"type":"paused","runId":"r1"}        {"type":"resumed","runId":"r1"}
//     {"type":"completed","runId":"r1","outputs":{"greeting":"Hello, Ada!"}}
//     {"type":"failed","runId":"r1","nodeId":"fetch","code":"node-failed","error":"…"}

/// One event of a run. Every run ends with exactly one `completed` or `failed`, and nothing comes after it.
public enum RunnerEvent: Sendable, Hashable {
    /// A node finished: `output` is an object of its output ports' values (a stream port's items come in `item`
    /// events instead; a branch's inactive arm is left out).
    case node(runId: String, nodeId: String, output: JSONValue)
    /// A node emitted one item on a stream port (`index` counts from 0 for each port).
    case item(runId: String, nodeId: String, port: String, index: Int, value: JSONValue)
    /// A node did not run: every edge into one of its inputs comes from an inactive port or a skipped node.
    case skipped(runId: String, nodeId: String)
    case paused(runId: String)
    case resumed(runId: String)
    /// The run finished: one value per output node (null when that node was skipped).
    case completed(runId: String, outputs: [String: JSONValue])
    /// The run stopped: the node that failed (nil for bad inputs or cancellation) and why.
    case failed(runId: String, nodeId: String?, error: RunnerError)

    public var runId: String {
        switch self {
        case .node(let runId, _, _), .item(let runId, _, _, _, _), .skipped(let runId, _), .paused(let runId),
            .resumed(let runId), .completed(let runId, _), .failed(let runId, _, _):
            runId
        }
    }

    /// Whether this is the last event of its run.
    public var isTerminal: Bool {
        switch self {
        case .completed, .failed: true
        default: false
        }
    }

    /// The event as the gateway sends it.
    public var json: JSONValue {
        switch self {
        case .node(let runId, let nodeId, let output):
            return ["type": "node", "runId": .string(runId), "nodeId": .string(nodeId), "output": output]
        case .item(let runId, let nodeId, let port, let index, let value):
            return [
                "type": "node", "runId": .string(runId), "nodeId": .string(nodeId), "output": .object([port: value]),
                "port": .string(port), "item": .number(Double(index)),
            ]
        case .skipped(let runId, let nodeId):
            return ["type": "skipped", "runId": .string(runId), "nodeId": .string(nodeId)]
        case .paused(let runId):
            return ["type": "paused", "runId": .string(runId)]
        case .resumed(let runId):
            return ["type": "resumed", "runId": .string(runId)]
        case .completed(let runId, let outputs):
            return ["type": "completed", "runId": .string(runId), "outputs": .object(outputs)]
        case .failed(let runId, let nodeId, let error):
            return [
                "type": "failed", "runId": .string(runId), "nodeId": nodeId.map(JSONValue.string) ?? .null,
                "code": .string(error.code.rawValue), "error": .string(error.message),
            ]
        }
    }

    /// `json` as text (sorted keys).
    public var jsonText: String {
        RunnerJSON.text(self.json)
    }

    /// Reads an event back from its JSON (for clients written in Swift, and tests).
    /// - Throws: `RunnerError(.malformed)`.
    public init(json: JSONValue) throws {
        let reader = try DocumentReader(json, at: "the event")
        let type = try reader.string("type")
        let runId = try reader.string("runId")
        switch type {
        case "node":
            let nodeId = try reader.string("nodeId")
            let output = reader.fields["output"] ?? .null
            if let port = try reader.optionalString("port"), let index = try reader.optionalInteger("item") {
                guard case .object(let fields) = output, let value = fields[port] else {
                    throw RunnerError(.malformed, "the event: an item's output must hold its port")
                }
                self = .item(runId: runId, nodeId: nodeId, port: port, index: index, value: value)
            } else {
                self = .node(runId: runId, nodeId: nodeId, output: output)
            }
        case "skipped":
            self = .skipped(runId: runId, nodeId: try reader.string("nodeId"))
        case "paused":
            self = .paused(runId: runId)
        case "resumed":
            self = .resumed(runId: runId)
        case "completed":
            self = .completed(runId: runId, outputs: try reader.optionalObject("outputs") ?? [:])
        case "failed":
            let nodeId = try reader.optionalString("nodeId")
            let code = RunnerError.Code(try reader.string("code"))
            self = .failed(
                runId: runId,
                nodeId: nodeId,
                error: RunnerError(code, try reader.string("error"), nodeId: nodeId)
            )
        default:
            throw RunnerError(.malformed, "the event: unknown type \(JSONValue.string(String(type.prefix(40))))")
        }
    }
}
