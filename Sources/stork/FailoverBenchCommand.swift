import ArgumentParser
import AsyncHTTPClient
import Foundation
import NIOCore
import StorkCore
import StorkServer

// MARK: - stork bench failover

/// `stork bench failover`: kill -9 nodes of a real local cluster and measure how long until every other member
/// declared the victim dead, and until all of its resources run elsewhere; then saturate a core for a while and
/// check that no live node is declared dead; optionally run the same kill measurement for hashicorp/memberlist.
struct FailoverBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "failover",
        abstract: "Time from kill -9 to dead-everywhere and to every resource running elsewhere, on real processes.",
        discussion: """
            Starts --nodes `stork serve` processes (this binary) on loopback with default membership settings, a \
            source of --resources resources and a recording sidecar in this process; then --kills times: kill -9 \
            the oldest node, measure (a) until every live member reports it dead (polling each admin API every \
            20 ms) and (b) until all of its resources are handled by other nodes (the sidecar's record), then start \
            a replacement. With --burn N, a `yes` process saturates one core for N seconds while every node's view \
            is polled for live members declared dead. With --memberlist-anchor PATH (the program in \
            Benchmarks/anchors/memberlist), the same kill measurement runs for hashicorp/memberlist's default LAN \
            configuration. Build in release for meaningful numbers: swift build -c release.
            """
    )

    @Option(help: "Nodes in the cluster.") var nodes: Int = 5
    @Option(help: "Resources in the source.") var resources: Int = 1000
    @Option(help: "How many kill -9 rounds.") var kills: Int = 20
    @Option(help: "First port (cluster base+1…, admin base+101…).") var basePort: Int = 28_000
    @Option(help: "Seconds of one saturated core (0: skip).") var burn: Int = 60
    @Option(help: "Path of the built memberlist anchor program (optional).") var memberlistAnchor: String?

    func validate() throws {
        guard (3...20).contains(self.nodes) else { throw ValidationError("--nodes must be 3...20") }
        guard self.kills >= 1, self.resources >= 1, self.burn >= 0 else { throw ValidationError("bad counts") }
    }

    func run() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("stork-bench-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let list = ResourceListServer(ids: (0..<self.resources).map { "r\($0)" })
        let sidecar = RecordingSidecar()
        var detection: [Double] = []
        var failover: [Double] = []
        var burnReport = "skipped"
        var falseDeaths = false
        var overlaps = 0

        try await LocalCluster.run(
            directory: directory,
            executable: StorkExecutable.url,
            basePort: self.basePort,
            list: list,
            sidecar: sidecar
        ) { cluster in
            var live = Array(1...self.nodes)
            for index in live { try cluster.start(index, seeds: live) }
            guard try await self.wait(.seconds(120), {
                sidecar.running.count == self.resources && Set(sidecar.running.values).count == self.nodes
            }) else { throw ValidationError("the cluster did not start every resource") }
            var next = self.nodes + 1

            for round in 1...self.kills {
                let victim = live.removeFirst()
                let name = "n\(victim)"
                let uid = try await Self.uid(of: cluster.adminAddress(victim))
                let orphaned = Set(sidecar.running.filter { $0.value == name }.keys)
                let killed = ContinuousClock.now
                cluster.nodes[name]?.kill(signal: SIGKILL)
                sidecar.killed(name)
                var detectedAt: ContinuousClock.Instant?
                var movedAt: ContinuousClock.Instant?
                let deadline = killed + .seconds(60)
                while ContinuousClock.now < deadline, detectedAt == nil || movedAt == nil {
                    if movedAt == nil {
                        let running = sidecar.running
                        if orphaned.allSatisfy({ running[$0] != nil }) { movedAt = ContinuousClock.now }
                    }
                    if detectedAt == nil {
                        var all = true
                        for index in live {
                            let status = try? await Self.status(of: name, uid: uid, at: cluster.adminAddress(index))
                            if status != "dead" {
                                all = false
                                break
                            }
                        }
                        if all { detectedAt = ContinuousClock.now }
                    }
                    try await Task.sleep(for: .milliseconds(20))
                }
                let d = detectedAt.map { ($0 - killed).secondsDouble } ?? .infinity
                let f = movedAt.map { ($0 - killed).secondsDouble } ?? .infinity
                detection.append(d)
                failover.append(f)
                print(String(format: "round %2d: kill -9 %@ (%d resources): dead everywhere %.2f s, all running elsewhere %.2f s", round, name, orphaned.count, d, f))
                fflush(nil)
                try cluster.start(next, seeds: live)
                live.append(next)
                next += 1
                _ = try await self.wait(.seconds(60)) {
                    sidecar.running.count == self.resources && Set(sidecar.running.values).count == live.count
                }
            }

            if self.burn > 0 {
                (burnReport, falseDeaths) = try await self.burnCore(seconds: self.burn, cluster: cluster, live: live)
            }
            overlaps = sidecar.state.withLock { $0.overlaps.count }
            await cluster.stopAll()
        }
        try? FileManager.default.removeItem(at: directory)

        var anchor: (p50: Double, p99: Double, max: Double)?
        if let path = self.memberlistAnchor {
            anchor = try self.runAnchor(path)
        }

        func q(_ values: [Double], _ p: Double) -> String {
            let sorted = values.sorted()
            let index = min(sorted.count - 1, max(0, Int((Double(sorted.count) * p).rounded(.up)) - 1))
            return String(format: "%.2f s", sorted[index])
        }
        print("")
        print("## Failover on loopback: \(self.nodes) nodes, \(self.resources) resources, \(self.kills) kills (default membership settings)")
        print("")
        print("| measurement | p50 | p99 | max |")
        print("|---|---:|---:|---:|")
        print("| Stork: kill -9 → declared dead by every member | \(q(detection, 0.5)) | \(q(detection, 0.99)) | \(q(detection, 1)) |")
        print("| Stork: kill -9 → all its resources handled elsewhere | \(q(failover, 0.5)) | \(q(failover, 0.99)) | \(q(failover, 1)) |")
        if let anchor {
            print(String(format: "| hashicorp/memberlist (DefaultLANConfig): stop → declared dead by every member | %.2f s | %.2f s | %.2f s |", anchor.p50, anchor.p99, anchor.max))
        }
        print("")
        print("Overlaps recorded by the sidecar: \(overlaps). One core saturated for \(self.burn) s: \(burnReport).")
        // A round that never finished, a resource run twice or a live node declared dead fails the run.
        if (detection + failover).contains(.infinity) || overlaps > 0 || falseDeaths { throw ExitCode(1) }
    }

    // MARK: Helpers

    func wait(_ timeout: Duration, _ condition: () -> Bool) async throws -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if condition() { return true }
            try await Task.sleep(for: .milliseconds(50))
        }
        return condition()
    }

    static func cluster(at address: String) async throws -> [String: JSONValue] {
        let response = try await HTTPClient.shared.execute(HTTPClientRequest(url: "http://\(address)/v1/cluster"), timeout: .seconds(2))
        let body = try await response.body.collect(upTo: 1 << 20)
        guard case .object(let fields) = try JSONDecoder().decode(JSONValue.self, from: Data(body.readableBytesView)) else {
            throw ValidationError("bad /v1/cluster answer from \(address)")
        }
        return fields
    }

    static func uid(of address: String) async throws -> String {
        guard case .object(let me)? = try await Self.cluster(at: address)["self"], let uid = me["uid"]?.stringValue else {
            throw ValidationError("no uid from \(address)")
        }
        return uid
    }

    static func status(of name: String, uid: String, at address: String) async throws -> String? {
        guard case .array(let members)? = try await Self.cluster(at: address)["members"] else { return nil }
        for case .object(let member) in members where member["name"]?.stringValue == name && member["uid"]?.stringValue == uid {
            return member["status"]?.stringValue
        }
        return nil
    }

    /// Saturates one core with `yes` for `seconds`, polling every node's view; reports live members declared dead.
    func burnCore(seconds: Int, cluster: LocalCluster, live: [Int]) async throws -> (report: String, falseDeaths: Bool) {
        let burner = Process()
        burner.executableURL = URL(fileURLWithPath: "/usr/bin/yes")
        burner.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        try burner.run()
        // SIGKILL: the child inherits this thread's signal mask, in which SIGTERM may be blocked (seen: `yes` outlived terminate()).
        defer { if burner.isRunning { kill(burner.processIdentifier, SIGKILL) } }
        var uids: [String: String] = [:]
        for index in live { uids["n\(index)"] = try await Self.uid(of: cluster.adminAddress(index)) }
        var falseDeaths = Set<String>()
        var suspicions = 0
        let end = ContinuousClock.now + .seconds(seconds)
        while ContinuousClock.now < end {
            for index in live {
                guard case .array(let members)? = try? await Self.cluster(at: cluster.adminAddress(index))["members"] else { continue }
                for case .object(let member) in members {
                    guard let name = member["name"]?.stringValue, uids[name] == member["uid"]?.stringValue else { continue }
                    switch member["status"]?.stringValue {
                    case "dead": falseDeaths.insert("n\(index) saw \(name) dead")
                    case "suspect": suspicions += 1
                    default: break
                    }
                }
            }
            try await Task.sleep(for: .milliseconds(200))
        }
        if falseDeaths.isEmpty {
            return ("no live node declared dead (\(suspicions) sightings of a live node as suspect)", false)
        }
        return ("LIVE NODES DECLARED DEAD: \(falseDeaths.sorted().joined(separator: ", "))", true)
    }

    func runAnchor(_ path: String) throws -> (p50: Double, p99: Double, max: Double) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = ["--nodes", String(self.nodes), "--rounds", String(self.kills), "--base-port", String(self.basePort + 500)]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
            guard case .object(let fields)? = try? JSONDecoder().decode(JSONValue.self, from: Data(line.utf8)),
                fields["summary"] == .bool(true),
                case .number(let p50)? = fields["p50"], case .number(let p99)? = fields["p99"], case .number(let max)? = fields["max"]
            else { continue }
            return (p50, p99, max)
        }
        throw ValidationError("the memberlist anchor printed no summary")
    }
}
