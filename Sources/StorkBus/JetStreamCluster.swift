import Foundation
import NIOCore
import StorkCore
import StorkStreaming
import Synchronization

// MARK: - The JetStream API across the cluster
//
// Every node runs JetStream; a stream lives on the node that created it. That node subscribes, cluster-wide, to the
// API subjects that name the stream (`$JS.API.STREAM.INFO.<name>`, `$JS.API.CONSUMER.MSG.NEXT.<name>.<consumer>`,
// …), so a request for it from a client of any node reaches it over the bus, and its answer goes back to the
// requester's inbox the same way. Publishes to the stream's subjects and acks already travel so (the stream's
// subject subscriptions and `$JS.ACK.>` are cluster-wide).
//
// Each node also takes, for the clients connected to it (a node-scoped `$JS.API.>`), the requests that no node
// serves by name: the account's (`INFO`, `STREAM.NAMES`, `STREAM.LIST`), `STREAM.CREATE` of a new stream, and
// requests naming a stream that exists nowhere (answered `404`). Names, lists and the account's numbers gather every
// node's streams over the bus (`$STORK.JS.STREAMS`, answered by each node with its streams); a new stream's subjects
// are checked against every node's streams.
//
// Interest crosses nodes within a moment of a change: a request made right after a stream was created on another
// node may still be answered `404` by the requester's node.

extension JetStream {
    /// Where each node answers with its own streams' infos (the payload of a request is the asker's token).
    static let streamsSubject = "$STORK.JS.STREAMS"

    /// The API subjects that name `stream`: its node subscribes to them cluster-wide.
    static func apiSubjects(stream name: String) -> [String] {
        let api = "$JS.API"
        return [
            "\(api).STREAM.CREATE.\(name)", "\(api).STREAM.UPDATE.\(name)", "\(api).STREAM.INFO.\(name)",
            "\(api).STREAM.DELETE.\(name)", "\(api).STREAM.PURGE.\(name)", "\(api).STREAM.MSG.GET.\(name)",
            "\(api).STREAM.MSG.DELETE.\(name)", "\(api).CONSUMER.CREATE.\(name)", "\(api).CONSUMER.CREATE.\(name).>",
            "\(api).CONSUMER.DURABLE.CREATE.\(name).*", "\(api).CONSUMER.INFO.\(name).*",
            "\(api).CONSUMER.DELETE.\(name).*", "\(api).CONSUMER.NAMES.\(name)", "\(api).CONSUMER.LIST.\(name)",
            "\(api).CONSUMER.MSG.NEXT.\(name).*",
        ]
    }

    /// The stream a JetStream API subject names, if it names one.
    static func streamName(inAPISubject subject: String) -> String? {
        let tokens = subject.split(separator: ".", omittingEmptySubsequences: false)
        guard tokens.count >= 4, tokens[0] == "$JS", tokens[1] == "API" else { return nil }
        let path = tokens.dropFirst(2).map(String.init)
        switch (path[0], path.count) {
        case ("STREAM", 3) where ["CREATE", "UPDATE", "INFO", "DELETE", "PURGE"].contains(path[1]):
            return path[2]
        case ("STREAM", 4) where path[1] == "MSG" && ["GET", "DELETE"].contains(path[2]):
            return path[3]
        case ("CONSUMER", 5) where path[1] == "DURABLE" && path[2] == "CREATE",
            ("CONSUMER", 5) where path[1] == "MSG" && path[2] == "NEXT":
            return path[3]
        case ("CONSUMER", 3...) where path[1] == "CREATE":
            return path[2]
        case ("CONSUMER", 4) where ["INFO", "DELETE"].contains(path[1]):
            return path[2]
        case ("CONSUMER", 3) where ["NAMES", "LIST"].contains(path[1]):
            return path[2]
        default:
            return nil
        }
    }

