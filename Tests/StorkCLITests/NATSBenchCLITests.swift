import Foundation
import Testing

/// `stork bench nats`, run as a real process against a `stork serve` child (nats-server is left out so that the test
/// needs nothing beyond the build). It checks that every scenario runs to the end and is reported, never how fast.
@Suite("stork bench nats (CLI)")
struct NATSBenchCLITests {
    @Test("a small run against Stork alone exits 0 and prints a line for every scenario")
    func smallStorkRun() throws {
        let run = try StorkBinary.run(["bench", "nats", "--only", "stork", "--messages", "20000"])
        #expect(run.status == 0, "\(run.standardOutput)\n\(run.standardError)")
        let rows = [
            "| publish only, 16 B, 20k msgs | msgs/s |",
            "| publish only, 16 B, 20k msgs | MB/s |",
            "| publish only, 1 KiB, 20k msgs | msgs/s |",
            "| publish only, 1 KiB, 20k msgs | MB/s |",
            "| 1 pub → 1 sub, 16 B, 20k msgs | msgs/s at sub |",
            "| request/reply, 20k round trips | p50 µs |",
            "| request/reply, 20k round trips | p99 µs |",
            "| JetStream publish, file, 16 B, 20k msgs, 1000 in flight | acked msgs/s |",
            "| JetStream pull consumer, explicit ack, batch 1000, 20k msgs | msgs/s |",
        ]
        for row in rows {
            let line = run.lines.first { $0.hasPrefix(row) }
            #expect(line != nil, "no line starting with \(row) in:\n\(run.standardOutput)")
            #expect(line.map { !$0.contains("FAILED") } ?? false, "\(line ?? "")")
        }
        #expect(run.standardOutput.contains("| scenario | unit | Stork |"))
        #expect(!run.standardOutput.contains("nats-server |"), "only Stork was asked for")
    }

    @Test("--json prints one document with every figure and no failure")
    func jsonOutput() throws {
        let run = try StorkBinary.run([
            "bench", "nats", "--only", "stork", "--messages", "2000", "--round-trips", "500", "--json",
        ])
        #expect(run.status == 0, "\(run.standardOutput)\n\(run.standardError)")
        let object = try JSONSerialization.jsonObject(with: Data(run.standardOutput.utf8)) as? [String: Any]
        #expect(object?["failed"] as? Bool == false)
        let figures = object?["figures"] as? [[String: Any]] ?? []
        #expect(figures.count == 9)
        for figure in figures {
            let values = figure["values"] as? [String: Double] ?? [:]
            #expect(values["stork"].map { $0 > 0 } ?? false, "\(figure)")
        }
    }

    @Test("bad options are refused before any server starts")
    func badOptions() throws {
        let run = try StorkBinary.run(["bench", "nats", "--only", "rabbitmq"])
        #expect(run.status != 0)
        #expect(run.standardError.contains("--only must be stork or nats-server"))
    }
}
