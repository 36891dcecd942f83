import DequeModule

// MARK: - ConsumerStateMachine

/// One consumer of a stream: where it is in the stream, which deliveries await an ack, when they are due again, and
/// (for pull consumers) the requests waiting for messages. Pure: time is passed in as nanoseconds since the epoch;
/// the driver reads messages from the store and sends what this machine decides.
public struct ConsumerStateMachine: Sendable {
    /// A delivery awaiting its ack.
    public struct Pending: Sendable, Codable, Equatable {
        public var consumerSequence: UInt64
        public var deliveries: Int
        /// When it is due for redelivery (ns); `Int64.max` while it waits for an explicit redelivery.
        public var deadline: Int64
    }

    /// A pull request (`CONSUMER.MSG.NEXT`) waiting for messages.
    public struct PullRequest: Sendable, Equatable {
        public var replyTo: String
        public var remaining: Int
        /// When the request ends (ns), nil for never.
        public var expires: Int64?
        public var noWait: Bool
        public var delivered = 0
        /// Send `100 Idle Heartbeat` this often (ns) while the request waits; nil for never.
        public var heartbeat: Int64?
        public var lastHeartbeat: Int64 = 0

        /// A request with both `no_wait` and `expires` lingers until it expires, as in nats-server (clients rely on
        /// it: nats-py sends both and expects the wait).
        public init(replyTo: String, batch: Int, expires: Int64?, noWait: Bool) {
            self.replyTo = replyTo
            self.remaining = max(1, batch)
            self.expires = expires
            self.noWait = noWait && expires == nil
        }
    }

    /// What to send next.
    public struct Delivery: Sendable, Equatable {
        public var streamSequence: UInt64
        public var consumerSequence: UInt64
        public var deliveries: Int
        /// Where to send it: the pull request's reply subject or the push consumer's deliver subject.
        public var subject: String
        /// Messages left after this one (for the ack subject's pending token); filled in by the driver, which
        /// counts once per batch.
        public var pendingAfter: Int
    }

    /// A status to send to a pull requester: `404 No Messages`, `408 Request Timeout`, `409 …`.
    public struct Status: Sendable, Equatable {
        public var replyTo: String
        public var code: Int
        public var description: String
        public var pendingMessages: Int
        /// For heartbeats: the last consumer and stream sequences delivered (`Nats-Last-Consumer`,
        /// `Nats-Last-Stream`), which ordered consumers check for gaps.
        public var lastConsumerSequence: UInt64 = 0
        public var lastStreamSequence: UInt64 = 0
        /// For a flow-control request: the subject its answer goes to.
        public var answerTo: String?

        public init(
            replyTo: String,
            code: Int,
            description: String,
            pendingMessages: Int,
            lastConsumerSequence: UInt64 = 0,
            lastStreamSequence: UInt64 = 0
        ) {
            self.replyTo = replyTo
            self.code = code
            self.description = description
            self.pendingMessages = pendingMessages
            self.lastConsumerSequence = lastConsumerSequence
            self.lastStreamSequence = lastStreamSequence
        }
    }

    /// What survives a restart.
    public struct Snapshot: Sendable, Codable, Equatable {
        public var config: ConsumerConfig
        public var created: String
        public var nextStreamSequence: UInt64
        public var consumerSequence: UInt64
        public var ackFloorStream: UInt64
        public var ackFloorConsumer: UInt64
        public var pending: [UInt64: Pending]
    }

