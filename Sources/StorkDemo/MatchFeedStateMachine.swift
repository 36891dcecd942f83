import StorkCore

// MARK: - MatchFeedStateMachine
//
// The match feed's bookkeeping, with no I/O: which WebSocket connections each player has, and which of the player's
// shots are not yet confirmed. A shot stays pending from the moment the script releases it until the demo confirms
// it (it arrived over NATS). Pending shots are written again
//
//   * to every new connection of the player, before anything else (the player moved to another node, or its
//     connector reconnected), and
//   * to the player's open connections when they were last written `resendAfter` ago (a message published while
//     nobody listened on that node's NATS endpoint, a connection that died without the feed noticing yet).
//
// So a shot is lost only if the feed itself stops. The receiving side counts a shot once, by its id (`ShotTally`).

/// A WebSocket connection of the match feed, numbered by the feed.
public struct FeedConnectionID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var rawValue: Int

    public init(_ rawValue: Int) { self.rawValue = rawValue }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
    public var description: String { "c\(self.rawValue)" }
}

public struct MatchFeedStateMachine: Sendable {
    /// Counters for the report; they only grow.
    public struct Counters: Sendable, Hashable {
        /// Shots the script released (each once).
        public var released = 0
        /// Shots confirmed (each once).
        public var confirmed = 0
        /// Messages written to WebSockets, first writes and repeats together.
        public var writes = 0
        /// Writes of a shot that had been written before (to a new connection or after `resendAfter`).
        public var repeats = 0
        /// Connections opened and closed.
        public var connections = 0
        public var disconnections = 0
        /// Confirmations of shots that were already confirmed (a duplicate that reached the demo).
        public var lateConfirmations = 0
    }

    struct Pending: Sendable {
        var shot: Shot
        /// When it was last written to some connection; nil while it was never written.
        var lastWritten: StorkInstant?
    }

    struct PlayerState: Sendable {
        /// Open connections, oldest first.
        var connections: [FeedConnectionID] = []
        /// Pending shots by sequence.
        var pending: [Int: Pending] = [:]
    }

    public enum ConnectAction: Sendable, Hashable {
        /// Write these pending shots (in match order, possibly none) to the new connection, then what comes.
        case accept(backlog: [Shot])
        /// No such player: refuse the connection.
        case reject
    }

    public enum ReleaseAction: Sendable, Hashable {
        /// Write the shot to these connections of its player.
        case write(Shot, to: [FeedConnectionID])
        /// The player has no connection: the shot waits for the next one.
        case hold(Shot)
    }

    public enum ConfirmAction: Sendable, Hashable {
        /// The shot was pending and is now confirmed.
        case confirmed(Shot)
        /// It had been confirmed before (a duplicate delivery).
        case alreadyConfirmed
        /// No shot of the match has that sequence, or it was not released yet.
        case unknown
    }

    /// Writes due at a tick: per connection, the shots to write again, in match order.
    public struct Resend: Sendable, Hashable {
        public var connection: FeedConnectionID
        public var shots: [Shot]
    }

    public let resendAfter: Duration
    var players: [String: PlayerState]
    var confirmedSequences: Set<Int> = []
    var releasedSequences: Set<Int> = []
    public private(set) var counters = Counters()

    public init(playerIDs: [String], resendAfter: Duration = .seconds(3)) {
        self.resendAfter = resendAfter
        self.players = Dictionary(uniqueKeysWithValues: playerIDs.map { ($0, PlayerState()) })
    }

    // MARK: Events

    /// A connection for `player` opened.
    public mutating func onConnect(_ connection: FeedConnectionID, player: String, now: StorkInstant) -> ConnectAction {
        guard var state = self.players[player] else { return .reject }
        precondition(!state.connections.contains(connection), "connection \(connection) of \(player) opened twice")
        state.connections.append(connection)
        var backlog: [Shot] = []
        for sequence in state.pending.keys.sorted() {
            // A held shot (never written) is written for the first time here; any other one is a repeat.
            if state.pending[sequence]!.lastWritten != nil { self.counters.repeats += 1 }
            state.pending[sequence]!.lastWritten = now
            backlog.append(state.pending[sequence]!.shot)
        }
        self.players[player] = state
        self.counters.connections += 1
        self.counters.writes += backlog.count
        return .accept(backlog: backlog)
    }

    /// A connection closed (either side).
    public mutating func onDisconnect(_ connection: FeedConnectionID, player: String) {
        guard var state = self.players[player], let index = state.connections.firstIndex(of: connection) else { return }
        state.connections.remove(at: index)
        self.players[player] = state
        self.counters.disconnections += 1
    }

    /// The script reached `shot`.
    public mutating func onRelease(_ shot: Shot, now: StorkInstant) -> ReleaseAction {
        guard var state = self.players[shot.playerID] else {
            preconditionFailure("the script released \(shot.id) of \(shot.playerID), who is not in the match")
        }
        precondition(self.releasedSequences.insert(shot.sequence).inserted, "\(shot.id) released twice")
        self.counters.released += 1
        state.pending[shot.sequence] = Pending(shot: shot, lastWritten: state.connections.isEmpty ? nil : now)
        self.players[shot.playerID] = state
        guard !state.connections.isEmpty else { return .hold(shot) }
        self.counters.writes += state.connections.count
        return .write(shot, to: state.connections)
    }

    /// The demo received the shot with `sequence` over NATS.
    public mutating func onConfirm(_ sequence: Int) -> ConfirmAction {
        guard self.releasedSequences.contains(sequence) else { return .unknown }
        guard self.confirmedSequences.insert(sequence).inserted else {
            self.counters.lateConfirmations += 1
            return .alreadyConfirmed
        }
        for (player, var state) in self.players {
            if let pending = state.pending.removeValue(forKey: sequence) {
                self.players[player] = state
                self.counters.confirmed += 1
                return .confirmed(pending.shot)
            }
        }
        preconditionFailure("\(Shot.id(sequence)) was released and not confirmed, but no player has it pending")
    }

    /// A periodic tick: pending shots last written `resendAfter` ago (or never) go again to the player's open
    /// connections.
    public mutating func onTick(now: StorkInstant) -> [Resend] {
        var resends: [Resend] = []
        for player in self.players.keys.sorted() {
            var state = self.players[player]!
            guard !state.connections.isEmpty, !state.pending.isEmpty else { continue }
            var due: [Shot] = []
            for sequence in state.pending.keys.sorted() {
                let pending = state.pending[sequence]!
                if let last = pending.lastWritten, now - last < self.resendAfter { continue }
                due.append(pending.shot)
                self.counters.writes += state.connections.count
                if pending.lastWritten != nil { self.counters.repeats += state.connections.count }
                state.pending[sequence]!.lastWritten = now
            }
            guard !due.isEmpty else { continue }
            self.players[player] = state
            for connection in state.connections { resends.append(Resend(connection: connection, shots: due)) }
        }
        return resends
    }

    // MARK: Reading

    /// Shots released and not confirmed, in match order.
    public var pending: [Shot] {
        self.players.values.flatMap { $0.pending.values.map(\.shot) }.sorted { $0.sequence < $1.sequence }
    }

    /// How many connections each player has open.
    public var connectionCounts: [String: Int] {
        self.players.mapValues(\.connections.count)
    }

    public func isConfirmed(_ sequence: Int) -> Bool { self.confirmedSequences.contains(sequence) }
}
