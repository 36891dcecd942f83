import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Synchronization

// Helpers that run a Stork cluster of real `stork serve` processes on loopback, with a resource source and a
// recording sidecar in the calling process: used by `stork demo`, `stork bench failover` and the integration
// tests.

// MARK: - The world around the nodes: a resource source and a recording sidecar, in this process

/// Serves `{"data": [...]}` with an ETag; resources can be removed while it runs.
public final class ResourceListServer: Sendable {
    public let ids = Mutex<[String]>([])
    let version = Atomic<Int>(1)

    public init(ids: [String] = []) {
        self.ids.withLock { $0 = ids }
    }

    public func router() -> Router<BasicRequestContext> {
        let router = Router()
        router.get("/resources") { request, _ -> Response in
            let etag = "\"v\(self.version.load(ordering: .relaxed))\""
            if request.headers[.ifNoneMatch] == etag { return Response(status: .notModified) }
            // No `kind`: these resources go to the nodes' sidecar handler, not to a connector.
            let items = self.ids.withLock { $0 }.map { #"{"id":"\#($0)","owner":"test"}"# }
            var headers = HTTPFields()
            headers[.eTag] = etag
            headers[.contentType] = "application/json"
            let body = #"{"data":["# + items.joined(separator: ",") + "]}"
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: body)))
        }
        return router
    }

    public func remove(_ id: String) {
        self.ids.withLock { $0.removeAll { $0 == id } }
        self.version.add(1, ordering: .relaxed)
    }
}

/// The user's app as Stork sees it: records every handle and terminate, per node, and notices overlaps.
///
/// With fencing tokens (lease mode) it is also the downstream system that checks them: per resource it remembers the
/// highest token it accepted, answers 409 to a handle with an older token (and ignores a terminate with one), and
/// records every token it accepted, so that a test can check they only grow.
public final class RecordingSidecar: Sendable {
    public struct State: Sendable {
        /// Resource id → the highest fencing token accepted.
        public var highestToken: [String: UInt64] = [:]
        /// Resource id → (node, token) of every accepted handle, in order.
        public var acceptedHandles: [String: [(node: String, token: UInt64)]] = [:]
        /// Handles refused because a newer token had been seen: "id node token".
        public var staleHandles: [String] = []
        /// Node → resource ids it terminated with an older token than the newest seen (a stale owner fencing
        /// itself), with the reason it gave.
        public var staleTerminations: [String: [(id: String, reason: String)]] = [:]
        /// Resource id → the node running it.
        public var running: [String: String] = [:]
        /// A handle on one node while another (not killed) node ran the resource.
        public var overlaps: [String] = []
        public var handles = 0
        /// Resource id → "node:reason" of every terminate.
        public var terminations: [String: [String]] = [:]
        public var dead: Set<String> = []
    }

    public let state = Mutex(State())

    public init() {}

    public func router() -> Router<BasicRequestContext> {
        let router = Router()
        router.post("/resources/:id") { request, context -> Response in
            let id = context.parameters.get("id")?.removingPercentEncoding ?? "?"
            let node = request.headers[HTTPField.Name("Stork-Node")!] ?? "?"
            let token = request.headers[HTTPField.Name("Stork-Fencing-Token")!].flatMap { UInt64($0) }
            let accepted = self.state.withLock { state -> Bool in
                if let token {
                    if let highest = state.highestToken[id], token < highest {
                        state.staleHandles.append("\(id) \(node) \(token)")
                        return false
                    }
                    state.highestToken[id] = token
                    state.acceptedHandles[id, default: []].append((node, token))
                    // With tokens, the newest token's holder is the one that runs it: no overlap to report.
                } else if let other = state.running[id], other != node, !state.dead.contains(other) {
                    state.overlaps.append("\(id) handled on \(node) while \(other) runs it")
                }
                state.running[id] = node
                state.handles += 1
                return true
            }
            return Response(status: accepted ? .ok : .conflict)
        }
        router.delete("/resources/:id") { request, context -> Response in
            let id = context.parameters.get("id")?.removingPercentEncoding ?? "?"
            let node = request.headers[HTTPField.Name("Stork-Node")!] ?? "?"
            let reason = request.headers[HTTPField.Name("Stork-Reason")!] ?? "?"
            let token = request.headers[HTTPField.Name("Stork-Fencing-Token")!].flatMap { UInt64($0) }
            self.state.withLock { state in
                if let token, let highest = state.highestToken[id], token < highest {
                    // A stale owner stopping what it ran: it must not stop the newer owner's work.
                    state.staleTerminations[node, default: []].append((id, reason))
                    return
                }
                if state.running[id] == node { state.running[id] = nil }
                state.terminations[id, default: []].append("\(node):\(reason)")
            }
            return Response(status: .ok)
        }
        return router
    }

