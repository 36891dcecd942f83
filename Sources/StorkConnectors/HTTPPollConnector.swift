import AsyncHTTPClient
import Crypto
import Logging
import NIOCore
import NIOHTTP1
import StorkCore
import StorkResources

// MARK: - Settings

/// The attributes of an `http-poll` resource.
public struct HTTPPollConnectorSettings: Sendable, Hashable {
    /// `url`: http:// or https://, fetched with GET.
    public var url: String
    /// `subject`: bodies are published here.
    public var subject: String
    /// `interval` (seconds, default 30): between the end of one successful poll and the next.
    public var interval: Duration
    /// `timeout` (seconds, default 10): one request.
    public var timeout: Duration
    /// `headers` (optional): strings or `{"secret": "NAME"}`.
    public var headers: [ConnectorHeader]
    /// `publish`: `changes` (default; conditional requests, and bodies whose hash changed) or `always`.
    public var publish: HTTPPollStateMachine.PublishMode
    /// `backoffMin`, `backoffMax` (seconds, defaults 1 and 60): after failed polls.
    public var backoffMinimum: Duration
    public var backoffMaximum: Duration
    /// `maxBodyBytes` (default 1 MiB): a larger body fails the poll.
    public var maxBodyBytes: Int

    public init(_ resource: Resource, kind: String = HTTPPollConnector.kind) throws {
        let attributes = ConnectorAttributes(resource, kind: kind)
        self.url = try attributes.url("url", schemes: ["http", "https"])
        self.subject = try attributes.subject("subject")
        self.interval = try attributes.seconds("interval", default: .seconds(30), range: 0.01...86_400)
        self.timeout = try attributes.seconds("timeout", default: .seconds(10), range: 0.01...3600)
        self.headers = try attributes.headers()
        let publish = try attributes.choice(
            "publish",
            HTTPPollStateMachine.PublishMode.allCases.map(\.rawValue),
            default: "changes"
        )
        self.publish = HTTPPollStateMachine.PublishMode(rawValue: publish) ?? .changes
        self.backoffMinimum = try attributes.seconds("backoffMin", default: .seconds(1), range: 0.001...3600)
        self.backoffMaximum = try attributes.seconds("backoffMax", default: .seconds(60), range: 0.001...86_400)
        guard self.backoffMaximum >= self.backoffMinimum else {
            throw attributes.error("backoffMax", "must not be less than backoffMin")
        }
        self.maxBodyBytes = try attributes.integer("maxBodyBytes", default: 1_048_576, range: 1...(64 * 1_048_576))
    }
}

// MARK: - HTTPPollConnector

/// `kind: http-poll`: GETs a URL every `interval` and publishes its body on `subject`.
///
/// With `publish: changes` (the default) it sends `If-None-Match` / `If-Modified-Since` from the last response's
/// `ETag` / `Last-Modified`, takes 304 as unchanged, and also skips a 200 whose body hashes (SHA-256) like the last
/// one. Failures (connection errors, timeouts, statuses other than 2xx and 304) back off between `backoffMin` and
/// `backoffMax`; 429 and 503 wait as long as their `Retry-After` says (seconds or an HTTP date) when they have one.
/// On stop it abandons a GET in flight and returns.
public struct HTTPPollConnector: Connector {
    public static let kind = "http-poll"
    public var name: String { Self.kind }
    let client: HTTPClient

    /// Polls with `client` (shared by every resource; the caller shuts it down).
    public init(client: HTTPClient) {
        self.client = client
    }

    public func validate(_ resource: Resource) throws {
        _ = try HTTPPollConnectorSettings(resource, kind: self.name)
    }

    public func run(_ resource: Resource, context: ConnectorContext) async throws {
        let settings = try HTTPPollConnectorSettings(resource, kind: self.name)
        var machine = HTTPPollStateMachine(
            interval: settings.interval,
            publish: settings.publish,
            backoff: ConnectorBackoff(minimum: settings.backoffMinimum, maximum: settings.backoffMaximum)
        )
        var logger = context.logger
        logger[metadataKey: "stork.connector"] = "\(self.name)"
        var retrying = false
        while !context.isStopping {
            if retrying { context.status.retrying() }
            let action: HTTPPollStateMachine.Action
            var body: [UInt8] = []
            do {
                // A stop abandons the GET in flight: a poll has nothing to finish.
                let polled = try await context.untilStopped { [machine] in
                    try await self.poll(settings, machine: machine, context: context)
                }
                guard let (response, bytes) = polled else { return }
                body = bytes
                action = machine.received(response, now: context.clock.now())
            } catch {
                if context.isStopping { return }
                action = machine.failed("\(error)")
            }
            let delay: Duration
            switch action {
            case .publish(let after):
                context.messaging.publish(StorkMessage(subject: settings.subject, payload: body))
                context.status.received()
                context.status.state(.polling)
                retrying = false
                delay = after
            case .unchanged(let after):
                context.status.state(.polling)
                retrying = false
                delay = after
            case .retry(let after, let reason):
                context.status.failed(reason)
                context.status.state(.backoff)
                logger.info("poll failed", metadata: ["stork.error": "\(reason)", "stork.backoff": "\(after)"])
                retrying = true
                delay = after
            }
            guard await context.sleep(delay) else { return }
        }
    }

    /// One GET: the response as the state machine needs it, and the body when it is a 2xx.
    private func poll(
        _ settings: HTTPPollConnectorSettings,
        machine: HTTPPollStateMachine,
        context: ConnectorContext
    ) async throws -> (HTTPPollStateMachine.Response, [UInt8]) {
        var request = HTTPClientRequest(url: settings.url)
        request.method = .GET
        for header in try settings.headers.resolved(with: context.secrets) {
            request.headers.replaceOrAdd(name: header.name, value: header.value)
        }
        for header in machine.conditionalHeaders() {
            request.headers.replaceOrAdd(name: header.name, value: header.value)
        }
        let response = try await self.client.execute(
            request,
            timeout: .nanoseconds(settings.timeout.nanosecondsClamped)
        )
        let status = Int(response.status.code)
        var body: [UInt8] = []
        if (200..<300).contains(status) {
            do {
                body = Array(try await response.body.collect(upTo: settings.maxBodyBytes).readableBytesView)
            } catch is NIOTooManyBytesError {
                throw StorkError(
                    .connectorFailed,
                    "the body of \(settings.url) is larger than \(settings.maxBodyBytes) bytes (maxBodyBytes)"
                )
            }
        } else {
            // Read (a bounded amount of) the body so that the connection can be reused.
            _ = try? await response.body.collect(upTo: 64 * 1024)
        }
        return (
            HTTPPollStateMachine.Response(
                status: status,
                etag: response.headers.first(name: "ETag"),
                lastModified: response.headers.first(name: "Last-Modified"),
                retryAfter: response.headers.first(name: "Retry-After"),
                bodyHash: Array(SHA256.hash(data: body))
            ),
            body
        )
    }
}
