// MARK: - JetStream API documents
//
// The JSON of the JetStream API subset Stork serves (`$JS.API.>`), with NATS's snake_case keys so that unmodified
// clients (nats-py, nats.go, the nats CLI) read and write them. Durations are nanoseconds, times RFC 3339, as in
// NATS. Every field a client may omit has NATS's default; options Stork does not act on are refused when set
// (`JetStreamOptions`).

public enum RetentionPolicy: String, Codable, Sendable {
    case limits, interest, workqueue
}

public enum DiscardPolicy: String, Codable, Sendable {
    case old, new
}

public enum StorageType: String, Codable, Sendable {
    case file, memory
}

public enum DeliverPolicy: String, Codable, Sendable {
    case all
    case last
    case new
    case byStartSequence = "by_start_sequence"
    case byStartTime = "by_start_time"
    case lastPerSubject = "last_per_subject"
}

public enum AckPolicy: String, Codable, Sendable {
    case none, all, explicit
}

public enum ReplayPolicy: String, Codable, Sendable {
    case instant, original
}

/// A stream's configuration (`StreamConfig`).
extension StreamConfig {
    /// Whether the stream is kept in memory: `stork_store: memory`, or `storage: memory` without a `stork_store`.
    public var isInMemory: Bool {
        self.storkStore == "memory" || (self.storkStore == nil && self.storage == .memory)
    }
}

public struct StreamConfig: Codable, Sendable, Equatable {
    public var name: String
    public var description: String?
    public var subjects: [String]
    public var retention: RetentionPolicy
    public var maxConsumers: Int
    public var maxMsgs: Int64
    public var maxBytes: Int64
    /// Nanoseconds; 0 keeps messages forever.
    public var maxAge: Int64
    public var maxMsgSize: Int32
    public var maxMsgsPerSubject: Int64
    public var storage: StorageType
    public var discard: DiscardPolicy
    public var numReplicas: Int
    public var noAck: Bool
    /// Nanoseconds within which a repeated `Nats-Msg-Id` is a duplicate.
    public var duplicateWindow: Int64
    public var sealed: Bool
    public var denyDelete: Bool
    public var denyPurge: Bool
    public var allowRollupHdrs: Bool
    /// Stork's choice of store for this stream: `memory`, `file`, `sqlite`, `postgres`; nil follows `storage`.
    public var storkStore: String?

    public init(name: String, subjects: [String] = []) {
        self.name = name
        self.subjects = subjects
        self.retention = .limits
        self.maxConsumers = -1
        self.maxMsgs = -1
        self.maxBytes = -1
        self.maxAge = 0
        self.maxMsgSize = -1
        self.maxMsgsPerSubject = -1
        self.storage = .file
        self.discard = .old
        self.numReplicas = 1
        self.noAck = false
        self.duplicateWindow = 120_000_000_000
        self.sealed = false
        self.denyDelete = false
        self.denyPurge = false
        self.allowRollupHdrs = false
    }

    enum CodingKeys: String, CodingKey {
        case name, description, subjects, retention
        case maxConsumers = "max_consumers"
        case maxMsgs = "max_msgs"
        case maxBytes = "max_bytes"
        case maxAge = "max_age"
        case maxMsgSize = "max_msg_size"
        case maxMsgsPerSubject = "max_msgs_per_subject"
        case storage, discard
        case numReplicas = "num_replicas"
        case noAck = "no_ack"
        case duplicateWindow = "duplicate_window"
        case sealed
        case denyDelete = "deny_delete"
        case denyPurge = "deny_purge"
        case allowRollupHdrs = "allow_rollup_hdrs"
        case storkStore = "stork_store"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(name: try c.decodeIfPresent(String.self, forKey: .name) ?? "")
        self.description = try c.decodeIfPresent(String.self, forKey: .description)
        self.subjects = try c.decodeIfPresent([String].self, forKey: .subjects) ?? []
        self.retention = try c.decodeIfPresent(RetentionPolicy.self, forKey: .retention) ?? .limits
        self.maxConsumers = try c.decodeIfPresent(Int.self, forKey: .maxConsumers) ?? -1
        self.maxMsgs = try c.decodeIfPresent(Int64.self, forKey: .maxMsgs) ?? -1
        self.maxBytes = try c.decodeIfPresent(Int64.self, forKey: .maxBytes) ?? -1
        self.maxAge = try c.decodeIfPresent(Int64.self, forKey: .maxAge) ?? 0
        self.maxMsgSize = try c.decodeIfPresent(Int32.self, forKey: .maxMsgSize) ?? -1
        self.maxMsgsPerSubject = try c.decodeIfPresent(Int64.self, forKey: .maxMsgsPerSubject) ?? -1
        self.storage = try c.decodeIfPresent(StorageType.self, forKey: .storage) ?? .file
        self.discard = try c.decodeIfPresent(DiscardPolicy.self, forKey: .discard) ?? .old
        self.numReplicas = try c.decodeIfPresent(Int.self, forKey: .numReplicas) ?? 1
        self.noAck = try c.decodeIfPresent(Bool.self, forKey: .noAck) ?? false
        let window = try c.decodeIfPresent(Int64.self, forKey: .duplicateWindow) ?? 0
        self.duplicateWindow = window > 0 ? window : 120_000_000_000
        self.sealed = try c.decodeIfPresent(Bool.self, forKey: .sealed) ?? false
        self.denyDelete = try c.decodeIfPresent(Bool.self, forKey: .denyDelete) ?? false
        self.denyPurge = try c.decodeIfPresent(Bool.self, forKey: .denyPurge) ?? false
        self.allowRollupHdrs = try c.decodeIfPresent(Bool.self, forKey: .allowRollupHdrs) ?? false
        self.storkStore = try c.decodeIfPresent(String.self, forKey: .storkStore)
    }
}

