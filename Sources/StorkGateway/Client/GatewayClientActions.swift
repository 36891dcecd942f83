import StorkCore
import StorkRealtime

// MARK: - Publish, subscribe, request/respond, presence

extension GatewayClient {
    /// Publishes `data` on `subject` and waits for the server's `ok` (the permission check passed and the message was
    /// handed to the router).
    public func publish(_ subject: String, data: JSONValue) async throws {
        _ = try await self.call(.publish(subject: subject, data: data))
    }

    /// Subscribes to `subject` (`*` and a final `>` allowed). With `from`, stored messages of the stream that captures
    /// the subject are replayed first (the server answers `no_history` when none does). The subscription is resumed
    /// with the session after reconnects; it ends with ``GatewaySubscription/unsubscribe()``, ``unsubscribe(_:)``,
    /// when its iteration is abandoned, or when the client closes.
    public func subscribe(_ subject: String, from: GatewayReplayStart? = nil) async throws -> GatewaySubscription {
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: GatewayMessage.self)
        let key: UInt64 = try self.state.withLock { state throws(GatewayClientError) in
            if let finished = state.finished { throw finished }
            let key = state.nextNumber()
            state.subscriptions[key] = LocalSubscription(subject: subject, continuation: continuation)
            return key
        }
        continuation.onTermination = { [weak self] _ in self?.dropSubscription(key) }
        do {
            let answer = try await self.call(.subscribe(subject: subject, from: from))
            let replayed = GatewayClientInbound.sequence(answer["replayed"]).map { Int($0) }
            return GatewaySubscription(subject: subject, replayed: replayed, key: key, client: self, stream: stream)
        } catch {
            self.dropSubscription(key)
            continuation.finish()
            throw error
        }
    }

    /// Ends every subscription of this client on exactly `subject` and unsubscribes on the server.
    public func unsubscribe(_ subject: String) async throws {
        let ended = self.state.withLock { state in
            let keys = state.subscriptions.filter { $0.value.subject == subject }.map(\.key)
            return keys.compactMap { state.subscriptions.removeValue(forKey: $0)?.continuation }
        }
        for continuation in ended { continuation.finish() }
        _ = try await self.call(.unsubscribe(subject: subject))
    }

    /// Sends `data` to `subject` as a request and returns the reply's data. The server waits `timeout` for a
    /// responder (`timeout` error), this client that plus `answerTimeout`.
    public func request(_ subject: String, data: JSONValue, timeout: Duration = .seconds(5)) async throws -> JSONValue {
        let milliseconds = max(1, min(600_000, Int((timeout / .milliseconds(1)).rounded(.up))))
        let answer = try await self.call(
            .request(subject: subject, data: data, timeoutMilliseconds: milliseconds),
            timeout: timeout + self.configuration.answerTimeout
        )
        return answer["data"] ?? .null
    }

    /// Answers a request this client received (a message's `replyTo`), once.
    public func respond(to replyTo: String, data: JSONValue) async throws {
        _ = try await self.call(.respond(to: replyTo, data: data))
    }

    /// The ids of the users subscribed to `subject`, across the cluster.
    public func presence(_ subject: String) async throws -> [String] {
        let answer = try await self.call(.presence(subject: subject))
        guard case .array(let users)? = answer["users"] else { return [] }
        return users.compactMap(\.stringValue)
    }

    /// A round trip to the server (`ping` → `pong`).
    public func ping() async throws {
        _ = try await self.call(.ping)
    }

    /// Forgets a local subscription; the last one on its subject unsubscribes on the server (without waiting).
    func dropSubscription(_ key: UInt64) {
        let (subscription, last) = self.state.withLock { state -> (LocalSubscription?, Bool) in
            guard let removed = state.subscriptions.removeValue(forKey: key) else { return (nil, false) }
            return (removed, !state.subscriptions.values.contains { $0.subject == removed.subject })
        }
        guard let subscription else { return }
        subscription.continuation.finish()
        if last { self.send(.unsubscribe(subject: subscription.subject)) }
    }

    /// Ends one subscription; the last on its subject unsubscribes on the server and waits for the `ok`.
    func endSubscription(_ key: UInt64) async throws {
        let (subscription, last) = self.state.withLock { state -> (LocalSubscription?, Bool) in
            guard let removed = state.subscriptions.removeValue(forKey: key) else { return (nil, false) }
            return (removed, !state.subscriptions.values.contains { $0.subject == removed.subject })
        }
        guard let subscription else { return }
        subscription.continuation.finish()
        if last { _ = try await self.call(.unsubscribe(subject: subscription.subject)) }
    }
}

// MARK: - GatewaySubscription

/// The messages of one subscription, in delivery order (replayed ones first). Buffered without bound: consume them.
public struct GatewaySubscription: AsyncSequence, Sendable {
    public typealias Element = GatewayMessage

    public let subject: String
    /// How many stored messages the server replayed (only for `subscribe(_:from:)`).
    public let replayed: Int?
    let key: UInt64
    let client: GatewayClient
    let stream: AsyncThrowingStream<GatewayMessage, any Error>

    public func makeAsyncIterator() -> AsyncThrowingStream<GatewayMessage, any Error>.AsyncIterator {
        self.stream.makeAsyncIterator()
    }

    /// Ends the subscription (its sequence finishes) and unsubscribes on the server unless another subscription of
    /// this client has the same subject.
    public func unsubscribe() async throws {
        try await self.client.endSubscription(self.key)
    }
}
