import Foundation
import NIOCore
import StorkCore
import StorkStreaming

// MARK: - The JetStream API: requests on `$JS.API.<…>`, one at a time

extension JetStream {
    func handle(_ request: APIRequest) async {
        guard let reply = request.replyTo else { return }
        let tokens = request.subject.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard tokens.count >= 3 else { return }
        let path = Array(tokens.dropFirst(2))  // after "$JS.API"
        let body = Data(request.payload.readableBytesView)
        do {
            let response = try await self.route(path, body: body)
            self.respond(reply, response)
        } catch let error as JetStreamAPIError {
            self.respond(reply, APIErrorResponse(type: "io.nats.jetstream.api.v1.error_response", error: error))
        } catch {
            self.respond(
                reply,
                APIErrorResponse(
                    type: "io.nats.jetstream.api.v1.error_response",
                    error: JetStreamAPIError(code: 500, errCode: 10000, description: "\(error)")
                )
            )
        }
    }

    private func respond(_ replyTo: String, _ body: some Encodable) {
        self.router.reply(replyTo, json: body)
    }

    private func route(_ path: [String], body: Data) async throws -> any Encodable {
        switch (path.first, path.count) {
        case ("INFO", 1):
            return await self.accountInfo()
        case ("STREAM", _):
            return try await self.streamRequest(Array(path.dropFirst()), body: body)
        case ("CONSUMER", _):
            return try await self.consumerRequest(Array(path.dropFirst()), body: body)
        default:
            throw JetStreamAPIError(code: 400, errCode: 10003, description: "unknown JetStream API request")
        }
    }

    private func decode<T: Decodable>(_ type: T.Type, _ body: Data) throws -> T {
        do {
            return try JSONDecoder().decode(type, from: body.isEmpty ? Data("{}".utf8) : body)
        } catch {
            throw JetStreamAPIError(code: 400, errCode: 10025, description: "invalid JSON: \(error)")
        }
    }

    /// Options a client set that Stork does not act on are refused by name (``JetStreamOptions``), never ignored.
    private func refuseUnsupported(stream body: Data) throws {
        guard let object = Self.object(body) else { return }
        if let refusal = JetStreamOptions.streamRefusal(object) { throw JetStreamAPIError.invalidConfig(refusal) }
    }

    private func refuseUnsupported(consumer body: Data) throws {
        guard let request = Self.object(body), case .object(let config)? = request["config"] else { return }
        if let refusal = JetStreamOptions.consumerRefusal(config) { throw JetStreamAPIError.consumerInvalid(refusal) }
    }

    /// The request as a JSON object (nil when it is not one: the typed decoding has reported that already).
    private static func object(_ body: Data) -> [String: JSONValue]? {
        try? JSONDecoder().decode([String: JSONValue].self, from: body.isEmpty ? Data("{}".utf8) : body)
    }

    /// The stream served here. A request for a stream served elsewhere never comes here (its node takes it), so a
    /// stream missing here is one no node serves: offline if the cluster records it, else not found.
    private func stream(_ name: String) throws -> JetStreamStream {
        guard let stream = self.streams.withLock({ $0[name] }) else { throw self.missingStreamError(name) }
        return stream
    }

    // MARK: Account

    /// The account's numbers over every node's streams.
    private func accountInfo() async -> AccountInfo {
        let streams = await self.clusterStreamInfos()
        var consumers = 0
        var memory: UInt64 = 0
        var storage: UInt64 = 0
        for stream in streams {
            consumers += stream.state.consumerCount
            if stream.config.storage == .memory { memory += stream.state.bytes } else { storage += stream.state.bytes }
        }
        return AccountInfo(memory: memory, storage: storage, streams: streams.count, consumers: consumers)
    }

    // MARK: Streams

