import DequeModule
import StorkCore
import StorkRealtime
import Synchronization

// MARK: - GatewaySession
//
// One authenticated client session. It outlives its WebSocket connection by the recovery window: while the client is
// away its subscriptions stay and deliveries keep being numbered and kept (the last `recoveryMessages` of them), so a
// client that reconnects with `resume: {session, lastSeq}` gets exactly what it missed. The same ring is the
// connection's send queue: a connection sends what lies after its cursor; a client that falls further behind than
// the ring is a slow consumer and is disconnected (it may resume and learns `recovered: false`).

/// A connection's identity within a session (a resume attaches a new one and detaches the old).
typealias GatewayConnectionID = UInt64

final class GatewaySession: Sendable {
    struct Subscription: Sendable {
        /// Whether messages carry their `replyTo` (the user may `respond` on this subject).
        var mayRespond: Bool
        /// Set for the events subscription of one of the session's runner instances: its messages become `runner`
        /// frames.
        var runnerInstance: String? = nil
        /// Live messages held while stored ones are replayed (nil when not replaying).
        var held: [LiveMessage]?
    }


    struct State: Sendable {
        /// Sequenced frames (messages, runner events): the last `capacity` of them.
        var frames: Deque<(sequence: UInt64, bytes: [UInt8])> = []
        var nextSequence: UInt64 = 1
        /// The last sequence the current connection was given.
        var sentThrough: UInt64 = 0
        /// Unsequenced answers (ok, error, response, welcome…) for the current connection only.
        var control: Deque<[UInt8]> = []
        var connection: GatewayConnectionID?
        var waiter: CheckedContinuation<Void, Never>?
        var disconnectedAt: StorkInstant?
        var subscriptions: [String: Subscription] = [:]
        /// Reply subjects delivered to this session, that it may `respond` to (oldest first, bounded).
        var replyTargets: Deque<String> = []
        var replyTargetSet: Set<String> = []
        /// Set when the session ended: no connection may attach any more.
        var ended = false
        /// The current connection fell behind the ring.
        var slow = false
        /// Open runner instances, and the run each has in progress (as the runner last told).
        var runners: [String: String?] = [:]
    }

    let id: String
    let user: AuthenticatedUser
    let capacity: Int
    let state: Mutex<State>
    /// Requests of this session waiting for a reply.
    let pendingRequests = Atomic<Int>(0)
    static let replyTargetLimit = 1024

    init(id: String, user: AuthenticatedUser, capacity: Int) {
        self.id = id
        self.user = user
        self.capacity = max(1, capacity)
        self.state = Mutex(State())
    }

    // MARK: Connections

    /// What attaching a connection found.
    struct Attachment: Sendable {
        /// False when some frames after `lastSequence` were already dropped from the ring.
        var recovered: Bool
        /// How many frames will be resent.
        var missed: Int
    }

    /// Attaches a connection (a new session's first, or a resume after `lastSequence`). A connection still attached is
    /// superseded: its writer stops.
    func attach(_ connection: GatewayConnectionID, after lastSequence: UInt64?) -> Attachment? {
        self.state.withLock { state -> Attachment? in
            guard !state.ended else { return nil }
            let waiter = state.waiter
            state.waiter = nil
            waiter?.resume()
            state.connection = connection
            state.disconnectedAt = nil
            state.control.removeAll()
            state.slow = false
            let last = state.nextSequence - 1
            let resumeFrom = min(lastSequence ?? last, last)
            let oldest = state.frames.first?.sequence ?? state.nextSequence
            state.sentThrough = max(resumeFrom, oldest - 1)
            return Attachment(recovered: resumeFrom + 1 >= oldest, missed: Int(last - state.sentThrough))
        }
    }

    /// The connection went away; the session waits for a resume until it expires.
    func detach(_ connection: GatewayConnectionID, now: StorkInstant) {
        self.state.withLock { state in
            guard state.connection == connection else { return }
            state.connection = nil
            state.disconnectedAt = now
            state.control.removeAll()
            let waiter = state.waiter
            state.waiter = nil
            waiter?.resume()
        }
    }

    /// Ends the session: its writer stops and it cannot be resumed. Returns the subscriptions and runners it had.
    func end() -> (subscriptions: [String], runners: [String]) {
        self.state.withLock { state in
            state.ended = true
            state.connection = nil
            let waiter = state.waiter
            state.waiter = nil
            waiter?.resume()
            let subjects = Array(state.subscriptions.keys)
            state.subscriptions.removeAll()
            let runners = Array(state.runners.keys)
            state.runners.removeAll()
            return (subjects, runners)
        }
    }

    // MARK: Runners

    func openRunner(_ instance: String) {
        self.state.withLock { $0.runners[instance] = .some(nil) }
    }

    func closeRunner(_ instance: String) {
        self.state.withLock { _ = $0.runners.removeValue(forKey: instance) }
    }

