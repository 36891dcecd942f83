import Foundation
import StorkCore

// MARK: - The gateway's client protocol, version 1
//
// One JSON object per WebSocket text frame, in both directions. Every client message has a `type`; requests may carry
// an `id` (a number or a string) that the server echoes in its answer (`ok`, `error` or a typed reply), so a client
// can match answers to requests. Docs/gateway.md is the reference; this file is its codec, fuzzed in the tests.

/// The protocol version this server speaks (`"v"` in `auth` and `welcome`).
public enum GatewayProtocol {
    public static let version = 1
    /// The largest client frame accepted (bytes); larger frames are answered with an error and dropped.
    public static let defaultMaxFrameBytes = 1 << 20
}

/// Where a subscription with recovery starts replaying stored messages (then it continues live).
public enum GatewayReplayStart: Sendable, Hashable {
    /// From this stream sequence on (inclusive).
    case sequence(UInt64)
    /// From the first message stored at or after this time (milliseconds since 1970).
    case time(milliseconds: Int64)
    /// The last `n` stored messages.
    case last(Int)
}

/// What a client asks to resume after a reconnect: its previous session and the last message sequence it saw.
public struct GatewayResume: Sendable, Hashable {
    public var session: String
    public var lastSequence: UInt64

    public init(session: String, lastSequence: UInt64) {
        self.session = session
        self.lastSequence = lastSequence
    }
}

/// A message from a client.
public enum GatewayClientMessage: Sendable, Hashable {
    case auth(credentials: Credentials, resume: GatewayResume?)
    case subscribe(subject: String, from: GatewayReplayStart?)
    case unsubscribe(subject: String)
    case publish(subject: String, data: JSONValue)
    case request(subject: String, data: JSONValue, timeoutMilliseconds: Int?)
    /// An answer to a request this session received (its `replyTo`).
    case respond(to: String, data: JSONValue)
    /// Who is subscribed to `subject` (user ids), across the cluster.
    case presence(subject: String)
    case runnerOpen(runner: String)
    case runnerClose(instance: String)
    case runnerRun(instance: String, inputs: [String: JSONValue])
    case runnerPause(instance: String)
    case runnerResume(instance: String)
    case ping

    /// The action's name as it appears in `type`.
    public var type: String {
        switch self {
        case .auth: return "auth"
        case .subscribe: return "subscribe"
        case .unsubscribe: return "unsubscribe"
        case .publish: return "publish"
        case .request: return "request"
        case .respond: return "respond"
        case .presence: return "presence"
        case .runnerOpen: return "runner.open"
        case .runnerClose: return "runner.close"
        case .runnerRun: return "runner.run"
        case .runnerPause: return "runner.pause"
        case .runnerResume: return "runner.resume"
        case .ping: return "ping"
        }
    }
}

/// A decoded client frame: the message and the id to echo.
public struct GatewayClientFrame: Sendable, Hashable {
    public var id: JSONValue?
    public var message: GatewayClientMessage

    public init(id: JSONValue? = nil, message: GatewayClientMessage) {
        self.id = id
        self.message = message
    }
}

/// Why a client frame was refused. The `code` is stable (clients switch on it); the message is for people.
public struct GatewayProtocolError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Code: String, Sendable, Hashable {
        case badFrame = "bad_frame"
        case tooLarge = "too_large"
        case unknownType = "unknown_type"
        case unsupportedVersion = "unsupported_version"
        case badField = "bad_field"
    }

    public var code: Code
    public var message: String
    /// The frame's id when it could be read, so the error still answers the request.
    public var id: JSONValue?

    public init(_ code: Code, _ message: String, id: JSONValue? = nil) {
        self.code = code
        self.message = message
        self.id = id
    }

    public var description: String { "\(self.code.rawValue): \(self.message)" }
}

