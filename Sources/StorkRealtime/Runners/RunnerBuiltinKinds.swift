import StorkCore

// MARK: - Built-in node kinds
//
// input, output, http, template, delay, publish, subscribe, branch. Docs/runners.md lists their options and ports.

// MARK: input

/// Takes a named run input. Options: `name` (default: the node id), `type` (default `any`), `default`, `required`
/// (default: true unless there is a default). Output: `value`.
public struct RunnerInputKind: RunnerNodeKind {
    public let name = "input"
    public init() {}

    public func prepare(_ node: RunnerNodeDefinition) throws -> RunnerPreparedNode {
        let options = RunnerNodeOptions(node)
        try options.allowOnly(["name", "type", "default", "required"])
        try options.noDeclaredInputs()
        try options.noDeclaredOutputs()
        let inputName = try options.optionalString("name") ?? node.id
        guard RunnerDefinition.isValidName(inputName) else {
            throw options.error("option 'name' must be 1 to 128 letters, digits, '_' or '-'")
        }
        var type = RunnerPortType.any
        if let typeName = try options.optionalString("type") {
            guard let known = RunnerPortType(rawValue: typeName), known != .stream else {
                throw options.error("option 'type' must be string, number, boolean, object, array or any")
            }
            type = known
        }
        let defaultValue = options.value("default")
        if let defaultValue, !type.accepts(defaultValue) {
            throw options.error("option 'default' is not of type \(type)")
        }
        let required = try options.optionalBool("required") ?? (defaultValue == nil)
        let runInput = RunnerPreparedNode.RunInput(
            name: inputName,
            type: type,
            required: required,
            defaultValue: defaultValue
        )
        return RunnerPreparedNode(inputs: [], outputs: [RunnerPort("value", type)], runInput: runInput) { context in
            ["value": try RunnerProgram.value(of: runInput, in: context.runInputs, nodeId: context.nodeId)]
        }
    }
}

// MARK: output

/// Names a run output. Options: `name` (default: the node id). Input: `value` (any; several edges allowed, the first
/// whose node ran gives the value). Output: `value`, the same value.
public struct RunnerOutputKind: RunnerNodeKind {
    public let name = "output"
    public init() {}

    public func prepare(_ node: RunnerNodeDefinition) throws -> RunnerPreparedNode {
        let options = RunnerNodeOptions(node)
        try options.allowOnly(["name"])
        try options.noDeclaredInputs()
        try options.noDeclaredOutputs()
        let outputName = try options.optionalString("name") ?? node.id
        guard RunnerDefinition.isValidName(outputName) else {
            throw options.error("option 'name' must be 1 to 128 letters, digits, '_' or '-'")
        }
        return RunnerPreparedNode(
            inputs: [RunnerPort("value", .any, acceptsMany: true)],
            outputs: [RunnerPort("value", .any)],
            runOutput: outputName
        ) { context in
            ["value": context.inputs["value"] ?? .null]
        }
    }
}

// MARK: http

/// Makes an HTTP request through the host. Options: `url` (template), `method` (default GET), `headers` (object of
/// templates), `body` (JSON template: a string is sent as it is, anything else as JSON), `timeoutMs`. Inputs: declared.
/// Outputs: `status`, `headers`, `body` (text), `json` (the body parsed, null if it is not JSON).
public struct RunnerHTTPKind: RunnerNodeKind {
    public let name = "http"
    public init() {}

