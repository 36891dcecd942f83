import NIOCore
import StorkBus
import StorkNATS
import Synchronization

// MARK: - Progress

/// How far a running scenario got, for the message of a timeout. Sinks store into it on their event loop; the
/// runner reads it from elsewhere when time is up.
final class NATSBenchProgress: Sendable {
    private let done = Atomic<Int>(0)
    private let what = Mutex<String>("")
    private let total = Atomic<Int>(0)

    /// Names what is counted (“acks”, “round trips”) and how many are expected; resets the count.
    func expect(_ total: Int, of what: String) {
        self.what.withLock { $0 = what }
        self.total.store(total, ordering: .relaxed)
        self.done.store(0, ordering: .relaxed)
    }

    func update(_ count: Int) {
        self.done.store(count, ordering: .relaxed)
    }

    var description: String {
        let what = self.what.withLock { $0 }
        guard !what.isEmpty else { return "not started" }
        return "\(self.done.load(ordering: .relaxed)) of \(self.total.load(ordering: .relaxed)) \(what)"
    }
}

/// Monotonic nanoseconds, cheap enough to read once per message.
@inline(__always)
func natsBenchNow() -> UInt64 {
    NIODeadline.now().uptimeNanoseconds
}

// MARK: - Counting subscriber

/// Counts the messages of a pub → sub run and notes when the last one arrived.
final class NATSBenchCountingSink: NATSBenchSink {
    private let expected: Int
    private let payloadSize: Int
    private let progress: NATSBenchProgress
    private let done: EventLoopPromise<UInt64>
    private(set) var count = 0

    init(expected: Int, payloadSize: Int, progress: NATSBenchProgress, done: EventLoopPromise<UInt64>) {
        self.expected = expected
        self.payloadSize = payloadSize
        self.progress = progress
        self.done = done
    }

    func received(_ message: BusMessage, sid: String) {
        guard message.payload.readableBytes == self.payloadSize else {
            self.done.fail(
                NATSBenchError(
                    .unexpected,
                    "a message with \(message.payload.readableBytes) bytes instead of \(self.payloadSize)"
                )
            )
            return
        }
        self.count += 1
        if self.count & 1023 == 0 { self.progress.update(self.count) }
        if self.count == self.expected {
            self.progress.update(self.count)
            self.done.succeed(natsBenchNow())
        } else if self.count > self.expected {
            self.done.fail(NATSBenchError(.unexpected, "more messages arrived than were published"))
        }
    }

    func failed(_ error: NATSBenchError) {
        self.done.fail(error)
    }
}

// MARK: - Request/reply

/// Answers every request with a fixed payload; the replies of one read burst go out in one write.
final class NATSBenchResponderSink: NATSBenchSink {
    private let channel: any Channel
    private let payload: ByteBuffer
    private var out: ByteBuffer

    init(channel: any Channel, payload: ByteBuffer) {
        self.channel = channel
        self.payload = payload
        self.out = channel.allocator.buffer(capacity: 4096)
    }

    func received(_ message: BusMessage, sid: String) {
        guard let reply = message.replyTo else { return }
        self.out.writeNATSPublish(subject: reply, replyTo: nil, headers: nil, payload: self.payload)
    }

    func readComplete() {
        guard self.out.readableBytes > 0 else { return }
        self.channel.writeAndFlush(self.out, promise: nil)
        self.out = self.channel.allocator.buffer(capacity: 4096)
    }

    func failed(_ error: NATSBenchError) {}
}

/// Sends one request at a time, each with its own reply subject under the connection's inbox, and times each round
/// trip from the write to the reply's arrival; the first `warmup` are not recorded.
final class NATSBenchRequesterSink: NATSBenchSink {
    private let channel: any Channel
    private let subject: String
    private let inboxPrefix: String
    private let payload: ByteBuffer
    private let warmup: Int
    private let total: Int
    private let progress: NATSBenchProgress
    private let done: EventLoopPromise<[UInt64]>
    private var next = 0
    private var expected = ""
    private var sentAt: UInt64 = 0
    private var latencies: [UInt64]
    private var finished = false

