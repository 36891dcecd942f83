import Foundation
import Logging
import NIOCore
import StorkCore
import StorkStreaming
import Synchronization

// MARK: - JetStreamStream

/// One stream at run time: its index and consumers under one lock, its store, and the loop that writes published
/// messages in batches, answers publishers once their messages are stored, and delivers to consumers.
///
/// Publishing, acks and pull requests arrive on publishers' threads and only touch the locked state; everything
/// that awaits the store happens in ``run()``, one step at a time, so the stream's order is the store's order.
final class JetStreamStream: Sendable {
    /// What a `Nats-Rollup` header asks for once its message is stored.
    enum Rollup: Sendable {
        /// Every earlier message on the message's subject goes.
        case subject
        /// Every earlier message of the stream goes.
        case all
    }

    struct PendingWrite: Sendable {
        var message: StoredMessage
        var replyTo: String?
        var messageID: String?
        var rollup: Rollup?
    }

    struct State: Sendable {
        var config: StreamConfig
        var created: String
        var index: StreamIndex
        var duplicates = DuplicateWindow()
        var consumers: [String: ConsumerStateMachine] = [:]
        /// Accepted, sequence assigned, not yet stored.
        var writes: [PendingWrite] = []
        var writesBytes: UInt64 = 0
        var nextSequence: UInt64
        /// Recently stored messages, for deliveries without a store read.
        var recent: [UInt64: StoredMessage] = [:]
        var recentOrder: [UInt64] = []
        var closed = false
        var consumersDirtyAt: Int64?
        /// The consumer a partial round of persistence saved last (the next round starts after it).
        var persistCursor: String?
        /// Acks waiting for their consumer's state to be stored before they are confirmed (their reply subjects).
        var ackConfirmations: [(consumer: String, reply: String)] = []

        /// Drops `doomed` (ascending sequences) from the index, the recent cache and the consumers; the store is the
        /// caller's. Returns whether they were every message up to the last of them (one purge in the store).
        mutating func drop(_ doomed: [UInt64]) -> Bool {
            guard let last = doomed.last else { return false }
            // Every message up to the last doomed one, when it starts at the first and counts as many (`doomed` is
            // ascending, each present).
            let contiguous = doomed[0] == self.index.firstSequence && self.index.count(through: last) == doomed.count
            if contiguous {
                self.index.purge(through: last)
            } else {
                for sequence in doomed { self.index.remove(sequence) }
            }
            for sequence in doomed { self.recent[sequence] = nil }
            for name in self.consumers.keys { self.consumers[name]!.streamTrimmed(index: self.index) }
            return contiguous
        }

        /// Drops every message up to `last` (without listing them: a purge of a long stream); returns how many.
        mutating func drop(through last: UInt64) -> Int {
            let removed = self.index.purge(through: last)
            self.recent = self.recent.filter { $0.key > last }
            for name in self.consumers.keys { self.consumers[name]!.streamTrimmed(index: self.index) }
            return removed
        }
    }

    let name: String
    let store: any MessageStore
    let router: BusRouter
    let logger: Logger
    let now: @Sendable () -> Int64
    let state: Mutex<State>
    private let wake: AsyncStream<Void>
    private let wakeContinuation: AsyncStream<Void>.Continuation
    private let subscriptions = Mutex<[BusSubscription]>([])
    /// Yields once when the store refuses a write as `fenced`: another node opened the stream since (a takeover while
    /// this node was paused or cut off). The node that serves a placed stream stops serving it then.
    let fenced: AsyncStream<Void>
    private let fencedContinuation: AsyncStream<Void>.Continuation
    /// `{"stream":"<name>","seq":` with the name JSON-escaped once.
    private let pubAckPrefix: [UInt8]
    static let recentLimit = 8192