    /// A node was killed: what it ran is gone with it.
    public func killed(_ node: String) {
        self.state.withLock { state in
            state.dead.insert(node)
            state.running = state.running.filter { $0.value != node }
        }
    }

    public var running: [String: String] { self.state.withLock { $0.running } }
}

/// A `stork serve` child process.
public final class NodeProcess: @unchecked Sendable {
    // @unchecked: `process` is only touched from the task that owns the cluster.
    public let name: String
    let process = Process()
    public let log: URL

    init(name: String, config: String, directory: URL, executable: URL) throws {
        self.name = name
        self.log = directory.appendingPathComponent("\(name).log")
        _ = FileManager.default.createFile(atPath: self.log.path, contents: nil)
        self.process.executableURL = executable
        self.process.arguments = ["serve", "--config", config, "--log-level", ProcessInfo.processInfo.environment["STORK_TEST_LOG_LEVEL"] ?? "warning"]
        let handle = try FileHandle(forWritingTo: self.log)
        self.process.standardOutput = handle
        self.process.standardError = handle
        self.process.currentDirectoryURL = directory
        try self.process.run()
    }

    public var isRunning: Bool { self.process.isRunning }

    public func kill(signal: Int32) {
        if self.process.isRunning { Foundation.kill(self.process.processIdentifier, signal) }
    }

    public func waitForExit(timeout: Duration) async -> Bool {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while self.process.isRunning, clock.now < deadline { try? await Task.sleep(for: .milliseconds(50)) }
        return !self.process.isRunning
    }
}

/// A Hummingbird application on an ephemeral loopback port; `port` is known once it runs.
public final class LocalServer: Sendable {
    final class Port: Sendable {
        let value = Mutex<Int?>(nil)
    }

    public let app: Application<RouterResponder<BasicRequestContext>>
    let bound = Port()

    public init(_ router: Router<BasicRequestContext>) {
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

    public func port() async throws -> Int {
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(10)
        while self.bound.value.withLock({ $0 }) == nil, clock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        guard let port = self.bound.value.withLock({ $0 }) else { throw CancellationError() }
        return port
    }
}

/// The `stork serve` processes of one local cluster, configured through YAML files in `directory`.
public final class LocalCluster: @unchecked Sendable {
    // @unchecked: used from the task that owns the cluster only.
    public let directory: URL
    public let executable: URL
    /// Cluster ports are `basePort + index`, admin ports `basePort + 100 + index`, NATS ports `basePort + 200 + index`.
    public let basePort: Int
    public var sourceURL: String
    public var sidecarURL: String
    public var poll = "1s"
    /// Extra YAML under `membership:` (flow style), e.g. "probeTimeout: 300ms".
    public var membership: String?
    /// YAML under `ownership:` (flow style), e.g. "mode: lease, store: 'sqlite:/tmp/l.db'".
    public var ownership: String?
    /// The nodes' handler (flow-style YAML); nil: the sidecar at `sidecarURL`.
    public var handler: String?
    /// More top-level YAML for every node's configuration, e.g. "connectors: {enabled: false}".
    public var extraYAML: String?
    /// `resources.replicas` of every node; nil: the default.
    public var replicas: String?
    /// The cluster's name (also the key of its rows in an ownership store).
    public var clusterName = "local"
    public private(set) var nodes: [String: NodeProcess] = [:]

    public init(directory: URL, executable: URL, basePort: Int, sourceURL: String, sidecarURL: String) {
        self.directory = directory
        self.executable = executable
        self.basePort = basePort
        self.sourceURL = sourceURL
        self.sidecarURL = sidecarURL
    }

