import StorkCore

// MARK: - GatewayClientError

/// Why a ``GatewayClient`` operation failed: the server's own `error` frames keep their `code` (`forbidden`,
/// `timeout`, `auth_failed`, `busy`, …, Docs/gateway.md); failures found on this side use the codes below.
public struct GatewayClientError: Error, Sendable, Hashable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible, ExpressibleByStringLiteral {
        public var rawValue: String
        public init(_ rawValue: String) { self.rawValue = rawValue }
        public init(stringLiteral value: String) { self.rawValue = value }
        public var description: String { self.rawValue }

        /// The credentials were refused (the server's code).
        public static let authFailed = Code("auth_failed")
        /// The action is not allowed by the permission rules (the server's code).
        public static let forbidden = Code("forbidden")
        /// No answer within the time allowed (the server's code for requests; also used on this side).
        public static let timeout = Code("timeout")
        /// The first connection could not be made (no server, no upgrade, no welcome).
        public static let connectFailed = Code("connect_failed")
        /// The connection closed after the action was sent and before it was answered: it may or may not have
        /// happened. The client reconnects by itself; retry if the action is safe to repeat.
        public static let connectionLost = Code("connection_lost")
        /// The client was closed, or gave up reconnecting.
        public static let closed = Code("client_closed")
        /// The session could not be resumed (`recovered: false`): a run in progress lost its events, or a runner
        /// instance ended with the old session.
        public static let sessionLost = Code("session_lost")
        /// The server sent something this client does not understand.
        public static let protocolError = Code("protocol_error")
        /// A runner run reported `failed` without a code of its own.
        public static let runFailed = Code("run_failed")
    }

    public var code: Code
    public var message: String
    /// The cause, as text (errors are not all `Hashable`).
    public var underlying: String?

    public init(_ code: Code, _ message: String, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying.map { String(describing: $0) }
    }

    public var description: String {
        let text = "\(self.code.rawValue): \(self.message)"
        if let underlying { return "\(text) (\(underlying))" }
        return text
    }
}
