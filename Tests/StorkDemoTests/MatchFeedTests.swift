import Foundation
import StorkCore
import Testing

@testable import StorkDemo

// MARK: - The script

@Suite("Match script")
struct MatchScriptTests {
    let script = MatchScript.standard

    @Test("22 players with unique ids player-1 … player-22, eleven a side")
    func players() {
        #expect(self.script.players.count == 22)
        #expect(Set(self.script.players.map(\.id)).count == 22)
        #expect(self.script.players.map(\.id) == (1...22).map { "player-\($0)" })
        #expect(self.script.players.filter { $0.team == self.script.home }.count == 11)
        #expect(self.script.players.filter { $0.team == self.script.away }.count == 11)
    }

    @Test("shots are numbered 1…n in match order, by known players, within the match")
    func shots() {
        #expect(self.script.shots.count >= 30)
        #expect(self.script.shots.map(\.sequence) == Array(1...self.script.shots.count))
        #expect(self.script.shots.map(\.minute) == self.script.shots.map(\.minute).sorted())
        #expect(self.script.shots.allSatisfy { self.script.player($0.playerID) != nil })
        #expect(self.script.shots.allSatisfy { (1...self.script.lastMinute).contains($0.minute) })
        #expect(Set(self.script.shots.map(\.id)).count == self.script.shots.count)
        #expect(self.script.shots[6].id == "shot-07")
        let score = self.script.score(after: self.script.shots)
        #expect(score.home == 3 && score.away == 2)
    }

    @Test("due times grow with the minute and end within the match's length")
    func timing() {
        let length = Duration.seconds(40)
        let dues = self.script.shots.map { self.script.due($0, length: length) }
        #expect(dues == dues.sorted())
        #expect(dues.allSatisfy { $0 >= .zero && $0 <= length })
        #expect(self.script.due(minute: self.script.lastMinute, length: length) == length)
        #expect(self.script.minute(at: .zero, length: length) == 0)
        #expect(self.script.minute(at: length, length: length) == self.script.lastMinute)
        #expect(self.script.minute(at: length / 2, length: length) == self.script.lastMinute / 2)
    }

    @Test("a shot message carries the shot and the score, and reads back the same")
    func message() throws {
        let goal = self.script.shots.first { $0.outcome == .goal }!
        let message = ShotMessage(goal, script: self.script)
        #expect(message.shot == goal.id)
        #expect(message.score == "1-0")
        #expect(message.team == self.script.home.name)
        #expect(try ShotMessage.decode(Array(message.json.utf8)) == message)
        #expect(message.json == ShotMessage(goal, script: self.script).json, "a repeat is byte for byte the same")
        #expect(throws: StorkError.self) { try ShotMessage.decode(Array("{\"shot\":1}".utf8)) }
        #expect(throws: StorkError.self) { try ShotMessage.decode(Array("not json".utf8)) }
    }
}

// MARK: - The feed's bookkeeping

@Suite("Match feed state machine")
struct MatchFeedStateMachineTests {
    let shots = (1...4).map { Shot(sequence: $0, minute: $0 * 10, playerID: $0 == 4 ? "b" : "a", outcome: .wide) }
    func at(_ seconds: Double) -> StorkInstant { StorkInstant(nanoseconds: Int64(seconds * 1e9)) }
    let c1 = FeedConnectionID(1)
    let c2 = FeedConnectionID(2)
    let c3 = FeedConnectionID(3)

