import NIOCore
import StorkBus

// MARK: - Operations

/// What a client sends to the server.
public enum NATSClientOperation: Sendable {
    /// `CONNECT {json}`: the raw JSON, decoded by the connection (``NATSConnectOptions``).
    case connect(ByteBuffer)
    /// `PUB` or `HPUB`.
    case publish(BusMessage)
    /// `SUB subject [queue] sid`.
    case subscribe(subject: String, queue: String?, sid: String)
    /// `UNSUB sid [max]`.
    case unsubscribe(sid: String, max: Int?)
    case ping
    case pong
}

/// What a server sends to a client (read by Stork's own client: benchmarks and tests).
public enum NATSServerOperation: Sendable {
    case info(ByteBuffer)
    /// `MSG` or `HMSG`, with the subscription id it was delivered for.
    case message(BusMessage, sid: String)
    case ping
    case pong
    case ok
    case error(String)
}

// MARK: - Errors

/// A violation of the protocol by the peer. The message is the text NATS sends in `-ERR '…'`.
public struct NATSProtocolError: Error, Hashable, Sendable, CustomStringConvertible {
    public var message: String
    /// Whether the connection is closed after the error is sent (every framing error is; `Invalid Subject` and
    /// permission errors are not).
    public var closesConnection: Bool

    public init(_ message: String, closesConnection: Bool = true) {
        self.message = message
        self.closesConnection = closesConnection
    }

    public var description: String { "'\(self.message)'" }

    public static let unknownOperation = NATSProtocolError("Unknown Protocol Operation")
    public static let parserError = NATSProtocolError("Parser Error")
    public static let maxControlLineExceeded = NATSProtocolError("Maximum Control Line Exceeded")
    public static let maxPayloadViolation = NATSProtocolError("Maximum Payload Violation")
    public static let authorizationViolation = NATSProtocolError("Authorization Violation")
    public static let authorizationTimeout = NATSProtocolError("Authorization Timeout")
    public static let staleConnection = NATSProtocolError("Stale Connection")
    public static let slowConsumer = NATSProtocolError("Slow Consumer")
    public static let maxConnectionsExceeded = NATSProtocolError("Maximum Connections Exceeded")
    public static let invalidSubject = NATSProtocolError("Invalid Subject", closesConnection: false)
    public static let invalidClientProtocol = NATSProtocolError("Invalid Client Protocol")
    /// HPUB on a connection whose CONNECT did not ask for headers.
    public static let headersNotSupported = NATSProtocolError("Message Headers Not Supported")
}
