import StorkCore

// MARK: - Messaging from resource handlers

/// A message on a subject, as a resource handler sees it.
public struct StorkMessage: Sendable, Hashable {
    public var subject: String
    /// Where a reply goes, if the sender asked for one.
    public var replyTo: String?
    public var headers: [String: String]
    public var payload: [UInt8]

    public init(subject: String, replyTo: String? = nil, headers: [String: String] = [:], payload: [UInt8]) {
        self.subject = subject
        self.replyTo = replyTo
        self.headers = headers
        self.payload = payload
    }
}

/// Publish and subscribe on the node's message server (the NATS endpoint): what a handler uses to emit the events
/// of the resource it runs and to receive commands for it. Available as ``ResourceContext/messaging`` when the
/// node runs the message server.
public protocol StorkMessaging: Sendable {
    /// Publishes a message; stream subjects store it. Returns how many subscribers (and streams) received it.
    @discardableResult
    func publish(_ message: StorkMessage) -> Int

    /// Messages on `subject` (wildcards allowed), one member of `queue` each when a queue group is given, until the
    /// returned stream's consumer stops iterating (the subscription ends then).
    func subscribe(_ subject: String, queue: String?) -> AsyncStream<StorkMessage>

    /// Publishes `message` with a fresh reply subject and returns the first reply, from whichever node answers.
    /// Throws ``StorkError`` `.noResponders` when nobody listens on the subject anywhere, `.timeout` when no reply
    /// comes within `timeout`.
    func request(_ message: StorkMessage, timeout: Duration) async throws -> StorkMessage
}

extension StorkMessaging {
    /// A messaging implementation without request/reply says so.
    public func request(_ message: StorkMessage, timeout: Duration) async throws -> StorkMessage {
        throw StorkError(.unavailable, "this messaging does not support request/reply")
    }
}
