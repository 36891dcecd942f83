import AsyncHTTPClient
import Foundation
import Hummingbird
import Logging
import StorkCore
import StorkNATS
import StorkBus
import StorkServer
import Synchronization
import UnixSignals

// MARK: - LiveDemoConfiguration

/// How `stork demo` runs. Every field has a working default; `stork demo`'s flags set them.
public struct LiveDemoConfiguration: Sendable {
    /// Where the players' resources are run.
    public enum Connector: String, Sendable, CaseIterable {
        /// The nodes' own `websocket` connector: each node connects to the feed and publishes to its NATS endpoint.
        case node
        /// The nodes call this process as their sidecar, and this process connects to the feed and publishes to the
        /// calling node's NATS endpoint (for a Stork without connectors, or to tell the connector's part apart).
        case sidecar
    }

    /// `stork serve` processes at the start.
    public var nodes = 3
    /// Node `i` listens on base+i (cluster), base+100+i (admin HTTP) and base+200+i (NATS); the page is on
    /// base+300 and the match feed on base+301.
    public var basePort = 27_000
    /// Stop after this long; nil: after the match, keep the page up until Ctrl-C.
    public var duration: Duration?
    /// How long the match lasts in real time (kick-off to final whistle). With `duration`, the match is shortened to
    /// end about 12 s before it.
    public var matchLength: Duration = .seconds(120)
    /// Kill the oldest node at 30–50% of the match (just before a shot of one of its players) and start a new one
    /// at 60%.
    public var autoMoves = false
    /// After how long the feed writes an unconfirmed shot again to the player's open connections.
    public var resendAfter: Duration = .seconds(3)
    public var connector = Connector.node
    /// The `stork` executable the nodes run.
    public var executable: URL
    /// Where node configurations and logs go; default: a new folder under the temporary directory.
    public var directory: URL?
    /// Print the story on standard output.
    public var printing = true

    public init(executable: URL) {
        self.executable = executable
    }

    public var webPort: Int { self.basePort + 300 }
    public var feedPort: Int { self.basePort + 301 }
}

// MARK: - LiveDemo

/// `stork demo`: a football match's shots, fed over WebSockets to players that are Stork resources on a cluster of
/// real `stork serve` processes, received over NATS on one node (the bus brings every node's), while nodes are
/// killed and added, with a web page that shows it all. See Docs/demo.md.
public struct LiveDemo: Sendable {
    public var configuration: LiveDemoConfiguration

    public init(configuration: LiveDemoConfiguration) {
        self.configuration = configuration
    }

