import Foundation
import Hummingbird
import NIOCore
import StorkCore

// MARK: - DemoWebApp
//
// The demo's HTTP server (base+300):
//
//   GET  /                      the page (HTML and JavaScript, no external assets)
//   GET  /api/state             everything the page shows, as JSON (the page polls it)
//   POST /api/nodes             start a new node                          → 201 {"node": "n4"}
//   POST /api/nodes/kill        SIGKILL the oldest live node              → 200 {"node": "n1"}
//   POST /api/nodes/{name}/kill SIGKILL that node                         → 200 {"node": "n2"}
//   GET  /resources             the players, as the nodes' resource source reads them
//   POST/DELETE /sidecar/resources/{id}   with `--connector sidecar` only: the nodes' sidecar calls

struct DemoWebApp: Sendable {
    let world: DemoWorld
    let feed: MatchFeed
    let nodes: DemoCluster
    let controls: DemoControls
    let players: PlayerList

    func router() -> Router<BasicRequestContext> {
        let router = Router()
        router.get("/") { _, _ in
            Self.response(DemoPage.html, contentType: "text/html; charset=utf-8")
        }
        router.get("/api/state") { _, _ in
            Self.json(self.stateJSON())
        }
        router.post("/api/nodes") { _, _ in Self.nodeControl(status: .created) { try self.controls.add() } }
        router.post("/api/nodes/kill") { _, _ in Self.nodeControl { try self.controls.kill(nil) } }
        router.post("/api/nodes/:name/kill") { _, context in
            Self.nodeControl { try self.controls.kill(context.parameters.get("name")) }
        }
        router.get("/resources") { request, _ in
            let etag = "\"players-\(self.players.feedPort)\""
            if request.headers[.ifNoneMatch] == etag { return Response(status: .notModified) }
            var response = Self.json(self.players.json)
            response.headers[.eTag] = etag
            return response
        }
        return router
    }

    /// The answer of a node control (start, kill): `{"node": name}` with the node it acted on, or the problem.
    static func nodeControl(status: HTTPResponse.Status = .ok, _ control: () throws -> String) -> Response {
        do {
            let node = try control()
            return Self.json(#"{"node":"\#(node)"}"#, status: status)
        } catch {
            return Self.problem(error)
        }
    }

    static func json(_ text: String, status: HTTPResponse.Status = .ok) -> Response {
        Self.response(text, contentType: "application/json", status: status)
    }

    static func response(_ text: String, contentType: String, status: HTTPResponse.Status = .ok) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = contentType
        headers[.cacheControl] = "no-store"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    static func problem(_ error: any Error) -> Response {
        let message = (error as? StorkError)?.message ?? "\(error)"
        let body = (try? JSONEncoder().encode(["error": message])).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
        return Self.json(body, status: .conflict)
    }

    // MARK: The state document

    struct StateDocument: Encodable {
        struct Match: Encodable {
            var home: String
            var away: String
            var score: String
            var minute: Int
            var phase: String
            var lastMinute: Int
        }
        struct Node: Encodable {
            var name: String
            var status: String
            var subscribed: Bool
            var players: Int
            var shots: Int
            var admin: String
            var nats: String
        }
        struct Player: Encodable {
            var id: String
            var name: String
            var number: Int
            var team: String
            var owner: String?
            var shots: Int
            var connections: Int
        }
        struct Arrival: Encodable {
            var shot: String
            var minute: Int
            var player: String
            var name: String
            var team: String
            var outcome: String
            var score: String
            var node: String
            var at: Double
        }
        struct Move: Encodable {
            var at: Double
            var player: String
            var from: String
            var to: String
        }
        struct Line: Encodable {
            var at: Double
            var text: String
        }
        struct Counts: Encodable {
            var scripted: Int
            var sent: Int
            var writes: Int
            var repeats: Int
            var received: Int
            var duplicates: Int
            var unconfirmed: Int
            var lost: Int?
        }
        var elapsed: Double
        var match: Match
        var nodes: [Node]
        var players: [Player]
        var feed: [Arrival]
        var moves: [Move]
        var story: [Line]
        var counts: Counts
    }

    func stateJSON() -> String {
        let script = self.world.script
        let snapshot = self.feed.snapshot()
        let tally = self.world.tally
        let owners = self.world.owners
        let ownedBy = Dictionary(grouping: owners.keys, by: { owners[$0]! }).mapValues(\.count)
        let fullTime = snapshot.phase == .fullTime
        let document = StateDocument(
            elapsed: self.world.now.seconds,
            match: .init(
                home: script.home.name,
                away: script.away.name,
                score: "\(snapshot.score.home)-\(snapshot.score.away)",
                minute: snapshot.minute,
                phase: snapshot.phase.rawValue,
                lastMinute: script.lastMinute
            ),
            nodes: self.world.nodes.map { node in
                .init(
                    name: node.name,
                    status: node.status.rawValue,
                    subscribed: node.subscribed,
                    players: ownedBy[node.name] ?? 0,
                    shots: tally.perNode[node.name] ?? 0,
                    admin: "127.0.0.1:\(self.nodes.adminPort(node.name) ?? 0)",
                    nats: "127.0.0.1:\(self.nodes.natsPort(node.name) ?? 0)"
                )
            },
            players: script.players.map { player in
                .init(
                    id: player.id,
                    name: player.name,
                    number: player.number,
                    team: player.team.name,
                    owner: owners[player.id],
                    shots: tally.perPlayer[player.id] ?? 0,
                    connections: snapshot.connections[player.id] ?? 0
                )
            },
            feed: tally.recent.map { arrival in
                .init(
                    shot: arrival.message.shot,
                    minute: arrival.message.minute,
                    player: arrival.message.player,
                    name: arrival.message.name,
                    team: arrival.message.team,
                    outcome: arrival.message.outcome,
                    score: arrival.message.score,
                    node: arrival.node,
                    at: arrival.at.seconds
                )
            },
            moves: self.world.moves.suffix(40).reversed().map { move in
                .init(at: move.at.seconds, player: move.player, from: move.from, to: move.to)
            },
            story: self.world.story.suffix(30).reversed().map { .init(at: $0.at.seconds, text: $0.text) },
            counts: .init(
                scripted: script.shots.count,
                sent: snapshot.counters.released,
                writes: snapshot.counters.writes,
                repeats: snapshot.counters.repeats,
                received: tally.unique,
                duplicates: tally.duplicates,
                unconfirmed: snapshot.pending.count,
                lost: fullTime && snapshot.pending.isEmpty ? 0 : nil
            )
        )
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: (try? encoder.encode(document)) ?? Data("{}".utf8), as: UTF8.self)
    }
}