/// A consumer's configuration (`ConsumerConfig`).
public struct ConsumerConfig: Codable, Sendable, Equatable {
    public var name: String?
    public var durableName: String?
    public var description: String?
    public var deliverSubject: String?
    public var deliverGroup: String?
    public var deliverPolicy: DeliverPolicy
    public var optStartSeq: UInt64?
    public var optStartTime: String?
    public var ackPolicy: AckPolicy
    /// Nanoseconds.
    public var ackWait: Int64
    public var maxDeliver: Int
    public var filterSubject: String?
    public var filterSubjects: [String]?
    public var replayPolicy: ReplayPolicy
    public var maxWaiting: Int
    public var maxAckPending: Int
    /// Nanoseconds; NAK backoff per delivery.
    public var backoff: [Int64]?
    public var headersOnly: Bool?
    /// Nanoseconds after which an ephemeral consumer without interest is deleted.
    public var inactiveThreshold: Int64
    public var idleHeartbeat: Int64
    public var flowControl: Bool

    public init() {
        self.deliverPolicy = .all
        self.ackPolicy = .explicit
        self.ackWait = 30_000_000_000
        self.maxDeliver = -1
        self.replayPolicy = .instant
        self.maxWaiting = 512
        self.maxAckPending = 1000
        self.inactiveThreshold = 0
        self.idleHeartbeat = 0
        self.flowControl = false
    }

    enum CodingKeys: String, CodingKey {
        case name
        case durableName = "durable_name"
        case description
        case deliverSubject = "deliver_subject"
        case deliverGroup = "deliver_group"
        case deliverPolicy = "deliver_policy"
        case optStartSeq = "opt_start_seq"
        case optStartTime = "opt_start_time"
        case ackPolicy = "ack_policy"
        case ackWait = "ack_wait"
        case maxDeliver = "max_deliver"
        case filterSubject = "filter_subject"
        case filterSubjects = "filter_subjects"
        case replayPolicy = "replay_policy"
        case maxWaiting = "max_waiting"
        case maxAckPending = "max_ack_pending"
        case backoff
        case headersOnly = "headers_only"
        case inactiveThreshold = "inactive_threshold"
        case idleHeartbeat = "idle_heartbeat"
        case flowControl = "flow_control"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init()
        self.name = try c.decodeIfPresent(String.self, forKey: .name)
        self.durableName = try c.decodeIfPresent(String.self, forKey: .durableName)
        self.description = try c.decodeIfPresent(String.self, forKey: .description)
        self.deliverSubject = try c.decodeIfPresent(String.self, forKey: .deliverSubject)
        self.deliverGroup = try c.decodeIfPresent(String.self, forKey: .deliverGroup)
        self.deliverPolicy = try c.decodeIfPresent(DeliverPolicy.self, forKey: .deliverPolicy) ?? .all
        self.optStartSeq = try c.decodeIfPresent(UInt64.self, forKey: .optStartSeq)
        self.optStartTime = try c.decodeIfPresent(String.self, forKey: .optStartTime)
        self.ackPolicy = try c.decodeIfPresent(AckPolicy.self, forKey: .ackPolicy) ?? .explicit
        let ackWait = try c.decodeIfPresent(Int64.self, forKey: .ackWait) ?? 0
        self.ackWait = ackWait > 0 ? ackWait : 30_000_000_000
        let maxDeliver = try c.decodeIfPresent(Int.self, forKey: .maxDeliver) ?? -1
        self.maxDeliver = maxDeliver == 0 ? -1 : maxDeliver
        self.filterSubject = try c.decodeIfPresent(String.self, forKey: .filterSubject)
        if self.filterSubject?.isEmpty == true { self.filterSubject = nil }
        self.filterSubjects = try c.decodeIfPresent([String].self, forKey: .filterSubjects)
        self.replayPolicy = try c.decodeIfPresent(ReplayPolicy.self, forKey: .replayPolicy) ?? .instant
        let maxWaiting = try c.decodeIfPresent(Int.self, forKey: .maxWaiting) ?? 0
        self.maxWaiting = maxWaiting > 0 ? maxWaiting : 512
        let maxAckPending = try c.decodeIfPresent(Int.self, forKey: .maxAckPending) ?? 0
        self.maxAckPending = maxAckPending == 0 ? 1000 : maxAckPending
        self.backoff = try c.decodeIfPresent([Int64].self, forKey: .backoff)
        self.headersOnly = try c.decodeIfPresent(Bool.self, forKey: .headersOnly)
        self.inactiveThreshold = try c.decodeIfPresent(Int64.self, forKey: .inactiveThreshold) ?? 0
        self.idleHeartbeat = try c.decodeIfPresent(Int64.self, forKey: .idleHeartbeat) ?? 0
        self.flowControl = try c.decodeIfPresent(Bool.self, forKey: .flowControl) ?? false
    }