    public func clusterAddress(_ index: Int) -> String { "127.0.0.1:\(self.basePort + index)" }
    public func adminAddress(_ index: Int) -> String { "127.0.0.1:\(self.basePort + 100 + index)" }
    public func natsAddress(_ index: Int) -> String { "127.0.0.1:\(self.basePort + 200 + index)" }

    /// Starts node `n<index>`; it joins through the nodes `seeds` (default: nodes 1 and 2).
    @discardableResult
    public func start(_ index: Int, seeds: [Int] = [1, 2]) throws -> NodeProcess {
        let name = "n\(index)"
        let config = self.directory.appendingPathComponent("\(name).yaml")
        let membership =
            (self.membership.map { "membership: {\($0)}\n" } ?? "") + (self.ownership.map { "ownership: {\($0)}\n" } ?? "")
        let yaml = """
            node:
              name: \(name)
              bind: \(self.clusterAddress(index))
              http: \(self.adminAddress(index))
              nats: \(self.natsAddress(index))
              seeds: [\(seeds.map(self.clusterAddress).joined(separator: ", "))]
              data: \(self.directory.path)/\(name)-data
            cluster: {name: \(self.clusterName), key: local-cluster-key}
            \(membership)\(self.extraYAML.map { "\($0)\n" } ?? "")resources:
              sources:
                - {type: http, name: accounts, url: \(self.sourceURL), poll: \(self.poll)}
              handler: \(self.handler ?? "{type: sidecar, url: \(self.sidecarURL)}")
            \(self.replicas.map { "  replicas: \($0)\n" } ?? "")
            """
        try yaml.write(to: config, atomically: true, encoding: .utf8)
        let node = try NodeProcess(name: name, config: config.path, directory: self.directory, executable: self.executable)
        self.nodes[name] = node
        return node
    }

    /// Nodes whose process ended, with the last line of their log (why they stopped, e.g. a port in use).
    public func exitedNodes() -> [(name: String, lastLine: String)] {
        self.nodes.filter { !$0.value.isRunning }.sorted { $0.key < $1.key }.map { name, node in
            let text = (try? String(contentsOf: node.log, encoding: .utf8)) ?? ""
            let line = text.split(separator: "\n").last(where: { !$0.trimmingCharacters(in: .whitespaces).isEmpty })
            return (name, line.map(String.init) ?? "(no output)")
        }
    }

    public func killAll() {
        for node in self.nodes.values { node.kill(signal: SIGKILL) }
    }

    /// SIGTERM to every running node, then waits for them to exit (SIGKILL after the timeout).
    public func stopAll(timeout: Duration = .seconds(30)) async {
        for node in self.nodes.values where node.isRunning { node.kill(signal: SIGTERM) }
        for node in self.nodes.values where !(await node.waitForExit(timeout: timeout)) { node.kill(signal: SIGKILL) }
    }
}

extension LocalCluster {
    /// Runs `body` with a cluster whose nodes fetch their resources from `list` and call `sidecar` as their handler,
    /// both served on free loopback ports for as long as `body` runs; every node still running is killed (SIGKILL)
    /// when `body` returns or throws. `configure` sets the cluster up before `body` starts nodes.
    public static func run<Result: Sendable>(
        directory: URL,
        executable: URL,
        basePort: Int,
        list: ResourceListServer,
        sidecar: RecordingSidecar,
        configure: (LocalCluster) -> Void = { _ in },
        _ body: (LocalCluster) async throws -> Result
    ) async throws -> Result {
        let listServer = LocalServer(list.router())
        let sidecarServer = LocalServer(sidecar.router())
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await listServer.app.runService() }
            group.addTask { try await sidecarServer.app.runService() }
            let cluster = LocalCluster(
                directory: directory,
                executable: executable,
                basePort: basePort,
                sourceURL: "http://127.0.0.1:\(try await listServer.port())/resources",
                sidecarURL: "http://127.0.0.1:\(try await sidecarServer.port())"
            )
            configure(cluster)
            defer {
                cluster.killAll()
                group.cancelAll()
            }
            return try await body(cluster)
        }
    }
}
