import Foundation
import Hummingbird
import StorkServer
import Testing

/// Lease mode with real processes and a real PostgreSQL: owners are frozen with SIGSTOP for longer than their
/// leases, others take over with newer fencing tokens, and the resumed owner fences itself.
@Suite(
    "Lease mode: 3 real processes on PostgreSQL, SIGSTOP chaos",
    .serialized,
    .timeLimit(.minutes(10)),
    .enabled(if: ProcessInfo.processInfo.environment["STORK_TEST_POSTGRES_URL"] != nil)
)
struct LeaseChaosTests {
    static let resources = 2_000
    static let rounds = 10

    @Test("10 rounds of SIGSTOP past the lease: every resource handled, tokens only grow, stale owners fence themselves")
    func sigstopChaos() async throws {
        let postgres = ProcessInfo.processInfo.environment["STORK_TEST_POSTGRES_URL"] ?? ""
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("stork-lease-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { if ProcessInfo.processInfo.environment["STORK_KEEP_TEST_FILES"] == nil { try? FileManager.default.removeItem(at: directory) } }
        let list = ResourceListServer(ids: (0..<Self.resources).map { "res-\($0)" })
        let sidecar = RecordingSidecar()
        let base = testBasePort()
        try await LocalCluster.run(
            directory: directory,
            executable: try StorkBinary.url,
            basePort: base,
            list: list,
            sidecar: sidecar
        ) { cluster in
            // A cluster name of its own: its rows in the shared database are new.
            cluster.clusterName = "chaos-\(UUID().uuidString.prefix(8))"
            cluster.ownership =
                "mode: lease, store: '\(postgres)', leaseDuration: 3s, renewInterval: 500ms, renewDeadline: 2s, "
                + "acquireRetryInterval: 250ms, storeTimeout: 1s"

            for index in 1...3 { try cluster.start(index, seeds: [1, 2, 3]) }
            try await waitFor("2,000 resources running on 3 nodes", timeout: .seconds(120)) {
                let running = sidecar.running
                return running.count == Self.resources && Set(running.values).count == 3
            }

            for round in 1...Self.rounds {
                let victim = "n\((round - 1) % 3 + 1)"
                let frozen = sidecar.running.filter { $0.value == victim }
                let tokensBefore = sidecar.state.withLock { state in
                    frozen.keys.reduce(into: [String: UInt64]()) { $0[$1] = state.highestToken[$1] }
                }
                #expect(!frozen.isEmpty, "round \(round): \(victim) ran nothing")
                let staleBefore = sidecar.state.withLock { $0.staleTerminations[victim]?.count ?? 0 }
                let stoppedAt = ContinuousClock.now
                cluster.nodes[victim]?.kill(signal: SIGSTOP)

                // Others take every frozen resource over, each with a newer token, once the leases expire.
                try await waitFor("round \(round): \(victim)'s \(frozen.count) resources taken over", timeout: .seconds(60)) {
                    sidecar.state.withLock { state in
                        frozen.keys.allSatisfy { id in
                            guard let holder = state.running[id], holder != victim else { return false }
                            return (state.highestToken[id] ?? 0) > (tokensBefore[id] ?? 0)
                        }
                    }
                }
                let takeover = ContinuousClock.now - stoppedAt
                #expect(takeover >= .seconds(2), "round \(round): taken over after \(takeover), before the lease could expire")
                // Stay stopped for longer than the lease, then resume.
                let frozenFor = ContinuousClock.now - stoppedAt
                if frozenFor < .seconds(4) { try await Task.sleep(for: .seconds(4) - frozenFor) }
                cluster.nodes[victim]?.kill(signal: SIGCONT)

                // The resumed node stops its stale resources by itself (old tokens, reason leaseLost) ...
                try await waitFor("round \(round): \(victim) fenced its \(frozen.count) stale resources", timeout: .seconds(30)) {
                    sidecar.state.withLock { state in
                        let stale = state.staleTerminations[victim]?.dropFirst(staleBefore) ?? []
                        return Set(stale.map(\.id)).isSuperset(of: frozen.keys)
                    }
                }
                let reasons = sidecar.state.withLock { Set(($0.staleTerminations[victim] ?? []).dropFirst(staleBefore).map(\.reason)) }
                #expect(reasons == ["leaseLost"], "round \(round): \(reasons)")
                // ... and rejoins: the cluster returns to 3 nodes running everything.
                try await waitFor("round \(round): 3 nodes run all 2,000 again", timeout: .seconds(60)) {
                    let running = sidecar.running
                    return running.count == Self.resources && Set(running.values).count == 3
                }
            }

            // Per resource, accepted tokens never went down, and a change of node always came with a newer token.
            let state = sidecar.state.withLock { $0 }
            #expect(state.acceptedHandles.count == Self.resources, "every resource was handled")
            var regressions: [String] = []
            for (id, handles) in state.acceptedHandles {
                for (previous, next) in zip(handles, handles.dropFirst()) {
                    if next.token < previous.token || (next.node != previous.node && next.token == previous.token) {
                        regressions.append("\(id): \(previous.node)#\(previous.token) then \(next.node)#\(next.token)")
                    }
                }
            }
            #expect(regressions.isEmpty, "\(regressions.prefix(5))")
            print(
                "lease chaos: \(Self.rounds) rounds, \(state.handles) handles accepted, \(state.staleHandles.count) stale "
                    + "handles refused, \(state.staleTerminations.values.map(\.count).reduce(0, +)) stale terminations"
            )
            await cluster.stopAll()
        }
    }
}