    private func streamRequest(_ path: [String], body: Data) async throws -> any Encodable {
        switch (path.first ?? "", path.count) {
        case ("CREATE", 2):
            var config = try self.decode(StreamConfig.self, body)
            try self.refuseUnsupported(stream: body)
            if config.name.isEmpty { config.name = path[1] }
            guard config.name == path[1] else { throw JetStreamAPIError.invalidConfig("stream name in subject does not match request") }
            return try await self.createStream(config)
        case ("UPDATE", 2):
            var config = try self.decode(StreamConfig.self, body)
            try self.refuseUnsupported(stream: body)
            if config.name.isEmpty { config.name = path[1] }
            return try await self.updateStream(config)
        case ("INFO", 2):
            return self.streamInfo(try self.stream(path[1]), type: "stream_info_response")
        case ("DELETE", 2):
            if self.streams.withLock({ $0[path[1]] == nil }), try await self.forgetOffline(path[1]) {
                return Success(type: "io.nats.jetstream.api.v1.stream_delete_response", success: true)
            }
            let stream = try self.stream(path[1])
            let placed = self.isPlaced(stream.state.withLock { $0.config })
            self.streams.withLock { $0[path[1]] = nil }
            self.unbindAPI(path[1])
            stream.unbindSubjects()
            stream.close()
            try? await stream.store.destroy()
            if placed, let placement = self.placement.withLock({ $0 }) {
                // Its resource goes too; the terminate it causes here finds nothing left to release.
                try await placement.unplace(path[1])
            } else {
                try? FileManager.default.removeItem(atPath: "\(self.configuration.directory)/\(path[1])")
                // The recorder removes its record in the cluster: this node's copy of the record goes at once (the
                // others' as it replicates), and a cluster that cannot confirm it does not hold the answer up.
                self.keptStreamChanged(stream.state.withLock { $0.config })
                if let placement = self.placement.withLock({ $0 }) {
                    let deadline = ContinuousClock.now + .seconds(2)
                    while placement.recordOf(path[1]) != nil, ContinuousClock.now < deadline {
                        try? await Task.sleep(for: .milliseconds(10))
                    }
                }
            }
            return Success(type: "io.nats.jetstream.api.v1.stream_delete_response", success: true)
        case ("PURGE", 2):
            let request = try self.decode(PurgeRequest.self, body)
            return try await self.purge(try self.stream(path[1]), request)
        case ("NAMES", 1), ("LIST", 1):
            let request = try self.decode(NamesRequest.self, body)
            var streams = await self.clusterStreamInfos()
            // Streams the cluster records but no node serves now are listed by name (`missing` in a list, as
            // nats-server does for streams without a leader).
            var offline = self.offlineStreams(served: Set(streams.map(\.config.name)))
            if let subject = request.subject, !subject.isEmpty {
                streams = streams.filter { stream in stream.config.subjects.contains { Subject.overlaps($0, subject) } }
                offline = offline.filter { $0.value.config.subjects.contains { Subject.overlaps($0, subject) } }
            }
            let offset = max(0, request.offset ?? 0)
            let page = Array(streams.dropFirst(offset))
            if path[0] == "NAMES" {
                let names = (streams.map(\.config.name) + offline.keys).sorted()
                return StreamNames(total: names.count, offset: offset, limit: 1024, streams: Array(names.dropFirst(offset)))
            }
            return StreamList(
                total: streams.count,
                offset: offset,
                limit: 256,
                streams: page,
                missing: offline.isEmpty ? nil : offline.keys.sorted()
            )
        case ("MSG", 3) where path[1] == "GET":
            let request = try self.decode(MessageGetRequest.self, body)
            let stream = try self.stream(path[2])
            let sequence: UInt64? = stream.state.withLock { state in
                if let subject = request.lastBySubject {
                    return state.index.last(filters: [subject])
                }
                if let seq = request.seq, let next = request.nextBySubject {
                    return state.index.next(from: seq, filters: [next])
                }
                return request.seq
            }
            guard let sequence, let message = try await stream.store.message(sequence) else {
                throw JetStreamAPIError.noMessageFound
            }
            return StoredMessageResponse(
                message: .init(
                    subject: message.subject,
                    seq: message.sequence,
                    hdrs: message.headers.isEmpty ? nil : Data(message.headers).base64EncodedString(),
                    data: Data(message.payload).base64EncodedString(),
                    time: JetStreamJSON.time(message.timestamp)
                )
            )
        case ("MSG", 3) where path[1] == "DELETE":
            let request = try self.decode(MessageDeleteRequest.self, body)
            let stream = try self.stream(path[2])
            let removed = stream.state.withLock { state -> Bool in
                guard !state.config.denyDelete, state.index.remove(request.seq) else { return false }
                state.recent[request.seq] = nil
                for name in state.consumers.keys { state.consumers[name]!.streamTrimmed(index: state.index) }
                return true
            }
            guard removed else { throw JetStreamAPIError.noMessageFound }
            try await stream.store.remove([request.seq])
            return Success(type: "io.nats.jetstream.api.v1.stream_msg_delete_response", success: true)
        default:
            throw JetStreamAPIError(code: 400, errCode: 10003, description: "unknown stream request")
        }
    }

