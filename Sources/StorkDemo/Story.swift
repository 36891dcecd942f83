import Foundation
import StorkCore

// MARK: - Story
//
// The demo's script around the match: start the cluster, wait until every player runs and is connected to the
// feed, kick off, kill a node and add one on schedule (with `autoMoves`), wait for the last shots after the final
// whistle, and report. Everything it does is told as text; the page shows the same.

struct Story: Sendable {
    let configuration: LiveDemoConfiguration
    let world: DemoWorld
    let feed: MatchFeed
    let nodes: DemoCluster
    let controls: DemoControls
    let servers: ServersUp
    let stop: DemoStopSignal
    let directory: URL
    let origin: ContinuousClock.Instant

    var script: MatchScript { self.world.script }

    /// Waits until `condition` holds, the demo is stopped, or `timeout` passes; returns the condition.
    func wait(_ timeout: Duration, until condition: () -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline, !self.stop.isStopped, !Task.isCancelled {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(100))
        }
        return condition()
    }

    /// Sleeps until `instant` or until the demo is stopped.
    func sleep(until instant: ContinuousClock.Instant) async {
        while ContinuousClock.now < instant, !self.stop.isStopped, !Task.isCancelled {
            try? await Task.sleep(for: min(.milliseconds(100), instant - ContinuousClock.now))
        }
    }

    func tell() async -> Bool {
        let configuration = self.configuration
        let script = self.script
        self.world.say(
            "Stork live demo: \(script.home.name) v \(script.away.name), \(script.players.count) players, "
                + "\(script.shots.count) shots."
        )
        self.world.sayMore([
            "page:       http://127.0.0.1:\(configuration.webPort)/",
            "match feed: ws://127.0.0.1:\(configuration.feedPort)/players/<player-id>",
            "node logs:  \(self.directory.path)",
        ])
        guard await self.wait(.seconds(10), until: { self.servers.allUp || self.servers.failure != nil }),
            self.servers.failure == nil
        else {
            self.world.say("✗ cannot serve: \(self.servers.failure ?? "the servers did not start")")
            return false
        }

        // The cluster.
        let names: [String]
        do {
            names = try self.controls.startInitial(configuration.nodes)
        } catch {
            self.world.say("✗ cannot start the nodes: \(error)")
            return false
        }
        self.world.say(
            "Starting \(names.joined(separator: ", ")) (stork serve); each lists the \(script.players.count) players "
                + "from this process as resources of kind websocket, "
                + (configuration.connector == .node
                    ? "and runs each player's WebSocket with its websocket connector."
                    : "and calls this process as its sidecar, which connects the player for it.")
        )
        _ = await self.wait(.seconds(60)) {
            self.everyPlayerConnected() || self.world.nodes.contains { $0.status == .exited }
        }
        guard self.everyPlayerConnected() else {
            if !self.stop.isStopped {
                self.world.say("✗ not every player ran and was connected to the feed after 60 s")
                self.explainNotReady()
            }
            return false
        }
        self.ownerTable("Every player runs on exactly one node and is connected to the feed:")

        // The match.
        var length = configuration.matchLength
        if let duration = configuration.duration {
            let left = duration - (ContinuousClock.now - self.origin)
            length = max(.seconds(15), min(length, left - .seconds(12)))
        }
        self.world.say(
            "Kick-off. The feed plays \(script.shots.count) shots over \(Int(length.secondsDouble)) s; each shot goes "
                + "to its player's WebSocket, the node running the player publishes it on demo.shots.<player>, and "
                + "this process, subscribed on one node (the bus brings it every node's shots), confirms it to the feed."
        )
        let kickoff = ContinuousClock.now
        let feed = self.feed
        let matchLength = length
        var ok = true
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await feed.play(length: matchLength) }
            if configuration.autoMoves { ok = await self.moveOnSchedule(kickoff: kickoff, length: length) }
            await self.sleep(until: kickoff + length)
            if self.stop.isStopped { group.cancelAll() }
        }
        guard !self.stop.isStopped else {
            self.report(final: false)
            return false
        }
        let score = script.score(after: script.shots)
        self.world.say(
            "Full time: \(script.home.name) \(score.home)-\(score.away) \(script.away.name). "
                + "Waiting for the last shots to arrive."
        )
        var settle = Duration.seconds(20)
        if let duration = configuration.duration {
            settle = max(.seconds(3), min(settle, duration - (ContinuousClock.now - self.origin)))
        }
        _ = await self.wait(settle) {
            self.feed.snapshot().pending.isEmpty && self.world.tally.unique == script.shots.count
                && self.world.unsettled == 0
        }
        if self.world.unsettled > 0 {
            self.world.say("✗ a kill or a join did not settle: some players never ran again")
            ok = false
        }
        let lost = self.report(final: true)
        ok = ok && lost == 0

        if configuration.duration == nil, !self.stop.isStopped {
            self.world.say("The page stays up until Ctrl-C: add and kill nodes there (the match is over).")
            while !self.stop.isStopped { try? await Task.sleep(for: .milliseconds(200)) }
        }
        return ok
    }

    /// Kills the oldest node at 30–50% of the match, just before the first shot there of one of its players (that
    /// shot reaches the feed while its player has no connection, and must still arrive), and starts a new node at
    /// 60%. False if either could not be done.
    func moveOnSchedule(kickoff: ContinuousClock.Instant, length: Duration) async -> Bool {
        let script = self.script
        var ok = true
        await self.sleep(until: kickoff + length * 0.3 - .seconds(1))
        let victim = self.nodes.live.first
        let owners = self.world.owners
        let window = (length * 0.3)...(length * 0.5)
        if let shot = script.shots.first(where: {
            window.contains(script.due($0, length: length)) && owners[$0.playerID] == victim
        }) {
            await self.sleep(until: kickoff + script.due(shot, length: length) - .milliseconds(300))
            self.world.say("\(victim ?? "?") runs \(shot.playerID), whose \(shot.id) is due in 0.3 s:")
        } else {
            await self.sleep(until: kickoff + length * 0.3)
        }
        if !self.stop.isStopped {
            do { try self.controls.kill(victim) } catch {
                self.world.say("✗ cannot kill a node: \(error)")
                ok = false
            }
        }
        await self.sleep(until: kickoff + length * 0.6)
        if !self.stop.isStopped {
            do { try self.controls.add() } catch {
                self.world.say("✗ cannot start a node: \(error)")
                ok = false
            }
        }
        return ok
    }

    // MARK: Readiness

    func everyPlayerConnected() -> Bool {
        let owners = self.world.owners
        let connections = self.feed.snapshot().connections
        let live = self.world.nodes.filter { $0.status == .live || $0.status == .starting }
        return self.script.players.allSatisfy { owners[$0.id] != nil && connections[$0.id, default: 0] > 0 }
            && live.allSatisfy { $0.status == .live } && live.contains { $0.subscribed }
    }

    func explainNotReady() {
        let owners = self.world.owners
        let connections = self.feed.snapshot().connections
        let unowned = self.script.players.filter { owners[$0.id] == nil }.map(\.id)
        let unconnected = self.script.players.filter { connections[$0.id, default: 0] == 0 }.map(\.id)
        self.world.sayMore([
            "not running:              \(unowned.isEmpty ? "none" : unowned.joined(separator: " "))",
            "not connected to the feed: \(unconnected.isEmpty ? "none" : unconnected.joined(separator: " "))",
            "nodes: "
                + self.world.nodes.map { "\($0.name) \($0.status.rawValue)\($0.subscribed ? " (the demo listens here)" : "")" }
                .joined(separator: ", "),
        ])
    }

    func ownerTable(_ title: String) {
        let owners = self.world.owners
        self.world.say(title)
        let byNode = Dictionary(grouping: owners.keys, by: { owners[$0]! })
        self.world.sayMore(
            byNode.keys.sorted { DemoWorld.playerOrder($0, $1) }.map { node in
                let players = byNode[node]!.sorted(by: DemoWorld.playerOrder)
                return "\(node.padding(toLength: 4, withPad: " ", startingAt: 0)) \(players.count) players: "
                    + players.joined(separator: " ")
            }
        )
    }

    // MARK: The report

    /// Prints the counts; returns how many released shots never arrived.
    @discardableResult
    func report(final: Bool) -> Int {
        let snapshot = self.feed.snapshot()
        let tally = self.world.tally
        let counters = snapshot.counters
        let lost = counters.released - (0..<counters.released).filter { tally.received($0 + 1) }.count
        let moves = self.world.moves
        let perNode = tally.perNode.sorted { DemoWorld.playerOrder($0.key, $1.key) }.map { "\($0.key) \($0.value)" }
        let perPlayer = self.script.players.compactMap { player -> String? in
            guard let count = tally.perPlayer[player.id] else { return nil }
            return "\(player.id) \(player.name) \(count)"
        }
        self.world.say(final ? "Report:" : "Stopped before full time. Report so far:")
        var lines = [
            "shots scripted:               \(self.script.shots.count)",
            "shots sent by the feed:       \(counters.released) (\(counters.writes) WebSocket writes, "
                + "\(counters.repeats) of them repeats of unconfirmed shots)",
            "shots received (unique):      \(tally.unique)"
                + (perNode.isEmpty ? "" : " (via \(perNode.joined(separator: ", ")))"),
            "duplicates suppressed:        \(tally.duplicates)",
            "lost:                         \(lost)",
            "player moves seen:            \(moves.count)",
            "feed connections:             \(counters.connections) opened, \(counters.disconnections) closed",
        ]
        if tally.malformed > 0 { lines.append("malformed messages:           \(tally.malformed)") }
        if !self.world.overlaps.isEmpty {
            lines.append(
                "listed by two nodes at once:  \(self.world.overlaps.count) (one round of polling; "
                    + self.world.overlaps.prefix(3).joined(separator: "; ") + ")"
            )
        }
        lines.append("shots per player:             " + perPlayer.joined(separator: ", "))
        self.world.sayMore(lines)
        if final {
            if lost == 0 {
                self.world.say(
                    "✓ no shot lost while players moved between nodes (\(tally.duplicates) duplicates suppressed)."
                )
            } else {
                let missing = snapshot.pending.map(\.id).joined(separator: " ")
                self.world.say("✗ \(lost) shots lost: \(missing)")
            }
        }
        return lost
    }
}