    public let name: String
    public private(set) var config: ConsumerConfig
    public let created: String
    /// The next stream sequence to consider for a first delivery.
    public private(set) var nextStreamSequence: UInt64
    /// No message below this passes the filters at or after ``nextStreamSequence``: the stream's end when the last
    /// search found nothing. Searches start here, so that a consumer whose filter matches few of the stream's
    /// messages looks only at what arrived since, instead of rescanning the stream on every step (hundreds of such
    /// consumers on one stream, each with a pull request waiting, made every step quadratic). Forgotten when the
    /// filters change; messages only ever arrive at higher sequences.
    private var noMatchBelow: UInt64 = 0
    /// Where a search for the next first delivery starts.
    private var searchStart: UInt64 { max(self.nextStreamSequence, self.noMatchBelow) }
    /// The last consumer sequence handed out.
    public private(set) var consumerSequence: UInt64 = 0
    public private(set) var ackFloorStream: UInt64 = 0
    public private(set) var ackFloorConsumer: UInt64 = 0
    public private(set) var pending: [UInt64: Pending] = [:]
    /// No ack wait of a pending message ends before this (a lower bound: acked messages may have held it).
    private var earliestDeadline: Int64 = .max
    /// Stream sequences due again now, in order.
    private var redeliveries: Deque<UInt64> = []
    public private(set) var waiting: Deque<PullRequest> = []

    /// Messages awaiting an ack that have been delivered more than once (NATS's `num_redelivered`).
    public var pendingRedelivered: Int { self.pending.values.filter { $0.deliveries > 1 }.count }
    /// The filters that matter: none when the configured ones cover every subject of the stream (then counting and
    /// finding the next message need no subject matching).
    public private(set) var filters: [String]
    /// Whether a push consumer's deliver subject has interest (set by the driver).
    public var pushActive = false
    /// Set when something changed that should be persisted.
    public var dirty = false
    /// When a client last showed interest (a pull request, an ack, a delivery, a push subscriber), in ns.
    public private(set) var lastActive: Int64 = 0
    /// When the last message or heartbeat went to a push consumer's deliver subject, in ns.
    private var lastSent: Int64 = 0
    /// The stream sequence of the last message delivered.
    private var lastDeliveredStreamSequence: UInt64 = 0

    /// Whether the consumer goes away by itself when unused (no durable name).
    public var isEphemeral: Bool { self.config.durableName == nil }

    /// How long an ephemeral consumer may go unused (NATS's `inactive_threshold`, 5 s when not set).
    public var inactiveThreshold: Int64 { self.config.inactiveThreshold > 0 ? self.config.inactiveThreshold : 5_000_000_000 }

    /// Whether an ephemeral consumer has been unused for longer than its threshold at `now`.
    public func isInactive(now: Int64) -> Bool {
        guard self.isEphemeral, self.waiting.isEmpty, !self.pushActive else { return false }
        return now - self.lastActive > self.inactiveThreshold
    }

    /// Notes activity at `now`.
    public mutating func touch(_ now: Int64) {
        self.lastActive = now
    }

    /// A new consumer positioned by its deliver policy on `index`.
    public init(name: String, config: ConsumerConfig, created: String, index: StreamIndex, startTime: Int64?) {
        self.name = name
        self.config = config
        self.created = created
        let filters = config.filters
        self.filters = filters
        switch config.deliverPolicy {
        case .all:
            self.nextStreamSequence = index.firstSequence
        case .last:
            self.nextStreamSequence = index.last(filters: filters) ?? index.lastSequence + 1
        case .lastPerSubject:
            self.nextStreamSequence = index.last(filters: filters) ?? index.lastSequence + 1
        case .new:
            self.nextStreamSequence = index.lastSequence + 1
        case .byStartSequence:
            self.nextStreamSequence = max(config.optStartSeq ?? 1, 1)
        case .byStartTime:
            self.nextStreamSequence =
                startTime.flatMap { index.firstSequence(atOrAfter: $0) } ?? index.lastSequence + 1
        }
        self.ackFloorStream = self.nextStreamSequence > 0 ? self.nextStreamSequence - 1 : 0
        self.dirty = true
    }

    /// A new consumer that counts as active from `now` (so that an ephemeral one gets its full threshold).
    public init(name: String, config: ConsumerConfig, created: String, index: StreamIndex, startTime: Int64?, now: Int64) {
        self.init(name: name, config: config, created: created, index: index, startTime: startTime)
        self.lastActive = now
    }