    /// `elsewhere`: the other nodes' streams, whose subjects a new stream must not overlap either.
    private func validate(_ config: StreamConfig, elsewhere: [StreamConfig] = []) throws -> StreamConfig {
        var config = config
        guard Self.isValidName(config.name) else {
            throw JetStreamAPIError.invalidConfig("stream name must not be empty or contain '.', '*', '>' or whitespace")
        }
        if config.subjects.isEmpty { config.subjects = [config.name] }
        for subject in config.subjects where !Subject.isValidPattern(subject) {
            throw JetStreamAPIError.invalidConfig("invalid subject '\(subject)'")
        }
        for subject in config.subjects where subject.hasPrefix("$JS.") {
            throw JetStreamAPIError.invalidConfig("subjects may not capture the JetStream API")
        }
        // The duplicate window never outlasts the messages themselves.
        if config.maxAge > 0, config.duplicateWindow > config.maxAge { config.duplicateWindow = config.maxAge }
        if let store = config.storkStore, !["memory", "file", "sqlite", "postgres"].contains(store) {
            throw JetStreamAPIError.invalidConfig("stork_store must be memory, file, sqlite or postgres")
        }
        let others = self.streams.withLock { $0.values.filter { $0.name != config.name } }
        let theirs = others.map { $0.state.withLock { $0.config.subjects } }
            + elsewhere.filter { $0.name != config.name }.map(\.subjects)
        for subjects in theirs {
            for mine in config.subjects where subjects.contains(where: { Subject.overlaps($0, mine) }) {
                throw JetStreamAPIError.subjectsOverlap
            }
        }
        return config
    }

