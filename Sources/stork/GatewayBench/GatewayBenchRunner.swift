import Foundation
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// MARK: - Settings

struct GatewayBenchSettings: Sendable {
    var connections: Int
    var burstMessages: Int
    var latencyMessages: Int
    var payloadBytes: Int
    var clientThreads: Int
    var connectConcurrency: Int
    var phaseTimeout: Duration

    static let subject = "bench.fanout"
    static let path = "/v1/ws"

    /// The gateway keeps this many deliveries per session; it is also how far a subscriber may fall behind before it
    /// is dropped as a slow consumer. The whole run fits, so that a burst measures fan-out, not the drop policy
    /// (1,000, the default, whenever the run is smaller).
    var recoveryMessages: Int { max(1000, self.latencyMessages + self.burstMessages) }

    /// The `stork serve` configuration: the gateway with open authentication and subscribe allowed on the subject.
    var serverConfiguration: String {
        """
        gateway:
          path: \(Self.path)
          auth: [{type: open}]
          permissions:
            rules:
              - {subject: "\(Self.subject)", subscribe: true}
          recoveryMessages: \(self.recoveryMessages)

        """
    }
}

// MARK: - GatewayBenchRunner

/// Runs `stork bench gateway`: the server as a child process (as `stork bench nats` does, so that its memory is its
/// own and the bench's clients do not share its threads), the subscribers in this process. The child is stopped on
/// every way out of ``run()``, and killed by the signal handlers of ``NATSBenchChildren`` on SIGINT or SIGTERM.
struct GatewayBenchRunner {
    var settings: GatewayBenchSettings

    func run() async throws -> GatewayBenchReport {
        try Self.raiseFileLimit(to: self.settings.connections + 256)
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("stork-bench-gateway-\(getpid())")
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        NATSBenchChildren.shared.removeOnSignal(root)
        NATSBenchChildren.shared.killOnSignals()
        let configFile = root.appendingPathComponent("stork.yaml")
        try Data(self.settings.serverConfiguration.utf8).write(to: configFile)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: self.settings.clientThreads)

