import Foundation
import Logging
import StorkCore
import StorkResources
import Synchronization
import Testing

/// Records the fencing token of every handle and the reasons of terminations, per resource.
final class TokenRecorder: Sendable {
    struct State {
        var tokens: [ResourceID: [UInt64]] = [:]
        var running: Set<ResourceID> = []
        var leaseLost: Set<ResourceID> = []
    }

    let state = Mutex(State())
}

struct TokenHandler: ResourceHandler {
    let recorder: TokenRecorder

    func handle(_ resource: Resource, context: ResourceContext) async throws {
        self.recorder.state.withLock { state in
            state.tokens[resource.id, default: []].append(context.fencingToken ?? 0)
            state.running.insert(resource.id)
        }
    }

    func terminate(_ resource: Resource, reason: TerminationReason, context: ResourceContext) async throws {
        self.recorder.state.withLock { state in
            state.running.remove(resource.id)
            if reason == .leaseLost { state.leaseLost.insert(resource.id) }
        }
    }
}

@Suite("ResourceManager in lease mode", .timeLimit(.minutes(2)))
struct LeaseManagerTests {
    @Test("store outage: resources stop by themselves (leaseLost), then run again with new tokens once the store is back")
    func outageAndRecovery() async throws {
        let drive = Drive()
        let store = InMemoryOwnershipStore(clock: drive.clock)
        let recorder = TokenRecorder()
        var configuration = configuration("solo", seeds: [])
        configuration.node.orchestrator.ownership = .lease(
            LeaseSettings(duration: .seconds(2), renewInterval: .milliseconds(200), renewDeadline: .seconds(1), acquireRetryInterval: .milliseconds(100))
        )
        configuration.ownershipStore = store
        configuration.ownershipStoreTimeout = .milliseconds(500)
        let ids = (0..<20).map { ResourceID("r\($0)") }
        let manager = ResourceManager(
            configuration: configuration,
            handler: TokenHandler(recorder: recorder),
            source: CountingSource(ids.map { Resource(id: $0) }),
            transport: drive.network.endpoint("solo:1"),
            logger: quietLogger(),
            clock: drive.clock
        )
        drive.watch([manager])
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await manager.run() }
            try await drive.until("20 resources running under token 1") {
                recorder.state.withLock { $0.running.count == 20 && $0.tokens.values.allSatisfy { $0 == [1] } }
            }
            #expect(manager.resourceStates().allSatisfy { $0.fencingToken == 1 })

            store.isAvailable = false
            try await drive.until("every resource fenced itself") {
                recorder.state.withLock { $0.running.isEmpty && $0.leaseLost.count == 20 }
            }
            #expect(manager.statistics().leaseStoreFailures > 0)

            store.isAvailable = true
            try await drive.until("every resource runs again under a newer token") {
                recorder.state.withLock { state in
                    state.running.count == 20 && state.tokens.values.allSatisfy { $0.count >= 2 && $0.last! > $0.first! }
                }
            }
            try await drive.run("stop") { await manager.stop() }
            try await group.waitForAll()
        }
        let records = try await store.records(ids)
        #expect(records.allSatisfy { $0.holder == nil }, "stop released every lease")
    }

    @Test("lease mode without a store is a clear error at start")
    func missingStore() async throws {
        var configuration = configuration("solo", seeds: [])
        configuration.node.orchestrator.ownership = .lease(LeaseSettings())
        let manager = ResourceManager(
            configuration: configuration,
            handler: TokenHandler(recorder: TokenRecorder()),
            transport: InMemoryNetwork().endpoint("solo:1"),
            logger: quietLogger()
        )
        await #expect(throws: StorkError.self) { try await manager.run() }
    }
}