    static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 255
            && !name.contains { $0 == "." || $0 == "*" || $0 == ">" || $0 == " " || $0 == "\t" || $0 == "/" || $0 == "\\" }
    }

    private func createStream(_ requested: StreamConfig) async throws -> StreamInfo {
        // A new stream is made here; its name and subjects must be free on every node.
        let local = Set(self.streams.withLock { Array($0.keys) })
        let elsewhere = await self.clusterStreamInfos().filter { !local.contains($0.config.name) }
        if elsewhere.contains(where: { $0.config.name == requested.name }) { throw JetStreamAPIError.streamNameInUse }
        let offline = self.offlineStreams(served: local.union(elsewhere.map(\.config.name)))
        if let record = offline[requested.name] { throw JetStreamAPIError.streamOffline(record.offlineReason) }
        let config = try self.validate(requested, elsewhere: elsewhere.map(\.config) + offline.values.map(\.config))
        if let existing = self.streams.withLock({ $0[config.name] }) {
            guard existing.state.withLock({ $0.config }) == config else { throw JetStreamAPIError.streamNameInUse }
            return self.streamInfo(existing, type: "stream_create_response")
        }
        if let placement = self.placement.withLock({ $0 }), placement.isPlaced(config) {
            guard local.count + elsewhere.count < self.configuration.maxStreams else {
                throw JetStreamAPIError(code: 400, errCode: 10027, description: "maximum number of streams reached")
            }
            return try await self.createPlaced(config, placement: placement)
        }
        guard self.streams.withLock({ $0.count }) < self.configuration.maxStreams else {
            throw JetStreamAPIError(code: 400, errCode: 10027, description: "maximum number of streams reached")
        }
        let created = JetStreamJSON.time(self.now())
        try self.writeCatalog(config, created: created)
        do {
            let stream = try await self.openStream(config, created: created)
            self.keptStreamChanged(config)
            var info = self.streamInfo(stream, type: "stream_create_response")
            info.didCreate = true
            return info
        } catch {
            try? FileManager.default.removeItem(atPath: "\(self.configuration.directory)/\(config.name)")
            throw JetStreamAPIError.storeFailure("\(error)")
        }
    }

    private func updateStream(_ requested: StreamConfig) async throws -> StreamInfo {
        let stream = try self.stream(requested.name)
        let config = try self.validate(requested)
        let (current, created) = stream.state.withLock { ($0.config, $0.created) }
        guard config.storage == current.storage, config.storkStore == current.storkStore else {
            throw JetStreamAPIError.invalidConfig("stream storage cannot be changed")
        }
        if current.sealed, !config.sealed { throw JetStreamAPIError.invalidConfig("a sealed stream cannot be unsealed") }
        if let placement = self.placement.withLock({ $0 }), placement.isPlaced(config) {
            // The resource carries the configuration: placing the new one closes the stream and opens it again with
            // it (here or on the node placement picks).
            return try await self.place(config, created: created, placement: placement, answer: "stream_update_response")
        }
        try self.writeCatalog(config, created: created)
        stream.state.withLock { state in
            state.config = config
            for name in state.consumers.keys { state.consumers[name]!.streamSubjects(config.subjects) }
        }
        if config.subjects != current.subjects { stream.bindSubjects() }
        await stream.trim()
        stream.signal()
        self.keptStreamChanged(config)
        return self.streamInfo(stream, type: "stream_update_response")
    }

    private func purge(_ stream: JetStreamStream, _ request: PurgeRequest) async throws -> any Encodable {
        let denied = stream.state.withLock { $0.config.denyPurge }
        if denied { throw JetStreamAPIError(code: 400, errCode: 10056, description: "stream purge is not permitted") }
        if request.filter?.isEmpty ?? true, (request.keep ?? 0) == 0 {
            // Everything below a sequence (or everything): no list of what goes.
            let (removed, through): (Int, UInt64) = stream.state.withLock { state in
                // Never past what the index holds: messages being stored now are not the purge's.
                let through = min(request.seq.map { $0 &- 1 } ?? .max, state.index.lastSequence)
                guard request.seq != 0 else { return (0, 0) }
                return (state.drop(through: through), through)
            }
            if removed > 0 { try await stream.store.purge(through: through) }
            stream.signal()
            return PurgeResponse(success: true, purged: removed)
        }
        let (removed, purged): ([UInt64], Bool) = stream.state.withLock { state in
            var doomed: [UInt64] = []
            let filters = request.filter.map { $0.isEmpty ? [] : [$0] } ?? []
            let below = request.seq ?? .max
            var next = state.index.next(from: 0, filters: filters)
            while let sequence = next, sequence < below {
                doomed.append(sequence)
                next = state.index.next(from: sequence + 1, filters: filters)
            }
            if let keep = request.keep, keep > 0 { doomed = Array(doomed.dropLast(min(doomed.count, Int(keep)))) }
            return (doomed, state.drop(doomed))
        }
        if let last = removed.last {
            if purged {
                try await stream.store.purge(through: last)
            } else {
                try await stream.store.remove(removed)
            }
        }
        stream.signal()
        return PurgeResponse(success: true, purged: removed.count)
    }

    func streamInfo(_ stream: JetStreamStream, type: String?) -> StreamInfo {
        stream.state.withLock { state in
            let index = state.index
            return StreamInfo(
                type: type.map { "io.nats.jetstream.api.v1.\($0)" },
                config: state.config,
                created: state.created,
                state: StreamStateDocument(
                    messages: UInt64(index.count),
                    bytes: index.bytes,
                    firstSeq: index.count == 0 ? index.lastSequence + 1 : index.firstSequence,
                    firstTs: JetStreamJSON.time(index.firstTimestamp),
                    lastSeq: index.lastSequence,
                    lastTs: JetStreamJSON.time(index.lastTimestamp),
                    numDeleted: index.deletedCount,
                    consumerCount: state.consumers.count
                )
            )
        }
    }

    // MARK: Consumers

    private func consumerRequest(_ path: [String], body: Data) async throws -> any Encodable {
        switch (path.first ?? "", path.count) {
        case ("CREATE", 2...):
            let request = try self.decode(CreateConsumerRequest.self, body)
            try self.refuseUnsupported(consumer: body)
            let stream = try self.stream(path[1])
            var config = request.config
            if path.count >= 3 {
                let name = path[2]
                if let durable = config.durableName, durable != name {
                    throw JetStreamAPIError.consumerInvalid("consumer name in subject does not match durable name in request")
                }
                if config.name == nil { config.name = name }
                if path.count > 3, config.filterSubject == nil {
                    config.filterSubject = path.dropFirst(3).joined(separator: ".")
                }
            }
            return try await self.createConsumer(stream, config: config)
        case ("DURABLE", 4) where path[1] == "CREATE":
            let request = try self.decode(CreateConsumerRequest.self, body)
            try self.refuseUnsupported(consumer: body)
            let stream = try self.stream(path[2])
            var config = request.config
            if config.durableName == nil { config.durableName = path[3] }
            return try await self.createConsumer(stream, config: config)
        case ("INFO", 3):
            let stream = try self.stream(path[1])
            guard let info = self.consumerInfo(stream, name: path[2], type: "consumer_info_response") else {
                throw JetStreamAPIError.consumerNotFound
            }
            return info
        case ("DELETE", 3):
            let stream = try self.stream(path[1])
            let existed = stream.state.withLock { $0.consumers.removeValue(forKey: path[2]) != nil }
            guard existed else { throw JetStreamAPIError.consumerNotFound }
            try? await stream.store.saveMetadata(key: "consumer.\(path[2])", value: nil)
            return Success(type: "io.nats.jetstream.api.v1.consumer_delete_response", success: true)
        case ("NAMES", 2), ("LIST", 2):
            let stream = try self.stream(path[1])
            let names = stream.state.withLock { $0.consumers.keys.sorted() }
            if path[0] == "NAMES" {
                return ConsumerNames(total: names.count, offset: 0, limit: 1024, consumers: names)
            }
            return ConsumerList(
                total: names.count,
                offset: 0,
                limit: 256,
                consumers: names.compactMap { self.consumerInfo(stream, name: $0, type: nil) }
            )
        default:
            throw JetStreamAPIError(code: 400, errCode: 10003, description: "unknown consumer request")
        }
    }

    private func createConsumer(_ stream: JetStreamStream, config requested: ConsumerConfig) async throws -> ConsumerInfo {
        var config = requested
        let name: String
        if let durable = config.durableName, !durable.isEmpty {
            name = durable
        } else if let given = config.name, !given.isEmpty {
            name = given
        } else {
            name = Self.ephemeralName()
            config.name = name
        }
        guard Self.isValidName(name) else {
            throw JetStreamAPIError.consumerInvalid("consumer name must not contain '.', '*', '>' or whitespace")
        }
        for filter in config.filters where !Subject.isValidPattern(filter) {
            throw JetStreamAPIError.consumerInvalid("invalid filter subject '\(filter)'")
        }
        if config.deliverPolicy == .byStartSequence, (config.optStartSeq ?? 0) == 0 {
            throw JetStreamAPIError.consumerInvalid("consumer deliver policy by_start_sequence needs opt_start_seq")
        }
        var startTime: Int64?
        if config.deliverPolicy == .byStartTime {
            guard let text = config.optStartTime, let time = JetStreamJSON.parseTime(text) else {
                throw JetStreamAPIError.consumerInvalid("consumer deliver policy by_start_time needs opt_start_time")
            }
            startTime = time
        }
        if config.isPull, config.ackPolicy == .none {
            // NATS allows it; nothing to check.
        }
        if let deliverSubject = config.deliverSubject, !Subject.isValidLiteral(deliverSubject) {
            throw JetStreamAPIError.consumerInvalid("invalid deliver subject '\(deliverSubject)'")
        }
        if let deliverSubject = config.deliverSubject,
            stream.state.withLock({ $0.config.subjects.contains { Subject.matches(pattern: $0, subject: deliverSubject) } })
        {
            // Every delivery would be stored again and delivered again.
            throw JetStreamAPIError(code: 400, errCode: 10081, description: "consumer deliver subject forms a cycle")
        }
        let created = JetStreamJSON.time(self.now())
        let filtersFit = stream.state.withLock { state in
            config.filters.allSatisfy { filter in state.config.subjects.contains { Subject.overlaps($0, filter) } }
        }
        guard filtersFit else {
            throw JetStreamAPIError(code: 400, errCode: 10093, description: "consumer filter subject is not a valid subset of the interest subjects")
        }
        let added = stream.state.withLock { state -> Bool in
            if state.consumers[name] != nil {
                state.consumers[name]!.update(config)
            } else {
                if state.config.maxConsumers > 0, state.consumers.count >= state.config.maxConsumers { return false }
                state.consumers[name] = ConsumerStateMachine(
                    name: name,
                    config: config,
                    created: created,
                    index: state.index,
                    startTime: startTime,
                    now: self.now()
                )
            }
            state.consumers[name]!.touch(self.now())
            state.consumers[name]!.streamSubjects(state.config.subjects)
            return true
        }
        guard added else { throw JetStreamAPIError.maximumConsumers }
        if config.durableName != nil {
            // Stored before the answer: a durable consumer whose creation was answered survives a crash.
            do {
                try await stream.persistConsumer(name)
            } catch {
                throw JetStreamAPIError.storeFailure("\(error)")
            }
        }
        stream.signal()
        return self.consumerInfo(stream, name: name, type: "consumer_create_response")!
    }

    private static func ephemeralName() -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        var generator = SystemRandomNumberGenerator()
        return String((0..<8).map { _ in alphabet[Int(generator.next() % UInt64(alphabet.count))] })
    }

    func consumerInfo(_ stream: JetStreamStream, name: String, type: String?) -> ConsumerInfo? {
        stream.state.withLock { state in
            guard let consumer = state.consumers[name] else { return nil }
            return ConsumerInfo(
                type: type.map { "io.nats.jetstream.api.v1.\($0)" },
                streamName: stream.name,
                name: name,
                created: consumer.created,
                config: consumer.config,
                delivered: .init(
                    consumerSeq: consumer.consumerSequence,
                    streamSeq: consumer.nextStreamSequence > 0 ? consumer.nextStreamSequence - 1 : 0
                ),
                ackFloor: .init(consumerSeq: consumer.ackFloorConsumer, streamSeq: consumer.ackFloorStream),
                numAckPending: consumer.pending.count,
                numRedelivered: consumer.pendingRedelivered,
                numWaiting: consumer.waiting.count,
                numPending: consumer.unprocessed(index: state.index),
                pushBound: consumer.config.isPull ? nil : consumer.pushActive
            )
        }
    }
}