    /// Subscribes the API subjects of a stream this node serves.
    func bindAPI(_ name: String) {
        let receiver = APIReceiver(jetstream: self, catchAll: false)
        let subscriptions = Self.apiSubjects(stream: name).map { self.router.subscribe($0, receiver: receiver) }
        let replaced = self.streamAPISubscriptions.withLock { table in
            defer { table[name] = subscriptions }
            return table[name] ?? []
        }
        for subscription in replaced { self.router.unsubscribe(subscription) }
    }

    func unbindAPI(_ name: String) {
        let subscriptions = self.streamAPISubscriptions.withLock { $0.removeValue(forKey: name) ?? [] }
        for subscription in subscriptions { self.router.unsubscribe(subscription) }
    }

    func unbindAllAPI() {
        let all = self.streamAPISubscriptions.withLock { table in
            defer { table = [:] }
            return table.values.flatMap { $0 }
        }
        for subscription in all { self.router.unsubscribe(subscription) }
    }

    /// Whether this node's catch-all takes a request its client made: one that names no stream, or a stream that
    /// neither this node (its own subscription takes it) nor another node serves.
    func catchesAll(_ subject: String) -> Bool {
        guard let name = Self.streamName(inAPISubject: subject) else { return true }
        if self.streams.withLock({ $0[name] != nil }) { return false }
        return self.router.remoteNodesInterested(in: subject) == 0
    }

    // MARK: Every node's streams

    /// Answers a gathering node with this node's streams (not its own gathering: the token is its).
    struct StreamsReceiver: BusReceiver {
        let jetstream: JetStream
        func receive(_ message: BusMessage, subscription: BusSubscription) {
            guard let reply = message.replyTo else { return }
            let token = String(buffer: message.payload)
            if self.jetstream.gatherTokens.withLock({ $0.contains(token) }) { return }
            self.jetstream.router.reply(reply, json: self.jetstream.localStreamInfos())
        }
    }

    /// Collects the answers of a gathering.
    struct CollectReceiver: BusReceiver {
        let continuation: AsyncStream<ByteBuffer>.Continuation
        func receive(_ message: BusMessage, subscription: BusSubscription) {
            self.continuation.yield(message.payload)
        }
    }

    /// This node's streams, by name.
    func localStreamInfos() -> [StreamInfo] {
        self.streams.withLock { Array($0.values) }.sorted { $0.name < $1.name }.map { self.streamInfo($0, type: nil) }
    }

    /// Every node's streams, by name: this node's, and those the other nodes with JetStream answer within `timeout`
    /// (a node that does not answer is left out, and logged).
    func clusterStreamInfos(timeout: Duration = .seconds(2)) async -> [StreamInfo] {
        var infos = self.localStreamInfos()
        let expected = self.router.remoteNodesInterested(in: Self.streamsSubject)
        guard expected > 0 else { return infos }
        let token = UUID().uuidString
        self.gatherTokens.withLock { _ = $0.insert(token) }
        let answers = await self.gather(
            subject: Self.streamsSubject,
            payload: ByteBuffer(string: token),
            expected: expected,
            timeout: timeout
        )
        self.gatherTokens.withLock { _ = $0.remove(token) }
        for answer in answers {
            if let theirs = try? JSONDecoder().decode([StreamInfo].self, from: Data(answer.readableBytesView)) {
                infos += theirs
            }
        }
        if answers.count < expected {
            self.logger.warning(
                "JetStream: not every node listed its streams in time",
                metadata: ["expected": "\(expected)", "answered": "\(answers.count)"]
            )
        }
        var seen = Set<String>()
        return infos.filter { seen.insert($0.config.name).inserted }.sorted { $0.config.name < $1.config.name }
    }
}

// MARK: - History from every node

extension JetStream {
    /// Where each node answers history reads for the streams it serves (the gateway's `from` replays and
    /// `GET /v1/history` on another node).
    static let historySubject = "$STORK.JS.HISTORY"

