import Foundation
import Logging
import StorkCore
import StorkTestKit
import Synchronization
import Testing
import WSClient

@testable import StorkDemo

/// The match feed over real WebSockets on loopback: shots arrive as JSON text, and a shot not confirmed is written
/// again to the player's next connection.
@Suite("Match feed server")
struct MatchFeedServerTests {
    /// Four shots in ten minutes by two players, played in 0.4 s.
    static let script: MatchScript = {
        let home = Team(name: "Home", code: "HOM")
        let away = Team(name: "Away", code: "AWA")
        let players = [
            Player(id: "player-1", name: "One", number: 9, team: home),
            Player(id: "player-2", name: "Two", number: 10, team: away),
        ]
        let shots = [
            Shot(sequence: 1, minute: 1, playerID: "player-1", outcome: .wide),
            Shot(sequence: 2, minute: 3, playerID: "player-1", outcome: .goal),
            Shot(sequence: 3, minute: 5, playerID: "player-2", outcome: .saved),
            Shot(sequence: 4, minute: 7, playerID: "player-1", outcome: .saved),
        ]
        return MatchScript(home: home, away: away, players: players, shots: shots, lastMinute: 10)
    }()

    /// Connects to the player's URL and returns the first `count` text messages as shot messages.
    func receive(_ count: Int, from url: String) async throws -> [ShotMessage] {
        let received = Mutex<[ShotMessage]>([])
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        try await WebSocketClient.connect(url: url, logger: logger) { inbound, outbound, _ in
            for try await message in inbound.messages(maxSize: 1 << 16) {
                guard case .text(let text) = message else { continue }
                let done = try received.withLock { messages in
                    messages.append(try ShotMessage.decode(Array(text.utf8)))
                    return messages.count >= count
                }
                if done { break }
            }
            try await outbound.close(.normalClosure, reason: nil)
        }
        return received.withLock { $0 }
    }

    @Test("a player's connection receives its shots; a new connection receives the unconfirmed ones first")
    func resendsUnconfirmed() async throws {
        let feed = MatchFeed(script: Self.script, resendAfter: .seconds(60))
        let port = Mutex<Int?>(nil)
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let application = feed.application(port: 0, logger: logger) { bound in port.withLock { $0 = bound } }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await application.runService(gracefulShutdownSignals: []) }
            group.addTask { try await feed.run() }
            // Bounds, not speeds: a test process busy with fuzz suites on two cores can stall for seconds.
            #expect(await eventually(.seconds(60)) { port.withLock { $0 } != nil }, "the server listens")
            let url = "ws://127.0.0.1:\(port.withLock { $0! })/players/player-1"

            // The match is played while player-1's first connection is open: shots 1, 2 and 4 are its.
            async let first = self.receive(3, from: url)
            // Play once the feed has registered the connection (from then on, every shot released goes to it).
            let connected = await eventually(.seconds(60)) { feed.snapshot().connections["player-1"] == 1 }
            #expect(connected, "player-1 connected")
            try await feed.play(length: .milliseconds(400))
            let firstShots = try await first
            #expect(firstShots.map(\.shot) == ["shot-01", "shot-02", "shot-04"])
            #expect(firstShots[1].outcome == "goal" && firstShots[1].score == "1-0")

            // Shot 2 arrived over NATS (say); 1 and 4 did not: the next connection gets those two, in order.
            #expect(feed.confirm(2) == .confirmed(Self.script.shots[1]))
            let second = try await self.receive(2, from: url)
            #expect(second.map(\.shot) == ["shot-01", "shot-04"])
            #expect(second[0] == firstShots[0], "a repeat is the same message")

            let snapshot = feed.snapshot()
            #expect(snapshot.phase == .fullTime)
            #expect(snapshot.counters.released == 4)
            #expect(snapshot.pending.map(\.sequence) == [1, 3, 4])
            #expect(snapshot.counters.repeats == 2)
            feed.stop()
            group.cancelAll()
        }
    }
}
