import AsyncHTTPClient
import Crypto
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import StorkCore
import StorkBus
import StorkResources

// MARK: - Settings

/// The attributes of a `webhook` resource.
public struct WebhookConnectorSettings: Sendable, Hashable {
    /// `url`: http:// or https://; every message is POSTed here.
    public var url: String
    /// `stream`: the JetStream stream that holds the events.
    public var stream: String
    /// `subject` (wildcards allowed): the consumer's filter within the stream.
    public var subject: String
    /// `secret`: a string or `{"secret": "NAME"}`; the key of the `Stork-Signature` HMAC.
    public var secret: ConnectorHeader.Value
    /// `server` (optional, `nats://host:port`): the NATS server that holds the stream; default: this node's own bus,
    /// in process (no socket).
    public var server: ConnectorNATSEndpoint?
    /// `timeout` (seconds, default 10): one POST.
    public var timeout: Duration
    /// `maxAttempts` (default 5): POSTs of one message before it is dead-lettered (or dropped, without
    /// `deadLetter`).
    public var maxAttempts: Int
    /// `backoffMin`, `backoffMax` (seconds, defaults 1 and 20): between attempts of one message, and between
    /// connection attempts.
    public var backoffMinimum: Duration
    public var backoffMaximum: Duration
    /// `deadLetter` (optional subject): where a message goes after its last failed attempt.
    public var deadLetter: String?
    /// `batch` (default 10): messages fetched per pull, and the most awaiting their ack (`max_ack_pending`).
    public var batch: Int
    /// `ackWait` (seconds, default 30): how long the server waits for an ack before it redelivers. Must be longer
    /// than `timeout` and `backoffMax`: the connector renews it (`+WPI`) between attempts.
    public var ackWait: Duration
    /// The durable consumer's name: from the resource id (see ``WebhookConnector/consumerName(for:)``).
    public var consumer: String

    public init(_ resource: Resource, kind: String = WebhookConnector.kind) throws {
        let attributes = ConnectorAttributes(resource, kind: kind)
        self.url = try attributes.url("url", schemes: ["http", "https"])
        self.stream = try attributes.string("stream")
        guard Self.isStreamName(self.stream) else {
            throw attributes.error("stream", "must be a stream name without '.', '*', '>', '/', '\\' or whitespace")
        }
        self.subject = try attributes.subject("subject", wildcards: true)
        switch resource.attributes["secret"] {
        case .string(let value)? where !value.isEmpty:
            self.secret = .literal(value)
        case .object(let reference)? where reference.count == 1:
            guard case .string(let name)? = reference["secret"], !name.isEmpty else {
                throw attributes.error("secret", "must be a string or {\"secret\": \"NAME\"}")
            }
            self.secret = .secret(name)
        case nil, .null?:
            throw attributes.error("secret", "is required (the key of the Stork-Signature HMAC)")
        default:
            throw attributes.error("secret", "must be a string or {\"secret\": \"NAME\"}")
        }
        if let server = try attributes.optionalString("server") {
            guard let endpoint = Self.endpoint(server) else {
                throw attributes.error("server", "must be a nats://host:port URL, got '\(server)'")
            }
            self.server = endpoint
        }
        self.timeout = try attributes.seconds("timeout", default: .seconds(10), range: 0.01...600)
        self.maxAttempts = try attributes.integer("maxAttempts", default: 5, range: 1...1000)
        self.backoffMinimum = try attributes.seconds("backoffMin", default: .seconds(1), range: 0.001...3600)
        self.backoffMaximum = try attributes.seconds("backoffMax", default: .seconds(20), range: 0.001...3600)
        guard self.backoffMaximum >= self.backoffMinimum else {
            throw attributes.error("backoffMax", "must not be less than backoffMin")
        }
        self.deadLetter = try attributes.optionalSubject("deadLetter")
        self.batch = try attributes.integer("batch", default: 10, range: 1...1000)
        self.ackWait = try attributes.seconds("ackWait", default: .seconds(30), range: 1...86_400)
        guard self.ackWait > self.timeout, self.ackWait > self.backoffMaximum else {
            throw attributes.error(
                "ackWait",
                "must be longer than 'timeout' and 'backoffMax' (the ack wait is renewed between attempts)"
            )
        }
        self.consumer = WebhookConnector.consumerName(for: resource.id)
    }

