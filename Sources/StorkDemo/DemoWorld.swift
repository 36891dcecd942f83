import Foundation
import StorkCore
import Synchronization

// MARK: - DemoWorld
//
// What the demo knows about its cluster, shared by the text story, the page's JSON and the node controls: the nodes
// and their status, who owns each player (read from the nodes' admin APIs), the moves seen, the shots received, and
// the story told so far. Changes come in as `on…` calls from the demo's tasks; each prints its part of the story.

public final class DemoWorld: Sendable {
    public enum NodeStatus: String, Sendable, Codable {
        /// Started, not answering its admin API yet.
        case starting
        /// Answers its admin API.
        case live
        /// The demo sent it SIGKILL.
        case killed
        /// Exited by itself (a port in use, a crash): see its log.
        case exited
        /// Stopped at the end of the demo (SIGTERM).
        case stopped
    }

    public struct Node: Sendable {
        public var name: String
        public var index: Int
        public var status: NodeStatus
        /// The demo's NATS subscription on this node is active.
        public var subscribed = false
        public var startedAt: StorkInstant
        public var endedAt: StorkInstant?
    }

    public struct Move: Sendable {
        public var at: StorkInstant
        public var player: String
        public var from: String
        public var to: String
    }

    public struct Line: Sendable {
        public var at: StorkInstant
        public var text: String
    }

    /// A kill whose players are not all running elsewhere yet, or a join that has not taken its share yet.
    struct Recovery: Sendable {
        enum Kind: Sendable {
            case kill(orphans: Set<String>)
            case join
        }
        var node: String
        var kind: Kind
        var since: StorkInstant
    }

    struct State {
        var nodes: [String: Node] = [:]
        var owners: [String: String] = [:]
        /// The last owner seen of every player (kept while a player has no owner, after a kill).
        var lastKnown: [String: String] = [:]
        var moves: [Move] = []
        var story: [Line] = []
        var tally = ShotTally()
        var recoveries: [Recovery] = []
        /// Players listed as running by two live nodes in one round of polling.
        var overlaps: [String] = []
    }

    public let script: MatchScript
    let origin: ContinuousClock.Instant
    let state = Mutex(State())
    /// Whether the story is printed on standard output (it is always kept for the page).
    let printing: Bool

    public init(script: MatchScript, origin: ContinuousClock.Instant, printing: Bool = true) {
        self.script = script
        self.origin = origin
        self.printing = printing
    }

    public var now: StorkInstant {
        StorkInstant(nanoseconds: (ContinuousClock.now - self.origin).nanosecondsClamped)
    }

    // MARK: The story

    /// Prints a line of the story with the time since the demo started, and keeps it for the page.
    public func say(_ text: String) {
        let now = self.now
        self.state.withLock { state in
            state.story.append(Line(at: now, text: text))
            if state.story.count > 400 { state.story.removeFirst(state.story.count - 400) }
        }
        guard self.printing else { return }
        print(String(format: "[%6.2fs] ", now.seconds) + text)
        fflush(nil)
    }

    /// Prints lines that belong to the previous story line (a table), without a time.
    public func sayMore(_ lines: [String]) {
        guard self.printing else { return }
        for line in lines { print("           " + line) }
        fflush(nil)
    }

    // MARK: Nodes

    func onNodeStarted(_ name: String, index: Int) {
        let now = self.now
        self.state.withLock { state in
            state.nodes[name] = Node(name: name, index: index, status: .starting, startedAt: now)
            state.recoveries.append(Recovery(node: name, kind: .join, since: now))
        }
    }

    func onNodeKilled(_ name: String) -> [String] {
        let now = self.now
        return self.state.withLock { state in
            state.nodes[name]?.status = .killed
            state.nodes[name]?.endedAt = now
            state.nodes[name]?.subscribed = false
            let orphans = state.owners.filter { $0.value == name }.map(\.key)
            for orphan in orphans { state.owners[orphan] = nil }
            state.recoveries.removeAll { $0.node == name }
            state.recoveries.append(Recovery(node: name, kind: .kill(orphans: Set(orphans)), since: now))
            return orphans.sorted(by: Self.playerOrder)
        }
    }

    func onNodeEnded(_ name: String, status: NodeStatus) {
        let now = self.now
        self.state.withLock { state in
            guard let node = state.nodes[name], node.status == .starting || node.status == .live else { return }
            state.nodes[name]?.status = status
            state.nodes[name]?.endedAt = now
            state.nodes[name]?.subscribed = false
            state.recoveries.removeAll { $0.node == name }
            for (player, owner) in state.owners where owner == name { state.owners[player] = nil }
        }
    }

    func onSubscription(_ name: String, active: Bool) {
        self.state.withLock { $0.nodes[name]?.subscribed = active }
    }

    public func node(_ name: String) -> Node? { self.state.withLock { $0.nodes[name] } }

    public var nodes: [Node] {
        self.state.withLock { Array($0.nodes.values) }.sorted { $0.index < $1.index }
    }

    public func isRunning(_ name: String) -> Bool {
        guard let status = self.node(name)?.status else { return false }
        return status == .starting || status == .live
    }

    // MARK: Owners