    public func prepare(_ node: RunnerNodeDefinition) throws -> RunnerPreparedNode {
        let options = RunnerNodeOptions(node)
        try options.allowOnly(["url", "method", "headers", "body", "timeoutMs"])
        try options.noDeclaredOutputs()
        guard let url = try options.template("url") else { throw options.error("option 'url' is missing") }
        let method = try options.optionalString("method")?.uppercased() ?? "GET"
        guard !method.isEmpty, method.utf8.count <= 16, method.utf8.allSatisfy({ $0 >= 0x41 && $0 <= 0x5A }) else {
            throw options.error("option 'method' must be an HTTP method such as GET or POST")
        }
        var headers: [String: RunnerTemplate] = [:]
        switch options.value("headers") {
        case nil: break
        case .object(let fields)?:
            for (name, value) in fields {
                guard !name.isEmpty, name.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != 0x3A }) else {
                    throw options.error("header name \(JSONValue.string(String(name.prefix(60)))) is not a token")
                }
                guard case .string(let text) = value else {
                    throw options.error("header '\(name)' must be a string (template)")
                }
                let template: RunnerTemplate
                do {
                    template = try RunnerTemplate(text)
                } catch let error as RunnerError {
                    throw options.error("header '\(name)': \(error.message)")
                }
                let declared = Set(node.declaredInputs.map(\.name))
                if let unknown = template.inputNames.subtracting(declared).sorted().first {
                    throw options.error("header '\(name)' reads '{{\(unknown)}}', which is not a declared input")
                }
                headers[name] = template
            }
        default:
            throw options.error("option 'headers' must be an object of strings")
        }
        let headerTemplates = headers
        let body = try options.jsonTemplate("body")
        let timeout = try options.optionalInteger("timeoutMs", in: 1...86_400_000).map { Duration.milliseconds($0) }

        return RunnerPreparedNode(
            inputs: node.declaredInputs,
            outputs: [
                RunnerPort("status", .number), RunnerPort("headers", .object), RunnerPort("body", .string),
                RunnerPort("json", .any),
            ]
        ) { context in
            let target = url.render(context.inputs)
            guard target.hasPrefix("http://") || target.hasPrefix("https://") else {
                throw RunnerError(
                    .nodeFailed,
                    "node '\(context.nodeId)' (http): the url must start with http:// or https:// (got \(JSONValue.string(String(target.prefix(200)))))",
                    nodeId: context.nodeId
                )
            }
            var request = RunnerHTTPRequest(
                method: method,
                url: target,
                headers: headerTemplates.mapValues { $0.render(context.inputs) },
                timeout: timeout
            )
            switch body?.render(context.inputs) {
            case nil, .null?: break
            case .string(let text)?: request.body = Array(text.utf8)
            case let value?:
                request.body = RunnerJSON.bytes(value)
                if !request.headers.keys.contains(where: { $0.lowercased() == "content-type" }) {
                    request.headers["Content-Type"] = "application/json"
                }
            }
            let response = try await context.effects.http(request)
            let json = response.body.isEmpty ? JSONValue.null : ((try? RunnerJSON.parse(response.body)) ?? .null)
            return [
                "status": .number(Double(response.status)),
                "headers": .object(response.headers.mapValues(JSONValue.string)),
                "body": .string(String(decoding: response.body, as: UTF8.self)),
                "json": json,
            ]
        }
    }
}

// MARK: template

/// Builds a string or a JSON value from its inputs. Options: `template`, a string (`"Hello, {{name}}!"`, output type
/// string) or any JSON value whose strings are templates (output type object, array or any). Inputs: declared.
/// Output: `value`.
public struct RunnerTemplateKind: RunnerNodeKind {
    public let name = "template"
    public init() {}

    public func prepare(_ node: RunnerNodeDefinition) throws -> RunnerPreparedNode {
        let options = RunnerNodeOptions(node)
        try options.allowOnly(["template"])
        try options.noDeclaredOutputs()
        guard options.value("template") != nil else { throw options.error("option 'template' is missing") }
        if options.value("template")?.stringValue != nil, let template = try options.template("template") {
            return RunnerPreparedNode(inputs: node.declaredInputs, outputs: [RunnerPort("value", .string)]) { context in
                ["value": .string(template.render(context.inputs))]
            }
        }
        guard let template = try options.jsonTemplate("template") else {
            throw options.error("option 'template' is missing")
        }
        return RunnerPreparedNode(inputs: node.declaredInputs, outputs: [RunnerPort("value", template.resultType)]) {
            context in
            ["value": template.render(context.inputs)]
        }
    }
}

// MARK: delay

/// Waits on the host's clock, then passes its input on. Options: `milliseconds` (0 to one day). Input: `value`
/// (optional). Output: `value`.
public struct RunnerDelayKind: RunnerNodeKind {
    public let name = "delay"
    public init() {}