    /// A history read as it crosses nodes.
    struct HistoryRequest: Codable {
        var token: String
        var subject: String
        var sequence: UInt64?
        var time: Int64?
        var last: Int?
        var limit: Int

        var start: JetStreamHistoryStart {
            if let sequence { return .sequence(sequence) }
            if let time { return .time(nanoseconds: time) }
            return .last(self.last ?? 0)
        }
    }

    /// A node's answer: the history when one of its streams captures the subject, else nothing (`stream` nil).
    struct HistoryAnswer: Codable {
        struct Message: Codable {
            var sequence: UInt64
            var subject: String
            var headers: Data
            var payload: Data
            var timestamp: Int64
        }
        var stream: String?
        var messages: [Message] = []
        var lastSequence: UInt64 = 0
    }

    /// Answers another node's history read from this node's streams.
    struct HistoryReceiver: BusReceiver {
        let jetstream: JetStream
        func receive(_ message: BusMessage, subscription: BusSubscription) {
            guard let reply = message.replyTo,
                let request = try? JSONDecoder().decode(HistoryRequest.self, from: Data(message.payload.readableBytesView)),
                !self.jetstream.gatherTokens.withLock({ $0.contains(request.token) })
            else { return }
            // The store read awaits: answered by `serveHistoryReads`, off the publisher's thread.
            self.jetstream.historyReadsContinuation.yield((request, reply))
        }
    }

    /// Answers the history reads of other nodes, one at a time, until JetStream stops.
    func serveHistoryReads() async {
        for await (request, reply) in self.historyReads {
            var answer = HistoryAnswer()
            if let history = try? await self.localHistory(subject: request.subject, from: request.start, limit: request.limit) {
                answer.stream = history.stream
                answer.lastSequence = history.lastSequence
                answer.messages = history.messages.map {
                    .init(
                        sequence: $0.sequence,
                        subject: $0.subject,
                        headers: Data($0.headers),
                        payload: Data($0.payload),
                        timestamp: $0.timestamp
                    )
                }
            }
            self.router.reply(reply, json: answer)
        }
    }

    /// The stream, on any node, whose subjects cover every subject `subject` (a pattern) can match.
    public func streamCapturing(_ subject: String) async -> String? {
        if let local = self.stream(capturing: subject) { return local }
        return await self.clusterStreamInfos()
            .first { info in info.config.subjects.contains { Subject.isSubset(subject, of: $0) } }?
            .config.name
    }

    /// Asks the other nodes for a history read; the answer of the node whose stream captures `subject`, or nil.
    func remoteHistory(
        subject: String,
        from start: JetStreamHistoryStart,
        limit: Int,
        timeout: Duration = .seconds(5)
    ) async -> JetStreamHistory? {
        let expected = self.router.remoteNodesInterested(in: Self.historySubject)
        guard expected > 0 else { return nil }
        let token = UUID().uuidString
        var request = HistoryRequest(token: token, subject: subject, limit: limit)
        switch start {
        case .sequence(let sequence): request.sequence = sequence
        case .time(let nanoseconds): request.time = nanoseconds
        case .last(let count): request.last = count
        }
        guard let body = try? JSONEncoder().encode(request) else { return nil }
        self.gatherTokens.withLock { _ = $0.insert(token) }
        let decode = { (answer: ByteBuffer) in try? JSONDecoder().decode(HistoryAnswer.self, from: Data(answer.readableBytesView)) }
        let answers = await self.gather(
            subject: Self.historySubject,
            payload: ByteBuffer(bytes: body),
            expected: expected,
            timeout: timeout,
            until: { decode($0)?.stream != nil }
        )
        self.gatherTokens.withLock { _ = $0.remove(token) }
        guard let answer = answers.lazy.compactMap(decode).first(where: { $0.stream != nil }), let stream = answer.stream
        else { return nil }
        let found = JetStreamHistory(
            stream: stream,
            messages: answer.messages.map {
                StoredMessage(
                    sequence: $0.sequence,
                    subject: $0.subject,
                    headers: Array($0.headers),
                    payload: Array($0.payload),
                    timestamp: $0.timestamp
                )
            },
            lastSequence: answer.lastSequence
        )
        return found
    }
}

