import AsyncHTTPClient
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Synchronization
import Testing

// MARK: - The world around the nodes: a resource source and a recording sidecar, in this process

/// Serves `{"data": [...]}` with an ETag; resources can be removed while it runs.
final class ListServer: Sendable {
    let ids = Mutex<[String]>([])
    let version = Atomic<Int>(1)

    func router() -> Router<BasicRequestContext> {
        let router = Router()
        router.get("/resources") { request, _ -> Response in
            let etag = "\"v\(self.version.load(ordering: .relaxed))\""
            if request.headers[.ifNoneMatch] == etag { return Response(status: .notModified) }
            let items = self.ids.withLock { $0 }.map { #"{"id":"\#($0)","kind":"test"}"# }
            var headers = HTTPFields()
            headers[.eTag] = etag
            headers[.contentType] = "application/json"
            let body = #"{"data":["# + items.joined(separator: ",") + "]}"
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: body)))
        }
        return router
    }

    func remove(_ id: String) {
        self.ids.withLock { $0.removeAll { $0 == id } }
        self.version.add(1, ordering: .relaxed)
    }
}

/// The user's app as Stork sees it: records every handle and terminate, per node, and notices overlaps.
final class RecordingSidecar: Sendable {
    struct State {
        var running: [String: String] = [:]
        var overlaps: [String] = []
        var handles = 0
        var terminations: [String: [String]] = [:]
        var dead: Set<String> = []
        var handledBy: [String: [String]] = [:]
    }

    let state = Mutex(State())

    func router() -> Router<BasicRequestContext> {
        let router = Router()
        router.post("/resources/:id") { request, context -> Response in
            let id = context.parameters.get("id")?.removingPercentEncoding ?? "?"
            let node = request.headers[HTTPField.Name("Stork-Node")!] ?? "?"
            self.state.withLock { state in
                if let other = state.running[id], other != node, !state.dead.contains(other) {
                    state.overlaps.append("\(id) handled on \(node) while \(other) runs it")
                }
                state.running[id] = node
                state.handles += 1
                state.handledBy[id, default: []].append(node)
            }
            return Response(status: .ok)
        }
        router.delete("/resources/:id") { request, context -> Response in
            let id = context.parameters.get("id")?.removingPercentEncoding ?? "?"
            let node = request.headers[HTTPField.Name("Stork-Node")!] ?? "?"
            let reason = request.headers[HTTPField.Name("Stork-Reason")!] ?? "?"
            self.state.withLock { state in
                if state.running[id] == node { state.running[id] = nil }
                state.terminations[id, default: []].append("\(node):\(reason)")
            }
            return Response(status: .ok)
        }
        return router
    }

    /// A node was killed: what it ran is gone with it.
    func killed(_ node: String) {
        self.state.withLock { state in
            state.dead.insert(node)
            state.running = state.running.filter { $0.value != node }
        }
    }

    var running: [String: String] { self.state.withLock { $0.running } }
}

/// A `stork serve` child process.
final class NodeProcess: @unchecked Sendable {
    // @unchecked: `process` is only touched from the test's task.
    let name: String
    let http: String
    let process = Process()
    let log: URL

    init(name: String, config: String, directory: URL) throws {
        self.name = name
        self.http = ""
        self.log = directory.appendingPathComponent("\(name).log")
        _ = FileManager.default.createFile(atPath: self.log.path, contents: nil)
        self.process.executableURL = try StorkBinary.url
        self.process.arguments = ["serve", "--config", config, "--log-level", "warning"]
        let handle = try FileHandle(forWritingTo: self.log)
        self.process.standardOutput = handle
        self.process.standardError = handle
        self.process.currentDirectoryURL = directory
        try self.process.run()
    }

    func kill(signal: Int32) {
        if self.process.isRunning { Foundation.kill(self.process.processIdentifier, signal) }
    }

    func waitForExit(timeout: Duration) async -> Bool {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while self.process.isRunning, clock.now < deadline { try? await Task.sleep(for: .milliseconds(50)) }
        return !self.process.isRunning
    }
}

