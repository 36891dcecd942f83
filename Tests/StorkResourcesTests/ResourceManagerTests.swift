import Foundation
import Logging
import StorkCore
import StorkPlacement
import StorkResources
import StorkTestKit
import Synchronization
import Testing

// MARK: - Helpers

/// Records what handlers do across all nodes of an in-process cluster and notices overlaps.
final class Recorder: Sendable {
    struct State {
        var running: [ResourceID: String] = [:]
        var handles: [ResourceID: Int] = [:]
        var failedCallbacks: [ResourceID: Int] = [:]
        var terminations: [ResourceID: [TerminationReason]] = [:]
        var overlaps: [String] = []
    }

    let state = Mutex(State())

    func started(_ id: ResourceID, on node: String) {
        self.state.withLock { state in
            if let other = state.running[id] { state.overlaps.append("\(id) on \(node) while on \(other)") }
            state.running[id] = node
            state.handles[id, default: 0] += 1
        }
    }

    func stopped(_ id: ResourceID, on node: String, reason: TerminationReason) {
        self.state.withLock { state in
            if state.running[id] == node { state.running[id] = nil }
            state.terminations[id, default: []].append(reason)
        }
    }

    func crashed(_ node: String) {
        self.state.withLock { state in
            state.running = state.running.filter { $0.value != node }
        }
    }

    var running: [ResourceID: String] { self.state.withLock { $0.running } }
    var overlaps: [String] { self.state.withLock { $0.overlaps } }
}

struct RecordingHandler: ResourceHandler {
    let node: String
    let recorder: Recorder
    var failing: Set<ResourceID> = []

    func handle(_ resource: Resource, context: ResourceContext) async throws {
        if self.failing.contains(resource.id) { throw StorkError(.handlerFailed, "refusing \(resource.id)") }
        self.recorder.started(resource.id, on: self.node)
    }

    func handleFailed(_ resource: Resource, error: any Error, context: ResourceContext) async {
        self.recorder.state.withLock { $0.failedCallbacks[resource.id, default: 0] += 1 }
    }

    func terminate(_ resource: Resource, reason: TerminationReason, context: ResourceContext) async throws {
        self.recorder.stopped(resource.id, on: self.node, reason: reason)
    }
}

/// Counts fetches; can be told to fail.
final class CountingSource: ResourceSource {
    let resources: [Resource]
    let fetches = Atomic<Int>(0)
    let failing = Atomic<Bool>(false)

    init(_ resources: [Resource]) { self.resources = resources }

    func fetch() async throws -> [Resource] {
        self.fetches.add(1, ordering: .relaxed)
        if self.failing.load(ordering: .relaxed) { throw StorkError(.sourceFailed, "the source is down") }
        return self.resources
    }
}

func quietLogger() -> Logger {
    var logger = Logger(label: "stork.test")
    logger.logLevel = .critical
    return logger
}

func configuration(_ name: String, seeds: [String]) -> ResourceManagerConfiguration {
    var configuration = ResourceManagerConfiguration(name: name)
    configuration.seeds = seeds
    configuration.leaveLinger = .milliseconds(100)
    // Clock time (the tests move a manual clock only while the nodes are idle, so these hold on any machine).
    configuration.node.membership.probeTimeout = .milliseconds(300)
    configuration.node.membership.indirectProbeTimeout = .milliseconds(600)
    configuration.node.membership.suspicionMinimum = .seconds(2)
    configuration.fetchRetryInitial = .milliseconds(50)
    return configuration
}

/// An in-process cluster's shared time and network: nodes built with `clock` and `network` (and shown to `watch`)
/// run on time that moves only when a test drives it, and only while no message is in flight and no node has a
/// handler call or store operation under way, so nothing here waits on the wall clock and no timeout fires because
/// the machine was slow.
final class Drive: Sendable {
    let clock = ManualClock()
    let network = InMemoryNetwork()
    private let managers = Mutex<[ResourceManager]>([])

    /// Time waits for these nodes' work too.
    func watch(_ managers: [ResourceManager]) {
        self.managers.withLock { $0 += managers }
    }

    /// Whether nothing is under way but timers.
    var isIdle: Bool {
        self.network.inFlight == 0 && self.managers.withLock { $0.allSatisfy { $0.status().workInFlight == 0 } }
    }