    init(
        config: StreamConfig,
        created: String,
        store: any MessageStore,
        recovery: MessageStoreRecovery,
        router: BusRouter,
        logger: Logger,
        now: @escaping @Sendable () -> Int64
    ) {
        self.name = config.name
        let escapedName = (try? JetStreamJSON.encoder.encode(config.name)).map { Array($0) } ?? Array("\"\"".utf8)
        self.pubAckPrefix = Array("{\"stream\":".utf8) + escapedName + Array(",\"seq\":".utf8)
        self.store = store
        self.router = router
        self.logger = logger
        self.now = now
        (self.fenced, self.fencedContinuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let index = StreamIndex(recovery: recovery, loader: store.indexLoader)
        var state = State(config: config, created: created, index: index, nextSequence: index.lastSequence + 1)
        for (key, value) in recovery.metadata where key.hasPrefix("consumer.") {
            let consumerName = String(key.dropFirst("consumer.".count))
            if let snapshot = try? JSONDecoder().decode(ConsumerStateMachine.Snapshot.self, from: Data(value)) {
                var consumer = ConsumerStateMachine(name: consumerName, snapshot: snapshot)
                consumer.streamSubjects(config.subjects)
                state.consumers[consumerName] = consumer
            } else {
                logger.warning("unreadable consumer state skipped", metadata: ["stream": "\(config.name)", "consumer": "\(consumerName)"])
            }
        }
        self.state = Mutex(state)
        (self.wake, self.wakeContinuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    func signal() { self.wakeContinuation.yield() }

    // MARK: Subjects

    /// Listens on the stream's subjects (again, after a change of subjects).
    func bindSubjects() {
        let subjects = self.state.withLock { $0.config.subjects }
        let receiver = StreamReceiver(stream: self)
        let new = subjects.map { self.router.subscribe($0, receiver: receiver) }
        let old = self.subscriptions.withLock { subscriptions in
            defer { subscriptions = new }
            return subscriptions
        }
        for subscription in old { self.router.unsubscribe(subscription) }
    }

    func unbindSubjects() {
        let old = self.subscriptions.withLock { subscriptions in
            defer { subscriptions = [] }
            return subscriptions
        }
        for subscription in old { self.router.unsubscribe(subscription) }
    }

    struct StreamReceiver: BusReceiver {
        let stream: JetStreamStream
        func receive(_ message: BusMessage, subscription: BusSubscription) {
            self.stream.accept(message)
        }
    }

    // MARK: Publishing (publisher's thread)

    /// Takes a published message: refuses it (limits, size, sealed), answers a duplicate at once, or assigns it the
    /// next sequence and queues it for the store.
    func accept(_ message: BusMessage) {
        let headers = message.headers
        let messageID = headers?["Nats-Msg-Id"]
        let now = self.now()
        var stored = StoredMessage(
            sequence: 0,
            subject: message.subject,
            headers: message.headers.map { Array($0.encoded.readableBytesView) } ?? [],
            payload: Array(message.payload.readableBytesView),
            timestamp: now
        )
        enum Outcome {
            case queued
            case refused(JetStreamAPIError)
            case duplicate(UInt64)
        }
        let outcome = self.state.withLock { state -> Outcome in
            if state.closed { return .refused(.streamNotFound) }
            if state.config.sealed { return .refused(.streamSealed) }
            var rollup: Rollup?
            if let value = headers?["Nats-Rollup"] {
                guard state.config.allowRollupHdrs else { return .refused(.rollupNotPermitted) }
                switch value.lowercased() {
                case "sub": rollup = .subject
                case "all": rollup = .all
                default: return .refused(.invalidRollup(value))
                }
            }
            if let expected = headers?["Nats-Expected-Stream"], expected != state.config.name {
                return .refused(JetStreamAPIError(code: 400, errCode: 10060, description: "expected stream does not match"))
            }
            if let messageID,
                let sequence = state.duplicates.sequence(of: messageID, now: now, window: state.config.duplicateWindow)
            {
                return .duplicate(sequence)
            }
            if let messageID, let queued = state.writes.first(where: { $0.messageID == messageID }) {
                return .duplicate(queued.message.sequence)
            }
            // Limits count what is queued as well as what is stored.
            let messageSize = UInt64(stored.payload.count + stored.headers.count)
            if state.config.maxMsgSize >= 0, messageSize > UInt64(state.config.maxMsgSize) {
                return .refused(.messageTooLarge)
            }
            if let refusal = state.index.refusal(
                for: stored.accountedSize,
                queuedCount: state.writes.count,
                queuedBytes: state.writesBytes,
                config: state.config
            ) {
                return .refused(refusal)
            }
            stored.sequence = state.nextSequence
            state.nextSequence += 1
            state.writes.append(
                PendingWrite(message: stored, replyTo: message.replyTo, messageID: messageID, rollup: rollup)
            )
            state.writesBytes += stored.accountedSize
            if let messageID {
                state.duplicates.record(messageID, sequence: stored.sequence, timestamp: now)
            }
            return .queued
        }
        // A stream with `no_ack` answers no publisher, neither with an ack nor with a refusal.
        let reply = self.state.withLock { $0.config.noAck } ? nil : message.replyTo
        switch outcome {
        case .queued:
            self.signal()
        case .refused(let error):
            if let reply { self.respond(reply, ErrorResponse(error: error)) }
        case .duplicate(let sequence):
            if let reply {
                self.respond(reply, PubAck(stream: self.name, seq: sequence, duplicate: true))
            }
        }
    }

    func respond(_ replyTo: String, _ body: some Encodable) {
        self.router.reply(replyTo, json: body)
    }

    /// A PubAck without `JSONEncoder` (one per stored message): `{"stream":<name>,"seq":<n>}`.
    private func acknowledge(_ replyTo: String, sequence: UInt64) {
        var payload = ByteBuffer()
        payload.writeBytes(self.pubAckPrefix)
        payload.writeDecimal(Int(sequence))
        payload.writeInteger(UInt8(ascii: "}"))
        self.router.publish(BusMessage(subject: replyTo, payload: payload))
    }

    // MARK: The loop

    /// Writes, answers and delivers until the stream is closed.
    func run() async {
        for await _ in self.wake {
            if self.state.withLock({ $0.closed }) { break }
            await self.step()
        }
    }

    func close() {
        self.state.withLock { $0.closed = true }
        self.wakeContinuation.finish()
        self.fencedContinuation.finish()
    }

    /// Logs a failed store write; one refused as `fenced` tells whoever serves the stream (``fenced``).
    private func storeFailed(_ what: String, _ error: any Error, consumer: String? = nil) {
        var metadata: Logger.Metadata = ["stream": "\(self.name)", "error": "\(error)"]
        if let consumer { metadata["consumer"] = "\(consumer)" }
        if let error = error as? StorkError, error.code == .fenced {
            self.logger.warning("stream store write fenced: another node serves the stream now", metadata: metadata)
            self.fencedContinuation.yield()
            return
        }
        self.logger.error("\(what)", metadata: metadata)
    }

    /// One round: store what was published, trim by limits, deliver to consumers, expire timers, persist consumers.
    func step() async {
        await self.writePending()
        await self.trim()
        await self.deliverAll()
        await self.removeInactiveConsumers()
        await self.persistConsumers(force: false)
        await self.confirmAcks()
    }

    /// Stores the state of the consumers with acks waiting for confirmation, then confirms them (an empty reply).
    private func confirmAcks() async {
        let waiting = self.state.withLock { state in
            defer { state.ackConfirmations = [] }
            return state.ackConfirmations
        }
        guard !waiting.isEmpty else { return }
        var stored: Set<String> = []
        for name in Set(waiting.map(\.consumer)) {
            do {
                try await self.persistConsumer(name)
                stored.insert(name)
            } catch {
                // Not confirmed: the client's ack times out and it acks again.
                self.storeFailed("consumer state not saved", error, consumer: name)
            }
        }
        for (consumer, reply) in waiting where stored.contains(consumer) {
            self.router.publish(BusMessage(subject: reply, payload: ByteBuffer()))
        }
    }

    /// Ephemeral consumers nobody used for their inactive threshold go away, state and all.
    private func removeInactiveConsumers() async {
        let now = self.now()
        let removed = self.state.withLock { state -> [String] in
            let inactive = state.consumers.filter { $0.value.isInactive(now: now) }.map(\.key)
            for name in inactive { state.consumers[name] = nil }
            return inactive
        }
        for name in removed {
            self.logger.debug("inactive ephemeral consumer removed", metadata: ["stream": "\(self.name)", "consumer": "\(name)"])
            try? await self.store.saveMetadata(key: "consumer.\(name)", value: nil)
        }
    }

    private func writePending() async {
        let writes = self.state.withLock { state -> [PendingWrite] in
            defer {
                state.writes = []
                state.writesBytes = 0
            }
            return state.writes
        }
        guard !writes.isEmpty else { return }
        do {
            try await self.store.append(writes.map(\.message))
        } catch {
            self.storeFailed("stream store append failed", error)
            if !self.state.withLock({ $0.config.noAck }) {
                for write in writes {
                    if let reply = write.replyTo {
                        self.respond(reply, ErrorResponse(error: .storeFailure("\(error)")))
                    }
                }
            }
            return
        }
        self.state.withLock { state in
            for write in writes {
                state.index.append(write.message.indexEntry)
                state.recent[write.message.sequence] = write.message
                state.recentOrder.append(write.message.sequence)
            }
            if state.recentOrder.count > Self.recentLimit {
                let excess = state.recentOrder.count - Self.recentLimit
                for sequence in state.recentOrder.prefix(excess) { state.recent[sequence] = nil }
                state.recentOrder.removeFirst(excess)
            }
        }
        for write in writes where write.rollup != nil {
            await self.rollUp(write.message, write.rollup!)
        }
        guard !self.state.withLock({ $0.config.noAck }) else { return }
        for write in writes {
            if let reply = write.replyTo { self.acknowledge(reply, sequence: write.message.sequence) }
        }
    }

    /// A stored message with `Nats-Rollup` replaces what came before it: on its subject (`sub`) or in the whole stream
    /// (`all`). The rollup happens before the publisher's ack, so an acked rollup has taken effect.
    private func rollUp(_ message: StoredMessage, _ rollup: Rollup) async {
        let (doomed, purged) = self.state.withLock { state -> ([UInt64], Bool) in
            let list: [UInt64]
            if rollup == .all {
                var all: [UInt64] = []
                var next = state.index.next(from: 0, filters: [])
                while let sequence = next, sequence < message.sequence {
                    all.append(sequence)
                    next = state.index.next(from: sequence + 1, filters: [])
                }
                list = all
            } else {
                list = state.index.entries.lazy
                    .prefix { $0.sequence < message.sequence }
                    .filter { $0.subject == message.subject }
                    .map(\.sequence)
            }
            return (list, state.drop(list))
        }
        guard let last = doomed.last else { return }
        do {
            if purged { try await self.store.purge(through: last) } else { try await self.store.remove(doomed) }
        } catch {
            self.storeFailed("stream store rollup failed", error)
        }
    }

    /// Drops what the limits no longer allow, in the index, the consumers and the store.
    func trim() async {
        let evicted = self.state.withLock { state -> [UInt64] in
            let evicted = state.index.evict(config: state.config, now: self.now())
            if !evicted.isEmpty {
                for sequence in evicted { state.recent[sequence] = nil }
                for name in state.consumers.keys { state.consumers[name]!.streamTrimmed(index: state.index) }
            }
            return evicted
        }
        guard !evicted.isEmpty else { return }
        do {
            try await self.store.remove(evicted)
        } catch {
            self.storeFailed("stream store remove failed", error)
        }
    }

    // MARK: Delivering

    private func deliverAll() async {
        let names = self.state.withLock { state -> [String] in
            let now = self.now()
            var statuses: [ConsumerStateMachine.Status] = []
            for name in state.consumers.keys {
                statuses += state.consumers[name]!.tick(now: now, index: state.index)
                if let subject = state.consumers[name]!.config.deliverSubject {
                    state.consumers[name]!.pushActive = self.router.hasInterest(in: subject)
                }
            }
            for status in statuses { self.sendStatus(status) }
            return Array(state.consumers.keys)
        }
        for name in names { await self.deliver(consumer: name) }
        // A no-wait request that the deliveries drained gets its status now.
        let statuses = self.state.withLock { state -> [ConsumerStateMachine.Status] in
            var statuses: [ConsumerStateMachine.Status] = []
            let now = self.now()
            for name in state.consumers.keys where state.consumers[name]!.waiting.contains(where: \.noWait) {
                statuses += state.consumers[name]!.tick(now: now, index: state.index)
            }
            return statuses
        }
        for status in statuses { self.sendStatus(status) }
    }

    private func deliver(consumer name: String) async {
        while true {
            let batch = self.state.withLock { state -> [(ConsumerStateMachine.Delivery, StoredMessage?)] in
                guard state.consumers[name] != nil else { return [] }
                var batch: [(ConsumerStateMachine.Delivery, StoredMessage?)] = []
                let now = self.now()
                while batch.count < 256, let delivery = state.consumers[name]!.nextDelivery(index: state.index, now: now) {
                    batch.append((delivery, state.recent[delivery.streamSequence]))
                }
                if batch.isEmpty { return [] }
                // Messages left after each delivery: counted once for the batch.
                var remaining = state.consumers[name]!.unprocessed(index: state.index)
                for position in batch.indices.reversed() {
                    batch[position].0.pendingAfter = remaining
                    if batch[position].0.deliveries == 1 { remaining += 1 }
                }
                return batch
            }
            if batch.isEmpty { return }
            var missing = batch.filter { $0.1 == nil }.map(\.0.streamSequence)
            var loaded: [UInt64: StoredMessage] = [:]
            if let first = missing.min(), let last = missing.max() {
                do {
                    if last - first < UInt64(missing.count * 2 + 16) {
                        for message in try await self.store.messages(from: first, limit: Int(last - first) + 1) {
                            loaded[message.sequence] = message
                        }
                    }
                    missing.removeAll { loaded[$0] != nil }
                    for sequence in missing {
                        if let message = try await self.store.message(sequence) { loaded[sequence] = message }
                    }
                } catch {
                    self.logger.error("stream store read failed", metadata: ["stream": "\(self.name)", "error": "\(error)"])
                }
            }
            let headersOnly = self.state.withLock { $0.consumers[name]?.config.headersOnly ?? false }
            for (delivery, cached) in batch {
                guard let message = cached ?? loaded[delivery.streamSequence] else { continue }
                self.send(message, delivery: delivery, consumer: name, headersOnly: headersOnly)
            }
            // After the messages it follows, on the same subject: the client answers once it has taken them.
            let answerTo = "$JS.FC.\(self.name).\(name).\(UInt64.random(in: 1...UInt64.max))"
            let now = self.now()
            if let request = self.state.withLock({ $0.consumers[name]?.flowControlRequest(answerTo: answerTo, now: now) }) {
                self.sendStatus(request)
            }
        }
    }

    /// Delivers one message; `headersOnly` sends its headers and `Nats-Msg-Size` (the payload's size) without the
    /// payload, as NATS does for a consumer with `headers_only`.
    private func send(
        _ message: StoredMessage,
        delivery: ConsumerStateMachine.Delivery,
        consumer: String,
        headersOnly: Bool
    ) {
        var reply = "$JS.ACK."
        reply += self.name
        reply += "."
        reply += consumer
        reply += ".\(delivery.deliveries).\(delivery.streamSequence).\(delivery.consumerSequence).\(message.timestamp).\(delivery.pendingAfter)"
        var headers = message.headers.isEmpty ? nil : MessageHeaders(block: ByteBuffer(bytes: message.headers))
        if headersOnly {
            var fields = headers ?? MessageHeaders()
            fields.fields.append(("Nats-Msg-Size", "\(message.payload.count)"))
            headers = fields
        }
        let out = BusMessage(
            subject: message.subject,
            replyTo: reply,
            headers: headers,
            payload: headersOnly ? ByteBuffer() : ByteBuffer(bytes: message.payload)
        )
        self.router.publish(out, to: delivery.subject)
    }

    func sendStatus(_ status: ConsumerStateMachine.Status) {
        self.router.sendStatus(status)
    }

    // MARK: Consumers' persistence

    /// How often changed consumer state is written (ns). A crash loses at most this much ack progress: those messages
    /// are delivered again (at least once). Each write re-encodes every pending delivery, so not after every ack.
    static let persistInterval: Int64 = 200_000_000
    /// Consumers saved in one round (unless forced, as on shutdown).
    static let persistBatch = 32

    /// Writes the state of consumers that changed, at most every ``persistInterval`` unless forced.
    /// Saves one consumer's state now (a durable consumer when it is created or changed: it must outlive a crash
    /// right after its creation was answered).
    func persistConsumer(_ name: String) async throws {
        guard let snapshot = self.state.withLock({ $0.consumers[name]?.snapshot }) else { return }
        try await self.store.saveMetadata(key: "consumer.\(name)", value: Array(try JSONEncoder().encode(snapshot)))
    }

    func persistConsumers(force: Bool) async {
        let now = self.now()
        let snapshots = self.state.withLock { state -> [(String, ConsumerStateMachine.Snapshot)] in
            let dirty = state.consumers.filter { $0.value.dirty }
            guard !dirty.isEmpty else { return [] }
            if !force {
                guard let since = state.consumersDirtyAt else {
                    state.consumersDirtyAt = now
                    return []
                }
                guard now - since >= Self.persistInterval else { return [] }
            }
            // Each save is a durable write (two fsyncs) made while this stream's publishes wait: a round saves at
            // most `persistBatch` consumers and leaves the rest for the next rounds, so that many consumers changing
            // at once (a node's resources moving here) do not hold publish acks back for seconds.
            // In name order from where the last round stopped, so that consumers changing all the time do not
            // keep the others waiting.
            let names = dirty.keys.sorted()
            let start = state.persistCursor.flatMap { cursor in names.firstIndex { $0 > cursor } } ?? 0
            let rotated = names[start...] + names[..<start]
            let chosen = force ? names : Array(rotated.prefix(Self.persistBatch))
            state.persistCursor = chosen.last
            state.consumersDirtyAt = chosen.count < dirty.count ? now - Self.persistInterval : nil
            for name in chosen { state.consumers[name]!.dirty = false }
            return chosen.map { ($0, state.consumers[$0]!.snapshot) }
        }
        for (name, snapshot) in snapshots {
            do {
                let data = try JSONEncoder().encode(snapshot)
                try await self.store.saveMetadata(key: "consumer.\(name)", value: Array(data))
            } catch {
                self.storeFailed("consumer state not saved", error, consumer: name)
                self.state.withLock { $0.consumers[name]?.dirty = true }
            }
        }
    }

    /// Whether the stream has timers running (ack waits, request expiries, age limits, push consumers waiting for
    /// interest), so the ticker should wake it.
    var needsTicks: Bool {
        self.state.withLock { state in
            if state.config.maxAge > 0, state.index.count > 0 { return true }
            if state.consumersDirtyAt != nil { return true }
            return state.consumers.values.contains { consumer in
                consumer.nextDeadline != nil || (!consumer.config.isPull && !consumer.pushActive) || consumer.isEphemeral
                    || consumer.sendsHeartbeats
            }
        }
    }
}

// MARK: - Responses

extension BusRouter {
    /// Publishes `body` as JSON to `replyTo` (JetStream API answers).
    func reply(_ replyTo: String, json body: some Encodable) {
        let data = (try? JetStreamJSON.encoder.encode(body)) ?? Data("{}".utf8)
        self.publish(BusMessage(subject: replyTo, payload: ByteBuffer(bytes: data)))
    }

    /// Publishes a status message (headers only) to a pull requester or a deliver subject: `404`, `408` with the
    /// pending counts, `409`, `100` with the last sequences.
    func sendStatus(_ status: ConsumerStateMachine.Status) {
        var headers = MessageHeaders(status: status.code, statusDescription: status.description)
        if status.code == 408 {
            headers.fields = [("Nats-Pending-Messages", "\(status.pendingMessages)"), ("Nats-Pending-Bytes", "0")]
        } else if status.code == 100, status.answerTo == nil {
            headers.fields = [
                ("Nats-Last-Consumer", "\(status.lastConsumerSequence)"),
                ("Nats-Last-Stream", "\(status.lastStreamSequence)"),
            ]
        }
        self.publish(BusMessage(subject: status.replyTo, replyTo: status.answerTo, headers: headers, payload: ByteBuffer()))
    }
}

struct PubAck: Encodable {
    var stream: String
    var seq: UInt64
    var duplicate: Bool?
}

struct ErrorResponse: Encodable {
    var type: String?
    var error: JetStreamAPIError
}

enum JetStreamJSON {
    static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes]
        return encoder
    }()

    static func time(_ nanoseconds: Int64) -> String {
        JetStreamTime.format(Date(timeIntervalSince1970: Double(nanoseconds) / 1e9))
    }

    static func parseTime(_ text: String) -> Int64? {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let date = formatter.date(from: text) { return Int64(date.timeIntervalSince1970 * 1e9) }
        formatter.formatOptions = [.withInternetDateTime]
        if let date = formatter.date(from: text) { return Int64(date.timeIntervalSince1970 * 1e9) }
        // Nanosecond fractions (Go writes 9 digits): cut to milliseconds and retry.
        if let dot = text.firstIndex(of: "."), let end = text[dot...].firstIndex(where: { $0 == "Z" || $0 == "+" || $0 == "-" }) {
            let fraction = text[text.index(after: dot)..<end]
            let trimmed = text[..<dot] + "." + fraction.prefix(3) + text[end...]
            formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
            if let date = formatter.date(from: String(trimmed)) { return Int64(date.timeIntervalSince1970 * 1e9) }
        }
        return nil
    }
}
