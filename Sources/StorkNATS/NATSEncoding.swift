import Foundation
import NIOCore

// MARK: - Writing protocol lines

extension ByteBuffer {
    /// `MSG <subject> <sid> [reply] <#bytes>\r\n<payload>\r\n`, or `HMSG … <#header bytes> <#total bytes>` when
    /// there are headers.
    @inlinable
    public mutating func writeNATSMessage(
        subject: String,
        sid: String,
        replyTo: String?,
        headers: ByteBuffer?,
        payload: ByteBuffer
    ) {
        self.writeStaticString((headers?.readableBytes ?? 0) > 0 ? "HMSG " : "MSG ")
        self.writeString(subject)
        self.writeInteger(UInt8(ascii: " "))
        self.writeString(sid)
        self.writeInteger(UInt8(ascii: " "))
        self.writeNATSBody(replyTo: replyTo, headers: headers, payload: payload)
    }

    /// `PUB <subject> [reply] <#bytes>\r\n<payload>\r\n`, or `HPUB` with headers (Stork's own client).
    @inlinable
    public mutating func writeNATSPublish(subject: String, replyTo: String?, headers: ByteBuffer?, payload: ByteBuffer) {
        self.writeStaticString((headers?.readableBytes ?? 0) > 0 ? "HPUB " : "PUB ")
        self.writeString(subject)
        self.writeInteger(UInt8(ascii: " "))
        self.writeNATSBody(replyTo: replyTo, headers: headers, payload: payload)
    }

    /// What MSG/HMSG and PUB/HPUB share after the subject (and sid): `[reply] [#header bytes] #bytes\r\n`, the
    /// header block, the payload and the closing CRLF.
    @inlinable
    mutating func writeNATSBody(replyTo: String?, headers: ByteBuffer?, payload: ByteBuffer) {
        if let replyTo {
            self.writeString(replyTo)
            self.writeInteger(UInt8(ascii: " "))
        }
        if let headers, headers.readableBytes > 0 {
            self.writeDecimal(headers.readableBytes)
            self.writeInteger(UInt8(ascii: " "))
            self.writeDecimal(headers.readableBytes + payload.readableBytes)
            self.writeStaticString("\r\n")
            self.writeImmutableBuffer(headers)
        } else {
            self.writeDecimal(payload.readableBytes)
            self.writeStaticString("\r\n")
        }
        self.writeImmutableBuffer(payload)
        self.writeStaticString("\r\n")
    }

    /// `-ERR '<message>'\r\n`.
    public mutating func writeNATSError(_ error: NATSProtocolError) {
        self.writeStaticString("-ERR '")
        self.writeString(error.message)
        self.writeStaticString("'\r\n")
    }

    /// A non-negative integer in decimal, without allocating.
    @inlinable
    public mutating func writeDecimal(_ value: Int) {
        precondition(value >= 0, "negative size \(value)")
        if value < 10 {
            self.writeInteger(UInt8(truncatingIfNeeded: value) + UInt8(ascii: "0"))
            return
        }
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                     UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var count = 0
        var rest = value
        withUnsafeMutableBytes(of: &digits) { digits in
            while rest > 0 {
                digits[19 - count] = UInt8(truncatingIfNeeded: rest % 10) + UInt8(ascii: "0")
                rest /= 10
                count += 1
            }
            self.writeBytes(UnsafeRawBufferPointer(rebasing: digits[(20 - count)...]))
        }
    }
}

// MARK: - INFO and CONNECT

/// The JSON a server sends in `INFO`: the fields clients read (nats-py uses `max_payload`, `headers`, `version`,
/// `client_id`, `auth_required`, `nonce`, `connect_urls`, `ldm`).
public struct NATSServerInfo: Codable, Sendable, Equatable {
    public var serverID: String
    public var serverName: String
    /// A NATS-compatible version: clients switch JetStream features on it (nats-py needs ≥ 2.9 for the modern
    /// consumer API).
    public var version: String
    public var go: String
    public var host: String
    public var port: Int
    public var headers: Bool
    public var maxPayload: Int
    public var proto: Int
    public var clientID: UInt64?
    public var clientIP: String?
    public var authRequired: Bool?
    public var jetstream: Bool?
    public var connectURLs: [String]?

    enum CodingKeys: String, CodingKey {
        case serverID = "server_id"
        case serverName = "server_name"
        case version, go, host, port, headers
        case maxPayload = "max_payload"
        case proto
        case clientID = "client_id"
        case clientIP = "client_ip"
        case authRequired = "auth_required"
        case jetstream
        case connectURLs = "connect_urls"
    }

    public init(
        serverID: String,
        serverName: String,
        version: String,
        host: String,
        port: Int,
        maxPayload: Int
    ) {
        self.serverID = serverID
        self.serverName = serverName
        self.version = version
        self.go = "stork"
        self.host = host
        self.port = port
        self.headers = true
        self.maxPayload = maxPayload
        self.proto = 1
    }
}

/// The JSON a client sends in `CONNECT`. Every field is optional and unknown fields are ignored, in any order.
public struct NATSConnectOptions: Codable, Sendable, Equatable {
    public var verbose: Bool?
    public var pedantic: Bool?
    public var tlsRequired: Bool?
    public var authToken: String?
    public var user: String?
    public var pass: String?
    public var name: String?
    public var lang: String?
    public var version: String?
    public var `protocol`: Int?
    public var echo: Bool?
    public var headers: Bool?
    public var noResponders: Bool?

    enum CodingKeys: String, CodingKey {
        case verbose, pedantic
        case tlsRequired = "tls_required"
        case authToken = "auth_token"
        case user, pass, name, lang, version
        case `protocol`
        case echo, headers
        case noResponders = "no_responders"
    }

    public init() {}

    /// Decodes the JSON of a `CONNECT` line; malformed JSON is a protocol error.
    public static func decode(_ json: ByteBuffer) throws(NATSProtocolError) -> NATSConnectOptions {
        do {
            return try JSONDecoder().decode(NATSConnectOptions.self, from: Data(json.readableBytesView))
        } catch {
            throw NATSProtocolError("Parser Error")
        }
    }
}
