import StorkRealtime

// MARK: - GatewayClientConfiguration

/// How a ``GatewayClient`` connects, authenticates and reconnects.
public struct GatewayClientConfiguration: Sendable {
    /// The gateway's WebSocket endpoint, `ws://HOST:HTTP_PORT/v1/ws` (or `wss://`).
    public var url: String
    /// What `auth` presents: `.password(user:password:)`, `.token(…)` (an API token or a JWT), or `.none`.
    public var credentials: Credentials
    /// How long an action (`publish`, `subscribe`, `presence`, runner commands…) waits for the server's answer; a
    /// `request` waits its own timeout plus this.
    public var answerTimeout: Duration = .seconds(30)
    /// Reconnecting after the connection dropped (the first connection is not retried: it throws).
    public var reconnect = Reconnect()
    /// The largest frame sent or received (the gateway's default `maxFrameBytes`).
    public var maxFrameBytes = 1 << 20

    /// Exponential backoff between reconnection attempts: `initialDelay`, times `multiplier` after every failed
    /// attempt, at most `maxDelay`; back to `initialDelay` once a connection is welcomed.
    public struct Reconnect: Sendable, Hashable {
        /// False: a dropped connection ends the client (``GatewayClient/run()`` throws `connection_lost`).
        public var enabled = true
        public var initialDelay: Duration = .milliseconds(200)
        public var maxDelay: Duration = .seconds(10)
        public var multiplier = 2.0
        /// Failed attempts in a row before the client gives up; nil: it keeps trying.
        public var maxAttempts: Int? = nil

        public init() {}

        /// The pause before attempt `attempt` (0 for the first after a drop).
        public func delay(attempt: Int) -> Duration {
            var delay = self.initialDelay
            for _ in 0..<min(attempt, 64) {
                delay = delay * self.multiplier
                if delay >= self.maxDelay { return self.maxDelay }
            }
            return min(delay, self.maxDelay)
        }
    }

    public init(url: String, credentials: Credentials = .none) {
        self.url = url
        self.credentials = credentials
    }
}
