import Logging
import StorkCore

// MARK: - The relay as the gateway's view of the cluster

/// Connects the gateway's hub to the cluster relay: patterns the gateway's clients subscribe to become this node's
/// relay interest, so messages published on other nodes reach them.
public struct RelayGatewayInterest<C: Clock>: GatewayInterest where C.Duration == Duration {
    public let relay: ClusterRelay<C>
    let logger: Logger

    public init(relay: ClusterRelay<C>, logger: Logger) {
        self.relay = relay
        self.logger = logger
    }

    public func addInterest(_ pattern: String) {
        do {
            try self.relay.addInterest(pattern)
        } catch {
            // The gateway validated the subject; only the relay's pattern limit can refuse it. Local delivery still
            // works: subscribers on this node get what is published here.
            self.logger.warning(
                "the relay refused a pattern: messages from other nodes will not reach it",
                metadata: ["stork.subject": "\(pattern)", "stork.error": "\(error)"]
            )
        }
    }

    public func removeInterest(_ pattern: String) {
        self.relay.removeInterest(pattern)
    }

    public func remoteInterest(in subject: String) -> Bool {
        !self.relay.interest(in: subject).nodes.isEmpty
    }

    public var peerCount: Int {
        self.relay.snapshot().peers.count
    }
}
