import AsyncHTTPClient
import Foundation
import Hummingbird
import NIOCore
import StorkServer
import Testing

/// Sends `POST /v1/resources` for `id`; returns the HTTP status and the owner the answer names, or nil when the
/// request failed (the node died before answering).
private func allocate(_ id: String, admin: String) async -> (status: Int, owner: String?)? {
    var request = HTTPClientRequest(url: "http://\(admin)/v1/resources")
    request.method = .POST
    request.body = .bytes(ByteBuffer(string: #"{"id":"\#(id)"}"#))
    // A request caught by the kill fails at once, but AsyncHTTPClient can leave one queued for a connection to the
    // dead node until its timeout: keep that short.
    guard let response = try? await HTTPClient.shared.execute(request, timeout: .seconds(10)),
        let body = try? await response.body.collect(upTo: 1 << 20)
    else { return nil }
    let document = (try? JSONSerialization.jsonObject(with: Data(buffer: body))) as? [String: Any]
    return (Int(response.status.code), document?["node"] as? String)
}

/// The names in the view of the node at `admin`, or nil when it does not answer.
private func view(admin: String) async -> [String]? {
    guard
        let response = try? await HTTPClient.shared.execute(
            HTTPClientRequest(url: "http://\(admin)/v1/cluster"),
            timeout: .seconds(10)
        ),
        response.status == .ok,
        let body = try? await response.body.collect(upTo: 1 << 20),
        let document = (try? JSONSerialization.jsonObject(with: Data(buffer: body))) as? [String: Any],
        document["ready"] as? Bool == true
    else { return nil }
    return document["view"] as? [String]
}

@Suite("Acknowledged changes survive the node that answered", .serialized, .timeLimit(.minutes(10)))
struct AcknowledgedChangeTests {
    static let rounds = 6
    static let allocationsPerRound = 12

    @Test(
        "allocate through a node, kill -9 it the moment an answer arrives: every acknowledged resource stays desired and runs on a live node"
    )
    func killTheAnsweringNode() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("stork-ack-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        // A failed run keeps its nodes' logs (the path is in the failure message).
        var failed = false
        defer { if !failed { try? FileManager.default.removeItem(at: directory) } }
        let sidecar = RecordingSidecar()
        try await LocalCluster.run(
            directory: directory,
            executable: try StorkBinary.url,
            basePort: testBasePort(),
            list: ResourceListServer(ids: []),
            sidecar: sidecar,
            configure: { $0.membership = "probeTimeout: 300ms, indirectProbeTimeout: 600ms, suspicionMinimum: 2s" }
        ) { cluster in

            var live = [1, 2, 3]
            for index in live { try cluster.start(index, seeds: [1, 2, 3]) }
            var nextIndex = 4
            // id → the owner named in its acknowledgment, and the node that answered.
            var acknowledged: [String: (owner: String, answeredBy: String)] = [:]

            for round in 1...Self.rounds {
                let names = Set(live.map { "n\($0)" })
                let target = live[0]
                let admin = cluster.adminAddress(target)
                // Every live node sees exactly the live nodes, so that placement spreads the ids over all three.
                let clock = ContinuousClock()
                let deadline = clock.now + .seconds(90)
                var agreed = false
                while !agreed, clock.now < deadline {
                    var views: [Set<String>] = []
                    for index in live {
                        if let names = await view(admin: cluster.adminAddress(index)) { views.append(Set(names)) }
                    }
                    agreed = views.count == live.count && views.allSatisfy { $0 == names }
                    if !agreed { try await Task.sleep(for: .milliseconds(200)) }
                }
                try #require(agreed, "round \(round): the live nodes \(names.sorted()) agree on their view")

                // Allocations in parallel through the target; kill -9 it as soon as the first answer arrives.
                let answers = await withTaskGroup(of: (String, (status: Int, owner: String?)?).self) { requests in
                    for i in 0..<Self.allocationsPerRound {
                        let id = "ack-\(round)-\(i)"
                        requests.addTask { (id, await allocate(id, admin: admin)) }
                    }
                    var answers: [(String, (status: Int, owner: String?)?)] = []
                    var killed = false
                    for await answer in requests {
                        if !killed, let result = answer.1, result.status == 200 {
                            cluster.nodes["n\(target)"]!.kill(signal: SIGKILL)
                            sidecar.killed("n\(target)")
                            killed = true
                        }
                        answers.append(answer)
                    }
                    if !killed {
                        cluster.nodes["n\(target)"]!.kill(signal: SIGKILL)
                        sidecar.killed("n\(target)")
                    }
                    return answers
                }
                for (id, result) in answers {
                    guard let result, result.status == 200 || result.status == 202 else { continue }
                    acknowledged[id] = (result.owner ?? "?", "n\(target)")
                }

                // A new node replaces the dead one.
                live.removeFirst()
                try cluster.start(nextIndex, seeds: live)
                live.append(nextIndex)
                nextIndex += 1
            }

            #expect(acknowledged.count >= Self.rounds, "at least one acknowledged allocation per round")
            #expect(
                acknowledged.values.contains { $0.owner == $0.answeredBy },
                "some acknowledged resources were owned by the node that answered and died"
            )
            #expect(acknowledged.values.contains { $0.owner != $0.answeredBy }, "some were owned elsewhere")

            // Every acknowledged resource is still desired and runs on a live node, exactly once.
            let liveNames = Set(live.map { "n\($0)" })
            let clock = ContinuousClock()
            let deadline = clock.now + .seconds(120)
            var missing: [String] = Array(acknowledged.keys)
            while !missing.isEmpty, clock.now < deadline {
                let running = sidecar.running
                let owners = await placementOwners(admin: cluster.adminAddress(live[0])) ?? [:]
                missing = acknowledged.keys.filter { id in
                    guard let node = running[id], liveNames.contains(node) else { return true }
                    return owners[id] == nil
                }.sorted()
                if !missing.isEmpty { try await Task.sleep(for: .milliseconds(250)) }
            }
            let overlaps = sidecar.state.withLock { $0.overlaps }
            failed = !missing.isEmpty || !overlaps.isEmpty
            #expect(
                missing.isEmpty,
                "acknowledged but lost or not running on a live node: \(missing.prefix(10)); logs in \(directory.path)"
            )
            #expect(overlaps.isEmpty, "\(overlaps.prefix(3)); logs in \(directory.path)")

            await cluster.stopAll()
        }
    }
}
