import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// MARK: - Three-node clusters, measured with nats.go

/// The part of `stork bench nats` that needs a client neither server's authors wrote and a cluster: a three-node Stork
/// cluster and a three-node nats-server cluster (`-cluster` / `-routes`), each driven by the nats.go load generator
/// (`Benchmarks/anchors/natsgo`) with the publisher and subscriber (requester and responder) on one node, and on two
/// different nodes. Every figure is the median of the rounds; the servers alternate which goes first.
struct NATSBenchCluster {
    struct Scenario: Sendable {
        var name: String
        /// `pubsub` or `reqrep`.
        var mode: String
        var size: Int
        var count: Int
        var crossNode: Bool
    }

    /// One natsgo run's result.
    struct Run: Decodable, Sendable {
        var received: Int
        var sent: Int
        var rate: Double
        var p50Microseconds: Double?
        var p99Microseconds: Double?
        var errors: [String]?

        enum CodingKeys: String, CodingKey {
            case received, sent, rate, errors
            case p50Microseconds = "p50_us"
            case p99Microseconds = "p99_us"
        }
    }

    var natsgo: String
    var natsServer: String
    var messages16: Int
    var messages1K: Int
    var roundTrips: Int
    var repeats: Int

    var scenarios: [Scenario] {
        var list: [Scenario] = []
        for crossNode in [false, true] {
            let place = crossNode ? "n1 → n2" : "one node"
            list.append(Scenario(name: "pub → sub 16 B, \(place)", mode: "pubsub", size: 16, count: self.messages16, crossNode: crossNode))
            list.append(Scenario(name: "pub → sub 1 KiB, \(place)", mode: "pubsub", size: 1024, count: self.messages1K, crossNode: crossNode))
            list.append(Scenario(name: "request/reply, \(place)", mode: "reqrep", size: 16, count: self.roundTrips, crossNode: crossNode))
        }
        return list
    }

