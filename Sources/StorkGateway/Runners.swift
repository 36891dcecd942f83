import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import StorkConnectors
import StorkCore
import StorkBus
import StorkRealtime
import StorkResources
import StorkStreaming
import Synchronization

// MARK: - Runners
//
// A client opens a runner (a definition by name): the gateway allocates the resource `$gw.runner.<instance>`, which
// placement puts on one node, where `RunnerConnector` holds the compiled program and waits for commands on
// `$GW.runner.<instance>.ctl` (run, pause, resume). A run's events go to `$GW.runner.<instance>.events`, which only
// the opening session subscribes to (clients can never subscribe to `$` subjects), through the relay when the runner
// runs on another node. Closing the runner, or the session ending (its recovery window passed), deallocates it.
//
// When the runner's node dies, placement reopens the instance elsewhere; the new owner announces itself with a
// `loaded` event, and a session that had a run in progress turns that into a `failed` event for the run
// (code `node-failed`): the client may run it again. Runs are not retried by the server, since a run may have had
// effects (HTTP calls, publishes) that must not happen twice.

extension Gateway {
    static let runnerKind = "gateway.runner"
    static let runnerPrefix = "$gw.runner."

    static func runnerControlSubject(_ instance: String) -> String { "$GW.runner.\(instance).ctl" }
    static func runnerEventsSubject(_ instance: String) -> String { "$GW.runner.\(instance).events" }

    /// The subject the `runner` permission is checked on: `users.<user>.runners.<runner>`.
    static func runnerPermissionSubject(user: String, runner: String) -> String {
        "users.\(Subject.token(user)).runners.\(Subject.token(runner))"
    }

    /// Opens a runner for a session: allocates the instance and subscribes the session to its events.
    func openRunner(_ runner: String, session: GatewaySession) async throws(GatewayActionError) -> String {
        guard self.runnerPrograms[runner] != nil else {
            throw GatewayActionError("unknown_runner", "no runner named '\(runner)'")
        }
        guard self.allows(.runner, subject: Self.runnerPermissionSubject(user: session.user.id, runner: runner), user: session.user)
        else { throw .forbidden(.runner, runner) }
        guard let resources = self.resources else {
            throw GatewayActionError("unsupported", "runners need the resource manager")
        }
        var generator = SystemRandomNumberGenerator()
        let instance = "r" + String(generator.next(), radix: 36)
        let events = Self.runnerEventsSubject(instance)
        _ = session.addSubscription(events, mayRespond: false, holding: false, runnerInstance: instance)
        session.openRunner(instance)
        self.hubAdd(events, session: session)
        let resource = Resource(
            id: ResourceID(Self.runnerPrefix + instance),
            attributes: [
                "kind": .string(Self.runnerKind), "runner": .string(runner), "instance": .string(instance),
                "user": session.user.ruleValue,
            ]
        )
        let outcome = await resources.allocate(resource)
        guard outcome.succeeded else {
            self.closeRunnerSubscription(instance, session: session)
            throw GatewayActionError("runner_failed", "the runner could not be loaded: \(outcome)")
        }
        return instance
    }

    func closeRunnerSubscription(_ instance: String, session: GatewaySession) {
        let events = Self.runnerEventsSubject(instance)
        if session.removeSubscription(events) { self.hubRemove(events, session: session) }
        session.closeRunner(instance)
    }

    /// Closes a session's runner: unsubscribes and deallocates it.
    func closeRunner(_ instance: String, session: GatewaySession) async throws(GatewayActionError) {
        guard session.hasRunner(instance) else { throw GatewayActionError("unknown_instance", "no open runner '\(instance)'") }
        self.closeRunnerSubscription(instance, session: session)
        _ = await self.resources?.deallocate(ResourceID(Self.runnerPrefix + instance))
    }

    /// Sends a command to a runner instance wherever it runs and returns its answer.
    func commandRunner(
        _ instance: String,
        session: GatewaySession,
        command: JSONValue
    ) async throws(GatewayActionError) -> JSONValue {
        guard session.hasRunner(instance) else { throw GatewayActionError("unknown_instance", "no open runner '\(instance)'") }
        let reply = try await self.request(
            subject: Self.runnerControlSubject(instance), data: command, timeout: self.configuration.requestTimeout
        )
        guard let answer = try? JSONValue.parse(reply.payload.readableBytesView) else {
            throw GatewayActionError("runner_failed", "the runner answered something unreadable")
        }
        if case .string(let code)? = answer["error"] {
            throw GatewayActionError(code, answer["message"]?.stringValue ?? code)
        }
        return answer
    }

