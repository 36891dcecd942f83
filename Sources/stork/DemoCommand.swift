import ArgumentParser
import Foundation
import Logging
import Stork
import StorkDemo
import Synchronization

// MARK: - stork demo

/// `stork demo`: the live demo. A football match feed replays a match's shots over WebSockets, one URL per player;
/// the players are resources of kind `websocket` on a cluster of real `stork serve` processes; this process receives
/// every shot over NATS from whichever node runs its player, while nodes are killed and added. A web page shows it.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract:
            "Run the live demo: a football match's shots flow through a local Stork cluster while nodes die and join.",
        discussion: """
            Starts --nodes `stork serve` processes on loopback and, in this process, a match feed (WebSocket per \
            player on base+301), the players' resource list, and a web page on base+300 (http://127.0.0.1:27300/ \
            by default) with "add node" and "kill node" buttons. Each player is a resource of kind websocket: the \
            node that runs it connects to the player's feed URL and publishes every shot on demo.shots.<player> on \
            its NATS endpoint (base+200+i); this process subscribes on every node, confirms each shot to the feed, \
            and counts it once. The feed repeats unconfirmed shots to the player's next connection, so no shot is \
            lost while players move. The story is printed as text too. With --duration the match is shortened to \
            fit, a node is killed at 30-50% and one added at 60% (unless --no-auto-moves), and the demo exits 0 if no \
            shot was lost; without it, the page stays up after full time until Ctrl-C. --in-process runs the older, \
            smaller story of one process (three nodes on an in-memory network: allocate, leave, join, crash, \
            deallocate).
            """
    )

    @Option(help: "How many nodes to start.")
    var nodes: Int = 3

    @Option(help: "Stop after this many seconds (default: after the match, keep the page up until Ctrl-C).")
    var duration: Int?

    @Option(help: "Node i: cluster base+i, admin base+100+i, NATS base+200+i; the page base+300, the feed base+301.")
    var basePort: Int = 27_000

    @Option(help: "How long the match lasts, in seconds (with --duration, shortened to fit).")
    var matchSeconds: Int = 120

    @Flag(
        inversion: .prefixedNo,
        help: "Kill the oldest node at 30-50% of the match and add one at 60% (default: on with --duration)."
    )
    var autoMoves: Bool?

    @Option(
        help: """
            Who connects the players to the feed: node (each node's websocket connector) or sidecar (this process, \
            called by the nodes).
            """
    )
    var connector: String = LiveDemoConfiguration.Connector.node.rawValue

    @Flag(help: "Run the in-process story instead of child processes.")
    var inProcess = false

    @Flag(help: "With --in-process: print every handle and terminate as it happens.")
    var verbose = false

    func validate() throws {
        guard (2...20).contains(self.nodes) else { throw ValidationError("--nodes must be 2...20") }
        if let duration = self.duration, duration < 30, !self.inProcess {
            throw ValidationError("--duration must be at least 30 (the cluster starts, then a match of at least 15 s)")
        }
        guard (1024...60_000).contains(self.basePort) else { throw ValidationError("--base-port must be 1024...60000") }
        guard (10...3600).contains(self.matchSeconds) else {
            throw ValidationError("--match-seconds must be 10...3600")
        }
        guard LiveDemoConfiguration.Connector(rawValue: self.connector) != nil else {
            throw ValidationError("--connector must be node or sidecar")
        }
    }

    func run() async throws {
        let ok: Bool
        if self.inProcess {
            ok = try await Demo(resources: 12, verbose: self.verbose).play()
        } else {
            var configuration = LiveDemoConfiguration(executable: StorkExecutable.url)
            configuration.nodes = self.nodes
            configuration.basePort = self.basePort
            configuration.duration = self.duration.map { .seconds($0) }
            configuration.matchLength = .seconds(self.matchSeconds)
            configuration.autoMoves = self.autoMoves ?? (self.duration != nil)
            configuration.connector = LiveDemoConfiguration.Connector(rawValue: self.connector) ?? .node
            ok = try await LiveDemo(configuration: configuration).play()
        }
        if !ok { throw ExitCode(1) }
    }
}