    public init(name: String, snapshot: Snapshot) {
        self.name = name
        self.config = snapshot.config
        self.filters = snapshot.config.filters
        self.created = snapshot.created
        self.nextStreamSequence = snapshot.nextStreamSequence
        self.consumerSequence = snapshot.consumerSequence
        self.ackFloorStream = snapshot.ackFloorStream
        self.ackFloorConsumer = snapshot.ackFloorConsumer
        // Whatever was in flight when the server stopped is due again at once.
        for (sequence, var pending) in snapshot.pending {
            pending.deadline = 0
            self.pending[sequence] = pending
        }
        if !self.pending.isEmpty {
            self.earliestDeadline = 0
            // A snapshot from before the floor was kept right below the lowest pending message may lag.
            let lowest = self.pending.keys.min()!
            self.ackFloorStream = lowest - 1
            self.ackFloorConsumer = self.pending[lowest]!.consumerSequence - 1
        }
        self.redeliveries = Deque(self.pending.keys.sorted())
    }

    public var snapshot: Snapshot {
        Snapshot(
            config: self.config,
            created: self.created,
            nextStreamSequence: self.nextStreamSequence,
            consumerSequence: self.consumerSequence,
            ackFloorStream: self.ackFloorStream,
            ackFloorConsumer: self.ackFloorConsumer,
            pending: self.pending
        )
    }

    /// Changes what may change on an existing consumer (ack wait, max ack pending, description…).
    public mutating func update(_ config: ConsumerConfig) {
        self.config = config
        self.flowControlPending = nil
        self.deliveredSinceFlowControl = 0
        self.filters = config.filters
        self.noMatchBelow = 0
        self.dirty = true
    }

    /// Tells the consumer the stream's subjects, so that filters covering all of them are dropped.
    public mutating func streamSubjects(_ subjects: [String]) {
        let configured = self.config.filters
        let coversStream = !configured.isEmpty
            && subjects.allSatisfy { subject in configured.contains { Subject.isSubset(subject, of: $0) } }
        let filters = coversStream ? [] : configured
        if filters != self.filters { self.noMatchBelow = 0 }
        self.filters = filters
    }

    // MARK: Pull requests

    /// Queues a pull request. Returns a status to send at once when it cannot wait: `409` when too many wait, `404`
    /// when it asked not to wait and nothing can be delivered now.
    public mutating func pull(_ request: PullRequest, index: StreamIndex, now: Int64 = 0) -> Status? {
        if now > 0 { self.lastActive = now }
        if request.noWait, !self.hasDeliverable(index: index) {
            return Status(replyTo: request.replyTo, code: 404, description: "No Messages", pendingMessages: 0)
        }
        if self.waiting.count >= self.config.maxWaiting {
            return Status(replyTo: request.replyTo, code: 409, description: "Exceeded MaxWaiting", pendingMessages: 0)
        }
        self.waiting.append(request)
        return nil
    }

    /// Whether a message could be delivered now (ignoring who would receive it).
    public func hasDeliverable(index: StreamIndex) -> Bool {
        if !self.redeliveries.isEmpty { return true }
        if self.ackPendingFull { return false }
        return index.next(from: self.searchStart, filters: self.filters) != nil
    }

    private var ackPendingFull: Bool {
        self.config.ackPolicy != .none && self.config.maxAckPending > 0 && self.pending.count >= self.config.maxAckPending
    }

    // MARK: Delivering

    /// The next delivery to make, if any: redeliveries first, then new messages; for pull consumers only while a
    /// request waits, for push consumers only while the deliver subject has interest; never more than max ack
    /// pending outstanding.
    public mutating func nextDelivery(index: StreamIndex, now: Int64) -> Delivery? {
        if self.pushActive { self.lastActive = now }
        let controlled = self.config.flowControl && !self.config.isPull
        if controlled, self.flowControlPending != nil || self.deliveredSinceFlowControl >= Self.flowControlInterval {
            return nil
        }
        let delivery = self.uncontrolledNextDelivery(index: index, now: now)
        if controlled, delivery != nil { self.deliveredSinceFlowControl += 1 }
        return delivery
    }

    // MARK: Flow control