/// A Hummingbird application on an ephemeral loopback port; `port` is known once it runs.
final class LocalServer: Sendable {
    final class Port: Sendable {
        let value = Mutex<Int?>(nil)
    }

    let app: Application<RouterResponder<BasicRequestContext>>
    let bound = Port()

    init(_ router: Router<BasicRequestContext>) {
        var logger = Logger(label: "test-server")
        logger.logLevel = .critical
        let bound = self.bound
        self.app = Application(
            router: router,
            configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { channel in bound.value.withLock { $0 = channel.localAddress?.port } },
            logger: logger
        )
    }

    func port() async throws -> Int {
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(10)
        while self.bound.value.withLock({ $0 }) == nil, clock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        guard let port = self.bound.value.withLock({ $0 }) else { throw CancellationError() }
        return port
    }
}

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

/// The child processes of one test cluster.
final class ProcessCluster: @unchecked Sendable {
    // @unchecked: used from the test's task only.
    let directory: URL
    let base: Int
    var listPort = 0
    var sidecarPort = 0
    var nodes: [String: NodeProcess] = [:]

    init(directory: URL, base: Int) {
        self.directory = directory
        self.base = base
    }

    func start(_ index: Int) throws {
        let name = "n\(index)"
        let config = self.directory.appendingPathComponent("\(name).yaml")
        let yaml = """
            node:
              name: \(name)
              bind: 127.0.0.1:\(self.base + index)
              http: 127.0.0.1:\(self.base + 100 + index)
              seeds: [127.0.0.1:\(self.base + 1), 127.0.0.1:\(self.base + 2)]
              data: \(self.directory.path)/\(name)-data
            cluster: {name: test, key: integration-key}
            membership: {probeTimeout: 300ms, indirectProbeTimeout: 600ms, suspicionMinimum: 2s}
            resources:
              sources:
                - {type: http, name: accounts, url: http://127.0.0.1:\(self.listPort)/resources, poll: 1s}
              handler: {type: sidecar, url: http://127.0.0.1:\(self.sidecarPort)}
            """
        try yaml.write(to: config, atomically: true, encoding: .utf8)
        self.nodes[name] = try NodeProcess(name: name, config: config.path, directory: self.directory)
    }

    func killAll() {
        for node in self.nodes.values { node.kill(signal: SIGKILL) }
    }
}

// MARK: - The scenario

@Suite("A cluster of real stork processes on loopback", .serialized, .timeLimit(.minutes(10)))
struct ProcessClusterTests {
    static let resources = 10_000

    @Test("5 nodes, 10,000 resources from an HTTP source: add a node, kill -9 one, SIGTERM one, delete at the source")
    func failover() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("stork-cluster-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let list = ListServer()
        list.ids.withLock { $0 = (0..<Self.resources).map { "res-\($0)" } }
        let sidecar = RecordingSidecar()
        let base = 20_000 + Int.random(in: 0..<20_000)
        let cluster = ProcessCluster(directory: directory, base: base)
        defer { cluster.killAll() }

        try await withThrowingTaskGroup(of: Void.self) { group in
            let listServer = LocalServer(list.router())
            let sidecarServer = LocalServer(sidecar.router())
            group.addTask { try await listServer.app.runService() }
            group.addTask { try await sidecarServer.app.runService() }
            cluster.listPort = try await listServer.port()
            cluster.sidecarPort = try await sidecarServer.port()

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
            var request = HTTPClientRequest(url: "http://127.0.0.1:\(base + 101)/v1/resources")
            request.method = .POST
            request.body = .bytes(ByteBuffer(string: #"{"id":"during-join","kind":"test"}"#))
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(60))
            #expect(response.status == .ok)
            try await waitFor("the sixth node runs its share", timeout: .seconds(120)) {
                let running = sidecar.running
                return running.count == Self.resources + 1 && Set(running.values).count == 6
            }
            try await Task.sleep(for: .seconds(2))
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
            group.cancelAll()
        }
        try? FileManager.default.removeItem(at: directory)
    }
}