    func hasRunner(_ instance: String) -> Bool {
        self.state.withLock { $0.runners[instance] != nil }
    }

    func runStarted(_ instance: String, runId: String) {
        self.state.withLock { state in
            if state.runners[instance] != nil { state.runners[instance] = .some(runId) }
        }
    }

    /// A runner event (from `$GW.runner.<instance>.events`) as the client sees it. A `loaded` event while a run was in
    /// progress means the runner's node failed and it was reopened elsewhere: the run is reported failed.
    private func runnerFrame(_ instance: String, event: JSONValue, state: inout State) -> JSONValue? {
        guard let entry = state.runners[instance] else { return nil }
        switch event["type"]?.stringValue {
        case "loaded":
            guard let runId = entry else { return nil }
            state.runners[instance] = .some(nil)
            return [
                "type": "failed", "runId": .string(runId), "nodeId": nil, "code": "node-failed",
                "error": .string("the runner's node failed; it was reopened on \(event["node"]?.stringValue ?? "another node"): run it again"),
            ]
        case "completed", "failed":
            if let runId = entry, event["runId"]?.stringValue == runId { state.runners[instance] = .some(nil) }
            return event
        default:
            return event
        }
    }

    func disconnectedSince() -> StorkInstant? {
        self.state.withLock { $0.connection == nil && !$0.ended ? $0.disconnectedAt : nil }
    }

    // MARK: Sending

    /// Queues an answer for the current connection (dropped when none is attached).
    func sendControl(_ frame: GatewayServerFrame) {
        self.sendControl(bytes: frame.encoded)
    }

