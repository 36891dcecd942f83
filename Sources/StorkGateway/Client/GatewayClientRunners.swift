import StorkCore
import StorkRealtime

// MARK: - Runners

extension GatewayClient {
    /// Opens an instance of the runner definition `name` (placed somewhere in the cluster); its events reach only this
    /// session. The instance ends with ``GatewayRunner/close()`` or with the session.
    public func openRunner(_ name: String) async throws -> GatewayRunner {
        let answer = try await self.call(.runnerOpen(runner: name))
        guard case .string(let instance)? = answer["instance"] else {
            throw GatewayClientError(.protocolError, "runner.open was answered without an instance")
        }
        return GatewayRunner(name: name, instance: instance, client: self)
    }

    func startRun(_ instance: String, inputs: [String: JSONValue]) async throws -> GatewayRun {
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: RunnerEvent.self)
        let token: UInt64 = try self.state.withLock { state throws(GatewayClientError) in
            if let finished = state.finished { throw finished }
            guard state.runs[instance] == nil else {
                throw GatewayClientError("busy", "a run of this runner instance is in progress")
            }
            let token = state.nextNumber()
            state.runs[instance] = LocalRun(token: token, runId: nil, continuation: continuation)
            return token
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { state in
                if state.runs[instance]?.token == token { state.runs[instance] = nil }
            }
        }
        do {
            let answer = try await self.call(.runnerRun(instance: instance, inputs: inputs))
            let runId = answer["runId"]?.stringValue ?? ""
            self.state.withLock { state in
                if state.runs[instance]?.token == token { state.runs[instance]?.runId = runId }
            }
            return GatewayRun(runId: runId, instance: instance, stream: stream)
        } catch {
            continuation.finish(throwing: error)
            throw error
        }
    }
}

/// An open runner instance.
public struct GatewayRunner: Sendable {
    /// The definition's name.
    public let name: String
    /// The instance id the server gave it.
    public let instance: String
    let client: GatewayClient

    /// Starts a run with `inputs` and returns its events: one per node (and per streamed item), ending with
    /// `completed` or `failed`. One run at a time per instance (`busy` otherwise).
    public func run(_ inputs: [String: JSONValue] = [:]) async throws -> GatewayRun {
        try await self.client.startRun(self.instance, inputs: inputs)
    }

    /// Runs with `inputs` to the end and returns the outputs; a `failed` run throws its code and error.
    public func call(_ inputs: [String: JSONValue] = [:]) async throws -> [String: JSONValue] {
        try await self.run(inputs).outputs()
    }

    /// Pauses the run in progress (`not_running` when there is none).
    public func pause() async throws {
        _ = try await self.client.call(.runnerPause(instance: self.instance))
    }

    /// Resumes a paused run.
    public func resume() async throws {
        _ = try await self.client.call(.runnerResume(instance: self.instance))
    }

    /// Closes the instance (it is unloaded wherever it runs).
    public func close() async throws {
        _ = try await self.client.call(.runnerClose(instance: self.instance))
    }
}

/// The events of one run, in order; the sequence ends after `completed` or `failed`, and throws `session_lost` when
/// a reconnect could not recover the session (the run's end may have been lost).
public struct GatewayRun: AsyncSequence, Sendable {
    public typealias Element = RunnerEvent

    public let runId: String
    public let instance: String
    let stream: AsyncThrowingStream<RunnerEvent, any Error>

    public func makeAsyncIterator() -> AsyncThrowingStream<RunnerEvent, any Error>.AsyncIterator {
        self.stream.makeAsyncIterator()
    }

    /// Waits for the end of the run: its outputs, or its failure as a ``GatewayClientError`` with the runner's code
    /// (`node-failed`, …).
    public func outputs() async throws -> [String: JSONValue] {
        for try await event in self.stream {
            switch event {
            case .completed(_, let outputs):
                return outputs
            case .failed(_, let nodeId, let error):
                let node = nodeId.map { " (node \($0))" } ?? ""
                throw GatewayClientError(GatewayClientError.Code(error.code.rawValue), error.message + node)
            default:
                continue
            }
        }
        throw GatewayClientError(.closed, "the run's events ended without completed or failed")
    }
}
