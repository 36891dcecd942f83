import HTTPTypes
import Logging
import NIOCore
import NIOPosix
import StorkCore
import StorkResources
import Synchronization
import WSClient

// MARK: - Settings

/// The attributes of a `websocket` resource.
public struct WebSocketConnectorSettings: Sendable, Hashable {
    /// `url`: ws:// or wss://.
    public var url: String
    /// `subject`: every text or binary message received is published here (payload = the message's bytes).
    public var subject: String
    /// `outbound` (optional, wildcards allowed): messages published here are sent to the socket as text.
    public var outbound: String?
    /// `headers` (optional): sent with the upgrade request; values are strings or `{"secret": "NAME"}`.
    public var headers: [ConnectorHeader]
    /// `heartbeat` (optional, seconds): a ping this often; no pong within the interval closes the connection, which
    /// is then reopened with backoff.
    public var heartbeat: Duration?
    /// `backoffMin`, `backoffMax` (seconds, defaults 1 and 60): reconnect backoff.
    public var backoffMinimum: Duration
    public var backoffMaximum: Duration
    /// `maxMessageBytes` (default 1 MiB): the largest message received or sent.
    public var maxMessageBytes: Int

    public init(_ resource: Resource, kind: String = WebSocketConnector.kind) throws {
        let attributes = ConnectorAttributes(resource, kind: kind)
        self.url = try attributes.url("url", schemes: ["ws", "wss"])
        self.subject = try attributes.subject("subject")
        self.outbound = try attributes.optionalSubject("outbound", wildcards: true)
        self.headers = try attributes.headers()
        self.heartbeat = try attributes.optionalSeconds("heartbeat", range: 0.01...86_400)
        self.backoffMinimum = try attributes.seconds("backoffMin", default: .seconds(1), range: 0.001...3600)
        self.backoffMaximum = try attributes.seconds("backoffMax", default: .seconds(60), range: 0.001...86_400)
        guard self.backoffMaximum >= self.backoffMinimum else {
            throw attributes.error("backoffMax", "must not be less than backoffMin")
        }
        self.maxMessageBytes = try attributes.integer(
            "maxMessageBytes",
            default: 1_048_576,
            range: 1...(64 * 1_048_576)
        )
    }
}

// MARK: - WebSocketConnector

/// `kind: websocket`: keeps a WebSocket client connection open and carries its messages to and from subjects.
///
/// Every text or binary message received is published on `subject`. With `outbound`, messages published on that
/// subject while the connection is open are sent to the socket as text (nothing is buffered while disconnected).
/// A failed or lost connection is reopened after a jittered exponential backoff between `backoffMin` and
/// `backoffMax`; the backoff starts over once a connection was open. On stop it sends a close frame (`goingAway`) and
/// returns when the connection closed; a connection attempt or a backoff wait is abandoned at once.
public struct WebSocketConnector: Connector {
    public static let kind = "websocket"
    public var name: String { Self.kind }
    let eventLoopGroup: any EventLoopGroup

    public init(eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        self.eventLoopGroup = eventLoopGroup
    }

    public func validate(_ resource: Resource) throws {
        _ = try WebSocketConnectorSettings(resource, kind: self.name)
    }

    public func run(_ resource: Resource, context: ConnectorContext) async throws {
        let settings = try WebSocketConnectorSettings(resource, kind: self.name)
        var backoff = ConnectorBackoff(minimum: settings.backoffMinimum, maximum: settings.backoffMaximum)
        var logger = context.logger
        logger[metadataKey: "stork.connector"] = "\(self.name)"
        var attempt = 0
        while !context.isStopping {
            attempt += 1
            if attempt > 1 { context.status.retrying() }
            context.status.state(.connecting)
            let connected = Atomic<Bool>(false)
            let problem: String
            do {
                let close = try await self.connect(settings, context: context, logger: logger) {
                    connected.store(true, ordering: .relaxed)
                }
                if context.isStopping { return }
                problem =
                    close.map { "closed by the server (\($0.closeCode)\($0.reason.map { ": \($0)" } ?? ""))" }
                    ?? "the connection closed without a close frame (network, or no pong within the heartbeat)"
            } catch {
                if context.isStopping { return }
                problem = "\(error)"
            }
            context.status.failed(problem)
            if connected.load(ordering: .relaxed) { backoff.reset() }
            let delay = backoff.nextDelay()
            logger.info(
                "websocket disconnected, reconnecting",
                metadata: ["stork.error": "\(problem)", "stork.backoff": "\(delay)"]
            )
            context.status.state(.backoff)
            guard await context.sleep(delay) else { return }
        }
    }

