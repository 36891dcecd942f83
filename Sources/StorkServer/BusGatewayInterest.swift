import StorkBusCluster
import StorkCore
import StorkGateway

// MARK: - The bus as the gateway's view of the cluster

/// Connects the gateway to the cluster-wide bus: who listens on other nodes (for providers and no-responders) and how
/// many other nodes there are (they answer presence queries). The gateway's router subscriptions reach the other
/// nodes through the bus by themselves.
public struct BusGatewayInterest<C: Clock>: GatewayInterest where C.Duration == Duration {
    public let bus: BusCluster<C>

    public init(bus: BusCluster<C>) {
        self.bus = bus
    }

    public func remoteInterest(in subject: String) -> Bool {
        !self.bus.interest(in: subject).nodes.isEmpty
    }

    public var peerCount: Int {
        self.bus.livePeerCount
    }
}
