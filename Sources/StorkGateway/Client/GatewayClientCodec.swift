import StorkCore
import StorkRealtime

// MARK: - The client's side of protocol v1
//
// The server's codec (StorkRealtime, GatewayProtocol.swift) decodes client frames and encodes server frames; this
// file is the other direction: client frames out as JSON text, server frames in as typed values.

extension GatewayClientMessage {
    /// The frame as JSON text, with `id` when the client wants an answer.
    public func encodedText(id: JSONValue?) -> String {
        var fields: [String: JSONValue] = ["type": .string(self.type)]
        if let id { fields["id"] = id }
        switch self {
        case .auth(let credentials, let resume):
            fields["v"] = .number(Double(GatewayProtocol.version))
            switch credentials {
            case .password(let user, let password):
                fields["user"] = .string(user)
                fields["password"] = .string(password)
            case .token(let token):
                fields["token"] = .string(token)
            case .none:
                break
            }
            if let resume {
                fields["resume"] = [
                    "session": .string(resume.session), "lastSeq": .number(Double(resume.lastSequence)),
                ]
            }
        case .subscribe(let subject, let from):
            fields["subject"] = .string(subject)
            switch from {
            case nil: break
            case .sequence(let sequence)?: fields["from"] = ["seq": .number(Double(sequence))]
            case .time(let milliseconds)?: fields["from"] = ["time": .number(Double(milliseconds))]
            case .last(let count)?: fields["from"] = ["last": .number(Double(count))]
            }
        case .unsubscribe(let subject), .presence(let subject):
            fields["subject"] = .string(subject)
        case .publish(let subject, let data):
            fields["subject"] = .string(subject)
            fields["data"] = data
        case .request(let subject, let data, let timeout):
            fields["subject"] = .string(subject)
            fields["data"] = data
            if let timeout { fields["timeout"] = .number(Double(timeout)) }
        case .respond(let to, let data):
            fields["to"] = .string(to)
            fields["data"] = data
        case .runnerOpen(let runner):
            fields["runner"] = .string(runner)
        case .runnerClose(let instance), .runnerPause(let instance), .runnerResume(let instance):
            fields["instance"] = .string(instance)
        case .runnerRun(let instance, let inputs):
            fields["instance"] = .string(instance)
            fields["inputs"] = .object(inputs)
        case .ping:
            break
        }
        return JSONValue.object(fields).description
    }
}

/// A message delivered on one of the client's subscriptions.
public struct GatewayMessage: Sendable, Hashable {
    /// The session's delivery number (what a resume continues after).
    public var sequence: UInt64
    public var subject: String
    /// The body: the JSON the publisher sent; for a non-JSON body its text, or its base64 (see `encoding`).
    public var data: JSONValue
    public var encoding: GatewayPayload.Kind
    /// Set when this session may `respond` to the message (a request): pass it to ``GatewayClient/respond(to:data:)``.
    public var replyTo: String?
    /// The stream and position of a stored message (replayed by `subscribe(_:from:)`).
    public var stream: String?
    public var streamSequence: UInt64?

    public init(
        sequence: UInt64,
        subject: String,
        data: JSONValue,
        encoding: GatewayPayload.Kind = .json,
        replyTo: String? = nil,
        stream: String? = nil,
        streamSequence: UInt64? = nil
    ) {
        self.sequence = sequence
        self.subject = subject
        self.data = data
        self.encoding = encoding
        self.replyTo = replyTo
        self.stream = stream
        self.streamSequence = streamSequence
    }
}

/// The answer to `auth`.
public struct GatewayWelcome: Sendable, Hashable {
    /// The session id (what a resume names).
    public var session: String
    /// The user as the server authenticated it (id and roles).
    public var user: AuthenticatedUser
    /// nil on a fresh session; after a resume, whether every missed delivery was recovered.
    public var recovered: Bool?
}

/// A server frame as the client reads it.
enum GatewayClientInbound: Sendable, Hashable {
    /// An answer to a client frame (`welcome`, `ok`, `response`, `presence`, `pong`): its fields.
    case answer(id: JSONValue?, type: String, fields: [String: JSONValue])
    case error(id: JSONValue?, code: String, message: String)
    case message(GatewayMessage)
    case runner(sequence: UInt64, instance: String, event: JSONValue)

    static func decode(_ text: String) throws(GatewayClientError) -> GatewayClientInbound {
        guard case .object(let fields)? = try? JSONValue.parse(Array(text.utf8)),
            case .string(let type)? = fields["type"]
        else { throw GatewayClientError(.protocolError, "the server sent a frame that is not a typed JSON object") }
        let id = fields["id"]
        switch type {
        case "error":
            return .error(
                id: id,
                code: fields["code"]?.stringValue ?? "error",
                message: fields["message"]?.stringValue ?? ""
            )
        case "message":
            guard let sequence = Self.sequence(fields["seq"]), case .string(let subject)? = fields["subject"] else {
                throw GatewayClientError(.protocolError, "a message without seq or subject")
            }
            let encoding: GatewayPayload.Kind =
                switch fields["encoding"]?.stringValue {
                case "text": .text
                case "base64": .base64
                default: .json
                }
            return .message(
                GatewayMessage(
                    sequence: sequence,
                    subject: subject,
                    data: fields["data"] ?? .null,
                    encoding: encoding,
                    replyTo: fields["replyTo"]?.stringValue,
                    stream: fields["stream"]?.stringValue,
                    streamSequence: Self.sequence(fields["streamSeq"])
                )
            )
        case "runner":
            guard let sequence = Self.sequence(fields["seq"]), case .string(let instance)? = fields["instance"] else {
                throw GatewayClientError(.protocolError, "a runner event without seq or instance")
            }
            return .runner(sequence: sequence, instance: instance, event: fields["event"] ?? .null)
        default:
            return .answer(id: id, type: type, fields: fields)
        }
    }

    static func sequence(_ value: JSONValue?) -> UInt64? {
        guard case .number(let number)? = value, number >= 0, number.rounded() == number, number < 9e15 else {
            return nil
        }
        return UInt64(number)
    }

    static func welcome(_ fields: [String: JSONValue]) -> GatewayWelcome? {
        guard case .string(let session)? = fields["session"], case .string(let user)? = fields["user"]?["id"] else {
            return nil
        }
        var roles: [String] = []
        if case .array(let items)? = fields["user"]?["roles"] { roles = items.compactMap(\.stringValue) }
        var recovered: Bool?
        if case .bool(let value)? = fields["recovered"] { recovered = value }
        return GatewayWelcome(session: session, user: AuthenticatedUser(id: user, roles: roles), recovered: recovered)
    }
}
