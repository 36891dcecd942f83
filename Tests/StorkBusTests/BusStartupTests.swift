import Foundation
import Logging
import NIOCore
import StorkCore
import StorkBus
import StorkResources
import StorkTestKit
import Synchronization
import Testing

@testable import StorkBusCluster

/// An endpoint that notes every frame sent before its bus installed its relay receiver: on a network such a frame's
/// answer can arrive while there is nowhere to deliver it.
final class ReceiverOrderEndpoint: BusNetwork {
    let inner: BusTestNetwork.Endpoint
    private let state = Mutex((installed: false, sentBefore: 0))

    init(_ inner: BusTestNetwork.Endpoint) { self.inner = inner }

    /// Frames sent before the receiver was installed.
    var sentBeforeReceiver: Int { self.state.withLock { $0.sentBefore } }

    var identity: NodeID { self.inner.identity }
    func setRelayReceiver(_ receiver: RelayReceiver?) {
        self.inner.setRelayReceiver(receiver)
        if receiver != nil { self.state.withLock { $0.installed = true } }
    }
    func sendRelay(_ payload: [UInt8], to node: NodeID) {
        self.state.withLock { if !$0.installed { $0.sentBefore += 1 } }
        self.inner.sendRelay(payload, to: node)
    }
    func relayBacklog(to node: NodeID) -> Int { self.inner.relayBacklog(to: node) }
    func isReachable(_ node: NodeID) -> Bool { true }
    func waitForRelayBacklog(to node: NodeID) async {}
    func liveMembers() -> [NodeID] { self.inner.liveMembers() }
    func events() -> AsyncStream<NodeEvent> { self.inner.events() }
}

/// Regression: a bus used to send its snapshot and pull before it installed its receiver, so the answers could be
/// dropped and the interest wait for the anti-entropy round (a ManualClock never brings it: a 30 s test timeout).
@Suite("Bus start-up", .timeLimit(.minutes(1)))
struct BusStartupTests {
    @Test("a bus installs its relay receiver before it sends a frame, and learns a peer's interest")
    func slowReceiver() async throws {
        let network = BusTestNetwork()
        let clock = ManualClock()
        let endpointA = network.endpoint("a")
        let endpointC = network.endpoint("c")
        let orderedA = ReceiverOrderEndpoint(endpointA)
        let routerA = BusRouter()
        let routerC = BusRouter()
        let busA = BusCluster(
            network: orderedA,
            router: routerA, clock: clock, logger: quietLogger("bus")
        )
        let busC = BusCluster(network: endpointC, router: routerC, clock: clock, logger: quietLogger("bus"))
        _ = routerC.subscribe("jobs.*", queue: "workers", receiver: Inbox())
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await network.pump() }
            group.addTask { try await busC.run() }
            try await until("c runs") { busC.livePeerCount == 1 && endpointC.receiver.withLock { $0 != nil } }
            group.addTask { try await busA.run() }
            try await until("a knows c wants jobs.1", timeout: .seconds(5)) {
                busA.interest(in: "jobs.1").nodes == [endpointC.identity]
            }
            #expect(orderedA.sentBeforeReceiver == 0)
            network.close()
            try await group.waitForAll()
        }
    }
}