extension GatewayClientFrame {
    /// Decodes one client frame. Anything but a JSON object with a known `type` and well-typed fields is an error
    /// naming what is wrong; nothing here traps on hostile input.
    public static func decode(
        _ bytes: some Collection<UInt8>,
        maxBytes: Int = GatewayProtocol.defaultMaxFrameBytes
    ) throws(GatewayProtocolError) -> GatewayClientFrame {
        guard bytes.count <= maxBytes else {
            throw GatewayProtocolError(.tooLarge, "frame of \(bytes.count) bytes, the limit is \(maxBytes)")
        }
        let document: JSONValue
        do {
            document = try JSONValue.parse(bytes)
        } catch {
            throw GatewayProtocolError(.badFrame, "not JSON")
        }
        guard case .object(let fields) = document else {
            throw GatewayProtocolError(.badFrame, "a frame must be a JSON object")
        }
        var id: JSONValue?
        switch fields["id"] {
        case nil, .null?: id = nil
        case .number?, .string?: id = fields["id"]
        default: throw GatewayProtocolError(.badField, "'id' must be a number or a string")
        }
        let reader = FieldReader(fields: fields, id: id)
        guard case .string(let type)? = fields["type"] else {
            throw GatewayProtocolError(.badFrame, "'type' is required", id: id)
        }
        if let version = fields["v"] {
            guard case .number(let number) = version, number == Double(GatewayProtocol.version) else {
                throw GatewayProtocolError(
                    .unsupportedVersion,
                    "this server speaks version \(GatewayProtocol.version)",
                    id: id
                )
            }
        }
        let message: GatewayClientMessage
        switch type {
        case "auth":
            message = .auth(credentials: try reader.credentials(), resume: try reader.resume())
        case "subscribe":
            message = .subscribe(subject: try reader.subject(), from: try reader.replayStart())
        case "unsubscribe":
            message = .unsubscribe(subject: try reader.subject())
        case "publish":
            message = .publish(subject: try reader.subject(), data: fields["data"] ?? .null)
        case "request":
            message = .request(
                subject: try reader.subject(),
                data: fields["data"] ?? .null,
                timeoutMilliseconds: try reader.optionalInteger("timeout", in: 1...600_000)
            )
        case "respond":
            message = .respond(to: try reader.string("to"), data: fields["data"] ?? .null)
        case "presence":
            message = .presence(subject: try reader.subject())
        case "runner.open":
            message = .runnerOpen(runner: try reader.string("runner"))
        case "runner.close":
            message = .runnerClose(instance: try reader.string("instance"))
        case "runner.run":
            var inputs: [String: JSONValue] = [:]
            switch fields["inputs"] {
            case nil, .null?: break
            case .object(let object)?: inputs = object
            default: throw GatewayProtocolError(.badField, "'inputs' must be an object", id: id)
            }
            message = .runnerRun(instance: try reader.string("instance"), inputs: inputs)
        case "runner.pause":
            message = .runnerPause(instance: try reader.string("instance"))
        case "runner.resume":
            message = .runnerResume(instance: try reader.string("instance"))
        case "ping":
            message = .ping
        default:
            throw GatewayProtocolError(.unknownType, "unknown type '\(type.prefix(64))'", id: id)
        }
        return GatewayClientFrame(id: id, message: message)
    }
}

/// Typed reads of a frame's fields, with errors that name the field.
private struct FieldReader {
    let fields: [String: JSONValue]
    let id: JSONValue?

    func fail(_ message: String) -> GatewayProtocolError {
        GatewayProtocolError(.badField, message, id: self.id)
    }

    func string(_ key: String, maxLength: Int = 1024) throws(GatewayProtocolError) -> String {
        guard case .string(let value)? = self.fields[key], !value.isEmpty else {
            throw self.fail("'\(key)' must be a non-empty string")
        }
        guard value.utf8.count <= maxLength else { throw self.fail("'\(key)' is longer than \(maxLength) bytes") }
        return value
    }

    /// A subject: dot-separated non-empty tokens without spaces; `*` and a final `>` are wildcards.
    func subject() throws(GatewayProtocolError) -> String {
        let subject = try self.string("subject", maxLength: 512)
        let tokens = subject.split(separator: ".", omittingEmptySubsequences: false)
        for (index, token) in tokens.enumerated() {
            guard !token.isEmpty, !token.contains(where: { $0 == " " || $0 == "\t" || $0 == "\r" || $0 == "\n" })
            else { throw self.fail("'subject' is not a valid subject: '\(subject)'") }
            if token.contains(">"), token != ">" || index != tokens.count - 1 {
                throw self.fail("'subject': '>' may only be the last token")
            }
            if token.contains("*"), token != "*" {
                throw self.fail("'subject': '*' must be a whole token")
            }
        }
        return subject
    }