    /// A push consumer with `flow_control` asks its client to confirm after this many deliveries, and delivers no
    /// more until it has (NATS's flow control: a slow client holds the consumer back instead of being dropped).
    public static let flowControlInterval = 1024
    /// An unanswered request is given up after this long (ns), and deliveries go on: the client that should have
    /// answered may be gone, and a new one would wait forever.
    public static let flowControlTimeout: Int64 = 5_000_000_000

    /// The reply subject of the flow-control request the client has not answered yet.
    public private(set) var flowControlPending: String?
    private var flowControlSentAt: Int64 = 0
    private var deliveredSinceFlowControl = 0

    /// The flow-control request due after the deliveries made so far, if one is (its answer goes to `answerTo`);
    /// deliveries wait for the answer.
    public mutating func flowControlRequest(answerTo: String, now: Int64) -> Status? {
        guard self.config.flowControl, !self.config.isPull, let subject = self.config.deliverSubject,
            self.flowControlPending == nil, self.deliveredSinceFlowControl >= Self.flowControlInterval
        else { return nil }
        self.flowControlPending = answerTo
        self.flowControlSentAt = now
        self.deliveredSinceFlowControl = 0
        var status = Status(replyTo: subject, code: 100, description: "FlowControl Request", pendingMessages: 0)
        status.answerTo = answerTo
        return status
    }

    /// The client answered the request sent with `answerTo`; true when it was the one deliveries wait for.
    public mutating func flowControlAnswered(_ answerTo: String) -> Bool {
        guard self.flowControlPending == answerTo else { return false }
        self.flowControlPending = nil
        return true
    }

    private mutating func uncontrolledNextDelivery(index: StreamIndex, now: Int64) -> Delivery? {
        let target: String
        if self.config.isPull {
            guard let request = self.waiting.first else { return nil }
            target = request.replyTo
        } else {
            guard self.pushActive, let subject = self.config.deliverSubject else { return nil }
            target = subject
        }
        // Due redeliveries (skipping messages that are gone from the stream or no longer pending).
        while let sequence = self.redeliveries.first {
            self.redeliveries.removeFirst()
            guard var pending = self.pending[sequence] else { continue }
            guard index.contains(sequence) else {
                self.pending[sequence] = nil
                self.advanceAckFloor()
                continue
            }
            if self.config.maxDeliver > 0, pending.deliveries >= self.config.maxDeliver {
                self.pending[sequence] = nil  // delivered as often as allowed: given up, like a TERM
                self.advanceAckFloor()
                continue
            }
            self.consumerSequence += 1
            pending.consumerSequence = self.consumerSequence
            pending.deliveries += 1
            pending.deadline = Self.adding(now, self.ackWait(for: pending.deliveries))
            self.noteDeadline(pending.deadline)
            self.pending[sequence] = pending
            self.dirty = true
            self.consumeRequest()
            self.lastSent = now
            self.lastDeliveredStreamSequence = sequence
            return Delivery(
                streamSequence: sequence,
                consumerSequence: self.consumerSequence,
                deliveries: pending.deliveries,
                subject: target,
                pendingAfter: 0
            )
        }
        guard !self.ackPendingFull else { return nil }
        guard let sequence = index.next(from: self.searchStart, filters: self.filters) else {
            self.noMatchBelow = index.lastSequence + 1
            return nil
        }
        self.nextStreamSequence = sequence + 1
        self.consumerSequence += 1
        if self.config.ackPolicy == .none {
            self.ackFloorStream = sequence
            self.ackFloorConsumer = self.consumerSequence
        } else {
            // Nothing in flight: the floor is right below this message (the sequences skipped since are not this
            // consumer's), so that acking it moves the floor.
            if self.pending.isEmpty {
                self.ackFloorStream = sequence - 1
                self.ackFloorConsumer = self.consumerSequence - 1
            }
            self.pending[sequence] = Pending(
                consumerSequence: self.consumerSequence,
                deliveries: 1,
                deadline: self.noteDeadline(Self.adding(now, self.ackWait(for: 1)))
            )
        }
        self.dirty = true
        self.consumeRequest()
        self.lastSent = now
        self.lastDeliveredStreamSequence = sequence
        return Delivery(
            streamSequence: sequence,
            consumerSequence: self.consumerSequence,
            deliveries: 1,
            subject: target,
            pendingAfter: 0
        )
    }