    static func isStreamName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 255
            && !name.contains { $0 == "." || $0 == "*" || $0 == ">" || $0 == "/" || $0 == "\\" || $0.isWhitespace }
    }

    /// `nats://host:port` (port default 4222; `nats://token@host`, `nats://user:password@host` log in).
    static func endpoint(_ text: String) -> ConnectorNATSEndpoint? {
        guard let url = URL(string: text), url.scheme?.lowercased() == "nats", let host = url.host, !host.isEmpty,
            url.path.isEmpty || url.path == "/"
        else { return nil }
        var endpoint = ConnectorNATSEndpoint(host: host, port: url.port ?? 4222)
        if let user = url.user?.removingPercentEncoding, !user.isEmpty {
            if let password = url.password?.removingPercentEncoding {
                endpoint.user = user
                endpoint.password = password
            } else {
                endpoint.token = user
            }
        }
        return endpoint
    }
}

// MARK: - WebhookConnector

/// `kind: webhook`: a durable JetStream consumer on `subject` in `stream`; every message is POSTed to `url`, signed,
/// retried with backoff, and acknowledged once the receiver answered 2xx.
///
/// Each POST carries `Stork-Delivery-Id` (`<stream>:<stream sequence>`, the same on every redelivery),
/// `Stork-Subject`, `Stork-Attempt` and `Stork-Signature: sha256=<hex HMAC-SHA256(secret, body)>`. A message that
/// failed `maxAttempts` times is published to `deadLetter` (if set) and terminated (`+TERM`).
///
/// The consumer (named after the resource id) lives with the stream, so its position moves with the resource from
/// node to node. When the resource is terminated (a move, a drain), a POST in flight finishes and is acked, fetched
/// messages not started are given back (`-NAK`), and the server has processed all of it before `run` returns: with
/// no failure, each message is delivered exactly once. A node that dies leaves its unacked messages to be redelivered
/// after `ackWait`: at least once.
public struct WebhookConnector: Connector {
    public static let kind = "webhook"
    public var name: String { Self.kind }
    let client: HTTPClient
    let pullExpiry: Duration

    /// Posts with `client` (shared by every resource; the caller shuts it down). Each pull request waits up to
    /// `pullExpiry` at the server for messages: longer means fewer requests while a stream is idle (each one costs
    /// the server a pass over the stream's consumers), shorter means a faster stop (a stopping connector waits for
    /// its open pull to end, so that nothing is delivered to it after it gave its messages back).
    public init(client: HTTPClient, pullExpiry: Duration = .seconds(5)) {
        self.client = client
        self.pullExpiry = pullExpiry
    }

    public func validate(_ resource: Resource) throws {
        _ = try WebhookConnectorSettings(resource, kind: self.name)
    }

    /// The durable consumer of resource `id`: `stork-webhook-<id with every character but A–Z a–z 0–9 - _ as _, at
    /// most 64>-<first 8 hex digits of SHA-256(id)>`, so that two ids that read the same once sanitized differ.
    public static func consumerName(for id: ResourceID) -> String {
        let sanitized = String(
            id.rawValue.unicodeScalars.prefix(64).map { scalar -> Character in
                switch scalar {
                case "a"..."z", "A"..."Z", "0"..."9", "-", "_": return Character(scalar)
                default: return "_"
                }
            }
        )
        let digest = SHA256.hash(data: Array(id.rawValue.utf8)).prefix(4).map { String(format: "%02x", $0) }.joined()
        return "stork-webhook-\(sanitized)-\(digest)"
    }

    /// `sha256=<hex HMAC-SHA256(secret, body)>`: the `Stork-Signature` header.
    public static func signature(secret: String, body: some Sequence<UInt8>) -> String {
        let code = HMAC<SHA256>.authenticationCode(for: Array(body), using: SymmetricKey(data: Array(secret.utf8)))
        return "sha256=" + code.map { String(format: "%02x", $0) }.joined()
    }

