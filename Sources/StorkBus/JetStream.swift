import Foundation
import Logging
#if canImport(Glibc)
import Glibc
#endif
import NIOCore
import ServiceLifecycle
import StorkCore
import StorkStreaming
import Synchronization

// MARK: - JetStream

/// Durable streams and consumers behind the JetStream API subset that NATS clients use (`$JS.API.>`, acks on
/// `$JS.ACK.>`), on top of a ``BusRouter``. Streams persist in the store their configuration names (memory, or
/// what `storeFactory` makes for file storage); the catalog of streams lives under `directory`.
///
/// A `Service`: `run()` recovers the streams, serves the API and runs each stream's loop; on shutdown it saves
/// every consumer's state and closes the stores.
public final class JetStream: Service, Sendable {
    public struct Configuration: Sendable {
        /// Where the catalog (one folder per stream with `stream.json`) and the file stores live.
        public var directory: String
        /// How often timers (ack waits, request expiry, age limits) are looked at.
        public var tick: Duration = .milliseconds(50)
        /// Streams at most.
        public var maxStreams = 10_000

        public init(directory: String) {
            self.directory = directory
        }
    }

    /// Makes the store for a stream with file storage (or the store its `stork_store` names), in `directory`.
    public typealias StoreFactory = @Sendable (_ config: StreamConfig, _ directory: String) throws -> any MessageStore

    public let configuration: Configuration
    let router: BusRouter
    let storeFactory: StoreFactory
    let logger: Logger
    let now: @Sendable () -> Int64
    let streams = Mutex<[String: JetStreamStream]>([:])
    private let requests: AsyncStream<APIRequest>
    private let requestsContinuation: AsyncStream<APIRequest>.Continuation
    /// History reads other nodes asked this node for (answered one at a time, off the publisher's thread).
    let historyReads: AsyncStream<(request: HistoryRequest, replyTo: String)>
    let historyReadsContinuation: AsyncStream<(request: HistoryRequest, replyTo: String)>.Continuation
    private let spawns: AsyncStream<JetStreamStream>
    private let spawnsContinuation: AsyncStream<JetStreamStream>.Continuation
    private let apiSubscriptions = Mutex<[BusSubscription]>([])
    /// The cluster-wide subscriptions to the API subjects naming each stream this node serves.
    let streamAPISubscriptions = Mutex<[String: [BusSubscription]]>([:])
    /// Tokens of this node's own gatherings of every node's streams (its own receiver does not answer them).
    let gatherTokens = Mutex<Set<String>>([])
    /// How streams on shared stores are placed (``attach(placement:)``); nil: every stream stays where it is made.
    let placement = Mutex<JetStreamPlacement?>(nil)
    /// Set when a stream kept on this node was made or changed: its record in the cluster is due (``takeKeptChange()``).
    let keptChanged = Mutex(false)
    private let readiness = Mutex<(ready: Bool, failure: (any Error)?, waiters: [CheckedContinuation<Void, any Error>])>(
        (false, nil, [])
    )

    struct APIRequest: Sendable {
        var subject: String
        var replyTo: String?
        var payload: ByteBuffer
    }