    init(
        channel: any Channel,
        subject: String,
        inboxPrefix: String,
        payload: ByteBuffer,
        warmup: Int,
        measured: Int,
        progress: NATSBenchProgress,
        done: EventLoopPromise<[UInt64]>
    ) {
        self.channel = channel
        self.subject = subject
        self.inboxPrefix = inboxPrefix
        self.payload = payload
        self.warmup = warmup
        self.total = warmup + measured
        self.progress = progress
        self.done = done
        self.latencies = []
        self.latencies.reserveCapacity(measured)
    }

    func start() {
        self.send()
    }

    private func send() {
        self.expected = self.inboxPrefix + String(self.next)
        var bytes = self.channel.allocator.buffer(capacity: 64 + self.payload.readableBytes)
        bytes.writeNATSPublish(subject: self.subject, replyTo: self.expected, headers: nil, payload: self.payload)
        self.sentAt = natsBenchNow()
        self.channel.writeAndFlush(bytes, promise: nil)
    }

    func received(_ message: BusMessage, sid: String) {
        let arrived = natsBenchNow()
        guard !self.finished else { return }
        guard message.subject == self.expected else {
            self.finish(
                .failure(
                    NATSBenchError(.unexpected, "a reply on '\(message.subject)' while waiting on '\(self.expected)'")
                )
            )
            return
        }
        if let status = message.headers?.status {
            self.finish(.failure(NATSBenchError(.serverError, "request \(self.next) answered with status \(status)")))
            return
        }
        if self.next >= self.warmup { self.latencies.append(arrived - self.sentAt) }
        self.next += 1
        if self.next & 255 == 0 { self.progress.update(self.next) }
        if self.next == self.total {
            self.progress.update(self.next)
            self.finish(.success(self.latencies))
        } else {
            self.send()
        }
    }

    private func finish(_ result: Result<[UInt64], NATSBenchError>) {
        self.finished = true
        switch result {
        case .success(let latencies): self.done.succeed(latencies)
        case .failure(let error): self.done.fail(error)
        }
    }

    func failed(_ error: NATSBenchError) {
        guard !self.finished else { return }
        self.finish(.failure(error))
    }
}

// MARK: - JetStream publish with acks

/// Publishes `total` messages to a stream, each with its own reply subject, keeping at most `window` without a
/// PubAck; refills the window once per read burst. Every sequence 1…total must be acked exactly once.
final class NATSBenchJetStreamPublisherSink: NATSBenchSink {
    private let channel: any Channel
    private let subject: String
    private let inboxPrefix: String
    private let payload: ByteBuffer
    private let total: Int
    private let window: Int
    private let progress: NATSBenchProgress
    private let done: EventLoopPromise<UInt64>
    private var sent = 0
    private var acked = 0
    private var seen: [Bool]
    private var finished = false

    init(
        channel: any Channel,
        subject: String,
        inboxPrefix: String,
        payload: ByteBuffer,
        total: Int,
        window: Int,
        progress: NATSBenchProgress,
        done: EventLoopPromise<UInt64>
    ) {
        self.channel = channel
        self.subject = subject
        self.inboxPrefix = inboxPrefix
        self.payload = payload
        self.total = total
        self.window = window
        self.progress = progress
        self.done = done
        self.seen = Array(repeating: false, count: total + 1)
    }

    func start() {
        self.refill()
    }

    func readComplete() {
        self.refill()
    }

    private func refill() {
        guard !self.finished else { return }
        let room = min(self.window - (self.sent - self.acked), self.total - self.sent)
        guard room > 0 else { return }
        var bytes = self.channel.allocator.buffer(
            capacity: room * (self.subject.utf8.count + self.inboxPrefix.utf8.count + self.payload.readableBytes + 24)
        )
        for index in self.sent..<(self.sent + room) {
            bytes.writeNATSPublish(
                subject: self.subject,
                replyTo: self.inboxPrefix + String(index),
                headers: nil,
                payload: self.payload
            )
        }
        self.sent += room
        self.channel.writeAndFlush(bytes, promise: nil)
    }

