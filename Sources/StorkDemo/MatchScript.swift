import StorkCore

// MARK: - MatchScript
//
// The scripted football match that `stork demo` replays: two teams of eleven players and the shots of the match, as
// data. Everything here is deterministic: the same script, the same shot ids and the same timing on every run.

/// One side of the match.
public struct Team: Sendable, Hashable {
    public var name: String
    /// A short code for narrow places (the text story, the page's counters).
    public var code: String

    public init(name: String, code: String) {
        self.name = name
        self.code = code
    }
}

/// A player: one resource of kind `websocket` in the demo, with its own WebSocket URL on the match feed.
public struct Player: Sendable, Hashable {
    /// The resource id, e.g. `player-7`; also the last path segment of the player's feed URL.
    public var id: String
    public var name: String
    public var number: Int
    public var team: Team

    public init(id: String, name: String, number: Int, team: Team) {
        self.id = id
        self.name = name
        self.number = number
        self.team = team
    }
}

/// What became of a shot.
public enum ShotOutcome: String, Sendable, Hashable, CaseIterable {
    case goal
    case saved
    case wide
    case blocked
    case woodwork
}

/// One shot of the match. `sequence` is unique in the match and is the shot's id on the wire (`shot-07`).
public struct Shot: Sendable, Hashable {
    /// 1, 2, 3 … in match order.
    public var sequence: Int
    /// The match minute (1…90, then stoppage time as 91, 92 …).
    public var minute: Int
    public var playerID: String
    public var outcome: ShotOutcome

    public init(sequence: Int, minute: Int, playerID: String, outcome: ShotOutcome) {
        self.sequence = sequence
        self.minute = minute
        self.playerID = playerID
        self.outcome = outcome
    }

    /// The shot's id on the wire and in the receiving side's deduplication.
    public var id: String { Self.id(self.sequence) }

    public static func id(_ sequence: Int) -> String {
        sequence < 10 ? "shot-0\(sequence)" : "shot-\(sequence)"
    }
}

/// The match: its teams, players and shots, and when each shot is due in real time.
public struct MatchScript: Sendable {
    public var home: Team
    public var away: Team
    public var players: [Player]
    /// In match order; `shots[i].sequence == i + 1`.
    public var shots: [Shot]
    /// The last minute of the match (90 plus stoppage time): the final whistle.
    public var lastMinute: Int

    public init(home: Team, away: Team, players: [Player], shots: [Shot], lastMinute: Int) {
        self.home = home
        self.away = away
        self.players = players
        self.shots = shots
        self.lastMinute = lastMinute
    }

    public func player(_ id: String) -> Player? {
        self.players.first { $0.id == id }
    }

    /// When `shot` is due, counted from kick-off, when the whole match is played in `length` of real time.
    public func due(_ shot: Shot, length: Duration) -> Duration {
        self.due(minute: shot.minute, length: length)
    }

    /// When match minute `minute` starts, in real time from kick-off.
    public func due(minute: Int, length: Duration) -> Duration {
        length * (Double(max(0, min(minute, self.lastMinute))) / Double(self.lastMinute))
    }

    /// The match minute at `elapsed` real time after kick-off (0 before the first minute).
    public func minute(at elapsed: Duration, length: Duration) -> Int {
        guard length > .zero else { return self.lastMinute }
        let fraction = max(0, min(1, elapsed.secondsDouble / length.secondsDouble))
        return Int((fraction * Double(self.lastMinute)).rounded(.down))
    }

    /// Goals of each side among `shots` (for the score after some of them).
    public func score<S: Sequence>(after shots: S) -> (home: Int, away: Int) where S.Element == Shot {
        var home = 0
        var away = 0
        for shot in shots where shot.outcome == .goal {
            if self.player(shot.playerID)?.team == self.home { home += 1 } else { away += 1 }
        }
        return (home, away)
    }
}

// MARK: - The built-in match

extension MatchScript {
    /// Harbour City v Northfield Rovers: 22 players, 36 shots, 2-2 with a winner in stoppage time (3-2).
    public static let standard: MatchScript = {
        let home = Team(name: "Harbour City", code: "HAR")
        let away = Team(name: "Northfield Rovers", code: "NOR")
        let homeSquad: [(Int, String)] = [
            (1, "Moreau"), (2, "Okafor"), (4, "Lindqvist"), (5, "Brennan"), (3, "Adeyemi"), (6, "Castellano"),
            (8, "Novak"), (10, "Ferreira"), (7, "Quinn"), (9, "Takahashi"), (11, "Haddad"),
        ]
        let awaySquad: [(Int, String)] = [
            (1, "Sørensen"), (2, "Whitaker"), (5, "Mensah"), (4, "Kowalski"), (3, "Duarte"), (8, "Iversen"),
            (6, "Achterberg"), (10, "Rossi"), (7, "Nakamura"), (9, "O'Donnell"), (11, "Benali"),
        ]
        var players: [Player] = []
        for (number, name) in homeSquad {
            players.append(Player(id: "player-\(players.count + 1)", name: name, number: number, team: home))
        }
        for (number, name) in awaySquad {
            players.append(Player(id: "player-\(players.count + 1)", name: name, number: number, team: away))
        }
        // (minute, player index 1…22, outcome). Home: 1…11, away: 12…22.
        let events: [(Int, Int, ShotOutcome)] = [
            (3, 10, .wide), (6, 21, .saved), (9, 8, .blocked), (12, 10, .goal), (14, 20, .wide),
            (17, 11, .saved), (19, 18, .blocked), (22, 21, .goal), (25, 7, .wide), (27, 9, .woodwork),
            (30, 19, .saved), (33, 10, .saved), (36, 22, .wide), (38, 6, .blocked), (41, 21, .saved),
            (44, 11, .goal), (45, 16, .wide), (48, 20, .saved), (51, 9, .wide), (53, 17, .blocked),
            (56, 22, .goal), (59, 10, .saved), (61, 4, .wide), (64, 18, .woodwork), (66, 8, .saved),
            (69, 21, .wide), (72, 11, .blocked), (74, 19, .saved), (77, 10, .wide), (79, 13, .wide),
            (82, 9, .saved), (84, 21, .blocked), (86, 7, .wide), (88, 20, .saved), (90, 11, .saved),
            (93, 10, .goal),
        ]
        let shots = events.enumerated().map { index, event in
            Shot(sequence: index + 1, minute: event.0, playerID: "player-\(event.1)", outcome: event.2)
        }
        return MatchScript(home: home, away: away, players: players, shots: shots, lastMinute: 95)
    }()
}
