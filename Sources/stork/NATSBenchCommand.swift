import ArgumentParser
import Foundation

// MARK: - stork bench nats

/// `stork bench nats`: Stork's NATS endpoint and JetStream subset against nats-server, side by side, with one load
/// generator (``NATSBenchClient``, over SwiftNIO).
struct NATSBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nats",
        abstract: "Throughput and latency of Stork's NATS endpoint and JetStream next to nats-server's.",
        discussion: """
            Starts `stork serve` (this binary) and nats-server (-js, file store) as child processes on 127.0.0.1 \
            with free ports and temporary data folders, and measures on each, with the same load generator: \
            publish-only throughput (16 B and 1 KiB, pipelined, ending with PING/PONG), 1 publisher → 1 subscriber \
            throughput, request/reply latency (p50/p99 over --round-trips after a warm-up), JetStream publish with \
            PubAcks to a file stream (--window in flight), and a durable pull consumer reading that stream back \
            (pull requests of --batch messages, explicit acks unless --ack-policy none). Prints a Markdown table \
            with Stork / nats-server for each figure (--repeats: the median of several rounds). Each scenario has \
            --timeout seconds; a lost message, an error from a server or a timeout fails it, and any failure makes \
            the command exit 1. Build in release for meaningful numbers: \
            swift build -c release --product stork && .build/release/stork bench nats
            """
    )

    @Option(help: "Messages in each core NATS throughput scenario.")
    var messages: Int = 1_000_000

    @Option(help: "Messages in the JetStream scenarios (default: --messages, at most 200,000).")
    var durableMessages: Int?

    @Option(help: "Timed request/reply round trips (after a warm-up of a tenth as many, at most 1,000).")
    var roundTrips: Int = 20_000

    @Option(help: "JetStream publishes in flight without a PubAck.")
    var window: Int = 1000

    @Option(help: "Messages asked for by each pull request of the consumer scenario.")
    var batch: Int = 1000

    @Option(help: "The consumer's ack policy: explicit or none.")
    var ackPolicy: String = "explicit"

    @Option(help: "Seconds each scenario may take on one server before it counts as failed.")
    var timeout: Int = 120

    @Option(
        name: .customLong("nats-server"),
        help: "The nats-server executable; if it is missing, only Stork is measured."
    )
    var natsServer: String = "/usr/sbin/nats-server"

    @Option(help: "Measure one server only: stork or nats-server.")
    var only: String?

    @Option(
        help: """
            Comma-separated scenarios to run (default all): publish-16, publish-1k, pub-sub, request-reply, \
            jetstream-publish, jetstream-consume (which brings jetstream-publish along: it reads that stream).
            """
    )
    var scenarios: String?

    @Option(help: "Rounds of every scenario on every server; each figure in the table is the median of the rounds.")
    var repeats: Int = 1

    @Flag(help: "Print the results as JSON instead of Markdown.")
    var json = false

    @Option(
        help: """
            The nats.go load generator (Benchmarks/anchors/natsgo/build.sh builds it). With it, three-node Stork and             nats-server clusters are also measured by that client, on one node and across nodes (publisher on n1,             subscriber or responder on n2).
            """
    )
    var natsgo: String?

    func validate() throws {
        guard self.messages > 0 else { throw ValidationError("--messages must be at least 1, got \(self.messages).") }
        if let durable = self.durableMessages, durable <= 0 {
            throw ValidationError("--durable-messages must be at least 1, got \(durable).")
        }
        guard self.roundTrips > 0 else { throw ValidationError("--round-trips must be at least 1.") }
        guard self.window > 0 else { throw ValidationError("--window must be at least 1.") }
        guard self.batch > 0 else { throw ValidationError("--batch must be at least 1.") }
        guard self.timeout > 0 else { throw ValidationError("--timeout must be at least 1 second.") }
        guard self.repeats > 0, self.repeats <= 99 else { throw ValidationError("--repeats must be 1 to 99.") }
        guard ["explicit", "none"].contains(self.ackPolicy) else {
            throw ValidationError("--ack-policy must be explicit or none, got '\(self.ackPolicy)'.")
        }
        if let natsgo = self.natsgo, !FileManager.default.isExecutableFile(atPath: natsgo) {
            throw ValidationError("--natsgo: no executable at \(natsgo) (Benchmarks/anchors/natsgo/build.sh builds it).")
        }
        if self.natsgo != nil, self.only != nil {
            throw ValidationError("--natsgo measures both servers: it cannot be combined with --only.")
        }
        if let only = self.only, NATSBenchServerKind(rawValue: only) == nil {
            throw ValidationError("--only must be stork or nats-server, got '\(only)'.")
        }
        _ = try self.selectedScenarios()
    }

    /// The scenarios asked for, in the order they run.
    func selectedScenarios() throws -> [NATSBenchScenario] {
        guard let list = self.scenarios else { return NATSBenchScenario.allCases }
        var chosen: Set<NATSBenchScenario> = []
        for name in list.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !name.isEmpty {
            guard let scenario = NATSBenchScenario(rawValue: name) else {
                throw ValidationError("unknown scenario '\(name)' in --scenarios.")
            }
            chosen.insert(scenario)
        }
        guard !chosen.isEmpty else { throw ValidationError("--scenarios names no scenario.") }
        if chosen.contains(.jetStreamConsume) { chosen.insert(.jetStreamPublish) }
        return NATSBenchScenario.allCases.filter(chosen.contains)
    }

    func run() async throws {
        var servers = self.only.flatMap(NATSBenchServerKind.init(rawValue:)).map { [$0] } ?? [.stork, .natsServer]
        var skipped: String?
        if servers.contains(.natsServer), !FileManager.default.isExecutableFile(atPath: self.natsServer) {
            guard servers.count > 1 else {
                throw ValidationError("--only nats-server, but there is no executable at \(self.natsServer).")
            }
            servers = [.stork]
            skipped = "no executable at \(self.natsServer); only Stork was measured"
        }
        let settings = NATSBenchSettings(
            coreMessages: self.messages,
            durableMessages: self.durableMessages ?? min(self.messages, 200_000),
            roundTrips: self.roundTrips,
            warmupRoundTrips: min(1000, max(1, self.roundTrips / 10)),
            window: self.window,
            pullBatch: self.batch,
            ackExplicit: self.ackPolicy == "explicit",
            scenarioTimeout: .seconds(self.timeout),
            scenarios: try self.selectedScenarios(),
            repeats: self.repeats
        )
        let runner = NATSBenchRunner(
            settings: settings,
            servers: servers,
            natsServerPath: self.natsServer,
            natsServerSkipped: skipped
        )
        let report = try await runner.run()
        print(self.json ? try report.json() : report.markdown())
        fflush(nil)  // stdout is not concurrency-safe to name; nil flushes every stream
        var lost = false
        if let natsgo = self.natsgo, servers.count == 2 {
            let cluster = NATSBenchCluster(
                natsgo: natsgo,
                natsServer: self.natsServer,
                messages16: self.messages,
                messages1K: max(1, self.messages / 3),
                roundTrips: self.roundTrips,
                repeats: self.repeats
            )
            let result = try await cluster.run()
            print("")
            print(result.markdown)
            fflush(nil)
            lost = result.lost
        }
        if report.failed || lost { throw ExitCode(1) }
    }
}