    private mutating func consumeRequest() {
        guard self.config.isPull, !self.waiting.isEmpty else { return }
        self.waiting[0].remaining -= 1
        self.waiting[0].delivered += 1
        if self.waiting[0].remaining <= 0 { self.waiting.removeFirst() }
    }

    private func ackWait(for deliveries: Int) -> Int64 {
        if let backoff = self.config.backoff, !backoff.isEmpty {
            return backoff[min(deliveries - 1, backoff.count - 1)]
        }
        return self.config.ackWait
    }

    // MARK: Acks

    public enum Acknowledgement: Sendable, Equatable {
        case ack
        /// Redeliver, after `delay` ns (0: now).
        case nak(delay: Int64)
        /// Still working: the ack wait starts again.
        case inProgress
        /// Never redeliver.
        case terminate
    }

    /// Applies an ack for the message at `streamSequence`. Returns whether it changed anything.
    @discardableResult
    public mutating func acknowledge(_ kind: Acknowledgement, streamSequence: UInt64, now: Int64) -> Bool {
        self.lastActive = now
        guard self.pending[streamSequence] != nil else { return false }
        switch kind {
        case .ack, .terminate:
            if self.config.ackPolicy == .all, kind == .ack {
                for sequence in self.pending.keys where sequence <= streamSequence { self.pending[sequence] = nil }
                self.advanceAckFloor()
            } else {
                self.pending[streamSequence] = nil
                // Only acking the lowest pending message moves the floor.
                if streamSequence == self.ackFloorStream + 1 { self.advanceAckFloor() }
            }
        case .nak(let delay):
            if delay > 0 {
                self.pending[streamSequence]!.deadline = self.noteDeadline(Self.adding(now, delay))
            } else {
                self.pending[streamSequence]!.deadline = Int64.max
                self.insertRedelivery(streamSequence)
            }
        case .inProgress:
            self.pending[streamSequence]!.deadline = self.noteDeadline(Self.adding(now, self.config.ackWait))
        }
        self.dirty = true
        return true
    }

    private mutating func advanceAckFloor() {
        // The floor only moves up, and every pending message lies above it: step up from the old floor to the next
        // pending sequence (amortised O(1) per message), falling back to a scan over the pending set after a gap.
        if !self.pending.isEmpty {
            var candidate = self.ackFloorStream + 1
            let limit = min(candidate + 64, self.nextStreamSequence)
            while candidate < limit {
                if let entry = self.pending[candidate] {
                    self.ackFloorStream = candidate - 1
                    self.ackFloorConsumer = entry.consumerSequence - 1
                    return
                }
                candidate += 1
            }
        }
        if let lowest = self.pending.keys.min() {
            self.ackFloorStream = lowest - 1
            self.ackFloorConsumer = self.pending[lowest]!.consumerSequence - 1
        } else {
            self.ackFloorStream = self.nextStreamSequence > 0 ? self.nextStreamSequence - 1 : 0
            self.ackFloorConsumer = self.consumerSequence
        }
    }

    /// `now + duration`, saturating: a client-chosen delay (`-NAK {"delay": …}`) must not overflow.
    static func adding(_ now: Int64, _ duration: Int64) -> Int64 {
        let (sum, overflow) = now.addingReportingOverflow(max(duration, 0))
        return overflow ? Int64.max - 1 : sum
    }

    /// Lowers ``earliestDeadline`` to `deadline` if needed; returns `deadline`.
    @discardableResult
    private mutating func noteDeadline(_ deadline: Int64) -> Int64 {
        self.earliestDeadline = min(self.earliestDeadline, deadline)
        return deadline
    }

    private mutating func insertRedelivery(_ sequence: UInt64) {
        guard !self.redeliveries.contains(sequence) else { return }
        let position = self.redeliveries.firstIndex { $0 > sequence } ?? self.redeliveries.endIndex
        self.redeliveries.insert(sequence, at: position)
    }

    // MARK: Time