// MARK: - API documents

struct APIErrorResponse: Encodable {
    var type: String
    var error: JetStreamAPIError
}

struct Success: Encodable {
    var type: String
    var success: Bool
}

struct PurgeResponse: Encodable {
    var type = "io.nats.jetstream.api.v1.stream_purge_response"
    var success: Bool
    var purged: Int
}

struct AccountInfo: Encodable {
    struct Limits: Encodable {
        var maxMemory: Int64 = -1
        var maxStorage: Int64 = -1
        var maxStreams: Int = -1
        var maxConsumers: Int = -1
        var maxAckPending: Int = -1
        var memoryMaxStreamBytes: Int64 = -1
        var storageMaxStreamBytes: Int64 = -1
        var maxBytesRequired = false
        enum CodingKeys: String, CodingKey {
            case maxMemory = "max_memory"
            case maxStorage = "max_storage"
            case maxStreams = "max_streams"
            case maxConsumers = "max_consumers"
            case maxAckPending = "max_ack_pending"
            case memoryMaxStreamBytes = "memory_max_stream_bytes"
            case storageMaxStreamBytes = "storage_max_stream_bytes"
            case maxBytesRequired = "max_bytes_required"
        }
    }
    var type = "io.nats.jetstream.api.v1.account_info_response"
    var memory: UInt64
    var storage: UInt64
    var streams: Int
    var consumers: Int
    var limits = Limits()
}

