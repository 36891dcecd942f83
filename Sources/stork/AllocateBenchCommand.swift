import ArgumentParser
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import StorkCore
import StorkResources
import StorkServer

// MARK: - stork bench allocate

/// `stork bench allocate`: the latency of `POST /v1/resources` and `DELETE /v1/resources/{id}` on a real local
/// cluster, for each `resources.replicas` setting, split by whether the node that took the call owns the resource.
struct AllocateBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "allocate",
        abstract: "Latency of allocate and deallocate through the admin API, per resources.replicas setting.",
        discussion: """
            For each value of --replicas, starts --nodes `stork serve` processes (this binary) on loopback with a \
            recording sidecar in this process that answers at once, waits until they agree on their view, then \
            sends --requests allocations one after the other through node 1 and deallocates them again, timing \
            each call from request to answer. Rows are split by owner: node 1 itself (the answer waits for a peer \
            to confirm it holds the change, unless replicas is 1) or another node (the owner's answer makes it a \
            holder). `--replicas 1` is the behaviour before acknowledged changes were replicated. Build in release \
            for meaningful numbers: swift build -c release.
            """
    )

    @Option(help: "Nodes in the cluster.") var nodes: Int = 3
    @Option(help: "Allocations (and deallocations) per setting.") var requests: Int = 400
    @Option(help: "Comma-separated resources.replicas settings, each measured on a fresh cluster.")
    var replicas: String = "1,2"
    @Option(help: "First port (cluster base+1…, admin base+101…).") var basePort: Int = 28_500

    func validate() throws {
        guard (2...9).contains(self.nodes) else { throw ValidationError("--nodes must be 2...9") }
        guard self.requests >= 10 else { throw ValidationError("--requests must be at least 10") }
        for value in self.replicaSettings where ReplicaRequirement(parsing: value) == nil {
            throw ValidationError("--replicas: '\(value)' is not a positive number or all")
        }
    }

    var replicaSettings: [String] {
        self.replicas.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
    }

    struct Sample {
        var seconds: Double
        var local: Bool
    }

    func run() async throws {
        var rows: [String] = []
        var failures = 0
        for (offset, setting) in self.replicaSettings.enumerated() {
            let (allocations, deallocations, failed) = try await self.measure(
                replicas: setting,
                basePort: self.basePort + offset * 300
            )
            failures += failed
            for (operation, samples) in [("allocate", allocations), ("deallocate", deallocations)] {
                for (owner, local) in [("node 1 (the node called)", true), ("another node", false)] {
                    let values = samples.filter { $0.local == local }.map(\.seconds)
                    guard !values.isEmpty else { continue }
                    rows.append(
                        "| \(setting) | \(operation) | \(owner) | \(values.count) | \(Self.ms(values, 0.5)) | "
                            + "\(Self.ms(values, 0.99)) | \(Self.ms(values, 1)) |"
                    )
                }
            }
        }
        print("")
        print("## Allocate / deallocate latency: \(self.nodes) nodes, \(self.requests) calls per setting, sequential")
        print("")
        print("| replicas | call | owner | calls | p50 | p99 | max |")
        print("|---|---|---|---:|---:|---:|---:|")
        for row in rows { print(row) }
        print("")
        print("Failed calls: \(failures).")
        if failures > 0 { throw ExitCode(1) }
    }

    func measure(
        replicas: String,
        basePort: Int
    ) async throws -> (
        allocations: [Sample], deallocations: [Sample], failed: Int
    ) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "stork-bench-allocate-\(getpid())-\(basePort)"
        )
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        var allocations: [Sample] = []
        var deallocations: [Sample] = []
        var failed = 0
        try await LocalCluster.run(
            directory: directory,
            executable: StorkExecutable.url,
            basePort: basePort,
            list: ResourceListServer(ids: []),
            sidecar: RecordingSidecar(),
            configure: { $0.replicas = replicas }
        ) { cluster in
            let indices = Array(1...self.nodes)
            for index in indices { try cluster.start(index, seeds: indices) }
            try await self.waitForView(cluster: cluster, indices: indices)
            let admin = cluster.adminAddress(1)
            // Warm-up: connections, code paths.
            for i in 0..<10 {
                _ = try? await Self.call(.POST, admin: admin, id: "warm-\(i)")
                _ = try? await Self.call(.DELETE, admin: admin, id: "warm-\(i)")
            }
            var owners: [String: Bool] = [:]
            for i in 0..<self.requests {
                let id = "bench-\(i)"
                let started = ContinuousClock.now
                let answer = try? await Self.call(.POST, admin: admin, id: id)
                let seconds = (ContinuousClock.now - started).secondsDouble
                guard let answer, answer.status == 200, let node = answer.node else {
                    failed += 1
                    continue
                }
                owners[id] = node == "n1"
                allocations.append(Sample(seconds: seconds, local: node == "n1"))
            }
            for i in 0..<self.requests {
                let id = "bench-\(i)"
                guard let local = owners[id] else { continue }
                let started = ContinuousClock.now
                let answer = try? await Self.call(.DELETE, admin: admin, id: id)
                let seconds = (ContinuousClock.now - started).secondsDouble
                guard let answer, answer.status == 200 else {
                    failed += 1
                    continue
                }
                deallocations.append(Sample(seconds: seconds, local: local))
            }
            await cluster.stopAll()
        }
        return (allocations, deallocations, failed)
    }

    func waitForView(cluster: LocalCluster, indices: [Int]) async throws {
        let expected = Set(indices.map { "n\($0)" })
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            var agreed = true
            for index in indices {
                let fields = try? await FailoverBenchCommand.cluster(at: cluster.adminAddress(index))
                guard case .array(let view)? = fields?["view"], Set(view.compactMap(\.stringValue)) == expected else {
                    agreed = false
                    break
                }
            }
            if agreed { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw ValidationError("the nodes did not agree on their view within 60 s")
    }

    static func call(_ method: HTTPMethod, admin: String, id: String) async throws -> (status: Int, node: String?) {
        var request = HTTPClientRequest(
            url: method == .POST ? "http://\(admin)/v1/resources" : "http://\(admin)/v1/resources/\(id)"
        )
        request.method = method
        if method == .POST { request.body = .bytes(ByteBuffer(string: #"{"id":"\#(id)"}"#)) }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(60))
        let body = try await response.body.collect(upTo: 1 << 20)
        let document = try? JSONDecoder().decode(JSONValue.self, from: Data(body.readableBytesView))
        guard case .object(let fields)? = document else { return (Int(response.status.code), nil) }
        return (Int(response.status.code), fields["node"]?.stringValue)
    }

    static func ms(_ values: [Double], _ p: Double) -> String {
        let sorted = values.sorted()
        let index = min(sorted.count - 1, max(0, Int((Double(sorted.count) * p).rounded(.up)) - 1))
        return String(format: "%.2f ms", sorted[index] * 1000)
    }
}
