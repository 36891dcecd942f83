import Foundation
import NIOCore
import NIOPosix

// MARK: - NATSBenchRunner

/// Runs `stork bench nats`: starts the servers as child processes, runs every scenario on each (Stork first, then
/// nats-server, scenario by scenario, so that a change in the machine's load hits both alike), stops the servers
/// and returns what was measured. Progress goes to standard error.
struct NATSBenchRunner {
    var settings: NATSBenchSettings
    var servers: [NATSBenchServerKind]
    var natsServerPath: String
    var natsServerSkipped: String?

    func run() async throws -> NATSBenchReport {
        var report = NATSBenchReport(
            settings: self.settings,
            servers: self.servers,
            natsServerVersion: self.servers.contains(.natsServer)
                ? NATSBenchServerProcess.natsServerVersion(self.natsServerPath) : nil,
            natsServerSkipped: self.natsServerSkipped,
            loadAverage: Self.loadAverage()
        )
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("stork-bench-nats-\(getpid())")
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        NATSBenchChildren.shared.removeOnSignal(root)
        NATSBenchChildren.shared.killOnSignals()
        // Two loops: a publisher and its subscriber (or requester and responder) each have a thread of their own.
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let loops = Array(group.makeIterator())

        var running: [NATSBenchServerKind: NATSBenchServerProcess] = [:]
        var startFailures: [NATSBenchServerKind: NATSBenchError] = [:]
        for kind in self.servers {
            do {
                let server = try NATSBenchServerProcess.start(kind, natsServer: self.natsServerPath, in: root)
                running[kind] = server
                Self.say("started \(server.commandLine)")
            } catch {
                startFailures[kind] =
                    error as? NATSBenchError ?? NATSBenchError(.serverStart, "cannot start", underlying: error)
            }
        }
        for (kind, server) in running.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
            do {
                try await server.waitUntilReady(on: loops[0], timeout: .seconds(30))
            } catch {
                startFailures[kind] =
                    error as? NATSBenchError ?? NATSBenchError(.serverStart, "not ready", underlying: error)
            }
        }

        for round in 0..<self.settings.repeats {
            // Every other round nats-server goes first, so that neither server always runs right after the other.
            let order = round % 2 == 0 ? self.servers : self.servers.reversed()
            for scenario in self.settings.scenarios {
                for kind in order {
                    var outcome = NATSBenchReport.Outcome()
                    if let failure = startFailures[kind] {
                        outcome.failure = failure
                    } else if scenario == .jetStreamConsume,
                        report.runs[.jetStreamPublish]?[kind]?.last?.failure != nil
                    {
                        outcome.failure = NATSBenchError(
                            .unexpected,
                            "skipped: it reads the stream the JetStream publish run fills"
                        )
                    } else if let server = running[kind] {
                        outcome = await self.measure(scenario, round: round, on: server, loops: loops)
                    }
                    report.record(outcome, scenario, kind)
                    let prefix = self.settings.repeats > 1 ? "round \(round + 1): " : ""
                    Self.say(prefix + Self.summary(scenario, kind, outcome))
                }
            }
        }

        for server in running.values { await server.stop() }
        try? FileManager.default.removeItem(at: root)
        NATSBenchChildren.shared.removeOnSignal(nil)
        try? await group.shutdownGracefully()
        return report
    }

    /// One scenario on one server, within the scenario timeout. A server that died is named in the failure, with
    /// the end of its log.
    private func measure(
        _ scenario: NATSBenchScenario,
        round: Int,
        on server: NATSBenchServerProcess,
        loops: [any EventLoop]
    ) async -> NATSBenchReport.Outcome {
        let connections = NATSBenchConnections(target: server.target, loops: loops)
        let settings = self.settings
        let names = NATSBenchStreamNames(round: round)
        var outcome = NATSBenchReport.Outcome()
        do {
            outcome.figures = try await connections.run(timeout: settings.scenarioTimeout) { connections in
                switch scenario {
                case .publish16:
                    try await NATSBenchMeasure.publishOnly(
                        size: 16,
                        count: settings.coreMessages,
                        connections: connections
                    )
                case .publish1K:
                    try await NATSBenchMeasure.publishOnly(
                        size: 1024,
                        count: settings.coreMessages,
                        connections: connections
                    )
                case .publishSubscribe:
                    try await NATSBenchMeasure.publishSubscribe(count: settings.coreMessages, connections: connections)
                case .requestReply:
                    try await NATSBenchMeasure.requestReply(
                        roundTrips: settings.roundTrips,
                        warmup: settings.warmupRoundTrips,
                        connections: connections
                    )
                case .jetStreamPublish:
                    try await NATSBenchMeasure.jetStreamPublish(
                        count: settings.durableMessages,
                        window: settings.window,
                        names: names,
                        connections: connections
                    )
                case .jetStreamConsume:
                    try await NATSBenchMeasure.jetStreamConsume(
                        count: settings.durableMessages,
                        batch: settings.pullBatch,
                        explicitAck: settings.ackExplicit,
                        names: names,
                        connections: connections
                    )
                }
            }
        } catch {
            var failure = error as? NATSBenchError ?? NATSBenchError(.unexpected, "failed", underlying: error)
            if let status = server.exitStatus {
                failure.message += "; the server \(status), its log ends: \(server.logTail(lines: 5))"
            }
            outcome.failure = failure
        }
        if outcome.failure == nil, let status = server.exitStatus {
            outcome.failure = NATSBenchError(.serverStart, "the server \(status) during the scenario")
        }
        return outcome
    }

    // MARK: Progress

    static func say(_ line: String) {
        FileHandle.standardError.write(Data("stork bench nats: \(line)\n".utf8))
    }

    static func summary(
        _ scenario: NATSBenchScenario,
        _ kind: NATSBenchServerKind,
        _ outcome: NATSBenchReport.Outcome
    )
        -> String
    {
        if let failure = outcome.failure { return "\(scenario.rawValue) on \(kind.displayName): FAILED: \(failure)" }
        let figures = outcome.figures.sorted { $0.key < $1.key }
            .map { "\($0.key) \(NATSBenchFormat.fixed($0.value, digits: 1))" }
            .joined(separator: ", ")
        return "\(scenario.rawValue) on \(kind.displayName): \(figures)"
    }

    /// The first three fields of /proc/loadavg, when there is one.
    static func loadAverage() -> String? {
        guard let data = FileManager.default.contents(atPath: "/proc/loadavg") else { return nil }
        let fields = String(decoding: data, as: UTF8.self).split(separator: " ").prefix(3)
        return fields.count == 3 ? fields.joined(separator: " ") : nil
    }
}