    /// Moves deliveries whose ack wait ran out to redelivery and ends expired pull requests (returned as `408`).
    public mutating func tick(now: Int64, index: StreamIndex) -> [Status] {
        // Scanning the pending set only once the earliest ack wait may have passed keeps a tick O(1) while acks
        // arrive (a tick runs after every burst of acks).
        if now >= self.earliestDeadline {
            var earliest = Int64.max
            for (sequence, pending) in self.pending {
                if pending.deadline <= now {
                    self.pending[sequence]!.deadline = Int64.max
                    self.insertRedelivery(sequence)
                } else {
                    earliest = min(earliest, pending.deadline)
                }
            }
            self.earliestDeadline = earliest
        }
        var statuses: [Status] = []
        if self.flowControlPending != nil, now - self.flowControlSentAt >= Self.flowControlTimeout {
            self.flowControlPending = nil
        }
        // Idle heartbeats: to a push consumer's deliver subject while nothing was sent for its interval, and to
        // waiting pull requests that asked for them.
        if !self.config.isPull, self.config.idleHeartbeat > 0, self.pushActive, let subject = self.config.deliverSubject,
            now - self.lastSent >= self.config.idleHeartbeat
        {
            self.lastSent = now
            statuses.append(self.heartbeat(to: subject))
        }
        var kept: Deque<PullRequest> = []
        for var request in self.waiting {
            if let interval = request.heartbeat, interval > 0, now - request.lastHeartbeat >= interval,
                request.expires.map({ $0 > now }) ?? true
            {
                request.lastHeartbeat = now
                statuses.append(self.heartbeat(to: request.replyTo))
            }
            if let expires = request.expires, expires <= now {
                statuses.append(
                    Status(
                        replyTo: request.replyTo,
                        code: 408,
                        description: "Request Timeout",
                        pendingMessages: index.count(from: self.searchStart, filters: self.filters)
                    )
                )
            } else if request.noWait, !self.hasDeliverable(index: index) {
                // A no-wait request that got what there was: tell it the stream is drained for now.
                statuses.append(
                    Status(
                        replyTo: request.replyTo,
                        code: request.delivered == 0 ? 404 : 408,
                        description: request.delivered == 0 ? "No Messages" : "Request Timeout",
                        pendingMessages: 0
                    )
                )
            } else {
                kept.append(request)
            }
        }
        self.waiting = kept
        return statuses
    }

    private func heartbeat(to subject: String) -> Status {
        Status(
            replyTo: subject,
            code: 100,
            description: "Idle Heartbeat",
            pendingMessages: 0,
            lastConsumerSequence: self.consumerSequence,
            lastStreamSequence: self.lastDeliveredStreamSequence
        )
    }

    /// Whether heartbeats may fall due (so the driver keeps ticking).
    public var sendsHeartbeats: Bool {
        (!self.config.isPull && self.config.idleHeartbeat > 0) || self.waiting.contains { ($0.heartbeat ?? 0) > 0 }
            || self.flowControlPending != nil
    }

    /// The earliest time something becomes due (an ack wait or a request expiring), for the driver's timer.
    public var nextDeadline: Int64? {
        let ackDeadline = self.pending.isEmpty || self.earliestDeadline == Int64.max ? nil : self.earliestDeadline
        let requestDeadline = self.waiting.lazy.compactMap(\.expires).min()
        switch (ackDeadline, requestDeadline) {
        case (nil, nil): return nil
        case (let a?, nil): return a
        case (nil, let b?): return b
        case (let a?, let b?): return min(a, b)
        }
    }

    /// Messages not yet delivered (`num_pending`).
    public func unprocessed(index: StreamIndex) -> Int {
        index.count(from: self.searchStart, filters: self.filters)
    }

    /// The stream was purged or messages removed: forget deliveries of messages that are gone, and move past them.
    public mutating func streamTrimmed(index: StreamIndex) {
        for sequence in self.pending.keys where !index.contains(sequence) { self.pending[sequence] = nil }
        if self.nextStreamSequence < index.firstSequence { self.nextStreamSequence = index.firstSequence }
        self.advanceAckFloor()
        self.dirty = true
    }
}
