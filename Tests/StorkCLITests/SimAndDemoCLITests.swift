import Foundation
import Testing

/// `stork sim`, `stork bench detection` and `stork demo`, run as real processes.
@Suite("stork sim / demo (CLI)")
struct SimAndDemoCLITests {
    @Test("stork sim runs seeds, prints the summary, exits 0 without violations")
    func simSummary() throws {
        let run = try StorkBinary.run([
            "sim", "--seeds", "4", "--nodes", "4", "--faults", "crash,loss", "--fault-window", "5",
        ])
        #expect(run.status == 0, "\(run.standardError)")
        #expect(run.standardOutput.contains("stork sim: 4 seeds, 4 nodes"))
        #expect(run.standardOutput.contains("violations:             0"))
        #expect(run.standardOutput.contains("convergence after heal: p50"))
    }

    @Test("a seed replays identically in another process (same trace fingerprint)")
    func replayAcrossProcesses() throws {
        let arguments = [
            "sim", "--seed", "31", "--nodes", "5", "--faults", "crash,pause,partition,loss", "--fault-window", "8",
        ]
        let first = try StorkBinary.run(arguments)
        let second = try StorkBinary.run(arguments)
        #expect(first.status == 0, "\(first.standardOutput)")
        let fingerprint = first.lines.first { $0.contains("trace fingerprint") }
        #expect(fingerprint != nil)
        #expect(fingerprint == second.lines.first { $0.contains("trace fingerprint") })
        #expect(first.standardOutput.contains("replay: stork sim --seed 31"))
    }

    @Test("bad sim arguments are rejected with a clear message")
    func simRejectsBadArguments() throws {
        let run = try StorkBinary.run(["sim", "--faults", "crash,meteor"])
        #expect(run.status != 0)
        #expect(run.standardError.contains("unknown fault 'meteor'"))
    }

    @Test("stork bench detection prints a table for the sizes asked")
    func detectionBench() throws {
        let run = try StorkBinary.run(["bench", "detection", "--nodes", "5", "--seeds", "2", "--observe", "5"])
        #expect(run.status == 0, "\(run.standardError)")
        #expect(run.lines.contains { $0.hasPrefix("| 5 |") })
    }

    @Test("stork bench failover kills real nodes, times detection and failover, and finds no overlap")
    func failoverBench() throws {
        let base = String(testBasePort())
        let run = try StorkBinary.run([
            "bench", "failover", "--nodes", "3", "--resources", "60", "--kills", "2", "--burn", "2", "--base-port", base,
        ])
        #expect(run.status == 0, "\(run.standardOutput)\n\(run.standardError)")
        #expect(run.lines.filter { $0.hasPrefix("round ") && $0.contains("all running elsewhere") }.count == 2)
        #expect(run.lines.contains { $0.hasPrefix("| Stork: kill -9 → all its resources handled elsewhere |") })
        #expect(run.standardOutput.contains("Overlaps recorded by the sidecar: 0."))
        #expect(run.standardOutput.contains("no live node declared dead"))
    }

    @Test("stork demo --in-process tells the story and exits 0: no account on two nodes, every request answered")
    func inProcessDemo() throws {
        let run = try StorkBinary.run(["demo", "--in-process"])
        #expect(run.status == 0, "\(run.standardOutput)\n\(run.standardError)")
        #expect(run.standardOutput.contains("Every account runs on exactly one node"))
        #expect(run.standardOutput.contains("node-c leaves gracefully"))
        #expect(run.standardOutput.contains("node-a crashes"))
        #expect(run.standardOutput.contains("0 overlaps"))
    }

    @Test("stork demo plays the match through real processes: a node killed, one added, no shot lost, exit 0")
    func liveDemo() throws {
        let base = String(testBasePort())
        let run = try StorkBinary.run(["demo", "--duration", "45", "--base-port", base])
        #expect(run.status == 0, "\(run.standardOutput)\n\(run.standardError)")
        #expect(run.standardOutput.contains("Every player runs on exactly one node and is connected to the feed"))
        #expect(run.standardOutput.contains("Kick-off."))
        #expect(run.standardOutput.contains("kill -9 n1"))
        #expect(run.standardOutput.contains("players of n1 run again elsewhere"))
        #expect(run.standardOutput.contains("starting n4"))
        #expect(run.standardOutput.contains("moved: "))
        #expect(run.standardOutput.contains("shots scripted:               36"))
        #expect(run.standardOutput.contains("shots received (unique):      36"))
        #expect(run.standardOutput.contains("lost:                         0"))
        #expect(run.standardOutput.contains("✓ no shot lost while players moved between nodes"))
    }
}
