import Foundation

// MARK: - Results

/// What one run measured: per scenario and server, the figures or the failure.
struct NATSBenchReport: Sendable {
    struct Outcome: Sendable {
        var figures: [String: Double] = [:]
        var failure: NATSBenchError?
    }

    var settings: NATSBenchSettings
    var servers: [NATSBenchServerKind]
    var natsServerVersion: String?
    /// Why nats-server was not measured, when it was not.
    var natsServerSkipped: String?
    var loadAverage: String?
    /// Every run of every scenario on every server, in the order they ran.
    var runs: [NATSBenchScenario: [NATSBenchServerKind: [Outcome]]] = [:]

    mutating func record(_ outcome: Outcome, _ scenario: NATSBenchScenario, _ server: NATSBenchServerKind) {
        self.runs[scenario, default: [:]][server, default: []].append(outcome)
    }

    var failed: Bool {
        self.runs.values.contains { $0.values.contains { $0.contains { $0.failure != nil } } }
    }

    /// The scenario on that server over all rounds: the first failure if any run failed, else the median of each
    /// figure.
    func outcome(_ scenario: NATSBenchScenario, _ server: NATSBenchServerKind) -> Outcome? {
        guard let runs = self.runs[scenario]?[server], !runs.isEmpty else { return nil }
        if let failed = runs.first(where: { $0.failure != nil }) { return failed }
        var median = Outcome()
        for key in Set(runs.flatMap(\.figures.keys)) {
            let values = runs.compactMap { $0.figures[key] }.sorted()
            median.figures[key] =
                values.count % 2 == 1
                ? values[values.count / 2] : (values[values.count / 2 - 1] + values[values.count / 2]) / 2
        }
        return median
    }

    /// The value of a figure in each run (for the JSON output).
    func values(_ scenario: NATSBenchScenario, _ server: NATSBenchServerKind, key: String) -> [Double] {
        (self.runs[scenario]?[server] ?? []).compactMap { $0.figures[key] }
    }

    // MARK: The rows

    /// The rows of the table, in order. Every scenario has at least one.
    func figures() -> [(figure: NATSBenchFigure, key: String)] {
        let settings = self.settings
        let core = NATSBenchFormat.count(settings.coreMessages)
        let durable = NATSBenchFormat.count(settings.durableMessages)
        let ack = settings.ackExplicit ? "explicit ack" : "no ack"
        func row(
            _ scenario: NATSBenchScenario,
            _ key: String,
            _ label: String,
            _ unit: String,
            higher: Bool = true
        )
            -> (NATSBenchFigure, String)
        {
            (
                NATSBenchFigure(
                    id: "\(scenario.rawValue).\(key)",
                    label: label,
                    unit: unit,
                    higherIsBetter: higher,
                    scenario: scenario
                ), key
            )
        }
        let rows: [(figure: NATSBenchFigure, key: String)] = [
            row(.publish16, "rate", "publish only, 16 B, \(core) msgs", "msgs/s"),
            row(.publish16, "mbps", "publish only, 16 B, \(core) msgs", "MB/s"),
            row(.publish1K, "rate", "publish only, 1 KiB, \(core) msgs", "msgs/s"),
            row(.publish1K, "mbps", "publish only, 1 KiB, \(core) msgs", "MB/s"),
            row(.publishSubscribe, "rate", "1 pub → 1 sub, 16 B, \(core) msgs", "msgs/s at sub"),
            row(
                .requestReply,
                "p50",
                "request/reply, \(NATSBenchFormat.count(settings.roundTrips)) round trips",
                "p50 µs",
                higher: false
            ),
            row(
                .requestReply,
                "p99",
                "request/reply, \(NATSBenchFormat.count(settings.roundTrips)) round trips",
                "p99 µs",
                higher: false
            ),
            row(
                .jetStreamPublish,
                "rate",
                "JetStream publish, file, 16 B, \(durable) msgs, \(settings.window) in flight",
                "acked msgs/s"
            ),
            row(
                .jetStreamConsume,
                "rate",
                "JetStream pull consumer, \(ack), batch \(settings.pullBatch), \(durable) msgs",
                "msgs/s"
            ),
        ]
        return rows.filter { settings.scenarios.contains($0.figure.scenario) }
    }

    // MARK: Markdown

