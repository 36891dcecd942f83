import Foundation
import Logging
import StorkCore
import StorkLeases
import StorkResources
import Synchronization
import StorkTestKit
import Testing

/// A real store behind a switch: while `isDown`, every operation fails as if the database were unreachable.
final class SwitchableStore: OwnershipStore {
    let base: any OwnershipStore
    private let down = Atomic<Bool>(false)

    init(_ base: any OwnershipStore) { self.base = base }

    var isDown: Bool {
        get { self.down.load(ordering: .relaxed) }
        set { self.down.store(newValue, ordering: .relaxed) }
    }

    var description: String { "switchable \(self.base.description)" }

    private func check() throws {
        if self.isDown { throw StorkError(.unavailable, "switched off by the test") }
    }

    func prepare() async throws { try await self.base.prepare() }
    func acquire(_ ids: [ResourceID], holder: String, duration: Duration) async throws -> LeaseGrants {
        try self.check()
        return try await self.base.acquire(ids, holder: holder, duration: duration)
    }
    func renew(_ leases: [LeaseKey], holder: String, duration: Duration) async throws -> LeaseRenewals {
        try self.check()
        return try await self.base.renew(leases, holder: holder, duration: duration)
    }
    func release(_ leases: [LeaseKey], holder: String) async throws {
        try self.check()
        try await self.base.release(leases, holder: holder)
    }
    func records(_ ids: [ResourceID]?) async throws -> [LeaseRecord] { try await self.base.records(ids) }
    func close() async { await self.base.close() }
}

/// Counts handles per fencing token and terminations for lost leases.
final class FencingRecorder: ResourceHandler {
    struct State {
        var running: [ResourceID: UInt64] = [:]
        var tokens: [ResourceID: [UInt64]] = [:]
        var fenced: Set<ResourceID> = []
    }

    let state = Mutex(State())

    func handle(_ resource: Resource, context: ResourceContext) async throws {
        self.state.withLock { state in
            state.running[resource.id] = context.fencingToken ?? 0
            state.tokens[resource.id, default: []].append(context.fencingToken ?? 0)
        }
    }

    func terminate(_ resource: Resource, reason: TerminationReason, context: ResourceContext) async throws {
        self.state.withLock { state in
            state.running[resource.id] = nil
            if reason == .leaseLost { state.fenced.insert(resource.id) }
        }
    }
}

struct StaticSource: ResourceSource {
    let resources: [Resource]
    func fetch() async throws -> [Resource] { self.resources }
}

@Suite("Self-fencing on real stores", .serialized, .timeLimit(.minutes(2)))
struct SelfFencingTests {
    @Test("store unreachable: resources stop by themselves before the lease expires, and come back with newer tokens", arguments: StoreKind.available)
    func outageAndRecovery(kind: StoreKind) async throws {
        let fixture = StoreFixture(kind)
        defer { fixture.cleanUp() }
        let store = SwitchableStore(try await fixture.open())
        let handler = FencingRecorder()
        var configuration = ResourceManagerConfiguration(name: "solo")
        configuration.leaveLinger = .milliseconds(50)
        configuration.node.orchestrator.ownership = .lease(
            LeaseSettings(duration: .seconds(3), renewInterval: .milliseconds(250), renewDeadline: .milliseconds(1_500), acquireRetryInterval: .milliseconds(100))
        )
        configuration.ownershipStore = store
        configuration.ownershipStoreTimeout = .milliseconds(500)
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let ids = (0..<50).map { ResourceID("r\($0)") }
        let manager = ResourceManager(
            configuration: configuration,
            handler: handler,
            source: StaticSource(resources: ids.map { Resource(id: $0) }),
            transport: InMemoryNetwork().endpoint("solo:1"),
            logger: logger
        )
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await manager.run() }
            #expect(await eventually { handler.state.withLock { $0.running.count == 50 } })
            let first = handler.state.withLock { $0.running }
            #expect(first.values.allSatisfy { $0 >= 1 })

            store.isDown = true
            #expect(await eventually { handler.state.withLock { $0.running.isEmpty } }, "every resource fenced itself")
            // Fenced before the store could consider the leases expired: they are still this node's there.
            let records = try await store.base.records(ids)
            #expect(records.allSatisfy { $0.holder == manager.leaseHolder && $0.remainingMilliseconds > 0 })
            #expect(handler.state.withLock { $0.fenced.count } == 50)

            store.isDown = false
            #expect(await eventually { handler.state.withLock { $0.running.count == 50 } }, "back without operator action")
            let second = handler.state.withLock { $0.running }
            #expect(ids.allSatisfy { (second[$0] ?? 0) > (first[$0] ?? 0) }, "a newer token after the outage")
            await manager.stop()
            try await group.waitForAll()
        }
        let released = try await store.base.records(ids)
        #expect(released.allSatisfy { $0.holder == nil }, "stop gave every lease back")
        await store.close()
    }
}