    /// Runs the demo; true when every step worked and no shot was lost.
    public func play() async throws -> Bool {
        let configuration = self.configuration
        let origin = ContinuousClock.now
        let script = MatchScript.standard
        var logger = Logger(label: "stork.demo")
        logger.logLevel = .critical
        let world = DemoWorld(script: script, origin: origin, printing: configuration.printing)
        let feed = MatchFeed(script: script, resendAfter: configuration.resendAfter, origin: origin, logger: logger)
        let directory =
            configuration.directory
            ?? FileManager.default.temporaryDirectory.appendingPathComponent("stork-demo-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let web = "http://127.0.0.1:\(configuration.webPort)"
        let cluster = LocalCluster(
            directory: directory,
            executable: configuration.executable,
            basePort: configuration.basePort,
            sourceURL: "\(web)/resources",
            sidecarURL: "\(web)/sidecar"
        )
        cluster.poll = "1s"
        switch configuration.connector {
        case .node:
            // Players have `kind: websocket`: the connectors run them; nothing goes to the handler.
            cluster.handler = "{type: log}"
        case .sidecar:
            // Every player goes to the sidecar (this process), connectors off.
            cluster.extraYAML = "connectors: {enabled: false}"
        }
        let nodes = DemoCluster(cluster: cluster)
        let connectors =
            configuration.connector == .sidecar ? SidecarConnectors(natsPort: nodes.natsPort, logger: logger) : nil
        let (added, addedContinuation) = AsyncStream.makeStream(of: String.self)
        let controls = DemoControls(world: world, nodes: nodes, connectors: connectors, added: addedContinuation)
        let players = PlayerList(script: script, feedPort: configuration.feedPort)
        let servers = ServersUp()
        let stop = DemoStopSignal()
        let httpClient = HTTPClient(eventLoopGroupProvider: .singleton)
        defer { nodes.killAll() }

        let webApp = DemoWebApp(world: world, feed: feed, nodes: nodes, controls: controls, players: players)
        let webRouter = webApp.router()
        connectors?.addRoutes(to: webRouter)
        let webApplication = Application(
            router: webRouter,
            configuration: .init(
                address: .hostname("127.0.0.1", port: configuration.webPort),
                serverName: "stork-demo"
            ),
            onServerRunning: { _ in servers.up(.web) },
            logger: logger
        )
        let feedApplication = feed.application(port: configuration.feedPort, logger: logger) { _ in servers.up(.feed) }

        let ok = await withTaskGroup(of: Void.self) { group in
            group.addTask {
                do { try await webApplication.runService(gracefulShutdownSignals: []) } catch {
                    servers.failed("the page's server on 127.0.0.1:\(configuration.webPort): \(error)")
                }
            }
            group.addTask {
                do { try await feedApplication.runService(gracefulShutdownSignals: []) } catch {
                    servers.failed("the match feed's server on 127.0.0.1:\(configuration.feedPort): \(error)")
                }
            }
            group.addTask { try? await feed.run() }
            if let connectors { group.addTask { await connectors.run() } }
            group.addTask { await Self.receive(added, world: world, nodes: nodes, feed: feed) }
            group.addTask { await Self.pollOwners(world: world, nodes: nodes, stop: stop, client: httpClient) }
            group.addTask { await stop.watchInterrupt() }

            let story = Story(
                configuration: configuration,
                world: world,
                feed: feed,
                nodes: nodes,
                controls: controls,
                servers: servers,
                stop: stop,
                directory: directory,
                origin: origin
            )
            let ok = await story.tell()
            controls.close()
            world.say("Stopping: SIGTERM to every node; each hands its players off and exits.")
            await nodes.stopAll()
            world.say("Every node stopped.")
            feed.stop()
            connectors?.stop()
            addedContinuation.finish()
            group.cancelAll()
            if ok { try? FileManager.default.removeItem(at: directory) }
            return ok
        }
        try? await httpClient.shutdown()
        return ok
    }

    // MARK: Receiving every node's shots on one node

    /// Listens on one live node at a time: the nodes form one bus, so a subscription to `demo.shots.>` on any node
    /// receives the shots every node publishes. When that node dies (or cannot be reached), the next live node in
    /// order takes over; shots published in between come again from the feed, which repeats every shot not confirmed
    /// yet. `added` (nodes started from the page) only wakes the search when no node was live.
    static func receive(_ added: AsyncStream<String>, world: DemoWorld, nodes: DemoCluster, feed: MatchFeed) async {
        await withDiscardingTaskGroup { group in
            group.addTask { for await _ in added {} }
            while !Task.isCancelled {
                for name in nodes.live where world.isRunning(name) {
                    await Self.listen(on: name, world: world, nodes: nodes, feed: feed)
                    if Task.isCancelled { break }
                }
                try? await Task.sleep(for: .milliseconds(200))
            }
            group.cancelAll()
        }
    }

    /// One subscription to `demo.shots.>` on node `name`, until its connection ends or fails.
    static func listen(on name: String, world: DemoWorld, nodes: DemoCluster, feed: MatchFeed) async {
        guard let port = nodes.natsPort(name) else { return }
        do {
            var options = NATSClient.Options()
            options.name = "stork-demo"
            options.connectTimeout = .seconds(2)
            let client = try await NATSClient.connect(host: "127.0.0.1", port: port, options: options)
            do {
                let (_, messages) = try client.subscribe("demo.shots.>")
                // From the PONG on, every shot published on any node reaches the demo (the other nodes learn of the
                // subscription a moment later; the feed repeats what they published before).
                try await client.flush(timeout: .seconds(5))
                world.onSubscription(name, active: true)
                for await message in messages {
                    let payload = Array(message.payload.readableBytesView)
                    if let sequence = world.onShotMessage(payload, receivedOn: name) { feed.confirm(sequence) }
                }
                world.onSubscription(name, active: false)
            } catch {
                world.onSubscription(name, active: false)
                await client.close()
                throw error
            }
            await client.close()
        } catch {
            // Not listening yet, or gone: the caller tries the next node.
        }
    }

    // MARK: Owners

    /// Every 400 ms, asks each live node's admin API which players it runs, and notices nodes that exited by
    /// themselves (not after Ctrl-C, which a terminal also sends to the nodes).
    static func pollOwners(world: DemoWorld, nodes: DemoCluster, stop: DemoStopSignal, client: HTTPClient) async {
        while !Task.isCancelled {
            let listing = await withTaskGroup(of: (String, Set<String>?).self) { group in
                for name in nodes.live {
                    guard let port = nodes.adminPort(name) else { continue }
                    group.addTask { (name, await Self.running(on: port, client: client)) }
                }
                var listing: [String: Set<String>] = [:]
                for await (name, players) in group { if let players { listing[name] = players } }
                return listing
            }
            world.onOwnersPolled(listing)
            for (name, line) in nodes.exited() where !stop.isStopped {
                nodes.forget(name)
                world.onNodeEnded(name, status: .exited)
                world.say("✗ \(name) exited by itself: \(line)")
            }
            try? await Task.sleep(for: .milliseconds(400))
        }
    }

    /// The ids of the resources in state `running` on the node with admin port `port`; nil if it did not answer.
    static func running(on port: Int, client: HTTPClient) async -> Set<String>? {
        let request = HTTPClientRequest(url: "http://127.0.0.1:\(port)/v1/resources")
        guard let response = try? await client.execute(request, timeout: .seconds(1)), response.status == .ok,
            let body = try? await response.body.collect(upTo: 4 << 20),
            let document = try? JSONDecoder().decode(NodeResources.self, from: Data(buffer: body))
        else { return nil }
        return Set(document.resources.filter { $0.state == "running" }.map(\.id))
    }

    struct NodeResources: Decodable {
        struct Item: Decodable {
            var id: String
            var state: String
        }
        var resources: [Item]
    }
}

// MARK: - Adding and killing nodes

/// Adds and kills nodes for the story and for the page's buttons, and tells the story.
final class DemoControls: Sendable {
    let world: DemoWorld
    let nodes: DemoCluster
    let connectors: SidecarConnectors?
    let added: AsyncStream<String>.Continuation
    let closed = Atomic<Bool>(false)