    /// Runs a runner definition here, to the end, for an HTTP call: its outputs, or the error.
    func runOnce(_ runner: String, inputs: [String: JSONValue], user: AuthenticatedUser) async throws(GatewayActionError) -> (String, RunnerOutcome) {
        guard let program = self.runnerPrograms[runner] else {
            throw GatewayActionError("unknown_runner", "no runner named '\(runner)'")
        }
        guard self.allows(.runner, subject: Self.runnerPermissionSubject(user: user.id, runner: runner), user: user) else {
            throw .forbidden(.runner, runner)
        }
        var generator = SystemRandomNumberGenerator()
        let runId = "run-" + String(generator.next(), radix: 36)
        let execution = RunnerExecution(
            program: program, runId: runId, inputs: inputs, user: user.ruleValue,
            effects: GatewayRunnerEffects(gateway: self, user: user)
        )
        return (runId, await execution.run())
    }
}

// MARK: - The connector that holds a runner where it is placed

/// Runs `$gw.runner.<instance>` resources: loads the program, answers commands, streams a run's events.
public struct RunnerConnector: Connector {
    public let name = Gateway.runnerKind
    let gateway: Gateway

    public init(gateway: Gateway) {
        self.gateway = gateway
    }

    public func validate(_ resource: Resource) throws {
        guard case .string(let runner)? = resource.attributes["runner"], self.gateway.runnerPrograms[runner] != nil,
            case .string? = resource.attributes["instance"], case .object? = resource.attributes["user"]
        else {
            throw StorkError(.invalidInput, "\(resource.id): not a runner of this gateway (runner, instance and user required)")
        }
    }

    public func run(_ resource: Resource, context: ConnectorContext) async throws {
        guard let instance = resource.attributes["instance"]?.stringValue,
            let runner = resource.attributes["runner"]?.stringValue,
            let program = self.gateway.runnerPrograms[runner],
            case .object(let userFields)? = resource.attributes["user"],
            case .string(let userID)? = userFields["id"]
        else { return }
        let roles = (userFields["roles"].flatMap { value -> [String]? in
            if case .array(let items) = value { return items.compactMap(\.stringValue) }
            return nil
        }) ?? []
        let user = AuthenticatedUser(id: userID, roles: roles, data: userFields["data"] ?? .object([:]))
        let gateway = self.gateway
        let events = Gateway.runnerEventsSubject(instance)
        let control = Gateway.runnerControlSubject(instance)
        let (commands, continuation) = AsyncStream.makeStream(of: BusMessage.self, bufferingPolicy: .bufferingNewest(64))
        let subscription = gateway.router.subscribe(control, receiver: StreamReceiver(continuation: continuation))
        defer {
            gateway.router.unsubscribe(subscription)
            continuation.finish()
        }
        context.status.state(.connected)
        Self.publish(["type": "loaded", "node": .string(context.resource.node.name)], to: events, gateway: gateway)
        context.logger.info("runner loaded", metadata: ["stork.runner": "\(runner)", "stork.instance": "\(instance)"])
        let current = CurrentRun()
        await withTaskGroup(of: Void.self) { group in
            // The stop ends the command loop; the runs in progress are cancelled after it.
            group.addTask {
                await context.stop.wait()
                continuation.finish()
            }
            do {
                for await command in commands {
                    guard let replyTo = command.replyTo,
                        let body = try? JSONValue.parse(command.payload.readableBytesView),
                        case .string(let op)? = body["op"]
                    else { continue }
                    var answer: JSONValue
                    switch op {
                    case "run":
                        var inputs: [String: JSONValue] = [:]
                        if case .object(let given)? = body["inputs"] { inputs = given }
                        var generator = SystemRandomNumberGenerator()
                        let runId = "run-" + String(generator.next(), radix: 36)
                        let execution = RunnerExecution(
                            program: program, runId: runId, inputs: inputs, user: user.ruleValue,
                            effects: GatewayRunnerEffects(gateway: gateway, user: user)
                        )
                        let started = current.execution.withLock { running -> Bool in
                            guard running == nil else { return false }
                            running = execution
                            return true
                        }
                        guard started else {
                            answer = ["error": "busy", "message": "a run of this runner is in progress"]
                            break
                        }
                        group.addTask {
                            for await event in execution.events {
                                gateway.router.publish(
                                    BusMessage(subject: events, payload: ByteBuffer(string: event.jsonText))
                                )
                            }
                        }
                        group.addTask {
                            _ = await execution.run()
                            current.execution.withLock { $0 = nil }
                        }
                        answer = ["accepted": true, "runId": .string(runId), "node": .string(context.resource.node.name)]
                    case "pause", "resume":
                        guard let execution = current.execution.withLock({ $0 }) else {
                            answer = ["error": "not_running", "message": "no run in progress"]
                            break
                        }
                        if op == "pause" { execution.pause() } else { execution.resume() }
                        answer = ["ok": true, "runId": .string(execution.runId)]
                    default:
                        answer = ["error": "bad_command", "message": "unknown op"]
                    }
                    var bytes: [UInt8] = []
                    answer.appendJSON(to: &bytes)
                    gateway.router.publish(BusMessage(subject: replyTo, payload: ByteBuffer(bytes: bytes)))
                }
            }
            group.cancelAll()
        }
        context.logger.info("runner unloaded", metadata: ["stork.instance": "\(instance)"])
    }