    public func prepare(_ node: RunnerNodeDefinition) throws -> RunnerPreparedNode {
        let options = RunnerNodeOptions(node)
        try options.allowOnly(["milliseconds"])
        try options.noDeclaredInputs()
        try options.noDeclaredOutputs()
        guard let milliseconds = try options.optionalInteger("milliseconds", in: 0...86_400_000) else {
            throw options.error("option 'milliseconds' is missing")
        }
        return RunnerPreparedNode(
            inputs: [RunnerPort("value", .any, required: false)],
            outputs: [RunnerPort("value", .any)]
        ) { context in
            try await context.effects.sleep(for: .milliseconds(milliseconds))
            try Task.checkCancellation()
            return ["value": context.inputs["value"] ?? .null]
        }
    }
}

// MARK: publish

/// Publishes a message through the host. Options: `subject` (template), `payload` (JSON template; without it, the
/// declared input `payload` is sent). Inputs: declared. Outputs: `subject`, `payload` (what was sent).
public struct RunnerPublishKind: RunnerNodeKind {
    public let name = "publish"
    public init() {}

    public func prepare(_ node: RunnerNodeDefinition) throws -> RunnerPreparedNode {
        let options = RunnerNodeOptions(node)
        try options.allowOnly(["subject", "payload"])
        try options.noDeclaredOutputs()
        guard let subject = try options.template("subject") else { throw options.error("option 'subject' is missing") }
        let payload = try options.jsonTemplate("payload")
        if payload == nil, !node.declaredInputs.contains(where: { $0.name == "payload" }) {
            throw options.error("give a 'payload' option or declare an input named 'payload'")
        }
        return RunnerPreparedNode(
            inputs: node.declaredInputs,
            outputs: [RunnerPort("subject", .string), RunnerPort("payload", .any)]
        ) { context in
            let target = subject.render(context.inputs)
            try RunnerSubjects.check(target, wildcards: false, context: context)
            let value = payload?.render(context.inputs) ?? context.inputs["payload"] ?? .null
            try await context.effects.publish(subject: target, payload: value)
            return ["subject": .string(target), "payload": value]
        }
    }
}

// MARK: subscribe

/// A streaming source: subscribes through the host and emits each message on its `message` stream port until it has
/// `count` messages or one satisfies `until`. Options: `subject` (template; wildcards allowed), `count`, `until` (a
/// condition over the message: `data…`, `subject`, `user…`, `now`); at least one of the two. Inputs: declared.
/// Outputs: `message` (stream of `{subject, data}`), `last`, `count`.
public struct RunnerSubscribeKind: RunnerNodeKind {
    public let name = "subscribe"
    public init() {}

    public func prepare(_ node: RunnerNodeDefinition) throws -> RunnerPreparedNode {
        let options = RunnerNodeOptions(node)
        try options.allowOnly(["subject", "count", "until"])
        try options.noDeclaredOutputs()
        guard let subject = try options.template("subject") else { throw options.error("option 'subject' is missing") }
        let count = try options.optionalInteger("count", in: 1...1_000_000)
        var until: RuleExpression?
        if let text = try options.optionalString("until") {
            do {
                until = try RuleExpression.parse(text)
            } catch let error as StorkError {
                throw options.error("option 'until': \(error.message)")
            }
        }
        guard count != nil || until != nil else {
            throw options.error("give 'count', 'until' or both, so that the stream ends")
        }
        let stopCondition = until
        return RunnerPreparedNode(
            inputs: node.declaredInputs,
            outputs: [RunnerPort("message", .stream), RunnerPort("last", .any), RunnerPort("count", .number)]
        ) { context in
            let target = subject.render(context.inputs)
            try RunnerSubjects.check(target, wildcards: true, context: context)
            let messages = try await context.effects.subscribe(subject: target)
            var iterator = messages.makeAsyncIterator()
            var received = 0
            var last = JSONValue.null
            while true {
                try await context.checkpoint()
                guard let message = await iterator.next() else {
                    try Task.checkCancellation()
                    throw RunnerError(
                        .nodeFailed,
                        "node '\(context.nodeId)' (subscribe): the subscription to '\(target)' ended after \(received) message(s)",
                        nodeId: context.nodeId
                    )
                }
                received += 1
                last = message.value
                try await context.emit(message.value, on: "message")
                if let count, received >= count { break }
                if let stopCondition {
                    let ruleContext = RuleContext(
                        user: context.user,
                        data: message.data,
                        subject: message.subject,
                        action: "subscribe",
                        now: context.effects.now()
                    )
                    if stopCondition.allows(ruleContext) { break }
                }
            }
            return ["last": last, "count": .number(Double(received))]
        }
    }
}