        var server: NATSBenchServerProcess?
        do {
            let started = try NATSBenchServerProcess.start(
                .stork,
                natsServer: "",
                in: root,
                extraArguments: ["--config", configFile.path]
            )
            server = started
            Self.say("started \(started.commandLine)")
            let report = try await self.measure(on: started, group: group)
            await started.stop()
            try? FileManager.default.removeItem(at: root)
            NATSBenchChildren.shared.removeOnSignal(nil)
            try? await group.shutdownGracefully()
            return report
        } catch {
            var failure = error as? NATSBenchError ?? NATSBenchError(.unexpected, "failed", underlying: error)
            if let server {
                if let status = server.exitStatus {
                    failure.message += "; the server \(status); its log ends:\n\(server.logTail())"
                }
                await server.stop()
            }
            try? FileManager.default.removeItem(at: root)
            NATSBenchChildren.shared.removeOnSignal(nil)
            try? await group.shutdownGracefully()
            throw failure
        }
    }

    private func measure(
        on server: NATSBenchServerProcess,
        group: MultiThreadedEventLoopGroup
    ) async throws -> GatewayBenchReport {
        let settings = self.settings
        let loops = Array(group.makeIterator())
        let host = "127.0.0.1"
        guard let httpPort = server.httpPort else { throw NATSBenchError(.serverStart, "the server has no HTTP port") }
        let connectTimeout = TimeAmount.nanoseconds(Int64(settings.phaseTimeout.components.seconds) * 1_000_000_000)
        try await server.waitUntilReady(on: loops[0], timeout: .seconds(30))
        var report = GatewayBenchReport(settings: settings, loadAverage: NATSBenchRunner.loadAverage())

        // One connection that authenticates and leaves, so that the baseline includes what the first connection
        // initialises once (routes, the session table, code paths), not only an idle server.
        let warmup = try await GatewayBenchConnections.open(
            number: 0, host: host, port: httpPort, path: GatewayBenchSettings.path,
            subject: GatewayBenchSettings.subject, authOnly: true, tracker: nil, on: loops[0], timeout: connectTimeout
        )
        try? await GatewayBenchConnections.close(warmup).get()
        try await Task.sleep(for: .milliseconds(500))
        report.serverRSSBefore = try Self.residentBytes(of: server.processIdentifier)
        report.clientRSSBefore = try Self.residentBytes(of: getpid())

        // The subscribers.
        let totalMessages = settings.latencyMessages + settings.burstMessages
        let tracker = GatewayBenchTracker(subscribers: settings.connections, messages: totalMessages)
        Self.say("opening \(settings.connections) connections to ws://\(host):\(httpPort)\(GatewayBenchSettings.path)")
        let connectStart = ContinuousClock.now
        var channels: [any Channel] = []
        channels.reserveCapacity(settings.connections)
        do {
            try await withThrowingTaskGroup(of: (any Channel).self) { tasks in
                var next = 0
                func add() {
                    let number = next + 1
                    let loop = loops[next % loops.count]
                    next += 1
                    tasks.addTask {
                        try await GatewayBenchConnections.open(
                            number: number, host: host, port: httpPort, path: GatewayBenchSettings.path,
                            subject: GatewayBenchSettings.subject, tracker: tracker, on: loop, timeout: connectTimeout
                        )
                    }
                }
                while next < min(settings.connectConcurrency, settings.connections) { add() }
                while let channel = try await tasks.next() {
                    channels.append(channel)
                    if next < settings.connections { add() }
                }
            }
        } catch {
            await Self.close(channels)
            throw error
        }
        report.connectDuration = ContinuousClock.now - connectStart
        Self.say("\(channels.count) subscribers ready in \(report.connectDuration!)")

        var publisher: NATSBenchClient?
        do {
            // Idle: let the server settle, then read its memory.
            try await Task.sleep(for: .seconds(1))
            report.serverRSSAfter = try Self.residentBytes(of: server.processIdentifier)
            report.clientRSSAfter = try Self.residentBytes(of: getpid())

            let natsPublisher = try await NATSBenchClient.connect(
                host: host, port: server.port, name: "publisher", on: loops[0], timeout: .seconds(10)
            )
            publisher = natsPublisher
            let body = "\"" + String(repeating: "x", count: settings.payloadBytes - 2) + "\""
            let publish = "PUB \(GatewayBenchSettings.subject) \(body.utf8.count)\r\n\(body)\r\n"

            // One at a time: the latency of one fan-out to every subscriber.
            var latencyPublished: [UInt64] = []
            for index in 0..<settings.latencyMessages {
                latencyPublished.append(NIODeadline.now().uptimeNanoseconds)
                natsPublisher.write(ByteBuffer(string: publish))
                try await tracker.waitUntilComplete(
                    index..<(index + 1), timeout: settings.phaseTimeout, what: "latency message \(index + 1)"
                )
            }
            // The burst: every message in one write.
            Self.say("publishing a burst of \(settings.burstMessages) messages")
            var burst = ByteBuffer()
            burst.reserveCapacity(publish.utf8.count * settings.burstMessages)
            for _ in 0..<settings.burstMessages { burst.writeString(publish) }
            let burstStart = NIODeadline.now().uptimeNanoseconds
            natsPublisher.write(burst)
            try await tracker.waitUntilComplete(
                settings.latencyMessages..<totalMessages, timeout: settings.phaseTimeout, what: "the burst"
            )
            // Anything beyond one delivery per subscriber and message (a duplicate) shows in the total.
            try await Task.sleep(for: .milliseconds(200))
            let snapshot = tracker.snapshot()
            report.record(snapshot, latencyPublished: latencyPublished, burstStart: burstStart)
        } catch {
            await publisher?.close()
            await Self.close(channels)
            throw error
        }
        await publisher?.close()
        await Self.close(channels)
        return report
    }

    // MARK: Helpers

    private static func close(_ channels: [any Channel]) async {
        for channel in channels { try? await GatewayBenchConnections.close(channel).get() }
    }

    /// VmRSS of a process, in bytes.
    static func residentBytes(of pid: Int32) throws -> Int {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/status") else {
            throw NATSBenchError(.unexpected, "cannot read /proc/\(pid)/status")
        }
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") where line.hasPrefix("VmRSS:") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if fields.count >= 2, let kilobytes = Int(fields[1]) { return kilobytes * 1024 }
        }
        throw NATSBenchError(.unexpected, "no VmRSS in /proc/\(pid)/status")
    }

    /// Raises the soft limit on open files to `needed` (the child inherits it), or says why it cannot.
    static func raiseFileLimit(to needed: Int) throws {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return }
        if limit.rlim_cur >= rlim_t(needed) { return }
        guard limit.rlim_max >= rlim_t(needed) else {
            throw NATSBenchError(
                .unexpected,
                "\(needed) open files are needed, and the hard limit is \(limit.rlim_max) (ulimit -Hn); use fewer --connections"
            )
        }
        limit.rlim_cur = rlim_t(needed)
        guard setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else {
            throw NATSBenchError(.unexpected, "cannot raise the open-file limit to \(needed): errno \(errno)")
        }
    }

    static func say(_ line: String) {
        FileHandle.standardError.write(Data("stork bench gateway: \(line)\n".utf8))
    }
}