    func received(_ message: BusMessage, sid: String) {
        guard !self.finished else { return }
        if let headers = message.headers, message.payload.readableBytes == 0 {
            let status: MessageHeaders? = headers
            self.fail(
                NATSBenchError(
                    .serverError,
                    "a publish answered with status \(status?.status.map(String.init) ?? "?") "
                        + (status?.statusDescription ?? "")
                )
            )
            return
        }
        let sequence: UInt64
        switch NATSBenchJSON.pubAckSequence(message.payload) {
        case .success(let value): sequence = value
        case .failure(let error):
            self.fail(error)
            return
        }
        guard sequence >= 1, sequence <= UInt64(self.total), !self.seen[Int(sequence)] else {
            self.fail(
                NATSBenchError(.unexpected, "PubAck for sequence \(sequence): a duplicate or out of 1…\(self.total)")
            )
            return
        }
        self.seen[Int(sequence)] = true
        self.acked += 1
        if self.acked & 1023 == 0 { self.progress.update(self.acked) }
        if self.acked == self.total {
            self.progress.update(self.acked)
            self.finished = true
            self.done.succeed(natsBenchNow())
        }
    }

    private func fail(_ error: NATSBenchError) {
        self.finished = true
        self.done.fail(error)
    }

    func failed(_ error: NATSBenchError) {
        guard !self.finished else { return }
        self.fail(error)
    }
}

// MARK: - JetStream pull consumer

/// Pulls every message of a stream through a durable pull consumer: keeps up to two `MSG.NEXT` requests of
/// `batch` messages outstanding, acks each message (explicit ack policy) in the write that follows its read burst,
/// and finishes when every stream sequence 1…total has arrived.
final class NATSBenchPullSink: NATSBenchSink {
    private let channel: any Channel
    private let nextSubject: String
    private let inboxPrefix: String
    private let total: Int
    private let batch: Int
    private let expiresNanoseconds: Int64
    private let acking: Bool
    private let progress: NATSBenchProgress
    private let done: EventLoopPromise<UInt64>
    /// Messages asked for and neither delivered nor given up by an expired request.
    private var outstanding = 0
    private var received = 0
    private(set) var duplicates = 0
    private var requests = 0
    private var seen: [Bool]
    private var out: ByteBuffer
    private var finished = false
    private static let ackPayload = ByteBuffer(string: "+ACK")

    init(
        channel: any Channel,
        stream: String,
        consumer: String,
        inboxPrefix: String,
        total: Int,
        batch: Int,
        expires: Duration,
        acking: Bool,
        progress: NATSBenchProgress,
        done: EventLoopPromise<UInt64>
    ) {
        self.channel = channel
        self.nextSubject = "$JS.API.CONSUMER.MSG.NEXT.\(stream).\(consumer)"
        self.inboxPrefix = inboxPrefix
        self.total = total
        self.batch = batch
        self.expiresNanoseconds =
            expires.components.seconds * 1_000_000_000
            + expires.components.attoseconds / 1_000_000_000
        self.acking = acking
        self.progress = progress
        self.done = done
        self.seen = Array(repeating: false, count: total + 1)
        self.out = channel.allocator.buffer(capacity: 64 * 1024)
    }

    func start() {
        self.writePending()
    }

    func readComplete() {
        self.writePending()
    }

    /// Asks for more while fewer than two batches are outstanding, then writes the acks and requests in one go.
    private func writePending() {
        guard !self.finished else { return }
        while self.outstanding <= self.batch, self.received + self.outstanding < self.total {
            let size = min(self.batch, self.total - self.received - self.outstanding)
            self.requests += 1
            var body = ByteBuffer()
            body.writeString("{\"batch\":\(size),\"expires\":\(self.expiresNanoseconds)}")
            self.out.writeNATSPublish(
                subject: self.nextSubject,
                replyTo: self.inboxPrefix + String(self.requests),
                headers: nil,
                payload: body
            )
            self.outstanding += size
        }
        guard self.out.readableBytes > 0 else { return }
        self.channel.writeAndFlush(self.out, promise: nil)
        self.out = self.channel.allocator.buffer(capacity: 64 * 1024)
    }

