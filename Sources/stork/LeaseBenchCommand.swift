import ArgumentParser
import Foundation
import Logging
import Stork
import StorkLeases
import StorkServer

// MARK: - stork bench leases

/// `stork bench leases`: what lease mode costs the ownership store, and how long a takeover takes after the owner
/// is frozen, on SQLite and (with --postgres) PostgreSQL.
struct LeaseBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "leases",
        abstract: "Lease renewal cost and takeover time after a pause, on SQLite and PostgreSQL.",
        discussion: """
            Renewal: one holder acquires N leases, then renews them all --renewals times; each renewal is one store \
            operation (statements of up to 10,000 ids), timed. Queries per second per node = statements per \
            renewal / renew interval (2 s by default). Takeover: --nodes `stork serve` processes in lease mode with \
            default lease settings, --resources resources and a recording sidecar; --pauses times, SIGSTOP the \
            node that runs the most, time until every one of its resources is handled elsewhere with a newer \
            fencing token, SIGCONT, wait until all nodes run again.
            """
    )

    @Option(help: "PostgreSQL URL (e.g. postgres://stork:stork@127.0.0.1:55432/stork_test); without it only SQLite.")
    var postgres: String?
    @Option(help: "Comma-separated lease counts for the renewal measurement.")
    var sizes = "10000,100000"
    @Option(help: "Renewals timed per size.")
    var renewals = 5
    @Option(help: "SIGSTOP rounds per store (0: skip the takeover measurement).")
    var pauses = 3
    @Option(help: "Nodes for the takeover measurement.")
    var nodes = 3
    @Option(help: "Resources for the takeover measurement.")
    var resources = 300
    @Option(help: "First port of the local cluster.")
    var basePort = 29_000

    func run() async throws {
        let sizes = self.sizes.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !sizes.isEmpty, sizes.allSatisfy({ $0 > 0 }) else { throw ValidationError("--sizes must list positive counts") }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("stork-bench-leases-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        var stores = [("SQLite", "sqlite:\(directory.path)/leases.db")]
        if let postgres = self.postgres { stores.append(("PostgreSQL", postgres)) }
        let renewInterval = LeaseSettings().renewInterval

        print("## Lease renewal cost (one node, renew interval \(renewInterval))")
        print("")
        print("| store | leases | statements per renewal | renewal p50 | renewal max | queries/s per node |")
        print("|---|---:|---:|---:|---:|---:|")
        for (name, url) in stores {
            for size in sizes {
                let row = try await self.renewalCost(url: url, size: size)
                let statements = Self.statementsPerRenewal(store: name, leases: size)
                print(
                    "| \(name) | \(size) | \(statements) | \(Self.ms(row.p50)) | \(Self.ms(row.max)) | "
                        + String(format: "%.1f", Double(statements) / renewInterval.secondsDouble) + " |"
                )
                fflush(nil)
            }
        }
        guard self.pauses > 0 else { return }
        print("")
        print("## Takeover after SIGSTOP (\(self.nodes) nodes, \(self.resources) resources, default lease settings)")
        print("")
        print("| store | rounds | SIGSTOP → all its resources handled elsewhere p50 | max | stale owner fenced itself |")
        print("|---|---:|---:|---:|---|")
        for (offset, (name, url)) in stores.enumerated() {
            let times = try await self.takeover(url: url, directory: directory, basePort: self.basePort + offset * 300)
            let sorted = times.map(\.seconds).sorted()
            print(
                "| \(name) | \(sorted.count) | " + String(format: "%.2f s | %.2f s", sorted[sorted.count / 2], sorted.last ?? 0)
                    + " | \(times.allSatisfy(\.fenced) ? "every round" : "NOT ALWAYS") |"
            )
            fflush(nil)
        }
    }

    static func statementsPerRenewal(store: String, leases: Int) -> Int {
        let chunks = (leases + 9_999) / 10_000
        // SQLite adds BEGIN IMMEDIATE, the clock read and COMMIT to each operation.
        return store == "SQLite" ? chunks + 3 : chunks
    }

    static func ms(_ duration: Duration) -> String { String(format: "%.0f ms", duration.secondsDouble * 1000) }

    func renewalCost(url: String, size: Int) async throws -> (p50: Duration, max: Duration) {
        var logger = Logger(label: "stork.bench")
        logger.logLevel = .error
        let store = try OwnershipStores.make(url: url, cluster: "bench-\(getpid())-\(size)", logger: logger)
        try await store.prepare()
        let ids = (0..<size).map { ResourceID("lease-\($0)") }
        let holder = "bench/\(getpid())"
        let granted = try await store.acquire(ids, holder: holder, duration: .seconds(60)).granted
        guard granted.count == size else { throw ValidationError("only \(granted.count) of \(size) leases granted") }
        var times: [Duration] = []
        let clock = ContinuousClock()
        for _ in 0..<self.renewals {
            let started = clock.now
            let result = try await store.renew(granted, holder: holder, duration: .seconds(60))
            times.append(clock.now - started)
            guard result.lost.isEmpty else { throw ValidationError("\(result.lost.count) leases lost while renewing") }
        }
        try await store.release(granted, holder: holder)
        await store.close()
        times.sort()
        return (times[times.count / 2], times.last ?? .zero)
    }

    func takeover(url: String, directory: URL, basePort: Int) async throws -> [(seconds: Double, fenced: Bool)] {
        let list = ResourceListServer(ids: (0..<self.resources).map { "r\($0)" })
        let sidecar = RecordingSidecar()
        var results: [(Double, Bool)] = []
        try await LocalCluster.run(
            directory: directory,
            executable: StorkExecutable.url,
            basePort: basePort,
            list: list,
            sidecar: sidecar
        ) { cluster in
            cluster.clusterName = "bench-\(getpid())-\(basePort)"
            cluster.ownership = "mode: lease, store: '\(url)'"
            let all = Array(1...self.nodes)
            for index in all { try cluster.start(index, seeds: all) }
            _ = try await Self.wait(.seconds(120)) {
                sidecar.running.count == self.resources && Set(sidecar.running.values).count == self.nodes
            }
            for round in 1...self.pauses {
                let counts = Dictionary(grouping: sidecar.running.values, by: { $0 }).mapValues(\.count)
                guard let victim = counts.max(by: { $0.value < $1.value })?.key else { break }
                let frozen = sidecar.running.filter { $0.value == victim }
                let before = sidecar.state.withLock { state in frozen.keys.reduce(into: [String: UInt64]()) { $0[$1] = state.highestToken[$1] } }
                let staleBefore = sidecar.state.withLock { $0.staleTerminations[victim]?.count ?? 0 }
                let stopped = ContinuousClock.now
                cluster.nodes[victim]?.kill(signal: SIGSTOP)
                let moved = try await Self.wait(.seconds(120)) {
                    sidecar.state.withLock { state in
                        frozen.keys.allSatisfy { id in
                            state.running[id].map { $0 != victim } == true && (state.highestToken[id] ?? 0) > (before[id] ?? 0)
                        }
                    }
                }
                let elapsed = (ContinuousClock.now - stopped).secondsDouble
                cluster.nodes[victim]?.kill(signal: SIGCONT)
                let fenced = try await Self.wait(.seconds(60)) {
                    sidecar.state.withLock { state in
                        Set((state.staleTerminations[victim] ?? []).dropFirst(staleBefore).map(\.id)).isSuperset(of: frozen.keys)
                    }
                }
                print("round \(round): SIGSTOP \(victim) (\(frozen.count) resources): all handled elsewhere after " + String(format: "%.2f s", elapsed))
                fflush(nil)
                guard moved else { throw ValidationError("round \(round): the frozen node's resources were not taken over") }
                results.append((elapsed, fenced))
                _ = try await Self.wait(.seconds(120)) {
                    sidecar.running.count == self.resources && Set(sidecar.running.values).count == self.nodes
                }
            }
            await cluster.stopAll()
        }
        return results
    }

    static func wait(_ timeout: Duration, _ condition: () -> Bool) async throws -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if condition() { return true }
            try await Task.sleep(for: .milliseconds(20))
        }
        return condition()
    }
}