// MARK: - Streams placed as resources

/// How JetStream places the streams that move between nodes: those on a store every node reaches (PostgreSQL). Such a
/// stream is a resource of the cluster (`$js.stream.<name>`, its configuration in the attributes); placement picks
/// the node that serves it, which opens the store (raising its fence: see `PostgresMessageStore`) and serves the
/// stream until the resource moves. Its consumers' state lives in the store and goes with it.
public struct JetStreamPlacement: Sendable {
    /// Whether `config`'s stream is placed.
    public var isPlaced: @Sendable (StreamConfig) -> Bool
    /// Places the stream, or its new configuration; returns once its node took it, or throws.
    public var place: @Sendable (_ config: StreamConfig, _ created: String) async throws -> Void
    /// Ends the stream's placement.
    public var unplace: @Sendable (_ name: String) async throws -> Void
    /// This node's name: the node its kept streams are recorded on.
    public var node: String
    /// Records a stream kept on this node (not placed: file, sqlite, memory) in the cluster, pinned to this node, or
    /// its new configuration: every node then knows it, and answers "stream offline" for it while this node is away.
    public var record: @Sendable (_ config: StreamConfig, _ created: String) async throws -> Void
    /// Ends the record of a stream (kept on a node that is away: deleting it forgets it).
    public var forget: @Sendable (_ name: String) async throws -> Void
    /// Every stream the cluster records (placed or kept on a node), by name.
    public var records: @Sendable () -> [String: StreamRecord]
    /// The cluster's record of one stream, if any (one lookup).
    public var recordOf: @Sendable (_ name: String) -> StreamRecord?

    public init(
        node: String = "",
        isPlaced: @escaping @Sendable (StreamConfig) -> Bool,
        place: @escaping @Sendable (_ config: StreamConfig, _ created: String) async throws -> Void,
        unplace: @escaping @Sendable (_ name: String) async throws -> Void,
        record: @escaping @Sendable (_ config: StreamConfig, _ created: String) async throws -> Void = { _, _ in },
        forget: @escaping @Sendable (_ name: String) async throws -> Void = { _ in },
        records: @escaping @Sendable () -> [String: StreamRecord] = { [:] },
        recordOf: @escaping @Sendable (_ name: String) -> StreamRecord? = { _ in nil }
    ) {
        self.node = node
        self.isPlaced = isPlaced
        self.place = place
        self.unplace = unplace
        self.record = record
        self.forget = forget
        self.records = records
        self.recordOf = recordOf
    }
}

/// What the cluster records of a stream: enough to answer for it while no node serves it.
public struct StreamRecord: Sendable {
    public var config: StreamConfig
    /// The node the stream is kept on (its store is node-local), or nil for a placed stream.
    public var node: String?
    /// The member that should serve it now, if any.
    public var owner: String?

    public init(config: StreamConfig, node: String?, owner: String?) {
        self.config = config
        self.node = node
        self.owner = owner
    }

    /// Why no node serves the stream, for the "stream offline" answer.
    public var offlineReason: String {
        switch (self.node, self.owner) {
        case (let node?, nil): return "its node \(node) is not a member of the cluster"
        case (let node?, _): return "its node \(node) has not opened it"
        case (nil, nil): return "no member can serve it"
        case (nil, let owner?): return "\(owner) is taking it over"
        }
    }
}

extension JetStream {
    /// The prefix of a placed stream's resource id.
    public static let streamResourcePrefix = "$js.stream."

    /// From now on, streams `placement` says are placed are created as resources.
    public func attach(placement: JetStreamPlacement) {
        self.placement.withLock { $0 = placement }
    }

