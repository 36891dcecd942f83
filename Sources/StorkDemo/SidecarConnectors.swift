import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import StorkCore
import StorkNATS
import StorkBus
import Synchronization
import WSClient

// MARK: - SidecarConnectors
//
// The websocket connector, done by the demo process for nodes whose handler is a sidecar (`--connector sidecar`):
// a node's `handle` of a player arrives here as `POST /sidecar/resources/{id}` (with the player's attributes and the
// `Stork-Node` header), and this process then does what the node's own `websocket` connector does: connect to the
// player's `url`, publish every message to `subject` on that node's NATS endpoint, reconnect with backoff. `terminate`
// (`DELETE`) stops it, and so does the demo killing the node. It exists so that the demo runs against a Stork that has
// no connectors, and as a way to tell the connector's part from the cluster's when something goes wrong.

public final class SidecarConnectors: Sendable {
    struct Key: Hashable, Sendable {
        var node: String
        var player: String
    }

    struct Start: Sendable {
        var key: Key
        var url: String
        var subject: String
        var generation: Int
    }

    struct State {
        /// What runs, with the generation of its start (a stale connection loop stops when it sees a newer one).
        var running: [Key: Int] = [:]
        var generation = 0
        var starts: AsyncStream<Start>.Continuation?
    }

    let state = Mutex(State())
    let natsPort: @Sendable (String) -> Int?
    let logger: Logger
    let starts: AsyncStream<Start>

    /// - Parameter natsPort: the NATS port of a node, by name (nil for a node the demo does not know).
    public init(natsPort: @escaping @Sendable (String) -> Int?, logger: Logger) {
        self.natsPort = natsPort
        self.logger = logger
        let (starts, continuation) = AsyncStream.makeStream(of: Start.self)
        self.starts = starts
        self.state.withLock { $0.starts = continuation }
    }

    /// Runs the connections until cancelled.
    public func run() async {
        await withDiscardingTaskGroup { group in
            for await start in self.starts {
                group.addTask { await self.connect(start) }
            }
        }
    }

    public func stop() {
        self.state.withLock { state in
            state.running = [:]
            state.starts?.finish()
            state.starts = nil
        }
    }

    /// Every connection of `node` stops (the node was killed: nobody will call `terminate`).
    public func nodeKilled(_ node: String) {
        self.state.withLock { state in state.running = state.running.filter { $0.key.node != node } }
    }

    func isCurrent(_ start: Start) -> Bool {
        self.state.withLock { $0.running[start.key] == start.generation }
    }

    /// `POST /sidecar/resources/{id}` (handle) and `DELETE /sidecar/resources/{id}` (terminate).
    public func addRoutes(to router: Router<BasicRequestContext>) {
        router.post("/sidecar/resources/:id") { request, context -> Response in
            guard let id = context.parameters.get("id")?.removingPercentEncoding,
                let node = request.headers[HTTPField.Name("Stork-Node")!]
            else { return Response(status: .badRequest) }
            let body = try await request.body.collect(upTo: 1 << 16)
            guard let resource = try? JSONDecoder().decode(Resource.self, from: Data(buffer: body)),
                let url = resource.attributes["url"]?.stringValue,
                let subject = resource.attributes["subject"]?.stringValue
            else { return Response(status: .badRequest) }
            let accepted = self.state.withLock { state -> Bool in
                guard let starts = state.starts else { return false }
                state.generation += 1
                let key = Key(node: node, player: id)
                state.running[key] = state.generation
                starts.yield(Start(key: key, url: url, subject: subject, generation: state.generation))
                return true
            }
            return Response(status: accepted ? .ok : .serviceUnavailable)
        }
        router.delete("/sidecar/resources/:id") { request, context -> Response in
            guard let id = context.parameters.get("id")?.removingPercentEncoding,
                let node = request.headers[HTTPField.Name("Stork-Node")!]
            else { return Response(status: .badRequest) }
            self.state.withLock { _ = $0.running.removeValue(forKey: Key(node: node, player: id)) }
            return Response(status: .ok)
        }
    }

    // MARK: One connection

    /// Connects and reconnects (backoff 100 ms doubling to 2 s) while the start is current.
    func connect(_ start: Start) async {
        var backoff = Duration.milliseconds(100)
        while self.isCurrent(start), !Task.isCancelled {
            do {
                try await self.connectOnce(start)
                backoff = .milliseconds(100)
            } catch {
                self.logger.debug(
                    "connection failed",
                    metadata: [
                        "demo.player": "\(start.key.player)", "demo.node": "\(start.key.node)",
                        "demo.error": "\(error)",
                    ]
                )
            }
            guard self.isCurrent(start) else { return }
            try? await Task.sleep(for: backoff)
            backoff = min(backoff * 2, .seconds(2))
        }
    }

    func connectOnce(_ start: Start) async throws {
        guard let port = self.natsPort(start.key.node) else {
            throw StorkError(.invalidInput, "unknown node \(start.key.node)")
        }
        var options = NATSClient.Options()
        options.name = "demo-connector-\(start.key.player)"
        options.connectTimeout = .seconds(2)
        let nats = try await NATSClient.connect(host: "127.0.0.1", port: port, options: options)
        do {
            try await self.relay(start, to: nats)
        } catch {
            await nats.close()
            throw error
        }
        await nats.close()
    }

    /// Publishes every message of the player's feed connection on the node's NATS, while the start is current.
    private func relay(_ start: Start, to nats: NATSClient) async throws {
        var logger = self.logger
        logger.logLevel = .critical
        try await WebSocketClient.connect(url: start.url, logger: logger) { inbound, outbound, _ in
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    for try await message in inbound.messages(maxSize: 1 << 20) {
                        guard nats.isOpen else { throw StorkError(.unavailable, "the node's NATS connection closed") }
                        switch message {
                        case .text(let text): try nats.publish(start.subject, payload: ByteBuffer(string: text))
                        case .binary(let buffer): try nats.publish(start.subject, payload: buffer)
                        }
                    }
                }
                group.addTask {
                    // Ends the connection when this start stops being current or the node's NATS connection closes.
                    while self.isCurrent(start), nats.isOpen { try await Task.sleep(for: .milliseconds(100)) }
                    try? await outbound.close(.normalClosure, reason: nil)
                }
                _ = try await group.next()
                group.cancelAll()
            }
        }
    }
}
