import Foundation
import NIOCore
import StorkBus
import StorkNATS
import Synchronization

// MARK: - Scenarios

/// The measurements of `stork bench nats`, in the order they run. Each runs against one server at a time.
enum NATSBenchScenario: String, CaseIterable, Sendable, Codable {
    case publish16 = "publish-16"
    case publish1K = "publish-1k"
    case publishSubscribe = "pub-sub"
    case requestReply = "request-reply"
    case jetStreamPublish = "jetstream-publish"
    case jetStreamConsume = "jetstream-consume"
}

/// One figure of the table: a scenario's value under one name.
struct NATSBenchFigure: Sendable {
    var id: String
    var label: String
    var unit: String
    var higherIsBetter: Bool
    var scenario: NATSBenchScenario
}

/// What the scenarios need to know about the run.
struct NATSBenchSettings: Sendable {
    var coreMessages: Int
    var durableMessages: Int
    var roundTrips: Int
    var warmupRoundTrips: Int
    var window: Int
    var pullBatch: Int
    var ackExplicit: Bool
    var scenarioTimeout: Duration
    /// The scenarios to run, in order.
    var scenarios: [NATSBenchScenario] = NATSBenchScenario.allCases
    /// How many rounds of every scenario; the table shows each figure's median.
    var repeats = 1
}

/// The stream and consumer of one round's JetStream scenarios: each round has its own, with subjects that do not
/// overlap, so that every round starts from an empty stream.
struct NATSBenchStreamNames: Sendable {
    var stream: String
    var subject: String
    var consumer: String

    init(round: Int) {
        self.stream = round == 0 ? "BENCH" : "BENCH\(round + 1)"
        self.subject = "bench.stream.\(round + 1)"
        self.consumer = "BENCHC"
    }
}

/// Where a server under test listens.
struct NATSBenchTarget: Sendable {
    var name: String
    var host: String
    var port: Int
}

// MARK: - The connections of one scenario

/// The connections a scenario opened, so that a timeout or a failure closes all of them (which fails whatever still
/// waits on them) and a finished scenario leaves none open.
final class NATSBenchConnections: Sendable {
    let target: NATSBenchTarget
    let loops: [any EventLoop]
    let progress = NATSBenchProgress()
    private let clients = Mutex<[NATSBenchClient]>([])

    init(target: NATSBenchTarget, loops: [any EventLoop]) {
        self.target = target
        self.loops = loops
    }

    /// A new connection on event loop `loop` (modulo the loops there are).
    func connect(_ role: String, loop: Int) async throws -> NATSBenchClient {
        let client = try await NATSBenchClient.connect(
            host: self.target.host,
            port: self.target.port,
            name: "\(self.target.name) \(role)",
            on: self.loops[loop % self.loops.count]
        )
        self.clients.withLock { $0.append(client) }
        return client
    }

    /// A new connection subscribed (sid 1) to its own inbox, `_INBOX.<token>.*`, confirmed by a flush: where its
    /// sink's requests get their replies. Returns the inbox's prefix (`_INBOX.<token>.`).
    func connectWithInbox(_ role: String, loop: Int) async throws -> (client: NATSBenchClient, inbox: String) {
        let client = try await self.connect(role, loop: loop)
        let inbox = "_INBOX.\(client.token)."
        client.subscribe(inbox + "*", sid: "1")
        try await client.flush()
        return (client, inbox)
    }

    func closeAll() async {
        let clients = self.clients.withLock { clients in
            defer { clients = [] }
            return clients
        }
        for client in clients { await client.close() }
    }

    /// Runs `body` with this scenario's deadline; on timeout or failure every connection is closed.
    func run<Value: Sendable>(
        timeout: Duration,
        _ body: @escaping @Sendable (NATSBenchConnections) async throws -> Value
    ) async throws -> Value {
        let result: Value = try await withThrowingTaskGroup(of: Value?.self) { group in
            group.addTask { try await body(self) }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return nil
            }
            do {
                guard let first = try await group.next(), let value = first else {
                    await self.closeAll()
                    throw NATSBenchError(
                        .timeout,
                        "did not finish within \(timeout.components.seconds) s (\(self.progress.description))"
                    )
                }
                group.cancelAll()
                return value
            } catch {
                group.cancelAll()
                await self.closeAll()
                throw error
            }
        }
        await self.closeAll()
        return result
    }
}

// MARK: - Measuring

/// The scenarios' code: each returns its figures by id, or throws a ``NATSBenchError``.
enum NATSBenchMeasure {
    /// Completes a promise that a scenario stopped waiting for (a no-op when it already completed): NIO insists that
    /// no promise is dropped unfulfilled.
    static let abandoned = NATSBenchError(.unexpected, "the scenario stopped waiting")

    static func seconds(from start: UInt64, to end: UInt64) -> Double {
        Double(end &- start) / 1e9
    }

    static func payload(_ size: Int) -> ByteBuffer {
        ByteBuffer(bytes: (0..<size).map { UInt8(ascii: "a") + UInt8($0 % 26) })
    }

