import AsyncHTTPClient
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Synchronization
import StorkServer
import Testing

/// A first port for a local cluster (it uses up to 200 ports above it), below Linux's ephemeral range (32768 and
/// up), so that no outgoing connection of this or another test can hold one of its ports.
func testBasePort() -> Int { 10_000 + Int.random(in: 0..<200) * 100 }

func waitFor(_ what: String, timeout: Duration, _ condition: () -> Bool) async throws {
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    while clock.now < deadline {
        if condition() { return }
        try await Task.sleep(for: .milliseconds(100))
    }
    Issue.record("timed out after \(timeout): \(what)")
    throw CancellationError()
}

/// Where placement puts every resource in the view of the node whose admin API is at `admin` (id → node name), or
/// nil when it does not answer.
func placementOwners(admin: String) async -> [String: String]? {
    guard let response = try? await HTTPClient.shared.execute(
        HTTPClientRequest(url: "http://\(admin)/v1/resources?scope=cluster"),
        timeout: .seconds(30)
    ),
        response.status == .ok,
        let body = try? await response.body.collect(upTo: 64 << 20),
        let document = try? JSONSerialization.jsonObject(with: Data(buffer: body)) as? [String: Any],
        let items = document["resources"] as? [[String: Any]]
    else { return nil }
    var owners: [String: String] = [:]
    for item in items {
        guard let id = item["id"] as? String, let owner = item["owner"] as? String else { return nil }
        owners[id] = owner
    }
    return owners
}

// MARK: - The scenario

@Suite("A cluster of real stork processes on loopback", .serialized, .timeLimit(.minutes(10)))
struct ProcessClusterTests {
    static let resources = 10_000

    @Test("5 nodes, 10,000 resources from an HTTP source: add a node, kill -9 one, SIGTERM one, delete at the source")
    func failover() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("stork-cluster-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
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
            cluster.membership = "probeTimeout: 300ms, indirectProbeTimeout: 600ms, suspicionMinimum: 2s"

            // 1. Five nodes share the 10,000 resources, each on exactly one node.
            for index in 1...5 { try cluster.start(index) }
            try await waitFor("10,000 resources running on 5 nodes", timeout: .seconds(120)) {
                let running = sidecar.running
                return running.count == Self.resources && Set(running.values).count == 5
            }
            #expect(sidecar.state.withLock { $0.overlaps }.isEmpty)

            // 2. A sixth node joins: about 1/6 of the resources move to it, released first by their old owners.
            let before = sidecar.running
            try cluster.start(6)
            // A forward through an old node while the membership changes is retried until it succeeds.
            var request = HTTPClientRequest(url: "http://\(cluster.adminAddress(1))/v1/resources")
            request.method = .POST
            request.body = .bytes(ByteBuffer(string: #"{"id":"during-join","owner":"test"}"#))
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(60))
            #expect(response.status == .ok)
            try await waitFor("the sixth node runs its share", timeout: .seconds(120)) {
                let running = sidecar.running
                return running.count == Self.resources + 1 && Set(running.values).count == 6
            }
            // Measure once the rebalance is over rather than after a fixed pause: every resource runs on the node
            // that placement gives it in the six-node view (moves still under way would be counted short).
            let clock = ContinuousClock()
            let deadline = clock.now + .seconds(120)
            var settled = false
            while !settled, clock.now < deadline {
                if let owners = await placementOwners(admin: cluster.adminAddress(1)), Set(owners.values).count == 6 {
                    let running = sidecar.running
                    settled = owners.count == running.count && owners.allSatisfy { running[$0.key] == $0.value }
                }
                if !settled { try await Task.sleep(for: .milliseconds(500)) }
            }
            #expect(settled, "every resource runs where placement in the six-node view puts it")
            let after = sidecar.running
            let moved = before.filter { after[$0.key] != $0.value }.count
            let fraction = Double(moved) / Double(Self.resources)
            #expect(fraction > 0.12 && fraction < 0.22, "moved \(moved) of \(Self.resources) (ideal 1/6)")
            #expect(sidecar.state.withLock { $0.overlaps }.isEmpty, "\(sidecar.state.withLock { $0.overlaps.prefix(3) })")

            // 3. kill -9 a node: each of its resources is handled again by exactly one other node.
            let victim = "n3"
            let orphaned = Set(sidecar.running.filter { $0.value == victim }.keys)
            #expect(!orphaned.isEmpty)
            cluster.nodes[victim]!.kill(signal: SIGKILL)
            sidecar.killed(victim)
            try await waitFor("n3's resources taken over", timeout: .seconds(60)) {
                let running = sidecar.running
                return orphaned.allSatisfy { running[$0] != nil } && running.count == Self.resources + 1
            }
            let taken = sidecar.running
            #expect(Set(orphaned.compactMap { taken[$0] }).isSubset(of: ["n1", "n2", "n4", "n5", "n6"]))

            // 4. SIGTERM a node: it hands everything off, terminate before handle, and exits.
            let leaving = "n5"
            let handedOff = Set(sidecar.running.filter { $0.value == leaving }.keys)
            cluster.nodes[leaving]!.kill(signal: SIGTERM)
            let exited = await cluster.nodes[leaving]!.waitForExit(timeout: .seconds(60))
            #expect(exited, "n5 exits after handing off")
            try await waitFor("n5's resources moved", timeout: .seconds(60)) {
                let running = sidecar.running
                return handedOff.allSatisfy { running[$0] != nil && running[$0] != leaving }
            }
            let reasons = sidecar.state.withLock { state in handedOff.compactMap { state.terminations[$0]?.last } }
            #expect(reasons.allSatisfy { $0 == "n5:leaving" })
            #expect(sidecar.state.withLock { $0.overlaps }.isEmpty, "\(sidecar.state.withLock { $0.overlaps.prefix(3) })")

            // 5. A resource deleted at the source is terminated.
            let deleted = "res-42"
            list.remove(deleted)
            try await waitFor("res-42 terminated", timeout: .seconds(30)) { sidecar.running[deleted] == nil }
            #expect(sidecar.state.withLock { $0.terminations[deleted]?.last?.hasSuffix(":removed") } == true)

            // Every resource still runs on exactly one node.
            let final = sidecar.running
            #expect(final.count == Self.resources)
            #expect(Set(final.values).isSubset(of: ["n1", "n2", "n4", "n6"]))

            for name in ["n1", "n2", "n4", "n6"] { cluster.nodes[name]!.kill(signal: SIGTERM) }
            for name in ["n1", "n2", "n4", "n6"] { _ = await cluster.nodes[name]!.waitForExit(timeout: .seconds(60)) }
        }
        try? FileManager.default.removeItem(at: directory)
    }
}