    public func run(_ resource: Resource, context: ConnectorContext) async throws {
        let settings = try WebhookConnectorSettings(resource, kind: self.name)
        guard let bus = context.bus else {
            throw StorkError(.unavailable, "resource \(resource.id) (webhook): this node runs no message server (node.nats)")
        }
        if settings.server != nil, bus.remote == nil {
            throw StorkError(.unavailable, "resource \(resource.id) (webhook): this node cannot connect to another 'server'")
        }
        // A move, a drain or a shutdown fires `context.stop`: the loop finishes the POST in flight and acks it, gives
        // back what it did not start and flushes, within `timeout` plus one pull's expiry (`pullExpiry`). Only the
        // handler's grace period running out cancels it (AsyncHTTPClient then cancels the POST with the task).
        await WebhookDelivery(
            settings: settings,
            bus: bus,
            context: context,
            client: self.client,
            pullExpiry: self.pullExpiry
        ).run()
    }
}

// MARK: - WebhookDelivery

/// One webhook resource's loop: connect, create the consumer, pull, POST, ack; until the context's stop fires.
struct WebhookDelivery: Sendable {
    let settings: WebhookConnectorSettings
    let bus: ConnectorBus
    let context: ConnectorContext
    let client: HTTPClient
    /// How long one pull request waits at the server for messages.
    let pullExpiry: Duration

    /// How long past its expiry a pull may stay unanswered before it is given up.
    static let pullGrace: Duration = .seconds(4)
    /// Requests to the JetStream API, and the final flush.
    static let requestTimeout: Duration = .seconds(5)

    private var logger: Logger {
        var logger = self.context.logger
        logger[metadataKey: "stork.connector"] = "\(WebhookConnector.kind)"
        return logger
    }

    func run() async {
        var backoff = ConnectorBackoff(minimum: self.settings.backoffMinimum, maximum: self.settings.backoffMaximum)
        var attempt = 0
        while !self.context.isStopping {
            attempt += 1
            if attempt > 1 { self.context.status.retrying() }
            self.context.status.state(.connecting)
            var connection: (any BusClient)?
            do {
                let name = "stork-webhook \(self.context.status.id)"
                let client: any BusClient
                if let server = self.settings.server, let remote = self.bus.remote {
                    client = try await remote(server, name)
                } else {
                    client = self.bus.local(name)
                }
                connection = client
                try await self.ensureConsumer(client)
                self.context.status.state(.connected)
                backoff.reset()
                try await self.consume(client)
                await client.close()
                return
            } catch {
                await connection?.close()
                if self.context.isStopping { return }
                let delay = backoff.nextDelay()
                self.context.status.failed("\(error)")
                self.context.status.state(.backoff)
                self.logger.info(
                    "webhook consumer failed, reconnecting",
                    metadata: ["stork.error": "\(error)", "stork.backoff": "\(delay)"]
                )
                guard await self.context.sleep(delay) else { return }
            }
        }
    }

    // MARK: The consumer

    /// Creates the durable consumer, or updates it (keeping its position and pending acks).
    private func ensureConsumer(_ client: any BusClient) async throws {
        let config: [String: Any] = [
            "description": "stork webhook \(self.context.status.id)",
            "ack_policy": "explicit",
            "deliver_policy": "all",
            "filter_subject": self.settings.subject,
            "ack_wait": self.settings.ackWait.nanosecondsClamped,
            "max_ack_pending": self.settings.batch,
            "max_deliver": -1,
        ]
        do {
            try await DurableStreamClient(client: client, timeout: Self.requestTimeout)
                .ensureConsumer(stream: self.settings.stream, name: self.settings.consumer, config: config)
        } catch let error as StorkError where [.unavailable, .invalidInput, .protocolError].contains(error.code) {
            throw StorkError(.connectorFailed, "\(self.where): \(error.message)")
        }
    }

    /// The stream's server, for messages.
    private var `where`: String { self.settings.server.map { "\($0)" } ?? "this node" }

    private enum Event: Sendable {
        case message(BusMessage)
        case stop
        case tick
        case closed
    }

    private struct Pull {
        var reply: String
        var started: ContinuousClock.Instant
        var received = 0
    }