    public init(
        configuration: Configuration,
        router: BusRouter,
        storeFactory: @escaping StoreFactory,
        logger: Logger = Logger(label: "stork.jetstream"),
        now: @escaping @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970 * 1e9) }
    ) {
        self.configuration = configuration
        self.router = router
        self.storeFactory = storeFactory
        self.logger = logger
        self.now = now
        (self.requests, self.requestsContinuation) = AsyncStream.makeStream(of: APIRequest.self)
        (self.spawns, self.spawnsContinuation) = AsyncStream.makeStream(of: JetStreamStream.self)
        (self.historyReads, self.historyReadsContinuation) = AsyncStream.makeStream(
            of: (request: HistoryRequest, replyTo: String).self,
            bufferingPolicy: .bufferingNewest(256)
        )
    }

    // MARK: Running

    public func run() async throws {
        do {
            try FileManager.default.createDirectory(atPath: self.configuration.directory, withIntermediateDirectories: true)
            try await self.recover()
        } catch {
            self.finishReadiness(error)
            throw error
        }
        let receiver = APIReceiver(jetstream: self, catchAll: true)
        self.apiSubscriptions.withLock {
            $0 = [
                // Requests of this node's clients that no node serves by name (JetStreamCluster.swift); a stream's
                // own API subjects are subscribed cluster-wide by its node.
                self.router.subscribe("$JS.API.>", scope: .node, receiver: receiver),
                self.router.subscribe(Self.streamsSubject, receiver: StreamsReceiver(jetstream: self)),
                self.router.subscribe(Self.historySubject, receiver: HistoryReceiver(jetstream: self)),
                self.router.subscribe("$JS.ACK.>", receiver: AckReceiver(jetstream: self)),
                self.router.subscribe("$JS.FC.>", receiver: FlowControlReceiver(jetstream: self)),
            ]
        }
        self.finishReadiness(nil)
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { group in
                group.addTask { await self.serveRequests() }
                group.addTask { await self.serveHistoryReads() }
                group.addTask { await self.tickLoop() }
                for await stream in self.spawns {
                    group.addTask { await stream.run() }
                }
                group.cancelAll()
            }
        } onGracefulShutdown: {
            self.stopIntake()
        }
        self.stopIntake()
        for subscription in self.apiSubscriptions.withLock({ $0 }) { self.router.unsubscribe(subscription) }
        self.unbindAllAPI()
        let streams = self.streams.withLock { Array($0.values) }
        for stream in streams {
            stream.unbindSubjects()
            stream.close()
            await stream.persistConsumers(force: true)
            try? await stream.store.close()
        }
        self.logger.info("JetStream stopped", metadata: ["streams": "\(streams.count)"])
    }

    /// Returns once every stream is recovered and the API is served (throws if recovery failed), so that the
    /// endpoint can open to clients only then.
    public func waitUntilReady() async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let outcome: Result<Void, any Error>? = self.readiness.withLock { state in
                if state.ready { return .success(()) }
                if let failure = state.failure { return .failure(failure) }
                state.waiters.append(continuation)
                return nil
            }
            if let outcome { continuation.resume(with: outcome) }
        }
    }

    private func finishReadiness(_ failure: (any Error)?) {
        let waiters = self.readiness.withLock { state in
            if let failure { state.failure = failure } else { state.ready = true }
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters {
            if let failure { waiter.resume(throwing: failure) } else { waiter.resume() }
        }
    }

    private func stopIntake() {
        self.requestsContinuation.finish()
        self.spawnsContinuation.finish()
        self.historyReadsContinuation.finish()
    }

    private func serveRequests() async {
        for await request in self.requests {
            await self.handle(request)
        }
    }

    private func tickLoop() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: self.configuration.tick)
            let streams = self.streams.withLock { Array($0.values) }
            for stream in streams where stream.needsTicks { stream.signal() }
        }
    }

    // MARK: Catalog

    struct CatalogEntry: Codable {
        var config: StreamConfig
        var created: String
    }

    private func streamDirectory(_ name: String) -> String {
        "\(self.configuration.directory)/\(name)"
    }

    /// Whether this node's data directory holds stream `name` (its catalog entry), opened or not.
    public func hasCatalogEntry(_ name: String) -> Bool {
        Self.isValidName(name) && FileManager.default.fileExists(atPath: "\(self.streamDirectory(name))/stream.json")
    }

    private func recover() async throws {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: self.configuration.directory)) ?? []
        for name in names.sorted() {
            let path = "\(self.streamDirectory(name))/stream.json"
            guard let data = FileManager.default.contents(atPath: path) else { continue }
            guard let entry = try? JSONDecoder().decode(CatalogEntry.self, from: data) else {
                self.logger.error("unreadable stream catalog entry skipped", metadata: ["path": "\(path)"])
                continue
            }
            do {
                let stream = try await self.openStream(entry.config, created: entry.created)
                self.logger.info(
                    "stream recovered",
                    metadata: ["stream": "\(name)", "messages": "\(stream.state.withLock { $0.index.count })"]
                )
            } catch {
                self.logger.error("stream could not be opened", metadata: ["stream": "\(name)", "error": "\(error)"])
            }
        }
    }

    func writeCatalog(_ config: StreamConfig, created: String) throws {
        let directory = self.streamDirectory(config.name)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let data = try JSONEncoder().encode(CatalogEntry(config: config, created: created))
        let temporary = "\(directory)/stream.json.tmp"
        guard FileManager.default.createFile(atPath: temporary, contents: data) else {
            throw StorkError(.storeFailed, "cannot write \(temporary)")
        }
        guard rename(temporary, "\(directory)/stream.json") == 0 else {
            throw StorkError(.storeFailed, "cannot replace \(directory)/stream.json (errno \(errno))")
        }
    }

    private func makeStore(_ config: StreamConfig) throws -> any MessageStore {
        if config.isInMemory {
            return MemoryMessageStore()
        }
        return try self.storeFactory(config, "\(self.streamDirectory(config.name))/store")
    }

    @discardableResult
    func openStream(_ config: StreamConfig, created: String) async throws -> JetStreamStream {
        let store = try self.makeStore(config)
        let recovery = try await store.open()
        if recovery.truncatedBytes > 0 {
            self.logger.warning(
                "stream store cut a torn tail",
                metadata: ["stream": "\(config.name)", "bytes": "\(recovery.truncatedBytes)"]
            )
        }
        let stream = JetStreamStream(
            config: config,
            created: created,
            store: store,
            recovery: recovery,
            router: self.router,
            logger: self.logger,
            now: self.now
        )
        self.streams.withLock { $0[config.name] = stream }
        stream.bindSubjects()
        self.bindAPI(config.name)
        self.spawnsContinuation.yield(stream)
        stream.signal()
        return stream
    }

    // MARK: Acks and pull requests (publisher's thread)

    struct APIReceiver: BusReceiver {
        let jetstream: JetStream
        /// The node's catch-all for its own clients' requests, which leaves those a stream's node takes.
        let catchAll: Bool
        func receive(_ message: BusMessage, subscription: BusSubscription) {
            if self.catchAll, !self.jetstream.catchesAll(message.subject) { return }
            if message.subject.hasPrefix("$JS.API.CONSUMER.MSG.NEXT.") {
                self.jetstream.pullRequest(message)
            } else {
                self.jetstream.requestsContinuation.yield(
                    APIRequest(subject: message.subject, replyTo: message.replyTo, payload: message.payload)
                )
            }
        }
    }

    struct AckReceiver: BusReceiver {
        let jetstream: JetStream
        func receive(_ message: BusMessage, subscription: BusSubscription) {
            self.jetstream.ack(message)
        }
    }

    struct FlowControlReceiver: BusReceiver {
        let jetstream: JetStream
        func receive(_ message: BusMessage, subscription: BusSubscription) {
            self.jetstream.flowControlAnswered(message.subject)
        }
    }

    /// A push consumer's client answered a flow-control request (`$JS.FC.<stream>.<consumer>.<token>`): its
    /// deliveries go on.
    func flowControlAnswered(_ subject: String) {
        let tokens = subject.split(separator: ".", omittingEmptySubsequences: false)
        guard tokens.count == 5, let stream = self.streams.withLock({ $0[String(tokens[2])] }) else { return }
        let consumer = String(tokens[3])
        let resumed = stream.state.withLock { $0.consumers[consumer]?.flowControlAnswered(subject) ?? false }
        if resumed { stream.signal() }
    }

    func ack(_ message: BusMessage) {
        guard let (streamName, consumerName, sequence) = Self.ackTarget(message.subject),
            let kind = Self.acknowledgement(message.payload),
            let stream = self.streams.withLock({ $0[streamName] })
        else { return }
        let now = self.now()
        let changed = stream.state.withLock { state in
            let changed = state.consumers[consumerName]?.acknowledge(kind, streamSequence: sequence, now: now) ?? false
            // An ack that asks for a reply (`ack_sync`) is confirmed once the consumer's state is stored: after the
            // confirmation, a crash of this node does not bring the message back.
            if let reply = message.replyTo, state.consumers[consumerName] != nil {
                state.ackConfirmations.append((consumerName, reply))
            }
            return changed || message.replyTo != nil
        }
        if changed { stream.signal() }
    }

    /// Stream, consumer and stream sequence of an ack subject: `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.…`
    /// (9 tokens) or the newer form with a domain and account hash (11 or 12 tokens). Read in place: acks arrive at
    /// the rate messages are consumed.
    static func ackTarget(_ subject: String) -> (stream: String, consumer: String, sequence: UInt64)? {
        var subject = subject
        return subject.withUTF8 { bytes -> (String, String, UInt64)? in
            var dots: (Int, Int, Int, Int, Int, Int, Int, Int, Int, Int, Int, Int) = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
            var count = 0
            withUnsafeMutableBytes(of: &dots) { raw in
                let dots = raw.bindMemory(to: Int.self)
                for index in bytes.indices where bytes[index] == UInt8(ascii: ".") {
                    if count < dots.count { dots[count] = index }
                    count += 1
                }
            }
            // Tokens: n dots give n + 1 tokens; token i spans (dot[i-1] + 1) ..< dot[i].
            let tokenCount = count + 1
            let first: Int
            switch tokenCount {
            case 9: first = 2
            case 11, 12: first = 4
            default: return nil
            }
            return withUnsafeBytes(of: &dots) { raw in
                let dots = raw.bindMemory(to: Int.self)
                func token(_ i: Int) -> UnsafeBufferPointer<UInt8> {
                    let start = dots[i - 1] + 1
                    let end = i < count ? dots[i] : bytes.count
                    return UnsafeBufferPointer(rebasing: bytes[start..<end])
                }
                let sequenceToken = token(first + 3)
                guard !sequenceToken.isEmpty, sequenceToken.count <= 19 else { return nil }
                var sequence: UInt64 = 0
                for byte in sequenceToken {
                    guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
                    sequence = sequence &* 10 &+ UInt64(byte - UInt8(ascii: "0"))
                }
                return (
                    String(decoding: token(first), as: UTF8.self), String(decoding: token(first + 1), as: UTF8.self),
                    sequence
                )
            }
        }
    }

    /// What an ack's body asks for: empty or `+ACK` / `+NXT` (ack), `-NAK` with an optional `{"delay": ns}`, `+WPI`,
    /// `+TERM`; nil for anything else.
    static func acknowledgement(_ payload: ByteBuffer) -> ConsumerStateMachine.Acknowledgement? {
        payload.withUnsafeReadableBytes { bytes -> ConsumerStateMachine.Acknowledgement? in
            var start = 0
            while start < bytes.count, bytes[start] == UInt8(ascii: " ") || bytes[start] == UInt8(ascii: "\t")
                || bytes[start] == UInt8(ascii: "\r") || bytes[start] == UInt8(ascii: "\n")
            {
                start += 1
            }
            let body = UnsafeRawBufferPointer(rebasing: bytes[start...])
            func starts(with prefix: StaticString) -> Bool {
                guard body.count >= prefix.utf8CodeUnitCount else { return false }
                return prefix.withUTF8Buffer { prefix in
                    prefix.indices.allSatisfy { body[$0] == prefix[$0] }
                }
            }
            if body.isEmpty || starts(with: "+ACK") || starts(with: "+NXT") { return .ack }
            if starts(with: "+WPI") { return .inProgress }
            if starts(with: "+TERM") { return .terminate }
            guard starts(with: "-NAK") else { return nil }
            var delay: Int64 = 0
            let rest = String(decoding: body.dropFirst(4), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            if !rest.isEmpty, let object = try? JSONSerialization.jsonObject(with: Data(rest.utf8)) as? [String: Any],
                let value = object["delay"] as? NSNumber
            {
                delay = value.int64Value
            }
            return .nak(delay: delay)
        }
    }

    func pullRequest(_ message: BusMessage) {
        guard let reply = message.replyTo else { return }
        let tokens = message.subject.split(separator: ".", omittingEmptySubsequences: false)
        guard tokens.count == 7 else { return }
        let streamName = String(tokens[5])
        let consumerName = String(tokens[6])
        var batch = 1
        var expires: Int64?
        var noWait = false
        var heartbeat: Int64?
        let text = String(buffer: message.payload).trimmingCharacters(in: .whitespacesAndNewlines)
        if let number = Int(text) {
            batch = number
        } else if let data = text.data(using: .utf8), !text.isEmpty,
            let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
        {
            batch = (object["batch"] as? NSNumber)?.intValue ?? 1
            if let value = (object["expires"] as? NSNumber)?.int64Value, value > 0 { expires = self.now() + value }
            noWait = (object["no_wait"] as? Bool) ?? false
            if let value = (object["idle_heartbeat"] as? NSNumber)?.int64Value, value > 0 { heartbeat = value }
        }
        guard let stream = self.streams.withLock({ $0[streamName] }) else {
            self.sendStatus(reply, code: 404, description: "No Messages")
            return
        }
        var request = ConsumerStateMachine.PullRequest(replyTo: reply, batch: batch, expires: expires, noWait: noWait)
        request.heartbeat = heartbeat
        request.lastHeartbeat = self.now()
        enum Outcome {
            case noConsumer
            case status(ConsumerStateMachine.Status)
            case queued
        }
        let outcome = stream.state.withLock { state -> Outcome in
            guard state.consumers[consumerName] != nil else { return .noConsumer }
            if let status = state.consumers[consumerName]!.pull(request, index: state.index, now: self.now()) {
                return .status(status)
            }
            return .queued
        }
        switch outcome {
        case .noConsumer: self.sendStatus(reply, code: 409, description: "Consumer Deleted")
        case .status(let status): stream.sendStatus(status)
        case .queued: stream.signal()
        }
    }

    private func sendStatus(_ reply: String, code: Int, description: String) {
        self.router.sendStatus(.init(replyTo: reply, code: code, description: description, pendingMessages: 0))
    }
}