    /// Moves the clock until `condition` holds; fails the test when `limit` of clock time passes first.
    func until(_ what: String, within limit: Duration = .seconds(300), _ condition: () -> Bool) async throws {
        let held = await self.clock.advance(
            by: .milliseconds(20),
            until: condition,
            within: limit,
            settled: { self.isIdle }
        )
        if held { return }
        Issue.record("\(limit) of clock time passed waiting for: \(what)")
        throw CancellationError()
    }

    /// Moves the clock for `duration`, whatever happens (to show that something did not).
    func pass(_ duration: Duration) async {
        _ = await self.clock.advance(
            by: .milliseconds(20),
            until: { false },
            within: duration,
            settled: { self.isIdle }
        )
    }

    /// Runs `operation` (a request, a stop) while moving the clock, and returns its result.
    func run<T: Sendable>(_ what: String, _ operation: @escaping @Sendable () async -> T) async throws -> T {
        let outcome = Outcome<T>()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                let value = await operation()
                outcome.value.withLock { $0 = value }
            }
            try await self.until(what) { outcome.value.withLock { $0 != nil } }
            try await group.waitForAll()
        }
        return outcome.value.withLock { $0! }
    }
}

final class Outcome<T: Sendable>: Sendable {
    let value = Mutex<T?>(nil)
}

// MARK: - Tests

@Suite("ResourceManager: the library on an in-process cluster", .timeLimit(.minutes(2)))
struct ResourceManagerTests {
    @Test("a single node handles what its source lists, allocate and deallocate report the handler's outcome")
    func singleNode() async throws {
        let drive = Drive()
        let recorder = Recorder()
        let source = CountingSource((0..<5).map { Resource(id: ResourceID("r\($0)")) })
        let manager = ResourceManager(
            configuration: configuration("solo", seeds: []),
            handler: RecordingHandler(node: "solo", recorder: recorder, failing: ["bad"]),
            source: source,
            transport: drive.network.endpoint("solo:1"),
            logger: quietLogger(),
            clock: drive.clock
        )
        drive.watch([manager])
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await manager.run() }
            try await drive.until("five resources running") { recorder.running.count == 5 }

            let added = try await drive.run("allocate extra") {
                await manager.allocate(Resource(id: "extra", attributes: ["url": .string("ws://x")]))
            }
            #expect(added == .handled(by: manager.identity))
            #expect(recorder.running["extra"] == "solo")

            let failed = try await drive.run("allocate bad") { await manager.allocate(Resource(id: "bad")) }
            #expect(failed == .handleFailed(by: manager.identity, attempt: 1))
            #expect(recorder.state.withLock { $0.failedCallbacks["bad"] } == 1)

            let removed = try await drive.run("deallocate r0") { await manager.deallocate("r0") }
            #expect(removed == .terminated(by: manager.identity))
            #expect(recorder.running["r0"] == nil)
            #expect(recorder.state.withLock { $0.terminations["r0"] } == [.removed])