    /// What one round of polling the live nodes' admin APIs found: node → the players it runs. Nodes that did not
    /// answer are not in `listing`; their players keep their owner until the node is known to be gone.
    func onOwnersPolled(_ listing: [String: Set<String>]) {
        let now = self.now
        var lines: [String] = []
        self.state.withLock { state in
            for name in listing.keys where state.nodes[name]?.status == .starting {
                state.nodes[name]?.status = .live
            }
            // Nodes that did not answer keep their players for now.
            var owners = state.owners.filter { listing[$0.value] == nil && state.nodes[$0.value]?.status == .live }
            var listedBy: [String: String] = [:]
            for (node, players) in listing.sorted(by: { $0.key < $1.key }) {
                guard state.nodes[node]?.status == .live else { continue }
                for player in players {
                    if let other = listedBy[player] {
                        // Two nodes listed it in one round (the round's requests are not one atomic read).
                        state.overlaps.append("\(player) on \(other) and \(node)")
                        // The one that did not have it before is the new owner.
                        if state.owners[player] == node { continue }
                    }
                    listedBy[player] = node
                    owners[player] = node
                }
            }
            var moved: [Move] = []
            for (player, owner) in owners.sorted(by: { Self.playerOrder($0.key, $1.key) }) {
                defer { state.lastKnown[player] = owner }
                guard let previous = state.lastKnown[player], previous != owner else { continue }
                moved.append(Move(at: now, player: player, from: previous, to: owner))
            }
            state.owners = owners
            state.moves.append(contentsOf: moved)
            if !moved.isEmpty {
                lines.append(
                    "moved: " + moved.map { "\($0.player) \($0.from) → \($0.to)" }.joined(separator: ", ")
                )
            }
            lines.append(
                contentsOf: state.finishRecoveries(
                    now: now,
                    players: self.script.players.map(\.id),
                    moved: !moved.isEmpty
                )
            )
        }
        for line in lines { self.say(line) }
    }

    public var owners: [String: String] { self.state.withLock { $0.owners } }

    public var moves: [Move] { self.state.withLock { $0.moves } }

    public var overlaps: [String] { self.state.withLock { $0.overlaps } }

    /// Kills and joins that have not settled yet.
    public var unsettled: Int { self.state.withLock { $0.recoveries.count } }

    // MARK: Shots

    /// A message arrived on `demo.shots.>` from `node`'s NATS endpoint. Returns the shot's sequence when it is a
    /// shot (new or not), so that the feed can be told.
    /// A shot received on node `receivedOn`: counted for the node that runs its player (the one that published it),
    /// as the last poll of the owners found it, or for `receivedOn` when no owner is known.
    func onShotMessage(_ payload: [UInt8], receivedOn: String) -> Int? {
        let message: ShotMessage
        do {
            message = try ShotMessage.decode(payload)
        } catch {
            self.state.withLock { $0.tally.onMalformed() }
            return nil
        }
        let now = self.now
        let (outcome, node) = self.state.withLock { state in
            let node = state.owners[message.player] ?? receivedOn
            return (state.tally.onMessage(message, node: node, now: now), node)
        }
        if case .new(_, let overtaken) = outcome {
            let mark = message.outcome == "goal" ? "GOAL" : message.outcome
            self.say(
                "\(message.minute)' \(message.shot) \(message.player) \(message.name) (\(message.team)): \(mark)"
                    + (message.outcome == "goal" ? ", \(message.score)" : "") + " — via \(node)"
                    + (overtaken ? " (late: the feed kept it until \(message.player) was connected again)" : "")
            )
        }
        return message.sequence
    }

    public var tally: ShotTally { self.state.withLock { $0.tally } }

    public var story: [Line] { self.state.withLock { $0.story } }

    static func playerOrder(_ a: String, _ b: String) -> Bool {
        a.localizedStandardCompare(b) == .orderedAscending
    }
}

extension DemoWorld.State {
    /// Kills whose orphans all run elsewhere, and joins whose node runs players while nothing moved in this poll.
    mutating func finishRecoveries(now: StorkInstant, players: [String], moved: Bool) -> [String] {
        var lines: [String] = []
        let allOwned = players.allSatisfy { self.owners[$0] != nil }
        self.recoveries.removeAll { recovery in
            let seconds = String(format: "%.2f", (now - recovery.since).secondsDouble)
            switch recovery.kind {
            case .kill(let orphans):
                guard orphans.allSatisfy({ self.owners[$0] != nil }) else { return false }
                guard !orphans.isEmpty else {
                    lines.append("→ \(recovery.node) ran no player; nothing to move")
                    return true
                }
                let receivers = Dictionary(grouping: orphans.compactMap { self.owners[$0] }, by: { $0 })
                    .mapValues(\.count).sorted { $0.key < $1.key }.map { "\($0.key) +\($0.value)" }
                lines.append(
                    "→ all \(orphans.count) players of \(recovery.node) run again elsewhere, \(seconds) s after the kill ("
                        + receivers.joined(separator: ", ") + ")"
                )
                return true
            case .join:
                let taken = self.owners.values.filter { $0 == recovery.node }.count
                guard taken > 0, allOwned, !moved, self.nodes[recovery.node]?.status == .live else { return false }
                lines.append("→ \(recovery.node) runs \(taken) players, \(seconds) s after it started")
                return true
            }
        }
        return lines
    }
}