// MARK: - GatewayBenchReport

struct GatewayBenchReport: Sendable {
    var settings: GatewayBenchSettings
    var loadAverage: String?
    var serverRSSBefore = 0
    var serverRSSAfter = 0
    var clientRSSBefore = 0
    var clientRSSAfter = 0
    var connectDuration: Duration?
    /// Publish → first and → last subscriber of each one-at-a-time message, in nanoseconds.
    var latencyFirst: [UInt64] = []
    var latencyLast: [UInt64] = []
    /// Burst start → last subscriber of each burst message, in nanoseconds.
    var burstLast: [UInt64] = []
    var burstFirstDelivery: UInt64 = 0
    var burstDuration: UInt64 = 0
    var burstDelivered = 0
    var delivered = 0

    mutating func record(_ snapshot: GatewayBenchTracker.Snapshot, latencyPublished: [UInt64], burstStart: UInt64) {
        for (index, published) in latencyPublished.enumerated() {
            self.latencyFirst.append(snapshot.first[index] &- published)
            self.latencyLast.append(snapshot.last[index] &- published)
        }
        let burst = self.settings.latencyMessages..<(self.settings.latencyMessages + self.settings.burstMessages)
        self.burstLast = burst.map { snapshot.last[$0] &- burstStart }
        self.burstFirstDelivery = burst.map { snapshot.first[$0] }.min().map { $0 &- burstStart } ?? 0
        self.burstDuration = (burst.map { snapshot.last[$0] }.max() ?? burstStart) &- burstStart
        self.burstDelivered = burst.reduce(0) { $0 + snapshot.counts[$1] }
        self.delivered = snapshot.delivered
    }

    var expectedDeliveries: Int {
        self.settings.connections * (self.settings.latencyMessages + self.settings.burstMessages)
    }