struct StreamInfo: Codable {
    var type: String?
    var config: StreamConfig
    var created: String
    var state: StreamStateDocument
    var didCreate: Bool?

    enum CodingKeys: String, CodingKey {
        case type, config, created, state
        case didCreate = "did_create"
    }
}

struct StreamNames: Encodable {
    var type = "io.nats.jetstream.api.v1.stream_names_response"
    var total: Int
    var offset: Int
    var limit: Int
    var streams: [String]
}

struct StreamList: Encodable {
    var type = "io.nats.jetstream.api.v1.stream_list_response"
    var total: Int
    var offset: Int
    var limit: Int
    var streams: [StreamInfo]
    /// Streams the cluster records that no node serves now.
    var missing: [String]?
}

struct NamesRequest: Decodable {
    var offset: Int?
    var subject: String?
}

struct PurgeRequest: Decodable {
    var filter: String?
    var seq: UInt64?
    var keep: UInt64?
}

struct MessageGetRequest: Decodable {
    var seq: UInt64?
    var lastBySubject: String?
    var nextBySubject: String?
    enum CodingKeys: String, CodingKey {
        case seq
        case lastBySubject = "last_by_subj"
        case nextBySubject = "next_by_subj"
    }
}

struct MessageDeleteRequest: Decodable {
    var seq: UInt64
}