    static func publish(_ value: JSONValue, to subject: String, gateway: Gateway) {
        var bytes: [UInt8] = []
        value.appendJSON(to: &bytes)
        gateway.router.publish(BusMessage(subject: subject, payload: ByteBuffer(bytes: bytes)))
    }
}

/// The run a runner instance has in progress.
final class CurrentRun: Sendable {
    let execution = Mutex<RunnerExecution?>(nil)
}

/// Router messages into an AsyncStream.
struct StreamReceiver: BusReceiver {
    let continuation: AsyncStream<BusMessage>.Continuation

    func receive(_ message: BusMessage, subscription: BusSubscription) {
        self.continuation.yield(message)
    }
}

/// Router messages as a runner's `subscribe` node sees them (JSON bodies parsed, others as text).
struct RunnerMessageReceiver: BusReceiver {
    let continuation: AsyncStream<RunnerMessage>.Continuation

    func receive(_ message: BusMessage, subscription: BusSubscription) {
        let data = (try? JSONValue.parse(message.payload.readableBytesView))
            ?? .string(String(decoding: message.payload.readableBytesView, as: UTF8.self))
        self.continuation.yield(RunnerMessage(subject: message.subject, data: data))
    }
}

// MARK: - What a run may do, as its user

/// A run's effects on the world, checked as the user who runs it: publishing and subscribing obey the same rules as
/// the user's own actions; HTTP requests go through the node's HTTP client (responses up to 1 MiB).
struct GatewayRunnerEffects: RunnerEffects {
    let gateway: Gateway
    let user: AuthenticatedUser
    static let maxResponseBytes = 1 << 20

    func http(_ request: RunnerHTTPRequest) async throws -> RunnerHTTPResponse {
        var outgoing = HTTPClientRequest(url: request.url)
        outgoing.method = HTTPMethod(rawValue: request.method.uppercased())
        for (name, value) in request.headers { outgoing.headers.add(name: name, value: value) }
        if let body = request.body { outgoing.body = .bytes(ByteBuffer(bytes: body)) }
        let timeout = request.timeout ?? .seconds(30)
        let response = try await self.gateway.httpClient.execute(
            outgoing, timeout: .nanoseconds(timeout.nanosecondsClamped)
        )
        let body = try await response.body.collect(upTo: Self.maxResponseBytes)
        var headers: [String: String] = [:]
        for header in response.headers { headers[header.name.lowercased()] = header.value }
        return RunnerHTTPResponse(status: Int(response.status.code), headers: headers, body: Array(body.readableBytesView))
    }

    func publish(subject: String, payload: JSONValue) async throws {
        guard Subject.isValidLiteral(subject), self.gateway.allows(.publish, subject: subject, user: self.user, data: payload)
        else { throw StorkError(.invalidInput, "publish on '\(subject)' is not allowed for \(self.user.id)") }
        self.gateway.publish(subject: subject, data: payload)
    }

    func subscribe(subject: String) async throws -> AsyncStream<RunnerMessage> {
        guard Subject.isValidPattern(subject), self.gateway.allows(.subscribe, subject: subject, user: self.user) else {
            throw StorkError(.invalidInput, "subscribe on '\(subject)' is not allowed for \(self.user.id)")
        }
        let (stream, continuation) = AsyncStream.makeStream(of: RunnerMessage.self, bufferingPolicy: .bufferingNewest(1024))
        let gateway = self.gateway
        let subscription = gateway.router.subscribe(subject, receiver: RunnerMessageReceiver(continuation: continuation))
        continuation.onTermination = { _ in gateway.router.unsubscribe(subscription) }
        return stream
    }

    func sleep(for duration: Duration) async throws {
        try await self.gateway.clock.sleep(duration)
    }

    func now() -> Double {
        self.gateway.clock.wallMilliseconds()
    }
}

// MARK: - Loading definitions

extension Gateway {
    /// Compiles every `*.json` runner definition in `directory`, by the definition's id (the file name without
    /// `.json` when the definition has none). A definition that does not compile is an error naming the file.
    public static func loadRunners(
        directory: String,
        registry: RunnerNodeRegistry = RunnerNodeRegistry()
    ) throws -> [String: RunnerProgram] {
        let files = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".json") }.sorted()
        var programs: [String: RunnerProgram] = [:]
        for file in files {
            let path = "\(directory)/\(file)"
            guard let data = FileManager.default.contents(atPath: path) else {
                throw StorkError(.invalidInput, "runners: cannot read \(path)")
            }
            do {
                let definition = try RunnerDefinition(json: Array(data))
                let name = definition.id.isEmpty ? String(file.dropLast(5)) : definition.id
                guard programs[name] == nil else { throw StorkError(.invalidInput, "runner '\(name)' defined twice") }
                programs[name] = try RunnerProgram(definition: definition, registry: registry)
            } catch let error as RunnerError {
                throw StorkError(.invalidInput, "runners: \(path): \(error)")
            }
        }
        return programs
    }
}