    /// Whether a node (this one or another) serves the stream `name` now.
    public func isServed(_ name: String) -> Bool {
        self.streams.withLock { $0[name] != nil }
            || self.router.remoteNodesInterested(in: "$JS.API.STREAM.INFO.\(name)") > 0
    }

    func isPlaced(_ config: StreamConfig) -> Bool {
        self.placement.withLock { $0 }?.isPlaced(config) ?? false
    }

    /// The streams the cluster records that no node serves now (`served`: the names served), by name. A record of
    /// this node's that its data directory does not hold (deleted here a moment ago; the recorder forgets it) is none.
    func offlineStreams(served: Set<String>) -> [String: StreamRecord] {
        guard let placement = self.placement.withLock({ $0 }) else { return [:] }
        return placement.records().filter { name, record in
            !served.contains(name) && !self.isStaleRecord(record, placement: placement)
        }
    }

    /// Why the cluster has a record of a stream no node serves: the error for a request naming it.
    func missingStreamError(_ name: String) -> JetStreamAPIError {
        if let placement = self.placement.withLock({ $0 }), let record = placement.recordOf(name),
            !self.isStaleRecord(record, placement: placement)
        {
            return JetStreamAPIError.streamOffline(record.offlineReason)
        }
        return JetStreamAPIError.streamNotFound
    }

    private func isStaleRecord(_ record: StreamRecord, placement: JetStreamPlacement) -> Bool {
        record.node == placement.node && !self.hasCatalogEntry(record.config.name)
    }

    /// Deletes a stream kept on a node that is not a member (it cannot be served anywhere): the cluster forgets it.
    /// Nil when `name` is no such stream.
    func forgetOffline(_ name: String) async throws -> Bool {
        guard let placement = self.placement.withLock({ $0 }), let record = placement.recordOf(name),
            record.node != nil, record.owner == nil
        else { return false }
        do {
            try await placement.forget(name)
        } catch {
            throw JetStreamAPIError(code: 503, errCode: 10077, description: "stream \(name) could not be forgotten: \(error)")
        }
        self.logger.notice(
            "stream forgotten while its node is away",
            metadata: ["stream": "\(name)", "stork.node": "\(record.node ?? "")"]
        )
        return true
    }

    /// The streams this node keeps (not placed), with their creation time: the ones it records in the cluster.
    public func keptStreams() -> [(config: StreamConfig, created: String)] {
        let streams = self.streams.withLock { Array($0.values) }.sorted { $0.name < $1.name }
        return streams.map { stream in stream.state.withLock { ($0.config, $0.created) } }.filter { !self.isPlaced($0.config) }
    }

    /// Whether this node serves stream `name` and keeps it (it is not placed).
    public func isKept(_ name: String) -> Bool {
        guard let stream = self.streams.withLock({ $0[name] }) else { return false }
        return !self.isPlaced(stream.state.withLock { $0.config })
    }

    /// Whether a stream kept here was made or changed since the last call: the recorder records it then, so that a
    /// creation never waits for the cluster.
    public func takeKeptChange() -> Bool {
        self.keptChanged.withLock { changed in
            defer { changed = false }
            return changed
        }
    }

    func keptStreamChanged(_ config: StreamConfig) {
        guard !self.isPlaced(config) else { return }
        self.keptChanged.withLock { $0 = true }
    }

    /// Records a stream kept here in the cluster; a failure is logged (the recorder tries again).
    public func recordKept(_ config: StreamConfig, created: String) async {
        guard let placement = self.placement.withLock({ $0 }), !placement.isPlaced(config) else { return }
        do {
            try await placement.record(config, created)
        } catch {
            self.logger.warning(
                "stream not recorded in the cluster yet",
                metadata: ["stream": "\(config.name)", "stork.error": "\(error)"]
            )
        }
    }

