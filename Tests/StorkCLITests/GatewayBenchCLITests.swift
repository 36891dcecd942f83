import Testing

/// `stork bench gateway`, run as a real process against its `stork serve` child with a handful of subscribers. It
/// checks that every message reached every subscriber and that the report has its figures, never how fast.
@Suite("stork bench gateway (CLI)")
struct GatewayBenchCLITests {
    @Test("a small run delivers every message to every subscriber and reports it")
    func smallRun() throws {
        let run = try StorkBinary.run([
            "bench", "gateway", "--connections", "20", "--messages", "10", "--latency-messages", "3", "--timeout", "60",
        ])
        #expect(run.status == 0, "\(run.standardOutput)\n\(run.standardError)")
        #expect(run.lines.contains("| burst of 10 msgs: deliveries | 200 of 200 |"), "\(run.standardOutput)")
        #expect(
            run.lines.contains("| all deliveries (every message to every subscriber, once, in order) | 260 of 260 |"),
            "\(run.standardOutput)"
        )
        for row in [
            "| server memory per idle connection |",
            "| one at a time (3 msgs): publish → last subscriber p50 / p99 / max |",
            "| burst: **deliveries/s** |",
        ] {
            #expect(run.lines.contains { $0.hasPrefix(row) }, "no line starting with \(row) in:\n\(run.standardOutput)")
        }
    }

    @Test("bad options are refused before any server starts")
    func badOptions() throws {
        let run = try StorkBinary.run(["bench", "gateway", "--payload-bytes", "1"])
        #expect(run.status != 0)
        #expect(run.standardError.contains("--payload-bytes must be 2 to 1000000"))
    }
}