// MARK: - History for the gateway

/// Where a history read starts.
public enum JetStreamHistoryStart: Sendable, Hashable {
    case sequence(UInt64)
    /// Nanoseconds since 1970.
    case time(nanoseconds: Int64)
    /// The last n messages.
    case last(Int)
}

/// Stored messages of one stream on a subject (pattern), oldest first.
public struct JetStreamHistory: Sendable {
    public var stream: String
    public var messages: [StoredMessage]
    /// The stream's last sequence when the read was made: live messages after it are new.
    public var lastSequence: UInt64
}

extension JetStream {
    /// The stream whose subjects cover every subject `subject` (a pattern) can match, if one does (the first by
    /// name when several do).
    public func stream(capturing subject: String) -> String? {
        let streams = self.streams.withLock { Array($0.values) }.sorted { $0.name < $1.name }
        return streams.first { stream in
            stream.state.withLock { $0.config.subjects }.contains { Subject.isSubset(subject, of: $0) }
        }?.name
    }

    /// Up to `limit` stored messages on `subject` (a pattern) from `start`, read from the stream that captures it,
    /// on this node or another; nil when no stream does.
    public func history(subject: String, from start: JetStreamHistoryStart, limit: Int) async throws -> JetStreamHistory? {
        if let local = try await self.localHistory(subject: subject, from: start, limit: limit) { return local }
        return await self.remoteHistory(subject: subject, from: start, limit: limit)
    }