    /// One connection: returns when it closed (on stop: once its close frame went out), throws when it could not open
    /// or failed.
    private func connect(
        _ settings: WebSocketConnectorSettings,
        context: ConnectorContext,
        logger: Logger,
        onOpen: @escaping @Sendable () -> Void
    ) async throws -> WebSocketCloseFrame? {
        var fields = HTTPFields()
        for header in try settings.headers.resolved(with: context.secrets) {
            guard let name = HTTPField.Name(header.name) else { continue }
            fields.append(HTTPField(name: name, value: header.value))
        }
        let configuration = WebSocketClientConfiguration(
            maxFrameSize: settings.maxMessageBytes,
            additionalHeaders: fields,
            autoPing: settings.heartbeat.map { .enabled(timePeriod: $0) } ?? .disabled
        )
        let messaging = context.messaging
        let status = context.status
        // Until the connection is open, a stop abandons the attempt; once open, the handler below closes it.
        let opened = OneShotSignal()
        return try await withThrowingTaskGroup(of: ConnectionEnd.self) { group in
            group.addTask {
                let close = try await WebSocketClient.connect(
                    url: settings.url,
                    configuration: configuration,
                    eventLoopGroup: self.eventLoopGroup,
                    logger: logger
                ) { inbound, outbound, _ in
                    opened.fire()
                    onOpen()
                    status.state(.connected)
                    try await Self.carry(inbound, outbound, settings: settings, messaging: messaging, context: context)
                }
                return .closed(close)
            }
            group.addTask {
                await context.stop.wait()
                return opened.isFired ? .stoppedWhileOpen : .stoppedBeforeOpen
            }
            defer { group.cancelAll() }
            while let end = try await group.next() {
                switch end {
                case .closed(let close): return close
                case .stoppedBeforeOpen: return nil
                case .stoppedWhileOpen: continue
                }
            }
            return nil
        }
    }

    private enum ConnectionEnd: Sendable {
        case closed(WebSocketCloseFrame?)
        case stoppedBeforeOpen
        case stoppedWhileOpen
    }

    /// Carries messages both ways until the connection closes, or until the connector stops: then it sends a close
    /// frame (`goingAway`) and ends the connection without waiting for the server's answer.
    private static func carry(
        _ inbound: WebSocketInboundStream,
        _ outbound: WebSocketOutboundWriter,
        settings: WebSocketConnectorSettings,
        messaging: any StorkMessaging,
        context: ConnectorContext
    ) async throws {
        let status = context.status
        let stop = context.stop
        try await withThrowingTaskGroup(of: Void.self) { group in
            if let subject = settings.outbound {
                let messages = messaging.subscribe(subject, queue: nil)
                group.addTask {
                    for await message in messages {
                        try await outbound.write(.text(String(decoding: message.payload, as: UTF8.self)))
                        status.sent()
                    }
                }
            }
            group.addTask {
                for try await message in inbound.messages(maxSize: settings.maxMessageBytes) {
                    let payload: [UInt8]
                    switch message {
                    case .text(let text): payload = Array(text.utf8)
                    case .binary(let buffer): payload = Array(buffer.readableBytesView)
                    }
                    messaging.publish(StorkMessage(subject: settings.subject, payload: payload))
                    status.received()
                }
            }
            group.addTask {
                await stop.wait()
                // Stopped (not merely cancelled): say goodbye before the connection goes.
                if stop.isFired { try? await outbound.close(.goingAway, reason: "stopping") }
            }
            // The connection closed (inbound ended) or the connector stopped: either ends this connection.
            try await group.next()
            group.cancelAll()
        }
    }
}