    @Test("a shot with no connection is held, and the next connection gets it first")
    func heldUntilConnected() {
        var feed = MatchFeedStateMachine(playerIDs: ["a", "b"])
        #expect(feed.onRelease(self.shots[0], now: self.at(1)) == .hold(self.shots[0]))
        #expect(feed.onRelease(self.shots[1], now: self.at(2)) == .hold(self.shots[1]))
        #expect(
            feed.onConnect(self.c1, player: "a", now: self.at(3)) == .accept(backlog: [self.shots[0], self.shots[1]])
        )
        #expect(feed.counters.writes == 2)
        #expect(feed.counters.repeats == 0, "held shots were never written before")
        #expect(feed.onConnect(self.c2, player: "b", now: self.at(3)) == .accept(backlog: []))
    }

    @Test("released shots go to every open connection of their player; unknown players are refused")
    func release() {
        var feed = MatchFeedStateMachine(playerIDs: ["a", "b"])
        #expect(feed.onConnect(self.c1, player: "a", now: self.at(0)) == .accept(backlog: []))
        #expect(feed.onConnect(self.c2, player: "a", now: self.at(0)) == .accept(backlog: []))
        #expect(feed.onConnect(self.c3, player: "b", now: self.at(0)) == .accept(backlog: []))
        #expect(feed.onRelease(self.shots[0], now: self.at(1)) == .write(self.shots[0], to: [self.c1, self.c2]))
        #expect(feed.onRelease(self.shots[3], now: self.at(1)) == .write(self.shots[3], to: [self.c3]))
        #expect(feed.onConnect(FeedConnectionID(9), player: "nobody", now: self.at(1)) == .reject)
        #expect(feed.counters.released == 2)
        #expect(feed.counters.writes == 3)
    }

    @Test("a new connection receives only the player's unconfirmed shots, in match order")
    func resendOnReconnect() {
        var feed = MatchFeedStateMachine(playerIDs: ["a", "b"])
        _ = feed.onConnect(self.c1, player: "a", now: self.at(0))
        for shot in self.shots.prefix(3) { _ = feed.onRelease(shot, now: self.at(1)) }
        #expect(feed.onConfirm(2) == .confirmed(self.shots[1]))
        feed.onDisconnect(self.c1, player: "a")
        #expect(
            feed.onConnect(self.c2, player: "a", now: self.at(2)) == .accept(backlog: [self.shots[0], self.shots[2]])
        )
        #expect(feed.counters.repeats == 2)
        #expect(feed.pending == [self.shots[0], self.shots[2]])
    }

    @Test("confirmations: once each; again is a duplicate; unreleased or unknown sequences are unknown")
    func confirm() {
        var feed = MatchFeedStateMachine(playerIDs: ["a", "b"])
        _ = feed.onRelease(self.shots[0], now: self.at(1))
        #expect(feed.onConfirm(1) == .confirmed(self.shots[0]))
        #expect(feed.onConfirm(1) == .alreadyConfirmed)
        #expect(feed.onConfirm(2) == .unknown)
        #expect(feed.onConfirm(99) == .unknown)
        #expect(feed.counters.confirmed == 1)
        #expect(feed.counters.lateConfirmations == 1)
        #expect(feed.pending.isEmpty)
        #expect(feed.isConfirmed(1))
    }

    @Test("ticks repeat shots unconfirmed for resendAfter to the open connections, and no sooner")
    func resendOnTick() {
        var feed = MatchFeedStateMachine(playerIDs: ["a", "b"], resendAfter: .seconds(3))
        _ = feed.onConnect(self.c1, player: "a", now: self.at(0))
        _ = feed.onRelease(self.shots[0], now: self.at(1))
        _ = feed.onRelease(self.shots[1], now: self.at(2))
        #expect(feed.onTick(now: self.at(3.5)) == [])
        #expect(feed.onTick(now: self.at(4)) == [.init(connection: self.c1, shots: [self.shots[0]])])
        _ = feed.onConfirm(2)
        #expect(feed.onTick(now: self.at(5.5)) == [], "shot 2 is confirmed; shot 1 was just repeated")
        #expect(feed.onTick(now: self.at(7)) == [.init(connection: self.c1, shots: [self.shots[0]])])
        feed.onDisconnect(self.c1, player: "a")
        #expect(feed.onTick(now: self.at(20)) == [], "nothing to write to without a connection")
        #expect(feed.counters.repeats == 2)
        #expect(feed.counters.disconnections == 1)
    }

    @Test("a player's connections are counted; closing an unknown connection changes nothing")
    func connections() {
        var feed = MatchFeedStateMachine(playerIDs: ["a", "b"])
        _ = feed.onConnect(self.c1, player: "a", now: self.at(0))
        _ = feed.onConnect(self.c2, player: "a", now: self.at(0))
        feed.onDisconnect(self.c3, player: "a")
        feed.onDisconnect(self.c1, player: "nobody")
        #expect(feed.connectionCounts == ["a": 2, "b": 0])
        feed.onDisconnect(self.c1, player: "a")
        #expect(feed.connectionCounts == ["a": 1, "b": 0])
        #expect(feed.onRelease(self.shots[0], now: self.at(1)) == .write(self.shots[0], to: [self.c2]))
    }
}

// MARK: - The receiving side

@Suite("Shot tally")
struct ShotTallyTests {
    let script = MatchScript.standard

    func message(_ sequence: Int) -> ShotMessage {
        ShotMessage(self.script.shots[sequence - 1], script: self.script)
    }

    @Test("a shot counts once, whichever node delivers it again")
    func deduplicates() {
        var tally = ShotTally()
        let first = tally.onMessage(self.message(1), node: "n1", now: .zero)
        guard case .new(let arrival, overtaken: false) = first else {
            Issue.record("the first delivery must be new: \(first)")
            return
        }
        #expect(arrival.node == "n1")
        #expect(tally.onMessage(self.message(1), node: "n2", now: .zero) == .duplicate)
        #expect(tally.onMessage(self.message(1), node: "n1", now: .zero) == .duplicate)
        #expect(tally.onMessage(self.message(3), node: "n2", now: .zero) != .duplicate)
        guard case .new(_, overtaken: true) = tally.onMessage(self.message(2), node: "n2", now: .zero) else {
            Issue.record("shot 2 is new, and overtaken by shot 3")
            return
        }
        #expect(tally.unique == 3)
        #expect(tally.duplicates == 2)
        #expect(tally.perNode == ["n1": 1, "n2": 2])
        #expect(tally.perPlayer[self.script.shots[0].playerID] == 1)
        #expect(tally.recent.map(\.message.sequence) == [2, 3, 1])
        #expect(tally.received(1) && tally.received(2) && tally.received(3) && !tally.received(4))
    }

    @Test("recent keeps the latest arrivals only")
    func recentIsBounded() {
        var tally = ShotTally()
        tally.recentLimit = 5
        for sequence in 1...12 { _ = tally.onMessage(self.message(sequence), node: "n1", now: .zero) }
        #expect(tally.recent.map(\.message.sequence) == [12, 11, 10, 9, 8])
        #expect(tally.unique == 12)
    }
}