struct StoredMessageResponse: Encodable {
    struct Message: Encodable {
        var subject: String
        var seq: UInt64
        var hdrs: String?
        var data: String
        var time: String
    }
    var type = "io.nats.jetstream.api.v1.stream_msg_get_response"
    var message: Message
}

struct CreateConsumerRequest: Decodable {
    var streamName: String?
    var config: ConsumerConfig
    enum CodingKeys: String, CodingKey {
        case streamName = "stream_name"
        case config
    }
}

struct ConsumerInfo: Encodable {
    struct SequenceInfo: Encodable {
        var consumerSeq: UInt64
        var streamSeq: UInt64
        enum CodingKeys: String, CodingKey {
            case consumerSeq = "consumer_seq"
            case streamSeq = "stream_seq"
        }
    }
    var type: String?
    var streamName: String
    var name: String
    var created: String
    var config: ConsumerConfig
    var delivered: SequenceInfo
    var ackFloor: SequenceInfo
    var numAckPending: Int
    var numRedelivered: Int
    var numWaiting: Int
    var numPending: Int
    var pushBound: Bool?

    enum CodingKeys: String, CodingKey {
        case type
        case streamName = "stream_name"
        case name, created, config, delivered
        case ackFloor = "ack_floor"
        case numAckPending = "num_ack_pending"
        case numRedelivered = "num_redelivered"
        case numWaiting = "num_waiting"
        case numPending = "num_pending"
        case pushBound = "push_bound"
    }
}

struct ConsumerNames: Encodable {
    var type = "io.nats.jetstream.api.v1.consumer_names_response"
    var total: Int
    var offset: Int
    var limit: Int
    var consumers: [String]
}

struct ConsumerList: Encodable {
    var type = "io.nats.jetstream.api.v1.consumer_list_response"
    var total: Int
    var offset: Int
    var limit: Int
    var consumers: [ConsumerInfo]
}