    func received(_ message: BusMessage, sid: String) {
        guard !self.finished else { return }
        if let headers = message.headers, message.payload.readableBytes == 0,
            let status = Optional(headers), let code = status.status
        {
            switch code {
            case 100:
                return  // an idle heartbeat
            case 404, 408:
                // The request ended (expired, or nothing to pull) with this many of its messages undelivered.
                let undelivered = status["Nats-Pending-Messages"].flatMap { Int($0) } ?? self.outstanding
                self.outstanding = max(0, self.outstanding - undelivered)
                return
            default:
                self.fail(
                    NATSBenchError(
                        .serverError,
                        "a pull request answered with status \(code) \(status.statusDescription ?? "")"
                    )
                )
                return
            }
        }
        guard let reply = message.replyTo, let sequence = NATSBenchJSON.streamSequence(ackSubject: reply) else {
            self.fail(NATSBenchError(.unexpected, "a consumer message without a JetStream ack subject"))
            return
        }
        self.outstanding = max(0, self.outstanding - 1)
        if self.acking {
            self.out.writeNATSPublish(subject: reply, replyTo: nil, headers: nil, payload: Self.ackPayload)
        }
        guard sequence >= 1, sequence <= UInt64(self.total), !self.seen[Int(sequence)] else {
            self.duplicates += 1
            return
        }
        self.seen[Int(sequence)] = true
        self.received += 1
        if self.received & 1023 == 0 { self.progress.update(self.received) }
        if self.received == self.total {
            self.progress.update(self.received)
            self.finished = true
            if self.out.readableBytes > 0 { self.channel.writeAndFlush(self.out, promise: nil) }
            self.done.succeed(natsBenchNow())
        }
    }

    private func fail(_ error: NATSBenchError) {
        self.finished = true
        self.done.fail(error)
    }

    func failed(_ error: NATSBenchError) {
        guard !self.finished else { return }
        self.fail(error)
    }
}

// MARK: - Reading JetStream answers without a JSON decoder

/// The few things the load generator reads from JetStream's answers, read straight from the bytes so that reading
/// 200,000 PubAcks costs the generator little.
enum NATSBenchJSON {
    /// The `seq` of a PubAck (`{"stream":"…","seq":N}`), or the error document it carries instead.
    static func pubAckSequence(_ payload: ByteBuffer) -> Result<UInt64, NATSBenchError> {
        let sequence: UInt64? = payload.withUnsafeReadableBytes { bytes in
            guard let key = Self.find(Array("\"seq\":".utf8), in: bytes) else { return nil }
            var index = key
            while index < bytes.count, bytes[index] == UInt8(ascii: " ") { index += 1 }
            var value: UInt64 = 0
            var digits = 0
            while index < bytes.count, bytes[index] >= UInt8(ascii: "0"), bytes[index] <= UInt8(ascii: "9") {
                value = value &* 10 &+ UInt64(bytes[index] - UInt8(ascii: "0"))
                index += 1
                digits += 1
            }
            return digits > 0 ? value : nil
        }
        let hasError = payload.withUnsafeReadableBytes { Self.find(Array("\"error\"".utf8), in: $0) != nil }
        if let sequence, !hasError { return .success(sequence) }
        return .failure(NATSBenchError(.serverError, "not a PubAck: \(String(buffer: payload).prefix(200))"))
    }

    /// The stream sequence in a JetStream ack subject: `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.…`
    /// (9 tokens) or with a domain and account hash after `$JS.ACK` (11 or 12 tokens).
    static func streamSequence(ackSubject: String) -> UInt64? {
        let tokens = ackSubject.utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        let index: Int
        switch tokens.count {
        case 9: index = 5
        case 11, 12: index = 7
        default: return nil
        }
        guard tokens[0].elementsEqual("$JS".utf8), tokens[1].elementsEqual("ACK".utf8) else { return nil }
        var value: UInt64 = 0
        for byte in tokens[index] {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            value = value &* 10 &+ UInt64(byte - UInt8(ascii: "0"))
        }
        return tokens[index].isEmpty ? nil : value
    }

    /// The index just past the first occurrence of `needle` in `bytes`.
    private static func find(_ needle: [UInt8], in bytes: UnsafeRawBufferPointer) -> Int? {
        guard needle.count <= bytes.count else { return nil }
        var start = 0
        while start + needle.count <= bytes.count {
            var matched = true
            for offset in 0..<needle.count where bytes[start + offset] != needle[offset] {
                matched = false
                break
            }
            if matched { return start + needle.count }
            start += 1
        }
        return nil
    }
}
