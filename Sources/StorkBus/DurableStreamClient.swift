import Foundation
import NIOCore
import StorkCore
import StorkStreaming

// MARK: - DurableStreamClient

/// The durable-stream API for code inside Stork, over any ``BusClient`` (``LocalBusClient`` on this node, Stork's NATS
/// client for a server elsewhere): publish with the stream's acknowledgement, durable consumers, pull requests, and
/// the acks of what was delivered. It speaks JetStream's API subjects, so it works against any server that serves
/// them (Stork, nats-server -js).
public struct DurableStreamClient: Sendable {
    public let client: any BusClient
    /// How long an API request (or a publish) waits for its answer.
    public var timeout: Duration

    public init(client: any BusClient, timeout: Duration = .seconds(5)) {
        self.client = client
        self.timeout = timeout
    }

    /// What a stream answered to a publish.
    public struct PublishAck: Sendable, Equatable {
        public var stream: String
        public var sequence: UInt64
        /// The message id was seen before: the stream kept the first message, not this one.
        public var duplicate: Bool
    }

    /// Publishes `payload` on `subject` and waits until the stream that captures it stored it (`messageID` lets the
    /// stream drop a repeated publish within its duplicate window).
    public func publish(_ subject: String, payload: ByteBuffer, messageID: String? = nil) async throws -> PublishAck {
        let headers = messageID.map { MessageHeaders(fields: [("Nats-Msg-Id", $0)]) }
        let reply: BusMessage
        do {
            reply = try await self.client.request(subject, headers: headers, payload: payload, timeout: self.timeout)
        } catch let error as StorkError where error.code == .noResponders {
            throw StorkError(.noResponders, "no stream captures '\(subject)'")
        }
        let document = try Self.document(reply, "publish to '\(subject)'")
        guard let stream = document["stream"] as? String, let sequence = (document["seq"] as? NSNumber)?.uint64Value else {
            throw StorkError(.protocolError, "unexpected answer to a publish to '\(subject)'")
        }
        return PublishAck(stream: stream, sequence: sequence, duplicate: (document["duplicate"] as? Bool) ?? false)
    }

    /// Creates the durable consumer `name` on `stream` with `config` (JetStream's consumer configuration; its
    /// `durable_name` is set to `name`), or updates it keeping its position and pending acks.
    public func ensureConsumer(stream: String, name: String, config: [String: Any]) async throws {
        var config = config
        config["durable_name"] = name
        let body = try JSONSerialization.data(withJSONObject: ["stream_name": stream, "config": config], options: [.sortedKeys])
        let reply: BusMessage
        do {
            reply = try await self.client.request(
                "$JS.API.CONSUMER.CREATE.\(stream).\(name)",
                headers: nil,
                payload: ByteBuffer(bytes: body),
                timeout: self.timeout
            )
        } catch let error as StorkError where error.code == .noResponders {
            throw StorkError(.unavailable, "the server does not serve durable streams (JetStream)")
        }
        let document = try Self.document(reply, "cannot create consumer \(name) on stream \(stream)")
        guard document["name"] != nil else {
            throw StorkError(.protocolError, "unexpected answer to the consumer create request for \(name) on \(stream)")
        }
    }

    /// Asks consumer `consumer` of `stream` for up to `batch` messages, delivered to `replyTo` (a subject the caller
    /// subscribed to) as they come, for at most `expires`; the end of the request comes there as a status message
    /// (``PullStatus``).
    public func requestNext(stream: String, consumer: String, batch: Int, expires: Duration, replyTo: String) throws {
        try self.client.publish(
            "$JS.API.CONSUMER.MSG.NEXT.\(stream).\(consumer)",
            replyTo: replyTo,
            headers: nil,
            payload: ByteBuffer(string: "{\"batch\":\(batch),\"expires\":\(expires.nanosecondsClamped)}")
        )
    }

    /// Returns once the server that holds `stream` has processed everything this client sent it before (acks, naks):
    /// a request for the consumer's info travels after them, on the same path, and is answered after them. (A flush
    /// is not enough when the stream is on another node: it only reaches this node's bus.)
    public func synchronize(stream: String, consumer: String) async throws {
        let reply = try await self.client.request(
            "$JS.API.CONSUMER.INFO.\(stream).\(consumer)",
            headers: nil,
            payload: ByteBuffer(),
            timeout: self.timeout
        )
        _ = try Self.document(reply, "consumer \(consumer) of stream \(stream)")
    }

    /// Acknowledges a delivered message (its reply subject, `$JS.ACK.…`).
    public func acknowledge(_ ackSubject: String, _ ack: DurableAck) throws {
        try self.client.publish(ackSubject, replyTo: nil, headers: nil, payload: ack.body)
    }

    /// The JSON answer of an API request, or the API's error as a ``StorkError``.
    static func document(_ reply: BusMessage, _ what: String) throws -> [String: Any] {
        let document = try? JSONSerialization.jsonObject(with: Data(reply.payload.readableBytesView)) as? [String: Any]
        guard let document else { throw StorkError(.protocolError, "\(what): the answer is not a JSON object") }
        if let problem = document["error"] as? [String: Any] {
            throw StorkError(.invalidInput, "\(what): \(problem["description"] as? String ?? "unknown error")")
        }
        return document
    }
}

// MARK: - DurableAck

/// What a consumer says about a delivered message.
public enum DurableAck: Sendable, Equatable {
    /// Done: never again.
    case ack
    /// Not done: deliver it again, after `delay` if given.
    case nak(delay: Duration?)
    /// Still working on it: the ack wait starts over.
    case inProgress
    /// Never deliver it again, without it counting as done.
    case terminate

    /// The ack body as JetStream reads it.
    public var body: ByteBuffer {
        switch self {
        case .ack: ByteBuffer(string: "+ACK")
        case .nak(nil): ByteBuffer(string: "-NAK")
        case .nak(let delay?): ByteBuffer(string: "-NAK {\"delay\":\(delay.nanosecondsClamped)}")
        case .inProgress: ByteBuffer(string: "+WPI")
        case .terminate: ByteBuffer(string: "+TERM")
        }
    }
}

// MARK: - PullStatus

/// The status messages that end (or interrupt) a pull request.
public enum PullStatus: Sendable, Equatable {
    /// `404` no messages, `408` request expired: the pull is over.
    case finished
    /// `409`: the consumer is gone, or too many pulls wait (the description says which).
    case refused(String)
    /// `100` idle heartbeat, or another status that does not end the pull.
    case other

    /// The status of `message`, nil when it is a stream message.
    public init?(_ message: BusMessage) {
        guard message.payload.readableBytes == 0, let headers = message.headers, let status = headers.status else {
            return nil
        }
        switch status {
        case 404, 408: self = .finished
        case 409: self = .refused(headers.statusDescription ?? "")
        default: self = .other
        }
    }
}
