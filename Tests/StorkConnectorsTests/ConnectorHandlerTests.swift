import Foundation
import StorkConnectors
import StorkCore
import StorkResources
import StorkTestKit
import Synchronization
import Testing

/// A connector kind registered by the test, the way a user (or a later `webhook` kind) registers one: it reports
/// `connected`, counts its runs, stops and cancellations, and fails its first runs when told to. By default it
/// ignores its stop signal (only cancellation ends it), like a connector written before there was one.
struct ProbeConnector: Connector {
    final class Record: Sendable {
        let runs = Atomic<Int>(0)
        let cancellations = Atomic<Int>(0)
        /// Runs that returned because their stop signal fired.
        let stops = Atomic<Int>(0)
    }

    let name = "probe"
    let record: Record
    var failingRuns = 0
    var honoursStop = false

    func validate(_ resource: Resource) throws {
        _ = try ConnectorAttributes(resource, kind: self.name).subject("subject")
    }

    func run(_ resource: Resource, context: ConnectorContext) async throws {
        let run = self.record.runs.add(1, ordering: .relaxed).newValue
        if run <= self.failingRuns { throw StorkError(.connectorFailed, "probe run \(run) failed") }
        context.status.state(.connected)
        if self.honoursStop {
            if !(await context.sleep(.seconds(86_400))) { self.record.stops.add(1, ordering: .relaxed) }
            return
        }
        do {
            try await context.clock.sleep(.seconds(86_400))
        } catch {
            self.record.cancellations.add(1, ordering: .relaxed)
            throw error
        }
    }
}

@Suite("connector handler", .timeLimit(.minutes(1)))
struct ConnectorHandlerTests {
    @Test("a registered kind runs its connector until terminate cancels it; no kind goes to the fallback handler")
    func dispatch() async throws {
        let record = ProbeConnector.Record()
        var registry = ConnectorRegistry()
        registry.register(ProbeConnector(record: record))
        let fallback = RecordingHandler()
        let messaging = LocalMessaging()
        let clock = TestClock()
        try await withConnectorHandler(
            registry: registry,
            fallback: fallback,
            // The probe ignores its stop signal: terminate cancels it at once.
            configuration: configured {
                $0.clock = clock.clock
                $0.stopGracePeriod = .zero
            }
        ) {
            handler in
            let probe = Resource(id: "p1", attributes: ["kind": "probe", "subject": "a.b"])
            try await handler.handle(probe, context: resourceContext(messaging: messaging))
            #expect(await eventually(.seconds(10)) { handler.board.status(of: "p1")?.state == .connected })
            #expect(record.runs.load(ordering: .relaxed) == 1)

            let plain = Resource(id: "plain", attributes: ["owner": "team-a"])
            try await handler.handle(plain, context: resourceContext(messaging: nil))
            #expect(fallback.calls.withLock { $0 } == ["handle plain"])
            #expect(handler.board.status(of: "plain") == nil)

            try await handler.terminate(probe, reason: .moved, context: resourceContext(messaging: messaging))
            #expect(record.cancellations.load(ordering: .relaxed) == 1)
            #expect(handler.board.status(of: "p1") == nil)
            try await handler.terminate(plain, reason: .removed, context: resourceContext(messaging: nil))
            #expect(fallback.calls.withLock { $0 } == ["handle plain", "terminate plain"])
        }
        #expect(registry.kinds == ["probe"])
    }

    @Test(
        "an unknown kind fails clearly (or goes to the handler when configured); bad attributes and no message server fail handle"
    )
    func failures() async throws {
        let record = ProbeConnector.Record()
        var registry = ConnectorRegistry()
        registry.register(ProbeConnector(record: record))
        let fallback = RecordingHandler()
        let messaging = LocalMessaging()
        try await withConnectorHandler(registry: registry, fallback: fallback) { handler in
            let unknown = Resource(id: "u1", attributes: ["kind": "carrier-pigeon"])
            await #expect {
                try await handler.handle(unknown, context: resourceContext(messaging: messaging))
            } throws: { error in
                "\(error)".contains("unknown kind 'carrier-pigeon'") && "\(error)".contains("probe")
            }
            await handler.handleFailed(
                unknown,
                error: StorkError(.invalidInput, "x"),
                context: resourceContext(messaging: messaging)
            )
            #expect(fallback.calls.withLock { $0 }.isEmpty, "a failed connector start is not the fallback's business")
            #expect(handler.board.status(of: "u1")?.state == .failed)

            let bad = Resource(id: "b1", attributes: ["kind": "probe", "subject": "a.*"])
            await #expect {
                try await handler.handle(bad, context: resourceContext(messaging: messaging))
            } throws: { error in
                "\(error)".contains("resource b1 (probe): 'subject' must be a subject without wildcards")
            }
            let status = try #require(handler.board.status(of: "b1"))
            #expect(status.state == .failed)
            #expect(status.failures == 1)
            #expect(status.lastError?.contains("'subject'") == true)