    func optionalInteger(_ key: String, in range: ClosedRange<Int>) throws(GatewayProtocolError) -> Int? {
        switch self.fields[key] {
        case nil, .null?: return nil
        case .number(let number)?:
            guard number.rounded() == number, number >= Double(range.lowerBound), number <= Double(range.upperBound)
            else { throw self.fail("'\(key)' must be a whole number in \(range.lowerBound)…\(range.upperBound)") }
            return Int(number)
        default: throw self.fail("'\(key)' must be a number")
        }
    }

    func credentials() throws(GatewayProtocolError) -> Credentials {
        if case .string(let token)? = self.fields["token"] {
            guard !token.isEmpty, token.utf8.count <= 16384 else { throw self.fail("'token' must be 1…16384 bytes") }
            return .token(token)
        }
        if self.fields["user"] != nil || self.fields["password"] != nil {
            let user = try self.string("user", maxLength: 256)
            // A name alone is a password login with an empty password (what the `open` authenticator takes).
            switch self.fields["password"] {
            case nil, .null?: return .password(user: user, password: "")
            case .string(let password)? where password.utf8.count <= 4096: return .password(user: user, password: password)
            default: throw self.fail("'password' must be a string of at most 4096 bytes")
            }
        }
        return .none
    }

    func resume() throws(GatewayProtocolError) -> GatewayResume? {
        switch self.fields["resume"] {
        case nil, .null?: return nil
        case .object(let resume)?:
            guard case .string(let session)? = resume["session"], !session.isEmpty, session.utf8.count <= 128,
                case .number(let last)? = resume["lastSeq"], last >= 0, last.rounded() == last, last < 9e15
            else { throw self.fail("'resume' must be {\"session\": string, \"lastSeq\": whole number}") }
            return GatewayResume(session: session, lastSequence: UInt64(last))
        default:
            throw self.fail("'resume' must be an object")
        }
    }

    func replayStart() throws(GatewayProtocolError) -> GatewayReplayStart? {
        switch self.fields["from"] {
        case nil, .null?: return nil
        case .object(let from)?:
            guard from.count == 1, let (key, value) = from.first, case .number(let number) = value,
                number >= 0, number.rounded() == number, number < 9e15
            else { throw self.fail("'from' must be one of {\"seq\": n}, {\"time\": ms}, {\"last\": n}") }
            switch key {
            case "seq": return .sequence(UInt64(number))
            case "time": return .time(milliseconds: Int64(number))
            case "last":
                guard number >= 1, number <= 10_000 else { throw self.fail("'from.last' must be 1…10000") }
                return .last(Int(number))
            default: throw self.fail("'from' must be one of {\"seq\": n}, {\"time\": ms}, {\"last\": n}")
            }
        default:
            throw self.fail("'from' must be an object")
        }
    }
}

// MARK: - Server frames

/// A message from the server. `encoded` is the frame's JSON text.
public enum GatewayServerFrame: Sendable, Hashable {
    /// The answer to `auth`: the session (to resume later), the user, and whether a resume recovered everything.
    case welcome(id: JSONValue?, session: String, user: AuthenticatedUser, recovered: Bool?)
    case ok(id: JSONValue?, fields: [String: JSONValue])
    case error(id: JSONValue?, code: String, message: String)
    /// A message on a subscribed subject. `seq` numbers every delivery of the session (resume uses it); `stream`
    /// and `streamSeq` say where a stored (replayed or captured) message sits.
    case message(
        seq: UInt64,
        subject: String,
        data: GatewayPayload,
        replyTo: String?,
        stream: String?,
        streamSeq: UInt64?
    )
    case response(id: JSONValue?, data: GatewayPayload)
    case presence(id: JSONValue?, subject: String, users: [String])
    /// A runner event (`{"type":"node"…}`, `completed`, `failed`) for one of the session's runner instances.
    case runner(seq: UInt64, instance: String, event: JSONValue)
    case pong(id: JSONValue?)