/// Tracks which node runs which account, across the whole demo cluster.
final class DemoLedger: Sendable {
    struct State {
        var running: [ResourceID: String] = [:]
        var overlaps: [String] = []
        var handles = 0
        var terminations = 0
    }

    let state = Mutex(State())
    let verbose: Bool
    let started = ContinuousClock.now

    init(verbose: Bool) { self.verbose = verbose }

    func say(_ text: String) {
        let elapsed = (ContinuousClock.now - self.started).secondsDouble
        print(String(format: "[%6.2fs] ", elapsed) + text)
    }

    func handled(_ id: ResourceID, on node: String) {
        self.state.withLock { state in
            if let other = state.running[id] { state.overlaps.append("\(id) on \(node) while on \(other)") }
            state.running[id] = node
            state.handles += 1
        }
        if self.verbose { self.say("  \(node) ▶ handle \(id)") }
    }

    func terminated(_ id: ResourceID, on node: String, reason: TerminationReason) {
        self.state.withLock { state in
            if state.running[id] == node { state.running[id] = nil }
            state.terminations += 1
        }
        if self.verbose { self.say("  \(node) ■ terminate \(id) (\(reason))") }
    }

    func crashed(_ node: String) {
        self.state.withLock { $0.running = $0.running.filter { $0.value != node } }
    }

    var running: [ResourceID: String] { self.state.withLock { $0.running } }
}

struct DemoHandler: ResourceHandler {
    let node: String
    let ledger: DemoLedger

    func handle(_ resource: Resource, context: ResourceContext) async throws {
        // A real handler would open the account's WebSocket here.
        try await Task.sleep(for: .milliseconds(5))
        self.ledger.handled(resource.id, on: self.node)
    }

    func terminate(_ resource: Resource, reason: TerminationReason, context: ResourceContext) async throws {
        try await Task.sleep(for: .milliseconds(5))
        self.ledger.terminated(resource.id, on: self.node, reason: reason)
    }
}

struct Demo {
    let resources: Int
    let verbose: Bool

    static func describe(_ outcome: RequestOutcome) -> String {
        switch outcome {
        case .handled(let node): return "handled by \(node.name)'s handler"
        case .handleFailed(let node, let attempt): return "\(node.name)'s handler failed (attempt \(attempt)); retrying"
        case .terminated(let node): return "terminated by \(node.name)"
        case .timedOut: return "timed out"
        case .notReplicated(let holders, let required): return "held by \(holders) of \(required) members: not acknowledged"
        case .shutdown: return "the node is shutting down"
        }
    }