    func markdown() -> String {
        let settings = self.settings
        let connections = settings.connections
        var lines: [String] = []
        lines.append(
            "## Realtime gateway fan-out (\(connections) WebSocket subscribers, \(settings.payloadBytes) B messages)"
        )
        lines.append("")
        if let load = self.loadAverage { lines.append("Load average before the run: \(load).") }
        lines.append("")
        lines.append("| measurement | value |")
        lines.append("|---|---:|")
        if let connect = self.connectDuration {
            let seconds = Self.seconds(connect)
            lines.append(
                "| connections opened, authenticated, subscribed | \(connections) in \(Self.format(seconds, 2)) s"
                    + " (\(Self.format(Double(connections) / seconds, 0))/s) |"
            )
        }
        let perConnection = Double(self.serverRSSAfter - self.serverRSSBefore) / Double(connections)
        lines.append(
            "| server RSS before → after (idle, subscribed) | \(Self.mebibytes(self.serverRSSBefore)) → "
                + "\(Self.mebibytes(self.serverRSSAfter)) |"
        )
        lines.append("| server memory per idle connection | \(Self.format(perConnection / 1024, 1)) KiB |")
        let clientPer = Double(self.clientRSSAfter - self.clientRSSBefore) / Double(connections)
        lines.append("| bench client memory per connection | \(Self.format(clientPer / 1024, 1)) KiB |")
        if !self.latencyLast.isEmpty {
            let count = self.latencyLast.count
            lines.append(
                "| one at a time (\(count) msgs): publish → last subscriber p50 / p99 / max | "
                    + "\(Self.milliseconds(Self.percentile(self.latencyLast, 0.5))) / "
                    + "\(Self.milliseconds(Self.percentile(self.latencyLast, 0.99))) / "
                    + "\(Self.milliseconds(self.latencyLast.max() ?? 0)) ms |"
            )
            lines.append(
                "| one at a time: publish → first subscriber p50 | "
                    + "\(Self.milliseconds(Self.percentile(self.latencyFirst, 0.5))) ms |"
            )
            let perSecond = Double(connections) / (Double(Self.percentile(self.latencyLast, 0.5)) / 1e9)
            lines.append("| one at a time: deliveries/s at the p50 fan-out | \(Self.count(perSecond)) |")
        }
        let burstDeliveries = connections * settings.burstMessages
        lines.append(
            "| burst of \(settings.burstMessages) msgs: deliveries | \(self.burstDelivered) of \(burstDeliveries) |"
        )
        let seconds = Double(self.burstDuration) / 1e9
        lines.append("| burst: first publish → last delivery | \(Self.format(seconds * 1000, 1)) ms |")
        lines.append("| burst: **deliveries/s** | **\(Self.count(Double(burstDeliveries) / seconds))** |")
        lines.append("| burst: messages/s (each to every subscriber) | \(Self.format(Double(settings.burstMessages) / seconds, 1)) |")
        lines.append(
            "| burst: publish → last subscriber per message p50 / p99 / max | "
                + "\(Self.milliseconds(Self.percentile(self.burstLast, 0.5))) / "
                + "\(Self.milliseconds(Self.percentile(self.burstLast, 0.99))) / "
                + "\(Self.milliseconds(self.burstLast.max() ?? 0)) ms |"
        )
        lines.append("| burst: publish → first delivery | \(Self.milliseconds(self.burstFirstDelivery)) ms |")
        lines.append("| all deliveries (every message to every subscriber, once, in order) | \(self.delivered) of \(self.expectedDeliveries) |")
        return lines.joined(separator: "\n")
    }

    // MARK: Formatting

    static func percentile(_ values: [UInt64], _ fraction: Double) -> UInt64 {
        guard !values.isEmpty else { return 0 }
        let sorted = values.sorted()
        let rank = Int((fraction * Double(sorted.count)).rounded(.up)) - 1
        return sorted[min(max(rank, 0), sorted.count - 1)]
    }

    static func seconds(_ duration: Duration) -> Double {
        let (whole, atto) = duration.components
        return Double(whole) + Double(atto) * 1e-18
    }

    static func format(_ value: Double, _ digits: Int) -> String {
        PlacementBenchCommand.format(value, digits: digits)
    }

    static func milliseconds(_ nanoseconds: UInt64) -> String {
        Self.format(Double(nanoseconds) / 1e6, 2)
    }

    static func mebibytes(_ bytes: Int) -> String {
        "\(Self.format(Double(bytes) / 1_048_576, 1)) MiB"
    }

    static func count(_ value: Double) -> String {
        value >= 1e6 ? "\(Self.format(value / 1e6, 2)) M" : "\(Self.format(value / 1e3, 1)) k"
    }
}
