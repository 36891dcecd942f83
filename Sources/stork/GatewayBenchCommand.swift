import ArgumentParser
import Foundation

// MARK: - stork bench gateway

/// `stork bench gateway`: WebSocket fan-out of the realtime gateway to many subscribers, and the server's memory per
/// idle connection.
struct GatewayBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway",
        abstract: "Fan-out of the realtime gateway to many WebSocket subscribers, and memory per idle connection.",
        discussion: """
            Starts `stork serve` (this binary) as a child process on 127.0.0.1 with the gateway enabled (open \
            authentication, subscribe allowed on the bench subject), opens --connections WebSocket connections that \
            each authenticate and subscribe to that subject, and reads the server's VmRSS before and after: memory \
            per idle connection. Then publishes on the node's NATS port: --latency-messages one at a time (each \
            waits until every subscriber has it: publish → last subscriber), then a burst of --messages in one \
            write, timed until every subscriber has every message (deliveries per second). Every subscriber checks \
            that it got every message once and in order; a missing message, an error frame or a closed connection \
            exits 1. Build in release for meaningful numbers: \
            swift build -c release --product stork && .build/release/stork bench gateway
            """
    )

    @Option(help: "WebSocket subscriber connections.")
    var connections: Int = 10_000

    @Option(help: "Messages in the burst.")
    var messages: Int = 100

    @Option(help: "Messages published one at a time before the burst, for the latency of one fan-out (0: none).")
    var latencyMessages: Int = 20

    @Option(help: "Size of each message body as published (a JSON string of this many bytes, at least 2).")
    var payloadBytes: Int = 16

    @Option(help: "Event-loop threads of the bench's own WebSocket clients.")
    var clientThreads: Int = 1

    @Option(help: "Connections being opened at once.")
    var connectConcurrency: Int = 100

    @Option(help: "Seconds each phase (connecting, the latency messages, the burst) may take before the run fails.")
    var timeout: Int = 300

    func validate() throws {
        guard self.connections > 0 else { throw ValidationError("--connections must be at least 1.") }
        guard self.messages > 0 else { throw ValidationError("--messages must be at least 1.") }
        guard self.latencyMessages >= 0 else { throw ValidationError("--latency-messages must be 0 or more.") }
        guard self.payloadBytes >= 2, self.payloadBytes <= 1_000_000 else {
            throw ValidationError("--payload-bytes must be 2 to 1000000, got \(self.payloadBytes).")
        }
        guard self.clientThreads > 0, self.clientThreads <= 64 else {
            throw ValidationError("--client-threads must be 1 to 64.")
        }
        guard self.connectConcurrency > 0 else { throw ValidationError("--connect-concurrency must be at least 1.") }
        guard self.timeout > 0 else { throw ValidationError("--timeout must be at least 1 second.") }
    }

    func run() async throws {
        let settings = GatewayBenchSettings(
            connections: self.connections,
            burstMessages: self.messages,
            latencyMessages: self.latencyMessages,
            payloadBytes: self.payloadBytes,
            clientThreads: self.clientThreads,
            connectConcurrency: self.connectConcurrency,
            phaseTimeout: .seconds(self.timeout)
        )
        do {
            let report = try await GatewayBenchRunner(settings: settings).run()
            print(report.markdown())
            fflush(nil)
        } catch {
            FileHandle.standardError.write(Data("stork bench gateway: FAILED: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}