    /// The subjects this consumer delivers (empty: all of the stream's).
    public var filters: [String] {
        if let filterSubjects, !filterSubjects.isEmpty { return filterSubjects }
        return self.filterSubject.map { [$0] } ?? []
    }

    public var isPull: Bool { self.deliverSubject == nil }
}

/// A stream's numbers (`StreamState`).
public struct StreamStateDocument: Codable, Sendable, Equatable {
    public var messages: UInt64
    public var bytes: UInt64
    public var firstSeq: UInt64
    public var firstTs: String
    public var lastSeq: UInt64
    public var lastTs: String
    public var numDeleted: Int
    public var consumerCount: Int

    public init(
        messages: UInt64,
        bytes: UInt64,
        firstSeq: UInt64,
        firstTs: String,
        lastSeq: UInt64,
        lastTs: String,
        numDeleted: Int,
        consumerCount: Int
    ) {
        self.messages = messages
        self.bytes = bytes
        self.firstSeq = firstSeq
        self.firstTs = firstTs
        self.lastSeq = lastSeq
        self.lastTs = lastTs
        self.numDeleted = numDeleted
        self.consumerCount = consumerCount
    }

    enum CodingKeys: String, CodingKey {
        case messages, bytes
        case firstSeq = "first_seq"
        case firstTs = "first_ts"
        case lastSeq = "last_seq"
        case lastTs = "last_ts"
        case numDeleted = "num_deleted"
        case consumerCount = "consumer_count"
    }
}

/// An error in a JetStream API response: an HTTP-like `code`, NATS's numeric `err_code`, and a description.
public struct JetStreamAPIError: Error, Codable, Sendable, Equatable {
    public var code: Int
    public var errCode: Int
    public var description: String

    public init(code: Int, errCode: Int, description: String) {
        self.code = code
        self.errCode = errCode
        self.description = description
    }

    enum CodingKeys: String, CodingKey {
        case code
        case errCode = "err_code"
        case description
    }

    public static let streamNotFound = JetStreamAPIError(code: 404, errCode: 10059, description: "stream not found")
    public static let consumerNotFound = JetStreamAPIError(code: 404, errCode: 10014, description: "consumer not found")
    public static let streamNameInUse = JetStreamAPIError(
        code: 400,
        errCode: 10058,
        description: "stream name already in use with a different configuration"
    )
    public static let subjectsOverlap = JetStreamAPIError(
        code: 400,
        errCode: 10065,
        description: "subjects overlap with an existing stream"
    )
    public static let messageTooLarge = JetStreamAPIError(code: 400, errCode: 10054, description: "message size exceeds maximum allowed")
    public static let maximumMessagesExceeded = JetStreamAPIError(code: 503, errCode: 10077, description: "maximum messages exceeded")
    public static let maximumBytesExceeded = JetStreamAPIError(code: 503, errCode: 10077, description: "maximum bytes exceeded")
    public static let noMessageFound = JetStreamAPIError(code: 404, errCode: 10037, description: "no message found")
    public static let badRequest = JetStreamAPIError(code: 400, errCode: 10003, description: "bad request")
    public static let streamSealed = JetStreamAPIError(code: 400, errCode: 10109, description: "invalid operation on sealed stream")
    public static let consumerNameExists = JetStreamAPIError(
        code: 400,
        errCode: 10013,
        description: "consumer name already in use"
    )
    public static let maximumConsumers = JetStreamAPIError(code: 400, errCode: 10026, description: "maximum consumers limit reached")
    public static let rollupNotPermitted = JetStreamAPIError(code: 400, errCode: 10115, description: "rollup not permitted")
    public static func invalidRollup(_ value: String) -> JetStreamAPIError {
        JetStreamAPIError(code: 400, errCode: 10114, description: "rollup value invalid: \(value)")
    }
    /// The stream exists in the cluster but no node serves it now (its node is away, or it is being taken over).
    public static func streamOffline(_ why: String) -> JetStreamAPIError {
        JetStreamAPIError(code: 503, errCode: 10118, description: "stream offline: \(why)")
    }
    public static func invalidConfig(_ why: String) -> JetStreamAPIError {
        JetStreamAPIError(code: 400, errCode: 10052, description: "invalid stream config: \(why)")
    }
    public static func consumerInvalid(_ why: String) -> JetStreamAPIError {
        JetStreamAPIError(code: 400, errCode: 10012, description: why)
    }
    public static func storeFailure(_ why: String) -> JetStreamAPIError {
        JetStreamAPIError(code: 500, errCode: 10077, description: "store failed: \(why)")
    }
}