    /// 1. One connection publishes `count` messages of `size` bytes to a subject nobody listens on, pipelined, then
    /// PING/PONG.
    static func publishOnly(size: Int, count: Int, connections: NATSBenchConnections) async throws -> [String: Double] {
        let publisher = try await connections.connect("publisher", loop: 0)
        var message = ByteBuffer()
        message.writeNATSPublish(subject: "bench.publish", replyTo: nil, headers: nil, payload: Self.payload(size))
        connections.progress.expect(count, of: "messages written to the socket")
        let publishing = connections.progress
        let start = natsBenchNow()
        try await publisher.publish(message, count: count, timeout: .seconds(3600), progress: publishing)
        let elapsed = Self.seconds(from: start, to: natsBenchNow())
        connections.progress.update(count)
        return ["rate": Double(count) / elapsed, "mbps": Double(count * size) / elapsed / 1e6]
    }

    /// 2. One publisher, one subscriber on another event loop; the rate is counted at the subscriber. A PING on the
    /// subscriber after the publisher's PONG proves that nothing more is coming: the count must be complete by then.
    static func publishSubscribe(count: Int, connections: NATSBenchConnections) async throws -> [String: Double] {
        let size = 16
        let subscriber = try await connections.connect("subscriber", loop: 1)
        let publisher = try await connections.connect("publisher", loop: 0)
        connections.progress.expect(count, of: "messages at the subscriber")
        let lastArrival = subscriber.eventLoop.makePromise(of: UInt64.self)
        defer { lastArrival.fail(Self.abandoned) }
        let progress = connections.progress
        try await subscriber.attach { _ in
            NATSBenchCountingSink(expected: count, payloadSize: size, progress: progress, done: lastArrival)
        }
        subscriber.subscribe("bench.fanout", sid: "1")
        try await subscriber.flush()
        var message = ByteBuffer()
        message.writeNATSPublish(subject: "bench.fanout", replyTo: nil, headers: nil, payload: Self.payload(size))
        let start = natsBenchNow()
        try await publisher.publish(message, count: count, timeout: .seconds(3600))
        try await subscriber.flush(timeout: .seconds(3600))
        let counted = try await subscriber.withSink { ($0 as? NATSBenchCountingSink)?.count ?? 0 }
        guard counted == count else {
            throw NATSBenchError(
                .lostMessages,
                "the subscriber got \(counted) of \(count) messages before the PONG that follows them all"
            )
        }
        let end = try await lastArrival.futureResult.get()
        return ["rate": Double(count) / Self.seconds(from: start, to: end)]
    }

    /// 3. A responder connection answers each request; the requester sends one at a time, each with its own reply
    /// subject under the inbox it subscribed to, and times the round trips after a warm-up.
    static func requestReply(
        roundTrips: Int,
        warmup: Int,
        connections: NATSBenchConnections
    ) async throws -> [String: Double] {
        let payload = Self.payload(16)
        let responder = try await connections.connect("responder", loop: 1)
        try await responder.attach { channel in NATSBenchResponderSink(channel: channel, payload: payload) }
        responder.subscribe("bench.request", sid: "1")
        try await responder.flush()

        let (requester, inbox) = try await connections.connectWithInbox("requester", loop: 0)
        connections.progress.expect(warmup + roundTrips, of: "round trips")
        let done = requester.eventLoop.makePromise(of: [UInt64].self)
        defer { done.fail(Self.abandoned) }
        let progress = connections.progress
        try await requester.attach { channel in
            NATSBenchRequesterSink(
                channel: channel,
                subject: "bench.request",
                inboxPrefix: inbox,
                payload: payload,
                warmup: warmup,
                measured: roundTrips,
                progress: progress,
                done: done
            )
        }
        let latencies = try await done.futureResult.get().sorted()
        func percentile(_ p: Double) -> Double {
            let index = min(latencies.count - 1, Int((p * Double(latencies.count)).rounded(.up)) - 1)
            return Double(latencies[max(0, index)]) / 1000
        }
        let mean = Double(latencies.reduce(0, +)) / Double(latencies.count) / 1000
        return ["p50": percentile(0.50), "p99": percentile(0.99), "mean": mean, "rate": 1e6 / mean]
    }

