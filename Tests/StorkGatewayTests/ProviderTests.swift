import Foundation
import Logging
import NIOCore
import StorkCore
import StorkBus
import StorkNATS
import StorkRealtime
import StorkResources
import StorkTestKit
import Synchronization
import Testing

@testable import StorkGateway

/// Records allocations and deallocations instead of placing anything.
final class RecordingResources: GatewayResources {
    let calls = Mutex<[String]>([])

    func allocate(_ resource: Resource) async -> RequestOutcome {
        self.calls.withLock { $0.append("+\(resource.id.rawValue)") }
        return .handled(by: NodeID(name: "n1", address: "127.0.0.1:1", uid: 1))
    }

    func deallocate(_ id: ResourceID) async -> RequestOutcome {
        self.calls.withLock { $0.append("-\(id.rawValue)") }
        return .terminated(by: NodeID(name: "n1", address: "127.0.0.1:1", uid: 1))
    }
}

struct SilentProvider: GatewayProvider {
    func run(subject: String, publish: @escaping @Sendable (JSONValue) -> Void, logger: Logger) async throws {}
}

@Suite("Gateway listening providers")
struct ProviderTests {
    @Test("a literal subscription a provider serves allocates its resource once per refresh; wildcards and other subjects do not")
    func allocation() async throws {
        let clock = ManualClock()
        let gatewayClock = clock.gatewayClock
        let resources = RecordingResources()
        var configuration = GatewayConfiguration()
        configuration.providerRefresh = .seconds(10)
        let gateway = Gateway(
            configuration: configuration,
            node: "n1",
            router: BusRouter(),
            authentication: AuthenticationChain([OpenAuthenticator()]),
            permissions: { ownChannelRules },
            clock: gatewayClock,
            resources: resources,
            providers: [GatewayProviderRegistration(name: "ticks", pattern: "public.ticks.*", kind: .swift(SilentProvider()))],
            logger: quietLogger("gateway")
        )
        let session = gateway.newSession(user: AuthenticatedUser(id: "u"))
        for subject in ["public.ticks.a", "public.ticks.*", "public.other"] {
            #expect(session.addSubscription(subject, mayRespond: false, holding: false))
            gateway.hubAdd(subject, session: session)
        }
        #expect(gateway.hasListeners("public.ticks.a"))
        #expect(gateway.hasListeners("public.ticks.b"))  // the wildcard subscription listens on it too
        #expect(!gateway.hasListeners("users.u.x"))

        await gateway.assertProviders(now: gatewayClock.now())
        #expect(resources.calls.withLock { $0 } == ["+$gw.provider.public.ticks.a"])
        clock.advance(by: .seconds(5))
        await gateway.assertProviders(now: gatewayClock.now())
        #expect(resources.calls.withLock { $0 }.count == 1)
        clock.advance(by: .seconds(6))
        await gateway.assertProviders(now: gatewayClock.now())
        #expect(resources.calls.withLock { $0 }.count == 2)

        gateway.endSession(session, reason: "test")
        #expect(!gateway.hasListeners("public.ticks.a"))
        clock.advance(by: .seconds(20))
        await gateway.assertProviders(now: gatewayClock.now())
        #expect(resources.calls.withLock { $0 }.count == 2)
        #expect(Gateway.providerResource(gateway.providers[0], subject: "public.ticks.a").attributes["kind"] == "gateway.provider")
    }
}