    /// Runs everything and returns the Markdown section; `lost` is true when Stork lost a message.
    func run() async throws -> (markdown: String, lost: Bool) {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("stork-bench-cluster-\(getpid())")
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: root) }
        let load = NATSBenchRunner.loadAverage() ?? "?"
        var clusters: [NATSBenchServerKind: [Process]] = [:]
        var ports: [NATSBenchServerKind: [Int]] = [:]
        defer {
            for process in clusters.values.flatMap({ $0 }) where process.isRunning {
                kill(process.processIdentifier, SIGKILL)
                NATSBenchChildren.shared.remove(process.processIdentifier)
            }
        }
        for kind in NATSBenchServerKind.allCases {
            let (processes, clientPorts) = try Self.startCluster(kind, natsServer: self.natsServer, in: root)
            clusters[kind] = processes
            ports[kind] = clientPorts
            NATSBenchRunner.say("started a three-node \(kind.displayName) cluster on NATS ports \(clientPorts)")
        }
        var results: [String: [NATSBenchServerKind: [Run]]] = [:]
        var lost = false
        for round in 0..<self.repeats {
            let order = round % 2 == 0 ? NATSBenchServerKind.allCases : NATSBenchServerKind.allCases.reversed()
            for scenario in self.scenarios {
                for kind in order {
                    let clientPorts = ports[kind]!
                    let run = try Self.natsgo(
                        self.natsgo,
                        scenario: scenario,
                        publisher: clientPorts[0],
                        subscriber: clientPorts[scenario.crossNode ? 1 : 0]
                    )
                    results[scenario.name, default: [:]][kind, default: []].append(run)
                    if kind == .stork, run.received < run.sent { lost = true }
                    NATSBenchRunner.say(
                        "\(kind.displayName): \(scenario.name): \(run.received) of \(run.sent), "
                            + Self.figure(scenario, run)
                    )
                }
            }
        }
        var lines = [
            "## Three-node clusters, measured with nats.go",
            "",
            "nats.go load generator (`Benchmarks/anchors/natsgo`), \(self.repeats) round(s), median; load average "
                + "before: \(load). Delivered counts are the worst round.",
            "",
            "| scenario | Stork | nats-server | Stork / nats-server | delivered (Stork / nats-server) |",
            "|---|---:|---:|---:|---|",
        ]
        for scenario in self.scenarios {
            let stork = results[scenario.name]?[.stork] ?? []
            let reference = results[scenario.name]?[.natsServer] ?? []
            let a = Self.median(stork, scenario)
            let b = Self.median(reference, scenario)
            // Throughput: higher is better; latency: nats-server's over Stork's, so that above 1 is Stork ahead.
            let ratio = scenario.mode == "reqrep" ? b / a : a / b
            let delivered = "\(stork.map(\.received).min() ?? 0) of \(scenario.count) / "
                + "\(reference.map(\.received).min() ?? 0) of \(scenario.count)"
            lines.append(
                "| \(scenario.name) | \(Self.format(a, scenario)) | \(Self.format(b, scenario)) | "
                    + String(format: "%.2f×", ratio) + " | \(delivered) |"
            )
        }
        lines.append("")
        lines.append("Request/reply is p50 latency (lower is better; the ratio is nats-server's over Stork's).")
        return (lines.joined(separator: "\n"), lost)
    }

    static func figure(_ scenario: Scenario, _ run: Run) -> String {
        if scenario.mode == "reqrep" {
            return String(format: "p50 %.0f µs, p99 %.0f µs", run.p50Microseconds ?? 0, run.p99Microseconds ?? 0)
        }
        return String(format: "%.0f msgs/s", run.rate) + ((run.errors ?? []).isEmpty ? "" : " (\(run.errors!.joined(separator: "; ")))")
    }

    static func median(_ runs: [Run], _ scenario: Scenario) -> Double {
        let values = runs.map { scenario.mode == "reqrep" ? ($0.p50Microseconds ?? 0) : $0.rate }.sorted()
        guard !values.isEmpty else { return 0 }
        return values[values.count / 2]
    }

    static func format(_ value: Double, _ scenario: Scenario) -> String {
        if scenario.mode == "reqrep" { return String(format: "%.0f µs", value) }
        return value >= 1_000_000 ? String(format: "%.2f M msgs/s", value / 1e6) : String(format: "%.0f k msgs/s", value / 1e3)
    }

    /// Starts three nodes of `kind` on free loopback ports; returns the processes and their NATS client ports.
    static func startCluster(_ kind: NATSBenchServerKind, natsServer: String, in root: URL) throws -> ([Process], [Int]) {
        let free = try NATSBenchPorts.free(count: 9)
        var processes: [Process] = []
        var clientPorts: [Int] = []
        for index in 0..<3 {
            let directory = root.appendingPathComponent("\(kind.rawValue)-\(index + 1)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            let log = directory.appendingPathComponent("server.log")
            _ = FileManager.default.createFile(atPath: log.path, contents: nil)
            let process = Process()
            let clusterPorts = [free[0], free[1], free[2]]
            let clientPort = free[3 + index]
            switch kind {
            case .stork:
                process.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
                process.arguments = [
                    "serve", "--name", "n\(index + 1)", "--bind", "127.0.0.1:\(clusterPorts[index])",
                    "--http", "127.0.0.1:\(free[6 + index])", "--nats", "127.0.0.1:\(clientPort)",
                    "--seeds", clusterPorts.map { "127.0.0.1:\($0)" }.joined(separator: ","),
                    "--data", directory.appendingPathComponent("data").path, "--log-level", "warning",
                ]
            case .natsServer:
                process.executableURL = URL(fileURLWithPath: natsServer)
                let routes = clusterPorts.enumerated().filter { $0.offset != index }.map { "nats://127.0.0.1:\($0.element)" }
                process.arguments = [
                    "-a", "127.0.0.1", "-p", "\(clientPort)", "-n", "ns\(index + 1)",
                    "-cluster", "nats://127.0.0.1:\(clusterPorts[index])", "-routes", routes.joined(separator: ","),
                    "-cluster_name", "bench",
                ]
            }
            let handle = try FileHandle(forWritingTo: log)
            process.standardOutput = handle
            process.standardError = handle
            process.standardInput = FileHandle.nullDevice
            try process.run()
            NATSBenchChildren.shared.add(process.processIdentifier)
            processes.append(process)
            clientPorts.append(clientPort)
        }
        return (processes, clientPorts)
    }

    /// One natsgo run; its readiness wait (a probe until the subscription is known where the publisher is) covers
    /// the cluster forming.
    static func natsgo(_ path: String, scenario: Scenario, publisher: Int, subscriber: Int) throws -> Run {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = [
            "-mode", scenario.mode, "-n", "\(scenario.count)", "-size", "\(scenario.size)",
            "-pub", "nats://127.0.0.1:\(publisher)", "-sub", "nats://127.0.0.1:\(subscriber)", "-idle", "10s",
            "-ready", "60s",
        ]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.standardError
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0, let line = String(decoding: data, as: UTF8.self).split(separator: "\n").last,
            let run = try? JSONDecoder().decode(Run.self, from: Data(line.utf8))
        else {
            throw NATSBenchError(.unexpected, "\(path) \(scenario.name) failed (status \(process.terminationStatus))")
        }
        return run
    }
}