    func sendControl(bytes: [UInt8]) {
        let waiter: CheckedContinuation<Void, Never>? = self.state.withLock { state in
            guard state.connection != nil else { return nil }
            state.control.append(bytes)
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Numbers and keeps a frame (built for its sequence) and wakes the writer.
    func sendSequenced(_ build: (UInt64) -> [UInt8]) {
        let waiter: CheckedContinuation<Void, Never>? = self.state.withLock { state in
            guard !state.ended else { return nil }
            self.appendSequenced(build, to: &state)
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    private func appendSequenced(_ build: (UInt64) -> [UInt8], to state: inout State) {
        let sequence = state.nextSequence
        state.nextSequence += 1
        state.frames.append((sequence, build(sequence)))
        if state.frames.count > self.capacity {
            let dropped = state.frames.removeFirst()
            if state.connection != nil, dropped.sequence > state.sentThrough { state.slow = true }
        }
    }

    /// A message on one of the session's subscriptions (`pattern`): held while that subscription replays, else sent.
    func deliver(pattern: String, message: LiveMessage) {
        let waiter: CheckedContinuation<Void, Never>? = self.state.withLock { state in
            guard !state.ended, var subscription = state.subscriptions[pattern] else { return nil }
            if let instance = subscription.runnerInstance {
                guard let event = try? JSONValue.parse(message.payload.encodedData),
                    let frame = self.runnerFrame(instance, event: event, state: &state)
                else { return nil }
                self.appendSequenced({ sequence in
                    GatewayServerFrame.runner(seq: sequence, instance: instance, event: frame).encoded
                }, to: &state)
                defer { state.waiter = nil }
                return state.waiter
            }
            if subscription.held != nil {
                subscription.held!.append(message)
                state.subscriptions[pattern] = subscription
                return nil
            }
            self.appendLive(message, mayRespond: subscription.mayRespond, to: &state)
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Numbers and keeps a live message's frame (with its `replyTo` when the subscription may respond).
    private func appendLive(_ message: LiveMessage, mayRespond: Bool, to state: inout State) {
        Self.noteReplyTarget(mayRespond ? message.replyTo : nil, in: &state)
        self.appendSequenced({ sequence in message.frame(sequence: sequence, withReply: mayRespond) }, to: &state)
    }

    private static func noteReplyTarget(_ replyTo: String?, in state: inout State) {
        guard let replyTo, state.replyTargetSet.insert(replyTo).inserted else { return }
        state.replyTargets.append(replyTo)
        if state.replyTargets.count > Self.replyTargetLimit {
            state.replyTargetSet.remove(state.replyTargets.removeFirst())
        }
    }

    /// Whether the session was given `replyTo` (and may answer it once).
    func takeReplyTarget(_ replyTo: String) -> Bool {
        self.state.withLock { state in
            guard state.replyTargetSet.remove(replyTo) != nil else { return false }
            if let index = state.replyTargets.firstIndex(of: replyTo) { state.replyTargets.remove(at: index) }
            return true
        }
    }

    /// What the writer of `connection` sends next; nil when the connection is over (superseded, detached, the
    /// session ended, or it fell behind: then `slow` says so).
    func nextBatch(for connection: GatewayConnectionID) async -> (frames: [[UInt8]], slow: Bool)? {
        while true {
            let outcome: (frames: [[UInt8]], slow: Bool)?? = self.state.withLock { state in
                guard state.connection == connection, !state.ended else { return .some(nil) }
                if state.slow { return .some(([], true)) }
                var frames = Array(state.control)
                state.control.removeAll()
                if let last = state.frames.last?.sequence, last > state.sentThrough {
                    let oldest = state.frames.first!.sequence
                    let start = Int(state.sentThrough + 1 - oldest)
                    for index in start..<state.frames.count { frames.append(state.frames[index].bytes) }
                    state.sentThrough = last
                }
                return frames.isEmpty ? nil : .some((frames, false))
            }
            if let outcome { return outcome }
            await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let resumeNow = self.state.withLock { state -> Bool in
                        let ready = state.connection != connection || state.ended || state.slow
                            || !state.control.isEmpty || (state.frames.last?.sequence ?? 0) > state.sentThrough
                        if ready || Task.isCancelled { return true }
                        state.waiter?.resume()
                        state.waiter = continuation
                        return false
                    }
                    if resumeNow { continuation.resume() }
                }
            } onCancel: {
                let waiter = self.state.withLock { state in
                    defer { state.waiter = nil }
                    return state.waiter
                }
                waiter?.resume()
            }
            if Task.isCancelled { return nil }
        }
    }

    // MARK: Subscriptions

    /// Adds a subscription; false when it already existed. With `holding`, live messages are held until
    /// ``finishReplay(_:stream:messages:)``.
    func addSubscription(_ pattern: String, mayRespond: Bool, holding: Bool, runnerInstance: String? = nil) -> Bool {
        self.state.withLock { state in
            guard state.subscriptions[pattern] == nil else { return false }
            state.subscriptions[pattern] = Subscription(
                mayRespond: mayRespond, runnerInstance: runnerInstance, held: holding ? [] : nil
            )
            return true
        }
    }

    func removeSubscription(_ pattern: String) -> Bool {
        self.state.withLock { $0.subscriptions.removeValue(forKey: pattern) != nil }
    }

    var subscriptionCount: Int { self.state.withLock { $0.subscriptions.count } }

    func subscriptions() -> [String] { self.state.withLock { Array($0.subscriptions.keys) } }

    /// Sends replayed stored messages, then the live ones held meanwhile that the replay did not already contain
    /// (recognised by their message id), and ends holding.
    func finishReplay(_ pattern: String, stream: String, messages: [(sequence: UInt64, subject: String, payload: GatewayPayload, messageID: String?)]) {
        let waiter: CheckedContinuation<Void, Never>? = self.state.withLock { state in
            guard !state.ended, var subscription = state.subscriptions[pattern] else { return nil }
            for message in messages {
                self.appendSequenced({ sequence in
                    GatewayServerFrame.message(
                        seq: sequence, subject: message.subject, data: message.payload, replyTo: nil,
                        stream: stream, streamSeq: message.sequence
                    ).encoded
                }, to: &state)
            }
            let replayedIDs = Set(messages.compactMap(\.messageID))
            for held in subscription.held ?? [] where held.messageID.map({ !replayedIDs.contains($0) }) ?? true {
                self.appendLive(held, mayRespond: subscription.mayRespond, to: &state)
            }
            subscription.held = nil
            state.subscriptions[pattern] = subscription
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }
}

// MARK: - A live message, encoded once

/// A message from the router as every session's frame needs it, encoded once per message however many sessions get
/// it: the frames differ only in `seq` (and in `replyTo`, which only sessions that may respond see).
struct LiveMessage: Sendable {
    let subject: String
    let payload: GatewayPayload
    let replyTo: String?
    let messageID: String?
    /// The frame after its `seq` digits, without and with `replyTo`.
    private let tail: [UInt8]
    private let tailWithReply: [UInt8]
    private static let prefix = Array(#"{"type":"message","seq":"#.utf8)

    init(subject: String, payload: GatewayPayload, replyTo: String?, messageID: String?) {
        self.subject = subject
        self.payload = payload
        self.replyTo = replyTo
        self.messageID = messageID
        func tail(_ replyTo: String?) -> [UInt8] {
            let frame = GatewayServerFrame.message(
                seq: 0, subject: subject, data: payload, replyTo: replyTo, stream: nil, streamSeq: nil
            ).encoded
            return Array(frame.dropFirst(Self.prefix.count + 1))  // after `"seq":0`
        }
        self.tail = tail(nil)
        self.tailWithReply = replyTo == nil ? self.tail : tail(replyTo)
    }

    func frame(sequence: UInt64, withReply: Bool) -> [UInt8] {
        let tail = withReply ? self.tailWithReply : self.tail
        var bytes = Self.prefix
        bytes.reserveCapacity(Self.prefix.count + 20 + tail.count)
        bytes.append(contentsOf: String(sequence).utf8)
        bytes.append(contentsOf: tail)
        return bytes
    }
}
