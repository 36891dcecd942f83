import Foundation
import StorkCore

// MARK: - ShotMessage
//
// A shot as the feed writes it to a player's WebSocket, and as it arrives over NATS (the connector publishes the
// WebSocket message's bytes unchanged). JSON text; a repeat of a shot is byte for byte the same message.

public struct ShotMessage: Codable, Sendable, Hashable {
    /// `shot-07`: unique in the match, the key of deduplication.
    public var shot: String
    public var sequence: Int
    public var minute: Int
    public var player: String
    public var name: String
    public var number: Int
    public var team: String
    public var outcome: String
    /// The score after this shot, home first: "1-0".
    public var score: String

    public init(_ shot: Shot, script: MatchScript) {
        let player = script.player(shot.playerID)
        self.shot = shot.id
        self.sequence = shot.sequence
        self.minute = shot.minute
        self.player = shot.playerID
        self.name = player?.name ?? shot.playerID
        self.number = player?.number ?? 0
        self.team = player?.team.name ?? "?"
        self.outcome = shot.outcome.rawValue
        let score = script.score(after: script.shots.prefix(shot.sequence))
        self.score = "\(score.home)-\(score.away)"
    }

    /// The message's JSON text (keys sorted, so that a repeat is identical).
    public var json: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Encoding a struct of strings and integers cannot fail.
        return String(decoding: (try? encoder.encode(self)) ?? Data(), as: UTF8.self)
    }

    /// Parses a message that arrived over NATS; anything else is an `invalidInput` error.
    public static func decode(_ bytes: some Sequence<UInt8>) throws -> ShotMessage {
        let data = Data(bytes)
        do {
            return try JSONDecoder().decode(ShotMessage.self, from: data)
        } catch {
            throw StorkError(.invalidInput, "not a shot message (\(data.count) bytes)", underlying: error)
        }
    }
}

// MARK: - ShotTally
//
// The receiving side: every shot that arrives over NATS goes through here; a shot seen before (a repeat of the feed,
// or the same shot published by two connectors while a player moved) counts as a duplicate, not as a shot.

public struct ShotTally: Sendable {
    /// A shot as it first arrived.
    public struct Arrival: Sendable, Hashable {
        public var message: ShotMessage
        /// The node whose NATS endpoint delivered it.
        public var node: String
        public var at: StorkInstant
    }

    public enum Outcome: Sendable, Hashable {
        /// The first arrival of the shot; `overtaken` when a later shot arrived before it (it waited for its player
        /// to reconnect).
        case new(Arrival, overtaken: Bool)
        case duplicate
    }

    /// How many of the latest arrivals `recent` keeps.
    public var recentLimit = 60
    public private(set) var arrivals: [Int: Arrival] = [:]
    public private(set) var duplicates = 0
    /// The highest sequence received so far.
    public private(set) var highest = 0
    /// Messages on the demo's subjects that were not shots.
    public private(set) var malformed = 0
    public private(set) var perPlayer: [String: Int] = [:]
    public private(set) var perNode: [String: Int] = [:]
    /// The latest arrivals, newest first.
    public private(set) var recent: [Arrival] = []

    public init() {}

    public var unique: Int { self.arrivals.count }

    public mutating func onMessage(_ message: ShotMessage, node: String, now: StorkInstant) -> Outcome {
        guard self.arrivals[message.sequence] == nil else {
            self.duplicates += 1
            return .duplicate
        }
        let arrival = Arrival(message: message, node: node, at: now)
        self.arrivals[message.sequence] = arrival
        self.perPlayer[message.player, default: 0] += 1
        self.perNode[node, default: 0] += 1
        self.recent.insert(arrival, at: 0)
        if self.recent.count > self.recentLimit { self.recent.removeLast(self.recent.count - self.recentLimit) }
        defer { self.highest = max(self.highest, message.sequence) }
        return .new(arrival, overtaken: message.sequence < self.highest)
    }

    public mutating func onMalformed() {
        self.malformed += 1
    }

    public func received(_ sequence: Int) -> Bool { self.arrivals[sequence] != nil }
}
