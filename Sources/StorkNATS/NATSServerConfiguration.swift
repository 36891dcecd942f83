// MARK: - NATSServerConfiguration

/// Settings of the NATS client endpoint. Defaults match nats-server's where NATS documents one.
public struct NATSServerConfiguration: Sendable {
    /// The address to listen on (`node.nats`).
    public var host = "127.0.0.1"
    /// The port to listen on; 0 picks a free one (see ``NATSServer/waitUntilListening()``).
    public var port = 4222
    /// The name sent as `server_name` in `INFO`.
    public var serverName = "stork"
    /// The largest message (headers and payload) a client may publish: `max_payload`, 1 MiB.
    public var maxPayload = 1_048_576
    /// The longest control line: `max_control_line`, 4096 bytes.
    public var maxControlLine = 4096
    /// Bytes waiting to be written to one client before it is disconnected as a slow consumer: `max_pending`,
    /// 64 MiB. Other clients are not held up by a slow one.
    public var maxPending = 64 * 1024 * 1024
    /// Connections accepted at most.
    public var maxConnections = 65536
    /// How often the server pings a client (`ping_interval`, 2 minutes).
    public var pingInterval: Duration = .seconds(120)
    /// Unanswered pings after which the connection is closed as stale (`ping_max`, 2).
    public var maxPingsOut = 2
    /// How long a client has to send `CONNECT` when authentication is required (`auth_timeout`, 2 s).
    public var authTimeout: Duration = .seconds(2)
    /// Who may connect.
    public var authentication: NATSAuthentication = .none
    /// Lame-duck mode (``NATSServer/enterLameDuckMode()``): clients are closed spread over this long …
    public var lameDuckDuration: Duration = .seconds(30)
    /// … after waiting this long first, so that they can move on their own (`lame_duck_grace_period`).
    public var lameDuckGracePeriod: Duration = .seconds(10)

    public init() {}
}

/// How clients authenticate on the NATS endpoint.
public enum NATSAuthentication: Sendable, Equatable {
    /// Anyone may connect.
    case none
    /// `CONNECT` must carry `auth_token` equal to this token.
    case token(String)
    /// `CONNECT` must carry `user` and `pass` of one of these users (user name → password).
    case users([String: String])

    var isRequired: Bool { self != .none }

    /// Whether the CONNECT options pass. Compares in constant time per candidate.
    func admits(_ options: NATSConnectOptions) -> Bool {
        switch self {
        case .none:
            return true
        case .token(let token):
            return options.authToken.map { Self.constantTimeEqual($0, token) } ?? false
        case .users(let users):
            guard let user = options.user, let password = users[user], let given = options.pass else { return false }
            return Self.constantTimeEqual(given, password)
        }
    }

    private static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8)
        let y = Array(b.utf8)
        var difference = UInt8(x.count == y.count ? 0 : 1)
        for index in 0..<max(x.count, y.count) {
            difference |= (index < x.count ? x[index] : 0) ^ (index < y.count ? y[index] : 0)
        }
        return difference == 0
    }
}