    /// ``history(subject:from:limit:)`` from this node's streams only.
    func localHistory(subject: String, from start: JetStreamHistoryStart, limit: Int) async throws -> JetStreamHistory? {
        guard let name = self.stream(capturing: subject), let stream = self.streams.withLock({ $0[name] }) else {
            return nil
        }
        let limit = max(0, limit)
        let (sequences, last): ([UInt64], UInt64) = stream.state.withLock { state in
            let last = state.nextSequence &- 1
            var selected: [UInt64] = []
            switch start {
            case .last(let count):
                for entry in state.index.reversedEntries() {
                    if selected.count >= min(count, limit) { break }
                    if Subject.matches(pattern: subject, subject: entry.subject) { selected.append(entry.sequence) }
                }
                selected.reverse()
            case .sequence, .time:
                let first: UInt64?
                switch start {
                case .sequence(let sequence): first = sequence
                case .time(let nanoseconds): first = state.index.firstSequence(atOrAfter: nanoseconds)
                case .last: first = nil
                }
                guard let first else { break }
                for entry in state.index.entries(from: first) {
                    if selected.count >= limit { break }
                    if Subject.matches(pattern: subject, subject: entry.subject) { selected.append(entry.sequence) }
                }
            }
            return (selected, last)
        }
        var messages: [StoredMessage] = []
        messages.reserveCapacity(sequences.count)
        for sequence in sequences {
            if let message = try await stream.store.message(sequence) { messages.append(message) }
        }
        return JetStreamHistory(stream: name, messages: messages, lastSequence: last)
    }
}