    /// Serves a placed stream on this node (its resource came here): opens its store, taking it over from the node
    /// that served it before, and its subjects and API. Returns a sequence that yields if the store later refuses
    /// this node's writes as fenced (another node opened the stream since): the caller stops serving it then, and
    /// opens it again if the stream is still placed here.
    public func serve(_ config: StreamConfig, created: String) async throws -> AsyncStream<Void> {
        if let stream = self.streams.withLock({ $0[config.name] }) { return stream.fenced }
        let stream = try await self.openStream(config, created: created)
        self.logger.info("serving placed stream", metadata: ["stream": "\(config.name)"])
        return stream.fenced
    }

    /// Stops serving a placed stream here (its resource moved or ended): saves its consumers and closes its store,
    /// leaving its data to the next node.
    public func release(_ name: String) async {
        guard let stream = self.streams.withLock({ $0.removeValue(forKey: name) }) else { return }
        self.unbindAPI(name)
        stream.unbindSubjects()
        stream.close()
        await stream.persistConsumers(force: true)
        try? await stream.store.close()
        self.logger.info("released placed stream", metadata: ["stream": "\(name)"])
    }

    /// Creates a placed stream: places it, waits until its node serves it, and answers with that node's info.
    func createPlaced(_ config: StreamConfig, placement: JetStreamPlacement) async throws -> StreamInfo {
        var info = try await self.place(
            config,
            created: JetStreamJSON.time(self.now()),
            placement: placement,
            answer: "stream_create_response"
        )
        info.didCreate = true
        return info
    }

    /// Places `config` and answers (`answer`: the response type) with the info of the node that serves it then.
    func place(
        _ config: StreamConfig,
        created: String,
        placement: JetStreamPlacement,
        answer: String
    ) async throws -> StreamInfo {
        do {
            try await placement.place(config, created)
        } catch {
            throw JetStreamAPIError(code: 503, errCode: 10077, description: "stream could not be placed: \(error)")
        }
        let infoSubject = "$JS.API.STREAM.INFO.\(config.name)"
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if let local = self.streams.withLock({ $0[config.name] }), local.state.withLock({ $0.config }) == config {
                return self.streamInfo(local, type: answer)
            }
            if self.router.remoteNodesInterested(in: infoSubject) > 0,
                let reply = await self.gather(subject: infoSubject, payload: ByteBuffer(), expected: 1).first,
                var info = try? JSONDecoder().decode(StreamInfo.self, from: Data(reply.readableBytesView)),
                info.config == config
            {
                info.type = "io.nats.jetstream.api.v1.\(answer)"
                return info
            }
            try? await Task.sleep(for: .milliseconds(50))
        }
        throw JetStreamAPIError(code: 503, errCode: 10077, description: "stream was placed but no node serves it yet")
    }

    /// Publishes `payload` on `subject` with an inbox of its own and collects up to `expected` answers, until
    /// `timeout`, or until an answer `until` accepts.
    func gather(
        subject: String,
        payload: ByteBuffer,
        expected: Int,
        timeout: Duration = .seconds(2),
        until done: (ByteBuffer) -> Bool = { _ in false }
    ) async -> [ByteBuffer] {
        let token = UUID().uuidString.replacingOccurrences(of: "-", with: "")
        let inbox = "_INBOX.stork.js.\(token)"
        let (answers, continuation) = AsyncStream<ByteBuffer>.makeStream()
        let subscription = self.router.subscribe(inbox, receiver: CollectReceiver(continuation: continuation))
        _ = self.router.publish(BusMessage(subject: subject, replyTo: inbox, payload: payload))
        var collected: [ByteBuffer] = []
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                try? await Task.sleep(for: timeout)
                continuation.finish()
            }
            for await answer in answers {
                collected.append(answer)
                if collected.count >= expected || done(answer) { break }
            }
            group.cancelAll()
        }
        continuation.finish()
        self.router.unsubscribe(subscription)
        return collected
    }
}
