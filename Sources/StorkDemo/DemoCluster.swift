import Foundation
import StorkCore
import StorkServer
import Synchronization

// MARK: - DemoCluster
//
// The demo's `stork serve` child processes: start, add, kill (SIGKILL) and stop, from the story's task and from the
// page's buttons alike. The `LocalCluster` is only touched under the lock; waiting for processes to exit happens
// outside it.

public final class DemoCluster: Sendable {
    struct State {
        // `LocalCluster` is a class that is not safe to use from two tasks at once: here, only under this lock.
        let cluster: LocalCluster
        var live: [Int] = []
        var killed: Set<Int> = []
        var next = 1
    }

    let state: Mutex<State>
    public let basePort: Int
    public let directory: URL

    public init(cluster: LocalCluster) {
        self.basePort = cluster.basePort
        self.directory = cluster.directory
        self.state = Mutex(State(cluster: cluster))
    }

    public static func name(_ index: Int) -> String { "n\(index)" }

    public static func index(_ name: String) -> Int? {
        guard name.hasPrefix("n") else { return nil }
        return Int(name.dropFirst())
    }

    public func natsPort(_ name: String) -> Int? { Self.index(name).map { self.basePort + 200 + $0 } }
    public func adminPort(_ name: String) -> Int? { Self.index(name).map { self.basePort + 100 + $0 } }

    /// Starts nodes 1…`count`, each listing all of them as seeds (any of them may start the cluster).
    func startInitial(_ count: Int) throws -> [String] {
        try self.state.withLock { state in
            let indices = Array(1...count)
            for index in indices {
                try state.cluster.start(index, seeds: indices)
                state.live.append(index)
            }
            state.next = count + 1
            return indices.map(Self.name)
        }
    }

    /// Starts the next node; it joins through the live ones.
    func add() throws -> (name: String, index: Int) {
        try self.state.withLock { state in
            let index = state.next
            try state.cluster.start(index, seeds: state.live.isEmpty ? [index] : state.live)
            state.live.append(index)
            state.next += 1
            return (Self.name(index), index)
        }
    }

    /// SIGKILL to `name`, or to the oldest live node. Refuses to kill the last live node.
    func kill(_ name: String?) throws -> String {
        try self.state.withLock { state in
            guard state.live.count > 1 else {
                throw StorkError(.invalidInput, "only one node is live: killing it would stop the match feed's players")
            }
            let index: Int
            if let name {
                guard let named = Self.index(name), state.live.contains(named) else {
                    throw StorkError(.invalidInput, "\(name) is not a live node")
                }
                index = named
            } else {
                index = state.live[0]
            }
            state.cluster.nodes[Self.name(index)]?.kill(signal: SIGKILL)
            state.live.removeAll { $0 == index }
            state.killed.insert(index)
            return Self.name(index)
        }
    }

    /// Live nodes (started and not killed), oldest first.
    public var live: [String] { self.state.withLock { $0.live.map(Self.name) } }

    /// Nodes that were started, not killed, and whose process ended, with the last line of their log.
    func exited() -> [(name: String, lastLine: String)] {
        self.state.withLock { state in
            state.cluster.exitedNodes().filter { exited in
                guard let index = Self.index(exited.name) else { return false }
                return !state.killed.contains(index) && state.live.contains(index)
            }
        }
    }

    /// Marks a node whose process ended by itself as no longer live.
    func forget(_ name: String) {
        self.state.withLock { state in state.live.removeAll { Self.name($0) == name } }
    }

    /// SIGTERM to every live node; waits for each to hand its players off and exit (SIGKILL after `timeout`).
    func stopAll(timeout: Duration = .seconds(20)) async {
        let processes = self.state.withLock { state in
            defer { state.live = [] }
            return state.live.compactMap { state.cluster.nodes[Self.name($0)] }
        }
        for process in processes { process.kill(signal: SIGTERM) }
        for process in processes where !(await process.waitForExit(timeout: timeout)) {
            process.kill(signal: SIGKILL)
        }
    }

    /// SIGKILL to every process that may still run (the demo is ending abruptly).
    func killAll() {
        self.state.withLock { $0.cluster.killAll() }
    }
}