    public var encoded: [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(128)
        func field(_ name: StaticString, first: Bool = false) {
            if !first { bytes.append(UInt8(ascii: ",")) }
            bytes.append(UInt8(ascii: "\""))
            bytes.append(contentsOf: UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount))
            bytes.append(contentsOf: "\":".utf8)
        }
        func string(_ value: String) { JSONValue.appendJSONString(value, to: &bytes) }
        func id(_ value: JSONValue?) {
            if let value {
                field("id")
                value.appendJSON(to: &bytes)
            }
        }
        bytes.append(UInt8(ascii: "{"))
        field("type", first: true)
        switch self {
        case .welcome(let identifier, let session, let user, let recovered):
            string("welcome")
            id(identifier)
            field("v")
            bytes.append(contentsOf: String(GatewayProtocol.version).utf8)
            field("session")
            string(session)
            field("user")
            JSONValue.object(["id": .string(user.id), "roles": .array(user.roles.map { .string($0) })])
                .appendJSON(to: &bytes)
            if let recovered {
                field("recovered")
                bytes.append(contentsOf: (recovered ? "true" : "false").utf8)
            }
        case .ok(let identifier, let fields):
            string("ok")
            id(identifier)
            for (key, value) in fields.sorted(by: { $0.key < $1.key }) where key != "type" && key != "id" {
                bytes.append(UInt8(ascii: ","))
                JSONValue.appendJSONString(key, to: &bytes)
                bytes.append(UInt8(ascii: ":"))
                value.appendJSON(to: &bytes)
            }
        case .error(let identifier, let code, let message):
            string("error")
            id(identifier)
            field("code")
            string(code)
            field("message")
            string(message)
        case .message(let seq, let subject, let data, let replyTo, let stream, let streamSeq):
            string("message")
            field("seq")
            bytes.append(contentsOf: String(seq).utf8)
            field("subject")
            string(subject)
            data.append(to: &bytes)
            if let replyTo {
                field("replyTo")
                string(replyTo)
            }
            if let stream, let streamSeq {
                field("stream")
                string(stream)
                field("streamSeq")
                bytes.append(contentsOf: String(streamSeq).utf8)
            }
        case .response(let identifier, let data):
            string("response")
            id(identifier)
            data.append(to: &bytes)
        case .presence(let identifier, let subject, let users):
            string("presence")
            id(identifier)
            field("subject")
            string(subject)
            field("users")
            JSONValue.array(users.map { .string($0) }).appendJSON(to: &bytes)
        case .runner(let seq, let instance, let event):
            string("runner")
            field("seq")
            bytes.append(contentsOf: String(seq).utf8)
            field("instance")
            string(instance)
            field("event")
            event.appendJSON(to: &bytes)
        case .pong(let identifier):
            string("pong")
            id(identifier)
        }
        bytes.append(UInt8(ascii: "}"))
        return bytes
    }
}

/// A message body as the gateway hands it to WebSocket clients: JSON bodies are embedded as `data`; other UTF-8
/// text as a string with `"encoding":"text"`; anything else base64 with `"encoding":"base64"`.
public struct GatewayPayload: Sendable, Hashable {
    public enum Kind: Sendable, Hashable {
        case json, text, base64
    }

    public var kind: Kind
    /// The bytes placed after `"data":` (JSON text, ready to embed).
    public var encodedData: [UInt8]

    /// Classifies raw message bytes (as published by NATS clients or the gateway).
    public init(bytes: some Collection<UInt8>) {
        let array = Array(bytes)
        if !array.isEmpty, (try? JSONValue.parse(array)) != nil {
            self.kind = .json
            self.encodedData = array
        } else if let text = String(validating: array, as: UTF8.self) {
            self.kind = .text
            var encoded: [UInt8] = []
            JSONValue.appendJSONString(text, to: &encoded)
            self.encodedData = encoded
        } else {
            self.kind = .base64
            self.encodedData = Array("\"\(Data(array).base64EncodedString())\"".utf8)
        }
    }

    public init(json: JSONValue) {
        self.kind = .json
        var encoded: [UInt8] = []
        json.appendJSON(to: &encoded)
        self.encodedData = encoded
    }

    func append(to bytes: inout [UInt8]) {
        bytes.append(contentsOf: ",\"data\":".utf8)
        bytes.append(contentsOf: self.encodedData)
        switch self.kind {
        case .json: break
        case .text: bytes.append(contentsOf: ",\"encoding\":\"text\"".utf8)
        case .base64: bytes.append(contentsOf: ",\"encoding\":\"base64\"".utf8)
        }
    }
}