            let notString = Resource(id: "k1", attributes: ["kind": 3])
            await #expect(throws: StorkError.self) {
                try await handler.handle(notString, context: resourceContext(messaging: messaging))
            }

            let good = Resource(id: "g1", attributes: ["kind": "probe", "subject": "a.b"])
            await #expect {
                try await handler.handle(good, context: resourceContext(messaging: nil))
            } throws: { error in
                "\(error)".contains("message server")
            }
            #expect(record.runs.load(ordering: .relaxed) == 0)
        }

        try await withConnectorHandler(
            registry: registry,
            fallback: fallback,
            configuration: configured { $0.unknownKind = .handler }
        ) { handler in
            let unknown = Resource(id: "u2", attributes: ["kind": "carrier-pigeon"])
            try await handler.handle(unknown, context: resourceContext(messaging: messaging))
            #expect(fallback.calls.withLock { $0 } == ["handle u2"])
        }
    }

    @Test("a connector whose run throws is restarted with backoff, counted as failures and retries")
    func restart() async throws {
        let record = ProbeConnector.Record()
        var registry = ConnectorRegistry()
        registry.register(ProbeConnector(record: record, failingRuns: 2))
        let messaging = LocalMessaging()
        let clock = TestClock()
        try await withConnectorHandler(
            registry: registry,
            configuration: configured {
                $0.clock = clock.clock
                $0.stopGracePeriod = .zero  // the probe ignores its stop signal
                $0.restartBackoffMinimum = .seconds(2)
                $0.restartBackoffMaximum = .seconds(10)
            }
        ) { handler in
            let probe = Resource(id: "p1", attributes: ["kind": "probe", "subject": "a.b"])
            try await handler.handle(probe, context: resourceContext(messaging: messaging))
            #expect(await clock.sleep(number: 1) == .seconds(2))
            #expect(handler.board.status(of: "p1")?.state == .failed)
            #expect(handler.board.status(of: "p1")?.lastError?.contains("probe run 1 failed") == true)
            clock.release()
            let second = try #require(await clock.sleep(number: 2))
            #expect(second >= .seconds(2) && second <= .seconds(4))
            clock.release()
            #expect(await eventually(.seconds(10)) { handler.board.status(of: "p1")?.state == .connected })
            let status = try #require(handler.board.status(of: "p1"))
            #expect(status.failures == 2)
            #expect(status.retries == 2)
            try await handler.terminate(probe, reason: .removed, context: resourceContext(messaging: messaging))
            #expect(record.cancellations.load(ordering: .relaxed) == 1)
        }
    }

    @Test("terminate tells the connector to stop; one that returns by itself is not cancelled, the grace timer dropped")
    func cooperativeStop() async throws {
        let record = ProbeConnector.Record()
        var registry = ConnectorRegistry()
        registry.register(ProbeConnector(record: record, honoursStop: true))
        let messaging = LocalMessaging()
        let clock = TestClock()
        try await withConnectorHandler(
            registry: registry,
            configuration: configured {
                $0.clock = clock.clock
                $0.stopGracePeriod = .seconds(5)
            }
        ) { handler in
            let probe = Resource(id: "p1", attributes: ["kind": "probe", "subject": "a.b"])
            try await handler.handle(probe, context: resourceContext(messaging: messaging))
            #expect(await clock.sleep(number: 1) == .seconds(86_400))
            // Returns without the clock moving: the probe returned on its stop signal.
            try await handler.terminate(probe, reason: .moved, context: resourceContext(messaging: messaging))
            #expect(record.stops.load(ordering: .relaxed) == 1)
            #expect(record.cancellations.load(ordering: .relaxed) == 0)
            #expect(record.runs.load(ordering: .relaxed) == 1, "a stopped connector is not restarted")
            #expect(handler.board.status(of: "p1") == nil)
            #expect(clock.pending == 0, "the probe's wait and the grace timer both ended")
        }
    }

    @Test("a connector that ignores its stop signal is cancelled once the grace period passed on the clock")
    func stopGracePeriod() async throws {
        let record = ProbeConnector.Record()
        var registry = ConnectorRegistry()
        registry.register(ProbeConnector(record: record))
        let messaging = LocalMessaging()
        let clock = TestClock()
        try await withConnectorHandler(
            registry: registry,
            configuration: configured {
                $0.clock = clock.clock
                $0.stopGracePeriod = .seconds(5)
            }
        ) { handler in
            let probe = Resource(id: "p1", attributes: ["kind": "probe", "subject": "a.b"])
            try await handler.handle(probe, context: resourceContext(messaging: messaging))
            #expect(await clock.sleep(number: 1) == .seconds(86_400))
            let terminated = OneShotSignal()
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    try await handler.terminate(probe, reason: .moved, context: resourceContext(messaging: messaging))
                    terminated.fire()
                }
                // Terminate fired the stop signal and waits out the grace period on the injected clock.
                #expect(await clock.sleep(number: 2) == .seconds(5))
                clock.advance(by: .seconds(4))
                #expect(clock.pending == 2, "within the grace period, nothing is cancelled")
                #expect(record.cancellations.load(ordering: .relaxed) == 0)
                #expect(!terminated.isFired)
                #expect(handler.board.status(of: "p1") != nil)
                clock.advance(by: .seconds(1))
                try await group.waitForAll()
            }
            #expect(terminated.isFired)
            #expect(record.cancellations.load(ordering: .relaxed) == 1)
            #expect(record.runs.load(ordering: .relaxed) == 1, "a cancelled connector is not restarted")
            #expect(handler.board.status(of: "p1") == nil)
            #expect(clock.pending == 0)
        }
    }

    @Test("shutting the handler down stops every connector; handle afterwards fails")
    func shutdown() async throws {
        let record = ProbeConnector.Record()
        var registry = ConnectorRegistry()
        registry.register(ProbeConnector(record: record))
        let messaging = LocalMessaging()
        let handler = ConnectorHandler(registry: registry, fallback: RecordingHandler(), logger: quietLogger())
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await handler.run() }
            for index in 0..<3 {
                try await handler.handle(
                    Resource(id: ResourceID("p\(index)"), attributes: ["kind": "probe", "subject": "a"]),
                    context: resourceContext(messaging: messaging)
                )
            }
            #expect(
                await eventually(.seconds(10)) {
                    handler.board.all().values.filter { $0.state == .connected }.count == 3
                }
            )
            group.cancelAll()
            try await group.waitForAll()
        }
        #expect(record.cancellations.load(ordering: .relaxed) == 3)
        await #expect(throws: StorkError.self) {
            try await handler.handle(
                Resource(id: "late", attributes: ["kind": "probe", "subject": "a"]),
                context: resourceContext(messaging: messaging)
            )
        }
    }

    @Test("terminate returns for a connector handled just before the handler stopped, whether or not it started")
    func handledBeforeShutdown() async throws {
        let record = ProbeConnector.Record()
        var registry = ConnectorRegistry()
        registry.register(ProbeConnector(record: record))
        let messaging = LocalMessaging()
        let handler = ConnectorHandler(registry: registry, fallback: RecordingHandler(), logger: quietLogger())
        let probe = Resource(id: "early", attributes: ["kind": "probe", "subject": "a"])
        // Handled before the handler's run() started: the start waits in its queue.
        try await handler.handle(probe, context: resourceContext(messaging: messaging))
        let task = Task { try await handler.run() }
        task.cancel()
        try await task.value
        try await handler.terminate(probe, reason: .leaving, context: resourceContext(messaging: messaging))
        #expect(handler.board.status(of: "early") == nil)
        #expect(record.runs.load(ordering: .relaxed) == record.cancellations.load(ordering: .relaxed))
    }

    @Test("secrets come from STORK_SECRET_<NAME>, then from the secrets file (JSON or NAME=value)")
    func secrets() throws {
        #expect(ConnectorSecrets.normalizedName("feed-token.v2") == "FEED_TOKEN_V2")
        let environment = ConnectorSecrets(environment: ["STORK_SECRET_FEED_TOKEN": "from-env"])
        #expect(try environment.resolve("feed-token") == "from-env")
        #expect(throws: StorkError.self) { try environment.resolve("other") }

        let directory = NSTemporaryDirectory() + "stork-secrets-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let lines = directory + "/secrets.env"
        try "# comment\n\nfeed-token=from-file\nAPI_KEY = a=b\n".write(toFile: lines, atomically: true, encoding: .utf8)
        let fromLines = ConnectorSecrets(environment: ["STORK_SECRET_FEED_TOKEN": "from-env"], file: lines)
        #expect(try fromLines.resolve("feed-token") == "from-env", "the environment wins")
        #expect(try fromLines.resolve("api.key") == "a=b")
        #expect {
            try fromLines.resolve("nope")
        } throws: { error in
            "\(error)".contains("STORK_SECRET_NOPE") && "\(error)".contains(lines)
        }
        let json = directory + "/secrets.json"
        try #"{"feed-token": "from-json"}"#.write(toFile: json, atomically: true, encoding: .utf8)
        #expect(try ConnectorSecrets(environment: [:], file: json).resolve("FEED_TOKEN") == "from-json")
        try #"{"feed-token": 1}"#.write(toFile: json, atomically: true, encoding: .utf8)
        #expect(throws: StorkError.self) { try ConnectorSecrets(environment: [:], file: json).resolve("FEED_TOKEN") }
        #expect(throws: StorkError.self) {
            try ConnectorSecrets(environment: [:], file: directory + "/missing").resolve("x")
        }
    }
}