    /// 4. Creates a file-storage stream, then publishes `count` 16-byte messages with reply subjects, at most
    /// `window` un-acked, counting PubAcks; then checks that the stream holds `count` messages.
    static func jetStreamPublish(
        count: Int,
        window: Int,
        names: NATSBenchStreamNames,
        connections: NATSBenchConnections
    ) async throws -> [String: Double] {
        let control = try await connections.connect("JetStream API", loop: 1)
        let created = try await Self.api(
            control,
            "$JS.API.STREAM.CREATE.\(names.stream)",
            #"{"name":"\#(names.stream)","subjects":["\#(names.subject)"],"storage":"file"}"#,
            retryWhileNoResponders: true
        )
        guard (created["config"] as? [String: Any])?["storage"] as? String == "file" else {
            throw NATSBenchError(.serverError, "the stream was not created with file storage: \(created)")
        }

        let (publisher, inbox) = try await connections.connectWithInbox("JetStream publisher", loop: 0)
        connections.progress.expect(count, of: "PubAcks")
        let done = publisher.eventLoop.makePromise(of: UInt64.self)
        defer { done.fail(Self.abandoned) }
        let progress = connections.progress
        let payload = Self.payload(16)
        let start = natsBenchNow()
        try await publisher.attach { channel in
            NATSBenchJetStreamPublisherSink(
                channel: channel,
                subject: names.subject,
                inboxPrefix: inbox,
                payload: payload,
                total: count,
                window: window,
                progress: progress,
                done: done
            )
        }
        let end = try await done.futureResult.get()

        let info = try await Self.api(control, "$JS.API.STREAM.INFO.\(names.stream)", "")
        let stored = ((info["state"] as? [String: Any])?["messages"] as? NSNumber)?.intValue
        guard stored == count else {
            throw NATSBenchError(
                .lostMessages,
                "every publish was acked but the stream holds \(stored.map(String.init) ?? "?") of \(count) messages"
            )
        }
        return ["rate": Double(count) / Self.seconds(from: start, to: end)]
    }

    /// 5. Creates a durable pull consumer on the stream of 4 and pulls every message with `MSG.NEXT` requests of
    /// `batch`, acking each when the ack policy is explicit; then checks that no ack is left pending.
    static func jetStreamConsume(
        count: Int,
        batch: Int,
        explicitAck: Bool,
        names: NATSBenchStreamNames,
        connections: NATSBenchConnections
    ) async throws -> [String: Double] {
        let control = try await connections.connect("JetStream API", loop: 1)
        let policy = explicitAck ? "explicit" : "none"
        let created = try await Self.api(
            control,
            "$JS.API.CONSUMER.CREATE.\(names.stream).\(names.consumer)",
            #"{"stream_name":"\#(names.stream)","config":{"durable_name":"\#(names.consumer)","#
                + #""ack_policy":"\#(policy)","deliver_policy":"all"}}"#
        )
        let maxAckPending = ((created["config"] as? [String: Any])?["max_ack_pending"] as? NSNumber)?.intValue

        let (puller, inbox) = try await connections.connectWithInbox("JetStream consumer", loop: 0)
        connections.progress.expect(count, of: "messages pulled")
        let done = puller.eventLoop.makePromise(of: UInt64.self)
        defer { done.fail(Self.abandoned) }
        let progress = connections.progress
        let start = natsBenchNow()
        try await puller.attach { channel in
            NATSBenchPullSink(
                channel: channel,
                stream: names.stream,
                consumer: names.consumer,
                inboxPrefix: inbox,
                total: count,
                batch: batch,
                expires: .seconds(10),
                acking: explicitAck,
                progress: progress,
                done: done
            )
        }
        let end = try await done.futureResult.get()
        try await puller.flush()
        let duplicates = try await puller.withSink { ($0 as? NATSBenchPullSink)?.duplicates ?? 0 }

        var figures = ["rate": Double(count) / Self.seconds(from: start, to: end), "duplicates": Double(duplicates)]
        if let maxAckPending { figures["max_ack_pending"] = Double(maxAckPending) }
        guard explicitAck else { return figures }
        // Acks are processed after they are read; give the server a moment to apply the last ones.
        var pending = -1
        for _ in 0..<50 {
            let info = try await Self.api(
                control,
                "$JS.API.CONSUMER.INFO.\(names.stream).\(names.consumer)",
                ""
            )
            pending = (info["num_ack_pending"] as? NSNumber)?.intValue ?? -1
            if pending == 0 { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        guard pending == 0 else {
            throw NATSBenchError(
                .lostMessages,
                "every message arrived and was acked, but num_ack_pending is \(pending)"
            )
        }
        return figures
    }

    /// A JetStream API request; the answer as a JSON object, or the error it carries as a ``NATSBenchError``.
    /// With `retryWhileNoResponders`, a 503 (JetStream not subscribed yet, right after start) is retried for 10 s.
    static func api(
        _ client: NATSBenchClient,
        _ subject: String,
        _ body: String,
        retryWhileNoResponders: Bool = false
    ) async throws -> [String: Any] {
        let deadline = ContinuousClock.now + .seconds(10)
        while true {
            let reply = try await client.request(subject, payload: body)
            if let status = reply.headers?.status {
                if status == 503, retryWhileNoResponders, ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(100))
                    continue
                }
                throw NATSBenchError(.serverError, "\(subject) answered with status \(status)")
            }
            let text = String(buffer: reply.payload)
            guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
                throw NATSBenchError(
                    .serverError,
                    "\(subject) answered with something that is not JSON: \(text.prefix(200))"
                )
            }
            if let error = object["error"] {
                throw NATSBenchError(.serverError, "\(subject) answered with an error: \(error)")
            }
            return object
        }
    }
}
