import Foundation
import StorkCore
import StorkRealtime

// MARK: - Configuration

/// The gateway's settings (the `gateway:` section of stork.yaml; Docs/gateway.md documents every key).
public struct GatewayConfiguration: Sendable, Hashable {
    /// The WebSocket endpoint's path on the node's HTTP port.
    public var path = "/v1/ws"
    /// The largest client frame (bytes); a larger one closes the connection with code 1009.
    public var maxFrameBytes = GatewayProtocol.defaultMaxFrameBytes
    /// A connection must authenticate within this time.
    public var authTimeout: Duration = .seconds(10)
    /// Failed `auth` attempts before the connection is closed.
    public var maxAuthAttempts = 3
    /// How long a session waits for its client to come back (`resume`) after the connection dropped.
    public var recoveryWindow: Duration = .seconds(60)
    /// Deliveries kept per session for resume; also how far a connected client may fall behind before it is
    /// disconnected as a slow consumer.
    public var recoveryMessages = 1000
    /// `request` without a `timeout`.
    public var requestTimeout: Duration = .seconds(5)
    /// Requests one session may have waiting at once.
    public var maxPendingRequests = 100
    public var maxSubscriptionsPerSession = 1000
    /// The most stored messages one `subscribe` with `from` or one `GET /v1/history` returns.
    public var historyLimit = 1000
    /// How long a presence query waits for the other nodes' answers.
    public var presenceTimeout: Duration = .milliseconds(500)
    /// How often a gateway with listeners on a provider's subject allocates the provider again (allocation is
    /// idempotent; this heals a provider removed just as a listener arrived).
    public var providerRefresh: Duration = .seconds(10)

    public init() {}
}

/// How the gateway reads the time and waits: the node's `StorkClock` (a manual one in tests) for timeouts and expiry,
/// and the wall clock for the `now` of permission conditions.
public struct GatewayClock: Sendable {
    public var clock: StorkClock
    /// Wall-clock milliseconds since 1970 (the `now` of permission conditions).
    public var wallMilliseconds: @Sendable () -> Double

    public init(
        _ clock: StorkClock = .continuous,
        wallMilliseconds: @escaping @Sendable () -> Double = { Date().timeIntervalSince1970 * 1000 }
    ) {
        self.clock = clock
        self.wallMilliseconds = wallMilliseconds
    }

    public static var system: GatewayClock { GatewayClock() }

    /// Monotonic time.
    public func now() -> StorkInstant { self.clock.now }

    public func sleep(_ duration: Duration) async throws { try await self.clock.sleep(for: duration) }
}