// MARK: branch

/// Chooses one of two arms. Input: `value` (any) and any declared inputs. Options: `condition` (an expression over
/// the node's inputs as `data.<port>`, plus `user…` and `now`), or `equals` (a JSON value `value` must equal), or
/// neither (the truth of `value`: not null, false, 0, "", [] or {}). Outputs: `true` and `false`; the one taken carries
/// `value`, the other is inactive, and nodes fed only by it are skipped.
public struct RunnerBranchKind: RunnerNodeKind {
    public let name = "branch"
    public init() {}

    public func prepare(_ node: RunnerNodeDefinition) throws -> RunnerPreparedNode {
        let options = RunnerNodeOptions(node)
        try options.allowOnly(["condition", "equals"])
        try options.noDeclaredOutputs()
        var condition: RuleExpression?
        if let text = try options.optionalString("condition") {
            do {
                condition = try RuleExpression.parse(text)
            } catch let error as StorkError {
                throw options.error("option 'condition': \(error.message)")
            }
        }
        let equals = options.value("equals")
        guard condition == nil || equals == nil else { throw options.error("give 'condition' or 'equals', not both") }
        let parsedCondition = condition
        var inputs = node.declaredInputs
        if !inputs.contains(where: { $0.name == "value" }) { inputs.insert(RunnerPort("value", .any), at: 0) }
        return RunnerPreparedNode(
            inputs: inputs,
            outputs: [RunnerPort("true", .any), RunnerPort("false", .any)]
        ) { context in
            let value = context.inputs["value"] ?? .null
            let taken: Bool
            if let parsedCondition {
                taken = parsedCondition.allows(
                    RuleContext(
                        user: context.user,
                        data: .object(context.inputs),
                        subject: "",
                        action: "branch",
                        now: context.effects.now()
                    )
                )
            } else if let equals {
                taken = value == equals
            } else {
                taken = RunnerBranchKind.isTruthy(value)
            }
            return RunnerNodeResult([taken ? "true" : "false": value], inactivePorts: [taken ? "false" : "true"])
        }
    }

    /// Not null, false, 0, "", [] or {}.
    public static func isTruthy(_ value: JSONValue) -> Bool {
        switch value {
        case .null: false
        case .bool(let flag): flag
        case .number(let number): number != 0 && !number.isNaN
        case .string(let text): !text.isEmpty
        case .array(let items): !items.isEmpty
        case .object(let fields): !fields.isEmpty
        }
    }
}

// MARK: - Subjects

enum RunnerSubjects {
    /// A subject rendered from a template must be usable: not empty, no spaces or control characters, no empty
    /// tokens, and wildcards (`*`, `>` as whole tokens) only where subscribing.
    static func check(_ subject: String, wildcards: Bool, context: RunnerNodeContext) throws {
        let tokens = subject.split(separator: ".", omittingEmptySubsequences: false)
        var problem: String?
        if subject.isEmpty || subject.utf8.count > 512 {
            problem = "must be 1 to 512 bytes"
        } else if subject.utf8.contains(where: { $0 <= 0x20 || $0 == 0x7F }) {
            problem = "must not contain spaces or control characters"
        } else if tokens.contains(where: \.isEmpty) {
            problem = "must not have empty tokens"
        } else if tokens.enumerated().contains(where: { index, token in
            (token == ">" && (!wildcards || index != tokens.count - 1)) || (token == "*" && !wildcards)
                || (token.count > 1 && (token.contains("*") || token.contains(">")))
        }) {
            problem = wildcards ? "has a misplaced wildcard" : "must not contain wildcards"
        }
        if let problem {
            throw RunnerError(
                .nodeFailed,
                "node '\(context.nodeId)' (\(context.node.kind)): the subject \(JSONValue.string(String(subject.prefix(200)))) \(problem)",
                nodeId: context.nodeId,
                port: nil
            )
        }
    }
}
