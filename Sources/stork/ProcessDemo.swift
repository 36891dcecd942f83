import Foundation
import Hummingbird
import StorkServer
import UnixSignals

// MARK: - The multi-process demo

/// Starts real `stork serve` child processes on loopback with a source of accounts and a recording sidecar in this
/// process, then keeps killing a node (kill -9) and starting a new one, printing who owns what and how long each
/// move took. Runs for `duration` seconds, or until Ctrl-C.
struct ProcessDemo {
    var nodes: Int
    var resources: Int
    var duration: Int?
    var basePort: Int

    func say(_ text: String, since start: ContinuousClock.Instant) {
        let elapsed = (ContinuousClock.now - start).secondsDouble
        print(String(format: "[%6.2fs] ", elapsed) + text)
        fflush(nil)
    }

    static func executable() -> URL {
        URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    }

    func play() async throws -> Bool {
        let start = ContinuousClock.now
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("stork-demo-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let list = ResourceListServer(ids: (1...self.resources).map { "acct-\($0)" })
        let sidecar = RecordingSidecar()
        let listServer = LocalServer(list.router())
        let sidecarServer = LocalServer(sidecar.router())

        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await listServer.app.runService() }
            group.addTask { try await sidecarServer.app.runService() }
            let cluster = LocalCluster(
                directory: directory,
                executable: Self.executable(),
                basePort: self.basePort,
                sourceURL: "http://127.0.0.1:\(try await listServer.port())/resources",
                sidecarURL: "http://127.0.0.1:\(try await sidecarServer.port())"
            )
            defer { cluster.killAll() }
            let stop = StopSignal()
            group.addTask { await stop.watchInterrupt() }

            self.say(
                "Starting \(self.nodes) stork processes (logs in \(directory.path)); a source lists \(self.resources) "
                    + "accounts; each node's sidecar calls come to this process.",
                since: start
            )
            // Every node lists every starting node as a seed, itself included: any of them may start the cluster.
            for index in 1...self.nodes { try cluster.start(index, seeds: Array(1...self.nodes)) }
            _ = try await self.wait(timeout: .seconds(60)) {
                (sidecar.running.count == self.resources && Set(sidecar.running.values).count == self.nodes)
                    || !cluster.exitedNodes().isEmpty
            }
            var ok = sidecar.running.count == self.resources && Set(sidecar.running.values).count == self.nodes
            self.table(sidecar, title: ok ? "Every account runs on exactly one node:" : "Not all accounts started:", since: start)
            for (name, line) in cluster.exitedNodes() {
                self.say("\(name) exited: \(line)", since: start)
                ok = false
            }

            var live = Array(1...self.nodes)
            var next = self.nodes + 1
            var round = 0
            let deadline = self.duration.map { start + .seconds($0) }
            while ok, !stop.isStopped, deadline.map({ ContinuousClock.now < $0 - .seconds(8) }) ?? true {
                round += 1
                // kill -9 the oldest live node.
                let victim = live.removeFirst()
                let name = "n\(victim)"
                let orphaned = Set(sidecar.running.filter { $0.value == name }.keys)
                self.say("kill -9 \(name) (it ran \(orphaned.count) accounts)", since: start)
                let killedAt = ContinuousClock.now
                cluster.nodes[name]?.kill(signal: SIGKILL)
                sidecar.killed(name)
                ok = try await self.wait(timeout: .seconds(30)) {
                    let running = sidecar.running
                    return orphaned.allSatisfy { running[$0] != nil }
                }
                let moved = sidecar.running.filter { orphaned.contains($0.key) }
                let receivers = Dictionary(grouping: moved.values, by: { $0 }).mapValues(\.count)
                    .sorted { $0.key < $1.key }.map { "\($0.key) +\($0.value)" }.joined(separator: ", ")
                self.say(
                    String(format: "→ all %d handled again elsewhere %.2f s after the kill (%@)",
                        orphaned.count, (ContinuousClock.now - killedAt).secondsDouble, receivers),
                    since: start
                )
                guard ok, !stop.isStopped else { break }

                // Start a new node.
                let newcomer = "n\(next)"
                let before = sidecar.running
                self.say("starting \(newcomer)", since: start)
                let startedAt = ContinuousClock.now
                // A new node joins through the live ones (it is not a seed itself: it never runs alone).
                try cluster.start(next, seeds: live)
                live.append(next)
                next += 1
                ok = try await self.wait(timeout: .seconds(30)) {
                    let running = sidecar.running
                    return running.count == self.resources && running.values.contains(newcomer)
                        && Set(running.values).count == live.count
                }
                let taken = sidecar.running.filter { $0.value == newcomer && before[$0.key] != newcomer }.count
                self.say(
                    String(format: "→ %@ took over %d accounts in %.2f s, each released by its old owner first",
                        newcomer, taken, (ContinuousClock.now - startedAt).secondsDouble),
                    since: start
                )
                self.table(sidecar, title: "Owners after round \(round):", since: start)
            }
            if let deadline, ok, !stop.isStopped {
                while ContinuousClock.now < deadline, !stop.isStopped { try await Task.sleep(for: .milliseconds(200)) }
            }

            self.say("Stopping: SIGTERM to every node; each hands its accounts off and exits.", since: start)
            await cluster.stopAll()
            stop.stop()
            group.cancelAll()
            let state = sidecar.state.withLock { $0 }
            self.say(
                "Done: \(state.handles) handles, \(state.overlaps.count) overlaps, \(round) kill-and-replace rounds.",
                since: start
            )
            for overlap in state.overlaps.prefix(10) { self.say("✗ overlap: \(overlap)", since: start) }
            if ok, state.overlaps.isEmpty {
                self.say("✓ no account ever ran on two live nodes at once.", since: start)
                try? FileManager.default.removeItem(at: directory)
            }
            return ok && state.overlaps.isEmpty
        }
    }

    func wait(timeout: Duration, _ condition: () -> Bool) async throws -> Bool {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline {
            if condition() { return true }
            try await Task.sleep(for: .milliseconds(50))
        }
        return condition()
    }

    func table(_ sidecar: RecordingSidecar, title: String, since start: ContinuousClock.Instant) {
        let counts = Dictionary(grouping: sidecar.running.values, by: { $0 }).mapValues(\.count)
        self.say(title, since: start)
        for node in counts.keys.sorted(by: { $0.localizedStandardCompare($1) == .orderedAscending }) {
            let bar = String(repeating: "█", count: max(1, counts[node]! * 40 / max(1, self.resources)))
            print("            \(node.padding(toLength: 4, withPad: " ", startingAt: 0)) \(String(counts[node]!).padding(toLength: 5, withPad: " ", startingAt: 0)) \(bar)")
        }
    }
}

/// Set by Ctrl-C (or at the end of the demo).
final class StopSignal: Sendable {
    private let stopped = LockedFlag()

    var isStopped: Bool { self.stopped.value }

    func stop() { self.stopped.set() }

    func watchInterrupt() async {
        for await _ in await UnixSignalsSequence(trapping: .sigint, .sigterm) {
            self.stop()
            return
        }
    }
}

final class LockedFlag: @unchecked Sendable {
    // @unchecked: `flag` is only accessed under `lock`.
    private let lock = NSLock()
    private var flag = false
    var value: Bool { self.lock.withLock { self.flag } }
    func set() { self.lock.withLock { self.flag = true } }
}