            try await drive.run("stop") { await manager.stop() }
            try await group.waitForAll()
        }
        #expect(recorder.running.isEmpty, "stop terminates everything: no orphans")
        #expect(recorder.overlaps.isEmpty)
    }

    @Test("three nodes share the resources; a node that stops hands its resources over without overlap")
    func threeNodesGracefulLeave() async throws {
        let drive = Drive()
        let recorder = Recorder()
        let resources = (0..<60).map { Resource(id: ResourceID("r\($0)")) }
        let names = ["a", "b", "c"]
        let managers = names.map { name in
            ResourceManager(
                configuration: configuration(name, seeds: name == "a" ? [] : ["a:1"]),
                handler: RecordingHandler(node: name, recorder: recorder),
                source: StaticResourceSource(resources),
                transport: drive.network.endpoint("\(name):1"),
                logger: quietLogger(),
                clock: drive.clock
            )
        }
        drive.watch(managers)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for manager in managers { group.addTask { try await manager.run() } }
            try await drive.until("all 60 running on three nodes") {
                let running = recorder.running
                return running.count == 60 && Set(running.values) == ["a", "b", "c"]
            }
            // Every node agrees on the view.
            try await drive.until("views agree") { Set(managers.map { $0.status().viewChecksum }).count == 1 }

            try await drive.run("b stops") { await managers[1].stop() }
            try await drive.until("b's resources moved to a and c") {
                let running = recorder.running
                return running.count == 60 && Set(running.values) == ["a", "c"]
            }
            for manager in [managers[0], managers[2]] {
                try await drive.run("\(manager.identity.name) stops") { await manager.stop() }
            }
            try await group.waitForAll()
        }
        #expect(recorder.overlaps.isEmpty, "revoke-then-assign: never two nodes at once")
        #expect(recorder.running.isEmpty)
    }

    @Test("a node cut off from the others is declared dead and its resources are taken over")
    func crashedNodeTakenOver() async throws {
        let drive = Drive()
        let recorder = Recorder()
        let resources = (0..<30).map { Resource(id: ResourceID("r\($0)")) }
        let managers = ["a", "b", "c"].map { name in
            ResourceManager(
                configuration: configuration(name, seeds: name == "a" ? [] : ["a:1"]),
                handler: RecordingHandler(node: name, recorder: recorder),
                source: StaticResourceSource(resources),
                transport: drive.network.endpoint("\(name):1"),
                logger: quietLogger(),
                clock: drive.clock
            )
        }
        drive.watch(managers)
        let (crashSignal, crash) = AsyncStream<Void>.makeStream()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for manager in managers.prefix(2) { group.addTask { try await manager.run() } }
            // c runs until it "crashes": its task ends abruptly, without leaving.
            group.addTask {
                await withTaskGroup(of: Void.self) { inner in
                    inner.addTask { try? await managers[2].run() }
                    inner.addTask { for await _ in crashSignal { break } }
                    await inner.next()
                    inner.cancelAll()
                }
            }
            try await drive.until("all running on three nodes") {
                recorder.running.count == 30 && Set(recorder.running.values).count == 3
            }
            // Crash c: its messages stop and its process ends; what it ran is gone with it.
            drive.network.isolate("c:1")
            crash.finish()
            recorder.crashed("c")
            try await drive.until("a and b run everything") {
                let running = recorder.running
                return running.count == 30 && Set(running.values) == ["a", "b"]
            }
            for manager in managers.prefix(2) {
                try await drive.run("\(manager.identity.name) stops") { await manager.stop() }
            }
            try await group.waitForAll()
        }
        #expect(recorder.overlaps.isEmpty, "c was really gone before the others took over")
    }

    @Test("a runner runs until cancelled to terminate, and is restarted when it ends by itself")
    func runnerMode() async throws {
        final class Counter: Sendable {
            let value = Atomic<Int>(0)
        }
        struct Runner: ResourceRunner {
            let started: Counter
            let cancelled: Counter
            func run(_ resource: Resource, context: ResourceContext) async throws {
                let count = self.started.value.add(1, ordering: .relaxed).newValue
                if resource.id == "flaky", count == 1 { throw StorkError(.handlerFailed, "connection dropped") }
                // Runs until cancelled (a signal nobody fires: the wait returns on cancellation only).
                await OneShotSignal().wait()
                if Task.isCancelled { self.cancelled.value.add(1, ordering: .relaxed) }
            }
        }
        let started = Counter()
        let cancelled = Counter()
        let drive = Drive()
        var config = configuration("solo", seeds: [])
        config.node.orchestrator.retryInitial = .milliseconds(50)
        let manager = ResourceManager(
            configuration: config,
            runner: Runner(started: started, cancelled: cancelled),
            transport: drive.network.endpoint("solo:1"),
            logger: quietLogger(),
            clock: drive.clock
        )
        drive.watch([manager])
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await manager.run() }
            #expect(try await drive.run("allocate flaky") { await manager.allocate(Resource(id: "flaky")) }.succeeded)
            try await drive.until("restarted after it ended by itself") { started.value.load(ordering: .relaxed) == 2 }
            try await drive.until("running") { manager.status().running == ["flaky"] }
            let removed = try await drive.run("deallocate flaky") { await manager.deallocate("flaky") }
            #expect(removed == .terminated(by: manager.identity))
            #expect(cancelled.value.load(ordering: .relaxed) == 1)
            try await drive.run("stop") { await manager.stop() }
            try await group.waitForAll()
        }
    }

    @Test("with cacheAllResources a rebalance does not refetch; without it, it does")
    func cachedRebalanceDoesNotRefetch() async throws {
        // A source key that a keeps owning after b joins (rendezvous placement hashes node names).
        let names = [NodeID(name: "a", address: "a:1", uid: 1), NodeID(name: "b", address: "b:1", uid: 2)]
        let key = (0..<100).map { ResourceID("source-\($0)") }.first {
            Placement(nodes: names).owner(of: $0)?.name == "a"
        }!
        for cache in [true, false] {
            let drive = Drive()
            let recorder = Recorder()
            let source = CountingSource((0..<10).map { Resource(id: ResourceID("r\($0)")) })
            let managers = ["a", "b"].map { name in
                var config = configuration(name, seeds: name == "a" ? [] : ["a:1"])
                config.cacheAllResources = cache
                return ResourceManager(
                    configuration: config,
                    handler: RecordingHandler(node: name, recorder: recorder),
                    sources: [SourceRegistration(name: "accounts", source: source, electionKey: key)],
                    transport: drive.network.endpoint("\(name):1"),
                    logger: quietLogger(),
                    clock: drive.clock
                )
            }
            drive.watch(managers)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await managers[0].run() }
                try await drive.until("a runs all ten") { recorder.running.count == 10 }
                #expect(source.fetches.load(ordering: .relaxed) == 1)
                group.addTask { try await managers[1].run() }
                try await drive.until("both nodes run resources") { Set(recorder.running.values) == ["a", "b"] }
                if cache {
                    // Both nodes applied the new view; then a full second of clock time passes, and since the clock
                    // moves only once the loops it woke are asleep again, a's source loop (which looks at the view
                    // every 200 ms) went round at least five times with the new view: a refetch had its chances.
                    try await drive.until("both nodes applied the same view") {
                        managers.allSatisfy { $0.status().isReady && $0.status().view.count == 2 }
                            && Set(managers.map { $0.status().viewChecksum }).count == 1
                    }
                    let sleepsBefore = drive.clock.sleepsStarted
                    await drive.pass(.seconds(1))
                    #expect(drive.clock.sleepsStarted - sleepsBefore >= 5, "the loops went round")
                    #expect(source.fetches.load(ordering: .relaxed) == 1, "the cached desired set serves the rebalance")
                } else {
                    try await drive.until("the poller refetched after the rebalance") {
                        source.fetches.load(ordering: .relaxed) >= 2
                    }
                }
                for manager in managers.reversed() {
                    try await drive.run("\(manager.identity.name) stops") { await manager.stop() }
                }
                try await group.waitForAll()
            }
        }
    }

    @Test("when the source keeps failing past the limit, the node terminates everything and leaves")
    func sourceFailureLeaves() async throws {
        let drive = Drive()
        let recorder = Recorder()
        let source = CountingSource((0..<4).map { Resource(id: ResourceID("r\($0)")) })
        var config = configuration("solo", seeds: [])
        config.pollInterval = .milliseconds(100)
        config.maxLengthOfTimeToRetryResourceFetching = .milliseconds(400)
        let manager = ResourceManager(
            configuration: config,
            handler: RecordingHandler(node: "solo", recorder: recorder),
            source: source,
            transport: drive.network.endpoint("solo:1"),
            logger: quietLogger(),
            clock: drive.clock
        )
        drive.watch([manager])
        let finished = OneShotSignal()
        await #expect(throws: StorkError.self) {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    defer { finished.fire() }
                    try await manager.run()
                }
                try await drive.until("four running") { recorder.running.count == 4 }
                source.failing.store(true, ordering: .relaxed)
                try await drive.until("the node gave up and left") { finished.isFired }
                try await group.waitForAll()
            }
        }
        #expect(recorder.running.isEmpty, "everything was terminated before leaving")
        #expect(source.fetches.load(ordering: .relaxed) > 2, "the fetch was retried before giving up")
    }

    @Test("the fetch retry policy backs off exponentially and gives up at the limit")
    func fetchRetryPolicy() {
        let policy = FetchRetryPolicy(initial: .seconds(1), maximumTotal: .seconds(60))
        #expect(policy.delay(afterFailures: 1, elapsed: .zero) == .seconds(1))
        #expect(policy.delay(afterFailures: 2, elapsed: .seconds(1)) == .seconds(2))
        #expect(policy.delay(afterFailures: 6, elapsed: .seconds(31)) == .seconds(29), "capped by the time left")
        #expect(policy.delay(afterFailures: 7, elapsed: .seconds(60)) == nil)
    }
}