    func play() async throws -> Bool {
        let ledger = DemoLedger(verbose: self.verbose)
        let network = InMemoryNetwork()
        let accounts = (1...self.resources).map {
            Resource(id: ResourceID("acct-\($0)"), attributes: ["kind": .string("websocket")])
        }
        var logger = Logger(label: "stork.demo")
        logger.logLevel = .error

        func makeNode(_ name: String) -> ResourceManager {
            var configuration = ResourceManagerConfiguration(name: name)
            configuration.seeds = name == "node-a" ? [] : ["node-a:7946", "node-b:7946"]
            configuration.leaveLinger = .milliseconds(200)
            return ResourceManager(
                configuration: configuration,
                handler: DemoHandler(node: name, ledger: ledger),
                source: StaticResourceSource(accounts),
                transport: network.endpoint("\(name):7946"),
                logger: logger
            )
        }

        func table(_ title: String) {
            let running = ledger.running
            let byNode = Dictionary(grouping: running.keys, by: { running[$0]! })
            ledger.say(title)
            for node in byNode.keys.sorted() {
                let ids = byNode[node]!.sorted {
                    $0.rawValue.localizedStandardCompare($1.rawValue) == .orderedAscending
                }
                print("            \(node): \(ids.count) — \(ids.map(\.rawValue).joined(separator: " "))")
            }
        }

        func waitUntil(_ what: String, timeout: Duration = .seconds(30), _ condition: () -> Bool) async throws -> Bool {
            let clock = ContinuousClock()
            let deadline = clock.now + timeout
            while clock.now < deadline {
                if condition() { return true }
                try await Task.sleep(for: .milliseconds(20))
            }
            ledger.say("✗ gave up waiting: \(what)")
            return false
        }

        var ok = true
        let nodes = ["node-a", "node-b", "node-c"].map(makeNode)
        let late = makeNode("node-d")
        // Ending a node's task abruptly (no goodbye, handlers cancelled) is how the demo crashes node-a.
        let (crashSignal, crash) = AsyncStream<Void>.makeStream()
        return try await withThrowingTaskGroup(of: Void.self) { group in
            ledger.say("Starting node-a, node-b and node-c; the source lists \(self.resources) customer accounts.")
            group.addTask {
                await withTaskGroup(of: Void.self) { inner in
                    inner.addTask { try? await nodes[0].run() }
                    inner.addTask { for await _ in crashSignal { break } }
                    await inner.next()
                    inner.cancelAll()
                }
            }
            for node in nodes.dropFirst() { group.addTask { try await node.run() } }
            ok = try await waitUntil("every account running on three nodes") {
                let running = ledger.running
                return running.count == self.resources && Set(running.values).count == min(3, self.resources)
            }
            table("Every account runs on exactly one node:")

            let extra = Resource(id: "acct-new", attributes: ["kind": .string("websocket")])
            let owner =
                nodes[0].status().view.isEmpty
                ? "?" : (Placement(nodes: nodes[1].status().view).owner(of: extra.id)?.name ?? "?")
            ledger.say("Allocating acct-new through node-b; its owner is \(owner).")
            let outcome = await nodes[1].allocate(extra)
            ledger.say("→ \(Self.describe(outcome))")
            ok = ok && outcome.succeeded

            ledger.say("node-c leaves gracefully: it terminates its accounts, then the others take them over.")
            let beforeLeave = ledger.running.filter { $0.value == "node-c" }.count
            await nodes[2].stop()
            ok =
                try await waitUntil("node-c's accounts moved") {
                    let running = ledger.running
                    return running.count == self.resources + 1 && !running.values.contains("node-c")
                } && ok
            table("\(beforeLeave) accounts moved from node-c:")

            ledger.say("node-d joins: it takes over its share, each one released by its old owner first.")
            group.addTask { try await late.run() }
            ok =
                try await waitUntil("node-d runs its share") {
                    ledger.running.values.contains("node-d") && ledger.running.count == self.resources + 1
                } && ok
            table("After node-d joined:")

            ledger.say("node-a crashes (its network is cut): the others declare it dead and take over its accounts.")
            let crashedAt = ContinuousClock.now
            network.isolate("node-a:7946")
            crash.finish()
            ledger.crashed("node-a")
            ok =
                try await waitUntil("node-a's accounts taken over") {
                    ledger.running.count == self.resources + 1 && !ledger.running.values.contains("node-a")
                } && ok
            ledger.say(
                String(
                    format: "→ every account runs again, %.2f s after the crash.",
                    (ContinuousClock.now - crashedAt).secondsDouble
                )
            )
            table("After node-a crashed:")

            ledger.say("Deallocating acct-1 through node-d.")
            let removal = await late.deallocate("acct-1")
            ledger.say("→ \(Self.describe(removal))")
            ok = ok && removal.succeeded

            for node in [nodes[1], late] { await node.stop() }
            group.cancelAll()
            try? await group.waitForAll()

            let state = ledger.state.withLock { $0 }
            ledger.say(
                "Done: \(state.handles) handles, \(state.terminations) terminations, \(state.overlaps.count) overlaps."
            )
            for overlap in state.overlaps { ledger.say("✗ overlap: \(overlap)") }
            if state.overlaps.isEmpty && ok {
                ledger.say("✓ no account ever ran on two nodes at once, and every request was answered.")
            }
            return ok && state.overlaps.isEmpty
        }
    }
}