    init(world: DemoWorld, nodes: DemoCluster, connectors: SidecarConnectors?, added: AsyncStream<String>.Continuation)
    {
        self.world = world
        self.nodes = nodes
        self.connectors = connectors
        self.added = added
    }

    func startInitial(_ count: Int) throws -> [String] {
        let names = try self.nodes.startInitial(count)
        for name in names {
            self.world.onNodeStarted(name, index: DemoCluster.index(name) ?? 0)
            self.added.yield(name)
        }
        return names
    }

    /// Starts the next node.
    @discardableResult
    func add() throws -> String {
        guard !self.closed.load(ordering: .relaxed) else { throw StorkError(.shutdown, "the demo is stopping") }
        let seeds = self.nodes.live
        let (name, index) = try self.nodes.add()
        self.world.onNodeStarted(name, index: index)
        self.added.yield(name)
        self.world.say("starting \(name) (it joins through \(seeds.joined(separator: ", ")))")
        return name
    }

    /// SIGKILL to `name`, or to the oldest live node.
    @discardableResult
    func kill(_ name: String?) throws -> String {
        guard !self.closed.load(ordering: .relaxed) else { throw StorkError(.shutdown, "the demo is stopping") }
        let victim = try self.nodes.kill(name)
        let orphans = self.world.onNodeKilled(victim)
        self.connectors?.nodeKilled(victim)
        self.world.say(
            "kill -9 \(victim): it ran \(orphans.count) players"
                + (orphans.isEmpty ? "" : " (\(orphans.joined(separator: " ")))")
        )
        return victim
    }

    /// No more adds and kills (the demo is stopping).
    func close() {
        self.closed.store(true, ordering: .relaxed)
    }
}

// MARK: - Small pieces

/// The players as the nodes' resource source lists them: `{"data": [{"id", "kind": "websocket", "url", "subject"}]}`.
struct PlayerList: Sendable {
    let script: MatchScript
    let feedPort: Int

    func url(_ player: Player) -> String { "ws://127.0.0.1:\(self.feedPort)/players/\(player.id)" }

    static func subject(_ player: Player) -> String { "demo.shots.\(player.id)" }

    var resources: [[String: String]] {
        self.script.players.map { player in
            ["id": player.id, "kind": "websocket", "url": self.url(player), "subject": Self.subject(player)]
        }
    }

    var json: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: (try? encoder.encode(["data": self.resources])) ?? Data(), as: UTF8.self)
    }
}

/// Which of the demo's two servers are listening, and why one stopped.
final class ServersUp: Sendable {
    enum Server: Sendable { case web, feed }
    let state = Mutex<(up: Set<String>, failure: String?)>(([], nil))

    func up(_ server: Server) { self.state.withLock { _ = $0.up.insert("\(server)") } }
    func failed(_ why: String) { self.state.withLock { $0.failure = $0.failure ?? why } }
    var allUp: Bool { self.state.withLock { $0.up.count == 2 } }
    var failure: String? { self.state.withLock { $0.failure } }
}

/// Set by Ctrl-C or SIGTERM.
public final class DemoStopSignal: Sendable {
    let stopped = Atomic<Bool>(false)

    public init() {}

    public var isStopped: Bool { self.stopped.load(ordering: .relaxed) }

    public func stop() { self.stopped.store(true, ordering: .relaxed) }

    public func watchInterrupt() async {
        for await _ in await UnixSignalsSequence(trapping: .sigint, .sigterm) {
            self.stop()
            return
        }
    }
}