    /// Pulls and delivers until `stop` fires (returns after giving back what was not started and flushing) or the
    /// connection fails (throws).
    private func consume(_ client: any BusClient) async throws {
        let (events, sink) = AsyncStream.makeStream(of: Event.self)
        let (sid, inbox) = try client.subscribe("\(client.inboxPrefix).p.*")
        defer { client.unsubscribe(sid) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for await message in inbox { sink.yield(.message(message)) }
                sink.yield(.closed)
            }
            group.addTask {
                await self.context.stop.wait()
                sink.yield(.stop)
            }
            group.addTask {
                while !Task.isCancelled {
                    try await Task.sleep(for: .milliseconds(500))
                    sink.yield(.tick)
                }
            }
            do {
                try await self.deliverLoop(client, events: events)
            } catch {
                group.cancelAll()
                throw error
            }
            group.cancelAll()
        }
    }

    private func deliverLoop(_ client: any BusClient, events: AsyncStream<Event>) async throws {
        let streams = DurableStreamClient(client: client, timeout: Self.requestTimeout)
        var pulls = 0
        var pull: Pull?
        var stoppedAt: ContinuousClock.Instant?
        /// Ack subjects of messages to give back once no pull is open (a `-NAK` while the pull is open would only
        /// bring the message back to it).
        var giveBack: [String] = []
        var iterator = events.makeAsyncIterator()
        loop: while true {
            if pull == nil {
                if self.context.isStopping { break loop }
                // A secret that cannot be resolved fails here, before anything is fetched.
                _ = try self.resolveSecret()
                pulls += 1
                let reply = "\(client.inboxPrefix).p.\(pulls)"
                try streams.requestNext(
                    stream: self.settings.stream,
                    consumer: self.settings.consumer,
                    batch: self.settings.batch,
                    expires: self.pullExpiry,
                    replyTo: reply
                )
                pull = Pull(reply: reply, started: .now)
            }
            guard let event = await iterator.next() else { break loop }
            switch event {
            case .message(let message):
                if let ack = message.replyTo, ack.hasPrefix("$JS.ACK.") {
                    if var current = pull {
                        current.received += 1
                        pull = current.received >= self.settings.batch ? nil : current
                    }
                    self.context.status.received()
                    if self.context.isStopping {
                        giveBack.append(ack)
                    } else if case .interrupted = await self.deliver(message, ack: ack, streams: streams) {
                        giveBack.append(ack)
                    }
                } else if let current = pull, message.subject == current.reply {
                    switch PullStatus(message) {
                    case .finished?:
                        pull = nil
                    case .refused(let description)?:
                        // The consumer is gone (deleted) or too many pulls wait: start over with a new consumer.
                        throw StorkError(.connectorFailed, "pull refused: 409 \(description)")
                    case .other?, nil:
                        break  // heartbeats
                    }
                }
            case .stop:
                if stoppedAt == nil { stoppedAt = .now }
            case .tick:
                if let current = pull, ContinuousClock.now - current.started > self.pullExpiry + Self.pullGrace {
                    self.logger.debug("pull request unanswered, given up")
                    pull = nil
                }
                if self.context.isStopping {
                    if stoppedAt == nil { stoppedAt = .now }
                    if let stoppedAt, ContinuousClock.now - stoppedAt > self.pullExpiry + Self.pullGrace {
                        break loop
                    }
                }
            case .closed:
                throw StorkError(.connectionClosed, "the connection to \(self.where) closed")
            }
        }
        // Stopped: give back what was fetched and not started, and make sure the server processed every ack before
        // the resource may start elsewhere.
        for ack in giveBack { try? streams.acknowledge(ack, .nak(delay: nil)) }
        try? await client.flush(timeout: Self.requestTimeout)
        try? await streams.synchronize(stream: self.settings.stream, consumer: self.settings.consumer)
    }

    // MARK: One message

    private enum Outcome {
        /// Acked (2xx), or terminated after the last attempt.
        case done
        /// `stop` fired while it waited for its next attempt: to be given back.
        case interrupted
    }

    /// POSTs one message until it succeeds, runs out of attempts, or `stop` fires between attempts.
    private func deliver(_ message: BusMessage, ack: String, streams: DurableStreamClient) async -> Outcome {
        let sequence = Self.streamSequence(ack) ?? 0
        let deliveryID = "\(self.settings.stream):\(sequence)"
        let headers = message.headers
        var backoff = ConnectorBackoff(minimum: self.settings.backoffMinimum, maximum: self.settings.backoffMaximum)
        var attempt = 0
        while true {
            attempt += 1
            if attempt > 1 {
                self.context.status.retrying()
                // The wait is over: the ack wait starts again for the attempt.
                try? streams.acknowledge(ack, .inProgress)
            }
            let failure = await self.post(
                message,
                deliveryID: deliveryID,
                contentType: headers?["Content-Type"],
                attempt: attempt
            )
            guard let failure else {
                try? streams.acknowledge(ack, .ack)
                self.context.status.sent()
                return .done
            }
            self.context.status.failed(failure)
            if attempt >= self.settings.maxAttempts {
                self.deadLetter(message, headers: headers, deliveryID: deliveryID, error: failure, client: streams.client)
                try? streams.acknowledge(ack, .terminate)
                return .done
            }
            try? streams.acknowledge(ack, .inProgress)
            let delay = backoff.nextDelay()
            self.logger.debug(
                "webhook POST failed, retrying",
                metadata: [
                    "stork.delivery": "\(deliveryID)", "stork.error": "\(failure)", "stork.backoff": "\(delay)",
                ]
            )
            guard await self.context.sleep(delay) else { return .interrupted }
        }
    }

    /// One POST; nil when the receiver answered 2xx, else why not.
    private func post(_ message: BusMessage, deliveryID: String, contentType: String?, attempt: Int) async -> String? {
        let secret: String
        do {
            secret = try self.resolveSecret()
        } catch {
            return "\(error)"
        }
        var request = HTTPClientRequest(url: self.settings.url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: contentType ?? "application/octet-stream")
        request.headers.add(name: "User-Agent", value: "stork-webhook")
        request.headers.add(name: "Stork-Delivery-Id", value: deliveryID)
        request.headers.add(name: "Stork-Subject", value: message.subject)
        request.headers.add(name: "Stork-Attempt", value: "\(attempt)")
        request.headers.add(
            name: "Stork-Signature",
            value: WebhookConnector.signature(secret: secret, body: message.payload.readableBytesView)
        )
        request.body = .bytes(message.payload)
        do {
            let response = try await self.client.execute(
                request,
                timeout: .nanoseconds(self.settings.timeout.nanosecondsClamped)
            )
            // Read (a bounded amount of) the body so that the connection can be reused.
            _ = try? await response.body.collect(upTo: 64 * 1024)
            guard (200..<300).contains(Int(response.status.code)) else {
                return "HTTP \(response.status.code) from \(self.settings.url)"
            }
            return nil
        } catch {
            return "POST \(self.settings.url) failed: \(error)"
        }
    }

    /// Publishes a message that ran out of attempts to `deadLetter`, on the stream's server, with its own headers and
    /// `Stork-Error`, `Stork-Original-Subject`, `Stork-Delivery-Id`.
    private func deadLetter(
        _ message: BusMessage,
        headers: MessageHeaders?,
        deliveryID: String,
        error: String,
        client: any BusClient
    ) {
        self.logger.warning(
            "webhook message dead-lettered",
            metadata: [
                "stork.delivery": "\(deliveryID)", "stork.error": "\(error)",
                "stork.dead_letter": "\(self.settings.deadLetter ?? "none")",
            ]
        )
        guard let subject = self.settings.deadLetter else { return }
        var out = headers ?? MessageHeaders()
        out.status = nil
        out.statusDescription = nil
        let cleanError = String(error.map { $0 == "\r" || $0 == "\n" ? " " : $0 }.prefix(512))
        out.fields += [
            ("Stork-Error", cleanError),
            ("Stork-Original-Subject", message.subject),
            ("Stork-Delivery-Id", deliveryID),
            ("Stork-Attempts", "\(self.settings.maxAttempts)"),
        ]
        try? client.publish(subject, replyTo: nil, headers: out, payload: message.payload)
    }

    // MARK: Helpers

    private func resolveSecret() throws -> String {
        switch self.settings.secret {
        case .literal(let value): return value
        case .secret(let name): return try self.context.secrets.resolve(name)
        }
    }

    /// The stream sequence of an ack subject `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`
    /// (or the 11/12-token form with domain and account hash).
    static func streamSequence(_ ack: String) -> UInt64? {
        let tokens = ack.split(separator: ".", omittingEmptySubsequences: false)
        switch tokens.count {
        case 9: return UInt64(tokens[5])
        case 11, 12: return UInt64(tokens[7])
        default: return nil
        }
    }
}