    func markdown() -> String {
        var lines: [String] = []
        let versus = self.servers.map(\.displayName).joined(separator: " vs ")
        lines.append("## NATS: \(versus) (loopback, one load generator)")
        lines.append("")
        var about: [String] = []
        if let version = self.natsServerVersion, self.servers.contains(.natsServer) { about.append(version) }
        about.append("\(ProcessInfo.processInfo.activeProcessorCount) cores shared by servers and load generator")
        if let load = self.loadAverage { about.append("load average before the run \(load)") }
        if self.settings.repeats > 1 {
            about.append("each figure is the median of \(self.settings.repeats) rounds (server order alternating)")
        }
        lines.append(about.joined(separator: "; ") + ".")
        if let skipped = self.natsServerSkipped { lines.append("nats-server not measured: \(skipped).") }
        lines.append("")
        var header = "| scenario | unit |"
        var rule = "|---|---|"
        for server in self.servers {
            header += " \(server.displayName) |"
            rule += "---:|"
        }
        let both = self.servers.count == 2
        if both {
            header += " Stork / nats-server |"
            rule += "---:|"
        }
        lines.append(header)
        lines.append(rule)
        for (figure, key) in self.figures() {
            var line = "| \(figure.label) | \(figure.unit) |"
            var values: [Double?] = []
            for server in self.servers {
                let outcome = self.outcome(figure.scenario, server)
                let value = outcome?.failure == nil ? outcome?.figures[key] : nil
                values.append(value)
                line += " " + (value.map { NATSBenchFormat.value($0, unit: figure.unit) } ?? "FAILED") + " |"
            }
            if both {
                if let stork = values[0], let nats = values[1], nats > 0 {
                    line += " " + NATSBenchFormat.fixed(stork / nats, digits: 2) + " |"
                } else {
                    line += " – |"
                }
            }
            lines.append(line)
        }
        lines.append("")
        var legend = ["MB/s counts payload bytes (10^6 B)."]
        if self.settings.scenarios.contains(.requestReply) {
            legend.append(
                "Latencies are round trips measured at the requester after "
                    + "\(NATSBenchFormat.count(self.settings.warmupRoundTrips)) warm-up requests; for them a ratio above "
                    + "1 means Stork is slower, for every other row below 1 does."
            )
        }
        lines.append(legend.joined(separator: " "))
        var notes: [String] = []
        for scenario in NATSBenchScenario.allCases {
            for server in self.servers {
                guard let outcome = self.outcome(scenario, server) else { continue }
                if let failure = outcome.failure {
                    notes.append("- FAILED: \(scenario.rawValue) on \(server.displayName): \(failure)")
                }
                if let duplicates = outcome.figures["duplicates"], duplicates > 0 {
                    notes.append(
                        "- \(scenario.rawValue) on \(server.displayName): \(Int(duplicates)) redelivered messages"
                    )
                }
            }
        }
        if let pending = self.servers.compactMap({ self.outcome(.jetStreamConsume, $0)?.figures["max_ack_pending"] })
            .first
        {
            notes.append("- The consumer was created with the servers' default max_ack_pending (\(Int(pending))).")
        }
        if !notes.isEmpty {
            lines.append("")
            lines.append(contentsOf: notes)
        }
        return lines.joined(separator: "\n")
    }

    // MARK: JSON

    struct JSONReport: Encodable {
        struct Row: Encodable {
            var id: String
            var label: String
            var unit: String
            var higherIsBetter: Bool
            var values: [String: Double]
            /// Each round's value, when there were several.
            var rounds: [String: [Double]]?
            var ratio: Double?
            var failures: [String: String]

            enum CodingKeys: String, CodingKey {
                case id, label, unit
                case higherIsBetter = "higher_is_better"
                case values, rounds, ratio, failures
            }
        }
        var servers: [String]
        var natsServerVersion: String?
        var natsServerSkipped: String?
        var coreMessages: Int
        var durableMessages: Int
        var roundTrips: Int
        var window: Int
        var pullBatch: Int
        var ackPolicy: String
        var repeats: Int
        var failed: Bool
        var figures: [Row]

        enum CodingKeys: String, CodingKey {
            case servers
            case natsServerVersion = "nats_server_version"
            case natsServerSkipped = "nats_server_skipped"
            case coreMessages = "core_messages"
            case durableMessages = "durable_messages"
            case roundTrips = "round_trips"
            case window
            case pullBatch = "pull_batch"
            case ackPolicy = "ack_policy"
            case repeats, failed, figures
        }
    }

    func json() throws -> String {
        let rows = self.figures().map { figure, key -> JSONReport.Row in
            var values: [String: Double] = [:]
            var failures: [String: String] = [:]
            for server in self.servers {
                guard let outcome = self.outcome(figure.scenario, server) else { continue }
                if let failure = outcome.failure {
                    failures[server.rawValue] = failure.description
                } else if let value = outcome.figures[key] {
                    values[server.rawValue] = value
                }
            }
            var ratio: Double?
            if let stork = values["stork"], let nats = values["nats-server"], nats > 0 { ratio = stork / nats }
            var rounds: [String: [Double]]?
            if self.settings.repeats > 1 {
                rounds = Dictionary(
                    uniqueKeysWithValues: self.servers.map {
                        ($0.rawValue, self.values(figure.scenario, $0, key: key))
                    }
                )
            }
            return JSONReport.Row(
                id: figure.id,
                label: figure.label,
                unit: figure.unit,
                higherIsBetter: figure.higherIsBetter,
                values: values,
                rounds: rounds,
                ratio: ratio,
                failures: failures
            )
        }
        let report = JSONReport(
            servers: self.servers.map(\.rawValue),
            natsServerVersion: self.natsServerVersion,
            natsServerSkipped: self.natsServerSkipped,
            coreMessages: self.settings.coreMessages,
            durableMessages: self.settings.durableMessages,
            roundTrips: self.settings.roundTrips,
            window: self.settings.window,
            pullBatch: self.settings.pullBatch,
            ackPolicy: self.settings.ackExplicit ? "explicit" : "none",
            repeats: self.settings.repeats,
            failed: self.failed,
            figures: rows
        )
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(report), as: UTF8.self)
    }
}

// MARK: - Formatting

enum NATSBenchFormat {
    /// `1,000,000` → `1M`, `200,000` → `200k`, `20,000` → `20k`, others as they are.
    static func count(_ value: Int) -> String {
        if value >= 1_000_000, value % 1_000_000 == 0 { return "\(value / 1_000_000)M" }
        if value >= 1000, value % 1000 == 0 { return "\(value / 1000)k" }
        return "\(value)"
    }

    /// A figure in its unit: rates in k or M, MB/s and µs with one decimal.
    static func value(_ value: Double, unit: String) -> String {
        if unit.contains("msgs") {
            if value >= 1e6 { return Self.fixed(value / 1e6, digits: 2) + " M" }
            return Self.fixed(value / 1e3, digits: 1) + " k"
        }
        return Self.fixed(value, digits: 1)
    }

    static func fixed(_ value: Double, digits: Int) -> String {
        String(format: "%.\(digits)f", value)
    }
}
